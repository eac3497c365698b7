"""Credentials from the containers tools' auth files (stages/_authfile.py): real files in
temporary ``XDG_RUNTIME_DIR``, ``XDG_CONFIG_HOME``, ``DOCKER_CONFIG`` and ``HOME``
directories, a real pull from the basic-auth registry, and the CLI's ``--authfile``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

import pipeline
from pipeline import AuthError, Credentials, PullOptions, RegistryOptions, Store
from tests.support import images

AMD64 = pipeline.Platform("linux", "amd64")
REPO_ROOT = Path(__file__).resolve().parent.parent
SECRET = "Sup3r-S3cret-pw"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def entry(user: str, password: str) -> dict[str, str]:
    return {"auth": b64(f"{user}:{password}")}


def write(path: Path, doc: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


class Places:
    """One test's directories, each variable pointed at its own."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.runtime = root / "run"
        self.config_home = root / "config"
        self.docker = root / "docker"
        self.home = root / "home"
        for directory in (self.runtime, self.config_home, self.docker, self.home):
            directory.mkdir()
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(self.runtime))
        monkeypatch.setenv("XDG_CONFIG_HOME", str(self.config_home))
        monkeypatch.setenv("DOCKER_CONFIG", str(self.docker))
        monkeypatch.setenv("HOME", str(self.home))

    @property
    def runtime_file(self) -> Path:
        return self.runtime / "containers" / "auth.json"

    @property
    def config_file(self) -> Path:
        return self.config_home / "containers" / "auth.json"

    @property
    def docker_file(self) -> Path:
        return self.docker / "config.json"

    @property
    def legacy_file(self) -> Path:
        return self.home / ".dockercfg"


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Places:
    return Places(tmp_path, monkeypatch)


def run_cli(
    *argv: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process, in this test's environment (and ``env``)."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline._cli", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
        timeout=90,
    )


# --- which file, which key ---------------------------------------------------------------


def test_the_first_file_with_an_entry_wins_in_skopeo_s_order(places: Places) -> None:
    ref = "reg.example:5000/team/app:1"
    assert pipeline.auth_file_credentials(ref) is None  # no file anywhere
    files = [places.legacy_file, places.docker_file, places.config_file, places.runtime_file]
    for rank, path in enumerate(files):
        doc = {"reg.example:5000": entry(f"u{rank}", "pw")}
        write(path, doc if path == places.legacy_file else {"auths": doc})
        got = pipeline.auth_file_credentials(ref)
        assert got == Credentials(
            f"u{rank}", "pw", source=str(path), registry="reg.example:5000"
        ), path
    # A file without an entry for this registry is passed over, as is an empty entry.
    write(places.runtime_file, {"auths": {"other.example": entry("x", "y")}})
    assert pipeline.auth_file_credentials(ref).source == str(places.config_file)  # type: ignore[union-attr]
    write(places.config_file, {"auths": {"reg.example:5000": {}}})
    assert pipeline.auth_file_credentials(ref).source == str(places.docker_file)  # type: ignore[union-attr]


def test_the_most_specific_namespace_key_wins(places: Places) -> None:
    write(
        places.runtime_file,
        {
            "auths": {
                "quay.example": entry("registry", "pw"),
                "quay.example/team": entry("team", "pw"),
                "quay.example/team/app": entry("app", "pw"),
                "quay.example/team/ap": entry("not-a-path-prefix", "pw"),
                "https://quay.example/v1/": entry("url", "pw"),
            }
        },
    )
    find = pipeline.auth_file_credentials
    assert find("quay.example/team/app/web:1").username == "app"  # type: ignore[union-attr]
    assert find("quay.example/team/app:1").username == "app"  # type: ignore[union-attr]
    assert find("quay.example/team/apple").username == "team"  # type: ignore[union-attr]
    assert find("quay.example/other/app").username == "registry"  # type: ignore[union-attr]
    # A key written as a URL matches by its host when no plain key does.
    write(places.runtime_file, {"auths": {"https://quay.example/v1/": entry("url", "pw")}})
    assert find("quay.example/other/app").username == "url"  # type: ignore[union-attr]
    # Docker Hub: containers write docker.io; docker's historical key is read too.
    write(places.runtime_file, {"auths": {"docker.io/library": entry("hub", "pw")}})
    got = find("alpine")
    assert got is not None and got.username == "hub" and got.registry == "docker.io"
    write(places.runtime_file, {"auths": {"https://index.docker.io/v1/": entry("old", "pw")}})
    assert find("alpine").username == "old"  # type: ignore[union-attr]


