"""Small frozen configuration objects, passed down explicitly.

``RegistryOptions`` says how to reach and authenticate to registries (``ProxySettings``:
through which proxy); ``Limits`` holds every size, buffer and timeout the stages use, so
none is a magic number in a stage.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ._errors import UsageError
from ._proxy import (
    NoProxy,
    ProxyURL,
    environment_setting,
    is_loopback_target,
    parse_proxy_url,
    proxy_secrets,
)

__all__ = ["Credentials", "Limits", "ProxySettings", "RegistryOptions"]

MiB = 1 << 20


@dataclass(frozen=True)
class Credentials:
    """A username and password, or an identity token, for one pull.

    ``identity_token``: an OAuth2 refresh token (what ``docker login`` keeps as
    ``identitytoken`` for a registry whose token service issued one). When set, a token
    service is asked with it (``grant_type=refresh_token``) instead of the password,
    and a registry that asks for Basic credentials is refused them.

    ``source``: where they came from, for errors to name ("credentials from
    ~/.docker/config.json for reg.example"); "" for credentials the caller gave (``-u``).

    ``registry``: the registry they are for, as a reference names it (``reg.example:5000``,
    ``docker.io``), when they came from one registry's entry (``docker_config_credentials``
    sets it); a pull from another registry is refused them (``pipeline.pull`` raises
    UsageError) rather than send one registry's secret to another, as options made once
    and reused for every pull of a library host would. "": the pull's registry, whichever.

    ``repr`` hides the password and the token so they cannot reach a log line by accident.
    """

    username: str
    password: str = field(repr=False)
    identity_token: str = field(default="", repr=False)
    source: str = ""
    registry: str = ""

    def __post_init__(self) -> None:
        """A password of None or a number failed as an AttributeError after the first
        requests were sent. The message names the field, never its value: a secret."""
        for name in ("username", "password", "identity_token", "source", "registry"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise UsageError(f"Credentials.{name} must be a str, not {type(value).__name__}")


@dataclass(frozen=True)
class ProxySettings:
    """The proxies requests go through, and the hosts they do not (``stages/_proxy.py``
    has the rules: Go's, as docker, skopeo and crane apply them).

    ``https_proxy`` for https requests, ``http_proxy`` for plain-http ones (empty: none),
    ``no_proxy`` the exceptions, each written as the environment variable of that name
    would be. The default is no proxy. A library host says what it wants here, or passes
    its environment to ``from_environment``, which is what the CLI does; ``pull`` never
    reads the environment itself. A setting that is no usable proxy URL is a
    ``UsageError`` naming it, when the object is made.

    ``repr`` shows each proxy as ``scheme://host:port``, never its credentials.

    Through a proxy, the proxy resolves the registry's name and connects: the address
    checks still refuse what they can classify here (address literals, and names that
    resolve here to a link-local, loopback or private address), but a name that does not
    resolve here is not refused for that alone, and nothing pins the address the proxy
    reaches (``stages/_http.py``: what does not hold through a proxy).
    """

    https_proxy: str = field(default="", repr=False)
    http_proxy: str = field(default="", repr=False)
    no_proxy: str = ""
    # The names the settings are given by in messages ("HTTPS_PROXY" when they came from
    # the environment).
    https_setting: str = field(default="ProxySettings.https_proxy", repr=False, compare=False)
    http_setting: str = field(default="ProxySettings.http_proxy", repr=False, compare=False)

    def __post_init__(self) -> None:
        """Read both URLs now, so that a bad one fails before any request."""
        for name in ("https_proxy", "http_proxy", "no_proxy"):
            if not isinstance(getattr(self, name), str):
                raise UsageError(f"ProxySettings.{name} must be a string")
        _ = (self.https, self.http)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> ProxySettings:
        """The settings ``environ`` (``os.environ``) gives: ``HTTPS_PROXY``,
        ``HTTP_PROXY`` and ``NO_PROXY``, each upper case if set and not empty, else
        lower case, as Go reads them. A usage error names the variable that is wrong."""
        https_setting, https_proxy = environment_setting(environ, "https_proxy")
        http_setting, http_proxy = environment_setting(environ, "http_proxy")
        _, no_proxy = environment_setting(environ, "no_proxy")
        return cls(
            https_proxy=https_proxy,
            http_proxy=http_proxy,
            no_proxy=no_proxy,
            https_setting=https_setting,
            http_setting=http_setting,
        )

    # Read once per object (cached_property writes the instance's __dict__, which a
    # frozen dataclass allows): proxy_for runs for every request.
    @functools.cached_property
    def https(self) -> ProxyURL | None:
        """The proxy for https requests, or None."""
        return parse_proxy_url(self.https_proxy, self.https_setting)

    @functools.cached_property
    def http(self) -> ProxyURL | None:
        """The proxy for plain-http requests, or None."""
        return parse_proxy_url(self.http_proxy, self.http_setting)

    @property
    def configured(self) -> bool:
        """Whether any request may go through a proxy."""
        return bool(self.https_proxy.strip() or self.http_proxy.strip())

    def proxy_for(self, scheme: str, host: str, port: int | None) -> ProxyURL | None:
        """The proxy a request to ``scheme://host:port`` goes through, or None: by its
        scheme, unless ``host`` is loopback or ``no_proxy`` excludes it."""
        proxy = self.https if scheme == "https" else self.http if scheme == "http" else None
        if proxy is None:
            return None
        port = port if port is not None else (443 if scheme == "https" else 80)
        if is_loopback_target(host) or self._exceptions.excludes(host, port):
            return None
        return proxy

    @functools.cached_property
    def _exceptions(self) -> NoProxy:
        return NoProxy.parse(self.no_proxy)

    def secrets(self) -> tuple[str, ...]:
        """The passwords of the proxies and the Basic credentials made of them: for the
        log redaction, which must cut them wherever they appear."""
        return tuple(dict.fromkeys((*proxy_secrets(self.https), *proxy_secrets(self.http))))

    def __repr__(self) -> str:
        shown = {
            "https_proxy": self.https.shown if self.https else "",
            "http_proxy": self.http.shown if self.http else "",
            "no_proxy": self.no_proxy,
        }
        return f"ProxySettings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach registries.

    ``insecure_registries`` holds ``host`` or ``host:port`` entries, as docker's
    ``--insecure-registry``: HTTPS without certificate verification, then plain HTTP.
    Loopback registries may use plain HTTP without being listed; HTTPS to them is still
    verified unless listed. ``proxy``: the proxies to reach them through (default none;
    ``ProxySettings.from_environment`` reads docker's variables).
    """

    ca_file: Path | None = None
    insecure_registries: tuple[str, ...] = ()
    credentials: Credentials | None = None
    user_agent: str = "imagec-pipe"
    proxy: ProxySettings = field(default_factory=ProxySettings)

    def __post_init__(self) -> None:
        """Refuse values of the wrong kind when the object is made: each failed deep
        inside, as something other than an ``ImagecError``, at the first request or after
        it (a proxy given as a string, credentials as a tuple, a User-Agent of None); and
        one host given as ``insecure_registries="reg:5000"`` was read a character at a
        time, marking every one-letter host insecure and not that registry."""
        if not isinstance(self.proxy, ProxySettings):
            raise UsageError(
                "RegistryOptions.proxy must be ProxySettings (ProxySettings(https_proxy=...)"
                f" or ProxySettings.from_environment(os.environ)), not a"
                f" {type(self.proxy).__name__}"
            )
        insecure = self.insecure_registries
        if not isinstance(insecure, tuple) or not all(
            isinstance(entry, str) and entry.strip() for entry in insecure
        ):
            raise UsageError(
                "RegistryOptions.insecure_registries must be a tuple of host or host:port"
                f" strings (insecure_registries=('reg.example:5000',)), not {insecure!r}"
            )
        if self.credentials is not None and not isinstance(self.credentials, Credentials):
            raise UsageError(
                "RegistryOptions.credentials must be Credentials(username, password) or"
                f" None, not a {type(self.credentials).__name__}"
            )
        if not isinstance(self.ca_file, str | os.PathLike | None):
            raise UsageError(
                f"RegistryOptions.ca_file must be a path or None, not {self.ca_file!r}"
            )
        agent = self.user_agent
        if not isinstance(agent, str) or not agent or not (agent.isascii() and agent.isprintable()):
            raise UsageError(
                "RegistryOptions.user_agent must be a non-empty string of printable ASCII"
                f" characters (it is sent as the User-Agent header), not {agent!r}"
            )


@dataclass(frozen=True)
class Limits:
    """Sizes, buffers and timeouts of the pipeline."""

    # Bytes asked of the socket per read, and the size of the chunks the stages pass on.
    chunk_size: int = 1 * MiB
    # Items a chunk channel may hold before its sender waits (0 = rendezvous).
    chunk_buffer: int = 4
    # The same for the layer on a pull's critical path: the largest of those downloading
    # when it starts (``pipeline/_pull.py`` starts the largest first). Its inflater is
    # what the pull waits for at the end, and a deeper channel lets its download run ahead
    # through the registry's stalls, which a cold page cache makes long. One layer at a
    # time holds it. Interleaved A/Bs, each pull after dropping the page cache: big
    # 5.19 -> 5.07 s and 5.26 -> 4.98 s (24: no better; 8 for every layer: 5.07), app
    # 1.53 -> 1.49 s and 1.49 -> 1.43 s, many unchanged; peak RSS on big 106 -> 130 MB.
    largest_layer_chunk_buffer: int = 16
    # Pieces the pipe from a layer's inflate thread to its hash thread holds. A raw chunk
    # of 1 MiB makes two or three inflated pieces, so 8 lets the inflater run two or more
    # chunks ahead: with 4, the two threads stalled on each other (big: 6.9 -> 6.4 s, with
    # 1 MiB steps, measured).
    pipe_buffer: int = 8
    # Manifests, indexes and configs over this size are refused unread.
    max_manifest_bytes: int = 4 * MiB
    # Index entries naming no platform whose manifest and config are read, in order, to
    # find the platform asked for: two requests each, so an index of thousands costs no
    # thousands of requests. Real indexes have a few.
    max_unplaced_entries: int = 16
    # Token endpoint responses over this size are refused unread.
    max_token_bytes: int = 1 * MiB
    # Decompression caps: absolute, and relative to the compressed size.
    max_layer_uncompressed_bytes: int = 64 * 1024 * MiB
    max_compression_ratio: int = 1000
    # Any layer may inflate to this much whatever its ratio: a small layer holding a sparse
    # file legitimately inflates more than 1000x (deflate's own maximum is about 1032x).
    min_uncompressed_allowance_bytes: int = 64 * MiB
    # Output the inflater produces per step, so one chunk never balloons in memory. Each
    # step is one GIL hand-back by the inflate thread, and under load each costs a wait:
    # 2 MiB beat 1 MiB in interleaved A/Bs (big 6.80 -> 6.59 s, app 1.94 -> 1.84 s, 14-16
    # rounds each), with peak RSS on big about 115 MB instead of 102 (4 MiB: about 135).
    # zstd's pieces stay at 128 KiB, its own output size, below this (``Unzstd``).
    inflate_step_bytes: int = 2 * MiB
    # Which zlib-compatible module inflates gzip layers: "auto" (ISA-L when installed,
    # measured about twice as fast as zlib), "isal" or "zlib".
    gzip_inflater: str = "auto"
    # A zstd frame may not ask for a larger window than this.
    max_zstd_window_bytes: int = 128 * MiB
    connect_timeout_s: float = 30.0
    read_timeout_s: float = 60.0
    # A response's headers (with the endpoint check, token and redirects before them) and
    # the whole body of a manifest, config or error must arrive within this. The read
    # timeout alone never fires for a server that sends a byte now and then; a blob's
    # body is watched by the transfer rate below instead.
    response_deadline_s: float = 120.0
    # A blob body arriving slower than this on average over a window fails the layer with
    # RegistryUnavailable: a server that drips a byte just inside the read timeout would
    # otherwise hold the pull for ever (RELIABILITY.md, "slow drip"). Time the download
    # spent waiting for the stages downstream does not count. 0 turns the check off.
    min_transfer_bytes_per_s: int = 1024
    transfer_window_s: float = 60.0
    # Redirect hops followed by hand for one blob before giving up.
    max_redirects: int = 5
    # A layer whose descriptor names URLs (a foreign, non-distributable layer) the
    # registry does not serve is fetched from the first this many of them, in order; any
    # further ones are not tried. Each URL is a source of its own, with its own retries:
    # without a cap, a manifest naming thousands of unreachable hosts held the pull for
    # thousands of connect timeouts. Real descriptors name one (Windows base layers).
    # 0: never fetch from a descriptor's URLs, only from the registry.
    max_layer_urls: int = 8
    # A request that failed in a way another attempt may cure (HTTP 408, 429, 500, 502,
    # 503, 504; a connection that broke or timed out; a storage URL that expired) is tried
    # again this many times, as docker's five download attempts; a layer resumes where it
    # broke off. 0: never. A refused connection or an untrusted certificate is not retried.
    retries: int = 4
    # Of those, how many in a row may follow a server that accepted the request and then
    # sent nothing for read_timeout_s, not a byte, or did not answer within
    # response_deadline_s (each costs the whole timeout or deadline: five attempts held a
    # pull 5 minutes per request). A fresh connection may cure a stall
    # once (a dead pooled connection, a hung backend behind a balancer); no peer retries
    # one more: docker's pull hangs (kubelet's --image-pull-progress-deadline was made for
    # it), containerd's CRI cancels a pull after 5 minutes without a byte, and
    # containers/image resumes a body only once 1 MiB arrived since the last resume. An
    # attempt that received stall_progress_bytes before it stalled starts the count again.
    stall_retries: int = 1
    # The bytes of a layer an attempt that ended in a stall must have received to count
    # as progress rather than as one more stall in a row (for any other request, every
    # stall counts). When any byte counted, a server that sent a byte and then nothing,
    # on every attempt, held a layer for retries + 1 read timeouts; containers/image asks
    # for 1 MiB since the last resume. 1: any byte. Bytes received, not kept: the start
    # of a blob resent to a Range request, skipped, counts (the server was sending), as
    # long as the attempt also kept a new byte; one that stalled where the last stalled
    # kept none, and is a stall in a row however much of the start it resent.
    stall_progress_bytes: int = 1 * MiB
    # The wait before retry n is retry_wait_s * 2**(n-1), at most retry_max_wait_s, of
    # which a random half (jitter: pulls that failed together do not return together).
    retry_wait_s: float = 0.5
    retry_max_wait_s: float = 10.0
    # A 429's Retry-After is waited out up to this; a longer one fails the pull at once
    # (TooManyRequests, saying how long the registry asked for) instead of hanging.
    retry_after_max_s: float = 60.0

    def __post_init__(self) -> None:
        """Refuse values no pull can run with, before any request: an inflate step of 0
        looped for ever in its thread, where no cancellation reaches, and a chunk size of
        0 or a negative timeout failed deep inside, as something else."""
        for name, least in _LEAST_COUNTS.items():
            value = getattr(self, name)
            most = _MOST_COUNTS.get(name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < least
                or (most is not None and value > most)
            ):
                allowed = f"of at least {least}" if most is None else f"from {least} to {most}"
                raise UsageError(f"Limits.{name} must be a whole number {allowed}, not {value!r}")
        for name in _POSITIVE_SECONDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise UsageError(
                    f"Limits.{name} must be a number of seconds above 0, not {value!r}"
                )
        if not isinstance(self.gzip_inflater, str):
            raise UsageError(f"Limits.gzip_inflater must be a name, not {self.gzip_inflater!r}")


# The least value of each count in Limits, and the timeouts and windows, which must be
# above 0 seconds; tests/test_config.py checks that every field is in one of them.
_LEAST_COUNTS = {
    "chunk_size": 1,
    "chunk_buffer": 0,  # 0: a rendezvous channel
    "largest_layer_chunk_buffer": 0,
    "pipe_buffer": 1,
    "max_manifest_bytes": 1,
    "max_unplaced_entries": 1,
    "max_token_bytes": 1,
    "max_layer_uncompressed_bytes": 1,
    "max_compression_ratio": 1,
    "min_uncompressed_allowance_bytes": 0,
    "inflate_step_bytes": 1,
    "max_zstd_window_bytes": 1024,  # zstd's least window (ZSTD_WINDOWLOG_ABSOLUTEMIN)
    "min_transfer_bytes_per_s": 0,  # 0 turns the check off
    "max_redirects": 0,
    "max_layer_urls": 0,  # 0: the registry only
    "retries": 0,
    "stall_retries": 0,
    "stall_progress_bytes": 1,  # 1: any byte is progress
}
# The most of the counts that size a buffer: each socket read allocates chunk_size bytes
# and each inflate step inflate_step_bytes (2**40 was a MemoryError, no ImagecError, at
# the first request), and zstd refuses a window limit past 2 GiB (ZSTD_WINDOWLOG_MAX),
# which failed every zstd layer as if the layer were corrupt.
_MOST_COUNTS = {
    "chunk_size": 64 * MiB,
    "inflate_step_bytes": 64 * MiB,
    "max_zstd_window_bytes": 2**31,
}
_POSITIVE_SECONDS = (
    "connect_timeout_s",
    "read_timeout_s",
    "response_deadline_s",
    "transfer_window_s",
    "retry_wait_s",
    "retry_max_wait_s",
    "retry_after_max_s",
)
