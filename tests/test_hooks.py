"""Hook factories: each intervention checked against a hand-made hook that edits the activation directly."""

from __future__ import annotations

import math

import pytest
import torch
from _checks import no_hooks_left

import kn_lens
from kn_lens import hooks
from kn_lens._typing import Neuron
from kn_lens.backends import get_act_name

TEXTS = ["The capital of France is", "The capital city of Italy is", "Water boils at"]


@pytest.fixture(scope="module")
def model(random_llama):
    return random_llama


@pytest.fixture(scope="module")
def tokens(model):
    prompt = kn_lens.make_prompt(model, "The capital of France is", " Paris")
    return prompt.tokens[None].repeat(2, 1)


def _manual(model, tokens, edits):
    """Logits with a hand-written hook per layer: edits = {layer: fn(act) -> act}."""
    fwd = [(get_act_name("mlp_post", layer), lambda act, hook, f=f: f(act.clone())) for layer, f in edits.items()]
    return model.run_with_hooks(tokens, fwd_hooks=fwd)


def test_scale_matches_manual_edit(model, tokens):
    neurons = [Neuron(0, 3), Neuron(2, 5), Neuron(2, 60)]

    def edit0(act):
        act[..., 3] *= 0.5
        return act

    def edit2(act):
        act[..., [5, 60]] *= 0.5
        return act

    expected = _manual(model, tokens, {0: edit0, 2: edit2})
    got = model.run_with_hooks(tokens, fwd_hooks=hooks.scale(neurons, 0.5, positions="all"))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(got, model(tokens))  # the intervention does something
    assert no_hooks_left(model)


def test_one_hook_per_layer_with_tl_names():
    built = hooks.scale(["L2N1", "L0N4", "L2N7"], 0.0, positions="all")
    assert [name for name, _ in built] == ["blocks.0.mlp.hook_post", "blocks.2.mlp.hook_post"]
    assert built[1][1].keywords["indices"] == (1, 7)  # inspectable partial


def test_set_per_neuron_values_and_positions(model, tokens):
    def edit(act):
        act[:, -1, 3] = 1.5
        act[:, -1, 9] = -2.0
        return act

    expected = _manual(model, tokens, {1: edit})
    got = model.run_with_hooks(tokens, fwd_hooks=hooks.set(["L1N3", "L1N9"], [1.5, -2.0], positions="last"))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    explicit = model.run_with_hooks(tokens, fwd_hooks=hooks.set(["L1N3", "L1N9"], [1.5, -2.0], positions=[-1]))
    torch.testing.assert_close(explicit, expected, rtol=0, atol=1e-6)


def test_site_positions_per_row(model):
    prompts = kn_lens.make_prompts(model, ["The capital of France is", "Rome is a city in"], [" Paris", " Italy"])
    assert len(prompts[0]) == len(prompts[1])
    tokens = torch.stack([p.tokens for p in prompts])
    sites = [p.site for p in prompts]

    def edit(act):
        for row, site in enumerate(sites):
            act[row, site, 7] = 0.0
        return act

    expected = _manual(model, tokens, {2: edit})
    got = model.run_with_hooks(tokens, fwd_hooks=hooks.ablate(["L2N7"], positions="site", prompts=prompts))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    per_row = model.run_with_hooks(tokens, fwd_hooks=hooks.ablate(["L2N7"], positions=torch.tensor(sites)))
    torch.testing.assert_close(per_row, expected, rtol=0, atol=1e-6)


def test_site_needs_prompts_and_matching_batch(model, tokens):
    with pytest.raises(ValueError, match="needs the prompts"):
        hooks.scale(["L0N1"], 0.0, positions="site")
    prompts = kn_lens.make_prompts(model, ["The capital of France is"], " Paris")
    fwd = hooks.scale(["L0N1"], 0.0, positions="site", prompts=prompts)
    with pytest.raises(ValueError, match="built for 1 rows"):
        model.run_with_hooks(tokens, fwd_hooks=fwd)  # 2 rows
    assert no_hooks_left(model)


