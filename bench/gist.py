"""Gist benchmark: prints one JSON object.

    python3 bench/gist.py [--memories 200] [--latency 0.3] [--workers 4] [--backlog 10,500]

Real file stores (LanceDB index, OpenUSD cold tier) in a temporary directory, the
real `anthropic` SDK against the loopback Messages stub (tests/support/messages_stub.py).

- `throughput`: `--memories` memories consolidated by one pass and gisted by the
  embedded dispatcher with `--workers` concurrent jobs, the stub answering each call
  after `--latency` s. `gists_per_s` = memories / (pass end → last gist authored);
  `ideal_per_s` = workers / latency.
- `handoff`: for each backlog size B, one pass that consolidates B memories with
  the stub holding every call (nothing is answered during the pass), through the
  embedded and the RQ dispatcher (Redis DB 15, emptied before and after), next to
  the same pass with gisting off. `handoff_ms` is the time the pass spends in the
  gist hand-off (ledger insert, claim, detail read, `submit`); the rest is
  consolidation, which grows with B with or without gists.
- `pass_with_backlog`: a pass consolidating 10 memories while B gist jobs are
  already pending (held at the stub): the pass's own time must not grow with B.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from moneta import Moneta, MonetaConfig  # noqa: E402
from moneta.gist import GistLedger  # noqa: E402
from tests.support.messages_stub import MessagesStub  # noqa: E402
from workers.gist import GistSettings  # noqa: E402
from workers.gist_dispatch import EmbeddedGistDispatcher, RqGistDispatcher  # noqa: E402

NOON_UTC = 1_772_452_800.0
HOUR = 3600.0
DIM = 64
BENCH_REDIS = "redis://127.0.0.1:6379/15"
SETTINGS = GistSettings(max_attempts=1, request_timeout=120.0)


def answer(role: Any, loop: Any, payload: dict[str, Any]) -> str:
    text = payload["messages"][-1]["content"]
    return f"<gist>{text.split(chr(10))[1][:40]}</gist>"


def detail(i: int) -> str:
    return (
        f"Memory {i}: Alice and Bob decided on 2026-03-02 to ship release 4.{i} to "
        f"{1000 + i} users after the Tuesday review; error rate 0.{i}%."
    )


def vector(i: int) -> list[float]:
    v = [0.01] * DIM
    v[i % DIM] = 1.0
    v[(i * 7 + 3) % DIM] += 0.3 + 0.001 * (i % 997)
    return v


class Clock:
    def __init__(self) -> None:
        self.now = NOON_UTC

    def __call__(self) -> float:
        return self.now


def open_store(directory: Path, sink: object, **extra: Any) -> tuple[Moneta, Clock]:
    clock = Clock()
    config = MonetaConfig(
        storage_uri=str(directory),
        clock=clock,
        auto_sleep=False,
        half_life_seconds=HOUR,
        gist_sink=sink,
        gist_max_pending=10_000,
        # The simulated clock jumps hours between passes; pending jobs are not lost.
        gist_pending_timeout_seconds=7 * 24 * HOUR,
        **extra,
    )
    return Moneta(config), clock


def prepare(m: Moneta, clock: Clock, start: int, n: int) -> None:
    """Deposit and attend `n` memories so the next pass (after the clock moves) stages them."""
    ids = [m.deposit(detail(i), vector(i)) for i in range(start, start + n)]
    for _ in range(3):
        m.signal_attention(dict.fromkeys(ids, 0.0))
    m.run_sleep_pass()
    clock.now += 2.5 * HOUR


def timed_pass(m: Moneta) -> tuple[float, float, Any]:
    """(pass seconds, seconds inside the gist hand-off, report)."""
    spent = [0.0]
    coordinator = m._gist
    if coordinator is not None:
        inner = coordinator.after_pass

        def measured(*args: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*args)
            finally:
                spent[0] += time.perf_counter() - t0

        coordinator.after_pass = measured  # type: ignore[method-assign]
    t0 = time.perf_counter()
    report = m.run_sleep_pass()
    elapsed = time.perf_counter() - t0
    if coordinator is not None:
        del coordinator.after_pass
    return elapsed, spent[0], report


def wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        time.sleep(0.01)


def throughput(tmp: Path, memories: int, latency: float, workers: int) -> dict[str, Any]:
    with MessagesStub(latency=latency, answer=answer) as stub:
        os.environ.update(ANTHROPIC_API_KEY="bench", ANTHROPIC_BASE_URL=stub.url)
        with EmbeddedGistDispatcher(SETTINGS, workers=workers) as dispatcher:
            m, clock = open_store(tmp / "throughput", dispatcher)
            try:
                prepare(m, clock, 0, memories)
                pass_s, handoff_s, report = timed_pass(m)
                t0 = time.perf_counter()
                ledger = GistLedger(tmp / "throughput")
                wait_for(lambda: ledger.counts()["gisted"] == memories, 600)
                wall = time.perf_counter() - t0
            finally:
                m.close()
        calls = len(stub.recorded(status=200))
    return {
        "memories": memories,
        "workers": workers,
        "latency_s": latency,
        "enqueued_by_pass": report.gists_enqueued,
        "model_calls": calls,
        "wall_s": round(wall, 3),
        "gists_per_s": round(memories / wall, 2),
        "ideal_per_s": round(workers / latency, 2),
        "efficiency": round((memories / wall) / (workers / latency), 3),
        "pass_s": round(pass_s, 3),
        "handoff_ms": round(handoff_s * 1000, 2),
    }


def handoff(tmp: Path, backlog: int, sink_kind: str, conn: redis.Redis | None) -> dict[str, Any]:
    """One pass consolidating `backlog` memories, every model call held at the stub."""
    with MessagesStub(answer=answer) as stub:
        os.environ.update(ANTHROPIC_API_KEY="bench", ANTHROPIC_BASE_URL=stub.url)
        stub.hold()
        sink: Any = None
        if sink_kind == "embedded":
            sink = EmbeddedGistDispatcher(SETTINGS, workers=4)
        elif sink_kind == "rq":
            assert conn is not None
            conn.flushdb()
            sink = RqGistDispatcher(conn, SETTINGS)
        directory = tmp / f"handoff-{sink_kind}-{backlog}"
        m, clock = open_store(directory, sink)
        try:
            prepare(m, clock, 0, backlog)
            pass_s, handoff_s, report = timed_pass(m)
            # A second pass of 10 new memories while `backlog` jobs are pending.
            prepare(m, clock, backlog, 10)
            later_s, later_handoff_s, later = timed_pass(m)
            stub.release()  # let the held calls finish while the store is open
            if sink_kind == "embedded":
                sink.wait_idle(600)
            elif sink_kind == "rq":
                sink.wait_enqueued(120)
        finally:
            stub.release()
            m.close()
            if sink is not None:
                sink.close()
    return {
        "sink": sink_kind,
        "backlog": backlog,
        "enqueued_by_pass": report.gists_enqueued,
        "pass_s": round(pass_s, 3),
        "handoff_ms": round(handoff_s * 1000, 2),
        "handoff_us_per_job": round(handoff_s * 1e6 / max(1, report.gists_enqueued), 1),
        "pass_with_backlog": {
            "consolidated": later.consolidated,
            "pending_before": report.gists_enqueued,
            "pass_s": round(later_s, 3),
            "handoff_ms": round(later_handoff_s * 1000, 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--backlog", default="10,500")
    parser.add_argument("--repeat", type=int, default=3, help="handoff runs per size (median)")
    args = parser.parse_args()
    backlogs = [int(b) for b in args.backlog.split(",") if b]
    report: dict[str, Any] = {"load_avg_1m": round(os.getloadavg()[0], 2)}
    conn = redis.Redis.from_url(BENCH_REDIS)
    try:
        with tempfile.TemporaryDirectory(prefix="moneta-gist-bench-") as raw:
            tmp = Path(raw)
            report["throughput"] = throughput(tmp, args.memories, args.latency, args.workers)
            rows = []
            for kind in ("off", "embedded", "rq"):
                for backlog in backlogs:
                    runs = [handoff(tmp / f"r{r}", backlog, kind, conn) for r in range(args.repeat)]
                    best = runs[0]
                    for key in ("pass_s", "handoff_ms", "handoff_us_per_job"):
                        best[key] = statistics.median(r[key] for r in runs)
                    for key in ("pass_s", "handoff_ms"):
                        best["pass_with_backlog"][key] = statistics.median(
                            r["pass_with_backlog"][key] for r in runs
                        )
                    rows.append(best)
            report["handoff"] = rows
    finally:
        conn.flushdb()
        conn.close()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
