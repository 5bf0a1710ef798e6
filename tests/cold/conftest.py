"""Fixtures for the cold tier: memories, targets in temp directories, stages read from disk."""

from __future__ import annotations

import gc
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pxr import Sdf, Usd

from moneta.types import EntityState, Memory
from moneta.usd_target import UsdTarget

# 2026-03-02 12:00:00 UTC: a fixed authoring time far from midnight.
NOON_UTC = 1_772_452_800.0
DAY = 86_400.0


def make_memory(
    payload: str = "a memory",
    *,
    entity_id: uuid.UUID | None = None,
    utility: float = 0.25,
    attended_count: int = 3,
    protected_floor: float = 0.0,
    last_evaluated: float = NOON_UTC,
    state: EntityState = EntityState.STAGED_FOR_SYNC,
) -> Memory:
    return Memory(
        entity_id=entity_id or uuid.uuid4(),
        payload=payload,
        semantic_vector=(),
        utility=utility,
        attended_count=attended_count,
        protected_floor=protected_floor,
        last_evaluated=last_evaluated,
        state=state,
    )


def memories(n: int, prefix: str = "m") -> list[Memory]:
    return [make_memory(f"{prefix} {i}", utility=0.01 * (i % 100)) for i in range(n)]


@pytest.fixture
def cold_dir(tmp_path: Path) -> Path:
    return tmp_path / "cold"


@pytest.fixture
def open_target(cold_dir: Path) -> Iterator[Callable[..., UsdTarget]]:
    """Factory of targets on `cold_dir`; every target it made is closed afterwards."""
    made: list[UsdTarget] = []

    def factory(**kwargs: object) -> UsdTarget:
        target = UsdTarget(cold_dir, **kwargs)
        made.append(target)
        return target

    yield factory
    for target in made:
        target.close()


def stage_from_disk(directory: Path) -> Usd.Stage:
    """A stage on the root layer read from the files, not from layers still in memory.

    Close every target on the directory (and drop stages) before calling.
    """
    gc.collect()
    in_memory = [
        layer.identifier
        for layer in Sdf.Layer.GetLoadedLayers()
        if not layer.anonymous and Path(layer.identifier).parent == directory
    ]
    assert in_memory == [], f"layers still loaded, the stage would not read disk: {in_memory}"
    stage = Usd.Stage.Open(str(directory / "cortex.usda"))
    assert stage is not None
    return stage


def memory_prims(stage: Usd.Stage) -> list[Usd.Prim]:
    return [prim for prim in stage.Traverse() if prim.GetName().startswith("Memory_")]


@pytest.fixture
def local_tz() -> Iterator[Callable[[str], None]]:
    """Switch the process's local time zone; the original is restored afterwards."""
    saved = os.environ.get("TZ")

    def switch(zone: str) -> None:
        os.environ["TZ"] = zone
        time.tzset()

    yield switch
    if saved is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = saved
    time.tzset()
