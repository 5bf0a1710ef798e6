"""A small background scheduler: periodic tasks on one daemon thread.

The thread sleeps on an ``Event`` until the next task is due or someone calls
``poke()``, so an idle store costs a wake-up per interval and nothing else. It
never decays anything; it only runs the handle's checks (sleep-pass triggers,
index group commit, checkpoints). A task that raises is logged and keeps its
schedule.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Task:
    name: str
    interval: float
    action: Callable[[], None]
    on_poke: bool
    due: float


class Scheduler:
    """Runs registered tasks every ``interval`` real seconds (and on ``poke``)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: list[_Task] = []
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def every(
        self, interval: float, name: str, action: Callable[[], None], *, on_poke: bool = False
    ) -> None:
        """Register ``action`` to run every ``interval`` s (before ``start``)."""
        self._tasks.append(_Task(name, interval, action, on_poke, time.monotonic() + interval))

    def start(self) -> None:
        if self._tasks:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def poke(self) -> None:
        """Run the ``on_poke`` tasks as soon as possible."""
        self._wake.set()

    def stop(self) -> None:
        """Stop and wait for a running task to finish. Idempotent."""
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
            # The tasks are bound methods of the owner: dropping them breaks the
            # owner <-> scheduler cycle, so a closed handle's columns are freed as soon
            # as the caller drops it, not at the next full garbage collection.
            self._tasks.clear()

    def _run(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            timeout = max(0.0, min(task.due for task in self._tasks) - now)
            poked = self._wake.wait(timeout)
            self._wake.clear()
            if self._stopping:
                return
            now = time.monotonic()
            for task in self._tasks:
                if self._stopping:
                    return
                if now >= task.due or (poked and task.on_poke):
                    task.due = now + task.interval
                    try:
                        task.action()
                    except Exception:
                        logger.exception("background task %s failed", task.name)
