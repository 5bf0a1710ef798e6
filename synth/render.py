"""Markdown for one loop's synthesis.

Output depends only on the synthesis and the config (no clock, no dict-order
surprises), so identical inputs render byte-identical text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from orchestrator.config import ReviewConfig
from synth.schema import SEVERITIES, Finding
from workers.result import ReviewerResult

if TYPE_CHECKING:
    from synth.loop import LoopSynthesis

Add = Callable[[str], None]
USAGE_KEYS: tuple[str, ...] = ("input", "output", "cache_write", "cache_read")
_BACKTICKS = re.compile(r"`+")


def cell(text: object) -> str:
    """Text safe inside one markdown table cell (one line, pipes escaped)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def one_line(text: str) -> str:
    return " ".join(text.split())


def fenced(text: str, lang: str = "text") -> str:
    """A code block whose fence is longer than any backtick run inside `text`."""
    longest = max((len(m) for m in _BACKTICKS.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip(chr(10))}\n{fence}"


def location(f: Finding) -> str:
    start, end = f.line_range
    return f"{f.file_path}:{start}" if start == end else f"{f.file_path}:{start}-{end}"


def reviewer_state(r: ReviewerResult) -> tuple[str, str]:
    """(status word, note) so a failed or unparsable reviewer never reads as "0 findings"."""
    if r.status == "failed":
        return "FAILED", f"error: {r.error or 'no error recorded'}"
    if r.findings_raw is None:
        return "NO FINDINGS EXTRACTED", f"extraction: {r.extraction_error or 'no reason recorded'}"
    if not isinstance(r.findings_raw, list):
        return "MALFORMED", "findings_raw is not a JSON array"
    return "ok", ""


def render_loop(s: LoopSynthesis, config: ReviewConfig) -> str:
    counts = s.counts()
    out: list[str] = []
    add = out.append
    add(f"# Loop {s.loop}: {one_line(s.theme.title)} (`{s.theme.slug}`)")
    add("")
    add(f"Lead roles: {', '.join(s.theme.lead_roles) or 'none'}")
    add("")
    add("## Lens")
    add("")
    add(s.theme.lens.strip() or "(none)")
    add("")
    _counts(add, counts)
    _reviewers(add, s)
    _escalations(add, s.kept)
    _findings(add, s, config)
    _closures(add, s)
    _invalid(add, s)
    _dropped(add, s)
    return "\n".join(out).rstrip("\n") + "\n"


def _counts(add: Add, counts: dict[str, Any]) -> None:
    add("## Counts")
    add("")
    add("| measure | count |")
    add("|---|---:|")
    rows: list[tuple[str, int]] = [
        ("raw items", counts["raw"]),
        ("valid", counts["valid"]),
        ("invalid", counts["invalid"]),
    ]
    rows += [(f"dropped: {reason}", n) for reason, n in counts["dropped"].items()]
    rows.append(("kept", counts["kept"]))
    rows += [(f"kept {sev}", counts["severity"][sev]) for sev in SEVERITIES]
    rows += [
        ("escalation candidates", counts["escalation_candidates"]),
        ("reviewers", counts["reviewers"]),
        ("reviewers failed", counts["reviewers_failed"]),
        ("reviewers with no extractable findings", counts["extraction_failures"]),
    ]
    for name, n in rows:
        add(f"| {name} | {n} |")
    add("")


def _reviewers(add: Add, s: LoopSynthesis) -> None:
    per_role: dict[str, list[int]] = {}  # role -> [raw, invalid, kept, dropped]
    for r in s.reviewers:
        raw = r.findings_raw
        n = len(raw) if isinstance(raw, list) else (0 if raw is None else 1)
        per_role.setdefault(r.role, [0, 0, 0, 0])[0] += n
    for role, _ in s.invalid_origin:
        per_role.setdefault(role, [0, 0, 0, 0])[1] += 1
    for f in s.kept:
        per_role.setdefault(f.role, [0, 0, 0, 0])[2] += 1
    for f, _ in s.dropped:
        per_role.setdefault(f.role, [0, 0, 0, 0])[3] += 1
    add("## Reviewers")
    add("")
    add(
        "| role | status | attempts | raw | invalid | kept | dropped "
        "| input | output | cache write | cache read | note |"
    )
    add("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in s.reviewers:
        status, note = reviewer_state(r)
        raw, inv, kept, dropped = per_role.get(r.role, [0, 0, 0, 0])
        if status in ("FAILED", "NO FINDINGS EXTRACTED"):
            figures = "n/a | n/a | n/a | n/a"
        else:
            figures = f"{raw} | {inv} | {kept} | {dropped}"
        usage = " | ".join(str(r.usage.get(k, 0)) for k in USAGE_KEYS)
        add(f"| {r.role} | {status} | {r.attempts} | {figures} | {usage} | {cell(note)} |")
    add("")
    problems = [r for r in s.reviewers if reviewer_state(r)[0] != "ok"]
    if problems:
        add("Reviewers without usable output (their findings are missing, not zero):")
        add("")
        for r in problems:
            status, note = reviewer_state(r)
            add(f"- **{r.role}**: {status} after {r.attempts} attempt(s); {one_line(note)}")
        add("")


def _escalations(add: Add, kept: list[Finding]) -> None:
    add("## Escalation candidates")
    add("")
    esc = [f for f in kept if f.requires_section9_escalation]
    if not esc:
        add("None.")
    for f in esc:
        locked = ", conflicts with a locked decision" if f.conflicts_with_locked_decision else ""
        add(f"- `{f.id}` ({f.severity}{locked}) `{location(f)}`: {one_line(f.claim)}")
    add("")


def _findings(add: Add, s: LoopSynthesis, config: ReviewConfig) -> None:
    add("## Findings (ranked)")
    add("")
    if not s.kept:
        add("No findings kept.")
        add("")
    for n, f in enumerate(s.kept, 1):
        add(f"### {n}. `{f.id}` · {f.severity} · `{location(f)}`")
        add("")
        flags = [f"role: {f.role}"]
        if f.role in s.theme.lead_roles:
            flags.append("lead role")
        if f.requires_section9_escalation:
            flags.append("escalation requested")
        if f.conflicts_with_locked_decision:
            flags.append("conflicts with a locked decision")
        if f.closes:
            flags.append(f"closes `{f.closes}`")
        if f.novelty is not None:  # incremental run (--since)
            flags.append(f"seen before as `{f.seen_as}`" if f.seen_as else "new")
        add(" · ".join(flags))
        add("")
        add(f"**Claim:** {one_line(f.claim)}")
        add("")
        add(f"**Risk:** {one_line(f.risk)}")
        add("")
        add("**Evidence:**")
        add("")
        add(fenced(f.evidence_quote))
        add("")
        if f.proposed_change.strip():
            add("**Proposed change:**")
            add("")
            add(fenced(f.proposed_change))
            add("")
        if f.references:
            add("References: " + ", ".join(f"`{one_line(r)}`" for r in f.references))
            add("")


def _table_section(add: Add, title: str, head: str, rule: str, rows: list[str]) -> None:
    """A `## title` section: the Markdown table `head`/`rule`/`rows`, or "None." if empty."""
    add(f"## {title}")
    add("")
    if not rows:
        add("None.")
        add("")
        return
    add(head)
    add(rule)
    for row in rows:
        add(row)
    add("")


def _closures(add: Add, s: LoopSynthesis) -> None:
    rows = [
        f"| `{closer}` | `{closed}` | {status} |"
        for (closer, closed), status in zip(s.closures, s.closure_status, strict=True)
    ]
    _table_section(add, "Closures", "| closer | closes | status |", "|---|---|---|", rows)


def _invalid(add: Add, s: LoopSynthesis) -> None:
    rows = []
    for (raw, reason), (role, index) in zip(s.invalid, s.invalid_origin, strict=True):
        fid = raw.get("id") if isinstance(raw, dict) else None
        shown = f"`{cell(fid)}`" if isinstance(fid, str) and fid else "-"
        rows.append(f"| {role} | {'-' if index < 0 else index} | {shown} | {cell(reason)} |")
    head = "| reviewer | item | id | reason |"
    _table_section(add, "Invalid items", head, "|---|---:|---|---|", rows)


def _dropped(add: Add, s: LoopSynthesis) -> None:
    rows = [f"| `{f.id}` | `{cell(location(f))}` | {reason} |" for f, reason in s.dropped]
    _table_section(add, "Dropped", "| id | file | reason |", "|---|---|---|", rows)
