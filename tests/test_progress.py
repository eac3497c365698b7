"""The progress renderers, fed a scripted pull and read back from a string stream."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from pipeline._progress import (
    JsonProgress,
    LogsAboveProgress,
    PlainProgress,
    QuietProgress,
    TtyProgress,
    human_size,
    split_reference,
    to_jsonable,
)
from stages._events import LayerTimings, ProgressEvent
from stages._types import Digest, Platform

REF = "127.0.0.1:5000/team/app:1.0"
INDEX = Digest.from_hex("1" * 64)
MANIFEST = Digest.from_hex("2" * 64)
CONFIG = Digest.from_hex("3" * 64)
LAYER_A = Digest.from_hex("a" * 64)
LAYER_B = Digest.from_hex("b" * 64)
MB = 1_000_000


class TtyStringIO(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# Stand-ins with PullResult's and LayerReport's fields, so these tests do not depend on
# pipeline/_pull.py; the renderers only read attributes.
@dataclass(frozen=True)
class FakeLayer:
    digest: Digest
    diff_id: Digest
    media_type: str
    size: int
    uncompressed_size: int | None
    status: str
    timings: LayerTimings = field(default_factory=LayerTimings)


@dataclass(frozen=True)
class FakeTimings:
    auth_s: float = 0.05
    manifest_s: float = 0.2
    total_s: float = 1.5


@dataclass(frozen=True)
class FakeResult:
    reference: str
    resolved_digest: Digest
    manifest_digest: Digest
    image_id: Digest
    platform: Platform
    layers: tuple[FakeLayer, ...]
    timings: FakeTimings
    bytes_downloaded: int
    up_to_date: bool


def result(*statuses: str, up_to_date: bool = False) -> Any:
    layers = tuple(
        FakeLayer(
            d,
            Digest.from_hex(str(i) * 64),
            "application/vnd.oci.image.layer.v1.tar+gzip",
            45 * MB,
            90 * MB,
            status,
        )
        for i, (d, status) in enumerate(zip((LAYER_A, LAYER_B), statuses, strict=False))
    )
    return FakeResult(
        REF,
        INDEX,
        MANIFEST,
        CONFIG,
        Platform("linux", "amd64"),
        layers,
        FakeTimings(),
        45 * MB,
        up_to_date,
    )


def ev(event: str, digest: Digest | None = None, current: int = 0, total: int | None = None):
    return ProgressEvent(event, REF, None if digest is None else str(digest), current, total)


def scripted_pull(sink: Any, clock: FakeClock) -> None:
    """Layer A exists; layer B downloads in 10 chunks, 0.05 s apart."""
    sink(ev("resolving"))
    sink(ev("resolved", INDEX, total=2))
    sink(ev("layer-waiting", LAYER_A, total=3 * MB))
    sink(ev("layer-waiting", LAYER_B, total=45 * MB))
    sink(ev("layer-exists", LAYER_A, total=3 * MB))
    for i in range(1, 11):
        clock.now += 0.05
        sink(ev("layer-downloading", LAYER_B, i * 45 * MB // 10, 45 * MB))
    sink(ev("layer-verifying", LAYER_B, 45 * MB, 45 * MB))
    sink(ev("layer-complete", LAYER_B, 45 * MB, 45 * MB))
    sink(ev("pull-complete", INDEX))


def test_human_size_like_docker() -> None:
    assert human_size(0) == "0B"
    assert human_size(999) == "999B"
    assert human_size(12_345_678) == "12.35MB"
    assert human_size(45 * MB) == "45MB"
    assert human_size(3_402_000) == "3.402MB"
    assert human_size(2 * 10**9) == "2GB"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("docker.io/library/alpine:latest", ("library/alpine", "latest")),
        ("127.0.0.1:5000/team/app:1.0", ("team/app", "1.0")),
        ("localhost/app", ("app", "latest")),
        (f"reg.example/app@{INDEX}", ("app", str(INDEX))),
        (f"reg.example/app:1@{INDEX}", ("app", str(INDEX))),
        ("library/alpine:3", ("library/alpine", "3")),
    ],
)
def test_split_reference(ref: str, expected: tuple[str, str]) -> None:
    assert split_reference(ref) == expected


def test_tty_draws_docker_lines_in_place() -> None:
    out, clock = TtyStringIO(), FakeClock()
    progress = TtyProgress(out, clock=clock, fps=10, width=120)
    scripted_pull(progress, clock)
    progress.finish(result("exists", "downloaded"))
    text = out.getvalue()
    assert text.startswith("1.0: Pulling from team/app\n")
    # Every redraw moves up over the two layer lines and clears each before writing it.
    assert "\x1b[2A" in text
    assert "\r\x1b[2Kaaaaaaaaaaaa: Already exists\n" in text
    assert "\r\x1b[2Kbbbbbbbbbbbb: Downloading  4.5MB/45MB\n" in text
    assert "\r\x1b[2Kbbbbbbbbbbbb: Verifying\n" in text
    assert "\r\x1b[2Kbbbbbbbbbbbb: Pull complete\n" in text
    assert text.endswith(f"Digest: {INDEX}\nStatus: Downloaded newer image for {REF}\n{REF}\n")
    # What the terminal finally shows: the last state of each line.
    assert screen(text)[-5:] == [
        "aaaaaaaaaaaa: Already exists",
        "bbbbbbbbbbbb: Pull complete",
        f"Digest: {INDEX}",
        f"Status: Downloaded newer image for {REF}",
        REF,
    ]


def test_tty_throttles_byte_counts() -> None:
    out, clock = TtyStringIO(), FakeClock()
    progress = TtyProgress(out, clock=clock, fps=10, width=120)
    scripted_pull(progress, clock)
    downloading = out.getvalue().count("Downloading")
    # 10 byte-count events 0.05 s apart at 10 frames/s: about every other one drawn.
    assert 3 <= downloading <= 6


def test_tty_up_to_date_when_the_reference_named_this_image_already() -> None:
    out, clock = TtyStringIO(), FakeClock()
    progress = TtyProgress(out, clock=clock, width=120)
    progress(ev("resolving"))
    progress(ev("layer-exists", LAYER_A, total=3 * MB))
    progress(ev("layer-exists", LAYER_B, total=3 * MB))
    progress(ev("pull-complete", INDEX))
    progress.finish(result("exists", "exists", up_to_date=True))
    assert f"Status: Image is up to date for {REF}\n" in out.getvalue()


def test_newer_image_when_the_reference_moved_though_every_layer_existed() -> None:
    # A tag moved to an image whose layers the store has (a config-only rebuild): docker
    # says "Downloaded newer image", and scripts that redeploy on it rely on that.
    out = io.StringIO()
    progress = PlainProgress(out)
    progress(ev("pull-complete", INDEX))
    progress.finish(result("exists", "exists", up_to_date=False))
    assert out.getvalue().endswith(f"Status: Downloaded newer image for {REF}\n{REF}\n")


def test_one_layer_is_one_layer() -> None:
    out = io.StringIO()
    PlainProgress(out)(ev("resolved", INDEX, total=1))
    assert out.getvalue() == f"Resolved {REF} to {INDEX} (1 layer)\n"


def test_tty_log_lines_go_above_the_block() -> None:
    # The logs' stderr is the same terminal: written straight, a line landed inside the
    # block and the next redraw left stale copies of it on screen.
    out, clock = TtyStringIO(), FakeClock()
    progress = TtyProgress(out, clock=clock, width=120)
    logs = LogsAboveProgress(progress, out)
    progress(ev("resolving"))
    progress(ev("layer-waiting", LAYER_A, total=45 * MB))
    progress(ev("layer-waiting", LAYER_B, total=45 * MB))
    logs.write("first log line\n")
    progress(ev("layer-downloading", LAYER_A, 1 * MB, 45 * MB))
    logs.write("second log line\n")
    progress.finish(result("downloaded", "downloaded"))
    logs.write("after the pull\n")
    assert screen(out.getvalue()) == [
        "1.0: Pulling from team/app",
        "first log line",
        "second log line",
        "aaaaaaaaaaaa: Downloading  1MB/45MB",
        "bbbbbbbbbbbb: Waiting",
        f"Digest: {INDEX}",
        f"Status: Downloaded newer image for {REF}",
        REF,
        "after the pull",
    ]


@pytest.mark.parametrize("width", [30, 12])
def test_tty_lines_never_wrap(width: int) -> None:
    out, clock = TtyStringIO(), FakeClock()
    progress = TtyProgress(out, clock=clock, width=width)
    progress(ev("layer-downloading", LAYER_A, 12 * MB, 45 * MB))
    progress.close()
    assert all(len(line) < width for line in screen(out.getvalue()))


def many_layers_pull(progress: TtyProgress, clock: FakeClock, count: int) -> list[str]:
    """``count`` layers announced, then downloaded three at a time, each in five chunks.
    Returns the short digests, and leaves every layer complete."""
    digests = [Digest.from_hex(f"{i:02x}" * 32) for i in range(count)]
    progress(ev("resolving"))
    for digest in digests:
        progress(ev("layer-waiting", digest, total=10 * MB))
    for start in range(0, count, 3):
        batch = digests[start : start + 3]
        for step in range(1, 6):
            clock.now += 0.2
            for digest in batch:
                progress(ev("layer-downloading", digest, 2 * MB * step, 10 * MB))
        for digest in batch:
            progress(ev("layer-verifying", digest, 10 * MB, 10 * MB))
            progress(ev("layer-complete", digest, 10 * MB, 10 * MB))
    return [str(digest)[7:19] for digest in digests]


def test_more_layers_than_rows_are_redrawn_in_place_not_scrolled() -> None:
    # A block taller than the terminal cannot be redrawn in place: each frame scrolled
    # and left a copy of the whole block behind.
    out, clock = TtyStringIO(), FakeClock()
    progress = TtyProgress(out, clock=clock, width=120, height=10)
    keys = many_layers_pull(progress, clock, 30)
    progress.finish(result("downloaded", "downloaded"))
    progress.close()  # as the CLI does, whatever happened
    assert screen(out.getvalue(), height=10) == [
        "1.0: Pulling from team/app",
        *(f"{key}: Pull complete" for key in keys),
        f"Digest: {INDEX}",
        f"Status: Downloaded newer image for {REF}",
        REF,
    ]


def test_more_layers_than_rows_show_those_in_progress_first_and_count_the_rest() -> None:
    out, clock = TtyStringIO(), FakeClock()
    progress = TtyProgress(out, clock=clock, width=120, height=6)
    keys = [str(Digest.from_hex(f"{i:02x}" * 32))[7:19] for i in range(8)]
    progress(ev("resolving"))
    for i in range(8):
        progress(ev("layer-waiting", Digest.from_hex(f"{i:02x}" * 32), total=10 * MB))
    progress(ev("layer-complete", Digest.from_hex("00" * 32), 10 * MB, 10 * MB))
    for i in (3, 5):
        progress(ev("layer-downloading", Digest.from_hex(f"{i:02x}" * 32), 4 * MB, 10 * MB))
    # those in progress, then the others in manifest order, as many as fit
    assert screen(out.getvalue(), height=6)[-5:] == [
        f"{keys[0]}: Pull complete",
        f"{keys[1]}: Waiting",
        f"{keys[3]}: Downloading  4MB/10MB",
        f"{keys[5]}: Downloading  4MB/10MB",
        "+ 4 more: 4 Waiting",
    ]
    # more in progress than rows: as many as fit, the others counted as downloading
    for i in (0, 1, 2, 4, 6, 7):
        progress(ev("layer-downloading", Digest.from_hex(f"{i:02x}" * 32), 1 * MB, 10 * MB))
    shown = screen(out.getvalue(), height=6)[-5:]
    assert len(shown) == 5 and shown[-1] == "+ 4 more: 4 Downloading"
    assert all(": Downloading  " in line for line in shown[:-1])


def test_a_retry_shows_then_the_download_goes_on() -> None:
    out, clock = TtyStringIO(), FakeClock()
    progress = TtyProgress(out, clock=clock, width=120)
    progress(ev("layer-downloading", LAYER_A, 20 * MB, 45 * MB))
    progress(ev("layer-retrying", LAYER_A, 20 * MB, 45 * MB))
    assert screen(out.getvalue()) == ["aaaaaaaaaaaa: Retrying"]
    clock.now += 1
    progress(ev("layer-downloading", LAYER_A, 21 * MB, 45 * MB))
    assert screen(out.getvalue()) == ["aaaaaaaaaaaa: Downloading  21MB/45MB"]
    plain = io.StringIO()
    PlainProgress(plain)(ev("layer-retrying", LAYER_A, 20 * MB, 45 * MB))
    assert plain.getvalue() == "aaaaaaaaaaaa: Retrying\n"


def test_tty_close_draws_pending_bytes() -> None:
    out, clock = TtyStringIO(), FakeClock()
    progress = TtyProgress(out, clock=clock, width=120)
    progress(ev("layer-downloading", LAYER_A, 1 * MB, 45 * MB))
    progress(ev("layer-downloading", LAYER_A, 2 * MB, 45 * MB))  # same instant: not drawn
    assert "2MB/45MB" not in out.getvalue()
    progress.close()
    assert screen(out.getvalue()) == ["aaaaaaaaaaaa: Downloading  2MB/45MB"]


def test_plain_one_line_per_event_with_throttled_bytes() -> None:
    out, clock = io.StringIO(), FakeClock()
    progress = PlainProgress(out, clock=clock)
    scripted_pull(progress, clock)
    progress.finish(result("exists", "downloaded"))
    lines = out.getvalue().splitlines()
    assert "\x1b" not in out.getvalue()
    assert lines[:5] == [
        "1.0: Pulling from team/app",
        f"Resolved {REF} to {INDEX} (2 layers)",
        "aaaaaaaaaaaa: Waiting",
        "bbbbbbbbbbbb: Waiting",
        "aaaaaaaaaaaa: Already exists",
    ]
    # 10 chunks at 10% each: a line per 10% step, no more.
    downloading = [line for line in lines if "Downloading" in line]
    assert downloading[0] == "bbbbbbbbbbbb: Downloading  4.5MB/45MB"
    assert downloading[-1] == "bbbbbbbbbbbb: Downloading  45MB/45MB"
    assert len(downloading) == 10
    assert lines[-5:] == [
        "bbbbbbbbbbbb: Verifying",
        "bbbbbbbbbbbb: Pull complete",
        f"Digest: {INDEX}",
        f"Status: Downloaded newer image for {REF}",
        REF,
    ]


def test_plain_small_chunks_at_most_one_line_per_second_or_tenth() -> None:
    out, clock = io.StringIO(), FakeClock()
    progress = PlainProgress(out, clock=clock)
    for i in range(1, 1001):  # 1000 chunks of 0.1%, 1 ms apart: 1 s in all
        clock.now += 0.001
        progress(ev("layer-downloading", LAYER_A, i * 1000, MB))
    lines = out.getvalue().splitlines()
    assert 10 <= len(lines) <= 12


def test_plain_unknown_total() -> None:
    out, clock = io.StringIO(), FakeClock()
    progress = PlainProgress(out, clock=clock)
    progress(ev("layer-downloading", LAYER_A, 1500))
    progress(ev("layer-downloading", LAYER_A, 3000))  # same second, no tenths: dropped
    clock.now += 1
    progress(ev("layer-downloading", LAYER_A, 4500))
    assert out.getvalue().splitlines() == [
        "aaaaaaaaaaaa: Downloading  1.5kB",
        "aaaaaaaaaaaa: Downloading  4.5kB",
    ]


def test_json_every_event_then_summary() -> None:
    out, clock = io.StringIO(), FakeClock()
    progress = JsonProgress(out)
    scripted_pull(progress, clock)
    progress.finish(result("exists", "downloaded"))
    objects = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(objects) == 2 + 2 + 1 + 10 + 2 + 1 + 1
    for obj in objects[:-1]:
        assert set(obj) == {"event", "ref", "digest", "current", "total"}
        assert obj["ref"] == REF
    assert objects[0] == {
        "event": "resolving",
        "ref": REF,
        "digest": None,
        "current": 0,
        "total": None,
    }
    assert objects[5] == {
        "event": "layer-downloading",
        "ref": REF,
        "digest": str(LAYER_B),
        "current": 4_500_000,
        "total": 45 * MB,
    }
    summary = objects[-1]
    assert summary["event"] == "summary"
    assert summary["ref"] == REF
    assert summary["digest"] == str(INDEX)
    assert summary["manifest_digest"] == str(MANIFEST)
    assert summary["image_id"] == str(CONFIG)
    assert summary["platform"] == "linux/amd64"
    assert summary["bytes_downloaded"] == 45 * MB
    assert summary["timings"] == {"auth_s": 0.05, "manifest_s": 0.2, "total_s": 1.5}
    assert [layer["status"] for layer in summary["layers"]] == ["exists", "downloaded"]
    layer = summary["layers"][1]
    assert layer["digest"] == str(LAYER_B)
    assert layer["size"] == 45 * MB
    assert layer["uncompressed_size"] == 90 * MB
    assert layer["timings"]["wall_s"] == 0.0


def test_quiet_prints_only_the_reference() -> None:
    out, clock = TtyStringIO(), FakeClock()
    progress = QuietProgress(out)
    scripted_pull(progress, clock)
    progress.close()
    assert out.getvalue() == ""
    progress.finish(result("downloaded", "downloaded"))
    assert out.getvalue() == f"{REF}\n"


def test_to_jsonable() -> None:
    assert to_jsonable({"a": (LAYER_A, Platform("linux", "arm64", "v8"))}) == {
        "a": [str(LAYER_A), "linux/arm64/v8"]
    }
    assert to_jsonable(LayerTimings(wall_s=1.0))["wall_s"] == 1.0


def screen(text: str, height: int | None = None) -> list[str]:
    """Replay the few ANSI sequences the renderer uses onto a list of lines: the screen and
    what scrolled off it. With a ``height``, as a terminal does, the cursor cannot move up
    past the top of the screen, so lines that scrolled off stay as they were."""
    lines: list[str] = [""]
    row = 0
    i = 0
    while i < len(text):
        if text.startswith("\x1b[", i):
            end = i + 2
            while not text[end].isalpha():
                end += 1
            arg, op = text[i + 2 : end], text[end]
            if op == "A":
                top = 0 if height is None else max(0, len(lines) - height)
                row = max(top, row - int(arg or 1))
            elif op == "K":
                lines[row] = ""
            elif op == "J":  # clear from here to the end of the screen
                del lines[row + 1 :]
                lines[row] = ""
            i = end + 1
            continue
        char = text[i]
        if char == "\n":
            row += 1
            if row == len(lines):
                lines.append("")
        elif char == "\r":
            pass  # column tracking is not needed: every line is cleared before it is written
        else:
            lines[row] += char
        i += 1
    return [line for line in lines if line]


class BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("renderer", [TtyProgress, PlainProgress, JsonProgress, QuietProgress])
def test_a_closed_stdout_stops_the_display_not_the_pull(renderer: Any) -> None:
    progress = renderer(BrokenStream())
    scripted_pull(progress, FakeClock())
    progress.finish(result("downloaded", "downloaded"))
    progress.close()
    assert progress.broken
