"""Exact ablations, one neuron at a time: what the target loses when a neuron is set to zero or to its mean.

:func:`ablation_effects` is the ground truth the gradient methods estimate (attribution patching is its
first-order estimate): ``F(clean) - F(neuron ablated at the site)``, one row per neuron. It is exact but costs a
forward pass per neuron (batched), so restrict ``layers`` to explore; the fast path
(:mod:`~kn_lens.attribution._fast`) starts each row at its own layer and, for causal models, recomputes only the
positions from the site on.

Caveat: the ablated value matters. Zero is far outside the distribution of many neurons (a SiLU/GELU neuron is
rarely exactly 0); the mean over a reference set (``mode="mean"``) is the gentler choice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from kn_lens import inputs
from kn_lens._device import evaluating
from kn_lens._progress import progress_bar
from kn_lens._typing import Model
from kn_lens.attribution import _fast, _memory
from kn_lens.attribution._common import (
    Request,
    check_batch,
    check_call,
    clean_site,
    mean_over_target_tokens,
    plain_row_bytes,
    run_logits,
)
from kn_lens.attribution.paths import choose_path
from kn_lens.inputs import to_means
from kn_lens.prompts import Prompt, TargetLike
from kn_lens.scoring import Objective, objective_from_logits

if TYPE_CHECKING:  # annotations only
    from transformer_lens import ActivationCache

    from kn_lens.cache import MLPPostCache

__all__ = ["ablation_effects"]


def check_mode(
    model: Model, mode: str, mean_cache: Any, layers: list[int], hook: str
) -> Float[Tensor, "layer d_mlp"] | None:
    """Check the ablation mode and read the means once, before any forward pass: None for ``mode="zero"``, else
    one row of means per layer. ``mean_cache`` takes every form :func:`~kn_lens.inputs.to_means` reads
    (``{layer: [d_mlp]}``, an ``MLPPostCache``, a TransformerLens ``ActivationCache`` of ``hook``, a tensor)."""
    if inputs.check_mode(mode) == "zero":
        return None
    if mean_cache is None:
        raise ValueError("mode='mean' needs mean_cache=... (e.g. kn_lens.mean_activations(model, prompts, hook=...))")
    d_mlp = model.cfg.d_mlp
    means = to_means(mean_cache, layers, d_mlp, n_layers=model.cfg.n_layers, hook=hook)
    return torch.stack([means[layer] for layer in layers])


def ablated_values(means: Tensor | None, clean: Tensor) -> Float[Tensor, "layer d_mlp"]:
    """The ablated value of every neuron: 0, or its mean (from :func:`check_mode`)."""
    if means is None:
        return torch.zeros_like(clean)
    return means.to(device=clean.device, dtype=clean.dtype)


@torch.no_grad()
def _ablation_plain(model: Model, prompt: Prompt, request: Request) -> Tensor:
    """Reference ablations: the model's own forward with one neuron per row set to ``request.ablated`` at the site,
    ``request.internal_batch_size`` rows per pass (or as many as fit ``request.memory_budget``)."""
    d_mlp = model.cfg.d_mlp
    site, objective, ablated = prompt.site, request.objective, request.ablated
    batch = request.internal_batch_size
    if batch is None:  # a pass without autograd keeps about a quarter of what a backward pass needs
        room = _memory.budget(request.memory_budget, ablated.device) * _memory.NO_BACKWARD_FACTOR
        batch = _memory.rows_per_pass(plain_row_bytes(model, prompt, objective), room)
    f_clean = objective_from_logits(run_logits(model, prompt, 1, []), prompt, objective)[0]  # type: ignore[arg-type]
    out = torch.zeros(len(request.layers), d_mlp, dtype=torch.float32)
    bar = progress_bar(
        None, "ablations (plain)", enabled=request.progress, inner=True, total=len(request.layers) * d_mlp
    )
    for i, name in enumerate(request.names):
        for start in range(0, d_mlp, batch):
            idx = torch.arange(start, min(start + batch, d_mlp), device=ablated.device)

            def set_one(act: Tensor, hook, idx=idx, i=i) -> Tensor:
                act = act.clone()
                rows = torch.arange(len(idx), device=act.device)
                act[rows, site, idx] = ablated[i, idx].to(act.dtype)
                return act

            logits = run_logits(model, prompt, len(idx), [(name, set_one)])
            f = objective_from_logits(logits, prompt, objective)  # type: ignore[arg-type]
            out[i, start : start + len(idx)] = (f_clean - f).float().cpu()  # larger = supports the target
            bar.update(len(idx))
    bar.close()
    return out


@evaluating
def ablation_effects(
    model: Model,
    prompt: str | Prompt,
    target: TargetLike = None,
    *,
    layers: int | Sequence[int] | None = None,
    mode: Literal["zero", "mean"] = "zero",
    mean_cache: MLPPostCache | ActivationCache | Mapping[int, Tensor] | Tensor | None = None,
    objective: Objective = "prob",
    hook: str = "mlp_post",
    internal_batch_size: int | None = None,
    fast: bool = True,
    progress: bool = False,
    memory_budget: float | None = None,
) -> Float[Tensor, "layer d_mlp"]:
    """Exact ablation effects: ``F(clean) - F(neuron ablated at the site)`` for every neuron, in batches.

    Larger = removing the neuron costs the target more (the sign every attribution here shares).

    One row per ablated neuron (``layers x d_mlp`` rows in all: for SmolLM2's 46k neurons this takes minutes on a
    CPU; restrict ``layers`` to explore). The fast path starts each row at its own layer and, for causal models,
    recomputes only the positions from the site on.

    Args:
        model: the model.
        prompt: text (with ``target``) or a Prompt.
        target: the answer.
        layers: blocks to score (None = all), ascending.
        mode: "zero" (set to 0) or "mean" (set to ``mean_cache``).
        mean_cache: mean activations for ``mode="mean"``: ``{layer: [d_mlp]}``
            (:func:`kn_lens.cache.mean_activations`), a :func:`~kn_lens.cache.cache_mlp_post` result, a
            TransformerLens ``ActivationCache``, or a tensor ``[n_layers, d_mlp]`` / ``[d_mlp]``.
        objective: "prob", "logprob" or "logit".
        hook: MLP hook point (see :data:`HOOKS`).
        internal_batch_size: ablated neurons per forward pass (None: as many as fit ``memory_budget``).
        fast: use the fast path (same numbers to float32 rounding).
        progress: progress bar.
        memory_budget: bytes one pass may use (None: the device's default; see
            :func:`~kn_lens.attribution.integrated_gradients`).

    Returns:
        ``Float[Tensor, "layer d_mlp"]`` (float32, CPU); positive = ablating the neuron lowers the objective.

    Example:
        >>> effects = ablation_effects(model, "The capital of France is", " Paris", layers=[24])
        >>> effects[0].topk(3)
        torch.return_types.topk(
        values=tensor([0.2982, 0.0489, 0.0294]),
        indices=tensor([1005,  276,  266]))
    """
    prompt, layer_list = check_call(model, prompt, target, layers, objective, hook)
    means = check_mode(model, mode, mean_cache, layer_list, hook)
    internal_batch_size = check_batch(internal_batch_size)
    _memory.check_budget(memory_budget)
    request = Request(layers=layer_list, objective=objective, hook=hook, internal_batch_size=internal_batch_size,
                      memory_budget=memory_budget, progress=progress)  # fmt: skip
    path = _ablation_plain if choose_path(model, hook, fast, warn=True)[0] == "plain" else _fast.ablation_effects

    def one(part: Prompt) -> Tensor:
        clean, _ = clean_site(model, part, request.names, objective)
        return path(model, part, dataclasses.replace(request, ablated=ablated_values(means, clean)))

    return mean_over_target_tokens(one, prompt, objective)
