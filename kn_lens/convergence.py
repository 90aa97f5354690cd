"""Moved to :mod:`kn_lens.evaluation.convergence` (one package for the evaluation).

This alias keeps ``kn_lens.convergence`` imports working and warns with a DeprecationWarning.
"""

import warnings

import kn_lens.evaluation.convergence as _new
from kn_lens.evaluation.convergence import *  # noqa: F403

warnings.warn(
    "kn_lens.convergence is deprecated: import from kn_lens.evaluation.convergence instead",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str):
    return getattr(_new, name)
