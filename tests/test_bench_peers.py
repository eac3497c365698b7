"""What the harness needs before it starts (benchmarks/_peers.py): a missing registry ends
the run with what to install, before any image is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import _peers

pytestmark = pytest.mark.registry


def test_a_registry_that_is_not_there_ends_the_run_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "docker-registry"
    monkeypatch.setenv("IMAGEC_REGISTRY_BIN", str(missing))
    lines: list[str] = []
    with pytest.raises(SystemExit, match=f"IMAGEC_REGISTRY_BIN={missing} is not an executable"):
        _peers.ensure_installed(["ours"], lines.append, curl=False)
    assert lines == []  # nothing was installed for a binary the user chose


def test_ours_needs_nothing_but_the_registry() -> None:
    lines: list[str] = []
    assert _peers.ensure_installed(["ours"], lines.append, curl=False) == ["ours"]
    assert lines == []
