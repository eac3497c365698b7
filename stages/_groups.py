"""Collapsing a nursery's ExceptionGroup into the one error a caller sees.

trio nurseries raise ``ExceptionGroup``s (strict groups), but callers of ``fetch_layer``
and ``pipeline.pull()`` get one exception from the project's tree: the root cause, the
other failures attached as notes. Raise the result after the handler, keeping the root
cause's own cause::

    failure = None
    try:
        ...
    except BaseExceptionGroup as group:
        failure = collapse_exception_group(group)
    if failure is not None:
        raise failure from failure.__cause__

Not inside the handler: raised there, the error takes the group as its ``__context__``
while the group holds the error, a cycle that pickle cannot follow (it recursed until
RecursionError when a layer worker process handed its error back to the parent).
"""

from __future__ import annotations

import trio

from ._errors import ImagecError

__all__ = ["collapse_exception_group"]

# What sibling tasks raise because another task failed first: the nursery cancelled
# them, or the channel they were using lost its other end.
_CONSEQUENCES = (trio.Cancelled, trio.BrokenResourceError, trio.ClosedResourceError)


def collapse_exception_group(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first ``ImagecError`` in ``group`` (depth first, in the order the tasks
    failed), with every other ``ImagecError`` named in its ``__notes__``.

    A group of nothing but ``trio.Cancelled`` (the caller cancelled a pull while its
    layers ran) becomes its first one: as a pull cancelled before its layers started,
    it raises one ``Cancelled``, which the caller's cancel scope catches either way.

    ``group`` itself is returned when it holds no ``ImagecError``, or holds anything
    besides them that is not merely a consequence of a sibling's failure (a bug, a
    ``KeyboardInterrupt``): that must not be hidden behind a tidy message.
    """
    errors, rest = group.split(ImagecError)
    if errors is None:
        _, not_cancelled = group.split(trio.Cancelled)
        return _leaves(group)[0] if not_cancelled is None else group
    if rest is not None:
        _, unexplained = rest.split(_CONSEQUENCES)
        if unexplained is not None:
            return group
    leaves = list(_leaves(errors))
    root = leaves[0]
    for other in leaves[1:]:
        if other is not root:
            root.add_note(f"also failed: {type(other).__name__}: {other}")
    return root


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out
