"""Distributed runs on Redis + RQ against the embedded run, through the real CLI."""

from __future__ import annotations

from pathlib import Path

from tests.distributed.support import Workers, read_tree, run_cli
from tests.support.messages_stub import MessagesStub


def embedded_run(repo: Path, config_file: Path, out: Path, env: dict[str, str]) -> dict[str, bytes]:
    done = run_cli(
        ["run", "--repo", str(repo), "--config", str(config_file), "--out", str(out)], env
    )
    assert done.returncode == 0, done.stderr
    return read_tree(out)


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
        [
            "run",
            "--repo",
            str(repo),
            "--config",
            str(config_file),
            "--out",
            str(out),
            "--redis-url",
            shared_redis,
            "--run-id",
            "same-1",
        ],
        env,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr + workers.logs()
    got = read_tree(out)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name] == expected[name], name
    assert len(stub.recorded()) == 80
