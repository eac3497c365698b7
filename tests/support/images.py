"""Deterministic test images, built from generated files and pushed through the registry API.

Everything is a function of a seed: the same seed gives byte-identical layers, configs and
manifests (tar entries with fixed metadata, gzip with mtime 0, zstd at a fixed level), so
digests are stable across runs and machines. Files mix compressible text with random
bytes, like real layers.

Objects carry what tests assert on: ``Layer`` (compressed bytes, digest, size, diff_id,
uncompressed size, media type), ``Image`` (config, layers, manifest bytes and digest,
image ID = config digest) and ``Index`` (OCI index or Docker manifest list). ``push()``
uploads them (HEAD to skip existing blobs, monolithic POST + PUT ?digest=, manifest PUT
with its Content-Type); children of an index are pushed by digest before the index.

``docker_typed_oci_image``: an OCI manifest naming Docker config and/or layer media
types, as some build tools push (the registry takes it; OCI readers of a layout do not).

Images as real tools push them, for what must be pulled as it is: ``docker_built_image``
(a schema2 image whose config has every field docker's classic builder writes, nulls and
Docker-only fields included), ``buildx_index`` (an OCI index with buildx's attestation
manifests, platform unknown/unknown), ``docker_image_without_layers`` (a schema2 image
of no layers whose config omits ``rootfs.diff_ids``, as moby writes it) and
``image_with_null_members`` (null labels, annotations and ``Env`` entries, as a script
that writes JSON from unset values leaves them).

Broken inputs for failure tests: ``truncated_gzip_layer``, ``wrong_media_type_layer``,
``make_image(..., diff_ids=...)`` / ``mismatched_diff_ids_image``, ``corrupt_blob`` (flips a
byte of a blob in the registry's storage folder), ``oversized_manifest``, ``edited_image``
(any field of the config or manifest JSON set to anything).

A corrupted blob is corrupt for every repository of that registry: build such images from
a seed no other test uses (e.g. the test's name).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import zstandard

__all__ = [
    "Blob",
    "Compression",
    "Image",
    "Index",
    "Kind",
    "Layer",
    "MediaTypes",
    "blob_data_path",
    "buildx_index",
    "compress",
    "corrupt_blob",
    "digest_of",
    "docker_built_image",
    "docker_image_without_layers",
    "docker_typed_oci_image",
    "edited_image",
    "empty_layer",
    "generate_files",
    "image_with_null_members",
    "make_config",
    "make_image",
    "make_index",
    "make_layer",
    "mismatched_diff_ids_image",
    "oversized_manifest",
    "push",
    "push_blob",
    "push_blob_file",
    "push_manifest",
    "sample_image",
    "sample_index",
    "tar_bytes",
    "truncated_gzip_layer",
    "wrong_media_type_layer",
]

Compression = Literal["gzip", "zstd", "none"]
Kind = Literal["docker", "oci"]


class MediaTypes:
    DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
    DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
    DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
    DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
    OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    OCI_INDEX = "application/vnd.oci.image.index.v1+json"
    OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
    OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
    OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
    OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


_LAYER_TYPES: dict[tuple[Kind, Compression], str] = {
    ("oci", "gzip"): MediaTypes.OCI_LAYER_GZIP,
    ("oci", "zstd"): MediaTypes.OCI_LAYER_ZSTD,
    ("oci", "none"): MediaTypes.OCI_LAYER_TAR,
    ("docker", "gzip"): MediaTypes.DOCKER_LAYER_GZIP,
    # Docker schema2 has no zstd type; docker itself uses the OCI one inside schema2.
    ("docker", "zstd"): MediaTypes.OCI_LAYER_ZSTD,
    ("docker", "none"): MediaTypes.DOCKER_LAYER_TAR,
}


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Blob:
    """Bytes with their media type; ``digest`` and ``size`` are computed from ``data``."""

    media_type: str
    data: bytes = field(repr=False)

    @property
    def digest(self) -> str:
        return digest_of(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass(frozen=True)
class Layer:
    """A layer blob. ``data`` is what the registry serves; ``tar`` is the uncompressed stream.

    ``diff_id`` is what the image config lists: normally sha256(tar), but broken layers
    (``truncated_gzip_layer``) keep the diff_id of the complete stream. ``media_type``
    None means the standard type for the manifest kind and compression.
    """

    compression: Compression
    data: bytes = field(repr=False)
    tar: bytes = field(repr=False)
    media_type: str | None = None

    @property
    def digest(self) -> str:
        return digest_of(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def diff_id(self) -> str:
        return digest_of(self.tar)

    @property
    def uncompressed_size(self) -> int:
        return len(self.tar)

    def media_type_for(self, kind: Kind) -> str:
        return self.media_type or _LAYER_TYPES[(kind, self.compression)]

    def descriptor(self, kind: Kind) -> dict[str, Any]:
        return {"mediaType": self.media_type_for(kind), "digest": self.digest, "size": self.size}


def _platform_dict(platform: str) -> dict[str, str]:
    parts = platform.split("/")
    out = {"os": parts[0], "architecture": parts[1]}
    if len(parts) > 2 and parts[2]:
        out["variant"] = parts[2]
    return out


@dataclass(frozen=True)
class Image:
    """One platform's image: ``manifest`` is the exact bytes pushed; ``digest`` its digest."""

    kind: Kind
    platform: str  # "os/arch[/variant]"
    config: Blob
    layers: tuple[Layer, ...]
    manifest: Blob

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def media_type(self) -> str:
        return self.manifest.media_type

    @property
    def image_id(self) -> str:
        return self.config.digest

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return tuple(self.config.json()["rootfs"]["diff_ids"])

    @property
    def platform_dict(self) -> dict[str, str]:
        return _platform_dict(self.platform)

    @property
    def blobs(self) -> tuple[Blob | Layer, ...]:
        return (self.config, *self.layers)

    @property
    def compressed_size(self) -> int:
        return sum(layer.size for layer in self.layers)


