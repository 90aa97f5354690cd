"""The main job, told honestly: a fact's knowledge neurons, what switching them off does, and next to what.

``kn-lens demo`` (and :func:`run`) walks through one fact ("The capital of France is" -> " Paris" on the
embedded SmolLM2; a capital fact of the tiny BERT with ``--model tiny-bert``):

1. the model's prediction;
2. integrated gradients on every paraphrase of the fact and of two more facts of the *same relation* (other
   capitals), then kn_lens's per-fact selection rule (``variant="adaptive"``) for each fact;
3. kn_lens's relation filter: neurons selected for several capitals encode "capital of", not "France -> Paris",
   and are dropped;
4. suppress (x0) and enhance (x2) the fact's neurons, before and after the filter, and read the answer's
   probability on the fact's own prompts, on held-out paraphrases, on the other capitals (same relation), on
   facts of other relations, and with as many random neurons in the same layers (the control).

Only a drop that is larger on the fact than on the same-relation facts and the random control says the neurons
are specific to the fact; a drop as large on the other capitals says they carry the relation. The demo prints
that comparison as it is, whatever it shows.

Example:
    >>> table = run(bert, progress=False, out=io.StringIO())  # the tiny BERT; the story goes to ``out``
    >>> list(dict.fromkeys(table["condition"]))[:3]
    ["the fact's prompts", 'held-out paraphrases', 'other capitals (same relation)']
"""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import pandas as pd
import torch

from kn_lens._progress import progress_bar
from kn_lens._typing import Model, Neuron, check_model, is_encoder
from kn_lens.attribution import integrated_gradients
from kn_lens.evaluation.effects import intervention_effects, summarize_effects
from kn_lens.neurons import KnowledgeNeurons, find_knowledge_neurons, random_neurons, relation_filter
from kn_lens.prompts import Prompt, make_prompt
from kn_lens.scoring import top_predictions


@dataclass(frozen=True)
class DemoFact:
    """A fact of the demo: its name, paraphrases (attribution), held-out paraphrases and answer."""

    name: str
    prompts: tuple[str, ...]
    target: str
    heldout: tuple[str, ...] = ()


#: The causal demo (SmolLM2): the fact, two more capitals (same relation), and facts of other relations.
CAUSAL_FACT = DemoFact(
    "France -> Paris",
    (
        "The capital of France is",
        "The capital city of France is",
        "The capital of France is the city of",
        "The largest city and capital of France is",
    ),
    " Paris",
    ("The capital of France is called", "What is the capital of France? The capital is"),
)


CAUSAL_SAME_RELATION = (
    DemoFact("Italy -> Rome", ("The capital of Italy is", "The capital city of Italy is"), " Rome"),
    DemoFact("Japan -> Tokyo", ("The capital of Japan is", "The capital city of Japan is"), " Tokyo"),
)


CAUSAL_OTHER_RELATIONS = (
    DemoFact("Spain -> Spanish", ("The official language of Spain is", "People in Spain speak"), " Spanish"),
    DemoFact("largest planet -> Jupiter", ("The largest planet in the solar system is",), " Jupiter"),
)


FACTORS = {"x0": 0.0, "x2": 2.0}
COLUMNS = ("neurons", "intervention", "condition", "n", "p before", "p after", "rel change %", "log-odds change")


RANDOM = "random neurons, the fact's prompts"


MEANING = (
    "What the numbers mean: each cell is the mean over prompts of (p after - p before) / p before, in %, for the "
    "answer's probability p: -50 means p halved. Neurons store the fact itself only where the fact's rows move "
    "clearly more than the same-relation, other-relation and random-neuron rows; a change as large on the other "
    "capitals means they carry the relation ('capital of'), which is what the relation filter removes."
)


def _compact(table: pd.DataFrame) -> pd.DataFrame:
    """One row per condition, one column per (neuron set, intervention): the mean relative change in %."""
    wide = table.pivot_table(
        index=["condition", "n", "p before"], columns=["neurons", "intervention"], values="rel change %", sort=False
    )
    wide.columns = [f"{b} {a} (%)" for a, b in wide.columns]
    return wide.round(1).reset_index().set_index("condition").round({"p before": 3})


def _summary(table: pd.DataFrame, name: str) -> list[str]:
    """One sentence per neuron set, with the numbers of the suppression."""
    lines = []
    for label, rows in table[table["intervention"] == "x0"].groupby("neurons", sort=False):
        change = dict(zip(rows["condition"], rows["rel change %"], strict=True))
        parts = [f"{change[c]:+.1f}% on {c.replace(', the fact', ' on the fact')}" for c in change]
        lines.append(f"Suppressing (x0) {name}'s neurons {label}: " + ", ".join(parts) + ".")
    return lines


