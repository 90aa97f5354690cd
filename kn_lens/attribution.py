"""Attribution of a target token to every MLP neuron: integrated gradients and friends, as hooks on ``mlp_post``.

Context:
    Dai et al. (2022) score a neuron by how much the model's belief in the right answer depends on it. They take
    the neuron activations of one layer at the *site* (the ``[MASK]`` of an encoder prompt, the last prompt token
    of a causal one), scale them from a baseline (zero) up to their real value, and integrate the gradient of the
    target probability along that straight path (integrated gradients, Sundararajan et al. 2017):

    ``IG_i = (a_i - b_i) * integral_0^1 dF(b + alpha (a - b)) / da_i d alpha``

    Only the activation at the site is scaled; everything else runs as usual. The integral is approximated with
    ``n_steps`` points (see :data:`METHODS`), and by completeness ``sum_i IG_i ~ F(a) - F(b)``: the *convergence
    delta* (the difference of the two) tells how good the approximation is.

Intuition:
    A plain gradient only says what a tiny nudge does at the current activation; saturated neurons (softmax near
    1) then look irrelevant. Integrating along the path from "neuron off" to "neuron on" credits neurons with
    the change they actually cause. Gradient x activation is the one-step version; attribution patching is its
    linear estimate of an ablation; :func:`ablation_effects` runs the real ablations.

One sign for every method:
    Every attribution here returns "larger = the neuron supports the target more". For integrated gradients and
    gradient x activation that is their natural sign; :func:`ablation_effects` returns ``F(clean) - F(ablated)``
    (what the target loses when the neuron is removed) and :func:`attribution_patching` its first-order estimate,
    so that selecting the largest scores (as :func:`kn_lens.find_knowledge_neurons` does) means the same thing
    whatever the method.

Multi-token targets:
    Each target token is attributed at the position that predicts it (causal models: teacher-forced, the last
    prompt token for the first target token, then one position further per token; encoders: its own
    ``[MASK]``), with the objective of that token alone, and the scores are averaged over the target's tokens
    (the EleutherAI package's convention). A callable metric (see :mod:`kn_lens.scoring`) is attributed once, at
    the prompt's site.

Your hooks:
    Hooks you attached to the model (``model.hooks(...)``, ``add_hook``, PyTorch module hooks) stay in force.
    The fast path computes blocks from their weights and would bypass them, so with any hook attached it steps
    aside (a warning says so) and the plain path runs, which honours them.

Caveats:
    * Scores depend on the baseline, the objective (probability saturates, logits do not) and on which hook
      point is scaled (``mlp_post`` here; the EleutherAI package scales ``mlp_pre`` of GPT models).
    * IG attributes one layer at a time (the other layers keep their clean values at the site), as in Dai et al.;
      the scores of different layers do not add up to one total.

Speed:
    ``fast=True`` (default) gives the same numbers as the plain method (to float32 rounding) but computes the
    layers below ``L`` once per prompt, only the positions that can change (causal models reuse the keys and
    values of earlier positions), all layers and steps in one batch, and the unembedding only where the
    objective reads it. ``fast=False`` runs the textbook version (one ``run_with_hooks`` forward and backward
    per batch of steps and layer), kept as the reference. Both backends have a fast path: a
    ``HookedTransformer``/``HookedEncoder`` recomputes its blocks from their weights (:mod:`kn_lens._ig_fast`), a
    ``TransformerBridge`` reruns its own blocks (:mod:`kn_lens._ig_bridge`, TransformerLens 3.9 and 4.x).
    :func:`attribution_path` says which path a model takes and why.

Example:
    >>> scores = integrated_gradients(model, "The capital of France is", " Paris")   # [n_layers, d_mlp]
    >>> kn_lens.top_neurons(scores, 5)
    [L0N1297, L24N1005, L29N778, L27N1392, L29N1066]
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.hook_points import HookPoint

from kn_lens import _ig_bridge, _memory, backends
from kn_lens._device import accumulator_dtype, evaluating
from kn_lens._typing import HOOKS, Model, check_model, hook_name
from kn_lens.inputs import check_finite, split_targets, to_means, to_prompt
from kn_lens.inputs import to_layers as check_layers
from kn_lens.prompts import Prompt, TargetLike
from kn_lens.scoring import Objective, check_objective, objective_from_logits, with_grad

__all__ = [
    "ATTRIBUTIONS",
    "HOOKS",
    "METHODS",
    "PATHS",
    "ablation_effects",
    "attached_hooks",
    "attribute",
    "attribute_many",
    "attribution_patching",
    "attribution_path",
    "grad_x_activation",
    "hook_name",
    "integrated_gradients",
    "integrated_gradients_many",
    "per_token_prompts",
    "step_alphas",
]

Method = Literal["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre", "eleuther"]

METHODS: dict[str, str] = {
    "riemann_left": "alpha_k = k / n for k = 0..n-1, weights 1/n (left Riemann sum; the path's end is not visited)",
    "riemann_right": "alpha_k = k / n for k = 1..n, weights 1/n (right Riemann sum; alpha = 0 is not visited)",
    "riemann_middle": "alpha_k = (k + 1/2) / n for k = 0..n-1, weights 1/n (midpoint rule)",
    "riemann_trapezoid": "alpha_k = k / (n-1) for k = 0..n-1, weights 1/(n-1), halved at both ends (n >= 2; "
    "captum uses weights 1/n here, which sum to (n-1)/n: its scores are ours times (n-1)/n)",
    "gausslegendre": "Gauss-Legendre nodes and weights of degree n mapped from [-1, 1] to [0, 1] (exact for "
    "polynomials of degree 2n-1; the best choice for few steps)",
    "eleuther": "alpha_k = linspace(0, 1, n) (both ends included), weights 1/n: the EleutherAI knowledge-neurons "
    "package's convention, to reproduce its numbers (its sum over-counts the endpoint by 1/n)",
}
"""The integration rules for integrated gradients, like captum's ``method`` argument: name -> how the ``n``
points ``alpha_k`` on the path and their weights ``w_k`` are chosen. The score is
``(a - b) * sum_k w_k * dF/da (b + alpha_k (a - b))``."""

ATTRIBUTIONS: tuple[str, ...] = ("ig", "grad_x_act", "attribution_patching", "ablation")

Baseline = Literal["zero"] | Tensor


# ----------------------------------------------------------------------------------------------------- helpers


def step_alphas(method: str, n_steps: int) -> tuple[Float[Tensor, " n_steps"], Float[Tensor, " n_steps"]]:
    """The points ``alpha_k`` on the path and their weights ``w_k`` for an integration rule (see :data:`METHODS`).

    Args:
        method: one of :data:`METHODS`.
        n_steps: number of points (>= 1; >= 2 for ``riemann_trapezoid``).

    Returns:
        ``(alphas, weights)``, float64 tensors of length ``n_steps``.

    Example:
        >>> step_alphas("riemann_left", 4)
        (tensor([0.0000, 0.2500, 0.5000, 0.7500], dtype=torch.float64), tensor([0.2500, ...], dtype=torch.float64))
    """
    _check_method(method, n_steps)
    n = n_steps
    k = torch.arange(n, dtype=torch.float64)
    weights = torch.full((n,), 1.0 / n, dtype=torch.float64)
    if method == "riemann_left":
        alphas = k / n
    elif method == "riemann_right":
        alphas = (k + 1) / n
    elif method == "riemann_middle":
        alphas = (k + 0.5) / n
    elif method == "riemann_trapezoid":
        alphas = k / (n - 1)
        weights = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
        weights[0] = weights[-1] = 0.5 / (n - 1)
    elif method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n)
        alphas = torch.from_numpy((nodes + 1) / 2)
        weights = torch.from_numpy(w / 2)
    else:  # eleuther
        alphas = torch.linspace(0, 1, n, dtype=torch.float64)
    return alphas, weights


def _check_method(method: str, n_steps: int) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int):
        raise TypeError(f"n_steps must be an int, got {type(n_steps).__name__}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if method == "riemann_trapezoid" and n_steps < 2:
        raise ValueError("riemann_trapezoid needs n_steps >= 2 (it visits both ends of the path)")


def _hook_key(model: Model, hook: str) -> str:
    if hook not in HOOKS:
        raise ValueError(f"unknown hook point {hook!r}; choose one of {', '.join(HOOKS)}")
    if hook == "mlp_pre_linear" and not getattr(model.cfg, "gated_mlp", False):
        raise ValueError("mlp_pre_linear exists only in gated MLPs; use 'mlp_post' or 'mlp_pre'")
    return HOOKS[hook]


def _check_batch(internal_batch_size: int | None) -> None:
    if internal_batch_size is None:
        return
    if isinstance(internal_batch_size, bool) or not isinstance(internal_batch_size, int):
        raise TypeError(f"internal_batch_size must be an int or None, got {type(internal_batch_size).__name__}")
    if internal_batch_size < 1:
        raise ValueError(f"internal_batch_size must be >= 1, got {internal_batch_size}")


def _one_prompt(model: Model, prompt: str | Prompt, target: TargetLike) -> Prompt:
    return to_prompt(model, prompt, target)


def _baselines(
    model: Model, baseline: Baseline, layers: list[int], d_mlp: int, device
) -> Float[Tensor, "layer d_mlp"] | None:
    """``None`` for the zero baseline, else one baseline row per requested layer."""
    if isinstance(baseline, str):
        if baseline != "zero":
            raise ValueError(
                f"unknown baseline {baseline!r}; use 'zero' or a tensor of shape [d_mlp] / [n_layers, d_mlp]"
            )
        return None
    if not isinstance(baseline, Tensor):
        raise TypeError(f"baseline must be 'zero' or a Tensor, got {type(baseline).__name__}")
    check_finite(baseline, "baseline")
    baseline = baseline.detach().to(device=device, dtype=model.cfg.dtype)
    if baseline.shape == (d_mlp,):
        return baseline.expand(len(layers), d_mlp)
    if baseline.shape == (model.cfg.n_layers, d_mlp):
        return baseline[layers]
    raise ValueError(
        f"baseline has shape {tuple(baseline.shape)}; expected [d_mlp]=[{d_mlp}] or "
        f"[n_layers, d_mlp]=[{model.cfg.n_layers}, {d_mlp}]"
    )


def attached_hooks(model: Model) -> list[str]:
    """Names of the modules of ``model`` that carry forward or backward hooks (TransformerLens hook points included).

    Hooks the libraries keep on a bridge (transformers' output capturing, TransformerLens' own input captures and
    4.x's permanent mirrors of BERT-style MLP hook points) are part of the model, not the user's: not listed.

    Example:
        >>> with model.hooks(fwd_hooks=[("blocks.0.mlp.hook_post", lambda act, hook: act * 0)]):
        ...     attached_hooks(model)
        ['blocks.0.mlp.hook_post']
    """
    found = []
    for name, module in _module_names(model):
        if (
            any(not _library_hook(module, key, fn) for key, fn in module._forward_hooks.items())
            or any(not _library_hook(module, key, fn) for key, fn in module._forward_pre_hooks.items())
            or module._backward_hooks
            or getattr(module, "_backward_pre_hooks", None)
        ):
            found.append(name)
    glob = torch.nn.modules.module
    if any(getattr(glob, kind, None) for kind in ("_global_forward_hooks", "_global_forward_pre_hooks")):
        found.append("<global module hook>")
    return found


def _module_names(model: Model) -> list[tuple[str, torch.nn.Module]]:
    """Every module once, under the name a user knows it by: a hook point's TransformerLens name, else its path
    (a bridge reaches each module also through the wrapped transformers modules: the path with the fewest
    ``_original_component`` steps is kept)."""
    names: dict[int, tuple[str, torch.nn.Module]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        known = names.get(id(module))
        if known is None or path.count("_original_component") < known[0].count("_original_component"):
            names[id(module)] = (path, module)
    out = []
    for path, module in names.values():
        name = getattr(module, "name", None) if isinstance(module, HookPoint) else None
        out.append((name if isinstance(name, str) and name else path, module))
    return out


def _library_hook(module: torch.nn.Module, key: int, fn: Callable) -> bool:
    """Whether a forward (pre-)hook belongs to the libraries, not the user: transformers' output capturing and a
    bridge block's input captures (installed on the first forward, inert for the values), or a permanent hook
    TransformerLens put on a bridge's hook point with its own code (4.x mirrors the MLP ``hook_in``/``hook_out`` of
    BERT-style blocks). A hook added to a hook point (``add_hook``, ``hooks()``, ``run_with_hooks``) is the user's."""
    for handle in getattr(module, "fwd_hooks", ()) or ():  # a TransformerLens hook point's hooks
        if getattr(handle.hook, "id", None) == key:
            user = getattr(handle, "user_hook", None)
            return bool(handle.is_permanent) and getattr(user, "__module__", "").startswith("transformer_lens.")
    return getattr(fn, "__module__", "").startswith(("transformers.", "transformer_lens."))


