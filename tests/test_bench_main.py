"""The harness's command line and run hygiene (benchmarks/__main__.py, _measure, _images):
bad arguments are usage errors before anything runs, an interrupted run leaves no
process behind, and a damaged cache is built again instead of being timed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import __main__ as bench_main
from benchmarks import _images, _measure
from benchmarks.__main__ import _csv, main

REPO_ROOT = Path(__file__).resolve().parent.parent


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"  # a zombie is gone too
    except FileNotFoundError:
        return True


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """An argument let through would start a whole run (images, registry, tools): fail."""

    def ran(*args: object) -> int:
        raise AssertionError("the arguments were accepted and the harness ran")

    monkeypatch.setattr(bench_main, "_run", ran)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--runs", "0"], "--runs: must be at least 1, not 0"),
        (["--runs", "-2"], "--runs: must be at least 1"),
        (["--timeout", "-1"], "--timeout: must be above 0"),
        (["--timeout", "0"], "--timeout: must be above 0"),
        (["--throttle", "0"], "--throttle: must be above 0"),
        (["--latency", "-5"], "--latency: must be at least 0"),
        (["--images", ""], "no images given"),
        (["--images", "smal"], "unknown images: smal"),
        (["--tools", "ours,skopeo"], "unknown tools: skopeo"),
        (["--scenarios", "single,fast"], "unknown scenarios: fast"),
        (["--quick", "--images", "small"], "--quick sets --images, --runs and --scenarios"),
        (["--out", "report.json"], "--out names the Markdown report"),
        (["--ours-variant", "nolabel"], "--ours-variant wants LABEL="),
        (["--ours-variant", "naive=--quiet"], "'naive': that name is taken"),
        # The label names a folder that each run deletes: these named other folders.
        (["--ours-variant", "/tmp/x=--quiet"], "a label is letters, digits"),
        (["--ours-variant", "..=--quiet"], "a label is letters, digits"),
        (["--ours-variant", "a/b=--quiet"], "a label is letters, digits"),
        (["--throttle", "nan"], "--throttle: not a finite number"),
        (["--timeout", "inf"], "--timeout: not a finite number"),
    ],
)
def test_bad_arguments_are_usage_errors_before_anything_runs(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], no_run: None
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_an_out_path_that_cannot_be_written_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_run: None
) -> None:
    for out, message in [
        (tmp_path, "is a directory"),
        (Path("/proc/imagec-pipe/report.md"), "cannot make its folder"),
    ]:
        with pytest.raises(SystemExit) as exited:
            main(["--out", str(out)])
        assert exited.value.code == 2
        assert message in capsys.readouterr().err


def test_sigterm_is_not_taken_for_a_failing_scenario() -> None:
    # The loop over scenarios catches Exception so that one failing scenario does not
    # lose the others; SIGTERM must end the run there, not move on to the next one.
    assert not issubclass(bench_main._Terminated, Exception)


def test_names_are_taken_once_in_the_order_given() -> None:
    assert _csv("small,app,small, app ,", ("small", "app", "big"), "images") == ["small", "app"]


def test_an_interrupted_run_kills_the_tool_it_was_timing() -> None:
    # The tool runs in a session of its own, so Ctrl-C or SIGTERM sent to the harness
    # never reached it: it went on after the harness had exited.
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    pid_file = Path(f"/tmp/imagec-bench-test-{os.getpid()}.pid")
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(KeyboardInterrupt):
            _measure.run_measured(
                "sleeper",
                ["sh", "-c", f"sleep 30 & echo $! > {pid_file}; wait"],
                timeout=60,
            )
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    grandchild = int(pid_file.read_text())
    pid_file.unlink()
    for _ in range(50):
        if _gone(grandchild):
            break
        time.sleep(0.1)
    assert _gone(grandchild)


@pytest.mark.registry
def test_sigterm_stops_the_registry_of_the_run(tmp_path: Path) -> None:
    # Without a handler, SIGTERM ended the harness at once, and the registry (started in
    # a session of its own) ran on for ever.
    script = (
        "import signal, sys, time\n"
        "from pathlib import Path\n"
        "from benchmarks.__main__ import _on_sigterm\n"
        "from benchmarks._setup import registry\n"
        "signal.signal(signal.SIGTERM, _on_sigterm)\n"
        "with registry(Path(sys.argv[1])) as server:\n"
        "    print(server.process.pid, flush=True)\n"
        "    for _ in range(600):\n"  # short sleeps: the handler runs within 0.1 s
        "        time.sleep(0.1)\n"
    )
    harness = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    registry_pid = None
    try:
        assert harness.stdout is not None
        registry_pid = int(harness.stdout.readline())
        harness.send_signal(signal.SIGTERM)
        harness.wait(timeout=30)
        stopped = _gone(registry_pid)
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait()
        if harness.stdout is not None:
            harness.stdout.close()
        # A failed run must not leave its registry behind (it has a session of its own).
        if registry_pid is not None and not _gone(registry_pid):
            os.kill(registry_pid, signal.SIGKILL)
    assert stopped


def _record(cache: Path, key: str, blob: bytes, *, path: str) -> None:
    (cache / "blobs").mkdir(parents=True, exist_ok=True)
    (cache / "layers").mkdir(parents=True, exist_ok=True)
    (cache / "blobs" / ("ab" * 32)).write_bytes(blob)
    record = {"blobs": {"gzip": {"digest": "sha256:" + "ab" * 32, "size": 10, "path": path}}}
    (cache / "layers" / f"{key}.json").write_text(json.dumps(record))


def test_a_cached_layer_is_read_from_this_cache_and_checked(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _record(cache, "k", b"0123456789", path="/elsewhere/old-checkout/blob")
    meta = _images._cached_layer(cache, "k")
    assert meta is not None  # whole: used, from this cache, not the path recorded
    assert meta["blobs"]["gzip"]["path"] == str(cache / "blobs" / ("ab" * 32))
    (cache / "blobs" / ("ab" * 32)).write_bytes(b"01234")  # truncated: built again
    assert _images._cached_layer(cache, "k") is None
    (cache / "layers" / "k.json").write_text('{"blobs": {"gz')  # a record cut short
    assert _images._cached_layer(cache, "k") is None
    assert _images._cached_layer(cache, "absent") is None


def test_half_built_blobs_are_removed(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / ".tmp-key.gzip").write_bytes(b"half")
    (blobs / ("cd" * 32)).write_bytes(b"whole")
    _images._remove_partial_builds(tmp_path)
    assert sorted(p.name for p in blobs.iterdir()) == ["cd" * 32]


def test_the_file_pools_hold_only_what_every_user_may_read(tmp_path: Path) -> None:
    # Scanned as root, files only root may read went into the images; scanned as another
    # user, they did not, and the same tags got other images.
    (tmp_path / "open.txt").write_text("text\n" * 10)
    (tmp_path / "private.txt").write_text("secret\n" * 10)
    (tmp_path / "private.txt").chmod(0o600)
    closed = tmp_path / "closed"
    closed.mkdir()
    (closed / "inside.txt").write_text("text\n" * 10)
    closed.chmod(0o700)
    try:
        pools = _images.scan_pools([str(tmp_path)])
    finally:
        closed.chmod(0o755)
    found = sorted(Path(path).name for pool in pools.values() for path, _ in pool)
    assert found == ["open.txt"]


@pytest.mark.registry
def test_a_damaged_blob_in_the_registrys_storage_ends_the_run(tmp_path: Path) -> None:
    # The registry's storage is kept between runs; a manifest that is there says nothing
    # of its blobs, and every run of every tool then failed with no hint of why.
    from benchmarks._images import BuiltImage, BuiltLayer
    from benchmarks._setup import _check_blobs
    from tests.support import images
    from tests.support.registry import run_registry

    with run_registry() as registry:
        layer = images.make_layer("bench-damaged", files={"a.bin": os.urandom(300_000)})
        registry.push("bench/damaged", images.make_image([layer]), "1")
        built = BuiltImage(
            name="damaged",
            repo="bench/damaged",
            tag="1",
            layers=(BuiltLayer(layer.digest, layer.size, "", 0, "", "", "s"),),
            config=b"",
            config_media_type="",
            manifest=b"",
            manifest_media_type="",
        )
        with registry.client() as client:
            _check_blobs(client, built)  # whole: nothing to say
            [data] = registry.storage_dir.glob(f"**/{layer.digest.split(':')[1]}/data")
            os.truncate(data, 1000)
            with pytest.raises(SystemExit, match=r"is damaged .* 1000 bytes, built 300"):
                _check_blobs(client, built)


def test_the_run_fails_when_a_scenario_raised_or_ours_always_failed() -> None:
    ok, failed = {"ok": True}, {"ok": False}
    assert bench_main._what_failed({"single": {"app": {"ours": [ok], "naive": [failed]}}}) == []
    assert bench_main._what_failed({"errors": ["primitives: OSError()"]}) == [
        "scenario failed: primitives: OSError()"
    ]
    assert bench_main._what_failed({"single": {"app": {"ours": [failed, failed]}}}) == [
        "ours failed every run of app: see its stderr in the JSON"
    ]


def test_a_variant_of_ours_failing_every_run_fails_the_run() -> None:
    # rc 0 after every run of a variant failed (12 of 12 timed out), ours not selected.
    failed = {"ok": False}
    results = {
        "ours_family": ["ours", "ours-processes", "ours-6"],
        "single": {"app": {"ours-6": [failed], "ours-processes": [failed, failed]}},
    }
    assert bench_main._what_failed(results) == [
        "ours-processes failed every run of app: see its stderr in the JSON",
        "ours-6 failed every run of app: see its stderr in the JSON",
    ]


def test_only_a_whole_run_replaces_the_committed_report() -> None:
    everything = (
        list(bench_main.ALL_IMAGES),
        list(bench_main.DEFAULT_SCENARIOS),
        list(bench_main.ALL_TOOLS),
    )
    assert bench_main._default_out(*everything) == REPO_ROOT / "benchmarks" / "RESULTS.md"
    images, scenarios, tools = everything
    partial = bench_main.CACHE / "RESULTS-partial.md"
    assert bench_main._default_out(["small", "app"], scenarios, tools) == partial  # --quick
    assert bench_main._default_out(images, ["profile"], tools) == partial
    assert bench_main._default_out(images, scenarios, ["ours", "naive"]) == partial


def test_a_second_run_in_the_same_cache_is_refused_and_the_first_leaves_no_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_main, "CACHE", tmp_path / "cache")
    with bench_main._only_run():
        (tmp_path / "cache" / "runs" / "ours").mkdir(parents=True)
        busy = pytest.raises(bench_main._HarnessBusy, match="another harness run is using")
        with busy, bench_main._only_run():
            pass
        assert (tmp_path / "cache" / "runs" / "ours").is_dir()  # the refused run took nothing
    assert not (tmp_path / "cache" / "runs").exists()
    with bench_main._only_run():  # free again
        pass


def test_a_registry_that_exited_stops_the_run() -> None:
    class Server:
        process = subprocess.Popen(["sh", "-c", "exit 3"])

    Server.process.wait()
    bench = bench_main.Bench.__new__(bench_main.Bench)
    bench.server = Server()
    with pytest.raises(bench_main.RegistryGone, match="exited with status 3 during the run"):
        bench.check_registry()


def test_the_report_says_what_was_not_run_and_what_is_not_installed() -> None:
    from benchmarks import _report

    machine = {
        "nproc": 2, "cpu": "x", "memory": "1 kB", "kernel": "k", "os": "o", "python": "3",
        "filesystem": "ext4", "registry": "registry 2.8", "skopeo": "not installed",
        "umoci": "umoci version 0.4.7", "isal": "1", "zlib-ng": "1", "zstandard": "1",
    }  # fmt: skip
    results = {
        "date": "today",
        "command": "python -m benchmarks",
        "machine": machine,
        "runs": 1,
        "tools": {"ours": "fetch"},
        "skipped": {"skopeo-oci": "skopeo not installed (Debian: apt-get install skopeo)"},
        "targets": [],
    }
    text = _report.render(results)
    assert "; skopeo not installed; umoci version 0.4.7; " in text
    assert "Not run here:\n- `skopeo-oci`: skopeo not installed" in text
