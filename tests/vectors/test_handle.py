"""The LanceDB index through the Moneta handle: what the table holds after deposits,
prunes and consolidation; the same answers after reopening; the embedding dimension
across reopen; compaction by the sleep pass; one process per store."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from moneta import Moneta
from moneta.errors import MonetaResourceLockedError
from moneta.lance_index import LanceVectorIndex
from moneta.store import VECTORS_DIR
from moneta.types import EntityState
from tests.vectors.support import DIM, Clock, record, store_config, table_rows, unit

HALF_LIFE = 60.0


def _answers(m: Moneta, seeds: list[int]) -> list[list[tuple[uuid.UUID, float, EntityState]]]:
    return [
        [(mem.entity_id, mem.utility, mem.state) for mem in m.query(unit(s).tolist(), limit=25)]
        for s in seeds
    ]


def test_table_follows_deposit_prune_consolidation_and_reopen_answers_the_same(
    tmp_path: Path,
) -> None:
    clock = Clock()
    config = store_config(tmp_path, clock)
    with Moneta(config) as m:
        kept = [m.deposit(f"kept {i}", unit(i).tolist()) for i in range(20)]
        doomed = [m.deposit(f"doomed {i}", unit(100 + i).tolist()) for i in range(20)]
        for _ in range(3):
            m.signal_attention({e: 0.0 for e in kept})  # attended 3: staged, not pruned
        clock.now += 4 * HALF_LIFE  # utility 1/16: below both thresholds
        fresh = [m.deposit(f"fresh {i}", unit(200 + i).tolist()) for i in range(20)]
        report = m.run_sleep_pass()
        assert (report.pruned, report.staged, report.consolidated) == (20, 20, 20)

        rows = table_rows(tmp_path)  # straight from LanceDB, another connection
        assert set(rows) == set(kept) | set(fresh)
        assert not set(doomed) & set(rows)
        for e in kept:
            assert rows[e]["state"] == EntityState.CONSOLIDATED
            assert rows[e]["usd_link"]
            assert rows[e]["attended_count"] == 3
            assert rows[e]["utility"] == pytest.approx(1 / 16)
        for i, e in enumerate(fresh):
            assert rows[e]["state"] == EntityState.VOLATILE
            assert rows[e]["payload"] == f"fresh {i}"
        seeds = [0, 7, 19, 203, 219, 105, 999]
        before = _answers(m, seeds)
        # Cold memories are found through the index (ranked by cosine x utility 1/16).
        cold = {e: state for e, _, state in before[1]}
        assert cold[kept[7]] == EntityState.CONSOLIDATED
        assert before[3][0][0] == fresh[3] and before[3][0][2] == EntityState.VOLATILE

    with Moneta(config) as again:
        assert _answers(again, seeds) == before
        assert again.stats().index_records == 40
    assert set(table_rows(tmp_path)) == set(kept) | set(fresh)


def test_forget_removes_the_row_from_the_table(tmp_path: Path) -> None:
    with Moneta(store_config(tmp_path)) as m:
        ids = [m.deposit(f"m {i}", unit(i).tolist()) for i in range(5)]
        m.run_sleep_pass()
        assert set(table_rows(tmp_path)) == set(ids)
        assert m.forget(ids[2])
        assert set(table_rows(tmp_path)) == set(ids) - {ids[2]}


def test_dimension_fixed_by_first_deposit_across_reopen(tmp_path: Path) -> None:
    config = store_config(tmp_path)
    with Moneta(config) as m:
        first = m.deposit("first", unit(1).tolist())
    with Moneta(config) as m:
        with pytest.raises(ValueError, match=f"dimension 8, but this store's is {DIM}"):
            m.deposit("wrong width", unit(2, 8).tolist())
        assert m.stats().index_records == 1
    assert set(table_rows(tmp_path)) == {first}
    with pytest.raises(ValueError, match=r"embedding_dim|dim=8"):
        Moneta(store_config(tmp_path, embedding_dim=8))
    assert set(table_rows(tmp_path)) == {first}
    with Moneta(config) as m:  # the refused open left the store usable
        assert [x.entity_id for x in m.query(unit(1).tolist(), limit=1)] == [first]


# The count. A LanceDB commit of one row writes a data file, a transaction
# file and a manifest (2-12 ms on a disk, half that in tests/conftest.py's tmpfs) and
# the writer compacts every COMPACT_EVERY commits: the suite's longest test.
SINGLE_ROW_COMMITS = 20_000
COMPACT_EVERY = 128


def test_sleep_pass_compacts_after_many_single_row_commits(tmp_path: Path) -> None:
    index = LanceVectorIndex(tmp_path / VECTORS_DIR, commit_every=1_000_000,
                             commit_interval_s=3600.0, compact_every=COMPACT_EVERY)  # fmt: skip
    written = []
    most_fragments = most_versions = 0
    for i in range(SINGLE_ROW_COMMITS):
        rec = record(i, state=EntityState.CONSOLIDATED, utility=0.2, usd_link=f"/Memory_{i}")
        index.upsert([rec])
        index.commit()
        written.append(rec.entity_id)
        if i % 1_000 == 999 or i % COMPACT_EVERY == COMPACT_EVERY - 2:
            shape = index.table_stats()
            most_fragments = max(most_fragments, shape.fragments)
            most_versions = max(most_versions, shape.versions)
    assert index.commits == SINGLE_ROW_COMMITS
    before = index.table_stats()
    index.close()
    # The writer compacts and drops old versions every COMPACT_EVERY commits, so
    # neither grows with the number of commits.
    assert before.rows == SINGLE_ROW_COMMITS
    assert COMPACT_EVERY // 2 < most_fragments <= COMPACT_EVERY + 1
    assert most_versions <= COMPACT_EVERY + 2
    assert before.fragments == SINGLE_ROW_COMMITS % COMPACT_EVERY + 1 > 1

    # No ANN index: what the sleep pass changes on disk here is compaction alone.
    with Moneta(store_config(tmp_path, ann_index_threshold=1_000_000)) as m:
        m.run_sleep_pass()
        best = m.query(unit(1_234).tolist(), limit=1)[0]
        assert best.entity_id == written[1_234]

    index = LanceVectorIndex(tmp_path / VECTORS_DIR)
    after = index.table_stats()
    assert after.rows == SINGLE_ROW_COMMITS
    assert after.fragments == 1 < before.fragments
    assert after.disk_bytes < before.disk_bytes
    assert after.versions < before.versions
    assert {r.entity_id for r in index.get(written[::97])} == set(written[::97])
    index.close()


HOLDER = """
import sys, time
from moneta import Moneta
from tests.vectors.support import store_config, unit
with Moneta(store_config(sys.argv[1])) as m:
    m.deposit("held", unit(1).tolist())
    print("READY", flush=True)
    sys.stdin.readline()
"""


def test_second_process_is_refused_by_the_store_lock(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "READY"
        with pytest.raises(MonetaResourceLockedError, match="already open"):
            Moneta(store_config(tmp_path))
    finally:
        assert child.stdin is not None
        child.stdin.write("\n")
        child.stdin.close()
        assert child.wait(timeout=60) == 0
    with Moneta(store_config(tmp_path)) as m:  # released when the holder closed
        assert m.stats().index_records == 1
