"""Moved to :mod:`kn_lens.evaluation.demo` (one package for the evaluation).

This alias keeps ``kn_lens.demo`` imports working and warns with a DeprecationWarning.
"""

import warnings

import kn_lens.evaluation.demo as _new
from kn_lens.evaluation.demo import *  # noqa: F403

warnings.warn(
    "kn_lens.demo is deprecated: import from kn_lens.evaluation.demo instead", DeprecationWarning, stacklevel=2
)


def __getattr__(name: str):
    return getattr(_new, name)
