"""Must hold 5: the protected quota, bounded, and atomic under a 32-thread race."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from moneta import Moneta, MonetaConfig, ProtectedQuotaExceededError
from tests.substrate.conftest import FakeClock, unit_vector


def test_default_quota_is_100_and_the_101st_protected_deposit_raises(clock: FakeClock) -> None:
    rng = np.random.default_rng(30)
    with Moneta(MonetaConfig.ephemeral(clock=clock, auto_sleep=False)) as m:
        assert m.config.quota_override == 100
        for i in range(100):
            m.deposit(f"pin {i}", unit_vector(rng), protected_floor=0.5)
        with pytest.raises(ProtectedQuotaExceededError, match="quota_override=100"):
            m.deposit("one too many", unit_vector(rng), protected_floor=0.5)
        m.deposit("unprotected still fine", unit_vector(rng))
        stats = m.stats()
        assert (stats.protected, stats.hot) == (100, 101)
        assert stats.index_records == 0  # the in-memory index keeps cold memories only
        # Unpinning frees a slot.
        pinned = next(h for h in m.query(unit_vector(rng), limit=101) if h.protected_floor > 0)
        assert m.unpin(pinned.entity_id)
        m.deposit("fits again", unit_vector(rng), protected_floor=1.0)
        assert m.stats().protected == 100


@pytest.mark.parametrize("quota", [1, 2, 500, 1000])
def test_quota_override_inside_bounds(quota: int) -> None:
    rng = np.random.default_rng(31)
    with Moneta(MonetaConfig.ephemeral(quota_override=quota, auto_sleep=False)) as m:
        for i in range(quota):
            m.deposit(f"pin {i}", unit_vector(rng), protected_floor=0.1)
        with pytest.raises(ProtectedQuotaExceededError):
            m.deposit("over", unit_vector(rng), protected_floor=0.1)
        assert m.stats().protected == quota


@pytest.mark.parametrize("quota", [0, -1, 1001, 10_000])
def test_quota_override_outside_bounds_raises_value_error(quota: int) -> None:
    with pytest.raises(ValueError, match="quota_override"):
        MonetaConfig.ephemeral(quota_override=quota)


@pytest.mark.parametrize("quota", [1.5, "100", True])
def test_quota_override_of_wrong_type_raises_type_error(quota: object) -> None:
    with pytest.raises(TypeError, match="quota_override"):
        MonetaConfig.ephemeral(quota_override=quota)


def _race(m: Moneta, threads: int) -> tuple[int, int, list[BaseException]]:
    barrier = threading.Barrier(threads)
    lock = threading.Lock()
    outcome = {"ok": 0, "refused": 0}
    other: list[BaseException] = []
    vectors = [unit_vector(np.random.default_rng(100 + i)) for i in range(threads)]

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            m.deposit(f"racer {i}", vectors[i], protected_floor=0.3)
            key = "ok"
        except ProtectedQuotaExceededError:
            key = "refused"
        except BaseException as exc:  # reported to the test thread
            other.append(exc)
            return
        with lock:
            outcome[key] += 1

    workers = [threading.Thread(target=attempt, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return outcome["ok"], outcome["refused"], other


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "file"])
def test_32_threads_racing_at_quota_minus_one_exactly_one_wins(
    durable: bool, tmp_path: Path
) -> None:
    for round_number, quota in enumerate((100, 7, 1)):
        rng = np.random.default_rng(round_number)
        uri = str(tmp_path / f"store{round_number}") if durable else None
        config = (
            MonetaConfig(storage_uri=uri, cold_tier="jsonl", auto_sleep=False,
                         quota_override=quota)
            if uri
            else MonetaConfig.ephemeral(auto_sleep=False, quota_override=quota)
        )  # fmt: skip
        with Moneta(config) as m:
            for i in range(quota - 1):
                m.deposit(f"pin {i}", unit_vector(rng), protected_floor=0.3)
            ok, refused, other = _race(m, 32)
            assert other == []
            assert (ok, refused) == (1, 31)
            stats = m.stats()
            assert stats.protected == quota
            assert stats.hot == quota
            # LanceDB (file store) holds every memory; the in-memory index, cold ones only.
            assert stats.index_records == (quota if durable else 0)
        if durable:  # the refused calls left nothing in the log either
            with Moneta(config) as again:
                assert again.stats().protected == quota
                assert again.stats().hot == quota
