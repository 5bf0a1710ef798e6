"""Reads across tiers (DESIGN §1.8) as the handle sees them: a consolidated memory stays
queryable, a query does not pull it back, attention does (hydration), and a memory in
both tiers is shown once."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from moneta import EntityState, Moneta, MonetaConfig
from moneta.ecs import HUGE_PAGE_ARRAY_BYTES, HotTier, allocate, reserve
from tests.substrate.conftest import FakeClock, unit_vector


def test_query_reads_cold_without_hydrating_and_attention_hydrates(clock: FakeClock) -> None:
    rng = np.random.default_rng(60)
    with Moneta(MonetaConfig.ephemeral(clock=clock, auto_sleep=False)) as m:
        v = unit_vector(rng)
        e = m.deposit("consolidate me", v)
        for _ in range(3):
            m.signal_attention({e: -0.3})
        report = m.run_sleep_pass()
        assert report.consolidated == 1
        assert m.stats().hot == 0
        for _ in range(3):
            [hit] = m.query(v, limit=5)
            assert hit.entity_id == e
            assert hit.state is EntityState.CONSOLIDATED
            assert hit.usd_link == f"/Memory_{e.hex}"
            assert hit.attended_count == 3
        assert m.stats().hot == 0  # reading never moved it back

        clock.advance(10.0)
        m.signal_attention({e: 0.5})
        report = m.run_sleep_pass()
        assert (report.hydrated, report.attention_applied) == (1, 1)
        stats = m.stats()
        assert (stats.hot, stats.volatile) == (1, 1)
        hits = m.query(v, limit=5)
        assert [h.entity_id for h in hits] == [e]  # shown once: the newer hot copy
        [hit] = hits
        assert hit.state is EntityState.VOLATILE
        assert hit.usd_link == f"/Memory_{e.hex}"
        assert hit.attended_count == 4
        assert hit.utility > 0.5
        assert hit.last_evaluated == clock()


@pytest.mark.parametrize("durability", [True, False], ids=["durable", "no-wal"])
def test_in_memory_index_finds_cold_memories_after_reopen(
    tmp_path: Path, clock: FakeClock, durability: bool
) -> None:
    """The in-memory index does not outlive its process: on a file store it is refilled
    from the JSONL cold tier (which keeps vectors), so a consolidated memory, and a
    hydrated one's cold copy, are found again after a reopen."""
    rng = np.random.default_rng(62)
    config = MonetaConfig(
        storage_uri=tmp_path / "store", clock=clock, auto_sleep=False,
        vector_backend="memory", cold_tier="jsonl", durability=durability,
    )  # fmt: skip
    vectors = [unit_vector(rng) for _ in range(3)]
    with Moneta(config) as m:
        cold, hydrated, hot = (m.deposit(f"memory {i}", v) for i, v in enumerate(vectors))
        for _ in range(3):
            m.signal_attention({cold: -0.3, hydrated: -0.3})
        assert m.run_sleep_pass().consolidated == 2
        clock.advance(10.0)
        m.signal_attention({hydrated: 0.5})
        assert m.run_sleep_pass().hydrated == 1
        before = {h.entity_id: (h.state, h.usd_link) for h in m.query(vectors[0], limit=3)}
    with Moneta(config) as m:
        stats = m.stats()
        assert stats.embedding_dim == len(vectors[0])
        [hit] = m.query(vectors[0], limit=1)
        assert (hit.entity_id, hit.payload) == (cold, "memory 0")
        assert hit.state is EntityState.CONSOLIDATED
        assert hit.usd_link == f"/Memory_{cold.hex}" and hit.attended_count == 3
        if durability:  # the hydrated memory is hot again, shown once, cold link kept
            assert (stats.hot, stats.index_records) == (2, 2)  # the index: 2 cold copies
            [hit] = m.query(vectors[2], limit=1)
            assert (hit.entity_id, hit.state) == (hot, EntityState.VOLATILE)
            after = {h.entity_id: (h.state, h.usd_link) for h in m.query(vectors[0], limit=3)}
            assert after == before
            [hit] = m.query(vectors[1], limit=1)
            assert (hit.entity_id, hit.state) == (hydrated, EntityState.VOLATILE)
            assert hit.usd_link == f"/Memory_{hydrated.hex}"
        else:  # without a WAL nothing hot survives: the cold copies answer
            assert (stats.hot, stats.index_records) == (0, 2)
            [hit] = m.query(vectors[1], limit=1)
            assert (hit.entity_id, hit.state) == (hydrated, EntityState.CONSOLIDATED)


