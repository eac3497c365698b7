"""The store against real files and a real SQLite database (tmp_path).

Images are built here from generated files (a real gzip'd tar layer), their layers
committed through ``open_ingest`` / ``commit_layer`` as a pull would, then recorded.
skopeo and umoci, where installed, check that the result is an OCI layout they read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import gzip
import hashlib
import io
import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import xxhash
from structlog.testing import capture_logs

from pipeline import _oci, _store
from pipeline._store import SCHEMA_VERSION, Store
from stages._errors import StoreError, UsageError
from stages._events import LayerTimings, VerifiedLayer
from stages._manifest import ResolvedImage
from stages._reference import Reference, parse_reference
from stages._types import Descriptor, Digest, MediaType, Platform

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")
APP = Reference("127.0.0.1:5000", "team/app", "1.0")
ALPINE = Reference("docker.io", "library/alpine", "latest")
# An OCI manifest naming Docker media types, as some build tools push.
MIXED = Reference("127.0.0.1:5000", "team/mixed", "2.0")


def sha(data: bytes) -> Digest:
    return Digest.from_hex(hashlib.sha256(data).hexdigest())


def make_layer(files: dict[str, bytes]) -> tuple[bytes, bytes]:
    """A tar of ``files`` and its gzip, both deterministic."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return raw, gzip.compress(raw, mtime=0)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=3).encode()


def build_image(
    ref: Reference,
    *,
    docker: bool = False,
    content: bytes = b"hello\n",
    platform: Platform = AMD64,
    with_index: bool = False,
    config_type: str | None = None,
    layer_type: str | None = None,
) -> tuple[ResolvedImage, list[tuple[bytes, VerifiedLayer]]]:
    """A one-layer image as resolve_image would return it, plus its layer bytes.

    ``config_type`` and ``layer_type`` override the media types ``docker`` gives (an OCI
    manifest naming Docker types, as some build tools push)."""
    raw, gz = make_layer({"hello.txt": content})
    layer_type = layer_type or (MediaType.DOCKER_LAYER_GZIP if docker else MediaType.OCI_LAYER_GZIP)
    layer = Descriptor(layer_type, sha(gz), len(gz))
    config_bytes = dumps(
        {
            "architecture": platform.architecture,
            "os": platform.os,
            **({"variant": platform.variant} if platform.variant else {}),
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [str(sha(raw))]},
        }
    )
    config_type = config_type or (MediaType.DOCKER_CONFIG if docker else MediaType.OCI_CONFIG)
    config = Descriptor(config_type, sha(config_bytes), len(config_bytes))
    manifest_type = MediaType.DOCKER_MANIFEST if docker else MediaType.OCI_MANIFEST
    manifest_bytes = dumps(
        {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config.to_json(),
            "layers": [layer.to_json()],
        }
    )
    manifest_digest = sha(manifest_bytes)
    index_bytes = index_type = None
    resolved_digest = manifest_digest
    if with_index:
        index_type = MediaType.OCI_INDEX
        index_bytes = dumps(
            {
                "schemaVersion": 2,
                "mediaType": index_type,
                "manifests": [
                    Descriptor(
                        manifest_type, manifest_digest, len(manifest_bytes), platform=platform
                    ).to_json()
                ],
            }
        )
        resolved_digest = sha(index_bytes)
    resolved = ResolvedImage(
        ref=ref,
        resolved_digest=resolved_digest,
        index_bytes=index_bytes,
        index_media_type=index_type,
        manifest_digest=manifest_digest,
        manifest_media_type=manifest_type,
        manifest_bytes=manifest_bytes,
        platform=platform,
        config=config,
        config_bytes=config_bytes,
        layers=(layer,),
        diff_ids=(sha(raw),),
    )
    verified = VerifiedLayer(
        descriptor=layer,
        diff_id=sha(raw),
        uncompressed_size=len(raw),
        xxh3=xxhash.xxh3_128_hexdigest(gz),
        timings=LayerTimings(),
    )
    return resolved, [(gz, verified)]


def commit(store: Store, gz: bytes, layer: VerifiedLayer) -> None:
    with store.open_ingest(layer.descriptor.digest) as ingest:
        ingest.write(gz[:10])
        ingest.write(memoryview(gz)[10:])
        ingest.sync()
        store.commit_layer(ingest, layer)


def pull_into(store: Store, ref: Reference, **kwargs: Any) -> ResolvedImage:
    resolved, layers = build_image(ref, **kwargs)
    for gz, layer in layers:
        if not store.layer_committed(layer.descriptor.digest):
            commit(store, gz, layer)
    store.record_image(resolved)
    return resolved


def read_index(store: Store) -> dict[str, Any]:
    index = json.loads((store.path / "index.json").read_bytes())
    assert isinstance(index, dict)
    return index


def entries_by_name(store: Store) -> dict[str, dict[str, Any]]:
    return {
        m["annotations"][_oci.REF_NAME_ANNOTATION]: m
        for m in read_index(store)["manifests"]
        if _oci.REF_NAME_ANNOTATION in m.get("annotations", {})
    }


