"""Job functions for worker tests: a worker imports them by path, like review jobs."""

from __future__ import annotations

import signal
import time


def sleep_deaf_to_alarms(seconds: float) -> None:
    """Sleep with SIGALRM blocked, so RQ's job timeout cannot interrupt the sleep."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(seconds)
