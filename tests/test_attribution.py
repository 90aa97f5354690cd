"""Tests for kn_lens.attribution: integrated gradients (plain and fast), grad x act, attribution patching, ablation.

Independent references: captum's ``IntegratedGradients`` around a function of the site activation, direct
``run_with_hooks`` ablations, and the completeness property of integrated gradients.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients

from kn_lens import attribution as A
from kn_lens.cache import mean_activations
from kn_lens.prompts import make_prompt
from kn_lens.scoring import objective_from_logits, target_scores

PROMPT = "The capital of France is"
BERT_PROMPT = "The capital of France is [MASK]."


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _no_hooks_left(model) -> bool:
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


# ------------------------------------------------------------------------------------------ integration rules


@pytest.mark.parametrize("method", list(A.METHODS))
def test_step_weights_integrate_constants_and_lines(method):
    alphas, weights = A.step_alphas(method, 6)
    assert alphas.shape == weights.shape == (6,)
    assert alphas.min() >= 0 and alphas.max() <= 1
    if method != "eleuther":  # the package's convention over-weights the path (6 points x 1/6 incl. both ends)
        assert float(weights.sum()) == pytest.approx(1.0)
        exact_for_lines = method in ("riemann_middle", "riemann_trapezoid", "gausslegendre")
        if exact_for_lines:
            assert float((weights * alphas).sum()) == pytest.approx(0.5)


def test_step_alphas_known_values():
    alphas, weights = A.step_alphas("riemann_left", 4)
    assert alphas.tolist() == [0.0, 0.25, 0.5, 0.75] and weights.tolist() == [0.25] * 4
    alphas, _ = A.step_alphas("riemann_right", 4)
    assert alphas.tolist() == [0.25, 0.5, 0.75, 1.0]
    alphas, weights = A.step_alphas("eleuther", 5)
    assert alphas.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0] and weights.tolist() == [0.2] * 5
    alphas, weights = A.step_alphas("riemann_trapezoid", 3)
    assert alphas.tolist() == [0.0, 0.5, 1.0] and weights.tolist() == [0.25, 0.5, 0.25]
    # Gauss-Legendre with n points integrates x^(2n-1) exactly on [0, 1]
    alphas, weights = A.step_alphas("gausslegendre", 3)
    assert float((weights * alphas**5).sum()) == pytest.approx(1 / 6, abs=1e-12)


# ------------------------------------------------------------------------- IG against an independent reference


def _captum_ig(model, prompt, layer, method, n_steps, objective, hook="mlp_post"):
    """captum IG over the site activation of one layer (an independent implementation of the same integral)."""
    name = A.hook_name(layer, hook)
    _, cache = model.run_with_cache(prompt.tokens[None], names_filter=name)
    clean = cache[name][0, prompt.site][None].detach()

    def forward(x):
        def put(act, hook):
            act = act.expand(x.shape[0], -1, -1).clone()
            act[:, prompt.site] = x
            return act

        tokens = prompt.tokens[None].expand(x.shape[0], -1)
        logits = model.run_with_hooks(tokens, fwd_hooks=[(name, put)])
        return objective_from_logits(logits, prompt, objective)

    ig = IntegratedGradients(forward)
    return ig.attribute(clean, baselines=torch.zeros_like(clean), n_steps=n_steps, method=method)[0]


@pytest.mark.parametrize("method", ["riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre"])
@pytest.mark.parametrize("fast", [False, True])
def test_ig_matches_captum(random_llama, method, fast):
    prompt = make_prompt(random_llama, PROMPT, " Paris")
    ours = A.integrated_gradients(
        random_llama, prompt, layers=[1], n_steps=8, method=method, objective="logprob", fast=fast
    )
    ref = _captum_ig(random_llama, prompt, 1, method, 8, "logprob")
    if method == "riemann_trapezoid":  # captum's trapezoid weights are 1/n (halved at the ends): they sum to (n-1)/n
        ref = ref * 8 / 7
    assert _rel_err(ours[0], ref) < 1e-4


def test_ig_matches_captum_on_mlp_pre_of_gpt2(random_gpt2):
    prompt = make_prompt(random_gpt2, PROMPT, " Paris")
    ours = A.integrated_gradients(random_gpt2, prompt, layers=[0], n_steps=6, hook="mlp_pre", objective="prob")
    ref = _captum_ig(random_gpt2, prompt, 0, "riemann_left", 6, "prob", hook="mlp_pre")
    assert _rel_err(ours[0], ref) < 1e-4


def test_eleuther_rule_is_linspace_with_weights_one_over_n(random_llama):
    """The package's sum: act * mean over linspace(0, 1, n) of the gradient, computed here by hand."""
    prompt = make_prompt(random_llama, PROMPT, " Paris")
    n = 5
    ours = A.integrated_gradients(random_llama, prompt, layers=[2], n_steps=n, method="eleuther", fast=False)
    name = A.hook_name(2, "mlp_post")
    _, cache = random_llama.run_with_cache(prompt.tokens[None], names_filter=name)
    clean = cache[name][0, prompt.site]
    total = torch.zeros_like(clean)
    for alpha in np.linspace(0, 1, n):
        x = (float(alpha) * clean).detach().requires_grad_(True)

        def put(act, hook, x=x):
            return torch.cat([act[:, : prompt.site], x[None, None], act[:, prompt.site + 1 :]], dim=1)

        logits = random_llama.run_with_hooks(prompt.tokens[None], fwd_hooks=[(name, put)])
        (grad,) = torch.autograd.grad(objective_from_logits(logits, prompt, "prob").sum(), x)
        total += grad
    assert _rel_err(ours[0], clean * total / n) < 1e-5


