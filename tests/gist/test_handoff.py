"""The sleep pass hands gists off without waiting; deposit and query stay local; the bound."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from moneta import gist
from moneta.gist import GistLedger
from tests.gist.conftest import detail_text, gist_for, vector, wait_until
from tests.support.messages_stub import MessagesStub
from workers.gist_dispatch import EmbeddedGistDispatcher


def test_sleep_pass_enqueues_gist_jobs_without_waiting_for_the_model(
    make_store: Any, dispatcher: EmbeddedGistDispatcher, stub: MessagesStub
) -> None:
    store = make_store(dispatcher)
    m = store.open()
    stub.hold()  # every model call waits until released
    _ids, report = store.consolidate(4)
    # The pass is over while all four model calls are still unanswered.
    assert report.gists_enqueued == 4 and report.gists_deferred == 0
    wait_until(lambda: stub.waiting() == 4, what="4 held model calls")
    assert store.ledger.counts()["pending"] == 4
    assert m.query(vector(0), limit=1)[0].payload == detail_text(0)  # not gisted yet
    stub.release()
    wait_until(lambda: store.ledger.counts()["gisted"] == 4, what="4 gists")
    assert {m.query(vector(i), limit=1)[0].payload for i in range(4)} == {
        gist_for(detail_text(i)) for i in range(4)
    }
    assert len(stub.recorded(status=200)) == 4  # one job per memory


def test_deposit_and_query_make_no_network_call(
    make_store: Any,
    dispatcher: EmbeddedGistDispatcher,
    stub: MessagesStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = make_store(dispatcher)
    m = store.open()
    store.consolidate(3)
    wait_until(lambda: store.ledger.counts()["gisted"] == 3, what="3 gists")
    requests_before = len(stub.recorded())
    me = threading.get_ident()
    connects: list[object] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self: socket.socket, address: object) -> None:
        if threading.get_ident() == me:
            connects.append(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: object) -> int:
        if threading.get_ident() == me:
            connects.append(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    for i in range(10, 30):
        m.deposit(detail_text(i), vector(i))
        hits = m.query(vector(i % 3), limit=3)
        assert hits
    monkeypatch.undo()
    assert connects == []
    assert len(stub.recorded()) == requests_before
    payloads = {h.payload for h in m.query(vector(0), limit=30)}
    assert gist_for(detail_text(0)) in payloads


def test_back_pressure_defers_beyond_the_bound_to_later_passes_on_disk(
    make_store: Any, dispatcher: EmbeddedGistDispatcher, stub: MessagesStub
) -> None:
    store = make_store(dispatcher, gist_max_pending=3)
    store.open()
    stub.hold()
    _ids, report = store.consolidate(10)
    assert (report.gists_enqueued, report.gists_deferred) == (3, 7)
    wait_until(lambda: stub.waiting() == 3, what="3 held model calls")
    assert dispatcher._outstanding == 3  # the sink holds only what it was given
    # A pass while the bound is full hands nothing more.
    again = store.handle.run_sleep_pass()
    assert (again.gists_enqueued, again.gists_deferred) == (3 - 3, 7)
    assert len(stub.recorded()) == 3
    # The deferred ids are in the store's ledger on disk, and survive a restart.
    store.close()
    assert GistLedger(store.directory).counts() == {
        "deferred": 7, "pending": 3, "answered": 0, "gisted": 0, "failed": 0, "skipped": 0
    }  # fmt: skip
    stub.release()  # answers arrive while no handle is open: authored under the store lock
    # Idle means each job has returned, so its store lock is released too (the ledger
    # says "gisted" inside the locked section, a moment before the release).
    assert dispatcher.wait_idle(20.0)
    assert store.ledger.counts()["gisted"] == 3
    m = store.open()
    handed = []
    while store.ledger.counts()["gisted"] < 10:
        report = m.run_sleep_pass()
        handed.append(report.gists_enqueued)
        assert report.gists_enqueued <= 3
        target = 10 - report.gists_deferred
        wait_until(lambda t=target: store.ledger.counts()["gisted"] == t, what=f"{target} gists")
    assert handed == [3, 3, 1]
    assert {m.query(vector(i), limit=1)[0].payload for i in range(10)} == {
        gist_for(detail_text(i)) for i in range(10)
    }
    assert len(stub.recorded(status=200)) == 10


def test_protected_memories_are_gisted_only_when_the_operator_asks(
    make_store: Any, dispatcher: EmbeddedGistDispatcher, stub: MessagesStub
) -> None:
    store = make_store(dispatcher)
    m = store.open()
    pinned = m.deposit(detail_text(50), vector(50), protected_floor=0.5)
    m.protect(pinned)  # into cortex_protected.usda
    _ids, _report = store.consolidate(2)
    wait_until(lambda: store.ledger.counts()["gisted"] == 2, what="2 gists")
    assert store.ledger.row(pinned) is None  # the pass never handed it over
    states = gist.request(m, [pinned])
    assert states == {pinned: "skipped"}
    row = store.ledger.row(pinned)
    assert row is not None and row.state == "skipped" and "operator" in (row.reason or "")
    assert gist.read_fidelity(m._parts.target, pinned) is None
    assert len(stub.recorded()) == 2
    states = gist.request(m, [pinned], include_protected=True)
    assert states[pinned] in ("pending", "gisted")
    wait_until(lambda: store.ledger.counts()["gisted"] == 3, what="the protected gist")
    view = gist.read_fidelity(m._parts.target, pinned)
    assert view is not None and view.selection == "gist" and view.detail == detail_text(50)
    hit = m.query(vector(50), limit=1)[0]
    assert hit.entity_id == pinned and hit.payload == gist_for(detail_text(50))
    assert hit.protected_floor == 0.5


def test_gist_protected_config_is_the_operator_default(
    make_store: Any, dispatcher: EmbeddedGistDispatcher, stub: MessagesStub
) -> None:
    store = make_store(dispatcher, gist_protected=True)
    m = store.open()
    pinned = m.deposit(detail_text(60), vector(60), protected_floor=0.5)
    m.protect(pinned)
    assert gist.request(m, [pinned])[pinned] in ("pending", "gisted")
    wait_until(lambda: store.ledger.counts()["gisted"] == 1, what="the protected gist")


def test_sink_is_a_config_field_checked_on_creation(tmp_path: Any) -> None:
    from moneta import MonetaConfig

    with pytest.raises(TypeError, match="gist_sink"):
        MonetaConfig(storage_uri=str(tmp_path), gist_sink=object())
    with pytest.raises(ValueError, match="gist_max_pending"):
        MonetaConfig(storage_uri=str(tmp_path), gist_max_pending=0)
    with pytest.raises(TypeError, match="gist_protected"):
        MonetaConfig(storage_uri=str(tmp_path), gist_protected=1)


def test_gist_sink_needs_the_usd_cold_tier(dispatcher: EmbeddedGistDispatcher) -> None:
    from moneta import Moneta, MonetaConfig

    with pytest.raises(ValueError, match="gist_sink"):
        Moneta(MonetaConfig.ephemeral(gist_sink=dispatcher))


def test_sink_submit_runs_on_the_pass_thread_only_once_per_memory(
    make_store: Any, stub: MessagesStub
) -> None:
    """A recording sink: what exactly does the pass hand over?"""

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[str, list[Any]]] = []

        def submit(self, store_path: str, requests: Any) -> None:
            self.calls.append((store_path, list(requests)))

    sink = Recorder()
    store = make_store(sink)
    m = store.open()
    ids, report = store.consolidate(5)
    assert report.gists_enqueued == 5
    assert len(sink.calls) == 1
    path, requests = sink.calls[0]
    assert path == str(store.directory.resolve())
    assert {r.entity_id for r in requests} == set(ids)
    assert {r.detail for r in requests} == {detail_text(i) for i in range(5)}
    assert m.run_sleep_pass().gists_enqueued == 0  # pending ones are not handed twice
    assert len(sink.calls) == 1
