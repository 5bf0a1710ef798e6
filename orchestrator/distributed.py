"""Distributed review on Redis + RQ: the same jobs as the embedded run, on queues.

Per loop the orchestrator (or, for every loop after the first, the synth job that
closed the previous loop) enqueues:

- one job per role reviewer on the `reviewer` queue, RQ id `<run>_L<n>_<role>`
  (the logical id `<run>:L<n>:<role>`; RQ 3 forbids `:` in job ids);
- the adversarial job on the `reviewer` queue, depending on the role jobs with
  `allow_failure=True`, so it runs however many of them failed;
- the synth job on the `synth` queue, depending on the adversarial job (also allowing
  failure), which closes the loop, writes its files and checkpoint, and enqueues the
  next loop — so the run goes on after the orchestrator process exits.

Jobs carry only (run id, loop, role, key prefix) as JSON (RQ's `JSONSerializer`);
the snapshot, constitution, config and snapshot paths are stored once per run as
content-addressed blobs (`orchestrator.blobs`) that the run state points to
(`orchestrator.runstate`). A reviewer job stores its result in the run state under
its own (loop, role) slot, so a re-executed job replaces its findings. Prompts,
payloads and synthesis come from `orchestrator.plan` and `workers.jobs`, exactly as
the embedded run builds them, so both modes write byte-identical files.
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Dependency, Job, JobStatus, Retry, get_current_job
from rq.serializers import JSONSerializer

from orchestrator.blobs import get_blob, put_blob
from orchestrator.checkpoint import (
    Checkpoint,
    config_fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from orchestrator.config import ReviewConfig
from orchestrator.cost import render_cost_summary
from orchestrator.metrics import Recorder, run_metered_reviewer
from orchestrator.plan import (
    DriftError,
    RunInputs,
    adversarial_job,
    prepare_run,
    role_payload,
)
from orchestrator.plan import synth_job as synth_job_payload
from orchestrator.redis_conn import RedisUnavailable, connect, redact_url
from orchestrator.run_budget import (
    budget_status,
    check_budget_arg,
    format_budget,
    job_budget,
    reopen,
)
from orchestrator.runstate import (
    DEFAULT_PREFIX,
    RunMeta,
    RunState,
    check_run_id,
    logical_job_id,
    rq_job_id,
)
from orchestrator.runstate import field as state_field
from orchestrator.snapshot import Snapshot, SnapshotFile
from synth.ledger import ClosureLedger
from synth.outputs import write_final
from synth.render import USAGE_KEYS
from workers.jobs import synthesize_loop_job
from workers.prompts import system_text
from workers.result import ReviewerResult

REVIEWER_QUEUE = "reviewer"
SYNTH_QUEUE = "synth"
REVIEW_JOB = "orchestrator.distributed.review_job"
SYNTH_JOB = "orchestrator.distributed.synth_job"
JOB_RETRIES = 2  # re-runs after a crash or an abandoned (SIGKILLed) worker
RESULT_TTL = 7 * 24 * 3600
WARM_WAIT = 15.0  # longest a reviewer waits for its loop's first call to start
SYNTH_TIMEOUT = 600

Emit = Callable[[dict[str, Any]], None]
__all__ = ["RedisUnavailable", "connect", "redact_url"]  # re-exported for callers


class DistributedError(RuntimeError):
    """A distributed run cannot be started or continued as asked."""


# --- connections ------------------------------------------------------------------------


def reviewer_queue(conn: redis.Redis) -> Queue:
    return Queue(REVIEWER_QUEUE, connection=conn, serializer=JSONSerializer)


def synth_queue(conn: redis.Redis) -> Queue:
    return Queue(SYNTH_QUEUE, connection=conn, serializer=JSONSerializer)


# --- run inputs from the blobs ----------------------------------------------------------


INPUTS_CACHED = 4
"""Runs whose rebuilt inputs a worker process keeps (`inputs_from_state`)."""

_inputs_cache: OrderedDict[tuple[str, ...], RunInputs] = OrderedDict()


def inputs_from_state(conn: redis.Redis, meta: RunMeta, prefix: str) -> RunInputs:
    """Rebuild the run's inputs from its blobs, as `plan.prepare_run` made them.

    A worker needs no checkout: prompts need the rendered snapshot and the
    constitution, validation needs the snapshot's path set. A worker runs many jobs
    of a run in one process, so the inputs are kept per process, keyed by what they
    are made of: the blobs are content-addressed, so a key names one set of inputs
    wherever it was read, and the ~1 MB snapshot is read and decoded once.
    """
    key = (
        meta.config_blob,
        meta.constitution_blob,
        meta.snapshot_blob,
        meta.paths_blob,
        meta.repo,
        meta.out_dir,
        meta.constitution_path,
        meta.constitution_hash,
    )
    inputs = _inputs_cache.get(key)
    if inputs is None:
        inputs = _read_inputs(conn, meta, prefix)
        _inputs_cache[key] = inputs
        while len(_inputs_cache) > INPUTS_CACHED:
            _inputs_cache.popitem(last=False)
    else:
        _inputs_cache.move_to_end(key)
    return inputs


def _read_inputs(conn: redis.Redis, meta: RunMeta, prefix: str) -> RunInputs:
    config = ReviewConfig.from_dict(json.loads(get_blob(conn, prefix, meta.config_blob)))
    constitution = get_blob(conn, prefix, meta.constitution_blob)
    snapshot_text = get_blob(conn, prefix, meta.snapshot_blob)
    paths = json.loads(get_blob(conn, prefix, meta.paths_blob))
    snapshot = Snapshot(
        files=tuple(SnapshotFile(p, "", 0) for p in paths), skipped=(), text=snapshot_text
    )
    return RunInputs(
        config=config,
        repo=Path(meta.repo),
        out_dir=Path(meta.out_dir),
        constitution_path=Path(meta.constitution_path),
        constitution_hash=meta.constitution_hash,
        snapshot=snapshot,
        system=system_text(config, constitution),
    )


# --- enqueueing ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobPolicy:
    """How review jobs are enqueued: retries after crashes, timeouts, result lifetime."""

    retries: int = JOB_RETRIES
    reviewer_timeout: int = 0  # 0: derived from the config's request timeout and attempts
    synth_timeout: int = SYNTH_TIMEOUT
    result_ttl: int = RESULT_TTL


def _reviewer_timeout(config: ReviewConfig, policy: JobPolicy) -> int:
    if policy.reviewer_timeout:
        return policy.reviewer_timeout
    per_call = config.request_timeout + config.retry_max_delay
    return int(per_call * config.max_attempts) + 120


def enqueue_loop(
    conn: redis.Redis,
    run_id: str,
    loop: int,
    *,
    prefix: str = DEFAULT_PREFIX,
    policy: JobPolicy | None = None,
) -> bool:
    """Enqueue loop `loop`'s 9 jobs once; False if this or another process already did."""
    policy = policy or JobPolicy()
    state = RunState(conn, run_id, prefix)
    meta = state.meta()
    if loop not in meta.loops:
        raise ValueError(f"loop: {loop} is not a loop of run {run_id} ({meta.loops})")
    if not state.claim_enqueue(loop):
        return False
    try:
        _enqueue_jobs(conn, meta, loop, prefix, policy, only_missing=False)
    except BaseException:
        state.release_enqueue(loop)
        raise
    return True


