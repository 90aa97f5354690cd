"""Gradient x activation and attribution patching: one forward and backward for every neuron of every layer.

Both read the clean activations ``a`` at the site and the total derivative ``dF/da`` of the objective there (later
layers respond to the neuron as usual). Gradient x activation, ``(a - b) * dF/da``, is integrated gradients with a
single step at ``alpha = 1``; attribution patching, ``(a - a_ablated) * dF/da``, is the linear estimate of the
exact :func:`~kn_lens.attribution.ablation_effects`. Both are cheap and both are only first-order: a saturated
neuron (the softmax near 1) gets a small gradient however much it matters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from kn_lens._device import evaluating
from kn_lens._typing import Model, hook_name
from kn_lens.attribution._common import Baseline, baselines_per_layer, check_call, mean_over_target_tokens, run_logits
from kn_lens.attribution.ablation import ablated_values, check_mode
from kn_lens.prompts import Prompt, TargetLike
from kn_lens.scoring import Objective, objective_from_logits, with_grad

if TYPE_CHECKING:  # annotations only
    from transformer_lens import ActivationCache

    from kn_lens.cache import MLPPostCache

__all__ = ["attribution_patching", "grad_x_activation"]


@with_grad
def _site_grads(
    model: Model, prompt: Prompt, layers: list[int], objective: Objective, hook: str
) -> tuple[Float[Tensor, "layer d_mlp"], Float[Tensor, "layer d_mlp"]]:
    """Clean activations at the site and the total derivative of the objective with respect to them."""
    acts: dict[str, Tensor] = {}

    def keep(act: Tensor, hook) -> None:
        acts[hook.name] = act

    names = [hook_name(layer, hook) for layer in layers]
    logits = run_logits(model, prompt, 1, [(name, keep) for name in names])
    f = objective_from_logits(logits, prompt, objective)  # type: ignore[arg-type]
    tensors = [acts[name] for name in names]
    grads = torch.autograd.grad(f.sum(), tensors, allow_unused=True)
    site = prompt.site
    act = torch.stack([t[0, site].detach() for t in tensors])
    grad = torch.stack(
        [torch.zeros_like(t[0, site]) if g is None else g[0, site] for t, g in zip(tensors, grads, strict=True)]
    )
    return act, grad


@evaluating
def grad_x_activation(
    model: Model,
    prompt: str | Prompt,
    target: TargetLike = None,
    *,
    layers: int | Sequence[int] | None = None,
    objective: Objective = "prob",
    hook: str = "mlp_post",
    baseline: Baseline = "zero",
) -> Float[Tensor, "layer d_mlp"]:
    """Gradient x activation at the site: ``(a - b) * dF/da``, one forward and backward for all layers.

    The gradient is the total derivative at the clean run (later layers respond to the neuron as usual). It
    equals integrated gradients with a single step at ``alpha = 1`` (``method="riemann_right", n_steps=1``).

    Args:
        model: the model.
        prompt: text (with ``target``) or a Prompt.
        target: the answer.
        layers: blocks to score (None = all), ascending.
        objective: "prob", "logprob" or "logit".
        hook: MLP hook point (see :data:`HOOKS`).
        baseline: "zero" or a tensor ``[d_mlp]`` / ``[n_layers, d_mlp]``.

    Returns:
        ``Float[Tensor, "layer d_mlp"]`` (float32, CPU).

    Example:
        >>> grad_x_activation(model, "The capital of France is", " Paris").shape
        torch.Size([30, 1536])
    """
    prompt, layer_list = check_call(model, prompt, target, layers, objective, hook)
    baselines = baselines_per_layer(model, baseline, layer_list, model.cfg.d_mlp, model.cfg.device)

    def one(part: Prompt) -> Tensor:
        act, grad = _site_grads(model, part, layer_list, objective, hook)
        diff = act.float() if baselines is None else act.float() - baselines.float()
        return (diff * grad.float()).cpu()

    return mean_over_target_tokens(one, prompt, objective)


@evaluating
def attribution_patching(
    model: Model,
    prompt: str | Prompt,
    target: TargetLike = None,
    *,
    layers: int | Sequence[int] | None = None,
    mode: Literal["zero", "mean"] = "zero",
    mean_cache: MLPPostCache | ActivationCache | Mapping[int, Tensor] | Tensor | None = None,
    objective: Objective = "prob",
    hook: str = "mlp_post",
) -> Float[Tensor, "layer d_mlp"]:
    """Attribution patching: the linear (first-order) estimate of each neuron's ablation effect at the site.

    ``(a - a_ablated) * dF/da``: the predicted loss of the objective when the neuron alone is set to zero
    (``mode="zero"``) or to its mean (``mode="mean"``, with ``mean_cache``); larger = supports the target more,
    like every attribution here. Compare with the exact :func:`ablation_effects`. One forward and backward for all
    layers.

    Args:
        model: the model.
        prompt: text (with ``target``) or a Prompt.
        target: the answer.
        layers: blocks to score (None = all), ascending.
        mode: "zero" or "mean" (with ``mean_cache``), as in :func:`~kn_lens.attribution.ablation_effects`.
        mean_cache: mean activations for ``mode="mean"``, as in :func:`~kn_lens.attribution.ablation_effects`.
        objective: "prob", "logprob" or "logit".
        hook: MLP hook point (see :data:`HOOKS`).

    Returns:
        ``Float[Tensor, "layer d_mlp"]`` (float32, CPU); positive = ablating the neuron lowers the objective.

    Example:
        >>> est = attribution_patching(model, "The capital of France is", " Paris", layers=[24])
    """
    prompt, layer_list = check_call(model, prompt, target, layers, objective, hook)
    means = check_mode(model, mode, mean_cache, layer_list, hook)

    def one(part: Prompt) -> Tensor:
        act, grad = _site_grads(model, part, layer_list, objective, hook)
        ablated = ablated_values(means, act)
        return ((act.float() - ablated.float()) * grad.float()).cpu()

    return mean_over_target_tokens(one, prompt, objective)
