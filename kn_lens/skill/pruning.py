"""Pruning guided by skill neurons: keep the neurons that matter, fix the rest at their means.

Context:
    Wang et al. (sec. 6.1) prune a prompt-tuned model by keeping only the top skill neurons of each layer. A
    dropped neuron always outputs its mean activation ``m_n`` (:func:`task_mean_activations`, over every token
    of the prompted train texts), so its contribution ``m_n * W_out[n]`` is a constant that folds into the MLP's
    output bias; its column of ``W_in`` and its row of ``W_out`` can go. :func:`prune` returns that smaller
    model, of the same TransformerLens class, so every kn_lens tool works on it.

Intuition:
    Fixing a neuron at its mean is the "mean" perturbation at every position at once. If the skill neurons carry
    the task, the pruned model keeps most of its accuracy while random pruning of the same size does not
    (:func:`kn_lens.plotting.pruning_curve` draws the two).

Caveats:
    The pruned model equals the original with the dropped neurons held at their means (up to float rounding),
    not the original itself: the means belong to the prompt and the texts they were measured on. Pruning needs a
    dense MLP of a ``HookedTransformer`` / ``HookedEncoder``; a ``TransformerBridge`` wraps a transformers model
    that kn_lens cannot resize.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from kn_lens import backends
from kn_lens._device import accumulator_dtype, evaluating
from kn_lens._progress import progress_bar
from kn_lens._typing import Model, check_model, hook_name
from kn_lens.skill.prompting import PromptLike, _batches, _encode, as_prompt
from kn_lens.skill.tasks import Split, Task, _as_split


@evaluating
@torch.inference_mode()
def task_mean_activations(
    model: Model,
    data: Task | Split | tuple | Sequence[str],
    *,
    prompt: PromptLike = None,
    split: str = "train",
    batch_size: int = 32,
    progress: bool = True,
) -> Float[Tensor, "n_layers d_mlp"]:
    """Every neuron's mean ``mlp_post`` activation over all token positions of the prompted texts.

    The constants :func:`prune` folds into the MLP output biases (each token counts once). Also importable as
    ``kn_lens.skill.mean_activations``, its former name (an alias, kept working). Not to be confused with
    :func:`kn_lens.cache.mean_activations`: that one averages plain prompts per layer (``{layer: [d_mlp]}``) for
    mean ablation; this one runs each text under a skill prompt and returns one ``[n_layers, d_mlp]`` tensor.

    Example:
        >>> means = task_mean_activations(bert, task, prompt=soft, progress=False)  # train split
        >>> means.shape
        torch.Size([2, 1024])
    """
    check_model(model)
    prompt = as_prompt(model, prompt)
    texts = (
        list(data) if isinstance(data, list) and all(isinstance(t, str) for t in data) else _as_split(data, split).texts
    )
    if not texts:
        raise ValueError("no texts to average over")
    layout = prompt.layout(model)
    token_lists = _encode(model, layout, texts)
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    sums = torch.zeros(n_layers, d_mlp, dtype=torch.float64)
    count = 0
    for chunk in progress_bar(_batches(token_lists, batch_size), "mean activations", enabled=progress, inner=True):
        tokens = torch.tensor([token_lists[i] for i in chunk], device=model.cfg.device)

        def add(activation: Tensor, hook: Any, layer: int) -> None:  # summed on the device (MPS: no float64)
            sums[layer] += activation.sum((0, 1), dtype=accumulator_dtype(activation.device)).cpu().double()

        hooks = [(hook_name(layer), functools.partial(add, layer=layer)) for layer in range(n_layers)]
        model.run_with_hooks(tokens, fwd_hooks=list(prompt.hooks(model)) + hooks)
        count += tokens.numel()
    return (sums / count).float()


def _take(weight: Tensor, dim: int, kept: Tensor, pad: int) -> torch.nn.Parameter:
    """``weight``'s slices ``kept`` along ``dim``, then ``pad`` zero slices."""
    part = weight.index_select(dim, kept)
    if pad:
        shape = list(part.shape)
        shape[dim] = pad
        part = torch.cat([part, part.new_zeros(shape)], dim=dim)
    return torch.nn.Parameter(part.contiguous(), requires_grad=weight.requires_grad)


