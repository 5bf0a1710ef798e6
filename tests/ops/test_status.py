"""`moneta-review status`: the loop × role view of embedded and distributed runs."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.config import load_config
from orchestrator.cost import config_price, usage_cost
from orchestrator.runstate import RunState
from tests.review.engine_support import ROLE_ORDER, scripted_findings
from tests.support.messages_stub import MessagesStub
from tests.support.redis_server import RedisServer, wait_until
from tests.support.review_processes import CLI, ROOT, Workers, run_args, run_cli

KINDS = ("input", "output", "cache_write", "cache_read")


def per_job_usage(stub: MessagesStub) -> dict[tuple[int, str], dict[str, int]]:
    out: dict[tuple[int, str], dict[str, int]] = {}
    for r in stub.recorded(status=200):
        assert (r.loop, r.role) not in out
        out[(r.loop, r.role)] = {k: (r.usage or {}).get(k, 0) for k in KINDS}
    return out


def check_jobs(view: dict[str, Any], stub: MessagesStub, config_file: Path, loops: int) -> None:
    """Every reviewer row: finished, its findings, tokens and cost as the stub served them."""
    price = config_price(load_config(config_file))
    assert price is not None
    used = per_job_usage(stub)
    rows = [j for j in view["jobs"] if j["role"] != "synth"]
    assert [(j["loop"], j["role"]) for j in rows] == [
        (n, r) for n in range(1, loops + 1) for r in ROLE_ORDER
    ]
    for j in rows:
        key = (j["loop"], j["role"])
        assert j["state"] == "finished", j
        assert j["findings"] == len(scripted_findings(j["role"], j["loop"])), j
        assert j["tokens"] == used[key], j
        assert abs(j["cost_usd"] - usage_cost(used[key], price, "1h")["total"]) < 1e-6
        assert j["duration_s"] is not None and j["duration_s"] >= 0
    total = {k: sum(u[k] for u in used.values()) for k in KINDS}
    assert view["totals"]["tokens"] == total
    assert view["totals"]["findings"] == sum(j["findings"] for j in rows)


def test_embedded_run_status_from_its_output_directory(
    stub: MessagesStub, env: dict[str, str], repo: Path, config_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = run_args(repo, config_file, out)
    done = run_cli([*args, "--max-loops", "2"], env)
    assert done.returncode == 0, done.stderr
    # Not a terminal: plain log lines, no progress bars.
    assert "loop 1 (spec-conformance): reviewers running" in done.stderr
    assert "\x1b[" not in done.stderr

    shown = run_cli(["status", str(out), "--json"], env)
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view["mode"] == "embedded" and view["status"] == "completed"
    assert view["closed_loops"] == [1, 2]
    check_jobs(view, stub, config_file, loops=2)

    text = run_cli(["status", str(out)], env)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == "run out: completed"
    for loop in (1, 2):
        for role in ROLE_ORDER:
            (line,) = [ln for ln in lines if ln.startswith(f"out:L{loop}:{role} ")]
            assert " finished " in line

    missing = run_cli(["status", str(tmp_path / "nowhere")], env)
    assert missing.returncode == 1
    assert "no run here" in missing.stderr and "--redis-url" in missing.stderr


def test_distributed_run_status_joins_jobs_results_and_timings(
    stub: MessagesStub,
    env: dict[str, str],
    repo: Path,
    config_file: Path,
    own_redis: RedisServer,
    workers: Workers,
    tmp_path: Path,
) -> None:
    workers.start_many(own_redis.url, reviewers=3, synth=1)
    out = tmp_path / "out"
    args = run_args(repo, config_file, out)
    done = run_cli([*args, "--redis-url", own_redis.url, "--run-id", "st1"], env, timeout=180)
    assert done.returncode == 0, done.stderr + workers.logs()
    conn = own_redis.client()
    assert RunState(conn, "st1").meta().status == "completed"
    conn.close()

    # No RUN: the latest run in Redis.
    shown = run_cli(["status", "--redis-url", own_redis.url, "--json"], env)
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view["run_id"] == "st1" and view["mode"] == "distributed"
    assert len(view["jobs"]) == 45
    check_jobs(view, stub, config_file, loops=5)
    synth = [j for j in view["jobs"] if j["role"] == "synth"]
    assert [j["state"] for j in synth] == ["finished"] * 5
    assert view["totals"]["jobs_by_state"] == {"finished": 45}

    text = run_cli(["status", "st1", "--redis-url", own_redis.url], env)
    assert text.stdout.startswith("run st1: completed")
    assert "st1:L3:usd" in text.stdout


def _pty_run(
    argv: list[str], env: dict[str, str], on_output: Callable[[str], None] | None = None
) -> tuple[int, str]:
    """Run `argv` with stdout and stderr on a pseudo-terminal; return (status, output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        argv,
        env={**env, "TERM": "xterm-256color", "COLUMNS": "140"},
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        cwd=ROOT,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)
            if on_output is not None:
                on_output(data.decode("utf-8", "replace"))

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    code = proc.wait(timeout=180)
    reader.join(timeout=10)
    os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_on_a_terminal_a_run_shows_progress_bars_and_status_a_table(
    stub: MessagesStub, env: dict[str, str], repo: Path, config_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = run_args(repo, config_file, out)
    code, screen = _pty_run([*CLI, *args, "--max-loops", "2"], env)
    assert code == 0, screen
    assert "\x1b[" in screen  # drawn, not logged
    assert "loop 1 spec-conformance" in screen and "loop 2 concurrency-atomicity" in screen
    assert "8/8" in screen
    assert "reviewers running" not in screen  # the log lines are replaced by the bars

    code, screen = _pty_run([*CLI, "status", str(out)], env)
    assert code == 0, screen
    assert "run out" in screen and "completed" in screen
    assert "┃" in screen or "│" in screen  # a rich table
    assert screen.count("finished") == 16
    wait_until(lambda: (out / ".status.json").exists(), timeout=1)


def test_a_resumed_embedded_run_shows_the_loops_of_earlier_invocations(
    stub: MessagesStub, env: dict[str, str], repo: Path, config_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = run_args(repo, config_file, out)
    first = run_cli([*args, "--max-loops", "1"], env)
    assert first.returncode == 0, first.stderr
    second = run_cli([*args, "--max-loops", "2", "--resume"], env)
    assert second.returncode == 0, second.stderr
    view = json.loads(run_cli(["status", str(out), "--json"], env).stdout)
    assert view["status"] == "completed" and view["closed_loops"] == [1, 2]
    used = per_job_usage(stub)
    assert [(j["loop"], j["role"]) for j in view["jobs"]] == [
        (n, r) for n in (1, 2) for r in ROLE_ORDER
    ]
    for j in view["jobs"]:
        assert j["state"] == "finished"
        assert j["tokens"] == used[(j["loop"], j["role"])]
        assert j["findings"] == len(scripted_findings(j["role"], j["loop"]))
        # Durations are known for what this invocation ran, not for earlier loops.
        assert (j["duration_s"] is None) == (j["loop"] == 1)
    assert view["totals"]["tokens"] == {k: sum(u[k] for u in used.values()) for k in KINDS}


def test_status_watch_follows_a_running_run_until_it_ends(
    stub: MessagesStub, env: dict[str, str], repo: Path, config_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    stub.hold(loop=2)
    args = run_args(repo, config_file, out)
    run = subprocess.Popen(
        [*CLI, *args, "--max-loops", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:

        def loop2_running() -> bool:
            path = out / ".status.json"
            if not path.exists() or stub.waiting() < 1:
                return False
            view = json.loads(path.read_text())
            return view["closed_loops"] == [1]

        wait_until(loop2_running, timeout=60, what="loop 2 to be held")
        view = json.loads(run_cli(["status", str(out), "--json"], env).stdout)
        assert view["status"] == "running"
        states = {(j["loop"], j["state"]) for j in view["jobs"]}
        assert states == {(1, "finished"), (2, "started")}
        seen: list[str] = []

        def release_once_shown(text: str) -> None:
            seen.append(text)
            if "running" in "".join(seen):
                stub.release()  # the run ends while status watches it

        code, screen = _pty_run(
            [*CLI, "status", str(out), "--watch", "--interval", "0.2"],
            env,
            on_output=release_once_shown,
        )
        assert code == 0, screen
        assert screen.index("running") < screen.rindex("completed")  # it followed the run
    finally:
        stub.release()
        run.wait(timeout=120)
    assert run.returncode == 0
