"""Moved to :mod:`kn_lens.evaluation.report` (one package for the evaluation).

This alias keeps ``kn_lens.report`` imports working and warns with a DeprecationWarning.
"""

import warnings

import kn_lens.evaluation.report as _new
from kn_lens.evaluation.report import *  # noqa: F403

warnings.warn(
    "kn_lens.report is deprecated: import from kn_lens.evaluation.report instead", DeprecationWarning, stacklevel=2
)


def __getattr__(name: str):
    return getattr(_new, name)
