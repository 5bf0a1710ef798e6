"""JSONL mock of the cold tier, with the USD target's batch shape (DESIGN §1.7).

Each line of the file is one authored batch::

    {"schema_version": 1, "authored_at": ..., "batch_id": ..., "entries": [
        {"entity_id": ..., "payload": ..., "semantic_vector": [...], "utility": ...,
         "attended_count": ..., "protected_floor": ..., "last_evaluated": ...,
         "state": "consolidated", "usd_link": "/Memory_<hex>",
         "target_sublayer": "cortex_YYYY_MM_DD.usda"}, ...]}

Authoring is idempotent per entity: re-authoring an entity drops its entry from the
earlier batch, so the file never holds two records for one memory. The file is
rewritten atomically (temp, fsync, rename) on every change — fine for tests and
A/B checks, which is what this target is for. With ``path=None`` it keeps the
batches in memory only.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np

from moneta.errors import AuthoringError
from moneta.protocols import VectorRecord
from moneta.types import EntityState, Memory

SCHEMA_VERSION = 1
PROTECTED_SUBLAYER = "cortex_protected.usda"


def prim_path(entity_id: UUID) -> str:
    """The USD prim path of a memory: UUID only, never text from the payload."""
    return f"/Memory_{entity_id.hex}"


def daily_sublayer(authored_at: float) -> str:
    """The rolling daily layer for a UTC authoring time."""
    day = datetime.fromtimestamp(authored_at, tz=UTC)
    return f"cortex_{day:%Y_%m_%d}.usda"


class JsonlMockTarget:
    """An ``AuthoringTarget`` writing batches as JSON lines."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._batches: list[dict[str, Any]] = []
        self._closed = False
        if path is not None and path.exists():
            with path.open(encoding="utf-8") as handle:
                self._batches = [json.loads(line) for line in handle if line.strip()]

    @property
    def path(self) -> Path | None:
        return self._path

    def author(
        self, batch: Sequence[Memory], *, batch_id: str, authored_at: float
    ) -> dict[UUID, str]:
        entries = [self._entry(memory, authored_at) for memory in batch]
        with self._lock:
            if self._closed:
                raise AuthoringError(f"target closed; batch {batch_id} not authored")
            ids = {entry["entity_id"] for entry in entries}
            batches = self._without(ids)
            batches.append(
                {
                    "schema_version": SCHEMA_VERSION,
                    "authored_at": authored_at,
                    "batch_id": batch_id,
                    "entries": entries,
                }
            )
            self._save(batches, batch_id)
            self._batches = batches
        return {memory.entity_id: prim_path(memory.entity_id) for memory in batch}

    def forget(self, entity_ids: Iterable[UUID]) -> None:
        doomed = {str(entity_id) for entity_id in entity_ids}
        with self._lock:
            batches = self._without(doomed)
            if len(batches) != len(self._batches) or any(
                len(a["entries"]) != len(b["entries"])
                for a, b in zip(batches, self._batches, strict=True)
            ):
                self._save(batches, "forget")
                self._batches = batches

    def entries(self) -> dict[UUID, dict[str, Any]]:
        """Every authored entry by entity id (the latest record of each memory)."""
        with self._lock:
            return {
                UUID(entry["entity_id"]): entry
                for batch in self._batches
                for entry in batch["entries"]
            }

    def records(self) -> list[VectorRecord]:
        """Every authored memory as a CONSOLIDATED index record, vector included: what a
        fresh in-memory index needs to search the cold tier after a reopen."""
        return [
            VectorRecord(
                entity_id=entity_id,
                vector=np.asarray(entry["semantic_vector"], dtype=np.float32),
                payload=entry["payload"],
                utility=float(entry["utility"]),
                attended_count=int(entry["attended_count"]),
                protected_floor=float(entry["protected_floor"]),
                last_evaluated=float(entry["last_evaluated"]),
                state=EntityState.CONSOLIDATED,
                usd_link=entry["usd_link"],
            )
            for entity_id, entry in self.entries().items()
        ]

    def batches(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(batch) for batch in self._batches]

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def _without(self, ids: set[str]) -> list[dict[str, Any]]:
        kept = []
        for batch in self._batches:
            entries = [entry for entry in batch["entries"] if entry["entity_id"] not in ids]
            if entries:
                kept.append({**batch, "entries": entries})
        return kept

    @staticmethod
    def _entry(memory: Memory, authored_at: float) -> dict[str, Any]:
        sublayer = PROTECTED_SUBLAYER if memory.protected_floor > 0 else None
        return {
            "entity_id": str(memory.entity_id),
            "payload": memory.payload,
            "semantic_vector": list(memory.semantic_vector),
            "utility": memory.utility,
            "attended_count": memory.attended_count,
            "protected_floor": memory.protected_floor,
            "last_evaluated": memory.last_evaluated,
            "state": EntityState.CONSOLIDATED.token,
            "prior_state": memory.state.token,
            "usd_link": prim_path(memory.entity_id),
            "target_sublayer": sublayer or daily_sublayer(authored_at),
        }

    def _save(self, batches: list[dict[str, Any]], what: str) -> None:
        if self._path is None:
            return
        temp = self._path.with_name(self._path.name + ".tmp")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with temp.open("w", encoding="utf-8") as handle:
                for batch in batches:
                    handle.write(json.dumps(batch, separators=(",", ":")) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self._path)
            directory = os.open(self._path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise AuthoringError(
                f"cold-tier write of {what} failed: {exc}", failed=[str(self._path)]
            ) from exc
