"""Crashes around the vector commit, with real SIGKILLs of child processes.

1. Between an acknowledged deposit and its group commit: the write-ahead log
   re-commits every acknowledged deposit to LanceDB on recovery.
2. After the cold tier saved a consolidation batch but before the vector commit:
   the batch is still STAGED after recovery, and the next pass re-authors it
   idempotently (one prim and one table row per memory) and commits it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from moneta import Moneta
from moneta.types import EntityState
from moneta.usd_target import UsdTarget
from tests.vectors.support import Clock, store_config, table_rows, unit

ROOT = Path(__file__).resolve().parents[2]

# Deposits with every LanceDB flush switched off (no timer, no count, no checkpoint),
# printing each id only after deposit() returned, then waits to be killed.
DEPOSITOR = """
import sys
from moneta import Moneta
from tests.vectors.support import store_config, unit
config = store_config(
    sys.argv[1],
    index_commit_interval_seconds=3600.0,
    index_commit_every_records=1_000_000,
    checkpoint_every_records=1_000_000,
    checkpoint_interval_seconds=3600.0,
)
m = Moneta(config)
for i in range(int(sys.argv[2])):
    print(m.deposit(f"memory {i}", unit(i).tolist()), flush=True)
print("DONE", flush=True)
sys.stdin.readline()
"""


def _run(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def test_sigkill_before_group_commit_loses_no_acknowledged_deposit(tmp_path: Path) -> None:
    child = _run(DEPOSITOR, str(tmp_path), "300")
    assert child.stdout is not None
    acked = []
    for line in child.stdout:
        if line.strip() == "DONE":
            break
        acked.append(uuid.UUID(line.strip()))
    assert len(acked) == 300
    # Nothing reached LanceDB yet: every deposit is only in the buffer and the WAL.
    assert table_rows(tmp_path) == {}
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL

    with Moneta(store_config(tmp_path)) as m:  # recovery re-commits from the WAL
        rows = table_rows(tmp_path)
        assert set(rows) == set(acked)
        assert all(rows[e]["state"] == EntityState.VOLATILE for e in acked)
        assert [rows[e]["payload"] for e in acked] == [f"memory {i}" for i in range(300)]
        for i in (0, 150, 299):
            assert m.query(unit(i).tolist(), limit=1)[0].entity_id == acked[i]
    assert set(table_rows(tmp_path)) == set(acked)  # and again after a clean close


# Deposits 20 memories, makes them due for consolidation, and runs a sleep pass in
# which the process dies after the cold tier saved the batch, at the vector commit.
CRASHER = """
import os, signal, sys
from moneta import Moneta
from moneta.lance_index import LanceVectorIndex
from moneta.types import EntityState
from tests.vectors.support import Clock, store_config, unit

original = LanceVectorIndex._write

def dying_write(self, batch):
    if any(r is not None and r.state == EntityState.CONSOLIDATED for r in batch.values()):
        print("DYING", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, batch)

LanceVectorIndex._write = dying_write
clock = Clock(float(sys.argv[2]))
m = Moneta(store_config(sys.argv[1], clock, cold_tier="usd"))
ids = [m.deposit(f"memory {i}", unit(i).tolist()) for i in range(20)]
for e in ids:
    print(e, flush=True)
m._index.commit()  # deposits committed as VOLATILE rows before the pass
for _ in range(3):
    m.signal_attention({e: 0.0 for e in ids})
clock.now += 240.0
m.run_sleep_pass()
print("SURVIVED", flush=True)
"""


def test_crash_between_cold_save_and_vector_commit_leaves_batch_staged(tmp_path: Path) -> None:
    start = Clock().now
    child = _run(CRASHER, str(tmp_path), str(start))
    out, _ = child.communicate(timeout=120)
    lines = out.split()
    assert lines[-1] == "DYING", out
    assert child.returncode == -signal.SIGKILL
    ids = [uuid.UUID(x) for x in lines[:-1]]
    assert len(ids) == 20

    cold = UsdTarget(tmp_path / "cold")
    assert set(cold.read(ids)) == set(ids)  # the cold tier had saved the batch
    cold.close()
    rows = table_rows(tmp_path)
    assert {rows[e]["state"] for e in ids} == {EntityState.VOLATILE}  # vector commit never ran

    clock = Clock(start + 240.0)
    config = store_config(tmp_path, clock, cold_tier="usd")
    with Moneta(config) as m:
        staged = m.get_consolidation_manifest()
        assert {x.entity_id for x in staged} == set(ids)
        assert {x.state for x in staged} == {EntityState.STAGED_FOR_SYNC}
        report = m.run_sleep_pass()
        assert (report.consolidated, report.failed_batches) == (20, 0)
        assert m.get_consolidation_manifest() == []
        assert m.stats().hot == 0

    rows = table_rows(tmp_path)  # asserts one row per id
    assert set(rows) == set(ids)
    assert {rows[e]["state"] for e in ids} == {EntityState.CONSOLIDATED}
    cold = UsdTarget(tmp_path / "cold")
    try:
        records = cold.read(ids)
        assert set(records) == set(ids)
        assert {rows[e]["usd_link"] for e in ids} == {records[e].usd_link for e in ids}
        assert cold.count() == 20
        assert sum(layer.prims for layer in cold.layer_stack()) == 20  # no prim authored twice
    finally:
        cold.close()
