"""The stages of a pull and the vocabulary they share.

``pipeline`` builds on this package and re-exports what the public API needs; this
package never imports ``pipeline``.
"""

from ._authfile import auth_file_credentials as auth_file_credentials
from ._config import Credentials as Credentials
from ._config import Limits as Limits
from ._config import ProxySettings as ProxySettings
from ._config import RegistryOptions as RegistryOptions
from ._dockerconfig import docker_config_credentials as docker_config_credentials
from ._dockerconfig import docker_config_path as docker_config_path
from ._errors import AuthError as AuthError
from ._errors import BlobError as BlobError
from ._errors import DecompressError as DecompressError
from ._errors import DiffIDMismatch as DiffIDMismatch
from ._errors import DigestMismatch as DigestMismatch
from ._errors import ImagecError as ImagecError
from ._errors import InvalidDigest as InvalidDigest
from ._errors import InvalidReference as InvalidReference
from ._errors import ManifestError as ManifestError
from ._errors import NotFound as NotFound
from ._errors import PlatformNotFound as PlatformNotFound
from ._errors import PullTimeout as PullTimeout
from ._errors import RegistryError as RegistryError
from ._errors import RegistryUnavailable as RegistryUnavailable
from ._errors import SizeMismatch as SizeMismatch
from ._errors import StoreError as StoreError
from ._errors import TooManyRequests as TooManyRequests
from ._errors import Truncated as Truncated
from ._errors import UsageError as UsageError
from ._errors import WorkerError as WorkerError
from ._events import LayerTimings as LayerTimings
from ._events import ProgressEvent as ProgressEvent
from ._events import ProgressSink as ProgressSink
from ._events import VerifiedLayer as VerifiedLayer
from ._reference import Reference as Reference
from ._reference import parse_reference as parse_reference
from ._types import Descriptor as Descriptor
from ._types import Digest as Digest
from ._types import MediaType as MediaType
from ._types import Platform as Platform

__all__ = [
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
    "VerifiedLayer",
    "WorkerError",
    "auth_file_credentials",
    "docker_config_credentials",
    "docker_config_path",
    "parse_reference",
]