def prune(model: Model, keep: Tensor, means: Tensor) -> Model:
    """A smaller copy of ``model`` that keeps only the ``keep`` neurons; the others are fixed at their means.

    Wang et al.'s pruning (sec. 6.1): a dropped neuron ``n`` of layer ``L`` always outputs its mean ``m_n``, so
    its contribution ``m_n * W_out[L][n]`` is a constant, added to ``b_out[L]``; its column of ``W_in`` (and
    ``W_gate``, ``b_in``) and its row of ``W_out`` are removed. The copy is a model of the same class with
    ``cfg.d_mlp`` = the largest number kept in a layer; layers that keep fewer get padding neurons with zero
    weights (they add nothing). Keep the same number per layer (``Predictivity.mask(f, per_layer=True)``) for
    a model with no padding. Neuron ``i`` of the pruned layer ``L`` is original neuron
    ``keep[L].nonzero()[i]``.

    The original model is not changed. The copy's logits equal the original's with the dropped neurons set
    to their means at every position (``kn_lens.hooks.set``), up to float rounding.

    Args:
        model: a ``HookedTransformer`` or ``HookedEncoder`` with plain (dense) MLPs.
        keep: boolean ``[n_layers, d_mlp]``: the neurons to keep (at least one per layer).
        means: ``[n_layers, d_mlp]`` mean activations (:func:`task_mean_activations`), the values dropped neurons
            are fixed at.

    Returns:
        The pruned model (eval mode, same tokenizer).

    Example:
        >>> from kn_lens.skill import accuracy
        >>> keep = skill.mask(0.8, per_layer=True)  # the best 80% of each layer
        >>> small = prune(bert, keep, task_mean_activations(bert, task, prompt=soft, progress=False))
        >>> small.cfg.d_mlp, bert.cfg.d_mlp
        (819, 1024)
        >>> accuracy(small, task, prompt=soft, progress=False)
        1.0
    """
    check_model(model)
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    if not isinstance(keep, Tensor) or keep.dtype != torch.bool or tuple(keep.shape) != (n_layers, d_mlp):
        raise ValueError(f"keep must be a boolean [{n_layers}, {d_mlp}] mask")
    if not isinstance(means, Tensor) or tuple(means.shape) != (n_layers, d_mlp):
        raise ValueError(f"means must be a [{n_layers}, {d_mlp}] tensor (kn_lens.skill.task_mean_activations)")
    if not torch.isfinite(means).all():
        raise ValueError("means contains NaN or infinite values")
    counts = keep.sum(1)
    if int(counts.min()) < 1:
        raise ValueError("every layer must keep at least one neuron")
    if backends.is_bridge(model):
        raise TypeError(
            "prune builds a smaller HookedTransformer / HookedEncoder and cannot resize a TransformerBridge's "
            "wrapped transformers model; load the model with backend='hooked' to prune it"
        )
    if str(getattr(model.cfg, "act_fn", "")).endswith("_ln"):
        raise ValueError(f"act_fn {model.cfg.act_fn} normalises across neurons: dropping neurons would change the rest")
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(hasattr(b.mlp, "W_in") and hasattr(b.mlp, "b_out") for b in blocks):
        raise TypeError("pruning needs a HookedTransformer / HookedEncoder with dense MLPs (W_in, W_out, b_out)")
    width = int(counts.max())
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for layer, block in enumerate(pruned.blocks):
            mlp = block.mlp
            kept = keep[layer].nonzero().flatten().to(mlp.W_in.device)
            dropped = (~keep[layer]).nonzero().flatten().to(mlp.W_in.device)
            w_out = mlp.W_out
            acc = accumulator_dtype(w_out.device)  # float64 where the device has it (MPS: float32)
            constant = means[layer].to(w_out.device).to(acc)[dropped] @ w_out[dropped].to(acc)
            pad = width - len(kept)

            mlp.W_in = _take(mlp.W_in, 1, kept, pad)
            if getattr(mlp, "W_gate", None) is not None:
                mlp.W_gate = _take(mlp.W_gate, 1, kept, pad)
            if getattr(mlp, "b_in", None) is not None:
                mlp.b_in = _take(mlp.b_in, 0, kept, pad)
            mlp.W_out = _take(w_out, 0, kept, pad)
            mlp.b_out = torch.nn.Parameter((mlp.b_out.to(acc) + constant).to(mlp.b_out.dtype))
            mlp.d_mlp = width
    pruned.cfg.d_mlp = width
    return pruned.eval()


#: The former name of :func:`task_mean_activations`, kept working (``kn_lens.skill.mean_activations``).
mean_activations = task_mean_activations


__all__ = ["mean_activations", "prune", "task_mean_activations"]
