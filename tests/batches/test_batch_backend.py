"""The Message Batches backend through the real anthropic SDK against the loopback stub."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest

from orchestrator.checkpoint import load_checkpoint
from orchestrator.cli import main as cli_main
from orchestrator.config import parse_config
from orchestrator.cost import BudgetExceeded, CostMeter, config_price, usage_cost
from orchestrator.metrics import MemoryStore, Recorder, registry_for
from orchestrator.plan import call_settings, prepare_run, role_jobs
from orchestrator.run import RunOptions, run_review
from synth.outputs import read_jsonl
from tests.review.engine_support import (
    ROLE_ORDER,
    ROOT,
    fast_config,
    fast_config_text,
    make_repo,
    scripted_answer,
    write_config,
)
from tests.support.batch_stub import BatchStub
from tests.support.messages_stub import MessagesStub, Reply
from workers.backends import make_backend, resolve_backend
from workers.batch_backend import BATCH_PRICE_FACTOR, AnthropicBatchBackend
from workers.prompts import ReviewerPrompt

CLI = (sys.executable, "-m", "orchestrator.cli", "run")
SAME_FILES = ("findings.jsonl", "findings.dropped.jsonl", "findings.invalid.jsonl")


@pytest.fixture
def api_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    return monkeypatch


@pytest.fixture
def batch_stub(api_env: pytest.MonkeyPatch) -> Iterator[BatchStub]:
    with BatchStub(answer=scripted_answer) as s:
        api_env.setenv("ANTHROPIC_BASE_URL", s.url)
        yield s
        assert s.answer_errors == []


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def batch_backend(**kw: Any) -> AnthropicBatchBackend:
    settings = call_settings(fast_config(), "anthropic-batch")
    return AnthropicBatchBackend(settings, poll_initial=0.01, poll_max=0.05, **kw)


async def sync_run(repo: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same review through the synchronous Messages endpoint, for comparison."""
    with MessagesStub(answer=scripted_answer) as s:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", s.url)
        report = await run_review(
            RunOptions(repo=repo, config=fast_config(), out_dir=out, backend="anthropic")
        )
        assert report.calls == 40 and len(s.recorded(status=200)) == 40


async def batch_run(repo: Path, out: Path, backend: AnthropicBatchBackend) -> Any:
    try:
        return await run_review(
            RunOptions(repo=repo, config=fast_config(), out_dir=out), backend=backend
        )
    finally:
        await backend.aclose()


async def test_batch_run_keeps_the_same_findings_as_the_synchronous_run(
    batch_stub: BatchStub, api_env: pytest.MonkeyPatch, repo: Path, tmp_path: Path
) -> None:
    backend = batch_backend()
    report = await batch_run(repo, tmp_path / "batch", backend)
    assert report.calls == 40 and report.failed_reviewers == []

    # Each loop: its 7 role calls as one batch, then the adversarial call as another.
    assert batch_stub.batch_sizes() == [7, 1] * 5
    assert len(backend.batches) == 10
    for loop in range(1, 6):
        roles = [b for b in batch_stub.batches.values() if {e.loop for e in b.entries} == {loop}]
        assert [sorted(e.role or "" for e in b.entries) for b in roles] == [
            sorted(ROLE_ORDER[:-1]),
            ["adversarial"],
        ]
    ids = [e.custom_id for e in batch_stub.entries]
    assert len(ids) == len(set(ids)) == 40
    assert all(e.outcome == "succeeded" for e in batch_stub.entries)
    # No call went through the synchronous endpoint; every batch was polled to its end.
    assert [r for r in batch_stub.recorded() if r.path == "/v1/messages"] == []
    assert all(b.ended for b in batch_stub.batches.values())

    await sync_run(repo, tmp_path / "sync", api_env)
    for name in SAME_FILES:
        batch_rows = read_jsonl(tmp_path / "batch" / name)
        assert batch_rows == read_jsonl(tmp_path / "sync" / name), name
    assert len(read_jsonl(tmp_path / "batch" / "findings.jsonl")) == 5 * 17

    cp = load_checkpoint(tmp_path / "batch")
    assert cp is not None and cp.usage == batch_stub.entry_usage_totals()


