"""The registry client: endpoint discovery, authorisation, bounded GETs, blob streams.

``RegistryClient`` holds what a pull learns about registries and must not learn twice:
the endpoint (scheme and TLS mode) per registry host, the auth challenge it answered
with, and the token cache. Each request goes

    endpoint (GET /v2/, once per host) → Authorization (Basic, or a cached/fetched
    Bearer token for ``repository:<repo>:pull``) → GET, redirects followed by hand
    → 401: renew the token once and retry → status mapped to the error tree

and ``get_bytes`` and ``authenticate`` try again after a transient failure (5xx, 429,
a broken connection, a missed response deadline: ``stages/_retry.py``); the blob stage
does the same for blobs, resuming where the body broke off.

and every response is closed on every path, cancellation included, so a cancelled pull
never leaks a pool slot.

Scheme rules (docker's): https with verification; a registry listed with
``--insecure-registry`` gets https without verification, then plain http; a loopback
registry gets verified https if the server speaks TLS (an untrusted certificate is an
error that points at ``--ca-file``), plain http if it does not. No other downgrade, by
a redirect either: plain http to another host only if that host could be a registry
reached so, and a private or link-local host only from a registry on one
(``_check_redirect``).

Those servers (a token realm, a layer's URL, a redirect target) are the registry's
choice, and a registry that was sent the password may name one after it
(``https://<password>.evil.example/``): errors and log lines name them through the cut
of the credentials sent and the tokens held (``server_named``, ``url_shown``).

The address checks (a token realm, a layer's URL, a redirect target) and the connections
look each name up once, through one ``PinnedResolver`` per client: a request reaches a
host only at an address its check classified, however the name's DNS answer changes
after (DNS rebinding), and a kept-alive connection in the pool was made to such an
address too. Not through a proxy (``RegistryOptions.proxy``): the proxy looks the name up
and connects, so only what the checks classify here is refused (``stages/_http.py`` says
what does not hold then); transport errors of a request sent through one name the proxy.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import httpcore
import httpx
import trio

from ._auth import (
    BodyTooLarge,
    Challenge,
    ChallengeError,
    Resolver,
    TokenCache,
    basic_authorization,
    check_credential_destination,
    choose_challenge,
    error_detail,
    fetch_token,
    headers_challenges,
    host_addresses,
    host_of,
    is_loopback_host,
    matches_insecure,
    parse_realm,
    pull_scope,
    quotable,
    read_bounded,
    refusal_hint,
    refused_address_class,
)
from ._config import Limits, RegistryOptions
from ._errors import (
    AuthError,
    ImagecError,
    ManifestError,
    NotFound,
    RegistryError,
    RegistryUnavailable,
    TooManyRequests,
)
from ._http import (
    PinnedResolver,
    ProxyRefused,
    ProxyUnreachable,
    certificate_problem,
    cookie_jar_used,
    describe_error,
    open_client,
    stalled_for,
    tls_failure,
    transient_failure,
    url_authority,
)
from ._log import get_logger
from ._proxy import ProxyURL
from ._redact import shown_url
from ._reference import PATH_COMPONENT, Reference
from ._retry import parse_retry_after, retrying
from ._types import Digest

__all__ = ["BodyOverLimit", "RegistryClient"]

# How httpx's ``RemoteProtocolError`` for a redirect whose Location is no URL begins.
_HTTPX_BAD_LOCATION = "Invalid URL in location header"

log = get_logger()

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Server errors another attempt may cure (a 501 or 505 will say the same again).
_TRANSIENT_5XX = frozenset({500, 502, 503, 504})
_REPOSITORY = re.compile(rf"{PATH_COMPONENT.pattern}(?:/{PATH_COMPONENT.pattern})*")
_TARGET = re.compile(r"sha256:[0-9a-f]{64}|[\w][\w.-]{0,127}", re.ASCII)
# The TLS handshake budget when probing a loopback registry for https (a TLS server on
# loopback answers in milliseconds; a plain one may never answer a ClientHello).
LOOPBACK_TLS_PROBE_S = 2.0


class BodyOverLimit(ManifestError):
    """``get_bytes`` refused a body over its ``max_bytes`` (declared or actual).

    A ``ManifestError`` to users; ``resolve_image`` catches it where the cap was a
    descriptor's size, to say so.
    """


@dataclass(frozen=True)
class _Endpoint:
    """Where a registry answers: ``base_url`` is ``scheme://host[:port]``."""

    authority: str
    base_url: httpx.URL
    verify: bool


@dataclass
class _Asking:
    """The server a block under ``RegistryClient._deadline`` is waiting on at the moment,
    for the message that blames it when the deadline passes: None for the registry, else
    as the message names it (``host[:port]`` of a storage server the registry redirected
    to, of a layer's URL or where that redirected; the token service). ``_follow`` moves
    it at each hop, and a response's body is read from the last one."""

    server: str | None = None


