"""The ``imagec-pipe`` command: pull images into the local store and look at them.

::

    imagec-pipe pull REF [--store DIR] [--platform os/arch[/variant]]
                         [--max-concurrent-downloads N] [--retries N]
                         [--max-inflate-ratio N] [--ca-file PEM]
                         [--insecure-registry HOST[:PORT]]... [-u USER] [--password-stdin]
                         [--authfile PATH]
                         [--json | --quiet] [--log-level LEVEL] [--log-json]
    imagec-pipe images [--store DIR] [--json]
    imagec-pipe layers REF [--store DIR] [--json]
    imagec-pipe inspect REF [--store DIR]
    imagec-pipe verify [--store DIR] [--full] [--repair] [--json]
    imagec-pipe rm REF [REF...] [--store DIR] [--json]     (alias: rmi)
    imagec-pipe gc [--store DIR] [--json]                  (alias: prune)
    imagec-pipe --version

``pull`` without ``-u`` uses what ``skopeo login``, ``podman login`` or ``docker login``
left for the image's registry, found as skopeo finds it (``stages/_authfile.py``: the
containers tools' auth.json files, then docker's ``config.json``, then ``~/.dockercfg``;
``--authfile``, default ``$REGISTRY_AUTH_FILE``, is then the only file read), read
before the store is opened.

Options go after the subcommand. ``--store`` defaults to ``$IMAGEC_PIPE_STORE``, else the
per-user data directory (``Store.open(None)`` decides).

Exit codes (outside checks rely on them):

- 0 success;
- 1 the command failed: the pull failed (one line on stderr,
  ``imagec-pipe: error: pulling REF: <what failed>``), a malformed reference (docker
  also exits 1 for "invalid reference format", and the reference is checked by the pull),
  an image unknown to ``layers`` / ``inspect`` / ``rm``, an unusable store, a damaged
  blob found by ``verify`` (removed or not), an ``rm``, ``gc`` or ``verify --repair``
  refused because a pull (or another removal) is running in the store;
- 2 usage error: argparse's own, a bad ``--platform``, ``--max-concurrent-downloads`` or
  ``--retries``,
  a missing ``--ca-file``, ``--password-stdin`` without ``-u``, ``-u`` without a password
  source, and a ``UsageError`` raised by the pull (options that contradict each other).
  They end a ``pull --json`` stream with its ``error`` line (``"error": "UsageError"``),
  as any failed pull does: argparse's own too (its ``ref`` the REF given, or null),
  whether ``--json`` came before or after the mistake. The other subcommands' ``--json``
  is one document printed on success; they write nothing to stdout for any failure;
- 130 interrupted (Ctrl-C): trio cancels the pull, whose context managers remove partial
  ingest files, and ``imagec-pipe: interrupted`` goes to stderr;
- 128 + N after signal N, SIGTERM (143) or SIGHUP (129): what ``timeout``, systemd and
  container runtimes send to stop a process. The pull is cancelled as by Ctrl-C (partial
  files removed, layer worker processes killed) and ``imagec-pipe: terminated (SIGTERM)``
  goes to stderr.

These two hold from the console script's first line: it enters through ``_main.main``,
which puts the handlers in place before this module's imports (trio, httpx and the
stages: about 0.23 s; structlog only when a line is logged, ``stages/_log.py``) and says
the same there.

Every subcommand also takes ``--store``, ``--log-level`` and ``--log-json``.

Progress goes to stdout (docker-like on a TTY, plain lines otherwise, JSON lines with
``--json``, only the reference with ``--quiet``; see ``_progress``); logs go to stderr
(see ``_logging``). A failure is one line on stderr, never a traceback, not even for a
bug (``internal error: …``); ``--log-level debug`` logs the traceback, without locals.
``--log-json`` governs the log records only: the command's own lines on stderr
(``error_line``: a failure, a warning, a stop) stay plain, as docker's do; ``--json``
and the exit status are what a program reads a failure from.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO, cast

import trio

from stages._auth import insecure_network, sent_secrets
from stages._authfile import auth_file_credentials
from stages._codec import available_inflaters
from stages._config import Credentials, Limits, ProxySettings, RegistryOptions
from stages._errors import ImagecError, PullTimeout, UsageError
from stages._log import get_logger
from stages._redact import cut_secrets, cut_tokens, recent_tokens, redact
from stages._reference import parse_reference
from stages._types import Digest, Platform

from ._allocator import freeze_startup_objects, tune_allocator
from ._logging import LEVELS, add_secret, configure_logging
from ._main import (
    EXIT_INTERRUPTED,
    PROG,
    STOP_SIGNALS,
    StopRequest,
    Terminated,
    ended,
    error_line,
    json_error_line,
    json_pull_refused,
    report_stop,
    settle_stop_signals,
    silence_stdout,
    stop_signals_deferred,
    stop_signals_raise,
)
from ._progress import (
    JsonProgress,
    LogsAboveProgress,
    PlainProgress,
    ProgressRenderer,
    QuietProgress,
    TtyProgress,
    human_size,
    to_jsonable,
)
from ._pull import (
    PullOptions,
    PullResult,
    check_options,
    opening_timed_out,
    pull,
    timed_out,
)
from ._store import ImageRecord, Removal, Store, store_path

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

STORE_ENV = "IMAGEC_PIPE_STORE"

log = get_logger()


def version() -> str:
    """``pipeline.__version__``, which a test keeps equal to the distribution's version.

    Not ``importlib.metadata``: importing it costs every command about 10-40 ms.
    """
    from . import __version__

    return __version__


# --- argument types: each raises ArgumentTypeError, which argparse turns into exit 2 ---


def _platform(text: str) -> Platform:
    try:
        platform = Platform.parse(text)
        platform.check_variant()  # linux/amd64/v9: no such level
        return platform
    except UsageError as exc:
        raise argparse.ArgumentTypeError(exc.message) from exc


def _positive_int(text: str) -> int:
    return _whole_number(text, least=1)


def _count(text: str) -> int:
    return _whole_number(text, least=0)


def _whole_number(text: str, *, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} must be at least {least}")
    return value


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ms|h|m|s)", re.ASCII)
_SECONDS = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(text: str) -> float:
    """A --timeout value in seconds: a number of seconds (``90``), or numbers with units
    in the way skopeo's and Go's durations are written (``90s``, ``10m``, ``1h30m``,
    ``1.5h``, ``500ms``, lower case as Go's: ``5M`` read like months); ASCII digits only
    (``float`` took Arabic-Indic digits and ``1_000``); above 0."""
    spelled = text.strip()
    if _SECONDS.fullmatch(spelled):
        seconds = float(spelled)
    else:
        parts = _DURATION_PART.findall(spelled)
        if not spelled or "".join(number + unit for number, unit in parts) != spelled:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a duration such as 90, 90s, 10m or 1h30m"
            ) from None
        seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration above 0")
    return seconds


def _store_dir(text: str) -> str:
    """A --store value: not empty, which Path() would read as the working directory (a
    script's ``--store "$UNSET"`` would make a store of wherever it runs)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the store directory must not be empty")
    return text


def _auth_file(text: str) -> str:
    """An --authfile value: not empty, which Path() would read as the working directory
    (a script's ``--authfile "$UNSET"`` would fail on "." instead of saying so)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the auth file must not be empty")
    return text


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a readable file")
    return path


def _registry_host(text: str) -> str:
    host = text.strip()
    if insecure_network(host) is not None:
        return host
    if not host or "://" in host or "/" in host or any(c.isspace() for c in host):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not of the form HOST, HOST:PORT or a CIDR network such as"
            " 10.0.0.0/8 (no scheme, no path)"
        )
    return host


def _log_level(text: str) -> str:
    level = text.lower()
    if level not in LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a log level; choose from {', '.join(LEVELS)}"
        )
    return level


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; options belong to the subcommands, after them."""
    parser = _ArgumentParser(
        prog=PROG,
        description="Pull container images into a local OCI store, verifying every byte.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    common = _ArgumentParser(add_help=False)
    common.add_argument(
        "--store",
        metavar="DIR",
        type=_store_dir,
        default=os.environ.get(STORE_ENV) or None,
        help=f"the store directory (default: ${STORE_ENV}, else the per-user data directory)",
    )
    common.add_argument(
        "--log-level",
        type=_log_level,
        default="warning",
        metavar="LEVEL",
        help=f"log threshold: {', '.join(LEVELS)} (default: warning)",
    )
    common.add_argument(
        "--log-json",
        action="store_true",
        help="log records as JSON lines (default on a non-TTY); the command's own lines, "
        "such as the one a failure ends with, stay plain text",
    )

    pull = commands.add_parser(
        "pull",
        parents=[common],
        help="pull an image into the store",
        description="Pull an image. Credentials: -u USER with --password-stdin (or a "
        "prompt on a terminal); without -u, those `skopeo login`, `podman login` or "
        "`docker login` left for the image's registry, found as skopeo finds them (see "
        "--authfile); else anonymous.",
        epilog="Proxies: HTTPS_PROXY, HTTP_PROXY and NO_PROXY (or their lower-case forms) are"
        " honoured as docker honours them; loopback registries are never proxied.",
    )
    pull.add_argument("ref", metavar="REF", help="image reference, e.g. alpine or host:5000/app:1")
    pull.add_argument(
        "--platform",
        type=_platform,
        metavar="OS/ARCH[/VARIANT]",
        help="platform to pick from a multi-platform image (default: this machine's, "
        "with its CPU's variant, e.g. linux/amd64/v3); without a VARIANT, the "
        "architecture's default (linux/amd64 is v1); a single-platform image for another "
        "OS/ARCH is refused when this is given",
    )
    pull.add_argument(
        "--max-concurrent-downloads",
        type=_positive_int,
        default=3,
        metavar="N",
        help="layers downloaded at once (default: 3)",
    )
    pull.add_argument(
        "--retries",
        type=_count,
        default=Limits.retries,
        metavar="N",
        help="times a request that failed transiently (5xx, 429, a broken connection) is "
        f"tried again, a layer resuming where it broke off (default: {Limits.retries}; 0: never)",
    )
    pull.add_argument(
        "--max-inflate-ratio",
        type=_positive_int,
        default=Limits.max_compression_ratio,
        metavar="N",
        help="a layer may inflate to N times its compressed size (and to 64 MiB whatever"
        f" its size); past that it is refused as a decompression bomb (default:"
        f" {Limits.max_compression_ratio}; raise it for an image you trust whose layers"
        " hold long runs of zeros)",
    )
    pull.add_argument(
        "--timeout",
        type=_duration,
        metavar="DURATION",
        help="give up on the pull, cancelling it cleanly, if it has not finished within"
        " this (90, 90s, 10m, 1h30m, 500ms), counted from the store's opening; default:"
        " none, though each request has its own timeouts and a layer's download a minimum"
        " rate",
    )
    pull.add_argument(
        "--layer-workers",
        choices=("threads", "processes"),
        default="threads",
        help="where each layer's hashing and inflating runs: worker threads of this process "
        "(default) or worker processes, one layer each",
    )
    pull.add_argument(
        "--gzip-inflater",
        choices=("auto", *available_inflaters()),
        default="auto",
        help="what inflates gzip layers (default: auto, the fastest installed, isal first)",
    )
    pull.add_argument(
        "--ca-file", type=_existing_file, metavar="PEM", help="extra CA certificates to trust"
    )
    pull.add_argument(
        "--insecure-registry",
        type=_registry_host,
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="HTTPS without verification, then plain HTTP, for this registry, or for every"
        " address of a CIDR network such as 10.0.0.0/8 (repeatable)",
    )
    pull.add_argument(
        "-u",
        "--username",
        metavar="USER",
        help="registry user name (default: the credentials a login left, see --authfile; "
        "none: anonymous)",
    )
    pull.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin (needs -u)"
    )
    pull.add_argument(
        "--authfile",
        type=_auth_file,
        metavar="PATH",
        help="without -u, read the credentials from this auth.json only (default: "
        "$REGISTRY_AUTH_FILE; unset: the first of $XDG_RUNTIME_DIR/containers/auth.json, "
        "$XDG_CONFIG_HOME/containers/auth.json (~/.config), $DOCKER_CONFIG/config.json "
        "(~/.docker) and ~/.dockercfg with an entry for the image; an auth.json key may name "
        "a namespace, the most specific wins)",
    )
    output = pull.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="progress as JSON lines on stdout")
    output.add_argument(
        "-q", "--quiet", action="store_true", help="print only the full reference on success"
    )
    pull.set_defaults(handler=_cmd_pull, subparser=pull)

    images = commands.add_parser(
        "images",
        parents=[common],
        help="list the images in the store",
        description="List the references in the store, then as <none> the images no"
        " reference names any more (a tag pulled again after it moved leaves its old"
        " image; `gc` removes them).",
    )
    images.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    images.set_defaults(handler=_cmd_images, subparser=images)

    layers = commands.add_parser(
        "layers", parents=[common], help="list an image's layers", description="List layers."
    )
    layers.add_argument("ref", metavar="REF", help="reference, name@digest or image ID prefix")
    layers.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    layers.set_defaults(handler=_cmd_layers, subparser=layers)

    inspect = commands.add_parser(
        "inspect",
        parents=[common],
        help="show an image's config, manifest and store record as JSON",
        description="Inspect an image.",
    )
    inspect.add_argument("ref", metavar="REF", help="reference, name@digest or image ID prefix")
    inspect.set_defaults(handler=_cmd_inspect, subparser=inspect)

    verify = commands.add_parser(
        "verify",
        parents=[common],
        help="check every blob in the store for damage (bit rot, truncation)",
        description="Check every blob in the store: layers by size and the xxh3 recorded "
        "when they were pulled (--full: sha256), manifests and configs by sha256. Exit "
        "status 1 when a blob is damaged.",
    )
    verify.add_argument(
        "--full", action="store_true", help="check layers by sha256 too (slower: about 1 GB/s)"
    )
    verify.add_argument(
        "--repair",
        action="store_true",
        help="remove the damaged blobs, so that pulling their images again downloads them",
    )
    verify.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    verify.set_defaults(handler=_cmd_verify, subparser=verify)

    rmi = commands.add_parser(
        "rm",
        aliases=["rmi"],
        parents=[common],
        help="remove references from the store, and the blobs only they used",
        description="Remove references (docker rmi): each one's index.json entry and record; "
        "an image whose last reference goes is removed with every blob no other image uses. "
        "Nothing is removed unless every REF is found. Refused while a pull runs in the store.",
    )
    rmi.add_argument(
        "refs", nargs="+", metavar="REF", help="reference, name@digest or image ID prefix"
    )
    rmi.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    rmi.set_defaults(handler=_cmd_rmi, subparser=rmi)

    prune = commands.add_parser(
        "gc",
        aliases=["prune"],
        parents=[common],
        help="remove images no reference names, and blobs nothing uses",
        description="Remove what no reference needs (docker image prune): images no "
        "reference names any more, layer records no image uses, blobs nothing names. "
        "Refused while a pull runs in the store.",
    )
    prune.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    prune.set_defaults(handler=_cmd_prune, subparser=prune)
    return parser


class _Usage(Exception):
    """A usage error found after parsing; reported like argparse's own (exit 2)."""


class _Refused(SystemExit):
    """argparse's own usage error (exit 2), its message kept for ``pull --json``."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_USAGE)
        self.message = message


class _ArgumentParser(argparse.ArgumentParser):
    """argparse's parser (its subcommands' too), whose usage error says what argparse's
    says on stderr and exits the same way, with the message kept for ``main``."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise _Refused(message)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    _discard_closed_streams()  # before argparse's usage errors, which write to both
    try:
        args = parser.parse_args(argv)
    except _Refused as refused:
        return _parse_refused(argv, refused.message)
    except SystemExit as exc:  # argparse: --help / --version (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    configure_logging(level=args.log_level, json=True if args.log_json else None, defer_import=True)
    tune_allocator()
    freeze_startup_objects()
    try:
        with stop_signals_raise():
            code: int = args.handler(args)
    except _Usage as exc:
        return _usage_error(args.subparser, str(exc))
    except (KeyboardInterrupt, Terminated) as stop:
        # Outside trio.run (the password prompt, reading the password from stdin,
        # reading the store): nothing to unwind. A pull's renderer said nothing yet.
        json_ref = _as_reported(args.ref) if args.command == "pull" and args.json else None
        return report_stop(stop, json_ref)
    except BrokenPipeError:  # `imagec-pipe images | head -1`
        silence_stdout()
        return EXIT_FAILED
    except Exception as exc:  # the entry point reports on one line, never a traceback
        return _failed(_doing(args), exc)
    return code


