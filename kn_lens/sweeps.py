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
       prompts held out), stored sparse as :class:`~kn_lens.neurons.Candidates` (every neuron reaching 0.1 x a
       prompt's max, with its score on every prompt), with each prompt's completeness error; for the
       ``"contrastive"`` rule a second attribution of the same prompts with the contrastive objective
       (:func:`kn_lens.scoring.mean_logit_diff` against the relation's other answers).
    3. **selection**, per rule and relation, from the stored candidates only (cheap): any rule can be added to a
       finished run later (``--rules``) without attributing again, and :func:`select_records` re-runs it.
    4. **evaluation**, per rule and fact: suppress / enhance beside every control (held-out paraphrases, same
       relation, other relations, random neurons; specificity), then per rule and relation: erasing the relation's
       most frequent neurons and editing a few of its facts.

    The rules (:data:`kn_lens.evaluate.SELECTIONS`; every record, table and manifest names its rule):
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
    (:func:`kn_lens.evaluate.fact_seed`), so the records are the same with 1 or N processes. Process 0 selects
    (cheap) and merges each phase's shards; ``gloo`` is used on CPU, ``nccl`` on GPUs (one GPU per process,
    ``cuda:LOCAL_RANK``).

Example:
    A real run is ``sweeps.run_pararel(kn_lens.load_model(), pararel.load(folder), "runs/smollm2",
    model_name="SmolLM2-135M", relations=["P36", "P37"], facts_per_relation=50, rules=["dai", "adaptive"])`` (or
    the same from the command line, under torchrun for several processes). A small one, on the tiny BERT and a
    tiny PARAREL-format folder:

    >>> from kn_lens import sweeps
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

import dataclasses
import datetime
import hashlib
import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from kn_lens._typing import Model, check_model
from kn_lens.datasets.pararel import Bag, Pararel, known_facts
from kn_lens.evaluate import (
    SELECTIONS,
    edit_effects,
    erase_relation,
    fact_effects,
    fact_seed,
    other_answers,
    relation_neurons,
)
from kn_lens.neurons import CANDIDATE_FLOOR, Candidates, Rule, drop_shared, find_knowledge_neurons, select
from kn_lens.scoring import mean_logit_diff

MANIFEST = "manifest.json"
KNOWN = "known.jsonl"
ATTRIBUTION = "attribution.jsonl"
CONTRASTIVE = "contrastive.jsonl"
SELECTION = "selections.jsonl"
RECORDS = "records.jsonl"
SHARDS = "shards"
RELATIONS = "relations.jsonl"
CONVERGENCE = "convergence.jsonl"
KIND = "kn_lens.pararel"
#: The run-folder layout (2: phases, rules, records keyed by relation and uuid).
SCHEMA = 2
#: The rules a run evaluates unless told otherwise: the released rule (the replication) beside kn_lens's own.
DEFAULT_RULES = ("dai", "adaptive")
#: Manifest keys a resume does not compare (every other key must match): rules can be added to a run, the data
#: can move, the number of processes and package versions do not change the records.
UNCOMPARED = ("rules", "data_path", "world_size", "versions")
#: Keywords of the attribution a sweep takes (``**find_kwargs``); every value is recorded in the manifest.
ATTRIBUTION_KEYWORDS = ("method", "layers", "objective", "baseline", "hook", "internal_batch_size", "fast", "pack")
#: Facts measured per step while scanning for known facts (their prompts share forward passes).
KNOWN_CHUNK = 16
#: Prompts per forward pass in the evaluation (fixed: batches change float rounding).
BATCH_SIZE = 32
CONTRASTIVE_OBJECTIVE = "logit(answer) - mean logit of the relation's other known answers (scoring.mean_logit_diff)"


#: The keys every run manifest has, checked when a folder is read.
MANIFEST_KEYS = ("kind", "schema", "model", "relations", "data_path", "rules")


class SweepError(ValueError):
    """A run folder cannot be used (another run's manifest, unreadable files, data of another run)."""


# --------------------------------------------------------------------------------------------------------------
# Durable JSONL
# --------------------------------------------------------------------------------------------------------------


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one record as a JSON line, flushed and fsync-ed (on disk when this returns).

    A last line left by a killed writer is repaired first: cut when half-written, completed with its newline when
    the record itself was written whole (a power cut between the record and its newline), so nothing is lost.

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


def _complete(line: bytes) -> bool:
    """Is ``line`` a whole JSON record (an object), not the prefix a killed writer left?"""
    try:
        return isinstance(json.loads(line.decode("utf-8")), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def _repair_tail(path: Path) -> None:
    """Make the file end with a newline: a whole last record gets its newline, a half-written one is cut."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        size = f.seek(0, os.SEEK_END)
        start, block = size, 1 << 16
        while start > 0:  # find the last newline, reading backwards
            start = max(0, start - block)
            f.seek(start)
            found = f.read(size - start).rfind(b"\n")
            if found >= 0:
                start += found + 1
                break
        f.seek(start)
        if _complete(f.read()):
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(start)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSONL file; a half-written last line is ignored, a corrupt line elsewhere raises.

    A whole last record without its newline (a power cut between the two) is a record.

    Example:
        >>> records = read_jsonl(run_dir / "records.jsonl")    # a finished run of the tiny BERT
        >>> len(records), records[0]["rule"], records[0]["subject"]
        (12, 'dai', 'Peru')
        >>> read_jsonl(run_dir / "no-such-file.jsonl")
        []
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            if number == len(lines):  # the unterminated last line of a killed writer
                break
            why = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8"
            raise SweepError(f"{path}, line {number}: not valid JSON ({why})") from None
        if not isinstance(record, dict):
            raise SweepError(f"{path}, line {number}: a record must be a JSON object, got {type(record).__name__}")
        out.append(record)
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _jsonl(records: Iterable[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records)


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


def weights_fingerprint(model: Model) -> str:
    """A short hash of the model's weights (names, shapes, dtypes and a strided sample of every parameter's
    values, read on the CPU, so the same weights give the same hash on any device).

    Example:
        >>> weights_fingerprint(bert) == weights_fingerprint(bert)
        True
    """
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in model.named_parameters():
            flat = param.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)].to("cpu").contiguous()
            digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}\n".encode())
            digest.update(sample.view(torch.uint8).numpy().tobytes() if sample.numel() else b"")
    return digest.hexdigest()[:16]


def model_config(model: Model, layers: Sequence[int]) -> dict[str, Any]:
    """The model facts a run's numbers depend on: sizes, dtype, the attributed layers and a weights fingerprint."""
    param = next(model.parameters(), None)
    return dict(
        architecture=type(model).__name__,
        n_layers=model.cfg.n_layers,
        d_mlp=model.cfg.d_mlp,
        d_model=model.cfg.d_model,
        d_vocab=model.cfg.d_vocab,
        dtype=str(param.dtype) if param is not None else None,
        layers=list(layers),
        weights=weights_fingerprint(model),
    )


def read_manifest(out: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a run folder of :func:`run_pararel`, checked (a folder of another tool is refused).

    Raises:
        SweepError: no manifest, an unreadable one, or one another tool (or an older kn_lens layout) wrote.
    """
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise SweepError(f"{out} is not a run folder (no {MANIFEST}); run `kn-lens evaluate pararel --out {out}`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SweepError(f"{path} is damaged (not JSON: {err}); it is the run's settings: restore it, or use "
                         "another --out folder") from None  # fmt: skip
    if not isinstance(manifest, dict):
        raise SweepError(f"{path} holds a JSON {type(manifest).__name__}, not a kn_lens run manifest (an object)")
    if "kind" in manifest and manifest["kind"] != KIND:
        raise SweepError(f"{path} is another tool's manifest (kind {manifest.get('kind')!r}), not the manifest of a "
                         f"kn_lens PARAREL run ({KIND!r}): use another folder")  # fmt: skip
    if "kind" in manifest and manifest.get("schema") != SCHEMA:
        raise SweepError(f"{path} was written by an older kn_lens (run layout {manifest.get('schema', 1)}, this "
                         f"one reads {SCHEMA}); re-run it into a new folder")  # fmt: skip
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise SweepError(f"{path} lacks {missing}: not the manifest of a `kn-lens evaluate pararel` run")
    return manifest


def check_manifest(out: Path, manifest: Mapping[str, Any]) -> bool:
    """True if ``out`` already holds this run (resume); False if it holds none; raises if it holds another.

    Every key of the manifest but :data:`UNCOMPARED` must match (model config and weights, data, attribution
    settings, seeds, counts); the rules may differ (a resume may add rules).
    """
    path = out / MANIFEST
    if not path.exists():
        if out.is_dir() and any(out.iterdir()):
            raise SweepError(f"{out} holds files but no {MANIFEST}; use an empty folder for a new run")
        return False
    old = read_manifest(out)
    keys = dict.fromkeys([*old, *manifest])
    diff = [k for k in keys if k not in UNCOMPARED and old.get(k) != manifest.get(k)]
    if diff:
        details = "; ".join(f"{k}: {_short(old.get(k))} there, {_short(manifest.get(k))} now" for k in diff)
        raise SweepError(
            f"{out} holds another run ({details}). Re-run with the same settings to resume it, or choose another "
            "--out folder"
        )
    return True


def _short(value: Any) -> str:
    if isinstance(value, Mapping):
        return repr({k: v for k, v in value.items()})
    return repr(value)


# --------------------------------------------------------------------------------------------------------------
# Checking a run's arguments (before the first byte is written)
# --------------------------------------------------------------------------------------------------------------


def check_rules(rules: Iterable[str] | str) -> list[str]:
    """The rules of a run, checked: a comma-separated string or a list of names of
    :data:`kn_lens.evaluate.SELECTIONS` (duplicates dropped, order kept).

    Example:
        >>> check_rules("dai, adaptive,dai")
        ['dai', 'adaptive']
    """
    if isinstance(rules, str):
        rules = [r.strip() for r in rules.split(",") if r.strip()]
    if not isinstance(rules, Iterable):
        raise TypeError(f"rules must be a list of rule names, got {type(rules).__name__}")
    names = list(dict.fromkeys(rules))
    unknown = [r for r in names if r not in SELECTIONS]
    if unknown or not names:
        raise ValueError(f"unknown rule(s) {unknown or '(none given)'}; choose among {', '.join(SELECTIONS)}")
    return names


def _int(name: str, value: Any, low: int, *, none: bool = False) -> int | None:
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}{' or None' if none else ''}, got {value!r}")
    return value


def _fraction(name: str, value: Any, *, low_open: bool, high_open: bool, none: bool = False) -> float | None:
    if value is None and none:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value == value
    if ok:
        ok = (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    if not ok:
        span = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a number in {span}{' or None' if none else ''}, got {value!r}")
    return float(value)


def _attribution_settings(model: Model, n_steps: Any, find_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The attribution settings of a run, checked and JSON-ready (they go into the manifest as they are)."""
    from kn_lens.attribution import METHODS
    from kn_lens.inputs import to_layers
    from kn_lens.scoring import OBJECTIVES

    unknown = sorted(set(find_kwargs) - set(ATTRIBUTION_KEYWORDS))
    if unknown:
        raise TypeError(f"run_pararel got unexpected keyword(s) {unknown}; it takes the attribution keywords "
                        f"{list(ATTRIBUTION_KEYWORDS)} (the selection is named by rules=)")  # fmt: skip
    kwargs = dict(find_kwargs)
    method = kwargs.pop("method", "riemann_left")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    objective = kwargs.pop("objective", "prob")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)} in a sweep (a name the manifest can "
                         f"record), got {objective!r}")  # fmt: skip
    layers = to_layers(model, kwargs.pop("layers", None))
    for key in ("baseline", "hook"):
        if key in kwargs and not isinstance(kwargs[key], str):
            raise TypeError(f"{key} must be a name in a sweep (the manifest records it), got {type(kwargs[key])}")
    if "internal_batch_size" in kwargs:
        _int("internal_batch_size", kwargs["internal_batch_size"], 1, none=True)
    for key in ("fast", "pack"):
        if key in kwargs and not isinstance(kwargs[key], bool):
            raise TypeError(f"{key} must be True or False, got {kwargs[key]!r}")
    return dict(attribution="ig", n_steps=_int("n_steps", n_steps, 1), method=method, objective=objective,
                layers=layers, kwargs=dict(sorted(kwargs.items())), floor=CANDIDATE_FLOOR)  # fmt: skip


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


