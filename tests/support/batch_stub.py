"""The loopback Messages-API stub with the Message Batches endpoints, for the real SDK.

`BatchStub` is a `MessagesStub` (same answers, scripting, simulated prompt cache and
synchronous endpoint) that also serves what `client.messages.batches` calls:

- `POST /v1/messages/batches` `{"requests": [{"custom_id", "params"}, ...]}`: checks the
  custom_ids (1-64 of `[A-Za-z0-9_-]`, unique in the batch; else 400), processes each
  entry at once as the synchronous endpoint would (a scripted `Reply(status=529)`
  becomes an `errored` entry with that status's error type; `script_entries` scripts
  `expired` or `canceled` outcomes), and answers with the batch `in_progress`;
- `GET /v1/messages/batches/{id}`: `in_progress` for the first `polls_in_progress`
  retrieves of the batch, `ended` (with request counts and `results_url`) after;
- `GET /v1/messages/batches/{id}/results`: the entries as JSONL, in reverse
  submission order (results are unordered in the API; callers map by custom_id);
- `POST /v1/messages/batches/{id}/cancel`: marks the batch `canceling` (recorded in
  `cancel_requested`).

Every batch entry is recorded (`entries`) with its custom_id, role, loop, outcome and
usage, and every batch (`batches`) with its custom_ids and the retrieves it saw.
"""

from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support.messages_stub import (
    ERROR_TYPES,
    MessagesStub,
    RecordedRequest,
    _assignment,
    _Handler,
    message_body,
)

CUSTOM_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
BATCHES_PATH = "/v1/messages/batches"
OUTCOMES = ("succeeded", "errored", "expired", "canceled")


@dataclass(slots=True)
class BatchEntry:
    batch_id: str
    custom_id: str
    role: str | None
    loop: int | None
    params: dict[str, Any]
    outcome: str  # succeeded | errored | expired | canceled
    result: dict[str, Any]
    usage: dict[str, int] | None = None


@dataclass(slots=True)
class StubBatch:
    id: str
    created_at: datetime
    entries: list[BatchEntry]
    retrieves: int = 0
    ended: bool = False
    cancel_requested: bool = False

    def counts(self) -> dict[str, int]:
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if not self.ended:
            counts["processing"] = len(self.entries)
            return counts
        for e in self.entries:
            counts[e.outcome] += 1
        return counts


@dataclass(slots=True)
class _OutcomeRule:
    role: str | None
    loop: int | None
    outcomes: list[str] = field(default_factory=list)


def _rfc3339(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class BatchStub(MessagesStub):
    """MessagesStub plus the batch endpoints (see the module docstring)."""

    def __init__(self, *, polls_in_progress: int = 1, **kw: Any) -> None:
        super().__init__(**kw)
        self.polls_in_progress = polls_in_progress
        self.batches: dict[str, StubBatch] = {}
        self.entries: list[BatchEntry] = []
        self._outcome_rules: list[_OutcomeRule] = []
        self._batch_lock = threading.Lock()

    def handler_base(self) -> type[_Handler]:
        return _BatchHandler

    def script_entries(
        self, outcomes: list[str], *, role: str | None = None, loop: int | None = None
    ) -> None:
        """The next matching batch entries end as `outcomes` ("expired", "canceled"), in order."""
        bad = [o for o in outcomes if o not in ("expired", "canceled")]
        if bad:
            raise ValueError(
                f"outcomes: only 'expired' and 'canceled' are scripted here, got {bad}"
            )
        with self._batch_lock:
            self._outcome_rules.append(_OutcomeRule(role, loop, list(outcomes)))

    def batch_sizes(self) -> list[int]:
        with self._batch_lock:
            return [len(b.entries) for b in self.batches.values()]

    def entry_usage_totals(self) -> dict[str, int]:
        total = {"input": 0, "output": 0, "cache_write": 0, "cache_read": 0}
        with self._batch_lock:
            for e in self.entries:
                for k in total:
                    total[k] += (e.usage or {}).get(k, 0)
        return total

    # --- internals -----------------------------------------------------------------------

    def _scripted_outcome(self, role: str | None, loop: int | None) -> str | None:
        with self._batch_lock:
            for rule in self._outcome_rules:
                if (
                    rule.outcomes
                    and (rule.role is None or rule.role == role)
                    and (rule.loop is None or rule.loop == loop)
                ):
                    return rule.outcomes.pop(0)
        return None

    def _process(self, batch_id: str, custom_id: str, params: dict[str, Any]) -> BatchEntry:
        role, loop = _assignment(params)
        scripted = self._scripted_outcome(role, loop)
        if scripted is not None:
            return BatchEntry(batch_id, custom_id, role, loop, params, scripted, {"type": scripted})
        reply = self._next_reply(role, loop)
        if reply.status != 200:
            kind = ERROR_TYPES.get(reply.status, "api_error")
            result = {
                "type": "errored",
                "error": {
                    "type": "error",
                    "error": {"type": kind, "message": f"scripted error ({reply.status})"},
                },
            }
            return BatchEntry(batch_id, custom_id, role, loop, params, "errored", result)
        text = reply.text if reply.text is not None else self.answer(role, loop, params)
        usage, creates = self._cache_plan(params)
        usage["output"] = max(1, math.ceil(len(text.encode()) / self.bytes_per_token))
        self._register(creates)
        message = message_body(
            f"msg_stub_{batch_id}_{custom_id}",
            params.get("model", "stub"),
            text,
            reply.stop_reason,
            usage,
        )
        return BatchEntry(
            batch_id,
            custom_id,
            role,
            loop,
            params,
            "succeeded",
            {"type": "succeeded", "message": message},
            usage,
        )

    def _batch_json(self, batch: StubBatch, base_url: str) -> dict[str, Any]:
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "ended"
            if batch.ended
            else ("canceling" if batch.cancel_requested else "in_progress"),
            "request_counts": batch.counts(),
            "created_at": _rfc3339(batch.created_at),
            "expires_at": _rfc3339(batch.created_at + timedelta(hours=24)),
            "ended_at": _rfc3339(datetime.now(UTC)) if batch.ended else None,
            "archived_at": None,
            "cancel_initiated_at": _rfc3339(batch.created_at) if batch.cancel_requested else None,
            "results_url": f"{base_url}{BATCHES_PATH}/{batch.id}/results" if batch.ended else None,
        }


