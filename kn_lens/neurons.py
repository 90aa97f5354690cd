"""From attribution scores to knowledge neurons: Dai et al.'s coarse -> refined -> adaptive selection.

Context:
    Dai et al. (ACL 2022) call a neuron a *knowledge neuron* of a fact when it is strongly attributed (integrated
    gradients of the answer's probability, :mod:`kn_lens.attribution`) on most paraphrases of the fact:

    1. **coarse**: for each prompt, keep the neurons whose score is above ``threshold x`` that prompt's largest
       score (``t = 0.2``);
    2. **refined**: keep the neurons coarse on more than ``share`` of the prompts (``p = 0.7``);
    3. **adaptive**: move ``share`` by 0.05 (at most 6 times) until 2-5 neurons remain (~4 per fact in the paper).

    Extra filters remove neurons that are not specific to the fact: **negatives** (neurons also attributed on
    given unrelated prompts, as in the EleutherAI package) and a **relation filter** across many facts
    (:func:`find_knowledge_neurons_many`: neurons found for more than 10% of a relation's facts carry the
    relation, "capital of", rather than the fact).

Intuition:
    A single prompt's top neurons mix the fact with the prompt's wording; requiring agreement across
    paraphrases keeps what the paraphrases share, the fact.

Caveats:
    * The selection is only as good as the attribution (steps, objective, baseline) and the paraphrases.
    * The EleutherAI variant (``variant="eleuther"``: coarse 0.3, share 0.5, no adaptive step, IG over
      ``linspace(0, 1, n)``) finds more neurons per fact.
    * Selection is deterministic for given scores; the attribution is deterministic too, so the same inputs give
      the same neurons. :func:`random_neurons` (the control) takes a ``seed``.

Example:
    >>> paraphrases = ["The capital of France is", "France's capital city is", "The French capital is"]
    >>> kns = find_knowledge_neurons(model, paraphrases, " Paris")
    >>> kns.neurons
    [L29N1066, L29N1285, L29N778, L29N238, L21N522]
    >>> kns.to_dataframe()[["neuron", "n_prompts", "mean_score"]]
         neuron  n_prompts  mean_score
    0  L29N1066          3    0.0977
    1  L29N1285          3    0.0760
    2   L29N778          3    0.0744
    3   L29N238          3    0.0485
    4   L21N522          3    0.0477
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from kn_lens._typing import Model, Neuron, check_model, group_by_layer
from kn_lens.inputs import NeuronsLike, to_layers, to_neurons, to_prompts
from kn_lens.prompts import Prompt, TargetLike, make_prompt, one_target

Variant = Literal["dai", "eleuther"]

#: Default selection parameters of each variant (Dai et al. 2022; EleutherAI knowledge-neurons 0.0.2).
VARIANTS: dict[str, dict[str, Any]] = {
    "dai": dict(threshold=0.2, share=0.7, adaptive=(2, 5), method="riemann_left"),
    "eleuther": dict(threshold=0.3, share=0.5, adaptive=None, method="eleuther"),
}
ADAPTIVE_STEP = 0.05
ADAPTIVE_MAX = 6
_UNSET: Any = object()


# --------------------------------------------------------------------------------------------------------------
# Pure selection steps (on scores)
# --------------------------------------------------------------------------------------------------------------


def coarse_neurons(
    scores: Float[Tensor, "layer d_mlp"], threshold: float = 0.2, *, layers: Sequence[int] | None = None
) -> list[Neuron]:
    """Neurons of one prompt with a score above ``threshold x`` the prompt's largest score (Dai et al.'s step 1).

    Args:
        scores: one prompt's attribution, one row per layer.
        threshold: fraction of the maximum (``0 < threshold <= 1``).
        layers: the layer index of each row (default ``0..rows-1``).

    Returns:
        The coarse neurons, by decreasing score. Empty if no score is positive.

    Example:
        >>> coarse_neurons(torch.tensor([[0.1, 1.0], [0.5, 0.0]]), 0.3)
        [L0N1, L1N0]
    """
    _check_fraction("threshold", threshold, allow_zero=False)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [layer, d_mlp] for one prompt, got shape {tuple(scores.shape)}")
    layers = list(range(scores.shape[0])) if layers is None else list(layers)
    if len(layers) != scores.shape[0]:
        raise ValueError(f"{len(layers)} layer indices for {scores.shape[0]} rows of scores")
    top = float(scores.max())
    if not top > 0:
        return []
    rows, cols = torch.nonzero(scores > threshold * top, as_tuple=True)
    order = scores[rows, cols].argsort(descending=True, stable=True)
    return [Neuron(layers[int(rows[i])], int(cols[i])) for i in order]


def top_neurons(
    scores: Float[Tensor, "layer d_mlp"], k: int = 10, *, layers: Sequence[int] | None = None, largest: bool = True
) -> list[Neuron]:
    """The ``k`` neurons with the largest scores (``largest=False``: the smallest), strongest first.

    Use it instead of turning flat ``topk`` indices into neurons by hand: with ``layers=`` a subset, row ``i`` of
    ``scores`` is layer ``layers[i]``, not layer ``i``.

    Args:
        scores: one prompt's scores ``[layer, d_mlp]`` (e.g. :func:`~kn_lens.attribution.integrated_gradients`).
        k: how many neurons (1 to the number of scores).
        layers: the layer of each row (default ``0..rows-1``), as passed to the attribution.
        largest: True for the top scores, False for the bottom ones.

    Example:
        >>> top_neurons(torch.tensor([[0.1, 0.9], [0.5, 0.0]]), 2, layers=[20, 24])
        [L20N1, L24N0]
    """
    from kn_lens.inputs import check_int

    if not isinstance(scores, Tensor) or scores.ndim != 2:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a [layer, d_mlp] tensor for one prompt, got {shape}")
    k = check_int(k, "k")
    if not 1 <= k <= scores.numel():
        raise ValueError(f"k must be between 1 and the number of scores ({scores.numel()}), got {k}")
    rows = list(range(scores.shape[0])) if layers is None else [check_int(x, "layer") for x in layers]
    if len(rows) != scores.shape[0]:
        raise ValueError(f"{len(rows)} layers for {scores.shape[0]} rows of scores; pass one layer per row")
    flat = scores.detach().float().flatten().topk(k, largest=largest).indices.tolist()
    d_mlp = scores.shape[1]
    return [Neuron(rows[i // d_mlp], i % d_mlp) for i in flat]


class Refined(NamedTuple):
    """What :func:`refine` returns: the neurons, the share used, the number of adjustments, and the fallback
    taken (``""`` when Dai et al.'s rule landed in range or no range was asked for)."""

    neurons: list[Neuron]
    share: float
    adjustments: int
    fallback: str


def refine(
    coarse: Sequence[Sequence[Neuron]],
    share: float = 0.7,
    *,
    adaptive: tuple[int, int] | None = (2, 5),
    step: float = ADAPTIVE_STEP,
    max_adjustments: int = ADAPTIVE_MAX,
    strength: Mapping[Neuron, float] | None = None,
    fallback: Literal["closest", "none"] = "closest",
) -> Refined:
    """Keep neurons coarse on more than ``share`` of the prompts; optionally adapt ``share`` to hit a count range.

    With ``adaptive=(lo, hi)``: while fewer than ``lo`` neurons remain, lower ``share`` by ``step``; while more
    than ``hi`` remain, raise it; at most ``max_adjustments`` times (Dai et al.: 0.05, 6 times, 2-5 neurons).

    With few prompts the rule can miss the range: with 3 prompts a neuron is shared by 0, 1, 2 or 3 of them, so
    when 12 neurons are shared by all 3, every ``share`` below 1 keeps 12 and 1.0 keeps none. ``fallback=
    "closest"`` (default) then takes the non-empty set closest to the range among those tried, and if it is
    still too large keeps its ``hi`` strongest neurons (by ``strength``, e.g. mean attribution); ``"none"``
    returns the rule's last set as is.

    Args:
        coarse: the coarse neurons of each prompt.
        share: initial fraction of prompts a neuron must be coarse on (strictly more than).
        adaptive: the target count range, or None for a fixed ``share``.
        step: the adjustment of ``share``.
        max_adjustments: the maximum number of adjustments.
        strength: a score per neuron to rank ties in count (default: order of first appearance).
        fallback: ``"closest"`` or ``"none"`` (see above).

    Returns:
        A :class:`Refined` ``(neurons, share, adjustments, fallback)``; neurons ordered by how many prompts
        share them, then by ``strength``.

    Example:
        >>> refine([[Neuron(1, 2), Neuron(0, 1)], [Neuron(1, 2)]], 0.7, adaptive=None)
        Refined(neurons=[L1N2], share=0.7, adjustments=0, fallback='')
    """
    if not coarse:
        raise ValueError("no prompts to refine over")
    _check_fraction("share", share, allow_zero=True)
    if fallback not in ("closest", "none"):
        raise ValueError(f"fallback must be 'closest' or 'none', got {fallback!r}")
    if adaptive is not None:
        lo, hi = _check_range(adaptive)
    n = len(coarse)
    counts: Counter[Neuron] = Counter()
    for neurons in coarse:
        counts.update(dict.fromkeys(neurons, 1))
    strength = strength or {}
    ranked = sorted(counts, key=lambda neuron: (-counts[neuron], -strength.get(neuron, 0.0)))  # stable

    def keep(p: float) -> list[Neuron]:
        return [neuron for neuron in ranked if counts[neuron] > p * n + 1e-9]

    selected = keep(share)
    adjustments = 0
    if adaptive is None:
        return Refined(selected, share, 0, "")
    tried = [(share, selected)]
    while adjustments < max_adjustments and not lo <= len(selected) <= hi:
        share = share - step if len(selected) < lo else share + step
        share = round(min(max(share, 0.0), 1.0), 10)
        adjustments += 1
        selected = keep(share)
        tried.append((share, selected))
    if lo <= len(selected) <= hi or fallback == "none":
        return Refined(selected, share, adjustments, "")

    def distance(item: tuple[float, list[Neuron]]) -> tuple[bool, int]:
        size = len(item[1])
        return (size == 0, lo - size if size < lo else size - hi)

    best_share, best = min(tried, key=distance)  # first of equals: the earliest tried
    if len(best) > hi:
        return Refined(best[:hi], best_share, adjustments, f"kept the {hi} strongest of {len(best)}")
    if not best or best is selected:
        return Refined(selected, share, adjustments, "")
    return Refined(best, best_share, adjustments, f"closest set to the range (share {best_share:g})")


def _check_fraction(name: str, value: float, *, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    if not (0 <= value <= 1) or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be in {'[0' if allow_zero else '(0'}, 1], got {value}")


def _check_range(adaptive: Any) -> tuple[int, int]:
    if (
        not isinstance(adaptive, tuple | list)
        or len(adaptive) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in adaptive)
        or not 0 <= adaptive[0] <= adaptive[1]
    ):
        raise ValueError(f"adaptive must be None or a (min, max) pair of counts, e.g. (2, 5); got {adaptive!r}")
    return int(adaptive[0]), int(adaptive[1])


