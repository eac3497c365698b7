"""stages/_log.py: structlog imported by the first line logged, not by start-up.

The import-free path can only be seen in a fresh process (the tests' own imports
structlog), so those tests run one: a real pull from the test registry, or a few log calls.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio
from structlog.testing import capture_logs

from stages._log import get_logger, log_context
from tests.test_cli import cli_env

# Pulls in a child process and says, on the last line of stdout, whether structlog was
# imported; the exit code is the CLI's.
_PULL_AND_TELL = (
    "import sys\n"
    "from pipeline._cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('structlog imported:', 'structlog' in sys.modules, 'asyncio' in sys.modules)\n"
    "sys.exit(code)\n"
)


def _python(*argv: str) -> subprocess.CompletedProcess[str]:
    """Python run on ``argv`` in a fresh process, with these sources."""
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, env=cli_env(), timeout=60
    )


def _pull(*argv: str) -> subprocess.CompletedProcess[str]:
    return _python("-c", _PULL_AND_TELL, "pull", *argv)


def test_e2e_a_pull_that_logs_nothing_never_imports_structlog(
    registry: Any, unique_repo: str, unique_seed: str, tmp_path: Path
) -> None:
    """At the default level a pull logs nothing, so structlog (and the asyncio it imports)
    is never imported; at debug the same pull logs its records, with the reference bound
    by ``log_context``, through the configuration ``configure_logging`` asked for."""
    from tests.support import images

    registry.push(unique_repo, images.sample_image(unique_seed), "1.0")
    ref = registry.ref(unique_repo, "1.0")

    quiet = _pull(ref, "--store", str(tmp_path / "a"))
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.splitlines()[-1] == "structlog imported: False False"
    assert quiet.stderr == ""

    debug = _pull(ref, "--store", str(tmp_path / "b"), "--log-level", "debug", "--log-json")
    assert debug.returncode == 0, debug.stderr
    assert debug.stdout.splitlines()[-1] == "structlog imported: True True"
    records = [json.loads(line) for line in debug.stderr.splitlines()]
    assert records, debug.stderr
    assert {record["level"] for record in records} <= {"debug", "info"}
    assert all("timestamp" in record for record in records)  # our processors, applied
    layer_records = [record for record in records if "digest" in record]
    assert layer_records and all(record["ref"] == ref for record in layer_records)


_LOG_AND_TELL = """
import sys, io
from pipeline._logging import configure_logging
from stages._log import get_logger, log_context

log = get_logger()
configure_logging(level="warning", json=True, defer_import=True)  # as the CLI does
log.info("below the level")
log.debug("below it too")
print("after info:", "structlog" in sys.modules)
with log_context(ref="reg.example/app:1"):
    log.warning("slow registry", digest="sha256:ab")
print("after warning:", "structlog" in sys.modules)
log.info("below the level, now structlog's to drop")
configure_logging(level="info", json=True)  # structlog imported: applied at once
log.info("at the new level")
"""


def test_lines_below_the_level_stop_before_structlog_is_imported() -> None:
    done = _python("-c", _LOG_AND_TELL)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["after info: False", "after warning: True"]
    first, second = (json.loads(line) for line in done.stderr.splitlines())
    assert {k: first[k] for k in ("event", "ref", "digest", "level")} == {
        "event": "slow registry",
        "ref": "reg.example/app:1",
        "digest": "sha256:ab",
        "level": "warning",
    }
    assert (second["event"], second["level"]) == ("at the new level", "info")


def test_log_context_binds_fields_for_the_block_and_the_tasks_it_starts() -> None:
    log = get_logger()

    async def child() -> None:
        log.warning("in a child task")

    async def main() -> None:
        with trio.fail_after(10):
            with log_context(ref="r1"):
                with log_context(digest="d1"):
                    log.warning("nested", ref="given")  # a field given wins over the bound
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(child)
            log.warning("after")

    with capture_logs() as logs:
        trio.run(main)
    assert [{k: v for k, v in line.items() if k != "log_level"} for line in logs] == [
        {"event": "nested", "ref": "given", "digest": "d1"},
        {"event": "in a child task", "ref": "r1"},
        {"event": "after"},
    ]


_HOST = """
import sys
import pipeline
from stages._log import get_logger, log_context

pipeline.configure_logging(level="info", json=True)  # a library host's call
print("imported:", "structlog" in sys.modules)
import structlog  # the host's own logging, imported later

structlog.get_logger().info("host line", password="hunter2", url="https://bob:s3cret@x.example/b")
seen = []

def keep(logger, method, event_dict):
    seen.append(dict(event_dict))
    raise structlog.DropEvent

structlog.configure(processors=[structlog.contextvars.merge_contextvars, keep])
with log_context(ref="reg.example/app:1"):
    get_logger().info("our line")
    structlog.get_logger().info("the host's line in our block")
print("seen:", sorted((line["event"], line.get("ref")) for line in seen))
"""


def test_a_library_host_gets_its_configuration_at_once_and_keeps_its_own() -> None:
    """``pipeline.configure_logging`` in a host configures structlog when called, as before
    the CLI's deferred import (QA pass): the host's own lines, logged through structlog
    imported later, went to stdout unredacted, and its own ``structlog.configure`` was
    replaced by ours at our first line. The fields of ``log_context`` reach the host's
    lines too, through structlog's ``merge_contextvars``."""
    done = _python("-c", _HOST)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "imported: True",
        "seen: [('our line', 'reg.example/app:1'),"
        " (\"the host's line in our block\", 'reg.example/app:1')]",
    ]
    record = json.loads(done.stderr)
    assert record["event"] == "host line"
    assert record["password"] == "[redacted]"
    assert "s3cret" not in done.stderr
