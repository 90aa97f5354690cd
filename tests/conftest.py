"""Shared fixtures: the embedded SmolLM2 (loaded once per worker), the trained tiny BERT, small random models."""

from __future__ import annotations

import pytest
import torch

import kn_lens
from kn_lens.backends import HAS_HOOKED

if HAS_HOOKED:  # TransformerLens 3.x; the 4.x environment runs only the bridge tests (tests/test_bridge.py)
    from transformer_lens import HookedEncoder, HookedTransformer, HookedTransformerConfig

# Two xdist workers share two cores: one thread each avoids oversubscription (and is faster here).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smollm2() -> HookedTransformer:
    """The embedded SmolLM2-135M-Instruct. Tests that change weights must restore them."""
    return kn_lens.load_model()


def _random_causal(tokenizer, *, gated: bool, seed: int = 0) -> HookedTransformer:
    torch.manual_seed(seed)
    common = dict(d_model=32, d_head=8, n_heads=4, d_mlp=64, n_layers=3, n_ctx=64, d_vocab=tokenizer.vocab_size)
    if gated:  # Llama-like: RMSNorm, rotary, gated SiLU MLP, grouped-query attention
        cfg = HookedTransformerConfig(
            **common,
            act_fn="silu",
            normalization_type="RMS",
            positional_embedding_type="rotary",
            rotary_dim=8,
            gated_mlp=True,
            n_key_value_heads=2,
            default_prepend_bos=False,
        )
    else:  # GPT-2-like: LayerNorm, learned positions, GELU
        cfg = HookedTransformerConfig(**common, act_fn="gelu_new", normalization_type="LN", default_prepend_bos=False)
    return HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False).eval()


@pytest.fixture(scope="session")
def random_llama(smollm2) -> HookedTransformer:
    """A 3-layer random Llama-like model with the SmolLM2 tokenizer (mechanics tests)."""
    return _random_causal(smollm2.tokenizer, gated=True)


@pytest.fixture(scope="session")
def random_gpt2(smollm2) -> HookedTransformer:
    """A 3-layer random GPT-2-like model with the SmolLM2 tokenizer (mechanics tests)."""
    return _random_causal(smollm2.tokenizer, gated=False)


@pytest.fixture(scope="session")
def tiny_bert() -> HookedEncoder:
    """The trained 2-layer BERT fixture (kn_lens.fixtures.tiny_bert), loaded through load_model(path)."""
    from kn_lens.fixtures import tiny_bert as fixture

    return fixture.load()


@pytest.fixture(scope="session")
def random_bert(tmp_path_factory) -> HookedEncoder:
    """A 3-layer random BERT (transformers' initialisation, seed 0) with the tiny BERT's tokenizer.

    Built as a transformers ``BertForPreTraining``, saved and converted by ``load_model(path)``, so its weights
    are properly initialised (``HookedEncoder(cfg)`` alone leaves them uninitialised).
    """
    from transformers import AutoTokenizer, BertConfig, BertForPreTraining

    from kn_lens.fixtures import tiny_bert as fixture

    tokenizer = AutoTokenizer.from_pretrained(fixture.PATH)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("random_bert")
    BertForPreTraining(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return kn_lens.load_model(folder)
