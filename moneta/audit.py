"""Audit log: one JSON line per memory the store let go of, and why.

Every prune, consolidation and operator ``forget`` is recorded with the entity id,
its utility and attended count at that moment, the reason and the time, so a user
can see what was forgotten and why. File stores write ``audit.jsonl`` in the store
directory; memory stores keep the entries in memory.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from uuid import UUID


@dataclass(frozen=True, slots=True)
class AuditEntry:
    entity_id: str
    action: str  # "prune" | "consolidate" | "forget"
    utility: float
    attended_count: int
    reason: str
    at: float
    usd_link: str | None = None


_FIELDS = AuditEntry.__slots__
_ENCODER = json.JSONEncoder(separators=(",", ":"))


class AuditLog:
    """Append-only JSONL audit trail."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._memory: list[AuditEntry] = []

    @property
    def path(self) -> Path | None:
        return self._path

    def record(self, entries: Sequence[AuditEntry]) -> None:
        """Append entries in one write."""
        if not entries:
            return
        with self._lock:
            if self._path is None:
                self._memory.extend(entries)
                return
            # A flat dict per entry (asdict deep-copies): a pass that prunes a
            # thousand memories spends a few milliseconds here, not tens.
            encode = _ENCODER.encode
            text = "".join(
                encode({name: getattr(e, name) for name in _FIELDS}) + "\n" for e in entries
            )
            with self._path.open("a", encoding="utf-8") as handle:
                handle.write(text)

    def entries(self) -> list[AuditEntry]:
        """Every entry recorded so far, oldest first."""
        with self._lock:
            if self._path is None:
                return list(self._memory)
            if not self._path.exists():
                return []
            with self._path.open(encoding="utf-8") as handle:
                return [AuditEntry(**json.loads(line)) for line in handle if line.strip()]


def entry(
    entity_id: UUID,
    action: str,
    *,
    utility: float,
    attended_count: int,
    reason: str,
    at: float,
    usd_link: str | None = None,
) -> AuditEntry:
    return AuditEntry(
        entity_id=str(entity_id),
        action=action,
        utility=float(utility),
        attended_count=int(attended_count),
        reason=reason,
        at=float(at),
        usd_link=usd_link,
    )


def as_dicts(entries: Sequence[AuditEntry]) -> list[dict[str, Any]]:
    return [asdict(e) for e in entries]
