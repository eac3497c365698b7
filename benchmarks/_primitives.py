"""The bare primitives on this machine, on each image's own layers, and the floor they imply.

One core each, 1 MiB buffers, data in memory (read before timing), the hashing and
inflating timed in the CPU time of the thread that runs them, the least of three turns
(what else runs on the machine takes wall time, not that): sha256 of the blob,
inflate (every gzip inflater installed: ISA-L, zlib-ng, zlib; zstandard for zstd; that is
the measurement ``--gzip-inflater auto``'s order rests on), sha256 of the tar, write + fsync of
the blob to the filesystem the stores live on, and a raw loopback download of each blob
from the registry (httpx sync ``iter_raw`` and curl; page cache dropped first when the run
drops it for the tools too). Also the CPU curl needs to receive all of an image's blobs
over one connection, the least receiving costs here (used by _targets, not the floor).
And how much faster the machine's cores run the hashing and inflating together than one
alone: the same work on one thread, then on one thread per core at once, the fastest of
three turns each of the most CPU time one of the threads took (``compute_1_s``,
``compute_parallel_s``; used by _targets, not the floor). Cores share caches and memory
bandwidth, so that is less than the number of cores.

The floor of an image is the largest of: the primitives' CPU (download with httpx +
sha256 + the fastest inflater + sha256 of the tar + write) divided by the cores; the
slowest single stage of its largest layer (curl's download, either hash, the inflate, the
write with fsync); and the bytes written divided by the disk's speed.
"""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import zstandard

from stages._codec import available_inflaters, gzip_member, inflater

from ._images import BuiltImage
from ._measure import drop_caches

__all__ = ["floor_of", "measure_image"]

CHUNK = 1 << 20
COMPUTE_ROUNDS = 3
INFLATE_ROUNDS = 3


def _chunks(data: bytes) -> list[memoryview]:
    view = memoryview(data)
    return [view[i : i + CHUNK] for i in range(0, len(view), CHUNK)]


def _time_sha(chunks: list[memoryview]) -> float:
    """CPU seconds of this thread (``time.thread_time``, as every compute timing here):
    the wall clock counted whatever else ran on the core, and a run on a busy machine
    made the targets' lower bound higher than what our pulls took in the same run."""
    sha = hashlib.sha256()
    t = time.thread_time()
    for c in chunks:
        sha.update(c)
    return time.thread_time() - t


def _time_sha_best(chunks: list[memoryview]) -> float:
    """The least of ``COMPUTE_ROUNDS`` timings of ``_time_sha``."""
    return min(_time_sha(chunks) for _ in range(COMPUTE_ROUNDS))


def _time_inflate(chunks: list[memoryview], kind: str, hash_out: bool) -> tuple[float, float]:
    """(seconds inflating, seconds hashing the output); ``kind`` is "zstd" or the name of a
    gzip inflater (``stages._codec.available_inflaters``)."""
    if kind == "zstd":
        dec: Any = zstandard.ZstdDecompressor().decompressobj()
    else:  # each inflater at its fastest, as a pull uses it (ISA-L: its own decompressor)
        dec = gzip_member(inflater(kind))
    sha = hashlib.sha256()
    t_inf = t_sha = 0.0
    for c in chunks:
        t = time.thread_time()
        out = dec.decompress(c)
        t_inf += time.thread_time() - t
        if hash_out:
            t = time.thread_time()
            sha.update(out)
            t_sha += time.thread_time() - t
    return t_inf, t_sha


def _time_inflaters(
    chunks: list[memoryview], names: tuple[str, ...]
) -> tuple[dict[str, float], float]:
    """The fastest of ``INFLATE_ROUNDS`` turns of each inflater (gzip's, or "zstd"),
    taking turns (so that a burst of other load or a slow allocation cannot decide which
    looks fastest: one turn each once made zlib-ng take 0.60 s on a layer it inflates in
    0.14), and the fastest sha256 of the tar, hashed in the first inflater's turns."""
    best = dict.fromkeys(names, float("inf"))
    sha_tar = float("inf")
    for _ in range(INFLATE_ROUNDS):
        for name in names:
            inflating, hashing = _time_inflate(chunks, name, name == names[0])
            best[name] = min(best[name], inflating)
            if name == names[0]:
                sha_tar = min(sha_tar, hashing)
    return best, sha_tar


