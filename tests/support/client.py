"""A small synchronous registry client for the test kit: push images, fetch manifests.

It is deliberately independent of the code under test (``stages/``, ``pipeline/``): the
kit must be able to set up a registry and check what is in it even when the puller is
broken. ``RegistryAuth`` answers the registry's ``WWW-Authenticate`` challenge the way
docker does: ``Basic`` with the credentials, or ``Bearer`` by asking the token realm
(with the credentials, if any) for a token covering the challenge's scope.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Generator
from pathlib import Path

import httpx

__all__ = ["RegistryAuth", "parse_challenge", "registry_client", "ssl_context"]


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split ``Bearer realm="…",service="…",scope="a,b"`` into scheme and parameters.

    Enough for the challenges docker-registry sends (one challenge, quoted values that may
    contain commas); the puller has its own, stricter parser.
    """
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i = 0
    while i < len(rest):
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip(" ,").lower()
        i = eq + 1
        if i < len(rest) and rest[i] == '"':
            end = rest.find('"', i + 1)
            end = len(rest) if end < 0 else end
            params[key] = rest[i + 1 : end]
            i = end + 1
        else:
            end = rest.find(",", i)
            end = len(rest) if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end
        i += 1 if i < len(rest) and rest[i] == "," else 0
    return scheme.lower(), params


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


class RegistryAuth(httpx.Auth):
    """Answer a 401 challenge once: Basic credentials, or a bearer token from the realm.

    Tokens are cached per (realm, service, scope) for the life of this object, so a push
    asks the token server once per scope, not once per request.
    """

    requires_response_body = True

    def __init__(self, username: str | None = None, password: str | None = None) -> None:
        self.username = username
        self.password = password
        self._tokens: dict[tuple[str, str, str], str] = {}
        self._last_key: tuple[str, str, str] | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._last_key is not None and self._last_key in self._tokens:
            # Optimistic reuse of the last token; a 401 below falls back to the challenge.
            request.headers["Authorization"] = "Bearer " + self._tokens[self._last_key]
        response = yield request
        if response.status_code != 401:
            return
        challenge = response.headers.get("WWW-Authenticate", "")
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if self.username is None or self.password is None:
                return
            request.headers["Authorization"] = _basic(self.username, self.password)
            yield request
            return
        if scheme != "bearer" or "realm" not in params:
            return
        key = (params["realm"], params.get("service", ""), params.get("scope", ""))
        token = self._tokens.get(key)
        if token is None or request.headers.get("Authorization") == f"Bearer {token}":
            query: dict[str, str | list[str]] = {}
            if params.get("service"):
                query["service"] = params["service"]
            if params.get("scope"):
                query["scope"] = params["scope"].split(" ")
            token_request = httpx.Request("GET", params["realm"], params=query)
            if self.username is not None and self.password is not None:
                token_request.headers["Authorization"] = _basic(self.username, self.password)
            token_response = yield token_request
            if token_response.status_code != 200:
                return
            body = token_response.json()
            token = str(body.get("token") or body.get("access_token") or "")
            if not token:
                return
            self._tokens[key] = token
        self._last_key = key
        request.headers["Authorization"] = f"Bearer {token}"
        yield request


def ssl_context(ca_pem: str | Path | None) -> ssl.SSLContext | bool:
    """An httpx ``verify=`` value: a context trusting ``ca_pem``, or default verification.

    httpx 0.28 deprecates ``verify=<path>``, and pytest turns warnings into errors.
    """
    if ca_pem is None:
        return True
    return ssl.create_default_context(cafile=str(ca_pem))


def registry_client(
    base_url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    ca_pem: str | Path | None = None,
    timeout: float = 30.0,
) -> httpx.Client:
    """An ``httpx.Client`` for ``base_url`` that authenticates like docker. Close it after use."""
    return httpx.Client(
        base_url=base_url,
        auth=RegistryAuth(username, password),
        verify=ssl_context(ca_pem),
        timeout=timeout,
        trust_env=False,
    )
