"""The local store: an OCI image layout plus an SQLite database.

Layout of the store directory::

    oci-layout            {"imageLayoutVersion": "1.0.0"}, written last on creation
    index.json            OCI index: one OCI manifest descriptor per reference pulled
    blobs/sha256/<hex>    verified content only, each put there by an atomic rename
    ingest/               partial downloads and temporary files, never visible as blobs
    imagec.db             SQLite (WAL): layers, images, image_layers, refs, repo_digests
    imagec.lock           flock'ed while index.json is read-modified-written or the store
                          is initialised
    gc.lock               flock'ed shared by every pull while it runs, exclusive by ``rm``,
                          ``gc``, and ``verify --repair`` (``Store.try_hold_for_pull``,
                          ``Store._removing``)

The promise (RELIABILITY.md): a blob appears in ``blobs/`` only after its digest was
verified, through ``os.replace`` of an fsynced file. A layer counts as committed only when
its database row exists too, and the row is written after the rename, so a crash in
between leaves a verified blob that is simply downloaded again.

Durability is batched per image: a layer's rename and row are made durable by the image's
record, not one by one (on ``many``'s 40 layers, 80 fsyncs fewer: 0.81 -> 0.77 s median
wall, 14 interleaved pulls each). ``record_image`` first fsyncs ``blobs/sha256``, which
makes every earlier rename there durable, then commits its rows with ``synchronous =
FULL``, whose fsync of the write-ahead log makes the earlier layer rows durable too (the
log is appended in order). A crash before that loses at most some layers' renames or
rows, never the blob content behind a visible name, and a layer missing either is
downloaded again (``_committed_row`` checks both). A pull reports success only after its
record.

``index.json`` is the last thing an image pull changes; a crash just before leaves the
image in the database only, and the next ``Store.open`` writes its entry from there. Its
new content is written (to a temp file) before the rows are committed, and renamed into
place after, so that a disk too full for it fails the pull with nothing recorded.

Removal (``remove_images``, ``prune``) runs the other way round, so that a crash at any
moment leaves nothing that names what is gone: index.json loses its entries first, then
the database its rows (one transaction), then ``blobs/`` the files nothing names any
more. A crash after the first step leaves references the database still records, which
the next ``Store.open`` lists again (the removal did not happen; a COMMIT that fails puts
the old index.json back at once, ``_restored_on_error``); after the second, blobs
nobody names, which the next ``prune`` removes. A row or entry naming a missing blob, the
one state that is damage, is never left behind.

A pull commits its layers before it records its image, so in between they are named by
no image and a removal would take them for garbage. Every pull therefore holds a shared
``flock`` on ``gc.lock`` from before its first layer lookup until its image is recorded,
and a removal takes it exclusively, waiting at most ``GC_WAIT_S`` for running pulls to
end. Locks are taken in one order: ``gc.lock``, then ``imagec.lock``, then SQLite's; a
pull takes ``gc.lock`` before any layer's slot or claim (``LCache``), and a removal
never waits on those, so none of them can wait on another in a circle.

Every method is synchronous and opens its own short-lived sqlite3 connection: a sqlite3
connection belongs to the thread that made it, and ``pipeline._pull`` calls these methods
through ``trio.to_thread.run_sync``. A store opened for pulling also holds one idle
connection until ``close()`` (``_hold_wal_open``), so that closing the short-lived ones
never checkpoints the WAL. Concurrent processes are kept apart by SQLite
transactions (``BEGIN EXCLUSIVE``, busy timeout) and, for ``index.json``, an exclusive
``fcntl.flock``. Both are waited for in short slices, so that a Ctrl-C ends the wait, and
so are reads that another connection keeps from the database (``_read``); a pull's calls
(``committed_layer``, ``commit_layer``, ``record_image``) take a ``check_cancelled``
asked between them, holding nothing then: a worker thread is not cancelled with its task.
OSError and sqlite3.Error never leave this module: they become a ``StoreError`` naming
the store and what the user can do.

The removals (``prune``, ``remove_images``, ``remove_damaged``) wait for the pulls running
in the store, and in a trio program those include its own, which run on its event loop:
called there, the wait blocked the very pulls it waited for. They refuse to run on
trio's event loop (UsageError), and trio code awaits their ``*_async`` forms, which run them in a
worker thread and end their waits when cancelled, before anything is removed. ``verify``
reads every blob, for minutes in a large store, and is refused there and awaited as
``verify_async`` the same way. The CLI calls them outside ``trio.run``. ``open`` waits up
to ``LOCK_TIMEOUT_S`` for another process's lock (a ``gc`` or ``rm`` in progress); trio
code awaits ``open_async``, whose wait a cancel scope ends (``open`` itself stays
callable there: it takes no time unless another process holds the store).

What ``index.json`` lists, when an image is listed through a converted OCI manifest (a
Docker schema2 image, an OCI manifest naming Docker media types) and the annotation
that manifest carries (``io.github.imagec-pipe.original-manifest-digest``) are
documented in ``pipeline._oci``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import sqlite3
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import platformdirs
import trio
import xxhash

from stages._errors import ImagecError, InvalidDigest, StoreError, UsageError
from stages._events import VerifiedLayer
from stages._log import get_logger
from stages._manifest import SCHEMA1, ResolvedImage, index_choice
from stages._reference import parse_reference
from stages._types import Digest, MediaType, Platform

from . import _oci
from ._lcache import LCache

__all__ = [
    "ENV_STORE",
    "SCHEMA_VERSION",
    "BlobDamage",
    "ImageRecord",
    "Ingest",
    "LayerClaim",
    "LayerRecord",
    "PullHold",
    "RecordedImage",
    "Removal",
    "Store",
    "Writeback",
    "store_error",
    "store_path",
]

log = get_logger()

_T = TypeVar("_T")

ENV_STORE = "IMAGEC_PIPE_STORE"
SCHEMA_VERSION = 1
# The action of a StoreError raised while opening a store ("cannot open store …"):
# "{store}" where an action names the store itself (see ``store_error``).
OPEN = "open {store}"
# The removals' actions, for their StoreErrors and their refusals (``_removing``) alike.
REMOVE_IMAGES = "remove images from {store}"
PRUNE = "prune {store}"
REMOVE_DAMAGED = "remove damaged blobs from {store}"
# How long a call waits for another process's write transaction before failing.
BUSY_TIMEOUT_S = 30.0
# That wait is made in slices of this (``_while_busy``): SQLite's own busy wait cannot
# be interrupted, and between two slices a Ctrl-C or a cancelled pull ends it.
BUSY_SLICE_S = 0.1
# The store's file lock (held for moments: opening the store, recording an image).
LOCK_TIMEOUT_S = BUSY_TIMEOUT_S
LOCK_NOTICE_S = 2.0
LOCK_POLL_S = 0.05
# How long ``rm`` and ``gc`` wait for the pulls running in the store to end (they
# hold gc.lock shared), and how long a pull waits for a removal (exclusive) to end.
GC_WAIT_S = 10.0
PULL_WAIT_S = LOCK_TIMEOUT_S
# Walking index.json's entries (``Store._index_reaches``), a blob whose descriptor does not
# say it is a manifest or an index (a config, or no media type at all) is read only up to
# this size (a registry refuses manifests larger: RELIABILITY.md); larger, it is taken for
# a layer, which names nothing.
_MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# One that its descriptor says is a manifest or an index is read whatever the registry
# limit (another tool may write a multi-platform index or an artifact manifest of
# thousands of blobs into the layout), up to this; one larger refuses the removal.
_MAX_FOLLOWED_BYTES = 64 * 1024 * 1024
# With less free space than this left, SQLite's "disk I/O error" is taken for a full disk
# (its journal grows by pages of 4 KiB; the disk is rarely *that* close to full by chance).
NEARLY_FULL_BYTES = 1024 * 1024

LAYOUT_FILE = "oci-layout"
LAYOUT_VERSION = "1.0.0"
INDEX_FILE = "index.json"
DB_FILE = "imagec.db"
LOCK_FILE = "imagec.lock"
GC_LOCK_FILE = "gc.lock"
BLOBS_DIR = "blobs"
INGEST_DIR = "ingest"
# What a reader is told of a damaged index.json: the commands that open the store to
# change it write it again (``_set_aside_unreadable_index``).
_INDEX_REBUILT = (
    "; opening the store to change it (imagec-pipe pull, rm or gc; Store.open) writes it"
    " again from the store's database, keeping this one as index.json.damaged"
)
# A directory holding only these names is a store whose creation was interrupted.
_OWN_NAMES = frozenset(
    {
        LAYOUT_FILE,
        INDEX_FILE,
        f"{INDEX_FILE}.damaged",
        BLOBS_DIR,
        INGEST_DIR,
        LOCK_FILE,
        GC_LOCK_FILE,
        DB_FILE,
        f"{DB_FILE}-wal",
        f"{DB_FILE}-shm",
        f"{DB_FILE}-journal",
    }
)

# Migrations: _MIGRATIONS[n] takes the database from user_version n to n + 1. Statements
# run one by one inside one transaction (executescript would commit half-way).
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # One row per committed layer blob (keyed by compressed digest).
        """CREATE TABLE layers (
            digest            TEXT PRIMARY KEY,
            diff_id           TEXT NOT NULL,
            size              INTEGER NOT NULL,
            uncompressed_size INTEGER,
            media_type        TEXT NOT NULL,
            xxh3              TEXT,
            committed_at      REAL NOT NULL
        )""",
        # One row per image manifest; config_digest is the image ID.
        """CREATE TABLE images (
            manifest_digest     TEXT PRIMARY KEY,
            config_digest       TEXT NOT NULL,
            media_type          TEXT NOT NULL,
            oci_manifest_digest TEXT NOT NULL,
            platform            TEXT NOT NULL,
            size                INTEGER NOT NULL,
            pulled_at           REAL NOT NULL
        )""",
        "CREATE INDEX images_config ON images (config_digest)",
        """CREATE TABLE image_layers (
            manifest_digest TEXT NOT NULL REFERENCES images (manifest_digest) ON DELETE CASCADE,
            position        INTEGER NOT NULL,
            layer_digest    TEXT NOT NULL REFERENCES layers (digest),
            media_type      TEXT NOT NULL,
            PRIMARY KEY (manifest_digest, position)
        )""",
        # VIC's repo cache, part 1: every name in index.json (tags, and name@digest for
        # pulls by digest) and what it resolved to.
        """CREATE TABLE refs (
            name            TEXT PRIMARY KEY,
            repository      TEXT NOT NULL,
            tag             TEXT,
            resolved_digest TEXT NOT NULL,
            manifest_digest TEXT NOT NULL REFERENCES images (manifest_digest),
            pulled_at       REAL NOT NULL
        )""",
        "CREATE INDEX refs_manifest ON refs (manifest_digest)",
        "CREATE INDEX refs_repository ON refs (repository, tag)",
        # VIC's repo cache, part 2: every digest (index or manifest) known per repository,
        # so that name@digest finds an image that was pulled by tag.
        """CREATE TABLE repo_digests (
            repository      TEXT NOT NULL,
            digest          TEXT NOT NULL,
            manifest_digest TEXT NOT NULL REFERENCES images (manifest_digest),
            PRIMARY KEY (repository, digest)
        )""",
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

# An image ID prefix: any number of its hex digits, as docker takes one (``sha256:``
# optional). It is looked up as an ID only once no reference has that name, of whatever
# length ("213e", "deadbeefcafe" may well be repositories' names), as docker's lookup
# tries the reference first; a whole ID (ID_DIGITS), which no repository may be named,
# is an ID and nothing else, with ``sha256:`` or without, as docker parses it.
_ID_PREFIX = re.compile(r"(?:sha256:)?([0-9a-f]{1,64})")
ID_DIGITS = 64
# The images an ambiguous prefix's refusal lists at most.
_AMBIGUOUS_SHOWN = 5
# ingest/ names: "<hex>.<pid>.<random>.partial" and ".<name>.<pid>.<random>.tmp".
_INGEST_NAME = re.compile(
    r"[0-9a-f]{64}\.\d+\.[0-9a-f]+\.partial|\..+\.\d+\.[0-9a-f]+\.tmp|[0-9a-f]{64}\.claim"
)


@dataclass(frozen=True)
class ImageRecord:
    """One reference in the store and the image it names.

    ``ref`` is the name listed in index.json (``docker.io/library/alpine:latest``, or
    ``name@sha256:…`` for a pull by digest); ``repository`` is ``registry/path``;
    ``resolved_digest`` what the reference resolved to (an index's digest for a
    multi-platform tag); ``manifest_digest`` the registry's manifest for ``platform``;
    ``image_id`` the config digest; ``size`` the bytes of config plus compressed layers;
    ``pulled_at`` (UTC) when this reference was last pulled. ``media_type`` is the
    registry manifest's; ``oci_manifest_digest`` the manifest index.json lists (equal to
    ``manifest_digest`` unless it was converted: from Docker schema2, or from an OCI
    manifest naming Docker media types).
    """

    ref: str
    repository: str
    tag: str | None
    resolved_digest: Digest
    manifest_digest: Digest
    image_id: Digest
    platform: Platform
    size: int
    pulled_at: datetime
    media_type: str
    oci_manifest_digest: Digest


@dataclass(frozen=True)
class RecordedImage:
    """What ``record_image`` did: the reference's record now, and whether the reference
    already named this image (the same resolved and manifest digests) before: what
    docker reports as "Image is up to date" rather than "Downloaded newer image"."""

    record: ImageRecord
    unchanged: bool


@dataclass(frozen=True)
class LayerRecord:
    """One layer of an image, as VIC's ListLayers shows it.

    ``media_type`` is the one the image's (registry) manifest gives; ``xxh3`` the xxh3_128
    of the stored bytes, for a quick re-verification.
    """

    digest: Digest
    diff_id: Digest
    size: int
    uncompressed_size: int | None
    media_type: str
    xxh3: str | None = None


@dataclass(frozen=True)
class BlobDamage:
    """A blob in ``blobs/`` that is not what its name (or its layer record) says.

    ``kind`` is "layer" (checked by size and the xxh3 recorded when it was pulled, or by
    sha256 when asked) or "blob" (a manifest, index or config: always sha256). ``refs``
    are the references in the store whose image uses it: what to pull again.
    """

    digest: Digest
    kind: str
    problem: str
    refs: tuple[str, ...]
    # The file found damaged (None: missing), so that ``remove_damaged`` never removes
    # a good copy a pull renamed into place since.
    inode: int | None = field(default=None, repr=False)

    @property
    def missing(self) -> bool:
        """No file: ``remove_damaged`` has nothing to remove; a pull puts it back."""
        return self.inode is None


@dataclass(frozen=True)
class Removal:
    """What ``Store.remove_images`` or ``Store.prune`` removed.

    ``untagged``: the references removed (index.json entries and their rows);
    ``deleted_images``: the manifest digests of the images whose records went with their
    last reference (or, for ``prune``, that no reference named any more);
    ``deleted_blobs``: the files removed from ``blobs/`` (manifests, indexes, configs,
    layers), and ``reclaimed_bytes`` their sizes' sum.
    """

    untagged: tuple[str, ...] = ()
    deleted_images: tuple[Digest, ...] = ()
    deleted_blobs: tuple[Digest, ...] = ()
    reclaimed_bytes: int = 0


# Bytes read from a blob at a time by ``Store.verify``.
_VERIFY_READ_BYTES = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")
# What an index, manifest or artifact manifest names blobs by (``_named_descriptors``).
_DESCRIPTOR_KEYS = ("config", "subject")
_DESCRIPTOR_LIST_KEYS = ("manifests", "layers", "blobs")
# A Docker schema1 manifest names its layers as ``fsLayers: [{"blobSum": digest}]``, with
# no media type (and no config: its history is inline).
_SCHEMA1_LAYERS, _SCHEMA1_DIGEST = "fsLayers", "blobSum"
# The members of a document ``_named_descriptors`` keeps while parsing (a big index's
# platforms and annotations are dropped as each object is read, not held to the end).
_WALKED_KEYS = frozenset(
    {"digest", "mediaType", *_DESCRIPTOR_KEYS, *_DESCRIPTOR_LIST_KEYS}
    | {_SCHEMA1_LAYERS, _SCHEMA1_DIGEST}
)
# The deprecated OCI 1.1-rc artifact manifest (``blobs``, ``subject``), which oras wrote.
_ARTIFACT_MANIFEST = "application/vnd.oci.artifact.manifest.v1+json"
# Media types whose blob the walk of index.json's entries must read, whatever its size:
# what it names is needed by whoever wrote the entry. Schema1 manifests too: pull refuses
# them, but another tool (skopeo, an old docker save) may have written one into the layout.
_FOLLOWED_MEDIA_TYPES = MediaType.INDEXES | MediaType.MANIFESTS | SCHEMA1 | {_ARTIFACT_MANIFEST}
_DIGEST_TEXT = re.compile(rb"sha256:[0-9a-f]{64}")
# References a StoreError names at most (the rest are in index.json).
_REFS_SHOWN = 5


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _has_tables(conn: sqlite3.Connection) -> bool:
    """Whether the database has a schema: one that has none was created a moment ago, or
    was emptied (``Store._refuse_empty_database``)."""
    return conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is not None


def _listed_refs(manifests: list[dict[str, Any]]) -> list[str]:
    """The reference names index.json entries carry (``org.opencontainers.image.ref.name``)."""
    names = set()
    for entry in manifests:
        annotations = entry.get("annotations")
        if isinstance(annotations, dict) and isinstance(
            name := annotations.get(_oci.REF_NAME_ANNOTATION), str
        ):
            names.add(name)
    return sorted(names)


_FREE_SPACE = "free some disk space (or choose another store with --store) and try again"
# A full disk stops a store from opening (SQLite reads a WAL database only through its
# shared-memory file, which it creates, 32 KiB, when no connection is open) and a removal
# from freeing any space: the records of what it removes go first (one transaction,
# written through the WAL), the files after, so that a crash or a failed commit never
# leaves a record naming a deleted blob. Deleting files before the records is no way
# round: only what no record names may go first, and on a full disk nothing else does.
# Measured on a tmpfs: `rm` of one of two images needed 96 KiB free (80 KiB failed); of
# 150 of 300 images at once, 550 KiB (a 463 KiB log, the 32 KiB shared-memory file and
# index.json rewritten).
_FREE_SPACE_TO_OPEN = (
    "free some disk space (or choose another store with --store) and try again: its "
    "database cannot be opened without some, and `rm` and `gc` need about 100 KiB "
    "(1 MiB to remove hundreds of images at once) to record what they remove before "
    "they delete it"
)
_FREE_SPACE_TO_REMOVE = (
    "free some disk space on its filesystem, about 100 KiB (1 MiB to remove hundreds of "
    "images at once), and run it again, which frees the rest: a removal records what it "
    "removes in the store's database before it deletes any file, so that no record ever "
    "names a deleted blob, and the database needs room to write"
)
_REMOVALS = frozenset({REMOVE_IMAGES, PRUNE, REMOVE_DAMAGED})
_MAKE_WRITABLE = (
    "have their owner (or root) make them writable for this user, or choose another store "
    "with --store"
)


# A layer is renamed from ingest/ into blobs/, and index.json from ingest/ into the
# store's directory, which needs the three on one filesystem.
_SPLIT_STORE = (
    "the store's directory, its ingest/ and its blobs/ are not all on one filesystem (is"
    " one a symlink or a mount?); layers and index.json are moved out of ingest/ by a"
    " rename, which needs them on one"
)


def _free_space(action: str) -> str:
    """The full disk's hint for ``action`` (see ``store_error``)."""
    if action in _REMOVALS:
        return _FREE_SPACE_TO_REMOVE
    if action == OPEN:
        return _FREE_SPACE_TO_OPEN
    return _FREE_SPACE


