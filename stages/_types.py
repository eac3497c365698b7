"""The shared vocabulary: digests, platforms, descriptors and media types.

Everything here is a small frozen value. A ``Digest`` exists only after its text was
validated, so a digest can be put in a path or a URL without further checks.
"""

from __future__ import annotations

import functools
import platform as _platform
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import InvalidDigest, UsageError

__all__ = [
    "Descriptor",
    "Digest",
    "MediaType",
    "Platform",
]

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, order=True)
class Digest:
    """A validated ``sha256:<64 lowercase hex>`` content digest.

    Only sha256 is accepted: it is what the registries and OCI layouts in use produce,
    and a digest we cannot verify is one we must not trust.
    """

    hex: str

    @property
    def algorithm(self) -> str:
        return "sha256"

    @classmethod
    def parse(cls, text: str, *, what: str = "digest") -> Digest:
        """Validate ``text`` or raise ``InvalidDigest`` naming ``what`` was wrong.

        Callers with more context (a reference, a manifest) re-raise it as their own
        error (``InvalidReference``, ``ManifestError``) ``from`` this one.
        """
        if not isinstance(text, str):
            raise InvalidDigest(f"{what} is not a string: {text!r:.80}")
        algorithm, sep, hexpart = text.partition(":")
        if not sep:
            raise InvalidDigest(f"{what} {text!r:.100} is not of the form sha256:<hex>")
        if algorithm != "sha256":
            raise InvalidDigest(
                f"{what} {text!r:.100} uses algorithm {algorithm!r:.20}; only sha256 is supported"
            )
        if not _SHA256_HEX.fullmatch(hexpart):
            raise InvalidDigest(
                f"{what} {text!r:.100} is not sha256 followed by 64 lowercase hex digits"
            )
        return cls(hexpart)

    @classmethod
    def from_hex(cls, hexpart: str) -> Digest:
        """Wrap the hexdigest of a sha256 we computed ourselves."""
        return cls.parse(f"sha256:{hexpart}")

    def __str__(self) -> str:
        return f"sha256:{self.hex}"

    @property
    def short(self) -> str:
        """The 12 hex digits docker shows in progress lines."""
        return self.hex[:12]


class MediaType:
    """The media types imagec-pipe understands, by their registered names."""

    OCI_INDEX = "application/vnd.oci.image.index.v1+json"
    OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
    OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
    OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
    OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
    OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
    OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

    DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
    DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
    DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
    DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    # Not in the schema2 spec, but written by some tools and accepted by containers/image.
    DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
    DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

    INDEXES = frozenset({OCI_INDEX, DOCKER_LIST})
    MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
    CONFIGS = frozenset({OCI_CONFIG, DOCKER_CONFIG})
    LAYERS_GZIP = frozenset(
        {OCI_LAYER_GZIP, OCI_LAYER_NONDIST_GZIP, DOCKER_LAYER_GZIP, DOCKER_FOREIGN_LAYER_GZIP}
    )
    LAYERS_ZSTD = frozenset({OCI_LAYER_ZSTD, OCI_LAYER_NONDIST_ZSTD})
    LAYERS_PLAIN = frozenset({OCI_LAYER, OCI_LAYER_NONDIST, DOCKER_LAYER})
    LAYERS = LAYERS_GZIP | LAYERS_ZSTD | LAYERS_PLAIN
    # Layers a registry need not serve: their descriptors name other URLs to fetch from.
    LAYERS_NONDISTRIBUTABLE = frozenset(
        {
            OCI_LAYER_NONDIST,
            OCI_LAYER_NONDIST_GZIP,
            OCI_LAYER_NONDIST_ZSTD,
            DOCKER_FOREIGN_LAYER_GZIP,
        }
    )

    # The Accept header for manifests: every kind we can handle, most preferred first.
    ACCEPT_MANIFESTS = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])


