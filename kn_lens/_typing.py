"""Core types shared by every module: :class:`Neuron`, the :class:`Model` protocol, and input validation helpers.

A neuron is one coordinate of an MLP's hidden activation, addressed as ``(layer, index)`` and printed in the
TransformerLens tutorial's style, ``L9N1094``. Everything in kn_lens reads or writes neurons at the
``mlp_post`` hook point (``blocks.{L}.mlp.hook_post``), unless a function says otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol, TypeAlias, runtime_checkable

import torch
from transformer_lens.hook_points import HookPoint

from kn_lens import backends
from kn_lens.backends import get_act_name


@runtime_checkable
class Model(Protocol):
    """The model surface kn_lens uses: TransformerLens hook points and verbs, ``cfg`` and a tokenizer.

    Satisfied by a ``HookedTransformer`` (causal), a ``HookedEncoder`` (BERT) and a
    ``transformer_lens.model_bridge.TransformerBridge`` in compatibility mode (any backend, TransformerLens 3.9
    and 4.x). The weights a few functions read or write (``W_out`` rows, ``W_U``, ``W_E``, the final norm) are
    reached through :mod:`kn_lens.backends`, which knows where each backend keeps them.
    """

    cfg: Any
    tokenizer: Any
    blocks: Any

    def __call__(self, input: Any, *args: Any, **kwargs: Any) -> Any: ...

    def hooks(self, fwd_hooks: Any = ..., bwd_hooks: Any = ..., reset_hooks_end: bool = ...) -> Any: ...

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any: ...

    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any: ...

    def to_tokens(self, input: Any, *args: Any, **kwargs: Any) -> torch.Tensor: ...


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

HookFn: TypeAlias = Callable[[torch.Tensor, HookPoint], torch.Tensor]
"""A TransformerLens forward hook: ``fn(activation, hook) -> activation``."""
HookList: TypeAlias = list[tuple[str, HookFn]]
"""What every hook builder of kn_lens returns: ``[(hook_name, fn), ...]`` for ``run_with_hooks(fwd_hooks=...)``."""


def is_encoder(model: Model) -> bool:
    """True for bidirectional (BERT-style) models, whose prompts carry a ``[MASK]``: a ``HookedEncoder`` or a
    ``TransformerBridge`` around a masked-LM (BERT, RoBERTa).

    Example:
        >>> is_encoder(kn_lens.load_model())
        False
    """
    return backends.is_encoder(model)


def check_model(model: object) -> Model:
    """Return ``model`` if kn_lens can study its MLP neurons; otherwise raise a clear error saying what to do.

    Accepted: a ``HookedTransformer``, a ``HookedEncoder`` (TransformerLens 3.x) or a ``TransformerBridge`` in
    compatibility mode (3.9 and 4.x), whose blocks have a dense MLP with a ``blocks.{L}.mlp.hook_post`` hook.

    Raises:
        TypeError: not a TransformerLens model (e.g. a plain ``torch.nn.Module`` or a transformers model), a bridge
            without compatibility mode, or an MLP without a single dense ``W_out`` (mixture-of-experts).
        ValueError: a model without MLP layers (attention-only).

    Example:
        >>> check_model(model) is model  # returns the model, or raises TypeError
        True
        >>> check_model("gpt2")
        Traceback (most recent call last):
        ...
        TypeError: expected a transformer_lens HookedTransformer, HookedEncoder or a TransformerBridge ...
    """
    if backends.is_bridge(model):
        problem = backends.bridge_problem(model)
        if problem is not None:
            raise TypeError(problem)
    elif not backends.is_hooked(model):
        kinds = "a TransformerBridge in compatibility mode"
        if backends.HAS_HOOKED:
            kinds = "a transformer_lens HookedTransformer, HookedEncoder or " + kinds
        hint = "load one with kn_lens.load_model(...)"
        if isinstance(model, torch.nn.Module) and hasattr(model, "config"):  # a transformers model
            hint = (
                "wrap a transformers model with kn_lens.load_model(folder) after model.save_pretrained(folder), "
                "or TransformerBridge.boot_transformers(folder) + enable_compatibility_mode(no_processing=True)"
            )
        raise TypeError(f"expected {kinds}, got {type(model).__name__}; {hint}")
    cfg = model.cfg  # type: ignore[attr-defined]
    if cfg.d_mlp is None or getattr(cfg, "attn_only", False):
        raise ValueError("this model has no MLP layers, so it has no MLP neurons to study")
    for layer in range(cfg.n_layers):
        name = get_act_name("post", layer)
        why = backends._moe_reason(model, layer)
        # the attribute, not model.hook_dict: a bridge rebuilds hook_dict on every access (~70 ms for SmolLM2)
        if why is not None or not isinstance(getattr(model.blocks[layer].mlp, "hook_post", None), HookPoint):  # type: ignore[attr-defined]
            why = why or f"block {layer}'s MLP has no {name} hook point"
            raise TypeError(
                f"{why}: kn_lens studies single neurons of a dense MLP (one hook_post activation and one W_out "
                "row per neuron); mixture-of-experts and other MLP variants are not supported"
            )
    return model  # type: ignore[return-value]


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


def mlp_w_out(model: Model, layer: int) -> torch.Tensor:
    """Block ``layer``'s ``W_out`` ``[d_mlp, d_model]``: row ``n`` is neuron ``n``'s value vector.

    The parameter itself on a ``HookedTransformer``; on a ``TransformerBridge`` a view of the transformers
    module's weight, so writing rows (under ``torch.no_grad()``) edits the model the forward pass uses. Read this
    rather than ``model.W_out``, which stacks every layer's weights into a new tensor on each access.

    Example:
        >>> mlp_w_out(model, 24)[1005].shape  # SmolLM2
        torch.Size([576])
    """
    return backends.mlp_w_out(model, layer)
