"""Real processes for distributed tests: redis-server, RQ workers, the CLI.

`RedisServer` runs its own `redis-server` on a free port with AOF configured as in
docker-compose.yml (fsync once a second), in a directory the test owns, so a test
can SIGKILL and restart it and get its data back. `Workers` starts `moneta-review
worker` processes in their own sessions, so a test can SIGKILL one (and the work
horse it forked) like a machine that died.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 60.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll `predicate` until it returns a truthy value; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


class RedisServer:
    """A `redis-server` process of the test's own, with AOF in `directory`."""

    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.directory = directory
        self.password = password
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

        def ready() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False
            except redis.ResponseError as exc:  # still loading the AOF
                return "LOADING" not in str(exc) and False

        wait_until(ready, timeout=20, what=f"redis-server on port {self.port}")
        client.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown save, only what the AOF already holds survives."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


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
        """SIGKILL worker `name` and any work horse it forked; return the killed pids."""
        proc = self.procs.pop(name)
        pids = [proc.pid, *children(proc.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
        return pids

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs.clear()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )


def run_cli(
    args: Sequence[str], env: dict[str, str], *, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def read_tree(out: Path) -> dict[str, bytes]:
    """Every run file in `out` (dotfiles such as the lock excluded), name → bytes."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if not p.name.startswith(".")}
