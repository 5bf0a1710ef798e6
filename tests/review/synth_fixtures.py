"""Small builders for synth tests: a config shaped like the default review, raw findings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config import ReviewConfig, Role, Theme
from workers.result import ReviewerResult

HASH = "0123456789abcdef"

SNAPSHOT: frozenset[str] = frozenset(
    {
        "README.md",
        "docs/design.md",
        "moneta/api.py",
        "moneta/ecs.py",
        "moneta/durability.py",
        "moneta/usd_target.py",
        "moneta/consolidation.py",
        "moneta/sub/deep.py",
        "tests/test_api.py",
        "bench/run.py",
    }
)

ROLES: tuple[Role, ...] = (
    Role("architect", "Architect", ("docs/**", "moneta/*.py"), "spec conformance"),
    Role("substrate", "Substrate", ("moneta/{ecs,decay,api,attention_log,types}.py",), "core"),
    Role("persistence", "Persistence", ("moneta/{vector_index,durability}.py",), "disk"),
    Role("usd", "USD", ("moneta/usd_target.py",), "usd"),
    Role("consolidation", "Consolidation", ("moneta/consolidation.py",), "sleep"),
    Role("test", "Test", ("tests/**", "bench/**"), "tests"),
    Role("documentarian", "Documentarian", ("README.md", "docs/**", "moneta/*.py"), "docs"),
    Role("adversarial", "Adversarial", (), "break it", exempt_from_scope=True),
)

THEMES: tuple[Theme, ...] = (
    Theme(1, "spec-conformance", "Spec conformance", ("architect",), "Does it match the spec?"),
    Theme(2, "concurrency-atomicity", "Concurrency", ("usd", "persistence"), "Races."),
    Theme(3, "correctness-edges", "Edges", ("substrate", "adversarial"), "Edge cases."),
    Theme(4, "performance-envelope", "Performance", ("architect", "test"), "Speed."),
    Theme(5, "simplicity-doc-tests", "Simplicity", ("documentarian", "test"), "Docs."),
)


def make_config(**overrides: Any) -> ReviewConfig:
    kw: dict[str, Any] = {
        "roles": ROLES,
        "themes": THEMES,
        "constitution_path": Path("docs/review-constitution.md"),
    }
    kw.update(overrides)
    return ReviewConfig(**kw)


def raw(
    role: str = "architect",
    loop: int = 1,
    slug: str = "a",
    /,
    **overrides: Any,
) -> dict[str, Any]:
    """A raw finding dict that validates for (`role`, `loop`) unless overridden.

    The three builders are positional-only so `raw(loop=True)` overrides the key.
    """
    theme = next(t.slug for t in THEMES if t.loop == loop)
    item: dict[str, Any] = {
        "id": f"{role}-L{loop}-{slug}",
        "role": role,
        "loop": loop,
        "theme": theme,
        "file_path": "moneta/api.py",
        "line_range": [10, 12],
        "severity": "Medium",
        "claim": f"claim {slug}",
        "evidence_quote": "def deposit(self):\n    pass",
        "risk": "data loss",
        "proposed_change": "",
        "conflicts_with_locked_decision": False,
        "requires_section9_escalation": False,
        "references": [],
        "closes": None,
    }
    item.update(overrides)
    return item


def ok(role: str, loop: int, items: list[Any], **kw: Any) -> ReviewerResult:
    usage = {"input": 100, "output": 10, "cache_write": 0, "cache_read": 90}
    return ReviewerResult(
        role=role, loop=loop, status="ok", findings_raw=items, attempts=1, usage=usage, **kw
    )


def run_loop(
    results: list[ReviewerResult],
    loop: int = 1,
    *,
    ledger: Any = None,
    config: ReviewConfig | None = None,
) -> Any:
    """synthesize_loop with the fixture snapshot and hash; a fresh ledger unless given."""
    from synth.ledger import ClosureLedger
    from synth.loop import synthesize_loop

    return synthesize_loop(
        results,
        config=config or make_config(),
        loop=loop,
        snapshot_paths=SNAPSHOT,
        constitution_hash=HASH,
        ledger=ledger if ledger is not None else ClosureLedger(),
    )


# One in-scope file per role, so a role's findings never cross into another's claims.
HOME: dict[str, str] = {
    "architect": "moneta/api.py",
    "substrate": "moneta/ecs.py",
    "persistence": "moneta/durability.py",
    "usd": "moneta/usd_target.py",
    "consolidation": "moneta/consolidation.py",
    "test": "tests/test_api.py",
    "documentarian": "README.md",
    "adversarial": "moneta/api.py",
}
SEVERITY_CYCLE = ("Critical", "High", "Medium", "Low", "Note")


@dataclass(slots=True)
class Bulk:
    """Raw results of one loop built to a known outcome (see `bulk_results`)."""

    results: list[ReviewerResult]
    raw: int = 0
    invalid: int = 0
    role_isolation: int = 0
    groups: list[list[tuple[str, str]]] = field(default_factory=list)  # [(id, severity)]

    def survivor(self, group: list[tuple[str, str]]) -> str:
        """Highest severity first; severities differ within a group, so no tie-break."""
        return min(group, key=lambda m: SEVERITY_CYCLE.index(m[1]))[0]

    def expected_kept(self) -> set[str]:
        return {self.survivor(g) for g in self.groups}

    def expected_duplicates(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for g in self.groups:
            best = self.survivor(g)
            out.update({fid: "duplicate-of:" + best for fid, _ in g if fid != best})
        return out


def bulk_results(total: int = 10_000, loop: int = 1) -> Bulk:
    """`total` raw findings over the 8 roles with a known outcome, for scale checks.

    Per role: every 20th item is invalid (an unknown severity), every 20th (offset 10)
    of a scoped role is out of scope; the rest form duplicate groups of 1, 2 or 3
    members (same file, the claim in varying case and spacing, chained ranges that
    share one line), severities distinct within a group so its survivor is known.
    """
    roles = [r.prefix for r in ROLES]
    per_role = [total // len(roles) + (1 if i < total % len(roles) else 0) for i in range(8)]
    out = Bulk(results=[])
    for role, count in zip(roles, per_role, strict=True):
        items: list[dict[str, Any]] = []
        group: list[tuple[str, str]] = []
        g = 0
        for i in range(count):
            fid = slug_n(i)
            if i % 20 == 0:
                items.append(raw(role, loop, fid, severity="Blocker"))
                out.invalid += 1
                continue
            if i % 20 == 10 and role != "adversarial":
                items.append(raw(role, loop, fid, file_path=OUTSIDE[role]))
                out.role_isolation += 1
                continue
            member = len(group)
            severity = SEVERITY_CYCLE[(g + 2 * member) % 5]
            start = g * 100 + member * 4
            claim = f"{role} claim {g}" if member % 2 == 0 else f" {role.upper()}  CLAIM\t{g}"
            items.append(
                raw(
                    role,
                    loop,
                    fid,
                    file_path=HOME[role],
                    claim=claim,
                    line_range=[start, start + 4],
                    severity=severity,
                )
            )
            group.append((f"{role}-L{loop}-{fid}", severity))
            if len(group) == 1 + g % 3:
                out.groups.append(group)
                group = []
                g += 1
        if group:
            out.groups.append(group)
        out.results.append(ok(role, loop, items))
        out.raw += count
    return out


def slug_n(i: int) -> str:
    # Zero-padded so id order is member order within a role.
    return f"n{i:06d}"


OUTSIDE: dict[str, str] = {
    "architect": "tests/test_api.py",
    "substrate": "moneta/usd_target.py",
    "persistence": "moneta/api.py",
    "usd": "moneta/ecs.py",
    "consolidation": "README.md",
    "test": "moneta/api.py",
    "documentarian": "bench/run.py",
}
