"""Incremental review (`moneta-review run --since REV`): keep findings on changed lines.

The reviewers still see the full snapshot (a change is judged in its context), but a
loop keeps only findings whose line range touches a line changed since REV, and marks
each kept finding `seen` when a previous run filed the same finding (same file, same
claim after `synth.loop.normalise_claim`, overlapping lines once the previous run's
line numbers are carried through the diff), `new` otherwise.

Everything that needs git happens once, before the run, in `incremental_scope`: it
runs `git diff -U0 --find-renames REV` (REV against the working tree, so uncommitted
edits count as changes; untracked files count as wholly changed) and re-maps the
previous run's findings into today's line numbers. The result is a JSON-ready dict
carried by the run's config (`ReviewConfig.incremental`), so a queued synthesis job
judges exactly like the embedded one and a `--resume` with another REV or previous
run is refused as config drift. `apply_incremental` is the pure part the synthesis
calls. `with_scope` also tells the reviewers which lines changed, as `[noise]` path
instructions, so each role hears about the changed files its scope covers.

Line conventions: ranges are inclusive 1-based `[start, end]`; a range ending at 0
means the whole file (as in the SARIF export). A pure deletion leaves a gap between
two lines of the new file; a finding touches it when it covers either neighbour.
The previous run's line numbers are read as lines of REV's version of the file, which
holds when REV is the revision that run reviewed.
"""

from __future__ import annotations

import re
import subprocess
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.config import PathInstruction, ReviewConfig
from synth.loop import DUPLICATE_PREFIX, normalise_claim
from synth.outputs import FINDINGS, read_jsonl
from synth.schema import Finding

NOT_CHANGED = "not-changed-since-rev"
"""Drop reason (findings.dropped.jsonl) of a finding on lines the diff does not touch."""
SEEN = "seen"
NEW = "new"

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_GIT_TIMEOUT = 120.0


class IncrementalError(RuntimeError):
    """git could not produce the diff (not a repository, unknown revision, no git)."""


@dataclass(frozen=True, slots=True)
class Hunk:
    """One `-U0` hunk: old lines [old_start, old_start+old_count) became the new ones."""

    old_start: int
    old_count: int
    new_start: int
    new_count: int


@dataclass(slots=True)
class FileChange:
    """What changed in one file of the working tree since REV."""

    path: str  # path now
    old_path: str | None  # path at REV (None: the file is new)
    hunks: list[Hunk] = field(default_factory=list)
    whole: bool = False  # new or untracked: every line counts as changed

    def changed_ranges(self) -> list[list[int]]:
        """New-side line ranges [start, end] added or modified (merged, sorted)."""
        spans = sorted(
            (h.new_start, h.new_start + h.new_count - 1) for h in self.hunks if h.new_count
        )
        merged: list[list[int]] = []
        for s, e in spans:
            if merged and s <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        return merged

    def gaps(self) -> list[int]:
        """New-side line after which lines were deleted (0: at the top of the file)."""
        return sorted({h.new_start for h in self.hunks if not h.new_count})

    def remap(self, line_range: Sequence[int]) -> tuple[int, int]:
        """Carry an inclusive range of REV's file into the new file's line numbers.

        A line outside every hunk moves by the hunks above it; a line inside a
        rewritten hunk maps to that hunk's new lines (its start for a range start,
        its end for a range end); a deleted line maps to the line above the gap.
        """
        start, end = int(line_range[0]), int(line_range[1])
        if end == 0:
            return (start, end)  # the whole file stays the whole file
        lo = self._map(start, low=True)
        hi = self._map(end, low=False)
        lo = min(lo, hi)  # a range inside a deleted block collapses onto the gap
        return (max(lo, 1), max(hi, 1))

    def _map(self, line: int, *, low: bool) -> int:
        offset = 0
        for h in sorted(self.hunks, key=lambda h: h.old_start):
            if h.old_count == 0:  # pure insertion after old line old_start
                if line > h.old_start:
                    offset += h.new_count
                    continue
                break
            if line < h.old_start:
                break
            if line < h.old_start + h.old_count:  # inside a rewritten or deleted block
                if h.new_count == 0:
                    return h.new_start
                return h.new_start if low else h.new_start + h.new_count - 1
            offset += h.new_count - h.old_count
        return line + offset