def _discard_closed_streams() -> None:
    """Started with stdout or stderr closed (``>&-``), Python has None for it, and the
    first line written was an internal error that abandoned the pull. What would have
    gone there goes to /dev/null instead, as when a reader stops reading."""
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the rest of the process)
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115


def _doing(args: argparse.Namespace) -> str:
    """What the command was doing, for its error line."""
    match args.command:
        case "pull":
            return f"pulling {args.ref}"
        case "images":
            return "listing images"
        case "layers":
            return f"listing the layers of {args.ref}"
        case "inspect":
            return f"inspecting {args.ref}"
        case "verify":
            return "verifying the store"
        case "rm" | "rmi":
            return f"removing {' '.join(args.refs)}"
        case "gc" | "prune":
            return "pruning the store"
    return str(args.command)


def _parse_refused(argv: Sequence[str] | None, message: str) -> int:
    """argparse refused the command line and said so on stderr; a ``pull --json`` also
    gets its stream's one line, as a usage error found after parsing gives it: a script
    reading the stream would otherwise get nothing to act on but the exit status."""
    json_output, ref = json_pull_refused(sys.argv[1:] if argv is None else argv)
    if json_output:
        line = json_error_line(
            None if ref is None else _as_reported(ref), None, "UsageError", message
        )
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except (OSError, ValueError):  # nobody reads it (`| head -0`), or it is closed
            silence_stdout()
    return EXIT_USAGE


