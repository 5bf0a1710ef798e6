"""What a run sends and to whom: the per-loop job plan shared by every run mode.

The embedded runner (`orchestrator.run`) and a queue-based runner build their jobs
here, so both send byte-identical prompts and the same JSON payloads:

- `prepare_run` fixes the run-wide inputs once (constitution and its hash, the
  snapshot, the shared system text);
- `role_jobs` / `adversarial_job` give the reviewer payloads of a loop, each
  `{"prompt": ..., "settings": ...}` for `workers.jobs.run_reviewer`;
- `synth_job` gives the payload for `workers.jobs.synthesize_loop_job`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config import ReviewConfig
from orchestrator.cost import BYTES_PER_TOKEN_ESTIMATE, estimate_tokens
from orchestrator.snapshot import Snapshot, snapshot_for_run
from synth.loop import filter_scope, ordered_reviewers, validate_results
from workers.backends import CallSettings
from workers.prompts import ReviewerPrompt, build_prompt, system_text
from workers.result import ReviewerResult

HASH_HEX_CHARS = 16


class DriftError(RuntimeError):
    """The constitution (or another run-wide input) changed since the run started."""


def constitution_hash(data: bytes) -> str:
    """sha256 of the constitution file's bytes, first 16 hex digits."""
    return hashlib.sha256(data).hexdigest()[:HASH_HEX_CHARS]


def resolve_constitution(repo: Path, config: ReviewConfig) -> Path:
    path = config.constitution_path
    return (path if path.is_absolute() else repo / path).resolve()


def read_constitution(path: Path) -> tuple[str, str]:
    """(text, hash) of the constitution; FileNotFoundError names the config key."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"run.constitution: {path} does not exist (paths resolve against --repo)"
        ) from exc
    return data.decode("utf-8"), constitution_hash(data)


@dataclass(frozen=True, slots=True)
class RunInputs:
    """Everything fixed for the whole run; the shared prompt prefix is built from it."""

    config: ReviewConfig
    repo: Path
    out_dir: Path
    constitution_path: Path
    constitution_hash: str
    snapshot: Snapshot
    system: str

    @property
    def snapshot_paths(self) -> frozenset[str]:
        return self.snapshot.paths

    def loops(self, max_loops: int | None = None) -> list[int]:
        """Loop numbers of the run, capped at `max_loops`."""
        numbers = [t.loop for t in self.config.themes]
        return [n for n in numbers if max_loops is None or n <= max_loops]

    def check_drift(self) -> None:
        """Raise DriftError if the constitution on disk no longer has the run's hash."""
        try:
            current = constitution_hash(self.constitution_path.read_bytes())
        except OSError as exc:
            raise DriftError(
                f"constitution drift: {self.constitution_path} can no longer be read ({exc}); "
                f"the run started under hash {self.constitution_hash}"
            ) from exc
        if current != self.constitution_hash:
            raise DriftError(
                f"constitution drift: {self.constitution_path} now hashes to {current}, but "
                f"this run started under {self.constitution_hash}. Findings judged under two "
                "constitutions cannot be merged: restore the file to resume, or start a new "
                "run with --fresh."
            )


def prepare_run(repo: Path, config: ReviewConfig, out_dir: Path) -> RunInputs:
    """Read the constitution, build the snapshot and the run-wide system text."""
    repo = repo.resolve()
    out_dir = out_dir if out_dir.is_absolute() else repo / out_dir
    constitution = resolve_constitution(repo, config)
    text, digest = read_constitution(constitution)
    snapshot = snapshot_for_run(repo, config, out_dir=out_dir, constitution=constitution)
    return RunInputs(
        config=config,
        repo=repo,
        out_dir=out_dir.resolve(),
        constitution_path=constitution,
        constitution_hash=digest,
        snapshot=snapshot,
        system=system_text(config, text),
    )


def call_settings(config: ReviewConfig, backend: str) -> CallSettings:
    return CallSettings(
        backend=backend,
        model=config.model,
        max_tokens=config.max_tokens_reviewer,
        max_findings=config.max_findings_per_reviewer,
        max_attempts=config.max_attempts,
        retry_initial_delay=config.retry_initial_delay,
        retry_max_delay=config.retry_max_delay,
        request_timeout=config.request_timeout,
    )


def _payload(prompt: ReviewerPrompt, settings: CallSettings) -> dict[str, Any]:
    return {"prompt": prompt.to_dict(), "settings": settings.to_dict()}


def role_payload(
    inputs: RunInputs, loop: int, prior_synthesis: str | None, backend: str, role: str
) -> dict[str, Any]:
    """The payload of one role reviewer of the loop (a distributed job builds only its own)."""
    config = inputs.config
    prompt = build_prompt(
        config,
        role=config.role(role),
        theme=config.theme_for(loop),
        system=inputs.system,
        snapshot=inputs.snapshot.text,
        prior_synthesis=prior_synthesis,
    )
    return _payload(prompt, call_settings(config, backend))


def role_jobs(
    inputs: RunInputs, loop: int, prior_synthesis: str | None, backend: str
) -> list[dict[str, Any]]:
    """Payloads of the loop's role reviewers, in config role order."""
    return [
        role_payload(inputs, loop, prior_synthesis, backend, role.prefix)
        for role in inputs.config.role_reviewers
    ]


