"""Operator tools: forget (never comes back), the sleep-pass preview (changes nothing,
predicts the pass), and the audit log of every prune, consolidation and forget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from uuid import UUID

import numpy as np
import pytest

from moneta import EntityState, Moneta, MonetaConfig
from tests.substrate.conftest import FakeClock, unit_vector

REPO = Path(__file__).resolve().parents[2]
DIM = 8


def _config(path: Path, clock: FakeClock | None = None) -> MonetaConfig:
    extra = {"clock": clock} if clock is not None else {}
    return MonetaConfig(storage_uri=path, cold_tier="jsonl", auto_sleep=False, **extra)


def _files_containing(root: Path, needle: str) -> list[str]:
    raw = needle.encode()
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and raw in p.read_bytes()
    )


def _outside_index(files: list[str]) -> list[str]:
    return [f for f in files if not f.startswith("vectors/")]


def _vec(i: int) -> list[float]:
    return unit_vector(np.random.default_rng([42, i]), DIM)


def test_forget_removes_a_hot_memory_everywhere_and_it_never_comes_back(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    secret = f"secret-{uuid.uuid4().hex}"
    with Moneta(_config(store)) as m:
        keep = m.deposit("kept memory", _vec(0))
        doomed = m.deposit(secret, _vec(1))
        m.signal_attention({doomed: 0.5, keep: 0.1})  # still pending when forgotten
        assert m.forget(doomed) is True
        assert m.forget(doomed) is False
        assert m.forget(uuid.uuid4()) is False
        assert [h.entity_id for h in m.query(_vec(1), limit=10)] == [keep]
        report = m.run_sleep_pass()
        assert (report.attention_applied, report.hydrated) == (1, 0)
        stats = m.stats()
        assert (stats.hot, stats.index_records) == (1, 1)
    with Moneta(_config(store)) as m:
        hits = m.query(_vec(1), limit=10)
        assert [h.entity_id for h in hits] == [keep]
        assert hits[0].attended_count == 1
    # The payload is gone from every file of the store (WAL, snapshot, index, cold tier).
    assert _files_containing(store, secret) == []
    audit = [json.loads(line) for line in (store / "audit.jsonl").read_text().splitlines()]
    forgets = [a for a in audit if a["action"] == "forget"]
    assert [a["entity_id"] for a in forgets] == [str(doomed)]
    assert forgets[0]["reason"] == "operator forget"


def test_forget_after_the_memory_reached_every_file(tmp_path: Path) -> None:
    """The memory was checkpointed into the snapshot and committed to the persistent
    index (with neighbours in the same files) before it is forgotten."""
    store = tmp_path / "store"
    secret = f"secret-{uuid.uuid4().hex}"
    with Moneta(_config(store)) as m:
        fillers = [m.deposit(f"filler {i}", _vec(100 + i)) for i in range(60)]
        doomed = m.deposit(secret, _vec(1))
        fillers += [m.deposit(f"filler {i}", _vec(200 + i)) for i in range(60)]
    assert len(_files_containing(store, secret)) >= 2  # snapshot and index at least
    with Moneta(_config(store)) as m:
        assert m.forget(doomed) is True
        # Snapshot and WAL are rewritten at once, not at some later checkpoint. A
        # LanceDB delete only marks the row: the old data file keeps its bytes until a
        # compaction rewrites that fragment, so the index directory is checked through
        # the index (the row is gone), not byte by byte.
        assert _outside_index(_files_containing(store, secret)) == []
        assert doomed not in {h.entity_id for h in m.query(_vec(1), limit=200)}
    assert _outside_index(_files_containing(store, secret)) == []
    with Moneta(_config(store)) as m:
        hits = m.query(_vec(1), limit=200)
        assert {h.entity_id for h in hits} == set(fillers)
        assert m.stats().index_records == 120


def test_forget_of_a_consolidated_memory_removes_it_from_the_cold_tier(
    tmp_path: Path, clock: FakeClock
) -> None:
    store = tmp_path / "store"
    secret = f"secret-{uuid.uuid4().hex}"
    with Moneta(_config(store, clock)) as m:
        cold = m.deposit(secret, _vec(2))
        other = m.deposit("also consolidated", _vec(3))
        for _ in range(3):
            m.signal_attention({cold: -0.3, other: -0.3})
        report = m.run_sleep_pass()
        assert (report.staged, report.consolidated) == (2, 2)
        [hit] = m.query(_vec(2), limit=1)
        assert hit.entity_id == cold and hit.state is EntityState.CONSOLIDATED
        assert "cold/mock_batches.jsonl" in _files_containing(store, secret)
        assert m.forget(cold) is True
        ids = {h.entity_id for h in m.query(_vec(2), limit=10)}
        assert cold not in ids and other in ids
        m.signal_attention({cold: 1.0})  # attention cannot hydrate it back
        assert m.run_sleep_pass().hydrated == 0
        assert m.stats().hot == 0
    assert _files_containing(store, secret) == []
    entries = [json.loads(line) for line in (store / "cold" / "mock_batches.jsonl").open()]
    assert [e["entity_id"] for b in entries for e in b["entries"]] == [str(other)]
    with Moneta(_config(store, clock)) as m:
        assert cold not in {h.entity_id for h in m.query(_vec(2), limit=10)}
        m.signal_attention({cold: 1.0})
        assert m.run_sleep_pass().hydrated == 0


# Deposits, forgets, then dies without closing: the forget must hold after recovery.
CRASH_CHILD = """
import os, sys
import numpy as np
from moneta import Moneta, MonetaConfig
from tests.substrate.test_operator_tools import _vec
store, secret = sys.argv[1], sys.argv[2]
m = Moneta(MonetaConfig(storage_uri=store, cold_tier="jsonl", auto_sleep=False,
                        wal_fsync_interval_seconds=0))
