"""The credentials ``docker login`` left for a registry, read as docker's CLI reads them.

A user who ran ``docker login private.example`` expects ``imagec-pipe pull
private.example/app`` to work, as it does for docker, skopeo and crane. The file is
``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json`` (docker's
``cli/config``); for a registry it gives, in docker's order (``configfile``'s
``GetCredentialsStore``):

1. ``credHelpers[key]``: that credential helper;
2. else ``credsStore``: that helper, for every registry (the ``auths`` entries then hold
   no secrets: ``docker login`` leaves ``{}`` there);
3. else ``auths[key]``: ``auth`` (base64 of ``user:password``), or ``username`` and
   ``password``, or an ``identitytoken`` (an OAuth2 refresh token the token service
   issued at ``docker login``). A key written as a URL matches by its host and port
   (``https://host:5000/v1/`` is ``host:5000``: docker's ``ConvertToHostname``).

The ``key`` is docker's for the registry (``GetAuthConfigKey``): ``host[:port]`` as the
reference spells it, and Docker Hub's historical ``https://index.docker.io/v1/`` for a
reference on ``docker.io``. A helper is the program ``docker-credential-<name>`` in
one of ``PATH``'s absolute directories, run with ``get`` and the key on its stdin; it answers
``{"ServerURL", "Username", "Secret"}`` on stdout, or exits non-zero saying
``credentials not found in native keychain`` (docker-credential-helpers' protocol). A
``Username`` of ``<token>`` means the ``Secret`` is an identity token.

A missing file, a missing entry and a helper that has none give no credentials: the
pull is anonymous, as without the file. So does an entry (or a helper's answer) with a
user name and no password, or the reverse, as docker's client sends none then; a
warning says so. So does a file at the default place that cannot be read (no
permission, a directory, a FIFO), as docker's CLI only warns about it ("Error loading
config file") and goes on: the usual cause is a ``config.json`` that ``sudo docker
login`` left to root, and it must not fail a pull of a public image. The warning names
the file and why, so a pull that then fails with "unauthorized" shows its cause just
above. A file given explicitly (``config_path=``) that cannot be read is an error.
Anything else is an ``AuthError`` that names the file (or the helper) and what is
wrong, never what the file holds: it holds secrets. An entry is named by its key, the
user info of a key written as a URL cut (``shown_key``): ``https://user:pw@host`` is
the entry for ``host``, and its password must not reach the message.

``DOCKER_AUTH_CONFIG``, when set and not empty, is read first, as docker's CLI reads
it since 28.3 (GitLab CI sets it): a config in JSON whose ``auths`` entry for the
registry wins over the file's helpers and entries; for a registry it has no entry for,
the file is read as above. It is read as docker's CLI reads it (``configEnv`` in its
``cli/config/configfile/file.go``, as of this writing): of each entry only ``auth``
(``user:password`` in base64), and every entry must have one that decodes. Its entry
is the one under the registry's key exactly (``reg.example:5000``, Docker Hub's
``https://index.docker.io/v1/``), never one matched by its host as the file's are:
docker's in-memory store (``Get`` in ``cli/config/memorystore``) looks the key up as it
is, and only its file store (``credentials/file_store.go``) tries ``ConvertToHostname``
on the keys it holds. A key written as a URL there is thus no entry for docker, which
reads the file instead; were it one for us, the same variable would give the two tools
different credentials. Its other keys are not read, as docker does not read them.

A value docker's CLI cannot use (not JSON, no object, an entry with no ``auth`` or one
that does not decode: ``{}``, a user name and password without ``auth``) is an
``AuthError`` naming the variable and the entry, never quoting them. docker's CLI prints
"Failed to create credential store from DOCKER_AUTH_CONFIG" and reads its config file
for every registry instead, so that a job set up with the variable pulls with other
credentials, or none, and fails later as "unauthorized"; here it fails at once, saying
why.

Not read: an entry's ``registrytoken`` (a bearer token to send as it is; the entry is refused,
saying so). A helper past its timeout is killed, and so are the processes below it
then; one that answered is not waited for past its exit (an agent it started may run on).

Nothing here runs behind a library host's back: ``pipeline.pull`` never reads the
file. A host calls ``docker_config_credentials`` and passes what it returns in
``RegistryOptions(credentials=...)``; the CLI does so when no ``-u`` is given.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import functools
import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ._auth import quotable
from ._config import Credentials
from ._errors import AuthError, UsageError
from ._log import get_logger
from ._redact import REDACTED, redact
from ._reference import DOCKER_HUB, Reference, parse_reference

__all__ = ["DOCKER_HUB_KEY", "docker_config_credentials", "docker_config_path"]

# Besides __all__, stages/_authfile.py uses the reading rules below, since an auth.json
# is docker's format: read_config, warn_unreadable, env_config_credentials,
# docker_file_credentials, string_map, auths_entries, from_auths_entry, from_helper,
# key_hostname, checked_timeout and bound_to_registry. They are part of this module's
# contract with it, not of the package's public API.

log = get_logger()

# The variable docker's CLI (28.3 on) reads a config from before its file (GitLab CI's).
ENV_AUTH_CONFIG = "DOCKER_AUTH_CONFIG"
# Docker Hub's key in config.json and in credential helpers, from the v1 API's days.
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
# What docker-credential-helpers' helpers print (and docker's client matches, trimmed)
# when they hold nothing for the server asked.
_NOT_FOUND = "credentials not found in native keychain"
# The username a helper answers when its secret is an identity token.
_TOKEN_USERNAME = "<token>"
# A helper's answer is a few hundred bytes (a cloud registry's password a few KB); one
# past this is refused unread, and its error output is read only this far.
_MAX_HELPER_ANSWER = 1 << 20
_MAX_HELPER_ERROR = 16 * 1024
# A config.json is a few KB; one past this is no docker config.
_MAX_CONFIG_BYTES = 4 << 20
# A helper may ask for a passphrase (pass's gpg agent), so it gets time for a person.
DEFAULT_HELPER_TIMEOUT_S = 60.0
# What of a failing helper's words an error quotes.
_QUOTED_CHARS = 200
# Where there is no pidfd, how often a running helper is asked whether it has exited.
_EXIT_POLL_S = 0.1


def docker_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where docker keeps its client config: ``$DOCKER_CONFIG/config.json``, else
    ``~/.docker/config.json``."""
    env = os.environ if environ is None else environ
    directory = env.get("DOCKER_CONFIG")
    base = Path(directory) if directory else Path.home() / ".docker"
    return base / "config.json"


