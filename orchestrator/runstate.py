"""A distributed run's state in Redis, so any process can continue or inspect it.

The orchestrator may exit right after enqueueing; workers, `moneta-review status` and
`--resume` all read the run from here. Keys (P = key prefix, default "moneta"):

- `P:runs` — sorted set of run ids by creation time;
- `P:run:<run>:meta` — hash: the run's parameters (blob hashes, output directory,
  model backend, loops, `budget_usd`) and its status (`running`, `completed`, `failed`,
  `stopped`: the budget refused a call, see `orchestrator.run_budget`) and error;
- `P:run:<run>:state` — hash `L<n>:<role>` → state of that job as its worker last
  recorded it (`started`, `finished`), plus `L<n>:synth`;
- `P:run:<run>:attempts` — hash `L<n>:<role>` → number of times a worker started it;
- `P:run:<run>:result` — hash `L<n>:<role>` → the ReviewerResult JSON. A re-executed
  job overwrites its own field, so its findings are replaced, never duplicated;
- `P:run:<run>:synthesis` — hash `L<n>` → the loop's synthesis markdown (the next
  loop's handoff); `P:run:<run>:ledger` — hash `L<n>` → the closure ledger after loop
  n (the input of loop n+1's synthesis); both written together when a loop closes;
- `P:run:<run>:warm` — set once the first reviewer of loop n has its answer started
  (field `L<n>`), so the prompt prefix is cached before the loop's other reviewers
  call the model;
- `P:run:<run>:enqueued` — hash `L<n>` → time the loop's jobs were enqueued; claimed
  with HSETNX so a loop is enqueued once however many processes try.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

import redis

DEFAULT_PREFIX = "moneta"
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}\Z")
RUN_STATUSES = ("running", "completed", "failed", "stopped")


def check_run_id(run_id: object) -> str:
    """Run ids become part of RQ job ids, which allow only letters, digits, `_` and `-`;
    `_` is reserved as the separator, so a run id is letters, digits and `-`."""
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise ValueError(
            "run_id: must be 1-64 letters, digits or '-' starting with a letter or digit, "
            f"got {run_id!r}"
        )
    return run_id


def logical_job_id(run_id: str, loop: int, role: str) -> str:
    """The job's name as users see it: `<run>:L<n>:<role>`."""
    return f"{run_id}:L{loop}:{role}"


def rq_job_id(run_id: str, loop: int, role: str) -> str:
    """The RQ job id for `<run>:L<n>:<role>`.

    RQ 3 accepts only `[A-Za-z0-9_-]` in job ids (it uses `:` itself to join job and
    execution ids), so `:` is written as `_`; run ids never contain `_`, which keeps the
    mapping one-to-one.
    """
    return logical_job_id(run_id, loop, role).replace(":", "_")


def parse_rq_job_id(job_id: str) -> tuple[str, int, str]:
    """(run, loop, role) of an RQ job id made by `rq_job_id`."""
    m = re.match(r"^([A-Za-z0-9-]+)_L(\d+)_([a-z]+)\Z", job_id)
    if m is None:
        raise ValueError(f"job_id: not a review job id: {job_id!r}")
    return m.group(1), int(m.group(2)), m.group(3)


def field(loop: int, role: str) -> str:
    return f"L{loop}:{role}"


