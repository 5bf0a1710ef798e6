"""The Prometheus exporter, scraped over HTTP while a distributed run goes on real Redis."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.config import load_config
from orchestrator.cost import config_price, usage_cost
from orchestrator.metrics import LATENCY_BUCKETS, MemoryStore, Recorder, registry_for
from orchestrator.runstate import RunState
from synth.outputs import read_jsonl
from tests.support.messages_stub import MessagesStub, Reply
from tests.support.redis_server import RedisServer, free_port, wait_until
from tests.support.review_processes import CLI, ROOT, Workers, run_args, run_cli

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
KINDS = ("input", "output", "cache_write", "cache_read")
SEVERITIES = ("Critical", "High", "Medium", "Low", "Note")


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        return parse(resp.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def exporter(own_redis: RedisServer, env: dict[str, str], tmp_path: Path) -> Iterator[int]:
    port = free_port()
    log = (tmp_path / "exporter.log").open("wb")
    proc = subprocess.Popen(
        [*CLI, "metrics", "--port", str(port), "--addr", "127.0.0.1", "--redis-url", own_redis.url],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )

    def up() -> bool:
        try:
            scrape(port)
            return True
        except OSError:
            return False

    try:
        wait_until(up, timeout=30, what="the metrics exporter")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def usage_of(requests: list) -> dict[str, int]:
    total = dict.fromkeys(KINDS, 0)
    for r in requests:
        for k in KINDS:
            total[k] += (r.usage or {}).get(k, 0)
    return total


def test_exporter_numbers_match_a_distributed_run_while_it_runs_and_after(
    stub: MessagesStub,
    env: dict[str, str],
    repo: Path,
    config_file: Path,
    own_redis: RedisServer,
    workers: Workers,
    exporter: int,
    tmp_path: Path,
) -> None:
    model = load_config(config_file).model
    price = config_price(load_config(config_file))
    assert price is not None
    stub.hold(loop=2)  # the run pauses in loop 2 with a known queue state
    stub.script([Reply(status=529, retry_after="0")], role="usd", loop=3)  # one retry in loop 3
    workers.start_many(own_redis.url, reviewers=2, synth=1)
    out = tmp_path / "out"
    done = run_cli(
        run_args(
            repo, config_file, out, "--redis-url", own_redis.url, "--run-id", "ops1", "--no-wait"
        ),
        env,
    )
    assert done.returncode == 0, done.stderr

    def paused() -> Samples | None:
        s = scrape(exporter)
        state = (
            value(s, "moneta_review_jobs", queue="reviewer", state="started"),
            value(s, "moneta_review_queue_depth", queue="reviewer"),
            value(s, "moneta_review_jobs", queue="synth", state="finished"),
        )
        return s if state == (2, 5, 1) and stub.waiting() >= 1 else None

    s = wait_until(paused, timeout=60, what="loop 2 paused with two reviewers started")
    loop1 = [r for r in stub.recorded(status=200) if r.loop == 1]
    assert len(loop1) == 8
    # Queues, registries and workers as RQ holds them at this moment.
    assert value(s, "moneta_review_jobs", queue="reviewer", state="queued") == 5
    assert value(s, "moneta_review_jobs", queue="reviewer", state="deferred") == 1  # adversarial
    assert value(s, "moneta_review_jobs", queue="reviewer", state="finished") == 8
    assert value(s, "moneta_review_jobs", queue="synth", state="deferred") == 1
    assert value(s, "moneta_review_queue_depth", queue="synth") == 0
    assert value(s, "moneta_review_workers", queue="reviewer") == 2
    assert value(s, "moneta_review_workers", queue="synth") == 1
    assert value(s, "moneta_review_runs", status="running") == 1
    # What loop 1 did: 8 calls, their tokens and cost, the findings it kept.
    run = {"run": "ops1", "model": model}
    assert value(s, "moneta_review_model_calls_total", **run, status="ok") == 8
    assert value(s, "moneta_review_model_call_duration_seconds_count", model=model) == 8
    used = usage_of(loop1)
    for k in KINDS:
        assert value(s, "moneta_review_tokens_total", **run, kind=k) == used[k], k
    assert value(s, "moneta_review_cost_usd_total", **run) == pytest.approx(
        usage_cost(used, price, "1h")["total"]
    )
    loops = read_jsonl(out / "loops.jsonl")
    assert [r["loop"] for r in loops] == [1]
    for sev in SEVERITIES:
        expected = loops[0]["counts"]["severity"][sev]
        assert value(s, "moneta_review_findings", run="ops1", severity=sev) == expected

    stub.release()
    conn = own_redis.client()
    wait_until(
        lambda: RunState(conn, "ops1").meta().status == "completed",
        timeout=120,
        what="the run to complete",
    )

    def settled() -> Samples | None:
        # The last synth job marks the run completed just before RQ files it as finished.
        s = scrape(exporter)
        return s if value(s, "moneta_review_jobs", queue="synth", state="finished") == 5 else None

    s = wait_until(settled, timeout=30, what="the last synth job to be filed as finished")
    ok = stub.recorded(status=200)
    assert len(ok) == 40
    assert value(s, "moneta_review_model_calls_total", **run, status="ok") == 40
    assert value(s, "moneta_review_model_calls_total", **run, status="error") == 1  # the 529
    assert value(s, "moneta_review_model_call_retries_total", run="ops1") == 1
    assert value(s, "moneta_review_model_call_duration_seconds_count", model=model) == 41
    inf = value(s, "moneta_review_model_call_duration_seconds_bucket", model=model, le="+Inf")
    assert inf == 41
    used = stub.usage_totals()
    for k in KINDS:
        assert value(s, "moneta_review_tokens_total", **run, kind=k) == used[k], k
    cost = value(s, "moneta_review_cost_usd_total", **run)
    assert cost == pytest.approx(usage_cost(used, price, "1h")["total"])
    loops = read_jsonl(out / "loops.jsonl")
    assert sorted(r["loop"] for r in loops) == [1, 2, 3, 4, 5]
    for sev in SEVERITIES:
        expected = sum(r["counts"]["severity"][sev] for r in loops)
        assert value(s, "moneta_review_findings", run="ops1", severity=sev) == expected
    assert value(s, "moneta_review_queue_depth", queue="reviewer") == 0
    assert value(s, "moneta_review_jobs", queue="reviewer", state="finished") == 40
    assert value(s, "moneta_review_jobs", queue="synth", state="finished") == 5
    assert value(s, "moneta_review_jobs", queue="reviewer", state="failed") == 0
    assert value(s, "moneta_review_runs", status="completed") == 1
    # The cost in synthesis.md is the cost the exporter reports.
    assert f"Estimated cost: **${cost:.4f}**" in (out / "synthesis.md").read_text()
    conn.close()


def test_abandoned_job_is_counted_once_it_is_requeued(
    stub: MessagesStub,
    env: dict[str, str],
    repo: Path,
    config_file: Path,
    own_redis: RedisServer,
    workers: Workers,
    exporter: int,
    tmp_path: Path,
) -> None:
    # The second role's call (after the first has warmed the prefix): its worker dies.
    stub.hold(role="substrate", loop=1)
    workers.start_many(own_redis.url, reviewers=1, synth=1)
    out = tmp_path / "out"
    args = run_args(repo, config_file, out)
    done = run_cli([*args, "--redis-url", own_redis.url, "--run-id", "ops2", "--no-wait"], env)
    assert done.returncode == 0, done.stderr
    wait_until(lambda: stub.waiting() >= 1, timeout=30, what="the substrate call to be held")
    workers.sigkill("reviewer-0")
    stub.release(drop=True)
    workers.start("reviewer-1", "reviewer")  # its maintenance pass finds the abandoned job
    conn = own_redis.client()
    wait_until(
        lambda: RunState(conn, "ops2").meta().status == "completed",
        timeout=120,
        what="the run to complete",
    )
    s = scrape(exporter)
    assert value(s, "moneta_review_abandoned_jobs_total", queue="reviewer") == 1
    assert RunState(conn, "ops2").attempts()["L1:substrate"] == 2
    assert value(s, "moneta_review_jobs", queue="reviewer", state="failed") == 0
    conn.close()


def test_memory_store_serves_the_same_families_as_redis() -> None:
    """The embedded run's in-process store: one call per bucket edge lands where it should."""
    store = MemoryStore()
    rec = Recorder(store, "embedded")
    for seconds in (0.05, 0.3, 700.0):
        rec.call("r", "m", seconds, {"input": 3, "output": 2}, 0.5, job=(1, "usd"))
    rec.call("r", "m", 0.01, None, 0.0)
    rec.loop_findings("r", 1, {"High": 2, "Low": 1})
    rec.loop_findings("r", 1, {"High": 2, "Low": 1})  # a re-run loop sets, not adds
    from prometheus_client import generate_latest

    s = parse(generate_latest(registry_for(store, "embedded", rq=False)).decode())
    assert value(s, "moneta_review_model_calls_total", run="r", model="m", status="ok") == 3
    assert value(s, "moneta_review_model_calls_total", run="r", model="m", status="error") == 1
    bucket = "moneta_review_model_call_duration_seconds_bucket"
    assert value(s, bucket, model="m", le="0.05") == 2  # 0.01 and 0.05 (le is inclusive)
    assert value(s, bucket, model="m", le="0.5") == 3
    assert value(s, bucket, model="m", le=repr(LATENCY_BUCKETS[-1])) == 3
    assert value(s, bucket, model="m", le="+Inf") == 4
    assert value(s, "moneta_review_tokens_total", run="r", model="m", kind="input") == 9
    assert value(s, "moneta_review_cost_usd_total", run="r", model="m") == pytest.approx(1.5)
    assert value(s, "moneta_review_findings", run="r", severity="High") == 2
    assert json.dumps(sorted({k[0] for k in s}))  # every sample has a name


