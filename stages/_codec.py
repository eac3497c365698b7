"""The CPU work of one layer, as small synchronous classes that know nothing of I/O.

Each has ``update(chunk)`` and ``finish()`` (the shape of httpx's ``_decoders.py``), so a
stage can run it in a worker thread, a test can drive it with plain bytes, and a later
layer-worker process can run it unchanged::

    raw chunk ─┬─▶ BlobHasher     sha256 (the digest) + xxh3_128 (the store's quick check)
               └─▶ LayerDecoder   magic check ─▶ Gunzip | Unzstd | plain ─▶ sha256 (diffID)

Decompressed output is produced in steps of at most ``Limits.inflate_step_bytes`` and
hashed at once, so memory stays bounded whatever the compression ratio; the uncompressed
size is capped (absolutely and relative to the compressed size) against bombs.

``LayerDecoder`` does not raise from ``update()``: it keeps the first error and stops
decoding, and ``finish()`` raises it. The caller checks the compressed digest first, so a
flipped byte is reported as the ``DigestMismatch`` it is, not as the corrupt deflate block
it causes; a stream whose digest is right but which will not decompress is the
publisher's fault and gets its own error.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import re
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import xxhash
import zstandard

from ._config import Limits
from ._errors import BlobError, DecompressError, Truncated, UsageError
from ._types import MediaType

# The zlib-compatible gzip inflaters, by the name ``Limits.gzip_inflater`` takes, fastest
# first as the harness measures them on layer data (benchmarks/RESULTS.md, "Gzip
# inflaters": in the run of 2026-11-29 ISA-L was 26-28% ahead of zlib-ng on every image,
# both 1.8-2.3x zlib's speed; an earlier run on other images had zlib-ng ahead on one
# 10 MB layer, so the harness keeps timing all three). isal is a dependency; zlib-ng is
# optional (``pip install imagec-pipe[zlib-ng]``). A module is imported when a pull first
# chooses it, so none costs the start-up of a command that does not use it.
_INFLATER_MODULES = {"isal": "isal.isal_zlib", "zlib-ng": "zlib_ng.zlib_ng", "zlib": "zlib"}


def available_inflaters() -> tuple[str, ...]:
    """The names ``Limits.gzip_inflater`` may take besides "auto", fastest first."""
    return tuple(
        name
        for name, module in _INFLATER_MODULES.items()
        if importlib.util.find_spec(module.partition(".")[0]) is not None
    )


@functools.cache
def inflater(name: str) -> types.ModuleType:
    """The module named by ``Limits.gzip_inflater``: "auto" (the fastest installed that
    imports; zlib at worst) or one of ``available_inflaters()``. Raises ``UsageError`` for
    one that is unknown, not installed, or installed but broken."""
    installed = available_inflaters()
    if name == "auto":
        for candidate in installed:
            try:
                return importlib.import_module(_INFLATER_MODULES[candidate])
            except ImportError:  # a broken install of a faster one: take the next
                continue
    elif name in installed:
        try:
            return importlib.import_module(_INFLATER_MODULES[name])
        except ImportError as exc:
            raise UsageError(f"gzip inflater {name!r} is installed but broken: {exc}") from exc
    raise UsageError(
        f"gzip inflater {name!r} is not available here; choose one of auto, {', '.join(installed)}"
    )


__all__ = [
    "BlobHasher",
    "BlobSums",
    "Decoded",
    "Decompressor",
    "Gunzip",
    "LayerDecoder",
    "Unzstd",
    "available_inflaters",
    "describe_magic",
    "gzip_member",
    "inflater",
]

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_MAGIC_INT = 0xFD2FB528
_ZSTD_SKIPPABLE_MASK = 0xFFFFFFF0
_ZSTD_SKIPPABLE_INT = 0x184D2A50
_SNIFF_BYTES = 4  # enough for every magic number we check
_DESCRIBE_BYTES = 262  # and up to tar's "ustar" magic, to say what mislabelled bytes are

# Where the uncompressed bytes go: called with pieces of at most ``inflate_step_bytes``.
Sink = Callable[[bytes], object]


# ---------------------------------------------------------------------------------------
# The compressed side


@dataclass(frozen=True)
class BlobSums:
    """What ``BlobHasher`` saw: byte count, sha256 hex and xxh3_128 hex of the raw bytes."""

    size: int
    sha256: str
    xxh3: str


class BlobHasher:
    """sha256 and xxh3_128 of the bytes as stored, in one pass over each chunk.

    xxh3 (14 GB/s) rides along with sha256 (1.2 GB/s) in the same thread hop: it is what
    the store records so that ``verify`` can re-check a blob without re-hashing sha256.
    """

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._xxh3 = xxhash.xxh3_128()
        self._size = 0

    def update(self, chunk: bytes) -> None:
        self._sha256.update(chunk)
        self._xxh3.update(chunk)
        self._size += len(chunk)

    def finish(self) -> BlobSums:
        return BlobSums(self._size, self._sha256.hexdigest(), self._xxh3.hexdigest())


# ---------------------------------------------------------------------------------------
# Decompressors: bytes in, bounded pieces out to a sink; internal errors are plain
# exceptions (zstd errors, _Corrupt, _Incomplete) that LayerDecoder translates.


class _Corrupt(Exception):
    """The compressed stream is malformed (message says how)."""


class _Incomplete(Exception):
    """The compressed stream stopped before its end (message says where)."""


# What a malformed stream raises inside the decompressors, translated by LayerDecoder.
_BAD_STREAM: tuple[type[Exception], ...] = (zstandard.ZstdError, _Corrupt)


class Decompressor(Protocol):
    def update(self, data: bytes) -> None: ...
    def finish(self) -> None: ...


class _IgzipMember:
    """ISA-L's own gzip decompressor (``isal.igzip_lib.IgzipDecompressor``) for one member,
    in the shape ``Gunzip`` uses of a zlib ``decompressobj``: ``decompress(data,
    max_length)``, ``eof``, ``unused_data``, ``unconsumed_tail``.

    A ``decompressobj`` whose output stops at ``max_length`` hands back the input it has
    not taken as a fresh ``unconsumed_tail`` (a copy) for the next call; this one keeps
    that input inside and takes ``b""`` to go on, so ``unconsumed_tail`` is always empty
    and ``Gunzip``'s next call passes it. It checks the header, CRC and ISIZE as the
    ``decompressobj`` does and raises the same ``isal_zlib.error``. Measured on one of
    ``app``'s layers (108 MB gz, 2 MiB steps, 3 turns): 0.40 against 0.42 CPU-s, and
    cold CLI pulls of ``app`` (10 interleaved rounds): 2.58 -> 2.52 CPU-s median."""

    unconsumed_tail = b""

    def __init__(self, igzip_lib: types.ModuleType) -> None:
        self._decompressor = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        """As ``decompressobj``'s: ``max_length`` 0 sets no bound (igzip_lib says -1)."""
        out: bytes = self._decompressor.decompress(data, max_length or -1)
        return out

    @property
    def eof(self) -> bool:
        return bool(self._decompressor.eof)

    @property
    def unused_data(self) -> bytes:
        data: bytes = self._decompressor.unused_data
        return data


