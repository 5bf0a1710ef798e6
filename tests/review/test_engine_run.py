"""Embedded review runs through the real anthropic SDK against the loopback stub."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.checkpoint import clear_run_files, load_checkpoint
from orchestrator.cost import price_plan
from orchestrator.plan import DriftError, dry_run_plan, prepare_run
from orchestrator.run import RunError, RunOptions, run_review
from synth.outputs import read_jsonl
from synth.schema import validate_finding
from tests.review.engine_support import (
    ROLE_ORDER,
    THEMES,
    fast_config,
    make_repo,
    scripted_answer,
    scripted_findings,
)
from tests.support.messages_stub import MessagesStub, Reply

RUN_FILES = [
    "findings.dropped.jsonl",
    "findings.invalid.jsonl",
    "findings.jsonl",
    "loops.jsonl",
    "synthesis.md",
    *(f"loop-{n}-{slug}.md" for n, slug in THEMES.items()),
]


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[MessagesStub]:
    with MessagesStub(answer=scripted_answer) as s:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", s.url)
        monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
        yield s
        assert s.answer_errors == []


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def options(repo: Path, out: Path, **kw: Any) -> RunOptions:
    return RunOptions(repo=repo, config=kw.pop("config", fast_config()), out_dir=out, **kw)


async def test_full_run_makes_40_calls_and_writes_every_file(
    stub: MessagesStub, repo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    report = await run_review(options(repo, out))

    assert report.calls == 40
    requests = stub.recorded()
    assert len(requests) == 40
    assert all(r.status == 200 for r in requests)
    # 7 role reviewers then the adversarial one, per loop, loops in order.
    for loop in range(1, 6):
        of_loop = [r for r in requests if r.loop == loop]
        assert sorted(r.role for r in of_loop) == sorted(ROLE_ORDER)
        assert of_loop[-1].role == "adversarial"
    assert [r.loop for r in requests] == sorted(r.loop for r in requests)

    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    for name in RUN_FILES:
        assert name in names
    assert len([n for n in names if n.startswith("loop-")]) == 5

    # Every kept finding validates again and carries this run's constitution hash.
    inputs = prepare_run(repo, fast_config(), out)
    kept = read_jsonl(out / "findings.jsonl")
    assert kept
    for row in kept:
        assert row["constitution_hash"] == report.constitution_hash == inputs.constitution_hash
        f = validate_finding(
            {k: v for k, v in row.items() if k != "constitution_hash"},
            role=row["role"],
            loop=row["loop"],
            theme=row["theme"],
            snapshot_paths=inputs.snapshot_paths,
            constitution_hash=inputs.constitution_hash,
        )
        assert f.to_dict() == row
    # Per loop: 8 reviewers x 2 + documentarian dup + test scope + test bool + adversarial crit.
    per_loop = {n: sum(r["loop"] == n for r in kept) for n in range(1, 6)}
    assert per_loop == dict.fromkeys(range(1, 6), 17)
    invalid = read_jsonl(out / "findings.invalid.jsonl")
    assert [(r["loop"], r["role"]) for r in invalid] == [(n, "test") for n in range(1, 6)]
    assert all("loop: must be an int" in r["reason"] for r in invalid)
    dropped = read_jsonl(out / "findings.dropped.jsonl")
    assert sorted(r["reason"] for r in dropped if r["loop"] == 1) == [
        "duplicate-of:architect-L1-a",
        "role-isolation",
    ]

    final = (out / "synthesis.md").read_text(encoding="utf-8")
    assert f"Constitution hash: `{report.constitution_hash}`" in final
    assert "## Closure ledger" in final
    # Loops 2..5: each of the 8 reviewers' "a" closes the previous loop's "a".
    closures = [line for line in final.splitlines() if "| closed |" in line]
    assert len(closures) == 4 * 8
    assert "| 2 | `architect-L2-a` | `architect-L1-a` | closed | `architect-L1-a` |" in final
    assert "`adversarial-L1-crit` (Critical, loop 1, conflicts with a locked decision)" in final

    cp = load_checkpoint(out)
    assert cp is not None and cp.completed_loops == [1, 2, 3, 4, 5] and cp.calls == 40
    assert cp.usage == stub.usage_totals()


def _tokens(text: str) -> int:
    return math.ceil(len(text.encode()) / 4)  # the stub's estimate


async def test_shared_prefix_is_byte_identical_and_cached(
    stub: MessagesStub, repo: Path, tmp_path: Path
) -> None:
    await run_review(options(repo, tmp_path / "out"))
    requests = stub.recorded()
    assert len(requests) == 40
    prefixes = set()
    for r in requests:
        p = r.payload
        system, content = p["system"], p["messages"][0]["content"]
        first = content[0]
        assert system[-1]["cache_control"]["type"] == "ephemeral"
        assert first["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
        assert first["text"].startswith("<repository_snapshot")
        assert content[1]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
        assert content[1]["text"].startswith("<loop number=")
        assert "cache_control" not in content[2]
        prefixes.add(json.dumps([system, first], ensure_ascii=False))
        # The snapshot text appears verbatim (same JSON-escaped bytes) in every body.
        assert json.dumps(first["text"]).encode() in r.body
        blocks = [b for b in content if "cache_control" in b]
        assert len(system) + len(blocks) <= 4  # the API allows at most 4 breakpoints
    assert len(prefixes) == 1
    p0 = requests[0].payload
    shared = _tokens(p0["system"][0]["text"]) + _tokens(p0["messages"][0]["content"][0]["text"])

    for loop in range(1, 6):
        calls = [r for r in requests if r.loop == loop]
        assert len(calls) == 8
        leader, rest = calls[0], calls[1:]
        block = _tokens(leader.payload["messages"][0]["content"][1]["text"])
        # The loop's first call goes alone until its response starts; it writes the
        # loop block (and, in the first loop, the run prefix) ...
        assert all(r.received_at >= leader.started_at > 0 for r in rest)
        assert leader.usage is not None
        assert leader.usage["cache_write"] == block + (shared if loop == 1 else 0)
        assert leader.usage["cache_read"] == (0 if loop == 1 else shared)
        # ... and the other seven read both: only their own task is input.
        for r in rest:
            content = r.payload["messages"][0]["content"]
            assert _tokens(content[1]["text"]) == block
            assert r.usage is not None and r.usage["cache_write"] == 0
            assert r.usage["cache_read"] == shared + block
            assert r.usage["input"] == _tokens(content[2]["text"])


async def test_529_twice_then_success_delivers_findings_once(
    stub: MessagesStub, repo: Path, tmp_path: Path
) -> None:
    stub.script([Reply(529, retry_after="0"), Reply(529, retry_after="0")], role="usd", loop=2)
    out = tmp_path / "out"
    report = await run_review(options(repo, out, max_loops=2))
    usd_calls = [r for r in stub.recorded() if r.role == "usd" and r.loop == 2]
    assert [r.status for r in usd_calls] == [529, 529, 200]
    assert report.calls == 16
    kept = read_jsonl(out / "findings.jsonl")
    usd_ids = sorted(r["id"] for r in kept if r["role"] == "usd" and r["loop"] == 2)
    assert usd_ids == ["usd-L2-a", "usd-L2-b"]
    record = next(r for r in read_jsonl(out / "loops.jsonl") if r["loop"] == 2)
    usd = next(rv for rv in record["reviewers"] if rv["role"] == "usd")
    assert usd["attempts"] == 3 and usd["status"] == "ok"


async def test_reviewer_failing_every_attempt_is_recorded_and_run_completes(
    stub: MessagesStub, repo: Path, tmp_path: Path
) -> None:
    stub.script([Reply(529), Reply(500), Reply(529)], role="persistence", loop=1)
    out = tmp_path / "out"
    report = await run_review(options(repo, out))
    failed = [r for r in stub.recorded() if r.role == "persistence" and r.loop == 1]
    assert [r.status for r in failed] == [529, 500, 529]
    assert report.completed_loops == [1, 2, 3, 4, 5]
    assert [(loop, role) for loop, role, _ in report.failed_reviewers] == [(1, "persistence")]
    md = (out / "loop-1-spec-conformance.md").read_text(encoding="utf-8")
    assert "FAILED" in md and "persistence" in md
    kept = read_jsonl(out / "findings.jsonl")
    assert not [r for r in kept if r["role"] == "persistence" and r["loop"] == 1]
    assert len([r for r in kept if r["role"] == "persistence"]) == 8
    final = (out / "synthesis.md").read_text(encoding="utf-8")
    assert "| 1 | persistence | FAILED | 3 |" in final


async def test_bad_request_is_not_retried(stub: MessagesStub, repo: Path, tmp_path: Path) -> None:
    stub.script([Reply(400)], role="architect", loop=1)
    out = tmp_path / "out"
    report = await run_review(options(repo, out, max_loops=1))
    calls = [r for r in stub.recorded() if r.role == "architect"]
    assert [r.status for r in calls] == [400]
    assert report.failed_reviewers[0][:2] == (1, "architect")
    assert "HTTP 400" in report.failed_reviewers[0][2]
    assert report.calls == 8


async def test_constitution_edit_between_loops_aborts_with_drift(
    stub: MessagesStub, repo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    seen: dict[str, bytes] = {}

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "loop_done" and event["loop"] == 2:
            for p in out.iterdir():
                seen[p.name] = p.read_bytes()
            constitution = repo / "docs/review-constitution.md"
            constitution.write_text(constitution.read_text() + "\nOne more rule.\n")

    with pytest.raises(DriftError, match="constitution drift"):
        await run_review(options(repo, out), on_event=on_event)
    assert len(stub.recorded()) == 16  # no call of loop 3
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == seen  # nothing more written, checkpoint included
    cp = load_checkpoint(out)
    assert cp is not None and cp.completed_loops == [1, 2]
    assert "synthesis.md" not in after

    # Resuming under the edited constitution is refused the same way, writing nothing.
    with pytest.raises(DriftError, match="constitution drift"):
        await run_review(options(repo, out, resume=True))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == seen
    assert len(stub.recorded()) == 16


async def test_resume_continues_with_ledger_and_handoff(
    stub: MessagesStub, repo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = await run_review(options(repo, out, max_loops=2))
    assert first.completed_loops == [1, 2]
    with pytest.raises(RunError, match="--resume"):
        await run_review(options(repo, out))
    second = await run_review(options(repo, out, resume=True))
    assert second.loops_run == [3, 4, 5]
    assert second.calls == 24
    requests = stub.recorded()
    assert len(requests) == 40
    # Loop 3's prompt carries loop 2's synthesis as its handoff.
    loop2_md = (out / "loop-2-concurrency-atomicity.md").read_text(encoding="utf-8").strip()
    loop3 = next(r for r in requests if r.loop == 3)
    assert loop2_md in loop3.payload["messages"][0]["content"][1]["text"]
    final = (out / "synthesis.md").read_text(encoding="utf-8")
    assert "| 3 | `architect-L3-a` | `architect-L2-a` | closed | `architect-L2-a` |" in final


async def test_fresh_discards_an_earlier_run(
    stub: MessagesStub, repo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    await run_review(options(repo, out, max_loops=2))
    (out / "notes.txt").write_text("mine")  # not a run file: --fresh leaves it
    removed = clear_run_files(out)
    assert {p.name for p in removed} >= {"synthesis.md", "synthesis.sarif", "checkpoint.json"}
    assert sorted(p.name for p in out.iterdir()) == [".run.lock", "notes.txt"]
    await run_review(options(repo, out, max_loops=2))
    report = await run_review(options(repo, out, fresh=True, max_loops=1))
    assert (out / "notes.txt").read_text() == "mine"
    assert report.completed_loops == [1]
    assert sorted(p.name for p in out.glob("loop-*.md")) == ["loop-1-spec-conformance.md"]
    assert "Loops written: 1\n" in (out / "synthesis.md").read_text(encoding="utf-8")
    assert {r["loop"] for r in read_jsonl(out / "findings.jsonl")} == {1}


async def test_adversarial_prompt_carries_this_loops_role_findings(
    stub: MessagesStub, repo: Path, tmp_path: Path
) -> None:
    await run_review(options(repo, tmp_path / "out", max_loops=1))
    adversary = next(r for r in stub.recorded() if r.role == "adversarial")
    task = adversary.payload["messages"][0]["content"][-1]["text"]
    listing = task.split("```json\n", 1)[1].split("\n```", 1)[0]
    ids = sorted(f["id"] for f in json.loads(listing))
    expected = sorted(
        f["id"]
        for role in ROLE_ORDER[:-1]
        for f in scripted_findings(role, 1)
        if not f["id"].endswith(("-scope", "-bool"))
    )
    assert ids == expected


def test_dry_run_reports_every_call_without_calling(stub: MessagesStub, repo: Path) -> None:
    inputs = prepare_run(repo, fast_config(), Path("docs/review"))
    plan = price_plan(dry_run_plan(inputs), inputs.config)
    assert plan["totals"]["calls"] == 40
    assert len(stub.recorded()) == 0
    first, second = plan["calls"][0], plan["calls"][1]
    assert first["cache_write"] > 0 and first["cache_read"] == 0
    assert second["cache_read"] == first["cache_write"] and second["cache_write"] == 0
    assert plan["cost_estimate"]["input_usd"] > 0
    assert not (repo / "docs/review").exists()


def test_snapshot_leaves_out_harness_outputs_constitution_and_secrets(repo: Path) -> None:
    (repo / "docs/review").mkdir(parents=True)
    (repo / "docs/review/findings.jsonl").write_text("{}\n")
    inputs = prepare_run(repo, fast_config(), Path("docs/review"))
    paths = inputs.snapshot_paths
    assert "moneta/api.py" in paths and "README.md" in paths
    for excluded in (
        "orchestrator/own.py",
        ".env",
        "keys/deploy.pem",
        "moneta/blob.bin",
        "docs/review-constitution.md",
        "docs/review/findings.jsonl",
    ):
        assert excluded not in paths
    assert "sk-secret" not in inputs.snapshot.text
    assert list(sorted(paths)) == [f.path for f in inputs.snapshot.files]


def _max_in_flight(requests: list[Any]) -> int:
    edges = sorted(
        [(r.received_at, 1) for r in requests] + [(r.answered_at, -1) for r in requests],
        key=lambda e: (e[0], e[1]),
    )
    best = current = 0
    for _, step in edges:
        current += step
        best = max(best, current)
    return best


async def test_role_reviewers_run_concurrently_within_the_limit(
    stub: MessagesStub, repo: Path, tmp_path: Path
) -> None:
    stub.latency = 1.5
    await run_review(options(repo, tmp_path / "wide", max_loops=1))
    wide = [r for r in stub.recorded() if r.role != "adversarial"]
    assert len(wide) == 7
    # The warm-up call runs alone until its answer starts; the other six then overlap it.
    assert _max_in_flight(wide) == 7

    stub.requests.clear()
    narrow = options(repo, tmp_path / "narrow", max_loops=1, config=fast_config(concurrency="2"))
    await run_review(narrow)
    limited = [r for r in stub.recorded() if r.role != "adversarial"]
    assert len(limited) == 7
    assert _max_in_flight(limited) == 2


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"max_loops": 0}, ValueError, "max_loops: must be >= 1"),
        ({"max_loops": True}, TypeError, "max_loops: must be an int"),
        ({"resume": True, "fresh": True}, ValueError, "resume, fresh: choose one"),
    ],
)
def test_run_options_reject_bad_arguments(
    repo: Path, tmp_path: Path, kw: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        options(repo, tmp_path / "out", **kw)


async def test_a_second_run_on_the_same_output_is_refused_while_one_holds_it(
    stub: MessagesStub, repo: Path, tmp_path: Path
) -> None:
    from filelock import FileLock

    out = tmp_path / "out"
    out.mkdir()
    with FileLock(str(out / ".run.lock")), pytest.raises(RunError, match="another run"):
        await run_review(options(repo, out))
    assert stub.recorded() == []
    assert sorted(p.name for p in out.iterdir()) == [".run.lock"]


async def test_constitution_edit_during_a_loop_writes_nothing_of_that_loop(
    stub: MessagesStub, repo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    edited: list[int] = []

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "reviewer_done" and event["loop"] == 2 and not edited:
            constitution = repo / "docs/review-constitution.md"
            constitution.write_text(constitution.read_text() + "\nMid-loop edit.\n")
            edited.append(2)

    with pytest.raises(DriftError, match="constitution drift"):
        await run_review(options(repo, out), on_event=on_event)
    cp = load_checkpoint(out)
    assert cp is not None and cp.completed_loops == [1]
    assert {r["loop"] for r in read_jsonl(out / "loops.jsonl")} == {1}
    assert {r["loop"] for r in read_jsonl(out / "findings.jsonl")} == {1}
    assert not (out / "loop-2-concurrency-atomicity.md").exists()
    assert not (out / "synthesis.md").exists()


async def test_an_uncached_prefix_is_reported(
    stub: MessagesStub, repo: Path, tmp_path: Path
) -> None:
    stub.min_cacheable_tokens = 10_000_000  # nothing is long enough to cache
    events: list[dict[str, Any]] = []
    await run_review(options(repo, tmp_path / "out", max_loops=1), on_event=events.append)
    warnings = [e for e in events if e["event"] == "warning"]
    assert len(warnings) == 1
    assert "not cached" in warnings[0]["message"]
    assert all(r.usage and r.usage["cache_read"] == 0 for r in stub.recorded())


async def test_a_cached_prefix_raises_no_warning(
    stub: MessagesStub, repo: Path, tmp_path: Path
) -> None:
    events: list[dict[str, Any]] = []
    await run_review(options(repo, tmp_path / "out", max_loops=1), on_event=events.append)
    assert [e for e in events if e["event"] == "warning"] == []
