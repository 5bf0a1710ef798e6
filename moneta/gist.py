"""Gists: shorter restatements of consolidated memories, authored as USD variants.

The substrate never calls a model. After a sleep pass has consolidated memories
into the OpenUSD cold tier, the handle's ``GistCoordinator`` records their ids in
a small durable ledger (``gist.sqlite`` in the store directory) and hands at most
``gist_max_pending`` of them at a time to a ``GistSink`` (``moneta.protocols``),
which must return at once; the model call happens elsewhere (``workers.gist``).
Ids beyond the bound stay ``deferred`` in the ledger — on disk, not in memory —
and are handed over by a later pass.

A job's outcome comes back through ``deliver(store_path, ...)``. It is written to
the ledger, then authored on the memory's prim:

- a variant set ``fidelity`` with ``detail`` (the original payload) and ``gist``
  (the summary), selection ``gist``; the prim's direct ``payload`` opinions lose
  their value (a local opinion would beat any variant), so the composed stage —
  and therefore ``query`` and ``moneta inspect`` — serve the selected variant;
- as an ``over`` in the rolling daily layer of the authoring day (a layer holds
  one spec per path, so when the memory's ``def`` lives in that very layer the
  variant set goes on the ``def``); a re-run edits the same spec, so there is never
  a second variant set, variant or prim;
- a failed, timed-out or malformed answer authors only ``detail``, leaves
  ``detail`` selected (an earlier good gist is kept), and records the reason in
  the prim's customData and in the ledger.

The ledger is SQLite because an RQ worker in another process delivers into it.
If the store is open in this process, delivery authors through the live handle's
cold tier; if no process has it open, through a target opened under the store
lock; otherwise the answer waits in the ledger and the owning handle authors it
at its next sleep pass.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from pxr import Sdf

from moneta.errors import AuthoringError, MonetaError, MonetaResourceLockedError
from moneta.usd_layers import DailyLayer, prim_link, prim_name, stack_order
from moneta.usd_target import UsdTarget, _new_layer, _Stack

log = logging.getLogger(__name__)

FIDELITY = "fidelity"
DETAIL = "detail"
GIST = "gist"
LEDGER_FILE = "gist.sqlite"
APPLY_LOCK_FILE = "gist.lock"
STATES = ("deferred", "pending", "answered", "gisted", "failed", "skipped")
_PAYLOAD = "payload"
_STATUS_KEY = "monetaGistStatus"
_REASON_KEY = "monetaGistReason"
_AT_KEY = "monetaGistAt"
MAX_REASON_CHARS = 600


class GistError(MonetaError):
    """A gist cannot be authored (no such prim, no detail text, unsupported target)."""


@dataclass(frozen=True, slots=True)
class GistRequest:
    """What a sink receives per memory: the id and the detail text to summarise."""

    entity_id: UUID
    detail: str


@dataclass(frozen=True, slots=True)
class Fidelity:
    """A prim's ``fidelity`` variant set as the layers hold it (None: not authored)."""

    selection: str | None
    detail: str | None
    gist: str | None
    status: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class GistRow:
    """One ledger row."""

    entity_id: UUID
    state: str
    reason: str | None
    summary: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class PassHandoff:
    """What one sleep pass did with gists."""

    applied: int = 0
    enqueued: int = 0
    deferred: int = 0
    requeued: int = 0


# --- reading variants (Sdf only, used by the cold tier's reads and by inspect) ----------


def _variant_text(spec: Sdf.PrimSpec, variant: str) -> str | None:
    vset = spec.variantSets.get(FIDELITY)
    if vset is None:
        return None
    found = vset.variants.get(variant)
    if found is None:
        return None
    attr = found.primSpec.attributes.get(_PAYLOAD)
    if attr is None or not attr.HasDefaultValue():
        return None
    return str(attr.default)


def fidelity_of(specs: Sequence[Sdf.PrimSpec]) -> Fidelity | None:
    """The variant set over a prim's specs, strongest first (None if none has one)."""
    if not any(FIDELITY in spec.variantSets for spec in specs):
        return None
    selection = next(
        (
            str(spec.variantSelections[FIDELITY])
            for spec in specs
            if FIDELITY in spec.variantSelections
        ),
        None,
    )
    detail = next((t for s in specs if (t := _variant_text(s, DETAIL)) is not None), None)
    gist = next((t for s in specs if (t := _variant_text(s, GIST)) is not None), None)
    data = next((dict(s.customData) for s in specs if _STATUS_KEY in s.customData), {})
    return Fidelity(selection, detail, gist, data.get(_STATUS_KEY), data.get(_REASON_KEY))