@dataclass(frozen=True, slots=True)
class RunMeta:
    """What every job of a run needs besides its own (loop, role)."""

    run_id: str
    out_dir: str
    repo: str
    config_blob: str
    constitution_blob: str
    constitution_hash: str
    constitution_path: str
    snapshot_blob: str
    paths_blob: str
    backend: str
    loops: list[int]
    status: str = "running"
    error: str = ""
    created_at: float = 0.0
    finished_at: float = 0.0
    budget_usd: float | None = None  # USD limit of the run's model calls (run_budget.py)

    def to_hash(self) -> dict[str, str]:
        return {
            "run_id": self.run_id,
            "out_dir": self.out_dir,
            "repo": self.repo,
            "config_blob": self.config_blob,
            "constitution_blob": self.constitution_blob,
            "constitution_hash": self.constitution_hash,
            "constitution_path": self.constitution_path,
            "snapshot_blob": self.snapshot_blob,
            "paths_blob": self.paths_blob,
            "backend": self.backend,
            "loops": json.dumps(self.loops),
            "status": self.status,
            "error": self.error,
            "created_at": repr(self.created_at),
            "finished_at": repr(self.finished_at),
            "budget_usd": "" if self.budget_usd is None else repr(float(self.budget_usd)),
        }

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> RunMeta:
        h = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            run_id=h["run_id"],
            out_dir=h["out_dir"],
            repo=h["repo"],
            config_blob=h["config_blob"],
            constitution_blob=h["constitution_blob"],
            constitution_hash=h["constitution_hash"],
            constitution_path=h["constitution_path"],
            snapshot_blob=h["snapshot_blob"],
            paths_blob=h["paths_blob"],
            backend=h["backend"],
            loops=json.loads(h["loops"]),
            status=h.get("status", "running"),
            error=h.get("error", ""),
            created_at=float(h.get("created_at") or 0.0),
            finished_at=float(h.get("finished_at") or 0.0),
            budget_usd=float(h["budget_usd"]) if h.get("budget_usd") else None,
        )


class RunNotFound(LookupError):
    """No run with this id in Redis."""