def _usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


# --- pull ---


def read_password(stdin: TextIO | None) -> str:
    """The password piped on stdin, minus one trailing newline (and a CR before it).

    As ``docker login --password-stdin``: ``echo pw | ...`` and a file ending in a
    newline both give ``pw``; other whitespace is part of the password. ``stdin`` is None
    when the process was started with it closed (``<&-``).
    """
    if stdin is None:
        raise _Usage("--password-stdin: stdin is closed")
    try:
        data = stdin.read()
    except UnicodeDecodeError:  # a strict locale's stdin (``PYTHONIOENCODING=utf-8:strict``)
        raise _Usage("--password-stdin: the password is not valid UTF-8") from None
    except OSError as exc:  # ``0>file``: opened to write (EBADF); EIO: a terminal gone
        raise _Usage(f"--password-stdin: cannot read stdin: {exc.strerror or exc}") from None
    data = data.removesuffix("\n").removesuffix("\r")
    if not data:
        raise _Usage("--password-stdin: no password on stdin")
    _check_encodable(data, "--password-stdin: the password")
    return data


def _check_encodable(password: str, what: str) -> None:
    """A password goes to the registry as UTF-8; bytes that are not UTF-8 reach Python as
    lone surrogates (``surrogateescape``), which would fail deep inside the request."""
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise _Usage(f"{what} is not valid UTF-8") from None


