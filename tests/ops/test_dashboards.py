"""The Grafana dashboard, its provisioning, and the compose `monitoring` profile."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.metrics import MetricsCollector, Recorder, registry_for
from tests.support.redis_server import RedisServer, free_port, redis_server, wait_until
from tests.support.review_processes import ROOT

GRAFANA = ROOT / "docs" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "moneta-review.json"
COMPOSE = ROOT / "docker-compose.yml"

PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "by", "without", "rate", "irate", "increase",
    "deriv", "delta", "histogram_quantile", "topk", "bottomk", "on", "ignoring",
    "group_left", "group_right", "and", "or", "unless", "offset", "bool", "clamp_min",
    "clamp_max", "abs", "ceil", "floor", "round", "vector", "scalar", "time",
}  # fmt: skip


def served_names(redis_url: str) -> set[str]:
    """Sample names the exporter serves once every family has data (real Redis, real RQ)."""
    import redis

    conn = redis.Redis.from_url(redis_url)
    rec = Recorder(conn, "moneta")
    rec.call("r1", "m", 0.2, {"input": 1, "output": 1, "cache_write": 1, "cache_read": 1}, 0.1)
    rec.retries("r1", 1)
    rec.abandoned("reviewer")
    rec.loop_findings("r1", 1, {"High": 1})
    text = generate_latest(registry_for(conn, "moneta", rq=True)).decode()
    conn.close()
    names = set()
    for family in text_string_to_metric_families(text):
        assert family.samples, f"{family.name}: no samples"
        names |= {s.name for s in family.samples}
    return names


def metric_names_in(expr: str) -> set[str]:
    """Identifiers of a PromQL expression that are not functions, keywords or labels."""
    text = re.sub(r'"[^"]*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return words - PROMQL_WORDS


def test_every_dashboard_query_names_a_metric_the_exporter_serves(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as server:
        served = served_names(server.url)
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 12
    used: set[str] = set()
    for expr in exprs:
        names = metric_names_in(expr)
        assert names, f"query names no metric: {expr}"
        assert names <= served, f"{expr}: not served: {names - served}"
        used |= names
    # The panels the operator asked for: queue depth, throughput, latency, cache share, cost.
    assert {
        "moneta_review_queue_depth",
        "moneta_review_model_calls_total",
        "moneta_review_model_call_duration_seconds_bucket",
        "moneta_review_tokens_total",
        "moneta_review_cost_usd_total",
        "moneta_review_jobs",
        "moneta_review_workers",
    } <= used
    # Every family the exporter serves appears on the dashboard.
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in served}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    assert families == shown
    titles = [p["title"] for p in dash["panels"]]
    assert len(titles) == len(set(titles))
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_metric_names_in_strips_labels_ranges_and_functions() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(x_bucket{kind=~"a|b"}[5m])))'
        " / on (run) group_left y_total"
    )
    assert metric_names_in(expr) == {"x_bucket", "y_total"}
    assert MetricsCollector  # imported for the families' single home


def test_provisioning_ties_grafana_prometheus_and_exporter_together() -> None:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    for name in ("metrics", "prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name
    # rq-dashboard reads jobs with the serializer they were written with.
    assert "--json" in services["dashboard"]["command"]

    metrics_cmd = services["metrics"]["command"]
    assert metrics_cmd[:2] == ["moneta-review", "metrics"]
    port = metrics_cmd[metrics_cmd.index("--port") + 1]
    prom = yaml.safe_load((GRAFANA / "prometheus.yml").read_text())
    targets = [
        t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    ]
    assert targets == [f"metrics:{port}"]
    prom_mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in services["prometheus"]["volumes"])
    assert prom_mounts == {"./docs/grafana/prometheus.yml": "/etc/prometheus/prometheus.yml"}

    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in services["grafana"]["volumes"])
    for local in mounts:
        assert (ROOT / local).is_dir(), local
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/moneta.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert mounts["./docs/grafana/dashboards"] == path
    assert mounts["./docs/grafana/provisioning"] == "/etc/grafana/provisioning"
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = sources["datasources"]
    prom_port = services["prometheus"]["ports"][0].split(":")[1]
    assert source["url"] == f"http://prometheus:{prom_port}"
    dash = json.loads(DASHBOARD.read_text())
    uids = {p["datasource"]["uid"] for p in dash["panels"]} | {
        t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]
    }
    assert uids == {source["uid"]}


@pytest.mark.parametrize("password", ["s3cret-pw"])
def test_compose_metrics_command_serves_here_without_docker(
    tmp_path: Path, env: dict[str, str], password: str
) -> None:
    """The `metrics` service's command, run as a process against a password-protected Redis."""
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    svc = compose["services"]["metrics"]
    server = RedisServer(tmp_path / "redis", password=password).start()
    port = free_port()
    argv = [a if a != "9108" else str(port) for a in svc["command"]]
    url = compose["x-review"]["environment"]["REDIS_URL"]
    url = url.replace("${REDIS_PASSWORD:?set REDIS_PASSWORD}", password)
    url = url.replace("@redis:6379", f"@127.0.0.1:{server.port}")
    proc = subprocess.Popen(
        argv, env={**env, "REDIS_URL": url}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:

        def scrape() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    return r.read().decode()
            except OSError:
                return None

        text = wait_until(scrape, timeout=30, what="the compose metrics command")
        families = {f.name for f in text_string_to_metric_families(text)}
        assert {"moneta_review_queue_depth", "moneta_review_workers", "moneta_review_runs"} <= (
            families
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        server.stop()
