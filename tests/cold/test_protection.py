"""Protection by composition: cortex_protected.usda is strongest; unpin releases a memory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from pxr import Sdf

from moneta.usd_layers import prim_link
from moneta.usd_target import UsdTarget
from tests.cold.conftest import DAY, NOON_UTC, make_memory, memory_prims, stage_from_disk

Factory = Callable[..., UsdTarget]


def layer_names(prim_stack: list[Sdf.PrimSpec]) -> list[str]:
    return [Path(spec.layer.identifier).name for spec in prim_stack]


def f32(value: float) -> float:
    return float(np.float32(value))


def test_protected_layer_opinion_wins_over_the_daily_one(open_target: Factory, cold_dir: Path):
    target = open_target()
    daily = make_memory("daily text", utility=0.2, attended_count=4, protected_floor=0.0)
    pinned = make_memory(
        "pinned text",
        entity_id=daily.entity_id,
        utility=0.9,
        attended_count=11,
        protected_floor=0.7,
    )
    other = make_memory("only daily")
    target.author([daily, other], batch_id="b1", authored_at=NOON_UTC)
    target.author_protected([pinned], batch_id="p1", authored_at=NOON_UTC + 60)
    record = target.read([daily.entity_id])[daily.entity_id]
    assert (record.payload, record.protected_floor) == ("pinned text", f32(0.7))
    assert record.protected
    assert record.layer == "cortex_protected.usda"
    target.close()

    stage = stage_from_disk(cold_dir)
    prim = stage.GetPrimAtPath(prim_link(daily.entity_id))
    assert layer_names(prim.GetPrimStack()) == ["cortex_protected.usda", "cortex_2026_03_02.usda"]
    assert prim.GetAttribute("payload").Get() == "pinned text"
    assert prim.GetAttribute("protectedFloor").Get() == f32(0.7)
    assert prim.GetAttribute("utility").Get() == f32(0.9)
    assert prim.GetAttribute("attendedCount").Get() == 11
    # The weaker opinion is still in the daily file, untouched.
    layer = Sdf.Layer.OpenAsAnonymous(str(cold_dir / "cortex_2026_03_02.usda"))
    weak = layer.GetPrimAtPath(prim_link(daily.entity_id))
    assert weak.attributes["payload"].default == "daily text"
    assert weak.attributes["protectedFloor"].default == 0.0
    assert len(memory_prims(stage)) == 2


def test_unpin_moves_the_memory_out_of_the_protected_layer(open_target: Factory, cold_dir: Path):
    target = open_target()
    in_daily = make_memory("in daily", utility=0.2)
    target.author([in_daily], batch_id="b1", authored_at=NOON_UTC)
    pinned_over_daily = make_memory(
        "pinned over daily", entity_id=in_daily.entity_id, utility=0.8, protected_floor=0.6
    )
    pinned_only = make_memory("pinned only", utility=0.5, protected_floor=0.9)
    never_pinned = make_memory("never pinned")
    target.author_protected([pinned_over_daily, pinned_only], batch_id="p", authored_at=NOON_UTC)
    target.author([never_pinned], batch_id="b2", authored_at=NOON_UTC)

    ids = [in_daily.entity_id, pinned_only.entity_id, never_pinned.entity_id]
    unpinned = target.unpin(ids, authored_at=NOON_UTC + DAY)
    assert unpinned == {i: prim_link(i) for i in ids[:2]}
    assert target.unpin(ids, authored_at=NOON_UTC + DAY) == {}  # nothing pinned any more
    assert [(i.name, i.prims) for i in target.layer_stack()] == [
        ("cortex_protected.usda", 0),
        ("cortex_2026_03_03.usda", 1),
        ("cortex_2026_03_02.usda", 2),
    ]
    target.close()

    stage = stage_from_disk(cold_dir)
    expected = {
        # Composed values are kept (protected ones won), only the floor is cleared.
        in_daily.entity_id: ("pinned over daily", 0.8, "cortex_2026_03_02.usda"),
        # A memory only in the protected layer moves to the day of the unpin.
        pinned_only.entity_id: ("pinned only", 0.5, "cortex_2026_03_03.usda"),
        never_pinned.entity_id: ("never pinned", 0.25, "cortex_2026_03_02.usda"),
    }
    for entity_id, (payload, utility, layer) in expected.items():
        prim = stage.GetPrimAtPath(prim_link(entity_id))
        assert layer_names(prim.GetPrimStack()) == [layer]
        assert prim.GetAttribute("payload").Get() == payload
        assert prim.GetAttribute("utility").Get() == f32(utility)
        assert prim.GetAttribute("protectedFloor").Get() == 0.0
    assert len(memory_prims(stage)) == 3


def test_protected_memories_survive_reopen_and_forget_removes_every_opinion(
    open_target: Factory, cold_dir: Path
):
    first = open_target()
    memory = make_memory("daily")
    first.author([memory], batch_id="b", authored_at=NOON_UTC)
    first.author_protected(
        [make_memory("pinned", entity_id=memory.entity_id, protected_floor=0.5)],
        batch_id="p",
        authored_at=NOON_UTC,
    )
    first.close()
    second = open_target()
    record = second.read([memory.entity_id])[memory.entity_id]
    assert (record.payload, record.protected) == ("pinned", True)
    second.forget([memory.entity_id])
    assert second.read([memory.entity_id]) == {}
    assert second.count() == 0
    second.close()
    assert memory_prims(stage_from_disk(cold_dir)) == []
