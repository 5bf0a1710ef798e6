"""docker-compose.yml: its structure, and every command it runs, run here as processes.

There is no Docker on the test machine, so the test parses the file, checks what
`docker compose up` relies on (AOF and a password on Redis, health-gated start, a
one-shot orchestrator, scalable reviewers, JSON-aware dashboard, the API key passed
through, the repository read-only, outputs on a volume), then runs each service's
command with compose-style variable interpolation and the container addresses
mapped to this machine (host `redis` → 127.0.0.1 and a free port, /repo and
/outputs → temporary directories).
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.distributed import connect, wait_for_run
from tests.support.messages_stub import MessagesStub
from tests.support.redis_server import free_port, wait_until
from tests.support.review_processes import ROOT

COMPOSE = ROOT / "docker-compose.yml"
PASSWORD = "s3cret-pw"
_VAR = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` forms."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name, "")
        if value:
            return value
        if op == "?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == "-" else ""

    return _VAR.sub(sub, text)


class Host:
    """Maps a service's container view (hosts, ports, paths) onto this machine."""

    def __init__(self, env: dict[str, str], redis_port: int, paths: dict[str, Path]) -> None:
        self.env = env
        self.redis_port = redis_port
        self.paths = paths

    def value(self, text: str) -> str:
        text = interpolate(text, self.env)
        text = text.replace("@redis:6379", f"@127.0.0.1:{self.redis_port}")
        if text == "6379":
            return str(self.redis_port)
        for container, local in self.paths.items():
            if text == container or text.startswith(container + "/"):
                return str(local) + text[len(container) :]
        return text

    def argv(self, service: dict[str, Any]) -> list[str]:
        return [self.value(a) for a in service["command"]]

    def environment(self, service: dict[str, Any]) -> dict[str, str]:
        return {k: self.value(str(v)) for k, v in (service.get("environment") or {}).items()}


@pytest.fixture
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_structure(compose: dict[str, Any]) -> None:
    services = compose["services"]
    default = {n for n, s in services.items() if not s.get("profiles")}  # tests/ops: monitoring
    assert default == {"redis", "orchestrator", "reviewer", "synth", "dashboard"}

    redis_svc = services["redis"]
    cmd = redis_svc["command"]
    assert cmd[0] == "redis-server"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--appendfsync") + 1] == "everysec"
    assert "REDIS_PASSWORD" in cmd[cmd.index("--requirepass") + 1]
    assert redis_svc["healthcheck"]["test"][:2] == ["CMD", "redis-cli"]
    assert "ping" in redis_svc["healthcheck"]["test"]
    assert any(v.endswith(":/data") for v in redis_svc["volumes"])
    assert "redis-data" in compose["volumes"] and "review-outputs" in compose["volumes"]

    for name in ("orchestrator", "reviewer", "synth", "dashboard"):
        svc = services[name]
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert "container_name" not in svc, name
    for name in ("orchestrator", "reviewer", "synth"):
        svc = services[name]
        env = svc["environment"]
        assert env["ANTHROPIC_API_KEY"].startswith("${ANTHROPIC_API_KEY"), name
        assert "${REDIS_PASSWORD" in env["REDIS_URL"] and "@redis:6379" in env["REDIS_URL"]
        assert ".:/repo:ro" in svc["volumes"], name
        assert "review-outputs:/outputs" in svc["volumes"], name

    orch = services["orchestrator"]
    assert orch["command"][:2] == ["moneta-review", "run"]
    assert orch["restart"] == "no"  # one shot
    assert orch["command"][orch["command"].index("--out") + 1] == "/outputs"
    assert orch["command"][orch["command"].index("--repo") + 1] == "/repo"
    # Scalable with --scale reviewer=N: no fixed name, no host port.
    reviewer = services["reviewer"]
    assert reviewer["command"] == ["moneta-review", "worker", "--queues", "reviewer"]
    assert "ports" not in reviewer
    assert services["synth"]["command"] == ["moneta-review", "worker", "--queues", "synth"]
    dash = services["dashboard"]
    assert dash["command"][0] == "rq-dashboard" and "--json" in dash["command"]
    assert "${REDIS_PASSWORD" in dash["environment"]["RQ_DASHBOARD_REDIS_URL"]
    assert dash["ports"] == ["9181:9181"]


