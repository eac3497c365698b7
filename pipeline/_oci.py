"""The OCI image layout's JSON: conversion to an OCI manifest, and index.json.

Pure functions on bytes and dicts, no I/O, so the store's file handling and the format
rules can be read (and tested) apart.

Why convert: skopeo's and umoci's ``oci:`` readers accept only OCI media types in an
image layout (skopeo refuses a Docker config as "an artifact", umoci a Docker config or
layer type), so a Docker schema2 image, and an OCI manifest that names a Docker config
or layer media type (some build tools push those, and registries accept them), is
listed in ``index.json`` through an OCI manifest built from it: the same config and
layer blobs, with media types renamed
(``application/vnd.docker.container.image.v1+json`` → ``application/vnd.oci.image.config.v1+json``,
``…docker.image.rootfs.diff.tar.gzip`` → ``application/vnd.oci.image.layer.v1.tar+gzip``,
``…docker.image.rootfs.foreign.diff.tar.gzip`` →
``application/vnd.oci.image.layer.nondistributable.v1.tar+gzip``). The registry's own
manifest bytes stay in ``blobs/`` under the registry's digest; the converted manifest
records that digest in its annotations under the key::

    io.github.imagec-pipe.original-manifest-digest

(``ORIGINAL_DIGEST_ANNOTATION``), and the ``index.json`` entry carries the same
annotation, so a reader can always get back to what the registry served. An OCI
manifest of OCI media types only is listed as the registry's bytes, unconverted
(``needs_conversion``).

Each ``index.json`` entry is the OCI descriptor of a manifest with its ``platform`` and
``org.opencontainers.image.ref.name`` = the full normalised reference
(``docker.io/library/alpine:latest``, ``127.0.0.1:5000/team/app:1.0``, or
``name@sha256:…`` for a pull by digest). skopeo 1.9 and umoci 0.4.7 both accept such
names (with ``/``, ``:`` and ``@``) as ``oci:<store>:<ref.name>`` / ``<store>:<ref.name>``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from stages._types import Descriptor, Digest, MediaType, Platform

__all__ = [
    "ORIGINAL_DIGEST_ANNOTATION",
    "REF_NAME_ANNOTATION",
    "ConversionError",
    "dumps_index",
    "empty_index",
    "index_entry",
    "index_with_entry",
    "needs_conversion",
    "to_oci_manifest",
]

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
ORIGINAL_DIGEST_ANNOTATION = "io.github.imagec-pipe.original-manifest-digest"


# Docker media type → OCI media type. OCI types map to themselves (a Docker schema2
# manifest may carry OCI layer types, e.g. zstd layers pushed by buildkit; an OCI
# manifest may carry Docker ones).
_TO_OCI = {
    MediaType.DOCKER_CONFIG: MediaType.OCI_CONFIG,
    MediaType.DOCKER_LAYER_GZIP: MediaType.OCI_LAYER_GZIP,
    MediaType.DOCKER_FOREIGN_LAYER_GZIP: MediaType.OCI_LAYER_NONDIST_GZIP,
    MediaType.DOCKER_LAYER: MediaType.OCI_LAYER,
    MediaType.OCI_CONFIG: MediaType.OCI_CONFIG,
    **{t: t for t in MediaType.LAYERS if t.startswith("application/vnd.oci.")},
}


# OCI manifest fields with no Docker schema2 counterpart, kept as they are: what an
# OCI manifest refers to (a signature's or SBOM's subject) stays findable.
_OCI_FIELDS = ("artifactType", "subject")


class ConversionError(ValueError):
    """The manifest cannot be expressed as an OCI manifest (the store wraps it)."""


def needs_conversion(media_type: str, descriptors: Iterable[Descriptor]) -> bool:
    """Whether ``index.json`` must list an OCI manifest converted from this one.

    ``media_type`` is the registry manifest's, ``descriptors`` its config and layers. A
    Docker schema2 manifest always needs it; an OCI manifest only when it names a Docker
    media type, so that an OCI image stays listed under the registry's own digest.
    """
    if media_type != MediaType.OCI_MANIFEST:
        return True
    return any(_TO_OCI.get(d.media_type, d.media_type) != d.media_type for d in descriptors)


def _dumps(obj: Any) -> bytes:
    # Fixed key order (insertion order) and no whitespace: converting the same Docker
    # manifest always gives the same bytes, hence the same digest.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _convert_descriptor(desc: Any, what: str) -> dict[str, Any]:
    if not isinstance(desc, dict):
        raise ConversionError(f"{what} is not a JSON object")
    media_type = desc.get("mediaType")
    oci_type = _TO_OCI.get(media_type) if isinstance(media_type, str) else None
    if oci_type is None:
        raise ConversionError(f"{what} has media type {media_type!r:.100} with no OCI equivalent")
    out: dict[str, Any] = {
        "mediaType": oci_type,
        "digest": desc.get("digest"),
        "size": desc.get("size"),
    }
    # urls (foreign layers) and annotations are valid OCI descriptor fields: keep them.
    for key in ("urls", "annotations"):
        if key in desc:
            out[key] = desc[key]
    return out


def to_oci_manifest(manifest_bytes: bytes, original: Digest) -> tuple[bytes, Digest]:
    """Convert a Docker schema2 manifest, or an OCI manifest naming Docker media types,
    to an OCI image manifest of OCI media types over the same blobs.

    Returns the new manifest's bytes and digest. The original digest is recorded under
    ``ORIGINAL_DIGEST_ANNOTATION``; an OCI manifest's annotations, ``subject`` and
    ``artifactType`` are kept. Raises ``ConversionError`` for a manifest that is neither
    kind (a manifest without ``mediaType`` is OCI, which allows leaving it out) or uses a
    media type OCI has no name for.
    """
    try:
        doc = json.loads(manifest_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConversionError(f"manifest is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("mediaType", MediaType.OCI_MANIFEST) not in (
        MediaType.MANIFESTS
    ):
        raise ConversionError("manifest is not a Docker schema2 or OCI image manifest")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise ConversionError("manifest has no layers list")
    annotations = doc.get("annotations")
    annotations = dict(annotations) if isinstance(annotations, dict) else {}
    annotations[ORIGINAL_DIGEST_ANNOTATION] = str(original)
    oci = {
        "schemaVersion": 2,
        "mediaType": MediaType.OCI_MANIFEST,
        "config": _convert_descriptor(doc.get("config"), "config descriptor"),
        "layers": [_convert_descriptor(d, f"layer {i}") for i, d in enumerate(layers)],
        **{key: doc[key] for key in _OCI_FIELDS if key in doc},
        "annotations": annotations,
    }
    data = _dumps(oci)
    return data, Digest.from_hex(hashlib.sha256(data).hexdigest())


def empty_index() -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": []}


def index_entry(
    *,
    digest: Digest,
    size: int,
    platform: Platform,
    ref_name: str,
    original: Digest | None,
) -> dict[str, Any]:
    """The ``index.json`` descriptor of one OCI manifest, named ``ref_name``."""
    annotations = {REF_NAME_ANNOTATION: ref_name}
    if original is not None:
        annotations[ORIGINAL_DIGEST_ANNOTATION] = str(original)
    return {
        "mediaType": MediaType.OCI_MANIFEST,
        "digest": str(digest),
        "size": size,
        "annotations": annotations,
        "platform": platform.to_json(),
    }


def index_with_entry(index: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """``index`` with ``entry`` added, replacing any entry of the same ref name.

    Entries other tools wrote (unknown fields, other names, no name) are kept as they are.
    """
    name = entry["annotations"][REF_NAME_ANNOTATION]
    manifests = index.get("manifests")
    kept = [
        m
        for m in (manifests if isinstance(manifests, list) else [])
        if not (
            isinstance(m, dict)
            and isinstance(m.get("annotations"), dict)
            and m["annotations"].get(REF_NAME_ANNOTATION) == name
        )
    ]
    out = dict(index)
    out.setdefault("schemaVersion", 2)
    out.setdefault("mediaType", MediaType.OCI_INDEX)
    out["manifests"] = [*kept, entry]
    return out


def index_without(index: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """``index`` without the entries whose ref name is one of ``names`` (``rmi``); every
    other entry, other tools' included, is kept as it is."""
    removed = set(names)
    manifests = index.get("manifests")
    out = dict(index)
    out["manifests"] = [
        m
        for m in (manifests if isinstance(manifests, list) else [])
        if not (
            isinstance(m, dict)
            and isinstance(m.get("annotations"), dict)
            and m["annotations"].get(REF_NAME_ANNOTATION) in removed
        )
    ]
    return out


def dumps_index(index: dict[str, Any]) -> bytes:
    return json.dumps(index, indent=2, ensure_ascii=False).encode() + b"\n"
