"""Sweeps that survive and scale: one JSONL record per fact, resumable, sharded over processes with torchrun.

Context:
    Evaluating knowledge neurons on PARAREL means thousands of attributions: hours on a CPU, minutes on a few
    GPUs. A Python loop that keeps its results in memory loses everything when the process dies. Here every
    finished fact is appended to a JSONL file at once (flushed and ``fsync``-ed), so a run killed at any point
    resumes where it stopped: re-run the same command and the facts already on disk are skipped.

Run folder::

    manifest.json        the run's settings (model, data, relations, seeds, steps, versions); a folder holding
                         another run's manifest is refused
    known.jsonl          every scanned fact with whether the model knows it (coverage; unknown facts listed)
    shards/part-R.jsonl  the records of process R while the run is going
    records.jsonl        all fact records, merged in a fixed order once every fact is done
    relations.jsonl      relation-level results: erasing the relation's neurons, editing some of its facts
    convergence.jsonl    (optional, :func:`run_convergence`) the neuron sets' stability across quadrature rules

Sharding:
    ``torchrun --nproc_per_node N -m kn_lens evaluate pararel --out DIR ...`` starts N processes; fact ``i`` (in
    a fixed order) goes to process ``i % N``. Each fact's randomness comes from the run seed and the fact's id
    (:func:`kn_lens.evaluate.fact_seed`), so the records are the same with 1 or N processes. Process 0 selects
    the known facts, merges the shards and computes the relation-level results; ``gloo`` is used on CPU,
    ``nccl`` on GPUs (one GPU per process, ``cuda:LOCAL_RANK``).

Example:
    A real run is ``sweeps.run_pararel(kn_lens.load_model(), pararel.load(folder), "runs/smollm2",
    model_name="SmolLM2-135M", relations=["P36", "P37"], facts_per_relation=50)`` (or the same from the command
    line, under torchrun for several processes). A small one, on the tiny BERT and a tiny PARAREL-format folder:

    >>> from kn_lens import sweeps
    >>> from kn_lens.datasets import pararel
    >>> out = sweeps.run_pararel(bert, pararel.load(pararel_dir), tmp_path / "run", model_name="tiny-bert",
    ...                          relations=["P36", "P37"], facts_per_relation=2, n_steps=5, progress=False)
    >>> sorted(p.name for p in out.iterdir())
    ['known.jsonl', 'manifest.json', 'records.jsonl', 'relations.jsonl', 'shards']
    >>> records = sweeps.read_records(out)
    >>> [(r["relation"], r["subject"], r["answer"], len(r["neurons"])) for r in records]
    [('P36', 'France', 'Paris', 5), ('P36', 'Germany', 'Berlin', 5), ('P37', 'Portugal', 'Portuguese', 5),
     ('P37', 'Poland', 'Polish', 5)]
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from kn_lens._typing import Model, check_model
from kn_lens.datasets.pararel import Bag, Pararel, known_facts
from kn_lens.evaluate import (
    SELECTIONS,
    edit_effects,
    erase_relation,
    evaluate_fact,
    fact_seed,
    relation_neurons,
)

MANIFEST = "manifest.json"
RECORDS = "records.jsonl"
RELATIONS = "relations.jsonl"
KNOWN = "known.jsonl"
SHARDS = "shards"
CONVERGENCE = "convergence.jsonl"
#: manifest keys that must match for a folder to be resumed (versions and timestamps may differ)
SETTINGS = ("kind", "model", "data", "relations", "facts_per_relation", "seed", "n_steps", "selection", "n_heldout",
            "n_controls", "known_rule", "erase_top", "n_edits")  # fmt: skip


class SweepError(ValueError):
    """A run folder cannot be used (another run's manifest, unreadable files)."""


# --------------------------------------------------------------------------------------------------------------
# Durable JSONL
# --------------------------------------------------------------------------------------------------------------


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one record as a JSON line, flushed and fsync-ed (on disk when this returns).

    Example:
        >>> append_jsonl(tmp_path / "part-0.jsonl", {"uuid": "a", "neurons": ["L1N2"]})
        >>> append_jsonl(tmp_path / "part-0.jsonl", {"uuid": "b", "neurons": []})
        >>> print((tmp_path / "part-0.jsonl").read_text(), end="")
        {"uuid": "a", "neurons": ["L1N2"]}
        {"uuid": "b", "neurons": []}
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _repair_tail(path)
    line = json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _repair_tail(path: Path) -> None:
    """Cut a half-written last line (the process was killed mid-write), so the next append starts clean."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSONL file; a half-written last line is ignored, a corrupt line elsewhere raises.

    Example:
        >>> records = read_jsonl(run_dir / "records.jsonl")    # a finished run of the tiny BERT
        >>> len(records), records[0]["subject"], records[0]["neurons"]
        (6, 'France', ['L1N253', 'L1N292', 'L1N990', 'L0N721', 'L1N1001'])
        >>> read_jsonl(run_dir / "no-such-file.jsonl")
        []
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):  # the unterminated last line of a killed writer
                break
            raise SweepError(f"{path}, line {number}: not valid JSON ({err.msg})") from None
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


# --------------------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------------------


def distributed() -> tuple[int, int]:
    """``(rank, world_size)``, joining the torchrun process group if one is being started (else ``(0, 1)``).

    Uses ``nccl`` when CUDA is available, ``gloo`` otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=6))
    return dist.get_rank(), dist.get_world_size()


