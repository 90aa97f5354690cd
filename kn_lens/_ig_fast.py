"""Fast paths behind :mod:`kn_lens.attribution` (same numbers as the plain reference, far less work).

What the plain reference recomputes and this module does not:

* **Layers below L.** Changing a neuron of layer ``L`` at the site leaves every layer ``< L`` as it was, so one
  clean pass gives each group of rows its starting point: the residual stream after block ``L``, in which only the
  site differs: there it is the clean ``resid_mid`` plus the MLP's output projection of ``f(x)`` (``f`` maps the
  hooked activation to ``mlp_post``), computed as the block computes it.
* **Earlier positions (causal models).** Positions before the site cannot see it: their keys and values are
  taken from the clean pass (a frozen TransformerLens key/value cache), and only the positions from the site on
  are recomputed. For a single-token target that is one position per row.
* **One batch for everything.** The rows of all layers (and all steps) share one pass; the rows of layer ``L``
  join the batch at block ``L + 1``, so no row runs a block it does not need.
* **Only what the objective reads.** The final norm / MLM head and the unembedding run at the target positions
  only (the full vocabulary is still needed there: a probability needs its softmax normaliser).

* **Several prompts per pass.** :func:`integrated_gradients_packed` puts the rows of several prompts into the same
  passes: each row carries its own prompt's starting residual and (causal models) its own prompt's frozen keys
  and values, and reads its own target. Prompts pack together when their recomputed part has the same shape
  (same number of recomputed positions, same site and target positions within it); for causal models the
  prefixes before the site may differ in length: shorter ones are left-padded and the padding is masked out of
  attention (TransformerLens then counts rotary positions from the first real token, and left padding keeps
  every distance between a query and a real key, so each row computes what it computes alone). Packing fills
  the passes that one prompt leaves half empty and pays the per-pass and per-block overhead once for several
  prompts; it does not reduce the arithmetic, so on a CPU (where one prompt's rows already keep the cores busy)
  it gains little, more where a pass is cheap relative to its overhead (accelerators, short prompts).

Every dtype: the blocks run in the model's dtype with TransformerLens' own arithmetic (``F.linear`` on contiguous
transposed weights in half precision, as its ``GatedMLP`` and ``Unembed`` do), the path's points are interpolated
in float32, the objective is computed in float32 and the steps are summed in the device's accumulator dtype
(:func:`kn_lens._device.accumulator_dtype`). How many rows share a pass: :mod:`kn_lens._memory`.

Encoders (``HookedEncoder``) get the first, third and fourth (and packing, of prompts of equal length: padding an
encoder prompt would cost a full recomputation of every padded position); bidirectional attention lets every
position see the site, so all positions are recomputed from block ``L + 1`` on.

The steps that touch the model (the clean pass, stacking a pack, a row group entering, one block, the head) come
from an :class:`Engine`: this module's computes a ``HookedTransformer``/``HookedEncoder``'s blocks from their
weights; :mod:`kn_lens._ig_bridge`'s reruns a ``TransformerBridge``'s own blocks. Everything else here (packing,
the memory plan, the quadrature, the deltas, the ablations) is shared by both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from kn_lens import _memory
from kn_lens._device import accumulator_dtype, is_half
from kn_lens._typing import Model, is_encoder
from kn_lens.backends import is_bridge, is_hooked
from kn_lens.prompts import Prompt
from kn_lens.scoring import Objective, objective_from_logits, with_grad

try:  # architectures whose norms sit after the sublayers (OLMo 2); the fast path does not model them
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES
except ImportError:  # pragma: no cover - older TransformerLens
    POST_NORM_ARCHITECTURES = ()

PACK_SIZE = 16
"""At most this many prompts share one pack of passes (their clean state is held while the pack runs)."""


def supports(model: Model, hook: str) -> bool:
    """Whether the fast path models this architecture exactly (otherwise the plain reference runs)."""
    return unsupported(model, hook) is None


def unsupported(model: Model, hook: str) -> str | None:
    """Why the fast path cannot run this model exactly (a one-line reason), or None when it can.

    A ``TransformerBridge`` is answered by :func:`kn_lens._ig_bridge.unsupported` (its blocks are run through the
    bridge's own modules, checked once per model against the plain path)."""
    if is_bridge(model):
        from kn_lens import _ig_bridge

        return _ig_bridge.unsupported(model, hook)
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


@dataclass
class _Clean:
    """What one clean pass leaves behind for the fast path."""

    start: int  # first recomputed position (causal: the site; encoders: 0)
    site: int  # the site, relative to ``start``
    out_prompt: Prompt  # the prompt with target positions relative to ``start`` (for objective_from_logits)
    resid: dict[int, Tensor]  # layer -> residual after block L (encoders: before its final LayerNorm) [Q, d_model]
    acts: dict[str, Tensor]  # "pre" / "pre_linear" / "post" -> [n_layers, d_mlp], "mid" -> [n_layers, d_model]
    keys: list[Tensor]  # per block: clean keys of positions < start [start, n_kv_heads, d_head] (causal)
    values: list[Tensor]
    f_clean: Tensor  # objective of the clean run (scalar)
    prompt: Prompt  # the prompt as given (a callable metric reads it)
    prefix_logits: Tensor | None = None  # clean logits of positions < start [start, d_vocab] (callable metrics)


@torch.no_grad()
def _clean_pass(model: Model, prompt: Prompt, layers: list[int], objective: Objective) -> _Clean:
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
    out_prompt = dataclasses.replace(prompt, positions=tuple(p - start for p in prompt.positions))
    clean = _Clean(
        start=start,
        site=site - start,
        out_prompt=out_prompt,
        resid=kept,
        acts={kind: torch.stack(v) for kind, v in acts.items() if v},
        keys=keys,
        values=values,
        f_clean=torch.zeros(()),
        prompt=prompt,
    )
    if callable(objective) and start > 0:  # positions before the site cannot change: their logits are clean
        clean.prefix_logits = _unembed(model, resid[0, :start])
    clean.f_clean = _objective(model, resid[:, start:], [clean], None, objective)[0]
    return clean


def _post_of(model: Model, clean: _Clean, layer: int, hook: str, x: Tensor) -> Tensor:
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


def _enter(model: Model, clean: _Clean, layer: int, hook: str, x: Tensor) -> Tensor:
    """Rows of group ``layer`` as they leave block ``layer``: the clean residual, except at the site, where the
    block's output is recomputed from the new activation as the block computes it (clean ``resid_mid`` plus the
    MLP's output projection of the new ``mlp_post``), so the rows carry the same rounding as the plain path."""
    rows = x.shape[0]
    post = _post_of(model, clean, layer, hook, x)
    gated = bool(getattr(model.cfg, "gated_mlp", False))
    out = _mlp_out(model.blocks[layer].mlp, post, gated)  # [rows, d_model]
    base = clean.resid[layer]
    site = clean.site
    resid = torch.cat(
        [
            base[:site].expand(rows, -1, -1),
            (clean.acts["mid"][layer] + out)[:, None],
            base[site + 1 :].expand(rows, -1, -1),
        ],
        dim=1,
    )
    if is_encoder(model):
        resid = model.blocks[layer].ln2(resid)  # BERT blocks end with a post-LayerNorm
    return resid


@dataclass
class _Pack:
    """The clean state of the prompts whose rows share passes, stacked so every row finds its own prompt's."""

    cleans: list[_Clean]
    keys: list[Tensor]  # per block: clean keys of the prefixes [n_prompts, prefix, n_kv_heads, d_head] (causal)
    values: list[Tensor]
    mask: Tensor | None  # [n_prompts, prefix + recomputed]: 0 marks left padding; None when no prompt is padded


def _can_pad(model: Model) -> bool:
    """Whether causal prefixes of different lengths may share passes (left-padded, masked out of attention).

    TransformerLens counts rotary positions from the attention mask, and left padding keeps the distance between
    a query and every real key (local attention windows stay right); Qwen-style log-n scaling and dynamic NTK
    rotary scale by the padded length, so those models pack only prefixes of equal length."""
    cfg = model.cfg
    scaled = getattr(cfg, "use_logn_attn", False) or getattr(cfg, "use_dynamic_ntk_rope", False)
    return not (is_encoder(model) or scaled)


def _stack(model: Model, cleans: list[_Clean]) -> _Pack:
    """Stack the clean keys/values of the prompts of a pack, left-padding shorter prefixes (see :func:`_can_pad`)."""
    if is_encoder(model):
        return _Pack(cleans, [], [], None)
    prefix = max(c.start for c in cleans)
    if len(cleans) == 1:  # a view, no copy
        clean = cleans[0]
        return _Pack(cleans, [k[None] for k in clean.keys], [v[None] for v in clean.values], None)
    keys, values = [], []
    for block in range(model.cfg.n_layers):
        k = cleans[0].keys[block].new_zeros(len(cleans), prefix, *cleans[0].keys[block].shape[1:])
        v = torch.zeros_like(k)
        for i, clean in enumerate(cleans):
            k[i, prefix - clean.start :] = clean.keys[block]
            v[i, prefix - clean.start :] = clean.values[block]
        keys.append(k)
        values.append(v)
    mask = None
    if any(c.start != prefix for c in cleans):
        recomputed = len(cleans[0].prompt) - cleans[0].start
        mask = torch.ones(len(cleans), prefix + recomputed, dtype=torch.long, device=keys[0].device)
        for i, clean in enumerate(cleans):
            mask[i, : prefix - clean.start] = 0
    return _Pack(cleans, keys, values, mask)


def _entry(pack: _Pack, block: int, rows: int, row_prompt: Tensor | None):
    """The frozen key/value cache entry of block ``block`` for ``rows`` rows (``row_prompt``: each row's prompt)."""
    if not pack.keys or pack.keys[block].shape[1] == 0:
        return None
    keys, values = pack.keys[block], pack.values[block]
    if row_prompt is None:  # every row from the one prompt: expand, no copy
        keys, values = keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1)
    else:
        keys, values = keys[row_prompt], values[row_prompt]
    return TransformerLensKeyValueCacheEntry(past_keys=keys, past_values=values, frozen=True)


