"""The RQ worker process of a distributed review: `moneta-review worker --queues ...`.

Jobs travel as JSON (RQ's `JSONSerializer`), never pickle, so the worker only runs the
functions a job names by import path, with plain data.

Why a subclass of `rq.Worker`: RQ notices a SIGKILLed worker's job only when the job's
entry in the started-job registry expires and another worker's maintenance pass runs.
Stock RQ lets that entry live 60 s past the last heartbeat and runs maintenance every
10 minutes, so a lost reviewer stalls its loop for minutes. Here both are settings:
`abandon_grace` (seconds past the last heartbeat before a job counts as abandoned) and
`maintenance_interval`; an idle worker also wakes from its blocking dequeue at least
every `maintenance_interval` seconds so the pass actually runs. An abandoned job is
requeued if it has retries left (review jobs are enqueued with retries), and because a
job's result replaces its own slot in the run state, a job that runs twice still
yields its findings once.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
from collections.abc import Sequence

import redis
from rq import Queue, Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from orchestrator.logs import job_context, log_context
from orchestrator.metrics import abandoned_job_handler

QUEUE_NAMES = ("reviewer", "synth", "gist")  # gist: workers.gist (moneta gists)
DEFAULT_MAINTENANCE_INTERVAL = 15
DEFAULT_MONITORING_INTERVAL = 5
DEFAULT_ABANDON_GRACE = 30
PRELOAD = ("orchestrator.distributed", "anthropic")


class ReviewWorker(Worker):
    """`rq.Worker` with a configurable abandoned-job deadline and maintenance cadence."""

    abandon_grace: int = DEFAULT_ABANDON_GRACE

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """Seconds until the job's started-registry entry expires without a heartbeat."""
        interval = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            interval = min(max(job.timeout - working_time, 0), interval)
        return int(interval) + self.abandon_grace

    def execute_job(self, job: Job, queue: Queue) -> None:
        # Log lines of this process while the job runs carry its run, loop and role.
        with log_context(**job_context(job.id)):
            super().execute_job(job, queue)

    @property
    def dequeue_timeout(self) -> int:
        # Wake up regularly while idle: maintenance (abandoned-job detection) runs only
        # between dequeues.
        return max(1, min(self.worker_ttl - 15, int(self.maintenance_interval)))


def check_queues(queues: Sequence[str]) -> list[str]:
    names = list(queues)
    if not names:
        raise ValueError("queues: give at least one of " + ", ".join(QUEUE_NAMES))
    for q in names:
        if q not in QUEUE_NAMES:
            raise ValueError(f"queues: {q!r} is not one of {', '.join(QUEUE_NAMES)}")
    return names


def make_worker(
    conn: redis.Redis,
    queues: Sequence[str],
    *,
    name: str | None = None,
    maintenance_interval: int = DEFAULT_MAINTENANCE_INTERVAL,
    job_monitoring_interval: int = DEFAULT_MONITORING_INTERVAL,
    abandon_grace: int = DEFAULT_ABANDON_GRACE,
) -> ReviewWorker:
    """A worker on `queues` (reviewer and/or synth) using the JSON serializer."""
    names = check_queues(queues)
    for arg, value in (
        ("maintenance_interval", maintenance_interval),
        ("job_monitoring_interval", job_monitoring_interval),
        ("abandon_grace", abandon_grace),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg}: must be an int >= 1, got {value!r}")
    qs = [Queue(n, connection=conn, serializer=JSONSerializer) for n in names]
    worker = ReviewWorker(
        qs,
        connection=conn,
        name=name or f"{'-'.join(names)}-{socket.gethostname()}-{os.getpid()}",
        serializer=JSONSerializer,
        maintenance_interval=maintenance_interval,
        job_monitoring_interval=job_monitoring_interval,
        worker_ttl=max(60, maintenance_interval + 30),
    )
    worker.abandon_grace = abandon_grace
    worker.push_exc_handler(abandoned_job_handler)  # counts abandoned jobs for the metrics
    return worker


def run_worker(
    conn: redis.Redis,
    queues: Sequence[str],
    *,
    name: str | None = None,
    burst: bool = False,
    max_jobs: int | None = None,
    maintenance_interval: int = DEFAULT_MAINTENANCE_INTERVAL,
    job_monitoring_interval: int = DEFAULT_MONITORING_INTERVAL,
    abandon_grace: int = DEFAULT_ABANDON_GRACE,
    log_level: str = "INFO",
) -> bool:
    """Work until stopped (or, with `burst`, until the queues are empty)."""
    # Import the job functions (and the SDK) once here: every job runs in a forked
    # work horse, which would otherwise import them again for each job.
    for module in PRELOAD:
        importlib.import_module(module)
    from workers.backends import shared_ssl_context

    shared_ssl_context()  # the CA bundle is loaded once, not in every work horse
    worker = make_worker(
        conn,
        queues,
        name=name,
        maintenance_interval=maintenance_interval,
        job_monitoring_interval=job_monitoring_interval,
        abandon_grace=abandon_grace,
    )
    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s %(message)s")
    return worker.work(burst=burst, max_jobs=max_jobs, logging_level=log_level)
