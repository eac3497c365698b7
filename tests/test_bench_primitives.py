"""The harness's compute primitive on several threads (benchmarks/_primitives.py), on real
gzip and zstd data. No speed is asserted: the threads really run the work (an error in
any of them is raised), and the time covers all of them."""

from __future__ import annotations

import gzip
import os
import threading

import pytest
import zstandard

from benchmarks import _primitives

# Half random, half repetitive: the inflater has real work and the sizes stay small.
_PAYLOAD = os.urandom(1 << 20) + b"imagec-pipe " * (1 << 17)


@pytest.mark.parametrize(
    ("kind", "compressed"),
    [
        ("isal", gzip.compress(_PAYLOAD, 6)),
        ("zlib", gzip.compress(_PAYLOAD, 6)),
        ("zstd", zstandard.ZstdCompressor().compress(_PAYLOAD)),
    ],
)
def test_each_thread_does_all_the_work(
    kind: str, compressed: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[str] = []
    compute = _primitives._compute

    def counted(chunks: list[memoryview], kind: str) -> None:
        compute(chunks, kind)
        runs.append(threading.current_thread().name)

    monkeypatch.setattr(_primitives, "_compute", counted)
    chunks = _primitives._chunks(compressed)
    assert _primitives._time_compute(chunks, kind, 1) > 0
    assert _primitives._time_compute(chunks, kind, 3) > 0
    assert len(runs) == 4
    assert len(set(runs[1:])) == 3  # three threads, one run each


def test_a_threads_error_is_raised() -> None:
    chunks = _primitives._chunks(b"\x1f\x8b\x08\x00" + b"not deflate data" * 100)
    with pytest.raises(Exception, match=r"(?i)invalid deflate"):
        _primitives._time_compute(chunks, "isal", 2)
