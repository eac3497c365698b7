"""pipeline/_allocator.py: the mallopt call takes effect where glibc is the C library."""

from __future__ import annotations

import platform
import subprocess
import sys

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
