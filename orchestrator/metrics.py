"""Prometheus metrics of review runs: recorded where the work happens, served on scrape.

Runs record their counters in a hash store — Redis for distributed runs (every worker
writes to the same keys, so one exporter sees the whole fleet), an in-process
`MemoryStore` for an embedded run — through `Recorder`:

- every model-call attempt: latency (histogram buckets), outcome, tokens by kind and
  estimated USD (`MeteredBackend` wraps the run's backend);
- every reviewer job: model-call retries (attempts beyond the first);
- every closed loop: kept findings by severity (set, not added, so a re-run synth
  job does not count twice);
- every abandoned RQ job (an exception handler the worker runs when its maintenance
  pass finds a job whose worker died).

`MetricsCollector` turns the store into metric families on each scrape, and for a
Redis store also reads RQ live: queue depth, jobs per registry, workers per queue,
runs by status. `moneta-review metrics --port N` serves it (`serve_metrics`).

Redis keys (P = key prefix): `P:metrics:calls` (`run|model|status`),
`P:metrics:latency` (`model|<bucket index>`, `model|sum`, `model|count`),
`P:metrics:tokens` (`run|model|kind`), `P:metrics:cost` (`run|model`),
`P:metrics:retries` (`run`), `P:metrics:abandoned` (`queue`),
`P:metrics:findings` (`run|L<n>|severity`).
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import click
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from orchestrator.config import ReviewConfig
from orchestrator.cost import config_price, usage_cost
from workers.backends import USAGE_KEYS, Backend, ModelAnswer, OnStarted
from workers.prompts import ReviewerPrompt

NS = "moneta_review"
LATENCY_BUCKETS: tuple[float, ...] = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0
)  # fmt: skip
QUEUES = ("reviewer", "synth")
JOB_STATES = ("queued", "started", "deferred", "scheduled", "finished", "failed", "canceled")
SEVERITIES = ("Critical", "High", "Medium", "Low", "Note")

METRIC_NAMES: dict[str, str] = {
    "queue_depth": f"{NS}_queue_depth",
    "jobs": f"{NS}_jobs",
    "workers": f"{NS}_workers",
    "runs": f"{NS}_runs",
    "call_seconds": f"{NS}_model_call_duration_seconds",
    "calls": f"{NS}_model_calls",
    "tokens": f"{NS}_tokens",
    "cost": f"{NS}_cost_usd",
    "retries": f"{NS}_model_call_retries",
    "abandoned": f"{NS}_abandoned_jobs",
    "findings": f"{NS}_findings",
}
"""Family names; counters are exposed with `_total`, the histogram as `_bucket/_sum/_count`."""


class HashStore(Protocol):
    """The part of the Redis client API the recorder and collector use."""

    def hincrby(self, name: str, key: str, amount: int = 1) -> Any: ...
    def hincrbyfloat(self, name: str, key: str, amount: float = 1.0) -> Any: ...
    def hset(self, name: str, key: str | None = None, value: Any = None, **kw: Any) -> Any: ...
    def hgetall(self, name: str) -> Mapping[Any, Any]: ...
    def pipeline(self, transaction: bool = True) -> Any: ...


class MemoryStore:
    """An in-process hash store for embedded runs (same calls as Redis, thread-safe)."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def hincrby(self, name: str, key: str, amount: int = 1) -> int:
        with self._lock:
            h = self._data.setdefault(name, {})
            h[key] = h.get(key, 0) + amount
            return int(h[key])

    def hincrbyfloat(self, name: str, key: str, amount: float = 1.0) -> float:
        with self._lock:
            h = self._data.setdefault(name, {})
            h[key] = h.get(key, 0.0) + amount
            return float(h[key])

    def hset(self, name: str, key: str | None = None, value: Any = None, **kw: Any) -> int:
        with self._lock:
            self._data.setdefault(name, {})[str(key)] = float(value)
            return 1

    def hsetnx(self, name: str, key: str, value: Any) -> int:
        with self._lock:
            h = self._data.setdefault(name, {})
            if key in h:
                return 0
            h[key] = float(value)
            return 1

    def hgetall(self, name: str) -> dict[str, float]:
        with self._lock:
            return dict(self._data.get(name, {}))

    def pipeline(self, transaction: bool = True) -> _MemoryPipeline:
        return _MemoryPipeline(self)


class _MemoryPipeline:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.ops: list[tuple[str, tuple[Any, ...]]] = []

    def __enter__(self) -> _MemoryPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.ops.clear()

    def __getattr__(self, op: str) -> Any:
        def queue(*args: Any) -> _MemoryPipeline:
            self.ops.append((op, args))
            return self

        return queue

    def execute(self) -> list[Any]:
        out = [getattr(self.store, op)(*args) for op, args in self.ops]
        self.ops.clear()
        return out


