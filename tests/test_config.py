"""The configuration objects refuse values no pull can run with (stages/_config.py)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from stages._config import (
    _LEAST_COUNTS,
    _MOST_COUNTS,
    _POSITIVE_SECONDS,
    Credentials,
    Limits,
    RegistryOptions,
)
from stages._errors import UsageError


def test_every_limit_is_checked() -> None:
    # A new field must say what it accepts, or it could take a value that hangs a pull.
    checked = set(_LEAST_COUNTS) | set(_POSITIVE_SECONDS) | {"gzip_inflater"}
    assert {f.name for f in dataclasses.fields(Limits)} == checked


def test_the_defaults_and_the_least_and_most_values_are_accepted() -> None:
    Limits()
    Limits(**_LEAST_COUNTS, **{name: 0.001 for name in _POSITIVE_SECONDS})
    Limits(**_MOST_COUNTS)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("inflate_step_bytes", 0),  # looped for ever in its worker thread
        ("chunk_size", 0),
        ("chunk_size", -5),
        ("chunk_size", 2.5),
        ("chunk_size", True),
        ("chunk_buffer", -1),
        ("pipe_buffer", 0),
        ("max_redirects", -1),
        ("read_timeout_s", -1),
        ("connect_timeout_s", 0),
        ("transfer_window_s", math.nan),
        ("read_timeout_s", "60"),
        ("gzip_inflater", None),
        ("chunk_size", 2**40),  # a MemoryError at the first socket read
        ("inflate_step_bytes", 64 * 1024 * 1024 + 1),
        ("max_zstd_window_bytes", 1000),  # zstd refused it, and every zstd layer failed
        ("max_zstd_window_bytes", 2**31 + 1),
    ],
)
def test_values_no_pull_can_run_with_are_usage_errors(field: str, value: Any) -> None:
    with pytest.raises(UsageError, match=f"Limits.{field} must be"):
        Limits(**{field: value})


def test_registry_options_of_the_right_kinds_are_accepted(tmp_path: Path) -> None:
    RegistryOptions()
    RegistryOptions(
        ca_file=tmp_path / "ca.pem",
        insecure_registries=("reg.example:5000", "10.0.0.1"),
        credentials=Credentials("ci", "secret"),
        user_agent="my-tool/1.2 (linux)",
    )
    RegistryOptions(ca_file=str(tmp_path / "ca.pem"))  # str(options.ca_file) is what is used


@pytest.mark.parametrize(
    ("field", "value"),
    [
        # One host as a string was iterated a character at a time: "r" and "5" became
        # insecure hosts and the registry itself was not.
        ("insecure_registries", "reg.example:5000"),
        ("insecure_registries", ("reg.example:5000", 5000)),
        ("insecure_registries", ("",)),
        ("credentials", ("ci", "secret")),  # an AttributeError before the first request
        ("ca_file", 123),
        ("user_agent", None),  # a TypeError from httpx, mid-pull
        ("user_agent", ""),
        ("user_agent", "tool\r\nX-Injected: 1"),
        ("user_agent", "outil-é"),  # headers are ASCII: a UnicodeEncodeError mid-pull
    ],
)
def test_registry_options_of_the_wrong_kinds_are_usage_errors(field: str, value: Any) -> None:
    with pytest.raises(UsageError, match=f"RegistryOptions.{field} must be"):
        RegistryOptions(**{field: value})


@pytest.mark.parametrize("field", ["username", "password", "identity_token", "source", "registry"])
@pytest.mark.parametrize("value", [None, 1234, b"bytes"])
def test_credentials_that_are_not_strings_are_usage_errors_that_do_not_show_them(
    field: str, value: Any
) -> None:
    # A password of None or 1234 was an AttributeError after requests were sent.
    fields: dict[str, Any] = {"username": "ci", "password": "pw", field: value}
    with pytest.raises(UsageError) as raised:
        Credentials(**fields)
    # the kind, never the value: it may be a secret
    assert str(raised.value) == f"Credentials.{field} must be a str, not {type(value).__name__}"
