"""Figures of tokens: the logit lens of neurons as a table, and a neuron's activations over text."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from kn_lens.plotting._base import (
    _centred,
    _check_frame,
    _to_numpy,
)


def _show_token(token: str) -> str:
    shown = token.replace("\n", "\\n")
    return f"'{shown}'"


def lens_table(df: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """The logit lens of several neurons as a coloured table: one column per neuron, top tokens above, bottom below.

    Args:
        df: the long DataFrame of :func:`kn_lens.lens.decode_many` (columns ``neuron``, ``side``, ``rank``,
            ``token``, ``score``; ``through`` is used in the title if present).
        title: the figure title (default says which lens was used).

    Returns:
        A figure with one ``Heatmap`` trace: cell text = the token (quoted, so leading spaces show), colour =
        its score (``RdBu`` centred on 0), rows ``top 1..k`` then ``bottom 1..k``.

    Example:
        >>> fig = lens_table(kn_lens.lens.decode_many(model, ["L24N1005", "L29N100"], k=8))
    """
    _check_frame(
        df, "lens_table", ("neuron", "side", "rank", "token", "score"), "make it with kn_lens.lens.decode_many"
    )
    if df.empty:
        raise ValueError("the DataFrame is empty")
    neurons = list(dict.fromkeys(df["neuron"]))
    k = int(df["rank"].max()) + 1
    row_keys = [("top", r) for r in range(k)] + [("bottom", r) for r in range(k)]
    z = np.full((len(row_keys), len(neurons)), np.nan)
    text = np.full(z.shape, "", dtype=object)
    for row in df.itertuples(index=False):
        i = row_keys.index((row.side, int(row.rank)))
        j = neurons.index(row.neuron)
        z[i, j] = row.score
        text[i, j] = _show_token(str(row.token))
    through = df["through"].iloc[0] if "through" in df.columns else "unembed"
    if title is None:
        what = "through the MLM head" if through == "mlm_head" else "through the final norm and W_U"
        title = (
            f"What each neuron writes: value vector {what}<br><sup>top rows: promoted when the neuron fires "
            "positively; a neuron that fires negatively (SiLU / GELU allow it) promotes its bottom rows</sup>"
        )
    colours = _centred(z)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=neurons,
            y=[f"{side} {r + 1}" for side, r in row_keys],
            text=text,
            texttemplate="%{text}",
            textfont=dict(size=11),
            **colours,
            xgap=2,
            ygap=1,
            colorbar=dict(title="logit<br>(unit RMS)"),
            hovertemplate="%{x} %{y}: %{text}<br>score %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        template="plotly_white",
        height=max(350, 26 * len(row_keys) + 150),
        width=max(500, 150 * len(neurons) + 200),
    )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(side="top", type="category")
    return fig


def activation_highlight(result: Any, *, title: str | None = None, max_tokens: int = 40) -> go.Figure:
    """Token-level highlighting of a neuron's activation over the texts of :func:`kn_lens.cache.top_activating`.

    Args:
        result: a :class:`kn_lens.cache.TopActivating`.
        title: the figure title (default names the neuron).
        max_tokens: show at most this many tokens per text (a window around the peak for longer texts).

    Returns:
        A figure with one ``Heatmap`` trace: one row per text (strongest first), one cell per token, cell text =
        the token, colour = the activation (``RdBu`` centred on 0); the peak token of each row is bold.

    Example:
        >>> top = kn_lens.top_activating(model, "L24N1005", ["Paris is nice.", "I like tea."], k=2, progress=False)
        >>> fig = activation_highlight(top)
    """
    for attr in ("neuron", "tokens", "activations", "max_positions"):
        if not hasattr(result, attr):
            raise TypeError(f"activation_highlight takes the result of top_activating, got {type(result).__name__}")
    if not result.tokens:
        raise ValueError("the result has no texts")
    windows = []
    for toks, peak in zip(result.tokens, result.max_positions, strict=True):
        start = max(0, min(peak - max_tokens // 2, len(toks) - max_tokens))
        windows.append((start, min(len(toks), start + max_tokens)))
    width = max(end - start for start, end in windows)
    z = np.full((len(result.tokens), width), np.nan)
    text = np.full(z.shape, "", dtype=object)
    for i, (toks, acts, peak, (start, end)) in enumerate(
        zip(result.tokens, result.activations, result.max_positions, windows, strict=True)
    ):
        values = _to_numpy(acts, "activations")
        for j, pos in enumerate(range(start, end)):
            z[i, j] = values[pos]
            shown = toks[pos].replace("\n", "\\n")
            text[i, j] = f"<b>{shown}</b>" if pos == peak else shown
    peaks = [
        float(_to_numpy(a, "activations")[p]) for a, p in zip(result.activations, result.max_positions, strict=True)
    ]
    colours = _centred(z)
    how = "most" if getattr(result, "largest", True) else "most negatively"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(width)),
            y=[f"#{i + 1} (peak {p:.2f})" for i, p in enumerate(peaks)],
            text=text,
            texttemplate="%{text}",
            textfont=dict(size=11),
            **colours,
            xgap=1,
            ygap=3,
            colorbar=dict(title="activation"),
            hovertemplate="%{y}, token %{x}: %{text}<br>activation %{z:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title or f"Where {result.neuron} fires {how} (mlp_post activation per token)",
        template="plotly_white",
        height=max(250, 45 * len(result.tokens) + 150),
        width=max(600, 78 * width + 250),
    )
    fig.update_yaxes(autorange="reversed", type="category", showgrid=False)
    fig.update_xaxes(title_text="token (window position)", showticklabels=False, showgrid=False, zeroline=False)
    return fig


__all__ = ["activation_highlight", "lens_table"]
