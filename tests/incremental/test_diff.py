"""git diff parsing, changed-line sets and line re-mapping, on temp repos with real commits."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from orchestrator.incremental import (
    MAX_INSTRUCTED_FILES,
    IncrementalError,
    changes_since,
    incremental_scope,
    parse_diff,
    scope_instructions,
    touches_changes,
)
from tests.incremental.gitrepo import commit_all, git, init_repo, read_lines, write_lines

BASE = [f"line-{i}" for i in range(1, 21)]  # 20 unique lines


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = init_repo(tmp_path / "repo")
    write_lines(repo / "src/a.py", BASE)
    write_lines(repo / "src/gone.py", ["x", "y"])
    write_lines(repo / "src/old_name.py", [f"keep-{i}" for i in range(1, 11)])
    commit_all(repo, "base", tag="v1")
    return repo


def test_changed_lines_gaps_and_remap_of_a_scripted_edit(repo: Path) -> None:
    lines = list(BASE)
    lines[9] = "line-10 edited"  # old line 10 modified
    del lines[14:16]  # old lines 15-16 deleted
    lines[2:2] = ["ins-1", "ins-2", "ins-3"]  # 3 lines inserted after old line 2
    write_lines(repo / "src/a.py", lines)
    commit_all(repo, "edit")

    changes = changes_since(repo, "v1")
    assert changes.commit == git(repo, "rev-parse", "v1").strip()
    a = changes.files["src/a.py"]
    assert a.changed_ranges() == [[3, 5], [13, 13]]
    assert a.gaps() == [17]  # old 15-16 were between new lines 17 and 18
    assert a.remap([1, 2]) == (1, 2)
    assert a.remap([3, 4]) == (6, 7)
    assert a.remap([10, 10]) == (13, 13)
    assert a.remap([9, 11]) == (12, 14)
    assert a.remap([15, 16]) == (17, 17)  # deleted: collapses onto the line above the gap
    assert a.remap([18, 20]) == (19, 21)
    assert a.remap([0, 0]) == (0, 0)  # the whole file stays the whole file
    assert read_lines(repo / "src/a.py")[18:21] == ["line-18", "line-19", "line-20"]

    scope_files = {"src/a.py": {"lines": a.changed_ranges(), "gaps": a.gaps()}}
    touching = {
        (1, 2): False,
        (2, 3): True,
        (6, 12): False,  # unchanged lines between the two edits
        (12, 13): True,
        (14, 16): False,
        (16, 16): False,
        (17, 17): True,  # the line above the deletion gap
        (18, 20): True,  # the line below it
        (19, 21): False,
        (0, 0): True,  # a whole-file finding touches a changed file
    }
    for (s, e), expected in touching.items():
        assert touches_changes("src/a.py", [s, e], scope_files) is expected, (s, e)
    assert touches_changes("src/other.py", [1, 100], scope_files) is False


def test_renames_deletions_and_untracked_files(repo: Path) -> None:
    git(repo, "mv", "src/old_name.py", "src/new_name.py")
    lines = [f"keep-{i}" for i in range(1, 11)]
    lines.insert(0, "added-top")
    write_lines(repo / "src/new_name.py", lines)
    git(repo, "rm", "-q", "src/gone.py")
    commit_all(repo, "rename and delete")
    write_lines(repo / "notes/untracked.md", ["fresh", "file"])  # not committed
    write_lines(repo / "src/a.py", [*BASE, "line-21 uncommitted"])  # working-tree edit

    changes = changes_since(repo, "v1")
    assert changes.renamed == {"src/old_name.py": "src/new_name.py"}
    assert changes.deleted == {"src/gone.py"}
    assert changes.remap("src/old_name.py", [3, 4]) == ("src/new_name.py", (4, 5))
    assert changes.remap("src/gone.py", [1, 1]) is None
    assert changes.files["src/new_name.py"].changed_ranges() == [[1, 1]]
    assert changes.files["notes/untracked.md"].whole is True
    assert changes.files["src/a.py"].changed_ranges() == [[21, 21]]
    assert "src/gone.py" not in changes.files


def test_remap_agrees_with_line_identity_on_random_edits(repo: Path) -> None:
    """Unchanged lines carry over to where the same (unique) line is now; 40 random edits."""
    rng = random.Random(8)
    path = repo / "src/a.py"
    counter = 0
    for trial in range(40):
        old = read_lines(path)
        new = list(old)
        for _ in range(rng.randint(1, 6)):
            op = rng.choice(["insert", "delete", "modify"])
            pos = rng.randrange(len(new) + (op == "insert"))
            counter += 1
            if op == "insert":
                new[pos:pos] = [f"t{trial}-ins-{counter}-{k}" for k in range(rng.randint(1, 3))]
            elif op == "delete" and len(new) > 3:
                del new[pos : pos + rng.randint(1, 3)]
            elif new:
                new[min(pos, len(new) - 1)] = f"t{trial}-mod-{counter}"
        tag = f"t{trial}"
        commit_all(repo, "before", tag=tag)
        write_lines(path, new)
        change = changes_since(repo, tag).files.get("src/a.py")
        commit_all(repo, "after")
        if new == old:
            assert change is None
            continue
        assert change is not None
        inside_old: set[int] = set()
        for h in change.hunks:
            inside_old.update(range(h.old_start, h.old_start + h.old_count))
        where_now = {text: i for i, text in enumerate(new, 1)}
        changed_new = {n for s, e in change.changed_ranges() for n in range(s, e + 1)}
        for i, text in enumerate(old, 1):
            if i in inside_old:
                continue
            assert change.remap([i, i]) == (where_now[text], where_now[text]), (trial, i)
            assert where_now[text] not in changed_new
        # Every new line outside the changed ranges existed before, at a remapped place.
        old_set = set(old)
        for n, text in enumerate(new, 1):
            if n not in changed_new:
                assert text in old_set, (trial, n)
        assert len(new) - len(changed_new) == len(old) - len(inside_old)


def test_bad_revision_and_non_repository_are_clear_errors(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(IncrementalError, match="no-such-rev"):
        changes_since(repo, "no-such-rev")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(IncrementalError, match="failed in"):
        changes_since(plain, "HEAD")
    for bad in ("", "  ", "--output=/tmp/x"):
        with pytest.raises(ValueError, match="since: must be a git revision"):
            changes_since(repo, bad)


def test_parse_diff_reads_quoted_paths_and_default_counts() -> None:
    text = (
        'diff --git "a/sp ace/\\303\\251t\\303\\251.py" "b/sp ace/\\303\\251t\\303\\251.py"\n'
        "index 1..2 100644\n"
        '--- "a/sp ace/\\303\\251t\\303\\251.py"\n'
        '+++ "b/sp ace/\\303\\251t\\303\\251.py"\n'
        "@@ -4 +4 @@\n"
        "-old\n"
        "+new\n"
        "@@ -9,0 +10,2 @@\n"
        "+a\n"
        "+b\n"
    )
    changes = parse_diff(text)
    f = changes.files["sp ace/été.py"]
    assert f.changed_ranges() == [[4, 4], [10, 11]]
    assert f.remap([9, 9]) == (9, 9)
    assert f.remap([10, 12]) == (12, 14)


def test_special_file_names_from_real_git_output(repo: Path) -> None:
    names = ["src/sp ace.py", "src/été.py", 'src/quo"te.py', 'src/é"q.py', "src/back\\slash.py"]
    for name in names:
        write_lines(repo / name, ["one", "two", "three"])
    commit_all(repo, "odd names", tag="odd")
    for name in names:
        write_lines(repo / name, ["one", "TWO", "three"])
    changes = changes_since(repo, "odd")
    assert sorted(changes.files) == sorted(names)
    for name in names:
        assert changes.files[name].changed_ranges() == [[2, 2]], name


def test_scope_instructions_name_lines_gaps_and_new_files() -> None:
    scope = {
        "since": "v9",
        "files": {
            "a.py": {"lines": [[3, 5], [9, 9]], "gaps": [12]},
            "b.py": {"lines": [], "gaps": [0]},
            "new.md": {"whole": True},
            "odd*.py": {"lines": [[1, 1]], "gaps": []},  # a glob would not name it
        },
    }
    got = {i.paths: i.instruction for i in scope_instructions(scope)}
    assert sorted(got) == [("a.py",), ("b.py",), ("new.md",)]
    assert "changed since v9: lines 3-5, 9; deletions after line 12." in got[("a.py",)]
    assert "changed since v9: deletions after line 0." in got[("b.py",)]
    assert "changed since v9: the whole file is new." in got[("new.md",)]
    many = {"files": {f"f{i}.py": {"whole": True} for i in range(MAX_INSTRUCTED_FILES + 1)}}
    assert scope_instructions(many) == ()


def test_a_subdirectory_repo_sees_its_own_relative_paths(repo: Path) -> None:
    write_lines(repo / "top.txt", ["outside the reviewed directory"])
    write_lines(repo / "src/a.py", [*BASE, "line-21"])
    write_lines(repo / "src/fresh.py", ["new"])  # untracked
    changes = changes_since(repo / "src", "v1")
    assert sorted(changes.files) == ["a.py", "fresh.py"]
    assert changes.files["a.py"].changed_ranges() == [[21, 21]]


def test_the_runs_own_output_directory_is_not_a_change(repo: Path) -> None:
    before = incremental_scope(repo, "v1", out_dir=Path("review"))
    write_lines(repo / "review/findings.jsonl", ["{}"])
    write_lines(repo / "review/loop-1.md", ["# loop 1"])
    write_lines(repo / "reviewed.txt", ["not an output"])
    after = incremental_scope(repo, "v1", out_dir=Path("review"))
    assert sorted(after["files"]) == ["reviewed.txt"]
    del after["files"]["reviewed.txt"]
    assert after == before
    absolute = incremental_scope(repo, "v1", out_dir=repo / "review")
    assert sorted(absolute["files"]) == ["reviewed.txt"]