@dataclass(frozen=True)
class Index:
    """An OCI index (kind "oci") or a Docker manifest list (kind "docker")."""

    kind: Kind
    images: tuple[Image, ...]
    manifest: Blob

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def media_type(self) -> str:
        return self.manifest.media_type

    def image_for(self, platform: str) -> Image:
        for image in self.images:
            if image.platform == platform:
                return image
        raise KeyError(f"{platform} not in index ({[i.platform for i in self.images]})")


# --- content ---------------------------------------------------------------------------

_WORD_TEXT = (
    "container image layer registry manifest digest config pull push blob tar gzip zstd "
    "verify stream chunk store commit index platform linux amd64 arm64 the of and to in "
    "def return import class self if else for while with async await yield None True False "
    "error warning info debug request response header body status token scope service"
)
_WORDS = tuple(_WORD_TEXT.split())


def generate_files(
    seed: int | str, total_size: int = 256 * 1024, *, count: int = 6, random_fraction: float = 0.35
) -> dict[str, bytes]:
    """``count`` files totalling about ``total_size`` bytes; ``random_fraction`` of it random.

    Text files compress ~4x with gzip, random ones not at all, so the mix behaves like real
    layers (code plus binaries). Same seed, same bytes.
    """
    rng = random.Random(f"imagec-files:{seed}")
    files: dict[str, bytes] = {}
    per_file = max(1, total_size // max(1, count))
    for i in range(count):
        if rng.random() < random_fraction:
            files[f"bin/blob{i:02d}.bin"] = rng.randbytes(per_file)
        else:
            out = io.StringIO()
            written = 0
            while written < per_file:
                line = (
                    " ".join(rng.choices(_WORDS, k=rng.randint(4, 14)))
                    + f" {rng.randint(0, 99999)}\n"
                )
                out.write(line)
                written += len(line)
            files[f"src/file{i:02d}.txt"] = out.getvalue().encode()[:per_file]
    return files


def tar_bytes(files: Mapping[str, bytes]) -> bytes:
    """A deterministic tar of ``files`` (sorted, parent directories first, fixed metadata)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        seen_dirs: set[str] = set()
        for name in sorted(files):
            parts = name.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                d = "/".join(parts[:depth])
                if d not in seen_dirs:
                    seen_dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    info.mtime = 0
                    tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(files[name]))
    return buf.getvalue()


def compress(data: bytes, compression: Compression) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)
    if compression == "none":
        return data
    raise ValueError(f"unknown compression {compression!r}")


def make_layer(
    seed: int | str,
    *,
    size: int = 256 * 1024,
    compression: Compression = "gzip",
    files: Mapping[str, bytes] | None = None,
    media_type: str | None = None,
) -> Layer:
    """A layer of generated files (about ``size`` bytes uncompressed) or of ``files``."""
    tar = tar_bytes(files if files is not None else generate_files(seed, size))
    return Layer(compression, compress(tar, compression), tar, media_type)


def empty_layer(compression: Compression = "gzip") -> Layer:
    """A layer whose tar has no entries (1024 zero bytes, as docker writes it)."""
    tar = b"\0" * 1024
    return Layer(compression, compress(tar, compression), tar)


def truncated_gzip_layer(seed: int | str, *, size: int = 256 * 1024, keep: float = 0.6) -> Layer:
    """A gzip layer cut after ``keep`` of its bytes: the blob digest and size match the cut
    bytes (so only the decompressor can notice), the diff_id is the full tar's."""
    full = make_layer(seed, size=size, compression="gzip")
    return Layer("gzip", full.data[: max(10, int(len(full.data) * keep))], full.tar)


def wrong_media_type_layer(
    seed: int | str,
    *,
    size: int = 256 * 1024,
    actual: Compression = "zstd",
    declared: str = MediaTypes.OCI_LAYER_GZIP,
) -> Layer:
    """A layer whose bytes are ``actual`` (default zstd) but declared ``declared`` (gzip)."""
    layer = make_layer(seed, size=size, compression=actual)
    return Layer(actual, layer.data, layer.tar, declared)


# --- configs and manifests -------------------------------------------------------------


def _dumps(obj: Any) -> bytes:
    # Indented like the registries' own manifests; any fixed formatting keeps digests stable.
    return json.dumps(obj, indent=3, sort_keys=False).encode()


def make_config(
    layers: Sequence[Layer],
    *,
    platform: str = "linux/amd64",
    kind: Kind = "oci",
    diff_ids: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Blob:
    """The image config: rootfs.diff_ids (from the layers unless given), os/architecture
    (and variant), a config section and one history entry per layer plus an empty one."""
    plat = _platform_dict(platform)
    history: list[dict[str, Any]] = [
        {"created": "2024-01-01T00:00:00Z", "created_by": "ENV IMAGEC_TEST=1", "empty_layer": True}
    ]
    history += [
        {"created": "2024-01-01T00:00:00Z", "created_by": f"COPY layer{i} /"}
        for i in range(len(layers))
    ]
    config: dict[str, Any] = {
        "created": "2024-01-01T00:00:00Z",
        "architecture": plat["architecture"],
        "os": plat["os"],
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": list(diff_ids) if diff_ids is not None else [x.diff_id for x in layers],
        },
        "history": history,
    }
    if "variant" in plat:
        config["variant"] = plat["variant"]
    if extra:
        config.update(extra)
    media_type = MediaTypes.OCI_CONFIG if kind == "oci" else MediaTypes.DOCKER_CONFIG
    return Blob(media_type, _dumps(config))


def make_image(
    layers: Sequence[Layer],
    *,
    kind: Kind = "oci",
    platform: str = "linux/amd64",
    diff_ids: Sequence[str] | None = None,
    config: Blob | None = None,
    manifest_media_type: str | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Image:
    """An image manifest (OCI or Docker schema2) over ``layers``.

    ``diff_ids`` overrides the config's list (to make it not match); ``manifest_media_type``
    overrides the ``mediaType`` field (the Content-Type used for push stays the kind's).
    """
    cfg = config or make_config(layers, platform=platform, kind=kind, diff_ids=diff_ids)
    media_type = MediaTypes.OCI_MANIFEST if kind == "oci" else MediaTypes.DOCKER_MANIFEST
    body: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": manifest_media_type or media_type,
        "config": cfg.descriptor(),
        "layers": [layer.descriptor(kind) for layer in layers],
    }
    if annotations:
        body["annotations"] = dict(annotations)
    return Image(kind, platform, cfg, tuple(layers), Blob(media_type, _dumps(body)))


def make_index(
    images: Sequence[Image], *, kind: Kind = "oci", with_platforms: bool = True
) -> Index:
    """An OCI index or Docker manifest list listing ``images`` with their platforms
    (``with_platforms=False``: without, as OCI allows; their configs still name them)."""
    media_type = MediaTypes.OCI_INDEX if kind == "oci" else MediaTypes.DOCKER_LIST
    manifests = []
    for image in images:
        desc = image.manifest.descriptor()
        if with_platforms:
            desc["platform"] = image.platform_dict
        manifests.append(desc)
    body = {"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}
    return Index(kind, tuple(images), Blob(media_type, _dumps(body)))


def sample_image(
    seed: int | str,
    *,
    kind: Kind = "oci",
    platform: str = "linux/amd64",
    compressions: Sequence[Compression] = ("gzip", "zstd", "none"),
    layer_size: int = 256 * 1024,
    with_empty_layer: bool = True,
    base: Sequence[Layer] = (),
) -> Image:
    """``base`` layers, then one layer per compression, then an empty layer.

    Docker schema2 images default to gzip and none only when ``compressions`` is left as is
    (docker writes zstd layers only in OCI manifests).
    """
    if kind == "docker" and tuple(compressions) == ("gzip", "zstd", "none"):
        compressions = ("gzip", "none")
    layers = list(base)
    layers += [
        make_layer(f"{seed}:{platform}:{i}", size=layer_size, compression=c)
        for i, c in enumerate(compressions)
    ]
    if with_empty_layer:
        layers.append(empty_layer("gzip"))
    return make_image(layers, kind=kind, platform=platform)


def sample_index(
    seed: int | str,
    *,
    kind: Kind = "oci",
    platforms: Sequence[str] = ("linux/amd64", "linux/arm64/v8"),
    layer_size: int = 128 * 1024,
) -> Index:
    """A two-platform index (default linux/amd64 and linux/arm64/v8) whose images share a
    base layer and each have their own layers."""
    base = [make_layer(f"{seed}:base", size=layer_size, compression="gzip")]
    images = [
        sample_image(
            seed,
            kind=kind,
            platform=p,
            layer_size=layer_size,
            base=base,
            compressions=("gzip",) if kind == "docker" else ("gzip", "zstd"),
        )
        for p in platforms
    ]
    return make_index(images, kind=kind)


def docker_typed_oci_image(
    seed: int | str, *, docker_config: bool = True, docker_layers: bool = True
) -> Image:
    """An OCI image manifest whose config (``docker_config``) and/or layers
    (``docker_layers``) carry Docker media types: one gzip layer, one plain tar layer."""
    layer_types = (
        (MediaTypes.DOCKER_LAYER_GZIP, MediaTypes.DOCKER_LAYER_TAR)
        if docker_layers
        else (None, None)
    )
    layers = [
        make_layer(f"{seed}:0", compression="gzip", media_type=layer_types[0]),
        make_layer(f"{seed}:1", compression="none", media_type=layer_types[1]),
    ]
    config = make_config(layers, kind="docker" if docker_config else "oci")
    return make_image(layers, kind="oci", config=config)


def classic_docker_config(*, parent: str, container: str, diff_ids: list[str]) -> dict[str, Any]:
    """An image config as docker's classic builder writes it: its container,
    container_config and docker_version, Go's nulls for what is unset, ports and volumes
    as objects of empty objects, a healthcheck (Go durations, in nanoseconds), a shell,
    nanosecond times, history entries of no layer (one without a date). ``parent`` is the
    builder's parent image ID, ``container`` its build container's ID."""
    container_config = {
        "Hostname": container[:12],
        "Domainname": "",
        "User": "",
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "ExposedPorts": {"80/tcp": {}},
        "Tty": False,
        "OpenStdin": False,
        "StdinOnce": False,
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["/bin/sh", "-c", "#(nop) ", 'CMD ["nginx" "-g" "daemon off;"]'],
        "Image": parent,
        "Volumes": None,
        "WorkingDir": "",
        "Entrypoint": ["/docker-entrypoint.sh"],
        "OnBuild": None,
        "Labels": {"maintainer": "NGINX Docker Maintainers <docker-maint@nginx.com>"},
        "StopSignal": "SIGQUIT",
    }
    return {
        "architecture": "amd64",
        "config": {
            **container_config,
            "Hostname": "",
            "Cmd": ["nginx", "-g", "daemon off;"],
            "ArgsEscaped": True,
            "Volumes": {"/var/cache/nginx": {}},
            "Healthcheck": {
                "Test": ["CMD-SHELL", "curl -f http://localhost/ || exit 1"],
                "Interval": 30000000000,
                "Timeout": 3000000000,
                "StartPeriod": 0,
                "Retries": 3,
            },
            "Shell": ["/bin/bash", "-c"],
        },
        "container": container,
        "container_config": container_config,
        "created": "2023-05-11T20:14:56.123456789Z",
        "docker_version": "20.10.23",
        "history": [
            {
                "created": "2023-05-03T22:20:08.23812497Z",
                "created_by": "/bin/sh -c #(nop) ADD file:0a1b2c in / ",
            },
            {
                "created": "2023-05-03T22:20:08.654281633Z",
                "created_by": '/bin/sh -c #(nop)  CMD ["bash"]',
                "empty_layer": True,
            },
            {"created_by": "/bin/sh -c #(nop)  EXPOSE 80", "empty_layer": True},
            {
                "created": "2023-05-11T20:14:56.123456789Z",
                "created_by": "/bin/sh -c #(nop) COPY file:3d4e5f in /docker-entrypoint.sh ",
                "author": "",
                "comment": "",
            },
        ],
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }


def docker_built_image(seed: int | str) -> Image:
    """A Docker schema2 image of two layers whose config is as docker's classic builder
    writes it (``classic_docker_config``)."""
    layers = [
        make_layer(f"{seed}:0", compression="gzip"),
        make_layer(f"{seed}:1", compression="gzip", size=64 * 1024),
    ]
    config = classic_docker_config(
        parent=digest_of(f"{seed}:parent".encode()),
        container="0d9f5e3e6b21" + hashlib.sha256(str(seed).encode()).hexdigest()[12:],
        diff_ids=[layer.diff_id for layer in layers],
    )
    cfg = Blob(MediaTypes.DOCKER_CONFIG, json.dumps(config, separators=(",", ":")).encode())
    return make_image(layers, kind="docker", config=cfg)


def docker_image_without_layers(seed: int | str) -> Image:
    """A Docker schema2 image of no layers (``FROM scratch`` and a ``LABEL``), whose config
    has no ``rootfs.diff_ids``: moby's RootFS writes them ``omitempty``."""
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": None, "Cmd": None, "Labels": {"seed": str(seed)}, "OnBuild": None},
        "created": "2023-05-11T20:14:56.5+00:00",
        "history": [{"created_by": f"/bin/sh -c #(nop)  LABEL seed={seed}", "empty_layer": True}],
        "rootfs": {"type": "layers"},
    }
    cfg = Blob(MediaTypes.DOCKER_CONFIG, json.dumps(config).encode())
    return make_image([], kind="docker", config=cfg)


def image_with_null_members(seed: int | str) -> Image:
    """An OCI image as a build script in a language of nullable values writes it, a value
    it had not set becoming null inside a map or an array: a label, an ``Env`` entry, an
    exposed port, an annotation of the manifest and of its layer. The registry takes it
    (Go's encoding/json decodes each as its zero value, "" or {}), as do docker and
    containerd."""
    layers = [make_layer(f"{seed}:0", compression="gzip", size=64 * 1024)]

    def config(doc: dict[str, Any]) -> None:
        doc["config"]["Env"].append(None)
        doc["config"]["Labels"] = {"org.opencontainers.image.revision": None, "seed": str(seed)}
        doc["config"]["ExposedPorts"] = {"8080/tcp": None}

    def manifest(body: dict[str, Any]) -> None:
        body["annotations"] = {"org.opencontainers.image.revision": None}
        body["layers"][0]["annotations"] = {"org.opencontainers.image.title": None}

    return edited_image(make_image(layers), config=config, manifest=manifest)


_IN_TOTO = "application/vnd.in-toto+json"


def _attestation_for(image: Image, seed: int | str) -> tuple[Image, dict[str, Any]]:
    """buildx's attestation manifest for ``image`` (an in-toto provenance statement as its
    layer, a config for unknown/unknown) and its index entry."""
    statement = json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://slsa.dev/provenance/v0.2",
            "subject": [{"name": f"pkg:docker/app@{seed}", "digest": {"sha256": image.digest[7:]}}],
            "predicate": {
                "builder": {"id": ""},
                "buildType": "https://mobyproject.org/buildkit@v1",
            },
        }
    ).encode()
    layer = Layer("none", statement, statement, _IN_TOTO)
    config = Blob(
        MediaTypes.OCI_CONFIG,
        json.dumps(
            {
                "architecture": "unknown",
                "os": "unknown",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
            }
        ).encode(),
    )
    body = {
        "schemaVersion": 2,
        "mediaType": MediaTypes.OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [
            {
                **layer.descriptor("oci"),
                "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"},
            }
        ],
    }
    attestation = Image(
        "oci", "unknown/unknown", config, (layer,), Blob(MediaTypes.OCI_MANIFEST, _dumps(body))
    )
    entry = {
        **attestation.manifest.descriptor(),
        "annotations": {
            "vnd.docker.reference.digest": image.digest,
            "vnd.docker.reference.type": "attestation-manifest",
        },
        "platform": {"architecture": "unknown", "os": "unknown"},
    }
    return attestation, entry


