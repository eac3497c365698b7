"""stages/_registry.py against httpx.MockTransport: the protocol edge cases.

The real-registry round trips (plain, basic, token) are at the end of the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import trio
import trio.lowlevel
import trustme
from structlog.testing import capture_logs

from stages._auth import basic_authorization
from stages._blob import blob_stream
from stages._config import Credentials, Limits, RegistryOptions
from stages._errors import (
    AuthError,
    ManifestError,
    NotFound,
    PlatformNotFound,
    RegistryError,
    RegistryUnavailable,
    SizeMismatch,
    TooManyRequests,
)
from stages._http import shared_ssl_context
from stages._manifest import resolve_image
from stages._redact import RECENT_TOKENS_KEPT, remember_token
from stages._reference import Reference, parse_reference
from stages._registry import RegistryClient
from stages._retry import retry_wait
from stages._types import Descriptor, Digest, MediaType, Platform
from tests.support.images import sample_image, sample_index
from tests.support.network import DNS, Network
from tests.support.servers import FixtureServer, RecordedRequest, Reply, run_fixture_server

pytestmark = pytest.mark.filterwarnings(r"ignore:Async generator 'http(core|x)\._:ResourceWarning")

SECRET = "hunter2-secret"
CREDS = Credentials("bob", SECRET)
BLOB = b"layer bytes " * 1000
BLOB_DIGEST = Digest(hashlib.sha256(BLOB).hexdigest())
MANIFEST = b'{"schemaVersion": 2}'

Handler = Callable[[httpx.Request], httpx.Response]


class FakeRegistry:
    """A scripted registry: records every request; ``routes`` maps (scheme, host, path)
    prefixes to handlers; a token service at https://auth.example/token."""

    def __init__(
        self,
        *,
        host: str = "reg.example",
        challenge: str | None = None,
        token_ok: Callable[[str], bool] = lambda token: True,
    ) -> None:
        self.host = host
        self.challenge = challenge
        self.token_ok = token_ok
        self.requests: list[httpx.Request] = []
        self.tokens_issued = 0
        self.routes: dict[str, Handler] = {}
        self.closed = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        url = request.url
        key = f"{url.scheme}://{url.netloc.decode()}{url.path}"
        for prefix, handler in self.routes.items():
            if key.startswith(prefix):
                return handler(request)
        if url.host == "auth.example" and url.path == "/token":
            self.tokens_issued += 1
            return httpx.Response(200, json={"token": f"tok{self.tokens_issued}"})
        if url.path == "/v2/":
            if self.challenge:
                return httpx.Response(401, headers={"WWW-Authenticate": self.challenge})
            return httpx.Response(200)
        if not self._authorised(request):
            return httpx.Response(
                401,
                headers={"WWW-Authenticate": self.challenge or ""},
                json={"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
            )
        if url.path.endswith("/manifests/latest"):
            return httpx.Response(
                200, content=MANIFEST, headers={"Content-Type": "application/json"}
            )
        if url.path.endswith(f"/blobs/{BLOB_DIGEST}"):
            return self._blob(request)
        return httpx.Response(
            404, json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
        )

    def _authorised(self, request: httpx.Request) -> bool:
        if not self.challenge:
            return True
        header = request.headers.get("Authorization", "")
        if self.challenge.startswith("Basic"):
            return header == basic_authorization(CREDS)
        return header.startswith("Bearer ") and self.token_ok(header[7:])

    def _blob(self, request: httpx.Request) -> httpx.Response:
        byte_range = request.headers.get("Range")
        if byte_range:
            start = int(byte_range.removeprefix("bytes=").rstrip("-"))
            return streamed(
                206,
                BLOB[start:],
                headers={"Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"},
            )
        return streamed(200, BLOB)

    def paths(self, host: str | None = None) -> list[str]:
        return [
            f"{r.url.scheme}://{r.url.netloc.decode()}{r.url.path}"
            for r in self.requests
            if host is None or r.url.host == host
        ]


def _resolver(table: dict[str, list[str]]) -> Callable[[str], Any]:
    """Name lookups from ``table`` (unknown names do not resolve): no DNS in these tests."""

    async def resolve(host: str) -> list[str]:
        await trio.lowlevel.checkpoint()
        return table.get(host, [])

    return resolve


def _client(fake: FakeRegistry, **options: Any) -> Any:
    limits = options.pop("limits", Limits())
    names = options.pop("names", {})
    return RegistryClient.open(
        RegistryOptions(**options),
        limits,
        transport=httpx.MockTransport(fake),
        resolve=_resolver(names),
    )


REF = parse_reference("reg.example/team/app")
AMD64 = Platform("linux", "amd64")
BEARER = 'Bearer realm="https://auth.example/token",service="reg.example"'


async def test_anonymous_manifest_and_headers() -> None:
    fake = FakeRegistry()
    with trio.fail_after(5):
        async with _client(fake) as client:
            body, headers = await client.get_bytes(
                REF, "manifests", "latest", accept="application/x-test", max_bytes=1000
            )
            await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=1000)
    assert body == MANIFEST
    assert headers["Content-Type"] == "application/json"
    assert fake.paths() == [
        "https://reg.example/v2/",
        "https://reg.example/v2/team/app/manifests/latest",
        "https://reg.example/v2/team/app/manifests/latest",
    ]  # the endpoint is discovered once per host
    request = fake.requests[1]
    assert request.headers["Accept"] == "application/x-test"
    assert request.headers["Accept-Encoding"] == "identity"
    assert "Authorization" not in request.headers


async def test_bearer_token_fetched_once_and_cached() -> None:
    fake = FakeRegistry(challenge=BEARER)
    with trio.fail_after(5):
        async with _client(fake) as client:
            for _ in range(3):
                await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=1000)
    assert fake.tokens_issued == 1
    token_request = next(r for r in fake.requests if r.url.host == "auth.example")
    assert token_request.url.params["scope"] == "repository:team/app:pull"
    assert token_request.url.params["service"] == "reg.example"
    assert "Authorization" not in token_request.headers  # anonymous
    manifest_requests = [r for r in fake.requests if "manifests" in r.url.path]
    assert all(r.headers["Authorization"] == "Bearer tok1" for r in manifest_requests)


async def test_bearer_with_credentials_sends_basic_to_realm_only() -> None:
    fake = FakeRegistry(challenge=BEARER)
    with trio.fail_after(5):
        async with _client(fake, credentials=CREDS) as client:
            await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=1000)
    token_request = next(r for r in fake.requests if r.url.host == "auth.example")
    assert token_request.headers["Authorization"] == basic_authorization(CREDS)
    for request in fake.requests:
        if request.url.host == "reg.example":
            assert request.headers.get("Authorization", "").startswith("Bearer") or (
                request.url.path == "/v2/" and "Authorization" not in request.headers
            )


async def test_401_mid_pull_renews_token_once() -> None:
    # tok1 is "expired" by the registry; tok2 works.
    fake = FakeRegistry(challenge=BEARER, token_ok=lambda token: token != "tok1")
    with trio.fail_after(5):
        async with _client(fake) as client:
            body, _ = await client.get_bytes(
                REF, "manifests", "latest", accept=None, max_bytes=1000
            )
            await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=1000)
    assert body == MANIFEST
    assert fake.tokens_issued == 2
    manifest_auth = [r.headers["Authorization"] for r in fake.requests if "manifests" in r.url.path]
    assert manifest_auth == ["Bearer tok1", "Bearer tok2", "Bearer tok2"]


async def test_401_after_renewal_is_auth_error_without_loop() -> None:
    fake = FakeRegistry(challenge=BEARER, token_ok=lambda token: False)
    with trio.fail_after(5):
        async with _client(fake, credentials=CREDS) as client:
            with pytest.raises(AuthError) as info:
                await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=1000)
    assert fake.tokens_issued == 2
    assert len([r for r in fake.requests if "manifests" in r.url.path]) == 2
    message = str(info.value)
    assert "unauthorized: check the username/password for reg.example" in message
    assert SECRET not in message
    assert "tok" not in message


async def test_a_registry_naming_the_token_it_refused_gets_it_cut() -> None:
    # An opaque token quoted bare (not after "Bearer", not a JWT) reached the error whole.
    # The client's own tokens are cut even when other pulls have since been issued more
    # tokens than the process remembers.
    fake = FakeRegistry(challenge=BEARER)

    def opaque_token(request: httpx.Request) -> httpx.Response:
        fake.tokens_issued += 1
        return httpx.Response(200, json={"token": f"opaque{fake.tokens_issued}-Xk2f9QmA"})

    def refused(request: httpx.Request) -> httpx.Response:
        for n in range(RECENT_TOKENS_KEPT):  # other pulls' tokens, fetched meanwhile
            remember_token(f"elsewhere-{n}-Qm7p3v")
        sent = request.headers["Authorization"].removeprefix("Bearer ")
        said = {"errors": [{"code": "UNAUTHORIZED", "message": f"token {sent} was revoked"}]}
        return httpx.Response(401, headers={"WWW-Authenticate": BEARER}, json=said)

    fake.routes["https://auth.example/token"] = opaque_token
    fake.routes["https://reg.example/v2/team/"] = refused
    with trio.fail_after(5):
        async with _client(fake) as client:
            with pytest.raises(AuthError) as info:
                await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=1000)
    assert fake.tokens_issued == 2
    message = str(info.value)
    assert "(UNAUTHORIZED: token [redacted] was revoked)" in message
    assert "Xk2f9QmA" not in message


async def test_a_realm_named_after_a_token_the_client_holds_is_named_without_it() -> None:
    # fetch_token named the realm's host, and quoted the token service's words, through
    # the cut of the credentials and the last RECENT_TOKENS_KEPT tokens of the process:
    # a token this client holds, pushed out of those by other pulls' tokens, came back
    # whole (lower-cased) when the registry named its next realm after it.
    held = "Opaque-Tok3n-Rw8q2Z"
    host = f"{held.lower()}.evil.example"
    fake = FakeRegistry(challenge=BEARER)

    def issue(request: httpx.Request) -> httpx.Response:
        fake.tokens_issued += 1
        token = held if fake.tokens_issued == 1 else f"another{fake.tokens_issued}-Pc3v7N"
        return httpx.Response(200, json={"token": token})

    fake.routes["https://auth.example/token"] = issue
    fake.routes["https://reg.example/v2/team/other/"] = lambda r: httpx.Response(
        401, headers={"WWW-Authenticate": f'Bearer realm="https://{host}/token",service="x"'}
    )
    fake.routes[f"https://{host}/token"] = lambda r: httpx.Response(
        401, json={"details": f"{held} is not a token of this service"}
    )
    names = {"reg.example": ["93.184.216.34"], host: ["93.184.216.35"]}
    with trio.fail_after(5):
        async with _client(fake, names=names) as client:
            await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=1000)
            for n in range(RECENT_TOKENS_KEPT):  # other pulls' tokens, fetched meanwhile
                remember_token(f"elsewhere-{n}-Hy6t4k")
            with pytest.raises(AuthError) as info:
                await client.get_bytes(
                    parse_reference("reg.example/team/other"),
                    "manifests",
                    "latest",
                    accept=None,
                    max_bytes=1000,
                )
    assert fake.tokens_issued == 2  # the second for team/other, from auth.example
    message = str(info.value)
    assert held.lower() not in message.lower(), message
    assert (
        "the token service at [redacted].evil.example refused a token anonymously"
        " (HTTP 401: [redacted] is not a token of this service)"
    ) in message, message


# A header quoting what the request carried: a registry's Retry-After, a resumed blob's
# Content-Range or a challenge that cannot be read (``said`` is what was sent).
QUOTING_HEADERS: dict[str, Callable[[str], httpx.Response]] = {
    "Retry-After": lambda said: httpx.Response(429, headers={"Retry-After": f"later {said}"}),
    "Content-Range": lambda said: streamed(
        206, BLOB, headers={"Content-Range": f"bytes 0-1/2 {said}"}
    ),
    "WWW-Authenticate": lambda said: httpx.Response(
        401, headers={"WWW-Authenticate": f'Bearer error="{said} was revoked'}
    ),
}


async def _fails_quoting(fake: FakeRegistry, header: str, **options: Any) -> str:
    """The error of a manifest GET (a blob GET from byte 10, for Content-Range)."""
    with trio.fail_after(5):
        async with _client(fake, limits=Limits(retries=0), **options) as client:
            with pytest.raises((RegistryError, AuthError)) as info:
                if header == "Content-Range":
                    await _read_blob(client, offset=10)
                else:
                    await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)
    return str(info.value)


@pytest.mark.parametrize("header", QUOTING_HEADERS)
async def test_a_header_quoting_the_token_sent_gets_it_cut(header: str) -> None:
    # Retry-After and Content-Range went through redact only, an unreadable challenge
    # through redact and recent_tokens: an opaque token the client holds, pushed out of
    # recent_tokens by other pulls' tokens, was quoted whole. Now the cut of error_detail.
    fake = FakeRegistry(challenge=BEARER)

    def opaque_token(request: httpx.Request) -> httpx.Response:
        fake.tokens_issued += 1
        return httpx.Response(200, json={"token": f"opaque{fake.tokens_issued}-Vb8r4TzW"})

    def quoting(request: httpx.Request) -> httpx.Response:
        for n in range(RECENT_TOKENS_KEPT):  # other pulls' tokens, fetched meanwhile
            remember_token(f"elsewhere-{n}-Wq5c1r")
        return QUOTING_HEADERS[header](request.headers["Authorization"].removeprefix("Bearer "))

    fake.routes["https://auth.example/token"] = opaque_token
    fake.routes["https://reg.example/v2/team/"] = quoting
    message = await _fails_quoting(fake, header)
    assert "Vb8r4TzW" not in message, message
    assert header in message and "[redacted]" in message, message


@pytest.mark.parametrize("header", QUOTING_HEADERS)
async def test_a_header_quoting_the_basic_credentials_sent_gets_them_cut(header: str) -> None:
    # redact knows Basic credentials after the word "Basic" only; quoted bare they went
    # through, and so did the password (SECRET) itself.
    fake = FakeRegistry(challenge='Basic realm="Registry Realm"')
    basic = basic_authorization(CREDS).removeprefix("Basic ")
    fake.routes["https://reg.example/v2/team/"] = lambda request: QUOTING_HEADERS[header](
        f"{basic} {SECRET}"
    )
    message = await _fails_quoting(fake, header, credentials=CREDS)
    assert basic.rstrip("=") not in message and SECRET not in message, message
    assert header in message and "[redacted]" in message, message


async def test_401_anonymous_says_credentials_needed() -> None:
    fake = FakeRegistry(challenge=BEARER, token_ok=lambda token: False)
    with trio.fail_after(5):
        async with _client(fake) as client:
            with pytest.raises(AuthError, match=r"needs credentials.*-u USER"):
                await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=1000)


