"""Gists through RQ on the machine's Redis: jobs on the `gist` queue, a real worker process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from tests.gist.conftest import FAST, detail_text, gist_for, vector
from tests.support.messages_stub import MessagesStub
from workers.gist_dispatch import GIST_QUEUE, RqGistDispatcher, job_id

ROOT = Path(__file__).resolve().parents[2]
GIST_DB_URL = "redis://127.0.0.1:6379/14"
"""Logical DB 14 of the machine's Redis is reserved for these tests; emptied before and after."""


@pytest.fixture
def gist_redis() -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(GIST_DB_URL)
    conn.flushdb()
    try:
        yield conn
    finally:
        conn.flushdb()
        conn.close()


@pytest.fixture
def rq_dispatcher(gist_redis: redis.Redis) -> Iterator[RqGistDispatcher]:
    d = RqGistDispatcher(gist_redis, FAST)
    try:
        yield d
    finally:
        d.close()


def run_burst_worker(stub: MessagesStub) -> subprocess.CompletedProcess[str]:
    """`moneta-review worker --queues gist --burst`: works the queue empty, then exits."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "REDIS_"))}
    env.update(ANTHROPIC_API_KEY="test-key", ANTHROPIC_BASE_URL=stub.url, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "orchestrator.cli", "worker", "--redis-url", GIST_DB_URL]
    return subprocess.run(
        [*command, "--queues", GIST_QUEUE, "--burst"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_sleep_pass_enqueues_rq_jobs_and_a_worker_gists_them(
    make_store: Any, rq_dispatcher: RqGistDispatcher, stub: MessagesStub, gist_redis: redis.Redis
) -> None:
    store = make_store(rq_dispatcher)
    m = store.open()
    ids, report = store.consolidate(4)
    assert report.gists_enqueued == 4
    assert rq_dispatcher.wait_enqueued(30)
    queue = Queue(GIST_QUEUE, connection=gist_redis, serializer=JSONSerializer)
    store_path = str(store.directory.resolve())
    assert sorted(queue.job_ids) == sorted(job_id(store_path, e.hex) for e in ids)
    assert stub.recorded() == []  # the pass only enqueued
    done = run_burst_worker(stub)
    assert done.returncode == 0, done.stderr[-2000:]
    assert queue.count == 0
    jobs = Job.fetch_many(list(rq_dispatcher.enqueued), connection=gist_redis,
                          serializer=JSONSerializer)  # fmt: skip
    results = [job.return_value() for job in jobs if job is not None]
    # This process holds the store: the worker left its answers in the store's ledger.
    assert sorted(r["state"] for r in results) == ["answered"] * 4
    assert store.ledger.counts()["answered"] == 4
    assert len(stub.recorded(status=200)) == 4
    assert m.query(vector(0), limit=1)[0].payload == detail_text(0)
    m.run_sleep_pass()  # the owner authors them
    assert store.ledger.counts()["gisted"] == 4
    assert {m.query(vector(i), limit=1)[0].payload for i in range(4)} == {
        gist_for(detail_text(i)) for i in range(4)
    }


def test_rq_worker_authors_directly_when_no_process_holds_the_store(
    make_store: Any, rq_dispatcher: RqGistDispatcher, stub: MessagesStub, gist_redis: redis.Redis
) -> None:
    store = make_store(rq_dispatcher)
    store.open()
    store.consolidate(2)
    assert rq_dispatcher.wait_enqueued(30)
    store.close()
    done = run_burst_worker(stub)
    assert done.returncode == 0, done.stderr[-2000:]
    assert store.ledger.counts()["gisted"] == 2
    m = store.open()
    assert {m.query(vector(i), limit=1)[0].payload for i in range(2)} == {
        gist_for(detail_text(i)) for i in range(2)
    }
