"""Image references, normalised as docker does.

``alpine`` → ``docker.io/library/alpine:latest``; requests for ``docker.io`` go to
``registry-1.docker.io``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from ._errors import InvalidDigest, InvalidReference
from ._types import Digest

__all__ = ["Reference", "parse_reference"]

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_LEGACY_DOCKER_HUB = "index.docker.io"
# docker's NameTotalLengthMax: the normalised ``registry/repository``.
NAME_MAX = 255

# The grammar of distribution/reference (docker's), one piece per name.
PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?P<host>{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[(?P<ipv6>[a-fA-F0-9:]+)\])"
    r"(?::(?P<port>[0-9]+))?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_HEX64 = re.compile(r"[a-f0-9]{64}")


@dataclass(frozen=True)
class Reference:
    """A normalised image reference.

    ``registry`` is the name as users write it (``docker.io``, ``127.0.0.1:5000``);
    ``repository`` the path (``library/alpine``); at least one of ``tag`` and
    ``digest`` is set (a bare name gets the tag ``latest``).
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def api_host(self) -> str:
        """The ``host[:port]`` that requests go to."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def manifest_ref(self) -> str:
        """What goes after ``/manifests/``: the digest when there is one, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        assert self.tag is not None
        return self.tag

    def __str__(self) -> str:
        out = self.name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


def parse_reference(text: str) -> Reference:
    """Parse and normalise an image reference, or raise ``InvalidReference``.

    The rules are docker's (distribution/reference ``ParseNormalizedNamed``) so that a
    reference means here what it means to ``docker pull``: the first path component is a
    registry only if it looks like a host (a ``.`` or ``:`` in it, or ``localhost``).
    """
    if not isinstance(text, str) or not text:
        raise InvalidReference("invalid reference '': the image reference is empty")

    def bad(why: str) -> InvalidReference:
        return InvalidReference(f"invalid reference {text!r:.300}: {why}")

    if text != text.strip() or any(c.isspace() for c in text):
        raise bad("it contains whitespace")
    rest, at, digest_text = text.partition("@")
    digest: Digest | None = None
    if at:
        try:
            digest = Digest.parse(digest_text, what="digest")
        except InvalidDigest as exc:
            raise bad(f"bad digest: {exc.message}") from exc
    # The tag is after the last ':' that follows the last '/': a ':' before it is a port.
    tag: str | None = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise bad(
                f"bad tag {tag!r:.140}: a tag is up to 128 letters, digits, '_', '.' or '-'"
                " and does not start with '.' or '-'"
            )
    if not rest:
        raise bad("no repository name")

    registry, repository = _split_domain(rest)
    if registry in (DOCKER_HUB, _LEGACY_DOCKER_HUB):
        registry = DOCKER_HUB
        if "/" not in repository:
            repository = f"library/{repository}"
    elif not _DOMAIN.fullmatch(registry):
        raise bad(f"bad registry name {registry!r}")
    else:
        _check_port(registry, bad)
    if not repository:
        raise bad("no repository name after the registry")
    if repository != repository.lower():
        raise bad(f"repository name {repository!r} must be lowercase")
    for component in repository.split("/"):
        if not component:
            raise bad("empty path component (leading, trailing or double '/')")
        if not PATH_COMPONENT.fullmatch(component):
            raise bad(
                f"bad path component {component!r:.100}: use lowercase letters and digits,"
                " separated by '.', '_', '__' or '-'"
            )
    if _HEX64.fullmatch(rest):
        raise bad("a 64-hex-digit name looks like an image ID, not a repository")
    if len(registry) + 1 + len(repository) > NAME_MAX:
        raise bad(f"the name is longer than {NAME_MAX} characters")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, repository, tag, digest)


def _split_domain(name: str) -> tuple[str, str]:
    first, slash, remainder = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first, remainder
    return DOCKER_HUB, name


def _check_port(registry: str, bad: Callable[[str], InvalidReference]) -> None:
    match = _DOMAIN.fullmatch(registry)
    assert match is not None
    port = match.group("port")
    if port is not None and not 0 < int(port) < 65536:
        raise bad(f"port {port} is out of range")
    ipv6 = match.group("ipv6")
    if ipv6 is not None:
        try:
            ipaddress.IPv6Address(ipv6)
        except ValueError as exc:
            raise bad(f"{ipv6!r} is not an IPv6 address") from exc
