"""Acting on knowledge neurons: suppress / enhance them and measure the effect, always beside controls.

Context:
    Dai et al. (2022) test knowledge neurons by intervening on them at the ``[MASK]`` position: *suppressing*
    (activation x 0) should lower the probability of the correct answer, *enhancing* (x 2) should raise it, and
    neither should move unrelated facts. A claim like "these neurons store the fact" needs two controls next to
    it: the same number of **random neurons in the same layers** (does any intervention of that size hurt?)
    and **unrelated facts** (is the damage specific?). Every table here carries both.

Metrics, per prompt, then averaged:
    * ``rel_change = (after - before) / before`` (Dai et al.'s "change rate" of the correct probability);
    * ``logodds_change = logit(after) - logit(before)``, which does not saturate: a prompt already at
      p = 0.98 has little probability left to gain, but its log-odds can still move.

Example:
    >>> kns = kn_lens.find_knowledge_neurons(model, paraphrases, " Paris")
    >>> effects = intervention_effects(model, kns, heldout=["Paris is the capital of"], unrelated=other_facts)
    >>> summarize_effects(effects)
    >>> compare(model, "The capital of France is", [" Paris", " Lyon"], {"suppress": hooks.Intervention(
    ...     "scale", kns.neurons, 0.0)})
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import pandas as pd
import torch

from kn_lens._typing import Model, Neuron, check_model
from kn_lens.hooks import Intervention
from kn_lens.inputs import NeuronsLike, check_batch_size, check_positions, to_neurons, to_prompts
from kn_lens.neurons import KnowledgeNeurons, find_knowledge_neurons, random_neurons
from kn_lens.prompts import Prompt, TargetLike, make_prompt
from kn_lens.scoring import target_scores

#: Dai et al.'s interventions: name -> activation factor.
DAI_INTERVENTIONS: dict[str, float] = {"suppress": 0.0, "enhance": 2.0}
EFFECT_COLUMNS = (
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
)
_EPS = 1e-12


def _logodds(p: torch.Tensor) -> torch.Tensor:
    p = p.double().clamp(_EPS, 1 - 1e-15)
    return torch.log(p) - torch.log1p(-p)


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
    random_seeds: Sequence[int] = (0,),
    positions: Literal["site", "all", "last"] = "site",
    objective_floor: float = 0.0,
    batch_size: int = 32,
) -> pd.DataFrame:
    """Scale neurons (x0, x2, ...) and measure the correct answer's probability, beside the controls.

    For each intervention (name -> activation factor) the same scaling is applied to

    * ``"knowledge neurons"`` on ``prompts`` (the attribution prompts) and, separately, on ``heldout``;
    * ``"random neurons"``: :func:`~kn_lens.neurons.random_neurons` (same count per layer), one set per seed,
      on the same prompts;
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
            :class:`~kn_lens.neurons.FactPrompts` or other ``KnowledgeNeurons`` results.
        random_seeds: seeds of the random-neuron controls (empty: no control).
        positions: where to scale: each prompt's ``"site"`` (Dai et al.), ``"all"`` positions, or ``"last"``.
        objective_floor: prompts whose base probability is below this are dropped (0 keeps all).
        batch_size: prompts per forward pass.

    Returns:
        A long DataFrame, one row per (intervention, condition, prompt), with columns :data:`EFFECT_COLUMNS`:
        ``before``/``after`` probabilities of the correct answer, ``rel_change`` and ``logodds_change``.
        ``condition`` is ``"knowledge neurons"``, ``"knowledge neurons (held-out)"``, ``"random neurons"``,
        ``"random neurons (held-out)"`` or ``"other facts"`` (the frame ``kn_lens.plotting.intervention_bars``
        takes).

    Example:
        >>> df = intervention_effects(model, kns, heldout=["Paris is the capital of"], unrelated=[rome_fact])
        >>> summarize_effects(df)
    """
    check_model(model)
    result = neurons if isinstance(neurons, KnowledgeNeurons) else None
    if result is not None and prompts is None:
        prompts = result.prompts
    if prompts is None or (isinstance(prompts, list | tuple) and not prompts):
        raise ValueError("no prompts given; pass the fact's prompts (or a KnowledgeNeurons result)")
    batch_size = check_batch_size(batch_size)
    main = _prompts(model, prompts, target, "fact")
    fact_target = target if target is not None else main[0].target_ids
    held = _prompts(model, heldout, fact_target, "held-out")
    other = _prompts(model, unrelated, None, "unrelated")
    interventions = dict(DAI_INTERVENTIONS if interventions is None else interventions)
    if not interventions:
        raise ValueError("no interventions given; e.g. {'suppress': 0.0, 'enhance': 2.0}")
    for name, factor in interventions.items():
        _check_factor(name, factor)
    check_positions(positions)

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
    if other:
        groups.append(("other facts", "knowledge", neuron_list, "unrelated", other))

    base_cache: dict[int, torch.Tensor] = {}
    rows = []
    for name, factor in interventions.items():
        for condition, neuron_label, group_neurons, prompt_set, group_prompts in groups:
            key = id(group_prompts)
            if key not in base_cache:
                base_cache[key] = target_scores(model, group_prompts, batch_size=batch_size)
            before = base_cache[key]
            if group_neurons:
                hook = Intervention("scale", tuple(group_neurons), factor, positions=positions, name=name)
                after = target_scores(model, group_prompts, fwd_hooks=hook, batch_size=batch_size)
            else:  # no neurons: nothing to intervene on
                after = before.clone()
            lo_before, lo_after = _logodds(before), _logodds(after)
            for i, prompt in enumerate(group_prompts):
                b, a = float(before[i]), float(after[i])
                if b < objective_floor:
                    continue
                rows.append(
                    dict(
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
        changes, x100, Dai et al.'s number), ``logodds_change`` (mean).

    Example:
        >>> summarize_effects(df, base_split=(0.9,))
    """
    missing = [c for c in ("before", "after", "rel_change", "logodds_change", *by) if c not in effects.columns]
    if missing:
        raise ValueError(f"the frame lacks columns {missing}; pass the output of intervention_effects")
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
    out = grouped.agg(
        n=("before", "size"),
        before=("before", "mean"),
        after=("after", "mean"),
        rel_change=("rel_change", "mean"),
        logodds_change=("logodds_change", "mean"),
    ).reset_index()
    out["rel_change_%"] = 100 * out.pop("rel_change")
    return out


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
        >>> suppress(model, kns, unrelated=[(["The capital of Italy is"], " Rome")])
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
        >>> enhance(model, kns, unrelated=[(["The capital of Italy is"], " Rome")])
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
        >>> others = other_relation_facts(tiny_bert.FACTS, tiny_bert.FACTS[0], k=6)
    """
    if not hasattr(fact, "relation"):
        raise TypeError("facts need a .relation attribute (e.g. FactPrompts(..., relation='capital'))")
    pool = [f for f in facts if getattr(f, "relation", None) != fact.relation]
    if k is None or k >= len(pool):
        return pool
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    picked = sorted(torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:k].tolist())
    return [pool[i] for i in picked]


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
        >>> compare(bert, "Raymond is selling [MASK] sketches.", ["these", "this"],
        ...         {"L9N1094 x0": kn_lens.hooks.Intervention("scale", ["L9N1094"], 0.0)})
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
        >>> print(demo_table(kn_lens.load_model()))
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
    "DAI_INTERVENTIONS",
    "EFFECT_COLUMNS",
    "compare",
    "demo_table",
    "enhance",
    "intervention_effects",
    "other_relation_facts",
    "summarize_effects",
    "suppress",
]