PATHS: dict[str, str] = {
    "hooked-fast": "the fast path of a HookedTransformer/HookedEncoder: blocks recomputed from their weights, "
    "layers below L and (causal) positions before the site computed once",
    "bridge-fast": "the fast path of a TransformerBridge: its own blocks rerun from layer L + 1, (causal) only "
    "from the site on with the prefix's keys and values frozen",
    "plain": "the plain reference: one run_with_hooks forward and backward per layer (and batch of steps)",
}
"""The implementations :func:`attribution_path` chooses between (all give the same numbers to float32 rounding)."""


def attribution_path(model: Model, hook: str = "mlp_post", fast: bool = True) -> tuple[str, str]:
    """Which implementation integrated gradients and exact ablations take on ``model``, and why (one line).

    The one place the choice is made (:func:`integrated_gradients`, :func:`integrated_gradients_many` and
    :func:`ablation_effects` all ask it): ``"hooked-fast"``, ``"bridge-fast"`` or ``"plain"`` (see :data:`PATHS`).
    The plain path runs when ``fast=False``, when the architecture cannot be run the fast way (the reason says
    why), or when hooks of yours are attached to the model (the fast path would bypass them; the plain path
    honours them). A ``TransformerBridge`` is checked once (per model and hook kind) against its own forward on a
    short probe.

    Args:
        model: the model.
        hook: the MLP hook point attributed (see :data:`HOOKS`).
        fast: the caller's ``fast=`` argument.

    Returns:
        ``(path, reason)``.

    Example:
        >>> attribution_path(model)
        ('hooked-fast', 'the fast path of a HookedTransformer/HookedEncoder: ...')
        >>> attribution_path(model, fast=False)[0]
        'plain'
    """
    check_model(model)
    _hook_key(model, hook)
    return _choose_path(model, hook, fast, warn=False)


