"""What a run is doing: `moneta-review status [RUN]`, and an embedded run's progress.

A run's view is one JSON-ready dict, built from wherever the run keeps its state:

- a distributed run (`--redis-url`): `orchestrator.distributed.run_status` (state and
  attempts of every (loop, role) job) joined with each job's stored result (findings,
  tokens) and its model-call span recorded by the metrics (`orchestrator.metrics`);
- an embedded run (RUN is its output directory): `.status.json`, which the run's
  `EmbeddedStatus` rewrites on every progress event, or, for a run written without
  it, the loop records in `loops.jsonl`.

Every job row carries `state`, `duration_s`, `findings`, `tokens` (by kind) and
`cost_usd` at the config's prices. On a terminal the view is a rich table (`--watch`
keeps it live until the run ends); otherwise, and with `--json`, plain text or JSON.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator.config import ReviewConfig
from orchestrator.cost import cache_read_share, config_price, usage_cost
from synth.outputs import atomic_write_text, read_jsonl
from workers.backends import USAGE_KEYS

STATUS_FILE = ".status.json"
TERMINAL_STATES = ("completed", "failed", "stopped")


def _cost(config: ReviewConfig, usage: Mapping[str, int]) -> float | None:
    price = config_price(config)
    if price is None:
        return None
    return round(usage_cost(usage, price, config.cache_ttl)["total"], 6)


def _totals(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    tokens = dict.fromkeys(USAGE_KEYS, 0)
    cost = 0.0
    for j in jobs:
        for k in USAGE_KEYS:
            tokens[k] += int((j.get("tokens") or {}).get(k, 0))
        cost += j.get("cost_usd") or 0.0
    share = cache_read_share(tokens)
    return {
        "findings": sum(j.get("findings") or 0 for j in jobs),
        "tokens": tokens,
        "cost_usd": round(cost, 6),
        "cache_read_share": None if share is None else round(share, 4),
        "jobs_by_state": _count_states(jobs),
    }


def _count_states(jobs: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for j in jobs:
        out[j["state"]] = out.get(j["state"], 0) + 1
    return dict(sorted(out.items()))


# --- distributed runs ----------------------------------------------------------------------


def view_from_redis(conn: Any, run_id: str, prefix: str) -> dict[str, Any]:
    """`run_status` of a distributed run with findings, tokens, cost and duration per job."""
    from orchestrator.blobs import get_blob
    from orchestrator.distributed import run_status
    from orchestrator.metrics import job_timing
    from orchestrator.runstate import RunState
    from orchestrator.runstate import field as state_field

    status = run_status(conn, run_id, prefix=prefix)
    state = RunState(conn, run_id, prefix)
    meta = state.meta()
    config = ReviewConfig.from_dict(json.loads(get_blob(conn, prefix, meta.config_blob)))
    results = state.results()
    spans = job_timing(conn, prefix, run_id)
    for j in status["jobs"]:
        result = results.get(state_field(j["loop"], j["role"]))
        usage = (result or {}).get("usage") or {}
        raw = (result or {}).get("findings_raw")
        j["findings"] = len(raw) if isinstance(raw, list) else None
        j["tokens"] = {k: int(usage.get(k, 0)) for k in USAGE_KEYS} if result else None
        j["cost_usd"] = _cost(config, usage) if result else None
        span = spans.get((j["loop"], j["role"]))
        j["duration_s"] = None if span is None else round(span[1] - span[0], 3)
    status["mode"] = "distributed"
    status["model"] = config.model
    status["totals"] = _totals(status["jobs"])
    return status


# --- embedded runs -------------------------------------------------------------------------


class EmbeddedStatus:
    """Keeps `.status.json` in an embedded run's output directory current, from its events.

    A reviewer's duration runs from when its wave could start (the loop's start for
    role reviewers, the last role reviewer's end for the adversarial one) to its end.
    """

    def __init__(self, out_dir: Path, config: ReviewConfig) -> None:
        self.path = Path(out_dir) / STATUS_FILE
        self.config = config
        self.roles = [r.prefix for r in config.roles]
        self.adversarial = config.adversarial.prefix
        self.view: dict[str, Any] = {
            "mode": "embedded",
            "run_id": Path(out_dir).name,
            "status": "running",
            "error": "",
            "out_dir": str(out_dir),
            "model": config.model,
            "loops": [t.loop for t in config.themes],
            "closed_loops": [],
            "jobs": [],
        }
        self._rows: dict[tuple[int, str], dict[str, Any]] = {}
        self._wave_start: dict[int, float] = {}
        self._role_end: dict[int, float] = {}

    def _row(self, loop: int, role: str) -> dict[str, Any]:
        key = (loop, role)
        if key not in self._rows:
            row = {
                "loop": loop,
                "role": role,
                "job_id": f"{self.view['run_id']}:L{loop}:{role}",
                "state": "pending",
                "attempts": 0,
                "detail": "",
                "findings": None,
                "tokens": None,
                "cost_usd": None,
                "duration_s": None,
            }
            self._rows[key] = row
        return self._rows[key]

    def event(self, event: Mapping[str, Any]) -> None:
        kind = event.get("event")
        now = time.time()
        if kind == "run_start":
            done = self._completed_rows()  # a resumed run: loops closed by earlier invocations
            self.view["loops"] = sorted({*event["loops"], *done}) or self.view["loops"]
            self.view["closed_loops"] = sorted(done)
            self.view["constitution_hash"] = event.get("constitution_hash")
            for loop in self.view["loops"]:
                for role in self.roles:
                    self._row(loop, role).update(done.get(loop, {}).get(role, {}))
        elif kind == "loop_start":
            self._wave_start[event["loop"]] = now
            for role in self.roles:
                self._row(event["loop"], role)["state"] = "started"
        elif kind == "reviewer_done":
            loop, role = event["loop"], event["role"]
            row = self._row(loop, role)
            usage = event.get("usage") or {}
            row["state"] = "finished" if event["status"] == "ok" else "failed"
            row["attempts"] = event["attempts"]
            row["findings"] = event["findings"]
            row["detail"] = event.get("error") or ""
            row["tokens"] = {k: int(usage.get(k, 0)) for k in USAGE_KEYS}
            row["cost_usd"] = _cost(self.config, usage)
            if role == self.adversarial:
                start = self._role_end.get(loop, self._wave_start.get(loop, now))
            else:
                start = self._wave_start.get(loop, now)
                self._role_end[loop] = max(self._role_end.get(loop, 0.0), now)
            row["duration_s"] = round(now - start, 3)
        elif kind == "loop_done":
            self.view["closed_loops"] = sorted({*self.view["closed_loops"], event["loop"]})
        elif kind == "run_done":
            self.view["status"] = "completed"
        else:
            return
        self.write()

    def _completed_rows(self) -> dict[int, dict[str, dict[str, Any]]]:
        """Rows of the loops already in `loops.jsonl` (written by an earlier invocation)."""
        path = self.path.parent / "loops.jsonl"
        if not path.exists():
            return {}
        out: dict[int, dict[str, dict[str, Any]]] = {}
        for j in _rows_from_loops(read_jsonl(path), self.view["run_id"], self.config):
            out.setdefault(j["loop"], {})[j["role"]] = {
                k: v for k, v in j.items() if k not in ("loop", "role", "job_id")
            }
        return out

    def fail(self, error: str) -> None:
        """The run stopped with `error` (drift, budget, ...)."""
        self.view["status"] = "failed"
        self.view["error"] = error
        self.write()

    def write(self) -> None:
        jobs = sorted(self._rows.values(), key=lambda r: (r["loop"], self.roles.index(r["role"])))
        self.view["jobs"] = jobs
        self.view["totals"] = _totals(jobs)
        atomic_write_text(self.path, json.dumps(self.view, indent=1) + "\n")


def _rows_from_loops(
    loops: list[dict[str, Any]], run_id: str, config: ReviewConfig | None
) -> list[dict[str, Any]]:
    """Job rows from loop records (`loops.jsonl`); no durations (they are not recorded)."""
    jobs = []
    for lr in sorted(loops, key=lambda r: r["loop"]):
        for rv in lr["reviewers"]:
            usage = {k: int((rv.get("usage") or {}).get(k, 0)) for k in USAGE_KEYS}
            jobs.append(
                {
                    "loop": lr["loop"],
                    "role": rv["role"],
                    "job_id": f"{run_id}:L{lr['loop']}:{rv['role']}",
                    "state": "finished" if rv["status"] == "ok" else "failed",
                    "attempts": rv.get("attempts", 0),
                    "detail": rv.get("error") or rv.get("extraction_error") or "",
                    "findings": rv.get("raw") if rv["status"] == "ok" else None,
                    "tokens": usage,
                    "cost_usd": None if config is None else _cost(config, usage),
                    "duration_s": None,
                }
            )
    return jobs


def view_from_dir(out_dir: Path) -> dict[str, Any]:
    """An embedded run's view: its `.status.json`, else rebuilt from `loops.jsonl`."""
    out_dir = Path(out_dir)
    live = out_dir / STATUS_FILE
    if live.exists():
        return json.loads(live.read_text(encoding="utf-8"))
    loops = read_jsonl(out_dir / "loops.jsonl") if (out_dir / "loops.jsonl").exists() else []
    if not loops:
        raise FileNotFoundError(f"{out_dir}: no run here ({STATUS_FILE} and loops.jsonl missing)")
    from orchestrator.checkpoint import load_checkpoint

    cp = load_checkpoint(out_dir)
    jobs = _rows_from_loops(loops, out_dir.name, None)
    done = (out_dir / "synthesis.md").exists()
    return {
        "mode": "embedded",
        "run_id": out_dir.name,
        "status": "completed" if done else "running",
        "error": "",
        "out_dir": str(out_dir),
        "loops": cp.completed_loops if cp else [r["loop"] for r in loops],
        "closed_loops": sorted(r["loop"] for r in loops),
        "jobs": jobs,
        "totals": _totals(jobs),
    }


