"""What a selection gives: one fact's :class:`KnowledgeNeurons` and its sparse attribution, :class:`Candidates`.

A :class:`KnowledgeNeurons` result (made by :func:`kn_lens.neurons.find_knowledge_neurons`) keeps everything that
led to its neurons (prompts, scores, coarse sets, parameters, filters) and saves to JSON; :class:`Candidates`
keep only what a rule needs, so that :func:`select` can run any rule of :mod:`kn_lens.selection` again later
without attributing again.

Example:
    >>> cands = Candidates.from_scores(torch.tensor([[[0.05, 1.0], [0.5, 0.0]]]), layers=[3, 4])
    >>> select([cands], variant="eleuther")[0].neurons
    [L3N1, L4N0]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from kn_lens._typing import Model, Neuron, check_model
from kn_lens.inputs import check_number, to_neurons
from kn_lens.prompts import Prompt, make_prompt
from kn_lens.selection import (
    _UNSET,
    CANDIDATE_FLOOR,
    Rule,
    Selected,
    Variant,
    _check_finite,
    _coarse_mask,
    refine_facts,
)

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
        check_number(floor, "floor", low=0, high=1, low_open=True)
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
        check_number(threshold, "threshold", low=0, high=1, low_open=True)
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

    The same numbers as :func:`~kn_lens.neurons.find_knowledge_neurons` /
    :func:`~kn_lens.neurons.find_knowledge_neurons_many` (``relation_share=None``) on the full scores, without
    attributing again: a sweep stores candidates once and any rule can be run on them later.

    Args:
        candidates: one :class:`Candidates` per fact.
        variant: ``"adaptive"``, ``"dai"`` (adapted per relation) or ``"eleuther"`` (see the module docstring).
        relations: each fact's relation (the released rule adapts over a relation's facts; default: all facts
            form one relation).
        threshold, share, adaptive, fallback: as in :func:`~kn_lens.neurons.find_knowledge_neurons`.

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
    return refine_facts(coarse, [c.strength() for c in items], relations, rule)


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
        relation: the fact's relation, when known (set by :func:`~kn_lens.neurons.find_knowledge_neurons_many`).
        name: a label for the fact (e.g. ``"capital: France"``).
        negative_coarse: the coarse neurons of each negative prompt (when ``negatives`` were given).

    Example:
        >>> kns = kn_lens.find_knowledge_neurons(model, paraphrases, " Paris")
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
        share = self.params.get("share_used")
        shown = f"{share:.4g}" if isinstance(share, float) else share  # 0.44999999999999984: the float steps' own
        return (
            f"KnowledgeNeurons({label}target={self.target!r}, prompts={len(self.prompts)}, "
            f"neurons={self.neurons}, share={shown})"
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


__all__ = ["Candidates", "KnowledgeNeurons", "select"]