async def test_basic_auth() -> None:
    fake = FakeRegistry(challenge='Basic realm="Registry Realm"')
    with trio.fail_after(5):
        async with _client(fake, credentials=CREDS) as client:
            body, _ = await client.get_bytes(
                REF, "manifests", "latest", accept=None, max_bytes=1000
            )
        assert body == MANIFEST
        assert fake.requests[-1].headers["Authorization"] == basic_authorization(CREDS)
        async with _client(FakeRegistry(challenge='Basic realm="r"')) as client:
            with pytest.raises(AuthError, match="requires a username and password"):
                await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=1000)
        wrong = Credentials("bob", "wrong-" + SECRET)
        async with _client(FakeRegistry(challenge='Basic realm="r"'), credentials=wrong) as client:
            with pytest.raises(AuthError) as info:
                await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=1000)
        assert "check the username/password for reg.example" in str(info.value)
        assert SECRET not in str(info.value)
        # The same Basic credentials are not sent a second time.
        fake = FakeRegistry(challenge='Basic realm="r"')
        async with _client(fake, credentials=wrong) as client:
            with pytest.raises(AuthError):
                await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)
        assert len([r for r in fake.requests if "manifests" in r.url.path]) == 1


async def test_credentials_not_sent_to_plain_http_or_private_realm() -> None:
    for realm, why in [
        ("http://auth.example/token", "plain http"),
        ("https://169.254.169.254/token", "is a link-local address"),
    ]:
        fake = FakeRegistry(challenge=f'Bearer realm="{realm}",service="x"')
        with trio.fail_after(5):
            async with _client(fake, credentials=CREDS) as client:
                with pytest.raises(AuthError, match=why):
                    await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)
        assert all("169.254" not in r.url.host for r in fake.requests)
        assert all(r.url.scheme == "https" for r in fake.requests)
    # Anonymous: a private realm named by a public registry is refused too.
    fake = FakeRegistry(challenge='Bearer realm="https://10.0.0.1/token"')
    async with _client(fake) as client:
        with pytest.raises(AuthError, match="private address"):
            await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)


# The Basic credentials made of CREDS, which a realm may carry as well as the password.
BASIC = basic_authorization(CREDS).removeprefix("Basic ")


@pytest.mark.parametrize(
    ("realm", "names", "said"),
    [
        # Unusable or malformed: the realm itself is quoted.
        (f"ftp://evil.example/token/{SECRET}", {}, "unusable token realm"),
        (f"evil.example/token/{BASIC}", {}, "unusable token realm"),
        (f"https://evil.example:port/t/{SECRET.replace('-', '%2D')}", {}, "invalid token realm"),
        # In its query: never quoted (redact's rule), the host named refusing a token.
        (f"https://evil.example/token?p={SECRET}", {}, "the token service at evil.example"),
        # In its host, which the refusals and the token service's errors name.
        (f"http://{SECRET}.evil.example/token", {}, "it is plain http"),
        (
            f"https://{SECRET}.evil.example/token",
            {f"{SECRET}.evil.example": ["10.0.0.9"]},
            "named a token service on the private address",
        ),
        (
            f"https://{SECRET}.evil.example/token",
            {f"{SECRET}.evil.example": ["93.184.216.35"]},
            "refused a token as 'bob'",
        ),
    ],
)
async def test_a_realm_carrying_the_credentials_is_quoted_without_them(
    realm: str, names: dict[str, list[str]], said: str
) -> None:
    # A realm that could not be used was quoted with the tokens cut but not the
    # credentials (token_url quoted it through quotable without them), and its host
    # named as it was: a registry's realm carrying the user's password, as it is,
    # percent-encoded or as the Basic credentials, put it in the error message.
    fake = FakeRegistry(challenge=f'Bearer realm="{realm}",service="x"')
    names = {"reg.example": ["93.184.216.34"], **names}
    with trio.fail_after(5):
        async with _client(fake, credentials=CREDS, names=names) as client:
            with pytest.raises(AuthError) as info:
                await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)
    message = str(info.value)
    assert said in message, message
    assert SECRET not in message and "hunter2" not in message, message
    assert BASIC not in message, message


# A password with capitals, and its Basic credentials (base64, capitals too, no padding).
MIXED_CASE = Credentials("bob", "Hunter2-Secret")
MIXED_CASE_BASIC = basic_authorization(MIXED_CASE).removeprefix("Basic ")


@pytest.mark.parametrize("secret", ["Hunter2-Secret", MIXED_CASE_BASIC], ids=["password", "basic"])
@pytest.mark.parametrize(
    ("scheme", "address", "said"),
    [
        ("http", "93.184.216.35", "it is plain http"),
        ("https", "10.0.0.9", "named a token service on the private address"),
        ("https", "93.184.216.35", "refused a token as 'bob'"),
    ],
)
async def test_a_realm_host_carrying_the_credentials_in_capitals_is_quoted_without_them(
    secret: str, scheme: str, address: str, said: str
) -> None:
    # A URL's host is lower-cased when it is parsed: the realm's host named the password
    # (or the Basic credentials) in lower case, which the cut, looking for it as the
    # user typed it, did not find.
    assert MIXED_CASE_BASIC == "Ym9iOkh1bnRlcjItU2VjcmV0"  # no "+", "/" or "=": a host
    host = f"{secret}.evil.example"
    fake = FakeRegistry(challenge=f'Bearer realm="{scheme}://{host}/token",service="x"')
    names = {"reg.example": ["93.184.216.34"], host.lower(): [address]}
    with trio.fail_after(5):
        async with _client(fake, credentials=MIXED_CASE, names=names) as client:
            with pytest.raises(AuthError) as info:
                await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)
    message = str(info.value)
    assert said in message, message
    assert secret.lower() not in message.lower(), message
    assert "[redacted].evil.example" in message, message


@pytest.mark.parametrize("credentials", [CREDS, None], ids=["with credentials", "anonymous"])
async def test_realm_name_resolving_to_a_private_address_is_refused(
    credentials: Credentials | None,
) -> None:
    # A public registry names a token service whose name resolves to the cloud metadata
    # address: nothing may go there, credentials or not.
    fake = FakeRegistry(challenge='Bearer realm="https://auth.example/token",service="x"')
    names = {"reg.example": ["93.184.216.34"], "auth.example": ["169.254.169.254"]}
    with trio.fail_after(5):
        async with _client(fake, credentials=credentials, names=names) as client:
            with pytest.raises(AuthError, match=r"auth\.example \(by what the name resolves to\)"):
                await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)
    assert fake.tokens_issued == 0
    assert not fake.paths("auth.example")


async def test_realm_resolving_to_link_local_is_refused_for_a_private_registry() -> None:
    # A registry on a private network (or loopback) is no reason to let it send us to the
    # cloud metadata address: link-local is allowed only from a link-local registry.
    fake = FakeRegistry(challenge='Bearer realm="https://auth.example/token",service="x"')
    names = {"reg.example": ["10.0.0.2"], "auth.example": ["169.254.169.254"]}
    with trio.fail_after(5):
        async with _client(fake, credentials=CREDS, names=names) as client:
            with pytest.raises(AuthError, match=r"link-local address auth\.example \(by what"):
                await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)
    assert fake.tokens_issued == 0
    assert not fake.paths("auth.example")


@pytest.mark.parametrize(
    ("realm", "names"),
    [
        ("https://[::ffff:169.254.169.254]/token", {}),
        ("https://[2002:a9fe:a9fe::1]/token", {}),
        ("https://auth.example/token", {"auth.example": ["64:ff9b::a9fe:a9fe"]}),
    ],
)
async def test_a_link_local_realm_written_as_ipv6_is_refused_for_a_private_registry(
    realm: str, names: dict[str, list[str]]
) -> None:
    # ipaddress calls ::ffff:169.254.169.254 (and its 6to4 and NAT64 spellings) neither
    # link-local nor loopback; from a registry on a private network it passed.
    fake = FakeRegistry(challenge=f'Bearer realm="{realm}",service="x"')
    names = {"reg.example": ["10.1.1.1"], **names}
    with trio.fail_after(5):
        async with _client(fake, names=names) as client:  # anonymous: no other check
            with pytest.raises(AuthError, match="link-local address"):
                await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)
    assert fake.tokens_issued == 0
    assert [r.url.host for r in fake.requests] == ["reg.example"]  # /v2/ only


@pytest.mark.parametrize(
    "realm", ["http://127.0.0.1:2375/token", "https://localhost/token", "https://[::]:2376/t"]
)
async def test_a_loopback_realm_is_refused_for_a_registry_on_a_private_network(
    realm: str,
) -> None:
    # Loopback counted as private: a registry on 10.1.1.1 could send the token request
    # to this machine's own services (a docker daemon on 127.0.0.1:2375).
    fake = FakeRegistry(challenge=f'Bearer realm="{realm}",service="x"')
    with trio.fail_after(5):
        async with _client(fake, names={"reg.example": ["10.1.1.1"]}) as client:
            with pytest.raises(AuthError, match="named a token service on the loopback address"):
                await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)
    assert [r.url.host for r in fake.requests] == ["reg.example"]  # /v2/ only


async def test_realm_on_a_private_address_is_allowed_for_a_registry_on_one() -> None:
    # An internal registry (its name resolves to a private address) with an internal
    # token service: the normal case inside a company network.
    fake = FakeRegistry(challenge='Bearer realm="https://auth.example/token",service="x"')
    names = {"reg.example": ["10.0.0.2"], "auth.example": ["10.0.0.3"]}
    with trio.fail_after(5):
        async with _client(fake, credentials=CREDS, names=names) as client:
            body, _ = await client.get_bytes(
                REF, "manifests", "latest", accept=None, max_bytes=1000
            )
    assert body == MANIFEST
    assert fake.tokens_issued == 1


async def test_unparseable_challenge() -> None:
    fake = FakeRegistry(challenge='Bearer realm="unterminated')
    async with _client(fake) as client:
        with pytest.raises(AuthError, match="unreadable WWW-Authenticate"):
            await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)


@pytest.mark.parametrize(
    ("response", "error", "text"),
    [
        (
            httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "x"}]}),
            NotFound,
            "MANIFEST_UNKNOWN",
        ),
        (httpx.Response(429, headers={"Retry-After": "30"}), TooManyRequests, "Retry-After: 30"),
        (httpx.Response(503, text="down"), RegistryUnavailable, "HTTP 503"),
        (httpx.Response(500, content=b"[" * 50000), RegistryUnavailable, "HTTP 500"),
        (httpx.Response(418), RegistryError, "HTTP 418"),
        (httpx.Response(403), AuthError, "access denied"),
        (httpx.Response(204), RegistryError, "HTTP 204 instead of 200"),
    ],
)
async def test_status_mapping(response: httpx.Response, error: type[Exception], text: str) -> None:
    fake = FakeRegistry()
    fake.routes["https://reg.example/v2/team/app/"] = lambda request: response
    async with _client(fake, limits=Limits(retries=0)) as client:
        with pytest.raises(error) as info:
            await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)
    assert text in str(info.value)
    assert "reg.example/team/app" in str(info.value)


async def test_unknown_manifest_names_ref() -> None:
    fake = FakeRegistry()
    async with _client(fake) as client:
        with pytest.raises(NotFound) as info:
            await client.get_bytes(REF, "manifests", "nope", accept=None, max_bytes=100)
    assert "manifest nope not found in reg.example/team/app" in str(info.value)


async def test_oversize_bodies_refused() -> None:
    fake = FakeRegistry()
    sent = 0

    async def chunks() -> Any:
        nonlocal sent
        for _ in range(1000):
            sent += 1024
            yield b"x" * 1024

    fake.routes["https://reg.example/v2/team/app/manifests/big"] = lambda request: httpx.Response(
        200, headers={"Content-Length": str(10**9)}, content=b"{}"
    )
    fake.routes["https://reg.example/v2/team/app/manifests/chunked"] = lambda r: httpx.Response(
        200, content=chunks()
    )
    async with _client(fake) as client:
        with pytest.raises(ManifestError, match="larger than the 4096-byte limit"):
            await client.get_bytes(REF, "manifests", "big", accept=None, max_bytes=4096)
        with pytest.raises(ManifestError, match="larger than the 4096-byte limit"):
            await client.get_bytes(REF, "manifests", "chunked", accept=None, max_bytes=4096)
    assert sent <= 4096 + 1024


async def test_target_and_repository_are_validated() -> None:
    async with _client(FakeRegistry()) as client:
        with pytest.raises(ValueError, match="not a tag or digest"):
            await client.get_bytes(REF, "manifests", "../../x", accept=None, max_bytes=10)
        bad = Reference("reg.example", "../etc", "latest")
        with pytest.raises(ValueError, match="not a repository name"):
            await client.get_bytes(bad, "manifests", "latest", accept=None, max_bytes=10)


async def test_connection_failure_is_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    fake = FakeRegistry()
    fake.routes["https://reg.example/"] = refuse
    async with _client(fake) as client:
        with pytest.raises(RegistryUnavailable, match=r"reg\.example"):
            await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)
    assert fake.paths() == ["https://reg.example/v2/"]  # no downgrade to http


# -- endpoints -----------------------------------------------------------------------------


def _tls_error(kind: str) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        cause: ssl.SSLError
        if kind == "verify":
            cause = ssl.SSLCertVerificationError(1, "certificate verify failed")
        else:
            cause = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
        raise httpx.ConnectError("", request=request) from cause

    return handler


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("expired", "has expired (or this machine's clock is wrong): renew it"),
        ("not yet valid", "is not valid yet (or this machine's clock is wrong): renew it"),
        ("other name", "is not valid for the name 127.0.0.1: use a name it is valid for"),
    ],
)
async def test_a_certificate_at_fault_is_named_and_no_ca_is_asked_for(
    tmp_path: Path, fault: str, says: str
) -> None:
    """Signed by the CA given with ``--ca-file``, a certificate that has expired or names
    another host was "not trusted (TLS certificate not trusted (certificate has
    expired))", with the advice to pass the very CA that was passed."""
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    ca = trustme.CA()
    cert = {
        "expired": lambda: ca.issue_cert(
            "127.0.0.1",
            not_before=now - datetime.timedelta(days=9),
            not_after=now - datetime.timedelta(days=1),
        ),
        "not yet valid": lambda: ca.issue_cert(
            "127.0.0.1",
            not_before=now + datetime.timedelta(days=1),
            not_after=now + datetime.timedelta(days=9),
        ),
        "other name": lambda: ca.issue_cert("registry.example"),
    }[fault]()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with run_fixture_server(server_context) as server:
        authority = f"127.0.0.1:{server.port}"
        ref = parse_reference(f"{authority}/team/app")
        with trio.fail_after(20), pytest.raises(RegistryUnavailable) as caught:
            async with RegistryClient.open(
                RegistryOptions(ca_file=ca_file), Limits(retries=0)
            ) as client:
                await client.get_bytes(ref, "manifests", "latest", accept=None, max_bytes=100)
    message = str(caught.value)
    assert message.startswith(f"the TLS certificate of {authority} {says}")
    assert (
        f", or pass --insecure-registry {authority} (RegistryOptions.insecure_registries)"
        " to skip verification"
    ) in message
    assert "--ca-file" not in message
    # Only the loopback probe, which verifies nothing (does it speak TLS?), got through.
    assert [r.target for r in server.requests] == ["/v2/"]


