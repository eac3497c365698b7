"""Manifest negotiation: reference → (index →) manifest → config.

Plain async functions, not stages: each is one request and one answer. Every body is
untrusted: the digest is computed from the bytes received (never taken from a header),
sizes are capped before reading, and the JSON is checked field by field so that nothing
malformed (a bad digest, a negative size, an unknown layer type) reaches the layer stages,
and nothing ill-typed (``"subject": 5``, ``"Env": "A=1"``: ``_schema``) the store.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from ._config import Limits
from ._errors import ImagecError, InvalidDigest, ManifestError, PlatformNotFound
from ._log import get_logger
from ._reference import Reference
from ._registry import BodyOverLimit, RegistryClient
from ._schema import FieldError, check_config, check_index, check_manifest
from ._types import Descriptor, Digest, MediaType, Platform

log = get_logger()

SCHEMA1 = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
# Content-Type values that say nothing about which manifest kind a body is.
_GENERIC_TYPES = frozenset({"", "application/json", "text/plain", "application/octet-stream"})
# JSON numbers above this lose precision in other implementations (2**53).
MAX_SIZE = 1 << 53
# A key longer than this is cut short in a message.
_SHOWN_KEY_CHARS = 60
# The annotation buildx puts on an index's attestation manifests (platform unknown/unknown).
_ATTESTATION = ("vnd.docker.reference.type", "attestation-manifest")

__all__ = ["ResolvedImage", "index_choice", "resolve_image"]


@dataclass(frozen=True)
class ResolvedImage:
    """Everything known about an image before its layers are fetched.

    Every digest here was computed from the bytes received. ``resolved_digest`` is what
    the reference resolved to: the index's digest when the tag named an index, else the
    manifest's. ``index_bytes`` / ``index_media_type`` are set only when there was an index.
    """

    ref: Reference
    resolved_digest: Digest
    index_bytes: bytes | None
    index_media_type: str | None
    manifest_digest: Digest
    manifest_media_type: str
    manifest_bytes: bytes
    platform: Platform
    config: Descriptor
    config_bytes: bytes
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[Digest, ...]


async def resolve_image(
    client: RegistryClient,
    ref: Reference,
    platform: Platform,
    limits: Limits,
    *,
    platform_asked: bool = False,
) -> ResolvedImage:
    """Fetch and check what ``ref`` names: (index →) manifest → config.

    An index is resolved to the entry for ``platform`` (an exact variant preferred, else
    the closest older version it runs: ``Platform.rank``). Failing that, its entries
    naming no platform (OCI makes it optional) are read in order, manifest and config,
    and the first whose config is for ``platform`` is taken, or else the closest
    fallback among them; at most ``limits.max_unplaced_entries`` are read. The config's
    ``rootfs.diff_ids`` are matched one to one with the manifest's layers. A config's
    platform serves ``platform`` by the rule an index entry's does (an ``arm/v7`` request
    takes an ``arm/v6`` config, ``amd64`` or an x86-64-v3 machine no ``amd64/v4`` one),
    a config naming no variant standing for its architecture's default one (plain
    ``arm`` is v7, which an ``arm/v6`` request refuses), as containerd normalises it.
    The config of an entry naming a platform must agree with it on OS and architecture,
    and a variant it names must be one ``platform`` runs, or the image is refused, no
    other entry taken in its place (``_check_placed_config``); the image is recorded
    under the entry's platform, or the config's variant where that demands more
    (``_placed_platform``: ``amd64/v2`` under ``linux/amd64``). A single manifest for
    another platform is refused if ``platform_asked`` (the user chose ``platform``), as
    docker refuses it, rather than storing an image the user said they did not want;
    else it is taken for the platform its config names, with a warning, as docker pulls
    it.
    """
    where = str(ref)
    body, headers = await client.get_bytes(
        ref,
        "manifests",
        ref.manifest_ref,
        accept=MediaType.ACCEPT_MANIFESTS,
        max_bytes=limits.max_manifest_bytes,
    )
    digest = _sha256(body)
    if ref.digest is not None and digest != ref.digest:
        raise ManifestError(
            f"the registry sent a manifest hashing to {digest} for {ref.digest}; refused",
            ref=where,
            digest=str(ref.digest),
        )
    doc = _load_json(body, "manifest", where, digest)
    media_type = _media_type(doc, headers.get("Content-Type"), "manifest", where, digest)

    index_bytes: bytes | None = None
    index_media_type: str | None = None
    if media_type not in MediaType.INDEXES:
        image = await _read_image(client, ref, digest, media_type, body, doc, limits, where)
        if image.platform is not None and _config_rank(image.platform, platform) is None:
            if platform_asked:
                # Each named as the index's refusal names it: a missing variant spelt
                # out where the other has the same OS and architecture.
                offered = (
                    _spelled_out(image.platform)
                    if _same_system(image.platform, platform)
                    else str(image.platform)
                )
                raise PlatformNotFound(
                    f"the image is for {offered}, not {_wanted(platform, True, [image.platform])}"
                    " as asked; it is a single manifest, with no other platform to choose",
                    ref=where,
                    digest=str(digest),
                )
            # As docker pulls it (and warns when it is run).
            log.warning(
                f"the image's platform ({image.platform}) does not match this machine's"
                f" ({platform}), and no platform was asked for: it is a single manifest,"
                " pulled as it is, which may not run here",
                ref=where,
                digest=str(digest),
            )
        final_platform = image.platform or _unnamed_platform(platform)
    else:
        index_bytes, index_media_type = body, media_type
        entries = _parse_index(doc, where, digest)
        _check_fields(check_index, doc, "index", where, digest)
        candidates = _choose(entries, platform, platform_asked, where, digest)
        entry = candidates[0]
        if entry.platform is not None:
            image = await _read_entry(client, ref, entry, limits, where)
            if image.platform is not None:
                _check_placed_config(
                    entries,
                    entry.platform,
                    image.platform,
                    image.config.digest,
                    platform,
                    platform_asked,
                    where,
                )
            final_platform = _placed_platform(entry.platform, image.platform)
        else:
            image = await _read_unplaced(
                client, ref, entries, candidates, platform, platform_asked, limits, where, digest
            )
            final_platform = image.platform or _unnamed_platform(platform)
    log.debug(
        "image resolved",
        ref=where,
        digest=str(digest),
        manifest=str(image.digest),
        layers=len(image.layers),
        platform=str(final_platform),
    )
    return ResolvedImage(
        ref=ref,
        resolved_digest=digest,
        index_bytes=index_bytes,
        index_media_type=index_media_type,
        manifest_digest=image.digest,
        manifest_media_type=image.media_type,
        manifest_bytes=image.body,
        platform=final_platform,
        config=image.config,
        config_bytes=image.config_bytes,
        layers=image.layers,
        diff_ids=image.diff_ids,
    )


def index_choice(index: bytes, platform: Platform) -> Digest | None:
    """The manifest a pull for ``platform`` takes from this index, chosen as
    ``resolve_image`` chooses it, from the entries' platforms alone; None when no entry
    naming a platform serves it (the configs of those naming none would decide) or the
    bytes are no index this reads. For the store, which keeps the index a reference
    resolved to: whether pulling that reference again for this machine's platform
    fetches the image it holds, or one for another platform."""
    digest = _sha256(index)
    try:
        doc = _load_json(index, "index", "", digest)
        chosen = _choose(_parse_index(doc, "", digest), platform, False, "", digest)
    except ImagecError:
        return None
    if len(chosen) != 1 or chosen[0].platform is None:
        return None
    return chosen[0].digest


@dataclass(frozen=True)
class _Image:
    """One image manifest and its config, both checked; ``platform`` is what the config
    says, if it says."""

    digest: Digest
    media_type: str
    body: bytes
    config: Descriptor
    config_bytes: bytes
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[Digest, ...]
    platform: Platform | None


async def _read_unplaced(
    client: RegistryClient,
    ref: Reference,
    entries: list[Descriptor],
    unplaced: list[Descriptor],
    wanted: Platform,
    platform_asked: bool,
    limits: Limits,
    where: str,
    index_digest: Digest,
) -> _Image:
    """The image of the index entries naming no platform (``unplaced``, in the index's
    order) whose config is for ``wanted``: the first that is exactly, else the closest
    fallback (``_config_rank``), the first of equals. ``wanted`` is held to its variant
    whether asked for or the machine's own (its CPU's x86-64 level): an entry whose
    config says ``amd64/v4`` would die of an illegal instruction on an x86-64-v3 CPU.

    containerd reads only the first such entry (``images.Manifest`` walks one candidate),
    so an index of platform-less entries served one platform; each is read here, manifest
    and config, until one fits. ``limits.max_unplaced_entries`` bounds the requests an
    index of many such entries costs.
    """
    best: tuple[int, _Image] | None = None
    said: list[Platform] = []
    for entry in unplaced[: limits.max_unplaced_entries]:
        image = await _read_entry(client, ref, entry, limits, where)
        rank = _config_rank(image.platform, wanted)
        if rank == 0:
            return image
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, image)
        if image.platform is not None:
            said.append(image.platform)
    if best is not None:
        return best[1]
    raise PlatformNotFound(
        f"the image has no manifest for {_wanted(wanted, platform_asked, _placed(entries) + said)};"
        f" it has: {_offered(entries, said)}. Choose one with --platform",
        ref=where,
        digest=str(index_digest),
    )


async def _read_entry(
    client: RegistryClient, ref: Reference, entry: Descriptor, limits: Limits, where: str
) -> _Image:
    """Fetch and check the image manifest an index entry names, and its config."""
    if entry.size > limits.max_manifest_bytes:
        named = f"for {entry.platform}" if entry.platform else "without a platform"
        raise ManifestError(
            f"the manifest {named} is {entry.size} bytes, over the"
            f" {limits.max_manifest_bytes}-byte limit; refused",
            ref=where,
            digest=str(entry.digest),
        )
    body, headers = await _get_described(client, ref, "manifests", entry, where)
    digest = _sha256(body)
    _check_blob(body, digest, entry, "manifest", where)
    doc = _load_json(body, "manifest", where, digest)
    media_type = _media_type(doc, headers.get("Content-Type"), "manifest", where, digest)
    if media_type in MediaType.INDEXES:
        raise ManifestError(
            "the index points to another index; nested indexes are not supported",
            ref=where,
            digest=str(digest),
        )
    if media_type != entry.media_type:
        raise ManifestError(
            f"the index says {entry.media_type!r} but the manifest is {media_type!r}",
            ref=where,
            digest=str(digest),
        )
    return await _read_image(client, ref, digest, media_type, body, doc, limits, where)


async def _read_image(
    client: RegistryClient,
    ref: Reference,
    digest: Digest,
    media_type: str,
    body: bytes,
    doc: Mapping[str, Any],
    limits: Limits,
    where: str,
) -> _Image:
    """Check an image manifest received, then fetch and check its config."""
    config, layers = _parse_manifest(doc, where, digest)
    _check_fields(check_manifest, doc, "manifest", where, digest)
    if config.size > limits.max_manifest_bytes:
        raise ManifestError(
            f"the image config is {config.size} bytes, over the {limits.max_manifest_bytes}-byte"
            " limit; refused",
            ref=where,
            digest=str(config.digest),
        )
    config_bytes, _ = await _get_described(client, ref, "blobs", config, where)
    _check_blob(config_bytes, _sha256(config_bytes), config, "image config", where)
    config_doc = _load_json(config_bytes, "image config", where, config.digest)
    _check_fields(check_config, config_doc, "image config", where, config.digest)
    diff_ids = _parse_diff_ids(config_doc, len(layers), where, config.digest)
    image_platform = _config_platform(config_doc, where, config.digest)
    return _Image(digest, media_type, body, config, config_bytes, layers, diff_ids, image_platform)


async def _get_described(
    client: RegistryClient,
    ref: Reference,
    kind: Literal["manifests", "blobs"],
    descriptor: Descriptor,
    where: str,
) -> tuple[bytes, httpx.Headers]:
    """Fetch what a descriptor names, reading no more than its size (plus one byte)."""
    try:
        return await client.get_bytes(
            ref,
            kind,
            str(descriptor.digest),
            accept=MediaType.ACCEPT_MANIFESTS if kind == "manifests" else None,
            max_bytes=descriptor.size,
        )
    except BodyOverLimit as exc:
        what = "manifest" if kind == "manifests" else "image config"
        raise ManifestError(
            f"the {what} is larger than the {descriptor.size} bytes its descriptor says; refused",
            ref=where,
            digest=str(descriptor.digest),
        ) from exc


def _sha256(data: bytes) -> Digest:
    return Digest.from_hex(hashlib.sha256(data).hexdigest())


def _check_blob(data: bytes, digest: Digest, descriptor: Descriptor, what: str, where: str) -> None:
    if digest != descriptor.digest:
        raise ManifestError(
            f"the {what} received hashes to {digest}, not {descriptor.digest}; refused",
            ref=where,
            digest=str(descriptor.digest),
        )
    if len(data) != descriptor.size:
        raise ManifestError(
            f"the {what} is {len(data)} bytes but its descriptor says {descriptor.size}",
            ref=where,
            digest=str(descriptor.digest),
        )


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """A JSON number with a fraction or exponent, refused where it overflows a float:
    read as ``inf`` (``1e999``), it was kept, and ``inspect`` wrote it back as
    ``Infinity``, which no JSON parser reads."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members as a dict, or ``_DuplicateKey`` for a key it has twice.

    Python's ``json`` keeps the last of a duplicated key; Go's encoding/json (docker,
    containerd, skopeo) takes the last scalar but merges duplicated objects into one, and
    other parsers take the first. A document that says two things under one digest is
    refused rather than read one way here and another way there (the ambiguity of
    CVE-2021-41190, where parsers disagreed on whether a document was an index)."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return doc


