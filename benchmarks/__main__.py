"""``python -m benchmarks``: time imagec-pipe against its peers on a local registry.

    python -m benchmarks                       # every image and scenario, 3 runs
    python -m benchmarks --quick               # small + app, 1 run, single pulls + primitives
    python -m benchmarks --images app,big --runs 5 --tools ours,skopeo-oci
    python -m benchmarks --scenarios concurrent,throttled

Starts the CNCF registry on 127.0.0.1 (storage kept in benchmarks/.cache/registry), builds
and pushes the image set once (benchmarks/.cache, keyed by a hash of the generator's
parameters and the source files), measures the primitives and the floor of each image,
then runs every scenario cold (fresh output folder; page cache dropped where permitted,
the tools' own code loaded back so that only the image data is cold), the tools
interleaved, each run under a timeout. Writes RESULTS.md and RESULTS.json (``--out``) and
prints the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import importlib.metadata
import json
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import _peers, _primitives, _profile, _report, _targets
from ._images import BuiltImage
from ._measure import RunResult, drop_caches, proc_write_bytes, run_measured
from ._setup import CACHE, REPO_ROOT, prepare_images, registry, run_proxy

ALL_IMAGES = ("small", "app", "big", "app-zstd", "many")
ALL_SCENARIOS = ("primitives", "single", "concurrent", "throttled", "profile")
DEFAULT_SCENARIOS = ("primitives", "single", "concurrent", "throttled")
ALL_TOOLS = (
    "ours",
    "ours-processes",
    "naive",
    "ctools",
    "skopeo-oci",
    "skopeo-dir",
    "skopeo-umoci",
)
THROTTLED_TOOLS = ("ours", "ours-processes", "naive", "skopeo-oci", "skopeo-dir")


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _csv(text: str, allowed: Sequence[str], what: str) -> list[str]:
    """The names in ``text``, each once, in the order given. Raises ValueError (a usage
    error) for an unknown name or none at all: an empty list once ran the defaults."""
    items = list(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    unknown = [x for x in items if x not in allowed]
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    if not items:
        raise ValueError(f"no {what} given (choose from {', '.join(allowed)})")
    return items


def _number(kind: type[int] | type[float], least: float, *, above: bool) -> Callable[[str], Any]:
    """An argparse type: a number at least ``least``, or above it when ``above``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):  # nan passed every comparison, inf never timed out
            raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
        if value < least or (above and value == least):
            raise argparse.ArgumentTypeError(
                f"must be {'above' if above else 'at least'} {least:g}, not {text}"
            )
        return value

    return parse


def _out_paths(out: Path) -> tuple[Path, Path]:
    """(Markdown, JSON) report paths for ``--out``, checked before the run, so that a bad
    path is not found only when a run of many minutes has nothing to write to. Raises
    ValueError (a usage error)."""
    if out.suffix == ".json":
        raise ValueError(f"--out names the Markdown report; its JSON goes beside it: {out}")
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file name in it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot make its folder: {exc}") from exc
    if not os.access(out.parent, os.W_OK):
        raise ValueError(f"--out {out}: its folder is not writable")
    return out, out.with_suffix(".json")


def _write_atomically(path: Path, text: str) -> None:
    """An interrupted write leaves the previous report whole."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


class _Terminated(BaseException):
    """SIGTERM (timeout(1), a closing terminal session): unwinds like Ctrl-C, so that the
    registry and the tool being timed are stopped, not left running. Not an Exception:
    the handler that keeps one failing scenario from losing the others must let it by."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


class RegistryGone(RuntimeError):
    """The registry exited during the run: every run after it would fail to connect
    (and its CPU could not be read), so the run stops there, failed."""


class _HarnessBusy(RuntimeError):
    """Another harness run holds ``benchmarks/.cache``."""


