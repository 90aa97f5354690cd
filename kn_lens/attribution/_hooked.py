"""The fast path's engine for a ``HookedTransformer``/``HookedEncoder``: blocks computed from their weights.

:mod:`~kn_lens.attribution._fast` drives the fast path; this module supplies its steps (an
:class:`~kn_lens.attribution._engine.Engine`) for TransformerLens' own model classes, whose blocks it computes
without their hook points, with their own arithmetic:

* **Clean pass.** One forward, block by block, keeps the activations at the site, the residual stream leaving each
  requested block and (causal models) the keys and values of the positions before the site, as a frozen
  TransformerLens key/value cache.
* **Rows.** A row of layer ``L`` leaves block ``L`` with the clean residual, except at the site, where the
  block's output is recomputed from the new activation as the block computes it (clean ``resid_mid`` plus the
  MLP's output projection of the new ``mlp_post``), so the rows carry the same rounding as the plain path.
* **Every dtype.** The blocks run in the model's dtype with TransformerLens' own arithmetic (``F.linear`` on
  contiguous transposed weights in half precision, as its ``GatedMLP`` and ``Unembed`` do).

Encoders (``HookedEncoder``) recompute every position from block ``L + 1`` on (bidirectional attention lets every
position see the site) and pack only prompts of equal length (padding an encoder prompt would cost a full
recomputation of every padded position).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from kn_lens._device import is_half
from kn_lens._typing import Model, is_encoder
from kn_lens.attribution import _engine
from kn_lens.attribution._engine import Clean, Engine, Pack, left_padded, per_row, relative, with_site
from kn_lens.backends import is_hooked
from kn_lens.prompts import Prompt
from kn_lens.scoring import Objective

try:  # architectures whose norms sit after the sublayers (OLMo 2); the fast path does not model them
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES
except ImportError:  # pragma: no cover - older TransformerLens
    POST_NORM_ARCHITECTURES = ()


def unsupported(model: Model, hook: str) -> str | None:
    """Why this fast path cannot run this model exactly (a one-line reason), or None when it can (a
    ``TransformerBridge``: :func:`kn_lens.attribution._bridge.unsupported`)."""
    if not is_hooked(model):
        return f"{type(model).__name__} is neither a HookedTransformer/HookedEncoder nor a TransformerBridge"
    cfg = model.cfg
    if cfg.act_fn is not None and cfg.act_fn.endswith("_ln"):
        return f"act_fn {cfg.act_fn!r} has a LayerNorm inside the MLP (SoLU), which the fast path does not model"
    if is_encoder(model):
        if hasattr(model, "mlm_head") and hasattr(model, "unembed"):
            return None
        return "this HookedEncoder has no MLM head"
    checks = {
        "parallel attention and MLP": cfg.parallel_attn_mlp,
        "split q/k/v inputs (use_split_qkv_input)": cfg.use_split_qkv_input,
        "use_attn_in": cfg.use_attn_in,
        "norms before and after each sublayer": cfg.use_normalization_before_and_after,
        "post-norm blocks": cfg.original_architecture in POST_NORM_ARCHITECTURES,
        f"{cfg.positional_embedding_type!r} positions": cfg.positional_embedding_type not in ("standard", "rotary"),
        "a mixture-of-experts MLP": getattr(cfg, "num_experts", None),
        "soft-capped logits": (getattr(cfg, "output_logits_soft_cap", 0.0) or 0.0) > 0,
        "a model split over several devices": getattr(cfg, "n_devices", 1) > 1,
    }
    found = [name for name, present in checks.items() if present]
    return f"the fast path does not model {found[0]}" if found else None


@torch.no_grad()
def _clean_pass(model: Model, prompt: Prompt, layers: list[int], objective: Objective) -> Clean:
    """One clean forward (with the same block arithmetic as the fast rows) that keeps what the rows reuse."""
    encoder = is_encoder(model)
    gated = bool(getattr(model.cfg, "gated_mlp", False))
    start = 0 if encoder else prompt.site
    site = prompt.site
    tokens = prompt.tokens.to(model.cfg.device)[None]
    # the embedding, whatever its kind (HookedTransformer: stop before block 0)
    resid = model.embed(tokens) if encoder else model(tokens, stop_at_layer=0)
    acts: dict[str, list[Tensor]] = {"pre": [], "post": [], "pre_linear": [], "mid": []}
    kept: dict[int, Tensor] = {}
    keys: list[Tensor] = []
    values: list[Tensor] = []
    for layer, block in enumerate(model.blocks):
        entry = None
        if not encoder:
            entry = TransformerLensKeyValueCacheEntry.init_cache_entry(model.cfg, resid.device, 1)
        record: dict[str, Tensor] = {}
        resid = _block(block, resid, entry, encoder, gated, record)
        for kind, value in record.items():
            if kind in acts:
                acts[kind].append(value[0, site].clone())
        if layer in layers:
            kept[layer] = record["resid_post"][0, start:].clone()
        if entry is not None:
            keys.append(entry.past_keys[0, :start].clone())
            values.append(entry.past_values[0, :start].clone())
    clean = Clean(
        start=start,
        site=site - start,
        out_prompt=relative(prompt, start),
        resid=kept,
        acts={kind: torch.stack(v) for kind, v in acts.items() if v},
        keys=keys,
        values=values,
        f_clean=torch.zeros(()),
        prompt=prompt,
    )
    if callable(objective) and start > 0:  # positions before the site cannot change: their logits are clean
        clean.prefix_logits = _unembed(model, resid[0, :start])
    clean.f_clean = _engine.row_objective(model, resid[:, start:], [clean], None, objective, _unembed)[0]
    return clean


def _post_of(model: Model, clean: Clean, layer: int, hook: str, x: Tensor) -> Tensor:
    """``mlp_post`` at the site of ``layer`` when the hooked activation there is ``x`` ([rows, d_mlp])."""
    if hook == "mlp_post":
        return x
    mlp = model.blocks[layer].mlp
    gated = getattr(model.cfg, "gated_mlp", False)
    if hook == "mlp_pre":
        post = mlp.act_fn(x)
        if gated:
            post = post * clean.acts["pre_linear"][layer] + mlp.b_in
        return post
    # mlp_pre_linear (gated MLPs only)
    return mlp.act_fn(clean.acts["pre"][layer]) * x + mlp.b_in


def _enter(model: Model, clean: Clean, layer: int, hook: str, x: Tensor) -> Tensor:
    """Rows of group ``layer`` as they leave block ``layer``: the clean residual, except at the site, where the
    block's output is recomputed from the new activation as the block computes it (clean ``resid_mid`` plus the
    MLP's output projection of the new ``mlp_post``), so the rows carry the same rounding as the plain path."""
    post = _post_of(model, clean, layer, hook, x)
    gated = bool(getattr(model.cfg, "gated_mlp", False))
    out = _mlp_out(model.blocks[layer].mlp, post, gated)  # [rows, d_model]
    resid = with_site(clean.resid[layer], clean.site, clean.acts["mid"][layer] + out)
    if is_encoder(model):
        resid = model.blocks[layer].ln2(resid)  # BERT blocks end with a post-LayerNorm
    return resid


