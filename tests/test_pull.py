"""End to end: ``pipeline.pull`` against the real distribution registry on 127.0.0.1.

Every test ends by checking the store's promise: each file in ``blobs/`` hashes to its
name, and no partial download is left in ``ingest/``.
"""

from __future__ import annotations

import base64
import fcntl
import functools
import hashlib
import io
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

import pipeline
from pipeline import Platform, PullOptions, Store
from stages import _codec, _types
from stages._http import DIRECT_BODY_MIN_BYTES
from tests.support import images
from tests.support.processes import descendants
from tests.support.servers import RecordedRequest, Reply

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")
AMD64_V9 = Platform("linux", "amd64", "v9")  # no such x86-64 level
REPO_ROOT = Path(__file__).resolve().parent.parent
ORIGINAL_DIGEST = "io.github.imagec-pipe.original-manifest-digest"


def assert_store_consistent(store_path: Path) -> None:
    """Nothing unverified is visible and nothing half-written is left behind."""
    blob_dir = store_path / "blobs" / "sha256"
    for blob in blob_dir.iterdir() if blob_dir.exists() else ():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, blob
    partial = sorted(p.name for p in (store_path / "ingest").iterdir())
    assert partial == [], f"left in ingest/: {partial}"


def blob_names(store_path: Path) -> set[str]:
    return {f"sha256:{p.name}" for p in (store_path / "blobs" / "sha256").iterdir()}


def index_entries(store_path: Path) -> dict[str, dict[str, Any]]:
    index = json.loads((store_path / "index.json").read_text())
    return {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]}


def options(**kwargs: Any) -> PullOptions:
    kwargs.setdefault("platform", AMD64)
    return PullOptions(**kwargs)


# --- every kind of image -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["oci", "docker"])
async def test_pull_an_image_manifest(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path, kind: str
) -> None:
    image = images.sample_image(unique_seed, kind=kind)  # gzip, zstd (OCI), plain, empty
    registry.push(unique_repo, image, "1.0")
    ref = registry.ref(unique_repo, "1.0")
    store = Store.open(tmp_path / "store")

    result = await pipeline.pull(ref, store=store, options=options())

    assert result.reference == ref
    assert str(result.resolved_digest) == image.digest
    assert str(result.manifest_digest) == image.digest
    assert str(result.image_id) == image.image_id
    assert [str(layer.digest) for layer in result.layers] == [x.digest for x in image.layers]
    assert [str(layer.diff_id) for layer in result.layers] == list(image.diff_ids)
    assert [layer.uncompressed_size for layer in result.layers] == [
        x.uncompressed_size for x in image.layers
    ]
    assert {layer.status for layer in result.layers} == {"downloaded"}
    assert result.bytes_downloaded == sum(x.size for x in image.layers)
    assert result.timings.total_s >= result.timings.layers_s > 0
    assert result.timings.auth_s > 0 and result.timings.manifest_s > 0
    assert all(layer.timings.hash_s > 0 and layer.timings.inflate_s > 0 for layer in result.layers)

    path = store.path
    assert {x.digest for x in image.layers} | {image.config.digest, image.digest} <= blob_names(
        path
    )
    entry = index_entries(path)[ref]
    assert entry["platform"] == {"os": "linux", "architecture": "amd64"}
    if kind == "oci":
        assert entry["digest"] == image.digest
    else:  # listed through an OCI manifest converted from the registry's
        converted = json.loads((path / "blobs/sha256" / entry["digest"][7:]).read_bytes())
        assert entry["mediaType"] == converted["mediaType"] == pipeline.MediaType.OCI_MANIFEST
        assert [x["digest"] for x in converted["layers"]] == [x.digest for x in image.layers]
        assert image.digest in json.dumps(entry["annotations"])
    [record] = store.list_images()
    assert record.ref == ref and str(record.image_id) == image.image_id
    assert_store_consistent(path)


@pytest.mark.parametrize("kind", ["oci", "docker"])
@pytest.mark.parametrize("platform", [AMD64, ARM64], ids=str)
async def test_pull_from_an_index_picks_the_platform(
    registry: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    kind: str,
    platform: Platform,
) -> None:
    index = images.sample_index(unique_seed, kind=kind)
    registry.push(unique_repo, index, "multi")
    ref = registry.ref(unique_repo, "multi")
    want = index.image_for(str(platform))
    store = Store.open(tmp_path / "store")

    result = await pipeline.pull(ref, store=store, options=options(platform=platform))

    assert str(result.resolved_digest) == index.digest  # what the tag resolved to
    assert str(result.manifest_digest) == want.digest
    assert str(result.image_id) == want.image_id
    assert result.platform.architecture == platform.architecture
    assert index.digest in blob_names(store.path)  # the index's own bytes are kept
    assert index_entries(store.path)[ref]["platform"]["architecture"] == platform.architecture
    assert_store_consistent(store.path)


