"""A streamed Messages API request body as bytes, each distinct block encoded once.

Every call of a run sends the same constitution and snapshot blocks (about 1 MB for
this repository). Through `messages.stream(...)` the SDK JSON-encodes the whole body
again for each call, about 10 ms of CPU that sits in front of every call of a
fanned-out wave. Here each text block is encoded once per distinct text (the run's
calls share the same `str` objects, so the cache lookup hashes nothing twice) and the
body is joined from the encoded pieces; `AnthropicBackend` sends it as the raw
content of the same `POST /v1/messages` the SDK's streaming helper makes.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from workers.prompts import ReviewerPrompt


@functools.lru_cache(maxsize=64)
def _text_block(text: str, cache_control: str | None) -> bytes:
    block: dict[str, Any] = {"type": "text", "text": text}
    if cache_control is not None:
        block["cache_control"] = json.loads(cache_control)
    return json.dumps(block).encode()


def _block(block: dict[str, Any]) -> bytes:
    if set(block) <= {"type", "text", "cache_control"} and block.get("type") == "text":
        cc = block.get("cache_control")
        return _text_block(block["text"], None if cc is None else json.dumps(cc, sort_keys=True))
    return json.dumps(block).encode()


def _blocks(blocks: list[dict[str, Any]]) -> bytes:
    return b"[" + b",".join(_block(b) for b in blocks) + b"]"


def request_body(prompt: ReviewerPrompt, model: str, max_tokens: int) -> bytes:
    """The JSON body of one streamed call: `prompt.messages_request()` plus the model,
    the output budget and `"stream": true`."""
    request = prompt.messages_request()
    messages = b",".join(
        b'{"role":' + json.dumps(m["role"]).encode() + b',"content":' + _blocks(m["content"]) + b"}"
        for m in request["messages"]
    )
    return b"".join(
        (
            b'{"model":',
            json.dumps(model).encode(),
            b',"max_tokens":',
            str(int(max_tokens)).encode(),
            b',"stream":true,"system":',
            _blocks(request["system"]),
            b',"messages":[',
            messages,
            b"]}",
        )
    )