def _enqueue_jobs(
    conn: redis.Redis,
    meta: RunMeta,
    loop: int,
    prefix: str,
    policy: JobPolicy,
    *,
    only_missing: bool,
) -> list[str]:
    """Create the loop's jobs (with `only_missing`, only those absent from Redis)."""
    config = ReviewConfig.from_dict(json.loads(get_blob(conn, prefix, meta.config_blob)))
    run_id = meta.run_id
    rq_retry = Retry(max=policy.retries) if policy.retries > 0 else None
    timeout = _reviewer_timeout(config, policy)
    role_ids = [rq_job_id(run_id, loop, r.prefix) for r in config.role_reviewers]
    adv = config.adversarial.prefix
    adv_id = rq_job_id(run_id, loop, adv)
    synth_id = rq_job_id(run_id, loop, "synth")

    def missing(job_id: str) -> bool:
        return not only_missing or not Job.exists(job_id, connection=conn)

    def unfinished(job_id: str) -> bool:
        job = Job.fetch_many([job_id], connection=conn, serializer=JSONSerializer)[0]
        return job is None or job.get_status(refresh=False) != JobStatus.FINISHED

    common = {"result_ttl": policy.result_ttl, "failure_ttl": policy.result_ttl}
    created: list[str] = []
    rq = reviewer_queue(conn)
    datas = [
        Queue.prepare_data(
            REVIEW_JOB,
            args=[run_id, loop, role.prefix, prefix],
            job_id=job_id,
            description=logical_job_id(run_id, loop, role.prefix),
            timeout=timeout,
            retry=rq_retry,
            **common,
        )
        for role, job_id in zip(config.role_reviewers, role_ids, strict=True)
        if missing(job_id)
    ]
    # A recreated job's dependents must be registered again: a job waiting on one
    # that was lost would wait forever.
    adv_again = bool(datas) and unfinished(adv_id)
    if missing(adv_id) or adv_again:
        datas.append(
            Queue.prepare_data(
                REVIEW_JOB,
                args=[run_id, loop, adv, prefix],
                job_id=adv_id,
                description=logical_job_id(run_id, loop, adv),
                timeout=timeout,
                retry=rq_retry,
                depends_on=Dependency(jobs=role_ids, allow_failure=True),
                **common,
            )
        )
    if datas:
        rq.enqueue_many(datas)
        created += [d.job_id for d in datas]
    if missing(synth_id) or (adv_id in created and unfinished(synth_id)):
        synth_queue(conn).enqueue_call(
            SYNTH_JOB,
            args=[run_id, loop, prefix],
            job_id=synth_id,
            description=logical_job_id(run_id, loop, "synth"),
            timeout=policy.synth_timeout,
            retry=rq_retry,
            depends_on=Dependency(jobs=[adv_id], allow_failure=True),
            **common,
        )
        created.append(synth_id)
    return created


