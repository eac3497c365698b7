"""The naive baseline: what a careful person writes in an afternoon.

Sequential, synchronous httpx; per layer one streaming GET whose raw chunks go, in turn, to
sha256 of the blob, zlib (or zstandard) and sha256 of the tar, and to the blob file (fsync
and rename at the end). Digest and diffID are checked. No concurrency, no threads: the
work our pull does, done one step after another.

    python -m benchmarks.naive 127.0.0.1:5000/bench/app:latest --out DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import zstandard

CHUNK = 1 << 20
ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


def _split(ref: str) -> tuple[str, str, str]:
    host, _, rest = ref.partition("/")
    repo, _, tag = rest.rpartition(":")
    return host, repo, tag


class _Inflater:
    def __init__(self, media_type: str) -> None:
        self._zstd = media_type.endswith("zstd")
        if self._zstd:
            self._dec: Any = zstandard.ZstdDecompressor().decompressobj()
        else:
            self._dec = zlib.decompressobj(31)

    def update(self, data: bytes) -> bytes:
        return bytes(self._dec.decompress(data))

    def finish(self) -> bytes:
        return b"" if self._zstd else bytes(self._dec.flush())


def _write_blob(root: Path, digest: str, data: bytes) -> None:
    path = root / "blobs" / "sha256" / digest.split(":")[1]
    path.write_bytes(data)


def pull(ref: str, out: Path) -> dict[str, Any]:
    host, repo, tag = _split(ref)
    (out / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    total_in = total_out = 0
    with httpx.Client(base_url=f"http://{host}", timeout=60.0, trust_env=False) as client:
        response = client.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT})
        response.raise_for_status()
        manifest_bytes = response.content
        manifest = json.loads(manifest_bytes)
        manifest_digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
        _write_blob(out, manifest_digest, manifest_bytes)
        cfg_desc = manifest["config"]
        config_bytes = client.get(f"/v2/{repo}/blobs/{cfg_desc['digest']}").content
        if "sha256:" + hashlib.sha256(config_bytes).hexdigest() != cfg_desc["digest"]:
            raise SystemExit(f"config digest mismatch for {ref}")
        _write_blob(out, cfg_desc["digest"], config_bytes)
        diff_ids = json.loads(config_bytes)["rootfs"]["diff_ids"]
        for layer, diff_id in zip(manifest["layers"], diff_ids, strict=True):
            digest = layer["digest"]
            final = out / "blobs" / "sha256" / digest.split(":")[1]
            partial = final.with_suffix(".partial")
            blob_sha = hashlib.sha256()
            tar_sha = hashlib.sha256()
            inflater = _Inflater(layer["mediaType"])
            size = 0
            with (
                client.stream(
                    "GET", f"/v2/{repo}/blobs/{digest}", headers={"Accept-Encoding": "identity"}
                ) as stream,
                partial.open("wb") as fh,
            ):
                stream.raise_for_status()
                for chunk in stream.iter_raw(CHUNK):
                    size += len(chunk)
                    blob_sha.update(chunk)
                    plain = inflater.update(chunk)
                    tar_sha.update(plain)
                    total_out += len(plain)
                    fh.write(chunk)
                tail = inflater.finish()
                tar_sha.update(tail)
                total_out += len(tail)
                fh.flush()
                os.fsync(fh.fileno())
            total_in += size
            if size != layer["size"] or "sha256:" + blob_sha.hexdigest() != digest:
                raise SystemExit(f"digest mismatch for {digest} of {ref}")
            if "sha256:" + tar_sha.hexdigest() != diff_id:
                raise SystemExit(f"diffID mismatch for {digest} of {ref}")
            os.replace(partial, final)
    return {
        "event": "summary",
        "ref": ref,
        "manifest_digest": manifest_digest,
        "bytes_in": total_in,
        "bytes_out": total_out,
        "seconds": round(time.monotonic() - started, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.naive", description=__doc__)
    parser.add_argument("ref", help="HOST:PORT/repo:tag (plain HTTP, anonymous)")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    print(json.dumps(pull(args.ref, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