def _load_json(body: bytes, what: str, where: str, digest: Digest) -> dict[str, Any]:
    """Strict UTF-8 JSON object, or ``ManifestError`` (deep nesting, huge numbers and a
    key twice in one object too)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"the {what} is not valid UTF-8", ref=where, digest=str(digest)
        ) from exc
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except _DuplicateKey as exc:
        key = json.dumps(exc.key, ensure_ascii=False)
        if len(key) > _SHOWN_KEY_CHARS:
            key = key[: _SHOWN_KEY_CHARS - 4] + '..."'
        raise ManifestError(
            f"the {what} has the key {key} twice in one object; refused: JSON parsers"
            " disagree on which one counts (Go's, in docker and containerd, merges"
            " duplicated objects), so the document does not say one thing",
            ref=where,
            digest=str(digest),
        ) from exc
    except RecursionError as exc:
        raise ManifestError(
            f"the {what} is nested too deeply to parse", ref=where, digest=str(digest)
        ) from exc
    except ValueError as exc:
        # Python's own limit on integer digits words its error for programmers.
        detail = (
            "a number has too many digits"
            if "integer string conversion" in str(exc)
            else str(exc)[:120]
        )
        raise ManifestError(
            f"the {what} is not valid JSON: {detail}", ref=where, digest=str(digest)
        ) from exc
    if not isinstance(doc, dict):
        raise ManifestError(f"the {what} is not a JSON object", ref=where, digest=str(digest))
    try:  # "\ud800" is valid JSON, but no text: the store could not record it
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ManifestError(
            f"the {what} holds text that is not Unicode (a lone surrogate escape)",
            ref=where,
            digest=str(digest),
        ) from exc
    return doc


def _check_fields(
    check: Callable[[Mapping[str, Any]], None],
    doc: Mapping[str, Any],
    what: str,
    where: str,
    digest: Digest,
) -> None:
    """Every field the OCI spec defines in ``doc`` of the JSON type it gives, or
    ``ManifestError`` naming the document and the field: another tool could not read the
    document from the store (``_schema``'s docstring says which tools and why)."""
    try:
        check(doc)
    except FieldError as exc:
        raise ManifestError(
            f"the {what}'s {exc.field} {exc.problem}, as the OCI image spec requires; refused:"
            " the tools that read the store (skopeo, umoci, containerd) would fail on it",
            ref=where,
            digest=str(digest),
        ) from exc


def _media_type(
    doc: Mapping[str, Any], content_type: str | None, what: str, where: str, digest: Digest
) -> str:
    """The body's ``mediaType``, checked against a specific Content-Type; then the header;
    then the shape (OCI allows omitting ``mediaType``)."""
    header = (content_type or "").split(";")[0].strip().lower()
    field = doc.get("mediaType")
    if field is not None and not isinstance(field, str):
        raise ManifestError(
            f"the {what}'s mediaType is not a string", ref=where, digest=str(digest)
        )
    if field and header not in _GENERIC_TYPES and header != field:
        raise ManifestError(
            f"the {what} says mediaType {field!r:.100} but was served as {header!r:.100}",
            ref=where,
            digest=str(digest),
        )
    media_type = field or (header if header not in _GENERIC_TYPES else "")
    if not media_type:
        if doc.get("schemaVersion") == 1:
            media_type = next(iter(sorted(SCHEMA1)))
        elif "manifests" in doc:
            media_type = MediaType.OCI_INDEX
        elif "config" in doc:
            media_type = MediaType.OCI_MANIFEST
    if media_type in SCHEMA1 or doc.get("schemaVersion") == 1:
        raise ManifestError(
            "the image has a Docker schema1 manifest, which is not supported; push it again"
            " with a current docker or use an OCI/schema2 tag",
            ref=where,
            digest=str(digest),
        )
    if media_type not in MediaType.INDEXES | MediaType.MANIFESTS:
        raise ManifestError(
            f"the {what} has the unsupported media type {media_type!r:.100}",
            ref=where,
            digest=str(digest),
        )
    if doc.get("schemaVersion") != 2:
        raise ManifestError(
            f"the {what} has schemaVersion {doc.get('schemaVersion')!r:.20}, not 2",
            ref=where,
            digest=str(digest),
        )
    # A document of both shapes is read as one by some tools and as the other by others
    # (CVE-2021-41190); containerd and containers/image refuse it, and skopeo would not
    # read it from the store.
    other = ("config", "layers") if media_type in MediaType.INDEXES else ("manifests",)
    if extra := [name for name in other if name in doc]:
        kind = "an index" if media_type in MediaType.INDEXES else "an image manifest"
        raise ManifestError(
            f"the {what} is ambiguous: it is {kind} ({media_type}) but also has"
            f" {' and '.join(extra)}, as the other kind of document does; refused"
            " (CVE-2021-41190)",
            ref=where,
            digest=str(digest),
        )
    return media_type


def _descriptor(
    raw: Any, what: str, where: str, digest: Digest, *, with_platform: bool = False
) -> Descriptor:
    if not isinstance(raw, dict):
        raise ManifestError(f"{what} is not a JSON object", ref=where, digest=str(digest))
    media_type = raw.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestError(f"{what} has no mediaType", ref=where, digest=str(digest))
    try:
        raw_digest: Any = raw.get("digest")
        blob_digest = Digest.parse(raw_digest, what=f"{what}'s digest")
    except InvalidDigest as exc:
        raise ManifestError(exc.message, ref=where, digest=str(digest)) from exc
    size = raw.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < MAX_SIZE:
        raise ManifestError(
            f"{what} has an invalid size {size!r:.40} (must be a whole number below 2**53)",
            ref=where,
            digest=str(digest),
        )
    annotations: tuple[tuple[str, str], ...] = ()
    raw_annotations = raw.get("annotations")
    if raw_annotations is not None:
        if not isinstance(raw_annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str | None) for k, v in raw_annotations.items()
        ):
            raise ManifestError(
                f"{what} has annotations that are not strings", ref=where, digest=str(digest)
            )
        # A null value is "", as Go's encoding/json (docker, containerd) decodes it.
        annotations = tuple(sorted((k, v or "") for k, v in raw_annotations.items()))
    # An ill-typed urls is refused by _schema's check, with the field's path, right after;
    # a null in it (Go's "") names no place to fetch from.
    raw_urls = raw.get("urls")
    urls = tuple(url for url in raw_urls if url) if isinstance(raw_urls, list) else ()
    platform: Platform | None = None
    if with_platform and raw.get("platform") is not None:
        platform = _platform(raw["platform"], what, where, digest)
    return Descriptor(media_type, blob_digest, size, platform, annotations, urls)


