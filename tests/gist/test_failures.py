"""Failed, timed-out and malformed answers leave detail selected with the reason; prompts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from moneta import gist
from tests.gist.conftest import detail_text, gist_for, vector, wait_until
from tests.support.messages_stub import MessagesStub, Reply
from workers.gist import DEFAULT_GIST_PROMPT, GistSettings, gist_job, parse_answer
from workers.gist_dispatch import EmbeddedGistDispatcher

TWO_TRIES = GistSettings(
    max_attempts=2, retry_initial_delay=0.01, retry_max_delay=0.05, request_timeout=10.0
)


@pytest.fixture
def one_try(stub: MessagesStub) -> Iterator[EmbeddedGistDispatcher]:
    settings = GistSettings(max_attempts=1, request_timeout=0.5)
    with EmbeddedGistDispatcher(settings, workers=2) as d:
        yield d


CASES = {
    "overloaded twice": ([Reply(status=529), Reply(status=529)], "HTTP 529"),
    "bad request": ([Reply(status=400)], "HTTP 400"),
    "no gist element": ([Reply(text="Sorry, I cannot summarise this.")], "no <gist> element"),
    "empty gist": ([Reply(text="<gist>  </gist>")], "empty <gist> element"),
    "not shorter": ([Reply(text="<gist>" + "x" * 400 + "</gist>")], "not shorter"),
    "cut at max_tokens": (
        [Reply(text="<gist>Alice and</gist>", stop_reason="max_tokens")],
        "cut off at max_tokens",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_failed_or_malformed_answer_leaves_detail_selected_with_the_reason(
    case: str, make_store: Any, stub: MessagesStub
) -> None:
    replies, expected = CASES[case]
    stub.script(replies)
    with EmbeddedGistDispatcher(TWO_TRIES, workers=1) as dispatcher:
        store = make_store(dispatcher)
        m = store.open()
        ids, report = store.consolidate(1)
        assert report.gists_enqueued == 1
        wait_until(lambda: store.ledger.counts()["failed"] == 1, what="a failed gist")
    row = store.ledger.row(ids[0])
    assert row is not None and row.state == "failed" and expected in (row.reason or "")
    view = gist.read_fidelity(m._parts.target, ids[0])
    assert view is not None
    assert (view.selection, view.detail, view.gist) == ("detail", detail_text(0), None)
    assert view.status == "failed" and expected in (view.reason or "")
    assert m.query(vector(0), limit=1)[0].payload == detail_text(0)
    retried = case == "overloaded twice"
    assert len(stub.recorded()) == (2 if retried else 1)


def test_timed_out_answer_leaves_detail_selected_with_the_reason(
    make_store: Any, one_try: EmbeddedGistDispatcher, stub: MessagesStub
) -> None:
    stub.script([Reply(latency=3.0)])  # longer than request_timeout=0.5
    store = make_store(one_try)
    m = store.open()
    ids, _ = store.consolidate(1)
    wait_until(lambda: store.ledger.counts()["failed"] == 1, what="a timed-out gist")
    row = store.ledger.row(ids[0])
    assert row is not None and "Timeout" in (row.reason or ""), row
    view = gist.read_fidelity(m._parts.target, ids[0])
    assert view is not None and view.selection == "detail" and "Timeout" in (view.reason or "")
    assert m.query(vector(0), limit=1)[0].payload == detail_text(0)


def test_a_failed_rerun_keeps_an_earlier_good_gist(
    make_store: Any, dispatcher: EmbeddedGistDispatcher, stub: MessagesStub
) -> None:
    store = make_store(dispatcher)
    m = store.open()
    ids, _ = store.consolidate(1)
    wait_until(lambda: store.ledger.counts()["gisted"] == 1, what="a gist")
    stub.script([Reply(status=400)])
    gist.request(m, ids)
    wait_until(lambda: store.ledger.counts()["failed"] == 1, what="the failed re-run")
    view = gist.read_fidelity(m._parts.target, ids[0])
    assert view is not None
    assert (view.selection, view.gist, view.status) == ("gist", gist_for(detail_text(0)), "failed")
    assert m.query(vector(0), limit=1)[0].payload == gist_for(detail_text(0))


def test_default_prompt_asks_for_a_faithful_shorter_restatement(
    make_store: Any, dispatcher: EmbeddedGistDispatcher, stub: MessagesStub
) -> None:
    for words in ("faithfully", "fewer words", "name", "number", "decision", "add nothing"):
        assert words in DEFAULT_GIST_PROMPT
    store = make_store(dispatcher)
    store.open()
    ids, _ = store.consolidate(1)
    wait_until(lambda: store.ledger.counts()["gisted"] == 1, what="a gist")
    (request,) = stub.recorded(status=200)
    assert request.payload["system"] == DEFAULT_GIST_PROMPT
    assert request.payload["messages"] == [
        {"role": "user", "content": f'<memory id="{ids[0].hex}">\n{detail_text(0)}\n</memory>'}
    ]


def test_prompt_is_configurable(make_store: Any, stub: MessagesStub) -> None:
    custom = "Summarise in one line; keep all figures. Reply inside <gist></gist>."
    with EmbeddedGistDispatcher(GistSettings(prompt=custom, model="m-test")) as dispatcher:
        store = make_store(dispatcher)
        store.open()
        store.consolidate(2)
        wait_until(lambda: store.ledger.counts()["gisted"] == 2, what="2 gists")
    assert [r.payload["system"] for r in stub.recorded(status=200)] == [custom, custom]
    assert {r.payload["model"] for r in stub.recorded(status=200)} == {"m-test"}


def test_gist_job_rejects_bad_payloads_before_any_call(stub: MessagesStub) -> None:
    good = {"store": "/x", "entity_id": "0" * 32, "detail": "d", "settings": {}}
    with pytest.raises(TypeError, match="payload"):
        gist_job([])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="missing key"):
        gist_job({k: v for k, v in good.items() if k != "detail"})
    with pytest.raises(ValueError, match=r"payload\.entity_id"):
        gist_job({**good, "entity_id": "nope"})
    with pytest.raises(ValueError, match="unknown key"):
        gist_job({**good, "settings": {"temperature": 1}})
    with pytest.raises(ValueError, match="max_attempts"):
        GistSettings(max_attempts=0)
    assert stub.recorded() == []


def test_parse_answer_takes_the_gist_element() -> None:
    assert parse_answer("ok <gist> Alice: 3 </gist>", "end_turn", "Alice said 3 things") == (
        "Alice: 3"
    )
    with pytest.raises(ValueError, match="NUL"):
        parse_answer("<gist>a\x00b</gist>", "end_turn", "a long detail text")
