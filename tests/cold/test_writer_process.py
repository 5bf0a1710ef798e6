"""``UsdTarget(writer_process=True)``: writes and Save() happen in a child process.

This process applies an edit only after the child saved it, so readers here never
see an unsaved batch, and the files are the same as an in-process target writes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pxr import Sdf

from moneta.errors import AuthoringError
from moneta.usd_layers import prim_link
from moneta.usd_target import UsdTarget
from tests.cold.conftest import NOON_UTC, make_memory, memories, memory_prims, stage_from_disk

Factory = Callable[..., UsdTarget]


class FailFirstDailySave:
    """Runs in the writer process: the first save of a daily layer returns False."""

    def __init__(self) -> None:
        self.failed = False

    def __call__(self, layer: Sdf.Layer) -> bool:
        if not self.failed and Path(layer.identifier).name.startswith("cortex_2"):
            self.failed = True
            return False
        return bool(layer.Save())


def test_writer_process_writes_the_same_files_and_this_process_reads_them(
    open_target: Factory, cold_dir: Path
):
    target = open_target(max_prims_per_layer=3, writer_process=True)
    batch = memories(5)
    links = target.author(batch, batch_id="b1", authored_at=NOON_UTC)
    assert links == {m.entity_id: prim_link(m.entity_id) for m in batch}
    assert [(i.name, i.prims) for i in target.layer_stack()] == [
        ("cortex_protected.usda", 0),
        ("cortex_2026_03_02_001.usda", 2),
        ("cortex_2026_03_02.usda", 3),
    ]
    pinned = make_memory("pinned", entity_id=batch[0].entity_id, protected_floor=0.5)
    target.author_protected([pinned], batch_id="p", authored_at=NOON_UTC)
    assert target.read([pinned.entity_id])[pinned.entity_id].payload == "pinned"
    assert target.unpin([pinned.entity_id], authored_at=NOON_UTC) == {
        pinned.entity_id: prim_link(pinned.entity_id)
    }
    target.forget([batch[4].entity_id])
    with target.reading() as stage:
        names = sorted(p.GetName() for p in stage.Traverse())
        composed = stage.GetPrimAtPath(prim_link(pinned.entity_id))
        assert composed.GetAttribute("payload").Get() == "pinned"
        assert composed.GetAttribute("protectedFloor").Get() == 0.0
    assert names == sorted(f"Memory_{m.entity_id.hex}" for m in batch[:4])
    assert target.count() == 4
    del stage, composed
    target.close()

    stage = stage_from_disk(cold_dir)
    prims = memory_prims(stage)
    assert sorted(p.GetName() for p in prims) == names
    prim = stage.GetPrimAtPath(prim_link(pinned.entity_id))
    assert prim.GetAttribute("payload").Get() == "pinned"
    assert [Path(s.layer.identifier).name for s in prim.GetPrimStack()] == [
        "cortex_2026_03_02.usda"
    ]


def test_writer_process_failed_save_is_named_and_never_visible_here(
    open_target: Factory, cold_dir: Path
):
    target = open_target(writer_process=True, save_layer=FailFirstDailySave())
    batch = memories(3)
    with pytest.raises(AuthoringError) as caught:
        target.author(batch, batch_id="b1", authored_at=NOON_UTC)
    assert caught.value.failed == ("cortex_2026_03_02.usda",)
    assert caught.value.pending == ("cortex.usda",)
    assert "returned False" in str(caught.value)
    del caught
    assert target.count() == 0  # the unsaved batch is not shown to readers
    with target.reading() as stage:
        assert memory_prims(stage) == []
    del stage
    # The next pass authors the same batch again and it completes.
    target.author(batch, batch_id="b1-again", authored_at=NOON_UTC)
    assert target.count() == 3
    assert sorted(r.payload for r in target.read([m.entity_id for m in batch]).values()) == [
        "m 0",
        "m 1",
        "m 2",
    ]
    target.close()
    assert len(memory_prims(stage_from_disk(cold_dir))) == 3


def test_writer_process_is_restarted_after_it_dies(open_target: Factory, cold_dir: Path):
    target = open_target(writer_process=True)
    target.author(memories(2, "first"), batch_id="b1", authored_at=NOON_UTC)
    process = target._writer._proc  # type: ignore[union-attr]
    process.kill()
    process.wait(30)
    target.author(memories(2, "second"), batch_id="b2", authored_at=NOON_UTC)
    assert target.count() == 4
    target.close()
    stage = stage_from_disk(cold_dir)
    payloads = sorted(p.GetAttribute("payload").Get() for p in memory_prims(stage))
    assert payloads == ["first 0", "first 1", "second 0", "second 1"]


def test_writer_process_argument_is_checked(cold_dir: Path):
    with pytest.raises(TypeError, match="writer_process must be a bool"):
        UsdTarget(cold_dir, writer_process="yes")  # type: ignore[arg-type]