def _choose_path(model: Model, hook: str, fast: bool, *, warn: bool) -> tuple[str, str]:
    """:func:`attribution_path`, with a warning when the plain path runs for a reason the caller may not expect
    (hooks attached: every call; a bridge the fast path cannot run: once per model)."""
    from kn_lens import _ig_fast
    from kn_lens.backends import is_bridge

    if not fast:
        return "plain", "fast=False: " + PATHS["plain"]
    bridge = is_bridge(model)
    if not bridge:
        reason = _ig_fast.unsupported(model, hook)
        if reason is not None:
            return "plain", reason
    attached = attached_hooks(model)
    if attached:
        shown = ", ".join(attached[:3]) + (", ..." if len(attached) > 3 else "")
        reason = f"hooks are attached to the model ({shown})"
        if warn:
            warnings.warn(
                f"{reason}; the fast attribution path would bypass them, so the plain path runs instead (same "
                "definition, honours your hooks, slower). Pass fast=False to silence this.",
                UserWarning,
                stacklevel=3,
            )
        return "plain", reason
    if not bridge:
        return "hooked-fast", PATHS["hooked-fast"]
    reason = _ig_fast.unsupported(model, hook)
    if reason is None:
        return "bridge-fast", PATHS["bridge-fast"]
    if warn and _ig_bridge.warn_once(model):
        warnings.warn(
            f"this TransformerBridge cannot take the fast attribution path: {reason}. The plain path runs instead "
            "(same definition, slower); pass fast=False to silence this.",
            UserWarning,
            stacklevel=3,
        )
    return "plain", reason