def credentials_from(args: argparse.Namespace, stdin: TextIO | None) -> Credentials | None:
    """``-u`` with ``--password-stdin``, or with a prompt on a TTY; else a usage error."""
    if args.password_stdin and not args.username:
        raise _Usage("--password-stdin needs --username/-u")
    if not args.username:
        return None
    if args.password_stdin:
        password = read_password(stdin)
    elif stdin is None or not _isatty(stdin):
        raise _Usage("-u needs --password-stdin when stdin is not a terminal")
    else:
        password = _ask_password(args.username)
    credentials = Credentials(args.username, password)
    for secret in sent_secrets(credentials):
        add_secret(secret)  # out of every log line from now on, the debug log's included
    return credentials


def config_credentials(ref: str, auth_file: str | None = None) -> Credentials | None:
    """Without ``-u``: what a login left for ``ref`` in the auth files skopeo reads
    (``stages/_authfile.py``; ``auth_file``: only that one); cut out of every log line
    from now on, as ``-u``'s password is."""
    credentials = auth_file_credentials(ref, auth_file=auth_file)
    if credentials is None:
        return None
    for secret in sent_secrets(credentials):
        add_secret(secret)
    log.debug("credentials from an auth file", ref=ref, source=credentials.source)
    return credentials


def _ask_password(username: str) -> str:
    """The prompt on the terminal; a stop signal here raises ``Terminated`` (see
    ``stop_signals_raise``), so that getpass turns echo back on."""
    try:
        password = getpass.getpass(f"Password for {username}: ")
    except EOFError:  # Ctrl-D
        password = ""
    if not password:
        raise _Usage("no password given")
    _check_encodable(password, "the password")
    return password


