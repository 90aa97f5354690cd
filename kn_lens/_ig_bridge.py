"""Integrated gradients on a ``TransformerBridge``: every layer's steps in one batch, through the bridge's hooks.

The plain reference runs one forward+backward per layer (``n_steps`` rows each). The fast path of
:mod:`kn_lens._ig_fast` recomputes blocks by hand from ``HookedTransformer`` parameters to skip the layers below
each row's own layer and the positions before the site; a bridge delegates the layer loop to transformers, so
neither saving is available through its API (TransformerLens 3.9's bridge rejects ``start_at_layer``; 4.x
accepts it but transformers still runs the lower blocks, measured: a 20-row pass started at block 29 of SmolLM2
took 85% of the time of a full pass).

What does carry over is batching: the rows of all requested layers share passes. Rows of layer ``L`` carry their
interpolated activation at ``blocks.{L}.mlp.hook_{post,pre,...}`` and are left alone at every other hook, so each
row computes exactly what the plain path computes for it (same definition, same numbers to float rounding), but
with a few large matrix products instead of many small ones, and with the framework's per-call overhead paid once
per pass instead of once per layer. Everything runs through the bridge's own ``run_with_hooks``, so hooks a user
attached stay in force, as on the plain path.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from kn_lens import _memory
from kn_lens._device import accumulator_dtype
from kn_lens._typing import Model, hook_name
from kn_lens.backends import is_bridge
from kn_lens.prompts import Prompt
from kn_lens.scoring import Objective, objective_from_logits, with_grad


def supports(model: Model) -> bool:
    """Whether this path applies: a ``TransformerBridge`` (hooked models have the faster :mod:`kn_lens._ig_fast`)."""
    return is_bridge(model)


def _rows_per_pass(
    model: Model,
    prompt: Prompt,
    internal_batch_size: int | None,
    n_layers: int,
    objective: Objective,
    memory_budget: float | None,
    device: torch.device,
) -> int:
    if internal_batch_size is not None:  # steps of every layer per pass, as on the hooked fast path
        return internal_batch_size * n_layers
    # every row runs the whole model at every position and computes every position's logits
    n = len(prompt.tokens)
    cost = _memory.row_bytes(
        model.cfg,
        blocks=model.cfg.n_layers,
        positions=n,
        keys=n,
        logit_positions=n,
        objective_positions=n if callable(objective) else len(prompt.positions),
    )
    return _memory.rows_per_pass(cost, _memory.budget(memory_budget, device))


def _put_rows(site: int, rows: Tensor, values: Tensor):
    """A hook that writes ``values`` into the rows ``rows`` at position ``site`` (out of place, for autograd)."""

    def hook_fn(act: Tensor, hook) -> Tensor:
        act = act.clone()
        act[rows, site] = values.to(act.dtype)
        return act

    return hook_fn


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
    """IG scores ``[len(layers), d]`` (and convergence deltas ``[len(layers)]``), as the plain path defines them:
    float32 on the CPU, the objective in float32, the steps summed in the device's accumulator dtype; as many rows
    per pass as fit ``memory_budget`` (bytes; None: the device's default, see :mod:`kn_lens._memory`)."""
    names = [hook_name(layer, hook) for layer in layers]
    tokens = prompt.tokens.to(model.cfg.device).clone()[None]
    store: dict[str, Tensor] = {}

    def keep(act: Tensor, hook) -> None:
        store[hook.name] = act[0, prompt.site].detach().clone()

    with torch.no_grad():
        logits = model.run_with_hooks(tokens, return_type="logits", fwd_hooks=[(name, keep) for name in names])
        f_clean = objective_from_logits(logits, prompt, objective)[0]  # type: ignore[arg-type]
    clean = torch.stack([store[name] for name in names])  # [layers, d]
    base = torch.zeros_like(clean) if baselines is None else baselines.to(clean.device, clean.dtype)
    diff = clean.float() - base.float()  # the path's length, in float32 whatever the model's dtype
    acc = accumulator_dtype(clean.device)
    n_steps = len(alphas)
    units = torch.cartesian_prod(torch.arange(len(layers)), torch.arange(n_steps))  # (layer slot, step) per row
    totals = torch.zeros(len(layers), clean.shape[-1], dtype=acc, device=clean.device)
    rows_per_pass = _rows_per_pass(
        model, prompt, internal_batch_size, len(layers), objective, memory_budget, clean.device
    )
    starts = range(0, len(units), rows_per_pass)
    for start in tqdm(starts, desc="IG (bridge, batched), passes", disable=not progress, leave=False):
        part = units[start : start + rows_per_pass]
        slot, step = part[:, 0].to(clean.device), part[:, 1]
        a = alphas[step].float().to(clean.device)
        x = (base[slot].float() + a[:, None] * diff[slot]).to(clean.dtype).detach().requires_grad_(True)  # [rows, d]
        fwd_hooks = []
        for i in slot.unique().tolist():
            rows = (slot == i).nonzero().flatten()
            fwd_hooks.append((names[i], _put_rows(prompt.site, rows, x[rows])))
        logits = model.run_with_hooks(tokens.expand(len(part), -1), return_type="logits", fwd_hooks=fwd_hooks)
        f = objective_from_logits(logits, prompt, objective)  # type: ignore[arg-type]
        (grad,) = torch.autograd.grad(f.sum(), x)
        w = weights[step].to(acc).to(clean.device)  # float64 on the CPU first: MPS has no float64
        totals.index_add_(0, slot, w[:, None] * grad.to(acc))
    scores = (diff.to(acc) * totals).float().cpu()
    if not want_delta:
        return scores, None
    with torch.no_grad():  # F(baseline) of every layer in one pass: row i carries layer i's baseline
        slots = torch.arange(len(layers), device=clean.device)
        fwd_hooks = [(names[i], _put_rows(prompt.site, slots[i : i + 1], base[i : i + 1])) for i in range(len(names))]
        logits = model.run_with_hooks(tokens.expand(len(layers), -1), return_type="logits", fwd_hooks=fwd_hooks)
        f_base = objective_from_logits(logits, prompt, objective)  # type: ignore[arg-type]
    deltas = (scores.double().sum(-1) - (f_clean.float().cpu().double() - f_base.float().cpu().double())).float()
    return scores, deltas
