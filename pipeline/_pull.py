"""The image-level pull, top to bottom.

    reference ─▶ registry client (ping, auth) ─▶ resolve_image (index → manifest → config)
        ─▶ layers_send ══▶ N layer workers ──▶ reports_send ══▶ collected in manifest order
                          │ committed in the store?      → "Already exists"
                          │ LCache: another pull has it? → wait, then re-check
                          └ fetch_layer (stages/_layer.py: stream → tee → verify) → commit_layer
        ─▶ record_image (config, manifest, index.json entry, tags) only after every layer

The per-layer stages are wired in ``stages/_layer.py``; this module wires the image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import trio

from stages._auth import sent_secrets
from stages._codec import inflater
from stages._config import Limits, RegistryOptions
from stages._errors import (
    DecompressError,
    DiffIDMismatch,
    ImagecError,
    ManifestError,
    PullTimeout,
    SizeMismatch,
    StoreError,
    UsageError,
)
from stages._events import LayerTimings, ProgressEvent, ProgressSink
from stages._groups import collapse_exception_group
from stages._http import shared_ssl_context
from stages._layer import fetch_layer
from stages._log import get_logger, log_context
from stages._manifest import ResolvedImage, resolve_image
from stages._reference import Reference, parse_reference
from stages._registry import RegistryClient
from stages._types import Descriptor, Digest, MediaType, Platform

from ._logging import current_settings, held_secrets
from ._store import LOCK_POLL_S, PULL_WAIT_S, LayerRecord, PullHold, Store
from ._workers import LayerTask, open_layer_workers, run_layer_task

if TYPE_CHECKING:  # imported only when --layer-workers processes asks for it
    import trio_parallel

__all__ = [
    "LayerReport",
    "PullOptions",
    "PullResult",
    "PullTimings",
    "check_options",
    "opening_timed_out",
    "pull",
    "timed_out",
]

log = get_logger()


@dataclass(frozen=True)
class PullOptions:
    """How to pull. ``platform`` None means this machine's platform (``Platform.host()``,
    with its CPU's variant: ``linux/amd64/v3`` takes no ``v4`` image of an index), and
    then a single-platform image for another one is pulled for what it is, with a
    warning, as docker pulls it; a platform given is required of it too
    (``PlatformNotFound`` otherwise, as docker refuses it)."""

    platform: Platform | None = None
    max_concurrent_downloads: int = 3
    # Where each layer's stages run: worker threads of this process, or worker processes
    # (one whole layer each; see _workers.py). The benchmark harness compares the two.
    layer_workers: Literal["threads", "processes"] = "threads"
    registry: RegistryOptions = field(default_factory=RegistryOptions)
    limits: Limits = field(default_factory=Limits)
    progress: ProgressSink | None = None
    # The whole pull, from waiting for an rm or gc holding the (open) store to the image
    # recorded, retries and waits for other pulls' layers included, must end within this
    # many seconds, or it is cancelled and raises PullTimeout (skopeo's
    # --command-timeout). Store.open, before it, is the caller's (its check_cancelled can
    # end its wait; the CLI's does at the same deadline). None: no overall bound; each
    # request still has its timeouts and a layer's body its minimum rate (Limits), which
    # a server sending just above that rate passes for hours.
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        """Refuse what no pull can run with, here rather than after the first requests
        (a wrong type failed deep inside, as an AttributeError in an ExceptionGroup)."""
        if self.platform is not None and not isinstance(self.platform, Platform):
            raise UsageError(
                f"PullOptions.platform must be a Platform (Platform.parse('linux/amd64')), "
                f"not {self.platform!r}"
            )
        if self.platform is not None:
            self.platform.check_variant()
        concurrency = self.max_concurrent_downloads
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise UsageError(
                f"max_concurrent_downloads must be a whole number of at least 1, not "
                f"{concurrency!r}"
            )
        if self.layer_workers not in ("threads", "processes"):
            raise UsageError(
                f"layer_workers must be 'threads' or 'processes', not {self.layer_workers!r}"
            )
        if not isinstance(self.registry, RegistryOptions):
            raise UsageError(f"PullOptions.registry must be RegistryOptions, not {self.registry!r}")
        if not isinstance(self.limits, Limits):
            raise UsageError(f"PullOptions.limits must be Limits, not {self.limits!r}")
        if self.progress is not None and not callable(self.progress):
            raise UsageError(f"PullOptions.progress must be callable, not {self.progress!r}")
        timeout = self.timeout_s
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout < math.inf
        ):
            raise UsageError(
                f"PullOptions.timeout_s must be a number of seconds above 0 (None: no "
                f"overall timeout), not {timeout!r}"
            )


@dataclass(frozen=True)
class LayerReport:
    """What happened to one layer: ``downloaded``, ``exists`` (already in the store)
    or ``shared`` (another pull, of this process or another, downloaded it while we
    waited)."""

    digest: Digest
    diff_id: Digest
    media_type: str
    size: int
    uncompressed_size: int | None
    status: str
    timings: LayerTimings


@dataclass(frozen=True)
class PullTimings:
    """Wall seconds of the image-level steps; per-layer stage times are in LayerReport.

    ``auth_s``: endpoint discovery (``/v2/``) and token; ``manifest_s``: manifest, index
    and config; ``layers_s``: every layer fetched, verified and committed; ``commit_s``:
    config, manifest and index.json recorded.
    """

    auth_s: float
    manifest_s: float
    layers_s: float
    commit_s: float
    total_s: float


@dataclass(frozen=True)
class PullResult:
    reference: str
    resolved_digest: Digest
    manifest_digest: Digest
    image_id: Digest
    platform: Platform
    layers: tuple[LayerReport, ...]
    timings: PullTimings
    bytes_downloaded: int
    # The reference already named this very image in the store when the pull recorded it
    # (docker's "Image is up to date", judged as docker does, at the end: a concurrent
    # pull of the same reference may have recorded it first); False when it was new there
    # or named another image.
    up_to_date: bool


@dataclass(frozen=True)
class _LayerJob:
    index: int  # among the pull's jobs, one per distinct layer (_unique_jobs)
    descriptor: Descriptor
    diff_id: Digest


@dataclass(frozen=True)
class _PullContext:
    """What every layer worker of one pull shares; read-only."""

    ref: Reference
    store: Store
    client: RegistryClient
    registry: RegistryOptions
    limits: Limits
    limiter: trio.CapacityLimiter
    progress: ProgressSink
    # Set when layers run in worker processes.
    workers: trio_parallel.WorkerContext | None
    # How many layers download (fetch, verify, fsync) at once: the store's budget of
    # max_concurrent_downloads tokens, shared by its pulls, or the pull's downloads=.
    downloads: trio.CapacityLimiter


async def pull(
    ref: str | Reference,
    *,
    store: Store,
    options: PullOptions | None = None,
    downloads: trio.CapacityLimiter | None = None,
) -> PullResult:
    """Pull ``ref`` into ``store``; every layer verified (digest and diffID) before commit.

    ``downloads`` caps how many layers download at once. By default the pulls of one
    ``Store`` object share one of ``options.max_concurrent_downloads`` tokens
    (``LCache.download_budget``), as docker's daemon-wide max-concurrent-downloads is
    shared: eight pulls side by side download as one would, instead of each running its
    own layers against the others' on the same cores. A pull given its own limiter
    downloads as many layers as that allows, whatever other pulls do.

    While it runs, the pull holds the store against ``rm`` and ``gc``
    (``_store_held``): they wait for it, or refuse, rather than delete the layers it has
    committed and not yet recorded.

    Raises one ``ImagecError`` on failure, never an ``ExceptionGroup``: the groups of the
    nurseries inside are collapsed here, at the public boundary, to their root cause.
    """
    options = PullOptions() if options is None else options
    _check_arguments(ref, store, options, downloads)
    check_options(options)
    credentials = options.registry.credentials
    reference = ref if isinstance(ref, Reference) else parse_reference(ref)
    if credentials is not None and credentials.registry not in ("", reference.registry):
        raise UsageError(
            f"the credentials {f'from {credentials.source} ' if credentials.source else ''}"
            f"are for {credentials.registry}, and {reference} is on {reference.registry}:"
            " give the pull its own registry's (auth_file_credentials(ref))"
        )
    # Out of every line configure_logging's redaction writes while the pull runs (and a
    # while after), this process's and its layer workers': a registry's error message
    # may quote the password back, or the Basic credentials made of it, and a proxy its
    # own (``ProxySettings.secrets``).
    secrets = sent_secrets(credentials) if credentials is not None else ()
    layers = _LayerStates(options.progress or _ignore_progress)
    timeout = options.timeout_s
    deadline = trio.move_on_after(timeout if timeout is not None else math.inf)
    failure: BaseException | None = None
    with (
        held_secrets((*secrets, *options.registry.proxy.secrets())),
        log_context(ref=str(reference)),
    ):
        try:
            if downloads is None:
                downloads = store.lcache.download_budget(options.max_concurrent_downloads)
            with deadline:
                async with _store_held(store):
                    return await _pull(reference, store, options, downloads, layers)
        except BaseExceptionGroup as group:
            failure = collapse_exception_group(group)
        except ImagecError as error:
            _name_the_image(error, reference)
            if not deadline.cancel_called:
                raise
            failure = error
    if isinstance(failure, ImagecError):
        _name_the_image(failure, reference)
    if (
        timeout is not None
        and deadline.cancel_called
        and (failure is None or isinstance(failure, ImagecError))
    ):
        # An ImagecError the cancel shook loose on its way out is not why the pull
        # failed: its time ran out. Anything else (a bug, a Ctrl-C, the caller's
        # progress callback raising) is raised as it is, never hidden behind this.
        raise timed_out(str(reference), timeout, layers.doing()) from failure
    # Raised here, not in the handler: see stages/_groups.py.
    assert failure is not None, "the pull returns, raises, or runs out of time"
    raise failure from failure.__cause__


def _name_the_image(error: ImagecError, ref: Reference) -> None:
    """Every failure of a pull names its image (RELIABILITY.md): the store's errors, such
    as a full disk while the config is written, are raised by code that knows only the
    blob."""
    if error.ref is None:
        error.ref = str(ref)


def check_options(options: PullOptions) -> None:
    """Raise the ``UsageError`` of an option that ``PullOptions`` takes and no pull can
    use: a CA file that is not PEM certificates (``make_ssl_context`` reads it), a gzip
    inflater unknown here or installed but broken (``inflater``). ``pull`` does so
    before any work; the CLI before it opens the store, which creates it, so that a
    mistyped ``--ca-file`` leaves no store behind as a mistyped reference leaves none.

    Both are cached by what they build (a context per CA file, a module per name): the
    pull that follows uses them as built here."""
    inflater(options.limits.gzip_inflater)
    shared_ssl_context(options.registry, verify=True)


def _check_arguments(ref: object, store: object, options: object, downloads: object) -> None:
    """UsageError for arguments of the wrong kind, before any request: a path given as
    the store, a store opened only to read (it would have downloaded every layer, then
    failed to record them)."""
    if not isinstance(ref, str | Reference):
        raise UsageError(f"the image reference must be a string, not {ref!r}")
    if not isinstance(store, Store):
        raise UsageError(f"store must be a Store (pipeline.Store.open(path)), not {store!r}")
    if store.read_only:
        raise UsageError(
            f"cannot pull into store {store.path}: it was opened read-only "
            "(Store.open_existing); open it with Store.open"
        )
    if not isinstance(options, PullOptions):
        raise UsageError(f"options must be PullOptions, not {options!r}")
    if downloads is not None and not isinstance(downloads, trio.CapacityLimiter):
        raise UsageError(f"downloads must be a trio.CapacityLimiter, not {downloads!r}")
    if downloads is not None and downloads.total_tokens < 1:
        # trio takes a limiter of 0 tokens; every layer would wait on it for ever.
        raise UsageError(
            f"downloads must have at least 1 token, not {downloads.total_tokens}: "
            "no layer could ever download"
        )


async def _pull(
    ref: Reference,
    store: Store,
    options: PullOptions,
    downloads: trio.CapacityLimiter,
    progress: ProgressSink,
) -> PullResult:
    started = trio.current_time()
    platform = options.platform or Platform.host()
    # Worker threads for inflating and store calls: created here, by the process that
    # uses them, and handed down. A layer holds one at a time (its inflate, then its
    # fsync); its hash thread has a limiter of its own (stages/_layer.py), because the
    # inflate thread waits on it while holding a token from this one.
    limiter = trio.CapacityLimiter(max(4, 4 * options.max_concurrent_downloads))
    progress(ProgressEvent("resolving", str(ref)))
    proxy = options.registry.proxy
    if proxy.configured:  # where a failure may come from; never the proxies' passwords
        log.info(
            "requests go through proxies",
            https_proxy=proxy.https.shown if proxy.https else None,
            http_proxy=proxy.http.shown if proxy.http else None,
            no_proxy=proxy.no_proxy or None,
        )

    async with RegistryClient.open(options.registry, options.limits) as client:
        await client.authenticate(ref)
        authenticated_at = trio.current_time()
        resolved = await resolve_image(
            client, ref, platform, options.limits, platform_asked=options.platform is not None
        )
        resolved_at = trio.current_time()
        # A layer the manifest lists twice is fetched once and has one set of events, so
        # the total a display counts them against is of distinct layers.
        jobs = _unique_jobs(resolved)
        progress(
            ProgressEvent("resolved", str(ref), str(resolved.resolved_digest), total=len(jobs))
        )
        for job in jobs:
            progress(
                ProgressEvent(
                    "layer-waiting", str(ref), str(job.descriptor.digest), total=job.descriptor.size
                )
            )

        async with contextlib.AsyncExitStack() as stack:
            workers = None
            if options.layer_workers == "processes":
                workers = await stack.enter_async_context(open_layer_workers())
            context = _PullContext(
                ref,
                store,
                client,
                options.registry,
                options.limits,
                limiter,
                progress,
                workers,
                downloads,
            )
            reports = await _pull_layers(context, jobs, options.max_concurrent_downloads)
        layers_done = trio.current_time()

    # A thread is not cancelled with its task: the store checks between slices of its
    # waits for another process (the lock, a write transaction), holding neither, so a
    # Ctrl-C ends them at once rather than after up to 30 s.
    recorded = await trio.to_thread.run_sync(
        functools.partial(
            store.record_image, resolved, check_cancelled=trio.from_thread.check_cancelled
        ),
        limiter=limiter,
    )
    record = recorded.record
    finished = trio.current_time()
    progress(ProgressEvent("pull-complete", record.ref, str(resolved.resolved_digest)))
    assert all(r is not None for r in reports), "every layer worker reports or raises"
    layer_reports = _in_manifest_order(resolved, [r for r in reports if r is not None])
    result = PullResult(
        reference=record.ref,
        resolved_digest=resolved.resolved_digest,
        manifest_digest=resolved.manifest_digest,
        image_id=resolved.config.digest,
        platform=resolved.platform,
        layers=layer_reports,
        timings=PullTimings(
            auth_s=authenticated_at - started,
            manifest_s=resolved_at - authenticated_at,
            layers_s=layers_done - resolved_at,
            commit_s=finished - layers_done,
            total_s=finished - started,
        ),
        bytes_downloaded=sum(r.size for r in layer_reports if r.status == "downloaded"),
        up_to_date=recorded.unchanged,
    )
    _log_pull(resolved, result)
    return result


@contextlib.asynccontextmanager
async def _store_held(store: Store) -> AsyncIterator[None]:
    """Hold the store for the whole pull (``Store.try_hold_for_pull``): between its
    layers' commits and its image's record nothing else says the layers are needed, and
    ``rm`` or ``gc`` would delete them. Taken before anything else, so before any
    layer's slot or claim: a removal waiting for pulls to end never waits on those, and
    one pull holds it once, whatever its layers do."""
    hold = await _wait_for_hold(store)
    try:
        yield
    finally:
        hold.release()


async def _wait_for_hold(store: Store) -> PullHold:
    """Poll for the hold while an ``rm`` or ``gc`` holds the store; a removal stopped
    half-way (Ctrl-Z) fails the pull after ``PULL_WAIT_S`` instead of hanging it."""
    warned = False
    with trio.move_on_after(PULL_WAIT_S):
        while (held := await trio.to_thread.run_sync(store.try_hold_for_pull)) is None:
            if not warned:
                log.warning("waiting for an rm or gc of the store to end", store=str(store.path))
                warned = True
            await trio.sleep(LOCK_POLL_S)
        return held
    raise StoreError(
        f"cannot pull into store {store.path}: an rm or gc held it for over "
        f"{PULL_WAIT_S:g} s; if an imagec-pipe using this store is stopped (Ctrl-Z), resume "
        "or end it, then try again"
    )


def _unique_jobs(resolved: ResolvedImage) -> list[_LayerJob]:
    """One job per distinct layer: a manifest may list a layer twice, and it is fetched
    once (two jobs of one digest made the second wait on the first's download, and report
    it "shared" after the first had said "complete"). Raises ``ManifestError`` when the
    config gives one layer two diffIDs, or the manifest two sizes or compressions: only
    one of them could be verified (the other was recorded as it was, never checked)."""
    jobs: dict[Digest, _LayerJob] = {}
    for layer, diff_id in zip(resolved.layers, resolved.diff_ids, strict=True):
        first = jobs.get(layer.digest)
        if first is None:
            jobs[layer.digest] = _LayerJob(len(jobs), layer, diff_id)
            continue
        before = first.descriptor
        if (before.size, _compression(before.media_type)) != (
            layer.size,
            _compression(layer.media_type),
        ):
            raise ManifestError(
                f"the image lists layer {layer.digest} twice, as {before.media_type} of"
                f" {before.size} bytes and as {layer.media_type} of {layer.size} bytes;"
                " one of them must be wrong",
                ref=str(resolved.ref),
                digest=str(layer.digest),
            )
        if first.diff_id != diff_id:
            raise ManifestError(
                f"the image lists layer {layer.digest} twice, with two diffIDs in its config"
                f" ({first.diff_id} and {diff_id}); one of them must be wrong",
                ref=str(resolved.ref),
                digest=str(layer.digest),
            )
    return list(jobs.values())


def _check_stored(job: _LayerJob, stored: LayerRecord, ref: str) -> None:
    """A layer the store holds is skipped only if it is the layer this image describes:
    the size and compression its manifest gives and the diffID its config gives, as a
    download would have verified them. Without this, an image whose config lies about a
    layer was refused into an empty store but recorded into one that had the layer."""
    layer, digest = job.descriptor, str(job.descriptor.digest)
    if stored.size != layer.size:
        raise SizeMismatch(
            f"the manifest gives layer {digest} a size of {layer.size} bytes, but the store "
            f"holds it verified at {stored.size} bytes; the image's manifest is wrong",
            ref=ref,
            digest=digest,
        )
    if stored.diff_id != job.diff_id:
        raise DiffIDMismatch(
            f"layer {digest}: its uncompressed content (verified when the store got it) "
            f"hashes to {stored.diff_id}, but the image config's diff_id is {job.diff_id}; "
            "the image's config does not match its layers",
            ref=ref,
            digest=digest,
        )
    if _compression(layer.media_type) != _compression(stored.media_type):
        raise DecompressError(
            f"the manifest says layer {digest} is {layer.media_type}, but the store holds "
            f"it verified as {stored.media_type}; the image's manifest is wrong",
            ref=ref,
            digest=digest,
        )


def _compression(media_type: str) -> str:
    """What a layer media type says of the bytes: Docker's and OCI's names for the same
    compression are the same layer."""
    for name, types in (
        ("gzip", MediaType.LAYERS_GZIP),
        ("zstd", MediaType.LAYERS_ZSTD),
        ("none", MediaType.LAYERS_PLAIN),
    ):
        if media_type in types:
            return name
    return media_type


def _in_manifest_order(
    resolved: ResolvedImage, reports: list[LayerReport]
) -> tuple[LayerReport, ...]:
    """A report per layer of the manifest, from one per distinct layer: a repeat of a
    layer says "exists" (it was in the store by then) and downloaded nothing."""
    by_digest = {report.digest: report for report in reports}
    seen: set[Digest] = set()
    out = []
    for layer in resolved.layers:
        report = by_digest[layer.digest]
        if layer.digest in seen:
            report = dataclasses.replace(report, status="exists", timings=LayerTimings())
        seen.add(layer.digest)
        out.append(report)
    return tuple(out)


async def _pull_layers(
    context: _PullContext, jobs: list[_LayerJob], concurrency: int
) -> list[LayerReport | None]:
    """Fan the layers out to workers; collect reports in manifest order.

    Twice as many workers as downloads may run at once (``context.downloads``): a layer's
    store lookups and its commit (a rename, two fsyncs, a SQLite transaction) then
    overlap the next layers' downloads instead of holding a download slot. Images of many
    small layers are made of little else.
    """
    reports: list[LayerReport | None] = [None] * len(jobs)
    # Largest first: the biggest layer is the pull's critical path, and starting it last
    # (base images often end with a large application layer) leaves cores idle at the end.
    ranked = sorted(jobs, key=lambda job: job.descriptor.size, reverse=True)
    order = _SlotOrder(len(ranked))
    layers_send, layers_recv = trio.open_memory_channel[tuple[int, _LayerJob]](0)
    reports_send, reports_recv = trio.open_memory_channel[tuple[int, LayerReport]](0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_feed_layers, ranked, layers_send)
        async with layers_recv, reports_send:
            for _ in range(min(2 * concurrency, max(1, len(jobs)))):
                nursery.start_soon(
                    _layer_worker, context, order, layers_recv.clone(), reports_send.clone()
                )
        async with reports_recv:
            async for index, report in reports_recv:
                reports[index] = report
    return reports


async def _feed_layers(
    ranked: list[_LayerJob], layers_send: trio.MemorySendChannel[tuple[int, _LayerJob]]
) -> None:
    """The layers to the workers in ``ranked`` order, each with its position there."""
    async with layers_send:
        for position, job in enumerate(ranked):
            await layers_send.send((position, job))


async def _layer_worker(
    context: _PullContext,
    order: _SlotOrder,
    layers_recv: trio.MemoryReceiveChannel[tuple[int, _LayerJob]],
    reports_send: trio.MemorySendChannel[tuple[int, LayerReport]],
) -> None:
    async with layers_recv, reports_send:
        async for position, job in layers_recv:
            try:
                report = await _pull_layer(context, job, order, position)
            finally:
                order.passed(position)  # failed too: the layers after it ask on
            await reports_send.send((job.index, report))


class _SlotOrder:
    """Layers ask for download slots in the order they were handed out (largest first).

    Between taking its layer and asking for a slot, a worker makes two thread hops (the
    store's cross-process claim and its lookup), which come back in any order: the
    102 MB layer of the harness's ``app`` image was the fourth of six to start in 2 of 6
    pulls, and those pulls ended with it alone on the cores. So the layer at
    ``position`` asks only once every layer before it has asked for a slot (it holds one
    or is queued for one: ``trio.CapacityLimiter`` serves its queue in order) or needs
    none: found in the store, waiting for another pull's download of it, or failed.
    Waiting for such a layer's turn would hold the others up for nothing.

    It also knows which positions are downloading, and so which layer is the pull's
    critical path: the largest of those downloading (``Limits.largest_layer_chunk_buffer``).
    """

    def __init__(self, count: int) -> None:
        self._passed = [False] * count
        self._turns = [trio.Event() for _ in range(count)]
        self._next = 0  # the first position that has not passed
        if count:
            self._turns[0].set()
        self._downloading: set[int] = set()

    @contextlib.contextmanager
    def downloading(self, position: int) -> Iterator[bool]:
        """``position`` asks for a slot and downloads in the block; yields whether it is
        the largest layer doing so as it enters. Layers enter in position order (in their
        turn, before the next one's), so those already in are all larger: it is the
        largest when none is, and no layer entering later is larger than it."""
        largest = not self._downloading
        self._downloading.add(position)
        try:
            yield largest
        finally:
            self._downloading.discard(position)

    async def wait(self, position: int) -> None:
        """Until every layer before ``position`` has passed (at once if it passed itself
        already: it waited for another pull, which then failed)."""
        if not self._passed[position]:
            await self._turns[position].wait()

    def passed(self, position: int) -> None:
        """``position`` asks for no slot after this point, or is about to ask for one."""
        self._passed[position] = True
        while self._next < len(self._passed) and self._passed[self._next]:
            self._next += 1
        if self._next < len(self._turns):
            self._turns[self._next].set()


@contextlib.asynccontextmanager
async def _download_slot(
    downloads: trio.CapacityLimiter, order: _SlotOrder, position: int
) -> AsyncIterator[bool]:
    """Hold one of ``downloads`` for the block, asked for in ``order``'s turn; yields
    whether the layer is the largest downloading (``_SlotOrder.downloading``)."""
    await order.wait(position)
    with order.downloading(position) as largest:
        # The next layer runs only once this task yields, which it does inside the
        # limiter's acquire, holding a token or queued for one: its place in the queue is
        # kept.
        order.passed(position)
        async with downloads:
            yield largest


async def _pull_layer(
    context: _PullContext, job: _LayerJob, order: _SlotOrder, position: int
) -> LayerReport:
    """One layer: skip it if the store has it, wait if another pull is fetching it,
    else fetch, verify and commit it, taking a download slot in ``order``."""
    store, layer = context.store, job.descriptor
    digest_text = str(layer.digest)
    async with store.lcache.download(
        layer.digest, on_wait=lambda: order.passed(position)
    ) as ticket:
        # Looked up while holding the layer's slot: looked up before taking it, a layer
        # another pull committed and let go of in between was downloaded again.
        stored = await trio.to_thread.run_sync(
            functools.partial(
                store.committed_layer,
                layer.digest,
                check_cancelled=trio.from_thread.check_cancelled,  # as record_image's
            ),
            limiter=context.limiter,
        )
        if stored is not None:
            _check_stored(job, stored, str(context.ref))
            status = "shared" if ticket.waited else "exists"
            context.progress(ProgressEvent(f"layer-{status}", str(context.ref), digest_text))
            return _report(job, status, stored.uncompressed_size, LayerTimings())
        with (
            log_context(digest=digest_text),
            store.open_ingest(layer.digest, ref=str(context.ref)) as ingest,
        ):
            async with _download_slot(context.downloads, order, position) as largest:
                if context.workers is None:
                    verified = await fetch_layer(
                        context.client,
                        context.ref,
                        layer,
                        job.diff_id,
                        ingest,
                        limits=context.limits,
                        limiter=context.limiter,
                        progress=context.progress,
                        largest=largest,
                    )
                else:
                    task = LayerTask(
                        context.ref,
                        layer,
                        job.diff_id,
                        str(ingest.path),
                        context.registry,
                        context.limits,
                        current_settings(),
                        os.getpid(),
                        largest=largest,
                    )
                    verified = await run_layer_task(context.workers, task, context.progress)
            commit_started = trio.current_time()
            await trio.to_thread.run_sync(
                functools.partial(
                    store.commit_layer,
                    ingest,
                    verified,
                    check_cancelled=trio.from_thread.check_cancelled,  # as record_image's
                ),
                limiter=context.limiter,
            )
            commit_s = trio.current_time() - commit_started
    context.progress(
        ProgressEvent("layer-complete", str(context.ref), digest_text, layer.size, layer.size)
    )
    timings = verified.timings
    return _report(
        job,
        "downloaded",
        verified.uncompressed_size,
        LayerTimings(
            wall_s=timings.wall_s + commit_s,
            first_byte_s=timings.first_byte_s,
            network_s=timings.network_s,
            hash_s=timings.hash_s,
            inflate_s=timings.inflate_s,
            write_s=timings.write_s,
            fsync_s=timings.fsync_s,
            commit_s=commit_s,
        ),
    )


def _report(
    job: _LayerJob, status: str, uncompressed: int | None, timings: LayerTimings
) -> LayerReport:
    layer = job.descriptor
    return LayerReport(
        layer.digest, job.diff_id, layer.media_type, layer.size, uncompressed, status, timings
    )


def _ignore_progress(event: ProgressEvent) -> None:
    del event


class _LayerStates:
    """The pull's progress sink in front of the caller's: it keeps how far each layer
    got, so that a pull that runs out of time (``PullOptions.timeout_s``) says what it
    was doing: resolving, which layers were still downloading and how far, or recording
    the image. Called on the event loop only (``stages/_blob.py`` and ``_workers``
    relay their events there)."""

    _DONE = frozenset({"layer-exists", "layer-shared", "layer-complete"})

    def __init__(self, sink: ProgressSink) -> None:
        self._sink = sink
        self._started = False  # past the wait for an rm or gc holding the store
        self._resolved = False
        # digest → (bytes received, compressed size, event), in the order they were queued
        self._layers: dict[str, tuple[int, int | None, str]] = {}

    def __call__(self, event: ProgressEvent) -> None:
        if event.event == "resolving":
            self._started = True
        elif event.event == "resolved":
            self._resolved = True
        elif event.event.startswith("layer-") and event.digest is not None:
            _, total, _ = self._layers.get(event.digest, (0, event.total, ""))
            self._layers[event.digest] = (event.current, event.total or total, event.event)
        self._sink(event)

    def doing(self) -> str:
        """What the pull was doing, in words that follow "the pull did not finish in
        time;"."""
        if not self._started:
            return "it was still waiting for an rm or gc in this store to end"
        if not self._resolved:
            return "it was still resolving the reference (manifest and config)"
        done = [d for d, (_, _, event) in self._layers.items() if event in self._DONE]
        if len(done) == len(self._layers):
            return f"all {len(done)} layers were in the store; it was recording the image"
        moving = [
            f"{digest} ({current / 1e6:.1f} of {total / 1e6:.1f} MB received)"
            if total
            else f"{digest} ({current / 1e6:.1f} MB received)"
            for digest, (current, total, event) in self._layers.items()
            if event not in self._DONE and event != "layer-waiting"
        ]
        queued = sum(1 for _, _, event in self._layers.values() if event == "layer-waiting")
        parts = [f"{len(done)} of {len(self._layers)} layers were done"]
        if done:
            parts[0] += " and are kept in the store: a new pull does not fetch them again"
        if moving:
            parts.append(f"in progress: {', '.join(moving)}")
        if queued:
            parts.append(f"{queued} not started")
        return "; ".join(parts)


def timed_out(ref: str, timeout_s: float, doing: str) -> PullTimeout:
    """The ``PullTimeout`` of a pull of ``ref`` given ``timeout_s``, which was ``doing``
    this when its time ran out. The CLI makes it again with the time the user gave:
    the store's opening took some of it before ``pull`` got the rest."""
    error = PullTimeout(
        f"the pull did not finish within {_seconds(timeout_s)}, the time it was given; {doing}",
        ref=ref,
    )
    error.doing = doing
    return error


def opening_timed_out(ref: str, timeout_s: float) -> PullTimeout:
    """The ``PullTimeout`` of a pull whose time ran out while its store was being opened
    (the CLI opens it, under ``--timeout``, before ``pull``)."""
    return timed_out(
        ref,
        timeout_s,
        "it was still opening the store, whose lock another process held (an rm, a gc, "
        "or a pull recording its image)",
    )


def _seconds(value: float) -> str:
    """``value`` seconds as given, and in minutes or hours as well when it is that long
    and whole: "90 s (1 min 30 s)", "0.5 s", "5400 s (1 h 30 min)". Never rounded: the
    message says the pull did not finish within it."""
    given = f"{value:.15g} s"
    if value < 60 or value != int(value):
        return given
    minutes, seconds = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else ""]
    parts.append(f"{seconds} s" if seconds else "")
    return f"{given} ({' '.join(part for part in parts if part)})"


def _log_pull(resolved: ResolvedImage, result: PullResult) -> None:
    """The canonical line for one pull: sizes, time and throughput."""
    seconds = result.timings.total_s
    log.info(
        "pull complete",
        digest=str(result.resolved_digest),
        image_id=str(result.image_id),
        layers=len(result.layers),
        downloaded_layers=sum(1 for r in result.layers if r.status == "downloaded"),
        bytes_downloaded=result.bytes_downloaded,
        seconds=round(seconds, 3),
        mb_per_s=round(result.bytes_downloaded / 1e6 / seconds, 1) if seconds > 0 else None,
        platform=str(resolved.platform),
    )
