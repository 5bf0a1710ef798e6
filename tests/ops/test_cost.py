"""Prices, dry-run estimates, the run budget and the cost summary of synthesis.md."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.checkpoint import load_checkpoint
from orchestrator.config import check_config_text, parse_config
from orchestrator.cost import (
    HOLD_NAME,
    BudgetExceeded,
    CostMeter,
    ModelPrice,
    config_price,
    price_for,
    read_hold,
    usage_cost,
)
from orchestrator.run import RunOptions, run_review
from tests.review.engine_support import fast_config, fast_config_text, make_repo, scripted_answer
from tests.support.messages_stub import MessagesStub, _blocks

ROOT = Path(__file__).resolve().parents[2]


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


def config_text_without_prices() -> str:
    """The fast test config with the packaged `[prices]` tables cut off (they come last)."""
    text = fast_config_text()
    return text[: text.index('[prices."')]


def model_calls(stub: MessagesStub) -> list[Any]:
    return [r for r in stub.recorded() if r.path.split("?")[0] == "/v1/messages"]


def test_price_lookup_exact_id_beats_longest_glob_beats_shorter() -> None:
    config = fast_config()
    table_cfg = parse_config(
        config_text_without_prices()
        + '\n[prices."claude-opus-*"]\ninput = 5.0\noutput = 25.0\n'
        + '\n[prices."claude-opus-4-1*"]\ninput = 15.0\noutput = 75.0\ncache_read = 1.0\n'
        + '\n[prices."claude-opus-4-1-exact"]\ninput = 7.0\noutput = 9.0\n',
        "p.toml",
    )
    from orchestrator.cost import price_table

    table = price_table(table_cfg)
    assert price_for("claude-opus-4-1-exact", table) == ModelPrice(7.0, 9.0, 8.75, 14.0, 0.7)
    # Longest glob wins; an explicit cache_read overrides the 0.1x default.
    p41 = price_for("claude-opus-4-1-20250805", table)
    assert p41 == ModelPrice(15.0, 75.0, 18.75, 30.0, 1.0)
    assert price_for("claude-opus-5-5", table) == ModelPrice(5.0, 25.0, 6.25, 10.0, 0.5)
    assert price_for("gpt-4", table) is None
    # The packaged default table prices the default model.
    assert config_price(config) == ModelPrice(5.0, 25.0, 6.25, 10.0, 0.5)


def test_usage_cost_by_kind_at_each_cache_ttl() -> None:
    price = ModelPrice.from_table({"input": 5.0, "output": 25.0})
    usage = {"input": 1_000_000, "output": 200_000, "cache_write": 400_000, "cache_read": 2_000_000}
    c1h = usage_cost(usage, price, "1h")
    assert c1h == pytest.approx(
        {"input": 5.0, "output": 5.0, "cache_write": 4.0, "cache_read": 1.0, "total": 15.0}
    )
    c5m = usage_cost(usage, price, "5m")
    assert c5m["cache_write"] == pytest.approx(2.5)
    assert c5m["total"] == pytest.approx(13.5)
    with pytest.raises(ValueError, match="cache_ttl"):
        usage_cost(usage, price, "2h")


def test_config_check_reports_price_problems_with_their_lines() -> None:
    text = config_text_without_prices() + (
        '\n[prices."m-a"]\ninput = 1.0\n'  # output missing
        '\n[prices."m-b"]\ninput = -2\noutput = 1.0\nsurcharge = 3\n'
    )
    config, problems = check_config_text(text, "p.toml")
    assert config is None
    lines = text.splitlines()
    messages = [(p.line, p.message) for p in problems]
    header_a = lines.index('[prices."m-a"]') + 1
    neg = lines.index("input = -2") + 1
    extra = lines.index("surcharge = 3") + 1
    assert (header_a, "prices.m-a: missing required key 'output' (USD per million tokens)") in (
        messages
    )
    assert any(line == neg and "between 0.0 and 10000.0" in m for line, m in messages)
    assert any(line == extra and "unknown key" in m for line, m in messages)
    assert len(problems) == 3


def test_meter_refuses_a_call_that_would_exceed_and_rejects_bad_budgets() -> None:
    config = fast_config()
    meter = CostMeter(config, budget_usd=1.0)
    meter.reserve(0.6, "a")
    with pytest.raises(BudgetExceeded) as info:
        meter.reserve(0.5, "b")
    assert info.value.spent == pytest.approx(0.6)
    assert info.value.needed == pytest.approx(0.5)
    assert meter.settle(0.6, {"output": 10_000}) == pytest.approx(0.25)
    meter.reserve(0.5, "c")  # fits now that the first call cost less than reserved
    assert meter.spent + meter.reserved == pytest.approx(0.75)
    with pytest.raises(ValueError, match="budget_usd: must be >= 0"):
        CostMeter(config, budget_usd=-1.0)
    with pytest.raises(TypeError, match="budget_usd: must be a number"):
        CostMeter(config, budget_usd=True)  # type: ignore[arg-type]
    unpriced = parse_config(
        fast_config_text().replace('model = "claude-opus-5-5"', 'model = "house-model"'), "x"
    )
    with pytest.raises(ValueError, match="no price for model 'house-model'"):
        CostMeter(unpriced, budget_usd=1.0)


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_dry_run_prices_every_call_with_the_sdk_token_counter(
    stub: MessagesStub, repo: Path
) -> None:
    done = cli(["run", "--repo", str(repo), "--dry-run", "--max-loops", "2"], dict(os.environ))
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["token_source"] == "sdk-count-tokens"
    assert model_calls(stub) == []  # counted, never called
    counted = [r for r in stub.recorded() if r.path == "/v1/messages/count_tokens"]
    # Every distinct prompt counted once; each call carries the stub's count for its prompt.
    by_assignment = {
        (r.role, r.loop): sum(stub._tokens(b) for b in _blocks(r.payload)) for r in counted
    }
    assert len(plan["calls"]) == 16
    for row in plan["calls"]:
        assert row["tokens_counted"] == by_assignment[(row["role"], row["loop"])]
        u = row["usage_estimate"]
        assert u["input"] + u["cache_write"] + u["cache_read"] == row["tokens_counted"]
    price = config_price(fast_config())
    assert price is not None
    for row in plan["calls"]:
        assert row["cost_usd"] == pytest.approx(
            usage_cost(row["usage_estimate"], price, "1h")["total"], abs=1e-6
        )
    est = plan["cost_estimate"]
    assert est["total_usd"] == pytest.approx(sum(r["cost_usd"] for r in plan["calls"]), abs=1e-5)
    assert est["tokens"]["output"] == 16 * 8192
    # Each loop's first call writes (the shared prefix in loop 1, the loop block in
    # both); the loop's seven other calls read what it wrote.
    writes = [r["usage_estimate"]["cache_write"] for r in plan["calls"]]
    assert [w > 0 for w in writes] == ([True] + [False] * 7) * 2
    assert writes[0] > writes[8]  # loop 2's first call reads the prefix loop 1 wrote
    reads = [r["usage_estimate"]["cache_read"] for r in plan["calls"]]
    assert reads[0] == 0 and all(x > 0 for x in reads[1:])


def test_dry_run_without_a_token_counter_uses_the_byte_estimate(
    stub: MessagesStub, repo: Path
) -> None:
    stub.count_tokens = False  # the endpoint answers 404, as a proxy without counting would
    done = cli(["run", "--repo", str(repo), "--dry-run", "--max-loops", "1"], dict(os.environ))
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["token_source"] == "estimate: UTF-8 bytes / 4"
    first = plan["calls"][0]
    sizes = first["bytes"]
    # The loop's first call writes the shared prefix and the loop block; its task is input.
    written = sum(math.ceil(sizes[k] / 4) for k in ("system", "snapshot", "loop_block"))
    task = math.ceil(sizes["task"] / 4)
    assert first["usage_estimate"] == {
        "input": task,
        "cache_write": written,
        "cache_read": 0,
        "output": 8192,
    }
    expected = (task * 5.0 + written * 10.0 + 8192 * 25.0) / 1e6
    assert first["cost_usd"] == pytest.approx(expected, abs=1e-6)
    assert model_calls(stub) == []


def test_cost_summary_ends_synthesis_with_tokens_share_and_usd(
    stub: MessagesStub, repo: Path, tmp_path: Path
) -> None:
    import anyio

    out = tmp_path / "out"
    report = anyio.run(
        lambda: run_review(RunOptions(repo=repo, config=fast_config(), out_dir=out, max_loops=2))
    )
    usage = stub.usage_totals()
    assert report.usage == usage
    text = (out / "synthesis.md").read_text()
    tail = text[text.index("## Cost") :]
    assert text.rstrip().endswith(tail.rstrip())  # the last section
    for kind in ("input", "output", "cache_write", "cache_read"):
        assert f"| `claude-opus-5-5` | {kind} | {usage[kind]} |" in tail
    total_in = usage["input"] + usage["cache_write"] + usage["cache_read"]
    assert f"Cache-hit share of input tokens: {usage['cache_read'] / total_in * 100:.1f}%." in tail
    price = config_price(fast_config())
    assert price is not None
    usd = usage_cost(usage, price, "1h")["total"]
    assert f"Estimated cost: **${usd:.4f}**" in tail


async def test_budget_stops_before_the_exceeding_call_and_resume_continues(
    stub: MessagesStub, repo: Path, tmp_path: Path
) -> None:
    config = fast_config()
    price = config_price(config)
    assert price is not None
    # Reference: the same run without a budget, on a cold cache.
    ref = tmp_path / "ref"
    await run_review(RunOptions(repo=repo, config=config, out_dir=ref))
    ref_usage = stub.usage_totals()
    assert len(model_calls(stub)) == 40
    stub.requests.clear()
    stub.clear_cache()

    # Each call is admitted at up to ~0.21 USD (8192 output tokens at 25 USD/MTok):
    # 0.5 USD lets two calls start and refuses the rest of loop 1.
    out = tmp_path / "out"
    with pytest.raises(BudgetExceeded) as info:
        await run_review(RunOptions(repo=repo, config=config, out_dir=out, budget_usd=0.5))
    first = model_calls(stub)
    assert 1 <= len(first) < 8
    paid = sum(usage_cost(r.usage, price, "1h")["total"] for r in first)
    assert paid <= 0.5
    exc = info.value
    assert exc.spent + exc.needed > 0.5  # the refused call would have gone past the budget
    cp = load_checkpoint(out)
    assert cp is not None and cp.completed_loops == []
    assert not list(out.glob("loop-*.md"))  # the open loop is not synthesised
    held = read_hold(out / HOLD_NAME)
    assert len(held) == len(first)
    assert sorted((loop, a.usage["output"]) for loop, a in held.values()) == sorted(
        (r.loop, r.usage["output"]) for r in first
    )

    # Resuming under the same budget: held answers are replayed free, what they cost
    # counts as spent; the rest of the budget admits new calls, then it stops again.
    with pytest.raises(BudgetExceeded) as again:
        await run_review(
            RunOptions(repo=repo, config=config, out_dir=out, resume=True, budget_usd=0.5)
        )
    second = model_calls(stub)
    assert len(first) < len(second) < 40
    assert len({(r.loop, r.role) for r in second}) == len(second)  # nothing paid twice
    assert again.value.spent >= paid
    assert sum(usage_cost(r.usage, price, "1h")["total"] for r in second) <= 0.5

    # A larger budget finishes the run; no answer already paid for is asked again.
    report = await run_review(
        RunOptions(repo=repo, config=config, out_dir=out, resume=True, budget_usd=100.0)
    )
    calls = model_calls(stub)
    assert len(calls) == 40
    assert len({(r.loop, r.role) for r in calls}) == 40
    assert report.usage == ref_usage
    for name in ("findings.jsonl", "findings.invalid.jsonl", "loops.jsonl", "synthesis.md"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