def local_device(device: str | None) -> str | None:
    """Under torchrun on GPUs, each process takes ``cuda:LOCAL_RANK``; otherwise ``device`` unchanged."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.cuda.is_available() and device in (None, "cuda"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("kn-lens", "torch", "transformer-lens", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


# --------------------------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------------------------


def _fingerprint(data: Pararel, relations: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for rid in relations:
        digest.update(rid.encode())
        digest.update("\n".join(data.relations[rid].templates).encode())
        for f in data.facts[rid]:
            digest.update(f"{f.uuid}\t{f.subject}\t{f.answer}\n".encode())
    return digest.hexdigest()[:16]


def check_manifest(out: Path, manifest: Mapping[str, Any]) -> bool:
    """True if ``out`` already holds this run (resume); False if it holds none; raises if it holds another."""
    path = out / MANIFEST
    if not path.exists():
        if (out / RECORDS).exists() or (out / SHARDS).exists():
            raise SweepError(f"{out} holds records but no {MANIFEST}; use an empty folder for a new run")
        return False
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SweepError(f"{path} is not a readable manifest ({err}); use another --out folder") from None
    diff = [k for k in SETTINGS if old.get(k) != manifest.get(k)]
    if diff:
        details = "; ".join(f"{k}: {old.get(k)!r} there, {manifest.get(k)!r} now" for k in diff)
        raise SweepError(
            f"{out} holds another run ({details}). Re-run with the same settings to resume it, or choose another "
            "--out folder"
        )
    return True


# --------------------------------------------------------------------------------------------------------------
# The PARAREL sweep
# --------------------------------------------------------------------------------------------------------------


def _select_known(
    model: Model,
    bags: Sequence[Bag],
    relations: Sequence[str],
    facts_per_relation: int | None,
    threshold: float | None,
    path: Path,
    progress: bool,
) -> list[dict[str, Any]]:
    """Scan facts relation by relation (file order) until ``facts_per_relation`` known ones; cached in a file."""
    cached = {(r["relation"], r["uuid"]): r for r in read_jsonl(path)}
    rows: list[dict[str, Any]] = []
    by_relation: dict[str, list[Bag]] = {}
    for bag in bags:
        by_relation.setdefault(bag.relation, []).append(bag)
    chunk = 16  # facts measured per step (their prompts share forward passes); fixed, so runs are reproducible
    for rid in relations:
        found, pending = 0, by_relation.get(rid, [])
        for start in _bar(range(0, len(pending), chunk), progress, f"known facts {rid} ({chunk} per step)"):
            if facts_per_relation is not None and found >= facts_per_relation:
                break
            part = pending[start : start + chunk]
            todo = [b for b in part if (rid, b.uuid) not in cached]
            if todo:
                _, table = known_facts(model, todo, threshold=threshold)
                for row in table.to_dict("records"):
                    row = {k: _py(v) for k, v in row.items()}
                    append_jsonl(path, row)
                    cached[(rid, row["uuid"])] = row
            for bag in part:
                rows.append(cached[(rid, bag.uuid)])
                found += bool(cached[(rid, bag.uuid)]["known"])
    return rows


def _py(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _bar(items: Sequence[Any], enabled: bool, desc: str, position: int = 0) -> Iterator[Any]:
    if not enabled:
        return iter(items)
    from tqdm.auto import tqdm

    return iter(tqdm(items, desc=desc, position=position, leave=position == 0))


def _done(out: Path) -> set[str]:
    done = {r["uuid"] for r in read_jsonl(out / RECORDS)}
    for shard in sorted((out / SHARDS).glob("part-*.jsonl")) if (out / SHARDS).is_dir() else ():
        done.update(r["uuid"] for r in read_jsonl(shard))
    return done


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
    selection: str = "dai",
    n_heldout: int = 1,
    n_controls: int = 4,
    known_threshold: float | None = None,
    erase_top: int = 5,
    n_edits: int = 2,
    progress: bool = True,
    **find_kwargs: Any,
) -> Path:
    """Evaluate knowledge neurons on PARAREL facts the model knows; resumable; sharded under torchrun.

    Args:
        model: the model (each process loads its own).
        data: PARAREL (:func:`kn_lens.datasets.pararel.load`).
        out: the run folder (created; resumed if it holds this run; refused if it holds another).
        model_name: the model's name, recorded in the manifest.
        relations: relation ids (default: all).
        facts_per_relation: known facts to evaluate per relation (default: all known facts).
        seed: the run seed (random controls, control facts, fact-specific negatives).
        n_steps: integrated-gradient steps.
        selection: ``"dai"`` or ``"fact-specific"`` (see :func:`kn_lens.evaluate.evaluate_fact`).
        n_heldout: prompts per fact held out of the attribution.
        n_controls: same-relation and other-relation control facts per fact.
        known_threshold: None: a fact is known if its answer is top-1 on half its prompts; else ``p >=``.
        erase_top: the relation's most frequent neurons erased in the relation-level test (0: skip).
        n_edits: facts edited per relation (0: skip).
        progress: progress bars.
        **find_kwargs: more keywords for the selection.

    Returns:
        The run folder, holding ``records.jsonl`` (one record per fact) and ``relations.jsonl``.

    Raises:
        SweepError: the folder holds another run.

    Example:
        >>> from kn_lens.datasets import pararel
        >>> data = pararel.load(pararel_dir)                  # the tiny BERT's facts in PARAREL's format
        >>> out = run_pararel(bert, data, tmp_path / "p36", relations="P36", facts_per_relation=2, n_steps=5,
        ...                   model_name="tiny-bert", progress=False)
        >>> [(r["subject"], r["neurons"]) for r in read_records(out)]
        [('France', ['L1N253', 'L1N292', 'L1N990', 'L0N721', 'L1N1001']),
         ('Germany', ['L1N274', 'L1N410', 'L1N152', 'L1N804', 'L1N857'])]
        >>> read_relations(out)[0]["kind"]
        'erase'

        Run again, the same command resumes (here: nothing left to do); other settings are refused:

        >>> out = run_pararel(bert, data, out, relations="P36", facts_per_relation=2, n_steps=5,
        ...                   model_name="tiny-bert", progress=False)
        >>> run_pararel(bert, data, out, relations="P36", facts_per_relation=2, n_steps=10,
        ...             model_name="tiny-bert", progress=False)
        Traceback (most recent call last):
            ...
        kn_lens.sweeps.SweepError: .../p36 holds another run (n_steps: 5 there, 10 now). Re-run with the same ...
    """
    check_model(model)
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    for name, value, low in (("facts_per_relation", facts_per_relation, 1), ("n_steps", n_steps, 1),
                             ("n_controls", n_controls, 0), ("erase_top", erase_top, 0), ("n_edits", n_edits, 0),
                             ("seed", seed, 0)):  # fmt: skip
        if value is None and name == "facts_per_relation":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    out = Path(out)
    rank, world = distributed()
    bags = data.bags(model, relations=relations)
    chosen = list(dict.fromkeys(b.relation for b in bags))
    if not chosen:
        raise ValueError("no facts left: no relation has enough templates/single-token answers for this model")
    manifest = dict(
        kind="kn_lens.pararel",
        model=model_name,
        data=dict(fingerprint=_fingerprint(data, chosen), facts=len(bags)),
        relations=chosen,
        facts_per_relation=facts_per_relation,
        seed=seed,
        n_steps=n_steps,
        selection=selection,
        n_heldout=n_heldout,
        n_controls=n_controls,
        known_rule="top-1 on >= 0.5 of prompts" if known_threshold is None else f"p >= {known_threshold:g}",
        erase_top=erase_top,
        n_edits=n_edits,
        find_kwargs={k: repr(v) for k, v in find_kwargs.items()},
        model_config=dict(n_layers=model.cfg.n_layers, d_mlp=model.cfg.d_mlp, d_model=model.cfg.d_model),
        data_path=str(data.path),
        world_size=world,
        versions=versions(),
    )
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if not check_manifest(out, manifest):
            _write_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        _select_known(model, bags, chosen, facts_per_relation, known_threshold, out / KNOWN, progress)
    _barrier(world)
    if rank != 0:
        check_manifest(out, manifest)

    known_uuids = {(r["relation"], r["uuid"]) for r in read_jsonl(out / KNOWN) if r["known"]}
    known = [b for b in bags if (b.relation, b.uuid) in known_uuids]
    by_relation: dict[str, list[Bag]] = {}
    for bag in known:
        group = by_relation.setdefault(bag.relation, [])
        if facts_per_relation is None or len(group) < facts_per_relation:
            group.append(bag)
    known = [b for rid in chosen for b in by_relation.get(rid, [])]

    done = _done(out)
    mine = [b for i, b in enumerate(known) if i % world == rank and b.uuid not in done]
    shard = out / SHARDS / f"part-{rank}.jsonl"
    for bag in _bar(mine, progress, f"facts (process {rank}/{world})", position=rank):
        rng = random.Random(fact_seed(seed, bag.uuid))
        same_pool = [b for b in by_relation[bag.relation] if b.uuid != bag.uuid]
        other_pool = [b for b in known if b.relation != bag.relation]
        same = rng.sample(same_pool, min(n_controls, len(same_pool)))
        other = rng.sample(other_pool, min(n_controls, len(other_pool)))
        record = evaluate_fact(model, bag, same_relation=same, other_relations=other, n_heldout=n_heldout,
                               seed=seed, selection=selection, n_steps=n_steps, **find_kwargs)  # fmt: skip
        record["same_relation_controls"] = [b.uuid for b in same]
        record["other_relation_controls"] = [b.uuid for b in other]
        append_jsonl(shard, record)
    _barrier(world)
    if rank == 0:
        merge(out, [b.uuid for b in known])
        _relation_level(model, out, by_relation, known, seed=seed, erase_top=erase_top, n_edits=n_edits,
                        n_heldout=n_heldout, progress=progress)  # fmt: skip
    _barrier(world)
    return out


def merge(out: str | os.PathLike, order: Sequence[str] | None = None) -> Path:
    """Merge ``records.jsonl`` and the process shards into ``records.jsonl`` (one record per fact, no duplicate,
    in ``order`` of uuids when given), then remove the shards.

    Example:
        >>> append_jsonl(tmp_path / "shards" / "part-0.jsonl", {"uuid": "b", "neurons": []})
        >>> append_jsonl(tmp_path / "shards" / "part-1.jsonl", {"uuid": "a", "neurons": ["L1N2"]})
        >>> merge(tmp_path, order=["a", "b"]).name
        'records.jsonl'
        >>> [r["uuid"] for r in read_jsonl(tmp_path / "records.jsonl")], list((tmp_path / "shards").iterdir())
        (['a', 'b'], [])
    """
    out = Path(out)
    records: dict[str, dict[str, Any]] = {}
    shards = sorted((out / SHARDS).glob("part-*.jsonl")) if (out / SHARDS).is_dir() else []
    for path in [out / RECORDS, *shards]:
        for r in read_jsonl(path):
            records.setdefault(r["uuid"], r)
    rank = {u: i for i, u in enumerate(order or [])}
    ordered = sorted(records.values(), key=lambda r: rank.get(r["uuid"], len(rank)))
    _write_atomic(out / RECORDS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered))
    for path in shards:
        path.unlink()
    return out / RECORDS


def _relation_level(
    model: Model,
    out: Path,
    by_relation: Mapping[str, list[Bag]],
    known: Sequence[Bag],
    *,
    seed: int,
    erase_top: int,
    n_edits: int,
    n_heldout: int,
    progress: bool,
) -> None:
    """Erase each relation's most frequent neurons; edit a few of its facts (rank 0, resumable by key)."""
    path = out / RELATIONS
    done = {(r["kind"], r["relation"], r.get("uuid")) for r in read_jsonl(path)}
    records = {r["uuid"]: r for r in read_jsonl(out / RECORDS)}
    has_unk = getattr(getattr(model, "tokenizer", None), "unk_token_id", None) is not None
    for rid in _bar(list(by_relation), progress, "relations (erase, edit)"):
        bags = by_relation[rid]
        recs = [records[b.uuid] for b in bags if b.uuid in records]
        rng = random.Random(fact_seed(seed, rid))
        others_pool = [b for b in known if b.relation != rid]
        others = rng.sample(others_pool, min(20, len(others_pool)))
        if erase_top and ("erase", rid, None) not in done:
            neurons = relation_neurons(recs, top=erase_top, min_count=2) or relation_neurons(
                recs, top=erase_top, min_count=1
            )
            rows = []
            if neurons:
                for mode in ("zero", "unk") if has_unk else ("zero",):
                    table = erase_relation(model, bags, neurons, other_facts=others, mode=mode,
                                           seed=fact_seed(seed, rid), relation=rid)  # fmt: skip
                    rows += _rows(table)
            append_jsonl(path, dict(kind="erase", relation=rid, uuid=None, neurons=[str(n) for n in neurons],
                                    rows=rows))  # fmt: skip
        for bag in bags[:n_edits]:
            if ("edit", rid, bag.uuid) in done:
                continue
            record = records.get(bag.uuid)
            targets = sorted({b.target for b in bags if b.target != bag.target})
            rows = []
            if record and record["neurons"] and targets:
                new = random.Random(fact_seed(seed, "edit:" + bag.uuid)).choice(targets)
                k = record["n_heldout"]
                train = list(bag.prompts[: len(bag.prompts) - k])
                held = list(bag.prompts[len(bag.prompts) - k :]) if k else []
                neighbours = [b for b in bags if b.uuid != bag.uuid][:5]
                # old = the fact's answer: the model knows it (on most prompts, not always the first one)
                table = edit_effects(model, train, record["neurons"], new, old=bag.target, heldout=held,
                                     neighbours=neighbours, seed=fact_seed(seed, bag.uuid), relation=rid)  # fmt: skip
                rows = _rows(table)
            append_jsonl(path, dict(kind="edit", relation=rid, uuid=bag.uuid, rows=rows))


