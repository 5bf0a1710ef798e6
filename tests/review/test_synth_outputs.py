"""Output files: idempotent per-loop writes, the final synthesis, resume from disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synth.ledger import ClosureLedger
from synth.loop import LoopSynthesis
from synth.outputs import (
    DROPPED,
    FINDINGS,
    INVALID,
    LOOPS,
    REPORT,
    SARIF,
    SYNTHESIS,
    ledger_from_disk,
    load_findings,
    write_final,
    write_loop,
)
from tests.review.synth_fixtures import HASH, ok, raw, run_loop
from workers.result import ReviewerResult

RUN_FILES = {
    "loop-1-spec-conformance.md",
    "loop-2-concurrency-atomicity.md",
    "loop-3-correctness-edges.md",
    FINDINGS,
    INVALID,
    DROPPED,
    LOOPS,
    SYNTHESIS,
    SARIF,
    REPORT,
}
USAGE = {"input": 1000, "output": 200, "cache_write": 500, "cache_read": 9000}


def loop_results(loop: int) -> list[ReviewerResult]:
    """Three loops with escalations, a duplicate, closures (one unknown) and failures."""
    if loop == 1:
        return [
            ok(
                "architect",
                1,
                [
                    raw(
                        "architect",
                        1,
                        "a1",
                        severity="Critical",
                        conflicts_with_locked_decision=True,
                        requires_section9_escalation=True,
                        claim="WAL unsynced",
                    ),
                    raw(
                        "architect",
                        1,
                        "a2",
                        severity="High",
                        file_path="moneta/ecs.py",
                        claim="Quota race",
                    ),
                    raw(
                        "architect",
                        1,
                        "a3",
                        severity="Low",
                        file_path="moneta/ecs.py",
                        claim="quota  RACE",
                        line_range=[12, 20],
                    ),
                    raw("architect", 1, "bad", loop=True),
                ],
            ),
            ok("test", 1, [raw("test", 1, "oos")]),
            ReviewerResult("usd", 1, "failed", error="HTTP 529 overloaded", attempts=3),
        ]
    if loop == 2:
        return [
            ok(
                "usd",
                2,
                [
                    raw(
                        "usd",
                        2,
                        "u1",
                        severity="High",
                        file_path="moneta/usd_target.py",
                        claim="Save() result ignored",
                        closes="architect-L1-a2",
                    ),
                    raw(
                        "usd",
                        2,
                        "u2",
                        file_path="moneta/usd_target.py",
                        claim="layer leak",
                        closes="architect-L1-ghost",
                    ),
                ],
            ),
            ok(
                "persistence",
                2,
                [
                    raw(
                        "persistence",
                        2,
                        "p1",
                        severity="Critical",
                        file_path="moneta/durability.py",
                        requires_section9_escalation=True,
                        claim="snapshot truncates WAL",
                    ),
                ],
            ),
            ReviewerResult("test", 2, "ok", extraction_error="no ```json array found", attempts=1),
        ]
    return [
        ok(
            "substrate",
            3,
            [
                raw("substrate", 3, "s1", closes="architect-L1-a3", claim="fixed quota"),
                raw(
                    "substrate",
                    3,
                    "s2",
                    severity="Medium",
                    file_path="moneta/ecs.py",
                    claim="decay",
                ),
            ],
        ),
    ]


def run(out: Path, loops: range, ledger: ClosureLedger | None = None) -> ClosureLedger:
    ledger = ledger if ledger is not None else ClosureLedger()
    for n in loops:
        write_loop(out, run_loop(loop_results(n), loop=n, ledger=ledger))
    return ledger


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def snapshot_dir(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_write_loop_files_and_contents(tmp_path: Path) -> None:
    s = run_loop(loop_results(1))
    paths = write_loop(tmp_path, s)
    assert {p.name for p in paths} == {
        "loop-1-spec-conformance.md",
        FINDINGS,
        INVALID,
        DROPPED,
        LOOPS,
    }
    assert (tmp_path / "loop-1-spec-conformance.md").read_text() == s.markdown
    kept = lines(tmp_path / FINDINGS)
    assert [k["id"] for k in kept] == ["architect-L1-a1", "architect-L1-a2"]
    assert all(k["constitution_hash"] == HASH for k in kept)
    invalid = lines(tmp_path / INVALID)
    assert len(invalid) == 1
    assert invalid[0]["loop"] == 1 and invalid[0]["role"] == "architect"
    assert invalid[0]["index"] == 3
    assert invalid[0]["raw"]["loop"] is True  # the raw item is kept as sent
    assert invalid[0]["raw"]["id"] == "architect-L1-bad"
    assert invalid[0]["reason"] == "loop: must be an int, got bool"
    assert [(d["finding"]["id"], d["reason"]) for d in lines(tmp_path / DROPPED)] == [
        ("test-L1-oos", "role-isolation"),
        ("architect-L1-a3", "duplicate-of:architect-L1-a2"),
    ]
    (record,) = lines(tmp_path / LOOPS)
    assert record["counts"]["raw"] == 5 and record["counts"]["kept"] == 2
    assert [(r["role"], r["state"]) for r in record["reviewers"]] == [
        ("architect", "ok"),
        ("usd", "FAILED"),
        ("test", "ok"),
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_write_loop_twice_is_idempotent(tmp_path: Path) -> None:
    run(tmp_path, range(1, 3))
    before = snapshot_dir(tmp_path)
    counts = {n: len(lines(tmp_path / n)) for n in (FINDINGS, INVALID, DROPPED, LOOPS)}
    assert counts == {FINDINGS: 5, INVALID: 1, DROPPED: 2, LOOPS: 2}
    ledger = ClosureLedger.from_dict(ledger_from_disk(tmp_path).to_dict())
    write_loop(tmp_path, run_loop(loop_results(2), loop=2, ledger=ledger))
    write_loop(tmp_path, run_loop(loop_results(2), loop=2, ledger=ledger))
    assert snapshot_dir(tmp_path) == before


def test_rewriting_an_earlier_loop_replaces_only_its_lines(tmp_path: Path) -> None:
    run(tmp_path, range(1, 3))
    changed = [ok("architect", 1, [raw("architect", 1, "only", claim="replacement")])]
    write_loop(tmp_path, run_loop(changed, loop=1))
    kept = lines(tmp_path / FINDINGS)
    assert [(k["loop"], k["id"]) for k in kept] == [
        (1, "architect-L1-only"),
        (2, "persistence-L2-p1"),
        (2, "usd-L2-u1"),
        (2, "usd-L2-u2"),
    ]
    assert lines(tmp_path / INVALID) == []  # loop 1's invalid line replaced by none
    assert [r["loop"] for r in lines(tmp_path / LOOPS)] == [1, 2]


def test_corrupt_jsonl_raises_and_leaves_file_untouched(tmp_path: Path) -> None:
    run(tmp_path, range(1, 2))
    path = tmp_path / FINDINGS
    path.write_text(path.read_text() + "{not json\n")
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"findings\.jsonl: line 3 is not valid JSON"):
        write_loop(tmp_path, run_loop(loop_results(1)))
    assert path.read_bytes() == before


def test_final_synthesis_contents(tmp_path: Path) -> None:
    ledger = run(tmp_path, range(1, 4))
    path = write_final(tmp_path, ledger=ledger, constitution_hash=HASH, usage_totals=USAGE)
    assert path == tmp_path / SYNTHESIS
    md = path.read_text()
    assert f"Constitution hash: `{HASH}`" in md
    assert "Loops written: 1, 2, 3" in md
    # loop 1: raw 5 = 4 architect + 1 test; 1 invalid; 1 isolated; 1 duplicate; 2 kept.
    assert "| 1 | spec-conformance | 5 | 4 | 1 | 1 | 1 | 2 | 1 | 1 | 0 | 0 | 0 | 1 | 1 |" in md
    assert "| 2 | concurrency-atomicity | 3 | 3 | 0 | 0 | 0 | 3 | 1 | 1 | 1 | 0 | 0 | 1 | 1 |" in md
    assert "| **all** | | 10 | 9 | 1 | 1 | 1 | 7 | 2 | 2 | 3 | 0 | 0 | 2 | 2 |" in md
    assert "Kept findings: 7; closed by a later finding: 1; open: 6." in md

    esc = md.split("## Open escalation candidates")[1].split("##")[0]
    assert "`architect-L1-a1` (Critical, loop 1, conflicts with a locked decision)" in esc
    assert "`persistence-L2-p1` (Critical, loop 2)" in esc

    by_file = md.split("## Open Critical and High findings by file")[1].split("## Closure")[0]
    assert "### `moneta/api.py`\n\n- `architect-L1-a1` · Critical" in by_file
    assert "### `moneta/durability.py`\n\n- `persistence-L2-p1` · Critical" in by_file
    assert "### `moneta/usd_target.py`\n\n- `usd-L2-u1` · High" in by_file
    assert "architect-L1-a2" not in by_file  # closed by usd-L2-u1 (and via its duplicate)
    assert "moneta/ecs.py" not in by_file

    assert "| 2 | `usd-L2-u1` | `architect-L1-a2` | closed | `architect-L1-a2` |" in md
    assert "| 2 | `usd-L2-u2` | `architect-L1-ghost` | unknown-id | - |" in md
    assert "| 3 | `substrate-L3-s1` | `architect-L1-a3` | closed | `architect-L1-a2` |" in md
    assert "Closures: 3; naming an unknown id (closing nothing): 1." in md

    assert "| 1 | usd | FAILED | 3 | HTTP 529 overloaded |" in md
    assert "| 2 | test | NO FINDINGS EXTRACTED | 1 | no ```json array found |" in md
    # 5 results carry the fixture usage; the failed and unparsable ones carry none.
    assert "| reviewer calls (loop records) | 500 | 50 | 0 | 450 | 47.4% |" in md
    assert "| run totals (reported by the run) | 1000 | 200 | 500 | 9000 | 85.7% |" in md
    assert "another constitution hash" not in md


def test_final_flags_findings_under_another_hash(tmp_path: Path) -> None:
    run(tmp_path, range(1, 2))
    md = write_final(tmp_path, constitution_hash="ffffffffffffffff").read_text()
    assert (
        "**Warning:** 2 finding(s) carry another constitution hash: "
        "`architect-L1-a1`, `architect-L1-a2`"
    ) in md


def test_resumed_run_matches_uninterrupted_run(tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    ledger = run(straight, range(1, 4))
    write_final(straight, ledger=ledger, constitution_hash=HASH, usage_totals=USAGE)

    checkpoint = json.dumps(run(resumed, range(1, 3)).to_dict())
    # A new process: only the checkpoint and the files on disk survive. Loop 2 is
    # re-run (say the kill came after its files but before the checkpoint moved on).
    restored = ClosureLedger.from_dict(json.loads(checkpoint))
    run(resumed, range(2, 4), ledger=restored)
    write_final(resumed, ledger=restored, constitution_hash=HASH, usage_totals=USAGE)

    assert snapshot_dir(resumed) == snapshot_dir(straight)
    assert ledger_from_disk(resumed) == restored == ledger


def test_final_from_disk_alone_equals_final_with_ledger(tmp_path: Path) -> None:
    ledger = run(tmp_path, range(1, 4))
    with_ledger = write_final(tmp_path, ledger=ledger, constitution_hash=HASH).read_bytes()
    from_disk = write_final(tmp_path, constitution_hash=HASH).read_bytes()
    assert from_disk == with_ledger
    assert len(load_findings(tmp_path)) == 7


def test_final_rejects_a_ledger_that_lost_closures(tmp_path: Path) -> None:
    run(tmp_path, range(1, 4))
    with pytest.raises(ValueError, match="ledger: its closures differ"):
        write_final(tmp_path, ledger=ClosureLedger(), constitution_hash=HASH)
    assert not (tmp_path / SYNTHESIS).exists()


def test_final_rejects_unwritten_syntheses(tmp_path: Path) -> None:
    ledger = ClosureLedger()
    s1: LoopSynthesis = run_loop(loop_results(1), ledger=ledger)
    write_loop(tmp_path, s1)
    s2 = run_loop(loop_results(2), loop=2, ledger=ledger)
    with pytest.raises(ValueError, match="syntheses: loop 2 has not been written"):
        write_final(tmp_path, [s1, s2], ledger=ledger, constitution_hash=HASH)
    write_loop(tmp_path, s2)
    md = write_final(tmp_path, [s1, s2], ledger=ledger, constitution_hash=HASH).read_text()
    assert "Loops written: 1, 2" in md


def test_final_lists_failed_reviewers_passed_in(tmp_path: Path) -> None:
    run(tmp_path, range(1, 2))
    extra = ReviewerResult("adversarial", 1, "failed", error="timeout", attempts=3)
    md = write_final(tmp_path, constitution_hash=HASH, failed_reviewers=[extra]).read_text()
    assert "| 1 | adversarial | FAILED | 3 | timeout |" in md
    assert md.count("| 1 | usd | FAILED |") == 1


def test_two_runs_write_byte_identical_files(tmp_path: Path) -> None:
    for name in ("a", "b"):
        ledger = run(tmp_path / name, range(1, 4))
        write_final(tmp_path / name, ledger=ledger, constitution_hash=HASH, usage_totals=USAGE)
    a, b = snapshot_dir(tmp_path / "a"), snapshot_dir(tmp_path / "b")
    assert set(a) == RUN_FILES
    assert a == b


def test_output_independent_of_hash_seed(tmp_path: Path) -> None:
    """Two processes with different string-hash seeds write byte-identical files."""
    script = (
        "import sys; from pathlib import Path\n"
        "from tests.review.test_synth_outputs import run, USAGE\n"
        "from tests.review.synth_fixtures import HASH\n"
        "from synth.outputs import write_final\n"
        "out = Path(sys.argv[1]); ledger = run(out, range(1, 4))\n"
        "write_final(out, ledger=ledger, constitution_hash=HASH, usage_totals=USAGE)\n"
    )
    root = Path(__file__).resolve().parents[2]
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(root)}
        subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / seed)], env=env, cwd=root, check=True
        )
    one, two = snapshot_dir(tmp_path / "1"), snapshot_dir(tmp_path / "2")
    assert set(one) == RUN_FILES
    assert one == two
