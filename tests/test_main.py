"""pipeline/_main.py: the ``imagec-pipe`` entry point stops quietly from its first line.

The command line imports trio, httpx, structlog and the stages, which takes about 0.25 s.
A Ctrl-C in that time printed a traceback, and SIGTERM ended the process without its
exit status and line, because the entry point (``_cli.main``) only ran once those
imports were done. These tests start the entry point pyproject.toml declares, as pip's
console script does, and signal it while it imports.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import _main
from pipeline._store import Store

REPO_ROOT = Path(__file__).resolve().parent.parent
REF = "127.0.0.1:5000/team/app:1.0"

# The modules whose import takes the time; the entry point must be reached before them.
HEAVY = ("pipeline._cli", "stages", "trio", "httpx", "structlog")

# pip's console script for ``module:function`` imports the module and exits with what the
# function returns. This one does the same, and reports once on the pipe ``report_fd``
# whether the stop-signal handlers were in place when the first HEAVY module began to
# import: the moment from which the tests time their signal.
_CONSOLE_SCRIPT = textwrap.dedent(
    """
    import importlib, os, signal, sys

    report_fd, module, function = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    del sys.argv[1:4]
    heavy = {heavy!r}
    unreported = [report_fd]

    def report_the_first_heavy_import(event, args):
        name = args[0] if event == "import" else ""
        if unreported and any(name == h or name.startswith(h + ".") for h in heavy):
            ready = signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
            state = "handlers in place" if ready else "no handlers yet"
            fd = unreported.pop()
            os.write(fd, f"the import of {{name}} began with {{state}}".encode())
            os.close(fd)

    sys.addaudithook(report_the_first_heavy_import)
    sys.exit(getattr(importlib.import_module(module), function)())
    """
).format(heavy=HEAVY)


def entry_point() -> tuple[str, str]:
    """``imagec-pipe``'s ``module:function`` in pyproject.toml."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    module, _, function = pyproject["project"]["scripts"]["imagec-pipe"].partition(":")
    return module, function


def cli_env() -> dict[str, str]:
    """The same ``pipeline`` these tests import, and no store from the environment."""
    import pipeline

    source = Path(pipeline.__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(source)}
    env.pop("IMAGEC_PIPE_STORE", None)
    return env


@pytest.fixture
def locked_store(tmp_path: Path) -> Iterator[Path]:
    """A store whose lock this process holds: a pull there waits (up to 30 s) and never
    starts on its own, so that a signal is the only way it ends."""
    with Store.open(tmp_path / "store") as store:
        holder = os.open(store.path / "imagec.lock", os.O_RDWR)
        try:
            fcntl.flock(holder, fcntl.LOCK_EX)
            yield store.path
        finally:
            os.close(holder)


def test_the_entry_point_module_imports_nothing_heavy() -> None:
    """What Python runs before the entry point's first line is all that a Ctrl-C can
    interrupt with a traceback: importing its module must stay light."""
    module, _ = entry_point()
    code = (
        f"import sys, {module}; heavy = {HEAVY!r}; "
        "print(sorted(m for m in sys.modules if m.partition('.')[0] in heavy or m in heavy))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=True,
    )
    assert done.stdout == "[]\n", f"importing {module} imports {done.stdout.strip()}"


def test_main_runs_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert _main.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("imagec-pipe ")


