"""stages/_codec.py on generated data: every format, every way a stream can be bad."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import tarfile
import tracemalloc
import types
import zlib

import pytest
import xxhash
import zstandard

from stages import _codec
from stages._codec import (
    BlobHasher,
    Gunzip,
    LayerDecoder,
    Unzstd,
    available_inflaters,
    describe_magic,
    inflater,
)
from stages._config import Limits
from stages._errors import DecompressError, Truncated, UsageError
from stages._types import MediaType

GZ = MediaType.OCI_LAYER_GZIP
ZST = MediaType.OCI_LAYER_ZSTD
TAR = MediaType.OCI_LAYER
MiB = 1 << 20


def make_tar(seed: int = 0, files: int = 6, size: int = 200_000) -> bytes:
    """A real tar of compressible-but-not-trivial files (text-like bytes)."""
    rng = random.Random(seed)
    words = [
        bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz_", k=rng.randint(2, 12))) for _ in range(500)
    ]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(files):
            body = b" ".join(rng.choices(words, k=size // 7))[:size]
            info = tarfile.TarInfo(f"dir/file{i}.txt")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


TAR_BYTES = make_tar()
TAR_SHA = hashlib.sha256(TAR_BYTES).hexdigest()


def decode(media_type: str, blob: bytes, chunk: int = MiB, limits: Limits | None = None):
    decoder = LayerDecoder(
        media_type, len(blob), limits or Limits(), ref="reg.test/app:1", digest="sha256:ab"
    )
    for i in range(0, len(blob), chunk):
        decoder.update(blob[i : i + chunk])
    return decoder.finish()


def zstd_frame(data: bytes, **kwargs: object) -> bytes:
    return zstandard.ZstdCompressor(**kwargs).compress(data)  # type: ignore[arg-type]


# --- gzip -----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 4096, MiB])
def test_gzip_single_member(chunk: int) -> None:
    blob = gzip.compress(TAR_BYTES if chunk > 100 else TAR_BYTES[:30_000])
    want = TAR_BYTES if chunk > 100 else TAR_BYTES[:30_000]
    decoded = decode(GZ, blob, chunk)
    assert decoded.size == len(want)
    assert decoded.diff_id == hashlib.sha256(want).hexdigest()


@pytest.mark.parametrize("name", available_inflaters())
def test_every_inflater_gives_the_same_results(name: str) -> None:
    limits = Limits(gzip_inflater=name)
    parts = [TAR_BYTES[:300_000], TAR_BYTES[300_000:]]
    blob = b"".join(gzip.compress(part) for part in parts)
    decoded = decode(GZ, blob, 4096, limits)
    assert (decoded.size, decoded.diff_id) == (len(TAR_BYTES), TAR_SHA)
    with pytest.raises(Truncated, match="cut short"):
        decode(GZ, blob[:-9], 4096, limits)
    corrupt = bytearray(gzip.compress(TAR_BYTES))
    corrupt[len(corrupt) // 2] ^= 0xFF
    with pytest.raises(DecompressError, match="cannot be decompressed"):
        decode(GZ, bytes(corrupt), 4096, limits)


@pytest.mark.parametrize("name", available_inflaters())
@pytest.mark.parametrize("member", [1, 2])
def test_reserved_gzip_header_flags_are_refused_by_every_inflater(name: str, member: int) -> None:
    """RFC 1952 forbids FLG bits 5-7; zlib refused them and ISA-L took them, so the same
    layer pulled or not by which inflater was installed. Refused before either sees it,
    in a first member or a later one, whole or split inside the header."""
    data = TAR_BYTES[:50_000]
    flagged = bytearray(gzip.compress(data))
    flagged[3] |= 0x20
    blob = gzip.compress(data) + bytes(flagged) if member == 2 else bytes(flagged)
    start = len(blob) - len(flagged)
    for cut in (start + 2, start + 4, len(blob)):
        decoder = LayerDecoder(GZ, len(blob), Limits(gzip_inflater=name), ref="r", digest="d")
        with pytest.raises(DecompressError, match=rf"member {member} sets reserved header flags"):
            decoder.update(blob[:cut])
            decoder.update(blob[cut:])
            decoder.finish()


@pytest.mark.parametrize("name", available_inflaters())
@pytest.mark.parametrize("field", ["crc", "isize"])
def test_a_wrong_gzip_trailer_is_named_as_such_by_every_inflater(name: str, field: str) -> None:
    # ISA-L said "Incorrect checksum found" of a wrong length, which is no checksum; it
    # cannot tell which check failed, and the message says so.
    data = TAR_BYTES[:50_000]
    blob = bytearray(gzip.compress(data))
    blob[-8 if field == "crc" else -4] ^= 0x01
    decoder = LayerDecoder(GZ, len(blob), Limits(gzip_inflater=name), ref="r", digest="d")
    what = "CRC-32" if field == "crc" else r"length \(ISIZE\)"
    with pytest.raises(DecompressError, match=rf"a gzip member is corrupt: its .*{what}"):
        decoder.update(bytes(blob))
        decoder.finish()


def gzip_with_every_header_field(data: bytes) -> bytes:
    """A gzip member whose header has FEXTRA, FNAME, FCOMMENT and a header CRC (FHCRC):
    valid RFC 1952, though neither Go's nor GNU gzip's writer sets FHCRC."""
    header = b"\x1f\x8b\x08" + bytes([0x02 | 0x04 | 0x08 | 0x10]) + b"\0\0\0\0\0\xff"
    header += (6).to_bytes(2, "little") + b"AB\x02\0xy" + b"layer.tar\0" + b"made here\0"
    header += (zlib.crc32(header) & 0xFFFF).to_bytes(2, "little")
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = deflate.compress(data) + deflate.flush()
    trailer = zlib.crc32(data).to_bytes(4, "little") + len(data).to_bytes(4, "little")
    return header + body + trailer


@pytest.mark.parametrize("name", available_inflaters())
def test_a_full_gzip_header_decodes_however_the_network_splits_it(name: str) -> None:
    # ISA-L failed ("Incorrect checksum") when a header with FHCRC arrived in pieces:
    # 31 of the 32 split points inside this header, per the exploratory pass.
    data = TAR_BYTES[:50_000]
    blob = gzip_with_every_header_field(data) * 2  # two members: the second header too
    member = len(blob) // 2
    limits = Limits(gzip_inflater=name)
    for cut in [*range(1, 40), *range(member - 5, member + 40)]:
        decoder = LayerDecoder(GZ, len(blob), limits, ref="reg.test/app:1", digest="sha256:ab")
        decoder.update(blob[:cut])
        decoder.update(blob[cut:])
        decoded = decoder.finish()
        assert decoded.diff_id == hashlib.sha256(data * 2).hexdigest(), cut
    with pytest.raises(Truncated, match="member 2"):
        decode(GZ, blob[: member + 20], 7, limits)  # ends inside the second header


def test_isal_is_the_default_inflater_and_others_are_refused() -> None:
    # isal is a dependency and zlib-ng a test dependency; the fastest measured comes first
    assert available_inflaters() == ("isal", "zlib-ng", "zlib")
    assert inflater("auto") is inflater("isal")
    assert inflater("zlib") is zlib
    assert inflater("zlib-ng").__name__ == "zlib_ng.zlib_ng"
    with pytest.raises(UsageError, match="'libdeflate' is not available here; choose one of"):
        inflater("libdeflate")


def test_a_broken_inflater_is_skipped_by_auto_and_named_when_chosen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # isal's package is there, its module is not: as after a half-removed install
    monkeypatch.setitem(_codec._INFLATER_MODULES, "isal", "isal.no_such_module")
    inflater.cache_clear()
    try:
        assert inflater("auto").__name__ == "zlib_ng.zlib_ng"  # the next fastest
        with pytest.raises(UsageError, match="'isal' is installed but broken: No module"):
            inflater("isal")
    finally:
        inflater.cache_clear()


@pytest.mark.parametrize("chunk", [1, 5, 1000, MiB])
def test_gzip_multi_member(chunk: int) -> None:
    parts = [TAR_BYTES[:500_000], b"", TAR_BYTES[500_000:700_000], TAR_BYTES[700_000:]]
    if chunk < 100:
        parts = [p[:3000] for p in parts]
    blob = b"".join(gzip.compress(p) for p in parts)
    decoded = decode(GZ, blob, chunk)
    assert decoded.diff_id == hashlib.sha256(b"".join(parts)).hexdigest()
    assert decoded.size == sum(map(len, parts))


def test_a_chunk_of_many_tiny_members_reaches_the_inflater_in_bounded_pieces() -> None:
    # A member's end copies the rest of the input it was handed (unused_data): handed a
    # 1 MiB chunk of 20-byte members, the inflater copied up to 1 MiB for each, and a
    # 20 MB layer of them took 19 s. The inputs are recorded through zlib itself.
    handed: list[int] = []

    class Member:
        def __init__(self, wbits: int) -> None:
            self._inner = zlib.decompressobj(wbits=wbits)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            handed.append(len(data))
            return self._inner.decompress(data, max_length)

        def __getattr__(self, name: str) -> object:  # eof, unused_data, unconsumed_tail
            return getattr(self._inner, name)

    impl = types.SimpleNamespace(__name__="recording", error=zlib.error, decompressobj=Member)
    out = io.BytesIO()
    gunzip = Gunzip(out.write, step=MiB, impl=impl)  # type: ignore[arg-type]
    gunzip.update(gzip.compress(b"a") + gzip.compress(b"b"))  # a layer of members
    gunzip.update(gzip.compress(b"", mtime=0) * (MiB // 20) + gzip.compress(b"c"))
    gunzip.finish()
    assert out.getvalue() == b"abc"
    # Pieces of 64 KiB, one perhaps with the start of a member's header held over.
    assert max(handed) <= 64 * 1024 + 20


def test_gzip_output_comes_in_bounded_steps() -> None:
    pieces: list[int] = []
    gunzip = Gunzip(lambda b: pieces.append(len(b)), step=64 * 1024)
    gunzip.update(gzip.compress(b"\0" * (5 * MiB)))  # one small input, lots of output
    gunzip.finish()
    assert sum(pieces) == 5 * MiB
    assert max(pieces) <= 64 * 1024


@pytest.mark.parametrize("cut", [1, 2, 10, 500, -9, -8, -4, -1])
def test_gzip_truncated(cut: int) -> None:
    blob = gzip.compress(TAR_BYTES)
    with pytest.raises(Truncated, match="cut short") as info:
        decode(GZ, blob[:cut])
    assert "reg.test/app:1" in str(info.value) and "sha256:ab" in str(info.value)


def test_gzip_truncated_second_member() -> None:
    blob = gzip.compress(TAR_BYTES[:1000]) + gzip.compress(TAR_BYTES[1000:])
    with pytest.raises(Truncated, match="member 2"):
        decode(GZ, blob[:-3])


def test_gzip_empty_stream() -> None:
    with pytest.raises(Truncated, match="empty"):
        decode(GZ, b"")


def test_gzip_bad_crc() -> None:
    blob = bytearray(gzip.compress(TAR_BYTES))
    blob[-8] ^= 0x01  # CRC32 is the 4 bytes before ISIZE
    with pytest.raises(DecompressError, match="cannot be decompressed"):
        decode(GZ, bytes(blob))


def test_gzip_bad_isize() -> None:
    blob = bytearray(gzip.compress(TAR_BYTES))
    blob[-1] ^= 0x01
    with pytest.raises(DecompressError, match="cannot be decompressed"):
        decode(GZ, bytes(blob))


@pytest.mark.parametrize("garbage", [b"\0\0\0\0", b"junk after", b"\x1f\x00zzz"])
def test_gzip_trailing_garbage(garbage: bytes) -> None:
    with pytest.raises(DecompressError):
        decode(GZ, gzip.compress(TAR_BYTES) + garbage)


def test_gzip_corrupt_deflate_data() -> None:
    blob = bytearray(gzip.compress(TAR_BYTES))
    for i in range(100, 120):
        blob[i] ^= 0xFF
    with pytest.raises(DecompressError):
        decode(GZ, bytes(blob))


# --- zstd -----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3, 4096, MiB])
def test_zstd_single_frame(chunk: int) -> None:
    data = TAR_BYTES if chunk > 100 else TAR_BYTES[:40_000]
    decoded = decode(ZST, zstd_frame(data, write_checksum=True), chunk)
    assert decoded.diff_id == hashlib.sha256(data).hexdigest()
    assert decoded.size == len(data)


@pytest.mark.parametrize("chunk", [1, 6, 1000, MiB])
def test_zstd_multi_frame_with_skippable(chunk: int) -> None:
    parts = [TAR_BYTES[:300_000], b"", TAR_BYTES[300_000:]]
    if chunk < 100:
        parts = [p[:5000] for p in parts]
    skippable = b"\x5a\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"hello"
    blob = (
        zstd_frame(parts[0], write_checksum=True)
        + skippable
        + zstd_frame(parts[1], write_content_size=False)
        + zstd_frame(parts[2], level=1, write_content_size=False, write_checksum=False)
    )
    decoded = decode(ZST, blob, chunk)
    assert decoded.diff_id == hashlib.sha256(b"".join(parts)).hexdigest()


def test_zstd_streamed_frame_without_content_size() -> None:
    compressor = zstandard.ZstdCompressor(level=3).compressobj()
    blob = b"".join(
        compressor.compress(TAR_BYTES[i : i + 65536]) for i in range(0, len(TAR_BYTES), 65536)
    )
    blob += compressor.flush()
    assert decode(ZST, blob, 100_000).diff_id == TAR_SHA


def test_zstd_output_is_complete_and_bounded_for_any_split() -> None:
    """zstandard's stream_writer must flush everything and never exceed write_size."""
    rng = random.Random(7)
    for _ in range(40):
        data = TAR_BYTES[: rng.randint(0, len(TAR_BYTES))] + b"\0" * rng.randint(0, 2 * MiB)
        blob = zstd_frame(data, level=rng.choice([1, 3, 9]))
        step = rng.choice([1000, 65536, 100_000, 131072, MiB])
        pieces: list[bytes] = []
        unzstd = Unzstd(pieces.append, step=step, max_window=128 * MiB)
        pos = 0
        while pos < len(blob):
            n = rng.choice([1, 13, 4096, MiB])
            unzstd.update(blob[pos : pos + n])
            pos += n
        unzstd.finish()
        assert b"".join(pieces) == data
        # Never over the step, nor over zstd's own output size (Unzstd: cache-sized).
        assert all(len(p) <= min(step, 128 * 1024) for p in pieces)


