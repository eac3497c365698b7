"""The JSON types of the OCI image spec's fields (stages/_schema.py), one field at a time."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from stages._schema import FieldError, check_config, check_index, check_manifest
from tests.support import images

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
        ("config/annotations", {"a": None, "b": 2}, 'config.annotations["b"] is the number 2'),
        ("config/urls", [None, 5], "config.urls[1] is the number 5, not a string"),
        # A descriptor Go would make of null names no blob.
        ("layers/1", None, "layers[1] is null, not a descriptor object"),
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
        ("config/Env", ["A=1", None, 1], "config.Env[2] is the number 1, not a string"),
        ("config/Labels", {"a": None, "b": []}, 'config.Labels["b"] is an array, not a string'),
        ("config/ExposedPorts", {"80/tcp": None, "53/udp": 1}, 'Ports["53/udp"] is the number'),
        ("history", [None, 5], "history[1] is the number 5, not an object"),
        # A diff ID Go would make of null ("") names no layer.
        ("rootfs/diff_ids", [DIGEST, None], "rootfs.diff_ids[1] is null, not a string"),
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


# --- documents as real tools write them -------------------------------------------------
#
# Each must pass: a check that refused one of these would refuse an image docker,
# containerd and skopeo pull. The shapes follow what the tools emit (moby's image.Image
# with its Docker-only fields and Go's nulls, buildkit's OCI configs, Windows images,
# reproducible builders' fixed dates, buildx's attestation manifests, OCI 1.1 artifacts),
# as image-spec's config.md, manifest.md, image-index.md and descriptor.md describe them.

D = [f"sha256:{i:064x}" for i in range(1, 10)]
CLASSIC_DOCKER_CONFIG = images.classic_docker_config(
    parent=D[0],
    container="0d9f5e3e6b21c6b2f0b0c8f3a3f0e5f1d1c9a8b7e6d5c4b3a2f1e0d9c8b7a6f5",
    diff_ids=D[:2],
)
BUILDKIT_CONFIG = {  # docker buildx, linux/arm64/v8
    "architecture": "arm64",
    "variant": "v8",
    "os": "linux",
    "created": "2024-03-05T10:11:12.345678901Z",
    "config": {
        "ExposedPorts": {"8080/tcp": {}, "8443/tcp": {}, "53/udp": {}},
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "GPG_KEY=A035C8C19219BA821ECEA86B64E628F8"],
        "Entrypoint": ["/app"],
        "Cmd": None,
        "WorkingDir": "/",
        "Labels": {"org.opencontainers.image.source": "https://github.com/example/app"},
        "User": "65532:65532",
        "ArgsEscaped": True,
        "OnBuild": None,
    },
    "history": [
        {"created": "2024-02-14T18:41:33Z", "created_by": "/bin/sh -c #(nop) ADD file:a in / "},
        {
            "created": "2024-03-05T10:11:12.345678901Z",
            "created_by": "EXPOSE map[8080/tcp:{}]",
            "comment": "buildkit.dockerfile.v0",
            "empty_layer": True,
        },
    ],
    "moby.buildkit.buildinfo.v1": "eyJmcm9udGVuZCI6ImRvY2tlcmZpbGUudjAifQ==",
    "rootfs": {"type": "layers", "diff_ids": D[:3]},
}
REAL_CONFIGS = {
    "docker-classic-builder": CLASSIC_DOCKER_CONFIG,
    "buildkit": BUILDKIT_CONFIG,
    "docker-nulls": {  # what FROM scratch leaves unset, as Go writes nil slices and maps
        "architecture": "amd64",
        "os": "linux",
        "author": "",
        "config": {
            "Env": None,
            "Cmd": None,
            "Entrypoint": None,
            "Labels": None,
            "OnBuild": None,
            "Volumes": None,
            "ExposedPorts": None,
            "Healthcheck": None,
        },
        "container_config": {"Env": None, "Cmd": None, "Image": ""},
        "created": "2023-05-11T20:14:56Z",
        "rootfs": {"type": "layers", "diff_ids": [D[0]]},
    },
    "moby-no-layers": {  # moby's RootFS: diff_ids omitempty
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"a": "b"}},
        "created": "2023-05-11T20:14:56.5+00:00",
        "history": [{"created_by": "LABEL a=b", "empty_layer": True}],
        "rootfs": {"type": "layers"},
    },
    "empty-diff-ids": {
        "os": "linux",
        "architecture": "amd64",
        "rootfs": {"type": "layers", "diff_ids": []},
    },
    "windows": {
        "architecture": "amd64",
        "os": "windows",
        "os.version": "10.0.17763.5206",
        "os.features": ["win32k"],
        "created": "2023-11-04T05:12:04.4139446Z",  # seven digits, as Windows builds write
        "config": {
            "Env": ["ProgramFiles=C:\\Program Files"],
            "Cmd": ["c:\\windows\\system32\\cmd.exe"],
        },
        "history": [{"created": "2023-10-04T21:35:01.4Z", "created_by": "Apply image 1809-amd64"}],
        "rootfs": {"type": "layers", "diff_ids": D[:2]},
    },
    "reproducible-zero-time": {  # ko, apko and others when no date is given
        "architecture": "amd64",
        "os": "linux",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z", "author": "apko", "comment": "x"}],
        "rootfs": {"type": "layers", "diff_ids": [D[0]]},
    },
    "reproducible-epoch": {  # jib, rules_oci, nix dockerTools
        "architecture": "arm",
        "variant": "v7",
        "os": "linux",
        "created": "1970-01-01T00:00:01Z",
        "config": {"Entrypoint": ["java", "-jar", "/app.jar"], "ExposedPorts": {}},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "jib"}],
        "rootfs": {"type": "layers", "diff_ids": D[:2]},
    },
    "python-isoformat": {  # datetime.isoformat() of an aware time
        "architecture": "amd64",
        "os": "linux",
        "created": "2023-05-11T22:14:56.123456+02:00",
        "history": [{"created": "2023-05-11T20:14:56-00:00"}],
        "rootfs": {"type": "layers", "diff_ids": [D[0]]},
    },
    "buildah": {
        "created": "2023-06-01T12:00:00.000000001Z",
        "architecture": "s390x",
        "os": "linux",
        "config": {
            "Env": ["container=oci"],
            "Cmd": ["/bin/bash"],
            "Labels": {"io.buildah.version": "1.30.0"},
            "StopSignal": "SIGRTMIN+3",
        },
        "rootfs": {"type": "layers", "diff_ids": [D[0]]},
        "history": [{"created": "2023-06-01T12:00:00Z", "created_by": "/bin/sh"}],
    },
    "script-written-nulls": images.image_with_null_members(1).config.json(),
    "nulls-in-maps-and-arrays": {  # each decoded by Go's encoding/json as its zero value
        "architecture": "amd64",
        "os": "linux",
        "os.features": [None],
        "config": {
            "Env": [None, "A=1"],
            "Cmd": [None],
            "Entrypoint": ["/bin/sh", None],
            "Labels": {"a": None},
            "ExposedPorts": {"80/tcp": None},
            "Volumes": {"/data": None},
        },
        "history": [None, {"created_by": "x", "empty_layer": True}],
        "rootfs": {"type": "layers", "diff_ids": [D[0]]},
    },
    "attestation-config": {  # buildkit's config of an attestation manifest
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [D[0]]},
    },
}

DOCKER_LAYER = {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 3}
REAL_MANIFESTS = {
    "docker-schema2": {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 7023,
            "digest": D[0],
        },
        "layers": [{**DOCKER_LAYER, "digest": D[1]}, {**DOCKER_LAYER, "digest": D[2]}],
    },
    "docker-windows-foreign-layers": {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 1,
            "digest": D[0],
        },
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                "size": 1654713659,
                "digest": D[1],
                "urls": ["https://mcr.microsoft.com/v2/windows/servercore/blobs/" + D[1]],
            },
            {**DOCKER_LAYER, "digest": D[2]},
        ],
    },
    "oci-annotated": {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": D[0],
            "size": 1,
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": D[1], "size": 9},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": D[2], "size": 0},
        ],
        "annotations": {
            "org.opencontainers.image.created": "2024-03-05T10:11:12Z",
            "org.opencontainers.image.base.name": "docker.io/library/alpine:3.19",
            "org.opencontainers.image.base.digest": D[3],
        },
    },
    "oci-no-layers": {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": D[0],
            "size": 1,
        },
        "layers": [],
    },
    "buildx-attestation": {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": D[0],
            "size": 167,
        },
        "layers": [
            {
                "mediaType": "application/vnd.in-toto+json",
                "digest": D[1],
                "size": 1411,
                "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"},
            },
            {
                "mediaType": "application/vnd.in-toto+json",
                "digest": D[2],
                "size": 2030,
                "annotations": {"in-toto.io/predicate-type": "https://spdx.dev/Document"},
            },
        ],
    },
    "oci-1.1-artifact-with-subject": {  # a signature or SBOM, as oras and notation push it
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.cncf.notary.signature",
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": D[0],
            "size": 2,
            "data": "e30=",
        },
        "layers": [
            {
                "mediaType": "application/jose+json",
                "digest": D[1],
                "size": 2090,
                "annotations": {"org.opencontainers.image.title": "sig.jws"},
            }
        ],
        "subject": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": D[2],
            "size": 1024,
            "artifactType": "application/vnd.oci.image.config.v1+json",
        },
        "annotations": {"io.cncf.notary.x509chain.thumbprint#S256": '["ab12"]'},
    },
    "script-written-nulls": json.loads(images.image_with_null_members(1).manifest.data),
    "null-annotations": {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": D[0],
            "size": 1,
            "annotations": {"a": None},
        },
        "layers": [{**DESCRIPTOR, "digest": D[1], "urls": [None], "annotations": {"b": None}}],
        "subject": {**DESCRIPTOR, "digest": D[2], "annotations": {"c": None}},
        "annotations": {"org.opencontainers.image.revision": None},
    },
    "helm-chart": {  # a config of an artifact's own type: _manifest.py says it is no image
        "schemaVersion": 2,
        "config": {
            "mediaType": "application/vnd.cncf.helm.config.v1+json",
            "digest": D[0],
            "size": 117,
        },
        "layers": [
            {
                "mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
                "digest": D[1],
                "size": 3,
            }
        ],
    },
}

OCI_ENTRY = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1234}
DOCKER_ENTRY = {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 525}
REAL_INDEXES = {
    "buildx-with-attestations": {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {**OCI_ENTRY, "digest": D[0], "platform": {"architecture": "amd64", "os": "linux"}},
            {
                **OCI_ENTRY,
                "digest": D[1],
                "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
            },
            {
                **OCI_ENTRY,
                "digest": D[2],
                "size": 839,
                "annotations": {
                    "vnd.docker.reference.digest": D[0],
                    "vnd.docker.reference.type": "attestation-manifest",
                },
                "platform": {"architecture": "unknown", "os": "unknown"},
            },
            {
                **OCI_ENTRY,
                "digest": D[3],
                "size": 839,
                "annotations": {
                    "vnd.docker.reference.digest": D[1],
                    "vnd.docker.reference.type": "attestation-manifest",
                },
                "platform": {"architecture": "unknown", "os": "unknown"},
            },
        ],
    },
    "docker-manifest-list": {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [
            {**DOCKER_ENTRY, "digest": D[0], "platform": {"architecture": "amd64", "os": "linux"}},
            {
                **DOCKER_ENTRY,
                "digest": D[1],
                "platform": {"architecture": "arm", "os": "linux", "variant": "v6"},
            },
            {
                **DOCKER_ENTRY,
                "digest": D[2],
                "platform": {"architecture": "386", "os": "linux", "features": ["sse4"]},
            },
            {
                **DOCKER_ENTRY,
                "digest": D[3],
                "platform": {
                    "architecture": "amd64",
                    "os": "windows",
                    "os.version": "10.0.20348.2113",
                },
            },
        ],
    },
    "oci-annotated-with-unplaced-entries": {
        "schemaVersion": 2,
        "manifests": [
            {
                **OCI_ENTRY,
                "digest": D[0],
                "annotations": {"org.opencontainers.image.ref.name": "1"},
            },
            {
                **OCI_ENTRY,
                "digest": D[1],
                "platform": {"architecture": "amd64", "os": "linux", "os.features": []},
            },
        ],
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    },
    "oci-1.1-index-artifact": {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "artifactType": "application/vnd.example.bundle",
        "manifests": [
            {**OCI_ENTRY, "digest": D[0], "artifactType": "application/vnd.example.part"}
        ],
        "subject": {**OCI_ENTRY, "digest": D[1]},
    },
    "null-annotations": {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                **OCI_ENTRY,
                "digest": D[0],
                "annotations": {"org.opencontainers.image.ref.name": None},
                "platform": {"architecture": "amd64", "os": "linux", "features": [None]},
            }
        ],
        "annotations": {"a": None},
    },
    "empty": {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [],
    },
}


@pytest.mark.parametrize(
    ("check", "doc"),
    [
        *(
            pytest.param(check_config, doc, id=f"config-{name}")
            for name, doc in REAL_CONFIGS.items()
        ),
        *(
            pytest.param(check_manifest, doc, id=f"manifest-{name}")
            for name, doc in REAL_MANIFESTS.items()
        ),
        *(pytest.param(check_index, doc, id=f"index-{name}") for name, doc in REAL_INDEXES.items()),
    ],
)
def test_documents_as_real_tools_write_them_pass(
    check: Callable[[dict[str, Any]], None], doc: dict[str, Any]
) -> None:
    check(doc)
