"""SARIF 2.1.0 export of a run's kept findings, for code-scanning tools and IDEs.

One rule per (role, theme) pair, so a viewer can group and filter by who looked
and through which lens. A result's level comes from its severity, its location
from `file_path`/`line_range`, and its message carries the claim, the risk, the
evidence quote and the proposed change (SARIF has no other home for free text a
viewer shows). A finding closed by a later loop is exported with an "accepted"
suppression naming its closer, so it shows as resolved rather than vanishing.
The constitution hash is a run property: results judged under another
constitution are not comparable.

The output is deterministic (no clock, no absolute paths): the same run gives
byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from importlib import metadata
from typing import Any
from urllib.parse import quote

from orchestrator.config import ReviewConfig
from synth.ledger import ClosureLedger
from synth.render import fenced
from synth.schema import Finding

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA_URI = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
TOOL_NAME = "moneta-review"
SRCROOT = "SRCROOT"

LEVELS: dict[str, str] = {
    "Critical": "error",
    "High": "error",
    "Medium": "warning",
    "Low": "note",
    "Note": "note",
}
"""SARIF `level` per severity: error blocks, warning asks for attention, note informs."""

RANKS: dict[str, float] = {
    "Critical": 100.0,
    "High": 80.0,
    "Medium": 50.0,
    "Low": 20.0,
    "Note": 5.0,
}
"""SARIF `rank` (0-100, higher is more important), so viewers order within a level."""


def rule_id(role: str, theme: str) -> str:
    return f"{role}/{theme}"


def _tool_version() -> str:
    try:
        return metadata.version("moneta")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _region(line_range: tuple[int, int]) -> dict[str, int] | None:
    """SARIF lines start at 1; a range ending at line 0 means the whole file (no region)."""
    start, end = line_range
    if end < 1:
        return None
    return {"startLine": max(start, 1), "endLine": end}


def message_text(f: Finding) -> str:
    """Plain-text message: claim first (viewers show its first line as the title)."""
    parts = [
        " ".join(f.claim.split()),
        "",
        f"Risk: {' '.join(f.risk.split())}",
        "",
        "Evidence:",
        f.evidence_quote.rstrip("\n"),
    ]
    if f.proposed_change.strip():
        parts += ["", "Proposed change:", f.proposed_change.rstrip("\n")]
    return "\n".join(parts)


def message_markdown(f: Finding) -> str:
    parts = [
        f"**{' '.join(f.claim.split())}**",
        "",
        f"**Risk:** {' '.join(f.risk.split())}",
        "",
        "**Evidence:**",
        "",
        fenced(f.evidence_quote, ""),
    ]
    if f.proposed_change.strip():
        parts += ["", "**Proposed change:**", "", fenced(f.proposed_change, "")]
    return "\n".join(parts)


def fingerprint(f: Finding) -> str:
    """Stable across runs for the same file and claim (case and spacing ignored)."""
    key = f"{f.file_path}\n{' '.join(f.claim.casefold().split())}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def _rules(
    findings: Sequence[Finding], config: ReviewConfig | None, titles: dict[str, str]
) -> list[dict[str, Any]]:
    roles = {r.prefix: r for r in config.roles} if config is not None else {}
    role_order = config.role_order if config is not None else {}
    pairs = sorted(
        {(f.role, f.theme, f.loop) for f in findings},
        key=lambda p: (p[2], role_order.get(p[0], len(role_order)), p[0]),
    )
    rules: list[dict[str, Any]] = []
    for role, theme, loop in pairs:
        r = roles.get(role)
        role_name = r.name if r is not None else role
        title = titles.get(theme, theme)
        full = f"Findings of the {role_name} reviewer in loop {loop}, theme {title!r}."
        if r is not None:
            full += " Role directive: " + " ".join(r.directive.split())
        rules.append(
            {
                "id": rule_id(role, theme),
                "name": f"{role_name} / {title}",
                "shortDescription": {"text": f"{role_name} reviewer, loop {loop}: {title}"},
                "fullDescription": {"text": full},
                "defaultConfiguration": {"level": "warning"},
                "properties": {"role": role, "theme": theme, "loop": loop},
            }
        )
    return rules


def _result(
    f: Finding, rule_index: int, closed_by: list[str], constitution_hash: str
) -> dict[str, Any]:
    physical: dict[str, Any] = {
        "artifactLocation": {"uri": quote(f.file_path, safe="/"), "uriBaseId": SRCROOT}
    }
    region = _region(f.line_range)
    if region is not None:
        physical["region"] = region
    result: dict[str, Any] = {
        "ruleId": rule_id(f.role, f.theme),
        "ruleIndex": rule_index,
        "kind": "fail",
        "level": LEVELS[f.severity],
        "rank": RANKS[f.severity],
        "message": {"text": message_text(f), "markdown": message_markdown(f)},
        "locations": [{"physicalLocation": physical}],
        "partialFingerprints": {"reviewClaim/v1": fingerprint(f)},
        "properties": {
            "findingId": f.id,
            "severity": f.severity,
            "loop": f.loop,
            "role": f.role,
            "theme": f.theme,
            "lineRange": [f.line_range[0], f.line_range[1]],
            "escalation": f.requires_section9_escalation,
            "conflictsWithLockedDecision": f.conflicts_with_locked_decision,
            "proposedChange": f.proposed_change,
            "references": list(f.references),
            "closes": f.closes,
            "closedBy": closed_by,
            "constitutionHash": f.constitution_hash,
            "tags": sorted(
                {f"severity:{f.severity}", f"role:{f.role}", f"theme:{f.theme}"}
                | ({"escalation"} if f.requires_section9_escalation else set())
            ),
        },
    }
    if f.novelty is not None:  # incremental run (--since): SARIF's own baseline marker
        result["baselineState"] = "unchanged" if f.novelty == "seen" else "new"
        result["properties"]["seenAs"] = f.seen_as
    if f.constitution_hash != constitution_hash:
        result["properties"]["staleConstitution"] = True
    if closed_by:
        result["suppressions"] = [
            {
                "kind": "external",
                "status": "accepted",
                "justification": "closed by a later finding: " + ", ".join(closed_by),
            }
        ]
    return result


def render_sarif(
    *,
    loops: Sequence[dict[str, Any]],
    findings: Sequence[Finding],
    ledger: ClosureLedger,
    constitution_hash: str,
    failures: Sequence[dict[str, Any]] = (),
    config: ReviewConfig | None = None,
) -> dict[str, Any]:
    """The SARIF log (a JSON-ready dict) for a run's loop records and kept findings.

    `loops` are `loops.jsonl` records (they give theme titles and counts);
    `failures` are reviewers without usable output, reported as tool execution
    notifications so a reader knows the findings are incomplete.
    """
    titles = {r["theme"]: r["title"] for r in loops}
    rules = _rules(findings, config, titles)
    index = {r["id"]: i for i, r in enumerate(rules)}
    closers: dict[str, list[str]] = {}
    for target, entries in ledger.closed_targets().items():
        closers[target] = sorted({e.closer for e in entries})
    results = [
        _result(f, index[rule_id(f.role, f.theme)], closers.get(f.id, []), constitution_hash)
        for f in findings
    ]
    notifications = [
        {
            "level": "error",
            "message": {
                "text": (
                    f"loop {fl['loop']}: reviewer {fl['role']} produced no usable output "
                    f"({fl.get('state', fl.get('status'))} after {fl.get('attempts', 0)} "
                    f"attempt(s)): {fl.get('error') or fl.get('extraction_error') or 'no reason'}"
                )
            },
            "properties": {"loop": fl["loop"], "role": fl["role"]},
        }
        for fl in failures
    ]
    invocation: dict[str, Any] = {"executionSuccessful": True}
    if notifications:
        invocation["toolExecutionNotifications"] = notifications
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": TOOL_NAME,
                "version": _tool_version(),
                "rules": rules,
            }
        },
        "invocations": [invocation],
        "originalUriBaseIds": {
            SRCROOT: {"description": {"text": "The root of the reviewed repository."}}
        },
        "columnKind": "unicodeCodePoints",
        "results": results,
        "properties": {
            "constitutionHash": constitution_hash,
            "loops": [
                {
                    "loop": r["loop"],
                    "theme": r["theme"],
                    "title": r["title"],
                    "kept": r["counts"]["kept"],
                    "raw": r["counts"]["raw"],
                }
                for r in sorted(loops, key=lambda r: r["loop"])
            ],
        },
    }
    return {"$schema": SARIF_SCHEMA_URI, "version": SARIF_VERSION, "runs": [run]}


def dumps_sarif(log: dict[str, Any]) -> str:
    """Compact JSON: indenting would switch json to its pure-Python encoder (~20x slower)."""
    return json.dumps(log, ensure_ascii=False, separators=(",", ":")) + "\n"
