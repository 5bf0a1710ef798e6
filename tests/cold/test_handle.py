"""The handle on a file store with the OpenUSD cold tier: reads across tiers, failed
saves during a sleep pass, protect / unpin, and the default cold tier.

Real parts throughout: a file store in a temp directory, the real ``UsdTarget``
(faults are injected only at ``Sdf.Layer.Save``), the stage reopened from disk.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pxr import Sdf

import moneta.usd_target
from moneta import EntityState, Memory, Moneta, MonetaConfig, store
from moneta.usd_layers import prim_link
from moneta.usd_schema import MEMORY_TYPE_NAME
from tests.cold.conftest import memory_prims, stage_from_disk

DIM = 16
HALF_LIFE = 60.0
T0 = 1_772_452_800.0  # 2026-03-02 12:00:00 UTC


class Clock:
    """An injectable clock (unix seconds) the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def vector(i: int) -> list[float]:
    """Orthogonal unit vectors: only memory i scores above 0 for a query with vector(i)."""
    v = np.zeros(DIM)
    v[i] = 1.0
    return v.tolist()


def f32(value: float) -> float:
    return float(np.float32(value))


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def open_handle(store_dir: Path, clock: Clock) -> Iterator[Callable[..., Moneta]]:
    opened: list[Moneta] = []

    def factory(**overrides: object) -> Moneta:
        config = MonetaConfig(
            storage_uri=store_dir,
            auto_sleep=False,
            half_life_seconds=HALF_LIFE,
            clock=clock,
            **overrides,  # type: ignore[arg-type]
        )
        handle = Moneta(config)
        opened.append(handle)
        return handle

    yield factory
    for handle in opened:
        handle.close()


def deposit(m: Moneta, n: int, start: int = 0, floor: float = 0.0) -> list[uuid.UUID]:
    return [m.deposit(f"memory {i}", vector(i), protected_floor=floor) for i in range(start, n)]


def consolidate(m: Moneta, clock: Clock, ids: list[uuid.UUID], keep: list[uuid.UUID]):
    """Attend `ids` three times, let 2.5 half-lives pass, keep `keep` fresh, run a pass."""
    for _ in range(3):
        m.signal_attention({i: 0.0 for i in ids})
    clock.now += 1
    m.run_sleep_pass()
    clock.now += 2.5 * HALF_LIFE
    if keep:
        m.signal_attention({i: 1.0 for i in keep})
    return m.run_sleep_pass()


def hot_rows(m: Moneta) -> list[Memory]:
    """Every hot row as an immutable copy (ids, payloads, vectors and columns)."""
    hot = m._hot
    return sorted((hot.memory(r) for r in range(len(hot))), key=lambda mem: mem.entity_id)


def cold_dir(store_dir: Path) -> Path:
    return store_dir / store.COLD_DIR


def test_file_store_defaults_to_the_usd_cold_tier(open_handle, clock: Clock, store_dir: Path):
    assert store.cold_tier(MonetaConfig(storage_uri=store_dir)) == "usd"
    assert store.cold_tier(MonetaConfig.ephemeral()) == "jsonl"
    assert store.cold_tier(MonetaConfig(storage_uri=store_dir, cold_tier="jsonl")) == "jsonl"
    with pytest.raises(ValueError, match="cold_tier must be one of"):
        MonetaConfig(storage_uri=store_dir, cold_tier="parquet")

    m = open_handle()
    ids = deposit(m, 5)
    report = consolidate(m, clock, ids[:3], keep=ids[3:])
    assert (report.staged, report.consolidated, report.error) == (3, 3, None)
    m.close()

    stage = stage_from_disk(cold_dir(store_dir))
    prims = memory_prims(stage)
    assert sorted(p.GetAttribute("payload").Get() for p in prims) == [
        "memory 0",
        "memory 1",
        "memory 2",
    ]
    assert {p.GetTypeName() for p in prims} == {MEMORY_TYPE_NAME}
    assert {p.GetAttribute("priorState").Get() for p in prims} == {"staged_for_sync"}
    assert [Path(p).name for p in stage.GetRootLayer().subLayerPaths] == [
        "cortex_protected.usda",
        "cortex_2026_03_02.usda",
    ]


