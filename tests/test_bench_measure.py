"""The harness's measurement of one run (benchmarks/_measure.py), on a real process.

No speed is asserted: only that the numbers agree with each other and with what the
process was made to do (burn CPU on one core).
"""

from __future__ import annotations

import sys

from benchmarks import _measure

_BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"


def _cpus_in_proc_stat() -> int:
    with open("/proc/stat") as fh:
        return sum(1 for line in fh if line.startswith("cpu") and line[3].isdigit())


def test_a_run_records_its_cpu_and_the_whole_machines_busy_and_idle_time() -> None:
    result = _measure.run_measured("burn", [sys.executable, "-c", _BURN], timeout=60)
    assert result.ok, result.stderr_tail
    assert result.cpu_s >= 0.25
    # The machine was at least as busy as the one process that burned CPU in the run
    # (less a tick of rounding on each side).
    assert result.machine_busy_s >= result.cpu_s - 0.05
    # Busy and idle together cover every CPU for the run's wall time (the kernel counts
    # in ticks, and the readings bracket the run a little wider than its wall clock).
    covered = result.machine_busy_s + result.machine_idle_s
    expected = result.wall_s * _cpus_in_proc_stat()
    assert abs(covered - expected) <= 0.25 * expected + 0.1
