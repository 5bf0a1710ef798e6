"""report.html in headless Chromium (Debian's `chromium`, driven by Playwright).

The page's own script does the filtering and sorting: the tests operate its
controls as a user would (select, type, tick, click) and read the DOM back. A
screenshot of a filtered view is kept in $TEST_ARTEFACTS_DIR (default:
<tmp>/moneta-test-artefacts). Every request the page makes is recorded: a
self-contained report makes none besides loading its own file.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from synth.outputs import REPORT, load_findings
from synth.schema import SEVERITIES
from tests.outputs.run_fixture import written_run

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# A closed network: without the background-networking flags Chromium keeps trying
# to reach its update and sync hosts.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IDS = {
    "a1": "architect-L1-a1",
    "a2": "architect-L1-a2",
    "u1": "usd-L2-u1",
    "u2": "usd-L2-u2",
    "p1": "persistence-L2-p1",
    "s1": "substrate-L3-s1",
    "s2": "substrate-L3-s2",
}


def artefacts_dir() -> Path:
    default = Path(tempfile.gettempdir()) / "moneta-test-artefacts"
    path = Path(os.environ.get("TEST_ARTEFACTS_DIR") or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return written_run(tmp_path_factory.mktemp("run")) / REPORT


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Report:
    """One open report page and the requests it made."""

    def __init__(self, page: Page, requests: list[str]) -> None:
        self.page = page
        self.requests = requests

    def visible(self) -> set[str]:
        return set(
            self.page.eval_on_selector_all(
                "#findings-body tr.finding:not([hidden])", "rs => rs.map(r => r.dataset.id)"
            )
        )

    def column(self, name: str) -> list[str]:
        return self.page.eval_on_selector_all(
            "#findings-body tr.finding", f"rs => rs.map(r => r.dataset.{name})"
        )

    def shown(self) -> str:
        return self.page.inner_text("#shown-count")


def open_report(browser: Browser, report: Path, fragment: str = "") -> Report:
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(report.as_uri() + fragment)
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    return Report(page, requests)


@pytest.fixture
def view(browser: Browser, report: Path) -> Iterator[Report]:
    r = open_report(browser, report)
    yield r
    r.page.close()


def test_dom_holds_every_finding_and_loads_nothing_else(view: Report, report: Path) -> None:
    kept = {f.id for f in load_findings(report.parent)}
    assert len(kept) == 7
    assert view.visible() == kept
    assert sorted(view.column("id")) == sorted(kept)
    assert view.shown() == "7"
    assert view.requests == [report.as_uri()]


@pytest.mark.parametrize("severity", SEVERITIES)
def test_filter_by_severity(view: Report, report: Path, severity: str) -> None:
    expected = {f.id for f in load_findings(report.parent) if f.severity == severity}
    view.page.select_option("#filter-severity", severity)
    assert view.visible() == expected
    assert view.shown() == str(len(expected))
    assert len(view.column("id")) == 7  # hidden, never removed
    assert view.page.evaluate("location.hash") == f"#severity={severity}"


def test_filters_combine_and_reset(view: Report) -> None:
    p = view.page
    p.select_option("#filter-role", "usd")
    assert view.visible() == {IDS["u1"], IDS["u2"]}
    p.select_option("#filter-severity", "High")
    assert view.visible() == {IDS["u1"]}
    p.select_option("#filter-role", "")
    p.select_option("#filter-severity", "")
    p.select_option("#filter-file", "moneta/ecs.py")
    assert view.visible() == {IDS["a2"], IDS["s2"]}
    p.select_option("#filter-file", "")
    p.select_option("#filter-loop", "3")
    assert view.visible() == {IDS["s1"], IDS["s2"]}
    p.select_option("#filter-loop", "")
    p.select_option("#filter-status", "closed")
    assert view.visible() == {IDS["a2"]}
    p.select_option("#filter-status", "open")
    assert len(view.visible()) == 6
    p.click("#filter-reset")
    assert len(view.visible()) == 7
    p.check("#filter-escalation")
    assert view.visible() == {IDS["a1"], IDS["p1"]}
    p.uncheck("#filter-escalation")
    p.fill("#filter-text", "QUOTA")
    assert view.visible() == {IDS["a2"], IDS["s1"]}
    p.fill("#filter-text", "")
    assert len(view.visible()) == 7


def test_sort_by_clicking_headers(view: Report) -> None:
    p = view.page
    assert view.column("escalation")[:2] == ["true", "true"]  # escalations lead by default
    p.click("th button[data-sort=file]")
    files = list(zip(view.column("file"), map(int, view.column("line")), strict=True))
    assert files == sorted(files)
    assert p.get_attribute("th button[data-sort=file]", "aria-sort") == "ascending"
    p.click("th button[data-sort=file]")
    assert [f for f, _ in files][::-1] == view.column("file")
    assert p.get_attribute("th button[data-sort=file]", "aria-sort") == "descending"
    p.click("th button[data-sort=severity]")
    ranks = list(map(int, view.column("rank")))
    assert ranks == sorted(ranks) and ranks[0] < ranks[-1]
    p.click("th button[data-sort=loop]")
    loops = list(map(int, view.column("loop")))
    assert loops == sorted(loops)


def test_a_shared_link_opens_filtered(browser: Browser, report: Path) -> None:
    r = open_report(browser, report, "#role=usd&severity=Medium")
    try:
        assert r.visible() == {IDS["u2"]}
        assert r.page.input_value("#filter-role") == "usd"
        assert r.page.input_value("#filter-severity") == "Medium"
    finally:
        r.page.close()


def test_screenshot_of_a_filtered_view_is_saved(view: Report) -> None:
    view.page.select_option("#filter-severity", "High")
    shot = artefacts_dir() / "report-severity-High.png"
    shot.unlink(missing_ok=True)
    view.page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width == 1280 and height >= 1000
    assert len(data) > 10_000  # a rendered page, not a blank image
