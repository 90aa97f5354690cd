"""One fact, one record: the unit of a PARAREL sweep (:func:`evaluate_fact`, :func:`fact_effects`), and the
tidy tables made of records (:func:`records_frame`, :func:`relation_table`, :func:`rule_summary`).

Every record and table names the selection rule that made it (:data:`SELECTIONS`).
"""

from __future__ import annotations

import math
import random
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from kn_lens._typing import Model, check_model
from kn_lens.evaluation.effects import DAI_INTERVENTIONS, intervention_effects, specificity, summarize_effects
from kn_lens.inputs import NeuronsLike, check_batch_size, check_sequence, to_fact, to_neurons
from kn_lens.neurons import RULES, find_knowledge_neurons, random_neurons
from kn_lens.prompts import Prompt, TargetLike, make_prompt, token_ids
from kn_lens.scoring import mean_logit_diff

#: The selection rules of :func:`evaluate_fact` and of PARAREL sweeps (:mod:`kn_lens.evaluation.sweeps`), one line
#: each, for tables and records (every record and table names the rule that made it): the three rules of
#: :mod:`kn_lens.neurons` (:data:`~kn_lens.neurons.RULES`) and two rules built on the per-fact one.
SELECTIONS: dict[str, str] = {
    **RULES,
    "fact-specific": "adaptive, then drop the neurons coarse on more than negative_share (25%) of n_negatives (4) "
    "prompts drawn (per fact) from other known facts of the same relation",
    "contrastive": "adaptive, on integrated gradients of logit(answer) - mean logit of the relation's other "
    "answers (the other known facts' answers)",
}


#: What the ``selection`` of records made before rules had names meant (``"dai"`` was the per-fact rule).
LEGACY_SELECTIONS = {"dai": "adaptive", "fact-specific": "fact-specific"}


def fact_seed(seed: int, key: str) -> int:
    """A per-fact seed from the run seed and the fact's id, the same in every process (unlike ``hash``)."""
    return zlib.crc32(f"{seed}:{key}".encode()) & 0x7FFFFFFF


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, float):
        return round(value, 7)
    if hasattr(value, "item"):
        return _plain(value.item())
    return value


def _fact_texts(fact: Any, name: str) -> tuple[list[str], Any]:
    """(prompt texts, target) of a fact-like object (a PARAREL bag, FactPrompts, KnowledgeNeurons), checked."""
    if isinstance(fact, str | bytes | Mapping | tuple | list) or not hasattr(fact, "prompts"):
        raise TypeError(
            f"{name} must be a fact with .prompts and .target (a PARAREL Bag, a FactPrompts), got "
            f"{type(fact).__name__}; wrap (prompts, target) as kn_lens.neurons.FactPrompts(prompts, target)"
        )
    parts = to_fact(fact, name)
    if not parts.prompts:
        raise TypeError(f"{name}.prompts must be a non-empty list of prompt texts (or Prompts)")
    return [p.text if isinstance(p, Prompt) else p for p in parts.prompts], parts.target


def _facts(items: Any, name: str) -> list[Any]:
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Sequence | tuple):
        raise TypeError(f"{name} must be a list of facts (PARAREL bags, FactPrompts), got {type(items).__name__}")
    for item in items:
        _fact_texts(item, f"an item of {name}")
    return list(items)


