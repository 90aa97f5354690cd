"""Does the integral converge? How the selected knowledge neurons depend on the quadrature of integrated gradients.

Context:
    Integrated gradients is an integral along the path from the baseline to the clean activation; every
    implementation approximates it with a few points. Dai et al. (2022) used a 20-step left Riemann sum, and most
    reimplementations copied it. Whether 20 points are enough is an empirical question, and the answer matters:
    knowledge neurons are chosen by thresholding the scores (coarse: above 0.2 x the prompt's top score; refined:
    coarse on enough paraphrases), so a neuron near the threshold is in or out depending on the rule.

Two measurements answer it without knowing the exact integral:

* **Completeness.** IG's scores of one layer must add up to ``F(clean) - F(baseline)``; what they miss is the
  convergence delta. :func:`~kn_lens.neurons.find_knowledge_neurons` records each prompt's pooled error,
  ``sum_L |delta_L| / sum_L |F(clean) - F(baseline_L)|``, in ``params["completeness"]`` at no extra cost
  (and PARAREL sweep records carry it per fact). A small error is necessary, not sufficient: errors of single
  neurons can cancel in the sum.
* **Stability against a fine reference.** :func:`convergence` selects each fact's neurons with several rules
  and compares them with a fine reference (:data:`PRESETS` ``["converged"]``, a 128-point midpoint rule): the
  Jaccard overlap of the selected sets, and the largest score error relative to the largest reference score.

Intuition:
    The path of a neuron's activation crosses the model's nonlinearities (GELU/SiLU, the softmax of the answer),
    so the integrand can change sharply near one end; a left Riemann sum never visits ``alpha = 1`` and weighs
    the start of the path most. The midpoint rule's error falls as ``1/n^2``; Gauss-Legendre is exact for
    polynomials of degree ``2n - 1`` but its error is not uniform across neurons when the integrand is not
    smooth.

Caveats:
    The reference is itself an approximation: report it beside a second fine rule (e.g. 64-point Gauss-Legendre)
    before calling anything "converged". Everything here is per model: a rule that converges on BERT may not on
    a gated Llama-style MLP.

Cost:
    On kn_lens' fast path a 128-step integral costs about what the research code's plain 20-step loop costs (see
    ``benchmarks/RESULTS.md``, section convergence), so the converged preset is affordable:
    ``find_knowledge_neurons(model, prompts, target, **PRESETS["converged"])``.

Example:
    >>> from kn_lens.evaluation.convergence import convergence, convergence_summary
    >>> from kn_lens.datasets import pararel
    >>> bags = pararel.load(pararel_dir).bags(bert)[:2]                      # two tiny-BERT capital facts
    >>> frame = convergence(bert, bags, settings=[("riemann_left", 3), ("gausslegendre", 8)],
    ...                     reference=dict(method="riemann_middle", n_steps=32), progress=False)
    >>> frame[["fact", "method", "n_steps", "neurons", "jaccard"]]
              fact          method  n_steps  neurons  jaccard
    0   P36-France  riemann_middle       32        5    1.000
    1   P36-France    riemann_left        3        5    0.667
    2   P36-France   gausslegendre        8        5    1.000
    3  P36-Germany  riemann_middle       32        5    1.000
    4  P36-Germany    riemann_left        3        5    0.667
    5  P36-Germany   gausslegendre        8        5    1.000
    >>> convergence_summary(frame)[["method", "n_steps", "facts", "jaccard_mean", "jaccard_min"]]
               method  n_steps  facts  jaccard_mean  jaccard_min
    0  riemann_middle       32      2         1.000        1.000
    1   gausslegendre        8      2         1.000        1.000
    2    riemann_left        3      2         0.667        0.667
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from kn_lens._progress import progress_bar
from kn_lens._typing import Model, check_model
from kn_lens.attribution import METHODS
from kn_lens.inputs import NeuronsLike, check_sequence, to_fact, to_neurons, to_prompts
from kn_lens.neurons import find_knowledge_neurons

PRESETS: dict[str, dict[str, Any]] = {
    "dai": {"method": "riemann_left", "n_steps": 20},
    "converged": {"method": "riemann_middle", "n_steps": 128},
}
"""Quadrature presets for every integrated-gradients function (``**PRESETS["converged"]``): ``"dai"`` is the
papers' 20-step left Riemann sum, ``"converged"`` a 128-point midpoint rule (see the module docstring)."""


