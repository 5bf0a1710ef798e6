"""`--since REV`: a review run on a temp git repo keeps only findings on changed lines and
marks those a previous run already filed as `seen`."""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from orchestrator.checkpoint import load_checkpoint
from orchestrator.incremental import (
    NOT_CHANGED,
    incremental_scope,
    touches_changes,
    with_scope,
)
from orchestrator.plan import DriftError
from orchestrator.run import RunOptions, run_review
from synth.outputs import read_jsonl
from tests.incremental.gitrepo import commit_all, init_repo, read_lines, write_lines
from tests.outputs.test_sarif import schema_errors
from tests.review.engine_support import (
    ROOT,
    fast_config,
    finding,
    make_repo,
    scripted_answer,
    write_config,
)
from tests.support.messages_stub import MessagesStub


def answer_v2(role: str | None, loop: int | None, payload: dict[str, Any]) -> str:
    """What the reviewers say about v2 (moneta/api.py: 2 lines on top, old line 10 edited)."""
    items: list[dict[str, Any]] = []
    if role == "architect":
        items = [
            # Run 1 filed this claim at [1, 3]; v2 moves those lines to [3, 5]. [2, 5]
            # touches the inserted line 2 and overlaps [3, 5]: kept, seen.
            finding("architect", 1, "a", line_range=[2, 5]),
            # The edited line: kept, new.
            finding("architect", 1, "fresh", line_range=[12, 12], claim="A new problem here"),
            # Unchanged lines only: dropped.
            finding("architect", 1, "old", line_range=[20, 22], claim="Untouched code"),
            # Run 1's claim "b" was at [5, 6] -> [7, 8] now; [12, 13] does not overlap: new.
            finding("architect", 1, "b", line_range=[12, 13]),
        ]
    elif role == "documentarian":
        # Same claim as architect "a" (case and spaces aside), touching nothing changed,
        # but merged into "a": the merged group touches line 2, so it is kept as one.
        items = [
            finding(
                "documentarian",
                1,
                "dup",
                file_path="moneta/api.py",
                line_range=[5, 6],
                severity="Low",
                claim="  ARCHITECT claim a for loop 1 ",
            )
        ]
    elif role == "substrate":
        items = [finding("substrate", 1, "a")]  # moneta/ecs.py did not change: dropped
    elif role == "adversarial":
        items = [finding("adversarial", 1, "a", file_path="moneta/api.py", line_range=[0, 0])]
    body = json.dumps(items)
    return f"```json\n{body}\n```\n"


@pytest.fixture
def stub_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    return monkeypatch


@pytest.fixture
def history(tmp_path: Path) -> Iterator[Path]:
    """A repo at v1 (tagged), then v2 committed: moneta/api.py edited at the top and line 10."""
    repo = make_repo(init_repo(tmp_path / "repo"))
    commit_all(repo, "v1", tag="v1")
    yield repo


def edit_v2(repo: Path) -> None:
    api = repo / "moneta/api.py"
    lines = read_lines(api)
    lines[9] = "    return 44"  # old line 10
    lines[0:0] = ["# header one", "# header two"]
    write_lines(api, lines)
    commit_all(repo, "v2")


def changed_new_lines(old: list[str], new: list[str]) -> set[int]:
    """New-side lines an independent diff (difflib) reports as inserted or replaced."""
    out: set[int] = set()
    for tag, _i1, _i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new).get_opcodes():
        if tag in ("insert", "replace"):
            out.update(range(j1 + 1, j2 + 1))
    return out