@dataclass(slots=True)
class ChangeSet:
    """Changes of a working tree since a revision, by current path."""

    since: str
    commit: str
    files: dict[str, FileChange] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)  # path at REV -> path now
    deleted: set[str] = field(default_factory=set)  # paths at REV gone now

    def path_now(self, old_path: str) -> str | None:
        """Where a file of REV lives now (None: deleted)."""
        if old_path in self.deleted:
            return None
        return self.renamed.get(old_path, old_path)

    def remap(self, old_path: str, line_range: Sequence[int]) -> tuple[str, tuple[int, int]] | None:
        """(path now, range now) of a range of REV's `old_path`; None if the file is gone."""
        now = self.path_now(old_path)
        if now is None:
            return None
        change = self.files.get(now)
        if change is None or (change.whole and change.old_path is None):
            return now, (int(line_range[0]), int(line_range[1]))
        return now, change.remap(line_range)


# --- git ------------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-c", "core.quotePath=false", "-C", str(repo), *args],
            capture_output=True,
            check=False,
            timeout=_GIT_TIMEOUT,
        )
    except FileNotFoundError as exc:
        raise IncrementalError("--since needs git on PATH") from exc
    except subprocess.TimeoutExpired as exc:
        raise IncrementalError(f"git {' '.join(args)} took over {_GIT_TIMEOUT:.0f} s") from exc
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip()
        raise IncrementalError(f"git {' '.join(args)} failed in {repo}: {err}")
    return done.stdout.decode("utf-8", "surrogateescape")


_C_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


def _unquote(path: str) -> str:
    """A path as git prints it: C-quoted (octal bytes, backslash escapes) when it holds
    special characters; the escapes are bytes of the UTF-8 name."""
    if not (len(path) >= 2 and path[0] == '"' and path[-1] == '"'):
        return path
    body, out, i = path[1:-1], bytearray(), 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            octal = body[i + 1 : i + 4]
            if len(octal) == 3 and all(d in "01234567" for d in octal):
                out.append(int(octal, 8))
                i += 4
                continue
            if body[i + 1] in _C_ESCAPES:
                out.append(_C_ESCAPES[body[i + 1]])
                i += 2
                continue
        out += c.encode("utf-8", "surrogateescape")
        i += 1
    return out.decode("utf-8", "replace")


def _strip_prefix(path: str, prefix: str) -> str | None:
    path = _unquote(path.rstrip("\t"))
    if path == "/dev/null":
        return None
    return path[len(prefix) :] if path.startswith(prefix) else path


def parse_diff(text: str, *, since: str = "", commit: str = "") -> ChangeSet:
    """A ChangeSet from `git diff -U0 --find-renames` output (a/ and b/ prefixes)."""
    changes = ChangeSet(since=since, commit=commit)
    current: FileChange | None = None
    old: str | None = None
    new: str | None = None
    rename_from: str | None = None

    def flush() -> None:
        nonlocal current
        if current is None:
            return
        if current.path:
            changes.files[current.path] = current
            if current.old_path and current.old_path != current.path:
                changes.renamed[current.old_path] = current.path
        current = None

    for line in text.splitlines():
        if line.startswith("diff --git "):
            flush()
            current = FileChange(path="", old_path=None)
            old = new = rename_from = None
            continue
        if current is None:
            continue
        if line.startswith("rename from "):
            rename_from = _unquote(line[len("rename from ") :])
            current.old_path = rename_from
        elif line.startswith("rename to "):
            current.path = _unquote(line[len("rename to ") :])
        elif line.startswith("--- "):
            old = _strip_prefix(line[4:], "a/")
            current.old_path = old
        elif line.startswith("+++ "):
            new = _strip_prefix(line[4:], "b/")
            if new is None:  # deleted
                if old is not None:
                    changes.deleted.add(old)
                current = None
                continue
            current.path = new
            if old is None and rename_from is None:
                current.whole = True
        elif line.startswith("@@"):
            m = _HUNK.match(line)
            if m is None:
                raise IncrementalError(f"unparsable hunk header in git diff: {line!r}")
            os_, oc, ns, nc = m.groups()
            current.hunks.append(
                Hunk(
                    int(os_),
                    1 if oc is None else int(oc),
                    int(ns),
                    1 if nc is None else int(nc),
                )
            )
    flush()
    return changes