@pytest.mark.parametrize("cut", [1, 4, 5, 9, 100, -5, -4, -1])
def test_zstd_truncated(cut: int) -> None:
    blob = zstd_frame(TAR_BYTES, write_checksum=True)
    with pytest.raises(Truncated, match="cut short"):
        decode(ZST, blob[:cut])


def test_zstd_truncated_last_frame() -> None:
    blob = zstd_frame(TAR_BYTES[:1000]) + zstd_frame(TAR_BYTES[1000:])
    with pytest.raises(Truncated, match="frame 2"):
        decode(ZST, blob[:-10])


def test_zstd_empty_stream() -> None:
    with pytest.raises(Truncated, match="empty"):
        decode(ZST, b"")


def test_zstd_corrupt_frame() -> None:
    blob = bytearray(zstd_frame(TAR_BYTES, write_checksum=True))
    middle = len(blob) // 2
    for i in range(middle, middle + 16):
        blob[i] ^= 0x55
    with pytest.raises(DecompressError, match="cannot be decompressed"):
        decode(ZST, bytes(blob))


def test_zstd_reserved_block_type() -> None:
    frame = bytearray(zstd_frame(b"abc" * 1000, write_content_size=False, write_checksum=False))
    frame[6] |= 0b110  # first block header (after magic, descriptor, window byte): type 3
    with pytest.raises(DecompressError, match="reserved"):
        decode(ZST, bytes(frame))


