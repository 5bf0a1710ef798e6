"""Loop synthesis: scope filter, dedupe, ranking, duplicate ids, closures, markdown."""

from __future__ import annotations

import json

import pytest

from synth.ledger import ClosureLedger
from synth.loop import LoopSynthesis, normalise_claim, rank_key
from tests.review.synth_fixtures import HASH, bulk_results, make_config, ok, raw, run_loop
from workers.result import ReviewerResult


def ids(s: LoopSynthesis) -> list[str]:
    return [f.id for f in s.kept]


def dropped(s: LoopSynthesis) -> dict[str, str]:
    return {f.id: reason for f, reason in s.dropped}


# --- scope filter -----------------------------------------------------------------


def test_out_of_scope_dropped_as_role_isolation_adversarial_exempt() -> None:
    s = run_loop(
        [
            ok(
                "substrate",
                1,
                [
                    raw("substrate", 1, "in"),
                    raw("substrate", 1, "out", file_path="moneta/usd_target.py"),
                ],
            ),
            ok(
                "adversarial",
                1,
                [
                    raw("adversarial", 1, "any", file_path="moneta/usd_target.py"),
                    raw("adversarial", 1, "tests", file_path="tests/test_api.py"),
                ],
            ),
        ]
    )
    assert ids(s) == ["substrate-L1-in", "adversarial-L1-any", "adversarial-L1-tests"]
    assert dropped(s) == {"substrate-L1-out": "role-isolation"}
    assert s.counts()["dropped"] == {"role-isolation": 1, "duplicate": 0}


def test_single_star_does_not_cross_directories_double_star_does() -> None:
    s = run_loop(
        [
            ok(
                "architect",
                1,
                [
                    raw("architect", 1, "deep", file_path="moneta/sub/deep.py"),
                    raw("architect", 1, "doc", file_path="docs/design.md"),
                ],
            ),
            ok(
                "test",
                1,
                [
                    raw("test", 1, "t", file_path="tests/test_api.py"),
                    raw("test", 1, "b", file_path="bench/run.py"),
                ],
            ),
        ]
    )
    assert ids(s) == ["architect-L1-doc", "test-L1-b", "test-L1-t"]
    assert dropped(s) == {"architect-L1-deep": "role-isolation"}


# --- dedupe ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "merged"),
    [
        ([1, 5], [5, 9], True),  # touching: both hold line 5
        ([1, 5], [6, 9], False),  # adjacent: no shared line
        ([1, 5], [3, 4], True),  # contained
        ([1, 5], [1, 5], True),  # identical
        ([7, 7], [7, 7], True),  # single line
        ([7, 7], [8, 8], False),
        ([0, 0], [0, 3], True),
    ],
)
def test_line_range_boundaries(first: list[int], second: list[int], merged: bool) -> None:
    s = run_loop(
        [
            ok(
                "architect",
                1,
                [
                    raw("architect", 1, "a", line_range=first, claim="same"),
                    raw("architect", 1, "b", line_range=second, claim="same"),
                ],
            )
        ]
    )
    if merged:
        assert ids(s) == ["architect-L1-a"]
        assert dropped(s) == {"architect-L1-b": "duplicate-of:architect-L1-a"}
    else:
        assert ids(s) == ["architect-L1-a", "architect-L1-b"]
        assert s.dropped == []


def test_overlap_chains_into_one_group() -> None:
    s = run_loop(
        [
            ok(
                "architect",
                1,
                [
                    raw("architect", 1, "a", line_range=[1, 5], claim="same"),
                    raw("architect", 1, "b", line_range=[5, 9], severity="High", claim="same"),
                    raw("architect", 1, "c", line_range=[9, 12], claim="same"),
                    raw("architect", 1, "d", line_range=[13, 20], claim="same"),
                ],
            )
        ]
    )
    assert ids(s) == ["architect-L1-b", "architect-L1-d"]
    assert dropped(s) == {
        "architect-L1-a": "duplicate-of:architect-L1-b",
        "architect-L1-c": "duplicate-of:architect-L1-b",
    }


