"""kn_lens.lens: value-vector decoding and direct effects, checked against hand computations and ablations."""

from __future__ import annotations

import pytest
import torch

import kn_lens
from kn_lens.backends import get_act_name
from kn_lens.lens import Decoded, decode, decode_many, direct_effect, direction_logits


@pytest.fixture(scope="module")
def bert(tiny_bert):
    """The trained tiny BERT: non-trivial LayerNorm weights and biases, a real word-level tokenizer."""
    return tiny_bert


def _by_hand_unembed(model, layer, index, *, centre: bool, weight, eps):
    v = model.W_out[layer, index].detach().double()
    if centre:
        v = v - v.mean()
    v = v / torch.sqrt((v**2).mean() + eps)
    if weight is not None:
        v = v * weight.detach().double()
    return v @ model.W_U.detach().double()


def _assert_decoded(d: Decoded, expected: torch.Tensor, k: int):
    top = expected.topk(k)
    bottom = (-expected).topk(k)
    assert d.top_ids == top.indices.tolist()
    assert d.bottom_ids == bottom.indices.tolist()
    torch.testing.assert_close(torch.tensor(d.top_scores, dtype=torch.double), top.values, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(d.bottom_scores, dtype=torch.double), -bottom.values, atol=1e-4, rtol=1e-5)
    assert d.top_scores == sorted(d.top_scores, reverse=True)
    assert d.bottom_scores == sorted(d.bottom_scores)


def test_decode_smollm2_equals_rmsnorm_by_hand(smollm2):
    # SmolLM2: RMSNorm (no centring) with a learned weight, then W_U.
    expected = _by_hand_unembed(smollm2, 24, 1005, centre=False, weight=smollm2.ln_final.w, eps=0.0)
    d = decode(smollm2, "L24N1005", k=7)
    _assert_decoded(d, expected, 7)
    assert d.top_tokens[0] == smollm2.tokenizer.decode([d.top_ids[0]])
    # Forgetting the norm weight gives a different ranking: the test above can fail.
    naive = smollm2.W_out[24, 1005].detach().double() @ smollm2.W_U.detach().double()
    assert naive.topk(7).indices.tolist() != d.top_ids


def test_decode_layernorm_model_centres_and_folds_weight(random_gpt2):
    with torch.no_grad():
        saved = random_gpt2.ln_final.w.clone()
        random_gpt2.ln_final.w.copy_(1 + 0.5 * torch.randn_like(saved))
    try:
        expected = _by_hand_unembed(random_gpt2, 2, 5, centre=True, weight=random_gpt2.ln_final.w, eps=0.0)
        _assert_decoded(decode(random_gpt2, (2, 5), k=5), expected, 5)
    finally:
        with torch.no_grad():
            random_gpt2.ln_final.w.copy_(saved)


@pytest.mark.hooked_only("reads HookedEncoder's own parameters; the bridge's lens is checked by hand in test_bridge.py")
def test_decode_bert_both_lenses_by_hand(bert):
    L, n = bert.cfg.n_layers - 1, 3
    head = bert.mlm_head
    # "unembed": centred, unit RMS, times the MLM head's LayerNorm weight, then W_U.
    expected = _by_hand_unembed(bert, L, n, centre=True, weight=head.ln.w, eps=0.0)
    _assert_decoded(decode(bert, (L, n), k=5, through="unembed"), expected, 5)
    # "mlm_head": last block's LayerNorm (with bias), dense, GELU, LayerNorm (with bias), W_U (no b_U).
    ln2 = bert.blocks[-1].ln2
    v = bert.W_out[L, n].detach().double()
    x = v / torch.sqrt((v**2).mean())
    x = x - x.mean()
    x = x / torch.sqrt((x**2).mean() + bert.cfg.eps) * ln2.w.double() + ln2.b.double()
    h = torch.nn.functional.gelu(x @ head.W.double() + head.b.double())
    h = h - h.mean()
    h = h / torch.sqrt((h**2).mean() + bert.cfg.eps) * head.ln.w.double() + head.ln.b.double()
    expected_head = (h @ bert.W_U.double()).detach()
    _assert_decoded(decode(bert, (L, n), k=5, through="mlm_head"), expected_head, 5)


def test_direction_logits_scale_free(smollm2):
    v = smollm2.W_out[29, [1, 2]]
    torch.testing.assert_close(direction_logits(smollm2, v), direction_logits(smollm2, 3.0 * v), atol=1e-5, rtol=1e-5)


def test_decode_many_frame(smollm2):
    df = decode_many(smollm2, ["L24N1005", (29, 100)], k=3)
    assert list(df.columns) == ["neuron", "layer", "index", "through", "side", "rank", "token", "token_id", "score"]
    assert len(df) == 2 * 2 * 3
    assert set(df.neuron) == {"L24N1005", "L29N100"}
    one = decode(smollm2, "L29N100", k=3)
    rows = df[(df.neuron == "L29N100") & (df.side == "top")].sort_values("rank")
    assert rows.token_id.tolist() == one.top_ids
    assert "L29N100" in str(one)


