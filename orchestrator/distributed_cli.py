"""The distributed pieces of `moneta-review`: `worker`, `status`, and `run --redis-url`.

Kept apart from `orchestrator.cli` so the embedded command stays free of Redis;
`cli` registers these commands and hands `run` over when a Redis URL is given
(`--redis-url` or REDIS_URL).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from orchestrator.runstate import DEFAULT_PREFIX, RunNotFound

PREFIX_ENV = "MONETA_REDIS_PREFIX"


def _connect(redis_url: str) -> Any:
    from orchestrator.redis_conn import RedisUnavailable, connect

    try:
        return connect(redis_url)
    except (RedisUnavailable, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


def _echo(event: dict[str, Any]) -> None:
    if event["event"] == "loop_done":
        click.echo(f"loop {event['loop']} closed", err=True)
    else:
        click.echo(json.dumps(event), err=True)


def run_distributed(
    *,
    redis_url: str,
    repo: Path,
    config: Any,
    out_dir: Path,
    resume: bool,
    fresh: bool,
    max_loops: int | None,
    run_id: str | None,
    wait: bool,
    prefix: str,
    budget_usd: float | None = None,
) -> None:
    """`moneta-review run` with a Redis URL: enqueue (or resume) the run, then wait.

    `budget_usd` is the run's budget; on resume it replaces the stored one.
    """
    from orchestrator.checkpoint import CheckpointError, clear_run_files
    from orchestrator.distributed import DistributedError, resume_run, start_run, wait_for_run
    from orchestrator.plan import DriftError, prepare_run
    from orchestrator.run_budget import check_budget_arg
    from orchestrator.snapshot import SnapshotError
    from workers.backends import NoBackendAvailable, resolve_backend

    conn = _connect(redis_url)
    try:
        if resume:
            if not run_id:
                raise click.UsageError("--resume with --redis-url needs --run-id RUN")
            report = resume_run(conn, run_id, prefix=prefix, budget_usd=budget_usd)
            click.echo(report.message, err=True)
            if report.status == "completed":
                return
        else:
            check_budget_arg(config, budget_usd)  # before --fresh removes anything
            backend = resolve_backend(config.backend)
            inputs = prepare_run(repo, config, out_dir)
            if fresh:
                clear_run_files(inputs.out_dir)
            meta = start_run(
                conn,
                repo=repo,
                config=config,
                out_dir=out_dir,
                backend=backend,
                run_id=run_id,
                max_loops=max_loops,
                prefix=prefix,
                inputs=inputs,
                budget_usd=budget_usd,
            )
            run_id = meta.run_id
            click.echo(
                f"run {run_id}: enqueued loop {meta.loops[0]} of {meta.loops}; "
                f"`moneta-review status {run_id}` shows progress",
                err=True,
            )
            click.echo(run_id)
        if not wait:
            return
        assert run_id is not None
        final = wait_for_run(conn, run_id, prefix=prefix, emit=_echo)
    except NoBackendAvailable as exc:
        raise click.ClickException(str(exc)) from exc
    except RunNotFound as exc:
        raise click.ClickException(str(exc)) from exc
    except (
        DistributedError,
        DriftError,
        SnapshotError,
        CheckpointError,
        FileNotFoundError,
        ValueError,
    ) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        conn.close()
    if final.status != "completed":
        raise click.ClickException(f"run {run_id} {final.status}: {final.error}")
    click.echo(f"run {run_id} completed: {Path(final.out_dir) / 'synthesis.md'}", err=True)


def _queues(values: tuple[str, ...]) -> list[str]:
    names: list[str] = []
    for v in values:
        names += [p for p in v.replace("|", ",").split(",") if p]
    return names


@click.command("worker")
@click.option("--redis-url", envvar="REDIS_URL", required=True, help="Redis URL (or REDIS_URL).")
@click.option(
    "--queues",
    "queues",
    multiple=True,
    default=("reviewer",),
    show_default=True,
    help="Queue(s) to work: reviewer, synth, gist (repeat, or comma-separate).",
)
@click.option("--name", default=None, help="Worker name (default: queues-host-pid).")
@click.option("--burst", is_flag=True, help="Exit once the queues are empty.")
@click.option("--max-jobs", type=click.IntRange(min=1), default=None)
@click.option(
    "--maintenance-interval",
    type=click.IntRange(min=1),
    default=15,
    show_default=True,
    help="Seconds between this worker's abandoned-job sweeps.",
)
@click.option(
    "--monitoring-interval",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Seconds between heartbeats of a running job.",
)
@click.option(
    "--abandon-grace",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Seconds without a heartbeat before a running job counts as abandoned.",
)
def worker_command(
    redis_url: str,
    queues: tuple[str, ...],
    name: str | None,
    burst: bool,
    max_jobs: int | None,
    maintenance_interval: int,
    monitoring_interval: int,
    abandon_grace: int,
) -> None:
    """Run an RQ worker for review jobs (scale by starting more)."""
    from workers.rq_worker import run_worker

    conn = _connect(redis_url)
    try:
        run_worker(
            conn,
            _queues(queues),
            name=name,
            burst=burst,
            max_jobs=max_jobs,
            maintenance_interval=maintenance_interval,
            job_monitoring_interval=monitoring_interval,
            abandon_grace=abandon_grace,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


@click.command("status")
@click.argument("run_id")
@click.option("--redis-url", envvar="REDIS_URL", required=True, help="Redis URL (or REDIS_URL).")
@click.option(
    "--prefix",
    envvar=PREFIX_ENV,
    default=DEFAULT_PREFIX,
    show_default=True,
    help="Key prefix of the run state.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_command(run_id: str, redis_url: str, prefix: str, as_json: bool) -> None:
    """Show a distributed run and the state of every (loop, role) job."""
    from orchestrator.distributed import format_status, run_status

    conn = _connect(redis_url)
    try:
        status = run_status(conn, run_id, prefix=prefix)
    except (RunNotFound, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        conn.close()
    if as_json:
        click.echo(json.dumps(status, indent=1))
    else:
        sys.stdout.write(format_status(status))


def default_prefix() -> str:
    return os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX


DISTRIBUTED_COMMANDS = ("run", "worker", "status")


def redis_url_in(argv: list[str]) -> str | None:
    """The Redis URL a `moneta-review` command line will use, if any (None for help)."""
    if not argv or argv[0] not in DISTRIBUTED_COMMANDS or "--help" in argv:
        return None
    if argv[0] == "run" and "--dry-run" in argv:
        return None
    for i, arg in enumerate(argv):
        if arg == "--redis-url" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--redis-url="):
            return arg.split("=", 1)[1]
    return os.environ.get("REDIS_URL") or None


def normalise_resume(argv: list[str]) -> list[str]:
    """`run --resume RUN` (a distributed run's id after the flag) → `--resume --run-id RUN`.

    `--resume` alone continues the embedded run in --out, so the id is only taken
    when a word that is not an option follows the flag.
    """
    if not argv or argv[0] != "run" or "--resume" not in argv:
        return argv
    i = argv.index("--resume")
    if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
        return [*argv[: i + 1], "--run-id", *argv[i + 1 :]]
    return argv


def main() -> None:
    """`moneta-review`: check Redis first when a command will use it, then the full CLI.

    The full CLI imports the model SDK, which alone can take seconds on a busy
    machine; an unreachable Redis is reported before that, within seconds.
    """
    sys.argv[1:] = normalise_resume(sys.argv[1:])
    url = redis_url_in(sys.argv[1:])
    if url:
        from orchestrator.redis_conn import RedisUnavailable, check_reachable

        try:
            check_reachable(url)
        except (RedisUnavailable, ValueError) as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
    from orchestrator.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
