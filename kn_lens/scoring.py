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

Objectives are computed in float32 whatever the model's dtype (a metric receives float32 logits), and every
function here runs the model in eval mode (a model left in train mode is put back in it afterwards).

Example:
    >>> target_scores(model, prompts)                            # Float[Tensor, "n_prompts"]
    tensor([0.7725, ...])
    >>> suppress = kn_lens.hooks.Intervention("scale", ["L24N1005"], 0.0)
    >>> target_scores(model, prompts, fwd_hooks=suppress)        # the same under an intervention
    tensor([...])
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Literal, TypeAlias

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from kn_lens import backends
from kn_lens._device import evaluating
from kn_lens._typing import Model, check_model
from kn_lens.prompts import Prompt, TargetLike, length_batches, make_prompt, stack_tokens, token_ids

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


def relative_change(before, after):
    """The relative change ``(after - before) / before``: Dai et al.'s "change rate", the one place kn_lens
    computes it (effect tables, figures, exercises).

    Element-wise for tensors, arrays and pandas objects (index kept), a float for two numbers; ``NaN`` wherever
    ``before`` is 0 (a change relative to nothing), never an error or an infinity. Average the result yourself:
    the mean of relative changes is not the relative change of the means.

    Args:
        before: the value(s) before (e.g. the probability of the correct answer).
        after: the value(s) after, of the same shape.

    Returns:
        Like the inputs: a float, a ``numpy`` array, a pandas object or a tensor (float32 at least).

    Example:
        >>> relative_change(0.5, 0.25)
        -0.5
        >>> relative_change(torch.tensor([0.5, 0.0]), torch.tensor([0.75, 0.1]))
        tensor([0.5000,    nan])
    """
    if isinstance(before, Tensor) or isinstance(after, Tensor):
        before, after = torch.as_tensor(before), torch.as_tensor(after)
        dtype = torch.promote_types(torch.promote_types(before.dtype, after.dtype), torch.float32)
        before, after = before.to(dtype), after.to(dtype)
        return (after - before) / before.where(before != 0, torch.nan)
    if isinstance(before, pd.Series | pd.DataFrame):
        return (after - before) / before.where(before != 0)
    if np.ndim(before) or np.ndim(after) or isinstance(after, pd.Series | pd.DataFrame):
        before, after = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
        safe = np.where(before != 0, before, 1.0)
        return np.where(before != 0, (after - before) / safe, np.nan)
    before, after = float(before), float(after)
    return (after - before) / before if before != 0 else float("nan")


_LOG_ODDS_LOW, _LOG_ODDS_HIGH = 1e-12, 1 - 1e-15


def log_odds(p):
    """The log-odds ``log(p / (1 - p))`` of probabilities, the one place kn_lens computes it: a change in log-odds
    does not saturate near ``p = 1`` as a relative change does.

    Computed in float64 with ``p`` clamped to ``[1e-12, 1 - 1e-15]`` (finite at 0 and 1).

    Args:
        p: probabilities: a tensor (returned as a float64 tensor), or a number / array (a float / ``numpy``
            array).

    Example:
        >>> log_odds(torch.tensor([0.5, 0.9]))
        tensor([0.0000, 2.1972], dtype=torch.float64)
        >>> round(log_odds(0.25), 4)
        -1.0986
    """
    tensor = isinstance(p, Tensor)
    q = torch.as_tensor(p).double().clamp(_LOG_ODDS_LOW, _LOG_ODDS_HIGH)
    out = torch.log(q) - torch.log1p(-q)
    if tensor:
        return out
    return float(out) if out.ndim == 0 else out.numpy()


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


