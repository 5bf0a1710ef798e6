"""`moneta-review`: run a review, or check a review configuration.

    moneta-review run [--repo PATH] [--config FILE] [--out DIR] [--resume | --fresh]
                      [--max-loops N] [--dry-run] [--backend NAME] [--model ID]
                      [--since REV [--previous DIR]] [--format markdown|sarif]
    moneta-review config check FILE [--repo PATH]
    moneta-review config default

Exit status: 0 done; 1 the run failed or could not start (the message says why and
what to do); 2 bad command-line usage.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import click

from orchestrator.checkpoint import CheckpointError
from orchestrator.config import (
    BACKENDS,
    ConfigError,
    ReviewConfig,
    check_config_text,
    default_config_path,
    load_config,
    match_glob,
)
from orchestrator.cost import BudgetExceeded, count_tokens_sdk, price_plan
from orchestrator.distributed_cli import (
    default_prefix,
    run_distributed,
    worker_command,
)
from orchestrator.incremental import IncrementalError, incremental_scope, with_scope
from orchestrator.logs import LOG_FORMATS, configure_logging
from orchestrator.metrics import embedded_metrics, metrics_command
from orchestrator.plan import DriftError, dry_run_plan, dry_run_prompts, prepare_run
from orchestrator.run import RunError, RunOptions, run_review
from orchestrator.snapshot import SnapshotError
from orchestrator.status_view import embedded_observer
from orchestrator.status_view import status_command as status_view_command
from synth.outputs import SARIF
from workers.backends import NoBackendAvailable, resolve_backend
from workers.batch_backend import batch_price_config


def _load(config_file: Path | None) -> ReviewConfig:
    try:
        return load_config(config_file)
    except ConfigError as exc:
        raise click.ClickException(f"invalid configuration:\n{exc}") from exc


def _describe_event(event: dict[str, Any]) -> str:
    """One human line for a run's progress event."""
    kind = event["event"]
    if kind == "run_start":
        loops = ", ".join(map(str, event["loops"])) or "none left"
        msg = (
            f"review: backend {event['backend']}, model {event['model']}, constitution "
            f"{event['constitution_hash']}, snapshot {event['snapshot_files']} files / "
            f"{event['snapshot_bytes']:,} bytes; loops to run: {loops}"
        )
    elif kind == "loop_start":
        msg = f"loop {event['loop']} ({event['theme']}): reviewers running"
    elif kind == "reviewer_done":
        if event["status"] == "failed":
            msg = (
                f"  {event['role']}: FAILED after {event['attempts']} attempt(s): {event['error']}"
            )
        elif event["findings"] is None:
            msg = f"  {event['role']}: no findings extracted: {event['error']}"
        else:
            msg = (
                f"  {event['role']}: {event['findings']} finding(s), {event['attempts']} attempt(s)"
            )
    elif kind == "loop_done":
        c = event["counts"]
        msg = (
            f"loop {event['loop']} done: {c['raw']} raw, {c['kept']} kept, {c['invalid']} invalid, "
            f"{c['reviewers_failed']} reviewer(s) failed"
        )
    elif kind == "resumed":
        msg = f"resuming after loop(s) {', '.join(map(str, event['completed_loops'])) or 'none'}"
    elif kind == "resume_nothing":
        msg = f"nothing to resume in {event['out_dir']}: starting a new run"
    elif kind == "cleared":
        msg = f"removed {len(event['files'])} file(s) of an earlier run"
    elif kind == "warning":
        msg = f"warning: {event['message']}"
    elif kind == "run_done":
        msg = f"synthesis: {event['synthesis']} ({event['calls']} model call(s) in this run)"
    else:
        msg = json.dumps(event)
    return msg


