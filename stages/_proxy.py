"""Which requests go through an HTTP proxy, and which proxy: Go's environment rules.

docker, skopeo and crane take their proxies from ``HTTPS_PROXY``, ``HTTP_PROXY`` and
``NO_PROXY`` by the rules of Go's ``golang.org/x/net/http/httpproxy``; users behind a
corporate proxy set those once for all of them. The same rules here, so that one
environment means the same to all of them:

- an https request goes through ``HTTPS_PROXY``, a plain-http one through ``HTTP_PROXY``
  (each read upper case first, the lower-case name when the upper one is unset or
  empty); none when the one for its scheme is empty;
- never through a proxy: ``localhost`` and loopback addresses (127.0.0.0/8, ``::1``),
  whatever the variables say;
- ``NO_PROXY`` is a comma-separated list of exceptions: ``*`` (no request is proxied);
  an IP address (``10.1.2.3``, ``::1``); a CIDR block (``10.0.0.0/8``); a domain name,
  which matches itself and its subdomains (``corp.example`` matches ``corp.example`` and
  ``reg.corp.example``); a name with a leading dot (or ``*.``), which matches its
  subdomains only (``.corp.example`` matches ``reg.corp.example``, not
  ``corp.example``). Each may carry ``:port`` (``[::1]:5000`` for IPv6), and then
  matches requests to that port only. A name never matches an IP address, nor a block a
  name: the request's host is compared as written, not resolved. Entries Go cannot read
  are skipped, as Go skips them;
- a proxy URL without a scheme is ``http://``; its port defaults to the scheme's (80,
  443), as Go's. ``http://`` and ``https://`` proxies are supported (https: TLS to the
  proxy, verified with the same CAs as registries, ``--ca-file`` included); ``socks5://``
  and other schemes are refused with a usage error rather than ignored. Credentials in
  the URL (``http://user:pass@proxy:3128``, percent-encoded as in any URL) go to the
  proxy as ``Proxy-Authorization: Basic``, never to a registry.

The proxy's password is shown nowhere: ``ProxyURL.shown`` names a proxy by scheme, host
and port, ``ProxySettings``' repr shows only that, and a setting that cannot be read is
quoted with everything before its ``@`` cut.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

from ._errors import UsageError
from ._redact import REDACTED

__all__ = [
    "NoProxy",
    "ProxyURL",
    "environment_setting",
    "is_loopback_target",
    "parse_proxy_url",
    "proxy_secrets",
    "shown_setting",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Schemes a user may mean by a proxy URL that httpcore cannot use without a package we do
# not install (socksio): refused by name rather than treated as an HTTP proxy.
_SOCKS = ("socks4", "socks4a", "socks5", "socks5h")
# A setting quoted in a usage error is cut to this many characters.
_SHOWN_SETTING_CHARS = 200

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ProxyURL:
    """A proxy as a connection needs it: ``scheme`` (``http`` or ``https``), ``host``
    (lower case, an IPv6 address without brackets, a name in its ASCII form), ``port``,
    and the credentials the URL carried (``username`` empty: none). Equal proxies share
    one connection pool."""

    scheme: str
    host: str
    port: int
    username: str = ""
    password: str = field(default="", repr=False)

    @property
    def shown(self) -> str:
        """``scheme://host:port``: how every message names the proxy, never with its
        credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def authorization(self) -> bytes | None:
        """The ``Proxy-Authorization`` value the URL's credentials make, as Go sends it
        (``Basic base64(user:password)``, an empty password too), or None."""
        if not self.username:
            return None
        pair = f"{self.username}:{self.password}".encode()
        return b"Basic " + base64.b64encode(pair)


