"""Structured logs: JSON lines with run id, loop, role and job id, embedded and on workers."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pytest

from orchestrator.logs import CONTEXT_KEYS, configure_logging, log_context
from tests.review.engine_support import ROLE_ORDER
from tests.support.messages_stub import MessagesStub
from tests.support.redis_server import RedisServer
from tests.support.review_processes import Workers, run_args, run_cli

KEYS = {"ts", "level", "logger", "msg", *CONTEXT_KEYS}


def json_lines(text: str) -> list[dict]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    out = []
    for ln in lines:
        record = json.loads(ln)  # every line is JSON, or this raises
        assert set(record) >= KEYS, record
        out.append(record)
    return out


def test_context_precedence_extra_over_scope_and_unknown_keys_rejected() -> None:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    try:
        log = logging.getLogger("moneta.test")
        log.info("outside")
        with log_context(run_id="r1", loop=2):
            log.info("scoped")
            with log_context(role="usd", job_id="r1:L2:usd"):
                log.warning("nested")
            log.info("explicit", extra={"loop": 3})
        with pytest.raises(ValueError, match="unknown context key"), log_context(step=1):
            pass
    finally:
        configure_logging("text")
        logging.getLogger().handlers.clear()
    records = json_lines(stream.getvalue())
    got = [(r["msg"], r["run_id"], r["loop"], r["role"], r["job_id"]) for r in records]
    assert got == [
        ("outside", None, None, None, None),
        ("scoped", "r1", 2, None, None),
        ("nested", "r1", 2, "usd", "r1:L2:usd"),
        ("explicit", "r1", 3, None, None),
    ]


def test_embedded_run_logs_one_json_line_per_event_with_its_job(
    stub: MessagesStub, env: dict[str, str], repo: Path, config_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = run_args(repo, config_file, out)
    done = run_cli(["--log-format", "json", *args, "--max-loops", "1"], env)
    assert done.returncode == 0, done.stderr
    records = json_lines(done.stderr)
    events = [r["event"]["event"] for r in records if "event" in r]
    assert events[0] == "run_start" and events[-1] == "run_done"
    assert all(r["run_id"] == "out" for r in records if "event" in r)
    done_lines = [r for r in records if r.get("event", {}).get("event") == "reviewer_done"]
    assert sorted(r["role"] for r in done_lines) == sorted(ROLE_ORDER)
    for r in done_lines:
        assert r["loop"] == 1 and r["job_id"] == f"out:L1:{r['role']}"
        assert r["msg"].startswith(f"  {r['role']}: ")

    # The environment variable selects the same format.
    again = run_cli([*args, "--max-loops", "1", "--fresh"], {**env, "MONETA_LOG_FORMAT": "json"})
    assert again.returncode == 0, again.stderr
    assert len(json_lines(again.stderr)) == len(records) + 1  # plus the "removed files" line


def test_worker_lines_during_a_job_carry_its_run_loop_role_and_id(
    stub: MessagesStub,
    env: dict[str, str],
    repo: Path,
    config_file: Path,
    own_redis: RedisServer,
    workers: Workers,
    tmp_path: Path,
) -> None:
    env["MONETA_LOG_FORMAT"] = "json"  # the workers' environment
    workers.start_many(own_redis.url, reviewers=2, synth=1)
    out = tmp_path / "out"
    args = run_args(repo, config_file, out)
    done = run_cli(
        [*args, "--redis-url", own_redis.url, "--run-id", "lg1", "--max-loops", "1"], env
    )
    assert done.returncode == 0, done.stderr
    workers.stop_all()
    records: list[dict] = []
    for log in sorted((tmp_path / "worker-logs").glob("*.log")):
        records += json_lines(log.read_text())
    ok = [r for r in records if "Job OK" in r["msg"]]
    assert len(ok) == 9  # 8 reviewer jobs and the loop's synth job
    seen = set()
    for r in ok:
        m = re.search(r"\((lg1_L1_([a-z]+))\)", r["msg"])
        assert m is not None, r
        role = m.group(2)
        context = (r["run_id"], r["loop"], r["role"], r["job_id"])
        assert context == ("lg1", 1, role, f"lg1:L1:{role}")
        seen.add(role)
    assert seen == {*ROLE_ORDER, "synth"}
