"""Knowledge-neuron selection: each step against a hand computation, then the whole pipeline on a random model."""

from __future__ import annotations

import math

import pytest
import torch

import kn_lens
from kn_lens._typing import Neuron
from kn_lens.neurons import (
    KnowledgeNeurons,
    coarse_neurons,
    find_knowledge_neurons,
    find_knowledge_neurons_many,
    random_neurons,
    refine,
    relation_filter,
)

PARAPHRASES = ["The capital of France is", "The capital city of France is", "France has its capital in"]


@pytest.fixture(scope="module")
def model(random_llama):
    return random_llama


def _manual_coarse(scores, threshold, layers):
    top = max(float(x) for x in scores.flatten())
    found = []
    for r, layer in enumerate(layers):
        for i in range(scores.shape[1]):
            if float(scores[r, i]) > threshold * top:
                found.append(Neuron(layer, i))
    return found


def test_coarse_matches_definition():
    torch.manual_seed(0)
    scores = torch.randn(3, 50)
    got = coarse_neurons(scores, 0.4, layers=[2, 5, 7])
    assert sorted(got) == sorted(_manual_coarse(scores, 0.4, [2, 5, 7]))
    values = [float(scores[[2, 5, 7].index(n.layer), n.index]) for n in got]
    assert values == sorted(values, reverse=True)  # strongest first
    assert coarse_neurons(-scores.abs(), 0.2) == []  # nothing positive, nothing coarse


def test_refine_fixed_share():
    a, b, c = Neuron(0, 1), Neuron(1, 2), Neuron(2, 3)
    coarse = [[a, b, c], [a, b], [a], [a, b]]
    # counts a=4, b=3, c=1 over 4 prompts; kept if count > share * 4
    assert refine(coarse, 0.7, adaptive=None) == ([a, b], 0.7, 0, "")  # > 2.8
    assert refine(coarse, 0.75, adaptive=None)[0] == [a]  # > 3.0
    assert refine(coarse, 0.0, adaptive=None)[0] == [a, b, c]


def test_refine_adaptive_moves_share_by_005():
    neurons = [Neuron(0, i) for i in range(8)]
    # 20 prompts; neuron i is coarse on 10 + i of them (10..17)
    coarse = [[n for i, n in enumerate(neurons) if p < 10 + i] for p in range(20)]
    selected, share, steps, _ = refine(coarse, 0.7, adaptive=(2, 5))
    # at 0.70: > 14 -> 15,16,17 = 3 neurons, already in range
    assert (len(selected), share, steps) == (3, 0.7, 0)
    selected, share, steps, _ = refine(coarse, 0.8, adaptive=(4, 5))
    # 0.80: >16 -> 1; 0.75: >15 -> 2; 0.70: >14 -> 3; 0.65: >13 -> 4
    assert (len(selected), share, steps) == (4, 0.65, 3)
    selected, share, steps, fallback = refine(coarse, 0.2, adaptive=(1, 1), fallback="none")
    # too many at every share reachable in 6 steps (0.5: >10 -> 7): stops after 6 adjustments
    assert steps == 6 and math.isclose(share, 0.5) and fallback == ""
    assert len(selected) == 7
    # fallback: the closest set (7 at share 0.5), cut to the strongest one
    strength = {n: float(i) for i, n in enumerate(neurons)}
    selected, share, steps, fallback = refine(coarse, 0.2, adaptive=(1, 1), strength=strength)
    assert selected == [neurons[7]] and math.isclose(share, 0.5) and "strongest" in fallback


