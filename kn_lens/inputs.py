"""The input boundary: user inputs become checked :class:`~kn_lens.prompts.Prompt`, :class:`~kn_lens._typing.Neuron`
and position values here, once, and the rest of the package takes only those types.

Every public function of kn_lens accepts the same loose forms, because they all pass through this module:

* **prompts**: a text, a :class:`~kn_lens.prompts.Prompt`, a list mixing both, ``(texts, target)`` groups of
  other facts, or anything with ``.prompts`` and ``.target`` (a :class:`~kn_lens.neurons.FactPrompts`, a
  :class:`~kn_lens.neurons.KnowledgeNeurons` result);
* **targets** of several prompts: one for all (a str, a token id, a *tuple* of ids = one multi-token target)
  or a *list* with one per prompt; a list of bare ints with one per prompt is ambiguous and refused
  (:func:`~kn_lens.prompts.split_targets` says how to write each meaning);
* **neurons**: ``Neuron(9, 1094)``, ``(9, 1094)``, ``"L9N1094"``, a list of those, an ``[n, 2]`` integer tensor,
  or anything with ``.neurons``. Layers and indices must be ints (``3.0`` and ``True`` are refused: a float
  index is almost always a bug upstream, e.g. a division that should have been ``//``);
* **positions** (one name, one default everywhere): ``"site"`` (the default: where each prompt's answer is read,
  the ``[MASK]`` of an encoder or the last prompt token of a causal model), ``"all"``, ``"last"``, an int or a
  list of ints (negative values count from the end), or a 1-D integer tensor with one position per batch row;
* **counts and numbers**: batch sizes are positive ints, factors / values / baselines / means are finite;
* **mean activations** are passed as ``mean_cache=`` everywhere (:func:`to_means` reads every accepted form);
* **progress** (one name everywhere): ``True`` by default for functions that run the model over a list
  (prompts, facts, texts), ``False`` for functions of one prompt, whose callers' bars cover them.

A mistake is reported here as a ``ValueError`` / ``TypeError`` that names the argument and the fix, before any
model runs.

Example:
    >>> to_neurons(["L9N1094", (10, 2096), "L9N1094"])
    [L9N1094, L10N2096]
    >>> to_neurons([(9, 3.0)])
    Traceback (most recent call last):
    ...
    TypeError: neuron index must be an int, got 3.0 (a float); convert with int(...) if that is really meant
    >>> check_positions("site"), check_positions([0, -1])
    ('site', (0, -1))
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

import torch
from jaxtyping import Float
from torch import Tensor

from kn_lens._facts import FactParts, to_fact
from kn_lens._scalars import (
    ABLATION_MODES,
    PERTURBATION_KINDS,
    check_batch_size,
    check_choice,
    check_count,
    check_device,
    check_finite,
    check_int,
    check_mode,
    check_number,
    check_sequence,
    count_argument,
)
from kn_lens._typing import Model, Neuron, NeuronLike, check_layer, is_encoder
from kn_lens.prompts import Prompt, TargetLike, encode, make_prompt, split_targets

PositionsLike: TypeAlias = Literal["site", "all", "last"] | int | Sequence[int] | Tensor
"""Where to read or intervene; see the module docstring. The default everywhere is ``"site"``."""
POSITION_WORDS: tuple[str, ...] = ("site", "all", "last")
DEFAULT_POSITIONS = "site"

NeuronsLike: TypeAlias = Iterable[NeuronLike] | NeuronLike | Any
"""Neurons as a list of ``Neuron``/``(layer, index)``/``"L9N1094"``, one of those, an ``[n, 2]`` integer tensor,
or any object with a ``.neurons`` attribute (e.g. a :class:`~kn_lens.neurons.KnowledgeNeurons` result)."""


# --------------------------------------------------------------------------------------------------- neurons


def to_neuron(neuron: NeuronLike, model: Model | None = None) -> Neuron:
    """One neuron from ``Neuron``/``(layer, index)``/``"L9N1094"``; checked against ``model`` when given.

    Without a model only types and signs are checked (the ranges are checked when the model is known).

    Example:
        >>> to_neuron("L9 N1094"), to_neuron((9, 1094))
        (L9N1094, L9N1094)
    """
    if isinstance(neuron, str):
        neuron = Neuron.parse(neuron)
    if isinstance(neuron, Tensor) and neuron.ndim == 1:
        neuron = tuple(neuron.tolist())
    if not isinstance(neuron, tuple) or len(neuron) != 2:
        raise TypeError(f"expected a Neuron, a (layer, index) pair or a string like 'L9N1094', got {neuron!r}")
    layer, index = check_int(neuron[0], "neuron layer"), check_int(neuron[1], "neuron index")
    if model is None:
        for what, x in (("layer", layer), ("index", index)):
            if x < 0:
                raise ValueError(f"neuron {what} {x} is negative; pass model=... to use negative layer indices")
        return Neuron(layer, index)
    layer = check_layer(model, layer)
    d_mlp = model.cfg.d_mlp
    if not 0 <= index < d_mlp:
        raise ValueError(f"neuron index {index} is out of range: layer {layer} has d_mlp={d_mlp} neurons")
    return Neuron(layer, index)


def to_neurons(
    neurons: NeuronsLike, model: Model | None = None, *, allow_empty: bool = False, unique: bool = True
) -> list[Neuron]:
    """Neurons in any accepted form (see the module docstring) -> a list of checked :class:`Neuron`.

    Args:
        neurons: the neurons.
        model: when given, layers and indices are checked against it (negative layers count from the end).
        allow_empty: accept an empty selection (e.g. a result that selected nothing).
        unique: drop repeated neurons, keeping the first (order is kept either way).

    Example:
        >>> to_neurons(torch.tensor([[9, 1094], [10, 2096]]))
        [L9N1094, L10N2096]
    """
    if hasattr(neurons, "neurons") and not isinstance(neurons, tuple | str):
        neurons = neurons.neurons
    if isinstance(neurons, Tensor):
        if neurons.is_floating_point() or neurons.dtype == torch.bool:
            raise TypeError("a neurons tensor must hold integer (layer, index) pairs, shape [n, 2]")
        if neurons.ndim != 2 or neurons.shape[-1] != 2:
            raise ValueError(f"a neurons tensor must have shape [n, 2] (layer, index), got {tuple(neurons.shape)}")
        neurons = [tuple(row) for row in neurons.tolist()]
    if isinstance(neurons, str | Neuron) or (isinstance(neurons, tuple) and len(neurons) == 2 and _scalar(neurons[0])):
        neurons = [neurons]
    if not isinstance(neurons, Iterable):
        raise TypeError(f"expected neurons (e.g. ['L9N1094', (10, 2096)]), got {type(neurons).__name__}")
    result = [to_neuron(n, model) for n in neurons]
    if unique:
        result = list(dict.fromkeys(result))
    if not result and not allow_empty:
        raise ValueError("no neurons given; pass at least one neuron, e.g. ['L9N1094']")
    return result


def _scalar(x: Any) -> bool:
    return not isinstance(x, str | tuple | list) and not (isinstance(x, Tensor) and x.ndim > 0)


def to_layers(model: Model, layers: int | Iterable[int] | None) -> list[int]:
    """``None`` (all layers), one layer or several -> a sorted list of distinct block indices of ``model``.

    Example:
        >>> to_layers(model, [29, 3, 3])
        [3, 29]
    """
    if layers is None:
        return list(range(model.cfg.n_layers))
    if isinstance(layers, str) or not isinstance(layers, Iterable) or (isinstance(layers, Tensor) and layers.ndim == 0):
        layers = [layers]  # type: ignore[list-item]
    result = sorted({check_layer(model, check_int(layer, "layer")) for layer in layers})
    if not result:
        raise ValueError("layers is empty; pass None for all layers")
    return result


def check_neuron_values(neurons: Sequence[Neuron], values: Sequence[float]) -> dict[Neuron, float]:
    """``{neuron: value}`` for ``hooks.set``-style per-neuron values; a neuron listed twice must get one value.

    Example:
        >>> check_neuron_values([Neuron(1, 2), Neuron(1, 2)], [3.0, 4.0])
        Traceback (most recent call last):
        ...
        ValueError: neuron L1N2 is listed twice with different values (3.0 and 4.0); give each neuron one value
    """
    if len(values) != len(neurons):
        raise ValueError(f"got {len(values)} values for {len(neurons)} neurons; pass one value per neuron")
    out: dict[Neuron, float] = {}
    for neuron, value in zip(neurons, values, strict=True):
        value = float(value)
        if neuron in out and out[neuron] != value:
            raise ValueError(
                f"neuron {neuron} is listed twice with different values ({out[neuron]} and {value}); "
                "give each neuron one value"
            )
        out[neuron] = value
    return out


# --------------------------------------------------------------------------------------------------- prompts


def to_prompt(model: Model, prompt: str | Prompt, target: TargetLike = None, *, need_target: bool = True) -> Prompt:
    """One prompt: a text (with ``target``) or a :class:`Prompt` (``target``, if given, replaces its own).

    Example:
        >>> to_prompt(model, "The capital of France is", " Paris").site
        4
    """
    if isinstance(prompt, Prompt):
        if target is not None:
            prompt = prompt.with_target(model, target)
    elif isinstance(prompt, str):
        prompt = make_prompt(model, prompt, target)
    else:
        raise TypeError(f"prompt must be a str (with target) or a kn_lens Prompt, got {type(prompt).__name__}")
    if need_target and not prompt.target_ids:
        raise ValueError("no target given: pass target=' Paris' (or a Prompt made with a target)")
    return prompt


def to_prompts(
    model: Model,
    prompts: Any,
    target: TargetLike | Sequence[TargetLike] = None,
    *,
    need_target: bool = False,
    what: str = "prompts",
    allow_empty: bool = False,
) -> list[Prompt]:
    """Prompts in any accepted form -> a list of :class:`Prompt` (see the module docstring).

    Args:
        model: the model the prompts are for.
        prompts: a text, a Prompt, a list mixing both, ``(texts, target)`` groups, or objects with ``.prompts``
            and ``.target`` (facts, results).
        target: the target of text prompts: one for all (a str, an id, a tuple of ids), or a list with one per
            prompt (see :func:`~kn_lens.prompts.split_targets`). A Prompt keeps its own target unless ``target``
            is given.
        need_target: raise unless every prompt ends up with a target.
        what: the argument's name, for error messages.
        allow_empty: return ``[]`` for ``None`` or an empty list instead of raising.

    Example:
        >>> [p.target for p in to_prompts(model, ["The capital of France is", (["Rome is in"], " Italy")], " Paris")]
        [' Paris', ' Italy']
    """
    if prompts is None or (isinstance(prompts, list | tuple) and not prompts):
        if allow_empty:
            return []
        raise ValueError(f"no {what} given; pass at least one prompt")
    if isinstance(prompts, str | Prompt):
        prompts = [prompts]
    if hasattr(prompts, "prompts") and hasattr(prompts, "target"):  # one fact / result
        return to_prompts(model, list(prompts.prompts), prompts.target, need_target=need_target, what=what)
    if not isinstance(prompts, Iterable):
        raise TypeError(f"{what} must be texts or kn_lens Prompts, got {type(prompts).__name__}")
    items = list(prompts)
    if not items:
        if allow_empty:
            return []
        raise ValueError(f"no {what} given; pass at least one prompt")
    targets = split_targets(target, len(items), what)
    out: list[Prompt] = []
    for item, item_target in zip(items, targets, strict=True):
        if isinstance(item, Prompt):
            out.append(item if item_target is None else item.with_target(model, item_target))
        elif isinstance(item, str):
            out.append(make_prompt(model, item, item_target))
        elif isinstance(item, tuple) and len(item) >= 2 and not isinstance(item[1], Prompt):  # (texts, target)
            out.extend(to_prompts(model, item[0], item[1], what=what))
        elif hasattr(item, "prompts") and hasattr(item, "target"):
            out.extend(to_prompts(model, list(item.prompts), item.target, what=what))
        else:
            raise TypeError(f"cannot read {what} from {type(item).__name__}; pass texts or kn_lens Prompts")
    if need_target and not all(p.target_ids for p in out):
        raise ValueError(f"no target given for the {what}: pass target=' Paris' (or Prompts made with one)")
    return out


def to_texts_or_prompts(model: Model, prompts: Any, positions: PositionsLike) -> list[Prompt]:
    """Prompts for reading activations: encoder texts need a ``[MASK]`` only when ``positions="site"``.

    Example:
        >>> len(to_texts_or_prompts(model, ["Water boils at"], "all")[0])
        3
    """
    if isinstance(prompts, Prompt | str):
        prompts = [prompts]
    if not isinstance(prompts, Iterable):
        raise TypeError(f"prompts must be texts or kn_lens Prompts, got {type(prompts).__name__}")
    items = list(prompts)
    if not items:
        raise ValueError("no prompts given; pass at least one text or Prompt")
    out = []
    for p in items:
        if isinstance(p, Prompt):
            out.append(p)
        elif isinstance(p, str):
            if not p.strip():
                raise ValueError("a prompt is empty; pass some text")
            if (isinstance(positions, str) and positions == "site") or not is_encoder(model):
                out.append(make_prompt(model, p))
            else:  # encoders: texts without [MASK] are fine when the site is not needed
                tokens = encode(model, p)
                out.append(
                    Prompt(
                        text=p,
                        tokens=torch.tensor(tokens),
                        site=len(tokens) - 1,
                        target_ids=(),
                        positions=(),
                        causal=False,
                        explicit_site=True,
                    )
                )
        else:
            raise TypeError(f"prompts must be str or Prompt, got {type(p).__name__}")
    return out


# --------------------------------------------------------------------------------------------------- positions


def check_positions(positions: Any) -> str | tuple[int, ...] | Tensor:
    """Check a positions value and normalise it: a word, a tuple of ints, or a 1-D long tensor (one per row).

    Example:
        >>> check_positions(3)
        (3,)
        >>> check_positions(2.0)
        Traceback (most recent call last):
        ...
        TypeError: positions must be 'site', 'all', 'last', an int, a list of ints or a 1-D integer tensor; got 2.0
    """
    if isinstance(positions, str):
        if positions not in POSITION_WORDS:
            raise ValueError(f"unknown positions {positions!r}; use 'site', 'all', 'last', an int or a list of ints")
        return positions
    if isinstance(positions, Tensor):
        if positions.is_floating_point() or positions.dtype == torch.bool or positions.is_complex():
            raise TypeError("a positions tensor must hold integer positions, one per row")
        if positions.ndim != 1:
            raise ValueError(
                f"a positions tensor must be 1-D (one position per row), got shape {tuple(positions.shape)}"
            )
        return positions.detach().long().cpu()
    bad = TypeError(
        f"positions must be 'site', 'all', 'last', an int, a list of ints or a 1-D integer tensor; got {positions!r}"
    )
    if isinstance(positions, bool | float):
        raise bad
    if _is_int(positions):
        return (operator.index(positions),)
    if not isinstance(positions, Iterable):
        raise bad
    items = list(positions)
    if not items or not all(_is_int(p) for p in items):
        raise bad
    return tuple(operator.index(p) for p in items)


def _is_int(x: Any) -> bool:
    if isinstance(x, bool | float):
        return False
    try:
        operator.index(x)
    except TypeError:
        return False
    return True


def prompt_positions(prompt: Prompt, positions: Any) -> list[int]:
    """The positions of one prompt that ``positions`` names (``"last"``: its last token), non-negative.

    Example:
        >>> prompt_positions(make_prompt(model, "The capital of France is"), "all")
        [0, 1, 2, 3, 4]
    """
    positions = check_positions(positions)
    n = len(prompt)
    if isinstance(positions, Tensor):
        raise ValueError("a positions tensor gives one position per batch row; pass ints or a word here")
    if positions == "site":
        return [prompt.site]
    if positions == "all":
        return list(range(n))
    if positions == "last":
        return [n - 1]
    out = []
    for pos in positions:
        if not -n <= pos < n:
            raise ValueError(f"position {pos} is outside the prompt {prompt.text!r} of {n} tokens")
        out.append(pos % n)
    return out


def fixed_positions(positions: Any) -> tuple[int, ...] | None:
    """Positions that do not depend on the prompts, for hooks built without them (``hooks.perturb``): None for
    ``"all"``, ``(-1,)`` for ``"last"``, else the ints (negative from the end); ``"site"`` and a per-row tensor
    need the batch, and raise.

    Example:
        >>> fixed_positions("all"), fixed_positions("last"), fixed_positions([0, -2])
        (None, (-1,), (0, -2))
    """
    positions = check_positions(positions)
    if isinstance(positions, Tensor) or positions == "site":
        raise ValueError(
            "these hooks are built without the prompts, so positions must be 'all', 'last', an int or a list of "
            f"ints, not {'a per-row tensor' if isinstance(positions, Tensor) else repr(positions)}"
        )
    if positions == "all":
        return None
    return (-1,) if positions == "last" else positions


def index_positions(positions: Any, n: int, *, all_word: str = "all") -> list[int]:
    """Positions among ``n`` slots (a prompt's tokens, or a template's prompt positions) as indices ``0..n-1``:
    ``all_word`` (every slot; skill prompts call it ``"prompt"``), ``"last"``, an int or a non-empty list of ints
    (negative values count from the end).

    Example:
        >>> index_positions("last", 4), index_positions([0, -1], 4), index_positions("prompt", 3, all_word="prompt")
        ([3], [0, 3], [0, 1, 2])
    """
    if isinstance(positions, str):
        if positions not in (all_word, "last"):
            raise ValueError(f"unknown positions {positions!r}; use {all_word!r}, 'last' or indices into the prompt")
        return list(range(n)) if positions == all_word else [n - 1]
    chosen = [positions] if _is_int(positions) else list(positions) if isinstance(positions, Sequence) else None
    if not chosen or not all(_is_int(i) for i in chosen):
        raise TypeError(f"positions must be {all_word!r}, 'last' or a non-empty list of ints, got {positions!r}")
    if any(not -n <= int(i) < n for i in chosen):
        raise ValueError(f"positions {chosen} index a prompt with {n} positions")
    return [int(i) % n for i in chosen]


def batch_positions(positions: Any, prompts: Sequence[Prompt] | None) -> tuple[str, Tensor | None]:
    """Resolve positions for a batch: ``("all", None)``, ``("fixed", idx)`` (same for every row) or
    ``("rows", idx)`` with ``idx`` of shape ``[batch, k]`` (``"site"``: each row's own target positions, from
    ``prompts``; a 1-D tensor: one position per row).

    Example:
        >>> batch_positions("last", None)
        ('fixed', tensor([-1]))
    """
    positions = check_positions(positions)
    if isinstance(positions, Tensor):
        return "rows", positions[:, None]
    if positions == "all":
        return "all", None
    if positions == "last":
        return "fixed", torch.tensor([-1])
    if positions == "site":
        if prompts is None:
            raise ValueError(
                "positions='site' (the default) needs the prompts of the batch (prompts=[...]) to find each row's "
                "mask / last prompt position; pass prompts=..., use kn_lens.hooks.Intervention(...) (which builds "
                "the hooks per batch), or say positions='all' for every position"
            )
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompts is empty; positions='site' needs one prompt per row of the batch")
        if not all(isinstance(p, Prompt) for p in prompts):
            raise TypeError("prompts must be kn_lens Prompt objects (make them with kn_lens.make_prompts)")
        # every target position of each row (one for a single-token target); short rows repeat their first
        width = max(len(p.positions) for p in prompts)
        rows = [list(p.positions) + [p.positions[0]] * (width - len(p.positions)) for p in prompts]
        return "rows", torch.tensor(rows, dtype=torch.long)
    return "fixed", torch.tensor(positions, dtype=torch.long)


# --------------------------------------------------------------------------------------------------- means


def _is_mlp_cache(value: Any) -> bool:
    """A :class:`kn_lens.cache.MLPPostCache` (recognised by its fields: ``cache`` sits above this module)."""
    return (
        isinstance(getattr(value, "acts", None), Mapping)
        and isinstance(getattr(value, "hook", None), str)
        and hasattr(value, "prompt_index")
    )


def to_means(
    mean_cache: Any, layers: Sequence[int], d_mlp: int | None, *, n_layers: int | None = None, hook: str | None = None
) -> dict[int, Float[Tensor, " d_mlp"]]:
    """Mean activations for ``layers`` from any accepted form, checked: ``{layer: [d_mlp]}``.

    Accepted: ``{layer: Tensor[d_mlp]}`` (:func:`kn_lens.cache.mean_activations`), an
    :class:`~kn_lens.cache.MLPPostCache` (averaged over its rows), a TransformerLens ``ActivationCache`` (or a
    ``{hook_name: tensor}`` dict) holding the layers' activations (averaged over batch and positions), a tensor
    ``[n_layers, d_mlp]``, or one ``[d_mlp]`` vector for every layer.

    Example:
        >>> to_means({3: torch.zeros(64)}, [3], 64)[3].shape
        torch.Size([64])
    """
    from transformer_lens import ActivationCache

    from kn_lens._typing import hook_name

    if mean_cache is None:
        raise ValueError("no mean activations given: pass mean_cache=kn_lens.mean_activations(model, prompts)")
    out: dict[int, Tensor] = {}
    for layer in layers:
        if _is_mlp_cache(mean_cache):
            if hook is not None and mean_cache.hook != hook:
                raise ValueError(f"mean_cache holds {mean_cache.hook} activations, but {hook} is needed")
            if layer not in mean_cache.acts:
                raise ValueError(f"mean_cache has no layer {layer}; cache every layer you intervene on")
            vector = mean_cache[layer].float().mean(0)
        elif isinstance(mean_cache, ActivationCache) or (
            isinstance(mean_cache, Mapping) and any(isinstance(k, str) for k in mean_cache)
        ):
            store = mean_cache.cache_dict if isinstance(mean_cache, ActivationCache) else mean_cache
            name = hook_name(layer, hook or "mlp_post")
            if name not in store:
                raise ValueError(f"the cache has no {name}; run_with_cache with that hook to take means from it")
            vector = store[name].reshape(-1, store[name].shape[-1]).float().mean(0)
        elif isinstance(mean_cache, Tensor):
            if mean_cache.ndim == 1:
                vector = mean_cache.float()
            elif mean_cache.ndim == 2 and (n_layers is None or mean_cache.shape[0] == n_layers):
                if layer >= mean_cache.shape[0]:
                    raise ValueError(f"the mean tensor has {mean_cache.shape[0]} rows; it does not cover layer {layer}")
                vector = mean_cache[layer].float()
            else:
                raise ValueError(
                    f"a mean tensor must be [n_layers, d_mlp] or [d_mlp]; got shape {tuple(mean_cache.shape)}"
                )
        elif isinstance(mean_cache, Mapping):
            if layer not in mean_cache:
                raise ValueError(f"mean_cache has no means for layer {layer}; compute them for every layer used")
            vector = torch.as_tensor(mean_cache[layer]).float()
        else:
            raise TypeError(
                "mean_cache must be {layer: Tensor[d_mlp]} (kn_lens.mean_activations), an MLPPostCache, an "
                f"ActivationCache or a Tensor [n_layers, d_mlp] / [d_mlp]; got {type(mean_cache).__name__}"
            )
        if vector.ndim != 1 or (d_mlp is not None and vector.shape != (d_mlp,)):
            raise ValueError(
                f"the mean for layer {layer} has shape {tuple(vector.shape)}; expected [d_mlp] = [{d_mlp}] "
                "(means of another model or another hook point?)"
            )
        check_finite(vector, f"mean_cache (layer {layer})")
        out[layer] = vector.detach().cpu()
    return out


__all__ = [
    "ABLATION_MODES",
    "DEFAULT_POSITIONS",
    "PERTURBATION_KINDS",
    "POSITION_WORDS",
    "FactParts",
    "NeuronsLike",
    "PositionsLike",
    "batch_positions",
    "check_batch_size",
    "check_choice",
    "check_count",
    "check_device",
    "check_finite",
    "check_int",
    "check_mode",
    "check_neuron_values",
    "check_number",
    "check_positions",
    "check_sequence",
    "count_argument",
    "fixed_positions",
    "index_positions",
    "prompt_positions",
    "split_targets",
    "to_fact",
    "to_layers",
    "to_means",
    "to_neuron",
    "to_neurons",
    "to_prompt",
    "to_prompts",
    "to_texts_or_prompts",
]