def test_claim_compared_ignoring_case_and_whitespace_only() -> None:
    s = run_loop(
        [
            ok(
                "architect",
                1,
                [
                    raw("architect", 1, "a", claim="Deposit is LOST on close"),
                    raw("architect", 1, "b", claim="  deposit\tis\n lost  on   CLOSE "),
                    raw("architect", 1, "c", claim="deposit is lost on close!"),
                    raw(
                        "architect",
                        1,
                        "d",
                        claim="Deposit is LOST on close",
                        file_path="moneta/ecs.py",
                    ),
                ],
            )
        ]
    )
    assert ids(s) == ["architect-L1-a", "architect-L1-c", "architect-L1-d"]
    assert dropped(s) == {"architect-L1-b": "duplicate-of:architect-L1-a"}
    assert normalise_claim(" A\u00a0B\tc ") == "a b c"


def test_cross_role_duplicates_merge() -> None:
    s = run_loop(
        [
            ok("substrate", 1, [raw("substrate", 1, "x", claim="Race", severity="Low")]),
            ok("adversarial", 1, [raw("adversarial", 1, "y", claim="race", severity="High")]),
        ]
    )
    assert ids(s) == ["adversarial-L1-y"]
    assert dropped(s) == {"substrate-L1-x": "duplicate-of:adversarial-L1-y"}


@pytest.mark.parametrize("order", [("Low", "High"), ("High", "Low")])
def test_higher_severity_survives_in_either_order(order: tuple[str, str]) -> None:
    a, b = order
    s = run_loop(
        [
            ok(
                "architect",
                1,
                [
                    raw("architect", 1, "a", severity=a, claim="same"),
                    raw("architect", 1, "b", severity=b, claim="same"),
                ],
            )
        ]
    )
    assert [f.severity for f in s.kept] == ["High"]


def test_severity_tie_escalation_flag_wins() -> None:
    s = run_loop(
        [
            ok(
                "architect",
                1,
                [
                    raw("architect", 1, "a", severity="Critical", claim="same"),
                    raw(
                        "architect",
                        1,
                        "b",
                        severity="Critical",
                        claim="same",
                        requires_section9_escalation=True,
                    ),
                ],
            )
        ]
    )
    assert ids(s) == ["architect-L1-b"]


def test_severity_tie_lead_role_wins_over_role_order() -> None:
    # Loop 2 leads with usd and persistence; adversarial is last in role order but
    # leads loop 3. Both files are in scope of their roles.
    results = [
        ok("architect", 3, [raw("architect", 3, "a", file_path="moneta/ecs.py", claim="same")]),
        ok("adversarial", 3, [raw("adversarial", 3, "z", file_path="moneta/ecs.py", claim="same")]),
    ]
    s = run_loop(results, loop=3)
    assert ids(s) == ["adversarial-L3-z"]
    assert dropped(s) == {"architect-L3-a": "duplicate-of:adversarial-L3-z"}


def test_severity_tie_without_lead_role_order_then_id() -> None:
    # Loop 1 leads with architect only: documentarian precedes adversarial in role order.
    s = run_loop(
        [
            ok("adversarial", 1, [raw("adversarial", 1, "a", claim="same")]),
            ok("documentarian", 1, [raw("documentarian", 1, "z", claim="same")]),
        ]
    )
    assert ids(s) == ["documentarian-L1-z"]
    # Same role and all else equal: the smaller id survives.
    s = run_loop(
        [
            ok(
                "documentarian",
                1,
                [
                    raw("documentarian", 1, "b", claim="same"),
                    raw("documentarian", 1, "a", claim="same"),
                ],
            )
        ]
    )
    assert ids(s) == ["documentarian-L1-a"]
    assert dropped(s) == {"documentarian-L1-b": "duplicate-of:documentarian-L1-a"}


# --- ranking -----------------------------------------------------------------------