def test_refine_fallback_with_few_prompts():
    """3 prompts, 6 neurons shared by all: every share < 1 keeps 6, share 1.0 keeps none."""
    neurons = [Neuron(1, i) for i in range(6)]
    coarse = [neurons, neurons, neurons[::-1]]
    assert refine(coarse, 0.7, fallback="none").neurons == []  # without the fallback the per-fact rule ends empty
    strength = {n: -float(n.index) for n in neurons}
    out = refine(coarse, 0.7, strength=strength)
    assert out.neurons == neurons[:5] and out.share == 0.7 and out.fallback
    lonely = refine([[neurons[0]], [neurons[1]], []], 0.7)  # 6 steps reach share 0.4 only: nothing kept
    assert lonely == ([], 0.4, 6, "")
    pair = [[neurons[0], neurons[1]], [neurons[1]], [neurons[0]]]  # both shared by 2 of 3, too few at 0.7
    assert refine(pair, 0.7) == ([neurons[0], neurons[1]], 0.65, 1, "")


def test_find_with_precomputed_scores_matches_independent_selection(model):
    torch.manual_seed(1)
    scores = torch.rand(len(PARAPHRASES), model.cfg.n_layers, model.cfg.d_mlp) ** 8
    scores[:, 1, 5] = 1.0  # shared by every prompt
    scores[:2, 2, 9] = 0.9  # shared by two of three
    kns = find_knowledge_neurons(model, PARAPHRASES, " Paris", scores=scores, adaptive=None, share=0.5)
    coarse = [set(_manual_coarse(s, 0.2, range(model.cfg.n_layers))) for s in scores]
    expected = {n for n in set().union(*coarse) if sum(n in c for c in coarse) > 0.5 * 3}
    assert set(kns.neurons) == expected
    assert Neuron(1, 5) in kns and Neuron(2, 9) in kns
    assert kns.params["share_used"] == 0.5 and kns.params["threshold"] == 0.2
    df = kns.to_dataframe()
    assert list(df["neuron"]) == [str(n) for n in kns.neurons]
    row = df.set_index("neuron").loc["L1N5"]
    assert row["n_prompts"] == 3 and row["share"] == 1.0 and row["mean_score"] == pytest.approx(1.0)
    assert len(kns.to_dataframe(candidates=True)) >= len(df)


def test_find_runs_ig_and_is_deterministic(model):
    kwargs = dict(n_steps=4, layers=[1, 2])
    first = find_knowledge_neurons(model, PARAPHRASES, " Paris", **kwargs)
    second = find_knowledge_neurons(model, PARAPHRASES, " Paris", **kwargs)
    assert first.neurons == second.neurons and first.neurons
    assert first.scores.shape == (3, 2, model.cfg.d_mlp)
    assert first.layers == [1, 2]
    assert all(n.layer in (1, 2) for n in first.neurons)
    from kn_lens.attribution import integrated_gradients

    expected = integrated_gradients(model, PARAPHRASES[0], " Paris", layers=[1, 2], n_steps=4)
    torch.testing.assert_close(first.scores[0], expected)
    assert 2 <= len(first.neurons) <= 5 or first.params["adjustments"] == 6
    assert str(first.neurons[0]).startswith("L")
    assert "KnowledgeNeurons(" in repr(first)


def test_eleuther_variant_defaults(model):
    kns = find_knowledge_neurons(model, PARAPHRASES, " Paris", variant="eleuther", n_steps=3, layers=[2])
    assert kns.params["threshold"] == 0.3 and kns.params["share"] == 0.5 and kns.params["adaptive"] is None
    assert kns.params["attribution_kwargs"]["method"] == "eleuther"
    explicit = find_knowledge_neurons(
        model, PARAPHRASES, " Paris", variant="eleuther", threshold=0.5, n_steps=3, layers=[2], scores=kns.scores
    )
    assert explicit.params["threshold"] == 0.5


def test_negatives_drop_shared_neurons(model):
    kwargs = dict(n_steps=3, layers=[2])
    base = find_knowledge_neurons(model, PARAPHRASES, " Paris", **kwargs)
    # the fact's own prompts as negatives: every selected neuron is coarse on one of them -> all dropped
    same = find_knowledge_neurons(model, PARAPHRASES, " Paris", negatives=PARAPHRASES, **kwargs)
    assert same.neurons == [] and same.dropped["negatives"] == base.neurons
    other = find_knowledge_neurons(model, PARAPHRASES, " Paris", negatives=["Water boils at"], **kwargs)
    assert set(other.neurons) <= set(base.neurons)


