"""Intervention tables and helpers: numbers checked against direct forward passes; no hook left behind."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from kn_lens import hooks
from kn_lens._typing import Neuron
from kn_lens.interventions import (
    EFFECT_COLUMNS,
    compare,
    demo_table,
    enhance,
    intervention_effects,
    summarize_effects,
    suppress,
)
from kn_lens.neurons import find_knowledge_neurons, random_neurons

PARAPHRASES = ["The capital of France is", "The capital city of France is", "France has its capital in"]
NEURONS = [Neuron(1, 3), Neuron(2, 5), Neuron(2, 40)]


@pytest.fixture(scope="module")
def model(random_llama):
    return random_llama


def _no_hooks_left(model):
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


def _prob(model, text, target, fwd_hooks=()):
    """Independent probability: one prompt, softmax at the last position."""
    tokens = model.to_tokens(text, prepend_bos=False)
    target_id = model.tokenizer(target, add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks)) if fwd_hooks else model(tokens)
    return float(logits[0, -1].softmax(-1)[target_id])


def _scaled_at_last(neurons, factor):
    """Hand-made hooks: scale the neurons at the last position."""
    by_layer = {}
    for n in neurons:
        by_layer.setdefault(n.layer, []).append(n.index)

    def fn(act, hook, idx):
        act = act.clone()
        act[:, -1, idx] *= factor
        return act

    return [(f"blocks.{layer}.mlp.hook_post", lambda a, hook, i=idx: fn(a, hook, i)) for layer, idx in by_layer.items()]


def test_effects_match_direct_forward_passes(model):
    unrelated = [(["The capital of Italy is"], " Rome")]
    df = intervention_effects(
        model, NEURONS, PARAPHRASES, " Paris", heldout=["Paris is the capital of"], unrelated=unrelated
    )
    assert list(df.columns) == list(EFFECT_COLUMNS)
    conditions = set(df["condition"])
    assert conditions == {
        "knowledge neurons",
        "knowledge neurons (held-out)",
        "random neurons",
        "random neurons (held-out)",
        "other facts",
    }
    kn = df[(df.condition == "knowledge neurons") & (df.intervention == "suppress")]
    for _, row in kn.iterrows():
        assert row["before"] == pytest.approx(_prob(model, row["prompt"], " Paris"), rel=1e-4)
        expected = _prob(model, row["prompt"], " Paris", _scaled_at_last(NEURONS, 0.0))
        assert row["after"] == pytest.approx(expected, rel=1e-4)
        assert row["rel_change"] == pytest.approx((row["after"] - row["before"]) / row["before"])
        lo = math.log(row["after"] / (1 - row["after"])) - math.log(row["before"] / (1 - row["before"]))
        assert row["logodds_change"] == pytest.approx(lo, rel=1e-6)
    held = df[(df.condition == "knowledge neurons (held-out)") & (df.intervention == "enhance")].iloc[0]
    expected = _prob(model, "Paris is the capital of", " Paris", _scaled_at_last(NEURONS, 2.0))
    assert held["after"] == pytest.approx(expected, rel=1e-4)
    other = df[df.condition == "other facts"].iloc[0]
    assert other["target"] == " Rome"
    control = random_neurons(model, NEURONS, seed=0)
    rand = df[(df.condition == "random neurons") & (df.intervention == "suppress")].iloc[0]
    assert rand["after"] == pytest.approx(
        _prob(model, rand["prompt"], " Paris", _scaled_at_last(control, 0.0)), rel=1e-4
    )
    assert _no_hooks_left(model)


def test_summary_and_base_split(model):
    df = intervention_effects(model, NEURONS, PARAPHRASES, " Paris", random_seeds=(0, 1))
    assert set(df["neurons"]) == {"knowledge", "random (seed 0)", "random (seed 1)"}
    summary = summarize_effects(df)
    kn = summary[(summary.intervention == "suppress") & (summary.condition == "knowledge neurons")].iloc[0]
    rows = df[(df.intervention == "suppress") & (df.condition == "knowledge neurons")]
    assert kn["n"] == 3 and kn["rel_change_%"] == pytest.approx(100 * rows["rel_change"].mean())
    split = summarize_effects(df, base_split=(0.5,))
    assert set(split["base"]) <= {"p<0.5", "p>=0.5"}
    assert split["n"].sum() == len(df)


def test_suppress_enhance_helpers(model):
    out = suppress(model, NEURONS, PARAPHRASES, " Paris", unrelated=[(["The capital of Italy is"], " Rome")])
    assert list(out["condition"]) == ["knowledge neurons"] * 3 + ["other facts"]
    assert out.loc[0, "before"] == pytest.approx(_prob(model, PARAPHRASES[0], " Paris"), rel=1e-4)
    up = enhance(model, NEURONS, PARAPHRASES, " Paris")
    assert up.loc[0, "after"] == pytest.approx(
        _prob(model, PARAPHRASES[0], " Paris", _scaled_at_last(NEURONS, 2.0)), rel=1e-4
    )
    all_positions = suppress(model, NEURONS, PARAPHRASES, " Paris", positions="all")
    expected = _prob(model, PARAPHRASES[0], " Paris", hooks.scale(NEURONS, 0.0, positions="all"))
    assert all_positions.loc[0, "after"] == pytest.approx(expected, rel=1e-4)
    assert _no_hooks_left(model)


def test_compare_table(model):
    text = "The capital of France is"
    table = compare(
        model,
        text,
        [" Paris", " Rome", " London"],
        {"x0": hooks.Intervention("scale", NEURONS, 0.0), "user list": hooks.scale(NEURONS, 0.0, positions="last")},
    )
    assert list(table.columns) == ["clean", "x0", "user list"]
    assert list(table.index) == [" Paris", " Rome", " London"]
    for cand in table.index:
        assert table.loc[cand, "clean"] == pytest.approx(_prob(model, text, cand), rel=1e-4)
        assert table.loc[cand, "x0"] == pytest.approx(_prob(model, text, cand, _scaled_at_last(NEURONS, 0.0)), rel=1e-4)
    torch.testing.assert_close(torch.tensor(table["x0"].values), torch.tensor(table["user list"].values))


def test_no_hook_left_after_error(model):
    def broken(act, hook):
        raise RuntimeError("user hook failed")

    with pytest.raises(RuntimeError, match="user hook failed"):
        compare(
            model,
            "The capital of France is",
            [" Paris"],
            {"bad": [*hooks.scale(NEURONS, 0.0, positions="all"), ("blocks.2.mlp.hook_post", broken)]},
        )
    assert _no_hooks_left(model)
    with pytest.raises(ValueError, match="finite"):
        intervention_effects(model, NEURONS, PARAPHRASES, " Paris", interventions={"x": float("nan")})
    with pytest.raises(ValueError, match="no prompts"):
        intervention_effects(model, NEURONS, [], " Paris")
    with pytest.raises(ValueError, match="out of range"):
        intervention_effects(model, ["L1N999"], PARAPHRASES, " Paris")
    with pytest.raises(ValueError, match="candidates"):
        compare(model, "The capital of France is", [])
    assert _no_hooks_left(model)


def test_no_neurons_means_no_change(model):
    scores = torch.zeros(len(PARAPHRASES), model.cfg.n_layers, model.cfg.d_mlp)  # nothing attributed
    kns = find_knowledge_neurons(model, PARAPHRASES, " Paris", scores=scores)
    assert kns.neurons == []
    df = intervention_effects(model, kns, random_seeds=(0,))
    assert (df["before"] == df["after"]).all() and set(df["condition"]) == {"knowledge neurons"}


def test_demo_table_runs(model):
    table = demo_table(model, n_steps=3, layers=[1, 2], progress=False)
    assert isinstance(table, pd.DataFrame)
    assert {"intervention", "condition", "neurons", "n", "before", "after", "rel_change_%", "logodds_change"} <= set(
        table.columns
    )
    kns = table.attrs["knowledge_neurons"]
    kn_row = table[(table.condition == "knowledge neurons") & (table.intervention == "suppress")].iloc[0]
    assert kn_row["neurons"] == " ".join(str(n) for n in kns.neurons)
    assert set(table["intervention"]) == {"suppress", "enhance"}
    assert _no_hooks_left(model)


# ------------------------------------------------------------------------------------------------------------
# Acceptance on the tiny trained BERT (kn_lens.fixtures.tiny_bert): Dai et al.'s suppression experiment
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_effects(tiny_bert):
    """Knowledge neurons of every fixture fact (Dai et al.'s per-fact selection: IG, coarse 0.2, refined 0.7,
    adaptive 2-5; the relation filter is off, as in Dai et al.'s suppression experiment), then x0 / x2 on the
    attribution prompts, the held-out paraphrase, a random control (same layers, 3 seeds) and the facts of the
    other relations (the fact at the same index in each other relation)."""
    from kn_lens.fixtures import tiny_bert as fx
    from kn_lens.neurons import FactPrompts, find_knowledge_neurons_many

    facts = fx.FACTS
    items = [FactPrompts(fx.train_prompts(f), f.answer, f.relation, f"{f.relation}: {f.subject}") for f in facts]
    results = find_knowledge_neurons_many(tiny_bert, items, n_steps=20, progress=False, relation_share=None)
    frames = []
    for i, (fact, kns) in enumerate(zip(facts, results, strict=True)):
        position = i % len(fx.facts_of(fact.relation))
        others = [(fx.train_prompts(g), g.answer) for g in facts if g.relation != fact.relation]
        others = [o for j, o in enumerate(others) if j % len(fx.facts_of(fact.relation)) == position]
        df = intervention_effects(
            tiny_bert, kns, heldout=fx.heldout_prompts(fact), unrelated=others, random_seeds=(0, 1, 2)
        )
        frames.append(df.assign(kn_fact=kns.name))
    return results, pd.concat(frames, ignore_index=True)


def _mean_change(effects, intervention, condition):
    rows = effects[(effects.intervention == intervention) & (effects.condition == condition)]
    assert len(rows) > 0, (intervention, condition)
    return 100 * rows["rel_change"].mean()


# Measured on the committed fixture (n_steps=20, Dai et al.'s selection, relation filter off), suppress x0, mean
# relative change of p(answer): attribution prompts -33.6%, held-out paraphrases -35.6%, random neurons -0.01%
# (held-out -0.11%), other facts -4.6%. The assertions keep a wide margin from each (at least 1.9 points for the
# random control, 6 or more elsewhere), so a harmless retrain of the fixture does not flip them, while a wrong sign,
# wrong positions or neurons that are not specific to the fact still fail.
SUPPRESS_AT_MOST = -20.0  # measured -33.6 / -35.6: margin 13.6 / 15.6 points
RANDOM_WITHIN = 2.0  # measured 0.01 / 0.11
SPECIFICITY = 3.0  # the fact's drop is at least 3x the other facts' (measured 7.4x)


@pytest.mark.slow
def test_fixture_suppression_lowers_the_answer(fixture_effects):
    results, effects = fixture_effects
    assert sum(len(r.neurons) for r in results) > 0
    train = _mean_change(effects, "suppress", "knowledge neurons")
    heldout = _mean_change(effects, "suppress", "knowledge neurons (held-out)")
    print(f"\nsuppress x0: attribution prompts {train:+.1f}%, held-out paraphrases {heldout:+.1f}%")
    assert train <= SUPPRESS_AT_MOST
    assert heldout <= SUPPRESS_AT_MOST


@pytest.mark.slow
def test_fixture_controls_move_far_less_than_the_fact(fixture_effects):
    _, effects = fixture_effects
    train = _mean_change(effects, "suppress", "knowledge neurons")
    for condition in ("random neurons", "random neurons (held-out)"):
        change = _mean_change(effects, "suppress", condition)
        print(f"\nsuppress x0, {condition}: {change:+.2f}%")
        assert abs(change) <= RANDOM_WITHIN, condition
    other = _mean_change(effects, "suppress", "other facts")
    print(f"\nsuppress x0, other facts: {other:+.2f}% (the fact: {train:+.2f}%)")
    assert abs(other) * SPECIFICITY <= abs(train)


@pytest.mark.slow
def test_fixture_enhance_is_reported(fixture_effects):
    """Enhancing is reported (split by base probability, and in log-odds), not asserted to help."""
    _, effects = fixture_effects
    table = summarize_effects(effects[effects.intervention == "enhance"], base_split=(0.9,))
    print("\n" + table.to_string())
    assert set(table["base"]) <= {"p<0.9", "p>=0.9"}
    assert table["n"].sum() == (effects.intervention == "enhance").sum()
    assert table["logodds_change"].notna().all()


def test_other_relation_facts():
    from kn_lens.fixtures import tiny_bert as fx
    from kn_lens.interventions import other_relation_facts

    fact = fx.FACTS[0]
    pool = other_relation_facts(fx.FACTS, fact)
    assert len(pool) == len(fx.FACTS) - len(fx.facts_of(fact.relation))
    assert all(f.relation != fact.relation for f in pool)
    drawn = other_relation_facts(fx.FACTS, fact, k=5, seed=1)
    assert len(drawn) == 5 and drawn == other_relation_facts(fx.FACTS, fact, k=5, seed=1)
    assert set(drawn) <= set(pool)
