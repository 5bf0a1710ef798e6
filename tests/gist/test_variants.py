"""The `fidelity` variant set on real layers: where it is authored, what composes, reads."""

from __future__ import annotations

import gc
import io
from pathlib import Path
from typing import Any
from uuid import UUID

from pxr import Sdf

from moneta import gist, inspect
from moneta.usd_layers import prim_link, prim_name
from tests.cold.conftest import stage_from_disk
from tests.gist.conftest import DAY_SECONDS, detail_text, gist_for, vector, wait_until
from tests.support.messages_stub import MessagesStub, Reply
from workers.gist_dispatch import EmbeddedGistDispatcher

MAR_02 = "cortex_2026_03_02.usda"
MAR_03 = "cortex_2026_03_03.usda"


def layer_from_disk(path: Path) -> Sdf.Layer:
    layer = Sdf.Layer.OpenAsAnonymous(str(path))
    assert layer is not None, path
    return layer


def opinions(cold: Path, entity_id: UUID) -> dict[str, str]:
    """File name -> specifier of every spec the memory has, read from disk."""
    found = {}
    for path in sorted(cold.glob("cortex*.usda")):
        layer = layer_from_disk(path)  # specs expire with their layer: keep it alive
        spec = layer.GetPrimAtPath(prim_link(entity_id))
        if spec is not None:
            found[path.name] = str(spec.specifier).rsplit(".", 1)[-1]
    return found


def variant_names(cold: Path, entity_id: UUID) -> list[tuple[str, list[str]]]:
    """(file, variant names) for every fidelity variant set on disk."""
    sets = []
    for path in sorted(cold.glob("cortex*.usda")):
        layer = layer_from_disk(path)
        spec = layer.GetPrimAtPath(prim_link(entity_id))
        if spec is not None:
            for name, vset in spec.variantSets.items():
                sets.append((f"{path.name}:{name}", sorted(vset.variants.keys())))
    return sets


def root_prim_counts(cold: Path) -> dict[str, int]:
    counts = {}
    for path in sorted(cold.glob("*.usda")):
        layer = layer_from_disk(path)
        counts[path.name] = len(layer.rootPrims)
    return counts


def gisted_next_day(store: Any, stub: MessagesStub, n: int) -> list[UUID]:
    """Consolidate on 2026-03-02; the answers arrive (and are authored) on 03-03."""
    stub.hold()
    ids, _ = store.consolidate(n)
    wait_until(lambda: stub.waiting() == n, what="held model calls")
    store.clock.now += DAY_SECONDS
    stub.release()
    wait_until(lambda: store.ledger.counts()["gisted"] == n, what=f"{n} gists")
    return ids


def test_gist_is_an_over_on_the_rolling_layer_and_the_stage_serves_it(
    make_store: Any, dispatcher: EmbeddedGistDispatcher, stub: MessagesStub
) -> None:
    store = make_store(dispatcher)
    store.open()
    ids = gisted_next_day(store, stub, 2)
    store.close()
    gc.collect()
    cold = store.directory / "cold"
    for entity_id in ids:
        # The def stays in its own day's layer; the gist is an over in the rolling layer.
        assert opinions(cold, entity_id) == {MAR_02: "SpecifierDef", MAR_03: "SpecifierOver"}
        rolling = layer_from_disk(cold / MAR_03)
        over = rolling.GetPrimAtPath(prim_link(entity_id))
        assert over.variantSelections["fidelity"] == "gist"
        assert list(over.variantSetNameList.prependedItems) == ["fidelity"]
        assert variant_names(cold, entity_id) == [(f"{MAR_03}:fidelity", ["detail", "gist"])]
    stage = stage_from_disk(cold)
    for i, entity_id in enumerate(ids):
        prim = stage.GetPrimAtPath(prim_link(entity_id))
        assert prim.GetTypeName() == "MonetaMemory"
        assert prim.GetAttribute("payload").Get() == gist_for(detail_text(i))
        assert prim.GetAttribute("attendedCount").Get() == 3  # the def's values still compose
        vset = prim.GetVariantSets().GetVariantSet("fidelity")
        assert vset.GetVariantNames() == ["detail", "gist"]
        assert vset.SetVariantSelection("detail")
        assert prim.GetAttribute("payload").Get() == detail_text(i)
        assert vset.SetVariantSelection("gist")
        assert prim.GetAttribute("payload").Get() == gist_for(detail_text(i))


