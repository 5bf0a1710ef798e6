"""Crash safety for a file-backed store: store lock, write-ahead log, snapshots.

Layout inside the store directory::

    .moneta.lock            flock'd while a process has the store open
    wal/000000000042.wal    WAL segments, append-only, replayed in number order
    snapshot.bin            latest hot-tier snapshot (atomic: temp, fsync, rename)

A record is acknowledged once ``WriteAheadLog.append`` returns: its bytes are in
the kernel (one ``os.write``), so they survive ``kill -9`` of the process. fsync
runs on a timer (``fsync_interval_s``) and at rotate/close; ``fsync_interval_s=0``
fsyncs every append (power-loss safety at a latency cost).

Snapshot protocol (no acknowledged record can be lost to a racing append):
under the handle's lock the caller calls ``wal.rotate()`` (new appends go to the
new segment) and copies the hot-tier columns; outside the lock it calls
``write_snapshot(..., covers_segment=<returned number>)`` and only after that
``wal.drop_through(<number>)``. Recovery reads the snapshot and replays only
segments newer than the one it covers.

Framing of one WAL record: ``u32 length | u32 crc32 | u8 kind | body``. A torn or
CRC-failing *final* record of the *last* segment is skipped with a warning (the
process died mid-write, so it was never acknowledged); damage anywhere else
raises ``SnapshotCorruptError``-style ``WalCorruptError`` naming the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import numpy as np

from moneta.errors import MonetaError


class WalCorruptError(MonetaError):
    """A WAL segment is damaged somewhere other than its torn tail; names the file."""


# --- records -----------------------------------------------------------------


@dataclass(slots=True)
class DepositRecord:
    entity_id: UUID
    payload: str
    vector: np.ndarray  # float32 (dim,)
    protected_floor: float
    created_at: float


@dataclass(slots=True)
class AttentionRecord:
    """One ``signal_attention`` call: all of its signals are logged atomically."""

    entity_ids: list[UUID]
    weights: np.ndarray  # float64 (n,)
    at: float


@dataclass(slots=True)
class RowsUpdateRecord:
    """Effects of a reducer run or state change, logged as absolute values so replay
    is idempotent: for each id the new utility, attended count, last_evaluated,
    state (EntityState int) and usd_link."""

    entity_ids: list[UUID]
    utility: np.ndarray  # float64
    attended_count: np.ndarray  # int64
    last_evaluated: np.ndarray  # float64
    state: np.ndarray  # int8
    usd_links: list[str | None]


@dataclass(slots=True)
class DeleteRecord:
    """Rows removed from the hot tier (prune, forget, or leaving for the cold tier)."""

    entity_ids: list[UUID]
    reason: str  # "prune" | "forget" | "consolidated"


@dataclass(slots=True)
class UnpinRecord:
    """Operator cleared a protected floor (``unpin``)."""

    entity_id: UUID


WalRecord = DepositRecord | AttentionRecord | RowsUpdateRecord | DeleteRecord | UnpinRecord


# --- hot-tier image ----------------------------------------------------------


@dataclass(slots=True)
class HotImage:
    """Column copy of the hot tier, as written to and read from a snapshot."""

    entity_ids: np.ndarray  # (n, 16) uint8: UUID bytes
    vectors: np.ndarray  # (n, dim) float32
    utility: np.ndarray  # (n,) float64
    attended_count: np.ndarray  # (n,) int64
    protected_floor: np.ndarray  # (n,) float64
    last_evaluated: np.ndarray  # (n,) float64
    state: np.ndarray  # (n,) int8
    payloads: list[str]
    usd_links: list[str | None]
    meta: dict  # JSON-serialisable: embedding_dim, half_life_seconds, ...


# --- store lock --------------------------------------------------------------


class StoreLock:
    """Exclusive ``flock`` on ``<dir>/.moneta.lock``; the kernel drops it when the
    process dies, so a crashed process never leaves a stale lock."""

    def __init__(self, directory: Path) -> None:
        raise NotImplementedError

    def acquire(self) -> None:
        """Take the lock without blocking; raise MonetaResourceLockedError if held."""
        raise NotImplementedError

    def release(self) -> None:
        """Idempotent."""
        raise NotImplementedError


# --- write-ahead log ---------------------------------------------------------


class WriteAheadLog:
    """Segmented append-only log; thread-safe ``append``."""

    def __init__(self, directory: Path, *, fsync_interval_s: float = 1.0) -> None:
        raise NotImplementedError

    def append(self, record: WalRecord) -> None:
        """Encode and write the record with a single ``os.write``."""
        raise NotImplementedError

    def rotate(self) -> int:
        """Close the current segment and open the next; return the closed segment's number."""
        raise NotImplementedError

    def replay(self, after_segment: int) -> Iterator[WalRecord]:
        """Yield records of segments numbered > ``after_segment`` in order."""
        raise NotImplementedError

    def drop_through(self, segment: int) -> None:
        """Delete segments numbered <= ``segment`` (they are covered by a snapshot)."""
        raise NotImplementedError

    def close(self) -> None:
        """fsync and close. Idempotent."""
        raise NotImplementedError


# --- snapshots ---------------------------------------------------------------


def write_snapshot(path: Path, image: HotImage, *, covers_segment: int) -> None:
    """Atomically replace ``path``: write a temp file, fsync it, rename, fsync the dir."""
    raise NotImplementedError


def read_snapshot(path: Path) -> tuple[HotImage, int] | None:
    """Return (image, covers_segment), or None if no snapshot exists.

    Raises ``moneta.errors.SnapshotCorruptError`` naming the file on any damage
    (bad magic, length, checksum); never returns an empty image for a damaged file.
    """
    raise NotImplementedError