def _encoder_facts() -> tuple[DemoFact, tuple[DemoFact, ...], tuple[DemoFact, ...]]:
    from kn_lens.fixtures import tiny_bert

    def demo_fact(fact) -> DemoFact:
        return DemoFact(
            f"{fact.subject} -> {fact.answer}",
            tuple(tiny_bert.train_prompts(fact)),
            fact.answer,
            tuple(tiny_bert.heldout_prompts(fact)),
        )

    capitals = tiny_bert.facts_of("capital")
    others = [tiny_bert.facts_of(r)[0] for r in ("language", "profession")]
    return demo_fact(capitals[0]), tuple(demo_fact(f) for f in capitals[1:3]), tuple(demo_fact(f) for f in others)


def demo_facts(model: Model) -> tuple[DemoFact, tuple[DemoFact, ...], tuple[DemoFact, ...]]:
    """``(fact, same-relation facts, other-relation facts)`` for the model kind (encoders: the tiny BERT's)."""
    if is_encoder(model):
        return _encoder_facts()
    return CAUSAL_FACT, CAUSAL_SAME_RELATION, CAUSAL_OTHER_RELATIONS


def _prompts(model: Model, facts: tuple[DemoFact, ...] | list[DemoFact], heldout: bool = False) -> list[Prompt]:
    return [make_prompt(model, p, f.target) for f in facts for p in (f.heldout if heldout else f.prompts)]


def _say(out: TextIO, text: str = "") -> None:
    print(text, file=out, flush=True)


def find_fact_neurons(
    model: Model, facts: list[DemoFact], *, n_steps: int = 20, progress: bool = True
) -> list[KnowledgeNeurons]:
    """Knowledge neurons of each fact (one progress bar over every prompt of every fact), relation-tagged."""
    jobs = [(i, make_prompt(model, p, f.target)) for i, f in enumerate(facts) for p in f.prompts]
    scores: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(facts))}
    bar = progress_bar(jobs, "integrated gradients, prompts", enabled=progress, mininterval=0.5, file=sys.stderr)
    for i, prompt in bar:
        scores[i].append(integrated_gradients(model, prompt, n_steps=n_steps))
    results = []
    for i, fact in enumerate(facts):
        kns = find_knowledge_neurons(model, list(fact.prompts), fact.target, scores=torch.stack(scores[i]))
        kns.relation, kns.name = "capital", fact.name
        results.append(kns)
    return results


