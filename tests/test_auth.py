"""stages/_auth.py: challenge parsing, token responses, credential destinations, cache."""

from __future__ import annotations

import json
import urllib.parse

import httpx
import pytest
import trio
import trio.testing

from stages._auth import (
    Challenge,
    ChallengeError,
    Token,
    TokenCache,
    basic_authorization,
    check_credential_destination,
    choose_challenge,
    error_detail,
    fetch_token,
    host_of,
    is_internal_host,
    is_link_local_host,
    is_loopback_host,
    matches_insecure,
    parse_challenges,
    parse_realm,
    parse_token_response,
    quotable,
    resolve_host,
    resolves_internal,
    sent_secrets,
    token_url,
)
from stages._config import Credentials, Limits
from stages._errors import AuthError
from stages._http import ProxyRefused
from stages._redact import recent_tokens, remember_token
from stages._retry import retry_wait

# httpx and httpcore nest async generators that trio reports when a body is abandoned
# (here: a token body over its cap); the response itself is closed.
pytestmark = pytest.mark.filterwarnings(r"ignore:Async generator 'http(core|x)\._:ResourceWarning")

SECRET = "s3cr3t-pa55"
CREDS = Credentials("alice", SECRET)


def ch(scheme: str, **params: str) -> Challenge:
    return Challenge(scheme, tuple(params.items()))


CHALLENGES = [
    (
        ['Bearer realm="https://auth.docker.io/token",service="registry.docker.io"'],
        [ch("bearer", realm="https://auth.docker.io/token", service="registry.docker.io")],
    ),
    (
        ['Bearer realm="https://a/t",service="s",scope="repository:samalba/app:pull,push"'],
        [ch("bearer", realm="https://a/t", service="s", scope="repository:samalba/app:pull,push")],
    ),
    (
        [
            'Bearer realm="https://a/t",scope="repository:a:pull,push repository:b:pull",'
            'error="insufficient_scope"'
        ],
        [
            ch(
                "bearer",
                realm="https://a/t",
                scope="repository:a:pull,push repository:b:pull",
                error="insufficient_scope",
            )
        ],
    ),
    (['Basic realm="a \\"quoted\\" realm"'], [ch("basic", realm='a "quoted" realm')]),
    (['Basic realm="back\\\\slash"'], [ch("basic", realm="back\\slash")]),
    (['Basic realm="Registry Realm"'], [ch("basic", realm="Registry Realm")]),
    (['BEARER Realm="x", SERVICE=tok'], [ch("bearer", realm="x", service="tok")]),
    (['Bearer realm = "x" , service = y'], [ch("bearer", realm="x", service="y")]),
    (
        ['Basic realm="r1", Bearer realm="https://x/t",service="s"'],
        [ch("basic", realm="r1"), ch("bearer", realm="https://x/t", service="s")],
    ),
    (
        ['Basic realm="r1"', 'Bearer realm="https://x/t"'],
        [ch("basic", realm="r1"), ch("bearer", realm="https://x/t")],
    ),
    (["Basic, Bearer realm=x"], [ch("basic"), ch("bearer", realm="x")]),
    (["Basic"], [ch("basic")]),
    (
        ["Negotiate abc==, Basic realm=x"],
        [ch("negotiate", **{"": "abc=="}), ch("basic", realm="x")],
    ),
    (['Bearer realm="x",realm="y"'], [ch("bearer", realm="x")]),
    ([""], []),
    (["  ,  "], []),
]


@pytest.mark.parametrize(("headers", "want"), CHALLENGES)
def test_parse_challenges(headers: list[str], want: list[Challenge]) -> None:
    assert parse_challenges(headers) == want


@pytest.mark.parametrize(
    "header",
    [
        'Bearer realm="unterminated',
        'Bearer realm="x", service=',
        'Bearer realm="x" junk',
        'Bearer realm="x";service="y"',
        "=x",
        'Basic realm="x\\',
    ],
)
def test_parse_challenges_malformed(header: str) -> None:
    with pytest.raises(ChallengeError):
        parse_challenges([header])


