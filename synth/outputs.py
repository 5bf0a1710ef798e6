"""Files a run leaves in its output directory, written idempotently per loop.

Per loop: `loop-<n>-<slug>.md`. Shared, one JSON object per line, each carrying
its `loop`: `findings.jsonl` (kept findings), `findings.invalid.jsonl` (raw item
and reason), `findings.dropped.jsonl` (scope-filtered and merged duplicates) and
`loops.jsonl` (the loop's counts, reviewers and closures). Writing loop n again
replaces loop n's lines, so a resumed or re-run loop never duplicates output.
Every file is replaced atomically (temp file, fsync, rename). The final
`synthesis.md` is rebuilt from these files alone, so it is right after a resume.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from orchestrator.config import ReviewConfig
from synth.final import render_final
from synth.html import render_html
from synth.ledger import ClosureLedger
from synth.loop import DUPLICATE_PREFIX, LoopSynthesis
from synth.render import USAGE_KEYS, reviewer_state
from synth.sarif import dumps_sarif, render_sarif
from synth.schema import Finding
from workers.result import ReviewerResult

FINDINGS = "findings.jsonl"
INVALID = "findings.invalid.jsonl"
DROPPED = "findings.dropped.jsonl"
LOOPS = "loops.jsonl"
SYNTHESIS = "synthesis.md"
SARIF = "synthesis.sarif"
REPORT = "report.html"


def loop_markdown_name(synthesis: LoopSynthesis) -> str:
    return f"loop-{synthesis.loop}-{synthesis.theme.slug}.md"


def _dumps(obj: object) -> str:
    # repr fallback: an invalid raw item is recorded as-is, whatever it holds.
    return json.dumps(obj, ensure_ascii=False, default=repr)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` so readers see the old or the new file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except Exception:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Objects of a JSONL file ([] if absent); a corrupt line raises, naming file and line."""
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {n} is not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or not isinstance(row.get("loop"), int):
            raise ValueError(f"{path}: line {n} is not an object with an int 'loop'")
        rows.append(row)
    return rows


def replace_loop_lines(path: Path, loop: int, rows: Iterable[dict[str, Any]]) -> None:
    """Rewrite `path` with its other loops' lines kept verbatim and loop `loop`'s replaced."""
    kept: list[tuple[int, str]] = []
    if path.exists():
        existing = path.read_text(encoding="utf-8").splitlines()
        for row, line in zip(read_jsonl(path), (ln for ln in existing if ln.strip()), strict=True):
            if row["loop"] != loop:
                kept.append((row["loop"], line))
    kept.extend((loop, _dumps(r)) for r in rows)
    kept.sort(key=lambda pair: pair[0])  # stable: order within a loop is preserved
    atomic_write_text(path, "".join(line + "\n" for _, line in kept))


def reviewer_record(r: ReviewerResult) -> dict[str, Any]:
    raw = r.findings_raw
    return {
        "role": r.role,
        "status": r.status,
        "state": reviewer_state(r)[0],
        "attempts": r.attempts,
        "raw": len(raw) if isinstance(raw, list) else (0 if raw is None else 1),
        "error": r.error,
        "extraction_error": r.extraction_error,
        "usage": {k: r.usage.get(k, 0) for k in USAGE_KEYS},
    }


def loop_record(s: LoopSynthesis) -> dict[str, Any]:
    return {
        "loop": s.loop,
        "theme": s.theme.slug,
        "title": s.theme.title,
        "counts": s.counts(),
        "reviewers": [reviewer_record(r) for r in s.reviewers],
        "closures": [
            {"closer": c, "closed": d, "status": st}
            for (c, d), st in zip(s.closures, s.closure_status, strict=True)
        ],
    }


def write_loop(out_dir: Path, synthesis: LoopSynthesis) -> list[Path]:
    """Write loop `synthesis.loop`'s files, replacing any earlier write of the same loop."""
    out_dir = Path(out_dir)
    n = synthesis.loop
    findings_path = out_dir / FINDINGS
    invalid_path = out_dir / INVALID
    dropped_path = out_dir / DROPPED
    loops_path = out_dir / LOOPS
    md_path = out_dir / loop_markdown_name(synthesis)
    replace_loop_lines(findings_path, n, (f.to_dict() for f in synthesis.kept))
    replace_loop_lines(
        invalid_path,
        n,
        (
            {"loop": n, "role": role, "index": index, "reason": reason, "raw": raw}
            for (raw, reason), (role, index) in zip(
                synthesis.invalid, synthesis.invalid_origin, strict=True
            )
        ),
    )
    replace_loop_lines(
        dropped_path,
        n,
        ({"loop": n, "reason": reason, "finding": f.to_dict()} for f, reason in synthesis.dropped),
    )
    atomic_write_text(md_path, synthesis.markdown)
    # Last: a loops.jsonl line means every other file of the loop is in place.
    replace_loop_lines(loops_path, n, [loop_record(synthesis)])
    return [md_path, findings_path, invalid_path, dropped_path, loops_path]


