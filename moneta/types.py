"""Value types shared by every part of the substrate."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload
from uuid import UUID

import numpy as np


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


class Vector(Sequence[float]):
    """An embedding as a memory carries it: an immutable sequence of floats.

    It holds a read-only float32 array and makes Python floats only when read: a
    tuple of 384 floats per result cost a query more than its own ranking work.
    ``np.asarray(vector)`` is that array, without a copy. Equal to a ``Vector`` or a
    ``tuple`` with the same values, and hashes like that tuple.
    """

    __slots__ = ("_array",)

    def __init__(self, values: Iterable[float] | np.ndarray = ()) -> None:
        array = np.array(values if isinstance(values, np.ndarray) else list(values), np.float32)
        if array.ndim != 1:
            raise ValueError(f"a Vector is 1-D, got shape {array.shape}")
        array.flags.writeable = False
        self._array = array

    @classmethod
    def adopt(cls, array: np.ndarray) -> Vector:
        """Wrap a 1-D float32 array nobody else writes to (no copy); made read-only."""
        vector = object.__new__(cls)
        if array.flags.writeable:
            array.flags.writeable = False
        vector._array = array
        return vector

    def __len__(self) -> int:
        return self._array.shape[0]

    @overload
    def __getitem__(self, index: int) -> float: ...
    @overload
    def __getitem__(self, index: slice) -> Vector: ...
    def __getitem__(self, index: int | slice) -> float | Vector:
        if isinstance(index, slice):
            return Vector.adopt(self._array[index])
        return float(self._array[index])

    def __iter__(self) -> Iterator[float]:
        return iter(self._array.tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Vector):
            return bool(np.array_equal(self._array, other._array))
        if isinstance(other, tuple):
            return tuple(self._array.tolist()) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self._array.tolist()))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if dtype is not None and np.dtype(dtype) != self._array.dtype:
            return self._array.astype(dtype)
        return self._array.copy() if copy else self._array

    def __reduce__(self) -> tuple[type[Vector], tuple[list[float]]]:
        return Vector, (self._array.tolist(),)

    def __repr__(self) -> str:
        values = self._array.tolist()
        shown = ", ".join(repr(x) for x in values[:4]) + (", ..." if len(values) > 4 else "")
        return f"Vector([{shown}], dim={len(values)})"

    def tolist(self) -> list[float]:
        return self._array.tolist()


@dataclass(frozen=True, slots=True)
class Memory:
    """One memory as the agent sees it: an immutable copy, never a live view of a row.

    `utility` and `attended_count` are independent signals: utility decays and is
    raised by attention weights; attended_count only counts signals.
    """

    entity_id: UUID
    payload: str
    semantic_vector: Vector
    utility: float
    attended_count: int
    protected_floor: float
    last_evaluated: float
    state: EntityState
    usd_link: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.semantic_vector, Vector):  # any sequence of floats
            object.__setattr__(self, "semantic_vector", Vector(self.semantic_vector))
