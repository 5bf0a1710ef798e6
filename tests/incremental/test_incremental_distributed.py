"""`--since` on a distributed run (Redis + RQ workers): the scope travels in the run's
config, so queued synthesis jobs judge exactly as the embedded run does."""

from __future__ import annotations

import json
from pathlib import Path

from synth.outputs import read_jsonl
from tests.incremental.gitrepo import commit_all, init_repo
from tests.incremental.test_incremental_run import answer_v2, edit_v2
from tests.review.engine_support import make_repo, scripted_answer, write_config
from tests.support.messages_stub import MessagesStub
from tests.support.redis_server import redis_server
from tests.support.review_processes import review_env, run_cli, running_workers

COMPARED = ("findings.jsonl", "findings.dropped.jsonl", "findings.invalid.jsonl")


def test_distributed_since_run_equals_the_embedded_one(tmp_path: Path) -> None:
    repo = make_repo(init_repo(tmp_path / "repo"))
    commit_all(repo, "v1", tag="v1")
    config = write_config(tmp_path / "fast.toml")
    base = ["run", "--repo", str(repo), "--config", str(config), "--max-loops", "1"]
    first, embedded, distributed = tmp_path / "first", tmp_path / "embedded", tmp_path / "dist"
    with MessagesStub(answer=scripted_answer) as stub:
        done = run_cli([*base, "--out", str(first)], review_env(stub.url))
        assert done.returncode == 0, done.stderr
    edit_v2(repo)
    since = ["--since", "v1", "--previous", str(first)]
    sarif = ["--run-id", "since-1", "--format", "sarif"]
    with MessagesStub(answer=answer_v2) as stub:
        env = review_env(stub.url)
        done = run_cli([*base, *since, "--out", str(embedded)], env)
        assert done.returncode == 0, done.stderr
        with (
            redis_server(tmp_path / "redis") as server,
            running_workers(env, tmp_path / "worker-logs") as workers,
        ):
            workers.start_many(server.url, reviewers=2, synth=1)
            done = run_cli(
                [*base, *since, "--out", str(distributed), "--redis-url", server.url, *sarif],
                env,
                timeout=240,
            )
            assert done.returncode == 0, done.stderr + workers.logs()
        assert len(stub.recorded(status=200)) == 16
    for name in COMPARED:
        assert (distributed / name).read_bytes() == (embedded / name).read_bytes(), name
    kept = read_jsonl(distributed / "findings.jsonl")
    assert sorted((r["id"], r["novelty"]) for r in kept) == [
        ("adversarial-L1-a", "seen"),
        ("architect-L1-a", "seen"),
        ("architect-L1-b", "new"),
        ("architect-L1-fresh", "new"),
    ]
    assert "since-1" in done.stderr  # the run id, kept off stdout
    log = json.loads(done.stdout)
    assert log == json.loads((distributed / "synthesis.sarif").read_text(encoding="utf-8"))
