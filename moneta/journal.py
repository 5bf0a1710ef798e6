"""The handle's use of ``moneta.durability``: what is logged, how a store recovers.

Every change to the hot tier is appended to the write-ahead log before the call
that made it returns:

- ``deposit`` → ``DepositRecord`` (also used when attention hydrates a cold memory);
- ``signal_attention`` → ``AttentionRecord`` (the raw signals, still pending);
- the sleep pass → ``RowsUpdateRecord`` (absolute values after the attention reduce,
  and for rows it stages) and ``DeleteRecord`` (prune, consolidated);
- ``forget`` → ``DeleteRecord``; ``unpin`` → ``UnpinRecord``.

Pending attention. The reducer drains the attention log and logs its
``RowsUpdateRecord`` in one critical section, and every ``RowsUpdateRecord`` is
written in such a section, so on replay a ``RowsUpdateRecord`` means "every
attention record before me has been applied": replay keeps attention records as
pending and clears them at each ``RowsUpdateRecord``. A checkpoint re-logs the
still-pending signals into the fresh segment, so the snapshot never swallows them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

import numpy as np

from moneta.attention_log import AttentionEntry
from moneta.durability import (
    SNAPSHOT_FILE_NAME,
    AttentionRecord,
    DeleteRecord,
    DepositRecord,
    HotImage,
    RowsUpdateRecord,
    UnpinRecord,
    WalRecord,
    WriteAheadLog,
    read_snapshot,
    write_snapshot,
)
from moneta.ecs import HotTier

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Recovery:
    """The hot tier and pending attention rebuilt from snapshot + WAL."""

    hot: HotTier
    pending: list[AttentionEntry]
    meta: dict
    replayed: int = 0
    deposited: set[UUID] = field(default_factory=set)  # deposits replayed from the WAL
    pruned: set[UUID] = field(default_factory=set)
    forgotten: set[UUID] = field(default_factory=set)


class Journal:
    """Write-ahead log + snapshots of one store directory (the caller holds its lock)."""

    def __init__(self, directory: Path, *, fsync_interval_s: float) -> None:
        self._directory = directory
        self.snapshot_path = directory / SNAPSHOT_FILE_NAME
        self._fsync_interval_s = fsync_interval_s
        self._wal: WriteAheadLog | None = None
        self.records_since_checkpoint = 0

    def recover(self, *, dim: int | None, capacity: int) -> Recovery:
        """Read the snapshot, replay the newer WAL segments, and open the log for appends."""
        loaded = read_snapshot(self.snapshot_path)
        if loaded is None:
            hot, covered, meta = HotTier(dim=dim, capacity=capacity), 0, {}
        else:
            image, covered = loaded
            hot, meta = HotTier.from_image(image, capacity=capacity), dict(image.meta)
            logger.info("snapshot %s: %d hot rows", self.snapshot_path, len(hot))
        self._wal = WriteAheadLog(
            self._directory, fsync_interval_s=self._fsync_interval_s, start_after=covered
        )
        recovery = Recovery(hot=hot, pending=[], meta=meta)
        for record in self._wal.replay(covered):
            _apply(recovery, record)
            if not _is_reset(record):
                recovery.replayed += 1
        self.records_since_checkpoint = recovery.replayed
        if recovery.replayed:
            logger.info(
                "replayed %d WAL records: %d hot rows, %d pending attention signals",
                recovery.replayed,
                len(hot),
                sum(len(e.entity_ids) for e in recovery.pending),
            )
        return recovery

    def append(self, record: WalRecord) -> None:
        assert self._wal is not None, "recover() opens the log"
        self._wal.append(record)
        self.records_since_checkpoint += 1

    def begin_checkpoint(self, pending: Iterable[AttentionEntry]) -> int:
        """Rotate the log (under the handle lock) and re-log pending attention into the
        new segment; return the segment the snapshot will cover."""
        assert self._wal is not None
        segment = self._wal.rotate()
        self.records_since_checkpoint = 0
        # An empty rows update clears replay's pending set: if the snapshot is never
        # written, the older segments are replayed too and their attention records
        # must not count again next to the copies re-logged below.
        self.append(_PENDING_RESET)
        for entry in pending:
            self.append(attention_record(entry))
        return segment

    def finish_checkpoint(self, image: HotImage, segment: int) -> None:
        """Write the snapshot and drop the segments it covers (outside the handle lock)."""
        assert self._wal is not None
        write_snapshot(self.snapshot_path, image, covers_segment=segment)
        self._wal.drop_through(segment)

    def close(self) -> None:
        if self._wal is not None:
            self._wal.close()


_PENDING_RESET = RowsUpdateRecord(
    entity_ids=[],
    utility=np.empty(0),
    attended_count=np.empty(0, dtype=np.int64),
    last_evaluated=np.empty(0),
    state=np.empty(0, dtype=np.int8),
    usd_links=[],
)


def _is_reset(record: WalRecord) -> bool:
    """The checkpoint's empty rows update: changes no row, so it is not a replayed change
    (a store closed cleanly reopens without writing a new snapshot)."""
    return isinstance(record, RowsUpdateRecord) and not record.entity_ids


def attention_record(entry: AttentionEntry) -> AttentionRecord:
    return AttentionRecord(list(entry.entity_ids), entry.weights, entry.at)


def rows_update(hot: HotTier, rows: np.ndarray) -> RowsUpdateRecord:
    """Absolute values of ``rows`` as a replay-idempotent record."""
    cols = hot.view()
    row_list = rows.tolist()
    return RowsUpdateRecord(
        entity_ids=[hot.ids[r] for r in row_list],
        utility=cols.utility[rows].copy(),
        attended_count=cols.attended[rows].copy(),
        last_evaluated=cols.last_evaluated[rows].copy(),
        state=cols.state[rows].copy(),
        usd_links=[hot.usd_links[r] for r in row_list],
    )


def _apply(recovery: Recovery, record: WalRecord) -> None:
    hot = recovery.hot
    if isinstance(record, DepositRecord):
        if record.entity_id in hot:
            return
        hot.append(
            record.entity_id,
            np.asarray(record.vector, dtype=np.float32),
            record.payload,
            floor=record.protected_floor,
            utility=1.0,
            attended=0,
            last_evaluated=record.created_at,
        )
        recovery.deposited.add(record.entity_id)
    elif isinstance(record, AttentionRecord):
        recovery.pending.append(
            AttentionEntry(tuple(record.entity_ids), np.asarray(record.weights), record.at)
        )
    elif isinstance(record, RowsUpdateRecord):
        recovery.pending.clear()
        rows = hot.rows_of(record.entity_ids)
        present = rows >= 0
        cols = hot.columns()
        r = rows[present]
        cols.utility[r] = record.utility[present]
        cols.attended[r] = record.attended_count[present]
        cols.last_evaluated[r] = record.last_evaluated[present]
        cols.state[r] = record.state[present]
        for row, link in zip(rows.tolist(), record.usd_links, strict=True):
            if row >= 0:
                hot.set_usd_link(row, link)
    elif isinstance(record, DeleteRecord):
        rows = hot.rows_of(record.entity_ids)
        hot.remove_rows(rows[rows >= 0])
        if record.reason == "prune":
            recovery.pruned.update(record.entity_ids)
        elif record.reason == "forget":
            recovery.forgotten.update(record.entity_ids)
    elif isinstance(record, UnpinRecord):
        row = hot.row_of(record.entity_id)
        if row is not None:
            hot.columns().floor[row] = 0.0
