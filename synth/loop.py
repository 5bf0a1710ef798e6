"""Close one loop: validate → scope → dedupe → rank → noise controls → closures → render.

Everything here is deterministic code (no model call): identical inputs give an
identical `LoopSynthesis`, including byte-identical markdown.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.config import ReviewConfig, Role, Theme, match_glob
from synth.ledger import ClosureLedger
from synth.noise import DUPLICATE_PREFIX, apply_noise
from synth.render import render_loop
from synth.schema import SEVERITIES, SEVERITY_RANK, Finding, InvalidFinding, validate_finding
from workers.result import ReviewerResult

ROLE_ISOLATION = "role-isolation"

RankKey = tuple[int, int, int, int, str]


@dataclass(slots=True)
class LoopSynthesis:
    """The judged outcome of one loop.

    `invalid` holds (raw item, reason); `invalid_origin` is aligned with it and says
    which reviewer sent the item and at which index of its array (-1 when the whole
    `findings_raw` was not a list). `dropped` reasons are "role-isolation",
    "duplicate-of:<surviving id>" or a noise-control reason (`synth.noise`).
    `closures` are (closer id, closed id) pairs; `closure_status` is aligned with
    them ("closed" or "unknown-id").
    """

    loop: int
    theme: Theme
    kept: list[Finding]
    invalid: list[tuple[object, str]]
    dropped: list[tuple[Finding, str]]
    reviewers: list[ReviewerResult]
    closures: list[tuple[str, str]]
    markdown: str = ""
    invalid_origin: list[tuple[str, int]] = field(default_factory=list)
    closure_status: list[str] = field(default_factory=list)

    @property
    def raw_count(self) -> int:
        return len(self.invalid) + len(self.kept) + len(self.dropped)

    def counts(self) -> dict[str, Any]:
        """Counts shown in the loop markdown and kept in loops.jsonl."""
        by_reason: dict[str, int] = {ROLE_ISOLATION: 0, "duplicate": 0}
        for _, reason in self.dropped:
            key = "duplicate" if reason.startswith(DUPLICATE_PREFIX) else reason
            by_reason[key] = by_reason.get(key, 0) + 1
        severity = {s: 0 for s in SEVERITIES}
        for f in self.kept:
            severity[f.severity] += 1
        return {
            "raw": self.raw_count,
            "valid": len(self.kept) + len(self.dropped),
            "invalid": len(self.invalid),
            "dropped": by_reason,
            "kept": len(self.kept),
            "severity": severity,
            "escalation_candidates": sum(f.requires_section9_escalation for f in self.kept),
            "reviewers": len(self.reviewers),
            "reviewers_failed": sum(r.status == "failed" for r in self.reviewers),
            "extraction_failures": sum(
                r.status == "ok" and r.findings_raw is None for r in self.reviewers
            ),
        }


def normalise_claim(claim: str) -> str:
    """Case-folded claim with runs of whitespace collapsed to one space, trimmed."""
    return " ".join(claim.casefold().split())


def rank_key(finding: Finding, theme: Theme, role_order: dict[str, int]) -> RankKey:
    """Sort key, best first: severity, escalation flag set, theme lead role, role order, id."""
    return (
        SEVERITY_RANK[finding.severity],
        0 if finding.requires_section9_escalation else 1,
        0 if finding.role in theme.lead_roles else 1,
        role_order.get(finding.role, len(role_order)),
        finding.id,
    )


def in_scope(role: Role, path: str) -> bool:
    """True if `role` may file findings on `path` (the exempt role may file anywhere)."""
    return role.exempt_from_scope or any(match_glob(g, path) for g in role.scope)


def dedupe(
    findings: Sequence[Finding], key: Any
) -> tuple[list[Finding], list[tuple[Finding, str]]]:
    """Merge duplicates; return (survivors, [(dropped, "duplicate-of:<survivor id>")]).

    Duplicates share `file_path`, the normalised claim (`normalise_claim`) and lines.
    Line ranges are inclusive, so ranges overlap when they share at least one line:
    touching ranges such as [1, 5] and [5, 9] (both hold line 5) are duplicates,
    adjacent ranges such as [1, 5] and [6, 9] are not. Overlap chains: ranges linked
    through overlapping neighbours ([1, 5], [5, 9], [9, 12]) form one group. The
    group's survivor is the one ranked first by `key` (higher severity, then the
    rank tie-breakers, ending with the id), so the choice is deterministic.

    Findings are bucketed by (file, claim) and each bucket's ranges swept in start
    order, so the cost is O(n log n) however many findings share a file.
    """
    buckets: dict[tuple[str, str], list[Finding]] = {}
    for f in findings:
        buckets.setdefault((f.file_path, normalise_claim(f.claim)), []).append(f)
    survivors: list[Finding] = []
    dropped: list[tuple[Finding, str]] = []
    for bucket in buckets.values():
        if len(bucket) == 1:
            survivors.append(bucket[0])
            continue
        bucket.sort(key=lambda f: f.line_range)
        group: list[Finding] = [bucket[0]]
        group_end = bucket[0].line_range[1]
        for f in bucket[1:]:
            if f.line_range[0] <= group_end:
                group.append(f)
                group_end = max(group_end, f.line_range[1])
            else:
                _close_group(group, key, survivors, dropped)
                group = [f]
                group_end = f.line_range[1]
        _close_group(group, key, survivors, dropped)
    return survivors, dropped


def _close_group(
    group: list[Finding],
    key: Any,
    survivors: list[Finding],
    dropped: list[tuple[Finding, str]],
) -> None:
    best = min(group, key=key)
    survivors.append(best)
    for f in group:
        if f is not best:
            dropped.append((f, DUPLICATE_PREFIX + best.id))


@dataclass(slots=True)
class Validated:
    """Outcome of validating every reviewer's raw items (see `LoopSynthesis`)."""

    valid: list[Finding] = field(default_factory=list)
    invalid: list[tuple[object, str]] = field(default_factory=list)
    origin: list[tuple[str, int]] = field(default_factory=list)

    def reject(self, raw: object, reason: str, role: str, index: int) -> None:
        self.invalid.append((raw, reason))
        self.origin.append((role, index))