def test_switching_the_stored_selection_to_detail_serves_the_original(
    make_store: Any, dispatcher: EmbeddedGistDispatcher, stub: MessagesStub
) -> None:
    store = make_store(dispatcher)
    m = store.open()
    ids = gisted_next_day(store, stub, 2)
    assert m.query(vector(0), limit=1)[0].payload == gist_for(detail_text(0))
    store.close()
    gc.collect()
    rolling = Sdf.Layer.FindOrOpen(str(store.directory / "cold" / MAR_03))
    rolling.GetPrimAtPath(prim_link(ids[0])).variantSelections["fidelity"] = "detail"
    assert rolling.Save()
    del rolling
    gc.collect()
    m = store.open()  # the cold tier is read again from the files
    assert m.query(vector(0), limit=1)[0].payload == detail_text(0)
    assert m.query(vector(1), limit=1)[0].payload == gist_for(detail_text(1))


def test_same_day_gist_goes_on_the_def_of_the_rolling_layer(
    make_store: Any, dispatcher: EmbeddedGistDispatcher, stub: MessagesStub
) -> None:
    store = make_store(dispatcher)
    store.open()
    ids, _ = store.consolidate(2)
    wait_until(lambda: store.ledger.counts()["gisted"] == 2, what="2 gists")
    store.close()
    gc.collect()
    cold = store.directory / "cold"
    daily = layer_from_disk(cold / MAR_02)
    spec = daily.GetPrimAtPath(prim_link(ids[0]))
    # A layer holds one spec per path: the def itself carries the variant set.
    assert opinions(cold, ids[0]) == {MAR_02: "SpecifierDef"}
    assert spec.variantSelections["fidelity"] == "gist"
    assert not spec.attributes["payload"].HasDefaultValue()  # else it would beat the variant
    stage = stage_from_disk(cold)
    assert stage.GetPrimAtPath(prim_link(ids[0])).GetAttribute("payload").Get() == gist_for(
        detail_text(0)
    )


def test_query_returns_the_gist_and_inspect_shows_detail_and_gist(
    make_store: Any, dispatcher: EmbeddedGistDispatcher, stub: MessagesStub
) -> None:
    store = make_store(dispatcher)
    m = store.open()
    ids = gisted_next_day(store, stub, 3)
    for i, entity_id in enumerate(ids):
        hit = m.query(vector(i), limit=1)[0]
        assert hit.entity_id == entity_id
        assert hit.payload == gist_for(detail_text(i))
        assert hit.state.name == "CONSOLIDATED" and hit.usd_link == prim_link(entity_id)
    store.close()
    out = io.StringIO()
    assert inspect.main(store.directory, samples=10, out=out) == 0
    text = out.getvalue()
    for i, entity_id in enumerate(ids):
        assert f"/{prim_name(entity_id)}" in text
        assert f'detail "{detail_text(i)}"' in text
        assert f'gist "{gist_for(detail_text(i))}"' in text
    assert text.count("fidelity selection=gist status=gisted") == 3


def test_rerun_is_idempotent_no_duplicate_variants_or_prims(
    make_store: Any, dispatcher: EmbeddedGistDispatcher, stub: MessagesStub
) -> None:
    store = make_store(dispatcher)
    m = store.open()
    ids = gisted_next_day(store, stub, 2)
    cold = store.directory / "cold"
    before = {e: opinions(cold, e) for e in ids}
    prims_before = root_prim_counts(cold)
    for round_number in range(2):  # same answer twice, then a different one
        if round_number == 1:
            stub.script([Reply(text="<gist>second take</gist>")])
        states = gist.request(m, [ids[0]])
        assert states[ids[0]] in ("pending", "gisted")
        wait_until(lambda: store.ledger.counts()["gisted"] == 2, what="re-run gisted")
        assert {e: opinions(cold, e) for e in ids} == before
        assert root_prim_counts(cold) == prims_before
        assert variant_names(cold, ids[0]) == [(f"{MAR_03}:fidelity", ["detail", "gist"])]
    view = gist.read_fidelity(m._parts.target, ids[0])
    assert view is not None
    assert (view.selection, view.detail, view.gist) == ("gist", detail_text(0), "second take")
    assert m.query(vector(0), limit=1)[0].payload == "second take"
    assert len(stub.recorded(status=200)) == 4