# ------------------------------------------------------------------------------------- completeness (delta)


def test_completeness_gauss_legendre_fixture(tiny_bert):
    scores, delta = A.integrated_gradients(
        tiny_bert,
        "France has its capital in [MASK].",
        "Paris",
        n_steps=50,
        method="gausslegendre",
        return_convergence_delta=True,
    )
    prompt = make_prompt(tiny_bert, "France has its capital in [MASK].", "Paris")
    f_clean = target_scores(tiny_bert, [prompt])[0]
    for i, layer in enumerate(range(tiny_bert.cfg.n_layers)):
        zero = [(A.hook_name(layer, "mlp_post"), lambda act, hook: _zero_site(act, prompt.site))]
        f_base = target_scores(tiny_bert, [prompt], fwd_hooks=zero)[0]
        diff = float(f_clean - f_base)
        assert abs(diff) > 1e-3
        assert float(scores[i].sum()) - diff == pytest.approx(float(delta[i]), abs=1e-5)
        assert abs(float(delta[i])) < 0.01 * abs(diff)


def _zero_site(act, site):
    act = act.clone()
    act[:, site] = 0
    return act


@pytest.mark.slow
def test_completeness_gauss_legendre_smollm2(smollm2):
    layers = [0, 10, 20, 24, 29]
    scores, delta = A.integrated_gradients(
        smollm2, PROMPT, " Paris", layers=layers, n_steps=50, method="gausslegendre", return_convergence_delta=True
    )
    prompt = make_prompt(smollm2, PROMPT, " Paris")
    f_clean = target_scores(smollm2, [prompt])[0]
    for i, layer in enumerate(layers):
        zero = [(A.hook_name(layer, "mlp_post"), lambda act, hook: _zero_site(act, prompt.site))]
        diff = float(f_clean - target_scores(smollm2, [prompt], fwd_hooks=zero)[0])
        assert float(scores[i].sum()) - diff == pytest.approx(float(delta[i]), abs=1e-4)
        assert abs(float(delta[i])) < 0.01 * abs(diff)


# ------------------------------------------------------------------------------------- fast path == plain


@pytest.mark.parametrize("hook", ["mlp_post", "mlp_pre", "mlp_pre_linear"])
@pytest.mark.parametrize("target", [" Paris", " Buenos Aires"])
def test_fast_equals_plain_llama(random_llama, hook, target):
    kw = dict(n_steps=5, method="riemann_trapezoid", hook=hook, objective="prob", return_convergence_delta=True)
    s0, d0 = A.integrated_gradients(random_llama, PROMPT, target, fast=False, **kw)
    s1, d1 = A.integrated_gradients(random_llama, PROMPT, target, fast=True, internal_batch_size=2, **kw)
    assert _rel_err(s1, s0) < 1e-4
    assert torch.allclose(d0, d1, atol=1e-5)


