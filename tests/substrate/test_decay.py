"""Must hold 2: lazy decay equals the closed form, bounded half-life, clamped skew,
and exactly three evaluation sites in the package."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest

import moneta
from moneta import Moneta, MonetaConfig
from moneta.decay import DecayAnchor, decay_rate, decayed_utility
from tests.substrate.conftest import FakeClock, unit_vector

PACKAGE = Path(moneta.__file__).parent


def closed_form(u: float, last: float, floor: float, now: float, half_life: float) -> float:
    lam = math.log(2) / half_life
    return max(floor, u * math.exp(-lam * max(0.0, now - last)))


def test_vectorised_decay_matches_the_closed_form_to_1e_9() -> None:
    rng = np.random.default_rng(3)
    n = 5000
    utility = rng.uniform(0.0, 1.0, n)
    last = rng.uniform(0.0, 200_000.0, n)
    floor = np.where(rng.random(n) < 0.3, rng.uniform(0.0, 0.5, n), 0.0)
    now = 150_000.0  # a quarter of the rows are "in the future": skew clamps
    for half_life in (60.0, 3600.0, 6 * 3600.0, 86_400.0):
        got = decayed_utility(utility, last, floor, now, decay_rate(half_life))
        want = np.array(
            [
                closed_form(u, t, f, now, half_life)
                for u, t, f in zip(utility, last, floor, strict=True)
            ]
        )
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=0.0)
    # Inputs are untouched.
    assert utility.shape == (n,) and np.isfinite(utility).all()


def test_query_reports_the_closed_form_utility(clock: FakeClock) -> None:
    rng = np.random.default_rng(4)
    half_life = 600.0
    with Moneta(
        MonetaConfig.ephemeral(clock=clock, auto_sleep=False, half_life_seconds=half_life)
    ) as m:
        vector = unit_vector(rng)
        entity_id = m.deposit("decays", vector)
        t0 = clock()
        for elapsed in (0.0, 1.0, 599.0, 600.0, 1800.0, 7200.0):
            clock.set(t0 + elapsed)
            [hit] = m.query(vector, limit=1)
            assert hit.entity_id == entity_id
            want = 0.5 ** (elapsed / half_life)
            assert hit.utility == pytest.approx(want, rel=1e-9, abs=0.0)
        # After an attention reduce the row restarts from its new value and time.
        m.signal_attention({entity_id: 0.5})
        m.run_sleep_pass()
        t1 = clock()
        u1 = min(1.0, 0.5 ** (7200.0 / half_life) + 0.5)
        clock.advance(300.0)
        [hit] = m.query(vector, limit=1)
        assert hit.last_evaluated == t1
        assert hit.utility == pytest.approx(u1 * 0.5**0.5, rel=1e-9, abs=0.0)


@pytest.mark.parametrize("half_life", [60.0, 61, 3600.0, 86_400.0])
def test_half_life_inside_bounds_is_accepted(half_life: float) -> None:
    assert MonetaConfig.ephemeral(half_life_seconds=half_life).half_life_seconds == half_life


@pytest.mark.parametrize(
    "half_life", [59.999, 0.0, -60.0, 86_400.001, 1e9, float("nan"), float("inf")]
)
def test_half_life_outside_bounds_raises_value_error(half_life: float) -> None:
    with pytest.raises(ValueError, match="half_life_seconds"):
        MonetaConfig.ephemeral(half_life_seconds=half_life)


def test_half_life_of_wrong_type_raises_type_error() -> None:
    with pytest.raises(TypeError, match="half_life_seconds"):
        MonetaConfig.ephemeral(half_life_seconds="6h")


def test_negative_elapsed_time_clamps_to_zero(clock: FakeClock) -> None:
    rate = decay_rate(3600.0)
    got = decayed_utility(np.array([0.4, 1.0]), np.array([100.0, 100.0]), np.zeros(2), 50.0, rate)
    assert got.tolist() == [0.4, 1.0]
    rng = np.random.default_rng(5)
    with Moneta(MonetaConfig.ephemeral(clock=clock, auto_sleep=False)) as m:
        vector = unit_vector(rng)
        m.deposit("from the future", vector)
        clock.advance(-3600.0)  # the clock steps back an hour
        [hit] = m.query(vector, limit=1)
        assert hit.utility == 1.0
        clock.advance(3600.0 + 6 * 3600.0)
        [hit] = m.query(vector, limit=1)
        assert hit.utility == pytest.approx(0.5, rel=1e-9)


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if called == name:
                found.append(node)
    return found


def _enclosing_function(tree: ast.AST, call: ast.Call) -> str:
    best = "<module>"
    for node in ast.walk(tree):
        if isinstance(
            node, ast.FunctionDef | ast.AsyncFunctionDef
        ) and node.lineno <= call.lineno <= (node.end_lineno or node.lineno):
            best = node.name  # ast.walk is breadth-first: the innermost match comes last
    return best


def test_exactly_three_decay_evaluation_sites_in_the_whole_package() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert PACKAGE / "api.py" in files and len(files) > 10
    sites = []
    exp_outside_decay = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = path.relative_to(PACKAGE).as_posix()
        for call in _calls(tree, "decayed_utility"):
            sites.append((rel, _enclosing_function(tree, call)))
        if rel != "decay.py":
            exp_outside_decay += [(rel, c.lineno) for c in _calls(tree, "exp")]
            exp_outside_decay += [(rel, c.lineno) for c in _calls(tree, "exp2")]
    assert sorted(sites) == [
        ("api.py", "_score_hot"),  # just before query scoring
        ("attention_log.py", "reduce_signals"),  # the attention reduce
        ("consolidation.py", "select"),  # the consolidation scan
    ]
    assert exp_outside_decay == []


def test_no_background_decay_thread(clock: FakeClock) -> None:
    """Utility stored in a row changes only at the evaluation sites, never on a tick."""
    rng = np.random.default_rng(6)
    config = MonetaConfig.ephemeral(clock=clock, watch_interval_seconds=0.01)
    with Moneta(config) as m:
        vector = unit_vector(rng)
        m.deposit("still", vector)
        clock.advance(3.0)  # below the idle window: no pass may run
        before = m.stats()
        [hit] = m.query(vector, limit=1)
        # The row's stored value is still the deposit's; only the query's copy decayed.
        assert m.stats().sleep_passes == before.sleep_passes == 0
        assert hit.last_evaluated == clock() - 3.0
        assert hit.utility < 1.0


def test_lambda_is_logged_when_it_changes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="moneta.decay")
    decay_rate(777.0)
    caplog.clear()
    assert decay_rate(777.0) == math.log(2) / 777.0
    assert caplog.records == []  # unchanged: nothing logged
    with Moneta(MonetaConfig.ephemeral(half_life_seconds=1234.0, auto_sleep=False)):
        pass
    [record] = caplog.records
    assert "λ=" in record.getMessage() and "half-life 1234 s" in record.getMessage()
    assert "previous 0.000892" in record.getMessage()  # ln 2 / 777


def _anchored(
    anchor: DecayAnchor,
    u: np.ndarray,
    last: np.ndarray,
    floor: np.ndarray,
    now: float,
    rate: float,
) -> tuple[int, np.ndarray]:
    """One query's decay through the anchor, as the handle's query scoring does it."""
    n = u.shape[0]
    start = anchor.stale_from(n, now, rate)
    exact = decayed_utility(u[start:], last[start:], 0.0, now, rate)
    return start, anchor.advance(exact, start, last, floor, now, rate)


def test_decay_anchor_equals_the_closed_form_through_appends_changes_skew_and_time() -> None:
    rng = np.random.default_rng(8)
    rate = decay_rate(600.0)
    anchor = DecayAnchor()
    u = rng.uniform(0.0, 1.0, 300)
    last = rng.uniform(0.0, 1000.0, 300)
    floor = np.where(rng.random(300) < 0.2, 0.05, 0.0)
    now, starts = 1000.0, []

    def check() -> None:
        start, got = _anchored(anchor, u, last, floor, now, rate)
        starts.append(start)
        np.testing.assert_allclose(got, decayed_utility(u, last, floor, now, rate), rtol=1e-12)

    check()  # anchors every row
    for step in range(40):
        now += float(rng.uniform(0.0, 120.0))
        if step % 5 == 1:  # deposits since the last query: only they are evaluated
            k = int(rng.integers(1, 50))
            u = np.concatenate([u, np.ones(k)])
            last = np.concatenate([last, np.full(k, now)])
            floor = np.concatenate([floor, np.zeros(k)])
        check()
    assert starts.count(0) == 1  # no change but appends: the anchor never restarted
    assert sum(1 for s in starts[1:] if s < u.shape[0]) >= 8  # appended rows were folded in
    # A changed row: the owner drops the anchor and every row is evaluated again.
    u[3] = 0.9
    last[3] = now
    anchor.drop()
    check()
    assert starts[-1] == 0
    # The clock steps back past the newest evaluation: the clamp is not memoryless.
    now -= 30.0
    check()
    assert starts[-1] == 0
    # A row evaluated "in the future" (skew) is clamped, and never anchored.
    u = np.append(u, 0.7)
    last = np.append(last, now + 500.0)
    floor = np.append(floor, 0.0)
    check()
    now += 100.0
    check()
    assert starts[-1] == 0
    # A very old anchor (many e-foldings) is replaced rather than scaled further.
    now += 40 * 600.0 / math.log(2)
    check()
    assert starts[-1] == 0


def test_query_utilities_stay_exact_while_deposits_and_queries_interleave(
    clock: FakeClock,
) -> None:
    rng = np.random.default_rng(9)
    half_life = 600.0
    config = MonetaConfig.ephemeral(clock=clock, auto_sleep=False, half_life_seconds=half_life)
    with Moneta(config) as m:
        born: dict = {}
        for round_ in range(12):
            for _ in range(5):
                vector = unit_vector(rng)
                born[m.deposit(f"memory of round {round_}", vector)] = clock()
                clock.advance(7.0)
            hits = m.query(unit_vector(rng), limit=60)
            assert len(hits) == len(born)
            for hit in hits:
                want = 0.5 ** ((clock() - born[hit.entity_id]) / half_life)
                assert hit.utility == pytest.approx(want, rel=1e-12, abs=0.0)
            clock.advance(45.0)
