"""Lazy exponential decay of utility (DESIGN §1.3).

Utility is never decayed on a tick. ``decayed_utility`` is evaluated at exactly three
places in the package: query scoring, right after the attention reduce, and the
consolidation scan (a test counts the call sites).
"""

from __future__ import annotations

import logging
import math
import threading

import numpy as np

logger = logging.getLogger(__name__)

_rate_lock = threading.Lock()
_last_rate: float | None = None


def decay_rate(half_life_seconds: float) -> float:
    """λ = ln 2 / half-life, logged whenever it differs from the last rate computed."""
    global _last_rate
    rate = math.log(2.0) / half_life_seconds
    with _rate_lock:
        if rate != _last_rate:
            logger.info(
                "decay rate λ=%.6g/s (half-life %.6g s); previous %s",
                rate,
                half_life_seconds,
                "none" if _last_rate is None else f"{_last_rate:.6g}/s",
            )
            _last_rate = rate
    return rate


def decayed_utility(
    utility: np.ndarray,
    last_evaluated: np.ndarray,
    floor: np.ndarray | float,
    now: float | np.ndarray,
    rate: float,
) -> np.ndarray:
    """``max(floor, utility * exp(-rate * max(0, now - last_evaluated)))`` element-wise.

    ``now`` is a scalar or one time per element. Negative elapsed time (clock skew)
    clamps to zero, so a skewed clock can never raise utility. Returns a new array;
    the inputs are not modified.
    """
    elapsed = np.subtract(now, last_evaluated, dtype=np.float64)
    np.maximum(elapsed, 0.0, out=elapsed)
    np.multiply(elapsed, -rate, out=elapsed)
    np.exp(elapsed, out=elapsed)
    np.multiply(elapsed, utility, out=elapsed)
    np.maximum(elapsed, floor, out=elapsed)
    return elapsed


# Re-anchor once the anchor is this many e-foldings old: keeps the factor that folds
# newer rows into the anchor (e^{λ(t-a)}) far from float64 overflow.
MAX_ANCHOR_EXPONENT = 30.0


class DecayAnchor:
    """The hot rows' utilities decayed to one anchor time ``a``, so each query decays
    them to its own time with a multiply instead of an ``exp`` per row.

    Decay is memoryless: ``u·e^{-λ(t-l)} = [u·e^{-λ(a-l)}]·e^{-λ(t-a)}`` for every
    ``t >= l``, so the bracket is stored per row and a query at ``t`` scales it by one
    scalar, then applies the floor. Rows appended since the last query are evaluated
    exactly by the caller (``decayed_utility`` at the query site) and folded in. The
    owner drops the anchor on any other change to the rows (``drop``); a clock that
    runs backwards past the newest evaluation time, or a rate change, starts over.
    """

    def __init__(self) -> None:
        self._values = np.empty(0, dtype=np.float64)
        self._rows = 0  # rows [0, _rows) hold anchored values
        self._anchor = 0.0
        self._newest = -math.inf  # latest last_evaluated among anchored rows
        self._rate: float | None = None

    def drop(self) -> None:
        self._rows = 0

    def stale_from(self, n: int, now: float, rate: float) -> int:
        """The first of ``n`` rows the caller must evaluate exactly at ``now``."""
        if (
            self._rows == 0
            or self._rows > n
            or rate != self._rate
            or now < self._newest
            or rate * (now - self._anchor) > MAX_ANCHOR_EXPONENT
        ):
            return 0
        return self._rows

    def advance(
        self,
        exact: np.ndarray,
        start: int,
        last_evaluated: np.ndarray,
        floor: np.ndarray,
        now: float,
        rate: float,
    ) -> np.ndarray:
        """Every row's decayed utility at ``now`` (a new array).

        ``exact`` is ``decayed_utility`` of rows ``start:`` at ``now`` with no floor;
        ``start`` is what ``stale_from`` returned for these rows.
        """
        n = floor.shape[0]
        if start == 0:
            self._anchor, self._rate, self._newest, self._rows = now, rate, -math.inf, 0
        if self._values.shape[0] < n:
            grown = np.empty(max(n, 2 * self._values.shape[0], 1024), dtype=np.float64)
            grown[: self._rows] = self._values[: self._rows]
            self._values = grown
        out = np.empty(n, dtype=np.float64)
        if start:
            scale = math.exp(-rate * (now - self._anchor))
            np.multiply(self._values[:start], scale, out=out[:start])
        if start < n:
            out[start:] = exact
            newest = float(last_evaluated[start:].max())
            if newest <= now:  # a row evaluated in the future (clock skew) clamps: not memoryless
                np.multiply(exact, math.exp(rate * (now - self._anchor)), out=self._values[start:n])
                self._newest = max(self._newest, newest)
                self._rows = n
            else:
                self._rows = 0
        np.maximum(out, floor, out=out)
        return out
