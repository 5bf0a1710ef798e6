"""OpenUSD cold tier speed: batch authoring, Save(), and what a concurrent reader feels.

Run: ``python bench/usd.py`` (prints JSON; ``--quick`` for a smoke run).

For each accumulated size (prims already in the daily layers) a base store is built
once with ``UsdTarget`` (one UTC day, so rotation at 50,000 prims applies), then
every (batch size, lock policy) pair runs on a fresh copy of it:

- a reader thread wants to read 20 known prims through ``UsdTarget.reading()`` at
  60 Hz. A tick's *stall* is how late its read got in: (time it entered the
  reading block) - (time the tick was due). Ticks that fall due while the reader is
  held up are all served by the read that finally gets in, each with its own
  lateness, so a long stall counts once per frame it delayed;
- a writer authors batches of new memories (one every 100 ms, or back to back when
  a batch takes longer) for 2 s, as a sleep pass does.

Lock policies: ``narrow`` is ``UsdTarget`` as shipped (the reader lock covers the
ChangeBlock only). ``writer_process`` is ``UsdTarget(writer_process=True)``: the
narrow lock, with every write and ``Save()`` done in a child process (this process
applies the saved edit). ``through_save`` also takes the reader lock around every layer
``Save()`` (through the ``save_layer`` seam), i.e. the lock held through Save.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pxr import Sdf, Usd

from moneta.types import EntityState, Memory
from moneta.usd_layers import parse_prim_name, prim_link
from moneta.usd_target import UsdTarget

NOON_UTC = 1_772_452_800.0  # 2026-03-02 12:00:00 UTC
TICK_S = 1 / 60
READ_PRIMS = 20
BUILD_CHUNK = 10_000


def memory(i: int) -> Memory:
    return Memory(
        entity_id=uuid.uuid4(),
        payload=f"memory {i}: the user said something worth keeping about topic {i % 97}",
        semantic_vector=(),
        utility=0.2,
        attended_count=3,
        protected_floor=0.0,
        last_evaluated=NOON_UTC,
        state=EntityState.STAGED_FOR_SYNC,
    )


class TimedLock:
    """``threading.Lock`` that records how long the writer thread holds it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since = 0.0
        self.writer: threading.Thread | None = None
        self.holds: list[float] = []

    def __enter__(self) -> TimedLock:
        self._lock.acquire()
        self._since = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if threading.current_thread() is self.writer:
            self.holds.append(time.perf_counter() - self._since)
        self._lock.release()


@dataclass
class Saver:
    """The ``save_layer`` seam: real ``Save()``, timed; optionally under the reader lock."""

    through_save: bool
    lock: TimedLock | None = None
    times: list[tuple[str, float]] = field(default_factory=list)

    def __call__(self, layer: Sdf.Layer) -> bool:
        start = time.perf_counter()
        if self.through_save and self.lock is not None:
            with self.lock:
                ok = bool(layer.Save())
        else:
            ok = bool(layer.Save())
        self.times.append((Path(layer.identifier).name, time.perf_counter() - start))
        return ok


def build_base(directory: Path, prims: int, cap: int) -> list[str]:
    """A cold tier holding `prims` memories of one UTC day; returns their prim paths."""
    target = UsdTarget(directory, max_prims_per_layer=cap)
    links: list[str] = []
    for start in range(0, prims, BUILD_CHUNK):
        batch = [memory(i) for i in range(start, min(prims, start + BUILD_CHUNK))]
        links += target.author(batch, batch_id=f"build-{start}", authored_at=NOON_UTC).values()
    target.close()
    return links


def save_gil_probe(directory: Path) -> dict[str, float] | None:
    """Save the fullest daily layer while a pure-Python thread ticks every 1 ms.

    The thread's longest gap shows how long ``Save()`` kept every other Python thread
    (a reader included) from running, whatever lock the writer holds.
    """
    files = sorted(directory.glob("cortex_2*.usda"), key=lambda f: f.stat().st_size)
    if not files:
        return None
    layer = Sdf.Layer.FindOrOpen(str(files[-1]))
    prims = len(layer.rootPrims)
    gaps: list[float] = []
    stop = threading.Event()

    def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    thread = threading.Thread(target=ticker)
    thread.start()
    time.sleep(0.05)
    layer.customLayerData = {**dict(layer.customLayerData), "monetaBenchProbe": 1}
    gaps.clear()
    started = time.perf_counter()
    ok = layer.Save()
    saved = time.perf_counter() - started
    time.sleep(0.01)
    stop.set()
    thread.join()
    assert ok
    return {
        "layer": files[-1].name,
        "prims": prims,
        "save_ms": round(saved * 1e3, 1),
        "python_thread_longest_gap_ms": round(max(gaps) * 1e3, 1),
    }


def ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    arr = np.asarray(values) * 1e3
    return {
        "n": int(arr.size),
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p95_ms": round(float(np.percentile(arr, 95)), 2),
        "max_ms": round(float(arr.max()), 2),
    }


