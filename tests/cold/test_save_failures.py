"""Save() failures: False and exceptions both become AuthoringError naming the layers.

Faults are injected at the ``save_layer`` seam around the real ``Sdf.Layer.Save``:
every other layer is saved for real, and the files are read back from disk.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pxr import Sdf

from moneta.errors import AuthoringError
from moneta.usd_target import UsdTarget
from tests.cold.conftest import NOON_UTC, memories, memory_prims, stage_from_disk

Factory = Callable[..., UsdTarget]


class FlakySave:
    """Real ``Save()`` for every layer except the first save of `victim`, which fails."""

    def __init__(self, victim: str, failure: str) -> None:
        self.victim = victim
        self.failure = failure  # "false", "raise" or "interrupt"
        self.armed = False
        self.calls: list[str] = []

    def __call__(self, layer: Sdf.Layer) -> bool:
        name = Path(layer.identifier).name
        self.calls.append(name)
        if self.armed and name == self.victim:
            self.armed = False
            if self.failure == "raise":
                raise OSError(28, "No space left on device")
            if self.failure == "interrupt":
                raise KeyboardInterrupt
            return False
        return bool(layer.Save())


def on_disk(directory: Path) -> dict[str, int]:
    counts = {}
    for path in sorted(directory.glob("cortex_*.usda")):
        layer = Sdf.Layer.OpenAsAnonymous(str(path))
        counts[path.name] = len(layer.rootPrims)
    return counts


@pytest.mark.parametrize("failure", ["false", "raise"])
def test_failed_save_names_saved_failed_and_pending_layers(
    open_target: Factory, cold_dir: Path, failure: str
):
    saver = FlakySave("cortex_2026_03_02.usda", failure)
    target = open_target(max_prims_per_layer=3, save_layer=saver)
    batch = memories(5)  # 3 in the day's layer, 2 in its continuation, and a new root
    saver.armed = True
    with pytest.raises(AuthoringError) as caught:
        target.author(batch, batch_id="b1", authored_at=NOON_UTC)
    error = caught.value
    # Content layers newest first, the root last.
    assert error.saved == ("cortex_2026_03_02_001.usda",)
    assert error.failed == ("cortex_2026_03_02.usda",)
    assert error.pending == ("cortex.usda",)
    text = str(error)
    assert "saved=['cortex_2026_03_02_001.usda']" in text
    assert "failed=['cortex_2026_03_02.usda']" in text
    assert "pending=['cortex.usda']" in text
    assert ("returned False" in text) if failure == "false" else ("No space left" in text)
    if failure == "raise":
        assert isinstance(error.__cause__, OSError)
    del caught, error  # the traceback's frames hold the layers
    # On disk: the continuation was saved; the failed layer and the root were not.
    assert on_disk(cold_dir) == {"cortex_2026_03_02_001.usda": 2, "cortex_protected.usda": 0}

    # The same batch authored again (what the next sleep pass does) completes.
    links = target.author(batch, batch_id="b1-retry", authored_at=NOON_UTC)
    assert len(links) == 5
    target.close()
    assert on_disk(cold_dir) == {
        "cortex_2026_03_02.usda": 3,
        "cortex_2026_03_02_001.usda": 2,
        "cortex_protected.usda": 0,
    }
    stage = stage_from_disk(cold_dir)
    payloads = sorted(p.GetAttribute("payload").Get() for p in memory_prims(stage))
    assert payloads == sorted(m.payload for m in batch)


def test_keyboard_interrupt_during_save_is_not_swallowed(open_target: Factory, cold_dir: Path):
    saver = FlakySave("cortex_2026_03_02.usda", "interrupt")
    target = open_target(save_layer=saver)
    batch = memories(4)
    saver.armed = True
    with pytest.raises(KeyboardInterrupt):
        target.author(batch, batch_id="b1", authored_at=NOON_UTC)
    assert on_disk(cold_dir) == {"cortex_protected.usda": 0}
    # The target is still usable: the next attempt saves everything.
    target.author(batch, batch_id="b1", authored_at=NOON_UTC)
    target.close()
    assert len(memory_prims(stage_from_disk(cold_dir))) == 4


def test_reopening_after_a_failed_save_reads_the_files_not_the_unsaved_edits(
    open_target: Factory, cold_dir: Path
):
    first = open_target()
    kept = memories(2, "kept")
    first.author(kept, batch_id="b1", authored_at=NOON_UTC)
    first.close()
    saver = FlakySave("cortex_2026_03_02.usda", "false")
    second = open_target(save_layer=saver)
    saver.armed = True
    with pytest.raises(AuthoringError):
        second.author(memories(3, "lost"), batch_id="b2", authored_at=NOON_UTC)
    second.close()

    third = open_target()
    assert third.count() == 2
    assert sorted(r.payload for r in third.read([m.entity_id for m in kept]).values()) == [
        "kept 0",
        "kept 1",
    ]