def _compute(chunks: list[memoryview], kind: str) -> None:
    """The pull's per-layer CPU work: sha256 of the blob, inflate, sha256 of the tar."""
    _time_sha(chunks)
    _time_inflate(chunks, kind, True)


def _time_compute(chunks: list[memoryview], kind: str, threads: int) -> float:
    """The most CPU seconds any of ``threads`` threads took, each doing all of
    ``_compute`` on ``chunks`` at once (they all read the same data). What running
    together costs a thread (shared caches, memory bandwidth, a sibling hyperthread)
    shows in its CPU time; what other processes took of the cores does not, as it did
    in the wall time from the first start to the last end. A thread's error is raised
    here."""
    ready = threading.Barrier(threads)
    spans: list[float] = []
    errors: list[Exception] = []

    def run() -> None:
        ready.wait()
        started = time.thread_time()
        try:
            _compute(chunks, kind)
        except Exception as exc:  # raised again by the caller's thread
            errors.append(exc)
        spans.append(time.thread_time() - started)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return max(spans)


def _time_compute_best(chunks: list[memoryview], kind: str, cores: int) -> tuple[float, float]:
    """The fastest of ``COMPUTE_ROUNDS`` timings on one thread and on ``cores`` threads,
    taken in turn: a burst of other load on the machine makes the threads look slower
    together than they are, which would make the targets' bound look higher than it is."""
    alone, together = [], []
    for _ in range(COMPUTE_ROUNDS):
        alone.append(_time_compute(chunks, kind, 1))
        together.append(_time_compute(chunks, kind, cores))
    return min(alone), min(together)


def _time_write(chunks: list[memoryview], folder: Path) -> tuple[float, float]:
    path = folder / ".prim-write"
    try:
        with path.open("wb", buffering=0) as fh:
            t = time.perf_counter()
            for c in chunks:
                fh.write(c)
            t_write = time.perf_counter() - t
            t = time.perf_counter()
            os.fsync(fh.fileno())
            t_sync = time.perf_counter() - t
    finally:
        path.unlink(missing_ok=True)
    return t_write, t_sync


def _downloads(image: BuiltImage, url: str, drop: bool) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {x.digest: {} for x in image.layers}
    if drop:
        drop_caches()
    with httpx.Client(timeout=120.0, trust_env=False) as client:
        for layer in image.layers:
            target = f"{url}/v2/{image.repo}/blobs/{layer.digest}"
            w, c = time.perf_counter(), time.process_time()
            n = 0
            with client.stream("GET", target, headers={"Accept-Encoding": "identity"}) as r:
                for chunk in r.iter_raw(CHUNK):
                    n += len(chunk)
            if r.status_code != 200 or n != layer.size:  # never time a broken download
                raise RuntimeError(
                    f"GET {layer.digest} gave HTTP {r.status_code} and {n} of {layer.size} bytes"
                )
            out[layer.digest]["download_httpx_s"] = time.perf_counter() - w
            out[layer.digest]["download_httpx_cpu_s"] = time.process_time() - c
    if drop:
        drop_caches()
        # curl's own code back in the page cache, as every tool's is before its runs
        # (_measure): a cold curl start counted in the first layer's download, and
        # made small's floor twice what its download takes.
        subprocess.run(["curl", "--version"], check=True, capture_output=True, timeout=60)
    for layer in image.layers:
        target = f"{url}/v2/{image.repo}/blobs/{layer.digest}"
        w = time.perf_counter()
        subprocess.run(["curl", "-sSf", "-L", "-o", "/dev/null", target], check=True, timeout=300)
        out[layer.digest]["download_curl_s"] = time.perf_counter() - w
    return out


