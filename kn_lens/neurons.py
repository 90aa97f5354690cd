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
import math
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

Variant = Literal["adaptive", "dai", "eleuther"]

#: Default selection parameters of each rule (see the module docstring for what each means).
VARIANTS: dict[str, dict[str, Any]] = {
    "adaptive": dict(threshold=0.2, share=0.7, adaptive=(2, 5), method="riemann_left"),
    "dai": dict(threshold=0.2, share=0.7, adaptive=(2, 5), method="riemann_left"),
    "eleuther": dict(threshold=0.3, share=0.5, adaptive=None, method="eleuther"),
}
#: One line per rule, for tables, reports and command-line help: every table says which rule made it.
RULES: dict[str, str] = {
    "adaptive": "kn_lens per-fact rule: score > 0.2 x max, coarse on > 70% of prompts, share adapted per fact "
    "to 2-5 neurons (closest set, cut to 5, when no share lands in range)",
    "dai": "Dai et al.'s released code: score >= 0.2 x max, coarse on >= max(p x n, 3) prompts, p adapted per "
    "relation until 2-5 neurons per fact on average, no cap",
    "eleuther": "EleutherAI knowledge-neurons 0.0.2: score > 0.3 x max, coarse on > 50% of prompts",
}
ADAPTIVE_STEP = 0.05
ADAPTIVE_MAX = 6
#: The released code's minimum number of prompts a knowledge neuron must be coarse on.
DAI_MIN_PROMPTS = 3
#: The released code's share of a relation's facts that makes a neuron a relation neuron (``kn_rel``).
DAI_RELATION_SHARE = 0.1
#: What :class:`Candidates` keeps by default: scores reaching 0.1 x the prompt's max (the released code's triplets).
CANDIDATE_FLOOR = 0.1
_UNSET: Any = object()


def _check_variant(variant: Any) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(map(repr, VARIANTS))}")
    return variant


# --------------------------------------------------------------------------------------------------------------
# Pure selection steps (on scores)
# --------------------------------------------------------------------------------------------------------------


def _coarse_mask(scores: Tensor, maxima: Tensor, threshold: float, inclusive: bool) -> Tensor:
    """Which scores are coarse, row by row: ``scores`` ``[prompt, n]``, ``maxima`` ``[prompt]`` (the max over every
    attributed neuron of the prompt, which for sparse candidates is not the row's own max)."""
    if inclusive:  # the released code: float64 numbers, ``>=``; a max of 0 makes every 0 a candidate
        return scores.double() >= threshold * maxima.double()[:, None]
    # kn_lens's rules: a neuron must support the answer, so a prompt without a positive score has none
    cut = (threshold * maxima.double()).to(scores.dtype)
    return (scores > cut[:, None]) & (maxima > 0)[:, None]


