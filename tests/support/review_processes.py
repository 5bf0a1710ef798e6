"""Real processes of a review run: the `moneta-review` CLI and RQ workers.

`Workers` starts `moneta-review worker` processes in their own sessions, so a test
can SIGKILL one (with any process it started) like a machine that died. The
helpers here run the CLI the way an operator does, with the stub model as the
Anthropic API, so every test drives the same entry points.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from orchestrator.config import load_config
from orchestrator.distributed import connect, start_run, wait_for_run
from orchestrator.runstate import RunMeta

ROOT = Path(__file__).resolve().parents[2]
# The `moneta-review` entry point (it checks Redis before loading the full CLI).
CLI = [sys.executable, "-m", "orchestrator.distributed_cli"]

# Fast abandoned-job detection for tests: heartbeat every second, abandoned 5 s after
# the last one (a live job on a loaded machine must not look abandoned), a
# maintenance sweep every second.
FAST_WORKER = [
    "--maintenance-interval",
    "1",
    "--monitoring-interval",
    "1",
    "--abandon-grace",
    "5",
]


def review_env(stub_url: str) -> dict[str, str]:
    """Environment of every process a test starts: the stub at `stub_url` as the Anthropic
    API, and no Redis or Anthropic setting inherited from the machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "REDIS_"))}
    env.update(
        ANTHROPIC_API_KEY="test-key",
        ANTHROPIC_BASE_URL=stub_url,
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    return env


def run_args(repo: Path, config_file: Path, out: Path, *extra: str) -> list[str]:
    """`run` over `repo` with `config_file`, writing to `out`, then `extra`."""
    return ["run", "--repo", str(repo), "--config", str(config_file), "--out", str(out), *extra]


def run_cli(
    args: Sequence[str], env: dict[str, str], *, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def read_tree(out: Path) -> dict[str, bytes]:
    """Every run file in `out` (dotfiles such as the lock excluded), name → bytes."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if not p.name.startswith(".")}


def embedded_run(repo: Path, config_file: Path, out: Path, env: dict[str, str]) -> dict[str, bytes]:
    """An embedded run through the CLI (it must succeed); its files, name → bytes."""
    done = run_cli(run_args(repo, config_file, out), env)
    assert done.returncode == 0, done.stderr
    return read_tree(out)


def enqueue_run(url: str, repo: Path, config_file: Path, out: Path, run_id: str) -> RunMeta:
    """Enqueue a run in-process (the orchestrator's part), as `run --no-wait` does."""
    conn = connect(url)
    try:
        return start_run(
            conn,
            repo=repo,
            config=load_config(config_file),
            out_dir=out,
            backend="anthropic",
            run_id=run_id,
        )
    finally:
        conn.close()


def wait_run_end(url: str, run_id: str, *, timeout: float) -> RunMeta:
    """The run's meta once it has completed or failed (TimeoutError after `timeout` s)."""
    conn = connect(url)
    try:
        return wait_for_run(conn, run_id, timeout=timeout)
    finally:
        conn.close()


def children(pid: int) -> list[int]:
    """Direct child pids of `pid` (from /proc)."""
    out: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


class Workers:
    """`moneta-review worker` processes; stopped (SIGTERM, then SIGKILL) at teardown."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.redis_url = ""
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, queues: str, *extra: str) -> subprocess.Popen[bytes]:
        assert self.redis_url, "set Workers.redis_url first"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [*CLI, "worker", "--queues", queues, "--name", name, *FAST_WORKER, *extra],
            env={**self.env, "REDIS_URL": self.redis_url},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
        self.procs[name] = proc
        return proc

    def start_many(self, redis_url: str, reviewers: int, synth: int = 1, *extra: str) -> None:
        self.redis_url = redis_url
        for i in range(reviewers):
            self.start(f"reviewer-{i}", "reviewer", *extra)
        for i in range(synth):
            self.start(f"synth-{i}", "synth", *extra)

    def sigkill(self, name: str) -> list[int]:
        """SIGKILL worker `name` and its child processes; return the killed pids."""
        proc = self.procs.pop(name)
        pids = [proc.pid, *children(proc.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
        return pids

    def stop_all(self, grace: float = 3.0) -> None:
        """SIGTERM every worker; SIGKILL those still running ``grace`` s later. An idle
        worker exits at once; one in a job would finish it first (RQ's warm shutdown),
        which a test that is over has no use for."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs.clear()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )


@contextlib.contextmanager
def running_workers(env: dict[str, str], log_dir: Path) -> Iterator[Workers]:
    """`Workers` logging to `log_dir`, all stopped on the way out whatever happened inside."""
    workers = Workers(env, log_dir)
    try:
        yield workers
    finally:
        workers.stop_all()
