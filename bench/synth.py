"""Synthesis speed: one loop of 10,000 raw findings (validate, scope, dedupe, rank, render).

Run: ``python bench/synth.py`` (prints JSON). Also timed: the same loop with noise
controls on, writing the loop's files, and the final outputs (synthesis.md,
synthesis.sarif, report.html) for its ~4,500 kept findings. The findings come from
`tests.review.synth_fixtures.bulk_results`, whose outcome the test suite checks
(invalid items, out-of-scope items and duplicate groups of 1-3 members); the
target from the review-engine issue is <= 1 s for one loop.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.config import NoiseControls
from synth.html import render_html
from synth.ledger import ClosureLedger
from synth.loop import synthesize_loop
from synth.outputs import (
    LOOPS,
    ledger_from_disk,
    load_findings,
    read_jsonl,
    write_final,
    write_loop,
)
from synth.sarif import render_sarif
from tests.review.synth_fixtures import HASH, SNAPSHOT, bulk_results, make_config

RAW = 10_000
REPEATS = 5


def main() -> None:
    bulk = bulk_results(RAW)
    config = make_config(max_findings_per_reviewer=0)
    synth_s: list[float] = []
    kept = 0
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        s = synthesize_loop(
            bulk.results,
            config=config,
            loop=1,
            snapshot_paths=SNAPSHOT,
            constitution_hash=HASH,
            ledger=ClosureLedger(),
        )
        synth_s.append(time.perf_counter() - t0)
        kept = len(s.kept)
    noisy = make_config(
        max_findings_per_reviewer=0,
        noise=NoiseControls(
            min_severity="Medium", max_findings_per_role=200, exclude=("README.md",)
        ),
    )
    t0 = time.perf_counter()
    n = synthesize_loop(
        bulk.results,
        config=noisy,
        loop=1,
        snapshot_paths=SNAPSHOT,
        constitution_hash=HASH,
        ledger=ClosureLedger(),
    )
    noisy_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        write_loop(out, s)
        write_loop_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_final(out, [s], constitution_hash=HASH)
        write_final_s = time.perf_counter() - t0
        outputs = sorted(p.name for p in out.iterdir())
        sizes = {p.name: p.stat().st_size for p in out.iterdir()}
        inputs = {
            "loops": read_jsonl(out / LOOPS),
            "findings": load_findings(out),
            "ledger": ledger_from_disk(out),
            "constitution_hash": HASH,
        }
        t0 = time.perf_counter()
        render_sarif(**inputs)
        sarif_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        render_html(**inputs)
        html_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "raw_findings": RAW,
                "kept": kept,
                "repeats": REPEATS,
                "synthesize_loop_s_median": round(statistics.median(synth_s), 4),
                "synthesize_loop_s_max": round(max(synth_s), 4),
                "target_s": 1.0,
                "synthesize_loop_with_noise_controls_s": round(noisy_s, 4),
                "kept_with_noise_controls": len(n.kept),
                "write_loop_s": round(write_loop_s, 4),
                "write_final_s": round(write_final_s, 4),
                "render_sarif_s": round(sarif_s, 4),
                "render_html_s": round(html_s, 4),
                "sarif_bytes": sizes["synthesis.sarif"],
                "report_html_bytes": sizes["report.html"],
                "outputs": outputs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
