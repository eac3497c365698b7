"""Proxies: Go's rules for which request goes where (``stages/_proxy.py``,
``ProxySettings``), and pulls through a real forward proxy (``tests/support/forward_proxy``)
from the real registry.

The registry listens on 127.0.0.1, which is never proxied; the pulls name it
``registry.test``, a name only the proxy resolves (to 127.0.0.1), so a pull that works
went through the proxy without looking the name up itself.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

import pipeline
from pipeline import Platform, ProxySettings, PullOptions, RegistryOptions, Store, _cli, _logging
from stages._config import Limits
from stages._errors import RegistryUnavailable, UsageError
from stages._proxy import NoProxy, parse_proxy_url
from stages._reference import parse_reference
from stages._registry import RegistryClient
from tests.support import images
from tests.support.forward_proxy import ForwardProxy, run_forward_proxy
from tests.support.registry import RegistryServer
from tests.support.servers import Reply

pytestmark = pytest.mark.deadline(60)

AMD64 = Platform("linux", "amd64")
NAME = "registry.test"  # what the proxy resolves to 127.0.0.1, and nothing else does
PROXY_USER = "alice"
PROXY_PASSWORD = "pr0xy-s3cret-pw"
REPO_ROOT = Path(__file__).resolve().parent.parent


# --- the rules ----------------------------------------------------------------------


def test_upper_case_wins_when_set_and_not_empty() -> None:
    env = {
        "HTTPS_PROXY": "upper:1",
        "https_proxy": "lower:2",
        "HTTP_PROXY": "",
        "http_proxy": "lower:3",
        "no_proxy": "example.org",
    }
    settings = ProxySettings.from_environment(env)
    assert settings.https is not None and settings.https.host == "upper"
    assert settings.http is not None and settings.http.host == "lower"
    assert settings.proxy_for("https", "example.org", None) is None
    assert ProxySettings.from_environment({}) == ProxySettings()
    assert not ProxySettings().configured
    assert RegistryOptions().proxy == ProxySettings()


def test_each_scheme_goes_through_its_own_proxy() -> None:
    settings = ProxySettings(https_proxy="secure.proxy:8443", http_proxy="http://plain.proxy")
    via_https = settings.proxy_for("https", "reg.example", None)
    via_http = settings.proxy_for("http", "reg.example", 5000)
    assert via_https is not None and via_https.shown == "http://secure.proxy:8443"
    assert via_http is not None and via_http.shown == "http://plain.proxy:80"
    only_https = ProxySettings(https_proxy="secure.proxy:8443")
    assert only_https.proxy_for("http", "reg.example", None) is None


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("proxy.corp:3128", "http://proxy.corp:3128"),  # no scheme: http, as in Go
        ("proxy.corp", "http://proxy.corp:80"),
        ("https://Proxy.Corp", "https://proxy.corp:443"),
        ("http://[2001:db8::1]:3128/", "http://[2001:db8::1]:3128"),
        (" http://10.0.0.1:8080 ", "http://10.0.0.1:8080"),
        ("http://bücher.example:3128", "http://xn--bcher-kva.example:3128"),
    ],
)
def test_proxy_urls_are_read_as_go_reads_them(text: str, shown: str) -> None:
    proxy = parse_proxy_url(text, "HTTPS_PROXY")
    assert proxy is not None and proxy.shown == shown


def test_proxy_credentials_become_proxy_authorization() -> None:
    proxy = parse_proxy_url("http://ali%40ce:p%3Ass@proxy:3128", "HTTPS_PROXY")
    assert proxy is not None
    assert (proxy.username, proxy.password) == ("ali@ce", "p:ss")
    assert proxy.authorization == b"Basic " + base64.b64encode(b"ali@ce:p:ss")
    assert "p:ss" not in repr(proxy) and "p:ss" not in proxy.shown
    user_only = parse_proxy_url("http://bob@proxy:3128", "HTTPS_PROXY")
    assert user_only is not None and user_only.authorization == b"Basic " + base64.b64encode(
        b"bob:"
    )
    assert parse_proxy_url("http://proxy:3128", "HTTPS_PROXY").authorization is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("socks5://proxy:1080", "socks5 proxies are not supported"),
        ("socks5h://u:pw-in-socks@proxy:1080", "socks5h proxies are not supported"),
        ("ftp://proxy:21", "the scheme 'ftp' is not http or https"),
        ("http://u:pw-in-port@proxy:99999", "its port is not a number"),
        ("http://u:pw-in-port@proxy:31x8", "its port is not a number"),
        # A password with an unencoded "/", "?" or "#" ends the authority early: urllib
        # then reads the password as the port, and quoted it in its error.
        ("http://u:pw-slash/tail@proxy:3128", "percent-encoded"),
        ("http://u:pw-query?x@proxy:3128", "percent-encoded"),
        ("u:pw-hash#@proxy:3128", "percent-encoded"),
        ("http://u:[pw-bracket@proxy:3128", "it is not a URL"),
        ("http://", "it names no host"),
        ("http://:pw-no-user@proxy:3128", "it has a password but no user name"),
        ("http://pro xy:3128", "its host is not a host name"),
        # The host forgotten: the password stands where the port does.
        ("http://alice:pw-for-alice", "its port is not a number"),
        ("alice:pw-for-alice/", "its port is not a number"),
    ],
)
def test_a_malformed_proxy_is_a_usage_error_naming_the_variable(value: str, says: str) -> None:
    with pytest.raises(UsageError) as caught:
        ProxySettings.from_environment({"https_proxy": value})
    message = str(caught.value)
    assert message.startswith("https_proxy=")
    assert says in message
    assert "pw-" not in message  # the password is cut from the quoted setting
    with pytest.raises(UsageError, match=r"^ProxySettings\.http_proxy="):
        ProxySettings(http_proxy=value)


def test_settings_show_no_password() -> None:
    settings = ProxySettings(https_proxy=f"http://{PROXY_USER}:{PROXY_PASSWORD}@proxy:3128")
    assert PROXY_PASSWORD not in repr(settings)
    assert "http://proxy:3128" in repr(settings)
    assert PROXY_PASSWORD not in repr(RegistryOptions(proxy=settings))
    assert PROXY_PASSWORD in settings.secrets()
    with pytest.raises(UsageError, match="must be ProxySettings"):
        RegistryOptions(proxy=f"http://u:{PROXY_PASSWORD}@proxy:3128")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "direct"),
    [
        ("", "reg.example", 443, False),
        ("*", "reg.example", 443, True),
        ("*", "10.1.2.3", 443, True),
        # a name matches itself and its subdomains, and no other name
        ("corp.example", "corp.example", 443, True),
        ("corp.example", "reg.corp.example", 443, True),
        ("corp.example", "xcorp.example", 443, False),
        ("Corp.Example", "reg.corp.example", 443, True),
        # a leading dot (or *.) only the subdomains
        (".corp.example", "corp.example", 443, False),
        (".corp.example", "reg.corp.example", 443, True),
        ("*.corp.example", "corp.example", 443, False),
        ("*.corp.example", "reg.corp.example", 443, True),
        # a port restricts the entry to it
        ("reg.example:5000", "reg.example", 5000, True),
        ("reg.example:5000", "reg.example", 443, False),
        # addresses and blocks, never by name
        ("10.1.2.3", "10.1.2.3", 443, True),
        ("10.1.2.3", "10.1.2.4", 443, False),
        ("10.1.2.3:5000", "10.1.2.3", 443, False),
        ("10.0.0.0/8", "10.200.0.1", 443, True),
        ("10.0.0.0/8", "11.0.0.1", 443, False),
        ("10.0.0.0/8", "ten.example", 443, False),
        ("2001:db8::/32", "2001:db8::5", 443, True),
        ("[2001:db8::5]:443", "[2001:db8::5]", 443, True),
        ("[2001:db8::5]:443", "2001:db8::5", 80, False),
        ("2001:db8::5", "2001:db8::5", 443, True),
        ("10.1.2.3", "::ffff:10.1.2.3", 443, True),  # the same address, as Go's Equal
        ("10.1.2.3", "reg.example", 443, False),
        ("reg.example", "10.1.2.3", 443, False),  # a name never matches an address
        # blanks and junk are skipped, the rest still read
        (" , ,:80, corp.example ", "corp.example", 443, True),
        ("bücher.example", "xn--bcher-kva.example", 443, True),
    ],
)
def test_no_proxy_matches_as_go_matches(no_proxy: str, host: str, port: int, direct: bool) -> None:
    assert NoProxy.parse(no_proxy).excludes(host, port) is direct
    settings = ProxySettings(https_proxy="proxy:3128", no_proxy=no_proxy)
    assert (settings.proxy_for("https", host, port) is None) is direct


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST", "127.0.0.1", "127.9.9.9", "::1", "[::1]"]
)
def test_loopback_is_never_proxied(host: str) -> None:
    settings = ProxySettings(https_proxy="proxy:3128", http_proxy="proxy:3128")
    assert settings.proxy_for("https", host, 443) is None
    assert settings.proxy_for("http", host, 5000) is None
    assert settings.proxy_for("https", "localhost.example", 443) is not None


# --- pulls through a real proxy -------------------------------------------------------


@contextlib.contextmanager
def forward_proxy(**kwargs: Any) -> Iterator[ForwardProxy]:
    with run_forward_proxy({NAME: "127.0.0.1"}, **kwargs) as proxy:
        yield proxy


def with_credentials(url: str, password: str = PROXY_PASSWORD) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{PROXY_USER}:{password}@{rest}"


@pytest.fixture
def tls_registry_named(
    registry_factory: Callable[..., RegistryServer],
) -> RegistryServer:
    """A TLS registry whose certificate is valid for ``registry.test`` too."""
    return registry_factory(tls=True, tls_names=(NAME,))


async def _pull(
    ref: str, tmp_path: Path, *, layer_workers: str = "threads", **registry: Any
) -> pipeline.PullResult:
    store = Store.open(tmp_path / "store")
    try:
        with trio.fail_after(45):
            return await pipeline.pull(
                ref,
                store=store,
                options=PullOptions(
                    platform=AMD64,
                    layer_workers=layer_workers,  # type: ignore[arg-type]
                    registry=RegistryOptions(**registry),
                    limits=Limits(retries=1, retry_wait_s=0.01),
                ),
            )
    finally:
        store.close()


@pytest.mark.parametrize("layer_workers", ["threads", "processes"])
async def test_pull_over_tls_through_a_connect_tunnel(
    tls_registry_named: RegistryServer,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    layer_workers: str,
) -> None:
    """HTTPS to the registry through CONNECT, the certificate verified against
    ``--ca-file`` by the registry's name; the proxy's credentials go to the proxy, in the
    CONNECT, and the client never looks up the name the proxy resolves. Layer worker
    processes, which open clients of their own, go through it too."""
    registry = tls_registry_named
    image = images.sample_image(unique_seed)
    registry.push(unique_repo, image, "1")
    ref = f"{NAME}:{registry.port}/{unique_repo}:1"
    with (
        forward_proxy(credentials=(PROXY_USER, PROXY_PASSWORD)) as proxy,
        structlog.testing.capture_logs() as logs,
    ):
        result = await _pull(
            ref,
            tmp_path,
            layer_workers=layer_workers,
            ca_file=registry.ca_pem,
            proxy=ProxySettings(https_proxy=with_credentials(proxy.url), no_proxy="other.test"),
        )
    assert str(result.manifest_digest) == image.digest
    # A log line says where requests go, the proxy named without its password.
    (said,) = [entry for entry in logs if entry["event"] == "requests go through proxies"]
    assert (said["https_proxy"], said["http_proxy"], said["no_proxy"]) == (
        proxy.url,
        None,
        "other.test",
    )
    assert PROXY_PASSWORD not in repr(logs)
    assert proxy.tunnels and set(proxy.tunnels) == {f"{NAME}:{registry.port}"}
    assert proxy.forwarded == []
    basic = "Basic " + base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
    assert set(proxy.authorizations) == {basic}


async def test_an_untrusted_certificate_through_the_tunnel_still_points_at_ca_file(
    tls_registry_named: RegistryServer, unique_repo: str, tmp_path: Path
) -> None:
    """TLS runs to the registry inside the tunnel and is verified as without a proxy."""
    ref = f"{NAME}:{tls_registry_named.port}/{unique_repo}:1"
    with forward_proxy() as proxy, pytest.raises(RegistryUnavailable) as caught:
        await _pull(ref, tmp_path, proxy=ProxySettings(https_proxy=proxy.url))
    message = str(caught.value)
    assert "is not trusted" in message and "--ca-file" in message
    assert f"through the proxy {proxy.url}" in message
    assert proxy.tunnels


async def test_pull_over_plain_http_through_the_proxy(
    registry: RegistryServer, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """A registry listed as insecure: https through the tunnel fails (it speaks plain
    http), then plain http goes to the proxy in absolute form."""
    image = images.sample_image(unique_seed)
    registry.push(unique_repo, image, "1")
    authority = f"{NAME}:{registry.port}"
    with forward_proxy(credentials=(PROXY_USER, PROXY_PASSWORD)) as proxy:
        url = with_credentials(proxy.url)
        result = await _pull(
            f"{authority}/{unique_repo}:1",
            tmp_path,
            insecure_registries=(authority,),
            proxy=ProxySettings(https_proxy=url, http_proxy=url),
        )
    assert str(result.manifest_digest) == image.digest
    assert proxy.tunnels == [authority]  # the https attempt
    assert proxy.forwarded[0] == f"http://{authority}/v2/"
    assert all(target.startswith(f"http://{authority}/v2/") for target in proxy.forwarded)
    assert any(f"/blobs/{layer.digest}" in t for t in proxy.forwarded for layer in image.layers)


@pytest.mark.parametrize(
    ("status", "retry_after"), [(403, None), (502, None), (503, "30")], ids=["403", "502", "503"]
)
async def test_an_insecure_registry_falls_back_to_http_when_the_proxy_refuses_connect(
    registry: RegistryServer,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    status: int,
    retry_after: str | None,
) -> None:
    """A proxy that tunnels to port 443 only (squid's default) answers the https
    attempt's CONNECT 403, one that cannot reach the port 502: for a registry listed as
    insecure that is one more way https fails (no answer of the registry's), and plain
    http through the proxy follows at once, as docker and skopeo fall back (Go's net/http
    returns a refused CONNECT as an error, not a response). At once past a 503 asking to
    wait (Retry-After) too: Go's net/http keeps only a refused CONNECT's status text, not
    its headers, so docker's fallback does not wait either."""
    image = images.sample_image(unique_seed)
    registry.push(unique_repo, image, "1")
    authority = f"{NAME}:{registry.port}"
    with (
        forward_proxy(refuse_connect=status, refuse_connect_retry_after=retry_after) as proxy,
        structlog.testing.capture_logs() as logs,
    ):
        result = await _pull(
            f"{authority}/{unique_repo}:1",
            tmp_path,
            insecure_registries=(authority,),
            proxy=ProxySettings(https_proxy=proxy.url, http_proxy=proxy.url),
        )
    assert str(result.manifest_digest) == image.digest
    assert proxy.tunnels == [authority] and proxy.connects_refused == 1 and proxy.forwarded
    assert [entry for entry in logs if entry["event"] == "retrying"] == []


@pytest.mark.parametrize(
    ("status", "said", "attempts"),
    [(503, "could not reach", 2), (403, "refused to carry the request to", 1)],
    ids=["503", "403"],
)
async def test_an_insecure_registry_whose_http_fallback_fails_says_the_refused_connect(
    registry: RegistryServer,
    unique_repo: str,
    tmp_path: Path,
    status: int,
    said: str,
    attempts: int,
) -> None:
    """When the plain-http attempt that followed a refused CONNECT fails too (here, with
    no HTTP_PROXY, a direct connection to a name only the proxy resolves), the error is
    the proxy's refusal, the http attempt's failure added: that failure alone hid why the
    pull went to plain http. A 503's "not now" carries its Retry-After, waited out once
    (the http attempt's failure was final, and failed the pull at once, though the proxy
    had said when to ask again); a 403 is final, as before."""
    authority = f"{NAME}:{registry.port}"
    with (
        forward_proxy(refuse_connect=status, refuse_connect_retry_after="1") as proxy,
        structlog.testing.capture_logs() as logs,
        pytest.raises(RegistryUnavailable) as caught,
    ):
        await _pull(
            f"{authority}/{unique_repo}:1",
            tmp_path,
            insecure_registries=(authority,),
            proxy=ProxySettings(https_proxy=proxy.url),
        )
    retried = [entry for entry in logs if entry["event"] == "retrying"]
    assert [entry["wait_s"] for entry in retried] == [1] * (attempts - 1)
    message = str(caught.value)
    assert f"the proxy {proxy.url} {said} {authority}" in message, message
    assert f"HTTP {status} CONNECT Refused By Test Proxy" in message
    assert f"plain http to {authority}" in message  # the fallback's failure is said too
    assert ("gave up after 2 attempts" in message) == (attempts == 2)
    assert proxy.connects_refused == attempts and not proxy.forwarded


async def test_an_http_proxy_refusing_credentials_after_a_connects_503_is_what_is_said(
    registry: RegistryServer, unique_repo: str, tmp_path: Path
) -> None:
    """The exception to the one above: when the plain-http attempt's proxy (HTTP_PROXY,
    here another one) refuses its credentials, that 407 is what the user must hear, not
    the https proxy's "not now"."""
    authority = f"{NAME}:{registry.port}"
    with (
        forward_proxy(refuse_connect=503, refuse_connect_retry_after="1") as busy,
        forward_proxy(credentials=(PROXY_USER, PROXY_PASSWORD)) as guarded,
        pytest.raises(RegistryUnavailable) as caught,
    ):
        await _pull(
            f"{authority}/{unique_repo}:1",
            tmp_path,
            insecure_registries=(authority,),
            proxy=ProxySettings(
                https_proxy=busy.url, http_proxy=with_credentials(guarded.url, "wrong-pw-given")
            ),
        )
    message = str(caught.value)
    assert "HTTP 407 Proxy Authentication Required" in message, message
    assert "HTTP 503" not in message and "wrong-pw-given" not in message
    assert busy.connects_refused == 1


async def test_an_insecure_registry_does_not_fall_back_when_the_proxy_refuses_credentials(
    registry: RegistryServer, unique_repo: str, tmp_path: Path
) -> None:
    """A 407 to the https attempt's CONNECT is the proxy refusing its credentials: the
    error says so, rather than what the plain-http attempt meets next (here, with no
    HTTP_PROXY, a direct connection to a name only the proxy resolves)."""
    authority = f"{NAME}:{registry.port}"
    with forward_proxy(credentials=(PROXY_USER, PROXY_PASSWORD)) as proxy:
        url = with_credentials(proxy.url, "wrong-pw-given")
        with pytest.raises(RegistryUnavailable) as caught:
            await _pull(
                f"{authority}/{unique_repo}:1",
                tmp_path,
                insecure_registries=(authority,),
                proxy=ProxySettings(https_proxy=url),
            )
    message = str(caught.value)
    assert "HTTP 407 Proxy Authentication Required" in message
    assert "it did not accept the user and password" in message
    assert "wrong-pw-given" not in message
    assert not proxy.forwarded


async def test_a_5xx_through_a_forwarding_proxy_says_the_proxy_may_have_answered(
    registry: RegistryServer, unique_repo: str, tmp_path: Path
) -> None:
    """A plain-http request's 502 may be the proxy's own answer: the error says it went
    through the proxy (named without its password)."""
    authority = f"{NAME}:{registry.port}"
    with forward_proxy(refuse=502) as proxy, pytest.raises(RegistryUnavailable) as caught:
        await _pull(
            f"{authority}/{unique_repo}:1",
            tmp_path,
            insecure_registries=(authority,),
            proxy=ProxySettings(http_proxy=with_credentials(proxy.url)),
        )
    message = str(caught.value)
    assert f"{authority} failed with HTTP 502" in message
    assert f"(through the proxy {proxy.url}, which may have answered for it)" in message
    assert PROXY_PASSWORD not in message


async def test_loopback_registries_are_never_proxied(
    registry: RegistryServer,
    proxy: Callable[..., Any],
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
) -> None:
    """Through a loopback relay that records request heads: no request went to the
    forward proxy, and none carried the proxy's credentials."""
    image = images.sample_image(unique_seed)
    registry.push(unique_repo, image, "1")
    relay = proxy(registry)
    with forward_proxy() as forward:
        url = with_credentials(forward.url)
        await _pull(
            f"{relay.host}/{unique_repo}:1",
            tmp_path,
            proxy=ProxySettings(https_proxy=url, http_proxy=url),
        )
    assert forward.carried() == 0
    assert relay.count() > 0
    assert not any("proxy-authorization" in r.headers for r in relay.requests)


async def test_no_proxy_sends_the_host_directly(registry: RegistryServer, unique_repo: str) -> None:
    """The same name, resolved here by the client's table: listed in NO_PROXY it goes
    directly, else through the proxy (which resolves it the same)."""
    registry.push(unique_repo, images.sample_image(unique_repo), "1")
    ref = parse_reference(f"{NAME}:{registry.port}/{unique_repo}:1")

    async def resolve(host: str) -> list[str]:
        await trio.lowlevel.checkpoint()
        return ["127.0.0.1"] if host == NAME else []

    async def fetch(no_proxy: str, proxy_url: str) -> None:
        settings = ProxySettings(https_proxy=proxy_url, http_proxy=proxy_url, no_proxy=no_proxy)
        options = RegistryOptions(insecure_registries=(f"{NAME}:{registry.port}",), proxy=settings)
        async with RegistryClient.open(options, Limits(retries=0), resolve=resolve) as client:
            accept = "application/vnd.oci.image.manifest.v1+json"
            await client.get_bytes(ref, "manifests", "1", accept=accept, max_bytes=1 << 20)

    with trio.fail_after(30), forward_proxy() as proxy:
        await fetch(f"other.test,.{NAME},{NAME}:{registry.port}", proxy.url)
        assert proxy.carried() == 0
        await fetch("other.test", proxy.url)
        assert proxy.carried() > 0
        assert proxy.forwarded


async def test_a_redirect_to_another_host_is_decided_for_that_host(
    registry: RegistryServer, proxy: Callable[..., Any], unique_repo: str
) -> None:
    """The registry (through the proxy) redirects a blob to a storage server listed in
    NO_PROXY: that request goes directly, not through the proxy."""
    image = images.sample_image(unique_repo)
    registry.push(unique_repo, image, "1")
    relay = proxy(registry)  # the "registry" the forward proxy reaches, which redirects
    storage = f"storage.test:{registry.port}"
    path = f"/v2/{unique_repo}/blobs/{image.config.digest}"
    relay.inject(path, Reply(307, {"Location": f"http://{storage}{path}"}), times=None)
    ref = parse_reference(f"{NAME}:{relay.port}/{unique_repo}:1")

    async def resolve(host: str) -> list[str]:
        await trio.lowlevel.checkpoint()
        return ["127.0.0.1"] if host in (NAME, "storage.test") else []

    with trio.fail_after(30), forward_proxy() as forward:
        settings = ProxySettings(http_proxy=forward.url, https_proxy=forward.url, no_proxy=storage)
        options = RegistryOptions(
            insecure_registries=(f"{NAME}:{relay.port}", storage), proxy=settings
        )
        async with RegistryClient.open(options, Limits(retries=0), resolve=resolve) as client:
            body, _ = await client.get_bytes(
                ref, "blobs", image.config.digest, accept=None, max_bytes=1 << 20
            )
    assert body == image.config.data
    assert f"http://{NAME}:{relay.port}{path}" in forward.forwarded
    assert not any("storage.test" in target for target in forward.forwarded + forward.tunnels)
    assert relay.count("GET", path) == 1  # the redirect; the blob came from the registry


async def test_pull_through_an_https_proxy(
    tls_registry_named: RegistryServer, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """TLS to the proxy (verified with --ca-file, which holds the proxy's CA and the
    registry's), then TLS to the registry inside the tunnel."""
    import trustme

    registry = tls_registry_named
    image = images.sample_image(unique_seed)
    registry.push(unique_repo, image, "1")
    proxy_ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    proxy_ca.issue_cert("127.0.0.1").configure_cert(server_context)
    assert registry.ca_pem is not None
    bundle = tmp_path / "cas.pem"
    bundle.write_bytes(registry.ca_pem.read_bytes() + proxy_ca.cert_pem.bytes())
    with forward_proxy(tls=server_context) as proxy:
        assert proxy.url.startswith("https://")
        result = await _pull(
            f"{NAME}:{registry.port}/{unique_repo}:1",
            tmp_path,
            ca_file=bundle,
            proxy=ProxySettings(https_proxy=with_credentials(proxy.url)),
        )
    assert str(result.manifest_digest) == image.digest
    assert set(proxy.tunnels) == {f"{NAME}:{registry.port}"}


@pytest.mark.parametrize("fault", ["signer not given", "expired"])
async def test_an_https_proxy_whose_certificate_fails_is_named_not_the_registry(
    tls_registry_named: RegistryServer, unique_repo: str, tmp_path: Path, fault: str
) -> None:
    """The proxy's TLS failed before any CONNECT; the error blamed the registry's
    certificate and advised --insecure-registry, which then failed otherwise (found by a
    QA pass)."""
    import datetime

    import trustme

    registry = tls_registry_named
    proxy_ca = trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    lapsed = {"not_before": now - datetime.timedelta(days=9), "not_after": now - now.resolution}
    cert = proxy_ca.issue_cert("127.0.0.1", **(lapsed if fault == "expired" else {}))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    assert registry.ca_pem is not None
    bundle = tmp_path / "cas.pem"
    trusted = registry.ca_pem.read_bytes()
    bundle.write_bytes(trusted + (proxy_ca.cert_pem.bytes() if fault == "expired" else b""))
    with forward_proxy(tls=server_context) as proxy, pytest.raises(RegistryUnavailable) as caught:
        await _pull(
            f"{NAME}:{registry.port}/{unique_repo}:1",
            tmp_path,
            ca_file=bundle,
            proxy=ProxySettings(https_proxy=proxy.url),
        )
    message = str(caught.value)
    said = {
        "signer not given": "is not trusted (unable to get local issuer certificate): pass"
        " --ca-file PEM (RegistryOptions.ca_file) with the CA that signed it",
        "expired": "has expired (or this machine's clock is wrong): renew it",
    }[fault]
    assert f"the TLS certificate of the proxy {proxy.url} that ProxySettings" in message
    assert said in message
    assert "--insecure-registry" not in message
    assert proxy.tunnels == []


async def test_a_plain_proxy_named_with_https_is_told_to_be_written_with_http(
    tls_registry_named: RegistryServer, unique_repo: str
) -> None:
    """HTTPS_PROXY=https://... for a proxy that speaks plain HTTP (it answers the TLS
    hello with an HTTP 400): the error names the proxy and the cure, not the registry."""
    import socket
    import threading

    def answer_in_plain_http(listener: socket.socket) -> None:
        with contextlib.suppress(OSError):
            connection, _ = listener.accept()
            with connection:
                connection.recv(4096)
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    ref = parse_reference(f"{NAME}:{tls_registry_named.port}/{unique_repo}")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        threading.Thread(target=answer_in_plain_http, args=(listener,), daemon=True).start()
        proxy_url = f"https://127.0.0.1:{listener.getsockname()[1]}"
        options = RegistryOptions(
            ca_file=tls_registry_named.ca_pem, proxy=ProxySettings(https_proxy=proxy_url)
        )
        with trio.fail_after(20), pytest.raises(RegistryUnavailable) as caught:
            async with RegistryClient.open(options, Limits(retries=0)) as client:
                await client.get_bytes(ref, "manifests", "1", accept=None, max_bytes=100)
    message = str(caught.value)
    assert f"cannot speak TLS with the proxy {proxy_url} that ProxySettings" in message
    assert "if it is a plain HTTP proxy, write http:// in ProxySettings.https_proxy" in message


async def test_a_proxy_that_never_answers_the_connect_is_named(
    tls_registry_named: RegistryServer, unique_repo: str
) -> None:
    """It accepted the connection and said nothing: "no data from registry.test:PORT for
    60 s ... the registry or the network is stalling", twice (found by a QA pass)."""
    import socket

    ref = parse_reference(f"{NAME}:{tls_registry_named.port}/{unique_repo}")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts for it
        proxy_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        options = RegistryOptions(
            ca_file=tls_registry_named.ca_pem, proxy=ProxySettings(https_proxy=proxy_url)
        )
        with trio.fail_after(20), pytest.raises(RegistryUnavailable) as caught:
            async with RegistryClient.open(
                options, Limits(retries=0, read_timeout_s=1.0)
            ) as client:
                await client.get_bytes(ref, "manifests", "1", accept=None, max_bytes=100)
    message = str(caught.value)
    assert (
        f"the proxy {proxy_url} that ProxySettings.https_proxy names did not answer the"
        f" CONNECT for {NAME}:{tls_registry_named.port} (timed out waiting)" in message
    )


@pytest.mark.parametrize("scheme", ["https", "http"])
@pytest.mark.parametrize("password", [None, "wrong-pw-given"])
async def test_a_proxy_asking_for_credentials_is_named_without_its_password(
    registry: RegistryServer,
    tls_registry_named: RegistryServer,
    unique_repo: str,
    tmp_path: Path,
    scheme: str,
    password: str | None,
) -> None:
    """407 to a CONNECT (https) and to a forwarded request (http): the error names the
    proxy as ``scheme://host:port`` and says what to do; the password is nowhere."""
    target = tls_registry_named if scheme == "https" else registry
    authority = f"{NAME}:{target.port}"
    with forward_proxy(credentials=(PROXY_USER, PROXY_PASSWORD)) as proxy:
        url = proxy.url if password is None else with_credentials(proxy.url, password)
        settings = (
            ProxySettings(https_proxy=url) if scheme == "https" else ProxySettings(http_proxy=url)
        )
        insecure = () if scheme == "https" else (authority,)
        with pytest.raises(RegistryUnavailable) as caught:
            await _pull(
                f"{authority}/{unique_repo}:1",
                tmp_path,
                ca_file=target.ca_pem,
                insecure_registries=insecure,
                proxy=settings,
            )
    message = str(caught.value)
    assert f"the proxy {proxy.url} refused to carry the request to {authority}" in message
    assert "HTTP 407 Proxy Authentication Required" in message
    if password is None:
        assert "it asks for credentials: put them in ProxySettings" in message
    else:
        assert "it did not accept the user and password" in message
        assert password not in message and password not in repr(caught.value)
    assert not caught.value.transient


async def test_a_proxy_that_cannot_reach_the_registry_is_named(
    tls_registry_named: RegistryServer, unique_repo: str, tmp_path: Path
) -> None:
    with forward_proxy(refuse=502) as proxy:
        url = with_credentials(proxy.url)
        with pytest.raises(RegistryUnavailable) as caught:
            await _pull(
                f"{NAME}:{tls_registry_named.port}/{unique_repo}:1",
                tmp_path,
                ca_file=tls_registry_named.ca_pem,
                proxy=ProxySettings(https_proxy=url),
            )
    message = str(caught.value)
    assert f"the proxy {proxy.url} could not reach {NAME}:{tls_registry_named.port}" in message
    assert "HTTP 502" in message and "NO_PROXY" in message
    assert PROXY_PASSWORD not in message


async def _pull_through_one_refused_connect(
    registry: RegistryServer, repo: str, seed: str, tmp_path: Path, **refusal: Any
) -> ForwardProxy:
    """Push a sample image and pull it through a forward proxy that refuses the first
    CONNECT as ``refusal`` says (``forward_proxy``'s ``refuse_connect...`` arguments);
    check that the pull got the image after that one refusal, and return the proxy."""
    image = images.sample_image(seed)
    registry.push(repo, image, "1")
    with forward_proxy(refuse_connect_times=1, **refusal) as proxy:
        result = await _pull(
            f"{NAME}:{registry.port}/{repo}:1",
            tmp_path,
            ca_file=registry.ca_pem,
            proxy=ProxySettings(https_proxy=proxy.url),
        )
    assert str(result.manifest_digest) == image.digest
    assert proxy.connects_refused == 1
    return proxy


@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_a_connect_the_proxy_could_not_carry_for_now_is_tried_again(
    tls_registry_named: RegistryServer,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    status: int,
) -> None:
    """429, 502, 503 or 504 to a CONNECT (the proxy is rate-limiting, could not reach the
    registry, or is overloaded) failed the pull at once, where the same answers from the
    registry are tried again: a proxy's blip must not fail a pull that one more attempt
    finishes."""
    proxy = await _pull_through_one_refused_connect(
        tls_registry_named, unique_repo, unique_seed, tmp_path, refuse_connect=status
    )
    assert len(proxy.tunnels) > 1


async def test_a_proxy_that_keeps_failing_the_connect_is_named_once_the_retries_are_used(
    tls_registry_named: RegistryServer, unique_repo: str, tmp_path: Path
) -> None:
    """Each attempt of the retry budget (``_pull``: one retry) met the 503; the error
    names the proxy without its password, its answer, and the attempts made."""
    authority = f"{NAME}:{tls_registry_named.port}"
    with forward_proxy(refuse_connect=503) as proxy:
        message = await _pull_failing_through(proxy, tls_registry_named, unique_repo, tmp_path)
    assert f"the proxy {proxy.url} could not reach {authority}" in message
    assert "HTTP 503 CONNECT Refused By Test Proxy" in message
    assert "gave up after 2 attempts" in message
    assert proxy.connects_refused == 2


async def _pull_failing_through(
    proxy: ForwardProxy, registry: RegistryServer, repo: str, tmp_path: Path
) -> str:
    """The message of the RegistryUnavailable a pull of ``repo`` from ``registry``
    through ``proxy`` (given with credentials) fails with; it never holds the proxy's
    password."""
    with pytest.raises(RegistryUnavailable) as caught:
        await _pull(
            f"{NAME}:{registry.port}/{repo}:1",
            tmp_path,
            ca_file=registry.ca_pem,
            proxy=ProxySettings(https_proxy=with_credentials(proxy.url)),
        )
    message = str(caught.value)
    assert PROXY_PASSWORD not in message and PROXY_PASSWORD not in repr(caught.value)
    return message


@pytest.mark.parametrize("status", [503, 429])
async def test_a_connect_answered_503_waits_the_retry_after_the_proxy_asks(
    tls_registry_named: RegistryServer,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    status: int,
) -> None:
    """A proxy answering a CONNECT 503 (or 429) with ``Retry-After`` is waited out as long
    as it asks, as a registry's own 503 (429) is, not for the backoff's own wait
    (``_pull``: 0.01 s): httpcore raises its refusal without the headers, which are read
    from its trace."""
    with structlog.testing.capture_logs() as logs:
        await _pull_through_one_refused_connect(
            tls_registry_named,
            unique_repo,
            unique_seed,
            tmp_path,
            refuse_connect=status,
            refuse_connect_retry_after="1",
        )
    (retried,) = [entry for entry in logs if entry["event"] == "retrying"]
    assert retried["wait_s"] == 1
    assert f"HTTP {status} CONNECT Refused By Test Proxy" in retried["error"]


async def test_a_connect_answered_503_asking_too_long_a_wait_fails_at_once_naming_the_proxy(
    tls_registry_named: RegistryServer, unique_repo: str, tmp_path: Path
) -> None:
    """Within the same cap as a registry's (``Limits.retry_after_max_s``): an hour asked
    for is not waited, nor is the request sent again; the error says the proxy asked."""
    authority = f"{NAME}:{tls_registry_named.port}"
    with forward_proxy(refuse_connect=503, refuse_connect_retry_after="3600") as proxy:
        message = await _pull_failing_through(proxy, tls_registry_named, unique_repo, tmp_path)
    assert f"the proxy {proxy.url} could not reach {authority}" in message
    assert f"the proxy {proxy.url} asks to wait 3600 s" in message
    assert "attempts" not in message
    assert proxy.connects_refused == 1


@pytest.mark.parametrize("status", [400, 403, 405, 407])
async def test_a_connect_the_proxy_refuses_is_not_tried_again(
    tls_registry_named: RegistryServer, unique_repo: str, tmp_path: Path, status: int
) -> None:
    """A 4xx to a CONNECT is the proxy's policy (or its credentials): the same answer
    again, so final at the first."""
    authority = f"{NAME}:{tls_registry_named.port}"
    with (
        forward_proxy(refuse_connect=status) as proxy,
        pytest.raises(RegistryUnavailable) as caught,
    ):
        await _pull(
            f"{authority}/{unique_repo}:1",
            tmp_path,
            ca_file=tls_registry_named.ca_pem,
            proxy=ProxySettings(https_proxy=proxy.url),
        )
    message = str(caught.value)
    assert f"the proxy {proxy.url} refused to carry the request to {authority}" in message
    assert f"HTTP {status} CONNECT Refused By Test Proxy" in message
    assert "attempts" not in message
    assert not caught.value.transient
    assert proxy.connects_refused == 1


async def test_an_ipv6_registry_is_not_sent_to_the_proxy_unbracketed(
    unique_repo: str, tmp_path: Path
) -> None:
    """httpcore names a tunnel's target ``host:port`` with no brackets: ``CONNECT
    2001:db8::1:5000`` is another host, or none, to a proxy. The request is refused
    before it is sent, naming NO_PROXY, rather than sent malformed."""
    with forward_proxy() as proxy, pytest.raises(RegistryUnavailable) as caught:
        await _pull(
            f"[2001:db8::1]:5000/{unique_repo}:1",
            tmp_path,
            proxy=ProxySettings(https_proxy=proxy.url, http_proxy=proxy.url),
        )
    message = str(caught.value)
    assert "IPv6" in message and "NO_PROXY" in message and "[2001:db8::1]:5000" in message
    assert proxy.tunnels == [] and proxy.forwarded == []


async def test_an_unreachable_proxy_is_named(unique_repo: str, tmp_path: Path) -> None:
    with forward_proxy() as proxy:
        gone = with_credentials(proxy.url)  # nothing listens there once it stopped
    with pytest.raises(RegistryUnavailable) as caught:
        await _pull(f"{NAME}:5000/{unique_repo}:1", tmp_path, proxy=ProxySettings(https_proxy=gone))
    message = str(caught.value)
    assert (
        f"cannot connect to the proxy {proxy.url} that ProxySettings.https_proxy names" in message
    )
    assert PROXY_PASSWORD not in message


# --- the CLI --------------------------------------------------------------------------


@pytest.fixture
def _cli_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() configures structlog and remembers secrets; leave the defaults after."""
    monkeypatch.setattr(_logging._Applied, "settings", _logging.LogSettings())
    monkeypatch.setattr(_logging._Applied, "stream", None)


@pytest.mark.usefixtures("_cli_logging")
def test_cli_refuses_a_malformed_proxy_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.setenv("https_proxy", f"socks5://{PROXY_USER}:{PROXY_PASSWORD}@proxy:1080")
    argv = ["pull", "reg.example/team/app:1", "--json", "--store", str(tmp_path / "store")]
    assert _cli.main(argv) == _cli.EXIT_USAGE
    out, err = capsys.readouterr()
    said = "https_proxy='socks5://[redacted]@proxy:1080' is not a usable proxy URL"
    assert said in err
    last = json.loads(out.splitlines()[-1])  # --json still ends with its error line
    assert last["event"] == "error" and said in last["message"]
    assert PROXY_PASSWORD not in out + err
    assert not (tmp_path / "store").exists()


def run_cli(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    base.pop("IMAGEC_PIPE_STORE", None)
    return subprocess.run(
        [sys.executable, "-m", "pipeline._cli", *argv],
        capture_output=True,
        text=True,
        env={**base, "PYTHONPATH": str(REPO_ROOT), **env},
        timeout=50,
        check=False,
    )


def test_cli_pulls_through_the_proxy_its_environment_names(
    tls_registry_named: RegistryServer, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """End to end: the CLI reads HTTPS_PROXY and NO_PROXY (docker's), pulls through the
    proxy, and neither its output nor its debug log shows the proxy's password, also when
    the proxy refuses it."""
    registry = tls_registry_named
    image = images.sample_image(unique_seed)
    registry.push(unique_repo, image, "1")
    ref = f"{NAME}:{registry.port}/{unique_repo}:1"
    argv = ["pull", ref, "--store", str(tmp_path / "store"), "--ca-file", str(registry.ca_pem)]
    argv += ["--platform", "linux/amd64", "--log-level", "debug"]
    with forward_proxy(credentials=(PROXY_USER, PROXY_PASSWORD)) as proxy:
        env = {"HTTPS_PROXY": with_credentials(proxy.url), "NO_PROXY": "other.test"}
        done = run_cli(argv, env)
        assert done.returncode == 0, done.stderr
        assert set(proxy.tunnels) == {f"{NAME}:{registry.port}"}
        assert PROXY_PASSWORD not in done.stdout + done.stderr
        assert image.digest in done.stdout

        refused = run_cli(
            [*argv, "--retries", "0"],
            {"https_proxy": with_credentials(proxy.url, "wrong-pw-given")},
        )
    assert refused.returncode == _cli.EXIT_FAILED
    assert f"the proxy {proxy.url} refused to carry the request" in refused.stderr
    assert "wrong-pw-given" not in refused.stdout + refused.stderr
