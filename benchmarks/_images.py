"""The benchmark image set: large, realistic layers built once and cached by content hash.

Layers are tars of real files from this machine (``/usr/lib``, ``/usr/share``,
``/usr/include``, ``/usr/bin``: compiled binaries, sources and headers, docs, already
compressed archives and images), picked in a seeded order from a sorted walk, plus
generated text and random bytes. Every tar entry has fixed metadata, so a layer is a pure
function of (its spec, the files on the machine): its cache key hashes both, and a layer
whose key has not changed is never rebuilt or pushed again.

Compression is what docker and buildkit use by default, so the ratios and the inflate speed
of the layers are those of real images: gzip via zlib at level 6 (Go's
``gzip.DefaultCompression``), zstd via ``zstandard`` at level 3. It is slow (about
30 MB/s of tar per core), so layers are built in parallel processes, largest first.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import signal
import stat
import tarfile
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import zstandard

__all__ = [
    "IMAGE_SETS",
    "BuiltImage",
    "BuiltLayer",
    "ImageSpec",
    "LayerSpec",
    "Part",
    "build_layers",
    "build_manifests",
]

GENERATOR_VERSION = 1
ROOTS = ("/usr/bin", "/usr/include", "/usr/lib", "/usr/share")
MAX_FILE = 64 * 1024 * 1024  # larger files are skipped: one file must not be a whole layer
MTIME = 1_700_000_000
MB = 1_000_000

Kind = Literal["binary", "text", "compressed", "gentext", "random"]
Compression = Literal["gzip", "zstd"]

_COMPRESSED_EXT = frozenset(
    [
        ".gz",
        ".xz",
        ".bz2",
        ".zst",
        ".zip",
        ".jar",
        ".whl",
        ".png",
        ".jpg",
        ".jpeg",
        ".gif",
        ".woff",
        ".woff2",
        ".lz4",
        ".lzma",
        ".deb",
        ".tgz",
        ".br",
        ".7z",
    ]
)
_TEXT_EXT = frozenset(
    [
        ".py",
        ".pyi",
        ".h",
        ".hpp",
        ".hh",
        ".c",
        ".cc",
        ".cpp",
        ".txt",
        ".md",
        ".rst",
        ".html",
        ".htm",
        ".css",
        ".js",
        ".json",
        ".xml",
        ".pl",
        ".pm",
        ".sh",
        ".conf",
        ".cfg",
        ".ini",
        ".yaml",
        ".yml",
        ".tcl",
        ".rb",
        ".go",
        ".rs",
        ".toml",
        ".csv",
        ".svg",
        ".tex",
        ".el",
        ".vim",
        ".awk",
        ".m4",
        ".in",
        ".am",
        ".ac",
        ".cmake",
        ".pc",
        ".la",
        ".inc",
        ".def",
        ".s",
        ".tmpl",
        ".map",
        ".rules",
        ".service",
        ".lua",
        ".sql",
        ".po",
        ".pot",
        ".page",
    ]
)

MEDIA = {
    ("docker", "gzip"): "application/vnd.docker.image.rootfs.diff.tar.gzip",
    ("oci", "gzip"): "application/vnd.oci.image.layer.v1.tar+gzip",
    ("oci", "zstd"): "application/vnd.oci.image.layer.v1.tar+zstd",
}
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


@dataclass(frozen=True)
class Part:
    """About ``size`` bytes of tar content of one kind."""

    kind: Kind
    size: int


@dataclass(frozen=True)
class LayerSpec:
    """A layer: its parts, picked with ``seed``. No parts: the empty layer (1024 zeros)."""

    seed: str
    parts: tuple[Part, ...] = ()


@dataclass(frozen=True)
class ImageSpec:
    """One tag in the registry."""

    repo: str
    tag: str
    layers: tuple[LayerSpec, ...]
    compression: Compression = "gzip"
    kind: Literal["docker", "oci"] = "docker"


def _p(kind: Kind, mb: float) -> Part:
    return Part(kind, int(mb * MB))


_EMPTY = LayerSpec("empty")
_APP_BASE = LayerSpec(
    "app-base", (_p("binary", 52), _p("text", 24), _p("compressed", 4))
)  # an OS base
_APP_PKGS = LayerSpec(
    "app-pkgs", (_p("binary", 250), _p("text", 60), _p("compressed", 12))
)  # compiled packages: the largest layer
_APP_PY = LayerSpec("app-py", (_p("text", 124), _p("binary", 16)))  # sources, headers
_APP_DOCS = LayerSpec("app-docs", (_p("text", 50), _p("compressed", 10), _p("binary", 12)))
_APP_CODE = LayerSpec(
    "app-code", (_p("gentext", 14), _p("random", 10), _p("compressed", 6))
)  # the application: generated text, media-like random bytes, archives
_APP_LAYERS = (_APP_BASE, _APP_PKGS, _APP_PY, _EMPTY, _APP_DOCS, _APP_CODE)


def _many_layers(count: int) -> tuple[LayerSpec, ...]:
    rng = random.Random("many-layers")
    kinds: tuple[Kind, ...] = ("binary", "text", "compressed", "gentext", "random")
    layers = []
    for i in range(count):
        size = min(8 * MB, max(20_000, int(rng.lognormvariate(13.6, 1.2))))
        main = kinds[i % len(kinds)]
        layers.append(LayerSpec(f"many-{i}", (Part(main, size), Part("text", size // 3))))
    return tuple(layers)


def _fleet() -> tuple[ImageSpec, ...]:
    uniques = [
        LayerSpec(f"fleet-u{i}", (_p("gentext", 4), _p("binary", 8), _p("random", 2)))
        for i in range(1, 9)
    ]
    images = []
    for i, unique in enumerate(uniques, start=1):
        base = (_APP_BASE, _APP_PKGS, _APP_PY) + ((_APP_DOCS,) if i <= 4 else ())
        images.append(ImageSpec("bench/fleet", f"v{i}", (*base, unique)))
    union = (_APP_BASE, _APP_PKGS, _APP_PY, _APP_DOCS, *uniques)
    images.append(ImageSpec("bench/fleet", "union", union))
    return tuple(images)


IMAGE_SETS: dict[str, tuple[ImageSpec, ...]] = {
    "small": (
        ImageSpec(
            "bench/small",
            "latest",
            (LayerSpec("small", (_p("binary", 5), _p("text", 3), _p("compressed", 0.8))),),
        ),
    ),
    "app": (ImageSpec("bench/app", "latest", _APP_LAYERS),),
    "big": (
        ImageSpec(
            "bench/big",
            "latest",
            (
                LayerSpec("big-base", (_p("binary", 450), _p("text", 160), _p("compressed", 40))),
                LayerSpec(
                    "big-main",
                    (
                        _p("binary", 1450),
                        _p("text", 250),
                        _p("compressed", 140),
                        _p("random", 60),
                    ),
                ),
            ),
        ),
    ),
    "app-zstd": (ImageSpec("bench/app-zstd", "latest", _APP_LAYERS, "zstd", "oci"),),
    "many": (ImageSpec("bench/many", "latest", _many_layers(40)),),
    "fleet": _fleet(),
}


# --- file pools -------------------------------------------------------------------------


def _classify(path: str) -> Kind:
    ext = os.path.splitext(path)[1].lower()
    if ext in _COMPRESSED_EXT:
        return "compressed"
    if ext in _TEXT_EXT or path.startswith(("/usr/include/", "/usr/share/doc/")):
        return "text"
    return "binary"


Pools = dict[str, list[tuple[str, int]]]


def scan_pools(roots: Sequence[str] = ROOTS) -> Pools:
    """Regular files under ``roots`` by kind, in sorted order: (path, size).

    Only what every user may read (world-readable files, in folders every user may
    list): with "what this user may read", a run as another user than root made other
    images, with other digests, and pushed them under the same tags.
    """
    pools: Pools = {"binary": [], "text": [], "compressed": []}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if _open_to_all(os.path.join(dirpath, d)))
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode) or not 0 < st.st_size <= MAX_FILE:
                    continue
                if not st.st_mode & stat.S_IROTH:
                    continue
                pools[_classify(path)].append((path, st.st_size))
    return pools


def _open_to_all(folder: str) -> bool:
    """Whether every user may list ``folder`` and reach what is in it (not a symlink)."""
    try:
        st = os.lstat(folder)
    except OSError:
        return False
    want = stat.S_IROTH | stat.S_IXOTH
    return stat.S_ISDIR(st.st_mode) and st.st_mode & want == want


def pools_fingerprint(pools: Pools) -> str:
    h = hashlib.sha256()
    for kind in sorted(pools):
        for path, size in pools[kind]:
            h.update(f"{kind}\0{path}\0{size}\n".encode())
    return h.hexdigest()


def layer_key(spec: LayerSpec, fingerprint: str) -> str:
    text = json.dumps([GENERATOR_VERSION, asdict(spec), fingerprint], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# --- building a layer -------------------------------------------------------------------


class _Sink:
    """What tarfile writes into: hashes the tar and feeds each compressor, 1 MiB at a time."""

    def __init__(self, outputs: dict[Compression, Path]) -> None:
        self.diff = hashlib.sha256()
        self.size = 0
        self._buf = bytearray()
        self._outs: list[tuple[Compression, Any, Any, Any]] = []
        for comp, path in outputs.items():
            if comp == "gzip":
                enc: Any = zlib.compressobj(6, zlib.DEFLATED, 31)
            else:
                enc = zstandard.ZstdCompressor(level=3, write_checksum=True).compressobj()
            self._outs.append((comp, enc, hashlib.sha256(), path.open("wb")))
        self.sizes: dict[Compression, int] = dict.fromkeys(outputs, 0)

    def tell(self) -> int:
        return self.size + len(self._buf)

    def write(self, data: bytes) -> int:
        self._buf += data
        if len(self._buf) >= 1 << 20:
            self._flush()
        return len(data)

    def _emit(self, comp: Compression, sha: Any, fh: Any, out: bytes) -> None:
        if out:
            sha.update(out)
            fh.write(out)
            self.sizes[comp] += len(out)

    def _flush(self) -> None:
        data = bytes(self._buf)
        self._buf.clear()
        self.diff.update(data)
        self.size += len(data)
        for comp, enc, sha, fh in self._outs:
            self._emit(comp, sha, fh, enc.compress(data))

    def close(self) -> dict[Compression, str]:
        self._flush()
        digests: dict[Compression, str] = {}
        for comp, enc, sha, fh in self._outs:
            self._emit(comp, sha, fh, enc.flush())
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            digests[comp] = "sha256:" + sha.hexdigest()
        return digests


def _vocabulary(rng: random.Random, n: int = 3000) -> list[str]:
    letters = "etaoinshrdlucmfwypvbgkjqxz_"
    weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 2]
    return ["".join(rng.choices(letters, weights, k=rng.randint(2, 11))) for _ in range(n)]


def _gentext(rng: random.Random, vocab: list[str], size: int) -> bytes:
    words = rng.choices(vocab, k=size // 6 + 16)
    out = bytearray()
    i = 0
    while len(out) < size:
        n = rng.randint(3, 14)
        indent = " " * (4 * rng.randint(0, 3))
        out += (indent + " ".join(words[i : i + n]) + "\n").encode()
        i = (i + n) % max(1, len(words) - 16)
    return bytes(out[:size])


class _TarBuilder:
    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.dirs: set[str] = set()

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            d = "/".join(parts[:depth])
            if d not in self.dirs:
                self.dirs.add(d)
                info = tarfile.TarInfo(d)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                info.mtime = MTIME
                info.uname = info.gname = "root"
                self.tar.addfile(info)

    def add(self, name: str, size: int, mode: int, fileobj: Any) -> None:
        self._parents(name)
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = mode
        info.mtime = MTIME
        info.uname = info.gname = "root"
        self.tar.addfile(info, fileobj)


def _pick(pool: list[tuple[str, int]], seed: str, size: int) -> list[tuple[str, str, int]]:
    """(tar name, source path, size) until ``size`` bytes: a seeded order, wrapping around
    (under a new top folder) when the pool runs out."""
    chosen: list[tuple[str, str, int]] = []
    total = 0
    rnd = 0
    while total < size and pool:
        order = list(pool)
        random.Random(f"{seed}:{rnd}").shuffle(order)
        prefix = "" if rnd == 0 else f"opt/copy{rnd}/"
        for path, fsize in order:
            if total >= size:
                break
            chosen.append((prefix + path.lstrip("/"), path, fsize))
            total += fsize
        rnd += 1
    return chosen


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._view) if n < 0 else self._pos + n
        out = bytes(self._view[self._pos : end])
        self._pos += len(out)
        return out


def _build_one(
    spec: LayerSpec, comps: tuple[Compression, ...], pools: Pools, cache: Path, key: str
) -> dict[str, Any]:
    """Build one layer in every compression asked for, in one pass over its tar."""
    tmp = {c: cache / "blobs" / f".tmp-{key}.{c}" for c in comps}
    (cache / "blobs").mkdir(parents=True, exist_ok=True)
    sink = _Sink(dict(tmp))
    started = time.monotonic()
    if not spec.parts:
        sink.write(b"\0" * 1024)  # docker's empty layer: the end-of-archive marker only
    else:
        tar = tarfile.TarFile(
            fileobj=sink,  # type: ignore[arg-type]
            mode="w",
            format=tarfile.PAX_FORMAT,
            copybufsize=1 << 20,
        )
        builder = _TarBuilder(tar)
        entries: list[tuple[str, str | None, int, Kind]] = []
        for i, part in enumerate(spec.parts):
            if part.kind in pools:
                picked = _pick(pools[part.kind], f"{spec.seed}:{part.kind}:{i}", part.size)
                entries += [(name, src, size, part.kind) for name, src, size in picked]
            else:
                rng = random.Random(f"{spec.seed}:{part.kind}:{i}:sizes")
                total, n = 0, 0
                lo, hi = (4096, 65536) if part.kind == "gentext" else (256 * 1024, 4 * MB)
                while total < part.size:
                    size = min(rng.randint(lo, hi), part.size - total)
                    ext = "txt" if part.kind == "gentext" else "bin"
                    entries.append(
                        (f"srv/app/{spec.seed}/{i}/f{n:05d}.{ext}", None, size, part.kind)
                    )
                    total += size
                    n += 1
        entries.sort()
        gen = random.Random(f"{spec.seed}:content")
        vocab = _vocabulary(random.Random(f"{spec.seed}:vocab"))
        for name, src, size, kind in entries:
            if src is None:
                data = _gentext(gen, vocab, size) if kind == "gentext" else gen.randbytes(size)
                builder.add(name, size, 0o644, _BytesReader(data))
                continue
            with open(src, "rb") as fh:
                real = os.fstat(fh.fileno()).st_size
                if real != size:  # changed since the scan: keep the scanned length
                    data = fh.read(size).ljust(size, b"\0")
                    builder.add(name, size, 0o644, _BytesReader(data))
                    continue
                mode = 0o755 if os.stat(src).st_mode & 0o111 else 0o644
                builder.add(name, size, mode, fh)
        tar.close()
    digests = sink.close()
    out: dict[str, Any] = {
        "key": key,
        "seed": spec.seed,
        "diff_id": "sha256:" + sink.diff.hexdigest(),
        "uncompressed_size": sink.size,
        "build_s": round(time.monotonic() - started, 2),
        "blobs": {},
    }
    for comp in comps:
        digest = digests[comp]
        final = cache / "blobs" / digest.split(":")[1]
        os.replace(tmp[comp], final)
        out["blobs"][comp] = {"digest": digest, "size": sink.sizes[comp], "path": str(final)}
    return out


def _quiet_worker() -> None:
    """A build worker leaves Ctrl-C and SIGTERM to the harness, which stops the pool:
    forked with its handlers, each worker printed a traceback of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _build_task(args: tuple[LayerSpec, tuple[Compression, ...], Pools, str, str]) -> dict[str, Any]:
    spec, comps, pools, cache, key = args
    return _build_one(spec, comps, pools, Path(cache), key)