async def test_a_registry_speaking_plain_http_where_tls_was_asked_is_told_of_the_cure() -> None:
    fake = FakeRegistry()
    fake.routes["https://reg.example"] = _tls_error("protocol")
    async with _client(fake) as client:
        with pytest.raises(RegistryUnavailable) as caught:
            await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)
    assert (
        "if the registry speaks plain HTTP there, pass --insecure-registry reg.example"
        " (RegistryOptions.insecure_registries);"
    ) in str(caught.value)
    assert fake.paths() == ["https://reg.example/v2/"]


@pytest.mark.parametrize(
    ("registry", "listed"),
    [("reg.example", "reg.example"), ("10.1.2.3:5000", "10.0.0.0/8")],  # a CIDR, as docker's
)
async def test_insecure_registry_falls_back_to_http(registry: str, listed: str) -> None:
    ref = parse_reference(f"{registry}/team/app")
    fake = FakeRegistry()
    fake.routes[f"https://{registry}"] = _tls_error("verify")
    async with _client(fake, insecure_registries=(listed,)) as client:
        body, _ = await client.get_bytes(ref, "manifests", "latest", accept=None, max_bytes=100)
    assert body == MANIFEST
    assert fake.paths() == [
        f"https://{registry}/v2/",
        f"http://{registry}/v2/",
        f"http://{registry}/v2/team/app/manifests/latest",
    ]


@pytest.mark.parametrize("status", [502, 503])
async def test_an_insecure_registry_answering_https_with_a_5xx_is_not_downgraded(
    status: int,
) -> None:
    """A 5xx over https is the registry's answer: it speaks https. Tried again there, as
    docker's pull does (no http endpoint for a host whose https ping got a response);
    plain http is only for an https attempt that got no answer (``_discover``)."""
    fake = FakeRegistry()
    fake.routes["https://reg.example/v2/"] = _answers(httpx.Response(status))
    with trio.fail_after(10):
        async with _client(
            fake, insecure_registries=("reg.example",), limits=QUICK_RETRIES
        ) as client:
            body, _ = await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)
    assert body == MANIFEST
    assert fake.paths() == [
        "https://reg.example/v2/",
        "https://reg.example/v2/",
        "https://reg.example/v2/team/app/manifests/latest",
    ]


async def test_loopback_falls_back_only_when_server_is_not_tls() -> None:
    ref = parse_reference("127.0.0.1:5000/app")
    fake = FakeRegistry(host="127.0.0.1:5000")
    fake.routes["https://127.0.0.1:5000"] = _tls_error("protocol")
    async with _client(fake) as client:
        body, _ = await client.get_bytes(ref, "manifests", "latest", accept=None, max_bytes=100)
    assert body == MANIFEST
    assert fake.paths()[-1] == "http://127.0.0.1:5000/v2/app/manifests/latest"

    fake = FakeRegistry(host="127.0.0.1:5000")
    fake.routes["https://127.0.0.1:5000"] = _tls_error("verify")
    async with _client(fake) as client:
        with pytest.raises(RegistryUnavailable) as info:
            await client.get_bytes(ref, "manifests", "latest", accept=None, max_bytes=100)
    assert "--ca-file" in str(info.value) and "--insecure-registry 127.0.0.1:5000" in str(
        info.value
    )
    assert all(r.url.scheme == "https" for r in fake.requests)


async def test_public_registry_never_downgrades() -> None:
    fake = FakeRegistry()
    fake.routes["https://reg.example"] = _tls_error("protocol")
    async with _client(fake) as client:
        with pytest.raises(RegistryUnavailable, match="TLS handshake failed"):
            await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)
    assert all(r.url.scheme == "https" for r in fake.requests)


async def test_ping_404_is_not_a_registry() -> None:
    fake = FakeRegistry()
    fake.routes["https://reg.example/v2/"] = lambda request: httpx.Response(404)
    async with _client(fake) as client:
        with pytest.raises(NotFound, match="/v2/"):
            await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)


# -- blob streams and redirects ------------------------------------------------------------


async def _read_blob(client: RegistryClient, offset: int = 0) -> bytes:
    async with client.stream_blob(REF, BLOB_DIGEST, offset=offset) as response:
        return b"".join([chunk async for chunk in response.aiter_raw()])


async def test_stream_blob_and_range() -> None:
    fake = FakeRegistry(challenge=BEARER)
    with trio.fail_after(5):
        async with _client(fake) as client:
            assert await _read_blob(client) == BLOB
            assert await _read_blob(client, offset=100) == BLOB[100:]
    blob_requests = [r for r in fake.requests if "/blobs/" in r.url.path]
    assert blob_requests[0].headers["Accept-Encoding"] == "identity"
    assert "Range" not in blob_requests[0].headers
    assert blob_requests[1].headers["Range"] == "bytes=100-"


async def test_stream_blob_range_ignored_is_the_whole_blob() -> None:
    """A server that ignores Range answers 200 with every byte; the blob stage skips what
    it has (tests/test_blob.py), so the client hands that response over as it is."""
    fake = FakeRegistry()
    fake.routes["https://reg.example/v2/team/app/blobs/"] = lambda r: streamed(200, BLOB)
    async with _client(fake) as client:
        assert await _read_blob(client, offset=10) == BLOB


async def test_stream_blob_resumed_at_another_byte_is_an_error() -> None:
    fake = FakeRegistry()
    fake.routes["https://reg.example/v2/team/app/blobs/"] = lambda r: streamed(
        206, BLOB, headers={"Content-Range": f"bytes 0-{len(BLOB) - 1}/{len(BLOB)}"}
    )
    async with _client(fake, limits=Limits(retries=0)) as client:
        with pytest.raises(RegistryError, match="did not resume") as info:
            await _read_blob(client, offset=10)
    assert not info.value.transient


async def test_a_content_range_is_quoted_without_a_secret() -> None:
    fake = FakeRegistry()
    fake.routes["https://reg.example/v2/team/app/blobs/"] = lambda r: streamed(
        206, BLOB, headers={"Content-Range": "bytes 0-1/2;token=T0ken99"}
    )
    async with _client(fake, limits=Limits(retries=0)) as client:
        with pytest.raises(RegistryError, match="did not resume") as info:
            await _read_blob(client, offset=10)
    assert "T0ken99" not in str(info.value)
    assert "'bytes 0-1/2;token=[redacted]'" in str(info.value)


def _redirect(location: str, status: int = 307) -> Handler:
    return lambda request: httpx.Response(status, headers={"Location": location})


async def test_redirect_to_cdn_drops_authorization() -> None:
    fake = FakeRegistry(challenge=BEARER)
    fake.routes["https://reg.example/v2/team/app/blobs/"] = _redirect(
        "https://cdn.example/blob?sig=SIGNED"
    )
    fake.routes["https://cdn.example/"] = lambda r: streamed(200, BLOB)
    with trio.fail_after(5):
        async with _client(fake, credentials=CREDS) as client:
            assert await _read_blob(client) == BLOB
    cdn = [r for r in fake.requests if r.url.host == "cdn.example"]
    assert len(cdn) == 1
    assert "Authorization" not in cdn[0].headers
    assert cdn[0].headers["Accept-Encoding"] == "identity"


# An ACE label whose Unicode (U+2177, SMALL ROMAN NUMERAL EIGHT) IDNA 2008 does not allow:
# httpx parses the URL and raises idna's InvalidCodepoint when asked for its ``host``.
NOT_IDNA = "xn--e5g.example"


@pytest.mark.parametrize("place", ["realm", "redirect", "token redirect", "layer URL"])
async def test_a_url_whose_host_is_no_idna_name_is_refused_not_a_crash(place: str) -> None:
    # The realm (token_url), a redirect's Location (_follow, and httpx's send, which
    # reads it too) and a layer's URL (_foreign_target) are the registry's text; each
    # parsed, and the first look at its host raised idna's error out of the registry
    # client, a UnicodeError.
    realm = f'Bearer realm="https://{NOT_IDNA}/token"'
    fake = FakeRegistry(challenge=realm if place == "realm" else None)
    if place == "redirect":
        fake.routes["https://reg.example/v2/team/app/blobs/"] = _redirect(f"https://{NOT_IDNA}/b")
    if place == "token redirect":
        fake.challenge = BEARER
        fake.routes["https://auth.example/token"] = _redirect(f"https://{NOT_IDNA}/t")
    url = f"https://{NOT_IDNA}/layer" if place == "layer URL" else None
    error = AuthError if place in ("realm", "token redirect") else RegistryError
    with trio.fail_after(5):
        async with _client(fake) as client:
            with pytest.raises(error) as info:
                await _read_from(client, REF, url)
    said = {
        "realm": f"the registry named an invalid token realm 'https://{NOT_IDNA}/token'",
        "redirect": "reg.example redirected blob",
        "token redirect": "the token service at auth.example redirected to an invalid URL",
        "layer URL": f"the URL https://{NOT_IDNA}/layer for layer {BLOB_DIGEST} is not a valid URL",
    }[place]
    assert said in info.value.message, info.value.message


async def test_a_redirect_to_no_url_at_all_is_refused_at_once(
    fixture_server: Callable[[], FixtureServer],
) -> None:
    # httpx reads the Location as the answer comes and raises a protocol error for one
    # that is no URL: taken for a broken connection, it was asked again four times.
    server = fixture_server()
    path = f"/v2/team/app/blobs/{BLOB_DIGEST}"
    server.route(path, Reply(302, {"Location": "http://[::1"}, b""))
    ref = parse_reference(f"127.0.0.1:{server.port}/team/app")
    with trio.fail_after(20), pytest.raises(RegistryError) as info:
        async with RegistryClient.open(RegistryOptions(), QUICK_RETRIES) as client:
            await _read_from(client, ref, None)
    assert f"127.0.0.1 redirected blob {BLOB_DIGEST} to an invalid URL" in info.value.message
    assert not info.value.transient
    assert server.count("GET", path) == 1


@pytest.mark.parametrize("silent_s", [0.0, 2.0])
async def test_a_server_silent_for_long_then_hanging_up_stalled_and_is_asked_once_more(
    fixture_server: Callable[[], FixtureServer], silent_s: float
) -> None:
    # Silent for just under the read timeout, then a hang-up (a load balancer's idle
    # cut in front of a hung backend): five attempts, five minutes per request, where a
    # stall that stays silent gets two (found by a QA pass). A quick hang-up is a broken
    # connection still, asked again as often as the retries allow.
    server = fixture_server()
    path = "/v2/team/app/manifests/latest"
    server.route(path, Reply(200, {}, b"", delay=silent_s, close=True))
    ref = parse_reference(f"127.0.0.1:{server.port}/team/app")
    limits = Limits(retries=4, retry_wait_s=0.001, read_timeout_s=3.0)
    with trio.fail_after(30), pytest.raises(RegistryUnavailable) as info:
        async with RegistryClient.open(RegistryOptions(), limits) as client:
            await client.get_bytes(ref, "manifests", "latest", accept=None, max_bytes=100)
    if silent_s:
        assert f"no data from 127.0.0.1:{server.port} for 2" in info.value.message
        assert "s, then it hung up while fetching manifest latest" in info.value.message
        assert server.count("GET", path) == 2
    else:
        assert server.count("GET", path) == 5


@pytest.mark.parametrize("encoding", ["gzip", "identity", ""])
async def test_a_manifest_sent_with_a_content_encoding_is_refused_naming_it(
    fixture_server: Callable[[], FixtureServer], encoding: str
) -> None:
    # Asked for identity, a proxy in front of the registry gzipped it anyway: the error
    # said "the manifest is not valid UTF-8" (found by a QA pass).
    server = fixture_server()
    body = gzip.compress(MANIFEST) if encoding == "gzip" else MANIFEST
    headers = {"Content-Type": MediaType.OCI_MANIFEST, "Content-Encoding": encoding}
    server.route("/v2/team/app/manifests/latest", Reply(200, headers, body))
    ref = parse_reference(f"127.0.0.1:{server.port}/team/app")
    async with RegistryClient.open(RegistryOptions(), Limits(retries=0)) as client:
        fetch = client.get_bytes(ref, "manifests", "latest", accept=None, max_bytes=1 << 20)
        if encoding != "gzip":
            assert (await fetch)[0] == MANIFEST
            return
        with trio.fail_after(20), pytest.raises(ManifestError) as info:
            await fetch
    assert info.value.message.startswith(
        f"127.0.0.1:{server.port} sent manifest latest with Content-Encoding: gzip, though"
        " identity was asked for"
    )


async def test_relative_redirect_on_registry_keeps_authorization() -> None:
    fake = FakeRegistry(challenge=BEARER)
    fake.routes["https://reg.example/v2/team/app/blobs/"] = _redirect("/storage/blob", 302)
    fake.routes["https://reg.example/storage/"] = lambda r: streamed(200, BLOB)
    async with _client(fake) as client:
        assert await _read_blob(client) == BLOB
    assert fake.requests[-1].headers["Authorization"] == "Bearer tok1"


@pytest.mark.parametrize(
    ("routes", "text"),
    [
        (
            {"https://reg.example/v2/team/app/blobs/": _redirect("http://cdn.example/b")},
            "https to plain http",
        ),
        (
            {
                "https://reg.example/v2/team/app/blobs/": _redirect(
                    "https://reg.example/v2/team/app/blobs/x"
                )
            },
            "redirect loop",
        ),
        (
            {
                "https://reg.example/v2/team/app/blobs/": _redirect("https://cdn.example/0"),
                "https://cdn.example/": lambda r: httpx.Response(
                    302, headers={"Location": f"/{int(r.url.path[1:]) + 1}"}
                ),
            },
            "more than 5 redirects",
        ),
        (
            {"https://reg.example/v2/team/app/blobs/": lambda r: httpx.Response(302)},
            "without a Location",
        ),
        ({"https://reg.example/v2/team/app/blobs/": _redirect("ftp://x/y")}, "unusable URL"),
        (
            {
                "https://reg.example/v2/team/app/blobs/": _redirect(
                    "https://cdn.example/s?sig=SIGNED"
                ),
                "https://cdn.example/": lambda r: httpx.Response(403),
            },
            "signed URL may have expired",
        ),
    ],
)
async def test_bad_redirects(routes: dict[str, Handler], text: str) -> None:
    fake = FakeRegistry()
    fake.routes.update(routes)
    with trio.fail_after(5):
        async with _client(fake) as client:
            with pytest.raises(RegistryError) as info:
                await _read_blob(client)
    assert text in str(info.value)
    assert "SIGNED" not in str(info.value)
    assert str(BLOB_DIGEST) in str(info.value)