def _can_pad(model: Model) -> bool:
    """Whether causal prefixes of different lengths may share passes (left-padded, masked out of attention).

    TransformerLens counts rotary positions from the attention mask, and left padding keeps the distance between
    a query and every real key (local attention windows stay right); Qwen-style log-n scaling and dynamic NTK
    rotary scale by the padded length, so those models pack only prefixes of equal length."""
    cfg = model.cfg
    scaled = getattr(cfg, "use_logn_attn", False) or getattr(cfg, "use_dynamic_ntk_rope", False)
    return not (is_encoder(model) or scaled)


def _stack(model: Model, cleans: list[Clean]) -> Pack:
    """Stack the clean keys/values of the prompts of a pack, left-padding shorter prefixes (see :func:`_can_pad`)."""
    if is_encoder(model):
        return Pack(cleans, [], [], None)
    prefix = max(c.start for c in cleans)
    if len(cleans) == 1:  # a view, no copy
        clean = cleans[0]
        return Pack(cleans, [k[None] for k in clean.keys], [v[None] for v in clean.values], None)
    blocks = range(model.cfg.n_layers)  # keys/values: [start, n_kv_heads, d_head] per prompt
    keys = [left_padded([c.keys[block] for c in cleans], prefix, dim=0) for block in blocks]
    values = [left_padded([c.values[block] for c in cleans], prefix, dim=0) for block in blocks]
    mask = None
    if any(c.start != prefix for c in cleans):
        recomputed = len(cleans[0].prompt) - cleans[0].start
        mask = torch.ones(len(cleans), prefix + recomputed, dtype=torch.long, device=keys[0].device)
        for i, clean in enumerate(cleans):
            mask[i, : prefix - clean.start] = 0
    return Pack(cleans, keys, values, mask)


def _entry(pack: Pack, block: int, rows: int, row_prompt: Tensor | None):
    """The frozen key/value cache entry of block ``block`` for ``rows`` rows (``row_prompt``: each row's prompt)."""
    if not pack.keys or pack.keys[block].shape[1] == 0:
        return None
    keys, values = per_row(pack.keys[block], rows, row_prompt), per_row(pack.values[block], rows, row_prompt)
    return TransformerLensKeyValueCacheEntry(past_keys=keys, past_values=values, frozen=True)


