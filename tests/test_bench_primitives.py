"""The harness's compute primitive on several threads (benchmarks/_primitives.py), on real
gzip and zstd data. No speed is asserted: the threads really run the work (an error in
any of them is raised), and the time covers all of them."""

from __future__ import annotations

import gzip
import os
import threading
from typing import Any

import pytest
import zstandard

from benchmarks import _primitives, _report
from stages import UsageError

# Half random, half repetitive: the inflater has real work and the sizes stay small.
_PAYLOAD = os.urandom(1 << 20) + b"imagec-pipe " * (1 << 17)


@pytest.mark.parametrize(
    ("kind", "compressed"),
    [
        ("isal", gzip.compress(_PAYLOAD, 6)),
        ("zlib-ng", gzip.compress(_PAYLOAD, 6)),
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


def test_every_gzip_inflater_is_timed_on_the_same_data(monkeypatch: pytest.MonkeyPatch) -> None:
    turns: list[tuple[str, bool]] = []
    time_inflate = _primitives._time_inflate

    def counted(chunks: list[memoryview], kind: str, hash_out: bool) -> tuple[float, float]:
        turns.append((kind, hash_out))
        return time_inflate(chunks, kind, hash_out)

    monkeypatch.setattr(_primitives, "_time_inflate", counted)
    chunks = _primitives._chunks(gzip.compress(_PAYLOAD, 6))
    best, sha_tar = _primitives._time_inflaters(chunks, ("isal", "zlib-ng", "zlib"))
    assert set(best) == {"isal", "zlib-ng", "zlib"}
    assert all(seconds > 0 for seconds in best.values()) and sha_tar > 0
    # they take turns, and only the first (auto's choice) also hashes the tar
    assert turns == [("isal", True), ("zlib-ng", False), ("zlib", False)] * 3
    with pytest.raises(UsageError, match="'libdeflate' is not available"):
        _primitives._time_inflaters(chunks, ("libdeflate",))


def _prims(fastest: str) -> dict[str, Any]:
    seconds = {"isal": 1.0, "zlib-ng": 1.1, "zlib": 2.0}
    seconds[fastest] = 0.5
    layer = {"uncompressed_size": 100_000_000}
    return {"inflater": "isal", "fastest_inflater": fastest, "inflater_s": seconds,
            "layers": [layer]}  # fmt: skip


def test_the_report_says_whether_autos_inflater_was_the_fastest() -> None:
    held = "\n".join(_report._inflaters_section({"app": _prims("isal"), "big": _prims("isal")}))
    assert "`auto` uses isal, the fastest on every image here." in held
    assert "| app | 200 | 91 | 50 | isal |" in held
    lost = "\n".join(_report._inflaters_section({"app": _prims("isal"), "big": _prims("zlib-ng")}))
    assert "`auto` uses isal, which was not the fastest on: big." in lost
    # zstd images have no gzip inflaters to compare
    assert _report._inflaters_section({"app-zstd": {"inflater": "zstd", "inflater_s": {}}}) == []
