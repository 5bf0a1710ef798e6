"""The finding schema: its one home, its strict validator and its prompt description.

Validation is strict because findings are model output: a value that merely looks
right (``1`` for ``true``, ``"12"`` for a line number, ``/abs/path``) is rejected with
a reason naming the key and the rule, never coerced.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

SEVERITIES: tuple[str, ...] = ("Critical", "High", "Medium", "Low", "Note")
"""Severity names in rank order (most severe first)."""

SEVERITY_RANK: dict[str, int] = {s: i for i, s in enumerate(SEVERITIES)}

FINDING_ID_RE = r"^[a-z]+-L\d+-[a-z0-9-]+$"
_ID = re.compile(FINDING_ID_RE)
_ID_LOOP = re.compile(r"^[a-z]+-L(\d+)-")

REQUIRED_KEYS: tuple[str, ...] = (
    "id",
    "role",
    "loop",
    "theme",
    "file_path",
    "line_range",
    "severity",
    "claim",
    "evidence_quote",
    "risk",
    "proposed_change",
    "conflicts_with_locked_decision",
    "requires_section9_escalation",
    "references",
    "closes",
)
"""Keys a reviewer must supply. `constitution_hash` is stamped by the harness."""

_DRIVE = re.compile(r"^[A-Za-z]:")


class InvalidFinding(ValueError):
    """A raw finding broke a schema rule; `reason` names the key and the rule."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Finding:
    """One validated finding, stamped with the constitution hash it was judged under."""

    id: str
    role: str
    loop: int
    theme: str
    file_path: str
    line_range: tuple[int, int]
    severity: str
    claim: str
    evidence_quote: str
    risk: str
    proposed_change: str
    conflicts_with_locked_decision: bool
    requires_section9_escalation: bool
    references: tuple[str, ...]
    closes: str | None
    constitution_hash: str
    # Incremental runs only (`orchestrator.incremental`): "seen" or "new", and the id of
    # the previous run's finding this one repeats. Absent from to_dict() when unset.
    novelty: str | None = None
    seen_as: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the schema's key order (stable, so output is byte-stable)."""
        data = {
            "id": self.id,
            "role": self.role,
            "loop": self.loop,
            "theme": self.theme,
            "file_path": self.file_path,
            "line_range": [self.line_range[0], self.line_range[1]],
            "severity": self.severity,
            "claim": self.claim,
            "evidence_quote": self.evidence_quote,
            "risk": self.risk,
            "proposed_change": self.proposed_change,
            "conflicts_with_locked_decision": self.conflicts_with_locked_decision,
            "requires_section9_escalation": self.requires_section9_escalation,
            "references": list(self.references),
            "closes": self.closes,
            "constitution_hash": self.constitution_hash,
        }
        if self.novelty is not None:
            data["novelty"] = self.novelty
            data["seen_as"] = self.seen_as
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        """Rebuild a finding written by `to_dict` (e.g. a findings.jsonl line)."""
        start, end = data["line_range"]
        return cls(
            id=data["id"],
            role=data["role"],
            loop=data["loop"],
            theme=data["theme"],
            file_path=data["file_path"],
            line_range=(start, end),
            severity=data["severity"],
            claim=data["claim"],
            evidence_quote=data["evidence_quote"],
            risk=data["risk"],
            proposed_change=data["proposed_change"],
            conflicts_with_locked_decision=data["conflicts_with_locked_decision"],
            requires_section9_escalation=data["requires_section9_escalation"],
            references=tuple(data["references"]),
            closes=data["closes"],
            constitution_hash=data["constitution_hash"],
            novelty=data.get("novelty"),
            seen_as=data.get("seen_as"),
        )


def id_loop(finding_id: str) -> int | None:
    """The loop number encoded in a finding id (`<role>-L<loop>-...`), or None."""
    m = _ID_LOOP.match(finding_id)
    return int(m.group(1)) if m else None


