"""A sweep's manifest: every setting that changes numbers (model config and a weights fingerprint, data
fingerprint, attribution settings, seeds, counts) and the rules run so far; a resume compares every setting, and
the checks of a sweep's arguments.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from kn_lens._typing import Model
from kn_lens.attribution import METHODS
from kn_lens.datasets.pararel import Pararel
from kn_lens.evaluation.records import SELECTIONS
from kn_lens.evaluation.sweep_store import MANIFEST, SweepError
from kn_lens.inputs import to_layers
from kn_lens.neurons import CANDIDATE_FLOOR
from kn_lens.scoring import OBJECTIVES

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


def check_rules(rules: Iterable[str] | str) -> list[str]:
    """The rules of a run, checked: a comma-separated string or a list of names of
    :data:`kn_lens.evaluation.SELECTIONS` (duplicates dropped, order kept).

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


__all__ = [
    "ATTRIBUTION_KEYWORDS",
    "DEFAULT_RULES",
    "MANIFEST_KEYS",
    "check_manifest",
    "check_rules",
    "model_config",
    "read_manifest",
    "versions",
    "weights_fingerprint",
]