def mean_logit_diff(model: Model, correct: TargetLike, wrong: Sequence[TargetLike]) -> Metric:
    """A metric: logit of ``correct`` minus the mean logit of the ``wrong`` answers, at each prompt's (first)
    target position; the mean of :func:`logit_diff` over them.

    The contrastive objective of a relation: attributed with it, a neuron scores high when it favours *this*
    answer over the relation's other answers (" Paris" over " Rome", " Berlin", ...), not when it raises every
    capital alike. Repeated wrong answers count once; ``correct`` may not be among them.

    Example:
        >>> metric = mean_logit_diff(model, " Paris", [" Rome", " Berlin"])
        >>> p = make_prompt(model, "The capital of France is", " Paris")
        >>> logits = model(p.tokens[None])
        >>> at = logits[0, p.positions[0]]
        >>> ids = [token_ids(model, t)[0] for t in (" Paris", " Rome", " Berlin")]
        >>> bool(torch.isclose(metric(logits, [p])[0], at[ids[0]] - (at[ids[1]] + at[ids[2]]) / 2))
        True
    """
    check_model(model)
    good = token_ids(model, correct)
    if isinstance(wrong, str | int) or not isinstance(wrong, Sequence) or not wrong:
        raise ValueError("wrong must be a non-empty list of answers, e.g. [' Rome', ' Berlin']")
    bad = list(dict.fromkeys(tuple(token_ids(model, w)) for w in wrong))
    if len(good) != 1 or any(len(b) != 1 for b in bad):
        raise ValueError("mean_logit_diff compares single tokens; pass one-token answers (or token ids)")
    if (good[0],) in bad:
        raise ValueError(f"the correct answer {correct!r} is also among the wrong ones; leave it out of wrong")
    bad_ids = [b[0] for b in bad]

    def metric(logits: Float[Tensor, "batch pos d_vocab"], prompts: Sequence[Prompt]) -> Float[Tensor, " batch"]:
        rows = torch.arange(logits.shape[0], device=logits.device)
        pos = torch.tensor([p.positions[0] for p in prompts], device=logits.device)
        picked = logits[rows, pos]
        return picked[:, good[0]] - picked[:, torch.tensor(bad_ids, device=logits.device)].mean(-1)

    metric.__name__ = f"mean_logit_diff({correct!r}, {len(bad_ids)} others)"
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

    Computed in float32 whatever the logits' dtype (the logits read are cast first: the softmax of bfloat16 logits
    would keep two or three significant digits), and returned as float32 on the logits' device; a callable metric
    receives the logits as float32.

    Example:
        >>> p = make_prompt(model, "The capital of France is", " Paris")
        >>> objective_from_logits(model(p.tokens[None]), p, "logprob").detach()
        tensor([-0.2581])
    """
    check_objective(objective)
    batch = logits.shape[0]
    if isinstance(prompts, Prompt):
        prompts = [prompts] * batch
    if len(prompts) != batch:
        raise ValueError(f"{len(prompts)} prompts for {batch} rows of logits")
    if callable(objective):
        return _call_metric(objective, logits.float(), list(prompts)).float()
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
    picked = picked.float()  # the softmax of a half-precision model's logits would keep 2-3 digits
    if objective == "logit":
        return picked.gather(-1, ids[..., None])[..., 0].sum(-1)
    logprobs = picked.log_softmax(-1).gather(-1, ids[..., None])[..., 0].sum(-1)
    return logprobs if objective == "logprob" else logprobs.exp()


def with_grad(fn: Callable) -> Callable:
    """Run ``fn`` with autograd on, also when called under ``torch.no_grad()`` / ``inference_mode`` (gradient-based
    attributions differentiate objectives whatever mode the caller is in).

    Example:
        >>> @with_grad
        ... def needs_grad():
        ...     return torch.is_grad_enabled()
        >>> with torch.no_grad():
        ...     needs_grad()
        True
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        grad = torch.is_grad_enabled()
        try:
            try:
                if torch.is_inference_mode_enabled():
                    with torch.inference_mode(False), torch.enable_grad():
                        return fn(*args, **kwargs)
                with torch.enable_grad():
                    return fn(*args, **kwargs)
            finally:  # the caller's grad mode, also when an interrupt hit torch's own restore
                torch.set_grad_enabled(grad)
        finally:
            torch.set_grad_enabled(grad)

    return wrapper


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
        >>> forward_logits(model, tokens, kn_lens.hooks.scale(["L24N1005"], 0.0, positions="all")).shape
        torch.Size([1, 5, 49152])
    """
    if fwd_hooks:
        return backends.run_with_hooks(model, tokens, return_type="logits", fwd_hooks=list(fwd_hooks))
    return model(tokens, return_type="logits")


def check_hooks(model: Model, fwd_hooks) -> None:
    """Raise a clear error, before anything runs, for hooks on hook points the model lacks or on neurons
    outside it (hooks from :mod:`kn_lens.hooks` built without ``model=``).

    Example:
        >>> check_hooks(model, kn_lens.hooks.scale(["L99N0"], 0.0, positions="all"))
        Traceback (most recent call last):
        ...
        ValueError: a hook is on blocks.99.mlp.hook_post, which this model does not have (30 layers: 0..29); ...
    """
    for item in fwd_hooks:
        if not (isinstance(item, tuple | list) and len(item) == 2 and callable(item[1])):
            raise TypeError(f"fwd_hooks must be (hook_name, fn) pairs, got {item!r}")
        name, fn = item
        if isinstance(name, str) and name not in model.hook_dict:
            raise ValueError(
                f"a hook is on {name}, which this model does not have ({model.cfg.n_layers} layers: "
                f"0..{model.cfg.n_layers - 1}); check the neurons' layers (or build the hooks with model=...)"
            )
        indices = getattr(fn, "keywords", {}).get("indices") if hasattr(fn, "keywords") else None
        if indices and max(indices) >= model.cfg.d_mlp:
            raise ValueError(
                f"a hook on {name} changes neuron {max(indices)}, but the layer has d_mlp={model.cfg.d_mlp} neurons"
            )


@evaluating
@torch.inference_mode()
def target_scores(
    model: Model,
    prompts: str | Prompt | Sequence[str | Prompt],
    target: TargetLike = None,
    *,
    objective: Objective = "prob",
    fwd_hooks=(),
    batch_size: int = 32,
) -> Float[Tensor, " n_prompts"]:
    """The objective of each prompt's target, optionally under forward hooks (batched by prompt length).

    Hooks given as a callable ``hooks_for(prompts_in_batch) -> [(name, fn), ...]`` are built per batch, for
    interventions whose positions depend on the prompts (e.g. the mask position).

    Args:
        model: the model.
        prompts: Prompts with targets, or texts (with ``target``), like every function of kn_lens.
        target: the answer of text prompts (one for all, or one per prompt).
        objective: ``"prob"``, ``"logprob"`` or ``"logit"``.
        fwd_hooks: ``[(hook_name, fn), ...]`` or a per-batch builder (e.g. an ``Intervention``).
        batch_size: prompts per forward pass (a positive int).

    Returns:
        ``Float[Tensor, "n_prompts"]``, float32 on the CPU (computed in float32 whatever the model's dtype).

    Example:
        >>> target_scores(model, ["The capital of France is", "The capital of Italy is"], [" Paris", " Rome"])
        tensor([0.7725, 0.3803])
    """
    from kn_lens.inputs import check_batch_size, to_prompts

    check_model(model)
    check_objective(objective)
    batch_size = check_batch_size(batch_size)
    prompts = to_prompts(model, prompts, target, need_target=True)
    if not callable(fwd_hooks):
        check_hooks(model, fwd_hooks)
    out = torch.empty(len(prompts))
    for chunk in length_batches(prompts, batch_size):
        batch = [prompts[i] for i in chunk]
        hooks = fwd_hooks(batch) if callable(fwd_hooks) else fwd_hooks
        if callable(fwd_hooks):
            check_hooks(model, hooks)
        logits = forward_logits(model, stack_tokens(batch, model.cfg.device), hooks)
        out[chunk] = objective_from_logits(logits, batch, objective).float().cpu()
    return out


@evaluating
def top_predictions(model: Model, prompt: str | Prompt, k: int = 10) -> pd.DataFrame:
    """The model's ``k`` most likely tokens at the prompt's site (the mask, or the next token), as a DataFrame.

    Args:
        model: the model.
        prompt: a text (encoders: with its ``[MASK]``) or a :class:`~kn_lens.prompts.Prompt`.
        k: how many tokens (1 to the vocabulary size).

    Returns:
        Columns ``rank`` (1 = most likely), ``token`` (its ``repr``, so leading spaces show) and ``prob``.

    Example:
        >>> top_predictions(model, "The capital of France is", k=3)
           rank     token      prob
        0     1  ' Paris'  0.77...
        ...
    """
    from kn_lens.inputs import check_count

    check_model(model)
    k = check_count(k, "k", minimum=1, maximum=model.cfg.d_vocab, limit="the vocabulary size")
    if not isinstance(prompt, Prompt):
        prompt = make_prompt(model, prompt)
    with torch.inference_mode():
        logits = model(prompt.tokens[None].to(model.cfg.device), return_type="logits")[0, prompt.site]
    top = logits.float().softmax(-1).topk(k)
    tokens = [model.tokenizer.decode([i]) for i in top.indices.tolist()]
    return pd.DataFrame({"rank": range(1, k + 1), "token": [repr(t) for t in tokens], "prob": top.values.tolist()})