def test_jsonl_mock_stays_selectable(open_handle, clock: Clock, store_dir: Path):
    m = open_handle(cold_tier="jsonl")
    ids = deposit(m, 4)
    report = consolidate(m, clock, ids[:2], keep=ids[2:])
    assert report.consolidated == 2
    m.close()
    lines = (cold_dir(store_dir) / store.MOCK_COLD_FILE).read_text().splitlines()
    entries = [e for line in lines for e in json.loads(line)["entries"]]
    assert sorted(e["payload"] for e in entries) == ["memory 0", "memory 1"]
    assert not (cold_dir(store_dir) / "cortex.usda").exists()


def test_query_reads_cold_memories_without_touching_the_hot_tier(
    open_handle, clock: Clock, store_dir: Path
):
    m = open_handle()
    ids = deposit(m, 6)
    cold_ids, hot_ids = ids[:3], ids[3:]
    assert consolidate(m, clock, cold_ids, keep=hot_ids).consolidated == 3
    before = hot_rows(m)
    assert sorted(r.entity_id for r in before) == sorted(hot_ids)

    found: dict[uuid.UUID, Memory] = {}
    for _ in range(3):
        for i, entity_id in enumerate(ids):
            results = m.query(vector(i), limit=6)
            assert len(results) == 6  # both tiers, every memory once
            assert len({r.entity_id for r in results}) == 6
            assert results[0].entity_id == entity_id
            if entity_id in cold_ids:
                found[entity_id] = results[0]
        assert hot_rows(m) == before  # row count and contents unchanged
        assert m.stats().hot == 3
    assert m.stats().pending_attention == 0
    index_copies = {r.entity_id: r for r in m._index.get(cold_ids)}
    for entity_id, memory in found.items():
        assert memory.state is EntityState.CONSOLIDATED
        assert memory.usd_link == prim_link(entity_id)
        # The USD attribute's float32, not the index's float64 copy of the same value.
        in_index = index_copies[entity_id].utility
        assert memory.utility == f32(in_index) != in_index
    m.close()

    # Payload and state are the cold tier's: the values on disk, float32 included.
    stage = stage_from_disk(cold_dir(store_dir))
    for entity_id, memory in found.items():
        prim = stage.GetPrimAtPath(prim_link(entity_id))
        assert memory.payload == prim.GetAttribute("payload").Get()
        assert memory.utility == prim.GetAttribute("utility").Get()
        assert memory.attended_count == prim.GetAttribute("attendedCount").Get() == 3
        assert memory.last_evaluated == prim.GetAttribute("lastEvaluated").Get()


def test_attention_on_a_cold_memory_hydrates_a_volatile_row_and_the_newer_hot_copy_wins(
    open_handle, clock: Clock
):
    m = open_handle()
    ids = deposit(m, 4)
    cold, others = ids[0], ids[1:]
    assert consolidate(m, clock, [cold], keep=others).consolidated == 1
    consolidated_at = clock.now
    assert m.stats().hot == 3

    clock.now += 30
    m.signal_attention({cold: 0.5})
    report = m.run_sleep_pass()
    assert (report.hydrated, report.attention_applied) == (1, 1)
    assert m.stats().hot == 4
    row = next(r for r in hot_rows(m) if r.entity_id == cold)
    assert row.state is EntityState.VOLATILE
    assert row.usd_link == prim_link(cold)
    assert (row.payload, row.attended_count) == ("memory 0", 4)
    assert row.last_evaluated == clock.now > consolidated_at

    # In both tiers now; the hot copy is newer than the consolidation, so it wins.
    results = [r for r in m.query(vector(0), limit=4) if r.entity_id == cold]
    assert len(results) == 1
    assert results[0].state is EntityState.VOLATILE
    assert results[0].attended_count == 4


