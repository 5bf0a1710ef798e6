"""LanceVectorIndex against real LanceDB tables in temp directories.

Every test counts what reached the table by reading it back, either through a
fresh index on the same directory or straight through ``lancedb``.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import lancedb
import numpy as np
import pytest

from moneta.lance_index import MAX_ANN_DELTAS, TABLE_NAME, LanceVectorIndex
from moneta.types import EntityState
from tests.vectors.support import DIM, record, unit, wait_for

CONSOLIDATED = frozenset({EntityState.CONSOLIDATED})
# Timer and count flushes are switched off unless a test is about them.
QUIET = {"commit_interval_s": 3600.0, "commit_every": 1_000_000}


def committed(directory: Path) -> int:
    """Rows committed to the table, read by a separate LanceDB connection."""
    db = lancedb.connect(str(directory))
    try:
        return db.open_table(TABLE_NAME).count_rows()
    except ValueError:  # not created yet
        return 0


def versions(directory: Path) -> int:
    db = lancedb.connect(str(directory))
    if TABLE_NAME not in db.list_tables().tables:
        return 0
    return len(db.open_table(TABLE_NAME).list_versions())


def test_buffered_writes_are_read_before_commit_and_durable_after(tmp_path: Path) -> None:
    index = LanceVectorIndex(tmp_path, **QUIET)
    records = [record(i) for i in range(40)]
    index.upsert(records)
    assert committed(tmp_path) == 0  # nothing committed by upsert
    assert index.count() == 40
    hits = index.search(unit(7), 3)
    assert hits[0][0].entity_id == records[7].entity_id
    assert hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert [r.entity_id for r in index.get([records[3].entity_id])] == [records[3].entity_id]
    index.commit()
    assert committed(tmp_path) == 40
    index.close()

    reopened = LanceVectorIndex(tmp_path, **QUIET)
    assert reopened.dim == DIM
    assert reopened.count() == 40
    for i in (0, 17, 39):
        best, score = reopened.search(unit(i), 1)[0]
        assert best.entity_id == records[i].entity_id
        assert best.payload == f"memory {i}"
        assert score == pytest.approx(1.0, abs=1e-5)
    reopened.close()


def test_upsert_replaces_by_id_and_delete_removes(tmp_path: Path) -> None:
    index = LanceVectorIndex(tmp_path, **QUIET)
    records = [record(i) for i in range(10)]
    index.upsert(records)
    index.commit()
    moved = record(3, entity_id=records[3].entity_id, state=EntityState.CONSOLIDATED,
                   utility=0.2, usd_link="/Memory_x")  # fmt: skip
    index.upsert([moved])
    index.upsert([moved])  # twice in one buffer, and again in the next commit
    index.commit()
    index.upsert([moved])
    index.delete([records[5].entity_id, uuid.uuid4()])  # an unknown id is ignored
    index.commit()
    assert committed(tmp_path) == 9
    assert index.count() == 9
    [got] = index.get([records[3].entity_id])
    assert (got.state, got.utility, got.usd_link) == (EntityState.CONSOLIDATED, 0.2, "/Memory_x")
    assert index.get([records[5].entity_id]) == []
    cold = index.search(unit(3), 5, states=CONSOLIDATED)
    assert [r.entity_id for r, _ in cold] == [records[3].entity_id]
    index.close()


def test_buffered_delete_hides_committed_row_from_reads(tmp_path: Path) -> None:
    index = LanceVectorIndex(tmp_path, **QUIET)
    records = [record(i) for i in range(5)]
    index.upsert(records)
    index.commit()
    index.delete([records[2].entity_id])
    assert index.count() == 4
    assert records[2].entity_id not in {r.entity_id for r, _ in index.search(unit(2), 5)}
    assert committed(tmp_path) == 5  # still only buffered
    index.close()  # close commits
    assert committed(tmp_path) == 4


def test_dimension_fixed_by_first_upsert_mismatch_writes_nothing(tmp_path: Path) -> None:
    index = LanceVectorIndex(tmp_path, **QUIET)
    index.upsert([record(1)])
    index.commit()
    before = versions(tmp_path)
    with pytest.raises(ValueError, match=r"records\[1\]\.vector has dimension 8"):
        index.upsert([record(2), record(3, dim=8)])
    assert index.count() == 1  # the valid record of the rejected call was not kept
    index.commit()
    assert versions(tmp_path) == before
    assert committed(tmp_path) == 1
    index.close()

    reopened = LanceVectorIndex(tmp_path, **QUIET)
    assert reopened.dim == DIM
    with pytest.raises(ValueError, match="dimension"):
        reopened.upsert([record(4, dim=DIM + 1)])
    reopened.close()
    with pytest.raises(ValueError, match=rf"dim={DIM + 1} conflicts"):
        LanceVectorIndex(tmp_path, dim=DIM + 1, **QUIET)
    assert committed(tmp_path) == 1


def test_bad_arguments_name_the_argument(tmp_path: Path) -> None:
    index = LanceVectorIndex(tmp_path, **QUIET)
    with pytest.raises(TypeError, match=r"records\[0\] must be a VectorRecord"):
        index.upsert([object()])  # type: ignore[list-item]
    poisoned = record(1)
    poisoned.vector = np.full(DIM, np.nan, dtype=np.float32)
    with pytest.raises(ValueError, match=r"records\[0\]\.vector must contain only finite"):
        index.upsert([poisoned])
    with pytest.raises(ValueError, match="limit must be >= 1"):
        index.search(unit(1), 0)
    with pytest.raises(ValueError, match="commit_every must be >= 1"):
        LanceVectorIndex(tmp_path / "other", commit_every=0)
    with pytest.raises(ValueError, match="compact_every must be >= 1"):
        LanceVectorIndex(tmp_path / "other", compact_every=0)
    assert index.count() == 0
    index.close()


def test_group_commit_by_count_and_by_time(tmp_path: Path) -> None:
    by_count = LanceVectorIndex(tmp_path / "count", commit_every=25, commit_interval_s=3600.0)
    by_count.upsert([record(i) for i in range(24)])
    assert committed(tmp_path / "count") == 0
    by_count.upsert([record(100)])  # the 25th buffered record wakes the flusher
    wait_for(lambda: by_count.commits == 1, what="the count-triggered commit")
    assert committed(tmp_path / "count") == 25
    by_count.close()

    by_time = LanceVectorIndex(tmp_path / "time", commit_every=1_000_000, commit_interval_s=0.05)
    by_time.upsert([record(i) for i in range(3)])
    wait_for(lambda: committed(tmp_path / "time") == 3, what="the timed commit")
    by_time.close()


def test_search_filters_by_state_in_buffer_and_table(tmp_path: Path) -> None:
    index = LanceVectorIndex(tmp_path, **QUIET)
    cold = [record(i, state=EntityState.CONSOLIDATED, usd_link=f"/M{i}") for i in range(20)]
    hot = [record(i + 1000) for i in range(20)]
    index.upsert(cold[:10] + hot[:10])
    index.commit()
    index.upsert(cold[10:] + hot[10:])  # half buffered
    for i in (2, 15):
        hits = index.search(unit(i), 4, states=CONSOLIDATED)
        assert hits[0][0].entity_id == cold[i].entity_id
        assert all(r.state == EntityState.CONSOLIDATED for r, _ in hits)
    hits = index.search(unit(1012), 1, states=frozenset({EntityState.VOLATILE}))
    assert hits[0][0].entity_id == hot[12].entity_id
    everything = index.search(unit(0), 100)
    assert len(everything) == 40
    assert [s for _, s in everything] == sorted((s for _, s in everything), reverse=True)
    index.close()


def test_cold_search_skips_the_table_while_no_row_is_consolidated(tmp_path: Path) -> None:
    """A store with only hot rows answers a consolidated-only search without a table
    search; the first consolidated row, buffered or committed, and a reopen of a table
    holding one make it search again."""
    index = LanceVectorIndex(tmp_path, **QUIET)
    hot = [record(i) for i in range(30)]
    index.upsert(hot)
    index.commit()
    assert index.search(unit(3), 5, states=CONSOLIDATED, weighted=True) == []
    assert index.table_searches == 0
    assert index.search(unit(3), 1)[0][0].entity_id == hot[3].entity_id  # any state
    assert index.table_searches == 1
    index.close()

    reopened = LanceVectorIndex(tmp_path, **QUIET)  # the table holds hot rows only
    assert reopened.search(unit(3), 5, states=CONSOLIDATED) == []
    assert reopened.table_searches == 0
    cold = record(3, state=EntityState.CONSOLIDATED, entity_id=hot[3].entity_id, usd_link="/M3")
    reopened.upsert([cold])  # buffered: a state change of a committed row
    hits = reopened.search(unit(3), 5, states=CONSOLIDATED, weighted=True)
    assert [(r.entity_id, r.state) for r, _ in hits] == [(cold.entity_id, cold.state)]
    assert reopened.table_searches == 1
    reopened.commit()
    reopened.close()

    again = LanceVectorIndex(tmp_path, **QUIET)  # the consolidated row is on disk now
    hits = again.search(unit(3), 5, states=CONSOLIDATED, weighted=True)
    assert [r.entity_id for r, _ in hits] == [cold.entity_id]
    assert again.table_searches == 1
    again.delete([cold.entity_id])  # deletes leave it searching: a stale "may hold"
    again.commit()
    assert again.search(unit(3), 5, states=CONSOLIDATED) == []
    assert again.table_searches == 2
    again.close()


def test_ann_index_built_past_threshold_and_unindexed_rows_found(tmp_path: Path) -> None:
    dim = 32
    index = LanceVectorIndex(tmp_path, ann_threshold=3000, **QUIET)
    hot = [record(i + 10_000, dim=dim) for i in range(3500)]
    index.upsert(hot)
    index.maintain()
    assert not index.ann_indexed  # hot rows do not count: the handle never searches them
    index.delete(r.entity_id for r in hot)
    first = [record(i, dim=dim, state=EntityState.CONSOLIDATED) for i in range(2500)]
    index.upsert(first)
    index.maintain()
    assert not index.ann_indexed  # below the threshold: exact search
    assert "vector_idx" not in index.table_stats().indices
    more = [record(i, dim=dim, state=EntityState.CONSOLIDATED) for i in range(2500, 3200)]
    index.upsert(more)
    index.maintain()
    assert index.ann_indexed
    assert "vector_idx" in index.table_stats().indices
    for i in (5, 1234, 3100):
        best, score = index.search(unit(i, dim), 5, states=CONSOLIDATED)[0]
        assert best.entity_id == (first + more)[i].entity_id
        assert score == pytest.approx(1.0, abs=1e-3)

    late = [record(i, dim=dim, state=EntityState.CONSOLIDATED) for i in range(5000, 5050)]
    index.upsert(late[:25])
    index.commit()  # committed, not yet in the ANN index
    index.upsert(late[25:])  # only buffered
    db_table = lancedb.connect(str(tmp_path)).open_table(TABLE_NAME)
    assert db_table.index_stats("vector_idx").num_unindexed_rows == 25
    for rec, i in ((late[3], 5003), (late[40], 5040)):
        best, score = index.search(unit(i, dim), 5, states=CONSOLIDATED)[0]
        assert best.entity_id == rec.entity_id
        assert score == pytest.approx(1.0, abs=1e-3)
    index.maintain()  # folds the new rows into the index
    db_table = lancedb.connect(str(tmp_path)).open_table(TABLE_NAME)
    stats = db_table.index_stats("vector_idx")
    assert (stats.num_indexed_rows, stats.num_unindexed_rows) == (3250, 0)
    best, _ = index.search(unit(5040, dim), 1, states=CONSOLIDATED)[0]
    assert best.entity_id == late[40].entity_id
    index.close()
    reopened = LanceVectorIndex(tmp_path, ann_threshold=3000, **QUIET)
    assert reopened.ann_indexed and reopened.count() == 3250
    reopened.close()


# compact_every=2: the flusher compacts and deletes old versions while searches read.
@pytest.mark.parametrize("compact_every", [128, 2])
def test_concurrent_writers_readers_and_maintenance_lose_nothing(
    tmp_path: Path, compact_every: int
) -> None:
    index = LanceVectorIndex(
        tmp_path, commit_every=50, commit_interval_s=0.05, compact_every=compact_every
    )
    written: list[list[uuid.UUID]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(400):
                rec = record(k * 10_000 + i)
                index.upsert([rec])
                written[k].append(rec.entity_id)
                if i % 100 == 99:
                    index.search(unit(i), 3)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    index.maintain()  # compaction and version cleanup while writers and readers run
    for t in threads:
        t.join()
    assert errors == []
    index.maintain()
    everything = {e for ids in written for e in ids}
    assert len(everything) == 1600
    assert committed(tmp_path) == 1600
    assert index.count() == 1600
    assert {r.entity_id for r in index.get(everything)} == everything
    index.close()


def test_sleep_pass_retrains_ann_after_many_deltas_and_merges_fragments(tmp_path: Path) -> None:
    index = LanceVectorIndex(tmp_path, commit_every=1 << 20, commit_interval_s=3600.0,
                             ann_threshold=200, compact_every=2)  # fmt: skip
    index.upsert([record(i, state=EntityState.CONSOLIDATED) for i in range(300)])
    index.maintain()
    assert index.ann_indexed and index.table_stats().ann_deltas == 1
    added = []
    for i in range(2 * (MAX_ANN_DELTAS + 1)):  # a compaction, and a delta, every 2 commits
        rec = record(1_000 + i)
        index.upsert([rec])
        index.commit()
        added.append(rec)
    before = index.table_stats()
    assert before.ann_deltas > MAX_ANN_DELTAS and before.fragments > MAX_ANN_DELTAS
    index.maintain()
    after = index.table_stats()
    assert (after.rows, after.fragments, after.ann_deltas) == (300 + len(added), 1, 1)
    for rec in added[::7]:
        assert index.search(rec.vector, 1)[0][0].entity_id == rec.entity_id
    index.close()