def changes_since(repo: Path, since: str) -> ChangeSet:
    """Changes of `repo`'s working tree since revision `since`, untracked files included.

    Paths are relative to `repo` (which may be a subdirectory of the git work tree, as
    the snapshot's are), and changes outside it are left out (`git diff --relative`).
    """
    if not isinstance(since, str) or not since.strip() or since.startswith("-"):
        raise ValueError(f"since: must be a git revision, got {since!r}")
    repo = Path(repo)
    commit = _git(repo, "rev-parse", "--verify", "--quiet", f"{since}^{{commit}}").strip()
    text = _git(
        repo,
        "diff",
        "-U0",
        "--no-color",
        "--no-ext-diff",
        "--find-renames",
        "--relative",
        commit,
        "--",
    )
    changes = parse_diff(text, since=since, commit=commit)
    untracked = _git(repo, "ls-files", "--others", "--exclude-standard", "-z")
    for path in filter(None, untracked.split("\0")):
        changes.files[path] = FileChange(path=path, old_path=None, whole=True)
    return changes


# --- the scope a run carries ------------------------------------------------------------------


def previous_findings(previous_run: Path) -> list[dict[str, Any]]:
    """Kept findings of a previous run's output directory (its findings.jsonl)."""
    path = Path(previous_run) / FINDINGS
    if not path.is_file():
        raise ValueError(f"previous: {previous_run} holds no {FINDINGS} (not a run's --out)")
    return read_jsonl(path)


