"""The consolidation manifest: the memories currently STAGED_FOR_SYNC.

Staging stored each row's utility decayed to the staging scan, so the manifest
reports stored values and needs no decay evaluation of its own.
"""

from __future__ import annotations

import numpy as np

from moneta.ecs import HotTier
from moneta.types import EntityState, Memory


def staged_rows(hot: HotTier) -> np.ndarray:
    """Rows in STAGED_FOR_SYNC, in table order."""
    return np.flatnonzero(hot.view().state == EntityState.STAGED_FOR_SYNC)


def consolidation_manifest(hot: HotTier) -> list[Memory]:
    """Immutable copies of every STAGED_FOR_SYNC row."""
    return hot.memories(staged_rows(hot))
