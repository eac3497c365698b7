"""The tools we time: ours and the peers a user would otherwise pick.

Each tool turns (registry host, repository, tag, an empty output folder) into one command
line. The peers' programs (skopeo, umoci, the C tools of ``ctools``) are installed with
apt on Debian as root when missing (as are the registry and curl, which the harness itself
needs); elsewhere a peer that is missing is skipped with a line saying why.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._setup import find_registry_binary

__all__ = ["TOOLS", "Tool", "add_ours_variant", "ensure_installed", "warm_up"]

REPO_ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@dataclass(frozen=True)
class Tool:
    name: str
    does: str  # what work the tool does, for the report
    binaries: tuple[str, ...]
    command: Callable[[str, Path], list[str]]  # (full reference, output folder) -> argv
    warm: tuple[str, ...]  # a cheap command that pulls the program's code into the page cache
    zstd: bool = True  # whether it can handle zstd layers at all
    env: tuple[tuple[str, str], ...] = ()  # extra environment for the run


def _ours(ref: str, out: Path) -> list[str]:
    return [PYTHON, "-m", "pipeline._cli", "pull", ref, "--store", str(out), "--json"]


def _naive(ref: str, out: Path) -> list[str]:
    return [PYTHON, "-m", "benchmarks.naive", ref, "--out", str(out)]


def _skopeo(ref: str, dest: str, *extra: str) -> list[str]:
    return [
        "skopeo",
        "--insecure-policy",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        *extra,
        f"docker://{ref}",
        dest,
    ]


def _skopeo_oci(ref: str, out: Path) -> list[str]:
    return _skopeo(ref, f"oci:{out}:bench")


def _skopeo_dir(ref: str, out: Path) -> list[str]:
    return _skopeo(ref, f"dir:{out}", "--dest-decompress")


def _skopeo_umoci(ref: str, out: Path) -> list[str]:
    copy = shlex.join(_skopeo(ref, f"oci:{out}/oci:bench"))
    unpack = shlex.join(
        ["umoci", "unpack", "--rootless", "--image", f"{out}/oci:bench", f"{out}/rootfs"]
    )
    mkdir = shlex.join(["mkdir", "-p", str(out)])
    return ["sh", "-c", f"{mkdir} && {copy} && {unpack}"]


def _ctools(ref: str, out: Path) -> list[str]:
    return ["bash", str(REPO_ROOT / "benchmarks" / "ctools.sh"), ref, str(out)]


# The Debian package of each binary a tool needs, where the names differ.
_DEBIAN_PACKAGES = {"igzip": "isal"}

_PY_WARM = (PYTHON, "-c", "import pipeline, pipeline._cli, httpx, trio, isal, zstandard")

TOOLS: dict[str, Tool] = {
    "ours": Tool("ours", "fetch + digest + inflate + diffID + store (fsync)", (), _ours, _PY_WARM),
    "ours-processes": Tool(
        "ours-processes",
        "ours with --layer-workers processes (each layer's stages in a worker process)",
        (),
        lambda ref, out: [*_ours(ref, out), "--layer-workers", "processes"],
        _PY_WARM,
    ),
    "naive": Tool(
        "naive",
        "sequential httpx: fetch + digest + zlib + diffID + write (fsync)",
        (),
        _naive,
        (PYTHON, "-c", "import benchmarks.naive"),
    ),
    "skopeo-oci": Tool(
        "skopeo-oci",
        "skopeo copy docker:// oci: (fetch + compressed digest only)",
        ("skopeo",),
        _skopeo_oci,
        ("skopeo", "--version"),
    ),
    "skopeo-dir": Tool(
        "skopeo-dir",
        "skopeo copy --dest-decompress docker:// dir: (fetch + digest + inflate + write tar)",
        ("skopeo",),
        _skopeo_dir,
        ("skopeo", "--version"),
    ),
    "skopeo-umoci": Tool(
        "skopeo-umoci",
        "skopeo copy to oci: + umoci unpack --rootless (fetch + unpack)",
        ("skopeo", "umoci"),
        _skopeo_umoci,
        ("sh", "-c", "skopeo --version && umoci --version"),
        zstd=False,  # umoci 0.4.7: "blob is not correct mediatype: ...tar+zstd"
    ),
    "ctools": Tool(
        "ctools",
        "C tools, every layer at once: curl | tee blob | openssl sha256, igzip or zstd | "
        "openssl sha256 (fetch + digest + inflate + diffID + write (fsync)); "
        "benchmarks/ctools.sh",
        ("bash", "curl", "jq", "openssl", "igzip", "zstd"),
        _ctools,
        ("sh", "-c", "curl --version && jq --version && openssl version && igzip -V && zstd -V"),
    ),
}


_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def add_ours_variant(spec: str) -> str:
    """Register ``LABEL=[ENV=VALUE ...] [pull options ...]`` as another tool: ours with
    that environment and those extra ``pull`` options (threads vs processes, download
    concurrency, chunk sizes...). Returns the label. Raises ValueError (a usage error)."""
    label, sep, rest = spec.partition("=")
    if not sep or not label:
        raise ValueError(f"--ours-variant wants LABEL=[ENV=VALUE ...] [OPTIONS ...], got {spec!r}")
    if not _LABEL.fullmatch(label):
        # The label names the folder the variant's stores go to, which each run deletes
        # first: "/tmp/x" or ".." deleted folders outside the harness's own.
        raise ValueError(
            f"--ours-variant {label!r}: a label is letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    if label in TOOLS:
        raise ValueError(f"--ours-variant {label!r}: that name is taken by another tool")
    tokens = shlex.split(rest)
    env: list[tuple[str, str]] = []
    while tokens and "=" in tokens[0] and not tokens[0].startswith("-"):
        key, _, value = tokens.pop(0).partition("=")
        env.append((key, value))
    extra = tuple(tokens)

    def command(ref: str, out: Path) -> list[str]:
        return [*_ours(ref, out), *extra]

    TOOLS[label] = Tool(
        label, f"ours with {rest or 'defaults'}", (), command, _PY_WARM, env=tuple(env)
    )
    return label


def ensure_installed(
    tools: list[str],
    log: Callable[[str], None],
    *,
    curl: bool = True,
    skipped: dict[str, str] | None = None,
) -> list[str]:
    """The subset of ``tools`` that can run here, with a line for each one skipped, and
    why in ``skipped`` (for the report).

    What the harness itself needs, the CNCF registry (and curl, for the primitives), and
    the peers' programs are installed with apt when missing, where that is
    possible (Debian, root): so that the harness is one command on a fresh machine. A
    registry or curl still missing ends the run with what to install.
    """
    packages = sorted(
        {
            _DEBIAN_PACKAGES.get(b, b)
            for t in tools
            for b in TOOLS[t].binaries
            if shutil.which(b) is None
        }
    )
    pointed = os.environ.get("IMAGEC_REGISTRY_BIN")
    if find_registry_binary() is None and not pointed:
        packages.append("docker-registry")
    if curl and shutil.which("curl") is None:
        packages.append("curl")
    if packages and os.geteuid() == 0 and Path("/etc/debian_version").exists():
        log(f"installing {' '.join(packages)} with apt-get ...")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", *packages], env=env, check=False, capture_output=True
        )
    if find_registry_binary() is None:
        raise SystemExit(
            f"IMAGEC_REGISTRY_BIN={pointed} is not an executable file"
            if pointed
            else "the benchmarks need the CNCF distribution registry: install it (Debian: "
            "apt-get install docker-registry) or set IMAGEC_REGISTRY_BIN to its binary"
        )
    if curl and shutil.which("curl") is None:
        raise SystemExit("the primitives need curl: install it (Debian: apt-get install curl)")
    usable = []
    for name in tools:
        absent = [b for b in TOOLS[name].binaries if shutil.which(b) is None]
        if absent:
            why = (
                f"{' '.join(absent)} not installed (Debian: apt-get install "
                f"{' '.join(_DEBIAN_PACKAGES.get(b, b) for b in absent)})"
            )
            log(f"skipping {name}: {why}")
            if skipped is not None:
                skipped[name] = why
        else:
            usable.append(name)
    return usable


def warm_up(tool: Tool) -> None:
    """Load the tool's program code into the page cache (after the cache was dropped), so
    that "cold" means the image data, not the interpreter or the binary."""
    subprocess.run(list(tool.warm), cwd=REPO_ROOT, check=False, capture_output=True, timeout=60)
