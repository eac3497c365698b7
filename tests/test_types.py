"""The shared vocabulary: how a requested platform ranks what an index offers."""

from __future__ import annotations

import pytest

from stages._types import Platform


@pytest.mark.parametrize(
    ("asked", "offered", "rank"),
    [
        ("linux/amd64", "linux/amd64", 0),
        ("linux/arm64", "linux/arm64/v8", 0),
        ("linux/arm/v7", "linux/arm", 0),  # an entry without a variant is v7
        ("linux/arm/v7", "linux/arm/v6", 1),
        ("linux/arm/v7", "linux/arm/v5", 2),
        ("linux/arm/v8", "linux/arm", 1),
        ("linux/arm/v8", "linux/arm/v5", 3),
        ("linux/arm/v6", "linux/arm/v5", 1),
        ("linux/arm", "linux/arm/v6", 1),  # `linux/arm` is v7 …
        ("linux/arm/v6", "linux/arm/v7", None),  # never a newer version
        ("linux/arm/v6", "linux/arm", None),
        ("linux/arm/v5", "linux/arm/v4", None),  # nor one older than v5
        ("linux/arm/v7", "linux/arm/v6l", None),  # nor what is no ARM version
        ("linux/arm64/v8", "linux/arm64/v8.2", None),  # only ARM's versions fall back
        # x86-64 micro-architecture levels, plain amd64 being v1 (containerd's
        # platforms.Only): a v3 machine said "no manifest for linux/amd64/v3" to an
        # index of plain amd64 and arm64.
        ("linux/amd64/v1", "linux/amd64", 0),
        ("linux/amd64", "linux/amd64/v1", 0),
        ("linux/amd64/v2", "linux/amd64", 1),
        ("linux/amd64/v2", "linux/amd64/v1", 1),
        ("linux/amd64/v3", "linux/amd64/v2", 1),
        ("linux/amd64/v3", "linux/amd64", 2),
        ("linux/amd64/v4", "linux/amd64/v3", 1),
        ("linux/amd64/v4", "linux/amd64/v1", 3),
        ("linux/amd64/v4", "linux/amd64", 3),
        ("linux/amd64/v2", "linux/amd64/v3", None),  # never a newer level
        ("linux/amd64/v1", "linux/amd64/v2", None),
        ("linux/amd64/v3", "linux/amd64/v0", None),  # nor one older than v1
        ("linux/amd64/v3", "linux/amd64/v3.1", None),  # nor what is no level
        ("linux/arm/v7", "linux/arm/v1", None),  # an ARM version below v5 stays refused
        ("linux/amd64/v3", "linux/386", None),
        ("linux/amd64", "linux/386", None),  # nor other architectures
        ("linux/arm64", "linux/arm/v7", None),
        ("linux/arm/v7", "windows/arm/v7", None),
    ],
)
def test_rank(asked: str, offered: str, rank: int | None) -> None:
    assert Platform.parse(asked).rank(Platform.parse(offered)) == rank
    assert Platform.parse(asked).matches(Platform.parse(offered)) is (rank is not None)


def test_a_request_without_a_variant_takes_any_after_the_older_versions() -> None:
    arm = Platform("linux", "arm")
    fallbacks = [arm.rank(Platform("linux", "arm", v)) for v in ("v7", "v6", "v5", "v8", "x")]
    assert fallbacks[:3] == [0, 1, 2]
    assert fallbacks[3] is not None and fallbacks[3] == fallbacks[4] > fallbacks[2]
    assert Platform("linux", "arm64").rank(Platform("linux", "arm64", "v9")) is not None


def test_a_request_for_plain_amd64_is_v1_then_any_level() -> None:
    amd64 = Platform("linux", "amd64")
    ranks = [amd64.rank(Platform.parse(f"linux/amd64/{v}")) for v in ("v1", "v2", "v4")]
    assert ranks[0] == 0
    assert ranks[1] is not None and ranks[1] == ranks[2] and ranks[1] > 0
