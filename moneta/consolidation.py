"""Sleep-pass selection and batching (DESIGN §1.5).

Selection looks only at VOLATILE rows with no protected floor (pinned rows are
never auto-selected) and uses the utility decayed to the scan time:

- prune: ``utility < 0.1 and attended_count < 3``
- stage: ``utility < 0.3 and attended_count >= 3``

Staged rows are consolidated in batches of at most 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from uuid import UUID

import numpy as np

from moneta.decay import decayed_utility
from moneta.ecs import Columns
from moneta.types import EntityState

PRUNE_UTILITY = 0.1
STAGE_UTILITY = 0.3
MIN_ATTENDED_TO_STAGE = 3


@dataclass(frozen=True, slots=True)
class Selection:
    """Rows chosen by one scan, with every row's utility decayed to the scan time."""

    prune_rows: np.ndarray  # int64
    stage_rows: np.ndarray  # int64
    decayed: np.ndarray  # float64, one per row


def select(cols: Columns, now: float, rate: float) -> Selection:
    """The consolidation scan: which rows to prune and which to stage."""
    decayed = decayed_utility(cols.utility, cols.last_evaluated, cols.floor, now, rate)
    eligible = (cols.state == EntityState.VOLATILE) & (cols.floor == 0.0)
    few = cols.attended < MIN_ATTENDED_TO_STAGE
    prune = eligible & (decayed < PRUNE_UTILITY) & few
    stage = eligible & (decayed < STAGE_UTILITY) & ~few
    return Selection(np.flatnonzero(prune), np.flatnonzero(stage), decayed)


def prune_reason(utility: float, attended: int) -> str:
    return f"utility {utility:.4f} < {PRUNE_UTILITY} and attended {attended} < 3"


def stage_reason(utility: float, attended: int) -> str:
    return f"utility {utility:.4f} < {STAGE_UTILITY} and attended {attended} >= 3"


def batches(items: list[UUID], size: int) -> Iterator[list[UUID]]:
    """Consecutive chunks of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True, slots=True)
class SleepPassReport:
    """What one sleep pass did.

    ``attention_applied`` counts signals applied to known memories; ``staged`` the
    rows moved VOLATILE → STAGED_FOR_SYNC by this pass; ``consolidated`` the rows
    that reached the cold tier (including retried ones); ``still_staged`` the rows
    left STAGED for the next pass after a failed batch.
    """

    attention_applied: int = 0
    hydrated: int = 0
    pruned: int = 0
    staged: int = 0
    consolidated: int = 0
    batches: int = 0
    failed_batches: int = 0
    still_staged: int = 0
    error: str | None = None
    trigger: str = "operator"
    at: float = 0.0
    gists_enqueued: int = 0  # handed to the gist sink by this pass (moneta.gist)
    gists_deferred: int = 0  # waiting in the gist ledger for room under the bound


@dataclass(frozen=True, slots=True)
class SleepPreview:
    """What a sleep pass would do now, without doing it."""

    attention_pending: int
    would_prune: list[UUID] = field(default_factory=list)
    would_stage: list[UUID] = field(default_factory=list)
    already_staged: list[UUID] = field(default_factory=list)
    would_hydrate: list[UUID] = field(default_factory=list)
    at: float = 0.0