def _hint(exc: BaseException, store: Path, action: str) -> str:
    """What the user can do about a low-level failure."""
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _free_space(action)
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return "check that you may write to the store directory, or choose another with --store"
        if exc.errno == errno.EIO:
            return "the disk reported an I/O error; check it, then run the command again"
        if exc.errno == errno.EXDEV:
            return _SPLIT_STORE
        return "check the store directory and try again"
    if isinstance(exc, sqlite3.Error) and _no_space_for(exc, store):
        return _free_space(action)
    if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_READONLY:
        # SQLite opens a database it may not write read-only, without a word.
        if not os.access(store, os.W_OK):  # where it makes its -wal and -shm files
            return (
                f"this user may not write the store directory {store}, where the database "
                f"keeps its -wal and -shm files; {_MAKE_WRITABLE}"
            )
        return (
            f"this user may not write the store's database {DB_FILE} (or its -wal and "
            f"-shm files); {_MAKE_WRITABLE}"
        )
    text = str(exc).lower()
    if "unable to open database file" in text and not (store / DB_FILE).exists():
        return (
            f"its database {DB_FILE} is gone (deleted or moved?); put it back, or move the "
            "store aside and pull again"
        )
    if "locked" in text or "busy" in text:
        return (
            f"another process kept the store's database busy for over {BUSY_TIMEOUT_S:.0f} s; "
            "try again"
        )
    if "malformed" in text or "not a database" in text:
        return f"the store's database {DB_FILE} is damaged; move the store aside and pull again"
    if "disk i/o error" in text:  # and the disk is not nearly full
        return "the disk may be full or failing; free some space or check it, then try again"
    return "check the store directory and try again"


def _no_space_for(exc: sqlite3.Error, store: Path) -> bool:
    """Whether SQLite failed for want of disk space in ``store``'s filesystem."""
    if getattr(exc, "sqlite_errorcode", None) in (
        sqlite3.SQLITE_FULL,  # its log or database file could not grow
        sqlite3.SQLITE_IOERR_SHMSIZE,  # its shared-memory file could not: "disk I/O error"
    ):
        return True
    text = str(exc).lower()
    # "disk I/O error" is what SQLite says when a write of its journal fails, a full
    # disk included.
    return ("disk" in text and "full" in text) or ("disk i/o error" in text and _nearly_full(store))


def _nearly_full(path: Path) -> bool:
    """Whether the filesystem of ``path`` has less than ``NEARLY_FULL_BYTES`` left."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < NEARLY_FULL_BYTES


def store_error(
    store: Path, action: str, exc: BaseException, *, digest: object = None, ref: str | None = None
) -> StoreError:
    """The ``StoreError`` for an OS or database failure: what failed, and what to do.

    ``action`` says what was being done: ``"commit a layer"`` is done "in store DIR";
    one done to the store itself names it with ``{store}`` (``"prune {store}"``,
    ``"remove images from {store}"``), where "store DIR" goes. "cannot prune the store
    in store DIR" said the store twice."""
    return StoreError(
        f"cannot {_action_text(action, store)}: {exc}; {_hint(exc, store, action)}",
        digest=str(digest) if digest is not None else None,
        ref=ref,
    )


def _action_text(action: str, store: Path) -> str:
    """``action`` (see ``store_error``) with the store named once: in it, or by it."""
    if "{store}" in action:
        return action.replace("{store}", f"store {store}")
    return f"{action} in store {store}"


def _file_kind(mode: int) -> str:
    """What a file that is not a regular one is, for a message."""
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "a device"


def _fsync_dir(path: Path) -> None:
    """Make a rename or creation inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Fresh names ``_create_locked`` tries when a sweep removes each file as it is made.
_CREATE_ATTEMPTS = 5


def _create_locked(make_path: Callable[[], Path], mode: int) -> tuple[Path, int]:
    """Create a new file in ``ingest/`` and hold an exclusive ``flock`` on it until it is
    closed: ``_sweep_ingest`` in any process, in any PID namespace (a store shared by
    containers), leaves a file alone while its lock is held. The file is created under a
    fresh name (``make_path``) and locked at once; should a sweep have removed it in that
    moment, a new name is taken."""
    for _ in range(_CREATE_ATTEMPTS):
        path = make_path()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a sweep holds it to remove it
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return path, fd
        except (BlockingIOError, FileNotFoundError):
            pass
        os.close(fd)
    raise OSError(errno.EAGAIN, f"new files in {path.parent} are removed as soon as made")


class LayerClaim:
    """The store-wide right to download one layer: an exclusive ``flock`` on
    ``ingest/<hex>.claim``, held until ``release`` or the holder's death (the kernel
    lets go of a dead process's locks, so a killed pull never blocks the next one).

    ``release`` unlinks the file while still holding it; a claimer that locked the old
    file meanwhile sees that the path no longer names it and tries again, so two holders
    can never both believe they have it (``Store.try_claim_layer``).
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            # Housekeeping only: a claim file left behind is taken over by the next
            # claimer, or swept; it must not hide the error a download is ending with.
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        finally:
            os.close(fd)


class PullHold:
    """A pull's shared ``flock`` on ``gc.lock``: while any is held, ``rm`` and ``gc``
    remove nothing (see the module docstring). Held from before the pull's first layer
    lookup until its image is recorded; ``release`` (or the holder's death) lets go."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # releases the lock


def _gc_lock_holder(fd: int) -> str:
    """Who keeps ``gc.lock`` (open on ``fd``, unlocked) from a removal, as its lock
    says: pulls hold it shared, so a shared lock taken at once means pulls; one refused
    means another ``rm`` or ``gc`` holds it exclusively (running, or stopped with
    Ctrl-Z). The shared lock, if taken, is let go before returning."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return (
            "another rm or gc is running in this store (if an imagec-pipe using it is "
            "stopped with Ctrl-Z, resume or end it)"
        )
    fcntl.flock(fd, fcntl.LOCK_UN)
    return "a pull is running in this store"


def _walked_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {key: value for key, value in pairs if key in _WALKED_KEYS}


def _named_descriptors(data: bytes) -> list[tuple[object, object]] | None:
    """The (digest, media type) of each descriptor a blob read as an OCI document names
    (unchecked: the caller keeps the strings that are digests), or None when it is no
    JSON object (a layer, or a damaged manifest): an index's ``manifests``, a manifest's
    ``config`` and ``layers``, what OCI 1.1 adds, ``subject`` (the manifest a signature
    or SBOM refers to) and the deprecated artifact manifest's ``blobs``, and a Docker
    schema1 manifest's ``fsLayers`` (each a ``blobSum``, of no media type). JSON
    nested too deeply for ``json`` to parse is no manifest a registry would serve, yet
    what it names cannot be told apart from what it does not: every ``sha256:`` digest
    in its text counts as named, of no known media type (gc keeps too much rather than
    delete what another tool needs)."""
    try:
        doc = json.loads(data, object_pairs_hook=_walked_fields)
    except RecursionError:
        return [(m.decode(), None) for m in _DIGEST_TEXT.findall(data)]
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    named = [doc.get(key) for key in _DESCRIPTOR_KEYS]
    for key in _DESCRIPTOR_LIST_KEYS:
        if isinstance(doc.get(key), list):
            named.extend(doc[key])
    descriptors = [(d.get("digest"), d.get("mediaType")) for d in named if isinstance(d, dict)]
    if isinstance(doc.get(_SCHEMA1_LAYERS), list):
        descriptors.extend(
            (layer.get(_SCHEMA1_DIGEST), None)
            for layer in doc[_SCHEMA1_LAYERS]
            if isinstance(layer, dict)
        )
    return descriptors


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


# Written bytes handed to the kernel's writeback at a time (see ``Writeback``).
WRITEBACK_STEP_BYTES = 32 * 1024 * 1024


class Writeback:
    """Starts the kernel's write-out of a file being written, every
    ``WRITEBACK_STEP_BYTES``, without waiting for it.

    Left alone, the kernel writes a layer's dirty pages back only when the final fsync
    asks, so the whole layer's write-out came after its download: 0.3 s at the end of a
    740 MB layer, measured. ``POSIX_FADV_DONTNEED`` over what was written starts that
    write-out now (and drops pages already clean: nothing reads them back). Only an
    optimisation: the fsync still makes the file durable, and a filesystem that refuses
    the advice is not an error.
    """

    def __init__(self) -> None:
        self._written_back = 0  # bytes handed to the kernel's writeback so far
        self._advised_from = 0

    def wrote(self, file: BinaryIO, written: int) -> None:
        """``file`` now holds ``written`` bytes (flushed here when a step is due)."""
        if written - self._written_back < WRITEBACK_STEP_BYTES:
            return
        file.flush()
        if hasattr(os, "posix_fadvise"):
            # From the previous step's start: its pages, being written then, are clean now.
            start = self._advised_from
            with contextlib.suppress(OSError):
                os.posix_fadvise(file.fileno(), start, written - start, os.POSIX_FADV_DONTNEED)
        self._advised_from, self._written_back = self._written_back, written


