"""Selection rules on attribution scores: the coarse step, the refinement, and the named rules' parameters.

The steps of every rule of :mod:`kn_lens.neurons` (which explains the rules, ``"adaptive"``, ``"dai"`` and
``"eleuther"``), as pure functions of scores and coarse sets: :func:`coarse_neurons` (one prompt's neurons above
``threshold x`` its largest score), :func:`refine` (one fact: neurons coarse on enough prompts, the share adapted
per fact), :func:`refine_relation` (the released code: the share adapted over a relation's facts),
:func:`drop_shared` (the negatives filter), and :class:`Rule` (a rule with its parameters resolved). A new
selection rule goes here: its name in ``Variant``, its defaults in :data:`VARIANTS`, its one line in :data:`RULES`,
its refinement in ``refine_facts`` (``kn-lens find --rule`` builds its choices and help from the last two).

Example:
    >>> coarse = [[Neuron(3, 1), Neuron(4, 0)], [Neuron(3, 1)], [Neuron(3, 1), Neuron(4, 2)]]
    >>> refine(coarse, 0.7, adaptive=None).neurons    # coarse on more than 70% of the 3 prompts
    [L3N1]
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from kn_lens._typing import Neuron
from kn_lens.inputs import check_count, check_int, check_number

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
    check_number(threshold, "threshold", low=0, high=1, low_open=True)
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
    if not isinstance(scores, Tensor) or scores.ndim != 2:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a [layer, d_mlp] tensor for one prompt, got {shape}")
    k = check_count(k, "k", minimum=1, maximum=scores.numel(), limit="the number of scores")
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
    check_number(share, "share", low=0, high=1)
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
    check_number(share, "share", low=0, high=1)
    lo, hi = _check_range(adaptive) if adaptive is not None else (-math.inf, math.inf)
    short = sum(len(coarse) < min_prompts for coarse in coarse_by_fact)
    if short:  # faithful (the released rule selects nothing there), but never silent
        warnings.warn(
            f"{short} of {len(coarse_by_fact)} facts have fewer than {min_prompts} prompts: the released rule "
            f"keeps a neuron only when it is coarse on at least {min_prompts} prompts, so those facts get no "
            f"neurons; give each fact at least {min_prompts} paraphrases (or use variant='adaptive')",
            stacklevel=2,
        )
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
        check_number(threshold, "threshold", low=0, high=1, low_open=True)
        check_number(share, "share", low=0, high=1)
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


def refine_facts(
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


def drop_shared(
    neurons: Sequence[Neuron], negative_coarse: Sequence[Iterable[Neuron]], share: float = 0.0
) -> tuple[list[Neuron], list[Neuron]]:
    """Split ``neurons`` into (kept, dropped): dropped when coarse on more than ``share`` of the negative prompts.

    Example:
        >>> drop_shared([Neuron(1, 2), Neuron(0, 5)], [[Neuron(1, 2)], []], share=0.0)
        ([L0N5], [L1N2])
    """
    check_number(share, "negative_share", low=0, high=1)
    sets = [set(c) for c in negative_coarse]
    limit = share * len(sets)
    dropped = [n for n in neurons if sum(n in c for c in sets) > limit]
    return [n for n in neurons if n not in dropped], dropped


__all__ = [
    "ADAPTIVE_MAX",
    "ADAPTIVE_STEP",
    "CANDIDATE_FLOOR",
    "DAI_MIN_PROMPTS",
    "DAI_RELATION_SHARE",
    "RULES",
    "VARIANTS",
    "Refined",
    "RelationRefined",
    "Rule",
    "Selected",
    "Variant",
    "coarse_neurons",
    "drop_shared",
    "refine",
    "refine_facts",
    "refine_relation",
    "top_neurons",
]
