"""The JSON types of the OCI image spec's fields (stages/_schema.py), one field at a time."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from stages._schema import FieldError, check_config, check_index, check_manifest

DIGEST = "sha256:" + "a" * 64
DESCRIPTOR = {
    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
    "digest": DIGEST,
    "size": 3,
}


def good_manifest() -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {**DESCRIPTOR, "mediaType": "application/vnd.oci.image.config.v1+json"},
        "layers": [
            {**DESCRIPTOR, "urls": ["https://example.com/l"], "annotations": {"k": "v"}},
            {**DESCRIPTOR, "data": "aGk=", "artifactType": "application/x"},
        ],
        "subject": {**DESCRIPTOR, "digest": "sha512:" + "b" * 128},  # any algorithm
        "artifactType": "application/x",
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }


def good_index() -> dict[str, Any]:
    platform = {"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.1"}
    return {
        "schemaVersion": 2,
        "manifests": [
            {**DESCRIPTOR, "platform": {**platform, "os.features": ["win32k"]}},
            {**DESCRIPTOR, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
            DESCRIPTOR,  # OCI makes the platform optional
        ],
        "annotations": {},
    }


def good_config() -> dict[str, Any]:
    """As docker writes one: Docker's own fields, and null for what is not set."""
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-02-29T23:59:59.123456789+05:30",
        "author": None,
        "config": {
            "User": "",
            "Env": ["PATH=/usr/bin"],
            "Cmd": None,
            "Entrypoint": ["/bin/sh", "-c"],
            "Labels": None,
            "ExposedPorts": {"8080/tcp": {}},
            "Volumes": None,
            "OnBuild": None,  # not an OCI field: left alone
            "Healthcheck": {"Test": ["CMD", "true"]},
            "ArgsEscaped": True,
        },
        "container_config": {"Cmd": "not an OCI field either"},
        "rootfs": {"type": "layers", "diff_ids": [DIGEST]},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "x", "empty_layer": True}],
    }


@pytest.mark.parametrize(
    ("check", "make"),
    [(check_manifest, good_manifest), (check_index, good_index), (check_config, good_config)],
    ids=["manifest", "index", "config"],
)
def test_well_typed_documents_pass(
    check: Callable[[dict[str, Any]], None], make: Callable[[], dict[str, Any]]
) -> None:
    check(make())
    check({})  # what a document must hold is checked where it is used, not here


