"""The OpenUSD cold tier: an ``AuthoringTarget`` that authors typed ``MonetaMemory`` prims.

One directory holds a root layer (``cortex.usda``) whose sublayer stack is the
protected layer (strongest) and the rolling daily layers, newest first; see
``moneta.usd_layers`` for the names. Every memory lives in exactly one daily layer;
re-authoring it overwrites its prim in that layer. Pinned memories additionally
carry an opinion in ``cortex_protected.usda``, which composes over the daily one.

Concurrency: writers (``author``, ``author_protected``, ``unpin``, ``forget``) run one
at a time. Each makes all of its edits with the Sdf API inside one
``Sdf.ChangeBlock`` while holding the reader lock, and releases the lock before
``Save()``, so readers (``reading``, ``read``, ``count``, ``layer_stack``) never wait on
the lock for disk I/O. A reader holding the lock never sees a half-written prim: the
block's edits are composed when it closes, still under the lock. usd-core's
``Sdf.Layer.Save()`` holds the GIL while it serialises, so threads of this process
still pause for a Save, for a time that grows with the current daily layer
(docs/benchmarks.md). With ``writer_process=True`` a child process holding its own
copy of the layers plans, applies and saves each write, and this process applies
the same edit (``_Edit``) only after the child saved it; its readers then wait only
for that in-memory edit.

Durability: a write succeeds only when every dirty layer's ``Save()`` returned
True. ``False`` and an exception both become ``AuthoringError`` naming the saved,
failed and pending layers; the in-memory edits stay, and the next write saves
them again (the handle re-authors the same batch, which is idempotent).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from numbers import Integral, Real
from pathlib import Path
from uuid import UUID

from pxr import Sdf, Tf, Usd

from moneta.errors import AuthoringError, MonetaError
from moneta.types import EntityState, Memory, Vector
from moneta.usd_layers import (
    PROTECTED_LAYER,
    ROOT_LAYER,
    DailyLayer,
    parse_prim_name,
    prim_link,
    prim_name,
    stack_order,
)
from moneta.usd_schema import (
    MEMORY_ATTRIBUTES,
    MEMORY_FALLBACKS,
    MEMORY_TYPE_NAME,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_PRIMS_PER_LAYER = 50_000
_INT32_MAX = 2**31 - 1
_USDA = Sdf.FileFormat.FindByExtension("usda")

LayerSaver = Callable[[Sdf.Layer], bool]
"""Saves one layer and reports success; the default calls ``layer.Save()``."""


class ColdLayerError(MonetaError):
    """A cold-tier layer file cannot be opened or created; the message names it."""


class ColdTierClosedError(MonetaError):
    """The cold tier was used after ``close()``."""


@dataclass(frozen=True, slots=True)
class ColdRecord:
    """A memory as composed from the cold tier (protected opinions win)."""

    entity_id: UUID
    payload: str
    utility: float
    attended_count: int
    protected_floor: float
    last_evaluated: float
    prior_state: str
    usd_link: str
    layer: str  # file name of the strongest layer with an opinion on the prim
    protected: bool

    def to_memory(self, semantic_vector: Sequence[float] = ()) -> Memory:
        """The agent-facing copy: state CONSOLIDATED, linked to its prim."""
        return Memory(
            entity_id=self.entity_id,
            payload=self.payload,
            semantic_vector=Vector(semantic_vector),
            utility=self.utility,
            attended_count=self.attended_count,
            protected_floor=self.protected_floor,
            last_evaluated=self.last_evaluated,
            state=EntityState.CONSOLIDATED,
            usd_link=self.usd_link,
        )


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """One layer of the sublayer stack and how many root prims it holds."""

    name: str
    prims: int


@dataclass(frozen=True, slots=True)
class _PrimValues:
    """Validated attribute values of one prim, keyed like ``MEMORY_ATTRIBUTES``."""

    entity_id: UUID
    values: dict[str, object]


@dataclass(slots=True)
class _Stack:
    """The open layers and where each memory lives (one daily layer; maybe pinned)."""

    root: Sdf.Layer
    protected: Sdf.Layer
    daily: dict[DailyLayer, Sdf.Layer]
    home: dict[UUID, DailyLayer]
    protected_ids: set[UUID]
    stage: Usd.Stage | None = None
    gists: dict[UUID, DailyLayer] = field(default_factory=dict)  # gist overs (moneta.gist)

    def in_save_order(self) -> list[Sdf.Layer]:
        """Content layers first and the root last, so the root never lists a missing file."""
        content = [self.daily[d] for d in sorted(self.daily, reverse=True)]
        return [*content, self.protected, self.root]


@dataclass(frozen=True, slots=True)
class _Edit:
    """One write as data: what to author, remove and stamp, layer by file name.

    Plain values (no Sdf objects) so the writer process can send it back and this
    process can apply exactly the same edit to its own layers.
    """

    writes: tuple[tuple[str, _PrimValues], ...] = ()
    deletes: tuple[tuple[str, UUID], ...] = ()
    stamps: tuple[tuple[str, str, float], ...] = ()

    def layer_names(self) -> list[str]:
        names = [n for n, _ in self.writes] + [n for n, _ in self.deletes]
        return sorted({*names, *(n for n, _, _ in self.stamps)})

    def days(self) -> set[DailyLayer]:
        """The daily layers the edit touches."""
        parsed = (DailyLayer.parse(name) for name in self.layer_names())
        return {day for day in parsed if day is not None}


def _save(layer: Sdf.Layer) -> bool:
    return bool(layer.Save())


class UsdTarget:
    """The cold tier in a directory of USD layers (see the module docstring).

    ``max_prims_per_layer`` is the rotation cap of a daily layer. ``save_layer``
    replaces ``Sdf.Layer.Save`` for every layer save (a seam for fault injection
    and for measuring lock policies); it must return True only if the layer is on
    disk. ``writer_process=True`` makes every write (and its ``Save()``) happen in a
    child process holding its own copy of the layers, so the GIL that ``Save()``
    holds while it serialises is not this process's; ``save_layer`` must then be
    picklable and runs in that process.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        max_prims_per_layer: int = DEFAULT_MAX_PRIMS_PER_LAYER,
        save_layer: LayerSaver | None = None,
        writer_process: bool = False,
    ) -> None:
        if not isinstance(writer_process, bool):
            raise TypeError(f"writer_process must be a bool, got {type(writer_process).__name__}")
        if (
            isinstance(max_prims_per_layer, bool)
            or not isinstance(max_prims_per_layer, Integral)
            or max_prims_per_layer < 1
        ):
            raise ValueError(
                f"max_prims_per_layer must be an int >= 1, got {max_prims_per_layer!r}"
            )
        self._dir = Path(directory)
        self._cap = int(max_prims_per_layer)
        self._save_layer: LayerSaver = save_layer or _save
        self._lock = threading.Lock()  # readers and the ChangeBlock only
        self._write_mutex = threading.Lock()  # one writer at a time, through Save()
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ColdLayerError(f"cannot create cold-tier directory {self._dir}: {exc}") from exc
        self._writer: _WriterProcess | None = None
        if writer_process:
            self._writer = _WriterProcess(self._dir, self._cap, save_layer)
        with self._write_mutex:
            self._stack: _Stack | None = _load(self._dir)
            if self._writer is None:
                self._save_dirty(self._stack, "open")

    # --- properties -----------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def root_layer_path(self) -> Path:
        """Open this with ``Usd.Stage.Open`` to see the composed cold tier."""
        return self._dir / ROOT_LAYER

    @property
    def max_prims_per_layer(self) -> int:
        return self._cap

    # --- AuthoringTarget ------------------------------------------------------

    def author(
        self, batch: Sequence[Memory], *, batch_id: str, authored_at: float
    ) -> dict[UUID, str]:
        """Author `batch` into the daily layers and save; return each entity's prim path.

        A memory already in the cold tier is overwritten in the layer that holds it;
        a new one goes to the newest layer of the UTC day of `authored_at`, rotating
        to a continuation layer when that one holds `max_prims_per_layer` prims.
        """
        records = _validated_batch(batch, "batch")
        _check_text(batch_id, "batch_id")
        when = _check_finite(authored_at, "authored_at")
        self._write("author", (records, batch_id, when))
        return {record.entity_id: prim_link(record.entity_id) for record in records}

    def forget(self, entity_ids: Iterable[UUID]) -> None:
        """Remove the entities' prims from every layer (protected included) and save."""
        ids = _validated_ids(entity_ids, "entity_ids")
        self._write("forget", (ids,))

    def close(self) -> None:
        """Release the layers, the reader stage and the writer process. Idempotent."""
        with self._write_mutex, self._lock:
            self._stack = None
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def __enter__(self) -> UsdTarget:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- operator paths -------------------------------------------------------

    def author_protected(
        self, batch: Sequence[Memory], *, batch_id: str, authored_at: float
    ) -> dict[UUID, str]:
        """Author pinned memories into ``cortex_protected.usda`` and save.

        The protected layer is strongest, so its values win over any opinion the
        same prim has in a daily layer.
        """
        records = _validated_batch(batch, "batch")
        _check_text(batch_id, "batch_id")
        when = _check_finite(authored_at, "authored_at")
        self._write("author_protected", (records, batch_id, when))
        return {record.entity_id: prim_link(record.entity_id) for record in records}

    def unpin(self, entity_ids: Iterable[UUID], *, authored_at: float) -> dict[UUID, str]:
        """Move pinned memories out of the protected layer with ``protectedFloor = 0``.

        The composed values (protected over daily) are written to the daily layer
        that holds the memory, or to the current daily layer of `authored_at`, and
        the protected opinion is removed. Ids that are not pinned are skipped.
        Returns the prim path of each unpinned memory.
        """
        ids = _validated_ids(entity_ids, "entity_ids")
        when = _check_finite(authored_at, "authored_at")
        edit = self._write("unpin", (ids, when))
        return {record.entity_id: prim_link(record.entity_id) for _, record in edit.writes}

    # --- readers --------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[Usd.Stage]:
        """Hold the reader lock and yield a stage composed on the root layer.

        No batch is applied while the block runs, so a traversal sees whole prims
        only. Keep the block short: writers wait for it.
        """
        with self._lock:
            stack = self._open_stack()
            if stack.stage is None:
                stack.stage = Usd.Stage.Open(stack.root)
            yield stack.stage

    def read(self, entity_ids: Iterable[UUID]) -> dict[UUID, ColdRecord]:
        """Composed records of the entities found in the cold tier (others are absent)."""
        ids = _validated_ids(entity_ids, "entity_ids")
        with self._lock:
            stack = self._open_stack()
            found = {i: _compose(stack, i) for i in ids}
        return {i: rec for i, rec in found.items() if rec is not None}

    def count(self) -> int:
        """Number of distinct memories in the cold tier."""
        with self._lock:
            stack = self._open_stack()
            return len(stack.home.keys() | stack.protected_ids)

    def layer_stack(self) -> list[LayerInfo]:
        """The sublayer stack, strongest first, with each layer's root prim count."""
        with self._lock:
            stack = self._open_stack()
            infos = [LayerInfo(PROTECTED_LAYER, len(stack.protected.rootPrims))]
            for day in sorted(stack.daily, reverse=True):
                infos.append(LayerInfo(day.filename, len(stack.daily[day].rootPrims)))
            return infos

    # --- internals ------------------------------------------------------------

    def _open_stack(self) -> _Stack:
        if self._stack is None:
            raise ColdTierClosedError(f"cold tier at {self._dir} is closed")
        return self._stack

    def _write(self, action: str, args: tuple) -> _Edit:
        """One write: planned, applied and saved here, or by the writer process.

        With a writer process, that process (its own copy of the layers) plans,
        applies and saves; only once it has saved does this process apply the same
        edit to its layers, which it never saves. A failed save is therefore never
        visible to readers here, and the edit's placement is the writer's.
        """
        with self._write_mutex:
            stack = self._open_stack()
            if self._writer is None:
                return self._perform(action, args)
            edit = self._writer.call(action, args)
            missing = edit.days() - set(stack.daily)
            new_layers = {day: _open_layer(self._dir / day.filename) for day in missing}
            fresh = _fresh_prims(stack, edit, new_layers)
            self._edit(lambda s: _apply(s, edit, new_layers, fresh), action, edit.layer_names())
            return edit

    def _perform(self, action: str, args: tuple) -> _Edit:
        """Plan, apply (one ChangeBlock under the reader lock) and save one write."""
        stack = self._open_stack()
        if action == "author":
            edit = self._plan_author(stack, *args)
        elif action == "author_protected":
            records, batch_id, when = args
            edit = _Edit(
                writes=tuple((PROTECTED_LAYER, r) for r in records),
                stamps=((PROTECTED_LAYER, batch_id, when),),
            )
        elif action == "unpin":
            edit = self._plan_unpin(stack, *args)
        elif action == "forget":
            edit = _plan_forget(stack, *args)
        else:
            raise ValueError(f"unknown cold-tier write {action!r}")
        missing = edit.days() - set(stack.daily)
        new_layers = {day: _new_layer(self._dir / day.filename) for day in missing}
        fresh = _fresh_prims(stack, edit, new_layers)
        self._edit(lambda s: _apply(s, edit, new_layers, fresh), action, edit.layer_names())
        self._save_dirty(self._open_stack(), action)
        return edit

    def _plan_author(
        self, stack: _Stack, records: Sequence[_PrimValues], batch_id: str, when: float
    ) -> _Edit:
        placement = self._placement(stack, records, when)
        writes = tuple((placement[r.entity_id].filename, r) for r in records)
        touched = sorted({day.filename for day in placement.values()})
        return _Edit(writes=writes, stamps=tuple((name, batch_id, when) for name in touched))

    def _plan_unpin(self, stack: _Stack, ids: Sequence[UUID], when: float) -> _Edit:
        with self._lock:
            composed = [_compose(stack, i) for i in ids if i in stack.protected_ids]
        records = [
            _PrimValues(rec.entity_id, {**_values_of(rec), "protectedFloor": 0.0})
            for rec in composed
            if rec is not None
        ]
        placement = self._placement(stack, records, when)
        return _Edit(
            writes=tuple((placement[r.entity_id].filename, r) for r in records),
            deletes=tuple((PROTECTED_LAYER, r.entity_id) for r in records),
        )

    def _placement(
        self, stack: _Stack, records: Sequence[_PrimValues], authored_at: float
    ) -> dict[UUID, DailyLayer]:
        """Choose each record's daily layer (its home, else the day's current layer).

        Runs outside the reader lock: only the writer, who holds the write mutex,
        changes the index it reads.
        """
        placement: dict[UUID, DailyLayer] = {}
        sizes: dict[DailyLayer, int] = {}  # root prims now, plus those placed so far
        current: DailyLayer | None = None

        def size(day: DailyLayer) -> int:
            if day not in sizes:
                layer = stack.daily.get(day)
                sizes[day] = len(layer.rootPrims) if layer is not None else 0  # O(prims)
            return sizes[day]

        for record in records:
            entity_id = record.entity_id
            if entity_id in placement:
                continue
            home = stack.home.get(entity_id)
            if home is not None:
                placement[entity_id] = home
                continue
            if current is None:
                first = DailyLayer.for_time(authored_at)
                current = max((d for d in stack.daily if d.day == first.day), default=first)
            while size(current) >= self._cap:
                current = current.next()
            placement[entity_id] = current
            sizes[current] += 1
        return placement

    def _edit(self, edit: Callable[[_Stack], None], action: str, layers: Sequence[str]) -> None:
        """Run `edit` under the reader lock inside one ChangeBlock.

        If it does not complete, unsaved edits are discarded (layers reload from
        disk) so no half-applied batch is ever saved or read.
        """
        try:
            with self._lock:
                completed = False
                try:
                    with Sdf.ChangeBlock():
                        edit(self._open_stack())
                    completed = True
                finally:
                    if not completed:
                        self._stack = _load(self._dir)
        except Exception as exc:
            raise AuthoringError(
                f"cold tier {action} in {self._dir}: editing layers failed: {exc!r}",
                failed=layers,
            ) from exc

    def _save_dirty(self, stack: _Stack, action: str) -> None:
        """Save every dirty layer; any failure names saved, failed and pending layers."""
        dirty = [layer for layer in stack.in_save_order() if layer.dirty]
        names = [Path(layer.identifier).name for layer in dirty]
        for index, layer in enumerate(dirty):
            saved, failed, pending = names[:index], [names[index]], names[index + 1 :]
            where = f"cold tier {action} in {self._dir}: saving {names[index]}"
            try:
                ok = self._save_layer(layer)
            except Exception as exc:
                raise AuthoringError(
                    f"{where} raised {exc!r}", saved=saved, failed=failed, pending=pending
                ) from exc
            if not ok:
                raise AuthoringError(
                    f"{where} returned False", saved=saved, failed=failed, pending=pending
                )


