"""Where ours spends its time: one pull under py-spy, summarised per thread and function.

Opt-in (``--scenarios profile``) and only when ``py-spy`` is installed (``pip install
py-spy``). The registry's files are warm (one unprofiled pull first), so the profile shows
our CPU, not the disk. py-spy samples every thread at ``rate`` Hz and slows the pull down
(often 1.5-2x): read the shares, not the seconds.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["available", "profile_pull", "summarise"]

_IDLE = (
    "WorkerThread._work",
    "EpollIOManager.get_events",
    "Condition.wait",
    "Lock.acquire",
    "_send_message_to_trio",  # a thread blocked until the event loop answers it
)


def available() -> str | None:
    """py-spy on PATH or next to this Python (a venv's bin/ is often not on PATH)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def summarise(raw: Path, rate: int, top: int = 15) -> dict[str, Any]:
    """Busy seconds (samples ÷ rate) per thread, per function (leaf frame) and per stage."""
    threads: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    stages: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        if any(frames[-1].startswith(x) for x in _IDLE):
            idle += n
            continue
        name = frames[0].split(": ", 1)[-1]
        threads["main (event loop)" if "MainThread" in name else name] += n
        leaves[frames[-1]] += n
        for frame in frames:
            if frame.startswith(
                ("blob_stream ", "inflate_stage ", "_inflate_batch ", "_drain ", "Gunzip.")
            ):
                stages[frame.split(" (")[0]] += n
    return {
        "rate_hz": rate,
        "busy_s": (total - idle) / rate,
        "threads": [(k, v / rate) for k, v in threads.most_common(top)],
        "functions": [(k, v / rate) for k, v in leaves.most_common(top)],
        "stages": [(k, v / rate) for k, v in stages.most_common(top)],
    }


def profile_pull(
    argv: Sequence[str], out: Path, raw: Path, *, cwd: Path, env: Mapping[str, str], rate: int = 200
) -> dict[str, Any]:
    """Pull once unprofiled (warms the registry's files), then once under py-spy."""
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(list(argv), cwd=cwd, env=dict(env), capture_output=True, timeout=900)
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    spy = available() or "py-spy"
    subprocess.run(
        [spy, "record", "-r", str(rate), "--threads", "-f", "raw", "-o", str(raw), "--", *argv],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        timeout=900,
    )
    wall = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    result = summarise(raw, rate)
    result["wall_s_profiled"] = wall
    return result