def _key(prefix: str, what: str) -> str:
    return f"{prefix}:metrics:{what}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Recorder:
    """Writes a run's counters to a hash store (one pipeline round trip per event)."""

    def __init__(self, store: HashStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    def call(
        self,
        run: str,
        model: str,
        seconds: float,
        usage: Mapping[str, int] | None,
        cost_usd: float,
        *,
        job: tuple[int, str] | None = None,
        ended_at: float | None = None,
    ) -> None:
        """One model-call attempt; `usage` None means it failed.

        With `job` = (loop, role), the attempt's wall-clock span also widens that job's
        first-start / last-end times (`P:metrics:timing`), which the status view shows.
        """
        status = "ok" if usage is not None else "error"
        bucket = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        p = self.prefix
        with self.store.pipeline(transaction=False) as pipe:
            if job is not None:
                end = ended_at if ended_at is not None else time.time()
                base = f"{run}|L{job[0]}|{job[1]}"
                pipe.hsetnx(_key(p, "timing"), f"{base}|start", repr(end - seconds))
                pipe.hset(_key(p, "timing"), f"{base}|end", repr(end))
            pipe.hincrby(_key(p, "calls"), f"{run}|{model}|{status}", 1)
            pipe.hincrby(_key(p, "latency"), f"{model}|{bucket}", 1)
            pipe.hincrbyfloat(_key(p, "latency"), f"{model}|sum", seconds)
            pipe.hincrby(_key(p, "latency"), f"{model}|count", 1)
            for kind in USAGE_KEYS if usage else ():
                n = int(usage.get(kind, 0))  # type: ignore[union-attr]
                if n:
                    pipe.hincrby(_key(p, "tokens"), f"{run}|{model}|{kind}", n)
            if cost_usd:
                pipe.hincrbyfloat(_key(p, "cost"), f"{run}|{model}", cost_usd)
            pipe.execute()

    def retries(self, run: str, n: int) -> None:
        if n > 0:
            self.store.hincrby(_key(self.prefix, "retries"), run, n)

    def loop_findings(self, run: str, loop: int, severity_counts: Mapping[str, int]) -> None:
        """Kept findings of a closed loop by severity (idempotent per loop)."""
        with self.store.pipeline(transaction=False) as pipe:
            for sev in SEVERITIES:
                pipe.hset(
                    _key(self.prefix, "findings"),
                    f"{run}|L{loop}|{sev}",
                    int(severity_counts.get(sev, 0)),
                )
            pipe.execute()

    def abandoned(self, queue: str) -> None:
        self.store.hincrby(_key(self.prefix, "abandoned"), queue, 1)


class MeteredBackend:
    """Times every attempt of the inner backend and records it with its tokens and cost."""

    def __init__(self, inner: Backend, recorder: Recorder, run: str, config: ReviewConfig) -> None:
        self.inner = inner
        self.recorder = recorder
        self.run = run
        self.model = config.model
        self.price = config_price(config)
        self.cache_ttl = config.cache_ttl
        self.name = getattr(inner, "name", type(inner).__name__)

    async def complete(self, prompt: ReviewerPrompt, on_started: OnStarted | None) -> ModelAnswer:
        t0 = time.perf_counter()
        answer: ModelAnswer | None = None
        try:
            answer = await self.inner.complete(prompt, on_started)
            return answer
        finally:
            usage = answer.usage if answer is not None else None
            cost = 0.0
            if usage is not None and self.price is not None:
                cost = usage_cost(usage, self.price, self.cache_ttl)["total"]
            self.recorder.call(
                self.run,
                self.model,
                time.perf_counter() - t0,
                usage,
                cost,
                job=(prompt.loop, prompt.role),
            )

    async def aclose(self) -> None:
        await self.inner.aclose()


def record_loop(
    recorder: Recorder, run: str, loop: int, results: list[dict[str, Any]], counts: dict[str, Any]
) -> None:
    """After a loop closed: its reviewers' model-call retries and kept findings by severity."""
    for r in results:
        recorder.retries(run, max(0, int(r.get("attempts", 0)) - 1))
    recorder.loop_findings(run, loop, counts["severity"])


JobSpan = tuple[float, float]


def job_timing(store: HashStore, prefix: str, run: str) -> dict[tuple[int, str], JobSpan]:
    """(loop, role) -> (first attempt start, last attempt end), epoch seconds."""
    raw = {_text(k): float(_text(v)) for k, v in store.hgetall(_key(prefix, "timing")).items()}
    out: dict[tuple[int, str], JobSpan] = {}
    for k, start in raw.items():
        r, loop, role, edge = k.split("|")
        if r != run or edge != "start":
            continue
        end = raw.get(f"{r}|{loop}|{role}|end", start)
        out[(int(loop[1:]), role)] = (start, end)
    return out


# --- distributed: the job-side helpers -----------------------------------------------------


async def run_metered_reviewer(
    payload: dict[str, Any],
    *,
    store: HashStore,
    prefix: str,
    run: str,
    config: ReviewConfig,
    on_started: OnStarted | None = None,
    wrap: Callable[[Backend], Backend] | None = None,
) -> dict[str, Any]:
    """`workers.jobs.run_reviewer_async` with every attempt recorded under `run`.

    `wrap` puts a layer around the metered backend (the run's budget), so metrics
    count only the attempts that reached the model.
    """
    from workers.backends import CallSettings, make_backend
    from workers.jobs import run_reviewer_async

    recorder = Recorder(store, prefix)
    backend: Backend = MeteredBackend(
        make_backend(CallSettings.from_dict(payload["settings"])), recorder, run, config
    )
    if wrap is not None:
        backend = wrap(backend)
    try:
        result = await run_reviewer_async(payload, backend=backend, on_started=on_started)
    finally:
        await backend.aclose()
    recorder.retries(run, max(0, int(result.get("attempts", 0)) - 1))
    return result


def abandoned_job_handler(job: Any, exc_type: type, exc: BaseException, tb: Any) -> bool:
    """RQ exception handler: count jobs the maintenance pass found abandoned.

    Review jobs carry the key prefix as their last argument; other failures pass on.
    """
    from rq.exceptions import AbandonedJobError

    if isinstance(exc, AbandonedJobError) or exc_type is AbandonedJobError:
        args = list(job.args or [])
        prefix = args[-1] if args and isinstance(args[-1], str) else "moneta"
        Recorder(job.connection, prefix).abandoned(job.origin or "unknown")
    return True


# --- the collector -------------------------------------------------------------------------


class MetricsCollector(Collector):
    """Metric families from a hash store (and RQ, when the store is Redis), per scrape."""

    def __init__(self, store: HashStore, prefix: str, *, rq: bool) -> None:
        self.store = store
        self.prefix = prefix
        self.rq = rq

    def _hash(self, what: str) -> dict[str, float]:
        return {
            _text(k): float(_text(v))
            for k, v in self.store.hgetall(_key(self.prefix, what)).items()
        }

    def collect(self) -> Iterator[Metric]:
        if self.rq:
            yield from self._rq_families()
        yield from self._run_families()

    def _rq_families(self) -> Iterator[Metric]:
        from rq import Queue, Worker
        from rq.registry import (
            CanceledJobRegistry,
            DeferredJobRegistry,
            FailedJobRegistry,
            FinishedJobRegistry,
            ScheduledJobRegistry,
            StartedJobRegistry,
        )
        from rq.serializers import JSONSerializer

        from orchestrator.runstate import RUN_STATUSES, RunState, list_runs

        conn: Any = self.store
        depth = GaugeMetricFamily(
            METRIC_NAMES["queue_depth"], "Jobs waiting in the queue.", labels=["queue"]
        )
        jobs = GaugeMetricFamily(
            METRIC_NAMES["jobs"], "Jobs per RQ registry state.", labels=["queue", "state"]
        )
        workers = GaugeMetricFamily(
            METRIC_NAMES["workers"], "Live RQ workers listening on the queue.", labels=["queue"]
        )
        registries = {
            "started": StartedJobRegistry,
            "deferred": DeferredJobRegistry,
            "scheduled": ScheduledJobRegistry,
            "finished": FinishedJobRegistry,
            "failed": FailedJobRegistry,
            "canceled": CanceledJobRegistry,
        }
        for name in QUEUES:
            q = Queue(name, connection=conn, serializer=JSONSerializer)
            queued = q.count
            depth.add_metric([name], queued)
            jobs.add_metric([name, "queued"], queued)
            for state, cls in registries.items():
                # get_job_count(cleanup=False): a scrape must not run RQ maintenance.
                reg = cls(name=name, connection=conn, serializer=JSONSerializer)
                jobs.add_metric([name, state], reg.get_job_count(cleanup=False))
            workers.add_metric([name], Worker.count(connection=conn, queue=q))
        yield depth
        yield jobs
        yield workers
        runs = GaugeMetricFamily(METRIC_NAMES["runs"], "Review runs by status.", labels=["status"])
        by_status: dict[str, int] = dict.fromkeys(RUN_STATUSES, 0)
        for run_id in list_runs(conn, self.prefix):
            status = conn.hget(RunState(conn, run_id, self.prefix).meta_key, "status")
            s = _text(status) if status is not None else "unknown"
            by_status[s] = by_status.get(s, 0) + 1
        for s, n in sorted(by_status.items()):
            runs.add_metric([s], n)
        yield runs

    def _run_families(self) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            METRIC_NAMES["calls"], "Model-call attempts.", labels=["run", "model", "status"]
        )
        for k, v in sorted(self._hash("calls").items()):
            calls.add_metric(k.split("|"), v)
        yield calls
        yield self._latency()
        tokens = CounterMetricFamily(
            METRIC_NAMES["tokens"], "Tokens by kind.", labels=["run", "model", "kind"]
        )
        for k, v in sorted(self._hash("tokens").items()):
            tokens.add_metric(k.split("|"), v)
        yield tokens
        cost = CounterMetricFamily(
            METRIC_NAMES["cost"], "Estimated USD at the config's prices.", labels=["run", "model"]
        )
        for k, v in sorted(self._hash("cost").items()):
            cost.add_metric(k.split("|"), v)
        yield cost
        retries = CounterMetricFamily(
            METRIC_NAMES["retries"], "Model-call attempts beyond the first.", labels=["run"]
        )
        for k, v in sorted(self._hash("retries").items()):
            retries.add_metric([k], v)
        yield retries
        abandoned = CounterMetricFamily(
            METRIC_NAMES["abandoned"], "Jobs found abandoned by RQ maintenance.", labels=["queue"]
        )
        for k, v in sorted(self._hash("abandoned").items()):
            abandoned.add_metric([k], v)
        yield abandoned
        findings = GaugeMetricFamily(
            METRIC_NAMES["findings"], "Kept findings of closed loops.", labels=["run", "severity"]
        )
        totals: dict[tuple[str, str], float] = {}
        for k, v in self._hash("findings").items():
            run, _loop, sev = k.split("|")
            totals[(run, sev)] = totals.get((run, sev), 0.0) + v
        for (run, sev), v in sorted(totals.items()):
            findings.add_metric([run, sev], v)
        yield findings

    def _latency(self) -> HistogramMetricFamily:
        hist = HistogramMetricFamily(
            METRIC_NAMES["call_seconds"], "Model-call attempt latency.", labels=["model"]
        )
        raw = self._hash("latency")
        models = sorted({k.split("|")[0] for k in raw})
        for model in models:
            running = 0.0
            buckets: list[tuple[str, float]] = []
            for i, bound in enumerate((*LATENCY_BUCKETS, math.inf)):
                running += raw.get(f"{model}|{i}", 0.0)
                buckets.append(("+Inf" if math.isinf(bound) else repr(bound), running))
            hist.add_metric([model], buckets, raw.get(f"{model}|sum", 0.0))
        return hist


