"""Moved to :mod:`kn_lens.evaluation` (one package for the evaluation).

This alias keeps ``kn_lens.evaluate`` imports working and warns with a DeprecationWarning.
"""

import warnings

import kn_lens.evaluation as _new
from kn_lens.evaluation import *  # noqa: F403

warnings.warn(
    "kn_lens.evaluate is deprecated: import from kn_lens.evaluation instead", DeprecationWarning, stacklevel=2
)


def __getattr__(name: str):
    return getattr(_new, name)