def docker_config_credentials(
    ref: str | Reference,
    *,
    config_path: str | os.PathLike[str] | None = None,
    helper_timeout_s: float = DEFAULT_HELPER_TIMEOUT_S,
    environ: Mapping[str, str] | None = None,
) -> Credentials | None:
    """The credentials docker's config gives for ``ref``'s registry, or None (no file, no
    entry, a helper that has none): pass them as ``RegistryOptions(credentials=...)``.

    They carry ``registry=``, the reference's registry: a pull from another refuses them.

    ``config_path``: the file to read (default: ``docker_config_path()``, skipped with a
    warning when it cannot be read, as docker does).
    ``helper_timeout_s``: how long a credential helper may take. Blocks for as long as
    the helper runs: a trio host calls it through ``trio.to_thread.run_sync``.
    ``environ``: where ``DOCKER_AUTH_CONFIG`` and ``DOCKER_CONFIG`` are read (default
    ``os.environ``).

    Raises ``AuthError`` for a given file that cannot be read, a file (or a
    ``DOCKER_AUTH_CONFIG``) that is not a docker config, an entry that cannot be
    decoded, and a helper that is missing, fails, takes too long or answers what is not
    its protocol; ``InvalidReference`` for a malformed ``ref``; ``UsageError`` for a
    timeout that is no number of seconds above 0.
    """
    checked_timeout(helper_timeout_s)
    reference = ref if isinstance(ref, Reference) else parse_reference(ref)
    env = os.environ if environ is None else environ
    found = env_config_credentials(reference, env)
    if found is not None:
        return found
    return docker_file_credentials(reference, env, config_path, helper_timeout_s)