def gzip_member(impl: types.ModuleType) -> Any:
    """A decompressor for one gzip member with ``impl`` (an ``inflater``): a zlib-style
    ``decompressobj``, or for ISA-L its own faster one (``_IgzipMember``)."""
    if impl.__name__ == _INFLATER_MODULES["isal"]:
        return _IgzipMember(importlib.import_module("isal.igzip_lib"))
    return impl.decompressobj(wbits=31)


class Gunzip:
    """gzip, any number of members, output in pieces of at most ``step`` bytes.

    zlib (and ISA-L) do not raise on truncation: ``finish()`` checks that the last member
    reached its end. A bad CRC or ISIZE raises in ``update()``. After a member ends, what
    follows must be another member (the gzip format, and what Go's reader accepts);
    anything else is trailing garbage.
    """

    def __init__(self, sink: Sink, *, step: int, impl: types.ModuleType | None = None) -> None:
        self._sink = sink
        self._step = step
        self._impl = impl if impl is not None else inflater("auto")
        self._member: Any = None  # the current member's decompressor (``gzip_member``)
        self._members = 0  # members completed
        self._header = b""  # the start of the next member's header, held back until whole

    def update(self, data: bytes) -> None:
        try:
            if self._members < 2 or len(data) <= GZIP_FEED_BYTES:
                self._update(data)
            else:  # see GZIP_FEED_BYTES
                for start in range(0, len(data), GZIP_FEED_BYTES):
                    self._update(data[start : start + GZIP_FEED_BYTES])
        except self._impl.error as exc:  # each inflater module has an error class of its own
            problem = _check_problem(str(exc))
        else:
            return
        # Raised outside the handler, with no cause: a layer worker process hands its
        # error back pickled with its chain (tblib, as trio-parallel does), and pickle
        # cannot name ISA-L's error class (igzip_lib.IsalError) nor zlib-ng's
        # (zlib_ng.error): a corrupt gzip layer came back as "internal error:
        # PicklingError". The message says all the inflater said.
        raise _Corrupt(problem)

    def _update(self, data: bytes) -> None:
        step, sink = self._step, self._sink
        buf = data
        while buf:
            member = self._member
            if member is None:
                if self._header:
                    buf, self._header = self._header + buf, b""
                if self._members and not GZIP_MAGIC.startswith(buf[:2]):
                    raise _Corrupt(
                        f"{len(buf)}+ bytes of trailing data that is not gzip after member "
                        f"{self._members} (starts {bytes(buf[:8]).hex()})"
                    )
                if len(buf) > 3 and buf[3] & _GZIP_RESERVED_FLAGS:
                    # zlib refuses these, ISA-L took them: one verdict whatever inflates.
                    raise _Corrupt(
                        f"gzip member {self._members + 1} sets reserved header flags "
                        f"(0x{buf[3] & _GZIP_RESERVED_FLAGS:02x}), which RFC 1952 forbids"
                    )
                if _gzip_header_size(buf) is None and len(buf) < MAX_HELD_GZIP_HEADER:
                    self._header = bytes(buf)
                    return
                member = self._member = gzip_member(self._impl)
            while True:
                out = member.decompress(buf, step)
                if out:
                    sink(out)
                if member.eof:
                    self._members += 1
                    self._member = None
                    buf = member.unused_data
                    break
                buf = member.unconsumed_tail
                # Input all taken and the output step not filled: nothing is pending.
                if not buf and len(out) < step:
                    return

    def finish(self) -> None:
        if self._member is not None or self._header:
            raise _Incomplete(f"gzip stream ends inside member {self._members + 1}")
        if not self._members:
            raise _Incomplete("gzip stream is empty")