def test_relation_filter():
    def result(neurons, relation):
        return KnowledgeNeurons(list(neurons), [], "x", torch.zeros(1, 1, 1), [0], [[]], {}, {}, relation)

    shared, a, b = Neuron(0, 1), Neuron(0, 2), Neuron(0, 3)
    results = [result([shared, a], "capital"), result([shared, b], "capital"), result([a], "capital")]
    results += [result([Neuron(1, 1)], "capital") for _ in range(17)]  # 20 facts: limit = 2 facts
    results.append(result([shared], "language"))  # other relation: untouched
    out = relation_filter(results, 0.1)
    assert out[0].neurons == [shared, a] and out[0].dropped["relation"] == []  # 2 of 20 is not > 10%
    assert out[3].neurons == [] and out[3].dropped["relation"] == [Neuron(1, 1)]  # 17 of 20
    small = relation_filter(results[:3] + results[-1:], 0.1)  # 3 facts: shared and a are in 2 > 0.3 of them
    assert small[0].neurons == [] and small[1].neurons == [b] and small[2].neurons == []
    assert small[0].dropped["relation"] == [shared, a]
    assert small[3].neurons == [shared]
    assert results[0].neurons == [shared, a]  # inputs untouched
    unlabelled = relation_filter([result([shared, a], None), result([shared], None), result([b], None)], 0.1)
    assert [r.neurons for r in unlabelled] == [[a], [], [b]]  # no relation label: one group, not skipped
    with pytest.raises(ValueError, match="share"):
        relation_filter(results, 1.5)


def test_find_many_with_relations(model):
    facts = [
        (["The capital of France is", "France has its capital in"], " Paris", "capital"),
        (
            {
                "prompts": ["The capital of Italy is", "Italy has its capital in"],
                "target": " Rome",
                "relation": "capital",
            }
        ),
    ]
    results = find_knowledge_neurons_many(model, facts, n_steps=3, layers=[2], progress=False, relation_share=None)
    assert [r.target for r in results] == [" Paris", " Rome"] and results[0].relation == "capital"
    filtered = find_knowledge_neurons_many(model, facts, n_steps=3, layers=[2], progress=False)
    common = set(results[0].neurons) & set(results[1].neurons)
    assert not common & (set(filtered[0].neurons) | set(filtered[1].neurons))


def test_random_neurons_control(model):
    like = [Neuron(0, 1), Neuron(0, 2), Neuron(2, 7)]
    control = random_neurons(model, like, seed=3)
    assert sorted(n.layer for n in control) == [0, 0, 2]
    assert not set(control) & set(like)
    assert control == random_neurons(model, like, seed=3)  # same seed -> same neurons
    draws = {tuple(random_neurons(model, like, seed=s)) for s in range(5)}
    assert len(draws) > 1
    assert all(0 <= n.index < model.cfg.d_mlp for n in control)
    with pytest.raises(ValueError, match="out of range"):
        random_neurons(model, ["L0N999"])


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="no prompts"):
        find_knowledge_neurons(model, [], " Paris")
    prompts = kn_lens.make_prompts(model, PARAPHRASES[:2], [" Paris", " Rome"])
    with pytest.raises(ValueError, match="different targets"):
        find_knowledge_neurons(model, prompts)
    with pytest.raises(ValueError, match="one target"):
        find_knowledge_neurons(model, PARAPHRASES[:2], [" Paris", " Rome"])
    with pytest.raises(ValueError, match="no target"):
        find_knowledge_neurons(model, PARAPHRASES)
    with pytest.raises(ValueError, match="threshold"):
        find_knowledge_neurons(model, PARAPHRASES, " Paris", threshold=float("nan"))
    with pytest.raises(ValueError, match="share"):
        find_knowledge_neurons(model, PARAPHRASES, " Paris", share=1.5)
    with pytest.raises(ValueError, match="adaptive"):
        find_knowledge_neurons(model, PARAPHRASES, " Paris", adaptive=(5, 2))
    with pytest.raises(ValueError, match="variant"):
        find_knowledge_neurons(model, PARAPHRASES, " Paris", variant="rome")
    with pytest.raises(ValueError, match="out of range"):
        find_knowledge_neurons(model, PARAPHRASES, " Paris", layers=[9])
    with pytest.raises(ValueError, match="scores have shape"):
        find_knowledge_neurons(model, PARAPHRASES, " Paris", scores=torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="unknown attribution"):
        find_knowledge_neurons(model, PARAPHRASES, " Paris", attribution="magic")


