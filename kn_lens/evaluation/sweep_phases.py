"""The units of work of a sweep's phases: scanning a relation for known facts, attributing one fact (sparse
candidates), one rule's selection for one relation from stored records (no model), and re-running a selection
on a finished run folder. :mod:`kn_lens.evaluation.sweeps` runs them, sharded and resumable.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kn_lens._typing import Model
from kn_lens.datasets.pararel import Bag, Pararel
from kn_lens.evaluation.records import SELECTIONS, fact_seed
from kn_lens.evaluation.sweep_manifest import KNOWN_CHUNK, read_manifest
from kn_lens.evaluation.sweep_store import (
    PHASES,
    SweepError,
    _read_phase,
    read_attributions,
    read_known,
    read_records,
    read_relations,
    read_selections,
)
from kn_lens.neurons import CANDIDATE_FLOOR, Candidates, Rule, drop_shared, find_knowledge_neurons, select
from kn_lens.scoring import mean_logit_diff

# --------------------------------------------------------------------------------------------------------------
# Phase 1: known facts
# --------------------------------------------------------------------------------------------------------------


def _run_bags(model: Model, data: Pararel, relations: Any) -> tuple[list[Bag], dict[str, Any]]:
    """The run's bags: the tokenizer's single-token facts, each (relation, uuid) once, answers the tokenizer knows
    (an answer that tokenizes to the unknown token is skipped and counted, not fatal)."""
    bags = data.bags(model, relations=relations)
    tokenizer = getattr(model, "tokenizer", None)
    unk = getattr(tokenizer, "unk_token_id", None)
    kept: dict[tuple[str, str], Bag] = {}
    duplicates, unknown = 0, []
    for bag in bags:
        key = (bag.relation, bag.uuid)
        if key in kept:
            duplicates += 1
            continue
        if unk is not None and unk in tokenizer.encode(bag.target, add_special_tokens=False):
            unknown.append(f"{bag.relation}/{bag.uuid}")
            continue
        kept[key] = bag
    return list(kept.values()), dict(duplicates=duplicates, out_of_vocabulary=unknown)


def _shuffled(bags: Sequence[Bag], seed: int, rid: str) -> list[Bag]:
    """A relation's facts in the run's scan order: shuffled by the seed (a uniform sample of the known facts)."""
    order = list(bags)
    random.Random(fact_seed(seed, "known:" + rid)).shuffle(order)
    return order


def _scan(
    order: Sequence[Bag], rows: Mapping[tuple, Mapping[str, Any]], facts_per_relation: int | None
) -> Iterator[list[Bag]]:
    """The chunks of ``order`` a scan measures, in turn, until ``facts_per_relation`` known facts (all for None);
    ``rows`` (scanned facts by key) must hold each chunk's facts before the next one is asked for."""
    found = 0
    for start in range(0, len(order), KNOWN_CHUNK):
        if facts_per_relation is not None and found >= facts_per_relation:
            return
        part = order[start : start + KNOWN_CHUNK]
        yield part
        found += sum(bool(rows[(b.relation, b.uuid)]["known"]) for b in part)


def _evaluated(order: Sequence[Bag], rows: Mapping[tuple, Mapping[str, Any]], n: int | None) -> list[Bag]:
    """The evaluated facts of a relation: the first ``n`` known ones in scan order (every scanned fact is in
    ``rows``)."""
    known = []
    for part in _scan(order, rows, n):
        known += [b for b in part if rows[(b.relation, b.uuid)]["known"]]
    return known[:n] if n is not None else known


# --------------------------------------------------------------------------------------------------------------
# Phase 2: attribution
# --------------------------------------------------------------------------------------------------------------


