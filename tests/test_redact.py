"""stages/_redact.py alone: what of a server's text an error message or a log line keeps."""

from __future__ import annotations

import tracemalloc
import urllib.parse

import pytest

from stages._redact import (
    RECENT_TOKENS_KEPT,
    REDACTED,
    SHOWN_URL_CHARS,
    cut_secret,
    cut_secrets,
    cut_token,
    cut_tokens,
    is_secret_name,
    recent_tokens,
    redact,
    remember_token,
    shown_url,
)

SIGNED = (
    "https://cdn.example:8443/registry-v2/blobs/sha256/ab/data"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20260101%2Fs3"
    "&X-Amz-Signature=5f2b9c0d&X-Amz-Expires=1200"
)
# What we print: a short password's letters are in it.
NAMED = "reg.example/team/app:latest, sha256:abab12"
# Secret names as storage services, OAuth and web servers spell them.
SECRET_NAMES = (
    *("token", "access_token", "password", "passwd", "secret", "client_secret", "api_key"),
    *("apikey", "x-api-key", "apiKey", "signature", "sig", "credential", "credentials"),
    *("X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "X-Goog-Signature"),
    *("Authorization", "session_token", "sessionToken", "session", "JSESSIONID", "PHPSESSID"),
    *("Key-Pair-Id", "key", "auth", "private_key", "pwd"),
)


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        # A URL keeps its scheme, host, port and path; not its query or user info.
        (SIGNED, "https://cdn.example:8443/registry-v2/blobs/sha256/ab/data?[redacted]"),
        (
            f"storage backend busy for {SIGNED}; retry",
            "storage backend busy for "
            "https://cdn.example:8443/registry-v2/blobs/sha256/ab/data?[redacted]; retry",
        ),
        ("https://ci:pw4@reg.example/v2/", "https://[redacted]@reg.example/v2/"),
        ("http://[::1]:5000/b?sig=S1#frag", "http://[::1]:5000/b?[redacted]"),
        ("https://acct.blob.example/c/b#sig=S1", "https://acct.blob.example/c/b?[redacted]"),
        # A fragment that is no page anchor: a token, a key, a line number.
        ("https://app.example/cb#access_token=T1&type=x", "https://app.example/cb?[redacted]"),
        ("https://share.example/f#3q2-7Xk_9aBcDeF", "https://share.example/f?[redacted]"),
        ("https://share.example/f#5f2b9c0d1e3a", "https://share.example/f?[redacted]"),
        ("https://git.example/a/b#L120", "https://git.example/a/b?[redacted]"),
        # A query string quoted without its URL.
        ("cdn.example/blob?verify=1700000000-8d3f", "cdn.example/blob?[redacted]"),
        # Pairs whose name says secret, wherever they stand.
        ("sig=S1&token=T1&se=2026", "sig=[redacted]&token=[redacted]&se=2026"),
        (
            "X-Amz-Signature=5f2b9c0d does not match (X-Amz-Credential=AKIAEXAMPLE)",
            "X-Amz-Signature=[redacted] does not match (X-Amz-Credential=[redacted])",
        ),
        ('password="a b", user=ci', "password=[redacted], user=ci"),
        *((f"{name}=V1 refused", f"{name}=[redacted] refused") for name in SECRET_NAMES),
        (
            '{"access_token": "T\\"1", "expires_in": 60}',
            '{"access_token": "[redacted]", "expires_in": 60}',
        ),
        # Credentials after an auth scheme, and Authorization headers quoted whole.
        ("sent Basic dXNlcjpwdzM= and Bearer T.1", "sent Basic [redacted] and Bearer [redacted]"),
        ("Authorization: Token T1, then", "Authorization: [redacted], then"),
        ("invalid token eyJhbGciOiJI.eyJzdWIi.c2ln", "invalid token [redacted]"),
        ("cut short: eyJhbGciOiJIUzI1", "cut short: [redacted]"),
    ],
)
def test_secrets_in_a_servers_text_are_redacted(text: str, kept: str) -> None:
    assert redact(text) == kept
    assert redact(kept) == kept  # the log processor applies it again