def test_split_brain_the_older_hot_copy_loses_to_the_cold_copy(open_handle, clock: Clock):
    m = open_handle()
    ids = deposit(m, 3)
    cold, others = ids[0], ids[1:]
    assert consolidate(m, clock, [cold], keep=others).consolidated == 1
    consolidated_at = clock.now

    # The clock steps back (skew): the hydrated copy is evaluated before the cold one.
    clock.now = consolidated_at - 1000
    m.signal_attention({cold: 0.5})
    assert m.run_sleep_pass().hydrated == 1
    row = next(r for r in hot_rows(m) if r.entity_id == cold)
    assert row.last_evaluated < consolidated_at
    results = [r for r in m.query(vector(0), limit=3) if r.entity_id == cold]
    assert len(results) == 1
    assert results[0].state is EntityState.CONSOLIDATED
    assert results[0].attended_count == 3  # the cold copy, not the hot row's 4
    assert results[0].last_evaluated == consolidated_at

    # Time moves on past the consolidation: the hot copy is newer and wins again.
    clock.now = consolidated_at + 10
    m.signal_attention({cold: 1.0})
    m.run_sleep_pass()
    results = [r for r in m.query(vector(0), limit=3) if r.entity_id == cold]
    assert [(r.state, r.attended_count) for r in results] == [(EntityState.VOLATILE, 5)]


class FailingSave:
    """The real ``Save()``, except the `nth` save of a daily layer fails as told."""

    def __init__(self, nth: int, failure: str) -> None:
        self.nth = nth
        self.failure = failure
        self.daily_saves = 0

    def __call__(self, layer: Sdf.Layer) -> bool:
        if Path(layer.identifier).name.startswith("cortex_2"):
            self.daily_saves += 1
            if self.daily_saves == self.nth:
                if self.failure == "raise":
                    raise OSError(5, "Input/output error")
                if self.failure == "interrupt":
                    raise KeyboardInterrupt
                return False
        return bool(layer.Save())


@pytest.mark.parametrize("failure", ["false", "raise"])
def test_failed_save_keeps_batches_staged_and_the_index_unadvanced(
    open_handle, clock: Clock, store_dir: Path, monkeypatch: pytest.MonkeyPatch, failure: str
):
    monkeypatch.setattr(moneta.usd_target, "_save", FailingSave(nth=2, failure=failure))
    m = open_handle(batch_size=2)
    ids = deposit(m, 7)
    staged, kept = ids[:5], ids[5:]
    report = consolidate(m, clock, staged, keep=kept)
    # 3 batches of <= 2; the second batch's daily layer failed to save.
    assert (report.staged, report.batches, report.consolidated) == (5, 3, 2)
    assert (report.failed_batches, report.still_staged) == (2, 3)
    assert "batch 2 of 3" in report.error
    assert "failed=['cortex_2026_03_02.usda']" in report.error
    assert ("returned False" in report.error) == (failure == "false")
    waiting = {mem.entity_id for mem in m.get_consolidation_manifest()}
    assert len(waiting) == 3 and waiting <= set(staged)
    done = set(staged) - waiting
    records = {r.entity_id: r for r in m._index.get(staged)}
    assert {i for i, r in records.items() if r.state is EntityState.CONSOLIDATED} == done
    assert {r.state for i, r in records.items() if i in waiting} == {EntityState.VOLATILE}

    # The next pass authors the STAGED batches again and they complete.
    retry = m.run_sleep_pass()
    assert (retry.consolidated, retry.still_staged, retry.error) == (3, 0, None)
    assert m.get_consolidation_manifest() == []
    assert {r.state for r in m._index.get(staged)} == {EntityState.CONSOLIDATED}
    m.close()
    stage = stage_from_disk(cold_dir(store_dir))
    prims = memory_prims(stage)
    assert sorted(p.GetAttribute("payload").Get() for p in prims) == [
        f"memory {i}" for i in range(5)
    ]


