"""The hot tier: one row per entity in flat numpy columns (struct of arrays).

Vectors are stored L2-normalised (float32) so cosine similarity is a dot product.
Capacity is reserved generously with ``np.empty`` (see ``reserve``): the OS commits
pages only when rows are written, so the reservation costs address space, not
memory, and a deposit never waits for a column to be copied until the reservation
(about a gigabyte of vectors) is used up; past it the columns double.

Rows are removed by moving the last rows into the holes (swap with last), done for
many rows at once, so removal never shifts the whole table. Not thread-safe: the
handle serialises every mutation under its lock.

Snapshots do not copy the vectors. ``image`` shares the vector and id columns with
the snapshot writer through a ``SharedRows`` and remembers it; while it is alive, every
row below its length that ``remove_rows`` or ``append`` is about to overwrite is kept
for it first (the few rows a pass moves, not the column), so a snapshot being written
outside the lock holds the table as it was at the image.
"""

from __future__ import annotations

import mmap
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from uuid import UUID

import numpy as np

# np.unique imports numpy.ma on first use (~40 ms): pay that at import, not inside
# the first sleep pass of a process.
import numpy.ma

from moneta.decay import DecayAnchor
from moneta.durability import HotImage, SharedRows
from moneta.ids import uuids_from_bytes
from moneta.protocols import RecordColumns
from moneta.types import EntityState, Memory, Vector

MIN_CAPACITY = 1024
_STATES = tuple(EntityState)  # by value: indexing is cheaper than EntityState(value)
# Address space reserved up front for the widest column (the vectors), and at most
# this many rows (tiny dimensions must not reserve gigabytes of scalar columns).
# Untouched pages cost nothing, so this only moves the first copying growth far out.
RESERVE_BYTES = 1 << 30
RESERVE_ROWS = 1 << 20
HUGE_PAGE_ARRAY_BYTES = 4 << 20  # numpy's own threshold for asking for huge pages


