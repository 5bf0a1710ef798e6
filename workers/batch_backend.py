"""The Message Batches backend (`--backend anthropic-batch`): a wave of calls, one batch.

Batched requests cost half the list price and are answered asynchronously. The
backend keeps the per-call `Backend` interface, so every call still goes through
`workers.jobs.run_reviewer_async` and its retry policy: calls that arrive together
(the runner starts a loop's role reviewers at once, see `batches_calls`) are gathered
for `gather_window` seconds after the last arrival and submitted with
`client.messages.batches.create` as one batch, each under a unique `custom_id`. One
of the waiting calls polls `batches.retrieve` with exponential backoff (tenacity)
until the batch has ended, reads `batches.results` (JSONL, in any order) and hands
each call the entry with its `custom_id`.

An entry that did not succeed raises `BatchEntryError` in its own call, classified
by the synchronous path's rules (`workers.retry.is_retryable`): `errored` carries
the API error type, mapped to its HTTP status (overloaded 529, rate limit 429,
api_error 500 are retried; invalid_request 400 is not); `expired` (never processed
within the batch's 24 h) is retried; `canceled` (someone cancelled the batch) is
not. A retried call joins the next batch. Failing to create, poll or read the batch
fails every call of it with that error, under the same rules. A batch still running
after `max_wait` is cancelled and its calls fail without a retry.

Costs: batch usage is priced at `BATCH_PRICE_FACTOR` of the list price (prompt-cache
multipliers apply on top); `batch_cost_summary` renders the run's cost section at
that price with the saving against the synchronous price. The runner also gives the
budget and the metrics recorder `batch_price_config` (`orchestrator.run`).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import anthropic
import anyio
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception,
    retry_if_result,
    stop_after_delay,
    wait_exponential,
)

from orchestrator.config import ReviewConfig
from orchestrator.cost import price_table, render_cost_summary, usage_cost
from workers.backends import USAGE_KEYS, CallSettings, ModelAnswer, OnStarted
from workers.prompts import ReviewerPrompt
from workers.retry import RETRYABLE_STATUS, ModelCallError, is_retryable

BATCH_PRICE_FACTOR = 0.5
"""Message Batches bill input and output tokens at half the list price."""

ERROR_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "timeout_error": 408,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}
"""The API's error types and the HTTP status each has on the synchronous path."""


class BatchEntryError(ModelCallError):
    """One batch entry did not succeed; `status_code` is its synchronous HTTP status."""

    def __init__(self, message: str, *, status_code: int | None, retryable: bool) -> None:
        super().__init__(message, retryable=retryable)
        self.status_code = status_code


def entry_error(custom_id: str, result: Any) -> BatchEntryError:
    """The error a non-succeeded result raises in its call (see the module docstring)."""
    kind = getattr(result, "type", None)
    if kind == "errored":
        err = getattr(getattr(result, "error", None), "error", None)
        etype = str(getattr(err, "type", "api_error"))
        status = ERROR_STATUS.get(etype, 500)
        return BatchEntryError(
            f"batch entry {custom_id} errored: {etype}: {getattr(err, 'message', '')}",
            status_code=status,
            retryable=status in RETRYABLE_STATUS or status >= 500,
        )
    if kind == "expired":
        return BatchEntryError(
            f"batch entry {custom_id} expired before it was processed",
            status_code=None,
            retryable=True,
        )
    if kind == "canceled":
        return BatchEntryError(
            f"batch entry {custom_id} was canceled", status_code=None, retryable=False
        )
    return BatchEntryError(
        f"batch entry {custom_id}: unknown result type {kind!r}", status_code=None, retryable=True
    )


