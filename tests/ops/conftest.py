"""Fixtures: the stub model, a fixture repository, a redis-server of the test's own, workers.

Distributed tests here run their own `redis-server` on a free port (never the shared
machine Redis), so they cannot disturb, or be disturbed by, other suites.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.distributed.support import ROOT, RedisServer, Workers
from tests.review.engine_support import make_repo, scripted_answer, write_config
from tests.support.messages_stub import MessagesStub


@pytest.fixture
def stub() -> Iterator[MessagesStub]:
    with MessagesStub(answer=scripted_answer) as s:
        yield s
        assert s.answer_errors == []


@pytest.fixture
def env(stub: MessagesStub) -> dict[str, str]:
    """Environment of every process a test starts: the stub as the Anthropic API."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "REDIS_"))}
    e.update(
        ANTHROPIC_API_KEY="test-key",
        ANTHROPIC_BASE_URL=stub.url,
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    return e


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_config(tmp_path / "fast.toml")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    w = Workers(env, tmp_path / "worker-logs")
    try:
        yield w
    finally:
        w.stop_all()
