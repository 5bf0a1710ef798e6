"""Must hold 4: sleep-pass triggers, selection boundaries, pinned rows, batching,
partial failure, sequential write and the consolidation manifest."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from uuid import UUID

import numpy as np
import pytest

from moneta import AuthoringError, EntityState, Memory, Moneta, MonetaConfig, store
from moneta.mock_usd_target import JsonlMockTarget
from moneta.protocols import VectorIndex, VectorRecord
from moneta.sequential_writer import SequentialWriter
from moneta.vector_index import InMemoryVectorIndex
from tests.substrate.conftest import FakeClock, unit_vector, wait_until


class FlakyTarget:
    """The JSONL mock cold tier, failing the author calls whose numbers are in ``fail``.

    A fault injected at the seam: the handle under test is real; the target records
    every batch it was offered so the test can check sizes and order.
    """

    def __init__(self, fail: Iterable[int] = ()) -> None:
        self.inner = JsonlMockTarget(None)
        self.fail = set(fail)
        self.calls: list[list[UUID]] = []

    def author(
        self, batch: Sequence[Memory], *, batch_id: str, authored_at: float
    ) -> dict[UUID, str]:
        self.calls.append([m.entity_id for m in batch])
        if len(self.calls) in self.fail:
            raise AuthoringError(f"injected failure of {batch_id}", failed=["injected.usda"])
        return self.inner.author(batch, batch_id=batch_id, authored_at=authored_at)

    def forget(self, entity_ids: Iterable[UUID]) -> None:
        self.inner.forget(entity_ids)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def seams(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Route the next handle's cold tier to a FlakyTarget and capture its real index."""
    parts: dict = {"target": FlakyTarget()}
    real_open_index = store.open_index

    def open_index(config, directory):  # type: ignore[no-untyped-def]
        parts["index"] = real_open_index(config, directory)
        return parts["index"]

    monkeypatch.setattr(store, "open_index", open_index)
    monkeypatch.setattr(store, "open_target", lambda config, directory: parts["target"])
    return parts


def _shape(m: Moneta, ids: Sequence[UUID], utility: float, attended: int) -> None:
    """Signal so that after the next reduce (same clock) each row has exactly
    ``utility`` and ``attended``: -1 clamps to 0, then +utility is exact."""
    assert attended >= 2
    m.signal_attention(dict.fromkeys(ids, -1.0))
    m.signal_attention(dict.fromkeys(ids, utility))
    for _ in range(attended - 2):
        m.signal_attention(dict.fromkeys(ids, 0.0))


BELOW_01 = float(np.nextafter(0.1, 0.0))
BELOW_03 = float(np.nextafter(0.3, 0.0))


@pytest.mark.parametrize(
    ("utility", "attended", "outcome"),
    [
        (0.1, 2, "kept"),  # prune needs utility < 0.1
        (BELOW_01, 2, "pruned"),
        (0.05, 2, "pruned"),
        (0.0, 2, "pruned"),
        (0.05, 3, "staged"),  # attended 3 is not < 3: not pruned, staged
        (0.3, 3, "kept"),  # stage needs utility < 0.3
        (BELOW_03, 3, "staged"),
        (0.2, 3, "staged"),
        (0.2, 2, "kept"),  # attended 2 is not >= 3, utility 0.2 is not < 0.1
        (0.1, 10, "staged"),
        (1.0, 2, "kept"),
    ],
)
def test_selection_thresholds_at_their_boundaries(
    seams: dict, clock: FakeClock, utility: float, attended: int, outcome: str
) -> None:
    rng = np.random.default_rng(11)
    seams["target"].fail = {1}  # keep staged rows STAGED so the state is visible
    with Moneta(MonetaConfig.ephemeral(clock=clock, auto_sleep=False)) as m:
        v = unit_vector(rng)
        subject = m.deposit("subject", v)
        other = m.deposit("bystander", unit_vector(rng))
        _shape(m, [subject], utility, attended)
        preview = m.preview_sleep_pass()
        report = m.run_sleep_pass()
        assert report.attention_applied == attended
        assert (report.pruned, report.staged) == {
            "kept": (0, 0),
            "pruned": (1, 0),
            "staged": (0, 1),
        }[outcome]
        assert preview.would_prune == ([subject] if outcome == "pruned" else [])
        assert preview.would_stage == ([subject] if outcome == "staged" else [])
        hits = {h.entity_id: h for h in m.query(v, limit=5)}
        assert other in hits and hits[other].state is EntityState.VOLATILE
        if outcome == "pruned":
            assert subject not in hits
            assert (m.stats().hot, m.stats().index_records) == (1, 0)  # index: cold only
        else:
            assert hits[subject].utility == utility
            assert hits[subject].attended_count == attended
            want = EntityState.STAGED_FOR_SYNC if outcome == "staged" else EntityState.VOLATILE
            assert hits[subject].state is want
            manifest = [mem.entity_id for mem in m.get_consolidation_manifest()]
            assert manifest == ([subject] if outcome == "staged" else [])


