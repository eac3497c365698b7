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

Everything else is kept: host names, ports, status codes, error codes and the server's
words, so a message still says which server failed and what it said. ``redact`` is
idempotent, pure and cheap (a few regular expressions over a short string).
"""

from __future__ import annotations

import functools
import re

__all__ = ["REDACTED", "cut_secret", "is_secret_name", "redact", "shown_url"]

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
    return _secret_pattern(secret).sub(REDACTED, text)


@functools.lru_cache(maxsize=16)
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


def shown_url(url: str) -> str:
    """A URL a manifest names (a foreign layer's) as errors and logs show it: redacted
    (no query, no user info), what is not printable replaced (a line break would forge
    a log line), and at most ``SHOWN_URL_CHARS`` characters (a manifest may hold one of
    megabytes). Cut after redacting, so no part of a secret survives the cut."""
    shown = "".join(c if c.isprintable() else "?" for c in redact(url))
    if len(shown) > SHOWN_URL_CHARS:
        shown = shown[: SHOWN_URL_CHARS - 3] + "..."
    return shown
