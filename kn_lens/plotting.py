"""Figures for neurons, all plotly, all returning a ``plotly.graph_objects.Figure``.

Every function takes the plain results of the other modules (tensors, DataFrames, result objects) and draws
them; nothing here computes anything a figure could hide. Signed quantities use the diverging ``RdBu`` scale
centred on 0 (red negative, blue positive, white zero), so a neuron that pushes the answer down never looks like
one that pushes it up. Hover on any cell shows the neuron as ``L{layer}N{index}`` with its value.

Figures are ordinary plotly figures: ``fig.show()`` in a notebook, :func:`save` (or ``fig.write_html``) for a
standalone HTML file that opens in any browser without a server or internet.

Example:
    >>> scores = kn_lens.integrated_gradients(model, "The capital of France is", " Paris", layers=[24, 29])
    >>> fig = attribution_heatmap(scores, top_k=20, row_layers=[24, 29])
    >>> fig.show()  # doctest: +SKIP
    >>> fig = lens_table(kn_lens.lens.decode_many(model, ["L24N1005", "L29N100"], k=8))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from kn_lens.scoring import relative_change

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


def attribution_heatmap(
    scores: Float[Tensor, "layer d_mlp"] | Any,
    *,
    layers: Sequence[int] | None = None,
    top_k: int | None = None,
    title: str = "Neuron attribution",
    neurons: Sequence[tuple[int, int]] | None = None,
    row_layers: Sequence[int] | None = None,
) -> go.Figure:
    """Layer x neuron heatmap of attribution scores (diverging ``RdBu``, centred on 0).

    Args:
        scores: ``[layer, d_mlp]`` scores, e.g. from integrated gradients (a ``[prompt, layer, d_mlp]`` tensor is
            averaged over prompts), or a :class:`~kn_lens.neurons.KnowledgeNeurons` result (its rows are labelled
            with its ``.layers``).
        layers: the layers to show (default all), as layer numbers.
        top_k: None draws every neuron (fine up to a few thousand per layer). An int draws the sparse view: for
            each layer only its ``top_k`` neurons by ``|score|``, sorted, with the neuron index written in the
            cell; the x axis is then the rank, not the index. Use it for 1536+ neurons per layer.
        title: the figure title.
        neurons: neurons to mark with a black square (e.g. the selected knowledge neurons); each must lie in the
            scores (a layer they have rows for, an index below ``d_mlp``).
        row_layers: the layer of each row of ``scores`` (default ``0..rows-1``, or a result's ``.layers``): pass
            the ``layers=`` the scores were computed for when that was a subset, so rows are labelled with their
            real layers.

    Returns:
        A figure with one ``Heatmap`` trace (``customdata`` holds ``L{l}N{n}`` for the hover) and, if ``neurons``
        is given, one ``Scatter`` trace of markers.

    Example:
        >>> fig = attribution_heatmap(scores, top_k=20, title="IG, France -> Paris")
        >>> list(fig.data[0].y[:3])  # one row per layer
        ['L0', 'L1', 'L2']
    """
    arr, row_layers = _scores_of(scores, row_layers)
    picked, rows = _row_layers(arr.shape[0], layers, row_layers)
    _, all_layers = _row_layers(arr.shape[0], None, row_layers)
    sub = arr[picked]
    d_mlp = arr.shape[1]
    colours = _centred(sub)
    y = [f"L{layer}" for layer in rows]
    marked = _marked_neurons(neurons, all_layers, d_mlp)
    fig = go.Figure()
    if top_k is None:
        labels = np.array([[f"L{layer}N{n}" for n in range(d_mlp)] for layer in rows])
        fig.add_trace(
            go.Heatmap(
                z=sub,
                x=list(range(d_mlp)),
                y=y,
                customdata=labels,
                **colours,
                colorbar=dict(title="score"),
                hovertemplate="%{customdata}<br>score %{z:.4g}<extra></extra>",
            )
        )
        if marked:
            keep = [(layer, index) for layer, index in marked if layer in rows]
            fig.add_trace(
                go.Scatter(
                    x=[index for _, index in keep],
                    y=[f"L{layer}" for layer, _ in keep],
                    mode="markers",
                    marker=dict(symbol="square-open", size=12, color="black", line=dict(width=2)),
                    name="selected",
                    text=[f"L{layer}N{index}" for layer, index in keep],
                    hovertemplate="%{text} (selected)<extra></extra>",
                )
            )
        xaxis_title = "neuron index"
    else:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= d_mlp:
            raise ValueError(f"top_k must be an int between 1 and d_mlp={d_mlp}, got {top_k!r}")
        order = np.argsort(-np.abs(sub), axis=1, kind="stable")[:, :top_k]
        z = np.take_along_axis(sub, order, axis=1)
        labels = np.array([[f"L{layer}N{n}" for n in row] for layer, row in zip(rows, order, strict=True)])
        marked_set = set(marked)
        text = np.array(
            [
                [f"<b>{n}*</b>" if (layer, int(n)) in marked_set else str(n) for n in row]
                for layer, row in zip(rows, order, strict=True)
            ]
        )
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=list(range(1, top_k + 1)),
                y=y,
                customdata=labels,
                text=text,
                texttemplate="%{text}" if top_k <= 30 and len(rows) <= 60 else None,
                textfont=dict(size=9),
                **colours,
                colorbar=dict(title="score"),
                hovertemplate="%{customdata}<br>score %{z:.4g}<br>rank %{x} in its layer<extra></extra>",
            )
        )
        xaxis_title = f"rank by |score| within the layer (top {top_k}; cell text = neuron index"
        xaxis_title += ", * = selected)" if marked else ")"
    fig.update_layout(
        title=title,
        xaxis_title=xaxis_title,
        yaxis_title="layer",
        template="plotly_white",
        height=max(300, 22 * len(rows) + 160),
    )
    fig.update_yaxes(autorange="reversed", type="category")
    return fig


def _marked_neurons(neurons: Any, layers: Sequence[int], d_mlp: int) -> list[tuple[int, int]]:
    """The neurons to mark, as ``(layer, index)``; each must be inside the scores (never dropped silently)."""
    from kn_lens.inputs import to_neurons

    marked = [(n.layer, n.index) for n in to_neurons(neurons, allow_empty=True)] if neurons is not None else []
    for layer, index in marked:
        if layer not in layers or not 0 <= index < d_mlp:
            raise ValueError(
                f"neuron L{layer}N{index} is outside the scores (rows for layers {list(layers)}, {d_mlp} neurons "
                "each); pass row_layers= if the scores are of a layer subset"
            )
    return marked


def layer_mass(
    scores: Float[Tensor, "layer d_mlp"] | Any,
    *,
    title: str = "Attribution mass per layer",
    row_layers: Sequence[int] | None = None,
) -> go.Figure:
    """Bars of each layer's total positive and total negative attribution (stacked around 0).

    Args:
        scores: ``[layer, d_mlp]`` (or ``[prompt, layer, d_mlp]``, averaged over prompts), or a
            :class:`~kn_lens.neurons.KnowledgeNeurons` result.
        title: the figure title.
        row_layers: the layer of each row of ``scores`` (default ``0..rows-1``, or a result's ``.layers``): the
            ``layers=`` the scores were computed for, when a subset.

    Returns:
        A figure with two ``Bar`` traces, ``"positive"`` (sum of scores > 0 per layer) and ``"negative"`` (sum of
        scores < 0), x = layer.

    Example:
        >>> [trace.name for trace in layer_mass(scores).data]
        ['positive', 'negative']
        >>> subset = kn_lens.integrated_gradients(model, "The capital of France is", " Paris", layers=[24, 29])
        >>> list(layer_mass(subset, row_layers=[24, 29]).data[0].x)
        [24, 29]
    """
    arr, row_layers = _scores_of(scores, row_layers)
    pos = np.clip(arr, 0, None).sum(1)
    neg = np.clip(arr, None, 0).sum(1)
    _, layers = _row_layers(arr.shape[0], None, row_layers)
    fig = go.Figure(
        [
            go.Bar(x=layers, y=pos, name="positive", marker_color="#2166ac", hovertemplate="L%{x}: %{y:.4g}"),
            go.Bar(x=layers, y=neg, name="negative", marker_color="#b2182b", hovertemplate="L%{x}: %{y:.4g}"),
        ]
    )
    fig.update_layout(
        title=title,
        barmode="relative",
        xaxis_title="layer",
        yaxis_title="summed attribution",
        template="plotly_white",
        height=400,
    )
    return fig


INTERVENTION_COLUMNS = ("condition", "intervention", "before", "after")


def _sem(values: pd.Series) -> float:
    """Standard error of the mean (0 for a single value)."""
    n = len(values)
    return float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0


def intervention_bars(
    df: pd.DataFrame, *, title: str = "Effect of interventions on the correct answer", ylabel: str = "probability"
) -> go.Figure:
    """Before / after bars for interventions, one panel per intervention, conditions side by side.

    Args:
        df: long format, one row per (fact or prompt, condition, intervention) with columns ``condition`` (e.g.
            ``"knowledge neurons"``, ``"random neurons"``, ``"other relation"``), ``intervention``
            (``"suppress"``, ``"enhance"``, ...), ``before`` and ``after`` (e.g. the probability of the correct
            answer without and with the intervention). Rows sharing a condition and intervention are averaged;
            the error bars are the standard error over them. Put the random-neuron control in the same frame
            and it appears beside the real neurons.
        title: the figure title.
        ylabel: the y axis label.

    Returns:
        A figure with two ``Bar`` traces per panel (``"before"``, ``"after"``) and, above each after bar, an
        annotation with the mean relative change ``(after - before) / before`` in percent (the mean of the
        per-row changes, as Dai et al. report it).

    Example:
        >>> df = pd.DataFrame(dict(condition=["knowledge neurons", "random neurons"], intervention="suppress",
        ...                        before=[0.6, 0.6], after=[0.2, 0.58]))
        >>> fig = intervention_bars(df)
    """
    _check_frame(df, "intervention_bars", INTERVENTION_COLUMNS, f"it needs {list(INTERVENTION_COLUMNS)}")
    if df.empty:
        raise ValueError("the DataFrame is empty")
    interventions = list(dict.fromkeys(df["intervention"]))
    conditions = list(dict.fromkeys(df["condition"]))
    fig = make_subplots(rows=1, cols=len(interventions), subplot_titles=interventions, shared_yaxes=True)
    for col, intervention in enumerate(interventions, start=1):
        part = df[df["intervention"] == intervention]
        stats = []
        for condition in conditions:
            rows = part[part["condition"] == condition]
            if rows.empty:
                continue
            before, after = rows["before"].astype(float), rows["after"].astype(float)
            n = len(rows)
            rel = relative_change(before, after).mean() * 100
            stats.append((condition, before.mean(), _sem(before), after.mean(), _sem(after), rel, n))
        names = [s[0] for s in stats]
        for label, mean_i, err_i, color in (("before", 1, 2, _BEFORE), ("after", 3, 4, _AFTER)):
            fig.add_trace(
                go.Bar(
                    x=names,
                    y=[s[mean_i] for s in stats],
                    error_y=dict(type="data", array=[s[err_i] for s in stats], visible=True),
                    name=label,
                    legendgroup=label,
                    showlegend=col == 1,
                    marker_color=color,
                    customdata=[[s[6]] for s in stats],
                    hovertemplate=f"%{{x}}, {intervention}, {label}: %{{y:.4g}} (n=%{{customdata[0]}})<extra></extra>",
                ),
                row=1,
                col=col,
            )
        for i, stat in enumerate(stats):  # the relative change, above the "after" bar and its error bar
            fig.add_annotation(
                x=i + 0.2,
                y=stat[3] + stat[4],
                text=f"{stat[5]:+.1f}%",
                showarrow=False,
                yanchor="bottom",
                yshift=4,
                font=dict(size=12),
                row=1,
                col=col,
            )
    subtitle = "bars: mean ± s.e.m. over prompts; labels: mean relative change (after - before) / before"
    fig.update_layout(
        title=dict(text=f"{title}<br><sup>{subtitle}</sup>"),
        barmode="group",
        template="plotly_white",
        height=480,
        width=max(500, 380 * len(interventions)),
    )
    fig.update_yaxes(title_text=ylabel, row=1, col=1)
    return fig


#: Colours of the conditions in :func:`relation_effects`: the fact's own neurons first, controls after.
CONDITION_COLOURS = {
    "knowledge neurons": "#2166ac",
    "knowledge neurons (held-out)": "#67a9cf",
    "same relation": "#ef8a62",
    "other facts": "#b2182b",
    "random neurons": "#9e9e9e",
    "random neurons (held-out)": "#cccccc",
}


def relation_effects(
    table: pd.DataFrame,
    *,
    metric: str = "rel_change_%",
    title: str = "Effect of intervening on knowledge neurons, per relation, beside the controls",
) -> go.Figure:
    """Dai et al. Fig. 3/4-style bars: per relation, the fact's own effect with every control beside it.

    Args:
        table: :func:`kn_lens.evaluate.relation_table` (columns ``relation, intervention, condition`` and
            ``metric``; ``facts`` and ``specificity`` shown on hover).
        metric: the column to draw (``"rel_change_%"``, ``"rel_of_means_%"``, ``"acc_after"``, ...).
        title: figure title.

    Returns:
        One panel per intervention (suppress, enhance, ...), relations on the x axis, one bar per condition.

    Example:
        >>> from kn_lens.evaluate import records_frame, relation_table
        >>> records = kn_lens.sweeps.read_records(run_dir, rule="dai")   # a tiny-BERT run, one selection rule
        >>> fig = relation_effects(relation_table(records_frame(records)))   # fig.show() in a notebook
        >>> sorted({bar.name for bar in fig.data})
        ['knowledge neurons', 'knowledge neurons (held-out)', 'other facts', 'random neurons',
         'random neurons (held-out)', 'same relation']
    """
    _check_frame(
        table, "relation_effects", ("relation", "intervention", "condition", metric),
        "make it with kn_lens.evaluate.relation_table",
    )  # fmt: skip
    if table.empty:
        raise ValueError("the table is empty: no facts were evaluated")
    if "rule" in table.columns and table["rule"].nunique() > 1:
        raise ValueError(f"the table holds several selection rules {list(dict.fromkeys(table['rule']))}; draw one "
                         "at a time: relation_effects(table[table['rule'] == 'dai'])")  # fmt: skip
    interventions = list(dict.fromkeys(table["intervention"]))
    fig = make_subplots(rows=len(interventions), cols=1, subplot_titles=interventions, shared_xaxes=True)
    relations = list(dict.fromkeys(table["relation"]))
    for row, intervention in enumerate(interventions, start=1):
        part = table[table["intervention"] == intervention]
        for condition in dict.fromkeys(part["condition"]):
            rows = part[part["condition"] == condition].set_index("relation").reindex(relations)
            hover = [
                f"{rel}: {condition}<br>{metric} = {v:.3g}<br>facts = {n}<br>specificity = {s:.2f}"
                for rel, v, n, s in zip(
                    relations,
                    rows[metric],
                    rows.get("facts", pd.Series([np.nan] * len(rows))),
                    rows.get("specificity", pd.Series([np.nan] * len(rows))),
                    strict=True,
                )
            ]
            fig.add_trace(
                go.Bar(
                    x=relations,
                    y=rows[metric],
                    name=condition,
                    legendgroup=condition,
                    showlegend=row == 1,
                    marker_color=CONDITION_COLOURS.get(condition),
                    hovertext=hover,
                    hoverinfo="text",
                ),
                row=row,
                col=1,
            )
        fig.update_yaxes(title_text=metric, zeroline=True, row=row, col=1)
    fig.update_layout(
        title=title,
        barmode="group",
        template="plotly_white",
        height=320 * len(interventions) + 80,
        width=max(700, 110 * len(relations) + 300),
    )
    return fig


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


def knowledge_neurons(
    result: Any = None,
    *,
    scores: Any = None,
    neurons: Sequence[tuple[int, int]] | None = None,
    prompt_labels: Sequence[str] | None = None,
    title: str | None = None,
    row_layers: Sequence[int] | None = None,
) -> go.Figure:
    """The selected knowledge neurons and how strongly each prompt attributes to them.

    Left: every prompt's attribution to each selected neuron (rows = prompts, columns = neurons), which shows
    whether a neuron is shared across paraphrases (Dai et al.'s refinement step). Right: the attribution heatmap
    averaged over prompts, top 10 neurons per layer, with the selected neurons starred.

    Args:
        result: a ``KnowledgeNeurons`` result (uses its ``.neurons``, per-prompt ``.scores`` ``[prompt, layer,
            d_mlp]`` and ``.prompts`` when present); or None and pass ``scores`` and ``neurons``.
        scores: ``[prompt, layer, d_mlp]`` (or ``[layer, d_mlp]``) attribution scores.
        neurons: the selected neurons, ``(layer, index)`` pairs.
        prompt_labels: row labels (default: the prompts' texts if the result has them, else ``prompt i``).
        row_layers: the layer of each layer row of ``scores`` (default: the result's ``.layers``, else
            ``0..rows-1``).
        title: the figure title.

    Returns:
        A figure with two ``Heatmap`` traces (per-prompt scores of the selected neurons; sparse layer view).

    Example:
        >>> fig = knowledge_neurons(kns)
        >>> fig = knowledge_neurons(scores=scores, neurons=[(24, 1005)])
    """
    if result is not None:
        neurons = list(getattr(result, "neurons", neurons) or [])
        scores = getattr(result, "scores", scores)
        if prompt_labels is None and getattr(result, "prompts", None) is not None:
            prompt_labels = [getattr(p, "text", str(p)) for p in result.prompts]
    if scores is None or neurons is None:
        raise ValueError("pass a KnowledgeNeurons result, or both scores= and neurons=")
    arr = _to_numpy(scores, "scores")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"scores must have shape [prompt, layer, d_mlp] or [layer, d_mlp], got {arr.shape}")
    neurons = [(int(layer), int(index)) for layer, index in neurons]
    if not neurons:
        raise ValueError("no neurons were selected; nothing to draw")
    if row_layers is None and result is not None:
        row_layers = getattr(result, "layers", None)
    _, all_layers = _row_layers(arr.shape[1], None, row_layers)
    for layer, index in neurons:
        if layer not in all_layers or not 0 <= index < arr.shape[2]:
            raise ValueError(
                f"neuron L{layer}N{index} is outside the scores (layers {all_layers}, {arr.shape[2]} neurons each)"
            )
    if isinstance(prompt_labels, str):
        raise TypeError(f"prompt_labels must be a list of labels, one per prompt, not one str: [{prompt_labels!r}]")
    labels = list(prompt_labels) if prompt_labels is not None else [f"prompt {i}" for i in range(arr.shape[0])]
    if len(labels) != arr.shape[0]:
        raise ValueError(f"{len(labels)} prompt labels for {arr.shape[0]} prompts")
    labels = [label if len(label) <= 40 else label[:37] + "..." for label in labels]
    names = [f"L{layer}N{index}" for layer, index in neurons]
    per_prompt = np.stack([arr[:, all_layers.index(layer), index] for layer, index in neurons], axis=1)
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.4, 0.6],
        subplot_titles=["selected neurons, per prompt", "mean over prompts, top 10 per layer (* = selected)"],
        horizontal_spacing=0.18,
    )
    heat = attribution_heatmap(arr.mean(0), top_k=min(10, arr.shape[2]), neurons=neurons, row_layers=all_layers).data[0]
    vmax = max(_symmetric_range(per_prompt), _symmetric_range(np.asarray(heat.z)))
    fig.add_trace(
        go.Heatmap(
            z=per_prompt,
            x=names,
            y=labels,
            coloraxis="coloraxis",
            texttemplate="%{z:.3f}",
            hovertemplate="%{x}<br>%{y}<br>score %{z:.4g}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    heat.update(coloraxis="coloraxis", showscale=None, colorbar=None, colorscale=None, zmid=None, zmin=None, zmax=None)
    fig.add_trace(heat, row=1, col=2)
    fig.update_layout(coloraxis=dict(colorscale=DIVERGING, cmid=0, cmin=-vmax, cmax=vmax, colorbar=dict(title="score")))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_layout(
        title=title or f"Knowledge neurons: {', '.join(names)}",
        template="plotly_white",
        height=max(420, 20 * arr.shape[1] + 160),
        width=1200,
    )
    return fig


# --------------------------------------------------------------------------------------------------------------
# Skill neurons
# --------------------------------------------------------------------------------------------------------------


def skill_predictivity(result: Any, *, top_k: int = 20, title: str | None = None) -> go.Figure:
    """Skill-neuron predictivity: by layer (best, 99th percentile, median) and the ``top_k`` best neurons.

    Args:
        result: a :class:`kn_lens.skill.Predictivity`.
        top_k: how many of the best neurons to list on the right.
        title: the figure title.

    Returns:
        A two-panel figure: left, one line per statistic over layers (the median shows where chance sits: the
        sign is chosen on the dev split, so even a useless neuron scores about 0.5); right, horizontal bars of
        the best neurons' predictivity.

    Example:
        ``skill``: the tiny BERT's predictivity (:func:`kn_lens.skill.predictivity`; also ``skill.figure()``):

        >>> fig = skill_predictivity(kn_lens.skill.predictivity(bert, task, prompt=soft, progress=False), top_k=5)
        >>> [trace.name for trace in fig.data]
        ['best', '99th percentile', 'median', None]
        >>> list(fig.data[0].x), len(fig.data[3].y)  # layers on the left, the 5 best neurons on the right
        ([0, 1], 5)
        >>> fig.show()  # doctest: +SKIP
    """
    scores = _to_numpy(getattr(result, "scores", None), "result.scores")
    if scores.ndim != 2:
        raise ValueError(f"result.scores must be [n_layers, d_mlp], got {scores.shape}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    layers = [layer for layer in range(scores.shape[0]) if np.isfinite(scores[layer]).all()]
    if not layers:
        raise ValueError("result has no computed layer")
    fig = make_subplots(
        rows=1, cols=2, column_widths=[0.62, 0.38], subplot_titles=("predictivity by layer", f"best {top_k} neurons")
    )
    for name, fn, color in (
        ("best", lambda a: a.max(), _AFTER),
        ("99th percentile", lambda a: np.percentile(a, 99), "#67a9cf"),
        ("median", np.median, _BEFORE),
    ):
        fig.add_trace(
            go.Scatter(
                x=layers,
                y=[float(fn(scores[layer])) for layer in layers],
                mode="lines+markers",
                name=name,
                marker_color=color,
                hovertemplate=f"L%{{x}} {name}: %{{y:.3f}}<extra></extra>",
            ),
            row=1,
            col=1,
        )
    flat = np.where(np.isfinite(scores), scores, -np.inf).ravel()
    best = np.argsort(-flat, kind="stable")[: min(top_k, int(np.isfinite(flat).sum()))]
    d_mlp = scores.shape[1]
    names = [f"L{i // d_mlp}N{i % d_mlp}" for i in best]
    fig.add_trace(
        go.Bar(
            x=flat[best],
            y=names,
            orientation="h",
            marker_color=_AFTER,
            showlegend=False,
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        ),
        row=1,
        col=2,
    )
    fig.update_yaxes(autorange="reversed", type="category", row=1, col=2)
    fig.update_xaxes(title_text="layer", row=1, col=1)
    fig.update_yaxes(title_text="dev accuracy of the threshold", row=1, col=1)
    fig.update_xaxes(title_text="predictivity", range=[0.5, 1.0], row=1, col=2)
    positions = len(getattr(result, "positions", ()) or ())
    aggregate = getattr(result, "aggregate", "mean")
    fig.update_layout(
        title=title or f"Skill-neuron predictivity ({aggregate} over {positions} prompt positions)",
        template="plotly_white",
        height=max(420, 18 * len(names) + 160),
        width=1100,
    )
    return fig


def perturbation_curve(df: pd.DataFrame, *, title: str = "Perturbing skill neurons vs random neurons") -> go.Figure:
    """Task accuracy against the fraction of perturbed neurons: skill neurons vs random (mean ± s.e.m. over seeds).

    Args:
        df: the DataFrame of :func:`kn_lens.skill.perturbation_curve` (columns ``fraction``, ``selection``,
            ``seed``, ``accuracy``; the ``"none"`` row is the unperturbed accuracy, drawn as a dashed line).
        title: the figure title.

    Example:
        >>> df = kn_lens.skill.perturbation_curve(bert, task, skill, prompt=soft, fractions=[0.01, 0.05],
        ...                                       progress=False)
        >>> fig = perturbation_curve(df)
        >>> [(trace.name, trace.x.tolist()) for trace in fig.data]  # x: percent of neurons
        [('skill neurons', [1.0, 5.0]), ('random neurons', [1.0, 5.0])]
        >>> fig.show()  # doctest: +SKIP
    """
    _check_frame(
        df, "perturbation_curve", ("fraction", "selection", "accuracy"), "make it with skill.perturbation_curve"
    )
    if df.empty:
        raise ValueError("the DataFrame is empty")
    fig = go.Figure()
    colors = {"skill": "#b2182b", "random": _BEFORE}
    for selection in [s for s in dict.fromkeys(df["selection"]) if s != "none"]:
        part = df[df["selection"] == selection].groupby("fraction")["accuracy"]
        stats = part.agg(["mean", _sem]).reset_index()
        fig.add_trace(
            go.Scatter(
                x=stats["fraction"] * 100,
                y=stats["mean"],
                error_y=dict(type="data", array=stats["_sem"], visible=True),
                mode="lines+markers",
                name=f"{selection} neurons",
                marker_color=colors.get(selection),
                hovertemplate=f"{selection}, %{{x:.3g}}%: %{{y:.3f}}<extra></extra>",
            )
        )
    clean = df[df["selection"] == "none"]["accuracy"]
    if len(clean):
        fig.add_hline(y=float(clean.mean()), line_dash="dash", line_color="black", annotation_text="unperturbed")
    fig.update_layout(
        title=title,
        xaxis_title="perturbed neurons (% of all)",
        yaxis_title="task accuracy",
        template="plotly_white",
        height=420,
        width=700,
    )
    return fig


def pruning_curve(df: pd.DataFrame, *, title: str = "Pruning guided by skill neurons") -> go.Figure:
    """Accuracy (and speed-up, if given) of pruned models against the kept fraction: skill-guided vs random.

    Args:
        df: one row per pruned model with columns ``kept`` (fraction of neurons kept), ``selection``
            (``"skill"`` / ``"random"``), ``accuracy`` and optionally ``speedup``.
        title: the figure title.

    Example:
        One row per pruned model, e.g. from :func:`kn_lens.skill.prune` and :func:`kn_lens.skill.accuracy` in a loop:

        >>> df = pd.DataFrame(dict(kept=[0.5, 0.5, 0.5, 0.8, 0.8, 0.8], selection=["skill", "random", "random"] * 2,
        ...                        accuracy=[0.9, 0.6, 0.7, 0.95, 0.8, 0.85], speedup=[1.6, 1.6, 1.6, 1.2, 1.2, 1.2]))
        >>> fig = pruning_curve(df)
        >>> [(trace.name, trace.y.tolist()) for trace in fig.data]  # accuracy panel, then speed-up panel
        [('skill neurons kept', [0.9, 0.95]), ('skill neurons kept', [1.6, 1.2]),
         ('random neurons kept', [0.65, 0.825]), ('random neurons kept', [1.6, 1.2])]
        >>> fig.show()  # doctest: +SKIP
    """
    _check_frame(df, "pruning_curve", ("kept", "selection", "accuracy"))
    has_speed = "speedup" in df.columns
    fig = make_subplots(rows=1, cols=2 if has_speed else 1, subplot_titles=("accuracy", "speed-up")[: 1 + has_speed])
    colors = {"skill": "#b2182b", "random": _BEFORE}
    for selection in dict.fromkeys(df["selection"]):
        part = df[df["selection"] == selection].groupby("kept")
        for col, column in enumerate(["accuracy", "speedup"][: 1 + has_speed], start=1):
            stats = part[column].agg(["mean", _sem]).reset_index()
            fig.add_trace(
                go.Scatter(
                    x=stats["kept"] * 100,
                    y=stats["mean"],
                    error_y=dict(type="data", array=stats["_sem"], visible=True),
                    mode="lines+markers",
                    name=f"{selection} neurons kept",
                    legendgroup=selection,
                    showlegend=col == 1,
                    marker_color=colors.get(selection),
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="neurons kept (%)")
    fig.update_layout(title=title, template="plotly_white", height=420, width=1000 if has_speed else 600)
    return fig


def save(fig: go.Figure, path: str | Path) -> Path:
    """Write a figure to a standalone ``.html`` (plotly.js embedded, opens offline) or, with kaleido, an image.

    Example:
        >>> path = save(lens_table(kn_lens.lens.decode_many(model, ["L24N1005"])), tmp_path / "lens.html")
        >>> path.name, path.stat().st_size > 1_000_000   # plotly.js is inside: it opens offline
        ('lens.html', True)
    """
    path = Path(path)
    if path.suffix.lower() in (".html", ".htm"):
        fig.write_html(path, include_plotlyjs=True, full_html=True)
    else:
        fig.write_image(path)  # needs kaleido
    return path


__all__ = [
    "CONDITION_COLOURS",
    "activation_highlight",
    "attribution_heatmap",
    "intervention_bars",
    "knowledge_neurons",
    "layer_mass",
    "lens_table",
    "perturbation_curve",
    "pruning_curve",
    "relation_effects",
    "save",
    "skill_predictivity",
]
