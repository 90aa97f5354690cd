"""What every attribution shares: the request a path receives, the argument checks, and the site helpers.

A path (the plain reference, or :mod:`~kn_lens.attribution._fast` on either backend) is called as
``path(model, prompt, request)`` with one :class:`Request`: the checked arguments of the call, in one frozen
object, instead of a long row of positional arguments that must be passed in the right order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from kn_lens import backends
from kn_lens._progress import progress_bar
from kn_lens._typing import HOOKS, Model, check_model, hook_name
from kn_lens.attribution import _memory
from kn_lens.inputs import check_batch_size, check_finite, to_prompt, to_prompts
from kn_lens.inputs import to_layers as check_layers
from kn_lens.prompts import Prompt, TargetLike
from kn_lens.scoring import Objective, check_objective, objective_from_logits

Baseline = Literal["zero"] | Tensor


@dataclass(frozen=True, eq=False)
class Request:
    """One attribution call's checked arguments, as a path receives them (one prompt or a pack of prompts).

    Attributes:
        layers: blocks to attribute, ascending.
        objective: "prob", "logprob", "logit" or a callable metric.
        hook: the MLP hook point (a key of :data:`~kn_lens._typing.HOOKS`).
        alphas: integrated gradients: the path's points ``[n_steps]`` (float64).
        weights: integrated gradients: their weights ``[n_steps]`` (float64).
        baselines: integrated gradients: one baseline row per layer ``[layer, d]``, None for zeros.
        want_delta: integrated gradients: also compute the convergence deltas.
        ablated: ablations: the value each neuron is set to ``[layer, d]``.
        internal_batch_size: rows per pass (None: as many as fit ``memory_budget``).
        memory_budget: bytes one pass may use (None: the device's default, see :mod:`._memory`).
        progress: show a progress bar.
    """

    layers: list[int]
    objective: Objective
    hook: str = "mlp_post"
    alphas: Tensor | None = None
    weights: Tensor | None = None
    baselines: Tensor | None = None
    want_delta: bool = False
    ablated: Tensor | None = None
    internal_batch_size: int | None = None
    memory_budget: float | None = None
    progress: bool = False

    @property
    def kind(self) -> str:
        """The activation kind the hook reads: "post", "pre" or "pre_linear"."""
        return HOOKS[self.hook]

    @property
    def names(self) -> list[str]:
        """The hook names of the requested layers."""
        return [hook_name(layer, self.hook) for layer in self.layers]


# ------------------------------------------------------------------------------------------------------- checks


def check_hook(model: Model, hook: str) -> str:
    """The hook point checked against the model (``mlp_pre_linear`` only in gated MLPs); returns its kind."""
    if hook not in HOOKS:
        raise ValueError(f"unknown hook point {hook!r}; choose one of {', '.join(HOOKS)}")
    if hook == "mlp_pre_linear" and not getattr(model.cfg, "gated_mlp", False):
        raise ValueError("mlp_pre_linear exists only in gated MLPs; use 'mlp_post' or 'mlp_pre'")
    return HOOKS[hook]


def check_batch(internal_batch_size: Any) -> int | None:
    """``internal_batch_size`` checked: None (as many rows as fit the memory budget) or a positive int."""
    if internal_batch_size is None:
        return None
    return check_batch_size(internal_batch_size, "internal_batch_size")


def check_call(
    model: Model, prompt: str | Prompt, target: TargetLike, layers, objective: Objective, hook: str
) -> tuple[Prompt, list[int]]:
    """The checks every single-prompt attribution makes first: model, prompt, then :func:`check_options`."""
    check_model(model)
    prompt = to_prompt(model, prompt, target)
    return prompt, check_options(model, layers, objective, hook)


def check_options(model: Model, layers, objective: Objective, hook: str) -> list[int]:
    """The options every attribution takes, checked: layers (returned as a list), objective, hook point."""
    layer_list = check_layers(model, layers)
    check_objective(objective)
    check_hook(model, hook)
    return layer_list


def baselines_per_layer(
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


def ready_prompts(model: Model, prompts, targets) -> list[Prompt]:
    """The prompts of a ``*_many`` call as checked Prompts, each with its target (:func:`kn_lens.inputs.to_prompts`)."""
    check_model(model)
    return to_prompts(model, prompts, targets, need_target=True)


def many(fn: Callable, model: Model, prompts, targets, progress: bool, desc: str, **kwargs):
    """``fn(model, prompt, **kwargs)`` for every prompt, stacked (tuples of results: stacked element-wise)."""
    ready = ready_prompts(model, prompts, targets)
    outs = [fn(model, p, **kwargs) for p in progress_bar(ready, desc, enabled=progress)]
    if outs and isinstance(outs[0], tuple):
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])
    return torch.stack(outs)


# ------------------------------------------------------------------------------------------- multi-token targets


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


def parts_of(prompt: Prompt, objective: Objective) -> list[Prompt]:
    """The prompts a target is attributed through: one per target token (a callable metric: the prompt itself)."""
    return [prompt] if callable(objective) else per_token_prompts(prompt)


def mean_over_target_tokens(fn: Callable, prompt: Prompt, objective: Objective):
    """``fn(single_token_prompt)`` averaged over the target's tokens (tensors, or tuples of tensors / None)."""
    return mean_of_parts([fn(part) for part in parts_of(prompt, objective)])


def mean_of_parts(outs: list):
    """The average of one prompt's per-target-token results (tensors, or tuples of tensors / None)."""
    if len(outs) == 1:
        return outs[0]
    if isinstance(outs[0], tuple):
        return tuple(None if xs[0] is None else torch.stack(xs).mean(0) for xs in zip(*outs, strict=True))
    return torch.stack(outs).mean(0)


# ----------------------------------------------------------------------------------------- the plain path's runs


def tokens_for(model: Model, prompt: Prompt, rows: int) -> Tensor:
    """The prompt's tokens on the model's device, repeated for ``rows`` rows."""
    return prompt.tokens.to(model.cfg.device).clone()[None].expand(rows, -1)  # clone: no inference tensor


def run_logits(model: Model, prompt: Prompt, rows: int, fwd_hooks) -> Tensor:
    """Logits of ``rows`` copies of the prompt through the model's own forward, with ``fwd_hooks``."""
    tokens = tokens_for(model, prompt, rows)
    return backends.run_with_hooks(model, tokens, return_type="logits", fwd_hooks=list(fwd_hooks))


@torch.no_grad()
def clean_site(model: Model, prompt: Prompt, names: list[str], objective: Objective) -> tuple[Tensor, Tensor]:
    """Clean activations at the site for each hook name ``[len(names), d]`` and the clean objective (scalar)."""
    store: dict[str, Tensor] = {}

    def keep(act: Tensor, hook) -> None:
        store[hook.name] = act[0, prompt.site].detach().clone()

    logits = run_logits(model, prompt, 1, [(name, keep) for name in names])
    f_clean = objective_from_logits(logits, prompt, objective)[0]  # type: ignore[arg-type]
    return torch.stack([store[name] for name in names]), f_clean


def at_site(act: Tensor, site: int, values: Tensor) -> Tensor:
    """``act`` ([batch, pos, d]) with ``values`` ([batch, d]) at position ``site``, out of place (autograd stays
    sound)."""
    return torch.cat([act[:, :site], values[:, None].to(act.dtype), act[:, site + 1 :]], dim=1)


def replace_site(site: int, values: Tensor) -> Callable:
    """A hook that puts ``values`` ([batch, d]) at position ``site`` (see :func:`at_site`)."""

    def hook_fn(act: Tensor, hook) -> Tensor:
        return at_site(act, site, values)

    return hook_fn


def plain_row_bytes(model: Model, prompt: Prompt, objective: Objective) -> float:
    """What one row of the plain path keeps for its backward pass (:func:`._memory.row_bytes`): every block at
    every position, the logits of every position, the objective at the target positions (a callable metric: at
    every position)."""
    n = len(prompt)
    return _memory.row_bytes(
        model.cfg,
        blocks=model.cfg.n_layers,
        positions=n,
        keys=n,
        logit_positions=n,
        objective_positions=n if callable(objective) else len(prompt.positions),
    )


def interpolate(base: Tensor, diff: Tensor, alphas: Tensor, dtype: torch.dtype) -> Tensor:
    """Points ``base + alpha * diff`` of the path (``[steps, d]``), computed in float32 and stored in ``dtype``
    (the model's), a leaf that requires grad."""
    x = base.float() + alphas.float()[:, None] * diff.float()
    return x.to(dtype).detach().requires_grad_(True)