# What ``platform.machine()`` (the kernel's name for the machine) says, and the Go
# (OCI) architecture a program built for it has, with the variant the name implies
# (containerd's DefaultSpec: runtime.GOARCH, and for ARM the variant its
# getCPUVariantFromArch reads after "armv"). A name not listed is
# taken as Go's own (ppc64le, s390x, riscv64, ppc64, mips64).
_MACHINES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "i386": ("386", None),
    "i486": ("386", None),
    "i586": ("386", None),
    "i686": ("386", None),
    "x86": ("386", None),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    # A big-endian arm64 kernel runs no little-endian (arm64) program: Go's arm64be.
    "aarch64_be": ("arm64be", None),
    "loongarch64": ("loong64", None),
    "mipsel": ("mipsle", None),
    "mips64el": ("mips64le", None),
}
# 32-bit ARM as the kernel names it: "armv" and the version, then the letters of its
# extensions (armv5tel, armv5tejl, armv6l, armv7l; armv8l is a 32-bit program on an
# ARMv8 CPU), then "l" for little-endian (Go's arm) or "b" for big-endian (armbe).
_ARM_MACHINE = re.compile(r"armv([3-8])[a-z]*([lb])")
# What a 32-bit interpreter on a 64-bit kernel is: the 32-bit architecture of the same
# CPU, as containerd built for it (GOARCH 386 or arm) says; an arm64 CPU is ARMv8.
_32_BIT_OF: dict[str, tuple[str, str | None]] = {
    "amd64": ("386", None),
    "arm64": ("arm", "v8"),
}

