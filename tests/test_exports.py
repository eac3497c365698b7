"""The public API is flat: every name in __all__ exists, and the errors form one tree."""

import ast
import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline
import stages


def test_every_exported_name_exists() -> None:
    for package in (pipeline, stages):
        missing = [name for name in package.__all__ if not hasattr(package, name)]
        assert missing == [], f"{package.__name__} exports missing names {missing}"


def test_pipeline_reexports_the_stage_vocabulary() -> None:
    for name in stages.__all__:
        if name in {"VerifiedLayer"}:
            continue  # a message between stages and the store, not for library users
        assert getattr(pipeline, name) is getattr(stages, name), name


def test_every_error_descends_from_imagec_error() -> None:
    errors = [getattr(pipeline, n) for n in pipeline.__all__ if n.endswith(("Error", "Mismatch"))]
    errors += [
        pipeline.NotFound,
        pipeline.Truncated,
        pipeline.TooManyRequests,
        pipeline.InvalidReference,
    ]
    for error in errors:
        assert issubclass(error, pipeline.ImagecError), error
    assert not issubclass(pipeline.ImagecError, ReferenceError)


def test_import_pipeline_imports_nothing_else() -> None:
    """The ``imagec-pipe`` entry point is imported through this package and must put its
    signal handlers in place before the stack is imported (tests/test_main.py); each
    public name is imported when first used."""
    code = (
        "import sys, pipeline; "
        "print(sorted(m for m in sys.modules if m.startswith('pipeline.') "
        "or m.partition('.')[0] in ('stages', 'trio', 'httpx', 'structlog')))"
    )
    source = Path(pipeline.__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(source)},
        timeout=60,
        check=True,
    )
    assert done.stdout == "[]\n"


def test_type_checkers_see_the_names_and_objects_pipeline_gives() -> None:
    """mypy and IDEs read the imports under ``if TYPE_CHECKING:``; at run time the names
    come from ``__getattr__``. Both must name the same objects, all of ``__all__``."""
    tree = ast.parse(Path(pipeline.__file__).read_text())
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    seen = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom), ast.unparse(node)
        module = importlib.import_module("." * node.level + (node.module or ""), "pipeline")
        for alias in node.names:
            assert alias.asname == alias.name, f"{alias.name} is not re-exported"
            seen[alias.name] = getattr(module, alias.name)
    assert sorted(seen) == sorted(set(pipeline.__all__) - {"__version__"})
    for name, value in seen.items():
        assert getattr(pipeline, name) is value, name


def test_names_are_listed_and_an_unknown_one_is_an_attribute_error() -> None:
    assert set(pipeline.__all__) <= set(dir(pipeline))
    with pytest.raises(AttributeError, match="module 'pipeline' has no attribute 'Pul'"):
        pipeline.Pul  # noqa: B018
    assert not hasattr(pipeline, "Pul")
    namespace: dict[str, object] = {}
    exec("from pipeline import *", namespace)
    assert {name: namespace[name] for name in pipeline.__all__} == {
        name: getattr(pipeline, name) for name in pipeline.__all__
    }


def test_the_store_s_long_waits_have_forms_for_trio_code() -> None:
    """What may block a trio program's event loop for long (a removal's wait for the
    pulls, ``verify``'s reading of every blob, ``open``'s wait for another process's
    lock) has an ``*_async`` form on the exported ``Store``, which the README and the
    package docstring name."""
    readme = (Path(pipeline.__file__).resolve().parent.parent / "README.md").read_text()
    for name in ("prune", "remove_images", "remove_damaged", "verify", "open"):
        form = getattr(pipeline.Store, f"{name}_async")
        assert inspect.iscoroutinefunction(form), name
        assert f"{name}_async(" in readme, name
        assert f"{name}_async" in (pipeline.__doc__ or ""), name
