"""Figures of attribution scores: the heatmap over layers x neurons, the mass per layer, one fact's knowledge
neurons."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from kn_lens._typing import Neuron
from kn_lens.plotting._base import (
    DIVERGING,
    _centred,
    _row_layers,
    _scores_of,
    _symmetric_range,
    _to_numpy,
)


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
        labels = np.array([[str(Neuron(layer, n)) for n in range(d_mlp)] for layer in rows])
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
                    text=[str(Neuron(layer, index)) for layer, index in keep],
                    hovertemplate="%{text} (selected)<extra></extra>",
                )
            )
        xaxis_title = "neuron index"
    else:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= d_mlp:
            raise ValueError(f"top_k must be an int between 1 and d_mlp={d_mlp}, got {top_k!r}")
        order = np.argsort(-np.abs(sub), axis=1, kind="stable")[:, :top_k]
        z = np.take_along_axis(sub, order, axis=1)
        labels = np.array([[str(Neuron(layer, n)) for n in row] for layer, row in zip(rows, order, strict=True)])
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
                f"neuron {Neuron(layer, index)} is outside the scores (rows for layers {list(layers)}, {d_mlp} neurons "
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
                f"neuron {Neuron(layer, index)} is outside the scores "
                f"(layers {all_layers}, {arr.shape[2]} neurons each)"
            )
    if isinstance(prompt_labels, str):
        raise TypeError(f"prompt_labels must be a list of labels, one per prompt, not one str: [{prompt_labels!r}]")
    labels = list(prompt_labels) if prompt_labels is not None else [f"prompt {i}" for i in range(arr.shape[0])]
    if len(labels) != arr.shape[0]:
        raise ValueError(f"{len(labels)} prompt labels for {arr.shape[0]} prompts")
    labels = [label if len(label) <= 40 else label[:37] + "..." for label in labels]
    names = [str(Neuron(layer, index)) for layer, index in neurons]
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


__all__ = ["attribution_heatmap", "knowledge_neurons", "layer_mass"]