def _step(model: Model, pack: _Pack, block_index: int, resid: Tensor, row_prompt: Tensor | None) -> Tensor:
    """Block ``block_index`` for the rows in ``resid`` (``row_prompt``: each row's prompt in the pack, or None)."""
    entry = _entry(pack, block_index, resid.shape[0], row_prompt)
    mask = None if pack.mask is None or row_prompt is None else pack.mask[row_prompt]
    gated = bool(getattr(model.cfg, "gated_mlp", False))
    return _block(model.blocks[block_index], resid, entry, is_encoder(model), gated, mask=mask)


@dataclass(frozen=True)
class Engine:
    """The backend-specific steps of the fast path; everything else (packing, memory plan, quadrature, deltas) is
    shared. :func:`_engine` gives a model's: HookedTransformer/HookedEncoder here, a TransformerBridge in
    :mod:`kn_lens._ig_bridge`."""

    clean_pass: Callable  # (model, prompt, layers, objective) -> _Clean
    stack: Callable  # (model, cleans) -> _Pack
    enter: Callable  # (model, clean, layer, hook, x [rows, d_mlp]) -> residual leaving block ``layer``
    step: Callable  # (model, pack, block_index, resid, row_prompt) -> residual leaving block ``block_index``
    unembed: Callable  # (model, final residual [..., d_model]) -> logits [..., d_vocab]
    can_pad: Callable  # (model) -> whether causal prefixes of different lengths may share passes