def _platform(raw: Any, what: str, where: str, digest: Digest) -> Platform:
    """An index entry's platform, normalised as a ``--platform`` and a config's are
    (``Platform.from_names``), as containerd normalises an entry when it matches it:
    taken as written, an entry ``linux/x86_64`` or ``linux/aarch64`` matched no
    request, and was recorded under a name the store read back as another."""
    if not isinstance(raw, dict):
        raise ManifestError(f"{what}'s platform is not an object", ref=where, digest=str(digest))
    os, arch, variant = raw.get("os"), raw.get("architecture"), raw.get("variant")
    if not isinstance(os, str) or not isinstance(arch, str) or not os or not arch:
        raise ManifestError(
            f"{what}'s platform has no os or architecture", ref=where, digest=str(digest)
        )
    if variant is not None and not isinstance(variant, str):
        raise ManifestError(
            f"{what}'s platform variant is not a string", ref=where, digest=str(digest)
        )
    _check_platform_names(f"{what}'s platform", (os, arch, variant), where, digest)
    return Platform.from_names(os, arch, variant)


# What an OS, architecture or variant name may look like (Go's GOOS/GOARCH, "v8",
# "ppc64le"): without it, "amd64/x" was stored as a platform that no longer parsed when
# read back, and every listing of the store failed.
_PLATFORM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def _check_platform_names(
    what: str, names: tuple[str | None, ...], where: str, digest: Digest
) -> None:
    for name in names:
        if name and not _PLATFORM_NAME.fullmatch(name):
            raise ManifestError(
                f"{what} has a malformed name {name[:64]!r}: OS, architecture and variant"
                " are letters, digits, '.', '_', '+' or '-'",
                ref=where,
                digest=str(digest),
            )


