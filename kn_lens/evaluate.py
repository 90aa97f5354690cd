"""Evaluating knowledge neurons: effects beside their controls, relation erasure, fact editing, specificity.

Context:
    Dai et al. (2022) test knowledge neurons by intervening on them at the ``[MASK]`` position: *suppressing*
    (activation x 0) should lower the probability of the correct answer, *enhancing* (x 2) should raise it, and
    neither should move unrelated facts. A claim like "these neurons store the fact" needs controls next to it:
    the same number of **random neurons in the same layers** (does any intervention of that size hurt?),
    **other facts of the same relation** (is the effect about the fact, or about the relation?), **facts of other
    relations** (Dai's "unrelated") and **held-out paraphrases** (does it generalise beyond the attribution
    prompts?). Every table here carries them.

Metrics, per prompt, then averaged:
    * ``rel_change = (after - before) / before`` (Dai et al.'s "change rate"; averaged: the *mean of relative
      changes*, ``rel_change_%``); the *relative change of the means* (``rel_of_means_%``) weighs confident
      prompts more and is not dominated by prompts with tiny base probabilities;
    * ``logodds_change = logit(after) - logit(before)``, which does not saturate near p = 1;
    * accuracy (``top1_before``/``top1_after``): is the answer still the model's first choice?
    * **specificity** = ``1 - same_relation_change / own_change``: 1 when the neurons move only their own fact,
      0 when they move every fact of the relation as much (relation neurons, as on SmolLM2's capitals).

Relation erasure (:func:`erase_relation`) and fact editing (:func:`edit_effects`) follow Dai et al. sec. 5, each
with a random-neuron control and, for causal models, the perplexity of a held-out text (:func:`text_perplexity`).
:func:`evaluate_fact` bundles it all into one JSON-ready record per fact (the unit of :mod:`kn_lens.sweeps`), and
:func:`records_frame` / :func:`relation_table` turn records into tidy tables with a ``relation`` column.

Example (on the bundled tiny BERT; the same calls work on SmolLM2 with its prompts and " Paris"):
    >>> from kn_lens.fixtures import tiny_bert
    >>> france, italy = tiny_bert.FACTS[0], tiny_bert.FACTS[2]
    >>> found = kn_lens.find_knowledge_neurons(bert, tiny_bert.train_prompts(france), "Paris")
    >>> effects = intervention_effects(bert, found, heldout=tiny_bert.heldout_prompts(france),
    ...                                unrelated=[(tiny_bert.train_prompts(italy), "Rome")])
    >>> summarize_effects(effects)[["intervention", "condition", "n", "rel_change_%"]].round(1)
      intervention                     condition  n  rel_change_%
    0     suppress             knowledge neurons  3         -15.8
    1     suppress  knowledge neurons (held-out)  1         -18.1
    2     suppress                random neurons  3          -0.0
    3     suppress     random neurons (held-out)  1           0.3
    4     suppress                   other facts  3         -10.5
    5      enhance             knowledge neurons  3           2.4
    6      enhance  knowledge neurons (held-out)  1           2.9
    7      enhance                random neurons  3          -0.2
    8      enhance     random neurons (held-out)  1          -0.7
    9      enhance                   other facts  3          -5.2

    Suppressing the five neurons takes 16% off "Paris" (18% on the held-out paraphrase), random neurons of the
    same layers do nothing, but Rome loses 10% too: these neurons are partly about capitals, not only Paris.

    >>> compare(bert, "The capital of France is [MASK].", ["Paris", "Rome"],
    ...         {"suppress": Intervention("scale", found.neurons, 0.0)}).round(4)
                clean  suppress
    candidate
    Paris      0.8874    0.7268
    Rome       0.0009    0.0020
"""

from __future__ import annotations

import itertools
import math
import random
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
import torch

from kn_lens._device import evaluating
from kn_lens._typing import Model, Neuron, check_model, group_by_layer, hook_name, is_encoder
from kn_lens.edit import edit_fact, erase
from kn_lens.hooks import Intervention
from kn_lens.inputs import (
    NeuronsLike,
    check_batch_size,
    check_choice,
    check_count,
    check_int,
    check_number,
    check_positions,
    check_sequence,
    to_neurons,
    to_prompts,
)
from kn_lens.neurons import RULES, KnowledgeNeurons, find_knowledge_neurons, random_neurons
from kn_lens.prompts import Prompt, TargetLike, make_prompt, one_target, stack_tokens, token_ids
from kn_lens.scoring import forward_logits, mean_logit_diff, objective_from_logits, target_scores

#: Dai et al.'s interventions: name -> activation factor.
DAI_INTERVENTIONS: dict[str, float] = {"suppress": 0.0, "enhance": 2.0}
EFFECT_COLUMNS = (
    "relation",
    "intervention",
    "factor",
    "condition",
    "neurons",
    "prompt_set",
    "fact",
    "prompt",
    "target",
    "n_neurons",
    "before",
    "after",
    "rel_change",
    "logodds_before",
    "logodds_after",
    "logodds_change",
    "top1_before",
    "top1_after",
    "nll_before",
    "nll_after",
)
_EPS = 1e-12


def _logodds(p: torch.Tensor) -> torch.Tensor:
    p = p.double().clamp(_EPS, 1 - 1e-15)
    return torch.log(p) - torch.log1p(-p)


def _padded(batch: Sequence[Prompt], device) -> torch.Tensor:
    """Stack prompts, right-padding shorter ones with their own last token (never read: causal models only)."""
    width = max(len(p) for p in batch)
    if all(len(p) == width for p in batch):
        return stack_tokens(batch, device)
    rows = [torch.cat([p.tokens, p.tokens[-1:].expand(width - len(p))]) for p in batch]
    return torch.stack(rows).to(device)


def _padding_safe(positions: Any) -> bool:
    """True for positions that mean the same in a right-padded batch as for each prompt alone."""
    return isinstance(positions, str) and positions in ("site", "all")


class Measured(NamedTuple):
    """Per-prompt scores of the target: probability, is-top-1 (first target token), log-probability, tokens."""

    prob: torch.Tensor
    top1: torch.Tensor
    logprob: torch.Tensor
    n_tokens: torch.Tensor


@evaluating
@torch.inference_mode()
def measure(model: Model, prompts: Sequence[Prompt], *, fwd_hooks=(), batch_size: int = 32) -> Measured:
    """The target's probability, whether it is the top-1 prediction, and its log-probability, in one pass.

    Prompts are batched by (length, target length) without padding; ``fwd_hooks`` is a hook list or a per-batch
    builder (e.g. an :class:`~kn_lens.hooks.Intervention`). For multi-token targets ``prob`` is the product over
    the target tokens (teacher-forced) and ``top1`` refers to the first token. Everything comes back on the CPU
    (``prob`` float32, ``logprob`` float64), computed in float32 whatever the model's dtype, in eval mode.

    Example:
        >>> m = measure(bert, kn_lens.make_prompts(bert, ["The capital of France is [MASK]."], "Paris"))
        >>> m.prob, m.top1
        (tensor([0.8874]), tensor([True]))
    """
    check_model(model)
    batch_size = check_batch_size(batch_size)
    if not prompts:
        raise ValueError("no prompts given")
    if not all(p.target_ids for p in prompts):
        raise ValueError("a prompt has no target; make it with make_prompt(model, text, target)")
    n = len(prompts)
    logprob, top1 = torch.empty(n, dtype=torch.float64), torch.zeros(n, dtype=torch.bool)
    # A causal model never looks ahead, so prompts of different lengths can share a batch, right-padded, and be
    # read at their own positions (a forward of 32 short prompts costs about what one costs on a CPU). Only for
    # interventions whose positions padding cannot move ("site": each row's own; "all": the padding comes after
    # what is read); "last", negative and explicit positions count from the end or may fall on the padding, so
    # those prompts are batched by length, like every encoder prompt.
    ours = isinstance(fwd_hooks, Intervention) and _padding_safe(fwd_hooks.positions)
    pad = not is_encoder(model) and (ours or not fwd_hooks)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(prompts):
        key = (0 if pad else len(p), len(p.target_ids))
        groups.setdefault(key, []).append(i)
    for indices in groups.values():
        if pad:  # similar lengths together: less padding
            indices = sorted(indices, key=lambda i: len(prompts[i]))
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            batch = [prompts[i] for i in chunk]
            hooks = fwd_hooks(batch) if callable(fwd_hooks) else fwd_hooks
            logits = forward_logits(model, _padded(batch, model.cfg.device), hooks)
            logprob[chunk] = objective_from_logits(logits, batch, "logprob").cpu().double()  # MPS: no float64
            rows = torch.arange(len(batch), device=logits.device)
            first = torch.tensor([p.positions[0] for p in batch], device=logits.device)
            wanted = torch.tensor([p.target_ids[0] for p in batch], device=logits.device)
            top1[chunk] = (logits[rows, first].argmax(-1) == wanted).cpu()
    n_tokens = torch.tensor([len(p.target_ids) for p in prompts])
    return Measured(logprob.exp().float(), top1, logprob, n_tokens)


# --------------------------------------------------------------------------------------------------------------
# Input helpers
# --------------------------------------------------------------------------------------------------------------


def _prompts(model: Model, prompts: Any, target: TargetLike, what: str) -> list[Prompt]:
    """Prompts with targets from texts + target, Prompts, or (texts, target) / KnowledgeNeurons groups."""
    return to_prompts(model, prompts, target, need_target=True, what=f"{what} prompts", allow_empty=True)


def _check_factor(name: str, factor: float) -> float:
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not math.isfinite(factor):
        raise ValueError(f"the factor of {name!r} must be a finite number, got {factor!r}")
    return float(factor)


