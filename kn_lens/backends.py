"""Backends: the few places where a ``HookedTransformer``/``HookedEncoder`` and a ``TransformerBridge`` differ.

kn_lens talks to a model almost only through TransformerLens' hook points (``blocks.{L}.mlp.hook_post``),
``hooks()``/``run_with_hooks``/``run_with_cache``, ``cfg`` and the tokenizer, and those look the same on both
backends once a bridge is in compatibility mode. What remains are the *weights* a few functions read or write:

* the MLP output matrix ``W_out`` of each layer, whose rows are the neurons' value vectors (edits, the lens);
* the unembedding ``W_U`` / ``b_U`` and the token embedding ``W_E``;
* the final norm (and, for BERT-style encoders, the MLM head and its norm), whose weights the lens folds in.

A ``HookedTransformer`` owns those as its own parameters. A ``TransformerBridge`` wraps the transformers model,
whose modules hold the real parameters in their own layout: ``nn.Linear`` stores ``W_out`` transposed
(``[d_model, d_mlp]``), GPT-2's ``Conv1D`` does not. Each accessor here returns a *view* of the real parameter
in TransformerLens' layout, so reading it costs nothing and writing into it (under ``torch.no_grad()``) edits the
model the forward pass actually uses.

TransformerLens 4 removed ``HookedTransformer`` and ``HookedEncoder``; every import of them is guarded here, so
kn_lens imports on both majors and the rest of the package never names a backend class.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.hooks
from torch import Tensor, nn

try:  # TransformerLens 3.x
    from transformer_lens.utils import get_act_name
except ImportError:  # 4.x moved it
    from transformer_lens.utilities import get_act_name

try:  # TransformerLens 3.x
    from transformer_lens import HookedEncoder, HookedTransformer
except ImportError:  # TransformerLens 4.x has only the bridge
    HookedEncoder = HookedTransformer = None  # type: ignore[assignment,misc]

try:
    from transformer_lens.model_bridge import TransformerBridge
except ImportError:  # TransformerLens < 3.x: no bridge
    TransformerBridge = None  # type: ignore[assignment,misc]

HAS_HOOKED: bool = HookedTransformer is not None
"""True where this TransformerLens still has ``HookedTransformer``/``HookedEncoder`` (3.x)."""

HOOKED_TYPES: tuple[type, ...] = tuple(t for t in (HookedTransformer, HookedEncoder) if t is not None)
"""The model classes of the "hooked" backend available in this TransformerLens (empty on 4.x)."""

# Architectures (transformers' class names) whose prompts carry a mask token instead of continuing the text.
_MASKED_LM_SUFFIXES = ("ForMaskedLM", "ForPreTraining")


def is_hooked(model: object) -> bool:
    """True for a ``HookedTransformer`` or ``HookedEncoder``."""
    return bool(HOOKED_TYPES) and isinstance(model, HOOKED_TYPES)


def is_bridge(model: object) -> bool:
    """True for a ``transformer_lens.model_bridge.TransformerBridge`` (in compatibility mode or not)."""
    return TransformerBridge is not None and isinstance(model, TransformerBridge)


def is_encoder(model: Any) -> bool:
    """True for bidirectional masked-LM models (BERT, RoBERTa): ``HookedEncoder`` or a bridge around one."""
    if HookedEncoder is not None and isinstance(model, HookedEncoder):
        return True
    if is_bridge(model):
        arch = str(getattr(model.cfg, "architecture", None) or type(model.original_model).__name__)
        return arch.endswith(_MASKED_LM_SUFFIXES)
    return False


# ---------------------------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------------------------


def _hf_weight(component: nn.Module, what: str) -> Tensor:
    """The real parameter behind a bridge component (``LinearBridge`` -> the wrapped module's ``weight``)."""
    original = getattr(component, "original_component", None) or getattr(component, "_original_component", None)
    weight = getattr(original, "weight", None)
    if not isinstance(weight, Tensor):
        raise TypeError(f"{what} wraps {type(original).__name__}, which has no weight kn_lens can read")
    return weight


def _linear_view(component: nn.Module, shape: tuple[int, int], what: str) -> Tensor:
    """A ``[in, out]`` view of a bridged linear layer's weight (``nn.Linear`` stores ``[out, in]``)."""
    weight = _hf_weight(component, what)
    original = getattr(component, "original_component", None) or component._original_component
    view = weight.T if isinstance(original, nn.Linear) else weight  # GPT-2's Conv1D already stores [in, out]
    if weight.ndim != 2 or tuple(view.shape) != shape:
        raise TypeError(f"{what} has a weight of shape {tuple(weight.shape)}, expected {shape} (or transposed)")
    return view


def _moe_reason(model: Any, layer: int) -> str | None:
    """Why block ``layer``'s MLP has no single dense ``W_out`` (None if it has one)."""
    if getattr(model.cfg, "num_experts", None):
        return f"blocks[{layer}].mlp is a mixture-of-experts block ({model.cfg.num_experts} experts)"
    mlp = model.blocks[layer].mlp
    if "MoE" in type(mlp).__name__ or hasattr(mlp, "experts"):
        return f"blocks[{layer}].mlp is a mixture-of-experts block ({type(mlp).__name__})"
    return None


def mlp_w_out(model: Any, layer: int) -> Tensor:
    """Block ``layer``'s MLP output weight as ``[d_mlp, d_model]``: row ``n`` is neuron ``n``'s value vector.

    On a ``HookedTransformer`` this is the ``W_out`` parameter itself; on a ``TransformerBridge`` a view of the
    transformers module's weight (transposed for ``nn.Linear``), so writing into it edits the real model.
    """
    reason = _moe_reason(model, layer)
    if reason is not None:
        raise TypeError(f"{reason}: it has no dense W_out [d_mlp, d_model], so kn_lens cannot address its neurons")
    shape = (model.cfg.d_mlp, model.cfg.d_model)
    if is_bridge(model):
        out = getattr(model.blocks[layer].mlp, "out", None)
        if out is None:
            raise TypeError(f"blocks[{layer}].mlp of this bridge has no 'out' projection; kn_lens needs a plain MLP")
        return _linear_view(out, shape, f"blocks[{layer}].mlp.out")
    weight = getattr(model.blocks[layer].mlp, "W_out", None)
    if not isinstance(weight, torch.nn.Parameter) or tuple(weight.shape) != shape:
        raise TypeError(
            f"blocks[{layer}].mlp has no dense W_out parameter [d_mlp, d_model] (mixture-of-experts or quantised "
            "MLP?); kn_lens needs a plain MLP"
        )
    return weight


def mlp_b_out(model: Any, layer: int) -> Tensor | None:
    """Block ``layer``'s MLP output bias ``[d_model]`` (None if the MLP has none, as in Llama)."""
    if is_bridge(model):
        original = model.blocks[layer].mlp.out._original_component
        return getattr(original, "bias", None)
    return getattr(model.blocks[layer].mlp, "b_out", None)


def unembed(model: Any) -> tuple[Tensor, Tensor | None]:
    """``(W_U [d_model, d_vocab], b_U [d_vocab] or None)`` as the forward pass uses them (views, not copies)."""
    if is_bridge(model):
        component = model.unembed
        original = component._original_component
        return _linear_view(component, (model.cfg.d_model, model.cfg.d_vocab), "unembed"), getattr(
            original, "bias", None
        )
    return model.unembed.W_U, getattr(model.unembed, "b_U", None)


def embed(model: Any) -> Tensor:
    """The token embedding ``W_E [d_vocab, d_model]`` (the real parameter)."""
    if is_bridge(model):
        return _hf_weight(model.embed, "embed")
    return model.W_E  # HookedTransformer.embed.W_E; HookedEncoder.embed.embed.W_E


# ---------------------------------------------------------------------------------------------------------------
# Norms and the MLM head
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Norm:
    """A LayerNorm or RMSNorm described by its parameters, whatever module holds them.

    ``centres``: LayerNorm (subtract the mean) rather than RMSNorm. ``weight``/``bias``: None where the norm has
    none (TransformerLens' ``LayerNormPre``, or weights folded away). Calling it applies the full norm.
    """

    centres: bool
    weight: Tensor | None
    bias: Tensor | None
    eps: float

    def __call__(self, x: Tensor) -> Tensor:
        if self.centres:
            x = x - x.mean(-1, keepdim=True)
        x = x / (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        if self.weight is not None:
            x = x * self.weight
        if self.bias is not None:
            x = x + self.bias
        return x


def norm(module: nn.Module | None, model: Any = None) -> Norm | None:
    """Describe a norm module of either backend as a :class:`Norm` (None for None).

    Handles TransformerLens' ``LayerNorm``/``LayerNormPre``/``RMSNorm``/``RMSNormPre`` and a bridge's
    ``NormalizationBridge``/``RMSNormalizationBridge`` around any transformers norm. A transformers norm is
    recognised by what it does, not by its class name (T5's ``T5LayerNorm`` is an RMSNorm; a model's own
    ``LayerNorm`` class need not subclass ``nn.LayerNorm``): it is run on a probe and must match a LayerNorm or an
    RMSNorm with its own weight, bias and eps, else a ``TypeError`` (Gemma's ``1 + weight`` scaling, say).
    """
    if module is None:
        return None
    original = getattr(module, "_original_component", None)
    if original is not None:  # a bridge component: read the transformers module
        return _probed_norm(original, model)
    name = type(module).__name__
    eps = getattr(module, "eps", None) or getattr(getattr(model, "cfg", None), "eps", 1e-5)
    return Norm(
        centres="RMS" not in name,
        weight=getattr(module, "w", None),
        bias=getattr(module, "b", None),
        eps=float(eps),
    )


def _probed_norm(original: nn.Module, model: Any = None) -> Norm:
    """A transformers norm module as a :class:`Norm`, decided by running it (LayerNorm or RMSNorm?)."""
    name = type(original).__name__
    weight, bias = getattr(original, "weight", None), getattr(original, "bias", None)
    weight = weight if isinstance(weight, Tensor) else None
    bias = bias if isinstance(bias, Tensor) else None
    eps = getattr(original, "eps", None) or getattr(original, "variance_epsilon", None)
    eps = float(eps if eps is not None else 1e-5)
    width = weight.shape[-1] if weight is not None else getattr(getattr(model, "cfg", None), "d_model", None)
    if width is None:
        raise TypeError(f"cannot tell the width of {name} (it has no weight and no model was given)")
    reference = weight if weight is not None else next(original.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    # A probe with a large mean: a LayerNorm removes it, an RMSNorm keeps it, so the two differ clearly.
    generator = torch.Generator().manual_seed(0)
    probe = (torch.randn(3, int(width), generator=generator) * 0.5 + 2.0).to(device=device, dtype=dtype)
    with torch.inference_mode():
        out = original(probe).float()
    tolerance = 1e-3 if dtype == torch.float32 or dtype == torch.float64 else 5e-2
    for centres in (True, False):
        candidate = Norm(centres=centres, weight=weight, bias=bias, eps=eps)
        with torch.inference_mode():
            expected = candidate(probe.float()).float()
        scale = float(expected.abs().max()) + 1.0
        if out.shape == expected.shape and float((out - expected).abs().max()) <= tolerance * scale:
            return candidate
    raise TypeError(
        f"{name} behaves neither as a LayerNorm nor as an RMSNorm with its own weight, bias and eps (e.g. Gemma's "
        "RMSNorm scales by 1 + weight); kn_lens' lens does not support it yet"
    )


def final_norm(model: Any) -> Norm | None:
    """The norm the residual stream passes through last before the output head.

    Causal models: ``ln_final`` (None if the model has no normalisation). Post-LN encoders (BERT): the last
    block's output LayerNorm ``blocks[-1].ln2``.
    """
    if is_encoder(model):
        return norm(model.blocks[-1].ln2, model)
    if getattr(model.cfg, "normalization_type", None) is None:
        return None
    return norm(getattr(model, "ln_final", None), model)


def pre_unembed_norm(model: Any) -> Norm | None:
    """The norm immediately before ``W_U``: ``ln_final``, or the MLM head's LayerNorm of an encoder."""
    if not is_encoder(model):
        return final_norm(model)
    if is_bridge(model):
        return norm(model.ln_final, model)  # the bridge maps the MLM head's LayerNorm to ln_final
    return norm(model.mlm_head.ln, model)


def token_embed_hook(model: Any) -> str:
    """The hook on the token embeddings alone (``W_E[tokens]``, before positions and any embedding norm).

    ``hook_embed`` on a ``HookedTransformer`` and ``embed.hook_embed`` on a ``HookedEncoder``. On a bridge,
    ``embed.hook_out``: its ``hook_embed`` alias is the same point for GPT-2/Llama, but for BERT and RoBERTa
    (TransformerLens 3.9 and 4.3) it is ``embed_ln.hook_out``, after positions and the embedding LayerNorm.
    """
    if is_bridge(model):
        return "embed.hook_out"
    return "embed.hook_embed" if HookedEncoder is not None and isinstance(model, HookedEncoder) else "hook_embed"


def encoder_output_hook(model: Any) -> str:
    """The hook on a post-LN encoder's last residual stream (after the last block's ``ln2``), the MLM head's input."""
    last = model.cfg.n_layers - 1
    return f"blocks.{last}.ln2.hook_out" if is_bridge(model) else f"blocks.{last}.hook_normalized_resid_post"


def mlm_head(model: Any, x: Tensor) -> Tensor:
    """An encoder's MLM head transform (dense + activation + LayerNorm), applied to ``x [..., d_model]``.

    The output is what ``W_U`` reads; ``x`` is the last block's (normalised) residual stream.
    """
    if not is_encoder(model):
        raise TypeError("this model is not a masked-LM encoder; it has no MLM head")
    if not is_bridge(model):
        return model.mlm_head(x)
    hf = model.original_model
    if hasattr(hf, "cls"):  # BERT: cls.predictions.transform = dense + act + LayerNorm
        return hf.cls.predictions.transform(x)
    head = getattr(hf, "lm_head", None)
    if head is not None and hasattr(head, "dense") and hasattr(head, "layer_norm"):  # RoBERTa
        return head.layer_norm(torch.nn.functional.gelu(head.dense(x)))
    raise TypeError(f"kn_lens does not know the MLM head of {type(hf).__name__}")


# ---------------------------------------------------------------------------------------------------------------
# Running with temporary hooks, safe against interrupts
# ---------------------------------------------------------------------------------------------------------------


_TORCH_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def drop_hooks_above(model: Any, level: int, since: int | None = None, names: Any = None) -> None:
    """Remove every temporary hook added inside ``model.hooks()`` contexts deeper than ``level`` and set the
    model's context level back to ``level``: what TransformerLens' own cleanup does when it is not interrupted.

    ``since`` (a ``torch.utils.hooks.RemovableHandle.next_id`` taken before): also remove the PyTorch hooks
    registered on hook points since then that no TransformerLens handle kept track of (an interrupt between
    PyTorch registering a hook and TransformerLens recording it). Hooks added before (a user's
    ``model.hooks(...)`` around our call, ``add_hook``, permanent hooks, plain PyTorch hooks) are kept.
    ``names``: only these hook points (the ones a run added hooks to); None: every hook point.
    """
    seen: set[int] = set()
    points = model.hook_dict.values() if names is None else [model.hook_dict[name] for name in names]
    for point in points:
        if id(point) in seen:  # a bridge lists a hook point under its aliases too
            continue
        seen.add(id(point))
        kept: set[int] = set()
        for attr in ("fwd_hooks", "bwd_hooks"):
            handles = getattr(point, attr, None)
            if not handles:
                continue
            stale = [
                h for h in handles
                if not h.is_permanent and h.context_level is not None and h.context_level > level
            ]  # fmt: skip
            for handle in stale:
                handle.hook.remove()  # a torch RemovableHandle: removing twice is harmless
            gone = {id(h) for h in stale}
            if stale:
                setattr(point, attr, [h for h in handles if id(h) not in gone])
            kept.update(h.hook.id for h in handles if id(h) not in gone)
        if since is not None:
            for name in _TORCH_HOOK_DICTS:
                registered = getattr(point, name, None)
                if registered:
                    for key in [k for k in registered if isinstance(k, int) and k >= since and k not in kept]:
                        registered.pop(key, None)
    model.context_level = level


def run_with_hooks(model: Any, *args: Any, fwd_hooks: Any = (), **kwargs: Any) -> Any:
    """``model.run_with_hooks(*args, fwd_hooks=..., **kwargs)``, and the model left as it was, also after Ctrl-C.

    TransformerLens removes a run's hooks in a ``finally``; an interrupt inside that cleanup, or while a hook is
    being added, leaves some on the model (every later call then runs them). Here the cleanup is done again after
    it, twice in nested ``finally`` blocks, so one interrupt anywhere cannot leave a hook behind or the context
    level raised.
    """
    level = getattr(model, "context_level", None)
    if level is None:  # not a TransformerLens root module
        return model.run_with_hooks(*args, fwd_hooks=list(fwd_hooks), **kwargs)
    fwd_hooks = list(fwd_hooks)
    since = torch.utils.hooks.RemovableHandle.next_id
    names = {name for name, _ in fwd_hooks if isinstance(name, str)}  # the points this run adds hooks to
    if len(names) < len(fwd_hooks) or not names <= model.hook_dict.keys():
        names = None  # name filters (or names the model resolves itself): look at every hook point
    try:
        try:
            return model.run_with_hooks(*args, fwd_hooks=fwd_hooks, **kwargs)
        finally:
            _finish_interrupted_contexts()
            drop_hooks_above(model, level, since, names)
    finally:
        _finish_interrupted_contexts()
        drop_hooks_above(model, level, since, names)


def _finish_interrupted_contexts() -> None:
    """Close the generator-based contexts (TransformerLens' ``hooks()``) whose ``__exit__`` an exception in flight
    interrupted before it resumed them: found through the traceback, they run their cleanup now, not whenever
    the traceback is freed (their late ``context_level -= 1`` would then corrupt the model's level)."""
    traceback = sys.exc_info()[2]
    while traceback is not None:
        manager = traceback.tb_frame.f_locals.get("self")
        generator = getattr(manager, "gen", None)
        if (
            isinstance(manager, contextlib.AbstractContextManager)
            and inspect.isgenerator(generator)
            and inspect.getgeneratorstate(generator) == inspect.GEN_SUSPENDED
        ):
            with contextlib.suppress(Exception):
                generator.close()
        traceback = traceback.tb_next


# ---------------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------------


def bridge_problem(model: Any) -> str | None:
    """Why a bridge cannot be used as it is (None if it can)."""
    if not getattr(model, "compatibility_mode", False):
        return (
            "this TransformerBridge is not in compatibility mode, so it has no TransformerLens hook names "
            "(blocks.{L}.mlp.hook_post); call model.enable_compatibility_mode(no_processing=True) first "
            "(no_processing keeps the logits equal to transformers'; the default folds and centres weights)"
        )
    return None


__all__ = [
    "HAS_HOOKED",
    "HOOKED_TYPES",
    "Norm",
    "bridge_problem",
    "drop_hooks_above",
    "embed",
    "encoder_output_hook",
    "final_norm",
    "get_act_name",
    "is_bridge",
    "is_encoder",
    "is_hooked",
    "mlm_head",
    "mlp_b_out",
    "mlp_w_out",
    "norm",
    "pre_unembed_norm",
    "run_with_hooks",
    "token_embed_hook",
    "unembed",
]
