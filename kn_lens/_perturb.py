"""Perturbing neurons the way Wang et al. (2022) test skill neurons: Gaussian noise, zero or the mean, at positions
that do not depend on the prompts. Part of :mod:`kn_lens.hooks` (``kn_lens.hooks.perturb``), which re-exports it.

Example:
    >>> [name for name, _ in perturb(["L1N3", "L0N7"], "zero")]
    ['blocks.0.mlp.hook_post', 'blocks.1.mlp.hook_post']
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from kn_lens._typing import HookList, Model, Neuron, group_by_layer, hook_name
from kn_lens.inputs import (
    PERTURBATION_KINDS,
    NeuronsLike,
    check_finite,
    check_int,
    check_mode,
    check_number,
    fixed_positions,
    to_means,
    to_neurons,
)

if TYPE_CHECKING:  # annotations only
    from transformer_lens import ActivationCache

    from kn_lens.cache import MLPPostCache


def perturb_hook(
    activation: Float[Tensor, "batch pos d_mlp"],
    hook: HookPoint,
    *,
    kind: Literal["gaussian", "zero", "mean"],
    indices: tuple[int, ...],
    positions: tuple[int, ...] | None,
    std: float = 0.0,
    mean: Tensor | None = None,
    seed: int = 0,
) -> Float[Tensor, "batch pos d_mlp"]:
    """Perturb ``activation[..., indices]`` at ``positions`` (None = every position); see :func:`perturb`.

    ``mean`` is ``[k]`` (one value per neuron) or ``[len(positions), k]`` (one per position and neuron). Gaussian
    noise comes from a generator seeded with ``seed`` on every call, so the same input gets the same noise.
    """
    _, n_pos, d_mlp = activation.shape
    if max(indices) >= d_mlp:
        raise ValueError(f"neuron index {max(indices)} is out of range at {hook.name}: the layer has {d_mlp} neurons")
    if positions is None:
        pos = torch.arange(n_pos, device=activation.device)
    else:
        if min(positions) < -n_pos or max(positions) >= n_pos:
            raise ValueError(f"perturbation positions {list(positions)} are outside the {n_pos} positions of the input")
        pos = torch.tensor([p % n_pos for p in positions], device=activation.device)
    index = torch.tensor(indices, device=activation.device)
    rows, cols = pos[:, None], index[None, :]
    old = activation[:, rows, cols]  # [batch, P, k]
    if kind == "zero":
        new = torch.zeros_like(old)
    elif kind == "mean":
        new = torch.broadcast_to(mean.to(device=activation.device, dtype=activation.dtype), old.shape)
    else:
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(old.shape, generator=generator, dtype=torch.float32)
        new = old + std * noise.to(device=activation.device, dtype=activation.dtype)
    out = activation.clone()
    out[:, rows, cols] = new
    return out


def perturb(
    neurons: NeuronsLike,
    kind: Literal["gaussian", "zero", "mean"] = "gaussian",
    *,
    std: float = 0.1,
    seed: int = 0,
    positions: Literal["all", "last"] | int | Sequence[int] = "all",
    mean_cache: MLPPostCache | ActivationCache | Mapping[int, Tensor] | Tensor | None = None,
    layers: Iterable[int] | None = None,
    model: Model | None = None,
) -> HookList:
    """Perturb neurons the way Wang et al. (2022) test skill neurons: Gaussian noise, zero or the mean.

    Args:
        neurons: the neurons: a list of ``Neuron``/``(layer, index)``/``"L9N1094"``, a result with
            ``.neurons``, or a boolean mask ``[n_layers, d_mlp]`` (e.g. ``Predictivity.mask(0.01)``).
        kind: ``"gaussian"`` adds noise N(0, ``std``²) to the activation; ``"zero"`` sets it to 0; ``"mean"``
            sets it to ``mean``.
        std: the noise's standard deviation (``kind="gaussian"``), a finite number >= 0.
        seed: the noise's seed (one generator per layer: seed + layer); same seed, same noise.
        positions: ``"all"``, ``"last"`` or the positions to perturb (ints, negative from the end), e.g. a soft
            prompt's positions (``Predictivity.positions``); read by :func:`~kn_lens.inputs.fixed_positions`.
        mean_cache: for ``kind="mean"``: ``[len(positions), n_layers, d_mlp]`` (one value per position, e.g.
            ``Predictivity.thresholds``, the per-position train means), or any form ``ablate`` accepts
            (``[n_layers, d_mlp]``, ``{layer: d_mlp vector}``, a cache): one value per neuron at every position.
        layers: only perturb the neurons in these layers (e.g. ``range(0, 12)``); None for all.
        model: if given, neurons are validated against it up front.

    Returns:
        ``[(hook_name, fn), ...]``, one pair per layer.

    Raises:
        ValueError: unknown kind, negative or non-finite std, no neurons (left), ``kind="mean"`` without a
            fitting ``mean``.

    Example:
        >>> task, prompt = kn_lens.skill.sentiment_task(24), kn_lens.skill.HardPrompt("{text} [MASK].", ("a", "these"))
        >>> result = kn_lens.skill.predictivity(bert, task, prompt=prompt, progress=False)
        >>> fwd_hooks = perturb(result.mask(0.02), "mean", mean_cache=result.thresholds, positions=result.positions)
        >>> [name for name, _ in fwd_hooks]
        ['blocks.0.mlp.hook_post', 'blocks.1.mlp.hook_post']
        >>> 0 <= kn_lens.skill.accuracy(bert, task, prompt=prompt, fwd_hooks=fwd_hooks, progress=False) <= 1
        True
    """
    check_mode(kind, "perturbation kind", PERTURBATION_KINDS)
    check_number(std, "std", low=0)
    seed = check_int(seed, "seed")
    if isinstance(neurons, Tensor) and neurons.dtype == torch.bool:
        if neurons.ndim != 2:
            raise ValueError(f"a neuron mask must be [n_layers, d_mlp], got shape {tuple(neurons.shape)}")
        neurons = [Neuron(int(layer), int(index)) for layer, index in neurons.nonzero().tolist()]
    neuron_list = to_neurons(neurons, model)
    if layers is not None:
        wanted = {int(layer) for layer in layers}
        neuron_list = [n for n in neuron_list if n.layer in wanted]
        if not neuron_list:
            raise ValueError(f"none of the neurons is in layers {sorted(wanted)}")
    pos = fixed_positions(positions)
    if kind == "mean" and mean_cache is None:
        raise ValueError("kind='mean' needs mean_cache=... (e.g. Predictivity.thresholds, the per-position means)")

    def layer_mean(layer: int, idx: list[int]) -> Tensor | None:
        if kind != "mean":
            return None
        if isinstance(mean_cache, Tensor) and mean_cache.ndim == 3:
            if pos is None or mean_cache.shape[0] != len(pos):
                raise ValueError(
                    f"a per-position mean of shape {tuple(mean_cache.shape)} needs positions with "
                    f"{mean_cache.shape[0]} entries (the positions the means were taken at)"
                )
            check_finite(mean_cache[:, layer, idx], "mean_cache")
            return mean_cache[:, layer, idx].detach().float().clone()
        return to_means(mean_cache, [layer], None)[layer][idx].clone()

    hooks: HookList = []
    for layer, indices in group_by_layer(neuron_list).items():
        fn = functools.partial(
            perturb_hook,
            kind=kind,
            indices=tuple(indices),
            positions=pos,
            std=float(std),
            mean=layer_mean(layer, indices),
            seed=seed + layer,
        )
        hooks.append((hook_name(layer), fn))
    return hooks


__all__ = ["perturb", "perturb_hook"]