def _is_int(value: object) -> bool:
    # bool subclasses int; a JSON `true` must never pass for a number.
    return isinstance(value, int) and not isinstance(value, bool)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _non_empty_str(raw: Mapping[str, Any], key: str) -> str:
    value = raw[key]
    if not isinstance(value, str):
        raise InvalidFinding(f"{key}: must be a string, got {_type_name(value)}")
    if not value.strip():
        raise InvalidFinding(f"{key}: must be a non-empty string")
    return value


def _bool(raw: Mapping[str, Any], key: str) -> bool:
    value = raw[key]
    if not isinstance(value, bool):
        raise InvalidFinding(f"{key}: must be a boolean (true/false), got {_type_name(value)}")
    return value


def check_repo_path(path: object, snapshot_paths: Collection[str]) -> str:
    """Return `path` if it is a normalised repo-relative POSIX path in the snapshot."""
    if not isinstance(path, str):
        raise InvalidFinding(f"file_path: must be a string, got {_type_name(path)}")
    if not path.strip():
        raise InvalidFinding("file_path: must be a non-empty string")
    if "\\" in path:
        raise InvalidFinding(f"file_path: must use '/' separators, no backslashes: {path!r}")
    if path.startswith("/") or _DRIVE.match(path):
        raise InvalidFinding(f"file_path: must be repo-relative, not absolute: {path!r}")
    parts = path.split("/")
    if ".." in parts:
        raise InvalidFinding(f"file_path: must not contain '..' (escapes the repo): {path!r}")
    if any(p in ("", ".") for p in parts):
        raise InvalidFinding(f"file_path: must be normalised (no empty or '.' segments): {path!r}")
    if path not in snapshot_paths:
        raise InvalidFinding(f"file_path: not in the reviewed snapshot: {path!r}")
    return path


def _line_range(raw: Mapping[str, Any]) -> tuple[int, int]:
    value = raw["line_range"]
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise InvalidFinding(
            f"line_range: must be a list of exactly two ints [start, end], got {value!r}"
        )
    start, end = value
    for name, v in (("start", start), ("end", end)):
        if not _is_int(v):
            raise InvalidFinding(f"line_range: {name} must be an int, got {_type_name(v)}")
        if v < 0:
            raise InvalidFinding(f"line_range: {name} must be non-negative, got {v}")
    if start > end:
        raise InvalidFinding(f"line_range: start must be <= end, got [{start}, {end}]")
    return (start, end)