def buildx_index(
    seed: int | str, *, platforms: Sequence[str] = ("linux/amd64", "linux/arm64/v8")
) -> Index:
    """An OCI index as ``docker buildx build --push`` writes it with provenance on (the
    default): each platform's image, then an attestation manifest per image, listed for
    the platform unknown/unknown and annotated with the image it attests."""
    platform_images = [
        sample_image(seed, platform=p, compressions=("gzip",), layer_size=64 * 1024)
        for p in platforms
    ]
    manifests: list[dict[str, Any]] = []
    for image in platform_images:
        manifests.append({**image.manifest.descriptor(), "platform": image.platform_dict})
    attestations = []
    for image in platform_images:
        attestation, entry = _attestation_for(image, seed)
        attestations.append(attestation)
        manifests.append(entry)
    body = {"schemaVersion": 2, "mediaType": MediaTypes.OCI_INDEX, "manifests": manifests}
    return Index("oci", (*platform_images, *attestations), Blob(MediaTypes.OCI_INDEX, _dumps(body)))


def mismatched_diff_ids_image(seed: int | str, *, kind: Kind = "oci") -> Image:
    """An image whose config lists a wrong diff_id for its last layer (blob digests right)."""
    layers = [
        make_layer(f"{seed}:0", compression="gzip"),
        make_layer(f"{seed}:1", compression="gzip"),
    ]
    wrong = [layers[0].diff_id, digest_of(b"not the layer " + str(seed).encode())]
    return make_image(layers, kind=kind, diff_ids=wrong)