def test_mean_ablation_from_means_and_cache(model, tokens):
    reference = kn_lens.make_prompts(model, TEXTS)
    means = kn_lens.cache.mean_activations(model, reference, layers=[1], positions="all")
    # independent mean: cache each prompt, average over all positions
    acts = [model.run_with_cache(p.tokens[None])[1]["blocks.1.mlp.hook_post"][0] for p in reference]
    expected_mean = torch.cat(acts).mean(0)
    torch.testing.assert_close(means[1], expected_mean, rtol=1e-5, atol=1e-6)

    def edit(act):
        act[..., 11] = expected_mean[11]
        return act

    expected = _manual(model, tokens, {1: edit})
    got = model.run_with_hooks(tokens, fwd_hooks=hooks.ablate(["L1N11"], "mean", mean_cache=means, positions="all"))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    _, cache = model.run_with_cache(torch.stack([p.tokens for p in reference[:1]]))
    from_cache = model.run_with_hooks(
        tokens, fwd_hooks=hooks.ablate(["L1N11"], "mean", mean_cache=cache, positions="all")
    )
    assert from_cache.shape == got.shape
    with pytest.raises(ValueError, match="mean_cache="):
        hooks.ablate(["L1N11"], "mean", positions="all")
    with pytest.raises(ValueError, match="no means for layer 2"):
        hooks.ablate(["L2N11"], "mean", mean_cache=means, positions="all")


def test_site_mean_activations(model):
    reference = kn_lens.make_prompts(model, TEXTS)
    means = kn_lens.cache.mean_activations(model, reference, layers=2)
    acts = [model.run_with_cache(p.tokens[None])[1]["blocks.2.mlp.hook_post"][0, p.site] for p in reference]
    torch.testing.assert_close(means[2], torch.stack(acts).mean(0), rtol=1e-5, atol=1e-6)


def test_patch_restores_clean_run(model):
    clean = kn_lens.make_prompt(model, "The capital of France is").tokens[None]
    corrupt = kn_lens.make_prompt(model, "The capital of Spain is").tokens[None]
    assert clean.shape == corrupt.shape
    d_mlp = model.cfg.d_mlp
    _, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("mlp.hook_post"))
    everything = [Neuron(layer, i) for layer in range(model.cfg.n_layers) for i in range(d_mlp)]
    patched = model.run_with_hooks(corrupt, fwd_hooks=hooks.patch(everything, cache, positions="all"))
    # patching every neuron at every layer only leaves the residual path from the corrupted embedding
    manual = _manual(
        model, corrupt, {layer: (lambda act, L=layer: cache[f"blocks.{L}.mlp.hook_post"].clone()) for layer in range(3)}
    )
    torch.testing.assert_close(patched, manual, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"has no blocks\.1"):
        hooks.patch(["L1N0"], {"blocks.0.mlp.hook_post": cache["blocks.0.mlp.hook_post"]}, positions="all")


def test_hooks_compose_in_order(model, tokens):
    neurons = ["L1N2"]
    both = hooks.set(neurons, 3.0, positions="all") + hooks.scale(neurons, 2.0, positions="all")  # set then scale -> 6

    def edit(act):
        act[..., 2] = 6.0
        return act

    torch.testing.assert_close(
        model.run_with_hooks(tokens, fwd_hooks=both), _manual(model, tokens, {1: edit}), rtol=0, atol=1e-6
    )
    seen = []

    def spy(act, hook):
        seen.append(act[..., 2].clone())

    model.run_with_hooks(tokens, fwd_hooks=[*both, ("blocks.1.mlp.hook_post", spy)])
    assert torch.all(seen[0] == 6.0)  # a user's hook after ours sees our change
    with model.hooks(fwd_hooks=both):
        inside = model(tokens)
    torch.testing.assert_close(inside, model.run_with_hooks(tokens, fwd_hooks=both))
    assert no_hooks_left(model)


def test_intervention_object_builds_per_batch(model):
    prompts = kn_lens.make_prompts(model, [*TEXTS, "Paris is in"], [" Paris", " Rome", " the", " France"])
    intervention = hooks.Intervention("scale", ["L2N7", "L0N1"], 0.0, positions="site")
    assert intervention.neurons == (Neuron(2, 7), Neuron(0, 1))
    got = kn_lens.target_scores(model, prompts, fwd_hooks=intervention, objective="logit")
    expected = torch.stack(
        [
            kn_lens.target_scores(
                model,
                [p],
                objective="logit",
                fwd_hooks=hooks.scale(["L2N7", "L0N1"], 0.0, positions="site", prompts=[p]),
            )[0]
            for p in prompts
        ]
    )
    torch.testing.assert_close(got, expected)
    combined = hooks.compose(intervention, hooks.set(["L1N1"], 0.0, positions="all"))
    assert len(combined(prompts[:1])) == 3
    assert no_hooks_left(model)