def _engine(model: Model) -> Engine:
    if is_bridge(model):
        from kn_lens import _ig_bridge

        return _ig_bridge.engine()
    return Engine(_clean_pass, _stack, _enter, _step, _unembed, _can_pad)  # looked up now: tests spy on them


def _run(
    model: Model, pack: _Pack, units: list[tuple[int, int]], hook: str, xs: list[Tensor], objective: Objective
) -> Tensor:
    """Objective for every row of every unit: ``xs[u]`` ([rows, d_mlp]) is the hooked activation at the site of
    layer ``units[u][1]`` in prompt ``units[u][0]`` of the pack. Rows join at block ``layer + 1``; returns
    ``[n_rows_total]`` in unit order."""
    engine = _engine(model)
    n_layers = model.cfg.n_layers
    several = len(pack.cleans) > 1
    entering: dict[int, list[int]] = {}
    for u, (_, layer) in enumerate(units):
        entering.setdefault(layer + 1, []).append(u)
    resid: Tensor | None = None
    order: list[int] = []  # units in the order their rows sit in ``resid``
    row_prompt: Tensor | None = None
    for block_index in range(min(entering), n_layers + 1):
        if block_index in entering:
            joining = entering.pop(block_index)
            parts = [] if resid is None else [resid]
            parts += [engine.enter(model, pack.cleans[units[u][0]], units[u][1], hook, xs[u]) for u in joining]
            resid = torch.cat(parts) if len(parts) > 1 else parts[0]
            order += joining
            if several:
                ids = [units[u][0] for u in order for _ in range(xs[u].shape[0])]
                row_prompt = torch.tensor(ids, device=resid.device)
        if block_index == n_layers:
            break
        assert resid is not None
        resid = engine.step(model, pack, block_index, resid, row_prompt)
    assert resid is not None
    row_ids = None if row_prompt is None else row_prompt.tolist()
    f = _objective(model, resid, pack.cleans, row_ids, objective, engine.unembed)
    if order == sorted(order):
        return f
    chunks = dict(zip(order, f.split([xs[u].shape[0] for u in order]), strict=True))
    return torch.cat([chunks[u] for u in range(len(units))])


