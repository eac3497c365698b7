"""The command line: parsing, usage errors, exit codes, and the store commands.

``main(argv)`` is driven in-process with a store in ``tmp_path``. The pull itself is
replaced by a scripted stand-in (``fake_pull``) so that every exit path can be forced;
the end-to-end pulls against the real registry live in tests/test_pull*.py.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import gzip
import hashlib
import io
import json
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog

from pipeline import _cli
from pipeline._cli import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    main,
    read_password,
)
from pipeline._store import Store
from stages._config import Credentials
from stages._errors import AuthError, InvalidReference, NotFound, UsageError
from stages._events import LayerTimings, ProgressEvent
from stages._manifest import ResolvedImage
from stages._redact import remember_token
from stages._reference import Reference
from stages._types import Descriptor, Digest, MediaType, Platform

REPO_ROOT = Path(__file__).resolve().parent.parent
REF = "127.0.0.1:5000/team/app:1.0"


@pytest.fixture
def store_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("IMAGEC_PIPE_STORE", raising=False)
    return tmp_path / "store"


class TtyStringIO(io.StringIO):
    def isatty(self) -> bool:
        return True


# --- usage errors: exit 2, argparse's usage line and a message ---


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required: COMMAND"),
        (["fetch", "alpine"], "invalid choice: 'fetch'"),
        (["pull"], "required: REF"),
        (["--store", "/tmp/x", "images"], "invalid choice"),  # options go after the command
        (["pull", "alpine", "--platform", "linux"], "not of the form os/arch"),
        (["pull", "alpine", "--platform", "linux/amd64/v8/x"], "not of the form os/arch"),
        (["pull", "alpine", "--platform", " linux/amd64"], "not of the form os/arch"),
        (["pull", "alpine", "--platform", "linux/\u00e4md64"], "not of the form os/arch"),
        (
            ["pull", "alpine", "--platform", "linux/amd64/v9"],
            "linux/amd64/v9: amd64 has no variant v9; its variants are v1, v2, v3, v4",
        ),
        (["pull", "alpine", "--platform", "linux/arm/v9"], "its variants are v5, v6, v7, v8"),
        (["pull", "alpine", "--platform", "linux/arm64/v7"], "arm64 has no variant v7"),
        (["pull", "alpine", "--max-concurrent-downloads", "0"], "must be at least 1"),
        (["pull", "alpine", "--max-concurrent-downloads", "x"], "not a whole number"),
        (["pull", "alpine", "--retries", "-1"], "must be at least 0"),
        (["pull", "alpine", "--retries", "2.5"], "not a whole number"),
        (["pull", "alpine", "--max-inflate-ratio", "0"], "must be at least 1"),
        (["pull", "alpine", "--timeout", "10 min"], "not a duration such as 90, 90s, 10m"),
        (["pull", "alpine", "--timeout", "1h30"], "not a duration such as 90, 90s, 10m"),
        (["pull", "alpine", "--timeout", "0s"], "not a duration above 0"),
        (["pull", "alpine", "--timeout", "5M"], "not a duration such as"),  # months?
        (["pull", "alpine", "--timeout", "1_000"], "not a duration such as"),
        (["pull", "alpine", "--timeout", "\u0661\u0660"], "not a duration such as"),
        (["pull", "alpine", "--timeout=-5"], "not a duration above 0"),
        (["pull", "alpine", "--json", "--quiet"], "not allowed with argument"),
        (["pull", "alpine", "--ca-file", "/nonexistent/ca.pem"], "not a readable file"),
        (["pull", "alpine", "--insecure-registry", "http://reg:5000"], "HOST, HOST:PORT"),
        (["pull", "alpine", "--insecure-registry", ""], "HOST, HOST:PORT"),
        (["pull", "alpine", "--insecure-registry", "10.0.0.0/33"], "a CIDR network"),
        (["pull", "alpine", "--log-level", "loud"], "not a log level"),
        (["pull", "alpine", "--bogus"], "unrecognized arguments: --bogus"),
        (["images", "extra"], "unrecognized arguments: extra"),
        (["layers"], "required: REF"),
        (["inspect"], "required: REF"),
        (["pull", "alpine", "--store", ""], "the store directory must not be empty"),
        (["images", "--store", " "], "the store directory must not be empty"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: imagec-pipe")
    assert message in err


def test_password_stdin_without_user(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    assert main(["pull", REF, "--store", str(store_dir), "--password-stdin"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: imagec-pipe pull")
    assert "--password-stdin needs --username/-u" in err


def test_user_without_password_source_and_no_tty(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["pull", REF, "--store", str(store_dir), "-u", "ci"]) == EXIT_USAGE
    assert "-u needs --password-stdin when stdin is not a terminal" in capsys.readouterr().err


def test_empty_password_on_stdin(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    argv = ["pull", REF, "--store", str(store_dir), "-u", "ci", "--password-stdin"]
    assert main(argv) == EXIT_USAGE
    assert "no password on stdin" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out == f"imagec-pipe {_cli.version()}\n"
    assert out.split()[1][0].isdigit()


def test_version_is_the_distributions() -> None:
    """The CLI reads pipeline.__version__ (cheap); pyproject.toml's must say the same."""
    import importlib.metadata
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert _cli.version() == pyproject["project"]["version"]
    assert _cli.version() == importlib.metadata.version("imagec-pipe")


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pull", "--help"]) == EXIT_OK
    out = capsys.readouterr().out
    for option in ("--store", "--platform", "--max-concurrent-downloads", "--ca-file",
                   "--insecure-registry", "--password-stdin", "--json", "--quiet",
                   "--log-level", "--log-json"):  # fmt: skip
        assert option in out


# --- passwords ---


@pytest.mark.parametrize(
    ("piped", "password"),
    [
        ("s3cret\n", "s3cret"),
        ("s3cret", "s3cret"),
        ("s3cret\r\n", "s3cret"),
        ("s3cret\n\n", "s3cret\n"),  # only one newline is stripped
        (" s3 cret \n", " s3 cret "),  # other whitespace is part of the password
    ],
)
def test_read_password_strips_one_newline(piped: str, password: str) -> None:
    assert read_password(io.StringIO(piped)) == password


