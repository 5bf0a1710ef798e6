"""Must hold 6: one live handle per store in a process, and a file lock across processes
that is released on close and on process death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moneta import Moneta, MonetaConfig, MonetaResourceLockedError

REPO = Path(__file__).resolve().parents[2]

# Opens the store, reports, and either exits (close) or waits to be killed.
CHILD = """
import sys, time
from moneta import Moneta, MonetaConfig, MonetaResourceLockedError
store, mode = sys.argv[1], sys.argv[2]
try:
    m = Moneta(MonetaConfig(storage_uri=store, cold_tier="jsonl", auto_sleep=False))
except MonetaResourceLockedError as exc:
    print("LOCKED", exc, flush=True)
    sys.exit(3)
print("OPEN", m.stats().hot, flush=True)
if mode == "hold":
    m.deposit("from the child", [1.0, 0.0, 0.0])
    print("DEPOSITED", flush=True)
    time.sleep(600)
m.close()
"""


def _config(path: Path | str) -> MonetaConfig:
    return MonetaConfig(storage_uri=path, cold_tier="jsonl", auto_sleep=False)


def _child(store: Path, mode: str = "close") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store), mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _run_child(store: Path) -> tuple[int, str]:
    proc = _child(store)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 3), err
    return proc.returncode, out


def test_second_handle_in_the_same_process_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with Moneta(_config(store)) as m:
        m.deposit("a", [1.0, 0.0])
        for spelling in (store, f"{store}/", f"file://{store}", tmp_path / "." / "store"):
            with pytest.raises(MonetaResourceLockedError, match="already open"):
                Moneta(_config(spelling))
        link = tmp_path / "link"
        link.symlink_to(store)
        with pytest.raises(MonetaResourceLockedError):
            Moneta(_config(link))
        assert m.stats().hot == 1  # the refused opens did not disturb the live handle
    with Moneta(_config(store)) as again:
        assert again.stats().hot == 1


def test_second_memory_handle_with_the_same_name_is_refused() -> None:
    config = MonetaConfig(storage_uri="memory://shared-name", auto_sleep=False)
    with Moneta(config):
        with pytest.raises(MonetaResourceLockedError):
            Moneta(config)
        with Moneta(MonetaConfig(storage_uri="memory://other-name", auto_sleep=False)):
            pass
    with Moneta(config):
        pass


def test_a_failed_open_releases_the_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with Moneta(_config(store)) as m:
        m.deposit("a", [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="dim"):  # 4 vs the stored 3
        Moneta(MonetaConfig(storage_uri=store, cold_tier="jsonl", embedding_dim=4))
    with Moneta(_config(store)) as m:
        assert m.stats().hot == 1
    code, out = _run_child(store)
    assert code == 0 and out.startswith("OPEN 1")


def test_second_process_is_refused_then_admitted_after_close(tmp_path: Path) -> None:
    store = tmp_path / "store"
    m = Moneta(_config(store))
    m.deposit("held by the parent", [0.0, 1.0, 0.0])
    code, out = _run_child(store)
    assert code == 3
    assert out.startswith("LOCKED")
    assert str(store.resolve()) in out
    assert f"holder pid {os.getpid()}" in out  # the refusal names who holds the store
    m.close()
    code, out = _run_child(store)
    assert code == 0
    assert out.split() == ["OPEN", "1"]


def test_lock_is_released_when_the_holding_process_dies(tmp_path: Path) -> None:
    store = tmp_path / "store"
    proc = _child(store, "hold")
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip(), proc.stdout.readline().strip()]
        assert lines == ["OPEN 0", "DEPOSITED"], proc.stderr.read() if proc.stderr else ""
        with pytest.raises(MonetaResourceLockedError):
            Moneta(_config(store))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    deadline = time.monotonic() + 30
    while True:  # the kernel drops the dead process's flock; poll for it
        try:
            m = Moneta(_config(store))
            break
        except MonetaResourceLockedError:
            assert time.monotonic() < deadline, "lock still held after the holder died"
            time.sleep(0.05)
    with m:
        # The child's acknowledged deposit survived its death.
        [hit] = m.query([1.0, 0.0, 0.0], limit=5)
        assert hit.payload == "from the child"
