"""The process tree, read from /proc: for tests that check no worker process is left."""

from __future__ import annotations

import os

__all__ = ["descendants"]


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process that is still there when read."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    raw = fh.read()
            except OSError:  # it ended while we looked
                continue
            parents[int(name)] = int(raw[raw.rindex(b")") + 2 :].split()[1])
    return parents


def descendants(pid: int, *, depth: int | None = None) -> set[int]:
    """The processes below ``pid``: children, their children ... (``depth`` levels at
    most, every level when None)."""
    parents = _parents()
    found: set[int] = set()
    frontier, level = {pid}, 0
    while frontier and (depth is None or level < depth):
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
        level += 1
    return found