def per_token_prompts(prompt: Prompt) -> list[Prompt]:
    """One single-token prompt per target token, each sited where that token is predicted.

    Causal models: the teacher-forced input is cut after the token's own prediction position; encoders: every
    ``[MASK]`` stays masked and the site moves to the token's own mask. A single-token prompt comes back as is.

    Example:
        >>> p = kn_lens.make_prompt(model, "The capital of Argentina is", " Buenos Aires")
        >>> [(q.site, q.target_ids) for q in per_token_prompts(p)]
        [(4, (...,)), (5, (...,))]
    """
    if len(prompt.target_ids) <= 1:
        return [prompt]
    return [
        dataclasses.replace(
            prompt,
            tokens=prompt.tokens[: position + 1] if prompt.causal else prompt.tokens,
            site=position,
            target_ids=(token,),
            positions=(position,),
            explicit_site=True,
        )
        for position, token in zip(prompt.positions, prompt.target_ids, strict=True)
    ]


def _mean_over_target_tokens(fn: Callable, prompt: Prompt, objective: Objective):
    """``fn(single_token_prompt)`` averaged over the target's tokens (tensors, or tuples of tensors / None)."""
    parts = [prompt] if callable(objective) else per_token_prompts(prompt)
    return _mean_of_parts([fn(part) for part in parts])


def _mean_of_parts(outs: list):
    """The average of one prompt's per-target-token results (tensors, or tuples of tensors / None)."""
    if len(outs) == 1:
        return outs[0]
    if isinstance(outs[0], tuple):
        return tuple(None if xs[0] is None else torch.stack(xs).mean(0) for xs in zip(*outs, strict=True))
    return torch.stack(outs).mean(0)


def _tokens(model: Model, prompt: Prompt, rows: int) -> Tensor:
    return prompt.tokens.to(model.cfg.device).clone()[None].expand(rows, -1)  # clone: no inference tensor


def _logits(model: Model, tokens: Tensor, fwd_hooks) -> Tensor:
    return backends.run_with_hooks(model, tokens, return_type="logits", fwd_hooks=list(fwd_hooks))


@torch.no_grad()
def _clean_site(model: Model, prompt: Prompt, names: list[str], objective: Objective) -> tuple[Tensor, Tensor]:
    """Clean activations at the site for each hook name ``[len(names), d]`` and the clean objective (scalar)."""
    store: dict[str, Tensor] = {}

    def keep(act: Tensor, hook) -> None:
        store[hook.name] = act[0, prompt.site].detach().clone()

    logits = _logits(model, _tokens(model, prompt, 1), [(name, keep) for name in names])
    f_clean = objective_from_logits(logits, prompt, objective)[0]  # type: ignore[arg-type]
    return torch.stack([store[name] for name in names]), f_clean


def _replace_site(site: int, values: Tensor) -> Callable:
    """A hook that puts ``values`` ([batch, d]) at position ``site`` (out of place, so autograd stays sound)."""

    def hook_fn(act: Tensor, hook) -> Tensor:
        return torch.cat([act[:, :site], values[:, None].to(act.dtype), act[:, site + 1 :]], dim=1)

    return hook_fn


# ------------------------------------------------------------------------------------------ integrated gradients


def _plain_row_bytes(model: Model, prompt: Prompt, objective: Objective) -> float:
    """What one row of the plain path keeps for its backward pass (:func:`kn_lens._memory.row_bytes`): every
    block at every position, the logits of every position, the objective at the target positions (a callable
    metric: at every position)."""
    n = len(prompt)
    return _memory.row_bytes(
        model.cfg,
        blocks=model.cfg.n_layers,
        positions=n,
        keys=n,
        logit_positions=n,
        objective_positions=n if callable(objective) else len(prompt.positions),
    )


