"""From attribution scores to knowledge neurons: three named selection rules, one of them Dai et al.'s own code.

Context:
    Dai et al. (ACL 2022) call a neuron a *knowledge neuron* of a fact when it is strongly attributed (integrated
    gradients of the answer's probability, :mod:`kn_lens.attribution`) on most paraphrases of the fact. Every rule
    here has the same two steps, and differs in the details that decide which neurons come out:

    1. **coarse**: for each prompt, keep the neurons whose score reaches ``threshold x`` that prompt's largest
       score (over every attributed layer);
    2. **refined**: keep the neurons coarse on a large enough share of the fact's prompts, the share adapted
       until the number of neurons lands in a range.

    The rules (``variant=``), each named for what it is:

    * ``"dai"``: **the released code** of Dai et al. (github.com/Hunter-DDM/knowledge-neurons,
      ``src/2_get_kn.py``), exactly. Coarse: ``score >= 0.2 x max``. Refined: coarse on at least
      ``max(p x n_prompts, 3)`` prompts. ``p`` starts at 0.7 and moves by 0.05 (at most 6 tries, so at most 5
      moves reach the result, in the same floating-point steps as the released loop) until the **average** number
      of neurons per fact over the whole *relation* is between 2 and 5; no per-fact cap, so one fact can keep 60
      neurons and another none. The neurons found for at least 10% of a relation's facts (``kn_rel``) are
      reported (``params["relation_neurons"]``), not removed. One fact on its own is its own relation.
      A prompt whose largest score is exactly 0 makes every neuron scoring 0 a candidate there (as the released
      code does); a prompt with only negative scores has no candidate.
    * ``"adaptive"`` (default): **kn_lens's per-fact rule**. Dai et al.'s thresholds (``score > 0.2 x max``, coarse
      on more than 70% of the prompts), but the share adapts *per fact* to keep 2-5 neurons, and when no share
      lands in range (few prompts) the closest non-empty set is kept, cut to its 5 strongest neurons
      (``fallback="closest"``). It works with 2 prompts, where the released rule's minimum of 3 prompts selects
      nothing. A prompt without a positive score has no candidate (a neuron must support the answer).
    * ``"eleuther"``: the EleutherAI ``knowledge-neurons`` package (0.0.2): ``score > 0.3 x max``, coarse on more
      than 50% of the prompts, no adaptation, IG over ``linspace(0, 1, n)``.

    Extra filters, never part of a rule's name: **negatives** (neurons also coarse on given unrelated prompts, as
    in the EleutherAI package's contrastive option) and the **relation filter** of
    :func:`find_knowledge_neurons_many` (``relation_share``: neurons selected for more than 10% of a relation's
    facts carry the relation, "capital of", rather than the fact, and are removed; on by default for
    ``"adaptive"`` and ``"eleuther"``, off for ``"dai"``, whose released code only reports them).

Intuition:
    A single prompt's top neurons mix the fact with the prompt's wording; requiring agreement across paraphrases
    keeps what the paraphrases share, the fact. Adapting the share per relation (released code) keeps the
    relation's average in 2-5 but lets individual facts vary widely; adapting per fact (``"adaptive"``) gives every
    fact a handful of neurons.

Caveats:
    * The selection is only as good as the attribution (steps, objective, baseline) and the paraphrases.
    * Dai et al.'s released ``custom_bert.py`` hard-codes LayerNorm ``eps=1e-5`` (bert-base-cased's config says
      1e-12): its scores, and so its neurons, are those of a slightly different model than bert-base-cased. Same
      weights and scores in, ``variant="dai"`` gives the released code's neurons.
    * Selection is deterministic for given scores; :func:`random_neurons` (the control) takes a ``seed``.
    * :class:`Candidates` keeps a fact's attribution sparse (every neuron reaching ``0.1 x max`` on some prompt,
      with its score on every prompt, like the released code's stored triplets), enough to re-run any of these
      rules later without attributing again (:func:`select`).

Example:
    >>> paraphrases = ["The capital of France is", "France's capital city is", "The French capital is"]
    >>> kns = find_knowledge_neurons(model, paraphrases, " Paris")      # kn_lens's per-fact rule ("adaptive")
    >>> kns.neurons
    [L29N1066, L29N1285, L29N778, L29N238, L21N522]
    >>> kns.to_dataframe()[["neuron", "n_prompts", "mean_score"]]
         neuron  n_prompts  mean_score
    0  L29N1066          3    0.0977
    1  L29N1285          3    0.0760
    2   L29N778          3    0.0744
    3   L29N238          3    0.0485
    4   L21N522          3    0.0477
    >>> dai = find_knowledge_neurons(model, paraphrases, " Paris", variant="dai", scores=kns.scores)
    >>> len(dai.neurons)    # the released rule: 6 neurons coarse on all 3 prompts, and no cap on the count
    6
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from kn_lens._progress import progress_bar
from kn_lens._typing import Model, Neuron, check_model, group_by_layer
from kn_lens.inputs import NeuronsLike, check_number, to_fact, to_layers, to_neurons, to_prompts
from kn_lens.knowledge import Candidates, KnowledgeNeurons, select
from kn_lens.prompts import Prompt, TargetLike, one_target
from kn_lens.selection import (
    _UNSET,
    ADAPTIVE_MAX,
    ADAPTIVE_STEP,
    CANDIDATE_FLOOR,
    DAI_MIN_PROMPTS,
    DAI_RELATION_SHARE,
    RULES,
    VARIANTS,
    Refined,
    RelationRefined,
    Rule,
    Selected,
    Variant,
    _check_finite,
    coarse_neurons,
    drop_shared,
    refine,
    refine_facts,
    refine_relation,
    top_neurons,
)

# --------------------------------------------------------------------------------------------------------------
# Finding knowledge neurons
# --------------------------------------------------------------------------------------------------------------


def _fact_prompts(model: Model, prompts: Any, target: TargetLike) -> tuple[list[Prompt], str]:
    if target is not None and not isinstance(target, str | int) and not _is_id_list(target):
        raise ValueError(
            "one fact has one target: pass a single target (e.g. ' Paris'); for several facts use "
            "find_knowledge_neurons_many"
        )
    if not isinstance(prompts, str | Prompt) and not isinstance(prompts, Iterable):
        raise TypeError("prompts must be a list of prompt texts (or kn_lens Prompts)")
    made = to_prompts(model, prompts, one_target(target), need_target=True)
    ids = {p.target_ids for p in made}
    if len(ids) > 1:
        shown = sorted({p.target for p in made})
        raise ValueError(
            f"the prompts have different targets {shown}; knowledge neurons are found for one fact (one answer) "
            "at a time; use find_knowledge_neurons_many for several facts"
        )
    return made, made[0].target


def _is_id_list(target: Any) -> bool:
    return isinstance(target, list | tuple) and bool(target) and all(isinstance(t, int) for t in target)


def _negative_prompts(model: Model, negatives: Any, target: TargetLike, fallback: str) -> list[Prompt]:
    """Negatives given as text take ``target`` (else the fact's own answer); Prompts may keep their own."""
    made = to_prompts(model, negatives, None, what="negatives", allow_empty=True)
    answer = target if target is not None else fallback
    return [p if p.target_ids else p.with_target(model, answer) for p in made]


def find_knowledge_neurons(
    model: Model,
    prompts: Sequence[str | Prompt] | str | Prompt,
    target: TargetLike = None,
    *,
    threshold: float = _UNSET,
    share: float = _UNSET,
    adaptive: tuple[int, int] | None = _UNSET,
    attribution: str = "ig",
    variant: Variant = "adaptive",
    negatives: Sequence[str | Prompt] | None = None,
    negative_share: float = 0.0,
    fallback: Literal["closest", "none"] = "closest",
    layers: int | Sequence[int] | None = None,
    scores: Float[Tensor, "prompt layer d_mlp"] | None = None,
    progress: bool = True,
    **attribution_kwargs: Any,
) -> KnowledgeNeurons:
    """Find the knowledge neurons of one fact from its paraphrased prompts.

    The rule is named by ``variant`` (see the module docstring): ``"adaptive"`` (default, kn_lens's per-fact
    rule), ``"dai"`` (Dai et al.'s released code, exactly; the fact is its own relation, so its own count must land
    in 2-5; for a relation's facts together use :func:`find_knowledge_neurons_many`) or ``"eleuther"`` (the
    EleutherAI package). ``kns.params["rule"]`` says which rule made the result.

    Args:
        model: a ``HookedEncoder`` (prompts with ``[MASK]``), ``HookedTransformer`` (the target continues) or
            ``TransformerBridge``.
        prompts: the fact's paraphrases (texts or Prompts); all must share one target.
        target: the answer, e.g. ``" Paris"`` (None if the Prompts carry it).
        threshold: coarse threshold as a fraction of each prompt's top score (adaptive and dai 0.2, eleuther 0.3).
        share: the share of prompts a refined neuron must be coarse on (adaptive and dai 0.7, eleuther 0.5).
        adaptive: ``(min, max)`` neurons: ``share`` moves by 0.05 (at most 6 times) to land in range; per fact
            for adaptive, per relation (average) for dai; None: a fixed share (eleuther).
        attribution: ``"ig"`` (integrated gradients), ``"grad_x_act"``, ``"attribution_patching"`` or
            ``"ablation"`` (see :func:`kn_lens.attribution.attribute`).
        variant: ``"adaptive"``, ``"dai"`` or ``"eleuther"``: the rule, its defaults for ``threshold``/``share``/
            ``adaptive`` and its IG rule (``method="eleuther"``: ``linspace(0, 1, n)``). Explicit arguments win.
        negatives: unrelated prompts (texts use ``target``; Prompts may carry their own): neurons coarse on more
            than ``negative_share`` of them are dropped (a filter of kn_lens and EleutherAI, not of Dai et al.).
        negative_share: see ``negatives`` (0 = dropped if coarse on any negative prompt).
        fallback: adaptive rule only, when no share lands in range (few prompts): ``"closest"`` keeps the closest
            non-empty set, cut to the strongest ``max`` neurons; ``"none"`` keeps the rule's result (see
            :func:`refine`). ``params["fallback_taken"]`` says what happened.
        layers: layers to attribute (None = all). The coarse step compares with the largest score over these.
        scores: precomputed ``[prompt, layer, d_mlp]`` scores (rows = ``layers``) to skip the attribution.
        progress: progress bar over prompts.
        **attribution_kwargs: passed to the attribution (``n_steps``, ``method``, ``objective``,
            ``internal_batch_size``, ...).

    Returns:
        A :class:`KnowledgeNeurons` result.

    Raises:
        ValueError: empty prompt list, prompts with different targets, no target, parameters out of range, a
            layer out of range, scores of the wrong shape or not finite.

    Example:
        >>> kns = find_knowledge_neurons(model, ["The capital of France is", "France's capital is"], " Paris")
        >>> kn_lens.target_scores(model, prompts, fwd_hooks=kn_lens.hooks.Intervention("scale", kns, 0.0))
        tensor([...])
    """
    check_model(model)
    rule = Rule.of(variant, threshold, share, adaptive, fallback)
    check_number(negative_share, "negative_share", low=0, high=1)
    _check_attribution(attribution)
    fact_prompts, target_text = _fact_prompts(model, prompts, target)
    negative_prompts = _negative_prompts(model, negatives, target, target_text)
    layer_list = to_layers(model, layers)
    kwargs = dict(attribution_kwargs)
    if attribution == "ig":
        kwargs.setdefault("method", VARIANTS[rule.variant]["method"])
    completeness = None
    if scores is None:
        scores, completeness = _attribute(model, fact_prompts, attribution, layer_list, progress, kwargs)
    else:
        expected = (len(fact_prompts), len(layer_list), model.cfg.d_mlp)
        if not isinstance(scores, Tensor) or tuple(scores.shape) != expected:
            shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(f"scores have shape {shape}; expected [prompt, layer, d_mlp] = {expected}")
        _check_finite(scores)
        scores = scores.detach().float().cpu()

    coarse = [coarse_neurons(s, rule.threshold, layers=layer_list, inclusive=rule.inclusive) for s in scores]
    negative_coarse: list[list[Neuron]] = []
    if negative_prompts:
        negative_scores = _attribute(model, negative_prompts, attribution, layer_list, progress, kwargs)[0]
        negative_coarse = [
            coarse_neurons(s, rule.threshold, layers=layer_list, inclusive=rule.inclusive) for s in negative_scores
        ]
    params = dict(
        variant=rule.variant,
        rule=rule.describe(),
        threshold=rule.threshold,
        share=rule.share,
        adaptive=rule.adaptive,
        fallback=rule.fallback,
        attribution=attribution,
        attribution_kwargs=kwargs,
        negatives=[p.text for p in negative_prompts],
        negative_share=negative_share,
    )
    if completeness is not None:
        params["completeness"] = completeness
    result = KnowledgeNeurons(
        neurons=[],
        prompts=fact_prompts,
        target=target_text,
        scores=scores,
        layers=layer_list,
        coarse=coarse,
        params=params,
        negative_coarse=negative_coarse,
    )
    (selected,) = refine_facts([coarse], [_strength(result)], [None], rule)
    return _with_selection(result, selected)


def _strength(result: KnowledgeNeurons) -> dict[Neuron, float]:
    """Each coarse neuron's mean score over the prompts (orders neurons with equal counts)."""
    means = result.scores.mean(0)
    rows = {layer: i for i, layer in enumerate(result.layers)}
    return {n: float(means[rows[n.layer], n.index]) for c in result.coarse for n in c}


def _with_selection(result: KnowledgeNeurons, selected: Selected) -> KnowledgeNeurons:
    """``result`` with the refined neurons of ``selected``, the negatives filter applied, and the params of both."""
    neurons, dropped = list(selected.neurons), dict(result.dropped)
    if result.params.get("negatives"):
        neurons, dropped["negatives"] = drop_shared(neurons, result.negative_coarse, result.params["negative_share"])
    params = dict(
        result.params,
        share_used=selected.share,
        adjustments=selected.adjustments,
        fallback_taken=selected.fallback,
    )
    if selected.relation_average is not None:
        params.update(relation_average=selected.relation_average, relation_neurons=list(selected.relation_neurons))
    return dataclasses.replace(result, neurons=neurons, dropped=dropped, params=params)


def _attribute(
    model: Model, prompts: list[Prompt], attribution: str, layers: list[int], progress: bool, kwargs: dict
) -> tuple[Float[Tensor, "prompt layer d_mlp"], list[float] | None]:
    """Scores ``[prompt, layer, d_mlp]``, and for integrated gradients each prompt's completeness error.

    The completeness error of a prompt pools its layers: ``sum |delta_L| / sum |F(clean) - F(baseline_L)|``, where
    ``delta_L`` is how far layer ``L``'s scores miss the change they should add up to (0 for an exact integral; the
    one extra row per layer that measures it costs little).
    """
    from kn_lens.attribution import attribute_many

    _check_attribution(attribution)
    layer_arg = None if layers == list(range(model.cfg.n_layers)) else layers
    if attribution != "ig":
        scores = attribute_many(model, prompts, attribution=attribution, layers=layer_arg, progress=progress, **kwargs)
        return scores.detach().float().cpu(), None
    kwargs = {**kwargs, "return_convergence_delta": True}
    scores, deltas = attribute_many(model, prompts, attribution="ig", layers=layer_arg, progress=progress, **kwargs)
    scores = scores.detach().float().cpu()
    deltas = deltas.detach().double().cpu()
    change = scores.double().sum(-1) - deltas  # F(clean) - F(baseline), per prompt and layer
    error = deltas.abs().sum(-1) / change.abs().sum(-1).clamp_min(1e-12)
    return scores, [round(float(e), 6) for e in error]


def _check_attribution(attribution: str) -> None:
    from kn_lens.attribution import ATTRIBUTIONS

    if attribution not in ATTRIBUTIONS:
        raise ValueError(f"unknown attribution {attribution!r}; choose one of {', '.join(ATTRIBUTIONS)}")


# --------------------------------------------------------------------------------------------------------------
# Many facts
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FactPrompts:
    """One fact to find knowledge neurons for: its paraphrases, its answer, and (optionally) its relation.

    Example:
        >>> fact = FactPrompts(["The capital of France is", "France's capital is"], " Paris", relation="capital")
        >>> fact.prompts, fact.target, fact.relation
        (('The capital of France is', "France's capital is"), ' Paris', 'capital')
    """

    prompts: tuple[str | Prompt, ...]
    target: TargetLike
    relation: str | None = None
    name: str = ""

    def __post_init__(self) -> None:
        prompts = (self.prompts,) if isinstance(self.prompts, str | Prompt) else tuple(self.prompts)
        object.__setattr__(self, "prompts", prompts)


def _as_fact(item: Any) -> FactPrompts:
    if isinstance(item, FactPrompts):
        return item
    fact = to_fact(item, "each fact", need_target=False)
    return FactPrompts(tuple(fact.prompts), fact.target, fact.relation, fact.name)


def find_knowledge_neurons_many(
    model: Model,
    facts: Sequence[FactPrompts | tuple | Mapping[str, Any]],
    *,
    variant: Variant = "adaptive",
    relation_share: float | None = _UNSET,
    progress: bool = True,
    **kwargs: Any,
) -> list[KnowledgeNeurons]:
    """:func:`find_knowledge_neurons` for many facts; the released rule adapted per relation; the relation filter.

    With ``variant="dai"`` (Dai et al.'s released code) the share is adapted over each relation's facts together
    (facts without a ``relation`` form one relation), as ``src/2_get_kn.py`` does: every fact's neurons, plus the
    relation's average count and its relation neurons (``params["relation_average"]``,
    ``params["relation_neurons"]``: found for at least 10% of its facts; reported, not removed). Other variants
    select each fact on its own.

    Relation filter (kn_lens's step, not the released code's; default on for ``"adaptive"`` and ``"eleuther"``,
    off for ``"dai"``): a neuron selected for more than ``relation_share`` of the facts of its relation (and for at
    least 2 of them) encodes the relation rather than the fact, and is dropped from every fact of that relation
    (recorded in ``result.dropped["relation"]``).

    Args:
        model: the model.
        facts: :class:`FactPrompts`, ``(prompts, target[, relation])`` tuples, or mappings with those keys.
        variant: the selection rule (``"adaptive"``, ``"dai"``, ``"eleuther"``).
        relation_share: the relation filter's fraction (0.1), or None for no filter (default: None for
            ``"dai"``, 0.1 otherwise).
        progress: a progress bar over facts.
        **kwargs: any keyword of :func:`find_knowledge_neurons` (``threshold``, ``n_steps``, ``layers``, ...).

    Returns:
        One :class:`KnowledgeNeurons` per fact, in order.

    Example:
        >>> facts = [(["The capital of France is [MASK].", "France has its capital in [MASK]."], "Paris", "capital"),
        ...          (["The capital of Italy is [MASK].", "Italy has its capital in [MASK]."], "Rome", "capital")]
        >>> results = find_knowledge_neurons_many(bert, facts, progress=False)  # the tiny BERT
        >>> [r.neurons for r in results]
        [[...], [...]]
    """
    check_model(model)
    rule = Rule.of(
        variant,
        threshold=kwargs.pop("threshold", _UNSET),
        share=kwargs.pop("share", _UNSET),
        adaptive=kwargs.pop("adaptive", _UNSET),
        fallback=kwargs.pop("fallback", "closest"),
    )
    items = [_as_fact(f) for f in facts]
    if not items:
        raise ValueError("no facts given")
    if relation_share is _UNSET:
        relation_share = None if rule.variant == "dai" else 0.1
    if relation_share is not None:
        check_number(relation_share, "relation_share", low=0, high=1, high_open=True)
    kwargs.setdefault("progress", False)
    rule_kwargs = dict(
        variant=rule.variant,
        threshold=rule.threshold,
        share=rule.share,
        adaptive=rule.adaptive,
        fallback=rule.fallback,
    )
    results = []
    for item in progress_bar(items, "facts", enabled=progress):
        result = find_knowledge_neurons(model, list(item.prompts), item.target, **rule_kwargs, **kwargs)
        result.relation = item.relation
        result.name = item.name or (f"{item.relation}: {result.target}" if item.relation else result.target)
        results.append(result)
    if rule.variant == "dai":  # the released rule adapts over the relation's facts together
        selected = refine_facts(
            [r.coarse for r in results], [_strength(r) for r in results], [r.relation for r in results], rule
        )
        results = [_with_selection(r, s) for r, s in zip(results, selected, strict=True)]
    if relation_share is not None:
        results = relation_filter(results, relation_share)
    return results


def relation_filter(results: Sequence[KnowledgeNeurons], share: float = 0.1) -> list[KnowledgeNeurons]:
    """Drop neurons selected for more than ``share`` of a relation's facts (and at least 2 of them).

    Results are grouped by their ``relation``; results without one (``relation=None``) form one group, so a
    plain list of facts of one relation can be filtered as it is. Returns new result objects (the inputs are
    not modified).

    Example:
        >>> facts = [(kn_lens.fixtures.tiny_bert.train_prompts(f), f.answer, f.relation)
        ...          for f in kn_lens.fixtures.tiny_bert.facts_of("capital")[:3]]
        >>> results = find_knowledge_neurons_many(bert, facts, relation_share=None, progress=False)
        >>> filtered = relation_filter(results, 0.1)  # drop neurons found for 2 or more of the 3 capitals
        >>> results[0].neurons, filtered[0].dropped["relation"]
        ([L1N253, L1N292, L1N990, L0N721, L1N1001], [L1N253])
        >>> relation_filter(results, 0.7)[0].dropped["relation"]  # 2 of 3 facts is not more than 70%: kept
        []
    """
    check_number(share, "share", low=0, high=1, high_open=True)
    by_relation: dict[str | None, list[int]] = {}
    for i, result in enumerate(results):
        by_relation.setdefault(result.relation, []).append(i)
    out = list(results)
    for indices in by_relation.values():
        counts: Counter[Neuron] = Counter(n for i in indices for n in results[i].neurons)
        shared = {n for n, c in counts.items() if c >= 2 and c > share * len(indices)}
        for i in indices:
            result = results[i]
            dropped = dict(result.dropped)
            dropped["relation"] = [n for n in result.neurons if n in shared]
            params = dict(result.params, relation_share=share)
            out[i] = dataclasses.replace(
                result, neurons=[n for n in result.neurons if n not in shared], dropped=dropped, params=params
            )
    return out


# --------------------------------------------------------------------------------------------------------------
# Controls
# --------------------------------------------------------------------------------------------------------------


def random_neurons(
    model: Model,
    like: NeuronsLike,
    *,
    seed: int = 0,
    exclude: NeuronsLike | None = _UNSET,
) -> list[Neuron]:
    """Random neurons with the same number per layer as ``like``: the control for every intervention.

    Args:
        model: the model (for ``d_mlp``).
        like: the neurons (or a :class:`KnowledgeNeurons` result) whose per-layer counts are copied.
        seed: random seed (same seed -> same neurons).
        exclude: neurons never drawn (default: ``like`` itself; None to allow them).

    Returns:
        The random neurons, layer by layer.

    Example:
        >>> control = random_neurons(model, kns, seed=0)
        >>> [n.layer for n in control] == sorted(n.layer for n in kns.neurons)
        True
    """
    check_model(model)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    neurons = to_neurons(like, model)
    if exclude is _UNSET:
        excluded = set(neurons)
    else:
        excluded = set() if exclude is None else set(to_neurons(exclude, model, allow_empty=True))
    generator = torch.Generator().manual_seed(seed)
    d_mlp = model.cfg.d_mlp
    out: list[Neuron] = []
    for layer, indices in group_by_layer(neurons).items():
        allowed = torch.tensor([i for i in range(d_mlp) if Neuron(layer, i) not in excluded], dtype=torch.long)
        if len(allowed) < len(indices):
            raise ValueError(f"layer {layer} has only {len(allowed)} neurons left to draw {len(indices)} from")
        pick = allowed[torch.randperm(len(allowed), generator=generator)[: len(indices)]]
        out.extend(Neuron(layer, int(i)) for i in sorted(pick.tolist()))
    return out


__all__ = [
    "ADAPTIVE_MAX",
    "ADAPTIVE_STEP",
    "CANDIDATE_FLOOR",
    "DAI_MIN_PROMPTS",
    "DAI_RELATION_SHARE",
    "RULES",
    "VARIANTS",
    "Candidates",
    "FactPrompts",
    "KnowledgeNeurons",
    "Refined",
    "RelationRefined",
    "Rule",
    "Selected",
    "Variant",
    "coarse_neurons",
    "drop_shared",
    "find_knowledge_neurons",
    "find_knowledge_neurons_many",
    "random_neurons",
    "refine",
    "refine_relation",
    "relation_filter",
    "select",
    "top_neurons",
]
