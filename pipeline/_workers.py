"""Layer workers in processes: one layer's stages run whole in another process.

DESIGN.md's multiprocess shape: the parent keeps the reference, auth, manifest, LCache
and the store's metadata; a worker process runs ``fetch_layer`` (blob stream → tee →
digest / inflate / diffID / ingest) for one whole layer with its own trio loop and HTTP
client, writing into the ingest file the parent created, and hands back the
``VerifiedLayer``. No layer bytes cross the process boundary. The worker authenticates
with the same ``RegistryOptions`` (its own ping and token: a few small requests per
layer). Progress: ``trio_parallel.run_sync`` returns only a final result, so the parent
polls the size of the ingest file the worker appends to; the events a file's size cannot
show (``layer-retrying``) come back over a Unix datagram socket per layer task
(``_Relay``). Logs: a worker applies the parent's settings; where the parent logs to a
stream of its own (the CLI's, above its progress block on a terminal), the worker's lines
come back over the same socket and are written there.

The pool is a ``trio_parallel`` worker context created by ``pull()`` and passed down.
Whether this beats threads is decided by the benchmark harness (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import pickle
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, cast

import trio

from stages._config import Limits, RegistryOptions
from stages._errors import WorkerError
from stages._events import ProgressEvent, ProgressSink, VerifiedLayer
from stages._layer import fetch_layer
from stages._reference import Reference
from stages._registry import RegistryClient
from stages._types import Descriptor, Digest

from ._allocator import tune_allocator
from ._logging import LogSettings, configure_logging, held_secrets, log_stream
from ._store import Writeback, store_error

if TYPE_CHECKING:  # imported by open_layer_workers: most pulls use threads and never need it
    import trio_parallel

__all__ = ["LayerTask", "open_layer_workers", "run_layer_task"]

_POLL_S = 0.1
_WORKER_THREADS = 4  # for the one layer a worker runs: its inflate hops and its fsync
# The longest log line a worker relays (a longer one, a traceback, goes to its stderr).
_LOG_LINE_BYTES = 64 * 1024
# The first byte of each datagram a worker sends its relay: what the rest is.
_LOG_LINE = b"L"  # a log line, for the parent's log stream
_EVENT = b"E"  # a ProgressEvent as JSON, for the parent's progress sink
# The events a worker relays. The rest it sends are known to the parent otherwise: the
# bytes of ``layer-downloading`` by the size of the ingest file, ``layer-verifying`` by
# the worker's return.
_RELAYED_EVENTS = frozenset({"layer-retrying"})


@dataclass(frozen=True)
class LayerTask:
    """Everything a worker process needs for one layer; pickled to the worker."""

    ref: Reference
    layer: Descriptor
    diff_id: Digest
    ingest_path: str
    registry: RegistryOptions
    limits: Limits
    log: LogSettings  # the parent's (``_logging.current_settings()``), on the worker's stderr
    puller_pid: int  # the process that runs the pull: the worker stops when it is gone
    # The parent's socket for this task (``_Relay``), where the worker sends the progress
    # events the parent cannot see for itself; None: there is none (they are only logged).
    relay: str | None = None
    # No larger layer of the pull is downloading: see ``fetch_layer``'s ``largest``.
    largest: bool = False


@contextlib.asynccontextmanager
async def open_layer_workers() -> AsyncIterator[trio_parallel.WorkerContext]:
    """The process pool of one pull: forked workers (one per layer that holds a download
    slot while ``run_layer_task`` runs it), gone when the pull ends."""
    import trio_parallel  # here, not at the top: 15 ms of start-up for every pull

    async with trio_parallel.open_worker_context(
        worker_type=trio_parallel.WorkerType.FORKSERVER, idle_timeout=30.0
    ) as context:
        yield context


async def run_layer_task(
    workers: trio_parallel.WorkerContext,
    task: LayerTask,
    progress: ProgressSink,
) -> VerifiedLayer:
    """Run ``task`` in a worker process (the caller holds the layer's download slot),
    relaying its byte count as progress events,
    its ``layer-retrying`` events as it sends them, then ``layer-verifying`` as threads
    mode sends it (the worker has checked the digest and diffID by the time it returns;
    a display or a ``--json`` reader sees the same sequence of events in either mode).

    Cancelling (Ctrl-C, a failed sibling layer) kills the worker; the parent's ingest
    context then removes the partial file. The worker's events, and its log lines when
    this process logs to a stream of its own, come back through a ``_Relay``.
    """
    import trio_parallel  # loaded already: open_layer_workers made ``workers``

    ref_text, digest = str(task.ref), str(task.layer.digest)
    result: VerifiedLayer | None = None

    async def relay_progress(done: trio.Event) -> None:
        last = 0
        while not done.is_set():
            with trio.move_on_after(_POLL_S):
                await done.wait()
            with contextlib.suppress(OSError):
                current = os.stat(task.ingest_path).st_size
                if current != last:
                    last = current
                    event = ProgressEvent(
                        "layer-downloading", ref_text, digest, current, task.layer.size
                    )
                    progress(event)

    done = trio.Event()
    with _open_relay(progress) as relay:
        if relay is not None:
            task = replace(task, relay=relay.path)
            if relay.takes_log_lines:
                task = replace(task, log=replace(task.log, relay=relay.path))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay_progress, done)
            if relay is not None:
                nursery.start_soon(relay.forward, done)
            try:
                # A limiter of its own: the caller's download slot is what limits how
                # many run; trio-parallel's default would allow only one per core.
                result = await workers.run_sync(
                    _fetch_layer_in_worker,
                    task,
                    limiter=trio.CapacityLimiter(1),
                    kill_on_cancel=True,
                )
            except trio_parallel.BrokenWorkerError as exc:
                raise WorkerError(
                    f"the worker process for layer {digest} died before it finished "
                    f"({_how_it_ended(exc)}); pull again, or with --layer-workers threads",
                    ref=ref_text,
                    digest=digest,
                ) from exc
            finally:
                done.set()
    assert result is not None
    size = task.layer.size
    progress(ProgressEvent("layer-verifying", ref_text, digest, size, size))
    return result


def _how_it_ended(exc: BaseException) -> str:
    """How the worker process ended, as "killed by SIGKILL" or "exit code 1", read from
    trio-parallel's error (its second argument is the process); "it vanished" when that
    is not there to read."""
    process = exc.args[1] if len(exc.args) > 1 else None
    code = getattr(process, "exitcode", None)
    if not isinstance(code, int):
        return "it vanished"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _fetch_layer_in_worker(task: LayerTask) -> VerifiedLayer:
    """The worker's side: a trio loop of its own around the per-layer stages.

    The worker is a process of ours, started fresh by the forkserver: it gets the parent's
    logging settings and the CLI's allocator setting here (see ``_allocator``), so the
    two modes compare fairly and its logs look like the parent's.
    """
    settings = task.log
    stream = None
    if settings.relay is not None:  # an io.TextIOBase
        stream = cast(TextIO, _RelayedLines(settings.relay, tty=settings.tty))
    configure_logging(level=settings.level, json=settings.json, stream=stream)
    tune_allocator()
    # Held, not added: the secrets of every pull the parent runs come along, and this
    # task's own must not be pushed out of the worker's RECENT_SECRETS_KEPT by them.
    with held_secrets(settings.secrets):
        try:
            return trio.run(_fetch_layer, task)
        except Exception as exc:
            sent = sendable(exc)
            if sent is exc:
                raise
            raise sent from None


def sendable(exc: Exception) -> Exception:
    """``exc`` as the worker can hand it back to the pulling process, which it does
    pickled, with its chain of causes (trio-parallel's workers install tblib's pickling
    of exceptions). A cause whose class pickle cannot name (an extension's error class
    that says it lives in another module: ISA-L's ``IsalError`` was one) made the pull
    fail with "internal error: PicklingError" instead of the error itself. So where the
    chain cannot be pickled it is cut (the message stays whole), and an error that
    cannot be pickled even alone becomes a ``WorkerError`` that names it."""
    try:
        pickle.dumps(exc)
        return exc
    except Exception:  # pickle raises PicklingError, AttributeError, TypeError...
        pass
    exc.__cause__ = None
    exc.__context__ = None
    try:
        pickle.dumps(exc)
        return exc
    except Exception:
        return WorkerError(
            f"the worker process failed with an error it cannot hand back: "
            f"{type(exc).__name__}: {exc}",
            ref=getattr(exc, "ref", None),
            digest=getattr(exc, "digest", None),
        )


async def _fetch_layer(task: LayerTask) -> VerifiedLayer:
    """``_fetch_layer_for``, ended early if the pulling process ends first.

    The pull cancels its workers when it is cancelled, but a process killed outright
    (SIGKILL, the OOM killer) cancels nothing: its workers went on downloading their
    layers into files nobody would commit, for as long as the layers took, and they held
    the pipes of its output (a ``--json | consumer`` waited for them). trio-parallel's
    worker notices a dead parent only between jobs.
    """
    verified: VerifiedLayer | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_when_gone, task.puller_pid, nursery.cancel_scope)
        verified = await _fetch_layer_for(task)
        nursery.cancel_scope.cancel()
    if verified is None:  # nobody will read this: trio-parallel's worker then exits
        if task.relay is not None:
            _remove_relay(task.relay)
        raise WorkerError(
            f"the pulling process {task.puller_pid} ended; layer {task.layer.digest} abandoned",
            ref=str(task.ref),
            digest=str(task.layer.digest),
        )
    return verified


def _remove_relay(path: str) -> None:
    """Remove a relay's socket and its directory: in ``_Relay.close``, and in a worker
    whose pulling process ended without closing its relay (killed outright, it left a
    directory in $TMPDIR for each layer it had in a worker). What cannot be removed
    stays; that is no error."""
    with contextlib.suppress(OSError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(path))


async def _cancel_when_gone(pid: int, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` when process ``pid`` ends, which makes a pidfd readable (Linux
    5.3 and later; where there are no pidfds, the worker is not watched)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:  # gone already
        scope.cancel()
        return
    except (AttributeError, OSError):
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)
    scope.cancel()


async def _fetch_layer_for(task: LayerTask) -> VerifiedLayer:
    limiter = trio.CapacityLimiter(_WORKER_THREADS)
    with _PathIngest(Path(task.ingest_path), task.layer.digest, str(task.ref)) as ingest:
        async with RegistryClient.open(task.registry, task.limits) as client:
            return await fetch_layer(
                client,
                task.ref,
                task.layer,
                task.diff_id,
                ingest,
                limits=task.limits,
                limiter=limiter,
                progress=_relayed_progress(task.relay) if task.relay is not None else None,
                largest=task.largest,
            )


@contextlib.contextmanager
def _open_relay(progress: ProgressSink) -> Iterator[_Relay | None]:
    """The relay for one layer task: its progress events go to ``progress``, its log
    lines to this process's log stream when it has one of its own. None when no socket
    could be made: the worker's lines then go to its stderr, as they do without a stream
    of this process's, and its retries are only logged."""
    try:
        relay = _Relay(log_stream(), progress)
    except OSError:
        yield None
        return
    try:
        yield relay
    finally:
        relay.close()


class _Relay:
    """Where a worker's progress events and log lines come back to this process.

    Events: a retry in a worker (a connection dropped mid-layer, a 503) sent its
    ``layer-retrying`` to no one; a display and a ``--json`` reader saw the layer stop,
    then go on, where threads mode showed "Retrying". Log lines: on a terminal the CLI
    writes its log lines above the progress block it redraws; a worker writing to the
    terminal itself put its line under the block, and the next redraw wiped it out. A
    library host's stream, a file say, never got the workers' lines either.

    A Unix datagram socket in a directory of its own (mode 0700: only this user can
    send to it), one datagram per line or event, its first byte saying which: lines and
    events from several workers never run into each other, and a worker blocks when the
    queue (the kernel's, bounded) is full. Lines come only when ``stream`` is given:
    otherwise the worker writes them to the stderr it shares with this process.
    """

    def __init__(self, stream: TextIO | None, progress: ProgressSink) -> None:
        self._stream = stream
        self._progress = progress
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._directory: str | None = None
        try:
            self._directory = tempfile.mkdtemp(prefix="imagec-pipe-")
            self.path = os.path.join(self._directory, "relay")
            self._socket.bind(self.path)  # a $TMPDIR too long for a socket's path: OSError
            self._socket.setblocking(False)
        except OSError:
            self.close()
            raise

    @property
    def takes_log_lines(self) -> bool:
        """Whether the worker is to send its log lines here (this process has a log
        stream of its own) rather than write them to its stderr."""
        return self._stream is not None

    def close(self) -> None:
        """Close the socket and remove its directory; one left behind is no error (it
        must not replace the one a layer may be ending with)."""
        self._socket.close()
        if self._directory is not None:
            _remove_relay(self.path)

    async def forward(self, done: trio.Event) -> None:
        """Pass on each datagram as it comes, until ``done`` (the worker has returned);
        then the ones still queued."""
        async with trio.open_nursery() as nursery:

            async def stop_when_done() -> None:
                await done.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_when_done)
            while True:
                await trio.lowlevel.wait_readable(self._socket)
                self._pass_on_queued()
        self._pass_on_queued()

    def _pass_on_queued(self) -> None:
        while True:
            try:
                datagram = self._socket.recv(1 + _LOG_LINE_BYTES)
            except BlockingIOError:
                return
            kind, body = datagram[:1], datagram[1:]
            if kind == _EVENT:
                event = _event_from(body)
                if event is not None:
                    self._progress(event)
            elif kind == _LOG_LINE and self._stream is not None:
                with contextlib.suppress(OSError, ValueError):  # lost, as on a closed stderr
                    self._stream.write(body.decode("utf-8", "replace"))


def _event_from(body: bytes) -> ProgressEvent | None:
    """The event a worker sent (``_relayed_progress``); None for what is not one."""
    try:
        return ProgressEvent(**json.loads(body))
    except (ValueError, TypeError):
        return None


def _relayed_progress(path: str) -> ProgressSink:
    """A worker's progress sink: the events in ``_RELAYED_EVENTS``, one datagram each, to
    the parent's ``_Relay`` at ``path``. One that cannot be sent (the parent is gone) is
    dropped: the worker logs each retry as well."""

    def send(event: ProgressEvent) -> None:
        if event.event not in _RELAYED_EVENTS:
            return
        datagram = _EVENT + json.dumps(dataclasses.asdict(event)).encode()
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
        ):
            sock.sendto(datagram, path)

    return send


