"""A scriptable Messages-API server on loopback, for driving the real `anthropic` SDK.

It speaks the parts of `POST /v1/messages` a reviewer call uses — streaming (SSE)
and plain JSON — and lets a test script each request: latency, HTTP errors (529,
429, 400, ...) with `retry-after`, and the answer text chosen from the request's
role and loop (read from the prompt's `<assignment role=".." loop="..">` tag).
Delays (time to first event, latency) count from the request's arrival, so the
stub's own parsing is inside them, as a real server's is.
Every request body is recorded byte for byte.

Prompt caching is simulated the way the API documents it: each `cache_control`
breakpoint ends a cacheable prefix (tools, system, then messages, in order); a
prefix becomes readable only once a response to a request carrying it has
*started* (the `message_start` event), lives for its TTL (refreshed on a hit), and
nothing below `min_cacheable_tokens` is cached. Usage reports
`cache_creation_input_tokens` for the part written and `cache_read_input_tokens`
for the part read; tokens are estimated as UTF-8 bytes / `bytes_per_token`.

The stub stands in for servers whose CPU is not the caller's, so what it repeats for
every request is done once per distinct content: request bodies are decoded with large
values (the ~1 MB snapshot block every call of a run carries) taken from a memo of
their exact source text (`BodyDecoder`), and a text's UTF-8 length, digest and
`<assignment>` tag are kept per text (`_text_facts`). Answers are the same as without
the memos; only the stub's CPU per request changes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from json.decoder import scanstring
from typing import Any, NamedTuple, Self

ASSIGNMENT_RE = re.compile(r'<assignment role="([a-z]+)" loop="(\d+)"')
EMPTY_ANSWER = "Nothing to report.\n\n```json\n[]\n```\n"

AnswerFn = Callable[[str | None, int | None, dict[str, Any]], str]

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass(slots=True)
class Reply:
    """One scripted response. `status` != 200 sends an API error body."""

    status: int = 200
    text: str | None = None  # answer text; None: the stub's answer function decides
    retry_after: str | None = None
    latency: float | None = None  # seconds; None: the stub's default
    stop_reason: str = "end_turn"
    stream_error: str | None = None  # e.g. "overloaded_error": sent as an SSE error event


@dataclass(slots=True)
class RecordedRequest:
    """A request as received, with what the stub answered."""

    body: bytes
    payload: dict[str, Any]
    role: str | None
    loop: int | None
    received_at: float
    headers: dict[str, str]
    status: int = 0
    path: str = ""
    usage: dict[str, int] | None = None
    started_at: float = 0.0  # when the response started (its prefixes became cached)
    answered_at: float = 0.0


@dataclass(slots=True)
class _Rule:
    role: str | None
    loop: int | None
    replies: list[Reply]

    def matches(self, role: str | None, loop: int | None) -> bool:
        return (self.role is None or self.role == role) and (self.loop is None or self.loop == loop)


@dataclass(slots=True)
class _Hold:
    role: str | None
    loop: int | None
    gate: threading.Event = field(default_factory=threading.Event)
    waiting: int = 0
    drop: bool = False


def _sleep_until(deadline: float) -> None:
    """Sleep until `deadline` (monotonic seconds), not at all if it has passed."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


MEMO_MIN_CHARS = 4096  # values and texts shorter than this are cheap to redo
MEMO_MAX_CHARS = 16 * 1024 * 1024  # text each memo keeps at most (a snapshot is ~1 M)


class _TextFacts(NamedTuple):
    utf8_len: int
    sha256: bytes  # of the UTF-8 bytes
    assignment: tuple[str, int] | None  # the text's last `<assignment>` tag


_facts_memo: OrderedDict[str, _TextFacts] = OrderedDict()
_facts_chars = 0
_facts_lock = threading.Lock()


