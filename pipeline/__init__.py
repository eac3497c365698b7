"""imagec-pipe: pull container images from a registry into a verified local store.

    import pipeline, trio

    async def main() -> None:
        store = await pipeline.Store.open_async("/var/lib/images")
        result = await pipeline.pull("docker.io/library/alpine", store=store)
        print(result.image_id)

    trio.run(main)

Every layer is fetched once and, in the same pass, checked against its digest,
decompressed, checked against its diffID and committed atomically. Pulls sharing one
``Store`` object share its layer cache: a layer is downloaded once however many pulls
want it. Failures raise one ``ImagecError`` subclass. From trio code, open a store with
``await Store.open_async(path)`` (a cancel scope ends its wait for another process's
lock), and remove from it with ``await store.prune_async()`` (``remove_images_async``,
``remove_damaged_async``): the synchronous removals wait for the pulls running in the
store, and refuse to run on the event loop those pulls need. So does ``verify``, which
reads every blob: await ``store.verify_async()``.

``import pipeline`` imports nothing more: each public name is imported from its module
when first used (PEP 562's module ``__getattr__``), and is then the same object as
before. The ``imagec-pipe`` entry point (``_main``) can only be imported through this
package, and it must put its signal handlers in place before trio, httpx and the
stages are imported (about 0.23 s): a Ctrl-C during those imports printed a
traceback. Type checkers and IDEs read the imports under ``TYPE_CHECKING``.
"""

import importlib

# typing.TYPE_CHECKING without importing typing (2-3 ms, before the CLI's signal handlers):
# mypy and pyright take a constant of this name for True.
TYPE_CHECKING = False
if TYPE_CHECKING:
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
    from stages import ProxySettings as ProxySettings
    from stages import PullTimeout as PullTimeout
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
    from stages import auth_file_credentials as auth_file_credentials
    from stages import docker_config_credentials as docker_config_credentials
    from stages import docker_config_path as docker_config_path
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


# Where each public name is imported from when first used, and so the names of
# ``__all__``; the imports under TYPE_CHECKING say the same for type checkers
# (tests/test_exports.py holds the two together).
_SOURCES: dict[str, tuple[str, ...]] = {
    "stages": (
        "AuthError",
        "BlobError",
        "Credentials",
        "DecompressError",
        "Descriptor",
        "DiffIDMismatch",
        "Digest",
        "DigestMismatch",
        "ImagecError",
        "InvalidDigest",
        "InvalidReference",
        "LayerTimings",
        "Limits",
        "ManifestError",
        "MediaType",
        "NotFound",
        "Platform",
        "PlatformNotFound",
        "ProgressEvent",
        "ProgressSink",
        "ProxySettings",
        "PullTimeout",
        "Reference",
        "RegistryError",
        "RegistryOptions",
        "RegistryUnavailable",
        "SizeMismatch",
        "StoreError",
        "TooManyRequests",
        "Truncated",
        "UsageError",
        "WorkerError",
        "auth_file_credentials",
        "docker_config_credentials",
        "docker_config_path",
        "parse_reference",
    ),
    "._allocator": ("freeze_startup_objects", "tune_allocator"),
    "._logging": ("configure_logging",),
    "._pull": ("LayerReport", "PullOptions", "PullResult", "PullTimings", "pull"),
    "._store": ("ImageRecord", "LayerRecord", "RecordedImage", "Removal", "Store"),
}
_SOURCE_OF = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = sorted([*_SOURCE_OF, "__version__"])


def _import_public_name(name: str) -> object:
    """The public ``name``, imported from its module and kept as a global of this one, so
    that this runs once per name."""
    module = _SOURCE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value: object = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if not TYPE_CHECKING:
    # Out of type checkers' sight: a module __getattr__ makes mypy accept any name as an
    # attribute of this module, a misspelt one too; the imports above are what they check.
    __getattr__ = _import_public_name