def _parse_index(doc: Mapping[str, Any], where: str, digest: Digest) -> list[Descriptor]:
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise ManifestError("the index has no manifests list", ref=where, digest=str(digest))
    return [
        _descriptor(raw, f"index entry {i}", where, digest, with_platform=True)
        for i, raw in enumerate(manifests)
    ]


def _choose(
    entries: list[Descriptor], wanted: Platform, asked: bool, where: str, digest: Digest
) -> list[Descriptor]:
    """The entries to read for ``wanted``: the best match alone, ranked by
    ``Platform.rank`` (the same platform, else the closest older version: ``arm/v7``
    takes ``arm/v6``; ``linux/arm`` is v7, then v6 and v5, never v8), the first of
    equals; with no match, every entry naming no platform (OCI makes it
    optional), in order, for their configs to decide. Attestation manifests are never
    chosen."""
    candidates = _candidates(entries)
    ranked = sorted(
        (rank, position, entry)
        for position, entry in enumerate(candidates)
        if entry.platform is not None and (rank := wanted.rank(entry.platform)) is not None
    )
    if ranked:
        chosen = ranked[0][2]
        if chosen.media_type in MediaType.INDEXES:
            raise ManifestError(
                f"the index entry for {wanted} is another index; nested indexes are not supported",
                ref=where,
                digest=str(digest),
            )
        return [chosen]
    unplaced = [entry for entry in candidates if entry.platform is None]
    if not unplaced:
        _refuse_unpullable_match(entries, wanted, where, digest)
        raise PlatformNotFound(
            f"the image has no manifest for {_wanted(wanted, asked, _placed(entries))}; it has:"
            f" {_offered(entries)}. Choose one with --platform",
            ref=where,
            digest=str(digest),
        )
    return unplaced