def _count(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def fact_effects(
    model: Model,
    prompts: Sequence[str | Prompt],
    target: TargetLike,
    neurons: NeuronsLike,
    *,
    heldout: Sequence[str | Prompt] = (),
    same_relation: Sequence[Any] = (),
    other_relations: Sequence[Any] = (),
    seed: int = 0,
    relation: str | None = None,
    batch_size: int = 32,
    clean_cache: dict | None = None,
) -> dict[str, Any]:
    """The evaluation half of :func:`evaluate_fact`: one fact's neurons suppressed and enhanced beside every
    control (held-out paraphrases, same-relation facts, other-relation facts, random neurons drawn with ``seed``),
    as JSON-ready ``random_neurons``, ``effects`` (one dict per intervention x condition, as
    :func:`summarize_effects`) and ``specificity`` (per intervention).

    A fact without neurons has nothing to intervene on: no effects, no control (it is counted, and left out of
    effect means, by :func:`records_frame`). ``clean_cache``: see :func:`intervention_effects` (a sweep shares one
    between the rules of a fact).

    Example:
        >>> from kn_lens.datasets import pararel
        >>> bags = pararel.load(pararel_dir).bags(bert)
        >>> out = fact_effects(bert, bags[0].prompts[:3], bags[0].target, ["L1N253", "L1N292"],
        ...                    heldout=bags[0].prompts[3:], same_relation=bags[1:3], seed=1)
        >>> sorted({e["condition"] for e in out["effects"]})
        ['knowledge neurons', 'knowledge neurons (held-out)', 'random neurons', 'random neurons (held-out)',
         'same relation']
        >>> fact_effects(bert, bags[0].prompts[:3], bags[0].target, [])
        {'random_neurons': [], 'effects': [], 'specificity': {}}
    """
    neuron_list = to_neurons(neurons, model, allow_empty=True)
    if not neuron_list:
        return dict(random_neurons=[], effects=[], specificity={})
    effects = intervention_effects(
        model,
        neuron_list,
        list(prompts),
        target,
        heldout=list(heldout) or None,
        same_relation=list(same_relation) or None,
        unrelated=list(other_relations) or None,
        random_seeds=(seed,),
        relation=relation,
        batch_size=batch_size,
        clean_cache=clean_cache,
    )
    table = summarize_effects(effects)
    rows = [{k: _plain(v) for k, v in row.items() if k != "relation"} for row in table.to_dict("records")]
    spec = {}
    for name in dict.fromkeys(table["intervention"]):
        part = table[table["intervention"] == name].set_index("condition")["rel_change_%"]
        if "knowledge neurons" in part and "same relation" in part:
            spec[name] = _plain(specificity(float(part["knowledge neurons"]), float(part["same relation"])))
    control = random_neurons(model, neuron_list, seed=seed)
    return dict(random_neurons=[str(n) for n in control], effects=rows, specificity=spec)


def other_answers(model: Model, target: TargetLike, facts: Sequence[Any]) -> list[Any]:
    """The distinct answers of ``facts`` other than ``target`` (compared as token ids), in order: the wrong answers
    of the contrastive selection (:func:`kn_lens.scoring.mean_logit_diff`).

    Example:
        >>> from kn_lens.datasets import pararel
        >>> bags = pararel.load(pararel_dir).bags(bert, relations="P37")
        >>> [b.answer for b in bags[:4]], other_answers(bert, "Polish", bags[:4] + bags[:2])
        (['Portuguese', 'Polish', 'Swedish', 'Thai'], ['Portuguese', 'Swedish', 'Thai'])
    """
    own = tuple(token_ids(model, target))
    out: dict[tuple[int, ...], Any] = {}
    for fact in facts:
        ids = tuple(token_ids(model, fact.target))
        if ids != own:
            out.setdefault(ids, fact.target)
    return list(out.values())


def evaluate_fact(
    model: Model,
    fact: Any,
    *,
    same_relation: Sequence[Any] = (),
    other_relations: Sequence[Any] = (),
    n_heldout: int = 1,
    seed: int = 0,
    selection: str = "adaptive",
    n_negatives: int = 4,
    negative_share: float = 0.25,
    n_steps: int = 20,
    batch_size: int = 32,
    **find_kwargs: Any,
) -> dict[str, Any]:
    """Find one fact's knowledge neurons and measure suppress / enhance beside every control: one JSON record.

    The fact's last ``n_heldout`` prompts are held out of the attribution. The random-neuron control uses a
    per-fact seed (:func:`fact_seed`), so a record does not depend on which process computed it. Every argument is
    checked before the first forward pass. (A PARAREL sweep, :func:`kn_lens.evaluation.sweeps.run_pararel`, does
    the same in phases: it attributes each fact once and runs every rule on the stored scores.)

    Args:
        model: the model.
        fact: a PARAREL :class:`~kn_lens.datasets.pararel.Bag` (or anything with ``prompts``, ``target``,
            ``relation``, ``uuid``, e.g. a :class:`~kn_lens.neurons.FactPrompts`).
        same_relation: other facts of the relation (control; negatives of ``"fact-specific"``; the other answers
            of ``"contrastive"``).
        other_relations: facts of other relations (Dai's "unrelated" control).
        n_heldout: prompts held out (0: none; kept only if at least 2 prompts remain).
        seed: the run seed.
        selection: the rule (:data:`SELECTIONS`): ``"adaptive"`` (default, kn_lens's per-fact rule), ``"dai"``
            (Dai et al.'s released rule, the fact alone as its relation), ``"eleuther"``, ``"fact-specific"``
            (adaptive, then neurons also coarse on more than ``negative_share`` of ``n_negatives`` prompts of
            ``same_relation`` facts are dropped) or ``"contrastive"`` (adaptive, on the integrated gradients of
            :func:`~kn_lens.scoring.mean_logit_diff` against the other answers among ``same_relation``).
        n_negatives, negative_share: see ``selection``.
        n_steps: integrated-gradient steps (only passed to integrated gradients, the default ``attribution``).
        batch_size: prompts per forward pass.
        **find_kwargs: more keywords for :func:`~kn_lens.neurons.find_knowledge_neurons` (``attribution``,
            ``layers``, ``method``, ...).

    Returns:
        A dict: ``rule, relation, uuid, subject, answer, target, n_prompts, n_heldout, neurons`` (``"L{l}N{i}"``),
        ``layers``, ``random_neurons``, ``effects`` (one dict per intervention x condition, as
        :func:`summarize_effects`; none for a fact without neurons), ``specificity`` (per intervention),
        ``completeness`` (each attributed prompt's completeness error, see
        :func:`~kn_lens.neurons.find_knowledge_neurons`), ``seconds``.

    Raises:
        TypeError: ``fact`` (or a control) is not a fact object (e.g. a tuple), an unknown keyword.
        ValueError: an unknown selection, a count out of range, ``"contrastive"`` without other answers.

    Example:
        >>> from kn_lens.datasets import pararel
        >>> bags = pararel.load(pararel_dir).bags(bert)          # the tiny BERT's facts, in PARAREL's format
        >>> capitals, others = bags[:12], bags[12:]
        >>> record = evaluate_fact(bert, capitals[0], same_relation=capitals[1:3], other_relations=others[:2],
        ...                        n_steps=5)
        >>> record["rule"], record["subject"], record["answer"], record["neurons"]
        ('adaptive', 'France', 'Paris', ['L1N253', 'L1N292', 'L1N990', 'L0N721', 'L1N1001'])
        >>> record["specificity"]
        {'suppress': 0.46, 'enhance': 1.56}
        >>> layer = lambda names: sorted(kn_lens.Neuron.parse(n).layer for n in names)
        >>> layer(record["random_neurons"]) == layer(record["neurons"])  # the control: as many per layer
        True
    """
    check_model(model)
    texts, target = _fact_texts(fact, "fact")
    same = _facts(same_relation, "same_relation")
    other = _facts(other_relations, "other_relations")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    n_heldout = _count(n_heldout, "n_heldout", 0)
    n_negatives = _count(n_negatives, "n_negatives", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if isinstance(negative_share, bool) or not isinstance(negative_share, int | float) or not 0 <= negative_share <= 1:
        raise ValueError(f"negative_share must be a number in [0, 1], got {negative_share!r}")
    batch_size = check_batch_size(batch_size)
    clash = sorted({"variant", "negatives", "negative_share", "scores"} & set(find_kwargs))
    if clash:
        raise TypeError(f"evaluate_fact chooses {clash} from selection=; pass selection= one of {list(SELECTIONS)}")
    kwargs: dict[str, Any] = dict(find_kwargs)
    if kwargs.get("attribution", "ig") == "ig":  # the other attributions take no steps
        kwargs["n_steps"] = _count(n_steps, "n_steps", 1)
    kwargs.setdefault("progress", False)  # one record of a sweep: the sweep's own bar counts the facts
    k = n_heldout if len(texts) - n_heldout >= 2 else 0
    train, held = texts[: len(texts) - k], texts[len(texts) - k :]
    uuid = str(getattr(fact, "uuid", "") or getattr(fact, "name", "") or target)
    local_seed = fact_seed(seed, uuid)
    extra: dict[str, Any] = {}
    if selection == "fact-specific":
        pool = [f for f in same if _fact_texts(f, "same_relation")[0]]
        rng = random.Random(local_seed)
        picked = rng.sample(pool, min(n_negatives, len(pool)))
        kwargs.update(
            negatives=[make_prompt(model, rng.choice(_fact_texts(f, "")[0]), f.target) for f in picked],
            negative_share=negative_share,
        )
    elif selection == "contrastive":
        if "objective" in kwargs:
            raise TypeError("selection='contrastive' sets the objective itself; leave out objective=")
        others = other_answers(model, target, same)
        if not others:
            raise ValueError("selection='contrastive' needs same_relation facts with other answers than this fact's")
        kwargs["objective"] = mean_logit_diff(model, target, others)
        extra["others"] = [o if isinstance(o, str) else str(o) for o in others]
    variant = selection if selection in RULES else "adaptive"
    start = time.perf_counter()
    kns = find_knowledge_neurons(model, train, target, variant=variant, **kwargs)
    attributed = time.perf_counter() - start
    relation = getattr(fact, "relation", None)
    measured = fact_effects(model, train, target, kns.neurons, heldout=held, same_relation=same,
                            other_relations=other, seed=local_seed, relation=relation,
                            batch_size=batch_size)  # fmt: skip
    return dict(
        rule=selection,
        relation=relation,
        uuid=uuid,
        subject=getattr(fact, "subject", None),
        answer=getattr(fact, "answer", None),
        target=target,
        n_prompts=len(train),
        n_heldout=len(held),
        neurons=[str(n) for n in kns.neurons],
        layers=[n.layer for n in kns.neurons],
        random_neurons=measured["random_neurons"],
        share_used=_plain(kns.params.get("share_used")),
        completeness=kns.params.get("completeness"),
        dropped={k: [str(n) for n in v] for k, v in kns.dropped.items()},
        n_steps=kwargs.get("n_steps"),
        effects=measured["effects"],
        specificity=measured["specificity"],
        **extra,
        seconds_attribution=round(attributed, 3),
        seconds=round(time.perf_counter() - start, 3),
    )


def _rule_of(record: Mapping[str, Any]) -> str:
    """The rule of a record; records made before rules had names carry ``selection`` (see LEGACY_SELECTIONS)."""
    if record.get("rule"):
        return str(record["rule"])
    return LEGACY_SELECTIONS.get(record.get("selection"), "unknown")


def records_frame(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Sweep records as one tidy frame: one row per (rule, fact, intervention, condition), with ``rule`` and
    ``relation`` columns.

    Records of unknown facts (``known`` false) carry no effects and add no rows. Nor do facts for which the
    selection found no knowledge neuron: there is nothing to intervene on, their "changes" are 0 by construction
    (and they have no random-neuron control), so counting them would dilute every mean. Tables built on this
    frame state how many facts they rest on; the report lists the facts without neurons.

    Example:
        >>> frame = records_frame(kn_lens.evaluation.sweeps.read_records(run_dir))   # a finished run of the tiny BERT
        >>> frame.groupby("rule", sort=False).size()     # facts with neurons x 2 interventions x 6 conditions
        rule
        dai         72
        adaptive    72
        dtype: int64
        >>> frame.columns.tolist()
        ['rule', 'relation', 'uuid', 'n_neurons', 'intervention', 'condition', 'n', 'before', 'after', ...,
         'rel_change_%', 'rel_of_means_%']
    """
    records = check_sequence(records, "records", what="sweep records (kn_lens.evaluation.sweeps.read_records(run))")
    rows = []
    for i, r in enumerate(records):
        _check_record(r, i)
        if not r.get("neurons"):
            continue
        for e in r.get("effects") or ():
            rows.append(dict(rule=_rule_of(r), relation=r.get("relation"), uuid=r.get("uuid"),
                             n_neurons=len(r.get("neurons") or ()), **e))  # fmt: skip
    frame = pd.DataFrame(rows, columns=None if rows else list(RECORD_FRAME_COLUMNS))
    return frame.astype({c: float for c in ("rel_change_%", "rel_of_means_%", "before", "after") if c in frame})


#: The columns :func:`records_frame` always has (an empty frame has exactly these).
RECORD_FRAME_COLUMNS = ("rule", "relation", "uuid", "n_neurons", "intervention", "condition", "n", "before",
                        "after", "rel_change_%", "rel_of_means_%")  # fmt: skip


_EFFECT_KEYS = ("intervention", "condition", "before", "after", "rel_change_%")


def _check_record(record: Any, i: int) -> None:
    """A fact record of :func:`evaluate_fact` (a sweep's ``records.jsonl`` line), or a clear error naming what
    is missing (records of another tool or schema)."""
    if not isinstance(record, Mapping):
        raise TypeError(f"record {i} is a {type(record).__name__}, not a fact record (a dict of evaluate_fact)")
    needed = ("relation", "uuid") if record.get("known") is False else ("relation", "uuid", "neurons", "effects")
    missing = [k for k in needed if k not in record]
    if missing:
        raise ValueError(
            f"record {i} lacks {missing}: not a kn_lens fact record (evaluate_fact / kn-lens evaluate pararel)"
        )
    effects = record.get("effects") or ()
    if not isinstance(effects, list | tuple) or not all(isinstance(e, Mapping) for e in effects):
        raise ValueError(f"record {i}: 'effects' must be a list of dicts (summarize_effects rows)")
    for e in effects:
        lacking = [k for k in _EFFECT_KEYS if k not in e]
        if lacking:
            raise ValueError(f"record {i}: an effect row lacks {lacking}; the record is of another schema")


CONDITION_ORDER = (
    "knowledge neurons",
    "knowledge neurons (held-out)",
    "same relation",
    "other facts",
    "random neurons",
    "random neurons (held-out)",
)


def relation_table(frame: pd.DataFrame, *, overall: bool = True) -> pd.DataFrame:
    """Per rule, relation (and ``"all"``), intervention and condition: facts, mean relative change (both
    definitions, averaged over facts), accuracy before/after, and the relation's specificity.

    Args:
        frame: :func:`records_frame`.
        overall: add rows with ``relation="all"``.

    Returns:
        Columns ``rule, relation, intervention, condition, facts, before, after, rel_change_%, rel_of_means_%,
        acc_before, acc_after, ppl_before, ppl_after, specificity`` (specificity from the own and same-relation
        mean changes); rules in the order they first appear, relations sorted. A frame without a ``rule`` column
        gives a table without one.

    Example:
        >>> table = relation_table(records_frame(kn_lens.evaluation.sweeps.read_records(run_dir)))
        >>> own = table.query("intervention == 'suppress' and relation == 'all' and condition == 'knowledge neurons'")
        >>> own[["rule", "facts", "rel_change_%", "specificity"]].round(2)
                rule  facts  rel_change_%  specificity
        30       dai      6        -39.41         0.63
        66  adaptive      6        -24.81         0.68
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be the DataFrame of records_frame(records), got {type(frame).__name__}")
    by_rule = "rule" in frame.columns
    if frame.empty:
        return pd.DataFrame(columns=["rule", "relation", "intervention", "condition", "facts"])
    missing = [c for c in ("relation", "intervention", "condition", "rel_change_%") if c not in frame.columns]
    if missing:
        raise ValueError(f"the frame lacks columns {missing}; pass records_frame(records)")
    parts = [frame] + ([frame.assign(relation="all")] if overall else [])
    data = pd.concat(parts, ignore_index=True)
    keys = ["rule"] * by_rule + ["relation", "intervention", "condition"]
    names = ("before", "after", "rel_change_%", "rel_of_means_%", "acc_before", "acc_after", "ppl_before", "ppl_after")
    metrics = [c for c in names if c in data]
    out = data.groupby(keys, sort=False)[metrics].mean().reset_index()
    out.insert(len(keys), "facts", data.groupby(keys, sort=False).size().to_numpy())
    spec = {}
    group = keys[:-1]
    for key, part in out.groupby(group, sort=False):
        values = part.set_index("condition")["rel_change_%"]
        own, same = values.get("knowledge neurons"), values.get("same relation")
        spec[key] = specificity(own, same) if own is not None and same is not None else float("nan")
    out["specificity"] = [spec[tuple(row)] for row in out[group].itertuples(index=False)]
    order = {c: i for i, c in enumerate(CONDITION_ORDER)}
    out["_order"] = out["condition"].map(lambda c: order.get(c, len(order)))
    sort = ["relation", "intervention", "_order"]
    if by_rule:
        rules = {r: i for i, r in enumerate(dict.fromkeys(frame["rule"]))}
        out["_rule"] = out["rule"].map(rules)
        sort = ["_rule", *sort]
    out = out.sort_values(sort, kind="stable").drop(columns=["_order", "_rule"], errors="ignore")
    return out.reset_index(drop=True)


def rule_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per rule (and intervention) from a :func:`relation_table`: the ``"all"`` relation's mean change for
    the own prompts, held-out paraphrases, same relation, other relations and random neurons, the specificity,
    and ``own/same`` (the own change over the same-relation change: 3 means the neurons move their own fact three
    times more than the relation's other facts).

    Example:
        >>> summary = rule_summary(relation_table(records_frame(kn_lens.evaluation.sweeps.read_records(run_dir))))
        >>> summary[["rule", "intervention", "facts", "own", "same relation", "random", "own/same"]].round(2)
               rule intervention  facts    own  same relation  random  own/same
        0       dai     suppress      6 -39.41         -14.49    0.04      2.72
        1       dai      enhance      6 -33.94         -18.09   -0.34      1.88
        2  adaptive     suppress      6 -24.81          -7.96   -0.23      3.12
        3  adaptive      enhance      6 -24.18         -12.99    0.07      1.86
    """
    missing = [c for c in ("relation", "intervention", "condition", "rel_change_%") if c not in table.columns]
    if missing:
        raise ValueError(f"the table lacks columns {missing}; pass the output of relation_table")
    names = {"knowledge neurons": "own", "knowledge neurons (held-out)": "held-out", "same relation": "same relation",
             "other facts": "other relations", "random neurons": "random"}  # fmt: skip
    data = table[table["relation"] == "all"]
    if "rule" not in data.columns:
        data = data.assign(rule="")
    rank = {name: i for i, name in enumerate(DAI_INTERVENTIONS)}  # per rule: suppress, enhance, then others
    rules = {name: i for i, name in enumerate(dict.fromkeys(data["rule"]))}
    data = data.assign(_r=data["rule"].map(rules), _i=data["intervention"].map(lambda x: rank.get(x, len(rank))))
    data = data.sort_values(["_r", "_i"], kind="stable")
    rows = []
    for (rule, intervention), part in data.groupby(["rule", "intervention"], sort=False):
        values = part.set_index("condition")
        row: dict[str, Any] = dict(rule=rule, intervention=intervention)
        row["facts"] = int(values["facts"].get("knowledge neurons", 0)) if "facts" in values else None
        for condition, label in names.items():
            row[label] = float(values["rel_change_%"][condition]) if condition in values.index else float("nan")
        row["specificity"] = float(values["specificity"].iloc[0]) if "specificity" in values else float("nan")
        own, same = row["own"], row["same relation"]
        row["own/same"] = own / same if same and math.isfinite(same) and math.isfinite(own) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = [
    "CONDITION_ORDER",
    "LEGACY_SELECTIONS",
    "RECORD_FRAME_COLUMNS",
    "SELECTIONS",
    "evaluate_fact",
    "fact_effects",
    "fact_seed",
    "other_answers",
    "records_frame",
    "relation_table",
    "rule_summary",
]