def reserve(rows: int, row_bytes: int) -> int:
    """Rows to allocate for a column group that needs ``rows`` now."""
    return max(MIN_CAPACITY, rows, min(RESERVE_ROWS, RESERVE_BYTES // max(1, row_bytes)))


def allocate(capacity: int, tail: tuple[int, ...], dtype: type, minimum: int) -> np.ndarray:
    """An uninitialised array of ``capacity`` rows, settling for fewer (>= ``minimum``)
    if the OS refuses the address space (strict overcommit)."""
    while True:
        try:
            return _empty((capacity, *tail), np.dtype(dtype))
        except MemoryError:
            if capacity <= minimum:
                raise
            capacity = max(minimum, capacity // 2)


def _empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """``np.empty``, but a large column gets private anonymous memory that is never
    backed by transparent huge pages.

    numpy asks for huge pages on big arrays; a column filled row by row then stops
    once per 2 MiB to fault in and zero a whole huge page, 5-6 ms on a VM whose host
    backs memory lazily (measured: the slowest 0.1% of deposits at 100k). 4 KiB pages
    spread that cost over the rows, and the query's sequential scan is as fast.
    """
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < HUGE_PAGE_ARRAY_BYTES or not hasattr(mmap, "MADV_NOHUGEPAGE"):
        return np.empty(shape, dtype=dtype)
    try:
        region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError as exc:
        raise MemoryError(f"cannot map {size} bytes: {exc}") from exc
    region.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(region, dtype=dtype).reshape(shape)


TOP_BLOCK = 64  # scores per group in ``top_rows``
TOP_MIN_GROUPS = 256  # below 16k scores one ``argpartition`` is as fast


def top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest of ``scores`` (1-D, no NaN), best first.

    ``argpartition`` over every score costs ~140 µs at 100k rows. For long inputs the
    scores are split into groups of ``TOP_BLOCK``: the k groups with the largest
    maxima hold the k largest scores (a group outside them has a maximum below k other
    groups' maxima), so only their members are partitioned (~30 µs at 100k). A group
    is a column of the ``(TOP_BLOCK, n // TOP_BLOCK)`` view, every ``n // TOP_BLOCK``-th
    score, because numpy reduces across rows with one vectorised pass but along short
    rows one row at a time (7x slower); the scores past that view always compete.
    """
    n = scores.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    groups = n // TOP_BLOCK
    if k == n:
        top = np.arange(n)
    elif groups < max(TOP_MIN_GROUPS, 4 * k):
        top = np.argpartition(scores, n - k)[n - k :]
    else:
        maxima = scores[: groups * TOP_BLOCK].reshape(TOP_BLOCK, groups).max(axis=0)
        chosen = np.argpartition(maxima, groups - k)[groups - k :]
        candidates = (chosen[None, :] + groups * np.arange(TOP_BLOCK)[:, None]).reshape(-1)
        if groups * TOP_BLOCK < n:
            candidates = np.concatenate([candidates, np.arange(groups * TOP_BLOCK, n)])
        picked = np.argpartition(scores[candidates], candidates.shape[0] - k)
        top = candidates[picked[candidates.shape[0] - k :]]
    return top[np.argsort(-scores[top], kind="stable")]


@dataclass(slots=True)
class Columns:
    """The per-row scalar columns, as views of the live table or as copies."""

    utility: np.ndarray  # float64
    attended: np.ndarray  # int64
    floor: np.ndarray  # float64
    last_evaluated: np.ndarray  # float64
    state: np.ndarray  # int8

    def copy(self) -> Columns:
        return Columns(
            self.utility.copy(),
            self.attended.copy(),
            self.floor.copy(),
            self.last_evaluated.copy(),
            self.state.copy(),
        )


class HotTier:
    """Struct-of-arrays table of the hot memories with an id → row index."""

    def __init__(self, dim: int | None = None, capacity: int = MIN_CAPACITY) -> None:
        self._capacity = max(MIN_CAPACITY, capacity)
        self._n = 0
        self._dim: int | None = None
        self._vectors = np.empty((0, 0), dtype=np.float32)
        self._allocate_scalars(self._capacity)
        self._shared: list[weakref.ref[SharedRows]] = []  # images still being written
        self._shared_rows = 0  # rows the live images cover: overwrites below keep a copy
        self.decay_anchor = DecayAnchor()  # query-time decay without an exp per row
        self.ids: list[UUID] = []
        self.payloads: list[str] = []
        self.usd_links: list[str | None] = []
        self._row: dict[UUID, int] = {}
        if dim is not None:
            self.set_dim(dim)

    # --- shape -----------------------------------------------------------------

    @property
    def dim(self) -> int | None:
        return self._dim

    def _set_uuid_bytes(self, column: np.ndarray) -> None:
        self._uuid_bytes = column
        # One 16-byte item per row: storing an id's bytes there is one copy, where
        # storing into the uint8 row first wraps the bytes in an array (1.4 -> 0.3 us).
        self._uuid_items = column.view("V16")[:, 0]

    def _allocate_scalars(self, capacity: int) -> None:
        self._set_uuid_bytes(np.empty((capacity, 16), dtype=np.uint8))
        self._utility = np.empty(capacity, dtype=np.float64)
        self._attended = np.empty(capacity, dtype=np.int64)
        self._floor = np.empty(capacity, dtype=np.float64)
        self._last = np.empty(capacity, dtype=np.float64)
        self._state = np.empty(capacity, dtype=np.int8)
        self._read_only_views()

    def _read_only_views(self) -> None:
        """Read-only views of the whole scalar columns, made once per allocation:
        a slice of one is read-only too, which ``view`` needs without setting flags
        on every call."""
        columns = (self._utility, self._attended, self._floor, self._last, self._state)
        self._readable = [column.view() for column in columns]
        for column in self._readable:
            column.flags.writeable = False

    def set_dim(self, dim: int) -> None:
        """Fix the embedding dimension (once) and reserve the vector column."""
        if self._dim is not None:
            if dim != self._dim:
                raise ValueError(f"embedding dimension is fixed at {self._dim}, got {dim}")
            return
        wanted = reserve(self._capacity, 4 * dim)
        vectors = allocate(wanted, (dim,), np.float32, self._capacity)
        if vectors.shape[0] > self._capacity and self._n == 0:
            self._capacity = vectors.shape[0]
            self._allocate_scalars(self._capacity)
        self._dim = dim
        self._vectors = vectors

    def __len__(self) -> int:
        return self._n

    def __contains__(self, entity_id: object) -> bool:
        return entity_id in self._row

    def _grow(self, needed: int) -> None:
        capacity = self._capacity
        while capacity < needed:
            capacity *= 2
        if capacity == self._capacity:
            return
        n = self._n

        def grown(column: np.ndarray) -> np.ndarray:
            new = np.empty((capacity, *column.shape[1:]), dtype=column.dtype)
            new[:n] = column[:n]
            return new

        if self._dim is not None:
            self._vectors = grown(self._vectors)
        self._set_uuid_bytes(grown(self._uuid_bytes))
        self._utility = grown(self._utility)
        self._attended = grown(self._attended)
        self._floor = grown(self._floor)
        self._last = grown(self._last)
        self._state = grown(self._state)
        self._read_only_views()
        self._capacity = capacity
        # Images read the old columns, which no longer change.
        self._shared, self._shared_rows = [], 0

    # --- views -----------------------------------------------------------------

    @property
    def vectors(self) -> np.ndarray:
        """(n, dim) view of the live vectors."""
        return self._vectors[: self._n]

    def spare_vectors(self, rows: int) -> np.ndarray:
        """View of the (at most ``rows``) reserved vector rows the next appends will
        write, for faulting their pages in ahead of them."""
        return self._vectors[self._n : self._n + rows]

    def columns(self) -> Columns:
        """Views of the live scalar columns; writes through them change the table (so
        the decay anchor, which caches utility and time per row, is dropped)."""
        self.decay_anchor.drop()
        n = self._n
        return Columns(
            self._utility[:n], self._attended[:n], self._floor[:n], self._last[:n], self._state[:n]
        )

    def view(self) -> Columns:
        """Read-only views of the live scalar columns (the decay anchor stays)."""
        n = self._n
        return Columns(*[column[:n] for column in self._readable])

    def row_of(self, entity_id: UUID) -> int | None:
        return self._row.get(entity_id)

    def rows_of(self, entity_ids: Iterable[UUID]) -> np.ndarray:
        """Row per id, -1 where the id is not hot."""
        get = self._row.get
        return np.fromiter((get(e, -1) for e in entity_ids), dtype=np.int64)

    def count_state(self, state: EntityState) -> int:
        return int(np.count_nonzero(self._state[: self._n] == state))

    # --- mutation --------------------------------------------------------------

    def append(
        self,
        entity_id: UUID,
        vector: np.ndarray,
        payload: str,
        *,
        floor: float,
        utility: float,
        attended: int,
        last_evaluated: float,
        state: EntityState = EntityState.VOLATILE,
        usd_link: str | None = None,
    ) -> int:
        """Add one row (vector already normalised, dim already fixed); return its row."""
        if entity_id in self._row:
            raise ValueError(f"entity {entity_id} is already in the hot tier")
        if self._dim is None:
            self.set_dim(int(vector.shape[0]))
        row = self._n
        if row == self._capacity:
            self._grow(row + 1)
        if row < self._shared_rows:
            self._preserve(np.array([row], dtype=np.int64))
        self._vectors[row] = vector
        self._uuid_items[row] = entity_id.bytes
        self._utility[row] = utility
        self._attended[row] = attended
        self._floor[row] = floor
        self._last[row] = last_evaluated
        self._state[row] = state
        self.ids.append(entity_id)
        self.payloads.append(payload)
        self.usd_links.append(usd_link)
        self._row[entity_id] = row
        self._n = row + 1
        return row

    def remove_rows(self, rows: np.ndarray | Sequence[int]) -> list[UUID]:
        """Remove rows (unique, in range); return the removed ids.

        The surviving rows from the tail move into the holes below the new length,
        one vectorised copy per column.
        """
        doomed = np.unique(np.asarray(rows, dtype=np.int64))
        if doomed.size == 0:
            return []
        self.decay_anchor.drop()  # rows move
        n = self._n
        new_n = n - doomed.size
        removed = [self.ids[r] for r in doomed.tolist()]
        holes = doomed[doomed < new_n]
        tail = np.arange(new_n, n, dtype=np.int64)
        movers = tail[~np.isin(tail, doomed, assume_unique=True)]
        if holes.size:
            if self._shared_rows:
                self._preserve(holes)
            if self._dim is not None:
                self._vectors[holes] = self._vectors[movers]
            for column in (
                self._uuid_bytes,
                self._utility,
                self._attended,
                self._floor,
                self._last,
                self._state,
            ):
                column[holes] = column[movers]
        for entity_id in removed:
            del self._row[entity_id]
        ids, payloads, links, index = self.ids, self.payloads, self.usd_links, self._row
        for hole, mover in zip(holes.tolist(), movers.tolist(), strict=True):
            ids[hole] = ids[mover]
            payloads[hole] = payloads[mover]
            links[hole] = links[mover]
            index[ids[hole]] = hole
        del ids[new_n:], payloads[new_n:], links[new_n:]
        self._n = new_n
        return removed

    def _preserve(self, rows: np.ndarray) -> None:
        """Keep ``rows`` of the vector and id columns for every image still being written
        (called before they are overwritten), and forget the images that are gone."""
        alive = [shared for ref in self._shared if (shared := ref()) is not None]
        for shared in alive:
            shared.preserve(rows)
        self._shared = [weakref.ref(shared) for shared in alive]
        self._shared_rows = max((shared.n for shared in alive), default=0)

    def set_usd_link(self, row: int, link: str | None) -> None:
        self.usd_links[row] = link

    # --- copies out ------------------------------------------------------------

    def memory(self, row: int, utility: float | None = None) -> Memory:
        """An immutable copy of one row, optionally with a (decayed) utility."""
        decayed = None if utility is None else np.array([utility], dtype=np.float64)
        return self.memories(np.array([row], dtype=np.intp), decayed)[0]

    def memories(self, rows: np.ndarray, utility: np.ndarray | None = None) -> list[Memory]:
        """Immutable copies of `rows`, optionally with their (decayed) utilities: one
        gather per column, not per row (a query builds five); each ``Vector`` is a
        read-only row of the one gathered vector block."""
        rows = np.asarray(rows, dtype=np.intp)
        if rows.size == 0:
            return []
        values = self._utility[rows] if utility is None else np.asarray(utility, np.float64)
        vectors = self._vectors[rows]  # one gathered copy: each Vector is a read-only row
        vectors.flags.writeable = False
        ids, payloads, links = self.ids, self.payloads, self.usd_links
        return [
            Memory(
                entity_id=ids[row],
                payload=payloads[row],
                semantic_vector=Vector.adopt(vector),
                utility=value,
                attended_count=attended,
                protected_floor=floor,
                last_evaluated=last,
                state=_STATES[state],
                usd_link=links[row],
            )
            for row, vector, value, attended, floor, last, state in zip(
                rows.tolist(),
                vectors,
                values.tolist(),
                self._attended[rows].tolist(),
                self._floor[rows].tolist(),
                self._last[rows].tolist(),
                self._state[rows].tolist(),
                strict=True,
            )
        ]

    def image(self, meta: dict) -> HotImage:
        """The table for a snapshot (call under the handle's lock).

        Scalar columns and the string lists are copied (small); the vector and id
        columns are shared (``HotImage.shared``: rows overwritten while the image is
        alive are kept for it), so taking an image costs no vector copy and the
        snapshot can be written outside the lock while deposits and passes continue.
        """
        n = self._n
        entity_ids = self._uuid_bytes[:n]
        columns = {"entity_ids": entity_ids}
        if self._dim is not None:
            vectors = columns["vectors"] = self._vectors[:n]
        else:
            vectors = np.empty((0, 0), dtype=np.float32)
        shared = SharedRows(columns)
        self._shared = [ref for ref in self._shared if ref() is not None]
        self._shared.append(weakref.ref(shared))
        self._shared_rows = max(self._shared_rows, n)
        return HotImage(
            entity_ids=entity_ids,
            vectors=vectors,
            utility=self._utility[:n].copy(),
            attended_count=self._attended[:n].copy(),
            protected_floor=self._floor[:n].copy(),
            last_evaluated=self._last[:n].copy(),
            state=self._state[:n].copy(),
            payloads=self.payloads[:n],
            usd_links=self.usd_links[:n],
            meta=dict(meta),
            shared=shared,
        )

    def records(self, rows: Sequence[int] | np.ndarray) -> RecordColumns:
        """Vector-index records of ``rows`` (state VOLATILE), column-wise.

        The vectors are a view of the live table when ``rows`` is a run (a bulk load
        makes no 4·dim bytes per row of temporaries): pass them to
        ``VectorIndex.upsert`` at once, under the handle's lock, which copies them.
        """
        rows = np.asarray(rows, dtype=np.int64)
        n = rows.shape[0]
        if n and rows[-1] - rows[0] == n - 1 and bool((np.diff(rows) == 1).all()):
            picked = slice(int(rows[0]), int(rows[-1]) + 1)
            ids, payloads = self.ids[picked], self.payloads[picked]
        else:
            picked = rows
            ids = [self.ids[r] for r in rows.tolist()]
            payloads = [self.payloads[r] for r in rows.tolist()]
        return RecordColumns(
            ids, self._vectors[picked], payloads, self._utility[picked], self._attended[picked],
            self._floor[picked], self._last[picked], EntityState.VOLATILE,
        )  # fmt: skip

    @classmethod
    def from_image(cls, image: HotImage, *, capacity: int = MIN_CAPACITY) -> HotTier:
        """Rebuild the table from a snapshot image (bulk column copies)."""
        n = int(image.utility.shape[0])
        dim = image.meta.get("embedding_dim")
        if dim is None and n:
            dim = int(image.vectors.shape[1])
        hot = cls(dim=dim, capacity=max(capacity, n))
        if n:
            hot._vectors[:n] = image.vectors
            hot._uuid_bytes[:n] = image.entity_ids
            hot._utility[:n] = image.utility
            hot._attended[:n] = image.attended_count
            hot._floor[:n] = image.protected_floor
            hot._last[:n] = image.last_evaluated
            hot._state[:n] = image.state
            hot.ids = uuids_from_bytes(image.entity_ids)
            hot.payloads = list(image.payloads)
            hot.usd_links = list(image.usd_links)
            hot._row = dict(zip(hot.ids, range(n), strict=True))
            hot._n = n
        return hot