def _renderer(args: argparse.Namespace, stdout: TextIO) -> ProgressRenderer:
    if args.json:
        return JsonProgress(stdout)
    if args.quiet:
        return QuietProgress(stdout)
    if _isatty(stdout):
        return TtyProgress(stdout)
    return PlainProgress(stdout)


def proxy_from_environment() -> ProxySettings:
    """``HTTPS_PROXY``, ``HTTP_PROXY`` and ``NO_PROXY`` (or their lower-case forms) as
    docker reads them; a setting that is no proxy URL is a usage error naming it. The
    proxies' passwords are cut out of every log line from now on."""
    try:
        proxy = ProxySettings.from_environment(os.environ)
    except UsageError as exc:
        raise _Usage(exc.message) from None
    for secret in proxy.secrets():
        add_secret(secret)
    return proxy


def _cmd_pull(args: argparse.Namespace) -> int:
    renderer = _renderer(args, sys.stdout)  # writes nothing until an event or the end
    where = _doing(args)
    ref = _as_reported(args.ref)
    try:
        proxy = proxy_from_environment()  # usage errors before any work
        credentials = credentials_from(args, sys.stdin)
    except _Usage as exc:
        # ``main`` reports it as argparse's own (exit 2); a reader of ``--json`` still
        # gets the stream's last line, as for the usage errors the pull finds itself.
        renderer.fail(ref, UsageError(str(exc)), str(exc))
        raise
    except Exception as exc:  # the entry point reports on one line, never a traceback
        return _pull_failed(renderer, ref, where, exc, ())
    secrets = (*(sent_secrets(credentials) if credentials else ()), *proxy.secrets())
    registry = RegistryOptions(
        ca_file=args.ca_file,
        insecure_registries=tuple(args.insecure_registry),
        credentials=credentials,
        user_agent=f"{PROG}/{version()}",
        proxy=proxy,
    )
    if isinstance(renderer, TtyProgress) and _isatty(sys.stderr):
        # Logs on the same terminal go above the progress block, not into it.
        logs = cast(TextIO, LogsAboveProgress(renderer, sys.stderr))  # an io.TextIOBase
        configure_logging(
            level=args.log_level,
            json=True if args.log_json else None,
            stream=logs,
            defer_import=True,
        )
    options = PullOptions(
        platform=args.platform,
        max_concurrent_downloads=args.max_concurrent_downloads,
        layer_workers=args.layer_workers,
        limits=Limits(
            gzip_inflater=args.gzip_inflater,
            retries=args.retries,
            max_compression_ratio=args.max_inflate_ratio,
        ),
        registry=registry,
        progress=renderer,
        timeout_s=args.timeout,
    )
    try:
        # Before the store is opened, which creates it: a mistyped reference, a docker
        # config that cannot be read or a --ca-file that is no PEM file makes no store
        # where a mistyped --store points. The options first: the config may name a
        # credential helper, which may ask a person for a passphrase before a usage
        # error that needed none (check_options reads no credentials).
        parse_reference(args.ref)
        check_options(options)
        if (
            credentials is None
            and (credentials := config_credentials(args.ref, args.authfile)) is not None
        ):
            secrets = (*sent_secrets(credentials), *proxy.secrets())
            registry = dataclasses.replace(registry, credentials=credentials)
            options = dataclasses.replace(options, registry=registry)
        store, left = _open_for_pull(args.store, args.timeout, ref)
        if left is not None:
            options = dataclasses.replace(options, timeout_s=left)
        try:
            with stop_signals_deferred() as stop:
                result = trio.run(_pull_until_stopped, args.ref, store, options, stop)
        finally:
            renderer.close()
            store.close()
    except KeyboardInterrupt as interrupt:
        return _pull_interrupted(renderer, ref, interrupt)
    except Terminated as stopped:
        renderer.fail(ref, stopped, f"terminated ({stopped.signal.name})")
        error_line(f"terminated ({stopped.signal.name})")
        return 128 + stopped.signal
    except BaseExceptionGroup as group:
        # pull() promises one exception, never a group; if one escapes anyway, a Ctrl-C
        # inside it still means "interrupted" and anything else is reported on one line.
        if (interrupts := group.subgroup(KeyboardInterrupt)) is not None:
            return _pull_interrupted(renderer, ref, _first_leaf(interrupts))
        failure = _as_given(_first_leaf(group), args.timeout, ref)
        return _pull_failed(renderer, ref, where, failure, secrets)
    except Exception as exc:  # the entry point reports on one line, never a traceback
        return _pull_failed(renderer, ref, where, _as_given(exc, args.timeout, ref), secrets)
    settle_stop_signals()  # pulled: from here a stop signal could only contradict it
    renderer.finish(result)
    if renderer.write_error is not None:
        error_line(
            f"warning: the output to stdout is incomplete ({renderer.write_error.strerror}); "
            f"the image is in the store"
        )
    if renderer.broken:
        # Nobody reads stdout any more (`--json | head -1`); the image is in the store.
        silence_stdout()
    return EXIT_OK