def _references(raw: Mapping[str, Any]) -> tuple[str, ...]:
    value = raw["references"]
    if not isinstance(value, list | tuple):
        raise InvalidFinding(f"references: must be a list of strings, got {_type_name(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidFinding(f"references[{i}]: must be a string, got {_type_name(item)}")
    return tuple(value)


def _closes(raw: Mapping[str, Any], finding_id: str, loop: int) -> str | None:
    value = raw["closes"]
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidFinding(f"closes: must be a finding id or null, got {_type_name(value)}")
    if not _ID.match(value):
        raise InvalidFinding(f"closes: {value!r} does not match {FINDING_ID_RE}")
    if value == finding_id:
        raise InvalidFinding("closes: a finding cannot close itself")
    closed_loop = id_loop(value)
    if closed_loop is None or closed_loop >= loop:
        raise InvalidFinding(
            f"closes: must name a finding of an earlier loop than {loop}, got {value!r}"
        )
    return value


def validate_finding(
    raw: object,
    *,
    role: str,
    loop: int,
    theme: str,
    snapshot_paths: Collection[str],
    constitution_hash: str,
) -> Finding:
    """Validate one raw finding from reviewer `role` in `loop`; raise InvalidFinding.

    Rules beyond types: `id` must start with `<role>-L<loop>-`; `role`, `loop` and
    `theme` must equal the reviewer's; `closes` must name an earlier loop's finding;
    a Critical finding that conflicts with a locked decision must request escalation.
    Keys other than REQUIRED_KEYS (including a model-supplied `constitution_hash`)
    are dropped; the harness's hash is stamped instead.
    """
    if not isinstance(raw, dict):
        raise InvalidFinding(f"finding: must be a JSON object, got {_type_name(raw)}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise InvalidFinding(f"missing required key(s): {', '.join(missing)}")

    fid = raw["id"]
    if not isinstance(fid, str) or not _ID.match(fid):
        raise InvalidFinding(f"id: {fid!r} does not match {FINDING_ID_RE}")
    if not fid.startswith(f"{role}-L{loop}-"):
        raise InvalidFinding(f"id: {fid!r} must start with '{role}-L{loop}-' (role and loop)")
    if raw["role"] != role:
        raise InvalidFinding(f"role: must be {role!r} (the reviewer's role), got {raw['role']!r}")
    raw_loop = raw["loop"]
    if not _is_int(raw_loop):
        raise InvalidFinding(f"loop: must be an int, got {_type_name(raw_loop)}")
    if raw_loop != loop:
        raise InvalidFinding(f"loop: must equal the current loop {loop}, got {raw_loop}")
    if raw["theme"] != theme:
        raise InvalidFinding(f"theme: must be {theme!r} (this loop's theme), got {raw['theme']!r}")
    file_path = check_repo_path(raw["file_path"], snapshot_paths)
    line_range = _line_range(raw)
    severity = raw["severity"]
    if not isinstance(severity, str) or severity not in SEVERITY_RANK:
        raise InvalidFinding(f"severity: must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    claim = _non_empty_str(raw, "claim")
    evidence = _non_empty_str(raw, "evidence_quote")
    risk = _non_empty_str(raw, "risk")
    proposed = raw["proposed_change"]
    if not isinstance(proposed, str):
        raise InvalidFinding(f"proposed_change: must be a string, got {_type_name(proposed)}")
    conflicts = _bool(raw, "conflicts_with_locked_decision")
    escalate = _bool(raw, "requires_section9_escalation")
    if severity == "Critical" and conflicts and not escalate:
        raise InvalidFinding(
            "requires_section9_escalation: must be true for a Critical finding that "
            "conflicts with a locked decision"
        )
    return Finding(
        id=fid,
        role=role,
        loop=loop,
        theme=theme,
        file_path=file_path,
        line_range=line_range,
        severity=severity,
        claim=claim,
        evidence_quote=evidence,
        risk=risk,
        proposed_change=proposed,
        conflicts_with_locked_decision=conflicts,
        requires_section9_escalation=escalate,
        references=_references(raw),
        closes=_closes(raw, fid, loop),
        constitution_hash=constitution_hash,
    )


SCHEMA_DESCRIPTION = f"""\
Return your findings as ONE fenced ```json block holding a JSON array of objects.
Every object has exactly these keys, all required (extra keys are discarded):

| key | type | rule |
|---|---|---|
| `id` | string | `<role>-L<loop>-<slug>`, matching `{FINDING_ID_RE}`; unique in the loop |
| `role` | string | your role prefix |
| `loop` | integer | the current loop number (an integer, not a string or boolean) |
| `theme` | string | the current theme's slug |
| `file_path` | string | repo-relative POSIX path of a snapshot file (no leading `/`, no `..`) |
| `line_range` | [int, int] | `[start, end]`, non-negative integers, start <= end |
| `severity` | string | one of {", ".join(SEVERITIES)} |
| `claim` | string | non-empty: what is wrong |
| `evidence_quote` | string | non-empty: the exact text from the file that shows it |
| `risk` | string | non-empty: what goes wrong if it stays |
| `proposed_change` | string | the fix (may be empty) |
| `conflicts_with_locked_decision` | boolean | `true`/`false`, not 0/1 |
| `requires_section9_escalation` | boolean | `true` required if Critical and locked-conflicting |
| `references` | array of strings | spec sections, other finding ids, URLs (may be empty) |
| `closes` | string or null | the id of an earlier loop's finding this one resolves, else null |

Findings outside your role's scope are discarded (the adversarial reviewer is exempt).
Findings on the same file with the same claim and overlapping line ranges are merged;
the most severe survives.
"""