async def test_errored_and_expired_entries_are_retried_like_synchronous_calls(
    batch_stub: BatchStub, api_env: pytest.MonkeyPatch, repo: Path, tmp_path: Path
) -> None:
    batch_stub.script([Reply(status=529)], role="usd", loop=1)  # overloaded: retried
    batch_stub.script([Reply(status=429), Reply(status=500)], role="test", loop=2)  # twice
    batch_stub.script_entries(["expired"], role="persistence", loop=3)  # retried
    batch_stub.script_entries(["expired"], role="adversarial", loop=4)  # retried
    backend = batch_backend()
    report = await batch_run(repo, tmp_path / "batch", backend)
    assert report.failed_reviewers == []

    def entries(role: str, loop: int) -> list[str]:
        return [e.outcome for e in batch_stub.entries if (e.role, e.loop) == (role, loop)]

    assert entries("usd", 1) == ["errored", "succeeded"]
    assert entries("test", 2) == ["errored", "errored", "succeeded"]
    assert entries("persistence", 3) == ["expired", "succeeded"]
    assert entries("adversarial", 4) == ["expired", "succeeded"]
    assert len(batch_stub.entries) == 40 + 5
    # A retried call goes in a batch of its own, after its wave's batch.
    assert sorted(batch_stub.batch_sizes()) == [1] * (5 + 5) + [7] * 5

    loops = {r["loop"]: r for r in read_jsonl(tmp_path / "batch" / "loops.jsonl")}
    attempts = {(n, rv["role"]): rv["attempts"] for n, r in loops.items() for rv in r["reviewers"]}
    assert attempts[(1, "usd")] == 2
    assert attempts[(2, "test")] == 3
    assert attempts[(3, "persistence")] == 2
    assert attempts[(4, "adversarial")] == 2
    assert sum(attempts.values()) == 40 + 5

    # Retried entries land once: the kept findings equal an error-free synchronous run's.
    await sync_run(repo, tmp_path / "sync", api_env)
    for name in SAME_FILES:
        assert read_jsonl(tmp_path / "batch" / name) == read_jsonl(tmp_path / "sync" / name), name


async def test_entries_the_sync_path_would_not_retry_fail_at_once(
    batch_stub: BatchStub, repo: Path, tmp_path: Path
) -> None:
    batch_stub.script([Reply(status=400)], role="architect", loop=1)  # invalid request
    batch_stub.script_entries(["canceled"], role="usd", loop=1)
    batch_stub.script([Reply(status=529)] * 3, role="substrate", loop=1)  # every attempt
    backend = batch_backend()
    options = RunOptions(repo=repo, config=fast_config(), out_dir=tmp_path / "o", max_loops=1)
    try:
        report = await run_review(options, backend=backend)
    finally:
        await backend.aclose()

    failed = {role: error for _, role, error in report.failed_reviewers}
    assert sorted(failed) == ["architect", "substrate", "usd"]
    assert "BatchEntryError (HTTP 400)" in failed["architect"]
    assert "invalid_request_error" in failed["architect"]
    assert "canceled" in failed["usd"]
    assert "BatchEntryError (HTTP 529)" in failed["substrate"]
    by_role: dict[str, int] = {}
    for e in batch_stub.entries:
        by_role[e.role or ""] = by_role.get(e.role or "", 0) + 1
    assert by_role["architect"] == 1 and by_role["usd"] == 1  # not retried
    assert by_role["substrate"] == 3  # retried up to max_attempts
    rows = read_jsonl(tmp_path / "o" / "loops.jsonl")[0]["reviewers"]
    attempts = {rv["role"]: (rv["status"], rv["attempts"]) for rv in rows}
    assert attempts["architect"] == ("failed", 1)
    assert attempts["usd"] == ("failed", 1)
    assert attempts["substrate"] == ("failed", 3)
    kept = read_jsonl(tmp_path / "o" / "findings.jsonl")
    assert {r["role"] for r in kept}.isdisjoint({"architect", "usd", "substrate"})
    assert kept


async def test_cost_summary_prices_batch_usage_at_half_and_shows_the_saving(
    batch_stub: BatchStub, repo: Path, tmp_path: Path
) -> None:
    await batch_run(repo, tmp_path / "batch", batch_backend())
    config = fast_config()
    usage = batch_stub.entry_usage_totals()
    assert load_checkpoint(tmp_path / "batch").usage == usage  # type: ignore[union-attr]
    price = config_price(config)
    assert price is not None
    full = usage_cost(usage, price, config.cache_ttl)["total"]
    assert full > 0
    text = (tmp_path / "batch" / "synthesis.md").read_text(encoding="utf-8")
    cost = text[text.index("## Cost") :]
    batch = full * BATCH_PRICE_FACTOR
    assert f"Estimated cost: **${batch:.4f}**" in cost
    assert f"at the synchronous price: ${full:.4f}" in cost
    assert f"saved **${full - batch:.4f}**" in cost
    rates = price.rates(config.cache_ttl)
    for kind in ("input", "output", "cache_write", "cache_read"):
        row = f"| `{config.model}` | {kind} | {usage[kind]} | {rates[kind] / 2:.2f} |"
        assert row in cost, row