def shown_setting(text: str) -> str:
    """A proxy setting as a usage error may quote it: everything before its last ``@``
    after the scheme (the user and password) cut, and at most 200 characters."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    if "@" in rest:
        rest = f"{REDACTED}@{rest.rpartition('@')[2]}"
    shown = f"{scheme}{sep}{rest}"
    if len(shown) > _SHOWN_SETTING_CHARS:
        shown = shown[:_SHOWN_SETTING_CHARS] + "…"
    return shown


def _port_cut(shown: str) -> str:
    """``shown`` with what stands after its authority's last colon cut: a text that is
    no port number may be a password, when the user wrote ``user:password`` and forgot
    ``@host:port``."""
    scheme, sep, rest = shown.partition("://")
    if not sep:
        scheme, rest = "", shown
    authority, slash, path = rest.partition("/")
    host, colon, _ = authority.rpartition(":")
    return f"{scheme}{sep}{host}{colon}{REDACTED}{slash}{path}" if colon else shown


def parse_proxy_url(text: str, setting: str) -> ProxyURL | None:
    """The proxy ``text`` names (None when it is empty), or a ``UsageError`` naming
    ``setting`` (``HTTPS_PROXY``, ``ProxySettings.https_proxy``) and saying what is wrong.

    Go's reading: a value that has no ``scheme://`` is a ``host[:port]`` of an http
    proxy. Its path, if any, is ignored, as Go ignores it."""
    text = text.strip()
    if not text:
        return None
    shown = shown_setting(text)

    def refused(why: str) -> UsageError:
        return UsageError(f"{setting}={shown!r} is not a usable proxy URL: {why}")

    if "://" not in text:
        text = f"http://{text}"
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        # Not urllib's words: they quote the text it took for the port ("Port could not
        # be cast to integer value as 's3cr3t'"), and a password holding "/", "?" or "#"
        # unencoded ends the authority early, so that text is the password.
        port_refused = "Port" in str(exc)
        what = (
            "its port is not a number from 0 to 65535"
            if port_refused
            else "it is not a URL (an IPv6 host goes in brackets)"
        )
        if port_refused:  # "http://alice:s3cr3t", the host forgotten: no port to show
            shown = _port_cut(shown)
        raise refused(
            f"{what}; write it as http://[user:password@]host:port, with '/', '?', '#', '@'"
            " and '%' in the user or password percent-encoded (%2F, %3F, %23, %40, %25)"
        ) from None
    scheme = parts.scheme.lower()
    if scheme in _SOCKS:
        raise refused(
            f"{scheme} proxies are not supported; give an http:// or https:// proxy"
            " (one that accepts CONNECT)"
        )
    if scheme not in _DEFAULT_PORTS:
        raise refused(f"the scheme {scheme!r} is not http or https")
    host = parts.hostname or ""
    if not host:
        raise refused("it names no host; write it as http://[user:password@]host:port")
    if any(char.isspace() or char in "/?#%" for char in host):
        raise refused("its host is not a host name or an address")
    if not host.isascii():
        try:
            host = _ascii_name(host)
        except UnicodeError:
            raise refused("its host is not a host name or an address") from None
    username = urllib.parse.unquote(parts.username or "")
    password = urllib.parse.unquote(parts.password or "")
    if password and not username:
        raise refused("it has a password but no user name")
    return ProxyURL(
        scheme=scheme,
        host=host.lower(),
        port=port if port is not None else _DEFAULT_PORTS[scheme],
        username=username,
        password=password,
    )


def proxy_secrets(proxy: ProxyURL | None) -> tuple[str, ...]:
    """What of ``proxy``'s credentials must never be shown: the password, and the
    Basic credentials made of it (the ``Proxy-Authorization`` value a proxy may quote
    back), padded and unpadded, as ``stages/_auth.py``'s ``sent_secrets`` gives a
    registry's."""
    if proxy is None or not proxy.password:
        return ()
    authorization = proxy.authorization
    if authorization is None:
        return (proxy.password,)
    basic = authorization.decode("ascii").removeprefix("Basic ")
    return tuple(dict.fromkeys(form for form in (proxy.password, basic, basic.rstrip("="))))


def _ascii_name(name: str) -> str:
    """A host name in the ASCII form a connection and DNS know it by (``xn--…``)."""
    import idna  # only for names outside ASCII; httpx depends on it

    return idna.encode(name.lower(), uts46=True).decode("ascii")