@pytest.mark.parametrize(
    "text",
    [
        # What a message must keep to stay useful: hosts, statuses, codes, the server's words.
        "UNAUTHORIZED: authentication required",
        "127.0.0.1:5000 failed with HTTP 503 for blob sha256:0123abcd (UNAVAILABLE: busy)",
        "Content-Range 'bytes 0-99/100'",
        'Bearer realm="https://auth.example/token",service="registry",error="invalid_token"',
        'Basic realm="Registry Realm"',
        "https://registry.example:5000/v2/team/app/blobs/sha256:0123",
        "the connection to 127.0.0.1:5000 failed (Connection reset by peer); key=",
        "monkey business: what=why",
        # Names that merely contain the letters of a secret name are words of their own.
        "too many keys=12 (author=ci, authority=auth.example, sessions=3)",
        "design=flat signal=TERM keyword=latest authenticated=false",
        '{"keys": "a,b", "author": "ci"}',
        # A fragment that reads as a page anchor says where the server's help is.
        "see https://docs.example/docker-hub/download-rate-limit/#pull-rate-limit.",
        "https://distribution.example/spec/api#section-2.1_errors",
    ],
)
def test_what_is_not_secret_is_kept(text: str) -> None:
    assert redact(text) == text


DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "text",
    [
        # Our own messages and log values, as we print them: references with a port and a
        # repository whose last part is a header or scheme name, digests, media types,
        # paths, the registry endpoint's URL. A tag and what followed it were lost.
        "127.0.0.1:5000/a/b:1",
        f"127.0.0.1:5000/team/cookie:1.0@{DIGEST}",
        "reg.example/platform/authorization:2.3.1",
        "the manifest of reg.example/ops/set-cookie:v2, sha256:ab is 9 bytes",
        "reg.example/ops/proxy-authorization: HTTP 503 (UNAVAILABLE: busy)",
        f"manifest latest not found in docker.io/bearer/bearer on registry-1.docker.io ({DIGEST})",
        "manifest 1 not found in 127.0.0.1:5000/team/basic on 127.0.0.1:5000: check the name",
        f"layer {DIGEST} is application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.distribution.manifest.v2+json; charset=utf-8",
        "cannot open store /home/ci/.cache/token-store/keys: [Errno 13] Permission denied",
        "http://127.0.0.1:5000",
        "https://[::1]:5443/v2/",
    ],
)
def test_what_we_print_ourselves_is_kept(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        # The same words where they are a header or a scheme still lose what follows.
        ("sent Cookie: sid=abc; path=/", "sent Cookie: [redacted]; path=/"),
        ("headers: authorization: Bearer T1", "headers: authorization: [redacted]"),
        ("'Proxy-Authorization: Basic dXM6cHc='", "'Proxy-Authorization: [redacted]'"),
        ("Set-Cookie:a=b", "Set-Cookie:[redacted]"),
        ("Authorization:Basic dXM6cHc=", "Authorization:[redacted]"),
        ("X-Authorization: T1", "X-Authorization: [redacted]"),
        ("(Bearer T1)", "(Bearer [redacted])"),
        (
            "token=T1 for reg.example/team/cookie:1",
            "token=[redacted] for reg.example/team/cookie:1",
        ),
    ],
)
def test_header_and_scheme_words_outside_a_path_still_redact(text: str, kept: str) -> None:
    assert redact(text) == kept
    assert redact(kept) == kept