def test_embedded_run_serves_its_own_metrics_while_it_runs(
    stub: MessagesStub, env: dict[str, str], repo: Path, config_file: Path, tmp_path: Path
) -> None:
    config = load_config(config_file)
    price = config_price(config)
    assert price is not None
    stub.hold(loop=2)
    port = free_port()
    out = tmp_path / "out"
    args = run_args(repo, config_file, out)
    proc = subprocess.Popen(
        [*CLI, *args, "--max-loops", "2", "--metrics-port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:

        def paused() -> Samples | None:
            try:
                s = scrape(port)
            except OSError:
                return None
            done = value(
                s, "moneta_review_model_calls_total", run="out", model=config.model, status="ok"
            )
            return s if done == 8 and stub.waiting() >= 1 else None

        s = wait_until(paused, timeout=60, what="loop 1 done, loop 2 held")
        loop1 = [r for r in stub.recorded(status=200) if r.loop == 1]
        used = usage_of(loop1)
        run = {"run": "out", "model": config.model}
        for k in KINDS:
            assert value(s, "moneta_review_tokens_total", **run, kind=k) == used[k], k
        assert value(s, "moneta_review_cost_usd_total", **run) == pytest.approx(
            usage_cost(used, price, "1h")["total"]
        )
        assert value(s, "moneta_review_model_call_duration_seconds_count", model=config.model) == 8
        loops = read_jsonl(out / "loops.jsonl")
        for sev in SEVERITIES:
            expected = loops[0]["counts"]["severity"][sev]
            assert value(s, "moneta_review_findings", run="out", severity=sev) == expected
        # No queues in an embedded run: only the run's own families are served.
        assert not [k for k in s if k[0].startswith("moneta_review_queue")]
    finally:
        stub.release()
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