# --------------------------------------------------------------------------------------------------------------
# Core: effects with controls
# --------------------------------------------------------------------------------------------------------------


def intervention_effects(
    model: Model,
    neurons: NeuronsLike | KnowledgeNeurons,
    prompts: Sequence[str | Prompt] | None = None,
    target: TargetLike = None,
    *,
    interventions: Mapping[str, float] | None = None,
    heldout: Sequence[str | Prompt] | None = None,
    unrelated: Any = None,
    same_relation: Any = None,
    random_seeds: Sequence[int] = (0,),
    positions: Literal["site", "all", "last"] = "site",
    objective_floor: float = 0.0,
    batch_size: int = 32,
    relation: str | None = None,
    clean_cache: dict | None = None,
) -> pd.DataFrame:
    """Scale neurons (x0, x2, ...) and measure the correct answer's probability, beside the controls.

    For each intervention (name -> activation factor) the same scaling is applied to

    * ``"knowledge neurons"`` on ``prompts`` (the attribution prompts) and, separately, on ``heldout``;
    * ``"random neurons"``: :func:`~kn_lens.neurons.random_neurons` (same count per layer), one set per seed,
      on the same prompts;
    * ``"same relation"``: the knowledge neurons on ``same_relation`` prompts (other facts of the fact's
      relation: is the effect about the fact or the relation?);
    * ``"other facts"``: the knowledge neurons on ``unrelated`` prompts (e.g. facts of other relations).

    Args:
        model: the model.
        neurons: the neurons, or a :class:`~kn_lens.neurons.KnowledgeNeurons` result (then ``prompts`` and
            ``target`` default to the result's).
        prompts: the fact's prompts (texts with ``target``, or Prompts).
        target: the answer for text prompts.
        interventions: name -> factor (default ``{"suppress": 0.0, "enhance": 2.0}``).
        heldout: held-out paraphrases of the same fact (same target).
        unrelated: prompts of other facts, each with its own answer: Prompts, ``(texts, target)`` tuples,
            :class:`~kn_lens.neurons.FactPrompts`, PARAREL bags or other ``KnowledgeNeurons`` results.
        same_relation: prompts of other facts of the same relation (same forms as ``unrelated``).
        random_seeds: seeds of the random-neuron controls (empty: no control).
        positions: where to scale: each prompt's ``"site"`` (Dai et al.), ``"all"`` positions, or ``"last"``.
        objective_floor: prompts whose base probability is below this are dropped, a number in ``[0, 1)`` (0
            keeps all).
        batch_size: prompts per forward pass.
        relation: the value of the ``relation`` column (default the result's ``relation``).
        clean_cache: a dict shared between calls on one model to measure each group of prompts without
            intervention only once (e.g. one fact's controls under several selection rules); keyed by the prompts'
            texts and targets, it must not outlive a change of the model's weights or hooks.

    Returns:
        A long DataFrame, one row per (intervention, condition, prompt), with columns :data:`EFFECT_COLUMNS`:
        ``before``/``after`` probabilities of the correct answer, ``rel_change``, ``logodds_change`` and
        ``top1_before``/``top1_after`` (is the answer the top-1 prediction?), ``nll_before``/``nll_after`` (the
        answer's negative log-likelihood per token).
        ``condition`` is ``"knowledge neurons"``, ``"knowledge neurons (held-out)"``, ``"random neurons"``,
        ``"random neurons (held-out)"``, ``"same relation"`` or ``"other facts"`` (the frame
        ``kn_lens.plotting.intervention_bars`` takes).

    Example:
        >>> from kn_lens.fixtures import tiny_bert
        >>> france = tiny_bert.FACTS[0]
        >>> found = kn_lens.find_knowledge_neurons(bert, tiny_bert.train_prompts(france), "Paris")
        >>> df = intervention_effects(bert, found, heldout=tiny_bert.heldout_prompts(france),
        ...                           unrelated=[(["The capital of Italy is [MASK]."], "Rome")])
        >>> len(df)          # 2 interventions x (3 prompts x 2 neuron sets + 1 held-out x 2 + 1 other fact)
        18
        >>> df.groupby(["intervention", "condition"], sort=False)["rel_change"].mean().round(3)
        intervention  condition
        suppress      knowledge neurons              -0.158
                      knowledge neurons (held-out)   -0.181
                      random neurons                 -0.000
                      random neurons (held-out)       0.003
                      other facts                    -0.096
        enhance       knowledge neurons               0.024
                      knowledge neurons (held-out)    0.029
                      random neurons                 -0.002
                      random neurons (held-out)      -0.007
                      other facts                    -0.049
        Name: rel_change, dtype: float64
    """
    check_model(model)
    result = neurons if isinstance(neurons, KnowledgeNeurons) else None
    if result is not None and prompts is None:
        prompts = result.prompts
    if prompts is None or (isinstance(prompts, list | tuple) and not prompts):
        raise ValueError("no prompts given; pass the fact's prompts (or a KnowledgeNeurons result)")
    batch_size = check_batch_size(batch_size)
    target = one_target(target)  # one fact: a list of ids is its multi-token answer
    main = _prompts(model, prompts, target, "fact")
    fact_target = target if target is not None else main[0].target_ids
    held = _prompts(model, heldout, fact_target, "held-out")
    other = _prompts(model, unrelated, None, "unrelated")
    same = _prompts(model, same_relation, None, "same-relation")
    if relation is None and result is not None:
        relation = result.relation
    if interventions is not None and not isinstance(interventions, Mapping):
        raise TypeError(f"interventions must map names to factors, e.g. {{'suppress': 0.0}}; got {interventions!r}")
    interventions = dict(DAI_INTERVENTIONS if interventions is None else interventions)
    if not interventions:
        raise ValueError("no interventions given; e.g. {'suppress': 0.0, 'enhance': 2.0}")
    for name, factor in interventions.items():
        _check_factor(name, factor)
    check_positions(positions)
    objective_floor = check_number(objective_floor, "objective_floor", low=0, high=1, high_open=True)
    random_seeds = [check_int(s, "random_seeds") for s in check_sequence(random_seeds, "random_seeds", what="ints")]

    # a result may legitimately have selected nothing
    neuron_list = to_neurons(neurons, model, allow_empty=result is not None)
    controls = [(seed, random_neurons(model, neuron_list, seed=seed)) for seed in random_seeds] if neuron_list else []

    groups: list[tuple[str, str, list[Neuron], str, list[Prompt]]] = [
        ("knowledge neurons", "knowledge", neuron_list, "attribution", main)
    ]
    if held:
        groups.append(("knowledge neurons (held-out)", "knowledge", neuron_list, "held-out", held))
    for seed, control in controls:
        label = "random" if len(controls) == 1 else f"random (seed {seed})"
        groups.append(("random neurons", label, control, "attribution", main))
        if held:
            groups.append(("random neurons (held-out)", label, control, "held-out", held))
    if same:
        groups.append(("same relation", "knowledge", neuron_list, "same relation", same))
    if other:
        groups.append(("other facts", "knowledge", neuron_list, "unrelated", other))

    if clean_cache is not None and not isinstance(clean_cache, dict):
        raise TypeError(f"clean_cache must be a dict (or None), got {type(clean_cache).__name__}")
    base_cache: dict = {} if clean_cache is None else clean_cache
    rows = []
    for name, factor in interventions.items():
        for condition, neuron_label, group_neurons, prompt_set, group_prompts in groups:
            key = (tuple((p.text, p.target_ids) for p in group_prompts), batch_size)
            if key not in base_cache:
                base_cache[key] = measure(model, group_prompts, batch_size=batch_size)
            base = base_cache[key]
            if group_neurons:
                hook = Intervention("scale", tuple(group_neurons), factor, positions=positions, name=name)
                now = measure(model, group_prompts, fwd_hooks=hook, batch_size=batch_size)
            else:  # no neurons: nothing to intervene on
                now = base
            before, after = base.prob, now.prob
            lo_before, lo_after = _logodds(before), _logodds(after)
            for i, prompt in enumerate(group_prompts):
                b, a = float(before[i]), float(after[i])
                if b < objective_floor:
                    continue
                rows.append(
                    dict(
                        relation=relation,
                        intervention=name,
                        factor=factor,
                        condition=condition,
                        neurons=neuron_label,
                        prompt_set=prompt_set,
                        fact=prompt.target,
                        prompt=prompt.text,
                        target=prompt.target,
                        n_neurons=len(group_neurons),
                        before=b,
                        after=a,
                        rel_change=(a - b) / b if b > 0 else float("nan"),
                        logodds_before=float(lo_before[i]),
                        logodds_after=float(lo_after[i]),
                        logodds_change=float(lo_after[i] - lo_before[i]),
                        top1_before=bool(base.top1[i]),
                        top1_after=bool(now.top1[i]),
                        nll_before=float(-base.logprob[i] / base.n_tokens[i]),
                        nll_after=float(-now.logprob[i] / now.n_tokens[i]),
                    )
                )
    return pd.DataFrame(rows, columns=list(EFFECT_COLUMNS))


