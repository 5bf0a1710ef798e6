"""In-memory ``VectorIndex``: exact cosine search over numpy columns.

Used by ``memory://`` stores (and wherever no persistent backend is configured).
It keeps the protocol's group-commit shape — upserts and deletes are buffered and
applied by ``commit`` — so the handle is exercised exactly as with a persistent
index; reads see buffered writes. Nothing here survives the process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from uuid import UUID

import numpy as np

from moneta.protocols import VectorRecord
from moneta.types import EntityState

_MIN_CAPACITY = 1024


class InMemoryVectorIndex:
    """Exact cosine index; vectors are stored L2-normalised (float32)."""

    def __init__(self, dim: int | None = None) -> None:
        self._lock = threading.Lock()
        self._dim = dim
        self._n = 0
        self._capacity = 0
        self._vectors = np.empty((0, dim or 0), dtype=np.float32)
        self._state = np.empty(0, dtype=np.int8)
        self._records: list[VectorRecord] = []
        self._row: dict[UUID, int] = {}
        self._pending: dict[UUID, VectorRecord | None] = {}  # None = buffered delete
        self.commits = 0

    @property
    def dim(self) -> int | None:
        return self._dim

    # --- writes ----------------------------------------------------------------

    def upsert(self, records: Sequence[VectorRecord]) -> None:
        with self._lock:
            for record in records:
                vector = np.asarray(record.vector, dtype=np.float32)
                if vector.ndim != 1 or vector.size == 0:
                    raise ValueError(f"record {record.entity_id}: vector must be 1-D, non-empty")
                if self._dim is None:
                    self._dim = int(vector.size)
                elif vector.size != self._dim:
                    raise ValueError(
                        f"record {record.entity_id}: vector dimension {vector.size}"
                        f" != index dimension {self._dim}"
                    )
            for record in records:
                self._pending[record.entity_id] = record

    def delete(self, entity_ids: Iterable[UUID]) -> None:
        with self._lock:
            for entity_id in entity_ids:
                self._pending[entity_id] = None

    def commit(self) -> None:
        with self._lock:
            self._apply_pending()
            self.commits += 1

    def _apply_pending(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        doomed = [self._row[e] for e, rec in pending.items() if rec is None and e in self._row]
        if doomed:
            self._remove_rows(np.asarray(doomed, dtype=np.int64))
        fresh: list[VectorRecord] = []
        for entity_id, record in pending.items():
            if record is None:
                continue
            row = self._row.get(entity_id)
            if row is None:
                fresh.append(record)
            else:
                self._write_row(row, record)
        if fresh:
            self._append(fresh)

    def _write_row(self, row: int, record: VectorRecord) -> None:
        self._vectors[row] = _normalised(record.vector)
        self._state[row] = int(record.state)
        self._records[row] = record

    def _append(self, records: list[VectorRecord]) -> None:
        dim = self._dim or 0
        needed = self._n + len(records)
        if needed > self._capacity:
            capacity = max(_MIN_CAPACITY, self._capacity)
            while capacity < needed:
                capacity *= 2
            vectors = np.empty((capacity, dim), dtype=np.float32)
            if self._n:
                vectors[: self._n] = self._vectors[: self._n]
            state = np.empty(capacity, dtype=np.int8)
            state[: self._n] = self._state[: self._n]
            self._vectors, self._state, self._capacity = vectors, state, capacity
        block = np.stack([np.asarray(r.vector, dtype=np.float32) for r in records])
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        np.divide(block, norms, out=block, where=norms > 0)
        start = self._n
        self._vectors[start:needed] = block
        self._state[start:needed] = [int(r.state) for r in records]
        for offset, record in enumerate(records):
            self._row[record.entity_id] = start + offset
        self._records.extend(records)
        self._n = needed

    def _remove_rows(self, doomed: np.ndarray) -> None:
        doomed = np.unique(doomed)
        n = self._n
        new_n = n - doomed.size
        holes = doomed[doomed < new_n]
        tail = np.arange(new_n, n, dtype=np.int64)
        movers = tail[~np.isin(tail, doomed, assume_unique=True)]
        for row in doomed.tolist():
            del self._row[self._records[row].entity_id]
        if holes.size:
            self._vectors[holes] = self._vectors[movers]
            self._state[holes] = self._state[movers]
            for hole, mover in zip(holes.tolist(), movers.tolist(), strict=True):
                self._records[hole] = self._records[mover]
                self._row[self._records[hole].entity_id] = hole
        del self._records[new_n:]
        self._n = new_n

    # --- reads -----------------------------------------------------------------

    def get(self, entity_ids: Iterable[UUID]) -> list[VectorRecord]:
        with self._lock:
            found = []
            for entity_id in entity_ids:
                if entity_id in self._pending:
                    record = self._pending[entity_id]
                    if record is not None:
                        found.append(record)
                    continue
                row = self._row.get(entity_id)
                if row is not None:
                    found.append(self._records[row])
            return found

    def search(
        self,
        vector: np.ndarray,
        limit: int,
        *,
        states: frozenset[EntityState] | None = None,
    ) -> list[tuple[VectorRecord, float]]:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        with self._lock:
            self._apply_pending()
            if self._n == 0:
                return []
            query = _normalised(vector)
            if states is None:
                candidates = np.arange(self._n)
                scores = self._vectors[: self._n] @ query
            else:
                wanted = np.fromiter((int(s) for s in states), dtype=np.int8)
                candidates = np.flatnonzero(np.isin(self._state[: self._n], wanted))
                if candidates.size == 0:
                    return []
                scores = self._vectors[candidates] @ query
            k = min(limit, scores.size)
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top], kind="stable")]
            return [(self._records[int(candidates[i])], float(scores[i])) for i in top]

    def count(self) -> int:
        with self._lock:
            extra = 0
            for entity_id, record in self._pending.items():
                present = entity_id in self._row
                if record is None and present:
                    extra -= 1
                elif record is not None and not present:
                    extra += 1
            return self._n + extra

    def maintain(self) -> None:
        """Nothing to compact in memory."""

    def close(self) -> None:
        self.commit()


def _normalised(vector: np.ndarray) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v
