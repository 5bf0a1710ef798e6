"""A small repository to review, a fast config, and deterministic model answers.

The repository has the default config's layout (moneta/, tests/, bench/, docs/,
README.md) plus things the snapshot must leave out (a secret, a binary, harness
code). `scripted_answer` plays every reviewer: valid findings in the role's scope,
closures of the previous loop's findings, a cross-role duplicate, an out-of-scope
finding, an invalid one (a bool as loop) and a Critical escalation candidate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.config import ReviewConfig, default_config_path, parse_config

ROOT = Path(__file__).resolve().parents[2]
CONSTITUTION = ROOT / "docs" / "review-constitution.md"

ROLE_FILES: dict[str, str] = {
    "architect": "moneta/api.py",
    "substrate": "moneta/ecs.py",
    "persistence": "moneta/vector_index.py",
    "usd": "moneta/usd_target.py",
    "consolidation": "moneta/consolidation.py",
    "test": "tests/test_api.py",
    "documentarian": "README.md",
    "adversarial": "moneta/api.py",
}
THEMES = {
    1: "spec-conformance",
    2: "concurrency-atomicity",
    3: "correctness-edges",
    4: "performance-envelope",
    5: "simplicity-doc-tests",
}
ROLE_ORDER = list(ROLE_FILES)


def make_repo(root: Path) -> Path:
    """Write the fixture repository under `root` and return it."""
    files = {
        "README.md": "# Fixture\n\nUse `import moneta`.\n" + "text line\n" * 20,
        "docs/architecture.md": "# Architecture\n\nFour methods.\n",
        "moneta/__init__.py": '"""Fixture substrate."""\n',
        "moneta/api.py": "".join(f"def op_{i}():\n    return {i}\n" for i in range(15)),
        "moneta/ecs.py": "".join(f"ROW_{i} = {i}\n" for i in range(30)),
        "moneta/vector_index.py": "".join(f"def index_{i}():\n    pass\n" for i in range(15)),
        "moneta/usd_target.py": "".join(f"LAYER_{i} = 'layer{i}'\n" for i in range(30)),
        "moneta/consolidation.py": "".join(f"def sleep_{i}():\n    pass\n" for i in range(15)),
        "tests/test_api.py": "".join(
            f"def test_{i}():\n    assert {i} == {i}\n" for i in range(15)
        ),
        "bench/run.py": "print('bench')\n",
        "orchestrator/own.py": "HARNESS = True\n",
        ".env": "ANTHROPIC_API_KEY=sk-secret\n",
        "keys/deploy.pem": "-----BEGIN PRIVATE KEY-----\n",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (root / "moneta/blob.bin").write_bytes(b"\x00\x01\x02binary")
    (root / "docs/review-constitution.md").write_text(
        CONSTITUTION.read_text(encoding="utf-8"), encoding="utf-8"
    )
    return root


def fast_config_text(**run_overrides: Any) -> str:
    """The default config with millisecond retry delays (and optional [run] overrides)."""
    text = default_config_path().read_text(encoding="utf-8")
    values = {"retry_initial_delay": "0.01", "retry_max_delay": "0.05", **run_overrides}
    for key, value in values.items():
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if line.startswith(f"{key} ="):
                lines[i] = f"{key} = {value}"
                break
        else:
            raise KeyError(key)
        text = "\n".join(lines) + "\n"
    return text


def fast_config(**run_overrides: Any) -> ReviewConfig:
    return parse_config(fast_config_text(**run_overrides), "fast.toml")


def write_config(path: Path, **run_overrides: Any) -> Path:
    path.write_text(fast_config_text(**run_overrides), encoding="utf-8")
    return path


def finding(role: str, loop: int, slug: str, /, **overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": f"{role}-L{loop}-{slug}",
        "role": role,
        "loop": loop,
        "theme": THEMES[loop],
        "file_path": ROLE_FILES[role],
        "line_range": [1, 3],
        "severity": "High" if slug == "a" else "Low",
        "claim": f"{role} claim {slug} for loop {loop}",
        "evidence_quote": "def op_0():",
        "risk": "a wrong result reaches the agent",
        "proposed_change": "fix it",
        "conflicts_with_locked_decision": False,
        "requires_section9_escalation": False,
        "references": ["DESIGN 1.1"],
        "closes": None,
        "extra_key": "dropped by the validator",
    }
    item.update(overrides)
    return item


def scripted_findings(role: str | None, loop: int | None) -> list[dict[str, Any]]:
    """The findings `role` files in `loop` (deterministic)."""
    if role is None or loop is None:
        return []
    items = [finding(role, loop, "a"), finding(role, loop, "b", line_range=[5, 6])]
    if loop > 1:
        items[0]["closes"] = f"{role}-L{loop - 1}-a"
    if role == "documentarian":
        # Same claim and overlapping lines as the architect's "a": merged, High survives.
        items.append(
            finding(
                role,
                loop,
                "dup",
                file_path="moneta/api.py",
                line_range=[3, 4],
                severity="Medium",
                claim=f"  ARCHITECT claim a for loop {loop} ",
            )
        )
    if role == "test":
        items.append(finding(role, loop, "scope", file_path="moneta/ecs.py"))  # out of scope
        items.append(finding(role, loop, "bool", loop=True))  # invalid: bool as loop
    if role == "adversarial":
        items.append(
            finding(
                role,
                loop,
                "crit",
                severity="Critical",
                conflicts_with_locked_decision=True,
                requires_section9_escalation=True,
                file_path="moneta/usd_target.py",
            )
        )
    return items


def scripted_answer(role: str | None, loop: int | None, payload: dict[str, Any]) -> str:
    body = json.dumps(scripted_findings(role, loop), indent=1)
    return f"Here is my review.\r\n\r\n```json\r\n{body}\r\n```  \r\nThanks.\r\n"
