"""The e2e base image takes its Debian mirror from the machine's own apt sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.baseimage import apt_mirror


def test_deb822_sources_give_the_suites_mirror(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_E2E_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/other.sources").write_text(
        "Types: deb\nURIs: http://mirror.test/node\nSuites: nodistro\nComponents: main\n")
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.test/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.test/security\nSuites: bookworm-security\n"
        "Components: main\n")
    assert apt_mirror("bookworm", tmp_path) == "http://mirror.test/debian"


def test_one_line_sources_and_the_override(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_E2E_MIRROR", raising=False)
    (tmp_path / "sources.list").write_text(
        "# deb http://old.test/debian bookworm main\n"
        "deb [arch=amd64] http://list.test/debian bookworm main contrib\n")
    assert apt_mirror("bookworm", tmp_path) == "http://list.test/debian"
    monkeypatch.setenv("KILN_E2E_MIRROR", "http://override.test/debian")
    assert apt_mirror("bookworm", tmp_path) == "http://override.test/debian"


def test_no_source_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_E2E_MIRROR", raising=False)
    with pytest.raises(RuntimeError, match="KILN_E2E_MIRROR"):
        apt_mirror("bookworm", tmp_path)