def test_decode_bad_inputs(smollm2, bert):
    with pytest.raises(ValueError, match="out of range"):
        decode(smollm2, (24, 1536))
    with pytest.raises(ValueError, match="out of range"):
        decode(smollm2, (30, 0))
    with pytest.raises(ValueError, match="mlm_head"):
        decode(smollm2, (24, 1), through="mlm_head")
    with pytest.raises(ValueError, match="unknown through"):
        decode(bert, (0, 1), through="head")
    with pytest.raises(ValueError, match="k must be"):
        decode(smollm2, (24, 1), k=0)
    with pytest.raises(ValueError, match="no neurons"):
        decode_many(smollm2, [])


def _frozen_scale_ablation(model, prompt, layer, index, scale_hooks):
    """Logit change of the target when only ``index`` is zeroed at ``layer``, all ``scale_hooks`` frozen."""
    clean_scales = {}

    def save(x, hook):
        clean_scales[hook.name] = x.clone()

    def ablate(x, hook):
        x[..., index] = 0.0
        return x

    def freeze(x, hook):
        return clean_scales[hook.name]

    tokens = prompt.tokens[None]
    clean = model.run_with_hooks(tokens, fwd_hooks=[(name, save) for name in scale_hooks])
    hooks = [(get_act_name("mlp_post", layer), ablate)] + [(name, freeze) for name in scale_hooks]
    ablated = model.run_with_hooks(tokens, fwd_hooks=hooks)
    diff = clean - ablated
    return sum(diff[0, p, t].item() for p, t in zip(prompt.positions, prompt.target_ids, strict=True))


@torch.inference_mode()
def test_direct_effect_matches_last_layer_ablation_smollm2(smollm2):
    prompts = kn_lens.make_prompts(
        smollm2, ["The capital of France is", "The capital of Italy is"], [" Paris", " Rome"]
    )
    L = smollm2.cfg.n_layers - 1
    _, cache = smollm2.run_with_cache(prompts[0].tokens[None], names_filter=get_act_name("mlp_post", L))
    acts = cache[get_act_name("mlp_post", L)][0, prompts[0].site]
    neurons = acts.abs().topk(3).indices.tolist()  # neurons that matter here: effects far from 0
    for n in neurons:
        de = direct_effect(smollm2, (L, n), prompts)
        for i, p in enumerate(prompts):
            expected = _frozen_scale_ablation(smollm2, p, L, n, ["ln_final.hook_scale"])
            assert abs(de[i].item() - expected) < 1e-4, (n, i, de[i].item(), expected)
    assert de.abs().max() > 0.01


@torch.inference_mode()
def test_direct_effect_layernorm_multitoken(random_gpt2):
    p = kn_lens.make_prompt(random_gpt2, "The capital of France is", " Paris Hilton")
    assert len(p.target_ids) > 1
    L = random_gpt2.cfg.n_layers - 1
    for n in (0, 7, 33):
        de = direct_effect(random_gpt2, (L, n), p)
        expected = _frozen_scale_ablation(random_gpt2, p, L, n, ["ln_final.hook_scale"])
        assert abs(de.item() - expected) < 1e-4


@torch.inference_mode()
def test_direct_effect_bert_last_layer(bert):
    text = "Paris is the capital of [MASK] ."
    vocab = bert.tokenizer.get_vocab()
    target = next(w for w in ("France", "Italy", "the") if w in vocab)
    p = kn_lens.make_prompt(bert, text, target)
    L = bert.cfg.n_layers - 1
    for n in (0, 5, 17):
        de = direct_effect(bert, (L, n), [p])
        expected = _frozen_scale_ablation(bert, p, L, n, [f"blocks.{L}.ln2.hook_scale"])
        assert abs(de.item() - expected) < 1e-4


def test_direct_effect_bad_inputs(smollm2):
    with pytest.raises(ValueError, match="target"):
        direct_effect(smollm2, (29, 1), "The capital of France is")
    with pytest.raises(ValueError, match="out of range"):
        direct_effect(smollm2, (29, 5000), "The capital of France is", " Paris")


def test_default_lens_per_model_kind(smollm2, bert):
    assert decode(smollm2, (29, 1), k=1).through == "unembed"
    assert decode(bert, (bert.cfg.n_layers - 1, 1), k=1).through == "mlm_head"
    df = decode_many(bert, [(0, 1)], k=1, through="unembed")
    assert set(df.through) == {"unembed"}


