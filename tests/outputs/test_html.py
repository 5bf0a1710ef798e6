"""report.html, checked structurally with html.parser (the browser test is test_html_browser)."""

from __future__ import annotations

from pathlib import Path

import pytest

from synth.html import FILTERS, render_html
from synth.ledger import ClosureLedger
from synth.outputs import REPORT, ledger_from_disk, load_findings
from synth.schema import SEVERITIES, validate_finding
from tests.outputs.dom import Node, parse
from tests.outputs.run_fixture import written_run
from tests.review.synth_fixtures import HASH, raw


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return written_run(tmp_path / "run")


@pytest.fixture
def doc(run_dir: Path) -> Node:
    root, errors = parse((run_dir / REPORT).read_text(encoding="utf-8"))
    assert errors == []
    return root


def rows(doc: Node) -> list[Node]:
    return doc.by_id("findings-body").find_all("tr", class_="finding")


def test_every_kept_finding_is_one_row_with_its_data(doc: Node, run_dir: Path) -> None:
    kept = load_findings(run_dir)
    assert len(kept) == 7
    by_id = {r.attrs["data-id"]: r for r in rows(doc)}
    assert len(by_id) == len(rows(doc)) == 7
    assert set(by_id) == {f.id for f in kept}
    closed = set(ledger_from_disk(run_dir).closed_targets())
    for f in kept:
        r = by_id[f.id]
        assert r.attrs["id"] == f"finding-{f.id}"
        assert r.attrs["data-severity"] == f.severity
        assert r.attrs["data-loop"] == str(f.loop)
        assert r.attrs["data-role"] == f.role
        assert r.attrs["data-file"] == f.file_path
        assert r.attrs["data-status"] == ("closed" if f.id in closed else "open")
        assert r.attrs["data-escalation"] == str(f.requires_section9_escalation).lower()
        [pre] = r.find_all("pre", class_="evidence")
        [code] = pre.find_all("code")
        assert code.text == f.evidence_quote
        assert " ".join(f.claim.split()) in r.text
    assert by_id["architect-L1-a2"].attrs["data-status"] == "closed"
    assert "closed by substrate-L3-s1, usd-L2-u1" in by_id["architect-L1-a2"].text


def test_filter_and_sort_controls_present(doc: Node, run_dir: Path) -> None:
    kept = load_findings(run_dir)
    options = {}
    for name in FILTERS:
        select = doc.by_id(f"filter-{name}")
        assert select.tag == "select"
        options[name] = [o.attrs["value"] for o in select.find_all("option")]
    assert options["severity"] == ["", *SEVERITIES]
    # Roles in config role order; files sorted; loops numeric.
    assert options["role"] == ["", "architect", "substrate", "persistence", "usd"]
    assert options["file"] == ["", *sorted({f.file_path for f in kept})]
    assert options["loop"] == ["", "1", "2", "3"]
    assert options["status"] == ["", "open", "closed"]
    assert doc.by_id("filter-text").attrs["type"] == "search"
    assert doc.by_id("filter-escalation").attrs["type"] == "checkbox"
    sorts = [b.attrs["data-sort"] for b in doc.by_id("findings").find_all("button")]
    assert sorts == ["id", "severity", "loop", "role", "file", "status"]
    assert doc.by_id("shown-count").text == doc.by_id("total-count").text == "7"


def test_no_network_assets(doc: Node, run_dir: Path) -> None:
    text = (run_dir / REPORT).read_text(encoding="utf-8")
    assert doc.find_all("link") == []
    assert doc.find_all("iframe") == [] and doc.find_all("img") == []
    for node in doc.iter():
        assert "src" not in node.attrs, node.tag
        href = node.attrs.get("href")
        assert href is None or href.startswith("#"), href
        for value in node.attrs.values():
            assert not (value or "").lower().startswith(("http:", "https:", "//", "data:", "ftp:"))
    [script] = doc.find_all("script")
    assert script.attrs == {}
    js = script.text
    for needle in ("fetch(", "XMLHttpRequest", "import(", "WebSocket", "http:", "https:"):
        assert needle not in js
    [style] = doc.find_all("style")
    assert "url(" not in style.text and "@import" not in style.text
    [csp] = doc.find_all("meta", http_equiv="Content-Security-Policy")
    assert csp.attrs["content"].startswith("default-src 'none';")
    assert "http" not in text.replace("http-equiv", "")