def role_findings(
    inputs: RunInputs, loop: int, results: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The loop's schema-valid, in-scope role findings the adversarial reviewer attacks."""
    reviewers = ordered_reviewers(
        [ReviewerResult.from_dict(r) for r in results], inputs.config, loop
    )
    checked = validate_results(
        reviewers,
        config=inputs.config,
        loop=loop,
        snapshot_paths=inputs.snapshot_paths,
        constitution_hash=inputs.constitution_hash,
    )
    scoped, _ = filter_scope(checked.valid, inputs.config)
    out = []
    for f in scoped:
        item = f.to_dict()
        del item["constitution_hash"]
        out.append(item)
    return out


def adversarial_job(
    inputs: RunInputs,
    loop: int,
    prior_synthesis: str | None,
    results: Sequence[dict[str, Any]],
    backend: str,
) -> dict[str, Any]:
    """Payload of the loop's adversarial reviewer, given the role reviewers' results."""
    prompt = adversarial_prompt(inputs, loop, prior_synthesis, role_findings(inputs, loop, results))
    return _payload(prompt, call_settings(inputs.config, backend))


def adversarial_prompt(
    inputs: RunInputs,
    loop: int,
    prior_synthesis: str | None,
    findings: Sequence[dict[str, Any]],
) -> ReviewerPrompt:
    """The adversarial reviewer's prompt for loop `loop`, attacking `findings`."""
    config = inputs.config
    return build_prompt(
        config,
        role=config.adversarial,
        theme=config.theme_for(loop),
        system=inputs.system,
        snapshot=inputs.snapshot.text,
        prior_synthesis=prior_synthesis,
        role_findings=findings,
    )


def synth_job(
    inputs: RunInputs,
    loop: int,
    results: Sequence[dict[str, Any]],
    ledger: dict[str, Any],
) -> dict[str, Any]:
    """Payload of the loop's synthesis job (see `workers.jobs.synthesize_loop_job`)."""
    return {
        "config": inputs.config.to_dict(),
        "loop": loop,
        "results": list(results),
        "snapshot_paths": sorted(inputs.snapshot_paths),
        "constitution_hash": inputs.constitution_hash,
        "ledger": ledger,
        "out_dir": str(inputs.out_dir),
    }


# --- dry runs ------------------------------------------------------------------------------

DRY_RUN_HANDOFF = (
    "(The previous loop's synthesis goes here in a real run; a dry run makes no model "
    "call, so its size is not counted.)"
)


def dry_run_loop_prompts(inputs: RunInputs, loop: int) -> list[ReviewerPrompt]:
    """The prompts of loop `loop`'s calls as a dry run sees them: the role reviewers,
    then the adversarial reviewer without role findings (unknown before the run)."""
    prior = None if loop == inputs.loops()[0] else DRY_RUN_HANDOFF
    jobs = role_jobs(inputs, loop, prior, "dry-run")
    adv = adversarial_prompt(inputs, loop, prior, [])
    return [ReviewerPrompt.from_dict(j["prompt"]) for j in jobs] + [adv]


def dry_run_prompts(inputs: RunInputs, max_loops: int | None = None) -> list[ReviewerPrompt]:
    """The prompts of `dry_run_plan`'s calls, in the same order (for token counting)."""
    return [p for loop in inputs.loops(max_loops) for p in dry_run_loop_prompts(inputs, loop)]


def dry_run_plan(inputs: RunInputs, max_loops: int | None = None) -> dict[str, Any]:
    """Every call a run would make, with prompt sizes and token estimates.

    Caching follows the run's order: the first call writes the shared prefix
    (system + snapshot), every later call reads it; each loop's first call writes the
    loop block, the loop's other calls read it; tasks are input. The adversarial
    reviewer's role findings and later loops' handoffs are unknown before the run and
    are not counted; output is counted at the full output budget (an upper bound).
    `orchestrator.cost.price_plan` prices the plan from the config's `[prices]` table,
    the one source of model prices.
    """
    config = inputs.config
    calls: list[dict[str, Any]] = []
    totals = {"input": 0, "cache_write": 0, "cache_read": 0, "output_max": 0}
    prefix_written = False
    for loop in inputs.loops(max_loops):
        for i, p in enumerate(dry_run_loop_prompts(inputs, loop)):
            shared = estimate_tokens(p.system) + estimate_tokens(p.snapshot)
            loop_tokens = estimate_tokens(p.loop_block)
            task = estimate_tokens(p.task)
            write = (0 if prefix_written else shared) + (loop_tokens if i == 0 else 0)
            read = (shared if prefix_written else 0) + (0 if i == 0 else loop_tokens)
            prefix_written = True
            row = {
                "loop": loop,
                "role": p.role,
                "bytes": p.sizes,
                "tokens_estimate": shared + loop_tokens + task,
                "cache_write": write,
                "cache_read": read,
                "input": task,
                "output_max": config.max_tokens_reviewer,
            }
            calls.append(row)
            for k in ("input", "cache_write", "cache_read", "output_max"):
                totals[k] += row[k]
    return {
        "model": config.model,
        "constitution_hash": inputs.constitution_hash,
        "snapshot": {
            "files": len(inputs.snapshot.files),
            "bytes": inputs.snapshot.size,
            "skipped": [list(s) for s in inputs.snapshot.skipped],
        },
        "calls": calls,
        "totals": {"calls": len(calls), **totals},
        "cost_estimate": None,  # priced by `orchestrator.cost.price_plan`
        "bytes_per_token_estimate": BYTES_PER_TOKEN_ESTIMATE,
    }