def incremental_scope(
    repo: Path,
    since: str,
    previous_run: Path | None = None,
    *,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """The JSON-ready scope `apply_incremental` judges by (see the module docstring).

    Files under `out_dir` (the run's own outputs, relative paths against `repo`) are
    left out: a run writing there must not change the scope a `--resume` recomputes.
    """
    changes = changes_since(repo, since)
    skip: str | None = None
    if out_dir is not None:
        out = out_dir if out_dir.is_absolute() else Path(repo) / out_dir
        try:
            skip = out.resolve().relative_to(Path(repo).resolve()).as_posix().rstrip("/") + "/"
        except ValueError:
            skip = None  # outside the repository
    files: dict[str, dict[str, Any]] = {}
    for path, change in sorted(changes.files.items()):
        if skip is not None and (path + "/").startswith(skip):
            continue
        if change.whole:
            files[path] = {"whole": True}
        else:
            files[path] = {"lines": change.changed_ranges(), "gaps": change.gaps()}
    previous: list[dict[str, Any]] = []
    if previous_run is not None:
        for row in previous_findings(previous_run):
            moved = changes.remap(row["file_path"], row["line_range"])
            if moved is None:
                continue  # its file is gone: nothing now can be the same finding
            path, (start, end) = moved
            previous.append(
                {
                    "id": row["id"],
                    "file_path": path,
                    "line_range": [start, end],
                    "claim": normalise_claim(row["claim"]),
                }
            )
    return {
        "since": since,
        "commit": changes.commit,
        "files": files,
        "previous_run": None if previous_run is None else str(previous_run),
        "previous": previous,
    }


# --- judging a loop -----------------------------------------------------------------------------


def _overlap(a: Sequence[int], b: Sequence[int]) -> bool:
    if a[1] == 0 or b[1] == 0:  # whole file
        return True
    return a[0] <= b[1] and b[0] <= a[1]


def touches_changes(
    file_path: str, line_range: Sequence[int], files: Mapping[str, Mapping[str, Any]]
) -> bool:
    """True if the inclusive range touches a changed line (or a deletion gap) of the file."""
    change = files.get(file_path)
    if change is None:
        return False
    if change.get("whole"):
        return True
    start, end = int(line_range[0]), int(line_range[1])
    lines: list[list[int]] = change.get("lines", [])
    gaps: list[int] = change.get("gaps", [])
    if end == 0:
        return bool(lines or gaps)
    starts = [s for s, _ in lines]
    i = bisect_left(starts, start)
    for j in (i - 1, i):  # the span starting before `start`, or the first one after it
        if 0 <= j < len(lines) and lines[j][0] <= end and start <= lines[j][1]:
            return True
    return any(start <= g + 1 and g <= end for g in gaps)


def match_previous(f: Finding, previous: Sequence[Mapping[str, Any]]) -> str | None:
    """The id of the previous run's finding `f` repeats, or None (it is new)."""
    claim = normalise_claim(f.claim)
    for p in previous:
        if (
            p["file_path"] == f.file_path
            and p["claim"] == claim
            and _overlap(p["line_range"], f.line_range)
        ):
            return str(p["id"])
    return None


def apply_incremental(
    ranked: Sequence[Finding],
    duplicates: Sequence[tuple[Finding, str]],
    scope: Mapping[str, Any],
) -> tuple[list[Finding], list[tuple[Finding, str]], list[tuple[Finding, str]]]:
    """Keep ranked survivors that touch changed lines; mark them seen or new.

    A survivor counts as touching when it or a duplicate merged into it does (the
    merged group is one finding). Returns (kept, dropped with NOT_CHANGED, remaining
    duplicates); a dropped survivor's duplicates are dropped with it, right after it,
    as the noise controls do.
    """
    files: Mapping[str, Mapping[str, Any]] = scope.get("files", {})
    previous = sorted(scope.get("previous", []), key=lambda p: str(p["id"]))
    members: dict[str, list[Finding]] = {}
    for d, reason in duplicates:
        members.setdefault(reason.removeprefix(DUPLICATE_PREFIX), []).append(d)
    kept: list[Finding] = []
    dropped: list[tuple[Finding, str]] = []
    gone: set[str] = set()
    for f in ranked:
        group = [f, *members.get(f.id, ())]
        if any(touches_changes(m.file_path, m.line_range, files) for m in group):
            seen_as = match_previous(f, previous)
            kept.append(replace(f, novelty=SEEN if seen_as else NEW, seen_as=seen_as))
        else:
            gone.add(f.id)
            dropped.append((f, NOT_CHANGED))
            dropped.extend(
                (d, NOT_CHANGED) for d in sorted(members.get(f.id, ()), key=lambda d: d.id)
            )
    remaining = [(d, r) for d, r in duplicates if r.removeprefix(DUPLICATE_PREFIX) not in gone]
    return kept, dropped, remaining


# --- what reviewers are told ---------------------------------------------------------------------

MAX_INSTRUCTED_FILES = 200
"""Changed files named in reviewer instructions; a larger change names none (the
prompt would grow with the diff while the filter still applies)."""


def _spans(ranges: Sequence[Sequence[int]]) -> str:
    return ", ".join(str(s) if s == e else f"{s}-{e}" for s, e in ranges)


def scope_instructions(scope: Mapping[str, Any]) -> tuple[PathInstruction, ...]:
    """One path instruction per changed file, naming the lines findings must touch.

    They join the config's `[noise]` path instructions, so each reaches exactly the
    reviewers whose scope covers the file (`synth.noise.role_instructions`). Paths
    holding glob characters are skipped: as a glob they would not name the file.
    """
    files: Mapping[str, Mapping[str, Any]] = scope.get("files", {})
    if len(files) > MAX_INSTRUCTED_FILES:
        return ()
    since = scope.get("since", "the base revision")
    out: list[PathInstruction] = []
    for path, change in sorted(files.items()):
        if any(c in path for c in "*?{}"):
            continue
        if change.get("whole"):
            where = "the whole file is new"
        else:
            parts = []
            if change.get("lines"):
                parts.append("lines " + _spans(change["lines"]))
            if change.get("gaps"):
                parts.append("deletions after line " + ", ".join(str(g) for g in change["gaps"]))
            where = "; ".join(parts)
        out.append(
            PathInstruction(
                paths=(path,),
                instruction=(
                    f"incremental review: changed since {since}: {where}. Only findings "
                    "whose line_range touches a changed line are kept; the rest of the "
                    "file is context."
                ),
            )
        )
    return tuple(out)


def with_scope(config: ReviewConfig, scope: dict[str, Any]) -> ReviewConfig:
    """`config` judging by `scope`, its reviewers told which lines changed."""
    noise = replace(
        config.noise,
        path_instructions=config.noise.path_instructions + scope_instructions(scope),
    )
    return replace(config, incremental=scope, noise=noise)