def test_escalation_candidates_come_first(doc: Node) -> None:
    main = doc.find_all("main")[0]
    sections = [c.attrs.get("id") for c in main.children if isinstance(c, Node)]
    assert sections == ["summary", "escalations", "findings-section", "ledger", "failures"]
    items = doc.by_id("escalations").find_all("li")
    assert [li.attrs["data-id"] for li in items] == ["architect-L1-a1", "persistence-L2-p1"]
    assert [a.attrs["href"] for li in items for a in li.find_all("a")] == [
        "#finding-architect-L1-a1",
        "#finding-persistence-L2-p1",
    ]
    assert "conflicts with a locked decision" in items[0].text
    order = [r.attrs["data-escalation"] for r in rows(doc)]
    assert order == sorted(order, key=lambda e: e != "true")  # escalations lead the table
    assert [r.attrs["data-order"] for r in rows(doc)] == [str(i) for i in range(7)]


def test_summary_counts(doc: Node) -> None:
    counts = {
        c.attrs["data-count"]: c.find_all("b")[0].text
        for c in doc.by_id("summary").find_all("div", class_="card")
    }
    assert counts == {
        "kept": "7",
        "open": "6",
        "closed": "1",
        "escalations": "2",
        "raw": "10",
        "invalid": "1",
        "dropped": "2",
        "severity-Critical": "2",
        "severity-High": "2",
        "severity-Medium": "3",
        "severity-Low": "0",
        "severity-Note": "0",
    }
    loop_rows = doc.by_id("loops").find_all("tr", data_loop="1")
    assert [td.text for td in loop_rows[0].find_all("td")][2:8] == ["5", "1", "1", "1", "0", "2"]


def test_closure_ledger_and_failures(doc: Node, run_dir: Path) -> None:
    ledger = ledger_from_disk(run_dir)
    got = [
        (r.attrs["data-closer"], r.attrs["data-closed"], r.attrs["data-status"])
        for r in doc.by_id("closure-ledger").find_all("tr", class_="closure")
    ]
    assert got == [
        (e.closer, e.closed, e.status)
        for e in sorted(ledger.entries, key=lambda e: (e.loop, e.closer, e.closed))
    ]
    assert len(got) == 3
    failed = [
        [td.text for td in tr.find_all("td")]
        for tr in doc.by_id("failed-reviewers").find_all("tr")[1:]
    ]
    assert failed == [
        ["1", "usd", "FAILED", "3", "HTTP 529 overloaded"],
        ["2", "test", "NO FINDINGS EXTRACTED", "1", "no ```json array found"],
    ]


def test_hostile_text_is_escaped_and_urls_stay_text() -> None:
    item = raw(
        "architect",
        1,
        "x",
        claim='<script>alert("claim")</script> & "quotes"',
        evidence_quote="if a < b and c > d:\n    </pre></td></tr><img src=x>",
        proposed_change="use `<=`",
        references=["https://example.org/spec#1", "javascript:alert(1)"],
    )
    f = validate_finding(
        item,
        role="architect",
        loop=1,
        theme="spec-conformance",
        snapshot_paths={"moneta/api.py"},
        constitution_hash=HASH,
    )
    page = render_html(loops=[], findings=[f], ledger=ClosureLedger(), constitution_hash=HASH)
    doc, errors = parse(page)
    assert errors == []
    assert len(doc.find_all("script")) == 1 and doc.find_all("img") == []
    [row] = rows(doc)
    assert row.find_all("pre", class_="evidence")[0].text == f.evidence_quote
    assert row.find_all("pre", class_="proposed-change")[0].text == "use `<=`"
    refs = [li.text for li in row.find_all("li", class_="reference")]
    assert refs == ["https://example.org/spec#1", "javascript:alert(1)"]
    assert all(a.attrs.get("href", "#").startswith("#") for a in doc.find_all("a"))
    assert '<script>alert("claim")</script> & "quotes"' in row.text


def test_report_is_byte_identical_across_runs(tmp_path: Path) -> None:
    a = (written_run(tmp_path / "a") / REPORT).read_bytes()
    b = (written_run(tmp_path / "b") / REPORT).read_bytes()
    assert a == b


def test_empty_run_renders() -> None:
    page = render_html(loops=[], findings=[], ledger=ClosureLedger(), constitution_hash=HASH)
    doc, errors = parse(page)
    assert errors == []
    assert rows(doc) == []
    assert "None." in doc.by_id("escalations").text
    assert "No closures recorded." in doc.by_id("ledger").text
