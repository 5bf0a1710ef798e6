"""The run checkpoint: what `--resume` needs to continue after the last completed loop.

Written atomically after every loop, so it always describes loops whose files are
complete on disk. It carries the closure ledger and the last loop's synthesis (the
next loop's handoff), so a resumed run neither forgets earlier closures nor starts
the next loop without its handoff, plus the hashes that detect drift on resume.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from synth.outputs import (
    DROPPED,
    FINDINGS,
    INVALID,
    LOOPS,
    REPORT,
    SARIF,
    SYNTHESIS,
    atomic_write_text,
)

CHECKPOINT_NAME = "checkpoint.json"
CHECKPOINT_VERSION = 1
RUN_FILE_PATTERNS: tuple[str, ...] = (
    CHECKPOINT_NAME,
    FINDINGS,
    INVALID,
    DROPPED,
    LOOPS,
    "loop-*.md",
    SYNTHESIS,
    SARIF,
    REPORT,
    "budget-hold.jsonl",
)
"""Files a run owns in its output directory (removed by --fresh, nothing else)."""


class CheckpointError(ValueError):
    """The checkpoint file is unreadable or belongs to another kind of run."""


def config_fingerprint(config_dict: dict[str, Any]) -> str:
    data = json.dumps(config_dict, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(slots=True)
class Checkpoint:
    constitution_hash: str
    constitution_path: str
    snapshot_sha: str
    config_fingerprint: str
    completed_loops: list[int] = field(default_factory=list)
    ledger: dict[str, Any] = field(default_factory=dict)
    prior_synthesis: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    calls: int = 0
    version: int = CHECKPOINT_VERSION

    @property
    def last_loop(self) -> int:
        return max(self.completed_loops, default=0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        return cls(**data)


def checkpoint_path(out_dir: Path) -> Path:
    return Path(out_dir) / CHECKPOINT_NAME


def load_checkpoint(out_dir: Path) -> Checkpoint | None:
    """The checkpoint in `out_dir`, or None if there is none."""
    path = checkpoint_path(out_dir)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(
                f"{path}: checkpoint version {data.get('version')!r}, expected {CHECKPOINT_VERSION}"
            )
        return Checkpoint.from_dict(data)
    except (json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from exc


def save_checkpoint(out_dir: Path, checkpoint: Checkpoint) -> Path:
    path = checkpoint_path(out_dir)
    text = json.dumps(checkpoint.to_dict(), indent=1, sort_keys=True, ensure_ascii=False)
    atomic_write_text(path, text + "\n")
    return path


def clear_run_files(out_dir: Path) -> list[Path]:
    """Remove a previous run's files from `out_dir` (only the files a run writes)."""
    removed: list[Path] = []
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return removed
    for pattern in RUN_FILE_PATTERNS:
        for path in sorted(out_dir.glob(pattern)):
            if path.is_file():
                path.unlink()
                removed.append(path)
    return removed