def ordered_reviewers(
    results: Sequence[ReviewerResult], config: ReviewConfig, loop: int
) -> list[ReviewerResult]:
    """Results in config role order; ValueError for another loop's or an unknown role's."""
    role_order = config.role_order
    for r in results:
        if r.loop != loop:
            raise ValueError(
                f"results: reviewer {r.role!r} result is for loop {r.loop}, not {loop}"
            )
        if r.role not in role_order:
            raise ValueError(f"results: reviewer role {r.role!r} is not in the config's roles")
    return sorted(results, key=lambda r: role_order[r.role])


def validate_results(
    reviewers: Sequence[ReviewerResult],
    *,
    config: ReviewConfig,
    loop: int,
    snapshot_paths: Collection[str],
    constitution_hash: str,
) -> Validated:
    """Validate every raw item in reviewer order; a repeated id is invalid after the first.

    Items past `config.max_findings_per_reviewer` (when > 0) are invalid too. The
    ids checked for repeats are those of items that passed every other rule.
    """
    theme = config.theme_for(loop).slug
    paths = (
        snapshot_paths if isinstance(snapshot_paths, frozenset | set) else frozenset(snapshot_paths)
    )
    cap = config.max_findings_per_reviewer
    out = Validated()
    seen: set[str] = set()
    for r in reviewers:
        items = r.findings_raw
        if items is None:
            continue
        if not isinstance(items, list):
            reason = f"findings_raw: must be a JSON array, got {type(items).__name__}"
            out.reject(items, reason, r.role, -1)
            continue
        for i, item in enumerate(items):
            try:
                if cap > 0 and i >= cap:
                    raise InvalidFinding(
                        f"exceeds max_findings_per_reviewer ({cap}): item {i + 1} of {len(items)}"
                    )
                f = validate_finding(
                    item,
                    role=r.role,
                    loop=loop,
                    theme=theme,
                    snapshot_paths=paths,
                    constitution_hash=constitution_hash,
                )
                if f.id in seen:
                    raise InvalidFinding(f"id: duplicate id {f.id!r} in loop {loop}")
            except InvalidFinding as exc:
                out.reject(item, exc.reason, r.role, i)
                continue
            seen.add(f.id)
            out.valid.append(f)
    return out


