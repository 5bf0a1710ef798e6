"""WAL segments as mapped files: records flow from one segment into the next, an
oversized record gets a segment of its own, files end at their last record, and a
writer killed at any point loses no record whose append had returned."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from moneta.durability import DepositRecord, WriteAheadLog, encode_record

DIM = 384
SEGMENT = 16_384  # about nine deposit records


def _deposit(i: int, payload: str | None = None) -> DepositRecord:
    vector = np.random.default_rng(i).standard_normal(DIM).astype(np.float32)
    return DepositRecord(uuid.UUID(int=i + 1), payload or f"memory {i:05d}", vector, 0.0, float(i))


@pytest.mark.parametrize("fsync_interval_s", [0.01, 0.0], ids=["background", "every-append"])
def test_records_fill_one_segment_after_another(tmp_path: Path, fsync_interval_s: float) -> None:
    records = [_deposit(i) for i in range(300)]
    frame = len(encode_record(records[0]))
    per_segment = SEGMENT // frame
    wal = WriteAheadLog(tmp_path, fsync_interval_s=fsync_interval_s, segment_bytes=SEGMENT)
    for record in records:
        wal.append(record)
    wal.close()

    numbers = wal.segments()
    assert len(numbers) == math.ceil(300 / per_segment)
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    sizes = [wal.segment_path(n).stat().st_size for n in numbers]
    last = 300 - per_segment * (len(numbers) - 1)
    assert sizes == [per_segment * frame] * (len(numbers) - 1) + [last * frame]
    assert sorted(p.name for p in wal.directory.iterdir()) == [f"{n:012d}.wal" for n in numbers]
    again = WriteAheadLog(tmp_path)
    got = list(again.replay(0))
    again.close()
    assert [r.payload for r in got] == [r.payload for r in records]  # type: ignore[union-attr]
    assert all(np.array_equal(g.vector, w.vector) for g, w in zip(got, records, strict=True))  # type: ignore[union-attr]


def test_a_record_larger_than_a_segment_goes_into_a_segment_large_enough(tmp_path: Path) -> None:
    records = [_deposit(0), _deposit(1, "x" * 20_000), _deposit(2)]
    wal = WriteAheadLog(tmp_path, fsync_interval_s=0.01, segment_bytes=4096)
    for record in records:
        wal.append(record)
    wal.close()
    sizes = [wal.segment_path(n).stat().st_size for n in wal.segments()]
    small, large, after = (len(encode_record(r)) for r in records)
    assert large > 4096 and sizes == [small, large + after]  # the next one fits behind it
    again = WriteAheadLog(tmp_path)
    assert [r.payload for r in again.replay(0)] == [r.payload for r in records]  # type: ignore[union-attr]
    again.close()


def test_a_segment_left_half_prepared_is_removed_and_never_replayed(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.append(_deposit(0))
    wal.close()
    leftover = wal.directory / ".next-4242-dead.wal.tmp"
    leftover.write_bytes(encode_record(_deposit(99)) + bytes(4096))
    wal = WriteAheadLog(tmp_path)
    assert [r.payload for r in wal.replay(0)] == ["memory 00000"]  # type: ignore[union-attr]
    assert not leftover.exists()
    wal.append(_deposit(1))
    wal.close()
    again = WriteAheadLog(tmp_path)
    assert [r.payload for r in again.replay(0)] == ["memory 00000", "memory 00001"]  # type: ignore[union-attr]
    again.close()


_WRITER = """
import sys, uuid
import numpy as np
from moneta.durability import DepositRecord, WriteAheadLog
wal = WriteAheadLog(sys.argv[1], fsync_interval_s=0.05, segment_bytes=int(sys.argv[2]))
vector = np.ones(384, dtype=np.float32)
for i in range(1_000_000):
    wal.append(DepositRecord(uuid.UUID(int=i + 1), f"memory {i}", vector, 0.0, float(i)))
    print(i, flush=True)
"""


def test_a_writer_killed_mid_stream_loses_no_appended_record(tmp_path: Path) -> None:
    """SIGKILL while the writer crosses many small segments (a prepared one is usually
    waiting, the active one runs on in zeros): every append that returned replays, in
    order, and nothing else does but possibly the one being copied."""
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path), str(SEGMENT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    acknowledged = -1
    for line in child.stdout:
        acknowledged = int(line)
        if acknowledged >= 2_000:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    for line in child.stdout:  # lines printed before the kill landed
        acknowledged = int(line)
    child.stdout.close()

    wal = WriteAheadLog(tmp_path)
    got = [r.payload for r in wal.replay(0)]  # type: ignore[union-attr]
    wal.close()
    assert len(got) in (acknowledged + 1, acknowledged + 2)
    assert got == [f"memory {i}" for i in range(len(got))]
    assert len(wal.segments()) > 2_000 // (SEGMENT // 1_600)