def _refuse_unpullable_match(
    entries: list[Descriptor], wanted: Platform, where: str, digest: Digest
) -> None:
    """An entry for ``wanted`` exists but is of a media type that is no image manifest
    (a schema1 manifest, an artifact): say that, not that the platform is missing."""
    for entry in entries:
        if (
            entry.platform is not None
            and wanted.matches(entry.platform)
            and _ATTESTATION not in entry.annotations
            and entry.media_type not in MediaType.MANIFESTS | MediaType.INDEXES
        ):
            raise ManifestError(
                f"the index's entry for {entry.platform} is of media type "
                f"{entry.media_type!r:.100}, not an image manifest imagec-pipe can pull",
                ref=where,
                digest=str(digest),
            )


def _candidates(entries: list[Descriptor]) -> list[Descriptor]:
    """The index entries that may be pulled: manifests (or indexes), not attestations."""
    return [
        entry
        for entry in entries
        if entry.media_type in MediaType.MANIFESTS | MediaType.INDEXES
        and _ATTESTATION not in entry.annotations
    ]


def _placed(entries: list[Descriptor]) -> list[Platform]:
    """The platforms of the index entries that could be pulled and name one."""
    return [entry.platform for entry in _candidates(entries) if entry.platform is not None]


def _wanted(wanted: Platform, asked: bool, offered: Sequence[Platform]) -> str:
    """The platform a "no manifest for" message names (and a single manifest's refusal,
    and a config's "which … does not run"): as it is, and, when the image has its OS
    and architecture in other variants only, which variant that was: the machine's own
    (not ``asked``), on x86-64 its CPU's level (``Platform.host``), or the default one
    of a platform asked for without one (``linux/amd64`` is v1: ``_spelled_out``)."""
    text = str(wanted)
    if not any(_same_system(platform, wanted) for platform in offered):
        return text
    if not asked and wanted.architecture == "amd64":
        if wanted.variant is None:
            return f"{text} (this machine's platform: x86-64 level v1, no CPU flags to read)"
        return f"{text} (this machine's platform, by its CPU's x86-64 level)"
    if not asked:
        return f"{text} (this machine's platform)"
    return _spelled_out(wanted)