QUADRATURES: tuple[tuple[str, int], ...] = (
    ("riemann_left", 20),
    ("riemann_middle", 20),
    ("riemann_middle", 32),
    ("riemann_middle", 64),
    ("gausslegendre", 16),
    ("gausslegendre", 32),
    ("gausslegendre", 64),
)
"""The quadrature rules :func:`convergence` compares by default: Dai et al.'s, then midpoint and Gauss-Legendre
rules. (Formerly ``SETTINGS``, a name the sweeps use for a run's settings; ``SETTINGS`` still works.)"""
SETTINGS = QUADRATURES


COLUMNS = ("fact", "relation", "method", "n_steps", "reference", "prompts", "neurons", "jaccard", "score_error",
           "completeness", "completeness_max", "seconds_per_prompt")  # fmt: skip


def jaccard(a: NeuronsLike, b: NeuronsLike) -> float:
    """``|a & b| / |a | b|`` of two neuron sets (1.0 when both are empty). Neurons in any accepted form
    (``"L1N2"``, ``(1, 2)``, ``Neuron(1, 2)``, a result); one string is one neuron, not a set of characters.

    Example:
        >>> jaccard(["L1N2", "L3N4"], ["L3N4"])
        0.5
        >>> jaccard("L1N2", "L2N1"), jaccard(["L1N2"], [(1, 2)])
        (0.0, 1.0)
    """
    a, b = set(to_neurons(a, allow_empty=True)), set(to_neurons(b, allow_empty=True))
    return 1.0 if not a | b else len(a & b) / len(a | b)


def _fact(item: Any) -> tuple[str, str | None, list[Any], Any]:
    """(name, relation, prompts, target) of a PARAREL bag, a FactPrompts, a tuple or a mapping."""
    fact = to_fact(item, "each fact")
    if not fact.prompts:
        raise ValueError("a fact has no prompts")
    first = fact.prompts[0]
    return fact.name or (first if isinstance(first, str) else first.text), fact.relation, fact.prompts, fact.target


def _check_settings(settings: Sequence[tuple[str, int]], reference: Mapping[str, Any]) -> list[tuple[str, int]]:
    checked = []
    for item in [(reference.get("method"), reference.get("n_steps")), *settings]:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise ValueError(f"each setting must be a (method, n_steps) pair, got {item!r}")
        method, steps = item
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r} in settings; choose one of {', '.join(METHODS)}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"n_steps must be an int >= 1, got {steps!r} (method {method!r})")
        checked.append((method, steps))
    if set(reference) - {"method", "n_steps"}:
        raise ValueError(f"reference takes 'method' and 'n_steps' only, got {sorted(reference)}")
    return checked


