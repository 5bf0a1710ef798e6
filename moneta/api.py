"""The Moneta handle: four agent methods plus operator tools (DESIGN §1.1).

Agent methods: ``deposit``, ``query``, ``signal_attention``,
``get_consolidation_manifest``. Operator methods: ``run_sleep_pass``,
``preview_sleep_pass``, ``forget``, ``unpin``, ``protect``, ``stats``, ``close``.

Concurrency: one re-entrant lock guards every hot-tier mutation and read of the
columns; sleep passes (and ``forget``, which must not race a batch being authored)
are serialised by a second lock, taken before the first. Cold-tier authoring runs
outside the hot-tier lock so agents keep working during a consolidation.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, replace
from uuid import UUID

import numpy as np

from moneta import pages, store, validation
from moneta.attention_log import (
    AttentionEntry,
    AttentionLog,
    Signals,
    reduce_signals,
    validate_weights,
)
from moneta.audit import AuditEntry, entry
from moneta.config import MonetaConfig
from moneta.consolidation import (
    SleepPassReport,
    SleepPreview,
    batches,
    prune_reason,
    select,
    stage_reason,
)
from moneta.decay import decay_rate, decayed_utility
from moneta.durability import DeleteRecord, DepositRecord, StoreLock, UnpinRecord
from moneta.ecs import HotTier, top_rows
from moneta.errors import MonetaClosedError, ProtectedQuotaExceededError
from moneta.ids import new_id
from moneta.journal import Journal, attention_record, rows_update
from moneta.manifest import consolidation_manifest, staged_rows
from moneta.protocols import VectorRecord
from moneta.scheduler import Scheduler
from moneta.sequential_writer import SequentialWriter
from moneta.types import RANKED_STATES, EntityState, Memory, Vector

logger = logging.getLogger(__name__)

_NO_ROWS = np.empty(0, dtype=np.float64)
FAULT_IN_BYTES = 8 << 20  # hot-tier vector rows kept faulted in ahead of the deposits


@dataclass(frozen=True, slots=True)
class StoreStats:
    """A point-in-time summary of a store."""

    storage: str
    embedding_dim: int | None
    hot: int
    volatile: int
    staged: int
    protected: int
    pending_attention: int
    index_records: int  # every memory in a persistent index; the cold ones in an in-memory one
    sleep_passes: int
    half_life_seconds: float
    durable: bool
    last_sleep_pass: SleepPassReport | None


class Moneta:
    """A handle on one memory store. Use as a context manager; ``close()`` is idempotent."""

    def __init__(self, config: MonetaConfig) -> None:
        if not isinstance(config, MonetaConfig):
            raise TypeError(f"config must be a MonetaConfig, got {type(config).__name__}")
        self._config = config
        self._clock = config.clock
        self._rate = decay_rate(config.half_life_seconds)
        self._lock = threading.RLock()
        self._sleep_lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._closed = False
        self._attention = AttentionLog()
        self._file_lock: StoreLock | None = None
        self._journal: Journal | None = None
        self._scheduler = Scheduler(f"moneta[{config.storage_key}]")
        self._passes = 0
        self._last_report: SleepPassReport | None = None
        self._activity = False
        self._pressure_threshold = config.max_entities
        self._pressure_check_at = config.max_entities
        self._fault_in_at = 0  # hot-tier size at which the next vector rows are faulted in
        self._key = config.storage_key
        self._gist = None  # moneta.gist.GistCoordinator when config.gist_sink is set
        store.claim(self._key)
        try:
            self._open()
        except Exception:
            self._release_resources()
            raise
        self._last_op = self._clock()
        self._start_background()

    # --- opening and closing -----------------------------------------------------

    def _open(self) -> None:
        config = self._config
        directory = config.directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self._file_lock = StoreLock(directory)
            self._file_lock.acquire()
        self._parts = store.open_parts(config)
        self._index = self._parts.index
        self._mirror_hot = self._index.persistent  # see VectorIndex.persistent
        self._writer = SequentialWriter(self._parts.target, self._index)
        if config.gist_sink is not None:
            from moneta.gist import open_coordinator  # USD-only, imported on use

            self._gist = open_coordinator(config, directory, self._parts.target)
        capacity = max(config.max_entities, 1024)
        if config.durable:
            assert directory is not None
            self._journal = Journal(directory, fsync_interval_s=config.wal_fsync_interval_seconds)
            recovery = self._journal.recover(dim=None, capacity=capacity)
            self._hot = recovery.hot
            for pending in recovery.pending:
                self._attention.append(pending)
            self._fix_dim(recovery.meta.get("half_life_seconds"))
            self._reconcile_index(recovery.deposited, recovery.pruned, recovery.forgotten)
            if recovery.replayed:
                self._checkpoint()
        else:
            self._hot = HotTier(capacity=capacity)
            self._fill_fresh_index()  # first: the cold tier's vectors fix the dimension
            self._fix_dim(None)

    def _fix_dim(self, stored_half_life: float | None) -> None:
        """Agree on one embedding dimension between config, snapshot and index."""
        sources = {
            "config embedding_dim": self._config.embedding_dim,
            "hot-tier snapshot": self._hot.dim,
            "vector index": self._index.dim,
        }
        known = {name: dim for name, dim in sources.items() if dim is not None}
        if len(set(known.values())) > 1:
            raise ValueError(f"embedding_dim conflicts between {known}")
        if known:
            self._hot.set_dim(next(iter(known.values())))
        if stored_half_life is not None and stored_half_life != self._config.half_life_seconds:
            logger.info(
                "half-life changed from %g s (stored) to %g s (config)",
                stored_half_life,
                self._config.half_life_seconds,
            )

    def _fill_fresh_index(self) -> bool:
        """Load an empty index (in memory: nothing of it outlived the last process)
        from the tiers: the cold tier's memories, where it keeps their vectors, and,
        for a persistent index, every hot row without a cold copy. True if the index
        was empty."""
        hot, index = self._hot, self._index
        if index.count():
            return False
        cold_records = getattr(self._parts.target, "records", None)
        if cold_records is not None:
            cold = cold_records()
            if cold:
                index.upsert(cold)
        if self._mirror_hot:
            rows = [row for row, link in enumerate(hot.usd_links) if link is None]
            if rows:
                index.upsert(hot.records(rows))
        return True

    def _reconcile_index(
        self, deposited: set[UUID], pruned: set[UUID], forgotten: set[UUID]
    ) -> None:
        """Bring the vector index in line with the recovered hot tier.

        Deposits replayed from the WAL may not have reached an index commit; a replayed
        deposit that the index holds as CONSOLIDATED was a hydration and keeps its cold
        link. Replayed prunes and forgets are applied again (idempotent).
        """
        hot, index = self._hot, self._index
        if self._fill_fresh_index():
            deposited = set()
        candidates = [e for e in deposited if e in hot]
        cold = {
            r.entity_id: r for r in index.get(candidates) if r.state == EntityState.CONSOLIDATED
        }
        rows = []
        for entity_id in candidates:
            row = hot.row_of(entity_id)
            assert row is not None
            if entity_id in cold:
                hot.set_usd_link(row, cold[entity_id].usd_link)
            elif hot.usd_links[row] is None:
                rows.append(row)
        if rows and self._mirror_hot:
            index.upsert(hot.records(rows))
        stale = [
            r.entity_id
            for r in index.get(e for e in pruned if e not in hot)
            if r.state != EntityState.CONSOLIDATED
        ]
        if stale or forgotten:
            index.delete([*stale, *forgotten])
        if forgotten:
            self._parts.target.forget(forgotten)
        index.commit()

    def _start_background(self) -> None:
        config = self._config
        if config.auto_sleep:
            self._scheduler.every(
                config.watch_interval_seconds, "sleep triggers", self._watch, on_poke=True
            )
        self._scheduler.every(
            config.index_commit_interval_seconds, "index commit", self._index.commit
        )
        self._scheduler.every(1.0, "fault in hot rows", self._fault_in_ahead, on_poke=True)
        if self._journal is not None:
            self._scheduler.every(
                min(config.checkpoint_interval_seconds, 1.0),
                "checkpoint",
                self._checkpoint_if_due,
                on_poke=True,
            )
        self._scheduler.start()
        self._last_checkpoint_at = self._clock()

    def close(self) -> None:
        """Commit, checkpoint and release the store. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._scheduler.stop()
        try:
            with self._sleep_lock:
                self._checkpoint()
        finally:
            self._release_resources()

    def _release_resources(self) -> None:
        parts = getattr(self, "_parts", None)
        steps = []
        if self._gist is not None:
            steps.append(self._gist.close)
        if parts is not None:
            steps += [parts.index.close, parts.target.close]
        if self._journal is not None:
            steps.append(self._journal.close)
        if self._file_lock is not None:
            steps.append(self._file_lock.release)
        try:
            for step in steps:
                try:
                    step()
                except Exception:
                    logger.exception("closing %s failed", self._key)
        finally:
            store.release(self._key)

    def __enter__(self) -> Moneta:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise MonetaClosedError(f"handle on {self._key} is closed")

    @property
    def config(self) -> MonetaConfig:
        return self._config

    # --- agent methods -----------------------------------------------------------

    def deposit(self, payload: str, embedding: list[float], protected_floor: float = 0.0) -> UUID:
        """Store a memory (utility 1.0, attended 0, VOLATILE); return its id."""
        validation.payload(payload)
        floor = validation.protected_floor(protected_floor)
        vector = validation.embedding(embedding, self._hot.dim)
        now = self._begin_op()
        entity_id = new_id()
        with self._lock:
            self._check_open()
            hot = self._hot
            if hot.dim is None:
                hot.set_dim(vector.size)
            elif vector.size != hot.dim:
                raise ValueError(
                    f"embedding has dimension {vector.size}, but this store's is {hot.dim}"
                )
            if floor > 0:
                protected = int(np.count_nonzero(hot.view().floor > 0))
                if protected >= self._config.quota_override:
                    raise ProtectedQuotaExceededError(
                        f"protected deposits are limited to quota_override="
                        f"{self._config.quota_override} per handle ({protected} held)"
                    )
            if self._journal is not None:
                self._journal.append(DepositRecord(entity_id, payload, vector, floor, now))
            hot.append(
                entity_id,
                vector,
                payload,
                floor=floor,
                utility=1.0,
                attended=0,
                last_evaluated=now,
            )
            if self._mirror_hot:
                self._index.upsert(
                    [
                        VectorRecord(
                            entity_id=entity_id,
                            vector=vector,
                            payload=payload,
                            utility=1.0,
                            attended_count=0,
                            protected_floor=floor,
                            last_evaluated=now,
                            state=EntityState.VOLATILE,
                        )
                    ]
                )
            size = len(hot)
        if (
            size >= self._fault_in_at
            or (self._config.auto_sleep and size >= self._pressure_check_at)
            or self._checkpoint_due()
        ):
            self._scheduler.poke()
        return entity_id

    def query(self, embedding: list[float], limit: int = 5) -> list[Memory]:
        """The `limit` memories best matching `embedding`, by cosine x decayed utility.

        Searches the hot tier exactly and the cold tier through the vector index;
        reading a cold memory never moves it back into the hot tier.
        """
        validation.limit(limit)
        query = validation.embedding(embedding, self._hot.dim)
        now = self._begin_op()
        with self._lock:
            self._check_open()
            hot_hits = self._score_hot(query, limit, now)
        cold_hits = self._search_cold(query, limit)
        return self._merge(query, hot_hits, cold_hits, limit)

    def signal_attention(self, weights: dict[UUID, float]) -> None:
        """Record that these memories mattered; applied by the next sleep pass."""
        ids, values = validate_weights(weights)
        now = self._begin_op()
        if not ids:
            return
        pending = AttentionEntry(ids, values, now)
        with self._lock:
            self._check_open()
            if self._journal is not None:
                self._journal.append(attention_record(pending))
            self._attention.append(pending)

    def get_consolidation_manifest(self) -> list[Memory]:
        """The memories currently STAGED_FOR_SYNC (waiting for the cold tier)."""
        self._begin_op()
        with self._lock:
            self._check_open()
            return consolidation_manifest(self._hot)

    # --- query helpers -------------------------------------------------------------

    def _score_hot(self, query: np.ndarray, limit: int, now: float) -> list[tuple[float, Memory]]:
        hot = self._hot
        n = len(hot)
        if n == 0:
            return []
        cols = hot.view()
        anchor, rate = hot.decay_anchor, self._rate
        start = anchor.stale_from(n, now, rate)
        exact = (  # no floor here: the anchor keeps floorless values and applies it
            decayed_utility(cols.utility[start:], cols.last_evaluated[start:], 0.0, now, rate)
            if start < n
            else _NO_ROWS
        )
        utility = anchor.advance(exact, start, cols.last_evaluated, cols.floor, now, rate)
        scores = hot.vectors @ query
        scores *= utility.astype(np.float32)  # a float32 product: mixed types cost 2x
        top = top_rows(scores, limit)
        return list(zip(scores[top].tolist(), hot.memories(top, utility[top]), strict=True))

    def _search_cold(self, query: np.ndarray, limit: int) -> list[tuple[float, Memory]]:
        """Cold hits ranked by cosine x utility. A consolidated memory's utility is frozen,
        so the index ranks by it (weighted search) and `limit` candidates suffice: each
        one more costs the search a read of every column of a row, a disk read once the
        store outgrows the page cache. Scores come from the cold tier's copy (the
        authority), re-computed here."""
        found = self._index.search(query, limit, states=RANKED_STATES, weighted=True)
        records = _cold_copies(self._parts.target, [record for record, _ in found])
        hits = []
        for record in records:
            vector = np.asarray(record.vector, dtype=np.float32)
            norm = float(np.linalg.norm(vector))
            cosine = float(np.dot(vector, query)) / norm if norm > 0 else 0.0
            hits.append((cosine * record.utility, _to_memory(record)))
        return hits

    def _merge(
        self,
        query: np.ndarray,
        hot_hits: list[tuple[float, Memory]],
        cold_hits: list[tuple[float, Memory]],
        limit: int,
    ) -> list[Memory]:
        """Merge both tiers; a memory in both is shown once (DESIGN §1.8): the hot copy
        if it was evaluated after the cold copy was written, else the cold copy."""
        best: dict[UUID, tuple[float, Memory]] = {m.entity_id: (s, m) for s, m in cold_hits}
        linked = [m.entity_id for _, m in hot_hits if m.usd_link and m.entity_id not in best]
        if not best and not linked:  # hot hits only, already best first
            return [memory for _, memory in hot_hits[:limit]]
        if linked:
            for record in _cold_copies(self._parts.target, self._index.get(linked)):
                if record.state == EntityState.CONSOLIDATED:
                    cosine = float(np.dot(record.vector, query) / np.linalg.norm(record.vector))
                    best[record.entity_id] = (cosine * record.utility, _to_memory(record))
        for score, memory in hot_hits:
            cold = best.get(memory.entity_id)
            if cold is None or memory.last_evaluated > cold[1].last_evaluated:
                best[memory.entity_id] = (score, memory)
        ranked = sorted(best.values(), key=lambda hit: hit[0], reverse=True)
        return [memory for _, memory in ranked[:limit]]

    # --- sleep pass ------------------------------------------------------------------

    def run_sleep_pass(self) -> SleepPassReport:
        """Apply pending attention, prune, stage and consolidate now."""
        self._check_open()
        with self._sleep_lock:
            return self._sleep_pass("operator")

    def preview_sleep_pass(self) -> SleepPreview:
        """What ``run_sleep_pass`` would prune and stage now, changing nothing."""
        self._check_open()
        now = self._clock()
        with self._lock:
            hot = self._hot
            entries = self._attention.pending()
            ids = [e for pending in entries for e in pending.entity_ids]
            rows = hot.rows_of(ids)
            unknown = {ids[i] for i in np.flatnonzero(rows < 0).tolist()}
            hydrate = [
                r.entity_id for r in self._index.get(unknown) if r.state == EntityState.CONSOLIDATED
            ]
            cols = hot.view().copy()
            signals = _signals(entries, rows)
            reduce_signals(cols, signals, now, self._rate)
            chosen = select(cols, now, self._rate)
            return SleepPreview(
                attention_pending=int(signals.rows.size),
                would_prune=[hot.ids[r] for r in chosen.prune_rows.tolist()],
                would_stage=[hot.ids[r] for r in chosen.stage_rows.tolist()],
                already_staged=[hot.ids[r] for r in staged_rows(hot).tolist()],
                would_hydrate=hydrate,
                at=now,
            )

    def _sleep_pass(self, trigger: str) -> SleepPassReport:
        """One pass; the caller holds ``_sleep_lock``."""
        now = self._clock()
        self._activity = False
        audit: list[AuditEntry] = []
        with self._lock:
            applied, hydrated = self._apply_attention(now)
            staged, pruned = self._select_and_prune(now, audit)
            to_write = [self._hot.ids[r] for r in staged_rows(self._hot).tolist()]
        report = SleepPassReport(
            attention_applied=applied, hydrated=hydrated, pruned=pruned, staged=staged,
            trigger=trigger, at=now,
        )  # fmt: skip
        report = self._consolidate(to_write, now, report, audit)
        if self._gist is not None:
            report = self._hand_off_gists(report, audit, now)
        self._parts.audit.record(audit)
        self._index.commit()
        self._index.maintain()
        with self._lock:
            volatile = self._hot.count_state(EntityState.VOLATILE)
            self._pressure_threshold = max(
                self._config.max_entities, volatile + max(1, self._config.max_entities // 10)
            )
            self._pressure_check_at = len(self._hot) + self._pressure_threshold - volatile
            self._passes += 1
            self._last_report = report
        logger.info("sleep pass (%s): %s", trigger, report)
        return report

    def _hand_off_gists(
        self, report: SleepPassReport, audit: list[AuditEntry], now: float
    ) -> SleepPassReport:
        """Queue gists of what this pass consolidated (moneta.gist); never blocks on a model.

        A failure here is logged and leaves the pass's own result intact; the ids are
        in the gist ledger or are re-queued by the next pass.
        """
        assert self._gist is not None
        consolidated = [UUID(e.entity_id) for e in audit if e.action == "consolidate"]
        try:
            handoff = self._gist.after_pass(consolidated, now)
        except Exception:
            logger.exception("gist hand-off on %s failed", self._key)
            return report
        return replace(report, gists_enqueued=handoff.enqueued, gists_deferred=handoff.deferred)

    def _apply_attention(self, now: float) -> tuple[int, int]:
        """Drain and reduce the attention log (under the hot-tier lock)."""
        entries = self._attention.drain()
        if not entries:
            return 0, 0
        hot = self._hot
        ids = [e for pending in entries for e in pending.entity_ids]
        rows = hot.rows_of(ids)
        hydrated = 0
        if (rows < 0).any():
            unknown = {ids[i] for i in np.flatnonzero(rows < 0).tolist()}
            hydrated = self._hydrate(unknown)
            if hydrated:
                rows = hot.rows_of(ids)
        signals = _signals(entries, rows)
        touched = reduce_signals(hot.columns(), signals, now, self._rate)
        if self._journal is not None:
            # Logged even when nothing was touched: it marks the drain for replay.
            self._journal.append(rows_update(hot, touched))
        return int(signals.rows.size), hydrated

    def _hydrate(self, unknown: set[UUID]) -> int:
        """Bring attended cold memories back as VOLATILE hot rows (DESIGN §1.8)."""
        count = 0
        for record in _cold_copies(self._parts.target, self._index.get(unknown)):
            if record.state != EntityState.CONSOLIDATED or record.entity_id in self._hot:
                continue
            vector = np.asarray(record.vector, dtype=np.float32)
            vector = vector / np.linalg.norm(vector)
            if self._journal is not None:
                self._journal.append(
                    DepositRecord(
                        record.entity_id,
                        record.payload,
                        vector,
                        record.protected_floor,
                        record.last_evaluated,
                    )
                )
            self._hot.append(
                record.entity_id,
                vector,
                record.payload,
                floor=record.protected_floor,
                utility=record.utility,
                attended=record.attended_count,
                last_evaluated=record.last_evaluated,
                usd_link=record.usd_link,
            )
            count += 1
        return count

    def _select_and_prune(self, now: float, audit: list[AuditEntry]) -> tuple[int, int]:
        """Stage and prune what the scan selects (under the hot-tier lock)."""
        hot = self._hot
        cols = hot.columns()
        chosen = select(cols, now, self._rate)
        stage = chosen.stage_rows
        if stage.size:
            cols.utility[stage] = chosen.decayed[stage]
            cols.last_evaluated[stage] = now
            cols.state[stage] = EntityState.STAGED_FOR_SYNC
            if self._journal is not None:
                self._journal.append(rows_update(hot, stage))
        prune = chosen.prune_rows
        if prune.size:
            ids = [hot.ids[r] for r in prune.tolist()]
            linked = {hot.ids[r] for r in prune.tolist() if hot.usd_links[r] is not None}
            for row, entity_id in zip(prune.tolist(), ids, strict=True):
                utility, attended = float(chosen.decayed[row]), int(cols.attended[row])
                reason = prune_reason(utility, attended)
                if entity_id in linked:
                    reason += "; the cold copy stays"
                audit.append(
                    entry(entity_id, "prune", utility=utility, attended_count=attended,
                          reason=reason, at=now, usd_link=hot.usd_links[row])
                )  # fmt: skip
            if self._journal is not None:
                self._journal.append(DeleteRecord(ids, "prune"))
            hot.remove_rows(prune)
            if self._mirror_hot:
                self._index.delete([e for e in ids if e not in linked])
        return int(stage.size), int(prune.size)

    def _consolidate(
        self, to_write: list[UUID], now: float, report: SleepPassReport, audit: list[AuditEntry]
    ) -> SleepPassReport:
        """Write STAGED rows batch by batch: cold tier, then index, then leave the hot tier."""
        consolidated = done = 0
        all_batches = list(batches(to_write, self._config.batch_size))
        error = None
        for number, batch_ids in enumerate(all_batches):
            with self._lock:
                rows = self._hot.rows_of(batch_ids)
                rows = rows[rows >= 0]
                state = self._hot.view().state[rows]
                rows = rows[state == EntityState.STAGED_FOR_SYNC]
                memories = self._hot.memories(rows)
                vectors = self._hot.vectors[rows].copy()
            if not memories:
                continue
            batch_id = f"{int(now)}-{uuid.uuid4().hex[:8]}-{number}"
            try:
                links = self._writer.write_batch(
                    memories, vectors, batch_id=batch_id, authored_at=now
                )
            except Exception as exc:
                error = f"batch {number + 1} of {len(all_batches)} ({batch_id}): {exc}"
                logger.warning("consolidation stopped; rows stay STAGED: %s", error)
                break
            with self._lock:
                ids = [m.entity_id for m in memories]
                rows = self._hot.rows_of(ids)
                if self._journal is not None:
                    self._journal.append(DeleteRecord(ids, "consolidated"))
                self._hot.remove_rows(rows[rows >= 0])
            for memory in memories:
                audit.append(
                    entry(memory.entity_id, "consolidate", utility=memory.utility,
                          attended_count=memory.attended_count,
                          reason=stage_reason(memory.utility, memory.attended_count),
                          at=now, usd_link=links[memory.entity_id])
                )  # fmt: skip
            consolidated += len(memories)
            done += 1
        with self._lock:
            still = int(staged_rows(self._hot).size)
        return replace(
            report,
            consolidated=consolidated,
            batches=len(all_batches),
            failed_batches=len(all_batches) - done if error else 0,
            still_staged=still,
            error=error,
        )

    # --- triggers ----------------------------------------------------------------------

    def _begin_op(self) -> float:
        """Bookkeeping of an agent operation; runs an overdue idle pass first."""
        self._check_open()
        now = self._clock()
        if (
            self._config.auto_sleep
            and self._activity
            and now - self._last_op > self._config.idle_window_seconds
        ):
            try:
                self._try_pass("idle")
            except Exception:
                # The agent's call is not about the pass: log, and let the next
                # trigger (or an operator) retry it.
                logger.exception("idle sleep pass on %s failed", self._key)
        self._last_op = now
        self._activity = True
        return now

    def _fault_in_ahead(self) -> None:
        """Fault in the hot-tier vector rows the next deposits will write (scheduler
        thread, without the GIL: see ``moneta.pages``). A deposit would otherwise take a
        page fault every ~3 rows, each up to tens of µs on a VM."""
        with self._lock:
            hot = self._hot
            if self._closed or hot.dim is None:
                return
            rows = max(1, FAULT_IN_BYTES // (4 * hot.dim))
            spare = hot.spare_vectors(rows)  # keeps the column mapped during the call
            self._fault_in_at = len(hot) + max(1, rows // 2)
        pages.populate_array(spare)

    def _try_pass(self, trigger: str) -> SleepPassReport | None:
        """Run a pass unless one is already running."""
        if not self._sleep_lock.acquire(blocking=False):
            return None
        try:
            if self._closed:
                return None
            return self._sleep_pass(trigger)
        finally:
            self._sleep_lock.release()

    def _watch(self) -> None:
        """Background check of both sleep triggers (scheduler thread)."""
        if self._closed:
            return
        if self._activity and self._clock() - self._last_op > self._config.idle_window_seconds:
            self._try_pass("idle")
            return
        with self._lock:
            volatile = self._hot.count_state(EntityState.VOLATILE)
            size = len(self._hot)
        if volatile >= self._pressure_threshold:
            self._try_pass("pressure")
        else:
            self._pressure_check_at = size + self._pressure_threshold - volatile

    # --- checkpoints -------------------------------------------------------------------

    def _checkpoint_due(self) -> bool:
        journal = self._journal
        return (
            journal is not None
            and journal.records_since_checkpoint >= self._config.checkpoint_every_records
        )

    def _checkpoint_if_due(self) -> None:
        journal = self._journal
        if journal is None or self._closed or not journal.records_since_checkpoint:
            return
        overdue = (
            self._clock() - self._last_checkpoint_at >= self._config.checkpoint_interval_seconds
        )
        if overdue or self._checkpoint_due():
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Commit the index and snapshot the hot tier; drop the WAL the snapshot covers."""
        journal = self._journal
        if journal is None:
            self._index.commit()
            return
        with self._checkpoint_lock:
            with self._lock:
                self._index.commit()
                segment = journal.begin_checkpoint(self._attention.pending())
                image = self._hot.image(
                    {
                        "embedding_dim": self._hot.dim,
                        "half_life_seconds": self._config.half_life_seconds,
                    }
                )
            journal.finish_checkpoint(image, segment)
            self._last_checkpoint_at = self._clock()

    # --- operator tools ----------------------------------------------------------------

    def forget(self, entity_id: UUID) -> bool:
        """Remove a memory from every place it lives; True if it was found anywhere.

        On disk, a checkpoint rewrites the snapshot and drops the WAL segments that
        still carry the payload before this returns; an index that can erase a row's
        bytes (not just mark it deleted) does so through its ``purge``.
        """
        if not isinstance(entity_id, UUID):
            raise TypeError(f"entity_id must be a uuid.UUID, got {type(entity_id).__name__}")
        self._check_open()
        now = self._clock()
        with self._sleep_lock:
            with self._lock:
                self._check_open()
                row = self._hot.row_of(entity_id)
                known = self._index.get([entity_id])
                if row is None and not known:
                    self._parts.target.forget([entity_id])
                    return False
                if row is not None:
                    cols = self._hot.view()
                    utility, attended = float(cols.utility[row]), int(cols.attended[row])
                else:
                    utility, attended = known[0].utility, known[0].attended_count
                if self._journal is not None:
                    self._journal.append(DeleteRecord([entity_id], "forget"))
                if row is not None:
                    self._hot.remove_rows([row])
                self._index.delete([entity_id])
                self._parts.target.forget([entity_id])
            purge = getattr(self._index, "purge", None)
            if purge is not None:
                purge([entity_id])
            else:
                self._index.commit()
            self._checkpoint()
        self._parts.audit.record(
            [entry(entity_id, "forget", utility=utility, attended_count=attended,
                   reason="operator forget", at=now)]
        )  # fmt: skip
        return True

    def unpin(self, entity_id: UUID) -> bool:
        """Clear a memory's protected floor, hot and cold; True if it had one.

        The floor only ever clamped the decayed value, so from now on the memory's
        utility is what decay has made of it since it was last evaluated. A floor
        held in the cold tier's protected layer is moved out of it (see ``protect``).
        """
        if not isinstance(entity_id, UUID):
            raise TypeError(f"entity_id must be a uuid.UUID, got {type(entity_id).__name__}")
        self._check_open()
        with self._sleep_lock, self._lock:
            self._check_open()
            row = self._hot.row_of(entity_id)
            hot = row is not None and bool(self._hot.view().floor[row] != 0.0)
            if hot:
                if self._journal is not None:
                    self._journal.append(UnpinRecord(entity_id))
                self._hot.columns().floor[row] = 0.0
            cold_unpin = getattr(self._parts.target, "unpin", None)
            cold = bool(cold_unpin and cold_unpin([entity_id], authored_at=self._clock()))
            if cold:
                for record in self._index.get([entity_id]):
                    if record.state == EntityState.CONSOLIDATED:
                        self._index.upsert([replace(record, protected_floor=0.0)])
                self._index.commit()
            return hot or cold

    def protect(self, entity_id: UUID) -> str:
        """Move a pinned hot memory into the cold tier's protected layer; return its prim.

        Operator tool. ``cortex_protected.usda`` is the strongest layer, so its values
        win over any daily opinion on the prim. Written like a consolidation batch
        (cold tier, then index, then the row leaves the hot tier); the memory stays
        queryable, attention hydrates it with its floor, ``unpin`` releases it.
        """
        if not isinstance(entity_id, UUID):
            raise TypeError(f"entity_id must be a uuid.UUID, got {type(entity_id).__name__}")
        author = getattr(self._parts.target, "author_protected", None)
        if author is None:
            raise ValueError(
                f"protect needs a cold tier with a protected layer (cold_tier 'usd'),"
                f" not {type(self._parts.target).__name__}"
            )
        self._check_open()
        now = self._clock()
        with self._sleep_lock:
            with self._lock:
                self._check_open()
                row = self._hot.row_of(entity_id)
                if row is None or self._hot.view().floor[row] <= 0.0:
                    raise ValueError(
                        f"entity_id {entity_id} must be a pinned hot memory (protected_floor > 0)"
                    )
                record = replace(self._record(row), state=EntityState.CONSOLIDATED)
                memory = self._hot.memory(row)
            links = author([memory], batch_id=f"protect-{entity_id.hex}", authored_at=now)
            record.usd_link = links[entity_id]
            self._index.upsert([record])
            self._index.commit()
            with self._lock:
                if self._journal is not None:
                    self._journal.append(DeleteRecord([entity_id], "consolidated"))
                row = self._hot.row_of(entity_id)
                if row is not None:
                    self._hot.remove_rows([row])
        self._parts.audit.record(
            [entry(entity_id, "consolidate", utility=record.utility,
                   attended_count=record.attended_count, reason="operator protect",
                   at=now, usd_link=record.usd_link)]
        )  # fmt: skip
        return record.usd_link

    def stats(self) -> StoreStats:
        """Counts of what the store holds right now."""
        with self._lock:
            hot = self._hot
            cols = hot.view()
            return StoreStats(
                storage=self._key,
                embedding_dim=hot.dim,
                hot=len(hot),
                volatile=int(np.count_nonzero(cols.state == EntityState.VOLATILE)),
                staged=int(np.count_nonzero(cols.state == EntityState.STAGED_FOR_SYNC)),
                protected=int(np.count_nonzero(cols.floor > 0)),
                pending_attention=len(self._attention),
                index_records=self._index.count(),
                sleep_passes=self._passes,
                half_life_seconds=self._config.half_life_seconds,
                durable=self._journal is not None,
                last_sleep_pass=self._last_report,
            )

    def _record(self, row: int) -> VectorRecord:
        hot = self._hot
        cols = hot.view()
        return VectorRecord(
            entity_id=hot.ids[row],
            vector=hot.vectors[row].copy(),
            payload=hot.payloads[row],
            utility=float(cols.utility[row]),
            attended_count=int(cols.attended[row]),
            protected_floor=float(cols.floor[row]),
            last_evaluated=float(cols.last_evaluated[row]),
            state=EntityState.VOLATILE,
        )


def _signals(entries: list[AttentionEntry], rows: np.ndarray) -> Signals:
    """Flatten attention entries against resolved rows, dropping unknown ids."""
    if not entries:
        empty = np.empty(0)
        return Signals(np.empty(0, dtype=np.int64), empty, empty)
    weights = np.concatenate([pending.weights for pending in entries])
    times = np.concatenate(
        [np.full(len(pending.entity_ids), pending.at, dtype=np.float64) for pending in entries]
    )
    known = rows >= 0
    return Signals(rows[known], weights[known], times[known])


def _cold_copies(target: object, records: list[VectorRecord]) -> list[VectorRecord]:
    """Consolidated records with payload and state as the cold tier composes them.

    The index keeps a copy made at consolidation; the cold tier is the authority
    (DESIGN §1.8), and an operator may have changed it since (protect, unpin).
    A target that cannot read back (the JSONL mock) leaves the index copy.
    """
    read = getattr(target, "read", None)
    wanted = [r.entity_id for r in records if r.state == EntityState.CONSOLIDATED]
    if read is None or not wanted:
        return records
    cold = read(wanted)
    merged = []
    for record in records:
        copy = cold.get(record.entity_id)
        if copy is not None and record.state == EntityState.CONSOLIDATED:
            record = replace(
                record,
                payload=copy.payload,
                utility=copy.utility,
                attended_count=copy.attended_count,
                protected_floor=copy.protected_floor,
                last_evaluated=copy.last_evaluated,
                usd_link=copy.usd_link,
            )
        merged.append(record)
    return merged


def _to_memory(record: VectorRecord) -> Memory:
    return Memory(
        entity_id=record.entity_id,
        payload=record.payload,
        semantic_vector=Vector(record.vector),
        utility=float(record.utility),
        attended_count=int(record.attended_count),
        protected_floor=float(record.protected_floor),
        last_evaluated=float(record.last_evaluated),
        state=record.state,
        usd_link=record.usd_link,
    )
