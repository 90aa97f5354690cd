"""Integrated gradients of a target to every MLP neuron: one prompt (:func:`integrated_gradients`) or many
(:func:`integrated_gradients_many`, several prompts per fast pass).

For each layer ``L`` the activation at the site is moved along the straight path from a baseline to its clean
value, and the gradient of the objective is integrated along it with a quadrature rule
(:mod:`~kn_lens.attribution.quadrature`). :func:`~kn_lens.attribution.paths.attribution_path` picks the
implementation; the plain reference (:func:`_ig_plain`) lives here, the fast paths in
:mod:`~kn_lens.attribution._fast`. All take the call's checked arguments as one
:class:`~kn_lens.attribution._common.Request`.

Example:
    >>> scores, delta = integrated_gradients(model, "The capital of France is", " Paris", layers=[24],
    ...                                      return_convergence_delta=True)
    >>> scores.shape, delta.shape
    (torch.Size([1, 1536]), torch.Size([1]))
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from kn_lens._device import accumulator_dtype, evaluating
from kn_lens._progress import progress_bar
from kn_lens._typing import Model, check_model
from kn_lens.attribution import _fast, _memory
from kn_lens.attribution._common import (
    Baseline,
    Request,
    baselines_per_layer,
    check_batch,
    check_hook,
    check_options,
    clean_site,
    interpolate,
    many,
    mean_of_parts,
    mean_over_target_tokens,
    parts_of,
    plain_row_bytes,
    ready_prompts,
    replace_site,
    run_logits,
)
from kn_lens.attribution.paths import choose_path
from kn_lens.attribution.quadrature import Method, check_method, step_alphas
from kn_lens.inputs import to_prompt
from kn_lens.prompts import Prompt, TargetLike
from kn_lens.scoring import Objective, objective_from_logits, with_grad

__all__ = ["integrated_gradients", "integrated_gradients_many"]


@with_grad
def _ig_plain(model: Model, prompt: Prompt, request: Request) -> tuple[Tensor, Tensor | None]:
    """Reference IG: per layer, full sequence, one run_with_hooks forward+backward per batch of steps
    (``request.internal_batch_size`` steps, or as many as fit ``request.memory_budget``: see
    :mod:`~kn_lens.attribution._memory`)."""
    alphas, objective, site = request.alphas, request.objective, prompt.site
    clean, f_clean = clean_site(model, prompt, request.names, objective)
    dtype, device = clean.dtype, clean.device
    acc = accumulator_dtype(device)
    batch = request.internal_batch_size
    if batch is None:
        cost = plain_row_bytes(model, prompt, objective)
        batch = _memory.rows_per_pass(cost, _memory.budget(request.memory_budget, device), at_most=len(alphas))
    weights = request.weights.to(acc).to(device)  # float64 on the CPU first: MPS has no float64
    scores = torch.zeros(len(request.layers), clean.shape[-1], dtype=torch.float32)
    deltas = torch.zeros(len(request.layers), dtype=torch.float32) if request.want_delta else None
    for i, name in enumerate(progress_bar(request.names, "IG (plain), layers", enabled=request.progress, inner=True)):
        base = torch.zeros_like(clean[i]) if request.baselines is None else request.baselines[i]
        diff = clean[i].float() - base.float()  # the path's length, in float32 whatever the model's dtype
        total = torch.zeros(diff.shape, dtype=acc, device=device)
        for start in range(0, len(alphas), batch):
            x = interpolate(base, diff, alphas[start : start + batch].float().to(device), dtype)
            logits = run_logits(model, prompt, len(x), [(name, replace_site(site, x))])
            f = objective_from_logits(logits, prompt, objective)  # type: ignore[arg-type]
            (grad,) = torch.autograd.grad(f.sum(), x)
            total += (weights[start : start + batch, None] * grad.to(acc)).sum(0)
        scores[i] = (diff.to(acc) * total).float().cpu()
        if deltas is not None:
            with torch.no_grad():
                logits = run_logits(model, prompt, 1, [(name, replace_site(site, base[None]))])
                f_base = objective_from_logits(logits, prompt, objective)[0]  # type: ignore[arg-type]
            deltas[i] = float(scores[i].double().sum() - (float(f_clean) - float(f_base)))
    return scores, deltas


def _ig_request(
    model: Model,
    layers: int | Sequence[int] | None,
    n_steps: int,
    method: str,
    baseline: Baseline,
    objective: Objective,
    hook: str,
    internal_batch_size: int | None,
    return_convergence_delta: bool,
    progress: bool,
    memory_budget: float | None,
) -> Request:
    """Check the arguments of integrated gradients once (before any computation) and gather them in a request:
    layers, baselines per layer, the path's points and weights."""
    layer_list = check_options(model, layers, objective, hook)
    check_method(method, n_steps)
    internal_batch_size = check_batch(internal_batch_size)
    _memory.check_budget(memory_budget)
    baselines = baselines_per_layer(model, baseline, layer_list, model.cfg.d_mlp, model.cfg.device)
    alphas, weights = step_alphas(method, n_steps)
    return Request(
        layers=layer_list,
        objective=objective,
        hook=hook,
        alphas=alphas,
        weights=weights,
        baselines=baselines,
        want_delta=return_convergence_delta,
        internal_batch_size=internal_batch_size,
        memory_budget=memory_budget,
        progress=progress,
    )


