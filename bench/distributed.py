"""Distributed review benchmark: prints one JSON object.

    python3 bench/distributed.py [--workers 1,2,4,8] [--latency 0.5]

For each reviewer-worker count, a full 5-loop distributed run of this repository
(default config, real snapshot) on a `redis-server` of its own (AOF, fsync once a
second, as in docker-compose.yml), with N `moneta-review worker --queues reviewer`
processes and one synth worker, against the loopback Messages stub in its own
process at `--latency` seconds per call (5 findings per reviewer):

- `wall_s`: enqueue of loop 1 → run marked completed (the run's `finished_at`, set by
  the last synth job; workers already running), so this process can poll slowly
  and leave the CPU to the run;
- `ideal_s`: 5 loops x (ceil(7 / N) role waves + 1 adversarial wave) x latency, plus
  the measured synth job time (for 8 workers: 5 x 2 x latency + synthesis);
  `ratio_to_ideal` = wall / ideal, `scaling_efficiency` = ideal / wall.
  Target: ratio <= 1.15 with 8 workers.
- `queue_overhead_ms`: per job, RQ's `started_at` minus the later of its
  `enqueued_at` (a job with dependencies is enqueued when they are met) and the
  end of the previous job of the worker that ran it — the dispatch cost when a
  worker is free, without the wait for a busy one: p50 / p95 / max over the run's
  45 jobs. Target: p95 <= 50 ms. `enqueued_to_started_ms` is the raw difference,
  which includes waiting for a free worker (large with 1 worker by design).

The machine's 1-minute load average at the start of each run is recorded: every
worker is a process, and with more workers than cores they share the CPU.

`cpu_s` is the CPU time the run's processes used from the enqueue of loop 1 to the
last job's end (workers with their work horses, the stub, Redis, and this
orchestrating process), and `cpu_share` that total over cores x wall: near 1 the
run waited for CPU, not for the queue.

`--timeline` adds each job's enqueue, start, model-call start and end, and end, in
ms from the run's start, to see where a loop's time goes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rq import Worker  # noqa: E402
from rq.job import Job  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402

from bench.review import stub_process  # noqa: E402
from orchestrator.config import load_config  # noqa: E402
from orchestrator.distributed import connect, start_run, wait_for_run  # noqa: E402
from orchestrator.metrics import job_timing  # noqa: E402
from orchestrator.runstate import DEFAULT_PREFIX, rq_job_id  # noqa: E402
from tests.support.redis_server import RedisServer, wait_until  # noqa: E402

CLI = [sys.executable, "-m", "orchestrator.distributed_cli"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def dispatch_overhead_ms(jobs: list[Job]) -> list[float]:
    """Per job, enqueue → start minus any time every worker of its queue was busy.

    A job enqueued while its worker was still running the previous job waits for
    capacity, not for the queue: its overhead counts from the moment that worker
    became free (the end of its previous job), or from the enqueue if later.
    """
    last_end: dict[str, Any] = {}
    out: list[float] = []
    for job in sorted(jobs, key=lambda j: j.started_at):
        ready = job.enqueued_at
        prev = last_end.get(job.worker_name)
        if prev is not None and prev > ready:
            ready = prev
        out.append((job.started_at - ready).total_seconds() * 1000)
        last_end[job.worker_name] = job.ended_at
    return out


def timeline(
    jobs: list[Job], calls: dict[tuple[int, str], tuple[float, float]], t0: float
) -> list[dict[str, Any]]:
    """Per job, its RQ and model-call timestamps in ms from `t0` (epoch seconds)."""

    def ms(epoch: float | None) -> float | None:
        return None if epoch is None else round((epoch - t0) * 1000, 1)

    rows = []
    for job in sorted(jobs, key=lambda j: j.started_at):
        _, loop, role = job.id.rsplit("_", 2)
        call = calls.get((int(loop[1:]), role), (None, None))
        rows.append(
            {
                "job": f"{loop}_{role}",
                "worker": job.worker_name,
                "enqueued": ms(job.enqueued_at.timestamp()),
                "started": ms(job.started_at.timestamp()),
                "call_start": ms(call[0]),
                "call_end": ms(call[1]),
                "ended": ms(job.ended_at.timestamp()),
            }
        )
    return rows


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and of its children it has reaped (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in range(11, 15))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def stub_pid() -> int:
    """The loopback stub: the child of this process running `tests.support.messages_stub`."""
    me = str(os.getpid())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if ppid == me and b"messages_stub" in cmd:
            return int(proc.name)
    raise RuntimeError("the stub process is not running")


def cpu_snapshot(workers: list[subprocess.Popen[bytes]], redis_pid: int) -> dict[str, float]:
    return {
        "workers": sum(cpu_seconds(p.pid) for p in workers),
        "stub": cpu_seconds(stub_pid()),
        "redis": cpu_seconds(redis_pid),
        "orchestrator": cpu_seconds(os.getpid()),
    }


def one_run(
    n_workers: int, latency: float, stub_url: str, tmp: Path, *, with_timeline: bool = False
) -> dict[str, Any]:
    server = RedisServer(tmp / f"redis-{n_workers}").start()
    env = {
        **os.environ,
        "ANTHROPIC_API_KEY": "bench",
        "ANTHROPIC_BASE_URL": stub_url,
        "REDIS_URL": server.url,
        "PYTHONPATH": str(ROOT),
    }
    procs = [
        subprocess.Popen(
            [*CLI, "worker", "--queues", queue, "--name", f"{queue}-{i}"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for queue, count in (("reviewer", n_workers), ("synth", 1))
        for i in range(count)
    ]
    conn = connect(server.url)
    try:
        wait_until(
            lambda: len(Worker.all(connection=conn)) == n_workers + 1,
            timeout=120,
            what="workers registered",
        )
        config = load_config()
        run_id = f"bench-{n_workers}"
        load = os.getloadavg()[0]
        assert server.proc is not None
        cpu_before = cpu_snapshot(procs, server.proc.pid)
        start_epoch = time.time()
        meta = start_run(
            conn,
            repo=ROOT,
            config=config,
            out_dir=tmp / f"out-{n_workers}",
            backend="anthropic",
            run_id=run_id,
        )
        final = wait_for_run(conn, run_id, timeout=600, poll=0.2)
        wall = final.finished_at - start_epoch
        assert final.status == "completed", final.error
        roles = [r.prefix for r in config.roles]
        ids = [rq_job_id(run_id, n, r) for n in meta.loops for r in [*roles, "synth"]]

        def ended() -> list[Job] | None:
            # The last synth job marks the run completed just before it ends itself.
            got = [j for j in Job.fetch_many(ids, connection=conn, serializer=JSONSerializer) if j]
            return got if len(got) == len(ids) and all(j.ended_at for j in got) else None

        jobs = wait_until(ended, timeout=60, what="every job ended")
        last_end = max(j.ended_at.timestamp() for j in jobs) - start_epoch
        cpu_after = cpu_snapshot(procs, server.proc.pid)
        cpu = {k: round(cpu_after[k] - cpu_before[k], 2) for k in cpu_before}
        overhead = dispatch_overhead_ms(jobs)
        waited = [(j.started_at - j.enqueued_at).total_seconds() * 1000 for j in jobs]
        synth_s = sum(
            (j.ended_at - j.started_at).total_seconds() for j in jobs if j.id.endswith("_synth")
        )
        review_s = [
            (j.ended_at - j.started_at).total_seconds() for j in jobs if not j.id.endswith("_synth")
        ]
        waves = math.ceil(len(config.role_reviewers) / n_workers) + 1
        ideal = len(meta.loops) * waves * latency + synth_s
        extra = {}
        if with_timeline:
            calls = job_timing(conn, DEFAULT_PREFIX, run_id)
            extra["timeline"] = timeline(jobs, calls, start_epoch)
        return {
            "reviewer_workers": n_workers,
            "wall_s": round(wall, 3),
            "ideal_s": round(ideal, 3),
            "ratio_to_ideal": round(wall / ideal, 3),
            "scaling_efficiency": round(ideal / wall, 3),
            "synth_jobs_s": round(synth_s, 3),
            "review_job_s_p50": round(statistics.median(review_s), 3),
            "queue_overhead_ms": {
                "p50": round(percentile(overhead, 0.5), 1),
                "p95": round(percentile(overhead, 0.95), 1),
                "max": round(max(overhead), 1),
                "jobs": len(overhead),
            },
            "enqueued_to_started_ms": {
                "p50": round(percentile(waited, 0.5), 1),
                "p95": round(percentile(waited, 0.95), 1),
            },
            "cpu_s": cpu,
            "cpu_share": round(sum(cpu.values()) / ((os.cpu_count() or 1) * last_end), 2),
            "load_average_1m": round(load, 2),
            **extra,
        }
    finally:
        conn.close()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=15)
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,2,4,8", help="reviewer worker counts")
    parser.add_argument("--latency", type=float, default=0.5, help="stub latency, seconds")
    parser.add_argument("--timeline", action="store_true", help="add every job's timestamps")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    runs = []
    with tempfile.TemporaryDirectory() as tmp, stub_process(args.latency) as url:
        for n in counts:
            runs.append(one_run(n, args.latency, url, Path(tmp), with_timeline=args.timeline))
    overhead = [r["queue_overhead_ms"]["p95"] for r in runs]
    best = runs[-1]
    print(
        json.dumps(
            {
                "bench": "distributed",
                "latency_s": args.latency,
                "cores": os.cpu_count(),
                "runs": runs,
                "targets": {
                    "queue_overhead_p95_ms_max": 50,
                    "queue_overhead_p95_ms_worst": max(overhead),
                    "ratio_to_ideal_max": 1.15,
                    f"ratio_to_ideal_at_{best['reviewer_workers']}_workers": best["ratio_to_ideal"],
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