# --- the layer stack -----------------------------------------------------------


def _load(directory: Path) -> _Stack:
    """Open (or create) every layer and index where each memory lives.

    Counts and locations come from the layers themselves. A daily file on disk
    that the root layer does not list (a write interrupted before the root was
    saved) joins the stack; a listed file that is missing leaves it. The root is
    left dirty if its sublayer list changed.
    """
    root = _open_layer(directory / ROOT_LAYER)
    protected = _open_layer(directory / PROTECTED_LAYER)
    days: set[DailyLayer] = set()
    for path in directory.glob("cortex_*.usda"):
        day = DailyLayer.parse(path.name)
        if day is not None:
            days.add(day)
    for listed in root.subLayerPaths:
        day = DailyLayer.parse(Path(listed).name)
        if day is not None and day not in days:
            log.warning("cold tier: %s lists missing layer %s", root.identifier, listed)
    daily = {day: _open_layer(directory / day.filename) for day in days}
    home: dict[UUID, DailyLayer] = {}
    gists: dict[UUID, DailyLayer] = {}
    for day in sorted(daily, reverse=True):
        names = daily[day].rootPrims.keys()  # iterating the proxy yields specs
        for name in names:
            entity_id = parse_prim_name(name)
            if entity_id is None:
                continue
            if entity_id in home:
                newer = daily[home[entity_id]].GetPrimAtPath(Sdf.Path(prim_link(entity_id)))
                if newer is not None and newer.specifier == Sdf.SpecifierOver:
                    gists[entity_id] = home[entity_id]  # a gist over; the def lives here
                    home[entity_id] = day
                    continue
                log.warning(
                    "cold tier: %s also in %s; the stronger %s is used",
                    name,
                    day.filename,
                    home[entity_id].filename,
                )
                continue
            home[entity_id] = day
    pinned = map(parse_prim_name, protected.rootPrims.keys())
    protected_ids = {entity_id for entity_id in pinned if entity_id is not None}
    desired = stack_order(set(daily))
    if list(root.subLayerPaths) != desired:
        root.subLayerPaths = desired
    return _Stack(root, protected, daily, home, protected_ids, gists=gists)