def test_docker_s_config_keeps_docker_s_host_matching(places: Places) -> None:
    write(places.docker_file, {"auths": {"reg.example/team": entry("docker", "pw")}})
    # docker matches a key by its host: a namespace there is no namespace.
    assert pipeline.auth_file_credentials("reg.example/other/app").username == "docker"  # type: ignore[union-attr]


def test_a_docker_auth_config_entry_decides_before_the_legacy_dockercfg(
    places: Places, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The variable's entry for the registry decides docker's answer: the search ends
    there, as it does for docker's config.json, and ~/.dockercfg is not asked."""
    write(places.legacy_file, {"reg.example": entry("legacy", SECRET)})
    write(places.docker_file, {"auths": {"reg.example": entry("docker", SECRET)}})
    env_entry = {"auth": b64(f"env-user:{SECRET}")}
    monkeypatch.setenv("DOCKER_AUTH_CONFIG", json.dumps({"auths": {"reg.example": env_entry}}))
    for _ in range(2):
        got = pipeline.auth_file_credentials("reg.example/app")
        assert got is not None and (got.username, got.source) == ("env-user", "$DOCKER_AUTH_CONFIG")
        places.docker_file.unlink(missing_ok=True)  # and without docker's file
    # A registry the variable has no entry for reaches the legacy file.
    write(places.legacy_file, {"other.example": entry("legacy", SECRET)})
    got = pipeline.auth_file_credentials("other.example/app")
    assert got is not None and got.source == str(places.legacy_file)


def test_an_explicit_file_is_the_only_one_read(
    places: Places, tmp_path: Path, monkeypatch: Any
) -> None:
    write(places.runtime_file, {"auths": {"reg.example": entry("runtime", "pw")}})
    given = write(tmp_path / "given.json", {"auths": {"other.example": entry("given", "pw")}})
    assert pipeline.auth_file_credentials("reg.example/app", auth_file=given) is None
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(given))
    assert pipeline.auth_file_credentials("reg.example/app") is None
    got = pipeline.auth_file_credentials("other.example/app")
    assert got == Credentials("given", "pw", source=str(given), registry="other.example")
    missing = tmp_path / "missing.json"
    with pytest.raises(AuthError, match=f"cannot read the auth file {missing}: there is no"):
        pipeline.auth_file_credentials("reg.example/app", auth_file=missing)


def test_a_runtime_dir_that_is_no_directory_is_skipped(
    places: Places, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(places.config_file, {"auths": {"reg.example": entry("config", "pw")}})
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(places.runtime / "missing"))
    assert pipeline.auth_file_credentials("reg.example/app").username == "config"  # type: ignore[union-attr]
    monkeypatch.delenv("XDG_CONFIG_HOME")  # the default: ~/.config
    write(places.home / ".config/containers/auth.json", {"auths": {"reg.example": entry("h", "p")}})
    assert pipeline.auth_file_credentials("reg.example/app").username == "h"  # type: ignore[union-attr]


def test_a_port_is_part_of_the_registry_and_keys_are_matched_as_written(places: Places) -> None:
    find = pipeline.auth_file_credentials
    for key in ("reg.example", "https://reg.example/v1/", "reg.example/team"):
        write(places.runtime_file, {"auths": {key: entry("plain", "pw")}})
        assert find("reg.example:5000/team/app") is None, key
    for key in ("reg.example:5000", "https://reg.example:5000/v1/", "reg.example:5000/team"):
        write(places.runtime_file, {"auths": {key: entry("port", "pw")}})
        assert find("reg.example/team/app") is None, key
        assert find("reg.example:5000/team/app").username == "port"  # type: ignore[union-attr]
    # As containers/image: a key is matched as written, case included (the reference's
    # host keeps its case too).
    write(places.runtime_file, {"auths": {"REG.example": entry("upper", "pw")}})
    assert find("reg.example/team/app") is None
    assert find("REG.example/team/app").username == "upper"  # type: ignore[union-attr]