def _address(text: str) -> _Address | None:
    """``text`` as an IP address, an IPv4-mapped IPv6 one as its IPv4 address (Go's
    ``net.IP.Equal`` and ``IPNet.Contains`` take them as one), or None."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _network(network: _Network) -> _Network:
    """An IPv4-mapped IPv6 block as the IPv4 block it maps, so that ``_address``'s
    IPv4 answer is found in it."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def _split_host_port(entry: str) -> tuple[str, str] | None:
    """Go's ``net.SplitHostPort``: ``host:port`` or ``[host]:port`` into its parts (the
    port may be empty), None when ``entry`` is no such pair (a bare name, an IPv6
    address without brackets)."""
    if entry.startswith("["):
        host, sep, rest = entry[1:].partition("]")
        if not sep or not rest.startswith(":") or ":" in rest[1:]:
            return None
        return host, rest[1:]
    host, sep, port = entry.rpartition(":")
    if not sep or ":" in host or "[" in host or "]" in port:
        return None
    return host, port


def is_loopback_target(host: str) -> bool:
    """``localhost`` or a loopback address: never proxied, as in Go (a proxy cannot
    reach this machine's loopback services, and must not be asked to)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    address = _address(host.strip("[]"))
    return address is not None and address.is_loopback


@dataclass(frozen=True)
class _DomainRule:
    """``suffix`` (with its leading dot) matches subdomains; ``itself`` too the name."""

    suffix: str
    port: str
    itself: bool


@dataclass(frozen=True)
class NoProxy:
    """``NO_PROXY`` read (``parse``): the hosts a request goes to directly."""

    everything: bool = False
    addresses: tuple[tuple[_Address, str], ...] = ()
    networks: tuple[_Network, ...] = ()
    domains: tuple[_DomainRule, ...] = ()

    @classmethod
    def parse(cls, text: str) -> NoProxy:
        """Go's reading of the list, entry by entry: lower case, blanks around entries
        ignored; an entry that is neither a block, an address nor a name is skipped."""
        addresses: list[tuple[_Address, str]] = []
        networks: list[_Network] = []
        domains: list[_DomainRule] = []
        for raw in text.split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            if entry == "*":
                return cls(everything=True)
            if "/" in entry:
                try:
                    networks.append(_network(ipaddress.ip_network(entry, strict=False)))
                except ValueError:
                    pass  # Go's ParseCIDR fails, and the entry falls through as a name
                else:
                    continue
            split = _split_host_port(entry)
            host, port = split if split is not None else (entry, "")
            if not host:
                continue  # ":80": no host, skipped as Go skips it
            address = _address(host)
            if address is not None:
                addresses.append((address, port))
                continue
            if host.startswith("*."):
                host = host[1:]
            itself = not host.startswith(".")
            suffix = host if not itself else f".{host}"
            if not suffix.isascii():
                with contextlib.suppress(UnicodeError):  # else as written, as in Go
                    suffix = "." + _ascii_name(suffix[1:])
            domains.append(_DomainRule(suffix, port, itself))
        return cls(False, tuple(addresses), tuple(networks), tuple(domains))

    def excludes(self, host: str, port: int) -> bool:
        """Whether a request to ``host`` (ASCII, an IPv6 address with or without
        brackets) on ``port`` goes directly, not through the proxy."""
        if self.everything:
            return True
        host = host.strip("[]").lower()
        text_port = str(port)
        address = _address(host)
        if address is not None:
            if any(address in network for network in self.networks):
                return True
            return any(
                address == listed and (not listed_port or listed_port == text_port)
                for listed, listed_port in self.addresses
            )
        return any(
            (host.endswith(rule.suffix) or (rule.itself and host == rule.suffix[1:]))
            and (not rule.port or rule.port == text_port)
            for rule in self.domains
        )


def environment_setting(environ: Mapping[str, str], name: str) -> tuple[str, str]:
    """``(variable, value)`` of the upper- or lower-case form of ``name``: the upper case
    one when it is set and not empty, else the lower case one, as Go's ``getEnvAny``."""
    upper, lower = name.upper(), name.lower()
    value = environ.get(upper, "")
    if value:
        return upper, value
    return lower, environ.get(lower, "")