def _spelled_out(platform: Platform) -> str:
    """``platform`` for a message, with the variant that a missing one stands for
    (``Platform.normalized``): ``linux/amd64 (that is linux/amd64/v1)``, ``linux/arm
    (that is linux/arm/v7)``; as it is when it names one or its architecture has none."""
    normalized = platform.normalized()
    return f"{platform} (that is {normalized})" if normalized != platform else str(platform)


# The platforms an error names of what an index offers, at most.
_OFFERED_SHOWN = 50


def _offered(entries: list[Descriptor], unplaced_configs: Sequence[Platform] = ()) -> str:
    """What an index offers, for a message: the platforms of the entries that could be
    pulled (not attestations, nor media types that are no image manifest), then its
    entries without one, with what ``unplaced_configs`` (the configs of the first of
    those, as read) say. At most ``_OFFERED_SHOWN`` platforms are named: an index of
    18,000 made a one-line error of 295 kB."""
    offered = sorted(
        {str(entry.platform) for entry in _candidates(entries) if entry.platform is not None}
    )
    if len(offered) > _OFFERED_SHOWN:
        offered[_OFFERED_SHOWN:] = [f"and {len(offered) - _OFFERED_SHOWN} more platforms"]
    unplaced = sum(1 for entry in _candidates(entries) if entry.platform is None)
    if unplaced:
        text = "an entry" if unplaced == 1 else f"{unplaced} entries"
        text += " without a platform"
        said = ", ".join(dict.fromkeys(str(platform) for platform in unplaced_configs))
        read = len(unplaced_configs)
        if unplaced == 1 and read:
            text += f" (its config says {said})"
        elif read == unplaced:
            text += f" (their configs say {said})"
        elif read:
            text += f" (the configs of the first {read} say {said})"
        offered.append(text)
    return ", ".join(offered) or "none"


