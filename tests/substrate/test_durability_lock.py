"""StoreLock: exclusive across processes, released on release() and on process death."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from moneta.durability import LOCK_FILE_NAME, StoreLock
from moneta.errors import MonetaResourceLockedError

# A second process that tries the lock once: exit 0 = granted, exit 3 = refused.
TRY_LOCK = """
import sys
from pathlib import Path
from moneta.durability import StoreLock
from moneta.errors import MonetaResourceLockedError
lock = StoreLock(Path(sys.argv[1]))
try:
    lock.acquire()
except MonetaResourceLockedError as exc:
    print("refused:", exc, flush=True)
    sys.exit(3)
print("granted", flush=True)
lock.release()
"""

# A process that takes the lock, reports it, then holds it until killed.
HOLD_LOCK = """
import sys, time
from pathlib import Path
from moneta.durability import StoreLock
StoreLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
while True:
    time.sleep(60)
"""


def _try_in_child(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", TRY_LOCK, str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_second_process_refused_while_held_then_granted_after_release(tmp_path: Path) -> None:
    store = tmp_path / "store"
    lock = StoreLock(store)
    lock.acquire()
    assert (store / LOCK_FILE_NAME).exists()

    refused = _try_in_child(store)
    assert refused.returncode == 3, refused.stderr
    assert str(store) in refused.stdout
    assert f"holder pid {os.getpid()}" in refused.stdout

    lock.release()
    lock.release()  # idempotent
    granted = _try_in_child(store)
    assert granted.returncode == 0, granted.stdout + granted.stderr
    assert granted.stdout.strip() == "granted"


def test_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    store = tmp_path / "store"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(store)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(MonetaResourceLockedError) as refused:
            StoreLock(store).acquire()
        assert str(store) in str(refused.value)
        assert f"holder pid {holder.pid}" in str(refused.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert holder.returncode == -signal.SIGKILL

    # The kernel dropped the flock with the dead process: no stale lock.
    with StoreLock(store) as lock:
        assert lock.held
        assert _try_in_child(store).returncode == 3
    assert _try_in_child(store).returncode == 0


def test_second_lock_in_the_same_process_is_refused(tmp_path: Path) -> None:
    first = StoreLock(tmp_path)
    first.acquire()
    first.acquire()  # the holder re-acquiring is a no-op, not a deadlock
    second = StoreLock(tmp_path)
    with pytest.raises(MonetaResourceLockedError, match=re.escape(str(tmp_path))):
        second.acquire()
    assert not second.held
    first.release()
    second.acquire()
    assert second.held
    second.release()
    assert not second.held
