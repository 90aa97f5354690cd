"""What "the model's belief in the target" means, in one place: objectives computed from logits.

Every attribution, intervention and evaluation in kn_lens scores a :class:`~kn_lens.prompts.Prompt` by one of
three preset objectives of its target:

* ``"prob"``: the probability of the target (papers' choice; multi-token targets: the product over tokens);
* ``"logprob"``: its log-probability (sum over tokens);
* ``"logit"``: its raw logit (sum over tokens);

or by a metric of your own, as in TransformerLens' ``patching.py``: any callable
``metric(logits, prompts) -> Float[Tensor, "batch"]`` that receives the full logits ``[batch, pos, d_vocab]`` and
one :class:`~kn_lens.prompts.Prompt` per row, and returns one differentiable number per row ("larger = more of
what you measure"). :func:`logit_diff` builds the most common one.

Example:
    >>> probs = target_scores(model, prompts)                    # Float[Tensor, "n_prompts"]
    >>> probs = target_scores(model, prompts, fwd_hooks=hooks)   # the same under an intervention
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, TypeAlias

import torch
from jaxtyping import Float
from torch import Tensor

from kn_lens._typing import Model, check_model
from kn_lens.prompts import Prompt, TargetLike, group_by_length, stack_tokens, token_ids

Metric: TypeAlias = Callable[[Tensor, Sequence[Prompt]], Tensor]
"""A user metric: ``metric(logits [batch, pos, d_vocab], prompts (one per row)) -> [batch]``, differentiable."""
Objective: TypeAlias = Literal["prob", "logprob", "logit"] | Metric
OBJECTIVES: tuple[str, ...] = ("prob", "logprob", "logit")


def check_objective(objective: Objective) -> Objective:
    """Raise a clear error for an unknown objective (a preset name or a callable metric).

    Example:
        >>> check_objective("logit")
        'logit'
    """
    if callable(objective):
        return objective
    if not isinstance(objective, str) or objective not in OBJECTIVES:
        raise ValueError(
            f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)} or pass a callable "
            "metric(logits, prompts) -> Tensor[batch]"
        )
    return objective


def logit_diff(model: Model, correct: TargetLike, wrong: TargetLike) -> Metric:
    """A metric: logit of ``correct`` minus logit of ``wrong`` at each prompt's (first) target position.

    The usual contrastive metric of activation patching; pass it as ``objective=`` anywhere an objective is taken.

    Example:
        >>> metric = logit_diff(model, " Paris", " Rome")
        >>> p = make_prompt(model, "The capital of France is", " Paris")
        >>> float(metric(model(p.tokens[None]), [p])[0]) > 0
        True
    """
    check_model(model)
    good, bad = token_ids(model, correct), token_ids(model, wrong)
    if len(good) != 1 or len(bad) != 1:
        raise ValueError("logit_diff compares single tokens; pass one-token answers (or token ids)")

    def metric(logits: Float[Tensor, "batch pos d_vocab"], prompts: Sequence[Prompt]) -> Float[Tensor, " batch"]:
        rows = torch.arange(logits.shape[0], device=logits.device)
        pos = torch.tensor([p.positions[0] for p in prompts], device=logits.device)
        picked = logits[rows, pos]
        return picked[:, good[0]] - picked[:, bad[0]]

    metric.__name__ = f"logit_diff({correct!r}, {wrong!r})"
    return metric


def objective_from_logits(
    logits: Float[Tensor, "batch pos d_vocab"],
    prompts: Sequence[Prompt] | Prompt,
    objective: Objective = "prob",
) -> Float[Tensor, " batch"]:
    """The objective of each row's target, read at the target positions of its prompt.

    ``prompts`` is one prompt shared by every row (e.g. the steps of an integrated-gradients path) or one prompt
    per row. Differentiable. A callable ``objective`` is called as ``objective(logits, prompts)`` (one prompt per
    row) and must return one number per row.

    Example:
        >>> p = make_prompt(model, "The capital of France is", " Paris")
        >>> objective_from_logits(model(p.tokens[None]), p, "logprob")
        tensor([-0.2581])
    """
    check_objective(objective)
    batch = logits.shape[0]
    if isinstance(prompts, Prompt):
        prompts = [prompts] * batch
    if len(prompts) != batch:
        raise ValueError(f"{len(prompts)} prompts for {batch} rows of logits")
    if callable(objective):
        return _call_metric(objective, logits, list(prompts))
    if not all(p.target_ids for p in prompts):
        raise ValueError("a prompt has no target; make it with make_prompt(model, text, target)")
    same = all(p.positions == prompts[0].positions and p.target_ids == prompts[0].target_ids for p in prompts)
    if same:
        positions = torch.tensor(prompts[0].positions, device=logits.device)
        ids = torch.tensor(prompts[0].target_ids, device=logits.device)
        # every position in order (e.g. logits computed at the target positions only): no copy, no scatter
        whole = prompts[0].positions == tuple(range(logits.shape[1]))
        picked = logits if whole else logits[:, positions]  # [batch, k, vocab]
        ids = ids.expand(batch, -1)
    else:
        k = {len(p.target_ids) for p in prompts}
        if len(k) != 1:
            raise ValueError("rows with targets of different token counts cannot share one batch")
        rows = torch.arange(batch, device=logits.device)[:, None]
        positions = torch.tensor([p.positions for p in prompts], device=logits.device)
        ids = torch.tensor([p.target_ids for p in prompts], device=logits.device)
        picked = logits[rows, positions]
    if objective == "logit":
        return picked.gather(-1, ids[..., None])[..., 0].sum(-1)
    logprobs = picked.log_softmax(-1).gather(-1, ids[..., None])[..., 0].sum(-1)
    return logprobs if objective == "logprob" else logprobs.exp()


def _call_metric(metric: Metric, logits: Tensor, prompts: list[Prompt]) -> Tensor:
    out = metric(logits, prompts)
    if not isinstance(out, Tensor) or out.shape != (logits.shape[0],):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"the metric {getattr(metric, '__name__', metric)!r} returned {shape}; a metric must return a tensor with "
            f"one number per row of the batch, shape ({logits.shape[0]},)"
        )
    return out


def forward_logits(model: Model, tokens: Tensor, fwd_hooks=()) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of a token batch, for both model kinds, with optional ``(hook_name, fn)`` forward hooks.

    Example:
        >>> forward_logits(model, tokens, kn_lens.hooks.scale(["L24N1005"], 0.0)).shape
    """
    if fwd_hooks:
        return model.run_with_hooks(tokens, return_type="logits", fwd_hooks=list(fwd_hooks))
    return model(tokens, return_type="logits")


@torch.inference_mode()
def target_scores(
    model: Model,
    prompts: Sequence[Prompt],
    *,
    objective: Objective = "prob",
    fwd_hooks=(),
    batch_size: int = 32,
) -> Float[Tensor, " n_prompts"]:
    """The objective of each prompt's target, optionally under forward hooks (batched by prompt length).

    Hooks given as a callable ``hooks_for(prompts_in_batch) -> [(name, fn), ...]`` are built per batch, for
    interventions whose positions depend on the prompts (e.g. the mask position).

    Example:
        >>> target_scores(model, make_prompts(model, ["The capital of France is"], " Paris"))
        tensor([0.7725])
    """
    check_model(model)
    check_objective(objective)
    if not prompts:
        raise ValueError("no prompts given")
    out = torch.empty(len(prompts))
    for indices in group_by_length(prompts).values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            batch = [prompts[i] for i in chunk]
            hooks = fwd_hooks(batch) if callable(fwd_hooks) else fwd_hooks
            logits = forward_logits(model, stack_tokens(batch, model.cfg.device), hooks)
            out[chunk] = objective_from_logits(logits, batch, objective).float().cpu()
    return out