def coarse_neurons(
    scores: Float[Tensor, "layer d_mlp"],
    threshold: float = 0.2,
    *,
    layers: Sequence[int] | None = None,
    inclusive: bool = False,
) -> list[Neuron]:
    """Neurons of one prompt whose score reaches ``threshold x`` the prompt's largest score (the coarse step).

    Args:
        scores: one prompt's attribution, one row per layer.
        threshold: fraction of the maximum (``0 < threshold <= 1``).
        layers: the layer index of each row (default ``0..rows-1``).
        inclusive: False (kn_lens, EleutherAI): ``score > threshold x max``, and nothing when no score is
            positive. True (Dai et al.'s released code): ``score >= threshold x max`` in float64, so a prompt whose
            largest score is exactly 0 makes every zero score a candidate.

    Returns:
        The coarse neurons, by decreasing score.

    Example:
        >>> coarse_neurons(torch.tensor([[0.1, 1.0], [0.5, 0.0]]), 0.3)
        [L0N1, L1N0]
        >>> coarse_neurons(torch.tensor([[0.0, -1.0], [0.0, -2.0]]), 0.2, inclusive=True)  # max 0: every 0
        [L0N0, L1N0]
    """
    _check_fraction("threshold", threshold, allow_zero=False)
    if not isinstance(scores, Tensor) or scores.ndim != 2:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must be [layer, d_mlp] for one prompt, got {shape}")
    _check_finite(scores)
    layers = list(range(scores.shape[0])) if layers is None else list(layers)
    if len(layers) != scores.shape[0]:
        raise ValueError(f"{len(layers)} layer indices for {scores.shape[0]} rows of scores")
    flat = scores.detach().flatten()[None]
    keep = _coarse_mask(flat, flat.max(-1).values, threshold, inclusive)[0]
    picked = torch.nonzero(keep).flatten()
    order = flat[0, picked].argsort(descending=True, stable=True)
    d_mlp = scores.shape[1]
    return [Neuron(layers[int(i) // d_mlp], int(i) % d_mlp) for i in picked[order]]


def _check_finite(scores: Tensor) -> None:
    if not bool(torch.isfinite(scores).all()):
        bad = int((~torch.isfinite(scores)).sum())
        raise ValueError(f"scores contain {bad} NaN or infinite values; selection needs finite attribution scores")


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
    taken (``""`` when the share landed in range or no range was asked for)."""

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
    """The per-fact refinement of the ``"adaptive"`` and ``"eleuther"`` rules: keep neurons coarse on more than
    ``share`` of the prompts; optionally adapt ``share`` for this fact alone to hit a count range.

    With ``adaptive=(lo, hi)``: while fewer than ``lo`` neurons remain, lower ``share`` by ``step``; while more
    than ``hi`` remain, raise it; at most ``max_adjustments`` times (0.05, 6 times, 2-5 neurons: Dai et al.'s
    numbers, applied per fact; the released code adapts per relation, see :func:`refine_relation`).

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


def _counts(coarse: Sequence[Sequence[Neuron]]) -> Counter[Neuron]:
    """On how many prompts each neuron is coarse (a neuron listed twice for one prompt counts once)."""
    counts: Counter[Neuron] = Counter()
    for neurons in coarse:
        counts.update(dict.fromkeys(neurons, 1))
    return counts


class RelationRefined(NamedTuple):
    """What :func:`refine_relation` returns: each fact's neurons, the share used, the number of moves, the
    relation's average number of neurons per fact, and the relation neurons (``kn_rel``, reported only)."""

    neurons: list[list[Neuron]]
    share: float
    adjustments: int
    average: float
    relation_neurons: list[Neuron]


def refine_relation(
    coarse_by_fact: Sequence[Sequence[Sequence[Neuron]]],
    share: float = 0.7,
    *,
    adaptive: tuple[int, int] | None = (2, 5),
    step: float = ADAPTIVE_STEP,
    tries: int = ADAPTIVE_MAX,
    min_prompts: int = DAI_MIN_PROMPTS,
    relation_share: float = DAI_RELATION_SHARE,
    strength_by_fact: Sequence[Mapping[Neuron, float]] | None = None,
) -> RelationRefined:
    """Dai et al.'s released refinement (``src/2_get_kn.py``) over all the facts of one relation.

    A neuron is kept for a fact when it is coarse on at least ``max(p x n_prompts, min_prompts)`` of the fact's
    prompts. ``p`` starts at ``share``; after each try, if the relation's *average* count per fact is below
    ``adaptive[0]``, ``p -= step``, if above ``adaptive[1]``, ``p += step``, until the average is in range or
    ``tries`` tries are spent (the last move of the released loop is never used, so at most ``tries - 1`` moves
    reach the result). ``p`` moves in the same floating-point steps as the released code (0.7 - 0.05 is
    0.6499999999999999), so a count that lands exactly on ``p x n`` is decided as there. There is no per-fact cap.

    Args:
        coarse_by_fact: for each fact of the relation, the coarse neurons of each of its prompts.
        share: the initial ``p``.
        adaptive: the range of the relation's average count, or None for a fixed ``p`` (one try).
        step: the move of ``p``.
        tries: the maximum number of tries (the released code: 6).
        min_prompts: the minimum count (the released code: 3).
        relation_share: a neuron kept for at least this share of the facts is a relation neuron (reported).
        strength_by_fact: a score per neuron for each fact, to order its neurons (ties in count).

    Returns:
        A :class:`RelationRefined`; each fact's neurons by decreasing count, then strength.

    Example:
        >>> a, b, c = Neuron(0, 1), Neuron(1, 2), Neuron(2, 3)
        >>> fact1 = [[a, b], [a, b], [a], [a, c]]   # a on 4 prompts, b on 2, c on 1
        >>> fact2 = [[c], [c], [c], [a]]            # c on 3
        >>> refine_relation([fact1, fact2], adaptive=None)  # count >= max(0.7 x 4, 3) = 3
        RelationRefined(neurons=[[L0N1], [L2N3]], share=0.7, adjustments=0, average=1.0, relation_neurons=[L0N1, L2N3])
    """
    if not coarse_by_fact or any(not coarse for coarse in coarse_by_fact):
        raise ValueError("refine_relation needs at least one fact, each with at least one prompt")
    _check_fraction("share", share, allow_zero=True)
    lo, hi = _check_range(adaptive) if adaptive is not None else (-math.inf, math.inf)
    counts = [_counts(coarse) for coarse in coarse_by_fact]
    strengths = list(strength_by_fact) if strength_by_fact is not None else [{} for _ in counts]
    if len(strengths) != len(counts):
        raise ValueError(f"{len(strengths)} strength maps for {len(counts)} facts")
    ranked = [
        sorted(c, key=lambda n, c=c, s=s: (-c[n], -s.get(n, 0.0))) for c, s in zip(counts, strengths, strict=True)
    ]

    def keep(p: float) -> list[list[Neuron]]:
        out = []
        for c, order, coarse in zip(counts, ranked, coarse_by_fact, strict=True):
            needed = max(len(coarse) * p, min_prompts)
            out.append([n for n in order if c[n] >= needed])
        return out

    p, moves = share, 0
    for attempt in range(max(tries, 1)):
        kept = keep(p)
        average = sum(map(len, kept)) / len(kept)
        if lo <= average <= hi or adaptive is None or attempt == tries - 1:
            break
        p = p - step if average < lo else p + step  # no rounding: the released loop's float steps
        moves += 1
    per_relation: Counter[Neuron] = Counter(n for neurons in kept for n in neurons)
    limit = len(kept) * relation_share
    relation_neurons = [n for n, k in per_relation.most_common() if k >= limit]
    return RelationRefined(kept, p, moves, average, relation_neurons)


# --------------------------------------------------------------------------------------------------------------
# Sparse attribution: enough to re-run any rule later
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidates:
    """A fact's attribution kept sparse: every neuron reaching ``floor x`` its prompt's largest score on at least
    one prompt, with its score on *every* prompt, plus each prompt's largest score.

    That is everything a selection rule with a coarse threshold ``>= floor`` needs (the coarse sets, the counts,
    the mean score that orders ties), so a sweep can store it per fact (as Dai et al.'s code stores its triplets
    above ``0.1 x max``) and run :func:`select` again later with another rule, without attributing again. The
    selection from candidates equals the selection from the full scores exactly.

    Attributes:
        neurons: the candidate neurons.
        scores: ``[prompt, candidate]`` float32 scores.
        maxima: ``[prompt]`` each prompt's largest score over every attributed neuron.
        floor: the fraction of the maximum kept.

    Example:
        >>> cands = Candidates.from_scores(torch.tensor([[[0.05, 1.0], [0.5, 0.0]]]), layers=[3, 4])
        >>> cands.neurons, cands.coarse(0.2)
        ([L3N1, L4N0], [[L3N1, L4N0]])
        >>> Candidates.from_json(cands.to_json()) == cands
        True
    """

    neurons: list[Neuron]
    scores: Float[Tensor, "prompt candidate"] = field(repr=False)
    maxima: Float[Tensor, " prompt"] = field(repr=False)
    floor: float = CANDIDATE_FLOOR

    @classmethod
    def from_scores(
        cls, scores: Float[Tensor, "prompt layer d_mlp"], layers: Sequence[int], floor: float = CANDIDATE_FLOOR
    ) -> Candidates:
        """Keep the neurons reaching ``floor x max`` (float64 ``>=``, the released code's rule) on some prompt."""
        _check_fraction("floor", floor, allow_zero=False)
        if not isinstance(scores, Tensor) or scores.ndim != 3 or scores.shape[1] != len(layers):
            shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(f"scores must be [prompt, layer, d_mlp] with one row per layer of {list(layers)}: {shape}")
        _check_finite(scores)
        flat = scores.detach().float().cpu().flatten(1)
        maxima = flat.max(-1).values
        keep = _coarse_mask(flat, maxima, floor, inclusive=True).any(0)
        index = torch.nonzero(keep).flatten()
        d_mlp = scores.shape[-1]
        neurons = [Neuron(int(layers[int(i) // d_mlp]), int(i) % d_mlp) for i in index]
        return cls(neurons, flat[:, index].contiguous(), maxima, float(floor))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Candidates):
            return NotImplemented
        return (
            self.neurons == other.neurons
            and self.floor == other.floor
            and torch.equal(self.scores, other.scores)
            and torch.equal(self.maxima, other.maxima)
        )

    def coarse(self, threshold: float, *, inclusive: bool = False) -> list[list[Neuron]]:
        """Each prompt's coarse neurons (as :func:`coarse_neurons` on the full scores; ``threshold >= floor``)."""
        _check_fraction("threshold", threshold, allow_zero=False)
        if threshold < self.floor:
            raise ValueError(f"these candidates keep scores from {self.floor} x max; threshold {threshold} is lower")
        mask = _coarse_mask(self.scores, self.maxima, threshold, inclusive)
        out = []
        for row, keep in zip(self.scores, mask, strict=True):
            picked = torch.nonzero(keep).flatten()
            order = row[picked].argsort(descending=True, stable=True)
            out.append([self.neurons[int(i)] for i in picked[order]])
        return out

    def strength(self) -> dict[Neuron, float]:
        """Each candidate's mean score over the prompts (orders neurons with equal counts)."""
        means = self.scores.mean(0).tolist()
        return dict(zip(self.neurons, means, strict=True))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (scores as float32 values, so :meth:`from_json` restores them exactly)."""
        return dict(
            floor=self.floor,
            maxima=self.maxima.tolist(),
            neurons=[str(n) for n in self.neurons],
            scores=self.scores.tolist(),
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Candidates:
        """Rebuild candidates saved with :meth:`to_json`."""
        if not isinstance(data, Mapping) or not {"floor", "maxima", "neurons", "scores"} <= set(data):
            raise ValueError("not a Candidates record: needs 'floor', 'maxima', 'neurons' and 'scores'")
        maxima = torch.tensor(data["maxima"], dtype=torch.float32)
        scores = torch.tensor(data["scores"], dtype=torch.float32).reshape(len(maxima), len(data["neurons"]))
        return cls(to_neurons(list(data["neurons"]), allow_empty=True), scores, maxima, float(data["floor"]))


# --------------------------------------------------------------------------------------------------------------
# Rules: one resolution of a variant's parameters, one refinement dispatch
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A selection rule with its parameters resolved (a variant's defaults, overridden by explicit arguments)."""

    variant: str
    threshold: float
    share: float
    adaptive: tuple[int, int] | None
    fallback: str = "closest"

    @property
    def inclusive(self) -> bool:
        """The released code compares with ``>=`` (and keeps zero scores of a prompt whose max is 0)."""
        return self.variant == "dai"

    @classmethod
    def of(
        cls,
        variant: str = "adaptive",
        threshold: float = _UNSET,
        share: float = _UNSET,
        adaptive: tuple[int, int] | None = _UNSET,
        fallback: str = "closest",
    ) -> Rule:
        """Resolve and check a rule: ``Rule.of("dai")``, ``Rule.of("adaptive", share=0.6)``."""
        defaults = VARIANTS[_check_variant(variant)]
        threshold = defaults["threshold"] if threshold is _UNSET else threshold
        share = defaults["share"] if share is _UNSET else share
        adaptive = defaults["adaptive"] if adaptive is _UNSET else adaptive
        _check_fraction("threshold", threshold, allow_zero=False)
        _check_fraction("share", share, allow_zero=True)
        if adaptive is not None:
            adaptive = _check_range(adaptive)
        if fallback not in ("closest", "none"):
            raise ValueError(f"fallback must be 'closest' or 'none', got {fallback!r}")
        return cls(variant, threshold, share, adaptive, fallback)

    def describe(self) -> str:
        """One line naming the rule (with its parameters when they differ from the variant's defaults)."""
        defaults = VARIANTS[self.variant]
        changed = [
            f"{k}={getattr(self, k)}" for k in ("threshold", "share", "adaptive") if getattr(self, k) != defaults[k]
        ]
        return RULES[self.variant] + (f" (changed: {', '.join(changed)})" if changed else "")


class Selected(NamedTuple):
    """One fact's selection: its neurons, the share used, the moves of the share, the fallback taken (adaptive),
    and for the released rule the relation's average count and its relation neurons (reported, not removed)."""

    neurons: list[Neuron]
    share: float
    adjustments: int
    fallback: str = ""
    relation_average: float | None = None
    relation_neurons: tuple[Neuron, ...] = ()


def _refine_facts(
    coarse_by_fact: Sequence[Sequence[Sequence[Neuron]]],
    strength_by_fact: Sequence[Mapping[Neuron, float]],
    relations: Sequence[str | None],
    rule: Rule,
) -> list[Selected]:
    """The refinement of every fact under ``rule``: per relation for the released rule, per fact otherwise."""
    if rule.variant != "dai":
        out = []
        for coarse, strength in zip(coarse_by_fact, strength_by_fact, strict=True):
            refined = refine(coarse, rule.share, adaptive=rule.adaptive, strength=strength, fallback=rule.fallback)
            out.append(Selected(*refined))
        return out
    groups: dict[str | None, list[int]] = {}
    for i, relation in enumerate(relations):
        groups.setdefault(relation, []).append(i)
    selected: list[Selected] = [Selected([], rule.share, 0)] * len(coarse_by_fact)
    for indices in groups.values():
        refined = refine_relation(
            [coarse_by_fact[i] for i in indices],
            rule.share,
            adaptive=rule.adaptive,
            strength_by_fact=[strength_by_fact[i] for i in indices],
        )
        for j, i in enumerate(indices):
            selected[i] = Selected(
                refined.neurons[j],
                refined.share,
                refined.adjustments,
                "",
                refined.average,
                tuple(refined.relation_neurons),
            )
    return selected


def select(
    candidates: Sequence[Candidates],
    *,
    variant: Variant = "adaptive",
    relations: Sequence[str | None] | None = None,
    threshold: float = _UNSET,
    share: float = _UNSET,
    adaptive: tuple[int, int] | None = _UNSET,
    fallback: Literal["closest", "none"] = "closest",
) -> list[Selected]:
    """Select the knowledge neurons of many facts from their stored :class:`Candidates`, under any rule.

    The same numbers as :func:`find_knowledge_neurons` / :func:`find_knowledge_neurons_many` (``relation_share=
    None``) on the full scores, without attributing again: a sweep stores candidates once and any rule can be run
    on them later.

    Args:
        candidates: one :class:`Candidates` per fact.
        variant: ``"adaptive"``, ``"dai"`` (adapted per relation) or ``"eleuther"`` (see the module docstring).
        relations: each fact's relation (the released rule adapts over a relation's facts; default: all facts
            form one relation).
        threshold, share, adaptive, fallback: as in :func:`find_knowledge_neurons`.

    Returns:
        One :class:`Selected` per fact, in order.

    Example:
        >>> scores = torch.tensor([[[1.0, 0.3, 0.0]], [[1.0, 0.0, 0.25]], [[0.9, 0.3, 1.0]]])  # 3 prompts
        >>> stored = Candidates.from_scores(scores, layers=[5])
        >>> select([stored], variant="dai")[0].neurons       # coarse on at least 3 prompts, whatever the share
        [L5N0]
        >>> select([stored], variant="adaptive")[0].neurons  # 1 neuron on > 2.1 of 3: too few; share 0.65 keeps 3
        [L5N0, L5N2, L5N1]
    """
    rule = Rule.of(variant, threshold, share, adaptive, fallback)
    items = list(candidates)
    if not items or not all(isinstance(c, Candidates) for c in items):
        raise TypeError("candidates must be a non-empty list of kn_lens.neurons.Candidates (one per fact)")
    relations = [None] * len(items) if relations is None else list(relations)
    if len(relations) != len(items):
        raise ValueError(f"{len(relations)} relations for {len(items)} facts; give one relation per fact")
    coarse = [c.coarse(rule.threshold, inclusive=rule.inclusive) for c in items]
    return _refine_facts(coarse, [c.strength() for c in items], relations, rule)


def drop_shared(
    neurons: Sequence[Neuron], negative_coarse: Sequence[Iterable[Neuron]], share: float = 0.0
) -> tuple[list[Neuron], list[Neuron]]:
    """Split ``neurons`` into (kept, dropped): dropped when coarse on more than ``share`` of the negative prompts.

    Example:
        >>> drop_shared([Neuron(1, 2), Neuron(0, 5)], [[Neuron(1, 2)], []], share=0.0)
        ([L0N5], [L1N2])
    """
    _check_fraction("negative_share", share, allow_zero=True)
    sets = [set(c) for c in negative_coarse]
    limit = share * len(sets)
    dropped = [n for n in neurons if sum(n in c for c in sets) > limit]
    return [n for n in neurons if n not in dropped], dropped


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
        params: the parameters used: ``variant`` and ``rule`` (which selection rule, in words), ``threshold``,
            ``share`` as given and ``share_used``, ``adjustments``, ``adaptive``, ``attribution`` and its keywords;
            for the released rule the relation's ``relation_average`` and ``relation_neurons``.
        dropped: neurons removed by the filters: ``{"negatives": [...], "relation": [...]}``.
        relation: the fact's relation, when known (set by :func:`find_knowledge_neurons_many`).
        name: a label for the fact (e.g. ``"capital: France"``).
        negative_coarse: the coarse neurons of each negative prompt (when ``negatives`` were given).

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
    negative_coarse: list[list[Neuron]] = field(default_factory=list, repr=False)

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
        if self.negative_coarse:
            data["negative_coarse"] = [[str(n) for n in c] for c in self.negative_coarse]
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
            negative_coarse=[to_neurons(list(c), model, allow_empty=True) for c in data.get("negative_coarse") or []],
        )

    def candidates(self, floor: float = CANDIDATE_FLOOR) -> Candidates:
        """The attribution kept sparse (:class:`Candidates`): enough to re-run any rule later with :func:`select`.

        Example:
            >>> select([kns.candidates()], variant="adaptive")[0].neurons == kns.neurons
            True
        """
        return Candidates.from_scores(self.scores, self.layers, floor)

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
    _check_fraction("negative_share", negative_share, allow_zero=True)
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
    (selected,) = _refine_facts([coarse], [_strength(result)], [None], rule)
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
        _check_relation_share(relation_share, "relation_share")
    kwargs.setdefault("progress", False)
    rule_kwargs = dict(
        variant=rule.variant,
        threshold=rule.threshold,
        share=rule.share,
        adaptive=rule.adaptive,
        fallback=rule.fallback,
    )
    results = []
    for item in tqdm(items, desc="facts", disable=not progress):
        result = find_knowledge_neurons(model, list(item.prompts), item.target, **rule_kwargs, **kwargs)
        result.relation = item.relation
        result.name = item.name or (f"{item.relation}: {result.target}" if item.relation else result.target)
        results.append(result)
    if rule.variant == "dai":  # the released rule adapts over the relation's facts together
        selected = _refine_facts(
            [r.coarse for r in results], [_strength(r) for r in results], [r.relation for r in results], rule
        )
        results = [_with_selection(r, s) for r, s in zip(results, selected, strict=True)]
    if relation_share is not None:
        results = relation_filter(results, relation_share)
    return results


def _check_relation_share(share: Any, name: str) -> None:
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0.0 <= share < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1) (default 0.1), got {share!r}")


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
    "RULES",
    "VARIANTS",
    "Candidates",
    "FactPrompts",
    "KnowledgeNeurons",
    "Refined",
    "RelationRefined",
    "Rule",
    "Selected",
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