@with_grad
def _ig_plain(
    model: Model,
    prompt: Prompt,
    layers: list[int],
    alphas: Tensor,
    weights: Tensor,
    baselines: Tensor | None,
    objective: Objective,
    hook: str,
    batch: int | None,
    want_delta: bool,
    progress: bool,
    *,
    memory_budget: float | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Reference IG: per layer, full sequence, one run_with_hooks forward+backward per batch of steps (``batch``
    steps, or as many as fit ``memory_budget``: see :mod:`kn_lens._memory`)."""
    names = [hook_name(layer, hook) for layer in layers]
    clean, f_clean = _clean_site(model, prompt, names, objective)
    dtype, device = clean.dtype, clean.device
    acc = accumulator_dtype(device)
    if batch is None:
        cost = _plain_row_bytes(model, prompt, objective)
        batch = _memory.rows_per_pass(cost, _memory.budget(memory_budget, device), at_most=len(alphas))
    weights = weights.to(acc).to(device)  # float64 on the CPU first: MPS has no float64
    scores = torch.zeros(len(layers), clean.shape[-1], dtype=torch.float32)
    deltas = torch.zeros(len(layers), dtype=torch.float32) if want_delta else None
    for i, name in enumerate(tqdm(names, desc="IG (plain), layers", disable=not progress, leave=False)):
        base = torch.zeros_like(clean[i]) if baselines is None else baselines[i]
        diff = clean[i].float() - base.float()  # the path's length, in float32 whatever the model's dtype
        total = torch.zeros(diff.shape, dtype=acc, device=device)
        for start in range(0, len(alphas), batch):
            a = alphas[start : start + batch].float().to(device)
            x = (base.float() + a[:, None] * diff).to(dtype).detach().requires_grad_(True)
            logits = _logits(model, _tokens(model, prompt, len(a)), [(name, _replace_site(prompt.site, x))])
            f = objective_from_logits(logits, prompt, objective)  # type: ignore[arg-type]
            (grad,) = torch.autograd.grad(f.sum(), x)
            total += (weights[start : start + batch, None] * grad.to(acc)).sum(0)
        scores[i] = (diff.to(acc) * total).float().cpu()
        if deltas is not None:
            with torch.no_grad():
                logits = _logits(model, _tokens(model, prompt, 1), [(name, _replace_site(prompt.site, base[None]))])
                f_base = objective_from_logits(logits, prompt, objective)[0]  # type: ignore[arg-type]
            deltas[i] = float(scores[i].double().sum() - (float(f_clean) - float(f_base)))
    return scores, deltas


def _ig_setup(
    model: Model,
    layers: int | Sequence[int] | None,
    n_steps: int,
    method: str,
    baseline: Baseline,
    objective: Objective,
    hook: str,
    internal_batch_size: int | None,
) -> tuple[list[int], Tensor | None, Tensor, Tensor]:
    """Check the arguments of integrated gradients once: layers, baselines per layer, the path's points and weights."""
    layer_list = check_layers(model, layers)
    _check_method(method, n_steps)
    check_objective(objective)
    _hook_key(model, hook)
    _check_batch(internal_batch_size)
    baselines = _baselines(model, baseline, layer_list, model.cfg.d_mlp, model.cfg.device)
    alphas, weights = step_alphas(method, n_steps)
    return layer_list, baselines, alphas, weights


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
            device's available memory, 400 MiB on a CPU, 2 GiB on MPS (see :mod:`kn_lens._memory`).

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
    prompt = _one_prompt(model, prompt, target)
    layer_list, baselines, alphas, weights = _ig_setup(
        model, layers, n_steps, method, baseline, objective, hook, internal_batch_size
    )
    _memory.check_budget(memory_budget)
    path_name, _ = _choose_path(model, hook, fast, warn=True)
    if path_name == "plain":
        path = _ig_plain
    else:  # hooked-fast or bridge-fast: _ig_fast drives both (the backend's steps come from its engine)
        from kn_lens import _ig_fast

        path = _ig_fast.integrated_gradients
    batch = internal_batch_size

    def one(part: Prompt) -> tuple[Tensor, Tensor | None]:
        return path(
            model,
            part,
            layer_list,
            alphas,
            weights,
            baselines,
            objective,
            hook,
            batch,
            return_convergence_delta,
            progress,
            memory_budget=memory_budget,
        )

    scores, deltas = _mean_over_target_tokens(one, prompt, objective)
    return (scores, deltas) if return_convergence_delta else scores  # type: ignore[return-value]


def _many(
    fn: Callable,
    model: Model,
    prompts,
    targets,
    progress: bool,
    desc: str,
    **kwargs,
):
    ready = _ready_prompts(model, prompts, targets)
    outs = [fn(model, p, **kwargs) for p in tqdm(ready, desc=desc, disable=not progress)]
    if outs and isinstance(outs[0], tuple):
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])
    return torch.stack(outs)


def _ready_prompts(model: Model, prompts, targets) -> list[Prompt]:
    """The prompts of a ``*_many`` call as checked Prompts, each with its target."""
    check_model(model)
    if isinstance(prompts, str | Prompt):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given; pass at least one prompt")
    per = split_targets(targets, len(prompts))
    return [_one_prompt(model, p, t) for p, t in zip(prompts, per, strict=True)]


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
    if not pack or not _packs_fast(model, options):
        return _many(integrated_gradients, model, prompts, targets, progress, "IG, prompts", **kwargs)
    ready = _ready_prompts(model, prompts, targets)
    objective = options["objective"]
    _memory.check_budget(options["memory_budget"])
    layer_list, baselines, alphas, weights = _ig_setup(
        model,
        options["layers"],
        options["n_steps"],
        options["method"],
        options["baseline"],
        objective,
        options["hook"],
        options["internal_batch_size"],
    )
    owners, parts = [], []
    for i, prompt in enumerate(ready):
        for part in [prompt] if callable(objective) else per_token_prompts(prompt):
            owners.append(i)
            parts.append(part)
    from kn_lens import _ig_fast

    want_delta = options["return_convergence_delta"]
    outs = _ig_fast.integrated_gradients_packed(
        model, parts, layer_list, alphas, weights, baselines, objective, options["hook"],
        options["internal_batch_size"], want_delta, progress=progress, desc="IG (packed), passes",
        memory_budget=options["memory_budget"],
    )  # fmt: skip
    per_prompt = [_mean_of_parts([o for o, j in zip(outs, owners, strict=True) if j == i]) for i in range(len(ready))]
    scores = torch.stack([s for s, _ in per_prompt])
    if want_delta:
        return scores, torch.stack([d for _, d in per_prompt])
    return scores


