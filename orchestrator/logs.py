"""Structured logs: one JSON object per line, each carrying run id, loop, role and job id.

`moneta-review --log-format json ...` (or MONETA_LOG_FORMAT=json) installs a root
handler with `JsonLinesFormatter`, so the review's own messages, RQ's worker messages
and library warnings all come out as JSON lines. The four context fields are on every
line (null where they do not apply, e.g. a worker waiting for jobs) and are filled, in
order of precedence, from:

1. the record's own `extra` (an embedded run's progress events name loop and role);
2. `log_context(...)`, a context-variable scope;
3. the RQ job being executed in this process (its id names run, loop and role).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TextIO

CONTEXT_KEYS = ("run_id", "loop", "role", "job_id")
LOG_FORMATS = ("text", "json")
LOGGER = "moneta.review"

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "moneta_log_context", default=None
)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Within the block, log lines carry these context fields (run_id, loop, role, job_id)."""
    unknown = set(fields) - set(CONTEXT_KEYS)
    if unknown:
        raise ValueError(f"fields: unknown context key(s) {sorted(unknown)}; use {CONTEXT_KEYS}")
    merged = {**(_context.get() or {}), **fields}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def job_context(job_id: str) -> dict[str, Any]:
    """Context fields of an RQ review job id (`<run>_L<n>_<role>`); just the id otherwise."""
    from orchestrator.runstate import logical_job_id, parse_rq_job_id

    try:
        run, loop, role = parse_rq_job_id(job_id)
    except ValueError:
        return {"job_id": job_id}
    return {"run_id": run, "loop": loop, "role": role, "job_id": logical_job_id(run, loop, role)}


def _rq_job_context() -> dict[str, Any]:
    """Context of the RQ job this process is executing, if any (a worker running a job)."""
    from rq import get_current_job

    try:
        job = get_current_job()
    except Exception:  # no connection, no job: not a worker
        return {}
    return {} if job is None else job_context(job.id)


class ContextFilter(logging.Filter):
    """Puts the four context fields on every record (explicit extra > scope > RQ job)."""

    def filter(self, record: logging.LogRecord) -> bool:
        scope = _context.get() or {}
        job: dict[str, Any] | None = None
        for key in CONTEXT_KEYS:
            if getattr(record, key, None) is not None:
                continue
            value = scope.get(key)
            if value is None:
                if job is None:
                    job = _rq_job_context()
                value = job.get(key)
            setattr(record, key, value)
        return True


class JsonLinesFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", "run_id", "loop", "role", "job_id", ...}` per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in CONTEXT_KEYS:
            out[key] = getattr(record, key, None)
        event = getattr(record, "event", None)
        if isinstance(event, Mapping):
            out["event"] = dict(event)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(
    fmt: str = "text", *, level: str = "INFO", stream: TextIO | None = None
) -> None:
    """Install the root handler for `fmt` (`text` or `json`); replaces earlier ones."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"fmt: must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonLinesFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "httpcore"):  # a line per HTTP request: the metrics count those
        logging.getLogger(noisy).setLevel(logging.WARNING)


def json_logging_active() -> bool:
    return any(isinstance(h.formatter, JsonLinesFormatter) for h in logging.getLogger().handlers)


def event_logger(
    run_id: str, describe: Callable[[dict[str, Any]], str]
) -> Callable[[dict[str, Any]], None]:
    """An embedded run's `on_event` that logs each event as one line with its context."""
    log = logging.getLogger(LOGGER)

    def on_event(event: dict[str, Any]) -> None:
        loop = event.get("loop")
        role = event.get("role")
        job_id = f"{run_id}:L{loop}:{role}" if loop is not None and role is not None else None
        level = logging.WARNING if event.get("status") == "failed" else logging.INFO
        log.log(
            level,
            describe(event),
            extra={"run_id": run_id, "loop": loop, "role": role, "job_id": job_id, "event": event},
        )

    return on_event