def attribute_fact(
    model: Model,
    prompts: Sequence[str],
    target: str,
    *,
    n_steps: int,
    layers: Sequence[int] | None = None,
    floor: float = CANDIDATE_FLOOR,
    **attribution_kwargs: Any,
) -> dict[str, Any]:
    """Integrated gradients of one fact's prompts, kept sparse: the attribution unit of a sweep.

    Returns:
        ``layers``, ``candidates`` (:meth:`~kn_lens.neurons.Candidates.to_json`: every neuron reaching ``floor x``
        a prompt's max, with its score on every prompt) and ``completeness`` (each prompt's completeness error).

    Example:
        >>> out = attribute_fact(bert, ["The capital of France is [MASK].", "France's capital is [MASK]."], "Paris",
        ...                      n_steps=5)
        >>> sorted(out), len(out["completeness"])
        (['candidates', 'completeness', 'layers'], 2)
    """
    kns = find_knowledge_neurons(model, list(prompts), target, n_steps=n_steps, layers=layers, progress=False,
                                 **attribution_kwargs)  # fmt: skip
    return dict(layers=list(kns.layers), candidates=kns.candidates(floor).to_json(),
                completeness=kns.params.get("completeness"))  # fmt: skip


def _split(bag: Bag, n_heldout: int) -> tuple[list[str], list[str]]:
    """(attribution prompts, held-out prompts): the last ``n_heldout``, if at least 2 prompts remain."""
    k = n_heldout if len(bag.prompts) - n_heldout >= 2 else 0
    return list(bag.prompts[: len(bag.prompts) - k]), list(bag.prompts[len(bag.prompts) - k :])


def _attribution_record(
    model: Model, bag: Bag, manifest: Mapping[str, Any], others: Sequence[str] | None = None
) -> dict[str, Any]:
    """One fact's attribution record; with ``others`` (the relation's other answers), the contrastive one."""
    att = manifest["attribution"]
    train, held = _split(bag, manifest["n_heldout"])
    record = dict(relation=bag.relation, uuid=bag.uuid, subject=bag.subject, answer=bag.answer, target=bag.target,
                  prompts=train, heldout=held, n_steps=att["n_steps"], method=att["method"],
                  objective=att["objective"] if others is None else "contrastive")  # fmt: skip
    kwargs = dict(att["kwargs"], method=att["method"], objective=att["objective"])
    if others is not None:
        record["others"] = list(others)
        kwargs["objective"] = mean_logit_diff(model, bag.target, others) if others else None
    start = time.perf_counter()
    if kwargs["objective"] is None:
        record.update(layers=att["layers"], candidates=None, completeness=None,
                      skipped="no other answer among the relation's known facts")  # fmt: skip
    else:
        record.update(attribute_fact(model, train, bag.target, n_steps=att["n_steps"], layers=att["layers"],
                                     floor=att["floor"], **kwargs))  # fmt: skip
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


# --------------------------------------------------------------------------------------------------------------
# Phase 3: selection, from stored records only
# --------------------------------------------------------------------------------------------------------------


def _negatives(
    record: Mapping[str, Any], pool: Sequence[Mapping[str, Any]], seed: int, n_negatives: int
) -> list[tuple[Mapping[str, Any], int]]:
    """The fact-specific rule's negatives: ``n_negatives`` other facts of the relation (drawn per fact), one of
    their attribution prompts each."""
    rng = random.Random(fact_seed(seed, f"negatives:{record['relation']}:{record['uuid']}"))
    others = [r for r in pool if r["uuid"] != record["uuid"] and r.get("candidates")]
    picked = rng.sample(others, min(n_negatives, len(others)))
    return [(r, rng.randrange(len(r["prompts"]))) for r in picked]


