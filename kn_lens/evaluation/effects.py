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

Relation erasure (:func:`~kn_lens.evaluation.edits.erase_relation`) and fact editing
(:func:`~kn_lens.evaluation.edits.edit_effects`) follow Dai et al. sec. 5, each with a random-neuron control and,
for causal models, the perplexity of a held-out text (:func:`~kn_lens.evaluation.measure.text_perplexity`).
:func:`~kn_lens.evaluation.records.evaluate_fact` bundles it all into one JSON-ready record per fact (the unit of
:mod:`kn_lens.evaluation.sweeps`), and :func:`~kn_lens.evaluation.records.records_frame` /
:func:`~kn_lens.evaluation.records.relation_table` turn records into tidy tables with a ``relation`` column.

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
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from kn_lens._typing import Model, Neuron, check_model
from kn_lens.evaluation.measure import measure
from kn_lens.hooks import Intervention
from kn_lens.inputs import (
    NeuronsLike,
    check_batch_size,
    check_int,
    check_number,
    check_positions,
    check_sequence,
    to_neurons,
    to_prompts,
)
from kn_lens.neurons import KnowledgeNeurons, random_neurons
from kn_lens.prompts import Prompt, TargetLike, make_prompt, one_target
from kn_lens.scoring import log_odds, relative_change, target_scores

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


def _prompts(model: Model, prompts: Any, target: TargetLike, what: str) -> list[Prompt]:
    """Prompts with targets from texts + target, Prompts, or (texts, target) / KnowledgeNeurons groups."""
    return to_prompts(model, prompts, target, need_target=True, what=f"{what} prompts", allow_empty=True)


def _check_factor(name: str, factor: float) -> float:
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not math.isfinite(factor):
        raise ValueError(f"the factor of {name!r} must be a finite number, got {factor!r}")
    return float(factor)


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
            lo_before, lo_after = log_odds(before), log_odds(after)
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
                        rel_change=relative_change(b, a),
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
    out["rel_of_means_%"] = 100 * relative_change(out["before"], out["after"])
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


__all__ = [
    "DAI_INTERVENTIONS",
    "EFFECT_COLUMNS",
    "compare",
    "enhance",
    "intervention_effects",
    "specificity",
    "summarize_effects",
    "suppress",
]
