"""Removing from the store: ``imagec-pipe rmi`` / ``prune`` (``Store.remove_images``,
``Store.prune``) against the real registry, pulls by the CLI in other processes.

Each test ends with the store's promises: ``verify --full`` finds nothing wrong (no record
or index.json entry names a missing blob), and pulling what is left downloads nothing.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import pipeline
from pipeline import Store, _store
from stages._errors import StoreError
from stages._types import Digest
from tests.support import images

REPO_ROOT = Path(__file__).resolve().parent.parent
PLATFORM = "linux/amd64"
# A CLI command's deadline (the test's own is longer).
CLI_TIMEOUT_S = 60


def cli(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline._cli", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )


def run(*argv: str) -> tuple[int, str, str]:
    proc = cli(*argv)
    out, err = proc.communicate(timeout=CLI_TIMEOUT_S)
    return proc.returncode, out, err


def pull(ref: str, store: Path) -> dict[str, Any]:
    """Pull with the CLI; its JSON summary (the last line)."""
    code, out, err = run("pull", ref, "--store", str(store), "--platform", PLATFORM, "--json")
    assert code == 0, err
    summary: dict[str, Any] = json.loads(out.splitlines()[-1])
    return summary


def blobs(store: Path) -> set[str]:
    return {f"sha256:{p.name}" for p in (store / "blobs" / "sha256").iterdir()}


def image_blobs(image: images.Image) -> set[str]:
    return {image.manifest.digest, image.config.digest, *(layer.digest for layer in image.layers)}


def index_refs(store: Path) -> list[str]:
    index = json.loads((store / "index.json").read_text())
    return sorted(m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"])


def assert_clean(store: Path) -> None:
    """``verify --full`` accepts the store, and nothing is left in ingest/."""
    code, out, err = run("verify", "--store", str(store), "--full", "--json")
    assert code == 0, (out, err)
    assert json.loads(out)["damaged"] == []
    assert sorted(p.name for p in (store / "ingest").iterdir()) == []


def assert_all_exist(ref: str, store: Path) -> None:
    """Pulling ``ref`` again downloads nothing: every layer "Already exists"."""
    summary = pull(ref, store)
    assert {layer["status"] for layer in summary["layers"]} == {"exists"}, summary


def push_sharing(registry: Any, repo: str, seed: str) -> tuple[images.Image, images.Image]:
    """Two images over one base layer, tagged ``one`` and ``two``."""
    base = [images.make_layer(f"{seed}:base", size=256 * 1024)]
    one = images.sample_image(f"{seed}:one", base=base, compressions=("gzip",))
    two = images.sample_image(f"{seed}:two", base=base, compressions=("zstd",))
    registry.push(repo, one, "one")
    registry.push(repo, two, "two")
    return one, two


# --- rmi ---------------------------------------------------------------------------------


def test_rmi_keeps_the_layers_another_image_shares(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    one, two = push_sharing(registry, unique_repo, unique_seed)
    store = tmp_path / "store"
    ref_one, ref_two = (f"{registry.host}/{unique_repo}:{tag}" for tag in ("one", "two"))
    pull(ref_one, store)
    pull(ref_two, store)

    code, out, err = run("rm", ref_one, "--store", str(store), "--json")

    assert code == 0, err
    removal = json.loads(out)
    assert removal["untagged"] == [ref_one]
    assert removal["deleted_images"] == [one.manifest.digest]
    gone = image_blobs(one) - image_blobs(two)
    assert set(removal["deleted_blobs"]) == gone
    every = (*one.blobs, one.manifest)
    assert removal["reclaimed_bytes"] == sum(b.size for b in every if b.digest in gone)
    assert blobs(store) == image_blobs(two)  # the shared base layer and the empty one kept
    assert index_refs(store) == [ref_two]
    listed = Store.open_existing(store)
    assert listed is not None
    assert [r.ref for r in listed.list_images()] == [ref_two]
    assert listed.find_image(ref_one) is None
    assert_clean(store)
    assert_all_exist(ref_two, store)
    assert_clean(store)


@pytest.fixture
def immutable() -> Iterator[Any]:
    """``make(path)``: set the immutable attribute on ``path``, which even root may not
    unlink (the test is skipped where chattr cannot); cleared at the end."""
    made: list[Path] = []

    def make(path: Path) -> None:
        if shutil.which("chattr") is None:
            pytest.skip("no chattr(1) here")
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot make a file immutable here: {done.stderr.strip()}")
        made.append(path)

    yield make
    for path in made:
        if path.exists():  # the test may have cleared it, and removed the file
            subprocess.run(["chattr", "-i", str(path)], check=True, timeout=30)


def test_a_blob_rm_cannot_unlink_does_not_fail_a_removal_that_happened(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path, immutable: Any
) -> None:
    """rm committed the removal of the records, then one blob's unlink failed: it exited 1,
    "cannot remove images", and an rm again said there was nothing to remove. It reports
    what it removed and warns of the file, which gc removes once it may."""
    one, _ = push_sharing(registry, unique_repo, unique_seed)
    store = tmp_path / "store"
    ref_one = f"{registry.host}/{unique_repo}:one"
    pull(ref_one, store)
    stuck = store / "blobs" / "sha256" / one.layers[1].digest.split(":")[1]
    immutable(stuck)

    code, out, err = run("rm", ref_one, "--store", str(store), "--json")

    assert code == 0, err
    removal = json.loads(out)
    assert removal["untagged"] == [ref_one]
    assert one.layers[1].digest not in removal["deleted_blobs"]
    assert "1 blob file(s) could not be removed (Operation not permitted:" in err, err
    subprocess.run(["chattr", "-i", str(stuck)], check=True, timeout=30)
    code, out, err = run("gc", "--store", str(store), "--json")
    assert code == 0, err
    assert json.loads(out)["deleted_blobs"] == [one.layers[1].digest]


def test_rmi_of_a_reference_not_in_the_store_removes_nothing(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    push_sharing(registry, unique_repo, unique_seed)
    store = tmp_path / "store"
    ref = f"{registry.host}/{unique_repo}:one"
    pull(ref, store)
    before = blobs(store)
    missing = f"{registry.host}/{unique_repo}:nope"

    code, out, err = run("rm", ref, missing, "--store", str(store))

    assert code == 1
    assert out == ""
    assert f"no image '{missing}' in store" in err
    assert "nothing was removed" in err
    assert blobs(store) == before
    assert index_refs(store) == [ref]
    code, _, err = run("rm", "nope:1", "--store", str(tmp_path / "none"))
    assert code == 1 and "no store there yet" in err, err
    assert not (tmp_path / "none").exists()  # no store created to say so


def test_rmi_of_the_last_reference_removes_every_blob(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    one, _ = push_sharing(registry, unique_repo, unique_seed)
    store = tmp_path / "store"
    ref = f"{registry.host}/{unique_repo}:one"
    pull(ref, store)
    by_digest = f"{registry.host}/{unique_repo}@{one.manifest.digest}"
    pull(by_digest, store)  # a second reference to the same image

    code, out, err = run("rm", ref, "--store", str(store))
    assert code == 0, err
    assert out == f"Untagged: {ref}\n"  # the image is still named
    assert blobs(store) == image_blobs(one)

    code, out, err = run("rmi", by_digest, "--store", str(store))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"Untagged: {by_digest}"
    assert sorted(lines[1:]) == sorted(f"Deleted: {d}" for d in image_blobs(one))
    assert blobs(store) == set()
    assert index_refs(store) == []
    reader = Store.open_existing(store)
    assert reader is not None and reader.list_images() == []
    assert_clean(store)
    summary = pull(ref, store)  # and back: every layer downloaded again
    assert {layer["status"] for layer in summary["layers"]} == {"downloaded"}
    assert_clean(store)


def test_rmi_of_a_repository_s_last_reference_forgets_its_digest_reference_too(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """An image pulled as ``REPO:one`` and ``MIRROR:one``: removing ``REPO:one`` keeps
    the image (the mirror names it), but ``REPO@digest`` no longer finds it, as docker
    untags ``REPO@digest`` with the repository's last tag. It used to: ``inspect`` showed
    the image under a reference ``images`` did not list, and ``rm REPO@digest`` printed
    nothing, removed nothing and exited 0, as often as it was run."""
    one, _ = push_sharing(registry, unique_repo, unique_seed)
    mirror = f"{unique_repo}-mirror"
    registry.push(mirror, one, "one")
    store = tmp_path / "store"
    ref, mirrored = (f"{registry.host}/{repo}:one" for repo in (unique_repo, mirror))
    pull(ref, store)
    pull(mirrored, store)
    by_digest = f"{registry.host}/{unique_repo}@{one.manifest.digest}"
    assert run("inspect", by_digest, "--store", str(store))[0] == 0  # before: found

    code, out, err = run("rm", ref, "--store", str(store), "--json")

    assert code == 0, err
    assert json.loads(out)["deleted_blobs"] == []  # the mirror keeps every blob
    reader = Store.open_existing(store)
    assert reader is not None
    assert reader.find_image(by_digest) is None
    assert reader.find_image(f"{registry.host}/{mirror}@{one.manifest.digest}") is not None
    code, _, err = run("inspect", by_digest, "--store", str(store))
    assert code == 1 and f"no image '{by_digest}'" in err, err
    code, out, err = run("rm", by_digest, "--store", str(store))
    assert (code, out) == (1, ""), err
    assert f"no image '{by_digest}' in store" in err
    assert blobs(store) == image_blobs(one)
    assert index_refs(store) == [mirrored]
    assert_clean(store)
    assert_all_exist(mirrored, store)


def test_rmi_by_an_image_id_that_two_references_name_is_refused(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    one, _ = push_sharing(registry, unique_repo, unique_seed)
    registry.push(unique_repo, one, "also")
    store = tmp_path / "store"
    refs = [f"{registry.host}/{unique_repo}:{tag}" for tag in ("also", "one")]
    for ref in refs:
        pull(ref, store)

    code, _, err = run("rm", one.image_id[7:19], "--store", str(store))

    assert code == 1
    assert f"names the image of 2 references ({', '.join(refs)}); remove them by name" in err
    assert index_refs(store) == refs
    assert_clean(store)


@pytest.mark.parametrize("by", ["id-prefix", "full-id", "name@digest"])
def test_rmi_by_image_id_removes_an_image_no_reference_names(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path, by: str
) -> None:
    """A tag pulled again after it moved leaves its old image named by nothing (docker's
    dangling ``<none>`` image); ``docker rmi <ID>`` removes it, and so does ``rm``. It
    used to say "no image": its ID was looked up through the references only."""
    one, two = push_sharing(registry, unique_repo, unique_seed)
    store = tmp_path / "store"
    latest = f"{registry.host}/{unique_repo}:latest"
    registry.push(unique_repo, one, "latest")
    pull(latest, store)
    registry.push(unique_repo, two, "latest")  # the tag moves: `one` is named by nothing
    pull(latest, store)
    target = {
        "id-prefix": one.image_id[7:19],
        "full-id": one.image_id,
        "name@digest": f"{registry.host}/{unique_repo}@{one.manifest.digest}",
    }[by]

    code, out, err = run("rm", target, "--store", str(store), "--json")

    assert code == 0, err
    removal = json.loads(out)
    assert removal["untagged"] == []
    assert removal["deleted_images"] == [one.manifest.digest]
    assert set(removal["deleted_blobs"]) == image_blobs(one) - image_blobs(two)
    assert blobs(store) == image_blobs(two)  # the base layer they share is kept
    assert index_refs(store) == [latest]
    code, out, err = run("rm", target, "--store", str(store))  # gone now
    assert (code, out) == (1, ""), err
    assert f"no image '{target}' in store" in err
    assert_clean(store)
    assert_all_exist(latest, store)


# --- prune -------------------------------------------------------------------------------


def test_prune_removes_what_no_reference_needs(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    _, two = push_sharing(registry, unique_repo, unique_seed)
    moved = images.sample_image(f"{unique_seed}:moved", compressions=("none",))
    registry.push(unique_repo, moved, "latest")
    store = tmp_path / "store"
    ref_one, ref_two, latest = (
        f"{registry.host}/{unique_repo}:{tag}" for tag in ("one", "two", "latest")
    )
    for ref in (ref_one, ref_two, latest):
        pull(ref, store)
    registry.push(unique_repo, two, "latest")  # the tag moves: `moved` is named by nothing
    pull(latest, store)
    assert run("rm", ref_one, "--store", str(store))[0] == 0
    # Left by other tools and by crashes: a blob nothing names, and an entry of
    # index.json that another tool wrote, whose blobs only it names.
    stray = images.Blob("application/octet-stream", b"stray " + unique_seed.encode())
    (store / "blobs" / "sha256" / stray.digest[7:]).write_bytes(stray.data)
    foreign = images.sample_image(f"{unique_seed}:foreign", compressions=("none",))
    for blob in (*foreign.blobs, foreign.manifest):
        (store / "blobs" / "sha256" / blob.digest[7:]).write_bytes(blob.data)
    index = json.loads((store / "index.json").read_text())
    index["manifests"].append(foreign.manifest.descriptor())  # no ref name of ours
    (store / "index.json").write_text(json.dumps(index))

    code, out, err = run("gc", "--store", str(store), "--json")

    assert code == 0, err
    removal = json.loads(out)
    assert removal["untagged"] == []
    assert removal["deleted_images"] == [moved.manifest.digest]
    gone = (image_blobs(moved) - image_blobs(two)) | {stray.digest}
    assert set(removal["deleted_blobs"]) == gone
    assert blobs(store) == image_blobs(two) | image_blobs(foreign)
    assert index_refs_ours(store) == [latest, ref_two]
    assert_clean(store)
    assert_all_exist(ref_two, store)
    assert_all_exist(latest, store)
    code, out, err = run("prune", "--store", str(store))  # nothing left to remove
    assert (code, out) == (0, "Total reclaimed space: 0B\n"), err


ARTIFACT_MANIFEST = "application/vnd.oci.artifact.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def put_blob(store: Path, blob: images.Blob | images.Layer, *, name: str | None = None) -> str:
    """Write a blob into ``blobs/`` as another tool would (``name``: under another
    digest than its own, as a broken tool might); its digest as named."""
    digest = name or blob.digest
    (store / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(blob.data)
    return digest


def as_json(obj: Any, media_type: str = OCI_INDEX) -> images.Blob:
    return images.Blob(media_type, json.dumps(obj).encode())


def test_prune_keeps_whatever_another_tool_s_entries_reach_however_they_name_it(
    unique_seed: str, tmp_path: Path
) -> None:
    """Entries of index.json another tool wrote are followed through every descriptor
    OCI 1.1 gives: an image manifest's ``subject`` (a signature naming what it signs), an
    artifact manifest's ``blobs`` and ``subject``, chains of indexes thousands deep, a
    cycle of misnamed blobs, and a document nested too deeply to parse (it is searched
    for digests instead: kept, never deleted for being odd). gc used to delete the
    ``subject``'s and ``blobs``' files, and to fail on the deep document with
    "internal error: maximum recursion depth exceeded"."""
    store = tmp_path / "store"
    Store.open(store).close()
    kept: set[str] = set()

    def keep(blob: images.Blob | images.Layer, *, name: str | None = None) -> dict[str, Any]:
        kept.add(put_blob(store, blob, name=name))
        media_type = blob.media_type or "application/vnd.oci.image.layer.v1.tar"
        return {"mediaType": media_type, "digest": name or blob.digest, "size": blob.size}

    def keep_image(seed: str) -> dict[str, Any]:
        image = images.sample_image(f"{unique_seed}:{seed}", compressions=("none",))
        for blob in image.blobs:
            keep(blob)
        return keep(image.manifest)

    signed = keep_image("signed")  # named only as the signature's subject
    signature = keep(
        as_json(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": keep(images.Blob("application/vnd.oci.empty.v1+json", b"{}")),
                "layers": [keep(images.Blob("text/plain", b"sig " + unique_seed.encode()))],
                "subject": signed,
            },
            "application/vnd.oci.image.manifest.v1+json",
        )
    )
    described = keep_image("described")
    artifact = keep(
        as_json(
            {
                "mediaType": ARTIFACT_MANIFEST,
                "artifactType": "application/spdx+json",
                "blobs": [
                    keep(images.Blob("application/spdx+json", f"sbom {n} {unique_seed}".encode()))
                    for n in range(2)
                ],
                "subject": described,
            },
            ARTIFACT_MANIFEST,
        )
    )
    chain = keep_image("deep")
    for _ in range(3000):
        chain = keep(as_json({"schemaVersion": 2, "manifests": [chain]}))
    leaf = keep_image("cycle")
    first, second = (images.digest_of(f"{unique_seed}:{n}".encode()) for n in (1, 2))
    keep(as_json({"manifests": [{"digest": second}, leaf]}), name=first)
    cycle = keep(as_json({"manifests": [{"digest": first}]}), name=second)
    deep_leaf = keep_image("nested")
    depth = 200_000  # past any recursion limit
    nested = f'{{"manifests": [{json.dumps(deep_leaf)}], "x": {"[" * depth}{"]" * depth}}}'
    deep = keep(images.Blob(OCI_INDEX, nested.encode()))
    index = json.loads((store / "index.json").read_text())
    index["manifests"] += [signature, artifact, chain, cycle, deep]
    (store / "index.json").write_text(json.dumps(index))
    stray = put_blob(store, images.Blob("text/plain", b"stray " + unique_seed.encode()))

    code, out, err = run("gc", "--store", str(store), "--json")

    assert code == 0, err
    assert json.loads(out)["deleted_blobs"] == [stray]
    assert blobs(store) == kept


# Over the 4 MiB a registry takes for a manifest, as other tools write into a layout.
BIG_BYTES = 5 * 1024 * 1024


def padded(descriptor: dict[str, Any], seed: str, share: int) -> dict[str, Any]:
    """``descriptor`` with an annotation of ``BIG_BYTES // share`` bytes: ``share`` of them
    make a document over 4 MiB (a big index's platforms, attestations, notes)."""
    note = (seed * (BIG_BYTES // share // len(seed) + 1))[: BIG_BYTES // share]
    return {**descriptor, "annotations": {"org.example.note": note}}


def test_rm_and_gc_keep_what_another_tool_s_manifests_over_4_mib_reach(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """Another tool's entry of index.json whose index or artifact manifest is over 4 MiB
    (a multi-platform index copied in by skopeo, an artifact of thousands of blobs pushed
    by oras) is followed as one of any size: its descriptor says what it is. Such blobs
    used to be skipped as layers, and what they named deleted: here the image pulled,
    which the big index lists too (the same image copied under another name), by ``rm``
    of its reference, and the artifact's blobs and the other image by ``gc``."""
    pulled = images.sample_image(f"{unique_seed}:pulled", compressions=("gzip",))
    registry.push(unique_repo, pulled, "latest")
    store = tmp_path / "store"
    ref = f"{registry.host}/{unique_repo}:latest"
    pull(ref, store)
    other = images.sample_image(f"{unique_seed}:other", compressions=("none",))
    for blob in (*other.blobs, other.manifest):
        put_blob(store, blob)
    big_index = as_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                padded({**image.manifest.descriptor(), "platform": image.platform_dict}, n, 2)
                for n, image in (("pulled ", pulled), ("other ", other))
            ],
        }
    )
    assert big_index.size > BIG_BYTES
    put_blob(store, big_index)
    parts = [images.Blob("text/plain", f"part {n} {unique_seed}".encode()) for n in range(3)]
    for part in parts:
        put_blob(store, part)
    artifact = as_json(
        {
            "mediaType": ARTIFACT_MANIFEST,
            "artifactType": "application/example",
            "blobs": [padded(part.descriptor(), f"part {n} ", 3) for n, part in enumerate(parts)],
        },
        ARTIFACT_MANIFEST,
    )
    assert artifact.size > BIG_BYTES
    put_blob(store, artifact)
    index = json.loads((store / "index.json").read_text())
    index["manifests"] += [big_index.descriptor(), artifact.descriptor()]
    (store / "index.json").write_text(json.dumps(index))
    stray = put_blob(store, images.Blob("text/plain", b"stray " + unique_seed.encode()))
    foreign = image_blobs(other) | {p.digest for p in parts} | {big_index.digest, artifact.digest}

    code, out, err = run("rm", ref, "--store", str(store), "--json")

    assert code == 0, err
    removal = json.loads(out)
    assert removal["untagged"] == [ref]
    assert removal["deleted_blobs"] == []  # the big index still lists the image
    assert blobs(store) == image_blobs(pulled) | foreign | {stray}

    code, out, err = run("gc", "--store", str(store), "--json")

    assert code == 0, err
    assert json.loads(out)["deleted_blobs"] == [stray]
    assert blobs(store) == image_blobs(pulled) | foreign
    assert_clean(store)


SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"


def schema1_manifest(name: str, layers: list[images.Layer], comment: str) -> dict[str, Any]:
    """A Docker schema1 manifest as docker and skopeo wrote them: its layers in
    ``fsLayers`` (the top one first) by ``blobSum``, a v1 history entry each, no config."""
    return {
        "schemaVersion": 1,
        "name": name,
        "tag": "1.0",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": layer.digest} for layer in reversed(layers)],
        "history": [
            {"v1Compatibility": json.dumps({"id": f"{n:064x}", "comment": comment})}
            for n in range(len(layers))
        ],
    }


def test_rm_and_gc_keep_the_layers_of_another_tool_s_schema1_entry(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """A Docker schema1 manifest names its layers as ``fsLayers[].blobSum``, which the
    walk of another tool's entries of index.json did not read: gc deleted the layers of a
    schema1 image copied into the layout (an old image, by skopeo), and rm those the
    image it removed shared with one. A schema1 manifest over 4 MiB (a long history) is
    followed as the other manifests are, not taken for a layer."""
    pulled = images.sample_image(f"{unique_seed}:pulled", compressions=("gzip",))
    registry.push(unique_repo, pulled, "latest")
    store = tmp_path / "store"
    ref = f"{registry.host}/{unique_repo}:latest"
    pull(ref, store)
    shared = pulled.layers[0]  # the image pulled is the old one, converted
    entries, foreign = [], {shared.digest}
    for n, (media_type, comment) in enumerate(
        ((SCHEMA1_SIGNED, "signed"), (SCHEMA1, "x" * BIG_BYTES))
    ):
        layers = [images.make_layer(f"{unique_seed}:v1 {n} {k}", size=16 * 1024) for k in (0, 1)]
        doc = schema1_manifest(f"team/old{n}", [shared, *layers], comment)
        if media_type == SCHEMA1_SIGNED:
            header = {"alg": "ES256", "jwk": {"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}}
            doc["signatures"] = [{"header": header, "signature": "c2ln", "protected": "cA"}]
        manifest = as_json(doc, media_type)
        foreign |= {put_blob(store, blob) for blob in (*layers, manifest)}
        annotations = {"org.opencontainers.image.ref.name": f"old{n}:1.0"}
        entries.append({**manifest.descriptor(), "annotations": annotations})
    assert manifest.size > BIG_BYTES
    index = json.loads((store / "index.json").read_text())
    index["manifests"] += entries
    (store / "index.json").write_text(json.dumps(index))
    stray = put_blob(store, images.Blob("text/plain", b"stray " + unique_seed.encode()))

    code, out, err = run("rm", ref, "--store", str(store), "--json")

    assert code == 0, err
    removal = json.loads(out)
    assert removal["untagged"] == [ref]
    assert set(removal["deleted_blobs"]) == image_blobs(pulled) - {shared.digest}
    assert blobs(store) == foreign | {stray}

    code, out, err = run("gc", "--store", str(store), "--json")

    assert code == 0, err
    assert json.loads(out)["deleted_blobs"] == [stray]
    assert blobs(store) == foreign
    assert index_refs_ours(store) == ["old0:1.0", "old1:1.0"]
    assert_clean(store)


def test_rm_and_gc_refuse_when_what_another_tool_s_entry_reaches_cannot_be_told(
    registry: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A blob another tool's entry names as a manifest or an index, which is no JSON
    (damaged) or over the size read to follow one, may name anything in the store: rm
    and gc refuse, naming the blob and the entry, and remove nothing, where they used to
    delete whatever it named, until that entry is gone from index.json."""
    image = images.sample_image(f"{unique_seed}:image", compressions=("gzip",))
    registry.push(unique_repo, image, "latest")
    store = tmp_path / "store"
    ref = f"{registry.host}/{unique_repo}:latest"
    pull(ref, store)
    other = images.sample_image(f"{unique_seed}:other", compressions=("none",))
    for blob in other.blobs:  # named by the damaged manifest, once
        put_blob(store, blob)
    damaged = put_blob(store, images.Blob(OCI_INDEX, b"\x00 not json " + unique_seed.encode()))
    entry = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": damaged,
        "size": 20,
        "annotations": {"org.opencontainers.image.ref.name": "other:1"},
    }
    index = json.loads((store / "index.json").read_text())
    before = json.dumps(index)
    (store / "index.json").write_text(
        json.dumps({**index, "manifests": [*index["manifests"], entry]})
    )
    stray = put_blob(store, images.Blob("text/plain", b"stray " + unique_seed.encode()))
    every = blobs(store)

    for argv in (("gc",), ("rm", ref)):
        code, out, err = run(*argv, "--store", str(store))

        assert (code, out) == (1, ""), err
        assert f"entry 'other:1' ({damaged})" in err, err
        assert "is not a JSON object; nothing was removed" in err, err
        assert "Remove that entry from index.json" in err, err
        assert blobs(store) == every
        assert index_refs_ours(store) == [ref, "other:1"]
    listed = Store.open_existing(store)
    assert listed is not None and [r.ref for r in listed.list_images()] == [ref]

    # Over the size read to follow a manifest (lowered here: 64 MiB in earnest).
    big = as_json({"schemaVersion": 2, "manifests": [other.manifest.descriptor()]})
    put_blob(store, big)
    (store / "index.json").write_text(
        json.dumps({**index, "manifests": [*index["manifests"], big.descriptor()]})
    )
    monkeypatch.setattr(_store, "_MAX_FOLLOWED_BYTES", big.size - 1)
    with Store.open(store) as opened, pytest.raises(StoreError) as refused:
        opened.prune()
    assert f"entry {big.digest} needs" in str(refused.value)
    assert "whose blob is over " in str(refused.value)
    assert blobs(store) == every | {big.digest}

    (store / "index.json").write_text(before)  # the user removes the entry
    code, out, err = run("gc", "--store", str(store), "--json")
    assert code == 0, err
    assert sorted(json.loads(out)["deleted_blobs"]) == sorted(
        {damaged, stray, big.digest} | image_blobs(other) - image_blobs(image) - {other.digest}
    )
    assert blobs(store) == image_blobs(image)
    assert_clean(store)


def bytes_read() -> int:
    """What this process has read through read(2) so far (Linux's /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("/proc/self/io has no rchar line")


def test_gc_tells_the_large_layers_another_tool_s_image_names_by_their_size(
    tmp_path: Path,
) -> None:
    """A blob over 4 MiB that another tool's manifest names as a layer names nothing,
    and its size says so: gc and rm read 4 MiB of each such layer to find it too large
    (``read(limit + 1)``), where a stat had told them (a store shared with skopeo, of
    images of large layers: gigabytes read by every ``rm``)."""
    store = tmp_path / "store"
    Store.open(store).close()
    layers = []
    for mib in (5, 6, 7, 8):  # zeros: written sparse, each its own digest
        size = mib * 1024 * 1024
        digest = f"sha256:{hashlib.sha256(bytes(size)).hexdigest()}"
        with open(store / "blobs" / "sha256" / digest.removeprefix("sha256:"), "wb") as file:
            file.truncate(size)
        layers.append(
            {"mediaType": images.MediaTypes.OCI_LAYER_TAR, "digest": digest, "size": size}
        )
    config = images.Blob(images.MediaTypes.OCI_CONFIG, b"{}")
    manifest = as_json(
        {
            "schemaVersion": 2,
            "mediaType": images.MediaTypes.OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": layers,
        },
        images.MediaTypes.OCI_MANIFEST,
    )
    for blob in (config, manifest):
        put_blob(store, blob)
    index = json.loads((store / "index.json").read_text())
    index["manifests"].append(manifest.descriptor())
    (store / "index.json").write_text(json.dumps(index))
    every = blobs(store)

    with Store.open(store) as opened:
        before = bytes_read()
        removal = opened.prune()
        read = bytes_read() - before

    assert removal.deleted_blobs == ()
    assert blobs(store) == every
    # Old: 4 MiB and 8 KiB of each layer. Now: the database, index.json and the manifest.
    assert read < _store._MAX_MANIFEST_BYTES, read


def index_refs_ours(store: Path) -> list[str]:
    index = json.loads((store / "index.json").read_text())
    return sorted(
        m["annotations"]["org.opencontainers.image.ref.name"]
        for m in index["manifests"]
        if "annotations" in m
    )


@pytest.mark.deadline(180)
def test_prune_while_a_pull_runs_in_another_process_removes_nothing_it_needs(
    registry: Any,
    proxy: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RELIABILITY.md: garbage collection while a pull is running deletes nothing the
    pull needs. Prune once the pull has committed a layer, which no image names until the
    pull records its own: it refuses (a short wait) or waits (the CLI's), never deletes."""
    image = images.sample_image(unique_seed, compressions=("gzip", "none"), layer_size=64 * 1024)
    big = images.make_layer(f"{unique_seed}:big", size=1536 * 1024, compression="none")
    image = images.make_image([*image.layers, big])
    registry.push(unique_repo, image, "1")
    via = proxy(registry, rate=400_000)  # seconds for the big layer
    store = tmp_path / "store"
    ref = f"{via.host}/{unique_repo}:1"
    Store.open(store).close()

    puller = cli("pull", ref, "--store", str(store), "--platform", PLATFORM, "--json")
    try:
        assert puller.stdout is not None
        for line in puller.stdout:
            if json.loads(line)["event"] == "layer-complete":
                break  # a layer committed, its image not recorded yet
        else:
            pytest.fail(f"the pull ended first: {puller.communicate()}")
        monkeypatch.setattr(_store, "GC_WAIT_S", 0.2)
        with Store.open(store) as pruner, pytest.raises(StoreError) as refused:
            pruner.prune()
        assert "a pull is running in this store; try again when it ends" in str(refused.value)
        # The CLI waits for it (or, on a machine slow enough, refuses too).
        code, _, err = run("gc", "--store", str(store), "--json")
        assert code == 0 or "a pull is running in this store" in err, err
        rest, err = puller.communicate(timeout=CLI_TIMEOUT_S)
    finally:
        puller.kill()
        puller.wait(timeout=30)
    assert puller.returncode == 0, err
    assert json.loads(rest.splitlines()[-1])["ref"] == ref
    assert blobs(store) == image_blobs(image)
    assert_clean(store)
    via.rate = None
    assert_all_exist(ref, store)


def test_a_pull_waits_while_a_removal_holds_the_store_and_a_removal_for_a_pull(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two sides of gc.lock, in one process (as a daemon's pulls and its API
    callers would be): flock is per open file, so a hold excludes a removal there too."""
    store = Store.open(tmp_path / "store")
    monkeypatch.setattr(_store, "GC_WAIT_S", 0.1)
    hold = store.try_hold_for_pull()
    assert hold is not None
    other = store.try_hold_for_pull()
    assert other is not None  # pulls share it
    with pytest.raises(StoreError, match="a pull is running in this store"):
        store.prune()
    with pytest.raises(StoreError, match="a pull is running in this store"):
        store.remove_images(["alpine"])
    hold.release()
    other.release()
    hold.release()  # again: harmless
    with store._removing("prune"):
        assert store.try_hold_for_pull() is None  # a pull polls until the removal ends
    assert store.prune().deleted_blobs == ()
    assert store.try_hold_for_pull() is not None
    with pytest.raises(StoreError, match="opened read-only"):
        reader = Store.open_existing(tmp_path / "store")
        assert reader is not None
        reader.prune()


# Holds the store as an rm or gc does (gc.lock, exclusively) until its stdin closes.
_HOLDING_REMOVAL = """
import sys
from pipeline import Store

with Store.open(sys.argv[1]) as store, store._removing("prune"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_removal_refused_for_another_removal_says_so_not_that_a_pull_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two gc's (or an rm and a gc) at once: the second waits, then refuses naming what
    it waited for; "a pull is running" sent the user looking for a pull that was not
    there (a gc stopped with Ctrl-Z holds the store until it is resumed or ended)."""
    store = tmp_path / "store"
    Store.open(store).close()
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDING_REMOVAL, str(store)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    ) as holder:  # its exit closes the pipes and waits
        try:
            assert holder.stdout is not None and holder.stdin is not None
            assert holder.stdout.readline() == "held\n"
            monkeypatch.setattr(_store, "GC_WAIT_S", 0.2)
            with Store.open(store) as pruner:
                for removal in (pruner.prune, lambda: pruner.remove_images(["alpine"])):
                    with pytest.raises(StoreError) as refused:
                        removal()
                    message = str(refused.value)
                    assert "another rm or gc is running in this store" in message, message
                    assert "Ctrl-Z" in message and "a pull is running" not in message, message
                assert pruner.try_hold_for_pull() is None  # and a pull waits for it
            holder.stdin.close()
            assert holder.wait(timeout=CLI_TIMEOUT_S) == 0
        finally:
            holder.kill()
    with Store.open(store) as pruner:
        assert pruner.prune() == _store.Removal()


def test_verify_repair_waits_for_a_running_pull_as_a_removal_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``verify --repair`` unlinks blobs, so it holds gc.lock as ``rm`` and ``gc`` do: a
    pull commits its layers before its image is recorded, and must not lose one in
    between. It used to unlink beside a running pull (and beside a gc)."""
    where = tmp_path / "store"
    data = b'{"a config": "soon damaged"}'
    digest = Digest.parse(f"sha256:{hashlib.sha256(data).hexdigest()}")
    with Store.open(where) as store:
        store.write_blob(digest, data)
        blob = where / "blobs" / "sha256" / digest.hex
        blob.chmod(0o644)
        blob.write_bytes(b'{"a config": "now damaged"}')
        _, damage = store.verify()
        assert [(d.digest, d.kind) for d in damage] == [(digest, "blob")]
        monkeypatch.setattr(_store, "GC_WAIT_S", 0.1)
        hold = store.try_hold_for_pull()
        assert hold is not None
        with pytest.raises(StoreError) as refused:
            store.remove_damaged(damage)
        message = str(refused.value)
        assert "cannot remove damaged blobs from store" in message, message
        assert "a pull is running in this store; try again when it ends" in message, message
        assert blob.exists()  # nothing unlinked beside the pull
        hold.release()
        with store._removing("prune"), pytest.raises(StoreError) as refused:
            store.remove_damaged(damage)  # nor beside a gc
        assert "another rm or gc is running in this store" in str(refused.value)
        assert blob.exists()
        store.remove_damaged(damage)  # the store is free: repaired
        assert not blob.exists()
        assert store.verify() == (0, [])


@pytest.mark.parametrize("moment", ["before-listing", "while-checking"])
def test_verify_while_an_rm_removes_blobs_finds_no_damage(
    registry: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    moment: str,
) -> None:
    """``rm`` and ``gc`` do not wait for a ``verify`` (it holds nothing): a layer removed
    with its record while verify reads the store is not damage, and verify does not
    fail on a file gone from under it. The rm runs in another process at a chosen
    moment: after verify read the layer records and before it listed ``blobs/``, or
    while it checks the blobs it listed."""
    _, two = push_sharing(registry, unique_repo, unique_seed)
    store = tmp_path / "store"
    ref_one, ref_two = (f"{registry.host}/{unique_repo}:{tag}" for tag in ("one", "two"))
    pull(ref_one, store)
    pull(ref_two, store)
    reader = Store.open_existing(store)
    assert reader is not None
    removed: list[str] = []

    def remove_one() -> None:
        if not removed:
            removed.append(ref_one)
            code, _, err = run("rm", ref_one, "--store", str(store))
            assert code == 0, err

    if moment == "before-listing":
        iterdir = Path.iterdir

        def listing(self: Path) -> Any:
            if self == store / "blobs" / "sha256":
                remove_one()
            return iterdir(self)

        monkeypatch.setattr(Path, "iterdir", listing)
    else:
        problem = Store._blob_problem

        def checking(self: Store, *args: Any, **kwargs: Any) -> str | None:
            remove_one()
            return problem(self, *args, **kwargs)

        monkeypatch.setattr(Store, "_blob_problem", checking)

    _, damage = reader.verify(full=True)

    monkeypatch.undo()
    assert removed == [ref_one]
    assert damage == []
    assert blobs(store) == image_blobs(two)
    assert reader.verify(full=True) == (len(image_blobs(two)), [])
    assert_clean(store)


# --- a full disk ---------------------------------------------------------------------------


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 4 MiB of its own, to fill. Mounting it needs root (the CI's); the test
    is skipped where it is not permitted."""
    where = tmp_path / "small"
    where.mkdir()
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount(8) here")
    argv = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)]
    mounted = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True, timeout=30)


def test_a_store_whose_blobs_are_on_another_filesystem_is_refused_at_open(
    tmp_path: Path, small_filesystem: Path
) -> None:
    """blobs/ on another filesystem than ingest/ (a symlink to another mount) failed a
    pull at the rename of its first layer, after downloading it, with "check the store
    directory". Refused when the store is opened to change it, saying what is wrong."""
    Store.open(tmp_path / "s").close()
    shutil.move(tmp_path / "s" / "blobs", small_filesystem / "blobs")
    (tmp_path / "s" / "blobs").symlink_to(small_filesystem / "blobs")

    with pytest.raises(StoreError, match="its ingest/ and its blobs/ are not all on one"):
        Store.open(tmp_path / "s")
    hint = _store._hint(OSError(errno.EXDEV, "Invalid cross-device link"), tmp_path, "x")
    assert hint.startswith("the store's directory, its ingest/ and its blobs/ are not all")
    # Both moved there: index.json is renamed from ingest/ into the store's directory.
    shutil.move(tmp_path / "s" / "ingest", small_filesystem / "ingest")
    (tmp_path / "s" / "ingest").symlink_to(small_filesystem / "ingest")
    with pytest.raises(StoreError, match="its ingest/ and its blobs/ are not all on one"):
        Store.open(tmp_path / "s")


def test_a_store_whose_blobs_may_not_be_written_is_refused_at_open(
    tmp_path: Path, immutable: Any
) -> None:
    # It failed a pull only at the rename of its first layer, after the download.
    Store.open(tmp_path / "s").close()
    immutable(tmp_path / "s" / "blobs" / "sha256")  # root may not write it either

    with pytest.raises(StoreError, match=r"this user may not write .*blobs/sha256"):
        Store.open(tmp_path / "s")
    assert Store.open_existing(tmp_path / "s") is not None  # reading it still works


def test_a_read_only_store_directory_is_named_not_its_database(
    tmp_path: Path, immutable: Any
) -> None:
    """SQLite cannot make its -wal and -shm files in a store directory it may not write,
    and says "readonly": the hint blamed the database file, which was writable."""
    Store.open(tmp_path / "s").close()
    immutable(tmp_path / "s")
    readonly = sqlite3.OperationalError("attempt to write a readonly database")
    readonly.sqlite_errorcode = sqlite3.SQLITE_READONLY  # type: ignore[attr-defined]

    hint = _store._hint(readonly, tmp_path / "s", "open")

    assert hint.startswith(f"this user may not write the store directory {tmp_path / 's'},")


def fill(filesystem: Path, *, leave: int) -> None:
    """Take the free space of ``filesystem`` but ``leave`` bytes, with one file."""
    (filesystem / "filler").unlink(missing_ok=True)
    stat = os.statvfs(filesystem)
    remaining = max(stat.f_bavail * stat.f_frsize - leave, 0)
    chunk = bytes(64 * 1024)
    fd = os.open(filesystem / "filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while remaining > 0:
            remaining -= os.write(fd, chunk[:remaining])
    except OSError as exc:  # the file's own blocks took the last few
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_rm_and_gc_on_a_full_disk_say_what_room_they_need_and_remove_nothing(
    registry: Any, unique_repo: str, unique_seed: str, small_filesystem: Path
) -> None:
    """On a full disk no removal can start: SQLite reads the store's database only
    through a shared-memory file it must create (32 KiB), and a removal writes its
    records (through the log) before it deletes a file. Both said "disk I/O error" or
    "database or disk is full", then "free some disk space (or choose another store
    with --store)", which a user who ran gc to free space could not act on. No sound
    removal frees space first (see ``_store._FREE_SPACE_TO_REMOVE``): the store is left
    as it was, and the message says how much room to make."""
    _, two = push_sharing(registry, unique_repo, unique_seed)
    store = small_filesystem / "store"
    ref_one, ref_two = (f"{registry.host}/{unique_repo}:{tag}" for tag in ("one", "two"))
    pull(ref_one, store)
    pull(ref_two, store)
    every_blob = blobs(store)

    def refused(*argv: str) -> str:
        code, out, err = run(*argv, "--store", str(store))
        assert (code, out) == (1, ""), err
        assert "free some disk space" in err
        assert blobs(store) == every_blob
        return err

    fill(small_filesystem, leave=0)
    for argv in (["rm", ref_one], ["gc"]):
        err = refused(*argv)
        assert f"cannot open store {store}: " in err
        assert "`rm` and `gc` need about 100 KiB (1 MiB to remove hundreds of" in err
    fill(small_filesystem, leave=40 * 1024)  # room to open it, not to record a removal
    err = refused("rm", ref_one)
    assert f"cannot remove images from store {store}: " in err
    assert "free some disk space on its filesystem, about 100 KiB" in err
    assert "records what it removes in the store's database before it deletes any" in err
    (small_filesystem / "filler").unlink()
    listed = Store.open_existing(store)
    assert listed is not None
    assert sorted(r.ref for r in listed.list_images()) == sorted([ref_one, ref_two])
    assert_clean(store)

    fill(small_filesystem, leave=128 * 1024)  # about 100 KiB, as the message says
    code, out, err = run("rm", ref_one, "--store", str(store), "--json")
    assert code == 0, err
    assert json.loads(out)["untagged"] == [ref_one]
    (small_filesystem / "filler").unlink()
    assert blobs(store) == image_blobs(two)
    assert index_refs(store) == [ref_two]
    assert_clean(store)
    assert_all_exist(ref_two, store)


# --- crashes -------------------------------------------------------------------------------

# Runs rmi or prune and is killed (SIGKILL) at a chosen moment: right after index.json
# was rewritten (the rows not yet deleted), or after the first blob is unlinked.
_CRASHING = """
import os, pathlib, signal, sys
from pipeline import Store, _store

where, command, point = sys.argv[1:4]
refs = sys.argv[4:]
write_atomic = Store._write_atomic
unlink = pathlib.Path.unlink

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def crashing_write(self, target, data, **kwargs):
    write_atomic(self, target, data, **kwargs)
    if point == "after-index" and target.name == "index.json":
        die()

def crashing_unlink(self, *args, **kwargs):
    unlink(self, *args, **kwargs)
    if point == "after-first-blob" and self.parent.name == "sha256":
        die()

Store._write_atomic = crashing_write
pathlib.Path.unlink = crashing_unlink
store = Store.open(where)
if command == "rmi":
    store.remove_images(refs)
else:
    store.prune()
sys.exit(3)  # not killed: the test fails
"""


@pytest.mark.deadline(180)
@pytest.mark.parametrize(
    ("command", "point"),
    [("rmi", "after-index"), ("rmi", "after-first-blob"), ("prune", "after-first-blob")],
)
def test_a_removal_killed_midway_leaves_a_store_verify_accepts_and_a_pull_repairs(
    registry: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    command: str,
    point: str,
) -> None:
    one, two = push_sharing(registry, unique_repo, unique_seed)
    store = tmp_path / "store"
    ref_one, ref_two = (f"{registry.host}/{unique_repo}:{tag}" for tag in ("one", "two"))
    pull(ref_one, store)
    pull(ref_two, store)
    if command == "prune":
        registry.push(unique_repo, two, "one")
        pull(ref_one, store)  # the tag moves: image `one` is named by nothing now
    refs = [ref_one] if command == "rmi" else []

    killed = subprocess.run(
        [sys.executable, "-c", _CRASHING, str(store), command, point, *refs],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert blobs(store) >= image_blobs(two)  # what the other image uses is all there
    left = sorted(p.name for p in (store / "ingest").iterdir())
    if point == "after-index":
        # rm's link to the index.json it replaced, kept to put back should its COMMIT
        # fail: abandoned by the kill, like a killed pull's partial file, and swept by
        # the next open that may write.
        assert [name.startswith(".index.json.") for name in left] == [True]
    else:
        assert left == []
    code, out, err = run("verify", "--store", str(store), "--full", "--json")
    assert (code, json.loads(out)["damaged"]) == (0, []), err  # no record names a missing blob
    reopened = Store.open(store)  # and index.json lists what the records say
    assert sorted(p.name for p in (store / "ingest").iterdir()) == []
    assert reopened.verify(full=True)[1] == []
    expected = [ref_one, ref_two] if point == "after-index" or command == "prune" else [ref_two]
    assert sorted(r.ref for r in reopened.list_images()) == expected
    assert index_refs(store) == expected
    reopened.close()
    pull(ref_one, store)  # a pull repairs what the removal took
    assert_clean(store)
    assert_all_exist(ref_one, store)
    assert_all_exist(ref_two, store)
    code, _, err = run("prune", "--store", str(store), "--json")  # the leftovers go
    assert code == 0, err
    assert blobs(store) == image_blobs(two) | (image_blobs(one) if command == "rmi" else set())
    assert_clean(store)


# --- from trio code (the library) ------------------------------------------------------


def push_slow_image(registry: Any, proxy: Any, repo: str, seed: str) -> tuple[images.Image, str]:
    """An image whose big layer takes a few seconds through a throttled proxy, so that a
    pull of it has committed its small layer long before it records its image."""
    small = images.make_layer(f"{seed}:small", size=64 * 1024)
    big = images.make_layer(f"{seed}:big", size=1024 * 1024, compression="none")
    image = images.make_image([small, big])
    registry.push(repo, image, "1")
    via = proxy(registry, rate=500_000)
    return image, f"{via.host}/{repo}:1"


async def pull_in_background(
    nursery: trio.Nursery, ref: str, store: Store, results: list[pipeline.PullResult]
) -> None:
    """Start ``pipeline.pull(ref)`` in ``nursery``; return once it has committed a layer
    (and so holds the store against removals: its image is not recorded yet)."""
    committed = trio.Event()

    def progress(event: pipeline.ProgressEvent) -> None:
        if event.event == "layer-complete":
            committed.set()

    async def run() -> None:
        options = pipeline.PullOptions(
            platform=pipeline.Platform.parse(PLATFORM), progress=progress
        )
        results.append(await pipeline.pull(ref, store=store, options=options))

    nursery.start_soon(run)
    await committed.wait()


async def test_a_removal_called_from_the_event_loop_is_refused_not_left_to_block_the_pulls(
    registry: Any,
    proxy: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trio program pulling into a store and calling ``store.prune()`` from its event
    loop: prune waited for the pulls running in the store, its own among them, and they
    could not run while it blocked the loop; after ``GC_WAIT_S`` it refused, "a pull is
    running in this store". The synchronous removals now refuse at once from a trio
    thread, naming their async form, and the pull goes on."""
    monkeypatch.setattr(_store, "GC_WAIT_S", 2.0)  # how long the old code blocked the loop
    image, ref = push_slow_image(registry, proxy, unique_repo, unique_seed)
    where = tmp_path / "store"
    results: list[pipeline.PullResult] = []
    with Store.open(where) as store:
        async with trio.open_nursery() as nursery:
            await pull_in_background(nursery, ref, store, results)
            removals = {
                "prune": store.prune,
                "remove_images": lambda: store.remove_images([ref]),
                "remove_damaged": lambda: store.remove_damaged([]),
            }
            for name, removal in removals.items():
                with pytest.raises(pipeline.UsageError) as refused:
                    removal()
                message = str(refused.value)
                assert f"Store.{name}() was called from trio's event loop" in message, message
                assert f"await store.{name}_async(" in message, message
    assert [r.reference for r in results] == [ref]
    assert blobs(where) == image_blobs(image)
    assert_clean(where)


def put_garbage(store: Store, seed: str) -> str:
    """A blob nothing names, which ``prune`` removes; its digest."""
    data = json.dumps({"garbage": seed}).encode()
    digest = Digest.parse(f"sha256:{hashlib.sha256(data).hexdigest()}")
    store.write_blob(digest, data)
    return str(digest)


async def test_prune_async_waits_for_the_program_s_own_pull_then_prunes(
    registry: Any,
    proxy: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a trio program pulling into a store awaits to prune it: the wait for the
    running pulls is made in a worker thread, the pull goes on meanwhile and ends,
    and then the store is pruned: of what nothing names, not of the pull's layers."""
    monkeypatch.setattr(_store, "GC_WAIT_S", 60.0)  # the pull ends long before, however slow
    image, ref = push_slow_image(registry, proxy, unique_repo, unique_seed)
    where = tmp_path / "store"
    results: list[pipeline.PullResult] = []
    with Store.open(where) as store:
        garbage = put_garbage(store, unique_seed)
        async with trio.open_nursery() as nursery:
            await pull_in_background(nursery, ref, store, results)
            removal = await store.prune_async()
    assert [str(d) for d in removal.deleted_blobs] == [garbage]
    assert [r.reference for r in results] == [ref]
    assert blobs(where) == image_blobs(image)
    assert_clean(where)


async def test_an_async_removal_cancelled_while_it_waits_removes_nothing(
    registry: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cancel scope around ``prune_async`` (or ``remove_images_async``) ends its wait
    for a pull, or for the store's lock another holder keeps, at once, with nothing
    removed: the worker thread checks between slices of its waits. Without that the
    thread, which trio does not abandon, waited out ``GC_WAIT_S`` (the lock's 30 s)."""
    monkeypatch.setattr(_store, "GC_WAIT_S", 30.0)  # past it, a StoreError fails the test
    image = images.sample_image(unique_seed, compressions=("gzip",))
    registry.push(unique_repo, image, "1")
    ref = f"{registry.host}/{unique_repo}:1"
    where = tmp_path / "store"
    with Store.open(where) as store:
        options = pipeline.PullOptions(platform=pipeline.Platform.parse(PLATFORM))
        await pipeline.pull(ref, store=store, options=options)
        garbage = put_garbage(store, unique_seed)

        hold = store.try_hold_for_pull()  # as a running pull holds the store
        assert hold is not None
        for removal in (store.prune_async, lambda: store.remove_images_async([ref])):
            with trio.move_on_after(0.5) as waiting:
                await removal()
            assert waiting.cancelled_caught
        hold.release()
        with store._locked():  # the lock remove_images takes once the pulls let go
            with trio.move_on_after(0.5) as waiting:
                await store.remove_images_async([ref])
            assert waiting.cancelled_caught

        assert [r.ref for r in store.list_images()] == [ref]
        assert garbage in blobs(where)
        assert blobs(where) == image_blobs(image) | {garbage}
        free = store.try_hold_for_pull()
        assert free is not None  # gc.lock let go by every removal
        free.release()
        removal = await store.remove_images_async([ref])
    assert removal.untagged == (ref,)
    assert blobs(where) == {garbage}  # remove_images removes what it freed; prune the rest
    with Store.open(where) as store:
        assert [str(d) for d in (await store.prune_async()).deleted_blobs] == [garbage]
    assert blobs(where) == set()


async def test_an_async_removal_takes_no_thread_the_pulls_it_waits_for_need(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique_seed: str
) -> None:
    """``prune_async``'s thread waits for the pulls running in the store, and a pull
    takes threads of trio's default limiter (its hold on the store, each layer's claim:
    ``LCache``). The removal's thread came from that limiter too, so a removal holding
    the last of its threads (here the only one: a host may lower it, and 40 removals at
    once take them all) left the pull it waited for waiting on it, the program's pulls
    frozen again until ``GC_WAIT_S`` ran out. Its thread has a limiter of its own now."""
    monkeypatch.setattr(_store, "GC_WAIT_S", 30.0)  # past it, a StoreError fails the test
    monkeypatch.setattr(trio.to_thread.current_default_thread_limiter(), "total_tokens", 1)
    removals: list[_store.Removal] = []
    with Store.open(tmp_path / "store") as store:
        garbage = put_garbage(store, unique_seed)
        hold = store.try_hold_for_pull()  # a pull that has begun, its layers not claimed
        assert hold is not None

        async def prune() -> None:
            removals.append(await store.prune_async())

        async def pull_goes_on() -> None:
            # What the pull does next: claim its layer, as every pull does, through the
            # default limiter; then, its image recorded, it lets go of the store.
            async with store.lcache.download(Digest.parse(f"sha256:{'ab' * 32}")):
                pass
            hold.release()

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(prune)
                await trio.testing.wait_all_tasks_blocked()  # its thread waits for the hold
                nursery.start_soon(pull_goes_on)
    assert [[str(d) for d in removal.deleted_blobs] for removal in removals] == [[garbage]]
