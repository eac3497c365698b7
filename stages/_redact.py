"""What of a server's text may be quoted in an error message or a log line.

Servers quote things back: a storage server behind a blob redirect echoes the signed URL
it was asked for (``?X-Amz-Signature=…&X-Amz-Credential=…``, ``?sig=…&token=…``), a
registry's error says which token it refused, a challenge header carries whatever the
server put in it. Each error message that quotes such text is logged once per retry and
again when the pull fails, often into a CI log that outlives the signature. So every
piece of server text goes through ``redact`` before it is put in a message, and the log
processor (``pipeline/_logging.py``) applies it once more to every line as insurance.

The rule, the same everywhere:

- a URL keeps its scheme, host, port and path; its user info and its query become
  ``[redacted]`` (a signed URL's secrets are in its query), and so does its fragment
  unless the fragment reads as a page anchor (``#pull-rate-limit``, ``#section-2.1``):
  a lower-case word, then more words or numbers of up to four digits, joined by ``-``,
  ``_`` or ``.``, none of them a secret's name (``#access-token-…`` goes). A fragment
  may carry a token (``#access_token=…``) or a key (``#3q2-7Xk…``), which have other
  shapes;
- a query string quoted without its URL (``?name=value…``) becomes ``?[redacted]``;
- a ``name=value`` or JSON ``"name": "value"`` pair keeps its name and loses its value
  when the name says secret (``is_secret_name``; the log processor masks a log field's
  value by the same rule). The name is split into its words (at ``-``, ``_``, ``.``
  and where camelCase changes case: ``X-Amz-Signature`` is x, amz, signature); it says
  secret when a word contains token, passw, passphrase, secret, credential, signature,
  cookie, authorization, sessionid or sessid, ends in key, sig or auth, with or without
  "id" after (``apikey``, ``privatekey``, ``urlsig``, ``accesskeyid``, ``oauth``),
  ends in keys after more letters (``apikeys``), starts with authcode or authkey, or is
  one of sig, key, auth, session, pass, pwd, pw, sid, jwt, cred, creds, hmac, otp,
  bearer, ticket, sign or sigv (``Key-Pair-Id``, ``session_token``, ``q-sign-time``,
  ``X-Amz-Security-Token``, ``client_secret``). A name that merely contains such
  letters is a word of its own: ``keys``, ``author``, ``authority``, ``sessions``,
  ``design``, ``signal`` keep their values. A name made of several words says secret
  when any of them does (``session_count`` loses its value: masking too much costs a
  number, masking too little a credential);
- the credentials after ``Bearer`` or ``Basic``, and the value of an ``Authorization``
  or ``Cookie`` header, become ``[redacted]``; so does a bare JWT (``eyJ….….…``), the
  shape of the tokens registries issue. A word that ends a path is no scheme and no
  header: ``reg.example/team/cookie:1.0`` is an image reference (every reference we
  print has its registry and repository), ``…/bearer/bearer on reg.example`` says
  where an image was not found.

The user's own password is cut out by its value too (``cut_secret``), wherever a server
quotes it back: a token service's "incorrect password 'pw1'", a message quoting
``ci:pw1``, and the same with any of its characters percent-encoded, as a form body, a
query or a URL's user info spells it (``p%40ss`` for ``p@ss``, ``+`` or ``%20`` for a
space, the hex in either case). The Basic credentials made of it (the base64 of
``user:password``) are a secret of their own, which the caller gives, knowing the user
name (``stages/_auth.py``, ``sent_secrets``): ``redact`` knows them only after the word
``Basic``, and a server that could not decode them quotes them bare.

A password of eight characters or more is cut wherever it appears, even inside a word:
so long a string turns up in other text by chance almost never. A shorter one is cut
only where it stands on its own, not touching a letter or a digit: a password "e" cut
out of every word made "incorr[redacted]ct us[redacted]rnam[redacted]" of the service's
reason, and of the reference and every log line. The trade-off, in the direction of
masking too much: a short password that is also a word or a number of the text ("or",
"2026") is still cut where that word stands alone. What is not cut is a short password
run into other letters or digits ("xpw1y"): a server quoting what it was sent quotes it
apart (alone, or as ``ci:pw1``), and a word that merely contains two or three letters
of it says nothing of it.

The bearer tokens this process obtained are cut out by their value too (``cut_token``):
``redact`` knows a token after the word ``Bearer`` or by a JWT's shape, and many
registries issue opaque ones (Docker Hub's older tokens, GitLab's, Harbor's robot
tokens), which a registry or a token service that names the token it refused quotes
bare. The token service's answer is the place they are learnt (``remember_token``, from
``stages/_auth.py``); error messages and every log line cut the last
``RECENT_TOKENS_KEPT`` of them (``recent_tokens``). Only so many, because each is a
search through every string of every log line, and a library host pulls for a long time:
a token lives minutes, and the registry client cuts the tokens it holds itself out of
what its servers say, however many other pulls have fetched tokens since. A token is
cut as it is and as a URL or a form spells it whole (every character but letters,
digits and ``-._~`` percent-encoded, the hex in either case), and in any case of its
letters: a URL's host is lower-cased when it is parsed, and a registry that names a
server after a token it was sent (``https://<token>.evil.example/``) has it named so.
Each token is looked for in the text lower-cased (``cut_tokens``) and cut where it is
found there, by plain searches and no pattern: a registry's token is often a JWT of a
kilobyte or two, and a token service may issue one of a megabyte, whose pattern took
4 ms and 150 KB a kilobyte to compile and keep. A token shorter than eight characters, which no
registry issues, is cut as a short password is, in its own case only.

Everything else is kept: host names, ports, status codes, error codes and the server's
words, so a message still says which server failed and what it said. ``redact`` is
idempotent, pure and cheap (a few regular expressions over a short string).
"""

