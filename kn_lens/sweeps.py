"""Moved to :mod:`kn_lens.evaluation.sweeps` (one package for the evaluation).

This alias keeps ``kn_lens.sweeps`` imports working and warns with a DeprecationWarning.
"""

import warnings

import kn_lens.evaluation.sweeps as _new
from kn_lens.evaluation.sweeps import *  # noqa: F403

warnings.warn(
    "kn_lens.sweeps is deprecated: import from kn_lens.evaluation.sweeps instead", DeprecationWarning, stacklevel=2
)


def __getattr__(name: str):
    return getattr(_new, name)
