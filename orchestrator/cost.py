"""Token prices, cost estimates and the run budget.

Prices come from the config's `[prices]` table (USD per million tokens, keyed by model
id or glob); a config without one uses the packaged table. Usage is counted in the
four kinds the Messages API reports — `input`, `output`, `cache_write`, `cache_read` —
and a cache write is priced at the run's cache TTL (5m: 1.25x input, 1h: 2x).

The budget (`--budget-usd`) is enforced per call by `BudgetedBackend`, a wrapper
around the run's model backend: before each attempt it estimates the call's cost as
an upper bound (the prompt's tokens at the cache-write rate until a response has
shown the shared prefix cached, at the read rate after; the full output budget at
the output rate) and refuses the call if spent + in flight + estimate would exceed
the budget. Answers received before the refusal are kept in `budget-hold.jsonl`
(keyed by the request's hash), so a `--resume` with a larger budget replays them
instead of paying for them twice.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from orchestrator.config import ReviewConfig, default_config_path, parse_config
from workers.backends import USAGE_KEYS, Backend, ModelAnswer, OnStarted
from workers.prompts import ReviewerPrompt
from workers.retry import ModelCallError

MTOK = 1_000_000
BYTES_PER_TOKEN_ESTIMATE = 4.0
"""Token estimate without the SDK's counter: UTF-8 bytes per token (prose and code ~4)."""
WRITE_FACTOR = {"5m": 1.25, "1h": 2.0}
READ_FACTOR = 0.1
HOLD_NAME = "budget-hold.jsonl"


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens of one model, per usage kind."""

    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float

    @classmethod
    def from_table(cls, table: Mapping[str, float]) -> ModelPrice:
        """A config `[prices."model"]` table; cache rates default to the API multipliers."""
        for key in ("input", "output"):
            if key not in table:
                raise ValueError(f"prices: missing {key!r} (USD per million tokens)")
        base = float(table["input"])

        def rate(key: str, factor: float) -> float:
            return round(float(table.get(key, base * factor)), 9)  # 7 * 0.1 -> 0.7

        return cls(
            input=base,
            output=float(table["output"]),
            cache_write_5m=rate("cache_write_5m", WRITE_FACTOR["5m"]),
            cache_write_1h=rate("cache_write_1h", WRITE_FACTOR["1h"]),
            cache_read=rate("cache_read", READ_FACTOR),
        )

    def rates(self, cache_ttl: str) -> dict[str, float]:
        """USD per million tokens for each usage kind, cache writes at `cache_ttl`."""
        if cache_ttl not in WRITE_FACTOR:
            raise ValueError(f"cache_ttl: must be one of 5m, 1h, got {cache_ttl!r}")
        write = self.cache_write_1h if cache_ttl == "1h" else self.cache_write_5m
        return {
            "input": self.input,
            "output": self.output,
            "cache_write": write,
            "cache_read": self.cache_read,
        }


@lru_cache(maxsize=1)
def _packaged_prices() -> dict[str, dict[str, float]]:
    return parse_config(default_config_path().read_text("utf-8"), "defaults.toml").prices


def price_table(config: ReviewConfig) -> dict[str, ModelPrice]:
    raw = config.prices or _packaged_prices()
    return {model: ModelPrice.from_table(t) for model, t in raw.items()}


def price_for(model: str, table: Mapping[str, ModelPrice]) -> ModelPrice | None:
    """The price of `model`: an exact key, else the longest matching glob, else None."""
    if model in table:
        return table[model]
    globs = sorted((k for k in table if any(c in k for c in "*?[")), key=len, reverse=True)
    for pattern in globs:
        if fnmatch.fnmatchcase(model, pattern):
            return table[pattern]
    return None


def config_price(config: ReviewConfig) -> ModelPrice | None:
    return price_for(config.model, price_table(config))


def usage_cost(usage: Mapping[str, int], price: ModelPrice, cache_ttl: str) -> dict[str, float]:
    """USD per usage kind and `total` for token counts `usage`."""
    rates = price.rates(cache_ttl)
    out = {k: int(usage.get(k, 0)) * rates[k] / MTOK for k in USAGE_KEYS}
    out["total"] = sum(out[k] for k in USAGE_KEYS)
    return out


def cache_read_share(usage: Mapping[str, int]) -> float | None:
    """Share of all input tokens (plain, written, read) served from the cache."""
    total = sum(int(usage.get(k, 0)) for k in ("input", "cache_write", "cache_read"))
    return int(usage.get("cache_read", 0)) / total if total else None


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN_ESTIMATE)


# --- the cost summary of synthesis.md ------------------------------------------------------


def render_cost_summary(
    usage_by_model: Mapping[str, Mapping[str, int]], config: ReviewConfig
) -> str:
    """Markdown `## Cost` section: tokens and USD by kind and model, cache-hit share."""
    table = price_table(config)
    lines = ["## Cost", ""]
    lines.append(
        "| model | kind | tokens | USD per MTok | USD |",
    )
    lines.append("|---|---|---:|---:|---:|")
    grand = 0.0
    unpriced: list[str] = []
    total_usage = dict.fromkeys(USAGE_KEYS, 0)
    for model in sorted(usage_by_model):
        usage = usage_by_model[model]
        for k in USAGE_KEYS:
            total_usage[k] += int(usage.get(k, 0))
        price = price_for(model, table)
        if price is None:
            unpriced.append(model)
            for k in USAGE_KEYS:
                lines.append(f"| `{model}` | {k} | {int(usage.get(k, 0))} | n/a | n/a |")
            continue
        rates = price.rates(config.cache_ttl)
        cost = usage_cost(usage, price, config.cache_ttl)
        for k in USAGE_KEYS:
            lines.append(
                f"| `{model}` | {k} | {int(usage.get(k, 0))} | {rates[k]:.2f} | {cost[k]:.4f} |"
            )
        grand += cost["total"]
    lines.append("")
    share = cache_read_share(total_usage)
    shown = "n/a" if share is None else f"{share * 100:.1f}%"
    lines.append(f"Cache-hit share of input tokens: {shown}.")
    lines.append("")
    lines.append(
        f"Estimated cost: **${grand:.4f}** (cache writes priced at the {config.cache_ttl} TTL; "
        "list prices from the config's `[prices]` table)."
    )
    if unpriced:
        lines.append("")
        lines.append(
            "No price for " + ", ".join(f"`{m}`" for m in unpriced) + ": not included in the total."
        )
    lines.append("")
    return "\n".join(lines)


# --- dry runs ------------------------------------------------------------------------------


def count_tokens_sdk(prompts: Sequence[ReviewerPrompt], model: str) -> list[int] | None:
    """Input tokens of each prompt from the API's `count_tokens`, or None if unreachable.

    Needs ANTHROPIC_API_KEY (ANTHROPIC_BASE_URL honoured). The first failure (no key,
    no network, an endpoint without token counting) gives None for all: a dry run then
    uses the byte estimate for every call, never a mix.
    """
    if not (os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN")):
        return None
    import anthropic

    client = anthropic.Anthropic(max_retries=0, timeout=10.0)
    counts: list[int] = []
    seen: dict[str, int] = {}
    try:
        for p in prompts:
            req = p.messages_request()
            key = request_key(p, model)
            if key not in seen:
                res = client.messages.count_tokens(
                    model=model, system=req["system"], messages=req["messages"]
                )
                seen[key] = int(res.input_tokens)
            counts.append(seen[key])
    except (anthropic.APIError, OSError, ValueError):
        return None
    finally:
        client.close()
    return counts


def price_plan(
    plan: dict[str, Any],
    config: ReviewConfig,
    sdk_counts: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Add per-call and per-run USD to `orchestrator.plan.dry_run_plan`'s output.

    With `sdk_counts` (one per call, from the API's token counter) a call's prompt
    tokens are the counted ones, split between cached prefix and the rest in the
    proportions of the byte estimate; otherwise the byte estimate is used as is.
    Output is priced at the full output budget (an upper bound).
    """
    price = config_price(config)
    calls = plan["calls"]
    if sdk_counts is not None and len(sdk_counts) != len(calls):
        raise ValueError(f"sdk_counts: need {len(calls)} counts, got {len(sdk_counts)}")
    totals = {"input": 0, "cache_write": 0, "cache_read": 0, "output": 0}
    usd_total = 0.0
    for i, row in enumerate(calls):
        usage = {
            "input": row["input"],
            "cache_write": row["cache_write"],
            "cache_read": row["cache_read"],
            "output": row["output_max"],
        }
        if sdk_counts is not None:
            estimated = row["input"] + row["cache_write"] + row["cache_read"]
            scale = sdk_counts[i] / estimated if estimated else 0.0
            for k in ("cache_write", "cache_read"):
                usage[k] = round(usage[k] * scale)
            usage["input"] = sdk_counts[i] - usage["cache_write"] - usage["cache_read"]
            row["tokens_counted"] = sdk_counts[i]
        row["usage_estimate"] = usage
        for k in totals:
            totals[k] += usage[k]
        if price is not None:
            row["cost_usd"] = round(usage_cost(usage, price, config.cache_ttl)["total"], 6)
            usd_total += row["cost_usd"]
    plan["token_source"] = (
        "sdk-count-tokens"
        if sdk_counts is not None
        else f"estimate: UTF-8 bytes / {BYTES_PER_TOKEN_ESTIMATE:g}"
    )
    if price is None:
        plan["cost_estimate"] = None
        plan["cost_note"] = f"no price for model {config.model!r} in [prices]"
        return plan
    by_kind = usage_cost(totals, price, config.cache_ttl)
    plan["cost_estimate"] = {
        "input_usd": round(by_kind["input"] + by_kind["cache_write"] + by_kind["cache_read"], 6),
        "output_max_usd": round(by_kind["output"], 6),
        "total_usd": round(usd_total, 6),
        "by_kind_usd": {k: round(by_kind[k], 6) for k in USAGE_KEYS},
        "tokens": totals,
        "prices_per_mtok": price.rates(config.cache_ttl),
    }
    return plan