def select_relation(
    rule: str,
    records: Sequence[Mapping[str, Any]],
    *,
    seed: int = 0,
    n_negatives: int = 4,
    negative_share: float = 0.25,
) -> dict[str, Any]:
    """One rule's selection for one relation's facts, from their attribution records (no model needed).

    Args:
        rule: a rule of :data:`kn_lens.evaluation.SELECTIONS`.
        records: the relation's attribution records, in the run's order (for ``"contrastive"``, its contrastive
            records; for ``"fact-specific"`` the others are the negatives' pool).
        seed, n_negatives, negative_share: the fact-specific rule's draw.

    Returns:
        ``rule, relation, description, facts`` (per fact: ``uuid, neurons, share_used, adjustments, fallback,
        dropped``, and the negatives used), ``relation_average`` and ``relation_neurons`` (the released rule's).

    Example:
        >>> from kn_lens.evaluation import sweeps
        >>> stored = [r for r in sweeps.read_attributions(run_dir) if r["relation"] == "P36"]
        >>> line = select_relation("dai", stored)
        >>> [f["neurons"] for f in line["facts"]] == [r["neurons"] for r in read_records(run_dir, rule="dai")
        ...                                           if r["relation"] == "P36"]
        True
    """
    if rule not in SELECTIONS:
        raise ValueError(f"unknown rule {rule!r}; choose among {', '.join(SELECTIONS)}")
    start = time.perf_counter()
    relation = records[0]["relation"] if records else None
    usable = [r for r in records if r.get("candidates")]
    cands = {r["uuid"]: Candidates.from_json(r["candidates"]) for r in usable}
    variant = rule if rule in ("dai", "adaptive", "eleuther") else "adaptive"
    picks = select(list(cands.values()), variant=variant, relations=[relation] * len(cands)) if cands else []
    chosen = dict(zip(cands, picks, strict=True))
    threshold = Rule.of("adaptive").threshold  # the fact-specific rule's negatives: coarse as the adaptive rule
    facts = []
    for r in records:
        picked = chosen.get(r["uuid"])
        entry: dict[str, Any] = dict(uuid=r["uuid"], neurons=[], share_used=None, adjustments=0, fallback="",
                                     dropped={})  # fmt: skip
        if picked is not None:
            neurons = list(picked.neurons)
            entry.update(share_used=picked.share, adjustments=picked.adjustments, fallback=picked.fallback)
            if rule == "fact-specific":
                negatives = _negatives(r, usable, seed, n_negatives)
                coarse = [cands[n["uuid"]].coarse(threshold)[i] for n, i in negatives]
                neurons, dropped = drop_shared(neurons, coarse, negative_share)
                entry["dropped"] = {"negatives": [str(n) for n in dropped]}
                entry["negatives"] = [[n["uuid"], i] for n, i in negatives]
            entry["neurons"] = [str(n) for n in neurons]
        elif r.get("skipped"):
            entry["skipped"] = r["skipped"]
        facts.append(entry)
    first = next(iter(chosen.values()), None)
    return dict(
        rule=rule,
        relation=relation,
        description=SELECTIONS[rule],
        facts=facts,
        relation_average=first.relation_average if first is not None else None,
        relation_neurons=[str(n) for n in first.relation_neurons] if first is not None else [],
        seconds=round(time.perf_counter() - start, 4),
    )


def _attribution_phase(rule: str) -> str:
    return "contrastive" if rule == "contrastive" else "attribution"


def select_records(out: str | os.PathLike, rule: str) -> list[dict[str, Any]]:
    """Re-run a rule's selection on a run folder's stored attribution records: one line per relation, as
    ``selections.jsonl`` holds them (equal to them for the rules the run selected, whatever rule is asked now).

    Example:
        >>> again = select_records(run_dir, "dai")
        >>> stored = [line for line in read_selections(run_dir) if line["rule"] == "dai"]
        >>> [line["facts"] for line in again] == [line["facts"] for line in stored]
        True
        >>> [len(f["neurons"]) for line in select_records(run_dir, "eleuther") for f in line["facts"]]
        [...]
    """
    out = Path(out)
    manifest = read_manifest(out)
    records = _read_phase(out, PHASES[_attribution_phase(rule)])
    if not records:
        raise SweepError(f"{out} has no {_attribution_phase(rule)} records for rule {rule!r}")
    by_relation: dict[str, list[dict[str, Any]]] = {}
    for r in records.values():
        by_relation.setdefault(r["relation"], []).append(r)
    settings = manifest["selection"]
    return [select_relation(rule, by_relation[rid], seed=manifest["seed"], **settings)
            for rid in manifest["relations"] if rid in by_relation]  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Summaries of a run
