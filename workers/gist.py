"""The gist job: one consolidated memory in, a shorter faithful restatement authored out.

JSON in, JSON out, so the embedded dispatcher and an RQ worker run the very same
function (`workers.gist_dispatch`). Payload::

    {"store": "/path/to/store", "entity_id": "<32 hex>", "detail": "<original text>",
     "settings": GistSettings dict}

The job asks the model (official `anthropic` SDK, retries by `workers.retry`) for a
restatement inside `<gist>` tags, checks the answer, and hands the outcome to
`moneta.gist.deliver` on the store path, which authors the `fidelity` variants.
It never raises for a model failure: a failed call, a timeout or a malformed
answer becomes a `failed` outcome with the reason (detail stays selected).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any
from uuid import UUID

import anthropic
import anyio

from workers.backends import shared_ssl_context
from workers.jobs import describe_error
from workers.retry import Attempts, ModelCallError, RetryPolicy, call_with_retries

DEFAULT_GIST_PROMPT = (
    "You condense memories of an AI agent. Restate the memory you are given faithfully "
    "and in fewer words. Keep every name, number, date and decision exactly as written; "
    "drop only repetition and filler; add nothing that the memory does not say. "
    "Answer with the restatement only, inside <gist></gist> tags."
)
DEFAULT_GIST_MODEL = "claude-haiku-4-5"
GIST_RE = re.compile(r"<gist>(.*?)</gist>", re.DOTALL)


class MalformedAnswer(ValueError):
    """The model answered, but not with a usable gist; the message says why."""


@dataclass(frozen=True, slots=True)
class GistSettings:
    """How gist jobs call the model: JSON-ready so they travel inside a queued job."""

    prompt: str = DEFAULT_GIST_PROMPT
    model: str = DEFAULT_GIST_MODEL
    max_tokens: int = 1024
    request_timeout: float = 60.0
    max_attempts: int = 3
    retry_initial_delay: float = 1.0
    retry_max_delay: float = 30.0

    def __post_init__(self) -> None:
        for name in ("prompt", "model"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name}: must be a non-empty str, got {value!r}")
        for name in ("max_tokens", "max_attempts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be an int >= 1, got {value!r}")
        for name in ("request_timeout", "retry_initial_delay", "retry_max_delay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name}: must be a number >= 0, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GistSettings:
        if not isinstance(data, dict):
            raise TypeError(f"settings: must be a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"settings: unknown key(s) {', '.join(unknown)}")
        return cls(**data)


def job_payload(store: str, entity_id: UUID, detail: str, settings: GistSettings) -> dict[str, Any]:
    """The JSON payload of one gist job."""
    return {
        "store": store,
        "entity_id": entity_id.hex,
        "detail": detail,
        "settings": settings.to_dict(),
    }


def user_message(entity_id: UUID, detail: str) -> str:
    return f'<memory id="{entity_id.hex}">\n{detail}\n</memory>'


def parse_answer(text: str, stop_reason: str | None, detail: str) -> str:
    """The gist inside the answer, or MalformedAnswer saying what is wrong with it.

    The gist must be complete (not cut at max_tokens), non-empty, free of NUL
    characters (USD strings end at NUL) and shorter than the detail.
    """
    if stop_reason == "max_tokens":
        raise MalformedAnswer("answer cut off at max_tokens")
    found = GIST_RE.search(text)
    if found is None:
        raise MalformedAnswer(f"no <gist> element in the answer: {text[:120]!r}")
    gist = found.group(1).strip()
    if not gist:
        raise MalformedAnswer("empty <gist> element")
    if "\x00" in gist:
        raise MalformedAnswer("gist contains a NUL character")
    if len(gist) >= len(detail):
        raise MalformedAnswer(
            f"gist ({len(gist)} chars) is not shorter than the detail ({len(detail)})"
        )
    return gist


def _client(settings: GistSettings) -> anthropic.AsyncAnthropic:
    """The SDK client: reads ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL; our retries only."""
    return anthropic.AsyncAnthropic(
        max_retries=0,
        timeout=settings.request_timeout,
        http_client=anthropic.DefaultAsyncHttpxClient(verify=shared_ssl_context()),
    )


async def summarize(
    entity_id: UUID,
    detail: str,
    settings: GistSettings,
    *,
    client: anthropic.AsyncAnthropic | None = None,
) -> tuple[str | None, str | None, int]:
    """(gist, None, attempts) or (None, reason, attempts); never raises for the model."""
    own = client is None
    active = client if client is not None else _client(settings)
    policy = RetryPolicy(
        settings.max_attempts, settings.retry_initial_delay, settings.retry_max_delay
    )
    attempts = Attempts()

    async def call() -> str:
        message = await active.messages.create(
            model=settings.model,
            max_tokens=settings.max_tokens,
            system=settings.prompt,
            messages=[{"role": "user", "content": user_message(entity_id, detail)}],
            timeout=settings.request_timeout,
        )
        text = "".join(b.text for b in message.content if getattr(b, "type", None) == "text")
        try:
            return parse_answer(text, message.stop_reason, detail)
        except MalformedAnswer as exc:
            raise ModelCallError(f"malformed answer: {exc}", retryable=False) from exc

    try:
        gist = await call_with_retries(call, policy, attempts)
    except Exception as exc:
        return None, describe_error(exc), attempts.count
    finally:
        if own:
            await active.close()
    return gist, None, attempts.count


def _check(payload: object) -> tuple[str, UUID, str, GistSettings]:
    if not isinstance(payload, dict):
        raise TypeError(f"payload: must be a dict, got {type(payload).__name__}")
    missing = [k for k in ("store", "entity_id", "detail", "settings") if k not in payload]
    if missing:
        raise ValueError(f"payload: missing key(s) {', '.join(missing)}")
    store, raw_id, detail = payload["store"], payload["entity_id"], payload["detail"]
    if not isinstance(store, str) or not store:
        raise TypeError(f"payload.store: must be a non-empty str, got {store!r}")
    if not isinstance(raw_id, str):
        raise TypeError(f"payload.entity_id: must be a hex str, got {type(raw_id).__name__}")
    try:
        entity_id = UUID(hex=raw_id)
    except ValueError as exc:
        raise ValueError(f"payload.entity_id: not a UUID: {raw_id!r}") from exc
    if not isinstance(detail, str) or not detail:
        raise TypeError("payload.detail: must be a non-empty str")
    return store, entity_id, detail, GistSettings.from_dict(payload["settings"])


async def gist_job_async(
    payload: dict[str, Any], *, client: anthropic.AsyncAnthropic | None = None
) -> dict[str, Any]:
    """Summarise one memory and deliver the outcome to its store; return what happened.

    `client` lets a dispatcher share one connection pool across jobs. Delivery (USD
    authoring and a Save) runs in a worker thread so the event loop keeps serving
    the other jobs' model calls.
    """
    from moneta.gist import deliver  # imports usd-core; only gist workers need it

    store, entity_id, detail, settings = _check(payload)
    gist, reason, attempts = await summarize(entity_id, detail, settings, client=client)
    state = await anyio.to_thread.run_sync(
        lambda: deliver(store, entity_id, summary=gist, reason=reason)
    )
    return {
        "entity_id": entity_id.hex,
        "state": state,
        "gist": gist,
        "reason": reason,
        "attempts": attempts,
    }


def gist_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Synchronous form of `gist_job_async`: the function an RQ worker runs."""
    return anyio.run(lambda: gist_job_async(payload))