def test_grad_flows_through_hooks(model, tokens):
    """Interventions are out-of-place, so they are safe inside attribution (autograd) code."""
    leaf = {}

    def capture(act, hook):
        act.retain_grad()
        leaf["act"] = act

    fwd = [("blocks.1.mlp.hook_post", capture), *hooks.scale(["L1N4"], 3.0, positions="all")]
    model.run_with_hooks(tokens, fwd_hooks=fwd)[0, -1, 5].backward()
    grad = leaf["act"].grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("factor", [math.nan, math.inf, -math.inf])
def test_bad_factor(factor):
    with pytest.raises(ValueError, match="finite"):
        hooks.scale(["L0N1"], factor, positions="all")


def test_bad_inputs(model, tokens):
    with pytest.raises(ValueError, match="out of range"):
        hooks.scale(["L0N9999"], 0.0, model=model, positions="all")
    with pytest.raises(ValueError, match="out of range"):
        hooks.scale(["L7N1"], 0.0, model=model, positions="all")
    with pytest.raises(ValueError, match="out of range"):  # no model: caught when the hook runs
        model.run_with_hooks(tokens, fwd_hooks=hooks.scale(["L0N9999"], 0.0, positions="all"))
    assert no_hooks_left(model)
    with pytest.raises(ValueError, match="no neurons"):
        hooks.scale([], 0.0, positions="all")
    with pytest.raises(TypeError):
        hooks.scale(["L0N1"], "2", positions="all")
    with pytest.raises(ValueError, match="unknown positions"):
        hooks.scale(["L0N1"], 0.0, positions="mask")
    with pytest.raises(ValueError, match="2 values for 1 neurons"):
        hooks.set(["L0N1"], [1.0, 2.0], positions="all")  # one neuron, two values
    with pytest.raises(ValueError, match="outside"):
        model.run_with_hooks(tokens, fwd_hooks=hooks.scale(["L0N1"], 0.0, positions=40))
    with pytest.raises(ValueError, match="unknown ablation mode"):
        hooks.ablate(["L0N1"], "noise", positions="all")
    assert no_hooks_left(model)


def test_works_on_gpt2_style_model(random_gpt2):
    tokens = kn_lens.make_prompt(random_gpt2, "The capital of France is").tokens[None]
    base = random_gpt2(tokens)
    same = random_gpt2.run_with_hooks(tokens, fwd_hooks=hooks.scale(["L0N1", "L2N3"], 1.0, positions="all"))
    torch.testing.assert_close(same, base)


# ----------------------------------------------------------------------------------------- HookedEncoder (BERT)


@pytest.fixture(scope="module")
def mixed_site_batch(tiny_bert):
    """Encoder prompts of one length whose [MASK] sits at different positions: one batch, several sites."""
    from kn_lens.fixtures import tiny_bert as fx

    prompts = [kn_lens.make_prompt(tiny_bert, p, f.answer) for f in fx.FACTS[:12] for p in fx.train_prompts(f)]
    for indices in kn_lens.prompts.group_by_length(prompts).values():
        batch = [prompts[i] for i in indices]
        if len({p.site for p in batch}) >= 2:
            by_site = {p.site: p for p in batch}  # one prompt per site, the first site twice
            chosen = list(by_site.values())
            return [*chosen, chosen[0]]
    raise AssertionError("the fixture has no equal-length prompts with different mask positions")