def _unembed(model: Model, resid: Tensor) -> Tensor:
    """Logits from final residuals ``[..., d_model]``: final norm (or BERT's MLM head), then the unembedding."""
    if is_encoder(model):
        resid = model.mlm_head(resid)
    elif model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    unembed = model.unembed
    return _nn_linear(resid, unembed.W_U, unembed.b_U)


def _objective(
    model: Model,
    resid: Tensor,
    cleans: list[_Clean],
    row_prompt: list[int] | None,
    objective: Objective,
    unembed: Callable | None = None,
) -> Tensor:
    """Objective of every row from the last residual (positions from each prompt's ``start`` on); ``row_prompt``
    gives each row's prompt in ``cleans`` (None: all rows belong to ``cleans[0]``). Preset objectives run the final
    norm / MLM head and the unembedding at the target positions only (the same positions for every prompt of a
    pack); a callable metric (one prompt at a time) gets the full logits, the clean logits of positions before
    ``start``, which cannot change, in front. ``unembed``: the engine's head (default: the hooked model's)."""
    unembed = unembed or _unembed
    clean = cleans[0]
    if callable(objective):
        assert row_prompt is None, "a callable metric is attributed one prompt at a time"
        logits = unembed(model, resid)
        if clean.prefix_logits is not None:
            prefix = clean.prefix_logits.to(logits.dtype).expand(logits.shape[0], -1, -1)
            logits = torch.cat([prefix, logits], dim=1)
        return objective_from_logits(logits, clean.prompt, objective)
    positions = torch.tensor(clean.out_prompt.positions, device=resid.device)
    logits = unembed(model, resid[:, positions])
    at = tuple(range(len(positions)))
    if row_prompt is None:
        return objective_from_logits(logits, dataclasses.replace(clean.out_prompt, positions=at), objective)
    outs = [dataclasses.replace(c.out_prompt, positions=at) for c in cleans]
    return objective_from_logits(logits, [outs[i] for i in row_prompt], objective)


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


def _row_bytes(model: Model, prompt: Prompt, layer: int, keys: int, objective: Objective) -> float:
    """Bytes one row of group ``layer`` of ``prompt`` keeps for the backward pass (see
    :func:`kn_lens._memory.row_bytes`): the recomputed positions attend to ``keys`` positions (padding included)
    in every block above ``layer``; the logits are computed at the target positions (a callable metric: at every
    recomputed position, and it reads them all, the clean prefix's in front)."""
    start = 0 if is_encoder(model) else prompt.site
    recomputed = len(prompt) - start
    metric = callable(objective)
    return _memory.row_bytes(
        model.cfg,
        blocks=model.cfg.n_layers - 1 - layer,
        positions=recomputed,
        keys=keys,
        logit_positions=len(prompt) + recomputed if metric else len(prompt.positions),
        objective_positions=len(prompt) if metric else len(prompt.positions),
    )


def _shape_key(model: Model, prompt: Prompt, objective: Objective) -> tuple | None:
    """Prompts with equal keys may share passes (None: this prompt runs alone). The key is the shape of the
    recomputed part: how many positions, where the site and the target positions sit in it (and, where prefixes
    cannot be padded, the prefix length too)."""
    if callable(objective):
        return None
    start = 0 if is_encoder(model) else prompt.site
    key: tuple = (len(prompt) - start, prompt.site - start, tuple(p - start for p in prompt.positions))
    return key if is_encoder(model) or _engine(model).can_pad(model) else (*key, start)


