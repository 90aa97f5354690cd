"""The fast path of :mod:`~kn_lens.attribution._fast` on a ``TransformerBridge`` (TransformerLens 3.9 and 4.x).

:mod:`~kn_lens.attribution._fast` owns the algorithm (rows join at their own layer, packing, memory plan,
quadrature, deltas); this module supplies its backend-specific steps (an
:class:`~kn_lens.attribution._engine.Engine`) for a bridge,
whose blocks are the transformers model's own layers wrapped by TransformerLens:

* **Clean pass.** One forward of the bridge itself keeps, per prompt: the activations at the site (every MLP hook
  point), the residual stream leaving each requested block (an encoder's: before the block's output LayerNorm,
  ``blocks.L.ln2.hook_in``), the last residual (the input of the output head), the keys and values each attention
  computes (read through the bridge attention's cache argument, ``layer_past``), and the arguments the
  transformers model passes to each block (attention mask, ``position_ids``, rotary ``position_embeddings``, ...).
* **Rows.** A row of layer ``L`` starts from the clean residual leaving block ``L`` with the site shifted by
  ``(post - post_clean) @ W_out`` (``W_out`` read from the real weight, so edits are seen: the tensor shifted is the
  one ``blocks.L.mlp.hook_post`` reads, and the MLP's output projection is linear in it). Decoders then run only
  the positions from the site on through the bridge's blocks ``L + 1 ..``, with the prefix's clean keys and values
  frozen and expanded to the rows, and the block arguments narrowed to those positions (their true positions, so
  rotary embeddings are exact); encoders run every position from block ``L + 1`` on. The final norm (or MLM head)
  and the unembedding run at the target positions only.

Everything runs through the bridge's own modules, so the arithmetic is the plain path's. What cannot be checked
by reading the architecture is checked by running it: the first time a bridge (and a hook kind) meets the fast
path, :func:`unsupported` perturbs one activation on a short probe and compares the fast path's logits with the
bridge's own forward under the same replacement; an architecture that differs (an output head that is not "final
norm, then unembedding", an attention that ignores the frozen cache, block arguments kn_lens cannot narrow, ...)
falls back to the plain path with that one-line reason.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from kn_lens import backends
from kn_lens._typing import HOOKS, Model, hook_name, is_encoder
from kn_lens.attribution import _engine
from kn_lens.attribution._common import at_site
from kn_lens.attribution._engine import Clean, Engine, Pack, left_padded, per_row, relative, with_site
from kn_lens.prompts import Prompt
from kn_lens.scoring import Objective

PROBE_TOLERANCE = 1e-4
"""Largest difference of the probe's logits from the bridge's own forward, relative to the largest logit (float32
rounding is ~1e-6 here; a wrong position, cache or head is off by far more)."""

_VERDICTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(hook kind, training): reason|None}
_CACHES = frozenset({"cache", "past_key_values", "past_key_value", "layer_past"})
_CROSS = frozenset({"encoder_hidden_states", "encoder_attention_mask"})


class _Unsupported(Exception):
    """This bridge cannot take the fast path (the message is the one-line reason)."""


# ------------------------------------------------------------------------------------------------ block arguments


class _Recorder:
    """Stands in for a key/value cache during the clean pass: keeps each attention's keys and values, changes
    nothing (the bridge's attention calls ``update`` and attends to what it returns)."""

    def __init__(self) -> None:
        self.keys: dict[int, Tensor] = {}
        self.values: dict[int, Tensor] = {}

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        self.keys[layer_idx], self.values[layer_idx] = key, value
        return key, value


class _Frozen:
    """The clean keys/values of the prefixes ``[n_prompts, kv_heads, prefix, d_head]`` per block, put in front of
    the rows' own (each row gets its prompt's); never written."""

    def __init__(self, keys: list[Tensor], values: list[Tensor], row_prompt: Tensor | None) -> None:
        self.keys, self.values, self.row_prompt = keys, values, row_prompt
        self.read: set[int] = set()

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        self.read.add(layer_idx)
        past_k = per_row(self.keys[layer_idx], key.shape[0], self.row_prompt)
        past_v = per_row(self.values[layer_idx], value.shape[0], self.row_prompt)
        return torch.cat([past_k.to(key.dtype), key], dim=2), torch.cat([past_v.to(value.dtype), value], dim=2)


def _narrow(block_index: int, block, args: tuple, kwargs: dict, start: int, length: int) -> dict:
    """The arguments the transformers model passed to a block (clean pass), by name, narrowed to the positions
    ``start ..`` of the prompt (``length`` tokens); the hidden states and any cache are left out."""
    original = getattr(block, "original_component", None) or block
    try:
        bound = inspect.signature(original.forward).bind(*args, **kwargs).arguments
    except TypeError as err:
        raise _Unsupported(f"the arguments of block {block_index} do not match its forward ({err})") from err
    params = inspect.signature(original.forward).parameters
    flat: dict = {}
    for name, value in bound.items():
        if params[name].kind is inspect.Parameter.VAR_KEYWORD:
            flat.update(value)
        elif params[name].kind is not inspect.Parameter.VAR_POSITIONAL:
            flat[name] = value
        elif value:
            raise _Unsupported(f"block {block_index} receives extra positional arguments")
    out: dict = {}
    for name, value in flat.items():
        if name == "hidden_states" or name in _CACHES:
            continue
        if name in _CROSS:
            if value is not None:
                raise _Unsupported(f"block {block_index} receives {name} (cross-attention)")
            continue
        if name == "use_cache":
            out[name] = False
        elif value is None or not isinstance(value, Tensor | tuple | list):
            out[name] = value
        elif name == "attention_mask":
            if value.ndim != 4 or value.shape[-1] != length:
                raise _Unsupported(f"block {block_index} receives an attention mask of shape {tuple(value.shape)}")
            out[name] = value[..., start:, :]
        elif name == "position_ids" and value.ndim == 2 and value.shape[-1] == length:
            out[name] = value[:, start:]
        elif name == "cache_position" and value.ndim == 1 and value.shape[0] == length:
            out[name] = value[start:]
        elif name == "position_embeddings" and all(isinstance(t, Tensor) and t.shape[1] == length for t in value):
            out[name] = tuple(t[:, start:] for t in value)
        else:
            raise _Unsupported(f"block {block_index} receives {name!r}, which the fast path cannot narrow")
    return out


# --------------------------------------------------------------------------------------------------- clean pass


@dataclass
class _BridgeClean(Clean):
    """:class:`~kn_lens.attribution._engine.Clean` plus each block's narrowed arguments (``calls``)."""

    calls: list[dict] = field(default_factory=list)
    length: int = 0  # tokens of the prompt


def _point(model: Model, name: str):
    """A hook point by its (TransformerLens) name, resolved through the modules (a bridge's ``hook_dict`` is rebuilt
    on every access)."""
    module = model
    for part in name.split("."):
        module = getattr(module, part)
    return module


def _head_input_point(model: Model) -> str:
    return backends.encoder_output_hook(model) if is_encoder(model) else "ln_final.hook_in"


@torch.no_grad()
def _clean_pass(model: Model, prompt: Prompt, layers: list[int], objective: Objective) -> _BridgeClean:
    """One forward of the bridge that keeps what the rows reuse (see the module docstring)."""
    encoder = is_encoder(model)
    n_layers = model.cfg.n_layers
    start = 0 if encoder else prompt.site
    site = prompt.site
    length = len(prompt)
    tokens = prompt.tokens.to(model.cfg.device)[None]
    kinds = [k for k in HOOKS.values() if hasattr(model.blocks[0].mlp, f"hook_{k}")]
    acts: dict[str, list] = {kind: [None] * n_layers for kind in kinds}
    resid: dict[int, Tensor] = {}
    seen: dict[int, tuple] = {}
    final: list[Tensor] = []

    def keep_act(kind: str, layer: int) -> Callable:
        return lambda module, inputs, out: acts[kind].__setitem__(layer, out[0, site].clone())

    def keep_resid(layer: int) -> Callable:
        return lambda module, inputs, out: resid.__setitem__(layer, out[0, start:].clone())

    def keep_call(index: int) -> Callable:
        return lambda module, args, kwargs: seen.__setitem__(index, (args, kwargs))

    captures = [(hook_name(layer, key), keep_act(kind, layer))
                for layer in range(n_layers) for key, kind in HOOKS.items() if kind in kinds]  # fmt: skip
    captures += [(f"blocks.{layer}.ln2.hook_in" if encoder else f"blocks.{layer}.hook_out", keep_resid(layer))
                 for layer in layers]  # fmt: skip
    captures.append((_head_input_point(model), lambda module, inputs, out: final.append(out[0, start:].clone())))
    recorder = None if encoder else _Recorder()
    handles = []
    try:
        for name, fn in captures:
            handles.append(_point(model, name).register_forward_hook(fn))
        for index, block in enumerate(model.blocks):
            handles.append(block.register_forward_pre_hook(keep_call(index), with_kwargs=True))
        logits = model(tokens, return_type="logits", **({} if encoder else {"layer_past": recorder}))
    finally:
        for handle in handles:
            handle.remove()
    keys, values = [], []
    if recorder is not None:
        if sorted(recorder.keys) != list(range(n_layers)):
            raise _Unsupported("the bridge's attention does not take a key/value cache through 'layer_past'")
        keys = [recorder.keys[b][0, :, :start].clone() for b in range(n_layers)]
        values = [recorder.values[b][0, :, :start].clone() for b in range(n_layers)]
    calls = [
        _narrow(b, model.blocks[b], *seen[b], start=start, length=length) for b in range(n_layers)
    ]  # fmt: skip
    clean = _BridgeClean(
        start=start,
        site=site - start,
        out_prompt=relative(prompt, start),
        resid=resid,
        acts={kind: torch.stack(v) for kind, v in acts.items()},
        keys=keys,
        values=values,
        f_clean=torch.zeros(()),
        prompt=prompt,
        calls=calls,
        length=length,
    )
    if callable(objective) and start > 0:  # positions before the site cannot change: their logits are clean
        clean.prefix_logits = logits[0, :start].clone()
    clean.f_clean = _engine.row_objective(model, final[0][None], [clean], None, objective, _unembed)[0]
    return clean


# ------------------------------------------------------------------------------------------------------ the rows


def _activation(model: Model, layer: int) -> Callable | None:
    """The transformers module's activation function between ``hook_pre`` and ``hook_post`` of block ``layer``."""
    mlp = model.blocks[layer].mlp
    original = getattr(mlp, "original_component", None)
    for module in (original, getattr(original, "intermediate", None)):  # BERT/RoBERTa: the MLP is the whole layer
        for attr in ("act_fn", "act", "activation_fn", "intermediate_act_fn"):
            fn = getattr(module, attr, None)
            if callable(fn):
                return fn
    return None


def _enter(model: Model, clean: Clean, layer: int, hook: str, x: Tensor) -> Tensor:
    """Rows of group ``layer`` as they leave block ``layer``: the clean residual with the site shifted by what the
    new ``mlp_post`` adds through the (linear) output projection."""
    post = x
    if hook != "mlp_post":
        act = _activation(model, layer)
        assert act is not None  # unsupported() said so otherwise
        if hook == "mlp_pre":
            post = act(x)
            if "pre_linear" in clean.acts:  # gated MLP
                post = post * clean.acts["pre_linear"][layer]
        else:  # mlp_pre_linear
            post = act(clean.acts["pre"][layer]) * x
    w_out = backends.mlp_w_out(model, layer)  # a view of the real weight: edits are seen
    delta = (post - clean.acts["post"][layer]).to(w_out.dtype) @ w_out
    base = clean.resid[layer]
    resid = with_site(base, clean.site, base[clean.site] + delta)
    if is_encoder(model):
        resid = model.blocks[layer].ln2(resid)  # BERT/RoBERTa blocks end with the output LayerNorm
    return resid


@dataclass
class _BridgePack(Pack):
    """:class:`~kn_lens.attribution._engine.Pack` plus each block's arguments: shared by every row, or stacked per
    prompt (``stacked``: name -> tensor or tuple of tensors with a leading prompt dimension)."""

    shared: list[dict] = field(default_factory=list)
    stacked: list[dict] = field(default_factory=list)


def _additive(mask: Tensor | None, q: int, start: int, dtype: torch.dtype, device) -> Tensor:
    """A prompt's mask for its ``q`` recomputed positions over its ``start + q`` keys, as an additive float mask."""
    low = torch.finfo(dtype).min
    if mask is None:  # causal among the recomputed positions, everything before them visible
        allowed = torch.ones(q, start + q, dtype=torch.bool, device=device).tril(diagonal=start)
        return torch.where(allowed, 0.0, low).to(dtype)[None, None]
    if mask.dtype == torch.bool:
        return torch.where(mask, 0.0, low).to(dtype)
    return mask.to(dtype)


def _stack(model: Model, cleans: list[_BridgeClean]) -> _BridgePack:
    """The clean state of a pack's prompts: prefixes' keys/values left-padded to the longest, and each block's
    arguments (shared where equal, else stacked per prompt; padded keys masked out of attention)."""
    n_layers = model.cfg.n_layers
    if len(cleans) == 1:
        return _alone(cleans[0], n_layers)
    encoder = is_encoder(model)
    prefix = max(c.start for c in cleans)
    padded = any(c.start != prefix for c in cleans)
    q = cleans[0].length - cleans[0].start
    keys, values, shared, stacked = [], [], [], []
    for block in range(n_layers):
        if not encoder:
            keys.append(left_padded([c.keys[block] for c in cleans], prefix, dim=1))  # [kv_heads, start, d_head]
            values.append(left_padded([c.values[block] for c in cleans], prefix, dim=1))
        common, per_prompt = {}, {}
        for name, value in cleans[0].calls[block].items():
            others = [c.calls[block][name] for c in cleans]
            if name == "attention_mask" and padded:
                dtype = next((m.dtype for m in others if m is not None and m.is_floating_point()), torch.float32)
                low = torch.finfo(dtype).min
                masks = []
                for clean, mask in zip(cleans, others, strict=True):
                    own = _additive(mask, q, clean.start, dtype, keys[0].device)
                    pad = own.new_full((*own.shape[:-1], prefix - clean.start), low)
                    masks.append(torch.cat([pad, own], dim=-1))
                per_prompt[name] = torch.cat(masks)
            elif isinstance(value, Tensor) and not all(isinstance(o, Tensor) and torch.equal(value, o) for o in others):
                if value.ndim < 2 or value.shape[0] != 1:
                    raise RuntimeError(f"block {block}'s {name!r} differs between prompts and has no batch dimension")
                per_prompt[name] = torch.cat(others)
            elif isinstance(value, tuple) and any(isinstance(t, Tensor) for t in value):
                if all(torch.equal(a, b) for o in others for a, b in zip(value, o, strict=True)):
                    common[name] = value
                else:
                    per_prompt[name] = tuple(torch.cat(parts) for parts in zip(*others, strict=True))
            else:
                common[name] = value
        shared.append(common)
        stacked.append(per_prompt)
    return _BridgePack(cleans, keys, values, None, shared=shared, stacked=stacked)


def _alone(clean: _BridgeClean, n_layers: int) -> _BridgePack:
    """The pack of one prompt: every argument shared, the prefix's keys/values expanded to the rows (no copy)."""
    keys = [k[None] for k in clean.keys]
    values = [v[None] for v in clean.values]
    return _BridgePack([clean], keys, values, None, shared=clean.calls, stacked=[{}] * n_layers)


def _step(model: Model, pack: _BridgePack, block_index: int, resid: Tensor, row_prompt: Tensor | None) -> Tensor:
    """Block ``block_index`` of the bridge for the rows in ``resid`` (``row_prompt``: each row's prompt, or None)."""
    kwargs = dict(pack.shared[block_index])
    for name, value in pack.stacked[block_index].items():
        pick = (lambda t: t) if row_prompt is None else (lambda t: t[row_prompt])
        kwargs[name] = tuple(pick(t) for t in value) if isinstance(value, tuple) else pick(value)
    frozen = None
    if pack.keys and pack.keys[block_index].shape[2] > 0:
        frozen = _Frozen(pack.keys, pack.values, row_prompt)
        kwargs["layer_past"] = frozen
    out = model.blocks[block_index](hidden_states=resid, **kwargs)
    if isinstance(out, tuple):
        out = out[0]
    if frozen is not None and frozen.read != {block_index}:
        raise RuntimeError(f"block {block_index}'s attention did not read the frozen keys/values")
    return out


def _unembed(model: Model, resid: Tensor) -> Tensor:
    """Logits from last residuals ``[..., d_model]`` through the bridge's own head: final norm (BERT/RoBERTa: the
    MLM head transform), then the unembedding."""
    if is_encoder(model):
        resid = backends.mlm_head(model, resid)
    elif getattr(model, "ln_final", None) is not None:
        resid = model.ln_final(resid)
    return model.unembed(resid)


def _can_pad(model: Model) -> bool:
    """Causal prefixes of any lengths share passes: each row gets its own prompt's positions, rotary embeddings and
    mask (the padding masked out), all from its clean pass. Not where blocks also receive ``cache_position`` (one
    vector for the whole batch; the probe records whether they do)."""
    return not is_encoder(model) and not _VERDICTS.get(model, {}).get("cache_position", False)


def engine() -> Engine:
    """This module's steps for :mod:`~kn_lens.attribution._fast` (looked up at each call, so a test can spy on them)."""
    return Engine(_clean_pass, _stack, _enter, _step, _unembed, _can_pad)


# ------------------------------------------------------------------------------------------------------ the probe


def unsupported(model: Model, hook: str) -> str | None:
    """Why the fast path cannot run this bridge exactly for activations at ``hook`` (one line), or None.

    Decided once per model, hook kind and train/eval mode by :func:`_probe`. Run it only without hooks of the
    user's attached (the dispatcher checks that first)."""
    verdicts = _VERDICTS.setdefault(model, {})
    key = (HOOKS[hook], model.training)
    if key not in verdicts:
        verdicts[key] = _probe(model, hook)
    return verdicts[key]


def warn_once(model: Model) -> bool:
    """True the first time it is asked for ``model`` (the fallback warning is given once per bridge)."""
    verdicts = _VERDICTS.setdefault(model, {})
    first = "warned" not in verdicts
    verdicts["warned"] = True
    return first


def _probe(model: Model, hook: str) -> str | None:
    try:
        _check(model, hook)
    except _Unsupported as why:
        return str(why)
    except Exception as err:  # any failure of the fast machinery on this architecture: use the plain path
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"the fast path could not rerun this bridge's blocks alone ({type(err).__name__}: {text[:160]})"
    return None


@torch.no_grad()
def _check(model: Model, hook: str) -> None:
    """Perturb one activation of a short probe prompt and compare the fast rows' logits with the bridge's own
    forward under the same replacement (raises :class:`_Unsupported` with the reason)."""
    encoder = is_encoder(model)
    if model.training:
        raise _Unsupported("the model is in training mode (dropout); call model.eval()")
    if hook != "mlp_post" and _activation(model, 0) is None:
        raise _Unsupported(f"kn_lens cannot find the activation function between {hook} and mlp_post")
    block = model.blocks[0]
    if encoder and getattr(block, "ln2", None) is None:
        raise _Unsupported("this encoder's blocks have no output LayerNorm (ln2)")
    if "Parallel" in type(block).__name__ or getattr(model.cfg, "parallel_attn_mlp", False):
        raise _Unsupported(f"its blocks run attention and MLP in parallel ({type(block).__name__})")
    original = getattr(block, "original_component", None)
    # TransformerLens 4 names the norm after the MLP ln2_post; 3.9's bridge leaves it inside the transformers block
    if "ln2_post" in (getattr(block, "submodules", None) or {}) or hasattr(original, "post_feedforward_layernorm"):
        raise _Unsupported(
            "its MLP output is normalised before it joins the residual stream (post-norm blocks, e.g. OLMo 2, "
            "Gemma 2), so a neuron's effect there is not a shift along its W_out row"
        )
    vocab = model.cfg.d_vocab
    length = 6
    tokens = torch.tensor([(97 * i + 101) % vocab for i in range(length)])
    site = 2 if encoder else length - 2  # a decoder recomputes two positions: the causal mask among them is probed
    positions = (site,) if encoder else (site, site + 1)
    prompt = Prompt(text="<probe>", tokens=tokens, site=site, target_ids=tuple(int(tokens[p]) for p in positions),
                    positions=positions, causal=not encoder, explicit_site=True)  # fmt: skip
    clean = _clean_pass(model, prompt, [0], "logit")
    _VERDICTS.setdefault(model, {})["cache_position"] = any("cache_position" in call for call in clean.calls)
    kind = HOOKS[hook]
    x = clean.acts[kind][0]
    x = (x * 0.5 + 0.5 * x.abs().mean() + 0.1)[None]  # a replacement far from the clean value
    resid = _enter(model, clean, 0, hook, x)
    pack = _alone(clean, model.cfg.n_layers)
    for block in range(1, model.cfg.n_layers):
        resid = _step(model, pack, block, resid, None)
    rel = torch.tensor(clean.out_prompt.positions)
    fast = _unembed(model, resid[:, rel])[0]

    def put(act: Tensor, hook) -> Tensor:
        return at_site(act, site, x)

    with model.hooks(fwd_hooks=[(hook_name(0, hook), put)]):
        expected = model(tokens[None].to(model.cfg.device), return_type="logits")[0, list(positions)]
    err = float((fast - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
    tolerance = PROBE_TOLERANCE if expected.dtype in (torch.float32, torch.float64) else 2e-2
    if not err <= tolerance:
        raise _Unsupported(
            f"the fast path's logits differ from the bridge's own forward by {err:.1e} of the largest on a probe "
            "(a scaled or soft-capped output head, scaled residual branches, or blocks that cannot be rerun alone)"
        )