def test_a_malformed_challenge_is_quoted_without_its_secrets() -> None:
    """The header is quoted in the error, which is logged: by the rule of
    stages/_redact.py, the realm's query and a token-named value are not."""
    header = 'Bearer realm="https://auth.example/token?sig=S1gn",token=T0ken99 junk'
    with pytest.raises(ChallengeError) as info:
        parse_challenges([header])
    message = str(info.value)
    assert "S1gn" not in message and "T0ken99" not in message
    assert "https://auth.example/token?[redacted]" in message and "token=[redacted]" in message


@pytest.mark.parametrize(
    "realm", ["https://auth.example:port/t?sig=S1gn", "ftp://auth.example/t?sig=S1gn"]
)
def test_an_unusable_realm_is_quoted_without_its_query(realm: str) -> None:
    with pytest.raises(AuthError, match="token realm") as info:
        token_url(realm, "s", "scope", quote=quotable)
    assert "S1gn" not in str(info.value)
    assert "auth.example" in str(info.value)


@pytest.mark.parametrize(
    "realm", [f"ftp://auth.example/t/{SECRET}", f"https://auth.example:port/{SECRET}", SECRET]
)
def test_an_unusable_realm_is_quoted_through_the_caller_s_cut(realm: str) -> None:
    # The realm's path kept the password: token_url quoted it through quotable without
    # the credentials. Its caller passes the cut that knows them (the registry client's:
    # test_registry's test_a_realm_carrying_the_credentials_is_quoted_without_them).
    with pytest.raises(AuthError, match="token realm") as info:
        token_url(realm, "s", "scope", quote=lambda text: quotable(text, credentials=CREDS))
    assert SECRET not in str(info.value)
    assert "[redacted]" in str(info.value)


def test_choose_challenge() -> None:
    basic = ch("basic", realm="r")
    bearer = ch("bearer", realm="https://a/t")
    assert choose_challenge([basic, bearer]) == bearer
    assert choose_challenge([ch("bearer"), basic]) == basic  # a Bearer without realm is useless
    assert choose_challenge([ch("negotiate"), basic]) == basic
    assert choose_challenge([ch("negotiate")]) is None
    assert bearer.get("realm") == "https://a/t"
    assert bearer.get("service") is None


def test_token_url() -> None:
    url = token_url("https://auth.example/token?x=1", "reg", "repository:a/b:pull", quote=quotable)
    assert url.host == "auth.example"
    assert url.params["x"] == "1"
    assert url.params["service"] == "reg"
    assert url.params["scope"] == "repository:a/b:pull"
    assert "service" not in token_url("https://a/t", "", "s", quote=quotable).params
    for bad in ["", "ftp://a/t", "/relative", "https://"]:
        with pytest.raises(AuthError):
            token_url(bad, "s", "scope", quote=quotable)
    # Credentials in the realm would replace the user's own (httpx sends them as Basic).
    with pytest.raises(AuthError, match="user name and password in its URL") as info:
        token_url("https://evil:s3cret@auth.example/token", "s", "scope", quote=quotable)
    assert "s3cret" not in str(info.value)


TOKEN_BODIES = [
    ({"token": "T"}, Token("T", 60)),
    ({"access_token": "A", "token": "T"}, Token("A", 60)),
    ({"token": "T", "expires_in": 300}, Token("T", 300)),
    ({"token": "T", "expires_in": 0}, Token("T", 60)),
    ({"token": "T", "expires_in": -5}, Token("T", 60)),
    ({"token": "T", "expires_in": "300"}, Token("T", 60)),
    ({"token": "T", "expires_in": True}, Token("T", 60)),
    ({"token": "T", "expires_in": 10**30}, Token("T", 60)),
]


@pytest.mark.parametrize(("doc", "want"), TOKEN_BODIES)
def test_parse_token_response(doc: object, want: Token) -> None:
    assert parse_token_response(json.dumps(doc).encode(), realm_host="auth.example") == want


@pytest.mark.parametrize(
    "body",
    [
        b"<html>nope</html>",
        b"",
        b"[]",
        b'"token"',
        b"{}",
        b'{"token": ""}',
        b'{"token": 5}',
        b'{"token": "a\\nb"}',
        b'{"token": NaN}',
        b"\xff\xfe{}",
        b"[" * 100000 + b"]" * 100000,
        b'{"token": "T", "expires_in": 1' + b"0" * 5000 + b"}",
    ],
)
def test_parse_token_response_bad(body: bytes) -> None:
    with pytest.raises(AuthError) as info:
        parse_token_response(body, realm_host="auth.example")
    assert "auth.example" in str(info.value)


