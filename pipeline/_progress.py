"""Progress renderers for the CLI: what ``imagec-pipe pull`` shows while it works.

Each renderer is a plain class: ``__call__(event)`` makes it a ``ProgressSink`` that the
pull calls for every ``ProgressEvent``; ``finish(result)`` prints what follows a
successful pull; ``close()`` leaves the output tidy after a failure or an interrupt. They
write to the text stream they are given (stdout in the CLI, ``io.StringIO`` in tests).

- ``TtyProgress``: docker-like per-layer lines redrawn in place with ANSI cursor
  movement, then ``Digest:`` and ``Status:``. Byte counts only mark the display dirty; it
  is redrawn at most ``fps`` times a second, so a fast pull is never slowed by its display.
- ``PlainProgress``: not a TTY (a CI log, a pipe). One line per event, except
  ``layer-downloading``, shown at most once per second or per 10% of a layer.
- ``JsonProgress``: ``--json``. One JSON object per line for every event with the fields
  ``event``, ``ref``, ``digest``, ``current``, ``total``, then a ``summary`` object built
  from the ``PullResult``.
- ``QuietProgress``: ``--quiet``. Nothing but the full reference on success.

The sink is called synchronously from the pull's tasks; a lock keeps a display whole if
a caller ever emits from a worker thread.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import io
import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, TextIO

from stages._errors import ImagecError
from stages._events import ProgressEvent

from ._main import json_error_line

if TYPE_CHECKING:
    from ._pull import PullResult

__all__ = [
    "JsonProgress",
    "LogsAboveProgress",
    "PlainProgress",
    "ProgressRenderer",
    "QuietProgress",
    "TtyProgress",
    "human_size",
    "split_reference",
    "to_jsonable",
]

Clock = Callable[[], float]


def human_size(size: float) -> str:
    """Decimal sizes with four significant digits, as docker prints them (``12.35MB``)."""
    units = ("B", "kB", "MB", "GB", "TB", "PB")
    unit = 0
    while size >= 1000 and unit < len(units) - 1:
        size /= 1000
        unit += 1
    return f"{size:.4g}{units[unit]}"


def split_reference(ref: str) -> tuple[str, str]:
    """``(repository, tag-or-digest)`` of a reference string, for the docker header.

    ``docker.io/library/alpine:latest`` → ``("library/alpine", "latest")``;
    ``127.0.0.1:5000/app@sha256:…`` → ``("app", "sha256:…")``. Only for display: the
    pull parses references properly; this never fails.
    """
    name, _, digest = ref.partition("@")
    tag = ""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        name = rest
    return name, digest or tag or "latest"


def short_digest(digest: str | None) -> str:
    """The 12 hex digits docker shows for a layer."""
    if digest is None:
        return "?"
    return digest.partition(":")[2][:12] or digest[:12]


def to_jsonable(value: Any) -> Any:
    """Dataclasses, digests, platforms, times and paths as plain JSON values.

    Dataclasses become objects of their fields; times RFC 3339 text (``T`` between date
    and time, as docker's JSON has them); anything else unknown (``Digest``,
    ``Platform``, enums) becomes its ``str``.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if type(value).__str__ is not object.__str__:
            # Digest, Platform, Reference: a dataclass with its own canonical text form.
            return str(value)
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, PurePath):
        return str(value)
    return str(value)