async def test_pull_by_digest_and_by_tag_at_digest(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    image = images.sample_image(unique_seed)
    registry.push(unique_repo, image, "v1")
    store = Store.open(tmp_path / "store")
    by_digest = registry.ref(unique_repo, image.digest)

    result = await pipeline.pull(by_digest, store=store, options=options())
    again = await pipeline.pull(
        f"{registry.host}/{unique_repo}:v1@{image.digest}", store=store, options=options()
    )

    assert result.reference == by_digest
    assert str(result.manifest_digest) == image.digest
    assert {layer.status for layer in again.layers} == {"exists"}
    # Skipped layers report the sizes the store recorded when they were downloaded.
    assert [x.uncompressed_size for x in again.layers] == [
        x.uncompressed_size for x in result.layers
    ]
    assert None not in [x.uncompressed_size for x in again.layers]
    assert again.up_to_date and not result.up_to_date
    assert by_digest in index_entries(store.path)
    assert store.find_image(by_digest) is not None
    assert_store_consistent(store.path)


async def test_second_pull_finds_every_layer_already_there(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    image = images.sample_image(unique_seed)
    registry.push(unique_repo, image, "latest")
    ref = registry.ref(unique_repo, "latest")
    events: list[pipeline.ProgressEvent] = []
    store = Store.open(tmp_path / "store")
    await pipeline.pull(ref, store=store, options=options())

    result = await pipeline.pull(
        ref, store=Store.open(tmp_path / "store"), options=options(progress=events.append)
    )

    assert {layer.status for layer in result.layers} == {"exists"}
    assert result.bytes_downloaded == 0
    kinds = [e.event for e in events]
    assert kinds.count("layer-exists") == len(image.layers)
    assert "layer-downloading" not in kinds
    assert kinds[-1] == "pull-complete"
    assert len(index_entries(store.path)) == 1  # the tag's entry replaced, not duplicated


async def test_retagging_replaces_the_index_entry(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    first, second = images.sample_image(f"{unique_seed}:1"), images.sample_image(f"{unique_seed}:2")
    ref = registry.ref(unique_repo, "moving")
    store = Store.open(tmp_path / "store")
    registry.push(unique_repo, first, "moving")
    await pipeline.pull(ref, store=store, options=options())
    registry.push(unique_repo, second, "moving")
    await pipeline.pull(ref, store=store, options=options())

    assert index_entries(store.path)[ref]["digest"] == second.digest
    assert len(index_entries(store.path)) == 1


# --- auth and TLS ----------------------------------------------------------------------


async def test_basic_auth(
    basic_registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    image = images.sample_image(unique_seed, layer_size=64 * 1024)
    basic_registry.push(unique_repo, image, "1")
    ref = basic_registry.ref(unique_repo, "1")
    user, password = basic_registry.credentials
    store = Store.open(tmp_path / "store")

    with pytest.raises(pipeline.AuthError) as anonymous:
        await pipeline.pull(ref, store=store, options=options())
    wrong = pipeline.RegistryOptions(credentials=pipeline.Credentials(user, "not-" + password))
    with pytest.raises(pipeline.AuthError) as rejected:
        await pipeline.pull(ref, store=store, options=options(registry=wrong))
    right = pipeline.RegistryOptions(credentials=pipeline.Credentials(user, password))
    result = await pipeline.pull(ref, store=store, options=options(registry=right))

    assert str(result.image_id) == image.image_id
    for error in (anonymous.value, rejected.value):
        assert basic_registry.host in str(error)
        assert password not in str(error)
    assert_store_consistent(store.path)


async def test_bearer_tokens_anonymous_and_with_credentials(
    token_registry: Any, token_server: Any, unique_seed: str, tmp_path: Path
) -> None:
    public, private = images.sample_image(f"{unique_seed}:pub"), images.sample_image(unique_seed)
    token_registry.push(f"public/{unique_seed[-8:]}", public, "1")
    token_registry.push("team/private-app", private, "1")
    user, password = token_registry.credentials
    store = Store.open(tmp_path / "store")
    token_server.reset()

    await pipeline.pull(
        token_registry.ref(f"public/{unique_seed[-8:]}", "1"), store=store, options=options()
    )
    with pytest.raises(pipeline.AuthError) as anonymous:
        await pipeline.pull(
            token_registry.ref("team/private-app", "1"), store=store, options=options()
        )
    creds = pipeline.RegistryOptions(credentials=pipeline.Credentials(user, password))
    result = await pipeline.pull(
        token_registry.ref("team/private-app", "1"), store=store, options=options(registry=creds)
    )

    assert str(result.image_id) == private.image_id
    assert password not in str(anonymous.value)
    # Tokens are cached per scope within a pull: far fewer token requests than blob GETs.
    assert 0 < token_server.count <= 6
    assert_store_consistent(store.path)


@pytest.mark.parametrize("like_docker_hub", [False, True])
async def test_a_refused_login_says_what_the_token_service_said(
    token_registry: Any, token_server: Any, unique_seed: str, tmp_path: Path, like_docker_hub: bool
) -> None:
    # The token service's reason was dropped: "refused a token as 'u' (HTTP 401)", where it
    # had said "incorrect username or password". Docker Hub's service answers
    # {"details": ...}, distribution's token servers {"errors": [...]}; this one quotes
    # the password back, which the error must not.
    token_registry.push("team/private-app", images.sample_image(unique_seed), "1")
    user, password = token_registry.credentials
    wrong = "not-" + password + "-9f3c"
    token_server.refuse_like_docker_hub = like_docker_hub
    creds = pipeline.RegistryOptions(credentials=pipeline.Credentials(user, wrong))

    with pytest.raises(pipeline.AuthError) as refused:
        await pipeline.pull(
            token_registry.ref("team/private-app", "1"),
            store=Store.open(tmp_path / "store"),
            options=options(registry=creds),
        )

    message = str(refused.value)
    realm_host = token_server.host
    assert f"the token service at {realm_host} refused a token as {user!r}" in message
    if like_docker_hub:
        assert f"(HTTP 401: incorrect username or password (got '{user}:[redacted]'))" in message
    else:
        assert "(HTTP 401: UNAUTHORIZED: bad credentials)" in message
    assert wrong not in message
    assert "9f3c" not in message


async def test_a_refused_short_password_is_cut_out_of_the_reason_not_its_words(
    token_registry: Any, token_server: Any, unique_seed: str, tmp_path: Path
) -> None:
    # A one-letter password was cut out of every word the service said: "incorr[redacted]ct
    # us[redacted]rnam[redacted] or password". Where it stands alone it still goes.
    token_registry.push("team/private-app", images.sample_image(unique_seed), "1")
    user, _ = token_registry.credentials
    token_server.refuse_like_docker_hub = True
    creds = pipeline.RegistryOptions(credentials=pipeline.Credentials(user, "e"))

    with pytest.raises(pipeline.AuthError) as refused:
        await pipeline.pull(
            token_registry.ref("team/private-app", "1"),
            store=Store.open(tmp_path / "store"),
            options=options(registry=creds),
        )

    said = f"(HTTP 401: incorrect username or password (got '{user}:[redacted]'))"
    assert said in str(refused.value)


@pytest.mark.parametrize("quote_back", ["base64", "percent-encoded"])
async def test_a_token_service_quoting_the_credentials_encoded_gets_them_cut(
    token_registry: Any, token_server: Any, unique_seed: str, tmp_path: Path, quote_back: str
) -> None:
    # The password was cut only as it was sent: quoted back as the Basic credentials'
    # base64 without the word "Basic", or percent-encoded ("ci:p%40ss%21"), it stayed in
    # the error, in every retry warning and in the CLI's error line.
    token_registry.push("team/private-app", images.sample_image(unique_seed), "1")
    user, password = token_registry.credentials
    wrong = f"not {password}@9f3c!"
    token_server.refuse_like_docker_hub = True
    token_server.quote_back = quote_back
    creds = pipeline.RegistryOptions(credentials=pipeline.Credentials(user, wrong))

    with pytest.raises(pipeline.AuthError) as refused:
        await pipeline.pull(
            token_registry.ref("team/private-app", "1"),
            store=Store.open(tmp_path / "store"),
            options=options(registry=creds),
        )

    message = str(refused.value)
    basic = base64.b64encode(f"{user}:{wrong}".encode()).decode()
    encoded = urllib.parse.quote(wrong, safe="")
    assert "%40" in encoded and "%20" in encoded  # what the service quotes is encoded
    quoted = "[redacted]" if quote_back == "base64" else f"{user}:[redacted]"
    assert f"(HTTP 401: incorrect username or password (got '{quoted}'))" in message
    for secret in (basic, basic.rstrip("="), encoded, "9f3c"):
        assert secret not in message


async def test_an_opaque_token_quoted_back_bare_is_cut_from_the_error_and_the_logs(
    token_registry: Any,
    token_server: Any,
    unique_seed: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Many registries issue opaque tokens (Docker Hub's older ones, GitLab's, Harbor's
    # robot tokens): quoted bare, not after "Bearer" and not a JWT, redact let them
    # through, and only the password was cut by its value. Here the registry refuses the
    # opaque token and the token service answers the renewal by naming it, and its
    # refresh token, as revoked.
    import structlog

    from pipeline import _logging

    monkeypatch.setattr(_logging._Applied, "settings", _logging.LogSettings())
    monkeypatch.setattr(_logging._Applied, "stream", None)
    repository = f"public/{unique_seed[-8:]}-opaque"
    token_registry.push(repository, images.sample_image(unique_seed), "1")
    token_server.revoke_opaque_tokens = True
    logs = io.StringIO()
    pipeline.configure_logging(level="debug", json=True, stream=logs)
    try:
        with pytest.raises(pipeline.AuthError) as refused:
            await pipeline.pull(
                token_registry.ref(repository, "1"),
                store=Store.open(tmp_path / "store"),
                options=options(),
            )
        # A host logging what the servers said, or the error itself.
        [(token, refresh)] = token_server.opaque_issued
        structlog.get_logger().warning("pull failed", said=f"revoked {token} and {refresh}")
        structlog.get_logger().warning("pull failed", error=str(refused.value))
    finally:
        structlog.reset_defaults()

    message = str(refused.value)
    realm_host = token_server.host
    assert f"the token service at {realm_host} refused a token anonymously" in message
    assert "(HTTP 401: token [redacted] (refresh token [redacted]) was revoked)" in message
    logged = logs.getvalue()
    assert "revoked [redacted] and [redacted]" in logged
    for secret in (token, refresh):
        assert secret not in message and secret not in logged


async def test_a_registry_quoting_basic_credentials_back_gets_them_cut(
    fixture_server: Any, tmp_path: Path
) -> None:
    # A registry that answers Basic credentials it cannot take by quoting them, without
    # the word "Basic" (padded or not): its words reached the error whole, and with
    # them the password, base64 being no secret-keeping.
    server = fixture_server()
    credentials = pipeline.Credentials("ci", "hunter2-S!")
    basic = base64.b64encode(b"ci:hunter2-S!").decode()
    assert basic.endswith("=")

    def registry(request: RecordedRequest) -> Reply:
        authorization = request.headers.get("authorization")
        if authorization is None:
            return Reply(401, {"WWW-Authenticate": 'Basic realm="fixture"'})
        sent = authorization.removeprefix("Basic ")
        message = f"cannot decode {sent}, nor {sent.rstrip('=')}"
        return Reply.error(401, "UNAUTHORIZED", message)

    server.route("/v2/", registry)
    server.route("/v2/team/app/manifests/1", registry)

    message = await pull_fails(
        f"{server.host}/team/app:1",
        tmp_path / "s",
        pipeline.AuthError,
        registry=pipeline.RegistryOptions(credentials=credentials),
    )

    assert server.count() >= 2  # the credentials were sent, and quoted back
    assert "(UNAUTHORIZED: cannot decode [redacted], nor [redacted])" in message
    assert basic.rstrip("=") not in message


@pytest.mark.parametrize(("fault", "status"), [("status", 503), ("status", 502), ("close", 0)])
async def test_a_token_service_blip_is_tried_again(
    token_registry: Any,
    token_server: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    fault: str,
    status: int,
) -> None:
    """One 5xx, or one dropped connection, from the token service: another request gets
    the token and the pull completes, as it does after a registry's own 503."""
    image = images.sample_image(unique_seed, layer_size=64 * 1024)
    repo = f"public/{unique_repo.rsplit('/', 1)[-1]}"
    token_registry.push(repo, image, "1")
    token_server.reset()
    token_server.set_fault(fault, status=status or 503, times=1)

    with trio.fail_after(60):
        result = await pull_retrying_quickly(token_registry.ref(repo, "1"), tmp_path / "s")

    assert str(result.image_id) == image.image_id
    assert token_server.count == 2  # the failed request, then the token used for the pull
    assert_store_consistent(tmp_path / "s")


async def test_tls_needs_the_ca(
    tls_registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    image = images.sample_image(unique_seed, layer_size=64 * 1024)
    tls_registry.push(unique_repo, image, "1")
    ref = tls_registry.ref(unique_repo, "1")
    store = Store.open(tmp_path / "store")

    with pytest.raises(pipeline.RegistryError) as refused:
        await pipeline.pull(ref, store=store, options=options())
    trusted = pipeline.RegistryOptions(ca_file=Path(tls_registry.ca_pem))
    result = await pipeline.pull(ref, store=store, options=options(registry=trusted))

    assert "certificate" in str(refused.value).lower()
    assert str(result.image_id) == image.image_id
    assert_store_consistent(store.path)


# --- sharing: one download per layer ---------------------------------------------------


async def test_concurrent_pulls_in_one_process_share_layers(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    base = [images.make_layer(f"{unique_seed}:base{i}", size=512 * 1024) for i in range(2)]
    one = images.sample_image(f"{unique_seed}:one", base=base)
    two = images.sample_image(f"{unique_seed}:two", base=base)
    registry.push(unique_repo, one, "one")
    registry.push(unique_repo, two, "two")
    # Slow enough that both pulls are in flight at once.
    via = proxy(registry, rate=8_000_000)
    store = Store.open(tmp_path / "store")
    results: dict[str, pipeline.PullResult] = {}

    async def pull(tag: str) -> None:
        results[tag] = await pipeline.pull(
            f"{via.host}/{unique_repo}:{tag}", store=store, options=options()
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pull, "one")
        nursery.start_soon(pull, "two")

    for layer in base:
        assert via.blob_gets(layer.digest) == 1, layer.digest
    for i in range(len(base)):
        # One pull downloaded it; the other waited for it ("shared") or, when it came
        # later, found it committed ("exists").
        statuses = sorted(r.layers[i].status for r in results.values())
        assert statuses in (["downloaded", "shared"], ["downloaded", "exists"]), statuses
        sizes = {r.layers[i].uncompressed_size for r in results.values()}
        assert len(sizes) == 1 and None not in sizes, sizes
    assert str(results["one"].image_id) == one.image_id
    assert str(results["two"].image_id) == two.image_id
    assert_store_consistent(store.path)


@pytest.mark.parametrize("workers", ["threads", "processes"])
async def test_layers_take_download_slots_largest_first_whatever_their_lookups_take(
    registry: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workers: str,
) -> None:
    # Between taking its layer and asking for a download slot, a layer worker looks the
    # layer up in the store in a thread; those lookups come back in any order. Here the
    # largest layer's lookup comes back last: with one slot, it must still go first.
    sizes = [96 * 1024, 768 * 1024, 192 * 1024, 384 * 1024]
    layers = [images.make_layer(f"{unique_seed}:{size}", size=size) for size in sizes]
    image = images.make_image(layers)
    registry.push(unique_repo, image, "latest")
    largest = max(layers, key=lambda layer: layer.size)
    store = Store.open(tmp_path / "store")
    look_up = store.committed_layer

    def slow_for_the_largest(digest: pipeline.Digest, **kwargs: Any) -> Any:
        if str(digest) == largest.digest:
            time.sleep(0.3)
        return look_up(digest, **kwargs)

    monkeypatch.setattr(store, "committed_layer", slow_for_the_largest)
    started: list[str] = []

    def watch(event: pipeline.ProgressEvent) -> None:
        if event.event == "layer-downloading" and str(event.digest) not in started:
            started.append(str(event.digest))

    with trio.fail_after(60):
        await pipeline.pull(
            f"{registry.host}/{unique_repo}:latest",
            store=store,
            options=options(max_concurrent_downloads=1, progress=watch, layer_workers=workers),
        )
    by_size = sorted(layers, key=lambda layer: layer.size, reverse=True)
    assert started == [layer.digest for layer in by_size]
    assert_store_consistent(store.path)


async def test_only_the_largest_layer_downloading_gets_the_deeper_chunk_channel(
    registry: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The largest layer is the pull's critical path and gets the deeper channel
    (Limits.largest_layer_chunk_buffer); the layers that start while it downloads keep
    Limits.chunk_buffer. Its commit waits until the two next layers have started, so
    they certainly overlap it."""
    from structlog.testing import capture_logs

    sizes = [96 * 1024, 768 * 1024, 192 * 1024, 384 * 1024]
    layers = [images.make_layer(f"{unique_seed}:{size}", size=size) for size in sizes]
    registry.push(unique_repo, images.make_image(layers), "latest")
    largest, second, third = sorted(layers, key=lambda layer: layer.size, reverse=True)[:3]
    store = Store.open(tmp_path / "store")
    commit = store.commit_layer
    others_started = threading.Event()
    started: set[str] = set()

    def watch(event: pipeline.ProgressEvent) -> None:
        if event.event == "layer-downloading":
            started.add(str(event.digest))
            if {second.digest, third.digest} <= started:
                others_started.set()

    def commit_once_the_others_started(ingest: Any, verified: Any, **kwargs: Any) -> Any:
        if str(verified.descriptor.digest) == largest.digest:
            others_started.wait(20)
        return commit(ingest, verified, **kwargs)

    monkeypatch.setattr(store, "commit_layer", commit_once_the_others_started)
    limits = pipeline.Limits(chunk_size=16 * 1024, chunk_buffer=3, largest_layer_chunk_buffer=9)
    with capture_logs() as logs, trio.fail_after(60):
        await pipeline.pull(
            f"{registry.host}/{unique_repo}:latest",
            store=store,
            options=options(progress=watch, limits=limits),
        )
    assert others_started.is_set()
    depths = {
        entry["digest"]: entry["chunk_buffer"]
        for entry in logs
        if entry["event"] == "layer fetched"
    }
    assert depths == {layer.digest: 9 if layer is largest else 3 for layer in layers}
    assert_store_consistent(store.path)


def cli(*argv: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline._cli", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


def test_the_largest_layer_gets_the_deeper_chunk_channel_in_a_worker_process(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """With --layer-workers processes, the largest layer's worker gets the deeper chunk
    channel too: the choice travels in its LayerTask. (Which of the others overlap it is
    up to timing here; the in-process test above pins that.)"""
    sizes = [64 * 1024, 512 * 1024, 128 * 1024]
    layers = [images.make_layer(f"{unique_seed}:{size}", size=size) for size in sizes]
    registry.push(unique_repo, images.make_image(layers), "latest")
    largest = max(layers, key=lambda layer: layer.size)
    proc = cli(
        "pull", "--store", str(tmp_path / "store"), "--layer-workers", "processes",
        "--log-level", "info", "--log-json", f"{registry.host}/{unique_repo}:latest",
    )  # fmt: skip
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    fetched = [json.loads(line) for line in err.splitlines() if '"layer fetched"' in line]
    depths = {entry["digest"]: entry["chunk_buffer"] for entry in fetched}
    assert depths.keys() == {layer.digest for layer in layers}, err
    assert depths[largest.digest] == pipeline.Limits().largest_layer_chunk_buffer


def test_two_processes_pulling_one_image_download_each_layer_once(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """RELIABILITY.md: two processes pulling the same layer into one store: one download,
    both succeed. Through a slow link, so that both reach each layer while it downloads:
    one process downloads it, the other waits on the store's claim and finds it there."""
    image = images.sample_image(unique_seed, layer_size=1024 * 1024, compressions=("none",))
    registry.push(unique_repo, image, "1")
    via = proxy(registry, rate=2_000_000)
    store = tmp_path / "store"
    ref = f"{via.host}/{unique_repo}:1"

    procs = [cli("pull", ref, "--store", str(store), "--json") for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]

    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    for layer in image.layers:
        assert via.blob_gets(layer.digest) == 1, layer.digest
    summaries = [json.loads(out.splitlines()[-1]) for out, _ in outputs]
    statuses = sorted(
        (layer["digest"], layer["status"]) for s in summaries for layer in s["layers"]
    )
    big = image.layers[0].digest
    assert [status for digest, status in statuses if digest == big] == ["downloaded", "shared"]
    assert_store_consistent(store)


def test_two_processes_pull_into_one_store(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    index = images.sample_index(unique_seed, layer_size=512 * 1024)
    registry.push(unique_repo, index, "1")
    image = images.sample_image(f"{unique_seed}:b", base=[index.images[0].layers[0]])
    registry.push(unique_repo, image, "2")
    via = proxy(registry, rate=20_000_000)
    store = tmp_path / "store"
    refs = [f"{via.host}/{unique_repo}:1", f"{via.host}/{unique_repo}:2"]

    procs = [
        cli("pull", ref, "--store", str(store), "--platform", "linux/amd64", "-q") for ref in refs
    ]
    outputs = [p.communicate(timeout=60) for p in procs]

    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    assert sorted(o.strip() for o, _ in outputs) == sorted(refs)
    assert set(index_entries(store)) == set(refs)
    assert_store_consistent(store)
    listed = Store.open(store).list_images()
    assert sorted(r.ref for r in listed) == sorted(refs)


def test_sigint_mid_pull_then_pull_again(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    image = images.sample_image(
        unique_seed, layer_size=2 * 1024 * 1024, compressions=("none", "gzip")
    )
    registry.push(unique_repo, image, "1")
    via = proxy(registry, rate=400_000)  # a few seconds for the whole image
    ref = f"{via.host}/{unique_repo}:1"
    store = tmp_path / "store"

    proc = cli("pull", ref, "--store", str(store), "--json")
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line)["event"] == "layer-downloading":
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)

    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert_store_consistent(store)
    assert ref not in index_entries(store)

    via.rate = None
    again = cli("pull", ref, "--store", str(store), "-q")
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert out.strip() == ref
    assert_store_consistent(store)


async def test_a_cancelled_pull_waiting_for_the_store_lock_ends_at_once(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """The record of an image waits (in a worker thread, up to 30 s) for the store's
    lock while another process holds it; a cancel of the pull used to wait for that
    thread to give up. It ends the wait now, leaving nothing recorded and nothing
    half-written, and the pull succeeds once the lock is free."""
    import fcntl

    image = images.sample_image(unique_seed, compressions=("gzip",), with_empty_layer=False)
    registry.push(unique_repo, image, "1")
    ref = registry.ref(unique_repo, "1")
    store = Store.open(tmp_path / "store")
    holder = os.open(store.path / "imagec.lock", os.O_RDWR)  # another open file: another owner
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        # Written by record_image before it takes the lock.
        manifest = store.path / "blobs" / "sha256" / image.digest.removeprefix("sha256:")
        with trio.fail_after(10):  # the old code's thread gave up after 30 s
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(pipeline.pull, ref, store=store, options=options())
                )
                for _ in range(200):  # the fail_after ends the wait first
                    if manifest.exists():
                        break
                    await trio.sleep(0.05)
                await trio.sleep(0.3)  # polling the lock
                nursery.cancel_scope.cancel()
    finally:
        os.close(holder)
    assert store.find_image(ref) is None
    assert ref not in index_entries(store.path)
    assert_store_consistent(store.path)

    result = await pipeline.pull(ref, store=store, options=options())

    assert store.find_image(ref) is not None
    assert {layer.status for layer in result.layers} == {"exists"}  # committed before
    assert_store_consistent(store.path)


# --- bad inputs: a clear error, nothing unverified visible ----------------------------


async def pull_retrying_quickly(ref: str, store_path: Path) -> pipeline.PullResult:
    """A pull whose retries wait milliseconds, not seconds: for the retry tests."""
    limits = pipeline.Limits(retry_wait_s=0.01)
    return await pipeline.pull(ref, store=Store.open(store_path), options=options(limits=limits))


async def pull_fails(ref: str, store_path: Path, error: type[Exception], **kwargs: Any) -> str:
    store = Store.open(store_path)
    with pytest.raises(error) as caught:
        await pipeline.pull(ref, store=store, options=options(**kwargs))
    assert_store_consistent(store_path)
    assert ref in str(caught.value) or "reference" in str(caught.value)
    return str(caught.value)


async def test_corrupted_blob_in_the_registry(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    image = images.sample_image(unique_seed)
    registry.push(unique_repo, image, "1")
    bad = image.layers[0]
    images.corrupt_blob(registry.storage_dir, bad.digest)

    message = await pull_fails(
        registry.ref(unique_repo, "1"), tmp_path / "s", pipeline.DigestMismatch
    )

    assert bad.digest in message
    assert bad.digest not in blob_names(tmp_path / "s")


async def test_config_whose_diff_ids_do_not_match(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    image = images.mismatched_diff_ids_image(unique_seed)
    registry.push(unique_repo, image, "1")

    message = await pull_fails(
        registry.ref(unique_repo, "1"), tmp_path / "s", pipeline.DiffIDMismatch
    )

    assert image.layers[1].digest in message
    assert image.layers[1].digest not in blob_names(tmp_path / "s")


async def test_a_registry_that_drips_is_given_up_on(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    # The proxy passes 100 kB/s, in bursts: never silent long enough for a read timeout,
    # far below the minimum rate asked for here. The pull fails within seconds, as a
    # registry problem that names the layer, with nothing of it in the store.
    image = images.sample_image(unique_seed, layer_size=2 * 1024 * 1024, compressions=("none",))
    registry.push(unique_repo, image, "1")
    via = proxy(registry, rate=100_000)
    limits = pipeline.Limits(min_transfer_bytes_per_s=1_000_000, transfer_window_s=1.0)

    with trio.fail_after(30):
        message = await pull_fails(
            f"{via.host}/{unique_repo}:1",
            tmp_path / "s",
            pipeline.RegistryUnavailable,
            limits=limits,
        )

    layer = image.layers[0]
    assert "too slow" in message and layer.digest in message
    assert layer.digest not in blob_names(tmp_path / "s")


async def test_a_pull_past_its_timeout_is_cancelled_and_says_how_far_it_got(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """RELIABILITY.md, "slow drip": the transfer-rate check alone lets a server sending
    just above its minimum hold a pull for hours; PullOptions.timeout_s bounds the whole
    pull. Here a 4 MiB layer through a proxy passing 200 kB/s, and 2 s: the pull is
    cancelled, saying which layer was how far along; the empty layer it finished is kept
    and the next pull does not fetch it again; nothing of the other is left."""
    image = images.sample_image(unique_seed, layer_size=4 * 1024 * 1024, compressions=("none",))
    registry.push(unique_repo, image, "1")
    big, empty = image.layers
    via = proxy(registry, rate=200_000)

    with trio.fail_after(30):
        message = await pull_fails(
            f"{via.host}/{unique_repo}:1", tmp_path / "s", pipeline.PullTimeout, timeout_s=2
        )

    assert "did not finish within 2 s, the time it was given" in message, message
    assert "1 of 2 layers were done and are kept in the store" in message, message
    assert re.search(rf"in progress: {big.digest} \(\d+\.\d of 4\.2 MB received\)", message)
    assert big.digest not in blob_names(tmp_path / "s")
    assert empty.digest in blob_names(tmp_path / "s")
    with trio.fail_after(30):
        result = await pipeline.pull(
            registry.ref(unique_repo, "1"), store=Store.open(tmp_path / "s"), options=options()
        )
    statuses = {str(layer.digest): layer.status for layer in result.layers}
    assert statuses == {big.digest: "downloaded", empty.digest: "exists"}


async def test_a_store_failure_while_recording_the_image_names_the_image(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """The store raised its errors with the blob alone (a full disk while writing the
    config): the pull's error did not say which image. Here the config's place in the
    store is taken by a directory, so writing it fails."""
    image = images.sample_image(unique_seed, layer_size=1024)
    registry.push(unique_repo, image, "1")
    store = Store.open(tmp_path / "s")
    config = image.config.digest.removeprefix("sha256:")
    (tmp_path / "s" / "blobs" / "sha256" / config).mkdir()
    ref = registry.ref(unique_repo, "1")

    with trio.fail_after(30), pytest.raises(pipeline.StoreError) as caught:
        await pipeline.pull(ref, store=store, options=options())

    assert caught.value.ref == ref
    assert str(caught.value).endswith(f"({ref}, sha256:{config})"), str(caught.value)


async def test_a_pull_that_times_out_resolving_says_so(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """The timeout covers the requests before any layer, here a manifest the registry
    never answers (within the 60 s read timeout the test does not wait for)."""
    image = images.sample_image(unique_seed, layer_size=1024)
    registry.push(unique_repo, image, "1")
    via = proxy(registry)
    via.inject(f"/v2/{unique_repo}/manifests/1", Reply(stall=True), method="GET", times=None)

    with trio.fail_after(30):
        message = await pull_fails(
            f"{via.host}/{unique_repo}:1", tmp_path / "s", pipeline.PullTimeout, timeout_s=0.5
        )

    assert "did not finish within 0.5 s" in message, message
    assert "it was still resolving the reference" in message, message


async def test_a_progress_callback_raising_past_the_timeout_is_not_called_a_timeout(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """A bug (here the caller's own callback, raising after the deadline passed) came out
    as a tidy PullTimeout with no cause; it comes out as it was raised."""
    image = images.sample_image(unique_seed, layer_size=1024, compressions=("gzip",))
    registry.push(unique_repo, image, "1")

    def sink(event: pipeline.ProgressEvent) -> None:
        if event.event == "layer-waiting":
            time.sleep(0.3)  # past the deadline, on the event loop
            raise TypeError("a bug in the caller's display")

    with trio.fail_after(30), pytest.raises(BaseException) as caught:
        await pipeline.pull(
            registry.ref(unique_repo, "1"),
            store=Store.open(tmp_path / "s"),
            options=options(progress=sink, timeout_s=0.2),
        )

    raised = caught.value
    if isinstance(raised, BaseExceptionGroup):
        matched = raised.subgroup(TypeError)
        assert matched is not None, raised
        [raised] = matched.exceptions
    assert isinstance(raised, TypeError), repr(raised)
    assert_store_consistent(tmp_path / "s")


async def test_a_pull_that_times_out_waiting_for_gc_says_so(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    image = images.sample_image(unique_seed, layer_size=1024)
    registry.push(unique_repo, image, "1")
    store = Store.open(tmp_path / "s")
    with (tmp_path / "s" / "gc.lock").open("a+") as held:  # as an rm or gc holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        with trio.fail_after(30), pytest.raises(pipeline.PullTimeout) as caught:
            await pipeline.pull(
                registry.ref(unique_repo, "1"), store=store, options=options(timeout_s=0.5)
            )
    assert "it was still waiting for an rm or gc in this store to end" in str(caught.value)


@pytest.mark.parametrize(
    ("seconds", "said"),
    [(0.5, "0.5 s"), (59.99999, "59.99999 s"), (90, "90 s (1 min 30 s)"), (90.4, "90.4 s"),
     (3599.6, "3599.6 s"), (5400, "5400 s (1 h 30 min)")],
)  # fmt: skip
def test_the_timeout_is_said_as_given_never_rounded(seconds: float, said: str) -> None:
    from pipeline._pull import _seconds

    assert _seconds(seconds) == said


@pytest.mark.parametrize("timeout", [0, -1, math.inf, math.nan, True, "10m"])
def test_a_timeout_that_is_no_positive_number_is_refused(timeout: Any) -> None:
    with pytest.raises(pipeline.UsageError, match="timeout_s must be a number of seconds"):
        PullOptions(timeout_s=timeout)


@pytest.mark.parametrize("stalled", ["manifest", "layer"])
async def test_a_registry_that_stalls_is_asked_twice_not_five_times(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path, stalled: str
) -> None:
    """RELIABILITY.md, "a total stall": the registry accepts the request and sends
    nothing. Each attempt waited out the read timeout and was retried like a 503, all
    five of them: 5 x 60 s by default before the pull failed, for each request. A request
    that got no byte is tried once more (a fresh connection may cure it), then the pull
    fails, saying so. Here the read timeout is 1 s."""
    image = images.sample_image(unique_seed, layer_size=64 * 1024)
    registry.push(unique_repo, image, "1")
    via = proxy(registry)
    layer = image.layers[0]
    path = f"/v2/{unique_repo}/manifests/1" if stalled == "manifest" else None
    via.inject(path or f"*/blobs/{layer.digest}", Reply(stall=True), method="GET", times=None)
    limits = pipeline.Limits(read_timeout_s=1.0, retry_wait_s=0.01)

    with trio.fail_after(60):
        message = await pull_fails(
            f"{via.host}/{unique_repo}:1",
            tmp_path / "s",
            pipeline.RegistryUnavailable,
            limits=limits,
        )

    gets = via.count("GET", path) if path else via.blob_gets(layer.digest)
    assert gets == 2
    assert f"no data from {via.host} for 1 s" in message, message
    assert "2 times in a row" in message, message
    if path is None:
        assert layer.digest in message and layer.digest not in blob_names(tmp_path / "s")


async def _pull_a_layer_that_stalls_after_1000_bytes(
    registry: Any, proxy: Any, repo: str, seed: str, store_path: Path, **limits: Any
) -> tuple[Any, images.Layer, str]:
    """A pull, through the proxy, of an image whose layer stops after 1000 bytes on
    every request, with a read timeout of 1 s and ``limits``; it must fail with
    RegistryUnavailable. Returns the proxy, the layer and the error's text."""
    image = images.sample_image(seed, layer_size=64 * 1024)
    registry.push(repo, image, "1")
    via = proxy(registry)
    layer = image.layers[0]
    via.inject(f"*/blobs/{layer.digest}", Reply(stall_after=1000), method="GET", times=None)
    with trio.fail_after(60):
        message = await pull_fails(
            f"{via.host}/{repo}:1",
            store_path,
            pipeline.RegistryUnavailable,
            limits=pipeline.Limits(read_timeout_s=1.0, **limits),
        )
    return via, layer, message


async def test_a_layer_that_sends_a_little_then_stalls_every_time_is_asked_twice(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """A server that sends a few bytes of the layer and then nothing, on every attempt:
    any byte counted as progress, so its stalls were never "in a row" and the layer
    waited out the read timeout on all five attempts. An attempt that received less than
    Limits.stall_progress_bytes (1 MiB) before it stalled is a stall like one that
    received nothing. Here 1000 bytes per attempt, and a read timeout of 1 s."""
    via, layer, message = await _pull_a_layer_that_stalls_after_1000_bytes(
        registry, proxy, unique_repo, unique_seed, tmp_path / "s", retry_wait_s=0.01
    )

    assert via.blob_gets(layer.digest) == 2
    assert f"no data from {via.host} for 1 s" in message, message
    assert "2 times in a row, so not tried again" in message, message
    assert layer.digest not in blob_names(tmp_path / "s")


async def test_a_layer_that_stalls_partway_says_how_many_bytes_had_arrived(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """The registry client's error for a stall names the server and the blob, not how far
    the layer got; the blob stage, which counts the bytes, adds it."""
    via, layer, message = await _pull_a_layer_that_stalls_after_1000_bytes(
        registry, proxy, unique_repo, unique_seed, tmp_path / "s", retries=0
    )

    assert f"no data from {via.host} for 1 s while fetching blob {layer.digest}" in message
    assert f"; 1000 of {layer.size} bytes had arrived" in message, message


async def test_a_quiet_spell_before_a_stall_does_not_make_the_resumed_layer_too_slow(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """The slow-transfer window runs on across a layer's resumes (a server dripping a
    little per attempt is judged on all of it), but the silence that ended an attempt
    (here a stall, the read timeout) is the retry rules' to judge: counted in the window,
    it made the resumed attempt "too slow" at its first read, however fast that came,
    and "too slow" is not retried, so one stall on a healthy link failed the pull."""
    image = images.sample_image(unique_seed, layer_size=256 * 1024)
    registry.push(unique_repo, image, "1")
    via = proxy(registry)
    layer = image.layers[0]
    via.inject(f"*/blobs/{layer.digest}", Reply(stall_after=1000), method="GET", times=1)
    limits = pipeline.Limits(
        read_timeout_s=0.5,
        retry_wait_s=0.01,
        min_transfer_bytes_per_s=1_000_000,
        transfer_window_s=0.2,
    )
    store = Store.open(tmp_path / "s")
    try:
        with trio.fail_after(60):
            result = await pipeline.pull(
                f"{via.host}/{unique_repo}:1",
                store=store,
                options=PullOptions(limits=limits),
            )
    finally:
        store.close()
    assert str(result.layers[0].digest) == str(layer.digest)
    assert via.blob_gets(layer.digest) == 2  # the stalled attempt, then the resume


async def test_a_blob_resent_whole_that_stalls_past_what_is_kept_is_not_a_stall_in_a_row(
    registry: Any,
    proxy: Any,
    fixture_server: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
) -> None:
    """A storage server that ignores Range resends the layer from its start on every
    resume and stalls a little past where the last attempt stopped: over 2 MiB a time,
    of which the pull keeps 1000 bytes (the rest it has). Counting the bytes kept
    against Limits.stall_progress_bytes (1 MiB), the second such attempt was "2 times in
    a row" and the pull gave up, though the server was sending; counting the bytes that
    arrived, the retries go on, and here the fourth request gets the whole layer."""
    image = images.sample_image(
        unique_seed, layer_size=3 * 1024 * 1024, compressions=("none",), with_empty_layer=False
    )
    registry.push(unique_repo, image, "1")
    layer = image.layers[0]
    first = 2 * 1024 * 1024
    stops = [first, first + 1000, first + 2000]
    cdn = fixture_server()
    cdn.route(
        f"/blob/{layer.digest}",
        *(Reply(200, {}, layer.data, stall_after=stop) for stop in stops),
        Reply(200, {}, layer.data),
    )
    via = proxy(registry)
    via.inject(
        f"*/blobs/{layer.digest}",
        Reply(307, {"Location": f"{cdn.url}/blob/{layer.digest}"}),
        times=None,
    )
    limits = pipeline.Limits(read_timeout_s=1.0, retry_wait_s=0.01)
    store = Store.open(tmp_path / "s")
    try:
        with trio.fail_after(60):
            await pipeline.pull(
                f"{via.host}/{unique_repo}:1", store=store, options=options(limits=limits)
            )
    finally:
        store.close()

    asked = [r.headers.get("range") for r in cdn.requests if r.path == f"/blob/{layer.digest}"]
    assert asked == [None, *(f"bytes={stop}-" for stop in stops)]
    assert layer.digest in blob_names(tmp_path / "s")
    assert_store_consistent(tmp_path / "s")


async def test_a_blob_resent_whole_that_stalls_where_it_stalled_before_is_given_up_on(
    registry: Any,
    proxy: Any,
    fixture_server: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
) -> None:
    """A storage server that ignores Range resends the layer from its start on every
    resume and stalls at the same byte every time: each attempt delivers what the pull
    already has, and keeps nothing. Counting the bytes that arrived, each such stall was
    progress and the layer waited out the read timeout on every retry (5 x 60 s by
    default); an attempt that keeps no new byte is a stall in a row, so the pull asks
    three times (the first stall kept bytes) and gives up, saying why. Here the read
    timeout is 0.5 s and Limits.stall_progress_bytes 64 KiB."""
    image = images.sample_image(
        unique_seed, layer_size=256 * 1024, compressions=("none",), with_empty_layer=False
    )
    registry.push(unique_repo, image, "1")
    layer = image.layers[0]
    stop = 128 * 1024
    cdn = fixture_server()
    cdn.route(f"/blob/{layer.digest}", Reply(200, {}, layer.data, stall_after=stop))
    via = proxy(registry)
    via.inject(
        f"*/blobs/{layer.digest}",
        Reply(307, {"Location": f"{cdn.url}/blob/{layer.digest}"}),
        times=None,
    )
    limits = pipeline.Limits(read_timeout_s=0.5, retry_wait_s=0.01, stall_progress_bytes=64 * 1024)

    with trio.fail_after(60):
        message = await pull_fails(
            f"{via.host}/{unique_repo}:1",
            tmp_path / "s",
            pipeline.RegistryUnavailable,
            limits=limits,
        )

    asked = [r.headers.get("range") for r in cdn.requests if r.path == f"/blob/{layer.digest}"]
    assert asked == [None, f"bytes={stop}-", f"bytes={stop}-"]
    assert f"ignored Range: bytes={stop}- (resent the blob from its start)" in message, message
    assert "stalled where it had stalled before" in message, message
    assert "2 times in a row, so not tried again" in message, message
    assert layer.digest in message and layer.digest not in blob_names(tmp_path / "s")


@pytest.mark.parametrize("layer_workers", ["threads", "processes"])
async def test_a_full_disk_names_the_image_and_the_layer(
    registry: Any, unique_repo: str, unique_seed: str, tiny_disk: Path, layer_workers: str
) -> None:
    # RELIABILITY.md: disk full during ingest ends in a clear error that names the image
    # and the digest, with nothing unverified visible. The image was missing before.
    image = images.sample_image(unique_seed, layer_size=4 * 1024 * 1024, compressions=("none",))
    registry.push(unique_repo, image, "1")
    ref = registry.ref(unique_repo, "1")

    message = await pull_fails(
        ref, tiny_disk / "s", pipeline.StoreError, layer_workers=layer_workers
    )

    # Whichever layer wrote next when the disk filled fails: the big layer's data, or
    # the small layer's commit (SQLite's "disk I/O error", recognised as a full disk).
    assert ref in message and any(layer.digest in message for layer in image.layers)
    assert "free some disk space" in message
    assert image.layers[0].digest not in blob_names(tiny_disk / "s")


async def test_truncated_gzip_stream(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    layer = images.truncated_gzip_layer(unique_seed)
    registry.push(unique_repo, images.make_image([layer]), "1")

    await pull_fails(registry.ref(unique_repo, "1"), tmp_path / "s", pipeline.Truncated)

    assert layer.digest not in blob_names(tmp_path / "s")


async def test_wrong_media_type(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    layer = images.wrong_media_type_layer(unique_seed)  # zstd bytes declared gzip
    registry.push(unique_repo, images.make_image([layer]), "1")

    message = await pull_fails(
        registry.ref(unique_repo, "1"), tmp_path / "s", pipeline.DecompressError
    )

    assert "gzip" in message and "zstd" in message


async def test_unknown_image(registry: Any, tmp_path: Path) -> None:
    await pull_fails(registry.ref("no/such-repository", "1"), tmp_path / "s", pipeline.NotFound)


async def test_malformed_reference(tmp_path: Path) -> None:
    with pytest.raises(pipeline.InvalidReference) as caught:
        await pipeline.pull("127.0.0.1:5000/UPPER/case", store=Store.open(tmp_path / "s"))
    assert "UPPER/case" in str(caught.value)


async def test_manifest_over_4_mib_is_refused(
    fixture_server: Any, unique_seed: str, tmp_path: Path
) -> None:
    image = images.sample_image(unique_seed, layer_size=16 * 1024)
    server = fixture_server()
    server.serve_blob("big/manifest", image.config)
    huge = images.oversized_manifest(image)
    server.route(
        "/v2/big/manifest/manifests/1",
        Reply(200, {"Content-Type": huge.media_type}, huge.data),
    )

    message = await pull_fails(
        f"{server.host}/big/manifest:1", tmp_path / "s", pipeline.ManifestError
    )

    assert "4 MiB" in message or "4194304" in message


def set_field(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """What sets the field at ``path`` of a JSON document to ``value`` (``config/Env``,
    ``layers/0/data``: a number indexes an array)."""

    def edit(doc: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
        target: Any = doc
        for key in parents:
            target = target[key]
        target[last] = value

    return edit


def assert_nothing_recorded(store_path: Path, image: images.Image) -> None:
    """No record of ``image``: no listing, no index.json entry, none of its blobs."""
    assert Store.open(store_path).list_images() == []
    index = store_path / "index.json"
    assert not index.exists() or json.loads(index.read_text())["manifests"] == []
    blob_dir = store_path / "blobs" / "sha256"
    stored = blob_names(store_path) if blob_dir.exists() else set()
    assert stored.isdisjoint({image.digest, image.config.digest, *(x.digest for x in image.layers)})


# Fields of the wrong JSON type that the registry stores as pushed (a config is a blob it
# never reads; a manifest field its Go types lack is ignored): (manifest kind, document,
# field, value, what the error says). Each was pulled and stored, "architecture": 5 as
# the platform asked for.
ILL_TYPED_FIELDS = [
    ("oci", "config", "architecture", 5, "the image config's architecture is the number 5"),
    ("oci", "config", "rootfs/diff_ids", "sha256:" + "0" * 64, "config's rootfs.diff_ids is"),
    ("oci", "config", "config/Env", "PATH=/bin", 'config\'s config.Env is the string "PATH=/bin"'),
    ("docker", "config", "config/Labels", {"a": 1}, 'config.Labels["a"] is the number 1'),
    ("oci", "config", "history/0/created", "yesterday", 'history[0].created is the string "y'),
    ("oci", "manifest", "subject", 5, "the manifest's subject is the number 5, not a descriptor"),
    ("oci", "manifest", "layers/0/data", 5, "the manifest's layers[0].data is the number 5"),
    ("docker", "manifest", "annotations", {"a": 1}, 'the manifest\'s annotations["a"] is the'),
]


@pytest.mark.parametrize(
    ("kind", "document", "path", "value", "text"),
    ILL_TYPED_FIELDS,
    ids=[f"{kind}-{document}-{path}" for kind, document, path, *_ in ILL_TYPED_FIELDS],
)
async def test_an_ill_typed_field_fails_the_pull_naming_it_and_nothing_is_recorded(
    registry: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    kind: images.Kind,
    document: str,
    path: str,
    value: Any,
    text: str,
) -> None:
    image = images.sample_image(unique_seed, kind=kind, compressions=("gzip",), layer_size=8192)
    bad = images.edited_image(image, **{document: set_field(path, value)})
    registry.push(unique_repo, bad, "1")

    message = await pull_fails(
        registry.ref(unique_repo, "1"), tmp_path / "s", pipeline.ManifestError
    )

    assert text in message and "as the OCI image spec requires" in message
    assert_nothing_recorded(tmp_path / "s", bad)


@pytest.mark.parametrize(
    ("path", "value", "text"),
    [
        ("layers/0/size", "12", "layer 0 has an invalid size '12'"),
        ("layers/0/size", True, "layer 0 has an invalid size True"),
        ("layers/0/urls", "https://x", 'the manifest\'s layers[0].urls is the string "https://x"'),
    ],
)
async def test_an_ill_typed_field_the_registry_refuses_fails_the_pull_too(
    fixture_server: Any, unique_seed: str, tmp_path: Path, path: str, value: Any, text: str
) -> None:
    # The registry refuses these on push; another registry, or a proxy, may serve them.
    image = images.sample_image(unique_seed, compressions=("gzip",), layer_size=8192)
    bad = images.edited_image(image, manifest=set_field(path, value))
    server = fixture_server()
    server.serve_image("bad/types", bad, "1")

    message = await pull_fails(f"{server.host}/bad/types:1", tmp_path / "s", pipeline.ManifestError)

    assert text in message
    assert_nothing_recorded(tmp_path / "s", bad)


# --- images as real tools push them ---------------------------------------------------


async def test_a_docker_built_image_with_every_field_docker_writes_is_pulled(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """The type checks of ``stages/_schema.py`` take a config as docker writes it: its own
    fields (container_config, docker_version, Healthcheck), Go's nulls, ports and volumes
    as objects of empty objects, nanosecond times, history entries with no date."""
    image = images.docker_built_image(unique_seed)
    registry.push(unique_repo, image, "1")
    ref = registry.ref(unique_repo, "1")
    store = Store.open(tmp_path / "store")

    result = await pipeline.pull(ref, store=store, options=options())

    assert str(result.image_id) == image.image_id
    assert [str(layer.diff_id) for layer in result.layers] == list(image.diff_ids)
    stored = store.path / "blobs/sha256" / image.image_id[7:]
    assert stored.read_bytes() == image.config.data  # kept as the registry served it
    assert_store_consistent(store.path)


@pytest.mark.parametrize("platform", [AMD64, ARM64], ids=str)
async def test_a_buildx_index_with_attestation_manifests_is_pulled(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path, platform: Platform
) -> None:
    index = images.buildx_index(unique_seed)
    registry.push(unique_repo, index, "1")
    ref = registry.ref(unique_repo, "1")
    want = index.image_for(str(platform))
    store = Store.open(tmp_path / "store")

    result = await pipeline.pull(ref, store=store, options=options(platform=platform))

    assert str(result.resolved_digest) == index.digest
    assert str(result.manifest_digest) == want.digest
    assert str(result.image_id) == want.image_id
    attestations = {image.digest for image in index.images if image.platform == "unknown/unknown"}
    assert len(attestations) == 2 and not attestations & blob_names(store.path)
    assert_store_consistent(store.path)


async def test_a_docker_image_of_no_layers_is_pulled(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """moby writes ``rootfs.diff_ids`` omitempty: a config of no layers has none. It was
    refused as having "no rootfs.diff_ids list"."""
    image = images.docker_image_without_layers(unique_seed)
    assert "diff_ids" not in image.config.json()["rootfs"]
    registry.push(unique_repo, image, "1")
    ref = registry.ref(unique_repo, "1")
    store = Store.open(tmp_path / "store")

    result = await pipeline.pull(ref, store=store, options=options())

    assert str(result.image_id) == image.image_id and result.layers == ()
    [record] = store.list_images()
    assert record.ref == ref
    assert_store_consistent(store.path)


async def test_an_image_with_null_labels_annotations_and_env_entries_is_pulled(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """Go's encoding/json decodes null inside a map or an array as the zero value, so the
    registry, docker and containerd take ``"Labels": {"x": null}``, ``"Env": [null]`` and
    a layer's ``"annotations": {"a": null}``. The pull refused each as "null, not a
    string"."""
    image = images.image_with_null_members(unique_seed)
    registry.push(unique_repo, image, "1")  # the registry takes it
    store = Store.open(tmp_path / "store")

    result = await pipeline.pull(registry.ref(unique_repo, "1"), store=store, options=options())

    assert str(result.image_id) == image.image_id
    assert str(result.manifest_digest) == image.digest
    stored = store.path / "blobs/sha256" / image.image_id[7:]
    assert stored.read_bytes() == image.config.data  # kept as the registry served it
    assert_store_consistent(store.path)


async def test_a_stored_layer_is_skipped_only_if_it_is_the_layer_the_image_describes(
    fixture_server: Any, unique_seed: str, tmp_path: Path
) -> None:
    # An image lying about a layer (its config's diffID, its manifest's size or
    # compression) was refused into an empty store, but recorded into one that already
    # held the layer: the "exists" path compared nothing.
    layers = [images.make_layer(f"{unique_seed}:0"), images.make_layer(f"{unique_seed}:1")]
    good = images.make_image(layers)
    wrong_diff_id = images.make_image(
        layers, diff_ids=[layers[0].diff_id, images.digest_of(b"not the layer")]
    )

    def lying(change: Callable[[dict[str, Any]], None]) -> images.Blob:
        body = json.loads(good.manifest.data)
        change(body["layers"][1])
        return images.Blob(good.manifest.media_type, json.dumps(body).encode())

    server = fixture_server()
    server.serve_image("t/good", good, "1")
    server.serve_image("t/diffid", wrong_diff_id, "1")
    for name, change in [
        ("size", lambda d: d.update(size=d["size"] + 1000)),
        ("type", lambda d: d.update(mediaType=pipeline.MediaType.OCI_LAYER_ZSTD)),
    ]:
        for blob in good.blobs:
            server.serve_blob(f"t/{name}", blob)
        server.serve_manifest(f"t/{name}", "1", lying(change))
    store = Store.open(tmp_path / "s")
    await pipeline.pull(f"{server.host}/t/good:1", store=store, options=options())
    for name, error, words in [
        ("diffid", pipeline.DiffIDMismatch, "verified when the store got it"),
        ("size", pipeline.SizeMismatch, "the store holds it verified at"),
        ("type", pipeline.DecompressError, "the store holds it verified as"),
    ]:
        message = await pull_fails(f"{server.host}/t/{name}:1", tmp_path / "s", error)
        assert words in message and str(layers[1].digest) in message
    assert [record.ref for record in store.list_images()] == [f"{server.host}/t/good:1"]


async def test_a_layer_is_downloaded_once_even_when_a_lookup_answers_late(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    # The store was asked before the layer's slot was taken: a pull whose "not there"
    # arrived after another pull had committed the layer and let go downloaded it again.
    registry.push(unique_repo, images.make_image([images.make_layer(unique_seed)]), "1")
    ref = registry.ref(unique_repo, "1")

    class LateAnswers(Store):
        lookups = 0

        def committed_layer(self, digest: Any, **kwargs: Any) -> Any:
            answer = super().committed_layer(digest, **kwargs)
            LateAnswers.lookups += 1
            if LateAnswers.lookups == 2:  # the second pull's first lookup
                time.sleep(0.5)  # read already, delivered late (a loaded machine)
            return answer

    Store.open(tmp_path / "s")
    store = LateAnswers(tmp_path / "s")
    results: list[pipeline.PullResult] = []

    async def pull_after(delay: float) -> None:
        await trio.sleep(delay)
        results.append(await pipeline.pull(ref, store=store, options=options()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pull_after, 0)
        nursery.start_soon(pull_after, 0.02)
    statuses = sorted(layer.status for result in results for layer in result.layers)
    assert statuses in (["downloaded", "exists"], ["downloaded", "shared"])
    assert LateAnswers.lookups == 2  # the late one was asked


async def test_a_pulls_password_is_redacted_from_the_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A library host using configure_logging: a registry's error quoting the password
    # back would have reached its debug log (the CLI already registered it).
    from pipeline import _logging

    monkeypatch.setattr(_logging._Applied, "settings", _logging.LogSettings())
    creds = pipeline.RegistryOptions(credentials=pipeline.Credentials("ci", "pw-7Kq2"))
    with pytest.raises(pipeline.RegistryUnavailable):
        await pipeline.pull(
            "127.0.0.1:1/a/b:1", store=Store.open(tmp_path / "s"), options=options(registry=creds)
        )
    assert "pw-7Kq2" in _logging.current_settings().secrets


async def test_the_passwords_cut_from_the_logs_are_bounded_in_a_long_lived_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library host pulling with many credentials: every pull's password (and its Basic
    credentials) stayed in the list each log line is searched for, for ever, a memory
    and per-line leak. The last RECENT_SECRETS_KEPT of them are kept once their pull has
    ended: the latest pull's are still cut, the first ones' are not searched for."""
    from pipeline import _logging

    monkeypatch.setattr(_logging._Applied, "settings", _logging.LogSettings())
    store = Store.open(tmp_path / "s")
    passwords = [f"pw-{n}-9xQ" for n in range(_logging.RECENT_SECRETS_KEPT + 5)]
    for password in passwords:
        creds = pipeline.RegistryOptions(credentials=pipeline.Credentials("ci", password))
        with pytest.raises(pipeline.RegistryUnavailable):
            await pipeline.pull("127.0.0.1:1/a/b:1", store=store, options=options(registry=creds))

    secrets = _logging.current_settings().secrets
    assert len(secrets) == _logging.RECENT_SECRETS_KEPT, len(secrets)
    assert passwords[-1] in secrets
    assert passwords[0] not in secrets
    assert not _logging._Applied.holders  # every pull has let go of its own


async def test_a_running_pulls_password_stays_cut_however_many_are_added(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound never drops the secrets of a pull still running: while it runs (here,
    at its first progress event) many other passwords are added, and a line quoting its
    own is still cut."""
    import structlog

    from pipeline import _logging

    monkeypatch.setattr(_logging._Applied, "settings", _logging.LogSettings())
    monkeypatch.setattr(_logging._Applied, "stream", None)
    logs = io.StringIO()
    pipeline.configure_logging(level="info", json=True, stream=logs)
    creds = pipeline.Credentials("ci", "pw-running-4Tz")
    seen: list[tuple[str, ...]] = []

    def progress(event: pipeline.ProgressEvent) -> None:
        if not seen:
            for n in range(3 * _logging.RECENT_SECRETS_KEPT):
                _logging.add_secret(f"other-{n}-pw")
            structlog.get_logger().info("denied", detail="password pw-running-4Tz refused")
            seen.append(_logging.current_settings().secrets)

    try:
        with pytest.raises(pipeline.RegistryUnavailable):
            await pipeline.pull(
                "127.0.0.1:1/a/b:1",
                store=Store.open(tmp_path / "s"),
                options=options(
                    registry=pipeline.RegistryOptions(credentials=creds), progress=progress
                ),
            )
    finally:
        structlog.reset_defaults()

    [during] = seen
    assert "pw-running-4Tz" in during
    [denied] = [r for r in map(json.loads, logs.getvalue().splitlines()) if r["event"] == "denied"]
    assert denied["detail"] == "password [redacted] refused"
    # Ended, it is the latest of the recent ones: still cut, for a host logging the error.
    after = _logging.current_settings().secrets
    assert "pw-running-4Tz" in after and len(after) <= _logging.RECENT_SECRETS_KEPT


async def test_a_download_budget_of_no_tokens_is_refused(tmp_path: Path) -> None:
    # trio takes CapacityLimiter(0); every layer waited on it for ever.
    with pytest.raises(pipeline.UsageError, match="at least 1 token"):
        await pipeline.pull(
            "127.0.0.1:5000/a/b:1", store=Store.open(tmp_path / "s"),
            downloads=trio.CapacityLimiter(0),
        )  # fmt: skip


async def test_index_without_this_platform_lists_what_it_has(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    registry.push(unique_repo, images.sample_index(unique_seed), "multi")

    message = await pull_fails(
        registry.ref(unique_repo, "multi"),
        tmp_path / "s",
        pipeline.PlatformNotFound,
        platform=Platform("linux", "s390x"),
    )

    assert "linux/amd64" in message and "linux/arm64" in message


async def test_arm_v7_takes_the_closest_older_arm_version_an_index_has(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    platforms = ("linux/amd64", "linux/arm/v5", "linux/arm/v6")
    index = images.sample_index(unique_seed, platforms=platforms, layer_size=32 * 1024)
    registry.push(unique_repo, index, "multi")
    ref = registry.ref(unique_repo, "multi")
    want = index.image_for("linux/arm/v6")
    store = Store.open(tmp_path / "store")

    result = await pipeline.pull(
        ref, store=store, options=options(platform=Platform("linux", "arm", "v7"))
    )

    assert str(result.manifest_digest) == want.digest
    assert result.platform == Platform("linux", "arm", "v6")
    assert index_entries(store.path)[ref]["platform"] == want.platform_dict
    assert_store_consistent(store.path)
    message = await pull_fails(
        ref, tmp_path / "s2", pipeline.PlatformNotFound, platform=Platform("linux", "arm64")
    )
    assert "it has: linux/amd64, linux/arm/v5, linux/arm/v6. Choose" in message


async def test_plain_amd64_takes_no_higher_x86_64_level_an_index_has(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    # `--platform linux/amd64` pulled an index's only amd64/v3 image, which an x86-64-v1
    # or v2 CPU cannot run; containerd refuses it.
    platforms = ("linux/amd64/v3", "linux/arm64/v8")
    index = images.sample_index(unique_seed, platforms=platforms, layer_size=8192)
    registry.push(unique_repo, index, "multi")
    ref = registry.ref(unique_repo, "multi")

    message = await pull_fails(ref, tmp_path / "s", pipeline.PlatformNotFound, platform=AMD64)

    assert message.startswith(
        "the image has no manifest for linux/amd64 (that is linux/amd64/v1); it has:"
        " linux/amd64/v3, linux/arm64/v8. Choose one with --platform"
    )
    assert not blob_names(tmp_path / "s")
    store = Store.open(tmp_path / "store")
    v4 = Platform("linux", "amd64", "v4")
    result = await pipeline.pull(ref, store=store, options=options(platform=v4))
    assert str(result.manifest_digest) == index.image_for("linux/amd64/v3").digest
    assert result.platform == Platform("linux", "amd64", "v3")
    assert_store_consistent(store.path)


async def test_an_image_naming_no_platform_is_stored_without_the_level_it_was_pulled_for(
    registry: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its config names no OS or architecture: it was stored as linux/amd64/v4, the level
    # it was pulled for (this machine's since f137044), in the database and index.json.
    layer = images.make_layer(unique_seed, size=4096, compression="gzip")
    config = images.make_config([layer], extra={"os": "", "architecture": ""})
    image = images.make_image([layer], config=config)
    registry.push(unique_repo, image, "nameless")
    ref = registry.ref(unique_repo, "nameless")
    store = Store.open(tmp_path / "store")

    v4 = Platform("linux", "amd64", "v4")
    result = await pipeline.pull(ref, store=store, options=options(platform=v4))

    assert result.platform == AMD64
    assert index_entries(store.path)[ref]["platform"] == {"os": "linux", "architecture": "amd64"}
    assert [record.platform for record in store.list_images()] == [AMD64]
    assert_store_consistent(store.path)
    # Pulled for this machine on an x86-64-v1 CPU (Platform.host() says linux/amd64/v1):
    # it was stored as linux/amd64/v1 in index.json, the one level kept.
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu cx8 cmov mmx fxsr sse sse2 lm\n")
    v1_machine = _types._host_platform("Linux", "x86_64", cpuinfo)
    assert v1_machine == Platform("linux", "amd64", "v1")
    monkeypatch.setattr(_types, "_this_host", lambda: v1_machine)
    on_v1 = Store.open(tmp_path / "on_v1")

    result = await pipeline.pull(ref, store=on_v1, options=PullOptions())

    assert result.platform == AMD64
    assert index_entries(on_v1.path)[ref]["platform"] == {"os": "linux", "architecture": "amd64"}
    assert_store_consistent(on_v1.path)


async def test_an_entry_whose_config_names_a_higher_level_is_stored_under_that_level(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    # The index lists it as linux/amd64, its config says linux/amd64/v2: pulled for v3,
    # it was stored as linux/amd64, so a tool choosing from index.json by platform on a
    # v1 machine would take it.
    layer = images.make_layer(unique_seed, size=4096, compression="gzip")
    config = images.make_config([layer], platform="linux/amd64/v2")
    image = images.make_image([layer], platform="linux/amd64", config=config)
    registry.push(unique_repo, images.make_index([image]), "v2")
    ref = registry.ref(unique_repo, "v2")
    store = Store.open(tmp_path / "store")

    v3 = Platform("linux", "amd64", "v3")
    result = await pipeline.pull(ref, store=store, options=options(platform=v3))

    v2 = Platform("linux", "amd64", "v2")
    assert str(result.manifest_digest) == image.digest
    assert result.platform == v2
    assert index_entries(store.path)[ref]["platform"] == v2.to_json()
    assert [record.platform for record in store.list_images()] == [v2]
    # What `inspect` says of it: recorded for v2; the index and config as served.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    argv = [sys.executable, "-m", "pipeline._cli", "inspect", ref, "--store", str(store.path)]
    done = await trio.run_process(argv, capture_stdout=True, env=env, cwd=REPO_ROOT)
    inspected = json.loads(done.stdout)
    assert inspected["record"]["platform"] == "linux/amd64/v2"
    assert inspected["index"]["manifests"][0]["platform"] == AMD64.to_json()
    assert inspected["config"]["variant"] == "v2"
    assert_store_consistent(store.path)


async def test_an_index_whose_entries_name_no_platform_gives_the_one_whose_config_fits(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    # OCI makes an entry's platform optional; only the first entry's config was read, so
    # this index said "no manifest for linux/amd64" on amd64.
    arm64, amd64 = (
        images.sample_image(unique_seed, platform=p, compressions=("gzip",), layer_size=8192)
        for p in ("linux/arm64/v8", "linux/amd64")
    )
    registry.push(unique_repo, images.make_index([arm64, amd64], with_platforms=False), "multi")
    ref = registry.ref(unique_repo, "multi")
    store = Store.open(tmp_path / "store")

    result = await pipeline.pull(ref, store=store, options=options(platform=AMD64))

    assert str(result.manifest_digest) == amd64.digest
    assert result.platform == AMD64
    assert index_entries(store.path)[ref]["platform"] == {"os": "linux", "architecture": "amd64"}
    assert arm64.layers[0].digest not in blob_names(store.path)
    assert_store_consistent(store.path)


# --- standard OCI tools read the store -----------------------------------------------


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
async def test_skopeo_reads_a_pulled_image(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    image = images.sample_image(unique_seed, kind="docker")
    registry.push(unique_repo, image, "1")
    ref = registry.ref(unique_repo, "1")
    store = Store.open(tmp_path / "store")
    await pipeline.pull(ref, store=store, options=options())

    copied = await trio.run_process(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            f"oci:{store.path}:{ref}",
            f"dir:{tmp_path / 'out'}",
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )

    assert copied.returncode == 0, copied.stderr
    for layer in image.layers:
        assert (tmp_path / "out" / layer.digest[7:]).read_bytes() == layer.data


@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed")
async def test_umoci_unpacks_a_pulled_image(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    files = {"etc/hello.txt": b"hello from a layer\n", "bin/tool": os.urandom(4096)}
    layer = images.make_layer(unique_seed, files=files)
    registry.push(unique_repo, images.make_image([layer]), "1")
    ref = registry.ref(unique_repo, "1")
    store = Store.open(tmp_path / "store")
    await pipeline.pull(ref, store=store, options=options())

    unpacked = await trio.run_process(
        [
            "umoci",
            "unpack",
            "--rootless",
            "--image",
            f"{store.path}:{ref}",
            str(tmp_path / "bundle"),
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )

    assert unpacked.returncode == 0, unpacked.stderr
    rootfs = tmp_path / "bundle" / "rootfs"
    assert (rootfs / "etc/hello.txt").read_bytes() == files["etc/hello.txt"]
    assert (rootfs / "bin/tool").read_bytes() == files["bin/tool"]


DOCKER_TYPED = pytest.mark.parametrize(
    ("docker_config", "docker_layers"),
    [(True, True), (True, False), (False, True)],
    ids=["docker-config-and-layers", "docker-config", "docker-layers"],
)


@DOCKER_TYPED
async def test_an_oci_manifest_with_docker_media_types_is_listed_converted(
    registry: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    docker_config: bool,
    docker_layers: bool,
) -> None:
    """Some tools push OCI manifests naming Docker media types; the store lists them
    through a converted OCI manifest (OCI readers refused the registry's), keeps the
    registry's bytes, and a second pull finds the image and its layers there."""
    image = images.docker_typed_oci_image(
        unique_seed, docker_config=docker_config, docker_layers=docker_layers
    )
    registry.push(unique_repo, image, "1")
    ref = registry.ref(unique_repo, "1")
    store = Store.open(tmp_path / "store")

    result = await pipeline.pull(ref, store=store, options=options())

    assert str(result.manifest_digest) == image.digest
    entry = index_entries(store.path)[ref]
    assert entry["digest"] != image.digest
    assert entry["annotations"][ORIGINAL_DIGEST] == image.digest
    converted = json.loads((store.path / "blobs/sha256" / entry["digest"][7:]).read_bytes())
    assert converted["mediaType"] == pipeline.MediaType.OCI_MANIFEST
    assert converted["config"] == {
        "mediaType": pipeline.MediaType.OCI_CONFIG,
        "digest": image.image_id,
        "size": image.config.size,
    }
    assert [(x["mediaType"], x["digest"]) for x in converted["layers"]] == [
        (pipeline.MediaType.OCI_LAYER_GZIP, image.layers[0].digest),
        (pipeline.MediaType.OCI_LAYER, image.layers[1].digest),
    ]
    assert converted["annotations"][ORIGINAL_DIGEST] == image.digest
    assert (store.path / "blobs/sha256" / image.digest[7:]).read_bytes() == image.manifest.data
    [record] = store.list_images()
    assert record.media_type == pipeline.MediaType.OCI_MANIFEST
    assert str(record.oci_manifest_digest) == entry["digest"]

    again = await pipeline.pull(ref, store=Store.open(store.path), options=options())

    assert {layer.status for layer in again.layers} == {"exists"}
    assert again.up_to_date
    assert index_entries(store.path)[ref] == entry  # the same converted bytes
    assert_store_consistent(store.path)


@DOCKER_TYPED
@pytest.mark.parametrize("tool", ["skopeo", "umoci"])
async def test_oci_tools_read_a_pulled_oci_manifest_with_docker_media_types(
    registry: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    tool: str,
    docker_config: bool,
    docker_layers: bool,
) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    image = images.docker_typed_oci_image(
        unique_seed, docker_config=docker_config, docker_layers=docker_layers
    )
    registry.push(unique_repo, image, "1")
    ref = registry.ref(unique_repo, "1")
    store = Store.open(tmp_path / "store")
    await pipeline.pull(ref, store=store, options=options())
    out = tmp_path / "bundle"
    if tool == "skopeo":  # inspect reads the config, as a copy to dir: does not
        argv = ["skopeo", "inspect", f"oci:{store.path}:{ref}"]
    else:
        argv = ["umoci", "unpack", "--rootless", "--image", f"{store.path}:{ref}", str(out)]

    done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)

    assert done.returncode == 0, done.stderr
    if tool == "skopeo":
        inspected = json.loads(done.stdout)
        assert inspected["Layers"] == [layer.digest for layer in image.layers]
        assert (inspected["Os"], inspected["Architecture"]) == ("linux", "amd64")
    else:
        names = set()
        for layer in image.layers:
            with tarfile.open(fileobj=io.BytesIO(layer.tar)) as tar:
                names |= set(tar.getnames())
        assert names and all((out / "rootfs" / name).exists() for name in names)


# --- layer workers in processes ------------------------------------------------------


async def test_layers_in_worker_processes(
    basic_registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    image = images.sample_image(unique_seed, layer_size=1024 * 1024)
    basic_registry.push(unique_repo, image, "1")
    user, password = basic_registry.credentials
    creds = pipeline.RegistryOptions(credentials=pipeline.Credentials(user, password))
    events: list[pipeline.ProgressEvent] = []
    store = Store.open(tmp_path / "store")

    result = await pipeline.pull(
        basic_registry.ref(unique_repo, "1"),
        store=store,
        options=options(layer_workers="processes", registry=creds, progress=events.append),
    )

    assert str(result.image_id) == image.image_id
    assert [str(layer.diff_id) for layer in result.layers] == list(image.diff_ids)
    assert all(layer.timings.inflate_s > 0 for layer in result.layers)
    kinds = [e.event for e in events]
    assert kinds.count("layer-complete") == len(image.layers)
    for layer in image.layers:  # as in threads mode: downloading…, verifying, complete
        mine = [e.event for e in events if e.digest == layer.digest]
        assert mine[-2:] == ["layer-verifying", "layer-complete"], mine
    assert_store_consistent(store.path)


async def test_worker_processes_use_tokens_and_the_ca_file_like_the_parent(
    token_registry: Any, tls_registry: Any, unique_seed: str, tmp_path: Path
) -> None:
    """Each worker authenticates and verifies TLS itself, from the RegistryOptions it is
    handed: a private repository behind bearer tokens, and a registry whose certificate
    only the CA file vouches for."""
    private = images.sample_image(f"{unique_seed}:private")
    token_registry.push("team/private-app", private, "w")
    user, password = token_registry.credentials
    creds = pipeline.RegistryOptions(credentials=pipeline.Credentials(user, password))
    tls_image = images.sample_image(f"{unique_seed}:tls", layer_size=64 * 1024)
    tls_registry.push("team/tls-app", tls_image, "w")
    trusted = pipeline.RegistryOptions(ca_file=Path(tls_registry.ca_pem))
    store = Store.open(tmp_path / "store")

    for ref, registry_options, image in (
        (token_registry.ref("team/private-app", "w"), creds, private),
        (tls_registry.ref("team/tls-app", "w"), trusted, tls_image),
    ):
        result = await pipeline.pull(
            ref,
            store=store,
            options=options(layer_workers="processes", registry=registry_options),
        )
        assert str(result.image_id) == image.image_id
        assert "downloaded" in {layer.status for layer in result.layers}
    assert_store_consistent(store.path)


async def test_worker_processes_log_to_the_stream_the_pull_logs_to(
    registry: Any,
    proxy: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host logging to a stream of its own (the CLI on a terminal: above its progress
    block): a worker process wrote to its stderr instead, under the block, and the next
    redraw wiped the line out. Its lines now reach that stream, rendered as the host's."""
    import structlog

    from pipeline import _logging

    monkeypatch.setattr(_logging._Applied, "settings", _logging.LogSettings())
    monkeypatch.setattr(_logging._Applied, "stream", None)
    image = images.sample_image(unique_seed)
    registry.push(unique_repo, image, "1")
    via = proxy(registry)
    layer = image.layers[0].digest
    via.inject(f"*/blobs/{layer}", Reply(503), method="GET")  # only a worker fetches it
    logs = io.StringIO()
    pipeline.configure_logging(level="warning", json=True, stream=logs)
    try:
        await pipeline.pull(
            f"{via.host}/{unique_repo}:1",
            store=Store.open(tmp_path / "s"),
            options=options(layer_workers="processes"),
        )
    finally:
        structlog.reset_defaults()

    logged = [json.loads(line) for line in logs.getvalue().splitlines()]
    [retry] = [x for x in logged if x["event"] == "retrying"]
    assert (retry["level"], retry["digest"], retry["retry"]) == ("warning", layer, 1)
    assert {x["level"] for x in logged} == {"warning"}


def test_a_worker_whose_relay_is_gone_logs_to_its_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The pulling process killed outright: its socket is gone, the worker's line is not.
    from pipeline._workers import _RelayedLines

    lines = _RelayedLines(str(tmp_path / "gone"), tty=False)
    assert lines.write("a line\n") == len("a line\n")
    assert capsys.readouterr().err == "a line\n"


async def test_a_worker_process_error_names_the_layer(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    image = images.sample_image(unique_seed)
    registry.push(unique_repo, image, "1")
    images.corrupt_blob(registry.storage_dir, image.layers[1].digest)

    message = await pull_fails(
        registry.ref(unique_repo, "1"),
        tmp_path / "s",
        pipeline.DigestMismatch,
        layer_workers="processes",
    )

    assert image.layers[1].digest in message


@pytest.mark.parametrize("inflater", ["isal", "zlib-ng", "zlib"])
async def test_a_worker_process_hands_back_a_corrupt_gzip_layer_whatever_inflates_it(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path, inflater: str
) -> None:
    """A gzip layer whose CRC is wrong (its digest right: the registry stores it as it
    is). The worker's error comes back pickled with its causes, and pickle cannot name
    the error classes of ISA-L and zlib-ng: that was "internal error: PicklingError"."""
    if inflater not in _codec.available_inflaters():
        pytest.skip(f"{inflater} is not installed")
    good = images.make_layer(unique_seed, size=64 * 1024)
    data = bytearray(good.data)
    data[-8] ^= 0x01  # the CRC32, the 4 bytes before ISIZE
    bad = images.Layer("gzip", bytes(data), good.tar)
    registry.push(unique_repo, images.make_image([bad]), "1")

    message = await pull_fails(
        registry.ref(unique_repo, "1"),
        tmp_path / "s",
        pipeline.DecompressError,
        layer_workers="processes",
        limits=pipeline.Limits(gzip_inflater=inflater),
    )

    assert f"layer {bad.digest} ({images.MediaTypes.OCI_LAYER_GZIP}) cannot be" in message
    assert bad.digest not in blob_names(tmp_path / "s")


@pytest.mark.parametrize("layer_workers", ["threads", "processes"])
async def test_a_connection_cut_mid_layer_is_one_picklable_error(
    registry: Any,
    proxy: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    layer_workers: str,
) -> None:
    """A layer whose body stops halfway, with retries off: the pull raises the Truncated
    naming it and how far it got, in both modes. A worker process hands its error back by
    pickle, with the cause chain (tblib, as trio-parallel does); that once recursed until
    RecursionError, because the error's context was the group that held it."""
    from tblib import pickling_support

    image = images.sample_image(unique_seed, layer_size=1024 * 1024)
    registry.push(unique_repo, image, "1")
    cut = image.layers[1]
    via = proxy(registry)
    half = cut.data[: len(cut.data) // 2]
    via.inject(f"*/blobs/{cut.digest}", Reply(200, {"Content-Length": str(cut.size)}, half))
    store = Store.open(tmp_path / "s")

    with pytest.raises(pipeline.Truncated) as caught:
        await pipeline.pull(
            f"{via.host}/{unique_repo}:1",
            store=store,
            options=options(layer_workers=layer_workers, limits=pipeline.Limits(retries=0)),
        )

    assert (
        f"the download of layer {cut.digest} from the registry broke off after"
        f" {len(half)} of {cut.size} bytes"
    ) in str(caught.value)
    assert_store_consistent(tmp_path / "s")
    pickling_support.install(caught.value)
    again = pickle.loads(pickle.dumps(caught.value))
    assert type(again) is pipeline.Truncated
    assert (again.ref, again.digest) == (caught.value.ref, caught.value.digest)


@pytest.mark.parametrize("layer_workers", ["threads", "processes"])
async def test_a_connection_cut_mid_layer_resumes_with_a_range_request(
    registry: Any,
    proxy: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    layer_workers: str,
) -> None:
    """RELIABILITY.md: a reset mid-blob resumes with ``Range: bytes=N-``, the registry's
    206 from byte N is checked, and the whole digest is verified. The layer's bytes are
    fetched once: the first half, then the rest."""
    image = images.sample_image(unique_seed, layer_size=1024 * 1024)
    registry.push(unique_repo, image, "1")
    cut = image.layers[1]
    via = proxy(registry)
    half = cut.data[: len(cut.data) // 2]
    via.inject(f"*/blobs/{cut.digest}", Reply(200, {"Content-Length": str(cut.size)}, half))
    store = Store.open(tmp_path / "s")
    events: list[pipeline.ProgressEvent] = []
    fast = pipeline.Limits(retry_wait_s=0.01)

    with trio.fail_after(60):
        result = await pipeline.pull(
            f"{via.host}/{unique_repo}:1",
            store=store,
            options=options(layer_workers=layer_workers, limits=fast, progress=events.append),
        )

    blob_requests = [r for r in via.requests if r.path.endswith(f"/blobs/{cut.digest}")]
    assert [r.headers.get("range") for r in blob_requests] == [None, f"bytes={len(half)}-"]
    assert cut.digest in blob_names(tmp_path / "s")
    assert [str(layer.digest) for layer in result.layers] == [x.digest for x in image.layers]
    # A worker process relays its retry as threads mode sends it: once it sent none.
    retried = [e for e in events if e.event == "layer-retrying"]
    assert retried == [
        pipeline.ProgressEvent("layer-retrying", result.reference, cut.digest, len(half), cut.size)
    ]
    assert_store_consistent(tmp_path / "s")


async def test_a_layer_read_past_h11_is_cut_resumed_and_verified(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """A layer over ``DIRECT_BODY_MIN_BYTES`` is read past h11 (stages/_http.py), on both
    of its requests here: the first, cut after 4 MiB, ends as a short body does in h11's
    hands, the second asks for the rest with a Range request, and the bytes from both
    prove the digest."""
    image = images.sample_image(
        unique_seed, layer_size=20 * 1024 * 1024, compressions=("none",), with_empty_layer=False
    )
    registry.push(unique_repo, image, "1")
    (layer,) = image.layers
    assert layer.size - 4 * 1024 * 1024 >= DIRECT_BODY_MIN_BYTES
    via = proxy(registry)
    first = layer.data[: 4 * 1024 * 1024]
    via.inject(f"*/blobs/{layer.digest}", Reply(200, {"Content-Length": str(layer.size)}, first))

    with trio.fail_after(60):
        await pull_retrying_quickly(f"{via.host}/{unique_repo}:1", tmp_path / "s")

    blob_requests = [r for r in via.requests if r.path.endswith(f"/blobs/{layer.digest}")]
    assert [r.headers.get("range") for r in blob_requests] == [None, f"bytes={len(first)}-"]
    assert layer.digest in blob_names(tmp_path / "s")
    assert_store_consistent(tmp_path / "s")


async def test_a_connection_that_breaks_after_the_last_byte_completes_the_layer(
    registry: Any,
    proxy: Any,
    fixture_server: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
) -> None:
    """A storage server's chunked body carries every byte of the layer, then the connection
    drops before the final empty chunk. The bytes are all there and the digest proves them:
    the pull must not resume with ``Range: bytes=<size>-``, which the registry answers 416."""
    image = images.sample_image(unique_seed, layer_size=256 * 1024)
    registry.push(unique_repo, image, "1")
    layer = image.layers[0]
    cdn = fixture_server()
    chunked = b"%x\r\n%s\r\n" % (layer.size, layer.data)  # no final "0\r\n\r\n"
    cdn.route(
        f"/blob/{layer.digest}",
        Reply(200, {"Transfer-Encoding": "chunked", "Connection": "close"}, chunked),
    )
    via = proxy(registry)
    via.inject(
        f"*/blobs/{layer.digest}", Reply(307, {"Location": f"{cdn.url}/blob/{layer.digest}"})
    )

    with trio.fail_after(60):
        await pull_retrying_quickly(f"{via.host}/{unique_repo}:1", tmp_path / "s")

    assert cdn.count(path=f"/blob/{layer.digest}") == 1
    assert via.blob_gets(layer.digest) == 1
    assert layer.digest in blob_names(tmp_path / "s")
    assert_store_consistent(tmp_path / "s")


async def test_a_registry_that_ignores_range_resends_the_blob_and_the_pull_skips_ahead(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    image = images.sample_image(unique_seed, layer_size=1024 * 1024)
    registry.push(unique_repo, image, "1")
    cut = image.layers[1]
    via = proxy(registry)
    third = cut.data[: len(cut.data) // 3]
    via.inject(f"*/blobs/{cut.digest}", Reply(200, {"Content-Length": str(cut.size)}, third))
    via.inject(f"*/blobs/{cut.digest}", Reply(200, {"Content-Length": str(cut.size)}, cut.data))

    with trio.fail_after(60):
        await pull_retrying_quickly(f"{via.host}/{unique_repo}:1", tmp_path / "s")

    assert via.blob_gets(cut.digest) == 2
    assert cut.digest in blob_names(tmp_path / "s")
    assert_store_consistent(tmp_path / "s")


async def test_a_blob_resent_whole_to_a_range_request_is_not_too_slow_while_its_start_is_skipped(
    registry: Any,
    proxy: Any,
    fixture_server: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
) -> None:
    """A storage server that ignores Range sends the whole layer again; the pull skips
    the first three quarters, which it has. Those bytes were not counted by the
    slow-transfer check but their time was: a body of 1 KiB reads about 200 KB/s, far
    above the 32 KiB/s minimum, failed as "too slow" once the skipping outlasted a
    0.2 s window (it lasts about 1 s here)."""
    image = images.sample_image(unique_seed, compressions=("none",), with_empty_layer=False)
    registry.push(unique_repo, image, "1")
    layer = image.layers[0]
    kept_before = layer.size * 3 // 4
    cdn = fixture_server()
    cdn.route(
        f"/blob/{layer.digest}",
        # Broken off after three quarters (a Content-Length it does not keep), then the
        # whole blob again, whatever the Range asked, in 1 KiB pieces 5 ms apart.
        Reply(200, {"Content-Length": str(layer.size)}, layer.data[:kept_before]),
        Reply(200, {}, layer.data, drip=1024, drip_interval=0.005),
    )
    via = proxy(registry)
    via.inject(
        f"*/blobs/{layer.digest}",
        Reply(307, {"Location": f"{cdn.url}/blob/{layer.digest}"}),
        times=None,
    )
    limits = pipeline.Limits(
        retry_wait_s=0.01, min_transfer_bytes_per_s=32 * 1024, transfer_window_s=0.2
    )

    with trio.fail_after(60):
        await pipeline.pull(
            f"{via.host}/{unique_repo}:1",
            store=Store.open(tmp_path / "s"),
            options=options(limits=limits),
        )

    first, resumed = [r for r in cdn.requests if r.path == f"/blob/{layer.digest}"]
    assert "range" not in first.headers
    assert resumed.headers["range"] == f"bytes={kept_before}-"
    assert layer.digest in blob_names(tmp_path / "s")
    assert_store_consistent(tmp_path / "s")


async def test_a_storage_server_sending_the_wrong_size_is_blamed_not_the_registry(
    registry: Any,
    proxy: Any,
    fixture_server: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
) -> None:
    """The registry redirects a layer to a storage server, whose body is not the layer's
    size: the error named the registry ("the registry announces ..."), which had only
    answered 307. It names the storage server by its host, without the signed query."""
    image = images.sample_image(unique_seed, layer_size=64 * 1024)
    registry.push(unique_repo, image, "1")
    layer = image.layers[0]
    cdn = fixture_server()
    cdn.route("/b", Reply(200, {"Content-Length": str(layer.size + 10)}, layer.data))
    via = proxy(registry)
    via.inject(f"*/blobs/{layer.digest}", Reply(307, {"Location": f"{cdn.url}/b?{SIGNED_QUERY}"}))

    with trio.fail_after(60):
        message = await pull_fails(
            f"{via.host}/{unique_repo}:1", tmp_path / "s", pipeline.SizeMismatch
        )

    assert (
        f"the storage server {cdn.host} (redirected from the registry) announces"
        f" {layer.size + 10} bytes for layer {layer.digest}"
    ) in message, message
    for secret in URL_SECRETS:
        assert secret not in message, secret
    assert cdn.count("GET", "/b") == 1


async def test_a_storage_server_breaking_off_a_layer_is_blamed_not_the_registry(
    registry: Any,
    proxy: Any,
    fixture_server: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
) -> None:
    """The registry redirects a layer to a storage server, which breaks the body off
    halfway: the Truncated named no server at all, where the blob stage's other body
    failures name the storage server (by its host, without the signed query)."""
    image = images.sample_image(unique_seed, layer_size=64 * 1024)
    registry.push(unique_repo, image, "1")
    layer = image.layers[0]
    half = layer.data[: layer.size // 2]
    cdn = fixture_server()
    cdn.route("/b", Reply(200, {"Content-Length": str(layer.size)}, half))
    via = proxy(registry)
    via.inject(f"*/blobs/{layer.digest}", Reply(307, {"Location": f"{cdn.url}/b?{SIGNED_QUERY}"}))

    with trio.fail_after(60):
        message = await pull_fails(
            f"{via.host}/{unique_repo}:1",
            tmp_path / "s",
            pipeline.Truncated,
            limits=pipeline.Limits(retries=0),
        )

    assert (
        f"the download of layer {layer.digest} from the storage server {cdn.host}"
        f" (redirected from the registry) broke off after {len(half)} of {layer.size} bytes"
    ) in message, message
    for secret in URL_SECRETS:
        assert secret not in message, secret


@pytest.mark.parametrize("blob", ["layer", "config"])
async def test_a_storage_server_past_the_deadline_is_blamed_not_the_registry(
    registry: Any,
    proxy: Any,
    fixture_server: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    blob: str,
) -> None:
    """The registry redirects a blob (a layer, streamed; the config, read whole) to a
    storage server that accepts the request and never answers, and the response deadline
    passes before the read timeout: the error named the registry ("<registry> took more
    than 1 s ...; the registry or the network is stalling"), which had answered 307 at
    once. It names the storage server, by its host and port, after the one retry a
    stall gets (Limits.stall_retries)."""
    image = images.sample_image(unique_seed, layer_size=64 * 1024)
    registry.push(unique_repo, image, "1")
    digest = image.layers[0].digest if blob == "layer" else image.config.digest
    cdn = fixture_server()
    cdn.route("/b", Reply(stall=True))
    via = proxy(registry)
    via.inject(
        f"*/blobs/{digest}", Reply(307, {"Location": f"{cdn.url}/b?{SIGNED_QUERY}"}), times=None
    )
    limits = pipeline.Limits(response_deadline_s=1.0, read_timeout_s=30.0, retry_wait_s=0.01)

    with trio.fail_after(60):
        message = await pull_fails(
            f"{via.host}/{unique_repo}:1",
            tmp_path / "s",
            pipeline.RegistryUnavailable,
            limits=limits,
        )

    assert (
        f"{cdn.host} took more than 1 s to answer for blob {digest}; that server or the"
        " network is stalling"
    ) in message, message
    assert "2 times in a row, so not tried again" in message, message
    assert f"{via.host} took more than" not in message
    for secret in URL_SECRETS:
        assert secret not in message, secret
    assert cdn.count("GET", "/b") == 2
    assert via.blob_gets(digest) == 2  # the registry was asked again: a fresh redirect


async def test_a_storage_server_past_the_deadline_once_is_asked_again_and_resumed(
    registry: Any,
    proxy: Any,
    fixture_server: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
) -> None:
    """A missed response deadline was final, where a 503 or a broken connection is tried
    again: a storage server (behind a signed URL the registry redirects to) that hangs
    once failed the pull. Here its first answer breaks off halfway through the layer,
    its second never comes (the deadline), and its third answers the resumed request:
    each time the registry is asked again (a fresh redirect), the layer resumes with
    ``Range`` from the byte where the body broke off, and the pull succeeds."""
    image = images.sample_image(unique_seed, layer_size=64 * 1024)
    registry.push(unique_repo, image, "1")
    layer = image.layers[0]
    half = layer.size // 2
    answers = iter(
        [
            Reply(200, {"Content-Length": str(layer.size)}, layer.data[:half]),  # breaks off
            Reply(stall=True),
            Reply(
                206,
                {"Content-Range": f"bytes {half}-{layer.size - 1}/{layer.size}"},
                layer.data[half:],
            ),
        ]
    )
    cdn = fixture_server()
    cdn.route("/b", lambda request: next(answers))
    via = proxy(registry)
    via.inject(
        f"*/blobs/{layer.digest}",
        Reply(307, {"Location": f"{cdn.url}/b?{SIGNED_QUERY}"}),
        times=None,
    )
    limits = pipeline.Limits(response_deadline_s=1.0, read_timeout_s=30.0, retry_wait_s=0.01)
    store = Store.open(tmp_path / "s")

    with trio.fail_after(60):
        result = await pipeline.pull(
            f"{via.host}/{unique_repo}:1", store=store, options=options(limits=limits)
        )

    assert str(result.manifest_digest) == image.digest
    assert layer.digest in blob_names(store.path)
    assert via.blob_gets(layer.digest) == 3
    resumed = f"bytes={half}-"
    assert [r.headers.get("range") for r in cdn.requests] == [None, resumed, resumed]
    assert_store_consistent(store.path)


async def test_server_errors_and_rate_limits_are_waited_out(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """A burst of 503s on the manifest, a 429 with Retry-After in seconds and one with an
    HTTP date on two layers: each is tried again, and the pull completes."""
    image = images.sample_image(unique_seed, layer_size=256 * 1024)
    registry.push(unique_repo, image, "1")
    via = proxy(registry)
    via.inject(f"/v2/{unique_repo}/manifests/1", Reply.error(503, "UNAVAILABLE"), times=3)
    via.inject(
        f"*/blobs/{image.layers[0].digest}",
        Reply(429, {"Retry-After": "1"}, b'{"errors":[{"code":"TOOMANYREQUESTS"}]}'),
    )
    via.inject(
        f"*/blobs/{image.layers[1].digest}",
        Reply(429, {"Retry-After": "Thu, 01 Jan 1970 00:00:00 GMT"}),
    )

    with trio.fail_after(60):
        await pull_retrying_quickly(f"{via.host}/{unique_repo}:1", tmp_path / "s")

    assert via.count("GET", f"/v2/{unique_repo}/manifests/1") == 4
    assert via.blob_gets(image.layers[0].digest) == via.blob_gets(image.layers[1].digest) == 2
    assert_store_consistent(tmp_path / "s")


async def test_a_registry_that_keeps_failing_is_given_up_on_with_nothing_stored(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    image = images.sample_image(unique_seed, layer_size=256 * 1024)
    registry.push(unique_repo, image, "1")
    via = proxy(registry)
    broken = image.layers[1]
    via.inject(f"*/blobs/{broken.digest}", Reply.error(502, "BAD_GATEWAY"), times=None)

    with trio.fail_after(60):
        message = await pull_fails(
            f"{via.host}/{unique_repo}:1",
            tmp_path / "s",
            pipeline.RegistryUnavailable,
            limits=pipeline.Limits(retries=2, retry_wait_s=0.01),
        )

    assert "HTTP 502" in message and "gave up after 3 attempts" in message
    assert broken.digest in message
    assert via.blob_gets(broken.digest) == 3
    assert broken.digest not in blob_names(tmp_path / "s")


# What a storage server's signed URL carries: none of it may reach an error or a log line.
SIGNATURE = "5f2b9c0d1e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c"
CREDENTIAL = "AKIAEXAMPLE7Q"
SIGNED_QUERY = (
    f"X-Amz-Signature={SIGNATURE}&X-Amz-Credential={CREDENTIAL}%2F20260101%2Fs3"
    "&sig=SIGv7Tq&token=TOKz9Wp&X-Amz-Expires=1200"
)
URL_SECRETS = (SIGNATURE, CREDENTIAL, "SIGv7Tq", "TOKz9Wp")


def storage_server_failing_with_its_signed_url(
    registry: Any, proxy: Any, fixture_server: Any, digest: str
) -> tuple[Any, Any]:
    """The registry (behind a proxy) redirects the blob ``digest`` to a signed URL on a
    storage server, which answers 503 with a registry-style JSON error quoting the URL it
    was asked for and, in a second error, the signature on its own."""
    cdn = fixture_server()

    def busy(request: Any) -> Reply:
        return Reply.json(
            {
                "errors": [
                    {
                        "code": "SLOW_DOWN",
                        "message": f"storage backend busy for {cdn.url}{request.target}",
                    },
                    {"code": "DETAIL", "message": f"X-Amz-Signature={SIGNATURE} is throttled"},
                ]
            },
            503,
        )

    cdn.route("/b", busy)
    via = proxy(registry)
    via.inject(
        f"*/blobs/{digest}", Reply(307, {"Location": f"{cdn.url}/b?{SIGNED_QUERY}"}), times=None
    )
    return via, cdn


async def test_a_storage_servers_error_quoting_its_signed_url_is_reported_without_it(
    registry: Any,
    proxy: Any,
    fixture_server: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
) -> None:
    """RELIABILITY.md: secrets never in logs or errors. The storage server's words are
    quoted in each retry warning and in the final error: they name the server that failed,
    its status and what it said, but the signed URL only up to its path."""
    from structlog.testing import capture_logs

    image = images.sample_image(unique_seed, layer_size=64 * 1024)
    registry.push(unique_repo, image, "1")
    layer = image.layers[0]
    via, cdn = storage_server_failing_with_its_signed_url(
        registry, proxy, fixture_server, layer.digest
    )

    with capture_logs() as logs, trio.fail_after(60):
        message = await pull_fails(
            f"{via.host}/{unique_repo}:1",
            tmp_path / "s",
            pipeline.RegistryUnavailable,
            limits=pipeline.Limits(retries=2, retry_wait_s=0.01),
        )

    logged = json.dumps(logs, default=str)
    for secret in URL_SECRETS:
        assert secret not in message and secret not in logged, secret
    assert cdn.count("GET", "/b") == 3  # the signed URL was used, and failed each time
    retries = [entry for entry in logs if entry["event"] == "retrying"]
    assert len(retries) == 2
    for text in (message, *(entry["error"] for entry in retries)):
        assert f"the storage server {cdn.host} that {via.host} redirected to" in text
        assert "HTTP 503" in text and layer.digest in text
        assert f"SLOW_DOWN: storage backend busy for {cdn.url}/b?[redacted]" in text
        assert "X-Amz-Signature=[redacted] is throttled" in text
    assert "gave up after 3 attempts" in message


def test_the_cli_reports_a_storage_servers_failure_without_its_signed_url(
    registry: Any,
    proxy: Any,
    fixture_server: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
) -> None:
    """The same failure through the command line, every output on: the stderr error line,
    the ``--json`` error line and the debug log (retry warnings, the traceback with its
    causes) name the storage server and its status, and none carries the signature."""
    image = images.sample_image(unique_seed, layer_size=64 * 1024)
    registry.push(unique_repo, image, "1")
    layer = image.layers[0]
    via, cdn = storage_server_failing_with_its_signed_url(
        registry, proxy, fixture_server, layer.digest
    )
    argv = ["pull", f"{via.host}/{unique_repo}:1", "--store", str(tmp_path / "s"), "--json",
            "--retries", "1", "--log-level", "debug", "--log-json"]  # fmt: skip

    proc = cli(*argv)
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 1, err
    for secret in URL_SECRETS:
        assert secret not in out and secret not in err, secret
    storage = f"the storage server {cdn.host} that {via.host} redirected to"
    error_line = json.loads(out.splitlines()[-1])
    assert (error_line["event"], error_line["error"]) == ("error", "RegistryUnavailable")
    *log_lines, stderr_line = err.splitlines()
    for text in (error_line["message"], stderr_line):
        assert storage in text and "HTTP 503" in text and f"{cdn.url}/b?[redacted]" in text
    records = [json.loads(line) for line in log_lines]
    [retry] = [r for r in records if r["event"] == "retrying"]
    assert storage in retry["error"] and "HTTP 503" in retry["error"]
    assert any(r["event"] == "command failed" for r in records)


async def test_a_rate_limit_asking_for_an_hour_fails_at_once(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    image = images.sample_image(unique_seed, layer_size=64 * 1024)
    registry.push(unique_repo, image, "1")
    via = proxy(registry)
    via.inject(f"/v2/{unique_repo}/manifests/1", Reply(429, {"Retry-After": "3600"}))

    with trio.fail_after(30):
        message = await pull_fails(
            f"{via.host}/{unique_repo}:1", tmp_path / "s", pipeline.TooManyRequests
        )

    assert "asks to wait 3600 s" in message
    assert via.count("GET", f"/v2/{unique_repo}/manifests/1") == 1


async def test_a_worker_process_killed_mid_layer_is_a_worker_error(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """A layer worker killed (as the OOM killer would) fails the pull with a WorkerError
    naming the layer and how the process ended, not an internal error; nothing of the
    layer is left in the store."""
    image = images.sample_image(unique_seed, layer_size=2 * 1024 * 1024)
    registry.push(unique_repo, image, "1")
    via = proxy(registry, rate=1_000_000)  # seconds per layer: time to find the workers
    store = Store.open(tmp_path / "s")
    killed: list[int] = []

    def kill_the_workers(event: pipeline.ProgressEvent) -> None:
        if event.event == "layer-downloading" and not killed:
            # trio-parallel's workers: forked by the forkserver this process started.
            for pid in descendants(os.getpid(), depth=2) - descendants(os.getpid(), depth=1):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    with trio.fail_after(60), pytest.raises(pipeline.WorkerError) as caught:
        await pipeline.pull(
            f"{via.host}/{unique_repo}:1",
            store=store,
            options=options(layer_workers="processes", progress=kill_the_workers),
        )

    assert killed
    assert "died before it finished (killed by SIGKILL)" in str(caught.value)
    assert caught.value.digest in {layer.digest for layer in image.layers}
    assert_store_consistent(tmp_path / "s")
    assert caught.value.digest not in blob_names(tmp_path / "s")


async def test_a_layer_listed_twice_is_fetched_once_and_reported_once(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    base = images.sample_image(unique_seed, compressions=("gzip",), with_empty_layer=False)
    one, two = base.layers[0], images.sample_image(f"{unique_seed}:2").layers[0]
    image = images.make_image([one, two, one])
    registry.push(unique_repo, image, "1")
    via = proxy(registry)
    events: list[pipeline.ProgressEvent] = []

    result = await pipeline.pull(
        f"{via.host}/{unique_repo}:1",
        store=Store.open(tmp_path / "s"),
        options=options(progress=events.append),
    )

    assert [x.status for x in result.layers] == ["downloaded", "downloaded", "exists"]
    assert result.bytes_downloaded == one.size + two.size
    assert via.blob_gets(one.digest) == 1
    seen = [(e.event, e.digest) for e in events if e.digest == one.digest]
    assert ("layer-shared", one.digest) not in seen
    assert seen[-1] == ("layer-complete", one.digest)  # nothing undoes "Pull complete"
    assert [e for e, _ in seen].count("layer-complete") == 1
    # A display counting finished layers against this total reaches it.
    [resolved] = [e for e in events if e.event == "resolved"]
    finished = [e for e in events if e.event in ("layer-complete", "layer-exists")]
    assert resolved.total == len(finished) == 2
    assert_store_consistent(tmp_path / "s")

    # The same layer given two diffIDs: only one could be verified, so neither is taken.
    liar = images.make_image([one, two, one], diff_ids=[one.diff_id, two.diff_id, two.diff_id])
    registry.push(unique_repo, liar, "2")
    with trio.fail_after(30), pytest.raises(pipeline.ManifestError, match="two diffIDs"):
        await pipeline.pull(
            registry.ref(unique_repo, "2"), store=Store.open(tmp_path / "t"), options=options()
        )


@pytest.mark.parametrize("field", ["size", "mediaType"])
async def test_a_layer_listed_twice_as_two_different_blobs_is_refused(
    fixture_server: Any, unique_seed: str, tmp_path: Path, field: str
) -> None:
    # Fetched once, for its first listing: the second's size (one byte more) or
    # compression (plain tar, though the bytes are gzip) was recorded in the store's
    # manifest as it was, never checked.
    layer = images.make_layer(unique_seed, size=16 * 1024)

    def spoil(doc: dict[str, Any]) -> None:
        second = doc["layers"][1]
        if field == "size":
            second["size"] += 1
        else:
            second["mediaType"] = images.MediaTypes.OCI_LAYER_TAR

    image = images.edited_image(images.make_image([layer, layer]), manifest=spoil)
    server = fixture_server()
    server.serve_image("twice/other", image, "1")
    ref = f"{server.host}/twice/other:1"

    message = await pull_fails(ref, tmp_path / "s", pipeline.ManifestError)

    assert f"the image lists layer {layer.digest} twice, as " in message
    assert index_entries(tmp_path / "s") == {}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (lambda: PullOptions(max_concurrent_downloads=0), "max_concurrent_downloads"),
        (lambda: PullOptions(max_concurrent_downloads=2.5), "max_concurrent_downloads"),
        (lambda: PullOptions(layer_workers="fibers"), "layer_workers"),
        (lambda: PullOptions(platform="linux/amd64"), "must be a Platform"),
        (lambda: PullOptions(platform=AMD64_V9), "amd64 has no variant v9"),
        (lambda: PullOptions(limits=pipeline.Limits(gzip_inflater="libdeflate")), "gzip inflater"),
        (lambda: PullOptions(limits=pipeline.Limits(inflate_step_bytes=0)), "inflate_step"),
        (lambda: PullOptions(limits=pipeline.Limits(read_timeout_s=-1)), "read_timeout_s"),
        (lambda: {"max_concurrent_downloads": 3}, "must be PullOptions"),
    ],
)
async def test_bad_options_are_usage_errors_before_any_request(
    tmp_path: Path, options: Callable[[], Any], message: str
) -> None:
    store = Store.open(tmp_path / "store")
    with trio.fail_after(10), pytest.raises(pipeline.UsageError, match=message):
        # nothing listens on port 9: any request would fail differently
        await pipeline.pull("127.0.0.1:9/app:1", store=store, options=options())


async def test_bad_arguments_are_usage_errors_before_any_request(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    reader = Store.open_existing(store.path)
    ref = "127.0.0.1:9/app:1"  # nothing listens on port 9
    cases: list[tuple[dict[str, Any], str]] = [
        ({"store": str(store.path)}, "must be a Store"),
        ({"store": None}, "must be a Store"),
        ({"store": reader}, "opened read-only"),
        ({"store": store, "downloads": 3}, "trio.CapacityLimiter"),
    ]
    for kwargs, message in cases:
        with trio.fail_after(10), pytest.raises(pipeline.UsageError, match=message):
            await pipeline.pull(ref, **kwargs)
    with trio.fail_after(10), pytest.raises(pipeline.UsageError, match="must be a string"):
        await pipeline.pull(b"127.0.0.1:9/app:1", store=store)  # type: ignore[arg-type]


@pytest.mark.parametrize("budget", ["given", "the store's", "their own"])
async def test_pulls_of_one_store_share_its_download_budget_unless_given_their_own(
    registry: Any,
    proxy: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    budget: str,
) -> None:
    """Two pulls of images with no layer in common into one Store. Given one limiter of
    1 token (each allowed 3 downloads), or allowed 1 download each and given nothing,
    which makes them share the store's budget of 1 (as docker's daemon-wide
    max-concurrent-downloads is shared): never more than one layer is downloading across
    both. Given a limiter each, they download side by side whatever the store's budget."""
    one = images.sample_image(f"{unique_seed}:one")
    two = images.sample_image(f"{unique_seed}:two")
    registry.push(unique_repo, one, "one")
    registry.push(unique_repo, two, "two")
    via = proxy(registry, rate=8_000_000)  # slow enough that both pulls overlap
    store = Store.open(tmp_path / "store")
    active: set[str] = set()
    most = 0

    def watch(event: pipeline.ProgressEvent) -> None:
        nonlocal most
        if event.event == "layer-downloading":
            active.add(str(event.digest))
            most = max(most, len(active))
        elif event.event == "layer-verifying":
            active.discard(str(event.digest))

    shared = trio.CapacityLimiter(1)

    async def pull(tag: str) -> None:
        if budget == "given":
            given = {"options": options(max_concurrent_downloads=3, progress=watch)}
            given["downloads"] = shared
        elif budget == "the store's":
            given = {"options": options(max_concurrent_downloads=1, progress=watch)}
        else:
            given = {"options": options(max_concurrent_downloads=1, progress=watch)}
            given["downloads"] = trio.CapacityLimiter(1)
        await pipeline.pull(f"{via.host}/{unique_repo}:{tag}", store=store, **given)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for tag in ("one", "two"):
                nursery.start_soon(pull, tag)
    assert most == (2 if budget == "their own" else 1)
    assert shared.borrowed_tokens == 0
    assert store.lcache.download_budget(1).borrowed_tokens == 0
    for image in (one, two):
        for layer in image.layers:
            assert via.blob_gets(layer.digest) == 1


@pytest.mark.parametrize("shared", [False, True], ids=["apart", "sharing-a-layer"])
def test_pulls_into_one_store_from_two_threads_each_with_its_trio_run(
    registry: Any, proxy: Any, unique_repo: str, unique_seed: str, tmp_path: Path, shared: bool
) -> None:
    """A host pulling into one Store object from two threads, each running trio: the
    store's download budget, shared by both, failed one pull with trio's own assertion
    (a limiter belongs to one run) and hung the other (QA pass); so did the layer cache's
    lock of a layer both images have. Each run has its own; a shared layer is still
    downloaded once, the runs excluding each other through the store's claim."""
    base = images.sample_image(f"{unique_seed}:base", compressions=("gzip",)).layers[:1]
    for tag in ("one", "two"):
        image = images.sample_image(
            f"{unique_seed}:{tag}", with_empty_layer=False, base=base if shared else ()
        )
        registry.push(unique_repo, image, tag)
    via = proxy(registry, rate=4_000_000)  # both pulls download at once
    store = Store.open(tmp_path / "store")
    errors: dict[str, BaseException] = {}

    def run(tag: str) -> None:
        async def one() -> None:
            with trio.fail_after(30):
                ref = f"{via.host}/{unique_repo}:{tag}"
                await pipeline.pull(ref, store=store, options=options(max_concurrent_downloads=1))

        try:
            trio.run(one)
        except BaseException as exc:  # reported below, whatever it is
            errors[tag] = exc

    threads = [threading.Thread(target=run, args=(tag,)) for tag in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(45)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    assert sorted(record.ref for record in store.list_images()) == sorted(
        f"{via.host}/{unique_repo}:{tag}" for tag in ("one", "two")
    )
    for layer in base if shared else ():
        assert via.blob_gets(layer.digest) == 1


def test_a_worker_hands_back_an_error_whose_cause_pickle_cannot_name() -> None:
    """The worker's error crosses to the pulling process pickled with its causes
    (tblib, installed in trio-parallel's workers, here too): a cause of a class pickle
    cannot name made the pull fail with "internal error: PicklingError"."""
    import copyreg

    import tblib.pickling_support

    from pipeline._workers import sendable

    kept = dict(copyreg.dispatch_table)  # install() registers exception classes globally
    tblib.pickling_support.install()
    try:
        _check_sendable(sendable)
    finally:
        copyreg.dispatch_table.clear()
        copyreg.dispatch_table.update(kept)


def _check_sendable(sendable: Any) -> None:
    import pickle

    def unnamed_class() -> type[Exception]:
        class ExtensionError(Exception):  # a local class: pickle cannot name it
            pass

        return ExtensionError

    failure = pipeline.DecompressError("layer x: the gzip stream is corrupt", ref="r", digest="d")
    failure.__cause__ = unnamed_class()("invalid block type")
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(failure)

    sent = sendable(failure)
    back = pickle.loads(pickle.dumps(sent))
    assert type(back) is pipeline.DecompressError
    assert (str(back), back.ref, back.digest) == (str(failure), "r", "d")

    lone = unnamed_class()("not even the error itself can be pickled")
    sent_lone = sendable(lone)
    back_lone = pickle.loads(pickle.dumps(sent_lone))
    assert isinstance(back_lone, pipeline.WorkerError)
    assert "ExtensionError: not even the error itself can be pickled" in str(back_lone)