def test_host_helpers() -> None:
    assert host_of("[::1]:5000") == "::1"
    assert host_of("Reg.Example:5000") == "reg.example"
    assert host_of("reg") == "reg"
    assert is_loopback_host("127.0.0.2") and is_loopback_host("::1")
    assert is_loopback_host("localhost") and not is_loopback_host("example.com")
    assert is_internal_host("10.1.2.3") and is_internal_host("169.254.169.254")
    assert is_internal_host("fe80::1") and is_internal_host("192.168.0.1")
    assert not is_internal_host("8.8.8.8") and not is_internal_host("auth.docker.io")


@pytest.mark.parametrize(
    "host",
    [
        "::ffff:169.254.169.254",  # IPv4-mapped
        "[::ffff:169.254.169.254]",
        "::ffff:a9fe:a9fe",
        "2002:a9fe:a9fe::1",  # 6to4
        "64:ff9b::169.254.169.254",  # NAT64's well-known prefix
        "::169.254.169.254",  # IPv4-compatible
        "2001:0:a9fe:a9fe::1",  # Teredo whose server is the metadata address
        "2001:0:808:808:0:0:5601:5601",  # Teredo whose client is (stored inverted)
    ],
)
def test_an_ipv4_address_inside_an_ipv6_one_is_classified_as_itself(host: str) -> None:
    # ipaddress classifies the IPv6 wrapper: on Python 3.11 none of these is
    # is_link_local, so a registry on a private network could send us to the cloud
    # metadata service by writing its address this way.
    assert is_link_local_host(host) and is_internal_host(host)
    assert not is_loopback_host(host)


def test_an_embedded_address_keeps_its_own_class() -> None:
    assert is_loopback_host("::ffff:127.0.0.1") and is_internal_host("64:ff9b::127.0.0.1")
    # A relay or a translator is no loopback host: no plain http, no credentials over it.
    assert not is_loopback_host("64:ff9b::127.0.0.1") and not is_loopback_host("2002:7f00:1::")
    assert is_internal_host("::ffff:10.1.2.3") and not is_link_local_host("::ffff:10.1.2.3")
    assert not is_internal_host("::ffff:8.8.8.8") and not is_internal_host("64:ff9b::8.8.8.8")
    assert is_loopback_host("::1") and not is_loopback_host("::")
    assert is_internal_host("::") and is_link_local_host("fe80::1%eth0")
    assert not is_internal_host("2606:4700:4700::1111")
    # Teredo (2001::/32) is special-purpose whatever it carries, as it was before the
    # addresses inside were classified: a public registry may not send us there.
    assert is_internal_host("2001:0:808:808::f7f7:f7f7")


async def test_resolves_internal() -> None:
    looked_up: list[str] = []

    async def resolve(host: str) -> list[str]:
        looked_up.append(host)
        return {"meta.example": ["8.8.8.8", "169.254.169.254"], "pub.example": ["8.8.4.4"]}.get(
            host, []
        )

    assert await resolves_internal("10.0.0.1", resolve)
    assert not await resolves_internal("8.8.8.8", resolve)
    assert looked_up == []  # address literals are not looked up
    assert await resolves_internal("meta.example", resolve)  # one internal address is enough
    assert not await resolves_internal("pub.example", resolve)
    assert not await resolves_internal("nowhere.example", resolve)  # does not resolve
    assert await resolves_internal("localhost", resolve)
    assert looked_up == ["meta.example", "pub.example", "nowhere.example"]


async def test_resolve_host_uses_the_system_resolver() -> None:
    # localhost is in every /etc/hosts, so this asks no DNS server.
    assert "127.0.0.1" in await resolve_host("localhost")