def edited_image(
    image: Image,
    *,
    config: Callable[[dict[str, Any]], None] | None = None,
    manifest: Callable[[dict[str, Any]], None] | None = None,
) -> Image:
    """``image`` with its config JSON changed in place by ``config`` and then its manifest
    JSON by ``manifest`` (the manifest names the changed config). The registry stores a
    config as any blob, and ignores manifest fields its Go types lack; what it refuses
    (a layer's ``"size": "12"``) can be served from a FixtureServer."""
    cfg = image.config
    if config is not None:
        doc = cfg.json()
        config(doc)
        cfg = Blob(cfg.media_type, _dumps(doc))
    body = json.loads(image.manifest.data)
    body["config"] = cfg.descriptor()
    if manifest is not None:
        manifest(body)
    return Image(
        image.kind, image.platform, cfg, image.layers, Blob(image.media_type, _dumps(body))
    )


def oversized_manifest(image: Image, *, size: int = 4 * 1024 * 1024 + 1024) -> Blob:
    """``image``'s manifest padded with an annotation to ``size`` bytes (over the 4 MiB limit
    the registry enforces, so serve it from a FixtureServer)."""
    body = json.loads(image.manifest.data)
    body.setdefault("annotations", {})["org.example.padding"] = ""
    base = len(_dumps(body))
    body["annotations"]["org.example.padding"] = "x" * max(0, size - base)
    return Blob(image.manifest.media_type, _dumps(body))


