"""Packed integrated gradients: several prompts' rows in shared fast passes give each prompt its own scores.

The reference is the same call with ``pack=False`` (one prompt per pass, itself tested against the plain path and
captum in test_attribution.py); a spy on the engines' ``_stack`` shows which prompts actually shared passes, and a
deliberately broken pack (two prompts' keys swapped, the padding mask dropped) shows the comparison can fail.
"""

from __future__ import annotations

import pytest
import torch

import kn_lens
from kn_lens import attribution as A
from kn_lens.attribution import _bridge, _fast, _hooked, _memory
from kn_lens.backends import is_bridge
from kn_lens.prompts import make_prompt
from kn_lens.scoring import logit_diff

pytestmark = pytest.mark.both_backends  # packing on the 3.9 bridge too (its own pack layout)

# different lengths (4 to 9 tokens), two of equal length, one very short
CAUSAL = [
    "The capital of France is",
    "France's capital city is",
    "Paris is a city in",
    "In Europe, the country whose capital is Paris is called",
    "Capital:",
]
CAUSAL_TARGETS = [" Paris", " Paris", " France", " France", " Buenos Aires"]  # the last one: two tokens
# equal lengths and sites (the first four) and a different one
BERT = [
    "The capital of France is [MASK].",
    "The capital of Italy is [MASK].",
    "The capital of Spain is [MASK].",
    "France has its capital in [MASK].",
    "[MASK] is the capital city of Germany.",
]
BERT_TARGETS = ["Paris", "Rome", "Madrid", "Paris", "Berlin"]


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.fixture
def spy(monkeypatch):
    """Records how many prompts each pack of the fast path held (either backend's)."""
    sizes: list[int] = []
    for module in (_hooked, _bridge):

        def stack(model, cleans, real=module._stack):
            sizes.append(len(cleans))
            return real(model, cleans)

        monkeypatch.setattr(module, "_stack", stack)
    return sizes


def _both(model, texts, targets, **kw):
    packed = A.integrated_gradients_many(model, texts, targets, progress=False, **kw)
    alone = A.integrated_gradients_many(model, texts, targets, progress=False, pack=False, **kw)
    return packed, alone


@pytest.mark.parametrize("name", ["random_gpt2", "random_llama"])
@pytest.mark.parametrize("hook", ["mlp_post", "mlp_pre"])
def test_packed_equals_one_at_a_time_causal(name, hook, request, spy):
    model = request.getfixturevalue(name)
    kw = dict(n_steps=4, method="gausslegendre", hook=hook, return_convergence_delta=True)
    (scores, deltas), (alone, alone_deltas) = _both(model, CAUSAL, CAUSAL_TARGETS, **kw)
    assert max(spy) == 6  # 4 single-token prompts + the two tokens of " Buenos Aires", all in one pack
    assert scores.shape == (5, 3, model.cfg.d_mlp) and deltas.shape == (5, 3)
    for i in range(len(CAUSAL)):
        assert _rel_err(scores[i], alone[i]) < 1e-5, CAUSAL[i]
        assert torch.allclose(deltas[i], alone_deltas[i], atol=1e-6)
    plain = A.integrated_gradients(model, CAUSAL[3], CAUSAL_TARGETS[3], fast=False, **kw)[0]
    assert _rel_err(scores[3], plain) < 1e-4  # and the plain reference agrees with the packed longest prompt


def test_packed_equals_one_at_a_time_encoder(tiny_bert, spy):
    ids = tiny_bert.tokenizer.convert_tokens_to_ids(["Paris", "Rome"])
    texts = [*BERT, "The capital of France is [MASK]."]
    targets = [*BERT_TARGETS, ids]  # a two-token target: two masks, one token longer, a site per token
    kw = dict(n_steps=3, method="riemann_trapezoid", return_convergence_delta=True)
    scores, deltas = A.integrated_gradients_many(tiny_bert, texts, targets, progress=False, **kw)
    # encoders pack prompts of equal length and site only: the four 9-token prompts with the mask at 6
    assert sorted(spy) == [1, 1, 1, 4]
    alone, alone_deltas = A.integrated_gradients_many(tiny_bert, texts, targets, progress=False, pack=False, **kw)
    for i in range(len(texts)):
        assert _rel_err(scores[i], alone[i]) < 1e-5, texts[i]
        assert torch.allclose(deltas[i], alone_deltas[i], atol=1e-6)