# --- the budget ----------------------------------------------------------------------------


class BudgetExceeded(RuntimeError):
    """The next call's estimated cost would take the run past `--budget-usd`."""

    def __init__(self, budget: float, spent: float, needed: float, what: str) -> None:
        self.budget = budget
        self.spent = spent
        self.needed = needed
        super().__init__(
            f"budget ${budget:.4f} reached: ${spent:.4f} spent or held by calls in flight, "
            f"the next call ({what}) is estimated at up to ${needed:.4f}. Answers received "
            "so far are kept; raise "
            "--budget-usd and run again with --resume to continue."
        )


class _Refused(ModelCallError):
    def __init__(self, exc: BudgetExceeded) -> None:
        super().__init__(str(exc), retryable=False)
        self.exceeded = exc


def request_key(prompt: ReviewerPrompt, model: str) -> str:
    """sha256 of what the model is sent: the same key means the same answer may be reused."""
    body = json.dumps(
        {"model": model, **prompt.messages_request()}, sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


class CostMeter:
    """Spent and reserved USD of a run against an optional budget (thread-safe)."""

    def __init__(
        self,
        config: ReviewConfig,
        *,
        budget_usd: float | None,
        spent_usd: float = 0.0,
        prefix_cached: bool = False,
    ) -> None:
        if budget_usd is not None:
            if isinstance(budget_usd, bool) or not isinstance(budget_usd, int | float):
                raise TypeError(f"budget_usd: must be a number, got {type(budget_usd).__name__}")
            if not budget_usd >= 0:
                raise ValueError(f"budget_usd: must be >= 0, got {budget_usd}")
        self.config = config
        self.price = config_price(config)
        if budget_usd is not None and self.price is None:
            raise ValueError(
                f"budget_usd: no price for model {config.model!r} in [prices]; add one to "
                "the config to run with a budget"
            )
        self.budget = budget_usd
        self.spent = spent_usd
        self.reserved = 0.0
        self.prefix_cached = prefix_cached
        self.refusals: list[BudgetExceeded] = []
        self._lock = threading.Lock()

    def cost(self, usage: Mapping[str, int]) -> float:
        if self.price is None:
            return 0.0
        return usage_cost(usage, self.price, self.config.cache_ttl)["total"]

    def estimate(self, prompt: ReviewerPrompt, max_tokens: int) -> float:
        """Upper-bound USD of one call (see the module docstring)."""
        if self.price is None:
            return 0.0
        rates = self.price.rates(self.config.cache_ttl)
        write = max(rates["cache_write"], rates["input"])
        shared = estimate_tokens(prompt.system) + estimate_tokens(prompt.snapshot)
        rest = estimate_tokens(prompt.loop_block) + estimate_tokens(prompt.task)
        prefix_rate = rates["cache_read"] if self.prefix_cached else write
        usd = shared * prefix_rate + rest * write + max_tokens * rates["output"]
        return usd / MTOK

    def reserve(self, usd: float, what: str) -> None:
        """Hold `usd` for a call about to start; BudgetExceeded if it does not fit."""
        with self._lock:
            if self.budget is not None and self.spent + self.reserved + usd > self.budget + 1e-12:
                exc = BudgetExceeded(self.budget, self.spent + self.reserved, usd, what)
                self.refusals.append(exc)
                raise exc
            self.reserved += usd

    def settle(self, reserved: float, usage: Mapping[str, int] | None) -> float:
        """Replace a reservation by what the call actually cost; return that cost."""
        actual = self.cost(usage) if usage else 0.0
        with self._lock:
            self.reserved = max(0.0, self.reserved - reserved)
            self.spent += actual
            if usage and (usage.get("cache_read", 0) or usage.get("cache_write", 0)):
                self.prefix_cached = True
        return actual


class BudgetedBackend:
    """A backend that checks each attempt against the budget and keeps paid answers.

    Answers are appended to `hold_path` as they arrive; a later run (a `--resume` with
    a larger budget) gets an identical request answered from there at no cost.
    """

    def __init__(
        self,
        inner: Backend,
        meter: CostMeter,
        settings_max_tokens: int,
        hold_path: Path,
        model: str,
    ) -> None:
        self.inner = inner
        self.meter = meter
        self.max_tokens = settings_max_tokens
        self.hold_path = hold_path
        self.model = model
        self.name = getattr(inner, "name", type(inner).__name__)
        self._held = read_hold(hold_path)
        self._lock = threading.Lock()

    async def complete(self, prompt: ReviewerPrompt, on_started: OnStarted | None) -> ModelAnswer:
        key = request_key(prompt, self.model)
        held = self._held.get(key)
        if held is not None:
            if on_started is not None:
                on_started()
            return held[1]
        usd = self.meter.estimate(prompt, self.max_tokens)
        try:
            self.meter.reserve(usd, f"loop {prompt.loop}, {prompt.role}")
        except BudgetExceeded as exc:
            raise _Refused(exc) from exc
        answer: ModelAnswer | None = None
        try:
            answer = await self.inner.complete(prompt, on_started)
        finally:
            self.meter.settle(usd, answer.usage if answer is not None else None)
        self._keep(key, prompt, answer)
        return answer

    def _keep(self, key: str, prompt: ReviewerPrompt, answer: ModelAnswer) -> None:
        record = {
            "key": key,
            "loop": prompt.loop,
            "role": prompt.role,
            "text": answer.text,
            "stop_reason": answer.stop_reason,
            "usage": answer.usage,
        }
        with self._lock:
            self._held[key] = (prompt.loop, answer)
            self.hold_path.parent.mkdir(parents=True, exist_ok=True)
            with self.hold_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())

    def held_cost(self, completed_loops: Sequence[int]) -> float:
        """USD of kept answers of loops not completed (paid, but not in the checkpoint)."""
        done = set(completed_loops)
        return sum(self.meter.cost(a.usage) for loop, a in self._held.values() if loop not in done)

    async def aclose(self) -> None:
        await self.inner.aclose()