from __future__ import annotations

import bisect
import functools
import re
import threading
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "RECENT_TOKENS_KEPT",
    "REDACTED",
    "cut_secret",
    "cut_secrets",
    "cut_secrets_in_idna_labels",
    "cut_token",
    "cut_tokens",
    "is_secret_name",
    "recent_tokens",
    "redact",
    "remember_token",
    "shown_url",
]

REDACTED = "[redacted]"
# A URL a manifest names (a foreign layer's) is shown cut to this many characters.
SHOWN_URL_CHARS = 200

# A URL: a scheme (the lookbehind starts it at the beginning of a run of scheme
# characters, which keeps the search linear), "://", then anything up to white space, a
# quote or an angle bracket.
_URL = re.compile(r"(?i)(?<![a-z0-9+.-])[a-z][a-z0-9+.-]*://[^\s\"'<>]*")
# A query string quoted on its own: "?" then a parameter name and "=".
_QUERY = re.compile(r"\?[\w.%-]+=[^\s\"'<>]*")
# name=value, the value quoted or up to the next separator of a query string, a header's
# parameter list or a sentence; and "name": "value" in JSON. Any name matches here and
# ``is_secret_name`` decides, so that the search stays linear.
_PAIR = re.compile(r"(?<![\w.-])([\w.-]+)=(\[redacted\]|\"[^\"]*\"|[^\s&;,\"'<>)\]]*)")
_JSON_PAIR = re.compile(r'"([\w.-]+)"\s*:\s*"(?:[^"\\]|\\.)*"')
# A pair's name, word by word (the rule is in the module's docstring).
_NAME_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_SECRET_IN_A_WORD = re.compile(
    r"token|passw|passphrase|secret|credential|signature|cookie|authorization|sessionid"
    r"|sessid|(?:key|sig|auth)(?:id)?$|.keys$|^auth(?:code|key)"
)
_SECRET_WORDS = frozenset(
    {"sig", "key", "auth", "session", "pass", "pwd", "pw", "sid", "jwt", "cred", "creds"}
    | {"hmac", "otp", "bearer", "ticket", "sign", "sigv"}
)
# A fragment kept as it is: a page anchor, lower-case words and short numbers.
_ANCHOR = re.compile(r"#[a-z]{1,24}(?:[-_.](?:[a-z]{1,24}|[0-9]{1,4}))*")
# What starts a scheme or a header name: not a part of a path, a host name or a word
# ("team/basic on …", "reg.example/team/set-cookie:1.0", which a reference's tag would lose).
_NOT_IN_A_PATH = r"(?<![\w/.-])"
# An auth scheme's credentials (a token68), not its parameters: "Basic realm=…" stays.
_SCHEME_CREDENTIALS = re.compile(
    rf"(?i){_NOT_IN_A_PATH}(bearer|basic)\s+(?![!#$%&'*+.^`|~\w-]+=[^=\s,])[\w.~+/-]+=*"
)
# Authorization and Cookie headers, with any prefix (Proxy-, Set-, X-Forwarded- …).
_HEADER_VALUE = re.compile(
    rf"(?i){_NOT_IN_A_PATH}((?:\w+-)*(?:authorization|cookie))(\s*:\s*)[^\r\n,;\"']+"
)
# A JWT, or what is left of one cut short: base64url JSON ("eyJ" is '{"').
_JWT = re.compile(r"\beyJ[\w-]{8,}(?:\.[\w-]*)*")


