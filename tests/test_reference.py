"""parse_reference: docker's normalisation, and a clear error for every malformed name."""

from __future__ import annotations

import pytest

from stages._errors import InvalidReference
from stages._reference import Reference, parse_reference
from stages._types import Digest

D = "sha256:" + "a" * 64
DIGEST = Digest("a" * 64)

GOOD = [
    ("alpine", Reference("docker.io", "library/alpine", "latest", None)),
    ("alpine:3.19", Reference("docker.io", "library/alpine", "3.19", None)),
    ("docker.io/alpine", Reference("docker.io", "library/alpine", "latest", None)),
    ("index.docker.io/alpine", Reference("docker.io", "library/alpine", "latest", None)),
    ("index.docker.io/user/app:v1", Reference("docker.io", "user/app", "v1", None)),
    ("docker.io/library/alpine", Reference("docker.io", "library/alpine", "latest", None)),
    ("user/app", Reference("docker.io", "user/app", "latest", None)),
    ("a/b/c/d", Reference("docker.io", "a/b/c/d", "latest", None)),
    ("localhost/app", Reference("localhost", "app", "latest", None)),
    ("localhost:5000/app:1", Reference("localhost:5000", "app", "1", None)),
    ("127.0.0.1:5000/team/app:1.0", Reference("127.0.0.1:5000", "team/app", "1.0", None)),
    ("reg.example/app@" + D, Reference("reg.example", "app", None, DIGEST)),
    ("reg.example/app:1@" + D, Reference("reg.example", "app", "1", DIGEST)),
    ("alpine@" + D, Reference("docker.io", "library/alpine", None, DIGEST)),
    ("[::1]:5000/app", Reference("[::1]:5000", "app", "latest", None)),
    ("[::1]/app:x", Reference("[::1]", "app", "x", None)),
    ("Reg.Example.COM/app", Reference("Reg.Example.COM", "app", "latest", None)),
    (
        "reg-1.example:443/a.b_c__d---e/f",
        Reference("reg-1.example:443", "a.b_c__d---e/f", "latest", None),
    ),
    ("app:" + "A" * 128, Reference("docker.io", "library/app", "A" * 128, None)),
    ("app:_x.Y-z", Reference("docker.io", "library/app", "_x.Y-z", None)),
]


@pytest.mark.parametrize(("text", "want"), GOOD, ids=[t for t, _ in GOOD])
def test_parse_good(text: str, want: Reference) -> None:
    assert parse_reference(text) == want


def test_str_and_properties() -> None:
    ref = parse_reference("alpine")
    assert str(ref) == "docker.io/library/alpine:latest"
    assert ref.api_host == "registry-1.docker.io"
    assert ref.manifest_ref == "latest"
    by_digest = parse_reference("127.0.0.1:5000/app:1@" + D)
    assert str(by_digest) == "127.0.0.1:5000/app:1@" + D
    assert by_digest.manifest_ref == D
    assert by_digest.api_host == "127.0.0.1:5000"


BAD = [
    ("", "empty"),
    (":tag", "no repository"),
    ("@" + D, "no repository"),
    ("Alpine", "lowercase"),
    ("user/App", "lowercase"),
    ("reg.example/Team/app", "lowercase"),
    ("app:-bad", "bad tag"),
    ("app:.bad", "bad tag"),
    ("app:" + "a" * 129, "bad tag"),
    ("app:", "bad tag"),
    ("app:t@g", "bad digest"),
    ("app@sha256:abc", "bad digest"),
    ("app@md5:" + "a" * 32, "bad digest"),
    ("app@" + D.upper(), "bad digest"),
    ("app@", "bad digest"),
    ("app@" + D + "@" + D, "bad digest"),
    ("app/", "empty path component"),
    ("reg.example/app/", "empty path component"),
    ("reg.example//app", "empty path component"),
    ("a//b", "empty path component"),
    ("/app", "empty path component"),
    ("reg.example/", "no repository name after the registry"),
    ("app_-x", "bad path component"),
    ("-app", "bad path component"),
    ("app.", "bad path component"),
    ("a" * 250 + "/" + "b" * 10, "longer than 255"),
    ("reg.example/" + "a" * 250, "longer than 255"),
    ("reg_example:5000/app", "bad registry name"),
    ("reg.example:99999/app", "out of range"),
    ("reg.example:0/app", "out of range"),
    ("-reg.example/app", "bad registry name"),
    ("[zz::1]:5000/app", "bad registry name"),
    ("[1::2::3]:5000/app", "not an IPv6 address"),
    ("al pine", "whitespace"),
    (" alpine", "whitespace"),
    ("alpine\n", "whitespace"),
    ("a" * 64, "image ID"),
    ("app:tag:more", "bad path component"),
]


@pytest.mark.parametrize(("text", "why"), BAD, ids=[repr(t)[:40] for t, _ in BAD])
def test_parse_bad(text: str, why: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse_reference(text)
    message = str(info.value)
    assert why in message
    assert "invalid reference" in message
    assert repr(text)[:40] in message or text == ""
