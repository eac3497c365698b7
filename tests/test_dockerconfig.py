"""Credentials from docker's config (stages/_dockerconfig.py): real files in a temporary
``DOCKER_CONFIG``, real credential-helper programs on ``PATH``, and pulls from the real
registry in its htpasswd (basic) and bearer-token variants, in-process and by the CLI.

Every secret a test puts in a config or a helper's answer is checked to appear in no
error, no output and no log line of the test.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

import pipeline
from pipeline import AuthError, Credentials, PullOptions, RegistryOptions, Store, UsageError
from stages._auth import sent_secrets
from stages._dockerconfig import DOCKER_HUB_KEY, docker_config_credentials, docker_config_path
from tests.support import images

AMD64 = pipeline.Platform("linux", "amd64")
REPO_ROOT = Path(__file__).resolve().parent.parent


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``DOCKER_CONFIG`` directory for the test (and the commands it runs)."""
    directory = tmp_path / "docker-config"
    directory.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))
    return directory


def write_config(config_dir: Path, doc: object) -> Path:
    path = config_dir / "config.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory put first on ``PATH``, for the helper programs a test writes."""
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ.get('PATH', '')}")
    return directory


def write_helper(directory: Path, name: str, body: str) -> Path:
    """``docker-credential-<name>``: a Python program whose ``main(action, server)``
    is ``body``; what it was asked goes to ``<name>.asked`` beside it."""
    path = directory / f"docker-credential-{name}"
    path.write_text(
        f"#!{sys.executable}\n"
        "import json, sys, time\n"
        "from pathlib import Path\n"
        "action, server = sys.argv[1], sys.stdin.read()\n"
        f"Path({str(directory / f'{name}.asked')!r}).write_text(json.dumps([action, server]))\n"
        + textwrap.dedent(body)
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def answering(username: str, secret: str) -> str:
    answer = json.dumps({"ServerURL": "ignored", "Username": username, "Secret": secret})
    return f"print({answer!r})\n"


def asked(directory: Path, name: str) -> list[str]:
    result: list[str] = json.loads((directory / f"{name}.asked").read_text())
    return result


def options(credentials: Credentials | None) -> PullOptions:
    return PullOptions(platform=AMD64, registry=RegistryOptions(credentials=credentials))


def run_cli(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The CLI in a child process, in this test's environment (its ``DOCKER_CONFIG``
    and ``PATH``)."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline._cli", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=90,
    )


# --- where the file is, and which entry -------------------------------------------------


def test_the_file_is_in_docker_config_else_in_the_home_directory(tmp_path: Path) -> None:
    assert docker_config_path({"DOCKER_CONFIG": str(tmp_path)}) == tmp_path / "config.json"
    assert docker_config_path({}) == Path.home() / ".docker" / "config.json"
    assert docker_config_path({"DOCKER_CONFIG": ""}) == Path.home() / ".docker" / "config.json"


def test_no_file_and_no_entry_are_no_credentials(config_dir: Path) -> None:
    assert docker_config_credentials("reg.example/app") is None  # no file
    write_config(config_dir, {"auths": {"other.example": {"auth": b64("u:p")}}})
    assert docker_config_credentials("reg.example/app") is None
    write_config(config_dir, {"auths": {"reg.example": {}}})  # docker login with a helper
    assert docker_config_credentials("reg.example/app") is None
    write_config(config_dir, {"HttpHeaders": {"X-Meta": "1"}})
    assert docker_config_credentials("reg.example/app") is None


@pytest.mark.parametrize("content", [b"", b"\n\n", b" \t\r\n", b"\xef\xbb\xbf"])
def test_an_empty_file_is_no_credentials_as_for_docker(config_dir: Path, content: bytes) -> None:
    """docker's client reads an empty config.json as ``{}`` (its decoder's EOF is no
    error), and ``touch ~/.docker/config.json`` is common: every pull, anonymous ones
    too, failed with "it is not valid JSON (line 1, column 1)"."""
    path = config_dir / "config.json"
    path.write_bytes(content)
    assert docker_config_credentials("reg.example/app") is None
    assert docker_config_credentials("reg.example/app", config_path=path) is None
    path.write_bytes(content + b"\f{}")  # a form feed is no JSON white space
    with pytest.raises(AuthError, match="not valid JSON"):
        docker_config_credentials("reg.example/app")


def test_an_auths_entry_matches_as_docker_matches_it(config_dir: Path) -> None:
    path = write_config(
        config_dir,
        {
            "auths": {
                "https://reg.example:5000/v1/": {"auth": b64("ci:pw-port:with-colon")},
                "plain.example": {"username": "bob", "password": "pw-plain"},
                "http://path.example/some/path": {"auth": b64("eve:pw-path")},
                DOCKER_HUB_KEY: {"auth": b64("hub:pw-hub")},
                "docker.io": {"auth": b64("not:used")},
            }
        },
    )
    got = docker_config_credentials("reg.example:5000/team/app:1")
    assert got == Credentials(
        "ci", "pw-port:with-colon", source=str(path), registry="reg.example:5000"
    )
    assert docker_config_credentials("plain.example/app") == Credentials(
        "bob", "pw-plain", source=str(path), registry="plain.example"
    )
    assert docker_config_credentials("path.example/app") == Credentials(
        "eve", "pw-path", source=str(path), registry="path.example"
    )
    # Docker Hub's key is the v1 URL, for every spelling of a Hub reference.
    for ref in ("alpine", "docker.io/library/alpine", "index.docker.io/team/app"):
        assert docker_config_credentials(ref) == Credentials(
            "hub", "pw-hub", source=str(path), registry="docker.io"
        )
    # Another port of the same host is another registry.
    assert docker_config_credentials("reg.example/app") is None
    assert docker_config_credentials("reg.example:5001/app") is None