def selected_payload(specs: Sequence[Sdf.PrimSpec]) -> str | None:
    """The payload the selected ``fidelity`` variant holds (for a prim with no direct one)."""
    view = fidelity_of(specs)
    if view is None or view.selection is None:
        return None
    return view.gist if view.selection == GIST else view.detail


def _direct_payload(specs: Iterable[Sdf.PrimSpec | None]) -> str | None:
    for spec in specs:
        if spec is None:
            continue
        attr = spec.attributes.get(_PAYLOAD)
        if attr is not None and attr.HasDefaultValue():
            return str(attr.default)
    return None


def _specs(stack: _Stack, entity_id: UUID) -> tuple[Sdf.PrimSpec | None, Sdf.PrimSpec | None]:
    """The memory's protected spec and its spec in its home daily layer."""
    path = Sdf.Path(prim_link(entity_id))
    protected = stack.protected.GetPrimAtPath(path) if entity_id in stack.protected_ids else None
    home = stack.home.get(entity_id)
    home_spec = stack.daily[home].GetPrimAtPath(path) if home in stack.daily else None
    return protected, home_spec


def _gist_spec(stack: _Stack, entity_id: UUID) -> Sdf.PrimSpec | None:
    day = stack.gists.get(entity_id)
    if day is None or day not in stack.daily:
        return None
    return stack.daily[day].GetPrimAtPath(Sdf.Path(prim_link(entity_id)))


def _detail_of(stack: _Stack, entity_id: UUID) -> str | None:
    """The text a gist must restate: the direct payload, unless it is the current gist.

    A hydrated gisted memory comes back with its gist as payload; consolidated again,
    that text is a direct opinion once more. It is not new detail, so the existing
    ``detail`` variant stays the source.
    """
    protected, home = _specs(stack, entity_id)
    specs = [s for s in (protected, _gist_spec(stack, entity_id), home) if s is not None]
    view = fidelity_of(specs)
    direct = _direct_payload((protected, home))
    if direct is not None and (view is None or view.detail is None or direct != view.gist):
        return direct
    return view.detail if view is not None else None


def detail_texts(target: UsdTarget, entity_ids: Iterable[UUID]) -> dict[UUID, str]:
    """Detail text of each memory the cold tier holds (missing ones are absent)."""
    found: dict[UUID, str] = {}
    with target._lock:
        stack = target._open_stack()
        for entity_id in entity_ids:
            text = _detail_of(stack, entity_id)
            if text is not None:
                found[entity_id] = text
    return found


def is_protected(target: UsdTarget, entity_id: UUID) -> bool:
    """Whether the memory is pinned in the cold tier (an opinion in the protected layer)."""
    with target._lock:
        return entity_id in target._open_stack().protected_ids


# --- authoring --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """A job's result for one memory: a summary, or the reason there is none."""

    entity_id: UUID
    summary: str | None
    reason: str | None = None


def _current_day(stack: _Stack, when: float, cap: int) -> DailyLayer:
    """The rolling layer new prims of `when`'s UTC day go to (rotating when full)."""
    first = DailyLayer.for_time(when)
    current = max((d for d in stack.daily if d.day == first.day), default=first)
    layer = stack.daily.get(current)
    while layer is not None and len(layer.rootPrims) >= cap:
        current = current.next()
        layer = stack.daily.get(current)
    return current


def _set_text(owner: Sdf.VariantSetSpec, variant: str, text: str) -> None:
    found = owner.variants.get(variant) or Sdf.VariantSpec(owner, variant)
    attr = found.primSpec.attributes.get(_PAYLOAD)
    if attr is None:
        attr = Sdf.AttributeSpec(found.primSpec, _PAYLOAD, Sdf.ValueTypeNames.String)
    attr.default = text


