"""Figures of intervention effects: before / after bars, and effects per relation and condition."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kn_lens.plotting._base import _AFTER, _BEFORE, _check_frame, _sem
from kn_lens.scoring import relative_change

INTERVENTION_COLUMNS = ("condition", "intervention", "before", "after")


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
        table: :func:`kn_lens.evaluation.relation_table` (columns ``relation, intervention, condition`` and
            ``metric``; ``facts`` and ``specificity`` shown on hover).
        metric: the column to draw (``"rel_change_%"``, ``"rel_of_means_%"``, ``"acc_after"``, ...).
        title: figure title.

    Returns:
        One panel per intervention (suppress, enhance, ...), relations on the x axis, one bar per condition.

    Example:
        >>> from kn_lens.evaluation import records_frame, relation_table
        >>> records = kn_lens.evaluation.sweeps.read_records(run_dir, rule="dai")  # a tiny-BERT run, one rule
        >>> fig = relation_effects(relation_table(records_frame(records)))   # fig.show() in a notebook
        >>> sorted({bar.name for bar in fig.data})
        ['knowledge neurons', 'knowledge neurons (held-out)', 'other facts', 'random neurons',
         'random neurons (held-out)', 'same relation']
    """
    _check_frame(
        table, "relation_effects", ("relation", "intervention", "condition", metric),
        "make it with kn_lens.evaluation.relation_table",
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


__all__ = ["CONDITION_COLOURS", "INTERVENTION_COLUMNS", "intervention_bars", "relation_effects"]