# What each inflater says of a member whose checks do not match its bytes, and what that
# is: zlib and zlib-ng tell the trailer's CRC-32 from its length (ISIZE) and from the
# header's CRC (FHCRC); ISA-L says "Incorrect checksum found" of any of the three.
_CHECK_PROBLEMS = {
    "incorrect data check": "its CRC-32 does not match its data",
    "incorrect length check": "its length (ISIZE) does not match its data",
    "incorrect checksum found": "its CRC-32, its length (ISIZE) or its header's CRC does not match",
}


def _check_problem(said: str) -> str:
    """The inflater's message, with what a check that failed means added in words."""
    for words, meaning in _CHECK_PROBLEMS.items():
        if words in said.lower():
            return f"a gzip member is corrupt: {meaning} ({said})"
    return said


# FLG bits 5-7 of a gzip header, reserved (RFC 1952 section 2.3.1: "a compliant
# decompressor must give an error indication if any reserved bit is non-zero"). zlib
# refuses them and ISA-L (python-isal 1.9.1) ignores them, so whether a layer pulled
# depended on which inflater was installed; they are checked here, before either.
_GZIP_RESERVED_FLAGS = 0xE0

# A member's header goes to the inflater whole: ISA-L (python-isal 1.9.1) fails with
# "Incorrect checksum" on a valid header with a header CRC (FHCRC) that arrives in
# pieces, which the network decides. Headers are short; a longer "header" (a name that
# never ends) is passed on as it comes, for the inflater to judge.
MAX_HELD_GZIP_HEADER = 256 * 1024