def summarize_effects(
    effects: pd.DataFrame,
    *,
    by: Sequence[str] = ("intervention", "condition"),
    base_split: Sequence[float] | None = None,
) -> pd.DataFrame:
    """Average an :func:`intervention_effects` frame: mean relative change (%) and log-odds change per group.

    Args:
        effects: the long frame.
        by: the grouping columns.
        base_split: optional base-probability cut points (e.g. ``(0.9,)``): adds a ``base`` column so that
            saturated prompts (nothing left to gain for an enhancement) are reported apart.

    Returns:
        One row per group: ``n``, ``before``, ``after`` (means), ``rel_change_%`` (mean of per-prompt relative
        changes, x100, Dai et al.'s number), ``rel_of_means_%`` (relative change of the mean probability, x100),
        ``logodds_change`` (mean) and, when the frame has them, ``acc_before``/``acc_after`` (top-1 share) and
        ``ppl_before``/``ppl_after`` (answer perplexity, exp of the mean per-token negative log-likelihood).

    Example:
        >>> from kn_lens.fixtures import tiny_bert
        >>> france = tiny_bert.FACTS[0]
        >>> found = kn_lens.find_knowledge_neurons(bert, tiny_bert.train_prompts(france), "Paris")
        >>> df = intervention_effects(bert, found, interventions={"enhance": 2.0}, random_seeds=())
        >>> summarize_effects(df, base_split=(0.9,))[["condition", "base", "n", "before", "rel_change_%"]].round(3)
                   condition   base  n  before  rel_change_%
        0  knowledge neurons  p<0.9  3   0.895         2.352
        >>> row = summarize_effects(df).iloc[0]  # the relative change of the mean: (after - before) / before
        >>> round(float(row["rel_of_means_%"]), 3), round(float(100 * (row["after"] / row["before"] - 1)), 3)
        (2.352, 2.352)
    """
    if not isinstance(effects, pd.DataFrame):
        raise TypeError(f"effects must be the DataFrame of intervention_effects, got {type(effects).__name__}")
    by = check_sequence(by, "by", what="column names")
    missing = [c for c in ("before", "after", "rel_change", "logodds_change", *by) if c not in effects.columns]
    if missing:
        raise ValueError(f"the frame lacks columns {missing}; pass the output of intervention_effects")
    if base_split is not None:
        base_split = [
            check_number(x, "base_split", low=0, high=1, low_open=True, high_open=True)
            for x in check_sequence(base_split, "base_split", what="probabilities, e.g. (0.9,)")
        ]
    frame = effects.copy()
    keys = list(by)
    if base_split:
        edges = [0.0, *sorted(float(x) for x in base_split), 1.0 + 1e-9]
        labels = [f"p<{edges[1]:g}"] + [
            f"p>={lo:g}" if hi > 1 else f"{lo:g}<=p<{hi:g}" for lo, hi in itertools.pairwise(edges[1:])
        ]
        frame["base"] = pd.cut(frame["before"], bins=edges, labels=labels, right=False).astype(str)
        keys.append("base")
    grouped = frame.groupby(keys, sort=False, dropna=False)
    aggregations = dict(
        n=("before", "size"),
        before=("before", "mean"),
        after=("after", "mean"),
        rel_change=("rel_change", "mean"),
        logodds_change=("logodds_change", "mean"),
    )
    if {"top1_before", "top1_after"} <= set(frame.columns):
        frame["top1_before"] = frame["top1_before"].astype(float)
        frame["top1_after"] = frame["top1_after"].astype(float)
        aggregations.update(acc_before=("top1_before", "mean"), acc_after=("top1_after", "mean"))
    if {"nll_before", "nll_after"} <= set(frame.columns):
        aggregations.update(nll_before=("nll_before", "mean"), nll_after=("nll_after", "mean"))
    out = grouped.agg(**aggregations).reset_index()
    if "nll_before" in out:  # answer perplexity: exp of the mean per-token negative log-likelihood
        out["ppl_before"] = np.exp(out.pop("nll_before"))
        out["ppl_after"] = np.exp(out.pop("nll_after"))
    out["rel_change_%"] = 100 * out.pop("rel_change")
    out["rel_of_means_%"] = 100 * (out["after"] - out["before"]) / out["before"].where(out["before"] > 0)
    return out


def specificity(own: float, same_relation: float) -> float:
    """``1 - same_relation / own``: 1 = only the fact moves, 0 = the whole relation moves as much, < 0 = more.

    NaN when the own effect is zero or either value is missing.

    Example:
        >>> specificity(-40.0, -10.0)
        0.75
    """
    if own is None or same_relation is None or not math.isfinite(own) or not math.isfinite(same_relation):
        return float("nan")
    if own == 0:
        return float("nan")
    return 1.0 - same_relation / own


def _scale_helper(
    model: Model,
    neurons: NeuronsLike | KnowledgeNeurons,
    prompts: Sequence[str | Prompt] | None,
    target: TargetLike,
    factor: float,
    name: str,
    unrelated: Any,
    positions: Literal["site", "all", "last"],
) -> pd.DataFrame:
    df = intervention_effects(
        model,
        neurons,
        prompts,
        target,
        interventions={name: factor},
        unrelated=unrelated,
        random_seeds=(),
        positions=positions,
    )
    columns = ["condition", "prompt", "target", "before", "after", "rel_change", "logodds_change"]
    return df[columns].reset_index(drop=True)


def suppress(
    model: Model,
    neurons: NeuronsLike | KnowledgeNeurons,
    prompts: Sequence[str | Prompt] | None = None,
    target: TargetLike = None,
    *,
    unrelated: Any = None,
    factor: float = 0.0,
    positions: Literal["site", "all", "last"] = "site",
) -> pd.DataFrame:
    """Suppress neurons (activation x ``factor``, default 0) and return before/after target probabilities.

    Rows for ``unrelated`` prompts (``condition="other facts"``) sit next to the fact's own rows.

    Args:
        model: the model.
        neurons: the neurons or a ``KnowledgeNeurons`` result (then prompts/target default to the result's).
        prompts: the prompts (texts with ``target``, or Prompts).
        target: the answer for text prompts.
        unrelated: prompts of other facts with their own answers (see :func:`intervention_effects`).
        factor: the activation factor.
        positions: ``"site"`` (mask / last position, Dai et al.), ``"all"`` or ``"last"``.

    Returns:
        A DataFrame with ``condition, prompt, target, before, after, rel_change, logodds_change``.

    Example:
        >>> suppress(model, kns, unrelated=[(["The capital of Italy is"], " Rome")])[["condition", "before", "after"]]
                   condition  before   after
        0  knowledge neurons  0.7725  0.1389
        1  knowledge neurons  0.0157  0.0011
        2  knowledge neurons  0.4078  0.0449
        3        other facts  0.3803  0.0042
    """
    return _scale_helper(model, neurons, prompts, target, factor, "suppress", unrelated, positions)


def enhance(
    model: Model,
    neurons: NeuronsLike | KnowledgeNeurons,
    prompts: Sequence[str | Prompt] | None = None,
    target: TargetLike = None,
    *,
    unrelated: Any = None,
    factor: float = 2.0,
    positions: Literal["site", "all", "last"] = "site",
) -> pd.DataFrame:
    """Enhance neurons (activation x ``factor``, default 2) and return before/after target probabilities.

    Report the change in log-odds too (``logodds_change``): a probability near 1 cannot rise by much.

    Args:
        model, neurons, prompts, target, unrelated, factor, positions: as in :func:`suppress`.

    Returns:
        A DataFrame with ``condition, prompt, target, before, after, rel_change, logodds_change``.

    Example:
        >>> from kn_lens.fixtures import tiny_bert
        >>> found = kn_lens.find_knowledge_neurons(bert, tiny_bert.train_prompts(tiny_bert.FACTS[0]), "Paris")
        >>> table = enhance(bert, found, unrelated=[(["The capital of Italy is [MASK]."], "Rome")])
        >>> table[["condition", "target", "before", "after", "logodds_change"]].round(3)
                   condition target  before  after  logodds_change
        0  knowledge neurons  Paris   0.895  0.914           0.229
        1  knowledge neurons  Paris   0.894  0.916           0.249
        2  knowledge neurons  Paris   0.896  0.918           0.262
        3        other facts   Rome   0.894  0.850          -0.398
    """
    return _scale_helper(model, neurons, prompts, target, factor, "enhance", unrelated, positions)


def other_relation_facts(facts: Sequence[Any], fact: Any, *, k: int | None = None, seed: int = 0) -> list[Any]:
    """The control set of unrelated facts: facts of *other* relations than ``fact``'s (anything with a
    ``.relation``, e.g. :class:`~kn_lens.neurons.FactPrompts` or the fixture's ``Fact``).

    Args:
        facts: all facts.
        fact: the fact under study.
        k: how many to draw (None = all of them), reproducibly with ``seed``.
        seed: random seed for the draw.

    Returns:
        The unrelated facts, in their original order.

    Example:
        >>> from kn_lens.fixtures import tiny_bert
        >>> others = other_relation_facts(tiny_bert.FACTS, tiny_bert.FACTS[0], k=6)
        >>> [f.subject for f in others]
        ['Korea', 'Finland', 'Denmark', 'Noah', 'Quinn', 'Tina']
    """
    if not hasattr(fact, "relation"):
        raise TypeError("facts need a .relation attribute (e.g. FactPrompts(..., relation='capital'))")
    facts = check_sequence(facts, "facts", what="facts")
    if not all(hasattr(f, "relation") for f in facts):
        raise TypeError("every fact needs a .relation attribute (e.g. FactPrompts(..., relation='capital'))")
    k = None if k is None else check_count(k, "k")
    seed = check_int(seed, "seed")
    pool = [f for f in facts if getattr(f, "relation", None) != fact.relation]
    if k is None or k >= len(pool):
        return pool
    picked = sorted(torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:k].tolist())
    return [pool[i] for i in picked]


# --------------------------------------------------------------------------------------------------------------
# Perplexity, relation erasure, fact editing (Dai et al. sec. 5), each with a control
# --------------------------------------------------------------------------------------------------------------


