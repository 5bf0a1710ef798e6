"""The ``moneta`` command: a guided demo of the substrate, and store inspection.

``moneta demo`` plays a short agent session against a real file store on a
compressed clock and prints what the substrate did with each memory and why.
``moneta inspect STORE`` shows what a store holds on disk.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import tempfile
import threading
from collections import Counter
from pathlib import Path
from uuid import UUID

import click
import numpy as np

from moneta.api import Moneta
from moneta.audit import AuditLog
from moneta.config import MonetaConfig
from moneta.store import AUDIT_FILE, COLD_DIR, MOCK_COLD_FILE
from moneta.types import EntityState

DEMO_DIM = 32
DEMO_HALF_LIFE = 1800.0  # 30 minutes: three simulated hours are six half-lives
DEMO_START = 1_767_258_000.0  # 2026-01-01 09:00 UTC

# (topic, payload) in deposit order; the topic decides the synthetic embedding.
PREFERENCES = [
    ("prefs", "The user prefers tabs over spaces in Python files."),
    ("prefs", "The user's name is Ada; she reviews pull requests in the morning."),
]
PROJECT = [
    ("build", "The project builds with `make build`; artefacts land in ./dist."),
    ("build", "CI runs on every push to main and on pull requests."),
    ("build", "Release tags follow semver, e.g. v2.4.1."),
    ("db", "The service talks to Postgres 16 through SQLAlchemy 2."),
    ("db", "Database migrations live in ./migrations and run with alembic."),
    ("db", "The staging database is refreshed from production every Sunday."),
    ("api", "The public API is versioned under /v2; /v1 is deprecated."),
    ("api", "Rate limiting is 100 requests per minute per token."),
]
CHATTER = [
    ("debug", "Tried bumping the pool size to 50; the timeout persisted."),
    ("debug", "The flaky test passed three times in a row locally."),
    ("debug", "Stack trace pointed at the retry decorator, a red herring."),
    ("debug", "Restarted the dev container; no change."),
    ("debug", "Checked DNS resolution inside the container: fine."),
    ("debug", "Added a print in the connection factory to trace calls."),
    ("smalltalk", "The user mentioned it is raining in Lisbon today."),
    ("smalltalk", "The user is drinking their second coffee."),
    ("smalltalk", "The user said the new keyboard is too loud."),
    ("smalltalk", "The user joked about Friday deploys."),
]
RECENT = [
    ("debug", "Root cause found: the pool was created before fork(); fixed in db/pool.py."),
    ("api", "The user wants a /v2/export endpoint returning CSV."),
    ("build", "Next step: add the export endpoint to the OpenAPI spec."),
]


class _DemoClock:
    """A settable clock: the demo compresses three hours into a second."""

    def __init__(self, start: float) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


def _topic_vectors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    topics = ("prefs", "build", "db", "api", "debug", "smalltalk")
    return {t: rng.standard_normal(DEMO_DIM) for t in topics}


def _embed(
    topics: dict[str, np.ndarray], topic: str, text: str, jitter: float = 0.0
) -> list[float]:
    """A synthetic embedding: the topic's direction plus text-specific noise (and, for
    queries, a little jitter so a question is near, not equal to, its memory)."""
    digest = hashlib.sha256(text.encode()).digest()
    noise = np.random.default_rng(list(digest[:8])).standard_normal(DEMO_DIM)
    v = topics[topic] + 0.5 * noise
    if jitter:
        v = v + jitter * np.random.default_rng(len(text)).standard_normal(DEMO_DIM)
    return (v / np.linalg.norm(v)).tolist()


def _short(text: str, width: int = 58) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _clock_label(t: float) -> str:
    minutes = (t - DEMO_START) / 60.0
    return f"t+{int(minutes // 60)}h{int(minutes % 60):02d}m"


def run_demo(directory: Path, seed: int = 2026, echo=click.echo) -> dict[str, int]:
    """Play the demo session in ``directory``; return the counts it printed."""
    clock = _DemoClock(DEMO_START)
    config = MonetaConfig(
        storage_uri=directory,
        clock=clock,
        half_life_seconds=DEMO_HALF_LIFE,
        auto_sleep=False,  # the demo runs the pass itself and shows its preview first
    )
    topics = _topic_vectors(seed)
    names: dict[UUID, str] = {}
    echo(f"Moneta demo — store in {directory}")
    echo(
        f"Decay half-life {DEMO_HALF_LIFE / 60:.0f} min on a compressed clock; embeddings are"
        f" synthetic topic vectors ({DEMO_DIM} dimensions), so similar topics land close."
    )

    with Moneta(config) as m:
        echo("\n1. Deposits (utility starts at 1.0, attended 0, state VOLATILE)")
        for topic, text in PREFERENCES:
            e = m.deposit(text, _embed(topics, topic, text), protected_floor=0.5)
            names[e] = text
            echo(f"   pinned  floor 0.5  {_short(text)}")
        for topic, text in PROJECT + CHATTER:
            names[m.deposit(text, _embed(topics, topic, text))] = text
            clock.advance(2.0)
        echo(f"   + {len(PROJECT)} project facts and {len(CHATTER)} lines of chatter")

        echo("\n2. The agent works: it looks things up and signals what mattered")
        by_text = {text: e for e, text in names.items()}
        asks = [  # (question, the fact it is about, how many times it comes up)
            ("how do I build?", PROJECT[0], 4),
            ("where are migrations?", PROJECT[4], 3),
            ("which API version?", PROJECT[6], 3),
            ("what is the rate limit?", PROJECT[7], 2),
        ]
        for question, (topic, fact), times in asks:
            for _ in range(times):
                hits = m.query(_embed(topics, topic, fact, 0.1), limit=1)
                m.signal_attention({hits[0].entity_id: 0.1})
                clock.advance(3.0)
            assert hits[0].entity_id == by_text[fact]
            echo(f"   {times}x {question!r:26} → {_short(hits[0].payload, 44)}")
        dead_ends = [e for e, text in names.items() if "red herring" in text or "no change" in text]
        m.signal_attention(dict.fromkeys(dead_ends, -0.5))
        echo(f"   {m.stats().pending_attention} attention signals wait in the append-only log;")
        echo("   two debugging notes were marked dead ends (weight -0.5)")

        clock.advance(3 * 3600.0 - 90.0)
        for topic, text in RECENT:
            names[m.deposit(text, _embed(topics, topic, text))] = text
            clock.advance(2.0)
        echo(f"\n3. Three hours later ({_clock_label(clock())}): {len(RECENT)} fresh notes")

        preview = m.preview_sleep_pass()
        echo(
            f"\n4. Sleep-pass preview (changes nothing): {preview.attention_pending} signals to"
            f" apply, would prune {len(preview.would_prune)}, would stage"
            f" {len(preview.would_stage)}"
        )
        report = m.run_sleep_pass()
        echo(
            f"   sleep pass: applied {report.attention_applied} signals, pruned {report.pruned},"
            f" staged {report.staged}, consolidated {report.consolidated} in"
            f" {report.batches} batch(es)" + (f" — error: {report.error}" if report.error else "")
        )

        audit = {UUID(a.entity_id): a for a in m._parts.audit.entries()}
        everything = m.query([1.0] + [0.0] * (DEMO_DIM - 1), limit=len(names))
        current = {h.entity_id: h for h in everything}
        echo("\n5. What happened to each memory")
        echo(f"   {'fate':<13} {'utility':>7} {'seen':>4}  memory")
        fates: Counter[str] = Counter()
        rows = []
        for e, text in names.items():
            hit, note = current.get(e), audit.get(e)
            if note is not None and note.action == "prune":
                fate, utility, seen = "pruned", note.utility, note.attended_count
                why = note.reason
            elif hit is not None and hit.state is EntityState.CONSOLIDATED:
                fate, utility, seen = "consolidated", hit.utility, hit.attended_count
                why = f"→ cold tier {hit.usd_link}" + (f"; {note.reason}" if note else "")
            else:
                assert hit is not None
                fate = "kept (pinned)" if hit.protected_floor > 0 else "kept"
                utility, seen, why = hit.utility, hit.attended_count, ""
            fates[fate.split()[0]] += 1
            rows.append((("kept", "consolidated", "pruned").index(fate.split()[0]), fate,
                         utility, seen, text, why))  # fmt: skip
        for _, fate, utility, seen, text, why in sorted(rows, key=lambda r: r[0]):
            echo(f"   {fate:<13} {utility:>7.3f} {seen:>4}  {_short(text)}")
            if why:
                echo(f"   {'':<13} {'':>7} {'':>4}    {why}")
        echo(
            "   rules: prune if utility < 0.1 and seen < 3; stage for the cold tier if"
            " utility < 0.3 and seen >= 3; pinned memories are never selected"
        )
        hot_before = m.stats().hot

    echo(f"\n6. Closed and reopened {directory.name}/")
    with Moneta(config) as m:
        stats = m.stats()
        echo(f"   hot tier: {stats.hot} memories (was {hot_before}); index: {stats.index_records}")
        topic, fact = PROJECT[4]
        limit = stats.hot + 1
        hits = m.query(_embed(topics, topic, fact, 0.1), limit=limit)
        echo(
            f"   query 'where are migrations?' (limit {limit}), ranked by similarity x utility;"
            " faded cold memories rank low but stay reachable:"
        )
        for hit in hits:
            where = f"cold tier {hit.usd_link}" if hit.state is EntityState.CONSOLIDATED else "hot"
            echo(f"     {hit.utility:.3f}  {_short(hit.payload, 46)}  [{where}]")
        echo("   reading a cold memory does not move it back; attention to it would.")
    files = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    shown = [f for f in files if f.startswith(("cold/", "audit", "snapshot", "wal/"))]
    echo("   files: " + ", ".join(shown[:12]) + (" …" if len(shown) > 12 else ""))
    echo(f"   audit trail: {directory / AUDIT_FILE}")
    echo(f"\nLook inside: moneta inspect {directory}")
    return {
        "deposits": len(names),
        "kept": fates["kept"],
        "pruned": fates["pruned"],
        "consolidated": fates["consolidated"],
        "hot_after_reopen": stats.hot,
    }


@click.group()
def main() -> None:
    """Moneta: a memory substrate for LLM agents."""


@main.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Store directory (created; must be empty). Default: a new temporary directory.",
)
@click.option("--seed", type=int, default=2026, show_default=True, help="Embedding seed.")
def demo(directory: Path | None, seed: int) -> None:
    """Deposit, query, attend, consolidate and reopen a store, explaining each step."""
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="moneta-demo-"))
    elif directory.exists() and any(directory.iterdir()):
        raise click.UsageError(f"--dir {directory} is not empty; the demo needs a fresh store")
    run_demo(directory.resolve(), seed)


# --- inspect ---------------------------------------------------------------------------
# ``moneta inspect`` is filled by moneta/inspect.py (cold-tier layer inspection) when it
# exists; until then it reports what the JSONL mock cold tier and the audit log hold.


@main.command()
@click.argument("store", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--audit",
    "audit_lines",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="How many of the latest audit entries (prune, consolidate, forget) to show.",
)
@click.pass_context
def inspect(ctx: click.Context, store: Path, audit_lines: int) -> None:
    """Show what a store holds: the cold tier, and what it let go of and why."""
    code = 0
    if importlib.util.find_spec("moneta.inspect") is not None:
        from moneta import inspect as store_inspect  # the cold-tier inspector

        code = store_inspect.main(store)
    else:
        _inspect_mock(store)
    _inspect_audit(store, audit_lines)
    ctx.exit(code)


def _inspect_mock(store: Path) -> None:
    mock = store / COLD_DIR / MOCK_COLD_FILE
    if not mock.exists():
        click.echo(f"{store / COLD_DIR}: no cold tier")
        return
    batches = [json.loads(line) for line in mock.read_text().splitlines() if line.strip()]
    layers = Counter(e["target_sublayer"] for b in batches for e in b["entries"])
    click.echo(f"{mock}: {len(batches)} batches")
    for layer, count in sorted(layers.items()):
        click.echo(f"  {layer}: {count} memories")


def _inspect_audit(store: Path, last: int) -> None:
    entries = AuditLog(store / AUDIT_FILE).entries()
    actions = Counter(e.action for e in entries)
    summary = ", ".join(f"{n} {a}" for a, n in sorted(actions.items())) or "empty"
    click.echo(f"Audit trail {store / AUDIT_FILE}: {summary}")
    for e in entries[-last:] if last else []:
        click.echo(
            f"  {e.action:<11} {e.entity_id}  utility={e.utility:.4f}"
            f" attended={e.attended_count}  {e.reason}"
        )


if __name__ == "__main__":
    main()