def run_config(
    base: Path,
    work: Path,
    known: list[str],
    batch: int,
    policy: str,
    seconds: float,
    cap: int,
    reader_kind: str,
) -> dict:
    """One (accumulated, batch, policy) run on a fresh copy of `base`."""
    shutil.copytree(base, work)
    saver = Saver(through_save=policy == "through_save")
    if policy == "writer_process":  # Save() in the child; saves are not timed here
        target = UsdTarget(work, max_prims_per_layer=cap, writer_process=True)
    else:
        target = UsdTarget(work, save_layer=saver, max_prims_per_layer=cap)
    lock = TimedLock()
    target._lock = lock  # type: ignore[assignment]  # measure the writer's hold times
    saver.lock = lock
    start_layers = [(info.name, info.prims) for info in target.layer_stack()]
    if reader_kind == "stage":
        with target.reading() as stage:  # compose the reader's stage before timing
            assert stage is not None
    paths = list(known)
    rng = random.Random(7)
    stalls: list[float] = []
    waits: list[float] = []
    reads: list[float] = []
    stop = threading.Event()

    def reader() -> None:
        due = time.perf_counter()
        while not stop.is_set():
            now = time.perf_counter()
            if now < due:
                time.sleep(due - now)
            asked = time.perf_counter()
            sample = rng.sample(paths, min(READ_PRIMS, len(paths))) if paths else []
            if reader_kind == "read":  # the handle's path: Sdf lookups, no stage
                target.read([parse_prim_name(path[1:]) for path in sample])
                entered = got = time.perf_counter()
            else:
                with target.reading() as stage:
                    entered = time.perf_counter()
                    for path in sample:
                        prim = stage.GetPrimAtPath(path)
                        prim.GetAttribute("payload").Get()
                        prim.GetAttribute("utility").Get()
                got = time.perf_counter()
            reads.append(got - entered)
            waits.append(entered - asked)
            while due <= got:  # every tick due by now is served by this read
                stalls.append(got - due)
                due += TICK_S

    thread = threading.Thread(target=reader, name="reader")
    lock.writer = threading.current_thread()
    authoring: list[float] = []
    totals: list[float] = []
    saving: list[float] = []
    saved_layers: set[str] = set()
    thread.start()
    started = time.perf_counter()
    number = 0
    try:
        while time.perf_counter() - started < seconds or number < 3:
            memories = [memory(1_000_000 + number * batch + i) for i in range(batch)]
            holds_before, saves_before = len(lock.holds), len(saver.times)
            began = time.perf_counter()
            target.author(memories, batch_id=f"bench-{number}", authored_at=NOON_UTC)
            totals.append(time.perf_counter() - began)
            edit_holds = lock.holds[holds_before:]
            saves = saver.times[saves_before:]
            authoring.append(edit_holds[0])  # the ChangeBlock's hold of the reader lock
            saving.append(sum(t for _, t in saves))
            saved_layers |= {name for name, _ in saves}
            paths.extend(prim_link(m.entity_id) for m in memories)
            number += 1
            pause = started + number * 0.1 - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
    finally:
        stop.set()
        thread.join()
    end_count = target.count()
    target.close()
    gc.collect()
    shutil.rmtree(work)
    return {
        "batch": batch,
        "policy": policy,
        "accumulated_start": len(known),
        "accumulated_end": end_count,
        "layers_at_start": start_layers,
        "batches": number,
        "layers_saved": sorted(saved_layers),
        "changeblock_hold": ms(authoring),
        "save_total_per_batch": ms(saving),
        "author_call_per_batch": ms(totals),
        "reader_stall": ms(stalls),
        "reader_lock_wait": ms(waits),
        "reader_read_time": ms(reads),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="0,25000,49500,100000")
    parser.add_argument("--batches", default="10,100,500")
    parser.add_argument("--seconds", type=float, default=2.0, help="writer time per run")
    parser.add_argument("--cap", type=int, default=50_000, help="prims per daily layer")
    parser.add_argument(
        "--policies",
        default="narrow,through_save,writer_process",
        help="narrow, through_save, writer_process (UsdTarget(writer_process=True))",
    )
    parser.add_argument(
        "--reader",
        choices=("stage", "read"),
        default="stage",
        help="stage: GetPrimAtPath on the composed stage under reading();"
        " read: UsdTarget.read() (Sdf lookups, what Moneta.query does; no stage)",
    )
    parser.add_argument("--quick", action="store_true", help="levels 0,2000; 0.5 s runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.seconds = "0,2000", 0.5
    levels = [int(x) for x in args.levels.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    runs = []
    build_s = {}
    probes = {}
    with tempfile.TemporaryDirectory(prefix="moneta-usd-bench-") as tmp:
        root = Path(tmp)
        for level in levels:
            base = root / f"base-{level}"
            started = time.perf_counter()
            known = build_base(base, level, args.cap)
            gc.collect()
            build_s[level] = round(time.perf_counter() - started, 1)
            probes[level] = save_gil_probe(base)
            gc.collect()
            for batch in batches:
                for policy in args.policies.split(","):
                    run = run_config(
                        base,
                        root / "run",
                        known,
                        batch,
                        policy,
                        args.seconds,
                        args.cap,
                        args.reader,
                    )
                    runs.append(run)
                    print(
                        f"accumulated {level} batch {batch} {policy}:"
                        f" stall {runs[-1]['reader_stall']}",
                        file=sys.stderr,
                    )
            shutil.rmtree(base)
    headline = [
        r
        for r in runs
        if r["accumulated_start"] == 100_000 and r["batch"] == 500 and r["policy"] == "narrow"
    ]
    report = {
        "command": "python bench/usd.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "usd": ".".join(str(v) for v in Usd.GetVersion()),
        },
        "settings": {
            "reader_hz": 60,
            "reader": args.reader,
            "reader_prims_per_tick": READ_PRIMS,
            "writer_seconds_per_run": args.seconds,
            "writer_batch_interval_s": 0.1,
            "rotation_cap": args.cap,
        },
        "build_seconds": build_s,
        "save_gil_probe": probes,
        "runs": runs,
        "target": {
            "rule": "reader stall p95 < 50 ms at accumulated 100k with 500-prim batches",
            "p95_ms": headline[0]["reader_stall"].get("p95_ms") if headline else None,
            "met": bool(headline) and headline[0]["reader_stall"].get("p95_ms", 1e9) < 50,
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