PUBLIC = {"reg.example": ["93.184.216.34"]}  # a registry not on any internal address


@pytest.mark.parametrize(
    ("names", "location", "refused"),
    [
        (PUBLIC, "https://10.0.0.1/b?sig=SIGNED", "to 10.0.0.1, a private address"),
        (PUBLIC, "https://127.0.0.1:9000/b", "to 127.0.0.1, a loopback address"),
        (PUBLIC, "https://169.254.169.254/latest/meta-data/", "to 169.254.169.254, a link-local"),
        (PUBLIC, "https://[fe80::1]/latest", "to fe80::1, a link-local address"),
        (
            {**PUBLIC, "cdn.example": ["169.254.169.254"]},
            "https://cdn.example/b?sig=SIGNED",
            "to cdn.example, a link-local address",
        ),
        # A registry on a private network may use storage there, not a metadata service.
        (
            {"reg.example": ["10.0.0.5"]},
            "https://169.254.169.254/latest",
            "to 169.254.169.254, a link-local address",
        ),
    ],
)
async def test_a_redirect_to_an_internal_address_is_refused(
    names: dict[str, list[str]], location: str, refused: str
) -> None:
    """RELIABILITY.md, Auth: never to a link-local or private address unless the registry
    itself is on one. A registry (or the CDN it redirects to) could send the request to a
    cloud metadata service or an internal host; only https→http was refused."""
    fake = FakeRegistry()
    fake.routes["https://reg.example/v2/team/app/blobs/"] = _redirect(location)
    with trio.fail_after(5):
        async with _client(fake, names=names) as client:
            with pytest.raises(RegistryError) as info:
                await _read_blob(client)
    assert f"reg.example redirected blob {BLOB_DIGEST} {refused}" in info.value.message
    assert "and the registry reg.example is not on one; refused" in info.value.message
    assert not info.value.transient
    assert "SIGNED" not in str(info.value)
    assert {r.url.host for r in fake.requests} == {"reg.example"}


async def test_a_layers_url_may_not_redirect_to_an_internal_address() -> None:
    fake = FakeRegistry()
    fake.routes["https://cdn.example/"] = _redirect("https://metadata.example/latest")
    names = {**PUBLIC, "metadata.example": ["169.254.169.254"]}
    with trio.fail_after(5):
        async with _client(fake, names=names) as client:
            with pytest.raises(RegistryError) as info:
                await _read_url(client, "https://cdn.example/layer")
    assert info.value.message.startswith(
        f"cdn.example redirected blob {BLOB_DIGEST} from https://cdn.example/layer to"
        " metadata.example, a link-local address"
    )
    assert {r.url.host for r in fake.requests} == {"cdn.example"}


async def test_a_registry_on_a_private_address_may_redirect_to_another() -> None:
    fake = FakeRegistry()
    fake.routes["https://reg.example/v2/team/app/blobs/"] = _redirect("https://10.0.0.9/b")
    fake.routes["https://10.0.0.9/"] = fake._blob
    with trio.fail_after(5):
        async with _client(fake, names={"reg.example": ["10.0.0.5"]}) as client:
            assert await _read_blob(client) == BLOB


def _too_long(request: httpx.Request) -> httpx.Response:
    """The blob, announced as 10 bytes longer than it is."""
    return streamed(200, BLOB, headers={"Content-Length": str(len(BLOB) + 10)})


@pytest.mark.parametrize(
    ("routes", "urls", "sender"),
    [
        (
            {
                "https://reg.example/v2/team/app/blobs/": _redirect(
                    "https://cdn.example/blob?sig=SIGNED"
                ),
                "https://cdn.example/": _too_long,
            },
            (),
            "the storage server cdn.example (redirected from the registry)",
        ),
        (  # the registry's own host, another path: still the registry
            {
                "https://reg.example/v2/team/app/blobs/": _redirect("/storage/blob", 302),
                "https://reg.example/storage/": _too_long,
            },
            (),
            "the registry",
        ),
        (  # a foreign layer's URL, which redirects in turn
            {
                "https://reg.example/v2/team/app/blobs/": lambda r: httpx.Response(404),
                "https://cdn.example/": _redirect("https://store.example:8443/o?sig=SIGNED"),
                "https://store.example:8443/": _too_long,
            },
            ("https://cdn.example/layer?sig=SIGNED",),
            "the server store.example:8443 (redirected from https://cdn.example/layer?[redacted])",
        ),
    ],
    ids=["registry-to-cdn", "registry-own-host", "layer-url-to-storage"],
)
async def test_the_blob_stage_blames_the_server_a_body_came_from_after_a_redirect(
    routes: dict[str, Handler], urls: tuple[str, ...], sender: str
) -> None:
    """The blob stage over this client: a body a registry (or a layer's URL) redirected
    to a storage server is that server's, and the stage's messages about it (too long,
    short, slow) said "the registry" though it had only answered 307."""
    fake = FakeRegistry()
    fake.routes.update(routes)
    layer = Descriptor(MediaType.OCI_LAYER_GZIP, BLOB_DIGEST, len(BLOB), urls=urls)
    limits = Limits(retries=0)
    send, receive = trio.open_memory_channel[bytes](4)
    receive.close()  # nothing is sent: the body is refused before it is read
    with trio.fail_after(5):
        async with _client(fake, limits=limits) as client:
            with pytest.raises(SizeMismatch) as info:
                await blob_stream(client, REF, layer, limits, send, None)
    assert info.value.message.startswith(
        f"{sender} announces {len(BLOB) + 10} bytes for layer {BLOB_DIGEST}"
    )
    assert "SIGNED" not in str(info.value)


class CountingStream(httpx.AsyncByteStream):
    """A streamed body (endless unless ``data`` is given), recording whether it was closed.

    An iterator object, not an async generator: trio warns about abandoned generators.
    """

    def __init__(self, data: bytes | None = None, *, fail_after: int | None = None) -> None:
        self.closed = False
        self.data = data
        self.fail_after = fail_after
        self.sent = 0

    def __aiter__(self) -> CountingStream:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.fail_after is not None and self.sent >= self.fail_after:
            raise httpx.ReadError("connection reset")
        if self.data is not None:
            chunk = self.data[self.sent * 1024 : (self.sent + 1) * 1024]
            if not chunk:
                raise StopAsyncIteration
        else:
            chunk = b"x" * 1024
        self.sent += 1
        return chunk

    async def aclose(self) -> None:
        self.closed = True


def streamed(status: int, data: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, stream=CountingStream(data), headers=headers)


async def test_response_closed_on_cancellation() -> None:
    stream = CountingStream()
    fake = FakeRegistry()
    fake.routes["https://reg.example/v2/team/app/blobs/"] = lambda r: httpx.Response(
        200, stream=stream
    )
    async with _client(fake) as client:
        with trio.move_on_after(0.05):
            async with client.stream_blob(REF, BLOB_DIGEST) as response:
                async for _ in response.aiter_raw():
                    pass
    assert stream.closed


async def test_transport_error_while_reading_is_unavailable() -> None:
    stream = CountingStream(fail_after=3)
    fake = FakeRegistry()
    fake.routes["https://reg.example/v2/team/app/blobs/"] = lambda r: httpx.Response(
        200, stream=stream
    )
    async with _client(fake) as client:
        with pytest.raises(RegistryUnavailable) as info:
            await _read_blob(client)
    assert str(BLOB_DIGEST) in str(info.value)
    assert stream.closed


async def test_error_bodies_are_bounded_and_closed() -> None:
    stream = CountingStream()
    fake = FakeRegistry()
    fake.routes["https://reg.example/v2/team/app/blobs/"] = lambda r: httpx.Response(
        500, stream=stream
    )
    with trio.fail_after(5):
        async with _client(fake) as client:
            with pytest.raises(RegistryUnavailable, match="HTTP 500"):
                await _read_blob(client)
    assert stream.closed


# -- against the real registry (tests/conftest.py fixtures) --------------------------------


async def _pull_metadata(
    server: Any,
    ref_text: str,
    options: RegistryOptions,
    platform: Platform = AMD64,
    limits: Limits | None = None,
) -> tuple[Any, bytes]:
    """resolve_image, then stream the first layer; returns (resolved, layer bytes)."""
    ref = parse_reference(ref_text)
    limits = limits if limits is not None else Limits()
    with trio.fail_after(30):
        async with RegistryClient.open(options, limits) as client:
            resolved = await resolve_image(client, ref, platform, limits)
            async with client.stream_blob(ref, resolved.layers[0].digest) as response:
                data = b"".join([chunk async for chunk in response.aiter_raw()])
    return resolved, data


async def test_real_registry_plain(registry: Any, unique_repo: str) -> None:
    image = sample_image(unique_repo)
    registry.push(unique_repo, image, "v1")
    resolved, data = await _pull_metadata(
        registry, registry.ref(unique_repo, "v1"), RegistryOptions()
    )
    assert str(resolved.manifest_digest) == image.digest
    assert resolved.manifest_bytes == image.manifest.data
    assert [str(d) for d in resolved.diff_ids] == list(image.diff_ids)
    assert [str(d.digest) for d in resolved.layers] == [layer.digest for layer in image.layers]
    assert str(resolved.config.digest) == image.image_id
    assert hashlib.sha256(data).hexdigest() == image.layers[0].digest.removeprefix("sha256:")
    # By digest, too.
    by_digest, _ = await _pull_metadata(
        registry, registry.ref(unique_repo, image.digest), RegistryOptions()
    )
    assert by_digest.manifest_digest == resolved.manifest_digest


async def test_real_registry_index(registry: Any, unique_repo: str) -> None:
    index = sample_index(unique_repo)
    registry.push(unique_repo, index, "multi")
    arm = Platform("linux", "arm64")
    resolved, _ = await _pull_metadata(
        registry, registry.ref(unique_repo, "multi"), RegistryOptions(), arm
    )
    assert str(resolved.resolved_digest) == index.digest
    assert str(resolved.manifest_digest) == index.image_for("linux/arm64/v8").digest
    assert resolved.platform == Platform("linux", "arm64", "v8")
    with pytest.raises(PlatformNotFound, match="linux/amd64, linux/arm64/v8"):
        await _pull_metadata(
            registry,
            registry.ref(unique_repo, "multi"),
            RegistryOptions(),
            Platform("linux", "s390x"),
        )


async def test_real_registry_unknown_image(registry: Any, unique_repo: str) -> None:
    with pytest.raises(NotFound, match="not found"):
        await _pull_metadata(registry, registry.ref(unique_repo, "nope"), RegistryOptions())


async def test_real_registry_basic_auth(basic_registry: Any, unique_repo: str) -> None:
    image = sample_image(unique_repo, compressions=("gzip",))
    basic_registry.push(unique_repo, image)
    ref = basic_registry.ref(unique_repo)
    username, password = basic_registry.credentials
    good = RegistryOptions(credentials=Credentials(username, password))
    resolved, _ = await _pull_metadata(basic_registry, ref, good)
    assert str(resolved.manifest_digest) == image.digest
    with pytest.raises(AuthError) as info:
        await _pull_metadata(
            basic_registry, ref, RegistryOptions(credentials=Credentials(username, "wrong-pw"))
        )
    assert f"check the username/password for {basic_registry.host}" in str(info.value)
    assert "wrong-pw" not in str(info.value)
    with pytest.raises(AuthError, match="requires a username and password"):
        await _pull_metadata(basic_registry, ref, RegistryOptions())


async def test_real_registry_token_auth(
    token_registry: Any, token_server: Any, unique_repo: str
) -> None:
    image = sample_image(unique_repo, compressions=("gzip",))
    token_registry.push(unique_repo, image)
    public_repo = "public/" + unique_repo.replace("/", "-")
    token_registry.push(public_repo, image)
    username, password = token_registry.credentials
    creds = RegistryOptions(credentials=Credentials(username, password))
    token_server.reset()

    resolved, _ = await _pull_metadata(token_registry, token_registry.ref(unique_repo), creds)
    assert str(resolved.manifest_digest) == image.digest
    assert token_server.count == 1  # one token for the whole pull, cached

    token_server.reset()
    resolved, _ = await _pull_metadata(
        token_registry, token_registry.ref(public_repo), RegistryOptions()
    )
    assert str(resolved.manifest_digest) == image.digest

    # A token the registry refuses: renewed once, then the pull goes on.
    token_server.reset()
    token_server.set_fault("bad-signature", times=1)
    resolved, _ = await _pull_metadata(token_registry, token_registry.ref(unique_repo), creds)
    assert token_server.count == 2

    token_server.reset()
    wrong = RegistryOptions(credentials=Credentials(username, "wrong-pw"))
    with pytest.raises(AuthError) as info:
        await _pull_metadata(token_registry, token_registry.ref(unique_repo), wrong)
    assert "check the username/password" in str(info.value)
    assert "wrong-pw" not in str(info.value)
    # The token service's refusal names the image being pulled.
    assert info.value.ref == str(token_registry.ref(unique_repo))
    assert info.value.ref in str(info.value)

    # A token service that keeps failing: tried again as a registry's 503 is, then given up on.
    token_server.reset()
    token_server.set_fault("status", status=503)
    fast = Limits(retries=2, retry_wait_s=0.01)
    with pytest.raises(AuthError, match=f"token service at {token_server.host}") as info:
        await _pull_metadata(token_registry, token_registry.ref(unique_repo), creds, limits=fast)
    assert "gave up after 3 attempts" in str(info.value)
    assert token_server.count == 3


@pytest.mark.parametrize("fault", ["expired on arrival", "bad signature"])
@pytest.mark.parametrize("given", [True, False])
async def test_a_token_the_registry_keeps_refusing_is_not_blamed_on_the_password(
    token_registry: Any, token_server: Any, unique_repo: str, fault: str, given: bool
) -> None:
    """The token service issued a token (it took the password, or none was needed) that
    the registry refuses as ``invalid_token``: clocks or signing keys that disagree. The
    error said "check the username/password" (or "needs credentials: pass -u")."""
    image = sample_image(unique_repo, compressions=("gzip",))
    repo = unique_repo if given else "public/" + unique_repo.replace("/", "-")
    token_registry.push(repo, image)
    username, password = token_registry.credentials
    options = RegistryOptions(credentials=Credentials(username, password) if given else None)
    token_server.reset()
    if fault == "expired on arrival":
        token_server.exp_skew = -3600
    else:
        token_server.set_fault("bad-signature")
    with trio.fail_after(20), pytest.raises(AuthError) as info:
        await _pull_metadata(token_registry, token_registry.ref(repo), options)
    message = str(info.value)
    assert f"{token_registry.host} refused the token its token service issued (invalid_token)" in (
        message
    )
    assert "password" not in message and "-u USER" not in message
    assert token_server.count == 2  # renewed once, as for a token that expired mid-pull