# The most input handed to an inflater at once once a layer has shown two members. A
# member's end copies the rest of its input (``unused_data``), so a chunk of many tiny
# members cost its size for each: a 20 MB layer of 20-byte members took 19 s in 1 MiB
# network reads (1 MB/s; 1 GB, a quarter of an hour of a core). In pieces of this size
# the copies stay small (6x faster). A layer of one member, as almost all are, is fed
# whole: cutting its chunks cost 9% more CPU.
GZIP_FEED_BYTES = 64 * 1024


def _gzip_header_size(buf: bytes) -> int | None:
    """The length of the gzip member header ``buf`` starts with (RFC 1952 section 2.3:
    10 fixed bytes, then FEXTRA, FNAME, FCOMMENT and FHCRC as its flags say), or None
    while ``buf`` holds only part of it."""
    if len(buf) < 10:
        return None
    flags, pos = buf[3], 10
    if flags & 0x04:  # FEXTRA: a 2-byte length, then that many bytes
        if len(buf) < pos + 2:
            return None
        pos += 2 + int.from_bytes(buf[pos : pos + 2], "little")
    for flag in (0x08, 0x10):  # FNAME, FCOMMENT: zero-terminated
        if flags & flag:
            end = buf.find(b"\0", pos)
            if end < 0:
                return None
            pos = end + 1
    if flags & 0x02:  # FHCRC
        pos += 2
    return pos if len(buf) >= pos else None


class _SinkWriter:
    """The file-like end zstandard's ``stream_writer`` writes to."""

    __slots__ = ("write",)

    def __init__(self, sink: Sink) -> None:
        self.write = sink


# A run of empty blocks, none the last of its frame: raw of size 0, or RLE of size 0 and
# its byte (RFC 8878 section 3.1.1.2). It always matches, if only nothing.
_EMPTY_BLOCKS = re.compile(rb"(?:\x00\x00\x00|\x02\x00\x00.)*+", re.DOTALL)


