"""The loopback stub's body decoder: the same payloads and errors as `json.loads`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.messages_stub import MEMO_MIN_CHARS, BodyDecoder, _assignment


def body(snapshot: str, task: str) -> bytes:
    cc = {"type": "ephemeral", "ttl": "1h"}
    return json.dumps(
        {
            "model": "m",
            "max_tokens": 10,
            "stream": True,
            "system": [{"type": "text", "text": "sys " * 2000, "cache_control": cc}],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": snapshot, "cache_control": cc},
                        {"type": "text", "text": task},
                    ],
                }
            ],
        }
    ).encode()


SNAPSHOT = 'file "a.py"\n\tprint("\\u00e9 \u00e9 \U0001f600")\n' * (MEMO_MIN_CHARS // 10)


def test_repeated_large_blocks_decode_as_json_loads_does() -> None:
    decoder = BodyDecoder()
    bodies = [
        body(SNAPSHOT, '<assignment role="architect" loop="1">'),
        body(SNAPSHOT, '<assignment role="test" loop="1">'),  # snapshot from the memo
        body(SNAPSHOT + "x", '<assignment role="usd" loop="2">'),  # same start, other text
        body(SNAPSHOT[:-1], '<assignment role="usd" loop="3">'),  # a prefix of the memo entry
    ]
    decoded = [decoder.loads(b) for b in bodies]
    assert decoded == [json.loads(b) for b in bodies]
    assert [_assignment(p) for p in decoded] == [
        ("architect", 1),
        ("test", 1),
        ("usd", 2),
        ("usd", 3),
    ]
    # A memo hit is a copy: changing one request's payload leaves the others alone.
    decoded[1]["messages"][0]["content"][0]["cache_control"]["ttl"] = "5m"
    again = decoder.loads(bodies[0])
    assert again["messages"][0]["content"][0]["cache_control"]["ttl"] == "1h"
    assert again == json.loads(bodies[0])


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"  ",
        b"{",
        b'{"a": 1,}',
        b'{"a": 1} trailing',
        b'{"a": [1, 2',
        b"\xef\xbb\xbf" + body(SNAPSHOT, "t"),
        body(SNAPSHOT, "t").replace(b'"max_tokens"', b"max_tokens"),
        '{"a": "\u00e9"}'.encode("utf-16"),
        b'{"a": NaN, "b": [1, {"c": [2, {"d": "e"}]}], "a": 3}',
        b'[{"x": 1}, "s", 2.5, null, true]',
        b'"just a string"',
        b'{"bad": "\x01"}',
        b"\xff\xfe\xfa",
    ],
)
def test_other_bodies_decode_or_fail_as_json_loads_does(raw: bytes) -> None:
    def outcome(loads: Callable[[bytes], Any]) -> tuple[str, object]:
        try:
            return ("value", loads(raw))
        except Exception as exc:
            return ("error", (type(exc), str(exc)))

    decoder = BodyDecoder()
    decoder.loads(body(SNAPSHOT, "t"))  # the memo holds the large blocks
    assert outcome(decoder.loads) == outcome(json.loads)
