"""The ctools peer (benchmarks/ctools.sh) does the work it is timed for: it stores every
blob of the image and refuses a layer whose digest or diffID is wrong, as ours does.
Against the real registry; skipped where its C tools are not installed (tests/run.sh
installs them on Debian as root)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from benchmarks import _peers

from .support import images

pytestmark = [
    pytest.mark.registry,
    pytest.mark.skipif(
        any(shutil.which(b) is None for b in _peers.TOOLS["ctools"].binaries),
        reason="ctools needs " + ", ".join(_peers.TOOLS["ctools"].binaries),
    ),
]


def _run(ref: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _peers.TOOLS["ctools"].command(ref, out), capture_output=True, text=True, timeout=60
    )


def _stored(out: Path) -> dict[str, str]:
    """Each file in the output's blob folder: its name and the sha256 of its bytes."""
    folder = out / "blobs" / "sha256"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_ctools_stores_every_blob_of_an_image_verified(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    # gzip, zstd, an uncompressed layer and an empty one: each inflater of the script
    image = images.sample_image(unique_seed)
    registry.push(unique_repo, image, "1")

    done = _run(registry.ref(unique_repo, "1"), tmp_path / "out")

    assert done.returncode == 0, done.stderr
    expected = {image.digest, image.config.digest, *(layer.digest for layer in image.layers)}
    names = {d.removeprefix("sha256:") for d in expected}
    assert _stored(tmp_path / "out") == {name: name for name in names}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["blobs"]  # no leftovers


def test_ctools_refuses_a_layer_that_does_not_inflate_to_its_diff_id(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    image = images.mismatched_diff_ids_image(unique_seed)
    registry.push(unique_repo, image, "1")

    done = _run(registry.ref(unique_repo, "1"), tmp_path / "out")

    assert done.returncode == 1
    assert f"layer {image.layers[1].digest} does not inflate to diffID" in done.stderr
    assert image.layers[1].digest.removeprefix("sha256:") not in _stored(tmp_path / "out")


def test_ctools_refuses_a_layer_whose_bytes_do_not_hash_to_its_digest(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    image = images.sample_image(unique_seed, compressions=("none",), with_empty_layer=False)
    registry.push(unique_repo, image, "1")
    layer = image.layers[0]
    stored = registry.blob_path(layer.digest)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, the size unchanged
    stored.write_bytes(bytes(data))

    done = _run(registry.ref(unique_repo, "1"), tmp_path / "out")

    assert done.returncode == 1
    assert f"layer {layer.digest} does not hash to its digest" in done.stderr
    assert layer.digest.removeprefix("sha256:") not in _stored(tmp_path / "out")