@pytest.mark.parametrize("objective", ["prob", "logprob", "logit"])
def test_fast_equals_plain_gpt2_layers_and_baseline(random_gpt2, objective):
    baseline = torch.randn(random_gpt2.cfg.n_layers, random_gpt2.cfg.d_mlp) * 0.1
    kw = dict(layers=[2, 0], n_steps=4, method="riemann_middle", objective=objective, baseline=baseline)
    s0 = A.integrated_gradients(random_gpt2, PROMPT, " Paris", fast=False, **kw)
    s1 = A.integrated_gradients(random_gpt2, PROMPT, " Paris", fast=True, **kw)
    assert s0.shape == (2, random_gpt2.cfg.d_mlp)
    assert _rel_err(s1, s0) < 1e-4


def test_fast_equals_plain_single_token_prompt(random_gpt2):
    """Site 0: no earlier positions to reuse."""
    s0 = A.integrated_gradients(random_gpt2, "Paris", " is", n_steps=3, fast=False)
    s1 = A.integrated_gradients(random_gpt2, "Paris", " is", n_steps=3, fast=True)
    assert _rel_err(s1, s0) < 1e-4


@pytest.mark.parametrize("bert", ["tiny_bert", "random_bert"])
def test_fast_equals_plain_encoder(request, bert):
    model = request.getfixturevalue(bert)
    kw = dict(n_steps=6, method="gausslegendre", return_convergence_delta=True)
    s0, d0 = A.integrated_gradients(model, "France has its capital in [MASK].", "Paris", fast=False, **kw)
    s1, d1 = A.integrated_gradients(model, "France has its capital in [MASK].", "Paris", fast=True, **kw)
    assert _rel_err(s1, s0) < 1e-4
    assert torch.allclose(d0, d1, atol=1e-5)


def test_fast_equals_plain_encoder_multi_token(tiny_bert):
    ids = tiny_bert.tokenizer.convert_tokens_to_ids(["Paris", "Rome"])
    kw = dict(n_steps=4, objective="logprob", hook="mlp_pre")
    s0 = A.integrated_gradients(tiny_bert, BERT_PROMPT, ids, fast=False, **kw)
    s1 = A.integrated_gradients(tiny_bert, BERT_PROMPT, ids, fast=True, **kw)
    assert _rel_err(s1, s0) < 1e-4


def test_fast_equals_plain_smollm2(smollm2):
    kw = dict(layers=[5, 28], n_steps=4)
    s0 = A.integrated_gradients(smollm2, PROMPT, " Paris", fast=False, **kw)
    s1 = A.integrated_gradients(smollm2, PROMPT, " Paris", fast=True, **kw)
    assert _rel_err(s1, s0) < 1e-4


def test_multi_token_target_differs_from_first_token(random_llama):
    both = A.integrated_gradients(random_llama, PROMPT, " Buenos Aires", n_steps=3, objective="logprob")
    first_id = make_prompt(random_llama, PROMPT, " Buenos Aires").target_ids[0]
    first = A.integrated_gradients(random_llama, PROMPT, first_id, n_steps=3, objective="logprob")
    assert both.shape == first.shape
    assert not torch.allclose(both, first)


# --------------------------------------------------------------------------------------- other attributions


def test_grad_x_act_is_one_step_ig_and_patching_is_its_negative(random_llama):
    gxa = A.grad_x_activation(random_llama, PROMPT, " Paris")
    ig1 = A.integrated_gradients(random_llama, PROMPT, " Paris", n_steps=1, method="riemann_right", fast=False)
    assert _rel_err(gxa, ig1) < 1e-5
    ap = A.attribution_patching(random_llama, PROMPT, " Paris")
    assert torch.allclose(ap, -gxa)


def test_attribution_patching_mean(random_gpt2):
    means = mean_activations(random_gpt2, ["The capital of Spain is", "The capital of Italy is"], progress=False)
    assert sorted(means) == list(range(random_gpt2.cfg.n_layers))
    prompt = make_prompt(random_gpt2, PROMPT, " Paris")
    ap = A.attribution_patching(random_gpt2, prompt, layers=[1], mode="mean", mean_cache=means)
    name = A.hook_name(1, "mlp_post")
    _, cache = random_gpt2.run_with_cache(prompt.tokens[None], names_filter=name)
    act = cache[name][0, prompt.site]
    gxa = A.grad_x_activation(random_gpt2, prompt, layers=[1])  # = act * grad
    grad = gxa[0] / act
    ok = act.abs() > 1e-3
    assert torch.allclose(ap[0][ok], ((means[1] - act) * grad)[ok], atol=1e-6)


