"""Hook factories that act on single MLP neurons: scale, set, ablate, patch or perturb them, where and how you choose.

Everything here returns a plain list of ``(hook_name, fn)`` pairs, the currency of TransformerLens, so an
intervention is used exactly like any other hook and composes with other interventions and with your own hooks
by list concatenation::

    hooks = kn_lens.hooks.scale(neurons, 0.0, positions="all") + kn_lens.hooks.set(["L3N7"], 5.0, positions="all")
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    with model.hooks(fwd_hooks=hooks):
        logits = model(tokens)

The hook names are ``utils.get_act_name("mlp_post", layer)`` (``blocks.{L}.mlp.hook_post``): the activation
*after* the non-linearity (and the gate, for gated MLPs), whose coordinate ``n`` multiplies the value vector
``W_out[L][n]``. One hook per layer carries all of that layer's neurons. The hook functions are
``functools.partial`` objects of one module-level function, so printing them shows exactly what they do.

Positions (the same values, and the same default, as everywhere in kn_lens; see :mod:`kn_lens.inputs`):
    * ``"site"`` (default): the positions where each prompt's answer is predicted (the ``[MASK]`` for an
      encoder, the last prompt token for a causal model; every target position for a multi-token target: each
      widened ``[MASK]``, or the last prompt token and the teacher-forced positions after it), resolved per row
      from ``prompts=[Prompt, ...]``, which must be the rows of the batch the hooks run on (without them the
      factory asks for them);
    * ``"all"``: every position of every row;
    * ``"last"``: the last position of every row (the site of an unpadded causal batch without teacher forcing);
    * an ``int`` or a list of ints: those positions in every row (negative values count from the end);
    * a 1-D integer tensor with one position per row.

Hooks that depend on the batch (``positions="site"``) are built per batch. :class:`Intervention` does that for
you: it is a small, inspectable description of an intervention, and calling it on a batch of prompts returns
that batch's hooks, which is the callable form :func:`kn_lens.scoring.target_scores` accepts.

Caveats:
    Interventions replace the activation with a new tensor (no in-place writes), so they are safe under
    autograd and compose in the order given. Scaling by 0 at ``"all"`` positions also silences the neuron on
    the context tokens, a stronger intervention than Dai et al.'s, which act at the ``[MASK]`` only.

Example:
    >>> prompts = kn_lens.make_prompts(model, ["The capital of France is"], " Paris")
    >>> hooks = kn_lens.hooks.scale(["L24N1005"], 0.0, positions="site", prompts=prompts)
    >>> kn_lens.target_scores(model, prompts, fwd_hooks=hooks)  # p(" Paris") was 0.7725
    tensor([0.4744])
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import ActivationCache
from transformer_lens.hook_points import HookPoint

from kn_lens._moved import moved
from kn_lens._perturb import perturb, perturb_hook
from kn_lens._typing import HookList, Model, Neuron, group_by_layer, hook_name
from kn_lens.inputs import (
    NeuronsLike,
    PositionsLike,
    batch_positions,
    check_finite,
    check_mode,
    check_neuron_values,
    check_positions,
    to_means,
    to_neurons,
)
from kn_lens.prompts import Prompt

if TYPE_CHECKING:
    from kn_lens.cache import MLPPostCache


def _position_mask(kind: str, index: Tensor | None, batch: int, n_pos: int, device) -> Tensor | None:
    """Boolean ``[batch, pos, 1]`` mask of the positions to change, or None for all positions."""
    if kind == "all":
        return None
    if index.min() < -n_pos or index.max() >= n_pos:
        raise ValueError(f"intervention positions {index.tolist()} are outside the {n_pos} positions of the input")
    index = (index % n_pos).to(device)
    if kind == "fixed":
        mask = torch.zeros(n_pos, dtype=torch.bool, device=device)
        mask[index] = True
        return mask[None, :, None].expand(batch, n_pos, 1)
    if index.shape[0] != batch:
        raise ValueError(
            f"the intervention was built for {index.shape[0]} rows (one position per prompt) but the batch has "
            f"{batch} rows; build the hooks for the prompts of this batch (kn_lens.hooks.Intervention does that)"
        )
    mask = torch.zeros(batch, n_pos, dtype=torch.bool, device=device)
    mask[torch.arange(batch, device=device)[:, None], index] = True  # index: [batch, positions per row]
    return mask[:, :, None]


# --------------------------------------------------------------------------------------------------------------
# The hook function
# --------------------------------------------------------------------------------------------------------------


def neuron_hook(
    activation: Float[Tensor, "batch pos d_mlp"],
    hook: HookPoint,
    *,
    op: Literal["scale", "set"],
    indices: tuple[int, ...],
    value: float | Tensor,
    positions: tuple[str, Tensor | None] = ("all", None),
) -> Float[Tensor, "batch pos d_mlp"]:
    """The one hook function behind every factory here: change ``activation[..., indices]`` at ``positions``.

    Args:
        activation: the ``mlp_post`` activation TransformerLens passes in.
        hook: the hook point (unused, part of the TransformerLens signature).
        op: ``"scale"`` multiplies the neurons by ``value``; ``"set"`` replaces them by ``value``.
        indices: neuron coordinates in this layer.
        value: a number, one value per neuron (``[k]``), or values broadcastable to ``[batch, pos, k]``
            (patching from a cache).
        positions: the resolved positions (from :func:`kn_lens.inputs.batch_positions`).

    Returns:
        A new activation tensor (the input is not modified in place).

    Example:
        >>> fn = functools.partial(neuron_hook, op="scale", indices=(1094,), value=0.0)
        >>> model.run_with_hooks(tokens, fwd_hooks=[(hook_name(9), fn)]).shape
        torch.Size([1, 5, 49152])
    """
    d_mlp = activation.shape[-1]
    if max(indices) >= d_mlp:
        raise ValueError(f"neuron index {max(indices)} is out of range at {hook.name}: the layer has {d_mlp} neurons")
    index = torch.tensor(indices, device=activation.device)
    old = activation.index_select(-1, index)
    if isinstance(value, Tensor):
        value = value.to(device=activation.device, dtype=activation.dtype)
    if op == "scale":
        new = old * value
    else:
        if isinstance(value, Tensor):
            try:
                new = torch.broadcast_to(value, old.shape)
            except RuntimeError as error:
                raise ValueError(
                    f"values of shape {tuple(value.shape)} do not fit the activation at {hook.name}, whose selected "
                    f"neurons have shape {tuple(old.shape)} (batch, pos, neurons); patch from a cache of inputs "
                    "with the same length (and the same batch size, or 1)"
                ) from error
        else:
            new = torch.full_like(old, float(value))
    mask = _position_mask(*positions, activation.shape[0], activation.shape[1], activation.device)
    if mask is not None:
        new = torch.where(mask, new, old)
    return activation.index_copy(-1, index, new)


def _build(
    op: Literal["scale", "set"],
    neurons: NeuronsLike,
    values: Callable[[int, list[int]], float | Tensor],
    positions: PositionsLike,
    prompts: Sequence[Prompt] | None,
    model: Model | None,
) -> HookList:
    resolved = batch_positions(positions, prompts)
    hooks: HookList = []
    for layer, indices in group_by_layer(to_neurons(neurons, model)).items():
        fn = functools.partial(
            neuron_hook, op=op, indices=tuple(indices), value=values(layer, indices), positions=resolved
        )
        hooks.append((hook_name(layer), fn))
    return hooks


# --------------------------------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------------------------------


def scale(
    neurons: NeuronsLike,
    factor: float,
    *,
    positions: PositionsLike = "site",
    prompts: Sequence[Prompt] | None = None,
    model: Model | None = None,
) -> HookList:
    """Multiply neurons' activations by ``factor`` (0 suppresses, 2 enhances, Dai et al.'s interventions).

    Args:
        neurons: the neurons (``Neuron``, ``(layer, index)``, ``"L9N1094"``, or a result with ``.neurons``).
        factor: a finite number.
        positions: where to intervene (see the module docstring): ``"all"``, ``"site"``, ``"last"``, ints.
        prompts: the prompts of the batch, needed by ``positions="site"``.
        model: if given, neurons are validated against it before anything runs (else when the hook runs).

    Returns:
        ``[(hook_name, fn), ...]``, one pair per layer, for ``run_with_hooks(fwd_hooks=...)``/``model.hooks``.

    Raises:
        ValueError: NaN/infinite factor, no neurons, a neuron out of range, unknown positions.

    Example:
        >>> model.run_with_hooks(tokens, fwd_hooks=scale(["L9N1094", "L10N1096"], 0.0, positions="all")).shape
        torch.Size([1, 5, 49152])
    """
    check_finite(factor, "factor")
    return _build("scale", neurons, lambda layer, idx: float(factor), positions, prompts, model)


def set(  # shadows the builtin inside this module on purpose: kn_lens.hooks.set(...)
    neurons: NeuronsLike,
    value: float | Sequence[float] | Tensor,
    *,
    positions: PositionsLike = "site",
    prompts: Sequence[Prompt] | None = None,
    model: Model | None = None,
) -> HookList:
    """Set neurons' activations to ``value`` (one number for all, or one per neuron in the given order).

    Args:
        neurons: the neurons.
        value: a finite number, or a sequence/1-D tensor with one value per neuron.
        positions: where to intervene (see the module docstring).
        prompts: the prompts of the batch, needed by ``positions="site"``.
        model: if given, neurons are validated against it up front.

    Returns:
        ``[(hook_name, fn), ...]``.

    Example:
        >>> model.run_with_hooks(tokens, fwd_hooks=kn_lens.hooks.set(["L9N1094"], 3.0, positions="last")).shape
        torch.Size([1, 5, 49152])
    """
    if isinstance(value, Tensor | list | tuple):
        neuron_list = to_neurons(neurons, model, unique=False)
        values = torch.as_tensor(value, dtype=torch.float32).flatten()
        check_finite(values, "value")
        per_neuron = check_neuron_values(neuron_list, values.tolist())
        return _build(
            "set",
            list(per_neuron),
            lambda layer, idx: torch.tensor([per_neuron[Neuron(layer, i)] for i in idx]),
            positions,
            prompts,
            None,
        )
    check_finite(value, "value")
    return _build("set", neurons, lambda layer, idx: float(value), positions, prompts, model)


def ablate(
    neurons: NeuronsLike,
    mode: Literal["zero", "mean"] = "zero",
    *,
    mean_cache: MLPPostCache | ActivationCache | Mapping[int, Tensor] | Tensor | None = None,
    positions: PositionsLike = "site",
    prompts: Sequence[Prompt] | None = None,
    model: Model | None = None,
) -> HookList:
    """Ablate neurons: set them to zero, or to their mean activation over a reference set.

    Args:
        neurons: the neurons.
        mode: ``"zero"`` or ``"mean"``.
        mean_cache: for ``mode="mean"``: ``{layer: Float[Tensor, "d_mlp"]}`` from
            :func:`~kn_lens.cache.mean_activations`, an
            :class:`~kn_lens.cache.MLPPostCache` from :func:`~kn_lens.cache.cache_mlp_post` (averaged over its
            rows), a ``[n_layers, d_mlp]`` tensor, or a TransformerLens ``ActivationCache`` holding the layers'
            ``mlp_post`` (averaged over batch and positions). The same keyword as in
            :func:`kn_lens.attribution.ablation_effects`.
        positions: where to intervene (see the module docstring).
        prompts: the prompts of the batch, needed by ``positions="site"``.
        model: if given, neurons and the means' width are checked against it up front.

    Returns:
        ``[(hook_name, fn), ...]``.

    Raises:
        ValueError: unknown mode, no means for ``mode="mean"``, means of the wrong width or with NaNs.

    Example:
        >>> means = kn_lens.mean_activations(model, ["The capital of France is", "Water boils at"], layers=[24])
        >>> ablated = ablate(["L24N1005"], "mean", mean_cache=means, positions="all")
        >>> ablated[0][1].keywords["value"]  # the neuron's mean, the value it is set to
        tensor([...])
    """
    if check_mode(mode) == "zero":
        return _build("set", neurons, lambda layer, idx: 0.0, positions, prompts, model)
    if mean_cache is None:
        raise ValueError("mode='mean' needs mean_cache=...: kn_lens.mean_activations(model, prompts) or a cache")
    neuron_list = to_neurons(neurons, model)
    layers = sorted({n.layer for n in neuron_list})
    if model is not None:
        d_mlp = model.cfg.d_mlp
    else:  # no model: every layer's means must have one width that covers the neurons
        first = to_means(mean_cache, layers[:1], None)[layers[0]]
        d_mlp = first.shape[0]
    means = to_means(mean_cache, layers, d_mlp, n_layers=model.cfg.n_layers if model is not None else None)
    for neuron in neuron_list:
        if neuron.index >= d_mlp:
            raise ValueError(f"the means for layer {neuron.layer} have {d_mlp} entries; {neuron} is outside them")
    return _build("set", neuron_list, lambda layer, idx: means[layer][idx].clone(), positions, prompts, None)


def patch(
    neurons: NeuronsLike,
    cache: ActivationCache | Mapping[str, Tensor],
    *,
    positions: PositionsLike = "site",
    prompts: Sequence[Prompt] | None = None,
    model: Model | None = None,
) -> HookList:
    """Patch neurons' activations from a cache of another run (activation patching on single neurons).

    The cached ``mlp_post`` must have the same number of positions as the input, and the same batch size or 1.

    Args:
        neurons: the neurons.
        cache: an ``ActivationCache`` (or ``{hook_name: tensor}``) with the layers' ``mlp_post``.
        positions: where to patch (see the module docstring); other positions keep their own values.
        prompts: the prompts of the batch, needed by ``positions="site"``.
        model: if given, neurons are validated against it up front.

    Returns:
        ``[(hook_name, fn), ...]``.

    Example:
        >>> clean_tokens = kn_lens.make_prompt(model, "The capital of France is").tokens[None]
        >>> corrupt = kn_lens.make_prompt(model, "The capital of Spain is", " Madrid")
        >>> _, clean = model.run_with_cache(clean_tokens, names_filter=lambda n: n.endswith("mlp.hook_post"))
        >>> kn_lens.target_scores(model, [corrupt], fwd_hooks=patch(["L24N1005"], clean, positions="last"))
        tensor([...])
    """

    def cached(layer: int, idx: list[int]) -> Tensor:
        name = hook_name(layer)
        store = cache.cache_dict if isinstance(cache, ActivationCache) else cache
        if name not in store:
            raise ValueError(f"the cache has no {name}; cache the mlp_post of every patched layer")
        tensor = store[name]
        if tensor.ndim != 3 or max(idx) >= tensor.shape[-1]:
            raise ValueError(f"cache[{name!r}] has shape {tuple(tensor.shape)}; expected [batch, pos, d_mlp]")
        return tensor.detach()[..., idx].clone()

    return _build("set", neurons, cached, positions, prompts, model)


# --------------------------------------------------------------------------------------------------------------
# Batch-dependent interventions
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Intervention:
    """A small, inspectable intervention on neurons, built into hooks per batch of prompts.

    Calling it with the prompts of a batch returns that batch's ``(hook_name, fn)`` list, so it can be passed
    wherever a per-batch hook builder is accepted (``target_scores(model, prompts, fwd_hooks=intervention)``).

    Attributes:
        op: ``"scale"`` (multiply by ``value``) or ``"set"`` (replace by ``value``).
        neurons: the neurons.
        value: the factor (scale) or the value(s) (set: a number or one per neuron).
        positions: where to intervene; ``"site"`` is resolved per batch.
        name: a label for tables (defaults to a description).

    Example:
        >>> suppress = Intervention("scale", kns.neurons, 0.0, positions="site")
        >>> kn_lens.target_scores(model, prompts, fwd_hooks=suppress)  # p(" Paris") on each paraphrase
        tensor([...])
        >>> [name for name, fn in suppress.hooks(prompts)]  # the hook list of one batch
        ['blocks...mlp.hook_post', ...]
    """

    op: Literal["scale", "set"]
    neurons: tuple[Neuron, ...]
    value: float | tuple[float, ...] = 0.0
    positions: PositionsLike = "site"
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.op not in ("scale", "set"):
            raise ValueError(f"unknown op {self.op!r}; use 'scale' or 'set'")
        value = self.value
        if isinstance(value, list | tuple | Tensor):
            values = torch.as_tensor(value, dtype=torch.float64).flatten()
            check_finite(values, "value")
            per_neuron = check_neuron_values(to_neurons(self.neurons, None, unique=False), values.tolist())
            object.__setattr__(self, "neurons", tuple(per_neuron))
            value = tuple(per_neuron.values())
        else:
            object.__setattr__(self, "neurons", tuple(to_neurons(self.neurons, None)))
            check_finite(value, "value" if self.op == "set" else "factor")
            value = float(value)
        object.__setattr__(self, "value", value)
        check_positions(self.positions)  # fail early on bad positions
        if not self.name:
            what = "x" if self.op == "scale" else "="
            object.__setattr__(self, "name", f"{what}{value} on {len(self.neurons)} neurons")

    def hooks(self, prompts: Sequence[Prompt] | None = None) -> HookList:
        """The ``(hook_name, fn)`` list for a batch of ``prompts`` (needed when ``positions="site"``)."""
        if self.op == "scale":
            return scale(self.neurons, self.value, positions=self.positions, prompts=prompts)
        return set(self.neurons, self.value, positions=self.positions, prompts=prompts)

    def __call__(self, prompts: Sequence[Prompt] | None = None) -> HookList:
        return self.hooks(prompts)


def compose(*parts: HookList | Intervention | Callable[[Sequence[Prompt]], HookList]) -> Callable[..., HookList]:
    """Combine hook lists, :class:`Intervention` objects and per-batch builders into one per-batch builder.

    The hooks run in the order given (TransformerLens runs several hooks on one hook point in order).

    Example:
        >>> seen = []
        >>> my_hooks = [("blocks.24.mlp.hook_post", lambda act, hook: seen.append(act[0, -1, 1005].item()))]
        >>> both = compose(Intervention("scale", ["L24N1005"], 0.0), my_hooks)
        >>> kn_lens.target_scores(model, prompts[:1], fwd_hooks=both)
        tensor([0.4744])
        >>> seen  # my hook ran after the intervention, on the suppressed activation
        [0.0]
    """
    for part in parts:
        if not (isinstance(part, list | tuple) or callable(part)):
            raise TypeError(f"cannot compose {type(part).__name__}; pass hook lists or Intervention objects")
    return functools.partial(_composed, parts)


def _composed(parts, prompts: Sequence[Prompt] | None = None) -> HookList:
    hooks: HookList = []
    for part in parts:
        hooks.extend(part(prompts) if callable(part) else list(part))
    return hooks


__all__ = [
    "HookList",
    "Intervention",
    "ablate",
    "compose",
    "hook_name",
    "neuron_hook",
    "patch",
    "perturb",
    "perturb_hook",
    "scale",
    "set",
]

#: Names that used to be re-exported here: import them from :mod:`kn_lens.cache` (a ``DeprecationWarning`` says so).
__getattr__ = moved(__name__, {"MLPPostCache": "kn_lens.cache", "mean_activations": "kn_lens.cache"})
