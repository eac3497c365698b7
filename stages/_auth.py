"""Registry authentication: challenges, tokens, and where credentials may go.

The protocol pieces are small synchronous functions (parse a ``WWW-Authenticate``
header, build the token request, read the token response, decide whether a destination
may receive credentials) so they can be tested without a network; ``fetch_token`` is the
one async step that ties them to an HTTP client. ``RegistryClient`` (``_registry.py``)
decides when to call them.

Credential destinations (RELIABILITY.md, "Auth"): the registry host itself, and the token
realm its challenge names; over https, or plain http only when that host is listed as
insecure or is a loopback address; never a link-local, loopback or private address unless
the registry itself is on one of the same kind (``refused_address_class``); never a
redirect target (redirects are never followed here).
A host name counts as private when it resolves to a private address (``resolves_internal``:
a public registry naming ``auth.corp`` that resolves to 169.254.169.254 is refused). An
IPv6 address that carries an IPv4 one (IPv4-mapped, 6to4, Teredo, NAT64) is classified by
the IPv4 address inside (``_classified``).

A name is looked up once per registry client (``PinnedResolver``, ``stages/_http.py``):
the checks classify its first answer, and the client's connections go to the addresses
of that same answer, never looked up again. A name whose DNS answer changes after the
check (DNS rebinding: a public address, then 169.254.169.254) still reaches only the
public one; the registry's own name, which the checks compare against, is pinned too.

Through a proxy (``RegistryOptions.proxy``) the proxy looks the target's name up and
connects: these checks still classify an address literal and a name that resolves here,
and refuse as above, but a name that does not resolve here (usual behind a proxy) has no
address to classify and passes, and the pinning does not hold (``stages/_http.py``).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import ipaddress
import json
import typing
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx
import trio

from ._config import Credentials, Limits
from ._errors import AuthError
from ._http import (
    ProxyRefused,
    Resolver,
    cookie_jar_used,
    describe_error,
    is_literal_host,
    resolve_host,
    stalled_for,
    transient_failure,
    url_authority,
)
from ._log import get_logger
from ._redact import (
    cut_secrets,
    cut_secrets_in_idna_labels,
    cut_tokens,
    recent_tokens,
    redact,
    remember_token,
)
from ._retry import parse_retry_after

__all__ = [
    "BodyTooLarge",
    "Challenge",
    "ChallengeError",
    "Token",
    "TokenCache",
    "basic_authorization",
    "check_credential_destination",
    "choose_challenge",
    "fetch_token",
    "headers_challenges",
    "host_of",
    "is_internal_host",
    "is_loopback_host",
    "insecure_network",
    "matches_insecure",
    "parse_challenges",
    "parse_realm",
    "parse_token_response",
    "pull_scope",
    "quotable",
    "read_bounded",
    "refusal_hint",
    "refused_address_class",
    "Resolver",
    "resolve_host",
    "host_addresses",
    "is_link_local_host",
    "resolves_internal",
    "sent_secrets",
    "token_url",
]

# The OAuth2 client a refresh-token request names (docker's names itself "docker").
OAUTH_CLIENT_ID = "imagec-pipe"

log = get_logger()

DEFAULT_TOKEN_LIFETIME_S = 60
# A token is renewed this long before the expiry it was issued with, so a request that
# starts just before expiry does not arrive just after.
EXPIRY_MARGIN_S = 5.0

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class ChallengeError(ValueError):
    """A ``WWW-Authenticate`` header that does not follow RFC 7235: what is wrong
    (``problem``) and the ``header`` as the server sent it. The message quotes both as
    ``quotable`` does without knowing the credentials or tokens sent; a registry client,
    which knows those, quotes them through its own cut (``quoting``)."""

    def __init__(self, problem: str, header: str) -> None:
        self.problem = problem
        self.header = header
        super().__init__(self.quoting(quotable))

    def quoting(self, quote: Callable[[str], str]) -> str:
        """The message, the server's words passed through ``quote``; the header cut short
        after, so that no part of a secret outlives the cut."""
        return f"{quote(self.problem)} in WWW-Authenticate: {quote(self.header)!r:.200}"

    def __reduce__(self) -> tuple[type[ChallengeError], tuple[str, str]]:
        return (type(self), (self.problem, self.header))


@dataclass(frozen=True)
class Challenge:
    """One auth challenge: ``scheme`` lowercased, parameter names lowercased."""

    scheme: str
    params: tuple[tuple[str, str], ...] = ()

    def get(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None


def parse_challenges(headers: Iterable[str]) -> list[Challenge]:
    """Every challenge in every ``WWW-Authenticate`` header, in order.

    RFC 7235: ``scheme [param=value|param="quoted, value", ...]``, several challenges
    in one header separated by commas, quoted strings with ``\\`` escapes. A token68
    (``Negotiate abc==``) is kept as the parameter ``""``.
    """
    out: list[Challenge] = []
    for header in headers:
        out.extend(_parse_header(header))
    return out


def _parse_header(text: str) -> list[Challenge]:
    pos = 0
    n = len(text)
    challenges: list[Challenge] = []

    def skip(chars: str) -> None:
        nonlocal pos
        while pos < n and text[pos] in chars:
            pos += 1

    def token() -> str:
        nonlocal pos
        start = pos
        while pos < n and text[pos] in _TCHAR:
            pos += 1
        return text[start:pos]

    def quoted() -> str:
        nonlocal pos
        assert text[pos] == '"'
        pos += 1
        out: list[str] = []
        while pos < n:
            c = text[pos]
            if c == "\\":
                if pos + 1 >= n:
                    break
                out.append(text[pos + 1])
                pos += 2
            elif c == '"':
                pos += 1
                return "".join(out)
            else:
                out.append(c)
                pos += 1
        raise ChallengeError("unterminated quoted string", text)

    while True:
        skip(" \t,")
        if pos >= n:
            return challenges
        scheme = token()
        if not scheme:
            raise ChallengeError(f"unexpected {text[pos]!r}", text)
        params: dict[str, str] = {}
        skip(" \t")
        while pos < n:
            start = pos
            skip(" \t,")
            name = token()
            skip(" \t")
            if not name or pos >= n or text[pos] != "=":
                pos = start  # the next challenge starts here
                break
            pos += 1
            # token68: "name=" or "name==" ending the challenge, with no value after it.
            eq_end = pos
            while eq_end < n and text[eq_end] == "=":
                eq_end += 1
            rest = text[eq_end:].lstrip(" \t")
            if not params and (not rest or rest.startswith(",")):
                params[""] = name + "=" * (eq_end - pos + 1)
                pos = eq_end
                break
            skip(" \t")
            if pos < n and text[pos] == '"':
                value = quoted()
            else:
                value = token()
                if not value:
                    raise ChallengeError(f"parameter {name!r:.60} has no value", text)
            params.setdefault(name.lower(), value)
            skip(" \t")
            if pos < n and text[pos] != ",":
                raise ChallengeError(f"unexpected {text[pos]!r} after parameter {name!r:.60}", text)
        if pos < n and text[pos] not in " \t,":
            raise ChallengeError(f"unexpected {text[pos]!r}", text)
        challenges.append(Challenge(scheme.lower(), tuple(params.items())))


def choose_challenge(challenges: Iterable[Challenge]) -> Challenge | None:
    """The challenge we answer: Bearer (with a realm) over Basic; others are ignored."""
    basic = None
    for challenge in challenges:
        if challenge.scheme == "bearer" and challenge.get("realm"):
            return challenge
        if challenge.scheme == "basic" and basic is None:
            basic = challenge
    return basic


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def basic_authorization(credentials: Credentials) -> str:
    return "Basic " + _basic_credentials(credentials)


def _basic_credentials(credentials: Credentials) -> str:
    """The credentials of ``Authorization: Basic …`` (RFC 7617): base64 of user:password."""
    raw = f"{credentials.username}:{credentials.password}".encode()
    return base64.b64encode(raw).decode("ascii")


def sent_secrets(credentials: Credentials) -> tuple[str, ...]:
    """What of ``credentials`` a server we sent them to may quote back, for ``cut_secret``
    to cut out of its words (``stages/_redact.py``): the password, and the Basic
    credentials made of it, with and without their ``=`` padding. ``redact`` knows those
    only after the word ``Basic``; a token service or a registry that says which
    credentials it could not decode quotes them bare. ``cut_secret`` finds each also
    percent-encoded (``p%40ss``), as a form body or a query spells it. The padded form
    comes first: cut after the unpadded one, its ``=`` would be left behind.

    An identity token (``Credentials.identity_token``) is a secret of its own, sent in a
    form body: a token service that refuses it may quote it back. Credentials that are
    only an identity token make no Basic credentials (none are sent)."""
    forms: tuple[str, ...] = (credentials.identity_token,)
    if credentials.password or not credentials.identity_token:
        basic = _basic_credentials(credentials)
        forms += (credentials.password, basic, basic.rstrip("="))
    return tuple(dict.fromkeys(form for form in forms if form))


def refusal_hint(credentials: Credentials | None, registry: str) -> str:
    """What an error that ``registry`` or its token service refused ``credentials`` tells
    the user to do; it names where they came from when they were not given with ``-u``
    (``Credentials.source``: a docker config file, a credential helper)."""
    if credentials is None:
        return f"{registry} needs credentials (-u USER --password-stdin)"
    if credentials.source:
        return (
            f"check the credentials from {credentials.source} for {registry}"
            " (log in again with docker, podman or skopeo login, or pass -u USER"
            " --password-stdin)"
        )
    return f"check the username/password for {registry}"


def host_of(authority: str) -> str:
    """``[::1]:5000`` → ``::1``; ``reg:5000`` → ``reg``; lowercased."""
    if authority.startswith("["):
        return authority[1:].partition("]")[0].lower()
    if authority.count(":") == 1:
        return authority.partition(":")[0].lower()
    return authority.lower()


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


# NAT64's well-known prefix (RFC 6052): 64:ff9b::a.b.c.d is a.b.c.d, through a translator.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_BITS = 0xFFFF_FFFF


def _classified(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses the checks below classify for ``host``: none for a name, else the
    address itself or, for an IPv6 address that carries an IPv4 one, that IPv4 address.

    A connection to ``::ffff:169.254.169.254`` (IPv4-mapped), ``2002:a9fe:a9fe::`` (6to4),
    ``64:ff9b::a9fe:a9fe`` (NAT64) or ``::169.254.169.254`` (IPv4-compatible) may reach
    the IPv4 address inside, but ``ipaddress`` classifies the IPv6 wrapper: on Python 3.11
    none of them is ``is_link_local``. A Teredo address carries two (its server and its
    client): both are classified, with the Teredo address itself, and one in a class
    puts the host in it.
    """
    address = _ip(host)
    if address is None:
        return []
    if isinstance(address, ipaddress.IPv4Address):
        return [address]
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        # The wrapper too: 2001::/32 is itself special-purpose (``is_private``), as it
        # was classified before the addresses inside were.
        return [address, *address.teredo]
    if address in _NAT64 or (1 < int(address) <= _IPV4_BITS):  # NAT64, IPv4-compatible
        return [ipaddress.IPv4Address(int(address) & _IPV4_BITS)]
    return [address]


