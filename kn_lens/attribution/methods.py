"""One entry point for every attribution method: :func:`attribute` (one prompt) and :func:`attribute_many`.

Every method returns ``[layer, d_mlp]`` with the same sign (larger = the neuron supports the target more), so a
selection rule (:func:`kn_lens.find_knowledge_neurons`) works with any of them: ``attribution=`` names the method.

Example:
    >>> ATTRIBUTIONS
    ('ig', 'grad_x_act', 'attribution_patching', 'ablation')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from jaxtyping import Float
from torch import Tensor

from kn_lens._typing import Model
from kn_lens.attribution._common import many
from kn_lens.attribution.ablation import ablation_effects
from kn_lens.attribution.gradients import attribution_patching, grad_x_activation
from kn_lens.attribution.integrated import integrated_gradients, integrated_gradients_many
from kn_lens.prompts import Prompt, TargetLike

__all__ = ["ATTRIBUTIONS", "attribute", "attribute_many"]

ATTRIBUTIONS: tuple[str, ...] = ("ig", "grad_x_act", "attribution_patching", "ablation")
"""The methods :func:`attribute` knows, by name."""

_FUNCS: dict[str, Callable] = {
    "ig": integrated_gradients,
    "grad_x_act": grad_x_activation,
    "attribution_patching": attribution_patching,
    "ablation": ablation_effects,
}


def _check_attribution(attribution: str) -> Callable:
    if attribution not in _FUNCS:
        raise ValueError(f"unknown attribution {attribution!r}; choose one of {', '.join(ATTRIBUTIONS)}")
    return _FUNCS[attribution]


def attribute(
    model: Model,
    prompt: str | Prompt,
    target: TargetLike = None,
    *,
    attribution: Literal["ig", "grad_x_act", "attribution_patching", "ablation"] = "ig",
    **kwargs,
) -> Float[Tensor, "layer d_mlp"]:
    """One entry point for every attribution of :mod:`kn_lens.attribution`, all returning ``[layer, d_mlp]``.

    Args:
        model: the model.
        prompt: text (with ``target``) or a Prompt.
        target: the answer.
        attribution: "ig" (:func:`integrated_gradients`), "grad_x_act" (:func:`grad_x_activation`),
            "attribution_patching" (:func:`attribution_patching`) or "ablation" (:func:`ablation_effects`).
        **kwargs: keywords of the chosen function.

    Returns:
        ``Float[Tensor, "layer d_mlp"]``.

    Example:
        >>> attribute(model, "The capital of France is", " Paris", attribution="grad_x_act", layers=[24]).shape
        torch.Size([1, 1536])
    """
    return _check_attribution(attribution)(model, prompt, target, **kwargs)


def attribute_many(
    model: Model,
    prompts: Sequence[str | Prompt] | str | Prompt,
    targets: TargetLike | Sequence[TargetLike] = None,
    *,
    attribution: Literal["ig", "grad_x_act", "attribution_patching", "ablation"] = "ig",
    progress: bool = True,
    **kwargs,
) -> Float[Tensor, "prompt layer d_mlp"]:
    """:func:`attribute` for several prompts, stacked: ``[prompt, layer, d_mlp]``.

    Integrated gradients go through :func:`integrated_gradients_many`, which attributes several prompts per fast
    pass (``pack=False`` among ``kwargs``: one at a time); the other attributions run prompt by prompt.

    Example:
        >>> attribute_many(model, ["The capital of France is", "France's capital is"], " Paris",
        ...                attribution="grad_x_act").shape
        torch.Size([2, 30, 1536])
    """
    fn = _check_attribution(attribution)
    if attribution == "ig":  # several prompts per pass on the fast path (pack=False: one at a time)
        return integrated_gradients_many(model, prompts, targets, progress=progress, **kwargs)
    return many(fn, model, prompts, targets, progress, f"{attribution}, prompts", **kwargs)