# --- the orchestrator ---------------------------------------------------------------------


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + os.urandom(3).hex()


def start_run(
    conn: redis.Redis,
    *,
    repo: Path,
    config: ReviewConfig,
    out_dir: Path,
    backend: str,
    run_id: str | None = None,
    max_loops: int | None = None,
    prefix: str = DEFAULT_PREFIX,
    policy: JobPolicy | None = None,
    inputs: RunInputs | None = None,
    budget_usd: float | None = None,
) -> RunMeta:
    """Store the run's inputs once, record the run and enqueue its first loop.

    The output directory must not hold another run's checkpoint (as in embedded mode,
    resume it or clear it first). With `budget_usd` every model call of the run is
    checked against it first (`orchestrator.run_budget`).
    """
    run_id = check_run_id(run_id or new_run_id())
    check_budget_arg(config, budget_usd)
    state = RunState(conn, run_id, prefix)
    if state.exists():
        raise DistributedError(
            f"run {run_id} already exists in Redis: `moneta-review status {run_id}` shows it, "
            f"`moneta-review run --resume {run_id}` continues it"
        )
    inputs = inputs or prepare_run(repo, config, out_dir)
    inputs.check_drift()
    existing = load_checkpoint(inputs.out_dir)
    if existing is not None:
        done = ", ".join(map(str, existing.completed_loops)) or "none"
        raise DistributedError(
            f"{inputs.out_dir} holds a run (completed loops: {done}); give another --out, "
            "or continue that run embedded with --resume, or clear it with --fresh"
        )
    loops = inputs.loops(max_loops)
    if not loops:
        raise ValueError(f"max_loops: {max_loops} leaves no loop to run")
    config_blob, _ = put_blob(conn, prefix, json.dumps(inputs.config.to_dict(), sort_keys=True))
    constitution_blob, _ = put_blob(
        conn, prefix, inputs.constitution_path.read_bytes().decode("utf-8")
    )
    snapshot_blob, _ = put_blob(conn, prefix, inputs.snapshot.text)
    paths_blob, _ = put_blob(conn, prefix, json.dumps(sorted(inputs.snapshot.paths)))
    meta = RunMeta(
        run_id=run_id,
        out_dir=str(inputs.out_dir),
        repo=str(inputs.repo),
        config_blob=config_blob,
        constitution_blob=constitution_blob,
        constitution_hash=inputs.constitution_hash,
        constitution_path=str(inputs.constitution_path),
        snapshot_blob=snapshot_blob,
        paths_blob=paths_blob,
        backend=backend,
        loops=loops,
        created_at=time.time(),
        budget_usd=budget_usd,
    )
    if not state.create(meta):
        raise DistributedError(f"run {run_id} was created concurrently by another process")
    inputs.out_dir.mkdir(parents=True, exist_ok=True)
    enqueue_loop(conn, run_id, loops[0], prefix=prefix, policy=policy)
    return meta