def test_zstd_trailing_garbage() -> None:
    with pytest.raises(DecompressError, match="not a zstd frame"):
        decode(ZST, zstd_frame(TAR_BYTES) + b"garbage!")


def test_zstd_huge_window_refused() -> None:
    params = zstandard.ZstdCompressionParameters(window_log=28, compression_level=3)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
    blob = compressor.compress(TAR_BYTES) + compressor.flush()
    assert zstandard.get_frame_parameters(blob).window_size == 256 * MiB
    with pytest.raises(DecompressError, match="window"):
        decode(ZST, blob)
    # under a limit that allows it, the same frame decodes
    assert decode(ZST, blob, limits=Limits(max_zstd_window_bytes=256 * MiB)).diff_id == TAR_SHA


def _raw_block(content: bytes, *, last: bool = False) -> bytes:
    """A raw zstd block holding ``content``."""
    return (len(content) << 3 | last).to_bytes(3, "little") + content


def test_zstd_runs_of_empty_blocks_are_walked_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each empty block is a 3-byte header (4 with an RLE block's byte) that the header
    # walk took one Python step to read: a layer of them went at 7 MB/s. Counted in steps
    # of the walk, not timed.
    empty = b"\x00\x00\x00"  # raw, size 0, not the last
    empty_rle = b"\x02\x00\x00A"  # RLE of "A", 0 times, not the last
    runs = (empty * 50_000 + empty_rle * 50_000) * 2
    frame = (
        _codec.ZSTD_MAGIC
        + b"\x00\x38"  # no content size, no checksum; a 128 KiB window
        + runs
        + _raw_block(TAR_BYTES[:5000])
        + runs
        + _raw_block(TAR_BYTES[5000:10000], last=True)
    )
    steps = 0
    advance = _codec._ZstdFrames._advance

    def counted(self: _codec._ZstdFrames, field: memoryview) -> None:
        nonlocal steps
        steps += 1
        advance(self, field)

    monkeypatch.setattr(_codec._ZstdFrames, "_advance", counted)
    decoded = decode(ZST, frame)
    assert decoded.diff_id == hashlib.sha256(TAR_BYTES[:10000]).hexdigest()
    # magic, descriptor, window, two blocks with content, and a step or so per run cut by
    # a chunk's end or by a change of kind (one per 1 MiB chunk)
    assert steps < 50, steps
    # cut anywhere, the same bytes decode the same
    monkeypatch.setattr(_codec._ZstdFrames, "_advance", advance)
    assert decode(ZST, frame, chunk=7).diff_id == decoded.diff_id


def test_zstd_window_limit_is_also_enforced_by_zstd() -> None:
    """The library's own max_window_size holds even if our header walk let a frame by."""
    params = zstandard.ZstdCompressionParameters(window_log=22, compression_level=3)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
    blob = compressor.compress(TAR_BYTES) + compressor.flush()
    unzstd = Unzstd(lambda b: None, step=MiB, max_window=8 * MiB)
    unzstd._frames._max_window = 1 << 40  # disarm the header check
    unzstd._writer = zstandard.ZstdDecompressor(max_window_size=1 * MiB).stream_writer(
        io.BytesIO(), closefd=False
    )
    with pytest.raises(zstandard.ZstdError):
        unzstd.update(blob)


# --- plain tar, media type vs bytes ------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3, MiB])
def test_plain_tar_passthrough(chunk: int) -> None:
    data = TAR_BYTES if chunk > 100 else TAR_BYTES[:3000]
    decoded = decode(TAR, data, chunk)
    assert decoded.size == len(data)
    assert decoded.diff_id is None  # the diffID of a plain layer is its digest


def test_plain_tar_empty_is_fine() -> None:
    assert decode(TAR, b"").size == 0


@pytest.mark.parametrize(
    ("media_type", "blob", "looks"),
    [
        (GZ, zstd_frame(TAR_BYTES), "zstd"),
        (GZ, TAR_BYTES, "a plain tar"),
        (ZST, gzip.compress(TAR_BYTES), "gzip"),
        (ZST, TAR_BYTES, "a plain tar"),
        (TAR, gzip.compress(TAR_BYTES), "gzip"),
        (TAR, zstd_frame(TAR_BYTES), "zstd"),
        (MediaType.DOCKER_LAYER_GZIP, b"BZh91AY&SY" + b"\0" * 100, "bzip2"),
    ],
)
def test_media_type_and_magic_mismatch(media_type: str, blob: bytes, looks: str) -> None:
    with pytest.raises(DecompressError) as info:
        decode(media_type, blob)
    message = str(info.value)
    assert media_type in message and f"bytes are {looks}" in message


def test_unknown_media_type() -> None:
    with pytest.raises(DecompressError, match="not one imagec-pipe can decompress"):
        LayerDecoder("application/x-rar", 10, Limits(), ref="r", digest="d")


def test_describe_magic() -> None:
    assert describe_magic(b"\x1f\x8b\x08\x00") == "gzip"
    assert describe_magic(b"\x28\xb5\x2f\xfd") == "zstd"
    assert describe_magic(b"\x5f\x2a\x4d\x18") == "zstd"
    assert describe_magic(b"\xfd7zXZ\x00\x00") == "xz"
    assert describe_magic(TAR_BYTES[:512]) == "a plain tar"
    assert describe_magic(b"") == "empty"
    assert "0102" in describe_magic(b"\x01\x02\x03\x04")


# --- bombs and caps ---------------------------------------------------------------------


def test_gzip_bomb_refused_in_bounded_memory() -> None:
    member = gzip.compress(b"\0" * MiB, compresslevel=9)  # ~1 KiB per MiB of zeros
    bomb = member * 200  # 200 MiB of zeros in ~200 KB, ratio ~1000
    tracemalloc.start()
    try:
        with pytest.raises(DecompressError, match="decompression bomb") as info:
            decode(GZ, bomb, limits=Limits(max_compression_ratio=100))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB
    # What to raise, for a CLI user and a library caller alike (the CLI had no option).
    assert info.value.message.endswith(
        "If you trust this image, raise the ratio (--max-inflate-ratio;"
        " Limits.max_compression_ratio) or the size (Limits.max_layer_uncompressed_bytes)"
    )


def test_gzip_bomb_single_member_default_limits() -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b"\0" * MiB
    bomb = b"".join(compressor.compress(zeros) for _ in range(200)) + compressor.flush()
    assert len(bomb) * 1000 < 200 * MiB  # gzip's ratio on zeros is just over 1000
    tracemalloc.start()
    try:
        with pytest.raises(DecompressError, match="decompression bomb"):
            decode(GZ, bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB


def test_zstd_bomb_refused_in_bounded_memory() -> None:
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    zeros = b"\0" * MiB
    bomb = b"".join(compressor.compress(zeros) for _ in range(256)) + compressor.flush()
    tracemalloc.start()
    try:
        with pytest.raises(DecompressError, match="decompression bomb"):
            decode(ZST, bomb)  # one update: all of it in a single chunk
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB


def test_absolute_uncompressed_cap() -> None:
    with pytest.raises(DecompressError, match="more than 100000 bytes"):
        decode(GZ, gzip.compress(TAR_BYTES), limits=Limits(max_layer_uncompressed_bytes=100_000))


def test_small_layers_get_at_least_one_step_of_output() -> None:
    """A tiny gzip of a sparse file is not a bomb: the ratio cap has a floor of one step."""
    blob = gzip.compress(b"\0" * (2 * MiB))
    assert len(blob) * 1000 < 2 * MiB
    assert decode(GZ, blob).size == 2 * MiB


# --- deferred errors ---------------------------------------------------------------------


def test_errors_are_kept_for_finish() -> None:
    decoder = LayerDecoder(GZ, 100, Limits(), ref="r", digest="d")
    decoder.update(b"not gzip at all")
    decoder.update(gzip.compress(b"more"))  # ignored: the first error stands
    with pytest.raises(DecompressError, match="bytes are uncompressed"):
        decoder.finish()
    with pytest.raises(DecompressError):
        decoder.finish()


def test_short_first_chunks_are_collected_for_the_magic_check() -> None:
    blob = gzip.compress(TAR_BYTES)
    decoder = LayerDecoder(GZ, len(blob), Limits(), ref="r", digest="d")
    decoder.update(blob[:1])
    decoder.update(blob[1:2])
    decoder.update(blob[2:3])
    decoder.update(blob[3:])
    assert decoder.finish().diff_id == TAR_SHA


def test_stream_of_one_gzip_byte_is_truncated() -> None:
    with pytest.raises(Truncated):
        decode(GZ, b"\x1f")


# --- the compressed side ---------------------------------------------------------------


def test_blob_hasher() -> None:
    hasher = BlobHasher()
    for i in range(0, len(TAR_BYTES), 100_000):
        hasher.update(TAR_BYTES[i : i + 100_000])
    sums = hasher.finish()
    assert sums.size == len(TAR_BYTES)
    assert sums.sha256 == TAR_SHA
    assert sums.xxh3 == xxhash.xxh3_128_hexdigest(TAR_BYTES)


def test_zstd_every_cut_inside_a_frame_is_truncated() -> None:
    frames = [
        zstd_frame(TAR_BYTES[:3000], write_checksum=True),
        b"\x50\x2a\x4d\x18" + (3).to_bytes(4, "little") + b"abc",
        zstd_frame(b"", write_content_size=False),
        zstd_frame(TAR_BYTES[3000:9000], level=1, write_content_size=False),
    ]
    blob = b"".join(frames)
    boundaries = {0}
    for frame in frames:
        boundaries.add(max(boundaries) + len(frame))
    for cut in range(1, len(blob)):
        if cut in boundaries:
            decode(ZST, blob[:cut])  # a shorter but well-formed stream
        else:
            with pytest.raises(Truncated):
                decode(ZST, blob[:cut], chunk=max(1, cut // 3))