def test_an_explicit_config_path_is_read_instead(config_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.json"
    other.write_text(json.dumps({"auths": {"reg.example": {"auth": b64("x:pw-x")}}}))
    write_config(config_dir, {"auths": {"reg.example": {"auth": b64("y:pw-y")}}})
    got = docker_config_credentials("reg.example/app", config_path=other)
    assert got == Credentials("x", "pw-x", source=str(other), registry="reg.example")


def test_an_identity_token_entry_is_kept_as_such(config_dir: Path) -> None:
    path = write_config(
        config_dir,
        {
            "auths": {
                "reg.example": {"username": "ci", "identitytoken": "idt-1"},
                "both.example": {"auth": b64("ci:pw-2"), "identitytoken": "idt-2"},
            }
        },
    )
    got = docker_config_credentials("reg.example/app")
    assert got == Credentials(
        "ci", "", identity_token="idt-1", source=str(path), registry="reg.example"
    )
    assert "idt-1" not in repr(got)
    assert sent_secrets(got) == ("idt-1",)
    # With a password too, as docker's client keeps both: a Basic registry gets that.
    both = docker_config_credentials("both.example/app")
    assert both == Credentials(
        "ci", "pw-2", identity_token="idt-2", source=str(path), registry="both.example"
    )


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), True, "5"])
def test_a_helper_timeout_that_is_no_time_is_a_usage_error(timeout: Any) -> None:
    with pytest.raises(pipeline.UsageError, match="helper_timeout_s must be a number"):
        docker_config_credentials("reg.example/app", helper_timeout_s=timeout)


# --- what is wrong with a file, never what it holds --------------------------------------

SECRET = "Sup3r-S3cret-pw"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('{"auths": {"reg.example": {"auth": "' + b64("u:" + SECRET), "is not valid JSON (line 1"),
        ('["' + SECRET + '"]', "is not a JSON object"),
        ('{"auths": ["' + SECRET + '"]}', "its auths is not an object"),
        ('{"credHelpers": {"reg.example": 1}, "p": "' + SECRET + '"}', "its credHelpers is not"),
        ('{"credsStore": ["' + SECRET + '"]}', "its credsStore is not a string"),
        (
            '{"auths": {"reg.example": "' + SECRET + '"}}',
            "the auths entry 'reg.example' in {path}: it is not an object",
        ),
        (
            '{"auths": {"reg.example": {"auth": "' + SECRET + '!"}}}',
            "the auths entry 'reg.example' in {path}: its auth is not base64",
        ),
        (
            '{"auths": {"reg.example": {"auth": "' + b64(SECRET) + '"}}}',
            "its auth is not the base64 of user:password (no user name and no colon)",
        ),
        (
            '{"auths": {"reg.example": {"auth": "' + b64(":" + SECRET) + '"}}}',
            "its auth is not the base64 of user:password (no user name)",
        ),
        (
            '{"auths": {"reg.example": {"password": ["' + SECRET + '"]}}}',
            "its password is not a string",
        ),
        (
            '{"auths": {"reg.example": {"registrytoken": "' + SECRET + '"}}}',
            "it holds a registry token, which imagec-pipe does not send",
        ),
    ],
    ids=[
        "truncated-json",
        "array",
        "auths-array",
        "helper-not-string",
        "store-not-string",
        "entry-not-object",
        "auth-not-base64",
        "auth-no-colon",
        "auth-no-user",
        "password-not-string",
        "registry-token",
    ],
)
def test_a_malformed_file_is_an_error_naming_it_and_not_its_content(
    config_dir: Path, content: str, says: str
) -> None:
    path = config_dir / "config.json"
    path.write_text(content)
    with pytest.raises(AuthError) as error:
        docker_config_credentials("reg.example/app")
    message = str(error.value)
    assert str(path) in message
    assert says.format(path=path) in message
    assert SECRET not in message
    assert b64(SECRET) not in message
    # Nor in a traceback: the parser's own words may quote the file.
    assert error.value.__context__ is None or error.value.__suppress_context__


@pytest.mark.parametrize(
    "key",
    [
        f"https://ci:{SECRET}@reg.example/v1/",
        f"http://ci:{SECRET}@reg.example",
        f"https://{SECRET}@reg.example",
        f"https://ci:a b'\"<{SECRET}>@reg.example?x=1",  # what ends a URL in text
        f"https://ci:{SECRET}@x@reg.example/",
    ],
)
def test_an_auths_key_s_user_info_is_not_quoted_in_an_error(
    config_dir: Path, tmp_path: Path, key: str
) -> None:
    """A key written as a URL matches by its host, so one holding a password in its user
    info is the registry's entry; an error about that entry names it, which a library
    caller shows or logs as it is: the user info is cut, the rest of the key kept."""
    path = write_config(config_dir, {"auths": {key: {"auth": "not base64!"}}})
    with pytest.raises(AuthError) as refused:
        docker_config_credentials("reg.example/app")
    message = str(refused.value)
    assert SECRET not in message
    assert f"in {path}: its auth is not base64" in message
    assert "[redacted]@reg.example" in message
    # ~/.dockercfg's keys match by host too (containers/image's legacy format).
    home = tmp_path / "home"
    home.mkdir()
    (home / ".dockercfg").write_text(json.dumps({key: {"registrytoken": "x"}}))
    environ = {"HOME": str(home), "XDG_RUNTIME_DIR": str(home), "DOCKER_CONFIG": str(home)}
    with pytest.raises(AuthError) as refused:
        pipeline.auth_file_credentials("reg.example/app", environ=environ)
    message = str(refused.value)
    assert SECRET not in message
    assert "[redacted]@reg.example" in message and "it holds a registry token" in message