class _ZstdFrames:
    """Walks zstd frame and block headers (never the block contents) to know where
    frames end, since zstandard's streaming writer does not say so; that is how a
    truncated last frame is seen. Also refuses frames asking for a window over the limit
    with a clear message, and trailing bytes that are no frame.

    RFC 8878 section 3.1: frame = magic, header descriptor, [window descriptor],
    [dictionary id], [content size], blocks (3-byte headers), [4-byte checksum];
    skippable frame = magic 0x184D2A5?, 4-byte size, that many bytes.
    """

    # states: what the next ``_need`` header bytes are
    _MAGIC, _SKIP_SIZE, _DESCRIPTOR, _HEADER, _BLOCK = range(5)

    def __init__(self, max_window: int) -> None:
        self._max_window = max_window
        self._state = self._MAGIC
        self._need = 4
        self._partial = bytearray()
        self._skip = 0
        self._checksum = False
        self._single_segment = False
        self._fcs_size = 0
        self.frames = 0  # frames begun (zstd and skippable)

    @property
    def at_frame_end(self) -> bool:
        return self._state == self._MAGIC and not self._skip and not self._partial

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        view = memoryview(data)
        while pos < end:
            if self._skip:
                taken = min(self._skip, end - pos)
                self._skip -= taken
                pos += taken
                continue
            if self._state == self._BLOCK and not self._partial and data[pos] in (0, 2):
                # Empty blocks (a compressor has no need of them, but a stream may be made
                # of little else) were a Python step each, 7 MB/s: a run is passed at once.
                run = _EMPTY_BLOCKS.match(data, pos)
                if run and run.end() > pos:
                    pos = run.end()
                    continue
            need = self._need
            if not self._partial and end - pos >= need:
                field = view[pos : pos + need]
                pos += need
            else:
                taken = min(need - len(self._partial), end - pos)
                self._partial += view[pos : pos + taken]
                pos += taken
                if len(self._partial) < need:
                    return
                field = memoryview(bytes(self._partial))
                self._partial.clear()
            self._advance(field)

    def _advance(self, field: memoryview) -> None:
        state = self._state
        if state == self._BLOCK:
            header = int.from_bytes(field, "little")
            block_type, block_size = (header >> 1) & 3, header >> 3
            if block_type == 3:
                raise _Corrupt(f"zstd frame {self.frames} has a block of reserved type")
            self._skip = 1 if block_type == 1 else block_size
            if header & 1:  # last block of the frame
                self._skip += 4 if self._checksum else 0
                self._state, self._need = self._MAGIC, 4
        elif state == self._MAGIC:
            magic = int.from_bytes(field, "little")
            if magic == _ZSTD_MAGIC_INT:
                self.frames += 1
                self._state, self._need = self._DESCRIPTOR, 1
            elif magic & _ZSTD_SKIPPABLE_MASK == _ZSTD_SKIPPABLE_INT:
                self.frames += 1
                self._state, self._need = self._SKIP_SIZE, 4
            else:
                where = f"after frame {self.frames}" if self.frames else "at the start"
                raise _Corrupt(f"bytes {bytes(field).hex()} {where} are not a zstd frame")
        elif state == self._SKIP_SIZE:
            self._skip = int.from_bytes(field, "little")
            self._state, self._need = self._MAGIC, 4
        elif state == self._DESCRIPTOR:
            descriptor = field[0]
            if descriptor & 0x08:
                raise _Corrupt(f"zstd frame {self.frames} sets a reserved header bit")
            fcs_flag = descriptor >> 6
            self._single_segment = bool(descriptor & 0x20)
            self._checksum = bool(descriptor & 0x04)
            self._fcs_size = (1 if self._single_segment else 0, 2, 4, 8)[fcs_flag]
            rest = (0 if self._single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]
            rest += self._fcs_size
            if rest:
                self._state, self._need = self._HEADER, rest
            else:
                self._state, self._need = self._BLOCK, 3
        else:  # _HEADER: [window descriptor] [dictionary id] [frame content size]
            if self._single_segment:
                window = int.from_bytes(field[len(field) - self._fcs_size :], "little")
                window += 256 if self._fcs_size == 2 else 0
            else:
                exponent, mantissa = field[0] >> 3, field[0] & 7
                base = 1 << (10 + exponent)
                window = base + (base >> 3) * mantissa
            if window > self._max_window:
                raise _Corrupt(
                    f"zstd frame {self.frames} needs a {window}-byte window, over the "
                    f"limit of {self._max_window} bytes (Limits.max_zstd_window_bytes)"
                )
            self._state, self._need = self._BLOCK, 3


class Unzstd:
    """zstd, any number of frames (skippable ones too), output in pieces of at most
    ``step`` bytes through zstandard's ``stream_writer`` (its ``decompressobj`` joins all
    the output of one input chunk in memory, which a high-ratio chunk makes unbounded).

    The pieces are no larger than zstd's recommended output size either (128 KiB,
    ``ZSTD_DStreamOutSize``, at least one whole block): the writer decompresses into a
    buffer of that size and copies it out, and at ``inflate_step_bytes`` (2 MiB, right
    for gzip) buffer and copy no longer fitted a core's cache. Cold CLI pulls of
    ``app-zstd``, interleaved: 2.39 -> 2.26 CPU-s (median of 6), the wall unchanged; for
    gzip, 256 KiB steps saved nothing."""

    def __init__(self, sink: Sink, *, step: int, max_window: int) -> None:
        dctx = zstandard.ZstdDecompressor(max_window_size=max_window)
        self._writer = dctx.stream_writer(
            _SinkWriter(sink),  # type: ignore[arg-type]  # only .write is used
            write_size=min(step, zstandard.DECOMPRESSION_RECOMMENDED_OUTPUT_SIZE),
            write_return_read=True,
            closefd=False,
        )
        self._frames = _ZstdFrames(max_window)

    def update(self, data: bytes) -> None:
        self._frames.feed(data)  # structure first: clear messages before zstd's own
        self._writer.write(data)

    def finish(self) -> None:
        if not self._frames.frames and self._frames.at_frame_end:
            raise _Incomplete("zstd stream is empty")
        if not self._frames.at_frame_end:
            raise _Incomplete(f"zstd stream ends inside frame {max(self._frames.frames, 1)}")