@pytest.mark.parametrize(
    ("authority", "listed", "want"),
    [
        ("reg:5000", ["reg"], True),
        ("reg:5000", ["reg:5000"], True),
        ("reg:5000", ["reg:5001"], False),
        ("reg", ["reg:5000"], False),
        ("REG:5000", ["reg"], True),
        ("[::1]:5000", ["[::1]"], True),
        ("[::1]:5000", ["::1"], True),
        ("[::1]:5000", ["[::1]:5000"], True),
        ("[::1]:5000", ["[::1]:5001"], False),
        ("other:5000", ["reg"], False),
        # CIDR networks, as docker's flag takes them: addresses only, no name looked up.
        ("10.1.2.3:5000", ["10.0.0.0/8"], True),
        ("10.1.2.3", ["10.0.0.0/8"], True),
        ("11.1.2.3:5000", ["10.0.0.0/8"], False),
        ("192.168.7.9:443", ["192.168.7.0/24"], True),
        ("[fd00::5]:5000", ["fd00::/8"], True),
        ("[fd00::5]:5000", ["10.0.0.0/8"], False),
        ("10.1.2.3:5000", ["::/0"], False),
        ("reg.internal:5000", ["10.0.0.0/8"], False),
        ("reg:5000", ["10.0.0.0/33"], False),  # no network, and no host either
    ],
)
def test_matches_insecure(authority: str, listed: list[str], want: bool) -> None:
    assert matches_insecure(authority, listed) is want


@pytest.mark.parametrize(
    ("url", "registry", "insecure", "allowed"),
    [
        ("https://auth.docker.io/token", "registry-1.docker.io", [], True),
        ("http://auth.docker.io/token", "registry-1.docker.io", [], False),
        ("http://auth.example/token", "reg.example", ["auth.example"], True),
        ("http://127.0.0.1:5001/token", "127.0.0.1:5000", [], True),
        ("http://localhost:5001/token", "localhost:5000", [], True),
        ("https://127.0.0.1:5001/token", "registry-1.docker.io", [], False),
        ("https://169.254.169.254/token", "registry-1.docker.io", [], False),
        ("https://10.0.0.5/token", "reg.example", [], False),
        ("https://10.0.0.5/token", "10.0.0.4:5000", [], True),
        ("https://[fe80::1]/token", "reg.example", [], False),
        # The metadata services' range: only for a registry that is link-local itself.
        ("https://169.254.169.254/token", "127.0.0.1:5000", [], False),
        ("https://169.254.169.254/token", "10.0.0.4:5000", [], False),
        ("https://[fe80::1]/token", "[::1]:5000", [], False),
        ("https://169.254.1.1/token", "169.254.1.2:5000", [], True),
        ("https://10.0.0.5/token", "127.0.0.1:5000", [], True),
        ("ftp://auth.example/token", "reg.example", [], False),
        ("http://10.0.0.5:5000/v2/", "10.0.0.5:5000", ["10.0.0.5"], True),
        ("http://10.0.0.5:5000/v2/", "10.0.0.5:5000", [], False),
    ],
)
def test_credential_destination(
    url: str, registry: str, insecure: list[str], allowed: bool
) -> None:
    reason = check_credential_destination(httpx.URL(url), registry=registry, insecure=insecure)
    assert (reason is None) is allowed, reason


async def test_token_cache_expiry(mock_clock: trio.testing.MockClock) -> None:
    cache = TokenCache()
    key = ("https://a/t", "svc", "repository:x:pull")
    assert cache.get(key) is None
    cache.put(key, Token("T", 60))
    assert cache.get(key) == Token("T", 60)
    assert cache.get(("https://a/t", "svc", "repository:y:pull")) is None
    mock_clock.jump(50)
    assert cache.get(key) is not None
    mock_clock.jump(6)  # renewed a little before the issued expiry
    assert cache.get(key) is None
    # Still cut from what the server renewing it says, until its successor replaces it.
    assert cache.secrets() == ["T"]
    cache.put(key, Token("U", 2))
    assert cache.secrets() == ["U"]
    mock_clock.jump(0.5)
    assert cache.get(key) == Token("U", 2)
    cache.discard(key)
    assert cache.get(key) is None


def test_token_repr_hides_value() -> None:
    assert "T0KEN" not in repr(Token("T0KEN", 60))
    assert SECRET not in repr(CREDS)


# -- fetch_token against a mock token service ----------------------------------------------


class TokenService:
    def __init__(self, response: httpx.Response | Exception) -> None:
        self.response = response
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if isinstance(self.response, Exception):
            raise self.response
        return self.response