def test_a_url_a_manifest_names_is_shown_redacted_printable_and_short() -> None:
    assert shown_url("https://cdn.example/l?sig=abc") == "https://cdn.example/l?[redacted]"
    assert shown_url("https://u:pw@cdn.example/l") == "https://[redacted]@cdn.example/l"
    assert shown_url("https://cdn.example/a\nforged log line") == (
        "https://cdn.example/a?forged log line"
    )
    long = shown_url("https://cdn.example/" + "a" * 10_000 + "?token=" + "s" * 50)
    assert len(long) == SHOWN_URL_CHARS and long.endswith("...") and "sss" not in long


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        # A password of eight characters or more goes wherever it is, inside a word too.
        ("refused hunter2-S for ci", "hunter2-S", "refused [redacted] for ci"),
        ("got 'cihunter2-Sx'", "hunter2-S", "got 'ci[redacted]x'"),
        # A short one goes where it stands on its own ...
        ("incorrect password (got 'ci:pw1')", "pw1", "incorrect password (got 'ci:[redacted]')"),
        ("password e is expired", "e", "password [redacted] is expired"),
        ("user=ci,password=a_b", "a", "user=ci,password=[redacted]_b"),
        # ... and words, references and digests that contain it stay whole.
        ("incorrect username or password", "e", "incorrect username or password"),
        (NAMED, "ab", NAMED),
        # A word of the text that is the password is cut where it stands alone (the price
        # of never leaking one).
        ("incorrect username or password", "or", "incorrect username [redacted] password"),
        # An edge that is no letter or digit cannot run into a word: it is cut anywhere.
        ("sent x-!", "-!", "sent x[redacted]"),
        ("nothing to cut", "", "nothing to cut"),
        # Percent-encoded, as a form body, a query or a URL's user info spells it: any of
        # its characters, the hex in either case, a space as %20 or +.
        ("got 'ci:p%40ss%21'", "p@ss!", "got 'ci:[redacted]'"),
        (
            "x=hunter+2%2FS&y=1 (hunter%202%2fS)",
            "hunter 2/S",
            "x=[redacted]&y=1 ([redacted])",
        ),
        ("got %C3%A9t%c3%a9 for ci", "été", "got [redacted] for ci"),
        # ... and a short one, so spelled, still only where it stands on its own.
        ("sent p%40s, not xp%40s", "p@s", "sent [redacted], not xp%40s"),
    ],
)
def test_a_password_is_cut_out_without_cutting_words(text: str, secret: str, kept: str) -> None:
    assert cut_secret(text, secret) == kept
    assert cut_secret(kept, secret) == kept


@pytest.mark.parametrize(
    "name",
    [
        # Names the substring rule caught and the word rule first missed: a key's ID, a
        # plural of keys, auth at a word's end or start, a signing scheme's parameters.
        "accesskeyid",
        "AWSAccessKeyId",
        "apikeyid",
        "privatekeyid",
        "keyid",
        "apikeys",
        "basicauth",
        "oauth",
        "authcode",
        "sigv4",
        "q-sign-algorithm",
    ],
)
def test_a_key_id_or_auth_name_still_loses_its_value(name: str) -> None:
    assert is_secret_name(name)
    assert redact(f"refused: {name}=v4lue-9") == f"refused: {name}={REDACTED}"


@pytest.mark.parametrize("name", ["keys", "author", "authority", "signal", "design", "keyboard"])
def test_words_that_only_contain_a_secret_name_keep_their_value(name: str) -> None:
    assert not is_secret_name(name)


def test_a_fragment_shaped_as_an_anchor_but_named_as_a_secret_goes() -> None:
    url = "https://cdn.example/l#access-token-abcdefabcdef"
    assert redact(url) == f"https://cdn.example/l?{REDACTED}"
    assert (
        redact("https://cdn.example/l#secretlowercasevalue") == f"https://cdn.example/l?{REDACTED}"
    )


