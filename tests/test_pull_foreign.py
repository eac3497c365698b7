"""Foreign (non-distributable) layers end to end: ``pipeline.pull`` against the real
registry, which holds the manifest but not the layer, and a loopback fixture server that
serves the layer at one of the URLs its descriptor names.

The registry stores such a manifest without the blob (distribution skips the existence
check for the foreign and non-distributable media types), as registries hold Windows
images whose base layers live elsewhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import pipeline
from pipeline import Limits, Platform, PullOptions, Store
from tests.support import images
from tests.support.servers import FixtureServer, Reply

AMD64 = Platform("linux", "amd64")
FOREIGN_TYPES = {
    "docker": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "oci": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
}
# No waiting between attempts: a URL that fails is given up on quickly.
QUICK = Limits(retries=1, retry_wait_s=0.01, retry_max_wait_s=0.01)


def assert_store_consistent(store_path: Path) -> None:
    """Nothing unverified is visible and nothing half-written is left behind."""
    blob_dir = store_path / "blobs" / "sha256"
    for blob in blob_dir.iterdir() if blob_dir.exists() else ():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, blob
    assert sorted(p.name for p in (store_path / "ingest").iterdir()) == []


def blob_names(store_path: Path) -> set[str]:
    blob_dir = store_path / "blobs" / "sha256"
    return {f"sha256:{p.name}" for p in blob_dir.iterdir()} if blob_dir.exists() else set()


def foreign_layer(seed: str, kind: str) -> images.Layer:
    """A gzip layer of the foreign (Docker) or non-distributable (OCI) media type."""
    layer = images.make_layer(f"{seed}:foreign", size=128 * 1024)
    return dataclasses.replace(layer, media_type=FOREIGN_TYPES[kind])


def foreign_image(
    seed: str, kind: str, foreign: images.Layer, urls: list[str]
) -> tuple[images.Image, images.Layer]:
    """An image of ``foreign`` (first, as a Windows base layer is) naming ``urls`` and an
    ordinary layer; returns the image and the ordinary layer."""
    ordinary = images.make_layer(f"{seed}:ordinary", size=32 * 1024)
    image = images.make_image([foreign, ordinary], kind=kind)  # type: ignore[arg-type]

    def name_urls(doc: dict[str, Any]) -> None:
        doc["layers"][0]["urls"] = urls

    return images.edited_image(image, manifest=name_urls), ordinary


def push_without(registry: Any, repository: str, image: images.Image, left_out: Any) -> str:
    """Push ``image`` with every blob but ``left_out``; return the reference."""
    with registry.client() as client:
        for blob in image.blobs:
            if blob is not left_out:
                images.push_blob(client, repository, blob)
        images.push_manifest(client, repository, "1", image.manifest)
    return str(registry.ref(repository, "1"))


def serve(server: FixtureServer, path: str, data: bytes) -> str:
    server.route(path, Reply(200, {"Content-Type": "application/octet-stream"}, data))
    return f"{server.url}{path}"


def credentials_of(registry: Any) -> pipeline.RegistryOptions:
    user, password = registry.credentials
    return pipeline.RegistryOptions(credentials=pipeline.Credentials(user, password))


@pytest.mark.parametrize("layer_workers", ["threads", "processes"])
@pytest.mark.parametrize("kind", ["docker", "oci"])
async def test_a_foreign_layer_the_registry_lacks_is_pulled_from_its_url_without_credentials(
    basic_registry: Any,
    fixture_server: Any,
    unique_repo: str,
    unique_seed: str,
    tmp_path: Path,
    kind: str,
    layer_workers: str,
) -> None:
    # It failed: "imagec-pipe fetches layers from the registry only".
    server = fixture_server()
    seed = f"{unique_seed}:{kind}:{layer_workers}"
    foreign = foreign_layer(seed, kind)
    url = serve(server, f"/layers/{foreign.digest}", foreign.data)
    image, ordinary = foreign_image(seed, kind, foreign, [url])
    ref = push_without(basic_registry, unique_repo, image, foreign)
    store = Store.open(tmp_path / "store")

    result = await pipeline.pull(
        ref,
        store=store,
        options=PullOptions(
            platform=AMD64, registry=credentials_of(basic_registry), layer_workers=layer_workers
        ),
    )

    assert [str(layer.digest) for layer in result.layers] == [foreign.digest, ordinary.digest]
    assert [str(layer.diff_id) for layer in result.layers] == [foreign.diff_id, ordinary.diff_id]
    assert {layer.status for layer in result.layers} == {"downloaded"}
    report = result.layers[0]
    assert report.media_type == FOREIGN_TYPES[kind]
    assert report.uncompressed_size == foreign.uncompressed_size
    assert {foreign.digest, ordinary.digest, image.digest} <= blob_names(store.path)
    [record] = store.list_images()
    stored = {str(layer.digest): layer for layer in store.image_layers(record)}
    assert str(stored[foreign.digest].diff_id) == foreign.diff_id
    assert stored[foreign.digest].media_type == FOREIGN_TYPES[kind]
    assert_store_consistent(store.path)
    # The URL's host got one plain GET: no Authorization, no cookie, nothing of the
    # registry's.
    [request] = server.requests
    assert request.path == f"/layers/{foreign.digest}"
    assert "authorization" not in request.headers and "cookie" not in request.headers
    assert request.headers.get("accept-encoding") == "identity"


async def test_a_url_serving_wrong_bytes_fails_with_a_digest_error_and_stores_nothing(
    registry: Any, fixture_server: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    server = fixture_server()
    foreign = foreign_layer(unique_seed, "docker")
    flipped = bytearray(foreign.data)
    flipped[len(flipped) // 2] ^= 0xFF
    url = serve(server, "/layer", bytes(flipped))
    image, _ = foreign_image(unique_seed, "docker", foreign, [url])
    ref = push_without(registry, unique_repo, image, foreign)
    store = Store.open(tmp_path / "store")

    with pytest.raises(pipeline.DigestMismatch) as info:
        await pipeline.pull(ref, store=store, options=PullOptions(platform=AMD64))

    assert info.value.digest == foreign.digest
    assert foreign.digest not in blob_names(store.path)
    assert image.digest not in blob_names(store.path)
    assert store.list_images() == []
    assert_store_consistent(store.path)


async def test_the_registry_is_asked_first_then_each_url_in_order(
    registry: Any, fixture_server: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    server = fixture_server()
    foreign = foreign_layer(unique_seed, "oci")
    missing = f"{server.url}/gone"  # no route: 404
    broken = f"{server.url}/broken"
    server.route("/broken", Reply.error(503, "UNAVAILABLE"))
    good = serve(server, "/good", foreign.data)
    never = serve(server, "/never", foreign.data)
    image, _ = foreign_image(unique_seed, "oci", foreign, [missing, broken, good, never])
    ref = push_without(registry, unique_repo, image, foreign)
    store = Store.open(tmp_path / "store")

    result = await pipeline.pull(
        ref, store=store, options=PullOptions(platform=AMD64, limits=QUICK)
    )

    assert str(result.layers[0].digest) == foreign.digest
    assert [r.path for r in server.requests] == ["/gone", "/broken", "/broken", "/good"]
    assert_store_consistent(store.path)

    # A registry that holds the layer serves it: no request goes to the URLs.
    with registry.client() as client:
        images.push_blob(client, unique_repo, foreign)
    server.reset()
    await pipeline.pull(
        ref, store=Store.open(tmp_path / "other"), options=PullOptions(platform=AMD64)
    )
    assert server.requests == []


async def test_when_every_source_fails_the_error_names_each_without_its_query(
    registry: Any, fixture_server: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    server = fixture_server()
    server.route("/refused", Reply.error(403, "DENIED"))
    urls = [
        f"{server.url}/missing?X-Amz-Signature=s3cr3tsig&token=t0ken",
        f"{server.url}/refused",
        "https://127.0.0.1:1/layer",  # nothing listens on port 1: refused
        "http://example.com/layer",
    ]
    foreign = foreign_layer(unique_seed, "docker")
    image, _ = foreign_image(unique_seed, "docker", foreign, urls)
    ref = push_without(registry, unique_repo, image, foreign)
    store = Store.open(tmp_path / "store")

    with pytest.raises(pipeline.RegistryError) as info:
        await pipeline.pull(ref, store=store, options=PullOptions(platform=AMD64, limits=QUICK))

    text = str(info.value)
    assert info.value.digest == foreign.digest
    assert "could not be fetched from the registry or any of the URLs" in text
    assert f"the registry: blob {foreign.digest} not found" in text
    assert f"{server.url}/missing?[redacted] answered HTTP 404" in text
    assert "s3cr3tsig" not in text and "t0ken" not in text
    assert f"{server.url}/refused answered HTTP 403" in text
    assert "cannot connect to 127.0.0.1:1" in text
    assert "the URL http://example.com/layer for layer" in text and "plain http" in text
    # Each source named once: "https://x/y: https://x/y answered HTTP 404" said it twice.
    for source in (f"{server.url}/missing?[redacted]", f"{server.url}/refused", *urls[2:]):
        assert text.count(source) == 1, source
    assert [r.path for r in server.requests] == ["/missing", "/refused"]
    assert foreign.digest not in blob_names(store.path)
    assert_store_consistent(store.path)


async def test_after_the_last_source_fails_no_next_one_is_announced(
    registry: Any, fixture_server: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    # A layer-retrying event and a "trying the next" warning went out after the last
    # source too, announcing a source that did not exist.
    server = fixture_server()
    foreign = foreign_layer(unique_seed, "oci")
    image, _ = foreign_image(unique_seed, "oci", foreign, [f"{server.url}/gone"])
    ref = push_without(registry, unique_repo, image, foreign)
    events: list[pipeline.ProgressEvent] = []
    options = PullOptions(platform=AMD64, limits=QUICK, progress=events.append)

    with capture_logs() as logs, pytest.raises(pipeline.NotFound) as info:
        await pipeline.pull(ref, store=Store.open(tmp_path / "store"), options=options)

    # The registry's 404, then the URL's: one move to the next source, announced once.
    retried = [e for e in events if e.event == "layer-retrying"]
    assert [(e.digest, e.current) for e in retried] == [(foreign.digest, 0)]
    assert [entry["source"] for entry in logs if entry["event"].startswith("layer source")] == [
        "the registry"
    ]
    assert [r.path for r in server.requests] == ["/gone"]
    assert str(info.value).count(f"{server.url}/gone") == 1


async def test_a_url_asking_to_wait_too_long_is_named_not_the_registry(
    registry: Any, fixture_server: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    # "the registry asks to wait 3600 s": the registry had answered 404; the layer's URL
    # sent the Retry-After.
    server = fixture_server()
    server.route("/busy", Reply(429, {"Retry-After": "3600"}))
    foreign = foreign_layer(unique_seed, "docker")
    image, _ = foreign_image(unique_seed, "docker", foreign, [f"{server.url}/busy"])
    ref = push_without(registry, unique_repo, image, foreign)

    with pytest.raises(pipeline.RegistryError) as info:
        await pipeline.pull(
            ref, store=Store.open(tmp_path / "store"), options=PullOptions(platform=AMD64)
        )

    text = str(info.value)
    authority = server.url.removeprefix("http://")
    assert f"{authority} asks to wait 3600 s, over the 60 s a pull waits" in text
    assert "the registry asks" not in text
    assert [r.path for r in server.requests] == ["/busy"]  # not waited for, not asked again


async def test_a_url_announcing_the_wrong_size_is_blamed_not_the_registry(
    registry: Any, fixture_server: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    # "the registry announces ... bytes": the registry had answered 404.
    server = fixture_server()
    foreign = foreign_layer(unique_seed, "oci")
    size = len(foreign.data)
    server.route("/layer", Reply(200, {"Content-Length": str(size + 10)}, foreign.data))
    image, _ = foreign_image(unique_seed, "oci", foreign, [f"{server.url}/layer"])
    ref = push_without(registry, unique_repo, image, foreign)

    with pytest.raises(pipeline.SizeMismatch) as info:
        await pipeline.pull(
            ref, store=Store.open(tmp_path / "store"), options=PullOptions(platform=AMD64)
        )

    assert info.value.message.startswith(
        f"{server.url}/layer announces {size + 10} bytes for layer {foreign.digest}"
    )
    assert "registry" not in info.value.message
    assert_store_consistent(tmp_path / "store")


async def test_a_url_redirecting_to_a_server_past_the_deadline_names_that_server(
    registry: Any, fixture_server: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    # "<the URL's host> took more than 1 s": the URL had redirected at once; the server
    # it redirected to (another port) never answered.
    first, second = fixture_server(), fixture_server()
    second.route("/layer", Reply(stall=True))
    first.route("/layer", Reply(307, {"Location": f"{second.url}/layer"}))
    foreign = foreign_layer(unique_seed, "oci")
    image, _ = foreign_image(unique_seed, "oci", foreign, [f"{first.url}/layer"])
    ref = push_without(registry, unique_repo, image, foreign)
    limits = dataclasses.replace(QUICK, response_deadline_s=1.0, read_timeout_s=30.0)

    with pytest.raises(pipeline.RegistryError) as info:  # with the registry's 404
        await pipeline.pull(
            ref,
            store=Store.open(tmp_path / "store"),
            options=PullOptions(platform=AMD64, limits=limits),
        )

    assert (
        f"{second.host} took more than 1 s to answer for blob {foreign.digest} from"
        f" {first.url}/layer; that server or the network is stalling"
    ) in str(info.value), str(info.value)
    assert f"{first.host} took more than" not in str(info.value)
    assert "2 times in a row, so not tried again" in str(info.value), str(info.value)
    assert [r.path for r in second.requests] == ["/layer", "/layer"]  # a stall's one retry
    assert_store_consistent(tmp_path / "store")


async def test_only_the_first_max_layer_urls_are_tried(
    registry: Any, fixture_server: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    # A manifest naming thousands of URLs held a pull for as many attempts.
    server = fixture_server()
    urls = [f"{server.url}/u{i}" for i in range(2000)]
    foreign = foreign_layer(unique_seed, "oci")
    image, _ = foreign_image(unique_seed, "oci", foreign, urls)
    ref = push_without(registry, unique_repo, image, foreign)
    store = Store.open(tmp_path / "store")
    limits = dataclasses.replace(QUICK, max_layer_urls=3)

    with pytest.raises(pipeline.NotFound) as info:
        await pipeline.pull(ref, store=store, options=PullOptions(platform=AMD64, limits=limits))

    assert [r.path for r in server.requests] == ["/u0", "/u1", "/u2"]
    assert "names 2000 URLs; the first 3 were tried: Limits.max_layer_urls" in str(info.value)
    assert len(str(info.value)) < 2000
    assert_store_consistent(store.path)