@dataclass(frozen=True)
class BuiltLayer:
    digest: str
    size: int
    diff_id: str
    uncompressed_size: int
    media_type: str
    path: str
    seed: str


@dataclass(frozen=True)
class BuiltImage:
    """A built image: the manifest and config bytes to push, the layers with their files."""

    name: str  # image set name
    repo: str
    tag: str
    layers: tuple[BuiltLayer, ...]
    config: bytes = field(repr=False)
    config_media_type: str
    manifest: bytes = field(repr=False)
    manifest_media_type: str

    @property
    def manifest_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    @property
    def compressed_size(self) -> int:
        return sum(x.size for x in self.layers)

    @property
    def uncompressed_size(self) -> int:
        return sum(x.uncompressed_size for x in self.layers)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ref": f"{self.repo}:{self.tag}",
            "manifest_digest": self.manifest_digest,
            "layers": len(self.layers),
            "compressed_bytes": self.compressed_size,
            "uncompressed_bytes": self.uncompressed_size,
            "largest_layer_bytes": max(x.size for x in self.layers),
        }


def _cached_layer(cache: Path, key: str) -> dict[str, Any] | None:
    """The record of a layer built before, with every blob file there and of its size;
    None when anything is missing, truncated or unreadable (the layer is built again).
    Blob paths are found under ``cache``, not taken from the record, so that a moved or
    copied cache reads its own files."""
    try:
        meta: dict[str, Any] = json.loads((cache / "layers" / f"{key}.json").read_text())
        for blob in meta["blobs"].values():
            path = cache / "blobs" / blob["digest"].split(":")[1]
            if path.stat().st_size != blob["size"]:
                return None
            blob["path"] = str(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return meta


def _remove_partial_builds(cache: Path) -> None:
    """Blob files an interrupted build left half-written (their names start ``.tmp-``)."""
    for partial in (cache / "blobs").glob(".tmp-*"):
        partial.unlink(missing_ok=True)


def build_layers(
    specs: Iterable[ImageSpec], cache: Path, *, jobs: int | None = None, log: Any = print
) -> tuple[dict[tuple[str, Compression], dict[str, Any]], str]:
    """Make sure every layer of ``specs`` exists under ``cache``; return their records by
    (layer key, compression) and the file pools' fingerprint. Missing layers are built in
    ``jobs`` processes."""
    specs = list(specs)
    started = time.monotonic()
    pools = scan_pools()
    fingerprint = pools_fingerprint(pools)
    sizes = ", ".join(f"{k} {sum(s for _, s in v) / MB:.0f} MB" for k, v in pools.items())
    log(f"file pools: {sizes} ({time.monotonic() - started:.1f} s), fingerprint {fingerprint[:12]}")
    wanted: dict[str, tuple[LayerSpec, set[Compression]]] = {}
    for image in specs:
        for layer in image.layers:
            key = layer_key(layer, fingerprint)
            wanted.setdefault(key, (layer, set()))[1].add(image.compression)
    records: dict[tuple[str, Compression], dict[str, Any]] = {}
    tasks = []
    _remove_partial_builds(cache)
    for key, (layer, comps) in wanted.items():
        meta = _cached_layer(cache, key)
        if meta is not None and not all(c in meta["blobs"] for c in comps):
            comps = comps | set(meta["blobs"])
            meta = None
        if meta is None:
            tasks.append((layer, tuple(sorted(comps)), key))
        else:
            for c in comps:
                records[(key, c)] = meta
    if tasks:
        tasks.sort(key=lambda t: -sum(p.size for p in t[0].parts))
        total = sum(sum(p.size for p in t[0].parts) for t in tasks) / MB
        log(f"building {len(tasks)} layers ({total:.0f} MB of tar, zlib -6 / zstd -3) ...")
        (cache / "layers").mkdir(parents=True, exist_ok=True)
        args = [(layer, comps, pools, str(cache), key) for layer, comps, key in tasks]
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(jobs or os.cpu_count() or 1, initializer=_quiet_worker) as pool:
            for meta in pool.imap_unordered(_build_task, args):
                (cache / "layers" / f"{meta['key']}.json").write_text(json.dumps(meta, indent=1))
                sizes = ", ".join(f"{c} {b['size'] / MB:.1f} MB" for c, b in meta["blobs"].items())
                log(
                    f"  layer {meta['seed']}: tar {meta['uncompressed_size'] / MB:.1f} MB, "
                    f"{sizes} in {meta['build_s']} s"
                )
                for c in meta["blobs"]:
                    records[(meta["key"], c)] = meta
        log(f"built in {time.monotonic() - started:.0f} s")
    return {(key, c): records[(key, c)] for key, (_, cs) in wanted.items() for c in cs}, fingerprint


def _json(obj: Any) -> bytes:
    return json.dumps(obj, indent=3).encode()


def build_manifests(
    name: str,
    specs: Sequence[ImageSpec],
    records: dict[tuple[str, Compression], dict[str, Any]],
    fingerprint: str,
) -> list[BuiltImage]:
    """Config and manifest for each spec of one image set, from the built layers."""
    images = []
    for spec in specs:
        layers = []
        for layer in spec.layers:
            meta = records[(layer_key(layer, fingerprint), spec.compression)]
            blob = meta["blobs"][spec.compression]
            layers.append(
                BuiltLayer(
                    digest=blob["digest"],
                    size=blob["size"],
                    diff_id=meta["diff_id"],
                    uncompressed_size=meta["uncompressed_size"],
                    media_type=MEDIA[(spec.kind, spec.compression)],
                    path=blob["path"],
                    seed=meta["seed"],
                )
            )
        config = _json(
            {
                "created": "2024-01-01T00:00:00Z",
                "architecture": "amd64",
                "os": "linux",
                "config": {
                    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                    "Cmd": ["/bin/sh"],
                    "WorkingDir": "/",
                },
                "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]},
                "history": [
                    {"created": "2024-01-01T00:00:00Z", "created_by": f"COPY {x.seed} /"}
                    for x in layers
                ],
            }
        )
        cfg_type = OCI_CONFIG if spec.kind == "oci" else DOCKER_CONFIG
        man_type = OCI_MANIFEST if spec.kind == "oci" else DOCKER_MANIFEST
        manifest = _json(
            {
                "schemaVersion": 2,
                "mediaType": man_type,
                "config": {
                    "mediaType": cfg_type,
                    "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                    "size": len(config),
                },
                "layers": [
                    {"mediaType": x.media_type, "digest": x.digest, "size": x.size} for x in layers
                ],
            }
        )
        images.append(
            BuiltImage(
                name, spec.repo, spec.tag, tuple(layers), config, cfg_type, manifest, man_type
            )
        )
    return images