def test_ranking_order() -> None:
    p = "moneta/ecs.py"
    results = [
        ok(
            "adversarial",
            3,
            [
                raw("adversarial", 3, "hi-lead", severity="High", claim="1", file_path=p),
                raw("adversarial", 3, "note", severity="Note", claim="2", file_path=p),
            ],
        ),
        ok(
            "architect",
            3,
            [
                raw("architect", 3, "hi", severity="High", claim="3", file_path=p),
                raw("architect", 3, "crit", severity="Critical", claim="4", file_path=p),
                raw(
                    "architect",
                    3,
                    "hi-esc",
                    severity="High",
                    claim="5",
                    file_path=p,
                    requires_section9_escalation=True,
                ),
            ],
        ),
        ok(
            "substrate",
            3,
            [
                raw("substrate", 3, "hi-b", severity="High", claim="6", file_path=p),
                raw("substrate", 3, "hi-a", severity="High", claim="7", file_path=p),
                raw("substrate", 3, "low", severity="Low", claim="8", file_path=p),
            ],
        ),
        ok(
            "usd",
            3,
            [raw("usd", 3, "hi", severity="High", claim="9", file_path="moneta/usd_target.py")],
        ),
    ]
    s = run_loop(results, loop=3)
    assert ids(s) == [
        "architect-L3-crit",  # severity first
        "architect-L3-hi-esc",  # then escalation flag
        "substrate-L3-hi-a",  # then lead role (substrate, adversarial lead loop 3) ...
        "substrate-L3-hi-b",  # ... then id within a role
        "adversarial-L3-hi-lead",  # lead, but last in role order
        "architect-L3-hi",  # not lead: role order architect < usd
        "usd-L3-hi",
        "substrate-L3-low",
        "adversarial-L3-note",
    ]


def test_result_order_does_not_change_output() -> None:
    a = ok("architect", 1, [raw("architect", 1, "a"), raw("architect", 1, "a", claim="dup id")])
    d = ok("documentarian", 1, [raw("documentarian", 1, "a", severity="High", claim="doc")])
    failed = ReviewerResult("usd", 1, "failed", error="HTTP 529 overloaded", attempts=3)
    s1 = run_loop([a, d, failed])
    s2 = run_loop([failed, d, a])
    assert s1.markdown == s2.markdown
    assert ids(s1) == ids(s2) == ["documentarian-L1-a", "architect-L1-a"]
    assert [r.role for r in s2.reviewers] == ["architect", "usd", "documentarian"]


# --- invalid items -----------------------------------------------------------------


def test_duplicate_id_second_invalid_first_kept() -> None:
    first = raw("architect", 1, "a", claim="first")
    second = raw("architect", 1, "a", claim="second")
    s = run_loop([ok("architect", 1, [first, second])])
    assert [(f.id, f.claim) for f in s.kept] == [("architect-L1-a", "first")]
    assert s.invalid == [(second, "id: duplicate id 'architect-L1-a' in loop 1")]
    assert s.invalid_origin == [("architect", 1)]


def test_duplicate_id_after_an_invalid_first_is_accepted() -> None:
    bad = raw("architect", 1, "a", severity="Blocker")
    good = raw("architect", 1, "a")
    s = run_loop([ok("architect", 1, [bad, good])])
    assert ids(s) == ["architect-L1-a"]
    assert [r for _, r in s.invalid] == [
        "severity: must be one of Critical, High, Medium, Low, Note, got 'Blocker'"
    ]


def test_non_list_findings_raw_and_non_dict_items_are_counted() -> None:
    s = run_loop(
        [
            ok("architect", 1, {"id": "architect-L1-a"}),  # type: ignore[arg-type]
            ok("usd", 1, ["text", None, raw("usd", 1, "u", file_path="moneta/usd_target.py")]),
        ]
    )
    assert s.invalid == [
        ({"id": "architect-L1-a"}, "findings_raw: must be a JSON array, got dict"),
        ("text", "finding: must be a JSON object, got str"),
        (None, "finding: must be a JSON object, got null"),
    ]
    assert s.invalid_origin == [("architect", -1), ("usd", 0), ("usd", 1)]
    c = s.counts()
    assert (c["raw"], c["valid"], c["invalid"], c["kept"]) == (4, 1, 3, 1)
    assert "| architect | MALFORMED |" in s.markdown


def test_items_past_the_per_reviewer_cap_are_invalid() -> None:
    items = [raw("architect", 1, f"f{i}", claim=f"c{i}") for i in range(4)]
    s = run_loop([ok("architect", 1, items)], config=make_config(max_findings_per_reviewer=3))
    assert ids(s) == ["architect-L1-f0", "architect-L1-f1", "architect-L1-f2"]
    assert s.invalid == [(items[3], "exceeds max_findings_per_reviewer (3): item 4 of 4")]