# --------------------------------------------------------------------------------------------------------------


def coverage(out: str | os.PathLike) -> pd.DataFrame:
    """Per relation: facts scanned, known, evaluated, and per rule the evaluated facts without neurons.

    Example:
        >>> coverage(run_dir)
          relation  scanned  known  evaluated  no neurons (dai)  no neurons (adaptive)
        0      P36       12     12          3                 0                      0
        1      P37       12     12          3                 0                      0
    """
    manifest = read_manifest(out)
    known = pd.DataFrame(read_known(out), columns=["relation", "uuid", "known"])
    attributed = Counter(r["relation"] for r in read_attributions(out))
    rows = []
    for rid in manifest["relations"]:
        part = known[known["relation"] == rid]
        row: dict[str, Any] = dict(relation=rid, scanned=len(part), known=int(part["known"].astype(bool).sum()),
                                   evaluated=attributed.get(rid, 0))  # fmt: skip
        for rule in manifest["rules"]:
            records = [r for r in read_records(out, rule) if r["relation"] == rid]
            row[f"no neurons ({rule})"] = sum(not r["neurons"] for r in records)
        rows.append(row)
    return pd.DataFrame(rows)


def phase_times(out: str | os.PathLike) -> pd.DataFrame:
    """Time spent per phase (and rule): units of work, prompts, seconds summed over processes, prompts per second
    of one process (attribution phases). With N processes side by side, the wall time is about seconds / N.

    Example:
        >>> phase_times(run_dir)["phase"].tolist()
        ['known facts', 'attribution', 'selection', 'selection', 'evaluation', 'evaluation', 'relations', 'relations']
    """
    out = Path(out)
    rows = []
    known = read_known(out)
    rows.append(dict(phase="known facts", rule="", units=len(known), prompts=sum(r["n_prompts"] for r in known),
                     seconds=sum(r.get("seconds", 0.0) for r in known)))  # fmt: skip
    for name in ("attribution", "contrastive"):
        records = [r for r in _read_phase(out, PHASES[name]).values() if r.get("candidates")]
        if records:
            rows.append(dict(phase=name, rule="", units=len(records), prompts=sum(len(r["prompts"]) for r in records),
                             seconds=sum(r["seconds"] for r in records)))  # fmt: skip
    selections = read_selections(out)
    evaluation = read_records(out)
    relations = read_relations(out)
    for rule in read_manifest(out)["rules"]:
        for phase, items in (("selection", [s for s in selections if s["rule"] == rule]),
                             ("evaluation", [r for r in evaluation if r.get("rule") == rule]),
                             ("relations", [r for r in relations if r.get("rule") == rule])):  # fmt: skip
            if items:
                rows.append(dict(phase=phase, rule=rule, units=len(items), prompts=None,
                                 seconds=sum(r.get("seconds", 0.0) for r in items)))  # fmt: skip
    frame = pd.DataFrame(rows)
    frame["prompts_per_s"] = frame["prompts"] / frame["seconds"].where(frame["seconds"] > 0)
    frame.loc[~frame["phase"].isin(["attribution", "contrastive"]), "prompts_per_s"] = float("nan")
    return frame.sort_values("phase", key=lambda s: s.map(_PHASE_ORDER), kind="stable").reset_index(drop=True)


_PHASE_ORDER = {"known facts": 0, "attribution": 1, "contrastive": 2, "selection": 3, "evaluation": 4, "relations": 5}


__all__ = [
    "attribute_fact",
    "coverage",
    "phase_times",
    "select_records",
    "select_relation",
]
