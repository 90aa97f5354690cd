"""Perturbation: does the task break when the skill neurons are disturbed, and not when random ones are?

Context:
    Predictivity is correlational. Wang et al.'s causal test perturbs the top ``x`` % of neurons by predictivity
    at the prompt positions, with Gaussian noise, zero or their train mean (:func:`kn_lens.hooks.perturb`), and
    compares the task accuracy with the same perturbation of as many *random* neurons, drawn per layer in the
    same numbers (:func:`random_mask`). :func:`perturbation_curve` does both for several fractions and seeds and
    returns one tidy DataFrame (``fraction, n_neurons, selection, seed, accuracy``).

Intuition:
    If the task's answer really runs through the skill neurons, disturbing them costs much more accuracy than
    disturbing random neurons of the same layers; if both curves fall together, the neurons were merely
    correlated with the label.

Caveats:
    Perturbation happens at ``skill.positions`` under the prompt predictivity was measured with; another prompt
    (other template, placement or soft embeddings) would put those positions and thresholds on other tokens, so
    it is refused. A tiny model may shrug off every perturbation (the tiny BERT does): a flat curve for both
    selections says nothing either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import pandas as pd
import torch
from torch import Tensor

from kn_lens import hooks as hooks_module
from kn_lens._device import evaluating
from kn_lens._progress import progress_bar
from kn_lens._typing import Model, check_model
from kn_lens.inputs import check_batch_size, check_choice, check_int, check_number, check_sequence, to_layers
from kn_lens.skill.predicting import Predictivity, _check_fraction, _top_mask
from kn_lens.skill.prompting import HardPrompt, PromptLike, SoftPrompt, as_prompt
from kn_lens.skill.tasks import Task
from kn_lens.skill.tuning import accuracy


def random_mask(like: Tensor, *, seed: int = 0, exclude: Tensor | None = None) -> Tensor:
    """A random boolean mask with the same number of neurons per layer as ``like`` (the control).

    Args:
        like: a ``[n_layers, d_mlp]`` boolean mask (e.g. ``Predictivity.mask(0.02)``).
        seed: the seed.
        exclude: neurons never drawn (default: ``like`` itself); pass an all-False mask to allow them.
    """
    if not isinstance(like, Tensor) or like.dtype != torch.bool or like.ndim != 2:
        raise TypeError("like must be a boolean [n_layers, d_mlp] mask")
    exclude = like if exclude is None else exclude
    generator = torch.Generator().manual_seed(seed)
    out = torch.zeros_like(like)
    for layer in range(like.shape[0]):
        k = int(like[layer].sum())
        if not k:
            continue
        allowed = (~exclude[layer]).nonzero().flatten()
        if len(allowed) < k:
            raise ValueError(
                f"layer {layer} has only {len(allowed)} neurons left to draw {k} from; for large selections pass "
                "exclude=torch.zeros_like(like) to draw from all neurons"
            )
        out[layer, allowed[torch.randperm(len(allowed), generator=generator)[:k]]] = True
    return out


def _same_prompt(model: Model, skill: Predictivity, prompt: PromptLike) -> HardPrompt | SoftPrompt:
    """The prompt to perturb under: ``skill``'s own (None), or one that reads the same activations (same template,
    placement and soft embeddings; the verbalizer may differ)."""
    measured = skill.prompt
    if prompt is None:
        return measured if measured is not None else as_prompt(model, None)
    prompt = as_prompt(model, prompt)
    if measured is None:
        return prompt
    same = (
        type(prompt) is type(measured)
        and prompt.template == measured.template
        and (
            isinstance(prompt, HardPrompt)
            or (
                prompt.placement == measured.placement  # type: ignore[union-attr]
                and prompt.embeddings.shape == measured.embeddings.shape  # type: ignore[union-attr]
                and torch.equal(prompt.embeddings.detach().cpu(), measured.embeddings.detach().cpu())  # type: ignore[union-attr]
            )
        )
    )
    if not same:
        raise ValueError(
            f"prompt differs from the one predictivity was measured with ({_describe(measured)} vs "
            f"{_describe(prompt)}): its positions {skill.positions} and thresholds belong to that prompt; pass "
            "prompt=None (or the same prompt), or measure predictivity with this one"
        )
    return prompt


def _describe(prompt: HardPrompt | SoftPrompt) -> str:
    if isinstance(prompt, SoftPrompt):
        return f"a {prompt.n_tokens}-token soft prompt ({prompt.placement}) in {prompt.template!r}"
    return f"the template {prompt.template!r}"


@evaluating
def perturbation_curve(
    model: Model,
    task: Task,
    skill: Predictivity,
    *,
    prompt: PromptLike = None,
    fractions: Sequence[float] = (0.01, 0.02, 0.05, 0.1),
    kind: Literal["gaussian", "zero", "mean"] = "mean",
    std: float = 0.1,
    seeds: Sequence[int] = (0, 1, 2),
    layers: Sequence[int] | None = None,
    split: str = "test",
    batch_size: int = 32,
    progress: bool = True,
) -> pd.DataFrame:
    """Task accuracy after perturbing the top ``x`` skill neurons vs as many random neurons, for each ``x``.

    The neurons are perturbed at ``skill.positions`` (the prompt positions predictivity was measured at) with
    :func:`kn_lens.hooks.perturb`; ``kind="mean"`` uses the per-position train means (``skill.thresholds``).
    Random neurons have the same count per layer as the skill neurons and exclude them; each seed draws new
    random neurons (and new noise for ``"gaussian"``).

    Args:
        model, task: the model and task.
        skill: the :class:`Predictivity`.
        prompt: the prompt the accuracy is measured with: the one ``skill`` was measured with (None: that one). A
            prompt with another template, placement or soft embeddings is refused: ``skill.positions`` and its
            thresholds belong to the prompt they were read under (the verbalizer may differ).
        fractions: fractions of all neurons (of ``layers``) to perturb.
        kind: ``"gaussian"``, ``"zero"`` or ``"mean"``.
        std: the noise's standard deviation for ``"gaussian"``.
        seeds: random-neuron (and noise) seeds.
        layers: only perturb neurons in these layers (None: the layers ``skill`` covers).
        split: which split's accuracy.
        batch_size, progress: as usual.

    Returns:
        A DataFrame: ``fraction, n_neurons, selection ("none" / "skill" / "random"), seed, accuracy``.

    Example:
        >>> curve = perturbation_curve(bert, task, skill, prompt=soft, fractions=[0.01, 0.05], progress=False)
        >>> curve.columns.tolist(), len(curve)  # the clean row, then 1 skill + 3 random rows per fraction
        (['fraction', 'n_neurons', 'selection', 'seed', 'accuracy'], 9)
        >>> curve.groupby(["fraction", "selection"]).accuracy.mean().unstack()  # the tiny BERT shrugs it off
        selection  none  random  skill
        fraction
        0.00        1.0     NaN    NaN
        0.01        NaN     1.0    1.0
        0.05        NaN     1.0    1.0
    """
    check_model(model)
    if not isinstance(skill, Predictivity):
        raise TypeError("skill must be the Predictivity result of kn_lens.skill.predictivity")
    if not isinstance(task, Task):
        raise TypeError(f"task must be a kn_lens.skill.Task, got {type(task).__name__}")
    task.split(split)
    prompt = _same_prompt(model, skill, prompt)
    fractions = [_check_fraction(f) for f in check_sequence(fractions, "fractions", what="fractions")]
    if not fractions:
        raise ValueError("fractions is empty; pass at least one fraction, e.g. [0.01, 0.05]")
    check_choice(kind, "kind", ("gaussian", "zero", "mean"))
    check_number(std, "std", low=0)
    seeds = [check_int(seed, "seeds") for seed in check_sequence(seeds, "seeds", what="ints")]
    batch_size = check_batch_size(batch_size)
    if skill.n_layers != model.cfg.n_layers or skill.d_mlp != model.cfg.d_mlp:
        raise ValueError(
            f"skill has {skill.n_layers} layers x {skill.d_mlp} neurons, the model {model.cfg.n_layers} x "
            f"{model.cfg.d_mlp}: it was measured on another model"
        )
    if not seeds:
        raise ValueError("seeds is empty; pass at least one seed")
    allowed = torch.zeros(skill.n_layers, skill.d_mlp, dtype=torch.bool)
    allowed[to_layers(model, layers) if layers is not None else skill.layers] = True
    scores = skill.scores.float().masked_fill(~allowed, -math.inf)
    pool = int(allowed.sum())
    rows = [dict(fraction=0.0, n_neurons=0, selection="none", seed=-1)]
    rows[0]["accuracy"] = accuracy(model, task, prompt=prompt, split=split, batch_size=batch_size, progress=False)
    steps = [(f, sel, s) for f in fractions for sel, s in [("skill", seeds[0])] + [("random", s) for s in seeds]]
    for fraction, selection, seed in progress_bar(steps, "perturbation curve", enabled=progress):
        k = max(1, round(fraction * pool))
        top = _top_mask(scores, k)  # the same tie order as Predictivity.mask
        chosen = top if selection == "skill" else random_mask(top, seed=seed)
        hooks = hooks_module.perturb(
            chosen, kind, std=std, seed=seed, positions=list(skill.positions),
            mean_cache=skill.thresholds if kind == "mean" else None,
        )  # fmt: skip
        acc = accuracy(model, task, prompt=prompt, split=split, fwd_hooks=hooks, batch_size=batch_size, progress=False)
        rows.append(dict(fraction=float(fraction), n_neurons=k, selection=selection, seed=seed, accuracy=acc))
    return pd.DataFrame(rows)


__all__ = ["perturbation_curve", "random_mask"]