@dataclass(slots=True)
class ResumeReport:
    run_id: str
    status: str
    enqueued: list[str] = field(default_factory=list)
    message: str = ""


def resume_run(
    conn: redis.Redis,
    run_id: str,
    *,
    prefix: str = DEFAULT_PREFIX,
    policy: JobPolicy | None = None,
    budget_usd: float | None = None,
) -> ResumeReport:
    """Continue a run from its state in Redis; a completed run is left untouched.

    For the first loop not yet closed: if it was never enqueued, enqueue it; if it
    was, recreate only the jobs missing from Redis (lost with a crashed Redis or an
    orchestrator killed mid-enqueue). Jobs still queued or running are left alone.
    `budget_usd` sets the run's budget; a run stopped by its budget runs again, its
    jobs without a stored result re-enqueued (`run_budget.reopen`).
    """
    policy = policy or JobPolicy()
    state = RunState(conn, run_id, prefix)
    meta = state.meta()
    if budget_usd is not None or meta.status == "stopped":
        config = ReviewConfig.from_dict(json.loads(get_blob(conn, prefix, meta.config_blob)))
        meta = reopen(conn, meta, config, prefix, budget_usd)
    if meta.status == "completed":
        return ResumeReport(run_id, "completed", message=f"run {run_id} is complete: nothing to do")
    if meta.status == "failed":
        raise DistributedError(f"run {run_id} failed: {meta.error}")
    closed = set(state.closed_loops())
    todo = [n for n in meta.loops if n not in closed]
    if not todo:
        _finish_run(conn, meta, prefix)
        return ResumeReport(run_id, "completed", message="every loop was closed; final written")
    loop = todo[0]
    if state.claim_enqueue(loop):
        try:
            created = _enqueue_jobs(conn, meta, loop, prefix, policy, only_missing=True)
        except BaseException:
            state.release_enqueue(loop)
            raise
    else:
        created = _enqueue_jobs(conn, meta, loop, prefix, policy, only_missing=True)
    msg = f"loop {loop}: " + (
        f"recreated {len(created)} job(s): {', '.join(created)}" if created else "all jobs present"
    )
    return ResumeReport(run_id, "running", created, msg)


def wait_for_run(
    conn: redis.Redis,
    run_id: str,
    *,
    prefix: str = DEFAULT_PREFIX,
    timeout: float | None = None,
    poll: float = 0.2,
    emit: Emit | None = None,
) -> RunMeta:
    """Block until the run completes or fails (TimeoutError after `timeout` s)."""
    state = RunState(conn, run_id, prefix)
    deadline = None if timeout is None else time.monotonic() + timeout
    reported: set[int] = set()
    while True:
        meta = state.meta()
        if emit is not None:
            for loop in state.closed_loops():
                if loop not in reported:
                    reported.add(loop)
                    emit({"event": "loop_done", "run": run_id, "loop": loop})
        if meta.status != "running":
            return meta
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} still running after {timeout} s")
        time.sleep(poll)


# --- status ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobRow:
    loop: int
    role: str
    job_id: str
    state: str
    attempts: int
    detail: str = ""