@evaluating
def integrated_gradients(
    model: Model,
    prompt: str | Prompt,
    target: TargetLike = None,
    *,
    layers: int | Sequence[int] | None = None,
    n_steps: int = 20,
    method: Method = "riemann_left",
    baseline: Baseline = "zero",
    objective: Objective = "prob",
    hook: str = "mlp_post",
    internal_batch_size: int | None = None,
    return_convergence_delta: bool = False,
    fast: bool = True,
    progress: bool = False,
    memory_budget: float | None = None,
) -> Float[Tensor, "layer d_mlp"] | tuple[Float[Tensor, "layer d_mlp"], Float[Tensor, " layer"]]:
    """Integrated-gradients attribution of a target to every neuron of the requested layers (Dai et al. 2022).

    For each layer ``L`` the activation at ``hook`` (default ``mlp_post``) at the prompt's site is moved along
    the straight path from ``baseline`` to its clean value, and the gradient of the objective of the target is
    integrated along it with the rule ``method`` (see :data:`METHODS`).

    Args:
        model: a ``HookedTransformer`` (causal) or ``HookedEncoder`` (masked LM).
        prompt: the prompt text (with ``target``), or a :class:`~kn_lens.prompts.Prompt` made with a target.
        target: the answer (``" Paris"``, a token id or ids); multi-token targets are supported (see
            :mod:`kn_lens.prompts`). With a ``Prompt``, replaces its target.
        layers: block indices to attribute (None = all). Rows come out in ascending layer order.
        n_steps: number of points on the path.
        method: integration rule, one of :data:`METHODS`. ``"eleuther"`` reproduces the EleutherAI package.
        baseline: ``"zero"`` or a tensor ``[d_mlp]`` / ``[n_layers, d_mlp]`` (e.g. mean activations).
        objective: ``"prob"`` (papers' choice), ``"logprob"`` or ``"logit"`` of the target, or a callable
            ``metric(logits, prompts) -> [batch]`` (see :mod:`kn_lens.scoring`, e.g. ``logit_diff``).
        hook: the MLP hook point, one of :data:`HOOKS` (``"mlp_pre"`` to match the EleutherAI package on GPT).
        internal_batch_size: steps per forward pass (plain), or steps of every layer per pass (fast; then all
            requested layers ride in one batch). None = as many as fit ``memory_budget``.
        return_convergence_delta: also return, per layer, ``sum(scores) - (F(clean) - F(baseline))``.
        fast: use the fast path (same scores to float32 rounding); False runs the plain reference.
            Architectures the fast path does not model exactly (parallel attention/MLP, post-norm blocks,
            soft-capped logits, mixture-of-experts, ...) use the plain reference (a ``TransformerBridge``: with a
            one-time warning giving the reason); a model with hooks attached uses it too, with a warning (the fast
            path would bypass them). :func:`attribution_path` tells which path runs and why.
        progress: show a progress bar.
        memory_budget: bytes one pass may keep for its backward pass; rows (steps, layers) that would not fit
            are split over several passes, with the same scores. None = the device's default: half of a CUDA
            device's available memory, 400 MiB on a CPU, 2 GiB on MPS (see :mod:`kn_lens.attribution._memory`).

    Returns:
        ``Float[Tensor, "layer d_mlp"]`` (float32, CPU, whatever the model's dtype and device), one row per
        requested layer in ascending order; with ``return_convergence_delta=True`` a tuple ``(scores, delta)``
        with ``delta: Float[Tensor, "layer"]``. The objective is computed in float32 and the steps are summed in
        float64 (float32 on MPS); the model runs in eval mode (a model in train mode is put back afterwards).

    Raises:
        ValueError: a layer out of range, ``n_steps < 1``, an unknown method/objective/hook/baseline, a target
            not in the vocabulary, a prompt without a target.
        TypeError: a model or prompt of the wrong type.

    Example:
        >>> scores = integrated_gradients(model, "The capital of France is", " Paris", layers=[20, 24])
        >>> scores.shape
        torch.Size([2, 1536])
    """
    check_model(model)
    prompt = to_prompt(model, prompt, target)
    request = _ig_request(model, layers, n_steps, method, baseline, objective, hook, internal_batch_size,
                          return_convergence_delta, progress, memory_budget)  # fmt: skip
    path_name, _ = choose_path(model, hook, fast, warn=True)
    path = _ig_plain if path_name == "plain" else _fast.integrated_gradients  # the fast path drives both backends
    scores, deltas = mean_over_target_tokens(lambda part: path(model, part, request), prompt, objective)
    return (scores, deltas) if return_convergence_delta else scores  # type: ignore[return-value]


