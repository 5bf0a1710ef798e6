"""Sequential write of one consolidation batch: cold tier first, then the vector index.

There is no two-phase commit (DESIGN §1.6): the batch is authored to the cold tier
and only when that is durable are the CONSOLIDATED records upserted into the vector
index and committed. If authoring fails the index is not touched, so the index
never points at a cold record that does not exist. A cold record whose index commit
never happened is an orphan that the next pass re-authors idempotently.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import numpy as np

from moneta.errors import AuthoringError
from moneta.protocols import AuthoringTarget, VectorIndex, VectorRecord
from moneta.types import EntityState, Memory


class SequentialWriter:
    """Writes batches to an ``AuthoringTarget`` and then a ``VectorIndex``."""

    def __init__(self, target: AuthoringTarget, index: VectorIndex) -> None:
        self._target = target
        self._index = index

    def write_batch(
        self,
        batch: Sequence[Memory],
        vectors: np.ndarray,
        *,
        batch_id: str,
        authored_at: float,
    ) -> dict[UUID, str]:
        """Author ``batch`` (STAGED memories) and then commit it to the index.

        Returns each entity's cold-tier link. Raises ``AuthoringError`` when the cold
        tier did not make the whole batch durable; the index is then unchanged.
        """
        links = self._target.author(batch, batch_id=batch_id, authored_at=authored_at)
        missing = [m.entity_id for m in batch if not links.get(m.entity_id)]
        if missing:
            raise AuthoringError(
                f"batch {batch_id}: the cold tier returned no link for {len(missing)} memories"
                f" (first {missing[0]})",
                pending=[str(e) for e in missing[:10]],
            )
        records = [
            VectorRecord(
                entity_id=memory.entity_id,
                vector=vectors[i],
                payload=memory.payload,
                utility=memory.utility,
                attended_count=memory.attended_count,
                protected_floor=memory.protected_floor,
                last_evaluated=memory.last_evaluated,
                state=EntityState.CONSOLIDATED,
                usd_link=links[memory.entity_id],
            )
            for i, memory in enumerate(batch)
        ]
        self._index.upsert(records)
        self._index.commit()
        return links
