"""Proxies: Go's rules for which request goes where (``stages/_proxy.py``,
``ProxySettings``), and pulls through a real forward proxy (``tests/support/forward_proxy``)
from the real registry.

The registry listens on 127.0.0.1, which is never proxied; the pulls name it
``registry.test``, a name only the proxy resolves (to 127.0.0.1), so a pull that works
went through the proxy without looking the name up itself.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from pipeline import Platform, ProxySettings, RegistryOptions
from stages._errors import UsageError
from stages._proxy import NoProxy, parse_proxy_url

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
        ("http://u:pw-in-port@proxy:99999", "Port out of range"),
        ("http://u:pw-in-port@proxy:31x8", "Port could not be cast"),
        ("http://", "it names no host"),
        ("http://:pw-no-user@proxy:3128", "it has a password but no user name"),
        ("http://pro xy:3128", "its host is not a host name"),
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
