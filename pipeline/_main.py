"""The ``imagec-pipe`` entry point: a Ctrl-C or SIGTERM ends it quietly from its first line.

The command line (``_cli``) imports trio, httpx and the stages: about 0.23 s.
While ``_cli.main`` was the entry point, no code of ours ran before those imports were
done, so a Ctrl-C then printed a traceback and SIGTERM ended the process without a
word, where later both end a command with one line on stderr and status 130, or 128 + N
after signal N. Here the handlers come first and ``_cli`` is imported under them; the
two share what a stop signal prints and the status it exits with, defined here, and so
``pull --json``'s final ``error`` line: stopped before ``_cli`` had read the command
line, it is found in ``argv`` without the parser (``json_pull_ref``), so that a script
reading the stream gets its last line whenever the stop comes.

What runs before ``main``'s first line is all that a signal still interrupts Python's
way: the interpreter's start-up, ``import pipeline`` (which imports nothing until its
names are used) and this module's imports, light ones of the standard library, most of
them loaded by Python's start-up already. tests/test_main.py keeps it so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

TYPE_CHECKING = False  # as in pipeline/__init__.py: typing is not imported yet
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = [
    "EXIT_INTERRUPTED",
    "PROG",
    "PULL_OPTIONS",
    "STOP_SIGNALS",
    "StopRequest",
    "Terminated",
    "ended",
    "error_line",
    "json_error_line",
    "json_pull_ref",
    "json_pull_refused",
    "main",
    "process_main",
    "report_stop",
    "settle_stop_signals",
    "silence_stdout",
    "stop_signals_deferred",
    "stop_signals_raise",
]

PROG = "imagec-pipe"

EXIT_INTERRUPTED = 130

# What timeout(1), systemd and container runtimes send to stop a process.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """A stop signal (SIGTERM, SIGHUP) arrived; ``--json`` names it in its ``error`` line.

    Not an Exception, as KeyboardInterrupt is not: raised wherever the signal lands (in
    the middle of an import, a lock wait), it must pass every ``except Exception`` on its
    way up, such as the one trio's ``_core/_thread_cache.py`` runs at import time.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signal = signal.Signals(signum)


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``Terminated`` while a command runs, as Ctrl-C raises
    KeyboardInterrupt. Their default action ends the process at once: at the password
    prompt that left the terminal without echo (getpass restores it in a ``finally``),
    and during a 30 s wait for the store's lock it skipped the exit code and the message.
    Around ``trio.run`` they are recorded instead (``stop_signals_deferred``). The
    previous handlers come back afterwards: tests run ``main()`` in their process."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers
        return

    def stop(signum: int, frame: object) -> None:
        raise Terminated(signum)

    # SIGINT's too, which it leaves as it is: ``settle_stop_signals`` may change it inside.
    previous = {signal.SIGINT: signal.getsignal(signal.SIGINT)}
    previous |= {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def settle_stop_signals() -> None:
    """Ignore Ctrl-C, SIGTERM and SIGHUP from here on: the command's work is done and
    what remains is to say so. A stop signal landing then made a pull that had printed
    its summary (or ``rm`` its removals) exit 130 or 143, with or without an error line
    after the summary: output and exit status that disagree. The enclosing
    ``stop_signals_raise`` puts the handlers back, for a caller that goes on (tests run
    ``main()`` in their process); a process goes on ignoring them to its end
    (``ended``)."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, *STOP_SIGNALS):
            signal.signal(signum, signal.SIG_IGN)


def ended(code: int) -> int:
    """``code``, once the process has ignored stop signals for the rest of its life.

    For an entry point's ``sys.exit``: the command is over and has said how it ended.
    Python's finalization takes a few milliseconds more; a signal then, to a handler
    already restored, made a pull that had printed its summary die of SIGINT (130, no
    word on stderr) or SIGTERM (143)."""
    settle_stop_signals()
    return code


class StopRequest:
    """The first stop signal that arrived while ``stop_signals_deferred`` held it back.

    A plain record, set by a signal handler: it only ever goes from None to a signal.
    """

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None

    def record(self, signum: int, frame: object) -> None:
        """The signal handler: remember the signal, raise nothing."""
        if self.signal is None:
            self.signal = signal.Signals(signum)

    def take(self) -> signal.Signals | None:
        """The signal recorded, if any, which is then no longer pending."""
        signum, self.signal = self.signal, None
        return signum


@contextlib.contextmanager
def stop_signals_deferred() -> Iterator[StopRequest]:
    """SIGTERM and SIGHUP are recorded, not raised, while ``trio.run`` runs; leaving the
    block raises ``Terminated`` for one that was recorded and not taken.

    Before the pull's signal receiver opens and after it closes, trio runs code of its own
    (starting and ending its run, between tasks), and it takes an exception raised there
    for a bug of its own: a raising handler ended the pull with ``TrioInternalError``
    (exit 1, "internal error"), or abandoned the run with warnings and no clean-up. A
    handler that only records is safe anywhere. The receiver replaces it while open
    (``_pull_until_stopped``): a signal that came before, the pull takes from the
    ``StopRequest`` once the receiver is open; one after it closed is raised here, once
    trio has returned. That one ends the command as terminated even if the image was
    pulled, as trio raises KeyboardInterrupt after its run for a Ctrl-C at that moment.
    SIGINT needs none of this: trio's own handler holds a Ctrl-C back in trio's code."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # only the main thread may set handlers
        return
    previous = {signum: signal.signal(signum, request.record) for signum in STOP_SIGNALS}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        # After the handlers are back, so that no signal falls between the check and them;
        # raised here, it replaces what trio returned, or has what it raised as context.
        if (stopped := request.take()) is not None:
            raise Terminated(stopped)


def error_line(message: str) -> None:
    """The one line a failure prints: no traceback, no newline inside."""
    print(f"{PROG}: {' '.join(message.split())}", file=sys.stderr)


def json_error_line(ref: str | None, digest: str | None, error: str, message: str) -> str:
    """The last line of ``pull --json`` when the pull fails or is stopped: ``error`` is
    the exception's class (``NotFound``, ``KeyboardInterrupt``, ``Terminated``),
    ``message`` the stderr line's. Made here, for ``JsonProgress`` and for a stop that
    comes before the renderer exists (``report_stop``) or a command line argparse
    refused (``_cli``), so that the lines are one format; ``ref`` is null only for a
    command line refused with no REF in it."""
    import json  # light, and needed only for these lines

    return json.dumps(
        {"event": "error", "ref": ref, "digest": digest, "error": error, "message": message},
        separators=(",", ":"),
    )


# pull's options, each with whether it takes a value: what ``json_pull_ref`` needs to
# know of the parser (``_cli.build_parser``), which a stop during the imports comes
# before. tests/test_main.py keeps the two the same.
PULL_OPTIONS = {
    "-h": False,
    "--help": False,
    "--store": True,
    "--log-level": True,
    "--log-json": False,
    "--platform": True,
    "--max-concurrent-downloads": True,
    "--retries": True,
    "--max-inflate-ratio": True,
    "--timeout": True,
    "--layer-workers": True,
    "--gzip-inflater": True,
    "--ca-file": True,
    "--insecure-registry": True,
    "-u": True,
    "--username": True,
    "--password-stdin": False,
    "--authfile": True,
    "--json": False,
    "-q": False,
    "--quiet": False,
}


def json_pull_ref(argv: Sequence[str]) -> str | None:
    """The REF of a command line ``pull REF ... --json``, else None: whether a stop that
    came before ``_cli`` parsed it owes ``--json``'s final error line, and for what.

    Read as argparse reads a valid command line: an option's value goes with it
    (``--store DIR``, ``--store=DIR``, ``-uNAME``), a long option may be shortened to
    a unique prefix (``--js``), and after ``--`` everything is positional. What argparse
    refuses (an unknown option, a second REF) is None: no pull runs for it."""
    if not argv or argv[0] != "pull":
        return None
    json_output, positionals, all_known = _read_pull(argv[1:])
    return positionals[0] if all_known and json_output and len(positionals) == 1 else None


def json_pull_refused(argv: Sequence[str]) -> tuple[bool, str | None]:
    """For a command line argparse refused: whether it is a ``pull ... --json``, which
    then owes its stream's final error line, and the REF that line names (the first
    positional, as argparse takes it; None when there is none). Read as ``json_pull_ref``
    reads it, an unknown option counting as one without a value, as argparse counts it."""
    if not argv or argv[0] != "pull":
        return False, None
    json_output, positionals, _ = _read_pull(argv[1:])
    return json_output, positionals[0] if positionals else None


def _read_pull(tokens: Sequence[str]) -> tuple[bool, list[str], bool]:
    """pull's arguments: whether ``--json`` is among them, the positionals, and whether
    every option is one of pull's (an unknown or ambiguous one takes no value here)."""
    positionals: list[str] = []
    json_output = False
    all_known = True
    at = 0
    while at < len(tokens):
        token = tokens[at]
        at += 1
        if token == "--":
            positionals.extend(tokens[at:])
            break
        if not _looks_like_option(token):
            positionals.append(token)
            continue
        name, equals, _ = token.partition("=")
        if token in PULL_OPTIONS or (equals and name in PULL_OPTIONS):
            option, attached = name, bool(equals)
        elif token.startswith("--"):
            matches = [known for known in PULL_OPTIONS if known.startswith(name)]
            if len(matches) != 1:
                all_known = False  # unknown, or ambiguous
                continue
            option, attached = matches[0], bool(equals)
        elif token[:2] in PULL_OPTIONS:  # -uNAME
            option, attached = token[:2], True
        else:
            all_known = False
            continue
        takes_value = PULL_OPTIONS[option] and not attached and at < len(tokens)
        if takes_value and not _looks_like_option(tokens[at]):  # ``-u --json``: none
            at += 1  # its value
        json_output = json_output or option == "--json"
    return json_output, positionals, all_known


def _looks_like_option(token: str) -> bool:
    """As argparse sees it: ``-`` and negative numbers (``--retries -1``) are values."""
    return token.startswith("-") and token != "-" and not token[1:].replace(".", "", 1).isdigit()


def silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's last flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor, or no stdout
        pass


def report_stop(stop: KeyboardInterrupt | Terminated, json_ref: str | None) -> int:
    """End a command that a stop signal interrupted before a pull's renderer could say
    so: the line on stderr, the exit status (130, or 128 + N after signal N), and for a
    ``pull --json`` the stream's final ``error`` line naming ``json_ref``, which a reader
    of it would otherwise wait for in vain (a pull stopped later ends with the same one).

    ``main`` gives the reference as typed: spelling it as the progress events do
    (``_cli._as_reported``) takes ``stages``, whose import this one has to do without."""
    if isinstance(stop, Terminated):
        message, code = f"terminated ({stop.signal.name})", 128 + stop.signal
    else:
        message, code = "interrupted", EXIT_INTERRUPTED
    if json_ref is not None and sys.stdout is not None:
        line = json_error_line(json_ref, None, type(stop).__name__, message)
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except (OSError, ValueError):  # nobody reads it (`| head -0`), or it is closed
            silence_stdout()
    error_line(message)
    return code


def process_main() -> int:
    """The ``imagec-pipe`` console script (pyproject.toml): ``main`` for a process that
    ends when it returns (``ended``)."""
    return ended(main())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit code.

    What the console script runs (``process_main``). ``_cli.main`` does the work; a
    stop signal before it has its own handlers (during the imports, the parsing) ends
    here, as it would there.
    """
    try:
        with stop_signals_raise():
            from . import _cli  # imported here, under the handlers: the 0.25 s

            return _cli.main(argv)
    except (KeyboardInterrupt, Terminated) as stop:
        return report_stop(stop, json_pull_ref(sys.argv[1:] if argv is None else argv))
    except RuntimeError as error:
        cause = error.__cause__
        if not isinstance(cause, KeyboardInterrupt | Terminated):
            raise
        # Python 3.11 raises what a descriptor's __set_name__ raised, at the creation of a
        # class, as the cause of a RuntimeError ("Error calling __set_name__ ..."; 3.12
        # adds a note instead): a stop signal landing there, as the imports make the
        # dataclasses, ended the command with that traceback.
        return report_stop(cause, json_pull_ref(sys.argv[1:] if argv is None else argv))
