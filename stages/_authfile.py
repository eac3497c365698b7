"""The credentials ``skopeo login`` / ``podman login`` left, found as skopeo finds them.

The containers tools write their own file, not docker's; ``skopeo copy`` reads both, and
a user who logged in with either expects ``imagec-pipe pull`` to work. The lookup follows
containers-auth.json(5) and containers/image's ``pkg/docker/config`` (``getAuthFilePaths``,
``findCredentialsInFile``); the first file with credentials for the reference wins:

1. ``$XDG_RUNTIME_DIR/containers/auth.json`` (without ``XDG_RUNTIME_DIR``,
   ``/run/containers/<uid>/auth.json``; a ``XDG_RUNTIME_DIR`` naming no directory is
   skipped with a warning, as containers/image does);
2. ``$XDG_CONFIG_HOME/containers/auth.json`` (default ``~/.config``);
3. docker's config, read by docker's rules (``stages/_dockerconfig.py``):
   ``DOCKER_AUTH_CONFIG``'s entries, then the file's;
4. the legacy ``~/.dockercfg`` (docker's ``auths`` object alone), as containers/image
   reads it: the registry's own key, else a key whose host is the registry (a URL's
   scheme and path dropped; Docker Hub under any of its names).

An entry for the registry in ``DOCKER_AUTH_CONFIG`` ends the search at 3. It decides
docker's answer, which never falls back to the file then; for the search to go on to
``~/.dockercfg`` would make that older file win over the variable the user set for this
registry. (An entry without ``auth`` is an error: ``stages/_dockerconfig.py``.)

Not read: ``/etc/containers/auth.json``, for root or anyone. Some copies of
containers-auth.json(5) name it (read first by root under systemd, last by root
otherwise), but that text comes from proposals never merged (containers/image#1746,
#2600; the design is still open in containers/image#2614): no released
``getAuthFilePaths``, containers/image's nor its successor's in
containers/container-libs, has it, so skopeo and podman do not read it.

Where any of them holds something that cannot be read (no permission, a directory, a
FIFO), it is skipped with a warning that names it and says why (docker's CLI does so for
its config). containers/image fails the
lookup there, and so an anonymous pull of a public image (containers/image#514): the
file is most often another user's, met through an inherited ``XDG_RUNTIME_DIR``
(``sudo``, ``su``) or a root-only ``/run/containers``, and holds no login of this
user's. A file there that can be read and is no auth.json is an error, as for skopeo.

An auth file given explicitly (``auth_file=``, the CLI's ``--authfile``; default
``$REGISTRY_AUTH_FILE``, unset when empty, as for skopeo) is the only file read, as
skopeo and podman read only it then; it must exist and be readable. An empty
``auth_file`` is a ``UsageError``: ``Path("")`` would name the working directory.

An auth.json holds docker's ``auths`` entries (``auth``, ``identitytoken``) and
``credHelpers``. Its ``auths`` keys may name a namespace or a repository
(``quay.io/team/app``): for ``quay.io/team/app/web:1`` the keys ``quay.io/team/app/web``,
``quay.io/team/app``, ``quay.io/team`` and ``quay.io`` are tried in that order (the most
specific wins), then a key written as a URL (``https://quay.io/v1/``) by its host. A
``credHelpers`` entry is looked up by the registry alone. ``credsStore`` is not read
there, as containers/image does not read it. A malformed file is the same ``AuthError``
as a malformed docker config (the same code reads both): it names the file, never what
the file holds.

Like docker's config, nothing here runs behind a library host's back: ``pipeline.pull``
reads no file. A host calls ``auth_file_credentials`` and passes what it returns.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

from ._config import Credentials
from ._dockerconfig import (
    DEFAULT_HELPER_TIMEOUT_S,
    auths_entries,
    bound_to_registry,
    checked_timeout,
    docker_file_credentials,
    env_config_credentials,
    from_auths_entry,
    from_helper,
    key_hostname,
    read_config,
    string_map,
    warn_unreadable,
)
from ._errors import AuthError, UsageError
from ._log import get_logger
from ._reference import Reference, parse_reference

__all__ = ["auth_file_credentials"]

log = get_logger()

# The names containers/image takes for Docker Hub (``normalizeRegistry``).
_DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


def auth_file_credentials(
    ref: str | Reference,
    *,
    auth_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    helper_timeout_s: float = DEFAULT_HELPER_TIMEOUT_S,
) -> Credentials | None:
    """The credentials the containers tools' auth files (then docker's config, then
    ``~/.dockercfg``) give for ``ref``, or None: pass them as
    ``RegistryOptions(credentials=...)``. The order is the module docstring's.

    They carry ``registry=``, the reference's registry, and ``source=``, the file.

    ``auth_file``: the only file to read (default: ``$REGISTRY_AUTH_FILE``, else the
    search). ``environ``: where the variables are read (default ``os.environ``).
    ``helper_timeout_s``: as for ``docker_config_credentials``; blocks as it does.

    Raises ``AuthError`` for an explicit file that does not exist or cannot be read,
    and for a file, an entry or a helper as ``docker_config_credentials`` does;
    ``InvalidReference`` for a malformed ``ref``; ``UsageError`` for a timeout that is
    no number of seconds above 0 and for an empty ``auth_file``.
    """
    checked_timeout(helper_timeout_s)
    if auth_file is not None and not os.fspath(auth_file).strip():
        raise UsageError(
            "auth_file must not be empty: it names an auth.json (None: the default search)"
        )
    env = os.environ if environ is None else environ
    reference = ref if isinstance(ref, Reference) else parse_reference(ref)
    explicit = auth_file if auth_file is not None else env.get("REGISTRY_AUTH_FILE") or None
    if explicit is not None:
        path = Path(explicit)
        config = read_config(path)
        if config is None:
            raise AuthError(
                f"cannot read the auth file {path}: there is no such file (it was given by"
                " --authfile or REGISTRY_AUTH_FILE)"
            )
        return bound_to_registry(
            _from_auth_json(config, reference, path, helper_timeout_s), reference
        )
    for path in _auth_json_paths(env):
        config = read_config(path, unreadable=functools.partial(warn_unreadable, path))
        if config is not None and (
            found := _from_auth_json(config, reference, path, helper_timeout_s)
        ):
            return bound_to_registry(found, reference)
    found = env_config_credentials(reference, env)
    if found is not None:  # the variable's entry is docker's answer
        return found
    docker = docker_file_credentials(reference, env, None, helper_timeout_s)
    if docker is not None:
        return docker
    legacy = _home(env) / ".dockercfg"
    config = read_config(legacy, unreadable=functools.partial(warn_unreadable, legacy))
    if config is None:
        return None
    return bound_to_registry(_from_legacy(config, reference, legacy), reference)


def _from_legacy(
    config: Mapping[str, object], reference: Reference, path: Path
) -> Credentials | None:
    """What ``~/.dockercfg`` (``auths``' object alone) gives: the registry's own key,
    else the first whose host is the registry's (containers/image's
    ``normalizeAuthFileKey`` for the legacy format: ``https://index.docker.io/v1/`` and
    ``index.docker.io/x`` are ``index.docker.io``, Docker Hub's names are one)."""
    auths = auths_entries({"auths": config}, path)
    if reference.registry in auths:
        return from_auths_entry(auths, reference.registry, path)
    registry = _normalized_host(reference.registry)
    found = next((k for k in auths if _normalized_host(key_hostname(k)) == registry), None)
    return None if found is None else from_auths_entry(auths, found, path)


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME")
    return Path(home) if home else Path.home()


def _auth_json_paths(env: Mapping[str, str]) -> Iterator[Path]:
    """The containers tools' files, in containers/image's order (docker's excluded)."""
    runtime_dir = env.get("XDG_RUNTIME_DIR")
    if not runtime_dir:
        yield Path(f"/run/containers/{os.getuid()}/auth.json")
    elif _maybe_directory(runtime_dir):
        yield Path(runtime_dir) / "containers" / "auth.json"
    else:
        log.warning(
            "XDG_RUNTIME_DIR names no directory: its containers/auth.json is not read",
            xdg_runtime_dir=runtime_dir,
        )
    config_home = env.get("XDG_CONFIG_HOME")
    yield (Path(config_home) if config_home else _home(env) / ".config") / "containers/auth.json"


def _maybe_directory(name: str) -> bool:
    """False for what is surely no directory (none there, a file); True for a directory
    and for what cannot be looked at (no permission, a name too long): reading the file
    in it then says why, as containers/image lets it."""
    try:
        return stat.S_ISDIR(os.stat(name).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True


def _from_auth_json(
    config: Mapping[str, object], reference: Reference, path: Path, timeout_s: float
) -> Credentials | None:
    """What one auth.json gives for ``reference``: its ``credHelpers`` entry for the
    registry, else the most specific ``auths`` key (module docstring)."""
    helpers = string_map(config, "credHelpers", path)
    if helpers.get(reference.registry):
        configured = f"credHelpers in {path}"
        return from_helper(helpers[reference.registry], reference.registry, configured, timeout_s)
    auths = auths_entries(config, path)
    for key in _namespace_keys(reference):
        if key in auths:
            return from_auths_entry(auths, key, path)
    registry = _normalized_host(reference.registry)
    found = next((k for k in auths if _url_key_host(k) == registry), None)
    return None if found is None else from_auths_entry(auths, found, path)


def _namespace_keys(reference: Reference) -> Iterator[str]:
    """``registry/a/b/c``, ``registry/a/b``, ``registry/a``, ``registry``: the most
    specific first (containers/image's ``authKeyLookupOrder``)."""
    parts = reference.repository.split("/")
    for count in range(len(parts), 0, -1):
        yield "/".join((reference.registry, *parts[:count]))
    yield reference.registry


def _url_key_host(key: str) -> str | None:
    """A key written as a URL: its host, normalised; any other key: None (containers
    match a namespace key exactly, never by its host)."""
    for scheme in ("https://", "http://"):
        if key.startswith(scheme):
            return _normalized_host(key.removeprefix(scheme).split("/", 1)[0])
    return _normalized_host(key) if "/" not in key else None


def _normalized_host(host: str) -> str:
    return "index.docker.io" if host in _DOCKER_HUB_HOSTS else host