def _failure_reason(job: Job | None) -> str:
    """The last line of the job's traceback (the exception), or why there is none."""
    if job is None:
        return "job not found in Redis"
    text = ""
    try:
        latest = job.latest_result()
        if latest is not None and latest.exc_string:
            text = latest.exc_string
    except Exception:  # an unreadable result must not hide the failure itself
        text = ""
    text = text or (job.exc_info or "")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"job ended {job.get_status(refresh=False)}"


def run_status(conn: redis.Redis, run_id: str, *, prefix: str = DEFAULT_PREFIX) -> dict[str, Any]:
    """Every (loop, role) of the run with its state, attempts and failure reason."""
    state = RunState(conn, run_id, prefix)
    meta = state.meta()
    config = ReviewConfig.from_dict(json.loads(get_blob(conn, prefix, meta.config_blob)))
    recorded = state.states()
    attempts = state.attempts()
    results = state.results()
    enqueued = set(state.enqueued_loops())
    roles = [r.prefix for r in config.roles] + ["synth"]
    ids = [(loop, role, rq_job_id(run_id, loop, role)) for loop in meta.loops for role in roles]
    jobs = Job.fetch_many([i for *_, i in ids], connection=conn, serializer=JSONSerializer)
    rows: list[JobRow] = []
    for (loop, role, _), job in zip(ids, jobs, strict=True):
        key = state_field(loop, role)
        detail = ""
        if job is not None:
            st = job.get_status(refresh=False)
            st_name = st.value if isinstance(st, JobStatus) else str(st)
            if st == JobStatus.FAILED:
                detail = _failure_reason(job)
        elif recorded.get(key) == "finished":
            st_name = "finished"
        elif loop in enqueued:
            st_name = "missing"
        else:
            st_name = "pending"
        result = results.get(key)
        if result is not None and st_name == "finished":
            if result["status"] == "failed":
                detail = f"model call failed: {result['error']}"
            elif isinstance(result.get("findings_raw"), list):
                detail = f"{len(result['findings_raw'])} finding(s)"
            else:
                detail = f"no findings extracted: {result.get('extraction_error')}"
        rows.append(
            JobRow(
                loop,
                role,
                logical_job_id(run_id, loop, role),
                st_name,
                attempts.get(key, 0),
                detail,
            )
        )
    return {
        "run_id": run_id,
        "status": meta.status,
        "error": meta.error,
        "out_dir": meta.out_dir,
        "constitution_hash": meta.constitution_hash,
        "loops": meta.loops,
        "closed_loops": state.closed_loops(),
        "budget": budget_status(conn, meta, prefix),
        "jobs": [
            {
                "loop": r.loop,
                "role": r.role,
                "job_id": r.job_id,
                "state": r.state,
                "attempts": r.attempts,
                "detail": r.detail,
            }
            for r in rows
        ],
    }


def format_status(status: dict[str, Any]) -> str:
    lines = [
        f"run {status['run_id']}: {status['status']}"
        + (f" — {status['error']}" if status["error"] else ""),
        f"output: {status['out_dir']}  constitution: {status['constitution_hash']}",
        f"loops closed: {', '.join(map(str, status['closed_loops'])) or 'none'} "
        f"of {', '.join(map(str, status['loops']))}",
        format_budget(status.get("budget")),
        "",
        f"{'job':<40} {'state':<10} {'tries':>5}  detail",
    ]
    for j in status["jobs"]:
        lines.append(f"{j['job_id']:<40} {j['state']:<10} {j['attempts']:>5}  {j['detail']}")
    return "\n".join(lines) + "\n"


# --- job functions (run by RQ workers) -----------------------------------------------


def _job_connection() -> redis.Redis:
    job = get_current_job()
    if job is None:
        raise RuntimeError("review jobs run inside an RQ worker (no current job)")
    return job.connection


def _check_job_args(run_id: object, loop: object, role: object, prefix: object) -> None:
    """A job's JSON arguments, checked before anything is read or written."""
    check_run_id(run_id)
    if not isinstance(loop, int) or isinstance(loop, bool):
        raise TypeError(f"loop: must be an int, got {type(loop).__name__} {loop!r}")
    if not isinstance(role, str) or not role.isalpha():
        raise TypeError(f"role: must be a role prefix (letters), got {role!r}")
    if not isinstance(prefix, str) or not prefix:
        raise TypeError(f"prefix: must be a non-empty str, got {prefix!r}")


