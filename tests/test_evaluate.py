"""Intervention tables and helpers: numbers checked against direct forward passes; no hook left behind."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from _checks import no_hooks_left

from kn_lens import hooks
from kn_lens._typing import Neuron
from kn_lens.evaluation import (
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
    assert no_hooks_left(model)


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


def test_random_control_sits_in_the_knowledge_neurons_layers(model):
    """A control drawn from the wrong layers (forcing layer 0, say) passed every evaluation test: they compared
    the table with random_neurons' own draw, never the draw with the knowledge neurons."""
    from collections import Counter

    neurons = [Neuron(2, 5), Neuron(2, 40), Neuron(1, 3)]
    df = intervention_effects(model, neurons, PARAPHRASES, " Paris", random_seeds=(0, 3), interventions={"x0": 0.0})
    for seed in (0, 3):
        control = random_neurons(model, neurons, seed=seed)
        assert Counter(n.layer for n in control) == Counter(n.layer for n in neurons)
        assert not set(control) & set(neurons) and all(0 <= n.index < model.cfg.d_mlp for n in control)
        rows = df[df.neurons == f"random (seed {seed})"]
        assert set(rows["n_neurons"]) == {3}
        for _, row in rows.iterrows():  # the table scaled exactly those neurons
            expected = _prob(model, row["prompt"], " Paris", _scaled_at_last(control, 0.0))
            assert row["after"] == pytest.approx(expected, rel=1e-4)


def test_rel_of_means_is_the_relative_change_of_the_mean_probability(model):
    """rel_of_means_%'s sign was held by one assertion: after - before, relative to before, in percent."""
    df = intervention_effects(model, NEURONS, PARAPHRASES, " Paris", interventions={"x0": 0.0, "x3": 3.0})
    summary = summarize_effects(df)
    for _, row in summary.iterrows():
        rows = df[(df.intervention == row["intervention"]) & (df.condition == row["condition"])]
        expected = 100 * (rows["after"].mean() - rows["before"].mean()) / rows["before"].mean()
        assert row["rel_of_means_%"] == pytest.approx(expected, rel=1e-9)
        assert row["rel_of_means_%"] * (rows["after"].mean() - rows["before"].mean()) >= 0  # same sign
    own = summary.set_index(["intervention", "condition"])["rel_of_means_%"]
    assert own[("x0", "knowledge neurons")] != own[("x3", "knowledge neurons")]


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
    assert no_hooks_left(model)


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
    assert no_hooks_left(model)
    with pytest.raises(ValueError, match="finite"):
        intervention_effects(model, NEURONS, PARAPHRASES, " Paris", interventions={"x": float("nan")})
    with pytest.raises(ValueError, match="no prompts"):
        intervention_effects(model, NEURONS, [], " Paris")
    with pytest.raises(ValueError, match="out of range"):
        intervention_effects(model, ["L1N999"], PARAPHRASES, " Paris")
    with pytest.raises(ValueError, match="candidates"):
        compare(model, "The capital of France is", [])
    assert no_hooks_left(model)


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
    assert no_hooks_left(model)


def test_demo_rows_are_the_effect_tables_and_the_filter_drops_shared_neurons(tiny_bert):
    """The one demo: its rows are intervention_effects' (same numbers, same random control in the same layers),
    and the relation filter it shows drops exactly the fact's neurons selected for 2 or more of the facts."""
    import io
    from collections import Counter

    from kn_lens.evaluation import demo

    table = demo.run(tiny_bert, n_steps=3, progress=False, out=io.StringIO())
    unfiltered, filtered = table.attrs["unfiltered"], table.attrs["knowledge_neurons"]
    counts = Counter(n for kns in unfiltered for n in set(kns.neurons))
    shared = {n for n in unfiltered[0].neurons if counts[n] >= 2}
    assert set(filtered[0].dropped.get("relation", [])) == shared
    assert filtered[0].neurons == [n for n in unfiltered[0].neurons if n not in shared]

    fact, _, _ = demo.demo_facts(tiny_bert)
    neurons = unfiltered[0].neurons
    direct = intervention_effects(tiny_bert, neurons, list(fact.prompts), fact.target, interventions={"x0": 0.0})
    control = random_neurons(tiny_bert, neurons, seed=0)
    assert Counter(n.layer for n in control) == Counter(n.layer for n in neurons)
    rows = table[(table.neurons == "before filter") & (table.intervention == "x0")].set_index("condition")
    for condition, shown in (("knowledge neurons", "the fact's prompts"), ("random neurons", demo.RANDOM)):
        part = direct[direct.condition == condition]
        assert rows.loc[shown, "rel change %"] == pytest.approx(100 * part["rel_change"].mean(), rel=1e-6)
        assert rows.loc[shown, "p before"] == pytest.approx(part["before"].mean(), rel=1e-6)
    assert no_hooks_left(tiny_bert)