def test_compose_commands_run_as_processes(
    compose: dict[str, Any],
    stub: MessagesStub,
    env: dict[str, str],
    repo: Path,
    tmp_path: Path,
) -> None:
    services = compose["services"]
    port = free_port()
    dash_port = free_port()
    host_env = {**env, "REDIS_PASSWORD": PASSWORD}
    host = Host(host_env, port, {"/repo": repo, "/outputs": tmp_path / "outputs"})
    with pytest.raises(KeyError, match="REDIS_PASSWORD"):
        interpolate(services["redis"]["command"][-1], {})

    redis_argv = host.argv(services["redis"])
    redis_argv += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(redis_argv, stdout=subprocess.DEVNULL))
        health = services["redis"]["healthcheck"]["test"][1:]
        health_env = {**env, **host.environment(services["redis"])}

        def healthy() -> bool:
            done = subprocess.run(
                [host.value(a) for a in health], env=health_env, capture_output=True, text=True
            )
            return done.returncode == 0 and done.stdout.strip() == "PONG"

        wait_until(healthy, timeout=20, what="the redis healthcheck")
        # The password is required.
        anon = subprocess.run(
            ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, env=env
        )
        assert "NOAUTH" in anon.stdout + anon.stderr

        def service_env(name: str) -> dict[str, str]:
            return {**env, **host.environment(services[name])}

        for name, count in (("reviewer", 2), ("synth", 1)):
            for i in range(count):
                log = (tmp_path / f"{name}-{i}.log").open("ab")
                procs.append(
                    subprocess.Popen(
                        host.argv(services[name]),
                        env=service_env(name),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=repo,
                    )
                )
        dash_argv = [a if a != "9181" else str(dash_port) for a in host.argv(services["dashboard"])]
        dash_argv = [a if a != "0.0.0.0" else "127.0.0.1" for a in dash_argv]
        dash_log = (tmp_path / "dashboard.log").open("ab")
        procs.append(
            subprocess.Popen(
                dash_argv, env=service_env("dashboard"), stdout=dash_log, stderr=subprocess.STDOUT
            )
        )

        orch = subprocess.run(
            host.argv(services["orchestrator"]),
            env=service_env("orchestrator"),
            capture_output=True,
            text=True,
            timeout=240,
            cwd=repo,
        )
        logs = "".join(p.read_text() for p in sorted(tmp_path.glob("*.log")))
        assert orch.returncode == 0, orch.stderr + logs
        run_id = orch.stdout.strip()
        out = tmp_path / "outputs"
        assert (out / "synthesis.md").is_file()
        assert len(list(out.glob("loop-*.md"))) == 5
        meta = wait_for_run(
            connect(host.value(services["orchestrator"]["environment"]["REDIS_URL"])),
            run_id,
            timeout=5,
        )
        assert meta.status == "completed"
        assert len(stub.recorded()) == 40

        base = f"http://127.0.0.1:{dash_port}"

        def dashboard_up() -> bool:
            try:
                with urllib.request.urlopen(base + "/", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(dashboard_up, timeout=60, what="rq-dashboard")
        with urllib.request.urlopen(f"{base}/0/data/queues.json", timeout=5) as r:
            queues = {q["name"] for q in json.load(r)["queues"]}
        assert {"reviewer", "synth"} <= queues
        with urllib.request.urlopen(f"{base}/0/data/job/{run_id}_L1_usd.json", timeout=5) as r:
            job = json.load(r)
        assert job["description"] == f"{run_id}:L1:usd"
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
