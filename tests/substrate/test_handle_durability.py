"""Must hold 8 through the handle (the SIGKILL test is test_durability_kill.py):
durability is on by default for file stores, a reopen restores every field, a torn
final WAL record is skipped with a warning, and a corrupt snapshot is an error that
names the file — never a silent empty store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moneta import EntityState, Moneta, MonetaConfig, SnapshotCorruptError
from moneta.durability import SNAPSHOT_FILE_NAME, WAL_DIR_NAME, WalTornTailWarning
from tests.substrate.conftest import FakeClock, unit_vector

REPO = Path(__file__).resolve().parents[2]
DIM = 8


def _config(path: Path, clock: FakeClock | None = None) -> MonetaConfig:
    extra = {"clock": clock} if clock is not None else {}
    return MonetaConfig(storage_uri=path, cold_tier="jsonl", auto_sleep=False, **extra)


def _everything(m: Moneta, n: int) -> list[tuple]:
    hits = m.query([1.0] + [0.0] * (DIM - 1), limit=n)
    return sorted(
        (h.entity_id, h.payload, h.semantic_vector, h.utility, h.attended_count,
         h.protected_floor, h.last_evaluated, h.state, h.usd_link)
        for h in hits if h.state is not EntityState.CONSOLIDATED
    )  # fmt: skip


def test_durability_is_on_by_default_for_file_stores_only(tmp_path: Path) -> None:
    assert MonetaConfig(storage_uri=tmp_path / "s").durable
    assert MonetaConfig(storage_uri=f"file://{tmp_path}/s").durable
    assert not MonetaConfig.ephemeral().durable
    assert not MonetaConfig(storage_uri=tmp_path / "s", durability=False).durable
    with Moneta(_config(tmp_path / "s")) as m:
        m.deposit("x", [1.0, 0.0])
        assert m.stats().durable
        assert (tmp_path / "s" / WAL_DIR_NAME).is_dir()
    assert (tmp_path / "s" / SNAPSHOT_FILE_NAME).is_file()


@pytest.mark.parametrize("checkpoint", ["snapshot", "wal-only"])
def test_reopen_restores_every_hot_field(tmp_path: Path, clock: FakeClock, checkpoint: str) -> None:
    rng = np.random.default_rng(50)
    config = _config(tmp_path / "store", clock)
    if checkpoint == "wal-only":  # never snapshot while open; close still checkpoints
        config = config.with_changes(checkpoint_every_records=10**9)
    with Moneta(config) as m:
        ids = [
            m.deposit(f"memory {i}", unit_vector(rng, DIM), 0.3 if i % 7 == 0 else 0.0)
            for i in range(40)
        ]
        clock.advance(1800.0)
        m.signal_attention({e: 0.1 * (i % 3) - 0.05 for i, e in enumerate(ids[:20])})
        m.run_sleep_pass()
        m.signal_attention({ids[1]: 0.2, ids[2]: -0.1})  # still pending at close
        m.unpin(ids[7])
        m.forget(ids[3])
        before = _everything(m, 100)
        pending = m.stats().pending_attention
        assert len(before) == 39 and pending == 2
    with Moneta(config) as m:
        assert _everything(m, 100) == before
        assert m.stats().pending_attention == pending
        assert m.run_sleep_pass().attention_applied == 2


CRASH_CHILD = """
import os, sys
from moneta import Moneta, MonetaConfig
store, n = sys.argv[1], int(sys.argv[2])
m = Moneta(MonetaConfig(storage_uri=store, cold_tier="jsonl", auto_sleep=False,
                        wal_fsync_interval_seconds=0))
for i in range(n):
    m.deposit(f"memory {i}", [1.0, float(i), 0.0])
os._exit(0)  # a crash: no close, no checkpoint
"""


def _crash_after(store: Path, n: int) -> None:
    subprocess.run(
        [sys.executable, "-c", CRASH_CHILD, str(store), str(n)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
        timeout=120,
    )


def test_torn_final_wal_record_is_skipped_with_a_warning(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _crash_after(store, 25)
    segments = sorted((store / WAL_DIR_NAME).iterdir())
    assert segments
    last = segments[-1]
    data = last.read_bytes()
    end = len(data.rstrip(b"\x00"))  # a killed process leaves the segment's zero fill
    assert end < len(data)
    with open(last, "r+b") as f:  # the final record's copy was cut short
        f.seek(end - 5)
        f.write(bytes(5))
    with pytest.warns(WalTornTailWarning, match="torn final record"):
        m = Moneta(_config(store))
    with m:
        payloads = sorted(h.payload for h in m.query([1.0, 0.0, 0.0], limit=100))
    assert payloads == sorted(f"memory {i}" for i in range(24))


def test_corrupt_snapshot_raises_naming_the_file_and_never_opens_empty(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with Moneta(_config(store)) as m:
        for i in range(30):
            m.deposit(f"memory {i}", [1.0, float(i), 0.0])
    snapshot = store / SNAPSHOT_FILE_NAME
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snapshot.write_bytes(bytes(data))
    for _ in range(2):  # the failed open released the store: the same error again
        with pytest.raises(SnapshotCorruptError, match=str(snapshot)):
            Moneta(_config(store))
