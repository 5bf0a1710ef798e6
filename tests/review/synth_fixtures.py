"""Small builders for synth tests: a config shaped like the default review, raw findings."""

from __future__ import annotations

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
