"""Datasets for evaluating knowledge neurons: :mod:`kn_lens.datasets.pararel` (Elazar et al.'s PARAREL)."""

from kn_lens.datasets import pararel

__all__ = ["pararel"]