async def test_polling_backs_off_until_the_batch_ends(
    api_env: pytest.MonkeyPatch, repo: Path, tmp_path: Path
) -> None:
    with BatchStub(answer=scripted_answer, polls_in_progress=3) as stub:
        api_env.setenv("ANTHROPIC_BASE_URL", stub.url)
        options = RunOptions(repo=repo, config=fast_config(), out_dir=tmp_path / "o", max_loops=1)
        backend = batch_backend()
        try:
            report = await run_review(options, backend=backend)
        finally:
            await backend.aclose()
        assert report.calls == 8 and report.failed_reviewers == []
        # 3 in-progress answers, the one that ended it, and the SDK's own retrieve in results().
        assert [b.retrieves for b in stub.batches.values()] == [5, 5]
        gets = [r for r in stub.recorded() if r.path.startswith("/v1/messages/batches/")]
        assert len(gets) == 2 * (5 + 1)  # + one results download per batch


def test_make_backend_and_resolve_know_the_batch_backend(api_env: pytest.MonkeyPatch) -> None:
    assert resolve_backend("anthropic-batch") == "anthropic-batch"
    backend = make_backend(call_settings(fast_config(), "anthropic-batch"))
    assert isinstance(backend, AnthropicBatchBackend)
    assert backend.batches_calls is True
    # A config file may choose it too.
    config = parse_config(fast_config_text(backend='"anthropic-batch"'), "batch.toml")
    assert config.backend == "anthropic-batch"
    api_env.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(RuntimeError, match="backend anthropic-batch: ANTHROPIC_API_KEY"):
        resolve_backend("anthropic-batch")
    with pytest.raises(ValueError, match="poll_initial: must be a number >= 0"):
        AnthropicBatchBackend(call_settings(fast_config(), "anthropic-batch"), poll_initial=-1)