def test_harness_mismatches_raise() -> None:
    with pytest.raises(ValueError, match="result is for loop 2, not 1"):
        run_loop([ok("architect", 2, [])], loop=1)
    with pytest.raises(ValueError, match="role 'ghost' is not in the config"):
        run_loop([ok("ghost", 1, [])])


# --- reviewers, markdown -----------------------------------------------------------


def test_failed_and_unparsable_reviewers_never_read_as_zero_findings() -> None:
    s = run_loop(
        [
            ok("architect", 1, []),
            ReviewerResult("usd", 1, "failed", error="HTTP 529 overloaded", attempts=3),
            ReviewerResult("test", 1, "ok", extraction_error="no ```json fenced array", attempts=1),
        ]
    )
    md = s.markdown
    assert "| architect | ok | 1 | 0 | 0 | 0 | 0 |" in md
    assert "| usd | FAILED | 3 | n/a | n/a | n/a | n/a |" in md
    assert "error: HTTP 529 overloaded" in md
    assert "| test | NO FINDINGS EXTRACTED | 1 | n/a | n/a | n/a | n/a |" in md
    assert "extraction: no ```json fenced array" in md
    assert "- **usd**: FAILED after 3 attempt(s); error: HTTP 529 overloaded" in md
    c = s.counts()
    assert (c["reviewers"], c["reviewers_failed"], c["extraction_failures"]) == (3, 1, 1)
    assert "| reviewers failed | 1 |" in md
    assert "| reviewers with no extractable findings | 1 |" in md


def test_markdown_sections_counts_and_evidence() -> None:
    esc = raw(
        "architect",
        1,
        "esc",
        severity="Critical",
        conflicts_with_locked_decision=True,
        requires_section9_escalation=True,
        claim="WAL lost",
        evidence_quote="x = ```danger```\n",
        references=["DESIGN §1.9"],
    )
    s = run_loop(
        [
            ok("architect", 1, [esc, raw("architect", 1, "b", line_range=[3, 3]), {"bad": 1}]),
            ok("test", 1, [raw("test", 1, "oos")]),
        ],
        ledger=ClosureLedger(),
    )
    md = s.markdown
    assert md.startswith("# Loop 1: Spec conformance (`spec-conformance`)\n")
    assert "## Lens\n\nDoes it match the spec?\n" in md
    for row in (
        "| raw items | 4 |",
        "| valid | 3 |",
        "| invalid | 1 |",
        "| kept | 2 |",
        "| dropped: role-isolation | 1 |",
        "| dropped: duplicate | 0 |",
        "| kept Critical | 1 |",
        "| kept Medium | 1 |",
        "| escalation candidates | 1 |",
    ):
        assert row in md
    assert (
        "- `architect-L1-esc` (Critical, conflicts with a locked decision) "
        "`moneta/api.py:10-12`: WAL lost"
    ) in md
    assert "### 1. `architect-L1-esc` · Critical · `moneta/api.py:10-12`" in md
    assert "### 2. `architect-L1-b` · Medium · `moneta/api.py:3`" in md
    assert "````text\nx = ```danger```\n````" in md  # fence longer than the content's
    assert "References: `DESIGN §1.9`" in md
    assert "| `test-L1-oos` | `moneta/api.py:10-12` | role-isolation |" in md
    assert "| architect | 2 | - | missing required key(s):" in md
    assert md.endswith("\n") and not md.endswith("\n\n")


def test_markdown_is_byte_identical_across_runs() -> None:
    def results() -> list[ReviewerResult]:
        return [
            ok(
                "architect",
                2,
                [
                    raw(
                        "architect",
                        2,
                        f"f{i}",
                        claim=f"c{i % 3}",
                        line_range=[i, i + 2],
                        closes="usd-L1-x" if i == 0 else None,
                    )
                    for i in range(6)
                ],
            ),
            ReviewerResult("usd", 2, "failed", error="boom", attempts=3),
        ]

    a = run_loop(results(), loop=2)
    b = run_loop(results(), loop=2)
    assert a.markdown.encode() == b.markdown.encode()
    assert [f.to_dict() for f in a.kept] == [f.to_dict() for f in b.kept]