def _text_facts(text: str) -> _TextFacts:
    """What the stub derives from a prompt text, computed once per distinct large text.

    Keyed by the text itself: a text decoded from the body memo is the same object in
    every request, so its lookup reuses its cached hash and compares by identity.
    """
    global _facts_chars
    if len(text) >= MEMO_MIN_CHARS:
        with _facts_lock:
            facts = _facts_memo.get(text)
            if facts is not None:
                _facts_memo.move_to_end(text)
                return facts
    raw = text.encode("utf-8")
    found = None
    for m in ASSIGNMENT_RE.finditer(text):
        found = (m.group(1), int(m.group(2)))
    facts = _TextFacts(len(raw), hashlib.sha256(raw).digest(), found)
    if len(text) >= MEMO_MIN_CHARS:
        with _facts_lock:
            if text not in _facts_memo:
                _facts_memo[text] = facts
                _facts_chars += len(text)
            while _facts_chars > MEMO_MAX_CHARS and len(_facts_memo) > 1:
                _facts_chars -= len(_facts_memo.popitem(last=False)[0])
    return facts


def _assignment(payload: dict[str, Any]) -> tuple[str | None, int | None]:
    """Role and loop from the last `<assignment>` tag of the request's user text."""
    found: tuple[str | None, int | None] = (None, None)
    for message in payload.get("messages", []):
        content = message.get("content")
        texts = (
            [content]
            if isinstance(content, str)
            else [b.get("text", "") for b in content or [] if isinstance(b, dict)]
        )
        for text in texts:
            if isinstance(text, str) and text:
                tag = _text_facts(text).assignment
                if tag is not None:
                    found = tag
    return found


_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's insignificant whitespace, as `json` has it
_WALK_DEPTH = 4  # containers walked here: body, messages, a message, its content


def _skip(s: str, idx: int) -> int:
    m = _WHITESPACE.match(s, idx)
    return m.end() if m else idx


class _NotFast(Exception):
    """The body is not plain JSON text this decoder walks; `json.loads` decides."""


def _fresh(value: Any) -> Any:
    """A copy of a memoized value's dicts and lists (its strings are immutable), so no
    two requests' payloads share a mutable part."""
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fresh(v) for v in value]
    return value


class BodyDecoder:
    """`json.loads` for request bodies, with each large value decoded once.

    The body's outer containers (the request object, `messages`, each message and its
    `content` list) are walked here; every value inside them is decoded by `json`'s C
    scanner, and one of `MEMO_MIN_CHARS` or more is kept with its exact source text.
    A later body holding the same source text at a value's position gets the same
    value without decoding it: a JSON value's extent and meaning depend only on its
    own text. Anything unusual (invalid JSON, other encodings' quirks) goes to
    `json.loads`, so results and errors are exactly `json.loads`'s.
    """

    def __init__(self) -> None:
        self._scan = json.JSONDecoder().scan_once
        self._memo: dict[str, list[tuple[str, Any]]] = {}  # first 64 chars -> entries
        self._chars = 0
        self._lock = threading.Lock()

    def loads(self, body: bytes) -> Any:
        try:
            text = body.decode(json.detect_encoding(body), "surrogatepass")
            value, end = self._value(text, _skip(text, 0), 0)
            if _skip(text, end) != len(text):
                raise _NotFast
        except (_NotFast, ValueError, StopIteration, IndexError):
            return json.loads(body)
        return value

    def _value(self, s: str, idx: int, depth: int) -> tuple[Any, int]:
        c = s[idx]
        if depth < _WALK_DEPTH and c == "{":
            return self._object(s, idx + 1, depth + 1)
        if depth < _WALK_DEPTH and c == "[":
            return self._array(s, idx + 1, depth + 1)
        if c not in '{["':
            return self._scan(s, idx)
        key = s[idx : idx + 64]
        with self._lock:
            entries = tuple(self._memo.get(key, ()))
        for source, value in entries:
            if s.startswith(source, idx):
                return _fresh(value), idx + len(source)
        value, end = self._scan(s, idx)
        if end - idx >= MEMO_MIN_CHARS:
            with self._lock:
                if self._chars + end - idx > MEMO_MAX_CHARS:
                    self._memo.clear()
                    self._chars = 0
                self._memo.setdefault(key, []).append((s[idx:end], _fresh(value)))
                self._chars += end - idx
        return value, end

    def _object(self, s: str, idx: int, depth: int) -> tuple[dict[str, Any], int]:
        obj: dict[str, Any] = {}
        idx = _skip(s, idx)
        if s[idx] == "}":
            return obj, idx + 1
        while True:
            if s[idx] != '"':
                raise _NotFast
            key, idx = scanstring(s, idx + 1)
            idx = _skip(s, idx)
            if s[idx] != ":":
                raise _NotFast
            idx = _skip(s, idx + 1)
            obj[key], idx = self._value(s, idx, depth)
            idx = _skip(s, idx)
            c = s[idx]
            if c == "}":
                return obj, idx + 1
            if c != ",":
                raise _NotFast
            idx = _skip(s, idx + 1)

    def _array(self, s: str, idx: int, depth: int) -> tuple[list[Any], int]:
        out: list[Any] = []
        idx = _skip(s, idx)
        if s[idx] == "]":
            return out, idx + 1
        while True:
            value, idx = self._value(s, idx, depth)
            out.append(value)
            idx = _skip(s, idx)
            c = s[idx]
            if c == "]":
                return out, idx + 1
            if c != ",":
                raise _NotFast
            idx = _skip(s, idx + 1)