@pytest.mark.parametrize("model_name", ["random_llama", "tiny_bert"])
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablation_effects_match_direct_runs(request, model_name, mode):
    model = request.getfixturevalue(model_name)
    text, target = (PROMPT, " Paris") if model_name == "random_llama" else (BERT_PROMPT, "Paris")
    prompt = make_prompt(model, text, target)
    means = (
        {k: v * 0.5 for k, v in mean_activations(model, [prompt], progress=False).items()} if mode == "mean" else None
    )
    plain = A.ablation_effects(
        model, prompt, layers=[1], mode=mode, mean_cache=means, fast=False, internal_batch_size=50
    )
    fast = A.ablation_effects(model, prompt, layers=[1], mode=mode, mean_cache=means, fast=True, internal_batch_size=50)
    # effects are small differences of probabilities near 1: float32 rounding of the two objectives (different but
    # equivalent operation orders) leaves them up to a few 1e-6 apart
    assert _rel_err(fast, plain) < 1e-4 or torch.allclose(fast, plain, atol=5e-6, rtol=0)
    f_clean = target_scores(model, [prompt])[0]
    for index in [0, 7, int(plain[0].abs().argmax())]:
        value = 0.0 if means is None else float(means[1][index])

        def set_one(act, hook, index=index, value=value):
            act = act.clone()
            act[:, prompt.site, index] = value
            return act

        direct = target_scores(model, [prompt], fwd_hooks=[(A.hook_name(1, "mlp_post"), set_one)])[0] - f_clean
        assert float(plain[0, index]) == pytest.approx(float(direct), abs=1e-6)


def test_attribute_dispatcher_and_many(random_gpt2):
    texts = [PROMPT, "France's capital city is"]
    for attribution in A.ATTRIBUTIONS:
        kw = {"n_steps": 2} if attribution == "ig" else {}
        if attribution == "ablation":
            kw = {"layers": [0]}
        one = A.attribute(random_gpt2, PROMPT, " Paris", attribution=attribution, **kw)
        many = A.attribute_many(random_gpt2, texts, " Paris", attribution=attribution, progress=False, **kw)
        assert many.shape == (2, *one.shape)
        assert torch.allclose(many[0], one, atol=1e-6)
    with pytest.raises(ValueError, match="unknown attribution"):
        A.attribute(random_gpt2, PROMPT, " Paris", attribution="shap")


# ------------------------------------------------------------------------------------------------ contracts


def test_output_contract(random_llama):
    scores, delta = A.integrated_gradients(
        random_llama, PROMPT, " Paris", layers=[2, 0], n_steps=2, return_convergence_delta=True
    )
    assert scores.shape == (2, random_llama.cfg.d_mlp) and delta.shape == (2,)
    assert scores.dtype == torch.float32 and scores.device.type == "cpu"
    both = A.integrated_gradients(random_llama, PROMPT, " Paris", n_steps=2)
    assert torch.allclose(scores, both[[0, 2]], atol=1e-7)  # rows in ascending layer order
    many, deltas = A.integrated_gradients_many(
        random_llama,
        [PROMPT, "France's capital city is"],
        " Paris",
        n_steps=2,
        progress=False,
        return_convergence_delta=True,
    )
    assert many.shape == (2, random_llama.cfg.n_layers, random_llama.cfg.d_mlp) and deltas.shape == (2, 3)
    per_prompt = A.integrated_gradients_many(
        random_llama, [PROMPT, "France's capital city is"], [" Paris", " Rome"], n_steps=2, progress=False
    )
    assert torch.allclose(per_prompt[0], many[0], atol=1e-7)