def test_plot_uses_plotting_module(model):
    torch.manual_seed(0)
    scores = torch.rand(3, model.cfg.n_layers, model.cfg.d_mlp) ** 8
    scores[:, 1, 5] = 1.0
    kns = find_knowledge_neurons(model, PARAPHRASES, " Paris", scores=scores)
    fig = kns.plot()
    assert "L1N5" in fig.layout.title.text


def test_completeness_error_recorded_for_ig_only(model):
    """Each prompt's pooled completeness error: computed by hand from the deltas, small for a fine quadrature and
    larger for a coarse one; absent for attributions that have no completeness property."""
    coarse = find_knowledge_neurons(model, PARAPHRASES, " Paris", n_steps=2, method="riemann_left")
    fine = find_knowledge_neurons(model, PARAPHRASES, " Paris", n_steps=64, method="gausslegendre")
    assert len(coarse.params["completeness"]) == len(PARAPHRASES)
    scores, deltas = kn_lens.integrated_gradients(
        model, PARAPHRASES[0], " Paris", n_steps=2, method="riemann_left", return_convergence_delta=True
    )
    change = scores.double().sum(1) - deltas.double()
    expected = float(deltas.abs().sum() / change.abs().sum())
    assert coarse.params["completeness"][0] == pytest.approx(expected, rel=1e-4)
    assert max(fine.params["completeness"]) < 0.01 < min(coarse.params["completeness"])
    assert "completeness" not in find_knowledge_neurons(model, PARAPHRASES, " Paris", attribution="grad_x_act").params


def test_relation_filter_share_is_the_threshold():
    """The share test was held by share=0.1 alone: a filter ignoring share (or using >=) passed it."""

    def result(neurons, relation="capital"):
        return KnowledgeNeurons(list(neurons), [], "x", torch.zeros(1, 1, 1), [0], [[]], {}, {}, relation)

    n2, n3 = Neuron(0, 2), Neuron(0, 3)
    # 4 facts: n2 in 2 of them (50%), n3 in 3 (75%)
    results = [result([n2, n3]), result([n2, n3]), result([n3]), result([Neuron(1, 0)])]
    dropped = {
        share: {n for r in relation_filter(results, share) for n in r.dropped["relation"]}
        for share in (0.1, 0.49, 0.5, 0.74, 0.75, 0.9)
    }
    assert dropped[0.1] == dropped[0.49] == {n2, n3}
    assert dropped[0.5] == dropped[0.74] == {n3}  # in exactly half the facts: not more than half, kept
    assert dropped[0.75] == dropped[0.9] == set()
    # at least 2 facts, whatever the share: one fact of 5 is 20% > 10%, but never dropped
    few = [result([n2])] + [result([Neuron(1, i)]) for i in range(4)]
    assert all(not r.dropped["relation"] for r in relation_filter(few, 0.1))
    half = relation_filter(results, 0.5)[0]
    assert half.neurons == [n2] and half.params["relation_share"] == 0.5
