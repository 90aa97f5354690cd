"""The shared pieces of the figures: input checks, score conversion, colours."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor

DIVERGING = "RdBu"
_BEFORE, _AFTER = "#9e9e9e", "#2166ac"


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().float().cpu().numpy()
    if isinstance(x, np.ndarray | list | tuple):
        return np.asarray(x, dtype=float)
    raise TypeError(f"{name} must be a torch Tensor or numpy array, got {type(x).__name__}")


def _scores_2d(scores: Any, name: str = "scores") -> np.ndarray:
    arr = _to_numpy(scores, name)
    if arr.ndim == 3:  # [prompt, layer, d_mlp] -> mean over prompts
        arr = arr.mean(0)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape [layer, d_mlp] (or [prompt, layer, d_mlp]), got {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr


def _scores_of(scores: Any, row_layers: Sequence[int] | None) -> tuple[np.ndarray, Sequence[int] | None]:
    """``(scores [layer, d_mlp], the layer of each row)`` from a tensor (rows ``row_layers``, default 0..n-1) or a
    result with ``.scores`` and ``.layers`` (a :class:`~kn_lens.neurons.KnowledgeNeurons`: its rows are its
    layers, also when they are a subset)."""
    if not isinstance(scores, Tensor | np.ndarray | list | tuple) and hasattr(scores, "scores"):
        layers = getattr(scores, "layers", None)
        arr = _scores_2d(scores.scores)
        if row_layers is None and layers is not None and len(layers) == arr.shape[0]:
            row_layers = list(layers)
        return arr, row_layers
    return _scores_2d(scores), row_layers


def _check_frame(df: Any, function: str, columns: Sequence[str], hint: str = "") -> None:
    """The one input check of every figure built from a table: a DataFrame with the columns it reads."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{function} takes a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"the DataFrame lacks columns {missing}" + (f"; {hint}" if hint else ""))


def _symmetric_range(z: np.ndarray) -> float:
    finite = np.abs(z[np.isfinite(z)])
    peak = float(finite.max()) if finite.size else 1.0
    return peak if peak > 0 else 1.0


def _centred(z: np.ndarray) -> dict:
    """Heatmap colour settings for signed values: diverging RdBu, white at 0, range symmetric around 0."""
    vmax = _symmetric_range(z)
    return dict(colorscale=DIVERGING, zmid=0, zmin=-vmax, zmax=vmax)


def _row_layers(
    n_rows: int, layers: Sequence[int] | None, row_layers: Sequence[int] | None
) -> tuple[list[int], list[int]]:
    """``(row indices to draw, their layer numbers)``: ``row_layers`` names the layer of each row of the scores
    (default ``0..n_rows-1``), ``layers`` picks the layers to show (default all)."""
    all_layers = list(range(n_rows)) if row_layers is None else [int(layer) for layer in row_layers]
    if len(all_layers) != n_rows:
        raise ValueError(f"row_layers names {len(all_layers)} layers for {n_rows} rows of scores; one per row")
    if layers is None:
        return list(range(n_rows)), all_layers
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty; pass None for all layers")
    missing = [layer for layer in layers if layer not in all_layers]
    if missing:
        raise ValueError(f"layers {missing} out of range: the scores have rows for layers {all_layers}")
    return [all_layers.index(layer) for layer in layers], layers


def _sem(values: pd.Series) -> float:
    """Standard error of the mean (0 for a single value)."""
    n = len(values)
    return float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0


__all__ = []