def _fresh_prims(
    stack: _Stack, edit: _Edit, new_layers: dict[DailyLayer, Sdf.Layer]
) -> Sdf.Layer | None:
    """The edit's prims that do not exist yet, authored into an anonymous layer.

    Runs before the reader lock is taken (only the writer changes the layers it
    reads), so under the lock each new prim is one ``Sdf.CopySpec`` instead of a
    dozen attribute calls.
    """
    scratch: Sdf.Layer | None = None
    for name, record in edit.writes:
        path = Sdf.Path(prim_link(record.entity_id))
        if name == PROTECTED_LAYER:
            layer = stack.protected
        else:
            day = DailyLayer.parse(name)
            layer = stack.daily.get(day) or new_layers.get(day)  # type: ignore[arg-type]
        if layer is not None and layer.GetPrimAtPath(path) is not None:
            continue
        if scratch is None:
            scratch = Sdf.Layer.CreateAnonymous("moneta_batch")
        _write_prim(scratch, record)
    return scratch


def _apply(
    stack: _Stack,
    edit: _Edit,
    new_layers: dict[DailyLayer, Sdf.Layer],
    fresh: Sdf.Layer | None = None,
) -> None:
    """Apply `edit` to the open layers and the index (inside the ChangeBlock).

    Prims found in `fresh` (see ``_fresh_prims``) and still absent from their layer
    are copied from it whole; every other write sets the prim's attributes.
    """
    if new_layers:
        stack.daily.update(new_layers)
        stack.root.subLayerPaths = stack_order(set(stack.daily))

    def layer_named(name: str) -> tuple[Sdf.Layer, DailyLayer | None]:
        if name == PROTECTED_LAYER:
            return stack.protected, None
        day = DailyLayer.parse(name)
        if day is None or day not in stack.daily:
            raise ColdLayerError(f"edit names unknown layer {name!r}")
        return stack.daily[day], day

    for name, record in edit.writes:
        layer, day = layer_named(name)
        path = Sdf.Path(prim_link(record.entity_id))
        if (
            fresh is not None
            and layer.GetPrimAtPath(path) is None
            and fresh.GetPrimAtPath(path) is not None
        ):
            if not Sdf.CopySpec(fresh, path, layer, path):
                raise ColdLayerError(f"copying {path} into {name} failed")
        else:
            _write_prim(layer, record)
        if day is None:
            stack.protected_ids.add(record.entity_id)
        else:
            stack.home[record.entity_id] = day
    for name, entity_id in edit.deletes:
        layer, day = layer_named(name)
        path = Sdf.Path(prim_link(entity_id))
        if layer.GetPrimAtPath(path) is not None:
            del layer.rootPrims[path.name]
        if day is None:
            stack.protected_ids.discard(entity_id)
        elif stack.home.get(entity_id) == day:
            del stack.home[entity_id]
    for name, batch_id, when in edit.stamps:
        _stamp(layer_named(name)[0], batch_id, when)


