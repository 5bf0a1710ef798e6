"""Writers edit inside one ChangeBlock under the reader lock; Save() runs outside it."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pxr import Sdf, Tf, Usd

from moneta.types import EntityState, Memory
from moneta.usd_schema import MEMORY_ATTRIBUTES, MEMORY_TYPE_NAME, PRIOR_STATE_TOKENS
from moneta.usd_target import UsdTarget
from tests.cold.conftest import NOON_UTC, make_memory, memories

Factory = Callable[..., UsdTarget]
DEADLINE_S = 30.0


def versioned(entity_id: uuid.UUID, version: int) -> Memory:
    """Every attribute derives from (id, version): a half-written prim mixes versions."""
    return make_memory(
        f"{entity_id.hex}|v{version}|" + "text " * 20,
        entity_id=entity_id,
        utility=version / 100,
        attended_count=version + 3,
        last_evaluated=float(version),
        state=EntityState.STAGED_FOR_SYNC,
    )


def prim_problems(prim: Usd.Prim) -> list[str]:
    """Everything wrong with one prim as a reader sees it (empty list: a whole prim)."""
    where = str(prim.GetPath())
    if prim.GetTypeName() != MEMORY_TYPE_NAME:
        return [f"{where}: type {prim.GetTypeName()!r}"]
    attrs = {name: prim.GetAttribute(name) for name in MEMORY_ATTRIBUTES}
    missing = [name for name, attr in attrs.items() if not attr.HasAuthoredValue()]
    if missing:
        return [f"{where}: missing {missing}"]
    entity_hex, version_text, _ = attrs["payload"].Get().split("|", 2)
    version = int(version_text[1:])
    expected = {
        "utility": float(np.float32(version / 100)),
        "attendedCount": version + 3,
        "lastEvaluated": float(version),
    }
    problems = [
        f"{where}: {name}={attrs[name].Get()!r}, payload says v{version}"
        for name, value in expected.items()
        if attrs[name].Get() != value
    ]
    if prim.GetName() != f"Memory_{entity_hex}":
        problems.append(f"{where}: payload belongs to {entity_hex}")
    if attrs["priorState"].Get() not in PRIOR_STATE_TOKENS:
        problems.append(f"{where}: priorState {attrs['priorState'].Get()!r}")
    return problems


@dataclass
class ReaderLog:
    reads: int = 0
    prims_checked: int = 0
    last_count: int = 0
    problems: list[str] = field(default_factory=list)


def test_reader_never_sees_a_half_written_prim_or_batch(open_target: Factory):
    target = open_target(max_prims_per_layer=40)  # rotations happen during the run
    new_per_batch, batches = 10, 30
    log = ReaderLog()
    writer_done = threading.Event()

    def read_once() -> None:
        with target.reading() as stage:
            prims = list(stage.Traverse())
            for prim in prims:
                log.problems.extend(prim_problems(prim))
            log.prims_checked += len(prims)
            log.last_count = len(prims)
            if len(prims) % new_per_batch:
                log.problems.append(f"partial batch visible: {len(prims)} prims")
        log.reads += 1

    def reader() -> None:
        while not writer_done.is_set():
            read_once()
        read_once()

    thread = threading.Thread(target=reader)
    thread.start()
    versions: dict[uuid.UUID, int] = {}
    try:
        for batch_no in range(batches):
            reads_before = log.reads
            fresh = [uuid.uuid4() for _ in range(new_per_batch)]
            again = list(versions)[-new_per_batch:]
            for entity_id in fresh + again:
                versions[entity_id] = versions.get(entity_id, 0) + 1
            batch = [versioned(i, versions[i]) for i in fresh + again]
            target.author(batch, batch_id=f"b{batch_no}", authored_at=NOON_UTC)
            deadline = time.monotonic() + DEADLINE_S
            while log.reads == reads_before and time.monotonic() < deadline:
                time.sleep(0.001)  # let the reader interleave before the next batch
            assert log.reads > reads_before, "reader made no progress"
    finally:
        writer_done.set()
        thread.join(DEADLINE_S)
    assert not thread.is_alive()
    assert log.problems == []
    assert log.reads >= batches
    assert log.last_count == len(versions) == new_per_batch * batches
    assert log.prims_checked >= log.last_count
    assert target.count() == len(versions)
    assert sum(info.prims for info in target.layer_stack()) == len(versions)


def test_save_runs_outside_the_reader_lock(open_target: Factory):
    seen_during_save: list[int | None] = []
    target: UsdTarget | None = None

    def save_with_concurrent_reader(layer: Sdf.Layer) -> bool:
        if target is None:  # the root's first save, while the target opens
            return layer.Save()
        finished = threading.Event()
        counted: list[int] = []

        def reader() -> None:
            with target.reading() as stage:
                counted.append(len(list(stage.Traverse())))
            finished.set()

        threading.Thread(target=reader, daemon=True).start()
        # If the writer still held the reader lock here, the reader could not finish.
        seen_during_save.append(counted[0] if finished.wait(DEADLINE_S) else None)
        return layer.Save()

    target = open_target(max_prims_per_layer=5, save_layer=save_with_concurrent_reader)
    target.author(memories(7), batch_id="b1", authored_at=NOON_UTC)
    # Saved: the day's layer, its continuation and the root (new sublayers), each
    # while a reader finished and already saw the whole composed batch.
    assert seen_during_save == [7, 7, 7]
    target.forget([])
    assert seen_during_save == [7, 7, 7]  # nothing dirty, nothing saved


def test_a_batch_is_one_change_block(open_target: Factory):
    target = open_target(max_prims_per_layer=10)
    target.author(memories(3), batch_id="warm", authored_at=NOON_UTC)
    notices: list[Usd.Notice.ObjectsChanged] = []
    with target.reading() as stage:
        listener = Tf.Notice.Register(
            Usd.Notice.ObjectsChanged, lambda notice, sender: notices.append(notice), stage
        )
    try:
        # 25 new prims fill the day's layer and spill into two new layers.
        batch = memories(25)
        target.author(batch, batch_id="big", authored_at=NOON_UTC)
        assert len(notices) == 1
        before = len(notices)
        target.author(batch[:3], batch_id="again", authored_at=NOON_UTC)
        assert len(notices) == before + 1
    finally:
        listener.Revoke()
    with target.reading() as stage:
        assert len(list(stage.Traverse())) == 28