def test_keyboard_interrupt_in_save_stops_the_pass_and_the_next_pass_completes(
    open_handle, clock: Clock, store_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(moneta.usd_target, "_save", FailingSave(nth=2, failure="interrupt"))
    m = open_handle(batch_size=2)
    ids = deposit(m, 4)
    with pytest.raises(KeyboardInterrupt):
        consolidate(m, clock, ids, keep=[])
    waiting = {mem.entity_id for mem in m.get_consolidation_manifest()}
    assert len(waiting) == 2
    retry = m.run_sleep_pass()
    assert (retry.consolidated, retry.still_staged) == (2, 0)
    assert {r.state for r in m._index.get(ids)} == {EntityState.CONSOLIDATED}
    m.close()
    assert len(memory_prims(stage_from_disk(cold_dir(store_dir)))) == 4


def test_protect_and_unpin_through_the_handle(open_handle, clock: Clock, store_dir: Path):
    m = open_handle()
    pinned = m.deposit("pinned memory", vector(0), protected_floor=0.5)
    plain = deposit(m, 3, start=1)
    with pytest.raises(ValueError, match="must be a pinned hot memory"):
        m.protect(plain[0])
    assert m.protect(pinned) == prim_link(pinned)
    assert (m.stats().hot, m.stats().protected) == (2, 0)

    # Queryable from the protected layer, floor included.
    hit = m.query(vector(0), limit=1)[0]
    assert (hit.entity_id, hit.state, hit.protected_floor) == (
        pinned,
        EntityState.CONSOLIDATED,
        0.5,
    )
    # Attention hydrates it with its floor: pinned rows are never selected.
    m.signal_attention({pinned: 0.0})
    clock.now += 1
    assert m.run_sleep_pass().hydrated == 1
    clock.now += 20 * HALF_LIFE
    preview = m.preview_sleep_pass()
    assert pinned not in preview.would_prune + preview.would_stage
    row = next(r for r in hot_rows(m) if r.entity_id == pinned)
    assert (row.protected_floor, row.usd_link) == (0.5, prim_link(pinned))

    # unpin clears the floor in both tiers; the memory is now selected like any other.
    assert m.unpin(pinned) is True
    assert m.unpin(pinned) is False
    preview = m.preview_sleep_pass()
    assert pinned in preview.would_prune  # utility decayed, attended once
    report = m.run_sleep_pass()
    assert pinned not in {r.entity_id for r in hot_rows(m)}
    assert report.pruned >= 1
    hit = m.query(vector(0), limit=1)[0]  # the cold copy stays
    assert (hit.entity_id, hit.state, hit.protected_floor) == (
        pinned,
        EntityState.CONSOLIDATED,
        0.0,
    )
    m.close()

    stage = stage_from_disk(cold_dir(store_dir))
    prim = stage.GetPrimAtPath(prim_link(pinned))
    assert [Path(s.layer.identifier).name for s in prim.GetPrimStack()] == [
        "cortex_2026_03_02.usda"
    ]
    assert prim.GetAttribute("protectedFloor").Get() == 0.0
    assert prim.GetAttribute("payload").Get() == "pinned memory"


def test_protect_needs_the_usd_cold_tier(open_handle):
    m = open_handle(cold_tier="jsonl")
    pinned = m.deposit("pinned", vector(0), protected_floor=0.5)
    with pytest.raises(ValueError, match="protect needs a cold tier with a protected layer"):
        m.protect(pinned)
    assert m.stats().protected == 1
    with pytest.raises(TypeError, match=r"entity_id must be a uuid\.UUID"):
        m.protect("not an id")  # type: ignore[arg-type]


def test_handle_with_the_cold_writer_process(open_handle, clock: Clock, store_dir: Path):
    m = open_handle(cold_writer_process=True)
    ids = deposit(m, 5)
    report = consolidate(m, clock, ids[:3], keep=ids[3:])
    assert (report.consolidated, report.error) == (3, None)
    hit = m.query(vector(0), limit=1)[0]
    assert (hit.entity_id, hit.state, hit.usd_link) == (
        ids[0],
        EntityState.CONSOLIDATED,
        prim_link(ids[0]),
    )
    m.signal_attention({ids[0]: 0.5})
    assert m.run_sleep_pass().hydrated == 1
    m.close()
    stage = stage_from_disk(cold_dir(store_dir))
    assert sorted(p.GetAttribute("payload").Get() for p in memory_prims(stage)) == [
        "memory 0",
        "memory 1",
        "memory 2",
    ]