def review_job(run_id: str, loop: int, role: str, prefix: str = DEFAULT_PREFIX) -> dict[str, Any]:
    """One reviewer call of a distributed run; its result replaces (loop, role)'s slot.

    The first role reviewer of a loop calls the model at once and marks the loop
    warm when its answer starts; the loop's other reviewers wait (up to WARM_WAIT s)
    for that mark, so they read the cached prompt prefix instead of all writing it —
    as the embedded run does.
    """
    _check_job_args(run_id, loop, role, prefix)
    conn = _job_connection()
    state = RunState(conn, run_id, prefix)
    meta = state.meta()
    if meta.status != "running":
        return {"run": run_id, "loop": loop, "role": role, "skipped": f"run {meta.status}"}
    attempt = state.mark_started(loop, role)
    inputs = inputs_from_state(conn, meta, prefix)
    config = inputs.config
    prior = _prior_synthesis(state, meta, loop)
    leader = config.role_reviewers[0].prefix
    if config.role(role).exempt_from_scope:
        results = [
            r
            for r in (state.result(loop, x.prefix) for x in config.role_reviewers)
            if r is not None
        ]
        payload = adversarial_job(inputs, loop, prior, results, meta.backend)
        on_started = None
    else:
        payload = role_payload(inputs, loop, prior, meta.backend, role)
        if role == leader:

            def on_started() -> None:
                state.mark_warm(loop, len(config.role_reviewers))

        else:
            state.wait_warm(loop, WARM_WAIT)
            on_started = None
    budget = job_budget(conn, meta, config, loop, role, prefix)  # None: no budget
    try:
        result = anyio.run(
            lambda: run_metered_reviewer(
                payload,
                store=conn,
                prefix=prefix,
                run=run_id,
                config=config,
                on_started=on_started,
                wrap=budget.wrap if budget else None,
            )
        )
    finally:
        if role == leader:
            # Also after a failed call: never hold the others back.
            state.mark_warm(loop, len(config.role_reviewers))
    if budget is not None and budget.stopped:  # no call made: the slot stays empty
        return budget.reply(run_id, loop, role, attempt)
    state.store_result(loop, role, result)
    findings = result["findings_raw"]
    return {
        "run": run_id,
        "loop": loop,
        "role": role,
        "attempt": attempt,
        "status": result["status"],
        "findings": len(findings) if isinstance(findings, list) else None,
    }


def _prior_synthesis(state: RunState, meta: RunMeta, loop: int) -> str | None:
    i = meta.loops.index(loop)
    if i == 0:
        return None
    prior = state.synthesis(meta.loops[i - 1])
    if prior is None:
        raise RuntimeError(
            f"run {meta.run_id}: loop {meta.loops[i - 1]} has no synthesis, loop {loop} cannot run"
        )
    return prior


def loop_results(
    conn: redis.Redis, state: RunState, config: ReviewConfig, loop: int
) -> list[dict[str, Any]]:
    """The loop's 8 results in role order; a job that raised becomes a failed result."""
    out: list[dict[str, Any]] = []
    attempts = state.attempts()
    for role in config.roles:
        r = state.result(loop, role.prefix)
        if r is None:
            job_id = rq_job_id(state.run_id, loop, role.prefix)
            try:
                job: Job | None = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
            except NoSuchJobError:
                job = None
            r = ReviewerResult(
                role.prefix,
                loop,
                "failed",
                error=f"job {logical_job_id(state.run_id, loop, role.prefix)} failed: "
                + _failure_reason(job),
                attempts=attempts.get(state_field(loop, role.prefix), 0),
            ).to_dict()
        out.append(r)
    return out