def _parse_manifest(
    doc: Mapping[str, Any], where: str, digest: Digest
) -> tuple[Descriptor, tuple[Descriptor, ...]]:
    config = _descriptor(doc.get("config"), "the manifest's config", where, digest)
    if config.media_type not in MediaType.CONFIGS:
        raise ManifestError(
            f"the config media type {config.media_type!r:.100} is not an image config; this"
            " is not a container image",
            ref=where,
            digest=str(digest),
        )
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list):
        raise ManifestError("the manifest has no layers list", ref=where, digest=str(digest))
    layers = []
    for i, raw in enumerate(raw_layers):
        layer = _descriptor(raw, f"layer {i}", where, digest)
        if layer.media_type not in MediaType.LAYERS:
            raise ManifestError(
                f"layer {i} has the unsupported media type {layer.media_type!r:.100}",
                ref=where,
                digest=str(layer.digest),
            )
        layers.append(layer)
    return config, tuple(layers)


def _parse_diff_ids(
    doc: Mapping[str, Any], layer_count: int, where: str, digest: Digest
) -> tuple[Digest, ...]:
    rootfs = doc.get("rootfs")
    raw = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if raw is None and isinstance(rootfs, dict) and layer_count == 0:
        # moby writes diff_ids omitempty: an image of no layers (FROM scratch and a
        # LABEL) has none, and docker, containerd and skopeo pull it.
        raw = []
    if not isinstance(raw, list):
        raise ManifestError(
            "the image config has no rootfs.diff_ids list", ref=where, digest=str(digest)
        )
    if len(raw) != layer_count:
        raise ManifestError(
            f"the image config lists {len(raw)} diff_ids for {layer_count} layers",
            ref=where,
            digest=str(digest),
        )
    try:
        return tuple(Digest.parse(d, what=f"diff_id {i}") for i, d in enumerate(raw))
    except InvalidDigest as exc:
        raise ManifestError(
            f"the image config has {exc.message}", ref=where, digest=str(digest)
        ) from exc


def _same_system(a: Platform, b: Platform) -> bool:
    """Same OS and architecture; variants are left out, as image configs often omit them."""
    return a.os == b.os and a.architecture == b.architecture


def _check_placed_config(
    entries: list[Descriptor],
    placed: Platform,
    config: Platform,
    config_digest: Digest,
    wanted: Platform,
    asked: bool,
    where: str,
) -> None:
    """Refuse the image an index entry for ``placed`` names when its config's platform,
    ``config``, says another OS or architecture, or a variant that ``wanted`` does not
    run: an entry ``linux/amd64`` whose config says ``amd64/v4``, taken on an x86-64-v3
    CPU, would die of an illegal instruction. A config naming no variant leaves it to
    the entry (configs often omit it: an entry ``linux/arm/v6`` with a plain ``arm``
    config is no contradiction), and one naming a variant ``wanted`` runs is taken. A
    platform the user asked for without a variant (``--platform linux/amd64``) names the
    entry as docker reads it, and takes it whatever level its config names; the level
    is what this machine's CPU or a variant asked for is held to.

    containerd and docker choose by the entry alone and never read its config for that,
    so every other tool here pulls this same entry. No other entry is taken in its
    place: which of the two the index's author got wrong is unknown, and pulling
    another image than the one the index names for this platform, and than docker
    pulls, would be a silent divergence; the error lists what the index has, to choose
    from with ``--platform`` (or by a manifest's digest)."""
    if not _same_system(config, placed):
        raise ManifestError(
            f"the index lists this manifest as {placed} but its config says {config}",
            ref=where,
            digest=str(config_digest),
        )
    if config.variant is None or wanted.rank(config) is not None:
        return
    if asked and wanted.variant is None:
        # The user named the entry's own platform, with no level: the entry is taken, as
        # docker takes it, and recorded under the config's variant (_placed_platform).
        return
    outcome = "refused" if asked else "refused, as it would fail here"
    raise PlatformNotFound(
        f"the index lists a manifest for {placed}, but its config says {config}, which"
        f" {_wanted(wanted, asked, [placed])} does not run: {outcome}."
        f" The image has: {_offered(entries)}. Choose another with --platform, or pull one"
        " of its manifests by digest",
        ref=where,
        digest=str(config_digest),
    )