def _plan_forget(stack: _Stack, ids: Sequence[UUID]) -> _Edit:
    """Every opinion the entities have, in the protected layer and the daily ones."""
    layers = [(PROTECTED_LAYER, stack.protected)]
    layers += [(day.filename, layer) for day, layer in stack.daily.items()]
    deletes = [
        (name, entity_id)
        for entity_id in ids
        for name, layer in layers
        if layer.GetPrimAtPath(Sdf.Path(prim_link(entity_id))) is not None
    ]
    return _Edit(deletes=tuple(deletes))


def _compose(stack: _Stack, entity_id: UUID) -> ColdRecord | None:
    """Value resolution over the two possible opinions: protected, then daily."""
    path = Sdf.Path(prim_link(entity_id))
    specs: list[tuple[str, Sdf.PrimSpec]] = []
    if entity_id in stack.protected_ids:
        spec = stack.protected.GetPrimAtPath(path)
        if spec is not None:
            specs.append((PROTECTED_LAYER, spec))
    home = stack.home.get(entity_id)
    if home is not None:
        spec = stack.daily[home].GetPrimAtPath(path)
        if spec is not None:
            specs.append((home.filename, spec))
    gist_day = stack.gists.get(entity_id)
    if gist_day is not None and gist_day != home and gist_day in stack.daily:
        spec = stack.daily[gist_day].GetPrimAtPath(path)
        if spec is not None:  # a gist over (moneta.gist): newer, so stronger than home
            first = 1 if specs and specs[0][0] == PROTECTED_LAYER else 0
            specs.insert(first, (gist_day.filename, spec))
    if not specs:
        return None
    values: dict[str, object] = {}
    direct: set[str] = set()
    for attr in MEMORY_ATTRIBUTES:
        values[attr] = MEMORY_FALLBACKS[attr]
        for _, spec in specs:
            attr_spec = spec.attributes.get(attr)
            if attr_spec is not None and attr_spec.HasDefaultValue():
                values[attr] = attr_spec.default
                direct.add(attr)
                break
    if "payload" not in direct:  # gisted: the selected `fidelity` variant holds it
        from moneta.gist import selected_payload

        chosen = selected_payload([spec for _, spec in specs])
        if chosen is not None:
            values["payload"] = chosen
    return ColdRecord(
        entity_id=entity_id,
        payload=str(values["payload"]),
        utility=float(values["utility"]),
        attended_count=int(values["attendedCount"]),
        protected_floor=float(values["protectedFloor"]),
        last_evaluated=float(values["lastEvaluated"]),
        prior_state=str(values["priorState"]),
        usd_link=prim_link(entity_id),
        layer=specs[0][0],
        protected=specs[0][0] == PROTECTED_LAYER,
    )


