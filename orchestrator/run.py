"""The embedded runner: a complete review run in one process, no Redis.

Per loop: check the constitution for drift; run the role reviewers concurrently
(anyio, at most `concurrency` calls in flight) — in the first loop, the first one
alone until its answer has started, so the shared prompt prefix is in the cache
before the others read it; then the adversarial reviewer with this loop's role findings; then the
synthesis job, which writes the loop's files; then the checkpoint. After the last
loop of this invocation, the final `synthesis.md` is rebuilt from the files.

The jobs are `workers.jobs.run_reviewer_async` and `synthesize_loop_job`, planned by
`orchestrator.plan` — the same functions and payloads a queue worker runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from filelock import FileLock, Timeout

from orchestrator.checkpoint import (
    Checkpoint,
    clear_run_files,
    config_fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from orchestrator.config import ReviewConfig
from orchestrator.cost import budget_backend, check_budget, render_cost_summary
from orchestrator.metrics import MeteredBackend, record_loop
from orchestrator.plan import (
    DriftError,
    RunInputs,
    adversarial_job,
    call_settings,
    prepare_run,
    role_jobs,
    synth_job,
)
from synth.ledger import ClosureLedger
from synth.outputs import write_final
from synth.render import USAGE_KEYS
from workers.backends import Backend, make_backend, resolve_backend
from workers.batch_backend import batch_cost_summary, batch_price_config
from workers.jobs import run_reviewer_async, synthesize_loop_job

Event = dict[str, Any]
OnEvent = Callable[[Event], None]
LOCK_NAME = ".run.lock"


class RunError(RuntimeError):
    """The run cannot start or continue as asked (the message says what to do)."""


@dataclass(slots=True)
class RunOptions:
    repo: Path
    config: ReviewConfig
    out_dir: Path = Path("docs/review")
    resume: bool = False
    fresh: bool = False
    max_loops: int | None = None
    backend: str | None = None  # None: the config's backend (usually "auto")
    budget_usd: float | None = None  # stop before a call that would exceed it (cost.py)
    recorder: Any = None  # orchestrator.metrics.Recorder: calls, retries, findings (metrics.py)

    def __post_init__(self) -> None:
        if self.max_loops is not None and (
            not isinstance(self.max_loops, int) or isinstance(self.max_loops, bool)
        ):
            raise TypeError(f"max_loops: must be an int or None, got {self.max_loops!r}")
        if self.max_loops is not None and self.max_loops < 1:
            raise ValueError(f"max_loops: must be >= 1, got {self.max_loops}")
        if self.resume and self.fresh:
            raise ValueError("resume, fresh: choose one (continue the run, or start over)")


@dataclass(slots=True)
class RunReport:
    out_dir: Path
    constitution_hash: str
    loops_run: list[int]
    completed_loops: list[int]
    calls: int
    usage: dict[str, int]
    failed_reviewers: list[tuple[int, str, str]] = field(default_factory=list)
    synthesis: Path | None = None


def _add_usage(total: dict[str, int], usage: dict[str, int]) -> None:
    for k in USAGE_KEYS:
        total[k] = total.get(k, 0) + int(usage.get(k, 0))


def _new_checkpoint(inputs: RunInputs) -> Checkpoint:
    return Checkpoint(
        constitution_hash=inputs.constitution_hash,
        constitution_path=str(inputs.constitution_path),
        snapshot_sha=inputs.snapshot.sha,
        config_fingerprint=config_fingerprint(inputs.config.to_dict()),
        ledger=ClosureLedger().to_dict(),
        usage=dict.fromkeys(USAGE_KEYS, 0),
    )


def open_checkpoint(inputs: RunInputs, options: RunOptions, emit: OnEvent) -> Checkpoint:
    """The checkpoint to continue from, after every resume-time drift check."""
    existing = load_checkpoint(inputs.out_dir)
    if options.fresh or existing is None:
        removed = clear_run_files(inputs.out_dir)
        if options.resume:
            emit({"event": "resume_nothing", "out_dir": str(inputs.out_dir)})
        if removed:
            emit({"event": "cleared", "files": [str(p) for p in removed]})
        return _new_checkpoint(inputs)
    if not options.resume:
        done = ", ".join(map(str, existing.completed_loops)) or "none"
        raise RunError(
            f"{inputs.out_dir} holds a run (completed loops: {done}). Pass --resume to "
            "continue it, or --fresh to discard it and start over."
        )
    if existing.constitution_hash != inputs.constitution_hash:
        raise DriftError(
            f"constitution drift: {inputs.constitution_path} now hashes to "
            f"{inputs.constitution_hash}, but the run in {inputs.out_dir} started under "
            f"{existing.constitution_hash}. Restore the file to resume, or start over "
            "with --fresh."
        )
    if existing.config_fingerprint != config_fingerprint(inputs.config.to_dict()):
        raise DriftError(
            f"config drift: the review configuration differs from the one the run in "
            f"{inputs.out_dir} started with. Resume with the same --config, or --fresh."
        )
    if existing.snapshot_sha != inputs.snapshot.sha:
        raise DriftError(
            f"snapshot drift: the repository snapshot ({inputs.snapshot.sha}) differs from "
            f"the one the run in {inputs.out_dir} reviewed ({existing.snapshot_sha}); its "
            "loops would judge different code. Restore the repository, or start over "
            "with --fresh."
        )
    emit({"event": "resumed", "completed_loops": list(existing.completed_loops)})
    return existing


async def _run_reviewers(
    jobs: list[dict[str, Any]],
    backend: Backend,
    limiter: anyio.CapacityLimiter,
    emit: OnEvent,
    *,
    warm_first: bool = True,
) -> list[dict[str, Any]]:
    """Run reviewer jobs concurrently; with `warm_first`, the first alone until it starts.

    A prompt-cache entry exists only once a response has begun, so calls fanned out
    at the same instant would all write the prefix; holding the rest back until the
    first answer starts lets them read it instead.
    """
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    first_started = anyio.Event()
    if not warm_first:
        first_started.set()

    async def one(i: int, started: anyio.Event | None) -> None:
        try:
            async with limiter:
                results[i] = await run_reviewer_async(
                    jobs[i], backend=backend, on_started=started.set if started else None
                )
        finally:
            if started is not None:
                started.set()  # also when the call failed: never block the others
        r = results[i]
        assert r is not None
        emit(
            {
                "event": "reviewer_done",
                "loop": r["loop"],
                "role": r["role"],
                "status": r["status"],
                "attempts": r["attempts"],
                "findings": len(r["findings_raw"]) if isinstance(r["findings_raw"], list) else None,
                "error": r["error"] or r["extraction_error"],
                "usage": r["usage"],
            }
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, 0, first_started if warm_first else None)
        await first_started.wait()
        for i in range(1, len(jobs)):
            tg.start_soon(one, i, None)
    return [r for r in results if r is not None]


def _check_prefix_cached(results: list[dict[str, Any]], emit: OnEvent) -> None:
    """Warn when the run's first answered call neither wrote nor read the prompt cache.

    The API caches nothing, silently, below the model's minimum cacheable length (or
    when caching is unavailable): every call then pays the full input price.
    """
    answered = [r for r in results if r["status"] == "ok"]
    if not answered:
        return
    usage = answered[0]["usage"]
    if usage.get("cache_write", 0) == 0 and usage.get("cache_read", 0) == 0:
        emit(
            {
                "event": "warning",
                "message": (
                    f"the shared prompt prefix was not cached (the {answered[0]['role']} call "
                    "reported no cache write or read): it may be below the model's minimum "
                    "cacheable length, or the endpoint does not cache; every call pays the "
                    "full input price"
                ),
            }
        )


async def run_review(
    options: RunOptions,
    *,
    backend: Backend | None = None,
    on_event: OnEvent | None = None,
    inputs: RunInputs | None = None,
) -> RunReport:
    """Run (or resume) a review; return what was done. Raises DriftError, RunError.

    `backend` overrides the one chosen from the config and environment (one client
    is shared by every call of the run); `on_event` receives progress events.
    """
    emit: OnEvent = on_event or (lambda _e: None)
    config = options.config
    if backend is None:
        requested = options.backend or config.backend
        name = resolve_backend(requested)
        backend = make_backend(call_settings(config, name))
        own_backend = True
    else:
        name = getattr(backend, "name", "custom")
        own_backend = False
    inputs = inputs or prepare_run(options.repo, config, options.out_dir)
    inputs.out_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(inputs.out_dir / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout as exc:
        raise RunError(
            f"another run is writing to {inputs.out_dir} (lock {lock.lock_file})"
        ) from exc
    try:
        return await _run_locked(inputs, options, backend, name, emit)
    finally:
        lock.release()
        if own_backend:
            await backend.aclose()


async def _run_locked(
    inputs: RunInputs, options: RunOptions, backend: Backend, name: str, emit: OnEvent
) -> RunReport:
    inputs.check_drift()
    cp = open_checkpoint(inputs, options, emit)
    # A batch backend (workers.batch_backend) sends the calls that start together as one
    # Message Batch: a wave starts at once, with no warm-up call and no concurrency cap;
    # its usage is priced at the batch rate. (Read before a budget wraps the backend.)
    batched = bool(getattr(backend, "batches_calls", False))
    priced = batch_price_config(inputs.config) if batched else inputs.config
    run_label = inputs.out_dir.name or "embedded"
    if options.recorder is not None:  # metrics see real calls, not budget-held replays
        backend = MeteredBackend(backend, options.recorder, run_label, priced)
    meter, backend = budget_backend(
        backend,
        priced,
        budget_usd=options.budget_usd,
        out_dir=inputs.out_dir,
        completed_loops=cp.completed_loops,
        spent_usage=cp.usage,
    )
    if meter is not None:  # a budget stop in the first loop must leave a run to --resume
        save_checkpoint(inputs.out_dir, cp)
    ledger = cp.ledger
    limiter = anyio.CapacityLimiter(math.inf if batched else inputs.config.concurrency)
    todo = [n for n in inputs.loops(options.max_loops) if n not in cp.completed_loops]
    emit(
        {
            "event": "run_start",
            "backend": name,
            "model": inputs.config.model,
            "constitution_hash": inputs.constitution_hash,
            "snapshot_files": len(inputs.snapshot.files),
            "snapshot_bytes": inputs.snapshot.size,
            "loops": todo,
        }
    )
    calls = 0
    failed: list[tuple[int, str, str]] = []
    # Every loop's first call goes alone until its response starts, so the other calls
    # read the loop block (and, in the first loop, the run prefix) instead of each
    # writing it (workers.prompts). A batch starts its calls together: no warm-up.
    first_loop = True
    for loop in todo:
        inputs.check_drift()
        theme = inputs.config.theme_for(loop)
        emit({"event": "loop_start", "loop": loop, "theme": theme.slug})
        prior = cp.prior_synthesis
        jobs = role_jobs(inputs, loop, prior, name)
        results = await _run_reviewers(jobs, backend, limiter, emit, warm_first=not batched)
        if first_loop:
            _check_prefix_cached(results, emit)
        first_loop = False
        check_budget(meter, results)
        adversary = adversarial_job(inputs, loop, prior, results, name)
        results += await _run_reviewers([adversary], backend, limiter, emit)
        check_budget(meter, results)
        calls += len(results)
        # Nothing of this loop is written if the constitution changed while it ran.
        inputs.check_drift()
        closed = synthesize_loop_job(synth_job(inputs, loop, results, ledger))
        ledger = closed["ledger"]
        for r in results:
            _add_usage(cp.usage, r["usage"])
            if r["status"] == "failed":
                failed.append((loop, r["role"], r["error"] or ""))
        cp.ledger = ledger
        cp.prior_synthesis = closed["markdown"]
        cp.completed_loops = sorted({*cp.completed_loops, loop})
        cp.calls += len(results)
        save_checkpoint(inputs.out_dir, cp)
        if options.recorder is not None:
            record_loop(options.recorder, run_label, loop, results, closed["counts"])
        emit({"event": "loop_done", "loop": loop, "counts": closed["counts"]})
    final = write_final(
        inputs.out_dir,
        config=inputs.config,
        ledger=ClosureLedger.from_dict(ledger),
        constitution_hash=inputs.constitution_hash,
        usage_totals=dict(cp.usage),
        cost_summary=(batch_cost_summary if batched else render_cost_summary)(
            {inputs.config.model: cp.usage}, inputs.config
        ),
    )
    emit({"event": "run_done", "synthesis": str(final), "calls": calls})
    return RunReport(
        out_dir=inputs.out_dir,
        constitution_hash=inputs.constitution_hash,
        loops_run=todo,
        completed_loops=list(cp.completed_loops),
        calls=calls,
        usage=dict(cp.usage),
        failed_reviewers=failed,
        synthesis=final,
    )