def test_password_stdin_closed_is_a_usage_error(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Started with `<&-`, Python has None for stdin: that was an internal error.
    monkeypatch.setattr(sys, "stdin", None)
    argv = ["pull", REF, "--store", str(store_dir), "-u", "ci", "--password-stdin"]
    assert main(argv) == EXIT_USAGE
    assert "--password-stdin: stdin is closed" in capsys.readouterr().err


def test_a_password_that_is_not_utf8_is_a_usage_error(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Bytes that are not UTF-8 arrive as lone surrogates, which failed inside the request.
    piped = io.TextIOWrapper(io.BytesIO(b"\xff\xfepw\n"), errors="surrogateescape")
    monkeypatch.setattr(sys, "stdin", piped)
    argv = ["pull", REF, "--store", str(store_dir), "-u", "ci", "--password-stdin"]
    assert main(argv) == EXIT_USAGE
    assert "the password is not valid UTF-8" in capsys.readouterr().err


def test_ctrl_d_at_the_prompt_is_no_password(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def end_of_input(prompt: str) -> str:
        raise EOFError

    monkeypatch.setattr(_cli.getpass, "getpass", end_of_input)
    monkeypatch.setattr(sys, "stdin", TtyStringIO())
    assert main(["pull", REF, "--store", str(store_dir), "-u", "ci"]) == EXIT_USAGE
    assert "no password given" in capsys.readouterr().err


@pytest.mark.parametrize("output", [[], ["--json"]], ids=["plain", "json"])
def test_sigterm_at_the_prompt_restores_the_terminal_and_exits_143(
    tmp_path: Path, output: list[str]
) -> None:
    """getpass turns echo off and back on in a finally that SIGTERM's default action never
    ran: the user's shell was left without echo. Run on a pseudo-terminal. With
    ``--json``, the stream ends with its error line, as a pull stopped later does: the
    signal came before the pull's renderer had written anything, and nothing did."""
    import pty
    import termios

    leader, follower = pty.openpty()
    try:
        argv = ["pull", REF, "-u", "ci", "--store", str(tmp_path / "store"), *output]
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline._cli", *argv],
            stdin=follower,
            stdout=follower,
            stderr=subprocess.PIPE,
            cwd=REPO_ROOT,
            preexec_fn=_own_terminal,  # getpass talks to /dev/tty: the pty must be it
        )
        seen = b""
        deadline = time.monotonic() + 30
        while b"Password for ci:" not in seen and time.monotonic() < deadline:
            if select.select([leader], [], [], 0.5)[0]:
                seen += os.read(leader, 1024)
        assert b"Password for ci:" in seen
        assert not termios.tcgetattr(follower)[3] & termios.ECHO  # getpass turned it off
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 143
        assert err.decode().strip() == "imagec-pipe: terminated (SIGTERM)"
        assert termios.tcgetattr(follower)[3] & termios.ECHO  # and back on
        while select.select([leader], [], [], 0.5)[0]:  # what it wrote after the prompt
            seen += os.read(leader, 1024)
        # The JSON line follows the prompt on its line: getpass never got a newline.
        after = seen.decode().partition("Password for ci: ")[2]
        events = [json.loads(text) for text in after.splitlines() if text.strip()]
        if output:
            assert events == [
                {"event": "error", "ref": REF, "digest": None, "error": "Terminated",
                 "message": "terminated (SIGTERM)"}
            ]  # fmt: skip
        else:
            assert events == []
    finally:
        os.close(leader)
        os.close(follower)


def _own_terminal() -> None:
    """In the child: a session of its own whose controlling terminal is its stdin."""
    import fcntl
    import termios

    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


# What the ``imagec-pipe`` console script runs (pyproject.toml), from these sources.
CONSOLE_SCRIPT = [
    sys.executable,
    "-c",
    "import sys; from pipeline._main import main; sys.exit(main())",
]


def _json_usage_error_ends_the_stream(
    done: subprocess.CompletedProcess[bytes], store: Path, message: str
) -> None:
    """A ``pull --json`` refused after parsing: exit 2 with argparse's usage and the
    message on stderr, and the stream's one line, ``error``, naming the same message."""
    err = done.stderr.decode()
    assert done.returncode == EXIT_USAGE, err
    assert err.startswith("usage: imagec-pipe pull"), err
    assert err.splitlines()[-1] == f"imagec-pipe pull: error: {message}"
    assert [json.loads(line) for line in done.stdout.decode().splitlines()] == [
        {"event": "error", "ref": REF, "digest": None, "error": "UsageError", "message": message}
    ]
    assert not store.exists()


@pytest.mark.parametrize(
    ("options", "stdin", "environment", "message"),
    [
        (["--password-stdin"], b"pw\n", {}, "--password-stdin needs --username/-u"),
        (["-u", "ci"], b"pw\n", {}, "-u needs --password-stdin when stdin is not a terminal"),
        (["-u", "ci", "--password-stdin"], b"\n", {}, "--password-stdin: no password on stdin"),
        (["-u", "ci", "--password-stdin"], "<&-", {}, "--password-stdin: stdin is closed"),
        (  # opened to write: that was an internal error (exit 1)
            ["-u", "ci", "--password-stdin"],
            "0>file",
            {},
            "--password-stdin: cannot read stdin: Bad file descriptor",
        ),
        (
            ["-u", "ci", "--password-stdin"],
            b"\xffpw\n",
            {},
            "--password-stdin: the password is not valid UTF-8",
        ),
        (  # a locale whose stdin is strict: the read failed, an internal error (exit 1)
            ["-u", "ci", "--password-stdin"],
            b"\xffpw\n",
            {"PYTHONIOENCODING": "utf-8:strict"},
            "--password-stdin: the password is not valid UTF-8",
        ),
    ],
    ids=[
        "stdin-without-user",
        "user-without-tty",
        "empty",
        "closed",
        "write-only",
        "not-utf8",
        "strict",
    ],
)
def test_a_json_pull_refused_after_parsing_ends_with_its_error_line(
    tmp_path: Path,
    options: list[str],
    stdin: bytes | str,
    environment: dict[str, str],
    message: str,
) -> None:
    """A script reading ``pull --json`` got no line at all for these usage errors, where
    one found by the pull itself (``--ca-file`` no PEM file) or a failed pull ends the
    stream with its ``error`` line: it had nothing to act on but the exit status."""
    store = tmp_path / "store"
    command = [*CONSOLE_SCRIPT, "pull", REF, "--json"]
    command += ["--store", str(store), *options]
    if isinstance(stdin, str):  # a shell's redirection of it: `<&-` closes it
        command = ["sh", "-c", f'cd "$0" && exec "$@" {stdin}', str(tmp_path), *command]
    done = subprocess.run(
        command,
        input=stdin if isinstance(stdin, bytes) else None,
        stdin=subprocess.DEVNULL if isinstance(stdin, str) else None,
        capture_output=True,
        env={**cli_env(), **environment},
        timeout=60,
    )
    _json_usage_error_ends_the_stream(done, store, message)


@pytest.mark.parametrize(
    ("argv", "ref", "message"),
    [
        (["pull", REF, "--json", "--bogus"], REF, "unrecognized arguments: --bogus"),
        (["pull", "--json"], None, "the following arguments are required: REF"),
        (
            ["pull", REF, "--json", "--max-concurrent-downloads", "abc"],
            REF,
            "argument --max-concurrent-downloads: 'abc' is not a whole number",
        ),
        (  # refused before argparse reached the REF; --json shortened, as argparse allows
            ["pull", "--authfile", "", "--js", REF],
            REF,
            "argument --authfile: the auth file must not be empty",
        ),
        (
            ["pull", "--retries", "-1", "alpine", "--json"],
            "docker.io/library/alpine:latest",  # as the pull's own lines spell it
            "argument --retries: -1 must be at least 0",
        ),
        (
            ["pull", REF, "--json", "--quiet"],
            REF,
            "argument -q/--quiet: not allowed with argument --json",
        ),
        (  # --json is no user name: argparse takes it as the option
            ["pull", REF, "-u", "--json"],
            REF,
            "argument -u/--username: expected one argument",
        ),
    ],
    ids=[
        "unknown-option",
        "no-ref",
        "bad-number",
        "empty-authfile",
        "before-ref",
        "quiet",
        "no-user",
    ],
)
def test_a_json_pull_that_argparse_refuses_ends_with_its_error_line(
    argv: list[str], ref: str | None, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse's own usage errors wrote only its usage to stderr: a script reading
    ``pull --json`` got no line at all, where the usage errors found after parsing end
    the stream with its ``error`` line. Now they end it with the same line."""
    assert main(argv) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert err.startswith("usage: imagec-pipe"), err
    assert err.splitlines()[-1].endswith(f": error: {message}"), err
    assert [json.loads(line) for line in out.splitlines()] == [
        {"event": "error", "ref": ref, "digest": None, "error": "UsageError", "message": message}
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["pull", REF, "--bogus"],
        ["pull", REF, "--max-concurrent-downloads", "abc"],
        ["images", "--json", "--bogus"],  # one document on success, nothing on any failure
        ["verify", "--json", "--bogus"],
        ["rm", "--json"],
        ["gc", "--json", "x"],
    ],
)
def test_argparse_errors_print_nothing_on_stdout_without_pull_json(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: imagec-pipe"), err


def test_a_json_pull_that_argparse_refuses_ends_its_stream_from_the_console_script(
    tmp_path: Path,
) -> None:
    """The same through the entry point a script runs."""
    store = tmp_path / "store"
    command = [*CONSOLE_SCRIPT, "pull", REF, "--json", "--store", str(store)]
    command += ["--max-concurrent-downloads", "abc"]
    done = subprocess.run(command, capture_output=True, env=cli_env(), timeout=60)
    _json_usage_error_ends_the_stream(
        done, store, "argument --max-concurrent-downloads: 'abc' is not a whole number"
    )


def test_a_json_pull_whose_prompt_got_ctrl_d_ends_with_its_error_line(tmp_path: Path) -> None:
    """On a terminal: Ctrl-D at the password prompt, with ``--json``."""
    import pty

    leader, follower = pty.openpty()
    store = tmp_path / "store"
    argv = ["pull", REF, "--json", "--store", str(store), "-u", "ci"]
    try:
        with subprocess.Popen(
            [*CONSOLE_SCRIPT, *argv],
            stdin=follower,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cli_env(),
            preexec_fn=_own_terminal,  # getpass talks to /dev/tty: the pty must be it
        ) as proc:
            seen = b""
            deadline = time.monotonic() + 30
            while b"Password for ci:" not in seen and time.monotonic() < deadline:
                if select.select([leader], [], [], 0.5)[0]:
                    seen += os.read(leader, 1024)
            assert b"Password for ci:" in seen
            os.write(leader, b"\x04")
            out, err = proc.communicate(timeout=30)
    finally:
        os.close(leader)
        os.close(follower)
    done = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    _json_usage_error_ends_the_stream(done, store, "no password given")


def test_prompt_on_a_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    prompts: list[str] = []

    def fake_getpass(prompt: str) -> str:
        prompts.append(prompt)
        return "typed"

    monkeypatch.setattr(_cli.getpass, "getpass", fake_getpass)
    args = _cli.build_parser().parse_args(["pull", REF, "-u", "ci"])
    assert _cli.credentials_from(args, TtyStringIO()) == Credentials("ci", "typed")
    assert prompts == ["Password for ci: "]


# --- pull: options handed over, renderers, exit codes (the pull is scripted) ---


@dataclass(frozen=True)
class FakeLayer:
    digest: Digest
    diff_id: Digest
    media_type: str
    size: int
    uncompressed_size: int | None
    status: str
    timings: LayerTimings = field(default_factory=LayerTimings)


@dataclass(frozen=True)
class FakeTimings:
    total_s: float = 1.0


@dataclass(frozen=True)
class FakeResult:
    reference: str
    resolved_digest: Digest
    manifest_digest: Digest
    image_id: Digest
    platform: Platform
    layers: tuple[FakeLayer, ...]
    timings: FakeTimings
    bytes_downloaded: int
    up_to_date: bool


LAYER = Digest.from_hex("a" * 64)
RESULT = FakeResult(
    REF,
    Digest.from_hex("1" * 64),
    Digest.from_hex("2" * 64),
    Digest.from_hex("3" * 64),
    Platform("linux", "amd64"),
    (FakeLayer(LAYER, Digest.from_hex("b" * 64), MediaType.OCI_LAYER_GZIP, 10, 20, "downloaded"),),
    FakeTimings(),
    10,
    False,
)


def install_fake_pull(
    monkeypatch: pytest.MonkeyPatch, behaviour: Callable[[], Any] | None = None
) -> list[tuple[str, Any, Any]]:
    """Replace the CLI's pull with a scripted one; return the calls it receives."""
    calls: list[tuple[str, Any, Any]] = []

    async def pull(ref: str, *, store: Any, options: Any) -> Any:
        calls.append((ref, store, options))
        sink = options.progress
        sink(ProgressEvent("resolving", REF))
        sink(ProgressEvent("layer-waiting", REF, str(LAYER), total=10))
        sink(ProgressEvent("layer-downloading", REF, str(LAYER), 10, 10))
        if behaviour is not None:
            behaviour()
        sink(ProgressEvent("layer-complete", REF, str(LAYER), 10, 10))
        sink(ProgressEvent("pull-complete", REF, str(RESULT.resolved_digest)))
        return RESULT

    monkeypatch.setattr(_cli, "pull", pull)
    return calls


def test_pull_hands_every_option_over(
    store_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import trustme

    calls = install_fake_pull(monkeypatch)
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))  # read before the store is opened
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret\n"))
    argv = ["pull", REF, "--store", str(store_dir), "--platform", "linux/arm64/v8",
            "--max-concurrent-downloads", "7", "--ca-file", str(ca),
            "--insecure-registry", "reg.internal", "--insecure-registry", "10.0.0.1:5000",
            "--insecure-registry", "192.168.0.0/16",
            "-u", "ci", "--password-stdin", "--quiet", "--gzip-inflater", "zlib",
            "--retries", "0", "--max-inflate-ratio", "5000", "--timeout", "1h30m"]  # fmt: skip
    assert main(argv) == EXIT_OK
    assert capsys.readouterr().out == f"{REF}\n"
    [(ref, store, options)] = calls
    assert ref == REF
    assert store.path == store_dir.absolute()
    assert options.platform == Platform("linux", "arm64", "v8")
    assert options.max_concurrent_downloads == 7
    assert options.registry.ca_file == ca
    assert options.registry.insecure_registries == (
        "reg.internal",
        "10.0.0.1:5000",
        "192.168.0.0/16",
    )
    assert options.registry.credentials == Credentials("ci", "s3cret")
    assert options.registry.user_agent.startswith("imagec-pipe/")
    assert options.limits.gzip_inflater == "zlib"
    assert options.limits.retries == 0
    assert options.limits.max_compression_ratio == 5000
    assert 5390 < options.timeout_s <= 5400  # what the store's opening left of 1h30m


def test_pull_defaults_and_store_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = install_fake_pull(monkeypatch)
    monkeypatch.setenv("IMAGEC_PIPE_STORE", str(tmp_path / "env-store"))
    assert main(["pull", REF, "-q"]) == EXIT_OK
    [(_, store, options)] = calls
    assert store.path == (tmp_path / "env-store").absolute()
    assert options.platform is None
    assert options.max_concurrent_downloads == 3
    assert options.limits.gzip_inflater == "auto"
    assert options.limits.retries == 4
    assert options.limits.max_compression_ratio == 1000
    assert options.timeout_s is None
    assert options.registry.credentials is None
    assert options.registry.insecure_registries == ()


def test_pull_json_lines(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install_fake_pull(monkeypatch)
    assert main(["pull", REF, "--store", str(store_dir), "--json"]) == EXIT_OK
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["event"] for line in lines] == [
        "resolving", "layer-waiting", "layer-downloading", "layer-complete", "pull-complete",
        "summary",
    ]  # fmt: skip
    assert lines[2] == {"event": "layer-downloading", "ref": REF, "digest": str(LAYER),
                        "current": 10, "total": 10}  # fmt: skip
    assert lines[-1]["image_id"] == str(RESULT.image_id)
    assert lines[-1]["layers"][0]["status"] == "downloaded"


def test_pull_plain_lines_when_not_a_tty(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install_fake_pull(monkeypatch)
    assert main(["pull", REF, "--store", str(store_dir)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert out.splitlines() == [
        "1.0: Pulling from team/app",
        "aaaaaaaaaaaa: Waiting",
        "aaaaaaaaaaaa: Downloading  10B/10B",
        "aaaaaaaaaaaa: Pull complete",
        f"Digest: {RESULT.resolved_digest}",
        f"Status: Downloaded newer image for {REF}",
        REF,
    ]


def test_pull_tty_progress(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install_fake_pull(monkeypatch)
    stdout = TtyStringIO()
    monkeypatch.setattr(sys, "stdout", stdout)
    assert main(["pull", REF, "--store", str(store_dir)]) == EXIT_OK
    out = stdout.getvalue()
    assert "\x1b[1A\r\x1b[2Kaaaaaaaaaaaa: Pull complete\n" in out
    assert out.endswith(f"Status: Downloaded newer image for {REF}\n{REF}\n")


def _raise(exc: BaseException) -> Callable[[], Any]:
    def behaviour() -> Any:
        raise exc

    return behaviour


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (
            NotFound("manifest unknown: no tag 1.0 in 127.0.0.1:5000/team/app", ref=REF),
            EXIT_FAILED,
            f"imagec-pipe: error: pulling {REF}: manifest unknown: no tag 1.0 in "
            "127.0.0.1:5000/team/app (127.0.0.1:5000/team/app:1.0)",
        ),
        (
            InvalidReference("reference 'A:b' has uppercase letters in its repository"),
            EXIT_FAILED,
            f"imagec-pipe: error: pulling {REF}: reference 'A:b' has uppercase letters in "
            "its repository",
        ),
        (
            UsageError("options contradict\neach other"),
            EXIT_USAGE,
            f"imagec-pipe: error: pulling {REF}: options contradict each other",
        ),
        (KeyboardInterrupt(), EXIT_INTERRUPTED, "imagec-pipe: interrupted"),
        (
            BaseExceptionGroup("leaked", [KeyboardInterrupt(), NotFound("x")]),
            EXIT_INTERRUPTED,
            "imagec-pipe: interrupted",
        ),
        (
            ExceptionGroup("leaked", [ExceptionGroup("inner", [NotFound("blob gone")])]),
            EXIT_FAILED,
            f"imagec-pipe: error: pulling {REF}: blob gone",
        ),
        (
            RuntimeError("bug"),
            EXIT_FAILED,
            f"imagec-pipe: error: pulling {REF}: internal error: RuntimeError: bug "
            "(--log-level debug shows more)",
        ),
    ],
)
def test_pull_failure_is_one_line_and_an_exit_code(
    exc: BaseException,
    code: int,
    line: str,
    store_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    install_fake_pull(monkeypatch, _raise(exc))
    assert main(["pull", REF, "--store", str(store_dir)]) == code
    captured = capsys.readouterr()
    assert captured.err == line + "\n"
    assert "Status:" not in captured.out
    assert not captured.out.endswith(f"{REF}\n")


def test_pull_error_never_shows_the_password(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install_fake_pull(monkeypatch, _raise(NotFound("token for ci:s3cret refused")))
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret\n"))
    argv = ["pull", REF, "--store", str(store_dir), "-u", "ci", "--password-stdin"]
    assert main(argv) == EXIT_FAILED
    captured = capsys.readouterr()
    assert "s3cret" not in captured.err + captured.out
    assert "ci:[redacted]" in captured.err


def test_an_internal_error_quoting_a_signed_url_is_reported_without_it(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Ours are redacted where the server's text enters them; anything else is not ours.
    install_fake_pull(monkeypatch, _raise(RuntimeError("GET https://cdn.example/b?sig=S1gn")))
    assert main(["pull", REF, "--store", str(store_dir), "--json"]) == EXIT_FAILED
    captured = capsys.readouterr()
    assert "S1gn" not in captured.out + captured.err
    assert "RuntimeError: GET https://cdn.example/b?[redacted]" in captured.err
    assert (
        "https://cdn.example/b?[redacted]" in json.loads(captured.out.splitlines()[-1])["message"]
    )


def test_a_token_the_pull_was_issued_is_cut_from_the_error_line_and_the_logs(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # An opaque token (not after "Bearer", not a JWT) quoted by an error that is not ours
    # went whole into the error line, the --json error and the debug log's traceback.
    token = "glpat-Xk2f9QmA7p3vR2"

    def fails() -> None:
        remember_token(token)  # as the token service's answer is read (fetch_token)
        raise RuntimeError(f"header value {token} refused")

    install_fake_pull(monkeypatch, fails)
    argv = ["pull", REF, "--store", str(store_dir), "--json",
            "--log-level", "debug", "--log-json"]  # fmt: skip
    assert main(argv) == EXIT_FAILED
    captured = capsys.readouterr()
    assert token not in captured.out + captured.err
    assert "RuntimeError: header value [redacted] refused" in captured.err.splitlines()[-1]
    assert "header value [redacted] refused" in json.loads(captured.out.splitlines()[-1])["message"]


def test_pull_debug_log_has_the_cause_but_no_secret(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install_fake_pull(monkeypatch, _raise(NotFound("no such tag")))
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret\n"))
    argv = ["pull", REF, "--store", str(store_dir), "-u", "ci", "--password-stdin",
            "--log-level", "debug", "--log-json"]  # fmt: skip
    assert main(argv) == EXIT_FAILED
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"imagec-pipe: error: pulling {REF}: no such tag"
    records = [json.loads(line) for line in err[:-1]]  # every log line is JSON
    [record] = [r for r in records if r["event"] == "command failed"]
    assert record["level"] == "debug"
    assert record["where"] == f"pulling {REF}"
    assert "NotFound" in json.dumps(record["exception"])
    assert not any("s3cret" in line for line in err)


def test_pull_debug_log_never_shows_the_password_a_registry_quoted_back(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A registry's error message may quote the password; the stderr line was redacted,
    # the traceback in the debug log was not.
    install_fake_pull(monkeypatch, _raise(AuthError("password s3cret-X is expired for ci")))
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret-X\n"))
    argv = ["pull", REF, "--store", str(store_dir), "-u", "ci", "--password-stdin",
            "--log-level", "debug", "--log-json"]  # fmt: skip
    assert main(argv) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "s3cret-X" not in err
    assert "password [redacted] is expired" in err
    [record] = [json.loads(line) for line in err.splitlines() if "command failed" in line]
    assert "[redacted]" in json.dumps(record["exception"])


def test_a_short_password_is_cut_out_where_it_stands_not_out_of_words(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A password "e" was cut out of every word of the error line and of every log line:
    # "127.0.0.1:5000/t[redacted]am/app:1.0" (stages/_redact.py, cut_secret).
    install_fake_pull(monkeypatch, _raise(AuthError("password e is expired for ci")))
    monkeypatch.setattr(sys, "stdin", io.StringIO("e\n"))
    argv = ["pull", REF, "--store", str(store_dir), "-u", "ci", "--password-stdin",
            "--log-level", "debug", "--log-json"]  # fmt: skip
    assert main(argv) == EXIT_FAILED
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"imagec-pipe: error: pulling {REF}: password [redacted] is expired for ci"
    [record] = [json.loads(line) for line in err if "command failed" in line]
    assert record["where"] == f"pulling {REF}"
    assert "password [redacted] is expired for ci" in json.dumps(record["exception"])
    assert " e " not in " ".join(err)


def test_credentials_quoted_back_encoded_are_cut_from_the_error_line_and_the_log(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Only the password as typed was cut: quoted as the base64 of the Basic credentials
    # without the word "Basic", or percent-encoded, it reached the error line and the
    # debug log's traceback.
    basic = base64.b64encode(b"ci:p@ss w0rd!").decode()
    said = f"cannot decode {basic} nor {basic.rstrip('=')}; got ci:p%40ss+w0rd%21"
    install_fake_pull(monkeypatch, _raise(AuthError(said)))
    monkeypatch.setattr(sys, "stdin", io.StringIO("p@ss w0rd!\n"))
    argv = ["pull", REF, "--store", str(store_dir), "-u", "ci", "--password-stdin",
            "--log-level", "debug", "--log-json"]  # fmt: skip
    assert main(argv) == EXIT_FAILED
    err = capsys.readouterr().err.splitlines()
    cut = "cannot decode [redacted] nor [redacted]; got ci:[redacted]"
    assert err[-1] == f"imagec-pipe: error: pulling {REF}: {cut}"
    [record] = [json.loads(line) for line in err if "command failed" in line]
    assert cut in json.dumps(record["exception"])
    for secret in (basic.rstrip("="), "p%40ss", "w0rd"):
        assert secret not in "\n".join(err)


def test_a_failed_json_pull_names_the_reference_as_its_progress_did(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The events said "…/app:latest", the error line the bare argument "…/app".
    install_fake_pull(monkeypatch, _raise(NotFound("no such repository")))
    assert main(["pull", "127.0.0.1:5000/team/app", "--store", str(store_dir), "--json"]) == 1
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (last["event"], last["ref"]) == ("error", "127.0.0.1:5000/team/app:latest")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_output_to_a_full_disk_is_said_plainly(store_dir: Path) -> None:
    # `images > file` on a full disk said "internal error: OSError".
    Store.open(store_dir)
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline._cli", "images", "--store", str(store_dir)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            timeout=60,
        )
    assert done.returncode == EXIT_FAILED
    assert done.stderr == (
        "imagec-pipe: error: listing images: cannot write the output to stdout: "
        "No space left on device\n"
    )


# --- images, layers, inspect ---


def test_images_on_an_empty_store(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["images", "--store", str(store_dir)]) == EXIT_OK
    assert capsys.readouterr().out.split() == ["REFERENCE", "IMAGE", "ID", "DIGEST", "PULLED",
                                               "SIZE"]  # fmt: skip
    assert main(["images", "--store", str(store_dir), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == []


def test_reading_commands_never_create_a_store(
    store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped --store lists nothing and says so, and leaves no empty store behind."""
    assert main(["images", "--store", str(store_dir)]) == EXIT_OK
    captured = capsys.readouterr()
    assert captured.out.split()[:2] == ["REFERENCE", "IMAGE"]
    assert (
        captured.err
        == f"imagec-pipe: no store at {store_dir.absolute()} yet: nothing pulled there\n"
    )
    for command in ("layers", "inspect"):
        assert main([command, REF, "--store", str(store_dir)]) == EXIT_FAILED
        assert "there is no store there yet" in capsys.readouterr().err
    assert not store_dir.exists()
    store_dir.mkdir()  # an empty directory (a mount point, say) stays empty
    assert main(["images", "--store", str(store_dir)]) == EXIT_OK
    assert "nothing pulled there" in capsys.readouterr().err
    assert list(store_dir.iterdir()) == []
    Store.open(store_dir)  # an empty store, which exists: listed without a word
    assert main(["images", "--store", str(store_dir)]) == EXIT_OK
    assert capsys.readouterr().err == ""


def test_store_commands_without_a_store_say_so_and_print_their_empty_result(
    store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As ``images`` (an empty list) and ``gc`` (nothing removed), ``verify`` prints its
    result for no store: nothing checked, nothing damaged. It printed nothing, so a
    script reading ``verify --json`` got no JSON where ``images --json`` and ``gc --json``
    gave theirs. And ``rm A B`` names every REF it cannot find, not the first only."""
    where = store_dir.absolute()
    assert main(["verify", "--store", str(store_dir), "--json"]) == EXIT_OK
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {
        "checked": 0,
        "damaged": [],
        "removed": False,
        "platforms": {},
    }
    assert captured.err == f"imagec-pipe: no store at {where} yet: nothing to verify\n"
    assert main(["verify", "--store", str(store_dir), "--repair"]) == EXIT_OK
    captured = capsys.readouterr()
    assert captured.out == f"0 blobs checked in {where}: none damaged\n"
    assert "nothing to verify" in captured.err
    assert main(["gc", "--store", str(store_dir), "--json"]) == EXIT_OK
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {
        "untagged": [],
        "deleted_images": [],
        "deleted_blobs": [],
        "reclaimed_bytes": 0,
    }
    assert captured.err == f"imagec-pipe: no store at {where} yet: nothing to prune\n"
    assert main(["rm", "alpine", "busybox:1", "--store", str(store_dir)]) == EXIT_FAILED
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"no image 'alpine', 'busybox:1' in the store at {where}: there is no store" in (
        captured.err
    )
    assert not store_dir.exists()


@pytest.mark.parametrize("command", ["layers", "inspect"])
@pytest.mark.parametrize(
    "ref", [REF, "sha256:0123456789ab", "0123456789abcdef", "docker.io/library/alpine"]
)
def test_unknown_image_exits_1(
    command: str, ref: str, store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _needs_parse_reference()
    assert main([command, ref, "--store", str(store_dir)]) == EXIT_FAILED
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("imagec-pipe: error: ")
    assert f"no image {ref!r} in the store at {store_dir.absolute()}" in line


def test_malformed_reference_in_layers_exits_1(
    store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _needs_parse_reference()
    assert main(["layers", "Team/App", "--store", str(store_dir)]) == EXIT_FAILED
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("imagec-pipe: error: listing the layers of Team/App: ")


def test_store_that_cannot_be_opened_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert main(["images", "--store", str(not_a_dir)]) == EXIT_FAILED
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("imagec-pipe: error: listing images: ")
    assert "Traceback" not in line


@pytest.mark.parametrize(
    ("argv", "doing", "failed"),
    [
        (["images"], "listing images", None),
        (["layers", REF], f"listing the layers of {REF}", None),
        (["inspect", REF], f"inspecting {REF}", None),
        (["verify"], "verifying the store", "cannot verify the blobs in store {store}"),
        (["verify", "--repair"], "verifying the store", None),
        (["rm", REF], f"removing {REF}", "cannot remove images from store {store}"),
        (["gc"], "pruning the store", "cannot prune store {store}"),
        (["pull", "127.0.0.1:9/team/app:1"], "pulling 127.0.0.1:9/team/app:1",
         "cannot hold store {store} for a pull"),
    ],
)  # fmt: skip
def test_every_store_command_says_what_it_was_doing_when_it_fails(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    doing: str,
    failed: str | None,
) -> None:
    # verify's line read "imagec-pipe: error: verify: store path … is not a directory".
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert main([*argv, "--store", str(not_a_dir)]) == EXIT_FAILED
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"imagec-pipe: error: {doing}: store path {not_a_dir} exists and is")
    if failed is None:
        return
    # A store that fails inside (its blobs directory for verify, its gc.lock for the
    # others, made what they are not): the store's part names the store once ("cannot
    # prune the store in store DIR" said it twice), then the cause.
    with Store.open(tmp_path / "store") as store:
        if argv[0] == "verify":
            (store.path / "blobs" / "sha256").rmdir()
            (store.path / "blobs" / "sha256").write_text("not a directory")
        else:
            (store.path / "gc.lock").unlink(missing_ok=True)
            (store.path / "gc.lock").mkdir()
    assert main([*argv, "--store", str(store.path)]) == EXIT_FAILED
    [line] = capsys.readouterr().err.splitlines()
    said = failed.format(store=store.path)
    assert line.startswith(f"imagec-pipe: error: {doing}: {said}: [Errno "), line
    assert line.count(f"store {store.path}") == 1, line


def _needs_parse_reference() -> None:
    from stages._reference import parse_reference

    try:
        parse_reference("alpine")
    except NotImplementedError:
        pytest.skip("stages._reference.parse_reference is not written yet")


@dataclass(frozen=True)
class StoredImage:
    ref: str
    manifest: Digest
    config: Digest
    layer: Digest
    diff_id: Digest
    config_json: dict[str, Any]


@pytest.fixture
def stored_image(store_dir: Path) -> StoredImage:
    """An image recorded in the store through the store's own API, as a pull would."""
    from pipeline._store import Store

    store = Store.open(store_dir)
    tar = b"layer content".ljust(1024, b"\0")
    blob = gzip.compress(tar, mtime=0)
    layer = Digest.from_hex(hashlib.sha256(blob).hexdigest())
    diff_id = Digest.from_hex(hashlib.sha256(tar).hexdigest())
    descriptor = Descriptor(MediaType.OCI_LAYER_GZIP, layer, len(blob))
    with store.open_ingest(layer) as ingest:
        ingest.write(blob)
        ingest.sync()
        store.commit_layer(ingest, _verified(descriptor, diff_id, len(tar)))
    config_json = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [str(diff_id)]},
    }
    config_bytes = json.dumps(config_json).encode()
    config = Descriptor(
        MediaType.OCI_CONFIG, Digest.from_hex(hashlib.sha256(config_bytes).hexdigest()),
        len(config_bytes),
    )  # fmt: skip
    manifest_bytes = json.dumps(
        {"schemaVersion": 2, "mediaType": MediaType.OCI_MANIFEST,
         "config": config.to_json(), "layers": [descriptor.to_json()]}
    ).encode()  # fmt: skip
    manifest = Digest.from_hex(hashlib.sha256(manifest_bytes).hexdigest())
    store.record_image(
        ResolvedImage(
            ref=Reference("127.0.0.1:5000", "team/app", "1.0"),
            resolved_digest=manifest,
            index_bytes=None,
            index_media_type=None,
            manifest_digest=manifest,
            manifest_media_type=MediaType.OCI_MANIFEST,
            manifest_bytes=manifest_bytes,
            platform=Platform("linux", "amd64"),
            config=config,
            config_bytes=config_bytes,
            layers=(descriptor,),
            diff_ids=(diff_id,),
        )
    )
    return StoredImage(REF, manifest, config.digest, layer, diff_id, config_json)


def _verified(descriptor: Descriptor, diff_id: Digest, uncompressed: int) -> Any:
    from stages._events import VerifiedLayer

    return VerifiedLayer(descriptor, diff_id, uncompressed, "0" * 32, LayerTimings())


def test_images_table_and_json(
    stored_image: StoredImage, store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["images", "--store", str(store_dir)]) == EXIT_OK
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["REFERENCE", "IMAGE", "ID", "DIGEST", "PULLED", "SIZE"]
    assert row.split()[:3] == [REF, stored_image.config.short, str(stored_image.manifest)]
    assert "less than a minute ago" in row
    assert main(["images", "--store", str(store_dir), "--json"]) == EXIT_OK
    [image] = json.loads(capsys.readouterr().out)
    assert image["ref"] == REF
    assert image["image_id"] == str(stored_image.config)
    assert image["manifest_digest"] == str(stored_image.manifest)
    assert image["platform"] == "linux/amd64"
    # RFC 3339, as docker's JSON has times: a "T" between date and time, and the offset.
    pulled = datetime.datetime.fromisoformat(image["pulled_at"])
    assert image["pulled_at"][10] == "T" and pulled.utcoffset() == datetime.timedelta(0)


def test_layers_table_and_json(
    stored_image: StoredImage, store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["layers", REF, "--store", str(store_dir)]) == EXIT_OK
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["DIGEST", "DIFF", "ID", "SIZE", "UNCOMPRESSED", "MEDIA", "TYPE"]
    cells = row.split()
    assert cells[:2] == [str(stored_image.layer), str(stored_image.diff_id)]
    assert cells[3:] == ["1.024kB", MediaType.OCI_LAYER_GZIP]
    assert main(["layers", REF, "--store", str(store_dir), "--json"]) == EXIT_OK
    [layer] = json.loads(capsys.readouterr().out)
    assert layer["digest"] == str(stored_image.layer)
    assert layer["diff_id"] == str(stored_image.diff_id)
    assert layer["uncompressed_size"] == 1024
    assert layer["media_type"] == MediaType.OCI_LAYER_GZIP


def test_an_image_id_prefix_of_a_few_digits_finds_the_image_as_docker_s_does(
    stored_image: StoredImage, store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It said "no image '213e' in the store": a prefix needed 12 digits.
    prefix = stored_image.config.hex[:4]
    assert main(["inspect", prefix, "--store", str(store_dir)]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["record"]["ref"] == REF
    assert main(["layers", prefix, "--store", str(store_dir), "--json"]) == EXIT_OK
    [layer] = json.loads(capsys.readouterr().out)
    assert layer["digest"] == str(stored_image.layer)
    assert main(["rm", prefix, "--store", str(store_dir)]) == EXIT_OK
    assert capsys.readouterr().out.splitlines()[0] == f"Untagged: {REF}"
    assert main(["inspect", prefix, "--store", str(store_dir)]) == EXIT_FAILED
    assert f"no image '{prefix}' in the store at " in capsys.readouterr().err


def test_inspect(
    stored_image: StoredImage, store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # By reference and by image-ID prefix (both found without parsing a reference).
    for ref in (REF, stored_image.config.short):
        assert main(["inspect", ref, "--store", str(store_dir)]) == EXIT_OK
        out = json.loads(capsys.readouterr().out)
        assert out["config"] == stored_image.config_json
        assert out["manifest"]["layers"][0]["digest"] == str(stored_image.layer)
        assert out["record"]["ref"] == REF
        assert out["record"]["image_id"] == str(stored_image.config)
        assert "index" not in out


@pytest.mark.parametrize(
    ("argv", "done"),
    [
        (["rm", REF], "the images are removed"),
        (["rm", REF, "--json"], "the images are removed"),
        (["gc"], "the store is pruned"),
    ],
)
def test_a_removal_whose_output_cannot_be_written_says_it_is_done(
    stored_image: StoredImage, store_dir: Path, argv: list[str], done: str
) -> None:
    """``rm > file`` on a full disk removed the image, then failed (exit 1) with
    "error: removing REF: cannot write the output to stdout", which reads as if nothing
    was removed; the ``rm`` a script then retries finds no image. As for a pull whose
    output is lost, it is a warning saying what was done."""
    with open("/dev/full", "w") as full:
        done_run = subprocess.run(
            [sys.executable, "-m", "pipeline._cli", *argv, "--store", str(store_dir)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            timeout=60,
        )
    assert done_run.returncode == EXIT_OK, done_run.stderr
    assert done_run.stderr == (
        "imagec-pipe: warning: the output to stdout is incomplete (No space left on "
        f"device); {done}\n"
    )
    reader = Store.open_existing(store_dir)
    assert reader is not None
    assert (reader.find_image(REF) is None) == (argv[0] == "rm")


@pytest.mark.parametrize(
    "argv", [["rm", REF], ["rm", REF, "--json"], ["gc"]], ids=["rm", "rm-json", "gc"]
)
def test_a_removal_whose_reader_went_away_succeeds(
    stored_image: StoredImage, store_dir: Path, argv: list[str]
) -> None:
    """``rm REF | head -0`` (or a reader gone before the output came, as ``gc | head``
    with a long list of deleted blobs): the removal is done, as it is when the output
    cannot be written to a full disk. It exited 1, which a script under ``pipefail``
    takes for a failed removal and retries ("no image REF"). A pull whose reader goes
    away exits 0 the same way."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: the first write fails with EPIPE
    try:
        done_run = subprocess.run(
            [sys.executable, "-m", "pipeline._cli", *argv, "--store", str(store_dir)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert (done_run.returncode, done_run.stderr) == (EXIT_OK, "")
    reader = Store.open_existing(store_dir)
    assert reader is not None
    assert (reader.find_image(REF) is None) == (argv[0] == "rm")


def test_verify_of_missing_blobs_says_to_pull_again_not_to_repair(
    stored_image: StoredImage, store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing blob has no file for ``--repair`` to remove: verify said "run
    `imagec-pipe verify --repair` to remove them", and after it "removed the damaged
    blobs" (``"removed": true``) though nothing was."""
    blobs = store_dir / "blobs" / "sha256"
    (blobs / stored_image.config.hex).unlink()
    listed = sorted(os.listdir(blobs))

    # --full: the fixture records no real xxh3 for its layer
    assert main(["verify", "--full", "--store", str(store_dir)]) == EXIT_FAILED
    assert capsys.readouterr().out == (
        f"{stored_image.config}: blob: missing\n"
        f"{len(listed)} blobs checked in {store_dir}: 1 damaged\n"
        f"pull again: {REF}\n"
    )
    assert (
        main(["verify", "--full", "--repair", "--json", "--store", str(store_dir)]) == EXIT_FAILED
    )
    out = json.loads(capsys.readouterr().out)
    assert out["removed"] is False
    assert [(d["digest"], d["problem"], d["refs"]) for d in out["damaged"]] == [
        (str(stored_image.config), "missing", [REF])
    ]
    assert sorted(os.listdir(blobs)) == listed

    # Missing blobs no reference uses: a layer record whose image is gone (gc's work).
    with Store.open(store_dir) as store:
        store.remove_images([REF])
        data = b"unused layer"
        digest = Digest.from_hex(hashlib.sha256(data).hexdigest())
        with store.open_ingest(digest) as ingest:
            ingest.write(data)
            ingest.sync()
            descriptor = Descriptor(MediaType.OCI_LAYER, digest, len(data))
            store.commit_layer(ingest, _verified(descriptor, digest, len(data)))
    (blobs / digest.hex).unlink()
    assert main(["verify", "--full", "--repair", "--store", str(store_dir)]) == EXIT_FAILED
    assert capsys.readouterr().out.splitlines()[-1] == (
        "no reference uses them; `imagec-pipe gc` removes their records"
    )
    assert main(["gc", "--store", str(store_dir)]) == EXIT_OK
    assert main(["verify", "--full", "--store", str(store_dir)]) == EXIT_OK


def test_a_damaged_record_in_the_store_is_no_usage_error(
    stored_image: StoredImage, store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A platform no pull records was reported as a usage error: exit 2.
    import sqlite3

    with contextlib.closing(sqlite3.connect(store_dir / "imagec.db")) as conn, conn:
        conn.execute("UPDATE images SET platform = 'garbage'")
    for argv, doing in (
        (["images"], "listing images"),
        (["inspect", REF], f"inspecting {REF}"),
        (["layers", REF], f"listing the layers of {REF}"),
    ):
        assert main([*argv, "--store", str(store_dir)]) == EXIT_FAILED
        [line] = capsys.readouterr().err.splitlines()
        assert line.startswith(f"imagec-pipe: error: {doing}: the record of {REF} in store ")


def test_a_store_that_lost_its_database_is_an_error_not_an_empty_store(
    stored_image: StoredImage, store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without imagec.db, ``images`` said "no store ... yet" and a pull made a new, empty
    database: the store looked empty and every layer was downloaded again."""
    (store_dir / "imagec.db").unlink()
    for argv, doing in (
        (["images"], "listing images"),
        (["verify"], "verifying the store"),
        (["pull", REF, "-q"], f"pulling {REF}"),
    ):
        assert main([*argv, "--store", str(store_dir)]) == EXIT_FAILED
        captured = capsys.readouterr()
        [line] = captured.err.splitlines()
        assert line.startswith(
            f"imagec-pipe: error: {doing}: store {store_dir.absolute()} has no database "
            "imagec.db, but index.json lists 1 image and blobs/ holds 3 blobs"
        )
        assert line.endswith(f"and pull again: {REF}")
        assert captured.out == ""
    assert not (store_dir / "imagec.db").exists()


# --- a real Ctrl-C: SIGINT to a process whose pull is stuck inside trio.run ---

_STUCK_PULL = textwrap.dedent(
    """
    import sys, trio
    from pipeline import _cli

    async def pull(ref, *, store, options):
        options.progress  # the CLI hands a renderer
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            print("pulling", flush=True)
            await trio.sleep_forever()

    _cli.pull = pull
    sys.exit(_cli.main(sys.argv[1:]))
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT")
@pytest.mark.parametrize("output", ["-q", "--json"])
def test_sigint_exits_130(store_dir: Path, output: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _STUCK_PULL, "pull", REF, "--store", str(store_dir), output],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "pulling\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == EXIT_INTERRUPTED
    assert err == "imagec-pipe: interrupted\n"
    if output == "-q":
        assert out == ""
    else:  # --json ends with the error line, as for any failed pull
        last = json.loads(out.splitlines()[-1])
        assert (last["event"], last["error"], last["message"]) == (
            "error",
            "KeyboardInterrupt",
            "interrupted",
        )


def _pull_until_downloading(
    registry: Any,
    via: Any,
    repo: str,
    seed: str,
    store: Path,
    layer_workers: str,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """A CLI pull (``--json``) of a sample image through ``via``, returned once a layer
    is downloading; its stderr is piped too. ``env`` is added to ``cli_env()``."""
    from tests.support import images

    registry.push(repo, images.sample_image(seed, layer_size=2 * 1024 * 1024), "1")
    argv = ["pull", f"{via.host}/{repo}:1", "--json", "--layer-workers", layer_workers]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline._cli", *argv, "--store", str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**cli_env(), **(env or {})},
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line)["event"] == "layer-downloading":
            break
    return proc


def _all_gone(pids: set[int]) -> list[int]:
    """Those of ``pids`` still there after up to 5 s."""
    for _ in range(50):
        if not any(os.path.exists(f"/proc/{pid}") for pid in pids):
            break
        time.sleep(0.1)
    return [pid for pid in pids if os.path.exists(f"/proc/{pid}")]


def test_timeout_counts_the_wait_for_the_store_lock(tmp_path: Path) -> None:
    """--timeout 1s waited out another process's store lock (up to 30 s) before its
    deadline began (QA pass): the open is under it too."""
    import fcntl

    store = Store.open(tmp_path / "store")
    holder = os.open(store.path / "imagec.lock", os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        done = run_cli("pull", REF, "--store", str(store.path), "--json", "--timeout", "1s")
    finally:
        os.close(holder)
    assert done.returncode == 1, done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.startswith("imagec-pipe: error:")]
    assert (
        "did not finish within 1 s, the time it was given; it was still opening the store" in line
    )
    last = json.loads(done.stdout.splitlines()[-1])
    assert (last["event"], last["error"]) == ("error", "PullTimeout")


def test_sigterm_while_waiting_for_the_store_lock_exits_143(tmp_path: Path) -> None:
    """Before trio.run (here: Store.open waiting up to 30 s for another process's lock),
    SIGTERM took its default action: no exit code of ours, no line saying why."""
    import fcntl

    store = Store.open(tmp_path / "store")
    holder = os.open(store.path / "imagec.lock", os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with _start_cli("pull", REF, "--store", str(store.path), stdout=subprocess.DEVNULL) as proc:
            assert proc.stderr is not None
            warning = proc.stderr.readline()  # after LOCK_NOTICE_S (2 s)
            assert "waiting for another process to release the store" in warning
            proc.send_signal(signal.SIGTERM)
            rest = proc.stderr.read()
            assert proc.wait(timeout=30) == 143
        assert rest == "imagec-pipe: terminated (SIGTERM)\n"
    finally:
        os.close(holder)


@pytest.mark.deadline(60)
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_ends_a_pull_waiting_for_another_process_s_database_write(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path, stop: signal.Signals
) -> None:
    """A pull's store calls run in worker threads; one waiting for another process's
    write transaction (SQLite's busy timeout, 30 s) could not be cancelled, so Ctrl-C or
    SIGTERM left the CLI hanging for the rest of those 30 s before it exited (measured:
    30.0 s after the signal). Now the wait ends at the signal: exit 130 (143), the store
    consistent (verify), and the image pulled by the next run."""
    from tests.support import images

    image = images.sample_image(unique_seed, compressions=("gzip",), with_empty_layer=False)
    registry.push(unique_repo, image, "1")
    ref = f"{registry.host}/{unique_repo}:1"
    store = Store.open(tmp_path / "store")
    store.close()
    holder = sqlite3.connect(store.path / "imagec.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process writing, for ever
        with _start_cli("pull", ref, "--store", str(store.path), stdout=subprocess.DEVNULL) as proc:
            # The layer is renamed into blobs/ before its row is written: the pull is
            # then waiting for the database.
            layers = store.path / "blobs" / "sha256"
            while not any(layers.iterdir()) and proc.poll() is None:
                time.sleep(0.05)
            time.sleep(0.5)  # well inside BEGIN IMMEDIATE's wait
            proc.send_signal(stop)
            try:
                err = proc.communicate(timeout=10)[1]
            finally:
                proc.kill()
        expected = "interrupted" if stop == signal.SIGINT else "terminated (SIGTERM)"
        assert (proc.returncode, err) == (128 + stop, f"imagec-pipe: {expected}\n")
    finally:
        holder.close()
    for argv in (("verify", "--full"), ("pull", ref, "-q"), ("verify", "--full")):
        done = run_cli(*argv, "--store", str(store.path))
        assert done.returncode == 0, done.stderr


@pytest.mark.deadline(60)
def test_ctrl_c_ends_a_gc_waiting_for_another_process_s_database_write(tmp_path: Path) -> None:
    """SQLite's busy wait sleeps through signals, and Python runs a signal's handler only
    between two statements of the main thread: a Ctrl-C of ``gc`` waiting for another
    process's write transaction took effect when the 30 s were up (measured: 28.3 s
    after the signal). The wait is made in slices now, and the signal ends it."""
    store = Store.open(tmp_path / "store")
    store.close()
    holder = sqlite3.connect(store.path / "imagec.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with _start_cli("gc", "--store", str(store.path)) as proc:
            time.sleep(2)  # started, and waiting for the database (its 30 s are not up)
            proc.send_signal(signal.SIGINT)
            try:
                out, err = proc.communicate(timeout=10)
            finally:
                proc.kill()
        assert (proc.returncode, out, err) == (130, "", "imagec-pipe: interrupted\n")
    finally:
        holder.close()
    done = run_cli("gc", "--store", str(store.path))
    assert (done.returncode, done.stdout) == (0, "Total reclaimed space: 0B\n"), done.stderr


# Another connection that keeps a store being opened from its database, each in a way
# that makes SQLite's own busy handler wait (or, for the first, refuse at once). A store's
# database is in WAL mode, where a writer keeps nobody from reading; a tool that switched
# it to a rollback journal (to copy it as one file), or that holds it in exclusive locking
# mode, keeps readers out as well, and ``open`` must then switch the database back to WAL.
_DATABASE_HOLDERS: dict[str, tuple[str, ...]] = {
    "writer": ("PRAGMA journal_mode = DELETE", "BEGIN IMMEDIATE", "CREATE TABLE held (x)"),
    "committing writer": ("PRAGMA journal_mode = DELETE", "BEGIN EXCLUSIVE"),
    "reader": ("PRAGMA journal_mode = DELETE", "BEGIN", "SELECT count(*) FROM layers"),
    "exclusive WAL writer": (
        "PRAGMA locking_mode = EXCLUSIVE",
        "BEGIN IMMEDIATE",
        "CREATE TABLE held (x)",
    ),
}


@pytest.mark.deadline(90)
@pytest.mark.parametrize("held_by", list(_DATABASE_HOLDERS))
def test_ctrl_c_ends_the_open_of_a_store_whose_database_another_process_holds(
    tmp_path: Path, held_by: str
) -> None:
    """Opening a store waited for another connection's lock inside SQLite's busy
    handler, which sleeps through signals: a Ctrl-C took effect only when its 30 s were
    up. (A writer holding a rollback journal made the switch to WAL fail at once instead,
    saying the database had been kept busy for over 30 s.) The open waits in slices now,
    as a transaction does: the signal ends it, and the store is as it was."""
    store = Store.open(tmp_path / "store")
    store.close()
    holder = sqlite3.connect(store.path / "imagec.db", isolation_level=None)
    try:
        for statement in _DATABASE_HOLDERS[held_by]:
            holder.execute(statement).fetchall()
        # The pull opens the store before anything else reaches out.
        with _start_cli("pull", REF, "--store", str(store.path)) as proc:
            time.sleep(2)  # started, and waiting for the database
            still_waiting = proc.poll() is None
            proc.send_signal(signal.SIGINT)
            try:
                out, err = proc.communicate(timeout=10)
            finally:
                proc.kill()
        assert still_waiting, err
        assert (proc.returncode, out, err) == (130, "", "imagec-pipe: interrupted\n")
    finally:
        holder.close()
    for argv in (("gc",), ("verify", "--full")):
        done = run_cli(*argv, "--store", str(store.path))
        assert done.returncode == 0, done.stderr
    with contextlib.closing(sqlite3.connect(store.path / "imagec.db")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'held'").fetchall() == []


@pytest.mark.parametrize("layer_workers", ["threads", "processes"])
def test_sigterm_cancels_the_pull_cleanly(
    registry: Any,
    proxy: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    layer_workers: str,
) -> None:
    """SIGTERM (timeout, systemd, a container stopping) cancels as Ctrl-C does: exit 143,
    no partial file left in ingest/, no worker process left downloading."""
    from tests.support.processes import descendants

    store = tmp_path / "store"
    via = proxy(registry, rate=1_000_000)  # seconds per layer
    proc = _pull_until_downloading(registry, via, unique_repo, unique_seed, store, layer_workers)
    try:
        below = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM
    assert err == "imagec-pipe: terminated (SIGTERM)\n"
    # --json ends with the error line, as for any failed pull.
    last = json.loads(out.splitlines()[-1])
    assert (last["event"], last["error"]) == ("error", "Terminated")
    assert last["message"] == "terminated (SIGTERM)"
    assert os.listdir(store / "ingest") == []
    assert _all_gone(below) == []


# The moments at which trio runs its own code around the pull, outside any task: a stop
# signal there found the raising handler in place (trio's receiver opens only inside the
# pull), and trio took the Terminated it raised for a bug of its own. Each hooks one
# function trio calls there and raises the signal in the process itself, right after the
# call (or, for Runner.close, right before it): the signal lands at that moment every time.
_TRIO_MOMENTS = {
    # unrolled_run, before the first task: TrioInternalError.
    "trio-starts-its-clock": ("after _run.SystemClock.start_clock", False),
    # trio.run's own loop, before the first task: the run abandoned, RuntimeWarnings.
    "trio-first-waits-for-io": ("after _run.TheIOManager.get_events", False),
    # unrolled_run, the image pulled: TrioInternalError and an ignored traceback.
    "the-pull-task-has-ended": ("after _run.Runner.task_exited", True),
    # trio's receiver hands the signal on from a system task, once closed: TrioInternalError.
    "the-receiver-closes": ("before trio.open_signal_receiver's exit", True),
    # in unrolled_run's finally: Terminated (this one worked already).
    "trio-closes-its-run": ("before _run.Runner.close", True),
}

_SIGNAL_INSIDE_TRIO = textwrap.dedent(
    """
    import contextlib, os, signal, sys
    import trio
    from trio._core import _run
    from pipeline._main import main

    report_fd, moment, signum = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    del sys.argv[1:4]
    when, _, name = moment.partition(" ")
    unreported = [report_fd]

    def raise_signal_once():
        if unreported:
            fd = unreported.pop()
            os.write(fd, moment.encode())
            os.close(fd)
            signal.raise_signal(signum)  # the handler runs in this thread, before we return

    if name == "trio.open_signal_receiver's exit":
        open_signal_receiver = trio.open_signal_receiver

        @contextlib.contextmanager
        def hooked_receiver(*signals):
            with open_signal_receiver(*signals) as receiver:
                try:
                    yield receiver
                finally:
                    raise_signal_once()

        trio.open_signal_receiver = hooked_receiver
    else:
        owner, _, method = name.removeprefix("_run.").partition(".")
        cls = getattr(_run, owner)
        original = getattr(cls, method)

        def hooked(self, *args):
            if owner == "Runner" and method == "task_exited" and args[0] is not self.main_task:
                return original(self, *args)
            if when == "before":
                raise_signal_once()
            result = original(self, *args)
            if when == "after":
                raise_signal_once()
            return result

        setattr(cls, method, hooked)
    sys.exit(main())
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("moment", list(_TRIO_MOMENTS))
@pytest.mark.parametrize(
    ("signum", "status", "line", "error"),
    [
        (signal.SIGTERM, 143, "imagec-pipe: terminated (SIGTERM)\n", "Terminated"),
        (signal.SIGHUP, 129, "imagec-pipe: terminated (SIGHUP)\n", "Terminated"),
        (signal.SIGINT, 130, "imagec-pipe: interrupted\n", "KeyboardInterrupt"),
    ],
    ids=["SIGTERM", "SIGHUP", "SIGINT"],
)
def test_a_stop_signal_while_trio_starts_or_ends_exits_as_in_the_pull(
    registry: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    moment: str,
    signum: int,
    status: int,
    line: str,
    error: str,
) -> None:
    """A signal that lands in trio's own code, as it starts or ends the pull's run, ends
    the command as one that lands in the pull: its status, its one line on stderr, and
    --json's error line; not "internal error: TrioInternalError" (exit 1), nor an
    abandoned run's warnings. (SIGINT worked before: trio defers a Ctrl-C in its code.)"""
    from tests.support import images

    registry.push(unique_repo, images.sample_image(unique_seed, layer_size=64 * 1024), "1")
    store = tmp_path / "store"
    argv = ["pull", registry.ref(unique_repo, "1"), "--store", str(store), "--json"]
    report, report_fd = os.pipe()
    hook, pulled = _TRIO_MOMENTS[moment]
    try:
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _SIGNAL_INSIDE_TRIO,
                    str(report_fd),
                    hook,
                    str(signum),
                    *argv,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=cli_env(),
                pass_fds=(report_fd,),
            )
        finally:
            os.close(report_fd)
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reported = os.read(report, 200).decode()
    finally:
        os.close(report)
    assert reported == hook, f"the hook never ran: {err}"
    assert (proc.returncode, err) == (status, line)
    events = [json.loads(text) for text in out.splitlines()]
    assert (events[-1]["event"], events[-1]["error"]) == ("error", error)
    # A signal before the pull began stops it before any request; one after it ended
    # leaves the image it pulled. Either way nothing is left half-written.
    with Store.open(store) as opened:
        assert [record.ref for record in opened.list_images()] == (
            [registry.ref(unique_repo, "1")] if pulled else []
        )
    assert (len(events) > 1) is pulled  # more than the error line: the pull's own events
    assert os.listdir(store / "ingest") == []


_SIGNAL_AFTER_THE_RESULT = textwrap.dedent(
    """
    import atexit, signal, sys

    moment, signum, entry = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    del sys.argv[1:4]
    if moment == "the-summary-is-written":
        from pipeline import _progress

        original = _progress.ProgressRenderer.finish

        def finish(self, result):
            original(self, result)
            signal.raise_signal(signum)

        _progress.ProgressRenderer.finish = finish
    else:  # "python-finalizes": atexit runs as the interpreter shuts down
        atexit.register(signal.raise_signal, signum)
    if entry == "console-script":
        from pipeline._main import process_main

        sys.exit(process_main())
    import runpy

    runpy.run_module("pipeline._cli", run_name="__main__", alter_sys=True)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("entry", ["console-script", "python-m"])
@pytest.mark.parametrize("moment", ["the-summary-is-written", "python-finalizes"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_after_the_pull_printed_its_result_changes_nothing(
    registry: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    entry: str,
    moment: str,
    signum: int,
) -> None:
    """Once the summary is out, the pull is done: a signal then made the command exit 130
    (or 143, 129) after it, with an error line or no word at all, so that a script
    reading the status retried a pull its JSON said had succeeded (found by a QA pass)."""
    from tests.support import images

    registry.push(unique_repo, images.sample_image(unique_seed, layer_size=4096), "1")
    ref = registry.ref(unique_repo, "1")
    argv = ["pull", ref, "--store", str(tmp_path / "store"), "--json"]
    done = subprocess.run(
        [sys.executable, "-c", _SIGNAL_AFTER_THE_RESULT, moment, str(int(signum)), entry, *argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert json.loads(done.stdout.splitlines()[-1])["event"] == "summary"


def test_sigkill_of_the_cli_ends_its_worker_processes(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """A CLI killed outright (SIGKILL, the OOM killer) cancels nothing: its layer worker
    processes went on downloading for as long as their layers took, into files nobody
    would commit. Each now watches the pulling process and stops when it ends, and
    removes the relay directory the CLI left in $TMPDIR for its layer."""
    from tests.support.processes import descendants

    via = proxy(registry, rate=200_000)  # a layer takes 10 s or more
    # A short $TMPDIR of the CLI's own: tmp_path is too long for a socket's path.
    cli_tmp = Path(tempfile.mkdtemp(prefix="ic-"))
    proc = _pull_until_downloading(
        registry,
        via,
        unique_repo,
        unique_seed,
        tmp_path / "store",
        "processes",
        env={"TMPDIR": str(cli_tmp)},
    )
    below: set[int] = set()
    try:
        below = descendants(proc.pid)
        assert below  # the forkserver and its workers
        assert any(path.name.startswith("imagec-pipe-") for path in cli_tmp.iterdir())
        proc.kill()
        proc.wait()
        assert _all_gone(below) == []
        # multiprocessing's own pymp-* directory stays: only the killed process removes it.
        assert [p.name for p in cli_tmp.iterdir() if p.name.startswith("imagec-pipe-")] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):  # not read to the end: orphans hold them
            if stream is not None:
                stream.close()
        for pid in below:  # never leave one behind, whatever the outcome
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(cli_tmp, ignore_errors=True)


# --- logging (pipeline/_logging.py, configured by main) ---


@pytest.mark.parametrize(
    ("given", "platform"),
    [
        ("linux/x86_64", Platform("linux", "amd64")),
        ("Linux/AARCH64", Platform("linux", "arm64")),
        ("linux/i686", Platform("linux", "386")),
        ("linux/armhf", Platform("linux", "arm", "v7")),
        ("linux/arm/7", Platform("linux", "arm", "v7")),
        ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
        ("windows/amd64", Platform("windows", "amd64")),
    ],
)
def test_platforms_are_named_as_index_entries_name_them(given: str, platform: Platform) -> None:
    # `--platform linux/x86_64` matched no image: indexes say amd64 (containerd normalises).
    assert Platform.parse(given) == platform


def test_a_secret_added_is_cut_out_of_every_line_and_handed_to_workers() -> None:
    from pipeline._logging import add_secret, configure_logging, current_settings

    out = io.StringIO()
    configure_logging(level="info", json=True, stream=out)
    add_secret("hunter2-S")
    configure_logging(level="info", json=True, stream=out)  # reconfiguring keeps it
    structlog.get_logger().info("denied", detail="password hunter2-S expired")
    assert json.loads(out.getvalue())["detail"] == "password [redacted] expired"
    assert current_settings().secrets == ("hunter2-S",)  # what a worker process applies
    assert "hunter2-S" not in repr(current_settings())


def test_log_json_redacts_secrets() -> None:
    from pipeline._logging import configure_logging

    out = io.StringIO()
    configure_logging(level="info", json=True, stream=out)
    log = structlog.get_logger()
    log.info(
        "request",
        password="pw1",
        access_token="tok1",
        headers={"Authorization": "Bearer tok2", "Accept": "x"},
        note="sent Basic dXNlcjpwdzM= and Bearer eyJ.tok3 to https://ci:pw4@reg.example/v2/",
        size=10,
    )
    log.debug("hidden below the level")
    [line] = out.getvalue().splitlines()
    record = json.loads(line)
    for secret in ("pw1", "tok1", "tok2", "dXNlcjpwdzM=", "tok3", "pw4"):
        assert secret not in line
    assert record["password"] == record["access_token"] == "[redacted]"
    assert record["headers"] == {"Authorization": "[redacted]", "Accept": "x"}
    assert record["note"] == (
        "sent Basic [redacted] and Bearer [redacted] to https://[redacted]@reg.example/v2/"
    )
    assert record["size"] == 10
    assert record["level"] == "info"
    assert record["timestamp"].endswith("Z")


def test_a_token_remembered_is_cut_from_every_line_in_lower_case_too() -> None:
    # A registry naming a server after the token it was sent (https://<token>.evil.example)
    # has it named in lower case, as a URL's host: the processor cut the token only as it
    # was issued.
    from pipeline._logging import configure_logging

    token = "glpat-Xk2f9QmA7p3vR2"
    remember_token(token)
    out = io.StringIO()
    configure_logging(level="debug", json=True, stream=out)
    structlog.get_logger().debug("redirected", to_host=f"{token.lower()}.evil.example")
    assert json.loads(out.getvalue())["to_host"] == "[redacted].evil.example"


# Names a log field may have that say secret by stages/_redact.py's rule. The old
# substring list (password, secret, token, ...) missed the key, signature and session
# ones: such a field was masked only when its value looked like a credential.
SECRET_FIELD_NAMES = (
    *("api_key", "apiKey", "X-Api-Key", "private_key", "key", "signature", "sig"),
    *("X-Amz-Signature", "credential", "credentials", "session", "sessionid", "pwd"),
    *("passphrase", "client_secret", "password", "access_token", "Authorization", "Cookie"),
)


def _fields_our_code_logs() -> set[str]:
    """Every keyword a structlog call in pipeline/ and stages/ logs or binds a value by:
    ``log.info("...", ref=..., digest=...)``, ``log_context(ref=...)``."""
    import ast

    calls = {"debug", "info", "warning", "error", "exception", "critical", "bind"}
    calls |= {"bound_contextvars", "bind_contextvars", "log_context"}
    names: set[str] = set()
    for package in ("pipeline", "stages"):
        for source in (REPO_ROOT / package).glob("*.py"):
            for node in ast.walk(ast.parse(source.read_text())):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in calls
                ):
                    names.update(k.arg for k in node.keywords if k.arg is not None)
    return names


def test_a_log_field_is_masked_by_the_name_rule_of_the_stages() -> None:
    # A field named api_key or client_secret kept a value that did not look like a
    # credential; every field our own code logs must keep its value.
    from pipeline._logging import configure_logging

    ours = _fields_our_code_logs()
    assert {"ref", "digest", "url", "registry", "store", "realm"} <= ours
    ours.discard("exc_info")  # structlog's, not a field
    out = io.StringIO()
    configure_logging(level="info", json=True, stream=out)
    plain = "plain-value-7"  # no credential's shape: only the name can mask it
    secret_fields = {name: plain for name in SECRET_FIELD_NAMES}
    structlog.get_logger().info(
        "fields",
        **{name: plain for name in ours},
        **secret_fields,
        headers={"X-Api-Key": plain, "X-Goog-Signature": plain, "Accept": "x", "keys": "3"},
    )
    record = json.loads(out.getvalue())
    assert {name: record[name] for name in ours} == {name: plain for name in ours}
    assert {name: record[name] for name in SECRET_FIELD_NAMES} == {
        name: "[redacted]" for name in SECRET_FIELD_NAMES
    }
    assert record["headers"] == {
        "X-Api-Key": "[redacted]",
        "X-Goog-Signature": "[redacted]",
        "Accept": "x",
        "keys": "3",
    }


def test_log_lines_follow_the_redaction_rule_of_the_stages() -> None:
    # stages/_redact.py: a signed URL keeps its host and path, a secret-named pair its name.
    from pipeline._logging import configure_logging

    out = io.StringIO()
    configure_logging(level="info", json=True, stream=out)
    structlog.get_logger().warning(
        "retrying", error="busy: https://cdn.example/b?X-Amz-Signature=S1gn (sig=S2gn)"
    )
    record = json.loads(out.getvalue())
    assert record["error"] == "busy: https://cdn.example/b?[redacted] (sig=[redacted])"


def test_log_lines_keep_what_we_print_ourselves() -> None:
    # A reference whose repository ends in a header or scheme name lost its tag and what
    # followed it; a digest, a media type, the registry endpoint's URL must stay whole.
    from pipeline._logging import configure_logging

    out = io.StringIO()
    configure_logging(level="info", json=True, stream=out)
    digest = "sha256:" + "ab" * 32
    fields = {
        "ref": "127.0.0.1:5000/platform/authorization:2.3.1",
        "error": f"manifest 1 not found in docker.io/bearer/bearer on registry-1.docker.io"
        f" (docker.io/bearer/bearer:1, {digest})",
        "media_type": "application/vnd.oci.image.layer.v1.tar+zstd",
        "url": "http://127.0.0.1:5000",
        "store": "/home/ci/.cache/team/cookie: store",
    }
    structlog.get_logger().info("registry endpoint", **fields)
    record = json.loads(out.getvalue())
    assert {key: record[key] for key in fields} == fields


def test_log_context_is_merged_and_console_on_a_tty() -> None:
    from pipeline._logging import configure_logging

    out = TtyStringIO()
    configure_logging(level="warning", stream=out)
    with structlog.contextvars.bound_contextvars(ref=REF):
        structlog.get_logger().warning("slow registry", token="t0k")
    text = out.getvalue()
    assert "slow registry" in text
    assert REF in text
    assert "t0k" not in text
    assert not text.lstrip().startswith("{")


def test_log_exceptions_without_locals() -> None:
    from pipeline._logging import configure_logging

    for json_mode, out in ((True, io.StringIO()), (False, TtyStringIO())):
        configure_logging(level="debug", json=json_mode, stream=out)
        secret = "hunter2"
        try:
            raise NotFound("no tag")
        except NotFound:
            structlog.get_logger().exception("failed")
        del secret
        assert "NotFound" in out.getvalue()
        assert "hunter2" not in out.getvalue()


def test_each_log_line_is_one_write() -> None:
    """Processes that share a stderr (the CLI and its layer workers) interleave only whole
    lines if each line, newline included, goes out in one write: a piped stderr is
    unbuffered."""
    from pipeline._logging import configure_logging

    class Writes(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[str] = []

        def write(self, text: str) -> int:
            self.calls.append(text)
            return super().write(text)

    out = Writes()
    configure_logging(level="info", json=True, stream=out)
    structlog.get_logger().info("one", n=1)
    structlog.get_logger().info("two", n=2)
    assert [json.loads(call)["event"] for call in out.calls] == ["one", "two"]
    assert all(call.endswith("}\n") for call in out.calls)


# --- end to end: `python -m pipeline._cli` against the real registry ---


def cli_env() -> dict[str, str]:
    """The environment for the CLI in a child process: the same ``pipeline`` these tests
    import, and no store from the environment."""
    import pipeline

    source = Path(pipeline.__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(source)}
    env.pop("IMAGEC_PIPE_STORE", None)
    return env


def _start_cli(*argv: str, stdout: int = subprocess.PIPE) -> subprocess.Popen[str]:
    """The CLI in a child process, started: no stdin, its stderr piped, its stdout as
    asked (piped by default)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline._cli", *argv],
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )


def run_cli(
    *argv: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process, run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline._cli", *argv],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=timeout,
    )


def test_e2e_a_tag_moved_to_an_image_of_the_same_layers_is_newer_not_up_to_date(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    from tests.support import images

    first = images.sample_image(unique_seed)
    # A rebuild that changed only the manifest (an annotation): same config, same layers.
    rebuilt = images.make_image(first.layers, annotations={"org.example.build": "2"})
    ref = registry.ref(unique_repo, "1.0")
    store = str(tmp_path / "store")
    registry.push(unique_repo, first, "1.0")
    assert run_cli("pull", ref, "--store", store).returncode == 0
    registry.push(unique_repo, rebuilt, "1.0")

    moved = run_cli("pull", ref, "--store", store)
    assert moved.returncode == 0, moved.stderr
    lines = moved.stdout.splitlines()
    assert sum("Already exists" in line for line in lines) == len(first.layers)
    assert lines[-3:] == [
        f"Digest: {rebuilt.digest}",
        f"Status: Downloaded newer image for {ref}",
        ref,
    ]

    again = run_cli("pull", ref, "--store", store, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["up_to_date"] is True


@pytest.mark.parametrize("by", ["id-prefix", "full-id"])
def test_e2e_inspect_and_layers_find_an_image_no_reference_names_by_its_id(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path, by: str
) -> None:
    # A tag pulled again after it moved leaves its old image named by nothing (docker's
    # dangling image). `rm <ID>` found it; `inspect <ID>` and `layers <ID>` said "no
    # image", where `docker inspect <ID>` shows it.
    from tests.support import images

    old = images.sample_image(unique_seed, compressions=("gzip", "none"), layer_size=8192)
    new = images.sample_image(f"{unique_seed}:new", compressions=("gzip",), layer_size=8192)
    ref = registry.ref(unique_repo, "latest")
    store = str(tmp_path / "store")
    registry.push(unique_repo, old, "latest")
    assert run_cli("pull", ref, "--store", store).returncode == 0
    registry.push(unique_repo, new, "latest")  # the tag moves: `old` is named by nothing
    assert run_cli("pull", ref, "--store", store).returncode == 0
    image_id = {"id-prefix": old.image_id[7:19], "full-id": old.image_id}[by]

    inspected = run_cli("inspect", image_id, "--store", store)
    assert inspected.returncode == 0, inspected.stderr
    shown = json.loads(inspected.stdout)
    record = shown["record"]
    assert (record["image_id"], record["manifest_digest"]) == (old.image_id, old.digest)
    # No tag names it; its repository's name@digest does (docker's RepoDigests).
    assert (record["ref"], record["tag"]) == (f"{registry.host}/{unique_repo}@{old.digest}", None)
    assert shown["config"] == old.config.json()
    assert shown["manifest"] == json.loads(old.manifest.data)
    assert "index" not in shown

    listed = run_cli("layers", image_id, "--store", store, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [layer["digest"] for layer in json.loads(listed.stdout)] == [
        layer.digest for layer in old.layers
    ]
    # The reference the record gives finds the image again; the tag names the new one.
    again = run_cli("inspect", record["ref"], "--store", store)
    assert json.loads(again.stdout)["record"]["image_id"] == old.image_id
    # `images` lists it as docker does, after the references: what `gc` would free.
    images_listed = run_cli("images", "--store", store, "--json")
    assert [(r["image_id"], r["ref"], r["dangling"]) for r in json.loads(images_listed.stdout)] == [
        (new.image_id, ref, False),
        (old.image_id, record["ref"], True),
    ]
    table = run_cli("images", "--store", store).stdout.splitlines()
    assert [line.split()[:2] for line in table[1:]] == [
        [ref, new.image_id[7:19]],
        ["<none>", old.image_id[7:19]],
    ]
    assert run_cli("gc", "--store", store).returncode == 0
    listed_after = json.loads(run_cli("images", "--store", store, "--json").stdout)
    assert [(r["image_id"], r["dangling"]) for r in listed_after] == [(new.image_id, False)]


def test_e2e_pull_json_then_up_to_date_then_list(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    from tests.support import images

    index = images.sample_index(unique_seed)
    registry.push(unique_repo, index, "1.0")
    ref = registry.ref(unique_repo, "1.0")
    store = tmp_path / "store"
    want = index.image_for("linux/arm64/v8")

    first = run_cli("pull", ref, "--store", str(store), "--json", "--platform", "linux/arm64/v8")
    assert first.returncode == 0, first.stderr
    lines = [json.loads(line) for line in first.stdout.splitlines()]
    for line in lines[:-1]:
        assert set(line) == {"event", "ref", "digest", "current", "total"}
    events = [line["event"] for line in lines]
    assert events[0] == "resolving"
    assert {"resolved", "layer-waiting", "layer-downloading", "layer-complete"} <= set(events)
    assert events[-2:] == ["pull-complete", "summary"]
    summary = lines[-1]
    assert summary["ref"] == ref
    assert summary["digest"] == index.digest  # the index's: what the tag resolved to
    assert summary["manifest_digest"] == want.digest
    assert summary["image_id"] == want.image_id
    assert summary["platform"] == "linux/arm64/v8"
    assert [layer["digest"] for layer in summary["layers"]] == [x.digest for x in want.layers]
    assert {layer["status"] for layer in summary["layers"]} == {"downloaded"}
    assert summary["bytes_downloaded"] == sum(x.size for x in want.layers)
    assert summary["up_to_date"] is False

    second = run_cli("pull", ref, "--store", str(store), "--platform", "linux/arm64/v8")
    assert second.returncode == 0, second.stderr
    out = second.stdout.splitlines()
    assert out[0] == f"1.0: Pulling from {unique_repo}"
    assert f"{want.layers[0].digest[7:19]}: Already exists" in out
    assert out[-3:] == [f"Digest: {index.digest}", f"Status: Image is up to date for {ref}", ref]

    listed = run_cli("images", "--store", str(store), "--json")
    assert listed.returncode == 0, listed.stderr
    [image] = json.loads(listed.stdout)
    assert image["ref"] == ref
    assert image["image_id"] == want.image_id

    layers = run_cli("layers", ref, "--store", str(store), "--json")
    assert layers.returncode == 0, layers.stderr
    assert [(x["digest"], x["diff_id"]) for x in json.loads(layers.stdout)] == [
        (x.digest, x.diff_id) for x in want.layers
    ]

    inspected = run_cli("inspect", ref, "--store", str(store))
    assert inspected.returncode == 0, inspected.stderr
    record = json.loads(inspected.stdout)
    assert record["config"]["rootfs"]["diff_ids"] == list(want.diff_ids)
    assert record["index"]["manifests"][0]["digest"] in {i.digest for i in index.images}


def test_e2e_platform_amd64_v3_takes_a_plain_amd64_entry(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    # An x86-64-v3 machine runs plain amd64 (v1) code, as containerd's platforms.Only
    # says; it was told "no manifest for linux/amd64/v3; it has: linux/amd64, ...".
    from tests.support import images

    index = images.sample_index(unique_seed, platforms=("linux/amd64", "linux/arm64/v8"))
    registry.push(unique_repo, index, "1.0")
    ref = registry.ref(unique_repo, "1.0")
    want = index.image_for("linux/amd64")

    pulled = run_cli(
        "pull", ref, "--store", str(tmp_path / "store"), "--json", "--platform", "linux/amd64/v3"
    )

    assert pulled.returncode == 0, pulled.stderr
    summary = json.loads(pulled.stdout.splitlines()[-1])
    assert summary["manifest_digest"] == want.digest
    assert summary["platform"] == "linux/amd64"  # what the index entry says


def test_e2e_an_index_digest_naming_two_platforms_images_is_ambiguous(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """``name@<index digest>`` with the index's images for two platforms in the store:
    ``rm`` removed the one pulled last, ``layers`` and ``inspect`` showed it, each without
    a word of the other. Now each refuses, naming both; ``rm`` removes nothing."""
    from tests.support import images

    index = images.sample_index(unique_seed, layer_size=4096)
    registry.push(unique_repo, index, "1.0")
    registry.push(unique_repo, index, "2.0")
    store = str(tmp_path / "store")
    for tag, platform in (("1.0", "linux/amd64"), ("2.0", "linux/arm64/v8")):
        pulled = run_cli(
            "pull", registry.ref(unique_repo, tag), "--store", store, "--platform", platform
        )
        assert pulled.returncode == 0, pulled.stderr
    by_index = f"{registry.host}/{unique_repo}@{index.digest}"
    ids = {p: index.image_for(p).config.digest[7:19] for p in ("linux/amd64", "linux/arm64/v8")}

    for command in ("rm", "layers", "inspect"):
        refused = run_cli(command, by_index, "--store", store)
        assert refused.returncode == 1, (command, refused.stdout)
        assert f"{by_index} is ambiguous" in refused.stderr
        assert f"linux/amd64 (image ID {ids['linux/amd64']})" in refused.stderr
        assert f"linux/arm64/v8 (image ID {ids['linux/arm64/v8']})" in refused.stderr
    listed = json.loads(run_cli("images", "--store", store, "--json").stdout)
    assert len(listed) == 2
    # Each image's own manifest digest still names one image.
    arm = f"{registry.host}/{unique_repo}@{index.image_for('linux/arm64/v8').digest}"
    shown = run_cli("layers", arm, "--store", store, "--json")
    assert shown.returncode == 0, shown.stderr
    want = [x.digest for x in index.image_for("linux/arm64/v8").layers]
    assert [x["digest"] for x in json.loads(shown.stdout)] == want


def test_e2e_an_oci_manifest_naming_docker_media_types_lists_pulls_again_and_inspects(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """The store lists such an image through a converted manifest; what the commands
    show is still the registry's image: its manifest, its layers' media types."""
    from tests.support import images

    image = images.docker_typed_oci_image(unique_seed)
    registry.push(unique_repo, image, "1.0")
    ref = registry.ref(unique_repo, "1.0")
    store = str(tmp_path / "store")
    first = run_cli("pull", ref, "--store", store)
    assert first.returncode == 0, first.stderr

    again = run_cli("pull", ref, "--store", store)
    assert again.returncode == 0, again.stderr
    out = again.stdout.splitlines()
    for layer in image.layers:
        assert f"{layer.digest[7:19]}: Already exists" in out
    assert out[-3:] == [f"Digest: {image.digest}", f"Status: Image is up to date for {ref}", ref]

    layers = run_cli("layers", ref, "--store", store, "--json")
    assert layers.returncode == 0, layers.stderr
    assert [(x["digest"], x["diff_id"], x["media_type"]) for x in json.loads(layers.stdout)] == [
        (x.digest, x.diff_id, x.media_type) for x in image.layers
    ]

    inspected = run_cli("inspect", ref, "--store", store)
    assert inspected.returncode == 0, inspected.stderr
    shown = json.loads(inspected.stdout)
    assert shown["manifest"] == image.manifest.json()  # the registry's, not the converted
    assert shown["record"]["manifest_digest"] == image.digest
    assert shown["record"]["oci_manifest_digest"] != image.digest
    assert shown["config"]["rootfs"]["diff_ids"] == list(image.diff_ids)


def test_e2e_worker_processes_log_like_the_cli(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """A layer worker process logs with the CLI's settings, on stderr: stdout stays pure
    ``--json`` lines, the default level keeps it quiet, and ``--log-level info`` shows its
    "layer fetched" lines as JSON (stderr is a pipe here)."""
    from tests.support import images

    image = images.sample_image(unique_seed)
    registry.push(unique_repo, image, "1")
    ref = registry.ref(unique_repo, "1")
    argv = ["pull", ref, "--json", "--layer-workers", "processes"]

    quiet = run_cli(*argv, "--store", str(tmp_path / "quiet"))
    assert quiet.returncode == 0, quiet.stderr
    events = [json.loads(line)["event"] for line in quiet.stdout.splitlines()]
    assert events.count("layer-complete") == len(image.layers)
    assert quiet.stderr == ""

    told = run_cli(*argv, "--store", str(tmp_path / "told"), "--log-level", "info")
    assert told.returncode == 0, told.stderr
    assert all(json.loads(line) for line in told.stdout.splitlines())
    logged = [json.loads(line) for line in told.stderr.splitlines()]
    fetched = [x["digest"] for x in logged if x["event"] == "layer fetched"]
    assert sorted(fetched) == sorted(x.digest for x in image.layers)
    assert all(x["level"] != "debug" for x in logged)


def test_e2e_worker_processes_log_json_at_the_cli_level(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """``--log-json --log-level warning``: a worker's lines (here, retrying a layer the
    registry answered 503 for: only a worker fetches layers in this mode) are JSON on
    stderr and nothing below warning shows."""
    from tests.support import images
    from tests.support.servers import Reply

    image = images.sample_image(unique_seed)
    registry.push(unique_repo, image, "1")
    via = proxy(registry)
    layer = image.layers[0].digest
    via.inject(f"*/blobs/{layer}", Reply(503), method="GET")
    argv = ["pull", f"{via.host}/{unique_repo}:1", "--layer-workers", "processes", "-q"]

    done = run_cli(
        *argv, "--store", str(tmp_path / "store"), "--log-json", "--log-level", "warning"
    )

    assert done.returncode == 0, done.stderr
    logged = [json.loads(line) for line in done.stderr.splitlines()]
    assert {x["level"] for x in logged} == {"warning"}
    [retry] = [x for x in logged if x["event"] == "retrying"]
    assert retry["digest"] == layer


@pytest.mark.parametrize("workers", ["threads", "processes"])
def test_e2e_a_pull_past_its_timeout_fails_saying_so_and_leaves_nothing_half_done(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path, workers: str
) -> None:
    """``--timeout``: a layer through a proxy passing 200 kB/s (20 s for the layer), given
    1.5 s, or 5 s with worker processes (one may take seconds to start on a busy
    machine, and the layer's first bytes come from it). The pull is cancelled as Ctrl-C
    cancels it (worker processes stopped, ingest/ emptied), exits 1 with one line
    saying so, and ``--json`` ends with its error line."""
    from tests.support import images

    image = images.sample_image(unique_seed, layer_size=4 * 1024 * 1024, compressions=("none",))
    registry.push(unique_repo, image, "1")
    via = proxy(registry, rate=200_000)
    ref = f"{via.host}/{unique_repo}:1"
    store = tmp_path / "store"
    timeout = "1.5" if workers == "threads" else "5"
    argv = ["pull", ref, "--json", "--timeout", f"{timeout}s", "--layer-workers", workers]

    done = run_cli(*argv, "--store", str(store))

    assert done.returncode == 1, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(
        f"imagec-pipe: error: pulling {ref}: the pull did not finish within {timeout} s, the"
    ), line
    assert f"in progress: {image.layers[0].digest} (" in line, line
    last = json.loads(done.stdout.splitlines()[-1])
    assert (last["event"], last["error"]) == ("error", "PullTimeout")
    assert list((store / "ingest").iterdir()) == []
    assert image.layers[0].digest.split(":")[1] not in os.listdir(store / "blobs" / "sha256")


def test_e2e_json_shows_a_worker_processes_retry(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """``--json --layer-workers processes``, a layer whose connection drops halfway: its
    ``layer-retrying`` line is there, with the bytes kept, as threads mode writes it. A
    worker process once sent it to no one: the stream showed the layer stop, then go on."""
    from tests.support import images
    from tests.support.servers import Reply

    image = images.sample_image(unique_seed, layer_size=1024 * 1024)
    registry.push(unique_repo, image, "1")
    cut = image.layers[1]
    half = cut.data[: len(cut.data) // 2]
    via = proxy(registry)
    via.inject(f"*/blobs/{cut.digest}", Reply(200, {"Content-Length": str(cut.size)}, half))
    ref = f"{via.host}/{unique_repo}:1"
    argv = ["pull", ref, "--json", "--layer-workers", "processes"]

    done = run_cli(*argv, "--store", str(tmp_path / "store"))

    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    retried = [x for x in lines if x["event"] == "layer-retrying"]
    assert retried == [
        {
            "event": "layer-retrying",
            "ref": ref,
            "digest": cut.digest,
            "current": len(half),
            "total": cut.size,
        }
    ]
    mine = [x["event"] for x in lines if x["digest"] == cut.digest]
    assert mine.index("layer-retrying") < mine.index("layer-verifying")


def _pulled_by_the_cli(registry: Any, repo: str, seed: str, store: Path) -> tuple[Any, str]:
    """An image of one gzip layer pushed as ``repo:1.0`` and pulled into ``store``."""
    from tests.support import images

    image = images.sample_image(seed, compressions=("gzip",))
    registry.push(repo, image, "1.0")
    ref = registry.ref(repo, "1.0")
    pulled = run_cli("pull", ref, "--store", str(store))
    assert pulled.returncode == 0, pulled.stderr
    return image, ref


def test_e2e_images_leaves_the_store_as_it_found_it(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """``images`` read the database through a read-only connection, which created
    SQLite's ``-wal`` and ``-shm`` files and could not remove them."""
    store = tmp_path / "store"
    image, ref = _pulled_by_the_cli(registry, unique_repo, unique_seed, store)
    before = sorted(os.listdir(store))
    assert [name for name in before if name.endswith(("-wal", "-shm"))] == []

    for argv, shown in (
        (["images"], ref),
        (["images", "--json"], ref),
        (["layers", ref], image.layers[0].digest),
        (["inspect", ref], image.digest),
    ):
        done = run_cli(*argv, "--store", str(store))
        assert done.returncode == 0, done.stderr
        assert shown in done.stdout
        assert sorted(os.listdir(store)) == before


def _flip_a_byte(path: Path, *, offset: int = 100) -> None:
    """Bit rot: one byte changed in place, the size kept."""
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_e2e_verify_finds_bit_rot_a_pull_would_trust_and_repair_makes_it_download_again(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    image, ref = _pulled_by_the_cli(registry, unique_repo, unique_seed, store)
    clean = run_cli("verify", "--store", str(store))
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.endswith("none damaged\n")

    rotten = image.layers[0]
    _flip_a_byte(store / "blobs" / "sha256" / rotten.digest[7:])
    trusted = run_cli("pull", ref, "--store", str(store))  # what verify is for
    assert f"{rotten.digest[7:19]}: Already exists" in trusted.stdout

    found = run_cli("verify", "--store", str(store))
    assert found.returncode == 1
    assert found.stdout.splitlines() == [
        f"{rotten.digest}: layer: content changed since it was pulled (xxh3 differs)",
        f"{len(list((store / 'blobs' / 'sha256').iterdir()))} blobs checked in {store}: 1 damaged",
        f"run `imagec-pipe verify --repair` to remove them, then pull again: {ref}",
    ]

    repaired = run_cli("verify", "--store", str(store), "--repair", "--json")
    assert repaired.returncode == 1
    report = json.loads(repaired.stdout)
    assert report["removed"] is True
    assert [(d["digest"], d["kind"], d["refs"]) for d in report["damaged"]] == [
        (rotten.digest, "layer", [ref])
    ]
    missing = run_cli("verify", "--store", str(store))  # the image still needs the layer
    assert missing.returncode == 1 and f"{rotten.digest}: layer: missing" in missing.stdout

    again = run_cli("pull", ref, "--store", str(store), "--json")
    assert again.returncode == 0, again.stderr
    statuses = {
        x["digest"]: x["status"] for x in json.loads(again.stdout.splitlines()[-1])["layers"]
    }
    assert statuses[rotten.digest] == "downloaded"
    assert run_cli("verify", "--store", str(store), "--full").returncode == 0


def test_e2e_verify_says_to_pull_an_image_for_another_platform_again_with_its_platform(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """An image pulled with ``--platform`` for another machine and missing a blob: verify
    said "pull again: REF", whose pull takes this machine's entry of the index and leaves
    that image's blob missing. The advice names the platform the store recorded, and
    only where a pull without it would fetch another image."""
    from tests.support import images

    platforms = ("linux/amd64", "linux/arm64/v8")
    host = Platform.host()
    native = [p for p in platforms if host.matches(Platform.parse(p))]
    foreign = [p for p in platforms if p not in native]
    if not native or not foreign:
        pytest.skip(f"this machine ({host}) runs both or neither of {platforms}")
    index = images.sample_index(unique_seed, platforms=platforms, layer_size=4096)
    registry.push(unique_repo, index, "1.0")
    ref = registry.ref(unique_repo, "1.0")

    store = tmp_path / "store"
    pulled = run_cli("pull", ref, "--store", str(store), "--platform", foreign[0])
    assert pulled.returncode == 0, pulled.stderr
    blobs = store / "blobs" / "sha256"
    shared = {layer.digest for layer in index.image_for(native[0]).layers}
    lost = next(x.digest for x in index.image_for(foreign[0]).layers if x.digest not in shared)
    (blobs / lost[7:]).unlink()
    found = run_cli("verify", "--store", str(store))
    assert found.returncode == 1
    assert found.stdout.splitlines()[-1] == f"pull again: {ref} --platform {foreign[0]}"
    as_json = json.loads(run_cli("verify", "--store", str(store), "--json").stdout)
    assert as_json["platforms"] == {ref: foreign[0]}
    # The index gone too (what would tell), the platform recorded still differs.
    (blobs / index.digest[7:]).unlink()
    found = run_cli("verify", "--store", str(store))
    assert found.stdout.splitlines()[-1] == f"pull again: {ref} --platform {foreign[0]}"
    advised = run_cli("pull", ref, "--store", str(store), "--platform", foreign[0])
    assert advised.returncode == 0, advised.stderr
    assert run_cli("verify", "--store", str(store), "--full").returncode == 0

    # Pulled for this machine: a pull without --platform fetches it again.
    store = tmp_path / "native"
    assert run_cli("pull", ref, "--store", str(store)).returncode == 0
    (store / "blobs" / "sha256" / index.image_for(native[0]).layers[0].digest[7:]).unlink()
    found = run_cli("verify", "--store", str(store))
    assert found.returncode == 1
    assert found.stdout.splitlines()[-1] == f"pull again: {ref}"
    as_json = json.loads(run_cli("verify", "--store", str(store), "--json").stdout)
    assert as_json["platforms"] == {}


def test_e2e_verify_checks_configs_by_sha256_and_layers_by_size(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    image, _ = _pulled_by_the_cli(registry, unique_repo, unique_seed, store)
    blobs = store / "blobs" / "sha256"
    _flip_a_byte(blobs / image.image_id[7:], offset=10)
    short = blobs / image.layers[0].digest[7:]
    short.chmod(0o644)
    short.write_bytes(short.read_bytes()[:-1])

    found = run_cli("verify", "--store", str(store), "--json")

    assert found.returncode == 1
    damaged = {d["digest"]: d for d in json.loads(found.stdout)["damaged"]}
    assert damaged[image.image_id]["kind"] == "blob"
    assert "sha256 differs" in damaged[image.image_id]["problem"]
    assert damaged[image.layers[0].digest]["problem"] == (
        f"{image.layers[0].size - 1} bytes, its record says {image.layers[0].size}"
    )
    assert set(damaged) == {image.image_id, image.layers[0].digest}


def test_e2e_verify_without_a_store_says_so(tmp_path: Path) -> None:
    result = run_cli("verify", "--store", str(tmp_path / "none"))
    assert result.returncode == 0
    assert "nothing to verify" in result.stderr
    assert not (tmp_path / "none").exists()


def test_e2e_quiet_pull_by_digest(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    from tests.support import images

    image = images.sample_image(unique_seed)
    registry.push(unique_repo, image, None)
    ref = registry.ref(unique_repo, image.digest)
    result = run_cli("pull", ref, "--store", str(tmp_path / "store"), "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{ref}\n"
    # the other inflater, into a fresh store: the same verified image
    again = run_cli(
        "pull", ref, "--store", str(tmp_path / "other"), "-q", "--gzip-inflater", "zlib"
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"{ref}\n"


def test_e2e_a_pull_with_stdout_closed_completes(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """``>&-``: Python starts with no sys.stdout; the progress goes nowhere, the pull on."""
    from tests.support import images

    image = images.sample_image(unique_seed)
    registry.push(unique_repo, image, "1.0")
    ref = registry.ref(unique_repo, "1.0")
    store = str(tmp_path / "store")
    for argv in (["pull", ref, "--json"], ["images"]):
        closed = subprocess.run(
            [sys.executable, "-m", "pipeline._cli", *argv, "--store", store],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
            timeout=60,
            preexec_fn=lambda: os.close(1),  # the child has no threads yet
        )
        assert closed.returncode == 0, closed.stderr
        assert closed.stderr == ""
    listed = run_cli("images", "--store", store, "--json")
    assert [x["ref"] for x in json.loads(listed.stdout)] == [ref]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_e2e_a_pull_whose_output_cannot_be_written_says_so(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """``--json > file`` on a full disk: the image is stored, but the lines the user meant
    to keep are lost, and the pull used to end without a word about it."""
    from tests.support import images

    registry.push(unique_repo, images.sample_image(unique_seed), "1.0")
    ref = registry.ref(unique_repo, "1.0")
    store = str(tmp_path / "store")
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline._cli", "pull", ref, "--json", "--store", store],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    assert done.stderr == (
        "imagec-pipe: warning: the output to stdout is incomplete (No space left on "
        "device); the image is in the store\n"
    )
    listed = run_cli("images", "--store", store, "--json")
    assert [x["ref"] for x in json.loads(listed.stdout)] == [ref]


def test_e2e_unknown_tag_exits_1_with_one_line(registry: Any, tmp_path: Path) -> None:
    ref = registry.ref("no/such-repo", "1.0")
    result = run_cli("pull", ref, "--store", str(tmp_path / "store"))
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"imagec-pipe: error: pulling {ref}: ")
    assert "Traceback" not in result.stderr


def test_e2e_a_failed_json_pull_ends_with_an_error_event(registry: Any, tmp_path: Path) -> None:
    """A script reading --json sees the failure in the stream: its last line."""
    ref = registry.ref("no/such-repo", "1.0")
    result = run_cli("pull", ref, "--store", str(tmp_path / "store"), "--json")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    *_, last = (json.loads(x) for x in result.stdout.splitlines())
    assert last == {
        "event": "error",
        "ref": ref,
        "digest": None,
        "error": "NotFound",
        "message": line.removeprefix(f"imagec-pipe: error: pulling {ref}: "),
    }


def test_e2e_log_json_makes_the_log_records_json_and_leaves_the_error_line_plain(
    registry: Any, tmp_path: Path
) -> None:
    """``--log-json`` governs log records; the line a failure ends with is the command's
    own, plain as docker's (README: "Logs are records on stderr"), and ``pull --help``
    says so, where a reader of the JSON logs found a line that was not JSON."""
    ref = registry.ref("no/such-repo", "1.0")
    argv = ["pull", ref, "--store", str(tmp_path / "store"), "--log-json"]
    result = run_cli(*argv, "--log-level", "debug")
    assert result.returncode == 1
    *records, last = result.stderr.splitlines()
    assert records, result.stderr  # at debug, the failure's own record at least
    assert all(json.loads(record)["level"] for record in records)
    assert last.startswith(f"imagec-pipe: error: pulling {ref}: ")
    shown = " ".join(run_cli("pull", "--help").stdout.split())
    assert "log records as JSON lines (default on a non-TTY); the command's own lines" in shown
    assert "stay plain text" in shown


def test_e2e_malformed_reference_exits_1(tmp_path: Path) -> None:
    result = run_cli("pull", "Team/App:1", "--store", str(tmp_path / "store"))
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("imagec-pipe: error: pulling Team/App:1: ")
    assert not (tmp_path / "store").exists()  # it made a new, empty store there


def test_a_malformed_reference_creates_no_store(
    store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The store was opened, and so created, before the reference was read.
    assert main(["pull", "team/app:1 ", "--json", "--store", str(store_dir)]) == EXIT_FAILED
    out = json.loads(capsys.readouterr().out)
    assert (out["event"], out["error"]) == ("error", "InvalidReference")
    assert not store_dir.exists()


@pytest.mark.parametrize("content", ["not a certificate\n", ""], ids=["text", "empty"])
def test_a_ca_file_that_is_no_pem_file_creates_no_store(
    store_dir: Path, tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The store was opened, and so created, before the registry client read the file.
    ca = tmp_path / "ca.pem"
    ca.write_text(content)
    argv = ["pull", REF, "--ca-file", str(ca), "--json", "--store", str(store_dir)]
    assert main(argv) == EXIT_USAGE
    assert not store_dir.exists()
    captured = capsys.readouterr()
    out = json.loads(captured.out)  # the error line alone: the pull never began
    assert (out["event"], out["error"]) == ("error", "UsageError")
    [line] = captured.err.splitlines()
    assert line.startswith(
        f"imagec-pipe: error: pulling {REF}: cannot use the CA file {ca} (--ca-file, "
    ), line


def test_e2e_basic_auth_password_stdin(
    basic_registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    from tests.support import images

    basic_registry.push(unique_repo, images.sample_image(unique_seed, layer_size=4096))
    ref = basic_registry.ref(unique_repo)
    user, password = basic_registry.credentials
    store = str(tmp_path / "store")

    wrong = run_cli("pull", ref, "--store", store, "-u", user, "--password-stdin",
                    stdin="wrong-Pa55word\n", timeout=60)  # fmt: skip
    assert wrong.returncode == 1
    assert "wrong-Pa55word" not in wrong.stderr + wrong.stdout
    [line] = wrong.stderr.splitlines()
    assert line.startswith(f"imagec-pipe: error: pulling {ref}: ")

    right = run_cli("pull", ref, "--store", store, "-u", user, "--password-stdin", "-q",
                    "--log-level", "debug", stdin=password + "\n")  # fmt: skip
    assert right.returncode == 0, right.stderr
    assert right.stdout == f"{ref}\n"
    assert password not in right.stderr


def test_e2e_tls_needs_the_ca_file(
    tls_registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    from tests.support import images

    tls_registry.push(unique_repo, images.sample_image(unique_seed, layer_size=4096))
    ref = tls_registry.ref(unique_repo)
    refused = run_cli("pull", ref, "--store", str(tmp_path / "a"))
    assert refused.returncode == 1
    assert "--ca-file" in refused.stderr
    pulled = run_cli("pull", ref, "--store", str(tmp_path / "b"), "--ca-file",
                     str(tls_registry.ca_pem), "-q")  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr


def test_e2e_a_single_manifest_for_another_platform_is_pulled_with_a_warning(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    # Without --platform, docker pulls a single-platform image of another platform and
    # warns that it does not match the host's; we pulled it without a word.
    from pipeline import Platform
    from tests.support import images

    other = "linux/s390x" if Platform.host().architecture != "s390x" else "linux/ppc64le"
    image = images.sample_image(unique_seed, platform=other, layer_size=4096)
    ref = registry.ref(unique_repo, "other")
    registry.push(unique_repo, image, "other")

    done = run_cli("pull", ref, "--store", str(tmp_path / "store"))

    assert done.returncode == 0, done.stderr
    assert f"Status: Downloaded newer image for {ref}" in done.stdout
    assert f"the image's platform ({other}) does not match this machine's" in done.stderr
    assert "no platform was asked for" in done.stderr