def load_findings(out_dir: Path) -> list[Finding]:
    """Kept findings of every written loop, in loop then rank order."""
    return [Finding.from_dict(row) for row in read_jsonl(Path(out_dir) / FINDINGS)]


def ledger_from_disk(out_dir: Path) -> ClosureLedger:
    """Rebuild the closure ledger from the findings files, loop by loop.

    Kept findings and merged duplicates are closable and may close; findings dropped
    by role isolation are neither, exactly as `synthesize_loop` records them.
    """
    out_dir = Path(out_dir)
    kept = read_jsonl(out_dir / FINDINGS)
    dups = [r for r in read_jsonl(out_dir / DROPPED) if r["reason"].startswith(DUPLICATE_PREFIX)]
    ledger = ClosureLedger()
    for loop in sorted({r["loop"] for r in kept} | {r["loop"] for r in dups}):
        loop_kept = [r for r in kept if r["loop"] == loop]
        loop_dups = [r for r in dups if r["loop"] == loop]
        ledger.register(
            loop,
            [r["id"] for r in loop_kept],
            {r["finding"]["id"]: r["reason"].removeprefix(DUPLICATE_PREFIX) for r in loop_dups},
        )
        closers = loop_kept + [r["finding"] for r in loop_dups]
        for r in sorted(closers, key=lambda r: r["id"]):
            if r["closes"] is not None:
                ledger.record(r["id"], r["closes"], loop)
    return ledger


def _closure_set(ledger: ClosureLedger) -> set[tuple[int, str, str, str]]:
    return {(e.loop, e.closer, e.closed, e.status) for e in ledger.entries}


def write_final(
    out_dir: Path,
    syntheses: Sequence[LoopSynthesis] | None = None,
    *,
    ledger: ClosureLedger | None = None,
    constitution_hash: str,
    usage_totals: dict[str, int] | None = None,
    failed_reviewers: Sequence[ReviewerResult] | None = None,
    config: ReviewConfig | None = None,
    cost_summary: str | None = None,
) -> Path:
    """Write the final outputs from the files on disk; return the `synthesis.md` path.

    Besides `synthesis.md` it writes `synthesis.sarif` (SARIF 2.1.0) and `report.html`
    (self-contained); `config`, when given, names the roles in the SARIF rules and
    orders the report's role filter (role prefixes, sorted, are used otherwise).

    `syntheses`, if given, must already be written (ValueError otherwise), and
    `ledger`, if given, must agree with the closures the files record: either
    mismatch means a loop's output was lost, e.g. a resume that started afresh.
    `usage_totals` (the run's own totals, e.g. including a cache warm-up call) is
    shown beside the sum of the recorded reviewer calls. `failed_reviewers` adds
    failures not visible in the loop records. `cost_summary` (markdown, from
    `orchestrator.cost.render_cost_summary`) ends `synthesis.md`.
    """
    out_dir = Path(out_dir)
    loops = read_jsonl(out_dir / LOOPS)
    written = {r["loop"] for r in loops}
    for s in syntheses or ():
        if s.loop not in written:
            raise ValueError(f"syntheses: loop {s.loop} has not been written; call write_loop")
    disk_ledger = ledger_from_disk(out_dir)
    if ledger is not None and _closure_set(ledger) != _closure_set(disk_ledger):
        raise ValueError(
            "ledger: its closures differ from those recorded in "
            f"{out_dir / FINDINGS} and {out_dir / DROPPED}"
        )
    failures = [
        {"loop": lr["loop"], **rv} for lr in loops for rv in lr["reviewers"] if rv["state"] != "ok"
    ]
    seen = {(f["loop"], f["role"]) for f in failures}
    for r in failed_reviewers or ():
        if (r.loop, r.role) not in seen:
            failures.append({"loop": r.loop, **reviewer_record(r)})
            seen.add((r.loop, r.role))
    failures.sort(key=lambda f: (f["loop"], f["role"]))
    loops = sorted(loops, key=lambda r: r["loop"])
    findings = load_findings(out_dir)
    text = render_final(
        loops=loops,
        findings=findings,
        ledger=disk_ledger,
        constitution_hash=constitution_hash,
        usage_totals=usage_totals,
        failures=failures,
    )
    sarif = render_sarif(
        loops=loops,
        findings=findings,
        ledger=disk_ledger,
        constitution_hash=constitution_hash,
        failures=failures,
        config=config,
    )
    atomic_write_text(out_dir / SARIF, dumps_sarif(sarif))
    page = render_html(
        loops=loops,
        findings=findings,
        ledger=disk_ledger,
        constitution_hash=constitution_hash,
        failures=failures,
        config=config,
    )
    atomic_write_text(out_dir / REPORT, page)
    if cost_summary:
        text = text.rstrip("\n") + "\n\n" + cost_summary.rstrip("\n") + "\n"
    path = out_dir / SYNTHESIS
    # Last: synthesis.md present means the other final files are too.
    atomic_write_text(path, text)
    return path