def filter_scope(
    findings: Sequence[Finding], config: ReviewConfig
) -> tuple[list[Finding], list[tuple[Finding, str]]]:
    """Split into (in scope, [(out of scope, "role-isolation")]); the exempt role keeps all."""
    roles = {role.prefix: role for role in config.roles}
    cache: dict[tuple[str, str], bool] = {}  # many findings share (role, file)
    scoped: list[Finding] = []
    dropped: list[tuple[Finding, str]] = []
    for f in findings:
        key = (f.role, f.file_path)
        ok = cache.get(key)
        if ok is None:
            ok = cache[key] = in_scope(roles[f.role], f.file_path)
        if ok:
            scoped.append(f)
        else:
            dropped.append((f, ROLE_ISOLATION))
    return scoped, dropped


def record_closures(
    ledger: ClosureLedger,
    loop: int,
    kept: Sequence[Finding],
    duplicates: Sequence[tuple[Finding, str]],
) -> tuple[list[tuple[str, str]], list[str]]:
    """Register the loop's ids in `ledger` and record its `closes` links, by closer id.

    Merged duplicates stay closable (a later closure resolves to their survivor) and
    their own `closes` links count: they passed every rule, only their text repeated.
    Any earlier record of this loop in the ledger is replaced.
    """
    ledger.begin_loop(loop)
    ledger.register(
        loop,
        [f.id for f in kept],
        {d.id: reason.removeprefix(DUPLICATE_PREFIX) for d, reason in duplicates},
    )
    closures: list[tuple[str, str]] = []
    status: list[str] = []
    closers = sorted([*kept, *(d for d, _ in duplicates)], key=lambda f: f.id)
    for f in closers:
        if f.closes is not None:
            closures.append((f.id, f.closes))
            status.append(ledger.record(f.id, f.closes, loop).status)
    return closures, status


def synthesize_loop(
    results: Sequence[ReviewerResult],
    *,
    config: ReviewConfig,
    loop: int,
    snapshot_paths: Collection[str],
    constitution_hash: str,
    ledger: ClosureLedger,
) -> LoopSynthesis:
    """Judge one loop's reviewer results and record its closures into `ledger`.

    Reviewers are processed in config role order whatever order `results` arrive
    in, so "first" (for duplicate ids) is deterministic. Re-synthesising a loop
    replaces that loop's ledger entries rather than adding to them.

    Raises ValueError if a result belongs to another loop or to a role not in
    `config` (a harness bug, not model output).
    """
    theme = config.theme_for(loop)
    role_order = config.role_order
    reviewers = ordered_reviewers(results, config, loop)
    checked = validate_results(
        reviewers,
        config=config,
        loop=loop,
        snapshot_paths=snapshot_paths,
        constitution_hash=constitution_hash,
    )
    scoped, dropped = filter_scope(checked.valid, config)

    def key(f: Finding) -> RankKey:
        return rank_key(f, theme, role_order)

    survivors, duplicates = dedupe(scoped, key)
    ranked = sorted(survivors, key=key)
    diff_dropped: list[tuple[Finding, str]] = []
    if config.incremental is not None:  # --since: before the caps, so they count kept ones
        from orchestrator.incremental import apply_incremental  # imports this module

        ranked, diff_dropped, duplicates = apply_incremental(ranked, duplicates, config.incremental)
    kept, noise_dropped, duplicates = apply_noise(ranked, duplicates, config.noise)
    duplicates.sort(key=lambda d: d[0].id)
    dropped.extend(duplicates)
    dropped.extend(diff_dropped)
    dropped.extend(noise_dropped)
    closures, status = record_closures(ledger, loop, kept, duplicates)
    synthesis = LoopSynthesis(
        loop=loop,
        theme=theme,
        kept=kept,
        invalid=checked.invalid,
        dropped=dropped,
        reviewers=reviewers,
        closures=closures,
        invalid_origin=checked.origin,
        closure_status=status,
    )
    synthesis.markdown = render_loop(synthesis, config)
    return synthesis