def _finite_budget(
    _ctx: click.Context, _param: click.Parameter, value: float | None
) -> float | None:
    """FloatRange lets NaN and infinity through; neither is a budget."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number of USD >= 0, got {value}")
    return value


def _echo_event(event: dict[str, Any]) -> None:
    click.echo(_describe_event(event), err=True)


@click.group()
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    envvar="MONETA_LOG_FORMAT",
    default="text",
    show_default=True,
    help="json: one JSON object per log line, with run id, loop, role and job id.",
)
def main(log_format: str) -> None:
    """Multi-agent code review of a repository under a hashed constitution."""
    if log_format == "json":
        configure_logging(log_format)


@main.command()
@click.option(
    "--repo",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Repository to review.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Review configuration (TOML). Default: the packaged one for this repository.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("docs/review"),
    show_default=True,
    help="Output directory (relative paths resolve against --repo).",
)
@click.option("--resume", is_flag=True, help="Continue after the last completed loop.")
@click.option("--fresh", is_flag=True, help="Discard an earlier run in --out and start over.")
@click.option("--max-loops", type=click.IntRange(min=1), default=None, help="Stop after loop N.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Assemble every prompt and report sizes, token and cost estimates; call no model.",
)
@click.option("--backend", type=click.Choice(BACKENDS), default=None, help="Override run.backend.")
@click.option("--model", default=None, help="Override run.model.")
@click.option("--concurrency", type=click.IntRange(1, 256), default=None, help="Calls in flight.")
@click.option(
    "--redis-url",
    envvar="REDIS_URL",
    default=None,
    help="Run distributed on this Redis (or REDIS_URL); without it the run is embedded.",
)
@click.option("--run-id", default=None, help="Distributed run id (with --resume: the run).")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Distributed: wait for the run to finish, or exit once it is enqueued.",
)
@click.option(
    "--budget-usd",
    type=click.FloatRange(min=0),
    default=None,
    callback=_finite_budget,
    help="Stop before a call that would take the run's estimated cost past this (USD); "
    "--resume with a larger budget continues (distributed: `--resume RUN --budget-usd Y`).",
)
@click.option(
    "--since",
    "since",
    default=None,
    metavar="REV",
    help="Incremental review: keep only findings on lines changed since git revision REV "
    "(the working tree against REV; reviewers still see the whole snapshot).",
)
@click.option(
    "--previous",
    "previous_run",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="With --since: a previous run's output directory; findings it already filed "
    "(same file and claim, overlapping lines after the diff) are marked seen, not new.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["markdown", "sarif"]),
    default="markdown",
    show_default=True,
    help="sarif: also print the run's synthesis.sarif (SARIF 2.1.0) on stdout.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Embedded: serve Prometheus metrics of this run on this port while it runs.",
)
def run(
    repo: Path,
    config_file: Path | None,
    out_dir: Path,
    resume: bool,
    fresh: bool,
    max_loops: int | None,
    dry_run: bool,
    backend: str | None,
    model: str | None,
    concurrency: int | None,
    redis_url: str | None,
    run_id: str | None,
    wait: bool,
    budget_usd: float | None,
    metrics_port: int | None,
    since: str | None,
    previous_run: Path | None,
    output_format: str,
) -> None:
    """Review --repo in themed loops and write findings and syntheses to --out."""
    if resume and fresh:
        raise click.UsageError("--resume and --fresh exclude each other")
    if previous_run is not None and since is None:
        raise click.UsageError("--previous needs --since REV (the revision it reviewed)")
    if backend == "anthropic-batch" and redis_url:
        raise click.UsageError("--backend anthropic-batch runs embedded (no --redis-url)")
    config = _load(config_file)
    if since is not None:
        try:
            scope = incremental_scope(repo, since, previous_run, out_dir=out_dir)
            config = with_scope(config, scope)
        except (IncrementalError, ValueError) as exc:
            raise click.ClickException(f"--since {since}: {exc}") from exc
    overrides: dict[str, Any] = {}
    if model:
        overrides["model"] = model
    if concurrency:
        overrides["concurrency"] = concurrency
    if backend:
        overrides["backend"] = backend
    config = replace(config, **overrides) if overrides else config
    try:
        if dry_run:
            inputs = prepare_run(repo, config, out_dir)
            counts = count_tokens_sdk(dry_run_prompts(inputs, max_loops), config.model)
            priced = batch_price_config(config) if config.backend == "anthropic-batch" else config
            plan = price_plan(dry_run_plan(inputs, max_loops), priced, counts)
            click.echo(json.dumps(plan, indent=1))
            return
        if redis_url:
            # With --format sarif, stdout carries only the SARIF log (the run id goes to stderr).
            quiet = output_format == "sarif" and wait
            with contextlib.redirect_stdout(sys.stderr) if quiet else contextlib.nullcontext():
                run_distributed(
                    redis_url=redis_url,
                    repo=repo,
                    config=config,
                    out_dir=out_dir,
                    resume=resume,
                    fresh=fresh,
                    max_loops=max_loops,
                    run_id=run_id,
                    wait=wait,
                    prefix=default_prefix(),
                    budget_usd=budget_usd,
                )
            if quiet:
                done = out_dir if out_dir.is_absolute() else repo / out_dir
                sys.stdout.write((done / SARIF).read_text(encoding="utf-8"))
            return
        resolve_backend(config.backend)  # fail before any work if no model is reachable
        options = RunOptions(
            repo=repo,
            config=config,
            out_dir=out_dir,
            resume=resume,
            fresh=fresh,
            max_loops=max_loops,
            budget_usd=budget_usd,
            recorder=embedded_metrics(metrics_port),
        )
        with embedded_observer(repo, out_dir, config, _echo_event, _describe_event) as on_event:
            report = anyio.run(lambda: run_review(options, on_event=on_event))
    except NoBackendAvailable as exc:
        raise click.ClickException(str(exc)) from exc
    except DriftError as exc:
        raise click.ClickException(f"{exc} (the checkpoint is unchanged)") from exc
    except BudgetExceeded as exc:
        raise click.ClickException(str(exc)) from exc
    except (RunError, SnapshotError, CheckpointError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if report.failed_reviewers:
        click.echo(
            f"warning: {len(report.failed_reviewers)} reviewer call(s) failed every attempt; "
            "see the loop files",
            err=True,
        )
    if output_format == "sarif":
        sys.stdout.write((report.out_dir / SARIF).read_text(encoding="utf-8"))


main.add_command(worker_command)
main.add_command(metrics_command)
main.add_command(status_view_command)


@main.group("config")
def config_group() -> None:
    """Inspect review configurations."""


@config_group.command("check")
@click.argument("config_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--repo",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Also check the constitution, the snapshot budget and role scopes against it.",
)
def config_check(config_file: Path, repo: Path | None) -> None:
    """Report every problem of CONFIG_FILE as FILE:LINE: message."""
    try:
        text = config_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{config_file}: cannot read: {exc}") from exc
    config, problems = check_config_text(text, str(config_file))
    for p in problems:
        click.echo(str(p))
    if problems or config is None:
        raise click.ClickException(f"{len(problems)} problem(s) in {config_file}")
    notes: list[str] = []
    if repo is not None:
        try:
            inputs = prepare_run(repo, config, Path("docs/review"))
        except (SnapshotError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from exc
        paths = sorted(inputs.snapshot_paths)
        for role in config.role_reviewers:
            if not any(match_glob(g, p) for g in role.scope for p in paths):
                notes.append(f"warning: role {role.prefix!r}: its scope matches no snapshot file")
        notes.append(
            f"snapshot: {len(paths)} files, {inputs.snapshot.size:,} bytes "
            f"(budget {config.snapshot_max_bytes:,}); constitution {inputs.constitution_hash}"
        )
    for n in notes:
        click.echo(n)
    click.echo(
        f"{config_file}: ok ({len(config.role_reviewers)} role reviewers + adversarial, "
        f"{len(config.themes)} loops, model {config.model})"
    )


@config_group.command("default")
def config_default() -> None:
    """Print the packaged default configuration (a starting point for your own)."""
    sys.stdout.write(default_config_path().read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
