"""A small random BERT (HookedEncoder) with a real word-level tokenizer, for lens / cache / plotting tests.

Used when the trained ``tiny_bert`` fixture is not available. All weights, LayerNorm weights and biases are
random and non-trivial, so a lens that forgets a norm weight or a bias fails its test.
"""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedEncoder, HookedTransformerConfig


def random_bert(tmp_dir, seed: int = 0) -> HookedEncoder:
    """A 2-layer random BERT whose tokenizer knows tiny_bert's vocabulary."""
    from transformers import BertTokenizer

    from kn_lens.fixtures.tiny_bert import vocabulary

    vocab = vocabulary()
    path = tmp_dir / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(vocab=str(path), do_lower_case=False)
    cfg = HookedTransformerConfig(
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        n_layers=2,
        n_ctx=32,
        d_vocab=len(vocab),
        act_fn="gelu",
        normalization_type="LN",
        attention_dir="bidirectional",
        original_architecture="BertForMaskedLM",
    )
    torch.manual_seed(seed)
    model = HookedEncoder(cfg, tokenizer=tokenizer, move_to_device=False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".w") and param.ndim == 1:  # LayerNorm weights: around 1, not 1
                param.copy_(1.0 + 0.3 * torch.randn_like(param))
            elif param.ndim == 1 or name.split(".")[-1].startswith("b"):
                param.copy_(0.1 * torch.randn_like(param))
            else:
                param.copy_(0.3 * torch.randn_like(param))
    return model.eval()


def bert_fixture(request, tmp_path_factory) -> HookedEncoder:
    """The shared ``tiny_bert`` fixture when conftest has it and its weights exist, else a random BERT."""
    try:
        return request.getfixturevalue("tiny_bert")
    except (pytest.FixtureLookupError, FileNotFoundError):
        return random_bert(tmp_path_factory.mktemp("bert"))
    except pytest.skip.Exception:
        return random_bert(tmp_path_factory.mktemp("bert"))