def is_loopback_host(host: str) -> bool:
    """``localhost`` or an address in 127.0.0.0/8 or ``::1`` (host without port), also
    IPv4-mapped (``::ffff:127.0.0.1``, which the local stack delivers to 127.0.0.1).

    Not through 6to4, Teredo or NAT64: those go out to a relay or a translator, so they
    earn none of what loopback is allowed (plain http, credentials over it); where they
    lead is classified by ``_is_this_machine`` and ``is_internal_host`` instead.
    """
    if host.lower() in ("localhost", "localhost."):
        return True
    address = _ip(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address is not None and address.is_loopback


def is_internal_host(host: str) -> bool:
    """Loopback, private, link-local or otherwise non-public address literals, also
    inside an IPv6 address that carries an IPv4 one (``_classified``).

    Host names are not resolved: a name is taken as public.
    """
    if is_loopback_host(host):
        return True
    return any(
        address.is_private
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
        or address.is_multicast
        for address in _classified(host)
    )


def is_link_local_host(host: str) -> bool:
    """An address literal in 169.254.0.0/16 or fe80::/10, also inside an IPv6 address
    that carries an IPv4 one (``_classified``): where cloud metadata services answer. A
    registry elsewhere, even on loopback or a private network, has no business sending a
    client there."""
    return any(address.is_link_local for address in _classified(host))


def _is_this_machine(host: str) -> bool:
    """Loopback or the unspecified address (``0.0.0.0``, ``::``, through which a
    connection reaches this machine too), also inside an IPv6 address that carries an
    IPv4 one (``_classified``)."""
    return is_loopback_host(host) or any(
        address.is_loopback or address.is_unspecified for address in _classified(host)
    )


# The classes of address a host the registry names (a token realm, a layer's URL) may be
# in only when the registry is in the same one, most particular first: the metadata
# services' range, this machine (its docker daemon, its other services), the private
# networks (which include the two before).
_ADDRESS_CLASSES = (
    ("link-local", is_link_local_host),
    ("loopback", _is_this_machine),
    ("private", is_internal_host),
)


def refused_address_class(target: Sequence[str], registry: Sequence[str]) -> str | None:
    """The class of address (``"link-local"``, ``"loopback"``, ``"private"``) one of
    ``target``'s addresses is in and none of ``registry``'s is, or None when the registry
    may send us to ``target``.

    The registry's word takes us no further than where it stands: a public registry to
    no internal host; a registry on a private network (a company mirror) to that network
    but not to this machine's loopback services nor to the metadata address; a registry
    on loopback (a local mirror, the test kit) to this machine too, but not to the
    metadata address. Both are address lists as ``host_addresses`` gives them.
    """
    for kind, within in _ADDRESS_CLASSES:
        if any(map(within, target)) and not any(map(within, registry)):
            return kind
    return None


async def host_addresses(host: str, resolve: Resolver) -> list[str]:
    """``host`` itself when it is an address literal or ``localhost`` (``is_literal_host``),
    else the addresses it resolves to (none when it does not): what the address checks
    look at. The registry client's ``resolve`` is the ``PinnedResolver`` its connections
    use, so that these are the addresses a request to ``host`` can reach."""
    if is_literal_host(host):
        return [host]
    return list(await resolve(host))


async def resolves_internal(host: str, resolve: Resolver) -> bool:
    """Whether ``host`` is an internal address literal (``is_internal_host``) or a name
    that resolves to at least one internal address."""
    return any(is_internal_host(address) for address in await host_addresses(host, resolve))


def insecure_network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The addresses an ``--insecure-registry`` entry in CIDR notation names
    (``10.0.0.0/8``, as docker's flag takes one); None for a ``host[:port]`` entry."""
    if "/" not in entry:
        return None
    try:
        return ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        return None


def matches_insecure(authority: str, insecure: Iterable[str]) -> bool:
    """Whether ``host[:port]`` is listed: an entry without a port matches every port, and
    one in CIDR notation every address in it. Only a host given as an address is in a
    network: a name is not looked up for this (docker's daemon does), so a registry
    called by name is listed by name."""
    authority = authority.lower()
    host = host_of(authority)
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in insecure:
        entry = entry.strip().lower()
        if entry == authority:
            return True
        if (network := insecure_network(entry)) is not None:
            if address is not None and address.version == network.version and address in network:
                return True
            continue
        has_port = "]:" in entry if entry.startswith("[") else entry.count(":") == 1
        if not has_port and host_of(entry) == host:
            return True
    return False


def check_credential_destination(
    url: httpx.URL, *, registry: str, insecure: Iterable[str]
) -> str | None:
    """Why ``url`` may not receive credentials for ``registry`` (``host[:port]``), or None.

    ``url`` is the registry's own endpoint or the token realm its challenge named.
    """
    host = url.host
    authority = f"[{host}]" if ":" in host else host
    if url.port is not None:
        authority += f":{url.port}"
    if url.scheme == "http":
        if not (is_loopback_host(host) or matches_insecure(authority, insecure)):
            return (
                f"it is plain http; credentials go over http only to loopback hosts or hosts"
                f" listed with --insecure-registry ({authority})"
            )
    elif url.scheme != "https":
        return f"its scheme {url.scheme!r} is not https"
    kind = refused_address_class([host], [host_of(registry)])
    if kind is not None:
        return f"{host} is a {kind} address and the registry {registry} is not on one"
    return None


def token_url(
    realm: str, service: str | None, scope: str, *, quote: Callable[[str], str]
) -> httpx.URL:
    """``realm?service=…&scope=…``, keeping any query the realm already has: what a
    token GET asks (``parse_realm`` checks the realm)."""
    return _with_token_params(parse_realm(realm, quote=quote), service, scope)


def _with_token_params(realm: httpx.URL, service: str | None, scope: str) -> httpx.URL:
    params: dict[str, str] = {}
    if service:
        params["service"] = service
    params["scope"] = scope
    return realm.copy_merge_params(params)


def parse_realm(realm: str, *, quote: Callable[[str], str]) -> httpx.URL:
    """The token realm a challenge named, as a URL that may be asked for a token.

    A realm that cannot be used is named in the error through ``quote``: the caller's
    cut of a server's text, which knows the credentials it sends and the tokens it
    holds (``RegistryClient._quotable``, ``quotable`` with them). The realm is the
    registry's text, and may carry what it was sent: ``ftp://evil.example/<password>``
    kept its path, the password in it, through ``quotable`` without the credentials.
    Shortened after the cut, so that no part of a secret outlives it."""
    try:
        url = httpx.URL(realm)
        host = url.host  # an "xn--" label that is no IDNA name raises here, not above
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise AuthError(f"the registry named an invalid token realm {quote(realm)!r:.200}") from exc
    if url.scheme not in ("http", "https") or not host:
        raise AuthError(f"the registry named an unusable token realm {quote(realm)!r:.200}")
    if url.userinfo:
        # httpx would send them as Basic auth in place of the user's own credentials:
        # the pull would run as whoever the registry chose. Not echoed: they are secret.
        raise AuthError(
            f"the registry named a token realm on {quote(url.host)} with a user name and"
            " password in its URL; refused"
        )
    return url


@dataclass(frozen=True)
class Token:
    """A bearer token and how long it lives (seconds from when it was fetched).

    ``others``: the other secrets the token service's answer carried (a refresh token, a
    ``token`` other than the ``access_token`` used), cut out of errors and logs as the
    token is (``secrets``) though never sent."""

    value: str = field(repr=False)
    expires_in: float = DEFAULT_TOKEN_LIFETIME_S
    others: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.value, *self.others)


def parse_token_response(body: bytes, *, realm_host: str) -> Token:
    """Read a token service's JSON answer: ``token`` or ``access_token``, ``expires_in``."""
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise AuthError(f"the token service at {realm_host} did not answer with JSON") from exc
    if not isinstance(doc, dict):
        raise AuthError(f"the token service at {realm_host} answered JSON that is not an object")
    value = doc.get("access_token") or doc.get("token")
    if not isinstance(value, str) or not value:
        raise AuthError(f"the token service at {realm_host} answered without a token")
    if any(c in value for c in "\r\n\0") or not value.isascii():
        raise AuthError(f"the token service at {realm_host} answered a malformed token")
    others = tuple(
        dict.fromkeys(
            other
            for other in (doc.get("token"), doc.get("refresh_token"))
            if isinstance(other, str) and other and other != value
        )
    )
    expires_in = doc.get("expires_in")
    lifetime: float = DEFAULT_TOKEN_LIFETIME_S
    if (
        isinstance(expires_in, int | float)
        and not isinstance(expires_in, bool)
        and 0 < expires_in < 10**9
    ):
        lifetime = float(expires_in)
    return Token(value, lifetime, others)


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


class TokenCache:
    """Tokens per (realm, service, scope), each until shortly before it expires.

    Times come from ``trio.current_time()`` so tests can drive them with ``MockClock``.
    """

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, str], tuple[Token, float]] = {}

    def get(self, key: tuple[str, str, str]) -> Token | None:
        """The token for ``key`` while it lives, else None. An expired one is kept (and
        in ``secrets``) until ``put`` replaces it: the request that renews it may meet a
        server quoting it back, a realm named after it among them."""
        entry = self._tokens.get(key)
        if entry is None:
            return None
        token, expires_at = entry
        if trio.current_time() >= expires_at:
            return None
        return token

    def put(self, key: tuple[str, str, str], token: Token) -> None:
        margin = min(EXPIRY_MARGIN_S, token.expires_in / 2)
        self._tokens[key] = (token, trio.current_time() + token.expires_in - margin)

    def discard(self, key: tuple[str, str, str]) -> None:
        self._tokens.pop(key, None)

    def secrets(self) -> list[str]:
        """The secrets of every token held, expired ones not yet dropped included: what a
        server we sent one to may quote back (``error_detail``'s ``tokens``)."""
        return [secret for token, _ in self._tokens.values() for secret in token.secrets]


