"""Must hold 9: eight threads mixing deposit, query and signal_attention for 10 s, with
sleep passes in between (operator and pressure-triggered), raise nothing and lose
nothing: every acknowledged deposit ends exactly where its signals send it."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from uuid import UUID

import numpy as np
import pytest

from moneta import EntityState, Moneta, MonetaConfig

THREADS = 8
SECONDS = 10.0
DIM = 32


@pytest.mark.slow
def test_eight_threads_for_ten_seconds_lose_no_deposit(tmp_path: Path) -> None:
    store = tmp_path / "store"
    config = MonetaConfig(
        storage_uri=store,
        cold_tier="jsonl",
        max_entities=1500,  # pressure passes fire while the threads run
        watch_interval_seconds=0.05,
        checkpoint_every_records=4000,  # checkpoints race the appends too
    )
    fates: dict[str, set[UUID]] = {"keep": set(), "stage": set(), "prune": set()}
    signals: Counter[UUID] = Counter()
    errors: list[str] = []
    ops = Counter()
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def worker(tid: int, m: Moneta) -> None:
        rng = np.random.default_rng(tid)
        mine: dict[str, list[UUID]] = {"keep": [], "stage": [], "prune": []}
        sent: Counter[UUID] = Counter()
        start.wait()
        end = time.monotonic() + SECONDS
        i = 0
        try:
            while time.monotonic() < end:
                kind = ("keep", "stage", "prune")[i % 3]
                v = rng.standard_normal(DIM)
                e = m.deposit(f"thread {tid} memory {i} ({kind})", v.tolist())
                mine[kind].append(e)
                hits = m.query(v.tolist(), limit=3)
                if not hits or hits[0].entity_id != e:
                    errors.append(f"thread {tid}: fresh deposit {e} not the top hit")
                if kind == "keep":
                    m.signal_attention({e: 0.05})
                    sent[e] += 1
                elif kind == "stage":  # three signals: attended 3, utility ~0.1
                    for _ in range(3):
                        m.signal_attention({e: -0.3})
                        sent[e] += 1
                else:  # one signal to zero: pruned by the next pass
                    m.signal_attention({e: -1.0})
                    sent[e] += 1
                if i % 100 == 99:
                    m.run_sleep_pass()
                    m.get_consolidation_manifest()
                i += 1
        except Exception as exc:  # reported to the test thread
            errors.append(f"thread {tid}: {exc!r}")
        with lock:
            for kind, ids in mine.items():
                fates[kind].update(ids)
            signals.update(sent)
            ops["iterations"] += i

    with Moneta(config) as m:
        threads = [threading.Thread(target=worker, args=(t, m)) for t in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        final = m.run_sleep_pass()
        assert final.error is None
        total = sum(len(ids) for ids in fates.values())
        assert total == ops["iterations"] > THREADS * 30
        print(f"{total} deposits, {sum(signals.values())} signals, {m.stats().sleep_passes} passes")
        stats = m.stats()
        assert stats.pending_attention == 0
        assert stats.staged == 0
        assert stats.sleep_passes >= THREADS  # operator passes at least; pressure ones too
        everything = m.query(np.ones(DIM).tolist(), limit=total)
        hot = {h.entity_id: h for h in everything if h.state is EntityState.VOLATILE}
        cold = {h.entity_id for h in everything if h.state is EntityState.CONSOLIDATED}
        assert set(hot) == fates["keep"]
        assert stats.hot == len(fates["keep"])
        assert cold == fates["stage"]
        assert all(hot[e].attended_count == signals[e] == 1 for e in hot)
        audit = m._parts.audit.entries()
        pruned = [UUID(a.entity_id) for a in audit if a.action == "prune"]
        consolidated = [UUID(a.entity_id) for a in audit if a.action == "consolidate"]
        assert len(pruned) == len(set(pruned)) and set(pruned) == fates["prune"]
        assert len(consolidated) == len(set(consolidated))
        assert set(consolidated) == fates["stage"]
        assert len(hot) + len(cold) + len(pruned) == total

    with Moneta(config.with_changes(auto_sleep=False)) as m:  # and all of it is durable
        everything = m.query(np.ones(DIM).tolist(), limit=total)
        hot = {h.entity_id: h for h in everything if h.state is EntityState.VOLATILE}
        assert set(hot) == fates["keep"]
        assert all(h.attended_count == 1 for h in hot.values())
        assert m.stats().pending_attention == 0