# --------------------------------------------------------------------------------------------------------------
# Phase 1: known facts
# --------------------------------------------------------------------------------------------------------------


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


def _py(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _bar(items: Sequence[Any], enabled: bool, desc: str, position: int = 0) -> Iterator[Any]:
    if not enabled:
        return iter(items)
    from tqdm.auto import tqdm

    return iter(tqdm(items, desc=desc, position=position, leave=position == 0))


# --------------------------------------------------------------------------------------------------------------
# Phases run by every process: a JSONL file per phase, shards while it runs
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Phase:
    merged: str  # the merged file
    shards: str  # the folder of per-process files
    key: Callable[[Mapping[str, Any]], tuple]


def _fact_key(record: Mapping[str, Any]) -> tuple:
    return (record["relation"], record["uuid"])


def _record_key(record: Mapping[str, Any]) -> tuple:
    return (record.get("rule"), record["relation"], record["uuid"])


def _relation_key(record: Mapping[str, Any]) -> tuple:
    return (record.get("rule"), record["kind"], record["relation"], record.get("uuid"))


PHASES = {
    "known": _Phase(KNOWN, "known", _fact_key),
    "attribution": _Phase(ATTRIBUTION, "attribution", _fact_key),
    "contrastive": _Phase(CONTRASTIVE, "contrastive", _fact_key),
    "records": _Phase(RECORDS, SHARDS, _record_key),
    "relations": _Phase(RELATIONS, "relations", _relation_key),
}


def _phase_files(out: Path, phase: _Phase) -> list[Path]:
    folder = out / phase.shards
    shards = sorted(folder.glob("part-*.jsonl")) if folder.is_dir() else []
    return [out / phase.merged, *shards]


def _read_phase(out: Path, phase: _Phase) -> dict[tuple, dict[str, Any]]:
    """Every record of a phase on disk (merged file and shards), one per key (the first written wins)."""
    records: dict[tuple, dict[str, Any]] = {}
    for path in _phase_files(out, phase):
        for r in read_jsonl(path):
            records.setdefault(phase.key(r), r)
    return records


def _merge_phase(out: Path, phase: _Phase, order: Sequence[tuple]) -> Path:
    records = _read_phase(out, phase)
    rank = {k: i for i, k in enumerate(order)}
    ordered = sorted(records.values(), key=lambda r: rank.get(phase.key(r), len(rank)))
    _write_atomic(out / phase.merged, _jsonl(ordered))
    for path in _phase_files(out, phase)[1:]:
        path.unlink()
    folder = out / phase.shards
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return out / phase.merged


def merge(out: str | os.PathLike, order: Sequence[tuple] | None = None) -> Path:
    """Merge ``records.jsonl`` and the process shards into ``records.jsonl`` (one record per (rule, relation,
    uuid), in ``order`` of those keys when given), then remove the shards.

    Example:
        >>> append_jsonl(tmp_path / "shards" / "part-0.jsonl", {"rule": "dai", "relation": "P36", "uuid": "b"})
        >>> append_jsonl(tmp_path / "shards" / "part-1.jsonl", {"rule": "dai", "relation": "P36", "uuid": "a"})
        >>> merge(tmp_path, order=[("dai", "P36", "a"), ("dai", "P36", "b")]).name
        'records.jsonl'
        >>> [r["uuid"] for r in read_jsonl(tmp_path / "records.jsonl")], (tmp_path / "shards").exists()
        (['a', 'b'], False)
    """
    return _merge_phase(Path(out), PHASES["records"], [tuple(k) for k in order or ()])


def _run_phase(
    out: Path,
    phase: _Phase,
    items: Sequence[Any],
    compute: Callable[[Any, Mapping[tuple, Any]], Iterable[dict[str, Any]]],
    todo: Callable[[Any, Mapping[tuple, Any]], bool],
    order: Sequence[tuple],
    rank: int,
    world: int,
    desc: str,
    progress: bool,
) -> None:
    """Item ``i`` goes to process ``i % world``; an item whose records are all on disk is skipped, and ``compute``
    (a generator, given the records on disk) yields only the missing ones: nothing is recomputed. Each record is
    appended to the process's shard as soon as it is yielded; process 0 merges when all processes are done."""
    done = _read_phase(out, phase)
    mine = [item for i, item in enumerate(items) if i % world == rank and todo(item, done)]
    shard = out / phase.shards / f"part-{rank}.jsonl"
    for item in _bar(mine, progress, f"{desc} (process {rank}/{world})", position=rank):
        for record in compute(item, done):
            append_jsonl(shard, record)
    _barrier(world)
    if rank == 0:
        _merge_phase(out, phase, order)
    _barrier(world)


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
        rule: a rule of :data:`kn_lens.evaluate.SELECTIONS`.
        records: the relation's attribution records, in the run's order (for ``"contrastive"``, its contrastive
            records; for ``"fact-specific"`` the others are the negatives' pool).
        seed, n_negatives, negative_share: the fact-specific rule's draw.

    Returns:
        ``rule, relation, description, facts`` (per fact: ``uuid, neurons, share_used, adjustments, fallback,
        dropped``, and the negatives used), ``relation_average`` and ``relation_neurons`` (the released rule's).

    Example:
        >>> from kn_lens import sweeps
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
        rules: selection rules (names of :data:`kn_lens.evaluate.SELECTIONS`, or ``"dai,adaptive"``).
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
        kn_lens.sweeps.SweepError: .../p36 holds another run (attribution: ... there, ... now). Re-run with ...
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


def _rows(table) -> list[dict[str, Any]]:
    """A table's rows, JSON-ready: NaN and infinite numbers (an edit can send a perplexity to inf) become null."""
    out = []
    for row in table.to_dict("records"):
        clean = {}
        for k, v in row.items():
            v = _py(v)
            if isinstance(v, float):
                v = round(v, 7) if math.isfinite(v) else None
            clean[k] = v
        out.append(clean)
    return out


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
    (:func:`kn_lens.convergence.convergence`; neurons by the ``"adaptive"`` rule). One line per fact is appended
    (flushed and fsynced); re-running skips the facts already done. ``kn-lens report`` shows the result beside
    each fact's completeness error from the run itself.

    Args:
        model: the run's model (checked against the manifest's sizes and weights fingerprint).
        data: the run's PARAREL (every fact of the run must be in it: checked), or None.
        out: a run folder of :func:`run_pararel` with attribution records.
        facts_per_relation: facts per relation to re-attribute.
        settings, reference: see :func:`kn_lens.convergence.convergence` (defaults there).
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
    from kn_lens.convergence import PRESETS, SETTINGS, convergence
    from kn_lens.neurons import FactPrompts

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
    for record in _bar(todo, progress, "convergence (facts)"):
        fact = FactPrompts(tuple(record["prompts"]), record["target"], record["relation"], name=record["uuid"])
        frame = convergence(model, [fact], settings=SETTINGS if settings is None else settings,
                            reference=PRESETS["converged"] if reference is None else reference,
                            progress=False, **kwargs)  # fmt: skip
        append_jsonl(out / CONVERGENCE, dict(relation=record["relation"], fact=record["uuid"], rows=_rows(frame)))
    return out


# --------------------------------------------------------------------------------------------------------------
# Reading a run
# --------------------------------------------------------------------------------------------------------------


def read_convergence(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a run's ``convergence.jsonl`` (one per fact and rule; see :func:`run_convergence`)."""
    return [row for line in read_jsonl(Path(out) / CONVERGENCE) for row in line["rows"]]


def read_records(out: str | os.PathLike, rule: str | None = None) -> list[dict[str, Any]]:
    """The evaluation records of a run folder (``records.jsonl`` plus unmerged shards of an unfinished run), one
    per (rule, relation, uuid); only those of ``rule`` when given."""
    out = Path(out)
    if not out.is_dir():
        raise SweepError(f"run folder {out} does not exist")
    records = list(_read_phase(out, PHASES["records"]).values())
    return [r for r in records if rule is None or r.get("rule") == rule]


def read_attributions(out: str | os.PathLike, *, contrastive: bool = False) -> list[dict[str, Any]]:
    """The attribution records of a run (one per fact; ``contrastive=True``: the contrastive attribution's)."""
    return list(_read_phase(Path(out), PHASES["contrastive" if contrastive else "attribution"]).values())


def read_selections(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The selection lines of a run: one per (rule, relation), each with every fact's neurons."""
    return read_jsonl(Path(out) / SELECTION)


def read_relations(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The relation-level (erase / edit) results of a run folder, one per (rule, kind, relation, fact)."""
    return read_jsonl(Path(out) / RELATIONS)


def read_known(out: str | os.PathLike) -> list[dict[str, Any]]:
    """Every scanned fact of a run with ``known`` (the coverage table), one per (relation, uuid)."""
    return list(_read_phase(Path(out), PHASES["known"]).values())


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
    "ATTRIBUTION_KEYWORDS",
    "DEFAULT_RULES",
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