def test_decay_alone_brings_an_unattended_memory_to_pruning(clock: FakeClock) -> None:
    rng = np.random.default_rng(12)
    with Moneta(MonetaConfig.ephemeral(clock=clock, auto_sleep=False, half_life_seconds=60.0)) as m:
        v = unit_vector(rng)
        e = m.deposit("fading", v)
        clock.advance(60.0 * 3.3)  # 2**-3.3 = 0.1015: still kept
        assert m.run_sleep_pass().pruned == 0
        clock.advance(60.0 * 0.1)  # 2**-3.4 = 0.0947: pruned
        assert m.run_sleep_pass().pruned == 1
        assert m.query(v, limit=5) == []
        assert e not in {h.entity_id for h in m.query(unit_vector(rng), limit=5)}


def test_protected_rows_are_never_auto_selected(seams: dict, clock: FakeClock) -> None:
    rng = np.random.default_rng(13)
    with Moneta(MonetaConfig.ephemeral(clock=clock, auto_sleep=False, half_life_seconds=60.0)) as m:
        v = unit_vector(rng)
        low = m.deposit("pinned, never attended", v, protected_floor=0.05)
        often = m.deposit("pinned, attended", v, protected_floor=0.05)
        plain = m.deposit("plain", v)
        _shape(m, [often], 0.0, 5)
        for _ in range(4):
            clock.advance(3600.0)
            m.run_sleep_pass()
        hits = {h.entity_id: h for h in m.query(v, limit=5)}
        assert set(hits) == {low, often}  # plain was pruned
        assert plain not in hits
        for e in (low, often):
            assert hits[e].state is EntityState.VOLATILE
            assert hits[e].utility == 0.05
        assert hits[often].attended_count == 5
        assert seams["target"].calls == []
        assert m.get_consolidation_manifest() == []


def _stage_many(m: Moneta, rng: np.random.Generator, n: int) -> list[UUID]:
    ids = [m.deposit(f"memory {i}", unit_vector(rng)) for i in range(n)]
    _shape(m, ids, 0.2, 3)
    return ids


def test_batches_hold_at_most_500_and_every_staged_row_is_consolidated(
    seams: dict, clock: FakeClock
) -> None:
    rng = np.random.default_rng(14)
    with Moneta(MonetaConfig.ephemeral(clock=clock, auto_sleep=False)) as m:
        ids = _stage_many(m, rng, 1201)
        report = m.run_sleep_pass()
        calls = seams["target"].calls
        assert [len(c) for c in calls] == [500, 500, 201]
        assert sorted(e for c in calls for e in c) == sorted(ids)
        assert (report.staged, report.consolidated, report.batches) == (1201, 1201, 3)
        assert (report.failed_batches, report.still_staged, report.error) == (0, 0, None)
        assert m.get_consolidation_manifest() == []
        assert m.stats().hot == 0
        records = seams["index"].get(ids)
        assert len(records) == 1201
        assert {r.state for r in records} == {EntityState.CONSOLIDATED}
        assert all(r.usd_link == f"/Memory_{r.entity_id.hex}" for r in records)
        assert len(seams["target"].inner.entries()) == 1201
    with pytest.raises(ValueError, match="batch_size"):
        MonetaConfig.ephemeral(batch_size=501)


def test_failure_in_batch_k_leaves_earlier_consolidated_and_later_staged(
    seams: dict, clock: FakeClock
) -> None:
    rng = np.random.default_rng(15)
    seams["target"].fail = {2}
    with Moneta(MonetaConfig.ephemeral(clock=clock, auto_sleep=False)) as m:
        ids = _stage_many(m, rng, 1201)
        report = m.run_sleep_pass()
        calls = seams["target"].calls
        assert [len(c) for c in calls] == [500, 500]  # batch 3 was not attempted
        first, failed = set(calls[0]), set(calls[1])
        rest = set(ids) - first
        assert len(rest) == 701 and failed <= rest
        assert (report.staged, report.consolidated, report.batches) == (1201, 500, 3)
        assert (report.failed_batches, report.still_staged) == (2, 701)
        assert report.error is not None and "batch 2 of 3" in report.error
        # The manifest is exactly the rows still STAGED.
        manifest = m.get_consolidation_manifest()
        assert {mem.entity_id for mem in manifest} == rest
        assert len(manifest) == 701
        assert {mem.state for mem in manifest} == {EntityState.STAGED_FOR_SYNC}
        stats = m.stats()
        assert (stats.hot, stats.staged, stats.volatile) == (701, 701, 0)
        # The index advanced for batch 1 only (the in-memory index keeps cold rows only).
        index = seams["index"]
        committed = index.get(first)
        assert len(committed) == 500
        assert {r.state for r in committed} == {EntityState.CONSOLIDATED}
        assert index.get(rest) == [] and index.count() == 500
        assert set(seams["target"].inner.entries()) == first
        # The next pass retries what is left.
        report = m.run_sleep_pass()
        assert (report.staged, report.consolidated, report.failed_batches) == (0, 701, 0)
        assert [len(c) for c in seams["target"].calls[2:]] == [500, 201]
        assert m.get_consolidation_manifest() == []
        assert {r.state for r in index.get(ids)} == {EntityState.CONSOLIDATED}
        assert index.count() == 1201
        assert len(seams["target"].inner.entries()) == 1201