@torch.inference_mode()
def test_causal_lens_is_proportional_to_direct_effect(smollm2):
    # decode's scores and the neuron's direct effect differ only by the factor a * rms(v) / scale, for any token
    text, L, n = "The capital of France is", 29, 100
    targets = [" Paris", " the", " a", " located"]
    scores = decode(smollm2, (L, n), k=1).scores
    effects = torch.cat([direct_effect(smollm2, (L, n), text, t) for t in targets])
    ids = [kn_lens.make_prompt(smollm2, text, t).target_ids[0] for t in targets]
    ratios = effects / scores[ids]
    torch.testing.assert_close(ratios, ratios[:1].expand(len(targets)), rtol=1e-3, atol=1e-7)
    assert ratios.abs().min() > 0


@pytest.mark.hooked_only("freezes LayerNorm scales at hook_scale, which a bridge's transformers LayerNorm ignores")
@pytest.mark.parametrize("model_name", ["tiny_bert", "random_bert"])
@torch.no_grad()  # not inference_mode: a session fixture first built in here would hold inference-mode weights
def test_direct_effect_bert_earlier_layer_is_the_frozen_direct_path(request, model_name):
    """A neuron below the last layer: zero-ablate it while every later attention and MLP output is patched to its
    clean value and every LayerNorm scale on the path is frozen. What is left is exactly the direct path that
    direct_effect computes (through each later block's ln1 and ln2, then the MLM head)."""
    bert = request.getfixturevalue(model_name)
    p = kn_lens.make_prompt(bert, "The capital of France is [MASK].", "Paris")
    n_layers = bert.cfg.n_layers
    frozen = ["blocks.0.ln2.hook_scale"] + [
        f"blocks.{later}.{ln}.hook_scale" for later in range(1, n_layers) for ln in ("ln1", "ln2")
    ]
    patched = [f"blocks.{later}.hook_{part}_out" for later in range(1, n_layers) for part in ("attn", "mlp")]
    clean_values: dict[str, torch.Tensor] = {}

    def save(x, hook):
        clean_values[hook.name] = x.clone()

    def restore(x, hook):
        return clean_values[hook.name]

    tokens = p.tokens[None]
    clean = bert.run_with_hooks(tokens, fwd_hooks=[(name, save) for name in frozen + patched])
    _, cache = bert.run_with_cache(tokens, names_filter=get_act_name("mlp_post", 0))
    neurons = cache[get_act_name("mlp_post", 0)][0, p.site].abs().topk(3).indices.tolist()
    for n in neurons:

        def ablate(x, hook, n=n):
            x[..., n] = 0.0
            return x

        hooks = [(get_act_name("mlp_post", 0), ablate)] + [(name, restore) for name in frozen + patched]
        ablated = bert.run_with_hooks(tokens, fwd_hooks=hooks)
        expected = (clean - ablated)[0, p.positions[0], p.target_ids[0]].item()
        de = direct_effect(bert, (0, n), [p]).item()
        assert abs(de - expected) < 1e-3 * abs(expected) + 1e-8, (n, de, expected)
        assert abs(expected) > 1e-6, "no effect at all: a wrong path could not be told from the right one"


class _ScaleNorm(torch.nn.Module):
    """An RMSNorm whose class name does not say so (like transformers' T5LayerNorm)."""

    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, width))
        self.variance_epsilon = eps

    def forward(self, x):
        return self.weight * x / (x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon).sqrt()


class _CentringNorm(_ScaleNorm):
    """A LayerNorm that does not subclass nn.LayerNorm (and has no bias)."""

    def forward(self, x):
        return super().forward(x - x.mean(-1, keepdim=True))


class _OffsetNorm(_ScaleNorm):
    """Gemma's RMSNorm: scales by 1 + weight."""

    def forward(self, x):
        return (1 + self.weight) * x / (x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon).sqrt()


def test_bridge_norms_are_recognised_by_what_they_do_not_by_their_name():
    """Any bridge norm without "RMS" in its class name was taken for a centring LayerNorm."""
    from types import SimpleNamespace

    from transformers.models.t5.modeling_t5 import T5LayerNorm

    from kn_lens.backends import norm

    x = torch.randn(4, 16) + 3.0
    layer_norm = torch.nn.LayerNorm(16)
    with torch.no_grad():
        layer_norm.weight.uniform_(0.5, 1.5)
        layer_norm.bias.uniform_(-0.5, 0.5)
    for module, centres in ((_ScaleNorm(16), False), (T5LayerNorm(16), False), (_CentringNorm(16), True),
                            (layer_norm, True)):  # fmt: skip
        described = norm(SimpleNamespace(_original_component=module))
        assert described.centres is centres, type(module).__name__
        torch.testing.assert_close(described(x), module(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="neither as a LayerNorm nor as an RMSNorm"):
        norm(SimpleNamespace(_original_component=_OffsetNorm(16)))
