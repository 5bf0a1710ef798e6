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
    floor: np.ndarray,
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
