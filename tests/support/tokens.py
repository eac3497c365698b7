"""A bearer token server for docker-registry's ``auth: token`` mode, run in a thread.

Tokens are RS256 JWTs built by hand: header ``{"typ": "JWT", "alg": "RS256", "x5c":
[<base64 DER certificate>]}``, claims iss, sub, aud (the registry's service), exp, nbf,
iat, jti and ``access`` (``[{type, name, actions}]``). The certificate is self-signed
(generated with ``cryptography``) and is the registry's ``rootcertbundle``.

Policy: pull is granted anonymously on repositories under ``public_prefixes``; anything
else needs HTTP Basic credentials of a known user, who gets every action asked for
(pull, push, delete, ``*``). Wrong credentials get a 401. ``GET /token?service=&scope=``
(docker's flow) and ``POST /token`` with a form (OAuth2 password grant) both work, and
so does OAuth2's refresh-token grant (``grant_type=refresh_token``, what docker sends for
an ``identitytoken`` of its config) for the tokens in ``refresh_tokens``; it needs a
``client_id``, as distribution's token server does, and an unknown token gets a 400
``invalid_grant`` that quotes it back (a server must not, but one may).

For auth tests the server can be told to misbehave (``set_fault``): a 5xx, a non-JSON
body, JSON without a token, a body over 1 MiB, or a token the registry will reject; or to
issue opaque tokens and name them back when it revokes them (``revoke_opaque_tokens``).
Every request is recorded (``requests``, ``count``) so tests can check where credentials
went.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import json
import secrets
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from .servers import LoopbackHTTPServer

__all__ = ["Fault", "TokenRequest", "TokenServer", "run_token_server", "make_signing_identity"]

Fault = Literal["status", "non-json", "no-token", "huge", "bad-signature", "close"]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_signing_identity(common_name: str = "imagec test token signer") -> tuple[Any, bytes]:
    """An RSA key and a self-signed certificate (DER) usable as a token signer and root."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _dt.datetime.now(_dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(days=1))
        .not_valid_after(now + _dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server received (whatever it answered)."""

    method: str
    path: str
    service: str | None
    scopes: tuple[str, ...]
    authorization: str | None
    user: str | None  # the authenticated user; None when anonymous or wrong credentials
    status: int
    granted: tuple[dict[str, Any], ...] = ()
    grant_type: str | None = None  # a POST's form: password, refresh_token
    client_id: str | None = None


@dataclass
class TokenServer:
    """The running token server. ``realm`` goes in the registry's config."""

    url: str
    service: str
    issuer: str
    cert_path: Path
    users: dict[str, str]
    public_prefixes: tuple[str, ...]
    expires_in: int
    #: Seconds added to ``exp`` beyond ``expires_in`` (negative: tokens expire early).
    #: The registry allows 60 s of clock leeway, so use < -60 to make it refuse tokens.
    exp_skew: int = 0
    #: Omit ``expires_in`` from responses (clients must default it, 60 s per the spec).
    omit_expires_in: bool = False
    #: Refuse wrong credentials as Docker Hub's token service does, ``{"details": …}``,
    #: quoting the username and password it was sent (a server must not, but one may).
    refuse_like_docker_hub: bool = False
    #: How such a refusal quotes what it was sent: ``user:password`` as it is, the Basic
    #: credentials' base64 without the word "Basic", or percent-encoded as a form body
    #: or a URL's user info spells it (``ci:p%40ss``).
    quote_back: Literal["decoded", "base64", "percent-encoded"] = "decoded"
    #: Issue an opaque token and a refresh token (random text, as GitLab's tokens or
    #: Harbor's robot tokens look, not a JWT: the registry refuses it, as it would a
    #: revoked one), then refuse every later request with a 401 that names both, bare:
    #: ``{"details": "token T (refresh token R) was revoked"}``.
    revoke_opaque_tokens: bool = False
    #: The (token, refresh token) pairs issued so, the latest last.
    opaque_issued: list[tuple[str, str]] = field(default_factory=list)
    #: Refresh tokens (identity tokens) the server takes, and whose they are.
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    requests: list[TokenRequest] = field(default_factory=list)
    _key: Any = None
    _cert_der: bytes = b""
    _fault: Fault | None = None
    _fault_status: int = 503
    _fault_times: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def realm(self) -> str:
        return self.url + "/token"

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    @property
    def count(self) -> int:
        """How many requests the server received (faulty answers included)."""
        with self._lock:
            return len(self.requests)

    def reset(self) -> None:
        """Forget recorded requests and clear any fault (call between tests)."""
        with self._lock:
            self.requests.clear()
            self._fault = None
            self._fault_times = None
            self.exp_skew = 0
            self.omit_expires_in = False
            self.refuse_like_docker_hub = False
            self.quote_back = "decoded"
            self.revoke_opaque_tokens = False
            self.opaque_issued.clear()
            self.refresh_tokens.clear()

    def set_fault(
        self, fault: Fault | None, *, status: int = 503, times: int | None = None
    ) -> None:
        """Misbehave on the next ``times`` requests (None: until cleared with ``set_fault(None)``).

        ``status``: answer ``status`` (default 503) with a short text body. ``non-json``:
        200 with an HTML body. ``no-token``: 200 JSON without token/access_token. ``huge``:
        200 valid JSON over 1 MiB (a padding field). ``bad-signature``: a well-formed token
        whose signature does not verify. ``close``: drop the connection without answering.
        """
        with self._lock:
            self._fault = fault
            self._fault_status = status
            self._fault_times = times

    def _take_fault(self) -> tuple[Fault | None, int]:
        with self._lock:
            fault = self._fault
            if fault is not None and self._fault_times is not None:
                self._fault_times -= 1
                if self._fault_times <= 0:
                    self._fault = None
                    self._fault_times = None
            return fault, self._fault_status

    def issue(
        self, subject: str, access: Sequence[dict[str, Any]], *, expires_in: int | None = None
    ) -> str:
        """Mint a token directly (no HTTP), e.g. to test a client holding a stale token."""
        now = int(time.time())
        lifetime = self.expires_in if expires_in is None else expires_in
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + lifetime + self.exp_skew,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": list(access),
        }
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self._cert_der).decode()]}
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)

    def grant(self, user: str | None, scopes: Sequence[str]) -> list[dict[str, Any]]:
        """The access entries the policy grants ``user`` (None: anonymous) for ``scopes``."""
        access: list[dict[str, Any]] = []
        for scope in scopes:
            for item in scope.split(" "):
                parts = item.split(":")
                if len(parts) < 3:
                    continue
                kind, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
                if user is not None:
                    allowed = [a for a in actions if a]
                elif kind == "repository" and name.startswith(self.public_prefixes):
                    allowed = [a for a in actions if a == "pull"]
                else:
                    allowed = []
                if allowed:
                    access.append({"type": kind, "name": name, "actions": allowed})
        return access


