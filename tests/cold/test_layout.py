"""Layer stack: protected first, UTC daily layers newest first, rotation, reopening."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pxr import Sdf

from moneta.usd_layers import DailyLayer, prim_name
from moneta.usd_target import UsdTarget
from tests.cold.conftest import DAY, NOON_UTC, make_memory, memories, stage_from_disk

Factory = Callable[..., UsdTarget]


def sublayer_names(directory: Path) -> list[str]:
    stage = stage_from_disk(directory)
    return [Path(p).name for p in stage.GetRootLayer().subLayerPaths]


def prims_per_layer(directory: Path) -> dict[str, int]:
    """Root prim count of each layer file, read with a fresh (anonymous) open."""
    counts = {}
    for path in sorted(directory.glob("cortex_*.usda")):
        layer = Sdf.Layer.OpenAsAnonymous(str(path))  # the proxy needs the layer alive
        counts[path.name] = len(layer.rootPrims)
    return counts


def test_new_store_has_root_with_protected_layer_first(open_target: Factory, cold_dir: Path):
    open_target().close()
    assert sorted(p.name for p in cold_dir.iterdir()) == ["cortex.usda", "cortex_protected.usda"]
    assert sublayer_names(cold_dir) == ["cortex_protected.usda"]


def test_daily_layers_newest_first_after_protected(open_target: Factory, cold_dir: Path):
    target = open_target()
    batches = {day: memories(2, f"day{day}") for day in (0, 2, 1)}  # authored out of order
    for day, batch in batches.items():
        target.author(batch, batch_id=f"b{day}", authored_at=NOON_UTC + day * DAY)
    target.close()

    assert sublayer_names(cold_dir) == [
        "cortex_protected.usda",
        "cortex_2026_03_04.usda",
        "cortex_2026_03_03.usda",
        "cortex_2026_03_02.usda",
    ]
    stage = stage_from_disk(cold_dir)
    for day, batch in batches.items():
        layer_name = f"cortex_2026_03_0{2 + day}.usda"
        for memory in batch:
            prim = stage.GetPrimAtPath(f"/{prim_name(memory.entity_id)}")
            assert prim.GetAttribute("payload").Get() == memory.payload
            stack = prim.GetPrimStack()
            assert [Path(spec.layer.identifier).name for spec in stack] == [layer_name]


@pytest.mark.parametrize(
    ("zone", "utc_time", "expected_layer"),
    [
        # 23:30 UTC on 2026-03-01 is already 2026-03-02 in UTC+14.
        ("Pacific/Kiritimati", "2026-03-01T23:30:00", "cortex_2026_03_01.usda"),
        # 00:30 UTC on 2026-03-02 is still 2026-03-01 in Los Angeles.
        ("America/Los_Angeles", "2026-03-02T00:30:00", "cortex_2026_03_02.usda"),
    ],
)
def test_daily_layer_named_by_utc_date_not_local_date(
    open_target: Factory,
    cold_dir: Path,
    local_tz: Callable[[str], None],
    zone: str,
    utc_time: str,
    expected_layer: str,
):
    local_tz(zone)
    authored_at = datetime.fromisoformat(utc_time).replace(tzinfo=UTC).timestamp()
    local = time.localtime(authored_at)
    utc = time.gmtime(authored_at)
    assert local.tm_mday != utc.tm_mday, "the zone must put local time on another date"

    target = open_target()
    batch = memories(3)
    target.author(batch, batch_id="midnight", authored_at=authored_at)
    target.close()

    assert prims_per_layer(cold_dir) == {"cortex_protected.usda": 0, expected_layer: 3}
    assert sublayer_names(cold_dir) == ["cortex_protected.usda", expected_layer]


def test_rotation_continues_in_numbered_layers_after_protected(
    open_target: Factory, cold_dir: Path
):
    target = open_target(max_prims_per_layer=3)
    batch = memories(8)
    links = target.author(batch[:5], batch_id="b1", authored_at=NOON_UTC)
    links |= target.author(batch[5:], batch_id="b2", authored_at=NOON_UTC + 60)
    target.close()

    assert len(links) == 8
    assert prims_per_layer(cold_dir) == {
        "cortex_protected.usda": 0,
        "cortex_2026_03_02.usda": 3,
        "cortex_2026_03_02_001.usda": 3,
        "cortex_2026_03_02_002.usda": 2,
    }
    assert sublayer_names(cold_dir) == [
        "cortex_protected.usda",
        "cortex_2026_03_02_002.usda",
        "cortex_2026_03_02_001.usda",
        "cortex_2026_03_02.usda",
    ]
    stage = stage_from_disk(cold_dir)
    assert sorted(p.GetName() for p in stage.Traverse()) == sorted(
        prim_name(m.entity_id) for m in batch
    )


def test_reopen_continues_in_the_same_layers(open_target: Factory, cold_dir: Path):
    first = open_target(max_prims_per_layer=3)
    first.author(memories(2), batch_id="b1", authored_at=NOON_UTC)
    first.close()

    second = open_target(max_prims_per_layer=3)
    assert second.count() == 2
    second.author(memories(2), batch_id="b2", authored_at=NOON_UTC + 3600)
    second.close()

    assert prims_per_layer(cold_dir) == {
        "cortex_protected.usda": 0,
        "cortex_2026_03_02.usda": 3,
        "cortex_2026_03_02_001.usda": 1,
    }
    assert len(list(stage_from_disk(cold_dir).Traverse())) == 4


def test_rotation_count_is_read_from_the_layer_file(open_target: Factory, cold_dir: Path):
    first = open_target(max_prims_per_layer=3)
    first.author(memories(2), batch_id="b1", authored_at=NOON_UTC)
    first.close()
    # A third prim lands in the file while no target is open: only a count taken
    # from the layer itself knows the day's layer is now full.
    layer = Sdf.Layer.FindOrOpen(str(cold_dir / "cortex_2026_03_02.usda"))
    Sdf.CreatePrimInLayer(layer, f"/{prim_name(make_memory().entity_id)}")
    assert layer.Save()
    del layer

    second = open_target(max_prims_per_layer=3)
    newcomer = make_memory("after reopen")
    second.author([newcomer], batch_id="b2", authored_at=NOON_UTC)
    assert [(i.name, i.prims) for i in second.layer_stack()] == [
        ("cortex_protected.usda", 0),
        ("cortex_2026_03_02_001.usda", 1),
        ("cortex_2026_03_02.usda", 3),
    ]
    assert second.read([newcomer.entity_id])[newcomer.entity_id].layer == (
        "cortex_2026_03_02_001.usda"
    )


def test_daily_file_missing_from_root_joins_the_stack(open_target: Factory, cold_dir: Path):
    target = open_target()
    batch = memories(2)
    target.author(batch, batch_id="b1", authored_at=NOON_UTC)
    target.close()
    # A write that saved its daily layer but died before saving the root.
    root = Sdf.Layer.FindOrOpen(str(cold_dir / "cortex.usda"))
    root.subLayerPaths = ["./cortex_protected.usda"]
    assert root.Save()
    del root

    reopened = open_target()
    assert reopened.count() == 2
    reopened.close()
    assert sublayer_names(cold_dir) == ["cortex_protected.usda", "cortex_2026_03_02.usda"]


def test_layer_names_parse_back():
    day = DailyLayer.for_time(NOON_UTC)
    assert day.filename == "cortex_2026_03_02.usda"
    assert day.next().next().filename == "cortex_2026_03_02_002.usda"
    assert DailyLayer.parse("cortex_2026_03_02_002.usda") == day.next().next()
    assert DailyLayer.parse("cortex_protected.usda") is None
    assert DailyLayer.parse("cortex_2026_02_30.usda") is None


@pytest.mark.parametrize("cap", [0, -1, 2.5, True, "10"])
def test_bad_rotation_cap_is_rejected(cold_dir: Path, cap: object):
    with pytest.raises(ValueError, match="max_prims_per_layer must be an int >= 1"):
        UsdTarget(cold_dir, max_prims_per_layer=cap)  # type: ignore[arg-type]
    assert not cold_dir.exists()
