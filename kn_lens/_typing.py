"""Core types shared by every module: :class:`Neuron`, the model union, and input validation helpers.

A neuron is one coordinate of an MLP's hidden activation, addressed as ``(layer, index)`` and printed in the
TransformerLens tutorial's style, ``L9N1094``. Everything in kn_lens reads or writes neurons at the
``mlp_post`` hook point (``blocks.{L}.mlp.hook_post``), unless a function says otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple, TypeAlias

import torch
from transformer_lens import HookedEncoder, HookedTransformer
from transformer_lens.utils import get_act_name

Model: TypeAlias = HookedTransformer | HookedEncoder
"""The model types kn_lens works with: causal ``HookedTransformer`` and bidirectional ``HookedEncoder``."""

_NEURON_RE = re.compile(r"^\s*L(\d+)\s*N(\d+)\s*$", re.IGNORECASE)


HOOKS: dict[str, str] = {
    "mlp_post": "post",
    "mlp_pre": "pre",
    "mlp_pre_linear": "pre_linear",
}
"""The MLP hook points kn_lens can read and write: ``mlp_post`` (the neuron activations, the default),
``mlp_pre`` (before the non-linearity; where the EleutherAI package hooks GPT models) and ``mlp_pre_linear``
(the linear branch of a gated MLP)."""


def hook_name(layer: int, hook: str = "mlp_post") -> str:
    """The TransformerLens name of an MLP hook point of block ``layer``.

    Example:
        >>> hook_name(9)
        'blocks.9.mlp.hook_post'
        >>> hook_name(3, "mlp_pre")
        'blocks.3.mlp.hook_pre'
    """
    if hook not in HOOKS:
        raise ValueError(f"unknown hook point {hook!r}; choose one of {', '.join(HOOKS)}")
    return get_act_name(HOOKS[hook], layer)


class Neuron(NamedTuple):
    """One MLP neuron: ``layer`` (block index) and ``index`` (coordinate of the ``d_mlp`` activation).

    Example:
        >>> Neuron(9, 1094)
        L9N1094
        >>> Neuron.parse("L9 N1094") == Neuron(9, 1094)
        True
    """

    layer: int
    index: int

    def __str__(self) -> str:
        return f"L{self.layer}N{self.index}"

    def __repr__(self) -> str:
        return str(self)

    @classmethod
    def parse(cls, text: str) -> Neuron:
        """Parse ``"L9N1094"`` (also ``"L9 N1094"``, case-insensitive) into a :class:`Neuron`."""
        match = _NEURON_RE.match(text)
        if match is None:
            raise ValueError(f"cannot parse {text!r} as a neuron; expected the form 'L9N1094'")
        return cls(int(match.group(1)), int(match.group(2)))


NeuronLike: TypeAlias = Neuron | tuple[int, int] | str


def is_encoder(model: Model) -> bool:
    """True for bidirectional (BERT-style) models, whose prompts carry a ``[MASK]``.

    Example:
        >>> is_encoder(kn_lens.load_model())
        False
    """
    return isinstance(model, HookedEncoder)


def check_model(model: object) -> Model:
    """Raise a clear ``TypeError`` unless ``model`` is a ``HookedTransformer`` or ``HookedEncoder``.

    Example:
        >>> check_model(kn_lens.load_model())  # returns the model, or raises TypeError
    """
    if not isinstance(model, HookedTransformer | HookedEncoder):
        raise TypeError(
            f"expected a transformer_lens HookedTransformer or HookedEncoder, got {type(model).__name__}; "
            "load one with kn_lens.load_model(...)"
        )
    if model.cfg.d_mlp is None or getattr(model.cfg, "attn_only", False):
        raise ValueError("this model has no MLP layers, so it has no MLP neurons to study")
    return model


def check_layer(model: Model, layer: int) -> int:
    """Validate a block index (negative indices count from the end, like Python lists).

    Example:
        >>> check_layer(model, -1)  # SmolLM2
        29
    """
    n_layers = model.cfg.n_layers
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer must be an int, got {type(layer).__name__}")
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"layer {layer} is out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    return layer % n_layers


def group_by_layer(neurons: Iterable[Neuron]) -> dict[int, list[int]]:
    """``{layer: [index, ...]}`` in ascending layer order.

    Example:
        >>> group_by_layer([Neuron(29, 7), Neuron(3, 1), Neuron(29, 2)])
        {3: [1], 29: [2, 7]}
    """
    grouped: dict[int, list[int]] = {}
    for neuron in sorted(neurons):
        grouped.setdefault(neuron.layer, []).append(neuron.index)
    return grouped


def mlp_w_out(model: Model, layer: int) -> torch.nn.Parameter:
    """Block ``layer``'s ``W_out`` parameter ``[d_mlp, d_model]``: row ``n`` is neuron ``n``'s value vector.

    Read this rather than ``model.W_out``, which stacks every layer's weights into a new tensor on each access.

    Example:
        >>> mlp_w_out(model, 24)[1005].shape  # SmolLM2
        torch.Size([576])
    """
    weight = getattr(model.blocks[layer].mlp, "W_out", None)
    if not isinstance(weight, torch.nn.Parameter) or weight.ndim != 2:
        raise TypeError(
            f"blocks[{layer}].mlp has no dense W_out parameter [d_mlp, d_model] (mixture-of-experts or quantised "
            "MLP?); kn_lens needs a plain MLP"
        )
    return weight