# ---------------------------------------------------------------------------------------
# The layer: media type and magic, the decompressor, the diffID hash and the caps


@dataclass(frozen=True)
class Decoded:
    """What ``LayerDecoder`` produced: the uncompressed size and the diffID hex.

    ``diff_id`` is None for an uncompressed layer, whose diffID is its digest (the caller
    has that hash already; hashing the same bytes twice would waste a core), and when the
    decoder was given a ``sink``: then whoever reads the sink hashes the output.
    """

    size: int
    diff_id: str | None


def describe_magic(prefix: bytes) -> str:
    """What the first bytes of a blob look like, for error messages."""
    if prefix.startswith(GZIP_MAGIC):
        return "gzip"
    if prefix.startswith(ZSTD_MAGIC) or (
        len(prefix) >= 4
        and int.from_bytes(prefix[:4], "little") & _ZSTD_SKIPPABLE_MASK == _ZSTD_SKIPPABLE_INT
    ):
        return "zstd"
    if prefix.startswith(b"BZh"):
        return "bzip2"
    if prefix.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if not prefix:
        return "empty"
    if prefix[257:262] == b"ustar":
        return "a plain tar"
    return f"uncompressed (first bytes {prefix[:8].hex()})"


_FORMATS = (
    (MediaType.LAYERS_GZIP, "gzip"),
    (MediaType.LAYERS_ZSTD, "zstd"),
    (MediaType.LAYERS_PLAIN, "plain"),
)


