"""The JSON type of each field the OCI image spec defines in an index, a manifest and an
image config, checked before anything of an image is stored.

Why: the store keeps the registry's manifest and config bytes as they came, and lists
them in an OCI image layout. The tools that read a layout (skopeo, umoci, containerd: Go's
``encoding/json`` into the image-spec types) refuse a whole document when one field they
know has another JSON type: ``"size": "12"``, ``"annotations": {"a": 1}``, ``"subject":
5``, ``"Env": "A=1"``, ``"created": "yesterday"``. The registry takes many of these (a
config is a blob it never reads; an unknown manifest field is ignored), so a pull that did
not look stored images no other tool could open, and took ``"architecture": 5`` for a
config that states no platform, recording the platform asked for instead.

What is checked is what the spec says (opencontainers/image-spec descriptor.md,
manifest.md, image-index.md, config.md): a field it makes optional may be absent or null
("equivalent to being absent", config.md); a value in a map or an array of strings (an
annotation, a label, an ``Env`` entry) may be null too, which Go's encoding/json decodes
without an error as the element's zero value (``{"a": null}`` as ``{"a": ""}``,
``[null]`` as ``[""]``, an exposed port's ``null`` as ``{}``), so docker, containerd and
the registry take it; null is refused only where that zero value would name nothing a pull
can use (a layer's descriptor, a diff ID); a field it does not define is left alone, as
the spec tells implementations to ignore them (Docker's own config fields among them);
``rootfs.type`` must be ``layers``, the one value the spec fixes. What a value means to
the pull (a sha256 digest it can verify, a media type it can unpack, as many diff_ids as
layers) is checked where it is used, in ``_manifest.py``.

Each check is a function of the value and its path in the document; ``FieldError`` names
the path (``layers[0].urls[1]``, ``config.Labels["a"]``) and what is wrong with it.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["FieldError", "check_config", "check_index", "check_manifest"]

Check = Callable[[Any, str], None]

# A value longer than this is cut short in a message.
_SHOWN_CHARS = 60
# descriptor.md: algorithm ":" encoded, the algorithm of lowercase components joined by
# [+._-]. Any registered algorithm is well-typed here; the pull verifies sha256 only.
_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
# A descriptor's size is an int64 (descriptor.md), and a size is never negative.
_MAX_INT64 = (1 << 63) - 1
# RFC 3339's date-time, as "ISO-8601 formatted combined date and time" is read by every
# implementation (Go's time.Time refuses anything else): date, time, optional fraction,
# and Z or a numeric offset.
_DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:[.,]\d+)?"
    r"(?:[Zz]|[+-](\d{2}):(\d{2}))"
)


class FieldError(ValueError):
    """The field at ``field`` (a path in its document) is not what the spec makes it;
    ``problem`` says how, as the rest of a sentence that begins with the path."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