def _machine() -> dict[str, Any]:
    def first(path: str, key: str) -> str:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line[len(key) :].lstrip(" \t:=").strip().strip('"')
        except OSError:
            pass
        return "?"

    def version(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "not installed"
        return (out.stdout or out.stderr).strip().splitlines()[0] if out.returncode == 0 else "?"

    CACHE.mkdir(parents=True, exist_ok=True)  # on a fresh clone: df needs it to exist
    df = subprocess.run(
        ["df", "-T", str(CACHE)], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    import isal
    import zstandard

    return {
        "nproc": os.cpu_count(),
        "cpu": first("/proc/cpuinfo", "model name"),
        "memory": first("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(),
        "os": first("/etc/os-release", "PRETTY_NAME="),
        "python": platform.python_version(),
        "filesystem": df[-1].split()[1] if len(df) > 1 else "?",
        "registry": version(["docker-registry", "--version"]),
        "skopeo": version(["skopeo", "--version"]),
        "umoci": version(["umoci", "--version"]),
        "isal": isal.__version__,
        "zlib-ng": _package_version("zlib-ng"),
        "zstandard": zstandard.__version__,
    }


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _summary_line(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("event") == "summary":
                return obj
    return None


class Bench:
    """One harness run: the registry, the images, the options and the results so far."""

    def __init__(self, args: argparse.Namespace, server: Any, built: dict[str, list[BuiltImage]]):
        self.args = args
        self.server = server
        self.built = built
        self.work = CACHE / "runs"
        self.work.mkdir(parents=True, exist_ok=True)
        # Whether every run (the primitives' too) starts with the page cache dropped:
        # tried once, here, so that no part of the run is cold and another warm.
        self.drop = not args.no_drop_caches and drop_caches()
        if not args.no_drop_caches and not self.drop:
            _log("cannot drop the page cache (not root?): every run is warm-cache")
        self.results: dict[str, Any] = {}
        # Start-up timings (wall, CPU) of every startup() call of the run, by result key.
        self._startups: dict[str, list[tuple[float, float]]] = {}
        # Python tools run with their bytecode cached, as after ``pip install`` (which
        # compiles it): the cache lives under .cache/, so the checkout stays clean.
        self.env = {
            key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"
        }
        self.env.update(PYTHONPATH=str(REPO_ROOT), PYTHONPYCACHEPREFIX=str(CACHE / "pycache"))

    def check_registry(self) -> None:
        """Raise ``RegistryGone`` if the registry is no longer running."""
        code = self.server.process.poll()
        if code is not None:
            raise RegistryGone(
                f"the registry (pid {self.server.process.pid}) exited with status {code} "
                "during the run; its log is in benchmarks/.cache/registry"
            )

    def _timeout(self, image: BuiltImage) -> float:
        if self.args.timeout:
            return float(self.args.timeout)
        return 60.0 + image.compressed_size / 1e6 * 0.5

    def _prepare(self, out: Path, warm: Sequence[str]) -> None:
        shutil.rmtree(out, ignore_errors=True)
        if self.drop:
            drop_caches()
        else:
            os.sync()
        if warm:
            subprocess.run(list(warm), cwd=REPO_ROOT, env=self.env, capture_output=True, timeout=60)

    def run_tool(
        self,
        label: str,
        argv: list[str],
        out: Path,
        warm: Sequence[str],
        timeout: float,
    ) -> RunResult:
        self._prepare(out, warm)
        tool = _peers.TOOLS.get(label)
        try:
            result = run_measured(
                label,
                argv,
                timeout=timeout,
                registry_pid=self.server.process.pid,
                cwd=REPO_ROOT,
                env={**self.env, **dict(tool.env if tool else ())},
            )
        finally:  # an interrupted run leaves no store of hundreds of MB behind
            shutil.rmtree(out, ignore_errors=True)
        self.check_registry()
        summary = _summary_line(result.stdout)
        if summary is not None:
            result.extra["summary"] = summary
        status = (
            "ok" if result.ok else ("TIMEOUT" if result.timed_out else f"rc={result.returncode}")
        )
        _log(
            f"  {label:<14} {result.wall_s:7.2f} s wall {result.cpu_s:7.2f} s cpu "
            f"{result.peak_rss / 1e6:7.0f} MB  {status}"
        )
        if not result.ok:
            _log("    " + result.stderr_tail.replace("\n", "\n    ")[-1500:])
        return result

    # -- scenarios --

    def startup(self, repeats: int = 5) -> None:
        """Seconds from exec to ready, code warm: ours without a pull (``--version``), what
        every CLI run of ours pays before its first request and the floor does not; and
        the fixed stack alone (``import trio, httpx``, wall and CPU), the least any
        program built on it pays first (see _targets).

        Called at the start of the run and again at its end; each call adds ``repeats``
        timings. The medians are reported; the targets' bound takes the stack's least
        (``stack_startup_least_s``): a lower bound must not rest on a slow moment of the
        machine, and one at the start of a run once made ours look 60 ms slower than a
        whole pull of ours took.
        """
        ours = [_peers.PYTHON, "-m", "pipeline._cli", "--version"]
        stack = [_peers.PYTHON, "-c", "import trio, httpx"]
        for argv, key in ((ours, "startup_s"), (stack, "stack_startup_s")):
            subprocess.run(argv, cwd=REPO_ROOT, env=self.env, capture_output=True, timeout=60)
            samples = self._startups.setdefault(key, [])
            for _ in range(repeats):
                started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
                subprocess.run(argv, cwd=REPO_ROOT, env=self.env, capture_output=True, timeout=60)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                samples.append((time.perf_counter() - started, cpu))
            stem = key.removesuffix("_s")
            self.results[key] = statistics.median(wall for wall, _ in samples)
            self.results[f"{stem}_cpu_s"] = statistics.median(cpu for _, cpu in samples)
            self.results[f"{stem}_least_s"] = min(wall for wall, _ in samples)
            self.results[f"{stem}_least_cpu_s"] = min(cpu for _, cpu in samples)
        _log(
            f"start-up: ours (--version) {self.results['startup_s']:.2f} s, "
            f"import trio, httpx {self.results['stack_startup_s']:.2f} s "
            f"(least {self.results['stack_startup_least_s']:.2f} s)"
        )

    def primitives(self, names: Sequence[str]) -> None:
        self.startup()
        cores = os.cpu_count() or 1
        out: dict[str, Any] = {}
        for name in names:
            image = self.built[name][0]
            _log(f"primitives on {name} ...")
            prims = _primitives.measure_image(
                image, self.server.url, self.work, drop=self.drop, cores=cores
            )
            prims["floor"] = _primitives.floor_of(prims, cores)
            f = prims["floor"]
            _log(
                f"  floor {f['floor_s']:.2f} s ({f['bound_by']}), primitives' CPU "
                f"{f['cpu_sum_s']:.2f} s; "
                + ", ".join(f"{k} {v:.0f} MB/s" for k, v in f["mb_s"].items() if v)
                + f"; {cores} cores hash and inflate x{_targets.compute_scaling(prims):.2f}"
                " as fast as one"
            )
            out[name] = prims
        self.results["primitives"] = out

    def single(self, names: Sequence[str], tools: Sequence[str]) -> None:
        out: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for name in names:
            image = self.built[name][0]
            ref = f"{self.server.host}/{image.repo}:{image.tag}"
            _log(f"single pull of {name} ({image.compressed_size / 1e6:.0f} MB gz) ...")
            zstd = image.layers[0].media_type.endswith("zstd")
            usable = [t for t in tools if _peers.TOOLS[t].zstd or not zstd]
            for t in set(tools) - set(usable):
                _log(f"  skipping {t} on {name}: it cannot handle zstd layers")
            runs: dict[str, list[dict[str, Any]]] = {t: [] for t in usable}
            for r in range(self.args.runs):
                order = list(usable[r % len(usable) :]) + list(usable[: r % len(usable)])
                for tool_name in order:
                    tool = _peers.TOOLS[tool_name]
                    dest = self.work / tool_name
                    result = self.run_tool(
                        tool_name, tool.command(ref, dest), dest, tool.warm, self._timeout(image)
                    )
                    runs[tool_name].append(result.as_json())
            out[name] = runs
        self.results["single"] = out

    def concurrent(self) -> None:
        fleet = self.built["fleet"]
        pulls = [x for x in fleet if x.tag != "union"]
        union = next(x for x in fleet if x.tag == "union")
        unique_layers = {x.digest: x.size for img in pulls for x in img.layers}
        unique = {
            "layer_bytes": sum(unique_layers.values()),
            "config_bytes": sum(len(x.config) for x in pulls),
            "manifest_bytes": sum(len(x.manifest) for x in pulls),
        }
        assert set(unique_layers) == {x.digest for x in union.layers}
        _log(
            f"8 concurrent pulls sharing layers: {len(unique_layers)} unique layers, "
            f"{unique['layer_bytes'] / 1e6:.0f} MB (naive sum "
            f"{sum(x.compressed_size for x in pulls) / 1e6:.0f} MB) ..."
        )
        runs: dict[str, list[dict[str, Any]]] = {}
        with run_proxy(self.server.host) as proxy:
            eight = [f"{proxy.host}/{x.repo}:{x.tag}" for x in pulls]
            variants: dict[str, list[str]] = {
                "8 concurrent": eight,
                "union once": [f"{proxy.host}/{union.repo}:{union.tag}"],
                "8 concurrent, processes": ["--layer-workers", "processes", *eight],
                "8 concurrent, a download budget each": ["--own-downloads", *eight],
            }
            for r in range(self.args.runs):
                order = list(variants)[r % len(variants) :] + list(variants)[: r % len(variants)]
                for variant in order:
                    dest = self.work / "concurrent"
                    argv = [sys.executable, "-m", "benchmarks._libpull", "--store", str(dest)]
                    self._prepare(dest, _peers.TOOLS["ours"].warm)
                    proxy.reset()
                    wchar0 = proc_write_bytes(self.server.process.pid)
                    try:
                        result = run_measured(
                            variant,
                            argv + variants[variant],
                            timeout=self._timeout(union) * 2,
                            registry_pid=self.server.process.pid,
                            cwd=REPO_ROOT,
                            env=self.env,
                        )
                    finally:
                        shutil.rmtree(dest, ignore_errors=True)
                    self.check_registry()
                    gets: dict[str, int] = {d: proxy.blob_gets(d) for d in unique_layers}
                    result.extra |= {
                        "bytes_to_client": proxy.bytes_to_client,
                        "registry_wchar": proc_write_bytes(self.server.process.pid) - wchar0,
                        "blob_gets_max": max(gets.values()),
                        "blob_gets_total": sum(gets.values()),
                        "summary": _summary_line(result.stdout),
                    }
                    status = "ok" if result.ok else f"FAILED rc={result.returncode}"
                    _log(
                        f"  {variant:<14} {result.wall_s:7.2f} s wall, "
                        f"{proxy.bytes_to_client / 1e6:.1f} MB through the proxy, "
                        f"max {result.extra['blob_gets_max']} GET per layer  {status}"
                    )
                    if not result.ok:
                        _log("    " + result.stderr_tail.replace("\n", "\n    ")[-1500:])
                    runs.setdefault(variant, []).append(result.as_json())
        self.results["concurrent"] = {"unique": unique, "runs": runs}

    def throttled(self, tools: Sequence[str]) -> None:
        image = self.built["app"][0]
        rate = self.args.throttle * 1e6
        latency = self.args.latency / 1000
        transfer = image.compressed_size / rate
        _log(
            f"throttled pull of app: {self.args.throttle:.0f} MB/s, {self.args.latency:.0f} ms "
            f"per request; the transfer alone takes {transfer:.2f} s ..."
        )
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
        with run_proxy(self.server.host, rate=rate, latency=latency) as proxy:
            ref = f"{proxy.host}/{image.repo}:{image.tag}"
            for r in range(self.args.runs):
                order = list(tools[r % len(tools) :]) + list(tools[: r % len(tools)])
                for tool_name in order:
                    tool = _peers.TOOLS[tool_name]
                    dest = self.work / tool_name
                    proxy.reset()
                    result = self.run_tool(
                        tool_name,
                        tool.command(ref, dest),
                        dest,
                        tool.warm,
                        self._timeout(image) + 2 * transfer,
                    )
                    result.extra["bytes_to_client"] = proxy.bytes_to_client
                    runs[tool_name].append(result.as_json())
        self.results["throttled"] = {
            "rate_mb_s": self.args.throttle,
            "latency_ms": self.args.latency,
            "transfer_s": transfer,
            "runs": runs,
        }

    def profile(self, names: Sequence[str]) -> None:
        if not _profile.available():
            why = "py-spy is not installed (pip install py-spy)"
            _log(f"skipping profile: {why}")
            self.results.setdefault("skipped", {})["profile"] = why
            return
        out: dict[str, Any] = {}
        for name in names:
            image = self.built[name][0]
            ref = f"{self.server.host}/{image.repo}:{image.tag}"
            dest = self.work / "profile"
            raw = CACHE / f"profile-{name}.txt"
            _log(f"profiling ours on {name} (py-spy, registry files warm) ...")
            prof = _profile.profile_pull(
                _peers.TOOLS["ours"].command(ref, dest), dest, raw, cwd=REPO_ROOT, env=self.env
            )
            prof["raw"] = str(raw)
            _log(
                f"  {prof['wall_s_profiled']:.2f} s profiled, {prof['busy_s']:.2f} s busy: "
                + ", ".join(f"{k} {v:.2f} s" for k, v in prof["threads"][:5])
            )
            out[name] = prof
        self.results["profile"] = out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time imagec-pipe against skopeo, umoci and a naive baseline.",
    )
    parser.add_argument("--images", default=None, help="comma-separated (default: all)")
    parser.add_argument(
        "--scenarios",
        default=None,
        help=f"comma-separated, of {','.join(ALL_SCENARIOS)} (profile: opt-in, needs py-spy; "
        f"default: {','.join(DEFAULT_SCENARIOS)})",
    )
    parser.add_argument("--tools", default=",".join(ALL_TOOLS), help="comma-separated")
    parser.add_argument(
        "--ours-variant",
        action="append",
        default=[],
        metavar="LABEL=[ENV=VALUE ...] [OPTIONS ...]",
        help="also time ours with this environment / these pull options, as tool LABEL "
        "(repeatable), e.g. 'ours-6=--max-concurrent-downloads 6'",
    )
    parser.add_argument("--runs", type=_number(int, 1, above=False), default=None)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small + app, 1 run, primitives and single pulls (instead of those three options)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the Markdown report (its JSON beside it); default: benchmarks/RESULTS.md for"
        " a run of every image, tool and default scenario, else"
        " benchmarks/.cache/RESULTS-partial.md",
    )
    parser.add_argument(
        "--timeout", type=_number(float, 0, above=True), default=None, help="seconds per tool run"
    )
    parser.add_argument("--no-drop-caches", action="store_true")
    parser.add_argument(
        "--throttle", type=_number(float, 0, above=True), default=100.0, help="MB/s (throttled)"
    )
    parser.add_argument(
        "--latency", type=_number(float, 0, above=False), default=25.0, help="ms per request"
    )
    args = parser.parse_args(argv)
    if args.quick:
        given = [
            f"--{name}"
            for name in ("images", "runs", "scenarios")
            if getattr(args, name) is not None
        ]
        if given:
            parser.error(f"--quick sets --images, --runs and --scenarios: drop {', '.join(given)}")
        args.images, args.runs, args.scenarios = "small,app", 1, "primitives,single"
    if args.runs is None:
        args.runs = 3
    try:
        if args.images is None:
            args.images = ",".join(ALL_IMAGES)
        if args.scenarios is None:
            args.scenarios = ",".join(DEFAULT_SCENARIOS)
        images = _csv(args.images, ALL_IMAGES, "images")
        scenarios = _csv(args.scenarios, ALL_SCENARIOS, "scenarios")
        chosen_tools = _csv(args.tools, ALL_TOOLS, "tools")
        variants = [_peers.add_ours_variant(v) for v in args.ours_variant]
        out_md, out_json = _out_paths(args.out or _default_out(images, scenarios, chosen_tools))
    except ValueError as exc:
        parser.error(str(exc))
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with _only_run():
            command = "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv)
            return _run(
                args, command.strip(), images, scenarios, chosen_tools, variants, out_md, out_json
            )
    except _HarnessBusy as exc:
        _log(str(exc))
        return 1
    except KeyboardInterrupt:
        _log("interrupted: the registry and the tool being timed were stopped")
        return 130
    except _Terminated:
        _log("terminated (SIGTERM): the registry and the tool being timed were stopped")
        return 128 + signal.SIGTERM


def _default_out(images: list[str], scenarios: list[str], tools: list[str]) -> Path:
    """Where the report goes without --out: benchmarks/RESULTS.md, which README quotes, only
    for a whole run (every image and tool, the default scenarios); any other run, a
    --quick or a profile of one image, went there too and replaced the evidence."""
    whole = (
        set(images) == set(ALL_IMAGES)
        and set(tools) >= set(ALL_TOOLS)
        and set(scenarios) >= set(DEFAULT_SCENARIOS)
    )
    return Path(__file__).parent / "RESULTS.md" if whole else CACHE / "RESULTS-partial.md"


@contextlib.contextmanager
def _only_run() -> Iterator[None]:
    """Hold ``benchmarks/.cache`` for this run, and leave no output store behind in it:
    two runs at once shared the registry's folder and the tools' output folders, each
    deleting the other's."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "harness.lock").open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _HarnessBusy(
                f"another harness run is using {CACHE}: wait for it to end"
            ) from None
        try:
            yield
        finally:
            shutil.rmtree(CACHE / "runs", ignore_errors=True)


def _run(
    args: argparse.Namespace,
    command: str,
    images: list[str],
    scenarios: list[str],
    chosen_tools: list[str],
    variants: list[str],
    out_md: Path,
    out_json: Path,
) -> int:
    skipped: dict[str, str] = {}
    tools = _peers.ensure_installed(
        chosen_tools, _log, curl="primitives" in scenarios, skipped=skipped
    )
    tools[1:1] = variants  # right after ours, so they interleave with it

    needed = list(images)
    if "concurrent" in scenarios:
        needed.append("fleet")
    if "throttled" in scenarios and "app" not in needed:
        needed.append("app")
    started = time.monotonic()
    results: dict[str, Any] = {
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(),
        "runs": args.runs,
        "tools": {t: _peers.TOOLS[t].does for t in tools},
        "ours_family": ["ours", "ours-processes", *variants],
    }
    _log(f"machine: {results['machine']}")
    with registry() as server:
        _log(f"registry {server.url} (pid {server.process.pid})")
        built = prepare_images(needed, server, log=_log)
        results["images"] = {n: [x.summary() for x in built[n]] for n in needed}
        bench = Bench(args, server, built)
        steps: list[tuple[str, Callable[[], None]]] = []
        if "primitives" in scenarios:
            steps.append(("primitives", lambda: bench.primitives(images)))
        if "single" in scenarios:
            steps.append(("single", lambda: bench.single(images, tools)))
        if "concurrent" in scenarios:
            steps.append(("concurrent", bench.concurrent))
        if "throttled" in scenarios:
            steps.append(
                ("throttled", lambda: bench.throttled([t for t in THROTTLED_TOOLS if t in tools]))
            )
        if "profile" in scenarios:
            steps.append(("profile", lambda: bench.profile(images)))
        if "primitives" in scenarios:  # start-up again, at the end of the run
            steps.append(("start-up", bench.startup))
        for name, step in steps:
            try:
                step()
            except RegistryGone as exc:  # every scenario after it would fail the same way
                _log(f"scenario {name} failed: {exc}")
                bench.results.setdefault("errors", []).append(f"{name}: {exc}")
                break
            except Exception as exc:  # one scenario failing must not lose the others
                _log(f"scenario {name} failed: {exc!r}")
                bench.results.setdefault("errors", []).append(f"{name}: {exc!r}")
        results.update(bench.results)
        results["skipped"] = {**skipped, **bench.results.get("skipped", {})}
        results["page_cache"] = (
            "dropped before every run (sync; echo 3 > /proc/sys/vm/drop_caches), "
            "the tools' own code then loaded back (Python tools with their bytecode "
            "compiled, as after pip install)"
            if bench.drop
            else "NOT dropped (not permitted or --no-drop-caches): every tool ran warm"
        )
    results["harness_s"] = round(time.monotonic() - started, 1)
    results["targets"] = _targets.judge(results)
    text = _report.render(results)
    _write_atomically(out_json, json.dumps(results, indent=1, default=str) + "\n")
    _write_atomically(out_md, text)
    print(text)
    _log(f"wrote {out_md} and {out_json} in {results['harness_s']} s")
    broken = _what_failed(results)
    for line in broken:
        _log(line)
    return 1 if broken else 0


def _what_failed(results: dict[str, Any]) -> list[str]:
    """What makes the run a failure (exit 1), though its report was written: a scenario
    that raised (the registry exiting stops the run there), or ours (or a variant of
    ours) failing every run of an image. A peer failing is a result."""
    lines = [f"scenario failed: {error}" for error in results.get("errors", [])]
    for image, by_tool in results.get("single", {}).items():
        for tool in results.get("ours_family", ["ours"]):
            runs = by_tool.get(tool, [])
            if runs and not any(run["ok"] for run in runs):
                lines.append(f"{tool} failed every run of {image}: see its stderr in the JSON")
    return lines


if __name__ == "__main__":
    sys.exit(main())