# --- rendering -----------------------------------------------------------------------------

STATE_STYLE = {
    "finished": "green",
    "started": "yellow",
    "queued": "cyan",
    "deferred": "blue",
    "failed": "bold red",
    "missing": "red",
    "pending": "dim",
}


def _fmt_tokens(tokens: Mapping[str, int] | None) -> str:
    if not tokens:
        return "-"
    return f"{tokens.get('input', 0) + tokens.get('cache_write', 0) + tokens.get('cache_read', 0)}"


def _budget_line(figures: Mapping[str, Any]) -> str:
    from orchestrator.run_budget import format_budget  # distributed views only: Redis loaded

    return format_budget(figures)


def render_table(view: Mapping[str, Any]) -> Group:
    """A rich renderable: header line and the loop × role table."""
    t = view["totals"]
    share = t.get("cache_read_share")
    head = (
        f"[bold]run {view['run_id']}[/]: {view['status']}"
        + (f" — [red]{view['error']}[/]" if view.get("error") else "")
        + f"  loops closed {len(view['closed_loops'])}/{len(view['loops'])}"
        + f"  findings {t['findings']}  cost ${t['cost_usd']:.4f}"
        + ("" if share is None else f"  cache-read {share * 100:.1f}%")
        + (f"  {_budget_line(view['budget'])}" if view.get("budget") else "")
    )
    table = Table(show_lines=False, expand=False)
    for name, justify in (
        ("loop", "right"),
        ("role", "left"),
        ("state", "left"),
        ("tries", "right"),
        ("duration", "right"),
        ("findings", "right"),
        ("input tok", "right"),
        ("output tok", "right"),
        ("cost $", "right"),
        ("detail", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for j in view["jobs"]:
        style = STATE_STYLE.get(j["state"], "")
        table.add_row(
            str(j["loop"]),
            j["role"],
            f"[{style}]{j['state']}[/]" if style else j["state"],
            str(j.get("attempts", 0)),
            "-" if j.get("duration_s") is None else f"{j['duration_s']:.1f}s",
            "-" if j.get("findings") is None else str(j["findings"]),
            _fmt_tokens(j.get("tokens")),
            "-" if not j.get("tokens") else str(j["tokens"].get("output", 0)),
            "-" if j.get("cost_usd") is None else f"{j['cost_usd']:.4f}",
            (j.get("detail") or "")[:60],
        )
    return Group(head, table)


def render_text(view: Mapping[str, Any]) -> str:
    """Plain lines for pipes and logs: one per job, every field, nothing truncated."""
    t = view["totals"]
    lines = [
        f"run {view['run_id']}: {view['status']}"
        + (f" — {view['error']}" if view.get("error") else ""),
        f"output: {view['out_dir']}  model: {view.get('model', '-')}",
        f"loops closed: {', '.join(map(str, view['closed_loops'])) or 'none'} "
        f"of {', '.join(map(str, view['loops']))}",
        f"findings: {t['findings']}  cost: ${t['cost_usd']:.4f}  tokens: "
        + ", ".join(f"{k} {v}" for k, v in t["tokens"].items()),
        *([_budget_line(view["budget"])] if view.get("budget") else []),
        "",
        f"{'job':<40} {'state':<10} {'tries':>5} {'secs':>7} {'finds':>5} {'in tok':>8} "
        f"{'out tok':>7} {'cost $':>8}  detail",
    ]
    for j in view["jobs"]:
        dur = "-" if j.get("duration_s") is None else f"{j['duration_s']:.1f}"
        finds = "-" if j.get("findings") is None else str(j["findings"])
        out_tok = "-" if not j.get("tokens") else str(j["tokens"].get("output", 0))
        cost = "-" if j.get("cost_usd") is None else f"{j['cost_usd']:.4f}"
        lines.append(
            f"{j['job_id']:<40} {j['state']:<10} {j.get('attempts', 0):>5} {dur:>7} "
            f"{finds:>5} {_fmt_tokens(j.get('tokens')):>8} {out_tok:>7} {cost:>8}  "
            f"{j.get('detail') or ''}"
        )
    return "\n".join(lines) + "\n"


# --- embedded progress -------------------------------------------------------------------


class LoopProgress:
    """Progress bars on a terminal, one per loop, advanced as reviewers finish."""

    def __init__(self, reviewers_per_loop: int, console: Console | None = None) -> None:
        self.total = reviewers_per_loop
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
        )
        self.tasks: dict[int, Any] = {}

    def __enter__(self) -> LoopProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def event(self, event: Mapping[str, Any]) -> None:
        kind = event.get("event")
        if kind == "run_start":
            for loop in event["loops"]:
                self.tasks[loop] = self.progress.add_task(
                    f"loop {loop}", total=self.total, note="", start=False
                )
        elif kind == "loop_start" and event["loop"] in self.tasks:
            task = self.tasks[event["loop"]]
            self.progress.start_task(task)
            self.progress.update(task, description=f"loop {event['loop']} {event['theme']}")
        elif kind == "reviewer_done" and event["loop"] in self.tasks:
            failed = event["status"] != "ok"
            note = f"{event['role']} failed" if failed else ""
            self.progress.update(self.tasks[event["loop"]], advance=1, note=note)
        elif kind == "loop_done" and event["loop"] in self.tasks:
            c = event["counts"]
            self.progress.update(self.tasks[event["loop"]], note=f"{c['kept']} kept")
            self.progress.stop_task(self.tasks[event["loop"]])


@contextlib.contextmanager
def embedded_observer(
    repo: Path,
    out_dir: Path,
    config: ReviewConfig,
    echo: Callable[[dict[str, Any]], None],
    describe: Callable[[dict[str, Any]], str],
) -> Iterator[Callable[[dict[str, Any]], None]]:
    """An embedded run's `on_event`: `.status.json` always; then JSON log lines if JSON
    logging is on, progress bars (one per loop) on a terminal, else `echo`'s log lines.

    The status file is first written at `run_start` (after the run holds its lock), so
    a run refused at the door never touches another run's status.
    """
    from orchestrator.logs import event_logger, json_logging_active

    out = out_dir if out_dir.is_absolute() else repo.resolve() / out_dir
    status = EmbeddedStatus(out, config)
    started = False
    progress: LoopProgress | None = None
    if json_logging_active():
        sink = event_logger(out.name, describe)
    elif Console(stderr=True).is_terminal:
        progress = LoopProgress(len(config.roles))
        sink = progress.event
    else:
        sink = echo

    def on_event(event: dict[str, Any]) -> None:
        nonlocal started
        started = started or event.get("event") == "run_start"
        if started:
            status.event(event)
        sink(event)

    try:
        if progress is not None:
            progress.__enter__()
        yield on_event
    except BaseException as exc:
        if started:
            status.fail(str(exc) or type(exc).__name__)
        raise
    finally:
        if progress is not None:
            progress.__exit__(None, None, None)


# --- the command ---------------------------------------------------------------------------


def _load_view(run: str | None, redis_url: str | None, prefix: str) -> dict[str, Any]:
    if redis_url:
        from orchestrator.distributed import RedisUnavailable, connect
        from orchestrator.runstate import RunNotFound, list_runs

        try:
            conn = connect(redis_url)
        except (RedisUnavailable, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        try:
            if run is None:
                runs = list_runs(conn, prefix)
                if not runs:
                    raise click.ClickException(f"no runs in Redis under prefix {prefix!r}")
                run = runs[-1]
            return view_from_redis(conn, run, prefix)
        except (RunNotFound, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        finally:
            conn.close()
    path = Path(run) if run is not None else Path("docs/review")
    try:
        return view_from_dir(path)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(
            f"{exc}. For a distributed run give its id and --redis-url (or REDIS_URL)."
        ) from exc


@click.command("status")
@click.argument("run", required=False)
@click.option(
    "--redis-url",
    envvar="REDIS_URL",
    default=None,
    help="A distributed run's Redis (or REDIS_URL); RUN is then its id (default: the latest).",
)
@click.option(
    "--prefix",
    envvar="MONETA_REDIS_PREFIX",
    default="moneta",
    show_default=True,
    help="Key prefix of the run state.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the view as JSON.")
@click.option("--watch", is_flag=True, help="Keep a live table until the run ends (terminal).")
@click.option("--interval", type=click.FloatRange(0.1, 60), default=1.0, show_default=True)
def status_command(
    run: str | None,
    redis_url: str | None,
    prefix: str,
    as_json: bool,
    watch: bool,
    interval: float,
) -> None:
    """Show a run: every loop × role with state, duration, findings, tokens and cost.

    RUN is a distributed run's id (with --redis-url) or an embedded run's output
    directory (default docs/review).
    """
    view = _load_view(run, redis_url, prefix)
    if as_json:
        click.echo(json.dumps(view, indent=1))
        return
    console = Console()
    if not console.is_terminal:
        sys.stdout.write(render_text(view))
        return
    if not watch or view["status"] in TERMINAL_STATES:
        console.print(render_table(view))
        return
    with Live(render_table(view), console=console, refresh_per_second=4) as live:
        while view["status"] not in TERMINAL_STATES:
            time.sleep(interval)
            view = _load_view(view["run_id"] if redis_url else run, redis_url, prefix)
            live.update(render_table(view))
