"""Start the CNCF distribution registry (``docker-registry``) for tests and benchmarks.

``run_registry()`` is a plain context manager (no pytest): it writes a config into a
temporary folder, starts ``docker-registry serve CONFIG`` on 127.0.0.1 with a free port
and its own storage folder, waits until ``/v2/`` answers, and on exit terminates the
process (then kills it) and removes the folder. Variants, combinable::

    run_registry()                      # plain HTTP, anonymous
    run_registry(auth="basic")          # htpasswd (bcrypt) basic auth
    run_registry(auth="token")          # bearer tokens from a TokenServer (tokens.py)
    run_registry(tls=True)              # HTTPS with a trustme CA: server.ca_pem

The registry binary is ``$IMAGEC_REGISTRY_BIN``, else ``docker-registry`` (or ``registry``)
on PATH, else ``/usr/bin/docker-registry``; ``find_registry_binary()`` returns None when
there is none, so callers can skip or fail with a clear message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import bcrypt
import httpx

from . import images as _images
from .client import registry_client, ssl_context
from .tokens import TokenServer, run_token_server

__all__ = [
    "DEFAULT_PASSWORD",
    "DEFAULT_USERNAME",
    "RegistryServer",
    "RegistryStartError",
    "find_registry_binary",
    "free_port",
    "run_registry",
]

DEFAULT_USERNAME = "alice"
DEFAULT_PASSWORD = "wonderland-s3cret"
SERVICE = "imagec-test-registry"
ISSUER = "imagec-test-token-issuer"

Auth = Literal["none", "basic", "token"]


class RegistryStartError(RuntimeError):
    """The registry did not come up; the message carries the tail of its log."""


def find_registry_binary() -> str | None:
    """The registry executable to run, or None when none is installed."""
    explicit = os.environ.get("IMAGEC_REGISTRY_BIN")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in ("docker-registry", "registry"):
        found = shutil.which(name)
        if found:
            return found
    fallback = "/usr/bin/docker-registry"
    return fallback if os.access(fallback, os.X_OK) else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RegistryServer:
    """A running registry. ``host`` is what goes in an image reference (``127.0.0.1:PORT``)."""

    host: str
    url: str
    storage_dir: Path
    workdir: Path
    auth: Auth
    tls: bool
    username: str | None
    password: str | None
    ca_pem: Path | None
    token_server: TokenServer | None
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    @property
    def credentials(self) -> tuple[str, str] | None:
        if self.username is None or self.password is None:
            return None
        return (self.username, self.password)

    def ref(self, repository: str, tag_or_digest: str = "latest") -> str:
        """``127.0.0.1:PORT/repo:tag`` or ``127.0.0.1:PORT/repo@sha256:…``."""
        sep = "@" if tag_or_digest.startswith("sha256:") else ":"
        return f"{self.host}/{repository}{sep}{tag_or_digest}"

    def client(self, *, authenticated: bool = True) -> httpx.Client:
        """A sync httpx client for this registry (auth and CA set up). Close it after use."""
        creds = self.credentials if authenticated else None
        return registry_client(
            self.url,
            username=creds[0] if creds else None,
            password=creds[1] if creds else None,
            ca_pem=self.ca_pem,
        )

    def verify(self) -> ssl.SSLContext | bool:
        """An httpx ``verify=`` value that trusts this registry's certificate."""
        return ssl_context(self.ca_pem)

    def push(
        self, repository: str, image: _images.Image | _images.Index, tag: str | None = "latest"
    ) -> str:
        """Push an image or index (with its blobs and child manifests); return its digest."""
        with self.client() as client:
            return _images.push(client, repository, image, tag)

    def blob_path(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (for corruption tests)."""
        return _images.blob_data_path(self.storage_dir, digest)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _htpasswd(path: Path, users: dict[str, str]) -> None:
    # Cost 5: the registry checks the hash on every request; the minimum keeps tests fast.
    lines = [
        f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=5)).decode()}"
        for user, pw in users.items()
    ]
    path.write_text("\n".join(lines) + "\n")


def _config(
    *,
    port: int,
    storage: Path,
    auth: Auth,
    htpasswd: Path | None,
    token_server: TokenServer | None,
    tls_files: tuple[Path, Path] | None,
    log_level: str,
) -> str:
    lines = [
        "version: 0.1",
        "log:",
        f"  level: {log_level}",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {storage}",
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        "  secret: imagec-test-secret",
        "  headers:",
        "    X-Content-Type-Options: [nosniff]",
    ]
    if tls_files is not None:
        lines += ["  tls:", f"    certificate: {tls_files[0]}", f"    key: {tls_files[1]}"]
    if auth == "basic":
        assert htpasswd is not None
        lines += ["auth:", "  htpasswd:", "    realm: imagec-test", f"    path: {htpasswd}"]
    elif auth == "token":
        assert token_server is not None
        lines += [
            "auth:",
            "  token:",
            f"    realm: {token_server.realm}",
            f"    service: {token_server.service}",
            f"    issuer: {token_server.issuer}",
            f"    rootcertbundle: {token_server.cert_path}",
        ]
    # Manifests may name http(s) URLs for their foreign (non-distributable) layers, as
    # Windows images do; distribution refuses every such URL without an allow list.
    lines += ["validation:", "  manifests:", "    urls:", "      allow:", "        - ^https?://"]
    return "\n".join(lines) + "\n"


def _wait_ready(server: RegistryServer, deadline: float) -> None:
    with httpx.Client(verify=ssl_context(server.ca_pem), timeout=2.0, trust_env=False) as client:
        while True:
            if server.process.poll() is not None:
                raise RegistryStartError(
                    f"docker-registry exited with {server.process.returncode} on "
                    f"{server.host}:\n{server.log_tail()}"
                )
            try:
                response = client.get(server.url + "/v2/")
            except httpx.TransportError:
                pass
            else:
                if response.status_code in (200, 401):
                    return
            if time.monotonic() > deadline:
                raise RegistryStartError(
                    f"docker-registry on {server.host} did not answer /v2/ in time:\n"
                    f"{server.log_tail()}"
                )
            time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextlib.contextmanager
def run_registry(
    *,
    auth: Auth = "none",
    tls: bool = False,
    users: dict[str, str] | None = None,
    public_prefixes: Sequence[str] = ("public/",),
    token_expires_in: int = 300,
    binary: str | None = None,
    workdir: str | Path | None = None,
    log_level: str = "warn",
    start_timeout: float = 20.0,
    tls_names: Sequence[str] = (),
) -> Iterator[RegistryServer]:
    """Run one registry for the duration of the ``with`` block.

    ``users`` defaults to ``{DEFAULT_USERNAME: DEFAULT_PASSWORD}``; the first user is the
    one ``server.username``/``server.password`` (and ``server.client()``) use. For
    ``auth="token"`` a TokenServer runs on another loopback port (``server.token_server``)
    granting anonymous pull under ``public_prefixes`` and everything to the users.
    ``workdir`` (config, storage, certificates, log) is removed on exit unless given.
    ``tls_names``: more names its certificate is valid for than 127.0.0.1 and localhost
    (a name a test proxy resolves for it).
    """
    exe = binary or find_registry_binary()
    if exe is None:
        raise RegistryStartError(
            "docker-registry is not installed (Debian: apt-get install docker-registry; "
            "or set IMAGEC_REGISTRY_BIN)"
        )
    users = dict(users) if users is not None else {DEFAULT_USERNAME: DEFAULT_PASSWORD}
    first_user = next(iter(users.items()), None)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="imagec-reg-")))
        else:
            root = Path(workdir)
            root.mkdir(parents=True, exist_ok=True)
        storage = root / "storage"
        storage.mkdir(exist_ok=True)

        ca_pem: Path | None = None
        tls_files: tuple[Path, Path] | None = None
        if tls:
            import trustme

            ca = trustme.CA()
            cert = ca.issue_cert("127.0.0.1", "localhost", *tls_names)
            ca_pem = root / "ca.pem"
            ca.cert_pem.write_to_path(str(ca_pem))
            tls_files = (root / "server-chain.pem", root / "server-key.pem")
            cert.private_key_pem.write_to_path(str(tls_files[1]))
            with tls_files[0].open("wb") as f:
                for blob in cert.cert_chain_pems:
                    f.write(blob.bytes())

        htpasswd: Path | None = None
        token_server: TokenServer | None = None
        if auth == "basic":
            htpasswd = root / "htpasswd"
            _htpasswd(htpasswd, users)
        elif auth == "token":
            token_server = stack.enter_context(
                run_token_server(
                    service=SERVICE,
                    issuer=ISSUER,
                    users=users,
                    public_prefixes=public_prefixes,
                    expires_in=token_expires_in,
                    workdir=root / "token",
                )
            )
        elif auth != "none":
            raise ValueError(f"unknown registry auth {auth!r}")

        scheme = "https" if tls else "http"
        last_error: RegistryStartError | None = None
        for _attempt in range(3):  # the free port may be taken between probe and bind
            port = free_port()
            config_path = root / "config.yml"
            config_path.write_text(
                _config(
                    port=port,
                    storage=storage,
                    auth=auth,
                    htpasswd=htpasswd,
                    token_server=token_server,
                    tls_files=tls_files,
                    log_level=log_level,
                )
            )
            log_path = root / f"registry-{port}.log"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [exe, "serve", str(config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C in a test must not reach the registry
                )
            server = RegistryServer(
                host=f"127.0.0.1:{port}",
                url=f"{scheme}://127.0.0.1:{port}",
                storage_dir=storage,
                workdir=root,
                auth=auth,
                tls=tls,
                username=first_user[0] if first_user and auth != "none" else None,
                password=first_user[1] if first_user and auth != "none" else None,
                ca_pem=ca_pem,
                token_server=token_server,
                process=process,
                log_path=log_path,
            )
            try:
                _wait_ready(server, time.monotonic() + start_timeout)
            except RegistryStartError as exc:
                _stop(process)
                last_error = exc
                if "address already in use" in server.log_tail().lower():
                    continue
                raise
            except BaseException:
                _stop(process)
                raise
            try:
                yield server
            finally:
                _stop(process)
            return
        assert last_error is not None
        raise last_error
