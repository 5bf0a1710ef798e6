"""`--budget-usd` on a distributed run: the budget in Redis, shared by every worker.

Real `redis-server` of the test's own, real `moneta-review worker` processes and the
real CLI against the Messages stub. One worker on both queues runs the jobs in a
fixed order (loop by loop, roles in config order, then the adversarial job), so the
calls that fit a budget are a known prefix of that order.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from orchestrator.checkpoint import load_checkpoint
from orchestrator.config import ReviewConfig, load_config
from orchestrator.cost import config_price, usage_cost
from orchestrator.distributed import resume_run, start_run
from orchestrator.run_budget import NANO, BudgetStop, RunBudget
from orchestrator.runstate import RunMeta, RunState
from tests.distributed.test_faults import assert_same_files, clean_run
from tests.support.messages_stub import MessagesStub, RecordedRequest
from tests.support.redis_server import RedisServer
from tests.support.review_processes import (
    Workers,
    enqueue_run,
    read_tree,
    run_args,
    run_cli,
    wait_run_end,
)
from workers.result import ReviewerResult


def call_order(config: ReviewConfig) -> list[tuple[int, str]]:
    """(loop, role) of every call of a run, in the order one worker makes them."""
    return [(t.loop, r.prefix) for t in config.themes for r in config.roles]


def calls_of(stub: MessagesStub, since: int) -> list[RecordedRequest]:
    return [r for r in stub.recorded()[since:] if r.path.split("?")[0] == "/v1/messages"]


def cost_of(calls: list[RecordedRequest], config: ReviewConfig) -> float:
    price = config_price(config)
    assert price is not None
    return sum(usage_cost(r.usage or {}, price, config.cache_ttl)["total"] for r in calls)


def created_at(conn: redis.Redis, ids: list[str]) -> dict[str, object]:
    """When each RQ job was created: a recreated job has a new time."""
    jobs = Job.fetch_many(ids, connection=conn, serializer=JSONSerializer)
    return {j.id: j.created_at for j in jobs if j is not None}


def status_json(url: str, run_id: str, env: dict[str, str]) -> dict:
    done = run_cli(["status", run_id, "--redis-url", url, "--json"], env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_budget_stops_before_the_call_that_does_not_fit_and_resume_completes(
    stub: MessagesStub,
    env: dict[str, str],
    repo: Path,
    config_file: Path,
    own_redis: RedisServer,
    workers: Workers,
    tmp_path: Path,
) -> None:
    config = load_config(config_file)
    order = call_order(config)
    expected = clean_run(stub, repo, config_file, tmp_path / "clean", env)
    ref = calls_of(stub, 0)
    assert len(ref) == 40
    start = len(stub.recorded())
    # Each call is admitted at up to its full output budget (8192 tokens at 25 USD/MTok,
    # ~0.2 USD) plus its prompt; answered calls cost far less. This budget leaves room
    # for loop 1 and part of loop 2, then the next estimate no longer fits.
    ref_costs = [cost_of([r], config) for r in ref]
    budget = 0.25 + sum(ref_costs[:11])
    workers.redis_url = own_redis.url
    workers.start("solo", "reviewer,synth")
    out = tmp_path / "out"
    args = run_args(repo, config_file, out, "--redis-url", own_redis.url, "--run-id", "bud-1")
    done = run_cli([*args, "--budget-usd", repr(budget)], env, timeout=180)
    assert done.returncode == 1, done.stderr + workers.logs()
    assert "run bud-1 stopped: budget $" in done.stderr

    first = calls_of(stub, start)
    n = len(first)
    assert 8 < n < 40, n  # loop 1 closed, the run stopped in a later loop
    # The calls made are exactly the first n of the run, each once.
    assert [(r.loop, r.role) for r in first] == order[:n]
    status = status_json(own_redis.url, "bud-1", env)
    assert status["status"] == "stopped"
    b = status["budget"]
    assert b["budget_usd"] == budget
    assert b["reserved_usd"] == 0
    assert b["spent_usd"] == pytest.approx(cost_of(first, config), abs=1e-6)
    assert b["spent_usd"] <= budget
    # Refused: call n+1, whose estimate did not fit on top of what was spent.
    refused = b["refused"]
    loop, role = order[n]
    assert refused["slot"] == f"L{loop}:{role}"
    assert refused["spent"] + refused["held"] + refused["needed"] > refused["budget"]
    assert refused["budget"] == round(budget * NANO)
    message = status["error"]
    assert f"budget ${budget:.4f} reached" in message
    assert f"(loop {loop}, {role})" in message
    assert f"${b['spent_usd']:.4f} spent" in message
    assert f"up to ${refused['needed'] / NANO:.4f}" in message
    assert "--resume bud-1 --budget-usd" in message
    # Nothing of the open loop is closed; the loops before it are checkpointed.
    assert status["closed_loops"] == list(range(1, loop))
    cp = load_checkpoint(out)
    assert cp is not None and cp.completed_loops == list(range(1, loop))
    assert not list(out.glob(f"loop-{loop}*"))
    text = run_cli(["status", "bud-1", "--redis-url", own_redis.url], env)
    assert "run bud-1: stopped — budget $" in text.stdout
    assert f"budget: ${b['spent_usd']:.4f} spent, $0.0000 in flight, of ${budget:.4f}" in (
        text.stdout
    )

    # Resuming under the same budget makes no call and stops with the same message.
    again = run_cli(["run", "--resume", "bud-1", "--redis-url", own_redis.url], env, timeout=120)
    assert again.returncode == 1, again.stderr + workers.logs()
    assert len(calls_of(stub, start)) == n
    assert status_json(own_redis.url, "bud-1", env)["error"] == message

    # A larger budget completes the run: every call once, the files of a run without one.
    resumed = run_cli(
        ["run", "--resume", "bud-1", "--redis-url", own_redis.url, "--budget-usd", "100"],
        env,
        timeout=240,
    )
    assert resumed.returncode == 0, resumed.stderr + workers.logs()
    calls = calls_of(stub, start)
    assert len(calls) == len(ref) == 40
    assert sorted((r.loop, r.role) for r in calls) == sorted(order)
    assert_same_files(read_tree(out), expected)
    final = status_json(own_redis.url, "bud-1", env)
    assert final["status"] == "completed"
    assert final["budget"]["budget_usd"] == 100.0
    assert final["budget"]["spent_usd"] == pytest.approx(cost_of(calls, config), abs=1e-6)


def test_budget_with_several_workers_never_overspends_and_resume_pays_nothing_twice(
    stub: MessagesStub,
    env: dict[str, str],
    repo: Path,
    config_file: Path,
    own_redis: RedisServer,
    workers: Workers,
    tmp_path: Path,
) -> None:
    config = load_config(config_file)
    expected = clean_run(stub, repo, config_file, tmp_path / "clean", env)
    ref_costs = [cost_of([r], config) for r in calls_of(stub, 0)]
    start = len(stub.recorded())
    stub.latency = 0.3  # calls overlap: the stop finds others in flight
    budget = 0.8 + sum(ref_costs[:12])
    workers.start_many(own_redis.url, reviewers=3, synth=1)
    out = tmp_path / "out"
    args = run_args(repo, config_file, out, "--redis-url", own_redis.url, "--run-id", "bud-3")
    done = run_cli([*args, "--budget-usd", repr(budget)], env, timeout=180)
    assert done.returncode == 1, done.stderr + workers.logs()
    assert "run bud-3 stopped: budget $" in done.stderr
    # Resume at once, while calls admitted before the stop may still be in flight.
    resumed = run_cli(
        ["run", "--resume", "bud-3", "--redis-url", own_redis.url, "--budget-usd", "100"],
        env,
        timeout=240,
    )
    assert resumed.returncode == 0, resumed.stderr + workers.logs()
    calls = calls_of(stub, start)
    pairs = [(r.loop, r.role) for r in calls]
    assert len(pairs) == 40 and sorted(pairs) == sorted(call_order(config))
    assert_same_files(read_tree(out), expected)
    b = status_json(own_redis.url, "bud-3", env)["budget"]
    refused = b["refused"]
    assert refused["spent"] + refused["held"] <= refused["budget"]  # never past it
    assert refused["spent"] + refused["held"] + refused["needed"] > refused["budget"]
    assert b["spent_usd"] == pytest.approx(cost_of(calls, config), abs=1e-6)


def test_a_budget_given_on_resume_applies_to_the_next_call(
    stub: MessagesStub,
    config_file: Path,
    repo: Path,
    own_redis: RedisServer,
    workers: Workers,
    tmp_path: Path,
) -> None:
    enqueue_run(own_redis.url, repo, config_file, tmp_path / "out", "late-1")  # no budget
    conn = own_redis.client()
    resume_run(conn, "late-1", budget_usd=0.0)
    assert RunState(conn, "late-1").meta().budget_usd == 0.0
    workers.start_many(own_redis.url, reviewers=1, synth=1)
    meta = wait_run_end(own_redis.url, "late-1", timeout=60)
    assert meta.status == "stopped"
    assert "budget $0.0000 reached: $0.0000 spent" in meta.error
    assert "(loop 1, architect)" in meta.error
    assert calls_of(stub, 0) == []
    assert RunState(conn, "late-1").results() == {}
    conn.close()


def test_resume_of_a_stopped_run_recreates_only_the_jobs_without_result_or_call_in_flight(
    repo: Path, config_file: Path, own_redis: RedisServer, tmp_path: Path
) -> None:
    config = load_config(config_file)
    conn = own_redis.client()
    start_run(
        conn,
        repo=repo,
        config=config,
        out_dir=tmp_path / "out",
        backend="anthropic",
        run_id="reo-1",
        budget_usd=1.0,
    )
    state = RunState(conn, "reo-1")
    roles = [r.prefix for r in config.roles] + ["synth"]
    ids = [f"reo-1_L1_{r}" for r in roles]
    before = created_at(conn, ids)
    # architect answered; substrate's call is in flight; the rest never ran.
    state.store_result(1, "architect", ReviewerResult("architect", 1, "ok", []).to_dict())
    RunBudget(conn, "reo-1", "moneta").reserve("L1:substrate", 0.3, 0.3, "loop 1, substrate")
    state.set_status("stopped", "budget $1.0000 reached")
    state.mark_warm(1, 7)

    report = resume_run(conn, "reo-1", budget_usd=2.0)
    meta = state.meta()
    assert (meta.status, meta.error, meta.budget_usd) == ("running", "", 2.0)
    after = created_at(conn, ids)
    kept = {i for i in ids if after[i] == before[i]}
    assert kept == {"reo-1_L1_architect", "reo-1_L1_substrate"}
    assert sorted(report.enqueued) == sorted(set(ids) - kept)
    queued = [j.decode() for j in conn.lrange("rq:queue:reviewer", 0, -1)]
    assert sorted(queued) == sorted(ids[:7])  # each role job once
    assert state.is_warm(1)  # the leader answered: its prompt is cached
    figures = RunBudget(conn, "reo-1", "moneta").figures(2.0)
    assert figures["reserved_usd"] == pytest.approx(0.3)  # the call in flight still holds
    conn.close()


def test_concurrent_reservations_never_exceed_the_budget(own_redis: RedisServer) -> None:
    conn = own_redis.client()
    meta = RunMeta(
        run_id="race-1",
        out_dir="/nonexistent",
        repo="/nonexistent",
        config_blob="-",
        constitution_blob="-",
        constitution_hash="-",
        constitution_path="-",
        snapshot_blob="-",
        paths_blob="-",
        backend="anthropic",
        loops=[1],
        budget_usd=1.0,
    )
    assert RunState(conn, "race-1").create(meta)
    admitted: list[tuple[int, int]] = []  # (reserved, settled) nano-USD per admitted call
    refusals: list[str] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        own = own_redis.client()
        budget = RunBudget(own, "race-1", "moneta")
        try:
            reserve_until_refused(i, budget)
        finally:
            own.close()

    def reserve_until_refused(i: int, budget: RunBudget) -> None:
        for k in range(200):
            usd = 0.003 + 0.0001 * ((i * 7 + k) % 17)
            slot = f"L{k}:w{'abcdefgh'[i]}"
            try:
                token = budget.reserve(slot, usd, usd, f"call {i}/{k}")
            except BudgetStop as exc:
                with lock:
                    refusals.append(str(exc))
                return
            # Half of the calls are still in flight at the end: their holds stay.
            if k % 2:
                budget.settle(slot, token, usd / 3, cache_used=True)
                with lock:
                    admitted.append((math.ceil(usd * NANO - 1e-6), round(usd / 3 * NANO)))
            else:
                with lock:
                    admitted.append((math.ceil(usd * NANO - 1e-6), 0))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    figures = RunBudget(conn, "race-1", "moneta").figures(1.0)
    in_flight = sum(r for r, s in admitted if s == 0)
    spent = sum(s for _, s in admitted)
    assert round(figures["reserved_usd"] * NANO) == in_flight
    assert round(figures["spent_usd"] * NANO) == spent
    assert spent + in_flight <= NANO  # never past the budget, however the calls interleaved
    # Every thread ended on a refusal: the budget, then the stopped run.
    assert len(refusals) == 8
    assert sum("budget $1.0000 reached" in m for m in refusals) == 1
    assert RunState(conn, "race-1").meta().status == "stopped"
    refused = figures["refused"]
    assert refused["spent"] + refused["held"] + refused["needed"] > NANO
    conn.close()


def test_bad_budgets_are_refused_naming_the_argument(
    env: dict[str, str],
    repo: Path,
    config_file: Path,
    own_redis: RedisServer,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    base = run_args(repo, config_file, out, "--redis-url", own_redis.url)
    for bad in ("-1", "nan", "inf"):
        done = run_cli([*base, "--budget-usd", bad], env)
        assert done.returncode == 2, (bad, done.stderr)
        assert "--budget-usd" in done.stderr, done.stderr
    done = run_cli([*base, "--model", "house-model", "--budget-usd", "5"], env)
    assert done.returncode == 1
    assert "budget_usd: no price for model 'house-model'" in done.stderr
    conn = own_redis.client()
    with pytest.raises(ValueError, match="budget_usd: must be >= 0"):
        start_run(
            conn,
            repo=repo,
            config=load_config(config_file),
            out_dir=out,
            backend="anthropic",
            budget_usd=float("nan"),
        )
    assert conn.keys("moneta:run:*") == []  # nothing recorded for a refused budget
    conn.close()