# Token service answers another request may cure (as the registry's, stages/_registry.py).
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


async def fetch_token(
    client: httpx.AsyncClient,
    realm: httpx.URL,
    *,
    service: str,
    scope: str,
    credentials: Credentials | None,
    limits: Limits,
    registry: str,
    tokens: Sequence[str] = (),
) -> Token:
    """GET a token for ``scope`` from ``realm`` (``parse_realm``'s; ``service`` and
    ``scope`` added to its query, with Basic credentials when given) and read it; with
    an identity token, POST it instead (OAuth2's refresh-token grant, RFC 6749 section
    6, as docker's client does: ``grant_type=refresh_token``, the token, ``service``,
    ``scope`` and ``client_id`` as a form), and read ``access_token`` from the answer.

    The POST goes to the realm as the challenge named it, its own query kept and
    nothing added: distribution's ``fetchTokenWithOAuth`` posts the form to the bare
    realm, and OAuth2 (RFC 6749 section 3.2) forbids a parameter sent twice, which the
    GET's ``service`` and ``scope`` left in the URL would be, beside the form's.

    The caller checked that ``realm`` may receive the credentials. Redirects are not
    followed. Errors name the realm host, never the credentials: the host through
    ``quotable`` with them, for the registry chose it and may have put them in it.
    ``tokens`` are the bearer tokens the caller holds (a registry client's
    ``TokenCache``), cut there too, and out of the service's words: the registry was
    sent them and may name its realm after one (``https://<token>.evil.example/``), and
    ``recent_tokens`` keeps only the process's last few.

    No cookie goes either way (``cookie_jar_used(False)``): the client's jar is the
    registry's, and the token service is whatever host the registry's challenge named.
    A cookie it set was stored in that jar and, cookies ignoring the port, sent to the
    registry when the two share a host (``reg.example:5001/token`` planting a session on
    ``reg.example:5000``); the registry's session cookie went the other way. A token
    request is one GET with its own credentials, which needs no session: docker's
    client (distribution's ``registry/client/auth``) asks with an ``http.Client``
    without a jar, which neither keeps nor sends any.
    """
    # The realm's host (and port: the registry may be on the same host) is the
    # registry's text too: named through the cut of its words.
    realm_host = quotable(url_authority(realm), credentials=credentials, tokens=tokens)
    headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
    refresh_token = credentials.identity_token if credentials is not None else ""
    if credentials is None:
        who = "anonymously"
    elif refresh_token:
        who = "for an identity token"
    else:
        headers["Authorization"] = basic_authorization(credentials)
        who = f"as {credentials.username!r}"
    try:
        if refresh_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "service": service,
                "scope": scope,
                "client_id": OAUTH_CLIENT_ID,
            }
            request = client.build_request("POST", realm, headers=headers, data=form)
        else:
            url = _with_token_params(realm, service, scope)
            request = client.build_request("GET", url, headers=headers)
        # build_request copies the whole jar into the request's Cookie header, whatever
        # the jar's policy says; the send below stores none of the answer's Set-Cookie.
        request.headers.pop("Cookie", None)
        with cookie_jar_used(False):
            response = await client.send(request, stream=True)
        try:
            status = response.status_code
            # A refresh token the service no longer takes is OAuth2's invalid_grant, a 400.
            if status in (401, 403) or (status == 400 and refresh_token):
                hint = refusal_hint(credentials, registry)
                detail = await error_detail(response, credentials=credentials, tokens=tokens)
                said = f": {detail}" if detail else ""
                raise AuthError(
                    f"the token service at {realm_host} refused a token {who}"
                    f" (HTTP {status}{said}): {hint}"
                )
            # The retry loop (stages/_retry.py) tries these again, as it does the
            # registry's own: a token service blip must not fail a pull (nor a layer
            # whose token expired mid-download) that one more request would finish.
            retry_after = response.headers.get("Retry-After")
            if status >= 500:
                raise AuthError(
                    f"the token service at {realm_host} failed (HTTP {status}); try again later",
                    transient=status in _TRANSIENT_STATUSES,
                    retry_after_s=parse_retry_after(retry_after) if status == 503 else None,
                    retry_after_from=f"the token service at {realm_host}",
                )
            if status != 200:
                raise AuthError(
                    f"the token service at {realm_host} answered HTTP {status} instead of a token",
                    transient=status in _TRANSIENT_STATUSES,
                    retry_after_s=parse_retry_after(retry_after) if status == 429 else None,
                    retry_after_from=f"the token service at {realm_host}",
                )
            body = await read_bounded(response, limits.max_token_bytes, what="token response")
        finally:
            with trio.CancelScope(shield=True):  # its pool slot back, cancelled or not
                await response.aclose()
    except httpx.HTTPError as exc:
        stalled_s = stalled_for(exc, limits)
        # The network's words may name the realm's host too (a certificate not valid for it).
        reason = (
            quotable(describe_error(exc), credentials=credentials, tokens=tokens)
            if stalled_s is None
            else f"no data for {stalled_s:g} s"
        )
        refused = exc if isinstance(exc, ProxyRefused) else None  # its 503's Retry-After
        raise AuthError(
            f"cannot get a token from {realm_host}: {reason}",
            transient=transient_failure(exc),
            stalled_s=stalled_s,
            retry_after_s=None if refused is None else refused.retry_after_s,
            retry_after_from=None if refused is None else refused.retry_after_from,
        ) from exc
    except BodyTooLarge as exc:
        raise AuthError(
            f"the token service at {realm_host} sent more than {limits.max_token_bytes} bytes;"
            " refused"
        ) from exc
    except UnicodeError as exc:  # httpx reading a Location whose host is no IDNA name
        raise AuthError(f"the token service at {realm_host} redirected to an invalid URL") from exc
    token = parse_token_response(body, realm_host=realm_host)
    for secret in token.secrets:  # out of errors and log lines, if a server quotes it
        remember_token(secret)
    log.debug("token fetched", realm=realm_host, registry=registry, expires_in=token.expires_in)
    return token