class Ingest:
    """A partial blob in ``ingest/``: the store's side of stages' ``IngestFile``.

    The file name is unique per attempt (digest, pid, random), so two processes
    fetching the same layer never write into one file. ``write`` and ``sync`` run in a
    worker thread; their failures (disk full, fsync failing) become ``StoreError``.
    """

    def __init__(
        self, store: Path, digest: Digest, path: Path, file: BinaryIO, ref: str | None = None
    ) -> None:
        self.digest = digest
        self.ref = ref  # the image being pulled, for the errors
        self.path = path
        self.committed = False
        self._store = store
        self._file = file
        self._dirty = False
        self._written = 0
        self._writeback = Writeback()

    @property
    def bytes_written(self) -> int:
        return self._written

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._file.write(data)
            self._written += len(data)
            self._dirty = True
            self._writeback.wrote(self._file, self._written)
        except OSError as exc:
            raise store_error(
                self._store, "write a layer", exc, digest=self.digest, ref=self.ref
            ) from exc

    def sync(self) -> None:
        """Flush and fsync: after this, what was written survives a crash."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise store_error(
                self._store, "sync a layer", exc, digest=self.digest, ref=self.ref
            ) from exc
        self._dirty = False

    def _sync_pending(self) -> None:
        """Sync anything written after the last ``sync``; the file stays open (and locked:
        ``_create_locked``) until ``commit_layer`` has renamed it."""
        if not self._file.closed and self._dirty:
            self.sync()

    def _close(self) -> None:
        self._file.close()

    def _discard(self) -> None:
        """Close and delete the file unless ``commit_layer`` took it; never raises."""
        with contextlib.suppress(OSError):
            self._file.close()
        if not self.committed:
            try:
                self.path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("ingest file not removed", path=str(self.path), error=str(exc))


def store_path(path: str | os.PathLike[str] | None = None) -> Path:
    """Where ``Store.open(path)`` opens its store: ``path``, else ``$IMAGEC_PIPE_STORE``,
    else the per-user data directory (platformdirs) + ``/store``; absolute."""
    if path is None:
        env = os.environ.get(ENV_STORE)
        path = env if env else Path(platformdirs.user_data_dir("imagec-pipe")) / "store"
    return Path(path).expanduser().absolute()


class Store:
    """An opened store. Create it with ``Store.open`` (``open_async`` from trio code);
    every method is synchronous, but for the forms for trio code of those that may wait
    or read for long (``prune_async``, ``remove_images_async``, ``remove_damaged_async``,
    ``verify_async``: see the module docstring).

    ``lcache`` is the layer cache shared by every pull given this object: one download
    per layer among them, and, through ``try_claim_layer``, among every process (and
    every other ``Store`` object) pulling into the same store; and their download
    budget (``LCache.download_budget``).
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.lcache = LCache(self.try_claim_layer, store=str(path))
        self.read_only = read_only
        self._blobs = path / BLOBS_DIR / "sha256"
        self._ingest = path / INGEST_DIR
        self._db_path = path / DB_FILE
        self._wal_holder: sqlite3.Connection | None = None
        self._read_as_is = False  # a connection was opened immutable (see _errors)
        # The thread of the async forms (removals, verify, open) comes from here, not from
        # trio's default limiter: a removal waits up to GC_WAIT_S for the pulls running in
        # the store, and a pull takes threads of the default limiter (its hold, its layers'
        # claims), so a removal holding the last of those stopped the pulls it waited for.
        # Removals take gc.lock one at a time anyway; the others (and a verify, which a
        # removal of what it found follows) wait here, in trio, cancellably.
        self._removal_thread = trio.CapacityLimiter(1)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Let go of the idle connection ``open`` holds (see ``_hold_wal_open``); SQLite
        then folds its write-ahead log into the database file. Calling it again, or not
        at all, is harmless: the store stays usable and consistent either way (the log
        is durable as it is, and the next connection reads it)."""
        holder, self._wal_holder = self._wal_holder, None
        if holder is not None:
            with self._errors("close the database"):
                holder.close()

    # -- opening -------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        check_cancelled: Callable[[], None] | None = None,
    ) -> Store:
        """Open the store at ``path``, creating it if needed.

        ``None`` means ``$IMAGEC_PIPE_STORE``, else the per-user data directory
        (platformdirs) + ``/store``. Refuses a file, a non-empty directory that is not a
        store, a database whose schema is newer than this version understands, and a
        store whose images are there but whose database is not (``_refuse_lost_database``).
        ``check_cancelled`` is called while it waits for another process's lock (up to
        ``LOCK_TIMEOUT_S``), holding nothing, and may raise to end the wait: the CLI's
        ``pull --timeout`` counts from here.
        """
        store = cls(store_path(path))
        store._init(check_cancelled=check_cancelled)
        return store

    @classmethod
    async def open_async(cls, path: str | os.PathLike[str] | None = None) -> Store:
        """``open``, for trio code: run in a worker thread, so that the event loop goes on
        while it waits for another process holding the store's lock (a ``gc`` or ``rm``
        in progress, up to ``LOCK_TIMEOUT_S``), and a cancel scope around it ends that
        wait within ``LOCK_POLL_S``.

        ``open`` called on the event loop blocked it, so that neither a deadline
        (``trio.move_on_after``) nor a cancelled nursery could end the wait; through
        ``trio.to_thread.run_sync`` the thread, which trio does not abandon, waited it out
        all the same. Here the thread asks trio between its non-blocking tries of the
        lock (``check_cancelled``), never holding it then, and raises ``trio.Cancelled``:
        no thread is left behind to take the lock, or to open the store, after its caller
        has gone. A thread that took the lock just before the cancel finishes opening (a
        moment's work) and lets go of it, as ``open`` does; the store it opened is closed
        and ``trio.Cancelled`` raised all the same."""
        store = cls(store_path(path))
        await trio.to_thread.run_sync(
            functools.partial(store._init, check_cancelled=trio.from_thread.check_cancelled),
            limiter=store._removal_thread,
        )
        opened = False
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            opened = True
        finally:
            if not opened:
                store.close()
        return store

    @classmethod
    def open_existing(cls, path: str | os.PathLike[str] | None = None) -> Store | None:
        """Open the store at ``path`` (as ``open`` finds it) to read it only; None when
        there is no store there yet (or its creation stopped before its database had a
        schema).

        For the commands that only look (images, layers, inspect): nothing is created,
        locked, migrated, repaired or swept, so a mistyped ``--store`` leaves nothing
        behind, and a store on read-only media or owned by another user can be listed.
        Its database is opened so that no statement can change it (``_connect`` says how),
        and SQLite's ``-wal`` and ``-shm`` files are gone afterwards if they were before,
        wherever this process may write (but for a full disk, where SQLite could not
        finish making them: an empty log and a stub, which any later connection takes).
        Refuses what ``open`` refuses, and a schema older than this version's, which only
        a pull upgrades.
        """
        where = store_path(path)
        store = cls(where, read_only=True)
        with store._errors(OPEN):
            try:
                os.stat(where)
            except FileNotFoundError:  # not Path.exists(), which took ENOTDIR (a path
                return None  # below a file) and EACCES for "no store yet"
            if not where.is_dir():
                raise StoreError(
                    f"store path {where} exists and is not a directory; "
                    "choose a store directory with --store"
                )
            names = set(os.listdir(where))
            if LAYOUT_FILE not in names and not names <= _OWN_NAMES:
                raise StoreError(
                    f"{where} is not an imagec-pipe store: it has no {LAYOUT_FILE} file and "
                    "holds other files; choose a store directory with --store"
                )
            if DB_FILE not in names:
                store._refuse_lost_database(names)
                return None  # empty, or interrupted creation
            # Without its layout file (written last by ``_init``, and by the next pull
            # again), a database with a schema is still the store: taken for none, a
            # store that lost only that file was "no store yet" to images, and verify
            # checked nothing and found nothing damaged.
            if LAYOUT_FILE in names:
                store._check_layout(where / LAYOUT_FILE)
            version, empty = store._read(
                lambda conn: (store._schema_version(conn), not _has_tables(conn))
            )
            if empty:  # its creation stopped short, or the database was emptied
                store._refuse_empty_database()
                return None
        if version < SCHEMA_VERSION:
            raise StoreError(
                f"store {where} has database schema version {version}, older than this "
                f"imagec-pipe's ({SCHEMA_VERSION}); a pull into it upgrades it"
            )
        return store

    def _init(self, *, check_cancelled: Callable[[], None] | None = None) -> None:
        """Create or check the store; ``check_cancelled`` is called while it waits for the
        store's lock or another process's hold on the database, neither held (see
        ``open_async``).

        Its database steps wait in slices (``_while_busy``), as a transaction's start
        does: a connection that keeps others from reading the database (a writer
        committing to a rollback journal, one in exclusive locking mode) or from
        switching it to WAL (any other connection to a rollback journal) held them in
        SQLite's busy handler, through Ctrl-C and cancels alike, for ``BUSY_TIMEOUT_S``.
        Each step opens its own connections and changes nothing it does not finish (the
        migration is one transaction), so a step is simply made again."""
        path = self.path
        with self._errors(OPEN):
            if path.exists() and not path.is_dir():
                raise StoreError(
                    f"store path {path} exists and is not a directory; "
                    "choose a new or empty directory with --store"
                )
            if path.is_dir():
                names = set(os.listdir(path))
                if LAYOUT_FILE not in names and not names <= _OWN_NAMES:
                    raise StoreError(
                        f"{path} is not an imagec-pipe store: it has no {LAYOUT_FILE} file and "
                        "holds other files; choose a new or empty directory with --store"
                    )
                self._refuse_lost_database(names)
            created = not path.exists()
            path.mkdir(parents=True, exist_ok=True)
            if created:
                _fsync_dir(path.parent)
            self._blobs.mkdir(parents=True, exist_ok=True)
            self._ingest.mkdir(exist_ok=True)
            self._sweep_ingest()
            with self._locked(check_cancelled=check_cancelled):
                self._refuse_unwritable_database()
                self._refuse_unusable_folders()
                _while_busy(functools.partial(self._init_db, check_cancelled), check_cancelled)
                self._set_aside_unreadable_index()
                if not (path / INDEX_FILE).exists():  # new, or deleted: the database says
                    self._write_atomic(path / INDEX_FILE, _oci.dumps_index(_oci.empty_index()))
                self._repair_index(check_cancelled)
                layout = path / LAYOUT_FILE
                if layout.exists():
                    self._check_layout(layout)
                else:
                    data = json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode()
                    self._write_atomic(layout, data)
                    log.info("store created", store=str(path))
                _fsync_dir(path / BLOBS_DIR)
                _fsync_dir(path)
            self._wal_holder = _while_busy(self._hold_wal_open, check_cancelled)

    def _refuse_unusable_folders(self) -> None:
        """Refuse a store whose ``blobs/sha256`` this user may not write, or whose
        directory, ``ingest/`` and ``blobs/`` are not on one filesystem: each failed a
        pull only at the rename of its first layer (or of index.json, after the image's
        record was committed), after the layers were downloaded and verified."""
        if not os.access(self._blobs, os.W_OK):
            raise StoreError(
                f"cannot open store {self.path} to change it: this user may not write "
                f"{self._blobs}; {_MAKE_WRITABLE}"
            )
        if len({os.stat(p).st_dev for p in (self.path, self._ingest, self._blobs)}) > 1:
            # A bind mount of the same filesystem has the same st_dev and still fails a
            # rename across it (EXDEV): that one is found at the first rename.
            raise StoreError(f"cannot open store {self.path} to change it: {_SPLIT_STORE}")

    def _refuse_unwritable_database(self) -> None:
        """Refuse a store whose database this user may not write (another user's, one
        made read-only, on a read-only mount), or its ``-wal`` or ``-shm`` file (left by
        another user's read). SQLite opened such a database read-only without a word,
        so that a pull downloaded its layers and failed only at its first commit."""
        names = (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm")
        unwritable = [
            name
            for name in names
            if (self.path / name).exists() and not os.access(self.path / name, os.W_OK)
        ]
        if unwritable:
            raise StoreError(
                f"cannot open store {self.path} to change it: this user may not write "
                f"{', '.join(unwritable)}; {_MAKE_WRITABLE} (images, layers, inspect and "
                "verify without --repair only read it, and still can)"
            )

    def _refuse_lost_database(self, names: set[str]) -> None:
        """Refuse a store that holds images but no database (``names``: its directory).

        ``open`` used to create a new, empty ``imagec.db`` next to the old ``blobs/`` and
        ``index.json``: ``images`` listed nothing, a pull downloaded every layer again,
        and the old blobs were nobody's. The database is the only record of what was
        verified (each layer's diffID and checksum, what each reference resolved to),
        which the blobs and index.json cannot give back, so the store says what happened
        instead of guessing.

        A blob exists only after the database was made (``_init``), so blobs seen while
        the database is still missing mean it was removed, not yet to be created.
        """
        if DB_FILE in names:
            return
        self._refuse_unrecorded_images(
            f"has no database {DB_FILE}",
            "the database was deleted or moved, or another tool wrote this OCI layout",
            unless_created=True,
        )

    def _refuse_unrecorded_images(
        self, what: str, cause: str, *, unless_created: bool = False
    ) -> None:
        """Raise StoreError if ``index.json`` lists images or ``blobs/`` holds blobs: the
        store ``what`` (has no database, or an empty one), so none of them is recorded.

        ``unless_created``: not if the database appeared meanwhile (another process's
        ``_init`` made it; its blobs come after).
        """
        index = self._read_index()
        manifests = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
        blobs = 0
        with contextlib.suppress(FileNotFoundError), os.scandir(self._blobs) as entries:
            blobs = sum(1 for _ in entries)
        if not (manifests or blobs) or (unless_created and self._db_path.exists()):
            return
        refs = _listed_refs(manifests)
        shown = " ".join(refs[:_REFS_SHOWN])
        if len(refs) > _REFS_SHOWN:
            shown += f" (and {len(refs) - _REFS_SHOWN} more in {INDEX_FILE})"
        raise StoreError(
            f"store {self.path} {what}, but {INDEX_FILE} lists "
            f"{_count(len(manifests), 'image')} and {BLOBS_DIR}/ holds {_count(blobs, 'blob')}: "
            f"{cause}; without it nothing here can be listed or trusted. "
            f"Put {DB_FILE} back if you can; otherwise move the store aside (or choose "
            "another with --store) and pull again" + (f": {shown}" if refs else "")
        )

    def _refuse_empty_database(self) -> None:
        """Refuse a store whose ``imagec.db`` holds no tables while its images are there:
        a database file truncated to nothing, or replaced by an empty one. ``open`` used
        to set the schema up in it as in a new store, which forgot every image as a
        deleted database did before ``_refuse_lost_database``. A store whose creation
        stopped before its schema was committed has no blobs yet."""
        self._refuse_unrecorded_images(
            f"has an empty database {DB_FILE} (no tables)",
            "the database file was emptied or replaced (truncated, or copied short)",
        )

    def _hold_wal_open(self) -> sqlite3.Connection:
        """An idle connection for as long as the store is open.

        SQLite checkpoints the write-ahead log into the database, syncing both, whenever
        the last connection to it closes; every method here opens and closes its own, so
        each layer's commit paid a checkpoint and two fdatasyncs, undoing the batching
        the module docstring describes. While this one is open, no other is the last.
        Measured on ``many`` (40 layers, one CLI pull): 116 fdatasyncs and 38 SQLite
        busy-wait sleeps before, 16 and 11 with it; 0.742 -> 0.691 s median over 14
        interleaved cold pulls. After its first read it runs nothing, so it holds no
        lock a writer waits for, only its share of the log's index. That read waits one
        slice at most (``_init`` makes it again).
        """
        conn = self._connect_rw(check_same_thread=False, busy_timeout_s=BUSY_SLICE_S)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except BaseException:
            conn.close()
            raise
        return conn

    def _set_aside_unreadable_index(self) -> None:
        """Move an index.json that is no OCI index (cut short by a crash of another tool,
        edited by hand, a directory) to index.json.damaged (``.2``, ``.3`` … if taken),
        for ``_init`` to write it again from the database; caller holds the lock. It
        failed every pull, rm and gc, saying to repair it by hand or move the whole
        store aside. The database is the record of our images; entries other tools added
        are lost from the index, and kept in the file set aside, which is why ``rm`` and
        ``gc`` refuse while one is there (``_refuse_while_index_set_aside``): the blobs
        those entries name would look unneeded."""
        try:
            self._read_index()
            return
        except StoreError as exc:
            problem = exc.message
        except IsADirectoryError:  # no file at all: "check the store directory" was all
            problem = f"{self.path / INDEX_FILE} is a directory"
        kept, n = self.path / f"{INDEX_FILE}.damaged", 1
        while kept.exists():  # never over one set aside before: it holds entries too
            n += 1
            kept = self.path / f"{INDEX_FILE}.damaged.{n}"
        os.replace(self.path / INDEX_FILE, kept)
        _fsync_dir(self.path)
        log.warning(
            "index.json was damaged: set aside and written again from the database",
            store=str(self.path),
            problem=problem,
            kept=str(kept),
        )

    def _refuse_while_index_set_aside(self, what: str) -> None:
        """StoreError while a damaged index.json set aside is there: the entries other
        tools had in it may name blobs nothing else names, which a removal would delete
        (``_set_aside_unreadable_index``)."""
        kept = sorted(p.name for p in self.path.glob(f"{INDEX_FILE}.damaged*"))
        if kept:
            raise StoreError(
                f"cannot {what}: index.json was damaged and set aside as {', '.join(kept)}; "
                "entries other tools had in it may name blobs this would delete. Put those "
                "entries back into index.json (or give up on them), delete "
                f"{' and '.join(kept)}, and run the command again; nothing was removed"
            )

    def _repair_index(self, check_cancelled: Callable[[], None] | None = None) -> None:
        """Give every reference of the database its index.json entry. Caller holds the lock.

        ``record_image`` commits the database, then writes index.json; a process killed in
        between leaves a reference that ``images`` lists but OCI tools cannot see (or see
        at its previous image). The database is the record, so the entry is written again
        from it. Entries other tools added to index.json are left alone.
        """
        rows = self._read(
            lambda conn: conn.execute(
                """SELECT r.name, i.oci_manifest_digest, i.manifest_digest, i.platform
                   FROM refs r JOIN images i ON i.manifest_digest = r.manifest_digest"""
            ).fetchall(),
            check_cancelled,
        )
        if not rows:
            return
        index = self._read_index()
        listed = {
            m["annotations"].get(_oci.REF_NAME_ANNOTATION): m.get("digest")
            for m in index.get("manifests") or []
            if isinstance(m, dict) and isinstance(m.get("annotations"), dict)
        }
        repaired = []
        for name, oci_digest, manifest_digest, platform in rows:
            if listed.get(name) == oci_digest:
                continue
            try:
                digest = Digest.parse(oci_digest)
                original = None if manifest_digest == oci_digest else Digest.parse(manifest_digest)
                parsed_platform = Platform.parse(platform)
            except (ImagecError, TypeError, AttributeError) as exc:
                # A UsageError (exit 2) from Platform.parse; a column of another type.
                raise self._damaged_record(name, exc) from exc
            try:
                size = self._blob_path(digest).stat().st_size
            except FileNotFoundError:  # removed by hand: nothing to list; a pull restores it
                log.warning(
                    f"cannot list {name} in index.json: its manifest blob is missing from "
                    "the store; pull it again",
                    store=str(self.path),
                    digest=oci_digest,
                )
                continue
            entry = _oci.index_entry(
                digest=digest,
                size=size,
                platform=parsed_platform,
                ref_name=name,
                original=original,
            )
            index = _oci.index_with_entry(index, entry)
            repaired.append(name)
        if repaired:
            self._write_atomic(self.path / INDEX_FILE, _oci.dumps_index(index))
            log.warning(
                "index.json repaired: it lacked references the database records (a pull "
                "interrupted after recording its image, an rm that failed or was killed "
                "before its database change was made, or an edit by hand)",
                store=str(self.path),
                refs=repaired,
            )

    def _sweep_ingest(self) -> None:
        """Remove partial files left by processes that died (killed mid-download).

        A writer holds an exclusive ``flock`` on its file until it has renamed or removed
        it (``_create_locked``), and the kernel lets go of it when the writer dies. A file
        whose lock can be taken is therefore abandoned; one whose lock cannot, another
        live process's download, is never touched. (The pid in the name is not the test:
        it means nothing in another PID namespace, and a container's pull is pid 1.)
        A file that cannot be removed is warned about, not fatal: this is housekeeping.
        """
        with os.scandir(self._ingest) as entries:
            for entry in entries:
                if _INGEST_NAME.fullmatch(entry.name) is None:
                    continue
                try:
                    self._remove_abandoned(entry.path)
                except OSError as exc:
                    log.warning(
                        "stale ingest file not removed",
                        store=str(self.path),
                        file=entry.name,
                        error=str(exc),
                    )

    def _remove_abandoned(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # its writer is alive
            with contextlib.suppress(FileNotFoundError):  # committed meanwhile: renamed
                os.unlink(path)
                log.info(
                    "stale ingest file removed", store=str(self.path), file=os.path.basename(path)
                )
        finally:
            os.close(fd)

    def _check_layout(self, layout: Path) -> None:
        try:
            version = json.loads(layout.read_bytes()).get("imageLayoutVersion")
        except (ValueError, AttributeError) as exc:
            raise StoreError(
                f"{layout} is not a valid OCI layout file; repair or move the store aside"
            ) from exc
        if version != LAYOUT_VERSION:
            raise StoreError(
                f"store {self.path} is an OCI image layout of version {version!r}, "
                f"this imagec-pipe understands {LAYOUT_VERSION}; use another --store"
            )

    def _init_db(self, check_cancelled: Callable[[], None] | None = None) -> None:
        """Create or upgrade the schema: one try of ``_init``'s (``_while_busy``)."""
        with self._db_try(create=True) as conn:
            if not _has_tables(conn):  # before anything is written to it
                self._refuse_empty_database()
            conn.execute("PRAGMA journal_mode = WAL")
            version = self._schema_version(conn)
            if version == SCHEMA_VERSION:
                return
            with _transaction(conn, check_cancelled):
                version = self._schema_version(conn)
                for step in range(version, SCHEMA_VERSION):
                    for statement in _MIGRATIONS[step]:
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _schema_version(self, conn: sqlite3.Connection) -> int:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path} has database schema version {version}, newer than this "
                f"imagec-pipe understands ({SCHEMA_VERSION}); upgrade imagec-pipe or use "
                "another --store"
            )
        return version

    # -- plumbing ------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(
        self, action: str, *, digest: object = None, ref: str | None = None
    ) -> Iterator[None]:
        """Translate OSError / sqlite3.Error raised in the block into StoreError."""
        try:
            yield
        except (OSError, sqlite3.Error) as exc:
            if self._read_as_is and isinstance(exc, sqlite3.DatabaseError):
                # Read without locks (``_connect_immutable``): a process that wrote the
                # database meanwhile makes it look damaged to this read, which is not
                # the advice to move the store aside.
                raise StoreError(
                    f"cannot {_action_text(action, self.path)}: {exc}; the database was "
                    "read without locks (the disk is full, or this user may not write "
                    "the store) and another process may have changed it meanwhile; run "
                    "the command again (if it says so again, the database is damaged: "
                    "move the store aside and pull again)",
                    digest=str(digest) if digest is not None else None,
                    ref=ref,
                ) from exc
            raise store_error(self.path, action, exc, digest=digest, ref=ref) from exc

    @contextlib.contextmanager
    def _db(
        self,
        *,
        synchronous: str = "FULL",
        check_cancelled: Callable[[], None] | None = None,
    ) -> Iterator[sqlite3.Connection]:
        """A fresh connection for this call (connections are bound to their thread), for a
        transaction (``_transaction``), whose start is its one wait for another
        connection's lock, made in slices.

        Opening it reads the schema (``PRAGMA synchronous`` does), which another connection
        may keep from being read (a rollback journal's writer committing, one in exclusive
        locking mode); that wait is made in slices (``_while_busy``), ``check_cancelled``
        asked between them, as the transaction's start is. Its busy timeout stays
        ``BUSY_SLICE_S``: nothing after that start waits (see ``_begin``). Reads go
        through ``_read``."""
        conn = _while_busy(
            functools.partial(self._connect_once, synchronous=synchronous), check_cancelled
        )
        try:
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def _db_try(self, *, create: bool = False) -> Iterator[sqlite3.Connection]:
        """A fresh connection whose statements wait ``BUSY_SLICE_S`` at most for another
        connection's lock: one try, which the caller makes again (``_while_busy``)."""
        conn = self._connect_once(create=create)
        try:
            yield conn
        finally:
            conn.close()

    def _connect_once(
        self, *, synchronous: str = "FULL", create: bool = False
    ) -> sqlite3.Connection:
        """A connection set up for this store, having waited ``BUSY_SLICE_S`` at most."""
        conn = self._connect(create=create, busy_timeout_s=BUSY_SLICE_S)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_SLICE_S * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _read(
        self,
        read: Callable[[sqlite3.Connection], _T],
        check_cancelled: Callable[[], None] | None = None,
    ) -> _T:
        """``read(conn)`` on a fresh connection, made again while another connection keeps
        the database from being read, for up to ``BUSY_TIMEOUT_S`` (``_while_busy``).

        WAL readers wait for no writer, but for a connection in exclusive locking mode,
        or one committing to a rollback journal (another tool may set
        ``journal_mode=DELETE`` on a store nobody has open); SQLite's own busy wait for
        it sleeps through signals and cancels, so that ``imagec-pipe images`` took a
        Ctrl-C only after ``BUSY_TIMEOUT_S``, and a pull's lookups (``committed_layer``,
        ``record_image``'s) kept its cancelled thread as long. Between two slices the
        main thread takes its signals and ``check_cancelled`` may raise; ``read`` only
        reads, so making it again changes nothing."""

        def once() -> _T:
            with self._db_try() as conn:
                return read(conn)

        return _while_busy(once, check_cancelled)

    def _connect_rw(
        self,
        *,
        create: bool = False,
        check_same_thread: bool = True,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
    ) -> sqlite3.Connection:
        """A read-write connection. Only ``_init_db`` creates the database: one deleted
        under an open store is an error (see ``_hint``), not a new, empty record that the
        store's blobs are then missing from."""
        return sqlite3.connect(
            f"{self._db_path.as_uri()}?mode={'rwc' if create else 'rw'}",
            uri=True,
            timeout=busy_timeout_s,
            isolation_level=None,
            check_same_thread=check_same_thread,
        )

    def _connect(
        self, *, create: bool = False, busy_timeout_s: float = BUSY_TIMEOUT_S
    ) -> sqlite3.Connection:
        """A read-write connection, or for a read-only store one that cannot write.

        A reader of a WAL database creates its ``-wal`` and ``-shm`` files when they are
        missing, and the last connection to close removes them after folding the log into
        the database, which needs write access to the file: a ``mode=ro`` connection
        never does, so ``imagec-pipe images`` left both behind in a store that had none.
        Where this process may write the database, a read-only store's connection is
        therefore opened read-write with ``query_only`` on: it changes no row (SQLite
        refuses the statement), and on closing it tidies up as a pull's does.

        Where it may not (a read-only mount, another user's store), ``mode=ro``; and as
        SQLite reads a WAL database only with its shared-memory file beside it, which it
        creates when it may, where it may not and the file is not there, the database is
        opened as immutable (its log empty: see below): read as it is, without locks.
        That is sound while nobody writes it, as nobody can through a read-only mount; in
        another user's store, a listing taken while its owner pulls may miss the newest
        image or fail, and is simply taken again. A ``mode=ro`` open that fails while the
        file is there is an error (``_unreadable_in_use``), not a read without locks.

        On a full disk, SQLite cannot create that shared-memory file either, and a user
        lists the images just then, to choose what to remove. Where the log is empty or
        gone (a store at rest: the last connection folds it into the database), the
        database file holds every committed row, and nobody can write a new one without
        space: it is read as immutable too.

        Where this process may write the store's directory but not its database (another
        user's store in a shared directory, an ``imagec.db`` made read-only), ``mode=ro``
        created the missing ``-wal`` and ``-shm`` files and left them behind, this user's
        with the database's mode: the store's owner, who may not write them, could then
        pull no more ("attempt to write a readonly database"); and on a full disk it
        failed. A store at rest there (no ``-shm`` file: no connection has the database
        open; no log to replay) is read as immutable, which creates nothing; one in use
        shares its owner's files through ``mode=ro``.

        Between the two, a log that holds rows and no ``-shm`` file (a process that
        opened the database in exclusive locking mode and was killed, a store copied
        without its ``-shm`` file) is refused (``_refuse_unfolded_log``): ``mode=ro``
        created the ``-shm`` file to read the log with, this user's, and left it behind;
        through a read-only mount, where it could not, the database was read as
        immutable, without the log, so that ``images`` left out the images pulled last
        without a word.
        """
        if not self.read_only:
            return self._connect_rw(create=create, busy_timeout_s=busy_timeout_s)
        uri = self._db_path.as_uri()
        if os.access(self._db_path, os.W_OK) and os.access(self.path, os.W_OK):
            conn = self._connect_rw(busy_timeout_s=busy_timeout_s)
            try:
                conn.execute("PRAGMA query_only = ON")
                conn.execute("SELECT count(*) FROM sqlite_master")  # makes the -shm file
                return conn
            except sqlite3.OperationalError as exc:
                conn.close()
                if not (_no_space_for(exc, self.path) and self._log_is_empty()):
                    raise
            except sqlite3.Error:
                conn.close()
                raise
            return self._connect_immutable()
        if self._at_rest():
            return self._connect_immutable()
        self._refuse_unfolded_log()
        conn = sqlite3.connect(
            f"{uri}?mode=ro", uri=True, timeout=busy_timeout_s, isolation_level=None
        )
        try:
            conn.execute("SELECT count(*) FROM sqlite_master")  # SQLite opens the file here
            return conn
        except sqlite3.OperationalError as exc:
            conn.close()
            if os.access(self.path, os.W_OK) or exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                raise  # busy: another connection holds it, which a caller waits for
            if not self._at_rest():
                raise self._unreadable_in_use(exc) from exc
        except sqlite3.Error:  # "file is not a database", damage: see ``_hint``
            conn.close()
            raise
        # The last connection closed since ``_at_rest`` above, taking the -shm file with
        # it, which SQLite cannot make again here.
        return self._connect_immutable()

    def _unreadable_in_use(self, exc: sqlite3.OperationalError) -> StoreError:
        """The error for a ``mode=ro`` open that failed where this process may not write
        the store's directory, while the database's ``-shm`` file says it may be in use.

        Such a failure used to be followed by an immutable read whatever its reason: one
        meant for a store at rest, whose ``-shm`` file SQLite cannot make there (``_at_rest``,
        ``_connect``). With that file present (an ``-shm`` file SQLite will not open, a
        log whose header is damaged, an I/O error), it read the database file without locks
        and without its log: rows half written by a process writing it, and none of
        those in the log, so that ``images`` left out the images pulled last without a
        word."""
        return StoreError(
            f"cannot read store {self.path}: SQLite could not open its database "
            f"{self._db_path} read-only: {exc} ({exc.sqlite_errorname}); as its "
            f"{DB_FILE}-shm file is there, a process may have it open, so it is not read "
            "without locks instead (that could show changes half made, and leave out "
            f"those still in {DB_FILE}-wal). Check that this user may read {DB_FILE}, "
            f"{DB_FILE}-wal and {DB_FILE}-shm (not symlinks), then try again; if it says so "
            f"again, have a user who may write {DB_FILE} run `imagec-pipe images --store "
            f"{self.path}` once where the store is writable"
        )

    def _refuse_unfolded_log(self) -> None:
        """Refuse to read a database that this process may not write (or whose directory it
        may not) while its log holds rows and its ``-shm`` file is missing (see
        ``_connect``): SQLite reads the log only through that file, which it would
        create, this user's, or, where it cannot, would not read the log at all. Whoever
        may write the database folds the log into it by opening it once."""
        shm = self.path / f"{DB_FILE}-shm"
        if shm.exists() or self._log_is_empty():
            return
        raise StoreError(
            f"cannot read store {self.path} as this user: its database log {DB_FILE}-wal "
            f"holds changes not yet in {DB_FILE}, and there is no {DB_FILE}-shm file to read "
            f"it with; reading it would leave an {DB_FILE}-shm file of this user's that the "
            f"store's owner may not be able to use (on a read-only mount, would miss those "
            f"changes). Have a user who may write {DB_FILE} run `imagec-pipe images "
            f"--store {self.path}` once (where the store is writable), which folds the log "
            "into the database, then try again"
        )

    def _connect_immutable(self) -> sqlite3.Connection:
        """The database read as it is on disk: no lock, no log, no shared-memory file."""
        self._read_as_is = True
        return sqlite3.connect(
            f"{self._db_path.as_uri()}?mode=ro&immutable=1",
            uri=True,
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,
        )

    def _at_rest(self) -> bool:
        """Whether no connection has the database open (no shared-memory file: the last
        one to close removes it) and its log holds nothing: the file holds every row."""
        return not (self.path / f"{DB_FILE}-shm").exists() and self._log_is_empty()

    def _log_is_empty(self) -> bool:
        """Whether the database's write-ahead log holds nothing to replay."""
        try:
            return (self.path / f"{DB_FILE}-wal").stat().st_size == 0
        except FileNotFoundError:
            return True

    @contextlib.contextmanager
    def _locked(
        self, *, ref: str | None = None, check_cancelled: Callable[[], None] | None = None
    ) -> Iterator[None]:
        """Hold the store's exclusive file lock (other processes and threads wait).

        A holder is waited for up to ``LOCK_TIMEOUT_S``, as the database's own lock is,
        with a warning after ``LOCK_NOTICE_S``: a holder that never lets go (a pull
        stopped with Ctrl-Z) used to hang every later pull without a word. A dead
        holder is no matter: the kernel releases its lock. ``check_cancelled`` is called
        between polls, the lock not held (see ``record_image``).
        """
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            self._wait_for_lock(fd, ref, check_cancelled)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _wait_for_lock(
        self, fd: int, ref: str | None, check_cancelled: Callable[[], None] | None
    ) -> None:
        started = time.monotonic()
        warned = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            waited = time.monotonic() - started
            if waited >= LOCK_TIMEOUT_S:
                raise StoreError(
                    f"another process held store {self.path}'s lock ({LOCK_FILE}) for over "
                    f"{LOCK_TIMEOUT_S:g} s; if an imagec-pipe using this store is stopped "
                    "(Ctrl-Z), resume or end it, then try again",
                    ref=ref,
                )
            if not warned and waited >= LOCK_NOTICE_S:
                log.warning(
                    "waiting for another process to release the store", store=str(self.path)
                )
                warned = True
            if check_cancelled is not None:
                check_cancelled()
            time.sleep(LOCK_POLL_S)

    def _temp_path(self, name: str) -> Path:
        return self._ingest / f".{name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"

    def _write_atomic(self, target: Path, data: bytes, *, mode: int = 0o644) -> None:
        """temp file in ingest/ + fsync + rename + fsync of the target's directory."""
        with self._replacing(target, data, mode=mode) as put_in_place:
            put_in_place()

    @contextlib.contextmanager
    def _replacing(
        self, target: Path, data: bytes, *, mode: int = 0o644
    ) -> Iterator[Callable[[], None]]:
        """``target``'s new content, written and fsynced on entry to a locked temp file in
        ingest/ (where a full disk shows, before anything changed); the call yielded
        renames it into place and fsyncs the directory. A block that leaves without the
        call leaves ``target`` as it was."""
        tmp, fd = _create_locked(lambda: self._temp_path(target.name), mode)
        try:
            with os.fdopen(os.dup(fd), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

            def put_in_place() -> None:
                os.replace(tmp, target)  # still open, so still locked: no sweep takes it
                _fsync_dir(target.parent)

            yield put_in_place
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _restored_on_error(self, target: Path) -> Iterator[Callable[[], None]]:
        """Put ``target`` back as it was when the call yielded was made, should the block
        raise after it: for index.json, changed before a COMMIT that can still fail
        (``remove_images`` writes it first, so that a crash leaves rows that list it
        again; a COMMIT refused by a full disk left it changed and the rows not). The old
        file is kept from the call on as a hard link in ingest/, locked as a temp file is
        (no sweep takes it), and renamed back: an undo that needs no free space."""
        kept: tuple[Path, int] | None = None

        def keep() -> None:
            nonlocal kept
            fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # as _create_locked's, for the sweeps
                link = self._temp_path(target.name)
                os.link(target, link)
            except BaseException:
                os.close(fd)
                raise
            kept = (link, fd)

        try:
            yield keep
        except BaseException:
            if kept is not None:
                os.replace(kept[0], target)
                _fsync_dir(target.parent)
            raise
        finally:
            if kept is not None:
                with contextlib.suppress(OSError):
                    kept[0].unlink(missing_ok=True)
                os.close(kept[1])

    def _blob_path(self, digest: Digest) -> Path:
        return self._blobs / digest.hex

    @staticmethod
    def _committed_row(conn: sqlite3.Connection, blob: Path, digest: Digest) -> LayerRecord | None:
        """The record of a layer with its row and a blob file of the recorded size; None
        otherwise."""
        row = conn.execute(
            "SELECT digest, diff_id, size, uncompressed_size, media_type, xxh3 FROM layers "
            "WHERE digest = ?",
            (str(digest),),
        ).fetchone()
        if row is None:
            return None
        try:
            if blob.stat().st_size != int(row[2]):
                return None
        except FileNotFoundError:
            return None
        return LayerRecord(
            digest=Digest.parse(row[0]),
            diff_id=Digest.parse(row[1]),
            size=int(row[2]),
            uncompressed_size=None if row[3] is None else int(row[3]),
            media_type=row[4],
            xxh3=row[5],
        )

    @classmethod
    def _layer_row_ok(cls, conn: sqlite3.Connection, blob: Path, digest: Digest) -> bool:
        return cls._committed_row(conn, blob, digest) is not None

    # -- layers and blobs ------------------------------------------------------------

    def layer_committed(self, digest: Digest) -> bool:
        """Whether the layer has its row and a blob file of the recorded size."""
        return self.committed_layer(digest) is not None

    def committed_layer(
        self, digest: Digest, *, check_cancelled: Callable[[], None] | None = None
    ) -> LayerRecord | None:
        """The record of a committed layer, as ``layer_committed`` judges it; None when it
        is not committed. A pull checks a layer it skips against it, and reports its
        uncompressed size. ``check_cancelled`` as for ``commit_layer``, while the read
        waits for another connection (``_read``)."""
        blob = self._blob_path(digest)
        with self._errors("look up a layer", digest=digest):
            return self._read(lambda conn: self._committed_row(conn, blob, digest), check_cancelled)

    @contextlib.contextmanager
    def open_ingest(self, digest: Digest, *, ref: str | None = None) -> Iterator[Ingest]:
        """A new partial file for ``digest``; removed on exit unless committed. ``ref``, the
        image being pulled, is named by the errors of its writes (a full disk)."""

        def new_path() -> Path:
            return self._ingest / f"{digest.hex}.{os.getpid()}.{uuid.uuid4().hex[:16]}.partial"

        with self._errors("create an ingest file", digest=digest, ref=ref):
            path, fd = _create_locked(new_path, 0o644)
            file = os.fdopen(fd, "wb")
        ingest = Ingest(self.path, digest, path, file, ref)
        try:
            yield ingest
        finally:
            ingest._discard()

    def try_claim_layer(self, digest: Digest) -> LayerClaim | None:
        """The claim on downloading ``digest`` into this store, or None when another
        holds it: another process, or another ``Store`` object of this one (flock is per
        open file). Never waits; ``LCache.download`` polls it."""
        path = self._ingest / f"{digest.hex}.claim"
        with self._errors("claim a layer download", digest=digest):
            for _ in range(_CREATE_ATTEMPTS):
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    return None
                try:
                    if os.stat(path).st_ino == os.fstat(fd).st_ino:
                        self._sweep_partials_of(digest)
                        return LayerClaim(path, fd)
                except FileNotFoundError:
                    pass
                os.close(fd)  # released and unlinked by its holder meanwhile: again
            raise OSError(errno.EAGAIN, f"the claim file {path.name} keeps being replaced")

    def _sweep_partials_of(self, digest: Digest) -> None:
        """Remove the partial downloads of ``digest`` that dead processes left. Called
        with its claim just taken: a download in progress holds its file's lock, and one
        killed left it unlocked. ``Store.open`` sweeps them all, but a library host (a
        daemon) keeps its store open for days; here each is gone by the time the layer is
        downloaded again. Housekeeping: a file that cannot be removed stays."""
        prefix = f"{digest.hex}."
        with contextlib.suppress(OSError), os.scandir(self._ingest) as entries:
            for entry in entries:
                if entry.name.startswith(prefix) and entry.name.endswith(".partial"):
                    with contextlib.suppress(OSError):
                        self._remove_abandoned(entry.path)

    def commit_layer(
        self,
        ingest: Ingest,
        layer: VerifiedLayer,
        *,
        check_cancelled: Callable[[], None] | None = None,
    ) -> None:
        """Make a verified layer visible: rename into blobs/, then its row. Neither is
        synced here: the image's record makes both durable (see the module docstring).

        The caller verified size, digest and diffID; the file was fsynced by the stage
        (synced again here if anything was written after). If the blob already exists
        (another process committed it), the rename replaces it with identical content.

        ``check_cancelled`` is called while the row waits for another process's write
        transaction, and may raise to end the wait (a pull passes
        ``trio.from_thread.check_cancelled``: a worker thread is not cancelled with its
        task). It is called with no transaction begun, so raising leaves the blob
        without its row: what a crash there leaves, a layer the next pull downloads
        again.
        """
        desc = layer.descriptor
        digest = desc.digest
        if ingest.digest != digest:
            raise StoreError(
                f"cannot commit ingest of {ingest.digest} as layer {digest} in store {self.path}",
                digest=str(digest),
            )
        if ingest.committed:
            return
        target = self._blob_path(digest)
        started = time.perf_counter()
        with self._errors("commit a layer", digest=digest, ref=ingest.ref):
            ingest._sync_pending()
            size = ingest.path.stat().st_size
            if size != desc.size:
                raise StoreError(
                    f"refusing to commit layer {digest} in store {self.path}: the ingest file "
                    f"holds {size} bytes, the descriptor says {desc.size}",
                    digest=str(digest),
                )
            os.chmod(ingest.path, 0o444)
            os.replace(ingest.path, target)  # while open: its lock keeps sweeps away
            ingest.committed = True
            ingest._close()
            with (
                self._db(synchronous="NORMAL", check_cancelled=check_cancelled) as conn,
                _transaction(conn, check_cancelled),
            ):
                conn.execute(
                    """INSERT INTO layers (digest, diff_id, size, uncompressed_size, media_type,
                                           xxh3, committed_at)
                       VALUES (?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT (digest) DO UPDATE SET
                           diff_id = excluded.diff_id, size = excluded.size,
                           uncompressed_size = excluded.uncompressed_size,
                           media_type = excluded.media_type, xxh3 = excluded.xxh3,
                           committed_at = excluded.committed_at""",
                    (
                        str(digest),
                        str(layer.diff_id),
                        desc.size,
                        layer.uncompressed_size,
                        desc.media_type,
                        layer.xxh3,
                        time.time(),
                    ),
                )
        log.debug(
            "layer committed",
            digest=str(digest),
            size=desc.size,
            commit_s=round(time.perf_counter() - started, 6),
        )

    def write_blob(self, digest: Digest, data: bytes) -> None:
        """Store a small blob (config, manifest, index) after checking its sha256."""
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest.hex:
            raise StoreError(
                f"refusing to write blob {digest} into store {self.path}: its bytes hash to "
                f"sha256:{actual}",
                digest=str(digest),
            )
        with self._errors("write a blob", digest=digest):
            self._write_atomic(self._blob_path(digest), data, mode=0o444)

    def read_blob(self, digest: Digest) -> bytes:
        """The bytes of a blob (not re-verified: ``verify`` does that)."""
        try:
            return self._blob_path(digest).read_bytes()
        except FileNotFoundError as exc:
            raise StoreError(
                f"blob {digest} is missing from store {self.path}; pull the image again",
                digest=str(digest),
            ) from exc
        except OSError as exc:
            raise store_error(self.path, "read a blob", exc, digest=digest) from exc

    # -- images ----------------------------------------------------------------------

    def record_image(
        self, resolved: ResolvedImage, *, check_cancelled: Callable[[], None] | None = None
    ) -> RecordedImage:
        """Record a pulled image whose layers are all committed.

        In order: config, manifest (and index) blobs; for Docker schema2 or an OCI
        manifest naming Docker media types, the converted OCI manifest; the database rows
        in one transaction; last, the index.json entry (which replaces any entry of the
        same reference name), written before the transaction and renamed into place
        after it. The store's lock is held from the transaction to the entry,
        so that ``Store.open`` in another process never takes the moment between them for
        an interrupted pull.

        A reference with a digest (``name@sha256:…``, also ``name:tag@sha256:…``, where
        the digest wins as it does for docker) is recorded as ``name@digest`` without a
        tag; otherwise as ``name:tag``.

        ``check_cancelled``, as for ``commit_layer``, is called while waiting for the
        store's lock or another process's write transaction, neither held: raising
        leaves the image's blobs written and nothing naming them, which ``prune``
        removes.
        """
        ref = resolved.ref
        if ref.digest is not None:
            ref_name, tag = f"{ref.name}@{ref.digest}", None
        else:
            ref_name, tag = str(ref), ref.tag
        started = time.perf_counter()
        with self._errors("record an image", ref=ref_name, digest=resolved.manifest_digest):
            missing = self._read(
                lambda conn: [
                    desc.digest
                    for desc in resolved.layers
                    if not self._layer_row_ok(conn, self._blob_path(desc.digest), desc.digest)
                ],
                check_cancelled,
            )
            if missing:
                raise StoreError(
                    f"cannot record image {ref_name} in store {self.path}: its layer "
                    f"{missing[0]} is not committed",
                    ref=ref_name,
                    digest=str(missing[0]),
                )
            _fsync_dir(self._blobs)  # the layers' renames, durable before their image is
            self.write_blob(resolved.config.digest, resolved.config_bytes)
            self.write_blob(resolved.manifest_digest, resolved.manifest_bytes)
            if resolved.index_bytes is not None:
                self.write_blob(resolved.resolved_digest, resolved.index_bytes)

            oci_digest, oci_size, original = self._oci_manifest(resolved, ref_name)
            size = resolved.config.size + sum(d.size for d in resolved.layers)
            now = time.time()
            entry = _oci.index_entry(
                digest=oci_digest,
                size=oci_size,
                platform=resolved.platform,
                ref_name=ref_name,
                original=original,
            )
            with self._locked(ref=ref_name, check_cancelled=check_cancelled):
                # index.json's new content is written before the rows are committed, and
                # renamed into place after: a disk too full for it fails the pull with
                # nothing recorded (it was recorded in the database only, and listed).
                index = _oci.index_with_entry(self._read_index(), entry)
                with self._replacing(
                    self.path / INDEX_FILE, _oci.dumps_index(index)
                ) as put_in_place:
                    before = self._insert_image(
                        resolved, ref_name, tag, oci_digest, size, now, check_cancelled
                    )
                    put_in_place()
        log.info(
            "image recorded",
            ref=ref_name,
            manifest=str(resolved.manifest_digest),
            image_id=str(resolved.config.digest),
            layers=len(resolved.layers),
            size=size,
            record_s=round(time.perf_counter() - started, 6),
        )
        record = ImageRecord(
            ref=ref_name,
            repository=ref.name,
            tag=tag,
            resolved_digest=resolved.resolved_digest,
            manifest_digest=resolved.manifest_digest,
            image_id=resolved.config.digest,
            platform=resolved.platform,
            size=size,
            pulled_at=_utc(now),
            media_type=resolved.manifest_media_type,
            oci_manifest_digest=oci_digest,
        )
        now_names = (str(resolved.resolved_digest), str(resolved.manifest_digest))
        return RecordedImage(record, unchanged=before == now_names)

    def _oci_manifest(
        self, resolved: ResolvedImage, ref_name: str
    ) -> tuple[Digest, int, Digest | None]:
        """The manifest index.json lists: (digest, size, original digest if converted).

        The registry's own manifest when it is OCI through and through; else an OCI
        manifest converted from it (``_oci.needs_conversion`` says which, the config's and
        the layers' media types included: an OCI manifest naming a Docker config is as
        unreadable to skopeo and umoci as a Docker schema2 one).
        """
        media_type = resolved.manifest_media_type
        if media_type not in MediaType.MANIFESTS:
            raise StoreError(
                f"cannot record image {ref_name} in store {self.path}: manifest media type "
                f"{media_type!r} is not an image manifest",
                ref=ref_name,
                digest=str(resolved.manifest_digest),
            )
        if not _oci.needs_conversion(media_type, (resolved.config, *resolved.layers)):
            return resolved.manifest_digest, len(resolved.manifest_bytes), None
        try:
            data, digest = _oci.to_oci_manifest(resolved.manifest_bytes, resolved.manifest_digest)
        except _oci.ConversionError as exc:
            raise StoreError(
                f"cannot list image {ref_name} in store {self.path} as OCI: {exc}",
                ref=ref_name,
                digest=str(resolved.manifest_digest),
            ) from exc
        self.write_blob(digest, data)
        return digest, len(data), resolved.manifest_digest

    def _insert_image(
        self,
        resolved: ResolvedImage,
        ref_name: str,
        tag: str | None,
        oci_digest: Digest,
        size: int,
        now: float,
        check_cancelled: Callable[[], None] | None,
    ) -> tuple[str, str] | None:
        """The rows of one pulled image, in one transaction; returns the (resolved,
        manifest) digests ``ref_name`` named before, None if it is new."""
        manifest = str(resolved.manifest_digest)
        repository = resolved.ref.name
        with (
            self._db(check_cancelled=check_cancelled) as conn,
            _transaction(conn, check_cancelled),
        ):
            row = conn.execute(
                "SELECT resolved_digest, manifest_digest FROM refs WHERE name = ?", (ref_name,)
            ).fetchone()
            conn.execute(
                """INSERT INTO images (manifest_digest, config_digest, media_type,
                                       oci_manifest_digest, platform, size, pulled_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (manifest_digest) DO UPDATE SET
                       config_digest = excluded.config_digest,
                       media_type = excluded.media_type,
                       oci_manifest_digest = excluded.oci_manifest_digest,
                       platform = excluded.platform, size = excluded.size,
                       pulled_at = excluded.pulled_at""",
                (
                    manifest,
                    str(resolved.config.digest),
                    resolved.manifest_media_type,
                    str(oci_digest),
                    str(resolved.platform),
                    size,
                    now,
                ),
            )
            conn.execute("DELETE FROM image_layers WHERE manifest_digest = ?", (manifest,))
            conn.executemany(
                """INSERT INTO image_layers (manifest_digest, position, layer_digest, media_type)
                   VALUES (?, ?, ?, ?)""",
                [(manifest, i, str(d.digest), d.media_type) for i, d in enumerate(resolved.layers)],
            )
            conn.execute(
                """INSERT INTO refs (name, repository, tag, resolved_digest, manifest_digest,
                                     pulled_at)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT (name) DO UPDATE SET
                       repository = excluded.repository, tag = excluded.tag,
                       resolved_digest = excluded.resolved_digest,
                       manifest_digest = excluded.manifest_digest,
                       pulled_at = excluded.pulled_at""",
                (ref_name, repository, tag, str(resolved.resolved_digest), manifest, now),
            )
            conn.executemany(
                """INSERT INTO repo_digests (repository, digest, manifest_digest)
                   VALUES (?, ?, ?)
                   ON CONFLICT (repository, digest) DO UPDATE SET
                       manifest_digest = excluded.manifest_digest""",
                [
                    (repository, str(resolved.resolved_digest), manifest),
                    (repository, manifest, manifest),
                ],
            )
        return None if row is None else (str(row[0]), str(row[1]))

    def _read_index(self) -> dict[str, Any]:
        path = self.path / INDEX_FILE
        try:
            index = json.loads(path.read_bytes())
        except FileNotFoundError:
            return _oci.empty_index()
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(f"{path} is not valid JSON ({exc}){_INDEX_REBUILT}") from exc
        if not isinstance(index, dict):
            raise StoreError(f"{path} is not a JSON object{_INDEX_REBUILT}")
        if not isinstance(index.get("manifests", []), list | None):
            # Not an OCI index; a number here failed pull and gc with a TypeError.
            raise StoreError(
                f"{path} is not an OCI image index: its manifests are not a JSON array"
                f"{_INDEX_REBUILT}"
            )
        return index

    # -- read side -----------------------------------------------------------------

    _RECORD_SELECT = """
        SELECT r.name, r.repository, r.tag, r.resolved_digest, r.manifest_digest,
               i.config_digest, i.platform, i.size, r.pulled_at, i.media_type,
               i.oci_manifest_digest
        FROM refs r JOIN images i ON i.manifest_digest = r.manifest_digest
    """

    def _record(self, row: Sequence[Any]) -> ImageRecord:
        """A row of ``_RECORD_SELECT`` as a record; StoreError if it does not read as one.

        Every pull writes well-formed rows, so one that is not was damaged in place or
        edited by hand: its platform raised UsageError (exit 2, as if the command line
        were wrong), its time or size a TypeError (an "internal error").
        """
        try:
            if not isinstance(row[7], int):
                raise ValueError(f"its size is {row[7]!r:.40}")
            if not isinstance(row[8], int | float):
                raise ValueError(f"its time of pulling is {row[8]!r:.40}")
            return ImageRecord(
                ref=row[0],
                repository=row[1],
                tag=row[2],
                resolved_digest=Digest.parse(row[3]),
                manifest_digest=Digest.parse(row[4]),
                image_id=Digest.parse(row[5]),
                platform=Platform.parse(row[6]),
                size=row[7],
                pulled_at=_utc(row[8]),
                media_type=row[9],
                oci_manifest_digest=Digest.parse(row[10]),
            )
        except (ImagecError, ValueError, OverflowError, OSError, TypeError, AttributeError) as exc:
            # TypeError, AttributeError: a column of another type (SQLite keeps what it is
            # given), a number where a platform or a digest was, which the parsers take
            # for text.
            raise self._damaged_record(row[0], exc) from exc

    def _damaged_record(self, ref: object, exc: Exception) -> StoreError:
        """The StoreError for the row of ``ref`` that does not read (``exc`` says why)."""
        return StoreError(
            f"the record of {ref} in store {self.path} is damaged "
            f"({exc.message if isinstance(exc, ImagecError) else exc}): its database "
            f"{DB_FILE} was damaged or edited; move the store aside and pull again",
            ref=str(ref),
        )

    def list_images(self) -> list[ImageRecord]:
        """Every reference in the store, most recently pulled first."""
        with self._errors("list images"):
            rows = self._read(
                lambda conn: conn.execute(
                    self._RECORD_SELECT + " ORDER BY r.pulled_at DESC, r.name"
                ).fetchall()
            )
        return [self._record(row) for row in rows]

    def dangling_images(self) -> list[ImageRecord]:
        """The images no reference names any more, most recently pulled first: docker's
        dangling images, which a tag pulled again after it moved leaves behind. Each is
        named as ``find_image`` names one found by its ID (``repository@manifest-digest``,
        ``tag`` None). ``prune`` removes them, and ``remove_images`` one by its ID."""
        with self._errors("list images"):
            rows = self._read(
                lambda conn: conn.execute(
                    self._UNNAMED_RECORD_SELECT
                    + """ WHERE NOT EXISTS
                            (SELECT 1 FROM refs r WHERE r.manifest_digest = i.manifest_digest)
                          ORDER BY i.pulled_at DESC, d.repository"""
                ).fetchall()
            )
        records: dict[Digest, ImageRecord] = {}
        for row in rows:  # one per repository that pulled it: the first names it
            record = self._record(row)
            records.setdefault(record.manifest_digest, record)
        return list(records.values())

    def find_image(self, ref: str) -> ImageRecord | None:
        """Find an image by reference or image ID; None if the store does not have it.

        Accepts the full normalised reference (``docker.io/library/alpine:latest``), a
        familiar one (``alpine``), ``name@sha256:…`` (also for an image pulled by tag), and
        a prefix of an image ID, of any length as docker takes one (``sha256:`` optional),
        once no reference of that name is found: ``deadbeefcafe`` is first the repository
        of that name's ``latest``, as in docker's lookup; a whole ID (64 digits) is only an
        ID. An ID finds an image no reference names any more too (docker's dangling image,
        left by a tag pulled again after it moved), as ``docker inspect <ID>`` does: its
        record's ``ref`` is then ``repository@manifest-digest`` (which finds it again) and
        its ``tag`` None. A prefix of several images' IDs raises StoreError, and so does
        ``name@digest`` of an index the store has several platforms' images of; a
        malformed reference raises InvalidReference.
        """
        found = self._find_image(ref)
        return None if found is None else found[0]

    def _find_image(
        self, ref: str, check_cancelled: Callable[[], None] | None = None
    ) -> tuple[ImageRecord, bool] | None:
        """``find_image``'s record, and whether ``ref`` found it as an image ID prefix."""
        text = ref.strip()
        with self._errors("look up an image", ref=text):
            return self._read(functools.partial(self._look_up, text), check_cancelled)

    def _look_up(self, text: str, conn: sqlite3.Connection) -> tuple[ImageRecord, bool] | None:
        """``_find_image``'s reads, on ``conn``."""
        row = conn.execute(self._RECORD_SELECT + " WHERE r.name = ?", (text,)).fetchone()
        if row is not None:
            return self._record(row), False
        id_prefix = m.group(1) if (m := _ID_PREFIX.fullmatch(text)) else None
        if id_prefix is not None and len(id_prefix) == ID_DIGITS:
            found = self._find_by_id(conn, id_prefix)
            return None if found is None else (found, True)
        parsed = parse_reference(text)
        if parsed.digest is None:
            row = conn.execute(self._RECORD_SELECT + " WHERE r.name = ?", (str(parsed),)).fetchone()
            if row is not None:
                return self._record(row), False
            if id_prefix is not None:
                found = self._find_by_id(conn, id_prefix)
                return None if found is None else (found, True)
            return None
        name = f"{parsed.name}@{parsed.digest}"
        row = conn.execute(self._RECORD_SELECT + " WHERE r.name = ?", (name,)).fetchone()
        if row is not None:
            return self._record(row), False
        # repo_digests keeps one image per digest (the last pulled); an index's digest
        # may stand for several platforms' images, which the references it resolved for
        # tell.
        digest = str(parsed.digest)
        rows = conn.execute(
            """SELECT ?, ?, NULL, ?, i.manifest_digest, i.config_digest,
                      i.platform, i.size, i.pulled_at, i.media_type, i.oci_manifest_digest
               FROM images i WHERE i.manifest_digest IN
                   (SELECT manifest_digest FROM repo_digests WHERE repository = ? AND digest = ?
                    UNION
                    SELECT manifest_digest FROM refs WHERE repository = ? AND resolved_digest = ?)
               ORDER BY i.platform""",
            (name, parsed.name, digest, parsed.name, digest, parsed.name, digest),
        ).fetchall()
        records = [self._record(row) for row in rows]
        if len(records) > 1:  # no one image is meant
            shown = ", ".join(f"{r.platform} (image ID {r.image_id.hex[:12]})" for r in records)
            raise StoreError(
                f"{name} is ambiguous in store {self.path}: it names an index, and the "
                f"store has {len(records)} of its images: {shown}; give a tag or an image ID",
                ref=name,
            )
        return (records[0], False) if records else None

    # An image no reference names, as a record: named by its repository's name@digest
    # (each pull records repository@manifest-digest in repo_digests), by the manifest digest
    # alone should no repository know it.
    _UNNAMED_RECORD_SELECT = """
        SELECT COALESCE(d.repository || '@' || i.manifest_digest, i.manifest_digest),
               COALESCE(d.repository, ''), NULL, i.manifest_digest, i.manifest_digest,
               i.config_digest, i.platform, i.size, i.pulled_at, i.media_type,
               i.oci_manifest_digest
        FROM images i LEFT JOIN repo_digests d
             ON d.manifest_digest = i.manifest_digest AND d.digest = i.manifest_digest
    """

    def _find_by_id(self, conn: sqlite3.Connection, prefix: str) -> ImageRecord | None:
        """The image whose ID starts with ``prefix``, as its most recently pulled reference
        names it, or as ``_UNNAMED_RECORD_SELECT`` does when no reference names it; None
        when no ID starts so; StoreError when several do."""
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT config_digest FROM images WHERE substr(config_digest, 8, ?) = ?",
                (len(prefix), prefix),
            )
        ]
        if len(ids) > 1:
            # As `images` shows them, without parsing them: a damaged one is listed too.
            shown = sorted(str(i).removeprefix("sha256:")[:12] for i in ids)
            listed = ", ".join(shown[:_AMBIGUOUS_SHOWN])
            if len(ids) > _AMBIGUOUS_SHOWN:  # a prefix of one digit matches a sixteenth
                listed += f" and {len(ids) - _AMBIGUOUS_SHOWN} more"
            raise StoreError(
                f"image ID prefix {prefix} is ambiguous in store {self.path}: it matches "
                f"{len(ids)} images ({listed}); give more digits"
            )
        if not ids:
            return None
        row = conn.execute(
            self._RECORD_SELECT + " WHERE i.config_digest = ? ORDER BY r.pulled_at DESC LIMIT 1",
            (ids[0],),
        ).fetchone()
        if row is None:
            row = conn.execute(
                self._UNNAMED_RECORD_SELECT
                + " WHERE i.config_digest = ? ORDER BY i.pulled_at DESC, d.repository LIMIT 1",
                (ids[0],),
            ).fetchone()
        return None if row is None else self._record(row)

    # -- removal (rm, gc) ----------------------------------------------------------

    def try_hold_for_pull(self) -> PullHold | None:
        """The shared hold a pull keeps on the store while it runs, or None while a
        removal holds the store exclusively. Never waits; the pull polls it (between its
        layers' commits and its image's record, only this keeps ``prune`` from taking
        the layers for garbage)."""
        with self._errors("hold {store} for a pull"):
            fd = os.open(self.path / GC_LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            return PullHold(fd)

    def _refuse_in_event_loop(self, method: str, why: str | None = None) -> None:
        """Raise UsageError when ``method`` is called from a thread running trio's event
        loop. A removal waits up to ``GC_WAIT_S`` for the pulls running in the store, and
        those of this program run on that very loop, which the wait blocks: a trio
        program's ``prune()`` froze its own pulls for the whole wait, then refused ("a
        pull is running in this store"); with no pull, it still froze the loop for a
        large removal's unlinking. ``why`` says it of another method (``verify``). Its
        ``*_async`` form runs it in a worker thread instead. (In such a thread, trio's
        ``in_trio_run`` is False.)"""
        if trio.lowlevel.in_trio_run():
            if why is None:
                why = (
                    f"it waits up to {GC_WAIT_S:g} s for the pulls running in store "
                    f"{self.path}, this program's among them, and blocks them while it waits"
                )
            raise UsageError(
                f"Store.{method}() was called from trio's event loop: {why}; from trio "
                f"code use `await store.{method}_async(...)`"
            )

    @contextlib.contextmanager
    def _removing(
        self, action: str, check_cancelled: Callable[[], None] | None = None
    ) -> Iterator[None]:
        """Hold ``gc.lock`` exclusively: no pull is between its first layer lookup and
        its record. Waits up to ``GC_WAIT_S`` for running pulls (or another removal) to
        end, then refuses, saying which it waited for (a pull may run for minutes; the
        user had better choose when to wait). ``action`` is the removal's, as
        ``store_error`` takes it. ``check_cancelled`` is called between polls, the lock
        not held, and may raise to end the wait (see ``prune``)."""
        what = _action_text(action, self.path)
        if self.read_only:
            raise StoreError(
                f"cannot {what}: it was opened read-only "
                "(Store.open_existing); open it with Store.open"
            )
        if action != REMOVE_DAMAGED:  # that one removes only blobs found damaged
            self._refuse_while_index_set_aside(what)
        fd = os.open(self.path / GC_LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            started = time.monotonic()
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    pass
                if time.monotonic() - started >= GC_WAIT_S:
                    raise StoreError(
                        f"cannot {what}: {_gc_lock_holder(fd)}; "
                        f"try again when it ends (waited {GC_WAIT_S:g} s for it)"
                    )
                if check_cancelled is not None:
                    check_cancelled()
                time.sleep(LOCK_POLL_S)
            yield
        finally:
            os.close(fd)  # releases the lock

    def remove_images(
        self, refs: Sequence[str], *, check_cancelled: Callable[[], None] | None = None
    ) -> Removal:
        """Remove references from the store, as ``docker rmi`` does, and whatever only
        they kept: an image whose last reference goes loses its records, then every blob
        (manifest, index, config, layer) that nothing left in the store names is deleted.

        Each of ``refs`` is found as ``find_image`` finds it: a reference in the store, a
        familiar name, ``name@digest`` (which, for an image pulled by tag, stands for the
        reference of that repository naming it), or an image ID prefix (which also finds
        an image no reference names any more, as ``docker rmi <ID>`` does). An ID or digest
        that several references name is refused (they are listed: remove them by name).
        Nothing is removed unless every one of ``refs`` is found: a StoreError names the
        ones that are not; nor when what another tool's entry of index.json reaches cannot
        be told, as for ``prune``. Waits for running pulls as ``prune`` does, and is
        refused from trio's event loop as it is (``remove_images_async`` is for trio
        code; ``check_cancelled`` as for ``prune``). The order of the steps, and why a
        crash between any two is harmless, is in the module docstring.
        """
        self._refuse_in_event_loop("remove_images")
        with self._errors(REMOVE_IMAGES), self._removing(REMOVE_IMAGES, check_cancelled):
            names, dangling = self._removal_targets(refs, check_cancelled)
            with (
                self._locked(check_cancelled=check_cancelled),
                self._db(check_cancelled=check_cancelled) as conn,
                self._restored_on_error(self.path / INDEX_FILE) as keep_index,
                _transaction(conn, check_cancelled),
            ):
                resolved = {
                    str(row[0])
                    for name in names
                    for row in conn.execute(
                        "SELECT resolved_digest FROM refs WHERE name = ?", (name,)
                    )
                }
                named = {
                    (str(row[0]), str(row[1]))
                    for name in names
                    for row in conn.execute(
                        "SELECT repository, manifest_digest FROM refs WHERE name = ?", (name,)
                    )
                }
                manifests = {manifest for _, manifest in named} | dangling
                conn.executemany("DELETE FROM refs WHERE name = ?", [(n,) for n in names])
                orphans = [
                    m
                    for m in sorted(manifests)
                    if conn.execute(
                        "SELECT 1 FROM refs WHERE manifest_digest = ? LIMIT 1", (m,)
                    ).fetchone()
                    is None
                ]
                candidates = self._drop_images(conn, orphans) | resolved
                candidates |= self._forget_repository_digests(conn, named)
                conn.executemany(
                    """DELETE FROM layers WHERE digest = ? AND NOT EXISTS
                       (SELECT 1 FROM image_layers WHERE layer_digest = layers.digest)""",
                    [(d,) for d in sorted(candidates)],
                )
                index = _oci.index_without(self._read_index(), names)
                live = self._live_digests(conn, index)  # may refuse: nothing changed yet
                # index.json first: should the process die before COMMIT, the rows are
                # still there and the next Store.open lists them again; should the COMMIT
                # fail, the old index.json is put back.
                keep_index()
                self._write_atomic(self.path / INDEX_FILE, _oci.dumps_index(index))
                garbage = candidates - live
            deleted, reclaimed = self._delete_blobs(sorted(garbage))
        removal = Removal(
            untagged=tuple(names),
            deleted_images=tuple(Digest.parse(m) for m in orphans),
            deleted_blobs=deleted,
            reclaimed_bytes=reclaimed,
        )
        log.info(
            "images removed",
            store=str(self.path),
            untagged=list(removal.untagged),
            blobs=len(deleted),
            reclaimed_bytes=reclaimed,
        )
        return removal

    def prune(self, *, check_cancelled: Callable[[], None] | None = None) -> Removal:
        """Remove what no reference in the store needs, as ``docker image prune`` and
        containerd's garbage collection do: images no reference names any more (left by
        a tag pulled again after it moved), layer records no image uses (left by a pull
        that failed after committing some layers), and every file in ``blobs/`` that
        nothing left names, from the database or from an entry of ``index.json`` (other
        tools' entries included: what they name is kept; when that cannot be told, a
        StoreError says which entry to remove first, and nothing is removed).

        Waits up to ``GC_WAIT_S`` for the pulls running in the store to end, then raises
        StoreError: their layers are committed before their image is recorded, and in
        between nothing else says they are needed.

        Called from trio's event loop, it raises UsageError (``_refuse_in_event_loop``):
        the wait would block the loop, and with it this program's own pulls, the ones
        it waits for. Trio code awaits ``prune_async``, which runs this in a worker
        thread. ``check_cancelled`` is called while it waits (for the pulls, or for
        another process's write transaction), before anything is removed, and may raise
        to end the wait; once the removal has begun, it runs to its end.
        """
        self._refuse_in_event_loop("prune")
        with self._errors(PRUNE), self._removing(PRUNE, check_cancelled):
            with (
                self._db(check_cancelled=check_cancelled) as conn,
                _transaction(conn, check_cancelled),
            ):
                dangling = [
                    str(row[0])
                    for row in conn.execute(
                        """SELECT manifest_digest FROM images WHERE manifest_digest NOT IN
                           (SELECT manifest_digest FROM refs) ORDER BY manifest_digest"""
                    )
                ]
                self._drop_images(conn, dangling)
                conn.execute(
                    """DELETE FROM layers WHERE NOT EXISTS
                       (SELECT 1 FROM image_layers WHERE layer_digest = layers.digest)"""
                )
                live = self._live_digests(conn, self._read_index())
            garbage = sorted(
                entry.name
                for entry in os.scandir(self._blobs)
                if _HEX64.fullmatch(entry.name) and f"sha256:{entry.name}" not in live
            )
            deleted, reclaimed = self._delete_blobs([f"sha256:{hex_}" for hex_ in garbage])
        removal = Removal(
            deleted_images=tuple(Digest.parse(m) for m in dangling),
            deleted_blobs=deleted,
            reclaimed_bytes=reclaimed,
        )
        log.info(
            "store pruned",
            store=str(self.path),
            images=len(dangling),
            blobs=len(deleted),
            reclaimed_bytes=reclaimed,
        )
        return removal

    # -- removal from trio code (the library) ---------------------------------------

    async def prune_async(self) -> Removal:
        """``prune``, for trio code: run in a worker thread, so that the event loop goes on
        while it waits for the pulls running in the store (this program's own too: they
        end, and then it prunes) and while it unlinks. Waits and refuses as ``prune``
        does; a cancel scope around it ends the wait sooner.

        Cancelled while it waits (for the pulls, or for another process's write
        transaction), it removes nothing and raises ``trio.Cancelled`` at once: the
        thread checks between slices of its waits (``check_cancelled``). Cancelled once
        the removal has begun, it runs to its end first, as any thread does, so that
        nothing is left half-done; what it removed is logged ("store pruned"). The thread
        is the store's own (one at a time), not one of trio's default limiter, which the
        pulls it waits for take theirs from."""
        return await trio.to_thread.run_sync(
            functools.partial(self.prune, check_cancelled=trio.from_thread.check_cancelled),
            limiter=self._removal_thread,
        )

    async def remove_images_async(self, refs: Sequence[str]) -> Removal:
        """``remove_images``, for trio code, as ``prune_async`` is ``prune``'s."""
        return await trio.to_thread.run_sync(
            functools.partial(
                self.remove_images, refs, check_cancelled=trio.from_thread.check_cancelled
            ),
            limiter=self._removal_thread,
        )

    async def remove_damaged_async(self, damage: list[BlobDamage]) -> None:
        """``remove_damaged``, for trio code, as ``prune_async`` is ``prune``'s."""
        await trio.to_thread.run_sync(
            functools.partial(
                self.remove_damaged, damage, check_cancelled=trio.from_thread.check_cancelled
            ),
            limiter=self._removal_thread,
        )

    async def verify_async(self, *, full: bool = False) -> tuple[int, list[BlobDamage]]:
        """``verify``, for trio code: run in the store's own worker thread, as the removals'
        forms are (one at a time with them: ``remove_damaged_async`` of what it found
        waits for it), so that the event loop goes on while it reads every blob. A cancel
        scope around it ends it between two reads (``check_cancelled``); it has changed
        nothing."""
        return await trio.to_thread.run_sync(
            functools.partial(
                self.verify, full=full, check_cancelled=trio.from_thread.check_cancelled
            ),
            limiter=self._removal_thread,
        )

    def _removal_targets(
        self, refs: Sequence[str], check_cancelled: Callable[[], None] | None = None
    ) -> tuple[list[str], set[str]]:
        """The reference names ``refs`` stand for, and the manifest digests of images
        no reference names that ``refs`` reach by ``name@digest`` or image ID. Caller holds
        ``gc.lock`` exclusively: no pull changes the references meanwhile."""
        names: list[str] = []
        dangling: set[str] = set()
        unknown: list[str] = []
        for text in refs:
            lookup = self._find_image(text, check_cancelled)
            if lookup is None:
                unknown.append(text)
                continue
            record, by_id = lookup
            if by_id:
                what = f"image ID {text.strip()}"
                rows, unnamed = self._read(
                    functools.partial(self._named_by_id, record.image_id), check_cancelled
                )
                dangling |= unnamed
            else:
                what = text
                rows = self._read(functools.partial(self._naming, record), check_cancelled)
            found = [str(row[0]) for row in rows]
            if len(found) > 1:
                raise StoreError(
                    f"cannot remove {what} from store {self.path}: it names the image of "
                    f"{_count(len(found), 'reference')} ({', '.join(found)}); remove them by "
                    "name",
                    ref=text,
                )
            if not found:
                dangling.add(str(record.manifest_digest))
            names.extend(name for name in found if name not in names)
        if unknown:
            raise StoreError(
                f"no image {', '.join(repr(u) for u in unknown)} in store {self.path}; "
                "nothing was removed (`imagec-pipe images` lists the references)",
                ref=unknown[0],
            )
        return names, dangling

    @staticmethod
    def _named_by_id(image_id: Digest, conn: sqlite3.Connection) -> tuple[list[Any], set[str]]:
        """The references naming the image ``image_id``, and, named by none, the manifest
        digests of that ID (every one goes)."""
        rows = conn.execute(
            """SELECT r.name FROM refs r JOIN images i
               ON i.manifest_digest = r.manifest_digest
               WHERE i.config_digest = ? ORDER BY r.name""",
            (str(image_id),),
        ).fetchall()
        if rows:
            return rows, set()
        unnamed = conn.execute(
            "SELECT manifest_digest FROM images WHERE config_digest = ?", (str(image_id),)
        )
        return rows, {str(row[0]) for row in unnamed}

    @staticmethod
    def _naming(record: ImageRecord, conn: sqlite3.Connection) -> list[Any]:
        """The references ``record`` stands for: its own, or those of its repository naming
        its image (``name@digest`` of an image pulled by tag, or of one no tag names now)."""
        if conn.execute("SELECT 1 FROM refs WHERE name = ?", (record.ref,)).fetchone():
            return [(record.ref,)]
        return conn.execute(
            """SELECT name FROM refs WHERE repository = ? AND manifest_digest = ?
               ORDER BY name""",
            (record.repository, str(record.manifest_digest)),
        ).fetchall()

    @staticmethod
    def _drop_images(conn: sqlite3.Connection, manifests: Sequence[str]) -> set[str]:
        """Delete the records of images no reference names; returns every digest they
        used (manifests, config, layers, repository digests), the candidates for
        deletion. Their layer records stay: the caller removes the unused ones."""
        used: set[str] = set()
        for manifest in manifests:
            for row in conn.execute(
                """SELECT manifest_digest, config_digest, oci_manifest_digest FROM images
                   WHERE manifest_digest = ?""",
                (manifest,),
            ):
                used.update(str(d) for d in row)
            used.update(
                str(row[0])
                for row in conn.execute(
                    "SELECT layer_digest FROM image_layers WHERE manifest_digest = ?", (manifest,)
                )
            )
            used.update(
                str(row[0])
                for row in conn.execute(
                    "SELECT digest FROM repo_digests WHERE manifest_digest = ?", (manifest,)
                )
            )
            conn.execute("DELETE FROM repo_digests WHERE manifest_digest = ?", (manifest,))
            conn.execute("DELETE FROM image_layers WHERE manifest_digest = ?", (manifest,))
            conn.execute("DELETE FROM images WHERE manifest_digest = ?", (manifest,))
        return used

    @staticmethod
    def _forget_repository_digests(
        conn: sqlite3.Connection, named: set[tuple[str, str]]
    ) -> set[str]:
        """For each (repository, manifest digest) a removed reference named, once no
        reference of that repository names the image: forget the image's digests there
        (``repo_digests``), by which ``repository@digest`` still found an image another
        repository's reference keeps (docker untags ``name@digest`` with a repository's
        last tag too). Returns those digests (an index's among them), candidates for
        deletion."""
        forgotten: set[str] = set()
        for repository, manifest in sorted(named):
            if conn.execute(
                "SELECT 1 FROM refs WHERE repository = ? AND manifest_digest = ? LIMIT 1",
                (repository, manifest),
            ).fetchone():
                continue
            forgotten.update(
                str(row[0])
                for row in conn.execute(
                    "SELECT digest FROM repo_digests WHERE repository = ? AND manifest_digest = ?",
                    (repository, manifest),
                )
            )
            conn.execute(
                "DELETE FROM repo_digests WHERE repository = ? AND manifest_digest = ?",
                (repository, manifest),
            )
        return forgotten

    def _live_digests(self, conn: sqlite3.Connection, index: dict[str, Any]) -> set[str]:
        """Every digest something left in the store names: each image's manifests and
        config, each layer record, each reference's and repository's digest (indexes),
        and everything an entry of ``index`` (index.json as the removal leaves it)
        reaches, other tools' entries too. Raises StoreError when what an entry reaches
        cannot be told (``_index_reaches``): the caller then removes nothing."""
        live: set[str] = set()
        for query in (
            "SELECT manifest_digest, config_digest, oci_manifest_digest FROM images",
            "SELECT digest FROM layers",
            "SELECT layer_digest FROM image_layers",
            "SELECT resolved_digest FROM refs",
            "SELECT digest FROM repo_digests",
        ):
            for row in conn.execute(query):
                live.update(str(d) for d in row)
        own = {
            (str(row[0]), str(row[1]))
            for row in conn.execute(
                """SELECT r.name, i.oci_manifest_digest
                   FROM refs r JOIN images i ON i.manifest_digest = r.manifest_digest"""
            )
        }
        return live | self._index_reaches(index, own)

    def _index_reaches(self, index: dict[str, Any], own: set[tuple[str, str]]) -> set[str]:
        """The digests ``index``'s entries name, and those their manifests and indexes
        name in turn (``_named_descriptors``), read from ``blobs/``.

        An entry this store wrote (``own``: a reference's name and its image's OCI
        manifest) names only what the database names too, and is not read. One another
        tool wrote (a ``skopeo copy`` into the layout, an ``oras push``, a ``cosign
        sign``) is known from here only, so a blob its descriptor says is a manifest or an
        index (``_FOLLOWED_MEDIA_TYPES``) is read whatever its size, up to
        ``_MAX_FOLLOWED_BYTES``: skipped as a layer for being large, a big multi-platform
        index had every blob it named deleted. Such a blob that is larger still, or is no
        JSON object, raises StoreError naming it and its entry, rather than delete what it
        may name. Any other blob is read only when small enough to be a manifest
        (``_MAX_MANIFEST_BYTES``: a config, or a descriptor without a media type) and
        names nothing when it is no JSON.

        The walk keeps a list and a set, not a call stack: another tool's chain of
        indexes may be any depth, and its blobs may even name each other in a circle
        (files are not checked against their names here)."""
        pending: list[tuple[object, object, str]] = []
        for entry in index.get("manifests") or []:
            if not isinstance(entry, dict):
                continue
            digest = entry.get("digest")
            annotations = entry.get("annotations")
            name = (
                annotations.get(_oci.REF_NAME_ANNOTATION) if isinstance(annotations, dict) else None
            )
            if isinstance(name, str) and (name, digest) in own:
                continue  # its manifest is the database's: see _live_digests
            label = f"{name!r} ({digest})" if isinstance(name, str) else f"{digest}"
            pending.append((digest, entry.get("mediaType"), label))
        reached: set[str] = set()
        read: set[str] = set()
        while pending:
            text, media_type, label = pending.pop()
            if not isinstance(text, str) or not text.startswith("sha256:"):
                continue
            followed = isinstance(media_type, str) and media_type in _FOLLOWED_MEDIA_TYPES
            if text in read or (text in reached and not followed):
                continue
            reached.add(text)
            path = self._blobs / text.removeprefix("sha256:")
            if not _HEX64.fullmatch(path.name):
                continue
            limit = _MAX_FOLLOWED_BYTES if followed else _MAX_MANIFEST_BYTES
            try:
                with open(path, "rb") as file:
                    # Told by its size, not by reading it: 4 MiB of every large layer
                    # another tool's images name was read just to find it too large.
                    too_large = os.fstat(file.fileno()).st_size > limit
                    data = b"" if too_large else file.read(limit + 1)
            except FileNotFoundError:
                continue  # missing: names nothing
            if too_large or len(data) > limit:
                if followed:
                    raise self._untold(text, media_type, label, f"is over {limit / 2**20:g} MiB")
                continue  # a layer, not a manifest
            named = _named_descriptors(data)
            if named is None:
                if followed:
                    raise self._untold(text, media_type, label, "is not a JSON object")
                continue
            read.add(text)
            pending.extend((digest, child_type, label) for digest, child_type in named)
        return reached

    def _untold(self, digest: str, media_type: object, entry: str, problem: str) -> StoreError:
        """The refusal of a removal when what an index.json entry reaches cannot be told."""
        return StoreError(
            f"cannot tell which blobs {INDEX_FILE}'s entry {entry} needs in store "
            f"{self.path}: it reaches {digest}, named as {media_type}, whose blob {problem}; "
            f"nothing was removed. Remove that entry from {INDEX_FILE} (or put the blob "
            "right), then try again",
            digest=digest,
        )

    def _delete_blobs(self, digests: Sequence[str]) -> tuple[tuple[Digest, ...], int]:
        """Unlink these blobs (their records are gone already); the files removed, and
        their bytes. Caller holds ``gc.lock`` exclusively: no pull renames one of them
        back in meanwhile."""
        deleted: list[Digest] = []
        reclaimed = 0
        refused: list[tuple[Path, OSError]] = []
        for text in digests:
            digest = Digest.parse(text)
            path = self._blob_path(digest)
            try:
                size = path.lstat().st_size
                if not self._unlink_blob(path):
                    continue
            except FileNotFoundError:
                continue
            except OSError as exc:
                # The records are gone, committed: failing here said "cannot remove
                # images" of a removal that had happened (an rm again found nothing).
                # The file is garbage now, which the next gc removes.
                refused.append((path, exc))
                continue
            deleted.append(digest)
            reclaimed += size
        if deleted:
            _fsync_dir(self._blobs)
        if refused:
            first, error = refused[0]
            log.warning(
                f"{len(refused)} blob file(s) could not be removed ({error.strerror}:"
                f" {first} first); what named them is removed, and gc removes them once"
                " it may",
                store=str(self.path),
            )
        return tuple(deleted), reclaimed

    def _unlink_blob(self, path: Path) -> bool:
        """Unlink a blob's name; a directory of that name (no pull makes one) is left
        alone with a warning, not fatal to the removal of every other blob."""
        try:
            path.unlink()
        except IsADirectoryError:
            log.warning(
                "not removed: a directory, where a blob should be; remove it by hand",
                store=str(self.path),
                path=str(path),
            )
            return False
        return True

    # -- verification ------------------------------------------------------------------

    def verify(
        self, *, full: bool = False, check_cancelled: Callable[[], None] | None = None
    ) -> tuple[int, list[BlobDamage]]:
        """Check every blob against what the store knows of it: (blobs checked, damage).

        A pull trusts a committed layer by its record and its file's presence, so bit rot
        in ``blobs/`` would go unnoticed by later pulls (RELIABILITY.md: "a bit-rotted
        blob found by ``verify``"). Layers are checked by size and by the xxh3 recorded
        when they were pulled (reading at disk speed), or by sha256 when ``full``; other
        blobs (manifests, indexes, configs: small) by sha256 always. A recorded blob whose
        file is missing is damage too, a layer's or one of an image's manifests, index or
        config (``inspect`` fails on it, and OCI tools reading the layout); one that
        ``rm`` or ``gc`` removes, record and file, while this runs is not
        (``_still_missing``). An ``index.json`` that cannot be read raises StoreError, as
        it makes every pull, ``rm`` and ``gc`` in the store do: it is no sound store.

        It reads every blob, for minutes in a large store: called from trio's event loop,
        it would stop the loop (and the program's pulls) as long, and raises UsageError
        instead; trio code awaits ``verify_async``. ``check_cancelled`` is called between
        reads and may raise to end it: it changes nothing, so nothing is left half-done.
        """
        self._refuse_in_event_loop(
            "verify",
            f"it reads every blob in store {self.path}, and the event loop, this "
            "program's pulls with it, would stop for as long",
        )
        with self._errors("read index.json"):
            self._read_index()
        with self._errors("list the layers"):
            layers, needed = self._read(
                lambda conn: (
                    {
                        row[0]: (row[1], row[2])
                        for row in conn.execute("SELECT digest, size, xxh3 FROM layers")
                    },
                    self._recorded_blobs(conn),
                ),
                check_cancelled,
            )
        damage: list[tuple[Digest, str, str, int | None]] = []
        checked = 0
        with self._errors("verify the blobs"):
            names = {p.name for p in self._blobs.iterdir()}
            gone = [d for d in map(self._recorded_digest, needed) if d.hex not in names]
            for name in sorted(names):
                if not _HEX64.fullmatch(name):
                    continue
                digest = Digest.from_hex(name)
                record = layers.get(str(digest))
                try:
                    inode = self._blob_path(digest).lstat().st_ino  # before reading: see BlobDamage
                    problem = self._blob_problem(digest, record, full, check_cancelled)
                except FileNotFoundError:  # removed since the listing: see _still_missing
                    if str(digest) in needed:
                        gone.append(digest)
                    continue
                checked += 1
                if problem is not None:
                    kind = "blob" if record is None else "layer"
                    damage.append((digest, kind, problem, inode))
            missing = [
                (d, "layer" if str(d) in layers else "blob", "missing", None)
                for d in self._still_missing(gone, check_cancelled)
            ]
        damage = [*missing, *damage]
        users = self._refs_using({item[0] for item in damage}, check_cancelled)
        return checked, [
            BlobDamage(digest, kind, problem, users.get(str(digest), ()), inode)
            for digest, kind, problem, inode in damage
        ]

    @staticmethod
    def _recorded_blobs(conn: sqlite3.Connection) -> set[str]:
        """The digests whose files the records say are in ``blobs/``: every layer, and
        every image's manifest (the registry's and the one index.json lists), config,
        and the index each reference resolved to. ``record_image`` writes them before
        the rows that name them; ``rm`` and ``gc`` delete the rows first."""
        recorded: set[str] = set()
        for query in (
            "SELECT digest FROM layers",
            "SELECT manifest_digest, config_digest, oci_manifest_digest FROM images",
            "SELECT resolved_digest FROM refs",
        ):
            for row in conn.execute(query):
                recorded.update(str(d) for d in row)
        return recorded

    def _recorded_digest(self, text: str) -> Digest:
        """A digest the database records (``_recorded_blobs``); StoreError when it is none:
        a row no pull writes, damaged in place or edited, said as ``_record`` says it of an
        image's row (verify's line was the bare "digest 'sha256:zz' is not sha256 …")."""
        try:
            return Digest.parse(text)
        except InvalidDigest as exc:
            raise StoreError(
                f"a record in store {self.path} is damaged ({exc.message}): its database "
                f"{DB_FILE} was damaged or edited; move the store aside and pull again"
            ) from exc

    def _still_missing(
        self, blobs: list[Digest], check_cancelled: Callable[[], None] | None
    ) -> list[Digest]:
        """Of these blobs, found without a file, those that records still name and that
        still have no file: the damage. ``rm`` and ``gc`` delete the records, then the
        files, and may do so while ``verify`` reads the store (they do not wait for it); a
        blob whose records went too was removed, not damaged, and is no longer listed
        when its file is found gone."""
        if not blobs:
            return []
        recorded = self._read(self._recorded_blobs, check_cancelled)
        return sorted(
            (d for d in set(blobs) if str(d) in recorded and not self._blob_path(d).exists()),
            key=str,
        )

    def _blob_problem(
        self,
        digest: Digest,
        record: tuple[int, str | None] | None,
        full: bool,
        check_cancelled: Callable[[], None] | None,
    ) -> str | None:
        """What is wrong with one blob's file, or None; ``check_cancelled`` is called
        before each read."""
        path = self._blob_path(digest)
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):  # a fifo's open() waited for ever
            return f"{_file_kind(info.st_mode)}, not a regular file"
        if record is not None and info.st_size != record[0]:
            return f"{info.st_size} bytes, its record says {record[0]}"
        quick = record is not None and record[1] is not None and not full
        hasher: Any = xxhash.xxh3_128() if quick else hashlib.sha256()
        with open(path, "rb") as file:
            while True:
                if check_cancelled is not None:
                    check_cancelled()
                if not (chunk := file.read(_VERIFY_READ_BYTES)):
                    break
                hasher.update(chunk)
        if quick:
            assert record is not None
            if hasher.hexdigest() != record[1]:
                return "content changed since it was pulled (xxh3 differs)"
            return None
        if hasher.hexdigest() != digest.hex:
            return "content does not hash to its digest (sha256 differs)"
        return None

    def _refs_using(
        self, digests: set[Digest], check_cancelled: Callable[[], None] | None = None
    ) -> dict[str, tuple[str, ...]]:
        """For each digest, the references whose image uses it as a layer, config or
        manifest (the registry's, or the converted one index.json lists)."""
        if not digests:
            return {}
        found: dict[str, set[str]] = {str(d): set() for d in digests}
        with self._errors("find the images using damaged blobs"):
            rows = self._read(
                lambda conn: conn.execute(
                    """SELECT r.name, i.manifest_digest, i.config_digest, i.oci_manifest_digest,
                              r.resolved_digest, il.layer_digest
                       FROM refs r JOIN images i ON i.manifest_digest = r.manifest_digest
                       LEFT JOIN image_layers il ON il.manifest_digest = i.manifest_digest"""
                ).fetchall(),
                check_cancelled,
            )
        for name, *used in rows:
            for digest in used:
                if digest in found:
                    found[digest].add(name)
        return {digest: tuple(sorted(names)) for digest, names in found.items()}

    def pull_platforms(self, refs: Iterable[str]) -> dict[str, Platform]:
        """Of these references (``verify``'s to pull again), those whose pull needs a
        ``--platform`` to fetch the image the store holds again, with it: the image's
        recorded platform. A pull without one takes this machine's (``Platform.host()``):
        from an index, another entry than the image pulled with ``--platform`` for
        another machine. None is needed for a single manifest, pulled whatever its
        platform, nor where the kept index (``index_choice``) says a pull for this
        machine takes the same entry, nor, the index unreadable (it may be the blob
        missing), for an image of this machine's very platform. A record that does not
        read is left out: ``verify`` reports blobs, ``inspect`` says what is wrong."""
        names = set(refs)
        if not names:
            return {}
        with self._errors("read the platforms of the images to pull again"):
            rows = self._read(
                lambda conn: [row for row in conn.execute(self._RECORD_SELECT) if row[0] in names]
            )
        host = Platform.host()
        needed: dict[str, Platform] = {}
        for row in rows:
            try:
                record = self._record(row)
            except StoreError:
                continue
            if record.resolved_digest == record.manifest_digest:
                continue
            chosen = self._index_choice(record.resolved_digest, host)
            if chosen is None:
                if host.rank(record.platform) != 0:
                    needed[record.ref] = record.platform
            elif chosen != record.manifest_digest:
                needed[record.ref] = record.platform
        return needed

    def _index_choice(self, index: Digest, platform: Platform) -> Digest | None:
        """The manifest a pull for ``platform`` takes from the kept index ``index``;
        None when the index is missing, damaged (``verify`` lists it) or does not say."""
        try:
            data = self._blob_path(index).read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != index.hex:
            return None
        return index_choice(data, platform)

    def remove_damaged(
        self, damage: list[BlobDamage], *, check_cancelled: Callable[[], None] | None = None
    ) -> None:
        """Delete damaged blobs' files, so that the next pull of an image that uses one
        downloads it again (a layer is trusted only while its file is there). A file that
        a pull replaced since ``verify`` read it (a rename gives it a new inode) is left
        alone: what is there now was verified by that pull.

        Holds ``gc.lock`` exclusively, as ``rm`` and ``gc`` do (the same wait, the same
        refusal): a running pull commits its layers before its image is recorded, and
        one that found a layer committed before this unlinks it would record an image
        whose layer is gone; nor do two removals unlink beside each other. Refused from
        trio's event loop as ``prune`` is (``remove_damaged_async`` is for trio code;
        ``check_cancelled`` as for ``prune``)."""
        self._refuse_in_event_loop("remove_damaged")
        with self._errors(REMOVE_DAMAGED), self._removing(REMOVE_DAMAGED, check_cancelled):
            for item in damage:
                path = self._blob_path(item.digest)
                try:
                    if item.inode is None or os.lstat(path).st_ino != item.inode:
                        continue
                    if not self._unlink_blob(path):
                        continue
                except FileNotFoundError:
                    continue
                log.warning("damaged blob removed", store=str(self.path), digest=str(item.digest))
            _fsync_dir(self._blobs)

    def image_layers(self, record: ImageRecord) -> list[LayerRecord]:
        """The image's layers, base first (VIC's ListLayers)."""
        with self._errors("list layers", ref=record.ref):
            rows = self._read(
                lambda conn: conn.execute(
                    """SELECT l.digest, l.diff_id, l.size, l.uncompressed_size, il.media_type,
                              l.xxh3
                       FROM image_layers il JOIN layers l ON l.digest = il.layer_digest
                       WHERE il.manifest_digest = ? ORDER BY il.position""",
                    (str(record.manifest_digest),),
                ).fetchall()
            )
        return [
            LayerRecord(
                digest=Digest.parse(r[0]),
                diff_id=Digest.parse(r[1]),
                size=r[2],
                uncompressed_size=r[3],
                media_type=r[4],
                xxh3=r[5],
            )
            for r in rows
        ]


@contextlib.contextmanager
def _transaction(
    conn: sqlite3.Connection, check_cancelled: Callable[[], None] | None = None
) -> Iterator[None]:
    """BEGIN EXCLUSIVE (take every lock the COMMIT needs up front, waiting in slices:
    ``_begin``); COMMIT if the block succeeds, ROLLBACK otherwise."""
    _begin(conn, check_cancelled)
    ok = False
    try:
        yield
        ok = True
    finally:
        conn.execute("COMMIT" if ok else "ROLLBACK")


def _begin(conn: sqlite3.Connection, check_cancelled: Callable[[], None] | None) -> None:
    """BEGIN EXCLUSIVE, waiting up to ``BUSY_TIMEOUT_S`` for other connections' locks, in
    slices of ``BUSY_SLICE_S`` (``conn``'s busy timeout).

    SQLite's busy wait runs in C and sleeps through signals: a Ctrl-C of ``gc`` waiting
    for another writer took effect only when the 30 s were up (Python runs a signal's
    handler between two statements of the main thread), and a pull's worker thread
    could not be cancelled at all. Between two slices, the main thread takes its
    signals, and ``check_cancelled`` may raise (``trio.from_thread.check_cancelled`` in
    a pull's thread); no transaction has begun then, so there is nothing to undo. A
    writer that keeps the database past ``BUSY_TIMEOUT_S`` gives SQLite's own "database
    is locked" (see ``_hint``).

    EXCLUSIVE, not IMMEDIATE, so that this is the transaction's only wait. In WAL mode
    the two are one (the log's write lock; readers go on reading). In a rollback
    journal (another tool may switch a store nobody has open to one), IMMEDIATE takes
    only the lock that keeps other writers out: the COMMIT, and a statement spilling
    the page cache, then waited for every reader to end, in SQLite's busy handler, for
    ``BUSY_TIMEOUT_S`` (30 s) whatever a Ctrl-C or a cancel said, and failed after it
    ("database is locked") with the transaction's work done, index.json's too in
    ``remove_images``. EXCLUSIVE waits for those readers here, before anything is
    written; they wait for its short transaction in turn (``_read``).
    """
    _while_busy(functools.partial(conn.execute, "BEGIN EXCLUSIVE"), check_cancelled)


def _while_busy(step: Callable[[], _T], check_cancelled: Callable[[], None] | None) -> _T:
    """``step()``, made again while SQLite says another connection holds the database
    (SQLITE_BUSY), for up to ``BUSY_TIMEOUT_S``; ``step``'s connections wait
    ``BUSY_SLICE_S`` at most each time. Between two tries the main thread takes its
    signals and ``check_cancelled`` may raise. A try that SQLite refused at once (a
    rollback journal's writer blocks the switch to WAL without a wait) is followed by a
    pause of the slice, not by another try at once."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        tried = time.monotonic()
        try:
            return step()
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() >= deadline:
                raise
        if check_cancelled is not None:
            check_cancelled()
        time.sleep(max(0.0, tried + BUSY_SLICE_S - time.monotonic()))
