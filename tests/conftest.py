"""Shared fixtures: real registries, a fixture server, a proxy, and a deadline per test.

Registries (session-scoped; each yields a ``tests.support.registry.RegistryServer`` with
``.host`` "127.0.0.1:PORT", ``.url``, ``.storage_dir``, ``.username``/``.password`` where
relevant, ``.ca_pem`` for TLS, ``.push(repo, image, tag)``, ``.client()``):

- ``registry``: plain HTTP, anonymous.
- ``basic_registry``: htpasswd basic auth.
- ``token_registry``: bearer tokens from ``.token_server`` (pull of ``public/*`` is
  anonymous). Tests that program token faults use ``token_server`` (reset after the test).
- ``tls_registry``: HTTPS with a trustme CA (``.ca_pem``), anonymous.
- ``registry_factory``: ``make(auth=..., tls=..., **run_registry_kwargs)`` a private
  registry stopped at the end of the test (for tests that must not share storage).

Function-scoped factories: ``fixture_server()`` → ``FixtureServer``; ``proxy(upstream,
rate=None, latency=0.0)`` → ``Proxy`` (upstream: a RegistryServer or "host:port").
Helpers: ``unique_repo`` (a repository name unique to the test), ``unique_seed`` (a seed
unique to the test, for images whose blobs a test corrupts). Every test starts with no
bearer tokens remembered for redaction (``stages._redact.recent_tokens``).

Registry tests are skipped (with the reason) when docker-registry is not installed, except
in CI (``$CI`` set), where that is an error. Every test has a deadline: 120 s by default,
``IMAGEC_TEST_DEADLINE`` seconds, or ``@pytest.mark.deadline(seconds)``; a test past it
fails with the stacks of all threads dumped to its captured stderr (trio tests are
cancelled, so the traceback shows where they were waiting).
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    # Appended, not prepended: under tox the installed wheel must win over the source tree.
    sys.path.append(str(_ROOT))

from tests.support.registry import (  # noqa: E402
    RegistryServer,
    find_registry_binary,
    run_registry,
)
from tests.support.servers import FixtureServer, Proxy, run_fixture_server, run_proxy  # noqa: E402
from tests.support.tokens import TokenServer  # noqa: E402

# --- deadline --------------------------------------------------------------------------

DEFAULT_DEADLINE = float(os.environ.get("IMAGEC_TEST_DEADLINE", "120"))
_GRACE = 10.0  # after a trio cancellation, before raising / before faulthandler exits
_deadline_key = pytest.StashKey[float]()
_fired_key = pytest.StashKey[str]()
_phase_key = pytest.StashKey[str]()


class DeadlineExceeded(Exception):
    """Raised in the main thread when a test runs past its deadline."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "deadline(seconds): fail the test if it runs longer (default 120 s)"
    )
    # A shell starts a background job (`bash tests/run.sh &`) with SIGINT ignored, and an
    # ignored signal stays ignored across exec: every CLI the Ctrl-C tests start then
    # ignored their SIGINT, as a CLI should, and those tests failed for how the suite was
    # launched. Handled here, it reaches the children as the default again.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _deadline_for(item: pytest.Item) -> float:
    marker = item.get_closest_marker("deadline")
    if marker is not None and marker.args:
        return float(marker.args[0])
    return DEFAULT_DEADLINE


def _cancel_trio_run() -> None:
    """Dump every trio task's await stack, then cancel the test (pytest-trio's nursery).

    Runs inside the trio run loop (scheduled from the signal handler with run_sync_soon).
    Trio's own system tasks (named ``<...>``) and nurseries are left alone: cancelling them
    breaks the run loop.
    """
    import trio

    root = trio.lowlevel.current_root_task()
    if root is None:
        return

    def dump(task: trio.lowlevel.Task, depth: int) -> None:
        sys.stderr.write(f"{'  ' * depth}task {task.name}\n")
        for frame, lineno in task.iter_await_frames():
            code = frame.f_code
            sys.stderr.write(f"{'  ' * depth}  {code.co_filename}:{lineno} in {code.co_name}\n")
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                dump(child, depth + 1)

    sys.stderr.write("*** trio tasks:\n")
    for nursery in root.child_nurseries:
        for task in nursery.child_tasks:
            if task.name.startswith("<"):
                continue
            dump(task, 0)
            for child_nursery in task.child_nurseries:
                child_nursery.cancel_scope.cancel()


