"""Gist sinks: where a Moneta handle's sleep pass sends memories to be summarised.

Both implement `moneta.protocols.GistSink`. `submit` only appends to a queue and
returns, so the sleep pass never waits on a model or on Redis; the handle bounds
how many requests are outstanding (`MonetaConfig.gist_max_pending`), so the queue
is bounded too.

- `EmbeddedGistDispatcher`: an anyio event loop in a thread of this process runs
  `workers.gist.gist_job_async` for up to `workers` memories at a time, sharing one
  SDK client (one connection pool).
- `RqGistDispatcher`: a thread enqueues one RQ job per memory on the `gist` queue
  (JSON serializer, job function `workers.gist.gist_job`), for
  `moneta-review worker --queues gist`.

One job per memory, not per batch: each memory gets its own model call anyway, a
failure or timeout touches only that memory, retries and idempotence are per
prim, and the pending bound counts memories.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.from_thread
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from moneta.gist import GistRequest
from workers.gist import GistSettings, _client, gist_job_async, job_payload

log = logging.getLogger(__name__)

GIST_QUEUE = "gist"
GIST_JOB = "workers.gist.gist_job"
RESULT_TTL = 24 * 3600

_STOP = object()


class EmbeddedGistDispatcher:
    """Runs gist jobs in-process, `workers` at a time, on an anyio loop in a thread."""

    def __init__(self, settings: GistSettings | None = None, *, workers: int = 4) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers: must be an int >= 1, got {workers!r}")
        self.settings = settings or GistSettings()
        self.workers = workers
        self.results: list[dict[str, Any]] = []
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._idle = threading.Condition()
        self._outstanding = 0
        self._cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._cm.__enter__()
        self._done = self._portal.start_task_soon(self._main)

    def submit(self, store_path: str, requests: Sequence[GistRequest]) -> None:
        """Queue one job per request; returns at once."""
        with self._idle:
            self._outstanding += len(requests)
        for request in requests:
            self._queue.put(
                job_payload(store_path, request.entity_id, request.detail, self.settings)
            )

    async def _main(self) -> None:
        client = _client(self.settings)
        slots = anyio.Semaphore(self.workers)
        try:
            async with anyio.create_task_group() as group:
                while True:
                    item = await anyio.to_thread.run_sync(self._queue.get, abandon_on_cancel=True)
                    if item is _STOP:
                        break
                    await slots.acquire()  # released by the job: at most `workers` at once
                    group.start_soon(self._run, item, client, slots)
        finally:
            await client.close()

    async def _run(self, payload: dict[str, Any], client: Any, slots: anyio.Semaphore) -> None:
        try:
            result = await gist_job_async(payload, client=client)
        except Exception as exc:  # delivery failed (store closed, disk): log, keep serving
            log.warning("gist job for %s failed: %r", payload.get("entity_id"), exc)
            result = {"entity_id": payload.get("entity_id"), "state": "error", "reason": repr(exc)}
        finally:
            slots.release()
        with self._idle:
            self.results.append(result)
            self._outstanding -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every submitted job has finished; False at the timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._outstanding == 0, timeout)

    def close(self) -> None:
        """Finish the jobs already queued, then stop the loop. Idempotent."""
        if self._cm is None:
            return
        self._queue.put(_STOP)
        try:
            self._done.result()
        finally:
            cm, self._cm = self._cm, None
            cm.__exit__(None, None, None)

    def __enter__(self) -> EmbeddedGistDispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def job_id(store_path: str, entity_id_hex: str) -> str:
    """RQ id of a memory's gist job: stable, so a re-enqueue replaces the same job."""
    store = hashlib.sha256(store_path.encode()).hexdigest()[:12]
    return f"gist_{store}_{entity_id_hex}"


class RqGistDispatcher:
    """Enqueues one RQ job per memory on the `gist` queue, from a background thread."""

    def __init__(
        self,
        conn: redis.Redis,
        settings: GistSettings | None = None,
        *,
        queue_name: str = GIST_QUEUE,
    ) -> None:
        self.settings = settings or GistSettings()
        self.queue = Queue(queue_name, connection=conn, serializer=JSONSerializer)
        self.enqueued: list[str] = []
        self._pending: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._idle = threading.Condition()
        self._outstanding = 0
        self._thread = threading.Thread(target=self._loop, name="gist-rq-enqueue", daemon=True)
        self._thread.start()

    def submit(self, store_path: str, requests: Sequence[GistRequest]) -> None:
        """Hand requests to the enqueue thread; returns at once."""
        with self._idle:
            self._outstanding += len(requests)
        for request in requests:
            self._pending.put(
                job_payload(store_path, request.entity_id, request.detail, self.settings)
            )

    def _loop(self) -> None:
        s = self.settings
        timeout = int(s.max_attempts * (s.request_timeout + s.retry_max_delay)) + 60
        while True:
            item = self._pending.get()
            if item is _STOP:
                return
            assert isinstance(item, dict)
            try:
                job = self.queue.enqueue(
                    GIST_JOB,
                    item,
                    job_id=job_id(item["store"], item["entity_id"]),
                    job_timeout=timeout,
                    result_ttl=RESULT_TTL,
                    failure_ttl=RESULT_TTL,
                )
                with self._idle:
                    self.enqueued.append(job.id)
            except Exception as exc:
                # The ledger keeps the id pending; the handle re-queues it after
                # gist_pending_timeout_seconds.
                log.warning("enqueueing gist job for %s failed: %r", item["entity_id"], exc)
            with self._idle:
                self._outstanding -= 1
                self._idle.notify_all()

    def wait_enqueued(self, timeout: float) -> bool:
        """Wait until every submitted request is on the queue (or failed to get there)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._outstanding == 0, timeout)

    def close(self) -> None:
        self._pending.put(_STOP)
        self._thread.join(timeout=30)