keep = m.deposit("kept", _vec(0))
doomed = m.deposit(secret, _vec(1))
m.signal_attention({doomed: 0.4})
m.forget(doomed)
print(keep, doomed, flush=True)
os._exit(0)  # no close, no checkpoint
"""


def test_forget_holds_after_a_crash(tmp_path: Path) -> None:
    store = tmp_path / "store"
    secret = f"secret-{uuid.uuid4().hex}"
    out = subprocess.run(
        [sys.executable, "-c", CRASH_CHILD, str(store), secret],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    keep, doomed = UUID(out[0]), UUID(out[1])
    # forget() checkpointed before returning: no WAL segment or snapshot holds the
    # payload although the process never closed the store.
    assert _outside_index(_files_containing(store, secret)) == []
    with Moneta(_config(store)) as m:
        assert [h.entity_id for h in m.query(_vec(1), limit=10)] == [keep]
        report = m.run_sleep_pass()
        assert (report.attention_applied, report.hydrated) == (0, 0)
    assert _files_containing(store, secret) == []
    with Moneta(_config(store)) as m:
        assert doomed not in {h.entity_id for h in m.query(_vec(1), limit=10)}
        assert m.stats().hot == 1


def _populate(m: Moneta, clock: FakeClock) -> dict[str, list[UUID]]:
    """Twelve memories whose fate after one pass is known in advance."""
    groups: dict[str, list[UUID]] = {"prune": [], "stage": [], "keep": [], "pinned": []}
    for i in range(12):
        kind = ("prune", "stage", "keep", "pinned")[i % 4]
        floor = 0.2 if kind == "pinned" else 0.0
        groups[kind].append(m.deposit(f"{kind} {i}", _vec(10 + i), protected_floor=floor))
    clock.advance(3600.0)
    m.signal_attention(dict.fromkeys(groups["prune"], -0.95))
    for _ in range(3):
        m.signal_attention(dict.fromkeys(groups["stage"] + groups["pinned"], -0.2))
    m.signal_attention(dict.fromkeys(groups["keep"], 0.1))
    return groups


def _observe(m: Moneta) -> tuple:
    hits = m.query(_vec(99), limit=50)
    rows = sorted(
        (h.entity_id, h.utility, h.attended_count, h.state, h.last_evaluated) for h in hits
    )
    stats = m.stats()
    return rows, stats.hot, stats.staged, stats.pending_attention, stats.index_records


def test_preview_changes_nothing_and_predicts_the_pass(tmp_path: Path, clock: FakeClock) -> None:
    with Moneta(_config(tmp_path / "store", clock)) as m:
        groups = _populate(m, clock)
        before = _observe(m)
        preview = m.preview_sleep_pass()
        again = m.preview_sleep_pass()
        assert _observe(m) == before
        assert again == preview
        assert preview.attention_pending == 3 + 6 * 3 + 3
        assert sorted(preview.would_prune) == sorted(groups["prune"])
        assert sorted(preview.would_stage) == sorted(groups["stage"])
        assert preview.already_staged == [] and preview.would_hydrate == []
        assert preview.at == clock()
        report = m.run_sleep_pass()
        assert (report.pruned, report.staged, report.consolidated) == (3, 3, 3)
        assert report.attention_applied == preview.attention_pending
        survivors = {h.entity_id for h in m.query(_vec(99), limit=50)}
        cold = {h.entity_id for h in m.query(_vec(99), limit=50) if h.usd_link}
        assert survivors == set(groups["keep"] + groups["pinned"] + groups["stage"])
        assert cold == set(groups["stage"])
        empty = m.preview_sleep_pass()
        assert (empty.attention_pending, empty.would_prune, empty.would_stage) == (0, [], [])


def test_audit_log_records_every_prune_and_consolidation_with_reason(
    tmp_path: Path, clock: FakeClock
) -> None:
    store = tmp_path / "store"
    with Moneta(_config(store, clock)) as m:
        groups = _populate(m, clock)
        report = m.run_sleep_pass()
        at = clock()
    lines = (store / "audit.jsonl").read_text().splitlines()
    audit = [json.loads(line) for line in lines]
    assert len(audit) == report.pruned + report.consolidated == 6
    by_action: dict[str, dict[str, dict]] = {}
    for a in audit:
        assert set(a) == {
            "entity_id", "action", "utility", "attended_count", "reason", "at", "usd_link"
        }  # fmt: skip
        assert a["at"] == at
        by_action.setdefault(a["action"], {})[a["entity_id"]] = a
    assert set(by_action) == {"prune", "consolidate"}
    assert set(by_action["prune"]) == {str(e) for e in groups["prune"]}
    assert set(by_action["consolidate"]) == {str(e) for e in groups["stage"]}
    decayed = 0.5 ** (3600.0 / (6 * 3600.0))
    for a in by_action["prune"].values():
        assert a["attended_count"] == 1
        assert a["utility"] == pytest.approx(max(0.0, decayed - 0.95), rel=1e-9)
        assert "< 0.1" in a["reason"] and "attended 1 < 3" in a["reason"]
        assert a["usd_link"] is None
    for a in by_action["consolidate"].values():
        assert a["attended_count"] == 3
        assert a["utility"] == pytest.approx(decayed - 0.6, rel=1e-9)
        assert "< 0.3" in a["reason"] and "attended 3 >= 3" in a["reason"]
        assert a["usd_link"] == "/Memory_" + UUID(a["entity_id"]).hex
    # The log is append-only across reopen.
    with Moneta(_config(store, clock)) as m:
        m.forget(groups["keep"][0])
    assert len((store / "audit.jsonl").read_text().splitlines()) == 7


def test_memory_store_keeps_its_audit_in_memory(clock: FakeClock) -> None:
    with Moneta(MonetaConfig.ephemeral(clock=clock, auto_sleep=False)) as m:
        groups = _populate(m, clock)
        m.run_sleep_pass()
        entries = m._parts.audit.entries()
        assert sorted(e.entity_id for e in entries if e.action == "prune") == sorted(
            str(e) for e in groups["prune"]
        )


def test_unpin_releases_the_floor(clock: FakeClock) -> None:
    with Moneta(MonetaConfig.ephemeral(clock=clock, auto_sleep=False)) as m:
        e = m.deposit("pinned", _vec(5), protected_floor=0.5)
        clock.advance(6 * 3600.0 * 4)  # decayed to 1/16, held at the floor
        [hit] = m.query(_vec(5), limit=1)
        assert hit.utility == 0.5
        assert m.unpin(e) is True
        assert m.unpin(e) is False
        [hit] = m.query(_vec(5), limit=1)
        assert hit.protected_floor == 0.0
        assert hit.utility == pytest.approx(1 / 16, rel=1e-9)
        assert m.run_sleep_pass().pruned == 1  # no longer pinned: 0.0625 < 0.1, attended 0
