"""``RecordColumns``: records held column-wise, read as records by any index and loaded
as columns by the in-memory one; both indexes end up holding the same data."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from moneta.ecs import HotTier
from moneta.lance_index import LanceVectorIndex
from moneta.protocols import RecordColumns, VectorRecord
from moneta.types import EntityState
from moneta.vector_index import InMemoryVectorIndex

DIM = 8


def _hot(n: int) -> HotTier:
    rng = np.random.default_rng(21)
    hot = HotTier()
    for i in range(n):
        v = rng.standard_normal(DIM).astype(np.float32)
        hot.append(
            uuid.uuid4(), v / np.linalg.norm(v), f"memory {i}", floor=0.1 * (i % 2),
            utility=1.0 - i / (2 * n), attended=i % 4, last_evaluated=1000.0 + i,
        )  # fmt: skip
    return hot


def _as_tuple(r: VectorRecord) -> tuple:
    return (r.entity_id, r.vector.tolist(), r.payload, r.utility, r.attended_count,
            r.protected_floor, r.last_evaluated, r.state, r.usd_link)  # fmt: skip


def test_record_columns_read_as_the_records_of_their_rows() -> None:
    hot = _hot(10)
    run, scattered = hot.records(range(10)), hot.records([7, 2, 5])
    assert isinstance(run, RecordColumns) and len(run) == 10 and len(scattered) == 3
    assert [r.entity_id for r in scattered] == [hot.ids[7], hot.ids[2], hot.ids[5]]
    r = run[3]
    assert (r.payload, r.utility, r.attended_count, r.protected_floor, r.last_evaluated) == (
        "memory 3",
        1.0 - 3 / 20,
        3,
        pytest.approx(0.1),
        1003.0,
    )
    assert r.state is EntityState.VOLATILE and r.usd_link is None
    assert np.array_equal(r.vector, hot.vectors[3])
    assert [x.entity_id for x in run[8:]] == hot.ids[8:] and run[-1].entity_id == hot.ids[9]
    with pytest.raises(IndexError):
        run[10]
    with pytest.raises(ValueError, match="utility has shape"):
        RecordColumns(hot.ids[:2], hot.vectors[:2], ["a", "b"], np.zeros(3), np.zeros(2),
                      np.zeros(2), np.zeros(2), EntityState.VOLATILE)  # fmt: skip


def test_both_indexes_hold_the_same_records_from_columns(tmp_path: Path) -> None:
    hot = _hot(300)
    memory = InMemoryVectorIndex()
    memory.upsert(hot.records(range(300)))  # loaded as columns
    lance = LanceVectorIndex(tmp_path / "vectors")
    try:
        lance.upsert(hot.records(range(300)))  # read as records
        lance.commit()
        want = {r.entity_id: _as_tuple(r) for r in hot.records(range(300))}
        for index in (memory, lance):
            assert index.count() == 300
            got = {r.entity_id: _as_tuple(r) for r in index.get(hot.ids)}
            assert got == want
        # Columns into an index that already holds records take the record path:
        # a repeated id is replaced, not duplicated.
        memory.upsert(hot.records([0, 1]))
        assert memory.count() == 300
        query = hot.vectors[42]
        [(best, score)] = memory.search(query, 1)
        assert best.entity_id == hot.ids[42] and score == pytest.approx(1.0, abs=1e-6)
    finally:
        lance.close()
