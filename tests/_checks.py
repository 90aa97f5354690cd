"""Checks shared by several test files."""

from __future__ import annotations

from kn_lens.attribution import attached_hooks


def no_hooks_left(model) -> bool:
    """No hook of ours (or anyone's) is left on ``model``: every hook point is clean and no module carries a hook.

    TransformerLens 4.x keeps permanent hooks of its own on some of a bridge's hook points (BERT-style MLPs); they
    belong to the model, as :func:`kn_lens.attribution.attached_hooks` knows.
    """
    points = model.hook_dict.values()
    clean_points = all(all(h.is_permanent for h in hp.fwd_hooks) and not hp.bwd_hooks for hp in points)
    return clean_points and not attached_hooks(model)
