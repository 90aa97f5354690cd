"""Fast paths for kn_lens.attribution (work in progress: falls back to the plain reference)."""

from __future__ import annotations


def supports(model, hook: str) -> bool:
    """Whether the fast path handles this model and hook point."""
    return False