def test_an_empty_auth_file_name_is_a_usage_error_not_the_working_directory(
    places: Places, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pipeline.UsageError, match="auth_file must not be empty"):
        pipeline.auth_file_credentials("reg.example/app", auth_file="")
    # The CLI's --authfile "$UNSET": a usage error, before any file is read.
    result = run_cli("pull", "reg.example/app", "--store", str(tmp_path / "s"), "--authfile", "")
    assert result.returncode == 2, result.stderr
    assert "--authfile: the auth file must not be empty" in result.stderr
    assert not (tmp_path / "s").exists()
    # An empty REGISTRY_AUTH_FILE is unset, as for skopeo and podman.
    write(places.config_file, {"auths": {"reg.example": entry("config", "pw")}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", "")
    assert pipeline.auth_file_credentials("reg.example/app").username == "config"  # type: ignore[union-attr]


def test_a_file_name_with_a_nul_byte_is_a_usage_error_not_a_valueerror(tmp_path: Path) -> None:
    # A library caller's path; os.open would raise ValueError, outside the error tree.
    bad = str(tmp_path / "auth\0.json")
    with pytest.raises(pipeline.UsageError, match="cannot hold a NUL byte"):
        pipeline.auth_file_credentials("reg.example/app", auth_file=bad)
    with pytest.raises(pipeline.UsageError, match="cannot hold a NUL byte"):
        pipeline.docker_config_credentials("reg.example/app", config_path=bad)


def test_the_legacy_dockercfg_takes_docker_hub_under_any_of_its_names(places: Places) -> None:
    # containers/image reads ~/.dockercfg keys by host, Docker Hub's names normalised.
    for key in (
        "https://index.docker.io/v1/",
        "https://index.docker.io/v1",
        "index.docker.io",
        "docker.io",
        "registry-1.docker.io",
    ):
        write(places.legacy_file, {key: entry("legacy", "pw")})
        got = pipeline.auth_file_credentials("alpine")
        assert got is not None and got.username == "legacy", key
        assert got.registry == "docker.io" and got.source == str(places.legacy_file)
    write(places.legacy_file, {"reg.example": entry("legacy", "pw")})
    assert pipeline.auth_file_credentials("reg.example:5000/app") is None
    assert pipeline.auth_file_credentials("alpine") is None


def test_a_default_auth_file_that_cannot_be_read_is_skipped_with_a_warning(
    places: Places, tmp_path: Path
) -> None:
    """The containers tools fail the lookup there (containers/image#514): an anonymous
    pull of a public image fails over a file the user cannot read, often another user's
    (``sudo`` keeps ``XDG_RUNTIME_DIR``; ``/run/containers`` is root's)."""
    write(places.config_file, {"auths": {"reg.example": entry("config", "pw")}})

    def skipped(make: Any, why: str) -> None:
        make()
        with structlog.testing.capture_logs() as logs:
            got = pipeline.auth_file_credentials("reg.example/app")
        assert got is not None and got.source == str(places.config_file)
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert len(warnings) == 1, logs
        assert warnings[0]["path"] == str(places.runtime_file) and why in warnings[0]["reason"]

    places.runtime_file.parent.mkdir()
    skipped(places.runtime_file.mkdir, "not a regular file")
    places.runtime_file.rmdir()
    skipped(lambda: os.mkfifo(places.runtime_file), "not a regular file")
    places.runtime_file.unlink()
    skipped(lambda: places.runtime_file.symlink_to(places.runtime_file), "symbolic links")
    places.runtime_file.unlink()
    if os.geteuid() != 0:  # root reads it whatever its mode
        write(places.runtime_file, {"auths": {"reg.example": entry("runtime", "pw")}})
        skipped(lambda: places.runtime_file.chmod(0), "Permission denied")
        places.runtime_file.unlink()
    # A file it can read that is no auth.json stays an error, as for skopeo.
    places.runtime_file.write_text("{" + SECRET)
    with pytest.raises(AuthError, match="it is not valid JSON"):
        pipeline.auth_file_credentials("reg.example/app")
    # A file named by the user that cannot be read is an error naming it.
    directory = tmp_path / "given-dir"
    directory.mkdir()
    with pytest.raises(AuthError, match=f"cannot use {directory}: it is not a regular file"):
        pipeline.auth_file_credentials("reg.example/app", auth_file=directory)


def test_a_runtime_dir_that_cannot_be_looked_at_is_skipped_not_a_crash(
    places: Places, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A name no file system takes: stat() fails with ENAMETOOLONG, not ENOENT.
    monkeypatch.setenv("XDG_RUNTIME_DIR", f"/{'r' * 300}")
    write(places.config_file, {"auths": {"reg.example": entry("config", "pw")}})
    with structlog.testing.capture_logs() as logs:
        got = pipeline.auth_file_credentials("reg.example/app")
    assert got is not None and got.username == "config"
    assert [e["log_level"] for e in logs] == ["warning"]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('{"auths": {"reg.example": {"auth": "' + SECRET, "it is not valid JSON (line 1"),
        (json.dumps([SECRET]), "it is not a JSON object"),
        (json.dumps({"auths": [SECRET]}), "its auths is not an object"),
        (json.dumps({"credHelpers": {"reg.example": 1}}), "its credHelpers is not an object"),
        (json.dumps({"auths": {"reg.example/team": {"auth": SECRET + "!"}}}), "is not base64"),
        (json.dumps({"auths": {"reg.example": {"auth": b64(SECRET)}}}), "not the base64 of"),
    ],
)
def test_a_malformed_auth_file_is_an_error_naming_it_and_not_its_content(
    places: Places, content: str, says: str
) -> None:
    places.runtime_file.parent.mkdir()
    places.runtime_file.write_text(content)
    # A later file's good entry does not hide it: skopeo stops there too.
    write(places.docker_file, {"auths": {"reg.example": entry("docker", "pw")}})
    with pytest.raises(AuthError) as error:
        pipeline.auth_file_credentials("reg.example/team/app")
    message = str(error.value)
    assert str(places.runtime_file) in message and says in message
    assert SECRET not in message and b64(SECRET) not in message


def test_a_credential_helper_in_an_auth_file_is_asked_for_the_registry(
    places: Places, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-fake"
    helper.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(tmp_path / 'asked')!r}, 'w').write(sys.stdin.read())\n"
        "print(json.dumps({'ServerURL': 'x', 'Username': 'helped', 'Secret': 'pw'}))\n"
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    write(places.config_file, {"credHelpers": {"reg.example": "fake"}})
    got = pipeline.auth_file_credentials("reg.example/team/app")
    assert got is not None and got.username == "helped" and got.registry == "reg.example"
    assert (tmp_path / "asked").read_text() == "reg.example"


