"""kn_lens.cache: only the requested hook points and positions are kept, and they equal a plain run."""

from __future__ import annotations

import pytest
import torch

import kn_lens
from kn_lens.backends import get_act_name
from kn_lens.cache import MLPPostCache, cache_mlp_post, mean_activations, top_activating

TEXTS = [
    "The capital of France is",
    "The capital of Italy is",
    "I like to drink green tea in the morning",
    "Dogs bark",
]


@pytest.fixture(scope="module")
def bert(tiny_bert):
    """The trained tiny BERT: non-trivial LayerNorm weights and biases, a real word-level tokenizer."""
    return tiny_bert


def _full(model, text):
    """Every layer's mlp_post for one text, from an unbatched, unfiltered run."""
    tokens = kn_lens.make_prompt(model, text).tokens[None]
    _, cache = model.run_with_cache(tokens)
    return {layer: cache[get_act_name("mlp_post", layer)][0] for layer in range(model.cfg.n_layers)}


def test_names_filter_keeps_only_requested_hooks(random_llama):
    seen = []
    original = random_llama.run_with_cache

    def spy(*args, **kwargs):
        _, cache = original(*args, **kwargs)
        seen.append(sorted(cache.keys()))
        return _, cache

    random_llama.run_with_cache = spy
    try:
        c = cache_mlp_post(random_llama, TEXTS, layers=[2, 0], positions="site", progress=False)
    finally:
        del random_llama.run_with_cache
    requested = {"blocks.0.mlp.hook_post", "blocks.2.mlp.hook_post"}
    for keys in seen:  # a bridge's cache also lists each requested point under its canonical name (mlp.out.hook_in)
        assert requested <= set(keys) and all(k.startswith(("blocks.0.mlp.", "blocks.2.mlp.")) for k in keys)
    assert seen
    assert c.layers == [0, 2]
    assert c.hook_names == ["blocks.0.mlp.hook_post", "blocks.2.mlp.hook_post"]
    with pytest.raises(KeyError, match="not cached"):
        c[1]


def test_site_positions_equal_plain_run(random_llama):
    c = cache_mlp_post(random_llama, TEXTS, layers=[1, 2], batch_size=1, progress=False)
    assert isinstance(c, MLPPostCache)
    assert len(c) == len(TEXTS)  # one row per prompt
    for i, text in enumerate(TEXTS):
        p = kn_lens.make_prompt(random_llama, text)
        full = _full(random_llama, text)
        assert c.prompt_index[i] == i and c.position[i] == p.site
        assert c.token_id[i] == p.tokens[p.site]
        for layer in (1, 2):
            torch.testing.assert_close(c[layer][i], full[layer][p.site], atol=1e-5, rtol=1e-5)
    assert c.stack().shape == (len(TEXTS), 2, random_llama.cfg.d_mlp)
    torch.testing.assert_close(c["blocks.2.mlp.hook_post"], c[2])


def test_all_and_explicit_positions(random_gpt2):
    c = cache_mlp_post(random_gpt2, TEXTS, layers=0, positions="all", batch_size=2, progress=False)
    lengths = [len(kn_lens.make_prompt(random_gpt2, t)) for t in TEXTS]
    assert len(c) == sum(lengths)
    for i, text in enumerate(TEXTS):
        rows = c.prompt_index == i
        assert c.position[rows].tolist() == list(range(lengths[i]))
        torch.testing.assert_close(c[0][rows], _full(random_gpt2, text)[0], atol=1e-5, rtol=1e-5)
    e = cache_mlp_post(random_gpt2, TEXTS[:2], layers=[1], positions=[0, -1], progress=False)
    assert e.position.tolist() == [0, lengths[0] - 1, 0, lengths[1] - 1]
    assert e.prompt_index.tolist() == [0, 0, 1, 1]
    torch.testing.assert_close(e[1][1], _full(random_gpt2, TEXTS[0])[1][-1], atol=1e-5, rtol=1e-5)


def test_encoder_site_is_mask(bert):
    texts = ["Paris is the capital of [MASK] .", "Rome is the capital of [MASK] ."]
    c = cache_mlp_post(bert, texts, positions="site", progress=False)
    mask = bert.tokenizer.mask_token_id
    assert c.token_id.tolist() == [mask, mask]
    assert c.layers == list(range(bert.cfg.n_layers))
    # "all" works on encoder texts without a mask
    a = cache_mlp_post(bert, ["Paris is the capital of France ."], layers=[0], positions="all", progress=False)
    assert len(a) == len(bert.tokenizer("Paris is the capital of France .")["input_ids"])


def test_mean_activations(random_llama):
    means = mean_activations(random_llama, TEXTS, layers=[1], positions="site", progress=False)
    assert list(means) == [1]
    expected = torch.stack([_full(random_llama, t)[1][kn_lens.make_prompt(random_llama, t).site] for t in TEXTS]).mean(
        0
    )
    torch.testing.assert_close(means[1], expected, atol=1e-5, rtol=1e-5)


def test_top_activating_finds_the_peak(random_llama):
    neuron = (1, 7)
    top = top_activating(random_llama, neuron, TEXTS, k=2, progress=False)
    peaks = []
    for text in TEXTS:
        acts = _full(random_llama, text)[1][:, 7]
        peaks.append(acts.max().item())
    order = sorted(range(len(TEXTS)), key=lambda i: -peaks[i])[:2]
    assert top.texts == [TEXTS[i] for i in order]
    assert top.max_activations == pytest.approx([peaks[i] for i in order], abs=1e-5)
    for toks, acts in zip(top.tokens, top.activations, strict=True):
        assert len(toks) == len(acts)
    torch.testing.assert_close(top.activations[0], _full(random_llama, top.texts[0])[1][:, 7], atol=1e-5, rtol=1e-5)
    df = top.to_frame()
    assert list(df.columns) == ["rank", "text", "token", "position", "activation"]
    low = top_activating(random_llama, neuron, TEXTS, k=1, largest=False, progress=False)
    assert low.max_activations[0] == pytest.approx(min(_full(random_llama, t)[1][:, 7].min().item() for t in TEXTS))


def test_bad_inputs(random_llama):
    with pytest.raises(ValueError, match="empty"):
        top_activating(random_llama, (1, 7), [])
    with pytest.raises(ValueError, match="out of range"):
        top_activating(random_llama, (1, 64), TEXTS)
    with pytest.raises(ValueError, match="out of range"):
        cache_mlp_post(random_llama, TEXTS, layers=[3])
    with pytest.raises(ValueError, match="no prompts"):
        cache_mlp_post(random_llama, [])
    with pytest.raises(ValueError, match="outside the prompt"):
        cache_mlp_post(random_llama, ["Dogs bark"], positions=[10])
    with pytest.raises(ValueError, match="unknown positions"):
        cache_mlp_post(random_llama, ["Dogs bark"], positions="every")
    with pytest.raises(ValueError, match="batch_size"):
        cache_mlp_post(random_llama, ["Dogs bark"], batch_size=0)
