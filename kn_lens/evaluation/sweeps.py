"""Sweeps that survive and scale: PARAREL in phases, one durable JSONL record per unit of work, resumable, sharded.

Context:
    Evaluating knowledge neurons on PARAREL means thousands of attributions: hours on a CPU, minutes on a few
    GPUs. A run here is split into phases, each writing one JSON line per unit of work as soon as it is done
    (flushed and ``fsync``-ed), so a run killed at any point resumes where it stopped and recomputes nothing
    already on disk; re-run the same command to resume:

    1. **known facts**: each relation's facts are shuffled by the seed and scanned until ``facts_per_relation``
       known ones are found (the same uniform sample of known facts as scanning everything, for a fraction of the
       work); every scanned fact is recorded, so the coverage (scanned / known) is exact.
    2. **attribution**, per fact: integrated gradients on the fact's attribution prompts (its last ``n_heldout``
       prompts held out), stored sparse as :class:`~kn_lens.knowledge.Candidates` (every neuron reaching 0.1 x a
       prompt's max, with its score on every prompt), with each prompt's completeness error; for the
       ``"contrastive"`` rule a second attribution of the same prompts with the contrastive objective
       (:func:`kn_lens.scoring.mean_logit_diff` against the relation's other answers).
    3. **selection**, per rule and relation, from the stored candidates only (cheap): any rule can be added to a
       finished run later (``--rules``) without attributing again, and :func:`select_records` re-runs it.
    4. **evaluation**, per rule and fact: suppress / enhance beside every control (held-out paraphrases, same
       relation, other relations, random neurons; specificity), then per rule and relation: erasing the relation's
       most frequent neurons and editing a few of its facts.

    The rules (:data:`kn_lens.evaluation.SELECTIONS`; every record, table and manifest names its rule):
    ``"dai"`` (Dai et al.'s released code, adapted per relation), ``"adaptive"`` (kn_lens's per-fact rule),
    ``"eleuther"``, ``"fact-specific"`` (adaptive, then drop the neurons coarse on more than ``negative_share`` of
    ``n_negatives`` prompts drawn per fact from other known facts of the relation, from their stored candidates)
    and ``"contrastive"`` (adaptive, on the contrastive attribution). No relation filter is applied: neurons
    shared by a relation stay, and the same-relation control shows them.

Run folder::

    manifest.json            every setting that changes numbers (model config and a weights fingerprint, data
                             fingerprint, attribution method/steps/objective/keywords, seeds, counts) and the
                             rules run so far; a resume compares every setting, a folder of another run is refused
    known.jsonl              every scanned fact with whether the model knows it (coverage)
    attribution.jsonl        one record per fact: prompts, held-out prompts, layers, candidates, completeness
    contrastive.jsonl        the same with the contrastive objective (when the rule is asked for)
    selections.jsonl         one line per (rule, relation): each fact's neurons and how the rule reached them
    records.jsonl            one evaluation record per (rule, relation, fact)
    relations.jsonl          per (rule, relation): erase, and edits of some facts
    convergence.jsonl        (optional, :func:`run_convergence`) the neuron sets' stability across quadrature rules

    A phase's records go to ``NAME/part-R.jsonl`` (process ``R``; ``shards/`` for the records) while it runs and
    are merged into ``NAME.jsonl`` in a fixed order when every process is done. Records are keyed by (relation,
    uuid) (and rule): a uuid shared by facts of two relations is two facts.

Sharding:
    ``torchrun --nproc_per_node N -m kn_lens evaluate pararel --out DIR ...`` starts N processes; unit ``i`` of a
    phase (a relation to scan, a fact to attribute or evaluate, a (rule, relation) to erase and edit; in a fixed
    order) goes to process ``i % N``. Each fact's randomness comes from the run seed and the fact's id
    (:func:`kn_lens.evaluation.fact_seed`), so the records are the same with 1 or N processes. Process 0 selects
    (cheap) and merges each phase's shards; ``gloo`` is used on CPU, ``nccl`` on GPUs (one GPU per process,
    ``cuda:LOCAL_RANK``).

Example:
    A real run is ``sweeps.run_pararel(kn_lens.load_model(), pararel.load(folder), "runs/smollm2",
    model_name="SmolLM2-135M", relations=["P36", "P37"], facts_per_relation=50, rules=["dai", "adaptive"])`` (or
    the same from the command line, under torchrun for several processes). A small one, on the tiny BERT and a
    tiny PARAREL-format folder:

    >>> from kn_lens.evaluation import sweeps
    >>> from kn_lens.datasets import pararel
    >>> out = sweeps.run_pararel(bert, pararel.load(pararel_dir), tmp_path / "run", model_name="tiny-bert",
    ...                          relations=["P36", "P37"], facts_per_relation=2, n_steps=5, progress=False)
    >>> sorted(p.name for p in out.iterdir())
    ['attribution.jsonl', 'known.jsonl', 'manifest.json', 'records.jsonl', 'relations.jsonl', 'selections.jsonl']
    >>> [(r["rule"], r["relation"], r["subject"], r["answer"], len(r["neurons"])) for r in sweeps.read_records(out)]
    [('dai', 'P36', 'Peru', 'Lima', 1), ('dai', 'P36', 'Ireland', 'Dublin', 7),
     ('dai', 'P37', 'Finland', 'Finnish', 17), ('dai', 'P37', 'Thailand', 'Thai', 8),
     ('adaptive', 'P36', 'Peru', 'Lima', 1), ('adaptive', 'P36', 'Ireland', 'Dublin', 5),
     ('adaptive', 'P37', 'Finland', 'Finnish', 5), ('adaptive', 'P37', 'Thailand', 'Thai', 5)]

    The released rule keeps the relation's *average* in 2-5 (P36: 1 and 7), or stops after its sixth try
    (P37: 17 and 8); kn_lens's per-fact rule adapts each fact on its own (at most 5, the strongest).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kn_lens._progress import progress_bar
from kn_lens._typing import Model, check_model
from kn_lens.datasets.pararel import Bag, Pararel
from kn_lens.evaluation.convergence import PRESETS, QUADRATURES, convergence
from kn_lens.evaluation.edits import edit_effects, erase_relation, relation_neurons
from kn_lens.evaluation.known import known_facts
from kn_lens.evaluation.records import SELECTIONS, fact_effects, fact_seed, other_answers
from kn_lens.evaluation.sweep_manifest import (
    ATTRIBUTION_KEYWORDS,
    BATCH_SIZE,
    CONTRASTIVE_OBJECTIVE,
    DEFAULT_RULES,
    KIND,
    MANIFEST_KEYS,
    SCHEMA,
    _attribution_settings,
    _fingerprint,
    _fraction,
    _int,
    check_manifest,
    check_rules,
    model_config,
    read_manifest,
    versions,
    weights_fingerprint,
)
from kn_lens.evaluation.sweep_phases import (
    _attribution_phase,
    _attribution_record,
    _evaluated,
    _run_bags,
    _scan,
    _shuffled,
    attribute_fact,
    coverage,
    phase_times,
    select_records,
    select_relation,
)
from kn_lens.evaluation.sweep_store import (
    CONVERGENCE,
    MANIFEST,
    PHASES,
    RECORDS,
    SELECTION,
    SweepError,
    _barrier,
    _py,
    _read_phase,
    _rows,
    _run_phase,
    _write_atomic,
    append_jsonl,
    distributed,
    local_device,
    merge,
    read_attributions,
    read_convergence,
    read_jsonl,
    read_known,
    read_records,
    read_relations,
    read_selections,
)
from kn_lens.neurons import FactPrompts

# --------------------------------------------------------------------------------------------------------------
# The PARAREL sweep
# --------------------------------------------------------------------------------------------------------------


def run_pararel(
    model: Model,
    data: Pararel,
    out: str | os.PathLike,
    *,
    model_name: str,
    relations: Iterable[str] | str | None = None,
    facts_per_relation: int | None = None,
    seed: int = 0,
    n_steps: int = 20,
    rules: Iterable[str] | str = DEFAULT_RULES,
    n_heldout: int = 1,
    n_controls: int = 4,
    n_negatives: int = 4,
    negative_share: float = 0.25,
    known_threshold: float | None = None,
    erase_top: int = 5,
    n_edits: int = 2,
    progress: bool = True,
    **find_kwargs: Any,
) -> Path:
    """Evaluate knowledge neurons on PARAREL facts the model knows, under several selection rules; in resumable
    phases (known facts, attribution, selection, evaluation; see the module docstring); sharded under torchrun.

    Every argument is checked before the first byte is written. Running again with more rules adds them to the
    run (nothing attributed twice); any other setting must match the folder's manifest.

    Args:
        model: the model (each process loads its own).
        data: PARAREL (:func:`kn_lens.datasets.pararel.load`).
        out: the run folder (created; resumed if it holds this run; refused if it holds another).
        model_name: the model's name, recorded in the manifest.
        relations: relation ids (default: all).
        facts_per_relation: known facts to evaluate per relation, drawn uniformly (the relation's facts shuffled
            by ``seed``, scanned until that many are known; default: all known facts).
        seed: the run seed (fact order, random controls, control facts, fact-specific negatives).
        n_steps: integrated-gradient steps.
        rules: selection rules (names of :data:`kn_lens.evaluation.SELECTIONS`, or ``"dai,adaptive"``).
        n_heldout: prompts per fact held out of the attribution.
        n_controls: same-relation and other-relation control facts per fact.
        n_negatives, negative_share: the fact-specific rule: neurons coarse on more than ``negative_share`` of
            ``n_negatives`` prompts of other known facts of the relation are dropped.
        known_threshold: None: a fact is known if its answer is top-1 on half its prompts; else ``p >=``.
        erase_top: the relation's most frequent neurons erased in the relation-level test (0: skip).
        n_edits: facts edited per relation (0: skip).
        progress: progress bars.
        **find_kwargs: attribution keywords (:data:`ATTRIBUTION_KEYWORDS`: ``method``, ``layers``, ``objective``
            as a name, ...); recorded in the manifest.

    Returns:
        The run folder (read it with :func:`read_records`, :func:`read_relations`, :func:`read_known`, ...).

    Raises:
        SweepError: the folder holds another run (or another tool's files).
        TypeError: ``data`` is not a loaded PARAREL (e.g. a path), an unknown keyword.
        ValueError: an argument out of range, an unknown rule or relation.

    Example:
        >>> from kn_lens.datasets import pararel
        >>> data = pararel.load(pararel_dir)                  # the tiny BERT's facts in PARAREL's format
        >>> out = run_pararel(bert, data, tmp_path / "p36", relations="P36", facts_per_relation=2, n_steps=5,
        ...                   rules="dai", model_name="tiny-bert", progress=False)
        >>> [(r["rule"], r["subject"], r["neurons"]) for r in read_records(out)]
        [('dai', 'Peru', ['L1N274']), ('dai', 'Ireland', ['L1N472', 'L1N512', 'L1N56', 'L1N753', 'L1N735', 'L1N720',
         'L1N861'])]

        Run again with another rule: it is added, from the stored attributions; other settings are refused:

        >>> out = run_pararel(bert, data, out, relations="P36", facts_per_relation=2, n_steps=5,
        ...                   rules="dai,adaptive", model_name="tiny-bert", progress=False)
        >>> sorted({r["rule"] for r in read_records(out)})
        ['adaptive', 'dai']
        >>> run_pararel(bert, data, out, relations="P36", facts_per_relation=2, n_steps=10,
        ...             model_name="tiny-bert", progress=False)
        Traceback (most recent call last):
            ...
        kn_lens.evaluation.sweep_store.SweepError: .../p36 holds another run (attribution: ... there, ... now). ...
    """
    check_model(model)
    if not isinstance(data, Pararel):
        raise TypeError(f"data must be PARAREL loaded with kn_lens.datasets.pararel.load(folder), got "
                        f"{type(data).__name__}; pass pararel.load({str(data)!r}) instead")  # fmt: skip
    if not isinstance(out, str | os.PathLike):
        raise TypeError(f"out must be a folder path, got {type(out).__name__}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SweepError(f"{out} is a file; give a folder for the run")
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
    rule_list = check_rules(rules)
    settings = dict(
        facts_per_relation=_int("facts_per_relation", facts_per_relation, 1, none=True),
        seed=_int("seed", seed, 0),
        n_heldout=_int("n_heldout", n_heldout, 0),
        n_controls=_int("n_controls", n_controls, 0),
        known_threshold=_fraction("known_threshold", known_threshold, low_open=True, high_open=False, none=True),
        erase_top=_int("erase_top", erase_top, 0),
        n_edits=_int("n_edits", n_edits, 0),
        selection=dict(n_negatives=_int("n_negatives", n_negatives, 0),
                       negative_share=_fraction("negative_share", negative_share, low_open=False, high_open=True)),
        attribution=_attribution_settings(model, n_steps, find_kwargs),
    )  # fmt: skip
    bags, skipped = _run_bags(model, data, relations)
    chosen = list(dict.fromkeys(b.relation for b in bags))
    if not chosen:
        raise ValueError("no facts left: no relation has enough templates/single-token answers for this model")
    rank, world = distributed()
    manifest = dict(
        kind=KIND,
        schema=SCHEMA,
        model=model_name,
        model_config=model_config(model, settings["attribution"]["layers"]),
        data=dict(fingerprint=_fingerprint(data, chosen), facts=len(bags), **skipped),
        relations=chosen,
        known_rule="top-1 on >= 0.5 of prompts" if known_threshold is None else f"p >= {known_threshold:g}",
        **settings,
        contrastive_objective=CONTRASTIVE_OBJECTIVE,
        rules={name: SELECTIONS[name] for name in rule_list},
        data_path=str(data.path),
        world_size=world,
        versions=versions(),
    )
    if rank == 0:
        if check_manifest(out, manifest):
            old = read_manifest(out)
            manifest["rules"] = {**old["rules"], **manifest["rules"]}  # rules run before stay listed
        out.mkdir(parents=True, exist_ok=True)
        _write_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    _barrier(world)
    if rank != 0:
        check_manifest(out, manifest)
    manifest = read_manifest(out)
    run = _Run(model, out, manifest, bags, rank, world, progress)
    run.known()
    run.attribute("attribution")
    if "contrastive" in rule_list:
        run.attribute("contrastive")
    run.select(rule_list)
    run.evaluate(rule_list)
    return out


class _Run:
    """The phases of one :func:`run_pararel` invocation (state shared between them)."""

    def __init__(self, model: Model, out: Path, manifest: dict, bags: list[Bag], rank: int, world: int,
                 progress: bool) -> None:  # fmt: skip
        self.model, self.out, self.manifest, self.rank, self.world = model, out, manifest, rank, world
        self.progress = progress
        self.seed = manifest["seed"]
        self.by_relation: dict[str, list[Bag]] = {}
        for bag in bags:
            self.by_relation.setdefault(bag.relation, []).append(bag)
        self.chosen: dict[str, list[Bag]] = {}
        self.facts: list[Bag] = []

    def known(self) -> None:
        """Scan each relation's facts in the seed's order until enough known ones (relations sharded over the
        processes); then every process derives the same evaluated facts from ``known.jsonl``."""
        m = self.manifest
        relations = [rid for rid in m["relations"] if self.by_relation.get(rid)]
        orders = {rid: _shuffled(self.by_relation[rid], self.seed, rid) for rid in relations}
        n = m["facts_per_relation"]

        def missing(rid: str, done: Mapping[tuple, Any]) -> bool:
            try:
                _evaluated(orders[rid], done, n)
            except KeyError:
                return True
            return False

        def compute(rid: str, done: Mapping[tuple, Any]) -> Iterator[dict[str, Any]]:
            rows = dict(done)
            for part in _scan(orders[rid], rows, n):
                todo = [b for b in part if (rid, b.uuid) not in rows]
                if not todo:
                    continue
                begin = time.perf_counter()
                _, table = known_facts(self.model, todo, threshold=m["known_threshold"])
                seconds = round((time.perf_counter() - begin) / len(todo), 4)
                for row in table.to_dict("records"):
                    row = {k: _py(v) for k, v in row.items()}
                    row["seconds"] = seconds
                    rows[(rid, row["uuid"])] = row
                    yield row

        order = [(rid, b.uuid) for rid in relations for b in orders[rid]]
        _run_phase(self.out, PHASES["known"], relations, compute, missing, order, self.rank, self.world,
                   "known facts (relations)", self.progress)  # fmt: skip
        rows = _read_phase(self.out, PHASES["known"])
        self.chosen = {rid: _evaluated(orders[rid], rows, n) for rid in relations}
        self.facts = [b for rid in relations for b in self.chosen[rid]]
        self.order = [(b.relation, b.uuid) for b in self.facts]

    def attribute(self, name: str) -> None:
        def compute(bag: Bag, done: Mapping[tuple, Any]) -> Iterator[dict[str, Any]]:
            if name != "contrastive":
                yield _attribution_record(self.model, bag, self.manifest)
                return
            relation = [b for b in self.chosen[bag.relation] if b.uuid != bag.uuid]
            others = other_answers(self.model, bag.target, relation)
            yield _attribution_record(self.model, bag, self.manifest, others)

        _run_phase(self.out, PHASES[name], self.facts, compute, lambda b, done: (b.relation, b.uuid) not in done,
                   self.order, self.rank, self.world, name, self.progress)  # fmt: skip

    def select(self, rules: Sequence[str]) -> None:
        if self.rank == 0:
            done = {(line["rule"], line["relation"]) for line in read_jsonl(self.out / SELECTION)}
            for rule in rules:
                records = _read_phase(self.out, PHASES[_attribution_phase(rule)])
                for rid in self.manifest["relations"]:
                    if (rule, rid) in done or not self.chosen.get(rid):
                        continue
                    stored = [records[(rid, b.uuid)] for b in self.chosen[rid]]
                    line = select_relation(rule, stored, seed=self.seed, **self.manifest["selection"])
                    append_jsonl(self.out / SELECTION, line)
        _barrier(self.world)

    def evaluate(self, rules: Sequence[str]) -> None:
        selected = {(line["rule"], line["relation"], f["uuid"]): f for line in read_selections(self.out)
                    for f in line["facts"]}  # fmt: skip
        attributions = {name: _read_phase(self.out, PHASES[name]) for name in {_attribution_phase(r) for r in rules}}
        known = self.facts

        def compute(bag: Bag, done: Mapping[tuple, Any]) -> Iterator[dict[str, Any]]:
            rng = random.Random(fact_seed(self.seed, bag.uuid))
            same_pool = [b for b in self.chosen[bag.relation] if b.uuid != bag.uuid]
            other_pool = [b for b in known if b.relation != bag.relation]
            n = self.manifest["n_controls"]
            same = rng.sample(same_pool, min(n, len(same_pool)))
            other = rng.sample(other_pool, min(n, len(other_pool)))
            clean: dict = {}  # the fact's prompts and controls measured once, whatever the rule
            for rule in rules:
                if (rule, bag.relation, bag.uuid) in done:
                    continue
                att = attributions[_attribution_phase(rule)][(bag.relation, bag.uuid)]
                chosen = selected[(rule, bag.relation, bag.uuid)]
                start = time.perf_counter()
                measured = fact_effects(self.model, att["prompts"], bag.target, chosen["neurons"],
                                        heldout=att["heldout"], same_relation=same, other_relations=other,
                                        seed=fact_seed(self.seed, bag.uuid), relation=bag.relation,
                                        batch_size=BATCH_SIZE, clean_cache=clean)  # fmt: skip
                yield dict(
                    rule=rule, relation=bag.relation, uuid=bag.uuid, subject=bag.subject, answer=bag.answer,
                    target=bag.target, n_prompts=len(att["prompts"]), n_heldout=len(att["heldout"]),
                    neurons=chosen["neurons"], layers=[int(n[1:].split("N")[0]) for n in chosen["neurons"]],
                    random_neurons=measured["random_neurons"], share_used=chosen["share_used"],
                    adjustments=chosen["adjustments"], fallback=chosen["fallback"], dropped=chosen["dropped"],
                    completeness=att.get("completeness"), n_steps=att["n_steps"], effects=measured["effects"],
                    specificity=measured["specificity"], same_relation_controls=[b.uuid for b in same],
                    other_relation_controls=[[b.relation, b.uuid] for b in other],
                    seconds_attribution=att["seconds"], seconds=round(time.perf_counter() - start, 3),
                )  # fmt: skip

        order = [(rule, *key) for rule in self.manifest["rules"] for key in self.order]
        _run_phase(self.out, PHASES["records"], known, compute,
                   lambda b, done: any((r, b.relation, b.uuid) not in done for r in rules),
                   order, self.rank, self.world, "evaluation", self.progress)  # fmt: skip
        self.relation_level(rules, attributions)

    def _relation_keys(self, rule: str, rid: str) -> list[tuple]:
        keys = [(rule, "erase", rid, None)] if self.manifest["erase_top"] else []
        return keys + [(rule, "edit", rid, b.uuid) for b in self.chosen[rid][: self.manifest["n_edits"]]]

    def relation_level(self, rules: Sequence[str], attributions: Mapping[str, Mapping[tuple, Any]]) -> None:
        """Per rule and relation (sharded like the facts): erase the relation's most frequent neurons; edit a few of
        its facts."""
        records = _read_phase(self.out, PHASES["records"])
        model, seed, m = self.model, self.seed, self.manifest
        has_unk = getattr(getattr(model, "tokenizer", None), "unk_token_id", None) is not None
        items = [(rule, rid) for rule in rules for rid in m["relations"] if self.chosen.get(rid)]
        order = [k for rule in m["rules"] for rid in m["relations"] if self.chosen.get(rid)
                 for k in self._relation_keys(rule, rid)]  # fmt: skip

        def compute(item: tuple[str, str], done: Mapping[tuple, Any]) -> Iterator[dict[str, Any]]:
            rule, rid = item
            bags = self.chosen[rid]
            recs = [records[(rule, rid, b.uuid)] for b in bags if (rule, rid, b.uuid) in records]
            rng = random.Random(fact_seed(seed, rid))
            others_pool = [b for b in self.facts if b.relation != rid]
            others = rng.sample(others_pool, min(20, len(others_pool)))
            if m["erase_top"] and (rule, "erase", rid, None) not in done:
                start = time.perf_counter()
                neurons = relation_neurons(recs, top=m["erase_top"], min_count=2) or relation_neurons(
                    recs, top=m["erase_top"], min_count=1
                )
                rows = []
                modes = ("zero", "unk") if has_unk else ("zero",)
                for mode in modes if neurons else ():
                    table = erase_relation(model, bags, neurons, other_facts=others, mode=mode,
                                           seed=fact_seed(seed, rid), relation=rid)  # fmt: skip
                    rows += _rows(table)
                yield dict(rule=rule, kind="erase", relation=rid, uuid=None, neurons=[str(n) for n in neurons],
                           rows=rows, seconds=round(time.perf_counter() - start, 3))  # fmt: skip
            for bag in bags[: m["n_edits"]]:
                if (rule, "edit", rid, bag.uuid) in done:
                    continue
                start = time.perf_counter()
                record = records.get((rule, rid, bag.uuid))
                targets = sorted({b.target for b in bags if b.target != bag.target})
                rows = []
                if record and record["neurons"] and targets:
                    att = attributions[_attribution_phase(rule)][(rid, bag.uuid)]
                    new = random.Random(fact_seed(seed, "edit:" + bag.uuid)).choice(targets)
                    neighbours = [b for b in bags if b.uuid != bag.uuid][:5]
                    # old = the fact's answer: the model knows it (on most prompts, not always the first one)
                    table = edit_effects(model, att["prompts"], record["neurons"], new, old=bag.target,
                                         heldout=att["heldout"], neighbours=neighbours, seed=fact_seed(seed, bag.uuid),
                                         relation=rid)  # fmt: skip
                    rows = _rows(table)
                yield dict(rule=rule, kind="edit", relation=rid, uuid=bag.uuid, rows=rows,
                           seconds=round(time.perf_counter() - start, 3))  # fmt: skip

        _run_phase(self.out, PHASES["relations"], items, compute,
                   lambda item, done: any(k not in done for k in self._relation_keys(*item)),
                   order, self.rank, self.world, "relations (erase, edit)", self.progress)  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Convergence of a finished run
# --------------------------------------------------------------------------------------------------------------


def run_convergence(
    model: Model,
    data: Pararel | None,
    out: str | os.PathLike,
    *,
    facts_per_relation: int = 2,
    settings: Sequence[tuple[str, int]] | None = None,
    reference: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """How stable a finished run's neuron sets are across quadrature rules: ``convergence.jsonl`` in its folder.

    For the first ``facts_per_relation`` attributed facts of each relation, the fact's stored attribution prompts
    (its held-out ones left out, as in the run) are attributed again with each rule of ``settings``, with the
    run's own attribution keywords (layers, objective, ...), and compared with a fine ``reference``
    (:func:`kn_lens.evaluation.convergence.convergence`; neurons by the ``"adaptive"`` rule). One line per fact is
    appended (flushed and fsynced); re-running skips the facts already done. ``kn-lens report`` shows the result beside
    each fact's completeness error from the run itself.

    Args:
        model: the run's model (checked against the manifest's sizes and weights fingerprint).
        data: the run's PARAREL (every fact of the run must be in it: checked), or None.
        out: a run folder of :func:`run_pararel` with attribution records.
        facts_per_relation: facts per relation to re-attribute.
        settings, reference: see :func:`kn_lens.evaluation.convergence.convergence` (defaults there).
        progress: a progress bar.

    Returns:
        The run folder.

    Raises:
        SweepError: not a run folder, no attribution yet, another model's run, data without the run's facts.

    Example:
        >>> import shutil
        >>> from kn_lens.datasets import pararel
        >>> run = shutil.copytree(run_dir, tmp_path / "run")       # a finished tiny-BERT run, copied
        >>> path = run_convergence(bert, pararel.load(pararel_dir), run, facts_per_relation=1,
        ...                        settings=[("riemann_left", 5)], reference=dict(method="gausslegendre", n_steps=16),
        ...                        progress=False)
        >>> rows = read_convergence(path)
        >>> [(r["fact"], r["method"], r["n_steps"], r["reference"]) for r in rows]
        [('P36-Peru', 'gausslegendre', 16, True), ('P36-Peru', 'riemann_left', 5, False),
         ('P37-Finland', 'gausslegendre', 16, True), ('P37-Finland', 'riemann_left', 5, False)]
    """
    check_model(model)
    out = Path(out)
    manifest = read_manifest(out)
    _int("facts_per_relation", facts_per_relation, 1)
    if data is not None and not isinstance(data, Pararel):
        raise TypeError(f"data must be PARAREL loaded with kn_lens.datasets.pararel.load(folder), or None; got "
                        f"{type(data).__name__}")  # fmt: skip
    att = manifest["attribution"]
    sizes = model_config(model, att["layers"])
    if sizes != manifest["model_config"]:
        raise SweepError(f"{out} was run with another model ({manifest['model_config']}); this one is {sizes}")
    records = list(_read_phase(out, PHASES["attribution"]).values())
    if not records:
        raise SweepError(f"{out} has no attribution records yet; run `kn-lens evaluate pararel --out {out}` first")
    if data is not None:
        have = {(f.relation, f.uuid) for rid, facts in data.facts.items() for f in facts}
        missing = [f"{r['relation']}/{r['uuid']}" for r in records if (r["relation"], r["uuid"]) not in have]
        if missing:
            raise SweepError(f"{len(missing)} of the run's {len(records)} facts are not in this PARAREL "
                             f"({data.path}; e.g. {', '.join(missing[:3])}): its ids differ from the run's data "
                             f"({manifest.get('data_path')})")  # fmt: skip
    done = {(r.get("relation"), r["fact"]) for r in read_jsonl(out / CONVERGENCE)}
    chosen: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        group = chosen.setdefault(record["relation"], [])
        if len(group) < facts_per_relation:
            group.append(record)
    todo = [r for group in chosen.values() for r in group if (r["relation"], r["uuid"]) not in done]
    kwargs = dict(att["kwargs"], layers=att["layers"], objective=att["objective"])
    for record in progress_bar(todo, "convergence (facts)", enabled=progress):
        fact = FactPrompts(tuple(record["prompts"]), record["target"], record["relation"], name=record["uuid"])
        frame = convergence(model, [fact], settings=QUADRATURES if settings is None else settings,
                            reference=PRESETS["converged"] if reference is None else reference,
                            progress=False, **kwargs)  # fmt: skip
        append_jsonl(out / CONVERGENCE, dict(relation=record["relation"], fact=record["uuid"], rows=_rows(frame)))
    return out


__all__ = [
    "ATTRIBUTION_KEYWORDS",
    "DEFAULT_RULES",
    "MANIFEST",
    "MANIFEST_KEYS",
    "RECORDS",
    "SweepError",
    "append_jsonl",
    "attribute_fact",
    "check_manifest",
    "check_rules",
    "coverage",
    "distributed",
    "local_device",
    "merge",
    "model_config",
    "phase_times",
    "read_attributions",
    "read_convergence",
    "read_jsonl",
    "read_known",
    "read_manifest",
    "read_records",
    "read_relations",
    "read_selections",
    "run_convergence",
    "run_pararel",
    "select_records",
    "select_relation",
    "versions",
    "weights_fingerprint",
]
