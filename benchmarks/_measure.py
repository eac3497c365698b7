"""Run one tool as a subprocess and measure it: wall, CPU, peak memory, registry CPU.

The tool runs in its own session (``start_new_session``), so its whole process tree is the
set of processes whose session id is its pid: the sampler sums their RSS every
``interval`` seconds (this kernel has no ``/proc/PID/task/TID/children``). CPU comes from
``os.wait4``: the child's rusage includes every descendant it waited for, so worker
processes count. The registry's CPU is the delta of its ``/proc/PID/stat`` utime+stime.
The whole machine's busy and idle core-seconds (``/proc/stat``) over the run say how much
of the cores the run left unused: what better overlap could still win.
Each run has a deadline: on expiry the session is killed and the run marked timed out.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "RunResult",
    "drop_caches",
    "machine_cpu_seconds",
    "proc_cpu_seconds",
    "proc_write_bytes",
    "run_measured",
]

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class RunResult:
    """One measured run of one tool."""

    tool: str
    ok: bool
    wall_s: float
    cpu_s: float  # user + system of the tool's process tree (see run_measured)
    user_s: float
    sys_s: float
    peak_rss: int  # bytes: the peak of the summed RSS of the tree, sampled
    # bytes: ru_maxrss of the tree's largest process; it survives exec, so it can include
    # the harness's own RSS at fork time: only a fallback when sampling saw nothing
    max_rss_single: int
    registry_cpu_s: float
    returncode: int | None
    timed_out: bool = False
    harness_cpu_s: float = 0.0  # this process (proxy threads, sampler) during the run
    # core-seconds during the run, all processes: busy (anyone's) and idle (incl. iowait)
    machine_busy_s: float = 0.0
    machine_idle_s: float = 0.0
    stdout: str = field(default="", repr=False)
    stderr_tail: str = field(default="", repr=False)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "stdout"}


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads), in seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def proc_write_bytes(pid: int) -> int:
    """``wchar`` of a process: every byte it passed to write/send/sendfile (sockets too)."""
    try:
        with open(f"/proc/{pid}/io") as fh:
            for line in fh:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, idle) core-seconds since boot over all CPUs, from ``/proc/stat``; idle counts
    iowait, busy everything else (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as fh:
        ticks = [int(x) for x in fh.readline().split()[1:9]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / _TICK, idle / _TICK


def _sample_session(sid: int, cpu: dict[int, float]) -> int:
    """Summed RSS (bytes) of the processes in session ``sid``; records each one's CPU
    seconds so far in ``cpu`` (pid -> utime + stime)."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                raw = fh.read()
            fields = raw[raw.rindex(b")") + 2 :].split()
            # fields[3]: session id; [11], [12]: utime, stime (ticks); [21]: RSS (pages)
            if int(fields[3]) == sid:
                total += int(fields[21]) * _PAGE
                cpu[int(name)] = (int(fields[11]) + int(fields[12])) / _TICK
        except (OSError, ValueError, IndexError):
            continue
    return total


def drop_caches() -> bool:
    """sync, then drop the page cache (needs root); False where not permitted."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
    except OSError:
        return False
    return True


def run_measured(
    tool: str,
    argv: Sequence[str],
    *,
    timeout: float,
    registry_pid: int | None = None,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    interval: float = 0.05,
) -> RunResult:
    """Run ``argv`` to completion (or ``timeout``) and measure it."""
    reg0 = proc_cpu_seconds(registry_pid) if registry_pid else 0.0
    busy0, idle0 = machine_cpu_seconds()
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        started = time.perf_counter()
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
        deadline = started + timeout
        peak = 0
        sampled_cpu: dict[int, float] = {}
        timed_out = False
        try:
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    break
                peak = max(peak, _sample_session(process.pid, sampled_cpu))
                if time.perf_counter() > deadline:
                    timed_out = True
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    pid, status, usage = os.wait4(process.pid, 0)
                    break
                time.sleep(interval)
            wall = time.perf_counter() - started
        finally:
            # The session may have left processes behind (a killed run), and a harness
            # interrupted here (Ctrl-C, SIGTERM) must not leave the tool running: it has
            # a session of its own, which no signal to the harness's group reaches.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            if process.poll() is None:  # interrupted before wait4 reaped it
                process.wait()
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    busy1, idle1 = machine_cpu_seconds()
    reg1 = proc_cpu_seconds(registry_pid) if registry_pid else 0.0
    # wait4 counts the descendants the tool reaped; worker processes that were never
    # reaped (killed at exit, or reparented) are only in the samples: take the larger.
    waited_cpu = usage.ru_utime + usage.ru_stime
    sampled = sum(sampled_cpu.values())
    return RunResult(
        tool=tool,
        ok=process.returncode == 0 and not timed_out,
        wall_s=wall,
        cpu_s=max(waited_cpu, sampled),
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        peak_rss=peak or usage.ru_maxrss * 1024,
        max_rss_single=usage.ru_maxrss * 1024,
        registry_cpu_s=reg1 - reg0,
        returncode=process.returncode,
        timed_out=timed_out,
        harness_cpu_s=(self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime),
        machine_busy_s=busy1 - busy0,
        machine_idle_s=idle1 - idle0,
        stdout=stdout,
        stderr_tail="\n".join(stderr.splitlines()[-15:]),
        extra={"cpu_waited_s": waited_cpu, "cpu_sampled_s": sampled, "processes": len(sampled_cpu)},
    )
