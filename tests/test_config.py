"""The configuration objects refuse values no pull can run with (stages/_config.py)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from stages._config import _LEAST_COUNTS, _POSITIVE_SECONDS, Limits
from stages._errors import UsageError


def test_every_limit_is_checked() -> None:
    # A new field must say what it accepts, or it could take a value that hangs a pull.
    checked = set(_LEAST_COUNTS) | set(_POSITIVE_SECONDS) | {"gzip_inflater"}
    assert {f.name for f in dataclasses.fields(Limits)} == checked


def test_the_defaults_and_the_least_values_are_accepted() -> None:
    Limits()
    Limits(**_LEAST_COUNTS, **{name: 0.001 for name in _POSITIVE_SECONDS})


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
    ],
)
def test_values_no_pull_can_run_with_are_usage_errors(field: str, value: Any) -> None:
    with pytest.raises(UsageError, match=f"Limits.{field} must be"):
        Limits(**{field: value})
