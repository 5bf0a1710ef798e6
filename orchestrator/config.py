"""Review configuration: the one home of roles, themes and run settings.

Workers and the synthesiser import these definitions; they never import the
orchestration logic itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Role:
    """A reviewer role. `prefix` is the id prefix of its findings (`<prefix>-L<n>-...`)."""

    prefix: str
    name: str
    scope: tuple[str, ...]
    directive: str
    exempt_from_scope: bool = False


@dataclass(frozen=True, slots=True)
class Theme:
    """One loop of a run: its lens is given to every reviewer of that loop."""

    loop: int
    slug: str
    title: str
    lead_roles: tuple[str, ...]
    lens: str


@dataclass(frozen=True, slots=True)
class ReviewConfig:
    """Everything a run needs besides the repository and the model's answers.

    `roles` lists the role reviewers in rank order and ends with the adversarial
    role (the one with `exempt_from_scope=True`), which runs after the others.
    """

    roles: tuple[Role, ...]
    themes: tuple[Theme, ...]
    constitution_path: Path
    snapshot_include: tuple[str, ...] = ("**",)
    snapshot_exclude: tuple[str, ...] = ()
    snapshot_max_bytes: int = 1_500_000
    model: str = "claude-opus-5-5"
    backend: str = "anthropic"
    max_tokens_reviewer: int = 8192
    max_tokens_synthesis: int = 16384
    concurrency: int = 8
    max_findings_per_reviewer: int = 25
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def role_reviewers(self) -> tuple[Role, ...]:
        return tuple(r for r in self.roles if not r.exempt_from_scope)

    @property
    def adversarial(self) -> Role:
        return next(r for r in self.roles if r.exempt_from_scope)

    def role(self, prefix: str) -> Role:
        for r in self.roles:
            if r.prefix == prefix:
                return r
        raise KeyError(prefix)

    @property
    def role_order(self) -> dict[str, int]:
        return {r.prefix: i for i, r in enumerate(self.roles)}

    def theme_for(self, loop: int) -> Theme:
        for t in self.themes:
            if t.loop == loop:
                return t
        raise KeyError(loop)


@lru_cache(maxsize=1024)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a path glob: `**` matches across `/`, `*` and `?` stay within a segment."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "{":
            end = pattern.find("}", i)
            if end == -1:
                out.append(re.escape(c))
                i += 1
            else:
                alts = pattern[i + 1 : end].split(",")
                out.append("(?:" + "|".join(re.escape(a) for a in alts) + ")")
                i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


def match_glob(pattern: str, path: str) -> bool:
    """True if repo-relative POSIX `path` matches `pattern` (`**`, `*`, `?`, `{a,b}`)."""
    return _glob_regex(pattern).match(path) is not None