def effects(
    model: Model,
    neuron_sets: dict[str, list[Neuron]],
    conditions: dict[str, list[Prompt]],
    *,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Mean change of the answer's probability when each neuron set is scaled, per condition, beside a
    random-neuron control (same count per layer) on the first condition's prompts: the rows of
    :func:`~kn_lens.evaluation.effects.intervention_effects` (the one way effects are measured), averaged by
    :func:`~kn_lens.evaluation.effects.summarize_effects` and laid out for the story."""
    first = next(iter(conditions))
    jobs = [(label, condition) for label, neurons in neuron_sets.items() if neurons for condition in conditions]
    clean: dict = {}  # each condition measured once without intervention, for every neuron set
    summaries = {}
    for label, condition in progress_bar(jobs, "interventions", enabled=progress, mininterval=0.5, file=sys.stderr):
        table = intervention_effects(model, neuron_sets[label], conditions[condition], interventions=FACTORS,
                                     random_seeds=(seed,) if condition == first else (), clean_cache=clean)  # fmt: skip
        summaries[label, condition] = summarize_effects(table).set_index(["intervention", "condition"])
    rows = []
    for label in dict.fromkeys(label for label, _ in jobs):
        for name in FACTORS:
            for shown in [*conditions, RANDOM]:
                own = (first, "random neurons") if shown == RANDOM else (shown, "knowledge neurons")
                row = summaries[label, own[0]].loc[(name, own[1])]
                rows.append({"neurons": label, "intervention": name, "condition": shown, "n": int(row["n"]),
                             "p before": float(row["before"]), "p after": float(row["after"]),
                             "rel change %": float(row["rel_change_%"]),
                             "log-odds change": float(row["logodds_change"])})  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def run(model: Model, *, n_steps: int = 20, progress: bool = True, out: TextIO | None = None) -> pd.DataFrame:
    """Tell the demo's story on ``model`` (see the module docstring) and return its effect table.

    Args:
        model: a causal model (the SmolLM2 facts) or an encoder (the tiny BERT's facts).
        n_steps: integrated-gradients steps.
        progress: progress bars (on stderr).
        out: where the story is printed (default stdout).

    Returns:
        One row per (neuron set, intervention, condition): ``p before``/``p after`` (means), ``rel change %``
        (mean per-prompt relative change) and ``log-odds change``. ``table.attrs`` holds the results per fact
        (``"knowledge_neurons"``, after the relation filter) and the unfiltered ones (``"unfiltered"``).
    """
    check_model(model)
    out = out or sys.stdout
    start = time.perf_counter()
    fact, same, other = demo_facts(model)

    _say(out, f"[1/4] What the model predicts for {fact.prompts[0]!r}:")
    _say(out, top_predictions(model, fact.prompts[0], 5).to_string(index=False))

    facts = [fact, *same]
    _say(out, f"\n[2/4] Knowledge neurons (integrated gradients, {n_steps} steps; kn_lens's per-fact rule) of")
    names = ", ".join(f.name for f in same)
    _say(out, f"      {fact.name} and of {len(same)} more facts of the same relation ({names}):")
    unfiltered = find_fact_neurons(model, facts, n_steps=n_steps, progress=progress)
    for kns in unfiltered:
        _say(out, f"      {kns.name:<28} {' '.join(map(str, kns.neurons)) or '(none)'}")

    filtered = relation_filter(unfiltered, 0.1)
    dropped = filtered[0].dropped.get("relation", [])
    _say(out, "\n[3/4] Relation filter (kn_lens): a neuron selected for 2 or more of these facts encodes the")
    _say(out, "      relation ('capital of'), not the fact, and is dropped.")
    _say(
        out,
        f"      {fact.name}: dropped {' '.join(map(str, dropped)) or 'nothing'}; keeps "
        f"{' '.join(map(str, filtered[0].neurons)) or 'nothing'}",
    )

    conditions = {
        "the fact's prompts": _prompts(model, [fact]),
        "held-out paraphrases": _prompts(model, [fact], heldout=True),
        "other capitals (same relation)": _prompts(model, list(same)),
        "other relations": _prompts(model, list(other)),
    }
    conditions = {k: v for k, v in conditions.items() if v}
    neuron_sets = {"before filter": unfiltered[0].neurons}
    if filtered[0].neurons != unfiltered[0].neurons:
        neuron_sets["after filter"] = filtered[0].neurons
    _say(out, f"\n[4/4] Scale {fact.name}'s neurons at each prompt's answer position and read p(answer):")
    table = effects(model, neuron_sets, conditions, progress=progress)
    if table.empty:
        _say(out, "      no neurons were selected, so there is nothing to intervene on.")
    else:
        _say(out, _compact(table).to_string())
        _say(out, "")
        for line in _summary(table, fact.name):
            _say(out, textwrap.fill(line, 110, initial_indent="", subsequent_indent="  "))
    _say(out, "")
    _say(out, textwrap.fill(MEANING, 110))
    _say(out, f"\nDone in {time.perf_counter() - start:.0f} s.")
    table.attrs["knowledge_neurons"] = filtered
    table.attrs["unfiltered"] = unfiltered
    return table


#: The default fact of :func:`demo_table`: the demo's own (:data:`CAUSAL_FACT`), its held-out paraphrases, and its
#: facts of other relations as ``(prompts, target)`` groups.
DEMO_PROMPTS: tuple[str, ...] = CAUSAL_FACT.prompts
DEMO_TARGET = CAUSAL_FACT.target
DEMO_HELDOUT: tuple[str, ...] = CAUSAL_FACT.heldout
DEMO_UNRELATED: tuple[tuple[tuple[str, ...], str], ...] = tuple((f.prompts, f.target) for f in CAUSAL_OTHER_RELATIONS)


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
        ``demo_table(kn_lens.load_model())`` runs the default fact on SmolLM2 (about half a minute on a CPU);
        here a fact of the tiny BERT:

        >>> from kn_lens.fixtures import tiny_bert
        >>> france = tiny_bert.FACTS[0]
        >>> table = demo_table(bert, tiny_bert.train_prompts(france), "Paris", n_steps=5, progress=False,
        ...                    heldout=tiny_bert.heldout_prompts(france))
        >>> table[["intervention", "condition", "n", "rel_change_%"]].round(1)
          intervention                     condition  n  rel_change_%
        0     suppress             knowledge neurons  3         -15.8
        1     suppress  knowledge neurons (held-out)  1         -18.1
        2     suppress                random neurons  3          -0.0
        3     suppress     random neurons (held-out)  1           0.3
        4      enhance             knowledge neurons  3           2.4
        5      enhance  knowledge neurons (held-out)  1           2.9
        6      enhance                random neurons  3          -0.2
        7      enhance     random neurons (held-out)  1          -0.7
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
    "CAUSAL_FACT",
    "DEMO_HELDOUT",
    "DEMO_PROMPTS",
    "DEMO_TARGET",
    "DEMO_UNRELATED",
    "DemoFact",
    "demo_facts",
    "demo_table",
    "effects",
    "find_fact_neurons",
    "run",
]
