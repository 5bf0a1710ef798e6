"""Speed of the Moneta handle end to end: deposit, query, sleep pass, reopen, memory.

Run: ``python3 bench/substrate.py`` (prints JSON; ``--sizes 1000,10000`` for a quick
run). Each size runs in a fresh child process so its RSS is its own. Per size:

1. open a file-backed, durable store (WAL + snapshots) in a temp dir on local disk;
   deposit N random unit vectors (dim 384) as ``list[float]``, timing each call;
2. ``query(limit=5)`` with random unit queries, each timed next to a bare numpy
   matrix-vector product + ``argpartition`` top-5 over the handle's own vector
   matrix, alternating so both see the same machine load; recall@5 against a
   float64 brute force recomputed from the seed (not from the store);
3. signal attention on 1% of the memories (3 signals each), advance the clock one
   minute and time ``run_sleep_pass()``; 1% of the memories were deposited 20 h
   earlier, so the pass prunes those and consolidates the stale ones that were
   attended;
4. time ``close()`` and re-opening the store, and check every memory is back.

The clock is injected (``MonetaConfig(clock=...)``) so decay is exact and the
ground truth is the closed form; ``auto_sleep=False`` so the only sleep pass is
the timed one. Background checkpoints (snapshot every 50k WAL records) and the
WAL fsync timer run as configured by default.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np

DIM = 384
SEED = 20_260_101
T0 = 1_800_000_000.0  # unix seconds: the simulated "now" of the deposits
HALF_LIFE = 6 * 3600.0
STALE_AGE = 20 * 3600.0  # decays to 0.0992: below the 0.1 prune threshold
STALE_FRACTION = 0.01
ATTENDED_FRACTION = 0.01
SIGNALS_PER_ATTENDED = 3
SIGNAL_WEIGHT = 0.05
CHUNK = 4096

TARGETS = {
    "deposit_p99_us_at_100k": 100.0,
    "deposit_p99_9_us_at_100k": 1000.0,
    "query_p95_ms_at_10k": 1.0,
    "query_p95_ms_at_100k": 12.0,
    "query_to_bare_ratio_p50_at_10k_and_up": 1.5,
    "recall_at_5": 1.0,
    "sleep_pass_ms_at_100k": 50.0,
    "close_reopen_s_at_100k": 2.0,
    "rss_mb_at_100k": 600.0,
}


class Clock:
    """Settable clock for the store (unix seconds)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _vector_chunks(n: int) -> Any:
    """The deposit vectors, regenerated identically on every call (unit, float32)."""
    rng = np.random.default_rng(SEED)
    for start in range(0, n, CHUNK):
        block = rng.standard_normal((min(CHUNK, n - start), DIM)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        yield start, block


def _queries(count: int) -> np.ndarray:
    rng = np.random.default_rng(SEED + 1)
    q = rng.standard_normal((count, DIM))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _rss_mb() -> dict[str, float]:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value, _ = line.split()
                fields[name[:-1]] = round(int(value) / 1024, 1)
    return {"rss_mb": fields["VmRSS"], "peak_rss_mb": fields["VmHWM"]}


def _pct(samples_s: np.ndarray, scale: float, digits: int) -> dict[str, float]:
    a = np.asarray(samples_s) * scale
    return {
        "p50": round(float(np.percentile(a, 50)), digits),
        "p95": round(float(np.percentile(a, 95)), digits),
        "p99": round(float(np.percentile(a, 99)), digits),
        "p99_9": round(float(np.percentile(a, 99.9)), digits),
        "max": round(float(a.max()), digits),
        "mean": round(float(a.mean()), digits),
    }


def _ground_truth(n: int, stale: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k rows per query: float64 cosine x closed-form decayed utility."""
    weight = np.where(stale, 0.5 ** (STALE_AGE / HALF_LIFE), 1.0)
    best_scores = np.full((len(queries), 0), -np.inf)
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    q64 = queries.astype(np.float64)
    for start, block in _vector_chunks(n):
        scores = (block.astype(np.float64) @ q64.T) * weight[start : start + len(block), None]
        scores = scores.T  # (queries, block)
        rows = np.broadcast_to(np.arange(start, start + len(block)), scores.shape)
        all_scores = np.concatenate([best_scores, scores], axis=1)
        all_rows = np.concatenate([best_rows, rows], axis=1)
        keep = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(all_scores, keep, axis=1)
        best_rows = np.take_along_axis(all_rows, keep, axis=1)
    return best_rows


def run_one(n: int, query_count: int, workdir: Path, backend: str, cold: str) -> dict[str, Any]:
    from moneta import Moneta, MonetaConfig  # imported in the child process only

    store = workdir / "store"
    clock = Clock(T0)
    config = MonetaConfig(
        storage_uri=str(store),
        clock=clock,
        auto_sleep=False,
        half_life_seconds=HALF_LIFE,
        vector_backend=backend,
        cold_tier=cold,
    )
    rng = np.random.default_rng(SEED + 2)
    stale = np.zeros(n, dtype=bool)
    stale[rng.choice(n, size=max(1, int(n * STALE_FRACTION)), replace=False)] = True
    result: dict[str, Any] = {"n": n, "vector_backend": backend, "cold_tier": cold}

    # 1. deposits -----------------------------------------------------------------
    t = time.perf_counter()
    m = Moneta(config)
    result["open_empty_s"] = round(time.perf_counter() - t, 4)
    ids: list[UUID] = []
    lat = np.empty(n)
    cpu = np.empty(n)
    # A reference timed in the same loop, so both see the same machine: the list ->
    # float32 conversion with numpy and one append-only os.write of a WAL-sized frame
    # (a deposit converts with struct and copies its frame into a mapped WAL segment).
    floor = np.empty(n)
    floor_fd = os.open(workdir / "floor.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    frame = bytes(4 * DIM + 96)
    perf, thread_cpu = time.perf_counter, time.thread_time
    result["load_avg_1m_at_start"] = round(os.getloadavg()[0], 2)
    t_all = perf()
    for start, block in _vector_chunks(n):
        for j, row in enumerate(block):
            i = start + j
            embedding = row.tolist()
            clock.now = T0 - STALE_AGE if stale[i] else T0
            c = thread_cpu()
            t = perf()
            entity_id = m.deposit(f"memory {i}: an observation the agent made", embedding)
            lat[i] = perf() - t
            cpu[i] = thread_cpu() - c
            t = perf()
            np.array(embedding, dtype=np.float32)
            os.write(floor_fd, frame)
            floor[i] = perf() - t
            ids.append(entity_id)
    wall = perf() - t_all
    os.close(floor_fd)
    clock.now = T0
    tail = lat[int(n * 0.9) :]
    result["deposit_us"] = _pct(lat, 1e6, 1)
    result["deposit_us_last_10pct"] = _pct(tail, 1e6, 1)
    result["deposit_cpu_us"] = _pct(cpu, 1e6, 1)
    result["deposit_floor_us"] = _pct(floor, 1e6, 1)
    result["deposit_pauses_over_1ms"] = int(np.count_nonzero(lat > 1e-3))
    result["deposits_per_s"] = round(n / wall)
    result["after_deposit"] = _rss_mb()

    # 2. queries ------------------------------------------------------------------
    queries = _queries(query_count)
    matrix = m._hot.vectors  # the handle's own live matrix (same memory the query scans)
    handle_s = np.empty(query_count)
    handle_cpu = np.empty(query_count)
    bare_s = np.empty(query_count)
    bare_cpu = np.empty(query_count)
    found = np.empty((query_count, 5), dtype=object)
    for qi, q in enumerate(queries):
        embedding = q.tolist()
        c = thread_cpu()
        t = perf()
        hits = m.query(embedding, limit=5)
        handle_s[qi] = perf() - t
        handle_cpu[qi] = thread_cpu() - c
        found[qi] = [h.entity_id for h in hits]
        c = thread_cpu()
        t = perf()
        scores = matrix @ q
        top = np.argpartition(-scores, 4)[:5]
        top = top[np.argsort(-scores[top])]
        bare_s[qi] = perf() - t
        bare_cpu[qi] = thread_cpu() - c
    del matrix
    result["after_query"] = _rss_mb()  # before the bench's own brute force below
    truth = _ground_truth(n, stale, queries, 5)
    hits_total = sum(len({ids[r] for r in truth[qi]} & set(found[qi])) for qi in range(query_count))
    result["queries"] = query_count
    result["query_ms"] = _pct(handle_s, 1e3, 3)
    result["bare_numpy_ms"] = _pct(bare_s, 1e3, 3)
    result["query_cpu_ms"] = _pct(handle_cpu, 1e3, 3)
    result["bare_numpy_cpu_ms"] = _pct(bare_cpu, 1e3, 3)
    result["query_to_bare_ratio_p50"] = round(float(np.median(handle_s) / np.median(bare_s)), 3)
    result["query_to_bare_ratio_p95"] = round(
        float(np.percentile(handle_s, 95) / np.percentile(bare_s, 95)), 3
    )
    result["query_to_bare_cpu_ratio_p50"] = round(
        float(np.median(handle_cpu) / np.median(bare_cpu)), 3
    )
    result["recall_at_5"] = hits_total / (5 * query_count)

    # 3. attention on 1%, then one sleep pass ------------------------------------
    attended = rng.choice(n, size=max(1, int(n * ATTENDED_FRACTION)), replace=False)
    clock.now = T0 + 10.0
    signal_s = []
    for _ in range(SIGNALS_PER_ATTENDED):
        for part in np.array_split(attended, max(1, len(attended) // 10)):
            weights = {ids[int(r)]: SIGNAL_WEIGHT for r in part}
            t = perf()
            m.signal_attention(weights)
            signal_s.append(perf() - t)
    result["signal_attention_10_ids_us"] = _pct(np.asarray(signal_s), 1e6, 1)
    clock.now = T0 + 60.0
    gc.collect()
    c = time.process_time()
    t = perf()
    report = m.run_sleep_pass()
    result["sleep_pass_ms"] = round((perf() - t) * 1e3, 2)
    result["sleep_pass_cpu_ms"] = round((time.process_time() - c) * 1e3, 2)
    result["sleep_pass"] = {
        "attention_applied": report.attention_applied,
        "pruned": report.pruned,
        "staged": report.staged,
        "consolidated": report.consolidated,
        "error": report.error,
    }
    stale_attended = int(np.count_nonzero(stale[attended]))
    expected_pruned = int(np.count_nonzero(stale)) - stale_attended
    if report.pruned != expected_pruned or report.consolidated != stale_attended:
        raise AssertionError(
            f"sleep pass pruned {report.pruned} (expected {expected_pruned}) and "
            f"consolidated {report.consolidated} (expected {stale_attended})"
        )
    hot_after_pass = m.stats().hot

    # 4. close + reopen ------------------------------------------------------------
    c = time.process_time()
    t = perf()
    m.close()
    close_s = perf() - t
    del m  # a closed handle is garbage once dropped (no reference cycle keeps it)
    m = Moneta(config)
    reopen_s = perf() - t - close_s
    close_reopen_cpu_s = time.process_time() - c
    reopened = m.stats().hot
    t = perf()
    m.query(queries[0].tolist(), limit=5)
    first_query_s = perf() - t
    result["after_reopen"] = _rss_mb()
    m.close()
    if reopened != hot_after_pass:
        raise AssertionError(f"reopen found {reopened} hot memories, expected {hot_after_pass}")
    result["close_s"] = round(close_s, 3)
    result["reopen_s"] = round(reopen_s, 3)
    result["close_reopen_s"] = round(close_s + reopen_s, 3)
    result["close_reopen_cpu_s"] = round(close_reopen_cpu_s, 3)
    result["first_query_after_reopen_ms"] = round(first_query_s * 1e3, 3)
    result["hot_after_reopen"] = reopened
    result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return result


def _checks(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each target against the measured value (None when that size was not run)."""
    r1 = results.get("10000")
    r2 = results.get("100000")
    # Medians: a p95 ratio mostly compares which of two calls got preempted. Sizes
    # below 10k are left out (their matrix sits in cache: no bandwidth limit to be
    # close to) and listed per size instead.
    ratios = [r["query_to_bare_ratio_p50"] for r in results.values() if r["n"] >= 10_000]
    recalls = [r["recall_at_5"] for r in results.values()]
    measured = {
        "deposit_p99_us_at_100k": r2 and r2["deposit_us"]["p99"],
        "deposit_p99_9_us_at_100k": r2 and r2["deposit_us"]["p99_9"],
        "query_p95_ms_at_10k": r1 and r1["query_ms"]["p95"],
        "query_p95_ms_at_100k": r2 and r2["query_ms"]["p95"],
        "query_to_bare_ratio_p50_at_10k_and_up": max(ratios) if ratios else None,
        "recall_at_5": min(recalls) if recalls else None,
        "sleep_pass_ms_at_100k": r2 and r2["sleep_pass_ms"],
        "close_reopen_s_at_100k": r2 and r2["close_reopen_s"],
        "rss_mb_at_100k": r2
        and max(r2[k]["rss_mb"] for k in ("after_deposit", "after_query", "after_reopen")),
    }
    # CPU time of the measuring thread/process: what an idle machine would show,
    # reported next to the wall-clock verdict (which decides "met").
    cpu = {
        "deposit_p99_us_at_100k": r2 and r2["deposit_cpu_us"]["p99"],
        "deposit_p99_9_us_at_100k": r2 and r2["deposit_cpu_us"]["p99_9"],
        "query_p95_ms_at_10k": r1 and r1["query_cpu_ms"]["p95"],
        "query_p95_ms_at_100k": r2 and r2["query_cpu_ms"]["p95"],
        "sleep_pass_ms_at_100k": r2 and r2["sleep_pass_cpu_ms"],
        "close_reopen_s_at_100k": r2 and r2["close_reopen_cpu_s"],
    }
    out: dict[str, Any] = {}
    for name, target in TARGETS.items():
        value = measured[name]
        if value is None:
            out[name] = {"target": target, "measured": None, "met": None}
        elif name == "recall_at_5":
            out[name] = {"target": target, "measured": value, "met": value >= target}
        else:
            out[name] = {"target": target, "measured": value, "met": value <= target}
        if cpu.get(name) is not None:
            out[name]["cpu_time"] = cpu[name]
    out["query_to_bare_ratio_p50_at_10k_and_up"]["per_size_p50"] = {
        n: r["query_to_bare_ratio_p50"] for n, r in results.items()
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument(
        "--blas-threads",
        type=int,
        help="OPENBLAS_NUM_THREADS for the measured process (default: OpenBLAS decides, as "
        "for a user: one thread per core; the 100k query target needs the memory bandwidth "
        "of both cores of a 2-core machine, one thread alone does not reach it)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        help="niceness increment for the measured process (negative needs root): on a "
        "machine shared with other work, a fairer share of the CPU for the timed loop",
    )
    parser.add_argument("--vector-backend", default="memory", choices=("memory", "lancedb"))
    parser.add_argument("--cold-tier", default="jsonl", choices=("jsonl", "usd"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--queries", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        if args.nice is not None:
            os.nice(args.nice)
        with tempfile.TemporaryDirectory(prefix="moneta-bench-") as tmp:
            result = run_one(args.one, args.queries, Path(tmp), args.vector_backend, args.cold_tier)
            print(json.dumps(result))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if args.blas_threads is not None:
        env["OPENBLAS_NUM_THREADS"] = str(args.blas_threads)
    for n in sizes:
        # 600 at 100k: a p95 of 200 queries rests on its 10 slowest, one preemption each.
        query_count = 2000 if n <= 1000 else 1000 if n <= 10_000 else 600
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                str(n),
                "--queries",
                str(query_count),
                *([] if args.nice is None else ["--nice", str(args.nice)]),
                *["--vector-backend", args.vector_backend, "--cold-tier", args.cold_tier],
            ],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        results[str(n)] = json.loads(child.stdout.strip().splitlines()[-1])
    print(
        json.dumps(
            {
                "bench": "substrate",
                "command": "python3 bench/substrate.py --sizes "
                + args.sizes
                + ("" if args.blas_threads is None else f" --blas-threads {args.blas_threads}")
                + ("" if args.nice is None else f" --nice {args.nice}")
                + ("" if args.vector_backend == "memory" else " --vector-backend lancedb")
                + ("" if args.cold_tier == "jsonl" else " --cold-tier usd"),
                "machine": {
                    "cpus": os.cpu_count(),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(),
                    "numpy": np.__version__,
                },
                "dim": DIM,
                "results": results,
                "targets": _checks(results),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