class ProgressRenderer:
    """The interface the CLI uses; subclasses override what they show."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        # Set when the stream refused a write (a closed pipe): nothing more is written.
        self.broken = False
        # Why, when it was not that nobody reads any more (EPIPE): a full disk under a
        # redirected stdout loses output the user meant to keep, and should hear of it.
        self.write_error: OSError | None = None

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            self._handle(event)

    def _handle(self, event: ProgressEvent) -> None:
        pass

    def finish(self, result: PullResult) -> None:
        """The pull succeeded: print what follows the progress."""
        with self._lock:
            self._finish(result)

    def _finish(self, result: PullResult) -> None:
        self._write(f"{result.reference}\n")

    def fail(self, ref: str, error: BaseException, message: str) -> None:
        """The pull failed with ``error``; ``message`` is the (redacted) line the CLI
        prints on stderr. Only ``--json`` adds anything to its stream."""
        with self._lock:
            self._fail(ref, error, message)

    def _fail(self, ref: str, error: BaseException, message: str) -> None:
        pass

    def close(self) -> None:
        """The pull ended (any way): leave the display complete and flushed."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        pass

    def _write(self, text: str) -> None:
        """Write and flush; a closed stream (``| head``) stops the display, not the pull."""
        if self.broken:
            return
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError) as exc:  # BrokenPipeError, or a closed file
            self.broken = True
            if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
                self.write_error = exc

    def _write_line(self, text: str) -> None:
        self._write(text + "\n")


class QuietProgress(ProgressRenderer):
    """``--quiet``: only the full reference, on success."""


def _layer_status(event: ProgressEvent) -> str | None:
    """The docker-like status text of a layer event, or None for an image-level event."""
    match event.event:
        case "layer-waiting":
            return "Waiting"
        case "layer-exists":
            return "Already exists"
        case "layer-shared":
            return "Shared with another pull"
        case "layer-downloading":
            if event.total:
                return f"Downloading  {human_size(event.current)}/{human_size(event.total)}"
            return f"Downloading  {human_size(event.current)}"
        case "layer-retrying":
            return "Retrying"
        case "layer-verifying":
            return "Verifying"
        case "layer-complete":
            return "Pull complete"
    if event.event.startswith("layer-"):
        return event.event.removeprefix("layer-").replace("-", " ").capitalize()
    return None


def _status_line(result: PullResult) -> str:
    """docker's: up to date only when the reference already named this image here; a tag
    moved to another image is "newer" even when every layer was already in the store."""
    if result.up_to_date:
        return f"Status: Image is up to date for {result.reference}"
    return f"Status: Downloaded newer image for {result.reference}"


class PlainProgress(ProgressRenderer):
    """Not a TTY: one line per event; byte counts at most once a second or per 10%."""

    def __init__(
        self, stream: TextIO, *, clock: Clock = time.monotonic, interval_s: float = 1.0
    ) -> None:
        super().__init__(stream)
        self._clock = clock
        self._interval_s = interval_s
        # digest → (time of the last line, tenth of the layer shown then)
        self._shown: dict[str, tuple[float, int]] = {}

    def _handle(self, event: ProgressEvent) -> None:
        match event.event:
            case "resolving":
                repository, tag = split_reference(event.ref)
                self._write_line(f"{tag}: Pulling from {repository}")
                return
            case "resolved":
                count = event.total
                layers = "" if count is None else f" ({count} layer{'' if count == 1 else 's'})"
                self._write_line(f"Resolved {event.ref} to {event.digest}{layers}")
                return
            case "pull-complete":
                return  # finish() prints Digest and Status from the result
            case "layer-downloading":
                if not self._due(event):
                    return
        status = _layer_status(event)
        if status is None:
            self._write_line(f"{event.event}: {event.ref}")
        else:
            self._write_line(f"{short_digest(event.digest)}: {status}")

    def _due(self, event: ProgressEvent) -> bool:
        key = event.digest or ""
        now = self._clock()
        tenth = event.current * 10 // event.total if event.total else 0
        last = self._shown.get(key)
        if last is not None and now - last[0] < self._interval_s and tenth <= last[1]:
            return False
        self._shown[key] = (now, tenth)
        return True

    def _finish(self, result: PullResult) -> None:
        self._write(
            f"Digest: {result.resolved_digest}\n{_status_line(result)}\n{result.reference}\n"
        )


# Layer events after which a layer's line no longer changes, or has not started to.
_SETTLED = frozenset({"layer-waiting", "layer-complete", "layer-exists", "layer-shared"})
# The order in which a condensed block counts them, after the layers still moving.
_LATER_STATUSES = ("Waiting", "Shared with another pull", "Pull complete", "Already exists")