async def _fetch(
    service: TokenService,
    credentials: Credentials | None = CREDS,
    *,
    realm: str = "https://auth.example/token",
) -> Token:
    async with httpx.AsyncClient(transport=httpx.MockTransport(service)) as client:
        with trio.fail_after(5):
            return await fetch_token(
                client,
                parse_realm(realm, quote=quotable),
                service="reg.example",
                scope="repository:a:pull",
                credentials=credentials,
                limits=Limits(),
                registry="reg.example",
            )


async def test_fetch_token_with_credentials() -> None:
    service = TokenService(httpx.Response(200, json={"token": "T", "expires_in": 120}))
    assert await _fetch(service) == Token("T", 120)
    (request,) = service.requests
    assert request.headers["Authorization"] == basic_authorization(CREDS)
    assert request.url.params["service"] == "reg.example"
    assert request.url.params["scope"] == "repository:a:pull"


async def test_fetch_token_with_an_identity_token_asks_by_the_refresh_token_grant() -> None:
    # docker's OAuth2 path for an "identitytoken" of its config: the token is a refresh
    # token, POSTed as a form; no Basic credentials go with it.
    service = TokenService(httpx.Response(200, json={"access_token": "A", "expires_in": 60}))
    identity = Credentials("ci", "", identity_token="idt-R7q2+/=x")
    assert await _fetch(service, identity) == Token("A", 60)
    (request,) = service.requests
    assert request.method == "POST"
    assert "Authorization" not in request.headers
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert urllib.parse.parse_qs(request.content.decode(), strict_parsing=True) == {
        "grant_type": ["refresh_token"],
        "refresh_token": ["idt-R7q2+/=x"],
        "service": ["reg.example"],
        "scope": ["repository:a:pull"],
        "client_id": ["imagec-pipe"],
    }


@pytest.mark.parametrize(
    ("realm", "posted_to"),
    [
        ("https://auth.example/token", "https://auth.example/token"),
        ("https://auth.example/token?tenant=t1", "https://auth.example/token?tenant=t1"),
    ],
)
async def test_an_identity_token_is_posted_to_the_realm_as_the_challenge_named_it(
    realm: str, posted_to: str
) -> None:
    # distribution's fetchTokenWithOAuth posts the form to the realm itself: service and
    # scope go in the form only, for OAuth2 forbids a parameter sent twice (RFC 6749 3.2).
    service = TokenService(httpx.Response(200, json={"access_token": "A", "expires_in": 60}))
    await _fetch(service, Credentials("", "", identity_token="idt-1"), realm=realm)
    (request,) = service.requests
    assert request.method == "POST"
    assert request.url == httpx.URL(posted_to)
    form = urllib.parse.parse_qs(request.content.decode(), strict_parsing=True)
    assert form["service"] == ["reg.example"] and form["scope"] == ["repository:a:pull"]


@pytest.mark.parametrize("status", [400, 401])
async def test_a_refused_identity_token_is_cut_and_its_source_named(status: int) -> None:
    # OAuth2 refuses a refresh token it no longer takes with a 400 invalid_grant.
    said = {"error": "invalid_grant", "error_description": "token idt-R7q2+/=x revoked"}
    service = TokenService(httpx.Response(status, json=said))
    identity = Credentials("", "", identity_token="idt-R7q2+/=x", source="/home/u/config.json")
    with pytest.raises(AuthError) as refused:
        await _fetch(service, identity)
    assert str(refused.value) == (
        f"the token service at auth.example refused a token for an identity token (HTTP"
        f" {status}: invalid_grant: token [redacted] revoked): check the credentials from"
        " /home/u/config.json for reg.example (log in again with docker, podman or skopeo"
        " login, or pass -u USER --password-stdin)"
    )


def test_the_secrets_of_an_identity_token_are_the_token() -> None:
    assert sent_secrets(Credentials("ci", "", identity_token="idt-1")) == ("idt-1",)
    both = Credentials("ci", "pw-1", identity_token="idt-1")
    assert sent_secrets(both)[:2] == ("idt-1", "pw-1")
    assert "idt-1" not in repr(both) and "pw-1" not in repr(both)


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"errors": [{"code": "DENIED", "message": "no"}]}, "DENIED: no"),
        ({"details": "incorrect username or password"}, "incorrect username or password"),
        ({"error": "invalid_grant", "error_description": "bad pw"}, "invalid_grant: bad pw"),
        ({"message": "token expired\n"}, "token expired"),
        (
            {"details": "see https://auth.example/x?sig=abc123"},
            "see https://auth.example/x?[redacted]",
        ),
        ({"details": "refused hunter2 for bob"}, "refused [redacted] for bob"),
        ({"errors": "not a list", "details": 5}, ""),
        (["not", "an", "object"], ""),
    ],
)
async def test_error_detail_reads_what_servers_say(body: object, said: str) -> None:
    response = httpx.Response(401, content=json.dumps(body).encode())
    assert await error_detail(response, credentials=Credentials("bob", "hunter2")) == said


