"""resolve_image against a scripted registry (httpx.MockTransport): every check it makes."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from structlog.testing import capture_logs

from stages._config import Limits, RegistryOptions
from stages._errors import ManifestError, PlatformNotFound
from stages._manifest import index_choice, resolve_image
from stages._reference import Reference, parse_reference
from stages._registry import RegistryClient
from stages._types import Digest, MediaType, Platform, _host_platform

pytestmark = pytest.mark.filterwarnings(r"ignore:Async generator 'http(core|x)\._:ResourceWarning")

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")
# The flags of an x86-64-v3 CPU (Haswell), as /proc/cpuinfo lists them, shortened.
X86_64_V3_FLAGS = (
    "fpu cx8 cmov mmx fxsr sse sse2 lm pni ssse3 cx16 sse4_1 sse4_2 popcnt lahf_lm"
    " fma movbe xsave avx f16c abm bmi1 avx2 bmi2"
)
# ... and of an x86-64-v1 CPU (no POPCNT, SSE4, SSSE3: an early Opteron or Athlon 64).
X86_64_V1_FLAGS = "fpu cx8 cmov mmx fxsr sse sse2 lm"
UNKNOWN = {"os": "unknown", "architecture": "unknown"}
AMD64_LEVELS = ("linux/amd64/v4", "linux/amd64/v2", "linux/amd64")
REPO = "reg.example/team/app"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()


class Registry:
    """Manifests by tag or digest, blobs by digest; each served with a Content-Type."""

    def __init__(self) -> None:
        self.manifests: dict[str, tuple[bytes, str]] = {}
        self.blobs: dict[str, bytes] = {}
        self.requests: list[str] = []

    def add_manifest(self, body: bytes, media_type: str, tag: str | None = None) -> str:
        digest = sha(body)
        self.manifests[digest] = (body, media_type)
        if tag:
            self.manifests[tag] = (body, media_type)
        return digest

    def add_blob(self, body: bytes) -> str:
        self.blobs[sha(body)] = body
        return sha(body)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append(path)
        if path == "/v2/":
            return httpx.Response(200)
        _, _, rest = path.partition("/v2/team/app/")
        kind, _, target = rest.partition("/")
        if kind == "manifests" and target in self.manifests:
            body, media_type = self.manifests[target]
            return httpx.Response(200, content=body, headers={"Content-Type": media_type})
        if kind == "blobs" and target in self.blobs:
            return httpx.Response(200, content=self.blobs[target])
        return httpx.Response(404)


def config(os: str = "linux", arch: str = "amd64", diff_ids: int = 2, **extra: Any) -> bytes:
    doc = {
        "architecture": arch,
        "os": os,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{i:064x}" for i in range(diff_ids)]},
        **extra,
    }
    return dumps(doc)


def layer(i: int, media_type: str = MediaType.OCI_LAYER_GZIP, size: Any = 100) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": f"sha256:{i + 100:064x}", "size": size}


def manifest(
    reg: Registry,
    config_bytes: bytes | None = None,
    layers: list[dict[str, Any]] | None = None,
    media_type: str = MediaType.OCI_MANIFEST,
    **extra: Any,
) -> dict[str, Any]:
    config_bytes = config() if config_bytes is None else config_bytes
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": MediaType.OCI_CONFIG
            if media_type == MediaType.OCI_MANIFEST
            else MediaType.DOCKER_CONFIG,
            "digest": reg.add_blob(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [layer(0), layer(1)] if layers is None else layers,
    }
    doc.update(extra)
    return doc


def index_entry(
    reg: Registry, doc: dict[str, Any], platform: dict[str, str] | None
) -> dict[str, Any]:
    """An index entry for ``doc``; ``platform`` None leaves the (optional) field out."""
    body = dumps(doc)
    media_type = doc.get("mediaType", MediaType.OCI_MANIFEST)
    entry: dict[str, Any] = {
        "mediaType": media_type,
        "digest": reg.add_manifest(body, media_type),
        "size": len(body),
    }
    if platform is not None:
        entry["platform"] = platform
    return entry


def attestation(reg: Registry, platform: dict[str, str] | None = UNKNOWN) -> dict[str, Any]:
    """An attestation manifest as buildx adds to an index (unknown/unknown, annotated)."""
    entry = index_entry(reg, manifest(reg, config(os="unknown", arch="unknown")), platform)
    entry["annotations"] = {
        "vnd.docker.reference.type": "attestation-manifest",
        "vnd.docker.reference.digest": "sha256:" + "1" * 64,
    }
    return entry


async def resolve(
    reg: Registry,
    ref: Reference | str = REPO,
    platform: Platform = AMD64,
    limits: Limits | None = None,
    *,
    platform_asked: bool = False,
) -> Any:
    limits = limits or Limits()
    if isinstance(ref, str):
        ref = parse_reference(ref)
    with trio.fail_after(5):
        async with RegistryClient.open(
            RegistryOptions(), limits, transport=httpx.MockTransport(reg)
        ) as client:
            return await resolve_image(client, ref, platform, limits, platform_asked=platform_asked)


async def test_oci_manifest_by_tag() -> None:
    reg = Registry()
    doc = manifest(reg)
    body = dumps(doc)
    digest = reg.add_manifest(body, MediaType.OCI_MANIFEST, tag="latest")
    image = await resolve(reg)
    assert str(image.manifest_digest) == digest
    assert image.resolved_digest == image.manifest_digest
    assert image.manifest_bytes == body
    assert image.manifest_media_type == MediaType.OCI_MANIFEST
    assert image.index_bytes is None and image.index_media_type is None
    assert image.platform == AMD64
    assert str(image.config.digest) == doc["config"]["digest"]
    assert image.config_bytes == config()
    assert [str(d.digest) for d in image.layers] == [d["digest"] for d in doc["layers"]]
    assert image.layers[0].size == 100
    assert len(image.diff_ids) == 2
    assert image.diff_ids[1] == Digest(f"{1:064x}")


async def test_docker_schema2_by_digest() -> None:
    reg = Registry()
    body = dumps(
        manifest(
            reg,
            media_type=MediaType.DOCKER_MANIFEST,
            layers=[layer(0, MediaType.DOCKER_LAYER_GZIP), layer(1, MediaType.DOCKER_LAYER_GZIP)],
        )
    )
    digest = reg.add_manifest(body, MediaType.DOCKER_MANIFEST)
    image = await resolve(reg, f"{REPO}@{digest}")
    assert str(image.manifest_digest) == digest
    assert image.manifest_media_type == MediaType.DOCKER_MANIFEST
    assert reg.requests[1] == f"/v2/team/app/manifests/{digest}"


async def test_digest_mismatch_names_both() -> None:
    reg = Registry()
    body = dumps(manifest(reg))
    wanted = "sha256:" + "0" * 64
    reg.manifests[wanted] = (body, MediaType.OCI_MANIFEST)
    with pytest.raises(ManifestError) as info:
        await resolve(reg, f"{REPO}@{wanted}")
    assert wanted in str(info.value) and sha(body) in str(info.value)


def _index(
    reg: Registry, entries: list[dict[str, Any]], media_type: str = MediaType.OCI_INDEX
) -> str:
    body = dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": entries})
    return reg.add_manifest(body, media_type, tag="latest")


async def test_index_picks_platform() -> None:
    reg = Registry()
    arm = manifest(reg, config(arch="arm64"))
    amd = manifest(reg, config(arch="amd64"))
    entries = [
        index_entry(reg, arm, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
        index_entry(reg, amd, {"os": "linux", "architecture": "amd64"}),
        # An attestation manifest, as buildkit adds: no usable platform.
        index_entry(reg, amd, {"os": "unknown", "architecture": "unknown"}),
    ]
    index_digest = _index(reg, entries)
    image = await resolve(reg)
    assert str(image.resolved_digest) == index_digest
    assert str(image.manifest_digest) == entries[1]["digest"]
    assert image.index_media_type == MediaType.OCI_INDEX
    assert image.index_bytes is not None
    assert image.platform == AMD64
    image = await resolve(reg, platform=Platform("linux", "arm64"))
    assert str(image.manifest_digest) == entries[0]["digest"]
    assert image.platform == Platform("linux", "arm64", "v8")


async def test_an_index_entry_s_platform_is_normalised_as_a_request_is() -> None:
    # Entries were taken as written: linux/x86_64 or linux/aarch64 matched no request
    # (Platform.parse makes those amd64 and arm64), where containerd normalises an
    # entry before matching it, and the image was refused as having no such platform.
    reg = Registry()
    amd = manifest(reg, config(arch="amd64"))
    arm = manifest(reg, config(arch="arm64", diff_ids=1), layers=[layer(8)])
    arm32 = manifest(reg, config(arch="arm", variant="v7", diff_ids=1), layers=[layer(9)])
    entries = [
        index_entry(reg, amd, {"os": "Linux", "architecture": "x86_64", "variant": "v1"}),
        index_entry(reg, arm, {"os": "linux", "architecture": "aarch64", "variant": "8"}),
        index_entry(reg, arm32, {"os": "linux", "architecture": "armhf"}),
    ]
    _index(reg, entries)
    for wanted, taken, recorded in (
        (AMD64, entries[0], "linux/amd64"),
        (Platform.parse("linux/amd64/v3"), entries[0], "linux/amd64"),
        (Platform("linux", "arm64"), entries[1], "linux/arm64/v8"),
        (Platform.parse("linux/arm/v7"), entries[2], "linux/arm/v7"),
    ):
        image = await resolve(reg, platform=wanted, platform_asked=True)
        assert str(image.manifest_digest) == taken["digest"], wanted
        assert str(image.platform) == recorded
    # armhf is ARMv7, which an ARMv6 machine does not run.
    with pytest.raises(PlatformNotFound, match="it has: linux/amd64, linux/arm/v7, linux/arm64"):
        await resolve(reg, platform=Platform.parse("linux/arm/v6"), platform_asked=True)


async def test_index_prefers_exact_variant() -> None:
    reg = Registry()
    doc = manifest(reg, config(arch="arm"))
    v6 = index_entry(reg, doc, {"os": "linux", "architecture": "arm", "variant": "v6"})
    doc7 = manifest(reg, config(arch="arm", diff_ids=1), layers=[layer(7)])
    v7 = index_entry(reg, doc7, {"os": "linux", "architecture": "arm", "variant": "v7"})
    _index(reg, [v6, v7], MediaType.DOCKER_LIST)
    image = await resolve(reg, platform=Platform("linux", "arm", "v7"))
    assert str(image.manifest_digest) == v7["digest"]
    # `linux/arm` is v7, what containerd makes of it, and prefers it to v6 (it took
    # the first entry, v6, which a v7 machine runs more slowly if at all).
    image = await resolve(reg, platform=Platform("linux", "arm"))
    assert str(image.manifest_digest) == v7["digest"]
    _index(reg, [v6], MediaType.DOCKER_LIST)
    image = await resolve(reg, platform=Platform("linux", "arm"))
    assert str(image.manifest_digest) == v6["digest"]  # the only one


async def test_an_arm_entry_without_a_variant_is_v7() -> None:
    # containerd normalises an entry `linux/arm` to `linux/arm/v7`; the error said "no
    # manifest for linux/arm/v7; it has: linux/arm".
    reg = Registry()
    doc = manifest(reg, config(arch="arm"))
    entry = index_entry(reg, doc, {"os": "linux", "architecture": "arm"})
    _index(reg, [entry], MediaType.DOCKER_LIST)
    image = await resolve(reg, platform=Platform("linux", "arm", "v7"))
    assert str(image.manifest_digest) == entry["digest"]
    with pytest.raises(PlatformNotFound):
        await resolve(reg, platform=Platform("linux", "arm", "v6"))


def _arm_entry(reg: Registry, variant: str) -> dict[str, Any]:
    """An index entry for linux/arm/<variant>, whose config says so, of a layer of its own."""
    doc = manifest(
        reg, config(arch="arm", variant=variant, diff_ids=1), layers=[layer(int(variant[1:]))]
    )
    return index_entry(reg, doc, {"os": "linux", "architecture": "arm", "variant": variant})


async def test_arm_falls_back_to_the_closest_older_version() -> None:
    # As containerd's platforms.Only: an ARMv7 CPU runs ARMv6 and ARMv5 code. It said "no
    # manifest for linux/arm/v7; it has: linux/amd64, linux/arm/v5, linux/arm/v6".
    reg = Registry()
    v5, v6, v7, v8 = (_arm_entry(reg, v) for v in ("v5", "v6", "v7", "v8"))
    amd = index_entry(reg, manifest(reg), AMD64.to_json())
    _index(reg, [amd, v5, v6])
    # The closest first, not the first listed; `linux/arm` is v7 preferred, then older.
    for asked in ("linux/arm/v7", "linux/arm/v8", "linux/arm"):
        image = await resolve(reg, platform=Platform.parse(asked), platform_asked=True)
        assert str(image.manifest_digest) == v6["digest"], asked
        assert image.platform == Platform("linux", "arm", "v6")
    image = await resolve(reg, platform=Platform("linux", "arm", "v6"), platform_asked=True)
    assert str(image.manifest_digest) == v6["digest"]
    _index(reg, [v5, amd])
    image = await resolve(reg, platform=Platform("linux", "arm", "v6"), platform_asked=True)
    assert str(image.manifest_digest) == v5["digest"]
    # The exact variant wins over every fallback, wherever it is listed.
    _index(reg, [v5, v6, v8, v7])
    for asked, entry in (("linux/arm/v7", v7), ("linux/arm", v7), ("linux/arm/v8", v8)):
        image = await resolve(reg, platform=Platform.parse(asked), platform_asked=True)
        assert str(image.manifest_digest) == entry["digest"], asked
    # `linux/arm` is v7, and takes no newer version: it took an index's only arm/v8
    # image, which an ARMv7 CPU cannot run (containerd refuses it).
    _index(reg, [v8, v6])
    image = await resolve(reg, platform=Platform("linux", "arm"))
    assert str(image.manifest_digest) == v6["digest"]
    _index(reg, [v8])
    for asked in (Platform("linux", "arm"), Platform("linux", "arm", "v7")):
        with pytest.raises(PlatformNotFound, match=r"it has: linux/arm/v8\. Choose one"):
            await resolve(reg, platform=asked)


async def test_amd64_falls_back_to_the_closest_lower_level() -> None:
    # As containerd's platforms.Only: an x86-64-v3 CPU runs v2 and v1 (plain amd64) code.
    reg = Registry()
    entries = {}
    for i, variant in enumerate(("", "v2", "v4")):
        platform = Platform("linux", "amd64", variant or None)
        doc = manifest(reg, config(diff_ids=1), layers=[layer(20 + i)])
        entries[str(platform)] = index_entry(reg, doc, platform.to_json())
    arm64 = index_entry(
        reg, manifest(reg, config(arch="arm64")), {"os": "linux", "architecture": "arm64"}
    )
    _index(reg, [arm64, *entries.values()])
    for asked, taken in (
        ("linux/amd64/v3", "linux/amd64/v2"),
        ("linux/amd64/v4", "linux/amd64/v4"),
        ("linux/amd64/v2", "linux/amd64/v2"),
        ("linux/amd64/v1", "linux/amd64"),
        ("linux/amd64", "linux/amd64"),
    ):
        image = await resolve(reg, platform=Platform.parse(asked), platform_asked=True)
        assert str(image.manifest_digest) == entries[taken]["digest"], asked
        assert str(image.platform) == taken
    _index(reg, [arm64, entries["linux/amd64/v4"]])
    with pytest.raises(PlatformNotFound, match="no manifest for linux/amd64/v3; it has: linux/a"):
        await resolve(reg, platform=Platform.parse("linux/amd64/v3"), platform_asked=True)
    # A config naming a level is held to the same rule.
    v2_doc = manifest(reg, config(variant="v2"))
    reg.add_manifest(dumps(v2_doc), MediaType.OCI_MANIFEST, "latest")
    image = await resolve(reg, platform=Platform.parse("linux/amd64/v3"), platform_asked=True)
    assert image.platform == Platform("linux", "amd64", "v2")
    # amd64/v1 is plain amd64 (Platform.from_names, as containerd normalises it).
    with pytest.raises(
        PlatformNotFound, match=r"v2, not linux/amd64 \(that is linux/amd64/v1\) as"
    ):
        await resolve(reg, platform=Platform.parse("linux/amd64/v1"), platform_asked=True)


async def test_a_request_without_a_variant_takes_no_newer_one() -> None:
    # `--platform linux/amd64` (x86-64 level v1) took an index's only amd64/v3 image,
    # which a v1 or v2 CPU cannot run, as a last resort, and `linux/arm64` (v8) an
    # arm64/v9 one; containerd's platforms.Only refuses both.
    reg = Registry()
    v3_doc = manifest(reg, config(variant="v3"))
    v3 = index_entry(reg, v3_doc, {"os": "linux", "architecture": "amd64", "variant": "v3"})
    v9_doc = manifest(reg, config(arch="arm64", variant="v9"))
    v9 = index_entry(reg, v9_doc, {"os": "linux", "architecture": "arm64", "variant": "v9"})
    _index(reg, [v3, v9])
    for asked in ("linux/amd64", "linux/arm64", "linux/arm64/v8.4", "linux/amd64/v2"):
        with pytest.raises(PlatformNotFound) as info:
            await resolve(reg, platform=Platform.parse(asked), platform_asked=True)
        assert str(info.value).startswith(f"the image has no manifest for {asked}"), asked
        assert "; it has: linux/amd64/v3, linux/arm64/v9. Choose one" in str(info.value)
    # `--platform linux/amd64/v1` is plain linux/amd64 (Platform.parse, as containerd
    # normalises it): refused alike, the level it stands for named.
    with pytest.raises(PlatformNotFound) as info:
        await resolve(reg, platform=Platform.parse("linux/amd64/v1"), platform_asked=True)
    assert str(info.value).startswith(
        "the image has no manifest for linux/amd64 (that is linux/amd64/v1); it has:"
        " linux/amd64/v3, linux/arm64/v9. Choose one with --platform"
    )
    # The level the entry names, or a higher one, takes it.
    for asked, entry in (("linux/amd64/v3", v3), ("linux/amd64/v4", v3), ("linux/arm64/v9.2", v9)):
        image = await resolve(reg, platform=Platform.parse(asked), platform_asked=True)
        assert str(image.manifest_digest) == entry["digest"], asked
    # A single manifest's config is held to the same rule when a platform is asked for,
    # as docker's containerd image store holds it (platforms.Only(...).Match). The
    # refusal says what the plain platform asked for is, as the index's does: it said
    # "not linux/amd64 as asked" of an image for linux/amd64/v3.
    reg.add_manifest(dumps(v3_doc), MediaType.OCI_MANIFEST, "latest")
    with pytest.raises(PlatformNotFound) as info:
        await resolve(reg, platform=Platform.parse("linux/amd64"), platform_asked=True)
    assert str(info.value).startswith(
        "the image is for linux/amd64/v3, not linux/amd64 (that is linux/amd64/v1) as asked;"
        " it is a single manifest, with no other platform to choose"
    )
    image = await resolve(reg, platform=Platform.parse("linux/amd64/v3"), platform_asked=True)
    assert image.platform == Platform("linux", "amd64", "v3")


async def test_this_machine_s_x86_64_level_takes_no_higher_one_and_the_error_says_so(
    tmp_path: Path,
) -> None:
    # The machine's platform was plain linux/amd64, which took an index's only v4 image
    # on a v3 CPU. The error names the platform, whose it is or what its missing variant
    # stands for, and what the image has.
    reg = Registry()
    entries = {}
    for i, level in enumerate(("v4", "v2")):
        doc = manifest(reg, config(variant=level, diff_ids=1), layers=[layer(30 + i)])
        amd64 = {"os": "linux", "architecture": "amd64", "variant": level}
        entries[level] = index_entry(reg, doc, amd64)
    arm64 = index_entry(reg, manifest(reg, config(arch="arm64")), ARM64.to_json())
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {X86_64_V3_FLAGS}\n")
    this_machine = _host_platform("Linux", "x86_64", cpuinfo)
    assert this_machine == Platform("linux", "amd64", "v3")
    _index(reg, [entries["v4"], arm64, entries["v2"]])
    image = await resolve(reg, platform=this_machine)
    assert str(image.manifest_digest) == entries["v2"]["digest"]
    _index(reg, [entries["v4"], arm64])
    for platform, asked, named in (
        (
            this_machine,
            False,
            "linux/amd64/v3 (this machine's platform, by its CPU's x86-64 level)",
        ),
        (
            AMD64,
            False,
            "linux/amd64 (this machine's platform: x86-64 level v1, no CPU flags to read)",
        ),
        (AMD64, True, "linux/amd64 (that is linux/amd64/v1)"),
        (Platform("linux", "amd64", "v3"), True, "linux/amd64/v3"),
    ):
        with pytest.raises(PlatformNotFound) as info:
            await resolve(reg, platform=platform, platform_asked=asked)
        assert str(info.value).startswith(
            f"the image has no manifest for {named}; it has: linux/amd64/v4, linux/arm64/v8."
            " Choose one with --platform"
        ), (platform, asked)
    # Other architectures say the same of their variants.
    v9 = index_entry(reg, manifest(reg, config(arch="arm64")), {**ARM64.to_json(), "variant": "v9"})
    _index(reg, [v9])
    for platform, asked, named in (
        (ARM64, False, "linux/arm64/v8 (this machine's platform)"),
        (Platform("linux", "arm64"), True, "linux/arm64 (that is linux/arm64/v8)"),
    ):
        with pytest.raises(PlatformNotFound) as info:
            await resolve(reg, platform=platform, platform_asked=asked)
        assert str(info.value).startswith(f"the image has no manifest for {named}")


@pytest.mark.parametrize(
    "asked", ["linux/arm/v6", "linux/arm/v5", "linux/arm/v4", "linux/amd64", "linux/arm64"]
)
async def test_no_fallback_to_a_newer_arm_version_nor_to_another_architecture(asked: str) -> None:
    # A v6 CPU cannot run v7 code; an amd64 or arm64 machine is not a 386 or arm one.
    reg = Registry()
    i386 = index_entry(
        reg, manifest(reg, config(arch="386")), {"os": "linux", "architecture": "386"}
    )
    _index(reg, [i386, _arm_entry(reg, "v7")])
    with pytest.raises(PlatformNotFound) as info:
        await resolve(reg, platform=Platform.parse(asked), platform_asked=True)
    assert str(info.value).startswith(
        f"the image has no manifest for {asked}; it has: linux/386, linux/arm/v7. Choose one"
    )


async def test_a_config_of_an_older_arm_version_serves_a_newer_one_asked_for() -> None:
    # The rule an index entry is chosen by, for the platform a config names: a single
    # manifest, and an index entry without a platform. It said "the image is for
    # linux/arm/v6, not linux/arm/v7 as asked".
    reg = Registry()
    v6_doc = manifest(reg, config(arch="arm", variant="v6"))
    reg.add_manifest(dumps(v6_doc), MediaType.OCI_MANIFEST, "latest")
    for asked in (Platform("linux", "arm", "v7"), Platform("linux", "arm", "v8")):
        image = await resolve(reg, platform=asked, platform_asked=True)
        assert image.platform == Platform("linux", "arm", "v6")
    with pytest.raises(PlatformNotFound, match="is for linux/arm/v6, not linux/arm/v5 as asked"):
        await resolve(reg, platform=Platform("linux", "arm", "v5"), platform_asked=True)
    unplaced = index_entry(reg, v6_doc, None)
    _index(reg, [unplaced])
    image = await resolve(reg, platform=Platform("linux", "arm", "v7"), platform_asked=True)
    assert str(image.manifest_digest) == unplaced["digest"]
    assert image.platform == Platform("linux", "arm", "v6")
    with pytest.raises(PlatformNotFound, match=r"\(its config says linux/arm/v6\)"):
        await resolve(reg, platform=Platform("linux", "arm", "v5"), platform_asked=True)


async def test_an_index_entry_for_the_platform_that_is_no_image_says_so() -> None:
    # It said "no manifest for linux/amd64; it has: linux/amd64".
    reg = Registry()
    doc = manifest(reg)
    entry = index_entry(reg, doc, {"os": "linux", "architecture": "amd64"})
    entry["mediaType"] = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    arm = index_entry(reg, doc, {"os": "linux", "architecture": "arm64"})
    _index(reg, [entry, arm])
    with pytest.raises(ManifestError, match=r"entry for linux/amd64 is of media type") as info:
        await resolve(reg, platform=Platform("linux", "amd64"))
    assert not isinstance(info.value, PlatformNotFound)
    with pytest.raises(PlatformNotFound, match=r"it has: linux/arm64\. Choose"):
        await resolve(reg, platform=Platform("linux", "s390x"))


async def test_index_without_platform_lists_available() -> None:
    reg = Registry()
    doc = manifest(reg)
    _index(
        reg,
        [
            index_entry(reg, doc, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
            index_entry(reg, doc, {"os": "windows", "architecture": "amd64"}),
        ],
    )
    with pytest.raises(PlatformNotFound) as info:
        await resolve(reg, platform=Platform("linux", "s390x"))
    message = str(info.value)
    assert "linux/s390x" in message
    assert "linux/arm64/v8, windows/amd64" in message


async def test_an_index_of_many_platforms_names_some_of_them() -> None:
    # An index of 18,000 platforms (in its 4 MiB) made a one-line error of 295 kB.
    reg = Registry()
    doc = manifest(reg)
    _index(
        reg,
        [index_entry(reg, doc, {"os": "linux", "architecture": f"a{i:04}"}) for i in range(2000)],
    )
    with pytest.raises(PlatformNotFound) as info:
        await resolve(reg, platform=Platform("linux", "s390x"))
    message = str(info.value)
    assert "it has: linux/a0000, linux/a0001, " in message
    assert ", linux/a0049, and 1950 more platforms. Choose one with --platform" in message
    assert len(message) < 2000


async def test_index_entry_without_platform_is_a_candidate() -> None:
    reg = Registry()
    entry = index_entry(reg, manifest(reg), None)
    index_digest = _index(reg, [entry])
    image = await resolve(reg)
    assert str(image.resolved_digest) == index_digest
    assert str(image.manifest_digest) == entry["digest"]
    assert image.platform == AMD64  # from its config
    # An entry naming the platform asked for comes first.
    amd = index_entry(reg, manifest(reg, config(diff_ids=1), layers=[layer(3)]), AMD64.to_json())
    _index(reg, [entry, amd])
    assert str((await resolve(reg)).manifest_digest) == amd["digest"]


async def test_index_entry_without_platform_is_checked_against_its_config() -> None:
    reg = Registry()
    s390x = index_entry(
        reg, manifest(reg, config(arch="s390x")), {"os": "linux", "architecture": "s390x"}
    )
    unplaced = index_entry(reg, manifest(reg, config(arch="arm", variant="v7")), None)
    _index(reg, [s390x, unplaced])
    with pytest.raises(PlatformNotFound) as info:
        await resolve(reg)
    assert str(info.value).startswith(
        "the image has no manifest for linux/amd64; it has: linux/s390x, an entry without a"
        " platform (its config says linux/arm/v7). Choose one with --platform"
    )
    v6 = Platform("linux", "arm", "v6")
    with pytest.raises(PlatformNotFound, match=r"\(its config says linux/arm/v7\)"):
        await resolve(reg, platform=v6, platform_asked=True)
    # Not asked for, the machine's own platform holds a config to its variant too: an
    # ARMv6 CPU does not run ARMv7 code (it took the entry).
    with pytest.raises(PlatformNotFound) as info:
        await resolve(reg, platform=v6)
    assert str(info.value).startswith(
        "the image has no manifest for linux/arm/v6 (this machine's platform); it has:"
        " linux/s390x, an entry without a platform (its config says linux/arm/v7)."
    )
    image = await resolve(reg, platform=Platform("linux", "arm", "v7"))
    assert str(image.manifest_digest) == unplaced["digest"]
    assert image.platform == Platform("linux", "arm", "v7")


def _unplaced(reg: Registry, platform: str, layer_number: int) -> dict[str, Any]:
    """An index entry naming no platform, for an image whose config says ``platform``."""
    os, arch, *variant = platform.split("/")
    extra = {"variant": variant[0]} if variant else {}
    doc = manifest(reg, config(os, arch, diff_ids=1, **extra), layers=[layer(layer_number)])
    return index_entry(reg, doc, None)


def _fetched(reg: Registry, entry: dict[str, Any]) -> bool:
    return f"/v2/team/app/manifests/{entry['digest']}" in reg.requests


async def test_every_entry_without_a_platform_is_read_until_one_is_for_the_platform() -> None:
    # Only the first one's config was read: an index of platform-less entries served the
    # platform of its first entry, and said "no manifest for linux/amd64" to the others.
    reg = Registry()
    arm64, s390x, amd64 = (
        _unplaced(reg, p, i) for i, p in enumerate(("linux/arm64", "linux/s390x", "linux/amd64"))
    )
    _index(reg, [arm64, s390x, amd64])
    image = await resolve(reg)
    assert str(image.manifest_digest) == amd64["digest"]
    assert image.platform == AMD64
    image = await resolve(reg, platform=Platform("linux", "s390x"), platform_asked=True)
    assert str(image.manifest_digest) == s390x["digest"]
    # In the index's order, and no further than the one that fits.
    reg.requests.clear()
    image = await resolve(reg, platform=Platform("linux", "arm64", "v8"), platform_asked=True)
    assert str(image.manifest_digest) == arm64["digest"]
    assert not _fetched(reg, s390x) and not _fetched(reg, amd64)


async def test_entries_without_a_platform_give_the_closest_older_version_to_none_exact() -> None:
    reg = Registry()
    v5, v6, v7 = (_unplaced(reg, f"linux/arm/{v}", i) for i, v in enumerate(("v5", "v6", "v7")))
    v7_asked = Platform("linux", "arm", "v7")
    _index(reg, [v5, v6])
    image = await resolve(reg, platform=v7_asked, platform_asked=True)
    assert str(image.manifest_digest) == v6["digest"]
    assert image.platform == Platform("linux", "arm", "v6")
    _index(reg, [v6, v7, v5])
    reg.requests.clear()
    image = await resolve(reg, platform=v7_asked, platform_asked=True)
    assert str(image.manifest_digest) == v7["digest"]
    assert not _fetched(reg, v5)  # the exact one ends the search


async def test_this_machine_s_x86_64_level_holds_entries_without_a_platform_to_it(
    tmp_path: Path,
) -> None:
    # Without --platform, a config's variant was not looked at: on an x86-64-v3 CPU an
    # index entry naming no platform, whose config says amd64/v4, was taken, to die of
    # an illegal instruction. containerd matches such an entry by its config's platform,
    # variant included, with the machine's own as with one asked for.
    reg = Registry()
    v4, v2, plain = (_unplaced(reg, p, i) for i, p in enumerate(AMD64_LEVELS))
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {X86_64_V3_FLAGS}\n")
    this_machine = _host_platform("Linux", "x86_64", cpuinfo)
    _index(reg, [v4])
    with pytest.raises(PlatformNotFound) as info:
        await resolve(reg, platform=this_machine)
    assert str(info.value).startswith(
        "the image has no manifest for linux/amd64/v3 (this machine's platform, by its"
        " CPU's x86-64 level); it has: an entry without a platform (its config says"
        " linux/amd64/v4). Choose one with --platform"
    )
    # A level it runs is taken, as is a config naming none (every x86-64 CPU runs it).
    _index(reg, [v4, v2])
    image = await resolve(reg, platform=this_machine)
    assert str(image.manifest_digest) == v2["digest"]
    assert image.platform == Platform("linux", "amd64", "v2")
    _index(reg, [v4, plain])
    assert str((await resolve(reg, platform=this_machine)).manifest_digest) == plain["digest"]
    # A machine whose level cannot be read is v1, and takes neither v2 nor v4.
    _index(reg, [v4, v2])
    with pytest.raises(PlatformNotFound, match=r"x86-64 level v1, no CPU flags to read"):
        await resolve(reg, platform=AMD64)
    # Asked for, as before.
    image = await resolve(reg, platform=Platform.parse("linux/amd64/v4"), platform_asked=True)
    assert str(image.manifest_digest) == v4["digest"]


async def test_a_config_naming_no_variant_is_its_architecture_s_default_one(
    tmp_path: Path,
) -> None:
    # A config naming no variant counted as an exact match: among entries without a
    # platform, a plain amd64 config (v1) was taken on an x86-64-v3 CPU before an
    # amd64/v2 one, and an ARMv6 machine took a plain arm config (v7, as containerd
    # normalises it), which it cannot run.
    reg = Registry()
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {X86_64_V3_FLAGS}\n")
    this_machine = _host_platform("Linux", "x86_64", cpuinfo)
    v4, v2, plain = (_unplaced(reg, p, 60 + i) for i, p in enumerate(AMD64_LEVELS))
    _index(reg, [plain, v4, v2])
    image = await resolve(reg, platform=this_machine)
    assert str(image.manifest_digest) == v2["digest"]
    assert image.platform == Platform("linux", "amd64", "v2")
    # Plain amd64 is v1: exact for a machine of that level, which takes no v2.
    _index(reg, [v2, plain])
    assert str((await resolve(reg, platform=AMD64)).manifest_digest) == plain["digest"]
    # Plain arm is v7.
    arm_plain, arm_v6 = (
        _unplaced(reg, p, 63 + i) for i, p in enumerate(("linux/arm", "linux/arm/v6"))
    )
    _index(reg, [arm_plain])
    v6 = Platform.parse("linux/arm/v6")
    with pytest.raises(PlatformNotFound) as info:
        await resolve(reg, platform=v6)
    assert str(info.value).startswith(
        "the image has no manifest for linux/arm/v6 (this machine's platform); it has: an"
        " entry without a platform (its config says linux/arm). Choose one with --platform"
    )
    _index(reg, [arm_v6, arm_plain])
    for platform, entry in ((v6, arm_v6), (Platform.parse("linux/arm/v8"), arm_plain)):
        image = await resolve(reg, platform=platform, platform_asked=True)
        assert str(image.manifest_digest) == entry["digest"], platform
    # A single manifest's config is held to the same rule: refused when asked for, as
    # docker refuses it (platforms.Only normalises the config), pulled with a warning if not.
    reg.add_manifest(dumps(manifest(reg, config(arch="arm"))), MediaType.OCI_MANIFEST, "latest")
    with pytest.raises(PlatformNotFound, match=r"arm \(that is linux/arm/v7\), not linux/arm/v6 "):
        await resolve(reg, platform=v6, platform_asked=True)
    with capture_logs() as logs:
        image = await resolve(reg, platform=v6)
    assert image.platform == Platform("linux", "arm")
    assert [entry["log_level"] for entry in logs].count("warning") == 1, logs


async def test_a_single_manifest_for_another_platform_is_pulled_with_a_warning(
    tmp_path: Path,
) -> None:
    # Without --platform, docker pulls a single manifest of another platform (and warns
    # "The requested image's platform (...) does not match the detected host platform
    # (...)" when it is run); we pulled it and said nothing.
    reg = Registry()
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {X86_64_V3_FLAGS}\n")
    this_machine = _host_platform("Linux", "x86_64", cpuinfo)
    for config_bytes, said in (
        (config(variant="v4"), "linux/amd64/v4"),
        (config(arch="arm64", variant="v8"), "linux/arm64/v8"),
    ):
        digest = reg.add_manifest(
            dumps(manifest(reg, config_bytes)), MediaType.OCI_MANIFEST, "latest"
        )
        with capture_logs() as logs:
            image = await resolve(reg, platform=this_machine)
        assert str(image.manifest_digest) == digest
        assert str(image.platform) == said
        warnings = [entry for entry in logs if entry["log_level"] == "warning"]
        assert len(warnings) == 1, logs
        assert warnings[0]["event"].startswith(
            f"the image's platform ({said}) does not match this machine's (linux/amd64/v3),"
            " and no platform was asked for"
        )
        assert warnings[0]["digest"] == digest
        # Asked for, it is refused, as before.
        with pytest.raises(PlatformNotFound, match=f"the image is for {said}, not linux/amd"):
            await resolve(reg, platform=this_machine, platform_asked=True)
    # What the machine runs is pulled without a word.
    for config_bytes in (config(variant="v2"), config(), config(os="", arch="")):
        reg.add_manifest(dumps(manifest(reg, config_bytes)), MediaType.OCI_MANIFEST, "latest")
        with capture_logs() as logs:
            await resolve(reg, platform=this_machine)
        assert not [entry for entry in logs if entry["log_level"] == "warning"], logs


async def test_a_config_naming_no_platform_is_recorded_without_the_machine_s_level(
    tmp_path: Path,
) -> None:
    # It was recorded under the machine's platform, which now says its CPU's x86-64
    # level: linux/amd64/v4, a need the image never stated, which tools choosing an OCI
    # layout's entry by platform refuse on a lower level. docker and containerd keep
    # the config as it is.
    reg = Registry()
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {X86_64_V3_FLAGS}\n")
    this_machine = _host_platform("Linux", "x86_64", cpuinfo)
    # On an x86-64-v1 CPU the machine's platform names its level, v1, which was kept
    # as the one level that says no more than plain amd64: recorded linux/amd64/v1,
    # read back as linux/amd64 (Platform.from_names), unlike on any other level.
    v1_cpuinfo = tmp_path / "v1_cpuinfo"
    v1_cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {X86_64_V1_FLAGS}\n")
    v1_machine = _host_platform("Linux", "x86_64", v1_cpuinfo)
    assert v1_machine == Platform("linux", "amd64", "v1")
    nameless = manifest(reg, config(os="", arch="", diff_ids=1), layers=[layer(40)])
    unplaced = index_entry(reg, nameless, None)
    for platform, asked, recorded in (
        (this_machine, False, "linux/amd64"),
        (v1_machine, False, "linux/amd64"),
        (Platform.parse("linux/amd64/v4"), True, "linux/amd64"),
        (AMD64, False, "linux/amd64"),
        (ARM64, False, "linux/arm64/v8"),  # the same as plain arm64, kept as it was
        (Platform.parse("linux/arm64/v9"), True, "linux/arm64"),
        (Platform.parse("linux/arm/v7"), False, "linux/arm/v7"),
        (Platform.parse("linux/arm/v8"), True, "linux/arm"),
        # Plain arm is v7, which an ARMv6 CPU does not run: the variant stays.
        (Platform.parse("linux/arm/v6"), False, "linux/arm/v6"),
        (Platform.parse("linux/riscv64/rva23u64"), True, "linux/riscv64"),
    ):
        reg.add_manifest(dumps(nameless), MediaType.OCI_MANIFEST, "latest")
        image = await resolve(reg, platform=platform, platform_asked=asked)
        assert str(image.platform) == recorded, (platform, asked)
        _index(reg, [unplaced])
        image = await resolve(reg, platform=platform, platform_asked=asked)
        assert str(image.manifest_digest) == unplaced["digest"]
        assert str(image.platform) == recorded, (platform, asked)


async def test_entries_without_a_platform_none_of_them_for_the_platform() -> None:
    reg = Registry()
    entries = [_unplaced(reg, p, i) for i, p in enumerate(("linux/arm64", "linux/s390x"))]
    _index(reg, [*entries, entries[0]])
    with pytest.raises(PlatformNotFound) as info:
        await resolve(reg)
    assert str(info.value).startswith(
        "the image has no manifest for linux/amd64; it has: 3 entries without a platform"
        " (their configs say linux/arm64, linux/s390x). Choose one with --platform"
    )


async def test_entries_without_a_platform_are_read_up_to_the_limit() -> None:
    reg = Registry()
    entries = [
        _unplaced(reg, p, i) for i, p in enumerate(("linux/arm64", "linux/s390x", "linux/amd64"))
    ]
    _index(reg, entries)
    with pytest.raises(PlatformNotFound) as info:
        await resolve(reg, limits=Limits(max_unplaced_entries=2))
    assert "3 entries without a platform (the configs of the first 2 say linux/arm64," in str(
        info.value
    )
    assert not _fetched(reg, entries[2])


async def test_attestations_neither_chosen_nor_listed() -> None:
    reg = Registry()
    amd = index_entry(reg, manifest(reg), AMD64.to_json())
    _index(reg, [amd, attestation(reg)])
    with pytest.raises(PlatformNotFound) as info:
        await resolve(reg, platform=Platform("linux", "s390x"))
    assert "it has: linux/amd64. Choose" in str(info.value)
    with pytest.raises(PlatformNotFound, match=r"it has: linux/amd64\. Choose"):
        await resolve(reg, platform=Platform("unknown", "unknown"))
    # Nor taken as an entry without a platform, should one come without it.
    unplaced = index_entry(reg, manifest(reg, config(diff_ids=1), layers=[layer(3)]), None)
    _index(reg, [attestation(reg, None), unplaced])
    assert str((await resolve(reg)).manifest_digest) == unplaced["digest"]


async def test_nested_index_refused() -> None:
    reg = Registry()
    inner = {"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": []}
    _index(reg, [index_entry(reg, inner, {"os": "linux", "architecture": "amd64"})])
    with pytest.raises(ManifestError, match="nested indexes"):
        await resolve(reg)


async def test_index_child_lying_about_its_type_refused() -> None:
    reg = Registry()
    child = manifest(reg)
    entry = index_entry(reg, child, {"os": "linux", "architecture": "amd64"})
    entry["mediaType"] = MediaType.DOCKER_MANIFEST
    _index(reg, [entry])
    with pytest.raises(ManifestError, match="the index says"):
        await resolve(reg)


async def test_index_child_digest_checked() -> None:
    reg = Registry()
    entry = index_entry(reg, manifest(reg), {"os": "linux", "architecture": "amd64"})
    other = dumps(manifest(reg, config(diff_ids=1), layers=[layer(5)]))
    reg.manifests[entry["digest"]] = (other, MediaType.OCI_MANIFEST)
    entry["size"] = len(other)
    _index(reg, [entry])
    with pytest.raises(ManifestError, match="hashes to"):
        await resolve(reg)


async def test_config_platform_contradicting_index_refused() -> None:
    reg = Registry()
    doc = manifest(reg, config(arch="arm64"))
    _index(reg, [index_entry(reg, doc, {"os": "linux", "architecture": "amd64"})])
    with pytest.raises(ManifestError, match="its config says linux/arm64"):
        await resolve(reg)


async def test_a_config_s_platform_is_normalised_as_a_platform_asked_for_is() -> None:
    # A config was read as written: one saying x86_64 under an entry linux/amd64 was
    # refused as a contradiction, one saying aarch64 under an entry naming no platform
    # matched no machine, and a single manifest saying x86_64 was "another platform".
    # containerd reads a config's platform normalised (ConfigPlatform).
    reg = Registry()
    for entry_platform, config_platform, recorded in (
        ("linux/amd64", ("linux", "x86_64", None), "linux/amd64"),
        ("linux/arm64/v8", ("Linux", "AArch64", None), "linux/arm64/v8"),
        ("linux/arm/v7", ("linux", "armhf", None), "linux/arm/v7"),
        ("linux/arm/v7", ("linux", "arm", "7"), "linux/arm/v7"),
        ("linux/386", ("linux", "i386", None), "linux/386"),
    ):
        os, arch, variant = config_platform
        extra = {"variant": variant} if variant else {}
        doc = manifest(reg, config(os, arch, diff_ids=1, **extra), layers=[layer(7)])
        entry = index_entry(reg, doc, Platform.parse(entry_platform).to_json())
        _index(reg, [entry])
        asked = Platform.parse(entry_platform)
        image = await resolve(reg, platform=asked)
        assert str(image.manifest_digest) == entry["digest"]
        assert str(image.platform) == recorded
    # An entry without a platform is matched by its config, normalised, and recorded as
    # the normalised platform (the store's index.json names Go's architectures).
    amd64 = _unplaced(reg, "linux/x86_64", 8)
    arm64 = _unplaced(reg, "linux/aarch64", 9)
    _index(reg, [amd64, arm64])
    image = await resolve(reg, platform=ARM64)
    assert str(image.manifest_digest) == arm64["digest"]
    assert image.platform == Platform("linux", "arm64")
    image = await resolve(reg, platform=AMD64, platform_asked=True)
    assert str(image.manifest_digest) == amd64["digest"]
    assert image.platform == AMD64
    # An ARMv6 machine does not take a config saying armhf (ARMv7).
    _index(reg, [_unplaced(reg, "linux/armhf", 10)])
    with pytest.raises(PlatformNotFound, match=r"\(its config says linux/arm/v7\)"):
        await resolve(reg, platform=Platform("linux", "arm", "v6"))
    # A single manifest saying x86_64 is for linux/amd64: pulled without a warning, and
    # taken when linux/amd64 is asked for.
    reg.add_manifest(dumps(manifest(reg, config(arch="x86_64"))), MediaType.OCI_MANIFEST, "latest")
    with capture_logs() as logs:
        image = await resolve(reg)
    assert image.platform == AMD64
    assert not [entry for entry in logs if entry["log_level"] == "warning"], logs
    image = await resolve(reg, platform=AMD64, platform_asked=True)
    assert image.platform == AMD64


def _placed(
    reg: Registry, platform: str, config_platform: str, layer_number: int
) -> dict[str, Any]:
    """An index entry naming ``platform``, for an image whose config says ``config_platform``."""
    os, arch, *variant = config_platform.split("/")
    extra = {"variant": variant[0]} if variant else {}
    doc = manifest(reg, config(os, arch, diff_ids=1, **extra), layers=[layer(layer_number)])
    return index_entry(reg, doc, Platform.parse(platform).to_json())


async def test_an_entry_s_config_naming_a_variant_this_machine_does_not_run_is_refused(
    tmp_path: Path,
) -> None:
    # An entry naming a platform was checked against its config by OS and architecture
    # only: on an x86-64-v3 CPU an entry linux/amd64 whose config says amd64/v4 was
    # taken, to die of an illegal instruction. containerd chooses by the entry alone.
    reg = Registry()
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {X86_64_V3_FLAGS}\n")
    this_machine = _host_platform("Linux", "x86_64", cpuinfo)
    lying = _placed(reg, "linux/amd64", "linux/amd64/v4", 50)
    arm64 = index_entry(reg, manifest(reg, config(arch="arm64")), ARM64.to_json())
    _index(reg, [lying, arm64])
    with pytest.raises(PlatformNotFound) as info:
        await resolve(reg, platform=this_machine)
    assert str(info.value).startswith(
        "the index lists a manifest for linux/amd64, but its config says linux/amd64/v4,"
        " which linux/amd64/v3 (this machine's platform, by its CPU's x86-64 level) does"
        " not run: refused, as it would fail here. The image has: linux/amd64,"
        " linux/arm64/v8. Choose another with --platform, or pull one of its manifests by"
        " digest"
    )
    # A level the machine runs is taken.
    v2 = _placed(reg, "linux/amd64", "linux/amd64/v2", 51)
    _index(reg, [v2, arm64])
    image = await resolve(reg, platform=this_machine)
    assert str(image.manifest_digest) == v2["digest"]
    # But not on a machine whose level is unread (v1), nor for a level asked for below.
    named = "linux/amd64 (this machine's platform: x86-64 level v1, no CPU flags to"
    with pytest.raises(PlatformNotFound, match=re.escape(named)):
        await resolve(reg, platform=AMD64)
    _index(reg, [lying, arm64])
    with pytest.raises(PlatformNotFound, match=r"which linux/amd64/v3 does not run: refused\."):
        await resolve(reg, platform=Platform.parse("linux/amd64/v3"), platform_asked=True)
    # `--platform linux/amd64` names the entry as docker reads it: it is taken, and
    # recorded under its config's level.
    image = await resolve(reg, platform=AMD64, platform_asked=True)
    assert str(image.manifest_digest) == lying["digest"]
    assert str(image.platform) == "linux/amd64/v4"
    # A level asked for that runs the config's takes it.
    _index(reg, [lying, arm64])
    image = await resolve(reg, platform=Platform.parse("linux/amd64/v4"), platform_asked=True)
    assert str(image.manifest_digest) == lying["digest"]
    # Another entry is not taken in its place; the error lists it, to be asked for.
    plain = _placed(reg, "linux/amd64", "linux/amd64", 52)
    v3 = _placed(reg, "linux/amd64/v3", "linux/amd64/v4", 53)
    _index(reg, [plain, v3])
    with pytest.raises(PlatformNotFound, match=r"The image has: linux/amd64, linux/amd64/v3\. Ch"):
        await resolve(reg, platform=this_machine)
    image = await resolve(reg, platform=AMD64, platform_asked=True)
    assert str(image.manifest_digest) == plain["digest"]
    # ARM: an ARMv6 CPU runs no ARMv7 code; a config naming no variant is the entry's.
    v6 = Platform.parse("linux/arm/v6")
    _index(reg, [_placed(reg, "linux/arm/v6", "linux/arm/v7", 54)])
    with pytest.raises(PlatformNotFound, match=r"linux/arm/v6, but its config says linux/arm/v7"):
        await resolve(reg, platform=v6)
    unnamed = _placed(reg, "linux/arm/v6", "linux/arm", 55)
    _index(reg, [unnamed])
    image = await resolve(reg, platform=v6)
    assert str(image.manifest_digest) == unnamed["digest"]
    assert image.platform == v6


async def test_an_entry_is_recorded_under_the_variant_its_config_names_beyond_it(
    tmp_path: Path,
) -> None:
    # An entry linux/amd64 whose config says amd64/v2, pulled on an x86-64-v3 machine,
    # was recorded linux/amd64: a tool choosing from the store's index.json by platform
    # would take it on a v1 machine, where it dies of an illegal instruction.
    reg = Registry()
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {X86_64_V3_FLAGS}\n")
    this_machine = _host_platform("Linux", "x86_64", cpuinfo)
    riscv = Platform.parse("linux/riscv64/rva23u64")
    for entry_platform, config_platform, wanted, recorded in (
        # The config demands more than the entry: its variant is recorded.
        ("linux/amd64", "linux/amd64/v2", this_machine, "linux/amd64/v2"),
        ("linux/amd64/v2", "linux/amd64/v3", this_machine, "linux/amd64/v3"),
        ("linux/arm/v6", "linux/arm/v7", Platform.parse("linux/arm/v7"), "linux/arm/v7"),
        ("linux/riscv64", "linux/riscv64/rva23u64", riscv, "linux/riscv64/rva23u64"),
        # It says nothing the entry does not: the entry's platform, as the index names it.
        ("linux/amd64/v3", "linux/amd64/v2", this_machine, "linux/amd64/v3"),
        ("linux/amd64", "linux/amd64/v1", this_machine, "linux/amd64"),
        ("linux/amd64/v2", "linux/amd64", this_machine, "linux/amd64/v2"),
        ("linux/arm/v7", "linux/arm/v6", Platform.parse("linux/arm/v7"), "linux/arm/v7"),
        ("linux/arm/v6", "linux/arm", Platform.parse("linux/arm/v6"), "linux/arm/v6"),
        ("linux/arm64", "linux/arm64/v8", ARM64, "linux/arm64"),
        ("linux/arm64/v8", "linux/arm64", ARM64, "linux/arm64/v8"),
    ):
        entry = _placed(reg, entry_platform, config_platform, 60)
        _index(reg, [entry])
        image = await resolve(reg, platform=wanted)
        assert str(image.manifest_digest) == entry["digest"]
        assert str(image.platform) == recorded, (entry_platform, config_platform)


async def test_config_platform_without_index_not_policed() -> None:
    reg = Registry()
    reg.add_manifest(dumps(manifest(reg, config(arch="arm64"))), MediaType.OCI_MANIFEST, "latest")
    image = await resolve(reg)
    assert image.platform == Platform("linux", "arm64")


async def test_config_platform_without_index_must_match_a_platform_asked_for() -> None:
    reg = Registry()
    reg.add_manifest(dumps(manifest(reg, config(arch="arm64"))), MediaType.OCI_MANIFEST, "latest")
    with trio.fail_after(5):
        async with RegistryClient.open(
            RegistryOptions(), Limits(), transport=httpx.MockTransport(reg)
        ) as client:
            ref = parse_reference(REPO)
            with pytest.raises(PlatformNotFound, match="is for linux/arm64, not linux/amd64"):
                await resolve_image(client, ref, AMD64, Limits(), platform_asked=True)
            # A variant the config does not name is no reason to refuse.
            arm64_v8 = Platform("linux", "arm64", "v8")
            image = await resolve_image(client, ref, arm64_v8, Limits(), platform_asked=True)
    assert image.platform == Platform("linux", "arm64")


async def test_config_variant_must_match_a_variant_asked_for() -> None:
    reg = Registry()
    arm_v7 = manifest(reg, config(arch="arm", variant="v7"))
    reg.add_manifest(dumps(arm_v7), MediaType.OCI_MANIFEST, "latest")
    with pytest.raises(PlatformNotFound, match="is for linux/arm/v7, not linux/arm/v6 as asked"):
        await resolve(reg, platform=Platform("linux", "arm", "v6"), platform_asked=True)
    for asked in (Platform("linux", "arm", "v7"), Platform("linux", "arm")):
        image = await resolve(reg, platform=asked, platform_asked=True)
        assert image.platform == Platform("linux", "arm", "v7")
    # A config without a variant is its architecture's default one: plain arm is v7,
    # which an ARMv6 CPU does not run (it was taken, "the choice left to OS and
    # architecture"); an ARMv7 or v8 one does. The refusal says so, as an index's
    # names what a platform without a variant is: it said "is for linux/arm, not
    # linux/arm/v6", which reads as if plain arm were any version.
    reg.add_manifest(dumps(manifest(reg, config(arch="arm"))), MediaType.OCI_MANIFEST, "latest")
    with pytest.raises(PlatformNotFound) as info:
        await resolve(reg, platform=Platform("linux", "arm", "v6"), platform_asked=True)
    assert str(info.value).startswith(
        "the image is for linux/arm (that is linux/arm/v7), not linux/arm/v6 as asked;"
    )
    for asked in (Platform("linux", "arm", "v7"), Platform("linux", "arm", "v8")):
        image = await resolve(reg, platform=asked, platform_asked=True)
        assert image.platform == Platform("linux", "arm")


async def test_media_type_from_header_when_body_has_none() -> None:
    reg = Registry()
    doc = manifest(reg)
    del doc["mediaType"]
    reg.add_manifest(dumps(doc), MediaType.OCI_MANIFEST, "latest")
    assert (await resolve(reg)).manifest_media_type == MediaType.OCI_MANIFEST
    reg.add_manifest(dumps(doc), "application/json", "latest")  # shape decides
    assert (await resolve(reg)).manifest_media_type == MediaType.OCI_MANIFEST


async def test_manifest_over_limit_refused() -> None:
    reg = Registry()
    reg.add_manifest(
        dumps(manifest(reg, annotations={"pad": "x" * 5000})), MediaType.OCI_MANIFEST, "latest"
    )
    with pytest.raises(ManifestError, match="larger than the 4096-byte limit"):
        await resolve(reg, limits=Limits(max_manifest_bytes=4096))


async def test_config_over_limit_refused_unread() -> None:
    reg = Registry()
    doc = manifest(reg)
    doc["config"]["size"] = 5 << 20
    reg.add_manifest(dumps(doc), MediaType.OCI_MANIFEST, "latest")
    with pytest.raises(ManifestError, match="over the 4194304-byte limit"):
        await resolve(reg)
    assert not any("/blobs/" in path for path in reg.requests)


def _bad_manifests() -> list[tuple[str, Any, str]]:
    """(name, how to spoil a good manifest document, expected message)."""

    def setter(path: list[Any], value: Any) -> Any:
        def spoil(doc: dict[str, Any]) -> None:
            target: Any = doc
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value

        return spoil

    return [
        ("schema1", setter(["schemaVersion"], 1), "schema1"),
        ("schema3", setter(["schemaVersion"], 3), "schemaVersion 3"),
        ("unknown type", setter(["mediaType"], "application/x-weird"), "unsupported media type"),
        ("bad digest", setter(["layers", 0, "digest"], "sha256:abc"), "layer 0's digest"),
        ("md5 digest", setter(["layers", 0, "digest"], "md5:" + "a" * 32), "only sha256"),
        ("digest type", setter(["layers", 0, "digest"], 5), "not a string"),
        ("negative size", setter(["layers", 0, "size"], -1), "invalid size -1"),
        ("bool size", setter(["layers", 0, "size"], True), "invalid size"),
        ("float size", setter(["layers", 0, "size"], 1.5), "invalid size"),
        (
            "huge size",
            setter(["layers", 0, "size"], 2**53),
            "invalid size 9007199254740992 (must be a whole number below 2**53)",
        ),
        ("string size", setter(["layers", 0, "size"], "100"), "invalid size"),
        ("layer type", setter(["layers", 1, "mediaType"], "application/x-tar"), "layer 1"),
        ("no layer type", setter(["layers", 1, "mediaType"], None), "no mediaType"),
        ("layers not list", setter(["layers"], {}), "no layers list"),
        ("layer not object", setter(["layers", 0], "x"), "not a JSON object"),
        (
            "config type",
            setter(["config", "mediaType"], "application/x-helm"),
            "not an image config",
        ),
        ("annotations", setter(["layers", 0, "annotations"], {"a": 1}), "annotations"),
        # Fields the pull does not use, but the store keeps (the registry's bytes, or a
        # manifest converted from them) and other tools read: they passed unchecked.
        (
            "urls",
            setter(["layers", 1, "urls"], "https://x"),
            'the manifest\'s layers[1].urls is the string "https://x", not an array of strings',
        ),
        ("urls item", setter(["layers", 0, "urls"], [5]), "layers[0].urls[0] is the number 5"),
        ("data", setter(["layers", 0, "data"], 5), "layers[0].data is the number 5, not base64"),
        ("config urls", setter(["config", "urls"], {}), "the manifest's config.urls is an object"),
        ("subject", setter(["subject"], 5), "the manifest's subject is the number 5, not a"),
        (
            "subject size",
            setter(["subject"], {"mediaType": "x", "digest": "sha256:" + "1" * 64, "size": "1"}),
            'subject.size is the string "1"',
        ),
        ("artifactType", setter(["artifactType"], 5), "the manifest's artifactType is the number"),
        (
            "manifest annotations",
            setter(["annotations"], {"a": 1}),
            'the manifest\'s annotations["a"] is the number 1, not a string',
        ),
    ]


@pytest.mark.parametrize(
    ("name", "spoil", "text"), _bad_manifests(), ids=[b[0] for b in _bad_manifests()]
)
async def test_malformed_manifest_fields(name: str, spoil: Any, text: str) -> None:
    reg = Registry()
    doc = manifest(reg)
    spoil(doc)
    reg.add_manifest(dumps(doc), doc.get("mediaType") or MediaType.OCI_MANIFEST, "latest")
    with pytest.raises(ManifestError) as info:
        await resolve(reg)
    assert text in str(info.value)
    assert REPO in str(info.value)


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00{", "not valid UTF-8"),
        (b"[" * 200000 + b"]" * 200000, "nested too deeply"),
        (b'{"schemaVersion": 1' + b"0" * 5000 + b"}", "not valid JSON: a number has too many"),
        (b'{"schemaVersion": NaN}', "not valid JSON"),
        # Read as inf, and written back by ``inspect`` as Infinity, which is no JSON.
        (b'{"schemaVersion": 2, "x": 1e999}', "not valid JSON: the number 1e999 is too large"),
        (b'{"schemaVersion": 2, "x": [-1.5e400]}', "the number -1.5e400 is too large"),
        (b'{"schemaVersion": 2, "mediaType": "\\ud800"}', "not Unicode"),
        (b"[]", "not a JSON object"),
        (b'{"mediaType": 5}', "not a string"),
        (b"{}", "unsupported media type"),
    ],
)
async def test_malformed_manifest_bodies(body: bytes, text: str) -> None:
    reg = Registry()
    reg.add_manifest(body, MediaType.OCI_MANIFEST, "latest")
    reg.manifests["latest"] = (body, "application/json")
    with pytest.raises(ManifestError, match=text):
        await resolve(reg)


def _duplicated_manifest(reg: Registry) -> bytes:
    """A manifest with ``schemaVersion`` twice, at the top."""
    twice = b'"schemaVersion": 2, "schemaVersion": 2'
    return dumps(manifest(reg)).replace(b'"schemaVersion": 2', twice)


def _duplicated_index(reg: Registry) -> bytes:
    """An index whose entry names its platform's architecture twice, deep inside: Go's
    encoding/json reads the last one, as Python's did; a parser taking the first reads
    another platform."""
    entry = index_entry(reg, manifest(reg), {"os": "linux", "architecture": "amd64"})
    body = dumps({"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": [entry]})
    twice = b'"architecture": "arm64", "architecture": "amd64"'
    return body.replace(b'"architecture": "amd64"', twice)


def _duplicated_config(reg: Registry) -> bytes:
    """A manifest whose config has ``rootfs`` twice: Go's encoding/json merges the two
    objects into one struct, so docker reads the first's diff_ids where Python's ``json``
    kept only the second object, which has none (an image of no layers to it)."""
    rootfs = b'"rootfs": {"type": "layers", "diff_ids": ["sha256:' + b"1" * 64 + b'"]}'
    second = b'"rootfs": {"type": "layers"}'
    body = b'{"architecture": "amd64", "os": "linux", ' + rootfs + b", " + second + b"}"
    return dumps(manifest(reg, body, [layer(0)]))


@pytest.mark.parametrize(
    ("make", "text"),
    [
        (_duplicated_manifest, 'the manifest has the key "schemaVersion" twice in one object'),
        # The document a tag names is "the manifest" until it is read (as in all errors).
        (_duplicated_index, 'the manifest has the key "architecture" twice in one object'),
        (_duplicated_config, 'the image config has the key "rootfs" twice in one object'),
    ],
)
async def test_a_document_with_a_duplicated_key_is_refused(make: Any, text: str) -> None:
    # Two parsers may read such a document differently (Go merges duplicated objects and
    # takes the last scalar), so what its digest vouches for is no longer one thing.
    reg = Registry()
    body = make(reg)
    reg.add_manifest(body, json.loads(body)["mediaType"], "latest")
    with pytest.raises(ManifestError) as info:
        await resolve(reg)
    assert str(info.value).startswith(text)
    assert REPO in str(info.value)
    named = json.loads(body)["config"]["digest"] if "image config" in text else sha(body)
    assert info.value.digest == named


@pytest.mark.parametrize("shape", ["manifest with manifests", "index with config", "no type"])
async def test_a_document_of_both_shapes_is_refused(shape: str) -> None:
    """An image manifest that also lists manifests, or an index that also has a config
    and layers, is an index to one tool and an image to another (CVE-2021-41190): it was
    pulled, and skopeo then refused to read it from the store (found by a QA pass)."""
    reg = Registry()
    image = manifest(reg)
    entry = index_entry(reg, image, {"os": "linux", "architecture": "amd64"})
    if shape == "manifest with manifests":
        doc, served, says = {**image, "manifests": [entry]}, MediaType.OCI_MANIFEST, "manifests"
    else:
        doc = {"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": [entry]}
        doc |= {"config": image["config"], "layers": image["layers"]}
        served, says = MediaType.OCI_INDEX, "config and layers"
        if shape == "no type":  # the shape decides: an index, by its manifests
            del doc["mediaType"]
            served = "application/json"
    body = dumps(doc)
    reg.add_manifest(body, served, "latest")
    with pytest.raises(ManifestError) as info:
        await resolve(reg)
    kind = "an image manifest" if shape == "manifest with manifests" else "an index"
    assert str(info.value).startswith(
        f"the manifest is ambiguous: it is {kind} (application/vnd.oci.image."
    )
    assert f"but also has {says}, as the other kind of document does" in str(info.value)
    assert info.value.digest == sha(body)


@pytest.mark.parametrize(
    "platform",
    [
        {"arch": "amd64", "variant": "v1/extra"},
        {"arch": "amd64/x/y"},
        {"os": "linux/amd64", "arch": "x"},
        {"arch": "amd64", "variant": "\ud800"},
    ],
)
async def test_a_config_platform_that_is_no_platform_name_is_refused(
    platform: dict[str, str],
) -> None:
    # Stored as it came, "linux/amd64/v1/extra" no longer parsed when read back, and
    # every listing of the store failed; a lone surrogate failed the database write.
    reg = Registry()
    reg.add_manifest(dumps(manifest(reg, config(**platform))), MediaType.OCI_MANIFEST, "latest")
    with pytest.raises(ManifestError, match=r"malformed name|not Unicode"):
        await resolve(reg)


async def test_an_index_platform_that_is_no_platform_name_is_refused() -> None:
    reg = Registry()
    amd = manifest(reg)
    _index(reg, [index_entry(reg, amd, {"os": "linux", "architecture": "amd64", "variant": "a/b"})])
    with pytest.raises(ManifestError, match="platform has a malformed name 'a/b'"):
        await resolve(reg)


async def test_media_type_mismatch_with_header() -> None:
    reg = Registry()
    reg.add_manifest(dumps(manifest(reg)), MediaType.DOCKER_MANIFEST, "latest")
    with pytest.raises(ManifestError, match="served as"):
        await resolve(reg)


@pytest.mark.parametrize(
    ("config_bytes", "text"),
    [
        (config(diff_ids=3), "3 diff_ids for 2 layers"),
        (dumps({"rootfs": {"diff_ids": ["sha256:bad", "x"]}}), "diff_id 0"),
        (dumps({"os": "linux"}), "no rootfs.diff_ids"),
        (b"\x00not json", "image config is not valid JSON"),
        (
            config(x="X").replace(b'"X"', b"[1.0, 1e999]"),
            "image config is not valid JSON: the number 1e999",
        ),
        # Ill-typed: "architecture": 5 was taken for an unstated platform and the one asked
        # for recorded; the others were stored for other tools to choke on.
        (config(arch=5), "the image config's architecture is the number 5, not a string"),
        (config(variant=["v8"]), "the image config's variant is an array, not a string"),
        (
            dumps({"rootfs": {"type": "layers", "diff_ids": "sha256:" + "0" * 64}}),
            "the image config's rootfs.diff_ids is the string",
        ),
        (config(rootfs=[]), "the image config's rootfs is an array, not an object"),
        (config(config={"Env": "A=1"}), 'config.Env is the string "A=1", not an array of strings'),
        (config(config={"Labels": {"a": 1}}), r'config.Labels\["a"\] is the number 1'),
        (config(created="yesterday"), 'created is the string "yesterday", not a date and time'),
        (config(history=[{"empty_layer": "no"}]), r"history\[0\].empty_layer is the string"),
    ],
)
async def test_bad_configs(config_bytes: bytes, text: str) -> None:
    reg = Registry()
    reg.add_manifest(dumps(manifest(reg, config_bytes)), MediaType.OCI_MANIFEST, "latest")
    with pytest.raises(ManifestError, match=text) as info:
        await resolve(reg)
    assert REPO in str(info.value)


async def test_a_config_as_docker_writes_it_with_nulls_and_its_own_fields_is_taken() -> None:
    # OCI: an optional field may be null; fields it does not define are ignored.
    reg = Registry()
    docker_style = config(
        variant=None,
        author=None,
        created="2015-10-31T22:22:56.015925234Z",
        config={"Cmd": None, "Labels": None, "OnBuild": None, "Healthcheck": {"Test": []}},
        container_config={"Cmd": "not an OCI field"},
        history=None,
    )
    reg.add_manifest(dumps(manifest(reg, docker_style)), MediaType.OCI_MANIFEST, "latest")
    assert (await resolve(reg)).platform == AMD64


@pytest.mark.parametrize("rootfs", [{"type": "layers"}, {"type": "layers", "diff_ids": None}])
async def test_an_image_of_no_layers_may_omit_its_diff_ids(rootfs: dict[str, Any]) -> None:
    # moby writes diff_ids omitempty: FROM scratch and a LABEL has none.
    reg = Registry()
    doc = manifest(reg, dumps({"architecture": "amd64", "os": "linux", "rootfs": rootfs}), [])
    reg.add_manifest(dumps(doc), MediaType.OCI_MANIFEST, "latest")
    resolved = await resolve(reg)
    assert resolved.layers == resolved.diff_ids == ()

    reg = Registry()  # with layers, they are needed to check each layer
    doc = manifest(reg, dumps({"architecture": "amd64", "os": "linux", "rootfs": rootfs}))
    reg.add_manifest(dumps(doc), MediaType.OCI_MANIFEST, "latest")
    with pytest.raises(ManifestError, match=r"no rootfs\.diff_ids list"):
        await resolve(reg)


async def test_an_ill_typed_index_field_is_refused_before_any_manifest_is_fetched() -> None:
    reg = Registry()
    entry = index_entry(reg, manifest(reg), AMD64.to_json())
    entry["platform"]["os.features"] = "sse4"
    _index(reg, [entry])
    with pytest.raises(ManifestError) as info:
        await resolve(reg)
    assert str(info.value).startswith(
        'the index\'s manifests[0].platform.os.features is the string "sse4", not an array of'
        " strings, as the OCI image spec requires; refused"
    )
    assert not any(entry["digest"] in path for path in reg.requests)


async def test_config_digest_and_size_verified() -> None:
    reg = Registry()
    doc = manifest(reg)
    reg.blobs[doc["config"]["digest"]] = config(arch="amd65")  # same length
    reg.add_manifest(dumps(doc), MediaType.OCI_MANIFEST, "latest")
    with pytest.raises(ManifestError, match="image config received hashes to"):
        await resolve(reg)

    reg = Registry()
    doc = manifest(reg)
    doc["config"]["size"] += 10
    reg.add_manifest(dumps(doc), MediaType.OCI_MANIFEST, "latest")
    with pytest.raises(ManifestError, match="bytes but its descriptor says"):
        await resolve(reg)

    reg = Registry()
    doc = manifest(reg)
    doc["config"]["size"] -= 10
    reg.add_manifest(dumps(doc), MediaType.OCI_MANIFEST, "latest")
    with pytest.raises(ManifestError, match=r"larger than the .* bytes its descriptor says"):
        await resolve(reg)


async def test_a_foreign_layers_urls_reach_its_descriptor() -> None:
    # The layer stage fetches a foreign layer from them; they were dropped here.
    reg = Registry()
    urls = ["https://cdn.example/a", "https://cdn.example/b?sig=1"]
    foreign = {**layer(0, MediaType.DOCKER_FOREIGN_LAYER_GZIP), "urls": urls}
    doc = manifest(reg, layers=[foreign, layer(1)], media_type=MediaType.DOCKER_MANIFEST)
    reg.add_manifest(dumps(doc), MediaType.DOCKER_MANIFEST, "latest")
    resolved = await resolve(reg)
    assert [d.urls for d in resolved.layers] == [tuple(urls), ()]
    assert resolved.layers[0].to_json()["urls"] == urls


async def test_a_null_among_a_foreign_layers_urls_names_no_place_to_fetch() -> None:
    # Go decodes it as "", which no fetch can use; the others still serve.
    reg = Registry()
    foreign = {
        **layer(0, MediaType.DOCKER_FOREIGN_LAYER_GZIP),
        "urls": [None, "https://cdn.example/a"],
    }
    doc = manifest(reg, layers=[foreign, layer(1)], media_type=MediaType.DOCKER_MANIFEST)
    reg.add_manifest(dumps(doc), MediaType.DOCKER_MANIFEST, "latest")
    resolved = await resolve(reg)
    assert [d.urls for d in resolved.layers] == [("https://cdn.example/a",), ()]


def test_index_choice_is_the_entry_a_pull_takes_or_none_when_the_entries_cannot_say() -> None:
    """What the store asks of an index it keeps (``verify``'s advice): the manifest a
    pull for a platform would take, by the entries' platforms alone."""

    def entry(n: int, platform: dict[str, str] | None) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(str(n).encode()).hexdigest()
        out: dict[str, Any] = {"mediaType": MediaType.OCI_MANIFEST, "digest": digest, "size": 9}
        return {**out, "platform": platform} if platform is not None else out

    amd64, v3, arm64 = (
        entry(0, {"os": "linux", "architecture": "amd64"}),
        entry(1, {"os": "linux", "architecture": "amd64", "variant": "v3"}),
        entry(2, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
    )
    index = dumps({"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX,
                   "manifests": [amd64, v3, arm64]})  # fmt: skip
    assert index_choice(index, Platform.parse("linux/amd64/v3")) == Digest.parse(v3["digest"])
    assert index_choice(index, Platform.parse("linux/amd64")) == Digest.parse(amd64["digest"])
    assert index_choice(index, Platform.parse("linux/arm64")) == Digest.parse(arm64["digest"])
    assert index_choice(index, Platform.parse("linux/s390x")) is None  # none serves it
    unplaced = dumps({"schemaVersion": 2, "manifests": [entry(3, None)]})
    assert index_choice(unplaced, Platform.parse("linux/amd64")) is None  # configs decide
    assert index_choice(b"not an index", Platform.parse("linux/amd64")) is None