def redact(text: str) -> str:
    """``text`` with the secrets a server may have quoted in it replaced by ``[redacted]``
    (the rule is in this module's docstring)."""
    text = _URL.sub(_redact_url, text)
    text = _QUERY.sub(f"?{REDACTED}", text)
    text = _HEADER_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _SCHEME_CREDENTIALS.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _JSON_PAIR.sub(_redact_json_pair, text)
    text = _PAIR.sub(_redact_pair, text)
    return _JWT.sub(REDACTED, text)


# Passwords this long are cut wherever they appear; shorter ones only on their own.
_CUT_ANYWHERE_FROM = 8
_LETTER_OR_DIGIT = re.compile(r"[^\W_]")


def cut_secret(text: str, secret: str) -> str:
    """``text`` without ``secret`` (the password the user gave), wherever a server may
    have quoted it, as it is or percent-encoded; a short password only where it stands on
    its own, so that the words around it stay whole (the rule is in this module's
    docstring)."""
    if not secret:
        return text
    # Without a "%" (nor a "+" for a space) the text can hold the secret only as it is:
    # a substring search then spares the pattern, for the log processor runs this for
    # each secret over every string of every line.
    if secret not in text and "%" not in text and not (" " in secret and "+" in text):
        return text
    return _secret_pattern(secret).sub(REDACTED, text)


def cut_secrets(text: str, secrets: Iterable[str]) -> str:
    """``text`` without any of ``secrets``, each as ``cut_secret`` cuts it, in their order
    (a padded form before the unpadded one: ``stages/_auth.py``'s ``sent_secrets``)."""
    for secret in secrets:
        text = cut_secret(text, secret)
    return text


# A host name's label in its ASCII (IDNA) form: "xn--" and punycode, not run into the
# letters, digits or hyphens of a label around it.
# 63 characters at most, as a label is: punycode decodes in quadratic time, and a
# server's text may be long.
_IDNA_LABEL = re.compile(r"(?i)(?<![a-z0-9-])xn--[a-z0-9-]{1,59}(?![a-z0-9-])")