# --- Sdf helpers -------------------------------------------------------------


def _open_layer(path: Path) -> Sdf.Layer:
    """Open a layer file as it is on disk, or create an empty one."""
    try:
        if path.exists():
            layer = Sdf.Layer.FindOrOpen(str(path))
            if layer is not None and layer.dirty:
                # Left over in this process from a target whose save failed: the
                # file is the truth, the STAGED batch will be authored again.
                layer.Reload(force=True)
        else:
            layer = Sdf.Layer.CreateNew(str(path))
    except Tf.ErrorException as exc:
        raise ColdLayerError(f"cannot open USD layer {path}: {exc}") from exc
    if layer is None:
        raise ColdLayerError(f"cannot open USD layer {path}")
    return layer


def _new_layer(path: Path) -> Sdf.Layer:
    """An in-memory layer bound to `path`; the file appears at its first Save()."""
    if path.exists():
        return _open_layer(path)
    layer = Sdf.Layer.Find(str(path))
    if layer is not None:
        layer.Clear()  # content of an unsaved layer from an earlier, failed write
        return layer
    layer = Sdf.Layer.New(_USDA, str(path))
    if layer is None:
        raise ColdLayerError(f"cannot create USD layer {path}")
    return layer


def _write_prim(layer: Sdf.Layer, record: _PrimValues) -> None:
    """Create or overwrite one typed prim with all six attributes (Sdf API only)."""
    name = prim_name(record.entity_id)
    # A path lookup is O(1); `layer.rootPrims.get(name)` scans every root prim.
    spec = layer.GetPrimAtPath(Sdf.Path.absoluteRootPath.AppendChild(name))
    if spec is None:
        spec = Sdf.PrimSpec(layer, name, Sdf.SpecifierDef, MEMORY_TYPE_NAME)
        for attr, value_type in MEMORY_ATTRIBUTES.items():
            Sdf.AttributeSpec(spec, attr, value_type).default = record.values[attr]
        return
    spec.specifier = Sdf.SpecifierDef
    spec.typeName = MEMORY_TYPE_NAME
    attributes = spec.attributes
    for attr, value_type in MEMORY_ATTRIBUTES.items():
        attr_spec = attributes.get(attr)
        if attr_spec is None:
            attr_spec = Sdf.AttributeSpec(spec, attr, value_type)
        attr_spec.default = record.values[attr]