@pytest.mark.parametrize(
    ("stop", "status", "line"),
    [
        (KeyboardInterrupt(), 130, "imagec-pipe: interrupted\n"),
        (_main.Terminated(signal.SIGTERM), 143, "imagec-pipe: terminated (SIGTERM)\n"),
    ],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_stop_signal_inside_the_creation_of_a_class_exits_as_it_does_in_a_pull(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stop: BaseException,
    status: int,
    line: str,
) -> None:
    """A signal can land in a descriptor's ``__set_name__`` as the imports make their
    dataclasses; Python 3.11 raises what that raised as the cause of a RuntimeError, and
    the command ended with its traceback (seen once in the import test above)."""
    from pipeline import _cli

    class Field:
        def __set_name__(self, owner: type, name: str) -> None:
            raise stop

    def command(argv: object) -> int:
        class Made:
            field = Field()

        return 0

    monkeypatch.setattr(_cli, "main", command)
    assert _main.main(["pull", "reg.example/a:1", "--json"]) == status
    out, err = capsys.readouterr()
    assert err == line
    assert json.loads(out)["event"] == "error"


def test_terminated_is_not_an_exception() -> None:
    # Raised by the SIGTERM handler wherever the signal lands, in the middle of an import
    # too: an `except Exception` there (trio's _thread_cache has one at import time)
    # would take it for a failure of its own and carry on.
    assert not issubclass(_main.Terminated, Exception)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("delay", [round(step * 0.025, 3) for step in range(13)])
@pytest.mark.parametrize(
    ("signum", "status", "line", "error"),
    [
        (signal.SIGINT, 130, "imagec-pipe: interrupted\n", "KeyboardInterrupt"),
        (signal.SIGTERM, 143, "imagec-pipe: terminated (SIGTERM)\n", "Terminated"),
    ],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_stop_signal_during_the_imports_exits_as_it_does_in_a_pull(
    locked_store: Path, signum: int, status: int, line: str, error: str, delay: float
) -> None:
    """From the start of the heavy imports, 0 to 0.3 s: wherever the signal lands (an
    import, the parsing, the wait for the store's lock), the exit status and the one line
    on stderr are those of an interrupted pull, and never a traceback."""
    module, function = entry_point()
    report, report_fd = os.pipe()
    argv = ["pull", REF, "--store", str(locked_store), "--json"]
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CONSOLE_SCRIPT, str(report_fd), module, function, *argv],
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
        ready, _, _ = select.select([report], [], [], 60)
        assert ready, "the entry point never began its imports"
        reported = os.read(report, 200).decode()
        time.sleep(delay)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        os.close(report)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err, err
    # (A machine so busy that the wait for the lock passed 2 s also logs that it waits.)
    said = [text for text in err.splitlines(keepends=True) if "release the store" not in text]
    assert (proc.returncode, said) == (status, [line])
    # Whether the pull had begun or not, --json ends with its error line, as for any
    # pull that stops: stopped during the imports, it wrote nothing.
    events = [json.loads(text) for text in out.splitlines()]
    message = line.removeprefix("imagec-pipe: ").rstrip("\n")
    assert events == [
        {"event": "error", "ref": REF, "digest": None, "error": error, "message": message}
    ]
    # The delay counted from the start of the heavy imports, the handlers in place by
    # then. Checked last: where they were not, the failure above shows what the signal did.
    assert reported.endswith("with handlers in place"), f"{module}:{function}: {reported}"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_stop_signals_deferred_raises_terminated_when_left_not_where_the_signal_lands() -> None:
    """Around trio.run a stop signal is recorded: trio takes an exception its own code
    raises for a bug of its own (TrioInternalError). It is raised on leaving, unless the
    pull took it; the handlers before come back either way."""
    # Raising handlers outside, so that a broken one fails this test, not the test run.
    with _main.stop_signals_raise():
        outside = signal.getsignal(signal.SIGTERM)
        reached = []
        with pytest.raises(_main.Terminated) as stopped, _main.stop_signals_deferred():
            signal.raise_signal(signal.SIGHUP)
            signal.raise_signal(signal.SIGTERM)
            reached.append("after the signals")
        assert reached == ["after the signals"]
        assert stopped.value.signal == signal.SIGHUP  # the first one
        assert signal.getsignal(signal.SIGTERM) is outside

        with _main.stop_signals_deferred() as request:
            signal.raise_signal(signal.SIGTERM)
            assert request.take() == signal.SIGTERM  # taken: nothing raised on leaving
        assert signal.getsignal(signal.SIGTERM) is outside

        # What the block raised is the context of the Terminated that replaces it.
        with pytest.raises(_main.Terminated) as stopped, _main.stop_signals_deferred():
            signal.raise_signal(signal.SIGTERM)
            raise ValueError("the pull failed")
        assert isinstance(stopped.value.__context__, ValueError)


def _pull_parser() -> argparse.ArgumentParser:
    from pipeline._cli import build_parser

    parsed = build_parser().parse_args(["pull", REF])
    subparser: argparse.ArgumentParser = parsed.subparser
    return subparser


def test_the_pull_options_known_before_the_imports_are_the_parsers() -> None:
    """``json_pull_ref`` reads a pull's command line before the parser can be imported;
    an option added to the parser and not to ``PULL_OPTIONS`` would make it take the
    option's value for the reference, or miss ``--json``."""
    parser = _pull_parser()
    options = {
        name: action.nargs != 0 for action in parser._actions for name in action.option_strings
    }
    assert options == _main.PULL_OPTIONS


@pytest.mark.parametrize(
    "argv",
    [
        ["pull", REF, "--json"],
        ["pull", "--json", REF],
        ["pull", REF],
        ["pull", REF, "--quiet"],
        ["pull", REF, "--log-json"],
        ["pull", "--store", "/s", REF, "--js"],
        ["pull", "--store=/s", "--j", REF],
        ["pull", "--sto", "/s", REF, "--json"],
        ["pull", "--platform", "linux/arm64", "--json", REF, "--retries", "2"],
        ["pull", "-u", "me", "--password-stdin", REF, "--json"],
        ["pull", "-ume", REF, "--json"],
        ["pull", "--username=me", "--json", "--", REF],
        ["pull", "--json", "--insecure-registry", "r:5000", "--max-c", "2", REF],
        ["pull", "--", "--json"],
        ["pull", "--json", "--", "--json"],
        ["images", "--json"],
    ],
)
def test_json_pull_ref_reads_a_command_line_as_the_parser_does(argv: list[str]) -> None:
    from pipeline._cli import build_parser

    parsed = build_parser().parse_args(argv)
    expected = parsed.ref if parsed.command == "pull" and parsed.json else None
    assert _main.json_pull_ref(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--version"],
        ["pull", "--json"],
        ["pull", REF, "other", "--json"],
        ["pull", REF, "--bogus", "--json"],
        ["pull", REF, "--log", "x", "--json"],  # --log-level or --log-json: ambiguous
    ],
)
def test_json_pull_ref_is_none_for_what_the_parser_refuses(argv: list[str]) -> None:
    assert _main.json_pull_ref(argv) is None
