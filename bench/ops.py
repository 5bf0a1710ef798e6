"""Operations benchmark: prints one JSON object.

    python3 bench/ops.py [--latencies 0,0.1] [--pairs 5]

1. Cache warm-up: the cache-read share of input tokens over a full 5-loop embedded
   run of this repository (packaged config, real snapshot) through the real SDK
   against the loopback stub (its own process, a fresh cache per run), with the
   role wave of each loop fanned out at once (`none`), the first call of the run's
   first loop sent alone until its response starts (`first`), and the first call of
   every loop sent alone (`each`, the runner's behaviour); at cache TTL 1h and 5m.
   The stub waits TTFT = 0.5 s before a response starts (a model's time to first
   token): a prefix is cached only from then.
2. Metrics overhead: the same full run with and without metrics collection (every
   model-call attempt recorded, the in-process exporter served and scraped once a
   second), alternating `--pairs` times at each stub latency; medians and the
   overhead in percent. Target: <= 2%.
3. Recording cost per model-call attempt (`Recorder.call`), in process and into the
   machine's Redis (a throwaway key prefix in DB 13, deleted afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402

import orchestrator.run as run_mod  # noqa: E402
from bench.review import stub_process  # noqa: E402
from orchestrator.config import load_config  # noqa: E402
from orchestrator.cost import cache_read_share  # noqa: E402
from orchestrator.metrics import MemoryStore, Recorder, serve_metrics  # noqa: E402
from orchestrator.run import RunOptions, run_review  # noqa: E402

WARM_MODES = ("none", "first", "each")
TTFT = 0.5  # stub seconds before a response's first event: a model's time to first token


_original_run_reviewers = run_mod._run_reviewers


def set_warm_mode(mode: str) -> None:
    """Make the runner warm no loop, only the first, or every loop (its own behaviour)."""
    if mode == "each":
        run_mod._run_reviewers = _original_run_reviewers
        return
    warmed = False

    async def patched(jobs: Any, backend: Any, limiter: Any, emit: Any, **kw: Any) -> Any:
        nonlocal warmed
        kw["warm_first"] = mode == "first" and not warmed and len(jobs) > 1
        warmed = warmed or kw["warm_first"]
        return await _original_run_reviewers(jobs, backend, limiter, emit, **kw)

    run_mod._run_reviewers = patched  # type: ignore[assignment]


def one_run(
    latency: float, *, ttl: str = "1h", metrics: bool = False, ttft: float = 0.0
) -> dict[str, Any]:
    config = replace(load_config(), cache_ttl=ttl)
    with tempfile.TemporaryDirectory() as tmp, stub_process(latency, ttft) as url:
        os.environ["ANTHROPIC_API_KEY"] = "bench"
        os.environ["ANTHROPIC_BASE_URL"] = url
        recorder = None
        server = None
        stop = threading.Event()
        scrapes = 0
        if metrics:
            store = MemoryStore()
            recorder = Recorder(store, "embedded")
            server, _ = serve_metrics(store, "embedded", 0, rq=False, addr="127.0.0.1")
            port = server.server_port

            def scrape() -> None:
                nonlocal scrapes
                while not stop.wait(1.0):
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
                        r.read()
                    scrapes += 1

            threading.Thread(target=scrape, daemon=True).start()
        options = RunOptions(repo=ROOT, config=config, out_dir=Path(tmp) / "out", recorder=recorder)
        start, cpu_start = time.perf_counter(), time.process_time()
        report = anyio.run(lambda: run_review(options))
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        stop.set()
        if server is not None:
            server.shutdown()
        with urllib.request.urlopen(url + "/stub/stats") as response:
            stats = json.load(response)
    usage = stats["usage"]
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "calls": report.calls,
        "usage": usage,
        "cache_read_share": round(cache_read_share(usage) or 0.0, 4),
        "scrapes": scrapes,
    }


def warm_up() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ttl in ("1h", "5m"):
        for mode in WARM_MODES:
            set_warm_mode(mode)
            r = one_run(0.05, ttl=ttl, ttft=TTFT)
            out[f"{mode}/{ttl}"] = {
                "cache_read_share": r["cache_read_share"],
                "cache_write_tokens": r["usage"]["cache_write"],
                "cache_read_tokens": r["usage"]["cache_read"],
                "wall_s": round(r["wall_s"], 3),
            }
    set_warm_mode("each")
    return out


def overhead(latency: float, pairs: int) -> dict[str, Any]:
    without: list[float] = []
    with_metrics: list[float] = []
    cpu: dict[bool, list[float]] = {False: [], True: []}
    scrapes = 0
    for i in range(pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        for metrics in order:
            r = one_run(latency, metrics=metrics)
            (with_metrics if metrics else without).append(r["wall_s"])
            cpu[metrics].append(r["cpu_s"])
            scrapes += r["scrapes"]
    a, b = statistics.median(without), statistics.median(with_metrics)
    ca, cb = statistics.median(cpu[False]), statistics.median(cpu[True])
    return {
        "latency_s": latency,
        "pairs": pairs,
        "median_without_s": round(a, 3),
        "median_with_s": round(b, 3),
        "overhead_pct": round((b - a) / a * 100, 2),
        "median_runner_cpu_without_s": round(ca, 3),
        "median_runner_cpu_with_s": round(cb, 3),
        "cpu_overhead_pct": round((cb - ca) / ca * 100, 2),
        "runs_without_s": [round(x, 3) for x in without],
        "runs_with_s": [round(x, 3) for x in with_metrics],
        "scrapes": scrapes,
    }


def record_cost(n: int = 2000) -> dict[str, Any]:
    usage = {"input": 300, "output": 250, "cache_write": 0, "cache_read": 150_000}
    out: dict[str, Any] = {}
    mem = Recorder(MemoryStore(), "bench")
    t = time.perf_counter()
    for i in range(n):
        mem.call("run", "model", 0.2, usage, 0.01, job=(i % 5 + 1, "usd"))
    out["memory_us_per_call"] = round((time.perf_counter() - t) / n * 1e6, 1)
    import redis

    conn = redis.Redis.from_url("redis://127.0.0.1:6379/13")
    prefix = f"bench-ops-{os.getpid()}"
    rec = Recorder(conn, prefix)
    try:
        t = time.perf_counter()
        for i in range(n):
            rec.call("run", "model", 0.2, usage, 0.01, job=(i % 5 + 1, "usd"))
        out["redis_us_per_call"] = round((time.perf_counter() - t) / n * 1e6, 1)
    finally:
        keys = list(conn.scan_iter(f"{prefix}:*"))
        if keys:
            conn.delete(*keys)
        conn.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latencies", default="0,0.1")
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    result = {
        "load_average_1m": round(os.getloadavg()[0], 2),
        "warm_up": warm_up(),
        "metrics_overhead": [
            overhead(float(x), args.pairs) for x in args.latencies.split(",") if x.strip()
        ],
        "record_cost": record_cost(),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