class BodyTooLarge(Exception):
    """A body over its cap; callers turn it into their own error naming what it was."""


async def read_bounded(response: httpx.Response, max_bytes: int, *, what: str) -> bytes:
    """Read at most ``max_bytes`` of a streamed body, raw; ``BodyTooLarge`` past that.

    A ``Content-Length`` over the cap is refused before reading; otherwise no more than
    ``max_bytes`` plus one chunk is ever held. The bytes are never content-decoded: we
    ask for ``identity``, and the raw bytes are what digests are computed over.
    """
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(what)
    try:
        content = response.content  # already read (a response built in memory)
    except httpx.ResponseNotRead:
        pass
    else:
        if len(content) > max_bytes:
            raise BodyTooLarge(what)
        return content
    chunks: list[bytes] = []
    total = 0
    # aiter_raw is an async generator: close it even when we stop early.
    raw = typing.cast(AsyncGenerator[bytes, None], response.aiter_raw())
    async with contextlib.aclosing(raw) as parts:
        async for chunk in parts:
            total += len(chunk)
            if total > max_bytes:
                raise BodyTooLarge(what)
            chunks.append(chunk)
    return b"".join(chunks)


# Error bodies are read only this far, for what the server says went wrong.
_ERROR_BODY_BYTES = 16 * 1024
# What of a server's explanation an error message quotes, per part.
_ERROR_PART_CHARS = 200


