"""Fixtures: a stub model, a fixture repository, Redis (shared DB or own server), workers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.support.review_fixtures import (  # noqa: F401 (fixtures used by the tests here)
    config_file,
    env,
    own_redis,
    repo,
    stub,
    workers,
)

SHARED_DB_URL = "redis://127.0.0.1:6379/11"
"""Logical DB 11 of the machine's Redis is reserved for these tests; emptied before and after."""


@pytest.fixture
def shared_redis() -> Iterator[str]:
    conn = redis.Redis.from_url(SHARED_DB_URL)
    conn.flushdb()
    try:
        yield SHARED_DB_URL
    finally:
        conn.flushdb()
        conn.close()