def test_only_the_latest_tokens_are_remembered_each_once() -> None:
    # A library host pulls for days: each token remembered would be searched for in
    # every string of every log line from then on.
    for n in range(3 * RECENT_TOKENS_KEPT):
        remember_token(f"opaque-{n:04d}-token")
    remember_token("")
    remember_token(f"opaque-{RECENT_TOKENS_KEPT:04d}-token")  # again: moves to the end
    kept = recent_tokens()
    assert len(kept) == RECENT_TOKENS_KEPT == len(set(kept))
    assert kept[-1] == f"opaque-{RECENT_TOKENS_KEPT:04d}-token"
    assert kept[-2] == f"opaque-{3 * RECENT_TOKENS_KEPT - 1:04d}-token"
    assert "opaque-0000-token" not in kept


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("token hb/Xk2f+9QmA7p3v== revoked", f"token {REDACTED} revoked"),
        ("see ?t=hb%2FXk2f%2B9QmA7p3v%3D%3D", f"see ?t={REDACTED}"),  # as a query spells it
        ("see ?t=hb%2fXk2f%2b9QmA7p3v%3d%3d", f"see ?t={REDACTED}"),
        ("token hb/xk2f+9qma7p3v== revoked", f"token {REDACTED} revoked"),  # lower-cased
        ("token hb/Xk2f+9QmA7p3w== revoked", "token hb/Xk2f+9QmA7p3w== revoked"),  # another
        ("got pw1, not xpw1y", f"got {REDACTED}, not xpw1y"),  # a short one stands alone
    ],
)
def test_tokens_are_cut_as_they_are_or_percent_encoded_whole(text: str, kept: str) -> None:
    assert cut_tokens(text, ("hb/Xk2f+9QmA7p3v==", "pw1")) == kept


def test_secrets_are_cut_in_their_order() -> None:
    assert cut_secrets("ci:pw1 and ci:pw2", ("pw1", "pw2")) == f"ci:{REDACTED} and ci:{REDACTED}"


# An opaque token as a registry may issue it, whose characters a host name may carry.
OPAQUE = "Xq7pK2mN9vB4-wR8tZ"


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        # A URL's host, as parsing spells it: lower-cased.
        (f"https://{OPAQUE.lower()}.evil.example/b", f"https://{REDACTED}.evil.example/b"),
        (f"to {OPAQUE.lower()}.evil.example, a private", f"to {REDACTED}.evil.example, a private"),
        (f"named {OPAQUE.upper()} and {OPAQUE}", f"named {REDACTED} and {REDACTED}"),
        (
            "a token that is not it: xq7pk2mn9vb4-wr8tY",
            "a token that is not it: xq7pk2mn9vb4-wr8tY",
        ),
    ],
)
def test_a_token_is_cut_in_any_case(text: str, kept: str) -> None:
    # Cut only as it was issued: a registry naming a server after the token it was sent
    # (https://<token>.evil.example) had it named in lower case, as the URL's host.
    assert cut_tokens(text, ("tok1", OPAQUE)) == kept
    assert cut_token(text, OPAQUE) == kept


def test_a_long_token_is_cut_in_any_case_without_a_pattern_of_it() -> None:
    # A token found was cut by a pattern of it, ignoring case, compiled and cached: about
    # 4 ms and 150 KB per kilobyte of token, 0.26 s and 2 MB for this one (a token service
    # may issue one of a megabyte: Limits.max_token_bytes), on the event loop's thread.
    token = ("Ab+/" * 16384)[:65536]
    text = f"a {token.lower()} b {urllib.parse.quote(token, safe='-._~')} c {token.upper()}"
    tracemalloc.start()
    try:
        assert cut_tokens(text, (token,)) == f"a {REDACTED} b {REDACTED} c {REDACTED}"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The text and its lower-cased copy are a few hundred KB; a pattern was megabytes.
    assert peak < 16 * len(text), peak  # 17 MB with the pattern


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        # Lower-casing "İ" makes two characters: the token after it is still found there.
        (f"İ {OPAQUE.lower()} İ", f"İ {REDACTED} İ"),
        (f"{OPAQUE}{OPAQUE.lower()}", f"{REDACTED}{REDACTED}"),  # one after another
        (f"x{OPAQUE}", f"x{REDACTED}"),
        ("nothing here", "nothing here"),
    ],
)
def test_a_token_is_cut_where_the_text_has_it(text: str, kept: str) -> None:
    assert cut_tokens(text, (OPAQUE,)) == kept