def _author_one(stack: _Stack, outcome: Outcome, day: DailyLayer, when: float) -> str:
    """Author one outcome on the open layers (inside the ChangeBlock); return the state."""
    entity_id = outcome.entity_id
    protected, home_spec = _specs(stack, entity_id)
    if protected is None and home_spec is None:
        raise GistError(f"entity_id {entity_id} has no prim in the cold tier")
    detail = _detail_of(stack, entity_id)
    if detail is None:
        raise GistError(f"entity_id {entity_id} has no detail text to keep")
    existing = _gist_spec(stack, entity_id)
    if existing is not None:
        spec, spec_day = existing, stack.gists[entity_id]
    elif home_spec is not None and home_spec.specifier == Sdf.SpecifierOver:
        # A pinned memory's gist over, read back from disk as its only daily spec.
        spec, spec_day = home_spec, stack.home[entity_id]
    elif home_spec is not None and stack.home.get(entity_id) == day:
        spec, spec_day = home_spec, day
    else:
        layer = stack.daily[day]
        path = Sdf.Path.absoluteRootPath.AppendChild(prim_name(entity_id))
        spec = layer.GetPrimAtPath(path) or Sdf.PrimSpec(
            layer, prim_name(entity_id), Sdf.SpecifierOver
        )
        spec_day = day
    for direct in (protected, home_spec):
        attr = direct.attributes.get(_PAYLOAD) if direct is not None else None
        if attr is not None and attr.HasDefaultValue():
            attr.ClearDefaultValue()  # a local opinion would beat every variant
    vset = spec.variantSets.get(FIDELITY) or Sdf.VariantSetSpec(spec, FIDELITY)
    if FIDELITY not in spec.variantSetNameList.prependedItems:
        spec.variantSetNameList.Prepend(FIDELITY)
    _set_text(vset, DETAIL, detail)
    if outcome.summary is not None:
        _set_text(vset, GIST, outcome.summary)
        spec.variantSelections[FIDELITY] = GIST
        state, reason = "gisted", ""
    else:
        has_gist = vset.variants.get(GIST) is not None
        spec.variantSelections[FIDELITY] = GIST if has_gist else DETAIL
        state, reason = "failed", (outcome.reason or "no summary")[:MAX_REASON_CHARS]
    data = dict(spec.customData)
    data.update({_STATUS_KEY: state, _REASON_KEY: reason, _AT_KEY: float(when)})
    spec.customData = data
    if spec_day != stack.home.get(entity_id) or protected is not None:
        stack.gists[entity_id] = spec_day
    return state


def author_outcomes(
    target: UsdTarget, outcomes: Sequence[Outcome], *, authored_at: float
) -> dict[UUID, str]:
    """Author outcomes in one ChangeBlock and save; return each id's state.

    An id the cold tier does not hold (forgotten since) maps to ``"failed"`` with
    nothing authored; ``GistError`` for it is logged.
    """
    if not isinstance(target, UsdTarget):
        raise TypeError(f"target must be a UsdTarget, got {type(target).__name__}")
    if not math.isfinite(authored_at):
        raise ValueError(f"authored_at must be finite, got {authored_at}")
    if target._writer is not None:
        raise GistError(
            "gists are authored in-process: open the store with cold_writer_process=False"
        )
    states: dict[UUID, str] = {}
    if not outcomes:
        return states
    with target._write_mutex:
        stack = target._open_stack()
        day = _current_day(stack, authored_at, target.max_prims_per_layer)
        fresh = None if day in stack.daily else _new_layer(target.directory / day.filename)

        def edit(s: _Stack) -> None:
            if fresh is not None:
                s.daily[day] = fresh
                s.root.subLayerPaths = stack_order(set(s.daily))
            for outcome in outcomes:
                try:
                    states[outcome.entity_id] = _author_one(s, outcome, day, authored_at)
                except GistError as exc:
                    log.warning("gist not authored: %s", exc)
                    states[outcome.entity_id] = "failed"

        target._edit(edit, "gist", [day.filename])
        target._save_dirty(target._open_stack(), "gist")
    return states


def read_fidelity(target: UsdTarget, entity_id: UUID) -> Fidelity | None:
    """The memory's ``fidelity`` variant set as the cold tier holds it."""
    with target._lock:
        stack = target._open_stack()
        protected, home = _specs(stack, entity_id)
        specs = [s for s in (protected, _gist_spec(stack, entity_id), home) if s is not None]
        return fidelity_of(specs)


# --- the ledger -------------------------------------------------------------------------


_SCHEMA = """
CREATE TABLE IF NOT EXISTS gists (
    entity_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    reason TEXT,
    summary TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    queued_at REAL NOT NULL,
    dispatched_at REAL
)
"""