@evaluating
def integrated_gradients_many(
    model: Model,
    prompts: Sequence[str | Prompt] | str | Prompt,
    targets: TargetLike | Sequence[TargetLike] = None,
    *,
    pack: bool = True,
    progress: bool = True,
    **kwargs,
) -> Float[Tensor, "prompt layer d_mlp"] | tuple[Float[Tensor, "prompt layer d_mlp"], Float[Tensor, "prompt layer"]]:
    """:func:`integrated_gradients` for several prompts, stacked: ``[prompt, layer, d_mlp]``.

    With ``pack=True`` (default) the fast path attributes several prompts in shared passes: the rows of every
    prompt (every layer, every step) that fit the fast path's memory budget run through the blocks together, each
    with its own prompt's clean state, so each prompt gets the scores it gets alone (to float32 rounding) for
    fewer, fuller passes. Prompts pack when the part the fast path recomputes has the same shape: causal models
    pack prompts of any length (shorter prefixes are padded and masked out of attention), encoders pack prompts
    of equal token length; multi-token targets pack token by token; a callable metric runs prompt by prompt.
    Both backends pack (a ``TransformerBridge`` too). Where no fast path runs (``fast=False``, an architecture it
    does not model, or hooks attached to the model: see :func:`attribution_path`), prompts run one at a time as with
    ``pack=False``. Packing saves per-pass overhead, not arithmetic: with all layers and 20 steps one prompt's rows
    already fill several passes of the memory budget and packing changes little; with a few layers or steps,
    where one prompt leaves its passes part-empty, it pays (measured in ``benchmarks/bench_packing.py``).

    Args:
        model: the model.
        prompts: prompt texts or Prompts.
        targets: one target for all prompts, or one per prompt (None when the prompts carry their targets).
        pack: attribute several prompts per pass on the fast path (same scores; False: one prompt at a time).
        progress: progress bar (over passes when packing, else over prompts).
        **kwargs: any keyword of :func:`integrated_gradients` (``layers``, ``n_steps``, ``method``, ...). With
            packing, ``internal_batch_size`` is the number of steps of every layer *of every prompt packed
            together* per pass, and ``memory_budget`` (bytes) bounds the rows of all of them in one pass.

    Returns:
        ``Float[Tensor, "prompt layer d_mlp"]`` (float32, CPU; and ``[prompt, layer]`` deltas with
        ``return_convergence_delta=True``).

    Example:
        >>> texts = ["The capital of France is", "France's capital city is"]
        >>> integrated_gradients_many(model, texts, " Paris", layers=[24]).shape
        torch.Size([2, 1, 1536])
        >>> one_by_one = integrated_gradients_many(model, texts, " Paris", layers=[24], pack=False, progress=False)
        >>> bool(torch.allclose(integrated_gradients_many(model, texts, " Paris", layers=[24]), one_by_one, atol=1e-6))
        True
    """
    if not isinstance(pack, bool):
        raise TypeError(f"pack must be True or False, got {type(pack).__name__}")
    options = _ig_options(kwargs)
    check_hook(model, options["hook"])
    if not pack or choose_path(model, options["hook"], options["fast"], warn=False)[0] == "plain":
        # no fast path to share (integrated_gradients warns as it always does): one prompt at a time
        return many(integrated_gradients, model, prompts, targets, progress, "IG, prompts", **kwargs)
    ready = ready_prompts(model, prompts, targets)
    options.pop("fast")
    request = _ig_request(model, progress=progress, **options)
    owners, parts = [], []
    for i, prompt in enumerate(ready):
        for part in parts_of(prompt, request.objective):
            owners.append(i)
            parts.append(part)
    outs = _fast.integrated_gradients_packed(model, parts, request, desc="IG (packed), passes")
    per_prompt = [mean_of_parts([o for o, j in zip(outs, owners, strict=True) if j == i]) for i in range(len(ready))]
    scores = torch.stack([s for s, _ in per_prompt])
    if request.want_delta:
        return scores, torch.stack([d for _, d in per_prompt])
    return scores


def _ig_options(kwargs: dict) -> dict:
    """The keywords of :func:`integrated_gradients` with their defaults filled in (an unknown one: TypeError)."""
    params = inspect.signature(integrated_gradients).parameters
    defaults = {name: p.default for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise TypeError(
            f"integrated_gradients_many() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"it takes the keywords of integrated_gradients: {', '.join(defaults)}"
        )
    options = {**defaults, **kwargs}
    options.pop("progress")  # the caller's own
    return options
