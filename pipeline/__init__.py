"""imagec-pipe: pull container images from a registry into a verified local store.

    import pipeline, trio

    async def main() -> None:
        store = pipeline.Store.open("/var/lib/images")
        result = await pipeline.pull("docker.io/library/alpine", store=store)
        print(result.image_id)

    trio.run(main)

Every layer is fetched once and, in the same pass, checked against its digest,
decompressed, checked against its diffID and committed atomically. Pulls sharing one
``Store`` object share its layer cache: a layer is downloaded once however many pulls
want it. Failures raise one ``ImagecError`` subclass.
"""

from stages import AuthError as AuthError
from stages import BlobError as BlobError
from stages import Credentials as Credentials
from stages import DecompressError as DecompressError
from stages import Descriptor as Descriptor
from stages import DiffIDMismatch as DiffIDMismatch
from stages import Digest as Digest
from stages import DigestMismatch as DigestMismatch
from stages import ImagecError as ImagecError
from stages import InvalidDigest as InvalidDigest
from stages import InvalidReference as InvalidReference
from stages import LayerTimings as LayerTimings
from stages import Limits as Limits
from stages import ManifestError as ManifestError
from stages import MediaType as MediaType
from stages import NotFound as NotFound
from stages import Platform as Platform
from stages import PlatformNotFound as PlatformNotFound
from stages import ProgressEvent as ProgressEvent
from stages import ProgressSink as ProgressSink
from stages import Reference as Reference
from stages import RegistryError as RegistryError
from stages import RegistryOptions as RegistryOptions
from stages import RegistryUnavailable as RegistryUnavailable
from stages import SizeMismatch as SizeMismatch
from stages import StoreError as StoreError
from stages import TooManyRequests as TooManyRequests
from stages import Truncated as Truncated
from stages import UsageError as UsageError
from stages import WorkerError as WorkerError
from stages import parse_reference as parse_reference

from ._allocator import freeze_startup_objects as freeze_startup_objects
from ._allocator import tune_allocator as tune_allocator
from ._logging import configure_logging as configure_logging
from ._pull import LayerReport as LayerReport
from ._pull import PullOptions as PullOptions
from ._pull import PullResult as PullResult
from ._pull import PullTimings as PullTimings
from ._pull import pull as pull
from ._store import ImageRecord as ImageRecord
from ._store import LayerRecord as LayerRecord
from ._store import RecordedImage as RecordedImage
from ._store import Removal as Removal
from ._store import Store as Store

__version__ = "0.1.0"

__all__ = [
    "AuthError",
    "BlobError",
    "Credentials",
    "DecompressError",
    "Descriptor",
    "DiffIDMismatch",
    "Digest",
    "DigestMismatch",
    "ImageRecord",
    "ImagecError",
    "InvalidDigest",
    "InvalidReference",
    "LayerRecord",
    "LayerReport",
    "LayerTimings",
    "Limits",
    "ManifestError",
    "MediaType",
    "NotFound",
    "Platform",
    "PlatformNotFound",
    "ProgressEvent",
    "ProgressSink",
    "PullOptions",
    "PullResult",
    "PullTimings",
    "RecordedImage",
    "Removal",
    "Reference",
    "RegistryError",
    "RegistryOptions",
    "RegistryUnavailable",
    "SizeMismatch",
    "Store",
    "StoreError",
    "TooManyRequests",
    "Truncated",
    "UsageError",
    "WorkerError",
    "__version__",
    "configure_logging",
    "freeze_startup_objects",
    "pull",
    "tune_allocator",
]