# --------------------------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------------------------


@dataclass
class KnowledgeNeurons:
    """The knowledge neurons of one fact, with everything that led to them.

    Iterating, ``len`` and ``in`` act on :attr:`neurons`, so a result can be passed wherever neurons are expected
    (``kn_lens.hooks.scale(kns, 0.0)``, ``kn_lens.edit.erase(model, kns)``).

    Attributes:
        neurons: the selected knowledge neurons (``Neuron(layer, index)``, printed ``L{l}N{n}``).
        prompts: the prompts the attribution ran on.
        target: the answer (text).
        scores: per-prompt attribution scores, ``[prompt, layer, d_mlp]`` (rows = :attr:`layers`).
        layers: the layer of each row of :attr:`scores`.
        coarse: the coarse neurons of each prompt.
        params: the parameters used (``threshold``, ``share`` as given and ``share_used``, ``adjustments``,
            ``adaptive``, ``variant``, ``attribution`` and its keywords, ...).
        dropped: neurons removed by the filters: ``{"negatives": [...], "relation": [...]}``.
        relation: the fact's relation, when known (set by :func:`find_knowledge_neurons_many`).
        name: a label for the fact (e.g. ``"capital: France"``).

    Example:
        >>> kns = find_knowledge_neurons(model, paraphrases, " Paris")
        >>> kns.neurons
        [L29N1066, L29N1285, L29N778, L29N238, L21N522]
        >>> list(kns.counts().items())[:2]  # in how many prompts each neuron was coarse
        [(L29N778, 3), (L29N1066, 3)]
        >>> kns.to_dataframe().shape  # one row per neuron: counts, mean/max score, one column per prompt
        (5, 12)
    """

    neurons: list[Neuron]
    prompts: list[Prompt]
    target: str
    scores: Float[Tensor, "prompt layer d_mlp"] = field(repr=False)
    layers: list[int] = field(repr=False)
    coarse: list[list[Neuron]] = field(repr=False)
    params: dict[str, Any] = field(default_factory=dict, repr=False)
    dropped: dict[str, list[Neuron]] = field(default_factory=dict, repr=False)
    relation: str | None = None
    name: str = ""

    def __len__(self) -> int:
        return len(self.neurons)

    def __iter__(self) -> Iterator[Neuron]:
        return iter(self.neurons)

    def __contains__(self, neuron: object) -> bool:
        return neuron in self.neurons

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        return (
            f"KnowledgeNeurons({label}target={self.target!r}, prompts={len(self.prompts)}, "
            f"neurons={self.neurons}, share={self.params.get('share_used')})"
        )

    def counts(self) -> dict[Neuron, int]:
        """In how many prompts each neuron was coarse (every neuron that was coarse at least once)."""
        counts: Counter[Neuron] = Counter()
        for neurons in self.coarse:
            counts.update(dict.fromkeys(neurons, 1))
        return dict(counts.most_common())

    def neuron_scores(self, neuron: Neuron | tuple[int, int] | str) -> Float[Tensor, " prompt"]:
        """The attribution of one neuron on each prompt."""
        neuron = to_neurons([neuron])[0]
        if neuron.layer not in self.layers:
            raise ValueError(f"layer {neuron.layer} was not attributed (layers {self.layers})")
        if neuron.index >= self.scores.shape[-1]:
            raise ValueError(f"neuron index {neuron.index} is out of range (d_mlp={self.scores.shape[-1]})")
        return self.scores[:, self.layers.index(neuron.layer), neuron.index]

    def to_dataframe(self, *, candidates: bool = False) -> pd.DataFrame:
        """One row per selected neuron (``candidates=True``: every neuron coarse on at least one prompt).

        Columns: ``neuron`` (``"L24N1005"``), ``layer``, ``index``, ``selected``, ``n_prompts`` (coarse on),
        ``share`` (``n_prompts / len(prompts)``), ``mean_score``, ``max_score`` and one ``score[i]`` column per
        prompt; ``dropped_by`` names the filter that removed a candidate, if any.

        Example:
            >>> kns.to_dataframe().sort_values("mean_score", ascending=False)["neuron"].tolist()
            ['L29N1066', 'L29N1285', 'L29N778', 'L29N238', 'L21N522']
        """
        counts = self.counts()
        rows_for = list(self.neurons)
        if candidates:
            rows_for += [n for n in counts if n not in self.neurons]
            rows_for += [n for dropped in self.dropped.values() for n in dropped if n not in rows_for]
        dropped_by = {n: why for why, ns in self.dropped.items() for n in ns}
        rows = []
        for neuron in rows_for:
            per_prompt = self.neuron_scores(neuron).tolist()
            row: dict[str, Any] = {
                "neuron": str(neuron),
                "layer": neuron.layer,
                "index": neuron.index,
                "selected": neuron in self.neurons,
                "n_prompts": counts.get(neuron, 0),
                "share": counts.get(neuron, 0) / max(len(self.prompts), 1),
                "mean_score": sum(per_prompt) / len(per_prompt),
                "max_score": max(per_prompt),
                "dropped_by": dropped_by.get(neuron, ""),
            }
            row.update({f"score[{i}]": s for i, s in enumerate(per_prompt)})
            rows.append(row)
        columns = ["neuron", "layer", "index", "selected", "n_prompts", "share", "mean_score", "max_score"]
        columns += ["dropped_by"] + [f"score[{i}]" for i in range(len(self.prompts))]
        return pd.DataFrame(rows, columns=columns)

    def to_json(self, *, scores: bool = False) -> dict[str, Any]:
        """A JSON-ready dict of the result (neurons as ``"L{l}N{i}"``), for saving a sweep and re-analysing it.

        Args:
            scores: include the per-prompt attribution scores (``prompts x layers x d_mlp`` numbers: large).

        Example:
            >>> data = kns.to_json()
            >>> KnowledgeNeurons.from_json(model, data).neurons == kns.neurons
            True
        """

        def plain(value: Any) -> Any:
            if isinstance(value, Prompt):
                return value.text
            if isinstance(value, Neuron):
                return str(value)
            if isinstance(value, Mapping):
                return {str(k): plain(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [plain(v) for v in value]
            if isinstance(value, Tensor):
                return value.tolist()
            return value

        data: dict[str, Any] = dict(
            neurons=[str(n) for n in self.neurons],
            prompts=[p.text for p in self.prompts],
            target=self.target,
            target_ids=list(self.prompts[0].target_ids) if self.prompts else [],
            layers=list(self.layers),
            coarse=[[str(n) for n in c] for c in self.coarse],
            params=plain(self.params),
            dropped={k: [str(n) for n in v] for k, v in self.dropped.items()},
            relation=self.relation,
            name=self.name,
        )
        if scores:
            data["scores"] = self.scores.tolist()
        return data

    @classmethod
    def from_json(cls, model: Model, data: Mapping[str, Any]) -> KnowledgeNeurons:
        """Rebuild a result saved with :meth:`to_json` (prompts re-tokenised with ``model``; scores zero unless
        saved).

        Example:
            >>> KnowledgeNeurons.from_json(model, kns.to_json(scores=True)).scores.shape == kns.scores.shape
            True
        """
        check_model(model)
        if not isinstance(data, Mapping):
            raise TypeError(f"from_json needs the dict to_json made, got {type(data).__name__}")
        missing = [k for k in ("neurons", "prompts", "target", "layers", "coarse") if k not in data]
        if missing:
            raise ValueError(f"not a KnowledgeNeurons record: missing {missing}")
        target = data.get("target_ids") or data["target"]
        prompts = [make_prompt(model, text, target) for text in data["prompts"]]
        layers = [int(x) for x in data["layers"]]
        if data.get("scores") is not None:
            scores = torch.tensor(data["scores"], dtype=torch.float32)
        else:
            scores = torch.zeros(len(prompts), len(layers), model.cfg.d_mlp)
        return cls(
            neurons=to_neurons(list(data["neurons"]), model, allow_empty=True),
            prompts=prompts,
            target=str(data["target"]),
            scores=scores,
            layers=layers,
            coarse=[to_neurons(list(c), model, allow_empty=True) for c in data["coarse"]],
            params=dict(data.get("params") or {}),
            dropped={k: to_neurons(list(v), model, allow_empty=True) for k, v in (data.get("dropped") or {}).items()},
            relation=data.get("relation"),
            name=str(data.get("name") or ""),
        )

    def plot(self, **kwargs: Any):
        """A figure of the neurons' per-prompt scores and the mean attribution map (``kn_lens.plotting``).

        Example:
            >>> kns.plot().show()
        """
        from kn_lens import plotting  # figures are imported only when drawn

        return plotting.knowledge_neurons(self, **kwargs)


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
    variant: Variant = "dai",
    negatives: Sequence[str | Prompt] | None = None,
    negative_share: float = 0.0,
    fallback: Literal["closest", "none"] = "closest",
    layers: int | Sequence[int] | None = None,
    scores: Float[Tensor, "prompt layer d_mlp"] | None = None,
    progress: bool = True,
    **attribution_kwargs: Any,
) -> KnowledgeNeurons:
    """Find the knowledge neurons of one fact from its paraphrased prompts (Dai et al. 2022).

    Args:
        model: a ``HookedEncoder`` (prompts with ``[MASK]``) or ``HookedTransformer`` (the target continues).
        prompts: the fact's paraphrases (texts or Prompts); all must share one target.
        target: the answer, e.g. ``" Paris"`` (None if the Prompts carry it).
        threshold: coarse threshold as a fraction of each prompt's top score (dai 0.2, eleuther 0.3).
        share: a refined neuron must be coarse on more than this fraction of prompts (dai 0.7, eleuther 0.5).
        adaptive: ``(min, max)`` neurons: ``share`` moves by 0.05 (at most 6 times) to land in range (dai
            ``(2, 5)``, eleuther None).
        attribution: ``"ig"`` (integrated gradients), ``"grad_x_act"``, ``"attribution_patching"`` or
            ``"ablation"`` (see :func:`kn_lens.attribution.attribute`).
        variant: ``"dai"`` or ``"eleuther"``: the defaults for ``threshold``/``share``/``adaptive`` and the IG
            rule (``method="eleuther"``: ``linspace(0, 1, n)``). Explicit arguments win.
        negatives: unrelated prompts (texts use ``target``; Prompts may carry their own): neurons coarse on more
            than ``negative_share`` of them are dropped.
        negative_share: see ``negatives`` (0 = dropped if coarse on any negative prompt).
        fallback: when the adaptive rule cannot land in range (few prompts), ``"closest"`` keeps the closest
            non-empty set, cut to the strongest ``max`` neurons; ``"none"`` keeps the rule's result (see
            :func:`refine`). ``params["fallback_taken"]`` says what happened.
        layers: layers to attribute (None = all).
        scores: precomputed ``[prompt, layer, d_mlp]`` scores (rows = ``layers``) to skip the attribution.
        progress: progress bar over prompts.
        **attribution_kwargs: passed to the attribution (``n_steps``, ``method``, ``objective``,
            ``internal_batch_size``, ...).

    Returns:
        A :class:`KnowledgeNeurons` result.

    Raises:
        ValueError: empty prompt list, prompts with different targets, no target, parameters out of range, a
            layer out of range, scores of the wrong shape.

    Example:
        >>> kns = find_knowledge_neurons(model, ["The capital of France is", "France's capital is"], " Paris")
        >>> kn_lens.target_scores(model, prompts, fwd_hooks=kn_lens.hooks.Intervention("scale", kns, 0.0))
        tensor([...])
    """
    check_model(model)
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose 'dai' or 'eleuther'")
    defaults = VARIANTS[variant]
    threshold = defaults["threshold"] if threshold is _UNSET else threshold
    share = defaults["share"] if share is _UNSET else share
    adaptive = defaults["adaptive"] if adaptive is _UNSET else adaptive
    _check_fraction("threshold", threshold, allow_zero=False)
    _check_fraction("share", share, allow_zero=True)
    _check_fraction("negative_share", negative_share, allow_zero=True)
    if adaptive is not None:
        adaptive = _check_range(adaptive)
    if fallback not in ("closest", "none"):
        raise ValueError(f"fallback must be 'closest' or 'none', got {fallback!r}")
    _check_attribution(attribution)
    fact_prompts, target_text = _fact_prompts(model, prompts, target)
    negative_prompts = _negative_prompts(model, negatives, target, target_text)
    layer_list = to_layers(model, layers)
    kwargs = dict(attribution_kwargs)
    if attribution == "ig":
        kwargs.setdefault("method", defaults["method"])
    completeness = None
    if scores is None:
        scores, completeness = _attribute(model, fact_prompts, attribution, layer_list, progress, kwargs)
    else:
        expected = (len(fact_prompts), len(layer_list), model.cfg.d_mlp)
        if tuple(scores.shape) != expected:
            raise ValueError(f"scores have shape {tuple(scores.shape)}; expected [prompt, layer, d_mlp] = {expected}")
        scores = scores.detach().float().cpu()

    coarse = [coarse_neurons(s, threshold, layers=layer_list) for s in scores]
    mean_scores = scores.mean(0)
    strength = {n: float(mean_scores[layer_list.index(n.layer), n.index]) for c in coarse for n in c}
    selected, share_used, adjustments, fallback_taken = refine(
        coarse, share, adaptive=adaptive, strength=strength, fallback=fallback
    )
    dropped: dict[str, list[Neuron]] = {}
    if negative_prompts:
        negative_scores = _attribute(model, negative_prompts, attribution, layer_list, progress, kwargs)[0]
        negative_coarse = [set(coarse_neurons(s, threshold, layers=layer_list)) for s in negative_scores]
        limit = negative_share * len(negative_prompts)
        bad = [n for n in selected if sum(n in c for c in negative_coarse) > limit]
        dropped["negatives"] = bad
        selected = [n for n in selected if n not in bad]
    params = dict(
        variant=variant,
        threshold=threshold,
        share=share,
        share_used=share_used,
        adjustments=adjustments,
        adaptive=adaptive,
        fallback=fallback,
        fallback_taken=fallback_taken,
        attribution=attribution,
        attribution_kwargs=kwargs,
        negatives=[p.text for p in negative_prompts],
        negative_share=negative_share,
    )
    if completeness is not None:
        params["completeness"] = completeness
    return KnowledgeNeurons(
        neurons=selected,
        prompts=fact_prompts,
        target=target_text,
        scores=scores,
        layers=layer_list,
        coarse=coarse,
        params=params,
        dropped=dropped,
    )


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
    if isinstance(item, Mapping):
        unknown = set(item) - {"prompts", "target", "relation", "name"}
        if unknown or "prompts" not in item:
            raise ValueError(
                f"a fact mapping needs 'prompts' (and 'target', 'relation', 'name'); got keys {sorted(item)}"
            )
        return FactPrompts(item["prompts"], item.get("target"), item.get("relation"), item.get("name", ""))
    if isinstance(item, tuple) and len(item) in (2, 3):
        return FactPrompts(*item)
    raise TypeError(
        "each fact must be a FactPrompts, a (prompts, target[, relation]) tuple or a mapping with "
        f"'prompts'/'target'/'relation'; got {type(item).__name__}"
    )


def find_knowledge_neurons_many(
    model: Model,
    facts: Sequence[FactPrompts | tuple | Mapping[str, Any]],
    *,
    relation_share: float | None = 0.1,
    progress: bool = True,
    **kwargs: Any,
) -> list[KnowledgeNeurons]:
    """:func:`find_knowledge_neurons` for many facts, then the relation filter.

    Relation filter (facts with a ``relation``): a neuron selected for more than ``relation_share`` of the facts
    of its relation (and for at least 2 of them) encodes the relation rather than the fact, and is dropped
    from every fact of that relation (recorded in ``result.dropped["relation"]``).

    Args:
        model: the model.
        facts: :class:`FactPrompts`, ``(prompts, target[, relation])`` tuples, or mappings with those keys.
        relation_share: the relation filter's fraction (Dai et al.: 0.1); None switches it off.
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
    items = [_as_fact(f) for f in facts]
    if not items:
        raise ValueError("no facts given")
    if relation_share is not None:
        _check_relation_share(relation_share, "relation_share")
    kwargs.setdefault("progress", False)
    results = []
    for item in tqdm(items, desc="facts", disable=not progress):
        result = find_knowledge_neurons(model, list(item.prompts), item.target, **kwargs)
        result.relation = item.relation
        result.name = item.name or (f"{item.relation}: {result.target}" if item.relation else result.target)
        results.append(result)
    if relation_share is not None:
        results = relation_filter(results, relation_share)
    return results


def _check_relation_share(share: Any, name: str) -> None:
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0.0 <= share < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1) (Dai et al. use 0.1), got {share!r}")


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
    _check_relation_share(share, "share")
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
    "VARIANTS",
    "FactPrompts",
    "KnowledgeNeurons",
    "Refined",
    "coarse_neurons",
    "find_knowledge_neurons",
    "find_knowledge_neurons_many",
    "random_neurons",
    "refine",
    "relation_filter",
    "top_neurons",
]
