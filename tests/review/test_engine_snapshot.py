"""The repository snapshot: deterministic, never secret or binary, refused over budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.plan import prepare_run
from orchestrator.snapshot import SnapshotTooLarge, build_snapshot
from tests.review.engine_support import fast_config, make_repo


def test_snapshot_is_deterministic_sorted_and_numbered(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "moneta/crlf.py").write_bytes(b"a = 1\r\nb = 2  \r\n")
    first = prepare_run(repo, fast_config(), Path("docs/review")).snapshot
    # Touch every file (new mtimes), create files in another order: same bytes.
    for f in sorted(repo.rglob("*"), reverse=True):
        if f.is_file():
            f.write_bytes(f.read_bytes())
    second = prepare_run(repo, fast_config(), Path("docs/review")).snapshot
    assert first.text == second.text and first.sha == second.sha
    paths = [f.path for f in first.files]
    assert paths == sorted(paths)
    assert '<file path="moneta/crlf.py" lines="2">\n    1 | a = 1\n    2 | b = 2  \n</file>' in (
        first.text
    )
    assert "\r" not in first.text


def test_snapshot_over_budget_is_refused_not_truncated(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "moneta/huge.py").write_text("x = 1\n" * 5000)
    with pytest.raises(SnapshotTooLarge) as info:
        build_snapshot(repo, include=("**",), exclude=(), max_bytes=20_000)
    message = str(info.value)
    assert "over the budget of 20,000 bytes" in message
    assert "moneta/huge.py" in message  # names the largest files
    assert "never truncated" in message
    assert info.value.size > 20_000


def test_secrets_and_binaries_are_skipped_even_when_included(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "config").mkdir()
    (repo / "config/credentials.json").write_text('{"token": "s3cret"}')
    (repo / "config/id_ed25519").write_text("PRIVATE")
    (repo / "config/latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    snap = build_snapshot(repo, include=("**",), exclude=(), max_bytes=1_000_000)
    paths = snap.paths
    for secret in (".env", "keys/deploy.pem", "config/credentials.json", "config/id_ed25519"):
        assert secret not in paths
        assert (secret, "secret") in snap.skipped
    assert "moneta/blob.bin" not in paths and "config/latin1.txt" not in paths
    assert "s3cret" not in snap.text and "sk-secret" not in snap.text
    assert "PRIVATE" not in snap.text
    assert "moneta/api.py" in paths