def _placed_platform(placed: Platform, config: Platform | None) -> Platform:
    """The platform an image an index entry for ``placed`` names is recorded under: the
    entry's, unless its config (``config``, agreeing with it on OS and architecture:
    ``_check_placed_config``) names a variant that a CPU of ``placed`` does not run.
    Then the config's variant: an entry ``linux/amd64`` whose config says
    ``amd64/v2``, pulled on an x86-64-v3 machine, is recorded ``linux/amd64/v2``.

    The store's ``index.json`` entry is read by tools that choose an image by its
    platform (containerd's import, with ``platforms.Only`` of the machine's level);
    recorded ``linux/amd64``, a v1 machine would take this image and die of an illegal
    instruction. Of the two claims, the one that demands more of the CPU is the safe
    one to record: a machine it admits runs what both say. The config is the image's
    own statement of what its code needs, so where neither admits the other (two
    arm64 versions on different branches) it is the config's that is recorded. A
    config naming no variant, or one the entry's platform runs (an entry ``arm/v7``
    whose config says ``arm/v6``), says nothing more than the entry, which stays as
    the index names it."""
    if config is None or config.variant is None or placed.rank(config) is not None:
        return placed
    return Platform(placed.os, placed.architecture, config.variant)


def _config_rank(image: Platform | None, wanted: Platform) -> int | None:
    """How well an image whose config says ``image`` serves ``wanted``, lower is better,
    None not at all: by ``Platform.rank``, as an index entry's platform is (the same
    variant, or an older version that ``wanted`` runs, the closest first), a config
    naming no variant being its architecture's default one: plain ``amd64`` is v1, which
    an x86-64-v3 machine takes after ``amd64/v2``, plain ``arm`` v7, which an ARMv6
    machine does not run. As containerd's ``images.Manifest`` matches an index entry
    without a platform by its config's (``ConfigPlatform``: normalised, so a missing
    variant is the default one), whether ``wanted`` was asked for or is this machine's
    ``DefaultSpec``. A config naming no platform at all leaves the choice to ``wanted``.
    """
    if image is None:
        return 0
    return wanted.rank(image)


def _unnamed_platform(wanted: Platform) -> Platform:
    """The platform an image whose config names none is recorded under: ``wanted``'s OS
    and architecture, and its variant only where the plain architecture is one
    ``wanted`` does not run (``arm/v6``: plain ``arm`` is v7).

    Only an image can say what it needs; a variant of ours (this machine's x86-64 level,
    or one asked for) said it needs ``linux/amd64/v4``, and tools that take an OCI
    layout's ``index.json`` by platform, as containerd's import does, would refuse it on
    any lower level. docker and containerd record the config as it is, with no platform;
    the store records one (the images' listing, ``index.json``), so this one says the
    least that is true of what was pulled for ``wanted``: ``linux/amd64`` for any level,
    ``linux/arm64`` for ``arm64/v9``, ``linux/arm/v7`` kept as it is. Kept, it is spelt
    as ``Platform.from_names`` spells it, as the store reads it back: the machine's
    platform on an x86-64-v1 CPU (``Platform.host``: ``amd64/v1``) is plain
    ``linux/amd64``, as on any other level."""
    plain = Platform(wanted.os, wanted.architecture)
    if plain.normalized() == wanted.normalized() or wanted.rank(plain) is None:
        return Platform.from_names(wanted.os, wanted.architecture, wanted.variant)
    return plain


def _config_platform(doc: Mapping[str, Any], where: str, digest: Digest) -> Platform | None:
    """The config's os/architecture(/variant), if it states both (``check_config`` made
    sure that what it states is a string), normalised as a ``--platform`` is
    (``Platform.from_names``): a config saying ``x86_64`` is for ``linux/amd64``, and
    ``aarch64`` for ``linux/arm64``, as containerd's ``ConfigPlatform`` reads it. Taken
    as written, such a config under an index entry ``linux/amd64`` was refused as a
    contradiction, and one under an entry naming no platform matched nothing."""
    os, arch, variant = doc.get("os"), doc.get("architecture"), doc.get("variant")
    if not isinstance(os, str) or not isinstance(arch, str) or not os or not arch:
        return None
    variant = variant if isinstance(variant, str) else None
    _check_platform_names("the config's platform", (os, arch, variant), where, digest)
    return Platform.from_names(os, arch, variant)