def test_small_budget_splits_packs_over_passes(random_llama):
    """A budget of a few rows forces many passes mixing prompts, layers and steps; nothing changes."""
    prompts = [make_prompt(random_llama, t, " Paris") for t in CAUSAL[:4]]
    cost = _fast._row_bytes(random_llama, prompts[0], 0, 12, "prob")
    passes = _fast._pack_plan(random_llama, prompts, [0, 1, 2], 5, "prob", None, _memory.CPU_BUDGET)
    small = _fast._pack_plan(random_llama, prompts, [0, 1, 2], 5, "prob", None, cost * 7)
    assert len(passes) == 1 and len(small) > 4
    units = sorted((u, s) for p in small for u, a, b in p for s in range(a, b))
    assert units == [(u, s) for u in range(12) for s in range(5)]  # every (prompt, layer) x step exactly once
    kw = dict(n_steps=5, return_convergence_delta=True, layers=[0, 2], memory_budget=cost * 7)
    (scores, deltas), (alone, alone_deltas) = _both(random_llama, CAUSAL[:4], " Paris", **kw)
    assert _rel_err(scores, alone) < 1e-5 and torch.allclose(deltas, alone_deltas, atol=1e-6)
    kw = dict(n_steps=5, layers=[0, 2], internal_batch_size=2, progress=False)
    batched = A.integrated_gradients_many(random_llama, CAUSAL[:4], " Paris", **kw)
    assert _rel_err(batched, alone) < 1e-5


def test_a_broken_pack_is_caught(random_llama, monkeypatch):
    """The comparison above can fail: swapping two prompts' keys, or dropping the padding mask, changes scores."""
    texts = [CAUSAL[0], CAUSAL[3]]  # 5 and 11 tokens: the shorter prefix is padded
    kw = dict(n_steps=2, layers=[0])
    alone = A.integrated_gradients_many(random_llama, texts, " Paris", pack=False, progress=False, **kw)
    module = _bridge if is_bridge(random_llama) else _hooked
    real = module._stack

    def swapped(model, cleans):
        pack = real(model, cleans)
        if len(cleans) > 1:
            pack.keys = [k[[1, 0, *range(2, len(k))]] for k in pack.keys]
        return pack

    def unmasked(model, cleans):
        pack = real(model, cleans)
        if is_bridge(model):  # a bridge's pack carries each block's mask among the per-prompt block arguments
            assert all("attention_mask" in block for block in pack.stacked)
            for block in pack.stacked:
                del block["attention_mask"]
        else:
            assert pack.mask is not None
            pack.mask = None
        return pack

    for broken in (swapped, unmasked):
        monkeypatch.setattr(module, "_stack", broken)
        packed = A.integrated_gradients_many(random_llama, texts, " Paris", progress=False, **kw)
        assert _rel_err(packed, alone) > 1e-3, broken.__name__


def test_callable_metric_runs_prompt_by_prompt(random_gpt2, spy):
    metric = logit_diff(random_gpt2, " Paris", " Rome")
    scores, alone = _both(random_gpt2, CAUSAL[:3], " Paris", n_steps=2, objective=metric)
    assert max(spy) == 1
    assert _rel_err(scores, alone) < 1e-6


def test_pack_false_and_fallbacks_keep_one_prompt_per_pass(random_gpt2, spy):
    A.integrated_gradients_many(random_gpt2, CAUSAL[:3], " Paris", n_steps=2, pack=False, progress=False)
    assert spy == [1, 1, 1]
    spy.clear()
    A.integrated_gradients_many(random_gpt2, CAUSAL[:3], " Paris", n_steps=2, fast=False, progress=False)
    assert spy == []  # the plain path: no fast pass at all


def test_user_hooks_use_the_plain_path(random_gpt2, spy):
    """With a hook of the user's attached, packing steps aside like the fast path does, and the hook acts."""
    plain = A.integrated_gradients_many(random_gpt2, CAUSAL[:2], " Paris", n_steps=2, fast=False, progress=False)
    random_gpt2.add_hook("blocks.0.hook_resid_pre", lambda act, hook: act * 0.5)
    try:
        with pytest.warns(UserWarning, match="hooks are attached"):
            hooked = A.integrated_gradients_many(random_gpt2, CAUSAL[:2], " Paris", n_steps=2, progress=False)
        with pytest.warns(UserWarning, match="hooks are attached"):
            expected = A.integrated_gradients(random_gpt2, CAUSAL[1], " Paris", n_steps=2)
    finally:
        random_gpt2.reset_hooks(including_permanent=True)
    assert spy == []
    assert torch.allclose(hooked[1], expected, atol=1e-7)
    assert _rel_err(hooked, plain) > 1e-3  # the user's hook changed the model


def test_find_knowledge_neurons_packs_the_paraphrases(random_llama, spy):
    kns = kn_lens.find_knowledge_neurons(random_llama, CAUSAL[:3], " Paris", n_steps=2, progress=False)
    assert spy == [3]
    alone = kn_lens.find_knowledge_neurons(random_llama, CAUSAL[:3], " Paris", n_steps=2, pack=False, progress=False)
    assert kns.neurons == alone.neurons
    assert _rel_err(kns.scores, alone.scores) < 1e-5


def test_bad_input(random_gpt2):
    with pytest.raises(TypeError, match="pack must be True or False"):
        A.integrated_gradients_many(random_gpt2, CAUSAL[:2], " Paris", pack="yes")
    with pytest.raises(TypeError, match=r"unexpected keyword argument.*'steps'"):
        A.integrated_gradients_many(random_gpt2, CAUSAL[:2], " Paris", steps=3)
    with pytest.raises(ValueError, match="unknown hook point"):
        A.integrated_gradients_many(random_gpt2, CAUSAL[:2], " Paris", hook="mlp_out")