class RegistryClient:
    """Holds one httpx.AsyncClient per TLS mode (large socket reads, see ``_http``), the
    resolved endpoint (scheme) per registry host and the token cache.

    ``resolve`` looks names up for the address checks; it must be the resolver the
    clients connect through (``open`` builds both on one ``PinnedResolver``), or a check
    and its connection may see different answers."""

    def __init__(
        self,
        options: RegistryOptions,
        limits: Limits,
        verified: httpx.AsyncClient,
        unverified: httpx.AsyncClient,
        resolve: Resolver,
    ) -> None:
        self._options = options
        self._limits = limits
        self._verified = verified
        self._unverified = unverified
        self._resolve = resolve
        self._endpoints: dict[str, _Endpoint] = {}
        self._endpoint_lock = trio.Lock()
        self._challenges: dict[str, Challenge | None] = {}
        self._tokens = TokenCache()
        self._token_lock = trio.Lock()

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        options: RegistryOptions,
        limits: Limits,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        resolve: Resolver | None = None,
        network: httpcore.AsyncNetworkBackend | None = None,
    ) -> AsyncIterator[RegistryClient]:
        """Open the clients. Every name is looked up once, through ``resolve`` (None: the
        system's), for the address checks and the connections alike (``PinnedResolver``:
        a name whose answer changes after a check reaches only what the check saw).
        ``transport`` replaces the pool, ``network`` what the pool connects through
        (tests: MockTransport, a simulated network, and a table of names)."""
        names = PinnedResolver(resolve)
        async with (
            open_client(
                options, limits, verify=True, transport=transport, names=names, network=network
            ) as verified,
            open_client(
                options, limits, verify=False, transport=transport, names=names, network=network
            ) as unverified,
        ):
            yield cls(options, limits, verified, unverified, names)

    # -- public API -----------------------------------------------------------------------

    async def get_bytes(
        self,
        ref: Reference,
        kind: Literal["manifests", "blobs"],
        target: str,
        *,
        accept: str | None,
        max_bytes: int,
    ) -> tuple[bytes, httpx.Headers]:
        """Authorised ``GET /v2/<repo>/<kind>/<target>``, the whole body in memory.

        A body over ``max_bytes`` (by its Content-Length, or once more than that arrived,
        so at most one socket read past the cap is held) is a ``BodyOverLimit``, a
        ``ManifestError``: this is for manifests and configs, whose caps protect memory.
        """
        if not _TARGET.fullmatch(target):
            raise ValueError(f"not a tag or digest: {target!r:.100}")
        digest = target if target.startswith("sha256:") else None
        what = f"{kind[:-1]} {target}"
        headers = {"Accept-Encoding": "identity"}
        if accept is not None:
            headers["Accept"] = accept
        path = f"/v2/{ref.repository}/{kind}/{target}"
        return await retrying(
            functools.partial(self._get_bytes_once, ref, path, headers, what, digest, max_bytes),
            self._limits,
        )

    async def _get_bytes_once(
        self,
        ref: Reference,
        path: str,
        headers: Mapping[str, str],
        what: str,
        digest: str | None,
        max_bytes: int,
    ) -> tuple[bytes, httpx.Headers]:
        """One attempt of ``get_bytes``."""
        with self._deadline(ref, what, digest) as asking:
            response = await self._open(ref, path, headers, what=what, digest=digest, asking=asking)
            try:
                if response.status_code != 200:
                    raise RegistryError(
                        f"{self.server_named(ref, response.url)} answered HTTP"
                        f" {response.status_code}"
                        f" instead of 200 for {what}",
                        ref=str(ref),
                        digest=digest,
                    )
                encoding = response.headers.get("Content-Encoding", "").strip()
                if encoding and encoding.lower() != "identity":
                    # Its digest is of the document's own bytes, and these are others.
                    raise ManifestError(
                        f"{self.server_named(ref, response.url)} sent {what} with"
                        f" Content-Encoding: {self._quotable(encoding)[:40]}, though identity"
                        " was asked for (a proxy or CDN in front of the registry may add it)",
                        ref=str(ref),
                        digest=digest,
                    )
                try:
                    body = await read_bounded(response, max_bytes, what=what)
                except BodyTooLarge as exc:
                    raise BodyOverLimit(
                        f"{what} is larger than the {max_bytes}-byte limit; refused",
                        ref=str(ref),
                        digest=digest,
                    ) from exc
                except httpx.HTTPError as exc:
                    raise self._transport_error(exc, ref, response.url, what, digest) from exc
                log.debug("fetched", ref=str(ref), what=what, size=len(body))
                return body, response.headers
            finally:
                await _close(response)

    async def authenticate(self, ref: Reference) -> None:
        """Find ``ref``'s endpoint and get its token now (both cached), so that the time
        auth takes can be measured apart from the manifest's."""
        await retrying(functools.partial(self._authenticate_once, ref), self._limits)

    async def _authenticate_once(self, ref: Reference) -> None:
        with self._deadline(ref, "authentication", None) as asking:
            endpoint = await self._endpoint(ref)
            await self._authorization(ref, endpoint, stale=None, asking=asking)

    def stream_blob(
        self, ref: Reference, digest: Digest, *, offset: int = 0
    ) -> contextlib.AbstractAsyncContextManager[httpx.Response]:
        """Authorised streaming GET of a blob, ``Accept-Encoding: identity``.

        Redirects are followed by hand (Authorization only to the registry host;
        https→http refused, and what ``_check_redirect`` refuses; at most
        ``limits.max_redirects`` hops). The response is 200, or, when ``offset > 0``, a
        206 whose Content-Range starts at ``offset`` or a 200 (a server that ignores
        ``Range`` sends the whole blob: the caller skips what it has); anything else
        raises the mapped error. Transport errors while the caller reads
        ``response.aiter_raw()`` come out as ``RegistryUnavailable``, except
        ``httpx.RemoteProtocolError`` (the body ended before its length, or a chunk was
        cut), which the blob stage reports as ``Truncated`` with how far it got. The
        response is always closed on exit.
        """
        return self._stream_blob(ref, digest, offset)

    @contextlib.asynccontextmanager
    async def _stream_blob(
        self, ref: Reference, digest: Digest, offset: int
    ) -> AsyncIterator[httpx.Response]:
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        what = f"blob {digest}"
        headers = {"Accept-Encoding": "identity"}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
        path = f"/v2/{ref.repository}/blobs/{digest}"
        # The body has the rate check instead of the deadline.
        with self._deadline(ref, what, str(digest)) as asking:
            response = await self._open(
                ref, path, headers, what=what, digest=str(digest), asking=asking
            )
        try:
            self._check_blob_status(response, ref, digest, offset)
            try:
                yield response
            except httpx.RemoteProtocolError:
                raise  # a short body: the blob stage's Truncated says how much came
            except httpx.HTTPError as exc:
                raise self._transport_error(exc, ref, response.url, what, str(digest)) from exc
        finally:
            await _close(response)

    def stream_url(
        self, ref: Reference, url: str, digest: Digest, *, offset: int = 0
    ) -> contextlib.AbstractAsyncContextManager[httpx.Response]:
        """Anonymous streaming GET of a blob from ``url``, one of the URLs a layer's
        descriptor names (a foreign layer's), with what ``stream_blob`` promises of the
        response and its errors.

        The URL is the manifest's word, not the user's, so: no Authorization header,
        neither the registry's credentials nor a token (the hole containerd had,
        CVE-2020-15157); no cookie sent, and none it sets kept (the jar is shared with
        the registry's requests); a URL with user info is refused. http or https only,
        plain http only where a registry could use it (a loopback host, or one listed
        with --insecure-registry), https verified unless so listed. A link-local,
        loopback or private host only when the registry is on one of the same kind (as
        for a token realm: ``_refuse_internal_realm``): a loopback URL, plain http or
        not, only for a registry on loopback. Redirects follow ``_follow``'s rules.
        Errors name the URL as ``url_shown`` shows it, without its query (a signed URL's
        secrets) and cut of the credentials.
        """
        return self._stream_url(ref, url, digest, offset)

    @contextlib.asynccontextmanager
    async def _stream_url(
        self, ref: Reference, url: str, digest: Digest, offset: int
    ) -> AsyncIterator[httpx.Response]:
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        shown = self.url_shown(url)
        target = self._foreign_target(ref, url, shown, digest)
        what = f"blob {digest} from {shown}"
        headers = {"Accept-Encoding": "identity"}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
        insecure = matches_insecure(url_authority(target), self._options.insecure_registries)
        origin = _Endpoint(url_authority(target), target, verify=not insecure)
        with self._deadline(ref, what, str(digest)) as asking:
            asking.server = self._server_of(ref, target)
            await self._refuse_internal_url(ref, target, shown, digest)
            response = await self._follow(
                ref, origin, target, headers, None, what, str(digest), asking, cookies=False
            )
        try:
            if response.status_code >= 300:
                raise await self._url_status_error(response, ref, target, shown, digest)
            self._check_blob_status(response, ref, digest, offset)
            try:
                yield response
            except httpx.RemoteProtocolError:
                raise  # a short body: the blob stage's Truncated says how much came
            except httpx.HTTPError as exc:
                raise self._transport_error(exc, ref, response.url, what, str(digest)) from exc
        finally:
            await _close(response)

    def _foreign_target(self, ref: Reference, url: str, shown: str, digest: Digest) -> httpx.URL:
        """``url`` as a URL we may fetch from, or a ``RegistryError`` saying why not."""

        def refused(reason: str) -> RegistryError:
            return RegistryError(
                f"the URL {shown} for layer {digest} {reason}", ref=str(ref), digest=str(digest)
            )

        try:
            target = httpx.URL(url)
            host = target.host  # an "xn--" label that is no IDNA name raises here
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise refused("is not a valid URL") from exc
        if target.scheme not in ("http", "https") or not host:
            raise refused("is not an http or https URL; skipped")
        if target.userinfo:
            raise refused("carries user info; no credentials go to a layer's URLs")
        authority = url_authority(target)
        if target.scheme == "http" and not (
            is_loopback_host(target.host)
            or matches_insecure(authority, self._options.insecure_registries)
        ):
            raise refused(
                "is plain http, which is used only for loopback hosts and hosts listed with"
                f" --insecure-registry ({self.server_named(ref, target)})"
            )
        return target

    async def _refuse_internal_url(
        self, ref: Reference, target: httpx.URL, shown: str, digest: Digest
    ) -> None:
        """A manifest may not send us to a link-local, loopback or private host unless
        its registry is on one of the same kind, by address or by what the names resolve
        to (``_internal_kind``): not to a cloud metadata service, and, from a registry on
        a private network, not to this machine's own services (a docker daemon on
        127.0.0.1:2375). The rule of ``_refuse_internal_realm``, for the URLs of a
        foreign layer."""
        kind = await self._internal_kind(ref, target.host)
        if kind is not None:
            raise RegistryError(
                f"the URL {shown} for layer {digest} is on a {kind} address and the"
                f" registry {ref.api_host} is not; refused",
                ref=str(ref),
                digest=str(digest),
            )

    async def _internal_kind(self, ref: Reference, host: str) -> str | None:
        """The class, "link-local", "loopback" or "private", of ``host``'s address (a
        literal, or what its name resolves to) when ``ref``'s registry is on no address
        of that class (``refused_address_class``): a place neither the manifest nor a
        redirect may send a request to. None when it may. The registry's own name is
        looked up only when ``host`` is in such a class. Both answers are the ones the
        connections use (``PinnedResolver``): a check that passes holds for the request
        it let go."""
        addresses = await host_addresses(host, self._resolve)
        if refused_address_class(addresses, ()) is None:
            return None
        registry = await host_addresses(host_of(ref.api_host), self._resolve)
        return refused_address_class(addresses, registry)

    # -- endpoint discovery ---------------------------------------------------------------

    async def _endpoint(self, ref: Reference) -> _Endpoint:
        authority = ref.api_host
        endpoint = self._endpoints.get(authority)
        if endpoint is not None:
            return endpoint
        async with self._endpoint_lock:
            endpoint = self._endpoints.get(authority)
            if endpoint is None:
                endpoint = await self._discover(ref, authority)
                self._endpoints[authority] = endpoint
            return endpoint

    async def _discover(self, ref: Reference, authority: str) -> _Endpoint:
        """The endpoint (scheme, TLS mode) of ``authority``, found by ``GET /v2/``.

        A registry listed as insecure is asked over https without verification, then
        over plain http, but only when the https attempt got no answer from the
        registry: the connection or TLS failed (a plain-http server on that port), or a
        proxy refused the CONNECT (not with 407: its credentials are what the user must
        hear about). An answer over https, a 5xx included, is the registry's: it speaks
        https, so the status is raised as any other (``_status_error``; a 5xx is tried
        again by the retry policy, over https) and never taken for a reason to go plain.

        That is docker's rule: its pull skips the http endpoint of a host whose https
        ping came back with an HTTP response (moby, ``confirmedTLSRegistries``, set from
        ``fallbackError.transportOK``). containers/image (skopeo, podman) tries http after
        any failed https ping (``detectPropertiesHelper``), a registry's 5xx included;
        not followed here. A proxy's 429, 502, 503 or 504 to the CONNECT is no answer of
        the registry's: Go's net/http returns it as an error, without a response, so both
        fall back past it, and so does this.

        At once, deliberately, though a 503 (or 429) may carry a ``Retry-After`` that
        ``ProxyRefused`` reads: Go's transport keeps only a refused CONNECT's status text
        (``dialConn`` returns ``errors.New`` of it), so docker cannot see that wait, and
        its fallback to http does not wait it either; waiting here would hold every pull
        of a plain-http registry behind a busy proxy for a wait meant for https. But when
        the http attempt then fails too, with no answer (the port speaks no plain http,
        or with no ``HTTP_PROXY`` the name does not resolve here), its error is not the
        one raised: that was final, and failed the pull at once, though the proxy had
        said "not now" and when to ask again. The proxy's refusal is raised instead,
        transient with its Retry-After (the retry policy waits it, then discovers
        again), the http attempt's failure added to its message. So is any other refused
        CONNECT (a 403 from a proxy that tunnels to port 443 only), final as it was: the
        http attempt's failure alone (a name that does not resolve here) hid the
        refusal that sent the pull to plain http. docker reports the last endpoint's
        error (moby's ``Pull``, ``lastErr``); an http answer, an error status included,
        and ``HTTP_PROXY`` refusing its credentials (407) are still raised as they are.
        """
        insecure = matches_insecure(authority, self._options.insecure_registries)
        attempts: list[tuple[str, bool]]
        if insecure:
            attempts = [("https", False), ("http", False)]
        elif is_loopback_host(host_of(authority)):
            attempts = [("https" if await self._speaks_tls(ref, authority) else "http", True)]
        else:
            attempts = [("https", True)]
        # The https attempt's refused CONNECT, fallen back past: the refusal, and the
        # error it makes (transient for a "not now": 429, 502, 503, 504).
        refused: tuple[ProxyRefused, RegistryError] | None = None
        for index, (scheme, verify) in enumerate(attempts):
            base_url = httpx.URL(f"{scheme}://{authority}")
            try:
                challenge = await self._ping(ref, base_url, verify)
            except httpx.HTTPError as exc:
                # Not past a 407 from HTTP_PROXY: its credentials are what to hear.
                if refused is not None and not (
                    isinstance(exc, ProxyRefused) and exc.credentials_refused
                ):
                    refusal, error = refused
                    error.extend_message(
                        f"plain http to {authority}, tried next as it is listed as insecure,"
                        f" failed too ({self._quotable(describe_error(exc))})"
                    )
                    raise error from refusal
                # Only an insecure registry has a next attempt: plain http. A proxy
                # refusing the https attempt's CONNECT counts as failing to connect (a
                # proxy may allow CONNECT to port 443 only, as squid does by default),
                # but not one refusing its credentials (407): that is what the user must
                # hear, not what the http attempt meets next (without HTTP_PROXY, a
                # direct connection to a name only the proxy can resolve).
                fallback = isinstance(
                    exc,
                    httpx.ConnectError
                    | httpx.ConnectTimeout
                    | httpx.ProtocolError
                    | httpx.ReadError
                    | ProxyRefused,
                ) and not (isinstance(exc, ProxyRefused) and exc.credentials_refused)
                if fallback and index + 1 < len(attempts):
                    if isinstance(exc, ProxyRefused):
                        refused = (
                            exc,
                            self._transport_error(exc, ref, base_url, "the API check /v2/", None),
                        )
                    log.debug(
                        "registry endpoint failed, trying the next",
                        registry=authority,
                        url=str(base_url),
                        error=describe_error(exc),
                    )
                    continue
                raise self._transport_error(exc, ref, base_url, "the API check /v2/", None) from exc
            log.info("registry endpoint", registry=authority, url=str(base_url), verify=verify)
            self._challenges[authority] = challenge
            return _Endpoint(authority, base_url, verify)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _speaks_tls(self, ref: Reference, authority: str) -> bool:
        """Whether a loopback registry answers TLS, asked without verification: an
        anonymous ``GET /v2/`` whose answer is dropped, connected within
        ``LOOPBACK_TLS_PROBE_S``.

        The real requests verify: a TLS registry with an untrusted certificate is still
        refused, and a plain-HTTP one (the usual registry on loopback) never makes the
        pull load the system's CA store (``DeferredTrustContext``).
        """
        base_url = httpx.URL(f"https://{authority}")
        timeout = self._unverified.timeout
        timeout = httpx.Timeout(
            connect=min(self._limits.connect_timeout_s, LOOPBACK_TLS_PROBE_S),
            read=timeout.read,
            write=timeout.write,
            pool=timeout.pool,
        )
        try:
            async with self._unverified.stream("GET", base_url.join("/v2/"), timeout=timeout):
                return True
        except httpx.HTTPError as exc:
            failure = tls_failure(exc)
            if failure == "verify":  # only a verifying transport says so; TLS it is
                return True
            # A plain-HTTP server fails the handshake or, waiting for a request head,
            # never answers the ClientHello.
            if failure == "protocol" or isinstance(exc, httpx.ConnectTimeout):
                log.debug(
                    "registry endpoint does not speak TLS, using plain http",
                    registry=authority,
                    error=describe_error(exc),
                )
                return False
            raise self._transport_error(exc, ref, base_url, "the API check /v2/", None) from exc

    async def _ping(self, ref: Reference, base_url: httpx.URL, verify: bool) -> Challenge | None:
        """``GET /v2/``: 200 (no auth) or 401 with the challenge we will answer."""
        client = self._verified if verify else self._unverified
        async with client.stream("GET", base_url.join("/v2/")) as response:
            if response.status_code == 200:
                return None
            if response.status_code == 401:
                return self._challenge_of(response, ref)
            raise await self._status_error(response, ref, "the API check /v2/", None)

    def _challenge_of(self, response: httpx.Response, ref: Reference) -> Challenge | None:
        try:
            challenges = headers_challenges(response.headers)
        except ChallengeError as exc:
            raise AuthError(
                f"{ref.api_host} sent an unreadable WWW-Authenticate header:"
                f" {exc.quoting(self._quotable)}",
                ref=str(ref),
            ) from exc
        return choose_challenge(challenges)

    def _quotable(self, text: str) -> str:
        """A server's ``text`` as this client's errors quote it (``quotable``): without
        the credentials it sends, the tokens it holds (which ``recent_tokens`` may have
        let go of while other pulls fetched theirs) and what ``redact`` cuts. A registry
        refusing Basic credentials may quote them back, one refusing a token that token,
        in its body or in any header (opaque tokens have no shape ``redact`` knows)."""
        return quotable(text, credentials=self._options.credentials, tokens=self._tokens.secrets())

    def server_named(self, ref: Reference, url: httpx.URL, *, port: bool = True) -> str:
        """The server of ``url`` as errors and log lines name it: ``host[:port]``
        (``port`` False: the host alone), never its path or query (a signed URL's
        secrets). The registry's own host as it is: the user typed it. Any other through
        ``_quotable``: a storage server the registry redirected to, a token service, a
        layer's URL and where that redirected are the registry's text, and a registry
        that was sent the password may name ``https://<password>.evil.example/``, which
        parsing lower-cases (``_quotable`` cuts the credentials in lower case too, and in
        the ``xn--`` form a host spells letters outside ASCII in, where the resolver, TLS
        or the registry's own text name it). Every message naming such a server goes
        through here."""
        name = url_authority(url) if port else url.host
        if url.host == host_of(ref.api_host):
            return name
        return self._quotable(name)

    def url_shown(self, url: str) -> str:
        """A URL a manifest names (a foreign layer's) as errors and log lines show it:
        ``shown_url``'s form, the registry's text cut by ``_quotable`` before it is cut
        short, for the URL may carry what the registry was sent as ``server_named``'s
        hosts may."""
        return shown_url(url, quote=self._quotable)

    def _check_blob_status(
        self, response: httpx.Response, ref: Reference, digest: Digest, offset: int
    ) -> None:
        """A blob's response is one to read: 200 from the start; from ``offset``, a 206
        whose Content-Range starts there, or a 200 (Range ignored, the whole blob again).
        Else a ``RegistryError``, quoting the Content-Range through ``_quotable``."""
        status = response.status_code
        server = self.server_named(ref, response.url)  # the registry, or a storage server
        if offset == 0:
            if status != 200:
                raise RegistryError(
                    f"{server} answered HTTP {status} instead of 200 for blob {digest}",
                    ref=str(ref),
                    digest=str(digest),
                )
            return
        if status == 200:
            return  # Range ignored: the whole blob, from which the caller skips ``offset`` bytes
        content_range = response.headers.get("Content-Range", "")
        if status != 206 or not content_range.startswith(f"bytes {offset}-"):
            raise RegistryError(
                f"{server} did not resume blob {digest} at byte {offset} (HTTP {status},"
                f" Content-Range {self._quotable(content_range)[:60]!r})",
                ref=str(ref),
                digest=str(digest),
            )

    # -- authorisation --------------------------------------------------------------------

    async def _authorization(
        self, ref: Reference, endpoint: _Endpoint, *, stale: str | None, asking: _Asking
    ) -> str | None:
        """The Authorization header for ``ref``'s registry, or None if it wants none.

        ``stale`` is the header a request was just refused with: a cached token equal to
        it is not reused. The token service's errors (``_auth`` knows nothing of images)
        are made to name ``ref``. ``asking`` is moved to the token service while it is asked.
        """
        try:
            return await self._authorization_for(ref, endpoint, stale=stale, asking=asking)
        except ImagecError as exc:
            if exc.ref is None:
                exc.ref = str(ref)
            raise

    async def _authorization_for(
        self, ref: Reference, endpoint: _Endpoint, *, stale: str | None, asking: _Asking
    ) -> str | None:
        challenge = self._challenges.get(endpoint.authority)
        if challenge is None:
            return None
        credentials = self._options.credentials
        authority = endpoint.authority
        insecure = self._options.insecure_registries
        if challenge.scheme == "basic":
            if credentials is None:
                raise AuthError(
                    f"{authority} requires a username and password: pass -u USER --password-stdin",
                    ref=str(ref),
                )
            if credentials.identity_token and not credentials.password:
                given = f"from {credentials.source}" if credentials.source else "given"
                raise AuthError(
                    f"{authority} asks for a username and password, and the credentials"
                    f" {given} are an identity token, which only a token service takes:"
                    " pass -u USER --password-stdin",
                    ref=str(ref),
                )
            reason = check_credential_destination(
                endpoint.base_url, registry=authority, insecure=insecure
            )
            if reason is not None:
                raise AuthError(f"refusing to send credentials to {authority}: {reason}")
            return basic_authorization(credentials)

        realm = challenge.get("realm") or ""
        service = challenge.get("service") or ""
        scope = pull_scope(ref.repository)
        key = (realm, service, scope)
        async with self._token_lock:
            token = self._tokens.get(key)
            if token is not None and f"Bearer {token.value}" != stale:
                return f"Bearer {token.value}"
            # The realm, its host and what is said of them are the registry's words:
            # quoted through this client's cut, which knows the credentials it sends.
            url = parse_realm(realm, quote=self._quotable)
            if credentials is not None:
                reason = check_credential_destination(url, registry=authority, insecure=insecure)
                if reason is not None:
                    raise AuthError(
                        f"refusing to send credentials for {authority} to the token service"
                        f" {self.server_named(ref, url, port=False)}: {self._quotable(reason)}",
                        ref=str(ref),
                    )
            await self._refuse_internal_realm(ref, url, authority)
            # Named as the token service's own errors name it: through the cut of the
            # registry's words, for the realm's host may carry the credentials.
            asking.server = f"the token service at {self.server_named(ref, url)}"
            token = await fetch_token(
                self._client_for(url),
                url,
                service=service,
                scope=scope,
                credentials=credentials,
                limits=self._limits,
                registry=authority,
                tokens=self._tokens.secrets(),
            )
            self._tokens.put(key, token)
            return f"Bearer {token.value}"

    async def _refuse_internal_realm(self, ref: Reference, url: httpx.URL, authority: str) -> None:
        """A registry may not send us (with or without credentials) to a token service on
        a link-local, loopback or private address unless it is on one of the same kind
        itself, by address or by name (``refused_address_class``): that is how a registry
        would reach a cloud metadata service, this machine's own services or an internal
        host. A registry on a private network reaches neither the metadata range nor
        loopback; one on loopback (a local mirror, the test kit's registry and token
        server on 127.0.0.1) reaches loopback and private hosts, not the metadata
        range."""
        realm = await host_addresses(url.host, self._resolve)
        registry = await host_addresses(host_of(authority), self._resolve)
        by_name = "" if realm == [url.host] else " (by what the name resolves to)"
        kind = refused_address_class(realm, registry)
        if kind is not None:
            raise AuthError(
                f"{authority} named a token service on the {kind} address "
                f"{self.server_named(ref, url, port=False)}{by_name}; refused",
                ref=str(ref),
            )

    def _client_for(self, url: httpx.URL) -> httpx.AsyncClient:
        """Unverified TLS only for hosts the user listed as insecure."""
        if matches_insecure(url_authority(url), self._options.insecure_registries):
            return self._unverified
        return self._verified

    # -- requests -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _deadline(self, ref: Reference, what: str, digest: str | None) -> Iterator[_Asking]:
        """``RegistryUnavailable`` if the block takes longer than
        ``limits.response_deadline_s``: a server that sends a byte now and then, each
        inside the read timeout, would otherwise hold a pull for ever (RELIABILITY.md).

        The block moves the ``_Asking`` it is given to each server it asks (the registry
        to start with), for the message to blame the one that was being asked when the
        time ran out: a storage server the registry redirected to, not the registry.

        The error is transient, and a stall (``stalled_s``, the deadline's seconds) for
        the retry rules: a server that was slow once (a hung backend behind a balancer,
        a storage server behind an expired signed URL that hangs) may answer the next
        request, which asks the registry again (a fresh redirect) and resumes a layer
        where it broke off, as after a broken connection. A miss costs the whole
        deadline, more than a read timeout, so misses in a row are tried again only as
        often as stalls are (``limits.stall_retries``)."""
        seconds = self._limits.response_deadline_s
        asking = _Asking()
        with trio.move_on_after(seconds) as scope:
            yield asking
        if scope.cancelled_caught:
            server = asking.server
            who = ref.api_host if server is None else server
            role = "the registry" if server is None else "that server"
            raise RegistryUnavailable(
                f"{who} took more than {seconds:g} s to answer for {what}; {role} or the"
                " network is stalling, pull again",
                ref=str(ref),
                digest=digest,
                transient=True,
                stalled_s=seconds,
            )

    async def _open(
        self,
        ref: Reference,
        path: str,
        headers: Mapping[str, str],
        *,
        what: str,
        digest: str | None,
        asking: _Asking,
    ) -> httpx.Response:
        """An authorised GET with redirects followed; returns an open 2xx response.

        A 401 (or a 403 with a challenge) from the registry renews the authorisation
        once and retries; the second refusal is an ``AuthError``. ``asking`` follows the
        request (``_deadline``).
        """
        if not _REPOSITORY.fullmatch(ref.repository):
            raise ValueError(f"not a repository name: {ref.repository!r:.100}")
        endpoint = await self._endpoint(ref)
        url = endpoint.base_url.join(path)
        stale: str | None = None
        renewed = False
        while True:
            authorization = await self._authorization(ref, endpoint, stale=stale, asking=asking)
            response = await self._follow(
                ref, endpoint, url, headers, authorization, what, digest, asking
            )
            keep = False
            try:
                status = response.status_code
                from_registry = _same_origin(response.url, endpoint.base_url)
                if status in (401, 403) and from_registry and not renewed:
                    challenge = self._challenge_of(response, ref)
                    if challenge is not None:
                        self._challenges[endpoint.authority] = challenge
                    current = self._challenges.get(endpoint.authority)
                    # Retry once: with a fresh token, or with credentials we did not send
                    # yet. Resending the same Basic credentials would only repeat the 401.
                    if (status == 401 or challenge is not None) and (
                        current is not None
                        and (current.scheme == "bearer" or authorization is None)
                    ):
                        log.debug("unauthorized, renewing", ref=str(ref), what=what)
                        stale, renewed = authorization, True
                        continue
                if status >= 300:
                    raise await self._status_error(
                        response, ref, what, digest, from_registry=from_registry
                    )
                keep = True
                return response
            finally:
                if not keep:
                    await _close(response)

    async def _follow(
        self,
        ref: Reference,
        endpoint: _Endpoint,
        url: httpx.URL,
        headers: Mapping[str, str],
        authorization: str | None,
        what: str,
        digest: str | None,
        asking: _Asking,
        *,
        cookies: bool = True,
    ) -> httpx.Response:
        """GET ``url``, following redirects by hand.

        Authorization goes only to the registry's own origin; https→http, loops, more
        than ``limits.max_redirects`` hops and targets ``_check_redirect`` refuses (plain
        http or an internal address where the first request could not have gone) are
        refused. Signed redirect URLs are never logged or put in errors (only their
        host); a storage server that quotes its own back is redacted by
        ``error_detail``. ``cookies`` False sends none of the client's cookie jar (a
        registry's session cookie is a credential too, and cookies match a host on any
        port) and stores none the responses set (a layer URL on the registry's host,
        another port, would plant one the registry then receives). ``asking`` is moved to
        each URL as it is asked, for ``_deadline``'s message.
        """
        visited: set[str] = set()
        hops = 0
        current = url

        def invalid_redirect() -> RegistryError:
            """``current``'s redirect to a URL that cannot be read (httpx's parse, or a
            host that is no IDNA name, whether httpx or this loop reads it first)."""
            return RegistryError(
                f"{self.server_named(ref, current, port=False)} redirected {what} to an"
                " invalid URL",
                ref=str(ref),
                digest=digest,
            )

        while True:
            origin = _same_origin(current, endpoint.base_url)
            request_headers = dict(headers)
            if authorization is not None and origin:
                request_headers["Authorization"] = authorization
            if origin:
                client = self._verified if endpoint.verify else self._unverified
            else:
                client = self._client_for(current)
            request = client.build_request("GET", current, headers=request_headers)
            if not cookies:
                request.headers.pop("Cookie", None)
            asking.server = self._server_of(ref, current)
            sent_at = trio.current_time()
            try:
                with cookie_jar_used(cookies):  # nor stores what the response sets
                    response = await client.send(request, stream=True)
            except httpx.RemoteProtocolError as exc:
                # httpx reads a redirect's Location as it receives it (``next_request``),
                # and raises this protocol error, with no cause, for one that is no URL:
                # the answer, not the connection, is at fault, and asking again repeats it.
                if str(exc).startswith(_HTTPX_BAD_LOCATION):
                    raise invalid_redirect() from exc
                waited_s = trio.current_time() - sent_at
                raise self._transport_error(
                    exc, ref, current, what, digest, waited_s=waited_s
                ) from exc
            except httpx.HTTPError as exc:
                raise self._transport_error(exc, ref, current, what, digest) from exc
            except UnicodeError as exc:  # httpx reading a Location whose host is no IDNA name
                raise invalid_redirect() from exc
            if response.status_code not in _REDIRECTS:
                return response
            location = response.headers.get("Location")
            await _close(response)
            if not location:
                raise RegistryError(
                    f"{self.server_named(ref, current, port=False)} redirected the request"
                    f" for {what} without a Location",
                    ref=str(ref),
                    digest=digest,
                )
            hops += 1
            if hops > self._limits.max_redirects:
                raise RegistryError(
                    f"more than {self._limits.max_redirects} redirects for {what}; gave up",
                    ref=str(ref),
                    digest=digest,
                )
            try:
                target = current.join(location)
                target_host = target.host  # an "xn--" label that is no IDNA name raises here
            except (httpx.InvalidURL, UnicodeError) as exc:
                raise invalid_redirect() from exc
            if target.scheme not in ("http", "https") or not target_host:
                raise RegistryError(
                    f"{self.server_named(ref, current, port=False)} redirected {what} to an"
                    " unusable URL",
                    ref=str(ref),
                    digest=digest,
                )
            if current.scheme == "https" and target.scheme == "http":
                raise RegistryError(
                    "refused a redirect from https to plain http"
                    f" ({self.server_named(ref, target, port=False)}) for {what}",
                    ref=str(ref),
                    digest=digest,
                )
            await self._check_redirect(ref, current, target, what, digest)
            visited.add(str(current))
            if str(target) in visited:
                raise RegistryError(
                    f"redirect loop for {what} (via {self.server_named(ref, target, port=False)})",
                    ref=str(ref),
                    digest=digest,
                )
            log.debug("redirected", what=what, to_host=self.server_named(ref, target, port=False))
            current = target

    async def _check_redirect(
        self, ref: Reference, current: httpx.URL, target: httpx.URL, what: str, digest: str | None
    ) -> None:
        """Refuse a redirect from ``current`` to another host where no request of ours
        could have gone in the first place: plain http to a host that is neither on
        loopback nor listed with --insecure-registry (the rule by which ``_discover``
        chose plain http for a registry and ``_foreign_target`` for a layer's URL: a
        plain-http registry or URL may not pass the request on to any http host), or a
        host on a link-local, loopback or private address when the registry is not on one
        (``_internal_kind``: a CDN redirect to a cloud metadata service). A redirect
        within ``current``'s host goes where the request already went: the name's
        addresses are pinned (``PinnedResolver``), not looked up again."""
        if target.host == current.host:
            return
        authority = url_authority(target)
        if target.scheme == "http" and not (
            is_loopback_host(target.host)
            or matches_insecure(authority, self._options.insecure_registries)
        ):
            raise RegistryError(
                f"refused a redirect to plain http on {self.server_named(ref, target)} for"
                f" {what}: plain http is"
                " used only for loopback hosts and hosts listed with --insecure-registry",
                ref=str(ref),
                digest=digest,
            )
        kind = await self._internal_kind(ref, target.host)
        if kind is not None:
            raise RegistryError(
                f"{self.server_named(ref, current)} redirected {what} to"
                f" {self.server_named(ref, target, port=False)}, a {kind} address,"
                f" and the registry {ref.api_host} is not on one; refused",
                ref=str(ref),
                digest=digest,
            )

    # -- errors ---------------------------------------------------------------------------

    def _transport_error(
        self,
        exc: httpx.HTTPError,
        ref: Reference,
        url: httpx.URL,
        what: str,
        digest: str | None,
        *,
        waited_s: float | None = None,
    ) -> RegistryError:
        """The error for a request that failed in transport. ``waited_s``: how long the
        request waited for its answer before a protocol error ended it; a server that
        said nothing for half the read timeout or more, then hung up, stalled (as one
        that is still silent does: ``stalled_s``, tried again once, not four times)."""
        authority = self.server_named(ref, url)
        # The network's words may name the host too (a certificate not valid for it).
        reason = self._quotable(describe_error(exc))
        proxy = self._proxy_for(url)
        if isinstance(exc, ProxyRefused | ProxyUnreachable):
            # Its words name the proxy and the target; the proxy said no, or is down, or
            # could not reach the target or let this client through for now (429, 502,
            # 503, 504: tried again, after the wait a 429's or 503's Retry-After asks
            # for, within the cap a registry's gets).
            refused = exc if isinstance(exc, ProxyRefused) else None
            return RegistryUnavailable(
                f"{reason}, fetching {what}",
                ref=str(ref),
                digest=digest,
                transient=transient_failure(exc),
                retry_after_s=None if refused is None else refused.retry_after_s,
                retry_after_from=None if refused is None else refused.retry_after_from,
            )
        via = "" if proxy is None else f" (through the proxy {proxy.shown})"
        if (problem := certificate_problem(exc, url.host)) is not None:
            words, cure = problem
            return RegistryUnavailable(
                f"the TLS certificate of {authority}{via} {words}: {cure}, or pass"
                f" --insecure-registry {authority} (RegistryOptions.insecure_registries) to"
                " skip verification",
                ref=str(ref),
                digest=digest,
            )
        transient = transient_failure(exc)
        stalled_s = stalled_for(exc, self._limits)
        hung_up = False
        if waited_s is not None and isinstance(exc, httpx.RemoteProtocolError):
            hung_up = waited_s >= self._limits.read_timeout_s / 2
            if hung_up:
                stalled_s = round(waited_s, 1)
        # The registry, or another server it redirected to or a manifest named: the
        # message blames the one that failed.
        registry = self._is_registry(ref, url)
        role = "the registry" if registry else "that server"
        if stalled_s is not None:
            then = ", then it hung up" if hung_up else ""
            message = (
                f"no data from {authority} for {stalled_s:g} s{then} while fetching {what};"
                f" {role} or the network is stalling: try again later"
            )
        elif isinstance(exc, httpx.TimeoutException):
            message = (
                f"{authority} {reason} while fetching {what}; {role} may be overloaded"
                " or unreachable: try again"
            )
        elif isinstance(exc, httpx.ConnectError):
            if registry and tls_failure(exc) == "protocol" and url.scheme == "https":
                # Typically a registry that speaks plain HTTP on that port.
                hint = (
                    "if the registry speaks plain HTTP there, pass --insecure-registry"
                    f" {authority} (RegistryOptions.insecure_registries); else check its"
                    " address"
                )
            elif registry:
                hint = "check the registry address and that it is running"
            else:
                hint = "that server may be down or unreachable from here"
            message = f"cannot connect to {authority} ({reason}) to fetch {what}: {hint}"
        else:
            message = f"the connection to {authority} failed while fetching {what} ({reason})"
        return RegistryUnavailable(
            message + via, ref=str(ref), digest=digest, transient=transient, stalled_s=stalled_s
        )

    def _proxy_for(self, url: httpx.URL) -> ProxyURL | None:
        """The proxy a request for ``url`` goes through (``RegistryOptions.proxy``)."""
        return self._options.proxy.proxy_for(url.scheme, url.raw_host.decode("ascii"), url.port)

    def _forwarded_by(self, url: httpx.URL) -> str:
        """For a plain-http ``url`` sent through a proxy, words saying so: the proxy
        answers such a request itself when it cannot reach the server (502, 504), and
        nothing tells its answer from the server's. Empty otherwise (through a CONNECT
        tunnel, the answer is the server's own)."""
        proxy = self._proxy_for(url) if url.scheme == "http" else None
        return (
            ""
            if proxy is None
            else f" (through the proxy {proxy.shown}, which may have answered for it)"
        )

    def _is_registry(self, ref: Reference, url: httpx.URL) -> bool:
        """Whether ``url`` is on ``ref``'s registry endpoint (scheme, host and port), not
        a storage server it redirected to nor a URL a manifest named. Before the endpoint
        is known, only the registry is asked, so its host decides."""
        endpoint = self._endpoints.get(ref.api_host)
        if endpoint is None:
            return url.host == host_of(ref.api_host)
        return _same_origin(url, endpoint.base_url)

    def _server_of(self, ref: Reference, url: httpx.URL) -> str | None:
        """The server of ``url`` as ``_Asking`` holds it: None on the registry's endpoint,
        else its ``host[:port]`` (never its path or query: a signed URL's secrets)."""
        return None if self._is_registry(ref, url) else self.server_named(ref, url)

    def _refusal(self, response: httpx.Response, ref: Reference) -> str:
        """What a 401 or 403 from the registry tells the user to do, by what the request
        carried: no ``Authorization`` after a 401 means the registry's challenge was
        none this client answers (the credentials were never sent); a bearer token it
        calls ``invalid_token`` was issued by its own token service, whatever the
        credentials (their clocks or keys disagree). Else the credentials, or their
        absence, are what to look at."""
        authority = ref.api_host
        sent = response.request.headers.get("authorization", "")
        try:
            challenges = headers_challenges(response.headers)
        except ChallengeError:  # said elsewhere; the credentials are the question here
            challenges = [Challenge("malformed")]
        if response.status_code == 401 and not sent and choose_challenge(challenges) is None:
            schemes = sorted({c.scheme for c in challenges})
            shown = f"only {', '.join(schemes)} offered" if schemes else "no WWW-Authenticate"
            return (
                f"{authority} asks for authentication without a Basic or Bearer"
                f" challenge ({shown}), so no credentials were sent"
            )
        if sent.lower().startswith("bearer ") and any(
            c.scheme == "bearer" and c.get("error") == "invalid_token" for c in challenges
        ):
            return (
                f"{authority} refused the token its token service issued (invalid_token):"
                " the registry and its token service disagree (their clocks, or the key"
                " that signs tokens)"
            )
        if self._options.credentials is not None:
            return refusal_hint(self._options.credentials, authority)
        return (
            f"{authority} needs credentials for {ref.repository} (or it does not"
            " exist): pass -u USER --password-stdin"
        )

    async def _status_error(
        self,
        response: httpx.Response,
        ref: Reference,
        what: str,
        digest: str | None,
        *,
        from_registry: bool = True,
    ) -> RegistryError:
        status = response.status_code
        authority = ref.api_host
        # Which server said it: after a redirect, a storage server, named by its host
        # alone (its URL is signed: RELIABILITY.md, "secrets never in logs, errors").
        server = (
            authority
            if from_registry
            else f"the storage server {self.server_named(ref, response.url)} that {authority}"
            " redirected to"
        )
        # The body's words go through the same cut as _quotable's.
        detail = await error_detail(
            response, credentials=self._options.credentials, tokens=self._tokens.secrets()
        )
        suffix = f" ({detail})" if detail else ""
        ref_text = str(ref)
        if not from_registry and status in (401, 403):
            # The registry signs a fresh URL when asked again (RELIABILITY.md: "a CDN
            # redirect whose signed URL expired (403): ask the registry again").
            return RegistryError(
                f"{server} refused {what} (HTTP {status}); its signed URL may have expired:"
                " pull again",
                ref=ref_text,
                digest=digest,
                transient=True,
            )
        if status == 404:
            return NotFound(
                f"{what} not found in {ref.name} on {server}{suffix}: check the repository"
                " name, tag or digest",
                ref=ref_text,
                digest=digest,
            )
        if status in (401, 403):
            hint = self._refusal(response, ref)
            label = "unauthorized" if status == 401 else "access denied"
            return AuthError(
                f"{label}: {hint} (HTTP {status} for {what}){suffix}", ref=ref_text, digest=digest
            )
        retry_after = response.headers.get("Retry-After")
        if status == 429:
            wait = f", Retry-After: {self._quotable(retry_after)[:40]}" if retry_after else ""
            return TooManyRequests(
                f"{server} is rate-limiting requests (HTTP 429{wait}) for {what}; wait and"
                " try again",
                ref=ref_text,
                digest=digest,
                transient=True,
                retry_after_s=parse_retry_after(retry_after),
                retry_after_from=self.server_named(ref, response.url),
            )
        if status >= 500:
            return RegistryUnavailable(
                f"{server} failed with HTTP {status} for {what}{suffix}"
                f"{self._forwarded_by(response.url)}; try again later",
                ref=ref_text,
                digest=digest,
                transient=status in _TRANSIENT_5XX,
                retry_after_s=parse_retry_after(retry_after) if status == 503 else None,
                retry_after_from=self.server_named(ref, response.url),
            )
        if status == 408:
            return RegistryUnavailable(
                f"{server} timed out the request for {what} (HTTP 408){suffix}",
                ref=ref_text,
                digest=digest,
                transient=True,
            )
        return RegistryError(
            f"{server} answered HTTP {status} for {what}{suffix}", ref=ref_text, digest=digest
        )

    async def _url_status_error(
        self,
        response: httpx.Response,
        ref: Reference,
        target: httpx.URL,
        shown: str,
        digest: Digest,
    ) -> RegistryError:
        """The error for a status other than 2xx from a foreign layer's URL (or where it
        redirected): the registry's hints (check the repository, pass credentials) do not
        apply to a server that the manifest named and that gets no credentials."""
        status = response.status_code
        # The same cut as _quotable's: the server got no credentials, but the registry
        # that named it did, and may run it.
        detail = await error_detail(
            response, credentials=self._options.credentials, tokens=self._tokens.secrets()
        )
        server = shown
        if not _same_origin(response.url, target):
            server = f"{self.server_named(ref, response.url)}, where {shown} redirected,"
        message = f"{server} answered HTTP {status} for layer {digest}" + (
            f" ({detail})" if detail else ""
        )
        retry_after = response.headers.get("Retry-After")
        kind: type[RegistryError] = RegistryError
        transient = status == 408 or status in _TRANSIENT_5XX
        if status in (404, 410):
            kind = NotFound
        elif status in (401, 403):
            message += " (imagec-pipe sends no credentials to the URLs a layer names)"
        elif status == 429:
            kind, transient = TooManyRequests, True
        elif status >= 500:
            kind = RegistryUnavailable
        return kind(
            message,
            ref=str(ref),
            digest=str(digest),
            transient=transient,
            retry_after_s=parse_retry_after(retry_after) if status in (429, 503) else None,
            retry_after_from=self.server_named(ref, response.url),
        )


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


async def _close(response: httpx.Response) -> None:
    """Close a response even while being cancelled, so its pool slot is returned."""
    with trio.CancelScope(shield=True):
        await response.aclose()