def _shown(value: Any) -> str:
    """A JSON value as a message shows it: its kind, and itself when it is a scalar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "the boolean " + ("true" if value else "false")
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    text = json.dumps(value, ensure_ascii=False)
    if len(text) > _SHOWN_CHARS:  # the part shown, still in its quotes
        text = text[: _SHOWN_CHARS - 4] + ('..."' if isinstance(value, str) else "...")
    return f"the {'string' if isinstance(value, str) else 'number'} {text}"


def _wrong(field: str, value: Any, expected: str) -> FieldError:
    return FieldError(field, f"is {_shown(value)}, not {expected}")


def _string(value: Any, field: str) -> None:
    if not isinstance(value, str):
        raise _wrong(field, value, "a string")


def _boolean(value: Any, field: str) -> None:
    if not isinstance(value, bool):
        raise _wrong(field, value, "true or false")


def _integer(value: Any, field: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _wrong(field, value, "an integer")


def _size(value: Any, field: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_INT64:
        raise _wrong(field, value, "a size in bytes (an integer from 0 to 2**63-1)")


def _digest(value: Any, field: str) -> None:
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise _wrong(field, value, "a digest (algorithm:encoded, e.g. sha256:<64 hex digits>)")


def _base64(value: Any, field: str) -> None:
    if isinstance(value, str):
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            pass
        else:
            return
    raise _wrong(field, value, "base64-encoded data")


def _date_time(value: Any, field: str) -> None:
    match = _DATE_TIME.fullmatch(value) if isinstance(value, str) else None
    if match is None or not _real_date_time(*(int(part or 0) for part in match.groups())):
        raise _wrong(field, value, "a date and time as RFC 3339 writes it (2024-01-31T12:00:00Z)")


def _real_date_time(
    year: int,
    month: int,
    day: int,
    hour: int,
    minute: int,
    second: int,
    offset_hour: int,
    offset_minute: int,
) -> bool:
    """Whether the parts name a real moment: no 13th month, February 30th, 24th hour or
    61st second (Go's time.Time refuses each of them)."""
    if not 1 <= month <= 12:
        return False
    days = calendar.monthrange(year, month)[1]
    return (
        1 <= day <= days
        and hour < 24
        and minute < 60
        and second < 60
        and offset_hour < 24
        and offset_minute < 60
    )


def _layers(value: Any, field: str) -> None:
    if value != "layers":
        raise _wrong(field, value, '"layers" (the only rootfs type the spec defines)')


def _array(item: Check, expected: str) -> Check:
    """A JSON array whose every element passes ``item``."""

    def check(value: Any, field: str) -> None:
        if not isinstance(value, list):
            raise _wrong(field, value, expected)
        for i, element in enumerate(value):
            item(element, f"{field}[{i}]")

    return check


def _map(item: Check, expected: str) -> Check:
    """A JSON object of any keys whose every value passes ``item``."""

    def check(value: Any, field: str) -> None:
        if not isinstance(value, dict):
            raise _wrong(field, value, expected)
        for key, element in value.items():
            item(element, f"{field}[{json.dumps(key, ensure_ascii=False)}]")

    return check


def _or_null(item: Check) -> Check:
    """``item``, or null: a map's or an array's member that Go's encoding/json decodes
    into a string or a struct, where null leaves the zero value ("", {}) and no error."""

    def check(value: Any, field: str) -> None:
        if value is not None:
            item(value, field)

    return check


def _object(expected: str, fields: Mapping[str, Check], required: tuple[str, ...] = ()) -> Check:
    """A JSON object whose fields named in ``fields`` pass their checks when present and
    not null; ``required`` ones must be present. Other fields are not looked at."""

    def check(value: Any, field: str) -> None:
        if not isinstance(value, dict):
            raise _wrong(field, value, expected)
        prefix = f"{field}." if field else ""
        for name in required:
            if name not in value:
                raise FieldError(prefix + name, "is missing")
        for name, check_field in fields.items():
            member = value.get(name)
            if member is not None or name in required:
                check_field(member, prefix + name)

    return check


# Go's []string and map[string]string: a null member decodes as "".
_strings = _array(_or_null(_string), "an array of strings")
_annotations = _map(_or_null(_string), "an object of strings")
# Go's map[string]struct{}: {"8080/tcp": {}}, a null member decoded as {}.
_set = _map(_or_null(_object("an empty object", {})), "an object of empty objects")
# A diff ID names a layer: "" (what Go makes of null) names none, and the pull checks each.
_diff_ids = _array(_string, "an array of strings")

_PLATFORM = _object(
    "a platform object",
    {
        "architecture": _string,
        "os": _string,
        "os.version": _string,
        "os.features": _strings,
        "variant": _string,
        "features": _strings,
    },
    required=("architecture", "os"),
)
_DESCRIPTOR_FIELDS: dict[str, Check] = {
    "mediaType": _string,
    "digest": _digest,
    "size": _size,
    "urls": _strings,
    "annotations": _annotations,
    "data": _base64,
    "artifactType": _string,
}
_REQUIRED_IN_DESCRIPTOR = ("mediaType", "digest", "size")
_DESCRIPTOR = _object("a descriptor object", _DESCRIPTOR_FIELDS, _REQUIRED_IN_DESCRIPTOR)
_INDEX_ENTRY = _object(
    "a descriptor object", {**_DESCRIPTOR_FIELDS, "platform": _PLATFORM}, _REQUIRED_IN_DESCRIPTOR
)
# Arrays of descriptors (layers, manifests) take no null: Go would decode it as a
# descriptor of no digest, which names no blob.

_MANIFEST = _object(
    "an object",
    {
        "schemaVersion": _integer,
        "mediaType": _string,
        "artifactType": _string,
        "config": _DESCRIPTOR,
        "layers": _array(_DESCRIPTOR, "an array of descriptors"),
        "subject": _DESCRIPTOR,
        "annotations": _annotations,
    },
)
_INDEX = _object(
    "an object",
    {
        "schemaVersion": _integer,
        "mediaType": _string,
        "artifactType": _string,
        "manifests": _array(_INDEX_ENTRY, "an array of descriptors"),
        "subject": _DESCRIPTOR,
        "annotations": _annotations,
    },
)
_HISTORY_ENTRY = _object(
    "an object",
    {
        "created": _date_time,
        "author": _string,
        "created_by": _string,
        "comment": _string,
        "empty_layer": _boolean,
    },
)
_CONFIG = _object(
    "an object",
    {
        "created": _date_time,
        "author": _string,
        "architecture": _string,
        "os": _string,
        "os.version": _string,
        "os.features": _strings,
        "variant": _string,
        "config": _object(
            "an object",
            {
                "User": _string,
                "ExposedPorts": _set,
                "Env": _strings,
                "Entrypoint": _strings,
                "Cmd": _strings,
                "Volumes": _set,
                "WorkingDir": _string,
                "Labels": _annotations,
                "StopSignal": _string,
                "ArgsEscaped": _boolean,
            },
        ),
        "rootfs": _object("an object", {"type": _layers, "diff_ids": _diff_ids}),
        # Go's []History: a null entry decodes as an empty one, which docker lists.
        "history": _array(_or_null(_HISTORY_ENTRY), "an array of objects"),
    },
)


def check_manifest(doc: Mapping[str, Any]) -> None:
    """Raise ``FieldError`` for the first field of an image manifest (OCI, or Docker
    schema2, which containerd reads as the same type) not of its spec's type."""
    _MANIFEST(doc, "")


def check_index(doc: Mapping[str, Any]) -> None:
    """Raise ``FieldError`` for the first field of an index (or Docker manifest list) not
    of its spec's type."""
    _INDEX(doc, "")


def check_config(doc: Mapping[str, Any]) -> None:
    """Raise ``FieldError`` for the first field of an image config (OCI or Docker, whose
    fields of the same names have the same types) not of its spec's type."""
    _CONFIG(doc, "")