# What a user (or an index or config) may write for an architecture, and the OCI (Go)
# name it stands for, its variant kept (containerd's normalizeArch).
_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64"}
# Names that say the variant too, whatever variant is written beside them
# (containerd's normalizeArch: armhf is arm/v7 and armel arm/v6 even written
# "armhf/v6", i386 has none). i686 is ours, and means what i386 does.
_ARCH_AND_VARIANT_ALIASES: dict[str, tuple[str, str | None]] = {
    "i386": ("386", None),
    "i686": ("386", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
}
# Variants written two ways, and the one spelling kept (after a bare version "8" is made
# "v8"), so that an index entry, a config and a --platform naming one variant are
# recorded alike: containerd's normalizeArch makes amd64/v1 plain amd64 (the first
# x86-64 level is what plain amd64 is), arm64 v8.0 v8 and v9.0 v9. Unlike containerd,
# arm64 v8 stays v8 rather than plain arm64: it is how docker and buildx write arm64
# entries, what Platform.host() says, and what the store has recorded such entries
# under; rank takes plain arm64 and v8 as the same.
_VARIANT_SPELLINGS: dict[tuple[str, str], str | None] = {
    ("amd64", "v1"): None,
    ("arm64", "v8.0"): "v8",
    ("arm64", "9.0"): "v9",
    ("arm64", "v9.0"): "v9",
}
# The variant an entry or a request without one stands for (containerd's normalizeArch
# for arm and arm64; for amd64, plain is the first x86-64 micro-architecture level, as
# containerd's Normalize makes amd64/v1 plain amd64).
_DEFAULT_VARIANTS = {"arm64": "v8", "arm": "v7", "amd64": "v1"}
# One part of os/arch/variant: Go's GOOS and GOARCH names and OCI's variants are all
# made of these; whitespace or a non-ASCII letter is a typing slip, not a platform.
_PLATFORM_PART = re.compile(r"[a-z0-9][a-z0-9._-]*")
# A version as a variant names it: an ARM version (v5 … v8) or an x86-64 level (v1 … v4);
# three digits at most, so that int() of a user's typo stays cheap.
_VERSION = re.compile(r"v([0-9]{1,3})")
# The architectures whose CPUs run the code of the versions before their own, and the
# oldest version each is taken to run (containerd's platforms.Only stops at these too).
_OLDEST_VERSIONS = {"arm": 5, "amd64": 1}
# The newest version each has: x86-64-v4 is the psABI's last level, Armv8 the last
# 32-bit ARM architecture (arm/v8 is a 64-bit CPU's 32-bit mode). Only a platform asked
# for is held to it (``Platform.check_variant``).
_NEWEST_VERSIONS = {"arm": 8, "amd64": 4}
# An arm64 variant: Armv8.x or Armv9.x, ``v8`` being v8.0 (two digits of minor at most).
_ARM64_VERSION = re.compile(r"v([89])(?:\.([0-9]{1,2}))?")
# Armv9.x has the mandatory features of Armv8.(x+5) (containerd's platforms.Only: "v9.0
# diverged from v8.5").
_ARM64_V9_IS_V8_PLUS = 5


def _version(variant: str | None) -> int | None:
    match = _VERSION.fullmatch(variant or "")
    return int(match[1]) if match else None


def _arm64_version(variant: str | None) -> tuple[int, int] | None:
    match = _ARM64_VERSION.fullmatch(variant or "")
    return (int(match[1]), int(match[2] or 0)) if match else None


def _older_by(architecture: str, wanted: str | None, offered: str | None) -> int | None:
    """How far ``offered`` comes after ``wanted`` (two different normalised variants of
    ``architecture``) in the order containerd's ``platforms.Only`` tries the versions a
    CPU of ``wanted`` runs, None if it runs no ``offered`` code: see ``Platform.rank``."""
    if architecture == "arm64":
        wanted_version, offered_version = _arm64_version(wanted), _arm64_version(offered)
        if wanted_version is None or offered_version is None:
            return None
        wanted_major, wanted_minor = wanted_version
        offered_major, offered_minor = offered_version
        if offered_major == wanted_major and offered_minor <= wanted_minor:
            return wanted_minor - offered_minor
        if (wanted_major, offered_major) == (9, 8):
            # After v9.x, v9.(x-1) … v9.0: x + 1 places, then v8.(x+5) down to v8.0.
            as_v8 = wanted_minor + _ARM64_V9_IS_V8_PLUS
            return wanted_minor + 1 + as_v8 - offered_minor if offered_minor <= as_v8 else None
        return None
    oldest = _OLDEST_VERSIONS.get(architecture)
    if oldest is not None:
        wanted_number, offered_number = _version(wanted), _version(offered)
        if wanted_number is None or offered_number is None:
            return None
        return wanted_number - offered_number if oldest <= offered_number < wanted_number else None
    # An architecture of no known versions: an entry naming no variant asks for none
    # (the architecture's baseline, as plain riscv64 or ppc64le images are built), so a
    # CPU of any variant runs it; another variant is another CPU feature set, never taken.
    return 1 if offered is None else None


# Where Linux lists the CPU's flags.
_CPUINFO = Path("/proc/cpuinfo")
# The size of this interpreter's pointers: a 32-bit one on a 64-bit kernel is a 32-bit
# userland's.
_INTERPRETER_BITS = 64 if sys.maxsize > 2**32 else 32
# The CPU flags (as /proc/cpuinfo names them) each x86-64 micro-architecture level adds,
# by the x86-64 psABI: v2 CMPXCHG16B, LAHF/SAHF, POPCNT, SSE3 ("pni"), SSE4.1, SSE4.2,
# SSSE3; v3 AVX, AVX2, BMI1, BMI2, F16C, FMA, LZCNT ("abm"), MOVBE, OSXSAVE (listed as
# "xsave": the kernel clears it, and the AVX flags, when it does not enable XSAVE); v4
# AVX-512 F, BW, CD, DQ, VL. Level 1 is every x86-64 CPU.
_AMD64_LEVEL_FLAGS = (
    (2, frozenset({"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"})),
    (3, frozenset({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"})),
    (4, frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"})),
)


def _host_platform(
    system: str, machine: str, cpuinfo: Path, interpreter_bits: int = 64
) -> Platform:
    """The platform of a machine ``platform.system()`` and ``platform.machine()`` name,
    whose CPU flags ``cpuinfo`` lists (read for ``amd64`` on Linux only), running an
    interpreter of ``interpreter_bits`` bits.

    The platform is the interpreter's, as containerd's is its binary's (``GOARCH``): a
    32-bit Python on an aarch64 kernel (a 32-bit userland, as 32-bit Raspberry Pi OS on
    a 64-bit kernel) is ``linux/arm/v8``, the platform of the userland whose tools will
    run the image, not ``arm64``.

    An ARM version is the one the kernel names the machine by (``armv6l`` v6), where
    containerd reads /proc/cpuinfo's "CPU architecture" first: the two agree but on the
    first Raspberry Pis' ARMv6 CPUs, which say "7" there (containerd corrects that by
    their model name, which older kernels do not list)."""
    machine = machine.lower()
    system = system.lower() or "linux"
    arch: str
    variant: str | None
    arm = _ARM_MACHINE.fullmatch(machine)
    if arm:
        arch, variant = ("arm" if arm[2] == "l" else "armbe"), f"v{arm[1]}"
    else:
        arch, variant = _MACHINES.get(machine, (machine, None))
    if interpreter_bits == 32 and arch in _32_BIT_OF:
        arch, variant = _32_BIT_OF[arch]
    if arch == "amd64" and system == "linux":
        flags = _cpu_flags(cpuinfo)
        # Unread, the level is left unnamed, which is v1: what every x86-64 CPU runs
        # (containerd assumes the same).
        variant = None if flags is None else f"v{_amd64_level(flags)}"
    return Platform(system, arch, variant)


def _cpu_flags(cpuinfo: Path) -> frozenset[str] | None:
    """The flags of the first CPU ``cpuinfo`` lists (the kernel lists the same for
    each), None if it cannot be read or lists none. Reading stops at that line: the
    kernel writes the file for one CPU after another as it is read."""
    try:
        with cpuinfo.open(encoding="ascii", errors="replace") as lines:
            for line in lines:
                key, colon, value = line.partition(":")
                if colon and key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        return None
    return None


def _amd64_level(flags: frozenset[str]) -> int:
    """The highest x86-64 micro-architecture level whose flags, and every lower
    level's, are all in ``flags``."""
    level = 1
    for next_level, needed in _AMD64_LEVEL_FLAGS:
        if not needed <= flags:
            break
        level = next_level
    return level


@functools.cache
def _this_host() -> Platform:
    return _host_platform(_platform.system(), _platform.machine(), _CPUINFO, _INTERPRETER_BITS)


@dataclass(frozen=True)
class Platform:
    """An OCI platform: ``os/architecture[/variant]``, as in ``linux/arm64/v8``."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]`` as a user writes it, normalised as containerd's
        ``platforms.Normalize`` does: lower case, ``x86_64`` is ``amd64``, ``aarch64``
        ``arm64``, ``armhf`` ``arm/v7``, a variant ``7`` is ``v7``. Index entries name
        platforms the Go way, so ``linux/x86_64`` would otherwise match nothing."""
        parts = text.lower().split("/")
        if len(parts) not in (2, 3) or not all(_PLATFORM_PART.fullmatch(p) for p in parts):
            raise UsageError(
                f"platform {text!r} is not of the form os/arch[/variant], e.g. linux/amd64"
            )
        return cls.from_names(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def from_names(cls, os: str, architecture: str, variant: str | None = None) -> Platform:
        """The platform these names stand for, normalised as ``parse`` normalises what a
        user writes (containerd's ``platforms.Normalize``): lower case, ``x86_64`` is
        ``amd64``, ``aarch64`` ``arm64``, ``armhf`` ``arm/v7`` and ``armel`` ``arm/v6``
        whatever variant follows, ``i386`` ``386`` with none, a variant ``7`` is ``v7``,
        ``amd64/v1`` plain ``amd64``, ``arm64/v8.0`` ``arm64/v8`` (kept where containerd
        drops it: see ``_VARIANT_SPELLINGS``). Also for an image config's names, which a
        tool naming architectures as the kernel does may write ``x86_64`` or
        ``aarch64``, and which containerd reads normalised (``ConfigPlatform``), and for
        an index entry's, which containerd normalises when it matches them. The names'
        characters are the caller's to check."""
        lowered = architecture.lower()
        if lowered in _ARCH_AND_VARIANT_ALIASES:
            arch, named = _ARCH_AND_VARIANT_ALIASES[lowered]
            return cls(os.lower(), arch, named)
        arch = _ARCH_ALIASES.get(lowered, lowered)
        named = (variant or "").lower() or None
        if named is not None and named.isdigit():
            named = f"v{named}"
        if named is not None:
            named = _VARIANT_SPELLINGS.get((arch, named), named)
        return cls(os.lower(), arch, named)

    @classmethod
    def host(cls) -> Platform:
        """This machine's platform, with architectures named as Go (and OCI) name them,
        and the variant its CPU runs: ``arm64`` v8, ``arm`` the version the machine's
        name says (``armv7l`` v7, ``armv8l`` v8), ``amd64`` its x86-64
        micro-architecture level (v1 to v4) by the CPU flags the kernel lists; a 32-bit
        Python on a 64-bit kernel is the 32-bit architecture (``386``, ``arm/v8``): as
        containerd's ``platforms.DefaultSpec`` and docker's ``maximumSpec`` detect it.
        A request for ``amd64/v3`` takes a v3, v2 or v1
        image and refuses a v4 one, which would die of an illegal instruction here.

        Read once per process: the machine does not change, and every pull (a library
        host's many) asks, on its event loop."""
        return _this_host()

    def check_variant(self) -> None:
        """Raise ``UsageError`` if this platform, asked for, names a variant that its
        architecture has none of: ``amd64`` has the x86-64 levels ``v1`` to ``v4``,
        ``arm`` ``v5`` to ``v8``, ``arm64`` ``v8`` and ``v9`` and their ``.N`` revisions.
        ``linux/amd64/v9`` (a typo of a level, or of ``arm64/v9``) took the highest level
        an index offered, as if it named a CPU newer than any.

        For a request only (``--platform``, ``PullOptions.platform``): an index entry or a
        config naming a variant unknown here is read, listed, stored and ranked as before.
        A variant of an architecture with no known versions (``riscv64``, ``ppc64le``) is
        anyone's."""
        variant = self.normalized().variant
        if self.architecture == "arm64":
            if _arm64_version(variant) is not None:
                return
            known = "v8, v9, and their revisions v8.N and v9.N"
        elif self.architecture in _NEWEST_VERSIONS:
            oldest = _OLDEST_VERSIONS[self.architecture]
            newest = _NEWEST_VERSIONS[self.architecture]
            number = _version(variant)
            # As the level is spelled: rank tells amd64/v03 from the v3 it means by its
            # text, and takes v2 for it (a CPU of level 3 runs no "newer" level 3).
            if number is not None and oldest <= number <= newest and variant == f"v{number}":
                return
            known = ", ".join(f"v{n}" for n in range(oldest, newest + 1))
        else:
            return
        raise UsageError(
            f"platform {self}: {self.architecture} has no variant {variant}; its variants "
            f"are {known}"
        )

    def matches(self, other: Platform) -> bool:
        """Whether an index entry (or an image config) ``other`` satisfies this requested
        platform: ``rank`` is not None."""
        return self.rank(other) is not None

    def rank(self, other: Platform) -> int | None:
        """How well ``other`` (an index entry's platform) serves this requested platform,
        lower is better: 0 the same platform; ``n`` a version ``n`` places older that
        this one runs; ``None`` not at all. As containerd's ``platforms.Only``.

        A missing variant on either side is the architecture's default one (``arm64``
        v8, ``arm`` v7, ``amd64`` v1, as containerd's ``platforms.Normalize`` makes it):
        an entry ``linux/arm`` is ``linux/arm/v7``, ``linux/amd64`` is
        ``linux/amd64/v1``, and so is a request. A CPU runs the code of the versions
        before its own, never of a newer one: a 32-bit ARM one down to v5 (``arm/v8``
        takes v7, then v6, then v5; ``arm/v7`` v6 then v5; ``arm/v6`` v5), an x86-64 one
        down to the first micro-architecture level (``amd64/v4`` takes v3, then v2,
        then v1 or plain ``amd64``), an arm64 one the Armv8.x and Armv9.x before its
        own (``arm64/v8.2`` takes v8.1 then v8; ``arm64/v9.1`` v9, then v8.6 down to
        v8, Armv9.x having Armv8.(x+5)'s features). So a request without a variant takes
        no newer one: ``linux/amd64`` no ``amd64/v3`` image, ``linux/arm64`` no
        ``arm64/v8.2`` or ``v9`` one, ``linux/arm`` no ``arm/v8`` one; what this machine
        runs is ``Platform.host()``, whose variant is its CPU's. An entry without a
        variant is the oldest its architecture has but for ``arm`` (v7, as docker's
        ``armhf``, which an ``arm/v6`` request refuses); of an architecture with no known
        versions (``riscv64``, ``ppc64le``), it serves any variant asked, after that
        variant's own.

        No other architecture is a fallback, although containerd makes ``386`` one for
        ``amd64`` and ``arm`` for ``arm64``: a different architecture is a different
        machine (an arm64 CPU or kernel without 32-bit support, an amd64 system without
        32-bit libraries), and an error listing the index's platforms, from which the
        user can choose one with ``--platform``, is a better answer than an image that may
        not run.
        """
        if self.os != other.os or self.architecture != other.architecture:
            return None
        wanted, offered = self.normalized().variant, other.normalized().variant
        if wanted == offered:
            return 0
        return _older_by(self.architecture, wanted, offered)

    def normalized(self) -> Platform:
        """This platform with its architecture's default variant filled in, if any: what
        ``linux/arm`` means when an index must choose among ``arm/v6`` and ``arm/v7``."""
        if self.variant is not None or self.architecture not in _DEFAULT_VARIANTS:
            return self
        return Platform(self.os, self.architecture, _DEFAULT_VARIANTS[self.architecture])

    def to_json(self) -> dict[str, str]:
        out = {"os": self.os, "architecture": self.architecture}
        if self.variant:
            out["variant"] = self.variant
        return out

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest says about one blob.

    ``size`` is validated non-negative by whoever builds it from untrusted JSON.
    ``urls`` are the descriptor's other places to download the blob from (descriptor.md:
    "a list of URIs from which this object MAY be downloaded"), as the manifest wrote
    them: unchecked text until ``RegistryClient.stream_url`` decides whether to use one.
    """

    media_type: str
    digest: Digest
    size: int
    platform: Platform | None = None
    annotations: tuple[tuple[str, str], ...] = field(default=())
    urls: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        return out
