"""The pre-encoded request body is the JSON the SDK's streaming helper would send."""

from __future__ import annotations

import json

from workers.prompts import ReviewerPrompt
from workers.request_body import _text_block, request_body


def prompt(task: str, ttl: str = "1h") -> ReviewerPrompt:
    return ReviewerPrompt(
        role="architect",
        loop=2,
        theme="concurrency-atomicity",
        system='constitution — « rules » "quoted"\n' * 50,
        snapshot='<repository_snapshot>\n<file path="a.py">\n1 | x = "é"\\n\n</file>\n' * 200,
        loop_block='<loop number="2">\nlens\n</loop>\n',
        task=task,
        cache_ttl=ttl,
    )


def test_body_decodes_to_the_messages_request_with_model_budget_and_stream() -> None:
    for ttl in ("1h", "5m"):
        p = prompt("task \u2028 with a line separator and a tab\t", ttl)
        body = json.loads(request_body(p, "claude-opus-4-1", 8192))
        assert body == {
            "model": "claude-opus-4-1",
            "max_tokens": 8192,
            "stream": True,
            **p.messages_request(),
        }


def test_shared_blocks_are_encoded_once_per_distinct_text() -> None:
    _text_block.cache_clear()
    first = prompt("task one")
    second = ReviewerPrompt(**{**first.to_dict(), "task": "task two", "role": "usd"})
    a = request_body(first, "m", 10)
    b = request_body(second, "m", 10)
    info = _text_block.cache_info()
    # system, snapshot and loop block encoded by the first call and reused by the
    # second; each task is its own.
    assert (info.misses, info.hits) == (5, 3)
    assert a.split(b'"task one"')[0] == b.split(b'"task two"')[0]