def _packs(model: Model, prompts: Sequence[Prompt], objective: Objective, pack: bool) -> list[list[int]]:
    """Indices of ``prompts`` grouped into packs: equal :func:`_shape_key`, at most :data:`PACK_SIZE` each, similar
    prefix lengths together (less padding)."""
    if not pack:
        return [[i] for i in range(len(prompts))]
    groups: dict[object, list[int]] = {}
    for i, prompt in enumerate(prompts):
        key = _shape_key(model, prompt, objective)
        groups.setdefault(("alone", i) if key is None else key, []).append(i)
    out = []
    for members in groups.values():
        members = sorted(members, key=lambda i: len(prompts[i]))
        out += [members[k : k + PACK_SIZE] for k in range(0, len(members), PACK_SIZE)]
    return sorted(out)


def _pack_plan(
    model: Model,
    prompts: list[Prompt],
    layers: list[int],
    n_steps: int,
    objective: Objective,
    internal_batch_size: int | None,
    memory_budget: float,
) -> list[list[tuple[int, int, int]]]:
    """Passes of ``(unit, first step, end step)``; unit ``u`` is layer ``layers[u // n]`` of prompt ``u % n``."""
    n = len(prompts)
    units = len(layers) * n
    if internal_batch_size:  # that many steps of every layer of every prompt per pass
        return [
            [(u, first, min(first + internal_batch_size, n_steps)) for u in range(units)]
            for first in range(0, n_steps, internal_batch_size)
        ]
    encoder = is_encoder(model)
    starts = [0 if encoder else p.site for p in prompts]
    keys = max(starts) + len(prompts[0]) - starts[0]
    costs = [_row_bytes(model, prompts[u % n], layers[u // n], keys, objective) for u in range(units)]
    return _memory.plan(costs, n_steps, memory_budget)


@with_grad
def integrated_gradients(
    model: Model,
    prompt: Prompt,
    layers: list[int],
    alphas: Tensor,
    weights: Tensor,
    baselines: Tensor | None,
    objective: Objective,
    hook: str,
    internal_batch_size: int | None,
    want_delta: bool,
    progress: bool,
    *,
    memory_budget: float | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Fast IG: one clean pass, then all layers' steps in shared batches (see the module docstring)."""
    out = integrated_gradients_packed(
        model, [prompt], layers, alphas, weights, baselines, objective, hook, internal_batch_size, want_delta,
        progress=progress, pack=False, memory_budget=memory_budget,
    )  # fmt: skip
    return out[0]


def _interpolate(base: Tensor, diff: Tensor, alphas: Tensor, dtype: torch.dtype) -> Tensor:
    """Points ``base + alpha * diff`` of the path (``[steps, d]``), computed in float32 and stored in ``dtype``
    (the model's), a leaf that requires grad."""
    x = base.float() + alphas.float()[:, None] * diff.float()
    return x.to(dtype).detach().requires_grad_(True)


@with_grad
def integrated_gradients_packed(
    model: Model,
    prompts: Sequence[Prompt],
    layers: list[int],
    alphas: Tensor,
    weights: Tensor,
    baselines: Tensor | None,
    objective: Objective,
    hook: str,
    internal_batch_size: int | None,
    want_delta: bool,
    *,
    progress: bool = False,
    pack: bool = True,
    desc: str = "IG (fast), passes",
    memory_budget: float | None = None,
) -> list[tuple[Tensor, Tensor | None]]:
    """Fast IG of several single-target prompts, the rows of several prompts sharing passes (see the module
    docstring); one ``(scores, deltas)`` per prompt, each what :func:`integrated_gradients` gives it alone (to
    float32 rounding: a matrix product may round differently in a larger batch).

    Prompts pack by the shape of their recomputed part (:func:`_shape_key`); a callable metric's prompts run one at
    a time (its logits span every position, and it is called with one prompt). The memory plan adds up the rows
    of every prompt of a pack (padding included) against ``memory_budget`` (bytes; None: the device's default,
    :func:`kn_lens._memory.default_budget`); ``internal_batch_size`` puts that many steps of every layer of every
    prompt of the pack in each pass. ``pack=False``: one prompt per pack. Steps are summed in the device's
    accumulator dtype (float64, float32 on MPS); scores and deltas come back as float32 on the CPU.
    """
    prompts = list(prompts)
    engine = _engine(model)
    device = next(model.parameters()).device
    memory = _memory.budget(memory_budget, device)
    acc = accumulator_dtype(device)
    packs = _packs(model, prompts, objective, pack)
    plans = [
        _pack_plan(model, [prompts[i] for i in members], layers, len(alphas), objective, internal_batch_size, memory)
        for members in packs
    ]
    kind = {"mlp_post": "post", "mlp_pre": "pre", "mlp_pre_linear": "pre_linear"}[hook]
    results: list[tuple[Tensor, Tensor | None]] = [None] * len(prompts)  # type: ignore[list-item]
    bar = tqdm(total=sum(len(p) for p in plans), desc=desc, disable=not progress, leave=False)
    for members, passes in zip(packs, plans, strict=True):
        cleans = [engine.clean_pass(model, prompts[i], layers, objective) for i in members]
        stacked = engine.stack(model, cleans)
        act = torch.stack([c.acts[kind][layers] for c in cleans])  # [n, G, d]
        base = torch.zeros_like(act) if baselines is None else baselines.to(act.dtype).expand_as(act)
        diff = act.float() - base.float()  # the path's length, in float32 whatever the model's dtype
        n = len(members)
        total = torch.zeros(act.shape, dtype=acc, device=act.device)
        f_base = torch.zeros(n, len(layers), dtype=torch.float64)
        weights_ = weights.to(acc).to(act.device)  # float64 on the CPU first: MPS has no float64
        for units in passes:
            xs, extras, where = [], [], []
            for u, first, end in units:
                g, i = divmod(u, n)
                a = alphas[first:end].float()
                extra = want_delta and first == 0  # one more row at alpha = 0 for F(baseline)
                if extra:
                    a = torch.cat([a, a.new_zeros(1)])
                xs.append(_interpolate(base[i, g], diff[i, g], a.to(act.device), act.dtype))
                extras.append(extra)
                where.append((i, layers[g]))
            f = _run(model, stacked, where, hook, xs, objective)
            grads = torch.autograd.grad(f.sum(), xs)
            offset = 0
            for (u, first, end), x, grad, extra in zip(units, xs, grads, extras, strict=True):
                g, i = divmod(u, n)
                steps = end - first
                total[i, g] += (weights_[first:end, None] * grad[:steps].to(acc)).sum(0)
                if extra:
                    f_base[i, g] = float(f[offset + steps].detach())
                offset += x.shape[0]
            bar.update()
        scores = (diff.to(acc) * total).float().cpu()
        for i, member in enumerate(members):
            deltas = None
            if want_delta:
                f_clean = float(cleans[i].f_clean)
                deltas = (scores[i].double().sum(1) - (f_clean - f_base[i])).float()
            results[member] = (scores[i], deltas)
    bar.close()
    return results


@torch.no_grad()
def ablation_effects(
    model: Model,
    prompt: Prompt,
    layers: list[int],
    ablated: Tensor,
    objective: Objective,
    hook: str,
    internal_batch_size: int | None,
    progress: bool,
    *,
    memory_budget: float | None = None,
) -> Tensor:
    """Exact ablation of every neuron, ``chunk`` neurons of every layer per shared pass: ``F(clean) - F(ablated)``
    (float32, CPU); ``chunk`` from ``memory_budget`` (bytes; None: the device's default) unless
    ``internal_batch_size`` gives it."""
    engine = _engine(model)
    clean = engine.clean_pass(model, prompt, layers, objective)
    kind = {"mlp_post": "post", "mlp_pre": "pre", "mlp_pre_linear": "pre_linear"}[hook]
    act = clean.acts[kind][layers]  # [G, d]
    d_mlp = act.shape[1]
    keys = len(prompt)
    per_row = sum(_row_bytes(model, prompt, layer, keys, objective) for layer in layers)
    memory = _memory.budget(memory_budget, act.device) * _memory.NO_BACKWARD_FACTOR
    chunk = internal_batch_size or _memory.rows_per_pass(per_row, memory)
    chunk = min(chunk, d_mlp)
    out = torch.zeros(len(layers), d_mlp, dtype=torch.float32)
    f_clean = clean.f_clean.float()
    for start in tqdm(range(0, d_mlp, chunk), desc="ablations (fast)", disable=not progress, leave=False):
        idx = torch.arange(start, min(start + chunk, d_mlp), device=act.device)
        rows = torch.arange(len(idx), device=act.device)
        xs = []
        for g in range(len(layers)):
            x = act[g].expand(len(idx), -1).clone()
            x[rows, idx] = ablated[g, idx].to(x.dtype)
            xs.append(x)
        f = _run(model, engine.stack(model, [clean]), [(0, layer) for layer in layers], hook, xs, objective)
        f = f.view(len(layers), len(idx))
        out[:, start : start + len(idx)] = (f_clean - f.float()).cpu()  # larger = supports the target
    return out
