"""The closure ledger: which finding closed which, across the loops of a run.

It is part of the run checkpoint (`to_dict`/`from_dict`), so a resumed run knows
every earlier loop's findings and closures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ClosureStatus = Literal["closed", "unknown-id"]


@dataclass(frozen=True, slots=True)
class Closure:
    """`closer` (a finding of `loop`) says it resolves `closed`.

    `status` is "unknown-id" when `closed` names no finding known to the ledger;
    the link is kept so the final synthesis can show it, but it closes nothing.
    `target` is the kept finding actually closed: `closed` itself, or the finding
    that survived when `closed` was merged into it as a duplicate.
    """

    closer: str
    closed: str
    loop: int
    status: ClosureStatus
    target: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "closer": self.closer,
            "closed": self.closed,
            "loop": self.loop,
            "status": self.status,
            "target": self.target,
        }


class ClosureLedger:
    """Known finding ids per loop and the closure links between them.

    Re-registering a loop (`begin_loop`) first forgets what that loop recorded, so
    synthesising the same loop twice never doubles its entries.
    """

    def __init__(self) -> None:
        self._known: dict[str, int] = {}  # kept finding id -> loop
        self._aliases: dict[str, tuple[str, int]] = {}  # merged duplicate id -> (survivor, loop)
        self._entries: list[Closure] = []

    @property
    def entries(self) -> list[Closure]:
        """Closure links in recording order (loop order for a normal run)."""
        return list(self._entries)

    def begin_loop(self, loop: int) -> None:
        """Forget everything loop `loop` registered or recorded (idempotent re-synthesis)."""
        self._known = {k: v for k, v in self._known.items() if v != loop}
        self._aliases = {k: v for k, v in self._aliases.items() if v[1] != loop}
        self._entries = [e for e in self._entries if e.loop != loop]

    def register(self, loop: int, kept_ids: list[str], aliases: dict[str, str]) -> None:
        """Make loop `loop`'s kept ids (and duplicates merged into them) closable later."""
        for fid in kept_ids:
            self._known[fid] = loop
        for dup, survivor in aliases.items():
            self._aliases[dup] = (survivor, loop)

    def resolve(self, finding_id: str) -> str | None:
        """The kept finding id `finding_id` stands for, or None if unknown."""
        if finding_id in self._known:
            return finding_id
        alias = self._aliases.get(finding_id)
        return alias[0] if alias else None

    def record(self, closer_id: str, closed_id: str, loop: int) -> Closure:
        """Record that `closer_id` (of `loop`) closes `closed_id`; unknown ids are kept as such."""
        target = self.resolve(closed_id)
        entry = Closure(
            closer=closer_id,
            closed=closed_id,
            loop=loop,
            status="closed" if target is not None else "unknown-id",
            target=target,
        )
        self._entries.append(entry)
        return entry

    def closed_targets(self) -> dict[str, list[Closure]]:
        """Kept finding id -> the closures that resolve it (unknown ids excluded)."""
        out: dict[str, list[Closure]] = {}
        for e in self._entries:
            if e.target is not None and e.status == "closed":
                out.setdefault(e.target, []).append(e)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "known": dict(sorted(self._known.items())),
            "aliases": {k: [s, lp] for k, (s, lp) in sorted(self._aliases.items())},
            "entries": [e.to_dict() for e in self._entries],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClosureLedger:
        ledger = cls()
        ledger._known = {str(k): int(v) for k, v in data.get("known", {}).items()}
        ledger._aliases = {
            str(k): (str(v[0]), int(v[1])) for k, v in data.get("aliases", {}).items()
        }
        ledger._entries = [
            Closure(
                closer=e["closer"],
                closed=e["closed"],
                loop=int(e["loop"]),
                status=e["status"],
                target=e["target"],
            )
            for e in data.get("entries", [])
        ]
        return ledger

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClosureLedger):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]