def assert_blobs_verified(store: Store) -> None:
    """The store's promise: every file in blobs/ hashes to its name."""
    for blob in (store.path / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def ingest_files(store: Store) -> list[str]:
    return sorted(os.listdir(store.path / "ingest"))


# -- opening ---------------------------------------------------------------------------


def test_layout_created(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "a" / "store")
    root = tmp_path / "a" / "store"
    assert store.path == root
    assert json.loads((root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    assert read_index(store) == {
        "schemaVersion": 2,
        "mediaType": MediaType.OCI_INDEX,
        "manifests": [],
    }
    assert (root / "blobs" / "sha256").is_dir()
    assert (root / "ingest").is_dir()
    with sqlite3.connect(root / "imagec.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert {"layers", "images", "image_layers", "refs", "repo_digests"} <= tables
    # Opening again keeps what is there.
    pull_into(store, APP)
    again = Store.open(root)
    assert [r.ref for r in again.list_images()] == [str(APP)]


def test_open_default_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEC_PIPE_STORE", str(tmp_path / "from-env"))
    assert Store.open().path == tmp_path / "from-env"
    monkeypatch.delenv("IMAGEC_PIPE_STORE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Store.open().path == tmp_path / "xdg" / "imagec-pipe" / "store"


def test_empty_directory_and_interrupted_creation_accepted(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    Store.open(tmp_path / "empty")
    half = tmp_path / "half"
    (half / "blobs").mkdir(parents=True)
    (half / "imagec.db").write_bytes(b"")
    store = Store.open(half)
    assert (store.path / "oci-layout").exists()


def test_refuses_newer_schema(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    conn = sqlite3.connect(store.path / "imagec.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this imagec-pipe understands") as info:
        Store.open(tmp_path / "s")
    assert str(tmp_path / "s") in str(info.value)


def test_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="is not an imagec-pipe store"):
        Store.open(tmp_path / "docs")
    assert os.listdir(tmp_path / "docs") == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        Store.open(tmp_path / "file")


def test_refuses_corrupt_database(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    for name in os.listdir(store.path):
        if name.startswith("imagec.db"):
            (store.path / name).unlink()
    (store.path / "imagec.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="damaged"):
        Store.open(tmp_path / "s")


# -- ingest and layers -------------------------------------------------------------------


def test_ingest_removed_on_failure(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    _, [(gz, layer)] = build_image(APP)
    digest = layer.descriptor.digest
    with pytest.raises(RuntimeError), store.open_ingest(digest) as ingest:
        ingest.write(gz[:5])
        assert ingest.path.parent == store.path / "ingest"
        assert ingest_files(store) == [ingest.path.name]
        raise RuntimeError("digest mismatch, say")
    assert ingest_files(store) == []
    assert not store.layer_committed(digest)
    assert list((store.path / "blobs" / "sha256").iterdir()) == []


def test_commit_visible_only_after_commit_layer(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    _, [(gz, layer)] = build_image(APP)
    digest = layer.descriptor.digest
    blob = store.path / "blobs" / "sha256" / digest.hex
    with store.open_ingest(digest) as ingest:
        ingest.write(gz)
        ingest.sync()
        assert ingest.bytes_written == len(gz)
        assert not blob.exists()
        assert not store.layer_committed(digest)
        store.commit_layer(ingest, layer)
        assert blob.read_bytes() == gz
        assert store.layer_committed(digest)
    assert blob.exists()
    assert ingest_files(store) == []
    assert store.read_blob(digest) == gz
    # A blob without its row, or of the wrong size, is not a committed layer.
    blob.unlink()
    assert not store.layer_committed(digest)


def test_open_removes_ingest_files_nobody_holds_and_keeps_the_held_ones(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    hexpart = "ab" * 32
    # Whatever pid a name carries: a process in another PID namespace (a container) has
    # a pid that means nothing here, and a container's pull is often pid 1. The lock is
    # what tells a live writer: a file of a live pid was kept for ever, and a live
    # download of another namespace, its pid unknown here, was removed.
    stale = [f"{hexpart}.1.0123abcd.partial", f".index.json.{os.getpid()}.99ff.tmp"]
    stale += [f"{hexpart}.{'9' * 20}.0123abcd.partial", f"{hexpart}.0.0123abcd.partial"]
    for name in [*stale, "unrelated-file"]:
        (store.path / "ingest" / name).write_bytes(b"partial")
    # A download in progress in another process: its writer holds the file's lock.
    held = store.path / "ingest" / f"{hexpart}.{2**22 + 1}.4567cdef.partial"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCKED, str(held)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with store.open_ingest(Digest.from_hex(hexpart)) as ours:  # one of this process's
            Store.open(tmp_path / "s")
            assert ingest_files(store) == sorted([held.name, ours.path.name, "unrelated-file"])
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    Store.open(tmp_path / "s")  # the holder is gone, and the kernel released its lock
    assert ingest_files(store) == ["unrelated-file"]


HOLD_LOCKED = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def test_an_ingest_entry_that_cannot_be_removed_does_not_stop_the_store(tmp_path: Path) -> None:
    # A directory under an ingest file's name (or an immutable file) failed every pull.
    store = Store.open(tmp_path / "s")
    (store.path / "ingest" / f"{'ab' * 32}.{'9' * 20}.0123abcd.partial").mkdir()
    Store.open(tmp_path / "s")


def test_two_ingests_of_one_digest_do_not_clash(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    _, [(gz, layer)] = build_image(APP)
    digest = layer.descriptor.digest
    with store.open_ingest(digest) as one, store.open_ingest(digest) as two:
        assert one.path != two.path
        one.write(gz)
        two.write(gz)
        store.commit_layer(one, layer)  # not synced by the caller: commit syncs
        store.commit_layer(two, layer)  # the blob exists already: same content, fine
    assert store.layer_committed(digest)
    assert ingest_files(store) == []
    assert_blobs_verified(store)


def test_commit_refuses_wrong_size_or_digest(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    _, [(gz, layer)] = build_image(APP)
    digest = layer.descriptor.digest
    with store.open_ingest(digest) as ingest:
        ingest.write(gz[:-1])
        with pytest.raises(StoreError, match=r"holds .* bytes"):
            store.commit_layer(ingest, layer)
    other = Digest.from_hex("0" * 64)
    with store.open_ingest(other) as ingest:
        ingest.write(gz)
        with pytest.raises(StoreError, match="cannot commit ingest"):
            store.commit_layer(ingest, layer)
    assert not store.layer_committed(digest)
    assert list((store.path / "blobs" / "sha256").iterdir()) == []
    assert ingest_files(store) == []


def test_fsync_failure_is_a_store_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store.open(tmp_path / "s")
    _, [(gz, layer)] = build_image(APP)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with store.open_ingest(layer.descriptor.digest, ref="reg.example/app:1") as ingest:
        ingest.write(gz)
        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(StoreError, match="free some disk space") as info:
            ingest.sync()
        monkeypatch.undo()
    assert str(store.path) in str(info.value)
    assert info.value.digest == str(layer.descriptor.digest)
    assert info.value.ref == "reg.example/app:1"
    assert ingest_files(store) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_worker_process_full_disk_is_the_same_store_error() -> None:
    """A layer worker writes its ingest file by path; /dev/full answers every write with
    ENOSPC, as a full disk does. The error is the parent's (what failed, what to do)."""
    from pipeline._workers import _PathIngest

    digest = Digest.parse("sha256:" + "ab" * 32)
    with _PathIngest(Path("/dev/full"), digest, "reg.example/app:1") as ingest:
        with pytest.raises(StoreError, match="free some disk space") as info:
            ingest.write(b"x" * (1 << 20))
        assert (info.value.digest, info.value.ref) == (str(digest), "reg.example/app:1")
        with pytest.raises(StoreError, match="cannot sync a layer"):
            ingest.sync()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_worker_process_ingest_closed_after_a_full_disk_keeps_the_store_error() -> None:
    # A small write waits in the file's buffer; the sync's flush fails, and so did the
    # close on leaving the block, whose bare OSError used to replace the StoreError.
    from pipeline._workers import _PathIngest

    digest = Digest.parse("sha256:" + "ab" * 32)
    with (
        pytest.raises(StoreError, match=r"cannot sync a layer.*free some disk space"),
        _PathIngest(Path("/dev/full"), digest, "reg.example/app:1") as ingest,
    ):
        ingest.write(b"x" * 10)
        ingest.sync()


def test_sqlites_disk_io_error_on_a_nearly_full_disk_says_to_free_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite says "disk I/O error", not "disk full", when its journal cannot grow.
    failure = sqlite3.OperationalError("disk I/O error")
    message = str(_store.store_error(tmp_path, "commit a layer", failure))
    assert "the disk may be full or failing" in message
    monkeypatch.setattr(_store, "NEARLY_FULL_BYTES", 1 << 62)  # every disk is nearly full
    message = str(_store.store_error(tmp_path, "commit a layer", failure))
    assert "disk I/O error; free some disk space" in message


def test_sqlites_full_disk_codes_say_to_free_space_whatever_space_is_left(
    tmp_path: Path,
) -> None:
    # Its shared-memory file could not grow ("disk I/O error": a quota, where the disk
    # itself is far from full), or its log: a full disk, for a removal too.
    for code in (sqlite3.SQLITE_IOERR_SHMSIZE, sqlite3.SQLITE_FULL):
        failure = sqlite3.OperationalError("disk I/O error")
        failure.sqlite_errorcode = code
        message = str(_store.store_error(tmp_path, "commit a layer", failure))
        assert message.endswith("disk I/O error; " + _store._FREE_SPACE)
        message = str(_store.store_error(tmp_path, _store.PRUNE, failure))
        assert message.endswith("disk I/O error; " + _store._FREE_SPACE_TO_REMOVE)
        message = str(_store.store_error(tmp_path, _store.OPEN, failure))
        assert message.endswith("disk I/O error; " + _store._FREE_SPACE_TO_OPEN)


def test_a_lock_held_for_ever_fails_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pull stopped with Ctrl-Z while it held the lock hung every later pull, silently.
    store = Store.open(tmp_path / "s")
    resolved, layers = build_image(APP)
    for gz, layer in layers:
        commit(store, gz, layer)
    monkeypatch.setattr(_store, "LOCK_TIMEOUT_S", 0.5)
    holder = os.open(store.path / "imagec.lock", os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another open file: as another process would
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"held store .*'s lock .* for over 0.5 s"):
            Store.open(tmp_path / "s")
        assert time.monotonic() - started < 5
        # Recording the pulled image waits the same way, and the error names the image.
        with pytest.raises(StoreError, match="lock") as info:
            store.record_image(resolved)
        assert info.value.ref == str(APP)
    finally:
        os.close(holder)
    Store.open(tmp_path / "s")  # released: it opens at once


@pytest.fixture
def lock_held_elsewhere(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A store whose lock another process holds, as a ``gc`` or ``rm`` in progress would:
    the store's path and that process (kill it to let go)."""
    where = tmp_path / "s"
    Store.open(where).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCKED, str(where / "imagec.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        yield where, holder
    finally:
        holder.kill()
        holder.communicate(timeout=30)


@pytest.mark.deadline(60)
async def test_opening_a_store_from_trio_ends_its_wait_for_the_lock_when_cancelled(
    lock_held_elsewhere: tuple[Path, subprocess.Popen[str]],
) -> None:
    """A trio program opening a store that another process holds locked (``gc``, ``rm``)
    could not end the wait: ``Store.open`` blocked the event loop, deadline and all, and
    through ``trio.to_thread.run_sync`` the thread waited out ``LOCK_TIMEOUT_S`` (30 s)
    before the cancel took effect. ``open_async``'s wait ends with its cancel scope,
    whether a deadline or a nursery's cancel, and leaves nothing holding the lock."""
    where, holder = lock_held_elsewhere
    started = trio.current_time()
    with trio.move_on_after(0.5) as waiting:
        await Store.open_async(where)
    assert waiting.cancelled_caught
    # Bounds far from the 30 s a wait that ignored the cancel takes: a loaded machine
    # (the whole suite on 2 cores) must not fail them.
    assert trio.current_time() - started < 10

    async with trio.open_nursery() as nursery:
        nursery.start_soon(Store.open_async, where)
        await trio.sleep(0.3)  # its thread is waiting for the lock
        cancelled_at = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - cancelled_at < 10

    holder.kill()  # lets go of the lock: no thread of ours may take it now and keep it
    await trio.to_thread.run_sync(holder.wait)
    await trio.sleep(5 * _store.LOCK_POLL_S)  # a thread still polling would have it by now
    fd = os.open(where / "imagec.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if one had
    finally:
        os.close(fd)
    with trio.fail_after(10):
        store = await Store.open_async(where)  # free: it opens at once
    with store:
        pull_into(store, APP)
        assert [r.ref for r in store.list_images()] == [str(APP)]


@pytest.mark.deadline(60)
async def test_opening_a_store_from_trio_waits_for_the_lock_without_stopping_the_loop(
    lock_held_elsewhere: tuple[Path, subprocess.Popen[str]],
) -> None:
    """Not cancelled, ``open_async`` waits for the holder, the event loop running on
    meanwhile, and opens the store once it lets go."""
    where, holder = lock_held_elsewhere
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.05)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            opened: list[Store] = []
            done = trio.Event()

            async def open_store() -> None:
                opened.append(await Store.open_async(where))
                done.set()

            nursery.start_soon(open_store)
            await trio.sleep(0.5)
            assert opened == []  # still waiting for the holder
            assert ticks >= 3  # and the loop went on
            holder.kill()
            await done.wait()
            nursery.cancel_scope.cancel()
    with opened[0] as store:
        assert store.list_images() == []


@pytest.mark.deadline(60)
async def test_opening_a_store_from_trio_ends_its_wait_for_the_database_when_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``open_async`` ended its wait for the store's file lock when cancelled, but not
    its first reads of the database: another connection keeping it from being read (a
    rollback journal's writer committing, here) held the thread in SQLite's busy
    handler, which no cancel reaches, for ``BUSY_TIMEOUT_S``. That wait is made in
    slices now, asking trio between them, and leaves the store as it was."""
    where = tmp_path / "s"
    Store.open(where).close()
    monkeypatch.setattr(_store, "BUSY_TIMEOUT_S", 10.0)  # not 30 s: the old code's wait
    holder = sqlite3.connect(where / "imagec.db", isolation_level=None)
    try:
        holder.execute("PRAGMA journal_mode = DELETE")
        holder.execute("BEGIN EXCLUSIVE")
        started = trio.current_time()
        with trio.move_on_after(0.5) as waiting:
            await Store.open_async(where)
        assert waiting.cancelled_caught
        assert trio.current_time() - started < 5  # the old code: the 10 s above
    finally:
        holder.close()
    with trio.fail_after(10):
        store = await Store.open_async(where)  # free: it opens at once
    with store:
        pull_into(store, APP)
        assert [r.ref for r in store.list_images()] == [str(APP)]
        assert (await store.verify_async(full=True))[1] == []
    with contextlib.closing(sqlite3.connect(where / "imagec.db")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


class _Stop(Exception):
    """What a cancelled caller's ``check_cancelled`` raises, here."""


def test_a_database_write_held_for_ever_fails_with_what_to_do_unless_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The wait for another process's write transaction is made in slices (so that a
    # cancel can end it), up to the same limit and with the same error as before.
    store = Store.open(tmp_path / "s")
    resolved, layers = build_image(APP)
    monkeypatch.setattr(_store, "BUSY_TIMEOUT_S", 1.0)
    holder = sqlite3.connect(store.path / "imagec.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process writing
        started = time.monotonic()
        with pytest.raises(StoreError, match="kept the store's database busy for over 1 s"):
            commit(store, *layers[0])
        assert time.monotonic() - started < 10
        # Asked between the slices, with no transaction begun: raising ends the wait.
        calls: list[None] = []

        def check_cancelled() -> None:
            calls.append(None)
            if len(calls) == 3:
                raise _Stop

        gz, layer = layers[0]
        with store.open_ingest(layer.descriptor.digest) as ingest, pytest.raises(_Stop):
            ingest.write(gz)
            store.commit_layer(ingest, layer, check_cancelled=check_cancelled)
        assert len(calls) == 3
        assert not store.layer_committed(layer.descriptor.digest)  # the blob, not its row
    finally:
        holder.close()
    for gz, layer in layers:  # the database is free: nothing was left half-done
        commit(store, gz, layer)
    store.record_image(resolved, check_cancelled=check_cancelled)
    assert store.find_image(str(APP)) is not None
    assert store.verify(full=True)[1] == []


@contextlib.contextmanager
def _database_kept_from_readers(db: Path, how: str) -> Iterator[None]:
    """Another connection (of this process) keeping ``db`` from being read, as other
    tools may: a writer committing to a rollback journal (``journal_mode=DELETE``, which
    a store nobody has open may be switched to), or a WAL connection in exclusive locking
    mode. WAL readers wait for no other writer."""
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        if how == "rollback-journal-writer":
            holder.execute("PRAGMA journal_mode = DELETE")
            holder.execute("BEGIN EXCLUSIVE")
        else:
            holder.execute("PRAGMA locking_mode = EXCLUSIVE")
            holder.execute("BEGIN IMMEDIATE")  # takes the lock, kept after the COMMIT
            holder.execute("COMMIT")
        yield
    finally:
        holder.close()


_KEPT_FROM_READERS = ["rollback-journal-writer", "exclusive-wal-connection"]


def _holds_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open."""
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                    return True
    return False


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.parametrize("how", _KEPT_FROM_READERS)
@pytest.mark.deadline(90)
def test_ctrl_c_ends_images_waiting_to_read_the_database(tmp_path: Path, how: str) -> None:
    """``imagec-pipe images`` (``open_existing``, then its reads) waited for a connection
    keeping the database from being read in SQLite's own busy handler, which sleeps
    through signals: a Ctrl-C took effect only after ``BUSY_TIMEOUT_S`` (30 s). Its reads
    wait in slices now (``Store._read``), and Ctrl-C ends the wait at once, exit 130."""
    where = tmp_path / "s"
    with Store.open(where) as store:
        pull_into(store, APP)
    with _database_kept_from_readers(where / _store.DB_FILE, how):
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline._cli", "images", "--store", str(where)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            started = time.monotonic()
            while not _holds_open(proc.pid, where / _store.DB_FILE):  # and waits to read it
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() - started < 30, "the command never opened the database"
                time.sleep(0.05)
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            # Far from the 30 s the old wait took, and far from a loaded machine's moment.
            out, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130, err
    assert err.endswith("imagec-pipe: interrupted\n")
    assert out == ""
    with Store.open(where) as store:  # nothing was left half-done
        assert [r.ref for r in store.list_images()] == [str(APP)]


def _stop_at_third_ask(asked: list[None]) -> None:
    """A ``check_cancelled`` whose caller is cancelled by its third ask (``asked``)."""
    asked.append(None)
    if len(asked) == 3:
        raise _Stop


def _closed_store_and_its_cancellable_calls(
    tmp_path: Path,
) -> tuple[Store, ResolvedImage, Digest, dict[str, Callable[[Any], object]]]:
    """A store holding APP, and ALPINE's layers but not ALPINE, closed: nothing of ours
    keeps its database open (a switch of journal needs that). With it: ALPINE to record,
    the digest of a layer to commit, and each call that takes ``check_cancelled``, by
    name, to make with one."""
    store = Store.open(tmp_path / "s")
    pull_into(store, APP)
    resolved, layers = build_image(ALPINE, content=b"alpine\n")
    for gz, layer in layers:
        commit(store, gz, layer)
    new_gz, new_layer = build_image(MIXED, content=b"mixed\n")[1][0]
    store.close()

    def commit_new(check_cancelled: Any) -> None:
        with store.open_ingest(new_layer.descriptor.digest) as ingest:
            ingest.write(new_gz)
            store.commit_layer(ingest, new_layer, check_cancelled=check_cancelled)

    calls: dict[str, Callable[[Any], object]] = {
        "commit_layer": commit_new,
        "record_image": lambda cc: store.record_image(resolved, check_cancelled=cc),
        "verify": lambda cc: store.verify(check_cancelled=cc),
        "remove_images": lambda cc: store.remove_images([str(APP)], check_cancelled=cc),
        "prune": lambda cc: store.prune(check_cancelled=cc),
        "committed_layer": lambda cc: store.committed_layer(
            layers[0][1].descriptor.digest, check_cancelled=cc
        ),
    }
    return store, resolved, new_layer.descriptor.digest, calls


@pytest.mark.parametrize("how", _KEPT_FROM_READERS)
@pytest.mark.deadline(90)
def test_reads_waiting_for_the_database_end_when_cancelled(tmp_path: Path, how: str) -> None:
    """The calls that take ``check_cancelled`` asked it while waiting for a write
    transaction (``_transaction``), but not while their reads waited for a connection
    keeping the database from being read: the connection's first statement reads the
    schema, ``record_image`` and ``verify`` read before anything else, a pull's
    ``committed_layer`` only reads. Each held its thread for ``BUSY_TIMEOUT_S`` (30 s)
    whatever ``check_cancelled`` said. Now each ends after the third ask."""
    store, resolved, _, calls = _closed_store_and_its_cancellable_calls(tmp_path)
    with _database_kept_from_readers(store.path / _store.DB_FILE, how):
        for name, call in calls.items():
            asked: list[None] = []
            started = time.monotonic()
            with pytest.raises(_Stop):
                call(functools.partial(_stop_at_third_ask, asked))
            # Far from the 30 s the old wait took.
            assert time.monotonic() - started < 10, name
            assert len(asked) == 3, name
    # The database is free: nothing was left half-done, and everything goes on.
    with Store.open(store.path) as reopened:
        assert [r.ref for r in reopened.list_images()] == [str(APP)]
        reopened.record_image(resolved)
        assert {r.ref for r in reopened.list_images()} == {str(APP), str(ALPINE)}
        assert reopened.verify(full=True)[1] == []


def test_write_blob_checks_digest(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    data = b'{"hello": "world"}'
    with pytest.raises(StoreError, match="hash to"):
        store.write_blob(sha(b"something else"), data)
    assert list((store.path / "blobs" / "sha256").iterdir()) == []
    store.write_blob(sha(data), data)
    store.write_blob(sha(data), data)  # idempotent
    assert store.read_blob(sha(data)) == data
    with pytest.raises(StoreError, match="missing"):
        store.read_blob(sha(b"absent"))
    assert ingest_files(store) == []


@pytest.mark.deadline(90)
def test_writes_waiting_for_a_rollback_journals_reader_end_when_cancelled(
    tmp_path: Path,
) -> None:
    """A write transaction's BEGIN IMMEDIATE waited in slices, but in a rollback journal
    (another tool may switch a store nobody has open to one) it takes only the lock
    that keeps other writers out: the COMMIT then waited for every reader to end, in
    SQLite's own busy handler, which no cancel reaches, for ``BUSY_TIMEOUT_S``. The
    transaction begins EXCLUSIVE now, so that BEGIN, made in slices, is its only wait;
    and a cancel there leaves nothing changed (``remove_images`` wrote index.json before
    its COMMIT)."""
    store, resolved, new_digest, every_call = _closed_store_and_its_cancellable_calls(tmp_path)
    writes = ("commit_layer", "record_image", "remove_images", "prune")
    calls = {name: every_call[name] for name in writes}
    index_before = (store.path / _store.INDEX_FILE).read_bytes()
    reader = sqlite3.connect(store.path / _store.DB_FILE, isolation_level=None)
    try:
        reader.execute("PRAGMA journal_mode = DELETE")
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM layers").fetchone()  # a read under way
        for name, call in calls.items():
            asked: list[None] = []
            # The old code began at once (BEGIN IMMEDIATE waits for no reader), then
            # waited out the busy timeout in its COMMIT, unasked: "database is locked".
            with pytest.raises(_Stop):
                call(functools.partial(_stop_at_third_ask, asked))
            assert len(asked) == 3, name
    finally:
        reader.close()
    assert (store.path / _store.INDEX_FILE).read_bytes() == index_before
    assert not store.layer_committed(new_digest)  # its blob, not its row
    # The database is free: everything goes on, with the rollback journal too.
    assert [r.ref for r in store.list_images()] == [str(APP)]
    store.record_image(resolved)
    assert {r.ref for r in store.list_images()} == {str(APP), str(ALPINE)}
    store.remove_images([str(APP)])
    assert [r.ref for r in store.list_images()] == [str(ALPINE)]
    assert store.verify(full=True)[1] == []
    with contextlib.closing(sqlite3.connect(store.path / _store.DB_FILE)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)


# -- images ----------------------------------------------------------------------------


def test_record_oci_image(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    resolved = pull_into(store, APP)
    [entry] = read_index(store)["manifests"]
    assert entry == {
        "mediaType": MediaType.OCI_MANIFEST,
        "digest": str(resolved.manifest_digest),
        "size": len(resolved.manifest_bytes),
        "annotations": {_oci.REF_NAME_ANNOTATION: "127.0.0.1:5000/team/app:1.0"},
        "platform": {"os": "linux", "architecture": "amd64"},
    }
    assert store.read_blob(resolved.manifest_digest) == resolved.manifest_bytes
    assert store.read_blob(resolved.config.digest) == resolved.config_bytes
    [record] = store.list_images()
    assert record.ref == "127.0.0.1:5000/team/app:1.0"
    assert record.repository == "127.0.0.1:5000/team/app"
    assert record.tag == "1.0"
    assert record.resolved_digest == resolved.manifest_digest
    assert record.manifest_digest == resolved.manifest_digest
    assert record.oci_manifest_digest == resolved.manifest_digest
    assert record.image_id == resolved.config.digest
    assert record.platform == AMD64
    assert record.size == resolved.config.size + resolved.layers[0].size
    assert record.media_type == MediaType.OCI_MANIFEST
    assert record.pulled_at.tzinfo is not None
    [layer] = store.image_layers(record)
    assert layer.digest == resolved.layers[0].digest
    assert layer.diff_id == resolved.diff_ids[0]
    assert layer.size == resolved.layers[0].size
    assert layer.uncompressed_size is not None and layer.uncompressed_size > layer.size // 2
    assert layer.media_type == MediaType.OCI_LAYER_GZIP
    assert layer.xxh3 == xxhash.xxh3_128_hexdigest(store.read_blob(layer.digest))
    assert_blobs_verified(store)


def test_record_docker_image_lists_converted_manifest(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    resolved = pull_into(store, ALPINE, docker=True, platform=ARM64)
    [entry] = read_index(store)["manifests"]
    assert entry["mediaType"] == MediaType.OCI_MANIFEST
    assert entry["digest"] != str(resolved.manifest_digest)
    assert entry["platform"] == {"os": "linux", "architecture": "arm64", "variant": "v8"}
    assert entry["annotations"] == {
        _oci.REF_NAME_ANNOTATION: "docker.io/library/alpine:latest",
        _oci.ORIGINAL_DIGEST_ANNOTATION: str(resolved.manifest_digest),
    }
    converted_bytes = store.read_blob(Digest.parse(entry["digest"]))
    assert entry["size"] == len(converted_bytes)
    converted = json.loads(converted_bytes)
    assert converted == {
        "schemaVersion": 2,
        "mediaType": MediaType.OCI_MANIFEST,
        "config": {
            "mediaType": MediaType.OCI_CONFIG,
            "digest": str(resolved.config.digest),
            "size": resolved.config.size,
        },
        "layers": [
            {
                "mediaType": MediaType.OCI_LAYER_GZIP,
                "digest": str(resolved.layers[0].digest),
                "size": resolved.layers[0].size,
            }
        ],
        "annotations": {_oci.ORIGINAL_DIGEST_ANNOTATION: str(resolved.manifest_digest)},
    }
    # The registry's own bytes stay under the registry's digest.
    assert store.read_blob(resolved.manifest_digest) == resolved.manifest_bytes
    [record] = store.list_images()
    assert record.manifest_digest == resolved.manifest_digest
    assert record.oci_manifest_digest == Digest.parse(entry["digest"])
    assert record.media_type == MediaType.DOCKER_MANIFEST
    assert [la.media_type for la in store.image_layers(record)] == [MediaType.DOCKER_LAYER_GZIP]
    # Pulling it again gives the same converted manifest (deterministic bytes).
    pull_into(store, ALPINE, docker=True, platform=ARM64)
    assert [m["digest"] for m in read_index(store)["manifests"]] == [entry["digest"]]
    assert_blobs_verified(store)


@pytest.mark.parametrize(
    ("config_type", "layer_type"),
    [
        (MediaType.DOCKER_CONFIG, MediaType.DOCKER_LAYER_GZIP),
        (MediaType.DOCKER_CONFIG, MediaType.OCI_LAYER_GZIP),
        (MediaType.OCI_CONFIG, MediaType.DOCKER_LAYER_GZIP),
    ],
    ids=["docker-config-and-layers", "docker-config", "docker-layers"],
)
def test_record_oci_manifest_naming_docker_media_types_lists_converted_manifest(
    tmp_path: Path, config_type: str, layer_type: str
) -> None:
    # It listed the registry's manifest as it was: skopeo took the Docker config for an
    # artifact's and umoci refused it, and a Docker layer type too.
    store = Store.open(tmp_path / "s")
    types = {"config_type": config_type, "layer_type": layer_type}
    resolved = pull_into(store, APP, **types)
    assert resolved.manifest_media_type == MediaType.OCI_MANIFEST
    [entry] = read_index(store)["manifests"]
    assert entry["mediaType"] == MediaType.OCI_MANIFEST
    assert entry["digest"] != str(resolved.manifest_digest)
    assert entry["annotations"] == {
        _oci.REF_NAME_ANNOTATION: "127.0.0.1:5000/team/app:1.0",
        _oci.ORIGINAL_DIGEST_ANNOTATION: str(resolved.manifest_digest),
    }
    converted_bytes = store.read_blob(Digest.parse(entry["digest"]))
    assert entry["size"] == len(converted_bytes)
    converted = json.loads(converted_bytes)
    assert converted["config"] == {
        "mediaType": MediaType.OCI_CONFIG,
        "digest": str(resolved.config.digest),
        "size": resolved.config.size,
    }
    assert converted["layers"] == [
        {
            "mediaType": MediaType.OCI_LAYER_GZIP,
            "digest": str(resolved.layers[0].digest),
            "size": resolved.layers[0].size,
        }
    ]
    assert converted["annotations"] == {
        _oci.ORIGINAL_DIGEST_ANNOTATION: str(resolved.manifest_digest)
    }
    assert store.read_blob(resolved.manifest_digest) == resolved.manifest_bytes
    [record] = store.list_images()
    assert record.media_type == MediaType.OCI_MANIFEST
    assert record.manifest_digest == resolved.manifest_digest
    assert record.oci_manifest_digest == Digest.parse(entry["digest"])
    assert [la.media_type for la in store.image_layers(record)] == [layer_type]
    # Recorded again: the same converted manifest, and the reference named it already.
    resolved, _ = build_image(APP, **types)
    assert store.record_image(resolved).unchanged
    assert read_index(store)["manifests"] == [entry]
    assert_blobs_verified(store)


def test_conversion_of_an_oci_manifest_keeps_what_only_oci_has() -> None:
    original = Digest.from_hex("1" * 64)
    subject = {"mediaType": MediaType.OCI_MANIFEST, "digest": "sha256:" + "4" * 64, "size": 7}
    doc: dict[str, Any] = {  # no mediaType: OCI allows leaving it out
        "schemaVersion": 2,
        "config": {"mediaType": MediaType.DOCKER_CONFIG, "digest": "sha256:" + "2" * 64, "size": 3},
        "layers": [
            {"mediaType": MediaType.OCI_LAYER_ZSTD, "digest": "sha256:" + "3" * 64, "size": 5}
        ],
        "subject": subject,
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }
    data, digest = _oci.to_oci_manifest(json.dumps(doc).encode(), original)
    assert digest == sha(data)
    assert json.loads(data) == {
        "schemaVersion": 2,
        "mediaType": MediaType.OCI_MANIFEST,
        "config": {"mediaType": MediaType.OCI_CONFIG, "digest": "sha256:" + "2" * 64, "size": 3},
        "layers": doc["layers"],
        "subject": subject,
        "annotations": {
            "org.opencontainers.image.created": "2024-01-01T00:00:00Z",
            _oci.ORIGINAL_DIGEST_ANNOTATION: str(original),
        },
    }
    config = Descriptor(MediaType.OCI_CONFIG, original, 3)
    zstd = Descriptor(MediaType.OCI_LAYER_ZSTD, original, 5)
    docker_layer = Descriptor(MediaType.DOCKER_LAYER, original, 5)
    assert not _oci.needs_conversion(MediaType.OCI_MANIFEST, [config, zstd])
    assert _oci.needs_conversion(MediaType.OCI_MANIFEST, [config, zstd, docker_layer])
    assert _oci.needs_conversion(MediaType.DOCKER_MANIFEST, [config, zstd])


def test_conversion_of_foreign_layers_and_rejects() -> None:
    original = Digest.from_hex("1" * 64)
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MediaType.DOCKER_MANIFEST,
        "config": {"mediaType": MediaType.DOCKER_CONFIG, "digest": "sha256:" + "2" * 64, "size": 3},
        "layers": [
            {
                "mediaType": MediaType.DOCKER_FOREIGN_LAYER_GZIP,
                "digest": "sha256:" + "3" * 64,
                "size": 5,
                "urls": ["https://example.invalid/layer"],
            }
        ],
    }
    data, digest = _oci.to_oci_manifest(json.dumps(doc).encode(), original)
    assert digest == sha(data)
    out = json.loads(data)
    assert out["layers"] == [
        {
            "mediaType": MediaType.OCI_LAYER_NONDIST_GZIP,
            "digest": "sha256:" + "3" * 64,
            "size": 5,
            "urls": ["https://example.invalid/layer"],
        }
    ]
    doc["layers"][0]["mediaType"] = "application/x-unknown"
    with pytest.raises(_oci.ConversionError, match="no OCI equivalent"):
        _oci.to_oci_manifest(json.dumps(doc).encode(), original)
    with pytest.raises(_oci.ConversionError, match="not a Docker schema2 or OCI image manifest"):
        _oci.to_oci_manifest(b'{"mediaType": "x"}', original)


def test_record_image_requires_committed_layers(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    resolved, _ = build_image(APP)
    with pytest.raises(StoreError, match="is not committed"):
        store.record_image(resolved)
    assert read_index(store)["manifests"] == []
    assert store.list_images() == []


def test_retag_replaces_entry_and_keeps_others(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    # An entry another tool wrote stays untouched.
    index = read_index(store)
    foreign = {"mediaType": MediaType.OCI_MANIFEST, "digest": "sha256:" + "f" * 64, "size": 1}
    index["manifests"].append(foreign)
    (store.path / "index.json").write_text(json.dumps(index))
    first = pull_into(store, APP, content=b"one\n")
    pull_into(store, ALPINE)
    second = pull_into(store, APP, content=b"two\n")
    assert first.manifest_digest != second.manifest_digest
    manifests = read_index(store)["manifests"]
    assert foreign in manifests
    assert len(manifests) == 3
    entries = entries_by_name(store)
    assert entries[str(APP)]["digest"] == str(second.manifest_digest)
    assert set(entries) == {str(APP), str(ALPINE)}
    records = {r.ref: r for r in store.list_images()}
    assert records[str(APP)].manifest_digest == second.manifest_digest
    assert len(records) == 2


def test_record_image_says_whether_the_reference_named_this_image_already(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path / "s")
    resolved, layers = build_image(APP, content=b"one\n")
    for gz, layer in layers:
        commit(store, gz, layer)
    assert store.record_image(resolved).unchanged is False  # new in the store
    assert store.record_image(resolved).unchanged is True  # the same image again
    # The tag moved to an image made of the same layer (only the platform, so the
    # config, differs): every layer is there, but the reference names another image.
    moved, _ = build_image(APP, content=b"one\n", platform=ARM64)
    assert moved.layers == resolved.layers
    recorded = store.record_image(moved)
    assert recorded.unchanged is False
    assert recorded.record.manifest_digest == moved.manifest_digest


def test_open_never_sees_a_recorded_image_without_its_index_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Store.open repairs index.json from the database. Started in the moment between
    # record_image's database commit and its index.json write, it must wait for the
    # write, not take that moment for an interrupted pull and "repair" it.
    store = Store.open(tmp_path / "s")
    resolved, layers = build_image(APP)
    for gz, layer in layers:
        commit(store, gz, layer)
    openers: list[threading.Thread] = []
    insert = Store._insert_image

    def insert_then_open(self: Store, *args: Any) -> Any:
        before = insert(self, *args)
        opener = threading.Thread(target=Store.open, args=(self.path,))
        opener.start()
        openers.append(opener)
        opener.join(timeout=0.5)  # time enough to repair, if it does not wait
        return before

    monkeypatch.setattr(Store, "_insert_image", insert_then_open)
    with capture_logs() as logs:
        store.record_image(resolved)
        openers[0].join(timeout=30)
    assert not openers[0].is_alive()
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == []
    assert str(APP) in entries_by_name(store)


def test_open_repairs_index_json_left_behind_by_a_crash(tmp_path: Path) -> None:
    # record_image commits the database, then writes index.json: a process killed in
    # between leaves index.json as it was. Simulated by writing the earlier file back.
    store = Store.open(tmp_path / "s")
    pull_into(store, APP, content=b"one\n")
    stale = read_index(store)  # APP at its first image, no ALPINE yet
    foreign = {"mediaType": MediaType.OCI_MANIFEST, "digest": "sha256:" + "f" * 64, "size": 1}
    stale["manifests"].append(foreign)
    second = pull_into(store, APP, content=b"two\n")
    pull_into(store, ALPINE, docker=True, platform=ARM64)
    good = entries_by_name(store)
    (store.path / "index.json").write_text(json.dumps(stale))

    reopened = Store.open(store.path)

    entries = entries_by_name(reopened)
    assert entries == good  # APP at its second image, ALPINE listed, converted, arm64/v8
    assert entries[str(APP)]["digest"] == str(second.manifest_digest)
    assert foreign in read_index(reopened)["manifests"]  # another tool's entry stays
    # Nothing left to repair: opening again does not rewrite the file.
    repaired = (store.path / "index.json").read_bytes()
    Store.open(store.path)
    assert (store.path / "index.json").read_bytes() == repaired


def test_open_relists_an_entry_an_rm_removed_before_its_database_change_failed(
    tmp_path: Path,
) -> None:
    # rm rewrites index.json, then commits its database change: one that failed there
    # (a full disk) or was killed leaves the entry out while the records stay. The next
    # open lists it again, and its warning names that case, not only a pull's.
    store = Store.open(tmp_path / "s")
    pull_into(store, APP, content=b"one\n")
    listed = read_index(store)
    (store.path / "index.json").write_text(json.dumps({**listed, "manifests": []}))
    with capture_logs() as logs:
        reopened = Store.open(store.path)
    assert read_index(reopened) == listed
    (warning,) = [entry for entry in logs if entry["log_level"] == "warning"]
    assert "an rm that failed or was killed before its database change" in warning["event"]
    assert warning["refs"] == [str(APP)]


def test_a_pull_whose_index_entry_finds_no_room_records_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full disk refused the new index.json after the rows were committed: the pull
    # failed ("cannot record an image"), and yet `images` listed its image, which OCI
    # tools could not see. Now the file is written before the rows, renamed after.
    store = Store.open(tmp_path / "s")
    first = pull_into(store, APP, content=b"one\n")
    listed = (store.path / "index.json").read_bytes()
    create_locked = _store._create_locked

    def no_room_for_index_json(make_path: Callable[[], Path], mode: int) -> tuple[Path, int]:
        path, fd = create_locked(make_path, mode)
        if ".index.json." in path.name:
            os.close(fd)
            path.unlink()
            raise OSError(errno.ENOSPC, "No space left on device")
        return path, fd

    monkeypatch.setattr(_store, "_create_locked", no_room_for_index_json)
    with pytest.raises(StoreError, match="cannot record an image"):
        pull_into(store, APP, content=b"two\n")
    monkeypatch.undo()

    assert [r.manifest_digest for r in store.list_images()] == [first.manifest_digest]
    assert (store.path / "index.json").read_bytes() == listed
    assert ingest_files(store) == []
    with capture_logs() as logs:
        Store.open(store.path)  # nothing to repair
    assert [e for e in logs if e["log_level"] == "warning"] == []


def test_an_rm_whose_database_change_fails_puts_index_json_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rm rewrites index.json, then commits: a COMMIT refused by a full disk left the
    # entry out of index.json while the database kept the image, until some later open.
    store = Store.open(tmp_path / "s")
    pull_into(store, APP, content=b"one\n")
    pull_into(store, ALPINE, docker=True, platform=ARM64)
    listed = (store.path / "index.json").read_bytes()
    blobs = sorted(p.name for p in (store.path / "blobs" / "sha256").iterdir())
    transaction = _store._transaction

    @contextlib.contextmanager
    def commit_refused(conn: sqlite3.Connection, *args: Any) -> Iterator[None]:
        with transaction(conn, *args):
            yield
            raise sqlite3.OperationalError("database or disk is full")  # rolled back

    monkeypatch.setattr(_store, "_transaction", commit_refused)
    with pytest.raises(StoreError, match="database or disk is full"):
        store.remove_images([str(APP)])
    monkeypatch.undo()

    assert (store.path / "index.json").read_bytes() == listed
    assert sorted(r.ref for r in store.list_images()) == sorted([str(APP), str(ALPINE)])
    assert sorted(p.name for p in (store.path / "blobs" / "sha256").iterdir()) == blobs
    assert ingest_files(store) == []  # the kept index.json is gone
    with capture_logs() as logs:
        Store.open(store.path)
    assert [e for e in logs if e["log_level"] == "warning"] == []


def test_layers_are_made_durable_by_their_image_record_not_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each commit_layer fsynced blobs/ and its WAL commit: 80 fsyncs for a 40-layer image.
    store = Store.open(tmp_path / "s")
    resolved, layers = build_image(APP)
    synced_dirs: list[Path] = []
    real_fsync_dir = _store._fsync_dir
    monkeypatch.setattr(_store, "_fsync_dir", lambda p: (synced_dirs.append(p), real_fsync_dir(p)))
    for gz, layer in layers:
        commit(store, gz, layer)
        assert store.layer_committed(layer.descriptor.digest)
    assert synced_dirs == []
    store.record_image(resolved)
    assert synced_dirs[0] == store.path / "blobs" / "sha256"  # before the image's rows


def test_layer_commits_leave_the_log_unfolded_until_the_store_is_closed(tmp_path: Path) -> None:
    """Closing the last connection to a WAL database checkpoints it (two fdatasyncs);
    each commit closed its own connection, so each one checkpointed. The store now holds
    one idle connection until close(): the commits stay in the log, which every reader
    sees, and close() folds it into the database."""
    wal = tmp_path / "s" / "imagec.db-wal"
    with Store.open(tmp_path / "s") as store:
        resolved, layers = build_image(APP)
        for gz, layer in layers:
            commit(store, gz, layer)
        store.record_image(resolved)
        assert wal.exists() and wal.stat().st_size > 0  # not checkpointed and truncated
        reader = Store.open_existing(tmp_path / "s")
        assert reader is not None
        assert [r.manifest_digest for r in reader.list_images()] == [resolved.manifest_digest]
    assert not wal.exists() or wal.stat().st_size == 0
    reopened = Store.open(tmp_path / "s")
    assert [r.manifest_digest for r in reopened.list_images()] == [resolved.manifest_digest]
    reopened.close()
    reopened.close()  # again: harmless
    assert reopened.layer_committed(layers[0][1].descriptor.digest)  # still usable


def test_open_rebuilds_a_deleted_index_json_from_the_database(tmp_path: Path) -> None:
    # It was written anew, empty: OCI tools no longer saw the images `images` listed.
    store = Store.open(tmp_path / "s")
    pull_into(store, APP)
    pull_into(store, ALPINE, docker=True, platform=ARM64)
    good = entries_by_name(store)
    (store.path / "index.json").unlink()

    assert entries_by_name(Store.open(store.path)) == good


def test_open_skips_a_reference_whose_manifest_blob_is_gone(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    pull_into(store, APP)
    entry = entries_by_name(store)[str(APP)]
    (store.path / "blobs" / "sha256" / entry["digest"].removeprefix("sha256:")).unlink()
    (store.path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": []}))

    reopened = Store.open(store.path)  # opens; the entry cannot be listed without its blob

    assert entries_by_name(reopened) == {}


def test_a_store_whose_database_was_deleted_is_refused_not_emptied(tmp_path: Path) -> None:
    """Store.open made a new, empty imagec.db next to the old blobs and index.json: the
    store looked empty, a pull downloaded every layer again, the old blobs were
    nobody's. Both ways of opening now say what happened and what to do, and touch
    nothing."""
    with Store.open(tmp_path / "s") as store:
        pull_into(store, APP)
        pull_into(store, ALPINE, docker=True, platform=ARM64)
    (store.path / "imagec.db").unlink()
    blobs = len(os.listdir(store.path / "blobs" / "sha256"))
    before = sorted(os.listdir(store.path)), _files(store.path)

    for opener in (Store.open, Store.open_existing):
        with pytest.raises(StoreError) as info:
            opener(store.path)
        message = str(info.value)
        assert message.startswith(
            f"store {store.path} has no database imagec.db, but index.json lists 2 images "
            f"and blobs/ holds {blobs} blobs: the database was deleted or moved"
        )
        assert "Put imagec.db back if you can; otherwise move the store aside" in message
        assert message.endswith(f"pull again: {APP} {ALPINE}")
        assert (sorted(os.listdir(store.path)), _files(store.path)) == before


def test_a_store_without_images_or_database_is_still_opened(tmp_path: Path) -> None:
    # Nothing to lose: an empty store whose database went, or whose creation stopped short.
    Store.open(tmp_path / "s").close()
    for name in os.listdir(tmp_path / "s"):
        if name.startswith("imagec.db"):
            (tmp_path / "s" / name).unlink()
    assert Store.open_existing(tmp_path / "s") is None
    with Store.open(tmp_path / "s") as store:
        assert store.list_images() == []


@pytest.mark.parametrize("emptied", ["truncated", "replaced"])
def test_a_store_whose_database_was_emptied_is_refused_not_emptied(
    tmp_path: Path, emptied: str
) -> None:
    """An imagec.db cut to 0 bytes (or swapped for a new, empty SQLite file) has schema
    version 0: ``open`` set the schema up in it as in a new store, and the images in
    index.json and blobs/ were nobody's, as with a deleted database; ``open_existing``
    said "a pull into it upgrades it". Both now refuse it as they refuse a deleted one,
    and touch nothing."""
    with Store.open(tmp_path / "s") as store:
        pull_into(store, APP)
        pull_into(store, ALPINE, docker=True, platform=ARM64)
    for name in os.listdir(store.path):
        if name.startswith("imagec.db-"):
            (store.path / name).unlink()
    if emptied == "truncated":
        (store.path / "imagec.db").write_bytes(b"")
    else:
        (store.path / "imagec.db").unlink()
        sqlite3.connect(store.path / "imagec.db").close()
    blobs = len(os.listdir(store.path / "blobs" / "sha256"))
    before = sorted(os.listdir(store.path)), _files(store.path)

    for opener in (Store.open, Store.open_existing):
        with pytest.raises(StoreError) as info:
            opener(store.path)
        message = str(info.value)
        assert message.startswith(
            f"store {store.path} has an empty database imagec.db (no tables), but index.json "
            f"lists 2 images and blobs/ holds {blobs} blobs: the database file was emptied"
        )
        assert "Put imagec.db back if you can; otherwise move the store aside" in message
        assert message.endswith(f"pull again: {APP} {ALPINE}")
        assert (sorted(os.listdir(store.path)), _files(store.path)) == before


def test_a_store_whose_creation_stopped_before_its_schema_is_opened(tmp_path: Path) -> None:
    # Killed between making imagec.db and committing its schema: nothing pulled yet.
    Store.open(tmp_path / "s").close()
    for name in os.listdir(tmp_path / "s"):
        if name.startswith("imagec.db"):
            (tmp_path / "s" / name).unlink()
    (tmp_path / "s" / "imagec.db").write_bytes(b"")

    assert Store.open_existing(tmp_path / "s") is None
    with Store.open(tmp_path / "s") as store:
        assert store.list_images() == []


def test_a_database_deleted_under_an_open_store_is_not_made_again(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    resolved = pull_into(store, APP)
    (store.path / "imagec.db").unlink()

    with pytest.raises(StoreError, match=r"its database imagec\.db is gone .* put it back"):
        store.list_images()
    with pytest.raises(StoreError, match=r"its database imagec\.db is gone"):
        store.layer_committed(resolved.layers[0].digest)
    assert not (store.path / "imagec.db").exists()
    store.close()


def test_pull_by_digest_and_index(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    tagged = pull_into(store, APP, with_index=True)
    assert tagged.index_bytes is not None
    assert store.read_blob(tagged.resolved_digest) == tagged.index_bytes
    by_digest_ref = Reference(APP.registry, APP.repository, None, tagged.resolved_digest)
    pull_into(store, by_digest_ref, with_index=True)
    name = f"127.0.0.1:5000/team/app@{tagged.resolved_digest}"
    entries = entries_by_name(store)
    assert set(entries) == {str(APP), name}
    assert entries[name]["digest"] == str(tagged.manifest_digest)
    record = store.find_image(name)
    assert record is not None
    assert record.tag is None
    assert record.ref == name
    assert record.resolved_digest == tagged.resolved_digest
    assert record.manifest_digest == tagged.manifest_digest


def test_find_image_takes_an_image_id_prefix_of_any_length_as_docker_does(
    tmp_path: Path,
) -> None:
    # Below 12 digits a prefix found nothing: "no image '213e'".
    store = Store.open(tmp_path / "s")
    app = pull_into(store, APP, with_index=True)
    alpine = pull_into(store, ALPINE, docker=True, content=b"alpine\n")
    ids = {str(APP): app.config.digest.hex, str(ALPINE): alpine.config.digest.hex}
    app_id, alpine_id = ids.values()
    shared = next(n for n, (a, b) in enumerate(zip(app_id, alpine_id, strict=True)) if a != b)

    def found(text: str) -> str | None:
        record = store.find_image(text)
        return None if record is None else record.ref

    for ref, image_id in ids.items():
        for digits in range(shared + 1, 13):
            assert found(image_id[:digits]) == ref
            assert found("sha256:" + image_id[:digits]) == ref
    # A reference of that name comes first, as in docker's lookup: "cafe" may be a
    # repository's name as well as an ID's first digits.
    prefix = ids[str(APP)][: shared + 1]
    named = Reference("docker.io", f"library/{prefix}", "latest")
    pull_into(store, named, content=b"named like an ID\n")
    assert found(prefix) == str(named)
    # What several IDs start with is refused, naming them.
    conn = sqlite3.connect(store.path / "imagec.db")
    clash = "sha256:" + ids[str(APP)][:2] + ids[str(ALPINE)][2:]
    with conn:
        conn.execute(
            "UPDATE images SET config_digest = ? WHERE manifest_digest = ?",
            (clash, str(alpine.manifest_digest)),
        )
    conn.close()
    with pytest.raises(StoreError) as refused:
        store.find_image(ids[str(APP)][:2])
    message = str(refused.value)
    assert message.startswith(f"image ID prefix {ids[str(APP)][:2]} is ambiguous in store ")
    assert "matches 2 images (" in message and message.endswith("); give more digits")
    assert app.config.digest.short in message and Digest.parse(clash).short in message


def test_a_reference_named_like_an_image_id_prefix_of_12_digits_or_more_comes_first(
    tmp_path: Path,
) -> None:
    """``inspect deadbeefcafe`` found the image whose ID starts so before the repository
    of that name, and ``rm`` removed that image instead: 12 digits or more were an ID
    first. Docker's lookup (daemon/images/image.go, GetImage) tries the reference
    first at any length; only a whole ID, bare or ``sha256:``, is an ID alone."""
    store = Store.open(tmp_path / "s")
    app = pull_into(store, APP, with_index=True)
    app_id = app.config.digest.hex

    def found(text: str) -> str | None:
        record = store.find_image(text)
        return None if record is None else record.ref

    named: list[Reference] = []
    for digits in (12, 20, 63):
        prefix = app_id[:digits]
        assert found(prefix) == str(APP)  # no such repository: the ID prefix
        named.append(Reference("docker.io", f"library/{prefix}", "latest"))
        pull_into(store, named[-1], content=f"named like an ID, {digits}\n".encode())
        assert found(prefix) == str(named[-1])
        assert found("sha256:" + prefix) == str(APP)  # no repository sha256 here
    # A whole ID is an ID, even where a reference spells itself the same way.
    spelled_as_id = Reference("docker.io", "library/sha256", app_id)
    pull_into(store, spelled_as_id, content=b"tagged with an ID\n")
    assert found(app_id) == str(APP)
    assert found("sha256:" + app_id) == str(APP)
    assert found(app_id[:63] + ("0" if app_id[63] != "0" else "1")) is None
    # rm of the text removes the reference of that name, not the image of that ID.
    removal = store.remove_images([app_id[:12]])
    assert removal.untagged == (str(named[0]),)
    assert found(str(APP)) == str(APP)
    assert found(app_id[:12]) == str(APP)  # the repository gone, the ID prefix again


def test_find_image_variants(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    app = pull_into(store, APP, with_index=True)
    alpine = pull_into(store, ALPINE, docker=True, content=b"alpine\n")

    def found(text: str) -> str | None:
        record = store.find_image(text)
        return None if record is None else record.ref

    assert found("127.0.0.1:5000/team/app:1.0") == str(APP)
    assert found("docker.io/library/alpine:latest") == str(ALPINE)
    # Image ID: full, with and without sha256:, and a 12-digit prefix.
    image_id = alpine.config.digest
    assert found(str(image_id)) == str(ALPINE)
    assert found(image_id.hex) == str(ALPINE)
    assert found(image_id.hex[:12]) == str(ALPINE)
    assert found("sha256:" + app.config.digest.hex[:12]) == str(APP)
    # Two images whose IDs share the prefix: ambiguous.
    conn = sqlite3.connect(store.path / "imagec.db")
    clash = "sha256:" + app.config.digest.hex[:12] + "0" * 52
    with conn:
        conn.execute(
            "UPDATE images SET config_digest = ? WHERE manifest_digest = ?",
            (clash, str(alpine.manifest_digest)),
        )
    conn.close()
    with pytest.raises(StoreError, match="ambiguous"):
        store.find_image(app.config.digest.hex[:12])
    assert found(app.config.digest.hex[:13]) == str(APP)

    try:
        parse_reference("alpine")
    except NotImplementedError:
        pytest.skip("stages._reference.parse_reference is not written yet")
    assert found("alpine") == str(ALPINE)
    assert found("docker.io/alpine") == str(ALPINE)
    assert found("127.0.0.1:5000/team/app:2.0") is None
    assert found("busybox") is None
    # name@digest finds an image pulled by tag, by its index or its manifest digest.
    for digest in (app.resolved_digest, app.manifest_digest):
        record = store.find_image(f"127.0.0.1:5000/team/app@{digest}")
        assert record is not None
        assert record.manifest_digest == app.manifest_digest
        assert record.ref == f"127.0.0.1:5000/team/app@{digest}"
    assert found(f"alpine@{app.manifest_digest}") is None


def test_threads_recording_concurrently_lose_nothing(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    refs = [Reference("127.0.0.1:5000", f"team/app{i}", "1.0") for i in range(8)]
    errors: list[BaseException] = []

    def work(ref: Reference) -> None:
        try:
            # Each thread its own Store object, as separate pulls would have.
            pull_into(Store.open(tmp_path / "s"), ref, content=ref.repository.encode())
        except Exception as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(ref,)) for ref in refs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert set(entries_by_name(store)) == {str(r) for r in refs}
    assert len(store.list_images()) == len(refs)
    assert_blobs_verified(store)


_CHILD = """
import importlib.util, pathlib, sys, time
spec = importlib.util.spec_from_file_location("store_tests", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
store = mod.Store.open(sys.argv[2])
go = pathlib.Path(sys.argv[2]).parent / "go"
while not go.exists():  # start together, so the writes really overlap
    time.sleep(0.005)
for i in range(int(sys.argv[4])):
    ref = mod.Reference("127.0.0.1:5000", f"team/{sys.argv[3]}{i}", "1.0")
    # A layer shared by both processes, and one of its own.
    mod.pull_into(store, ref, content=b"shared\\n" if i == 0 else ref.repository.encode())
"""


def test_processes_recording_concurrently_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s"
    Store.open(path)
    # The children import what this process imports (the source tree, or under tox the
    # installed wheel), from the same sys.path.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, __file__, str(path), name, "15"],
            env=env,
            stderr=subprocess.PIPE,
        )
        for name in "pqr"
    ]
    (tmp_path / "go").touch()
    for child in children:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err.decode()
    store = Store.open(path)
    expected = {f"127.0.0.1:5000/team/{n}{i}:1.0" for n in "pqr" for i in range(15)}
    assert set(entries_by_name(store)) == expected
    assert {r.ref for r in store.list_images()} == expected
    assert ingest_files(store) == []
    assert_blobs_verified(store)


# -- standard OCI tools read the store ---------------------------------------------------


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def populated(tmp_path: Path) -> Store:
    store = Store.open(tmp_path / "store")
    pull_into(store, APP, content=b"oci image\n")
    pull_into(store, ALPINE, docker=True, content=b"docker image\n")
    pull_into(
        store,
        MIXED,
        content=b"docker types in oci\n",
        config_type=MediaType.DOCKER_CONFIG,
        layer_type=MediaType.DOCKER_LAYER_GZIP,
    )
    app = build_image(APP, content=b"oci image\n")[0]
    by_digest = Reference(APP.registry, APP.repository, None, app.manifest_digest)
    pull_into(store, by_digest, content=b"oci image\n")
    return store


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` but SQLite's own WAL and shared-memory files (which any
    reader of a WAL database may create), with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


def _read_everything(store: Store) -> list[str]:
    records = store.list_images()
    for record in records:
        assert store.find_image(record.ref) == record
        assert store.image_layers(record)
        store.read_blob(record.image_id)
    return sorted(r.ref for r in records)


def test_open_existing_reads_and_changes_nothing(populated: Store) -> None:
    # What Store.open would sweep and repair: a dead process's ingest file, an index.json
    # that lost an entry. Reading must leave both as they are.
    stale = populated.path / "ingest" / f"{'ab' * 32}.{2**22 + 1}.0123abcd.partial"
    stale.write_bytes(b"partial")
    (populated.path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": []}))
    before = _files(populated.path)

    reader = Store.open_existing(populated.path)

    assert reader is not None and reader.read_only
    assert _read_everything(reader) == _read_everything(populated)
    assert _files(populated.path) == before


def _sqlite_side_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.endswith(("-wal", "-shm")))


def test_reading_a_store_leaves_no_wal_or_shm_behind(tmp_path: Path) -> None:
    """A ``mode=ro`` connection creates a WAL database's ``-wal`` and ``-shm`` files and,
    unable to fold the log into the database, never removes them: each ``imagec-pipe
    images`` left both in a store that had none. The reader still changes nothing."""
    with Store.open(tmp_path / "s") as store:
        pull_into(store, APP)
    assert _sqlite_side_files(store.path) == []
    reader = Store.open_existing(store.path)
    assert reader is not None

    assert _read_everything(reader) == [str(APP)]
    assert reader.verify() == (3, [])

    assert _sqlite_side_files(store.path) == []
    with reader._db() as conn, pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("DELETE FROM refs")
    assert _read_everything(reader) == [str(APP)]


def test_a_store_that_lost_only_its_layout_file_is_still_the_store(tmp_path: Path) -> None:
    """``images``, ``verify`` and ``gc`` took a store without ``oci-layout`` for none:
    "no store yet", and verify's "0 blobs checked: none damaged" over a store whose
    database holds an image. It is read as the store it is; the next open writes the
    file again."""
    with Store.open(tmp_path / "s") as store:
        pull_into(store, APP)
    (tmp_path / "s" / "oci-layout").unlink()

    reader = Store.open_existing(tmp_path / "s")

    assert reader is not None
    assert _read_everything(reader) == [str(APP)]
    assert reader.verify() == (3, [])
    assert not (tmp_path / "s" / "oci-layout").exists()  # reading changes nothing
    with Store.open(tmp_path / "s") as store:
        assert [r.ref for r in store.list_images()] == [str(APP)]
    assert json.loads((tmp_path / "s" / "oci-layout").read_bytes()) == {
        "imageLayoutVersion": "1.0.0"
    }


def test_a_damaged_index_json_is_set_aside_and_written_again_from_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An index.json cut short failed every pull, rm and gc, saying to repair it by hand
    or move the store aside (losing every image). The database is the record: opening
    the store to change it keeps the damaged file aside and writes the index again."""
    with Store.open(tmp_path / "s") as store:
        pull_into(store, APP)
    damaged = b'{"schemaVersion": 2, "manifests": ['
    (tmp_path / "s" / "index.json").write_bytes(damaged)
    reader = Store.open_existing(tmp_path / "s")
    assert reader is not None
    with pytest.raises(StoreError, match=r"\(imagec-pipe pull, rm or gc; Store.open\) writes it"):
        reader.verify()

    with Store.open(tmp_path / "s") as store:
        pull_into(store, ALPINE)

    assert set(entries_by_name(store)) == {str(APP), str(ALPINE)}
    assert (tmp_path / "s" / "index.json.damaged").read_bytes() == damaged
    assert "index.json was damaged: set aside and written again" in capsys.readouterr().out
    assert Store.open_existing(tmp_path / "s") is not None


def test_an_index_json_that_is_a_directory_is_set_aside_too(tmp_path: Path) -> None:
    # pull, rm and gc failed on it with "check the store directory" (QA pass).
    with Store.open(tmp_path / "s") as store:
        pull_into(store, APP)
    (tmp_path / "s" / "index.json").unlink()
    (tmp_path / "s" / "index.json").mkdir()

    with Store.open(tmp_path / "s") as store:
        assert list(entries_by_name(store)) == [str(APP)]
    assert (tmp_path / "s" / "index.json.damaged").is_dir()


def test_rm_and_gc_refuse_while_a_damaged_index_json_is_set_aside(tmp_path: Path) -> None:
    """The entries other tools had in a damaged index.json may name blobs nothing else
    names: gc deleted another tool's image (QA pass). Nothing is removed until the user
    has dealt with the file set aside; a second damaged index is set aside beside the
    first, never over it."""
    with Store.open(tmp_path / "s") as store:
        pull_into(store, APP)
    blobs = sorted(p.name for p in (tmp_path / "s" / "blobs" / "sha256").iterdir())
    for n, damaged in enumerate((b"{", b"[1"), start=1):
        (tmp_path / "s" / "index.json").write_bytes(damaged)
        with Store.open(tmp_path / "s") as store:
            with pytest.raises(StoreError, match=r"index.json was damaged and set aside as"):
                store.prune()
            with pytest.raises(StoreError, match=r"entries other tools had in it may name"):
                store.remove_images([str(APP)])
        kept = "index.json.damaged" + ("" if n == 1 else f".{n}")
        assert (tmp_path / "s" / kept).read_bytes() == damaged
    assert (tmp_path / "s" / "index.json.damaged").read_bytes() == b"{"
    assert sorted(p.name for p in (tmp_path / "s" / "blobs" / "sha256").iterdir()) == blobs

    for name in ("index.json.damaged", "index.json.damaged.2"):
        (tmp_path / "s" / name).unlink()
    with Store.open(tmp_path / "s") as store:
        assert store.remove_images([str(APP)]).untagged == (str(APP),)


def test_open_existing_finds_no_store_where_there_is_none(tmp_path: Path) -> None:
    assert Store.open_existing(tmp_path / "missing") is None
    assert not (tmp_path / "missing").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert Store.open_existing(empty) is None
    assert list(empty.iterdir()) == []
    (empty / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="is not an imagec-pipe store"):
        Store.open_existing(empty)
    with pytest.raises(StoreError, match="exists and is not a directory"):
        Store.open_existing(empty / "notes.txt")
    # Below a file: `images`, `verify` and `gc` said "no store yet" and exited 0, where
    # a pull to the same --store failed.
    with pytest.raises(StoreError, match=r"cannot open store .*Not a directory"):
        Store.open_existing(empty / "notes.txt" / "store")


def test_open_existing_refuses_a_schema_it_would_have_to_upgrade(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    with sqlite3.connect(store.path / "imagec.db") as conn:
        conn.execute("PRAGMA user_version = 0")
    with pytest.raises(StoreError, match=r"older than this imagec-pipe's .* a pull into it"):
        Store.open_existing(store.path)


@contextlib.contextmanager
def _read_only_bind(source: Path, target: Path | None = None) -> Iterator[None]:
    """``source`` seen at ``target`` through a read-only bind mount, unmounted afterwards
    (needs root and mount(8)). Without ``target``, over itself: a file so bound is
    unwritable even for root, its directory left writable, as another user's database
    (or one made read-only) is to others."""
    target = source if target is None else target
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only bind mount needs root and mount(8)")
    bound = subprocess.run(
        ["mount", "--bind", str(source), str(target)], capture_output=True, timeout=30
    )
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bound.stderr.decode().strip()}")
    try:
        subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(target)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        yield
    finally:
        unmounted = subprocess.run(["umount", str(target)], capture_output=True, timeout=30)
        if unmounted.returncode != 0:  # never leave a mount behind, which pytest cannot clean
            subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)
            pytest.fail(f"the read-only mount was busy: {unmounted.stderr.decode().strip()}")


@pytest.fixture
def read_only_mount(populated: Store, tmp_path: Path) -> Iterator[Path]:
    """``populated`` seen through a read-only bind mount (``_read_only_bind``)."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    with _read_only_bind(populated.path, mnt):
        try:
            yield mnt
        finally:
            # SQLite keeps a closed connection's file open while another connection of
            # the process holds locks on the same file (POSIX locks are per process and
            # inode): the reader's files through the mount stay open until ``populated``
            # lets go, and the mount cannot be removed before.
            populated.close()


def test_a_store_on_a_read_only_mount_can_be_read(populated: Store, read_only_mount: Path) -> None:
    with pytest.raises(StoreError, match="cannot open store "):
        Store.open(read_only_mount)
    reader = Store.open_existing(read_only_mount)
    assert reader is not None
    assert _read_everything(reader) == _read_everything(populated)


def test_a_closed_store_on_a_read_only_mount_can_be_read(
    populated: Store, read_only_mount: Path
) -> None:
    """With no ``-shm`` file to share (the store closed cleanly) and none to create."""
    listed = _read_everything(populated)
    populated.close()
    assert _sqlite_side_files(read_only_mount) == []
    reader = Store.open_existing(read_only_mount)
    assert reader is not None
    assert _read_everything(reader) == listed


NAMES = [
    ("127.0.0.1:5000/team/app:1.0", b"oci image\n"),
    ("docker.io/library/alpine:latest", b"docker image\n"),
    ("127.0.0.1:5000/team/mixed:2.0", b"docker types in oci\n"),
]


@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed")
def test_umoci_reads_store(populated: Store, tmp_path: Path) -> None:
    listed = _run(["umoci", "ls", "--layout", str(populated.path)], tmp_path)
    assert listed.returncode == 0, listed.stderr
    names = set(listed.stdout.split())
    assert {n for n, _ in NAMES} <= names
    [by_digest] = [n for n in names if "@sha256:" in n]
    for i, (name, content) in enumerate([*NAMES, (by_digest, b"oci image\n")]):
        bundle = tmp_path / f"bundle{i}"
        args = ["umoci", "unpack", "--image", f"{populated.path}:{name}", str(bundle)]
        if os.geteuid() != 0:
            args.insert(2, "--rootless")
        unpacked = _run(args, tmp_path)
        assert unpacked.returncode == 0, unpacked.stderr
        assert (bundle / "rootfs" / "hello.txt").read_bytes() == content


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_reads_store(populated: Store, tmp_path: Path) -> None:
    names = [n for n, _ in NAMES] + [r.ref for r in populated.list_images() if "@sha256:" in r.ref]
    for i, name in enumerate(names):
        out = tmp_path / f"dir{i}"
        copied = _run(
            ["skopeo", "--insecure-policy", "copy", f"oci:{populated.path}:{name}", f"dir:{out}"],
            tmp_path,
        )
        assert copied.returncode == 0, copied.stderr
        manifest = json.loads((out / "manifest.json").read_bytes())
        assert manifest["mediaType"] == MediaType.OCI_MANIFEST
        assert manifest["config"]["mediaType"] == MediaType.OCI_CONFIG
        for layer in manifest["layers"]:
            assert layer["mediaType"] == MediaType.OCI_LAYER_GZIP
            assert (out / Digest.parse(layer["digest"]).hex).exists()
        # A copy to dir: never reads the config; inspect does (and took a Docker one for
        # an artifact's).
        inspected = _run(["skopeo", "inspect", f"oci:{populated.path}:{name}"], tmp_path)
        assert inspected.returncode == 0, inspected.stderr
        assert json.loads(inspected.stdout)["Architecture"] == "amd64"


def test_ingest_starts_writeback_as_it_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every WRITEBACK_STEP_BYTES written, the kernel is asked to start writing them out
    (from the previous step's start on); the bytes on disk are exactly what was written."""
    from pipeline import _store

    step = 64 * 1024
    monkeypatch.setattr(_store, "WRITEBACK_STEP_BYTES", step)
    advised: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        advised.append((offset, length))
        real(fd, offset, length, advice)

    monkeypatch.setattr(_store.os, "posix_fadvise", record)
    write_ingest_in_pieces(Store.open(tmp_path / "s"), os.urandom(5 * step + 100), 10_000)
    ends = [offset + length for offset, length in advised]
    assert len(advised) == (5 * step + 100) // 70_000  # writes of 10 000: steps end at 70 000s
    assert advised[0][0] == 0 and advised[1][0] == 0  # the first step is advised twice
    assert all(b - a >= step for a, b in itertools.pairwise(ends))  # once per step
    assert [offset for offset, _ in advised[2:]] == ends[:-2]  # each from the step before


def test_a_filesystem_refusing_the_writeback_advice_is_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import _store

    def refuse(fd: int, offset: int, length: int, advice: int) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(_store, "WRITEBACK_STEP_BYTES", 4096)
    monkeypatch.setattr(_store.os, "posix_fadvise", refuse)
    write_ingest_in_pieces(Store.open(tmp_path / "s"), os.urandom(50_000), 5000)


def write_ingest_in_pieces(store: Store, data: bytes, piece: int) -> None:
    """Write ``data`` to an ingest file ``piece`` bytes at a time, sync, check the bytes."""
    digest = Digest.from_hex(hashlib.sha256(data).hexdigest())
    with store.open_ingest(digest) as ingest:
        for start in range(0, len(data), piece):
            ingest.write(data[start : start + piece])
        ingest.sync()
        assert ingest.path.read_bytes() == data


# --- the cross-process claim on a layer's download -----------------------------------------

_HOLD_CLAIM = """
import sys, time
from pipeline._store import Store
from stages._types import Digest
claim = Store.open(sys.argv[1]).try_claim_layer(Digest.from_hex(sys.argv[2]))
print("held" if claim is not None else "refused", file=sys.stderr, flush=True)
time.sleep(60)
"""


def _claim_in_another_process(store: Path, digest: Digest) -> subprocess.Popen[str]:
    holder = subprocess.Popen(  # its answer on stderr: the store's logs go to stdout
        [sys.executable, "-c", _HOLD_CLAIM, str(store), digest.hex],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert holder.stderr is not None
    answer = holder.stderr.readline().strip()
    holder.stderr.close()
    assert answer == "held"
    return holder


def test_a_layer_claimed_by_another_process_is_refused_until_it_lets_go_or_dies(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path / "s")
    digest = sha(b"a layer")
    holder = _claim_in_another_process(store.path, digest)
    try:
        assert store.try_claim_layer(digest) is None
        assert store.try_claim_layer(sha(b"another layer")) is not None  # per digest
    finally:
        holder.kill()  # SIGKILL: nothing released by the holder itself
        holder.wait(timeout=30)
    claim = store.try_claim_layer(digest)  # the kernel let go of the dead holder's lock
    assert claim is not None
    assert store.try_claim_layer(digest) is None  # a second Store object in one process too
    claim.release()
    claim.release()  # again: harmless
    assert not claim.path.exists()  # released claims leave no file
    assert store.try_claim_layer(digest) is not None


def test_open_sweeps_an_abandoned_claim_file_but_not_a_held_one(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    abandoned, held = sha(b"abandoned"), sha(b"held")
    (store.path / "ingest" / f"{abandoned.hex}.claim").touch()  # as a killed holder leaves
    holder = _claim_in_another_process(store.path, held)
    try:
        Store.open(tmp_path / "s")
        assert sorted(p.name for p in (store.path / "ingest").iterdir()) == [f"{held.hex}.claim"]
        assert store.try_claim_layer(held) is None
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_taking_a_layer_s_claim_sweeps_the_partials_dead_processes_left_of_it(
    tmp_path: Path,
) -> None:
    # Store.open sweeps ingest/, but a library host keeps its store open: a partial
    # download a killed process left stayed there until the host restarted.
    store = Store.open(tmp_path / "s")
    layer, other = sha(b"layer"), sha(b"other")
    ingest = store.path / "ingest"
    dead = ingest / f"{layer.hex}.4242.0123456789abcdef.partial"  # as a killed pull leaves
    dead.write_bytes(b"half a layer")
    of_other = ingest / f"{other.hex}.4242.0123456789abcdef.partial"
    of_other.write_bytes(b"half another")
    live = ingest / f"{layer.hex}.4343.fedcba9876543210.partial"
    live.write_bytes(b"being written")
    with open(live, "rb") as writer:
        fcntl.flock(writer.fileno(), fcntl.LOCK_EX)  # as a live download holds it

        claim = store.try_claim_layer(layer)

        assert claim is not None
        claim.release()
        assert sorted(p.name for p in ingest.iterdir()) == sorted([of_other.name, live.name])


def _store_with_a_damaged_layer(tmp_path: Path) -> tuple[Store, bytes, Any, Path]:
    """A store holding APP whose first layer's file has the right size and other bytes
    (bit rot): the store, that layer's gzip bytes, the layer and its file."""
    store = Store.open(tmp_path / "s")
    resolved, layers = build_image(APP)
    for gz, layer in layers:
        commit(store, gz, layer)
    store.record_image(resolved)
    (gz, layer), *_ = layers
    path = store.path / "blobs" / "sha256" / layer.descriptor.digest.hex
    path.chmod(0o644)
    path.write_bytes(b"\0" * len(gz))
    return store, gz, layer, path


def test_repair_removes_a_damaged_blob_but_not_a_good_copy_renamed_in_since(
    tmp_path: Path,
) -> None:
    store, gz, layer, path = _store_with_a_damaged_layer(tmp_path)
    checked, damage = store.verify()
    assert [(d.digest, d.kind) for d in damage] == [(layer.descriptor.digest, "layer")]
    assert damage[0].refs == (str(APP),)
    assert checked == len(list(path.parent.iterdir()))

    good = path.with_name("good")  # a pull commits a verified copy by rename meanwhile
    good.write_bytes(gz)
    os.replace(good, path)
    store.remove_damaged(damage)
    assert path.read_bytes() == gz  # left alone: it is not the file found damaged
    assert store.verify()[1] == []

    path.chmod(0o644)
    path.write_bytes(b"\0" * len(gz))
    store.remove_damaged(store.verify()[1])
    assert not path.exists()
    assert not store.layer_committed(layer.descriptor.digest)  # the next pull downloads it


async def test_verify_async_finds_a_damaged_blob_and_sync_verify_is_refused_on_the_loop(
    tmp_path: Path,
) -> None:
    """``verify`` reads every blob, for minutes in a large store, and a trio program had
    only the synchronous form: on the event loop it stopped the loop, pulls and all,
    for as long. It is refused there now, naming ``verify_async``, which finds the same
    damage in the store's own thread, and ``remove_damaged_async`` removes it."""
    store, _gz, layer, path = _store_with_a_damaged_layer(tmp_path)

    with pytest.raises(UsageError) as refused:
        store.verify()
    message = str(refused.value)
    assert "Store.verify() was called from trio's event loop" in message, message
    assert "await store.verify_async(" in message, message

    with trio.fail_after(30):
        checked, damage = await store.verify_async()
        assert [(d.digest, d.kind, d.refs) for d in damage] == [
            (layer.descriptor.digest, "layer", (str(APP),))
        ]
        assert "xxh3 differs" in damage[0].problem
        assert checked == len(list(path.parent.iterdir()))
        _, full = await store.verify_async(full=True)
        assert [(d.digest, d.problem) for d in full] == [
            (layer.descriptor.digest, "content does not hash to its digest (sha256 differs)")
        ]
        await store.remove_damaged_async(damage)
        assert not path.exists()
        _, after = await store.verify_async()  # missing until a pull fetches it again
        assert [(d.digest, d.problem) for d in after] == [(layer.descriptor.digest, "missing")]
    assert not store.layer_committed(layer.descriptor.digest)


@pytest.mark.deadline(60)
async def test_verify_async_ends_between_two_reads_when_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel scope around ``verify_async`` ends it while it reads, not after every blob
    was read: its thread asks between reads (here of one byte each, so that a 32 MiB
    blob takes seconds). Counted, not timed: the reads asked about stop short of the
    blob's bytes (a timed bound failed on a loaded machine, 1.4 s for 1.3)."""
    store = Store.open(tmp_path / "s")
    data = os.urandom(32 << 20)
    store.write_blob(sha(data), data)
    monkeypatch.setattr(_store, "_VERIFY_READ_BYTES", 1)
    asked = 0
    check_cancelled = trio.from_thread.check_cancelled

    def counted() -> None:
        nonlocal asked
        asked += 1
        check_cancelled()

    monkeypatch.setattr(trio.from_thread, "check_cancelled", counted)
    with trio.move_on_after(0.3) as reading:
        await store.verify_async()
    assert reading.cancelled_caught
    assert 0 < asked < len(data)
    monkeypatch.setattr(trio.from_thread, "check_cancelled", check_cancelled)
    monkeypatch.setattr(_store, "_VERIFY_READ_BYTES", 1 << 20)
    with trio.fail_after(30):
        assert await store.verify_async() == (1, [])


def test_verify_finds_an_images_missing_manifest_index_and_config(tmp_path: Path) -> None:
    """Only a missing layer was damage: with an image's config, manifest or index gone
    from blobs/, verify said "none damaged" and exited 0 while ``inspect`` failed on
    the image and OCI tools could not read it. Each is now damage, named with the
    references that need it; the file of a blob removed with its records is not."""
    store = Store.open(tmp_path / "s")
    resolved = pull_into(store, APP, with_index=True)
    other = pull_into(store, ALPINE, docker=True, platform=ARM64)
    assert resolved.index_bytes is not None
    gone = sorted(
        [resolved.config.digest, resolved.manifest_digest, resolved.resolved_digest], key=str
    )
    for digest in gone:
        (store.path / "blobs" / "sha256" / digest.hex).unlink()

    checked, damage = store.verify()

    assert [(d.digest, d.kind, d.problem, d.refs) for d in damage] == [
        (digest, "blob", "missing", (str(APP),)) for digest in gone
    ]
    assert checked == len(list((store.path / "blobs" / "sha256").iterdir()))

    store.remove_images([str(APP)])  # records and files of APP's image go: no damage left
    assert store.verify()[1] == []
    assert [r.ref for r in store.list_images()] == [str(ALPINE)]
    assert store.read_blob(other.config.digest) == other.config_bytes


def test_verify_and_gc_take_what_is_no_regular_file_in_blobs_for_damage_not_a_stop(
    tmp_path: Path,
) -> None:
    # A named pipe named like a digest made verify wait for ever in open(); a directory
    # ended verify and gc with "Is a directory", nothing else checked or removed.
    store = Store.open(tmp_path / "s")
    resolved = pull_into(store, APP)
    blobs = store.path / "blobs" / "sha256"
    pipe, folder, link = (blobs / (c * 64) for c in "abc")
    os.mkfifo(pipe)
    folder.mkdir()
    link.symlink_to(blobs / resolved.config.digest.hex)
    garbage = blobs / ("d" * 64)
    garbage.write_bytes(b"no blob")

    checked, damage = store.verify()

    problems = {d.digest.hex: d.problem for d in damage}
    assert problems == {
        "a" * 64: "a named pipe, not a regular file",
        "b" * 64: "a directory, not a regular file",
        "c" * 64: "a symbolic link, not a regular file",
        "d" * 64: "content does not hash to its digest (sha256 differs)",
    }
    assert checked == len(list(blobs.iterdir()))
    with capture_logs() as logs:
        store.remove_damaged(damage)
    assert sorted(p.name for p in blobs.iterdir() if len(p.name) == 64 and p.name[0] in "abcd") == [
        "b" * 64
    ]
    assert [
        e["path"] for e in logs if e["log_level"] == "warning" and "directory" in e["event"]
    ] == [str(folder)]

    os.mkfifo(pipe)
    with capture_logs() as logs:
        removal = store.prune()
    assert [d.hex for d in removal.deleted_blobs] == ["a" * 64]
    assert folder.is_dir()  # left alone, said, and the rest of the store checked
    assert store.verify()[1][0].problem == "a directory, not a regular file"
    assert [r.ref for r in store.list_images()] == [str(APP)]


@pytest.mark.parametrize(
    "damaged",
    [b'{"schemaVersion": 2, "manifests": [', b"[]", b'{"manifests": 5}', b'{"manifests": {}}'],
)
def test_verify_refuses_an_index_json_that_opening_the_store_writes_again(
    tmp_path: Path, damaged: bytes
) -> None:
    # verify found "none damaged" in a store every command that writes it refused; those
    # commands now write it again from the database, and verify says so.
    with Store.open(tmp_path / "s") as store:
        pull_into(store, APP)
    (store.path / "index.json").write_bytes(damaged)
    reader = Store.open_existing(store.path)
    assert reader is not None

    with pytest.raises(StoreError) as verifying:
        reader.verify()
    assert str(verifying.value).startswith(f"{store.path / 'index.json'} is not ")
    assert "writes it again from the store's database" in str(verifying.value)
    with Store.open(store.path) as store:
        assert list(entries_by_name(store)) == [str(APP)]
    assert (store.path / "index.json.damaged").read_bytes() == damaged
    assert reader.verify()[1] == []


@pytest.mark.parametrize("manifests", ["5", "true", '{"a": 1}', '"text"'])
def test_an_index_json_whose_manifests_are_not_an_array_is_refused(
    tmp_path: Path, manifests: str
) -> None:
    # {"manifests": 5} failed pull and gc with "internal error: TypeError: 'int' object is
    # not iterable"; an object or a string there was replaced by the pull's own entry.
    with Store.open(tmp_path / "s") as store:
        pull_into(store, APP)
    damaged = f'{{"schemaVersion": 2, "manifests": {manifests}}}'.encode()
    (store.path / "index.json").write_bytes(damaged)

    # The store open before the damage refuses to change it; opening it again repairs it.
    with pytest.raises(StoreError, match="its manifests are not a JSON array; opening the"):
        store.prune()
    assert (store.path / "index.json").read_bytes() == damaged
    assert [r.ref for r in store.list_images()] == [str(APP)]
    with Store.open(store.path) as reopened:
        assert list(entries_by_name(reopened)) == [str(APP)]


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ("UPDATE images SET platform = 'garbage'", "platform 'garbage' is not of the form"),
        ("UPDATE images SET config_digest = 'sha256:zz'", "digest 'sha256:zz' is not sha256"),
        ("UPDATE refs SET pulled_at = 'x'", "its time of pulling is 'x'"),
        ("UPDATE refs SET pulled_at = 1e300", "out of range"),
        ("UPDATE images SET size = 'big'", "its size is 'big'"),
        ("UPDATE images SET platform = x'6c696e7578'", "bytes"),
        ("UPDATE images SET config_digest = x'00'", "digest is not a string"),
    ],
)
def test_a_damaged_image_record_is_a_store_error(tmp_path: Path, change: str, detail: str) -> None:
    """A row that no pull writes (a database damaged in place, an edit by hand): a bad
    platform raised UsageError, which the CLI reports as a usage error (exit 2), and a
    bad time or size a TypeError or OverflowError (an "internal error")."""
    with Store.open(tmp_path / "s") as store:
        pull_into(store, APP)
    with sqlite3.connect(store.path / "imagec.db") as conn:
        conn.execute(change)
    conn.close()
    reader = Store.open_existing(store.path)
    assert reader is not None

    for reading in (reader.list_images, lambda: reader.find_image(str(APP))):
        with pytest.raises(StoreError) as info:
            reading()
        assert type(info.value) is StoreError
        message = str(info.value)
        assert message.startswith(f"the record of {APP} in store {store.path} is damaged (")
        assert detail in message
        assert message.endswith(
            "): its database imagec.db was damaged or edited; move the store aside and pull again"
        )


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE images SET config_digest = 'sha256:zz'",
        "UPDATE refs SET resolved_digest = 'md5:0'",
        "UPDATE layers SET digest = 'sha256:' || upper(substr(digest, 8))",
    ],
)
def test_verify_of_a_damaged_digest_record_names_the_database(tmp_path: Path, change: str) -> None:
    # verify reads every digest the records name (the blobs that must be there); one that
    # is none failed with the bare "digest 'sha256:zz' is not sha256 …", saying neither
    # where it came from nor what to do, where images and inspect name the database.
    with Store.open(tmp_path / "s") as store:
        pull_into(store, APP)
    conn = sqlite3.connect(store.path / "imagec.db")
    with conn:
        conn.execute(change)
    conn.close()
    reader = Store.open_existing(store.path)
    assert reader is not None

    with pytest.raises(StoreError) as info:
        reader.verify()

    assert type(info.value) is StoreError
    message = str(info.value)
    assert message.startswith(f"a record in store {store.path} is damaged (digest ")
    assert message.endswith(
        "): its database imagec.db was damaged or edited; move the store aside and pull again"
    )


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ("UPDATE images SET platform = 'garbage'", "platform 'garbage' is not of the form"),
        ("UPDATE images SET oci_manifest_digest = 'sha256:zz'", "digest 'sha256:zz' is not"),
    ],
)
def test_a_damaged_record_whose_index_entry_is_missing_is_a_store_error(
    tmp_path: Path, change: str, detail: str
) -> None:
    # Store.open writes the index.json entry of each reference that lacks one from its
    # record, and read a damaged one unchecked: a bad platform made pull, rm and gc a
    # usage error (exit 2), which ab3e83c had made a StoreError everywhere else.
    with Store.open(tmp_path / "s") as store:
        pull_into(store, APP)
    conn = sqlite3.connect(store.path / "imagec.db")
    with conn:
        conn.execute(change)
    conn.close()
    (store.path / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')

    with pytest.raises(StoreError) as info:
        Store.open(store.path)

    assert type(info.value) is StoreError
    message = str(info.value)
    assert message.startswith(f"the record of {APP} in store {store.path} is damaged (")
    assert detail in message
    assert message.endswith("move the store aside and pull again")


def test_a_full_disk_still_lets_the_store_be_listed(tiny_disk: Path) -> None:
    """A full disk is when a user lists the images to choose what to remove, but a WAL
    database is read only beside a shared-memory file that SQLite then cannot create.
    With no log to replay (a store at rest), the database file holds everything."""
    with Store.open(tiny_disk / "store") as store:
        pull_into(store, APP, content=b"oci image\n")
        expected = store.list_images()
    assert not (tiny_disk / "store" / f"{_store.DB_FILE}-wal").exists()
    # Fill the disk to its last byte.
    with open(tiny_disk / "filler", "wb") as filler, pytest.raises(OSError) as full:
        while True:
            filler.write(b"\0" * 65536)
            filler.flush()
    assert full.value.errno == errno.ENOSPC

    store = Store.open_existing(tiny_disk / "store")
    assert store is not None
    with store:
        assert store.list_images() == expected
        assert store.find_image(str(APP)) == expected[0]
    result = subprocess.run(
        [sys.executable, "-m", "pipeline._cli", "images", "--store", str(tiny_disk / "store")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert str(APP).rsplit(":", 1)[0] in result.stdout

    # Read without locks, a database another process changes meanwhile may look damaged
    # to the read: the advice is to run it again, not at once to move the store aside.
    db_path = tiny_disk / "store" / _store.DB_FILE
    with open(db_path, "r+b") as db:  # in place: no new space
        db.seek(4096)
        db.write(b"\xff" * (db_path.stat().st_size - 4096))
    with pytest.raises(StoreError) as damaged:
        reader = Store.open_existing(tiny_disk / "store")
        assert reader is not None
        reader.list_images()
    assert "read without locks" in str(damaged.value)
    assert "run the command again" in str(damaged.value)


def test_a_store_whose_database_this_user_may_not_write_is_read_as_it_is(
    tiny_disk: Path,
) -> None:
    """A store in a directory this user may write whose database file it may not (another
    user's store in a shared directory, an ``imagec.db`` made read-only) was read through
    ``mode=ro``, which created the ``-wal`` and ``-shm`` files and left them: this user's,
    with the database's mode, so that the store's owner, who may not write them, could
    no longer pull ("attempt to write a readonly database"). On a full disk, where SQLite
    could create neither, ``images`` failed, when the owner's own listing fell back to
    reading the database file as it is. A store at rest (no ``-shm``: nobody has the
    database open; no log to replay) is now read as it is, creating nothing."""
    where = tiny_disk / "store"
    with Store.open(where) as store:
        pull_into(store, APP, content=b"oci image\n")
        expected = store.list_images()
    before = sorted(os.listdir(where))
    assert _sqlite_side_files(where) == []
    with _read_only_bind(where / _store.DB_FILE):
        assert not os.access(where / _store.DB_FILE, os.W_OK) and os.access(where, os.W_OK)
        reader = Store.open_existing(where)
        assert reader is not None
        with reader:
            assert reader.list_images() == expected
            assert reader.verify(full=True) == (3, [])
        assert sorted(os.listdir(where)) == before

        with open(tiny_disk / "filler", "wb") as filler, pytest.raises(OSError) as full:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        assert full.value.errno == errno.ENOSPC
        result = subprocess.run(
            [sys.executable, "-m", "pipeline._cli", "images", "--store", str(where)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert str(APP).rsplit(":", 1)[0] in result.stdout
        assert sorted(os.listdir(where)) == before
    (tiny_disk / "filler").unlink()
    with Store.open(where) as store:  # the owner pulls on
        pull_into(store, ALPINE)
        assert len(store.list_images()) == 2


@pytest.fixture
def unfolded_log(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A store whose log holds its newest image's rows and that has no ``-shm`` file (a
    copy taken while its original was open, without that file), and the references of
    every image it holds."""
    where, refs = _copied_while_open(tmp_path, "copy", shutil.ignore_patterns("*-shm"))
    assert _sqlite_side_files(where) == ["imagec.db-wal"]
    yield where, refs


def _copied_while_open(
    tmp_path: Path, name: str, ignore: Callable[[str, list[str]], set[str]] | None = None
) -> tuple[Path, list[str]]:
    """A copy (``tmp_path / name``, without what ``ignore`` leaves out) of a store taken
    while it was open, whose log holds its newest image's rows; and the references of
    every image it holds."""
    where = tmp_path / name
    with Store.open(tmp_path / "s") as store:
        pull_into(store, APP)
    with Store.open(store.path) as store:  # APP is in the database file now
        pull_into(store, ALPINE, docker=True)  # in the log only, while this one is open
        shutil.copytree(store.path, where, ignore=ignore)
        refs = sorted(r.ref for r in store.list_images())
    assert (where / "imagec.db-wal").stat().st_size > 0
    return where, refs


def _assert_refused_for_its_log(where: Path) -> None:
    with pytest.raises(StoreError) as refused:
        Store.open_existing(where)
    message = str(refused.value)
    assert "imagec.db-wal holds changes not yet in imagec.db" in message
    assert "no imagec.db-shm file" in message
    assert f"imagec-pipe images --store {where}" in message


def test_a_log_that_this_user_may_not_fold_is_not_read_through_a_new_shm_file(
    unfolded_log: tuple[Path, list[str]],
) -> None:
    """A store whose database this user may not write, its directory writable (another
    user's store in a shared directory), with a log holding rows and no ``-shm`` file:
    ``mode=ro`` created that file to read the log with, this user's, and left it behind,
    where the store's owner may not write it. It is refused now, naming the files and
    who can fold the log in; once they have, it is read as any store at rest."""
    where, refs = unfolded_log
    before = sorted(os.listdir(where))
    with _read_only_bind(where / _store.DB_FILE):
        _assert_refused_for_its_log(where)
        assert sorted(os.listdir(where)) == before  # no -shm file left
    reader = Store.open_existing(where)  # the owner's read folds the log in
    assert reader is not None
    assert sorted(r.ref for r in reader.list_images()) == refs
    assert _sqlite_side_files(where) == []
    with _read_only_bind(where / _store.DB_FILE):
        reader = Store.open_existing(where)
        assert reader is not None
        assert sorted(r.ref for r in reader.list_images()) == refs
        assert _sqlite_side_files(where) == []


def test_a_log_on_a_read_only_mount_without_its_shm_file_is_not_left_out(
    unfolded_log: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """The same store through a read-only mount, where no ``-shm`` file can be made: its
    database was read as immutable, without its log, and ``images`` left out the image
    pulled last without a word. It is refused now, as through a writable directory."""
    where, refs = unfolded_log
    mnt = tmp_path / "ro"
    mnt.mkdir()
    with _read_only_bind(where, mnt):
        _assert_refused_for_its_log(mnt)
    with Store.open(where):  # the owner folds the log in
        pass
    with _read_only_bind(where, mnt):
        reader = Store.open_existing(mnt)
        assert reader is not None
        assert sorted(r.ref for r in reader.list_images()) == refs


@pytest.fixture
def snapshot_in_use(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A copy of a store taken while it was open (as a filesystem snapshot is), its
    ``-shm`` file too, whose log holds its newest image's rows; and the references of
    every image it holds."""
    where, refs = _copied_while_open(tmp_path, "snapshot")
    assert _sqlite_side_files(where) == ["imagec.db-shm", "imagec.db-wal"]
    yield where, refs


def _symlinked_shm(where: Path) -> str:
    """An ``-shm`` file that SQLite will not open (it opens it with O_NOFOLLOW), as it
    cannot open one this user may not read; SQLite's reason."""
    (where / "imagec.db-shm").unlink()
    (where / "imagec.db-shm").symlink_to(where / _store.LAYOUT_FILE)
    return "unable to open database file"


def _damaged_log_header(where: Path) -> str:
    """A log whose header's magic number is damaged; SQLite's reason."""
    with open(where / "imagec.db-wal", "r+b") as log:
        log.write(bytes(4))
    return "locking protocol"


@pytest.mark.parametrize("fault", [_symlinked_shm, _damaged_log_header], ids=["symlink", "damaged"])
def test_a_database_in_use_that_sqlite_cannot_read_is_not_read_without_locks(
    snapshot_in_use: tuple[Path, list[str]], tmp_path: Path, fault: Any
) -> None:
    """Where this user may not write the store's directory (a read-only mount, here),
    a failed ``mode=ro`` open was followed by an immutable one, whatever SQLite's reason.
    That read is meant for a store at rest, whose missing ``-shm`` file SQLite cannot
    make there; with that file present (a process may have the database open, and be
    writing it), it read the database file without locks and without its log, and
    ``images`` left out the image pulled last without a word. Now the error names the
    database and SQLite's reason; a store at rest is read as it is, as before."""
    where, refs = snapshot_in_use
    reason = fault(where)
    mnt = tmp_path / "ro"
    mnt.mkdir()
    with _read_only_bind(where, mnt), pytest.raises(StoreError) as refused:
        Store.open_existing(mnt)  # the old code: a store that lists one image fewer
    message = str(refused.value)
    assert f"database {mnt / _store.DB_FILE} read-only: {reason}" in message
    assert "not read without locks" in message
    (where / "imagec.db-shm").unlink()  # whoever may write it mends it,
    with Store.open(where):  # and folds the log in
        pass
    with _read_only_bind(where, mnt):
        reader = Store.open_existing(mnt)
        assert reader is not None
        # A damaged log is dropped by SQLite's recovery, and its image with it.
        kept = [str(APP)] if fault is _damaged_log_header else refs
        assert sorted(r.ref for r in reader.list_images()) == kept


def test_a_database_in_use_that_is_no_database_is_reported_damaged(
    snapshot_in_use: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """The same read-only mount, its ``imagec.db`` overwritten: SQLite's "file is not a
    database" was never followed by an immutable read (it is no OperationalError), and
    is reported as damage, naming the database file."""
    where, _ = snapshot_in_use
    with open(where / _store.DB_FILE, "r+b") as db:
        db.write(b"not a database" * 8)
    mnt = tmp_path / "ro"
    mnt.mkdir()
    with _read_only_bind(where, mnt), pytest.raises(StoreError) as refused:
        Store.open_existing(mnt)
    message = str(refused.value)
    assert "file is not a database" in message
    assert "the store's database imagec.db is damaged" in message


def test_a_store_whose_database_this_user_may_not_write_is_refused_for_writing(
    tmp_path: Path,
) -> None:
    """``open`` (pull, rm, gc) opened a store whose database this user may not write, as
    SQLite then opens it read-only without a word: a pull downloaded its layers and
    failed at the first commit, with "attempt to write a readonly database; check the
    store directory and try again". ``open`` now says so before anything is done, and a
    database that becomes unwritable under an open store gets the same advice."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only bind mount needs root and mount(8)")
    where = tmp_path / "s"
    with Store.open(where) as store:
        pull_into(store, APP)
    with _read_only_bind(where / _store.DB_FILE):
        with pytest.raises(StoreError, match=r"may not write imagec\.db\b") as refused:
            Store.open(where)
        assert "make them writable" in str(refused.value)
        reader = Store.open_existing(where)  # what only reads is not refused
        assert reader is not None
        with reader:
            assert [r.ref for r in reader.list_images()] == [str(APP)]
    store = Store.open(where)
    with _read_only_bind(where / _store.DB_FILE):  # under a store open already
        try:
            with pytest.raises(StoreError, match="readonly database") as failed:
                pull_into(store, ALPINE)
        finally:
            # Before the unmount: SQLite keeps the failed connection's file (through the
            # mount) open while another of this process (the store's) has the database.
            store.close()
        assert "may not write the store's database imagec.db" in str(failed.value)
    with Store.open(where) as store:
        pull_into(store, ALPINE)
        assert len(store.list_images()) == 2