@pytest.mark.parametrize("backend", ["memory", "lancedb"])
def test_only_a_persistent_index_holds_hot_memories(
    tmp_path: Path, clock: FakeClock, backend: str
) -> None:
    """LanceDB is the authority a store reopens from, so every deposit goes into it; the
    in-memory index dies with the process, so the handle keeps only cold memories there
    (the hot tier already searches the hot ones exactly). Either way every memory is
    found, once."""
    rng = np.random.default_rng(63)
    config = MonetaConfig(
        storage_uri=tmp_path / "store", clock=clock, auto_sleep=False,
        vector_backend=backend, cold_tier="jsonl",
    )  # fmt: skip
    persistent = backend == "lancedb"
    vectors = [unit_vector(rng) for _ in range(20)]
    with Moneta(config) as m:
        ids = [m.deposit(f"memory {i}", v) for i, v in enumerate(vectors)]
        assert m._index.persistent is persistent
        assert m.stats().index_records == (20 if persistent else 0)
        fading = ids[:5]
        for _ in range(3):
            m.signal_attention(dict.fromkeys(fading, -0.3))
        assert m.run_sleep_pass().consolidated == 5
        states = {r.entity_id: r.state for r in m._index.get(ids)}
        cold = dict.fromkeys(fading, EntityState.CONSOLIDATED)
        hot = dict.fromkeys(ids[5:], EntityState.VOLATILE)
        assert states == ({**cold, **hot} if persistent else cold)
        assert (m.stats().hot, m.stats().index_records) == (15, 20 if persistent else 5)
        hits = m.query(vectors[0], limit=25)
        assert len(hits) == 20
        assert {h.entity_id: h.state for h in hits} == {**cold, **hot}


def test_in_memory_index_refuses_a_usd_cold_tier_on_a_file_store(tmp_path: Path) -> None:
    """The USD cold tier keeps no vectors: with an index that dies with the process,
    consolidated memories could never be searched again, so the store refuses to open."""
    config = MonetaConfig(storage_uri=tmp_path / "store", vector_backend="memory", cold_tier="usd")
    with pytest.raises(ValueError, match=r"vector_backend 'memory'.*cold_tier 'jsonl'"):
        Moneta(config)
    with Moneta(MonetaConfig(storage_uri=tmp_path / "store", vector_backend="memory",
                             cold_tier="jsonl")) as m:  # fmt: skip
        m.deposit("the store opens with a cold tier that keeps vectors", [1.0, 0.0])
        assert m.stats().hot == 1


def test_unknown_and_pruned_ids_are_not_hydrated(clock: FakeClock) -> None:
    rng = np.random.default_rng(61)
    with Moneta(MonetaConfig.ephemeral(clock=clock, auto_sleep=False)) as m:
        v = unit_vector(rng)
        e = m.deposit("prune me", v)
        m.signal_attention({e: -1.0})
        assert m.run_sleep_pass().pruned == 1
        m.signal_attention({e: 1.0})
        report = m.run_sleep_pass()
        assert (report.hydrated, report.attention_applied) == (0, 0)
        assert m.query(v, limit=5) == []
        assert m.stats().index_records == 0


