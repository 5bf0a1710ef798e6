"""Fixtures for gists: the stub Messages API, a store with a movable clock, helpers.

Every test talks to the real `anthropic` SDK through tests/support/messages_stub.py,
authors real USD layers in a temporary store and reads them back from disk.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from moneta import Moneta, MonetaConfig, SleepPassReport
from moneta.gist import GistLedger
from tests.support.messages_stub import MessagesStub
from tests.support.redis_server import wait_until as poll_until
from workers.gist import GistSettings
from workers.gist_dispatch import EmbeddedGistDispatcher

# 2026-03-02 12:00:00 UTC
NOON_UTC = 1_772_452_800.0
HOUR = 3600.0
DAY_SECONDS = 86_400.0
DIM = 8
MEMORY_RE = re.compile(r'<memory id="([0-9a-f]{32})">\n(.*)\n</memory>', re.DOTALL)


def gist_for(detail: str) -> str:
    """What the stub answers for a detail: a deterministic, shorter text."""
    return f"GIST[{detail[:12]}]"


def stub_answer(role: str | None, loop: int | None, payload: dict[str, Any]) -> str:
    text = payload["messages"][-1]["content"]
    found = MEMORY_RE.search(text if isinstance(text, str) else text[0]["text"])
    assert found is not None, text
    return f"Here it is.\n<gist>{gist_for(found.group(2))}</gist>\n"


def detail_text(i: int) -> str:
    return (
        f"Memory {i:03d}: on 2026-03-02 Alice and Bob decided to ship release 4.{i} to "
        f"{1000 + i} users after the Tuesday review, because the error rate fell to 0.{i}%."
    )


def vector(i: int) -> list[float]:
    v = [0.01] * DIM
    v[i % DIM] = 1.0
    v[(i * 3 + 1) % DIM] += 0.5 + 0.01 * i
    return v


@dataclass
class Clock:
    now: float = NOON_UTC

    def __call__(self) -> float:
        return self.now


# Gist tests poll faster and give up sooner than the process-level tests.
wait_until = functools.partial(poll_until, timeout=30.0, interval=0.02)


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[MessagesStub]:
    with MessagesStub(answer=stub_answer) as s:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", s.url)
        yield s


FAST = GistSettings(
    max_attempts=2, retry_initial_delay=0.01, retry_max_delay=0.05, request_timeout=10.0
)


@pytest.fixture
def dispatcher(stub: MessagesStub) -> Iterator[EmbeddedGistDispatcher]:
    with EmbeddedGistDispatcher(FAST, workers=4) as d:
        yield d


class Store:
    """A file store with a movable clock and a gist sink; opened and reopened on demand."""

    def __init__(self, directory: Path, sink: object, **config: Any) -> None:
        self.directory = directory
        self.clock = Clock()
        self.sink = sink
        self.config = config
        self.handle: Moneta | None = None

    def open(self, **changes: Any) -> Moneta:
        settings = {
            "storage_uri": str(self.directory),
            "clock": self.clock,
            "auto_sleep": False,
            "half_life_seconds": HOUR,
            "gist_sink": self.sink,
            **self.config,
            **changes,
        }
        self.handle = Moneta(MonetaConfig(**settings))
        return self.handle

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def consolidate(self, n: int, start: int = 0) -> tuple[list[UUID], SleepPassReport]:
        """Deposit `n` memories, attend each 3 times, let them fade; the pass that
        consolidates them is returned with their ids."""
        m = self.handle
        assert m is not None
        ids = [m.deposit(detail_text(i), vector(i)) for i in range(start, start + n)]
        for _ in range(3):
            m.signal_attention(dict.fromkeys(ids, 0.0))
        m.run_sleep_pass()  # applies the attention; utility still 1.0
        self.clock.now += 2.5 * HOUR  # utility -> ~0.18 with 3 signals: staged
        report = m.run_sleep_pass()
        assert report.consolidated == n, report
        return ids, report

    @property
    def ledger(self) -> GistLedger:
        return GistLedger(self.directory)


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[Callable[..., Store]]:
    made: list[Store] = []

    def factory(sink: object, **config: Any) -> Store:
        store = Store(tmp_path / f"store{len(made)}", sink, **config)
        made.append(store)
        return store

    yield factory
    for store in made:
        store.close()
