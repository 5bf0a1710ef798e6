"""The finding schema's strict validation, rule by rule at its boundaries."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from synth.schema import (
    FINDING_ID_RE,
    REQUIRED_KEYS,
    SCHEMA_DESCRIPTION,
    SEVERITIES,
    Finding,
    InvalidFinding,
    validate_finding,
)
from tests.review.synth_fixtures import HASH, SNAPSHOT, raw


def check(item: object, role: str = "architect", loop: int = 1) -> Finding:
    theme = "spec-conformance" if loop == 1 else "concurrency-atomicity"
    return validate_finding(
        item,
        role=role,
        loop=loop,
        theme=theme,
        snapshot_paths=SNAPSHOT,
        constitution_hash=HASH,
    )


def reason_of(item: object, **kw: Any) -> str:
    with pytest.raises(InvalidFinding) as exc:
        check(item, **kw)
    assert str(exc.value) == exc.value.reason
    return exc.value.reason


def test_valid_finding_is_typed_stamped_and_round_trips() -> None:
    f = check(raw(references=["DESIGN §1.9"], proposed_change="fsync"))
    assert f.id == "architect-L1-a"
    assert f.line_range == (10, 12)
    assert f.references == ("DESIGN §1.9",)
    assert f.constitution_hash == HASH
    d = f.to_dict()
    assert list(d) == [*REQUIRED_KEYS, "constitution_hash"]
    assert Finding.from_dict(json.loads(json.dumps(d))) == f


def test_extra_keys_dropped_and_model_hash_replaced() -> None:
    f = check(raw(extra="x", constitution_hash="ffffffffffffffff", confidence=0.9))
    d = f.to_dict()
    assert "extra" not in d and "confidence" not in d
    assert d["constitution_hash"] == HASH


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_each_missing_key_is_named(key: str) -> None:
    item = raw()
    del item[key]
    assert reason_of(item) == f"missing required key(s): {key}"


def test_all_missing_keys_listed_in_schema_order() -> None:
    assert reason_of({}) == "missing required key(s): " + ", ".join(REQUIRED_KEYS)


@pytest.mark.parametrize("item", [[], "finding", None, 3, ["id"]])
def test_non_dict_item_is_invalid(item: object) -> None:
    assert reason_of(item).startswith("finding: must be a JSON object, got ")


@pytest.mark.parametrize(
    ("fid", "fragment"),
    [
        ("Architect-L1-a", "does not match"),
        ("architect-L1-", "does not match"),
        ("architect-L1-A_b", "does not match"),
        ("architect-1-a", "does not match"),
        (7, "does not match"),
        ("substrate-L1-a", "must start with 'architect-L1-'"),
        ("architect-L2-a", "must start with 'architect-L1-'"),
        ("architect-L11-a", "must start with 'architect-L1-'"),
    ],
)
def test_id_regex_role_prefix_and_loop(fid: object, fragment: str) -> None:
    reason = reason_of(raw(id=fid))
    assert reason.startswith("id: ")
    assert fragment in reason


def test_id_regex_is_the_documented_one() -> None:
    assert re.match(FINDING_ID_RE, "architect-L12-wal-race-2")
    assert check(raw("architect", 1, "wal-race-2")).id == "architect-L1-wal-race-2"


@pytest.mark.parametrize("loop", [True, False, "1", 1.0, None])
def test_loop_must_be_a_real_int(loop: object) -> None:
    assert reason_of(raw(loop=loop)).startswith("loop: must be an int, got ")


def test_loop_must_equal_current_loop() -> None:
    assert reason_of(raw(loop=2)) == "loop: must equal the current loop 1, got 2"


def test_role_and_theme_must_be_the_reviewers() -> None:
    assert reason_of(raw(role="substrate")).startswith("role: must be 'architect'")
    assert reason_of(raw(theme="Spec conformance")).startswith("theme: must be 'spec-conformance'")


@pytest.mark.parametrize(
    ("line_range", "reason"),
    [
        ([True, 5], "line_range: start must be an int, got bool"),
        ([1, False], "line_range: end must be an int, got bool"),
        ([1.0, 2], "line_range: start must be an int, got float"),
        (["1", 2], "line_range: start must be an int, got str"),
        ([-1, 3], "line_range: start must be non-negative, got -1"),
        ([5, 4], "line_range: start must be <= end, got [5, 4]"),
    ],
)
def test_line_range_types_and_order(line_range: object, reason: str) -> None:
    assert reason_of(raw(line_range=line_range)) == reason


@pytest.mark.parametrize("line_range", [[1], [1, 2, 3], "1-2", None, {"start": 1}])
def test_line_range_shape(line_range: object) -> None:
    assert reason_of(raw(line_range=line_range)).startswith(
        "line_range: must be a list of exactly two ints"
    )


@pytest.mark.parametrize("line_range", [[0, 0], [5, 5], [0, 10_000]])
def test_line_range_boundaries_accepted(line_range: list[int]) -> None:
    assert check(raw(line_range=line_range)).line_range == tuple(line_range)


@pytest.mark.parametrize("severity", ["critical", "Blocker", "", None, 1])
def test_severity_must_be_one_of_five(severity: object) -> None:
    assert reason_of(raw(severity=severity)).startswith(
        "severity: must be one of Critical, High, Medium, Low, Note"
    )


@pytest.mark.parametrize("severity", SEVERITIES)
def test_every_severity_accepted(severity: str) -> None:
    assert check(raw(severity=severity)).severity == severity


@pytest.mark.parametrize("key", ["claim", "evidence_quote", "risk"])
@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("", "must be a non-empty string"),
        ("  \n\t", "must be a non-empty string"),
        (None, "must be a string, got null"),
        (5, "must be a string, got int"),
    ],
)
def test_required_texts_non_empty_strings(key: str, value: object, rule: str) -> None:
    assert reason_of(raw(**{key: value})) == f"{key}: {rule}"


def test_proposed_change_may_be_empty_but_must_be_a_string() -> None:
    assert check(raw(proposed_change="")).proposed_change == ""
    assert reason_of(raw(proposed_change=None)) == ("proposed_change: must be a string, got null")


@pytest.mark.parametrize("key", ["conflicts_with_locked_decision", "requires_section9_escalation"])
@pytest.mark.parametrize("value", [0, 1, "true", None])
def test_flags_must_be_real_booleans(key: str, value: object) -> None:
    reason = reason_of(raw(**{key: value}))
    assert reason.startswith(f"{key}: must be a boolean (true/false), got ")


def test_critical_locked_conflict_requires_escalation() -> None:
    reason = reason_of(raw(severity="Critical", conflicts_with_locked_decision=True))
    assert reason.startswith("requires_section9_escalation: must be true for a Critical")
    f = check(
        raw(
            severity="Critical",
            conflicts_with_locked_decision=True,
            requires_section9_escalation=True,
        )
    )
    assert f.requires_section9_escalation is True
    # Only Critical carries the rule: High + locked conflict without escalation is valid.
    assert check(raw(severity="High", conflicts_with_locked_decision=True)).severity == "High"
    assert check(raw(severity="Critical")).conflicts_with_locked_decision is False


@pytest.mark.parametrize(
    ("refs", "reason"),
    [
        ("DESIGN §1", "references: must be a list of strings, got str"),
        (None, "references: must be a list of strings, got null"),
        (["ok", 2], "references[1]: must be a string, got int"),
    ],
)
def test_references_list_of_strings(refs: object, reason: str) -> None:
    assert reason_of(raw(references=refs)) == reason


@pytest.mark.parametrize(
    ("closes", "fragment"),
    [
        ("not an id", "does not match"),
        (5, "must be a finding id or null, got int"),
        ("architect-L2-x", "must name a finding of an earlier loop than 2"),
        ("usd-L2-x", "must name a finding of an earlier loop than 2"),
        ("usd-L3-x", "must name a finding of an earlier loop than 2"),
        ("architect-L2-a", "cannot close itself"),
    ],
)
def test_closes_rules(closes: object, fragment: str) -> None:
    reason = reason_of(raw("architect", 2, "a", closes=closes), loop=2)
    assert reason.startswith("closes: ")
    assert fragment in reason


def test_closes_earlier_loop_accepted() -> None:
    assert check(raw("architect", 2, "a", closes="usd-L1-x"), loop=2).closes == "usd-L1-x"
    assert check(raw("architect", 2, "a", closes=None), loop=2).closes is None


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/work/main/moneta/api.py", "must be repo-relative, not absolute"),
        ("/moneta/api.py", "must be repo-relative, not absolute"),
        ("C:/moneta/api.py", "must be repo-relative, not absolute"),
        ("../moneta/api.py", "must not contain '..'"),
        ("moneta/../README.md", "must not contain '..'"),
        ("moneta/..", "must not contain '..'"),
        ("moneta\\api.py", "no backslashes"),
        ("./moneta/api.py", "must be normalised"),
        ("moneta//api.py", "must be normalised"),
        ("moneta/api.py/", "must be normalised"),
        ("moneta/missing.py", "not in the reviewed snapshot"),
        ("MONETA/api.py", "not in the reviewed snapshot"),
        ("", "must be a non-empty string"),
        ("   ", "must be a non-empty string"),
        (None, "must be a string, got null"),
    ],
)
def test_file_path_rules(path: object, fragment: str) -> None:
    reason = reason_of(raw(file_path=path))
    assert reason.startswith("file_path: ")
    assert fragment in reason


def test_file_path_in_snapshot_accepted() -> None:
    assert check(raw(file_path="moneta/sub/deep.py")).file_path == "moneta/sub/deep.py"


def test_schema_description_names_every_key_and_severity() -> None:
    for key in REQUIRED_KEYS:
        assert f"`{key}`" in SCHEMA_DESCRIPTION
    for sev in SEVERITIES:
        assert sev in SCHEMA_DESCRIPTION
    assert FINDING_ID_RE in SCHEMA_DESCRIPTION
    assert "```json" in SCHEMA_DESCRIPTION
