"""Figures of skill neurons: predictivity, perturbation against random neurons, pruning."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kn_lens._typing import Neuron
from kn_lens.plotting._base import (
    _AFTER,
    _BEFORE,
    _check_frame,
    _sem,
    _to_numpy,
)


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
    names = [str(Neuron(i // d_mlp, i % d_mlp)) for i in best]
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


def skill_perturbation_curve(
    df: pd.DataFrame, *, title: str = "Perturbing skill neurons vs random neurons"
) -> go.Figure:
    """Task accuracy against the fraction of perturbed neurons: skill neurons vs random (mean ± s.e.m. over seeds).

    The figure of :func:`kn_lens.skill.perturbation_curve`'s table; ``kn_lens.plotting.perturbation_curve`` is
    the same function under its old name (kept so old code runs; it is not the computation of ``kn_lens.skill``).

    Args:
        df: the DataFrame of :func:`kn_lens.skill.perturbation_curve` (columns ``fraction``, ``selection``,
            ``seed``, ``accuracy``; the ``"none"`` row is the unperturbed accuracy, drawn as a dashed line).
        title: the figure title.

    Example:
        >>> df = kn_lens.skill.perturbation_curve(bert, task, skill, prompt=soft, fractions=[0.01, 0.05],
        ...                                       progress=False)
        >>> fig = skill_perturbation_curve(df)
        >>> [(trace.name, trace.x.tolist()) for trace in fig.data]  # x: percent of neurons
        [('skill neurons', [1.0, 5.0]), ('random neurons', [1.0, 5.0])]
        >>> fig.show()  # doctest: +SKIP
    """
    _check_frame(
        df, "skill_perturbation_curve", ("fraction", "selection", "accuracy"), "make it with skill.perturbation_curve"
    )
    if df.empty:
        raise ValueError("the DataFrame is empty")
    fig = go.Figure()
    colors = {"skill": "#b2182b", "random": _BEFORE}
    for selection in [s for s in dict.fromkeys(df["selection"]) if s != "none"]:
        part = df[df["selection"] == selection].groupby("fraction")["accuracy"]
        fig.add_trace(
            _mean_sem_line(
                part,
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


#: The old name of :func:`skill_perturbation_curve` (the figure; the computation is
#: :func:`kn_lens.skill.perturbation_curve`).
perturbation_curve = skill_perturbation_curve


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
            fig.add_trace(
                _mean_sem_line(
                    part[column],
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


def _mean_sem_line(groups: Any, **trace: Any) -> go.Scatter:
    """One line of means with s.e.m. error bars over the groups of a grouped column, x in percent of the group
    key (a fraction of neurons)."""
    stats = groups.agg(["mean", _sem]).reset_index()
    return go.Scatter(
        x=stats.iloc[:, 0] * 100,
        y=stats["mean"],
        error_y=dict(type="data", array=stats["_sem"], visible=True),
        mode="lines+markers",
        **trace,
    )


__all__ = ["perturbation_curve", "pruning_curve", "skill_perturbation_curve", "skill_predictivity"]
