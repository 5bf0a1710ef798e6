"""The two seams of the substrate: where consolidated memories are authored, and
where vectors persist.

Both are structural protocols so an implementation needs no base class. The handle
talks to them only through these methods, in this order per consolidation batch
(sequential write, no two-phase commit):

1. ``AuthoringTarget.author(batch)`` makes the batch durable in the cold tier, or
   raises ``AuthoringError``;
2. only then ``VectorIndex.upsert(...)`` with the CONSOLIDATED records and
   ``VectorIndex.commit()``.

A failure in step 1 leaves the vector index untouched. Records authored in step 1
whose step 2 never ran are orphans in the cold tier; they are harmless because the
next pass re-authors the same entities idempotently (same prim / same line key).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, overload, runtime_checkable
from uuid import UUID

import numpy as np

from moneta.types import EntityState, Memory, Vector

if TYPE_CHECKING:
    from moneta.gist import GistRequest


@runtime_checkable
class AuthoringTarget(Protocol):
    """The cold tier: receives batches of STAGED memories (at most 500 per batch)."""

    def author(
        self, batch: Sequence[Memory], *, batch_id: str, authored_at: float
    ) -> dict[UUID, str]:
        """Durably author `batch`; return each entity's link (e.g. a USD prim path).

        `authored_at` is unix seconds (the handle's clock), used for layer/file naming
        in UTC. Must be idempotent per entity: authoring the same entity again
        overwrites its record instead of adding a second one. Raises
        ``moneta.errors.AuthoringError`` if anything is not durable; must not catch
        ``BaseException``.
        """
        ...

    def forget(self, entity_ids: Iterable[UUID]) -> None:
        """Remove the entities' records so they never come back."""
        ...

    def close(self) -> None:
        """Release files. Idempotent."""
        ...


@dataclass(slots=True)
class VectorRecord:
    """One row of the persistent vector authority: the memory plus its vector."""

    entity_id: UUID
    vector: np.ndarray  # float32, shape (dim,)
    payload: str
    utility: float
    attended_count: int
    protected_floor: float
    last_evaluated: float
    state: EntityState
    usd_link: str | None = None

    def to_memory(self) -> Memory:
        return Memory(
            entity_id=self.entity_id,
            payload=self.payload,
            semantic_vector=Vector(self.vector),
            utility=self.utility,
            attended_count=self.attended_count,
            protected_floor=self.protected_floor,
            last_evaluated=self.last_evaluated,
            state=self.state,
            usd_link=self.usd_link,
        )


class RecordColumns(Sequence[VectorRecord]):
    """Records of one state held column-wise: a ``Sequence[VectorRecord]`` that builds
    each record only when it is read. An index that loads columns (the in-memory one)
    takes the arrays as they are, without a Python object per row; any other index
    reads it as the records it is."""

    __slots__ = (
        "attended",
        "entity_ids",
        "floor",
        "last",
        "payloads",
        "state",
        "utility",
        "vectors",
    )

    def __init__(
        self,
        entity_ids: list[UUID],
        vectors: np.ndarray,
        payloads: list[str],
        utility: np.ndarray,
        attended: np.ndarray,
        floor: np.ndarray,
        last: np.ndarray,
        state: EntityState,
    ) -> None:
        n = len(entity_ids)
        if vectors.ndim != 2 or vectors.shape[0] != n or len(payloads) != n:
            raise ValueError(
                f"RecordColumns: {n} ids, vectors {vectors.shape}, {len(payloads)} payloads"
            )
        for name, column in (
            ("utility", utility),
            ("attended", attended),
            ("floor", floor),
            ("last", last),
        ):
            if column.shape != (n,):
                raise ValueError(f"RecordColumns: {name} has shape {column.shape}, not ({n},)")
        self.entity_ids, self.vectors, self.payloads = entity_ids, vectors, payloads
        self.utility, self.attended, self.floor, self.last = utility, attended, floor, last
        self.state = state

    def __len__(self) -> int:
        return len(self.entity_ids)

    @overload
    def __getitem__(self, index: int) -> VectorRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[VectorRecord]: ...
    def __getitem__(self, index: int | slice) -> VectorRecord | list[VectorRecord]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return VectorRecord(
            self.entity_ids[index], self.vectors[index], self.payloads[index],
            float(self.utility[index]), int(self.attended[index]), float(self.floor[index]),
            float(self.last[index]), self.state,
        )  # fmt: skip


@runtime_checkable
class VectorIndex(Protocol):
    """The persistent vector authority: what exists is what the index holds.

    Writes are buffered and become durable at ``commit()`` (group commit); the
    handle's write-ahead log covers the window between an acknowledged deposit and
    its commit. ``search`` scores by cosine similarity, or by cosine x stored utility.
    """

    @property
    def dim(self) -> int | None:
        """Embedding dimension, fixed by the first upsert (and persisted); None while empty."""
        ...

    @property
    def persistent(self) -> bool:
        """Whether the records outlive the process. The handle writes every memory to a
        persistent index (the authority a store reopens from) but only cold memories to
        one that is not: the hot tier already answers exactly for the hot ones."""
        ...

    def upsert(self, records: Sequence[VectorRecord]) -> None:
        """Insert or replace records by entity_id. Raises ValueError on a dim mismatch."""
        ...

    def delete(self, entity_ids: Iterable[UUID]) -> None:
        """Remove records; unknown ids are ignored."""
        ...

    def commit(self) -> None:
        """Make every buffered upsert/delete durable."""
        ...

    def get(self, entity_ids: Iterable[UUID]) -> list[VectorRecord]:
        """Committed or buffered records for these ids (missing ids are skipped)."""
        ...

    def search(
        self,
        vector: np.ndarray,
        limit: int,
        *,
        states: frozenset[EntityState] | None = None,
        weighted: bool = False,
    ) -> list[tuple[VectorRecord, float]]:
        """Top `limit` records (best first), optionally by state.

        Scored by cosine similarity, or with ``weighted`` by cosine x the record's stored
        utility: the handle's cold ranking (DESIGN §1.1). Weighted search takes
        ``states={CONSOLIDATED}`` only (``ValueError`` otherwise): a consolidated row's
        utility is frozen while it is cold, so an index can rank by it instead of
        re-ranking a cosine shortlist that misses high-utility rows.
        """
        ...

    def count(self) -> int:
        """Number of records (committed plus buffered, minus buffered deletes)."""
        ...

    def maintain(self) -> None:
        """Housekeeping run by the sleep pass (compaction, index builds). May be a no-op."""
        ...

    def close(self) -> None:
        """Commit and release resources. Idempotent."""
        ...


@runtime_checkable
class GistSink(Protocol):
    """Where the sleep pass hands consolidated memories to be summarised (``moneta.gist``).

    ``submit`` must return at once (queue the work, never call a model inline): it runs
    inside the sleep pass. The handle bounds how many requests are outstanding
    (``MonetaConfig.gist_max_pending``); each outcome comes back through
    ``moneta.gist.deliver(store_path, ...)``.
    """

    def submit(self, store_path: str, requests: Sequence[GistRequest]) -> None:
        """Start one job per request (entity id and detail text) without waiting."""
        ...