def heldout_text() -> str:
    """The held-out text shipped with kn_lens (the Gettysburg Address, public domain), for perplexity checks."""
    return resources.files("kn_lens").joinpath("data/heldout.txt").read_text(encoding="utf-8")


@evaluating
@torch.inference_mode()
def text_perplexity(model: Model, text: str | None = None, *, fwd_hooks=()) -> float:
    """Perplexity of a text under a causal model (default :func:`heldout_text`); NaN for masked LMs.

    The damage an edit does to the rest of the model shows here: a rise means the model got worse at plain
    language, not only at the edited fact.

    Example:
        >>> round(text_perplexity(model), 1)            # SmolLM2 on the Gettysburg Address
        12.9
    """
    check_model(model)
    if is_encoder(model):
        return float("nan")
    text = heldout_text() if text is None else text
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string")
    tokens = model.to_tokens(text)[:, : model.cfg.n_ctx]
    if tokens.shape[1] < 2:
        raise ValueError("text must be at least two tokens long")
    logits = forward_logits(model, tokens, fwd_hooks)[0, :-1].float()  # the loss in float32 whatever the dtype
    logprobs = logits.log_softmax(-1).gather(-1, tokens[0, 1:, None].to(logits.device))[:, 0]
    return float(torch.exp(-logprobs.mean()))


def _check_text(text: Any) -> None:
    """The ``text=`` of :func:`erase_relation` / :func:`edit_effects`: None, a bool or a non-empty str."""
    if text is None or isinstance(text, bool):
        return
    if not isinstance(text, str):
        raise TypeError(f"text must be a str (the held-out text), True/None (the shipped one) or False, got {text!r}")
    if not text.strip():
        raise ValueError("text is empty; pass a held-out text, None for the shipped one, or False for none")


def _accuracy_ppl(m: Measured) -> tuple[float, float, float]:
    """(top-1 accuracy, answer perplexity exp(mean per-token NLL), mean probability)."""
    nll = (-m.logprob / m.n_tokens).mean()
    return float(m.top1.float().mean()), float(torch.exp(nll)), float(m.prob.mean())


def relation_neurons(results: Sequence[Any], *, top: int = 5, min_count: int = 2) -> list[Neuron]:
    """A relation's most frequent knowledge neurons across its facts (the ones Dai et al. erase).

    Args:
        results: per-fact neuron sets: ``KnowledgeNeurons`` results, neuron lists, or sweep records (dicts with
            a ``"neurons"`` list of ``"L{l}N{i}"`` strings).
        top: how many to keep (a positive int).
        min_count: a neuron must be selected for at least this many facts (a positive int).

    Returns:
        Up to ``top`` neurons, most frequent first (ties: lower layer, then index).

    Example:
        >>> relation_neurons([["L1N5", "L0N3"], ["L1N5", "L1N7", "L0N3"], ["L1N5", "L1N9"]], top=3)
        [L1N5, L0N3]
    """
    top = check_count(top, "top", minimum=1)
    min_count = check_count(min_count, "min_count", minimum=1)
    counts: dict[Neuron, int] = {}
    for item in check_sequence(results, "results", what="per-fact neuron sets"):
        if isinstance(item, Mapping) and "neurons" not in item:
            raise ValueError(f"a record without 'neurons' ({sorted(item)[:6]}): pass sweep records or neuron lists")
        ns = item["neurons"] if isinstance(item, Mapping) else getattr(item, "neurons", item)
        for n in set(to_neurons(ns, allow_empty=True)) if ns else ():
            counts[n] = counts.get(n, 0) + 1
    ranked = sorted((n for n, c in counts.items() if c >= min_count), key=lambda n: (-counts[n], n))
    return ranked[:top]


def erase_relation(
    model: Model,
    relation_facts: Sequence[Any],
    neurons: NeuronsLike | KnowledgeNeurons,
    *,
    other_facts: Sequence[Any] = (),
    mode: Literal["zero", "unk"] = "zero",
    seed: int = 0,
    text: str | bool | None = None,
    relation: str | None = None,
    batch_size: int = 32,
) -> pd.DataFrame:
    """Erase a relation's neurons (value vectors zeroed or set to ``[UNK]``) and measure the damage.

    Beside the knowledge neurons, the same number of random neurons in the same layers is erased as a control.
    Weights are restored on exit, also on errors.

    Args:
        model: the model.
        relation_facts: facts of the relation (bags, ``FactPrompts``, ``(texts, target)`` tuples).
        neurons: the neurons to erase (e.g. :func:`relation_neurons`).
        other_facts: facts of other relations (should be untouched).
        mode: ``"zero"`` or ``"unk"`` (see :func:`kn_lens.edit.erase`).
        seed: seed of the random-neuron control.
        text: held-out text for the perplexity row (None: :func:`heldout_text`; False: no such row; causal
            models only).
        relation: the ``relation`` column (default the first fact's ``.relation``).
        batch_size: prompts per forward pass.

    Returns:
        One row per (neurons, condition): ``relation, mode, neurons, n_neurons, condition, n, acc_before,
        acc_after, ppl_before, ppl_after, ppl_change_%``; conditions ``"same relation"``, ``"other relations"``
        and ``"held-out text"`` (perplexity of the text, accuracy NaN).

    Example:
        >>> from kn_lens.fixtures import tiny_bert
        >>> capitals = [(tiny_bert.train_prompts(f), f.answer) for f in tiny_bert.facts_of("capital")]
        >>> languages = [(tiny_bert.train_prompts(f), f.answer) for f in tiny_bert.facts_of("language")]
        >>> found = [kn_lens.find_knowledge_neurons(bert, texts, answer) for texts, answer in capitals[:4]]
        >>> erased = erase_relation(bert, capitals, relation_neurons(found), other_facts=languages)
        >>> erased[["neurons", "n_neurons", "condition", "n", "acc_before", "acc_after"]]
                     neurons  n_neurons        condition   n  acc_before  acc_after
        0  knowledge neurons          3    same relation  36         1.0        1.0
        1  knowledge neurons          3  other relations  36         1.0        1.0
        2     random neurons          3    same relation  36         1.0        1.0
        3     random neurons          3  other relations  36         1.0        1.0

        Erasing these three neurons does not take a single capital from the tiny BERT (on an encoder there is no
        held-out text perplexity row).
    """
    check_model(model)
    mode = check_choice(mode, "mode", ("zero", "unk"))
    if mode == "unk" and getattr(getattr(model, "tokenizer", None), "unk_token_id", None) is None:
        raise ValueError("mode='unk' needs a tokenizer with an unknown token; this one has none: use mode='zero'")
    seed = check_int(seed, "seed")
    batch_size = check_batch_size(batch_size)
    _check_text(text)
    relation_facts = check_sequence(relation_facts, "relation_facts", what="facts")
    other_facts = check_sequence(other_facts, "other_facts", what="facts")
    own = _prompts(model, relation_facts, None, "relation")
    if not own:
        raise ValueError("relation_facts is empty; pass the facts of the relation to erase")
    others = _prompts(model, other_facts, None, "other-relation")
    neuron_list = to_neurons(neurons, model, allow_empty=True)
    if not neuron_list:
        raise ValueError("no neurons to erase")
    if relation is None:
        relation = getattr(relation_facts[0], "relation", None)
    use_text = text is not False and not is_encoder(model)
    text_value = None if text is True or text is False else text
    control = random_neurons(model, neuron_list, seed=seed)
    sets = {"same relation": own, "other relations": others}
    before = {k: _accuracy_ppl(measure(model, v, batch_size=batch_size)) for k, v in sets.items() if v}
    text_before = text_perplexity(model, text_value) if use_text else float("nan")
    rows = []
    for label, group in (("knowledge neurons", neuron_list), ("random neurons", control)):
        with erase(model, group, mode=mode):
            for condition, prompts in sets.items():
                if not prompts:
                    continue
                acc_a, ppl_a, _ = _accuracy_ppl(measure(model, prompts, batch_size=batch_size))
                acc_b, ppl_b, _ = before[condition]
                rows.append(dict(relation=relation, mode=mode, neurons=label, n_neurons=len(group),
                                 condition=condition, n=len(prompts), acc_before=acc_b, acc_after=acc_a,
                                 ppl_before=ppl_b, ppl_after=ppl_a))  # fmt: skip
            if use_text:
                ppl_a = text_perplexity(model, text_value)
                rows.append(dict(relation=relation, mode=mode, neurons=label, n_neurons=len(group),
                                 condition="held-out text", n=1, acc_before=float("nan"), acc_after=float("nan"),
                                 ppl_before=text_before, ppl_after=ppl_a))  # fmt: skip
    frame = pd.DataFrame(rows)
    frame["ppl_change_%"] = 100 * (frame["ppl_after"] - frame["ppl_before"]) / frame["ppl_before"]
    return frame