def test_cli_runs_a_batch_review_and_prints_sarif(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    config = write_config(tmp_path / "fast.toml")
    out = tmp_path / "out"
    with BatchStub(answer=scripted_answer, polls_in_progress=0) as stub:
        env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("ANTHROPIC")}
        env.update(ANTHROPIC_API_KEY="k", ANTHROPIC_BASE_URL=stub.url)
        args = ["--repo", str(repo), "--config", str(config), "--out", str(out)]
        done = subprocess.run(
            [*CLI, *args, "--backend", "anthropic-batch", "--format", "sarif", "--max-loops", "2"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert stub.batch_sizes() == [7, 1, 7, 1]
        assert [r for r in stub.recorded() if r.path == "/v1/messages"] == []
    sarif = json.loads(done.stdout)
    assert sarif["version"] == "2.1.0"
    assert sarif == json.loads((out / "synthesis.sarif").read_text(encoding="utf-8"))
    kept = read_jsonl(out / "findings.jsonl")
    results = sarif["runs"][0]["results"]
    assert len(results) == len(kept) == 2 * 17
    assert sorted(r["properties"]["findingId"] for r in results) == sorted(r["id"] for r in kept)
    assert "saved **$" in (out / "synthesis.md").read_text(encoding="utf-8")

    # The batch backend runs embedded only.
    bad = subprocess.run(
        [*CLI, *args, "--backend", "anthropic-batch", "--redis-url", "redis://127.0.0.1:1/0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "runs embedded" in bad.stderr


async def test_budget_counts_batch_calls_at_the_batch_rate(
    api_env: pytest.MonkeyPatch, repo: Path, tmp_path: Path
) -> None:
    """A budget that fits a loop at the batch price, not at the list price."""
    config = fast_config()
    inputs = prepare_run(repo, config, tmp_path / "unused")
    prompts = [ReviewerPrompt.from_dict(j["prompt"]) for j in role_jobs(inputs, 1, None, "-")]
    list_meter = CostMeter(config, budget_usd=None)
    wave_at_list = sum(list_meter.estimate(p, config.max_tokens_reviewer) for p in prompts)
    budget = 0.55 * wave_at_list  # the wave's upper bound at the batch rate is 0.5x

    with BatchStub(answer=scripted_answer) as stub:
        api_env.setenv("ANTHROPIC_BASE_URL", stub.url)
        out = tmp_path / "batch"
        options = RunOptions(repo=repo, config=config, out_dir=out, max_loops=1, budget_usd=budget)
        backend = batch_backend()
        try:
            report = await run_review(options, backend=backend)
        finally:
            await backend.aclose()
        assert report.completed_loops == [1] and report.failed_reviewers == []
        assert stub.batch_sizes() == [7, 1]

    with MessagesStub(answer=scripted_answer) as stub:
        api_env.setenv("ANTHROPIC_BASE_URL", stub.url)
        options = RunOptions(
            repo=repo,
            config=config,
            out_dir=tmp_path / "sync",
            max_loops=1,
            budget_usd=budget,
            backend="anthropic",
        )
        with pytest.raises(BudgetExceeded):
            await run_review(options)
        assert len(stub.recorded(status=200)) < 7  # refused before the wave was paid


async def test_a_batch_that_never_ends_is_cancelled_and_its_calls_fail(
    api_env: pytest.MonkeyPatch, repo: Path, tmp_path: Path
) -> None:
    with BatchStub(answer=scripted_answer, polls_in_progress=10**6) as stub:
        api_env.setenv("ANTHROPIC_BASE_URL", stub.url)
        options = RunOptions(repo=repo, config=fast_config(), out_dir=tmp_path / "o", max_loops=1)
        backend = batch_backend(max_wait=0.2)
        try:
            report = await run_review(options, backend=backend)
        finally:
            await backend.aclose()
        # Not retried (waiting again could take another 24 h): one batch per wave.
        assert stub.batch_sizes() == [7, 1]
        assert all(b.cancel_requested and not b.ended for b in stub.batches.values())
        cancels = [r for r in stub.recorded() if r.path.endswith("/cancel")]
        assert len(cancels) == 2
    assert len(report.failed_reviewers) == 8
    assert all("did not end within" in error for _, _, error in report.failed_reviewers)
    rows = read_jsonl(tmp_path / "o" / "loops.jsonl")[0]["reviewers"]
    assert [(rv["status"], rv["attempts"]) for rv in rows] == [("failed", 1)] * 8


def test_dry_run_prices_a_batch_run_at_half(
    api_env: pytest.MonkeyPatch, repo: Path, tmp_path: Path
) -> None:
    api_env.delenv("ANTHROPIC_API_KEY")  # byte estimates: no token-counting call
    config = write_config(tmp_path / "fast.toml")
    runner = CliRunner()
    plans = {}
    for backend in ("anthropic", "anthropic-batch"):
        args = ["run", "--repo", str(repo), "--config", str(config), "--dry-run"]
        done = runner.invoke(cli_main, [*args, "--backend", backend])
        assert done.exit_code == 0, done.output
        plans[backend] = json.loads(done.stdout)
    full, batch = (plans[b]["cost_estimate"] for b in ("anthropic", "anthropic-batch"))
    assert full["tokens"] == batch["tokens"] and full["total_usd"] > 0
    assert batch["total_usd"] == pytest.approx(full["total_usd"] * BATCH_PRICE_FACTOR, abs=1e-5)
    for kind, rate in full["prices_per_mtok"].items():
        assert batch["prices_per_mtok"][kind] == pytest.approx(rate * BATCH_PRICE_FACTOR)
    assert not (repo / "docs/review").exists()


async def test_metrics_record_batch_calls_at_the_batch_price(
    batch_stub: BatchStub, repo: Path, tmp_path: Path
) -> None:
    store = MemoryStore()
    config = fast_config()
    options = RunOptions(
        repo=repo,
        config=config,
        out_dir=tmp_path / "o",
        max_loops=1,
        recorder=Recorder(store, "embedded"),
    )
    backend = batch_backend()
    try:
        await run_review(options, backend=backend)
    finally:
        await backend.aclose()
    assert batch_stub.batch_sizes() == [7, 1]  # the metrics wrapper keeps the wave whole
    price = config_price(config)
    assert price is not None
    usage = batch_stub.entry_usage_totals()
    full = usage_cost(usage, price, config.cache_ttl)["total"]
    text = generate_latest(registry_for(store, "embedded", rq=False)).decode()
    costs = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("moneta_review_cost_usd_total{")
    ]
    assert len(costs) == 1
    assert costs[0] == pytest.approx(full * BATCH_PRICE_FACTOR)
