"""The reviewer job at its edges: retries, status codes, extraction, the claude CLI backend."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anthropic._base_client import get_architecture, get_platform

from orchestrator.plan import prepare_run, role_jobs
from tests.review.engine_support import fast_config, make_repo, scripted_answer
from tests.support.messages_stub import MessagesStub, Reply
from workers.extract import extract_findings
from workers.jobs import run_reviewer, run_reviewer_async, synthesize_loop_job
from workers.result import ReviewerResult


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[MessagesStub]:
    with MessagesStub(answer=scripted_answer) as s:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", s.url)
        yield s


@pytest.fixture
def payload(tmp_path: Path) -> dict[str, Any]:
    """The loop-1 architect job of the fixture repository, for the anthropic backend."""
    inputs = prepare_run(make_repo(tmp_path / "repo"), fast_config(), tmp_path / "out")
    job = role_jobs(inputs, 1, None, "anthropic")[0]
    assert job["prompt"]["role"] == "architect"
    return json.loads(json.dumps(job))  # exactly what a JSON queue would deliver


def with_settings(payload: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {**payload, "settings": {**payload["settings"], **settings}}


async def test_529_twice_then_success(stub: MessagesStub, payload: dict[str, Any]) -> None:
    stub.script([Reply(529), Reply(529)])
    result = ReviewerResult.from_dict(await run_reviewer_async(payload))
    assert [r.status for r in stub.recorded()] == [529, 529, 200]
    assert result.status == "ok" and result.attempts == 3
    assert [f["id"] for f in result.findings_raw or []] == ["architect-L1-a", "architect-L1-b"]
    assert result.usage["cache_write"] > 0 and result.usage["output"] > 0


@pytest.mark.parametrize("status", [408, 409, 429, 500, 529])
async def test_transient_statuses_are_retried_up_to_three_attempts(
    stub: MessagesStub, payload: dict[str, Any], status: int
) -> None:
    stub.script([Reply(status)] * 5)
    result = await run_reviewer_async(payload)
    assert [r.status for r in stub.recorded()] == [status] * 3
    assert result["status"] == "failed" and result["attempts"] == 3
    assert f"HTTP {status}" in result["error"]
    assert result["findings_raw"] is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413])
async def test_other_client_errors_fail_at_once(
    stub: MessagesStub, payload: dict[str, Any], status: int
) -> None:
    stub.script([Reply(status)])
    result = await run_reviewer_async(payload)
    assert [r.status for r in stub.recorded()] == [status]
    assert result["status"] == "failed" and result["attempts"] == 1


async def test_sdk_retries_are_off(stub: MessagesStub, payload: dict[str, Any]) -> None:
    stub.script([Reply(529)] * 3)
    result = await run_reviewer_async(with_settings(payload, max_attempts=1))
    assert len(stub.recorded()) == 1
    assert result["status"] == "failed" and result["attempts"] == 1


async def test_retry_after_is_honoured(stub: MessagesStub, payload: dict[str, Any]) -> None:
    stub.script([Reply(429, retry_after="0.4")])
    result = await run_reviewer_async(payload)
    first, second = stub.recorded()
    assert result["status"] == "ok"
    # The server asked for 0.4 s; backoff alone would have waited ~0.01 s.
    assert second.received_at - first.answered_at >= 0.4


def test_a_job_sends_the_sdk_platform_headers_without_starting_threads(
    stub: MessagesStub, payload: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The job form runs its own event loop, as a queue worker's job does; the stub's
    # own threads are in this process too, so count only those the job starts itself.
    started: list[str] = []
    start = threading.Thread.start

    def counting_start(self: threading.Thread) -> None:
        if threading.current_thread() is threading.main_thread():
            started.append(self.name)
        start(self)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    assert run_reviewer(payload)["status"] == "ok"
    headers = stub.recorded()[0].headers
    assert headers["x-stainless-os"] == str(get_platform())
    assert headers["x-stainless-arch"] == str(get_architecture())
    assert started == []


def test_sync_job_form_matches(stub: MessagesStub, payload: dict[str, Any]) -> None:
    result = run_reviewer(payload)
    assert result["status"] == "ok" and len(result["findings_raw"]) == 2
    json.dumps(result)


async def test_unparsable_answer_is_an_extraction_failure_not_zero_findings(
    stub: MessagesStub, payload: dict[str, Any]
) -> None:
    stub.script([Reply(text="I found nothing worth a JSON block.", stop_reason="max_tokens")])
    result = await run_reviewer_async(payload)
    assert result["status"] == "ok"
    assert result["findings_raw"] is None
    assert "no ```json fenced block" in result["extraction_error"]
    assert "output token limit" in result["extraction_error"]


def test_synth_job_writes_loop_and_returns_handoff(tmp_path: Path, payload: dict[str, Any]) -> None:
    inputs = prepare_run(make_repo(tmp_path / "repo2"), fast_config(), tmp_path / "out2")
    results = [
        ReviewerResult(role, 1, "ok", findings_raw=[], attempts=1, usage={"input": 1}).to_dict()
        for role in (r.prefix for r in inputs.config.roles)
    ]
    from orchestrator.plan import synth_job

    job = json.loads(json.dumps(synth_job(inputs, 1, results, {})))
    out = synthesize_loop_job(job)
    assert out["loop"] == 1 and out["counts"]["reviewers"] == 8
    assert (tmp_path / "out2" / "loop-1-spec-conformance.md").read_text() == out["markdown"]
    with pytest.raises(ValueError, match="payload: missing key"):
        synthesize_loop_job({"loop": 1})
    with pytest.raises(TypeError, match=r"payload\.loop: must be an int"):
        synthesize_loop_job({**job, "loop": True})


# --- extraction --------------------------------------------------------------------------


def test_extraction_tolerates_prose_crlf_and_trailing_space() -> None:
    text = 'Intro prose.\r\n\r\n```JSON  \r\n[{"a": 1}, 2]\r\n```   \r\nOutro ```json\n[9]\n```'
    e = extract_findings(text, limit=25)
    assert e.findings == [{"a": 1}, 2] and e.error is None


def test_extraction_skips_a_non_array_block_for_a_later_array() -> None:
    e = extract_findings('```json\n{"x": 1}\n```\n\n```json\n[1]\n```', limit=25)
    assert e.findings == [1]


def test_extraction_caps_at_limit_and_counts_the_rest() -> None:
    e = extract_findings("```json\n" + json.dumps(list(range(30))) + "\n```", limit=25)
    assert e.findings == list(range(25)) and e.over_limit == 5


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("", "answer is empty"),
        (None, "answer is NoneType"),
        (b"bytes", "answer is bytes"),
        ("no fence here", "no ```json fenced block"),
        ("```json\n[1, 2", "never closed"),
        ("```json\n[1, 2,]\n```", "not valid JSON"),
        ('```json\n{"a": 1}\n```', "holds an object, not an array"),
        ("```json\n\x00\x01garbage\n```", "not valid JSON"),
    ],
)
def test_extraction_never_raises_and_says_why(answer: object, reason: str) -> None:
    e = extract_findings(answer, limit=25)
    assert e.findings is None
    assert e.error is not None and reason in e.error


# --- claude -p -----------------------------------------------------------------------------


async def test_claude_cli_backend_reads_prompt_from_stdin(
    tmp_path: Path, payload: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in `claude` on PATH answers like `claude -p --output-format json`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    seen = tmp_path / "stdin.txt"
    fake = bin_dir / "claude"
    fake.write_text(
        "#!/bin/sh\n"
        f'/bin/cat > "{seen}"\n'
        "printf '%s' '"
        + json.dumps(
            {
                "type": "result",
                "is_error": False,
                "result": '```json\n[{"id": "x"}]\n```',
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 5, "output_tokens": 7, "cache_read_input_tokens": 11},
            }
        )
        + "'\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir))
    result = await run_reviewer_async(with_settings(payload, backend="claude-cli"))
    assert result["status"] == "ok", result
    assert result["findings_raw"] == [{"id": "x"}]
    assert result["usage"] == {"input": 5, "output": 7, "cache_write": 0, "cache_read": 11}
    sent = seen.read_text()
    assert sent.startswith(payload["prompt"]["system"][:200])
    assert '<assignment role="architect" loop="1"' in sent


async def test_error_streamed_after_200_is_retried(
    stub: MessagesStub, payload: dict[str, Any]
) -> None:
    stub.script([Reply(stream_error="overloaded_error")])
    result = await run_reviewer_async(payload)
    assert [r.status for r in stub.recorded()] == [200, 200]
    assert result["status"] == "ok" and result["attempts"] == 2
    assert len(result["findings_raw"]) == 2


async def test_request_timeout_is_retried_then_recorded_as_failure(
    stub: MessagesStub, payload: dict[str, Any]
) -> None:
    stub.latency = 2.0
    result = await run_reviewer_async(with_settings(payload, request_timeout=0.3))
    assert result["status"] == "failed" and result["attempts"] == 3, result
    assert len(stub.recorded()) == 3
    assert "Timeout" in result["error"]


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ([], TypeError, "payload: must be a dict"),
        ({"prompt": {}}, ValueError, "payload: missing key"),
    ],
)
async def test_reviewer_job_rejects_malformed_payloads(
    bad: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await run_reviewer_async(bad)  # type: ignore[arg-type]
