"""The budget of a distributed run (`run --redis-url ... --budget-usd X`), kept in Redis.

Reviewer jobs on any number of workers share one budget, so the check before a call
and the bookkeeping after it are each one Lua script (atomic in Redis): two workers
can never both see room for a call that only one of them fits in. Amounts are integer
nano-USD, so concurrent additions are exact.

The rule is the embedded one (`orchestrator.cost.CostMeter`): before each attempt a
call's upper-bound cost is reserved — its prompt at the cache-write rate until a settled
call has shown the prompt cache in use, at the read rate after; its full output budget
at the output rate — and refused if spent + reserved + estimate would pass the budget.
After the attempt the reservation is replaced by the cost of the usage it reported.
A refusal marks the run `stopped` (its error names spent, budget and the refused
estimate) in the same script, so no later call of the run starts; the refused job
stores no result, and the run's synth job does not close the loop.

Keys (P = key prefix): the limit is the run meta's `budget_usd` field (`RunMeta`);
`P:run:<run>:budget` — hash `spent` (nano-USD of answered attempts), `cached` (1 once
an answer read or wrote the prompt cache), `refused` (JSON of the last refusal);
`P:run:<run>:reserved` — hash `L<n>:<role>` → `<token>|<nano-USD>` held by that slot's
attempt in flight. Keyed by slot, so a job re-executed after its worker died replaces
the dead attempt's hold instead of leaking it.

`reopen` is the resume side: `run --resume RUN --budget-usd Y` sets the new limit and
re-enqueues only the open loop's jobs without a stored result, so no answered call is
paid for twice.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.config import ReviewConfig
from orchestrator.cost import CostMeter
from orchestrator.runstate import RunMeta, RunState, field, rq_job_id
from workers.backends import Backend, ModelAnswer, OnStarted
from workers.prompts import ReviewerPrompt
from workers.retry import ModelCallError

if TYPE_CHECKING:  # the status view imports this module; it must not load Redis or RQ
    import redis
    from rq.job import Job

NANO = 1_000_000_000
STOPPED = "stopped"
SETTLE_WAIT = 60.0
"""Longest `reopen` waits for a started job of the open loop to reserve, store or end."""

# KEYS: meta, budget, reserved. ARGV: slot, token, estimate with the prefix at the
# write rate, estimate with it at the read rate (nano-USD), what, now.
_RESERVE = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then
  return {'closed', 'run ' .. (status or 'missing')}
end
redis.call('HDEL', KEYS[3], ARGV[1])
local need = tonumber(ARGV[3])
if redis.call('HGET', KEYS[2], 'cached') == '1' then need = tonumber(ARGV[4]) end
local raw = redis.call('HGET', KEYS[1], 'budget_usd')
if raw and raw ~= '' then
  local limit = math.floor(tonumber(raw) * 1e9 + 0.5)
  local spent = tonumber(redis.call('HGET', KEYS[2], 'spent') or '0')
  local held = 0
  for _, v in ipairs(redis.call('HVALS', KEYS[3])) do
    held = held + tonumber(string.match(v, '|(%d+)$'))
  end
  if spent + held + need > limit then
    local msg = string.format(
      'budget $%.4f reached: $%.4f spent and $%.4f held by calls in flight, the next '
      .. 'call (%s) is estimated at up to $%.4f; answered calls are kept: raise it with '
      .. '`moneta-review run --resume %s --budget-usd <USD>` to continue',
      limit / 1e9, spent / 1e9, held / 1e9, ARGV[5], need / 1e9, ARGV[7])
    redis.call('HSET', KEYS[1], 'status', 'stopped', 'error', msg, 'finished_at', ARGV[6])
    redis.call('HSET', KEYS[2], 'refused', cjson.encode({
      slot = ARGV[1], spent = spent, held = held, needed = need, budget = limit}))
    return {'refused', msg}
  end
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2] .. '|' .. string.format('%d', need))
return {'ok', ''}
"""

# KEYS: budget, reserved. ARGV: slot, token, actual cost (nano-USD), cache used (0/1).
_SETTLE = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held and string.sub(held, 1, string.len(ARGV[2]) + 1) == ARGV[2] .. '|' then
  redis.call('HDEL', KEYS[2], ARGV[1])