class RunState:
    """Read and write one run's keys."""

    def __init__(self, conn: redis.Redis, run_id: str, prefix: str = DEFAULT_PREFIX) -> None:
        self.conn = conn
        self.run_id = check_run_id(run_id)
        self.prefix = prefix
        base = f"{prefix}:run:{run_id}"
        self.meta_key = f"{base}:meta"
        self.state_key = f"{base}:state"
        self.attempts_key = f"{base}:attempts"
        self.result_key = f"{base}:result"
        self.synthesis_key = f"{base}:synthesis"
        self.enqueued_key = f"{base}:enqueued"
        self.ledger_key = f"{base}:ledger"
        self.warm_key = f"{base}:warm"
        self.runs_key = f"{prefix}:runs"

    # --- meta ---------------------------------------------------------------------------

    def create(self, meta: RunMeta) -> bool:
        """Record a new run; False (and nothing written) if the run id already exists."""
        if meta.run_id != self.run_id:
            raise ValueError(f"meta: run_id {meta.run_id!r} is not this run ({self.run_id!r})")
        if not self.conn.hsetnx(self.meta_key, "run_id", meta.run_id):
            return False
        with self.conn.pipeline() as pipe:
            pipe.hset(self.meta_key, mapping=meta.to_hash())
            pipe.zadd(self.runs_key, {self.run_id: meta.created_at})
            pipe.execute()
        return True

    def exists(self) -> bool:
        return bool(self.conn.exists(self.meta_key))

    def meta(self) -> RunMeta:
        raw = self.conn.hgetall(self.meta_key)
        if not raw or b"config_blob" not in raw:
            raise RunNotFound(f"run {self.run_id!r}: not found in Redis (key {self.meta_key})")
        return RunMeta.from_hash(raw)

    def set_status(self, status: str, error: str = "") -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"status: must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
        mapping = {"status": status, "error": error}
        if status != "running":
            mapping["finished_at"] = repr(time.time())
        self.conn.hset(self.meta_key, mapping=mapping)

    # --- per job ------------------------------------------------------------------------

    def mark_started(self, loop: int, role: str) -> int:
        """Record that a worker started (loop, role); returns the attempt number."""
        with self.conn.pipeline() as pipe:
            pipe.hset(self.state_key, field(loop, role), "started")
            pipe.hincrby(self.attempts_key, field(loop, role), 1)
            _, attempts = pipe.execute()
        return int(attempts)

    def store_result(self, loop: int, role: str, result: dict[str, Any]) -> None:
        """Store (replacing any earlier) result of (loop, role) and mark it finished."""
        with self.conn.pipeline() as pipe:  # MULTI: result and state land together
            # Key order kept: raw findings are written out as the model sent them.
            pipe.hset(self.result_key, field(loop, role), json.dumps(result))
            pipe.hset(self.state_key, field(loop, role), "finished")
            pipe.execute()

    def result(self, loop: int, role: str) -> dict[str, Any] | None:
        raw = self.conn.hget(self.result_key, field(loop, role))
        return None if raw is None else json.loads(raw)

    def results(self) -> dict[str, dict[str, Any]]:
        return {k.decode(): json.loads(v) for k, v in self.conn.hgetall(self.result_key).items()}

    def states(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.conn.hgetall(self.state_key).items()}

    def attempts(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.conn.hgetall(self.attempts_key).items()}

    def mark_synth(self, loop: int, state: str) -> None:
        self.conn.hset(self.state_key, field(loop, "synth"), state)

    # --- per loop -----------------------------------------------------------------------

    def claim_enqueue(self, loop: int) -> bool:
        """True for exactly one caller per loop: the one that must enqueue it."""
        return bool(self.conn.hsetnx(self.enqueued_key, f"L{loop}", repr(time.time())))

    def release_enqueue(self, loop: int) -> None:
        """Undo a claim whose enqueue failed, so a later attempt can enqueue the loop."""
        self.conn.hdel(self.enqueued_key, f"L{loop}")

    def enqueued_loops(self) -> list[int]:
        return sorted(int(k.decode()[1:]) for k in self.conn.hkeys(self.enqueued_key))

    def store_loop_close(self, loop: int, markdown: str, ledger: dict[str, Any]) -> None:
        """Record loop `loop` as closed: its handoff markdown and the ledger after it."""
        with self.conn.pipeline() as pipe:
            pipe.hset(self.ledger_key, f"L{loop}", json.dumps(ledger, sort_keys=True))
            pipe.hset(self.synthesis_key, f"L{loop}", markdown.encode("utf-8"))
            pipe.hset(self.state_key, field(loop, "synth"), "finished")
            pipe.execute()

    def ledger(self, loop: int) -> dict[str, Any] | None:
        """The closure ledger as it stood after loop `loop` closed (None if it has not)."""
        raw = self.conn.hget(self.ledger_key, f"L{loop}")
        return None if raw is None else json.loads(raw)

    def mark_warm(self, loop: int, waiters: int) -> None:
        """Mark loop `loop` warm and wake up to `waiters` reviewers blocked on it."""
        wake = f"{self.warm_key}:L{loop}"
        with self.conn.pipeline() as pipe:
            pipe.hset(self.warm_key, f"L{loop}", "1")
            pipe.delete(wake)
            pipe.rpush(wake, *(["1"] * max(1, waiters)))
            pipe.expire(wake, 3600)
            pipe.execute()

    def is_warm(self, loop: int) -> bool:
        return bool(self.conn.hexists(self.warm_key, f"L{loop}"))

    def wait_warm(self, loop: int, limit: float) -> bool:
        """Block until loop `loop` is warm (True) or `limit` seconds passed (False).

        Blocks on a list the marker pushes to, so a waiter wakes at once without
        polling; the hash is checked between short blocks in case tokens ran out.
        """
        deadline = time.monotonic() + limit
        wake = f"{self.warm_key}:L{loop}"
        while not self.is_warm(loop):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.conn.blpop([wake], timeout=min(left, 0.25))
        return True

    def synthesis(self, loop: int) -> str | None:
        raw = self.conn.hget(self.synthesis_key, f"L{loop}")
        return None if raw is None else raw.decode("utf-8")

    def closed_loops(self) -> list[int]:
        return sorted(int(k.decode()[1:]) for k in self.conn.hkeys(self.synthesis_key))

    def keys(self) -> list[str]:
        """Every key this run owns in Redis (blobs are shared, so not listed)."""
        return [
            self.meta_key,
            self.state_key,
            self.attempts_key,
            self.result_key,
            self.synthesis_key,
            self.ledger_key,
            self.enqueued_key,
            self.warm_key,
            f"{self.prefix}:run:{self.run_id}:budget",
            f"{self.prefix}:run:{self.run_id}:reserved",
        ]


def list_runs(conn: redis.Redis, prefix: str = DEFAULT_PREFIX) -> list[str]:
    return [r.decode() for r in conn.zrange(f"{prefix}:runs", 0, -1)]
