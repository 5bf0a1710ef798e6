"""Value types shared by every part of the substrate."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from uuid import UUID


class EntityState(enum.IntEnum):
    """Lifecycle of a memory. Stored as a small int in the hot-tier column."""

    VOLATILE = 0
    STAGED_FOR_SYNC = 1
    CONSOLIDATED = 2

    @property
    def token(self) -> str:
        """The lower-case token used in the cold tier (`priorState`) and on disk."""
        return self.name.lower()


# The states a weighted (cold) search ranks: only a consolidated memory's stored
# utility is current, because it is frozen while the memory is cold.
RANKED_STATES = frozenset({EntityState.CONSOLIDATED})


@dataclass(frozen=True, slots=True)
class Memory:
    """One memory as the agent sees it: an immutable copy, never a live view of a row.

    `utility` and `attended_count` are independent signals: utility decays and is
    raised by attention weights; attended_count only counts signals.
    """

    entity_id: UUID
    payload: str
    semantic_vector: tuple[float, ...]
    utility: float
    attended_count: int
    protected_floor: float
    last_evaluated: float
    state: EntityState
    usd_link: str | None = None
