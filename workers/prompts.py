"""Reviewer prompts laid out for prompt caching.

A request is four text blocks, most shared first, because a cached prefix must be
byte-identical and come first:

1. system — the constitution, the harness's reviewer instructions, the roster of
   roles, the finding schema and the output rules: identical for every call of a run;
2. the repository snapshot: identical for every call of a run;
3. the loop block — theme, lens and the previous loop's synthesis: identical for the
   eight calls of a loop;
4. the task — the role's directive and scope, for the adversarial reviewer this
   loop's role findings, and the answer format: one call's own.

Each of the three shared blocks ends in a `cache_control` breakpoint (three of the
four the API allows), all with the run's `cache_ttl`, so a call's usage prices at one
write rate. The run prefix (blocks 1 and 2) is written once, by the run's first
call; the loop block by the loop's first call, which the runner sends alone until
its response starts: an entry exists only from then, so calls fanned out at once
would each write it. The loop's other role reviewers and its adversarial reviewer
read both. Only the task is uncached input.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.config import ReviewConfig, Role, Theme
from synth.noise import role_instructions
from synth.schema import SCHEMA_DESCRIPTION

FIRST_LOOP_HANDOFF = "This is the first loop: there is no previous synthesis."


@dataclass(frozen=True, slots=True)
class ReviewerPrompt:
    """Everything one reviewer call sends, as plain JSON-ready text."""

    role: str
    loop: int
    theme: str
    system: str
    snapshot: str
    loop_block: str
    task: str
    cache_ttl: str = "1h"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReviewerPrompt:
        return cls(**data)

    def cache_control(self) -> dict[str, str]:
        # 5 minutes is the API default; only the 1-hour lifetime needs the field.
        if self.cache_ttl == "5m":
            return {"type": "ephemeral"}
        return {"type": "ephemeral", "ttl": self.cache_ttl}

    def messages_request(self) -> dict[str, Any]:
        """`system` and `messages` arguments of a Messages API call."""
        cc = self.cache_control()
        return {
            "system": [{"type": "text", "text": self.system, "cache_control": cc}],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": self.snapshot, "cache_control": cc},
                        {"type": "text", "text": self.loop_block, "cache_control": cc},
                        {"type": "text", "text": self.task},
                    ],
                }
            ],
        }

    def plain_text(self) -> str:
        """The same prompt as one text, for backends without structured prompts."""
        return "\n\n".join((self.system, self.snapshot, self.loop_block, self.task))

    @property
    def sizes(self) -> dict[str, int]:
        """Bytes per block, for dry runs."""
        return {
            "system": len(self.system.encode()),
            "snapshot": len(self.snapshot.encode()),
            "loop_block": len(self.loop_block.encode()),
            "task": len(self.task.encode()),
        }


def _roster(config: ReviewConfig) -> str:
    rows = ["| role | name | scope |", "|---|---|---|"]
    for r in config.roles:
        scope = (
            "everything (exempt from scope)"
            if r.exempt_from_scope
            else ", ".join(f"`{g}`" for g in r.scope)
        )
        rows.append(f"| `{r.prefix}` | {r.name} | {scope} |")
    return "\n".join(rows)


def system_text(config: ReviewConfig, constitution: str) -> str:
    """The run-wide system text: identical for every call of the run."""
    themes = "\n".join(f"{t.loop}. `{t.slug}` — {t.title}" for t in config.themes)
    return f"""{constitution.rstrip()}

---

# Instructions from the review harness

You are one reviewer in a multi-agent code review of the repository snapshot that
follows. The review runs {len(config.themes)} themed loops; in each, the role reviewers
work in parallel, then the adversarial reviewer reads their findings, then a
deterministic synthesiser validates, filters by scope, deduplicates and ranks all
findings and writes the loop's synthesis, which the next loop receives.

After the snapshot you get this loop's theme and lens, the previous loop's synthesis,
then your role, its scope and your task.

The snapshot shows each file as `<file path="..." lines="N">` with every line prefixed
by its line number and ` | `; that prefix is not part of the file (leave it out of
`evidence_quote`, use its numbers for `line_range`).

## Loops

{themes}

## Roles

{_roster(config)}

## Finding schema

{SCHEMA_DESCRIPTION.rstrip()}

## Output rules

- At most {config.max_findings_per_reviewer} findings, most severe first.
- Exactly one fenced block opened with ```json holding a JSON array; no other ```json
  block. Prose outside it is ignored.
- Nothing to report: answer with `[]` in the block — an answer without an array is
  recorded as a failure to extract, never as zero findings.
"""


def loop_text(theme: Theme, prior_synthesis: str | None) -> str:
    """The loop block: identical for the eight calls of one loop."""
    handoff = prior_synthesis.strip() if prior_synthesis else FIRST_LOOP_HANDOFF
    return f"""<loop number="{theme.loop}" theme="{theme.slug}">

# Loop {theme.loop}: {theme.title} (`{theme.slug}`)

Lead roles: {", ".join(f"`{r}`" for r in theme.lead_roles) or "none"}

## Lens

{theme.lens.strip()}

## Previous loop's synthesis

{handoff}

</loop>
"""


def task_text(
    config: ReviewConfig,
    role: Role,
    theme: Theme,
    role_findings: Sequence[dict[str, Any]] | None = None,
) -> str:
    """One reviewer's own instructions (the uncached tail of the prompt)."""
    if role.exempt_from_scope:
        scope = "You may file findings on any file in the snapshot."
    else:
        scope = "You may file findings only on paths matching: " + ", ".join(
            f"`{g}`" for g in role.scope
        )
    parts = [
        f'<assignment role="{role.prefix}" loop="{theme.loop}" theme="{theme.slug}"/>',
        "",
        f"# Your role: {role.name} (`{role.prefix}`)",
        "",
        scope,
        "",
        role.directive.strip(),
        "",
    ]
    extra = role_instructions(config, role)  # per-path instructions and noise limits
    if extra:
        parts += [extra, ""]
    if role_findings is not None:
        listing = json.dumps(list(role_findings), indent=1, ensure_ascii=False)
        parts += [
            f"## Findings of this loop's role reviewers ({len(role_findings)}, schema-valid)",
            "",
            "```json",
            listing,
            "```",
            "",
        ]
    parts += [
        "## Your answer",
        "",
        f"Return at most {config.max_findings_per_reviewer} findings for loop {theme.loop} "
        f"as one ```json fenced array. Every `id` starts with `{role.prefix}-L{theme.loop}-`, "
        f'`role` is "{role.prefix}", `loop` is {theme.loop}, `theme` is "{theme.slug}". '
        "Answer `[]` if you have nothing to report.",
        "",
    ]
    return "\n".join(parts)


def build_prompt(
    config: ReviewConfig,
    *,
    role: Role,
    theme: Theme,
    system: str,
    snapshot: str,
    prior_synthesis: str | None,
    role_findings: Sequence[dict[str, Any]] | None = None,
) -> ReviewerPrompt:
    """Assemble one call's prompt from the run-wide parts and the call's own."""
    return ReviewerPrompt(
        role=role.prefix,
        loop=theme.loop,
        theme=theme.slug,
        system=system,
        snapshot=snapshot,
        loop_block=loop_text(theme, prior_synthesis),
        task=task_text(config, role, theme, role_findings),
        cache_ttl=config.cache_ttl,
    )