@evaluating
@torch.inference_mode()
def random_active_neurons(model: Model, like: NeuronsLike, prompts: Sequence[Prompt], *, seed: int = 0) -> list[Neuron]:
    """The edit control: as many neurons per layer as ``like``, drawn among those *active* (mean activation > 0
    at the prompts' sites) and not in ``like``.

    Example:
        >>> from kn_lens.fixtures import tiny_bert
        >>> found = kn_lens.find_knowledge_neurons(bert, tiny_bert.train_prompts(tiny_bert.FACTS[0]), "Paris")
        >>> found.neurons
        [L1N253, L1N292, L1N990, L0N721, L1N1001]
        >>> random_active_neurons(bert, found.neurons, found.prompts, seed=0)
        [L0N618, L1N91, L1N100, L1N161, L1N1019]
    """
    check_model(model)
    neuron_list = to_neurons(like, model, allow_empty=True)
    seed = check_int(seed, "seed")
    prompts = to_prompts(model, prompts, what="prompts", allow_empty=True)
    if not prompts:
        raise ValueError("no prompts to find active neurons on")
    by_layer = group_by_layer(neuron_list)
    names = {hook_name(layer): layer for layer in by_layer}
    total = {layer: torch.zeros(model.cfg.d_mlp) for layer in by_layer}
    for p in prompts:
        _, cache = model.run_with_cache(p.tokens[None].to(model.cfg.device), names_filter=lambda n: n in names)
        for name, layer in names.items():
            total[layer] += cache[name][0, p.site].float().cpu()
    generator = torch.Generator().manual_seed(seed)
    taken = set(neuron_list)
    out: list[Neuron] = []
    for layer, indices in by_layer.items():
        active = [i for i in (total[layer] > 0).nonzero().flatten().tolist() if Neuron(layer, i) not in taken]
        if len(active) < len(indices):  # too few active ones: fill with any other neuron of the layer
            active += [i for i in range(model.cfg.d_mlp) if i not in active and Neuron(layer, i) not in taken]
        pick = torch.randperm(len(active), generator=generator)[: len(indices)]
        out.extend(Neuron(layer, active[int(i)]) for i in sorted(pick.tolist()))
    return out


def _texts(fact: Any, name: str = "fact") -> list[str]:
    """The prompt texts of a fact (``.prompts``) or of a list of prompts; one str is refused, not split."""
    prompts = fact.prompts if hasattr(fact, "prompts") else fact
    prompts = check_sequence(prompts, name, what="prompts (or a fact with .prompts)")
    for p in prompts:
        if not isinstance(p, str | Prompt):
            raise TypeError(f"{name} must hold prompt texts or Prompts, got {type(p).__name__} {p!r}")
    return [p.text if isinstance(p, Prompt) else p for p in prompts]


@evaluating
def edit_effects(
    model: Model,
    fact: Any,
    neurons: NeuronsLike | KnowledgeNeurons,
    new: TargetLike,
    *,
    old: TargetLike = None,
    heldout: Sequence[str] = (),
    neighbours: Sequence[Any] = (),
    seed: int = 0,
    text: str | bool | None = None,
    lambda1: float = 1.0,
    lambda2: float = 8.0,
    relation: str | None = None,
    batch_size: int = 32,
) -> pd.DataFrame:
    """Edit a fact (:func:`kn_lens.edit.edit_fact`) and score it, beside the same update on random active neurons.

    Args:
        model: the model (weights restored on exit).
        fact: the fact: a bag / ``FactPrompts`` / ``KnowledgeNeurons`` (``.prompts``) or a list of prompt texts.
        neurons: its knowledge neurons.
        new: the new answer.
        old: the answer to remove (default: the model's current top-1 prediction on the first prompt).
        heldout: paraphrases not used to find the neurons (paraphrase success).
        neighbours: other facts of the relation with their own answers (neighbourhood: do they keep them?).
        seed: seed of the random-active-neuron control.
        text: held-out text for fluency (None: :func:`heldout_text`; False: none; causal models only).
        lambda1, lambda2: the edit's weights (Dai et al.: 1 and 8).
        relation: the ``relation`` column (default ``fact.relation``).
        batch_size: prompts per forward pass.

    Returns:
        One row per neuron set (``"knowledge neurons"``, ``"random active neurons"``): ``success`` (share of
        the fact's prompts where ``new`` is top-1 after the edit; ``success_before`` before it),
        ``paraphrase_success``, ``new_prob_before/after``, ``neighbourhood_before/after`` (top-1 accuracy of the
        neighbours on their own answers), ``ppl_before/after`` (held-out text).

    Example:
        >>> from kn_lens.fixtures import tiny_bert
        >>> france = tiny_bert.FACTS[0]
        >>> found = kn_lens.find_knowledge_neurons(bert, tiny_bert.train_prompts(france), "Paris")
        >>> others = [(tiny_bert.train_prompts(f), f.answer) for f in tiny_bert.facts_of("capital")[1:5]]
        >>> edited = edit_effects(bert, found, found.neurons, "Rome", heldout=tiny_bert.heldout_prompts(france),
        ...                       neighbours=others)
        >>> edited.set_index("neurons")[["success", "new_prob_after", "neighbourhood_after"]].round(4)
                               success  new_prob_after  neighbourhood_after
        neurons
        knowledge neurons          0.0          0.0005                 0.25
        random active neurons      0.0          0.0063                 1.00

        The edit fails on this model (Rome stays improbable), yet the other capitals keep their own answer on only
        a quarter of their prompts, while the same update on random active neurons leaves them intact.
    """
    check_model(model)
    texts = _texts(fact, "fact")
    if not texts:
        raise ValueError("the fact has no prompts")
    neuron_list = to_neurons(neurons, model, allow_empty=True)
    if not neuron_list:
        raise ValueError("no neurons to edit")
    for name, value in (("lambda1", lambda1), ("lambda2", lambda2)):
        check_number(value, name)
    seed = check_int(seed, "seed")
    batch_size = check_batch_size(batch_size)
    _check_text(text)
    if new is None:
        raise ValueError("new is None; pass the new answer, e.g. ' Rome'")
    if old is not None:
        token_ids(model, old)  # a clear error now, not after the first scores
    if relation is None:
        relation = getattr(fact, "relation", None)
    new_prompts = [make_prompt(model, t, new) for t in texts]
    held = [make_prompt(model, t, new) for t in check_sequence(heldout, "heldout")]
    near = _prompts(model, check_sequence(neighbours, "neighbours", what="facts"), None, "neighbour")
    if old is None:  # the model's current answer, as the EleutherAI package does
        first = make_prompt(model, texts[0])
        with torch.inference_mode():
            logits = forward_logits(model, first.tokens[None].to(model.cfg.device))
        old = int(logits[0, first.site].argmax())
    use_text = text is not False and not is_encoder(model)
    text_value = None if text is True or text is False else text

    def score() -> dict[str, float]:
        m = measure(model, new_prompts, batch_size=batch_size)
        out = dict(success=float(m.top1.float().mean()), new_prob=float(m.prob.mean()))
        out["paraphrase_success"] = (
            float(measure(model, held, batch_size=batch_size).top1.float().mean()) if held else float("nan")
        )
        out["neighbourhood"] = (
            float(measure(model, near, batch_size=batch_size).top1.float().mean()) if near else float("nan")
        )
        out["ppl"] = text_perplexity(model, text_value) if use_text else float("nan")
        return out

    base = score()
    control = random_active_neurons(model, neuron_list, new_prompts, seed=seed)
    rows = []
    for label, group in (("knowledge neurons", neuron_list), ("random active neurons", control)):
        with edit_fact(model, group, old, new, lambda1=lambda1, lambda2=lambda2):
            after = score()
        rows.append(dict(relation=relation, neurons=label, n_neurons=len(group), old=_token_text(model, old),
                         new=_token_text(model, new), n=len(new_prompts), success_before=base["success"],
                         success=after["success"], paraphrase_success_before=base["paraphrase_success"],
                         paraphrase_success=after["paraphrase_success"], new_prob_before=base["new_prob"],
                         new_prob_after=after["new_prob"], neighbourhood_before=base["neighbourhood"],
                         neighbourhood_after=after["neighbourhood"], ppl_before=base["ppl"],
                         ppl_after=after["ppl"]))  # fmt: skip
    return pd.DataFrame(rows)


def _token_text(model: Model, token: TargetLike) -> str:
    if isinstance(token, str):
        return token
    ids = [token] if isinstance(token, int) else list(token or [])
    return model.tokenizer.decode(ids)


# --------------------------------------------------------------------------------------------------------------
# One fact, one record: the unit of a PARAREL sweep
# --------------------------------------------------------------------------------------------------------------

#: The selection rules of :func:`evaluate_fact` and of PARAREL sweeps (:mod:`kn_lens.sweeps`), one line each, for
#: tables and records (every record and table names the rule that made it): the three rules of
#: :mod:`kn_lens.neurons` (:data:`~kn_lens.neurons.RULES`) and two rules built on the per-fact one.
SELECTIONS: dict[str, str] = {
    **RULES,
    "fact-specific": "adaptive, then drop the neurons coarse on more than negative_share (25%) of n_negatives (4) "
    "prompts drawn (per fact) from other known facts of the same relation",
    "contrastive": "adaptive, on integrated gradients of logit(answer) - mean logit of the relation's other "
    "answers (the other known facts' answers)",
}
#: What the ``selection`` of records made before rules had names meant (``"dai"`` was the per-fact rule).
LEGACY_SELECTIONS = {"dai": "adaptive", "fact-specific": "fact-specific"}


def fact_seed(seed: int, key: str) -> int:
    """A per-fact seed from the run seed and the fact's id, the same in every process (unlike ``hash``)."""
    return zlib.crc32(f"{seed}:{key}".encode()) & 0x7FFFFFFF


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, float):
        return round(value, 7)
    if hasattr(value, "item"):
        return _plain(value.item())
    return value


