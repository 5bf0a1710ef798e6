"""Distributed runs on Redis + RQ against the embedded run, through the real CLI."""

from __future__ import annotations

import json
import socket
import zlib
from pathlib import Path

import redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from orchestrator.blobs import get_blob
from orchestrator.distributed import reviewer_queue, run_status
from orchestrator.runstate import RunState
from tests.support.messages_stub import MessagesStub
from tests.support.redis_server import wait_until
from tests.support.review_processes import (
    Workers,
    embedded_run,
    enqueue_run,
    read_tree,
    run_args,
    run_cli,
    wait_run_end,
)


def test_distributed_output_files_are_byte_identical_to_embedded(
    stub: MessagesStub,
    env: dict[str, str],
    repo: Path,
    config_file: Path,
    shared_redis: str,
    workers: Workers,
    tmp_path: Path,
) -> None:
    expected = embedded_run(repo, config_file, tmp_path / "embedded", env)
    assert len(stub.recorded()) == 40
    stub.clear_cache()  # the distributed run starts with a cold prompt cache, as this one did
    workers.start_many(shared_redis, reviewers=3, synth=1)
    out = tmp_path / "distributed"
    done = run_cli(
        run_args(repo, config_file, out, "--redis-url", shared_redis, "--run-id", "same-1"),
        env,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr + workers.logs()
    got = read_tree(out)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name] == expected[name], name
    assert len(stub.recorded()) == 80


def test_loop_jobs_graph_ids_payloads_and_blobs(
    repo: Path, config_file: Path, shared_redis: str, tmp_path: Path
) -> None:
    meta = enqueue_run(shared_redis, repo, config_file, tmp_path / "out", "graph-1")
    conn = redis.Redis.from_url(shared_redis)
    roles = [
        "architect",
        "substrate",
        "persistence",
        "usd",
        "consolidation",
        "test",
        "documentarian",
    ]
    role_ids = [f"graph-1_L1_{r}" for r in roles]

    # The 7 role jobs wait on the reviewer queue, in role order, with deterministic ids.
    assert [j.decode() for j in conn.lrange("rq:queue:reviewer", 0, -1)] == role_ids
    jobs = Job.fetch_many(
        [*role_ids, "graph-1_L1_adversarial", "graph-1_L1_synth"],
        connection=conn,
        serializer=JSONSerializer,
    )
    assert all(j is not None for j in jobs)
    by_id = {j.id: j for j in jobs if j is not None}
    for r, job_id in zip(roles, role_ids, strict=True):
        job = by_id[job_id]
        assert job.description == f"graph-1:L1:{r}"
        assert job.get_status() == JobStatus.QUEUED
        assert job.func_name == "orchestrator.distributed.review_job"
        assert job.args == ["graph-1", 1, r, "moneta"]
        assert job.retries_left == 2

    # The adversarial job waits for all 7 and runs even if some fail.
    adv = by_id["graph-1_L1_adversarial"]
    assert adv.get_status() == JobStatus.DEFERRED
    assert adv.origin == "reviewer"
    assert sorted(adv._dependency_ids) == sorted(role_ids)
    assert adv.allow_dependency_failures is True
    # The synth job, on its own queue, waits for the adversarial job.
    synth = by_id["graph-1_L1_synth"]
    assert synth.get_status() == JobStatus.DEFERRED
    assert synth.origin == "synth"
    assert synth._dependency_ids == ["graph-1_L1_adversarial"]
    assert synth.allow_dependency_failures is True
    assert synth.args == ["graph-1", 1, "moneta"]
    # No later loop is enqueued before loop 1 closes.
    assert not conn.exists("rq:job:graph-1_L2_architect")

    # Payloads are small JSON (not pickle); the snapshot travels once, as a blob.
    snapshot = get_blob(conn, "moneta", meta.snapshot_blob)
    assert "<repository_snapshot" in snapshot
    for job_id in [*role_ids, adv.id, synth.id]:
        data = zlib.decompress(conn.hget(f"rq:job:{job_id}", "data"))
        decoded = json.loads(data)
        assert decoded[0].startswith("orchestrator.distributed.")
        assert len(data) < 200
    blob_keys = sorted(k.decode() for k in conn.keys("moneta:blob:*"))
    assert blob_keys == sorted(
        f"moneta:blob:{h}"
        for h in (meta.config_blob, meta.constitution_blob, meta.snapshot_blob, meta.paths_blob)
    )
    # A second run over the same inputs stores no new blob.
    enqueue_run(shared_redis, repo, config_file, tmp_path / "out2", "graph-2")
    assert sorted(k.decode() for k in conn.keys("moneta:blob:*")) == blob_keys

    # Status lists every (loop, role) of the run.
    status = run_status(conn, "graph-1")
    rows = {(j["loop"], j["role"]): j for j in status["jobs"]}
    assert len(rows) == 5 * 9
    assert {rows[(1, r)]["state"] for r in roles} == {"queued"}
    assert rows[(1, "adversarial")]["state"] == "deferred"
    assert rows[(1, "synth")]["state"] == "deferred"
    assert {rows[(n, r)]["state"] for n in range(2, 6) for r in [*roles, "synth"]} == {"pending"}
    assert rows[(1, "usd")]["job_id"] == "graph-1:L1:usd"
    conn.close()