@dataclass(slots=True)
class _Entry:
    custom_id: str
    params: dict[str, Any]
    done: anyio.Event = field(default_factory=anyio.Event)
    answer: ModelAnswer | None = None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One submitted batch: its id, its custom_ids and how each ended."""

    batch_id: str
    custom_ids: tuple[str, ...]
    outcomes: dict[str, str]  # custom_id -> succeeded | errored | expired | canceled | missing


class AnthropicBatchBackend:
    """`Backend` over the Message Batches API (official SDK, `AsyncAnthropic`).

    The client reads ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL and is built with
    `max_retries=0`: the per-call retry policy is the only one.
    """

    name = "anthropic-batch"
    batches_calls = True  # the runner starts a wave's calls together (orchestrator.run)

    def __init__(
        self,
        settings: CallSettings,
        client: anthropic.AsyncAnthropic | None = None,
        *,
        gather_window: float = 0.05,
        poll_initial: float = 1.0,
        poll_max: float = 60.0,
        max_wait: float = 25 * 3600.0,
    ) -> None:
        for key, value in (
            ("gather_window", gather_window),
            ("poll_initial", poll_initial),
            ("poll_max", poll_max),
            ("max_wait", max_wait),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{key}: must be a number >= 0, got {value!r}")
        self.settings = settings
        self.client = client or anthropic.AsyncAnthropic(
            max_retries=0, timeout=settings.request_timeout
        )
        self.gather_window = float(gather_window)
        self.poll_initial = float(poll_initial)
        self.poll_max = float(poll_max)
        self.max_wait = float(max_wait)
        self.batches: list[BatchRecord] = []
        self._pending: list[_Entry] = []
        self._last_arrival = 0.0
        self._leader = False
        self._seq = itertools.count(1)

    def _params(self, prompt: ReviewerPrompt) -> dict[str, Any]:
        request = prompt.messages_request()
        return {
            "model": self.settings.model,
            "max_tokens": self.settings.max_tokens,
            "system": request["system"],
            "messages": request["messages"],
        }

    async def complete(self, prompt: ReviewerPrompt, on_started: OnStarted | None) -> ModelAnswer:
        entry = _Entry(f"L{prompt.loop}-{prompt.role}-{next(self._seq)}", self._params(prompt))
        self._pending.append(entry)
        self._last_arrival = anyio.current_time()
        if not self._leader:
            # This call leads: it gathers the wave, then runs the batch. Calls arriving
            # once the wave is taken (retries, the next wave) elect their own leader.
            self._leader = True
            try:
                entries = await self._gather()
            finally:
                self._leader = False
            await self._run_guarded(entries)
        await entry.done.wait()
        if entry.error is not None:
            raise entry.error
        assert entry.answer is not None
        if on_started is not None:
            on_started()
        return entry.answer

    async def _gather(self) -> list[_Entry]:
        """Wait until no call arrived for `gather_window`; take the calls waiting."""
        while True:
            quiet = anyio.current_time() - self._last_arrival
            if quiet >= self.gather_window:
                break
            await anyio.sleep(self.gather_window - quiet)
        entries, self._pending = self._pending, []
        return entries

    async def _run_guarded(self, entries: list[_Entry]) -> None:
        try:
            await self._run_batch(entries)
        except BaseException as exc:  # cancelled or failed: no waiter may hang
            for e in entries:
                if not e.done.is_set():
                    e.error = (
                        exc
                        if isinstance(exc, Exception)
                        else ModelCallError(f"batch interrupted: {exc!r}", retryable=False)
                    )
                    e.done.set()
            raise

    async def _run_batch(self, entries: list[_Entry]) -> None:
        try:
            batch = await self.client.messages.batches.create(
                requests=[{"custom_id": e.custom_id, "params": e.params} for e in entries]
            )
            batch = await self._poll(batch.id)
            results: dict[str, Any] = {}
            async for item in await self.client.messages.batches.results(batch.id):
                results[item.custom_id] = item.result
        except Exception as exc:
            for e in entries:
                e.error = exc
                e.done.set()
            return
        outcomes: dict[str, str] = {}
        for e in entries:
            result = results.get(e.custom_id)
            if result is None:
                outcomes[e.custom_id] = "missing"
                e.error = BatchEntryError(
                    f"batch {batch.id} has no result for {e.custom_id}",
                    status_code=None,
                    retryable=True,
                )
            elif result.type == "succeeded":
                outcomes[e.custom_id] = "succeeded"
                e.answer = ModelAnswer.from_message(result.message)
            else:
                outcomes[e.custom_id] = str(result.type)
                e.error = entry_error(e.custom_id, result)
            e.done.set()
        self.batches.append(BatchRecord(batch.id, tuple(e.custom_id for e in entries), outcomes))

    async def _poll(self, batch_id: str) -> Any:
        """Retrieve the batch until it has ended: exponential backoff, transient errors retried."""
        retrying: AsyncRetrying = AsyncRetrying(
            retry=retry_if_result(lambda b: b.processing_status != "ended")
            | retry_if_exception(is_retryable),
            wait=wait_exponential(multiplier=self.poll_initial, max=self.poll_max),
            stop=stop_after_delay(self.max_wait),
            sleep=anyio.sleep,
            reraise=True,
        )
        try:
            return await retrying(self.client.messages.batches.retrieve, batch_id)
        except RetryError as exc:
            # Nobody will read its answers: stop paying for the entries not yet processed.
            with contextlib.suppress(anthropic.APIError):
                await self.client.messages.batches.cancel(batch_id)
            raise ModelCallError(
                f"batch {batch_id} did not end within {self.max_wait:.0f} s", retryable=False
            ) from exc

    async def aclose(self) -> None:
        await self.client.close()


# --- cost -------------------------------------------------------------------------------------


def batch_price_config(config: ReviewConfig) -> ReviewConfig:
    """`config` with every price of its table at `BATCH_PRICE_FACTOR`."""
    table = price_table(config)
    prices = {
        model: {
            "input": p.input * BATCH_PRICE_FACTOR,
            "output": p.output * BATCH_PRICE_FACTOR,
            "cache_write_5m": p.cache_write_5m * BATCH_PRICE_FACTOR,
            "cache_write_1h": p.cache_write_1h * BATCH_PRICE_FACTOR,
            "cache_read": p.cache_read * BATCH_PRICE_FACTOR,
        }
        for model, p in table.items()
    }
    return replace(config, prices=prices)


def batch_saving(
    usage_by_model: Mapping[str, Mapping[str, int]], config: ReviewConfig
) -> tuple[float, float]:
    """(USD at the synchronous list price, USD at the batch price) of the usage."""
    from orchestrator.cost import price_for

    table = price_table(config)
    full = 0.0
    for model, usage in usage_by_model.items():
        price = price_for(model, table)
        if price is not None:
            full += usage_cost(
                {k: int(usage.get(k, 0)) for k in USAGE_KEYS}, price, config.cache_ttl
            )["total"]
    return full, full * BATCH_PRICE_FACTOR


def batch_cost_summary(
    usage_by_model: Mapping[str, Mapping[str, int]], config: ReviewConfig
) -> str:
    """The `## Cost` section at batch prices, ending with the saving against list price."""
    text = render_cost_summary(usage_by_model, batch_price_config(config)).rstrip("\n")
    full, batch = batch_saving(usage_by_model, config)
    return (
        text
        + "\n\n"
        + f"Message Batches: every call ran as a batch entry at {BATCH_PRICE_FACTOR:.0%} of the "
        + f"list price. The same tokens at the synchronous price: ${full:.4f}; at the batch "
        + f"price: ${batch:.4f}; saved **${full - batch:.4f}**.\n"
    )
