"""Attention signals: an append-only log drained by the sleep pass (DESIGN §1.4).

``signal_attention`` appends one entry per call — the ids, their weights and the
time — without touching any row, so signalling never waits on per-entity locks.
The sleep pass swaps the buffer out and reduces it with ``reduce_signals``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any
from uuid import UUID

import numpy as np

from moneta.decay import decayed_utility
from moneta.ecs import Columns


@dataclass(frozen=True, slots=True)
class AttentionEntry:
    """One ``signal_attention`` call."""

    entity_ids: tuple[UUID, ...]
    weights: np.ndarray  # float64, one per id
    at: float


def validate_weights(weights: Any) -> tuple[tuple[UUID, ...], np.ndarray]:
    """Check a ``signal_attention`` argument; return (ids, weights) or raise.

    Keys must be ``uuid.UUID`` (``TypeError``) and values finite real numbers
    (``ValueError`` for NaN/inf, ``TypeError`` otherwise), so a rejected call appends
    nothing.
    """
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a dict of UUID -> float, got {type(weights).__name__}")
    ids = tuple(weights.keys())
    for key in ids:
        if not isinstance(key, UUID):
            raise TypeError(f"weights keys must be uuid.UUID, got {type(key).__name__}: {key!r}")
    values = []
    for key, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(f"weights[{key}] must be a real number, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"weights[{key}] must be finite, got {value!r}")
        values.append(value)
    return ids, np.asarray(values, dtype=np.float64)


class AttentionLog:
    """Append-only buffer of attention entries; ``drain`` swaps it for an empty one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[AttentionEntry] = []

    def append(self, entry: AttentionEntry) -> None:
        with self._lock:
            self._entries.append(entry)

    def drain(self) -> list[AttentionEntry]:
        """Take every pending entry; later appends go to a fresh buffer."""
        with self._lock:
            entries, self._entries = self._entries, []
        return entries

    def pending(self) -> list[AttentionEntry]:
        """A copy of the pending entries (for previews and checkpoints)."""
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(e.entity_ids) for e in self._entries)


@dataclass(frozen=True, slots=True)
class Signals:
    """Flattened signals resolved to rows: one element per (entity, weight, time)."""

    rows: np.ndarray  # int64
    weights: np.ndarray  # float64
    times: np.ndarray  # float64


def reduce_signals(cols: Columns, signals: Signals, now: float, rate: float) -> np.ndarray:
    """Apply signals to ``cols`` in place; return the touched rows (sorted, unique).

    Per row, in time order: decay to the signal's time, add its weight, clamp to
    [floor, 1]; finally decay to ``now``. ``attended`` grows by the number of signals
    and ``last_evaluated`` becomes ``now``. A signal therefore never cancels the
    decay that happened before it.

    Vectorised across rows: iteration k handles every row's k-th event, so the loop
    runs (most signals any one row received + 1) times. The final decay to ``now``
    is one more event of weight 0 per row, which keeps a single decay evaluation.
    """
    touched = np.unique(signals.rows)
    if touched.size == 0:
        return touched
    rows = np.concatenate([signals.rows, touched])
    weights = np.concatenate([signals.weights, np.zeros(touched.size)])
    times = np.concatenate([signals.times, np.full(touched.size, now, dtype=np.float64)])
    # Sort by row, then time; the closing event is last even if a signal's time is
    # later than `now` (skewed clock), because its rank key says so.
    closing = np.concatenate([np.zeros(signals.rows.size), np.ones(touched.size)])
    order = np.lexsort((times, closing, rows))
    rows, weights, times = rows[order], weights[order], times[order]
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    group_sizes = np.diff(np.r_[starts, rows.size])
    rank = np.arange(rows.size) - np.repeat(starts, group_sizes)

    for k in range(int(group_sizes.max())):
        at_rank = rank == k
        r, w, t = rows[at_rank], weights[at_rank], times[at_rank]
        value = decayed_utility(cols.utility[r], cols.last_evaluated[r], cols.floor[r], t, rate)
        value += w
        np.minimum(value, 1.0, out=value)
        np.maximum(value, cols.floor[r], out=value)
        cols.utility[r] = value
        cols.last_evaluated[r] = np.maximum(cols.last_evaluated[r], t)
    cols.last_evaluated[touched] = now
    np.add.at(cols.attended, signals.rows, 1)
    return touched