def test_status_after_run_and_reexecuted_job_replaces_its_findings(
    stub: MessagesStub,
    env: dict[str, str],
    repo: Path,
    config_file: Path,
    shared_redis: str,
    workers: Workers,
    tmp_path: Path,
) -> None:
    expected = embedded_run(repo, config_file, tmp_path / "embedded", env)
    # Hold loop 1's adversarial call so the loop cannot close while a role job re-runs.
    stub.hold(role="adversarial", loop=1)
    enqueue_run(shared_redis, repo, config_file, tmp_path / "out", "again-1")
    workers.start_many(shared_redis, reviewers=2, synth=1)
    wait_until(lambda: stub.waiting() == 1, timeout=60, what="adversarial L1 held at the stub")
    conn = redis.Redis.from_url(shared_redis)
    state = RunState(conn, "again-1")
    first = state.result(1, "architect")
    assert first is not None
    # Deliver the finished architect job again, under its own id.
    reviewer_queue(conn).enqueue_call(
        "orchestrator.distributed.review_job",
        args=["again-1", 1, "architect", "moneta"],
        job_id="again-1_L1_architect",
    )
    wait_until(
        lambda: (
            state.attempts().get("L1:architect") == 2
            and state.states()["L1:architect"] == "finished"
        ),
        timeout=60,
        what="the re-executed architect job",
    )
    assert len([k for k in state.results() if k.startswith("L1:")]) == 7
    assert state.result(1, "architect")["findings_raw"] == first["findings_raw"]
    stub.release()
    meta = wait_run_end(shared_redis, "again-1", timeout=90)
    assert meta.status == "completed", meta.error
    got = read_tree(tmp_path / "out")
    for name in ("findings.jsonl", "findings.invalid.jsonl", "findings.dropped.jsonl"):
        assert got[name] == expected[name], name

    # `status` shows every (loop, role) finished, with attempts and findings.
    done = run_cli(["status", "again-1", "--redis-url", shared_redis, "--json"], env)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["status"] == "completed"
    assert status["closed_loops"] == [1, 2, 3, 4, 5]
    assert len(status["jobs"]) == 45
    assert {j["state"] for j in status["jobs"]} == {"finished"}
    attempts = {(j["loop"], j["role"]): j["attempts"] for j in status["jobs"]}
    assert attempts.pop((1, "architect")) == 2
    # RQ enqueues a job's dependents again when it finishes again, so the adversarial
    # job may have run twice too: its slot was replaced, as the findings above show.
    assert attempts.pop((1, "adversarial")) in (1, 2)
    assert {k: a for k, a in attempts.items() if k[1] != "synth" and a != 1} == {}
    text = run_cli(["status", "again-1", "--redis-url", shared_redis], env)
    assert "again-1:L3:usd" in text.stdout and "run again-1: completed" in text.stdout
    conn.close()


