"""Run the anthropic SDK's one-time setup in a queue worker before it takes a job.

The SDK defers work to its first use in a process: the HTTP transport imports
`httpcore2` when the first client is built, and decoding the first streamed events
builds pydantic validators for the Messages event and content types (about 0.1 s of
CPU on an idle core, several times that when a loop's jobs start together on a busy
machine). Left alone, every worker's first job pays it on its way to the model.
`prime_sdk` makes one streamed Messages call through
`workers.backends.AnthropicBackend` — the code a reviewer job runs — whose HTTP client
answers in memory (`httpx2.MockTransport`) with a canned event stream, so client
construction, request encoding, SSE decoding and event accumulation have all run once
in the process before it registers as a worker. Nothing touches the network.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import anyio
import httpx2

from workers.backends import AnthropicBackend, CallSettings, ModelAnswer, shared_ssl_context
from workers.prompts import ReviewerPrompt

PRIME_BASE_URL = "http://sdk-prime.invalid"  # never resolved: the transport answers in memory
PRIME_MODEL = "sdk-prime"
PRIME_TEXT = "Nothing to report.\n\n```json\n[]\n```\n"
PRIME_USAGE = {
    "input_tokens": 3,
    "output_tokens": 1,
    "cache_creation_input_tokens": 2,
    "cache_read_input_tokens": 1,
}


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def canned_stream(text: str = PRIME_TEXT) -> bytes:
    """A streamed Messages response with every event type a reviewer call receives."""
    start = {
        "id": "msg_sdk_prime",
        "type": "message",
        "role": "assistant",
        "model": PRIME_MODEL,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": PRIME_USAGE,
    }
    half = len(text) // 2
    events = [
        _sse("message_start", {"type": "message_start", "message": start}),
        _sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        _sse("ping", {"type": "ping"}),
        *(
            _sse(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": part},
                },
            )
            for part in (text[:half], text[half:])
        ),
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {**PRIME_USAGE, "output_tokens": 9},
            },
        ),
        _sse("message_stop", {"type": "message_stop"}),
    ]
    return b"".join(events)


def _answer(request: httpx2.Request) -> httpx2.Response:
    if request.method != "POST" or not request.url.path.endswith("/v1/messages"):
        return httpx2.Response(404, json={"type": "error", "error": {"type": "not_found_error"}})
    return httpx2.Response(
        200,
        headers={"content-type": "text/event-stream", "request-id": "req_sdk_prime"},
        content=canned_stream(),
    )


def _prompt() -> ReviewerPrompt:
    # Same block layout as a review (cache breakpoints included), a few bytes long.
    return ReviewerPrompt(
        role="prime",
        loop=0,
        theme="prime",
        system="Prime the SDK.",
        snapshot="(no snapshot)",
        loop_block="(no loop)",
        task="Answer with an empty finding list.",
    )


async def _prime() -> ModelAnswer:
    # The real transport is built (and closed) too: constructing it imports httpcore2.
    await anthropic.DefaultAsyncHttpxClient(verify=shared_ssl_context()).aclose()
    client = anthropic.AsyncAnthropic(
        api_key="sdk-prime",
        base_url=PRIME_BASE_URL,
        max_retries=0,
        http_client=anthropic.DefaultAsyncHttpxClient(transport=httpx2.MockTransport(_answer)),
    )
    backend = AnthropicBackend(
        CallSettings(backend="anthropic", model=PRIME_MODEL, max_tokens=16), client=client
    )
    started: list[bool] = []
    try:
        answer = await backend.complete(_prompt(), lambda: started.append(True))
    finally:
        await backend.aclose()
    if answer.text != PRIME_TEXT or not started:
        raise RuntimeError(
            f"SDK priming: the canned stream decoded to {answer.text!r} "
            f"(on_started called: {bool(started)}); the SDK's streaming API has changed"
        )
    return answer


def prime_sdk() -> ModelAnswer:
    """One in-memory streamed call through the SDK; returns the decoded answer."""
    return anyio.run(_prime)