def _rows(table) -> list[dict[str, Any]]:
    out = []
    for row in table.to_dict("records"):
        clean = {}
        for k, v in row.items():
            v = _py(v)
            clean[k] = None if isinstance(v, float) and v != v else (round(v, 7) if isinstance(v, float) else v)
        out.append(clean)
    return out


def run_convergence(
    model: Model,
    data: Pararel,
    out: str | os.PathLike,
    *,
    facts_per_relation: int = 2,
    settings: Sequence[tuple[str, int]] | None = None,
    reference: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """How stable a finished run's neuron sets are across quadrature rules: ``convergence.jsonl`` in its folder.

    For the first ``facts_per_relation`` evaluated facts of each relation, the fact's attribution prompts (its
    held-out ones left out, as in the run) are attributed again with each rule of ``settings`` and compared with
    a fine ``reference`` (:func:`kn_lens.convergence.convergence`). One line per fact is appended (flushed and
    fsynced); re-running skips the facts already done. ``kn-lens report`` shows the result beside each fact's
    completeness error from the run itself.

    Args:
        model: the run's model (checked against the manifest's layer and MLP sizes).
        data: PARAREL (the run's facts are looked up by uuid).
        out: a run folder of :func:`run_pararel` with records.
        facts_per_relation: facts per relation to re-attribute.
        settings, reference: see :func:`kn_lens.convergence.convergence` (defaults there).
        progress: a progress bar.

    Returns:
        The run folder.

    Raises:
        SweepError: not a run folder, no records yet, or another model's run.

    Example:
        >>> import shutil
        >>> from kn_lens.datasets import pararel
        >>> run = shutil.copytree(run_dir, tmp_path / "run")       # a finished tiny-BERT run, copied
        >>> path = run_convergence(bert, pararel.load(pararel_dir), run, facts_per_relation=1,
        ...                        settings=[("riemann_left", 5)], reference=dict(method="gausslegendre", n_steps=16),
        ...                        progress=False)
        >>> rows = read_convergence(path)
        >>> [(r["fact"], r["method"], r["n_steps"], r["reference"]) for r in rows]
        [('P36-France', 'gausslegendre', 16, True), ('P36-France', 'riemann_left', 5, False),
         ('P37-Portugal', 'gausslegendre', 16, True), ('P37-Portugal', 'riemann_left', 5, False)]
    """
    from kn_lens.convergence import PRESETS, SETTINGS, convergence

    check_model(model)
    out = Path(out)
    if not (out / MANIFEST).exists():
        raise SweepError(f"{out} is not a run folder (no {MANIFEST}); run `kn-lens evaluate pararel --out {out}`")
    if isinstance(facts_per_relation, bool) or not isinstance(facts_per_relation, int) or facts_per_relation < 1:
        raise ValueError(f"facts_per_relation must be an int >= 1, got {facts_per_relation!r}")
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    sizes = dict(n_layers=model.cfg.n_layers, d_mlp=model.cfg.d_mlp, d_model=model.cfg.d_model)
    if manifest.get("model_config") and manifest["model_config"] != sizes:
        raise SweepError(f"{out} was run with another model ({manifest['model_config']}); this one is {sizes}")
    records = read_records(out)
    if not records:
        raise SweepError(f"{out} has no fact records yet; finish `kn-lens evaluate pararel --out {out}` first")
    bags = {b.uuid: b for b in data.bags(model, relations=manifest.get("relations"))}
    done = {r["fact"] for r in read_convergence(out)}
    chosen: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        group = chosen.setdefault(record["relation"], [])
        if len(group) < facts_per_relation and record["uuid"] in bags:
            group.append(record)
    todo = [r for group in chosen.values() for r in group if r["uuid"] not in done]
    for record in _bar(todo, progress, "convergence (facts)"):
        bag = bags[record["uuid"]]
        n = record["n_prompts"]
        fact = dataclasses.replace(bag, prompts=bag.prompts[:n], templates=bag.templates[:n])
        frame = convergence(model, [fact], settings=SETTINGS if settings is None else settings,
                            reference=PRESETS["converged"] if reference is None else reference,
                            progress=False)  # fmt: skip
        append_jsonl(out / CONVERGENCE, dict(fact=record["uuid"], rows=_rows(frame)))
    return out


def read_convergence(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a run's ``convergence.jsonl`` (one per fact and rule; see :func:`run_convergence`)."""
    return [row for line in read_jsonl(Path(out) / CONVERGENCE) for row in line["rows"]]


def read_records(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The fact records of a run folder (``records.jsonl`` plus unmerged shards of an unfinished run)."""
    out = Path(out)
    if not out.is_dir():
        raise SweepError(f"run folder {out} does not exist")
    seen: dict[str, dict[str, Any]] = {}
    shards = sorted((out / SHARDS).glob("part-*.jsonl")) if (out / SHARDS).is_dir() else []
    for path in [out / RECORDS, *shards]:
        for r in read_jsonl(path):
            seen.setdefault(r["uuid"], r)
    return list(seen.values())


def read_relations(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The relation-level (erase / edit) results of a run folder."""
    return read_jsonl(Path(out) / RELATIONS)


def read_known(out: str | os.PathLike) -> list[dict[str, Any]]:
    """Every scanned fact of a run with ``known`` (the coverage table)."""
    return read_jsonl(Path(out) / KNOWN)


__all__ = [
    "SweepError",
    "append_jsonl",
    "check_manifest",
    "distributed",
    "local_device",
    "merge",
    "read_convergence",
    "read_jsonl",
    "read_known",
    "read_records",
    "read_relations",
    "run_convergence",
    "run_pararel",
    "versions",
]
