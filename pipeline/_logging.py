"""structlog configuration for the entry points (the CLI, later the daemon).

Configured once, by the entry point, never on import: the library (``import pipeline``)
logs through whatever configuration its host program chose. Logs go to stderr so that
stdout stays free for progress, ``--json`` lines and command output.

The processor chain, in order:

1. ``merge_contextvars``: what a host bound with structlog's ``bound_contextvars`` (the
   ``ref`` / ``digest`` a stage binds with ``stages/_log.py``'s ``log_context`` are in
   the line already: trio copies the context into child tasks);
2. level filtering: the bound logger class made by ``make_filtering_bound_logger`` turns
   calls below the level into no-ops before any processor runs, so a debug call in a hot
   path costs one method call;
3. the level name and an ISO-8601 UTC timestamp;
4. exceptions rendered (text on the console, structured in JSON), never with frame
   locals, which may hold a password;
5. ``redact_secrets``: insurance that no password, token or Authorization header reaches
   the output even if a caller binds one by mistake (a field whose name says secret by
   ``stages/_redact.py``'s rule, ``is_secret_name``, loses its value whatever it is:
   ``api_key``, ``client_secret``, ``signature``), and that the user's own password
   (``add_secret``) and the tokens it was issued (``stages/_redact.py``'s
   ``recent_tokens``) appear nowhere, not even quoted back by a registry's error message;
   every string also goes through ``stages/_redact.py``'s rule (a URL's query and user
   info, ``Bearer``/``Basic`` credentials, secret-named ``name=value`` pairs), the rule
   the stages apply to a server's text before quoting it in an error;
6. the renderer: console (colours, aligned) on a TTY, JSON lines otherwise or with
   ``--log-json``.

Never use the ``a*`` methods (``ainfo`` …): they run in asyncio's executor and fail under
trio.

A layer worker process (``--layer-workers processes``) starts with structlog's defaults:
every level, unredacted, on stdout, where ``--json`` lines go. Each worker applies the
settings this process last configured (``current_settings``), or quiet defaults when the
host program never called ``configure_logging``. Where this process logs to a stream of
its own (``log_stream``: the CLI's, above its progress block on a terminal), a worker
sends its lines here to be written there (``pipeline._workers``); else to its stderr.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, TextIO

from stages._log import configure
from stages._redact import (
    REDACTED,
    cut_secrets,
    cut_tokens,
    is_secret_name,
    recent_tokens,
    redact,
)

if TYPE_CHECKING:
    import structlog

__all__ = [
    "LEVELS",
    "RECENT_SECRETS_KEPT",
    "LogSettings",
    "add_secret",
    "configure_logging",
    "current_settings",
    "held_secrets",
    "log_stream",
    "redact_secrets",
]

# The names --log-level accepts, lowest first.
LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class LogSettings:
    """What ``configure_logging`` was given, for another process of ours to apply: a level
    and the renderer (``json`` as resolved for this process's stderr)."""

    level: str = "warning"
    json: bool | None = None
    # The texts to cut out of every line (``add_secret``, ``held_secrets``): a worker
    # process cuts them out of its lines too.
    secrets: tuple[str, ...] = field(default=(), repr=False)
    # Whether this process's log stream is a terminal: a worker's relayed lines are
    # rendered for it (colours) as this process's are.
    tty: bool = False
    # The Unix datagram socket a worker sends its lines to, one datagram a line, when
    # this process has a ``log_stream`` of its own; None: the worker's stderr.
    relay: str | None = None


class _Applied:
    """The settings ``configure_logging`` applied last in this process; the defaults until
    then (a library host that configures structlog its own way)."""

    settings = LogSettings()
    stream: TextIO | None = None
    # How many running blocks of ``held_secrets`` (pulls) hold each of settings.secrets:
    # those are never pushed out. Changed under ``lock`` only (a pull may run in any
    # thread of a host); the log processor reads settings.secrets, replaced whole.
    holders: ClassVar[dict[str, int]] = {}
    lock = threading.Lock()


def current_settings() -> LogSettings:
    """The logging settings a worker process of this one should apply."""
    return _Applied.settings


def log_stream() -> TextIO | None:
    """The stream ``configure_logging`` was last given; None when lines go to
    ``sys.stderr`` (or it was never called)."""
    return _Applied.stream


# How many of the secrets no running pull holds are still cut, the latest given last:
# eight credentials' ``sent_secrets`` (the password and two spellings of the Basic
# credentials). Only so many, as with tokens (``stages/_redact.py``'s
# ``RECENT_TOKENS_KEPT``): each is a search through every string of every line, and a
# library host that pulls with many credentials for a long time gave this process an
# ever longer list of them.
RECENT_SECRETS_KEPT = 24


def add_secret(text: str) -> None:
    """Cut ``text`` (the user's password, or the Basic credentials made of it: callers
    add each of ``stages/_auth.py``'s ``sent_secrets``) out of every later log line of
    this process and of the worker processes it starts, wherever it appears, as it is or
    percent-encoded (a short password only where it stands alone, ``stages/_redact.py``'s
    ``cut_secret``): a registry's error message may quote it back, and a traceback in the
    debug log quotes that message. The patterns below catch credentials by their shape;
    this one by its value. Bearer tokens need no call: the token service's answer gives
    them to ``stages/_redact.py``'s ``remember_token``, in whichever process fetched
    them, and each line cuts ``recent_tokens`` too.

    Cut until ``RECENT_SECRETS_KEPT`` newer ones push it out, unless a running
    ``held_secrets`` block holds it: the CLI, which pulls once, adds its user's; a pull
    holds its credentials' while it runs (``held_secrets``)."""
    if text:
        with _Applied.lock:
            _keep_latest((text,))


@contextlib.contextmanager
def held_secrets(texts: tuple[str, ...]) -> Iterator[None]:
    """Cut ``texts`` (as ``add_secret`` does) out of every line for as long as the block
    runs, however many others are added meanwhile: a pull holds its credentials'
    ``sent_secrets`` while it runs, a layer worker process those of the pull that sent it
    its task. When no block holds one any more it stays cut as a recent one of
    ``add_secret``'s, for the lines that log the pull's end (a host logging the error it
    raised), until newer ones push it out."""
    texts = tuple(text for text in texts if text)
    with _Applied.lock:
        for text in texts:
            _Applied.holders[text] = _Applied.holders.get(text, 0) + 1
        _keep_latest(texts)
    try:
        yield
    finally:
        with _Applied.lock:
            for text in texts:
                left = _Applied.holders[text] - 1
                if left:
                    _Applied.holders[text] = left
                else:
                    del _Applied.holders[text]
            _keep_latest(texts)


def _keep_latest(texts: tuple[str, ...]) -> None:
    """Put ``texts`` last (the latest) among the secrets cut, in their order (a padded
    form before the unpadded one: ``sent_secrets``), and drop the oldest no block holds
    beyond ``RECENT_SECRETS_KEPT``. The caller holds ``_Applied.lock``."""
    secrets = (*(s for s in _Applied.settings.secrets if s not in texts), *texts)
    unheld = [s for s in secrets if s not in _Applied.holders]
    dropped = set(unheld[: max(0, len(unheld) - RECENT_SECRETS_KEPT)])
    kept = tuple(s for s in secrets if s not in dropped)
    if kept != _Applied.settings.secrets:
        _Applied.settings = replace(_Applied.settings, secrets=kept)


def _is_secret_key(key: object) -> bool:
    """Whether a log field (or a key of a mapping logged) holds a secret by its name: the
    rule a server's ``name=value`` pairs are redacted by (``is_secret_name``), so that
    ``api_key``, ``client_secret`` or ``signature`` lose their values here as they do in
    an error message, and ``ref``, ``digest``, ``url`` or ``keys`` keep theirs."""
    return isinstance(key, str) and is_secret_name(key)


def _redact_value(
    value: Any, secrets: tuple[str, ...], tokens: tuple[str, ...], depth: int = 0
) -> Any:
    """Scrub one value: strings lose ``secrets``, ``tokens`` and inline credentials,
    mappings their secret keys."""
    if isinstance(value, str):
        # By their values, then by their shape.
        return redact(cut_tokens(cut_secrets(value, secrets), tokens))
    if depth < 5 and isinstance(value, Mapping):  # httpx.Headers is a Mapping
        return {
            k: REDACTED if _is_secret_key(k) else _redact_value(v, secrets, tokens, depth + 1)
            for k, v in value.items()
        }
    if depth < 5 and isinstance(value, list | tuple):
        return [_redact_value(v, secrets, tokens, depth + 1) for v in value]
    return value


def redact_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: replace secret-looking keys and inline credentials.

    Cheap on ordinary log lines (a few short strings), and it runs only for lines that
    passed the level filter.
    """
    secrets, tokens = _Applied.settings.secrets, recent_tokens()
    for key in list(event_dict):
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(event_dict[key], secrets, tokens)
    return event_dict


def configure_logging(
    *,
    level: str = "warning",
    json: bool | None = None,
    stream: TextIO | None = None,
    defer_import: bool = False,
) -> None:
    """Configure structlog for this process: level, renderer and output stream.

    ``json=None`` picks the renderer from the stream: console on a TTY, JSON otherwise.
    ``stream`` defaults to ``sys.stderr``, looked up at each log call. Loggers are not
    cached on first use, so calling this again (tests drive ``main()`` several times)
    takes effect for the module-level ``log = get_logger()`` loggers too; the cost is a
    logger built per line, negligible at one canonical line per unit of work.

    ``defer_import`` is for a process whose every log line is ours (the CLI): structlog
    is then imported, and configured, by the first line at ``level`` or above
    (``stages/_log.py``), which a quiet command never logs: 20 ms of its start-up. Not
    for a host that logs through structlog itself: its lines would get structlog's
    defaults (stdout, unredacted) until then, and this configuration would then replace
    its own.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    out = sys.stderr if stream is None else stream
    as_json = not _isatty(out) if json is None else json
    configure(
        lambda: _apply(level=level, json=as_json, stream=stream, colors=_isatty(out)),
        defer_to_level=level if defer_import else None,
    )
    with _Applied.lock:  # not to lose a secret added meanwhile by another thread
        _Applied.settings = LogSettings(level, as_json, _Applied.settings.secrets, tty=_isatty(out))
    _Applied.stream = stream


def _apply(*, level: str, json: bool, stream: TextIO | None, colors: bool) -> None:
    """The structlog side of ``configure_logging``: run by it, or, with ``defer_import``,
    by the first line that passes the level (``stages/_log.py``)."""
    import structlog

    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Exceptions become text (console) or dicts (JSON) here, before the redaction, and
        # never with frame locals: a local variable may hold a password.
        structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        if json
        else structlog.processors.format_exc_info,
        redact_secrets,
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        ),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=_StreamLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


class _StreamLoggerFactory:
    """WriteLoggers on ``stream``, or on whatever ``sys.stderr`` is at each log call.

    Looking ``sys.stderr`` up late means a replaced stderr (pytest's capture, a daemon
    redirecting it) is honoured and a closed one is never written to. A WriteLogger
    writes each line and its newline in one call: a piped stderr is unbuffered, and
    PrintLogger's ``print`` made two writes of them, so the lines of a layer worker
    process and of its parent ran into each other.
    """

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def __call__(self, *args: Any) -> structlog.WriteLogger:
        import structlog

        return structlog.WriteLogger(sys.stderr if self._stream is None else self._stream)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # detached or closed streams
        return False