def _blocks(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Prompt blocks in cache order: tools, system, then each message's content."""
    blocks: list[dict[str, Any]] = [dict(t) for t in payload.get("tools", []) or []]
    system = payload.get("system")
    if isinstance(system, str):
        blocks.append({"type": "text", "text": system})
    elif isinstance(system, list):
        blocks.extend(dict(b) for b in system)
    for message in payload.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            blocks.append({"type": "text", "text": content, "_role": message.get("role")})
        else:
            for b in content or []:
                blocks.append({**b, "_role": message.get("role")})
    return blocks


def message_body(
    message_id: str, model: str, text: str, stop_reason: str | None, usage: dict[str, int]
) -> dict[str, Any]:
    """A complete `Message` as the API returns it (plain JSON reply or a batch result),
    with `usage` given in `USAGE_KEYS` terms (input, output, cache_write, cache_read)."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage["input"],
            "output_tokens": usage["output"],
            "cache_creation_input_tokens": usage["cache_write"],
            "cache_read_input_tokens": usage["cache_read"],
        },
    }


class MessagesStub:
    """The server. Use as a context manager; `url` is the base URL for the SDK."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        first_event_delay: float = 0.0,
        answer: AnswerFn | None = None,
        min_cacheable_tokens: int = 1024,
        bytes_per_token: float = 4.0,
    ) -> None:
        self.latency = latency
        self.first_event_delay = first_event_delay
        self.answer: AnswerFn = answer or (lambda role, loop, payload: EMPTY_ANSWER)
        self.min_cacheable_tokens = min_cacheable_tokens
        self.count_tokens = True  # serve POST /v1/messages/count_tokens (False: 404)
        self.bytes_per_token = bytes_per_token
        self.requests: list[RecordedRequest] = []
        self.answer_errors: list[str] = []
        self._rules: list[_Rule] = []
        self._holds: list[_Hold] = []
        self._cache: dict[str, float] = {}  # prefix key -> expiry (monotonic seconds)
        self.decoder = BodyDecoder()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------

    def handler_base(self) -> type[BaseHTTPRequestHandler]:
        """The request handler class this stub serves with; a subclass adding endpoints
        returns its own handler, and `start` serves it the same way."""
        return _Handler

    def start(self) -> Self:
        # A handler class per stub, so concurrent stubs never share an `owner`.
        handler = type("Handler", (self.handler_base(),), {"owner": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release(drop=True)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "stub not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- scripting -------------------------------------------------------------------

    def script(
        self, replies: list[Reply], *, role: str | None = None, loop: int | None = None
    ) -> None:
        """Answer the next requests matching (role, loop) with `replies`, in order."""
        with self._lock:
            self._rules.append(_Rule(role, loop, list(replies)))

    def hold(self, *, role: str | None = None, loop: int | None = None) -> None:
        """Keep matching requests waiting, before any byte is answered, until `release`."""
        with self._lock:
            self._holds.append(_Hold(role, loop))

    def waiting(self) -> int:
        with self._lock:
            return sum(h.waiting for h in self._holds)

    def release(self, *, drop: bool = False) -> None:
        """Let held requests go on, or with `drop` close them unanswered (no cache entry)."""
        with self._lock:
            for h in self._holds:
                h.drop = drop
                h.gate.set()
            self._holds = []

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    # --- what happened -----------------------------------------------------------------

    def recorded(self, *, status: int | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if status is None or r.status == status]

    def usage_totals(self) -> dict[str, int]:
        total = {"input": 0, "output": 0, "cache_write": 0, "cache_read": 0}
        for r in self.recorded(status=200):
            for k in total:
                total[k] += (r.usage or {}).get(k, 0)
        return total

    # --- internals ---------------------------------------------------------------------

    def _next_reply(self, role: str | None, loop: int | None) -> Reply:
        with self._lock:
            for rule in self._rules:
                if rule.replies and rule.matches(role, loop):
                    return rule.replies.pop(0)
        return Reply()

    def _hold_for(self, role: str | None, loop: int | None) -> _Hold | None:
        with self._lock:
            for h in self._holds:
                if (h.role is None or h.role == role) and (h.loop is None or h.loop == loop):
                    h.waiting += 1
                    return h
        return None

    def _tokens(self, block: dict[str, Any]) -> int:
        text = block.get("text")
        if isinstance(text, str):
            return math.ceil(_text_facts(text).utf8_len / self.bytes_per_token)
        text = json.dumps({k: v for k, v in block.items() if k != "cache_control"})
        return math.ceil(len(text.encode("utf-8")) / self.bytes_per_token)

    def _cache_plan(self, payload: dict[str, Any]) -> tuple[dict[str, int], list[tuple[str, str]]]:
        """Usage of a request and the (prefix key, ttl) entries its response creates."""
        blocks = _blocks(payload)
        # A prefix's key chains the digests of its blocks (each block's from its
        # type, message role and content), so it names exactly that prefix's content.
        key = hashlib.sha256(str(payload.get("model")).encode()).digest()
        cumulative: list[int] = []
        keys: list[str] = []
        total = 0
        breakpoints: list[tuple[int, str]] = []
        for i, block in enumerate(blocks):
            cc = block.get("cache_control")
            text = block.get("text")
            if isinstance(text, str):
                head = f"{block.get('type')}|{block.get('_role')}|{len(text)}|".encode()
                part = head + _text_facts(text).sha256
            else:
                canonical = {k: v for k, v in block.items() if k != "cache_control"}
                part = json.dumps(canonical, sort_keys=True).encode()
            key = hashlib.sha256(key + hashlib.sha256(part).digest()).digest()
            total += self._tokens(block)
            cumulative.append(total)
            keys.append(key.hex())
            if isinstance(cc, dict):
                breakpoints.append((i, str(cc.get("ttl", "5m"))))
        now = time.monotonic()
        read = 0
        with self._lock:
            for i, _ttl in reversed(breakpoints):
                expiry = self._cache.get(keys[i])
                if expiry is not None and expiry > now:
                    read = cumulative[i]
                    break
        creates = [
            (keys[i], ttl) for i, ttl in breakpoints if cumulative[i] >= self.min_cacheable_tokens
        ]
        last = max((cumulative[i] for i, _ in breakpoints), default=0)
        cached_total = last if last >= self.min_cacheable_tokens else 0
        write = max(0, cached_total - read)
        usage = {
            "input": total - read - write,
            "cache_write": write,
            "cache_read": read,
            "output": 0,
        }
        return usage, creates

    def _register(self, creates: list[tuple[str, str]]) -> None:
        now = time.monotonic()
        with self._lock:
            for key, ttl in creates:
                self._cache[key] = now + (3600.0 if ttl == "1h" else 300.0)


class _Handler(BaseHTTPRequestHandler):
    owner: MessagesStub
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Events go out as separate small writes; without NODELAY, Nagle's algorithm and
        # delayed ACKs would add ~40 ms per event that no real server adds.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        """`GET /stub/stats`: request counts and usage totals, for a stub in another process."""
        if self.path != "/stub/stats":
            self._json(404, {"type": "error", "error": {"type": "not_found_error"}})
            return
        stub = self.owner
        statuses: dict[str, int] = {}
        for r in stub.recorded():
            statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
        self._json(
            200,
            {"requests": len(stub.recorded()), "statuses": statuses, "usage": stub.usage_totals()},
        )

    def do_POST(self) -> None:
        arrived = time.monotonic()  # the request line and headers are in
        stub = self.owner
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        received = time.monotonic()
        try:
            payload = stub.decoder.loads(body)
        except json.JSONDecodeError:
            payload = {}
        role, loop = _assignment(payload) if isinstance(payload, dict) else (None, None)
        record = RecordedRequest(
            body=body,
            payload=payload if isinstance(payload, dict) else {},
            role=role,
            loop=loop,
            received_at=received,
            headers={k.lower(): v for k, v in self.headers.items()},
            path=self.path,
        )
        with stub._lock:
            stub.requests.append(record)
        if len(body) < length:  # the client went away mid-request (e.g. it was killed)
            record.status = -1
            self.close_connection = True
            return
        if self.path.split("?")[0] == "/v1/messages/count_tokens" and stub.count_tokens:
            # Token counting: the input tokens this stub would bill, with nothing cached.
            record.status = 200
            blocks = _blocks(record.payload)
            self._json(200, {"input_tokens": sum(stub._tokens(b) for b in blocks)})
            return
        if self.path.split("?")[0] != "/v1/messages":
            self._error(record, 404, None, f"no route {self.path}")
            return
        if not isinstance(payload, dict) or not payload:
            self._error(record, 400, None, "request body is not a JSON object")
            return
        # Delays count from the request's arrival (or a hold's release), so reading and
        # parsing the body are part of the simulated latency, as a server's are.
        t0 = arrived
        hold = stub._hold_for(role, loop)
        if hold is not None:
            hold.gate.wait(timeout=120)
            if hold.drop or not hold.gate.is_set():
                record.status = -1  # abandoned: the client went away while it was held
                self.close_connection = True
                return
            t0 = time.monotonic()
        reply = stub._next_reply(role, loop)
        latency = stub.latency if reply.latency is None else reply.latency
        if reply.status != 200:
            _sleep_until(t0 + latency)
            self._error(record, reply.status, reply.retry_after, "scripted error")
            return
        try:
            text = reply.text if reply.text is not None else stub.answer(role, loop, record.payload)
        except Exception as exc:  # a broken answer function is a test bug: make it loud
            with stub._lock:
                stub.answer_errors.append(f"{type(exc).__name__}: {exc}")
            self._error(record, 500, None, f"stub answer function raised {exc!r}")
            return
        usage, creates = stub._cache_plan(record.payload)
        usage["output"] = max(1, math.ceil(len(text.encode()) / stub.bytes_per_token))
        record.usage = usage
        record.status = 200
        try:
            if record.payload.get("stream"):
                self._stream(stub, record, text, reply, usage, creates, t0, latency)
            else:
                _sleep_until(t0 + stub.first_event_delay + latency)
                stub._register(creates)
                record.started_at = time.monotonic()
                self._json(200, self._message(record, text, reply, usage))
        except (BrokenPipeError, ConnectionResetError):
            return
        record.answered_at = time.monotonic()

    def _message(
        self, record: RecordedRequest, text: str, reply: Reply, usage: dict[str, int]
    ) -> dict[str, Any]:
        return message_body(
            f"msg_stub_{len(self.owner.requests)}",
            record.payload.get("model", "stub"),
            text,
            reply.stop_reason,
            usage,
        )

    def _json(
        self, status: int, obj: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", f"req_stub_{id(obj)}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _error(
        self, record: RecordedRequest, status: int, retry_after: str | None, message: str
    ) -> None:
        record.status = status
        record.answered_at = time.monotonic()
        kind = ERROR_TYPES.get(status, "api_error")
        headers = {"retry-after": retry_after} if retry_after is not None else {}
        try:
            self._json(
                status,
                {"type": "error", "error": {"type": kind, "message": f"{message} ({status})"}},
                headers,
            )
        except (BrokenPipeError, ConnectionResetError):
            return

    def _chunk(self, event: str, data: dict[str, Any]) -> None:
        raw = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
        self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
        self.wfile.flush()

    def _stream(
        self,
        stub: MessagesStub,
        record: RecordedRequest,
        text: str,
        reply: Reply,
        usage: dict[str, int],
        creates: list[tuple[str, str]],
        t0: float,
        latency: float,
    ) -> None:
        _sleep_until(t0 + stub.first_event_delay)
        # The response starts with its status line: from here on its prefixes are
        # readable from the cache (registered before the client can see the 200).
        stub._register(creates)
        record.started_at = time.monotonic()
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("cache-control", "no-cache")
        self.send_header("request-id", f"req_stub_{id(record)}")
        self.end_headers()
        message = self._message(record, "", reply, usage)
        message["content"] = []
        message["stop_reason"] = None
        message["usage"]["output_tokens"] = 1
        self._chunk("message_start", {"type": "message_start", "message": message})
        _sleep_until(t0 + stub.first_event_delay + latency)
        if reply.stream_error is not None:
            # The API can fail after a 200 has started: an `error` event ends the stream.
            self._chunk(
                "error",
                {"type": "error", "error": {"type": reply.stream_error, "message": "mid-stream"}},
            )
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return
        self._chunk(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        self._chunk(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": text},
            },
        )
        self._chunk("content_block_stop", {"type": "content_block_stop", "index": 0})
        self._chunk(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": {
                    "output_tokens": usage["output"],
                    "input_tokens": usage["input"],
                    "cache_creation_input_tokens": usage["cache_write"],
                    "cache_read_input_tokens": usage["cache_read"],
                },
            },
        )
        self._chunk("message_stop", {"type": "message_stop"})
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def main(argv: list[str] | None = None) -> None:
    """Serve in this process until stdin closes: `python -m tests.support.messages_stub`.

    Prints the base URL as the first stdout line. `--answer module:factory` names a
    zero-argument function returning the answer function.
    """
    import argparse
    import importlib
    import sys

    parser = argparse.ArgumentParser(description="Loopback Messages-API stub")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--first-event-delay", type=float, default=0.0)
    parser.add_argument("--min-cacheable-tokens", type=int, default=1024)
    parser.add_argument("--answer", default=None, help="module:factory")
    args = parser.parse_args(argv)
    answer = None
    if args.answer:
        module, _, name = args.answer.partition(":")
        answer = getattr(importlib.import_module(module), name)()
    stub = MessagesStub(
        latency=args.latency,
        first_event_delay=args.first_event_delay,
        answer=answer,
        min_cacheable_tokens=args.min_cacheable_tokens,
    )
    with stub:
        print(stub.url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
