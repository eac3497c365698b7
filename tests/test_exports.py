"""The public API is flat: every name in __all__ exists, and the errors form one tree."""

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