class _RelayedLines(io.TextIOBase):
    """A worker's log stream when the parent relays its lines (``_Relay``): each write
    (a WriteLogger writes a line in one) is one datagram to the parent's socket. A line
    too long for one, or with the parent gone (killed), goes to the worker's stderr."""

    def __init__(self, path: str, *, tty: bool) -> None:
        super().__init__()
        self._path = path
        self._tty = tty

    def write(self, text: str) -> int:
        data = text.encode("utf-8", "backslashreplace")
        if len(data) <= _LOG_LINE_BYTES:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                    sock.sendto(_LOG_LINE + data, self._path)
                return len(text)
            except OSError:
                pass
        sys.stderr.write(text)
        return len(text)

    def isatty(self) -> bool:
        """The parent's stream's: the worker renders its lines as the parent does."""
        return self._tty


class _PathIngest:
    """The ingest file the parent created, opened again by path in the worker.

    The parent's own handle stays unwritten; it renames the file after the worker
    returned a verified layer (``Store.commit_layer`` checks the size on disk). Write and
    sync failures say what the parent's ``Ingest`` says (a full disk: free some space).
    """

    def __init__(self, path: Path, digest: Digest, ref: str) -> None:
        self._file = open(path, "r+b")  # noqa: SIM115 - closed by __exit__
        self._store = path.parent.parent  # <store>/ingest/<file>
        self._digest = digest
        self._ref = ref
        self._written = 0
        self._writeback = Writeback()

    def __enter__(self) -> _PathIngest:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        """Close the file. After a failed write or sync, the close tries to flush the
        same bytes again and fails the same way (a full disk); that second failure
        must not replace the ``StoreError`` on its way out (the parent deletes the file)."""
        try:
            self._file.close()
        except OSError as exc:
            if exc_type is not None:
                return
            raise store_error(
                self._store, "close a layer", exc, digest=self._digest, ref=self._ref
            ) from exc

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
            self._written += len(data)
            self._writeback.wrote(self._file, self._written)
        except OSError as exc:
            raise store_error(
                self._store, "write a layer", exc, digest=self._digest, ref=self._ref
            ) from exc

    def sync(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise store_error(
                self._store, "sync a layer", exc, digest=self._digest, ref=self._ref
            ) from exc
