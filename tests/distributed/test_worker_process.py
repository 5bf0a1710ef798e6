"""What a worker process keeps between jobs: the primed SDK, a run's inputs, heartbeats.

Jobs run in the worker process itself (`workers.rq_worker`), so per-process state
outlives a job. These tests pin that it is the same data a fresh process would
build, and that a running job stays visibly alive however long its model call takes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from orchestrator import distributed
from orchestrator.blobs import BlobMissing, blob_key
from orchestrator.config import load_config
from orchestrator.distributed import JOB_RETRIES, inputs_from_state
from orchestrator.plan import prepare_run, role_jobs, role_payload
from orchestrator.runstate import RunState
from tests.support.messages_stub import MessagesStub
from tests.support.redis_server import RedisServer, wait_until
from tests.support.review_processes import (
    FAST_WORKER,
    ROOT,
    Workers,
    enqueue_run,
    wait_run_end,
)
from workers.sdk_prime import PRIME_TEXT, prime_sdk


def test_prime_sdk_decodes_the_canned_stream_through_the_backend() -> None:
    answer = prime_sdk()
    assert answer.text == PRIME_TEXT
    assert answer.stop_reason == "end_turn"
    assert answer.usage == {"input": 3, "output": 9, "cache_write": 2, "cache_read": 1}
    assert prime_sdk() == answer  # a second priming is the same in-memory call


def test_role_payload_is_the_payload_role_jobs_gives_that_role(
    repo: Path, config_file: Path, tmp_path: Path
) -> None:
    inputs = prepare_run(repo, load_config(config_file), tmp_path / "out")
    loops = inputs.loops()
    for loop, prior in ((loops[0], None), (loops[1], "the previous loop's synthesis")):
        expected = role_jobs(inputs, loop, prior, "anthropic")
        got = [
            role_payload(inputs, loop, prior, "anthropic", r.prefix)
            for r in inputs.config.role_reviewers
        ]
        assert got == expected


def test_inputs_from_state_reads_a_runs_blobs_once_per_process(
    repo: Path, config_file: Path, shared_redis: str, tmp_path: Path
) -> None:
    distributed._inputs_cache.clear()
    meta = enqueue_run(shared_redis, repo, config_file, tmp_path / "out", "inputs-1")
    conn = distributed.connect(shared_redis)
    try:
        first = inputs_from_state(conn, meta, "moneta")
        fresh = prepare_run(repo, load_config(config_file), tmp_path / "out")
        assert first.system == fresh.system
        assert first.snapshot.text == fresh.snapshot.text
        assert first.snapshot.paths == fresh.snapshot.paths
        assert first.constitution_hash == fresh.constitution_hash
        # Kept: the second read does not go to Redis, where the snapshot is now gone.
        assert conn.delete(blob_key("moneta", meta.snapshot_blob)) == 1
        assert inputs_from_state(conn, meta, "moneta") is first
        distributed._inputs_cache.clear()
        with pytest.raises(BlobMissing):
            inputs_from_state(conn, meta, "moneta")
    finally:
        distributed._inputs_cache.clear()
        conn.close()


def test_job_running_longer_than_its_heartbeat_ttl_is_not_taken_for_abandoned(
    stub: MessagesStub,
    repo: Path,
    config_file: Path,
    own_redis: RedisServer,
    workers: Workers,
    tmp_path: Path,
) -> None:
    flags = dict(zip(FAST_WORKER[::2], FAST_WORKER[1::2], strict=True))
    ttl = int(flags["--monitoring-interval"]) + int(flags["--abandon-grace"])
    stub.hold(role="usd", loop=1)
    enqueue_run(own_redis.url, repo, config_file, tmp_path / "out", "long-1")
    workers.start_many(own_redis.url, reviewers=2, synth=1)
    wait_until(lambda: stub.waiting() == 1, timeout=60, what="usd L1 call in flight")
    conn = own_redis.client()
    job = Job.fetch("long-1_L1_usd", connection=conn, serializer=JSONSerializer)
    runner = job.worker_name
    # Held past the TTL of a single heartbeat and several sweeps of the other worker:
    # only the beats sent while the job runs keep it from being requeued.
    time.sleep(ttl + 3 * int(flags["--maintenance-interval"]))
    job = Job.fetch("long-1_L1_usd", connection=conn, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.STARTED
    assert job.worker_name == runner
    stub.release()

    meta = wait_run_end(own_redis.url, "long-1", timeout=180)
    assert meta.status == "completed", meta.error + workers.logs()
    assert RunState(conn, "long-1").attempts()["L1:usd"] == 1
    job = Job.fetch("long-1_L1_usd", connection=conn, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FINISHED
    assert job.retries_left == JOB_RETRIES
    assert [(r.role, r.loop) for r in stub.recorded()].count(("usd", 1)) == 1
    conn.close()


STUCK_WORKER = """
import sys
import redis
from workers.rq_worker import make_worker

worker = make_worker(redis.Redis.from_url(sys.argv[1]), ["reviewer"], job_monitoring_interval=1)
worker.hung_grace = 1
worker.work(burst=True)
"""


def test_worker_exits_when_a_job_is_stuck_past_its_timeout(own_redis: RedisServer) -> None:
    conn = own_redis.client()
    job = Queue("reviewer", connection=conn, serializer=JSONSerializer).enqueue_call(
        "tests.support.blocking_jobs.sleep_deaf_to_alarms", args=[300], timeout=1, job_id="stuck-1"
    )
    # The subprocess timeout is the bound: a worker that waits the sleep out fails the test.
    done = subprocess.run(
        [sys.executable, "-c", STUCK_WORKER, own_redis.url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "job stuck-1 is stuck past its timeout: worker exits" in done.stderr
    # Left started, as by a crashed worker: abandoned-job detection retries it.
    assert job.get_status() == JobStatus.STARTED
    conn.close()