def read_hold(path: Path) -> dict[str, tuple[int, ModelAnswer]]:
    """Answers kept by earlier invocations, by request key, with their loop.

    A torn last line (a crash mid-write) is skipped."""
    out: dict[str, tuple[int, ModelAnswer]] = {}
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
            answer = ModelAnswer(r["text"], r["stop_reason"], dict(r["usage"]))
            out[r["key"]] = (int(r["loop"]), answer)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return out


def budget_backend(
    backend: Backend,
    config: ReviewConfig,
    *,
    budget_usd: float | None,
    out_dir: Path,
    completed_loops: Sequence[int],
    spent_usage: Mapping[str, int],
) -> tuple[CostMeter | None, Backend]:
    """The run's backend under `budget_usd` (unchanged, and no meter, without a budget).

    Spent money is the checkpoint's usage (completed loops) plus answers kept from an
    earlier invocation for loops not completed yet.
    """
    if budget_usd is None:
        return None, backend
    meter = CostMeter(config, budget_usd=budget_usd, prefix_cached=bool(completed_loops))
    wrapped = BudgetedBackend(
        backend, meter, config.max_tokens_reviewer, Path(out_dir) / HOLD_NAME, config.model
    )
    meter.spent = meter.cost(spent_usage) + wrapped.held_cost(completed_loops)
    return meter, wrapped


def check_budget(meter: CostMeter | None, results: Sequence[Mapping[str, Any]]) -> None:
    """Raise BudgetExceeded if the budget refused a call of this batch.

    The loop is then left open: nothing of it is synthesised or checkpointed, and its
    answers so far wait in the hold file for the resumed run.
    """
    if meter is None or not meter.refusals:
        return
    if any(r.get("status") == "failed" for r in results):
        raise meter.refusals[0]