class GistLedger:
    """``gist.sqlite``: each memory's gist state, shared by the handle and workers.

    States: ``deferred`` (waiting for room under the pending bound), ``pending``
    (handed to a sink), ``answered`` (outcome received, not yet authored),
    ``gisted``, ``failed`` (detail selected, reason recorded), ``skipped``
    (protected, not asked for). WAL mode, so a worker process writes while the
    handle reads; one connection per ledger object, shared by its threads under a
    lock; ``synchronous=NORMAL``: a commit survives a crash of the process.
    """

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LEDGER_FILE
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA secure_delete=ON")  # a cleared summary leaves no bytes
        with self._db:
            self._db.execute(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def enqueue(self, entity_ids: Sequence[UUID], now: float) -> None:
        """Record ids as deferred; a settled row (re-consolidated memory) is queued again."""
        rows = [(e.hex, now) for e in entity_ids]
        with self._connect() as db, db:
            db.executemany(
                "INSERT INTO gists(entity_id, state, queued_at) VALUES (?, 'deferred', ?)"
                " ON CONFLICT(entity_id) DO UPDATE"
                " SET state='deferred', queued_at=excluded.queued_at"
                " WHERE state IN ('gisted', 'failed', 'skipped')",
                rows,
            )

    def requeue_stale(self, older_than: float) -> int:
        """Pending rows dispatched before `older_than` (a lost job) go back to deferred."""
        with self._connect() as db, db:
            cur = db.execute(
                "UPDATE gists SET state='deferred' WHERE state='pending' AND dispatched_at < ?",
                (older_than,),
            )
            return cur.rowcount

    def claim(self, max_pending: int, now: float) -> list[UUID]:
        """Move the oldest deferred rows to pending, up to `max_pending` pending in all."""
        with self._connect() as db, db:
            db.execute("BEGIN IMMEDIATE")
            (pending,) = db.execute("SELECT count(*) FROM gists WHERE state='pending'").fetchone()
            room = max(0, max_pending - pending)
            if not room:
                return []
            ids = [
                row[0]
                for row in db.execute(
                    "SELECT entity_id FROM gists WHERE state='deferred'"
                    " ORDER BY queued_at, rowid LIMIT ?",
                    (room,),
                )
            ]
            db.executemany(
                "UPDATE gists SET state='pending', dispatched_at=?, attempts=attempts+1"
                " WHERE entity_id=?",
                [(now, i) for i in ids],
            )
        return [UUID(hex=i) for i in ids]

    def set_state(
        self,
        entity_ids: Iterable[UUID],
        state: str,
        *,
        reason: str | None = None,
        summary: str | None = None,
        now: float = 0.0,
    ) -> None:
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        rows = [(state, reason, summary, now, e.hex) for e in entity_ids]
        with self._connect() as db, db:
            db.executemany(
                "INSERT INTO gists(state, reason, summary, queued_at, entity_id)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(entity_id) DO UPDATE SET"
                " state=excluded.state, reason=excluded.reason, summary=excluded.summary",
                rows,
            )

    def answered(self) -> list[Outcome]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT entity_id, summary, reason FROM gists WHERE state='answered' ORDER BY rowid"
            ).fetchall()
        return [Outcome(UUID(hex=i), s, r) for i, s, r in rows]

    def row(self, entity_id: UUID) -> GistRow | None:
        with self._connect() as db:
            found = db.execute(
                "SELECT state, reason, summary, attempts FROM gists WHERE entity_id=?",
                (entity_id.hex,),
            ).fetchone()
        if found is None:
            return None
        return GistRow(entity_id, found[0], found[1], found[2], int(found[3]))

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            rows = db.execute("SELECT state, count(*) FROM gists GROUP BY state").fetchall()
        counts = dict.fromkeys(STATES, 0)
        counts.update({state: int(n) for state, n in rows})
        return counts


# --- the handle's side ------------------------------------------------------------------

_live_lock = threading.Lock()
_live: dict[str, GistCoordinator] = {}


def _key(directory: str | Path) -> str:
    return str(Path(directory).expanduser().resolve())


