"""The shared vocabulary: the host's platform, and how a requested one ranks an index's."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest

from stages._errors import UsageError
from stages._types import Platform, _host_platform


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
        ("linux/arm64/v8", "linux/arm64/v8.2", None),  # never a newer arm64 version
        # arm64's Armv8.x and Armv9.x, v9.x having v8.(x+5)'s features (platforms.Only).
        ("linux/arm64", "linux/arm64/v8.0", 0),
        ("linux/arm64/v8.2", "linux/arm64/v8.1", 1),
        ("linux/arm64/v8.2", "linux/arm64", 2),
        ("linux/arm64/v9", "linux/arm64/v8.5", 1),
        ("linux/arm64/v9", "linux/arm64/v8", 6),
        ("linux/arm64/v9.1", "linux/arm64/v9", 1),
        ("linux/arm64/v9.1", "linux/arm64/v8.6", 2),
        ("linux/arm64/v9.1", "linux/arm64", 8),
        ("linux/arm64/v9", "linux/arm64/v8.6", None),
        ("linux/arm64/v9", "linux/arm64/v9.1", None),
        ("linux/arm64/v8.5", "linux/arm64/v9", None),
        ("linux/arm64/v9", "linux/arm64/v10", None),  # nor what is no arm64 version
        # A request without a variant is the architecture's default, and takes no newer.
        ("linux/arm64", "linux/arm64/v8.2", None),
        ("linux/arm64", "linux/arm64/v9", None),
        ("linux/arm", "linux/arm/v8", None),
        ("linux/amd64", "linux/amd64/v2", None),
        ("linux/amd64", "linux/amd64/v4", None),
        # Architectures of no known versions: an entry without a variant serves any.
        ("linux/riscv64/rva23u64", "linux/riscv64", 1),
        ("linux/riscv64", "linux/riscv64/rva23u64", None),
        ("linux/ppc64le/power10", "linux/ppc64le/power9", None),
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


@pytest.mark.parametrize(
    ("names", "platform"),
    [
        # containerd's normalizeArch: the alias names the variant, whatever is written.
        (("linux", "armhf", "v6"), "linux/arm/v7"),
        (("linux", "armel", "v7"), "linux/arm/v6"),
        (("linux", "armel", None), "linux/arm/v6"),
        (("linux", "i386", "v7"), "linux/386"),
        (("linux", "i686", "v7"), "linux/386"),
        # amd64/v1 is plain amd64, written either way.
        (("linux", "amd64", "v1"), "linux/amd64"),
        (("linux", "x86_64", "V1"), "linux/amd64"),
        (("linux", "amd64", "1"), "linux/amd64"),
        (("linux", "amd64", "v3"), "linux/amd64/v3"),
        # arm64: v8.0 is v8, v9.0 v9; v8 itself is kept (docker's spelling, the host's).
        (("linux", "arm64", "v8.0"), "linux/arm64/v8"),
        (("linux", "aarch64", "8"), "linux/arm64/v8"),
        (("linux", "arm64", "v8"), "linux/arm64/v8"),
        (("linux", "arm64", None), "linux/arm64"),
        (("linux", "arm64", "v9.0"), "linux/arm64/v9"),
        (("linux", "arm64", "9.0"), "linux/arm64/v9"),
        (("linux", "arm64", "v8.2"), "linux/arm64/v8.2"),
        # Unchanged: what needed no rule, or what other architectures name alike.
        (("linux", "arm", "7"), "linux/arm/v7"),
        (("linux", "arm", None), "linux/arm"),
        (("linux", "386", "v1"), "linux/386/v1"),
        (("linux", "riscv64", "rva23u64"), "linux/riscv64/rva23u64"),
    ],
)
def test_names_are_normalised_as_containerd_s_normalize_arch(
    names: tuple[str, str, str | None], platform: str
) -> None:
    # armhf/v6 was arm/v6 (an ARMv6 image for a v7 name), i386/v7 was 386/v7,
    # amd64/v1 and arm64/v8.0 were kept as written: recorded apart from the same
    # platform written otherwise. Normalising twice changes nothing (the store reads
    # back what it recorded with Platform.parse).
    normalised = Platform.from_names(*names)
    assert str(normalised) == platform
    assert Platform.parse(str(normalised)) == normalised
    assert Platform.parse("/".join(n for n in names if n)) == normalised


@pytest.mark.parametrize(
    "asked",
    ["linux/amd64", "linux/amd64/v1", "linux/x86_64/v4", "linux/amd64/3", "linux/arm/v5",
     "linux/arm/v8", "linux/armhf", "linux/arm64", "linux/arm64/v8", "linux/arm64/v8.9",
     "linux/aarch64/v9.0", "linux/arm64/v9.5", "linux/riscv64/rva23u64", "linux/386/v1",
     "windows/amd64/v2"],
)  # fmt: skip
def test_a_variant_the_architecture_has_may_be_asked_for(asked: str) -> None:
    Platform.parse(asked).check_variant()


@pytest.mark.parametrize(
    ("asked", "known"),
    [
        ("linux/amd64/v9", "v1, v2, v3, v4"),
        ("linux/amd64/v0", "v1, v2, v3, v4"),
        ("linux/amd64/v3.1", "v1, v2, v3, v4"),
        ("linux/x86_64/avx2", "v1, v2, v3, v4"),
        ("linux/arm/v4", "v5, v6, v7, v8"),
        ("linux/arm/v9", "v5, v6, v7, v8"),
        ("linux/arm64/v7", "v8, v9, and their revisions v8.N and v9.N"),
        ("linux/arm64/v10", "v8, v9, and their revisions v8.N and v9.N"),
    ],
)
def test_a_variant_the_architecture_has_not_is_refused_when_asked_for(
    asked: str, known: str
) -> None:
    # linux/amd64/v9 took the highest level an index had, as if it named a newer CPU.
    platform = Platform.parse(asked)
    with pytest.raises(UsageError) as refused:
        platform.check_variant()
    assert str(refused.value) == (
        f"platform {platform}: {platform.architecture} has no variant {platform.variant}; "
        f"its variants are {known}"
    )
    # What an index entry or a config names is still read, recorded and ranked as
    # before (taken by no request): only a request is held to the known variants.
    assert Platform.parse(str(platform)) == platform
    newest = {"amd64": "v4", "arm": "v8", "arm64": "v9.5"}[platform.architecture]
    asked = Platform(platform.os, platform.architecture, newest)
    asked.check_variant()
    assert asked.rank(platform) is None


def test_a_request_without_a_variant_is_the_default_one_and_takes_no_newer() -> None:
    # A request without a variant took an entry of any other variant as a last resort:
    # `--platform linux/amd64` pulled an index's only amd64/v3 image, which an x86-64-v1
    # or v2 CPU cannot run, and `linux/arm` (v7) an arm/v8 one; containerd refuses both.
    for asked, taken, refused in (
        ("linux/amd64", ("", "v1"), ("v2", "v3", "v4")),
        ("linux/arm", ("", "v7", "v6", "v5"), ("v8",)),
        ("linux/arm64", ("", "v8"), ("v8.2", "v9", "v9.1")),
    ):
        request = Platform.parse(asked)
        for variant in taken:
            assert request.rank(Platform.parse(f"{asked}/{variant}".rstrip("/"))) is not None
        for variant in refused:
            assert request.rank(Platform.parse(f"{asked}/{variant}")) is None, (asked, variant)


# /proc/cpuinfo's flags lines of real CPUs, shortened to what the levels look at and a
# few others.
_BASELINE = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr cmov pat mmx fxsr sse sse2 lm"
_V2 = f"{_BASELINE} pni ssse3 cx16 sse4_1 sse4_2 popcnt lahf_lm"  # Nehalem
_V3 = f"{_V2} fma movbe xsave avx f16c abm bmi1 avx2 bmi2 xsaveopt"  # Haswell
_V4 = f"{_V3} avx512f avx512dq avx512cd avx512bw avx512vl"  # Skylake-SP


def _cpuinfo(path: Path, flags: str | None) -> Path:
    """A /proc/cpuinfo of two CPUs whose flags lines say ``flags`` (None: no such line)."""
    cpus = []
    for n in range(2):
        lines = [f"processor\t: {n}", "vendor_id\t: GenuineIntel", "model name\t: Some CPU"]
        if flags is not None:
            lines.append(f"flags\t\t: {flags}")
        lines.append("bogomips\t: 4800.00")
        cpus.append("\n".join(lines) + "\n")
    path.write_text("\n".join(cpus))
    return path


@pytest.mark.parametrize(
    ("flags", "level"),
    [
        (_BASELINE, "v1"),
        (_V2, "v2"),
        (_V3, "v3"),
        (_V4, "v4"),
        (_V3.replace(" movbe", ""), "v2"),  # every flag of a level, or not that level
        (_V2.replace(" popcnt", "") + " avx avx2 bmi1 bmi2 f16c fma abm movbe xsave", "v1"),
        (_V4.replace(" avx2", ""), "v2"),  # nor any level above it
    ],
)
def test_the_host_amd64_level_is_read_from_the_cpu_flags(
    tmp_path: Path, flags: str, level: str
) -> None:
    # Platform.host() was plain linux/amd64, and a request without a variant took any
    # level an index offered: a v3-only image was pulled on a v2 CPU, to die of an
    # illegal instruction.
    cpuinfo = _cpuinfo(tmp_path / "cpuinfo", flags)
    assert _host_platform("Linux", "x86_64", cpuinfo) == Platform("linux", "amd64", level)


def test_an_unread_amd64_level_is_v1(tmp_path: Path) -> None:
    no_flags = _cpuinfo(tmp_path / "cpuinfo", None)
    for cpuinfo in (no_flags, tmp_path / "missing", tmp_path):
        host = _host_platform("Linux", "x86_64", cpuinfo)
        assert host == Platform("linux", "amd64")
        assert host.normalized() == Platform("linux", "amd64", "v1")


def test_other_hosts_read_no_cpu_flags(tmp_path: Path) -> None:
    v4 = _cpuinfo(tmp_path / "cpuinfo", _V4)
    assert _host_platform("Linux", "aarch64", v4) == Platform("linux", "arm64", "v8")
    assert _host_platform("Linux", "armv7l", v4) == Platform("linux", "arm", "v7")
    assert _host_platform("Linux", "armv6l", v4) == Platform("linux", "arm", "v6")
    assert _host_platform("Linux", "s390x", v4) == Platform("linux", "s390x")
    assert _host_platform("Darwin", "x86_64", v4) == Platform("darwin", "amd64")


@pytest.mark.parametrize(
    ("machine", "bits", "host"),
    [
        # What containerd's platforms.DefaultSpec says on each machine (GOARCH, and the
        # ARM version after "armv" in the machine's name), with a Python of ``bits``.
        ("x86_64", 64, "linux/amd64"),
        ("amd64", 64, "linux/amd64"),
        ("aarch64", 64, "linux/arm64/v8"),
        ("arm64", 64, "linux/arm64/v8"),
        ("armv8l", 32, "linux/arm/v8"),  # a 32-bit program on an ARMv8 CPU
        ("armv7l", 32, "linux/arm/v7"),
        ("armv6l", 32, "linux/arm/v6"),
        ("armv5tel", 32, "linux/arm/v5"),
        ("armv5tejl", 32, "linux/arm/v5"),
        ("armv7b", 32, "linux/armbe/v7"),  # big-endian: no arm program runs there
        ("aarch64_be", 64, "linux/arm64be"),  # nor any arm64 one here
        ("i386", 32, "linux/386"),
        ("i686", 32, "linux/386"),
        ("x86", 32, "linux/386"),
        ("ppc64le", 64, "linux/ppc64le"),
        ("s390x", 64, "linux/s390x"),
        ("riscv64", 64, "linux/riscv64"),
        ("loongarch64", 64, "linux/loong64"),
        ("mips64el", 64, "linux/mips64le"),
        # A 32-bit Python on a 64-bit kernel: a 32-bit userland, as containerd built for
        # it (GOARCH arm, 386) says.
        ("aarch64", 32, "linux/arm/v8"),
        ("x86_64", 32, "linux/386"),
        ("s390x", 32, "linux/s390x"),
    ],
)
def test_the_machine_s_name_is_go_s_architecture_and_variant(
    tmp_path: Path, machine: str, bits: int, host: str
) -> None:
    # armv8l, armv5tel and armv5tejl were taken for architectures of those names (no
    # index offers them), aarch64_be for arm64's own name, a 32-bit Python on an aarch64
    # kernel for arm64.
    no_flags = tmp_path / "missing"
    assert _host_platform("Linux", machine, no_flags, bits) == Platform.parse(host)
    assert str(_host_platform("Linux", machine, no_flags, bits)) == host


def test_the_host_platform_takes_the_lower_levels_and_refuses_a_higher_one(
    tmp_path: Path,
) -> None:
    host = _host_platform("Linux", "x86_64", _cpuinfo(tmp_path / "cpuinfo", _V3))
    ranks = [host.rank(Platform.parse(f"linux/amd64/{v}")) for v in ("v3", "v2", "v1", "v4")]
    assert ranks == [0, 1, 2, None]
    assert host.rank(Platform("linux", "amd64")) == 2
    bits = 64 if sys.maxsize > 2**32 else 32
    assert Platform.host() == _host_platform(
        platform.system(), platform.machine(), Path("/proc/cpuinfo"), bits
    )


@pytest.mark.parametrize(
    ("asked", "spelled", "known"),
    [
        ("linux/amd64/v03", "linux/amd64/v3", "v1, v2, v3, v4"),
        ("linux/amd64/v004", "linux/amd64/v4", "v1, v2, v3, v4"),
        ("linux/arm/v07", "linux/arm/v7", "v5, v6, v7, v8"),
    ],
)
def test_a_level_spelled_with_a_leading_zero_is_refused_when_asked_for(
    asked: str, spelled: str, known: str
) -> None:
    # amd64/v03 passed the check as level 3, but rank tells variants by their text: the
    # request took an index's v2 entry over its v3 one (arm/v07 took v6 over v7).
    platform = Platform.parse(asked)
    assert platform.rank(Platform.parse(spelled)) is None
    with pytest.raises(UsageError) as refused:
        platform.check_variant()
    assert str(refused.value) == (
        f"platform {platform}: {platform.architecture} has no variant {platform.variant}; "
        f"its variants are {known}"
    )