def synth_job(run_id: str, loop: int, prefix: str = DEFAULT_PREFIX) -> dict[str, Any]:
    """Close loop `loop`: synthesis, loop files, checkpoint; then the next loop or the end.

    Idempotent: re-running it (a retried or re-delivered job) rewrites the same files
    from the same inputs — the ledger it starts from is the one stored when the
    previous loop closed — and enqueues the next loop at most once.
    """
    _check_job_args(run_id, loop, "synth", prefix)
    conn = _job_connection()
    state = RunState(conn, run_id, prefix)
    meta = state.meta()
    if meta.status != "running":
        return {"run": run_id, "loop": loop, "skipped": f"run {meta.status}"}
    state.mark_synth(loop, "started")
    inputs = inputs_from_state(conn, meta, prefix)
    try:
        if inputs.repo.is_dir():
            inputs.check_drift()
    except DriftError as exc:
        state.set_status("failed", str(exc))
        return {"run": run_id, "loop": loop, "failed": str(exc)}
    i = meta.loops.index(loop)
    before = state.ledger(meta.loops[i - 1]) if i > 0 else ClosureLedger().to_dict()
    if before is None:
        raise RuntimeError(f"run {run_id}: loop {meta.loops[i - 1]} is not closed")
    results = loop_results(conn, state, inputs.config, loop)
    closed = synthesize_loop_job(synth_job_payload(inputs, loop, results, before))
    Recorder(conn, prefix).loop_findings(run_id, loop, closed["counts"]["severity"])
    _save_checkpoint(conn, state, meta, inputs, loop, closed)
    state.store_loop_close(loop, closed["markdown"], closed["ledger"])
    if i + 1 < len(meta.loops):
        enqueue_loop(conn, run_id, meta.loops[i + 1], prefix=prefix)
    else:
        _finish_run(conn, meta, prefix, inputs=inputs)
    return {"run": run_id, "loop": loop, "counts": closed["counts"]}


def _save_checkpoint(
    conn: redis.Redis,
    state: RunState,
    meta: RunMeta,
    inputs: RunInputs,
    loop: int,
    closed: dict[str, Any],
) -> None:
    """Write the embedded run's checkpoint for loops up to `loop`, from the run state.

    Built from Redis rather than incremented, so a re-executed synth job writes the
    same checkpoint instead of counting a loop twice.
    """
    closed_loops = {*state.closed_loops(), loop}
    done = [n for n in meta.loops if n in closed_loops]
    last = done[-1]  # a re-run of an earlier loop leaves the later loops' handoff in place
    usage = dict.fromkeys(USAGE_KEYS, 0)
    calls = 0
    for n in done:
        for r in loop_results(conn, state, inputs.config, n):
            calls += 1
            for k in USAGE_KEYS:
                usage[k] += int(r["usage"].get(k, 0))
    cp = load_checkpoint(inputs.out_dir) or Checkpoint(
        constitution_hash=inputs.constitution_hash,
        constitution_path=str(inputs.constitution_path),
        snapshot_sha=inputs.snapshot.sha,
        config_fingerprint=config_fingerprint(inputs.config.to_dict()),
    )
    cp.completed_loops = list(done)
    cp.ledger = closed["ledger"] if last == loop else state.ledger(last) or {}
    cp.prior_synthesis = closed["markdown"] if last == loop else state.synthesis(last)
    cp.usage = usage
    cp.calls = calls
    save_checkpoint(inputs.out_dir, cp)


def _finish_run(
    conn: redis.Redis, meta: RunMeta, prefix: str, *, inputs: RunInputs | None = None
) -> None:
    inputs = inputs or inputs_from_state(conn, meta, prefix)
    state = RunState(conn, meta.run_id, prefix)
    last = meta.loops[-1]
    cp = load_checkpoint(inputs.out_dir)
    ledger = state.ledger(last)
    if cp is None or ledger is None:
        raise RuntimeError(f"run {meta.run_id}: cannot finish, loop {last} has no checkpoint")
    write_final(
        inputs.out_dir,
        config=inputs.config,
        ledger=ClosureLedger.from_dict(ledger),
        constitution_hash=inputs.constitution_hash,
        usage_totals=dict(cp.usage),
        cost_summary=render_cost_summary({inputs.config.model: cp.usage}, inputs.config),
    )
    state.set_status("completed")
