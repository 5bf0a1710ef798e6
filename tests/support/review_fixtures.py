"""Pytest fixtures for tests that drive review runs through real processes.

A conftest imports the ones it needs (`from tests.support.review_fixtures import ...`),
so every suite gets the same stub model, fixture repository, `redis-server` of its
own and RQ workers, set up and torn down the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.review.engine_support import make_repo, scripted_answer, write_config
from tests.support.messages_stub import MessagesStub
from tests.support.redis_server import RedisServer, redis_server
from tests.support.review_processes import Workers, review_env, running_workers


@pytest.fixture
def stub() -> Iterator[MessagesStub]:
    with MessagesStub(answer=scripted_answer) as s:
        yield s


@pytest.fixture
def env(stub: MessagesStub) -> dict[str, str]:
    """Environment of every process a test starts: the stub as the Anthropic API."""
    return review_env(stub.url)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_config(tmp_path / "fast.toml")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    with running_workers(env, tmp_path / "worker-logs") as w:
        yield w