def test_hydrated_and_reconsolidated_gist_keeps_the_original_detail(
    make_store: Any, dispatcher: EmbeddedGistDispatcher, stub: MessagesStub
) -> None:
    """Attention brings the gisted memory back with its gist as payload; consolidated
    again, that text is not taken for new detail."""
    store = make_store(dispatcher)
    m = store.open()
    ids = gisted_next_day(store, stub, 1)
    for _ in range(3):
        m.signal_attention({ids[0]: 0.0})
    report = m.run_sleep_pass()  # hydrated, faded a day since: staged again at once
    assert (report.hydrated, report.consolidated, report.gists_enqueued) == (1, 1, 1)
    wait_until(lambda: len(stub.recorded(status=200)) == 2, what="second gist call")
    wait_until(lambda: store.ledger.counts()["gisted"] == 1, what="re-gisted")
    view = gist.read_fidelity(m._parts.target, ids[0])
    assert view is not None and view.detail == detail_text(0)
    second = stub.recorded(status=200)[1].payload["messages"][0]["content"]
    assert detail_text(0) in second  # the model restated the detail, not the gist


def test_reopened_store_composes_gists_from_the_files(
    make_store: Any, dispatcher: EmbeddedGistDispatcher, stub: MessagesStub
) -> None:
    store = make_store(dispatcher)
    store.open()
    ids = gisted_next_day(store, stub, 2)
    store.close()
    m = store.open()
    target = m._parts.target
    assert target.count() == 2  # an over is not a second memory
    records = target.read(ids)
    assert [records[e].payload for e in ids] == [gist_for(detail_text(i)) for i in range(2)]
    assert all(records[e].attended_count == 3 for e in ids)


def test_forget_removes_the_gist_and_leaves_no_text_in_the_ledger(
    make_store: Any, dispatcher: EmbeddedGistDispatcher, stub: MessagesStub
) -> None:
    store = make_store(dispatcher)
    m = store.open()
    ids = gisted_next_day(store, stub, 2)
    assert m.forget(ids[0])
    store.close()
    gc.collect()
    cold = store.directory / "cold"
    assert opinions(cold, ids[0]) == {}
    assert opinions(cold, ids[1]) == {MAR_02: "SpecifierDef", MAR_03: "SpecifierOver"}
    gist_text = gist_for(detail_text(0)).encode()
    for path in store.directory.glob("gist.sqlite*"):
        assert gist_text not in path.read_bytes(), path
    row = store.ledger.row(ids[1])
    assert row is not None and row.state == "gisted" and row.summary is None


def test_protected_gist_rerun_after_reopen_on_a_later_day_keeps_one_variant_set(
    make_store: Any, dispatcher: EmbeddedGistDispatcher, stub: MessagesStub
) -> None:
    """A pinned memory has no daily def: read back, its gist over is its only daily spec."""
    store = make_store(dispatcher)
    m = store.open()
    pinned = m.deposit(detail_text(70), vector(70), protected_floor=0.5)
    m.protect(pinned)
    gist.request(m, [pinned], include_protected=True)
    wait_until(lambda: store.ledger.counts()["gisted"] == 1, what="the protected gist")
    store.close()
    cold = store.directory / "cold"
    first = opinions(cold, pinned)
    assert first == {"cortex_protected.usda": "SpecifierDef", MAR_02: "SpecifierOver"}
    store.clock.now += 2 * DAY_SECONDS
    m = store.open()
    stub.script([Reply(text="<gist>pinned, again</gist>")])
    gist.request(m, [pinned], include_protected=True)
    wait_until(lambda: len(stub.recorded(status=200)) == 2, what="second call")
    wait_until(lambda: store.ledger.counts()["gisted"] == 1, what="re-gisted")
    assert opinions(cold, pinned) == first
    assert variant_names(cold, pinned) == [(f"{MAR_02}:fidelity", ["detail", "gist"])]
    hit = m.query(vector(70), limit=1)[0]
    assert (hit.entity_id, hit.payload) == (pinned, "pinned, again")
    view = gist.read_fidelity(m._parts.target, pinned)
    assert view is not None and view.detail == detail_text(70)