@contextlib.contextmanager
def _armed(item: pytest.Item, phase: str) -> Iterator[None]:
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return
    seconds = _deadline_for(item)
    remaining = max(
        0.01, item.stash.get(_deadline_key, time.monotonic() + seconds) - time.monotonic()
    )
    state = {"cancelled": False}

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        message = f"{item.nodeid} exceeded its deadline of {seconds:g} s (during {phase})"
        item.stash[_fired_key] = message
        item.stash[_phase_key] = phase
        sys.stderr.write(f"\n*** {message}; stacks of all threads:\n")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        if not state["cancelled"]:
            try:
                import trio

                token = trio.lowlevel.current_trio_token()
            except (ImportError, RuntimeError):
                token = None
            if token is not None:
                # Cancel the whole trio run: the test fails with trio.Cancelled whose
                # traceback shows where it waited. If that does not end it, raise later.
                state["cancelled"] = True
                token.run_sync_soon(_cancel_trio_run)
                signal.setitimer(signal.ITIMER_REAL, _GRACE)
                return
        raise DeadlineExceeded(message)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, remaining)
    # Backstop for a main thread stuck where signals are not handled: dump and exit.
    faulthandler.dump_traceback_later(remaining + 2 * _GRACE, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    item.stash[_deadline_key] = time.monotonic() + _deadline_for(item)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None]:
    with _armed(item, "setup"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None]:
    with _armed(item, "call"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    with _armed(item, "teardown"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    message = item.stash.get(_fired_key, None)
    if message is not None and call.when == item.stash.get(_phase_key, None):
        report.sections.append(("deadline", message))
        if not report.failed:  # a cancelled trio test may end "cleanly": it did not pass
            report.outcome = "failed"
            report.longrepr = message
    return report


# --- registries ------------------------------------------------------------------------

_REGISTRY_FIXTURES = {
    "registry",
    "basic_registry",
    "token_registry",
    "token_server",
    "tls_registry",
    "registry_factory",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _REGISTRY_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.registry)


def _require_registry() -> None:
    if find_registry_binary() is not None:
        return
    message = (
        "docker-registry is not installed (Debian: apt-get install docker-registry, or run "
        "bash tests/run.sh; elsewhere set IMAGEC_REGISTRY_BIN to a distribution registry)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and {message}", pytrace=False)
    pytest.skip(message)


@contextlib.contextmanager
def _session_registry(
    factory: pytest.TempPathFactory, name: str, **kwargs: Any
) -> Iterator[RegistryServer]:
    _require_registry()
    with run_registry(workdir=factory.mktemp(name), **kwargs) as server:
        yield server


@pytest.fixture(autouse=True)
def _default_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A test that runs ``main()`` configures logging for the whole process (level,
    renderer, stream) and remembers the passwords it reads (``add_secret``): every test
    starts from the defaults, whichever test ran before it."""
    import structlog

    from pipeline import _logging
    from stages import _log

    monkeypatch.setattr(_logging._Applied, "settings", _logging.LogSettings())
    monkeypatch.setattr(_logging._Applied, "stream", None)
    monkeypatch.setattr(_log._State, "level", 0)
    monkeypatch.setattr(_log._State, "pending", None)
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with _session_registry(tmp_path_factory, "registry") as server:
        yield server


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with _session_registry(tmp_path_factory, "basic-registry", auth="basic") as server:
        yield server


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with _session_registry(tmp_path_factory, "token-registry", auth="token") as server:
        yield server


@pytest.fixture
def token_server(token_registry: RegistryServer) -> Iterator[TokenServer]:
    """The token registry's token server, with recorded requests and faults reset."""
    assert token_registry.token_server is not None
    server = token_registry.token_server
    server.reset()
    try:
        yield server
    finally:
        server.reset()


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with _session_registry(tmp_path_factory, "tls-registry", tls=True) as server:
        yield server


@pytest.fixture
def registry_factory(tmp_path: Path) -> Iterator[Callable[..., RegistryServer]]:
    """``make(auth="none", tls=False, **kwargs)``: a private registry for this test."""
    _require_registry()
    with contextlib.ExitStack() as stack:
        made = 0

        def make(**kwargs: Any) -> RegistryServer:
            nonlocal made
            made += 1
            workdir = tmp_path / f"registry-{made}"
            return stack.enter_context(run_registry(workdir=workdir, **kwargs))

        yield make


# --- fixture server and proxy ----------------------------------------------------------


@pytest.fixture
def fixture_server() -> Iterator[Callable[[], FixtureServer]]:
    """``make()`` → a FixtureServer on 127.0.0.1, stopped at the end of the test."""
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(run_fixture_server())


@pytest.fixture
def proxy() -> Iterator[Callable[..., Proxy]]:
    """``make(upstream, rate=None, latency=0.0)`` → a counting/throttling Proxy in front of
    ``upstream`` (a RegistryServer or "host:port"), stopped at the end of the test."""
    with contextlib.ExitStack() as stack:

        def make(
            upstream: RegistryServer | str, *, rate: float | None = None, latency: float = 0.0
        ) -> Proxy:
            host = upstream.host if isinstance(upstream, RegistryServer) else upstream
            return stack.enter_context(run_proxy(host, rate=rate, latency=latency))

        yield make


# --- process state ---------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _forget_recent_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no tokens to cut (``stages._redact.recent_tokens``): a token
    one test was issued ("T", "tok1") would be cut out of the next one's messages."""
    from stages import _redact

    monkeypatch.setattr(_redact._RecentTokens, "tokens", ())


@pytest.fixture(autouse=True)
def _no_auth_files(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No test reads the auth files of whoever runs the suite: the CLI reads them for a
    pull without ``-u`` (``stages/_authfile.py``: the containers tools' auth.json files,
    docker's config, ``~/.dockercfg``), and the commands the tests start inherit this
    environment. Every place is pointed at one empty directory (``HOME`` too, for
    ``~/.dockercfg`` and ``~/.config``); a test that wants a file sets the variable itself."""
    empty = tmp_path_factory.getbasetemp() / "no-auth-files"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("DOCKER_CONFIG", str(empty))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(empty))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(empty))
    monkeypatch.setenv("HOME", str(empty))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)


# --- names -----------------------------------------------------------------------------


def _slug(nodeid: str, limit: int = 60) -> str:
    name = nodeid.rsplit("::", 1)[-1].lower()
    slug = re.sub(r"[^a-z0-9]+", "-", name).strip("-")[:limit].strip("-") or "test"
    return f"{slug}-{hashlib.sha256(nodeid.encode()).hexdigest()[:8]}"


@pytest.fixture
def unique_repo(request: pytest.FixtureRequest) -> str:
    """A repository name (``t/<test-name>-<hash>``) no other test uses."""
    return f"t/{_slug(request.node.nodeid)}"


@pytest.fixture
def unique_seed(request: pytest.FixtureRequest) -> str:
    """A seed no other test uses: images built from it share no blob with other tests."""
    return str(request.node.nodeid)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: room for a store, not for a layer (needs root and mount(8))."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a small tmpfs needs root and mount(8)")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
        capture_output=True,
        timeout=30,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True, capture_output=True, timeout=30)