async def error_detail(
    response: httpx.Response,
    *,
    credentials: Credentials | None = None,
    tokens: Iterable[str] = (),
) -> str:
    """What a registry or token service says went wrong, redacted and shortened; "" when
    its body says nothing we can read.

    The shapes servers use: the distribution spec's ``{"errors": [{"code", "message"}]}``
    (registries, and the token servers built on distribution's), Docker Hub's token
    service's ``{"details": …}``, OAuth 2's ``{"error", "error_description"}`` (RFC 6749
    section 5.2) and a bare ``{"message": …}``. Without it a refused login said only
    "refused", where the service had said why ("incorrect username or password").

    The words go into errors and retry warnings, so they pass ``redact`` first (a storage
    server behind a redirect echoes the signed URL it was asked for, a registry the token
    it refused), and the ``credentials`` just sent are cut out where the service quotes
    them (``sent_secrets``: the password, as it is or percent-encoded, and the base64 of
    the Basic credentials; ``cut_secret``: a short one only where it stands alone, not
    out of words), and so are the bearer ``tokens`` sent, and those this process was
    issued last (``recent_tokens``): a registry may name the token it refused, and many
    tokens are opaque, which ``redact`` finds only after the word ``Bearer``.
    Redacted before being cut short, so that a secret cut short still has the shape that
    gives it away, and after what is not printable is dropped, so that a control
    character cannot hide a secret's name from it.
    """
    try:
        body = await read_bounded(response, _ERROR_BODY_BYTES, what="error body")
        doc = json.loads(body.decode("utf-8"))
    except (httpx.HTTPError, httpx.StreamError, BodyTooLarge, ValueError, RecursionError):
        return ""
    if not isinstance(doc, dict):
        return ""
    said: list[list[object]] = []
    if isinstance(doc.get("errors"), list):
        said += [
            [error.get("code"), error.get("message")]
            for error in doc["errors"][:3]
            if isinstance(error, dict)
        ]
    said += [[doc.get("error"), doc.get("error_description")], [doc.get("details")]]
    said.append([doc.get("message")])
    tokens = tuple(tokens)
    parts = []
    for words in said:
        texts = [
            quotable(x, credentials=credentials, tokens=tokens) for x in words if isinstance(x, str)
        ]
        text = ": ".join(x for x in texts if x)
        if text and text not in parts:
            parts.append(text[:_ERROR_PART_CHARS])
    return "; ".join(parts)


