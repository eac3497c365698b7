"""The blob-stream stage: one layer's raw bytes from the registry into a channel.

One GET (``BlobSource.stream_blob``, which asks for ``Accept-Encoding: identity`` and
follows redirects), read with ``aiter_raw`` so nothing is ever content-decoded: the
bytes hashed are the bytes the registry stores. The stage counts what arrives and never
accepts more than the descriptor's size: the chunk that would go past it ends the
transfer with ``SizeMismatch`` before it is passed on.

The transfer is a series of *attempts*, each from a byte offset (``_attempt``). When one
fails in a way another may cure (the body broke off, the connection reset, a 5xx or 429,
an expired signed URL: ``transient`` on the error), ``stages/_retry.py`` waits and the
next attempt starts at ``transfer.received`` with ``Range: bytes=N-``. The registry must
answer 206 from byte N, or 200 with the whole blob, of which the first N bytes are
skipped; the digest, checked downstream over every byte once, proves the pieces belong
together. An attempt to which the network delivered ``Limits.stall_progress_bytes``
before the server went silent, and that kept at least one new byte, is not a stall "in
a row" for ``Limits.stall_retries``: the server was sending what was asked for, whether
the bytes were all kept or mostly the start of a resent blob, skipped (``Limits.retries``
bounds one that resends and gets a little further each time). One that kept no new byte
is a stall in a row however much arrived: a server that ignores Range and stalls where
it stalled before, every time, will never send the rest, and counted as progress it held
the layer for all the retries, a read timeout each; the error says what it did
(``_resent_and_stalled``). The consumers downstream never see the seam: they
receive the bytes once, in order. Each retry sends a ``layer-retrying`` event
(``current``: the bytes kept). An attempt's error from the registry client (a stall, a
broken connection) is given the bytes that had arrived by then, which that client does
not know.

A layer whose descriptor names ``urls`` (a foreign, non-distributable layer: Windows
base layers) has more sources than the registry: when the registry's transfer fails
(after its retries) in a way another server may not share (not found, refused,
unreachable), the next source continues it, the descriptor's URLs in order
(``_places`` says why the registry goes first), each with the same retries and resume,
and without credentials (``RegistryClient.stream_url``). The bytes are checked the
same way whichever source sent them, and the messages about a body name the server that
sent it: the registry, a layer's URL, or the storage server or CDN either redirected to,
by its host alone (``_sender``).

A body that arrives but too slowly (a byte now and then, each just inside the read
timeout) is ended by ``_check_rate``: fewer than ``Limits.min_transfer_bytes_per_s`` on
average over ``Limits.transfer_window_s`` of network time is ``RegistryUnavailable``.
The window runs on across a resume from the same source (network time being the time
spent reading bodies), so a server that sends a little and then stalls, attempt after
attempt, is judged on all of them, not on each one afresh. It counts every byte the
network delivered, including those of a resent blob's start that are skipped.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import httpx
import trio

from ._config import Limits
from ._errors import ImagecError, RegistryError, RegistryUnavailable, SizeMismatch, Truncated
from ._events import ProgressEvent, ProgressSink
from ._http import stalled_for
from ._log import get_logger
from ._redact import redact
from ._reference import Reference
from ._retry import retrying
from ._types import Descriptor, Digest

__all__ = ["BlobSource", "NetworkClock", "blob_stream"]

log = get_logger()


class BlobSource(Protocol):
    """Where blobs come from; ``RegistryClient`` satisfies it (tests use fakes).

    ``stream_blob`` (from the registry) and ``stream_url`` (from one of the URLs a layer's
    descriptor names, sending no credentials) yield a response whose status is already
    checked (200, or 206 starting at ``offset``) and close it on exit.

    ``server_named`` and ``url_shown`` are how the stage's messages name a server that
    sent a body and a layer's URL: the registry chose them, and the source knows what it
    sent the registry that must not come back in them (the credentials, the tokens).
    """

    def stream_blob(
        self, ref: Reference, digest: Digest, *, offset: int = 0
    ) -> contextlib.AbstractAsyncContextManager[httpx.Response]: ...

    def stream_url(
        self, ref: Reference, url: str, digest: Digest, *, offset: int = 0
    ) -> contextlib.AbstractAsyncContextManager[httpx.Response]: ...

    def server_named(self, ref: Reference, url: httpx.URL) -> str:
        """``url``'s ``host[:port]``, as errors and log lines may name it."""
        ...

    def url_shown(self, url: str) -> str:
        """A layer's URL, as errors and log lines may show it (``shown_url``'s form)."""
        ...