async def test_a_401_without_a_challenge_to_answer_says_no_credentials_were_sent(
    fixture_server: Callable[[], FixtureServer],
) -> None:
    server = fixture_server()
    for path in ("/v2/", "/v2/team/app/manifests/latest"):
        server.route(path, Reply(401, {"WWW-Authenticate": "Negotiate"}, b""))
    ref = parse_reference(f"127.0.0.1:{server.port}/team/app")
    options = RegistryOptions(credentials=CREDS)
    with trio.fail_after(20), pytest.raises(AuthError) as info:
        async with RegistryClient.open(options, Limits(retries=0)) as client:
            await client.get_bytes(ref, "manifests", "latest", accept=None, max_bytes=100)
    message = str(info.value)
    assert "asks for authentication without a Basic or Bearer challenge (only negotiate" in (
        message
    )
    assert "so no credentials were sent" in message and "check the username" not in message
    assert all("authorization" not in r.headers for r in server.requests)


async def test_real_registry_tls(tls_registry: Any, unique_repo: str) -> None:
    image = sample_image(unique_repo, compressions=("gzip",))
    tls_registry.push(unique_repo, image)
    ref = tls_registry.ref(unique_repo)
    resolved, _ = await _pull_metadata(
        tls_registry, ref, RegistryOptions(ca_file=tls_registry.ca_pem)
    )
    assert str(resolved.manifest_digest) == image.digest
    with pytest.raises(RegistryUnavailable, match=r"--ca-file PEM \(RegistryOptions\.ca_file\)"):
        await _pull_metadata(tls_registry, ref, RegistryOptions())
    resolved, _ = await _pull_metadata(
        tls_registry, ref, RegistryOptions(insecure_registries=(tls_registry.host,))
    )
    assert str(resolved.manifest_digest) == image.digest


async def test_cancelled_streams_leak_no_connections() -> None:
    """Many pulls cancelled against a real socket server leave no connection open: first
    while the loopback endpoint is being probed with TLS (a server that never answers the
    handshake), then mid-blob once the server answers TLS with an HTTP 400 as Go's does."""
    open_connections = 0
    answer_tls = False

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal open_connections
        open_connections += 1
        try:
            while True:
                request = b""
                while b"\r\n\r\n" not in request:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    request += data
                    if request.startswith(b"\x16") and answer_tls:  # a TLS ClientHello
                        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                        return
                if request.startswith(b"GET /v2/ "):
                    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    continue
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
                while True:
                    await stream.send_all(b"x" * 65536)
                    await trio.sleep(0.001)
        except trio.BrokenResourceError:
            pass
        finally:
            open_connections -= 1

    async def settled(target: int) -> int:
        for _ in range(100):
            if open_connections <= target:
                break
            await trio.sleep(0.01)
        return open_connections

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            ref = parse_reference(f"127.0.0.1:{port}/app")
            async with RegistryClient.open(RegistryOptions(), Limits()) as client:
                for _ in range(10):
                    with trio.move_on_after(0.02):
                        async with client.stream_blob(ref, BLOB_DIGEST):
                            raise AssertionError("the TLS probe should hang")
                left = await settled(0)
                assert left == 0, f"{left} probe connections left open"
                answer_tls = True
                started = 0
                for _ in range(30):
                    with trio.move_on_after(0.02):
                        async with client.stream_blob(ref, BLOB_DIGEST) as response:
                            started += 1
                            async for _chunk in response.aiter_raw():
                                pass
                assert started == 30, f"only {started} of 30 streams got their headers"
                left = await settled(1)
                assert left <= 1, f"{left} connections left open"  # at most the idle /v2/ one
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("part", ["manifest body", "blob headers", "error body"])
async def test_a_response_sent_a_byte_at_a_time_ends_at_the_deadline(part: str) -> None:
    """Each byte comes well inside the read timeout, so only the response deadline ends
    it (RELIABILITY.md, slow drip): for a manifest's body, a blob's headers (its body has
    the rate check), and an error's body, which is read for its message."""
    drips = {
        "manifest body": (b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n", b"{" * 400),
        "blob headers": (b"", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nblob"),
        "error body": (b"HTTP/1.1 404 Not Found\r\nContent-Length: 400\r\n\r\n", b" " * 400),
    }
    head, drip = drips[part]

    async def handler(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            request = b""
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                request += data
                if request.startswith(b"\x16"):  # a TLS ClientHello: answer as Go does
                    await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                    return
                if b"\r\n\r\n" not in request:
                    continue
                if not request.startswith(b"GET /v2/ "):
                    break
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                request = b""
            await stream.send_all(head)
            for byte in drip:
                await stream.send_all(bytes([byte]))
                await trio.sleep(0.05)

    limits = Limits(response_deadline_s=0.5, read_timeout_s=10)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            ref = parse_reference(f"127.0.0.1:{port}/app")
            async with RegistryClient.open(RegistryOptions(), limits) as client:
                await client.authenticate(ref)  # the endpoint check, outside the deadline
                started = trio.current_time()
                with pytest.raises(RegistryUnavailable, match=r"took more than 0\.5 s"):
                    if part == "blob headers":
                        async with client.stream_blob(ref, BLOB_DIGEST):
                            pass
                    else:
                        await client.get_bytes(
                            ref, "manifests", "latest", accept=None, max_bytes=10_000
                        )
                assert trio.current_time() - started < 5  # the drip alone would take 20 s
            nursery.cancel_scope.cancel()


async def _answer_plainly(stream: trio.SocketStream, request: bytes = b"") -> None:
    """Read the rest of a request head (``request`` is what came so far); answer GET /v2/
    with an empty 200 and anything else with ``MANIFEST``, then close."""
    while b"\r\n\r\n" not in request:
        data = await stream.receive_some(65536)
        if not data:
            return
        request += data
    body = b"" if request.startswith(b"GET /v2/ ") else MANIFEST
    await stream.send_all(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
    )


async def _manifest_from_loopback(
    handler: Callable[[trio.SocketStream], Any], options: RegistryOptions, limits: Limits
) -> bytes:
    """The manifest ``latest`` of 127.0.0.1:PORT/app, served by ``handler`` on a port of
    its own."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            ref = parse_reference(f"127.0.0.1:{port}/app")
            async with RegistryClient.open(options, limits) as client:
                body, _ = await client.get_bytes(
                    ref, "manifests", "latest", accept=None, max_bytes=1000
                )
            nursery.cancel_scope.cancel()
    return body


async def test_loopback_server_silent_on_tls_falls_back_to_http() -> None:
    """A plain-HTTP loopback server (or proxy) that waits for a request head never answers
    a ClientHello: the https probe gives up quickly and plain http is used."""

    async def handler(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            await _answer_plainly(stream)

    limits = Limits(connect_timeout_s=0.3)
    assert await _manifest_from_loopback(handler, RegistryOptions(), limits) == MANIFEST


async def test_plain_loopback_registry_never_loads_the_ca_store(tmp_path: Path) -> None:
    """The TLS question goes unverified, so a plain-HTTP registry on loopback answering
    the ClientHello with an HTTP 400 (as Go's does) costs no CA store: the verifying
    context holds only the user's CA file afterwards."""
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    options = RegistryOptions(ca_file=ca_file)  # a shared context of its own

    async def handler(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            request = await stream.receive_some(65536)
            if request.startswith(b"\x16"):  # a TLS ClientHello
                await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                return
            await _answer_plainly(stream, request)

    assert await _manifest_from_loopback(handler, options, Limits()) == MANIFEST
    assert shared_ssl_context(options, verify=True).cert_store_stats()["x509_ca"] == 1


# -- retries (stages/_retry.py decides; the client marks what is transient) -----------------

QUICK_RETRIES = Limits(retries=2, retry_wait_s=0.001)


def _answers(*responses: httpx.Response | Exception) -> Handler:
    """Answer with ``responses`` in turn (raising the exceptions), then as the fake does."""
    queue = list(responses)

    def respond(request: httpx.Request) -> httpx.Response:
        if not queue:
            return httpx.Response(
                200, content=MANIFEST, headers={"Content-Type": "application/json"}
            )
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return respond


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(503, text="down"),
        httpx.Response(502),
        httpx.Response(500),
        httpx.Response(504),
        httpx.Response(408),
        httpx.Response(429, headers={"Retry-After": "0"}),
        httpx.Response(429),
        httpx.ReadError("connection reset by peer"),
        httpx.RemoteProtocolError("server disconnected"),
    ],
)
async def test_a_transient_failure_is_tried_again(failure: httpx.Response | Exception) -> None:
    fake = FakeRegistry()
    fake.routes["https://reg.example/v2/team/app/manifests/"] = _answers(failure, failure)
    with trio.fail_after(10):
        async with _client(fake, limits=QUICK_RETRIES) as client:
            body, _ = await client.get_bytes(
                REF, "manifests", "latest", accept=None, max_bytes=1 << 20
            )
    assert body == MANIFEST
    assert fake.paths().count("https://reg.example/v2/team/app/manifests/latest") == 3


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (httpx.Response(404), NotFound),
        (httpx.Response(403), AuthError),
        (httpx.Response(501), RegistryUnavailable),
        (httpx.Response(418), RegistryError),
        (httpx.ConnectError("connection refused"), RegistryUnavailable),
        (httpx.ConnectTimeout("timed out"), RegistryUnavailable),
        (httpx.Response(429, headers={"Retry-After": "3600"}), TooManyRequests),
        (httpx.Response(503, headers={"Retry-After": "99999999999999"}), RegistryUnavailable),
    ],
)
async def test_a_lasting_failure_is_not_tried_again(
    failure: httpx.Response | Exception, error: type[Exception]
) -> None:
    """Not worth a second try: the answer would be the same, or the host is unreachable
    (a refused or timed-out connect), or the registry asks for a wait over the cap."""
    fake = FakeRegistry()
    fake.routes["https://reg.example/v2/team/app/manifests/"] = _answers(failure)
    with trio.fail_after(10):
        async with _client(fake, limits=QUICK_RETRIES) as client:
            with pytest.raises(error) as info:
                await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)
    assert fake.paths().count("https://reg.example/v2/team/app/manifests/latest") == 1
    assert "gave up" not in str(info.value)


@pytest.mark.parametrize(
    ("retry_after", "said"),
    [("3600", "asks to wait 3600 s"), ("99999999999999", "asks to wait an unbounded time")],
)
async def test_a_retry_after_over_the_cap_fails_at_once_saying_so(
    retry_after: str, said: str
) -> None:
    fake = FakeRegistry()
    fake.routes["https://reg.example/v2/team/app/manifests/"] = _answers(
        httpx.Response(429, headers={"Retry-After": retry_after})
    )
    async with _client(fake, limits=QUICK_RETRIES) as client:
        with pytest.raises(TooManyRequests) as info:
            await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)
    assert said in str(info.value) and "over the 60 s a pull waits" in str(info.value)


async def test_retries_are_bounded_and_the_error_says_how_many_attempts() -> None:
    fake = FakeRegistry()
    fake.routes["https://reg.example/v2/team/app/manifests/"] = lambda r: httpx.Response(503)
    with trio.fail_after(10):
        async with _client(fake, limits=QUICK_RETRIES) as client:
            with pytest.raises(RegistryUnavailable) as info:
                await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)
    assert "HTTP 503" in str(info.value) and "gave up after 3 attempts" in str(info.value)
    assert fake.paths().count("https://reg.example/v2/team/app/manifests/latest") == 3


async def test_a_stall_is_tried_once_more_then_given_up_on_saying_so() -> None:
    """A server that accepted the request and sent nothing for the read timeout: each
    attempt costs the whole timeout, and all five were made (5 minutes by default). One
    more is; a second stall in a row is the error, which says what happened."""
    fake = FakeRegistry()
    stall = httpx.ReadTimeout("timed out")
    fake.routes["https://reg.example/v2/team/app/manifests/"] = _answers(stall, stall, stall)
    limits = Limits(retries=4, retry_wait_s=0.001, read_timeout_s=7.5)
    with trio.fail_after(10):
        async with _client(fake, limits=limits) as client:
            with pytest.raises(RegistryUnavailable) as info:
                await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)
    assert fake.paths().count("https://reg.example/v2/team/app/manifests/latest") == 2
    assert str(info.value) == (
        "no data from reg.example for 7.5 s while fetching manifest latest; the registry or"
        " the network is stalling: try again later; 2 times in a row, so not tried again"
        f" ({REF})"
    )
    assert info.value.stalled_s == 7.5


async def test_stalls_broken_by_another_failure_are_not_in_a_row() -> None:
    stall = httpx.ReadTimeout("timed out")
    fake = FakeRegistry()
    fake.routes["https://reg.example/v2/team/app/manifests/"] = _answers(
        stall, httpx.Response(503), stall
    )
    with trio.fail_after(10):
        async with _client(fake, limits=Limits(retries=3, retry_wait_s=0.001)) as client:
            body, _ = await client.get_bytes(
                REF, "manifests", "latest", accept=None, max_bytes=1 << 20
            )
    assert body == MANIFEST


async def test_a_failing_api_check_is_tried_again_too() -> None:
    fake = FakeRegistry()
    fake.routes["https://reg.example/v2/"] = _answers(httpx.Response(503), httpx.Response(200))
    async with _client(fake, limits=QUICK_RETRIES) as client:
        await client.authenticate(REF)
    assert fake.paths().count("https://reg.example/v2/") == 2


async def test_an_expired_signed_url_asks_the_registry_again() -> None:
    """RELIABILITY.md: a CDN redirect whose signed URL expired (403): ask the registry
    again, which signs a fresh one."""
    fake = FakeRegistry(challenge=BEARER)
    signed = iter(["expired", "fresh"])
    fake.routes["https://reg.example/v2/team/app/manifests/"] = lambda r: _redirect(
        f"https://cdn.example/m?sig={next(signed)}"
    )(r)
    fake.routes["https://cdn.example/"] = lambda r: (
        httpx.Response(403)
        if r.url.params["sig"] == "expired"
        else httpx.Response(200, content=MANIFEST)
    )
    async with _client(fake, limits=QUICK_RETRIES) as client:
        body, _ = await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=1 << 20)
    assert body == MANIFEST
    assert [r.url.params["sig"] for r in fake.requests if r.url.host == "cdn.example"] == [
        "expired",
        "fresh",
    ]


# --- a foreign layer's URLs ------------------------------------------------------------


async def _read_url(client: RegistryClient, url: str, offset: int = 0) -> bytes:
    async with client.stream_url(REF, url, BLOB_DIGEST, offset=offset) as response:
        return b"".join([chunk async for chunk in response.aiter_raw()])