def test_poison_job_fails_with_its_reason_in_the_loop_markdown(
    stub: MessagesStub,
    env: dict[str, str],
    repo: Path,
    config_file: Path,
    shared_redis: str,
    workers: Workers,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    enqueue_run(shared_redis, repo, config_file, out, "poison-1")
    conn = redis.Redis.from_url(shared_redis)
    # Corrupt one queued job's payload so it raises on every attempt.
    job = Job.fetch("poison-1_L1_persistence", connection=conn, serializer=JSONSerializer)
    assert job.args == ["poison-1", 1, "persistence", "moneta"]
    job.args = ["poison-1", "1", "persistence", "moneta"]
    job.save()
    workers.start_many(shared_redis, reviewers=2, synth=1)
    meta = wait_run_end(shared_redis, "poison-1", timeout=120)
    assert meta.status == "completed", meta.error + workers.logs()

    job = Job.fetch("poison-1_L1_persistence", connection=conn, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FAILED
    reason = "TypeError: loop: must be an int, got str '1'"
    md = (out / "loop-1-spec-conformance.md").read_text()
    assert "**persistence**: FAILED" in md
    assert reason in md
    assert "poison-1:L1:persistence failed" in md
    # Every other reviewer of loop 1, and every reviewer of later loops, delivered.
    kept = [json.loads(line) for line in (out / "findings.jsonl").read_text().splitlines()]
    roles_l1 = {f["role"] for f in kept if f["loop"] == 1}
    assert "persistence" not in roles_l1
    assert {"architect", "usd", "consolidation", "adversarial"} <= roles_l1
    assert {f["role"] for f in kept if f["loop"] == 2} >= {"persistence", "adversarial"}
    loops = [json.loads(line) for line in (out / "loops.jsonl").read_text().splitlines()]
    failed = {
        (lp["loop"], r["role"]) for lp in loops for r in lp["reviewers"] if r["status"] == "failed"
    }
    assert failed == {(1, "persistence")}
    status = run_status(conn, "poison-1")
    row = next(j for j in status["jobs"] if (j["loop"], j["role"]) == (1, "persistence"))
    assert row["state"] == "failed" and reason in row["detail"]
    assert row["attempts"] == 0  # it never got past its argument check
    conn.close()


def test_unreachable_redis_is_a_clear_error_not_a_hang(
    env: dict[str, str], repo: Path, stub: MessagesStub
) -> None:
    with socket.socket() as held, socket.socket() as silent:
        held.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        refused = held.getsockname()[1]
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the backlog, nothing ever answers
        mute = silent.getsockname()[1]
        reach = "cannot reach Redis at"
        other = "does not answer as a Redis server"
        cases = {
            f"redis://127.0.0.1:{refused}/0": (reach,),
            f"redis://127.0.0.1:{mute}/0": (reach,),
            # An HTTP server answers 400 or just closes the connection.
            stub.url.replace("http://", "redis://") + "/0": (reach, other),
        }
        for url, messages in cases.items():
            for args in (
                ["run", "--repo", str(repo), "--redis-url", url],
                ["worker", "--queues", "reviewer", "--redis-url", url],
                ["status", "some-run", "--redis-url", url],
            ):
                # The subprocess timeout is the bound: a hang fails the test.
                done = run_cli(args, env, timeout=5)
                assert done.returncode == 1, (args, done.stderr)
                assert any(m in done.stderr for m in messages), (args, done.stderr)
                assert "REDIS_URL" in done.stderr
                assert "Traceback" not in done.stderr