class NetworkClock:
    """Seconds the blob stage measured (for ``LayerTimings``); only that stage writes.

    ``first_byte_s``: from the stage's start to the first body byte (connect, auth,
    redirects included). ``network_s``: from the stage's start to the last byte.
    """

    __slots__ = ("first_byte_s", "network_s")

    def __init__(self) -> None:
        self.first_byte_s = 0.0
        self.network_s = 0.0


@dataclass
class _Transfer:
    """How far one blob's transfer got, across attempts. Owned by ``blob_stream``."""

    started: float
    received: int = 0
    reported_at: float = 0.0  # when the last progress event went out
    # Bytes the network delivered, kept or not: a 200 to a Range request resends the
    # blob from its start, and the part skipped took network time as the rest does.
    # The slow-transfer check and the stall rule (stall_progress_bytes) count these;
    # ``received`` (the bytes kept) is what progress reports, where a resume starts, and
    # what the stall rule asks to have moved (a resent start that ends where the last
    # attempt stalled is no progress, however long it is).
    delivered: int = 0
    # The window of the slow-transfer check: when it opened (None: not yet, from this
    # source), bytes delivered by then, and the seconds since then that were not the
    # network's fault: sending downstream waited, or no body was being read (from one
    # attempt's end to the next one's response: the retry's wait, a new connection).
    window_started: float | None = None
    window_delivered: int = 0
    window_waited_s: float = 0.0
    body_ended: float = 0.0  # when the last attempt's body last delivered bytes
    last_data_at: float = 0.0  # when this attempt's body last delivered bytes


# Progress events per layer at most this often (and once at the end): a display needs
# no more, and an event per chunk costs the event loop a JSON line each under --json.
PROGRESS_INTERVAL_S = 0.1


async def blob_stream(
    source: BlobSource,
    ref: Reference,
    layer: Descriptor,
    limits: Limits,
    send: trio.MemorySendChannel[bytes],
    progress: ProgressSink | None,
    clock: NetworkClock | None = None,
) -> None:
    """Send the layer's raw bytes to ``send`` in chunks of at most ``limits.chunk_size``
    (as big as each socket read: re-chunking to a fixed size would cost a copy).

    Raises ``SizeMismatch`` (more bytes than the descriptor's size, or a
    ``Content-Length`` that says so up front), ``Truncated`` (the body ended or broke
    early), ``RegistryUnavailable`` (the connection failed mid-body, or the body came
    slower than ``limits.min_transfer_bytes_per_s``), or what
    ``stream_blob`` raises for the request itself; each names ``ref`` and the digest.

    A layer whose descriptor names URLs is fetched from the registry, then from each URL
    in turn (``_places``), each source with its retries, the next one resuming where the
    last stopped; when none serves it, one error names every source and what it said.
    """
    clock = clock if clock is not None else NetworkClock()
    async with send:
        transfer = _Transfer(started=time.perf_counter())

        def report_retry(error: ImagecError, retry: int, wait_s: float) -> None:
            if progress is not None:
                progress(
                    ProgressEvent(
                        "layer-retrying", str(ref), str(layer.digest), transfer.received, layer.size
                    )
                )

        async def attempt(place: str | None) -> None:
            """``_attempt``, except that a transient failure after the last byte ends
            the transfer. A connection can break after the whole body arrived (a chunked
            body cut before its final empty chunk, a read that times out waiting for it).
            Another attempt would ask for ``Range: bytes=<size>-``, which a registry
            refuses with 416, failing a pull that holds every byte; the digest, checked
            downstream over all of them, decides instead."""
            try:
                await _attempt(source, place, ref, layer, limits, send, progress, transfer, clock)
            except ImagecError as error:
                if not (error.transient and layer.size and transfer.received == layer.size):
                    raise
                log.info(
                    "the connection broke after the last byte; the digest decides",
                    ref=str(ref),
                    digest=str(layer.digest),
                    error=error.message,
                )

        failures: list[tuple[str | None, ImagecError]] = []
        places = _places(layer, limits)
        for index, place in enumerate(places):
            shown = "the registry" if place is None else source.url_shown(place)
            transfer.window_started = None  # each source is judged on its own bytes
            try:
                await retrying(
                    functools.partial(attempt, place),
                    limits,
                    on_retry=report_retry,
                    position=lambda: transfer.delivered,
                    kept=lambda: transfer.received,
                )
            except ImagecError as error:
                if len(places) == 1 or not _another_place_may_cure(error):
                    raise
                failures.append((None if place is None else shown, error))
                if index + 1 < len(places):  # after the last, the error says it all
                    report_retry(error, 0, 0.0)
                    log.warning(
                        "layer source failed, trying the next",
                        ref=str(ref),
                        digest=str(layer.digest),
                        source=shown,
                        error=error.message,
                        received=transfer.received,
                    )
                continue
            if place is not None:
                log.info(
                    "layer fetched from a URL", ref=str(ref), digest=str(layer.digest), url=shown
                )
            clock.network_s = time.perf_counter() - transfer.started
            return
        raise _every_place_failed(ref, layer, failures, limits)