end
if tonumber(ARGV[3]) > 0 then redis.call('HINCRBY', KEYS[1], 'spent', ARGV[3]) end
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'cached', '1') end
return redis.call('HGET', KEYS[1], 'spent')
"""


def nano(usd: float) -> int:
    """USD as integer nano-USD; estimates round up so a reservation never undercounts."""
    return math.ceil(usd * NANO - 1e-6)


def check_budget_arg(config: ReviewConfig, budget_usd: float | None) -> None:
    """The embedded run's checks of a budget: a finite number >= 0, a price for the model."""
    if budget_usd is None:
        return
    CostMeter(config, budget_usd=budget_usd)  # type, sign (NaN included) and price
    if math.isinf(budget_usd):
        raise ValueError(f"budget_usd: must be a finite number, got {budget_usd}")


class BudgetStop(ModelCallError):
    """The run's budget (or its stopped state) refused a call: it was not made."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class RunBudget:
    """One run's budget keys and the two scripts that change them."""

    def __init__(self, conn: redis.Redis, run_id: str, prefix: str) -> None:
        self.conn = conn
        self.state = RunState(conn, run_id, prefix)
        base = f"{prefix}:run:{run_id}"
        self.budget_key = f"{base}:budget"
        self.reserved_key = f"{base}:reserved"
        self._reserve = conn.register_script(_RESERVE)
        self._settle = conn.register_script(_SETTLE)

    def reserve(self, slot: str, write_usd: float, read_usd: float, what: str) -> str:
        """Hold a call's estimate for `slot`; its token for `settle`. BudgetStop if refused.

        `write_usd` prices the shared prompt prefix at the cache-write rate, `read_usd`
        at the read rate; the script picks by whether the cache is known to be in use.
        """
        token = uuid.uuid4().hex
        verdict, message = self._reserve(
            keys=[self.state.meta_key, self.budget_key, self.reserved_key],
            args=[
                slot,
                token,
                nano(write_usd),
                nano(read_usd),
                what,
                repr(time.time()),
                self.state.run_id,
            ],
        )
        if verdict != b"ok":
            raise BudgetStop(message.decode("utf-8"))
        return token

    def settle(self, slot: str, token: str, usd: float, cache_used: bool) -> None:
        """Release `slot`'s hold (if still its own) and add what the attempt cost."""
        self._settle(
            keys=[self.budget_key, self.reserved_key],
            args=[slot, token, round(usd * NANO), "1" if cache_used else "0"],
        )

    def figures(self, budget_usd: float | None) -> dict[str, Any]:
        """Limit, spent and reserved USD, and the last refusal, for `status`."""
        raw = self.conn.hgetall(self.budget_key)
        held = self.conn.hvals(self.reserved_key)
        refused = raw.get(b"refused")
        return {
            "budget_usd": budget_usd,
            "spent_usd": int(raw.get(b"spent", 0)) / NANO,
            "reserved_usd": sum(int(v.rsplit(b"|", 1)[1]) for v in held) / NANO,
            "refused": None if refused is None else json.loads(refused),
        }

    def init_spent(self, results: Mapping[str, Mapping[str, Any]], meter: CostMeter) -> None:
        """Start `spent` from the stored results, for a run given its budget on resume."""
        usd = sum(meter.cost(r.get("usage") or {}) for r in results.values())
        self.conn.hsetnx(self.budget_key, "spent", round(usd * NANO))


class _BudgetedCalls:
    """A reviewer job's backend: every attempt reserved before, settled after."""

    def __init__(self, inner: Backend, guard: JobBudget) -> None:
        self.inner = inner
        self.guard = guard
        self.name = getattr(inner, "name", type(inner).__name__)

    async def complete(self, prompt: ReviewerPrompt, on_started: OnStarted | None) -> ModelAnswer:
        g = self.guard
        g.meter.prefix_cached = False
        write = g.meter.estimate(prompt, g.max_tokens)
        g.meter.prefix_cached = True
        read = g.meter.estimate(prompt, g.max_tokens)
        try:
            token = g.budget.reserve(g.slot, write, read, f"loop {prompt.loop}, {prompt.role}")
        except BudgetStop as exc:
            g.stopped = str(exc)
            raise
        answer: ModelAnswer | None = None
        try:
            answer = await self.inner.complete(prompt, on_started)
        finally:
            usage = answer.usage if answer is not None else {}
            cached = bool(usage.get("cache_read", 0) or usage.get("cache_write", 0))
            g.budget.settle(g.slot, token, g.meter.cost(usage) if usage else 0.0, cached)
        return answer

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass(slots=True)
class JobBudget:
    """The budget as one reviewer job sees it; `stopped` is set if a call was refused."""

    budget: RunBudget
    meter: CostMeter
    max_tokens: int
    slot: str
    stopped: str = ""

    def wrap(self, backend: Backend) -> Backend:
        return _BudgetedCalls(backend, self)

    def reply(self, run_id: str, loop: int, role: str, attempt: int) -> dict[str, Any]:
        """The job's return value when it made no call: nothing is stored for the slot."""
        return {
            "run": run_id,
            "loop": loop,
            "role": role,
            "attempt": attempt,
            "skipped": self.stopped,
        }


