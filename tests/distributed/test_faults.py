"""Fault tolerance with real processes: redis-server, workers and the orchestrator killed.

Each test starts its own `redis-server` (AOF as in docker-compose.yml) on a free
port, runs a clean embedded review first, and requires the distributed run that
survived the fault to write byte-identical files: nothing lost, nothing duplicated.
"""

from __future__ import annotations

import difflib
import os
import signal
import subprocess
from pathlib import Path

from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from orchestrator.runstate import RunState
from tests.support.messages_stub import MessagesStub
from tests.support.redis_server import RedisServer, wait_until
from tests.support.review_processes import (
    CLI,
    ROOT,
    Workers,
    embedded_run,
    enqueue_run,
    read_tree,
    run_args,
    run_cli,
    wait_run_end,
)


def clean_run(
    stub: MessagesStub, repo: Path, config_file: Path, out: Path, env: dict[str, str]
) -> dict[str, bytes]:
    """An embedded run's files; the stub's prompt cache is emptied after it."""
    files = embedded_run(repo, config_file, out, env)
    stub.clear_cache()
    return files


def assert_same_files(got: dict[str, bytes], expected: dict[str, bytes]) -> None:
    assert sorted(got) == sorted(expected)
    for name in expected:
        if got[name] != expected[name]:
            diff = difflib.unified_diff(
                expected[name].decode(errors="replace").splitlines(),
                got[name].decode(errors="replace").splitlines(),
                lineterm="",
                n=0,
            )
            raise AssertionError(f"{name} differs:\n" + "\n".join(list(diff)[:20]))