async def test_a_layers_url_gets_no_credentials_nor_token() -> None:
    # CVE-2020-15157: containerd sent the registry's credentials to the URLs a manifest
    # named, so whoever wrote the manifest could collect them.
    for challenge in ('Basic realm="reg"', BEARER):
        fake = FakeRegistry(challenge=challenge)
        fake.routes["https://cdn.example/layers/"] = fake._blob
        with trio.fail_after(5):
            async with _client(fake, credentials=CREDS) as client:
                assert await _read_blob(client) == BLOB  # the registry got them
                assert await _read_url(client, "https://cdn.example/layers/x?sig=1") == BLOB
                assert await _read_url(client, "https://cdn.example/layers/x", 100) == BLOB[100:]
        [first, resumed] = [r for r in fake.requests if r.url.host == "cdn.example"]
        assert first.url.params["sig"] == "1"
        assert resumed.headers["Range"] == "bytes=100-"
        for request in (first, resumed):
            assert "Authorization" not in request.headers and "Cookie" not in request.headers
            assert request.headers["Accept-Encoding"] == "identity"
        registry_blob = next(r for r in fake.requests if "/blobs/" in r.url.path)
        assert "Authorization" in registry_blob.headers


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://cdn.example/layer", "is plain http, which is used only for loopback hosts"),
        ("ftp://cdn.example/layer", "is not an http or https URL"),
        ("cdn.example/layer", "is not an http or https URL"),
        ("https://", "is not"),
        ("https://bob:pw-in-url@cdn.example/layer", "carries user info"),
        ("https://10.0.0.1/layer", "is on a private address and the registry reg.example"),
        ("https://169.254.169.254/latest", "is on a link-local address"),
        ("https://metadata.example/latest", "is on a link-local address"),
    ],
)
async def test_a_layers_url_is_refused_before_any_request(url: str, why: str) -> None:
    fake = FakeRegistry()
    names = {"reg.example": ["93.184.216.34"], "metadata.example": ["169.254.169.254"]}
    with trio.fail_after(5):
        async with _client(fake, names=names) as client:
            with pytest.raises(RegistryError) as info:
                await _read_url(client, url)
    assert why in info.value.message
    assert not info.value.transient
    assert info.value.digest == str(BLOB_DIGEST) and info.value.ref == str(REF)
    assert "pw-in-url" not in str(info.value)
    assert fake.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "https://[::ffff:169.254.169.254]/latest",
        "https://[2002:a9fe:a9fe::]/latest",
        "https://[64:ff9b::a9fe:a9fe]/latest",
        "https://mapped.example/latest",
    ],
)
async def test_a_link_local_url_written_as_ipv6_is_refused_for_a_private_registry(
    url: str,
) -> None:
    # A registry on a private network (a corporate mirror on 10.1.1.1) may name private
    # URLs, never the metadata address; written as an IPv4-mapped (or 6to4, NAT64) IPv6
    # address it was taken for neither link-local nor loopback, and the GET went out.
    fake = FakeRegistry()
    names = {"reg.example": ["10.1.1.1"], "mapped.example": ["::ffff:169.254.169.254"]}
    with trio.fail_after(5):
        async with _client(fake, names=names) as client:
            with pytest.raises(RegistryError) as info:
                await _read_url(client, url)
    assert "is on a link-local address and the registry reg.example" in info.value.message
    assert fake.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:2375/containers/json",
        "https://localhost:2376/containers/json",
        "https://docker.example:2376/containers/json",  # resolves to 127.0.0.1
        "https://0.0.0.0:2376/containers/json",  # reaches this machine too
        "https://[::ffff:127.0.0.1]:2376/containers/json",
        "https://[64:ff9b::127.0.0.1]:2376/containers/json",
    ],
)
async def test_a_loopback_url_is_refused_for_a_registry_on_a_private_network(url: str) -> None:
    # Loopback counted as private: a registry on a private network could name this
    # machine's docker daemon as a layer URL, and the GET went out.
    fake = FakeRegistry()
    names = {"reg.example": ["10.1.1.1"], "docker.example": ["127.0.0.1"]}
    with trio.fail_after(5):
        async with _client(fake, names=names) as client:
            with pytest.raises(RegistryError) as info:
                await _read_url(client, url)
    assert "is on a loopback address and the registry reg.example is not" in info.value.message
    assert fake.requests == []


async def test_a_registry_reaches_the_urls_of_its_own_kind_of_network() -> None:
    fake = FakeRegistry()
    fake.routes["https://10.1.1.2/"] = fake._blob
    fake.routes["http://127.0.0.1:8080/"] = fake._blob
    fake.routes["https://10.1.1.3/"] = fake._blob
    names = {"reg.example": ["10.1.1.1"]}
    loopback = parse_reference("127.0.0.1:5000/team/app")
    with trio.fail_after(5):
        async with _client(fake, names=names) as client:
            assert await _read_url(client, "https://10.1.1.2/layer") == BLOB  # private
            for url in ("http://127.0.0.1:8080/layer", "https://10.1.1.3/layer"):
                async with client.stream_url(loopback, url, BLOB_DIGEST) as response:
                    assert b"".join([c async for c in response.aiter_raw()]) == BLOB
            with pytest.raises(RegistryError, match="is on a link-local address"):
                async with client.stream_url(loopback, "https://169.254.169.254/", BLOB_DIGEST):
                    pass


async def test_plain_http_to_a_layers_url_only_where_a_registry_could_use_it() -> None:
    fake = FakeRegistry()
    fake.routes["http://cdn.example/"] = fake._blob
    fake.routes["http://127.0.0.1:8080/"] = fake._blob
    with trio.fail_after(5):
        async with _client(fake, insecure_registries=("cdn.example",)) as client:
            assert await _read_url(client, "http://cdn.example/layer") == BLOB
        loopback = parse_reference("127.0.0.1:5000/team/app")
        async with _client(fake) as client:
            url = "http://127.0.0.1:8080/layer"
            async with client.stream_url(loopback, url, BLOB_DIGEST) as response:
                assert b"".join([c async for c in response.aiter_raw()]) == BLOB


@pytest.mark.parametrize(
    ("response", "error", "text", "transient"),
    [
        (httpx.Response(404), NotFound, "answered HTTP 404", False),
        (httpx.Response(403), RegistryError, "sends no credentials to the URLs", False),
        (httpx.Response(503), RegistryUnavailable, "answered HTTP 503", True),
        (httpx.Response(429), TooManyRequests, "answered HTTP 429", True),
    ],
)
async def test_a_layers_url_status_names_the_url_without_its_query(
    response: httpx.Response, error: type[RegistryError], text: str, transient: bool
) -> None:
    fake = FakeRegistry()
    fake.routes["https://cdn.example/"] = lambda request: response
    with trio.fail_after(5):
        async with _client(fake, limits=Limits(retries=0)) as client:
            with pytest.raises(error) as info:
                await _read_url(client, "https://cdn.example/layer?X-Amz-Signature=s3cr3t")
    assert type(info.value) is error
    assert info.value.message.startswith("https://cdn.example/layer?[redacted] answered HTTP")
    assert text in info.value.message
    assert "s3cr3t" not in str(info.value)
    assert info.value.transient is transient


async def test_a_layers_url_that_redirects_is_named_with_where_it_went() -> None:
    fake = FakeRegistry()
    fake.routes["https://cdn.example/"] = _redirect("https://store.example/o?sig=abc")
    fake.routes["https://store.example/"] = lambda request: httpx.Response(404)
    with trio.fail_after(5):
        async with _client(fake) as client:
            with pytest.raises(NotFound) as info:
                await _read_url(client, "https://cdn.example/layer")
    assert "store.example, where https://cdn.example/layer redirected," in info.value.message
    assert "abc" not in str(info.value)
    assert all("Authorization" not in r.headers for r in fake.requests)


async def test_a_layers_url_gets_none_of_the_registrys_cookies() -> None:
    # Cookies match a host on any port: a registry's session cookie went along to a
    # layer URL on the same host.
    fake = FakeRegistry()

    def blob_with_cookie(request: httpx.Request) -> httpx.Response:
        response = fake._blob(request)
        response.headers["Set-Cookie"] = "session=registry-session; Path=/"
        return response

    fake.routes["https://reg.example/v2/team/app/blobs/"] = blob_with_cookie
    fake.routes["https://reg.example:8443/"] = fake._blob
    with trio.fail_after(5):
        async with _client(fake) as client:
            assert await _read_blob(client) == BLOB
            assert await _read_blob(client) == BLOB
            assert await _read_url(client, "https://reg.example:8443/layer") == BLOB
    second_registry_blob = [r for r in fake.requests if "/blobs/" in r.url.path][1]
    assert "registry-session" in second_registry_blob.headers.get("Cookie", "")
    [url_request] = [r for r in fake.requests if r.url.port == 8443]
    assert "Cookie" not in url_request.headers


# --- redirects from loopback servers ---------------------------------------------------


def _loopback_source(
    fixture_server: Callable[[], FixtureServer], source: str, *replies: Reply
) -> tuple[Reference, str | None]:
    """A loopback registry, and for ``source`` "url" a loopback layer URL, whose blob
    request is answered with ``replies`` in turn; returns the reference and the URL."""
    registry = fixture_server()
    ref = parse_reference(f"{registry.host}/team/app")
    if source == "registry":
        registry.route(f"/v2/team/app/blobs/{BLOB_DIGEST}", *replies)
        return ref, None
    files = fixture_server()
    files.route("/layer", *replies)
    return ref, f"{files.url}/layer"


async def _read_from(client: RegistryClient, ref: Reference, url: str | None) -> bytes:
    opened = (
        client.stream_blob(ref, BLOB_DIGEST)
        if url is None
        else client.stream_url(ref, url, BLOB_DIGEST)
    )
    async with opened as response:
        return b"".join([chunk async for chunk in response.aiter_raw()])


@pytest.mark.parametrize("source", ["registry", "url"])
async def test_a_plain_http_redirect_goes_only_where_plain_http_could_go(
    fixture_server: Callable[[], FixtureServer], source: str
) -> None:
    """A loopback registry, or a layer's URL on loopback, is fetched over plain http. Its
    redirect to plain http on another host was followed to any host at all, where plain
    http is used only for loopback hosts and those listed with --insecure-registry."""
    storage = fixture_server()
    storage.route("/b", Reply(200, {}, BLOB))
    port = storage.url.rpartition(":")[2]
    ref, url = _loopback_source(
        fixture_server,
        source,
        Reply(307, {"Location": f"http://storage.invalid:{port}/b?sig=SIGNED"}),
        Reply(307, {"Location": f"http://localhost:{port}/b"}),
    )
    with trio.fail_after(20):
        async with RegistryClient.open(RegistryOptions(), Limits(retries=0)) as client:
            with pytest.raises(RegistryError) as info:
                await _read_from(client, ref, url)
            assert await _read_from(client, ref, url) == BLOB  # loopback: followed
    assert f"refused a redirect to plain http on storage.invalid:{port} for blob" in str(info.value)
    assert "--insecure-registry" in info.value.message
    assert not info.value.transient and "SIGNED" not in str(info.value)
    assert storage.count(path="/b") == 1


@pytest.mark.parametrize("source", ["registry", "url"])
async def test_a_loopback_registry_may_not_redirect_to_a_link_local_address(
    fixture_server: Callable[[], FixtureServer], source: str
) -> None:
    """A registry on loopback counts as private, not link-local: its storage may be on a
    private network, but a redirect to the metadata service's range is refused, here by
    what the storage name resolves to, before any connection to it."""
    ref, url = _loopback_source(
        fixture_server,
        source,
        Reply(307, {"Location": "https://metadata.invalid/latest/meta-data/iam?sig=SIGNED"}),
    )
    names = {"metadata.invalid": ["169.254.169.254"]}
    limits = Limits(retries=0, connect_timeout_s=2.0)
    with trio.fail_after(20):
        async with RegistryClient.open(
            RegistryOptions(), limits, resolve=_resolver(names)
        ) as client:
            with pytest.raises(RegistryError) as info:
                await _read_from(client, ref, url)
    assert "to metadata.invalid, a link-local address" in info.value.message
    assert f"the registry {ref.api_host} is not on one; refused" in info.value.message
    assert not info.value.transient and "SIGNED" not in str(info.value)


async def test_a_cookie_a_layers_url_sets_never_reaches_the_registry() -> None:
    # httpx's client.send stored the layer URL's Set-Cookie in the shared jar, and
    # cookies ignore the port: the registry's next GET carried the planted session.
    fake = FakeRegistry()

    def layer_with_cookie(request: httpx.Request) -> httpx.Response:
        response = fake._blob(request)
        response.headers["Set-Cookie"] = "session=attacker; Path=/"
        return response

    def redirect_with_cookie(request: httpx.Request) -> httpx.Response:
        response = _redirect("https://reg.example:8443/layer")(request)
        response.headers["Set-Cookie"] = "hop=attacker; Path=/"
        return response

    fake.routes["https://reg.example:8443/"] = layer_with_cookie
    fake.routes["https://reg.example:9443/"] = redirect_with_cookie
    with trio.fail_after(5):
        async with _client(fake) as client:
            assert await _read_url(client, "https://reg.example:8443/layer") == BLOB
            assert await _read_url(client, "https://reg.example:9443/layer") == BLOB
            assert await _read_blob(client) == BLOB
            await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=1000)
    registry_requests = [r for r in fake.requests if r.url.port is None]
    assert len(registry_requests) == 3  # /v2/, the blob, the manifest
    assert all("attacker" not in r.headers.get("Cookie", "") for r in registry_requests)
    assert all("Cookie" not in r.headers for r in fake.requests)


async def test_the_token_service_and_the_registry_get_none_of_each_others_cookies() -> None:
    # fetch_token stored the token service's Set-Cookie in the client's jar, shared with
    # the registry's requests, and cookies ignore the port: a realm on the registry's
    # host, another port, planted a session the registry then received. The registry's
    # own session cookie went to the token service the same way.
    fake = FakeRegistry(challenge='Bearer realm="https://reg.example:8443/token"')

    def registry(request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v2/":
            return fake._blob(request) if "/blobs/" in request.url.path else httpx.Response(200)
        response = httpx.Response(401, headers={"WWW-Authenticate": fake.challenge or ""})
        response.headers["Set-Cookie"] = "session=registry-session; Path=/"
        return response

    def token_with_cookie(request: httpx.Request) -> httpx.Response:
        fake.tokens_issued += 1
        response = httpx.Response(200, json={"token": f"tok{fake.tokens_issued}"})
        response.headers["Set-Cookie"] = "planted=token-service; Path=/"
        return response

    fake.routes["https://reg.example/v2/"] = registry
    fake.routes["https://reg.example:8443/token"] = token_with_cookie
    with trio.fail_after(5):
        async with _client(fake) as client:
            assert await _read_blob(client) == BLOB
            await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=1000)
    [token_request] = [r for r in fake.requests if r.url.port == 8443]
    assert "Cookie" not in token_request.headers
    registry_gets = [r for r in fake.requests if r.url.port is None and r.url.path != "/v2/"]
    assert len(registry_gets) == 2  # the blob, the manifest
    for request in registry_gets:
        assert request.headers["Authorization"] == "Bearer tok1"
        assert request.headers.get("Cookie") == "session=registry-session"  # its own, kept