def spoiled(make: Callable[[], dict[str, Any]], path: str, value: Any) -> dict[str, Any]:
    """``make()`` with the field at ``path`` (dots; numbers index arrays) set to ``value``."""
    doc = copy.deepcopy(make())
    *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
    target: Any = doc
    for key in parents:
        target = target[key]
    target[last] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("layers/0/size", "12", 'layers[0].size is the string "12", not a size in bytes'),
        ("layers/0/size", True, "layers[0].size is the boolean true, not a size"),
        ("layers/0/size", -1, "layers[0].size is the number -1, not a size"),
        ("layers/0/size", 2**63, "layers[0].size is the number 9223372036854775808, not a size in"),
        ("config/size", 1.5, "config.size is the number 1.5, not a size in bytes (an integer from"),
        ("layers/0/size", None, "layers[0].size is null, not a size"),
        ("layers/0/digest", "sha256", 'layers[0].digest is the string "sha256", not a digest'),
        ("layers/0/mediaType", 7, "layers[0].mediaType is the number 7, not a string"),
        ("layers/0/urls", "https://x", 'layers[0].urls is the string "https://x", not an array'),
        ("layers/0/urls/0", 5, "layers[0].urls[0] is the number 5, not a string"),
        ("layers/0/annotations", {"a": 1}, 'layers[0].annotations["a"] is the number 1'),
        ("layers/0/annotations", ["a"], "layers[0].annotations is an array, not an object"),
        ("layers/1/data", "not base64!", 'layers[1].data is the string "not base64!", not base64'),
        ("layers/1/data", 5, "layers[1].data is the number 5, not base64-encoded data"),
        ("layers/1/artifactType", 5, "layers[1].artifactType is the number 5, not a string"),
        ("layers/1", "x", 'layers[1] is the string "x", not a descriptor object'),
        ("layers", {}, "layers is an object, not an array of descriptors"),
        ("config/annotations", {"a": None}, 'config.annotations["a"] is null, not a string'),
        ("config/urls", [None], "config.urls[0] is null, not a string"),
        ("subject", 5, "subject is the number 5, not a descriptor object"),
        ("subject", {"digest": DIGEST, "size": 1}, "subject.mediaType is missing"),
        ("subject/digest", "sha256:" + "a" * 64 + "!", "subject.digest is the string"),
        ("artifactType", ["x"], "artifactType is an array, not a string"),
        ("annotations", "x", 'annotations is the string "x", not an object of strings'),
        ("annotations", {"a": {"b": "c"}}, 'annotations["a"] is an object, not a string'),
        ("schemaVersion", "2", 'schemaVersion is the string "2", not an integer'),
    ],
)
def test_ill_typed_manifest_fields(path: str, value: Any, message: str) -> None:
    with pytest.raises(FieldError) as info:
        check_manifest(spoiled(good_manifest, path, value))
    assert message in str(info.value)
    assert info.value.field in message


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("manifests/0/platform", "linux/amd64", "manifests[0].platform is the string"),
        ("manifests/0/platform/os.version", 10, "manifests[0].platform.os.version is the number"),
        ("manifests/0/platform/os.features", "win32k", "platform.os.features is the string"),
        ("manifests/1/platform/features", [1], "manifests[1].platform.features[0] is the number"),
        ("manifests/1/platform/variant", 7, "manifests[1].platform.variant is the number 7"),
        ("manifests/2/urls", {}, "manifests[2].urls is an object, not an array of strings"),
        ("manifests", None, None),  # optional here: _manifest.py says the list is missing
        ("annotations", {"a": 1}, 'annotations["a"] is the number 1, not a string'),
        ("subject", [], "subject is an array, not a descriptor object"),
    ],
)
def test_ill_typed_index_fields(path: str, value: Any, message: str | None) -> None:
    doc = spoiled(good_index, path, value)
    if message is None:
        check_index(doc)
        return
    with pytest.raises(FieldError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_index(doc)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("architecture", 5, "architecture is the number 5, not a string"),
        ("os", ["linux"], "os is an array, not a string"),
        ("variant", 7, "variant is the number 7, not a string"),
        ("os.features", "sse4", 'os.features is the string "sse4", not an array of strings'),
        ("author", False, "author is the boolean false, not a string"),
        ("created", 1700000000, "created is the number 1700000000, not a date and time"),
        ("created", "yesterday", 'created is the string "yesterday", not a date and time'),
        ("created", "", 'created is the string "", not a date and time'),
        ("created", "2024-01-01", "not a date and time as RFC 3339 writes it"),
        ("created", "2023-02-29T00:00:00Z", "not a date and time"),  # no leap year
        ("created", "2024-13-01T00:00:00Z", "not a date and time"),
        ("created", "2024-01-01T24:00:00Z", "not a date and time"),
        ("created", "2024-01-01T00:00:00+24:00", "not a date and time"),
        ("config", [], "config is an array, not an object"),
        ("config/Env", "A=1", 'config.Env is the string "A=1", not an array of strings'),
        ("config/Env", ["A=1", None], "config.Env[1] is null, not a string"),
        ("config/Cmd", [1], "config.Cmd[0] is the number 1, not a string"),
        ("config/Entrypoint", "/bin/sh", "config.Entrypoint is the string"),
        ("config/User", 0, "config.User is the number 0, not a string"),
        ("config/WorkingDir", ["/"], "config.WorkingDir is an array, not a string"),
        ("config/Labels", {"a": 1}, 'config.Labels["a"] is the number 1, not a string'),
        ("config/ExposedPorts", ["80/tcp"], "config.ExposedPorts is an array, not an object"),
        ("config/ExposedPorts", {"80/tcp": 1}, 'config.ExposedPorts["80/tcp"] is the number 1'),
        ("config/Volumes", {"/data": "x"}, 'config.Volumes["/data"] is the string "x"'),
        ("config/StopSignal", 9, "config.StopSignal is the number 9, not a string"),
        ("config/ArgsEscaped", "true", 'config.ArgsEscaped is the string "true", not true or'),
        ("rootfs", [], "rootfs is an array, not an object"),
        ("rootfs/type", "overlay", 'rootfs.type is the string "overlay", not "layers"'),
        ("rootfs/type", 5, 'rootfs.type is the number 5, not "layers"'),
        ("rootfs/diff_ids", DIGEST, f'rootfs.diff_ids is the string "{DIGEST[:55]}...", not'),
        ("rootfs/diff_ids", [5], "rootfs.diff_ids[0] is the number 5, not a string"),
        ("history", {}, "history is an object, not an array of objects"),
        ("history/0", "x", 'history[0] is the string "x", not an object'),
        ("history/0/created", "now", 'history[0].created is the string "now", not a date and'),
        ("history/0/empty_layer", "yes", 'history[0].empty_layer is the string "yes", not true'),
        ("history/0/created_by", ["RUN"], "history[0].created_by is an array, not a string"),
    ],
)
def test_ill_typed_config_fields(path: str, value: Any, message: str) -> None:
    with pytest.raises(FieldError) as info:
        check_config(spoiled(good_config, path, value))
    assert message in str(info.value)


@pytest.mark.parametrize(
    "created",
    [
        "2024-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",  # what some build tools write for "unknown"
        "1970-01-01T00:00:01z",
        "2000-02-29t12:30:59.5-08:00",
        "2015-10-31T22:22:56.015925234Z",
    ],
)
def test_dates_rfc_3339_allows_pass(created: str) -> None:
    check_config(spoiled(good_config, "created", created))
