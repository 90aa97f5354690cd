"""The input boundary: every bad number or input is a clear error before anything runs, never a silent result.

Each test here gave a silent wrong result, a deep traceback or a late error before kn_lens.inputs existed.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys

import pytest
import torch

import kn_lens
from kn_lens import hooks, inputs
from kn_lens._typing import Neuron


@pytest.fixture(scope="module")
def model(random_llama):
    return random_llama


@pytest.fixture(scope="module")
def prompts(model):
    return kn_lens.make_prompts(model, ["The capital of France is", "The capital of Italy is"], [" Paris", " Rome"])


def _no_hooks_left(model):
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


# ------------------------------------------------------------------------------------------ unchecked numbers


@pytest.mark.parametrize("batch_size", [-1, 0, 2.0, True])
def test_batch_size_must_be_a_positive_int(model, prompts, batch_size):
    """A negative batch size used to skip every batch and return uninitialised memory as scores."""
    error = TypeError if isinstance(batch_size, bool | float) else ValueError
    with pytest.raises(error, match="batch_size"):
        kn_lens.target_scores(model, prompts, batch_size=batch_size)
    with pytest.raises(error, match="batch_size"):
        kn_lens.direct_effect(model, "L1N3", prompts, batch_size=batch_size)
    with pytest.raises(error, match="batch_size"):
        kn_lens.cache_mlp_post(model, prompts, batch_size=batch_size)
    with pytest.raises(error, match="batch_size"):
        kn_lens.intervention_effects(model, ["L1N3"], prompts, batch_size=batch_size)


def test_nan_baseline_is_refused(model, prompts):
    baseline = torch.zeros(model.cfg.d_mlp)
    baseline[3] = math.nan
    for fn in (kn_lens.integrated_gradients, kn_lens.grad_x_activation):
        with pytest.raises(ValueError, match="baseline contains NaN"):
            fn(model, prompts[0], baseline=baseline, layers=[1])


def test_nan_or_wrong_width_means_are_refused(model, prompts):
    means = kn_lens.mean_activations(model, prompts, layers=[1], progress=False)
    bad = {1: means[1].clone()}
    bad[1][5] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        hooks.ablate(["L1N5"], "mean", mean_cache=bad, positions="all")
    with pytest.raises(ValueError, match="NaN"):
        kn_lens.ablation_effects(model, prompts[0], layers=[1], mode="mean", mean_cache=bad, internal_batch_size=64)
    narrow = {1: means[1][:10]}
    with pytest.raises(ValueError, match=r"expected \[d_mlp\] = \[64\]"):
        hooks.ablate(["L1N5"], "mean", mean_cache=narrow, positions="all", model=model)
    with pytest.raises(ValueError, match=r"expected \[d_mlp\] = \[64\]"):
        kn_lens.attribution_patching(model, prompts[0], layers=[1], mode="mean", mean_cache=narrow)
    with pytest.raises(ValueError, match="outside them"):  # no model: the means still must cover the neurons
        hooks.ablate(["L1N50"], "mean", mean_cache=narrow, positions="all")


def test_means_accept_the_packages_own_cache(model, prompts):
    cache = kn_lens.cache_mlp_post(model, prompts, layers=[1], positions="all", progress=False)
    means = kn_lens.mean_activations(model, prompts, layers=[1], positions="all", progress=False)
    tokens = prompts[0].tokens[None]
    from_cache = model.run_with_hooks(
        tokens, fwd_hooks=hooks.ablate(["L1N5"], "mean", mean_cache=cache, positions="all")
    )
    from_means = model.run_with_hooks(
        tokens, fwd_hooks=hooks.ablate(["L1N5"], "mean", mean_cache=means, positions="all")
    )
    torch.testing.assert_close(from_cache, from_means)
    a = kn_lens.attribution_patching(model, prompts[0], layers=[1], mode="mean", mean_cache=cache)
    b = kn_lens.attribution_patching(model, prompts[0], layers=[1], mode="mean", mean_cache=means)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("neuron", [(1, 3.0), (1.0, 3), (True, 3), (1, 2.7)])
def test_neuron_tuples_of_floats_or_bools_are_refused(model, neuron):
    """(1, 2.7) used to become L1N2 silently."""
    with pytest.raises(TypeError, match="must be an int"):
        hooks.scale([neuron], 0.0, positions="all", model=model)
    with pytest.raises(TypeError, match="must be an int"):
        kn_lens.decode(model, neuron)
    with pytest.raises(TypeError, match="must be an int"):
        kn_lens.erase(model, [neuron])


@pytest.mark.parametrize("positions", [2.0, True, [0, 1.0], [], torch.tensor([1.0])])
def test_float_bool_or_empty_positions_are_refused(model, prompts, positions):
    with pytest.raises((TypeError, ValueError), match="positions"):
        hooks.scale(["L1N3"], 0.0, positions=positions)
    with pytest.raises((TypeError, ValueError), match="positions"):
        kn_lens.cache_mlp_post(model, prompts, positions=positions, progress=False)
    with pytest.raises((TypeError, ValueError), match="positions"):
        hooks.Intervention("scale", ["L1N3"], 0.0, positions=positions)


@pytest.mark.parametrize("layers", [1.0, [0, 1.5], True, [True]])
def test_float_or_bool_layers_are_refused(model, prompts, layers):
    with pytest.raises(TypeError, match="layer must be an int"):
        kn_lens.cache_mlp_post(model, prompts, layers=layers, progress=False)
    with pytest.raises(TypeError, match="layer must be an int"):
        kn_lens.integrated_gradients(model, prompts[0], layers=layers)


def test_explicit_prompt_position_must_be_an_int(model):
    with pytest.raises(TypeError, match="position must be an int"):
        kn_lens.make_prompt(model, "The capital of France is", " Paris", position=2.5)


def test_duplicate_neurons_with_different_set_values_are_refused(model):
    with pytest.raises(ValueError, match="L1N2 is listed twice with different values"):
        hooks.set(["L1N2", "L1N3", (1, 2)], [1.0, 2.0, 3.0], positions="all")
    with pytest.raises(ValueError, match="listed twice"):
        hooks.Intervention("set", ["L1N2", "L1N2"], (1.0, 3.0))
    # the same value twice is no contradiction
    built = hooks.set(["L1N2", "L1N2"], [1.0, 1.0], positions="all")
    assert built[0][1].keywords["indices"] == (2,)
    assert hooks.Intervention("set", ["L1N2", "L1N2"], (1.0, 1.0)).neurons == (Neuron(1, 2),)


# ------------------------------------------------------------------------------------------------ clear errors


def test_hooks_on_neurons_outside_the_model_fail_before_running(model, prompts):
    """Built without model=, a layer the model lacks used to be a bare KeyError from inside TransformerLens."""
    calls = []
    spy = ("blocks.0.hook_resid_pre", lambda act, hook: calls.append(1))
    with pytest.raises(ValueError, match=r"blocks\.7\.mlp\.hook_post, which this model does not have"):
        kn_lens.target_scores(model, prompts, fwd_hooks=[spy, *hooks.scale(["L7N1"], 0.0, positions="all")])
    with pytest.raises(ValueError, match="d_mlp=64"):
        kn_lens.target_scores(model, prompts, fwd_hooks=hooks.scale(["L1N999"], 0.0, positions="all"))
    with pytest.raises(ValueError, match="does not have"):
        kn_lens.target_scores(model, prompts, fwd_hooks=hooks.Intervention("scale", ["L7N1"], 0.0))
    assert not calls and _no_hooks_left(model)


def test_site_is_the_default_position_and_asks_for_prompts(model, prompts):
    with pytest.raises(ValueError, match="positions='site' \\(the default\\) needs the prompts"):
        hooks.scale(["L1N3"], 0.0)
    by_default = hooks.scale(["L1N3"], 0.0, prompts=prompts)
    explicit = hooks.scale(["L1N3"], 0.0, positions="site", prompts=prompts)
    assert by_default[0][1].keywords["positions"][0] == explicit[0][1].keywords["positions"][0] == "rows"
    assert hooks.Intervention("scale", ["L1N3"], 0.0).positions == "site"


def test_cache_positions_empty_or_missing_hook_point(model, tiny_bert, prompts):
    with pytest.raises(TypeError, match="positions"):
        kn_lens.cache_mlp_post(model, prompts, positions=[], progress=False)
    with pytest.raises(ValueError, match=r"no hook point blocks\.0\.mlp\.hook_pre_linear"):
        kn_lens.cache_mlp_post(tiny_bert, ["Paris is the capital of [MASK]."], hook="mlp_pre_linear", progress=False)


def test_target_scores_accepts_texts_like_everything_else(model, prompts):
    from_text = kn_lens.target_scores(model, [p.text for p in prompts], [" Paris", " Rome"])
    torch.testing.assert_close(from_text, kn_lens.target_scores(model, prompts))
    one = kn_lens.target_scores(model, "The capital of France is", " Paris")
    torch.testing.assert_close(one, from_text[:1])
    with pytest.raises(ValueError, match="no target given"):
        kn_lens.target_scores(model, ["The capital of France is"])


def test_option_checks_run_before_the_attribution(model, monkeypatch):
    from kn_lens import attribution

    def never(*args, **kwargs):
        raise AssertionError("the attribution ran before the options were checked")

    monkeypatch.setattr(attribution, "attribute_many", never)
    with pytest.raises(ValueError, match="fallback"):
        kn_lens.find_knowledge_neurons(model, ["The capital of France is"], " Paris", fallback="nearest")
    with pytest.raises(ValueError, match="unknown attribution"):
        kn_lens.find_knowledge_neurons(model, ["The capital of France is"], " Paris", attribution="saliency")
    with pytest.raises(ValueError, match="relation_share"):
        kn_lens.find_knowledge_neurons_many(
            model, [(["The capital of France is"], " Paris", "capital")], relation_share=1.0
        )


def test_to_prompts_reads_every_form(model):
    fact = kn_lens.neurons.FactPrompts(["Rome is the capital of"], " Italy")
    made = inputs.to_prompts(
        model,
        [
            "The capital of France is",
            kn_lens.make_prompt(model, "Water boils at", " 100"),
            (["Paris is in"], " France"),
            fact,
        ],
        " Paris",
    )
    assert [p.target for p in made] == [" Paris", " Paris", " France", " Italy"]
    with pytest.raises(TypeError, match="cannot read prompts from int"):
        inputs.to_prompts(model, [3])


def test_to_neurons_reads_every_form():
    result = type("Result", (), {"neurons": [Neuron(2, 1)]})()
    assert inputs.to_neurons(result) == [Neuron(2, 1)]
    assert inputs.to_neurons(torch.tensor([[2, 1], [0, 4]])) == [Neuron(2, 1), Neuron(0, 4)]
    assert inputs.to_neurons((2, 1)) == [Neuron(2, 1)]
    assert inputs.to_neurons("L2N1") == [Neuron(2, 1)]
    with pytest.raises(ValueError, match="negative"):
        inputs.to_neurons([(-1, 3)])
    with pytest.raises(TypeError, match=r"\[n, 2\]"):
        inputs.to_neurons(torch.tensor([[2.0, 1.0]]))


def test_science_does_not_import_plotting():
    code = "import sys, kn_lens, kn_lens.neurons, kn_lens.evaluation; print('plotly' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ evaluation: checked before any forward pass


@contextlib.contextmanager
def _no_forward(model):
    """Fail if the model runs a forward pass inside the block (the check must come first)."""
    calls = []
    handle = model.embed.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        yield
    finally:
        handle.remove()
    assert not calls, "a forward pass ran before the bad argument was reported"


@pytest.mark.parametrize("batch_size", [-1, 0])
def test_measure_and_known_facts_refuse_bad_batch_sizes(model, prompts, batch_size):
    """batch_size=-1 returned uninitialised memory as probabilities (known facts then looked unknown); 0 gave a
    Python range error."""
    from kn_lens.datasets.pararel import Bag
    from kn_lens.evaluation import known_facts, measure

    bag = Bag("P36", "P36-France", "France", "Paris", ("The capital of France is",), " Paris")
    with _no_forward(model), pytest.raises(ValueError, match="batch_size must be a positive int"):
        measure(model, prompts, batch_size=batch_size)
    with _no_forward(model), pytest.raises(ValueError, match="batch_size must be a positive int"):
        known_facts(model, [bag], batch_size=batch_size)


def test_known_facts_refuses_what_is_not_a_bag(model):
    from kn_lens.evaluation import known_facts

    with _no_forward(model), pytest.raises(TypeError, match=r"bags must be PARAREL Bags .*got str"):
        known_facts(model, ["abc"])
    with _no_forward(model), pytest.raises(TypeError, match="bags must be a list"):
        known_facts(model, "abc")


@pytest.mark.parametrize("floor", [1.5, -0.1, math.nan, "0.1"])
def test_objective_floor_is_a_probability(model, floor):
    """objective_floor=1.5 returned an empty table and NaN kept every prompt, both without a word."""
    error = TypeError if isinstance(floor, str) else ValueError
    with _no_forward(model), pytest.raises(error, match="objective_floor"):
        kn_lens.intervention_effects(model, ["L1N3"], ["The capital of France is"], " Paris", objective_floor=floor)


def test_relation_neurons_counts_are_ints():
    """min_count=nan returned [] (no count is >= nan)."""
    from kn_lens.evaluation import relation_neurons

    results = [["L1N5", "L0N3"], ["L1N5"]]
    assert relation_neurons(results, min_count=2) == [Neuron(1, 5)]
    with pytest.raises(TypeError, match="min_count must be an int"):
        relation_neurons(results, min_count=math.nan)
    with pytest.raises(ValueError, match="min_count must be a positive int"):
        relation_neurons(results, min_count=0)
    with pytest.raises(TypeError, match="top must be an int"):
        relation_neurons(results, top=2.5)
    with pytest.raises(TypeError, match="results must be a list"):
        relation_neurons("L1N5")


def test_records_frame_of_nothing_has_the_columns_and_other_schemas_are_named():
    from kn_lens.evaluation import RECORD_FRAME_COLUMNS, records_frame, relation_table

    empty = records_frame([])
    assert list(empty.columns) == list(RECORD_FRAME_COLUMNS) and empty.empty
    assert empty["rel_change_%"].mean() != empty["rel_change_%"].mean()  # NaN, not a KeyError
    assert relation_table(empty).empty
    with pytest.raises(ValueError, match=r"record 0 lacks \['relation', 'neurons', 'effects'\]"):
        records_frame([{"uuid": "x", "score": 3}])
    with pytest.raises(TypeError, match="record 1 is a list"):
        records_frame([{"relation": "P36", "uuid": "a", "neurons": [], "effects": []}, ["a"]])
    with pytest.raises(TypeError, match="records must be a list"):
        records_frame("runs/smollm2")


def test_edit_and_erase_check_their_arguments_before_any_forward_pass(tiny_bert):
    from kn_lens.evaluation import edit_effects, erase_relation

    prompts = ["The capital of France is [MASK].", "Paris is the capital of [MASK]."]
    fact = kn_lens.neurons.FactPrompts(prompts[:1], "Paris")
    weights = tiny_bert.blocks[1].mlp.W_out.detach().clone()
    cases = [
        (TypeError, "heldout must be a list of prompts, not one str", dict(heldout=prompts[1])),
        (TypeError, "neighbours must be a list", dict(neighbours="The capital of Italy is [MASK].")),
        (ValueError, "lambda2 must be a finite number", dict(lambda2=math.nan)),
        (ValueError, "batch_size must be a positive int", dict(batch_size=0)),
        (TypeError, "seed must be an int", dict(seed=0.5)),
        (TypeError, "text must be a str", dict(text=3)),
        (ValueError, "not in the vocabulary", dict(old=10**9)),
    ]
    for error, message, kwargs in cases:
        with _no_forward(tiny_bert), pytest.raises(error, match=message):
            edit_effects(tiny_bert, fact, ["L1N3"], "Rome", **kwargs)
    with _no_forward(tiny_bert), pytest.raises(TypeError, match=r"fact must be a list of prompts .*not one str"):
        edit_effects(tiny_bert, prompts[0], ["L1N3"], "Rome")
    with _no_forward(tiny_bert), pytest.raises(ValueError, match="new is None"):
        edit_effects(tiny_bert, fact, ["L1N3"], None)
    facts = [(prompts, "Paris")]
    for error, message, kwargs in [
        (ValueError, "mode must be one of 'zero', 'unk'", dict(mode="zeros")),
        (ValueError, "batch_size must be a positive int", dict(batch_size=-1)),
        (TypeError, "seed must be an int", dict(seed="0")),
        (TypeError, "other_facts must be a list of facts, not one str", dict(other_facts="Rome")),
    ]:
        with _no_forward(tiny_bert), pytest.raises(error, match=message):
            erase_relation(tiny_bert, facts, ["L1N3"], **kwargs)
    assert torch.equal(tiny_bert.blocks[1].mlp.W_out, weights)


def test_more_public_functions_name_their_bad_argument(tiny_bert):
    """Found by the same search: each ended in an AttributeError, a torch or pandas error, or a silent result."""
    import pandas as pd

    from kn_lens import evaluation as evaluate
    from kn_lens import plotting, skill
    from kn_lens.fixtures import tiny_bert as fx

    prompts = fx.train_prompts(fx.FACTS[0])
    cases = [
        (TypeError, "k must be an int", lambda: evaluate.other_relation_facts(fx.FACTS, fx.FACTS[0], k=2.5)),
        (TypeError, "facts must be a list", lambda: evaluate.other_relation_facts("abc", fx.FACTS[0])),
        (TypeError, "seed must be an int", lambda: evaluate.random_active_neurons(
            tiny_bert, ["L1N3"], prompts, seed=0.5)),
        (TypeError, "effects must be the DataFrame", lambda: evaluate.summarize_effects([1, 2])),
        (TypeError, "frame must be the DataFrame", lambda: evaluate.relation_table([1])),
        (ValueError, "lacks columns", lambda: evaluate.relation_table(pd.DataFrame({"a": [1]}))),
        (TypeError, "interventions must map names", lambda: evaluate.intervention_effects(
            tiny_bert, ["L1N3"], prompts, "Paris", interventions=[0.0])),
        (ValueError, "a record without 'neurons'", lambda: evaluate.relation_neurons([{"uuid": "x"}])),
        (TypeError, "texts must be a list", lambda: skill.binarize("abc", [1, 0, 1], 1)),
        (TypeError, "prompt_labels must be a list", lambda: plotting.knowledge_neurons(
            scores=torch.zeros(2, 2, 3), neurons=[(0, 1)], prompt_labels="ab")),
        (TypeError, "run must be the path", lambda: kn_lens.evaluation.report.write_report(None)),
    ]  # fmt: skip
    for error, message, call in cases:
        with _no_forward(tiny_bert), pytest.raises(error, match=message):
            call()
    effects = evaluate.intervention_effects(tiny_bert, ["L1N3"], prompts, "Paris", random_seeds=())
    for bad in ("0.5", [1.5], [math.nan]):
        with pytest.raises((TypeError, ValueError), match="base_split"):
            evaluate.summarize_effects(effects, base_split=bad)
    # texts are prompts too: the edit control reads them like every other function
    made = kn_lens.make_prompts(tiny_bert, prompts)
    assert evaluate.random_active_neurons(tiny_bert, ["L1N3"], prompts) == evaluate.random_active_neurons(
        tiny_bert, ["L1N3"], made
    )