def _curl_cpu(argv: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["curl", "-sSf", "-L", *argv], check=True, timeout=300, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _receive_cpu(image: BuiltImage, url: str, drop: bool) -> float:
    """CPU seconds curl spends receiving every blob of ``image``: one curl process, one
    connection, minus the same for the tiny ``/v2/`` response (its start-up and request)."""
    blobs = [f"{url}/v2/{image.repo}/blobs/{x.digest}" for x in image.layers]
    if drop:
        drop_caches()
    received = _curl_cpu([arg for blob in blobs for arg in ("-o", "/dev/null", blob)])
    return max(0.0, received - _curl_cpu(["-o", "/dev/null", f"{url}/v2/"]))


def measure_image(
    image: BuiltImage, registry_url: str, write_dir: Path, *, drop: bool, cores: int
) -> dict[str, Any]:
    """Time every primitive on every layer of ``image``; see the module docstring."""
    zstd = image.layers[0].media_type.endswith("zstd")
    gzip_inflaters = () if zstd else available_inflaters()  # ``auto``'s choice first
    auto = gzip_inflaters[0] if gzip_inflaters else "zstd"
    downloads = _downloads(image, registry_url, drop)
    layers = []
    for layer in image.layers:
        data = Path(layer.path).read_bytes()
        if len(data) != layer.size:  # the cache checks this; the file may change since
            raise RuntimeError(f"{layer.path} holds {len(data)} bytes, not {layer.size}")
        chunks = _chunks(data)
        row: dict[str, Any] = {
            "digest": layer.digest,
            "size": layer.size,
            "uncompressed_size": layer.uncompressed_size,
        }
        row["sha256_gz_s"] = _time_sha_best(chunks)
        if zstd:
            best, row["sha256_tar_s"] = _time_inflaters(chunks, ("zstd",))
            row["inflate_zstd_s"] = row["inflate_s"] = best["zstd"]
        else:
            best, row["sha256_tar_s"] = _time_inflaters(chunks, gzip_inflaters)
            row.update({f"inflate_{name}_s": best[name] for name in gzip_inflaters})
            row["inflate_s"] = min(best.values())
        kind = "zstd" if zstd else min(gzip_inflaters, key=lambda name: row[f"inflate_{name}_s"])
        row["compute_1_s"], row["compute_parallel_s"] = _time_compute_best(chunks, kind, cores)
        row["write_s"], row["fsync_s"] = _time_write(chunks, write_dir)
        row.update(downloads[layer.digest])
        layers.append(row)
        del data, chunks
    seconds = {name: sum(row[f"inflate_{name}_s"] for row in layers) for name in gzip_inflaters}
    return {
        "image": image.name,
        # what ``--gzip-inflater auto`` uses, and the one fastest here on all the layers
        "inflater": auto,
        "fastest_inflater": min(seconds, key=lambda name: seconds[name]) if seconds else auto,
        "inflater_s": seconds,
        "layers": layers,
        "receive_curl_cpu_s": _receive_cpu(image, registry_url, drop),
        "compute_threads": cores,
    }


def floor_of(prims: dict[str, Any], cores: int) -> dict[str, Any]:
    """The floor (seconds) and its three candidates; CPU sum of the primitives."""
    layers = prims["layers"]

    def total(key: str) -> float:
        return float(sum(x.get(key, 0.0) for x in layers))

    cpu_sum = (
        total("download_httpx_cpu_s")
        + total("sha256_gz_s")
        + total("inflate_s")
        + total("sha256_tar_s")
        + total("write_s")
    )
    largest = max(layers, key=lambda x: x["size"])
    stages = {
        "download": largest.get("download_curl_s", largest.get("download_httpx_s", 0.0)),
        "sha256": largest["sha256_gz_s"],
        "inflate": largest["inflate_s"],
        "sha256_tar": largest["sha256_tar_s"],
        "write+fsync": largest["write_s"] + largest["fsync_s"],
    }
    slowest = max(stages, key=lambda k: stages[k])
    disk_s = total("write_s") + total("fsync_s")
    candidates = {
        "cpu/cores": cpu_sum / cores,
        f"largest layer: {slowest}": stages[slowest],
        "disk": disk_s,
    }
    bound = max(candidates, key=lambda k: candidates[k])
    size_in = sum(x["size"] for x in layers)
    size_out = sum(x["uncompressed_size"] for x in layers)
    return {
        "floor_s": candidates[bound],
        "bound_by": bound,
        "candidates": candidates,
        "cpu_sum_s": cpu_sum,
        "cores": cores,
        "mb_s": {
            "sha256": size_in / 1e6 / max(total("sha256_gz_s"), 1e-9),
            "inflate (out)": size_out / 1e6 / max(total("inflate_s"), 1e-9),
            "sha256 tar": size_out / 1e6 / max(total("sha256_tar_s"), 1e-9),
            "write+fsync": size_in / 1e6 / max(disk_s, 1e-9),
            "download httpx": size_in / 1e6 / max(total("download_httpx_s"), 1e-9),
            "download curl": size_in / 1e6 / max(total("download_curl_s"), 1e-9),
        },
    }