# --- registry storage ------------------------------------------------------------------


def blob_data_path(storage_dir: str | Path, digest: str) -> Path:
    """``docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data`` under the registry storage."""
    algo, _, hexpart = digest.partition(":")
    return Path(storage_dir) / "docker/registry/v2/blobs" / algo / hexpart[:2] / hexpart / "data"


def corrupt_blob(storage_dir: str | Path, digest: str, *, offset: int | None = None) -> None:
    """Flip one byte (default: the middle one) of a stored blob, keeping its length, so the
    registry still serves it with the old size and digest headers."""
    path = blob_data_path(storage_dir, digest)
    data = bytearray(path.read_bytes())
    pos = len(data) // 2 if offset is None else offset
    data[pos] ^= 0xFF
    path.write_bytes(bytes(data))


# --- push ------------------------------------------------------------------------------


def _check(response: httpx.Response, what: str) -> None:
    if response.status_code >= 300:
        raise RuntimeError(
            f"{what}: {response.request.method} {response.request.url} -> "
            f"{response.status_code} {response.text[:500]}"
        )


def push_blob(client: httpx.Client, repository: str, blob: Blob | Layer) -> None:
    """Upload one blob unless the registry has it (HEAD), in one POST + PUT ?digest=."""
    digest = blob.digest
    head = client.head(f"/v2/{repository}/blobs/{digest}")
    if head.status_code == 200:
        return
    start = client.post(f"/v2/{repository}/blobs/uploads/")
    _check(start, f"start upload of {digest} to {repository}")
    location = httpx.URL(start.headers["Location"])
    if not location.is_absolute_url:
        location = client.base_url.join(str(location))
    put = client.put(
        location.copy_merge_params({"digest": digest}),
        content=blob.data,
        headers={"Content-Type": "application/octet-stream"},
    )
    _check(put, f"upload of {digest} to {repository}")


