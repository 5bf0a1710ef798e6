"""SARIF 2.1.0 export: validated against the official OASIS schema, content checked."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from synth.ledger import ClosureLedger
from synth.outputs import REPORT, SARIF, load_findings, write_final, write_loop
from synth.sarif import LEVELS, RANKS, dumps_sarif, render_sarif
from synth.schema import SEVERITIES, validate_finding
from tests.outputs.dom import parse
from tests.outputs.run_fixture import written_run
from tests.review.synth_fixtures import HASH, bulk_results, make_config, raw, run_loop

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "data" / "sarif-schema-2.1.0.json"


@cache
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def schema_errors(log: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(log)
    ]


@pytest.fixture
def sarif(tmp_path: Path) -> dict[str, Any]:
    written_run(tmp_path)
    return json.loads((tmp_path / SARIF).read_text(encoding="utf-8"))


def by_id(log: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["properties"]["findingId"]: r for r in log["runs"][0]["results"]}


def test_shipped_schema_is_the_official_sarif_2_1_0() -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema["id"].startswith("https://docs.oasis-open.org/sarif/sarif/v2.1.0/")
    assert schema["properties"]["version"]["enum"] == ["2.1.0"]
    assert len(schema["definitions"]) > 40


def test_written_sarif_validates_against_the_official_schema(sarif: dict[str, Any]) -> None:
    assert schema_errors(sarif) == []
    assert sarif["version"] == "2.1.0"
    assert len(sarif["runs"]) == 1


def test_schema_validation_catches_a_broken_log(sarif: dict[str, Any]) -> None:
    """The validator is live: each corruption is reported at its place."""
    bad = copy.deepcopy(sarif)
    bad["runs"][0]["results"][0]["level"] = "critical"
    bad["runs"][0]["results"][1]["locations"][0]["physicalLocation"]["region"]["startLine"] = 0
    del bad["runs"][0]["tool"]["driver"]["name"]
    errors = schema_errors(bad)
    assert any(e.startswith("runs/0/results/0/level:") for e in errors)
    assert any(
        "runs/0/results/1/locations/0/physicalLocation/region/startLine" in e for e in errors
    )
    assert any("'name' is a required property" in e for e in errors)


def test_one_result_per_kept_finding_with_rule_per_role_and_theme(
    sarif: dict[str, Any], tmp_path: Path
) -> None:
    run = sarif["runs"][0]
    kept = load_findings(tmp_path)
    assert len(kept) == 7
    assert [r["properties"]["findingId"] for r in run["results"]] == [f.id for f in kept]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == [
        "architect/spec-conformance",
        "persistence/concurrency-atomicity",
        "usd/concurrency-atomicity",
        "substrate/correctness-edges",
    ]
    assert len({r["id"] for r in rules}) == len(rules)
    assert rules[2]["name"] == "USD / Concurrency"
    assert "Role directive: usd" in rules[2]["fullDescription"]["text"]
    for result, f in zip(run["results"], kept, strict=True):
        assert result["ruleId"] == f"{f.role}/{f.theme}"
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]


def test_level_rank_and_location_from_the_finding(sarif: dict[str, Any], tmp_path: Path) -> None:
    results = by_id(sarif)
    for f in load_findings(tmp_path):
        r = results[f.id]
        assert r["level"] == LEVELS[f.severity]
        assert r["rank"] == RANKS[f.severity]
        loc = r["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"] == {"uri": f.file_path, "uriBaseId": "SRCROOT"}
        assert loc["region"] == {"startLine": f.line_range[0], "endLine": f.line_range[1]}
        assert r["properties"]["severity"] == f.severity
        assert r["properties"]["lineRange"] == list(f.line_range)
    assert results["architect-L1-a1"]["level"] == "error"
    assert results["usd-L2-u2"]["level"] == "warning"
    assert {LEVELS[s] for s in SEVERITIES} == {"error", "warning", "note"}
    assert [LEVELS[s] for s in SEVERITIES] == ["error", "error", "warning", "note", "note"]


def test_message_carries_claim_evidence_and_proposed_change(
    sarif: dict[str, Any], tmp_path: Path
) -> None:
    for f in load_findings(tmp_path):
        msg = by_id(sarif)[f.id]["message"]
        assert msg["text"].startswith(" ".join(f.claim.split()))
        assert f.evidence_quote.rstrip("\n") in msg["text"]
        assert f.evidence_quote.rstrip("\n") in msg["markdown"]
        assert f"Risk: {f.risk}" in msg["text"]


def test_escalation_property_and_constitution_hash(sarif: dict[str, Any]) -> None:
    results = by_id(sarif)
    escalated = {i for i, r in results.items() if r["properties"]["escalation"]}
    assert escalated == {"architect-L1-a1", "persistence-L2-p1"}
    assert results["architect-L1-a1"]["properties"]["conflictsWithLockedDecision"] is True
    assert "escalation" in results["architect-L1-a1"]["properties"]["tags"]
    run = sarif["runs"][0]
    assert run["properties"]["constitutionHash"] == HASH
    assert [lp["loop"] for lp in run["properties"]["loops"]] == [1, 2, 3]
    assert all(r["properties"]["constitutionHash"] == HASH for r in results.values())


def test_closed_finding_is_suppressed_naming_its_closers(sarif: dict[str, Any]) -> None:
    results = by_id(sarif)
    a2 = results["architect-L1-a2"]
    assert a2["properties"]["closedBy"] == ["substrate-L3-s1", "usd-L2-u1"]
    assert a2["suppressions"] == [
        {
            "kind": "external",
            "status": "accepted",
            "justification": "closed by a later finding: substrate-L3-s1, usd-L2-u1",
        }
    ]
    assert [i for i, r in results.items() if "suppressions" in r] == ["architect-L1-a2"]


def test_failed_reviewers_are_tool_execution_notifications(sarif: dict[str, Any]) -> None:
    inv = sarif["runs"][0]["invocations"][0]
    notes = inv["toolExecutionNotifications"]
    assert [(n["properties"]["loop"], n["properties"]["role"]) for n in notes] == [
        (1, "usd"),
        (2, "test"),
    ]
    assert "HTTP 529 overloaded" in notes[0]["message"]["text"]
    assert all(n["level"] == "error" for n in notes)


def test_sarif_is_byte_identical_across_runs(tmp_path: Path) -> None:
    a = (written_run(tmp_path / "a") / SARIF).read_bytes()
    b = (written_run(tmp_path / "b") / SARIF).read_bytes()
    assert a == b


@pytest.mark.parametrize(
    ("line_range", "region"),
    [
        ([0, 0], None),  # whole file: SARIF lines start at 1, so no region
        ([0, 4], {"startLine": 1, "endLine": 4}),
        ([1, 1], {"startLine": 1, "endLine": 1}),
        ([7, 9], {"startLine": 7, "endLine": 9}),
    ],
)
def test_region_edges_and_uri_encoding(line_range: list[int], region: dict | None) -> None:
    path = "docs/a design #1.md"
    item = raw("architect", 1, "x", file_path=path, line_range=line_range, proposed_change="")
    f = validate_finding(
        item,
        role="architect",
        loop=1,
        theme="spec-conformance",
        snapshot_paths={path},
        constitution_hash=HASH,
    )
    loops = [
        {"loop": 1, "theme": "spec-conformance", "title": "Spec", "counts": {"kept": 1, "raw": 1}}
    ]
    log = render_sarif(loops=loops, findings=[f], ledger=ClosureLedger(), constitution_hash=HASH)
    assert schema_errors(log) == []
    loc = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"]["uri"] == "docs/a%20design%20%231.md"
    assert loc.get("region") == region
    assert "Proposed change" not in log["runs"][0]["results"][0]["message"]["text"]
    assert json.loads(dumps_sarif(log)) == log


def test_empty_run_is_valid_sarif() -> None:
    log = render_sarif(loops=[], findings=[], ledger=ClosureLedger(), constitution_hash=HASH)
    assert schema_errors(log) == []
    assert log["runs"][0]["results"] == []
    assert log["runs"][0]["tool"]["driver"]["rules"] == []


def test_proposed_change_in_text_markdown_and_properties() -> None:
    item = raw("architect", 1, "x", proposed_change="fsync before rename\n```\nos.fsync(fd)\n```\n")
    f = validate_finding(
        item,
        role="architect",
        loop=1,
        theme="spec-conformance",
        snapshot_paths={"moneta/api.py"},
        constitution_hash=HASH,
    )
    log = render_sarif(loops=[], findings=[f], ledger=ClosureLedger(), constitution_hash=HASH)
    assert schema_errors(log) == []
    result = log["runs"][0]["results"][0]
    assert (
        "Proposed change:\nfsync before rename\n```\nos.fsync(fd)\n```" in result["message"]["text"]
    )
    # The markdown fence is longer than the change's own fence, so it stays one block.
    assert "**Proposed change:**\n\n````\nfsync before rename" in result["message"]["markdown"]
    assert result["properties"]["proposedChange"] == f.proposed_change


def test_sarif_and_report_of_a_bulk_loop(tmp_path: Path) -> None:
    """1,000 raw findings over every role and severity: valid SARIF, one result and
    one report row per kept finding."""
    bulk = bulk_results(1000)
    s = run_loop(bulk.results, config=make_config(max_findings_per_reviewer=0))
    write_loop(tmp_path, s)
    write_final(tmp_path, [s], constitution_hash=HASH, config=make_config())
    log = json.loads((tmp_path / SARIF).read_text(encoding="utf-8"))
    assert schema_errors(log) == []
    results = log["runs"][0]["results"]
    assert [r["properties"]["findingId"] for r in results] == [f.id for f in s.kept]
    assert {r["level"] for r in results} == {"error", "warning", "note"}
    assert len(log["runs"][0]["tool"]["driver"]["rules"]) == 8
    doc, errors = parse((tmp_path / REPORT).read_text(encoding="utf-8"))
    assert errors == []
    row_ids = [r.attrs["data-id"] for r in doc.find_all("tr", class_="finding")]
    assert sorted(row_ids) == sorted(f.id for f in s.kept)
    assert len(row_ids) == len(bulk.groups)
