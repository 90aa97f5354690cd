"""The fast path behind :mod:`kn_lens.attribution` (same numbers as the plain reference, far less work).

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

Every dtype: the blocks run in the model's dtype, the path's points are interpolated in float32, the objective is
computed in float32 and the steps are summed in the device's accumulator dtype
(:func:`kn_lens._device.accumulator_dtype`). How many rows share a pass: :mod:`~kn_lens.attribution._memory`.

Encoders get the first, third and fourth (and packing, of prompts of equal length); bidirectional attention lets
every position see the site, so all positions are recomputed from block ``L + 1`` on.

The steps that touch the model (the clean pass, stacking a pack, a row group entering, one block, the head) come
from an :class:`~kn_lens.attribution._engine.Engine`: :mod:`~kn_lens.attribution._hooked`'s computes a
``HookedTransformer``/``HookedEncoder``'s blocks from their weights; :mod:`~kn_lens.attribution._bridge`'s reruns
a ``TransformerBridge``'s own blocks. Everything else here (packing, the memory plan, the quadrature, the deltas,
the ablations) is shared by both. Every function takes the call's checked arguments as one
:class:`~kn_lens.attribution._common.Request`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from kn_lens._device import accumulator_dtype
from kn_lens._progress import progress_bar
from kn_lens._typing import Model, is_encoder
from kn_lens.attribution import _bridge, _engine, _hooked, _memory
from kn_lens.attribution._common import Request, interpolate
from kn_lens.attribution._engine import Engine, Pack
from kn_lens.backends import is_bridge
from kn_lens.prompts import Prompt
from kn_lens.scoring import Objective, with_grad

PACK_SIZE = 16

"""At most this many prompts share one pack of passes (their clean state is held while the pack runs)."""


def engine_of(model: Model) -> Engine:
    """The model's backend steps (built at each call: tests spy on them)."""
    return _bridge.engine() if is_bridge(model) else _hooked.engine()


def _run(
    model: Model, pack: Pack, units: list[tuple[int, int]], hook: str, xs: list[Tensor], objective: Objective
) -> Tensor:
    """Objective for every row of every unit: ``xs[u]`` ([rows, d_mlp]) is the hooked activation at the site of
    layer ``units[u][1]`` in prompt ``units[u][0]`` of the pack. Rows join at block ``layer + 1``; returns
    ``[n_rows_total]`` in unit order."""
    engine = engine_of(model)
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
    f = _engine.row_objective(model, resid, pack.cleans, row_ids, objective, engine.unembed)
    if order == sorted(order):
        return f
    chunks = dict(zip(order, f.split([xs[u].shape[0] for u in order]), strict=True))
    return torch.cat([chunks[u] for u in range(len(units))])


def _row_bytes(model: Model, prompt: Prompt, layer: int, keys: int, objective: Objective) -> float:
    """Bytes one row of group ``layer`` of ``prompt`` keeps for the backward pass (see
    :func:`kn_lens.attribution._memory.row_bytes`): the recomputed positions attend to ``keys`` positions (padding
    included) in every block above ``layer``; the logits are computed at the target positions (a callable metric:
    at every recomputed position, and it reads them all, the clean prefix's in front)."""
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
    return key if is_encoder(model) or engine_of(model).can_pad(model) else (*key, start)


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
def integrated_gradients(model: Model, prompt: Prompt, request: Request) -> tuple[Tensor, Tensor | None]:
    """Fast IG of one prompt: one clean pass, then all layers' steps in shared batches (see the module docstring)."""
    return integrated_gradients_packed(model, [prompt], request, pack=False)[0]