def test_sigkilled_reviewer_job_is_rerun_by_another_worker_nothing_lost_or_duplicated(
    stub: MessagesStub,
    env: dict[str, str],
    repo: Path,
    config_file: Path,
    own_redis: RedisServer,
    workers: Workers,
    tmp_path: Path,
) -> None:
    expected = clean_run(stub, repo, config_file, tmp_path / "clean", env)
    before = len(stub.recorded())
    stub.hold(role="usd", loop=1)  # the usd reviewer's call hangs until released
    out = tmp_path / "out"
    enqueue_run(own_redis.url, repo, config_file, out, "kill-1")
    workers.start_many(own_redis.url, reviewers=2, synth=1)
    wait_until(lambda: stub.waiting() == 1, timeout=60, what="usd L1 call in flight")
    conn = own_redis.client()
    job = Job.fetch("kill-1_L1_usd", connection=conn, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.STARTED
    victim = job.worker_name
    killed = workers.sigkill(victim)
    assert len(killed) == 1  # the worker runs the job in its own process
    stub.release()

    meta = wait_run_end(own_redis.url, "kill-1", timeout=180)
    assert meta.status == "completed", meta.error + workers.logs()
    assert_same_files(read_tree(out), expected)
    state = RunState(conn, "kill-1")
    assert state.attempts()["L1:usd"] == 2
    job = Job.fetch("kill-1_L1_usd", connection=conn, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FINISHED
    assert job.worker_name != victim
    assert job.retries_left == 1  # one retry spent on the abandoned execution
    usd_calls = [r for r in stub.recorded()[before:] if (r.role, r.loop) == ("usd", 1)]
    assert len(usd_calls) == 2
    assert len(stub.recorded()) - before == 41
    conn.close()


def test_redis_killed_and_restarted_mid_run_completes_with_correct_outputs(
    stub: MessagesStub,
    env: dict[str, str],
    repo: Path,
    config_file: Path,
    own_redis: RedisServer,
    workers: Workers,
    tmp_path: Path,
) -> None:
    expected = clean_run(stub, repo, config_file, tmp_path / "clean", env)
    stub.latency = 0.2
    out = tmp_path / "out"
    enqueue_run(own_redis.url, repo, config_file, out, "crash-1")
    workers.start_many(own_redis.url, reviewers=3, synth=1)
    conn = own_redis.client()
    state = RunState(conn, "crash-1")
    wait_until(lambda: 2 in state.enqueued_loops(), timeout=120, what="loop 2 enqueued")
    conn.close()
    own_redis.kill()  # SIGKILL: only the append-only file survives
    own_redis.start()
    conn = own_redis.client()
    state = RunState(conn, "crash-1")
    assert state.closed_loops()[:1] == [1]  # loop 1's close survived in the AOF

    meta = wait_run_end(own_redis.url, "crash-1", timeout=240)
    assert meta.status == "completed", meta.error + workers.logs()
    got = read_tree(out)
    for name in ("findings.jsonl", "findings.invalid.jsonl", "findings.dropped.jsonl"):
        assert got[name] == expected[name], name
    assert sorted(got) == sorted(expected)
    # A reviewer cut off by the crash may have called the model twice, which changes
    # its token usage but never its findings: compare everything else without usage.
    assert _without_usage(got["loops.jsonl"]) == _without_usage(expected["loops.jsonl"])
    assert state.closed_loops() == [1, 2, 3, 4, 5]
    assert len(state.results()) == 40
    conn.close()


def _without_usage(loops_jsonl: bytes) -> list[dict[str, object]]:
    import json

    rows = [json.loads(line) for line in loops_jsonl.decode().splitlines()]
    for row in rows:
        for r in row["reviewers"]:
            r.pop("usage")
    return rows


def test_orchestrator_killed_after_enqueue_run_completes_and_resume_is_a_noop(
    stub: MessagesStub,
    env: dict[str, str],
    repo: Path,
    config_file: Path,
    own_redis: RedisServer,
    workers: Workers,
    tmp_path: Path,
) -> None:
    expected = clean_run(stub, repo, config_file, tmp_path / "clean", env)
    out = tmp_path / "out"
    orchestrator = subprocess.Popen(
        [
            *CLI,
            *run_args(repo, config_file, out, "--redis-url", own_redis.url, "--run-id", "orph-1"),
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    conn = own_redis.client()
    wait_until(lambda: conn.exists("rq:job:orph-1_L1_synth"), timeout=60, what="loop 1 enqueued")
    os.kill(orchestrator.pid, signal.SIGKILL)
    assert orchestrator.wait(timeout=10) == -signal.SIGKILL
    workers.start_many(own_redis.url, reviewers=3, synth=1)

    meta = wait_run_end(own_redis.url, "orph-1", timeout=180)
    assert meta.status == "completed", meta.error + workers.logs()
    assert_same_files(read_tree(out), expected)

    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    jobs = sorted(conn.keys("rq:job:*"))
    calls = len(stub.recorded())
    done = run_cli(
        [
            "run",
            "--resume",
            "orph-1",
            "--redis-url",
            own_redis.url,
            "--repo",
            str(repo),
        ],
        env,
    )
    assert done.returncode == 0, done.stderr
    assert "orph-1 is complete: nothing to do" in done.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    assert_same_files(read_tree(out), expected)
    assert sorted(conn.keys("rq:job:*")) == jobs
    assert conn.llen("rq:queue:reviewer") == 0 and conn.llen("rq:queue:synth") == 0
    assert len(stub.recorded()) == calls
    conn.close()


def test_resume_recreates_jobs_lost_with_redis_state(
    stub: MessagesStub,
    env: dict[str, str],
    repo: Path,
    config_file: Path,
    own_redis: RedisServer,
    workers: Workers,
    tmp_path: Path,
) -> None:
    """A job lost from Redis is recreated, and the jobs waiting on it re-registered."""
    expected = clean_run(stub, repo, config_file, tmp_path / "clean", env)
    out = tmp_path / "out"
    enqueue_run(own_redis.url, repo, config_file, out, "lost-1")
    conn = own_redis.client()
    # The usd job is lost; the adversarial and synth jobs waiting on it are still there.
    Job.fetch("lost-1_L1_usd", connection=conn, serializer=JSONSerializer).delete()
    done = run_cli(
        ["run", "--resume", "--run-id", "lost-1", "--redis-url", own_redis.url, "--no-wait"],
        env,
    )
    assert done.returncode == 0, done.stderr
    assert "recreated 3 job(s): lost-1_L1_usd, lost-1_L1_adversarial, lost-1_L1_synth" in (
        done.stderr
    )
    workers.start_many(own_redis.url, reviewers=2, synth=1)
    meta = wait_run_end(own_redis.url, "lost-1", timeout=180)
    assert meta.status == "completed", meta.error + workers.logs()
    assert_same_files(read_tree(out), expected)
    conn.close()