def docker_file_credentials(
    reference: Reference,
    env: Mapping[str, str],
    config_path: str | os.PathLike[str] | None,
    timeout_s: float,
) -> Credentials | None:
    """What docker's config file (``config_path``, else the default place) gives for
    ``reference``, ``DOCKER_AUTH_CONFIG`` aside: the second half of docker's lookup."""
    if config_path is not None:
        path = Path(config_path)
        config = read_config(path)
    else:
        path = docker_config_path(env)
        config = read_config(path, unreadable=functools.partial(warn_unreadable, path))
    return _credentials_in(config, reference, path, timeout_s)


def _docker_key(reference: Reference) -> str:
    return DOCKER_HUB_KEY if reference.registry == DOCKER_HUB else reference.registry


def env_config_credentials(reference: Reference, env: Mapping[str, str]) -> Credentials | None:
    """The credentials ``DOCKER_AUTH_CONFIG``'s ``auths`` entry for ``reference``'s
    registry gives, None when it has none (or is not set). The entry is the one under
    the registry's key exactly, as docker's in-memory store looks it up (module
    docstring), not one matched by its host. Every entry is checked, as docker's CLI
    checks them all before it uses any: one it cannot use is an ``AuthError``."""
    text = env.get(ENV_AUTH_CONFIG)
    if not text:
        return None
    try:  # os.environ's undecodable bytes come back; a caller's lone surrogate cannot
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise AuthError(f"cannot use ${ENV_AUTH_CONFIG}: it is not UTF-8 text") from None
    where = f"${ENV_AUTH_CONFIG}"
    auths = auths_entries(parse_config(data, where), where)
    entries = {key: _from_env_entry(entry, key) for key, entry in auths.items()}
    found = entries.get(_docker_key(reference))
    return None if found is None else bound_to_registry(found, reference)


def _from_env_entry(entry: object, key: str) -> Credentials:
    """The credentials of ``DOCKER_AUTH_CONFIG``'s entry under ``key``: its ``auth``
    alone, as docker's CLI reads it (``configEnvAuth``); an entry without one is refused
    there, and here."""
    where = f"the auths entry {shown_key(key)!r} in ${ENV_AUTH_CONFIG}"
    auth = entry.get("auth") if isinstance(entry, dict) else None
    if auth is not None and not isinstance(auth, str):
        raise AuthError(f"cannot use {where}: its auth is not a string")
    if not auth:
        raise AuthError(
            f"cannot use {where}: it has no auth (user:password in base64), the only field"
            " docker's CLI reads there; without it docker ignores the whole variable"
        )
    if not _is_unicode(auth):
        raise AuthError(f"cannot use {where}: its auth {_LONE_SURROGATE}")
    username, password = _decoded_auth(auth, where)
    return Credentials(username, password, source=f"${ENV_AUTH_CONFIG}")


def _credentials_in(
    config: Mapping[str, object] | None, reference: Reference, path: Path, timeout_s: float
) -> Credentials | None:
    """What docker's config ``config``, read from ``path`` (None: no file), gives for
    ``reference``'s registry: ``docker_config_credentials`` once the file is read."""
    if config is None:
        return None
    key = _docker_key(reference)
    helpers = string_map(config, "credHelpers", path)
    store = config.get("credsStore")
    if store is not None and not isinstance(store, str):
        raise AuthError(f"cannot use {path}: its credsStore is not a string")
    if helpers.get(key):
        found = from_helper(helpers[key], key, f"credHelpers in {path}", timeout_s)
    elif store and key not in helpers:
        found = from_helper(store, key, f"credsStore in {path}", timeout_s)
    else:  # credHelpers naming "" is docker's way to keep one registry's secrets here
        found = _from_auths(config, key, path)
    return bound_to_registry(found, reference)


def warn_unreadable(path: Path, reason: str) -> None:
    """Say that a credentials file at a default place is skipped, and why."""
    log.warning(
        "a credentials file that cannot be read is skipped: no credentials from it",
        path=str(path),
        reason=reason,
    )


