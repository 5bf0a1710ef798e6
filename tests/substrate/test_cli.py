"""``moneta demo`` tells the story of a store, with the right numbers; ``moneta inspect``
reads what it left on disk."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from moneta.cli import CHATTER, PREFERENCES, PROJECT, RECENT, main


def test_demo_prints_a_readable_account_with_consistent_counts(tmp_path: Path) -> None:
    store = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--dir", str(store)])
    assert result.exit_code == 0, result.output
    out = result.output
    for heading in ("1. Deposits", "2. The agent works", "4. Sleep-pass preview",
                    "5. What happened to each memory", "6. Closed and reopened"):  # fmt: skip
        assert heading in out
    deposits = len(PREFERENCES) + len(PROJECT) + len(CHATTER) + len(RECENT)
    assert deposits == 23
    # 3 facts attended >= 3 times are consolidated; the 2 pinned and 3 fresh notes kept;
    # everything else (seen < 3, faded) pruned.
    assert "would prune 15, would stage 3" in out
    assert "pruned 15, staged 3, consolidated 3 in 1 batch(es)" in out
    lines = out.splitlines()
    fates = [line.split()[0] for line in lines if line.startswith("   ") and
             line.split() and line.split()[0] in ("kept", "consolidated", "pruned")]  # fmt: skip
    assert fates.count("kept") == 5
    assert fates.count("consolidated") == 3
    assert fates.count("pruned") == 15
    assert "hot tier: 5 memories (was 5)" in out
    assert out.count("[cold tier /Memory_") == 3
    audit = [json.loads(line) for line in (store / "audit.jsonl").read_text().splitlines()]
    assert sorted(a["action"] for a in audit) == ["consolidate"] * 3 + ["prune"] * 15


def test_demo_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, ["demo", "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "not empty" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_inspect_reads_the_demo_store(tmp_path: Path) -> None:
    store = tmp_path / "demo"
    assert CliRunner().invoke(main, ["demo", "--dir", str(store)]).exit_code == 0
    result = CliRunner().invoke(main, ["inspect", str(store)])
    assert result.exit_code == 0, result.output
    assert "cortex_protected.usda" in result.output
    assert result.output.count("/Memory_") >= 3
    assert "audit.jsonl: 3 consolidate, 15 prune" in result.output
    result = CliRunner().invoke(main, ["inspect", str(store), "--audit", "20"])
    lines = result.output.splitlines()
    assert sum(line.startswith("  prune ") for line in lines) == 15
    assert sum(line.startswith("  consolidate ") for line in lines) == 3