def test_works_under_inference_mode(random_gpt2):
    with torch.inference_mode():
        scores = A.integrated_gradients(random_gpt2, PROMPT, " Paris", n_steps=2)
        gxa = A.grad_x_activation(random_gpt2, PROMPT, " Paris")
    assert torch.isfinite(scores).all() and torch.isfinite(gxa).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"layers": [3]}, ValueError, "out of range"),
        ({"n_steps": 0}, ValueError, "n_steps must be >= 1"),
        ({"n_steps": 2.0}, TypeError, "n_steps must be an int"),
        ({"method": "simpson"}, ValueError, "unknown method"),
        ({"method": "riemann_trapezoid", "n_steps": 1}, ValueError, "n_steps >= 2"),
        ({"objective": "loss"}, ValueError, "unknown objective"),
        ({"hook": "resid_post"}, ValueError, "unknown hook point"),
        ({"baseline": torch.zeros(5)}, ValueError, "baseline has shape"),
        ({"baseline": "mean"}, ValueError, "unknown baseline"),
        ({"internal_batch_size": 0}, ValueError, "internal_batch_size"),
    ],
)
def test_bad_inputs(random_gpt2, kwargs, error, match):
    with pytest.raises(error, match=match):
        A.integrated_gradients(random_gpt2, PROMPT, " Paris", **kwargs)


def test_bad_targets_and_prompts(random_gpt2, tiny_bert):
    with pytest.raises(ValueError, match="not in the model's vocabulary"):
        A.integrated_gradients(tiny_bert, BERT_PROMPT, "Zzyzxqq")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        A.integrated_gradients(random_gpt2, PROMPT, 10**7)
    with pytest.raises(ValueError, match="no target"):
        A.integrated_gradients(random_gpt2, PROMPT)
    with pytest.raises(TypeError, match="prompt must be"):
        A.integrated_gradients(random_gpt2, 42, " Paris")
    with pytest.raises(ValueError, match="mlp_pre_linear exists only"):
        A.grad_x_activation(random_gpt2, PROMPT, " Paris", hook="mlp_pre_linear")
    with pytest.raises(ValueError, match="needs mean_cache"):
        A.attribution_patching(random_gpt2, PROMPT, " Paris", mode="mean")
    with pytest.raises(ValueError, match="unknown ablation mode"):
        A.ablation_effects(random_gpt2, PROMPT, " Paris", mode="noise")


@pytest.mark.parametrize("fast", [False, True])
def test_hooks_removed_after_exception(random_gpt2, fast):
    calls = {"n": 0}

    def boom(act, hook):
        calls["n"] += 1
        if calls["n"] > 1:  # let the first (clean) pass through, fail inside the computation
            raise RuntimeError("boom")
        return act

    random_gpt2.add_hook("blocks.0.hook_resid_pre" if not fast else "hook_embed", boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            A.integrated_gradients(random_gpt2, PROMPT, " Paris", n_steps=2, fast=fast)
            A.integrated_gradients(random_gpt2, PROMPT, " Paris", n_steps=2, fast=fast)  # fast: one embed per call
    finally:
        random_gpt2.reset_hooks(including_permanent=True)
    assert _no_hooks_left(random_gpt2)
    # and the model still works
    assert torch.isfinite(A.grad_x_activation(random_gpt2, PROMPT, " Paris")).all()


def test_fast_memory_plan_splits_groups_and_steps(random_llama, monkeypatch):
    """A tiny memory budget forces passes that split layers and steps; the scores must not change."""
    from kn_lens import _ig_fast

    kw = dict(n_steps=5, method="gausslegendre", return_convergence_delta=True)
    s0, d0 = A.integrated_gradients(random_llama, PROMPT, " Buenos Aires", fast=False, **kw)
    prompt = make_prompt(random_llama, PROMPT, " Buenos Aires")
    clean = _ig_fast._clean_pass(random_llama, prompt, [0, 1, 2], "prob")
    cost = _ig_fast._bytes_per_step(random_llama, clean, 0, len(prompt))
    plan = _ig_fast._plan([cost, cost * 0.6, cost * 0.2], 5, cost * 3.5)
    assert len(plan) > 2 and [u for p in plan for u in p if u[0] == 0] != [(0, 0, 5)]  # group 0 split
    assert sorted((g, s) for p in plan for g, a, b in p for s in range(a, b)) == [
        (g, s) for g in range(3) for s in range(5)
    ]
    monkeypatch.setattr(_ig_fast, "MEMORY_BUDGET", cost * 2.5)
    s1, d1 = A.integrated_gradients(random_llama, prompt, fast=True, **kw)
    assert _rel_err(s1, s0) < 1e-4
    assert torch.allclose(d0, d1, atol=1e-5)