def test_a_number_longer_than_python_converts_is_read_as_docker_reads_it(
    config_dir: Path,
) -> None:
    # Python refuses to convert an integer of more than 4300 digits (ValueError, not a
    # JSONDecodeError): such a number in any field, one imagec-pipe never reads, was an
    # "internal error" naming no file. docker's client reads the file.
    path = config_dir / "config.json"
    path.write_text(
        '{"auths": {"reg.example": {"auth": "' + b64("ci:" + SECRET) + '"}},'
        ' "proxies": {"default": {"timeout": ' + "9" * 5000 + "}}}"
    )
    assert docker_config_credentials("reg.example/app") == Credentials(
        "ci", SECRET, source=str(path), registry="reg.example"
    )
    path.write_text('{"auths": {"reg.example": {"auth": ' + "1" * 5000 + "}}}")
    with pytest.raises(AuthError, match="its auth is not a string"):
        docker_config_credentials("reg.example/app")


def test_an_unreadable_file_given_is_an_error_naming_it(config_dir: Path) -> None:
    path = config_dir / "config.json"
    path.mkdir()
    with pytest.raises(AuthError, match=f"^cannot use {path}: it is not a regular file$"):
        docker_config_credentials("reg.example/app", config_path=path)
    path.rmdir()
    # A FIFO is refused at once, not read until something writes to it.
    os.mkfifo(path)
    with pytest.raises(AuthError, match=f"^cannot use {path}: it is not a regular file$"):
        docker_config_credentials("reg.example/app", config_path=path)
    path.unlink()
    write_config(config_dir, {"auths": {}})
    path.chmod(0)
    if os.geteuid() != 0:  # root reads a file of mode 000
        with pytest.raises(AuthError, match=f"^cannot read {path}: Permission denied$"):
            docker_config_credentials("reg.example/app", config_path=path)


def test_an_unreadable_file_at_the_default_place_is_skipped_with_a_warning(
    config_dir: Path,
) -> None:
    """docker's CLI warns ("Error loading config file") and goes on; the usual cause is a
    config.json that ``sudo docker login`` left to root, and a public pull must work."""
    path = config_dir / "config.json"

    def skipped(why: str) -> None:
        with structlog.testing.capture_logs() as logs:
            assert docker_config_credentials("reg.example/app") is None
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert len(warnings) == 1, logs
        assert warnings[0]["path"] == str(path) and why in warnings[0]["reason"]

    path.mkdir()
    skipped("not a regular file")
    path.rmdir()
    os.mkfifo(path)
    skipped("not a regular file")
    path.unlink()
    if os.geteuid() != 0:  # root reads a file of mode 000
        write_config(config_dir, {"auths": {"reg.example": {"auth": "eDp5"}}})
        path.chmod(0)
        skipped("Permission denied")
        path.unlink()
    # One that can be read and is no config stays an error.
    path.write_text("{" + SECRET)
    with pytest.raises(AuthError, match="not valid JSON"):
        docker_config_credentials("reg.example/app")


# --- credential helpers ------------------------------------------------------------------


def test_a_helper_is_asked_in_docker_s_order(config_dir: Path, helpers: Path) -> None:
    path = write_config(
        config_dir,
        {
            "auths": {"reg.example": {"auth": b64("file:pw-file")}},
            "credsStore": "store",
            "credHelpers": {"special.example": "special", "kept.example": ""},
        },
    )
    write_helper(helpers, "store", answering("from-store", "pw-store"))
    write_helper(helpers, "special", answering("from-special", "pw-special"))

    # credHelpers for its host, then credsStore for every other: auths is not read.
    assert docker_config_credentials("special.example/app") == Credentials(
        "from-special",
        "pw-special",
        source=f"docker-credential-special (credHelpers in {path})",
        registry="special.example",
    )
    assert asked(helpers, "special") == ["get", "special.example"]
    assert docker_config_credentials("reg.example/app") == Credentials(
        "from-store",
        "pw-store",
        source=f"docker-credential-store (credsStore in {path})",
        registry="reg.example",
    )
    assert asked(helpers, "store") == ["get", "reg.example"]
    # Docker Hub is asked for by its v1 URL.
    assert docker_config_credentials("alpine") is not None
    assert asked(helpers, "store") == ["get", DOCKER_HUB_KEY]
    # An empty helper name keeps that registry's secrets in the file (docker's rule).
    write_config(
        config_dir,
        {
            "auths": {"kept.example": {"auth": b64("file:pw-file")}},
            "credHelpers": {"kept.example": ""},
        },
    )
    assert docker_config_credentials("kept.example/app") == Credentials(
        "file", "pw-file", source=str(path), registry="kept.example"
    )


def test_a_helper_s_token_username_means_an_identity_token(config_dir: Path, helpers: Path) -> None:
    write_config(config_dir, {"credsStore": "tok"})
    write_helper(helpers, "tok", answering("<token>", "idt-from-helper"))
    got = docker_config_credentials("reg.example/app")
    assert got is not None
    assert (got.username, got.password, got.identity_token) == ("", "", "idt-from-helper")


