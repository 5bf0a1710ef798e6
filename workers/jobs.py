"""The two job functions of a run, JSON in and JSON out.

The embedded runner calls them in-process; a queue worker runs the very same
functions from a JSON-serialised job, so both modes judge identically.

- `run_reviewer(payload)` / `run_reviewer_async(payload)`: one reviewer call, from
  `{"prompt": ReviewerPrompt dict, "settings": CallSettings dict}` to a
  `ReviewerResult` dict. It never raises for a model failure: a call that fails
  every attempt comes back as `status="failed"` with the reason, and an answer
  without an extractable array as `findings_raw=None` with the reason.
- `synthesize_loop_job(payload)`: closes a loop — validates, filters, dedupes,
  ranks, writes the loop's files — and returns the loop markdown (the next loop's
  handoff) and the updated closure ledger.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from orchestrator.config import ReviewConfig
from synth.ledger import ClosureLedger
from synth.loop import synthesize_loop
from synth.outputs import write_loop
from workers.backends import Backend, CallSettings, OnStarted, make_backend
from workers.extract import extract_findings
from workers.prompts import ReviewerPrompt
from workers.result import ReviewerResult
from workers.retry import Attempts, RetryPolicy, call_with_retries

MAX_ERROR_CHARS = 600


def describe_error(exc: BaseException) -> str:
    """One line naming the error type, HTTP status if any, and the message."""
    status = getattr(exc, "status_code", None)
    head = f"{type(exc).__name__}" + (f" (HTTP {status})" if status is not None else "")
    text = " ".join(str(exc).split())
    return f"{head}: {text}"[:MAX_ERROR_CHARS]


def _check_payload(payload: object, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise TypeError(f"payload: must be a dict, got {type(payload).__name__}")
    missing = [k for k in keys if k not in payload]
    if missing:
        raise ValueError(f"payload: missing key(s) {', '.join(missing)}")
    return payload


async def run_reviewer_async(
    payload: dict[str, Any],
    *,
    backend: Backend | None = None,
    on_started: OnStarted | None = None,
) -> dict[str, Any]:
    """Call the model for one reviewer and extract its findings.

    `backend` lets a caller share one client (one connection pool) across calls;
    `on_started` is called once the model's answer has begun, the moment a cache
    entry for the prompt prefix exists.
    """
    payload = _check_payload(payload, ("prompt", "settings"))
    p = ReviewerPrompt.from_dict(payload["prompt"])
    s = CallSettings.from_dict(payload["settings"])
    own = backend is None
    active = backend if backend is not None else make_backend(s)
    policy = RetryPolicy(s.max_attempts, s.retry_initial_delay, s.retry_max_delay)
    attempts = Attempts()
    try:
        answer = await call_with_retries(lambda: active.complete(p, on_started), policy, attempts)
    except Exception as exc:
        result = ReviewerResult(
            p.role, p.loop, "failed", error=describe_error(exc), attempts=attempts.count
        )
        return result.to_dict()
    finally:
        if own:
            await active.aclose()
    extraction = extract_findings(answer.text, limit=s.max_findings, stop_reason=answer.stop_reason)
    result = ReviewerResult(
        p.role,
        p.loop,
        "ok",
        findings_raw=extraction.findings,
        extraction_error=extraction.error,
        attempts=attempts.count,
        usage=answer.usage,
        findings_over_limit=extraction.over_limit,
    )
    return result.to_dict()


def run_reviewer(payload: dict[str, Any]) -> dict[str, Any]:
    """Synchronous form of `run_reviewer_async` for workers without an event loop."""
    return anyio.run(lambda: run_reviewer_async(payload))


def synthesize_loop_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Close one loop and write its files into `out_dir`; return handoff and ledger.

    Payload (see `orchestrator.plan.synth_job`): `config` (ReviewConfig dict),
    `loop`, `results` (the loop's ReviewerResult dicts, any order), `snapshot_paths`,
    `constitution_hash`, `ledger` (ClosureLedger dict before this loop), `out_dir`.
    Writing is idempotent per loop, so a retried job leaves the same files.
    """
    payload = _check_payload(
        payload,
        ("config", "loop", "results", "snapshot_paths", "constitution_hash", "ledger", "out_dir"),
    )
    config = ReviewConfig.from_dict(payload["config"])
    loop = payload["loop"]
    if not isinstance(loop, int) or isinstance(loop, bool):
        raise TypeError(f"payload.loop: must be an int, got {type(loop).__name__}")
    ledger = ClosureLedger.from_dict(payload["ledger"])
    synthesis = synthesize_loop(
        [ReviewerResult.from_dict(r) for r in payload["results"]],
        config=config,
        loop=loop,
        snapshot_paths=frozenset(payload["snapshot_paths"]),
        constitution_hash=payload["constitution_hash"],
        ledger=ledger,
    )
    files = write_loop(Path(payload["out_dir"]), synthesis)
    return {
        "loop": loop,
        "markdown": synthesis.markdown,
        "ledger": ledger.to_dict(),
        "counts": synthesis.counts(),
        "files": [str(f) for f in files],
    }