def _as_given(exc: BaseException, timeout_s: float | None, ref: str) -> BaseException:
    """A ``PullTimeout`` said with the time the user gave (``--timeout``), not what was
    left of it for ``pull`` after the store's opening; any other failure as it is."""
    if isinstance(exc, PullTimeout) and exc.doing and timeout_s is not None:
        return timed_out(exc.ref or ref, timeout_s, exc.doing)
    return exc


def _open_for_pull(
    path: str | None, timeout_s: float | None, ref: str
) -> tuple[Store, float | None]:
    """The store, opened within ``--timeout`` (which counts from here: opening waits up to
    30 s for another process holding the store's lock), and the seconds left of it for
    the pull (None: no timeout). Raises ``PullTimeout`` when none are left."""
    if timeout_s is None:
        return Store.open(path), None
    give_up_at = time.monotonic() + timeout_s

    def out_of_time() -> None:
        if time.monotonic() >= give_up_at:
            raise opening_timed_out(ref, timeout_s)

    store = Store.open(path, check_cancelled=out_of_time)
    left = give_up_at - time.monotonic()
    if left <= 0:
        store.close()
        raise opening_timed_out(ref, timeout_s)
    return store, left


def _pull_interrupted(renderer: ProgressRenderer, ref: str, interrupt: BaseException) -> int:
    """Ctrl-C: the stderr line, and ``--json``'s last word (``"error": "KeyboardInterrupt"``),
    so that a reader of the stream always gets a final line to act on."""
    renderer.fail(ref, interrupt, "interrupted")
    error_line("interrupted")
    return EXIT_INTERRUPTED


async def _pull_until_stopped(
    ref: str, store: Store, options: PullOptions, stop: StopRequest
) -> PullResult:
    """``pull``, cancelled by SIGTERM or SIGHUP as Ctrl-C cancels it.

    Left to their default action, those signals end the process at once: partial files
    stay in ``ingest/`` until the next run sweeps them, ``--json`` never gets its error
    line, and layer worker processes stop only when they see it gone (``_workers``).
    Raises ``Terminated`` after a clean cancel. ``stop`` holds a signal that came while
    trio was starting (``stop_signals_deferred``), before this receiver opened.
    """
    stopped: list[int] = []
    result: PullResult | None = None
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        if (early := stop.take()) is not None:  # from here on, signals come to `signals`
            raise Terminated(early)
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    stopped.append(signum)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            result = await pull(ref, store=store, options=options)
            nursery.cancel_scope.cancel()
    if result is not None:  # finished before the signal stopped it: the image is stored
        return result
    assert stopped, "pull() returns, raises, or is cancelled by a stop signal"
    raise Terminated(stopped[0])


def _as_reported(text: str) -> str:
    """The reference as the pull's progress events spell it (``name:latest`` for a bare
    ``name``), so that a ``--json`` reader can match the final error line with them; the
    text as given when it is no reference at all."""
    try:
        return str(parse_reference(text))
    except ImagecError:
        return text


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _pull_failed(
    renderer: ProgressRenderer,
    ref: str,
    where: str,
    exc: BaseException,
    secrets: tuple[str, ...],
) -> int:
    """A failed pull: the stderr line, and the renderer's own last word (``--json``)."""
    renderer.fail(ref, exc, _message(exc, secrets))
    return _failed(where, exc, secrets)


def _failed(where: str, exc: BaseException, secrets: tuple[str, ...] = ()) -> int:
    """Report a failure on one line (traceback only in the debug log); pick the exit code."""
    log.debug("command failed", where=where, exc_info=exc)
    error_line(f"error: {where}: {_message(exc, secrets)}")
    return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILED


def _message(exc: BaseException, secrets: tuple[str, ...]) -> str:
    """What a failure says: ours as they are, anything else as an internal error; without
    the credentials (``secrets``: the password and the Basic credentials made of it,
    ``sent_secrets``) nor the tokens the pull was issued (``recent_tokens``), and
    redacted by the rule the stages apply to a server's text (``stages/_redact.py``) in
    case an exception quotes a signed URL or a token."""
    if isinstance(exc, ImagecError):
        message = str(exc)
    else:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        message = f"internal error: {detail} (--log-level debug shows more)"
    return redact(cut_tokens(cut_secrets(message, secrets), recent_tokens()))


# --- images, layers, inspect ---


def _existing_store(path: str | None) -> tuple[Path, Store | None]:
    """Where the store is, and the store for a command that only reads it, opened
    read-only: None when there is none there yet (``Store.open_existing``)."""
    where = store_path(path)
    return where, Store.open_existing(where)


def _find(path: str | None, ref: str) -> tuple[Store, ImageRecord]:
    where, store = _existing_store(path)
    if store is None:
        raise ImagecError(
            f"no image {ref!r} in the store at {where}: there is no store there yet "
            "(`imagec-pipe pull` creates it)",
            ref=ref,
        )
    record = store.find_image(ref)
    if record is None:
        raise ImagecError(
            f"no image {ref!r} in the store at {store.path}; `imagec-pipe images` lists them",
            ref=ref,
        )
    return store, record


def _cmd_images(args: argparse.Namespace) -> int:
    where, store = _existing_store(args.store)
    if store is None:
        error_line(f"no store at {where} yet: nothing pulled there")
    records = [] if store is None else store.list_images()
    # Images no reference names any more, as docker lists them (<none>): what `gc` frees.
    dangling = [] if store is None else store.dangling_images()
    if args.json:
        _print_json(
            [{**_image_json(r), "dangling": False} for r in records]
            + [{**_image_json(r), "dangling": True} for r in dangling]
        )
        return EXIT_OK
    # DIGEST is what the reference resolved to (docker's repo digest: the index's for a
    # multi-platform tag); SIZE is config plus compressed layers, as stored.
    named = [(r.ref, r) for r in records] + [("<none>", r) for r in dangling]
    rows = [
        [name, r.image_id.short, str(r.resolved_digest), _ago(r.pulled_at), human_size(r.size)]
        for name, r in named
    ]
    _print_table(["REFERENCE", "IMAGE ID", "DIGEST", "PULLED", "SIZE"], rows)
    return EXIT_OK


def _cmd_layers(args: argparse.Namespace) -> int:
    store, record = _find(args.store, args.ref)
    layers = store.image_layers(record)
    if args.json:
        _print_json([to_jsonable(layer) for layer in layers])
        return EXIT_OK
    rows = [
        [
            str(layer.digest),
            str(layer.diff_id),
            human_size(layer.size),
            "" if layer.uncompressed_size is None else human_size(layer.uncompressed_size),
            layer.media_type,
        ]
        for layer in layers
    ]
    _print_table(["DIGEST", "DIFF ID", "SIZE", "UNCOMPRESSED", "MEDIA TYPE"], rows)
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace) -> int:
    store, record = _find(args.store, args.ref)
    out = {
        "record": _image_json(record),
        "manifest": _json_blob(store, record.manifest_digest),
        "config": _json_blob(store, record.image_id),
    }
    if record.resolved_digest != record.manifest_digest:
        out["index"] = _json_blob(store, record.resolved_digest)
    _print_json(out)
    return EXIT_OK


_UNUSED_MISSING = "no reference uses them; `imagec-pipe gc` removes their records\n"


def _cmd_verify(args: argparse.Namespace) -> int:
    """A store's blobs are trusted by later pulls once committed; this finds those that
    changed on disk since. Read-only unless ``--repair``."""
    where, store = _existing_store(args.store)
    if store is None:
        # Said on stderr, and the empty result printed, as `images` and `gc` do: a
        # script reading --json gets its object either way.
        error_line(f"no store at {where} yet: nothing to verify")
    checked, damage = (0, []) if store is None else store.verify(full=args.full)
    refs = sorted({ref for item in damage for ref in item.refs})
    # Before --repair, which may remove the index that tells them.
    platforms = {} if store is None else store.pull_platforms(refs)
    # A missing blob has no file to remove: pulling its images again puts it back.
    removed = args.repair and any(not item.missing for item in damage)
    if removed:
        with Store.open(where) as writable:
            writable.remove_damaged(damage)
    if args.json:
        _print_json(
            {
                "checked": checked,
                "damaged": [
                    {
                        "digest": str(item.digest),
                        "kind": item.kind,
                        "problem": item.problem,
                        "refs": list(item.refs),
                    }
                    for item in damage
                ],
                "removed": removed,
                # The --platform a pull of each reference needs to fetch its image again.
                "platforms": {ref: str(platform) for ref, platform in platforms.items()},
            }
        )
        return EXIT_FAILED if damage else EXIT_OK
    lines = [f"{item.digest}: {item.kind}: {item.problem}\n" for item in damage]
    summary = f"{checked} blobs checked in {where}: {len(damage) or 'none'} damaged\n"
    again = _pull_again(refs, platforms)
    if removed:
        summary += "removed the damaged blobs"
        summary += f"; pull again: {again}\n" if refs else "\n"
    elif any(not item.missing for item in damage):
        summary += "run `imagec-pipe verify --repair` to remove them"
        summary += f", then pull again: {again}\n" if refs else "\n"
    elif damage:  # missing only: nothing to remove
        summary += f"pull again: {again}\n" if refs else _UNUSED_MISSING
    _write_out("".join(lines) + summary)
    return EXIT_FAILED if damage else EXIT_OK


