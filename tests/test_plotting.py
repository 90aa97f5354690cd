"""kn_lens.plotting: the figure objects carry the right traces, labels and values (no image export needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

import kn_lens
from kn_lens import plotting
from kn_lens.cache import TopActivating
from kn_lens.lens import decode_many


@pytest.fixture
def scores() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(4, 50, generator=gen) * 0.1
    s[2, 17] = 3.0
    s[3, 4] = -5.0
    return s


def _heatmaps(fig):
    return [t for t in fig.data if isinstance(t, go.Heatmap)]


def _assert_centred_rdbu(trace):
    assert trace.colorscale[0][1] == go.Heatmap(colorscale="RdBu").colorscale[0][1]
    assert trace.zmid == 0
    assert trace.zmin == -trace.zmax


def test_attribution_heatmap_full(scores):
    fig = plotting.attribution_heatmap(scores, title="IG", neurons=[(2, 17)])
    assert isinstance(fig, go.Figure)
    (heat,) = _heatmaps(fig)
    np.testing.assert_allclose(np.asarray(heat.z), scores.numpy(), rtol=1e-6)
    assert list(heat.y) == ["L0", "L1", "L2", "L3"]
    assert np.asarray(heat.customdata)[2][17] == "L2N17"
    assert "%{customdata}" in heat.hovertemplate and "%{z" in heat.hovertemplate
    _assert_centred_rdbu(heat)
    assert heat.zmax == pytest.approx(5.0)
    marks = [t for t in fig.data if isinstance(t, go.Scatter)]
    assert len(marks) == 1 and list(marks[0].x) == [17] and list(marks[0].y) == ["L2"]
    assert fig.layout.title.text == "IG"
    assert fig.layout.xaxis.title.text == "neuron index"


def test_attribution_heatmap_top_k_and_layers(scores):
    fig = plotting.attribution_heatmap(scores, top_k=3, layers=[2, 3], neurons=[(3, 4)])
    (heat,) = _heatmaps(fig)
    z = np.asarray(heat.z)
    assert z.shape == (2, 3)
    assert list(heat.y) == ["L2", "L3"]
    assert z[0, 0] == pytest.approx(3.0) and z[1, 0] == pytest.approx(-5.0)
    assert np.all(np.abs(z[:, :-1]) >= np.abs(z[:, 1:]))  # sorted by |score| within each row
    custom = np.asarray(heat.customdata)
    assert custom[0, 0] == "L2N17" and custom[1, 0] == "L3N4"
    # expected top-3 of layer 2 by |score|, computed independently
    expected = [f"L2N{i}" for i in scores[2].abs().argsort(descending=True)[:3].tolist()]
    assert list(custom[0]) == expected
    assert np.asarray(heat.text)[1, 0] == "<b>4*</b>"  # the selected neuron is starred
    assert "top 3" in fig.layout.xaxis.title.text
    _assert_centred_rdbu(heat)


def test_attribution_heatmap_large_layer_sparse_view():
    big = torch.zeros(30, 1536)
    big[24, 1005] = 1.0
    fig = plotting.attribution_heatmap(big, top_k=5)
    (heat,) = _heatmaps(fig)
    assert np.asarray(heat.z).shape == (30, 5)
    assert np.asarray(heat.customdata)[24, 0] == "L24N1005"


def test_attribution_heatmap_bad_inputs(scores):
    with pytest.raises(ValueError, match="top_k"):
        plotting.attribution_heatmap(scores, top_k=0)
    with pytest.raises(ValueError, match="out of range"):
        plotting.attribution_heatmap(scores, layers=[7])
    with pytest.raises(ValueError, match="shape"):
        plotting.attribution_heatmap(torch.zeros(5))
    with pytest.raises(TypeError):
        plotting.attribution_heatmap("scores")


def test_attribution_heatmap_averages_prompts(scores):
    stacked = torch.stack([scores, 3 * scores])
    (heat,) = _heatmaps(plotting.attribution_heatmap(stacked))
    np.testing.assert_allclose(np.asarray(heat.z), (2 * scores).numpy(), rtol=1e-6)


def test_layer_mass(scores):
    fig = plotting.layer_mass(scores)
    pos, neg = fig.data
    assert (pos.name, neg.name) == ("positive", "negative")
    np.testing.assert_allclose(pos.y, scores.clamp(min=0).sum(1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(neg.y, scores.clamp(max=0).sum(1).numpy(), rtol=1e-6)
    assert list(pos.x) == [0, 1, 2, 3]
    assert fig.layout.barmode == "relative"
    assert fig.layout.xaxis.title.text == "layer"


@pytest.fixture
def effects() -> pd.DataFrame:
    rows = []
    for condition, after in (("knowledge neurons", (0.1, 0.3)), ("random neurons", (0.5, 0.6))):
        for before, a in zip((0.5, 0.6), after, strict=True):
            rows.append(dict(condition=condition, intervention="suppress", before=before, after=a))
            rows.append(dict(condition=condition, intervention="enhance", before=before, after=min(1, 2 * a)))
    return pd.DataFrame(rows)


def test_intervention_bars(effects):
    fig = plotting.intervention_bars(effects)
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    assert len(bars) == 4  # before/after x 2 panels
    assert [b.name for b in bars] == ["before", "after", "before", "after"]
    suppress_before, suppress_after = bars[0], bars[1]
    assert list(suppress_before.x) == ["knowledge neurons", "random neurons"]  # the control beside the real ones
    np.testing.assert_allclose(suppress_before.y, [0.55, 0.55])
    np.testing.assert_allclose(suppress_after.y, [0.2, 0.55])
    sem = [np.std(x, ddof=1) / np.sqrt(2) for x in ([0.1, 0.3], [0.5, 0.6])]
    np.testing.assert_allclose(suppress_after.error_y.array, sem)
    titles = [a.text for a in fig.layout.annotations]
    assert "suppress" in titles and "enhance" in titles
    # relative change: mean of (0.1-0.5)/0.5 and (0.3-0.6)/0.6 = -65%
    assert "-65.0%" in titles
    assert fig.layout.yaxis.title.text == "probability"


def test_intervention_bars_bad_inputs(effects):
    with pytest.raises(ValueError, match="lacks columns"):
        plotting.intervention_bars(effects.drop(columns="after"))
    with pytest.raises(ValueError, match="empty"):
        plotting.intervention_bars(effects.iloc[:0])
    with pytest.raises(TypeError):
        plotting.intervention_bars(effects.to_dict())


def test_lens_table(smollm2):
    df = decode_many(smollm2, ["L24N1005", "L29N100"], k=3)
    fig = plotting.lens_table(df)
    (heat,) = _heatmaps(fig)
    assert list(heat.x) == ["L24N1005", "L29N100"]
    assert list(heat.y) == ["top 1", "top 2", "top 3", "bottom 1", "bottom 2", "bottom 3"]
    z, text = np.asarray(heat.z), np.asarray(heat.text)
    first = df[(df.neuron == "L29N100") & (df.side == "top") & (df["rank"] == 0)].iloc[0]
    assert z[0, 1] == pytest.approx(first.score)
    assert text[0, 1] == f"'{first.token}'"
    assert (z[:3] > 0).all() and (z[3:] < 0).all()
    _assert_centred_rdbu(heat)
    assert "final norm" in fig.layout.title.text
    with pytest.raises(ValueError, match="decode_many"):
        plotting.lens_table(df.drop(columns="score"))


def test_activation_highlight():
    result = TopActivating(
        neuron=(3, 7),
        texts=["a b c", "d e"],
        tokens=[["a", " b", " c"], ["d", " e"]],
        activations=[torch.tensor([0.1, 2.0, -1.0]), torch.tensor([1.5, 0.0])],
        max_positions=[1, 0],
    )
    fig = activation_highlight = plotting.activation_highlight(result)
    (heat,) = _heatmaps(activation_highlight)
    z, text = np.asarray(heat.z, dtype=float), np.asarray(heat.text)
    assert z.shape == (2, 3)
    np.testing.assert_allclose(z[0], [0.1, 2.0, -1.0], rtol=1e-6)
    assert np.isnan(z[1, 2])  # padding, not a fake zero
    assert text[0, 1] == "<b> b</b>" and text[1, 0] == "<b>d</b>"  # peaks in bold
    assert list(heat.y) == ["#1 (peak 2.00)", "#2 (peak 1.50)"]
    _assert_centred_rdbu(heat)
    assert "(3, 7)" in fig.layout.title.text or "L3N7" in fig.layout.title.text
    with pytest.raises(TypeError, match="top_activating"):
        plotting.activation_highlight(object())


def test_activation_highlight_window():
    acts = torch.arange(100, dtype=torch.float)
    result = TopActivating((0, 0), ["x"], [[f"t{i}" for i in range(100)]], [acts], [99])
    (heat,) = _heatmaps(plotting.activation_highlight(result, max_tokens=10))
    assert np.asarray(heat.z).shape == (1, 10)
    assert np.asarray(heat.text)[0, -1] == "<b>t99</b>"


def test_knowledge_neurons_from_scores():
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(3, 4, 20, generator=gen)
    s[:, 2, 5] = 10.0
    fig = plotting.knowledge_neurons(scores=s, neurons=[(2, 5), (1, 3)], prompt_labels=["p0", "p1", "p2"])
    per_prompt, layer_view = _heatmaps(fig)
    assert list(per_prompt.x) == ["L2N5", "L1N3"]
    assert list(per_prompt.y) == ["p0", "p1", "p2"]
    np.testing.assert_allclose(np.asarray(per_prompt.z)[:, 1], s[:, 1, 3].numpy(), rtol=1e-6)
    assert np.asarray(layer_view.customdata)[2, 0] == "L2N5"
    assert fig.layout.coloraxis.cmid == 0 and fig.layout.coloraxis.cmin == -fig.layout.coloraxis.cmax
    assert "L2N5" in fig.layout.title.text
    with pytest.raises(ValueError, match="outside"):
        plotting.knowledge_neurons(scores=s, neurons=[(9, 0)])
    with pytest.raises(ValueError, match="pass a KnowledgeNeurons"):
        plotting.knowledge_neurons()


def test_knowledge_neurons_from_result():
    from types import SimpleNamespace

    s = torch.zeros(2, 3, 8)
    s[:, 1, 2] = 1.0
    prompts = [SimpleNamespace(text="The capital of France is"), SimpleNamespace(text="France's capital is")]
    result = SimpleNamespace(neurons=[(1, 2)], scores=s, prompts=prompts)
    per_prompt, _ = _heatmaps(plotting.knowledge_neurons(result))
    assert list(per_prompt.y) == ["The capital of France is", "France's capital is"]


def test_save_html_standalone(tmp_path, scores):
    path = plotting.save(plotting.layer_mass(scores), tmp_path / "mass.html")
    html = path.read_text()
    assert "<html" in html[:200].lower() and "</html>" in html[-50:].lower()
    assert '<script src="http' not in html and len(html) > 1_000_000  # plotly.js embedded: opens offline


def test_scores_of_a_layer_subset_are_labelled_with_their_layers():
    """Rows of scores computed for layers=[5, 9] used to be drawn as layers 0 and 1."""
    scores = torch.zeros(2, 6)
    scores[1, 4] = 1.0
    fig = plotting.attribution_heatmap(scores, row_layers=[5, 9], neurons=[(9, 4)])
    assert list(fig.data[0].y) == ["L5", "L9"]
    assert fig.data[0].customdata[1][4] == "L9N4"
    assert list(fig.data[1].y) == ["L9"]  # the marked neuron sits on its real layer
    shown = plotting.attribution_heatmap(scores, row_layers=[5, 9], layers=[9], top_k=2)
    assert list(shown.data[0].y) == ["L9"] and shown.data[0].customdata[0][0] == "L9N4"
    with pytest.raises(ValueError, match="out of range"):
        plotting.attribution_heatmap(scores, row_layers=[5, 9], layers=[1])


def test_knowledge_neurons_plot_of_a_layer_subset(tiny_bert):
    from kn_lens.fixtures import tiny_bert as fixture

    fact = fixture.FACTS[0]
    kns = kn_lens.find_knowledge_neurons(tiny_bert, fixture.train_prompts(fact), fact.answer, layers=[1])
    assert kns.layers == [1] and kns.neurons
    fig = kns.plot()
    per_prompt, heat = fig.data
    assert list(heat.y) == ["L1"]
    expected = [float(kns.neuron_scores(n)[0]) for n in kns.neurons]
    np.testing.assert_allclose(per_prompt.z[0], expected, rtol=1e-6)


def test_every_table_figure_checks_its_input_the_same_way():
    """One check for every figure made from a DataFrame: wrong type -> TypeError, missing columns -> ValueError."""
    import pandas as pd

    from kn_lens import plotting

    for figure in (plotting.intervention_bars, plotting.relation_effects, plotting.lens_table,
                   plotting.perturbation_curve, plotting.pruning_curve):  # fmt: skip
        with pytest.raises(TypeError, match="takes a pandas DataFrame"):
            figure([{"a": 1}])
        with pytest.raises(ValueError, match="lacks columns"):
            figure(pd.DataFrame({"unrelated": [1.0]}))


def test_layer_mass_and_results_keep_the_layers_of_a_subset(tiny_bert):
    """layer_mass drew the rows of scores for layers=[5, 9] as layers 0 and 1; a result's own layers were lost."""
    scores = torch.tensor([[1.0, -2.0], [0.5, 0.25]])
    fig = plotting.layer_mass(scores, row_layers=[5, 9])
    assert list(fig.data[0].x) == [5, 9]
    np.testing.assert_allclose(fig.data[1].y, [-2.0, 0.0])
    with pytest.raises(ValueError, match="row_layers names 1 layers for 2 rows"):
        plotting.layer_mass(scores, row_layers=[5])
    from kn_lens.fixtures import tiny_bert as fixture

    fact = fixture.FACTS[0]
    kns = kn_lens.find_knowledge_neurons(tiny_bert, fixture.train_prompts(fact), fact.answer, layers=[1])
    assert list(plotting.layer_mass(kns).data[0].x) == [1]
    heat = plotting.attribution_heatmap(kns, neurons=kns.neurons)
    assert list(heat.data[0].y) == ["L1"] and set(heat.data[1].y) == {"L1"}


def test_attribution_heatmap_refuses_neurons_outside_the_scores(scores):
    """A marked neuron outside the scores used to be dropped without a word."""
    for neurons in ([(7, 3)], [(2, 50)], ["L1N3", "L9N0"]):
        for top_k in (None, 3):
            with pytest.raises(ValueError, match="outside the scores"):
                plotting.attribution_heatmap(scores, neurons=neurons, top_k=top_k)
    fig = plotting.attribution_heatmap(scores, neurons=["L2N17"], layers=[3])  # inside, just not shown
    assert len(fig.data) == 2 and list(fig.data[1].x) == []