def test_a_helper_without_credentials_for_the_registry_is_none(
    config_dir: Path, helpers: Path
) -> None:
    write_config(config_dir, {"credsStore": "empty"})
    write_helper(
        helpers, "empty", "print('credentials not found in native keychain')\nsys.exit(1)\n"
    )
    assert docker_config_credentials("reg.example/app") is None


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            f"print('cannot unlock the keychain: password={SECRET}')\nsys.exit(3)\n",
            "failed for reg.example (exit status 3): cannot unlock the keychain:"
            " password=[redacted]",
        ),
        (
            f"sys.stderr.write('Authorization: Basic {b64('u:' + SECRET)}')\nsys.exit(1)\n",
            "failed for reg.example (exit status 1): Authorization: [redacted]",
        ),
        (f'print(\'{{"Username": "u", "Secret": "{SECRET}"\')\n', "with what is not JSON"),
        (
            f"print(json.dumps({{'Username': 'u', 'Secret': ['{SECRET}']}}))\n",
            "a Username or Secret that is no string",
        ),
        ("sys.stdout.write('x' * (2 << 20))\n", "answered more than 1048576 bytes"),
    ],
    ids=["fails", "fails-on-stderr", "not-json", "not-strings", "too-much"],
)
def test_a_helper_that_fails_is_an_error_naming_it_and_the_registry(
    config_dir: Path, helpers: Path, body: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(config_dir, {"credsStore": "broken"})
    write_helper(helpers, "broken", body)
    with pytest.raises(AuthError) as error:
        docker_config_credentials("reg.example/app")
    message = str(error.value)
    assert message.startswith(
        f"the credential helper docker-credential-broken (credsStore in {path}) "
    )
    assert says in message
    assert SECRET not in message
    assert b64("u:" + SECRET) not in message
    captured = capsys.readouterr()  # nothing of the helper's goes past it either
    assert SECRET not in captured.out + captured.err


def test_a_helper_that_hangs_is_killed_at_its_timeout(config_dir: Path, helpers: Path) -> None:
    path = write_config(config_dir, {"credHelpers": {"reg.example": "hangs"}})
    pid_file = helpers / "hangs.pid"
    helper = helpers / "docker-credential-hangs"  # sh: started in a moment, then sleep itself
    # It waits on a process of its own (a gpg, a pinentry): that one went on running
    # under init, found by a QA pass.
    waited_on = helpers / "waited-on.pid"
    helper.write_text(
        f"#!/bin/sh\nsleep 61 &\necho $! > '{waited_on}'\necho $$ > '{pid_file}'\nwait\n"
    )
    helper.chmod(0o755)
    with pytest.raises(AuthError) as error:
        docker_config_credentials("reg.example/app", helper_timeout_s=1.0)
    assert str(error.value) == (
        f"the credential helper docker-credential-hangs (credHelpers in {path}) did not"
        " answer for reg.example within 1 s; killed"
    )
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left behind
        os.kill(pid, 0)
    below = int(waited_on.read_text())
    try:
        deadline = time.monotonic() + 5  # killed; init reaps it in a moment
        while _alive(below) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(below)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(below, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its reaper."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            return stat_file.read().rpartition(b")")[2].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def test_a_helper_that_leaves_a_process_running_is_not_waited_for(
    config_dir: Path, helpers: Path
) -> None:
    # An agent or cache the helper starts in the background inherits its stdout and
    # keeps it open: the pipe's end never comes, the helper's exit does. Before, the
    # answer was thrown away at the timeout: "did not answer within 5 s; killed".
    write_config(config_dir, {"credHelpers": {"reg.example": "agent"}})
    pid_file = helpers / "agent.pid"
    helper = helpers / "docker-credential-agent"
    answer = json.dumps({"ServerURL": "", "Username": "u", "Secret": SECRET})
    helper.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > '{pid_file}'\necho '{answer}'\nexit 0\n")
    helper.chmod(0o755)
    try:
        credentials = docker_config_credentials("reg.example/app", helper_timeout_s=5.0)
    finally:
        with contextlib.suppress(ProcessLookupError, FileNotFoundError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert credentials is not None
    assert (credentials.username, credentials.password) == ("u", SECRET)


def test_a_helper_that_is_not_installed_is_an_error(config_dir: Path, helpers: Path) -> None:
    path = write_config(config_dir, {"credsStore": "nowhere", "auths": {}})
    with pytest.raises(AuthError) as error:
        docker_config_credentials("reg.example/app")
    assert str(error.value) == (
        f"the credential helper docker-credential-nowhere (credsStore in {path}) is not"
        " installed: no docker-credential-nowhere on PATH; install it, or remove it from the"
        " config to pull reg.example anonymously"
    )
    write_config(config_dir, {"credsStore": "../../bin/sh"})
    with pytest.raises(AuthError, match=re.escape("'../../bin/sh' is not a helper name")):
        docker_config_credentials("reg.example/app")


@pytest.mark.parametrize("relative", [".", "", "bin"])
def test_a_helper_is_not_looked_up_relative_to_the_current_directory(
    config_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: str
) -> None:
    # PATH=".", an empty entry ("/usr/bin:") or "bin" name the current directory: a
    # docker-credential-desktop in a checkout one pulls from would run. docker's client
    # refuses a program found so (Go's exec.LookPath and its ErrDot, since Go 1.19).
    work = tmp_path / "checkout"
    (work / "bin").mkdir(parents=True)
    planted = write_helper(work / relative, "desktop", answering("u", SECRET))
    monkeypatch.chdir(work)
    monkeypatch.setenv("PATH", os.pathsep.join([relative, "/usr/bin", "/bin"]))
    path = write_config(config_dir, {"credsStore": "desktop"})
    with pytest.raises(AuthError, match="no docker-credential-desktop on PATH"):
        docker_config_credentials("reg.example/app")
    assert not (planted.parent / "desktop.asked").exists()  # it never ran
    # The same program in an absolute PATH entry is the helper.
    monkeypatch.setenv("PATH", os.pathsep.join([str(planted.parent), "/usr/bin", "/bin"]))
    source = f"docker-credential-desktop (credsStore in {path})"
    assert docker_config_credentials("reg.example/app") == Credentials(
        "u", SECRET, source=source, registry="reg.example"
    )


def test_docker_auth_config_is_read_before_the_file(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docker's CLI (28.3 on) asks DOCKER_AUTH_CONFIG's entries first, the file's for
    a registry it has none for (GitLab CI sets the variable)."""
    path = write_config(
        config_dir,
        {
            "auths": {
                "reg.example": {"auth": b64("file:pw-file")},
                "other.example": {"auth": b64("other:pw-other")},
            }
        },
    )
    monkeypatch.setenv(
        "DOCKER_AUTH_CONFIG",
        json.dumps(
            {
                "auths": {
                    "reg.example": {"auth": b64(f"env:{SECRET}")},
                    "https://index.docker.io/v1/": {"auth": b64("hub:pw-hub")},
                }
            }
        ),
    )
    assert docker_config_credentials("reg.example/app") == Credentials(
        "env", SECRET, source="$DOCKER_AUTH_CONFIG", registry="reg.example"
    )
    assert docker_config_credentials("alpine") == Credentials(
        "hub", "pw-hub", source="$DOCKER_AUTH_CONFIG", registry="docker.io"
    )
    assert docker_config_credentials("other.example/app") == Credentials(
        "other", "pw-other", source=str(path), registry="other.example"
    )
    # As for skopeo, an auth.json's entry comes before docker's, the variable included.
    auth_json = config_dir / "auth.json"
    auth_json.write_text(json.dumps({"auths": {"reg.example": {"auth": b64("podman:pw-p")}}}))
    found = pipeline.auth_file_credentials("reg.example/app", auth_file=auth_json)
    assert found is not None and found.username == "podman"
    environ = {"DOCKER_AUTH_CONFIG": os.environ["DOCKER_AUTH_CONFIG"], "HOME": str(config_dir)}
    found = pipeline.auth_file_credentials("reg.example/app", environ=environ)
    assert found is not None and found.source == "$DOCKER_AUTH_CONFIG"
    # Empty is unset.
    monkeypatch.setenv("DOCKER_AUTH_CONFIG", "")
    found = docker_config_credentials("reg.example/app")
    assert found is not None and found.username == "file"


@pytest.mark.parametrize(
    "entry",
    [{}, {"username": "env-user"}, {"username": "env-user", "password": SECRET}, None],
)
@pytest.mark.parametrize("registry", ["reg.example", "other.example"])
def test_a_docker_auth_config_entry_without_auth_is_an_error_naming_it(
    config_dir: Path,
    helpers: Path,
    monkeypatch: pytest.MonkeyPatch,
    entry: dict[str, str] | None,
    registry: str,
) -> None:
    """docker's CLI reads only ``auth`` from the variable's entries (``configEnv``), and
    an entry without one makes it refuse the whole variable and read its file for every
    registry. Such an entry was an anonymous pull here (``{}``, a user name alone) or a
    password docker never sends; now it is an error naming the variable and the entry,
    whichever registry the entry is for, and neither the file nor its helper is asked."""
    write_config(
        config_dir,
        {"auths": {"reg.example": {"auth": b64(f"file:{SECRET}")}}, "credsStore": "never"},
    )
    write_helper(helpers, "never", answering("helper", SECRET))
    auths: dict[str, object] = {"reg.example": {"auth": b64(f"env:{SECRET}")}, registry: entry}
    variable = {"auths": auths}
    monkeypatch.setenv("DOCKER_AUTH_CONFIG", json.dumps(variable))
    with pytest.raises(AuthError) as refused:
        docker_config_credentials("reg.example/app")
    message = str(refused.value)
    assert message.startswith(
        f"cannot use the auths entry '{registry}' in $DOCKER_AUTH_CONFIG: it has no auth"
    )
    assert SECRET not in message and "env-user" not in message
    assert not (helpers / "never.asked").exists()


def test_a_docker_auth_config_key_matches_only_as_written(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docker's in-memory store looks the registry's key up as it is: a key written as a
    URL, which the file matches by its host, is no entry for the registry there, and
    the file's entry is used, as docker uses it."""
    path = write_config(
        config_dir,
        {"auths": {"reg.example": {"auth": b64("file:pw-file")}}},
    )
    monkeypatch.setenv(
        "DOCKER_AUTH_CONFIG",
        json.dumps(
            {
                "auths": {
                    "https://reg.example/v1/": {"auth": b64(f"url:{SECRET}")},
                    "http://user:pw@reg.example:5000": {"auth": b64(f"userinfo:{SECRET}")},
                    "reg.example:5001/team": {"auth": b64(f"path:{SECRET}")},
                    "docker.io": {"auth": b64(f"hub:{SECRET}")},
                }
            }
        ),
    )
    assert docker_config_credentials("reg.example/app") == Credentials(
        "file", "pw-file", source=str(path), registry="reg.example"
    )
    assert docker_config_credentials("reg.example:5000/app") is None
    assert docker_config_credentials("reg.example:5001/team/app") is None
    # Docker Hub's key is its v1 URL, there as in the file: "docker.io" is not it.
    assert docker_config_credentials("alpine") is None


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ('{"auths": {"reg.example": {"auth": "' + SECRET, "it is not valid JSON (line 1, column"),
        ('["' + SECRET + '"]', "it is not a JSON object"),
        ('{"auths": ["' + SECRET + '"]}', "its auths is not an object"),
        ('{"auths": {"reg.example": {"auth": "' + SECRET + '"}}}', "its auth is not base64"),
    ],
)
def test_a_docker_auth_config_that_is_no_config_is_an_error_naming_it(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch, value: str, why: str
) -> None:
    monkeypatch.setenv("DOCKER_AUTH_CONFIG", value)
    with pytest.raises(AuthError) as refused:
        docker_config_credentials("reg.example/app")
    message = str(refused.value)
    assert "$DOCKER_AUTH_CONFIG" in message and why in message
    assert SECRET not in message