def _handler(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        timeout = 60  # idle keep-alive connections end instead of holding a thread

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            self._answer(parsed.path, urllib.parse.parse_qs(parsed.query))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
            self._answer(urllib.parse.urlsplit(self.path).path, form)

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _answer(self, path: str, query: dict[str, list[str]]) -> None:
            auth = self.headers.get("Authorization")
            user: str | None = None
            bad_credentials = False
            sent = ""  # the credentials as the client sent them, "user:password"
            bad_grant = False  # a refresh token the server does not know, or no client_id
            grant_type = (query.get("grant_type") or [None])[0]
            client_id = (query.get("client_id") or [None])[0]
            if grant_type == "refresh_token":
                sent = (query.get("refresh_token") or [""])[0]
                owner = server.refresh_tokens.get(sent)
                bad_grant = owner is None or not client_id
                user = None if bad_grant else owner
            elif grant_type == "password":
                name = (query.get("username") or [""])[0]
                pw = (query.get("password") or [""])[0]
                sent = f"{name}:{pw}"
                bad_credentials = server.users.get(name) != pw
                user = None if bad_credentials else name
            elif auth:
                scheme, _, value = auth.partition(" ")
                try:
                    decoded = base64.b64decode(value, validate=True).decode()
                except ValueError:
                    decoded = ""
                name, sep, pw = decoded.partition(":")
                sent = decoded
                bad_credentials = (
                    scheme.lower() != "basic" or not sep or server.users.get(name) != pw
                )
                user = None if bad_credentials else name
            scopes = tuple(query.get("scope", []))
            service = query["service"][0] if query.get("service") else None

            def record(status: int, granted: Sequence[dict[str, Any]] = ()) -> None:
                with server._lock:
                    server.requests.append(
                        TokenRequest(
                            method=self.command,
                            path=path,
                            service=service,
                            scopes=scopes,
                            authorization=auth,
                            user=user,
                            status=status,
                            granted=tuple(granted),
                            grant_type=grant_type if self.command == "POST" else None,
                            client_id=client_id if self.command == "POST" else None,
                        )
                    )

            if path != "/token":
                record(404)
                self._send(404, b'{"error": "not found"}')
                return
            fault, fault_status = server._take_fault()
            if fault == "close":
                record(0)
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(2)
                return
            if fault == "status":
                record(fault_status)
                self._send(fault_status, b"token service unavailable\n", "text/plain")
                return
            if fault == "non-json":
                record(200)
                self._send(
                    200, b"<html><body>Welcome to the captive portal</body></html>", "text/html"
                )
                return
            if bad_grant:
                record(400)
                said = f"refresh token {sent} is not valid" if client_id else "no client_id"
                refusal = {"error": "invalid_grant", "error_description": said}
                self._send(400, json.dumps(refusal).encode())
                return
            if bad_credentials and server.refuse_like_docker_hub:
                record(401)
                name, _, pw = sent.partition(":")
                quoted = {
                    "decoded": sent,
                    "base64": base64.b64encode(sent.encode()).decode(),
                    "percent-encoded": ":".join(urllib.parse.quote(x, safe="") for x in (name, pw)),
                }[server.quote_back]
                details = f"incorrect username or password (got {quoted!r})"
                self._send(401, json.dumps({"details": details}).encode())
                return
            if bad_credentials:
                record(401)
                self._send(
                    401, b'{"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}'
                )
                return
            if server.revoke_opaque_tokens:
                self._opaque(record)
                return
            granted = server.grant(user, scopes)
            token = server.issue(user or "", granted)
            if fault == "bad-signature":
                head, claims, _sig = token.split(".")
                token = f"{head}.{claims}.{_b64url(b'not a signature' * 16)}"
            body: dict[str, Any] = {
                "token": token,
                "access_token": token,
                "issued_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            if not server.omit_expires_in:
                body["expires_in"] = server.expires_in
            if fault == "no-token":
                body.pop("token")
                body.pop("access_token")
            if fault == "huge":
                body["padding"] = "x" * (1024 * 1024 + 4096)
            record(200, granted)
            self._send(200, json.dumps(body).encode())

        def _opaque(self, record: Callable[..., None]) -> None:
            """``revoke_opaque_tokens``: the first pair, then its revocation."""
            with server._lock:
                revoked = bool(server.opaque_issued)
                if not revoked:
                    server.opaque_issued.append(
                        (secrets.token_urlsafe(24), secrets.token_urlsafe(24))
                    )
                token, refresh = server.opaque_issued[-1]
            if revoked:
                record(401)
                details = f"token {token} (refresh token {refresh}) was revoked"
                self._send(401, json.dumps({"details": details}).encode())
                return
            record(200)
            body = {"token": token, "refresh_token": refresh, "expires_in": server.expires_in}
            self._send(200, json.dumps(body).encode())

    return Handler


@contextlib.contextmanager
def run_token_server(
    *,
    service: str = "imagec-test-registry",
    issuer: str = "imagec-test-token-issuer",
    users: dict[str, str] | None = None,
    public_prefixes: Sequence[str] = ("public/",),
    expires_in: int = 300,
    workdir: str | Path | None = None,
) -> Iterator[TokenServer]:
    """Serve tokens on ``http://127.0.0.1:<free port>/token`` in a thread until exit."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="imagec-tok-")))
        else:
            root = Path(workdir)
            root.mkdir(parents=True, exist_ok=True)
        key, cert_der = make_signing_identity()
        cert_path = root / "token-signer.pem"
        cert_path.write_bytes(
            x509.load_der_x509_certificate(cert_der).public_bytes(serialization.Encoding.PEM)
        )
        state = TokenServer(
            url="",
            service=service,
            issuer=issuer,
            cert_path=cert_path,
            users=dict(users or {}),
            public_prefixes=tuple(public_prefixes),
            expires_in=expires_in,
            _key=key,
            _cert_der=cert_der,
        )
        httpd = LoopbackHTTPServer(("127.0.0.1", 0), _handler(state))
        with httpd.running("token-server") as url:
            state.url = url
            yield state
