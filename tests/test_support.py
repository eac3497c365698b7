"""The test kit works: registries start and answer, images push and read back, the token
server follows its policy and its faults, the proxy counts and throttles, the fixture server
serves, and a hanging test fails at its deadline."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio
import zstandard

from tests.support import images
from tests.support.client import parse_challenge, registry_client
from tests.support.registry import RegistryServer
from tests.support.servers import FixtureServer, Proxy, Reply
from tests.support.tokens import TokenServer

ACCEPT = ", ".join(
    [
        images.MediaTypes.OCI_INDEX,
        images.MediaTypes.DOCKER_LIST,
        images.MediaTypes.OCI_MANIFEST,
        images.MediaTypes.DOCKER_MANIFEST,
    ]
)


def _get_manifest(client: httpx.Client, repo: str, ref: str) -> httpx.Response:
    return client.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT})


# --- images ----------------------------------------------------------------------------


def test_images_are_deterministic_and_self_consistent() -> None:
    a = images.sample_image("same", kind="oci")
    b = images.sample_image("same", kind="oci")
    assert a.digest == b.digest and a.manifest.data == b.manifest.data
    assert images.sample_image("other").digest != a.digest
    assert [layer.compression for layer in a.layers] == ["gzip", "zstd", "none", "gzip"]
    assert a.diff_ids == tuple(layer.diff_id for layer in a.layers)
    gz, zst, plain, empty = a.layers
    assert gzip.decompress(gz.data) == gz.tar
    assert zstandard.ZstdDecompressor().decompress(zst.data) == zst.tar
    assert plain.data == plain.tar
    assert empty.tar == b"\0" * 1024
    assert gz.media_type_for("oci") == images.MediaTypes.OCI_LAYER_GZIP
    manifest = a.manifest.json()
    assert manifest["mediaType"] == images.MediaTypes.OCI_MANIFEST
    assert manifest["config"]["digest"] == a.image_id
    assert [d["digest"] for d in manifest["layers"]] == [x.digest for x in a.layers]
    config = a.config.json()
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert len(config["history"]) == len(a.layers) + 1
    # Text compresses, random data does not: the mix is realistic.
    assert 0.2 < gz.size / gz.uncompressed_size < 0.9


def test_docker_images_and_indexes() -> None:
    image = images.sample_image("d", kind="docker")
    assert image.media_type == images.MediaTypes.DOCKER_MANIFEST
    assert image.config.media_type == images.MediaTypes.DOCKER_CONFIG
    assert {x.media_type_for("docker") for x in image.layers} == {
        images.MediaTypes.DOCKER_LAYER_GZIP,
        images.MediaTypes.DOCKER_LAYER_TAR,
    }
    for kind, media_type in (
        ("docker", images.MediaTypes.DOCKER_LIST),
        ("oci", images.MediaTypes.OCI_INDEX),
    ):
        index = images.sample_index("i", kind=kind)  # type: ignore[arg-type]
        body = index.manifest.json()
        assert body["mediaType"] == media_type
        assert [m["platform"] for m in body["manifests"]] == [
            {"os": "linux", "architecture": "amd64"},
            {"os": "linux", "architecture": "arm64", "variant": "v8"},
        ]
        amd, arm = index.images
        assert index.image_for("linux/arm64/v8") is arm
        assert amd.layers[0].digest == arm.layers[0].digest  # shared base layer
        assert amd.config.json()["architecture"] == "amd64"
        assert arm.config.json()["variant"] == "v8"


def test_broken_inputs() -> None:
    truncated = images.truncated_gzip_layer("t")
    assert truncated.digest == images.digest_of(truncated.data)
    decomp = __import__("zlib").decompressobj(31)
    decomp.decompress(truncated.data)
    assert not decomp.eof
    wrong = images.wrong_media_type_layer("w")
    assert wrong.media_type_for("oci") == images.MediaTypes.OCI_LAYER_GZIP
    assert wrong.data[:4] == b"\x28\xb5\x2f\xfd"  # zstd magic
    bad = images.mismatched_diff_ids_image("m")
    assert bad.diff_ids[0] == bad.layers[0].diff_id
    assert bad.diff_ids[1] != bad.layers[1].diff_id
    big = images.oversized_manifest(images.sample_image("o"))
    assert big.size > 4 * 1024 * 1024 and big.json()["layers"]


# --- registries ------------------------------------------------------------------------


def test_plain_registry_push_and_fetch(registry: RegistryServer, unique_repo: str) -> None:
    assert registry.host.startswith("127.0.0.1:") and registry.url == f"http://{registry.host}"
    image = images.sample_image("plain")
    index = images.sample_index("plain", kind="docker")
    assert registry.push(unique_repo, image, "1.0") == image.digest
    assert registry.push(unique_repo, index, "multi") == index.digest
    with registry.client() as client:
        assert client.get("/v2/").status_code == 200
        for ref, expected in (("1.0", image), (image.digest, image), ("multi", index)):
            response = _get_manifest(client, unique_repo, ref)
            assert response.status_code == 200, response.text
            assert response.content == expected.manifest.data
            assert response.headers["content-type"] == expected.media_type
            assert response.headers["docker-content-digest"] == expected.digest
        blob = client.get(f"/v2/{unique_repo}/blobs/{image.layers[1].digest}")
        assert blob.content == image.layers[1].data
    assert registry.blob_path(image.layers[0].digest).read_bytes() == image.layers[0].data
    assert registry.ref(unique_repo, "1.0") == f"{registry.host}/{unique_repo}:1.0"


def test_corrupt_blob_in_storage(
    registry: RegistryServer, unique_repo: str, unique_seed: str
) -> None:
    image = images.sample_image(unique_seed, compressions=("gzip",), with_empty_layer=False)
    registry.push(unique_repo, image)
    layer = image.layers[0]
    images.corrupt_blob(registry.storage_dir, layer.digest)
    with registry.client() as client:
        response = client.get(f"/v2/{unique_repo}/blobs/{layer.digest}")
    assert response.status_code == 200
    assert len(response.content) == layer.size
    assert images.digest_of(response.content) != layer.digest


def test_basic_registry(basic_registry: RegistryServer, unique_repo: str) -> None:
    assert basic_registry.credentials is not None
    with httpx.Client(base_url=basic_registry.url) as anonymous:
        response = anonymous.get("/v2/")
        assert response.status_code == 401
        assert parse_challenge(response.headers["www-authenticate"])[0] == "basic"
        assert anonymous.get("/v2/", auth=("alice", "wrong")).status_code == 401
        assert anonymous.get("/v2/", auth=basic_registry.credentials).status_code == 200
    image = images.sample_image("basic", kind="docker")
    basic_registry.push(unique_repo, image)
    with basic_registry.client() as client:
        assert _get_manifest(client, unique_repo, "latest").content == image.manifest.data


def test_token_registry(
    token_registry: RegistryServer, token_server: TokenServer, unique_repo: str
) -> None:
    image = images.sample_image("token")
    with httpx.Client(base_url=token_registry.url) as anonymous:
        response = anonymous.get("/v2/")
        assert response.status_code == 401
        scheme, params = parse_challenge(response.headers["www-authenticate"])
    assert scheme == "bearer"
    assert params["realm"] == token_server.realm and params["service"] == token_server.service
    assert token_registry.push(unique_repo, image) == image.digest
    assert token_registry.push("public/" + unique_repo, image) == image.digest
    assert token_server.count > 0
    assert all(r.user == "alice" and r.status == 200 for r in token_server.requests)
    token_server.reset()

    # Anonymous: pull under public/ only, never push.
    with registry_client(token_registry.url) as anonymous_client:
        assert _get_manifest(anonymous_client, "public/" + unique_repo, "latest").status_code == 200
        assert _get_manifest(anonymous_client, unique_repo, "latest").status_code == 401
        assert anonymous_client.post(f"/v2/public/{unique_repo}/blobs/uploads/").status_code == 401
    assert token_server.requests[0].user is None
    assert token_server.requests[0].granted == (
        {"type": "repository", "name": "public/" + unique_repo, "actions": ["pull"]},
    )

    # A token fetched by hand works as a bearer token.
    token_response = httpx.get(
        token_server.realm,
        params={"service": token_server.service, "scope": f"repository:{unique_repo}:pull"},
        auth=token_registry.credentials,
    )
    body = token_response.json()
    assert body["expires_in"] == token_server.expires_in and body["token"] == body["access_token"]
    with httpx.Client(base_url=token_registry.url) as client:
        ok = _get_manifest(client, unique_repo, "latest")
        assert ok.status_code == 401
        client.headers["Authorization"] = f"Bearer {body['token']}"
        assert _get_manifest(client, unique_repo, "latest").content == image.manifest.data
    assert httpx.get(token_server.realm, auth=("alice", "nope")).status_code == 401


def test_token_server_faults(token_server: TokenServer) -> None:
    def fetch() -> httpx.Response:
        return httpx.get(token_server.realm, params={"scope": "repository:public/x:pull"})

    token_server.set_fault("status", status=502, times=1)
    assert fetch().status_code == 502
    assert "token" in fetch().json()  # back to normal after `times`
    token_server.set_fault("non-json")
    assert fetch().headers["content-type"] == "text/html"
    token_server.set_fault("no-token")
    assert "token" not in fetch().json() and "access_token" not in fetch().json()
    token_server.set_fault("huge")
    assert len(fetch().content) > 1024 * 1024
    token_server.set_fault("close")
    with pytest.raises(httpx.TransportError):
        fetch()
    token_server.set_fault(None)
    token_server.omit_expires_in = True
    assert "expires_in" not in fetch().json()
    assert token_server.count == 8


async def test_tls_registry_async(tls_registry: RegistryServer, unique_repo: str) -> None:
    assert tls_registry.url.startswith("https://") and tls_registry.ca_pem is not None
    image = images.sample_image("tls")
    await trio.to_thread.run_sync(tls_registry.push, unique_repo, image, "v1")
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=tls_registry.url, verify=tls_registry.verify()) as c:
            response = await c.get(f"/v2/{unique_repo}/manifests/v1", headers={"Accept": ACCEPT})
            assert response.content == image.manifest.data
        async with httpx.AsyncClient(base_url=tls_registry.url) as unverified:
            with pytest.raises(httpx.ConnectError):
                await unverified.get("/v2/")


def test_registry_factory_token_over_tls(
    registry_factory: Callable[..., RegistryServer], unique_repo: str
) -> None:
    server = registry_factory(auth="token", tls=True, token_expires_in=5)
    assert server.token_server is not None and server.token_server.expires_in == 5
    image = images.sample_image("factory", compressions=("zstd",))
    server.push(unique_repo, image)
    with server.client() as client:
        assert _get_manifest(client, unique_repo, "latest").content == image.manifest.data
    assert server.process.poll() is None


# --- fixture server and proxy ----------------------------------------------------------


def test_fixture_server(fixture_server: Callable[[], FixtureServer]) -> None:
    server = fixture_server()
    image = images.sample_image("fixture")
    big = images.oversized_manifest(image)
    server.serve_manifest("app", "big", big)
    server.serve_image("app", image, "1.0", content_type=images.MediaTypes.DOCKER_MANIFEST)
    server.route("/flaky", Reply(503), Reply.error(429, "TOOMANYREQUESTS"), Reply(200, body=b"ok"))
    server.route("/short", Reply(200, {"Content-Length": "100"}, b"only ten b"))
    server.route("/echo", lambda r: Reply(201, body=r.body[::-1]), method="POST")
    with httpx.Client(base_url=server.url) as client:
        v2 = client.get("/v2/")
        assert v2.status_code == 200
        assert v2.headers["docker-distribution-api-version"] == "registry/2.0"
        assert len(client.get("/v2/app/manifests/big").content) == big.size
        one = client.get("/v2/app/manifests/1.0")
        assert one.content == image.manifest.data
        assert one.headers["content-type"] == images.MediaTypes.DOCKER_MANIFEST
        head = client.head(f"/v2/app/blobs/{image.layers[0].digest}")
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) == image.layers[0].size
        assert [client.get("/flaky").status_code for _ in range(4)] == [503, 429, 200, 200]
        with pytest.raises(httpx.RemoteProtocolError):
            client.get("/short")
        assert client.post("/echo", content=b"abc").content == b"cba"
        assert client.get("/nothing").status_code == 404
    assert server.count("GET", "/flaky") == 4 and server.count() == 11
    assert server.requests[-1].path == "/nothing"


def test_fixture_server_stalls_before_answering_or_partway_through_a_body(
    fixture_server: Callable[[], FixtureServer],
) -> None:
    server = fixture_server()
    body = bytes(range(256)) * 40
    server.route("/hangs", Reply(stall=True))
    # Ignoring Range: a resumed request gets the body from its start again.
    server.route("/cut", Reply(200, {}, body, stall_after=1000), Reply(200, {}, body))
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(10, read=0.5)) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.get("/hangs")
        received = bytearray()
        with client.stream("GET", "/cut") as response:
            assert response.headers["content-length"] == str(len(body))
            with pytest.raises(httpx.ReadTimeout):
                for piece in response.iter_raw():
                    received += piece
        assert bytes(received) == body[:1000]
        resumed = client.get("/cut", headers={"Range": "bytes=1000-"})
        assert resumed.status_code == 200 and resumed.content == body
    assert server.count("GET") == 3


def test_proxy_counts_and_injects(
    registry: RegistryServer, proxy: Callable[..., Proxy], unique_repo: str
) -> None:
    image = images.sample_image("proxied")
    p = proxy(registry)
    with registry_client(p.url) as client:
        images.push(client, unique_repo, image)  # chunk-less uploads with bodies pass
        p.reset()
        layer = image.layers[0]
        path = f"/v2/{unique_repo}/blobs/{layer.digest}"
        for _ in range(3):
            assert client.get(path).content == layer.data
        assert client.head(path).status_code == 200
        assert p.blob_gets(layer.digest) == 3
        assert p.count("HEAD", path) == 1 and p.counts[("GET", path)] == 3
        chunked = client.put(  # a chunked request body is forwarded intact
            "/v2/nothing/blobs/uploads/x", content=iter([b"a" * 10, b"b" * 5])
        )
        assert chunked.status_code in (401, 404)
        p.inject(path, Reply.error(503, "UNAVAILABLE"), times=1)
        assert client.get(path).status_code == 503
        assert client.get(path).content == layer.data  # keep-alive survives the injection
    assert p.bytes_to_client >= 4 * layer.size


def test_proxy_relays_the_start_of_a_body_then_stalls(
    registry: RegistryServer, proxy: Callable[..., Proxy], unique_repo: str
) -> None:
    image = images.sample_image("cut", compressions=("none",), with_empty_layer=False)
    registry.push(unique_repo, image)
    layer = image.layers[0]
    p = proxy(registry)
    path = f"/v2/{unique_repo}/blobs/{layer.digest}"
    p.inject(path, Reply(stall_after=1000), method="GET", times=2)
    # No registry_client: its auth reads every response's body before handing it over.
    with httpx.Client(base_url=p.url, timeout=httpx.Timeout(10, read=0.5)) as client:
        for start, status in ((0, 200), (5000, 206)):  # the registry answers the Range
            received = bytearray()
            headers = {"Range": f"bytes={start}-"} if start else {}
            with client.stream("GET", path, headers=headers) as response:
                assert response.status_code == status
                with pytest.raises(httpx.ReadTimeout):
                    for piece in response.iter_raw():
                        received += piece
            assert bytes(received) == layer.data[start : start + 1000]
        assert client.get(path).content == layer.data  # the next one is relayed whole


def test_proxy_throttles_and_delays(registry: RegistryServer, proxy: Callable[..., Proxy]) -> None:
    image = images.sample_image("throttle", compressions=("none",), with_empty_layer=False)
    repo = "kit/throttle"
    registry.push(repo, image)
    layer = image.layers[0]
    rate = 400_000
    p = proxy(registry, rate=rate, latency=0.2)
    with registry_client(p.url) as client:
        started = time.monotonic()
        assert client.get(f"/v2/{repo}/blobs/{layer.digest}").content == layer.data
        elapsed = time.monotonic() - started
    expected = layer.size / rate + 0.2
    # Throttling can only slow a transfer down: the lower bound is the check that holds
    # on a loaded machine; the upper one only catches a proxy that hangs.
    assert expected * 0.8 < elapsed < expected * 3 + 5, (elapsed, expected)
    p.rate, p.latency = None, 0.0
    with registry_client(p.url) as client:
        started = time.monotonic()
        client.get(f"/v2/{repo}/blobs/{layer.digest}")
        unthrottled = time.monotonic() - started
    assert unthrottled < elapsed / 2, (unthrottled, elapsed)  # the limits came off


# --- the deadline ----------------------------------------------------------------------


def test_hanging_tests_fail_at_their_deadline(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F403\n")
    (tmp_path / "test_hang.py").write_text(
        textwrap.dedent(
            """
            import time, pytest, trio

            @pytest.mark.deadline(1)
            def test_sync_hang():
                time.sleep(30)

            @pytest.mark.deadline(1)
            async def test_trio_hang():
                await trio.sleep(30)

            async def test_fine():
                await trio.sleep(0)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "trio_mode=true",
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 failed, 1 passed" in result.stdout, result.stdout
    assert "exceeded its deadline of 1 s" in result.stdout
    assert "Cancelled" in result.stdout  # the trio test was cancelled, not killed
    assert elapsed < 20


def test_push_blob_file_and_challenge_reply(
    registry: RegistryServer,
    tmp_path: Path,
    unique_repo: str,
    fixture_server: Callable[[], FixtureServer],
) -> None:
    layer = images.make_layer("file", size=300_000)
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(layer.data)
    with registry.client() as client:
        assert images.push_blob_file(client, unique_repo, path) == layer.digest
        assert client.get(f"/v2/{unique_repo}/blobs/{layer.digest}").content == layer.data
    server = fixture_server()
    server.route("/v2/", Reply.challenge(server.url + "/token", "svc", "repository:a:pull"))
    response = httpx.get(server.url + "/v2/")
    scheme, params = parse_challenge(response.headers["www-authenticate"])
    assert (response.status_code, scheme, params["scope"]) == (401, "bearer", "repository:a:pull")