def one_group(rng: np.random.Generator, n: int) -> np.ndarray:
    """Scores whose largest all lie in one group of top_rows (every n // 64-th score)."""
    scores = rng.standard_normal(n)
    scores[3 :: max(1, n // 64)] += 10.0
    return scores


@pytest.mark.parametrize(
    "n", [1, 5, 63, 64, 511, 512, 1000, 5_000, 10_007, 16_383, 16_384, 16_447, 100_003]
)
@pytest.mark.parametrize("k", [1, 5, 50])
def test_top_rows_finds_the_largest_scores_best_first(n: int, k: int) -> None:
    """The group shortcut of top_rows returns exactly the k largest scores, in order,
    including when they cluster at the end, sit past the grouped view, or tie."""
    from moneta.ecs import top_rows

    rng = np.random.default_rng(n * 100 + k)
    for scores in (
        rng.standard_normal(n).astype(np.float32),
        np.sort(rng.standard_normal(n)),  # the best all in the last (short) block
        np.round(rng.standard_normal(n), 1),  # many ties
        one_group(rng, n),  # the best all in one group of the shortcut
    ):
        top = top_rows(scores, k)
        want = np.sort(scores)[::-1][: min(k, n)]
        assert len(set(top.tolist())) == len(top) == min(k, n)
        assert np.array_equal(scores[top], want)


def _mapping(address: int) -> dict[str, list[str]]:
    """The smaps fields of the mapping of this process that holds ``address``."""
    fields: dict[str, list[str]] | None = None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                if fields is not None:
                    return fields
                start, end = (int(x, 16) for x in head.split("-"))
                fields = {} if start <= address < end else None
            elif fields is not None:
                fields[head.rstrip(":")] = line.split()[1:]
    if fields is None:
        raise AssertionError(f"no mapping holds {address:#x}")
    return fields


def _vm_flags(address: int) -> list[str]:
    return _mapping(address)["VmFlags"]


def _resident_bytes(address: int) -> int:
    return int(_mapping(address)["Rss"][0]) * 1024


def test_the_vector_rows_the_next_deposits_write_are_faulted_in_ahead(clock: FakeClock) -> None:
    """The scheduler's fault-in task makes the reserved rows after the last one resident
    (FAULT_IN_BYTES of them), so deposits do not stop for a page fault every few rows."""
    from moneta.api import FAULT_IN_BYTES

    rng = np.random.default_rng(64)
    with Moneta(MonetaConfig.ephemeral(clock=clock, auto_sleep=False, embedding_dim=384)) as m:
        m._scheduler.stop()  # this test runs the task itself
        for i in range(100):
            m.deposit(f"memory {i}", unit_vector(rng, 384))
        column = m._hot.vectors.ctypes.data
        before = _resident_bytes(column)
        assert before < 100 * 1536 + FAULT_IN_BYTES // 4  # far from faulted in yet
        m._fault_in_ahead()
        assert _resident_bytes(column) >= 100 * 1536 + FAULT_IN_BYTES
        assert m._fault_in_at == 100 + FAULT_IN_BYTES // 1536 // 2


def test_a_reserved_vector_column_is_private_and_never_huge_paged() -> None:
    """The hot tier's reserved vector column is filled row by row: it must not fault in
    2 MiB huge pages (a multi-ms stall per 2 MiB of deposits), and a forked child's
    writes must stay the child's (private, not shared, anonymous memory)."""
    hot = HotTier()
    vector = np.full(384, 1 / np.sqrt(384), dtype=np.float32)
    hot.append(uuid.uuid4(), vector, "x", floor=0.0, utility=1.0, attended=0, last_evaluated=0.0)
    assert reserve(0, 4 * 384) * 4 * 384 >= HUGE_PAGE_ARRAY_BYTES
    flags = _vm_flags(hot.vectors.ctypes.data)
    assert "nh" in flags and "sh" not in flags  # MADV_NOHUGEPAGE, MAP_PRIVATE
    small = allocate(8, (4,), np.float32, 8)  # below the threshold: plain numpy
    assert small.flags.owndata and small.shape == (8, 4)

    column = allocate(4096, (384,), np.float32, 1024)
    column[:] = 1.0
    pid = os.fork()
    if pid == 0:  # the child overwrites everything and leaves at once
        column[:] = 2.0
        os._exit(0)
    os.waitpid(pid, 0)
    assert float(column.min()) == float(column.max()) == 1.0