class GistCoordinator:
    """A handle's gist bookkeeping: ledger, bound, hand-off to the sink, authoring.

    Registered per store directory while the handle is open, so a job finishing in
    this process authors through the handle's own cold tier (its layers, its locks).
    """

    def __init__(
        self,
        directory: Path,
        target: UsdTarget,
        sink: object,
        *,
        max_pending: int,
        include_protected: bool,
        pending_timeout: float,
        clock: object,
    ) -> None:
        self.directory = Path(directory)
        self.target = target
        self.sink = sink
        self.max_pending = max_pending
        self.include_protected = include_protected
        self.pending_timeout = pending_timeout
        self.clock = clock
        self.ledger = GistLedger(self.directory)
        self._apply_lock = threading.Lock()
        with _live_lock:
            _live[_key(self.directory)] = self

    def close(self) -> None:
        with _live_lock:
            if _live.get(_key(self.directory)) is self:
                del _live[_key(self.directory)]
        self.ledger.close()

    def after_pass(self, consolidated: Sequence[UUID], now: float) -> PassHandoff:
        """Record new ids, author answered outcomes, hand at most the bound to the sink.

        New ids reach the ledger first, so nothing a later step fails on is lost.
        """
        fresh = [
            e for e in consolidated if self.include_protected or not is_protected(self.target, e)
        ]
        if fresh:
            self.ledger.enqueue(fresh, now)
        try:
            applied = self.apply_answered(now)
        except (AuthoringError, GistError) as exc:
            log.warning("answered gists stay in the ledger for the next pass: %s", exc)
            applied = 0
        requeued = self.ledger.requeue_stale(now - self.pending_timeout)
        handed = self._dispatch(now)
        deferred = self.ledger.counts()["deferred"]
        return PassHandoff(applied=applied, enqueued=handed, deferred=deferred, requeued=requeued)

    def request(
        self, entity_ids: Sequence[UUID], *, include_protected: bool | None
    ) -> dict[UUID, str]:
        """Operator request: gist these memories again (or for the first time).

        Protected memories are gisted only when `include_protected` (default: the
        config's ``gist_protected``) is true; otherwise they are marked ``skipped``.
        Queued ids respect the pending bound like a pass's.
        """
        allow = self.include_protected if include_protected is None else include_protected
        if not isinstance(allow, bool):
            raise TypeError(f"include_protected must be a bool or None, got {allow!r}")
        now = float(self.clock())  # type: ignore[operator]
        states: dict[UUID, str] = {}
        queue: list[UUID] = []
        for entity_id in entity_ids:
            if not isinstance(entity_id, UUID):
                raise TypeError(f"entity_ids must hold UUIDs, got {type(entity_id).__name__}")
            if not allow and is_protected(self.target, entity_id):
                states[entity_id] = "skipped"
            else:
                queue.append(entity_id)
        skipped = [e for e, s in states.items() if s == "skipped"]
        if skipped:
            self.ledger.set_state(
                skipped, "skipped", reason="protected: gisted only on operator request", now=now
            )
        if queue:
            self.ledger.set_state(queue, "failed", reason="re-requested", now=now)
            self.ledger.enqueue(queue, now)
        self._dispatch(now)
        for entity_id in queue:
            row = self.ledger.row(entity_id)
            states[entity_id] = row.state if row else "deferred"
        return states

    def _dispatch(self, now: float) -> int:
        ids = self.ledger.claim(self.max_pending, now)
        if not ids:
            return 0
        texts = detail_texts(self.target, ids)
        missing = [e for e in ids if e not in texts]
        if missing:
            self.ledger.set_state(missing, "failed", reason="not in the cold tier", now=now)
        requests = [GistRequest(e, texts[e]) for e in ids if e in texts]
        if requests:
            self.sink.submit(str(self.directory), requests)  # type: ignore[attr-defined]
        return len(requests)

    def apply(self, outcomes: Sequence[Outcome], now: float | None = None) -> dict[UUID, str]:
        """Author outcomes through this handle's cold tier; settle their ledger rows."""
        when = float(self.clock()) if now is None else now  # type: ignore[operator]
        with self._apply_lock:
            try:
                states = author_outcomes(self.target, outcomes, authored_at=when)
            except AuthoringError as exc:  # e.g. a failed Save(): the next pass retries
                log.warning("gists stay answered in the ledger: %s", exc)
                for outcome in outcomes:
                    self.ledger.set_state(
                        [outcome.entity_id], "answered", reason=outcome.reason,
                        summary=outcome.summary, now=when,
                    )  # fmt: skip
                return dict.fromkeys((o.entity_id for o in outcomes), "answered")
            for outcome in outcomes:
                state = states.get(outcome.entity_id, "failed")
                reason = None if state == "gisted" else (outcome.reason or "not in the cold tier")
                # The text now lives in the prim only: ``forget`` must find nothing here.
                self.ledger.set_state([outcome.entity_id], state, reason=reason, now=when)
        return states

    def apply_answered(self, now: float | None = None) -> int:
        """Author what workers in other processes left ``answered`` in the ledger."""
        outcomes = self.ledger.answered()
        if outcomes:
            self.apply(outcomes, now)
        return len(outcomes)


