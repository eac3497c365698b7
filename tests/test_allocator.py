"""pipeline/_allocator.py: the mallopt call takes effect where glibc is the C library; the
CLI, not the import, freezes the start-up objects."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's",
)
def test_tune_allocator_takes_effect_under_glibc() -> None:
    # In a child process: the setting is process-wide, and import alone must not apply it.
    code = (
        "import pipeline, pipeline._allocator as a; "
        "print(pipeline.tune_allocator(), a.MMAP_THRESHOLD_BYTES <= 32 * 1024 * 1024)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["True", "True"]


def test_the_cli_freezes_what_start_up_made_and_the_import_does_not(tmp_path: Path) -> None:
    # In a child process, as above: the freeze is process-wide.
    code = (
        "import gc, sys, pipeline, pipeline._cli as cli; "
        "before = gc.get_freeze_count(); "
        "code = cli.main(['images', '--store', sys.argv[1]]); "
        "print(before, gc.get_freeze_count() > 10000, code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split()[-3:] == ["0", "True", "0"]
