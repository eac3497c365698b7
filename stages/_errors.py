"""The one exception tree of imagec-pipe.

Every failure a user can see is one of these; third-party errors (httpx, zlib, zstd,
sqlite3, OSError) are translated at the edge of the stage that met them with
``raise X(...) from exc``, carrying the image reference and the digest involved::

    ImagecError
    ├── InvalidReference      the image reference cannot be parsed
    ├── InvalidDigest         a digest that is not sha256:<64 lowercase hex>
    ├── UsageError            options that contradict each other or cannot be used
    ├── RegistryError         the registry (or the way to it) failed us
    │   ├── RegistryUnavailable   connection refused, TLS failure, timeout, 5xx
    │   ├── AuthError             no or wrong credentials, token endpoint failures
    │   ├── NotFound              unknown repository, tag, manifest or blob
    │   ├── TooManyRequests       429 past the retry budget, or a Retry-After too long
    │   └── ManifestError         unusable manifest, index or config
    │       └── PlatformNotFound  no manifest for the requested platform
    ├── BlobError             a layer's bytes are not what the manifest promised
    │   ├── DigestMismatch        sha256 of the compressed bytes differs
    │   ├── DiffIDMismatch        sha256 of the uncompressed tar differs
    │   ├── SizeMismatch          more or fewer bytes than the descriptor's size
    │   ├── Truncated             the stream ended early (body or compressed stream)
    │   └── DecompressError       corrupt stream, wrong format, decompression bomb
    ├── StoreError            the local store cannot be read or written
    ├── WorkerError           a layer worker process died before it finished
    └── PullTimeout           the pull did not finish within PullOptions.timeout_s

Messages say what happened, to what, and what the user can do. They never contain a
password or a token: what a server sent back passes ``stages/_redact.py`` before it is
quoted in one (a storage server may echo the signed URL it was asked for).

An error that another attempt may cure (a 5xx, a 429, a connection that broke mid-body,
an expired signed URL) is raised with ``transient=True``, a 429's wait with
``retry_after_s`` (and who asked for it with ``retry_after_from``: the registry, a
storage server, a layer's URL, a token service), and a server that sent nothing for the
read timeout, or did not answer within the response deadline, with ``stalled_s``
(those seconds); ``stages/_retry.py`` decides from these alone whether and when to try
again, so the sites that meet a failure say what it is and one place says what to do.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BlobError",
    "DecompressError",
    "DiffIDMismatch",
    "DigestMismatch",
    "ImagecError",
    "InvalidDigest",
    "InvalidReference",
    "ManifestError",
    "NotFound",
    "PlatformNotFound",
    "PullTimeout",
    "RegistryError",
    "RegistryUnavailable",
    "SizeMismatch",
    "StoreError",
    "TooManyRequests",
    "Truncated",
    "UsageError",
    "WorkerError",
]


class ImagecError(Exception):
    """Root of every error imagec-pipe raises on purpose.

    ``ref`` is the image reference being pulled and ``digest`` the blob or manifest
    concerned, when known; both also appear in ``str(error)`` so a one-line report
    names them.
    """

    def __init__(
        self,
        message: str,
        *,
        ref: str | None = None,
        digest: str | None = None,
        transient: bool = False,
        retry_after_s: float | None = None,
        stalled_s: float | None = None,
        retry_after_from: str | None = None,
    ):
        self.message = message
        self.ref = ref
        self.digest = digest
        self.transient = transient
        self.retry_after_s = retry_after_s
        self.retry_after_from = retry_after_from
        self.stalled_s = stalled_s
        super().__init__(message)

    def extend_message(self, note: str) -> None:
        """Add ``note`` to the message of an error about to be raised as it is, by a site
        that knows more than the one that made it: its type, ``ref``, ``digest`` and
        traceback stay the ones of the failure itself."""
        self.message = f"{self.message}; {note}"
        self.args = (self.message,)

    def __reduce__(self) -> tuple[object, ...]:
        """Keep ``ref`` and ``digest`` when an error crosses a process boundary (a layer
        worker raises it in its own process)."""
        return (_rebuild, (type(self), self.message, self.ref, self.digest), self.__dict__)

    def __str__(self) -> str:
        where = []
        if self.ref and self.ref not in self.message:
            where.append(self.ref)
        if self.digest and self.digest not in self.message:
            where.append(self.digest)
        return f"{self.message} ({', '.join(where)})" if where else self.message


class InvalidReference(ImagecError):
    """The image reference is malformed."""


class InvalidDigest(ImagecError):
    """A digest string that is not ``sha256:<64 lowercase hex>``."""


class UsageError(ImagecError):
    """Options that cannot be used as given."""


class RegistryError(ImagecError):
    """The registry answered in a way that stops the pull."""


class RegistryUnavailable(RegistryError):
    """The registry could not be reached or kept failing (connect, TLS, 5xx, timeouts)."""


class AuthError(RegistryError):
    """Authentication failed or the token service misbehaved."""


class NotFound(RegistryError):
    """The repository, tag, manifest or blob does not exist (or is not visible to us)."""


class TooManyRequests(RegistryError):
    """The registry rate-limited us past what we are willing to wait."""


class ManifestError(RegistryError):
    """A manifest, index or image config is malformed, too big, or unsupported."""


class PlatformNotFound(ManifestError):
    """No manifest for the requested platform: an index lists none, or the one there is
    (a single manifest asked for by ``--platform``, an index entry naming no platform) has
    a config for another platform."""


class BlobError(ImagecError):
    """A blob's bytes do not match what the manifest promised."""


class DigestMismatch(BlobError):
    """The sha256 of the bytes received is not the descriptor's digest."""


class DiffIDMismatch(BlobError):
    """The sha256 of the uncompressed layer is not the config's diff_id."""


class SizeMismatch(BlobError):
    """More or fewer bytes arrived than the descriptor's size."""


class Truncated(BlobError):
    """A body or a compressed stream ended before it was complete."""


class DecompressError(BlobError):
    """The layer cannot be decompressed: corrupt, wrong format, or over the size caps."""


class StoreError(ImagecError):
    """The local store is unreadable, inconsistent, from a newer version, or not writable."""


class WorkerError(ImagecError):
    """A layer worker process (``--layer-workers processes``) died before it finished:
    killed, or out of memory."""


class PullTimeout(ImagecError):
    """The pull did not finish within its overall deadline (``PullOptions.timeout_s``,
    ``pull --timeout``); it was cancelled, leaving nothing unverified in the store.
    Not tried again: the deadline is the caller's bound on the whole pull, retries
    included. ``doing`` says what it was doing then, as the message does."""

    doing: str = ""


def _rebuild(
    cls: type[ImagecError], message: str, ref: str | None, digest: str | None
) -> ImagecError:
    return cls(message, ref=ref, digest=digest)