def job_budget(
    conn: redis.Redis, meta: RunMeta, config: ReviewConfig, loop: int, role: str, prefix: str
) -> JobBudget | None:
    """The budget guard of job (loop, role), or None for a run without a budget."""
    if meta.budget_usd is None:
        return None
    return JobBudget(
        RunBudget(conn, meta.run_id, prefix),
        CostMeter(config, budget_usd=None),
        config.max_tokens_reviewer,
        field(loop, role),
    )


def budget_status(conn: redis.Redis, meta: RunMeta, prefix: str) -> dict[str, Any] | None:
    """`run_status`'s budget figures (None for a run without a budget)."""
    if meta.budget_usd is None:
        return None
    return RunBudget(conn, meta.run_id, prefix).figures(meta.budget_usd)


def format_budget(figures: Mapping[str, Any] | None) -> str:
    """One status line: spent, in flight and the limit."""
    if figures is None:
        return "budget: none"
    return (
        f"budget: ${figures['spent_usd']:.4f} spent, ${figures['reserved_usd']:.4f} in flight, "
        f"of ${figures['budget_usd']:.4f}"
    )


def reopen(
    conn: redis.Redis,
    meta: RunMeta,
    config: ReviewConfig,
    prefix: str,
    budget_usd: float | None,
    *,
    settle_wait: float = SETTLE_WAIT,
) -> RunMeta:
    """Before `resume_run` enqueues: set a new budget, and set a stopped run running.

    Of the open loop's jobs, those with a stored result stay, and so do those with a
    call in flight (their result is on its way); every other one — refused, skipped
    while the run was stopped, failed, or still queued or deferred behind those — is
    deleted from RQ, so `resume_run` enqueues it again after the run is running. A job
    that had started is given up to `settle_wait` s to reserve, store or end first.
    If the loop's first reviewer has no result, the loop is no longer marked warm.
    """
    from rq.job import Job, JobStatus
    from rq.serializers import JSONSerializer

    state = RunState(conn, meta.run_id, prefix)
    budget = RunBudget(conn, meta.run_id, prefix)
    if budget_usd is not None:
        check_budget_arg(config, budget_usd)
        budget.init_spent(state.results(), CostMeter(config, budget_usd=None))
        conn.hset(state.meta_key, "budget_usd", repr(float(budget_usd)))
    if meta.status != STOPPED:
        return state.meta()
    closed = set(state.closed_loops())
    open_loops = [n for n in meta.loops if n not in closed]
    if not open_loops:  # stopped after its last loop closed: only the final is left
        state.set_status("running")
        return state.meta()
    loop = open_loops[0]
    roles = [r.prefix for r in config.roles] + ["synth"]
    ids = {role: rq_job_id(meta.run_id, loop, role) for role in roles}
    deadline = time.monotonic() + settle_wait

    def settled(role: str, job: Job | None) -> bool:
        """True once `role`'s job needs no re-enqueue or can be deleted."""
        if job is None:
            return True
        if conn.hexists(state.result_key, field(loop, role)):
            return True
        if conn.hexists(budget.reserved_key, field(loop, role)):
            return True
        return job.get_status(refresh=True) != JobStatus.STARTED

    fetched = Job.fetch_many(list(ids.values()), connection=conn, serializer=JSONSerializer)
    jobs = dict(zip(roles, fetched, strict=True))
    while not all(settled(r, j) for r, j in jobs.items()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for role, job in jobs.items():
        if job is None or conn.hexists(state.result_key, field(loop, role)):
            continue
        if conn.hexists(budget.reserved_key, field(loop, role)):
            continue
        if job.get_status(refresh=True) == JobStatus.STARTED:
            continue  # still running after the wait: left to finish (or be abandoned)
        job.delete(remove_from_queue=True, delete_dependents=False)
    leader = config.role_reviewers[0].prefix
    if not any(
        conn.hexists(k, field(loop, leader)) for k in (state.result_key, budget.reserved_key)
    ):
        # A refused leader marked the loop warm only to release the others: no answer
        # cached its prompt, so the re-run reviewers must wait for it again.
        conn.hdel(state.warm_key, f"L{loop}")
        conn.delete(f"{state.warm_key}:L{loop}")
    state.set_status("running")
    return state.meta()