def registry_for(store: HashStore, prefix: str, *, rq: bool) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(store, prefix, rq=rq))
    return registry


def serve_metrics(
    store: HashStore, prefix: str, port: int, *, rq: bool, addr: str = "0.0.0.0"
) -> tuple[Any, threading.Thread]:
    """Serve the metrics on `addr:port` from a daemon thread; returns (server, thread)."""
    from prometheus_client import start_http_server

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port: must be an int in 0..65535, got {port!r}")
    return start_http_server(port, addr=addr, registry=registry_for(store, prefix, rq=rq))


# --- the command ---------------------------------------------------------------------------


@click.command("metrics")
@click.option("--port", type=click.IntRange(0, 65535), default=9108, show_default=True)
@click.option("--addr", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--redis-url", envvar="REDIS_URL", required=True, help="Redis URL (or REDIS_URL).")
@click.option(
    "--prefix",
    envvar="MONETA_REDIS_PREFIX",
    default="moneta",
    show_default=True,
    help="Key prefix of the runs' state.",
)
def metrics_command(port: int, addr: str, redis_url: str, prefix: str) -> None:
    """Serve Prometheus metrics of the queues, workers and runs on Redis at /metrics."""
    from orchestrator.distributed import RedisUnavailable, connect

    try:
        conn = connect(redis_url)
    except (RedisUnavailable, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    server, thread = serve_metrics(conn, prefix, port, rq=True, addr=addr)
    click.echo(f"metrics: http://{addr}:{server.server_port}/metrics", err=True)
    try:
        while thread.is_alive():
            thread.join(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        conn.close()


def embedded_metrics(port: int | None) -> Recorder | None:
    """For `run --metrics-port`: serve an in-process store and return its recorder."""
    if port is None:
        return None
    store = MemoryStore()
    server, _ = serve_metrics(store, "embedded", port, rq=False)
    click.echo(f"metrics: http://0.0.0.0:{server.server_port}/metrics", err=True)
    return Recorder(store, "embedded")