def cut_secrets_in_idna_labels(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each ``xn--`` label cut whose decoded form holds one of ``secrets``
    (a password's Unicode spellings, lower-cased), alone or with the labels beside it
    (a dotted password spans several).

    IDNA encodes a label whole: a host named ``x-<password>.evil.example`` is spelt
    ``xn--x-<punycode>``, which holds none of the password's own ``xn--`` forms, however
    plainly it decodes to it; and httpx names a host in that form unless its first label
    is one (``URL.host`` decodes only a leading ``xn--``). Only secrets of
    ``_CUT_ANYWHERE_FROM`` characters or more are looked for: a shorter one inside a
    label is run into its letters, which ``cut_secret`` leaves too."""
    wanted = [
        unicodedata.normalize("NFC", secret).lower()
        for secret in secrets
        if len(secret) >= _CUT_ANYWHERE_FROM
    ]
    if not wanted or "xn--" not in text.lower():
        return text
    # The text with each label decoded, and where each label stands in it and in text.
    decoded: list[str] = []
    labels: list[tuple[int, int, int, int]] = []
    done = shown = 0
    for match in _IDNA_LABEL.finditer(text):
        try:
            label = match.group()[4:].encode("ascii").decode("punycode")
        except UnicodeError:
            continue  # no punycode: it spells nothing
        label = unicodedata.normalize("NFC", label).lower()
        between = _folded(text[done : match.start()])
        decoded += (between, label)
        shown += len(between)
        labels.append((match.start(), match.end(), shown, shown + len(label)))
        shown += len(label)
        done = match.end()
    decoded.append(_folded(text[done:]))
    plain = "".join(decoded)
    ends = [b for _, _, _, b in labels]  # in order, as the labels are
    cut: set[int] = set()
    for secret in wanted:
        start = plain.find(secret)
        while start != -1:
            end = start + len(secret)
            n = bisect.bisect_right(ends, start)  # the first label ending after start
            while n < len(labels) and labels[n][2] < end:
                cut.add(n)
                n += 1
            start = plain.find(secret, start + 1)
    pieces: list[str] = []
    done = 0
    for n in sorted(cut):
        begin, finish, _, _ = labels[n]
        pieces += (text[done:begin], REDACTED)
        done = finish
    return "".join((*pieces, text[done:]))


# How many of the tokens this process obtained last are cut by value (module docstring).
RECENT_TOKENS_KEPT = 16


class _RecentTokens:
    """The tokens ``remember_token`` was given, the latest last; replaced whole, never
    changed in place, so a reader in another thread sees one list or the other."""

    tokens: tuple[str, ...] = ()
    lock = threading.Lock()  # writers only: a pull may run in any thread of a host


def remember_token(token: str) -> None:
    """Cut ``token`` (a bearer token or a refresh token a token service issued) out of
    error messages and log lines from now on, until ``RECENT_TOKENS_KEPT`` newer ones
    push it out (the rule is in this module's docstring)."""
    if not token:
        return
    with _RecentTokens.lock:
        kept = tuple(t for t in _RecentTokens.tokens if t != token)
        _RecentTokens.tokens = (*kept, token)[-RECENT_TOKENS_KEPT:]


def recent_tokens() -> tuple[str, ...]:
    """The tokens to cut by value: the last ``RECENT_TOKENS_KEPT`` ``remember_token`` was
    given, the latest last."""
    return _RecentTokens.tokens


def cut_token(text: str, token: str) -> str:
    """``text`` without ``token`` (a bearer or refresh token we were issued), as it is or
    percent-encoded whole, in any case (the rule is in this module's docstring)."""
    return cut_tokens(text, (token,))


def cut_tokens(text: str, tokens: Iterable[str]) -> str:
    """``text`` without any of ``tokens``, each as ``cut_token`` cuts it.

    The text is lower-cased once and each token looked for in it, lower-cased too (and
    percent-encoded, when that spells it otherwise): one search per token for the log
    processor, which runs this over every string of every line. A token found is cut
    where the lower-cased text has it, by plain searches: a pattern ignoring case, as
    this once compiled for each token found, took 4 ms and 150 KB a kilobyte of token,
    and a token service may issue one of a megabyte (``Limits.max_token_bytes``)."""
    folded: str | None = None
    for token in tokens:
        if len(token) < _CUT_ANYWHERE_FROM:
            cut = cut_secret(text, token)
            if cut is not text:
                text, folded = cut, None
            continue
        if folded is None:
            folded = _folded(text)
        spellings = [s for s in _folded_spellings(token) if s is not None and s in folded]
        if spellings:
            text = _cut_spans(text, folded, spellings)
            folded = None
    return text


def _folded(text: str) -> str:
    """``text`` lower-cased, each character in its place: where lower-casing a character
    makes more than one ("İ" is "i" and a combining dot), that one is kept as it is, so
    that a position in the result is the same in ``text``."""
    folded = text.lower()
    if len(folded) == len(text):
        return folded  # no character grew: each stands where it stood
    return "".join(c if len(lower := c.lower()) != 1 else lower for c in text)


def _cut_spans(text: str, folded: str, spellings: Sequence[str]) -> str:
    """``text`` with ``[redacted]`` where ``folded`` (``_folded(text)``) holds any of
    ``spellings``; occurrences that overlap are cut as one."""
    spans: list[tuple[int, int]] = []
    for spelling in spellings:
        start = folded.find(spelling)
        while start != -1:
            spans.append((start, start + len(spelling)))
            start = folded.find(spelling, start + len(spelling))
    spans.sort()
    pieces: list[str] = []
    kept_from = 0  # where the text after the last cut starts
    cut_start, cut_end = spans[0]
    for start, end in spans[1:]:
        if start < cut_end:  # overlaps the cut: widen it
            cut_end = max(cut_end, end)
            continue
        pieces += (text[kept_from:cut_start], REDACTED)
        kept_from, cut_start, cut_end = cut_end, start, end
    pieces += (text[kept_from:cut_start], REDACTED, text[cut_end:])
    return "".join(pieces)


@functools.lru_cache(maxsize=2 * RECENT_TOKENS_KEPT)
def _folded_spellings(token: str) -> tuple[str, str | None]:
    """``token`` in lower case, and percent-encoded whole in lower case (None when that
    is the same: it has nothing to encode)."""
    encoded = _percent_encoded(token)
    return _folded(token), (_folded(encoded) if encoded != token else None)


def _percent_encoded(token: str) -> str:
    """``token`` as a URL or a form spells it: every character but letters, digits and
    ``-._~`` percent-encoded."""
    return urllib.parse.quote(token, safe="-._~")


# As many as the log processor cuts: pipeline/_logging.py's RECENT_SECRETS_KEPT, and
# those of the pulls running; recompiling them for every line that holds a "%" costs more.
@functools.lru_cache(maxsize=64)
def _secret_pattern(secret: str) -> re.Pattern[str]:
    """``secret`` with each character as it is or percent-encoded (every byte of its
    UTF-8 as ``%XX``, the hex in either case; a space also as ``+``), so that one search
    finds it however a form body, a query or a URL's user info spelled it. Cached: the
    log processor cuts the same few secrets out of every string of every line."""
    characters = []
    for char in secret:
        encoded = "".join(f"%{_hex_either_case(byte)}" for byte in char.encode())
        spellings = [re.escape(char), encoded, *([r"\+"] if char == " " else [])]
        characters.append(f"(?:{'|'.join(spellings)})")
    body = "".join(characters)
    if len(secret) >= _CUT_ANYWHERE_FROM:
        return re.compile(body)
    # Only an edge that is a letter or a digit can run into a word of the text.
    before = r"(?<![^\W_])" if _LETTER_OR_DIGIT.fullmatch(secret[0]) else ""
    after = r"(?![^\W_])" if _LETTER_OR_DIGIT.fullmatch(secret[-1]) else ""
    return re.compile(f"{before}{body}{after}")


def _hex_either_case(byte: int) -> str:
    return "".join(f"[{d}{d.lower()}]" if d.isalpha() else d for d in f"{byte:02X}")


def _redact_pair(match: re.Match[str]) -> str:
    name, value = match.group(1, 2)
    if not value or not is_secret_name(name):
        return match.group(0)
    return f"{name}={REDACTED}"


def _redact_json_pair(match: re.Match[str]) -> str:
    name = match.group(1)
    return f'"{name}": "{REDACTED}"' if is_secret_name(name) else match.group(0)


def is_secret_name(name: str) -> bool:
    """Whether a pair, a header or a log field named ``name`` holds a secret (the rule is
    in the module's docstring): ``api_key``, ``client_secret``, ``X-Amz-Signature`` do;
    ``keys``, ``author``, ``digest``, ``registry`` do not."""
    words = [word.lower() for word in _NAME_WORDS.findall(name)]
    return any(word in _SECRET_WORDS or _SECRET_IN_A_WORD.search(word) for word in words)


def _redact_url(match: re.Match[str]) -> str:
    url = match.group(0)
    core = url.rstrip(".,;:!?)")  # the sentence's punctuation, not the URL's
    punctuation = url[len(core) :]
    scheme, _, rest = core.partition("://")
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    location, secret_part = rest[:cut], rest[cut:]
    authority, slash, path = location.partition("/")
    if "@" in authority:
        authority = f"{REDACTED}@{authority.rpartition('@')[2]}"
    if _ANCHOR.fullmatch(secret_part) and not is_secret_name(secret_part[1:]):
        tail = secret_part
    else:
        tail = f"?{REDACTED}" if secret_part not in ("", "?", "#") else ""
    return f"{scheme}://{authority}{slash}{path}{tail}{punctuation}"


def shown_url(url: str, *, quote: Callable[[str], str] = redact) -> str:
    """A URL a manifest names (a foreign layer's) as errors and logs show it: redacted
    (no query, no user info), what is not printable replaced (a line break would forge
    a log line), and at most ``SHOWN_URL_CHARS`` characters (a manifest may hold one of
    megabytes). Cut after redacting, so no part of a secret survives the cut.

    ``quote`` redacts: ``redact``, or the cut of a registry client, which knows the
    credentials it sends and the tokens it holds (``RegistryClient.url_shown``): the URL
    is the registry's text, and a registry may put in it what it was sent."""
    shown = "".join(c if c.isprintable() else "?" for c in quote(url))
    if len(shown) > SHOWN_URL_CHARS:
        shown = shown[: SHOWN_URL_CHARS - 3] + "..."
    return shown
