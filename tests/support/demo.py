"""A local registry with one generated image, for trying imagec-pipe without internet.

    python -m tests.support.demo [--seconds N]

Starts the distribution registry (``docker-registry``) on 127.0.0.1, pushes a small
generated image as ``demo/app:1.0`` (an OCI index for linux/amd64 and linux/arm64),
prints the reference to pull, and serves until Ctrl-C (or ``--seconds`` pass).
"""

from __future__ import annotations

import argparse
import sys
import time

from . import images
from .registry import RegistryStartError, run_registry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.demo", description=__doc__)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    args = parser.parse_args(argv)
    try:
        with run_registry() as server:
            server.push("demo/app", images.sample_index("demo", layer_size=4 * 1024 * 1024), "1.0")
            print(
                f"registry running; pull with:\n  imagec-pipe pull {server.ref('demo/app', '1.0')}"
            )
            print("Ctrl-C stops it.", flush=True)
            deadline = None if args.seconds is None else time.monotonic() + args.seconds
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5)
    except RegistryStartError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
