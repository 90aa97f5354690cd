"""Which implementation an attribution runs on a model, and why: the one dispatcher, :func:`attribution_path`.

Integrated gradients and exact ablations have three implementations with the same numbers (to float32 rounding,
see :data:`PATHS`): the plain reference (the model's own forward, under ``run_with_hooks``) and a fast path per
backend. A fast path computes blocks without the model's hook points, so it would silently bypass hooks a user
attached; :func:`attached_hooks` finds them, and the plain path runs instead (with a warning).

Example:
    >>> attribution_path(model)[0]
    'hooked-fast'
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from transformer_lens.hook_points import HookPoint

from kn_lens._typing import Model, check_model
from kn_lens.attribution import _bridge, _hooked
from kn_lens.attribution._common import check_hook
from kn_lens.backends import is_bridge

__all__ = ["PATHS", "attached_hooks", "attribution_path"]

PATHS: dict[str, str] = {
    "hooked-fast": "the fast path of a HookedTransformer/HookedEncoder: blocks recomputed from their weights, "
    "layers below L and (causal) positions before the site computed once",
    "bridge-fast": "the fast path of a TransformerBridge: its own blocks rerun from layer L + 1, (causal) only "
    "from the site on with the prefix's keys and values frozen",
    "plain": "the plain reference: one run_with_hooks forward and backward per layer (and batch of steps)",
}
"""The implementations :func:`attribution_path` chooses between (all give the same numbers to float32 rounding)."""


def attribution_path(model: Model, hook: str = "mlp_post", fast: bool = True) -> tuple[str, str]:
    """Which implementation integrated gradients and exact ablations take on ``model``, and why (one line).

    The one place the choice is made (:func:`~kn_lens.attribution.integrated_gradients`,
    :func:`~kn_lens.attribution.integrated_gradients_many` and :func:`~kn_lens.attribution.ablation_effects` all
    ask it): ``"hooked-fast"``, ``"bridge-fast"`` or ``"plain"`` (see :data:`PATHS`). The plain path runs when
    ``fast=False``, when the architecture cannot be run the fast way (the reason says why), or when hooks of yours
    are attached to the model (the fast path would bypass them; the plain path honours them). A
    ``TransformerBridge`` is checked once (per model and hook kind) against its own forward on a short probe.

    Args:
        model: the model.
        hook: the MLP hook point attributed (see :data:`~kn_lens._typing.HOOKS`).
        fast: the caller's ``fast=`` argument.

    Returns:
        ``(path, reason)``.

    Example:
        >>> attribution_path(model)
        ('hooked-fast', 'the fast path of a HookedTransformer/HookedEncoder: ...')
        >>> attribution_path(model, fast=False)[0]
        'plain'
    """
    check_model(model)
    check_hook(model, hook)
    return choose_path(model, hook, fast, warn=False)


def unsupported(model: Model, hook: str) -> str | None:
    """Why no fast path can run this model exactly (a one-line reason), or None when one can (either backend)."""
    return _bridge.unsupported(model, hook) if is_bridge(model) else _hooked.unsupported(model, hook)


def choose_path(model: Model, hook: str, fast: bool, *, warn: bool) -> tuple[str, str]:
    """:func:`attribution_path`, with a warning when the plain path runs for a reason the caller may not expect
    (hooks attached: every call; a bridge the fast path cannot run: once per model)."""
    if not fast:
        return "plain", "fast=False: " + PATHS["plain"]
    bridge = is_bridge(model)
    if not bridge:
        reason = _hooked.unsupported(model, hook)
        if reason is not None:
            return "plain", reason
    attached = attached_hooks(model)
    if attached:
        shown = ", ".join(attached[:3]) + (", ..." if len(attached) > 3 else "")
        reason = f"hooks are attached to the model ({shown})"
        if warn:
            warnings.warn(
                f"{reason}; the fast attribution path would bypass them, so the plain path runs instead (same "
                "definition, honours your hooks, slower). Pass fast=False to silence this.",
                UserWarning,
                stacklevel=3,
            )
        return "plain", reason
    if not bridge:
        return "hooked-fast", PATHS["hooked-fast"]
    reason = _bridge.unsupported(model, hook)  # checked only without the user's hooks (the probe runs the model)
    if reason is None:
        return "bridge-fast", PATHS["bridge-fast"]
    if warn and _bridge.warn_once(model):
        warnings.warn(
            f"this TransformerBridge cannot take the fast attribution path: {reason}. The plain path runs instead "
            "(same definition, slower); pass fast=False to silence this.",
            UserWarning,
            stacklevel=3,
        )
    return "plain", reason


# --------------------------------------------------------------------------------------------- the user's hooks


def attached_hooks(model: Model) -> list[str]:
    """Names of the modules of ``model`` that carry forward or backward hooks (TransformerLens hook points included).

    Hooks the libraries keep on a bridge (transformers' output capturing, TransformerLens' own input captures and
    4.x's permanent mirrors of BERT-style MLP hook points) are part of the model, not the user's: not listed.

    Example:
        >>> with model.hooks(fwd_hooks=[("blocks.0.mlp.hook_post", lambda act, hook: act * 0)]):
        ...     attached_hooks(model)
        ['blocks.0.mlp.hook_post']
    """
    found = []
    for name, module in _module_names(model):
        if (
            any(not _library_hook(module, key, fn) for key, fn in module._forward_hooks.items())
            or any(not _library_hook(module, key, fn) for key, fn in module._forward_pre_hooks.items())
            or module._backward_hooks
            or getattr(module, "_backward_pre_hooks", None)
        ):
            found.append(name)
    glob = torch.nn.modules.module
    if any(getattr(glob, kind, None) for kind in ("_global_forward_hooks", "_global_forward_pre_hooks")):
        found.append("<global module hook>")
    return found


def _module_names(model: Model) -> list[tuple[str, torch.nn.Module]]:
    """Every module once, under the name a user knows it by: a hook point's TransformerLens name, else its path
    (a bridge reaches each module also through the wrapped transformers modules: the path with the fewest
    ``_original_component`` steps is kept)."""
    names: dict[int, tuple[str, torch.nn.Module]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        known = names.get(id(module))
        if known is None or path.count("_original_component") < known[0].count("_original_component"):
            names[id(module)] = (path, module)
    out = []
    for path, module in names.values():
        name = getattr(module, "name", None) if isinstance(module, HookPoint) else None
        out.append((name if isinstance(name, str) and name else path, module))
    return out


def _library_hook(module: torch.nn.Module, key: int, fn: Callable) -> bool:
    """Whether a forward (pre-)hook belongs to the libraries, not the user: transformers' output capturing and a
    bridge block's input captures (installed on the first forward, inert for the values), or a permanent hook
    TransformerLens put on a bridge's hook point with its own code (4.x mirrors the MLP ``hook_in``/``hook_out`` of
    BERT-style blocks). A hook added to a hook point (``add_hook``, ``hooks()``, ``run_with_hooks``) is the user's."""
    for handle in getattr(module, "fwd_hooks", ()) or ():  # a TransformerLens hook point's hooks
        if getattr(handle.hook, "id", None) == key:
            user = getattr(handle, "user_hook", None)
            return bool(handle.is_permanent) and getattr(user, "__module__", "").startswith("transformer_lens.")
    return getattr(fn, "__module__", "").startswith(("transformers.", "transformer_lens."))