# --- a real pull, and the command line ------------------------------------------------------


@pytest.fixture
def pushed(basic_registry: Any, unique_repo: str, unique_seed: str) -> tuple[str, Any]:
    """A small image in the basic-auth registry: its reference, and the image."""
    image = images.sample_image(unique_seed, layer_size=4096)
    basic_registry.push(unique_repo, image, "1")
    return basic_registry.ref(unique_repo, "1"), image


async def test_a_basic_registry_takes_an_auth_json_s_credentials(
    basic_registry: Any, places: Places, unique_repo: str, pushed: tuple[str, Any], tmp_path: Path
) -> None:
    ref, image = pushed
    user, password = basic_registry.credentials
    namespace = f"{basic_registry.host}/{unique_repo}"
    write(
        places.runtime_file,
        {
            "auths": {
                basic_registry.host: entry(user, f"nope-{password}"),
                namespace: entry(user, password),  # the repository's own key wins
            }
        },
    )
    credentials = pipeline.auth_file_credentials(ref)
    options = PullOptions(platform=AMD64, registry=RegistryOptions(credentials=credentials))
    with trio.fail_after(60):
        result = await pipeline.pull(ref, store=Store.open(tmp_path / "store"), options=options)
    assert str(result.image_id) == image.image_id


def test_cli_authfile_is_the_only_file_read_and_u_still_wins(
    basic_registry: Any, places: Places, pushed: tuple[str, Any], tmp_path: Path
) -> None:
    ref, _ = pushed
    user, password = basic_registry.credentials
    wrong = f"{password}-but-not-9z8y"
    write(places.runtime_file, {"auths": {basic_registry.host: entry(user, wrong)}})
    given = write(tmp_path / "given.json", {"auths": {basic_registry.host: entry(user, password)}})
    store = str(tmp_path / "store")

    refused = run_cli("pull", ref, "--store", store, "-q")  # the runtime file's, wrong
    assert refused.returncode == 1
    assert f"check the credentials from {places.runtime_file}" in refused.stderr
    assert wrong not in refused.stdout + refused.stderr

    pulled = run_cli("pull", ref, "--store", store, "-q", "--authfile", str(given))
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout == f"{ref}\n"
    by_env = run_cli("pull", ref, "--store", str(tmp_path / "s2"), "-q",
                     env={"REGISTRY_AUTH_FILE": str(given)})  # fmt: skip
    assert by_env.returncode == 0, by_env.stderr

    # -u wins over --authfile: the wrong file is never read.
    bad = tmp_path / "bad.json"
    bad.write_text("{" + SECRET)
    with_u = run_cli("pull", ref, "--store", str(tmp_path / "s3"), "-q", "--authfile", str(bad),
                     "-u", user, "--password-stdin", stdin=password + "\n")  # fmt: skip
    assert with_u.returncode == 0, with_u.stderr
    without_u = run_cli("pull", ref, "--store", str(tmp_path / "s4"), "--authfile", str(bad))
    assert without_u.returncode == 1
    assert f"cannot use {bad}: it is not valid JSON" in without_u.stderr
    assert SECRET not in without_u.stdout + without_u.stderr
