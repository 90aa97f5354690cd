"""Names that moved: a module keeps an old name importable for a while, with a ``DeprecationWarning`` naming the
new home.

Example:
    >>> import warnings
    >>> __getattr__ = moved(__name__, {"scale": "kn_lens.hooks"})
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     fn = __getattr__("scale")
    >>> fn.__module__, str(caught[0].message).split(";")[0]
    ('kn_lens.hooks', 'kn_lens._moved.scale is deprecated')
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def moved(module: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving each old name of ``names`` (``{name: new module}``) from its new module,
    with a ``DeprecationWarning``; any other name raises ``AttributeError`` as usual."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        home = names[name]
        warnings.warn(
            f"{module}.{name} is deprecated; import it from {home} ({home}.{name})", DeprecationWarning, stacklevel=2
        )
        return getattr(importlib.import_module(home), name)

    return __getattr__