def test_every_row_uses_its_own_site(tiny_bert, mixed_site_batch):
    """A bug that gave every row the first row's site passed every test while all rows of a batch shared one."""
    batch = mixed_site_batch
    sites = [p.site for p in batch]
    assert len(set(sites)) >= 2
    tokens = torch.stack([p.tokens for p in batch])

    def edit(act):
        for row, site in enumerate(sites):
            act[row, site, 7] = 0.0
        return act

    expected = _manual(tiny_bert, tokens, {1: edit})
    got = tiny_bert.run_with_hooks(tokens, fwd_hooks=hooks.scale(["L1N7"], 0.0, prompts=batch))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)

    neurons = ["L1N7", "L0N3", "L1N100", "L1N253", "L1N292"]
    push = hooks.Intervention("set", neurons, 5.0)  # a strong push at each row's site
    together = kn_lens.target_scores(tiny_bert, batch, fwd_hooks=push, objective="logit")
    alone = torch.cat([kn_lens.target_scores(tiny_bert, [p], fwd_hooks=push, objective="logit") for p in batch])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)
    clean = kn_lens.target_scores(tiny_bert, batch, objective="logit")
    assert (together - clean).abs().min() > 0.1  # the push moves every row's answer

    cached = kn_lens.cache_mlp_post(tiny_bert, batch, layers=[1], positions="site", progress=False)
    one_by_one = torch.cat([kn_lens.cache_mlp_post(tiny_bert, [p], layers=[1], progress=False)[1] for p in batch])
    torch.testing.assert_close(cached[1], one_by_one, rtol=1e-5, atol=1e-6)
    assert cached.position.tolist() == sites

    direct = kn_lens.direct_effect(tiny_bert, "L1N253", batch)
    direct_alone = torch.cat([kn_lens.direct_effect(tiny_bert, "L1N253", [p]) for p in batch])
    torch.testing.assert_close(direct, direct_alone, rtol=1e-3, atol=1e-5)
    assert no_hooks_left(tiny_bert)


def test_factories_on_an_encoder_match_manual_edits(tiny_bert, mixed_site_batch):
    tokens = torch.stack([p.tokens for p in mixed_site_batch])
    means = kn_lens.cache.mean_activations(tiny_bert, mixed_site_batch, layers=[0], positions="all", progress=False)
    _, clean = tiny_bert.run_with_cache(tokens.roll(1, 0), names_filter=lambda n: n.endswith("mlp.hook_post"))

    def scale_edit(act):
        act[..., [3, 9]] *= 2.0
        return act

    def set_edit(act):
        act[:, -2, 5] = 1.5
        return act

    def mean_edit(act):
        act[..., 11] = means[0][11]
        return act

    def patch_edit(act):
        act[..., :32] = clean["blocks.0.mlp.hook_post"][..., :32]
        return act

    cases = [
        (hooks.scale(["L1N3", "L1N9"], 2.0, positions="all"), {1: scale_edit}),
        (hooks.set(["L0N5"], 1.5, positions=-2, model=tiny_bert), {0: set_edit}),
        (hooks.ablate(["L0N11"], "mean", mean_cache=means, positions="all", model=tiny_bert), {0: mean_edit}),
        (hooks.patch([(0, i) for i in range(32)], clean, positions="all"), {0: patch_edit}),
    ]
    base = tiny_bert(tokens)
    for fwd, edits in cases:
        expected = _manual(tiny_bert, tokens, edits)
        got = tiny_bert.run_with_hooks(tokens, fwd_hooks=fwd)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        assert not torch.allclose(got, base, atol=1e-4)
    assert no_hooks_left(tiny_bert)


def test_interventions_on_an_encoder_match_direct_forward_passes(tiny_bert):
    from kn_lens.fixtures import tiny_bert as fx

    fact = fx.FACTS[0]
    prompts = kn_lens.make_prompts(tiny_bert, fx.train_prompts(fact), fact.answer)
    neurons = [*kn_lens.find_knowledge_neurons(tiny_bert, prompts).neurons, Neuron(0, 8)]
    table = kn_lens.suppress(tiny_bert, neurons, prompts)
    for row, prompt in zip(table.itertuples(), prompts, strict=True):
        edits = {}
        for layer in (0, 1):
            idx = [n.index for n in neurons if n.layer == layer]

            def edit(act, idx=idx, site=prompt.site):
                act[:, site, idx] = 0.0
                return act

            edits[layer] = edit
        logits = _manual(tiny_bert, prompt.tokens[None], edits)
        expected = logits[0, prompt.site].softmax(-1)[prompt.target_ids[0]]
        assert row.after == pytest.approx(float(expected), rel=1e-5)
        assert row.after != pytest.approx(row.before, rel=1e-3)
    assert no_hooks_left(tiny_bert)
