"""The repository snapshot every reviewer of a run reads.

Deterministic (paths sorted, line endings normalised, no timestamps) so the prompt
prefix it forms is byte-identical across the calls of a run and cacheable. It never
contains the review harness, the run's outputs or the constitution (no feedback
loops), secrets, binaries, symlinks or the `.git` directory, and it refuses — rather
than truncates — a repository over the size budget.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import ReviewConfig, match_glob

SECRET_NAME_GLOBS: tuple[str, ...] = (
    ".env",
    ".env.*",
    "*.env",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "*.kdbx",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "credentials*",
    "*credentials.json",
    "service-account*.json",
    "secrets.*",
    "*.secret",
    "*.secrets",
    ".netrc",
    ".pgpass",
    ".pypirc",
    ".npmrc",
    ".htpasswd",
)
"""File names never sent to a model, at any depth, whatever the configuration says."""

ALWAYS_PRUNED_DIRS: tuple[str, ...] = (".git", ".hg", ".svn")
LINE_NUMBER_WIDTH = 5


class SnapshotError(ValueError):
    """The snapshot cannot be built as configured."""


class SnapshotTooLarge(SnapshotError):
    """The included files exceed the configured budget; nothing is truncated."""

    def __init__(self, size: int, budget: int, files: int, largest: Sequence[tuple[str, int]]):
        self.size = size
        self.budget = budget
        top = ", ".join(f"{p} ({n:,} bytes)" for p, n in largest)
        super().__init__(
            f"repository snapshot is {size:,} bytes ({files} files), over the budget of "
            f"{budget:,} bytes (snapshot.max_bytes); largest files: {top}. Exclude paths "
            "with snapshot.exclude or raise snapshot.max_bytes — the snapshot is never "
            "truncated."
        )


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    path: str
    text: str
    lines: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Included files in path order, what was skipped and why, and the rendered text."""

    files: tuple[SnapshotFile, ...]
    skipped: tuple[tuple[str, str], ...]
    text: str

    @property
    def paths(self) -> frozenset[str]:
        return frozenset(f.path for f in self.files)

    @property
    def size(self) -> int:
        return len(self.text.encode("utf-8"))

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]


def is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(match_glob(g, lowered) for g in SECRET_NAME_GLOBS)


def _prunable(rel_dir: str, exclude: Iterable[str]) -> bool:
    # Only a `.../**` pattern matching the directory itself excludes everything below it.
    probe = rel_dir + "/"
    return any(p.endswith("/**") and match_glob(p, probe) for p in exclude)


def _relative_inside(repo: Path, path: Path) -> str | None:
    try:
        return path.resolve().relative_to(repo).as_posix()
    except ValueError:
        return None


def render_file(path: str, text: str) -> tuple[str, int]:
    """One file's block: numbered lines so reviewers can cite `line_range` exactly."""
    body = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = body.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    numbered = "\n".join(f"{n:>{LINE_NUMBER_WIDTH}} | {line}" for n, line in enumerate(lines, 1))
    block = f'<file path="{path}" lines="{len(lines)}">\n{numbered}\n</file>\n'
    return block, len(lines)


def build_snapshot(
    repo: Path,
    *,
    include: Sequence[str],
    exclude: Sequence[str],
    max_bytes: int,
    excluded_paths: Iterable[Path] = (),
) -> Snapshot:
    """Walk `repo` and render the snapshot; raise SnapshotTooLarge over `max_bytes`.

    `excluded_paths` (files or directories, e.g. the harness packages, the output
    directory, the constitution) are left out when they lie inside the repository.
    """
    repo = repo.resolve()
    if not repo.is_dir():
        raise SnapshotError(f"--repo {repo}: not a directory")
    hard: list[str] = [
        rel for p in excluded_paths if (rel := _relative_inside(repo, p)) not in (None, ".")
    ]
    skipped: list[tuple[str, str]] = []
    chosen: list[tuple[str, Path]] = []

    def hard_excluded(rel: str) -> bool:
        return any(rel == h or rel.startswith(h + "/") for h in hard)

    for dirpath, dirnames, filenames in os.walk(repo, followlinks=False):
        base = Path(dirpath)
        rel_base = base.relative_to(repo).as_posix()
        prefix = "" if rel_base == "." else rel_base + "/"
        keep: list[str] = []
        for d in sorted(dirnames):
            rel = prefix + d
            if d in ALWAYS_PRUNED_DIRS or hard_excluded(rel) or _prunable(rel, exclude):
                continue
            if (base / d).is_symlink():
                skipped.append((rel + "/", "symlink"))
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            rel = prefix + name
            if hard_excluded(rel):
                continue
            if not any(match_glob(p, rel) for p in include):
                continue
            if any(match_glob(p, rel) for p in exclude):
                continue
            if is_secret_name(name):
                skipped.append((rel, "secret"))
                continue
            if (base / name).is_symlink():
                skipped.append((rel, "symlink"))
                continue
            chosen.append((rel, base / name))

    chosen.sort(key=lambda item: item[0])
    files: list[SnapshotFile] = []
    blocks: list[str] = []
    sizes: list[tuple[str, int]] = []
    total = 0
    for rel, full in chosen:
        size = full.stat().st_size
        if size > max_bytes:
            sizes.append((rel, size))
            total += size
            continue
        data = full.read_bytes()
        if b"\0" in data:
            skipped.append((rel, "binary"))
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            skipped.append((rel, "binary (not UTF-8 text)"))
            continue
        block, n_lines = render_file(rel, text)
        files.append(SnapshotFile(rel, text, n_lines))
        blocks.append(block)
        block_bytes = len(block.encode("utf-8"))
        sizes.append((rel, block_bytes))
        total += block_bytes
    header = f'<repository_snapshot files="{len(files)}">\n'
    rendered = header + "".join(blocks) + "</repository_snapshot>\n"
    size = len(rendered.encode("utf-8"))
    if total > max_bytes or size > max_bytes:
        largest = sorted(sizes, key=lambda s: (-s[1], s[0]))[:5]
        raise SnapshotTooLarge(max(size, total), max_bytes, len(sizes), largest)
    return Snapshot(tuple(files), tuple(sorted(skipped)), rendered)


def harness_paths() -> tuple[Path, ...]:
    """The review harness's own packages, wherever they are installed from."""
    import orchestrator
    import synth
    import workers

    return tuple(Path(m.__file__).resolve().parent for m in (orchestrator, workers, synth))


def snapshot_for_run(
    repo: Path, config: ReviewConfig, *, out_dir: Path, constitution: Path
) -> Snapshot:
    """The snapshot of `repo` under `config`, without harness, outputs and constitution."""
    return build_snapshot(
        repo,
        include=config.snapshot_include,
        exclude=config.snapshot_exclude,
        max_bytes=config.snapshot_max_bytes,
        excluded_paths=(*harness_paths(), out_dir, constitution),
    )