def _places(layer: Descriptor, limits: Limits) -> list[str | None]:
    """Where to fetch ``layer`` from, in order: the registry (None), then the first
    ``limits.max_layer_urls`` of the URLs its descriptor names, as written there
    (``RegistryClient.stream_url`` decides whether it may use one).

    The registry first, as moby does (containerd tries the URLs first; containers/image
    only the URLs): it is the source the user chose and configured (TLS, credentials,
    --insecure-registry), most registries hold the layers once called foreign (Windows
    base layers have been distributable since 2023, and registries that mirror them hold
    them), and an air-gapped mirror then needs no connection attempt to a host that only
    the manifest names. A registry that lacks the blob costs one 404.
    """
    return [None, *layer.urls[: limits.max_layer_urls]]


def _another_place_may_cure(error: ImagecError) -> bool:
    """Whether to go on to the next source after ``error`` (its retries used up): the
    source failed to serve (not found, refused, unreachable, broke off), not sent bytes
    that contradict the descriptor (too many: those already went downstream, and only
    the digest check over a fresh download could tell the sources apart)."""
    return isinstance(error, RegistryError) or error.transient


def _every_place_failed(
    ref: Reference,
    layer: Descriptor,
    failures: list[tuple[str | None, ImagecError]],
    limits: Limits,
) -> ImagecError:
    """One error for a layer none of whose sources served it: each source (None for the
    registry, else its URL as shown) and what it said, of the type they share
    (``NotFound`` when every one lacked it)."""
    kinds = {type(error) for _, error in failures}
    kind = kinds.pop() if len(kinds) == 1 else RegistryError
    said = "; ".join(_said(shown, error) for shown, error in failures)
    skipped = len(layer.urls) - limits.max_layer_urls
    note = (
        f" (its descriptor names {len(layer.urls)} URLs; the first {limits.max_layer_urls}"
        " were tried: Limits.max_layer_urls)"
        if skipped > 0
        else ""
    )
    return kind(
        f"layer {layer.digest} could not be fetched from the registry or any of the URLs"
        f" its descriptor names{note}: {said}",
        ref=str(ref),
        digest=str(layer.digest),
    )


def _said(shown: str | None, error: ImagecError) -> str:
    """What a source said, naming it once (``shown``: None for the registry, else its URL
    as ``url_shown`` shows it): ``stream_url``'s errors name their URL so already
    ("https://x/y answered HTTP 404 ...", "... from https://x/y: ..."); the others are
    prefixed with it."""
    if shown is None:
        return f"the registry: {error.message}"
    return error.message if shown in error.message else f"{shown}: {error.message}"