def quotable(
    text: str, *, credentials: Credentials | None = None, tokens: Iterable[str] = ()
) -> str:
    """A server's ``text`` (words of an error body, a header's value) as an error message
    may quote it: what is not printable dropped (a line break would forge a log line, a
    control character could hide a secret's name from ``redact``), the ``credentials``
    sent cut out where the server quotes them (``sent_secrets``, each as ``cut_secret``
    cuts it), the bearer ``tokens`` sent and those this process was issued last
    (``recent_tokens``) too, then ``redact``. Not shortened: a caller cuts the result to
    its length, after, so that a secret cut short still has the shape that gives it away.
    Every place that quotes a server's text goes through here, the registry client's
    with its own credentials and tokens (``RegistryClient._quotable``).

    The credentials are cut as a host spells them too (``_as_hosts_spell_them``): a
    server's URL (a token realm) is quoted by its host, which parsing lower-cases, so
    ``https://Hunter2.evil.example`` is named ``hunter2.evil.example``, where the password
    as typed is not found; and a password with letters outside ASCII is spelt in a
    host's ASCII form (``xn--…``) where the resolver or TLS names what it was asked for,
    or where the registry wrote a URL so, and in that form decoded again, as a URL's
    host names it (IDNA 2003 folds a final sigma, both map "ﬁ" to "fi"); and an
    ``xn--`` label that decodes to text holding it (``x-<password>``, encoded whole) is
    cut whole (``cut_secrets_in_idna_labels``). The tokens are cut in any case by
    ``cut_tokens`` itself, wherever it runs."""
    secrets = _as_hosts_spell_them(sent_secrets(credentials)) if credentials is not None else ()
    issued = dict.fromkeys((*tokens, *recent_tokens()))
    text = cut_secrets(_printable(text), secrets)
    if credentials is not None and not credentials.password.isascii():
        text = cut_secrets_in_idna_labels(text, secrets)
    return redact(cut_tokens(text, issued))


