"""Figures for neurons, all plotly, all returning a ``plotly.graph_objects.Figure``.

Every function takes the plain results of the other modules (tensors, DataFrames, result objects) and draws
them; nothing here computes anything a figure could hide. Signed quantities use the diverging ``RdBu`` scale
centred on 0 (red negative, blue positive, white zero), so a neuron that pushes the answer down never looks like
one that pushes it up. Hover on any cell shows the neuron as ``L{layer}N{index}`` with its value.

Figures are ordinary plotly figures: ``fig.show()`` in a notebook, :func:`save` (or ``fig.write_html``) for a
standalone HTML file that opens in any browser without a server or internet.

The figures, by what they draw: :mod:`~kn_lens.plotting.maps` (attribution scores: :func:`attribution_heatmap`,
:func:`layer_mass`, :func:`knowledge_neurons`), :mod:`~kn_lens.plotting.effects` (interventions:
:func:`intervention_bars`, :func:`relation_effects`), :mod:`~kn_lens.plotting.text` (tokens: :func:`lens_table`,
:func:`activation_highlight`), :mod:`~kn_lens.plotting.skill` (skill neurons: :func:`skill_predictivity`,
:func:`skill_perturbation_curve`, :func:`pruning_curve`); every name is importable from ``kn_lens.plotting``.

Example:
    >>> scores = kn_lens.integrated_gradients(model, "The capital of France is", " Paris", layers=[24, 29])
    >>> fig = attribution_heatmap(scores, top_k=20, row_layers=[24, 29])
    >>> fig.show()  # doctest: +SKIP
    >>> fig = lens_table(kn_lens.lens.decode_many(model, ["L24N1005", "L29N100"], k=8))
"""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from kn_lens.plotting._base import DIVERGING
from kn_lens.plotting.effects import CONDITION_COLOURS, INTERVENTION_COLUMNS, intervention_bars, relation_effects
from kn_lens.plotting.maps import attribution_heatmap, knowledge_neurons, layer_mass
from kn_lens.plotting.skill import perturbation_curve, pruning_curve, skill_perturbation_curve, skill_predictivity
from kn_lens.plotting.text import activation_highlight, lens_table


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
    "DIVERGING",
    "INTERVENTION_COLUMNS",
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
    "skill_perturbation_curve",
    "skill_predictivity",
]
