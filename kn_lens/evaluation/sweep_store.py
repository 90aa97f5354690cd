"""The files of a sweep's run folder: durable JSONL (each record flushed and fsynced as it is written, a torn
last line repaired), the phases' shards and their merge, the torchrun process group, and reading a run.

See :mod:`kn_lens.evaluation.sweeps` for the folder's layout. Everything here works on the files alone: no model.

Example:
    >>> append_jsonl(tmp_path / "part-0.jsonl", {"uuid": "a"})
    >>> read_jsonl(tmp_path / "part-0.jsonl")
    [{'uuid': 'a'}]
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from kn_lens._progress import progress_bar

MANIFEST = "manifest.json"


KNOWN = "known.jsonl"


ATTRIBUTION = "attribution.jsonl"


CONTRASTIVE = "contrastive.jsonl"


SELECTION = "selections.jsonl"


RECORDS = "records.jsonl"


SHARDS = "shards"


RELATIONS = "relations.jsonl"


CONVERGENCE = "convergence.jsonl"


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
# Processes (torchrun)
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


# --------------------------------------------------------------------------------------------------------------
# Phases: a JSONL file per phase, shards while it runs
# --------------------------------------------------------------------------------------------------------------


def _py(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


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
    for item in progress_bar(
        mine, f"{desc} (process {rank}/{world})", enabled=progress, inner=rank != 0, position=rank
    ):
        for record in compute(item, done):
            append_jsonl(shard, record)
    _barrier(world)
    if rank == 0:
        _merge_phase(out, phase, order)
    _barrier(world)


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


__all__ = [
    "ATTRIBUTION",
    "CONTRASTIVE",
    "CONVERGENCE",
    "KNOWN",
    "MANIFEST",
    "PHASES",
    "RECORDS",
    "RELATIONS",
    "SELECTION",
    "SHARDS",
    "SweepError",
    "append_jsonl",
    "distributed",
    "local_device",
    "merge",
    "read_attributions",
    "read_convergence",
    "read_jsonl",
    "read_known",
    "read_records",
    "read_relations",
    "read_selections",
]