async def _attempt(
    source: BlobSource,
    place: str | None,
    ref: Reference,
    layer: Descriptor,
    limits: Limits,
    send: trio.MemorySendChannel[bytes],
    progress: ProgressSink | None,
    transfer: _Transfer,
    clock: NetworkClock,
) -> None:
    """One GET from ``transfer.received`` to the end of the blob, from the registry
    (``place`` None) or the URL ``place``. The bytes an earlier source sent stay: the
    next one is asked from where they end."""
    size, digest, ref_text = layer.size, str(layer.digest), str(ref)
    # For messages: the source asked until its response names the server that sent it.
    source_name = "the registry" if place is None else source.url_shown(place)
    offset = transfer.received
    delivered_before = transfer.delivered
    resent_from = 0  # the offset asked for, when the answer was the blob from its start
    opened = (
        source.stream_blob(ref, layer.digest, offset=offset)
        if place is None
        else source.stream_url(ref, place, layer.digest, offset=offset)
    )
    reading = False
    try:
        async with opened as response:
            source_name = _sender(source, ref, place, response)
            # A 200 to a Range request is the whole blob again: skip what we have.
            skip = offset if response.status_code == 200 else 0
            resent_from = skip
            _check_content_length(response, ref_text, layer, offset - skip, source_name)
            transfer.last_data_at = time.perf_counter()
            _resume_window(transfer, transfer.last_data_at)
            reading = True
            try:
                # Leaving this loop early (too long, cancelled) abandons httpx's nested
                # async generators; trio closes them and warns (ResourceWarning).
                # stream_blob's exit closes the response, so no connection leaks;
                # aclosing() here would only close the outermost generator.
                async for data in response.aiter_raw():
                    _check_rate(transfer, limits, layer, ref_text, len(data), source_name)
                    transfer.last_data_at = time.perf_counter()
                    transfer.delivered += len(data)
                    if skip:
                        kept = data[skip:]
                        skip -= len(data) - len(kept)
                        data = kept
                    for chunk in _pieces(data, limits.chunk_size):
                        await _pass_on(
                            chunk, layer, ref_text, send, progress, transfer, clock, source_name
                        )
            finally:
                # Not the moment the body failed: the quiet spell before a stall or a
                # reset is for the retry rules to judge (stall_progress_bytes), and
                # counted here it made the resumed attempt "too slow" at its first read.
                transfer.body_ended = transfer.last_data_at
    except ImagecError as error:
        # The source's own error for a failure it met (a stall, a broken connection, a
        # 5xx on resuming) names the server and the request but not how far the layer
        # got: that is known here. The stage's own errors say it already.
        if error.transient and (reading or transfer.received):
            error.extend_message(f"{transfer.received} of {size} bytes had arrived")
        _resent_and_stalled(error, resent_from, transfer, delivered_before, source_name)
        raise
    except httpx.RemoteProtocolError as exc:
        raise Truncated(
            f"the download of layer {digest} from {source_name} broke off after "
            f"{transfer.received} of {size} bytes ({redact(str(exc))}); pull again",
            ref=ref_text,
            digest=digest,
            transient=True,
        ) from exc
    except httpx.HTTPError as exc:
        failed = RegistryUnavailable(
            f"the connection to {source_name} failed after {transfer.received} of {size} "
            f"bytes of layer {digest}: {type(exc).__name__}: {redact(str(exc))}; pull again",
            ref=ref_text,
            digest=digest,
            transient=True,
            stalled_s=stalled_for(exc, limits),
        )
        _resent_and_stalled(failed, resent_from, transfer, delivered_before, source_name)
        raise failed from exc
    if transfer.received < size:
        raise Truncated(
            f"the response from {source_name} for layer {digest} ended after "
            f"{transfer.received} of {size} bytes; pull again",
            ref=ref_text,
            digest=digest,
            transient=True,
        )


def _resent_and_stalled(
    error: ImagecError,
    resent_from: int,
    transfer: _Transfer,
    delivered_before: int,
    source_name: str,
) -> None:
    """Say what the server did, on the stall of an attempt that asked for ``Range:
    bytes=<resent_from>-``, got the blob from its start, and kept no new byte.

    The retry rule counts such a stall as one in a row (``retrying``'s ``kept``), however
    many bytes arrived; the message alone ("no data for 60 s", "5000 of 10000 bytes had
    arrived") reads as a server that went silent at that byte, and gives no hint that it
    had been sending the start of the blob over again (a storage server or CDN that does
    not do ranges), which is what the user can take to its operator."""
    if error.stalled_s is None or not resent_from or transfer.received > resent_from:
        return
    sent = transfer.delivered - delivered_before
    where = (
        "where it had stalled before"
        if sent == resent_from
        else f"after {sent} bytes, short of byte {resent_from}, where it had stopped before"
    )
    error.extend_message(
        f"{source_name} ignored Range: bytes={resent_from}- (resent the blob from its start)"
        f" and stalled {where}"
    )


def _sender(source: BlobSource, ref: Reference, place: str | None, response: httpx.Response) -> str:
    """The server that sent ``response``, as the messages about its body name it: the
    source asked (the registry, or the URL ``place``), or the server it redirected to
    (a registry's storage server or CDN), which is the one to blame for a short, long or
    slow body.

    That server is named by its host and port alone, through the source's cut
    (``server_named``): its URL is signed, and its query holds the signature
    (RELIABILITY.md, "secrets never in logs, errors"), and the registry chose its host."""
    asked_name = "the registry" if place is None else source.url_shown(place)
    sent_from = response.url
    # The registry client's endpoint is ``ref.api_host``, over the scheme it chose.
    endpoint = f"{sent_from.scheme}://{ref.api_host}"
    asked = httpx.URL(endpoint if place is None else place)
    if (sent_from.host, sent_from.port) == (asked.host, asked.port):
        return asked_name
    authority = source.server_named(ref, sent_from)
    kind = "the storage server" if place is None else "the server"
    return f"{kind} {authority} (redirected from {asked_name})"


