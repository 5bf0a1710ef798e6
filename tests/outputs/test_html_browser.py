"""report.html in headless Chromium (Debian's `chromium`): the page's own script filters
and sorts the findings; the DOM is read back after it ran, and a screenshot is kept.

Filters are set through the URL fragment, which the page reads on load exactly as
its controls would set them, so no driver is needed: `--dump-dom` prints the DOM
after the script has run. The screenshot goes to $TEST_ARTEFACTS_DIR (default:
<tmp>/moneta-test-artefacts).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from synth.outputs import REPORT, load_findings
from tests.outputs.dom import Node, parse
from tests.outputs.run_fixture import written_run

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a closed network: without the background-networking ones Chromium keeps
# trying to reach its update and sync hosts.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def artefacts_dir() -> Path:
    path = Path(
        os.environ.get("TEST_ARTEFACTS_DIR")
        or Path(tempfile.gettempdir()) / "moneta-test-artefacts"
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


def chromium(url: str, profile: Path, *extra: str) -> str:
    proc = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return written_run(tmp_path_factory.mktemp("run")) / REPORT


def rendered(report: Path, fragment: str, profile: Path) -> Node:
    dom = chromium(report.as_uri() + fragment, profile, "--dump-dom")
    doc, _ = parse(dom)  # Chromium's serialisation, not ours: tolerate its formatting
    [body] = doc.find_all("body")
    assert body.attrs.get("data-ready") == "true", "the page script did not run"
    return doc


def finding_rows(doc: Node) -> list[Node]:
    return doc.by_id("findings-body").find_all("tr", class_="finding")


def visible(doc: Node) -> list[str]:
    return [r.attrs["data-id"] for r in finding_rows(doc) if "hidden" not in r.attrs]


def test_browser_shows_every_finding(report: Path, tmp_path: Path) -> None:
    doc = rendered(report, "", tmp_path / "profile")
    kept = load_findings(report.parent)
    assert sorted(visible(doc)) == sorted(f.id for f in kept)
    assert len(finding_rows(doc)) == 7
    assert doc.by_id("shown-count").text == "7"


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [
        ("#severity=High", {"architect-L1-a2", "usd-L2-u1"}),
        ("#severity=Critical", {"architect-L1-a1", "persistence-L2-p1"}),
        ("#severity=Low", set()),
        ("#role=usd&loop=2", {"usd-L2-u1", "usd-L2-u2"}),
        ("#file=moneta%2Fecs.py", {"architect-L1-a2", "substrate-L3-s2"}),
        ("#status=closed", {"architect-L1-a2"}),
        ("#escalation=1", {"architect-L1-a1", "persistence-L2-p1"}),
        ("#severity=Medium&loop=3", {"substrate-L3-s1", "substrate-L3-s2"}),
    ],
)
def test_browser_filters(report: Path, tmp_path: Path, fragment: str, expected: set[str]) -> None:
    doc = rendered(report, fragment, tmp_path / "profile")
    assert set(visible(doc)) == expected
    assert doc.by_id("shown-count").text == str(len(expected))
    assert len(finding_rows(doc)) == 7  # filtered rows are hidden, never removed


def test_browser_sorts(report: Path, tmp_path: Path) -> None:
    doc = rendered(report, "#sort=file", tmp_path / "profile")
    keys = [(r.attrs["data-file"], int(r.attrs["data-line"])) for r in finding_rows(doc)]
    assert keys == sorted(keys)
    doc = rendered(report, "#sort=severity&dir=desc", tmp_path / "profile")
    ranks = [int(r.attrs["data-rank"]) for r in finding_rows(doc)]
    assert ranks == sorted(ranks, reverse=True) and ranks[0] > ranks[-1]
    [button] = [b for b in doc.find_all("button") if b.attrs.get("data-sort") == "severity"]
    assert button.attrs["aria-sort"] == "descending"


def test_browser_screenshot_saved(report: Path, tmp_path: Path) -> None:
    shot = artefacts_dir() / "report-severity-High.png"
    shot.unlink(missing_ok=True)
    chromium(
        report.as_uri() + "#severity=High",
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1280,1600",
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 1600)
    assert len(data) > 10_000  # a rendered page, not a blank image