def _fact_texts(fact: Any, name: str) -> tuple[list[str], Any]:
    """(prompt texts, target) of a fact-like object (a PARAREL bag, FactPrompts, KnowledgeNeurons), checked."""
    if isinstance(fact, str | bytes | Mapping | tuple | list) or not hasattr(fact, "prompts"):
        raise TypeError(
            f"{name} must be a fact with .prompts and .target (a PARAREL Bag, a FactPrompts), got "
            f"{type(fact).__name__}; wrap (prompts, target) as kn_lens.neurons.FactPrompts(prompts, target)"
        )
    if getattr(fact, "target", None) is None:
        raise ValueError(f"{name} has no target; give the fact its answer")
    prompts = fact.prompts
    if isinstance(prompts, str | Prompt):
        prompts = [prompts]
    texts = [p.text if isinstance(p, Prompt) else p for p in prompts]
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"{name}.prompts must be a non-empty list of prompt texts (or Prompts)")
    return texts, fact.target


def _facts(items: Any, name: str) -> list[Any]:
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Sequence | tuple):
        raise TypeError(f"{name} must be a list of facts (PARAREL bags, FactPrompts), got {type(items).__name__}")
    for item in items:
        _fact_texts(item, f"an item of {name}")
    return list(items)


def _count(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def fact_effects(
    model: Model,
    prompts: Sequence[str | Prompt],
    target: TargetLike,
    neurons: NeuronsLike,
    *,
    heldout: Sequence[str | Prompt] = (),
    same_relation: Sequence[Any] = (),
    other_relations: Sequence[Any] = (),
    seed: int = 0,
    relation: str | None = None,
    batch_size: int = 32,
    clean_cache: dict | None = None,
) -> dict[str, Any]:
    """The evaluation half of :func:`evaluate_fact`: one fact's neurons suppressed and enhanced beside every
    control (held-out paraphrases, same-relation facts, other-relation facts, random neurons drawn with ``seed``),
    as JSON-ready ``random_neurons``, ``effects`` (one dict per intervention x condition, as
    :func:`summarize_effects`) and ``specificity`` (per intervention).

    A fact without neurons has nothing to intervene on: no effects, no control (it is counted, and left out of
    effect means, by :func:`records_frame`). ``clean_cache``: see :func:`intervention_effects` (a sweep shares one
    between the rules of a fact).

    Example:
        >>> from kn_lens.datasets import pararel
        >>> bags = pararel.load(pararel_dir).bags(bert)
        >>> out = fact_effects(bert, bags[0].prompts[:3], bags[0].target, ["L1N253", "L1N292"],
        ...                    heldout=bags[0].prompts[3:], same_relation=bags[1:3], seed=1)
        >>> sorted({e["condition"] for e in out["effects"]})
        ['knowledge neurons', 'knowledge neurons (held-out)', 'random neurons', 'random neurons (held-out)',
         'same relation']
        >>> fact_effects(bert, bags[0].prompts[:3], bags[0].target, [])
        {'random_neurons': [], 'effects': [], 'specificity': {}}
    """
    neuron_list = to_neurons(neurons, model, allow_empty=True)
    if not neuron_list:
        return dict(random_neurons=[], effects=[], specificity={})
    effects = intervention_effects(
        model,
        neuron_list,
        list(prompts),
        target,
        heldout=list(heldout) or None,
        same_relation=list(same_relation) or None,
        unrelated=list(other_relations) or None,
        random_seeds=(seed,),
        relation=relation,
        batch_size=batch_size,
        clean_cache=clean_cache,
    )
    table = summarize_effects(effects)
    rows = [{k: _plain(v) for k, v in row.items() if k != "relation"} for row in table.to_dict("records")]
    spec = {}
    for name in dict.fromkeys(table["intervention"]):
        part = table[table["intervention"] == name].set_index("condition")["rel_change_%"]
        if "knowledge neurons" in part and "same relation" in part:
            spec[name] = _plain(specificity(float(part["knowledge neurons"]), float(part["same relation"])))
    control = random_neurons(model, neuron_list, seed=seed)
    return dict(random_neurons=[str(n) for n in control], effects=rows, specificity=spec)


def other_answers(model: Model, target: TargetLike, facts: Sequence[Any]) -> list[Any]:
    """The distinct answers of ``facts`` other than ``target`` (compared as token ids), in order: the wrong answers
    of the contrastive selection (:func:`kn_lens.scoring.mean_logit_diff`).

    Example:
        >>> from kn_lens.datasets import pararel
        >>> bags = pararel.load(pararel_dir).bags(bert, relations="P37")
        >>> [b.answer for b in bags[:4]], other_answers(bert, "Polish", bags[:4] + bags[:2])
        (['Portuguese', 'Polish', 'Swedish', 'Thai'], ['Portuguese', 'Swedish', 'Thai'])
    """
    own = tuple(token_ids(model, target))
    out: dict[tuple[int, ...], Any] = {}
    for fact in facts:
        ids = tuple(token_ids(model, fact.target))
        if ids != own:
            out.setdefault(ids, fact.target)
    return list(out.values())


def evaluate_fact(
    model: Model,
    fact: Any,
    *,
    same_relation: Sequence[Any] = (),
    other_relations: Sequence[Any] = (),
    n_heldout: int = 1,
    seed: int = 0,
    selection: str = "adaptive",
    n_negatives: int = 4,
    negative_share: float = 0.25,
    n_steps: int = 20,
    batch_size: int = 32,
    **find_kwargs: Any,
) -> dict[str, Any]:
    """Find one fact's knowledge neurons and measure suppress / enhance beside every control: one JSON record.

    The fact's last ``n_heldout`` prompts are held out of the attribution. The random-neuron control uses a
    per-fact seed (:func:`fact_seed`), so a record does not depend on which process computed it. Every argument is
    checked before the first forward pass. (A PARAREL sweep, :func:`kn_lens.sweeps.run_pararel`, does the same in
    phases: it attributes each fact once and runs every rule on the stored scores.)

    Args:
        model: the model.
        fact: a PARAREL :class:`~kn_lens.datasets.pararel.Bag` (or anything with ``prompts``, ``target``,
            ``relation``, ``uuid``, e.g. a :class:`~kn_lens.neurons.FactPrompts`).
        same_relation: other facts of the relation (control; negatives of ``"fact-specific"``; the other answers
            of ``"contrastive"``).
        other_relations: facts of other relations (Dai's "unrelated" control).
        n_heldout: prompts held out (0: none; kept only if at least 2 prompts remain).
        seed: the run seed.
        selection: the rule (:data:`SELECTIONS`): ``"adaptive"`` (default, kn_lens's per-fact rule), ``"dai"``
            (Dai et al.'s released rule, the fact alone as its relation), ``"eleuther"``, ``"fact-specific"``
            (adaptive, then neurons also coarse on more than ``negative_share`` of ``n_negatives`` prompts of
            ``same_relation`` facts are dropped) or ``"contrastive"`` (adaptive, on the integrated gradients of
            :func:`~kn_lens.scoring.mean_logit_diff` against the other answers among ``same_relation``).
        n_negatives, negative_share: see ``selection``.
        n_steps: integrated-gradient steps (only passed to integrated gradients, the default ``attribution``).
        batch_size: prompts per forward pass.
        **find_kwargs: more keywords for :func:`~kn_lens.neurons.find_knowledge_neurons` (``attribution``,
            ``layers``, ``method``, ...).

    Returns:
        A dict: ``rule, relation, uuid, subject, answer, target, n_prompts, n_heldout, neurons`` (``"L{l}N{i}"``),
        ``layers``, ``random_neurons``, ``effects`` (one dict per intervention x condition, as
        :func:`summarize_effects`; none for a fact without neurons), ``specificity`` (per intervention),
        ``completeness`` (each attributed prompt's completeness error, see
        :func:`~kn_lens.neurons.find_knowledge_neurons`), ``seconds``.

    Raises:
        TypeError: ``fact`` (or a control) is not a fact object (e.g. a tuple), an unknown keyword.
        ValueError: an unknown selection, a count out of range, ``"contrastive"`` without other answers.

    Example:
        >>> from kn_lens.datasets import pararel
        >>> bags = pararel.load(pararel_dir).bags(bert)          # the tiny BERT's facts, in PARAREL's format
        >>> capitals, others = bags[:12], bags[12:]
        >>> record = evaluate_fact(bert, capitals[0], same_relation=capitals[1:3], other_relations=others[:2],
        ...                        n_steps=5)
        >>> record["rule"], record["subject"], record["answer"], record["neurons"]
        ('adaptive', 'France', 'Paris', ['L1N253', 'L1N292', 'L1N990', 'L0N721', 'L1N1001'])
        >>> record["specificity"]
        {'suppress': 0.46, 'enhance': 1.56}
        >>> layer = lambda names: sorted(kn_lens.Neuron.parse(n).layer for n in names)
        >>> layer(record["random_neurons"]) == layer(record["neurons"])  # the control: as many per layer
        True
    """
    check_model(model)
    texts, target = _fact_texts(fact, "fact")
    same = _facts(same_relation, "same_relation")
    other = _facts(other_relations, "other_relations")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    n_heldout = _count(n_heldout, "n_heldout", 0)
    n_negatives = _count(n_negatives, "n_negatives", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if isinstance(negative_share, bool) or not isinstance(negative_share, int | float) or not 0 <= negative_share <= 1:
        raise ValueError(f"negative_share must be a number in [0, 1], got {negative_share!r}")
    batch_size = check_batch_size(batch_size)
    clash = sorted({"variant", "negatives", "negative_share", "scores"} & set(find_kwargs))
    if clash:
        raise TypeError(f"evaluate_fact chooses {clash} from selection=; pass selection= one of {list(SELECTIONS)}")
    kwargs: dict[str, Any] = dict(find_kwargs)
    if kwargs.get("attribution", "ig") == "ig":  # the other attributions take no steps
        kwargs["n_steps"] = _count(n_steps, "n_steps", 1)
    kwargs.setdefault("progress", False)  # one record of a sweep: the sweep's own bar counts the facts
    k = n_heldout if len(texts) - n_heldout >= 2 else 0
    train, held = texts[: len(texts) - k], texts[len(texts) - k :]
    uuid = str(getattr(fact, "uuid", "") or getattr(fact, "name", "") or target)
    local_seed = fact_seed(seed, uuid)
    extra: dict[str, Any] = {}
    if selection == "fact-specific":
        pool = [f for f in same if _fact_texts(f, "same_relation")[0]]
        rng = random.Random(local_seed)
        picked = rng.sample(pool, min(n_negatives, len(pool)))
        kwargs.update(
            negatives=[make_prompt(model, rng.choice(_fact_texts(f, "")[0]), f.target) for f in picked],
            negative_share=negative_share,
        )
    elif selection == "contrastive":
        if "objective" in kwargs:
            raise TypeError("selection='contrastive' sets the objective itself; leave out objective=")
        others = other_answers(model, target, same)
        if not others:
            raise ValueError("selection='contrastive' needs same_relation facts with other answers than this fact's")
        kwargs["objective"] = mean_logit_diff(model, target, others)
        extra["others"] = [o if isinstance(o, str) else str(o) for o in others]
    variant = selection if selection in RULES else "adaptive"
    start = time.perf_counter()
    kns = find_knowledge_neurons(model, train, target, variant=variant, **kwargs)
    attributed = time.perf_counter() - start
    relation = getattr(fact, "relation", None)
    measured = fact_effects(model, train, target, kns.neurons, heldout=held, same_relation=same,
                            other_relations=other, seed=local_seed, relation=relation,
                            batch_size=batch_size)  # fmt: skip
    return dict(
        rule=selection,
        relation=relation,
        uuid=uuid,
        subject=getattr(fact, "subject", None),
        answer=getattr(fact, "answer", None),
        target=target,
        n_prompts=len(train),
        n_heldout=len(held),
        neurons=[str(n) for n in kns.neurons],
        layers=[n.layer for n in kns.neurons],
        random_neurons=measured["random_neurons"],
        share_used=_plain(kns.params.get("share_used")),
        completeness=kns.params.get("completeness"),
        dropped={k: [str(n) for n in v] for k, v in kns.dropped.items()},
        n_steps=kwargs.get("n_steps"),
        effects=measured["effects"],
        specificity=measured["specificity"],
        **extra,
        seconds_attribution=round(attributed, 3),
        seconds=round(time.perf_counter() - start, 3),
    )


def _rule_of(record: Mapping[str, Any]) -> str:
    """The rule of a record; records made before rules had names carry ``selection`` (see LEGACY_SELECTIONS)."""
    if record.get("rule"):
        return str(record["rule"])
    return LEGACY_SELECTIONS.get(record.get("selection"), "unknown")


def records_frame(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Sweep records as one tidy frame: one row per (rule, fact, intervention, condition), with ``rule`` and
    ``relation`` columns.

    Records of unknown facts (``known`` false) carry no effects and add no rows. Nor do facts for which the
    selection found no knowledge neuron: there is nothing to intervene on, their "changes" are 0 by construction
    (and they have no random-neuron control), so counting them would dilute every mean. Tables built on this
    frame state how many facts they rest on; the report lists the facts without neurons.

    Example:
        >>> frame = records_frame(kn_lens.sweeps.read_records(run_dir))   # a finished run of the tiny BERT
        >>> frame.groupby("rule", sort=False).size()     # facts with neurons x 2 interventions x 6 conditions
        rule
        dai         72
        adaptive    72
        dtype: int64
        >>> frame.columns.tolist()
        ['rule', 'relation', 'uuid', 'n_neurons', 'intervention', 'condition', 'n', 'before', 'after', ...,
         'rel_change_%', 'rel_of_means_%']
    """
    records = check_sequence(records, "records", what="sweep records (kn_lens.sweeps.read_records(run))")
    rows = []
    for i, r in enumerate(records):
        _check_record(r, i)
        if not r.get("neurons"):
            continue
        for e in r.get("effects") or ():
            rows.append(dict(rule=_rule_of(r), relation=r.get("relation"), uuid=r.get("uuid"),
                             n_neurons=len(r.get("neurons") or ()), **e))  # fmt: skip
    frame = pd.DataFrame(rows, columns=None if rows else list(RECORD_FRAME_COLUMNS))
    return frame.astype({c: float for c in ("rel_change_%", "rel_of_means_%", "before", "after") if c in frame})


#: The columns :func:`records_frame` always has (an empty frame has exactly these).
RECORD_FRAME_COLUMNS = ("rule", "relation", "uuid", "n_neurons", "intervention", "condition", "n", "before",
                        "after", "rel_change_%", "rel_of_means_%")  # fmt: skip
_EFFECT_KEYS = ("intervention", "condition", "before", "after", "rel_change_%")


def _check_record(record: Any, i: int) -> None:
    """A fact record of :func:`evaluate_fact` (a sweep's ``records.jsonl`` line), or a clear error naming what
    is missing (records of another tool or schema)."""
    if not isinstance(record, Mapping):
        raise TypeError(f"record {i} is a {type(record).__name__}, not a fact record (a dict of evaluate_fact)")
    needed = ("relation", "uuid") if record.get("known") is False else ("relation", "uuid", "neurons", "effects")
    missing = [k for k in needed if k not in record]
    if missing:
        raise ValueError(
            f"record {i} lacks {missing}: not a kn_lens fact record (evaluate_fact / kn-lens evaluate pararel)"
        )
    effects = record.get("effects") or ()
    if not isinstance(effects, list | tuple) or not all(isinstance(e, Mapping) for e in effects):
        raise ValueError(f"record {i}: 'effects' must be a list of dicts (summarize_effects rows)")
    for e in effects:
        lacking = [k for k in _EFFECT_KEYS if k not in e]
        if lacking:
            raise ValueError(f"record {i}: an effect row lacks {lacking}; the record is of another schema")


CONDITION_ORDER = (
    "knowledge neurons",
    "knowledge neurons (held-out)",
    "same relation",
    "other facts",
    "random neurons",
    "random neurons (held-out)",
)


def relation_table(frame: pd.DataFrame, *, overall: bool = True) -> pd.DataFrame:
    """Per rule, relation (and ``"all"``), intervention and condition: facts, mean relative change (both
    definitions, averaged over facts), accuracy before/after, and the relation's specificity.

    Args:
        frame: :func:`records_frame`.
        overall: add rows with ``relation="all"``.

    Returns:
        Columns ``rule, relation, intervention, condition, facts, before, after, rel_change_%, rel_of_means_%,
        acc_before, acc_after, ppl_before, ppl_after, specificity`` (specificity from the own and same-relation
        mean changes); rules in the order they first appear, relations sorted. A frame without a ``rule`` column
        gives a table without one.

    Example:
        >>> table = relation_table(records_frame(kn_lens.sweeps.read_records(run_dir)))
        >>> own = table.query("intervention == 'suppress' and relation == 'all' and condition == 'knowledge neurons'")
        >>> own[["rule", "facts", "rel_change_%", "specificity"]].round(2)
                rule  facts  rel_change_%  specificity
        30       dai      6        -39.41         0.63
        66  adaptive      6        -24.81         0.68
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be the DataFrame of records_frame(records), got {type(frame).__name__}")
    by_rule = "rule" in frame.columns
    if frame.empty:
        return pd.DataFrame(columns=["rule", "relation", "intervention", "condition", "facts"])
    missing = [c for c in ("relation", "intervention", "condition", "rel_change_%") if c not in frame.columns]
    if missing:
        raise ValueError(f"the frame lacks columns {missing}; pass records_frame(records)")
    parts = [frame] + ([frame.assign(relation="all")] if overall else [])
    data = pd.concat(parts, ignore_index=True)
    keys = ["rule"] * by_rule + ["relation", "intervention", "condition"]
    names = ("before", "after", "rel_change_%", "rel_of_means_%", "acc_before", "acc_after", "ppl_before", "ppl_after")
    metrics = [c for c in names if c in data]
    out = data.groupby(keys, sort=False)[metrics].mean().reset_index()
    out.insert(len(keys), "facts", data.groupby(keys, sort=False).size().to_numpy())
    spec = {}
    group = keys[:-1]
    for key, part in out.groupby(group, sort=False):
        values = part.set_index("condition")["rel_change_%"]
        own, same = values.get("knowledge neurons"), values.get("same relation")
        spec[key] = specificity(own, same) if own is not None and same is not None else float("nan")
    out["specificity"] = [spec[tuple(row)] for row in out[group].itertuples(index=False)]
    order = {c: i for i, c in enumerate(CONDITION_ORDER)}
    out["_order"] = out["condition"].map(lambda c: order.get(c, len(order)))
    sort = ["relation", "intervention", "_order"]
    if by_rule:
        rules = {r: i for i, r in enumerate(dict.fromkeys(frame["rule"]))}
        out["_rule"] = out["rule"].map(rules)
        sort = ["_rule", *sort]
    out = out.sort_values(sort, kind="stable").drop(columns=["_order", "_rule"], errors="ignore")
    return out.reset_index(drop=True)


def rule_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per rule (and intervention) from a :func:`relation_table`: the ``"all"`` relation's mean change for
    the own prompts, held-out paraphrases, same relation, other relations and random neurons, the specificity,
    and ``own/same`` (the own change over the same-relation change: 3 means the neurons move their own fact three
    times more than the relation's other facts).

    Example:
        >>> summary = rule_summary(relation_table(records_frame(kn_lens.sweeps.read_records(run_dir))))
        >>> summary[["rule", "intervention", "facts", "own", "same relation", "random", "own/same"]].round(2)
               rule intervention  facts    own  same relation  random  own/same
        0       dai     suppress      6 -39.41         -14.49    0.04      2.72
        1       dai      enhance      6 -33.94         -18.09   -0.34      1.88
        2  adaptive     suppress      6 -24.81          -7.96   -0.23      3.12
        3  adaptive      enhance      6 -24.18         -12.99    0.07      1.86
    """
    missing = [c for c in ("relation", "intervention", "condition", "rel_change_%") if c not in table.columns]
    if missing:
        raise ValueError(f"the table lacks columns {missing}; pass the output of relation_table")
    names = {"knowledge neurons": "own", "knowledge neurons (held-out)": "held-out", "same relation": "same relation",
             "other facts": "other relations", "random neurons": "random"}  # fmt: skip
    data = table[table["relation"] == "all"]
    if "rule" not in data.columns:
        data = data.assign(rule="")
    rank = {name: i for i, name in enumerate(DAI_INTERVENTIONS)}  # per rule: suppress, enhance, then others
    rules = {name: i for i, name in enumerate(dict.fromkeys(data["rule"]))}
    data = data.assign(_r=data["rule"].map(rules), _i=data["intervention"].map(lambda x: rank.get(x, len(rank))))
    data = data.sort_values(["_r", "_i"], kind="stable")
    rows = []
    for (rule, intervention), part in data.groupby(["rule", "intervention"], sort=False):
        values = part.set_index("condition")
        row: dict[str, Any] = dict(rule=rule, intervention=intervention)
        row["facts"] = int(values["facts"].get("knowledge neurons", 0)) if "facts" in values else None
        for condition, label in names.items():
            row[label] = float(values["rel_change_%"][condition]) if condition in values.index else float("nan")
        row["specificity"] = float(values["specificity"].iloc[0]) if "specificity" in values else float("nan")
        own, same = row["own"], row["same relation"]
        row["own/same"] = own / same if same and math.isfinite(same) and math.isfinite(own) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------
# The TransformerLens tutorial's table
# --------------------------------------------------------------------------------------------------------------


def compare(
    model: Model,
    prompt: str | Prompt,
    candidates: Sequence[TargetLike],
    interventions: Mapping[str, Any] | None = None,
    *,
    objective: Literal["prob", "logprob", "logit"] = "prob",
) -> pd.DataFrame:
    """Probabilities of candidate answers for one prompt, without and with each intervention, in one table.

    Args:
        model: the model.
        prompt: the prompt (encoders: with its ``[MASK]``), text or a Prompt.
        candidates: the candidate answers (``["these", "this"]``, token ids, multi-token strings).
        interventions: name -> hooks: a ``[(hook_name, fn)]`` list, an :class:`~kn_lens.hooks.Intervention`
            (site positions resolved per candidate) or a per-batch builder.
        objective: ``"prob"``, ``"logprob"`` or ``"logit"`` of each candidate.

    Returns:
        A DataFrame indexed by candidate, with a ``clean`` column and one column per intervention.

    Example:
        >>> prompt = "Raymond is selling [MASK] sketches."
        >>> found = kn_lens.find_knowledge_neurons(bert, [prompt], "these")
        >>> compare(bert, prompt, ["these", "this"],
        ...         {"found x0": kn_lens.hooks.Intervention("scale", found.neurons, 0.0)}).round(4)
                    clean  found x0
        candidate
        these      0.3005    0.2746
        this       0.0006    0.0033
    """
    check_model(model)
    text = prompt.text if isinstance(prompt, Prompt) else prompt
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a str or a Prompt, got {type(prompt).__name__}")
    if isinstance(candidates, str | int) or not candidates:
        raise ValueError("candidates must be a non-empty list of answers, e.g. [' Paris', ' Lyon']")
    rows = [make_prompt(model, text, c) for c in candidates]
    columns = {"clean": target_scores(model, rows, objective=objective)}
    for name, hooks in (interventions or {}).items():
        if not (callable(hooks) or isinstance(hooks, list | tuple)):
            raise TypeError(f"intervention {name!r} must be a hook list, an Intervention or a builder")
        columns[name] = target_scores(model, rows, objective=objective, fwd_hooks=hooks)
    index = pd.Index([r.target for r in rows], name="candidate")
    return pd.DataFrame({k: v.numpy() for k, v in columns.items()}, index=index)


# --------------------------------------------------------------------------------------------------------------
# The demo: the main job in one call
# --------------------------------------------------------------------------------------------------------------

DEMO_PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "The capital city of France is",
    "The capital of France is the city of",
    "The largest city and capital of France is",
)
DEMO_TARGET = " Paris"
DEMO_HELDOUT: tuple[str, ...] = (
    "The capital of France is called",
    "What is the capital of France? The capital is",
)
DEMO_UNRELATED: tuple[tuple[tuple[str, ...], str], ...] = (
    (("The official language of Spain is", "People in Spain speak"), " Spanish"),
    (("The largest planet in the solar system is",), " Jupiter"),
)


def demo_table(
    model: Model,
    prompts: Sequence[str] | None = None,
    target: str | None = None,
    *,
    heldout: Sequence[str] | None = None,
    unrelated: Any = None,
    n_steps: int = 20,
    seed: int = 0,
    progress: bool = True,
    find: Callable[..., KnowledgeNeurons] | None = None,
    **find_kwargs: Any,
) -> pd.DataFrame:
    """The main job: find a fact's knowledge neurons, suppress (x0) and enhance (x2) them, beside controls.

    With no arguments it uses "The capital of France is" -> " Paris" with three more paraphrases (and two
    held-out ones) on the given model, with a random-neuron control (same count per layer, ``seed``) and
    unrelated facts.

    Args:
        model: the model (e.g. ``kn_lens.load_model()``).
        prompts: the fact's paraphrases (default: :data:`DEMO_PROMPTS`).
        target: the answer (default ``" Paris"``).
        heldout: held-out paraphrases (default :data:`DEMO_HELDOUT` when the default fact is used).
        unrelated: other facts (default :data:`DEMO_UNRELATED` for the default fact).
        n_steps: integrated-gradients steps.
        seed: random-control seed.
        progress: progress bars.
        find: the selection function (default :func:`~kn_lens.neurons.find_knowledge_neurons`).
        **find_kwargs: more keywords for the selection (``threshold``, ``layers``, ...).

    Returns:
        One row per intervention and condition: ``neurons`` (the neurons used), ``n``, mean ``before``/
        ``after`` probability of the correct answer, ``rel_change_%`` and ``logodds_change``. The found
        knowledge neurons are in ``table.attrs["knowledge_neurons"]``, the per-prompt frame in
        ``table.attrs["effects"]``.

    Example:
        ``demo_table(kn_lens.load_model())`` runs the default fact on SmolLM2 (about half a minute on a CPU);
        here a fact of the tiny BERT:

        >>> from kn_lens.fixtures import tiny_bert
        >>> france = tiny_bert.FACTS[0]
        >>> table = demo_table(bert, tiny_bert.train_prompts(france), "Paris", n_steps=5, progress=False,
        ...                    heldout=tiny_bert.heldout_prompts(france))
        >>> table[["intervention", "condition", "n", "rel_change_%"]].round(1)
          intervention                     condition  n  rel_change_%
        0     suppress             knowledge neurons  3         -15.8
        1     suppress  knowledge neurons (held-out)  1         -18.1
        2     suppress                random neurons  3          -0.0
        3     suppress     random neurons (held-out)  1           0.3
        4      enhance             knowledge neurons  3           2.4
        5      enhance  knowledge neurons (held-out)  1           2.9
        6      enhance                random neurons  3          -0.2
        7      enhance     random neurons (held-out)  1          -0.7
    """
    check_model(model)
    default_fact = prompts is None
    prompts = list(DEMO_PROMPTS if prompts is None else prompts)
    target = DEMO_TARGET if target is None else target
    if heldout is None and default_fact:
        heldout = list(DEMO_HELDOUT)
    if unrelated is None and default_fact:
        unrelated = list(DEMO_UNRELATED)
    find = find or find_knowledge_neurons
    kns = find(model, prompts, target, n_steps=n_steps, progress=progress, **find_kwargs)
    effects = intervention_effects(model, kns, heldout=heldout, unrelated=unrelated, random_seeds=(seed,))
    control = random_neurons(model, kns.neurons, seed=seed) if kns.neurons else []
    table = summarize_effects(effects)
    names = {
        "knowledge neurons": kns.neurons,
        "knowledge neurons (held-out)": kns.neurons,
        "other facts": kns.neurons,
        "random neurons": control,
        "random neurons (held-out)": control,
    }
    table.insert(2, "neurons", [" ".join(str(n) for n in names[c]) or "(none)" for c in table["condition"]])
    table.attrs["knowledge_neurons"] = kns
    table.attrs["effects"] = effects
    return table


__all__ = [
    "CONDITION_ORDER",
    "DAI_INTERVENTIONS",
    "EFFECT_COLUMNS",
    "LEGACY_SELECTIONS",
    "SELECTIONS",
    "Measured",
    "compare",
    "demo_table",
    "edit_effects",
    "enhance",
    "erase_relation",
    "evaluate_fact",
    "fact_effects",
    "fact_seed",
    "heldout_text",
    "intervention_effects",
    "measure",
    "other_answers",
    "other_relation_facts",
    "random_active_neurons",
    "records_frame",
    "relation_neurons",
    "relation_table",
    "rule_summary",
    "specificity",
    "summarize_effects",
    "suppress",
    "text_perplexity",
]