def _pieces(data: bytes, most: int) -> Iterator[bytes]:
    """``data`` in pieces of at most ``most`` bytes: the stages downstream bound their
    memory by counting chunks. A socket read is never bigger than ``chunk_size`` with our
    transport, so this copies nothing there; another transport may hand over more."""
    if len(data) <= most:
        yield data
        return
    for start in range(0, len(data), most):
        yield data[start : start + most]


async def _pass_on(
    chunk: bytes,
    layer: Descriptor,
    ref_text: str,
    send: trio.MemorySendChannel[bytes],
    progress: ProgressSink | None,
    transfer: _Transfer,
    clock: NetworkClock,
    source_name: str,
) -> None:
    """Count ``chunk`` against the descriptor's size, send it on, report progress.
    ``source_name`` (the registry, a layer's URL, or the server either redirected to:
    ``_sender``) is what error messages blame."""
    size = layer.size
    received = transfer.received + len(chunk)
    if received > size:
        raise SizeMismatch(
            f"{source_name} sends more than the {size} bytes the descriptor of "
            f"layer {layer.digest} says (stopped reading at {received})",
            ref=ref_text,
            digest=str(layer.digest),
        )
    if not clock.first_byte_s:
        clock.first_byte_s = time.perf_counter() - transfer.started
    waiting = time.perf_counter()
    await send.send(chunk)
    transfer.window_waited_s += time.perf_counter() - waiting
    transfer.received = received
    if progress is not None:
        now = time.perf_counter()
        if received == size or now - transfer.reported_at >= PROGRESS_INTERVAL_S:
            transfer.reported_at = now
            progress(
                ProgressEvent("layer-downloading", ref_text, str(layer.digest), received, size)
            )


def _open_window(transfer: _Transfer, now: float) -> None:
    transfer.window_started = now
    transfer.window_delivered = transfer.delivered
    transfer.window_waited_s = 0.0


def _resume_window(transfer: _Transfer, now: float) -> None:
    """At the start of an attempt's body: open the first window of a source, or let
    the one open go on, not counting the time since the last attempt's body last
    delivered bytes (its final silence, the retry wait, the reconnect).

    A window opened afresh with each attempt never spanned a resume: a server that
    dripped a little per attempt and then broke the connection was never too slow. A
    server that sends a little and then stalls, every attempt, is caught by the stall
    rule instead (``Limits.stall_progress_bytes``)."""
    if transfer.window_started is None:
        _open_window(transfer, now)
    else:
        transfer.window_waited_s += now - transfer.body_ended


def _check_rate(
    transfer: _Transfer,
    limits: Limits,
    layer: Descriptor,
    ref_text: str,
    arriving: int,
    source_name: str,
) -> None:
    """Fail the transfer if, over a whole window of network time, fewer bytes arrived
    than ``limits.min_transfer_bytes_per_s`` asks; otherwise open a new window when one
    is complete. Runs as each read arrives (``arriving`` bytes, not yet counted), so a
    drip is caught at its next byte; a body that stops altogether ends at the read
    timeout instead.

    The bytes counted are those the network delivered (``transfer.delivered``), skipped
    ones too: counting only the bytes kept, a whole blob resent to a Range request was
    "too slow" while its first part was skipped, however fast it came."""
    minimum = limits.min_transfer_bytes_per_s
    if minimum <= 0 or transfer.window_started is None:
        return
    now = time.perf_counter()
    network_s = now - transfer.window_started - transfer.window_waited_s
    if network_s < limits.transfer_window_s:
        return
    got = transfer.delivered + arriving - transfer.window_delivered
    if got < minimum * network_s:
        raise RegistryUnavailable(
            f"the download of layer {layer.digest} is too slow: {got} bytes in the last "
            f"{network_s:.0f} s ({got / network_s:.0f} B/s, the minimum is {minimum} B/s; "
            f"{transfer.received} of {layer.size} bytes so far); {source_name} or the "
            f"network is stalling, pull again",
            ref=ref_text,
            digest=str(layer.digest),
        )
    _open_window(transfer, now)


def _check_content_length(
    response: httpx.Response, ref_text: str, layer: Descriptor, offset: int, source_name: str
) -> None:
    """Refuse up front a body whose announced length cannot be the blob's."""
    announced = response.headers.get("content-length")
    if announced is None or not announced.isdigit():
        return
    if int(announced) != layer.size - offset:
        raise SizeMismatch(
            f"{source_name} announces {announced} bytes for layer {layer.digest} "
            f"(from byte {offset}), but its descriptor says {layer.size} bytes in all",
            ref=ref_text,
            digest=str(layer.digest),
        )