def test_sequential_writer_leaves_the_index_untouched_when_authoring_fails() -> None:
    rng = np.random.default_rng(16)
    index: VectorIndex = InMemoryVectorIndex()
    vectors = np.array([unit_vector(rng) for _ in range(3)], dtype=np.float32)
    memories = [
        Memory(uuid.uuid4(), f"m{i}", tuple(vectors[i].tolist()), 0.2, 3, 0.0, 1.0,
               EntityState.STAGED_FOR_SYNC)
        for i in range(3)
    ]  # fmt: skip
    index.upsert(
        [
            VectorRecord(m.entity_id, vectors[i], m.payload, 0.2, 3, 0.0, 1.0, EntityState.VOLATILE)
            for i, m in enumerate(memories)
        ]
    )
    index.commit()
    target = FlakyTarget(fail={1})
    writer = SequentialWriter(target, index)
    with pytest.raises(AuthoringError, match="injected"):
        writer.write_batch(memories, vectors, batch_id="b1", authored_at=1.0)
    assert {r.state for r in index.get(m.entity_id for m in memories)} == {EntityState.VOLATILE}
    assert index.count() == 3
    links = writer.write_batch(memories, vectors, batch_id="b2", authored_at=1.0)
    assert set(links) == {m.entity_id for m in memories}
    records = index.get(m.entity_id for m in memories)
    assert {r.state for r in records} == {EntityState.CONSOLIDATED}
    assert index.count() == 3


def test_idle_trigger_fires_after_more_than_five_seconds_on_the_next_operation(
    clock: FakeClock,
) -> None:
    rng = np.random.default_rng(17)
    config = MonetaConfig.ephemeral(clock=clock, watch_interval_seconds=3600.0)
    with Moneta(config) as m:
        v = unit_vector(rng)
        m.deposit("x", v)
        clock.advance(5.0)  # exactly the window: not "more than"
        m.query(v)
        assert m.stats().sleep_passes == 0
        clock.advance(5.001)
        m.query(v)
        wait_until(lambda: m.stats().sleep_passes == 1, "the idle pass")
        assert m.stats().last_sleep_pass.trigger == "idle"
        # Operator reads are not agent activity and do not run passes.
        clock.advance(60.0)
        m.stats()
        m.preview_sleep_pass()
        assert m.stats().sleep_passes == 1


def test_idle_trigger_is_checked_by_the_watcher_without_any_call(clock: FakeClock) -> None:
    rng = np.random.default_rng(18)
    config = MonetaConfig.ephemeral(clock=clock, watch_interval_seconds=0.01)
    with Moneta(config) as m:
        m.deposit("x", unit_vector(rng))
        clock.advance(5.5)
        wait_until(lambda: m.stats().sleep_passes == 1, "the watcher's idle pass")
        report = m.stats().last_sleep_pass
        assert report.trigger == "idle"
        assert report.at == clock()


def test_pressure_trigger_fires_at_max_entities(clock: FakeClock) -> None:
    rng = np.random.default_rng(19)
    config = MonetaConfig.ephemeral(clock=clock, max_entities=50, watch_interval_seconds=0.01)
    with Moneta(config) as m:
        for i in range(49):
            m.deposit(f"m{i}", unit_vector(rng))
        assert m.stats().sleep_passes == 0  # 49 < 50, and the frozen clock is never idle
        m.deposit("the 50th", unit_vector(rng))
        wait_until(
            lambda: (
                m.stats().last_sleep_pass is not None
                and m.stats().last_sleep_pass.trigger == "pressure"
            ),
            "the pressure pass",
        )
        assert m.stats().volatile == 50  # fresh memories are all kept


def test_auto_sleep_off_never_fires(clock: FakeClock) -> None:
    rng = np.random.default_rng(20)
    config = MonetaConfig.ephemeral(clock=clock, auto_sleep=False, max_entities=5)
    with Moneta(config) as m:
        v = unit_vector(rng)
        for i in range(10):
            m.deposit(f"m{i}", v)
        clock.advance(600.0)
        m.query(v)
        assert m.stats().sleep_passes == 0
        assert m.run_sleep_pass().trigger == "operator"
        assert m.stats().sleep_passes == 1


def test_a_failing_idle_pass_does_not_fail_the_agents_call(
    seams: dict, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(21)
    config = MonetaConfig.ephemeral(clock=clock, watch_interval_seconds=3600.0)
    with Moneta(config) as m:
        index = seams["index"]
        real_maintain = index.maintain
        failures = []

        def maintain() -> None:
            if not failures:
                failures.append("disk full")
                raise OSError("disk full")
            real_maintain()

        index.maintain = maintain
        v = unit_vector(rng)
        first = m.deposit("first", v)
        clock.advance(6.0)
        second = m.deposit("second", v)  # runs the idle pass, which fails
        assert failures == ["disk full"]
        assert "idle sleep pass" in caplog.text
        assert {h.entity_id for h in m.query(v, limit=5)} == {first, second}
        assert m.run_sleep_pass().error is None  # the next pass runs normally
