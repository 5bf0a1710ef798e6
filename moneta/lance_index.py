"""``VectorIndex`` backed by LanceDB: the persistent vector authority of a file store.

One LanceDB table (``memories``) in the store's ``vectors/`` directory holds one row
per entity: its id, vector (``fixed_size_list<float32>[dim]``) and the Memory fields.
What exists is what this table holds; the embedding dimension is the table's
vector width, so it is fixed by the first upsert and survives reopening.

Writes never pay a LanceDB commit on the caller's thread. ``upsert`` and ``delete``
only buffer; a flusher thread group-commits the buffer when it reaches
``commit_every`` records or every ``commit_interval_s`` seconds, and ``commit()``
(the handle's checkpoint, sleep pass and close) flushes it synchronously. Every
read merges the buffer (and the batch being committed) over the table, so buffered
writes are visible at once. A commit writes each entity's latest buffered
operation: deletes, then appends of new ids (``add``), then one ``merge_insert``
for ids the table already holds — idempotent, so replaying a WAL re-commits
without duplicate rows. Which ids the table holds is kept in memory (16 bytes per
row, loaded when the index opens), so a group commit never has to query the table.

A second vector column, ``ranked``, makes the weighted search (the handle's cold
ranking, cosine x utility, over consolidated rows, whose utility is frozen) a cosine
search. A consolidated row stores ``[u * unit vector, sqrt(1 - u^2), 0...]``: a unit
vector whose cosine with ``[unit query, 0...]`` is exactly u x cosine, so the ranking
is a nearest-neighbour search over unit vectors, which RaBitQ codes rank well and
fast (a dot-product search over vectors of different lengths needed 8-bit scalar
codes, whose distance computation was most of a query). Zeros pad the width to a
multiple of 8 (IVF_RQ's rule). Every other row's stored utility decays and is stale,
so it is written with a utility of ``UNRANKED_UTILITY``: it scores about 0 and stays
out of the partitions a query probes, and its vector still differs from its
neighbours' (identical vectors make LanceDB's partition splitting fail and leave a
second index delta behind). A table written without ``ranked``, or with another
layout of it, is rewritten once when the index opens (its indices rebuilt later).

Search is exact (flat) until the table holds ``ann_threshold`` consolidated rows (the
only rows the handle searches); from then on ``maintain()`` keeps IVF_RQ indices
(cosine) on ``vector`` and ``ranked`` over every row, retrained when the consolidated
rows have doubled since the last training. Queries use them with a refine
step (exact re-ranking of the candidates) and still scan rows not yet indexed, so a
new row is found before the index covers it.
``maintain()`` also compacts fragments, folds new rows into every index and deletes
files of old table versions. The writer does the same every ``compact_every`` group
commits, so fragments and versions stay bounded between sleep passes however small
the commits: every LanceDB commit writes a manifest listing every fragment, and its
auto-cleanup reads every version's manifest, so unbounded counts made each commit
slower than the last.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.background_loop import LOOP
from lancedb.index import Bitmap, BTree, IvfRq

from moneta import validation
from moneta.protocols import VectorRecord
from moneta.types import RANKED_STATES, EntityState

logger = logging.getLogger(__name__)

TABLE_NAME = "memories"
META_FILE = "moneta_index.json"
VECTOR_COLUMN = "vector"
ID_INDEX = "id_idx"
STATE_INDEX = "state_idx"
VECTOR_INDEX = "vector_idx"
RANKED_COLUMN = "ranked"
RANKED_INDEX = "ranked_idx"
DEFAULT_COMMIT_EVERY = 1024
DEFAULT_COMMIT_INTERVAL_S = 1.0
DEFAULT_ANN_THRESHOLD = 10_000
# Query knobs of the ANN index: partitions probed, and how many candidates per
# wanted result are re-ranked with exact distances. Each candidate is a random read
# of its vector, which on a store larger than the page cache is a disk read.
DEFAULT_NPROBES = 20
DEFAULT_REFINE_FACTOR = 3
# Bits per dimension of the RaBitQ codes. With 4, the codes' own ranking is close to
# exact (handle recall@5 1.0 at 1M cold rows with 2 candidates per result), so a
# query re-reads 3 vectors per result instead of the 10 that 1-bit codes needed for
# recall 0.99; the codes take 4 x the memory (196 MB per index at 1M rows of 384).
RQ_BITS = 4
# IVF partitions of about this many rows: a query probes `nprobes` of them, so this
# bounds the codes it compares (LanceDB's default made a query over 110k rows compare
# all of them, 32 of its 46 ms). It is given as the index's target partition size, not
# a partition count, because ``optimize`` re-balances partitions towards that target
# (a count alone was undone: 107 partitions became 4). Training samples this many
# rows per partition (LanceDB's default is 256), which keeps training time down at 1M.
ROWS_PER_PARTITION = 1024
IVF_SAMPLE_RATE = 64
# Each compaction that folds new rows into an ANN index adds a delta index. A query
# searches every delta, and fragments covered by different deltas are never merged,
# so past this many the sleep pass retrains the indices over the whole table.
MAX_ANN_DELTAS = 16
# The utility a row that is not consolidated is ranked with (see the module docstring).
UNRANKED_UTILITY = 1e-3
_IN_CHUNK = 1000  # ids per `id IN (...)` filter
_OPTIMIZE_BEFORE_UPDATE = 64  # commits after which an update first compacts
# Group commits between two compactions on the writer: each LanceDB commit writes a
# manifest listing every fragment and version, so both are kept this small.
DEFAULT_COMPACT_EVERY = 128
# LanceDB caches the metadata of every table version it has read (manifests, fragment
# and index metadata); with a version per group commit the default cache grew past
# 1 GB over 20,000 commits. Index partitions have their own, default-sized cache.
METADATA_CACHE_BYTES = 64 << 20
_FIELDS = (
    "id",
    VECTOR_COLUMN,
    "payload",
    "state",
    "utility",
    "attended_count",
    "protected_floor",
    "last_evaluated",
    "usd_link",
)


def table_schema(dim: int) -> pa.Schema:
    """Arrow schema of a record (what ``bulk_append`` takes); ``id`` leads so
    merge_insert can use its index. The table adds ``ranked`` (``stored_schema``)."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field(VECTOR_COLUMN, pa.list_(pa.float32(), dim), nullable=False),
            pa.field("payload", pa.string(), nullable=False),
            pa.field("state", pa.int8(), nullable=False),
            pa.field("utility", pa.float64(), nullable=False),
            pa.field("attended_count", pa.int64(), nullable=False),
            pa.field("protected_floor", pa.float64(), nullable=False),
            pa.field("last_evaluated", pa.float64(), nullable=False),
            pa.field("usd_link", pa.string(), nullable=True),
        ]
    )


