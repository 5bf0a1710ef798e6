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
from typing import TYPE_CHECKING, Protocol, runtime_checkable
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