# --- closures ----------------------------------------------------------------------


def test_closures_known_unknown_and_via_duplicate() -> None:
    ledger = ClosureLedger()
    run_loop(
        [
            ok(
                "architect",
                1,
                [
                    raw("architect", 1, "keep", severity="High", claim="same"),
                    raw("architect", 1, "dup", severity="Low", claim="same"),
                ],
            )
        ],
        ledger=ledger,
    )
    s2 = run_loop(
        [
            ok(
                "usd",
                2,
                [
                    raw(
                        "usd", 2, "c1", file_path="moneta/usd_target.py", closes="architect-L1-keep"
                    ),
                    raw(
                        "usd",
                        2,
                        "c2",
                        file_path="moneta/usd_target.py",
                        closes="architect-L1-dup",
                        claim="other",
                    ),
                    raw(
                        "usd",
                        2,
                        "c3",
                        file_path="moneta/usd_target.py",
                        closes="architect-L1-ghost",
                        claim="third",
                    ),
                ],
            )
        ],
        loop=2,
        ledger=ledger,
    )
    assert s2.closures == [
        ("usd-L2-c1", "architect-L1-keep"),
        ("usd-L2-c2", "architect-L1-dup"),
        ("usd-L2-c3", "architect-L1-ghost"),
    ]
    assert s2.closure_status == ["closed", "closed", "unknown-id"]
    assert [(e.closer, e.target, e.status) for e in ledger.entries] == [
        ("usd-L2-c1", "architect-L1-keep", "closed"),
        ("usd-L2-c2", "architect-L1-keep", "closed"),
        ("usd-L2-c3", None, "unknown-id"),
    ]
    assert set(ledger.closed_targets()) == {"architect-L1-keep"}
    assert "| `usd-L2-c3` | `architect-L1-ghost` | unknown-id |" in s2.markdown


def test_role_isolated_and_invalid_findings_close_nothing() -> None:
    ledger = ClosureLedger()
    run_loop([ok("architect", 1, [raw("architect", 1, "a")])], ledger=ledger)
    s = run_loop(
        [
            ok(
                "substrate",
                2,
                [
                    raw(
                        "substrate",
                        2,
                        "oos",
                        file_path="moneta/usd_target.py",
                        closes="architect-L1-a",
                    ),
                    raw("substrate", 2, "bad", closes="architect-L1-a", severity="?"),
                ],
            )
        ],
        loop=2,
        ledger=ledger,
    )
    assert s.closures == []
    assert ledger.entries == []


def test_resynthesising_a_loop_replaces_its_ledger_entries() -> None:
    ledger = ClosureLedger()
    run_loop([ok("architect", 1, [raw("architect", 1, "a")])], ledger=ledger)
    r2 = [ok("architect", 2, [raw("architect", 2, "b", closes="architect-L1-a")])]
    run_loop(r2, loop=2, ledger=ledger)
    once = ledger.to_dict()
    run_loop(r2, loop=2, ledger=ledger)
    assert ledger.to_dict() == once
    assert len(ledger.entries) == 1


def test_ledger_round_trips_through_json() -> None:
    ledger = ClosureLedger()
    run_loop(
        [
            ok(
                "architect",
                1,
                [raw("architect", 1, "a", claim="s"), raw("architect", 1, "b", claim="s")],
            )
        ],
        ledger=ledger,
    )
    run_loop(
        [
            ok(
                "architect",
                2,
                [
                    raw("architect", 2, "c", closes="architect-L1-b"),
                    raw("architect", 2, "d", closes="architect-L1-zz", claim="x"),
                ],
            )
        ],
        loop=2,
        ledger=ledger,
    )
    restored = ClosureLedger.from_dict(json.loads(json.dumps(ledger.to_dict())))
    assert restored == ledger
    assert restored.entries == ledger.entries
    assert restored.resolve("architect-L1-b") == "architect-L1-a"
    assert [e.status for e in restored.entries] == ["closed", "unknown-id"]
    # The restored ledger keeps judging later loops the same way.
    s3 = run_loop(
        [ok("architect", 3, [raw("architect", 3, "e", closes="architect-L2-c")])],
        loop=3,
        ledger=restored,
    )
    assert s3.closure_status == ["closed"]
    assert s3.kept[0].constitution_hash == HASH


