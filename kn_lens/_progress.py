"""Progress bars: the one place kn_lens makes them.

Every function with ``progress=True`` shows a ``tqdm`` bar through :func:`progress_bar`, so the bars behave alike:
hidden when ``progress`` is False, inner bars (passes of one call) erased when done (``leave=False``), outer bars
(facts, prompts of a sweep) kept. A bar over a single item is not worth drawing (``min_items``).

Example:
    >>> from kn_lens._progress import progress_bar
    >>> [x * 2 for x in progress_bar(range(3), "doubling", enabled=False)]
    [0, 2, 4]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_bar(
    items: Iterable[T] | None = None,
    desc: str = "",
    *,
    enabled: bool = True,
    inner: bool = False,
    total: int | None = None,
    min_items: int = 1,
    **kwargs,
) -> tqdm:
    """A ``tqdm`` bar over ``items`` (or a manual bar of ``total`` steps when ``items`` is None).

    Args:
        items: what to iterate over; None for a bar moved by ``bar.update()``.
        desc: the bar's label.
        enabled: False hides the bar (the caller's ``progress`` argument).
        inner: a bar inside another call's work (passes of one attribution): erased when done.
        total: the number of steps (default: ``len(items)`` where it has one).
        min_items: hide the bar when there are fewer steps than this.
        **kwargs: passed on to ``tqdm`` (``position``, ``file``, ``mininterval``, ...).
    """
    if total is None and items is not None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    hidden = not enabled or (total is not None and total < min_items)
    kwargs.setdefault("leave", not inner)
    return tqdm(items, desc=desc, total=total, disable=hidden, **kwargs)