def _ig_options(kwargs: dict) -> dict:
    """The keywords of :func:`integrated_gradients` with their defaults filled in (an unknown one: TypeError)."""
    import inspect

    params = inspect.signature(integrated_gradients).parameters
    defaults = {name: p.default for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise TypeError(
            f"integrated_gradients_many() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"it takes the keywords of integrated_gradients: {', '.join(defaults)}"
        )
    return {**defaults, **kwargs}


def _packs_fast(model: Model, options: dict) -> bool:
    """Whether :func:`integrated_gradients` would take a fast path here (and so several prompts can share its
    passes). Where it would not, prompts run one at a time, and :func:`integrated_gradients` warns as it always
    does."""
    _hook_key(model, options["hook"])
    return _choose_path(model, options["hook"], options["fast"], warn=False)[0] != "plain"


# ------------------------------------------------------------------------------- gradient-based single steps


@with_grad
def _site_grads(
    model: Model, prompt: Prompt, layers: list[int], objective: Objective, hook: str
) -> tuple[Float[Tensor, "layer d_mlp"], Float[Tensor, "layer d_mlp"]]:
    """Clean activations at the site and the total derivative of the objective with respect to them."""
    acts: dict[str, Tensor] = {}

    def keep(act: Tensor, hook) -> None:
        acts[hook.name] = act

    names = [hook_name(layer, hook) for layer in layers]
    logits = _logits(model, _tokens(model, prompt, 1), [(name, keep) for name in names])
    f = objective_from_logits(logits, prompt, objective)  # type: ignore[arg-type]
    tensors = [acts[name] for name in names]
    grads = torch.autograd.grad(f.sum(), tensors, allow_unused=True)
    site = prompt.site
    act = torch.stack([t[0, site].detach() for t in tensors])
    grad = torch.stack(
        [torch.zeros_like(t[0, site]) if g is None else g[0, site] for t, g in zip(tensors, grads, strict=True)]
    )
    return act, grad


def _common_checks(model, prompt, target, layers, objective, hook) -> tuple[Prompt, list[int]]:
    check_model(model)
    prompt = _one_prompt(model, prompt, target)
    layer_list = check_layers(model, layers)
    check_objective(objective)
    _hook_key(model, hook)
    return prompt, layer_list


@evaluating
def grad_x_activation(
    model: Model,
    prompt: str | Prompt,
    target: TargetLike = None,
    *,
    layers: int | Sequence[int] | None = None,
    objective: Objective = "prob",
    hook: str = "mlp_post",
    baseline: Baseline = "zero",
) -> Float[Tensor, "layer d_mlp"]:
    """Gradient x activation at the site: ``(a - b) * dF/da``, one forward and backward for all layers.

    The gradient is the total derivative at the clean run (later layers respond to the neuron as usual). It
    equals integrated gradients with a single step at ``alpha = 1`` (``method="riemann_right", n_steps=1``).

    Args:
        model: the model.
        prompt: text (with ``target``) or a Prompt.
        target: the answer.
        layers: blocks to score (None = all), ascending.
        objective: "prob", "logprob" or "logit".
        hook: MLP hook point (see :data:`HOOKS`).
        baseline: "zero" or a tensor ``[d_mlp]`` / ``[n_layers, d_mlp]``.

    Returns:
        ``Float[Tensor, "layer d_mlp"]`` (float32, CPU).

    Example:
        >>> grad_x_activation(model, "The capital of France is", " Paris").shape
        torch.Size([30, 1536])
    """
    prompt, layer_list = _common_checks(model, prompt, target, layers, objective, hook)
    baselines = _baselines(model, baseline, layer_list, model.cfg.d_mlp, model.cfg.device)

    def one(part: Prompt) -> Tensor:
        act, grad = _site_grads(model, part, layer_list, objective, hook)
        diff = act.float() if baselines is None else act.float() - baselines.float()
        return (diff * grad.float()).cpu()

    return _mean_over_target_tokens(one, prompt, objective)


def _check_mode(
    model: Model, mode: str, mean_cache: Any, layers: list[int], hook: str
) -> Float[Tensor, "layer d_mlp"] | None:
    """Check the ablation mode and read the means once, before any forward pass: None for ``mode="zero"``, else
    one row of means per layer. ``mean_cache`` takes every form :func:`~kn_lens.inputs.to_means` reads
    (``{layer: [d_mlp]}``, an ``MLPPostCache``, a TransformerLens ``ActivationCache`` of ``hook``, a tensor)."""
    if mode not in ("zero", "mean"):
        raise ValueError(f"unknown ablation mode {mode!r}; use 'zero' or 'mean'")
    if mode == "zero":
        return None
    if mean_cache is None:
        raise ValueError("mode='mean' needs mean_cache=... (e.g. kn_lens.mean_activations(model, prompts, hook=...))")
    d_mlp = model.cfg.d_mlp
    means = to_means(mean_cache, layers, d_mlp, n_layers=model.cfg.n_layers, hook=hook)
    return torch.stack([means[layer] for layer in layers])


def _ablated_values(means: Tensor | None, clean: Tensor) -> Float[Tensor, "layer d_mlp"]:
    """The ablated value of every neuron: 0, or its mean (from :func:`_check_mode`)."""
    if means is None:
        return torch.zeros_like(clean)
    return means.to(device=clean.device, dtype=clean.dtype)


@evaluating
def attribution_patching(
    model: Model,
    prompt: str | Prompt,
    target: TargetLike = None,
    *,
    layers: int | Sequence[int] | None = None,
    mode: Literal["zero", "mean"] = "zero",
    mean_cache: dict[int, Tensor] | Tensor | None = None,
    objective: Objective = "prob",
    hook: str = "mlp_post",
) -> Float[Tensor, "layer d_mlp"]:
    """Attribution patching: the linear (first-order) estimate of each neuron's ablation effect at the site.

    ``(a - a_ablated) * dF/da``: the predicted loss of the objective when the neuron alone is set to zero
    (``mode="zero"``) or to its mean (``mode="mean"``, with ``mean_cache``); larger = supports the target more,
    like every attribution here. Compare with the exact :func:`ablation_effects`. One forward and backward for all
    layers.

    Args:
        model: the model.
        prompt: text (with ``target``) or a Prompt.
        target: the answer.
        layers: blocks to score (None = all), ascending.
        mode: "zero" or "mean".
        mean_cache: mean activations for ``mode="mean"``: ``{layer: [d_mlp]}``
            (:func:`kn_lens.cache.mean_activations`), or a tensor ``[n_layers, d_mlp]`` / ``[d_mlp]``.
        objective: "prob", "logprob" or "logit".
        hook: MLP hook point (see :data:`HOOKS`).

    Returns:
        ``Float[Tensor, "layer d_mlp"]`` (float32, CPU); positive = ablating the neuron lowers the objective.

    Example:
        >>> est = attribution_patching(model, "The capital of France is", " Paris", layers=[24])
    """
    prompt, layer_list = _common_checks(model, prompt, target, layers, objective, hook)
    means = _check_mode(model, mode, mean_cache, layer_list, hook)

    def one(part: Prompt) -> Tensor:
        act, grad = _site_grads(model, part, layer_list, objective, hook)
        ablated = _ablated_values(means, act)
        return ((act.float() - ablated.float()) * grad.float()).cpu()

    return _mean_over_target_tokens(one, prompt, objective)


@torch.no_grad()
def _ablation_plain(
    model: Model,
    prompt: Prompt,
    layers: list[int],
    ablated: Tensor,
    objective: Objective,
    hook: str,
    batch: int,
    progress: bool,
) -> Tensor:
    d_mlp = model.cfg.d_mlp
    site = prompt.site
    logits = _logits(model, _tokens(model, prompt, 1), [])
    f_clean = objective_from_logits(logits, prompt, objective)[0]  # type: ignore[arg-type]
    out = torch.zeros(len(layers), d_mlp, dtype=torch.float32)
    bar = tqdm(total=len(layers) * d_mlp, desc="ablations (plain)", disable=not progress, leave=False)
    for i, layer in enumerate(layers):
        for start in range(0, d_mlp, batch):
            idx = torch.arange(start, min(start + batch, d_mlp), device=ablated.device)

            def set_one(act: Tensor, hook, idx=idx, i=i) -> Tensor:
                act = act.clone()
                rows = torch.arange(len(idx), device=act.device)
                act[rows, site, idx] = ablated[i, idx].to(act.dtype)
                return act

            logits = _logits(model, _tokens(model, prompt, len(idx)), [(hook_name(layer, hook), set_one)])
            f = objective_from_logits(logits, prompt, objective)  # type: ignore[arg-type]
            out[i, start : start + len(idx)] = (f_clean - f).float().cpu()  # larger = supports the target
            bar.update(len(idx))
    bar.close()
    return out


@evaluating
def ablation_effects(
    model: Model,
    prompt: str | Prompt,
    target: TargetLike = None,
    *,
    layers: int | Sequence[int] | None = None,
    mode: Literal["zero", "mean"] = "zero",
    mean_cache: dict[int, Tensor] | Tensor | None = None,
    objective: Objective = "prob",
    hook: str = "mlp_post",
    internal_batch_size: int | None = None,
    fast: bool = True,
    progress: bool = False,
    memory_budget: float | None = None,
) -> Float[Tensor, "layer d_mlp"]:
    """Exact ablation effects: ``F(clean) - F(neuron ablated at the site)`` for every neuron, in batches.

    Larger = removing the neuron costs the target more (the sign every attribution here shares).

    One row per ablated neuron (``layers x d_mlp`` rows in all: for SmolLM2's 46k neurons this takes minutes on a
    CPU; restrict ``layers`` to explore). The fast path starts each row at its own layer and, for causal models,
    recomputes only the positions from the site on.

    Args:
        model: the model.
        prompt: text (with ``target``) or a Prompt.
        target: the answer.
        layers: blocks to score (None = all), ascending.
        mode: "zero" (set to 0) or "mean" (set to ``mean_cache``).
        mean_cache: mean activations for ``mode="mean"``: ``{layer: [d_mlp]}``
            (:func:`kn_lens.cache.mean_activations`), or a tensor ``[n_layers, d_mlp]`` / ``[d_mlp]``.
        objective: "prob", "logprob" or "logit".
        hook: MLP hook point (see :data:`HOOKS`).
        internal_batch_size: ablated neurons per forward pass (None: as many as fit ``memory_budget``).
        fast: use the fast path (same numbers to float32 rounding).
        progress: progress bar.
        memory_budget: bytes one pass may use (None: the device's default; see :func:`integrated_gradients`).

    Returns:
        ``Float[Tensor, "layer d_mlp"]`` (float32, CPU); positive = ablating the neuron lowers the objective.

    Example:
        >>> effects = ablation_effects(model, "The capital of France is", " Paris", layers=[24])
        >>> effects[0].topk(3)
        torch.return_types.topk(
        values=tensor([0.2982, 0.0489, 0.0294]),
        indices=tensor([1005,  276,  266]))
    """
    prompt, layer_list = _common_checks(model, prompt, target, layers, objective, hook)
    means = _check_mode(model, mode, mean_cache, layer_list, hook)
    _check_batch(internal_batch_size)
    _memory.check_budget(memory_budget)
    names = [hook_name(layer, hook) for layer in layer_list]
    use_fast = _choose_path(model, hook, fast, warn=True)[0] != "plain"

    def one(part: Prompt) -> Tensor:
        clean, _ = _clean_site(model, part, names, objective)
        ablated = _ablated_values(means, clean)
        if use_fast:
            from kn_lens import _ig_fast

            return _ig_fast.ablation_effects(
                model, part, layer_list, ablated, objective, hook, internal_batch_size, progress,
                memory_budget=memory_budget,
            )  # fmt: skip
        batch = internal_batch_size
        if batch is None:  # a pass without autograd keeps about a quarter of what a backward pass needs
            room = _memory.budget(memory_budget, clean.device) * _memory.NO_BACKWARD_FACTOR
            batch = _memory.rows_per_pass(_plain_row_bytes(model, part, objective), room)
        return _ablation_plain(model, part, layer_list, ablated, objective, hook, batch, progress)

    return _mean_over_target_tokens(one, prompt, objective)


# ----------------------------------------------------------------------------------------------- dispatchers

_FUNCS: dict[str, Callable] = {
    "ig": integrated_gradients,
    "grad_x_act": grad_x_activation,
    "attribution_patching": attribution_patching,
    "ablation": ablation_effects,
}


def attribute(
    model: Model,
    prompt: str | Prompt,
    target: TargetLike = None,
    *,
    attribution: Literal["ig", "grad_x_act", "attribution_patching", "ablation"] = "ig",
    **kwargs,
) -> Float[Tensor, "layer d_mlp"]:
    """One entry point for every attribution in this module, all returning ``[layer, d_mlp]``.

    Args:
        model: the model.
        prompt: text (with ``target``) or a Prompt.
        target: the answer.
        attribution: "ig" (:func:`integrated_gradients`), "grad_x_act" (:func:`grad_x_activation`),
            "attribution_patching" (:func:`attribution_patching`) or "ablation" (:func:`ablation_effects`).
        **kwargs: keywords of the chosen function.

    Returns:
        ``Float[Tensor, "layer d_mlp"]``.

    Example:
        >>> attribute(model, "The capital of France is", " Paris", attribution="grad_x_act", layers=[24]).shape
        torch.Size([1, 1536])
    """
    if attribution not in _FUNCS:
        raise ValueError(f"unknown attribution {attribution!r}; choose one of {', '.join(ATTRIBUTIONS)}")
    return _FUNCS[attribution](model, prompt, target, **kwargs)


def attribute_many(
    model: Model,
    prompts: Sequence[str | Prompt] | str | Prompt,
    targets: TargetLike | Sequence[TargetLike] = None,
    *,
    attribution: Literal["ig", "grad_x_act", "attribution_patching", "ablation"] = "ig",
    progress: bool = True,
    **kwargs,
) -> Float[Tensor, "prompt layer d_mlp"]:
    """:func:`attribute` for several prompts, stacked: ``[prompt, layer, d_mlp]``.

    Integrated gradients go through :func:`integrated_gradients_many`, which attributes several prompts per fast
    pass (``pack=False`` among ``kwargs``: one at a time); the other attributions run prompt by prompt.

    Example:
        >>> attribute_many(model, ["The capital of France is", "France's capital is"], " Paris",
        ...                attribution="grad_x_act").shape
        torch.Size([2, 30, 1536])
    """
    if attribution not in _FUNCS:
        raise ValueError(f"unknown attribution {attribution!r}; choose one of {', '.join(ATTRIBUTIONS)}")
    if attribution == "ig":  # several prompts per pass on the fast path (pack=False: one at a time)
        return integrated_gradients_many(model, prompts, targets, progress=progress, **kwargs)
    return _many(_FUNCS[attribution], model, prompts, targets, progress, f"{attribution}, prompts", **kwargs)
