"""Fixtures: the stub model, a fixture repository, a redis-server of the test's own, workers.

Distributed tests here run their own `redis-server` on a free port (never the shared
machine Redis), so they cannot disturb, or be disturbed by, other suites.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.review.engine_support import scripted_answer
from tests.support.messages_stub import MessagesStub
from tests.support.review_fixtures import (  # noqa: F401 (fixtures used by the tests here)
    config_file,
    env,
    own_redis,
    repo,
    workers,
)


@pytest.fixture
def stub() -> Iterator[MessagesStub]:
    """The shared stub, and no answer that failed to build in any test here."""
    with MessagesStub(answer=scripted_answer) as s:
        yield s
        assert s.answer_errors == []
