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

Why jobs run in the worker process (`rq.SimpleWorker`) rather than in a forked work
horse: a review job spends its time waiting on one model call, and forking a horse
per job is most of the rest. On a 2-core machine a horse costs ~20 ms of CPU and of
dispatch time per job (it copies the ~7,000 pages the job touches and redoes the
per-process setup) against ~5 ms in-process, and every worker pays it at once when a
loop fans out. In one long-lived process the SDK's lazy setup (`workers.sdk_prime`),
the TLS context and the run's inputs (`orchestrator.distributed`) are built once and
serve every job.
The fork's isolation is not needed for fault tolerance: a job that times out is
stopped by RQ's SIGALRM in this process, and a worker that dies takes its job with it,
which the heartbeat makes visible. Without a work horse nobody heartbeats a running
job, so `ReviewWorker` does it from a thread every `job_monitoring_interval` seconds,
as the forking parent would; a SIGKILLed worker's job then counts as abandoned
`abandon_grace` seconds after its last beat. The thread also takes the parent's other
duty: a job still running `hung_grace` seconds past its timeout (stuck where SIGALRM
cannot reach it) ends the worker process, and the job is retried elsewhere.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType

import redis
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from orchestrator.logs import job_context, log_context
from orchestrator.metrics import abandoned_job_handler

QUEUE_NAMES = ("reviewer", "synth", "gist")  # gist: workers.gist (moneta gists)
DEFAULT_MAINTENANCE_INTERVAL = 15
DEFAULT_MONITORING_INTERVAL = 5
DEFAULT_ABANDON_GRACE = 30
HUNG_GRACE = 60  # seconds past a job's timeout before the worker gives up on it (as RQ's)
PRELOAD = ("orchestrator.distributed", "anthropic")


logger = logging.getLogger(__name__)


class JobHeartbeat:
    """Refreshes a running job's heartbeat from a thread until the block exits."""

    def __init__(self, worker: ReviewWorker, job: Job, execution: Execution) -> None:
        self.worker = worker
        self.job = job
        self.execution = execution
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{job.id}", daemon=True)

    def _beat(self) -> None:
        timeout = self.job.timeout or Queue.DEFAULT_TIMEOUT
        deadline = None if timeout == -1 else time.monotonic() + timeout + self.worker.hung_grace
        while not self.stopped.wait(self.worker.job_monitoring_interval):
            if deadline is not None and time.monotonic() > deadline:
                # RQ's SIGALRM did not stop the job: it is stuck where Python cannot run a
                # signal handler. End the process as a crashed machine would, so the job
                # counts as abandoned and is retried by another worker.
                logger.error("job %s is stuck past its timeout: worker exits", self.job.id)
                os._exit(1)
            try:
                self.worker.maintain_heartbeats(self.job, self.execution)
            except redis.RedisError as exc:  # Redis restarting: the next beat tries again
                logger.warning("heartbeat of job %s failed: %s", self.job.id, exc)

    def __enter__(self) -> JobHeartbeat:
        self.thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stopped.set()
        self.thread.join()


class ReviewWorker(SimpleWorker):
    """`rq.SimpleWorker` with heartbeats while a job runs, a configurable abandoned-job
    deadline and maintenance cadence."""

    abandon_grace: int = DEFAULT_ABANDON_GRACE
    hung_grace: int = HUNG_GRACE

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """Seconds until the job's started-registry entry expires without a heartbeat."""
        interval = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            interval = min(max(job.timeout - working_time, 0), interval)
        return int(interval) + self.abandon_grace

    def execute_job(self, job: Job, queue: Queue) -> None:
        # Log lines of this process while the job runs carry its run, loop and role.
        with log_context(**job_context(job.id)):
            execution = self.prepare_execution(job)
            with JobHeartbeat(self, job, execution):
                self.perform_job(job, queue, execution)
            self.set_state(WorkerStatus.IDLE)

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
    # Import the job functions and the SDK, and run their one-time setup, before the
    # worker registers: the first job of every worker then costs what the others do.
    for module in PRELOAD:
        importlib.import_module(module)
    from workers.backends import shared_ssl_context
    from workers.sdk_prime import prime_sdk

    shared_ssl_context()  # the CA bundle
    prime_sdk()  # the SDK's lazy setup (`workers.sdk_prime`)
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