def push_blob_file(
    client: httpx.Client, repository: str, path: str | Path, digest: str | None = None
) -> str:
    """Upload a blob from a file without reading it into memory (for big benchmark layers).

    ``digest`` None: computed by reading the file once. Returns the digest.
    """
    path = Path(path)
    if digest is None:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        digest = "sha256:" + h.hexdigest()
    if client.head(f"/v2/{repository}/blobs/{digest}").status_code == 200:
        return digest
    start = client.post(f"/v2/{repository}/blobs/uploads/")
    _check(start, f"start upload of {digest} to {repository}")
    location = httpx.URL(start.headers["Location"])
    if not location.is_absolute_url:
        location = client.base_url.join(str(location))

    def chunks() -> Iterator[bytes]:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk

    put = client.put(
        location.copy_merge_params({"digest": digest}),
        content=chunks(),
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Length": str(path.stat().st_size),
        },
    )
    _check(put, f"upload of {digest} to {repository}")
    return digest


def push_manifest(client: httpx.Client, repository: str, reference: str, manifest: Blob) -> str:
    """PUT a manifest under a tag or digest with its Content-Type; return its digest."""
    response = client.put(
        f"/v2/{repository}/manifests/{reference}",
        content=manifest.data,
        headers={"Content-Type": manifest.media_type},
    )
    _check(response, f"manifest {reference} of {repository}")
    return manifest.digest


def push(
    client: httpx.Client, repository: str, image: Image | Index, tag: str | None = "latest"
) -> str:
    """Push an image (blobs, then manifest) or an index (every image by digest, then the
    index) and tag it (``tag=None``: by digest only). Returns the pushed manifest's digest."""
    if isinstance(image, Index):
        for child in image.images:
            push(client, repository, child, None)
        return push_manifest(client, repository, tag or image.digest, image.manifest)
    for blob in image.blobs:
        push_blob(client, repository, blob)
    return push_manifest(client, repository, tag or image.digest, image.manifest)