async def test_a_layers_url_that_stalls_is_blamed_not_the_registry() -> None:
    # "reg.example took more than 0.2 s", "the registry or the network is stalling":
    # the registry was not even asked.
    fake = FakeRegistry()

    async def never_answers(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    fake.routes["https://cdn.example/"] = never_answers  # type: ignore[assignment]
    with trio.fail_after(5):
        async with _client(fake, limits=Limits(response_deadline_s=0.2)) as client:
            with pytest.raises(RegistryUnavailable) as info:
                await _read_url(client, "https://cdn.example/layer?sig=s3cr3t")
    assert info.value.message == (
        f"cdn.example took more than 0.2 s to answer for blob {BLOB_DIGEST} from"
        " https://cdn.example/layer?[redacted]; that server or the network is stalling,"
        " pull again"
    )
    assert fake.requests[0].url.host == "cdn.example"


async def test_a_token_service_past_the_deadline_is_blamed_not_the_registry() -> None:
    # "reg.example took more than 0.2 s to answer for authentication": the registry had
    # answered its challenge at once; the token service it named never answered.
    fake = FakeRegistry(challenge=BEARER)

    async def never_answers(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    fake.routes["https://auth.example/token"] = never_answers  # type: ignore[assignment]
    with trio.fail_after(5):
        async with _client(fake, limits=Limits(response_deadline_s=0.2)) as client:
            with pytest.raises(RegistryUnavailable) as info:
                await client.authenticate(REF)
    assert info.value.message == (
        "the token service at auth.example took more than 0.2 s to answer for"
        " authentication; that server or the network is stalling, pull again;"
        " 2 times in a row, so not tried again"
    )


async def test_a_token_service_past_the_deadline_is_named_without_the_credentials() -> None:
    # The deadline's message named the realm's host as it was, where every other
    # message about the token service quotes it through the cut that knows the
    # credentials (a realm may carry what it was sent: ea5ed7e).
    realm = f"https://{SECRET}.evil.example/token"
    fake = FakeRegistry(challenge=f'Bearer realm="{realm}",service="x"')

    async def never_answers(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    fake.routes[realm] = never_answers  # type: ignore[assignment]
    names = {"reg.example": ["93.184.216.34"], f"{SECRET}.evil.example": ["93.184.216.35"]}
    limits = Limits(response_deadline_s=0.2)
    with trio.fail_after(5):
        async with _client(fake, credentials=CREDS, limits=limits, names=names) as client:
            with pytest.raises(RegistryUnavailable) as info:
                await client.authenticate(REF)
    assert info.value.message == (
        "the token service at [redacted].evil.example took more than 0.2 s to answer for"
        " authentication; that server or the network is stalling, pull again;"
        " 2 times in a row, so not tried again"
    )


def _silent_first(answer: Handler) -> Callable[[httpx.Request], Awaitable[httpx.Response]]:
    """A route that never answers its first request (a server that hung once, until the
    response deadline) and answers each later one with ``answer``."""
    asked = 0

    async def route(request: httpx.Request) -> httpx.Response:
        nonlocal asked
        asked += 1
        if asked == 1:
            await trio.sleep_forever()
        return answer(request)

    return route


async def _stream_layer(client: RegistryClient, limits: Limits) -> bytes:
    """BLOB through the blob stage (``blob_stream``, with its retries) over ``client``."""
    layer = Descriptor(MediaType.OCI_LAYER_GZIP, BLOB_DIGEST, len(BLOB))
    chunks: list[bytes] = []
    send, receive = trio.open_memory_channel[bytes](4)

    async def collect() -> None:
        async with receive:
            async for chunk in receive:
                chunks.append(chunk)

    failure: RegistryError | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        try:  # raised after the nursery, not inside an ExceptionGroup
            await blob_stream(client, REF, layer, limits, send, None)
        except RegistryError as error:
            failure = error
    if failure is not None:
        raise failure
    return b"".join(chunks)


# A response deadline and retry waits short enough for a test.
QUICK_DEADLINE = Limits(response_deadline_s=0.2, retry_wait_s=0.01, retry_max_wait_s=0.01)


@pytest.mark.parametrize("server", ["registry", "token service", "storage server"])
async def test_a_server_past_the_deadline_once_is_asked_again(server: str) -> None:
    """A missed response deadline was final: a server that hung once (a backend behind a
    balancer, a storage server behind a signed URL) failed the pull that a second
    request, as after a broken connection or a 503, would have finished. The registry's
    manifest, the token service's token and a blob's storage server hang on their first
    request; the second (for the blob: the registry asked again, a fresh redirect)
    answers."""
    fake = FakeRegistry(challenge=BEARER if server == "token service" else None)
    blobs = "https://reg.example/v2/team/app/blobs/"
    if server == "registry":
        fake.routes["https://reg.example/v2/team/app/manifests/"] = _silent_first(
            lambda request: httpx.Response(200, content=MANIFEST)
        )
    elif server == "token service":
        fake.routes["https://auth.example/token"] = _silent_first(
            lambda request: httpx.Response(200, json={"token": "tok1"})
        )
    else:
        fake.routes[blobs] = _redirect("https://cdn.example/b?sig=SIGNED")
        fake.routes["https://cdn.example/b"] = _silent_first(lambda request: streamed(200, BLOB))
    with trio.fail_after(5):
        async with _client(fake, limits=QUICK_DEADLINE) as client:
            if server == "storage server":
                assert await _stream_layer(client, QUICK_DEADLINE) == BLOB
            else:
                body, _ = await client.get_bytes(
                    REF, "manifests", "latest", accept=None, max_bytes=1000
                )
                assert body == MANIFEST
    asked = {"registry": "reg.example", "token service": "auth.example"}.get(server, "cdn.example")
    assert len([r for r in fake.requests if r.url.host == asked and r.url.path != "/v2/"]) == 2
    if server == "storage server":
        assert len([r for r in fake.requests if r.url.path.startswith("/v2/team/app/blobs/")]) == 2


async def test_a_server_past_the_deadline_every_time_fails_after_the_retries() -> None:
    # With the stall rule set to allow them, the misses are retried up to
    # Limits.retries, and the last error still names the server being asked (the storage
    # server, not the registry that redirected to it) and how long it was waited for.
    fake = FakeRegistry()

    async def never_answers(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    fake.routes["https://reg.example/v2/team/app/blobs/"] = _redirect(
        "https://cdn.example/b?sig=SIGNED"
    )
    fake.routes["https://cdn.example/b"] = never_answers  # type: ignore[assignment]
    limits = dataclasses.replace(QUICK_DEADLINE, retries=2, stall_retries=5)
    with trio.fail_after(5):
        async with _client(fake, limits=limits) as client:
            with pytest.raises(RegistryUnavailable) as info:
                await _stream_layer(client, limits)
    assert info.value.message == (
        f"cdn.example took more than 0.2 s to answer for blob {BLOB_DIGEST}; that server or"
        " the network is stalling, pull again; gave up after 3 attempts"
    )
    assert len([r for r in fake.requests if r.url.host == "cdn.example"]) == 3


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (httpx.ReadTimeout("timed out"), "no data from cdn.example for 60 s while fetching"),
        (httpx.ConnectTimeout("timed out"), "that server may be overloaded or unreachable"),
        (httpx.ConnectError("refused"), "that server may be down or unreachable from here"),
    ],
)
async def test_a_layers_url_that_fails_in_transport_is_blamed_not_the_registry(
    failure: Exception, said: str
) -> None:
    fake = FakeRegistry()
    fake.routes["https://cdn.example/"] = _answers(failure)
    with trio.fail_after(5):
        async with _client(fake) as client:
            with pytest.raises(RegistryUnavailable) as info:
                await _read_url(client, "https://cdn.example/layer")
    assert said in info.value.message and "cdn.example" in info.value.message
    assert "registry" not in info.value.message


async def test_a_layers_url_retry_after_names_that_server() -> None:
    fake = FakeRegistry()
    fake.routes["https://cdn.example/"] = lambda r: httpx.Response(
        429, headers={"Retry-After": "3600"}
    )
    with trio.fail_after(5):
        async with _client(fake) as client:
            with pytest.raises(TooManyRequests) as info:
                await _read_url(client, "https://cdn.example/layer")
    assert info.value.retry_after_s == 3600 and info.value.retry_after_from == "cdn.example"
    with pytest.raises(TooManyRequests) as retried:
        retry_wait(info.value, 1, Limits())
    assert "cdn.example asks to wait 3600 s, over the 60 s a pull waits" in str(retried.value)
    assert "registry" not in str(retried.value)


# -- DNS rebinding: a name is reached only at the addresses its check classified ----------
#
# A simulated network (tests/support/network.py) puts "public" and "internal" hosts on
# loopback servers, with TLS certificates that name the hosts; its DNS answers a rebinding
# name with a public address on the first lookup and an internal one after. The check
# looked the name up, then httpcore looked it up again to connect: the request went to
# the second answer, which no check had seen.

PUBLIC_REGISTRY = "93.184.216.34"
METADATA = "169.254.169.254"


@contextlib.contextmanager
def _internet(
    tmp_path: Path, hosts: dict[str, str], answers: dict[str, list[list[str]]]
) -> Iterator[tuple[Network, dict[str, FixtureServer], RegistryOptions]]:
    """A TLS fixture server on port 443 of each address in ``hosts`` (address -> what to
    call its server), names answered from ``answers``, one certificate naming them all,
    and the options that trust it."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*answers).configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    network = Network(DNS(answers))
    servers: dict[str, FixtureServer] = {}
    with contextlib.ExitStack() as stack:
        for address, label in hosts.items():
            servers[label] = stack.enter_context(run_fixture_server(server_context))
            network.route(address, 443, servers[label].port)
        yield network, servers, RegistryOptions(ca_file=ca_file)


def _on(network: Network, options: RegistryOptions) -> Any:
    return RegistryClient.open(
        options, Limits(retries=0, connect_timeout_s=5.0), resolve=network.dns, network=network
    )


async def test_a_layers_url_whose_name_rebinds_is_fetched_from_the_checked_address(
    tmp_path: Path,
) -> None:
    answers = {"files.example": [["93.184.216.40"], [METADATA]]}
    hosts = {"93.184.216.40": "storage", METADATA: "metadata"}
    with _internet(tmp_path, hosts, answers) as (network, servers, options):
        servers["storage"].route("/layer", Reply(200, {}, BLOB))
        servers["metadata"].route("/layer", Reply(200, {}, b"iam credentials"))
        with trio.fail_after(20):
            async with _on(network, options) as client:
                body = await _read_from(client, REF, "https://files.example/layer?sig=S")
    assert servers["metadata"].requests == []
    assert body == BLOB
    assert network.connects == [("93.184.216.40", 443)]
    assert network.dns.lookups["files.example"] == 1  # checked and connected by one answer


async def test_a_token_realm_whose_name_rebinds_gets_the_token_request_at_the_checked_address(
    tmp_path: Path,
) -> None:
    answers = {
        "reg.example": [[PUBLIC_REGISTRY]],
        "auth.example": [["93.184.216.35"], [METADATA]],
    }
    hosts = {PUBLIC_REGISTRY: "registry", "93.184.216.35": "auth", METADATA: "metadata"}
    challenge = Reply.challenge("https://auth.example/token", "reg.example")

    def manifest(request: RecordedRequest) -> Reply:
        if request.headers.get("authorization") != "Bearer tok":
            return challenge
        return Reply(200, {"Content-Type": "application/json"}, MANIFEST)

    with _internet(tmp_path, hosts, answers) as (network, servers, options):
        servers["registry"].route("/v2/", challenge)
        servers["registry"].route("/v2/team/app/manifests/latest", manifest)
        servers["auth"].route("/token", Reply.json({"token": "tok"}))
        servers["metadata"].route("/token", Reply.json({"token": "metadata's"}))
        with trio.fail_after(20):
            async with _on(network, dataclasses.replace(options, credentials=CREDS)) as client:
                body, _ = await client.get_bytes(
                    REF, "manifests", "latest", accept=None, max_bytes=1000
                )
    assert servers["metadata"].requests == []  # nor the credentials sent with it
    assert body == MANIFEST
    assert servers["auth"].count(path="/token") == 1
    assert not network.connected_to(METADATA)


async def test_a_redirect_target_whose_name_rebinds_is_reached_at_the_checked_address(
    tmp_path: Path,
) -> None:
    answers = {
        "reg.example": [[PUBLIC_REGISTRY]],
        "cdn.example": [["93.184.216.36"], ["127.0.0.1"]],
    }
    hosts = {PUBLIC_REGISTRY: "registry", "93.184.216.36": "cdn", "127.0.0.1": "daemon"}
    with _internet(tmp_path, hosts, answers) as (network, servers, options):
        servers["registry"].route(
            f"/v2/team/app/blobs/{BLOB_DIGEST}",
            Reply(307, {"Location": "https://cdn.example/blob?sig=SIGNED"}),
        )
        servers["cdn"].route("/blob", Reply(200, {}, BLOB))
        servers["daemon"].route("/blob", Reply(200, {}, b"this machine's daemon"))
        with trio.fail_after(20):
            async with _on(network, options) as client:
                body = await _read_from(client, REF, None)
    assert servers["daemon"].requests == []
    assert body == BLOB
    assert not network.connected_to("127.0.0.1")
    assert network.dns.lookups["cdn.example"] == 1


@pytest.mark.parametrize(
    "host", ["a" * 64 + ".example", "files..example", "x" * 300], ids=["label", "empty", "long"]
)
async def test_a_layers_url_on_a_name_dns_cannot_ask_for_is_a_registry_error(host: str) -> None:
    """The system's lookup (trio's getaddrinfo) refuses such a name with a UnicodeError
    from the idna codec, not an OSError: it went through the address check and out of
    the registry client as it was, a crash where the pull says what was wrong."""
    with trio.fail_after(10):
        async with RegistryClient.open(RegistryOptions(), Limits(retries=0)) as client:
            with pytest.raises(RegistryUnavailable) as info:
                await _read_from(client, REF, f"https://{host}/layer")
    assert f"cannot connect to {host} (" in info.value.message
    assert "label" in info.value.message
    assert not info.value.transient


async def test_a_name_that_did_not_resolve_for_its_check_does_not_resolve_to_connect(
    tmp_path: Path,
) -> None:
    """A name with no address for the check (none to classify) answered the connect's own
    lookup with the metadata address; the failed lookup is the name's answer now."""
    answers = {"files.example": [[], [METADATA]]}
    with _internet(tmp_path, {METADATA: "metadata"}, answers) as (network, servers, options):
        servers["metadata"].route("/layer", Reply(200, {}, b"iam credentials"))
        with trio.fail_after(20):
            async with _on(network, options) as client:
                with pytest.raises(RegistryUnavailable) as info:
                    await _read_from(client, REF, "https://files.example/layer")
    assert servers["metadata"].requests == []
    assert "cannot connect to files.example (the name resolves to no address)" in str(info.value)
    assert not info.value.transient


async def test_a_kept_alive_connection_reaches_only_where_a_new_one_could(
    tmp_path: Path,
) -> None:
    """A layer URL on a private host, fetched for a registry on the same private network,
    leaves a connection in the pool. The same client is then asked for that URL for a
    public registry, and the name now answers a public address: the check passed on the
    new answer and the pooled connection took the request to the private host. The name
    keeps its first answer, so the check refuses it as a new connection would be."""
    answers = {
        "mirror.corp": [["10.0.0.5"]],
        "reg.example": [[PUBLIC_REGISTRY]],
        "files.corp": [["10.0.0.6"], ["93.184.216.50"]],
    }
    hosts = {"10.0.0.6": "private", "93.184.216.50": "public"}
    url = "https://files.corp/layer"
    with _internet(tmp_path, hosts, answers) as (network, servers, options):
        for server in servers.values():
            server.route("/layer", Reply(200, {}, BLOB))
        with trio.fail_after(20):
            async with _on(network, options) as client:
                assert await _read_from(client, parse_reference("mirror.corp/team/app"), url)
                with pytest.raises(RegistryError) as info:
                    await _read_from(client, REF, url)
    assert servers["private"].count(path="/layer") == 1
    assert servers["public"].requests == []
    assert (
        f"the URL {url} for layer {BLOB_DIGEST} is on a private address and the registry"
        " reg.example is not; refused"
    ) in info.value.message
    assert network.connects == [("10.0.0.6", 443)]


async def test_a_name_with_several_addresses_is_reached_at_the_one_that_answers(
    tmp_path: Path,
) -> None:
    """The addresses of a pinned name are tried in turn (the first here is routed nowhere),
    the certificate still checked against the name, not the address."""
    answers = {"files.example": [["93.184.216.41", "93.184.216.42"]]}
    with _internet(tmp_path, {"93.184.216.42": "storage"}, answers) as (
        network,
        servers,
        options,
    ):
        servers["storage"].route("/layer", Reply(200, {}, BLOB))
        with trio.fail_after(20):
            async with _on(network, options) as client:
                assert await _read_from(client, REF, "https://files.example/layer") == BLOB
    assert network.connects == [("93.184.216.41", 443), ("93.184.216.42", 443)]


async def test_a_registry_whose_own_name_rebinds_is_classified_where_it_was_reached(
    tmp_path: Path,
) -> None:
    """The registry is compared by its own addresses: looked up again for the check, a
    rebinding registry name answered the metadata address and so was "on" link-local,
    and its link-local token realm passed. It is where its connections went."""
    answers = {"reg.example": [[PUBLIC_REGISTRY], [METADATA]]}
    hosts = {PUBLIC_REGISTRY: "registry", METADATA: "metadata"}
    with _internet(tmp_path, hosts, answers) as (network, servers, options):
        servers["registry"].route("/v2/", Reply.challenge(f"https://{METADATA}/token", "reg"))
        servers["metadata"].route("/token", Reply.json({"token": "metadata's"}))
        with trio.fail_after(20):
            async with _on(network, options) as client:
                with pytest.raises(AuthError) as info:
                    await client.authenticate(REF)
    assert not network.connected_to(METADATA)
    assert (
        f"reg.example named a token service on the link-local address {METADATA}; refused"
        in info.value.message
    )


# --- hosts the registry chose, named without the credentials ---------------------------

EVIL = "93.184.216.36"  # a storage server on a name the registry made up
UNROUTED = "93.184.216.37"  # an address no server answers at


@contextlib.contextmanager
def _every_log_line() -> Iterator[list[Any]]:
    """Every log line, debug included, as its fields were given, before any processor
    (whatever level another test configured)."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(**saved)


@pytest.mark.parametrize("secret", ["Hunter2-Secret", MIXED_CASE_BASIC], ids=["password", "basic"])
@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("private", "reg.example redirected blob {digest} to [redacted].evil.example, a private"),
        ("plain http", "refused a redirect from https to plain http ([redacted].evil.example)"),
        ("503", "the storage server [redacted].evil.example that reg.example redirected to failed"),
        ("unreachable", "cannot connect to [redacted].evil.example ("),
        ("too long", "the storage server [redacted].evil.example (redirected from the registry)"),
        (
            "layer URL",
            "the URL https://[redacted].evil.example/layer?[redacted] for layer {digest} is on"
            " a private address",
        ),
    ],
    ids=["private", "plain-http", "503", "unreachable", "too-long", "layer-url"],
)
async def test_a_server_the_registry_named_after_the_credentials_is_named_without_them(
    tmp_path: Path, secret: str, case: str, said: str
) -> None:
    """A registry that was sent the password (Basic) redirects the blob to a storage
    server, or its manifest names a layer URL, on a host it named after the password or
    the Basic credentials. The host, lower-cased by parsing, was named as it was in the
    refusals, the storage server's failures, the blob stage's messages and the
    "redirected" log line; only a token realm's host went through the credentials' cut."""
    host = f"{secret}.evil.example"
    address = {"private": "10.0.0.9", "layer URL": "10.0.0.9", "unreachable": UNROUTED}.get(
        case, EVIL
    )
    answers = {"reg.example": [[PUBLIC_REGISTRY]], host.lower(): [[address]]}
    hosts = {PUBLIC_REGISTRY: "registry", EVIL: "storage"}
    scheme = "http" if case == "plain http" else "https"
    urls: tuple[str, ...] = ()
    with _internet(tmp_path, hosts, answers) as (network, servers, options):
        registry, storage = servers["registry"], servers["storage"]
        registry.route("/v2/", Reply(401, {"WWW-Authenticate": 'Basic realm="reg"'}))
        blob_path = f"/v2/team/app/blobs/{BLOB_DIGEST}"
        if case == "layer URL":
            urls = (f"https://{host}/layer?sig=S",)  # the registry lacks the blob
        else:
            registry.route(blob_path, Reply(307, {"Location": f"{scheme}://{host}/b?sig=S"}))
        if case == "503":
            storage.route("/b", Reply.error(503, "UNAVAILABLE", "busy"))
        else:  # announcing 10 bytes more than the blob: too long
            storage.route("/b", Reply(200, {"Content-Length": str(len(BLOB) + 10)}, BLOB))
        layer = Descriptor(MediaType.OCI_LAYER_GZIP, BLOB_DIGEST, len(BLOB), urls=urls)
        send, receive = trio.open_memory_channel[bytes](4)
        receive.close()  # nothing is sent: each case fails before a body is read
        options = dataclasses.replace(options, credentials=MIXED_CASE)
        with _every_log_line() as logs, trio.fail_after(20):
            async with _on(network, options) as client:
                with pytest.raises((RegistryError, SizeMismatch)) as info:
                    await blob_stream(client, REF, layer, Limits(retries=0), send, None)
    message = str(info.value)
    logged = json.dumps(logs, default=str)
    for text in (message, logged):
        assert secret.lower() not in text.lower(), text
    assert said.format(digest=BLOB_DIGEST) in message, message
    if case in ("503", "too long"):  # the redirect was followed, and logged
        assert {"event": "redirected", "to_host": "[redacted].evil.example"}.items() <= next(
            line for line in logs if line["event"] == "redirected"
        ).items(), logs


async def test_a_server_named_after_the_token_is_named_without_it() -> None:
    # The client cut the tokens it holds out of the servers it names, but only as they
    # were issued: a registry that redirects to a host named after the token it was sent
    # had it named in lower case, as parsing spells a URL's host.
    token = "Opaque-Tok3n-XyZ42"
    fake = FakeRegistry(challenge=BEARER, token_ok=lambda sent: sent == token)
    fake.routes["https://auth.example/token"] = lambda r: httpx.Response(200, json={"token": token})
    fake.routes["https://reg.example/v2/team/app/blobs/"] = _redirect(
        f"https://{token}.evil.example/b"
    )
    names = {**PUBLIC, f"{token.lower()}.evil.example": ["10.0.0.9"]}
    with _every_log_line() as logs, trio.fail_after(5):
        async with _client(fake, names=names) as client:
            with pytest.raises(RegistryError) as info:
                await _read_blob(client)
    for text in (str(info.value), json.dumps(logs, default=str)):
        assert token.lower() not in text.lower(), text
    assert "to [redacted].evil.example, a private address" in info.value.message


# A password with letters outside ASCII, and the host named after it as a connection,
# the resolver, TLS and a registry writing it in ASCII spell it: its IDNA form.
UNICODE_CREDS = Credentials("bob", "pässwörd-Ünïcode")
IDNA_HOST = "xn--psswrd-ncode-gcb5n2dte.evil.example"


@pytest.mark.parametrize("case", ["layer URL", "realm", "lookup", "storage server's words"])
async def test_a_host_named_after_a_non_ascii_password_is_cut_in_its_idna_form(
    case: str,
) -> None:
    """The credentials' cut (``quotable``, through ``server_named`` and ``url_shown``)
    knew the password as typed and in lower case: a host named after it is parsed into
    that form, but its ASCII (IDNA) form came through where the registry wrote the URL so
    (a layer's URL, a realm), where the resolver names what it looked up, and where a
    storage server quotes its own URL."""
    fake = FakeRegistry(
        challenge=f'Bearer realm="ftp://{IDNA_HOST}/t"' if case == "realm" else None
    )
    blobs = "https://reg.example/v2/team/app/blobs/"
    if case in ("lookup", "storage server's words"):
        fake.routes[blobs] = _redirect(f"https://{IDNA_HOST}/b?sig=S")
    if case == "lookup":
        # As stages/_http.py's connect_tcp says it, naming the host httpcore asked for.
        looked_up = httpx.ConnectError(f"{IDNA_HOST}: [Errno -2] Name or service not known")
        fake.routes[f"https://{IDNA_HOST}/"] = _answers(looked_up)
    else:
        busy = {"errors": [{"code": "SLOW_DOWN", "message": f"busy: https://{IDNA_HOST}/b"}]}
        fake.routes[f"https://{IDNA_HOST}/"] = lambda request: httpx.Response(503, json=busy)
    address = "10.0.0.9" if case == "layer URL" else "93.184.216.35"
    names = {**PUBLIC, IDNA_HOST: [address], "pässwörd-ünïcode.evil.example": [address]}
    limits = Limits(retries=0)
    with _every_log_line() as logs, trio.fail_after(5):
        async with _client(fake, credentials=UNICODE_CREDS, names=names, limits=limits) as client:
            with pytest.raises(RegistryError) as info:
                if case == "layer URL":
                    await _read_url(client, f"https://{IDNA_HOST}/layer?sig=S")
                elif case == "realm":
                    await client.get_bytes(REF, "manifests", "latest", accept=None, max_bytes=100)
                else:
                    await _read_blob(client)
    message = str(info.value)
    for text in (message, json.dumps(logs, default=str, ensure_ascii=False)):
        assert "xn--psswrd" not in text and "pässwörd" not in text.lower(), text
    said = {
        "layer URL": "the URL https://[redacted].evil.example/layer?[redacted] for layer",
        "realm": "unusable token realm 'ftp://[redacted].evil.example/t'",
        "lookup": "(ConnectError: [redacted].evil.example: [Errno -2] Name or service",
        "storage server's words": "(SLOW_DOWN: busy: https://[redacted].evil.example/b)",
    }[case]
    assert said in message, message


@pytest.mark.parametrize(
    ("password", "written"),
    [
        # IDNA 2003 (Python's codec, trio's resolver) folds the final sigma.
        ("λόγος-Pässwort", "xn---psswort-1za103erc4byc7g"),
        # Both map the ligature "ﬁ" to "fi", and the password typed decomposed (as
        # macOS files keep text: "a" and a combining diaeresis) to its composed "ä".
        ("ﬁnance-Geheimnis-ä", "xn--finance-geheimnis--2tb"),
        ("pa\u0308sswort-geheim", "xn--psswort-geheim-5hb"),
    ],
    ids=["final-sigma", "ligature", "decomposed"],
)
async def test_a_host_a_registry_wrote_in_a_non_ascii_password_s_idna_form_is_named_without_it(
    password: str, written: str
) -> None:
    """A host the registry wrote in the ASCII form of the password as IDNA maps it is
    named by httpx in Unicode (``URL.host`` decodes it): the mapped password ("λόγοσ" for
    "λόγος", "fi" for "ﬁ", the composed "ä"), which is neither the password as typed nor
    in lower case nor an ``xn--`` form, so the cut missed it."""
    host = f"{written}.evil.example"
    shown = httpx.URL(f"https://{host}/").host
    assert shown != host and password.lower() not in shown  # the case this is about
    fake = FakeRegistry()
    fake.routes["https://reg.example/v2/team/app/blobs/"] = _redirect(f"https://{host}/b?sig=S")
    fake.routes[f"https://{host}/"] = lambda request: httpx.Response(503)
    names = {**PUBLIC, host: ["93.184.216.35"], shown: ["93.184.216.35"]}
    with _every_log_line() as logs, trio.fail_after(5):
        async with _client(
            fake, credentials=Credentials("bob", password), names=names, limits=Limits(retries=0)
        ) as client:
            with pytest.raises(RegistryError) as info:
                await _read_blob(client)
    message = str(info.value)
    for text in (message, json.dumps(logs, default=str, ensure_ascii=False)):
        assert shown.partition(".")[0] not in text and written not in text, text
    assert "the storage server [redacted].evil.example that reg.example" in message, message


async def test_a_host_with_a_non_ascii_password_inside_a_label_is_named_without_it() -> None:
    """A label holding the password among other letters is encoded whole by IDNA
    (``xn--x-psswort-geheim-xnb`` for ``x-pässwort-geheim``), and httpx names a host
    whose first label is ASCII in that form: none of the password's own forms is in it,
    so the cut let it through, where ``x-password-geheim`` would have been cut."""
    shown = httpx.URL("https://cdn.x-pässwort-geheim.evil.example/").host
    assert shown == "cdn.xn--x-psswort-geheim-xnb.evil.example"  # the case this is about
    fake = FakeRegistry()
    fake.routes["https://reg.example/v2/team/app/blobs/"] = _redirect(f"https://{shown}/b?sig=S")
    fake.routes[f"https://{shown}/"] = lambda request: httpx.Response(503)
    names = {**PUBLIC, shown: ["93.184.216.35"]}
    credentials = Credentials("bob", "pässwort-Geheim")
    with _every_log_line() as logs, trio.fail_after(5):
        async with _client(
            fake, credentials=credentials, names=names, limits=Limits(retries=0)
        ) as client:
            with pytest.raises(RegistryError) as info:
                await _read_blob(client)
    message = str(info.value)
    for text in (message, json.dumps(logs, default=str, ensure_ascii=False)):
        assert "xn--x-psswort" not in text and "pässwort" not in text.lower(), text
    said = "the storage server cdn.[redacted].evil.example that reg.example redirected to"
    assert said in message, message