class LayerDecoder:
    """Raw layer bytes in; uncompressed size and diffID out, checked against the caps.

    The format comes from the media type and is checked against the first bytes: a
    layer labelled gzip whose bytes are zstd or a plain tar is refused, naming both.

    Bomb cap: ``min(max_layer_uncompressed_bytes, max(max_compression_ratio x compressed
    size, min_uncompressed_allowance_bytes))`` uncompressed bytes; the ratio is taken
    against the descriptor's (verified) size, and any layer may inflate to the allowance.
    """

    def __init__(
        self,
        media_type: str,
        compressed_size: int,
        limits: Limits,
        *,
        ref: str,
        digest: str,
        sink: Sink | None = None,
    ) -> None:
        self._ref, self._digest, self._media_type = ref, digest, media_type
        fmt = next((name for types, name in _FORMATS if media_type in types), None)
        if fmt is None:
            raise DecompressError(
                f"layer media type {media_type!r} is not one imagec-pipe can decompress "
                f"(gzip, zstd or plain tar)",
                ref=ref,
                digest=digest,
            )
        self._format = fmt
        self._limits = limits
        self._cap = min(
            limits.max_layer_uncompressed_bytes,
            max(
                limits.max_compression_ratio * compressed_size,
                limits.min_uncompressed_allowance_bytes,
            ),
        )
        self._compressed_size = compressed_size
        # Uncompressed pieces go to ``sink`` (a pipeline hashes them in a stage of their
        # own, overlapping the inflate); without one they are hashed here.
        self._sha256 = hashlib.sha256()
        self._sink: Sink = self._sha256.update if sink is None else sink
        self._hashes_here = sink is None
        self._size = 0
        self._prefix = b""  # the first bytes, kept until the magic check is done
        self._decompressor: Decompressor | None = None
        self._error: BlobError | None = None

    def update(self, chunk: bytes) -> None:
        """Feed raw bytes. Never raises for bad data: see the module docstring."""
        if self._error is not None:
            return
        try:
            if self._decompressor is None:
                if len(self._prefix) + len(chunk) < _SNIFF_BYTES:
                    self._prefix += chunk
                    return
                chunk = self._prefix + chunk if self._prefix else chunk
                self._prefix = b""
                self._decompressor = self._start(chunk[:_DESCRIBE_BYTES])
            self._decompressor.update(chunk)
        except BlobError as exc:
            self._error = exc
        except _BAD_STREAM as exc:
            self._error = self._corrupt(str(exc))
            self._error.__cause__ = exc

    def finish(self) -> Decoded:
        """Raise the first error seen, or what makes the stream incomplete; else the result."""
        if self._error is None:
            try:
                if self._decompressor is None:  # fewer than 4 bytes in all
                    if not self._prefix and self._format != "plain":
                        raise _Incomplete(f"the {self._format} stream is empty")
                    self._decompressor = self._start(self._prefix)
                    self._decompressor.update(self._prefix)
                self._decompressor.finish()
            except _Incomplete as exc:
                self._error = Truncated(
                    f"layer {self._digest} ({self._media_type}) is cut short: {exc}; the "
                    f"blob in the registry is incomplete",
                    ref=self._ref,
                    digest=self._digest,
                )
            except _BAD_STREAM as exc:
                self._error = self._corrupt(str(exc))
            except BlobError as exc:
                self._error = exc
        if self._error is not None:
            raise self._error
        hashed = self._hashes_here and self._format != "plain"
        return Decoded(self._size, self._sha256.hexdigest() if hashed else None)

    @property
    def plain(self) -> bool:
        """An uncompressed layer: nothing goes to the sink; its diffID is its digest."""
        return self._format == "plain"

    def _start(self, prefix: bytes) -> Decompressor:
        looks = describe_magic(prefix)
        expected = self._format
        magic = {"gzip": GZIP_MAGIC, "zstd": ZSTD_MAGIC}.get(expected)
        if magic is not None and len(prefix) < len(magic) and magic.startswith(prefix):
            looks = expected  # too short to tell; the decompressor reports it cut short
        if (expected != "plain" and looks != expected) or (
            expected == "plain" and looks in ("gzip", "zstd", "bzip2", "xz")
        ):
            shown = "plain tar" if expected == "plain" else expected
            raise DecompressError(
                f"layer {self._digest} has media type {self._media_type} ({shown}) but its "
                f"bytes are {looks}; the image's manifest mislabels this layer",
                ref=self._ref,
                digest=self._digest,
            )
        step = self._limits.inflate_step_bytes
        if expected == "gzip":
            return Gunzip(self._output, step=step, impl=inflater(self._limits.gzip_inflater))
        if expected == "zstd":
            return Unzstd(self._output, step=step, max_window=self._limits.max_zstd_window_bytes)
        return _Plain(self._count)

    def _count(self, data: bytes) -> None:
        self._size += len(data)

    def _output(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._cap:
            raise DecompressError(
                f"layer {self._digest} inflates to more than {self._cap} bytes from "
                f"{self._compressed_size} compressed (limits: "
                f"{self._limits.max_compression_ratio}x the compressed size, "
                f"{self._limits.max_layer_uncompressed_bytes} bytes); refused as a likely "
                f"decompression bomb. If you trust this image, raise the ratio "
                f"(--max-inflate-ratio; Limits.max_compression_ratio) or the size "
                f"(Limits.max_layer_uncompressed_bytes)",
                ref=self._ref,
                digest=self._digest,
            )
        self._sink(data)

    def _corrupt(self, detail: str) -> DecompressError:
        return DecompressError(
            f"layer {self._digest} ({self._media_type}) cannot be decompressed: {detail}",
            ref=self._ref,
            digest=self._digest,
        )


class _Plain:
    """An uncompressed tar: only counted; its diffID is its digest."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def update(self, data: bytes) -> None:
        self._sink(data)

    def finish(self) -> None:
        return None