async def test_error_detail_cuts_a_short_password_only_where_it_stands_alone() -> None:
    # A password "e" cut out of every word: "incorr[redacted]ct us[redacted]rnam[redacted]".
    body = {"details": "incorrect username or password (got 'ci:e')"}
    response = httpx.Response(401, content=json.dumps(body).encode())
    said = "incorrect username or password (got 'ci:[redacted]')"
    assert await error_detail(response, credentials=Credentials("ci", "e")) == said


BASIC = basic_authorization(CREDS).removeprefix("Basic ")


@pytest.mark.parametrize(
    ("quoted", "kept"),
    [
        (BASIC, "[redacted]"),  # the Basic credentials without the word "Basic"
        (BASIC.rstrip("="), "[redacted]"),  # ... and without their padding
        (BASIC.replace("=", "%3D"), "[redacted]"),  # ... as a form body would carry them
        ("alice:s3cr3t%2Dpa55", "alice:[redacted]"),  # the password as in a URL's user info
    ],
)
async def test_error_detail_cuts_the_credentials_however_a_server_quotes_them(
    quoted: str, kept: str
) -> None:
    # Only the password as sent was cut: a token service or a registry that could not
    # decode the Basic credentials it got quoted them whole, and the password with them.
    body = {"errors": [{"code": "UNAUTHORIZED", "message": f"cannot decode {quoted}"}]}
    response = httpx.Response(401, content=json.dumps(body).encode())
    said = await error_detail(response, credentials=CREDS)
    assert said == f"UNAUTHORIZED: cannot decode {kept}"


def test_sent_secrets_are_the_password_and_the_basic_credentials_padded_then_not() -> None:
    # Padded first: cut after the unpadded form, the padding would be left in the text.
    assert sent_secrets(CREDS) == (SECRET, BASIC, BASIC.rstrip("="))
    assert BASIC.endswith("=")
    unpadded = Credentials("alice", "s3cr3t-pa55x")  # user:password is 18 bytes
    assert sent_secrets(unpadded) == ("s3cr3t-pa55x", basic_authorization(unpadded)[6:])


@pytest.mark.parametrize(
    ("password", "quoted"),
    [
        ("pässwörd-Ünïcode", "xn--psswrd-ncode-gcb5n2dte"),
        ("straße-Pässe", "xn--strae-psse-83a7d"),  # IDNA 2008 keeps "ß", as httpx does
        ("straße-Pässe", "xn--strasse-psse-ocb"),  # IDNA 2003 (Python's codec): "ss"
        ("pä.wörd-Ünï", "xn--p-0fa.xn--wrd-n-gta8bxc"),  # two labels, each encoded
    ],
)
def test_a_non_ascii_password_is_cut_in_its_idna_form_too(password: str, quoted: str) -> None:
    # A host named after the password is spelt in its ASCII form where it is looked up
    # or connected to ("looking up xn--….evil.example took more than 30 s", a TLS name
    # mismatch) and where a registry writes it so (a layer's URL, a realm): the cut
    # knew the password as typed and in lower case only.
    credentials = Credentials("bob", password)
    text = f"cannot connect to https://{quoted}.evil.example/b?sig=S: no route"
    said = quotable(text, credentials=credentials)
    assert said == "cannot connect to https://[redacted].evil.example/b?[redacted]: no route"


