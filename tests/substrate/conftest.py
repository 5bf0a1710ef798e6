"""Shared helpers for the substrate tests: an injectable clock, vectors, polling."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from moneta import Moneta, MonetaConfig
from tests.support.redis_server import wait_until as poll_until

DIM = 16
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class FakeClock:
    """A settable clock in unix seconds; thread-safe so handles and tests can share it."""

    def __init__(self, start: float = START) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, value: float) -> None:
        with self._lock:
            self._now = value


def unit_vector(rng: np.random.Generator, dim: int = DIM) -> list[float]:
    v = rng.standard_normal(dim)
    return (v / np.linalg.norm(v)).tolist()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` at the deadline."""
    poll_until(predicate, timeout=timeout, interval=0.01, what=what)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def handle(clock: FakeClock) -> Iterator[Moneta]:
    """An in-memory handle on a fake clock with automatic sleep passes off."""
    with Moneta(MonetaConfig.ephemeral(clock=clock, auto_sleep=False)) as m:
        yield m
