"""Prims: typed MonetaMemory from the shipped codeless schema, six attributes, hostile text."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pxr import Sdf, Usd

from moneta.types import EntityState
from moneta.usd_schema import MEMORY_ATTRIBUTES, MEMORY_TYPE_NAME, PRIOR_STATE_TOKENS
from moneta.usd_target import UsdTarget
from tests.cold.conftest import DAY, NOON_UTC, make_memory, memory_prims, stage_from_disk

Factory = Callable[..., UsdTarget]

EXPECTED_TYPES = {
    "payload": Sdf.ValueTypeNames.String,
    "utility": Sdf.ValueTypeNames.Float,
    "attendedCount": Sdf.ValueTypeNames.Int,
    "protectedFloor": Sdf.ValueTypeNames.Float,
    "lastEvaluated": Sdf.ValueTypeNames.Double,
    "priorState": Sdf.ValueTypeNames.Token,
}
PRIM_PATH = re.compile(r"^/Memory_[0-9a-f]{32}$")


def f32(value: float) -> float:
    return float(np.float32(value))


def test_schema_registry_knows_the_prim_definition():
    definition = Usd.SchemaRegistry().FindConcretePrimDefinition(MEMORY_TYPE_NAME)
    assert definition is not None
    assert sorted(definition.GetPropertyNames()) == sorted(EXPECTED_TYPES)
    for name, value_type in EXPECTED_TYPES.items():
        assert definition.GetAttributeDefinition(name).GetTypeName() == value_type
    prior = definition.GetAttributeDefinition("priorState")
    assert list(prior.GetMetadata("allowedTokens")) == list(PRIOR_STATE_TOKENS)
    schema_type = Usd.SchemaRegistry.GetTypeFromName(MEMORY_TYPE_NAME)
    assert Usd.SchemaRegistry.IsConcrete(schema_type)
    assert dict(MEMORY_ATTRIBUTES) == EXPECTED_TYPES


def test_schema_is_found_in_a_fresh_process_without_plugin_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PXR_")}
    script = (
        "import moneta.usd_target\n"
        "from pxr import Usd\n"
        "d = Usd.SchemaRegistry().FindConcretePrimDefinition('MonetaMemory')\n"
        "print(sorted(d.GetPropertyNames()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(sorted(EXPECTED_TYPES))


def test_prims_are_typed_with_all_six_attributes(open_target: Factory, cold_dir: Path):
    target = open_target()
    batch = [
        make_memory(
            f"memory {i}",
            utility=0.05 * i,
            attended_count=3 + i,
            protected_floor=0.0,
            last_evaluated=NOON_UTC - i * 1.25,
            state=state,
        )
        for i, state in enumerate(EntityState)
    ]
    links = target.author(batch, batch_id="typed", authored_at=NOON_UTC)
    target.close()

    stage = stage_from_disk(cold_dir)
    prims = memory_prims(stage)
    assert len(prims) == len(batch)
    for memory in batch:
        prim = stage.GetPrimAtPath(links[memory.entity_id])
        assert links[memory.entity_id] == f"/Memory_{memory.entity_id.hex}"
        assert prim.GetTypeName() == MEMORY_TYPE_NAME
        assert prim.IsA(Usd.Typed)
        assert prim.GetPrimDefinition().GetPropertyNames()
        assert sorted(a.GetName() for a in prim.GetAuthoredAttributes()) == sorted(EXPECTED_TYPES)
        for name, value_type in EXPECTED_TYPES.items():
            assert prim.GetAttribute(name).GetTypeName() == value_type
        assert prim.GetAttribute("payload").Get() == memory.payload
        assert prim.GetAttribute("utility").Get() == f32(memory.utility)
        assert prim.GetAttribute("attendedCount").Get() == memory.attended_count
        assert prim.GetAttribute("protectedFloor").Get() == f32(memory.protected_floor)
        assert prim.GetAttribute("lastEvaluated").Get() == memory.last_evaluated
        assert prim.GetAttribute("priorState").Get() == memory.state.token
    tokens = sorted(p.GetAttribute("priorState").Get() for p in prims)
    assert tokens == sorted(s.token for s in EntityState)


def test_read_returns_the_composed_record(open_target: Factory):
    target = open_target()
    memory = make_memory("read me", utility=0.125, attended_count=7, last_evaluated=123.5)
    target.author([memory], batch_id="r", authored_at=NOON_UTC)
    record = target.read([memory.entity_id])[memory.entity_id]
    assert (record.payload, record.utility, record.attended_count) == ("read me", 0.125, 7)
    assert (record.last_evaluated, record.prior_state) == (123.5, "staged_for_sync")
    assert (record.layer, record.protected) == ("cortex_2026_03_02.usda", False)
    as_memory = record.to_memory((1.0, 0.0))
    assert as_memory.state is EntityState.CONSOLIDATED
    assert as_memory.usd_link == f"/Memory_{memory.entity_id.hex}"
    assert as_memory.semantic_vector == (1.0, 0.0)
    assert target.read([make_memory().entity_id]) == {}


HOSTILE = [
    "/Memory_00000000000000000000000000000000",
    "a/b/c/../../d",
    'double "quotes" and \'single\' and """triple"""',
    "line one\nline two\r\nline three\ttab",
    '</World/Evil> @asset.usda@ ( customData = { } ) def Xform "Evil" { }',
    "#usda 1.0\n(\n    subLayers = [@/etc/passwd@]\n)\n",
    "unicode: é 中文 עברית 🙂 \u2028 \ufeff",
    'backslashes \\ \\n \\" \\\\',
    "",
    " ",
    "x" * 1_000_000,
    ("ü€𝄞" * 100_000)[:250_000],
]


def test_hostile_payloads_round_trip_and_never_become_paths(open_target: Factory, cold_dir: Path):
    target = open_target()
    batch = [make_memory(text) for text in HOSTILE]
    target.author(batch, batch_id='batch "id" </with> odd\ntext', authored_at=NOON_UTC)
    target.close()

    stage = stage_from_disk(cold_dir)
    all_prims = list(stage.Traverse())
    assert len(all_prims) == len(HOSTILE)
    for prim in all_prims:
        assert PRIM_PATH.match(str(prim.GetPath()))
        assert prim.GetTypeName() == MEMORY_TYPE_NAME
        assert sorted(prim.GetPropertyNames()) == sorted(EXPECTED_TYPES)
        assert prim.GetAttribute("priorState").Get() in PRIOR_STATE_TOKENS
    for memory in batch:
        prim = stage.GetPrimAtPath(f"/Memory_{memory.entity_id.hex}")
        assert prim.GetAttribute("payload").Get() == memory.payload
    assert stage.GetRootLayer().subLayerPaths[0] == "./cortex_protected.usda"


@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("payload", "nul \x00 inside", ValueError, r"batch\[1\]\.payload must not contain NUL"),
        ("payload", "lone \ud800 surrogate", ValueError, r"batch\[1\]\.payload must be encodable"),
        ("payload", b"bytes", TypeError, r"batch\[1\]\.payload must be a str"),
        ("utility", math.nan, ValueError, r"batch\[1\]\.utility must be finite"),
        ("utility", 1.5, ValueError, r"batch\[1\]\.utility must be in \[0, 1\]"),
        ("protected_floor", -0.1, ValueError, r"batch\[1\]\.protected_floor must be in"),
        ("attended_count", -1, ValueError, r"batch\[1\]\.attended_count must be in"),
        ("attended_count", 2**31, ValueError, r"batch\[1\]\.attended_count must be in"),
        ("attended_count", 2.0, TypeError, r"batch\[1\]\.attended_count must be an int"),
        ("last_evaluated", math.inf, ValueError, r"batch\[1\]\.last_evaluated must be finite"),
        ("state", "consolidated", TypeError, r"batch\[1\]\.state must be an EntityState"),
        ("entity_id", "not-a-uuid", TypeError, r"batch\[1\]\.entity_id must be a UUID"),
    ],
)
def test_bad_memory_is_rejected_before_anything_is_written(
    open_target: Factory,
    cold_dir: Path,
    field: str,
    value: object,
    error: type[Exception],
    message: str,
):
    target = open_target()
    good = make_memory("good")
    bad = make_memory("bad")
    object.__setattr__(bad, field, value)
    with pytest.raises(error, match=message):
        target.author([good, bad], batch_id="bad", authored_at=NOON_UTC)
    assert target.count() == 0
    target.close()
    assert sorted(p.name for p in cold_dir.iterdir()) == ["cortex.usda", "cortex_protected.usda"]


def test_bad_call_arguments_are_named(open_target: Factory):
    target = open_target()
    with pytest.raises(TypeError, match="batch must be a sequence of Memory"):
        target.author("text", batch_id="b", authored_at=NOON_UTC)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="authored_at must be finite"):
        target.author([make_memory()], batch_id="b", authored_at=math.nan)
    with pytest.raises(TypeError, match=r"entity_ids\[0\] must be a UUID"):
        target.forget(["x"])  # type: ignore[list-item]
    assert target.count() == 0


def test_re_authoring_overwrites_in_place_without_duplicates(open_target: Factory, cold_dir: Path):
    target = open_target(max_prims_per_layer=2)
    first = make_memory("first version", utility=0.2, attended_count=3)
    others = [make_memory("filler")]
    target.author([first, *others], batch_id="b1", authored_at=NOON_UTC)
    # The day's first layer is full and a day has passed: the memory still stays put.
    second = make_memory(
        "second version", entity_id=first.entity_id, utility=0.15, attended_count=9
    )
    links = target.author([second, second], batch_id="b2", authored_at=NOON_UTC + DAY)
    assert links == {first.entity_id: f"/Memory_{first.entity_id.hex}"}
    assert target.count() == 2
    target.close()

    stage = stage_from_disk(cold_dir)
    assert len(memory_prims(stage)) == 2
    prim = stage.GetPrimAtPath(links[first.entity_id])
    assert prim.GetAttribute("payload").Get() == "second version"
    assert prim.GetAttribute("attendedCount").Get() == 9
    assert [Path(spec.layer.identifier).name for spec in prim.GetPrimStack()] == [
        "cortex_2026_03_02.usda"
    ]
    assert not (cold_dir / "cortex_2026_03_03.usda").exists()
    layer = Sdf.Layer.FindOrOpen(str(cold_dir / "cortex_2026_03_02.usda"))
    assert layer.customLayerData["monetaLastBatchId"] == "b2"