@pytest.mark.parametrize(
    ("password", "shown"),
    [
        ("λόγος-Pässwort", "λόγοσ-pässwort"),  # IDNA 2003 folds the final sigma
        ("ﬁnance-Geheimnis-ä", "finance-geheimnis-ä"),  # and a ligature
        ("Ⅻ-Römisch-Kennwort", "xii-römisch-kennwort"),  # and a numeral
        ("pa\u0308sswort-geheim", "p\u00e4sswort-geheim"),  # typed decomposed
    ],
)
def test_a_non_ascii_password_is_cut_as_its_idna_form_decodes_too(
    password: str, shown: str
) -> None:
    # A host written in the password's ASCII form is named in Unicode by httpx
    # (URL.host decodes it): the password as IDNA mapped it, not as it was typed.
    text = f"the storage server {shown}.evil.example failed"
    said = quotable(text, credentials=Credentials("bob", password))
    assert said == "the storage server [redacted].evil.example failed"


@pytest.mark.parametrize(
    ("password", "host"),
    [
        ("pässwort-Geheim", "cdn.x-pässwort-geheim.evil.example"),  # a label holds it
        ("pässwort-Geheim", "cdn.pässwort-geheim-2.evil.example"),  # and more after it
        ("λόγος-Pässwort", "cdn.ein-λόγοσ-pässwort.evil.example"),  # mapped, then encoded
        ("pä.wörd-Ünïcode", "cdn.x-pä.wörd-ünïcode-y.evil.example"),  # across two labels
    ],
)
def test_a_non_ascii_password_inside_a_label_is_cut_from_its_idna_form(
    password: str, host: str
) -> None:
    # A label holding the password among other letters is encoded whole: its xn-- form
    # holds none of the password's own forms, and a host whose first label is ASCII
    # stays in that form where httpx names it (URL.host decodes only a leading xn--).
    shown = httpx.URL(f"https://{host}/").host
    assert "xn--" in shown  # the case this is about
    said = quotable(f"the storage server {shown} failed", credentials=Credentials("bob", password))
    assert "xn--" not in said and said.startswith("the storage server cdn."), said
    assert said.endswith(".evil.example failed") and "[redacted]" in said, said


@pytest.mark.parametrize(
    "text",
    [
        "xn--tst-qla.example and xn--mnchen-3ya.de",  # other hosts' labels
        "xn--psswort-5wa",  # "pässwort": the short password is part of the word
        "xn--zz-",  # no punycode after all
    ],
)
def test_idna_labels_that_do_not_hold_the_password_are_kept(text: str) -> None:
    said = quotable(text, credentials=Credentials("bob", "äss"))
    assert said == text


@pytest.mark.parametrize(
    "password",
    ["ä" * 64, "pä..ss", "pä ss!", "-pä:ss/x", "ä"],
    ids=["label-too-long", "empty-label", "space", "not-a-host", "short"],
)
def test_a_password_that_is_no_host_name_is_cut_as_it_is(password: str) -> None:
    # IDNA refuses it (a label over 63 characters, an empty one, characters no host
    # has), or one encoder does and the other does not: no error, the forms that exist
    # are cut, and the password itself still is.
    credentials = Credentials("bob", password)
    said = quotable(f"the password {password} was refused", credentials=credentials)
    assert said == "the password [redacted] was refused"


async def test_error_detail_of_a_body_that_is_not_json_is_empty() -> None:
    assert await error_detail(httpx.Response(401, text="<html>Login</html>")) == ""


async def test_fetch_token_remembers_every_token_the_answer_carried() -> None:
    # Opaque tokens have no shape redact knows: the answer is where they are learnt, for
    # errors and log lines to cut them wherever a server quotes them back.
    answer = {"access_token": "opaque-access-7Kq2x", "token": "opaque-other-9f3c", "expires_in": 90}
    service = TokenService(httpx.Response(200, json={**answer, "refresh_token": "rt-5mN8w-2Lp"}))
    token = await _fetch(service)
    assert token == Token("opaque-access-7Kq2x", 90)
    assert token.others == ("opaque-other-9f3c", "rt-5mN8w-2Lp")
    assert recent_tokens() == ("opaque-access-7Kq2x", "opaque-other-9f3c", "rt-5mN8w-2Lp")
    assert "rt-5mN8w" not in repr(token)


