"""A small written run (3 loops) shared by the output-format tests."""

from __future__ import annotations

from pathlib import Path

from synth.outputs import write_final
from tests.review.synth_fixtures import HASH, make_config
from tests.review.test_synth_outputs import USAGE, run


def written_run(out: Path) -> Path:
    """Write loops 1-3 of the synth output fixture and the final files into `out`."""
    ledger = run(out, range(1, 4))
    write_final(
        out, ledger=ledger, constitution_hash=HASH, usage_totals=USAGE, config=make_config()
    )
    return out
