"""`moneta-review` as a user runs it: a separate process talking to the loopback stub."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.checkpoint import load_checkpoint
from tests.review.engine_support import ROOT, make_repo, scripted_answer, write_config
from tests.support.messages_stub import MessagesStub

COMPARED = (
    "findings.jsonl",
    "findings.invalid.jsonl",
    "findings.dropped.jsonl",
    "loops.jsonl",
    "synthesis.md",
    "loop-1-spec-conformance.md",
    "loop-2-concurrency-atomicity.md",
    "loop-3-correctness-edges.md",
    "loop-4-performance-envelope.md",
    "loop-5-simplicity-doc-tests.md",
)


def cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env.update(extra)
    return env


def test_no_key_and_no_claude_exits_nonzero_mentioning_dry_run(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = base_env(PATH=str(empty_bin))
    result = cli("run", "--repo", str(repo), env=env)
    assert result.returncode != 0
    assert "ANTHROPIC_API_KEY" in result.stderr
    assert "claude" in result.stderr
    assert "--dry-run" in result.stderr
    assert not (repo / "docs/review").exists()

    # The dry run needs neither and calls nothing.
    dry = cli("run", "--repo", str(repo), "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["totals"]["calls"] == 40
    assert {c["role"] for c in plan["calls"]} >= {"architect", "adversarial"}
    assert all(c["tokens_estimate"] > 0 for c in plan["calls"])
    assert not (repo / "docs/review").exists()


def test_config_check_reports_problems_with_lines(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        "\n".join(
            [
                "[run]",
                'constitution = "c.md"',
                "concurrency = 0",
                "",
                "[[roles]]",
                'prefix = "Arch"',
                'name = "A"',
                'scope = ["/abs/*.py"]',
                'directive = "d"',
                "",
                "[[roles]]",
                'prefix = "adv"',
                'name = "Adv"',
                "adversarial = true",
                'directive = "d"',
                "",
                "[[themes]]",
                "loop = 2",
                'slug = "x"',
                'title = "X"',
                'lead_roles = ["nobody"]',
                'lens = "l"',
                "",
            ]
        )
    )
    result = cli("config", "check", str(bad), env=base_env())
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith(f"{bad}:3: run.concurrency") for line in lines)
    assert any(line.startswith(f"{bad}:6: roles[0].prefix") for line in lines)
    assert any(line.startswith(f"{bad}:8: roles[0].scope") for line in lines)
    assert any(f"{bad}:21: themes[0].lead_roles" in line for line in lines)
    assert any("missing 1" in line for line in lines)

    good = write_config(tmp_path / "good.toml")
    repo = make_repo(tmp_path / "repo")
    ok = cli("config", "check", str(good), "--repo", str(repo), env=base_env())
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok (7 role reviewers + adversarial, 5 loops" in ok.stdout


def _compare(a: Path, b: Path) -> None:
    for name in COMPARED:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name

    # Every other output too (e.g. the SARIF and HTML exports), whatever set exists;
    # hidden files are run bookkeeping (lock, live status), not outputs.
    def outputs(d: Path) -> set[str]:
        return {p.name for p in d.iterdir() if not p.name.startswith(".")} - {"checkpoint.json"}

    names_a, names_b = outputs(a), outputs(b)
    assert names_a == names_b
    for name in sorted(names_a):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_killed_between_loops_and_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    config = write_config(tmp_path / "fast.toml")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"

    with MessagesStub(answer=scripted_answer) as stub:
        env = base_env(ANTHROPIC_API_KEY="k", ANTHROPIC_BASE_URL=stub.url)
        done = cli(
            "run", "--repo", str(repo), "--config", str(config), "--out", str(straight), env=env
        )
        assert done.returncode == 0, done.stderr
        assert len(stub.recorded()) == 40

    with MessagesStub(answer=scripted_answer) as stub:
        env = base_env(ANTHROPIC_API_KEY="k", ANTHROPIC_BASE_URL=stub.url)
        stub.hold(loop=3)  # loop 3's calls wait, unanswered, until the process is killed
        args = ["run", "--repo", str(repo), "--config", str(config), "--out", str(resumed)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while stub.waiting() == 0:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "loop 3 never started"
            time.sleep(0.02)
        cp = load_checkpoint(resumed)
        assert cp is not None and cp.completed_loops == [1, 2]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        stub.release(drop=True)
        assert not (resumed / "synthesis.md").exists()
        before = len(stub.recorded(status=200))
        assert before == 16

        again = cli("run", *args[1:], "--resume", env=env)
        assert again.returncode == 0, again.stderr
        assert "resuming after loop(s) 1, 2" in again.stderr
        assert len(stub.recorded(status=200)) - before == 24

    _compare(straight, resumed)


def test_resume_after_constitution_edit_fails_and_keeps_checkpoint(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    config = write_config(tmp_path / "fast.toml")
    out = tmp_path / "out"
    with MessagesStub(answer=scripted_answer) as stub:
        env = base_env(ANTHROPIC_API_KEY="k", ANTHROPIC_BASE_URL=stub.url)
        args = ["run", "--repo", str(repo), "--config", str(config), "--out", str(out)]
        first = cli(*args, "--max-loops", "1", env=env)
        assert first.returncode == 0, first.stderr
        files = {p.name: p.read_bytes() for p in out.iterdir()}
        constitution = repo / "docs/review-constitution.md"
        constitution.write_text(constitution.read_text() + "\nEdited.\n")
        second = cli(*args, "--resume", env=env)
        assert second.returncode == 1
        assert "constitution drift" in second.stderr
        assert {p.name: p.read_bytes() for p in out.iterdir()} == files
        assert len(stub.recorded()) == 8


@pytest.mark.parametrize("flags", [["--resume", "--fresh"]])
def test_conflicting_flags_are_a_usage_error(tmp_path: Path, flags: list[str]) -> None:
    result = cli("run", "--repo", str(tmp_path), *flags, env=base_env())
    assert result.returncode == 2
    assert "--resume and --fresh" in result.stderr