def _as_hosts_spell_them(secrets: Sequence[str]) -> tuple[str, ...]:
    """``secrets``, then each in lower case where that differs, then the IDNA forms of
    those outside ASCII (``_idna_forms``), in their order (a padded form still before the
    unpadded one: ``sent_secrets``)."""
    lower = (secret.lower() for secret in secrets)
    encoded = (form for secret in secrets if not secret.isascii() for form in _idna_forms(secret))
    return tuple(dict.fromkeys((*secrets, *lower, *encoded)))


# As many as the passwords of the pulls running; the registry client's cut runs for every
# server it names (each redirect, each blob's sender), and both encodings cost 150 us.
@functools.lru_cache(maxsize=16)
def _idna_forms(secret: str) -> tuple[str, ...]:
    """``secret`` as a host name's ASCII form spells it, each label ``xn--`` and its
    punycode: IDNA 2008 as httpx encodes a host for the connection, the resolver and
    TLS (``URL.raw_host``), and IDNA 2003 as Python's codec does (it maps "ß" to "ss",
    which 2008 keeps). No form from an encoder that refuses ``secret`` (a label empty or
    over 63 characters, a character no host name has): no host is spelt so.

    Then each of those decoded back (``_decoded_host``), as httpx's ``URL.host`` names a
    host written in ASCII: IDNA maps what it encodes (2003 folds a final sigma, both map "ﬁ" to
    "fi", "Ⅻ" to "xii", a decomposed "ä" to the composed one), so a registry that writes
    the password's ``xn--`` form has it named in a Unicode spelling that is neither the
    password nor its lower case."""
    forms = []
    with contextlib.suppress(httpx.InvalidURL, UnicodeError, ValueError):
        forms.append(httpx.URL(scheme="https", host=secret).raw_host.decode("ascii"))
    with contextlib.suppress(UnicodeError):
        forms.append(secret.encode("idna").decode("ascii"))
    decoded = [_decoded_host(form) for form in forms]
    spellings = dict.fromkeys([*forms, *(form for form in decoded if form is not None)])
    return tuple(form for form in spellings if form not in (secret, secret.lower()))


def _decoded_host(host: str) -> str | None:
    """``host``'s Unicode spelling: each ``xn--`` label's punycode decoded, as any IDNA
    decoder gives it (the checks a decoder adds refuse, they do not respell); None
    when a label is no punycode."""
    labels = []
    for label in host.split("."):
        if label[:4].lower() != "xn--":
            labels.append(label)
            continue
        try:
            labels.append(label[4:].encode("ascii").decode("punycode"))
        except UnicodeError:
            return None
    return ".".join(labels)


def _printable(text: str) -> str:
    return "".join(c for c in text if c.isprintable())


def headers_challenges(headers: Mapping[str, str] | httpx.Headers) -> list[Challenge]:
    """The challenges of a response's headers (helper for callers holding ``httpx.Headers``)."""
    if isinstance(headers, httpx.Headers):
        return parse_challenges(headers.get_list("www-authenticate"))
    value = headers.get("www-authenticate")
    return parse_challenges([value] if value else [])