def ranked_width(dim: int) -> int:
    """Width of ``ranked``: the vector, the utility's complement, zeros up to a multiple
    of 8 (IVF_RQ indexes only such widths)."""
    return (dim + 1 + 7) // 8 * 8


def stored_schema(dim: int) -> pa.Schema:
    """Arrow schema of the table: the record columns plus ``ranked``."""
    return table_schema(dim).append(
        pa.field(RANKED_COLUMN, pa.list_(pa.float32(), ranked_width(dim)), nullable=False)
    )


def ranked_vectors(vectors: np.ndarray, utility: np.ndarray, states: np.ndarray) -> np.ndarray:
    """Per row ``[u * unit vector, sqrt(1 - u^2), 0...]`` (float32, unit length), u the
    stored utility of a consolidated row and ``UNRANKED_UTILITY`` for any other state:
    its cosine with ``ranked_query(q)`` is u x cosine(q, vector). A zero vector scores 0."""
    vectors = np.asarray(vectors, dtype=np.float32)
    rows, dim = vectors.shape
    utility = np.where(
        np.asarray(states) == int(EntityState.CONSOLIDATED),
        np.clip(np.asarray(utility, dtype=np.float64), 0.0, 1.0),
        UNRANKED_UTILITY,
    )
    norms = np.linalg.norm(vectors, axis=1)
    scale = np.divide(utility, norms, out=np.zeros(rows, dtype=np.float64), where=norms > 0)
    out = np.zeros((rows, ranked_width(dim)), dtype=np.float32)
    np.multiply(vectors, scale[:, None], out=out[:, :dim], casting="unsafe")
    out[:, dim] = np.sqrt(1.0 - utility * utility)
    return out


def ranked_query(query: np.ndarray) -> np.ndarray:
    """A unit query padded to the width of ``ranked`` (see ``ranked_vectors``)."""
    out = np.zeros(ranked_width(query.size), dtype=np.float32)
    out[: query.size] = query
    return out


def _ranked_array(vectors: np.ndarray, utility: Any, states: Any) -> pa.FixedSizeListArray:
    ranked = ranked_vectors(vectors, utility, states)
    values = pa.array(ranked.ravel(), pa.float32())
    return pa.FixedSizeListArray.from_arrays(values, ranked.shape[1])


def _with_ranked(batch: pa.RecordBatch | pa.Table, dim: int) -> pa.RecordBatch | pa.Table:
    """Append the ``ranked`` column computed from ``vector``, ``utility`` and ``state``."""
    column = batch.column(VECTOR_COLUMN)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False)
    vectors = flat.reshape(-1, dim)
    utility = batch.column("utility").to_numpy(zero_copy_only=False)
    states = batch.column("state").to_numpy(zero_copy_only=False)
    array = _ranked_array(vectors, utility, states)
    return batch.append_column(stored_schema(dim).field(RANKED_COLUMN), array)


@dataclass(frozen=True, slots=True)
class TableStats:
    """On-disk shape of the table (what compaction and indexing change)."""

    rows: int
    fragments: int
    small_fragments: int
    data_bytes: int
    disk_bytes: int
    versions: int
    indices: tuple[str, ...]
    ann_indexed: bool
    ann_deltas: int = 0  # delta indices of the weighted ANN index (see MAX_ANN_DELTAS)


