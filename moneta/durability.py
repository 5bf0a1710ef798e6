"""Crash safety for a file-backed store: store lock, write-ahead log, snapshots.

Layout inside the store directory::

    .moneta.lock            flock'd while a process has the store open
    wal/000000000042.wal    WAL segments, append-only, replayed in number order
    snapshot.bin            latest hot-tier snapshot (atomic: temp, fsync, rename)

A record is acknowledged once ``WriteAheadLog.append`` returns: its bytes are in
the kernel's page cache (copied into a segment file mapped shared, see
``moneta.log_segment``), so they survive ``kill -9`` of the process. fsync is
grouped: a background thread (``fsync_interval_s``) makes the active segment's new
records durable, retires segments filled or rotated out since the last tick (cut to
their records, fsynced) and fsyncs the directory, and ``close`` does what is left,
so power loss can cost at most the last interval; with ``fsync_interval_s=0`` every
append, rotation and new segment is synced at once (power-loss safety at a latency
cost).

Snapshot protocol (no acknowledged record can be lost to a racing append):
under the handle's lock the caller calls ``wal.rotate()`` (new appends go to the
new segment; no disk wait) and takes the hot-tier image; outside the lock it calls
``write_snapshot(..., covers_segment=<returned number>)`` and only after that
``wal.drop_through(<number>)``. Recovery reads the snapshot and replays only
segments newer than the one it covers.

Framing of one WAL record: ``u32 length | u32 crc32 | u8 kind | body``, little
endian; ``length`` counts ``kind`` and ``body``; the CRC covers the length field,
``kind`` and ``body``. Zero fill after the last record (the unused end of a mapped
segment) is the end of the log. A torn or CRC-failing *final* record of the *last*
segment is skipped with a warning (the process died mid-write, so it was never
acknowledged) and cut off the file, so later appends never sit behind garbage;
damage anywhere else raises ``WalCorruptError`` naming the file and offset.

Snapshot file: ``magic | u32 version | u32 header length | JSON header | columns
(64-byte aligned raw numpy buffers) | u32 crc32 | end magic``; the CRC covers every
byte before it. Strings (payloads, USD links) are stored as one UTF-8 blob plus a
per-row length column counted in code points, so reading decodes the blob once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import mmap
import os
import re
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np

from moneta.errors import MonetaError, MonetaResourceLockedError, SnapshotCorruptError
from moneta.log_segment import MappedSegment

logger = logging.getLogger(__name__)

LOCK_FILE_NAME = ".moneta.lock"
WAL_DIR_NAME = "wal"
SNAPSHOT_FILE_NAME = "snapshot.bin"


class WalCorruptError(MonetaError):
    """A WAL segment is damaged somewhere other than its torn tail; names the file."""


class WalTornTailWarning(UserWarning):
    """Recovery dropped an unacknowledged, partially written final WAL record."""


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


class SharedRows:
    """The rows of columns an image shares with a live table, as of the image.

    Copying the vector column for every snapshot (154 MB at 100k rows) would hold up the
    table, and so would copying it when rows move while a snapshot is being written.
    Instead an image may share its vector and id columns with the table: the table
    calls ``preserve`` with the rows it is about to overwrite (only rows the image
    covers are kept, each once, as first seen), and the snapshot writer reads through
    ``read``, which lays the kept rows over a copy of one chunk. A chunk copy and a
    ``preserve`` exclude each other, so every row read is the one the image saw.
    """

    CHUNK_BYTES = 1 << 20  # rows per chunk: a few microseconds of copying under the lock

    def __init__(self, columns: dict[str, np.ndarray]) -> None:
        lengths = {column.shape[0] for column in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"shared columns must have one length, got {sorted(lengths)}")
        self.columns = columns
        self.n = lengths.pop()
        widest = max((c[:1].nbytes for c in columns.values()), default=1)
        self.chunk_rows = max(1, self.CHUNK_BYTES // max(1, widest))
        self._lock = threading.Lock()
        # chunk number -> [(rows, {column name: their contents}), ...] in saving order
        self._kept: dict[int, list[tuple[np.ndarray, dict[str, np.ndarray]]]] = {}

    def preserve(self, rows: np.ndarray) -> None:
        """Keep the current contents of ``rows`` (call before overwriting them)."""
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[rows < self.n]
        if rows.size == 0:
            return
        chunks = rows // self.chunk_rows
        with self._lock:
            for chunk in np.unique(chunks).tolist():
                part = rows[chunks == chunk]
                kept = {name: column[part] for name, column in self.columns.items()}
                self._kept.setdefault(chunk, []).append((part, kept))

    def read(self, name: str, chunk: int, out: np.ndarray) -> np.ndarray:
        """Rows of chunk ``chunk`` of column ``name`` as of the image, copied into ``out``
        (a buffer of at least ``chunk_rows`` rows); returns the filled part of it."""
        start = chunk * self.chunk_rows
        stop = min(self.n, start + self.chunk_rows)
        filled = out[: stop - start]
        with self._lock:
            np.copyto(filled, self.columns[name][start:stop])
            # Earliest saved contents last, so they win over later saves of the same row.
            for rows, kept in reversed(self._kept.get(chunk, [])):
                filled[rows - start] = kept[name]
        return filled


@dataclass(slots=True)
class HotImage:
    """Column copy of the hot tier, as written to and read from a snapshot.

    ``shared``, when set, names columns (``vectors``, ``entity_ids``) that are views of a
    live table: read them through it, not from the arrays here, which may have moved on.
    """

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
    shared: SharedRows | None = None


def uuids_to_array(ids: Sequence[UUID]) -> np.ndarray:
    """Pack UUIDs into the ``(n, 16) uint8`` layout of ``HotImage.entity_ids``."""
    raw = b"".join(u.bytes for u in ids)
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(ids), 16).copy()


def array_to_uuids(arr: np.ndarray) -> list[UUID]:
    """Inverse of ``uuids_to_array``."""
    raw = np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    return [UUID(bytes=raw[i : i + 16]) for i in range(0, len(raw), 16)]


# --- strings as one blob -----------------------------------------------------

# Lone surrogates are legal in a Python str; "surrogatepass" keeps them lossless.
_UTF8_ERRORS = "surrogatepass"


def _pack_strings(values: Sequence[str | None]) -> tuple[np.ndarray, bytes]:
    """Lengths in code points (-1 for None) and the UTF-8 blob of all values."""
    n = len(values)
    try:  # no None (payloads): C-level passes only, so a snapshot does not hog the GIL
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)  # type: ignore[arg-type]
        text = "".join(values)  # type: ignore[arg-type]
    except TypeError:
        lengths = np.array([-1 if v is None else len(v) for v in values], dtype=np.int64)
        text = "".join(v for v in values if v is not None)
    return lengths, text.encode("utf-8", _UTF8_ERRORS)


def _unpack_strings(lengths: np.ndarray, blob: bytes | memoryview) -> list[str | None]:
    """Decode the blob once and slice it by code-point offsets."""
    text = str(blob, "utf-8", _UTF8_ERRORS)
    clipped = np.maximum(lengths, 0)
    ends = np.cumsum(clipped)
    if (int(ends[-1]) if len(ends) else 0) != len(text):
        raise ValueError("string lengths do not match the blob")
    starts = (ends - clipped).tolist()
    return [
        None if n < 0 else text[s : s + n] for s, n in zip(starts, lengths.tolist(), strict=True)
    ]


# --- store lock --------------------------------------------------------------


class StoreLock:
    """Exclusive ``flock`` on ``<dir>/.moneta.lock``; the kernel drops it when the
    process dies, so a crashed process never leaves a stale lock.

    flock belongs to the open file description, so a second ``StoreLock`` on the
    same directory in the *same* process is refused too. The holder's pid is written
    into the file only to make the refusal message useful.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE_NAME
        self._fd: int | None = None
        self._guard = threading.Lock()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock without blocking; raise MonetaResourceLockedError if held.

        Calling it again on the instance that holds the lock is a no-op.
        """
        with self._guard:
            if self._fd is not None:
                return
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_small(fd)
                os.close(fd)
                raise MonetaResourceLockedError(
                    f"store directory {self.directory} is already open by another handle "
                    f"or process (lock file {self.path}, holder pid {holder or 'unknown'})"
                ) from None
            except OSError:
                os.close(fd)
                raise
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._fd = fd

    def release(self) -> None:
        """Idempotent."""
        with self._guard:
            fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_small(fd: int) -> str:
    try:
        return os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""


# --- WAL record codec --------------------------------------------------------

_FRAME_HEAD = struct.Struct("<II")  # length, crc32
_LEN = struct.Struct("<I")
_DEPOSIT = struct.Struct("<16sddII")  # id, protected_floor, created_at, payload bytes, dim
_ATTENTION = struct.Struct("<dI")  # at, n
_COUNT = struct.Struct("<I")
_DELETE = struct.Struct("<IH")  # n, reason bytes
_MAX_RECORD = 1 << 31  # sanity bound for a length field; real records are far smaller

KIND_DEPOSIT = 1
KIND_ATTENTION = 2
KIND_ROWS_UPDATE = 3
KIND_DELETE = 4
KIND_UNPIN = 5


class _DecodeError(ValueError):
    """A CRC-valid record whose body does not parse."""


def _ids_bytes(ids: Sequence[UUID]) -> bytes:
    return b"".join(u.bytes for u in ids)


def _ids_from(raw: bytes) -> list[UUID]:
    return [UUID(bytes=raw[i : i + 16]) for i in range(0, len(raw), 16)]


def _column(values: Any, dtype: type, n: int, name: str) -> np.ndarray:
    arr = np.ascontiguousarray(values, dtype=dtype)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    return arr


def _encode_deposit(r: DepositRecord) -> list[Any]:
    vec = r.vector
    if not (
        isinstance(vec, np.ndarray)
        and vec.dtype == np.float32
        and vec.ndim == 1
        and vec.flags.c_contiguous
    ):
        vec = np.ascontiguousarray(vec, dtype=np.float32).reshape(-1)
    payload = r.payload.encode("utf-8", _UTF8_ERRORS)
    head = _DEPOSIT.pack(
        r.entity_id.bytes, r.protected_floor, r.created_at, len(payload), vec.shape[0]
    )
    return [head, payload, vec.data]


def _decode_deposit(body: memoryview) -> DepositRecord:
    raw_id, floor, created, plen, dim = _DEPOSIT.unpack_from(body, 0)
    p = _DEPOSIT.size
    _expect_size(body, p + plen + 4 * dim)
    payload = str(body[p : p + plen], "utf-8", _UTF8_ERRORS)
    vector = np.frombuffer(body, dtype=np.float32, count=dim, offset=p + plen).copy()
    return DepositRecord(UUID(bytes=raw_id), payload, vector, floor, created)


def _encode_attention(r: AttentionRecord) -> list[Any]:
    n = len(r.entity_ids)
    weights = _column(r.weights, np.float64, n, "AttentionRecord.weights")
    return [_ATTENTION.pack(r.at, n), _ids_bytes(r.entity_ids), weights.data]


def _decode_attention(body: memoryview) -> AttentionRecord:
    at, n = _ATTENTION.unpack_from(body, 0)
    p = _ATTENTION.size
    _expect_size(body, p + 24 * n)
    ids = _ids_from(bytes(body[p : p + 16 * n]))
    weights = np.frombuffer(body, dtype=np.float64, count=n, offset=p + 16 * n).copy()
    return AttentionRecord(ids, weights, at)


def _encode_rows_update(r: RowsUpdateRecord) -> list[Any]:
    n = len(r.entity_ids)
    if len(r.usd_links) != n:
        raise ValueError(f"RowsUpdateRecord.usd_links must have {n} items, got {len(r.usd_links)}")
    lengths, blob = _pack_strings(r.usd_links)
    return [
        _COUNT.pack(n),
        _ids_bytes(r.entity_ids),
        _column(r.utility, np.float64, n, "RowsUpdateRecord.utility").data,
        _column(r.attended_count, np.int64, n, "RowsUpdateRecord.attended_count").data,
        _column(r.last_evaluated, np.float64, n, "RowsUpdateRecord.last_evaluated").data,
        _column(r.state, np.int8, n, "RowsUpdateRecord.state").data,
        lengths.data,
        blob,
    ]


def _decode_rows_update(body: memoryview) -> RowsUpdateRecord:
    (n,) = _COUNT.unpack_from(body, 0)
    p = _COUNT.size
    fixed = p + n * (16 + 8 + 8 + 8 + 1 + 8)
    if len(body) < fixed:
        raise _DecodeError(f"rows-update body of {len(body)} bytes is shorter than {fixed}")
    ids = _ids_from(bytes(body[p : p + 16 * n]))
    p += 16 * n
    cols = []
    for dtype in (np.float64, np.int64, np.float64, np.int8, np.int64):
        arr = np.frombuffer(body, dtype=dtype, count=n, offset=p).copy()
        cols.append(arr)
        p += arr.nbytes
    utility, attended, last_eval, state, lengths = cols
    links = _unpack_strings(lengths, body[p:])
    return RowsUpdateRecord(ids, utility, attended, last_eval, state, links)


def _encode_delete(r: DeleteRecord) -> list[Any]:
    reason = r.reason.encode("utf-8", _UTF8_ERRORS)
    return [_DELETE.pack(len(r.entity_ids), len(reason)), reason, _ids_bytes(r.entity_ids)]


def _decode_delete(body: memoryview) -> DeleteRecord:
    n, rlen = _DELETE.unpack_from(body, 0)
    p = _DELETE.size
    _expect_size(body, p + rlen + 16 * n)
    reason = str(body[p : p + rlen], "utf-8", _UTF8_ERRORS)
    return DeleteRecord(_ids_from(bytes(body[p + rlen :])), reason)


def _encode_unpin(r: UnpinRecord) -> list[Any]:
    return [r.entity_id.bytes]


def _decode_unpin(body: memoryview) -> UnpinRecord:
    _expect_size(body, 16)
    return UnpinRecord(UUID(bytes=bytes(body)))


def _expect_size(body: memoryview, size: int) -> None:
    if len(body) != size:
        raise _DecodeError(f"record body is {len(body)} bytes, its fields need {size}")


_ENCODERS: dict[type, tuple[int, Callable[[Any], list[Any]]]] = {
    DepositRecord: (KIND_DEPOSIT, _encode_deposit),
    AttentionRecord: (KIND_ATTENTION, _encode_attention),
    RowsUpdateRecord: (KIND_ROWS_UPDATE, _encode_rows_update),
    DeleteRecord: (KIND_DELETE, _encode_delete),
    UnpinRecord: (KIND_UNPIN, _encode_unpin),
}
_DECODERS: dict[int, Callable[[memoryview], WalRecord]] = {
    KIND_DEPOSIT: _decode_deposit,
    KIND_ATTENTION: _decode_attention,
    KIND_ROWS_UPDATE: _decode_rows_update,
    KIND_DELETE: _decode_delete,
    KIND_UNPIN: _decode_unpin,
}
_KIND_BYTES = {kind: bytes([kind]) for kind in _DECODERS}


def encode_record(record: WalRecord) -> bytes:
    """One complete frame (header + kind + body)."""
    return b"".join(encode_frame(record))


def encode_frame(record: WalRecord) -> tuple[bytes, bytes]:
    """A frame as (header, kind + body): a segment copies the two pieces, so the body is
    never copied into a joined frame first."""
    try:
        kind, encode = _ENCODERS[type(record)]
    except KeyError:
        raise TypeError(
            f"record must be one of {[t.__name__ for t in _ENCODERS]}, got {type(record).__name__}"
        ) from None
    payload = b"".join([_KIND_BYTES[kind], *encode(record)])
    length = _LEN.pack(len(payload))
    return _FRAME_HEAD.pack(len(payload), zlib.crc32(payload, zlib.crc32(length))), payload


def decode_record(frame_payload: memoryview) -> WalRecord:
    """Decode ``kind | body`` (the CRC-checked part after the frame header)."""
    decoder = _DECODERS.get(frame_payload[0])
    if decoder is None:
        raise _DecodeError(f"unknown record kind {frame_payload[0]}")
    try:
        return decoder(frame_payload[1:])
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise _DecodeError(str(exc)) from exc


# --- segment scanning --------------------------------------------------------


@dataclass(slots=True)
class _Scan:
    frames: list[tuple[int, int, int]]  # (offset of kind byte, payload length, frame offset)
    valid_end: int  # bytes of complete, CRC-valid frames
    damage: str | None  # why scanning stopped before the end of the data, if it did


def _scan_frames(data: memoryview) -> _Scan:
    """Walk frames until the end or the first invalid frame."""
    frames: list[tuple[int, int, int]] = []
    off, size = 0, len(data)
    while off < size:
        if size - off < _FRAME_HEAD.size:
            return _Scan(frames, off, "incomplete frame header")
        length, crc = _FRAME_HEAD.unpack_from(data, off)
        start = off + _FRAME_HEAD.size
        if length == 0 and _all_zero(data, off):  # a mapped segment's unused end
            return _Scan(frames, off, None)
        if length == 0 or length > _MAX_RECORD:
            return _Scan(frames, off, f"invalid record length {length}")
        if start + length > size:
            return _Scan(frames, off, f"record of {length} bytes runs past the end of the file")
        if zlib.crc32(data[start : start + length], zlib.crc32(data[off : off + 4])) != crc:
            return _Scan(frames, off, "CRC mismatch")
        frames.append((start, length, off))
        off = start + length
    return _Scan(frames, off, None)


def _is_torn_tail(data: memoryview, scan: _Scan) -> bool:
    """Is the damage confined to the last frame (or to zero fill after it)?

    Appends are serialised under a lock, so a crash can tear at most the
    final frame; power loss can additionally leave zero-filled blocks after it.
    """
    off = scan.valid_end
    size = len(data)
    if size - off < _FRAME_HEAD.size:
        return True
    length, _ = _FRAME_HEAD.unpack_from(data, off)
    end = off + _FRAME_HEAD.size + length
    if 0 < length <= _MAX_RECORD and end >= size:
        return True
    rest_from = end if 0 < length <= _MAX_RECORD else off + _FRAME_HEAD.size
    return _all_zero(data, rest_from)


def _all_zero(data: memoryview, start: int) -> bool:
    return start >= len(data) or not np.frombuffer(data, np.uint8, offset=start).any()


# --- write-ahead log ---------------------------------------------------------

_SEGMENT_RE = re.compile(r"^(\d{12})\.wal$")
_PREPARED_SUFFIX = ".wal.tmp"  # a segment being prepared; never replayed
SEGMENT_BYTES = 16 << 20  # the largest segment
FIRST_SEGMENT_BYTES = 1 << 20  # segments start here and double: a small store stays small


class WriteAheadLog:
    """Segmented append-only log; thread-safe ``append``.

    ``directory`` is the store directory (segments go to ``directory/wal``; a path
    already named ``wal`` is used as-is). Segments are ``MappedSegment`` files, the
    first of ``FIRST_SEGMENT_BYTES``, each next one twice as large up to
    ``segment_bytes``: an append is a copy into the page cache, and one that does not
    fit continues in the next segment. The active segment is created lazily by the
    first ``append``/``rotate``, after the tail of the newest existing segment has been
    checked (a torn final record there is cut off with a warning), so a segment never
    continues behind garbage. ``start_after`` forces new segment numbers above a
    snapshot's ``covers_segment`` even if every segment file is gone.

    With ``fsync_interval_s > 0`` a background thread does every slow step off the
    appending threads: every interval it flushes what was appended; it populates the
    active segment's pages and prepares the next segment (preallocated, populated,
    under a temporary name until an append needs it); it retires full or rotated
    segments (cut to their records, fsynced, closed).
    """

    def __init__(
        self,
        directory: Path,
        *,
        fsync_interval_s: float = 1.0,
        start_after: int = 0,
        segment_bytes: int = SEGMENT_BYTES,
    ) -> None:
        interval = float(fsync_interval_s)
        if not math.isfinite(interval) or interval < 0:
            raise ValueError(
                f"fsync_interval_s must be a finite number >= 0, got {fsync_interval_s!r}"
            )
        if int(start_after) < 0:
            raise ValueError(f"start_after must be >= 0, got {start_after!r}")
        if (
            isinstance(segment_bytes, bool)
            or not isinstance(segment_bytes, int)
            or (segment_bytes < mmap.PAGESIZE)
        ):
            raise ValueError(
                f"segment_bytes must be an int >= {mmap.PAGESIZE}, got {segment_bytes!r}"
            )
        directory = Path(directory)
        self.directory = directory if directory.name == WAL_DIR_NAME else directory / WAL_DIR_NAME
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsync_interval_s = interval
        self.segment_bytes = segment_bytes
        self._capacity = min(FIRST_SEGMENT_BYTES, segment_bytes)  # of the next new segment
        self._start_after = int(start_after)
        self._lock = threading.Lock()
        self._segment: MappedSegment | None = None
        self._active: int | None = None
        self._next: MappedSegment | None = None  # prepared by the background thread
        self._next_path = self.directory / f".next-{os.getpid()}-{id(self):x}{_PREPARED_SUFFIX}"
        self._retired: list[MappedSegment] = []  # full or rotated, awaiting retire()
        self._dir_dirty = False  # a segment was created since the last directory fsync
        self._closed = False
        self._tail_checked = False
        self._stop = threading.Event()
        self._wake = threading.Event()  # a segment was used up or rotated: prepare the next
        self._syncer: threading.Thread | None = None

    # -- paths ------------------------------------------------------------

    def segment_path(self, number: int) -> Path:
        return self.directory / f"{number:012d}.wal"

    def segments(self) -> list[int]:
        """Numbers of the segment files on disk, ascending."""
        found = []
        for entry in os.scandir(self.directory):
            match = _SEGMENT_RE.match(entry.name)
            if match:
                found.append(int(match.group(1)))
        return sorted(found)

    @property
    def active_segment(self) -> int | None:
        """Number of the segment appends go to, or None before the first append."""
        return self._active

    @property
    def active_bytes(self) -> int:
        """Bytes appended to the active segment (a hint for when to snapshot)."""
        segment = self._segment
        return 0 if segment is None else segment.size

    # -- writing ----------------------------------------------------------

    def append(self, record: WalRecord) -> None:
        """Encode the record and copy it into the active segment."""
        head, body = encode_frame(record)
        size = len(head) + len(body)
        with self._lock:
            segment = self._segment
            if segment is None or segment.size + size > segment.capacity:
                segment = self._next_segment_locked(size)
            segment.append(head, body)
            if self.fsync_interval_s == 0:
                segment.flush(segment.size)
        if self._syncer is None and self.fsync_interval_s > 0:
            self._start_syncer()

    def rotate(self) -> int:
        """Close the current segment and open the next; return the closed segment's number.

        Runs under the caller's lock at a checkpoint, so it does no disk wait: the
        background thread retires the closed segment. Its records were acknowledged
        already; the snapshot that covers them is fsynced on its own. With
        ``fsync_interval_s=0`` everything is synced here instead.
        """
        with self._lock:
            if self._segment is None:
                self._next_segment_locked(0)
            closed = self._active
            assert closed is not None
            self._next_segment_locked(0)
        if self._syncer is None and self.fsync_interval_s > 0:
            self._start_syncer()
        return closed

    def _next_segment_locked(self, frame_bytes: int) -> MappedSegment:
        """Retire the active segment (if any) and make the next one active."""
        if self._closed:
            raise RuntimeError(f"write-ahead log in {self.directory} is closed")
        if self._active is None:
            self._check_tail()
            existing = self.segments()
            number = max(existing[-1] if existing else 0, self._start_after) + 1
        else:
            number = self._active + 1
        old, prepared = self._segment, self._next
        self._segment = None
        if old is not None:
            if self.fsync_interval_s == 0:
                old.retire()
            else:
                self._retired.append(old)
        path = self.segment_path(number)
        segment = None
        if prepared is not None and prepared.capacity >= frame_bytes:
            self._next = None
            try:
                os.rename(prepared.path, path)
                prepared.path = path
                segment = prepared
            except OSError:
                prepared.discard()
        if segment is None:
            segment = MappedSegment(path, max(self._take_capacity(), frame_bytes))
        self._segment, self._active = segment, number
        if self.fsync_interval_s == 0:
            _fsync_dir(self.directory)
        else:
            self._dir_dirty = True
            self._wake.set()
        return segment

    def _take_capacity(self) -> int:
        capacity = self._capacity
        self._capacity = min(2 * capacity, self.segment_bytes)
        return capacity

    def sync(self) -> None:
        """Make durable whatever was appended since the last sync: the active segment's
        new records, full or rotated segments (then closed) and the directory."""
        with self._lock:
            active = self._segment
            end = 0 if active is None else active.size
            retired, self._retired = self._retired, []
            sync_dir, self._dir_dirty = self._dir_dirty, False
        try:
            for segment in retired:
                segment.retire()
            if active is not None:
                active.flush(end)
            if sync_dir:
                _fsync_dir(self.directory)
        except OSError:
            with self._lock:
                # retire() closes its file even when it fails: the segments still open
                # were not reached, and the next sync tries them again.
                self._retired[:0] = [segment for segment in retired if segment.fd >= 0]
                self._dir_dirty = self._dir_dirty or sync_dir
            raise

    def _prepare(self) -> None:
        """Populate the active segment and have the next one ready (background thread)."""
        with self._lock:
            active = self._segment
            fill = active is not None and not active.populated
            need_next = self._next is None and not self._closed
            capacity = self._take_capacity() if need_next else 0
        if fill:
            assert active is not None
            active.populate()
        if need_next:
            with contextlib.suppress(FileNotFoundError):
                self._next_path.unlink()  # a preparation cut short by an error
            prepared = MappedSegment(self._next_path, capacity)
            prepared.populate()
            with self._lock:
                if self._next is None and not self._closed:
                    self._next, prepared = prepared, None
            if prepared is not None:
                prepared.discard()

    def drop_through(self, segment: int) -> None:
        """Delete segments numbered <= ``segment`` (they are covered by a snapshot)."""
        with self._lock:
            if self._active is not None and segment >= self._active:
                raise ValueError(
                    f"segment must be below the active segment {self._active}, got {segment}"
                )
            # New segments must stay above everything a snapshot may cover.
            self._start_after = max(self._start_after, segment)
        # Covered segments are never appended to again, so unlinking them (and the
        # directory fsync) needs no lock: appends go on meanwhile.
        removed = 0
        for number in self.segments():
            if number <= segment:
                with contextlib.suppress(FileNotFoundError):
                    self.segment_path(number).unlink()
                removed += 1
        if removed:
            _fsync_dir(self.directory)

    def close(self) -> None:
        """Flush, cut every segment to its records, fsync and close. Idempotent."""
        self._stop.set()
        self._wake.set()
        syncer = self._syncer
        if syncer is not None and syncer is not threading.current_thread():
            syncer.join()
        with self._lock:
            self._closed = True
            active, self._segment = self._segment, None
            prepared, self._next = self._next, None
            retired, self._retired = self._retired, []
            sync_dir, self._dir_dirty = self._dir_dirty, False
        if prepared is not None:
            prepared.discard()
        failed: list[OSError] = []
        for segment in [*retired, active]:
            if segment is not None:
                try:
                    segment.retire()  # closes its file even when a step fails
                except OSError as exc:
                    failed.append(exc)
        if sync_dir:
            _fsync_dir(self.directory)
        if failed:
            raise failed[0]

    def __enter__(self) -> WriteAheadLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_syncer(self) -> None:
        with self._lock:
            if self._syncer is not None or self._closed:
                return
            self._syncer = threading.Thread(
                target=self._sync_loop, name=f"moneta-wal-fsync[{self.directory}]", daemon=True
            )
            self._syncer.start()

    def _sync_loop(self) -> None:
        due = time.monotonic() + self.fsync_interval_s
        while not self._stop.is_set():
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._prepare()
            except Exception:
                logger.exception("preparing a write-ahead log segment in %s failed", self.directory)
            if time.monotonic() >= due:
                due = time.monotonic() + self.fsync_interval_s
                try:
                    self.sync()
                except Exception:
                    logger.exception("fsync of the write-ahead log in %s failed", self.directory)

    # -- recovery ---------------------------------------------------------

    def replay(self, after_segment: int) -> Iterator[WalRecord]:
        """Yield records of segments numbered > ``after_segment`` in order.

        Call it before appending. The tail check runs at the call (not at the first
        ``next``): a torn final record of the newest segment is reported with
        ``WalTornTailWarning`` and cut off the file.
        """
        with self._lock:
            self._check_tail()
            numbers = [n for n in self.segments() if n > after_segment]
        return self._iter_segments(numbers)

    def _iter_segments(self, numbers: list[int]) -> Iterator[WalRecord]:
        for number in numbers:
            path = self.segment_path(number)
            data = memoryview(path.read_bytes())
            scan = _scan_frames(data)
            if scan.damage is not None:
                raise WalCorruptError(
                    f"write-ahead log segment {path} is corrupt at byte offset "
                    f"{scan.valid_end}: {scan.damage}"
                )
            for start, length, frame_off in scan.frames:
                try:
                    yield decode_record(data[start : start + length])
                except _DecodeError as exc:
                    raise WalCorruptError(
                        f"write-ahead log segment {path} has an undecodable record at byte "
                        f"offset {frame_off}: {exc}"
                    ) from exc

    def _check_tail(self) -> None:
        """Cut a torn final record, and the zero fill of a segment that was never
        retired, off the newest segment; delete segments left half prepared (once per
        instance)."""
        if self._tail_checked:
            return
        for entry in os.scandir(self.directory):
            if entry.name.endswith(_PREPARED_SUFFIX) and entry.path != str(self._next_path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        existing = [n for n in self.segments() if n != self._active]
        if existing:
            path = self.segment_path(existing[-1])
            data = memoryview(path.read_bytes())
            scan = _scan_frames(data)
            if scan.damage is not None:
                if not _is_torn_tail(data, scan):
                    raise WalCorruptError(
                        f"write-ahead log segment {path} is corrupt at byte offset "
                        f"{scan.valid_end}: {scan.damage}, and data follows the damage"
                    )
                message = (
                    f"write-ahead log segment {path}: dropped a torn final record at byte "
                    f"offset {scan.valid_end} ({scan.damage}; {len(data) - scan.valid_end} "
                    f"bytes, never acknowledged); {len(scan.frames)} earlier records intact"
                )
                logger.warning(message)
                warnings.warn(message, WalTornTailWarning, stacklevel=3)
            if scan.valid_end < len(data):
                with open(path, "r+b") as f:
                    f.truncate(scan.valid_end)
                    f.flush()
                    os.fsync(f.fileno())
        self._tail_checked = True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- snapshots ---------------------------------------------------------------

SNAPSHOT_MAGIC = b"MONETASN"
SNAPSHOT_END = b"MNEND\x00\x00\x00"
SNAPSHOT_VERSION = 1
_SNAP_PREFIX = struct.Struct("<8sII")  # magic, version, header length
_SNAP_TRAILER = struct.Struct("<I8s")  # crc32 of everything before, end magic
_ALIGN = 64

# name -> (dtype, trailing shape given dim); order is the file order.
_SNAP_COLUMNS: dict[str, tuple[str, Callable[[int], tuple[int, ...]]]] = {
    "entity_ids": ("uint8", lambda dim: (16,)),
    "vectors": ("float32", lambda dim: (dim,)),
    "utility": ("float64", lambda dim: ()),
    "attended_count": ("int64", lambda dim: ()),
    "protected_floor": ("float64", lambda dim: ()),
    "last_evaluated": ("float64", lambda dim: ()),
    "state": ("int8", lambda dim: ()),
    "payload_lengths": ("int64", lambda dim: ()),
    "usd_link_lengths": ("int64", lambda dim: ()),
}
_SNAP_BLOBS = ("payload_blob", "usd_link_blob")
_snapshot_locks: dict[Path, threading.Lock] = {}
_snapshot_locks_guard = threading.Lock()


def _snapshot_lock(path: Path) -> threading.Lock:
    key = path.resolve()
    with _snapshot_locks_guard:
        return _snapshot_locks.setdefault(key, threading.Lock())


def _image_columns(image: HotImage) -> tuple[int, int, dict[str, np.ndarray | bytes]]:
    """Validate the image and return (n, dim, buffers in file order)."""
    vectors = np.ascontiguousarray(image.vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"HotImage.vectors must be 2-D (n, dim), got shape {vectors.shape}")
    n, dim = vectors.shape
    if len(image.payloads) != n or len(image.usd_links) != n:
        raise ValueError(
            f"HotImage.payloads and usd_links must have {n} items, "
            f"got {len(image.payloads)} and {len(image.usd_links)}"
        )
    payload_lengths, payload_blob = _pack_strings(image.payloads)
    if (payload_lengths < 0).any():
        raise ValueError("HotImage.payloads must all be str, found None")
    link_lengths, link_blob = _pack_strings(image.usd_links)
    given = {
        "entity_ids": image.entity_ids,
        "vectors": vectors,
        "utility": image.utility,
        "attended_count": image.attended_count,
        "protected_floor": image.protected_floor,
        "last_evaluated": image.last_evaluated,
        "state": image.state,
        "payload_lengths": payload_lengths,
        "usd_link_lengths": link_lengths,
    }
    buffers: dict[str, np.ndarray | bytes] = {}
    for name, (dtype, tail) in _SNAP_COLUMNS.items():
        arr = np.ascontiguousarray(given[name], dtype=dtype)
        if arr.shape != (n, *tail(dim)):
            raise ValueError(f"HotImage.{name} must have shape {(n, *tail(dim))}, got {arr.shape}")
        buffers[name] = arr
    buffers["payload_blob"] = payload_blob
    buffers["usd_link_blob"] = link_blob
    return n, dim, buffers


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def write_snapshot(path: Path, image: HotImage, *, covers_segment: int) -> None:
    """Atomically replace ``path``: write a temp file, fsync it, rename, fsync the dir."""
    path = Path(path)
    n, dim, buffers = _image_columns(image)
    try:
        meta_json = json.loads(json.dumps(image.meta, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"HotImage.meta must be JSON-serialisable: {exc}") from exc

    # Column offsets depend on the header length, which contains them: fix the
    # header size first with placeholder offsets of the final width.
    def header_bytes(offsets: dict[str, int]) -> bytes:
        return json.dumps(
            {
                "covers_segment": int(covers_segment),
                "n": n,
                "dim": dim,
                "meta": meta_json,
                "columns": {
                    name: {"offset": offsets[name], "nbytes": len(_byte_view(buf))}
                    for name, buf in buffers.items()
                },
            },
            separators=(",", ":"),
        ).encode()

    placeholder = dict.fromkeys(buffers, 10**15)
    body_start = _aligned(_SNAP_PREFIX.size + len(header_bytes(placeholder)))
    offsets: dict[str, int] = {}
    cursor = body_start
    for name, buf in buffers.items():
        offsets[name] = cursor
        cursor = _aligned(cursor + len(_byte_view(buf)))
    header = header_bytes(offsets).ljust(body_start - _SNAP_PREFIX.size, b" ")

    shared = image.shared
    tmp = path.with_name(path.name + ".tmp")
    with _snapshot_lock(path):
        renamed = False
        try:
            with open(tmp, "wb", buffering=0) as f:
                crc = _write_crc(
                    f, _SNAP_PREFIX.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, len(header))
                )
                crc = _write_crc(f, header, crc)
                written = body_start
                for name, buf in buffers.items():
                    crc = _write_crc(f, bytes(offsets[name] - written), crc)
                    view = _byte_view(buf)
                    if shared is not None and name in shared.columns:
                        crc = _write_shared(f, shared, name, crc)
                    else:
                        crc = _write_crc(f, view, crc)
                    written = offsets[name] + len(view)
                crc = _write_crc(f, bytes(cursor - written), crc)
                _write_all(f, _SNAP_TRAILER.pack(crc, SNAPSHOT_END))
                os.fsync(f.fileno())
            os.replace(tmp, path)
            renamed = True
        finally:
            if not renamed:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        _fsync_dir(path.parent)


def _byte_view(buf: np.ndarray | bytes) -> memoryview:
    """Flat byte view without copying (``memoryview.cast`` rejects zero-size shapes)."""
    if isinstance(buf, np.ndarray):
        return memoryview(buf.reshape(-1).view(np.uint8))
    return memoryview(buf)


def _write_shared(f: Any, shared: SharedRows, name: str, crc: int) -> int:
    """Write a shared column chunk by chunk as of the image (one reused buffer, so the
    copy faults in no fresh pages per chunk)."""
    column = shared.columns[name]
    buffer = np.empty((shared.chunk_rows, *column.shape[1:]), dtype=column.dtype)
    for chunk in range(-(-shared.n // shared.chunk_rows)):
        crc = _write_crc(f, _byte_view(shared.read(name, chunk, buffer)), crc)
    return crc


def _write_crc(f: Any, data: bytes | memoryview, crc: int = 0) -> int:
    _write_all(f, data)
    return zlib.crc32(data, crc)


def _write_all(f: Any, data: bytes | memoryview) -> None:
    view = data if isinstance(data, memoryview) else memoryview(data)
    while view:
        n = f.write(view)
        view = view[n:]


def read_snapshot(path: Path) -> tuple[HotImage, int] | None:
    """Return (image, covers_segment), or None if no snapshot exists.

    Raises ``moneta.errors.SnapshotCorruptError`` naming the file on any damage
    (bad magic, length, checksum); never returns an empty image for a damaged file.
    The numeric columns are views into a private (copy-on-write) memory map of the
    file: reading costs one checksum pass, not a copy. Snapshots are replaced by
    rename, never rewritten in place, so the mapped file never changes under them.
    """
    path = Path(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed right below
    except FileNotFoundError:
        return None
    with f:
        size = os.fstat(f.fileno()).st_size
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else b""
    buf = np.frombuffer(mapped, dtype=np.uint8)
    try:
        return _parse_snapshot(buf, memoryview(buf))
    except SnapshotCorruptError as exc:
        raise SnapshotCorruptError(f"snapshot {path} is corrupt: {exc}") from None
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as exc:
        raise SnapshotCorruptError(f"snapshot {path} is corrupt: {exc}") from exc


def _parse_snapshot(buf: np.ndarray, view: memoryview) -> tuple[HotImage, int]:
    size = len(buf)
    if size < _SNAP_PREFIX.size + _SNAP_TRAILER.size:
        raise SnapshotCorruptError(f"file is {size} bytes, too short for a snapshot")
    magic, version, header_len = _SNAP_PREFIX.unpack_from(view, 0)
    if magic != SNAPSHOT_MAGIC:
        raise SnapshotCorruptError(f"bad magic {magic!r}")
    if version != SNAPSHOT_VERSION:
        raise SnapshotCorruptError(f"unsupported version {version}")
    crc, end = _SNAP_TRAILER.unpack_from(view, size - _SNAP_TRAILER.size)
    if end != SNAPSHOT_END:
        raise SnapshotCorruptError("missing end marker (truncated?)")
    if zlib.crc32(view[: size - _SNAP_TRAILER.size]) != crc:
        raise SnapshotCorruptError("checksum mismatch")
    header = json.loads(bytes(view[_SNAP_PREFIX.size : _SNAP_PREFIX.size + header_len]))
    n, dim = int(header["n"]), int(header["dim"])
    specs = header["columns"]
    data_end = size - _SNAP_TRAILER.size

    def region(name: str) -> tuple[int, int]:
        off, nbytes = int(specs[name]["offset"]), int(specs[name]["nbytes"])
        if off < 0 or nbytes < 0 or off + nbytes > data_end:
            raise SnapshotCorruptError(f"column {name} lies outside the file")
        return off, nbytes

    cols: dict[str, np.ndarray] = {}
    for name, (dtype, tail) in _SNAP_COLUMNS.items():
        off, nbytes = region(name)
        shape = (n, *tail(dim))
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if nbytes != expected:
            raise SnapshotCorruptError(f"column {name} has {nbytes} bytes, expected {expected}")
        cols[name] = buf[off : off + nbytes].view(dtype).reshape(shape)
    blobs = {}
    for name in _SNAP_BLOBS:
        off, nbytes = region(name)
        blobs[name] = view[off : off + nbytes]
    payloads = _unpack_strings(cols["payload_lengths"], blobs["payload_blob"])
    links = _unpack_strings(cols["usd_link_lengths"], blobs["usd_link_blob"])
    image = HotImage(
        entity_ids=cols["entity_ids"],
        vectors=cols["vectors"],
        utility=cols["utility"],
        attended_count=cols["attended_count"],
        protected_floor=cols["protected_floor"],
        last_evaluated=cols["last_evaluated"],
        state=cols["state"],
        payloads=payloads,  # type: ignore[arg-type]  # lengths >= 0: no None
        usd_links=links,
        meta=header["meta"],
    )
    return image, int(header["covers_segment"])
