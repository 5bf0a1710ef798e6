"""Noise controls: config parsing, what synthesis keeps, and the reviewers' extra instructions."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.config import (
    NoiseControls,
    PathInstruction,
    ReviewConfig,
    check_config_text,
    default_config_path,
    load_config,
    match_glob,
)
from synth.ledger import ClosureLedger
from synth.noise import globs_overlap, role_instructions
from synth.outputs import DROPPED, FINDINGS, ledger_from_disk, write_final, write_loop
from tests.review.synth_fixtures import HASH, make_config, ok, raw, run_loop
from workers.prompts import task_text


def noisy(**kw: object) -> ReviewConfig:
    return make_config(noise=NoiseControls(**kw))  # type: ignore[arg-type]


def kept_ids(s: object) -> list[str]:
    return [f.id for f in s.kept]  # type: ignore[attr-defined]


def reasons(s: object) -> dict[str, str]:
    return {f.id: r for f, r in s.dropped}  # type: ignore[attr-defined]


SEVS = ("Critical", "High", "Medium", "Low", "Note")


def one_of_each() -> list:
    return [
        ok(
            "architect",
            1,
            [raw("architect", 1, s.lower(), severity=s, claim=s) for s in SEVS],
        )
    ]


# --- config -------------------------------------------------------------------------


BASE = default_config_path().read_text(encoding="utf-8")


def test_default_config_keeps_everything() -> None:
    noise = load_config().noise
    assert noise == NoiseControls()
    assert (noise.min_severity, noise.max_findings_per_loop, noise.max_findings_per_role) == (
        "Note",
        0,
        0,
    )


def test_noise_table_parsed() -> None:
    text = BASE + (
        '\n[noise]\nmin_severity = "Medium"\nmax_findings_per_loop = 40\n'
        'max_findings_per_role = 6\ninclude = ["moneta/**", "README.md"]\n'
        'exclude = ["moneta/mock_usd_target.py"]\n\n'
        '[[noise.path_instructions]]\npaths = ["moneta/usd_target.py"]\nroles = ["usd"]\n'
        'instruction = "Save() must be checked."\n\n'
        '[[noise.path_instructions]]\npaths = ["moneta/{ecs,decay}.py"]\n'
        'instruction = "Watch vectorisation."\n'
    )
    config, problems = check_config_text(text, "c.toml")
    assert problems == []
    assert config is not None
    assert config.noise == NoiseControls(
        min_severity="Medium",
        max_findings_per_loop=40,
        max_findings_per_role=6,
        include=("moneta/**", "README.md"),
        exclude=("moneta/mock_usd_target.py",),
        path_instructions=(
            PathInstruction(("moneta/usd_target.py",), "Save() must be checked.", ("usd",)),
            PathInstruction(("moneta/{ecs,decay}.py",), "Watch vectorisation.", ()),
        ),
    )


def test_noise_problems_reported_with_lines() -> None:
    extra = (
        '\n[noise]\nmin_severity = "Severe"\nmax_findings_per_loop = -1\n'
        'max_findings_per_role = true\ninclude = []\nexclude = ["/abs"]\ncolour = 1\n\n'
        '[[noise.path_instructions]]\npaths = ["moneta/usd_target.py"]\n'
        'roles = ["usd", "ghost"]\ninstruction = "x"\n\n'
        '[[noise.path_instructions]]\ninstruction = ""\n'
    )
    config, problems = check_config_text(BASE + extra, "c.toml")
    assert config is None
    n = len(BASE.splitlines())
    got = [(p.line - n if p.line else None, p.message) for p in problems]
    assert got == [
        (3, "noise.min_severity: must be one of Critical, High, Medium, Low, Note, got 'Severe'"),
        (4, "noise.max_findings_per_loop: must be between 0 and 100000, got -1"),
        (5, "noise.max_findings_per_role: must be an integer, got boolean"),
        (6, "noise.include: must list at least one glob (omit it to keep every path)"),
        (7, "noise.exclude[0]: glob '/abs' must be repo-relative (no leading '/')"),
        (
            8,
            "noise.colour: unknown key; expected one of exclude, include, "
            "max_findings_per_loop, max_findings_per_role, min_severity, path_instructions",
        ),
        (
            12,
            "noise.path_instructions[0].roles: unknown role 'ghost'; roles are adversarial, "
            "architect, consolidation, documentarian, persistence, substrate, test, usd",
        ),
        (15, "noise.path_instructions[1]: missing required key(s): paths"),
        (16, "noise.path_instructions[1].instruction: must be a non-empty string"),
    ]


def test_noise_survives_a_json_round_trip_of_the_config() -> None:
    """A queued job carries the config as JSON; the noise settings come back typed."""
    from dataclasses import asdict

    noise = NoiseControls(
        min_severity="High",
        max_findings_per_role=2,
        exclude=("docs/**",),
        path_instructions=(PathInstruction(("moneta/*.py",), "be brief", ("architect",)),),
    )
    data = json.loads(json.dumps(asdict(noise)))
    rebuilt = ReviewConfig(**_cfg_kwargs(), noise=data)
    assert rebuilt.noise == noise
    assert isinstance(rebuilt.noise.path_instructions[0], PathInstruction)


def _cfg_kwargs() -> dict:
    c = make_config()
    return {"roles": c.roles, "themes": c.themes, "constitution_path": c.constitution_path}


# --- synthesis ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minimum", "kept"),
    [
        ("Note", SEVS),
        ("Low", SEVS[:4]),
        ("Medium", SEVS[:3]),
        ("High", SEVS[:2]),
        ("Critical", SEVS[:1]),
    ],
)
def test_min_severity_boundary(minimum: str, kept: tuple[str, ...]) -> None:
    s = run_loop(one_of_each(), config=noisy(min_severity=minimum))
    assert [f.severity for f in s.kept] == list(kept)
    assert reasons(s) == {
        f"architect-L1-{sev.lower()}": "below-min-severity" for sev in SEVS if sev not in kept
    }
    c = s.counts()
    assert c["kept"] == len(kept)
    assert c["dropped"].get("below-min-severity", 0) == 5 - len(kept)


def test_duplicates_follow_their_survivor_and_caps_count_survivors_only() -> None:
    items = [
        raw("architect", 1, "a", severity="High", claim="x"),
        raw("architect", 1, "b", severity="Low", claim="x"),  # duplicate of a
        raw("architect", 1, "c", severity="Low", claim="y"),
        raw("architect", 1, "d", severity="Note", claim="y"),  # duplicate of c
        raw("architect", 1, "e", severity="Medium", claim="z"),
    ]
    s = run_loop([ok("architect", 1, items)], config=noisy(min_severity="Medium"))
    assert kept_ids(s) == ["architect-L1-a", "architect-L1-e"]
    assert reasons(s) == {
        "architect-L1-b": "duplicate-of:architect-L1-a",
        "architect-L1-c": "below-min-severity",
        "architect-L1-d": "below-min-severity",  # dropped with its survivor
    }
    # Cap 2 per role: a and c are distinct findings, b and d are merged away first.
    s = run_loop([ok("architect", 1, items)], config=noisy(max_findings_per_role=2))
    assert kept_ids(s) == ["architect-L1-a", "architect-L1-e"]
    assert reasons(s)["architect-L1-c"] == "over-role-cap"
    assert reasons(s)["architect-L1-d"] == "over-role-cap"
    assert reasons(s)["architect-L1-b"] == "duplicate-of:architect-L1-a"


@pytest.mark.parametrize(("cap", "expected"), [(0, 3), (1, 1), (2, 2), (3, 3), (4, 3)])
def test_per_role_cap_keeps_each_roles_best(cap: int, expected: int) -> None:
    results = [
        ok(
            "architect",
            1,
            [raw("architect", 1, f"a{i}", claim=f"a{i}", severity=SEVS[i]) for i in (2, 0, 1)],
        ),
        ok(
            "documentarian",
            1,
            [raw("documentarian", 1, f"d{i}", claim=f"d{i}", severity=SEVS[i]) for i in (3, 1, 4)],
        ),
    ]
    s = run_loop(results, config=noisy(max_findings_per_role=cap))
    per_role = {
        r: [f.severity for f in s.kept if f.role == r] for r in ("architect", "documentarian")
    }
    assert per_role["architect"] == ["Critical", "High", "Medium"][:expected]
    assert per_role["documentarian"] == ["High", "Low", "Note"][:expected]
    assert s.counts()["dropped"].get("over-role-cap", 0) == 2 * (3 - expected)


@pytest.mark.parametrize("cap", [1, 4, 5, 6])
def test_per_loop_cap_keeps_the_best_ranked(cap: int) -> None:
    s = run_loop(one_of_each(), config=noisy(max_findings_per_loop=cap))
    assert [f.severity for f in s.kept] == list(SEVS[:cap])
    assert [r for _, r in s.dropped] == ["over-loop-cap"] * max(0, 5 - cap)


def test_role_cap_applies_before_loop_cap() -> None:
    results = [
        ok(
            "architect",
            1,
            [raw("architect", 1, f"a{i}", claim=f"a{i}", severity="Critical") for i in range(3)],
        ),
        ok("documentarian", 1, [raw("documentarian", 1, "d", severity="Low", claim="d")]),
    ]
    s = run_loop(results, config=noisy(max_findings_per_role=1, max_findings_per_loop=2))
    assert kept_ids(s) == ["architect-L1-a0", "documentarian-L1-d"]
    assert reasons(s) == {"architect-L1-a1": "over-role-cap", "architect-L1-a2": "over-role-cap"}


@pytest.mark.parametrize(
    ("include", "exclude", "kept"),
    [
        (("**",), (), ["moneta/api.py", "moneta/ecs.py", "moneta/sub/deep.py", "docs/design.md"]),
        (("moneta/*.py",), (), ["moneta/api.py", "moneta/ecs.py"]),
        (("moneta/**",), ("moneta/sub/**",), ["moneta/api.py", "moneta/ecs.py"]),
        (("**",), ("moneta/{ecs,api}.py", "docs/**"), ["moneta/sub/deep.py"]),
    ],
)
def test_path_include_exclude(include: tuple, exclude: tuple, kept: list[str]) -> None:
    paths = ["moneta/api.py", "moneta/ecs.py", "moneta/sub/deep.py", "docs/design.md"]
    items = [raw("adversarial", 1, f"p{i}", file_path=p, claim=p) for i, p in enumerate(paths)]
    s = run_loop([ok("adversarial", 1, items)], config=noisy(include=include, exclude=exclude))
    assert sorted(f.file_path for f in s.kept) == sorted(kept)
    assert sorted(f.file_path for f, r in s.dropped if r == "path-excluded") == sorted(
        set(paths) - set(kept)
    )


def test_a_closing_finding_is_exempt_from_min_severity_not_from_caps() -> None:
    ledger = ClosureLedger()
    run_loop([ok("architect", 1, [raw("architect", 1, "a", severity="High")])], ledger=ledger)
    note = raw("architect", 2, "fixed", severity="Note", claim="fixed", closes="architect-L1-a")
    crit = raw("architect", 2, "c", severity="Critical", claim="c")
    s = run_loop(
        [ok("architect", 2, [note, crit])], loop=2, ledger=ledger, config=noisy(min_severity="High")
    )
    assert kept_ids(s) == ["architect-L2-c", "architect-L2-fixed"]
    assert set(ledger.closed_targets()) == {"architect-L1-a"}
    ledger2 = ClosureLedger()
    run_loop([ok("architect", 1, [raw("architect", 1, "a", severity="High")])], ledger=ledger2)
    s = run_loop(
        [ok("architect", 2, [note, crit])],
        loop=2,
        ledger=ledger2,
        config=noisy(max_findings_per_loop=1),
    )
    assert kept_ids(s) == ["architect-L2-c"]
    assert reasons(s) == {"architect-L2-fixed": "over-loop-cap"}
    assert s.closures == [] and ledger2.entries == []  # a dropped finding closes nothing


def test_noise_drops_are_written_counted_and_rebuilt_from_disk(tmp_path: Path) -> None:
    config = noisy(min_severity="Medium", max_findings_per_loop=1)
    items = [
        raw("architect", 1, "a", severity="High", claim="x"),
        raw("architect", 1, "b", severity="Low", claim="x"),
        raw("architect", 1, "c", severity="Medium", claim="y"),
        raw("architect", 1, "d", severity="Low", claim="z"),
    ]
    ledger = ClosureLedger()
    s = run_loop([ok("architect", 1, items)], config=config, ledger=ledger)
    write_loop(tmp_path, s)
    kept = [json.loads(x)["id"] for x in (tmp_path / FINDINGS).read_text().splitlines()]
    assert kept == ["architect-L1-a"]
    dropped = [json.loads(x) for x in (tmp_path / DROPPED).read_text().splitlines()]
    assert [(d["finding"]["id"], d["reason"]) for d in dropped] == [
        ("architect-L1-b", "duplicate-of:architect-L1-a"),
        ("architect-L1-d", "below-min-severity"),  # per-finding reasons in rank order,
        ("architect-L1-c", "over-loop-cap"),  # then the loop cap
    ]
    assert ledger_from_disk(tmp_path) == ledger
    assert "| dropped: below-min-severity | 1 |" in s.markdown
    assert "| dropped: over-loop-cap | 1 |" in s.markdown
    md = write_final(tmp_path, [s], ledger=ledger, constitution_hash=HASH).read_text()
    assert "Dropped by noise controls: 2 (below-min-severity: 1, over-loop-cap: 1)." in md


def test_default_noise_changes_nothing() -> None:
    results = one_of_each()
    assert run_loop(results).markdown == run_loop(results, config=noisy()).markdown


# --- glob overlap and role instructions -----------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("moneta/usd_target.py", "moneta/*.py", True),
        ("moneta/usd_target.py", "moneta/{ecs,decay}.py", False),
        ("moneta/{ecs,decay}.py", "moneta/{decay,api}.py", True),
        ("moneta/*.py", "moneta/sub/*.py", False),  # `*` stays within a segment
        ("moneta/**", "moneta/sub/*.py", True),
        ("**/*.md", "docs/**", True),
        ("**/*.md", "moneta/*.py", False),
        ("tests/**", "bench/**", False),
        ("**", "README.md", True),
        ("docs/?.md", "docs/ab.md", False),
        ("docs/?.md", "docs/*.md", True),
        ("a/**/b", "a/b", True),  # `**/` may match no directory
        ("a/**/b", "a/x/y/b", True),
        ("a/**/b", "a/xb", False),
        ("a*", "a/b", False),
    ],
)
def test_globs_overlap(a: str, b: str, overlap: bool) -> None:
    assert globs_overlap(a, b) is overlap
    assert globs_overlap(b, a) is overlap


def test_globs_overlap_agrees_with_match_glob_on_witnesses() -> None:
    """Where a concrete path matches both globs, overlap must be reported."""
    globs = [
        "moneta/*.py",
        "moneta/**",
        "**/*.py",
        "docs/**",
        "{README,CHANGES}.md",
        "tests/**/t?.py",
        "*",
    ]
    paths = [
        "moneta/api.py",
        "moneta/sub/x.py",
        "docs/a.md",
        "README.md",
        "tests/a/t1.py",
        "setup.py",
        "x",
    ]
    for a in globs:
        for b in globs:
            witness = any(match_glob(a, p) and match_glob(b, p) for p in paths)
            if witness:
                assert globs_overlap(a, b), (a, b)


def test_globs_overlap_matches_brute_force_on_random_globs() -> None:
    """Exhaustive check over every path of up to 7 characters from {a, b, /}.

    Globs of at most 4 tokens over that alphabet that share a path share a short one,
    so "overlap" must equal "some enumerated path matches both" in both directions.
    """
    rng = random.Random(7)
    tokens = ["a", "b", "/", "*", "?", "**", "**/", "{a,b}", "{ab,/}"]
    paths = ["".join(p) for n in range(8) for p in itertools.product("ab/", repeat=n)]
    checked = 0
    for _ in range(200):
        a = "".join(rng.choice(tokens) for _ in range(rng.randint(1, 4)))
        b = "".join(rng.choice(tokens) for _ in range(rng.randint(1, 4)))
        witness = any(match_glob(a, p) and match_glob(b, p) for p in paths)
        assert globs_overlap(a, b) is witness, (a, b)
        checked += witness
    assert 20 < checked < 180  # both outcomes well represented


def test_role_instructions_reach_the_roles_whose_scope_can_touch_the_paths() -> None:
    config = noisy(
        path_instructions=(
            PathInstruction(("moneta/usd_target.py",), "Check Save() results.\nAlways."),
            PathInstruction(("tests/**",), "Tests must assert data.", ("test",)),
            PathInstruction(("moneta/*.py",), "Architect only.", ("architect",)),
        )
    )
    got = {r.prefix: role_instructions(config, r) for r in config.roles}
    # usd_target.py is in scope of architect, usd, documentarian (moneta/*.py) and adversarial.
    for prefix in ("architect", "usd", "documentarian", "adversarial"):
        assert (
            "- For paths matching `moneta/usd_target.py`: Check Save() results.\n  Always."
            in got[prefix]
        )
    for prefix in ("substrate", "persistence", "consolidation", "test"):
        assert "Check Save()" not in got[prefix]
    assert "Tests must assert data." in got["test"]
    assert "Tests must assert data." not in got["adversarial"]  # roles narrow it
    assert "Architect only." in got["architect"]
    assert [p for p, t in got.items() if "Architect only." in t] == ["architect"]
    assert got["substrate"] == ""


def test_role_instructions_state_the_limits() -> None:
    config = noisy(
        min_severity="Medium",
        max_findings_per_role=5,
        max_findings_per_loop=30,
        include=("moneta/**",),
        exclude=("moneta/mock_usd_target.py",),
    )
    text = role_instructions(config, config.roles[0])
    assert "severity Critical, High, Medium are kept" in text
    assert "Only findings on paths matching `moneta/**` are kept." in text
    assert "Findings on paths matching `moneta/mock_usd_target.py` are discarded." in text
    assert "At most 5 per role and 30 per loop are kept" in text
    assert role_instructions(make_config(), config.roles[0]) == ""


def test_task_prompt_appends_the_instructions_after_the_directive() -> None:
    config = noisy(path_instructions=(PathInstruction(("moneta/usd_target.py",), "Check Save()."),))
    usd = config.role("usd")
    task = task_text(config, usd, config.theme_for(2))
    assert task.index(usd.directive) < task.index("Check Save().") < task.index("## Your answer")
    substrate = config.role("substrate")
    plain = replace(config, noise=NoiseControls())
    assert task_text(config, substrate, config.theme_for(2)) == task_text(
        plain, substrate, config.theme_for(2)
    )


def test_noise_table_from_a_config_file_drives_synthesis(tmp_path: Path) -> None:
    """The file's [noise] table, loaded as a run loads it, decides what a loop keeps."""
    path = tmp_path / "review.toml"
    path.write_text(
        BASE + '\n[noise]\nmin_severity = "High"\nexclude = ["moneta/ecs.py"]\n'
        "max_findings_per_role = 1\n",
        encoding="utf-8",
    )
    loaded = load_config(path)
    config = make_config(noise=loaded.noise)
    items = [
        raw("architect", 1, "crit", severity="Critical", claim="c"),
        raw("architect", 1, "high", severity="High", claim="h"),
        raw("architect", 1, "med", severity="Medium", claim="m"),
        raw("architect", 1, "ecs", severity="Critical", claim="e", file_path="moneta/ecs.py"),
    ]
    s = run_loop([ok("architect", 1, items)], config=config)
    assert kept_ids(s) == ["architect-L1-crit"]
    assert reasons(s) == {
        "architect-L1-ecs": "path-excluded",
        "architect-L1-high": "over-role-cap",
        "architect-L1-med": "below-min-severity",
    }
