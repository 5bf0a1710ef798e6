"""Markdown for the run's final `synthesis.md`, from the records of every loop.

A finding is open unless a later finding closed it (directly, or by closing a
duplicate that was merged into it); closures naming unknown ids close nothing and
are listed as such.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from synth.ledger import ClosureLedger
from synth.noise import NOISE_REASONS
from synth.render import USAGE_KEYS, Add, cell, location, one_line
from synth.schema import SEVERITIES, SEVERITY_RANK, Finding


def cache_read_share(usage: dict[str, int]) -> float | None:
    """Share of all input tokens served from the prompt cache (None if no input)."""
    total = usage.get("input", 0) + usage.get("cache_write", 0) + usage.get("cache_read", 0)
    return usage.get("cache_read", 0) / total if total else None


def render_final(
    *,
    loops: Sequence[dict[str, Any]],
    findings: Sequence[Finding],
    ledger: ClosureLedger,
    constitution_hash: str,
    usage_totals: dict[str, int] | None,
    failures: Sequence[dict[str, Any]],
) -> str:
    closed = ledger.closed_targets()
    open_findings = [f for f in findings if f.id not in closed]
    out: list[str] = []
    add = out.append
    add("# Review synthesis")
    add("")
    add(f"Constitution hash: `{constitution_hash}`")
    add("")
    add(f"Loops written: {', '.join(str(r['loop']) for r in loops) or 'none'}")
    add("")
    stale = sorted(f.id for f in findings if f.constitution_hash != constitution_hash)
    if stale:
        ids = ", ".join(f"`{i}`" for i in stale)
        add(f"**Warning:** {len(stale)} finding(s) carry another constitution hash: {ids}")
        add("")
    _totals(add, loops, findings, open_findings, closed)
    _escalations(add, open_findings)
    _open_by_file(add, open_findings)
    _ledger(add, ledger)
    _failures(add, failures)
    _usage(add, loops, usage_totals)
    return "\n".join(out).rstrip("\n") + "\n"


def _totals(
    add: Add,
    loops: Sequence[dict[str, Any]],
    findings: Sequence[Finding],
    open_findings: Sequence[Finding],
    closed: dict[str, Any],
) -> None:
    add("## Totals")
    add("")
    sev_cols = " | ".join(SEVERITIES)
    add(
        f"| loop | theme | raw | valid | invalid | dropped: role-isolation | dropped: duplicate "
        f"| kept | {sev_cols} | escalations | reviewers without output |"
    )
    add("|---:|---|" + "---:|" * (8 + len(SEVERITIES)))
    keys = ("raw", "valid", "invalid", "iso", "dup", "kept")
    total = dict.fromkeys(keys, 0)
    sev_total = dict.fromkeys(SEVERITIES, 0)
    esc_total = unusable_total = 0
    for r in loops:
        c = r["counts"]
        row = {
            "raw": c["raw"],
            "valid": c["valid"],
            "invalid": c["invalid"],
            "iso": c["dropped"].get("role-isolation", 0),
            "dup": c["dropped"].get("duplicate", 0),
            "kept": c["kept"],
        }
        unusable = c["reviewers_failed"] + c["extraction_failures"]
        for k in keys:
            total[k] += row[k]
        for s in SEVERITIES:
            sev_total[s] += c["severity"][s]
        esc_total += c["escalation_candidates"]
        unusable_total += unusable
        figures = " | ".join(str(row[k]) for k in keys)
        sevs = " | ".join(str(c["severity"][s]) for s in SEVERITIES)
        add(
            f"| {r['loop']} | {cell(r['theme'])} | {figures} | {sevs} "
            f"| {c['escalation_candidates']} | {unusable} |"
        )
    figures = " | ".join(str(total[k]) for k in keys)
    sevs = " | ".join(str(sev_total[s]) for s in SEVERITIES)
    add(f"| **all** | | {figures} | {sevs} | {esc_total} | {unusable_total} |")
    add("")
    n_closed = sum(1 for f in findings if f.id in closed)
    add(
        f"Kept findings: {len(findings)}; closed by a later finding: {n_closed}; "
        f"open: {len(open_findings)}."
    )
    add("")
    noise = {
        reason: sum(r["counts"]["dropped"].get(reason, 0) for r in loops)
        for reason in NOISE_REASONS
    }
    if any(noise.values()):
        shown = ", ".join(f"{reason}: {n}" for reason, n in noise.items() if n)
        add(f"Dropped by noise controls: {sum(noise.values())} ({shown}).")
        add("")


def _escalations(add: Add, open_findings: Sequence[Finding]) -> None:
    add("## Open escalation candidates")
    add("")
    esc = sorted(
        (f for f in open_findings if f.requires_section9_escalation),
        key=lambda f: (SEVERITY_RANK[f.severity], f.loop, f.id),
    )
    if not esc:
        add("None.")
    for f in esc:
        locked = ", conflicts with a locked decision" if f.conflicts_with_locked_decision else ""
        add(
            f"- `{f.id}` ({f.severity}, loop {f.loop}{locked}) `{location(f)}`: {one_line(f.claim)}"
        )
    add("")


def _open_by_file(add: Add, open_findings: Sequence[Finding]) -> None:
    add("## Open Critical and High findings by file")
    add("")
    serious = [f for f in open_findings if f.severity in ("Critical", "High")]
    if not serious:
        add("None.")
        add("")
        return
    by_file: dict[str, list[Finding]] = {}
    for f in serious:
        by_file.setdefault(f.file_path, []).append(f)
    for path in sorted(by_file):
        add(f"### `{path}`")
        add("")
        for f in sorted(
            by_file[path], key=lambda f: (SEVERITY_RANK[f.severity], f.line_range, f.loop, f.id)
        ):
            add(f"- `{f.id}` · {f.severity} · loop {f.loop} · `{location(f)}`: {one_line(f.claim)}")
        add("")


def _ledger(add: Add, ledger: ClosureLedger) -> None:
    add("## Closure ledger")
    add("")
    entries = sorted(ledger.entries, key=lambda e: (e.loop, e.closer, e.closed))
    if not entries:
        add("No closures recorded.")
        add("")
        return
    add("| loop | closer | closes | status | closed finding |")
    add("|---:|---|---|---|---|")
    for e in entries:
        target = f"`{e.target}`" if e.target else "-"
        add(f"| {e.loop} | `{e.closer}` | `{e.closed}` | {e.status} | {target} |")
    add("")
    unknown = sum(e.status == "unknown-id" for e in entries)
    add(f"Closures: {len(entries)}; naming an unknown id (closing nothing): {unknown}.")
    add("")


def _failures(add: Add, failures: Sequence[dict[str, Any]]) -> None:
    add("## Reviewers without usable output")
    add("")
    if not failures:
        add("None.")
        add("")
        return
    add("| loop | role | state | attempts | reason |")
    add("|---:|---|---|---:|---|")
    for f in failures:
        reason = f.get("error") or f.get("extraction_error") or "not recorded"
        add(
            f"| {f['loop']} | {f['role']} | {f.get('state', f['status'])} | {f['attempts']} "
            f"| {cell(reason)} |"
        )
    add("")


def _usage_row(name: str, usage: dict[str, int]) -> str:
    share = cache_read_share(usage)
    shown = "n/a" if share is None else f"{share * 100:.1f}%"
    return f"| {name} | " + " | ".join(str(usage.get(k, 0)) for k in USAGE_KEYS) + f" | {shown} |"


def _usage(add: Add, loops: Sequence[dict[str, Any]], usage_totals: dict[str, int] | None) -> None:
    add("## Token usage")
    add("")
    recorded = dict.fromkeys(USAGE_KEYS, 0)
    for r in loops:
        for rv in r["reviewers"]:
            for k in USAGE_KEYS:
                recorded[k] += rv["usage"].get(k, 0)
    add("| source | input | output | cache write | cache read | cache-read share of input |")
    add("|---|---:|---:|---:|---:|---:|")
    add(_usage_row("reviewer calls (loop records)", recorded))
    if usage_totals is not None:
        add(_usage_row("run totals (reported by the run)", usage_totals))
    add("")
