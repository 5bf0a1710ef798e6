"""In-memory ``VectorIndex``: exact cosine (or cosine x utility) search over numpy columns.

Used by ``memory://`` stores (and wherever no persistent backend is configured).
Nothing here survives the process, so the handle keeps only cold memories in it
(``persistent`` is False): the hot tier is already an exact index of the hot ones, and
a second copy of every deposit was about half of a deposit's time.

Records live in columns, not as objects: one partition per ``EntityState``, each a
float32 vector matrix (as given, with a column of inverse norms so search needs no
normalised copy) plus scalar columns and payload/link lists. ``get`` and ``search``
build ``VectorRecord`` copies on the way out. Partitioning by state keeps the
handle's cold-tier search (``states={CONSOLIDATED}``) proportional to the
consolidated rows instead of scanning and gathering every hot row.

Writes are applied when they are made (an upsert is a row append, a delete a
swap-with-last), so no group commit ever holds the lock for thousands of rows
while a deposit waits; ``commit`` only counts. Reads therefore always see every
write, which is what the protocol asks of buffered writes too.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from uuid import UUID

import numpy as np

from moneta import validation
from moneta.ecs import MIN_CAPACITY, allocate, top_rows
from moneta.protocols import RecordColumns, VectorRecord
from moneta.types import EntityState


class _Partition:
    """The records of one state, column-wise; rows are compacted on removal."""

    def __init__(self, state: EntityState, dim: int, capacity: int) -> None:
        self.state = state
        self.dim = dim
        self.n = 0
        self._capacity = 0
        self.ids: list[UUID] = []
        self.payloads: list[str] = []
        self.links: list[str | None] = []
        self.row: dict[UUID, int] = {}
        self._allocate(capacity)

    def _allocate(self, capacity: int) -> None:
        n = self.n
        vectors = allocate(capacity, (self.dim,), np.float32, max(n, MIN_CAPACITY))
        capacity = vectors.shape[0]
        columns = {
            "inv_norm": np.float32,
            "utility": np.float64,
            "attended": np.int64,
            "floor": np.float64,
            "last": np.float64,
        }
        fresh = {name: np.empty(capacity, dtype=dtype) for name, dtype in columns.items()}
        if n:
            vectors[:n] = self.vectors[:n]
            for name, column in fresh.items():
                column[:n] = getattr(self, name)[:n]
        self.vectors = vectors
        for name, column in fresh.items():
            setattr(self, name, column)
        self._capacity = capacity

    def append(self, records: Sequence[VectorRecord]) -> None:
        start, end = self._reserve(len(records))
        if end - start == 1:
            self._append_one(records[0])
            return
        # One flat copy; np.stack would cost a Python-level call per row.
        np.concatenate([r.vector for r in records], out=self.vectors[start:end].reshape(-1))
        self._append_block(
            start, [r.entity_id for r in records], [r.payload for r in records],
            [r.usd_link for r in records], [r.utility for r in records],
            [r.attended_count for r in records], [r.protected_floor for r in records],
            [r.last_evaluated for r in records],
        )  # fmt: skip

    def append_columns(self, columns: RecordColumns) -> None:
        """A bulk load of records this partition does not hold: one copy per column."""
        start, end = self._reserve(len(columns))
        self.vectors[start:end] = columns.vectors
        self._append_block(
            start, columns.entity_ids, columns.payloads, [None] * (end - start),
            columns.utility, columns.attended, columns.floor, columns.last,
        )  # fmt: skip

    def _reserve(self, k: int) -> tuple[int, int]:
        """Rows ``[n, n + k)``, growing the columns if needed."""
        start, end = self.n, self.n + k
        if end > self._capacity:
            capacity = max(MIN_CAPACITY, self._capacity)
            while capacity < end:
                capacity *= 2
            self._allocate(capacity)
        return start, end

    def _append_block(
        self,
        start: int,
        ids: list[UUID],
        payloads: list[str],
        links: list[str | None],
        utility: Sequence[float] | np.ndarray,
        attended: Sequence[int] | np.ndarray,
        floor: Sequence[float] | np.ndarray,
        last: Sequence[float] | np.ndarray,
    ) -> None:
        """Rows from ``start`` whose vectors the caller has written: norms and the rest."""
        end = start + len(ids)
        block = self.vectors[start:end]
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        inv = self.inv_norm[start:end]
        inv[:] = 0.0
        np.divide(1.0, norms, out=inv, where=norms > 0)
        self.utility[start:end] = utility
        self.attended[start:end] = attended
        self.floor[start:end] = floor
        self.last[start:end] = last
        self.row.update(zip(ids, range(start, end), strict=True))
        self.ids.extend(ids)
        self.payloads.extend(payloads)
        self.links.extend(links)
        self.n = end

    def _append_one(self, record: VectorRecord) -> None:
        """The deposit path: scalar stores only, no temporaries."""
        row = self.n
        vector = self.vectors[row]
        vector[:] = record.vector
        norm = math.sqrt(float(np.dot(vector, vector)))
        self.inv_norm[row] = 1.0 / norm if norm > 0 else 0.0
        self.utility[row] = record.utility
        self.attended[row] = record.attended_count
        self.floor[row] = record.protected_floor
        self.last[row] = record.last_evaluated
        self.row[record.entity_id] = row
        self.ids.append(record.entity_id)
        self.payloads.append(record.payload)
        self.links.append(record.usd_link)
        self.n = row + 1

    def write(self, row: int, record: VectorRecord) -> None:
        self.vectors[row] = record.vector
        norm = math.sqrt(float(np.dot(self.vectors[row], self.vectors[row])))
        self.inv_norm[row] = 1.0 / norm if norm > 0 else 0.0
        self.utility[row] = record.utility
        self.attended[row] = record.attended_count
        self.floor[row] = record.protected_floor
        self.last[row] = record.last_evaluated
        self.payloads[row] = record.payload
        self.links[row] = record.usd_link

    def remove(self, rows: Iterable[int]) -> None:
        doomed = np.unique(np.fromiter(rows, dtype=np.int64))
        if doomed.size == 0:
            return
        n = self.n
        new_n = n - doomed.size
        holes = doomed[doomed < new_n]
        tail = np.arange(new_n, n, dtype=np.int64)
        movers = tail[~np.isin(tail, doomed, assume_unique=True)]
        ids, row = self.ids, self.row
        for r in doomed.tolist():
            del row[ids[r]]
        if holes.size:
            self.vectors[holes] = self.vectors[movers]
            for column in (self.inv_norm, self.utility, self.attended, self.floor, self.last):
                column[holes] = column[movers]
            payloads, links = self.payloads, self.links
            for hole, mover in zip(holes.tolist(), movers.tolist(), strict=True):
                ids[hole] = ids[mover]
                payloads[hole] = payloads[mover]
                links[hole] = links[mover]
                row[ids[hole]] = hole
        del self.ids[new_n:], self.payloads[new_n:], self.links[new_n:]
        self.n = new_n

    def record(self, row: int) -> VectorRecord:
        return VectorRecord(
            entity_id=self.ids[row],
            vector=self.vectors[row].copy(),
            payload=self.payloads[row],
            utility=float(self.utility[row]),
            attended_count=int(self.attended[row]),
            protected_floor=float(self.floor[row]),
            last_evaluated=float(self.last[row]),
            state=self.state,
            usd_link=self.links[row],
        )

    def top(self, query: np.ndarray, limit: int, weighted: bool) -> list[tuple[float, int]]:
        """(score, row) of the best ``limit`` rows, best first: cosine, or with
        ``weighted`` cosine x utility."""
        n = self.n
        if n == 0:
            return []
        scores = self.vectors[:n] @ query
        scores *= self.inv_norm[:n]
        if weighted:
            scores = scores * self.utility[:n]
        return [(float(scores[r]), int(r)) for r in top_rows(scores, limit)]


class InMemoryVectorIndex:
    """Exact cosine index over numpy columns, partitioned by entity state."""

    persistent = False  # the handle keeps only cold memories here (see VectorIndex)

    def __init__(self, dim: int | None = None) -> None:
        self._lock = threading.Lock()
        self._dim = dim
        self._parts: dict[EntityState, _Partition] = {}
        self.commits = 0

    @property
    def dim(self) -> int | None:
        return self._dim

    def _part(self, state: EntityState) -> _Partition:
        part = self._parts.get(state)
        if part is None:
            assert self._dim is not None
            part = self._parts[state] = _Partition(EntityState(state), self._dim, MIN_CAPACITY)
        return part

    def _find(self, entity_id: UUID) -> tuple[_Partition, int] | None:
        for part in self._parts.values():
            row = part.row.get(entity_id)
            if row is not None:
                return part, row
        return None

    # --- writes ----------------------------------------------------------------

    def upsert(self, records: Sequence[VectorRecord]) -> None:
        if isinstance(records, RecordColumns) and self._load_columns(records):
            return
        records = [_checked(r, self._dim) for r in records]
        if not records:
            return
        with self._lock:
            dim = self._dim
            for r in records:
                size = r.vector.shape[0]
                if dim is None:
                    dim = size
                elif size != dim:
                    raise ValueError(
                        f"record {r.entity_id}: vector dimension {size} != index dimension {dim}"
                    )
            self._dim = dim
            if len(records) == 1:  # the deposit path
                record = records[0]
                found = self._find(record.entity_id)
                if found is not None and found[0].state == record.state:
                    found[0].write(found[1], record)
                    return
                if found is not None:
                    found[0].remove([found[1]])
                self._part(record.state).append(records)
                return
            # The last write of an id wins, as if the records were applied in order.
            latest = {r.entity_id: r for r in records}
            fresh: dict[int, list[VectorRecord]] = {}  # by state (IntEnum or int)
            moved: dict[int, tuple[_Partition, list[int]]] = {}
            if not any(part.n for part in self._parts.values()):
                for record in latest.values():  # nothing to replace: a bulk load
                    fresh.setdefault(record.state, []).append(record)
                latest = {}
            for record in latest.values():
                found = self._find(record.entity_id)
                if found is not None:
                    part, row = found
                    if part.state == record.state:
                        part.write(row, record)
                        continue
                    moved.setdefault(id(part), (part, []))[1].append(row)
                fresh.setdefault(record.state, []).append(record)
            for part, rows in moved.values():
                part.remove(rows)
            for state, group in fresh.items():
                self._part(EntityState(state)).append(group)

    def _load_columns(self, columns: RecordColumns) -> bool:
        """Load ``columns`` as they are into an empty index; False if the index holds
        records (an upsert may replace some: the record path handles that)."""
        vectors = columns.vectors
        if vectors.dtype != np.float32 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
            return False
        if len(set(columns.entity_ids)) != len(columns):
            return False  # the last write of an id wins: the record path orders them
        with self._lock:
            if any(part.n for part in self._parts.values()):
                return False
            if self._dim is not None and vectors.shape[1] != self._dim:
                raise ValueError(
                    f"vector dimension {vectors.shape[1]} != index dimension {self._dim}"
                )
            self._dim = vectors.shape[1]
            self._part(columns.state).append_columns(columns)
        return True

    def delete(self, entity_ids: Iterable[UUID]) -> None:
        with self._lock:
            doomed: dict[int, tuple[_Partition, list[int]]] = {}
            for entity_id in set(entity_ids):
                found = self._find(entity_id)
                if found is not None:
                    doomed.setdefault(id(found[0]), (found[0], []))[1].append(found[1])
            for part, rows in doomed.values():
                part.remove(rows)

    def commit(self) -> None:
        """Writes are applied when made; a commit only counts (no lock held for long)."""
        with self._lock:
            self.commits += 1

    # --- reads -----------------------------------------------------------------

    def get(self, entity_ids: Iterable[UUID]) -> list[VectorRecord]:
        with self._lock:
            found = []
            for entity_id in entity_ids:
                hit = self._find(entity_id)
                if hit is not None:
                    found.append(hit[0].record(hit[1]))
            return found

    def search(
        self,
        vector: np.ndarray,
        limit: int,
        *,
        states: frozenset[EntityState] | None = None,
        weighted: bool = False,
    ) -> list[tuple[VectorRecord, float]]:
        """Exact top `limit` by cosine, or with ``weighted`` by cosine x stored utility."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if weighted:
            validation.weighted_states(states)
        with self._lock:
            parts = [
                p for p in self._parts.values() if p.n and (states is None or p.state in states)
            ]
            if not parts:
                return []
            query = np.asarray(vector, dtype=np.float32).reshape(-1)
            if query.shape[0] != self._dim:
                raise ValueError(f"query dimension {query.shape[0]} != index dimension {self._dim}")
            norm = math.sqrt(float(np.dot(query, query)))
            if norm > 0:
                query = query / norm
            hits = [
                (score, part, row)
                for part in parts
                for score, row in part.top(query, limit, weighted)
            ]
            hits.sort(key=lambda hit: hit[0], reverse=True)
            return [(part.record(row), score) for score, part, row in hits[:limit]]

    def count(self) -> int:
        with self._lock:
            return sum(part.n for part in self._parts.values())

    def maintain(self) -> None:
        """Nothing to compact in memory."""

    def close(self) -> None:
        self.commit()


def _checked(record: VectorRecord, dim: int | None) -> VectorRecord:
    """The record with its vector as a 1-D float32 array, or ValueError."""
    vector = record.vector
    if not (
        type(vector) is np.ndarray
        and vector.dtype == np.float32
        and vector.ndim == 1
        and vector.shape[0] > 0
    ):
        vector = np.asarray(vector, dtype=np.float32)
        if vector.ndim != 1 or vector.size == 0:
            raise ValueError(f"record {record.entity_id}: vector must be 1-D, non-empty")
        record = VectorRecord(
            record.entity_id, vector, record.payload, record.utility, record.attended_count,
            record.protected_floor, record.last_evaluated, record.state, record.usd_link,
        )  # fmt: skip
    if dim is not None and vector.shape[0] != dim:
        raise ValueError(
            f"record {record.entity_id}: vector dimension {vector.shape[0]}"
            f" != index dimension {dim}"
        )
    return record
