"""Must hold 3: the attention log and its reducer."""

from __future__ import annotations

import math
import uuid

import numpy as np
import pytest

from moneta import Moneta, MonetaConfig
from moneta.attention_log import Signals, reduce_signals
from moneta.decay import decay_rate
from moneta.ecs import Columns
from tests.substrate.conftest import FakeClock, unit_vector


def _by_id(m: Moneta, vector: list[float]) -> dict:
    return {hit.entity_id: hit for hit in m.query(vector, limit=50)}


def test_weights_sum_signals_count_and_nothing_applies_before_the_pass(
    handle: Moneta, rng: np.random.Generator
) -> None:
    v = unit_vector(rng)
    a, b, c = (handle.deposit(f"m{i}", v) for i in range(3))
    handle.signal_attention({a: -0.3, b: 0.0})
    handle.signal_attention({a: 0.1})
    handle.signal_attention({a: -0.2, c: 0.4})
    assert handle.stats().pending_attention == 5
    before = _by_id(handle, v)
    assert [before[e].attended_count for e in (a, b, c)] == [0, 0, 0]  # still pending
    report = handle.run_sleep_pass()
    assert report.attention_applied == 5
    assert handle.stats().pending_attention == 0
    after = _by_id(handle, v)
    assert after[a].utility == pytest.approx(0.6, abs=1e-12)
    assert after[a].attended_count == 3
    assert after[b].utility == 1.0 and after[b].attended_count == 1  # zero weight still counts
    assert after[c].utility == 1.0 and after[c].attended_count == 1  # clamped to 1
    # A second pass has nothing to apply.
    assert handle.run_sleep_pass().attention_applied == 0
    assert _by_id(handle, v)[a].attended_count == 3


def test_negative_weights_clamp_at_the_floor(handle: Moneta, rng: np.random.Generator) -> None:
    v = unit_vector(rng)
    pinned = handle.deposit("pinned", v, protected_floor=0.4)
    plain = handle.deposit("plain", v)
    handle.signal_attention({pinned: -5.0, plain: -5.0})
    preview = handle.preview_sleep_pass()
    assert preview.would_prune == [plain]  # utility 0 after the reduce, attended 1
    report = handle.run_sleep_pass()
    assert report.pruned == 1
    [got] = handle.query(v, limit=5)
    assert got.entity_id == pinned
    assert got.utility == 0.4  # clamped at the floor, not 0
    assert got.attended_count == 1


def test_unknown_ids_are_skipped_silently(handle: Moneta, rng: np.random.Generator) -> None:
    v = unit_vector(rng)
    known = handle.deposit("known", v)
    stranger = uuid.uuid4()
    handle.signal_attention({stranger: 0.5, known: -0.5})
    handle.signal_attention({uuid.uuid4(): 1.0})
    report = handle.run_sleep_pass()
    assert report.attention_applied == 1
    assert report.hydrated == 0
    stats = handle.stats()
    assert stats.hot == 1
    assert stats.index_records == 0  # the in-memory index keeps cold memories only
    [hit] = handle.query(v, limit=5)
    assert hit.entity_id == known
    assert hit.utility == 0.5 and hit.attended_count == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weight_is_rejected_and_nothing_is_appended(
    handle: Moneta, rng: np.random.Generator, bad: float
) -> None:
    v = unit_vector(rng)
    a = handle.deposit("a", v)
    b = handle.deposit("b", v)
    with pytest.raises(ValueError, match=r"weights\[.*finite"):
        handle.signal_attention({a: 0.2, b: bad})
    assert handle.stats().pending_attention == 0
    assert handle.preview_sleep_pass().attention_pending == 0
    assert handle.run_sleep_pass().attention_applied == 0
    assert {h.attended_count for h in handle.query(v, limit=5)} == {0}


def test_signal_never_cancels_the_decay_before_it(clock: FakeClock) -> None:
    rng = np.random.default_rng(8)
    half_life = 3600.0
    with Moneta(
        MonetaConfig.ephemeral(clock=clock, auto_sleep=False, half_life_seconds=half_life)
    ) as m:
        v = unit_vector(rng)
        e = m.deposit("x", v)
        clock.advance(half_life)  # utility 0.5 now
        m.signal_attention({e: 0.25})  # 0.75 at the signal's time
        clock.advance(half_life)
        m.run_sleep_pass()  # 0.375 at the reduce
        [hit] = m.query(v, limit=1)
        assert hit.utility == pytest.approx(0.375, rel=1e-12)
        assert hit.last_evaluated == clock()
        assert hit.attended_count == 1


def _reference(u, last, floor, att, events, now, rate):
    """Row-by-row reference of the reducer, in plain Python."""
    u, last, att = list(u), list(last), list(att)
    for row in sorted({r for r, _, _ in events}):
        mine = sorted((t, w) for r, w, t in events if r == row)
        for t, w in mine:
            value = max(floor[row], u[row] * math.exp(-rate * max(0.0, t - last[row])))
            u[row] = max(floor[row], min(1.0, value + w))
            last[row] = max(last[row], t)
            att[row] += 1
        u[row] = max(floor[row], u[row] * math.exp(-rate * max(0.0, now - last[row])))
        last[row] = now
    return u, last, att


def test_vectorised_reducer_matches_a_row_by_row_reference() -> None:
    rng = np.random.default_rng(9)
    n, k = 200, 3000
    rate = decay_rate(600.0)
    utility = rng.uniform(0, 1, n)
    last = rng.uniform(0, 1000, n)
    floor = np.where(rng.random(n) < 0.2, 0.3, 0.0)
    attended = rng.integers(0, 5, n)
    cols = Columns(utility.copy(), attended.copy(), floor.copy(), last.copy(), np.zeros(n, np.int8))
    rows = rng.integers(0, n // 2, k)  # half the rows get nothing
    weights = rng.uniform(-0.6, 0.6, k)
    times = rng.uniform(0, 2000, k)
    touched = reduce_signals(cols, Signals(rows, weights, times), 1500.0, rate)
    assert touched.tolist() == sorted(set(rows.tolist()))
    events = list(zip(rows.tolist(), weights.tolist(), times.tolist(), strict=True))
    u, lst, att = _reference(utility, last, floor, attended, events, 1500.0, rate)
    np.testing.assert_allclose(cols.utility, u, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(cols.attended, att)
    np.testing.assert_array_equal(cols.last_evaluated, lst)
    assert int(cols.attended.sum() - attended.sum()) == k
    untouched = np.setdiff1d(np.arange(n), touched)
    np.testing.assert_array_equal(cols.last_evaluated[untouched], last[untouched])
    np.testing.assert_array_equal(cols.last_evaluated[touched], 1500.0)