@pytest.mark.parametrize("field", ["username", "password", "identitytoken"])
def test_a_lone_surrogate_escape_in_an_entry_is_an_error_naming_the_field(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch, field: str
) -> None:
    """JSON's \ud800 escape reads as a lone surrogate, which no request can encode: such a
    password was accepted, and the pull failed later as an internal error."""
    entry = {"username": "user", "password": SECRET, field: SECRET + "\ud800"}
    path = write_config(config_dir, {"auths": {"reg.example": entry}})
    with pytest.raises(AuthError) as refused:
        docker_config_credentials("reg.example/app")
    assert str(refused.value) == (
        f"cannot use the auths entry 'reg.example' in {path}: its {field} is not valid"
        " Unicode (a lone surrogate escape)"
    )
    # The variable's entries are read for their auth alone (docker's CLI reads no other).
    env_entry = {"auth": b64(f"user:{SECRET}") + "\ud800"}
    monkeypatch.setenv("DOCKER_AUTH_CONFIG", json.dumps({"auths": {"reg.example": env_entry}}))
    with pytest.raises(AuthError, match=r"in \$DOCKER_AUTH_CONFIG: its auth is not valid Unicode"):
        docker_config_credentials("reg.example/app")


def test_a_docker_auth_config_with_a_lone_surrogate_is_an_error_naming_it(
    config_dir: Path,
) -> None:
    """os.environ's undecodable bytes (surrogateescape) are UTF-8 errors; a library
    caller's ``environ`` may hold any other lone surrogate, which no codec takes back."""
    for value in ('{"auths": {"reg.example": {"password": "\ud800"}}}', '{"auths": "\udcff"}'):
        environ = {"DOCKER_CONFIG": str(config_dir), "DOCKER_AUTH_CONFIG": value}
        with pytest.raises(AuthError) as refused:
            docker_config_credentials("reg.example/app", environ=environ)
        assert str(refused.value) == "cannot use $DOCKER_AUTH_CONFIG: it is not UTF-8 text"