def _pull_again(refs: list[str], platforms: dict[str, Platform]) -> str:
    """The pulls ``verify`` advises: each reference, with the ``--platform`` its image
    was pulled for where a pull without one would fetch another platform's image
    (``Store.pull_platforms``); separated by ``;`` then, so that each option stays with
    its reference."""
    if not platforms:
        return " ".join(refs)
    return "; ".join(
        f"{ref} --platform {platforms[ref]}" if ref in platforms else ref for ref in refs
    )


def _cmd_rmi(args: argparse.Namespace) -> int:
    """docker rmi: ``Untagged:`` and ``Deleted:`` lines, or one JSON object."""
    where = store_path(args.store)
    if Store.open_existing(where) is None:  # opening it to write would create it
        # Every REF named, as Store.remove_images names each one it does not find.
        raise ImagecError(
            f"no image {', '.join(repr(ref) for ref in args.refs)} in the store at {where}: "
            "there is no store there yet (`imagec-pipe pull` creates it)",
            ref=args.refs[0],
        )
    with Store.open(where) as store:
        removal = store.remove_images(args.refs)
    _print_removal(removal, json_output=args.json, total=False, done="the images are removed")
    return EXIT_OK


def _cmd_prune(args: argparse.Namespace) -> int:
    """docker image prune: what was removed, and the space reclaimed."""
    where = store_path(args.store)
    if Store.open_existing(where) is None:
        error_line(f"no store at {where} yet: nothing to prune")
        removal = Removal()
    else:
        with Store.open(where) as store:
            removal = store.prune()
    _print_removal(removal, json_output=args.json, total=True, done="the store is pruned")
    return EXIT_OK


def _print_removal(removal: Removal, *, json_output: bool, total: bool, done: str) -> None:
    """What ``rm`` or ``gc`` removed. It is removed by now: output that cannot be written
    (``> file`` on a full disk) is a warning saying so (``done``), as a pull's is, not a
    failure that reads as if nothing was removed and that a script would retry (an ``rm``
    run again finds no image and fails)."""
    settle_stop_signals()  # removed: from here a stop signal could only contradict it
    if json_output:
        text = json.dumps(to_jsonable(removal), indent=2) + "\n"
    else:
        lines = [f"Untagged: {ref}\n" for ref in removal.untagged]
        lines += [f"Deleted: {digest}\n" for digest in removal.deleted_blobs]
        if total:
            lines.append(f"Total reclaimed space: {human_size(removal.reclaimed_bytes)}\n")
        text = "".join(lines)
    _write_out(text, done=done)


def _json_blob(store: Store, digest: Digest) -> Any:
    data = store.read_blob(digest)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ImagecError(f"blob {digest} in the store is not JSON", digest=str(digest)) from exc


def _image_json(record: ImageRecord) -> Any:
    return to_jsonable(record)


def _print_json(value: Any) -> None:
    _write_out(json.dumps(value, indent=2) + "\n")


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("   ".join(cells).rstrip() + "\n")
    _write_out("".join(lines))


def _write_out(text: str, *, done: str | None = None) -> None:
    """A command's output, flushed now: a failure (a full disk under ``> file``) is then
    reported as such here, not as an internal error, nor lost at the exit's flush.
    EPIPE (``| head``) stays a ``BrokenPipeError`` for ``main`` to end quietly.

    ``done``: the command's work is done whatever happens to its output (``rm``, ``gc``);
    a failure is then a warning ending with it, and the command succeeds. A reader that
    went away (EPIPE) then needs no warning, as for a pull: nobody reads any more."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        if done is None:
            raise
        silence_stdout()
    except OSError as exc:
        if done is None:
            raise ImagecError(f"cannot write the output to stdout: {exc.strerror or exc}") from exc
        error_line(f"warning: the output to stdout is incomplete ({exc.strerror or exc}); {done}")


def _ago(when: datetime) -> str:
    """``3 minutes ago``, as docker's CREATED column."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = max(0, int((datetime.now(UTC) - when).total_seconds()))
    for unit, size in (("year", 365 * 86400), ("month", 30 * 86400), ("week", 7 * 86400),
                       ("day", 86400), ("hour", 3600), ("minute", 60)):  # fmt: skip
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "less than a minute ago"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(ended(main()))
