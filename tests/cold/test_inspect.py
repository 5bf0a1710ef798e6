"""`moneta inspect STORE`: layer stack, prim counts per layer, sample memories."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moneta import inspect
from moneta.store import COLD_DIR
from moneta.usd_target import UsdTarget
from tests.cold.conftest import DAY, NOON_UTC, make_memory, memories


def build_store(store_dir: Path) -> list[str]:
    """A cold tier with two days, a rotation and a pinned memory; returns payloads."""
    target = UsdTarget(store_dir / COLD_DIR, max_prims_per_layer=4)
    first = memories(6, "day one")
    target.author(first, batch_id="b1", authored_at=NOON_UTC)
    tricky = make_memory('line one\nline "two" </Evil>\u2028', utility=0.125, attended_count=9)
    target.author([tricky], batch_id="b2", authored_at=NOON_UTC + DAY)
    pinned = make_memory("pinned copy", entity_id=first[0].entity_id, protected_floor=0.5)
    target.author_protected([pinned], batch_id="p1", authored_at=NOON_UTC + DAY)
    target.close()
    return [m.payload for m in first] + [tricky.payload]


def run(store_dir: Path, samples: int = 5) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = inspect.main(store_dir, samples=samples, out=out)
    return code, out.getvalue().splitlines()


def test_inspect_prints_stack_counts_and_samples(tmp_path: Path):
    store_dir = tmp_path / "store"
    build_store(store_dir)
    code, lines = run(store_dir, samples=3)
    assert code == 0
    assert lines[0] == f"Cold tier: {store_dir / COLD_DIR}"
    stack = [line.split() for line in lines[2:6]]
    assert [(row[0], row[1], row[2]) for row in stack] == [
        ("1.", "cortex_protected.usda", "1"),
        ("2.", "cortex_2026_03_03.usda", "1"),
        ("3.", "cortex_2026_03_02_001.usda", "2"),
        ("4.", "cortex_2026_03_02.usda", "4"),
    ]
    assert "last batch 'p1' at 2026-03-03T12:00:00Z" in lines[2]
    assert lines[6] == "Memories: 7 distinct (8 prim opinions)"
    assert lines[7] == "Sample memories (3 of 7):"
    samples = lines[8:]
    assert len(samples) == 6  # two lines per memory, whatever the payload holds
    # The pinned memory composes from the protected layer.
    assert "[cortex_protected.usda] MonetaMemory" in samples[0]
    assert "floor=0.500" in samples[0]
    assert samples[1] == '      payload "pinned copy"'
    # Newlines and quotes are escaped: one line per payload.
    assert samples[3] == '      payload "line one\\nline \\"two\\" </Evil>\\u2028"'
    assert "utility=0.125 attended=9" in samples[2]


def test_moneta_inspect_command(tmp_path: Path):
    """`moneta inspect STORE` (the console script runs moneta.cli:main)."""
    store_dir = tmp_path / "store"
    build_store(store_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PXR_")}
    done = subprocess.run(
        [sys.executable, "-m", "moneta.cli", "inspect", str(store_dir)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "cortex_2026_03_02_001.usda" in done.stdout
    assert "Memories: 7 distinct" in done.stdout
    assert "MonetaMemory" in done.stdout  # the schema is registered in a fresh process
    (tmp_path / "empty").mkdir()
    empty = subprocess.run(
        [sys.executable, "-m", "moneta.cli", "inspect", str(tmp_path / "empty")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert empty.returncode == 1
    assert "no cold tier" in empty.stdout


def test_inspect_without_a_cold_tier(tmp_path: Path):
    code, lines = run(tmp_path / "empty")
    assert code == 1
    assert "no cold tier" in lines[0]
    code, lines = run("memory://scratch")  # type: ignore[arg-type]
    assert code == 1
    with pytest.raises(ValueError, match="samples must be an int >= 0"):
        inspect.main(tmp_path, samples=-1)


def test_inspect_an_empty_cold_tier(tmp_path: Path):
    UsdTarget(tmp_path / "store" / COLD_DIR).close()
    code, lines = run(tmp_path / "store")
    assert code == 0
    assert lines[2].split()[:3] == ["1.", "cortex_protected.usda", "0"]
    assert lines[-1] == "Memories: 0 distinct (0 prim opinions)"