def open_coordinator(
    config: object, directory: Path | None, target: object
) -> GistCoordinator | None:
    """The handle's coordinator, or None when gisting is off for this store.

    Gists need a sink (``gist_sink``), a file store and the USD cold tier; a sink on
    any other store is refused so a config that asks for gists never silently gets none.
    """
    sink = getattr(config, "gist_sink", None)
    if sink is None:
        return None
    if directory is None or not isinstance(target, UsdTarget):
        raise ValueError(
            "gist_sink needs a file store with cold_tier 'usd' (gists are USD variants)"
        )
    return GistCoordinator(
        directory,
        target,
        sink,
        max_pending=config.gist_max_pending,  # type: ignore[attr-defined]
        include_protected=config.gist_protected,  # type: ignore[attr-defined]
        pending_timeout=config.gist_pending_timeout_seconds,  # type: ignore[attr-defined]
        clock=config.clock,  # type: ignore[attr-defined]
    )


def coordinator_of(handle: object) -> GistCoordinator:
    """The coordinator of an open handle (ValueError if gisting is off)."""
    coordinator = getattr(handle, "_gist", None)
    if coordinator is None:
        raise ValueError("handle: gisting is off (set MonetaConfig.gist_sink)")
    return coordinator


def request(
    handle: object, entity_ids: Sequence[UUID], *, include_protected: bool | None = None
) -> dict[UUID, str]:
    """Operator entry point: queue gists for these memories (protected only if asked)."""
    return coordinator_of(handle).request(list(entity_ids), include_protected=include_protected)


def deliver(
    store_path: str | Path,
    entity_id: UUID,
    *,
    summary: str | None,
    reason: str | None = None,
    now: float | None = None,
) -> str:
    """Record a job's outcome for a memory and author it if this process can.

    Returns the ledger state: ``gisted`` / ``failed`` when authored now, or
    ``answered`` when another process holds the store (its next pass authors it).
    """
    if not isinstance(entity_id, UUID):
        raise TypeError(f"entity_id must be a UUID, got {type(entity_id).__name__}")
    if summary is None and not reason:
        raise ValueError("reason must say why there is no summary")
    if summary is not None and not isinstance(summary, str):
        raise TypeError(f"summary must be a str or None, got {type(summary).__name__}")
    directory = Path(store_path).expanduser().resolve()
    if not (directory / LEDGER_FILE).is_file():
        raise ValueError(f"store_path {directory} has no gist ledger ({LEDGER_FILE})")
    outcome = Outcome(entity_id, summary, reason)
    with _live_lock:
        live = _live.get(_key(directory))
    if live is not None:
        return live.apply([outcome], now).get(entity_id, "failed")
    ledger = GistLedger(directory)
    try:
        ledger.set_state([entity_id], "answered", reason=reason, summary=summary, now=now or 0.0)
        return _apply_unowned(directory, ledger, entity_id, now)
    finally:
        ledger.close()


def _apply_unowned(directory: Path, ledger: GistLedger, entity_id: UUID, now: float | None) -> str:
    """Author answered rows under the store lock when no process has the store open.

    Deliverers take ``gist.lock`` one at a time first, each authoring every row then
    answered, so an answer recorded while another deliverer held the store lock is
    authored by the next one instead of waiting for a handle that may never open.
    The flock is on a descriptor of our own, so it also orders threads of one process.
    """
    fd = os.open(directory / APPLY_LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return _apply_under_store_lock(directory, ledger, entity_id, now)
    finally:
        os.close(fd)  # releases the flock


def _apply_under_store_lock(
    directory: Path, ledger: GistLedger, entity_id: UUID, now: float | None
) -> str:
    import time

    from moneta.durability import StoreLock
    from moneta.store import COLD_DIR

    lock = StoreLock(directory)
    try:
        lock.acquire()
    except MonetaResourceLockedError:
        return "answered"
    try:
        target = UsdTarget(directory / COLD_DIR)
        try:
            outcomes = ledger.answered()
            when = time.time() if now is None else now
            try:
                states = author_outcomes(target, outcomes, authored_at=when)
            except AuthoringError as exc:
                log.warning(
                    "gist authoring in %s failed; answers stay in the ledger: %s", directory, exc
                )
                return "answered"
            for outcome in outcomes:
                state = states.get(outcome.entity_id, "failed")
                reason = None if state == "gisted" else (outcome.reason or "not in the cold tier")
                ledger.set_state([outcome.entity_id], state, reason=reason, now=when)
        finally:
            target.close()
    finally:
        lock.release()
    row = ledger.row(entity_id)
    return row.state if row else "answered"