# --- boundaries not covered above -------------------------------------------------


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/work/main/moneta/api.py", "must be repo-relative, not absolute"),
        ("../secrets.env", "must not contain '..'"),
        ("moneta/../../etc/passwd", "must not contain '..'"),
        ("moneta/missing.py", "not in the reviewed snapshot"),
        ("moneta/api.py ", "not in the reviewed snapshot"),
    ],
)
def test_adversarial_exempt_from_scope_but_not_from_path_rules(path: str, fragment: str) -> None:
    s = run_loop([ok("adversarial", 1, [raw("adversarial", 1, "x", file_path=path)])])
    assert s.kept == [] and s.dropped == []
    [(_, reason)] = s.invalid
    assert reason.startswith("file_path: ") and fragment in reason


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"loop": True}, "loop: must be an int, got bool"),  # True == 1 == the loop
        ({"line_range": [True, True]}, "line_range: start must be an int, got bool"),
        ({"line_range": [1, True]}, "line_range: end must be an int, got bool"),
        ({"line_range": [False, 0]}, "line_range: start must be an int, got bool"),
    ],
)
def test_bool_as_int_rejected_through_the_loop(override: dict, reason: str) -> None:
    item = raw("architect", 1, "b", **override)
    s = run_loop([ok("architect", 1, [item, raw("architect", 1, "good")])])
    assert ids(s) == ["architect-L1-good"]
    assert s.invalid == [(item, reason)]
    assert s.counts()["invalid"] == 1


def test_duplicate_id_rejected_even_when_the_first_is_dropped_by_scope() -> None:
    first = raw("substrate", 1, "a", file_path="moneta/usd_target.py")  # out of scope
    second = raw("substrate", 1, "a", claim="another")
    third = raw("substrate", 1, "a", claim="a third")
    s = run_loop([ok("substrate", 1, [first, second, third])])
    assert s.kept == []
    assert dropped(s) == {"substrate-L1-a": "role-isolation"}
    assert [r for _, r in s.invalid] == ["id: duplicate id 'substrate-L1-a' in loop 1"] * 2
    assert s.invalid_origin == [("substrate", 1), ("substrate", 2)]


def test_same_claim_touching_ranges_on_other_files_stay_apart() -> None:
    s = run_loop(
        [
            ok(
                "architect",
                1,
                [
                    raw("architect", 1, "a", line_range=[1, 5], claim="same"),
                    raw(
                        "architect",
                        1,
                        "b",
                        line_range=[5, 9],
                        claim="same",
                        file_path="moneta/ecs.py",
                    ),
                    raw("architect", 1, "c", line_range=[5, 9], claim="Same "),
                ],
            )
        ]
    )
    assert ids(s) == ["architect-L1-a", "architect-L1-b"]
    assert dropped(s) == {"architect-L1-c": "duplicate-of:architect-L1-a"}


def test_synthesis_of_10000_raw_findings_in_one_loop() -> None:
    """Correctness at scale (its time is measured by bench/synth.py, not asserted here)."""
    bulk = bulk_results(10_000)
    config = make_config(max_findings_per_reviewer=0)  # 0: no per-reviewer cap
    s = run_loop(bulk.results, config=config)
    c = s.counts()
    assert bulk.raw == c["raw"] == 10_000
    assert c["invalid"] == bulk.invalid == 504
    assert c["dropped"]["role-isolation"] == bulk.role_isolation == 434
    assert {f.id for f in s.kept} == bulk.expected_kept()
    assert len(s.kept) == len(bulk.groups)
    assert {f.id: r for f, r in s.dropped if r != "role-isolation"} == bulk.expected_duplicates()
    assert c["kept"] + c["dropped"]["duplicate"] + c["dropped"]["role-isolation"] == c["valid"]
    assert c["valid"] + c["invalid"] == 10_000
    theme = make_config().theme_for(1)
    order = make_config().role_order
    keys = [rank_key(f, theme, order) for f in s.kept]
    assert keys == sorted(keys)
    assert len(s.markdown.splitlines()) > len(s.kept)