def _step(model: Model, pack: Pack, block_index: int, resid: Tensor, row_prompt: Tensor | None) -> Tensor:
    """Block ``block_index`` for the rows in ``resid`` (``row_prompt``: each row's prompt in the pack, or None)."""
    entry = _entry(pack, block_index, resid.shape[0], row_prompt)
    mask = None if pack.mask is None or row_prompt is None else pack.mask[row_prompt]
    gated = bool(getattr(model.cfg, "gated_mlp", False))
    return _block(model.blocks[block_index], resid, entry, is_encoder(model), gated, mask=mask)


def _unembed(model: Model, resid: Tensor) -> Tensor:
    """Logits from final residuals ``[..., d_model]``: final norm (or BERT's MLM head), then the unembedding."""
    if is_encoder(model):
        resid = model.mlm_head(resid)
    elif model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    unembed = model.unembed
    return _nn_linear(resid, unembed.W_U, unembed.b_U)


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight + bias`` for ``weight`` [d_in, d_out], without copying the weight (TransformerLens' MLP computes
    its projections this way: ``batch_addmm``)."""
    flat = x.reshape(-1, x.shape[-1])
    out = flat @ weight if bias is None else torch.addmm(bias, flat, weight)
    return out.view(*x.shape[:-1], weight.shape[-1])


def _nn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight + bias`` as TransformerLens' gated MLP and unembedding compute it.

    In half precision they call ``F.linear`` with the transposed weight made contiguous (transformers'
    ``nn.Linear`` layout), because the matmul's accumulation order, and so its rounding, depends on the layout; the
    fast path does the same there, to give the plain path's numbers. In float32 the layouts agree to float32
    rounding, and :func:`_linear` spares the copy of the weight on every call.
    """
    if is_half(x.dtype):
        return F.linear(x, weight.T.contiguous(), bias)
    return _linear(x, weight, bias)


def _mlp_out(mlp, post: Tensor, gated: bool) -> Tensor:
    """The MLP's output projection of ``post`` (``mlp_post``), as the MLP computes it."""
    return _nn_linear(post, mlp.W_out, mlp.b_out) if gated else _linear(post, mlp.W_out, mlp.b_out)


def _mlp(block, x: Tensor, gated: bool, record: dict[str, Tensor] | None = None) -> Tensor:
    """The block's MLP, computed from its weights with TransformerLens' arithmetic (its ``GatedMLP`` copies its
    weights on every call; the fast path copies them only in half precision, where the layout changes the
    rounding: see :func:`_nn_linear`)."""
    mlp = block.mlp
    if gated:
        pre = _nn_linear(x, mlp.W_gate, None)
        pre_linear = _nn_linear(x, mlp.W_in, None)
        post = mlp.act_fn(pre) * pre_linear + mlp.b_in
        if record is not None:
            record["pre_linear"] = pre_linear
    else:
        pre = _linear(x, mlp.W_in, mlp.b_in)
        post = mlp.act_fn(pre)
    if record is not None:
        record["pre"], record["post"] = pre, post
    return _mlp_out(mlp, post, gated)


def _block(
    block,
    resid: Tensor,
    entry,
    encoder: bool,
    gated: bool,
    record: dict[str, Tensor] | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """One transformer block without hook points; the same arithmetic as the block's forward. ``record`` (if
    given) receives ``mid`` (what the MLP's output is added to), the MLP's ``pre``/``pre_linear``/``post`` and
    ``resid_post`` (encoders: before the final LayerNorm, as at BERT's ``hook_resid_post``); ``mask`` ([rows, keys],
    causal) marks left padding of packed prefixes."""
    if encoder:  # BERT: post-LayerNorm after attention and after the MLP
        mid = block.ln1(resid + block.attn(resid, resid, resid))
        if record is not None:
            record["mid"] = mid
        post = mid + _mlp(block, mid, gated, record)
        if record is not None:
            record["resid_post"] = post
        return block.ln2(post)
    x = block.ln1(resid)
    mid = resid + block.attn(query_input=x, key_input=x, value_input=x, past_kv_cache_entry=entry, attention_mask=mask)
    if record is not None:
        record["mid"] = mid
    post = mid + _mlp(block, block.ln2(mid), gated, record)
    if record is not None:
        record["resid_post"] = post
    return post


def engine() -> Engine:
    """This module's steps for :mod:`~kn_lens.attribution._fast` (looked up at each call, so a test can spy on
    them)."""
    return Engine(_clean_pass, _stack, _enter, _step, _unembed, _can_pad)