def _stamp(layer: Sdf.Layer, batch_id: str, authored_at: float) -> None:
    """Record the last batch in the layer's metadata (for operators reading files)."""
    data = dict(layer.customLayerData)
    data["monetaLastBatchId"] = batch_id
    data["monetaLastAuthoredAt"] = authored_at
    layer.customLayerData = data


def _values_of(record: ColdRecord) -> dict[str, object]:
    return {
        "payload": record.payload,
        "utility": record.utility,
        "attendedCount": record.attended_count,
        "protectedFloor": record.protected_floor,
        "lastEvaluated": record.last_evaluated,
        "priorState": record.prior_state,
    }


# --- the writer process -------------------------------------------------------


class _WriterProcess:
    """A child process running an in-process ``UsdTarget`` on the same directory.

    Requests are numbered: a reply to a call interrupted in this process (e.g. by
    ``KeyboardInterrupt``) is skipped by the next call. A child that died is started
    again on the next call, from the files.
    """

    def __init__(self, directory: Path, cap: int, save_layer: LayerSaver | None) -> None:
        self._args = (str(directory), cap, save_layer)
        self._seq = 0
        self._conn: Connection | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._start()

    def _start(self) -> None:
        """Start ``python -c`` on a socket pair (no re-import of ``__main__``)."""
        parent_sock, child_sock = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        code = (
            "import sys; from moneta.usd_target import _writer_main; _writer_main(int(sys.argv[1]))"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(child_sock.fileno())],
            pass_fds=[child_sock.fileno()],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        child_sock.close()
        conn = Connection(parent_sock.detach())
        try:
            conn.send(self._args)
            status, detail = conn.recv()
        except (EOFError, OSError) as exc:
            proc.wait(5)
            raise ColdLayerError(f"cold-tier writer process for {self._args[0]} died") from exc
        if status != "ready":
            proc.wait(5)
            raise ColdLayerError(f"cold-tier writer process for {self._args[0]}: {detail}")
        self._conn, self._proc = conn, proc

    def call(self, action: str, args: tuple) -> _Edit:
        if self._conn is None or self._proc is None or self._proc.poll() is not None:
            self._start()
        assert self._conn is not None
        self._seq += 1
        seq = self._seq
        try:
            self._conn.send((seq, action, args))
            while True:
                reply_seq, status, value = self._conn.recv()
                if reply_seq == seq:
                    break
        except (EOFError, OSError) as exc:
            self._conn = None
            raise AuthoringError(
                f"cold tier {action} in {self._args[0]}: writer process exited ({exc!r})",
                failed=["writer process"],
            ) from exc
        if status == "ok":
            return value
        if status == "authoring":
            message, saved, failed, pending = value
            raise AuthoringError(message, saved=saved, failed=failed, pending=pending)
        if status == "value":
            raise ValueError(value)
        raise AuthoringError(f"cold tier {action} in {self._args[0]}: {value}")

    def close(self) -> None:
        conn, proc, self._conn, self._proc = self._conn, self._proc, None, None
        if conn is not None:
            with suppress(OSError):
                conn.send((0, "close", ()))
            conn.close()
        if proc is not None:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _writer_main(fd: int) -> None:
    """Body of the writer process: serve writes until told to close or the pipe ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides about Ctrl-C
    conn = Connection(fd)
    try:
        directory, cap, save_layer = conn.recv()
        target = UsdTarget(directory, max_prims_per_layer=cap, save_layer=save_layer)  # type: ignore[arg-type]
    except Exception as exc:
        conn.send(("error", repr(exc)))
        return
    conn.send(("ready", None))
    try:
        while True:
            try:
                seq, action, args = conn.recv()
            except EOFError:
                break
            if action == "close":
                break
            try:
                with target._write_mutex:
                    reply = (seq, "ok", target._perform(action, args))
            except AuthoringError as exc:
                base = str(exc).rsplit(" (saved=", 1)[0]
                reply = (seq, "authoring", (base, exc.saved, exc.failed, exc.pending))
            except (ValueError, TypeError) as exc:
                reply = (seq, "value", str(exc))
            except Exception as exc:
                reply = (seq, "error", repr(exc))
            conn.send(reply)
    finally:
        target.close()


# --- validation --------------------------------------------------------------


def _validated_batch(batch: Sequence[Memory], arg: str) -> list[_PrimValues]:
    if isinstance(batch, str | bytes) or not isinstance(batch, Sequence):
        raise TypeError(f"{arg} must be a sequence of Memory, got {type(batch).__name__}")
    records: list[_PrimValues] = []
    for index, memory in enumerate(batch):
        where = f"{arg}[{index}]"
        if not isinstance(memory, Memory):
            raise TypeError(f"{where} must be a moneta.types.Memory, got {type(memory).__name__}")
        records.append(_prim_values(memory, where))
    return records


def _prim_values(memory: Memory, where: str) -> _PrimValues:
    if not isinstance(memory.entity_id, UUID):
        raise TypeError(f"{where}.entity_id must be a UUID, got {type(memory.entity_id).__name__}")
    if not isinstance(memory.state, EntityState):
        raise TypeError(f"{where}.state must be an EntityState, got {memory.state!r}")
    attended = memory.attended_count
    if isinstance(attended, bool) or not isinstance(attended, Integral):
        raise TypeError(f"{where}.attended_count must be an int, got {attended!r}")
    if not 0 <= attended <= _INT32_MAX:
        raise ValueError(f"{where}.attended_count must be in [0, {_INT32_MAX}], got {attended}")
    values: dict[str, object] = {
        "payload": _check_text(memory.payload, f"{where}.payload"),
        "utility": _check_unit(memory.utility, f"{where}.utility"),
        "attendedCount": int(attended),
        "protectedFloor": _check_unit(memory.protected_floor, f"{where}.protected_floor"),
        "lastEvaluated": _check_finite(memory.last_evaluated, f"{where}.last_evaluated"),
        "priorState": memory.state.token,
    }
    return _PrimValues(memory.entity_id, values)


def _check_text(value: object, name: str) -> str:
    """USD strings are UTF-8 and NUL-terminated on disk: reject what would not round-trip."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if "\x00" in value:
        raise ValueError(f"{name} must not contain NUL characters (USD would truncate it)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{name} must be encodable as UTF-8: {exc.reason}") from exc
    return value


def _check_finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return number


def _check_unit(value: object, name: str) -> float:
    number = _check_finite(value, name)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {number}")
    return number


def _validated_ids(entity_ids: Iterable[UUID], arg: str) -> list[UUID]:
    if isinstance(entity_ids, str | bytes | UUID):
        raise TypeError(f"{arg} must be an iterable of UUID, got {type(entity_ids).__name__}")
    ids = list(entity_ids)
    for index, entity_id in enumerate(ids):
        if not isinstance(entity_id, UUID):
            raise TypeError(f"{arg}[{index}] must be a UUID, got {type(entity_id).__name__}")
    return ids