def _position_in_count(label: str) -> int:
    return _LATER_STATUSES.index(label) + 1 if label in _LATER_STATUSES else 0


class TtyProgress(ProgressRenderer):
    """A terminal: docker's display, one line per layer redrawn in place.

    Layer lines appear in the order the layers are first mentioned (manifest order).
    A change of status redraws at once; byte counts only mark the display dirty and are
    drawn at most ``fps`` times a second. Lines are cut to the terminal width so that none
    wraps (a wrapped line would break the cursor arithmetic).

    The cursor cannot move above the top of the screen, so a block taller than the
    terminal could not be redrawn in place: every frame scrolled, and a 32-layer pull on a
    15-row terminal left about 1,900 lines behind. While there are more layers than rows,
    the block shows as many as fit, those in progress first, above one line counting the
    rest; the final block, drawn once, lists every layer.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        clock: Clock = time.monotonic,
        fps: float = 10.0,
        width: int | None = None,
        height: int | None = None,
    ) -> None:
        super().__init__(stream)
        self._clock = clock
        self._min_interval_s = 1.0 / fps
        size = shutil.get_terminal_size()
        self._width = width if width is not None else size.columns
        # Lines a block may take and still be redrawn in place: one row stays for the cursor.
        self._room = max((height if height is not None else size.lines) - 1, 1)
        self._lines: dict[str, str] = {}  # short digest → status, in first-seen order
        self._kinds: dict[str, str] = {}  # short digest → its last event name
        self._drawn = 0  # lines of the block currently on screen
        self._dirty = False
        self._last_draw = float("-inf")
        self._done = False  # finished or closed: the block is final, text goes below it

    def _handle(self, event: ProgressEvent) -> None:
        if event.event == "resolving":
            repository, tag = split_reference(event.ref)
            self._write_line(self._fit(f"{tag}: Pulling from {repository}"))
            return
        status = _layer_status(event)
        if status is None:
            if event.event == "pull-complete":
                self._draw()
            return
        key = short_digest(event.digest)
        self._lines[key] = status
        self._dirty = True
        # A new status shows at once; byte counts wait for the next frame.
        changed = self._kinds.get(key) != event.event
        self._kinds[key] = event.event
        if changed or self._clock() - self._last_draw >= self._min_interval_s:
            self._draw()

    def _fit(self, text: str) -> str:
        return text[: max(self._width - 1, 1)]

    def _draw(self, *, final: bool = False) -> None:
        """Move up over the block drawn last time and draw it again: every line when it
        fits on the screen or will not be redrawn (``final``), else ``_condensed()``."""
        if not self._dirty:
            return
        lines = [f"{key}: {status}" for key, status in self._lines.items()]
        if len(lines) > self._room and not final:
            lines = self._condensed()
        out = []
        if self._drawn:
            out.append(f"\x1b[{self._drawn}A")
        out.extend(f"\r\x1b[2K{self._fit(line)}\n" for line in lines)
        if len(lines) < self._drawn:  # a shorter block: clear what the old one left below
            out.append("\x1b[J")
        self._write("".join(out))
        self._drawn = len(lines)
        self._dirty = False
        self._last_draw = self._clock()

    def _condensed(self) -> list[str]:
        """As many layer lines as fit above one line that counts the rest by status
        ("+ 30 more: 25 Waiting, 5 Pull complete"): the layers in progress first, the
        others in manifest order to fill the room; shown in manifest order."""
        moving = [key for key, kind in self._kinds.items() if kind not in _SETTLED]
        settled = [key for key in self._kinds if self._kinds[key] in _SETTLED]
        chosen = set((moving + settled)[: self._room - 1])
        shown = [key for key in self._kinds if key in chosen]
        rest: dict[str, int] = {}
        for key, kind in self._kinds.items():
            if key not in chosen:
                label = "Downloading" if kind == "layer-downloading" else self._lines[key]
                rest[label] = rest.get(label, 0) + 1
        counts = ", ".join(
            f"{rest[label]} {label}" for label in sorted(rest, key=_position_in_count)
        )
        more = f"+ {sum(rest.values())} more: {counts}"
        return [*(f"{key}: {self._lines[key]}" for key in shown), more]

    def _draw_final(self) -> None:
        """The last frame; a condensed block on screen gives way to every layer's line."""
        self._dirty = self._dirty or self._drawn < len(self._lines)
        self._draw(final=True)

    def _finish(self, result: PullResult) -> None:
        self._draw_final()
        self._write(
            f"Digest: {result.resolved_digest}\n{_status_line(result)}\n{result.reference}\n"
        )
        self._done = True

    def _close(self) -> None:
        self._draw_final()
        self._done = True

    def write_above(self, text: str, other: TextIO) -> None:
        """Write ``text`` to ``other``, a stream on the same terminal (the logs' stderr),
        above the block: the block is cleared, the text written, the block drawn again
        below it. Written straight to ``other``, a log line landed in the middle of the
        block, and the next redraw's cursor arithmetic left stale copies on screen."""
        with self._lock:
            if self._drawn and not self._done:
                self._write(f"\x1b[{self._drawn}A\r\x1b[J")  # up over the block, clear below
                self._drawn = 0
                self._dirty = True
            try:
                other.write(text)
                other.flush()
            except (OSError, ValueError):  # a closed stderr: the log line is lost, not the pull
                pass
            if not self._done:
                self._draw()


