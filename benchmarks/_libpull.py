"""Several pulls as library calls in one process, sharing one Store (and so its LCache).

    python -m benchmarks._libpull --store DIR [--own-downloads] REF [REF ...]

By default the pulls share the Store's download budget, as docker's daemon-wide
max-concurrent-downloads is shared: together they download at most
--max-concurrent-downloads layers at once. ``--own-downloads`` gives each pull a limiter
of its own (``pull(downloads=...)``), that many layers each. Prints one JSON object: per
pull, its wall time, bytes downloaded and how many layers were downloaded, shared (waited
for another pull's download) or already there.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path
from typing import Any

import trio

import pipeline


async def _pull_all(
    refs: list[str], store_dir: Path, downloads: int, workers: str, own: bool
) -> dict[str, Any]:
    store = pipeline.Store.open(store_dir)
    options = pipeline.PullOptions(
        max_concurrent_downloads=downloads,
        layer_workers=workers,  # type: ignore[arg-type]
    )
    pulls: list[dict[str, Any]] = []
    started = time.perf_counter()

    async def one(ref: str) -> None:
        t = time.perf_counter()
        limiter = trio.CapacityLimiter(downloads) if own else None
        result = await pipeline.pull(ref, store=store, options=options, downloads=limiter)
        statuses = collections.Counter(layer.status for layer in result.layers)
        pulls.append(
            {
                "ref": ref,
                "seconds": round(time.perf_counter() - t, 3),
                "bytes_downloaded": result.bytes_downloaded,
                "layers": dict(statuses),
                "manifest_digest": str(result.manifest_digest),
            }
        )

    async with trio.open_nursery() as nursery:
        for ref in refs:
            nursery.start_soon(one, ref)
    return {
        "event": "summary",
        "seconds": round(time.perf_counter() - started, 3),
        "bytes_downloaded": sum(p["bytes_downloaded"] for p in pulls),
        "pulls": sorted(pulls, key=lambda p: str(p["ref"])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._libpull")
    parser.add_argument("refs", nargs="+")
    parser.add_argument("--store", required=True, type=Path)
    parser.add_argument("--max-concurrent-downloads", type=int, default=3)
    parser.add_argument("--layer-workers", choices=("threads", "processes"), default="threads")
    parser.add_argument("--own-downloads", action="store_true")
    args = parser.parse_args(argv)
    out = trio.run(
        _pull_all,
        args.refs,
        args.store,
        args.max_concurrent_downloads,
        args.layer_workers,
        args.own_downloads,
    )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