async def test_since_keeps_changed_line_findings_and_marks_seen(
    history: Path, stub_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    repo = history
    first, second = tmp_path / "first", tmp_path / "second"
    api_v1 = read_lines(repo / "moneta/api.py")
    with MessagesStub(answer=scripted_answer) as stub:
        stub_env.setenv("ANTHROPIC_BASE_URL", stub.url)
        await run_review(
            RunOptions(repo=repo, config=fast_config(), out_dir=first, max_loops=1),
        )
    run1 = {r["id"]: r for r in read_jsonl(first / "findings.jsonl")}
    assert run1["architect-L1-a"]["line_range"] == [1, 3]
    assert run1["architect-L1-b"]["line_range"] == [5, 6]
    assert all("novelty" not in r for r in run1.values())  # a full run marks nothing

    edit_v2(repo)
    scope = incremental_scope(repo, "v1", first)
    assert scope["files"] == {"moneta/api.py": {"lines": [[1, 2], [12, 12]], "gaps": []}}
    previous = {p["id"]: p for p in scope["previous"]}
    assert previous["architect-L1-a"]["line_range"] == [3, 5]  # carried through the diff
    assert previous["architect-L1-b"]["line_range"] == [7, 8]
    assert previous["substrate-L1-a"]["line_range"] == [1, 3]  # its file did not change
    assert len(previous) == len(run1)

    config = with_scope(fast_config(), scope)
    assert config.incremental == scope
    with MessagesStub(answer=answer_v2) as stub:
        stub_env.setenv("ANTHROPIC_BASE_URL", stub.url)
        report = await run_review(RunOptions(repo=repo, config=config, out_dir=second, max_loops=1))
        assert report.calls == 8
        # Reviewers saw the whole snapshot, not just the diff; those whose scope holds
        # moneta/api.py were told which of its lines changed, the others were not.
        told = "changed since v1: lines 1-2, 12. Only findings"
        by_role = {r.role: r.payload["messages"][0]["content"][-1]["text"] for r in stub.recorded()}
        assert all("moneta/ecs.py" in r.body.decode() for r in stub.recorded())
        assert sorted(role for role, task in by_role.items() if told in task) == [
            "adversarial",
            "architect",
            "documentarian",
            "substrate",
        ]

    kept = {r["id"]: r for r in read_jsonl(second / "findings.jsonl")}
    assert sorted(kept) == [
        "adversarial-L1-a",
        "architect-L1-a",
        "architect-L1-b",
        "architect-L1-fresh",
    ]
    assert (kept["architect-L1-a"]["novelty"], kept["architect-L1-a"]["seen_as"]) == (
        "seen",
        "architect-L1-a",
    )
    for fid in ("architect-L1-b", "architect-L1-fresh"):
        assert (kept[fid]["novelty"], kept[fid]["seen_as"]) == ("new", None)
    # Whole-file [0, 0] on a changed file: kept; run 1's adversarial "a" sat on api.py
    # [1, 3] with the same claim, and a whole-file range overlaps it.
    assert kept["adversarial-L1-a"]["seen_as"] == "adversarial-L1-a"

    # Independent check: each kept finding (or its merged duplicate) touches a line
    # difflib sees as changed; each dropped one touches none.
    api_v2 = read_lines(repo / "moneta/api.py")
    changed = changed_new_lines(api_v1, api_v2)
    assert changed == {1, 2, 12}

    def touches(row: dict[str, Any]) -> bool:
        if row["file_path"] != "moneta/api.py":
            return False
        s, e = row["line_range"]
        return bool(changed) if e == 0 else any(s <= n <= e for n in changed)

    dropped = read_jsonl(second / "findings.dropped.jsonl")
    not_changed = [d["finding"] for d in dropped if d["reason"] == NOT_CHANGED]
    assert sorted(f["id"] for f in not_changed) == ["architect-L1-old", "substrate-L1-a"]
    assert not any(touches(f) for f in not_changed)
    dups = [d for d in dropped if d["reason"] == "duplicate-of:architect-L1-a"]
    assert [d["finding"]["id"] for d in dups] == ["documentarian-L1-dup"]
    for fid, row in kept.items():
        merged = [d["finding"] for d in dups if d["reason"].endswith(fid)]
        assert any(touches(r) for r in [row, *merged]), fid
        assert touches_changes(row["file_path"], row["line_range"], scope["files"]) or merged

    counts = read_jsonl(second / "loops.jsonl")[0]["counts"]
    assert counts["dropped"][NOT_CHANGED] == 2 and counts["kept"] == 4
    loop_md = (second / "loop-1-spec-conformance.md").read_text(encoding="utf-8")
    assert "seen before as `architect-L1-a`" in loop_md
    assert f"| `architect-L1-old` | `moneta/api.py:20-22` | {NOT_CHANGED} |" in loop_md
    sarif = json.loads((second / "synthesis.sarif").read_text(encoding="utf-8"))
    assert schema_errors(sarif) == []  # baselineState is SARIF 2.1.0's own field
    states = {r["properties"]["findingId"]: r["baselineState"] for r in sarif["runs"][0]["results"]}
    assert states == {
        "adversarial-L1-a": "unchanged",
        "architect-L1-a": "unchanged",
        "architect-L1-b": "new",
        "architect-L1-fresh": "new",
    }

    # The scope is part of the run's configuration: resuming under another REV is drift.
    cp = load_checkpoint(second)
    assert cp is not None and cp.completed_loops == [1]
    other = replace(fast_config(), incremental=incremental_scope(repo, "HEAD~1"))
    assert other.incremental != scope  # no previous run: nothing to be seen
    with pytest.raises(DriftError, match="config drift"):
        await run_review(RunOptions(repo=repo, config=other, out_dir=second, resume=True))


async def test_without_changes_every_finding_is_dropped(
    history: Path, stub_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    scope = incremental_scope(history, "v1")
    assert scope["files"] == {} and scope["previous"] == []
    config = replace(fast_config(), incremental=scope)
    with MessagesStub(answer=scripted_answer) as stub:
        stub_env.setenv("ANTHROPIC_BASE_URL", stub.url)
        await run_review(
            RunOptions(repo=history, config=config, out_dir=tmp_path / "o", max_loops=1)
        )
    assert read_jsonl(tmp_path / "o" / "findings.jsonl") == []
    dropped = read_jsonl(tmp_path / "o" / "findings.dropped.jsonl")
    reasons = {d["reason"] for d in dropped}
    # Role isolation runs first; every finding that passed it is dropped as unchanged:
    # the 17 a full run keeps, and the duplicate merged into one of them, with it.
    assert reasons == {NOT_CHANGED, "role-isolation"}
    assert sum(d["reason"] == NOT_CHANGED for d in dropped) == 17 + 1


def test_cli_since_previous_and_sarif(history: Path, tmp_path: Path) -> None:
    repo = history
    config = write_config(tmp_path / "fast.toml")
    first, second = tmp_path / "first", tmp_path / "second"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC")}

    command = [sys.executable, "-m", "orchestrator.cli", "run", "--repo", str(repo)]
    command += ["--config", str(config), "--max-loops", "1"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    with MessagesStub(answer=scripted_answer) as stub:
        env.update(ANTHROPIC_API_KEY="k", ANTHROPIC_BASE_URL=stub.url)
        done = cli("--out", str(first))
        assert done.returncode == 0, done.stderr
    edit_v2(repo)
    with MessagesStub(answer=answer_v2) as stub:
        env.update(ANTHROPIC_BASE_URL=stub.url)
        done = cli("--out", str(second), "--since", "v1", "--previous", str(first))
        assert done.returncode == 0, done.stderr
        again = cli("--out", str(tmp_path / "s"), "--since", "v1", "--format", "sarif")
        assert again.returncode == 0, again.stderr
    kept = read_jsonl(second / "findings.jsonl")
    assert sorted((r["id"], r["novelty"]) for r in kept) == [
        ("adversarial-L1-a", "seen"),
        ("architect-L1-a", "seen"),
        ("architect-L1-b", "new"),
        ("architect-L1-fresh", "new"),
    ]
    # Without --previous nothing can be seen; stdout is the SARIF log written to --out.
    sarif = json.loads(again.stdout)
    assert sarif == json.loads((tmp_path / "s" / "synthesis.sarif").read_text("utf-8"))
    states = sorted(r["baselineState"] for r in sarif["runs"][0]["results"])
    assert states == ["new"] * 4

    # Outputs inside the repository are not changes: resuming there is not config drift.
    inside = ["--out", "review-out", "--since", "v1"]
    with MessagesStub(answer=answer_v2) as stub:
        env.update(ANTHROPIC_BASE_URL=stub.url)
        done = cli(*inside)
        assert done.returncode == 0, done.stderr
        resumed = cli(*inside, "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert "resuming after loop(s) 1" in resumed.stderr
        assert len(stub.recorded()) == 8  # the resume had nothing left to call
    assert len(read_jsonl(repo / "review-out" / "findings.jsonl")) == 4

    bad = cli("--out", str(tmp_path / "x"), "--since", "no-such-rev")
    assert bad.returncode == 1 and "--since no-such-rev" in bad.stderr
    assert not (tmp_path / "x").exists()
    usage = cli("--out", str(tmp_path / "y"), "--previous", str(first))
    assert usage.returncode == 2 and "--previous needs --since" in usage.stderr