@with_grad
def integrated_gradients_packed(
    model: Model,
    prompts: Sequence[Prompt],
    request: Request,
    *,
    pack: bool = True,
    desc: str = "IG (fast), passes",
) -> list[tuple[Tensor, Tensor | None]]:
    """Fast IG of several single-target prompts, the rows of several prompts sharing passes (see the module
    docstring); one ``(scores, deltas)`` per prompt, each what :func:`integrated_gradients` gives it alone (to
    float32 rounding: a matrix product may round differently in a larger batch).

    Prompts pack by the shape of their recomputed part (:func:`_shape_key`); a callable metric's prompts run one at
    a time (its logits span every position, and it is called with one prompt). The memory plan adds up the rows
    of every prompt of a pack (padding included) against ``request.memory_budget`` (bytes; None: the device's
    default, :func:`~kn_lens.attribution._memory.default_budget`); ``request.internal_batch_size`` puts that many
    steps of every layer of every prompt of the pack in each pass. ``pack=False``: one prompt per pack. Steps are
    summed in the device's accumulator dtype (float64, float32 on MPS); scores and deltas come back as float32 on
    the CPU.
    """
    prompts = list(prompts)
    engine = engine_of(model)
    layers, objective, alphas = request.layers, request.objective, request.alphas
    device = next(model.parameters()).device
    memory = _memory.budget(request.memory_budget, device)
    acc = accumulator_dtype(device)
    packs = _packs(model, prompts, objective, pack)
    plans = [
        _pack_plan(model, [prompts[i] for i in members], layers, len(alphas), objective, request.internal_batch_size,
                   memory)
        for members in packs
    ]  # fmt: skip
    kind = request.kind
    results: list[tuple[Tensor, Tensor | None]] = [None] * len(prompts)  # type: ignore[list-item]
    bar = progress_bar(None, desc, enabled=request.progress, inner=True, total=sum(len(p) for p in plans))
    for members, passes in zip(packs, plans, strict=True):
        cleans = [engine.clean_pass(model, prompts[i], layers, objective) for i in members]
        stacked = engine.stack(model, cleans)
        act = torch.stack([c.acts[kind][layers] for c in cleans])  # [n, G, d]
        base = torch.zeros_like(act) if request.baselines is None else request.baselines.to(act.dtype).expand_as(act)
        diff = act.float() - base.float()  # the path's length, in float32 whatever the model's dtype
        n = len(members)
        total = torch.zeros(act.shape, dtype=acc, device=act.device)
        f_base = torch.zeros(n, len(layers), dtype=torch.float64)
        weights_ = request.weights.to(acc).to(act.device)  # float64 on the CPU first: MPS has no float64
        for units in passes:
            xs, extras, where = [], [], []
            for u, first, end in units:
                g, i = divmod(u, n)
                a = alphas[first:end].float()
                extra = request.want_delta and first == 0  # one more row at alpha = 0 for F(baseline)
                if extra:
                    a = torch.cat([a, a.new_zeros(1)])
                xs.append(interpolate(base[i, g], diff[i, g], a.to(act.device), act.dtype))
                extras.append(extra)
                where.append((i, layers[g]))
            f = _run(model, stacked, where, request.hook, xs, objective)
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
            if request.want_delta:
                f_clean = float(cleans[i].f_clean)
                deltas = (scores[i].double().sum(1) - (f_clean - f_base[i])).float()
            results[member] = (scores[i], deltas)
    bar.close()
    return results


@torch.no_grad()
def ablation_effects(model: Model, prompt: Prompt, request: Request) -> Tensor:
    """Exact ablation of every neuron (to ``request.ablated``), ``chunk`` neurons of every layer per shared pass:
    ``F(clean) - F(ablated)`` (float32, CPU); ``chunk`` from ``request.memory_budget`` (bytes; None: the device's
    default) unless ``request.internal_batch_size`` gives it."""
    engine = engine_of(model)
    layers, objective, ablated = request.layers, request.objective, request.ablated
    clean = engine.clean_pass(model, prompt, layers, objective)
    act = clean.acts[request.kind][layers]  # [G, d]
    d_mlp = act.shape[1]
    keys = len(prompt)
    per_row = sum(_row_bytes(model, prompt, layer, keys, objective) for layer in layers)
    memory = _memory.budget(request.memory_budget, act.device) * _memory.NO_BACKWARD_FACTOR
    chunk = request.internal_batch_size or _memory.rows_per_pass(per_row, memory)
    chunk = min(chunk, d_mlp)
    out = torch.zeros(len(layers), d_mlp, dtype=torch.float32)
    f_clean = clean.f_clean.float()
    for start in progress_bar(range(0, d_mlp, chunk), "ablations (fast)", enabled=request.progress, inner=True):
        idx = torch.arange(start, min(start + chunk, d_mlp), device=act.device)
        rows = torch.arange(len(idx), device=act.device)
        xs = []
        for g in range(len(layers)):
            x = act[g].expand(len(idx), -1).clone()
            x[rows, idx] = ablated[g, idx].to(x.dtype)
            xs.append(x)
        f = _run(model, engine.stack(model, [clean]), [(0, layer) for layer in layers], request.hook, xs, objective)
        f = f.view(len(layers), len(idx))
        out[:, start : start + len(idx)] = (f_clean - f.float()).cpu()  # larger = supports the target
    return out