async def test_error_detail_cuts_the_tokens_sent_and_those_issued_lately() -> None:
    # A registry naming the token it refused, bare and opaque (not after "Bearer", not
    # a JWT): redact left it whole in the error, each retry warning and the CLI's line.
    remember_token("harbor-robot-Xk2f9QmA")
    body = {
        "errors": [{"code": "UNAUTHORIZED", "message": "token glpat-7Kq2xW9m expired"}],
        "details": "robot harbor-robot-Xk2f9QmA disabled",
    }
    response = httpx.Response(401, content=json.dumps(body).encode())
    said = await error_detail(response, tokens=["glpat-7Kq2xW9m"])
    assert said == "UNAUTHORIZED: token [redacted] expired; robot [redacted] disabled"


def test_a_challenge_quoted_in_an_error_loses_a_token_issued_lately() -> None:
    remember_token("opaque-Xk2f9QmA7p")
    with pytest.raises(ChallengeError) as info:
        parse_challenges(['Bearer realm="https://auth.example", error="opaque-Xk2f9QmA7p'])
    assert "opaque-Xk2f9QmA7p" not in str(info.value)
    assert "[redacted]" in str(info.value)


async def test_fetch_token_anonymous() -> None:
    service = TokenService(httpx.Response(200, json={"access_token": "A"}))
    assert await _fetch(service, None) == Token("A", 60)
    assert "Authorization" not in service.requests[0].headers


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (httpx.Response(500), "failed (HTTP 500)"),
        (httpx.Response(503, text="busy"), "failed (HTTP 503)"),
        (httpx.Response(401), "check the username/password for reg.example"),
        (httpx.Response(403), "refused"),
        (httpx.Response(302, headers={"Location": "https://evil/"}), "HTTP 302"),
        (httpx.Response(200, text="<html>"), "did not answer with JSON"),
        (httpx.Response(200, json={"nope": 1}), "without a token"),
        (httpx.Response(200, content=b"x" * (1 << 20 + 1)), "more than 1048576 bytes"),
        (
            httpx.Response(200, headers={"Content-Length": str(1 << 30)}, content=b"{}"),
            "more than 1048576 bytes",
        ),
        (httpx.ConnectError("connection refused"), "cannot get a token from auth.example"),
        (httpx.ReadTimeout("slow"), "cannot get a token from auth.example"),
    ],
)
async def test_fetch_token_failures(response: httpx.Response | Exception, expected: str) -> None:
    with pytest.raises(AuthError) as info:
        await _fetch(TokenService(response))
    message = str(info.value)
    assert expected in message
    assert "auth.example" in message
    assert SECRET not in message
    assert basic_authorization(CREDS).split()[1] not in message


@pytest.mark.parametrize("status", [429, 503])
async def test_a_token_service_asking_to_wait_too_long_is_named(status: int) -> None:
    # "the registry asks to wait 3600 s": the token service had asked.
    service = TokenService(httpx.Response(status, headers={"Retry-After": "3600"}))
    with pytest.raises(AuthError) as info:
        await _fetch(service)
    with pytest.raises(AuthError) as retried:
        retry_wait(info.value, 1, Limits())
    assert "the token service at auth.example asks to wait 3600 s" in str(retried.value)


async def test_a_proxy_asking_the_token_request_to_wait_is_named() -> None:
    """A proxy's 503 to the CONNECT for the token service, with a Retry-After: the
    retry policy waits it out within the same cap, and says the proxy asked."""
    proxy = "the proxy http://proxy.example:3128"
    refused = ProxyRefused(
        f"{proxy} could not reach auth.example (HTTP 503 Service Unavailable)",
        status=503,
        retry_after_s=3600,
        retry_after_from=proxy,
    )
    with pytest.raises(AuthError) as info:
        await _fetch(TokenService(refused))
    assert info.value.transient and info.value.retry_after_s == 3600
    with pytest.raises(AuthError) as retried:
        retry_wait(info.value, 1, Limits())
    assert f"{proxy} asks to wait 3600 s" in str(retried.value)


async def test_fetch_token_oversize_chunked_body_read_only_to_the_cap() -> None:
    sent = 0

    async def body() -> object:
        nonlocal sent
        for _ in range(100):
            sent += 64 * 1024
            yield b"x" * (64 * 1024)

    service = TokenService(httpx.Response(200, content=body()))  # type: ignore[arg-type]
    with pytest.raises(AuthError, match="more than"):
        await _fetch(service)
    assert sent <= (1 << 20) + 64 * 1024
