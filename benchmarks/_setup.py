"""The registry the benchmarks pull from, and the images in it.

The registry is the test suite's launcher (``tests/support/registry.py``) with a persistent work
folder under ``benchmarks/.cache/registry``: its storage survives between runs, so an
image is pushed once. Before each run every wanted image's manifest is checked with a HEAD
(the digest must be the one built); only missing ones are pushed, blob by blob (the push
helper skips blobs the registry has).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ._images import IMAGE_SETS, BuiltImage, build_layers, build_manifests

__all__ = [
    "CACHE",
    "REPO_ROOT",
    "find_registry_binary",
    "prepare_images",
    "registry",
    "run_proxy",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(__file__).resolve().parent / ".cache"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support import images as kit_images  # noqa: E402
from tests.support.registry import (  # noqa: E402
    RegistryServer,
    find_registry_binary,
    run_registry,
)
from tests.support.servers import run_proxy  # noqa: E402


@contextlib.contextmanager
def registry(cache: Path = CACHE) -> Iterator[RegistryServer]:
    """A registry on 127.0.0.1 whose storage persists in ``cache/registry``; the logs of
    earlier runs' registries are removed (one was left per run)."""
    for old_log in (cache / "registry").glob("registry-*.log"):
        old_log.unlink(missing_ok=True)
    with run_registry(workdir=cache / "registry", log_level="error") as server:
        yield server


def prepare_images(
    names: Sequence[str],
    server: RegistryServer,
    *,
    cache: Path = CACHE,
    log: Callable[[str], None] = print,
) -> dict[str, list[BuiltImage]]:
    """Build (or reuse) every image of the named sets and make sure the registry has them."""
    specs = [spec for name in names for spec in IMAGE_SETS[name]]
    records, fingerprint = build_layers(specs, cache, log=log)
    built = {name: build_manifests(name, IMAGE_SETS[name], records, fingerprint) for name in names}
    with server.client() as client:
        for images in built.values():
            for image in images:
                head = client.head(
                    f"/v2/{image.repo}/manifests/{image.tag}",
                    headers={"Accept": image.manifest_media_type},
                )
                if (
                    head.status_code == 200
                    and head.headers.get("Docker-Content-Digest") == image.manifest_digest
                ):
                    _check_blobs(client, image)
                    continue
                started = time.monotonic()
                for layer in image.layers:
                    blob = kit_images.Blob(layer.media_type, Path(layer.path).read_bytes())
                    kit_images.push_blob(client, image.repo, blob)
                    del blob
                kit_images.push_blob(
                    client, image.repo, kit_images.Blob(image.config_media_type, image.config)
                )
                kit_images.push_manifest(
                    client,
                    image.repo,
                    image.tag,
                    kit_images.Blob(image.manifest_media_type, image.manifest),
                )
                log(
                    f"pushed {image.repo}:{image.tag} ({image.compressed_size / 1e6:.0f} MB) in "
                    f"{time.monotonic() - started:.0f} s"
                )
    return built


def _check_blobs(client: Any, image: BuiltImage) -> None:
    """Every layer the registry has for ``image`` is of the size built: its storage,
    kept between runs, may have been damaged, and a manifest that is there says nothing
    of its blobs. The registry would not take a blob it believes it has, so a damaged
    one ends the run with what to do."""
    for layer in image.layers:
        head = client.head(f"/v2/{image.repo}/blobs/{layer.digest}")
        size = head.headers.get("Content-Length")
        if head.status_code != 200 or size != str(layer.size):
            raise SystemExit(
                f"the registry's copy of {layer.digest} ({image.repo}:{image.tag}) is "
                f"damaged (HTTP {head.status_code}, {size} bytes, built {layer.size}): "
                f"remove {CACHE / 'registry'} and run again"
            )
