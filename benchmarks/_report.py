"""RESULTS.md from the harness's results: medians, ratios measured in the same run, floors.

Every ratio is ``ours ÷ tool`` on median wall times of runs done in the same harness run,
interleaved; below 1.0 means we are faster. Medians are over successful runs only; the
count of successful runs is shown next to each.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["render", "stats"]

MB = 1e6


def stats(runs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Medians of the successful runs; None when none succeeded."""
    ok = [r for r in runs if r.get("ok")]
    if not ok:
        return None
    walls = [r["wall_s"] for r in ok]
    median_wall = statistics.median(walls)
    closest = min(ok, key=lambda r: abs(r["wall_s"] - median_wall))
    return {
        "n": len(ok),
        "of": len(runs),
        "wall": median_wall,
        "min": min(walls),
        "max": max(walls),
        "cpu": statistics.median(r["cpu_s"] for r in ok),
        "cpu_min": min(r["cpu_s"] for r in ok),
        "registry_cpu": statistics.median(r["registry_cpu_s"] for r in ok),
        "harness_cpu": statistics.median(r.get("harness_cpu_s", 0.0) for r in ok),
        "peak_rss": statistics.median(r["peak_rss"] for r in ok),
        # runs recorded before the harness measured the machine have neither field
        "machine_busy": statistics.median(r.get("machine_busy_s", 0.0) for r in ok),
        "machine_idle": statistics.median(r.get("machine_idle_s", 0.0) for r in ok),
        "median_run": closest,
    }


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return "-"
    return f"{a / b:.2f}x"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def _image_info(results: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(results["images"][name][0])


def _failures(section: dict[str, list[dict[str, Any]]], where: str) -> list[str]:
    lines = []
    for tool, runs in section.items():
        for i, r in enumerate(runs):
            if not r.get("ok"):
                why = "timed out" if r.get("timed_out") else f"exit {r.get('returncode')}"
                tail = (r.get("stderr_tail") or "").strip().splitlines()[-3:]
                lines.append(f"- {where}, {tool}, run {i + 1}: {why}: `{' / '.join(tail)[:400]}`")
    return lines


def _ours_breakdown(summary: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (summary.get("timings") or {}).items():
        if isinstance(value, int | float):
            out[f"pull {key}"] = float(value)
    for layer in summary.get("layers") or []:
        for key, value in (layer.get("timings") or {}).items():
            if isinstance(value, int | float):
                out[f"Σ layer {key}"] = out.get(f"Σ layer {key}", 0.0) + float(value)
    return out


def _targets_section(targets: Sequence[dict[str, str]]) -> list[str]:
    """Issue 3's targets with their verdicts (judged by _targets, which explains the bound)."""
    if not targets:
        return []
    lines = [
        "## Targets",
        "",
        "Each target of issue 3 against this run. *impossible here* means the target allows "
        "less than the least any program on this stack could take on this machine: the "
        "start-up of `import trio, httpx`, then the pull's work at the primitives' one-core "
        "speeds (curl's CPU for receiving) plus the registry's own CPU spread over every "
        "core, the hashing and inflating at the speed-up the cores were measured to give it "
        "together, or the largest layer's slowest stage or the disk, whichever is longer "
        "(benchmarks/_targets.py). *not measured* means this run did not time what the "
        "target compares: the image, ours or the peer was not run, or every run of it failed.",
        "",
    ]
    rows = [
        [t["target"], t["allowed"], t["measured"], t["verdict"], t["evidence"]] for t in targets
    ]
    return [*lines, *_table(["target", "allowed", "ours", "verdict", "why"], rows), ""]


def _inflaters_section(prims: dict[str, Any]) -> list[str]:
    """Every gzip inflater installed, on each gzip image's layers: the measurement that
    ``--gzip-inflater auto``'s choice rests on, and whether it held in this run."""
    timed = {name: p for name, p in prims.items() if p.get("inflater_s")}
    if not timed:
        return []
    names = list(next(iter(timed.values()))["inflater_s"])
    rows, lagging = [], []
    for image, p in timed.items():
        out_mb = sum(x["uncompressed_size"] for x in p["layers"]) / MB
        seconds = p["inflater_s"]
        rows.append(
            [image]
            + [_f(out_mb / seconds[n], 0) if seconds.get(n) else "-" for n in names]
            + [p["fastest_inflater"]]
        )
        if p["fastest_inflater"] != p["inflater"]:
            lagging.append(image)
    verdict = (
        f"`auto` uses {names[0]}, the fastest on every image here."
        if not lagging
        else f"`auto` uses {names[0]}, which was not the fastest on: {', '.join(lagging)}."
    )
    return [
        "### Gzip inflaters",
        "",
        "MB/s of output on one core, each image's gzip layers in memory, the fastest of three "
        "turns each, the inflaters taking turns. " + verdict,
        "",
        *_table(["image", *(f"{n} MB/s out" for n in names), "fastest"], rows),
        "",
    ]


def render(results: dict[str, Any]) -> str:
    lines: list[str] = ["# imagec-pipe benchmark results", ""]
    m = results["machine"]

    def installed(name: str, version: str) -> str:
        # skopeo's and umoci's version lines name them; "not installed" alone did not
        return f"{name} not installed" if version == "not installed" else version

    lines += [
        f"Run on {results['date']} with `{results['command']}` "
        f"({results.get('harness_s', '?')} s in all).",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['memory']} memory, kernel {m['kernel']}, "
        f"{m['os']}, Python {m['python']}, store filesystem {m['filesystem']}; "
        f"{m['registry']}; {installed('skopeo', m['skopeo'])}; "
        f"{installed('umoci', m['umoci'])}; "
        f"isal {m['isal']}, "
        f"zlib-ng {m.get('zlib-ng', 'not recorded')}, zstandard {m['zstandard']}.",
        "",
        f"Cold runs: fresh output folder each time; page cache {results.get('page_cache', '?')}. "
        f"{results['runs']} runs per tool, interleaved (the order rotates each round); "
        "medians of the successful runs. CPU is user+system of the tool's whole process "
        "tree: what wait4 counted of the processes it reaped, or the sum of /proc samples "
        "of every process of its session, taken every 50 ms, when that is larger (worker "
        "processes that were never reaped; the samples miss each one's last 50 ms at "
        "most); registry CPU is the registry's own, separately; peak memory is the peak of "
        "the tree's summed RSS, sampled every 50 ms (a run shorter than that has one "
        "sample). MB = 10^6 bytes. Ratios are ours ÷ tool (below 1.00x we are faster).",
        "",
        "Tools:",
    ]
    lines += [f"- `{k}`: {v}" for k, v in results.get("tools", {}).items()]
    lines.append("")
    skipped = results.get("skipped") or {}
    if skipped:
        lines += ["Not run here:", *(f"- `{k}`: {v}" for k, v in skipped.items()), ""]

    lines += ["## Images", ""]
    rows = []
    for name, imgs in results.get("images", {}).items():
        for img in imgs:
            rows.append(
                [
                    name,
                    f"`{img['ref']}`",
                    str(img["layers"]),
                    _f(img["compressed_bytes"] / MB, 1),
                    _f(img["uncompressed_bytes"] / MB, 1),
                    _f(img["largest_layer_bytes"] / MB, 1),
                ]
            )
    lines += _table(["set", "ref", "layers", "MB gz", "MB tar", "largest layer MB gz"], rows)
    lines.append("")

    prims = results.get("primitives", {})
    single = results.get("single", {})
    lines += _targets_section(results.get("targets", []))
    if single:
        lines += ["## Headline: ours ÷ each tool (median wall, same run)", ""]
        peers = [t for t in results.get("tools", {}) if t != "ours"]
        header = [
            "image",
            "ours wall s",
            "in-process s",
            *[f"÷ {p}" for p in peers],
            "÷ floor",
            "in-process ÷ floor",
            "CPU ÷ primitives",
            "peak RSS MB",
        ]
        rows = []
        for name, tools in single.items():
            ours = stats(tools.get("ours", []))
            inproc = None
            if ours:
                summary = ours["median_run"].get("extra", {}).get("summary") or {}
                inproc = (summary.get("timings") or {}).get("total_s")
            ran = bool(tools.get("ours"))
            row = [name, _f(ours["wall"]) if ours else "failed" if ran else "not run", _f(inproc)]
            for p in peers:
                st = stats(tools.get(p, []))
                row.append(_ratio(ours["wall"] if ours else None, st["wall"] if st else None))
            floor = prims.get(name, {}).get("floor")
            row.append(_ratio(ours["wall"] if ours else None, floor["floor_s"] if floor else None))
            row.append(_ratio(inproc, floor["floor_s"] if floor else None))
            row.append(_ratio(ours["cpu"] if ours else None, floor["cpu_sum_s"] if floor else None))
            row.append(_f(ours["peak_rss"] / MB, 0) if ours else "-")
            rows.append(row)
        lines += _table(header, rows)
        lines.append("")

        lines += ["## Single pulls", ""]
        for name, tools in single.items():
            info = _image_info(results, name)
            ours = stats(tools.get("ours", []))
            lines += [
                f"### {name}: {info['layers']} layers, {info['compressed_bytes'] / MB:.0f} MB gz, "
                f"{info['uncompressed_bytes'] / MB:.0f} MB tar",
                "",
            ]
            rows = []
            for tool, runs in tools.items():
                st = stats(runs)
                if st is None:
                    rows.append([tool, "failed", "", "", "", "", "", f"0/{len(runs)}", ""])
                    continue
                rows.append(
                    [
                        tool,
                        f"{st['wall']:.2f} ({st['min']:.2f}-{st['max']:.2f})",
                        _f(st["cpu"]),
                        _f(st["registry_cpu"]),
                        _f(info["compressed_bytes"] / MB / st["wall"], 0),
                        _f(info["uncompressed_bytes"] / MB / st["wall"], 0),
                        _f(st["peak_rss"] / MB, 0),
                        f"{st['n']}/{st['of']}",
                        _ratio(ours["wall"] if ours else None, st["wall"]),
                    ]
                )
            lines += _table(
                [
                    "tool",
                    "wall s (min-max)",
                    "CPU s",
                    "registry CPU s",
                    "MB/s gz",
                    "MB/s tar",
                    "peak RSS MB",
                    "ok",
                    "ours ÷ tool",
                ],
                rows,
            )
            lines.append("")
            if ours and ours["median_run"].get("extra", {}).get("summary"):
                breakdown = _ours_breakdown(ours["median_run"]["extra"]["summary"])
                if breakdown:
                    lines.append(
                        "Ours, where the time went (median run, from `--json`; layer stages "
                        "overlap and are summed over layers): "
                        + ", ".join(f"{k} {v:.2f} s" for k, v in breakdown.items())
                    )
                    lines.append("")

    if prims:
        lines += [
            "## Primitives and floors",
            "",
            "One core, 1 MiB buffers, each image's own layers (in memory), hashing and "
            "inflating timed in the CPU time of their thread, the least of three turns; "
            "download = a "
            "raw GET of every blob from the registry, cache as for the tools. The floor is "
            "the largest of: the primitives' CPU (download with httpx + sha256 + inflate + "
            "sha256 of the tar + write) ÷ cores, the slowest stage of the largest layer, and "
            "write+fsync of all bytes. It counts neither the registry's own CPU (on the same "
            "cores; the tables above show it per run) nor a program's start-up"
            + (
                f": ours takes {results['startup_s']:.2f} s to start "
                "(`python -m pipeline._cli --version`, code warm, median of 10 at the start "
                "and the end of the run), which every "
                "wall time of ours includes and its in-process time does not"
                if results.get("startup_s") is not None
                else ""
            )
            + (
                f"; the fixed stack alone (`python -c 'import trio, httpx'`) takes "
                f"{results['stack_startup_s']:.2f} s"
                + (
                    f" (at least {results['stack_startup_least_s']:.2f} s: the targets' bound "
                    "takes that)."
                    if results.get("stack_startup_least_s") is not None
                    else "."
                )
                if results.get("stack_startup_s") is not None
                else "."
            ),
            "",
        ]
        rows = []
        for name, p in prims.items():
            f = p["floor"]
            mbs = f["mb_s"]
            rows.append(
                [
                    name,
                    _f(f["floor_s"]),
                    f["bound_by"],
                    _f(f["cpu_sum_s"]),
                    _f(mbs["sha256"], 0),
                    f"{_f(mbs['inflate (out)'], 0)} ({p.get('fastest_inflater', p['inflater'])})",
                    _f(mbs["sha256 tar"], 0),
                    _f(mbs["write+fsync"], 0),
                    _f(mbs["download httpx"], 0),
                    _f(mbs["download curl"], 0),
                ]
            )
        lines += _table(
            [
                "image",
                "floor s",
                "bound by",
                "primitives CPU s",
                "sha256 MB/s",
                "inflate MB/s out",
                "sha256 tar MB/s",
                "write+fsync MB/s",
                "httpx GET MB/s",
                "curl GET MB/s",
            ],
            rows,
        )
        lines.append("")
        lines += _inflaters_section(prims)

    conc = results.get("concurrent")
    if conc:
        u = conc["unique"]
        unique_total = u["layer_bytes"] + u["config_bytes"] + u["manifest_bytes"]
        lines += [
            "## 8 concurrent pulls sharing layers (library calls, one process, one Store)",
            "",
            f"8 images `bench/fleet:v1..v8` sharing 3-4 base layers; unique bytes "
            f"{unique_total / MB:.1f} MB (layers {u['layer_bytes'] / MB:.1f} MB + configs + "
            "manifests). Bytes counted by a loopback proxy (tests/support/servers.py, in the "
            "harness process, unthrottled) in front of the registry; `union once` pulls one "
            "image made of all those unique layers, through the same proxy. The 8 share the "
            "Store's 3 download slots (the library's default, as docker's daemon-wide "
            "max-concurrent-downloads), except in `a download budget each`, where each "
            "pull has 3 of its own (`pull(downloads=...)`).",
            "",
        ]
        rows = []
        base = stats(conc["runs"].get("union once", []))
        for variant, runs in conc["runs"].items():
            st = stats(runs)
            if st is None:
                rows.append([variant, "failed", "", "", "", "", "", f"0/{len(runs)}", ""])
                continue
            ex = st["median_run"]["extra"]
            rows.append(
                [
                    variant,
                    f"{st['wall']:.2f} ({st['min']:.2f}-{st['max']:.2f})",
                    _f(st["cpu"]),
                    _f(st["harness_cpu"]),
                    _f(ex["bytes_to_client"] / MB, 1),
                    f"{ex['bytes_to_client'] / unique_total:.3f}",
                    str(ex["blob_gets_max"]),
                    f"{st['n']}/{st['of']}",
                    _ratio(st["wall"], base["wall"] if base else None),
                ]
            )
        lines += _table(
            [
                "variant",
                "wall s (min-max)",
                "CPU s",
                "proxy CPU s",
                "MB fetched",
                "fetched ÷ unique",
                "max GETs per layer",
                "ok",
                "÷ union once",
            ],
            rows,
        )
        lines.append("")

    thr = results.get("throttled")
    if thr:
        transfer = thr["transfer_s"]
        lines += [
            f"## Throttled link: app at {thr['rate_mb_s']:.0f} MB/s, "
            f"{thr['latency_ms']:.0f} ms per request",
            "",
            f"The transfer alone takes {transfer:.2f} s. overlap = (transfer + unthrottled "
            "wall - throttled wall) ÷ min(transfer, unthrottled wall): 1 means the CPU work "
            "hides entirely under the download, 0 that they ran one after the other. The "
            "proxy (Python threads in the harness process) shares the cores with the tool.",
            "",
        ]
        rows = []
        unthrottled = single.get("app", {})
        for tool, runs in thr["runs"].items():
            st = stats(runs)
            base = stats(unthrottled.get(tool, []))
            if st is None:
                rows.append([tool, "failed", "", "", "", "", "", f"0/{len(runs)}"])
                continue
            overlap = "-"
            if base:
                overlap = _f((transfer + base["wall"] - st["wall"]) / min(transfer, base["wall"]))
            rows.append(
                [
                    tool,
                    f"{st['wall']:.2f} ({st['min']:.2f}-{st['max']:.2f})",
                    f"{st['wall'] / transfer:.2f}x",
                    _f(st["cpu"]),
                    _f(st["harness_cpu"]),
                    _f(base["wall"]) if base else "-",
                    overlap,
                    f"{st['n']}/{st['of']}",
                ]
            )
        lines += _table(
            [
                "tool",
                "wall s (min-max)",
                "÷ transfer",
                "CPU s",
                "proxy CPU s",
                "unthrottled wall s",
                "overlap",
                "ok",
            ],
            rows,
        )
        lines.append("")

    prof = results.get("profile")
    if prof:
        lines += [
            "## Profile of ours (py-spy, registry files warm)",
            "",
            "Busy seconds per thread and per function (leaf frame) from one pull under "
            "py-spy, which slows it down: read the shares. Raw stacks: the file named.",
            "",
        ]
        for name, p in prof.items():
            lines.append(
                f"**{name}**: {p['wall_s_profiled']:.2f} s profiled wall, {p['busy_s']:.2f} s "
                f"busy in all threads (`{p['raw']}`)."
            )
            lines.append("")
            rows = [[k, _f(v)] for k, v in p["threads"][:8]]
            lines += _table(["thread", "busy s"], rows)
            lines.append("")
            rows = [[f"`{k}`", _f(v)] for k, v in p["functions"][:12]]
            lines += _table(["function (leaf)", "busy s"], rows)
            lines.append("")

    failures: list[str] = []
    for name, tools in single.items():
        failures += _failures(tools, f"single {name}")
    if conc:
        failures += _failures(conc["runs"], "concurrent")
    if thr:
        failures += _failures(thr["runs"], "throttled")
    failures += [f"- scenario error: {e}" for e in results.get("errors", [])]
    if failures:
        lines += ["## Failed runs", "", *failures, ""]
    return "\n".join(lines)