# ------------------------------------------------------------------------------------------------------------
# Acceptance on the tiny trained BERT (kn_lens.fixtures.tiny_bert): Dai et al.'s suppression experiment
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_effects(tiny_bert):
    """Knowledge neurons of every fixture fact (kn_lens's per-fact selection (`adaptive`): IG, coarse 0.2, refined 0.7,
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


# Measured on the committed fixture (n_steps=20, kn_lens's per-fact rule `adaptive`, relation filter off),
# suppress x0, mean relative change of p(answer): attribution prompts -33.6%, held-out paraphrases -35.6%,
# random neurons -0.01% (held-out -0.11%), other facts -4.6%. The assertions keep a wide margin from each (at
# least 1.9 points for the random control, 6 or more elsewhere), so a harmless retrain of the fixture does not flip
# them, while a wrong sign, wrong positions or neurons that are not specific to the fact still fail.
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
    from kn_lens.evaluation import other_relation_facts
    from kn_lens.fixtures import tiny_bert as fx

    fact = fx.FACTS[0]
    pool = other_relation_facts(fx.FACTS, fact)
    assert len(pool) == len(fx.FACTS) - len(fx.facts_of(fact.relation))
    assert all(f.relation != fact.relation for f in pool)
    drawn = other_relation_facts(fx.FACTS, fact, k=5, seed=1)
    assert len(drawn) == 5 and drawn == other_relation_facts(fx.FACTS, fact, k=5, seed=1)
    assert set(drawn) <= set(pool)


# --------------------------------------------------------------------------------------------------------------
# PARAREL metrics on the trained tiny BERT: controls, accuracy, erasure, editing, records
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bags(tiny_bert, tmp_path_factory):
    from _tiny_pararel import write_tiny_pararel

    from kn_lens.datasets import pararel

    return pararel.load(write_tiny_pararel(tmp_path_factory.mktemp("tp"))).bags(tiny_bert)


def _direct_top1(model, prompt):
    with torch.no_grad():
        logits = model(prompt.tokens[None])
    return int(logits[0, prompt.site].argmax()) == prompt.target_ids[0]


def test_measure_matches_target_scores_and_argmax(tiny_bert, bags):
    from kn_lens.evaluation import measure
    from kn_lens.prompts import make_prompt
    from kn_lens.scoring import target_scores

    prompts = [make_prompt(tiny_bert, p, b.target) for b in bags[:6] for p in b.prompts]
    prompts.append(make_prompt(tiny_bert, bags[0].prompts[0], "Tokyo"))  # a wrong answer: not top-1
    m = measure(tiny_bert, prompts, batch_size=5)
    assert torch.allclose(m.prob, target_scores(tiny_bert, prompts), atol=1e-6)
    assert m.top1.tolist() == [_direct_top1(tiny_bert, p) for p in prompts]
    assert not m.top1[-1]


def test_same_relation_control_accuracy_and_specificity(tiny_bert, bags):
    from kn_lens.evaluation import specificity

    fact, same, other = bags[0], bags[1:4], bags[12:15]
    kns = find_knowledge_neurons(tiny_bert, fact.prompts[:3], fact.target)
    df = intervention_effects(
        tiny_bert, kns, heldout=fact.prompts[3:], same_relation=same, unrelated=other, relation=fact.relation
    )
    assert set(df["relation"]) == {"P36"}
    same_rows = df[df.condition == "same relation"]
    assert set(same_rows["target"]) == {b.target for b in same} and len(same_rows) == 2 * 12
    summary = summarize_effects(df)
    row = summary[(summary.intervention == "suppress") & (summary.condition == "knowledge neurons")].iloc[0]
    part = df[(df.intervention == "suppress") & (df.condition == "knowledge neurons")]
    assert row["acc_before"] == pytest.approx(part["top1_before"].mean())
    assert row["acc_after"] == pytest.approx(part["top1_after"].mean())
    assert row["rel_of_means_%"] == pytest.approx(100 * (part["after"].mean() / part["before"].mean() - 1))
    assert row["ppl_before"] == pytest.approx(math.exp(-part["before"].apply(math.log).mean()), rel=1e-5)
    assert row["ppl_after"] == pytest.approx(math.exp(-part["after"].apply(math.log).mean()), rel=1e-5)
    # the trained fixture stores facts in its neurons: suppressing hurts the fact more than its neighbours
    same_row = summary[(summary.intervention == "suppress") & (summary.condition == "same relation")].iloc[0]
    assert row["rel_change_%"] < same_row["rel_change_%"] < 0.5
    assert 0 < specificity(row["rel_change_%"], same_row["rel_change_%"]) <= 1
    assert specificity(-40.0, -10.0) == pytest.approx(0.75)
    assert math.isnan(specificity(0.0, -1.0))


def test_erase_relation_restores_weights_and_hurts_the_relation(tiny_bert, bags):
    from kn_lens.evaluation import erase_relation, evaluate_fact, relation_neurons

    capitals = bags[:12]
    records = [evaluate_fact(tiny_bert, b, same_relation=capitals[:2]) for b in capitals[:6]]
    neurons = relation_neurons(records, top=5, min_count=1)
    assert 0 < len(neurons) <= 5
    w = tiny_bert.blocks[1].mlp.W_out.detach().clone()
    table = erase_relation(tiny_bert, capitals, neurons, other_facts=bags[12:24])
    assert torch.equal(w, tiny_bert.blocks[1].mlp.W_out)
    assert set(table["condition"]) == {"same relation", "other relations"}  # an encoder: no text perplexity
    own = table[(table.neurons == "knowledge neurons") & (table.condition == "same relation")].iloc[0]
    rand = table[(table.neurons == "random neurons") & (table.condition == "same relation")].iloc[0]
    assert own["ppl_after"] > own["ppl_before"] and own["ppl_change_%"] > rand["ppl_change_%"]
    with pytest.raises(ValueError, match="no neurons"):
        erase_relation(tiny_bert, capitals, [])
    with pytest.raises(ValueError, match="empty"):
        erase_relation(tiny_bert, [], neurons)


def test_edit_effects_and_control(tiny_bert, bags):
    from kn_lens.evaluation import edit_effects, random_active_neurons
    from kn_lens.prompts import make_prompt

    fact = bags[0]
    kns = find_knowledge_neurons(tiny_bert, fact.prompts, fact.target)
    w = tiny_bert.blocks[1].mlp.W_out.detach().clone()
    table = edit_effects(tiny_bert, fact, kns, "Rome", neighbours=bags[2:5], lambda2=40.0)
    assert torch.equal(w, tiny_bert.blocks[1].mlp.W_out)
    assert list(table["neurons"]) == ["knowledge neurons", "random active neurons"]
    assert table.loc[0, "old"] == "Paris"  # the model's current answer
    assert table.loc[0, "success_before"] == 0 and table.loc[0, "neighbourhood_before"] == 1
    from kn_lens.edit import edit_fact
    from kn_lens.scoring import target_scores

    rome = [make_prompt(tiny_bert, p, "Rome") for p in fact.prompts]
    with edit_fact(tiny_bert, kns.neurons, "Paris", "Rome", lambda2=40.0):
        expected = target_scores(tiny_bert, rome).mean()
    assert table.loc[0, "new_prob_after"] == pytest.approx(float(expected), rel=1e-5)
    assert table.loc[0, "new_prob_before"] == pytest.approx(float(target_scores(tiny_bert, rome).mean()), rel=1e-5)
    prompts = [make_prompt(tiny_bert, p, fact.target) for p in fact.prompts]
    control = random_active_neurons(tiny_bert, kns.neurons, prompts, seed=3)
    assert sorted(n.layer for n in control) == sorted(n.layer for n in kns.neurons)
    assert not set(control) & set(kns.neurons)


def test_evaluate_fact_record_and_tables(tiny_bert, bags):
    import json

    from kn_lens.evaluation import evaluate_fact, records_frame, relation_table

    fact = bags[0]
    record = evaluate_fact(tiny_bert, fact, same_relation=bags[1:4], other_relations=bags[12:15], seed=1)
    assert json.loads(json.dumps(record)) == record  # JSON-ready
    assert record["uuid"] == fact.uuid and record["n_prompts"] == 3 and record["n_heldout"] == 1
    assert all(n.startswith("L") and "N" in n for n in record["neurons"])
    layers = sorted(Neuron.parse(n).layer for n in record["neurons"])
    assert sorted(Neuron.parse(n).layer for n in record["random_neurons"]) == layers  # the control's layers
    assert not set(record["random_neurons"]) & set(record["neurons"])
    again = evaluate_fact(tiny_bert, fact, same_relation=bags[1:4], other_relations=bags[12:15], seed=1)
    assert again["effects"] == record["effects"] and again["random_neurons"] == record["random_neurons"]
    specific = evaluate_fact(
        tiny_bert, fact, same_relation=bags[1:12], other_relations=bags[12:15], seed=1, selection="fact-specific"
    )
    assert set(specific["neurons"]) <= set(record["neurons"]) | set(specific["dropped"].get("negatives", []))
    empty = dict(record, uuid="no-neurons", neurons=[], random_neurons=[])  # a fact the selection found nothing for
    frame = records_frame([record, {"relation": "P36", "uuid": "u", "known": False}, empty])
    assert set(frame["uuid"]) == {fact.uuid}
    table = relation_table(frame)
    assert set(table["relation"]) == {"P36", "all"}
    assert {"specificity", "acc_before", "acc_after", "rel_of_means_%"} <= set(table.columns)
    with pytest.raises(ValueError, match="selection"):
        evaluate_fact(tiny_bert, fact, selection="best")


def test_knowledge_neurons_json_round_trip(tiny_bert, bags):
    import json

    from kn_lens.neurons import KnowledgeNeurons

    kns = find_knowledge_neurons(tiny_bert, bags[0].prompts, bags[0].target)
    data = json.loads(json.dumps(kns.to_json(scores=True)))
    back = KnowledgeNeurons.from_json(tiny_bert, data)
    assert back.neurons == kns.neurons and back.coarse == kns.coarse and back.target == kns.target
    assert [p.tokens.tolist() for p in back.prompts] == [p.tokens.tolist() for p in kns.prompts]
    assert torch.allclose(back.scores, kns.scores)
    light = KnowledgeNeurons.from_json(tiny_bert, kns.to_json())
    assert light.neurons == kns.neurons and light.scores.shape == kns.scores.shape
    with pytest.raises(ValueError, match="missing"):
        KnowledgeNeurons.from_json(tiny_bert, {"neurons": []})


def test_measure_pads_causal_prompts_without_changing_results(model):
    from kn_lens.evaluation import measure
    from kn_lens.prompts import make_prompt
    from kn_lens.scoring import target_scores

    texts = ["The capital of France is", "Paris", "What is the capital city of the French Republic? It is"]
    prompts = [make_prompt(model, t, " Paris") for t in texts] + [make_prompt(model, texts[0], " New York")]
    assert len({len(p) for p in prompts}) == 4
    suppress_hook = hooks.Intervention("scale", NEURONS, 0.0, positions="site")
    for fwd in ((), suppress_hook):
        m = measure(model, prompts, fwd_hooks=fwd)
        one_by_one = torch.cat([target_scores(model, [p], fwd_hooks=fwd) for p in prompts])
        assert torch.allclose(m.prob, one_by_one, rtol=1e-4, atol=1e-7)
    last = hooks.Intervention("scale", NEURONS, 0.0, positions="last")  # padding would move "last": not padded
    m = measure(model, prompts[:3], fwd_hooks=last)
    assert torch.allclose(m.prob, torch.cat([target_scores(model, [p], fwd_hooks=last) for p in prompts[:3]]))
    assert no_hooks_left(model)


def test_measure_negative_positions_mean_the_same_in_a_batch(model):
    """Right-padding a causal batch must not move negative positions: -1 is each prompt's own last token."""
    from kn_lens.evaluation import measure
    from kn_lens.prompts import make_prompt
    from kn_lens.scoring import target_scores

    texts = ["The capital of France is", "Its capital is", "What is the capital city of the French Republic? It is"]
    prompts = [make_prompt(model, t, " Paris") for t in texts]
    assert len({len(p) for p in prompts}) == 3
    for positions in ((-1,), (-2,), (0, -1)):
        hook = hooks.Intervention("scale", NEURONS, 0.0, positions=positions)
        m = measure(model, prompts, fwd_hooks=hook)
        alone = torch.cat([target_scores(model, [p], fwd_hooks=hook) for p in prompts])
        assert torch.allclose(m.prob, alone, rtol=1e-4, atol=1e-7), positions
    # through the table: -1 is the site of a single-token causal prompt, so both give the same numbers
    by_site = intervention_effects(model, NEURONS, texts, " Paris", random_seeds=())
    by_last = intervention_effects(model, NEURONS, texts, " Paris", random_seeds=(), positions=-1)
    assert by_last["after"].to_numpy() == pytest.approx(by_site["after"].to_numpy(), rel=1e-4)
    assert no_hooks_left(model)


def test_relation_effects_figure(tiny_bert, bags):
    from kn_lens import plotting
    from kn_lens.evaluation import evaluate_fact, records_frame, relation_table

    records = [evaluate_fact(tiny_bert, b, same_relation=bags[1:3], other_relations=bags[12:14]) for b in bags[:2]]
    records.append(evaluate_fact(tiny_bert, bags[12], same_relation=bags[13:15], other_relations=bags[:2]))
    table = relation_table(records_frame(records))
    fig = plotting.relation_effects(table)
    assert {t.name for t in fig.data} == set(table["condition"])
    own = next(t for t in fig.data if t.name == "knowledge neurons" and t.xaxis == "x")
    expected = table[(table.intervention == fig.layout.annotations[0].text) & (table.condition == "knowledge neurons")]
    assert list(own.x) == ["P36", "P37", "all"]
    assert list(own.y) == pytest.approx(list(expected.set_index("relation").loc[list(own.x), "rel_change_%"]))
    with pytest.raises(ValueError, match="relation_table"):
        plotting.relation_effects(table.drop(columns="condition"))
