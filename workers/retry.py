"""Retry policy for model calls: the only retry layer of a call.

At most `attempts` tries (3 by default), exponential backoff with jitter, and the
server's `retry-after` honoured when it sends one. Transient failures are retried:
connection errors and timeouts (also those raised mid-stream), HTTP 408, 409, 429,
every 5xx (529 "overloaded" included), and errors the API streams after a 200. Any
other 4xx (a malformed request, a bad key, a missing model) fails at once, because
repeating it cannot succeed. The SDK's own retries are switched off (`max_retries=0`)
so the two never multiply.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anthropic
import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

T = TypeVar("T")

try:  # the SDK's HTTP client: httpx2 for anthropic 2.x, httpx before
    import httpx2 as _http
except ImportError:  # pragma: no cover - depends on the installed SDK
    import httpx as _http

_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (_http.TransportError,)
RETRYABLE_STATUS = frozenset({408, 409, 429})
RETRY_AFTER_CAP_SECONDS = 300.0


class ModelCallError(Exception):
    """A backend failure that is not an SDK exception; `retryable` says if a retry may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, anthropic.APIConnectionError):  # includes timeouts
        return True
    if isinstance(exc, _TRANSPORT_ERRORS):
        # Raised unwrapped by the SDK once a stream has started: a read timeout or a
        # dropped connection mid-answer.
        return True
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        # < 400: an error event streamed after the response started with 200.
        return status in RETRYABLE_STATUS or status >= 500 or status < 400
    if isinstance(exc, ModelCallError):
        return exc.retryable
    return isinstance(exc, TimeoutError)


def retry_after_seconds(exc: BaseException | None) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms`, `retry-after` seconds or date)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3
    initial_delay: float = 1.0
    max_delay: float = 30.0

    def wait_seconds(self, retry_state: RetryCallState) -> float:
        """`retry-after` if the server sent one, else exponential backoff with jitter."""
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        asked = retry_after_seconds(exc)
        if asked is not None:
            return min(asked, RETRY_AFTER_CAP_SECONDS)
        backoff = self.initial_delay * 2 ** (retry_state.attempt_number - 1)
        return min(backoff, self.max_delay) + random.uniform(0, self.initial_delay)


@dataclass(slots=True)
class Attempts:
    """How many attempts a call used, readable after it raised."""

    count: int = 0


async def call_with_retries(
    fn: Callable[[], Awaitable[T]], policy: RetryPolicy, attempts: Attempts
) -> T:
    """Await `fn()` under `policy`; re-raise the last error when every attempt failed."""
    retrying: AsyncRetrying = AsyncRetrying(
        stop=stop_after_attempt(policy.attempts),
        wait=policy.wait_seconds,
        retry=retry_if_exception(is_retryable),
        reraise=True,
        sleep=anyio.sleep,
    )
    result: Any = None
    async for attempt in retrying:
        with attempt:
            attempts.count = attempt.retry_state.attempt_number
            result = await fn()
    return result
