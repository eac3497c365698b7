"""The project's loggers: structlog's, imported when a line is first logged.

``import structlog`` imports asyncio (structlog's stdlib module does) and its console
renderer: 20 ms of the CLI's start-up, measured as ``import trio, httpx`` against
``import trio, httpx, structlog`` (least of 15 runs each, 164 -> 184 ms), paid by every
command though a pull at the default level logs nothing. So every module logs through
``log = get_logger()`` from here, called as a structlog logger (``log.warning("event",
key=value)``), and structlog is imported by the first call that passes the level.

The CLI's ``configure_logging(defer_import=True)`` hands its structlog setup and level to
``configure``: until structlog is imported, lines below that level stop here; the first
line at or above it imports structlog and runs the setup, and from then on structlog's
own configuration filters. A library host's ``configure_logging`` configures structlog at
once, as before. Without ``configure`` every line goes to structlog, configured as its
host chose, or with structlog's defaults.

``log_context(ref=...)`` binds fields to every line logged in the block, in this task and
the tasks it starts (a ``ContextVar``, which trio copies into child tasks): structlog's
``bound_contextvars``, without importing structlog to bind.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Logger", "configure", "get_logger", "log_context"]

# The standard logging numbers, which structlog's filtering loggers use too.
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "imagec_pipe_log_context", default=None
)


class _State:
    """The level lines stop below while structlog is not imported yet, and the setup to
    run right after its import."""

    level = 0  # every call passes
    pending: Callable[[], None] | None = None
    lock = threading.Lock()  # a pull may log from any thread of a host


def configure(setup: Callable[[], None], *, defer_to_level: str | None = None) -> None:
    """Configure structlog with ``setup``: now, unless ``defer_to_level`` is given and
    structlog is not imported yet; then lines below that level (``"debug"`` …
    ``"critical"``) stop here, and the first line at or above it imports structlog and
    runs ``setup`` (only the latest call's). For a process whose every line is ours (the
    CLI): a host that imports structlog and logs itself would log through structlog's
    defaults until then, and ``setup`` would then replace its own configuration."""
    with _State.lock:
        if defer_to_level is not None and "structlog" not in sys.modules:
            _State.level, _State.pending = _LEVELS[defer_to_level], setup
            return
        _State.level, _State.pending = 0, None
    setup()


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every line logged in the block (and in tasks started in it).

    Once structlog is imported they are bound with its ``bound_contextvars`` too, so that
    the lines a host logs in the block (from a progress callback) carry them as well."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        if "structlog" in sys.modules:
            import structlog

            with structlog.contextvars.bound_contextvars(**fields):
                yield
        else:
            yield
    finally:
        _context.reset(token)


def _structlog_logger() -> Any:
    """structlog's logger, importing structlog and applying the pending setup first; from
    then on structlog's own configuration filters the lines."""
    if _State.pending is not None:
        with _State.lock:  # no other thread logs before the setup is in place
            if _State.pending is not None:  # not run by another thread meanwhile
                _State.pending()  # imports structlog
            _State.level, _State.pending = 0, None
    import structlog

    return structlog.get_logger()


class Logger:
    """The methods of structlog's bound logger that this project calls (add one here
    before calling it: mypy says so)."""

    __slots__ = ()

    def _log(self, method: str, event: str, fields: dict[str, Any]) -> None:
        if _LEVELS[method] >= _State.level:
            bound = _context.get()
            getattr(_structlog_logger(), method)(
                event, **({**bound, **fields} if bound else fields)
            )

    def debug(self, event: str, **fields: Any) -> None:
        self._log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log("warning", event, fields)


_LOGGER = Logger()


def get_logger() -> Logger:
    """The logger every module of ours logs through (it holds no state of its own)."""
    return _LOGGER