def checked_timeout(helper_timeout_s: float) -> None:
    if isinstance(helper_timeout_s, bool) or not (
        isinstance(helper_timeout_s, int | float) and helper_timeout_s > 0
    ):
        raise UsageError(
            f"helper_timeout_s must be a number of seconds above 0, not {helper_timeout_s!r}"
        )


def bound_to_registry(found: Credentials | None, reference: Reference) -> Credentials | None:
    """Bound to the reference's registry: ``pull`` refuses them for a reference on another."""
    return dataclasses.replace(found, registry=reference.registry) if found else None


def read_config(
    path: Path, unreadable: Callable[[str], None] | None = None
) -> dict[str, object] | None:
    """The file's JSON object, or None when there is no file. The errors say what is
    wrong with it, never what it holds (not even the JSON parser's excerpt of it).

    ``unreadable``: given, a file that cannot be opened or is no regular file is no
    error: it is told why (the words the error would use) and None is returned. A file
    that can be read and is no config stays an error."""
    if "\0" in str(path):  # os.open's ValueError would escape the exception tree
        raise UsageError(f"cannot read {str(path)!r}: a file name cannot hold a NUL byte")
    try:
        # O_NONBLOCK: a FIFO (or a device) put there opens at once, to be refused below,
        # rather than hold the pull until something writes to it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                if unreadable is None:
                    raise AuthError(f"cannot use {path}: it is not a regular file")
                unreadable("it is not a regular file")
                return None
            with open(fd, "rb", closefd=False) as file:
                data = file.read(_MAX_CONFIG_BYTES + 1)
        finally:
            os.close(fd)
    except FileNotFoundError:
        return None
    except NotADirectoryError:  # $DOCKER_CONFIG names a file: no config there either
        return None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if unreadable is None:
            raise AuthError(f"cannot read {path}: {reason}") from None
        unreadable(reason)
        return None
    if len(data) > _MAX_CONFIG_BYTES:
        raise AuthError(f"cannot use {path}: it is larger than {_MAX_CONFIG_BYTES} bytes")
    return parse_config(data, path)


# What JSON takes for white space (RFC 8259 section 2); str.strip() would take more.
_JSON_WHITESPACE = " \t\n\r"