class LogsAboveProgress(io.TextIOBase):
    """A stream for the logger while ``TtyProgress`` draws on the same terminal: each
    write goes above the progress block (``TtyProgress.write_above``), to ``stream``."""

    def __init__(self, progress: TtyProgress, stream: TextIO) -> None:
        super().__init__()
        self._progress = progress
        self._stream = stream

    def write(self, text: str) -> int:
        self._progress.write_above(text, self._stream)
        return len(text)

    def isatty(self) -> bool:
        return True


class JsonProgress(ProgressRenderer):
    """``--json``: one JSON object per line for every event, then a summary.

    Event lines: ``{"event", "ref", "digest", "current", "total"}`` (``digest`` and
    ``total`` may be null). The summary line: ``{"event": "summary", "ref", "digest",
    "manifest_digest", "image_id", "platform", "layers": [...], "timings": {...},
    "bytes_downloaded", "up_to_date"}``; each layer is ``{"digest", "diff_id",
    "media_type", "size", "uncompressed_size", "status", "timings"}``. A failed pull ends
    instead with ``{"event": "error", "ref", "digest", "error", "message"}``: ``error`` is
    the exception's class (``NotFound``, ``DigestMismatch`` …), ``message`` the stderr
    line's.
    """

    def _handle(self, event: ProgressEvent) -> None:
        self._write_json(
            {
                "event": event.event,
                "ref": event.ref,
                "digest": event.digest,
                "current": event.current,
                "total": event.total,
            }
        )

    def _finish(self, result: PullResult) -> None:
        self._write_json(summary(result))

    def _fail(self, ref: str, error: BaseException, message: str) -> None:
        digest = error.digest if isinstance(error, ImagecError) else None
        self._write_line(json_error_line(ref, digest, type(error).__name__, message))

    def _write_json(self, obj: dict[str, Any]) -> None:
        self._write_line(json.dumps(obj, separators=(",", ":")))


def summary(result: PullResult) -> dict[str, Any]:
    """The ``--json`` summary object of a successful pull."""
    return {
        "event": "summary",
        "ref": result.reference,
        "digest": str(result.resolved_digest),
        "manifest_digest": str(result.manifest_digest),
        "image_id": str(result.image_id),
        "platform": str(result.platform),
        "layers": [
            {
                "digest": str(layer.digest),
                "diff_id": str(layer.diff_id),
                "media_type": layer.media_type,
                "size": layer.size,
                "uncompressed_size": layer.uncompressed_size,
                "status": layer.status,
                "timings": to_jsonable(layer.timings),
            }
            for layer in result.layers
        ],
        "timings": to_jsonable(result.timings),
        "bytes_downloaded": result.bytes_downloaded,
        "up_to_date": result.up_to_date,
    }