def convergence(
    model: Model,
    facts: Sequence[Any],
    *,
    settings: Sequence[tuple[str, int]] = SETTINGS,
    reference: Mapping[str, Any] = PRESETS["converged"],
    progress: bool = True,
    **find_kwargs: Any,
) -> pd.DataFrame:
    """Select each fact's knowledge neurons with several quadrature rules and compare them with a fine reference.

    Args:
        model: the model.
        facts: PARAREL bags, :class:`~kn_lens.neurons.FactPrompts`, ``(prompts, target[, relation])`` tuples or
            mappings (as :func:`~kn_lens.neurons.find_knowledge_neurons_many` takes).
        settings: ``(method, n_steps)`` rules to compare (methods of :data:`kn_lens.attribution.METHODS`).
        reference: the rule the others are compared with (default :data:`PRESETS` ``["converged"]``).
        progress: a progress bar over facts.
        **find_kwargs: more keywords for :func:`~kn_lens.neurons.find_knowledge_neurons` (``layers``,
            ``threshold``, ``variant``, ...); not ``method``/``n_steps``.

    Returns:
        One row per fact and rule, the reference first (``reference`` True): ``fact, relation, method, n_steps,
        reference, prompts, neurons`` (how many selected), ``jaccard`` (selected set vs the reference's),
        ``score_error`` (max |score - reference score| / max |reference score|, over the fact's prompts),
        ``completeness`` / ``completeness_max`` (mean / max over prompts of the pooled completeness error),
        ``seconds_per_prompt`` (attribution time).

    Raises:
        ValueError: an unknown method, ``n_steps < 1``, ``method``/``n_steps`` in ``find_kwargs``, no facts.
    """
    check_model(model)
    clash = {"method", "n_steps", "attribution", "scores", "return_convergence_delta"} & set(find_kwargs)
    if clash:
        raise ValueError(f"convergence sets {sorted(clash)} itself; pass rules as settings=[(method, n_steps)]")
    if not isinstance(reference, Mapping):
        raise TypeError(
            f"reference must be a mapping like {{'method': 'riemann_middle', 'n_steps': 128}}, got {reference!r}"
        )
    settings = check_sequence(settings, "settings", what="(method, n_steps) pairs")
    rules = _check_settings(settings, reference)
    facts = check_sequence(facts, "facts")
    if not facts:
        raise ValueError("no facts given; pass at least one fact")
    parsed = [_fact(item) for item in facts]  # every fact read (and its prompts tokenised) before any attribution
    for name, _, prompts, target in parsed:
        to_prompts(model, prompts, target, need_target=True, what=f"prompts of fact {name!r}")
    find_kwargs.setdefault("progress", False)
    rows = []
    for name, relation, prompts, target in progress_bar(parsed, "convergence, facts", enabled=progress):
        ref_scores = ref_neurons = None
        for i, (method, steps) in enumerate(rules):
            start = time.perf_counter()
            kns = find_knowledge_neurons(model, prompts, target, method=method, n_steps=steps, **find_kwargs)
            seconds = (time.perf_counter() - start) / len(kns.prompts)
            if i == 0:
                ref_scores, ref_neurons = kns.scores, kns.neurons
            assert ref_scores is not None and ref_neurons is not None
            error = float((kns.scores - ref_scores).abs().max() / ref_scores.abs().max().clamp_min(1e-30))
            completeness = torch.tensor(kns.params["completeness"])
            rows.append(dict(fact=name, relation=relation, method=method, n_steps=steps, reference=i == 0,
                             prompts=len(kns.prompts), neurons=len(kns.neurons),
                             jaccard=round(jaccard(kns.neurons, ref_neurons), 3), score_error=round(error, 6),
                             completeness=round(float(completeness.mean()), 6),
                             completeness_max=round(float(completeness.max()), 6),
                             seconds_per_prompt=round(seconds, 3)))  # fmt: skip
    return pd.DataFrame(rows, columns=list(COLUMNS))


def convergence_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per rule of a :func:`convergence` frame (reference first, then by mean Jaccard): facts, mean and
    min Jaccard, mean / max completeness error, max score error, seconds per prompt.

    Example:
        >>> frame = pd.DataFrame(dict(fact=["a", "a", "b", "b"], method=["riemann_middle", "riemann_left"] * 2,
        ...     n_steps=[128, 20] * 2, reference=[True, False] * 2, jaccard=[1.0, 0.5, 1.0, 1.0],
        ...     score_error=[0.0, 0.3, 0.0, 0.1], completeness=[0.001, 0.05, 0.002, 0.04],
        ...     completeness_max=[0.001, 0.08, 0.003, 0.05], seconds_per_prompt=[2.0, 0.4, 2.2, 0.4]))
        >>> convergence_summary(frame)[["method", "n_steps", "jaccard_mean", "jaccard_min", "score_error_max"]]
                   method  n_steps  jaccard_mean  jaccard_min  score_error_max
        0  riemann_middle      128          1.00          1.0              0.0
        1    riemann_left       20          0.75          0.5              0.3
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"convergence_summary takes the DataFrame convergence() returns, got {type(frame).__name__}")
    missing = {"method", "n_steps", "reference", "jaccard", "score_error", "completeness"} - set(frame.columns)
    if missing:
        raise ValueError(f"not a convergence frame: missing columns {sorted(missing)}")
    aggregations = dict(
        reference=("reference", "any"),
        facts=("jaccard", "size"),
        jaccard_mean=("jaccard", "mean"),
        jaccard_min=("jaccard", "min"),
        completeness_mean=("completeness", "mean"),
        completeness_max=("completeness_max" if "completeness_max" in frame else "completeness", "max"),
        score_error_max=("score_error", "max"),
    )
    if "seconds_per_prompt" in frame:
        aggregations["seconds_per_prompt"] = ("seconds_per_prompt", "mean")
    summary = frame.groupby(["method", "n_steps"], sort=False).agg(**aggregations).reset_index()
    summary = summary.sort_values(["reference", "jaccard_mean"], ascending=[False, False], kind="stable")
    return summary.reset_index(drop=True).round(4)


__all__ = [
    "COLUMNS",
    "PRESETS",
    "QUADRATURES",
    "SETTINGS",
    "convergence",
    "convergence_summary",
    "jaccard",
]