class _ReadWriteLock:
    """Many readers or one writer: searches share it; deleting old version files excludes
    them, because a search still reading an older version would fail mid-read."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class _IdSet:
    """Ids the table holds, kept in memory so a group commit never queries the table to
    tell inserts from updates (that query would scan every not-yet-indexed fragment).

    A sorted array of 16-byte ids (16 MB per million) plus small sets of changes since
    the last ``rebuild``.
    """

    def __init__(self, base: np.ndarray) -> None:
        self._base = np.sort(base)
        self._added: set[bytes] = set()
        self._removed: set[bytes] = set()

    @classmethod
    def from_column(cls, ids: pa.ChunkedArray | pa.Array) -> _IdSet:
        return cls(_id_bytes(ids))

    def __contains__(self, entity_id: UUID) -> bool:
        return self.contains_many([entity_id])[0]

    def __len__(self) -> int:
        return int(self._base.size) + len(self._added) - len(self._removed)

    def contains_many(self, entity_ids: Sequence[UUID]) -> list[bool]:
        """Membership of many ids with one binary search over the sorted array."""
        keys = [e.bytes for e in entity_ids]
        base = self._base
        if base.size and keys:
            probe = np.array(keys, dtype="S16")
            pos = np.minimum(np.searchsorted(base, probe), base.size - 1)
            in_base = (base[pos] == probe).tolist()
        else:
            in_base = [False] * len(keys)
        added, removed = self._added, self._removed
        return [k in added or (b and k not in removed) for k, b in zip(keys, in_base, strict=True)]

    def add_absent(self, entity_ids: Iterable[UUID]) -> None:
        """Record ids that were not held (checked by the caller) as held now."""
        for entity_id in entity_ids:
            key = entity_id.bytes
            if key in self._removed:
                self._removed.discard(key)
            else:
                self._added.add(key)

    def discard_present(self, entity_ids: Iterable[UUID]) -> None:
        """Record ids that were held (checked by the caller) as gone now."""
        for entity_id in entity_ids:
            key = entity_id.bytes
            if key in self._added:
                self._added.discard(key)
            else:
                self._removed.add(key)

    def extend(self, keys: np.ndarray) -> None:
        """Add many ids known to be new (a bulk load)."""
        self._base = np.sort(np.concatenate([self._base, keys.astype("S16")]))

    def rebuild(self) -> None:
        """Fold the change sets into the sorted array."""
        base = self._base
        if self._removed:
            gone = np.array(sorted(self._removed), dtype="S16")
            base = base[~np.isin(base, gone)]
        if self._added:
            base = np.concatenate([base, np.array(list(self._added), dtype="S16")])
        self._base = np.sort(base)
        self._added.clear()
        self._removed.clear()


_HEX_COLUMNS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


def _id_strings(ids: Sequence[UUID]) -> pa.StringArray:
    """UUIDs → their canonical strings, in bulk (``str(UUID)`` is Python code: 1.8 ms
    of every 1,024-row group commit, which holds the GIL a deposit waits for)."""
    n = len(ids)
    hexed = bytes.hex(b"".join([u.bytes for u in ids])).encode("ascii")
    chars = np.full((n, 36), ord("-"), dtype=np.uint8)
    chars[:, _HEX_COLUMNS] = np.frombuffer(hexed, dtype=np.uint8).reshape(n, 32)
    offsets = np.arange(0, 36 * (n + 1), 36, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars))


def _id_bytes(ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Canonical uuid strings (36 chars) → 16-byte keys, without a Python loop per id."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks else pa.array([], pa.string())
    if len(ids) == 0:
        return np.empty(0, dtype="S16")
    hexes = pc.replace_substring(ids, "-", "")
    if not pc.all(pc.equal(pc.utf8_length(hexes), 32)).as_py():
        raise ValueError("the vector table holds an id that is not a canonical uuid string")
    fixed = hexes.cast(pa.binary(32))
    start = fixed.offset * 32
    data = fixed.buffers()[1].to_pybytes()[start : start + 32 * len(fixed)]
    raw = bytes.fromhex(data.decode("ascii"))
    return np.frombuffer(raw, dtype="S16").copy()


class LanceVectorIndex:
    """The persistent ``VectorIndex`` of a file store (see the module docstring)."""

    persistent = True

    def __init__(
        self,
        directory: Path | str,
        *,
        dim: int | None = None,
        commit_every: int = DEFAULT_COMMIT_EVERY,
        commit_interval_s: float = DEFAULT_COMMIT_INTERVAL_S,
        ann_threshold: int = DEFAULT_ANN_THRESHOLD,
        nprobes: int = DEFAULT_NPROBES,
        refine_factor: int = DEFAULT_REFINE_FACTOR,
        compact_every: int = DEFAULT_COMPACT_EVERY,
    ) -> None:
        _check_int("dim", dim, 1, allow_none=True)
        _check_int("commit_every", commit_every, 1)
        _check_int("ann_threshold", ann_threshold, 1)
        _check_int("nprobes", nprobes, 1)
        _check_int("refine_factor", refine_factor, 1)
        _check_int("compact_every", compact_every, 1)
        if not isinstance(commit_interval_s, int | float) or not commit_interval_s > 0:
            raise ValueError(f"commit_interval_s must be a number > 0, got {commit_interval_s!r}")
        self._directory = Path(directory)
        self._directory.mkdir(parents=True, exist_ok=True)
        self._commit_every = commit_every
        self._commit_interval_s = float(commit_interval_s)
        self._ann_threshold = ann_threshold
        self._nprobes = nprobes
        self._refine_factor = refine_factor
        self._compact_every = compact_every
        self._lock = threading.Lock()  # buffers, dim, closed flag
        self._commit_lock = threading.Lock()  # one writer of the table at a time
        self._maintain_lock = threading.Lock()
        self._files = _ReadWriteLock()
        self._pending: dict[UUID, VectorRecord | None] = {}  # None = buffered delete
        self._inflight: dict[UUID, VectorRecord | None] = {}  # being committed
        self._closed = False
        self.commits = 0
        session = lancedb.Session(metadata_cache_size_bytes=METADATA_CACHE_BYTES)
        self._db = lancedb.connect(str(self._directory), session=session)
        self._table: Any = None
        self._known = _IdSet(np.empty(0, dtype="S16"))
        self._commits_since_optimize = 0
        self._ann = False
        self._scalar_ready = False
        # False only while the index provably holds no consolidated row: then a
        # search for them returns at once instead of a LanceDB search that finds
        # nothing (~50 ms over 100k hot rows the state index does not cover yet).
        # Deletes never clear it; a stale True only costs a search.
        self._may_hold_ranked = False
        self.table_searches = 0
        self._dim: int | None = None
        if TABLE_NAME in self._db.list_tables().tables:
            self._table = self._db.open_table(TABLE_NAME)
            self._dim = int(self._table.schema.field(VECTOR_COLUMN).type.list_size)
            if dim is not None and dim != self._dim:
                raise ValueError(
                    f"dim={dim} conflicts with the stored vector table in {self._directory},"
                    f" whose dimension is {self._dim}"
                )
            if not self._ranked_current():
                self._add_ranked()
            ids = self._table.search().select(["id"]).limit(None).to_arrow().column("id")
            self._known = _IdSet.from_column(ids)
            self._may_hold_ranked = self._table.count_rows(_states_filter(RANKED_STATES)) > 0
            names = {index.name for index in self._table.list_indices()}
            self._ann = {VECTOR_INDEX, RANKED_INDEX} <= names
            self._scalar_ready = {ID_INDEX, STATE_INDEX} <= names
        elif dim is not None:
            self._create_table(dim)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_loop, name=f"lance-commit[{self._directory}]", daemon=True
        )
        self._flusher.start()

    # --- properties ----------------------------------------------------------------

    @property
    def dim(self) -> int | None:
        return self._dim

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def ann_threshold(self) -> int:
        return self._ann_threshold

    @property
    def ann_indexed(self) -> bool:
        """Whether searches go through the ANN index (else they are exact)."""
        return self._ann

    # --- writes --------------------------------------------------------------------

    def upsert(self, records: Sequence[VectorRecord]) -> None:
        """Buffer records (insert or replace by id); validated whole before any is kept."""
        if isinstance(records, VectorRecord) or not isinstance(records, Sequence):
            raise TypeError("records must be a sequence of VectorRecord")
        with self._lock:
            self._check_open()
            dim = self._dim
            checked: list[VectorRecord] = []
            for i, record in enumerate(records):
                if not isinstance(record, VectorRecord):
                    raise TypeError(
                        f"records[{i}] must be a VectorRecord, got {type(record).__name__}"
                    )
                if not isinstance(record.entity_id, UUID):
                    raise TypeError(f"records[{i}].entity_id must be a uuid.UUID")
                vector = np.asarray(record.vector, dtype=np.float32)
                if vector.ndim != 1 or vector.size == 0:
                    raise ValueError(
                        f"records[{i}].vector must be 1-D and non-empty, got shape {vector.shape}"
                    )
                if dim is None:
                    dim = int(vector.size)
                elif vector.size != dim:
                    raise ValueError(
                        f"records[{i}].vector has dimension {vector.size}, but this index's"
                        f" dimension is {dim} (fixed by the first upsert)"
                    )
                if not np.isfinite(vector).all():
                    raise ValueError(f"records[{i}].vector must contain only finite numbers")
                checked.append(record)
            self._dim = dim
            for record in checked:
                self._pending[record.entity_id] = record
                if record.state in RANKED_STATES:
                    self._may_hold_ranked = True
            size = len(self._pending)
        if size >= self._commit_every:
            self._wake.set()

    def delete(self, entity_ids: Iterable[UUID]) -> None:
        """Buffer deletes; unknown ids are ignored when the buffer commits."""
        ids = list(entity_ids)
        for i, entity_id in enumerate(ids):
            if not isinstance(entity_id, UUID):
                raise TypeError(f"entity_ids[{i}] must be a uuid.UUID")
        with self._lock:
            self._check_open()
            for entity_id in ids:
                self._pending[entity_id] = None
            size = len(self._pending)
        if size >= self._commit_every:
            self._wake.set()

    def commit(self) -> None:
        """Write every buffered upsert/delete to the table (group commit)."""
        with self._commit_lock:
            with self._lock:
                if not self._pending:
                    return
                self._inflight, self._pending = self._pending, {}
                batch = self._inflight
            try:
                self._write(batch)
            except BaseException:
                with self._lock:
                    # Keep what did not commit; newer buffered operations win.
                    for entity_id, record in batch.items():
                        self._pending.setdefault(entity_id, record)
                    self._inflight = {}
                raise
            with self._lock:
                self._inflight = {}
            self.commits += 1

    def bulk_append(self, batches: Iterable[pa.RecordBatch], *, dim: int) -> int:
        """Append rows already in the table's Arrow schema, in one commit.

        A loading tool (benchmarks, imports): ids must be new, nothing is de-duplicated.
        Returns the number of rows appended.
        """
        _check_int("dim", dim, 1)
        with self._lock:
            self._check_open()
            if self._dim is not None and self._dim != dim:
                raise ValueError(f"dim={dim} differs from this index's dimension {self._dim}")
            self._dim = dim
            self._may_hold_ranked = True  # the rows are not looked at one by one
        schema = table_schema(dim)
        stored = stored_schema(dim)
        counted = 0

        keys: list[np.ndarray] = []

        def rows() -> Iterator[pa.RecordBatch]:
            nonlocal counted
            for batch in batches:
                if not batch.schema.equals(schema):
                    raise ValueError(f"batches must have the schema {schema}, got {batch.schema}")
                keys.append(_id_bytes(batch.column(0)))
                counted += batch.num_rows
                yield _with_ranked(batch, dim)

        with self._commit_lock:
            table = self._ensure_table()
            table.add(pa.RecordBatchReader.from_batches(stored, rows()))
            if keys:
                self._known.extend(np.concatenate(keys))
            self._commits_since_optimize += 1
        return counted

    def _write(self, batch: dict[UUID, VectorRecord | None]) -> None:
        """One group commit; the caller holds the commit lock."""
        assert self._dim is not None or all(r is None for r in batch.values())
        deletes = [e for e, record in batch.items() if record is None]
        upserts = [record for record in batch.values() if record is not None]
        if self._table is None:
            if not upserts:
                return
            assert self._dim is not None
            self._create_table(self._dim)
        table = self._table
        held = self._known
        deletes = [e for e, h in zip(deletes, held.contains_many(deletes), strict=True) if h]
        present = held.contains_many([r.entity_id for r in upserts])
        fresh = [r for r, h in zip(upserts, present, strict=True) if not h]
        known = [r for r, h in zip(upserts, present, strict=True) if h]
        if (deletes or known) and self._commits_since_optimize >= _OPTIMIZE_BEFORE_UPDATE:
            # Deletes and updates scan every fragment their id index does not cover yet.
            self._optimize(table)
        for chunk in _chunks(deletes):
            table.delete(_id_filter(chunk))
            held.discard_present(chunk)
        if fresh:
            table.add(self._arrow(fresh))
            held.add_absent(r.entity_id for r in fresh)
        if known:
            # A full join, not the id index: with lancedb 0.40 the index-assisted join
            # intermittently failed to match a row of a partly indexed table and
            # inserted it a second time (seen in tests/vectors/test_crash.py).
            (
                table.merge_insert("id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .use_index(False)
                .execute(self._arrow(known))
            )
        self._commits_since_optimize += 1
        if not self._scalar_ready:
            self._scalar_indices()
        if self._commits_since_optimize >= self._compact_every:
            self._compact(table)

    def _create_table(self, dim: int) -> None:
        self._table = self._db.create_table(TABLE_NAME, schema=stored_schema(dim), exist_ok=True)
        stored = int(self._table.schema.field(VECTOR_COLUMN).type.list_size)
        if stored != dim:
            raise ValueError(f"dim={dim} conflicts with the stored vector table ({stored})")
        self._dim = dim

    def _ensure_table(self) -> Any:
        if self._table is None:
            assert self._dim is not None
            self._create_table(self._dim)
        return self._table

    def _scalar_indices(self) -> None:
        """BTREE on id (lookups, deletes, merge_insert joins) and BITMAP on state (the
        state prefilter of searches)."""
        table = self._table
        if table is None or table.count_rows() == 0:
            return
        if not _has_index(table, ID_INDEX):
            table.create_index("id", config=BTree(), name=ID_INDEX)
        if not _has_index(table, STATE_INDEX):
            table.create_index("state", config=Bitmap(), name=STATE_INDEX)
        self._scalar_ready = True

    def _arrow(self, records: Sequence[VectorRecord]) -> pa.Table:
        assert self._dim is not None
        # One flat copy (np.stack converts and checks each row first: 4x slower).
        n = len(records)
        vectors = np.concatenate([r.vector for r in records], dtype=np.float32)
        vectors = vectors.reshape(n, self._dim)
        states = np.fromiter((r.state for r in records), np.int8, n)
        utility = np.fromiter((r.utility for r in records), np.float64, n)
        columns = [
            _id_strings([r.entity_id for r in records]),
            pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), self._dim),
            pa.array([r.payload for r in records], pa.string()),
            pa.array(states),
            pa.array(utility),
            pa.array(np.fromiter((r.attended_count for r in records), np.int64, n)),
            pa.array(np.fromiter((r.protected_floor for r in records), np.float64, n)),
            pa.array(np.fromiter((r.last_evaluated for r in records), np.float64, n)),
            pa.array([r.usd_link for r in records], pa.string()),
            _ranked_array(vectors, utility, states),
        ]
        return pa.Table.from_arrays(columns, schema=stored_schema(self._dim))

    def _ranked_current(self) -> bool:
        """Whether the table's ``ranked`` column has this module's layout."""
        assert self._dim is not None
        schema = self._table.schema
        if RANKED_COLUMN not in schema.names:
            return False
        return int(schema.field(RANKED_COLUMN).type.list_size) == ranked_width(self._dim)

    def _add_ranked(self) -> None:
        """Rewrite a table stored without ``ranked`` (or with an older layout of it)
        with it: one new table version.

        LanceDB can add a column only from SQL or as nulls, and the ranked vector is
        neither, so the rows are read and written back whole; the indices go with the
        old version and ``maintain()`` rebuilds them.
        """
        dim = self._dim
        assert dim is not None
        logger.info("adding the %s column to %s", RANKED_COLUMN, self._directory)
        rows = self._table.to_arrow().select(list(_FIELDS)).cast(table_schema(dim))
        data = _with_ranked(rows, dim)
        self._table = self._db.create_table(
            TABLE_NAME, data=data, schema=stored_schema(dim), mode="overwrite"
        )

    def _flush_loop(self) -> None:
        """Group commit by count (woken by writers) or by time."""
        while not self._stop.is_set():
            self._wake.wait(self._commit_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.commit()
            except Exception:
                logger.exception("group commit to %s failed; the buffer is kept", self._directory)

    # --- reads ---------------------------------------------------------------------

    def _overlay(self) -> dict[UUID, VectorRecord | None]:
        """Buffered operations over the table: the batch being committed, then newer ones."""
        with self._lock:
            self._check_open()
            if not self._inflight:
                return dict(self._pending)
            return {**self._inflight, **self._pending}

    def get(self, entity_ids: Iterable[UUID]) -> list[VectorRecord]:
        """Records for these ids, buffered or committed; missing ids are skipped."""
        wanted = list(dict.fromkeys(entity_ids))
        overlay = self._overlay()
        found: dict[UUID, VectorRecord] = {}
        lookup = []
        for entity_id in wanted:
            if entity_id in overlay:
                record = overlay[entity_id]
                if record is not None:
                    found[entity_id] = record
            else:
                lookup.append(entity_id)
        if lookup and self._table is not None:
            with self._files.read():
                for chunk in _chunks(lookup):
                    rows = (
                        self._table.search()
                        .where(_id_filter(chunk))
                        .select(list(_FIELDS))
                        .limit(len(chunk))
                        .to_arrow()
                    )
                    for record in self._records(rows):
                        found[record.entity_id] = record
        return [found[e] for e in wanted if e in found]

    def search(
        self,
        vector: np.ndarray,
        limit: int,
        *,
        states: frozenset[EntityState] | None = None,
        weighted: bool = False,
    ) -> list[tuple[VectorRecord, float]]:
        """Top `limit` records by cosine similarity, or with ``weighted`` by cosine x
        stored utility of consolidated records (cosine with the ``ranked`` column),
        buffered and committed alike."""
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit must be an int >= 1, got {type(limit).__name__}")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if weighted:
            validation.weighted_states(states)
        query = np.asarray(vector, dtype=np.float32)
        if query.ndim != 1 or (self._dim is not None and query.size != self._dim):
            raise ValueError(
                f"vector must be 1-D with dimension {self._dim}, got shape {query.shape}"
            )
        norm = float(np.linalg.norm(query))
        if not math.isfinite(norm) or norm == 0.0:
            raise ValueError("vector must have a non-zero, finite length")
        query = query / norm
        if states is not None and states <= RANKED_STATES and not self._may_hold_ranked:
            return []
        overlay = self._overlay()
        hits = self._search_buffer(overlay, query, states, weighted)
        if self._table is not None and len(self._known):
            fetch = limit + min(len(overlay), limit)
            while True:
                rows, complete = self._search_table(query, fetch, states, weighted)
                kept = [(r, s) for r, s in rows if r.entity_id not in overlay]
                if len(kept) >= limit or complete:
                    break
                fetch *= 4
            hits.extend(kept)
        hits.sort(key=lambda hit: hit[1], reverse=True)
        return hits[:limit]

    def _search_buffer(
        self,
        overlay: dict[UUID, VectorRecord | None],
        query: np.ndarray,
        states: frozenset[EntityState] | None,
        weighted: bool,
    ) -> list[tuple[VectorRecord, float]]:
        records = [
            r for r in overlay.values() if r is not None and (states is None or r.state in states)
        ]
        if not records:
            return []
        block = np.stack([np.asarray(r.vector, dtype=np.float32) for r in records])
        norms = np.linalg.norm(block, axis=1)
        norms[norms == 0] = 1.0
        scores = (block @ query) / norms
        if weighted:
            scores = scores * np.array([r.utility for r in records], dtype=np.float64)
        return [(r, float(s)) for r, s in zip(records, scores.tolist(), strict=True)]

    def _search_table(
        self,
        query: np.ndarray,
        fetch: int,
        states: frozenset[EntityState] | None,
        weighted: bool,
    ) -> tuple[list[tuple[VectorRecord, float]], bool]:
        """`fetch` best committed rows; True when the table had no more to give.

        The query goes through the asynchronous table that LanceDB's synchronous one
        wraps, in one hop to LanceDB's event loop: the synchronous builder makes six
        (and reads the schema three times), about 1.3 ms of a 7 ms search.

        LanceDB reports cosine distance as 1 - cosine, and the cosine of a ranked row
        with the ranked query is u x cosine, so either way the score is 1 - distance
        (tests/vectors/test_weighted.py checks it).
        """
        column, vector = (VECTOR_COLUMN, query)
        if weighted:
            column, vector = RANKED_COLUMN, ranked_query(query)
        if states is not None and not states:
            return [], True
        with self._files.read():
            search = self._table._table.query().nearest_to(vector).column(column)
            search = search.distance_type("cosine").limit(fetch)
            if self._ann:
                search = search.nprobes(self._nprobes).refine_factor(self._refine_factor)
            if states is not None:
                search = search.where(_states_filter(states))  # a prefilter
            rows = LOOP.run(search.select([*_FIELDS, "_distance"]).to_arrow())
            self.table_searches += 1
        records = self._records(rows)
        scores = 1.0 - rows.column("_distance").to_numpy(zero_copy_only=False)
        return list(zip(records, scores.tolist(), strict=True)), rows.num_rows < fetch

    def _records(self, rows: pa.Table) -> list[VectorRecord]:
        if rows.num_rows == 0:
            return []
        dim = self._dim
        assert dim is not None
        vectors = (
            rows.column(VECTOR_COLUMN).combine_chunks().values.to_numpy().reshape(-1, dim).copy()
        )
        ids = rows.column("id").to_pylist()
        payloads = rows.column("payload").to_pylist()
        state = rows.column("state").to_pylist()
        utility = rows.column("utility").to_pylist()
        attended = rows.column("attended_count").to_pylist()
        floor = rows.column("protected_floor").to_pylist()
        evaluated = rows.column("last_evaluated").to_pylist()
        links = rows.column("usd_link").to_pylist()
        return [
            VectorRecord(
                entity_id=UUID(ids[i]),
                vector=vectors[i],
                payload=payloads[i],
                utility=utility[i],
                attended_count=attended[i],
                protected_floor=floor[i],
                last_evaluated=evaluated[i],
                state=EntityState(state[i]),
                usd_link=links[i],
            )
            for i in range(rows.num_rows)
        ]

    def count(self) -> int:
        """Committed rows plus buffered inserts minus buffered deletes of committed rows."""
        overlay = self._overlay()
        with self._commit_lock:
            held = self._known
            extra = 0
            ids = list(overlay)
            for entity_id, present in zip(ids, held.contains_many(ids), strict=True):
                record = overlay[entity_id]
                if record is None and present:
                    extra -= 1
                elif record is not None and not present:
                    extra += 1
            return len(held) + extra

    # --- maintenance -----------------------------------------------------------------

    def maintain(self) -> None:
        """Sleep-pass housekeeping: commit, compact, (re)build indices, drop old versions."""
        with self._maintain_lock:
            self.commit()
            if self._table is None:
                return
            table = self._table
            # Counted by consolidated rows, the only ones the handle searches: a store
            # of 100k hot memories and a few cold ones spent 22 s of CPU training
            # indices over rows no query reads through them (a flat search with the
            # state bitmap takes ~9 ms there).
            rows = table.count_rows(_states_filter(RANKED_STATES))
            first = not self._ann and rows >= self._ann_threshold
            grown = self._ann and rows >= 2 * self._trained_rows()  # retrain on doubling
            if first or grown or (self._ann and self._ann_deltas() > MAX_ANN_DELTAS):
                self._build_ann(rows)
            with self._commit_lock:
                self._scalar_indices()
                self._optimize(table)
                self._prune(table)

    def _optimize(self, table: Any) -> None:
        """Compact fragments and fold new rows into every index; keeps old files."""
        table.optimize(cleanup_older_than=timedelta(days=36_500))
        self._commits_since_optimize = 0

    def _prune(self, table: Any) -> None:
        """Delete every file not in the latest version; the caller holds the commit lock.

        Only this process writes (store lock) and no search is reading meanwhile, so
        no other version is in use. Index training (``maintain``) must not run at the
        same time: its files are not in any version until it commits.
        """
        with self._files.write(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            table.optimize(cleanup_older_than=timedelta(0), delete_unverified=True)
        self._commits_since_optimize = 0
        self._known.rebuild()

    def _compact(self, table: Any) -> None:
        """Bound fragments and versions between sleep passes (every ``compact_every``
        commits, on the writer). Skipped while ``maintain`` runs, which does the same."""
        if not self._maintain_lock.acquire(blocking=False):
            return
        try:
            self._optimize(table)
            self._prune(table)
        finally:
            self._maintain_lock.release()

    def _build_ann(self, rows: int) -> None:
        """Train the ANN indices on the current rows (replacing an older training):
        IVF_RQ cosine on ``vector`` and on ``ranked`` (weighted search). ``rows`` is
        the consolidated count the next retraining is measured against."""
        logger.info("building the ANN indices of %s (%d consolidated rows)", self._directory, rows)
        ivf: dict[str, Any] = {
            "target_partition_size": ROWS_PER_PARTITION,
            "sample_rate": IVF_SAMPLE_RATE,
        }
        self._table.create_index(
            VECTOR_COLUMN,
            config=IvfRq(distance_type="cosine", num_bits=RQ_BITS, **ivf),
            replace=True,
            name=VECTOR_INDEX,
        )
        self._table.create_index(
            RANKED_COLUMN,
            config=IvfRq(distance_type="cosine", num_bits=RQ_BITS, **ivf),
            replace=True,
            name=RANKED_INDEX,
        )
        self._write_meta({"ann_trained_rows": rows})
        self._ann = True

    def _ann_deltas(self) -> int:
        stats = self._table.index_stats(RANKED_INDEX)
        return int(stats.num_indices) if stats is not None else 0

    def _trained_rows(self) -> int:
        return int(self._read_meta().get("ann_trained_rows", self._ann_threshold))

    def _read_meta(self) -> dict[str, Any]:
        path = self._directory / META_FILE
        try:
            return dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return {}

    def _write_meta(self, meta: dict[str, Any]) -> None:
        path = self._directory / META_FILE
        temp = path.with_suffix(".tmp")
        with open(temp, "w") as handle:
            json.dump(meta, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)

    def table_stats(self) -> TableStats:
        """Fragments, bytes and versions of the committed table (after a commit)."""
        disk = sum(f.stat().st_size for f in self._directory.rglob("*") if f.is_file())
        if self._table is None:
            return TableStats(0, 0, 0, 0, disk, 0, (), False)
        stats = self._table.stats()
        fragments = stats["fragment_stats"]
        return TableStats(
            rows=int(stats["num_rows"]),
            fragments=int(fragments["num_fragments"]),
            small_fragments=int(fragments["num_small_fragments"]),
            data_bytes=int(stats["total_bytes"]),
            disk_bytes=disk,
            versions=len(self._table.list_versions()),
            indices=tuple(sorted(i.name for i in self._table.list_indices())),
            ann_indexed=self._ann,
            ann_deltas=self._ann_deltas() if self._ann else 0,
        )

    # --- lifecycle ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"vector index {self._directory} is closed")

    def close(self) -> None:
        """Stop the flusher, commit what is buffered. Idempotent."""
        if self._closed:
            return
        self._stop.set()
        self._wake.set()
        if self._flusher.is_alive() and self._flusher is not threading.current_thread():
            self._flusher.join()
        try:
            self.commit()
        finally:
            with self._lock:
                self._closed = True


def _check_int(name: str, value: Any, low: int, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _chunks(ids: Sequence[UUID]) -> Iterator[Sequence[UUID]]:
    for start in range(0, len(ids), _IN_CHUNK):
        yield ids[start : start + _IN_CHUNK]


def _states_filter(states: Iterable[EntityState]) -> str:
    return "state IN (" + ", ".join(str(int(s)) for s in sorted(states)) + ")"


def _id_filter(ids: Iterable[UUID]) -> str:
    """SQL filter on ids; safe to inline because str(UUID) is hex and dashes only."""
    return "id IN (" + ", ".join(f"'{e}'" for e in ids) + ")"


def _has_index(table: Any, name: str) -> bool:
    return any(index.name == name for index in table.list_indices())