class _BatchHandler(_Handler):
    owner: BatchStub  # type: ignore[assignment]

    def _record(self, body: bytes) -> RecordedRequest:
        import time

        try:
            payload = json.loads(body) if body else {}
        except json.JSONDecodeError:
            payload = {}
        record = RecordedRequest(
            body=body,
            payload=payload if isinstance(payload, dict) else {},
            role=None,
            loop=None,
            received_at=time.monotonic(),
            headers={k.lower(): v for k, v in self.headers.items()},
            path=self.path,
        )
        with self.owner._lock:
            self.owner.requests.append(record)
        return record

    def do_POST(self) -> None:
        path = self.path.split("?")[0]
        if path.startswith(BATCHES_PATH + "/") and path.endswith("/cancel"):
            self._cancel(path[len(BATCHES_PATH) + 1 : -len("/cancel")])
            return
        if path != BATCHES_PATH:
            super().do_POST()
            return
        stub = self.owner
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        record = self._record(body)
        requests = record.payload.get("requests")
        if not isinstance(requests, list) or not requests:
            self._error(record, 400, None, "requests: must be a non-empty list")
            return
        ids = [r.get("custom_id") if isinstance(r, dict) else None for r in requests]
        if any(not isinstance(i, str) or not CUSTOM_ID_RE.match(i) for i in ids):
            self._error(record, 400, None, "custom_id: 1-64 characters of [A-Za-z0-9_-]")
            return
        if len(set(ids)) != len(ids):
            self._error(record, 400, None, "custom_id: must be unique within the batch")
            return
        with stub._batch_lock:
            batch_id = f"msgbatch_stub{len(stub.batches) + 1:04d}"
        entries = [stub._process(batch_id, r["custom_id"], r.get("params") or {}) for r in requests]
        batch = StubBatch(batch_id, datetime.now(UTC), entries)
        with stub._batch_lock:
            stub.batches[batch_id] = batch
            stub.entries.extend(entries)
        if stub.polls_in_progress <= 0:
            batch.ended = True
        record.status = 200
        self._json(200, stub._batch_json(batch, stub.url))

    def _cancel(self, batch_id: str) -> None:
        stub = self.owner
        length = int(self.headers.get("content-length") or 0)
        record = self._record(self.rfile.read(length))
        with stub._batch_lock:
            batch = stub.batches.get(batch_id)
            if batch is not None:
                batch.cancel_requested = True
        if batch is None:
            self._error(record, 404, None, f"no batch {batch_id}")
            return
        record.status = 200
        self._json(200, stub._batch_json(batch, stub.url))

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if not path.startswith(BATCHES_PATH + "/"):
            super().do_GET()
            return
        stub = self.owner
        record = self._record(b"")
        parts = path[len(BATCHES_PATH) + 1 :].split("/")
        with stub._batch_lock:
            batch = stub.batches.get(parts[0])
        if batch is None or len(parts) > 2 or (len(parts) == 2 and parts[1] != "results"):
            self._error(record, 404, None, f"no batch at {path}")
            return
        if len(parts) == 1:
            with stub._batch_lock:
                batch.retrieves += 1
                if batch.retrieves > stub.polls_in_progress:
                    batch.ended = True
            record.status = 200
            self._json(200, stub._batch_json(batch, stub.url))
            return
        if not batch.ended:
            self._error(record, 400, None, f"batch {batch.id} is still in progress")
            return
        lines = [
            json.dumps({"custom_id": e.custom_id, "result": e.result})
            for e in reversed(batch.entries)
        ]
        data = ("\n".join(lines) + "\n").encode()
        record.status = 200
        self.send_response(200)
        self.send_header("content-type", "application/binary")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
