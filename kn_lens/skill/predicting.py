"""Predictivity: how well one neuron's activation at the prompt tells the two labels apart (Wang et al. 2022).

Context:
    For neuron ``n`` and prompt position ``p``, the threshold is ``n``'s mean activation at ``p`` over the train
    split; "activation above the threshold means label 1" (or, with sign -1, "below means label 1") is a
    one-neuron classifier, and its dev accuracy with the better sign is ``n``'s predictivity at ``p``. Positions
    are aggregated by mean (or min: a neuron must predict at every position). :func:`predictivity` computes it
    for every ``mlp_post`` neuron in two streamed passes (train: running sums; dev: running counts); the
    :class:`Predictivity` result ranks the neurons (:meth:`~Predictivity.top`, :meth:`~Predictivity.mask`) and
    keeps the thresholds, which :func:`kn_lens.skill.perturbation_curve` uses as the "mean" perturbation.

Intuition:
    A soft prompt is the same for every input, so a neuron at a prompt position sees the input only through
    attention. When such a neuron still sorts reviews by sentiment, the model has routed the task's answer
    through it: a candidate skill neuron.

Caveats:
    The sign is chosen on the same dev split whose accuracy is reported (as in the paper), so even a useless
    neuron scores at least about 0.5, and with a small dev split the best of thousands of neurons scores high by
    chance. Compare the best neurons with the bulk, and perturb them against random neurons
    (:func:`kn_lens.skill.perturbation_curve`) before calling any of them a skill neuron.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from kn_lens._device import evaluating
from kn_lens._typing import Model, Neuron, check_model
from kn_lens.inputs import check_count, check_number, index_positions, to_layers
from kn_lens.skill.prompting import HardPrompt, PromptLike, SoftPrompt, _run, as_prompt
from kn_lens.skill.tasks import Task, _check_pair, _hold_out

Aggregate = Literal["mean", "min"]


def _check_fraction(fraction: float) -> float:
    return check_number(fraction, "fraction", low=0, high=1, low_open=True)


def _best_first(scores: Tensor) -> Tensor:
    """Indices of a 1-D score tensor, best first; ties in index order (so ``top``, ``mask`` and ``to_frame`` agree
    on which of equally predictive neurons come first)."""
    return torch.sort(scores, descending=True, stable=True).indices


def _top_mask(scores: Tensor, k: int) -> Tensor:
    """Boolean mask, shaped like ``scores``, of its ``k`` best entries (ties in index order; NaN never first)."""
    mask = torch.zeros(scores.shape, dtype=torch.bool)
    mask.view(-1)[_best_first(torch.nan_to_num(scores.float(), nan=-math.inf).flatten())[:k]] = True
    return mask


@dataclass
class Predictivity:
    """Skill-neuron predictivity of every ``mlp_post`` neuron (see :func:`predictivity`).

    Attributes:
        per_position: ``[n_pos, n_layers, d_mlp]``: dev accuracy of thresholding each neuron at each prompt
            position, with the better sign (NaN in layers not computed).
        thresholds: ``[n_pos, n_layers, d_mlp]``: the train-set mean activations (the thresholds; also the
            per-position means for ``kn_lens.hooks.perturb(..., "mean")``).
        sign: ``[n_pos, n_layers, d_mlp]``: +1 if "above the threshold" predicts label 1, -1 if it predicts 0.
        positions: the prompt positions (>= 0 from the start, < 0 from the end), as in the layout.
        aggregate: ``"mean"`` or ``"min"`` over positions.
        layers: the layers computed.
        n_train, n_dev: examples used for the thresholds and for the accuracies.
        prompt: the prompt the activations were read under (its positions are :attr:`positions`); None when
            unknown (a result made by hand).

    Example:
        ``skill`` is :func:`predictivity` of the tiny BERT's soft prompt (see there):

        >>> skill.scores.shape, skill.positions
        (torch.Size([2, 1024]), (-5, -4, -3, -2))
        >>> int(skill.mask(0.01).sum()), len(skill.top(0.01)), skill.top(k=2)
        (20, 20, [L...N..., L...N...])
        >>> skill.to_frame(top=3).columns.tolist()
        ['neuron', 'layer', 'index', 'predictivity', 'best_position', 'best_position_accuracy', 'sign', 'threshold']
    """

    per_position: Tensor
    thresholds: Tensor
    sign: Tensor
    positions: tuple[int, ...]
    aggregate: str = "mean"
    layers: list[int] = field(default_factory=list)
    n_train: int = 0
    n_dev: int = 0
    prompt: HardPrompt | SoftPrompt | None = field(default=None, repr=False, compare=False)

    @property
    def scores(self) -> Float[Tensor, "n_layers d_mlp"]:
        """Predictivity per neuron, aggregated over prompt positions (mean or min)."""
        if self.aggregate == "min":
            return self.per_position.min(0).values
        return self.per_position.mean(0)

    @property
    def n_layers(self) -> int:
        return int(self.per_position.shape[1])

    @property
    def d_mlp(self) -> int:
        return int(self.per_position.shape[2])

    def _count(self, fraction: float, per_layer: bool) -> int:
        fraction = _check_fraction(fraction)
        pool = self.d_mlp if per_layer else len(self.layers) * self.d_mlp
        return max(1, round(fraction * pool))

    def mask(self, fraction: float, *, per_layer: bool = False) -> Tensor:
        """Boolean ``[n_layers, d_mlp]`` mask of the top ``fraction`` of neurons by predictivity.

        Args:
            fraction: in (0, 1]; the paper uses 1-20%. At least one neuron is selected.
            per_layer: take the top fraction of every computed layer (what :func:`prune` wants) instead of the
                top fraction of all neurons.
        """
        k = self._count(fraction, per_layer)
        if not per_layer:
            return _top_mask(self.scores, k)
        mask = torch.zeros(self.n_layers, self.d_mlp, dtype=torch.bool)
        for layer in self.layers:
            mask[layer] = _top_mask(self.scores[layer], k)
        return mask

    def top(self, fraction: float | None = None, *, k: int | None = None) -> list[Neuron]:
        """The best neurons, best first: the top ``fraction`` of all neurons, or the top ``k``."""
        if (fraction is None) == (k is None):
            raise ValueError("pass exactly one of fraction=... or k=...")
        k = check_count(k, "k", minimum=1) if k is not None else self._count(fraction, False)  # type: ignore[arg-type]
        scores = torch.nan_to_num(self.scores.float(), nan=-math.inf).flatten()
        order = _best_first(scores)[: min(k, len(self.layers) * self.d_mlp)].tolist()
        return [Neuron(i // self.d_mlp, i % self.d_mlp) for i in order]

    def to_frame(self, top: int | None = None) -> pd.DataFrame:
        """One row per neuron (best first): neuron, layer, index, predictivity, best position, its sign and
        threshold. ``top`` keeps only the best rows."""
        scores = self.scores
        neurons = self.top(1.0) if top is None else self.top(k=check_count(top, "top", minimum=1))
        best_pos = self.per_position.argmax(0)
        rows = []
        for n in neurons:
            p = int(best_pos[n.layer, n.index])
            rows.append(
                dict(
                    neuron=str(n),
                    layer=n.layer,
                    index=n.index,
                    predictivity=float(scores[n.layer, n.index]),
                    best_position=self.positions[p],
                    best_position_accuracy=float(self.per_position[p, n.layer, n.index]),
                    sign=int(self.sign[p, n.layer, n.index]),
                    threshold=float(self.thresholds[p, n.layer, n.index]),
                )
            )
        return pd.DataFrame(rows)

    def figure(self, top_k: int = 20):
        """Plotly figure: predictivity by layer (best and mean) and the best neurons."""
        from kn_lens import plotting

        return plotting.skill_predictivity(self, top_k=top_k)

    def __repr__(self) -> str:
        best = self.top(k=1)[0]
        return (
            f"Predictivity({len(self.layers)} layers x {self.d_mlp} neurons, {len(self.positions)} prompt positions, "
            f"aggregate={self.aggregate!r}, best {best} = {float(self.scores[best]):.3f}, "
            f"n_train={self.n_train}, n_dev={self.n_dev})"
        )


@evaluating
@torch.inference_mode()
def predictivity(
    model: Model,
    task_or_texts: Task | Sequence[str],
    labels: Sequence[int] | None = None,
    *,
    prompt: PromptLike = None,
    positions: Literal["prompt", "last"] | Sequence[int] = "prompt",
    aggregate: Aggregate = "mean",
    layers: Sequence[int] | None = None,
    dev: float = 0.3,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
) -> Predictivity:
    """Predictivity of every ``mlp_post`` neuron for a binary task, at the prompt positions (Wang et al.).

    For neuron ``n`` and prompt position ``p``: the threshold ``t`` is ``n``'s mean activation at ``p`` over the
    train split; predicting label 1 when the activation is above ``t`` (sign +1) or below it (sign -1), the
    dev accuracy of the better sign is ``n``'s predictivity at ``p``. Positions are then aggregated by
    ``aggregate``. Two streamed passes (train: running sums; dev: running counts), so memory does not grow
    with the data.

    Args:
        model: the model.
        task_or_texts: a :class:`Task` (train and dev splits are used), or texts with ``labels``, which are then
            split into train and dev (``dev`` fraction, seeded, stratified).
        labels: 0/1 labels when texts are given.
        prompt: a :class:`SoftPrompt` (positions: its tokens), a :class:`HardPrompt` or template str
            (positions: its template tokens; causal models: those after the text), or None (the plain text:
            the last token of a causal model, the appended ``[MASK]`` of an encoder).
        positions: ``"prompt"`` (all prompt positions), ``"last"`` (the last one), or indices into the prompt
            positions (``[0, -1]``: first and last).
        aggregate: ``"mean"`` or ``"min"`` over positions.
        layers: the layers to compute (None: all); others are NaN.
        dev: dev fraction when splitting plain texts.
        seed: split seed for plain texts.
        batch_size: texts per forward pass.
        progress: show progress bars.

    Returns:
        A :class:`Predictivity`.

    Raises:
        ValueError: labels not binary, lengths differ, an empty split, unknown aggregation or positions.

    Example:
        At the 4 soft-prompt positions of the tiny BERT (``task`` and ``soft`` as in :func:`train_soft_prompt`):

        >>> skill = predictivity(bert, task, prompt=soft, progress=False)
        >>> skill
        Predictivity(2 layers x 1024 neurons, 4 prompt positions, aggregate='mean', best L...N... = 1.000,
                     n_train=604, n_dev=202)
        >>> skill.top(k=3)
        [L...N..., L...N..., L...N...]
        >>> float(skill.scores.median())  # number is everywhere in this tiny model: most neurons predict it
        0.9...
    """
    check_model(model)
    if aggregate not in ("mean", "min"):
        raise ValueError(f"unknown aggregation {aggregate!r}; use 'mean' or 'min'")
    if isinstance(task_or_texts, Task):
        if labels is not None:
            raise ValueError("labels are part of the Task; pass labels only with plain texts")
        train, dev_split = task_or_texts.train, task_or_texts.dev
    else:
        if labels is None:
            raise ValueError("pass labels=... with plain texts (or a kn_lens.skill.Task)")
        pair = _check_pair(task_or_texts, labels)
        check_number(dev, "dev", low=0, high=1, low_open=True, high_open=True)
        train, dev_split = _hold_out(pair, dev, seed)
        if not len(train) or not len(dev_split):
            raise ValueError(f"{len(pair)} examples are too few to split into train and dev")
    prompt = as_prompt(model, prompt)
    all_positions = prompt.layout(model).positions
    chosen = index_positions(positions, len(all_positions), all_word="prompt")
    layer_list = to_layers(model, layers)
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp

    sums = torch.zeros(len(all_positions), len(layer_list), d_mlp, dtype=torch.float64)
    for _chunk, _, acts in _run(
        model, prompt, train.texts, batch_size=batch_size, capture=layer_list, progress=progress,
        desc="predictivity: train means",
    ):  # fmt: skip
        sums += acts.double().sum(0)
    means = (sums / len(train)).float()

    y = torch.tensor(dev_split.labels, dtype=torch.bool)
    counts = {
        key: torch.zeros(len(all_positions), len(layer_list), d_mlp, dtype=torch.int64)
        for key in ("gt1", "gt0", "lt1", "lt0")
    }
    for chunk, _, acts in _run(
        model, prompt, dev_split.texts, batch_size=batch_size, capture=layer_list, progress=progress,
        desc="predictivity: dev accuracy",
    ):  # fmt: skip
        above, below = acts > means, acts < means
        ones = y[chunk][:, None, None, None]
        counts["gt1"] += (above & ones).sum(0)
        counts["gt0"] += (above & ~ones).sum(0)
        counts["lt1"] += (below & ones).sum(0)
        counts["lt0"] += (below & ~ones).sum(0)
    n_dev, n_zero = len(dev_split), int((~y).sum())
    plus = (counts["gt1"] + (n_zero - counts["gt0"])).double() / n_dev  # above -> 1, at or below -> 0
    minus = (counts["lt1"] + (n_zero - counts["lt0"])).double() / n_dev  # below -> 1, at or above -> 0
    sign_part = torch.where(plus >= minus, 1, -1).to(torch.int8)
    acc_part = torch.maximum(plus, minus).float()

    shape = (len(chosen), n_layers, d_mlp)
    per_position = torch.full(shape, math.nan)
    thresholds = torch.full(shape, math.nan)
    sign = torch.zeros(shape, dtype=torch.int8)
    idx = torch.tensor(chosen)
    per_position[:, layer_list] = acc_part[idx]
    thresholds[:, layer_list] = means[idx]
    sign[:, layer_list] = sign_part[idx]
    return Predictivity(
        per_position, thresholds, sign, tuple(all_positions[i] for i in chosen), aggregate, layer_list,
        len(train), n_dev, prompt,
    )  # fmt: skip


__all__ = ["Aggregate", "Predictivity", "predictivity"]