def parse_config(data: bytes, path: Path | str) -> dict[str, object]:
    """The JSON object ``data`` holds, read from ``path`` (a file, or the variable it
    came from); an empty one (or only white space) is ``{}``, as docker's client reads
    it (its decoder's EOF is no error: a file made by ``touch`` holds no credentials).
    The errors never quote it."""
    try:
        text = data.decode("utf-8-sig")
        if not text.strip(_JSON_WHITESPACE):
            return {}
        # No number here is read: parse_int=float, for Python refuses to convert an
        # integer of more than 4300 digits (a ValueError, no JSONDecodeError) where
        # docker's client reads the file.
        doc = json.loads(text, parse_int=float)
    except UnicodeDecodeError:
        raise AuthError(f"cannot use {path}: it is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        # Line and column only: the parser's own message may quote the text around them.
        raise AuthError(
            f"cannot use {path}: it is not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise AuthError(f"cannot use {path}: it is not valid JSON (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise AuthError(f"cannot use {path}: it is not a JSON object")
    return doc


def string_map(config: Mapping[str, object], name: str, path: Path | str) -> dict[str, str]:
    value = config.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise AuthError(f"cannot use {path}: its {name} is not an object of strings")
    return {str(k): str(v) for k, v in value.items()}


def _from_auths(config: Mapping[str, object], key: str, path: Path | str) -> Credentials | None:
    """The ``auths`` entry for ``key`` (docker's file store): the key itself, else the
    first whose host and port are ``key``, as docker matches a key written as a URL in
    the file (``DOCKER_AUTH_CONFIG``'s entries match exactly: module docstring)."""
    auths = auths_entries(config, path)
    if key in auths:
        return from_auths_entry(auths, key, path)
    found = next((k for k in auths if key_hostname(k) == key), None)
    return None if found is None else from_auths_entry(auths, found, path)


def auths_entries(config: Mapping[str, object], path: Path | str) -> dict[str, object]:
    """The file's ``auths`` object (none: empty)."""
    auths = config.get("auths")
    if auths is None:
        return {}
    if not isinstance(auths, dict):
        raise AuthError(f"cannot use {path}: its auths is not an object")
    return auths


def from_auths_entry(
    auths: Mapping[str, object], found: str, path: Path | str
) -> Credentials | None:
    """The credentials of ``auths[found]``, as docker's client decodes an entry (the
    containers tools' auth.json has the same entries)."""
    entry = auths[found]
    where = f"the auths entry {shown_key(found)!r} in {path}"
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise AuthError(f"cannot use {where}: it is not an object")
    fields = {}
    for name in ("auth", "username", "password", "identitytoken", "registrytoken"):
        value = entry.get(name)
        if value is not None and not isinstance(value, str):
            raise AuthError(f"cannot use {where}: its {name} is not a string")
        if value and not _is_unicode(value):
            raise AuthError(f"cannot use {where}: its {name} {_LONE_SURROGATE}")
        fields[name] = value or ""
    username, password = fields["username"], fields["password"]
    if fields["auth"]:
        username, password = _decoded_auth(fields["auth"], where)
    source = str(path)
    if fields["identitytoken"]:
        # A token service is asked with the token; a Basic registry gets the password,
        # if the entry has one too (docker's client does the same with both).
        return Credentials(
            username, password, identity_token=fields["identitytoken"], source=source
        )
    if username and password:
        return Credentials(username, password, source=source)
    if username or password:
        _half_filled(where)
        return None
    if fields["registrytoken"]:
        raise AuthError(
            f"cannot use {where}: it holds a registry token, which imagec-pipe does not"
            " send; log in with -u USER --password-stdin"
        )
    return None  # {}: what docker login leaves when a helper holds the secret


# JSON's \ud800 escape reads as a lone surrogate, which no request can encode: a
# password holding one failed the pull as an internal error, past every check.
_LONE_SURROGATE = "is not valid Unicode (a lone surrogate escape)"


def _is_unicode(text: str) -> bool:
    """Whether ``text`` can be sent: UTF-8 encodes it (no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _decoded_auth(auth: str, where: str) -> tuple[str, str]:
    """``auth``'s ``user:password``, as docker decodes it (standard base64, the user
    before the first colon and not empty). The errors never quote it."""
    try:
        raw = base64.b64decode(auth.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise AuthError(f"cannot use {where}: its auth is not base64") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthError(f"cannot use {where}: its auth is not UTF-8 text") from None
    username, colon, password = text.partition(":")
    if not colon or not username:
        raise AuthError(
            f"cannot use {where}: its auth is not the base64 of user:password (no user name"
            f"{'' if colon else ' and no colon'})"
        )
    return username, password.strip("\0")


def shown_key(key: str) -> str:
    """An ``auths`` key as an error quotes it: the user info of a key written as a URL
    (``https://user:pw@host/``) cut, the rest kept, then ``redact`` as for any text.

    Such a key matches by its host (``key_hostname``, which drops everything up to the
    host's ``@``), so that its entry is the registry's and an error about the entry
    names it; a library caller shows or logs that error as it is. The cut is the same
    one ``key_hostname`` makes, not ``redact``'s alone: a URL in text ends at a space or
    a quote, which a key's password may hold."""
    scheme, sep, rest = key.partition("://")
    if not sep:
        scheme, rest = "", key
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    if "@" in rest[:end]:
        rest = f"{REDACTED}@{rest[rest.rindex('@', 0, end) + 1 :]}"
    return redact(f"{scheme}{sep}{rest}")


def key_hostname(key: str) -> str:
    """``https://host:5000/v1/`` → ``host:5000``; ``host/path`` → ``host`` (docker's
    ``ConvertToHostname``)."""
    if "://" in key:
        rest = key.partition("://")[2]
        authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
        if authority:
            return authority.rpartition("@")[2]
    return key.split("/", 1)[0]


def from_helper(name: str, key: str, configured: str, timeout_s: float) -> Credentials | None:
    """Ask ``docker-credential-<name>`` for ``key``'s credentials (module docstring).

    The program is looked up in ``PATH``'s absolute entries only. A relative one (``.``,
    an empty entry as ``/usr/bin:`` leaves, ``bin``) names the current directory: a pull
    run in a checkout would run the ``docker-credential-desktop`` planted there. docker's
    client refuses a program found so (Go's ``exec.LookPath``, ``ErrDot``, since 1.19).

    ``configured`` says where the config names the helper, for errors and for the
    credentials' ``source``. What the helper says when it fails is quoted through
    ``quotable`` (``redact``: a secret's shape, the tokens this process was issued) and
    cut short; its answer's secret is never quoted."""
    program = f"docker-credential-{name}"
    registry = "Docker Hub" if key == DOCKER_HUB_KEY else key
    helper = f"the credential helper {program} ({configured})"
    if not name.strip() or "/" in name or "\\" in name or name in (".", ".."):
        raise AuthError(f"cannot use {configured}: {name!r:.100} is not a helper name")
    searched = [entry for entry in os.get_exec_path() if os.path.isabs(entry)]
    executable = shutil.which(program, path=os.pathsep.join(searched))
    if executable is None:
        skipped = len(searched) < len(os.get_exec_path())
        raise AuthError(
            f"{helper} is not installed: no {program} on PATH"
            f"{' (its relative entries not searched)' if skipped else ''}; install it, or"
            f" remove it from the config to pull {registry} anonymously"
        )
    status, answer, said = _run_helper(executable, key, timeout_s, helper, registry)
    if status != 0:
        if answer.decode("utf-8", "replace").strip() == _NOT_FOUND:
            return None
        words = (answer or said).decode("utf-8", "replace").strip()
        quoted = quotable(words)[:_QUOTED_CHARS]
        detail = f": {quoted}" if quoted else ""
        raise AuthError(f"{helper} failed for {registry} (exit status {status}){detail}")
    try:
        doc = json.loads(answer.decode("utf-8"))
    except (ValueError, RecursionError):
        raise AuthError(f"{helper} answered for {registry} with what is not JSON") from None
    if not isinstance(doc, dict):
        raise AuthError(f"{helper} answered for {registry} with JSON that is not an object")
    username, secret = doc.get("Username", ""), doc.get("Secret", "")
    if not isinstance(username, str) or not isinstance(secret, str):
        raise AuthError(f"{helper} answered for {registry} a Username or Secret that is no string")
    if not (_is_unicode(username) and _is_unicode(secret)):
        raise AuthError(
            f"{helper} answered for {registry} a Username or Secret that {_LONE_SURROGATE}"
        )
    source = f"{program} ({configured})"
    if username == _TOKEN_USERNAME:
        return Credentials("", "", identity_token=secret, source=source) if secret else None
    if not username and not secret:
        return None
    if not username or not secret:
        _half_filled(f"{helper}'s answer for {registry}")
        return None
    return Credentials(username, secret, source=source)


def _half_filled(where: str) -> None:
    """No credentials from ``where``, which has a user name without a password or the
    reverse: docker's client sends Basic credentials, or asks a token service with them,
    only when both are there, and is anonymous otherwise (distribution's
    ``registry/client/auth``), so that a public image pulls whatever such an entry
    says. Said at warning level: a pull that then needs credentials fails, and this
    says why none were sent."""
    log.warning(
        "docker config credentials ignored: a user name without a password or the"
        " reverse; pulling anonymously, as docker does",
        where=where,
    )


def _run_helper(
    executable: str, key: str, timeout_s: float, helper: str, registry: str
) -> tuple[int, bytes, bytes]:
    """Run ``executable get`` with ``key`` on its stdin; its exit status, its stdout (at
    most ``_MAX_HELPER_ANSWER`` bytes) and its stderr (the first ``_MAX_HELPER_ERROR``).

    Killed past ``timeout_s`` (a helper waiting on a keychain that never answers must
    not hold the pull for ever), or once it writes more than it may: a ``selectors``
    loop reads both pipes, so that neither output is buffered unbounded.

    Its own children, if it left any running, are not waited for: a process it started
    in the background (an agent, a cache) inherits its pipes and keeps them open, so
    that their end is no sign that the helper is done. Its exit is: once it has exited
    (a pidfd in the same loop, where Linux has one; else ``poll`` every
    ``_EXIT_POLL_S``), what it wrote is in the pipes, and is read without waiting for
    more."""
    try:
        process = subprocess.Popen(
            [executable, "get"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        raise AuthError(
            f"cannot run {helper} for {registry}: {exc.strerror or type(exc).__name__}"
        ) from None
    assert process.stdin is not None and process.stdout is not None
    assert process.stderr is not None
    deadline = time.monotonic() + timeout_s
    answer_fd, error_fd = process.stdout.fileno(), process.stderr.fileno()
    outputs = {answer_fd: bytearray(), error_fd: bytearray()}
    exit_fd = _exit_fd(process.pid)
    try:
        try:
            process.stdin.write(key.encode())
            process.stdin.close()
        except BrokenPipeError:
            pass  # it did not read it: its exit status and output say why
        with selectors.DefaultSelector() as selector:
            for fd in outputs:
                selector.register(fd, selectors.EVENT_READ)
            if exit_fd is not None:
                selector.register(exit_fd, selectors.EVENT_READ)
            exited = False
            while any(fd in selector.get_map() for fd in outputs):
                left = deadline - time.monotonic()
                if left <= 0:
                    if exited:
                        break  # a process it left running writes on: not waited for
                    raise subprocess.TimeoutExpired(executable, timeout_s)
                # Exited: what is in the pipes now, then no more waiting.
                wait_s = 0.0 if exited else left if exit_fd is not None else _EXIT_POLL_S
                ready = selector.select(min(wait_s, left))
                if exited and not ready:
                    break
                for selected, _ in ready:
                    if selected.fd == exit_fd:
                        exited = True
                        selector.unregister(exit_fd)
                        continue
                    chunk = os.read(selected.fd, 64 * 1024)
                    if not chunk:
                        selector.unregister(selected.fd)
                        continue
                    kept = outputs[selected.fd]
                    if selected.fd == error_fd:  # read on, so that it never blocks writing
                        chunk = chunk[: max(_MAX_HELPER_ERROR - len(kept), 0)]
                    elif len(kept) + len(chunk) > _MAX_HELPER_ANSWER:
                        raise AuthError(
                            f"{helper} answered more than {_MAX_HELPER_ANSWER} bytes for"
                            f" {registry}; refused"
                        )
                    kept += chunk
                if exit_fd is None and not exited and process.poll() is not None:
                    exited = True
        status = process.wait(max(deadline - time.monotonic(), 0.01))
    except subprocess.TimeoutExpired:  # closed its output, still running
        raise AuthError(
            f"{helper} did not answer for {registry} within {timeout_s:g} s; killed"
        ) from None
    finally:
        if process.returncode is None:
            # What it waits on goes with it (a gpg, a pinentry); what it detached from
            # itself (an agent, reparented) is no longer its own and stays.
            for pid in _descendants(process.pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):
            pipe.close()
        if exit_fd is not None:
            os.close(exit_fd)
    return status, bytes(outputs[answer_fd]), bytes(outputs[error_fd])


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, theirs, and so on), as ``/proc`` shows them
    now; none where there is no ``/proc``."""
    parents: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat_file:
                fields = stat_file.read().rpartition(b")")[2].split()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        parents[int(entry)] = int(fields[1])  # after "pid (comm) state": ppid
    below, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        below += children
        frontier += children
    return below


def _exit_fd(pid: int) -> int | None:
    """A pidfd for ``pid``, readable once it has exited; None where there is none (not
    Linux, or a kernel before 5.3)."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError:
        return None
    return fd