def test_a_helper_s_answer_with_a_lone_surrogate_escape_is_an_error(
    config_dir: Path, helpers: Path
) -> None:
    write_config(config_dir, {"credsStore": "odd"})
    write_helper(helpers, "odd", answering("user", SECRET + "\ud800"))  # a JSON escape
    with pytest.raises(AuthError) as refused:
        docker_config_credentials("reg.example/app")
    assert str(refused.value).endswith(
        "answered for reg.example a Username or Secret that is not valid Unicode (a lone"
        " surrogate escape)"
    )
    assert SECRET not in str(refused.value)


def test_cli_with_a_lone_surrogate_escape_in_the_config_says_so(
    config_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no auth.json of the machine's
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    (config_dir / "config.json").write_text(
        '{"auths": {"127.0.0.1:9": {"username": "u", "password": "' + SECRET + '\\ud800"}}}'
    )
    result = run_cli("pull", "127.0.0.1:9/app:1", "--store", str(tmp_path / "store"))
    assert result.returncode == 1
    assert "internal error" not in result.stderr
    assert "its password is not valid Unicode" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert not (tmp_path / "store").exists()


# --- pulls from the real registry --------------------------------------------------------


async def test_a_basic_registry_takes_the_config_s_credentials(
    basic_registry: Any,
    config_dir: Path,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = images.sample_image(unique_seed, layer_size=4096)
    basic_registry.push(unique_repo, image, "1")
    ref = basic_registry.ref(unique_repo, "1")
    user, password = basic_registry.credentials
    path = write_config(
        config_dir, {"auths": {basic_registry.host: {"auth": b64(f"{user}:nope-{password}")}}}
    )
    store = Store.open(tmp_path / "store")

    wrong = docker_config_credentials(ref)
    with pytest.raises(AuthError) as refused:
        await pipeline.pull(ref, store=store, options=options(wrong))
    message = str(refused.value)
    assert f"check the credentials from {path} for {basic_registry.host}" in message
    assert f"nope-{password}" not in message

    write_config(
        config_dir,
        {"auths": {f"http://{basic_registry.host}/v2/": {"auth": b64(f"{user}:{password}")}}},
    )
    result = await pipeline.pull(ref, store=store, options=options(docker_config_credentials(ref)))
    assert str(result.image_id) == image.image_id
    logged = capsys.readouterr()  # structlog's defaults: every level, on stdout
    for secret in (password, f"nope-{password}", b64(f"{user}:{password}")):
        assert secret not in logged.out + logged.err


async def test_one_registry_s_config_credentials_are_refused_for_another_s_pull(
    basic_registry: Any, config_dir: Path, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    # A library host that made its options once, from the config's entry for one
    # registry, and pulls from another, would send the first one's secret to the second.
    image = images.sample_image(unique_seed, layer_size=4096)
    basic_registry.push(unique_repo, image, "1")
    ref = basic_registry.ref(unique_repo, "1")
    user, password = basic_registry.credentials
    path = write_config(
        config_dir,
        {
            "auths": {
                "elsewhere.example": {"auth": b64(f"{user}:{password}")},
                basic_registry.host: {"auth": b64(f"{user}:{password}")},
            }
        },
    )
    store = Store.open(tmp_path / "store")
    elsewhere = docker_config_credentials("elsewhere.example/app")
    assert elsewhere is not None and elsewhere.registry == "elsewhere.example"
    with pytest.raises(UsageError) as refused:
        await pipeline.pull(ref, store=store, options=options(elsewhere))
    message = str(refused.value)
    assert f"from {path} are for elsewhere.example" in message
    assert f"is on {basic_registry.host}" in message
    assert password not in message
    assert store.list_images() == []
    # Its own registry's entry pulls; so do credentials bound to no registry (-u's).
    own = docker_config_credentials(ref)
    result = await pipeline.pull(ref, store=store, options=options(own))
    assert str(result.image_id) == image.image_id
    given = Credentials(user, password)
    result = await pipeline.pull(ref, store=store, options=options(given))
    assert str(result.image_id) == image.image_id


async def test_a_token_registry_takes_a_helper_s_credentials(
    token_registry: Any,
    token_server: Any,
    config_dir: Path,
    helpers: Path,
    unique_seed: str,
    tmp_path: Path,
) -> None:
    image = images.sample_image(unique_seed, layer_size=4096)
    token_registry.push("team/private-app", image, "1")
    ref = token_registry.ref("team/private-app", "1")
    user, password = token_registry.credentials
    write_config(config_dir, {"credHelpers": {token_registry.host: "vault"}})
    write_helper(helpers, "vault", answering(user, password))

    result = await pipeline.pull(
        ref, store=Store.open(tmp_path / "store"), options=options(docker_config_credentials(ref))
    )

    assert str(result.image_id) == image.image_id
    assert asked(helpers, "vault") == ["get", token_registry.host]
    assert any(r.user == user for r in token_server.requests)


async def test_an_identity_token_is_sent_as_oauth2_s_refresh_token_grant(
    token_registry: Any,
    token_server: Any,
    config_dir: Path,
    unique_seed: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = images.sample_image(unique_seed, layer_size=4096)
    token_registry.push("team/private-app", image, "1")
    ref = token_registry.ref("team/private-app", "1")
    user, _ = token_registry.credentials
    token_server.reset()  # the push's requests
    identity = "idt-" + "Q7x" * 12
    token_server.refresh_tokens[identity] = user
    path = write_config(
        config_dir, {"auths": {token_registry.host: {"username": user, "identitytoken": identity}}}
    )
    store = Store.open(tmp_path / "store")

    result = await pipeline.pull(ref, store=store, options=options(docker_config_credentials(ref)))

    assert str(result.image_id) == image.image_id
    posts = [r for r in token_server.requests if r.method == "POST"]
    assert posts and all(r.grant_type == "refresh_token" for r in posts)
    assert {r.client_id for r in posts} == {"imagec-pipe"}
    assert {r.user for r in posts} == {user}
    assert all(r.authorization is None for r in token_server.requests)  # no Basic with it
    assert posts[0].service == token_server.service
    assert posts[0].scopes == ("repository:team/private-app:pull",)

    # A token the service no longer takes: it says so, quoting the token back.
    write_config(
        config_dir, {"auths": {token_registry.host: {"identitytoken": identity + "-revoked"}}}
    )
    with pytest.raises(AuthError) as refused:
        await pipeline.pull(ref, store=store, options=options(docker_config_credentials(ref)))
    message = str(refused.value)
    assert "refused a token for an identity token (HTTP 400: invalid_grant:" in message
    assert f"check the credentials from {path} for {token_registry.host}" in message
    assert identity not in message
    captured = capsys.readouterr()
    assert identity not in captured.out + captured.err


async def test_an_identity_token_is_not_sent_to_a_basic_registry(
    basic_registry: Any, config_dir: Path, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    basic_registry.push(unique_repo, images.sample_image(unique_seed, layer_size=4096), "1")
    ref = basic_registry.ref(unique_repo, "1")
    path = write_config(
        config_dir, {"auths": {basic_registry.host: {"identitytoken": "idt-x1y2z3w4"}}}
    )
    with pytest.raises(AuthError) as refused:
        await pipeline.pull(
            ref,
            store=Store.open(tmp_path / "store"),
            options=options(docker_config_credentials(ref)),
        )
    assert (
        f"{basic_registry.host} asks for a username and password, and the credentials from"
        f" {path} are an identity token" in str(refused.value)
    )
    assert "idt-x1y2z3w4" not in str(refused.value)


# --- the command line ---------------------------------------------------------------------


def test_cli_pulls_with_the_config_s_credentials_and_never_shows_them(
    basic_registry: Any, config_dir: Path, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    basic_registry.push(unique_repo, images.sample_image(unique_seed, layer_size=4096))
    ref = basic_registry.ref(unique_repo)
    user, password = basic_registry.credentials
    wrong = f"{password}-but-not-9z8y"
    path = write_config(
        config_dir, {"auths": {basic_registry.host: {"auth": b64(f"{user}:{wrong}")}}}
    )
    store = str(tmp_path / "store")
    debug = ("--log-level", "debug", "--log-json")

    refused = run_cli("pull", ref, "--store", store, "--json", *debug)
    assert refused.returncode == 1
    [line] = [x for x in refused.stderr.splitlines() if x.startswith("imagec-pipe: error:")]
    assert f"check the credentials from {path} for {basic_registry.host}" in line
    for secret in (wrong, b64(f"{user}:{wrong}"), b64(f"{user}:{wrong}").rstrip("=")):
        assert secret not in refused.stdout + refused.stderr

    # -u wins over the config.
    given = run_cli("pull", ref, "--store", store, "-q", "-u", user, "--password-stdin",
                    *debug, stdin=password + "\n")  # fmt: skip
    assert given.returncode == 0, given.stderr
    assert given.stdout == f"{ref}\n"

    write_config(config_dir, {"auths": {basic_registry.host: {"auth": b64(f"{user}:{password}")}}})
    pulled = run_cli("pull", ref, "--store", str(tmp_path / "other"), "-q", *debug)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout == f"{ref}\n"
    assert str(path) in pulled.stderr  # the debug log says where they came from
    for secret in (password, b64(f"{user}:{password}")):
        assert secret not in pulled.stdout + pulled.stderr


def test_cli_with_a_malformed_config_says_which_file_and_creates_no_store(
    config_dir: Path, tmp_path: Path
) -> None:
    path = config_dir / "config.json"
    path.write_text('{"auths": {"127.0.0.1:9": {"auth": "' + SECRET)
    store = tmp_path / "store"
    done = run_cli("pull", "127.0.0.1:9/team/app", "--store", str(store))
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"imagec-pipe: error: pulling 127.0.0.1:9/team/app: cannot use {path}: it is not"
        " valid JSON (line 1, column "
    )
    assert len(done.stderr.splitlines()) == 1
    assert SECRET not in done.stdout + done.stderr
    assert not store.exists()
    # With -u the config is not read at all.
    given = run_cli("pull", "127.0.0.1:9/team/app", "--store", str(store), "-u", "ci",
                    "--password-stdin", stdin="pw\n")  # fmt: skip
    assert "cannot use" not in given.stderr


def test_cli_with_a_bad_option_runs_no_credential_helper(
    config_dir: Path, helpers: Path, tmp_path: Path
) -> None:
    # A helper may ask a person for a passphrase (a keychain, pass's gpg agent): a
    # mistyped --ca-file must fail before it is run, not after the person answered.
    write_config(config_dir, {"credsStore": "keychain"})
    write_helper(helpers, "keychain", answering("u", SECRET))
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    done = run_cli("pull", "127.0.0.1:9/team/app", "--store", str(tmp_path / "store"),
                   "--ca-file", str(not_pem))  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "ca.pem" in done.stderr
    assert not (helpers / "keychain.asked").exists()


def test_cli_pulls_from_a_token_registry_with_a_helper_s_credentials(
    token_registry: Any,
    token_server: Any,
    config_dir: Path,
    helpers: Path,
    unique_seed: str,
    tmp_path: Path,
) -> None:
    token_registry.push("team/private-app", images.sample_image(unique_seed, layer_size=4096))
    ref = token_registry.ref("team/private-app")
    user, password = token_registry.credentials
    write_config(config_dir, {"credsStore": "vault"})
    write_helper(helpers, "vault", answering(user, password))

    pulled = run_cli("pull", ref, "--store", str(tmp_path / "store"), "-q",
                     "--log-level", "debug", "--log-json")  # fmt: skip

    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout == f"{ref}\n"
    assert asked(helpers, "vault") == ["get", token_registry.host]
    assert password not in pulled.stderr
    assert b64(f"{user}:{password}") not in pulled.stderr


def test_a_user_name_without_a_password_or_the_reverse_is_no_credentials(
    config_dir: Path, helpers: Path
) -> None:
    # docker's client sends Basic credentials (or asks a token service with them) only
    # when both are there; with one, it pulls anonymously, and a public image pulls.
    write_config(
        config_dir,
        {
            "auths": {
                "user-only.example": {"username": "ci"},
                "password-only.example": {"password": SECRET},
                "empty-password.example": {"auth": b64("ci:")},
            },
            "credHelpers": {"helper.example": "half", "helper2.example": "half2"},
        },
    )
    write_helper(helpers, "half", answering("ci", ""))
    write_helper(helpers, "half2", answering("", SECRET))
    with structlog.testing.capture_logs() as logs:
        for ref in (
            "user-only.example/app",
            "password-only.example/app",
            "empty-password.example/app",
            "helper.example/app",
            "helper2.example/app",
        ):
            assert docker_config_credentials(ref) is None, ref
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 5
    assert "password-only.example" in warnings[1]["where"]
    assert "docker-credential-half2" in warnings[4]["where"]
    assert SECRET not in repr(logs)


def test_the_cli_pulls_with_docker_auth_config_s_credentials(
    basic_registry: Any,
    config_dir: Path,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = images.sample_image(unique_seed, layer_size=4096)
    basic_registry.push(unique_repo, image, "1")
    ref = basic_registry.ref(unique_repo, "1")
    user, password = basic_registry.credentials
    monkeypatch.setenv("HOME", str(tmp_path))  # no auth.json of the machine's
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv(
        "DOCKER_AUTH_CONFIG",
        json.dumps({"auths": {basic_registry.host: {"auth": b64(f"{user}:{password}")}}}),
    )
    result = run_cli("pull", ref, "--store", str(tmp_path / "store"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ref
    assert password not in result.stdout + result.stderr
