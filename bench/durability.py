"""Durability layer speed: WAL append latency, replay rate, snapshot write/read.

Run: ``python bench/durability.py`` (prints JSON). Deposit records carry a 384-float32
vector like a real deposit; the store directory is a fresh temp dir on the local disk.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from moneta.durability import (
    DepositRecord,
    HotImage,
    WriteAheadLog,
    read_snapshot,
    uuids_to_array,
    write_snapshot,
)

DIM = 384


def _deposits(n: int, rng: np.random.Generator) -> list[DepositRecord]:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    return [
        DepositRecord(uuid.uuid4(), f"memory {i}: some agent text", vectors[i], 0.0, 1.7e9)
        for i in range(n)
    ]


def _percentiles_us(samples: list[float]) -> dict[str, float]:
    arr = np.asarray(samples) * 1e6
    return {
        "p50_us": round(float(np.percentile(arr, 50)), 2),
        "p99_us": round(float(np.percentile(arr, 99)), 2),
        "p99_9_us": round(float(np.percentile(arr, 99.9)), 2),
        "max_us": round(float(arr.max()), 2),
        "mean_us": round(float(arr.mean()), 2),
    }


def bench_append(n: int, fsync_interval_s: float, rng: np.random.Generator) -> dict:
    records = _deposits(n, rng)
    with tempfile.TemporaryDirectory() as tmp:
        wal = WriteAheadLog(Path(tmp), fsync_interval_s=fsync_interval_s)
        wal.append(records[0])  # opens the segment and starts the fsync thread
        samples = []
        clock = time.perf_counter
        for record in records[1:]:
            t0 = clock()
            wal.append(record)
            samples.append(clock() - t0)
        wal.close()
    return {"appends": n - 1, "fsync_interval_s": fsync_interval_s, **_percentiles_us(samples)}


def bench_replay(n: int, rng: np.random.Generator) -> dict:
    records = _deposits(n, rng)
    with tempfile.TemporaryDirectory() as tmp:
        wal = WriteAheadLog(Path(tmp))
        for record in records:
            wal.append(record)
        wal.close()
        reader = WriteAheadLog(Path(tmp))
        t0 = time.perf_counter()
        count = sum(1 for _ in reader.replay(0))
        elapsed = time.perf_counter() - t0
        reader.close()
    assert count == n
    return {"records": n, "seconds": round(elapsed, 3), "records_per_s": round(n / elapsed)}


def bench_snapshot(n: int, rng: np.random.Generator) -> dict:
    image = HotImage(
        entity_ids=uuids_to_array([uuid.uuid4() for _ in range(n)]),
        vectors=rng.standard_normal((n, DIM)).astype(np.float32),
        utility=rng.random(n),
        attended_count=rng.integers(0, 10, n),
        protected_floor=np.zeros(n),
        last_evaluated=np.full(n, 1.7e9),
        state=np.zeros(n, dtype=np.int8),
        payloads=[f"memory {i}: some agent text" for i in range(n)],
        usd_links=[None] * n,
        meta={"embedding_dim": DIM},
    )
    writes, reads = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "snapshot.bin"
        for _ in range(3):
            t0 = time.perf_counter()
            write_snapshot(path, image, covers_segment=1)
            writes.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            loaded = read_snapshot(path)
            reads.append(time.perf_counter() - t0)
            assert loaded is not None and len(loaded[0].payloads) == n
        size = path.stat().st_size
    return {
        "rows": n,
        "file_mb": round(size / 1e6, 1),
        "write_s_median": round(float(np.median(writes)), 3),
        "read_s_median": round(float(np.median(reads)), 3),
    }


def main() -> None:
    rng = np.random.default_rng(0)
    result = {
        "append_deposit_timer_fsync": bench_append(100_000, 1.0, rng),
        "append_deposit_fsync_each": bench_append(2_000, 0.0, rng),
        "replay": bench_replay(100_000, rng),
        "snapshot": [bench_snapshot(n, rng) for n in (1_000, 10_000, 100_000)],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
