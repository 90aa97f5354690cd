"""load_model: the embedded SmolLM2, local checkpoints of each family (offline), passthrough and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from transformer_lens import HookedEncoder, HookedTransformer

import kn_lens
from kn_lens.models import embedded_model_path

PROMPTS = [
    "The capital of France is",
    "Raymond is selling some sketches, and",
    "def fibonacci(n):\n    return",
    "In 1969, Neil Armstrong became the first person to",
]


@pytest.mark.slow
@pytest.mark.embedded
def test_embedded_smollm2_matches_transformers(smollm2):
    from transformers import AutoModelForCausalLM

    gguf = embedded_model_path()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    for text in PROMPTS:
        tokens = smollm2.to_tokens(text, prepend_bos=False)
        with torch.no_grad():
            ours = smollm2(tokens)
            theirs = reference(tokens).logits
        assert (ours - theirs).abs().max().item() < 1e-3, text
    assert isinstance(smollm2, HookedTransformer) and smollm2.cfg.n_layers == 30


def _tokens(n_vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, n_vocab, (3, 7), generator=torch.Generator().manual_seed(seed))


def _causal_checkpoint(family: str):
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    vocab = 49152  # the SmolLM2 tokenizer is saved alongside
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4))
    if family == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
        return LlamaForCausalLM(config)
    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    return GPTNeoXForCausalLM(config)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
def test_local_causal_checkpoint_converts_offline(family, smollm2, tmp_path):
    torch.manual_seed(0)
    reference = _causal_checkpoint(family).eval()
    reference.save_pretrained(tmp_path)
    smollm2.tokenizer.save_pretrained(tmp_path)
    model = kn_lens.load_model(tmp_path)
    assert isinstance(model, HookedTransformer)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == family
    assert model.cfg.n_layers == 2 and model.cfg.d_model == 32
    tokens = _tokens(49152)
    with torch.no_grad():
        diff = (model(tokens) - reference(tokens).logits).abs().max().item()
    assert diff < 1e-4
    assert model.to_str_tokens("The capital of France is", prepend_bos=False)[-1] == " is"


@pytest.mark.parametrize("head", ["BertForPreTraining", "BertForMaskedLM"])
def test_local_bert_checkpoint_converts_offline(head, tmp_path):
    import transformers
    from transformers import AutoTokenizer, BertConfig

    from kn_lens.fixtures import tiny_bert

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert.PATH)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    reference = getattr(transformers, head)(config).eval()
    reference.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = kn_lens.load_model(tmp_path)
    assert isinstance(model, HookedEncoder)
    tokens = torch.tensor([tokenizer("Raymond is selling [MASK] sketches.")["input_ids"]])
    with torch.no_grad():
        out = reference(tokens)
        theirs = out.prediction_logits if head == "BertForPreTraining" else out.logits
        diff = (model(tokens) - theirs).abs().max().item()
    assert diff < 1e-4
    assert model.tokenizer.convert_ids_to_tokens(tokens[0].tolist())[4] == "[MASK]"


def test_already_built_models_pass_through(random_gpt2, tiny_bert):
    assert kn_lens.load_model(random_gpt2) is random_gpt2
    assert kn_lens.load_model(tiny_bert) is tiny_bert


def test_embedded_by_name(smollm2):
    model = kn_lens.load_model("smollm2-135m")
    assert isinstance(model, HookedTransformer)
    assert model.cfg.d_mlp == 1536 and model.cfg.n_layers == 30


def test_unknown_name():
    with pytest.raises(ValueError, match="neither a local folder nor an official TransformerLens model name"):
        kn_lens.load_model("no-such-model-anywhere")


def test_official_name_offline_says_what_to_do(monkeypatch):
    import huggingface_hub.constants

    # Without network, huggingface_hub retries for ~25 s before failing; offline mode fails at once the same way.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match=r"could not download 'gpt2'.*load_model\('\./folder'\)"):
        kn_lens.load_model("gpt2")


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        kn_lens.load_model(tmp_path / "missing")


def test_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        kn_lens.load_model(tmp_path)


def test_unsupported_architecture(tmp_path):
    from transformers import T5Config

    config = T5Config(d_model=16, num_layers=1, num_heads=2, d_ff=32, vocab_size=100)
    config.architectures = ["T5ForConditionalGeneration"]
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="cannot convert the architecture"):
        kn_lens.load_model(tmp_path)


def test_config_without_architecture(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_embd=16, n_layer=1, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="names no architecture"):
        kn_lens.load_model(tmp_path)


def test_wrong_argument_type():
    with pytest.raises(TypeError, match="name must be None, a str, a path or a TransformerLens model"):
        kn_lens.load_model(42)


def test_random_bert_fixture_is_initialised(random_bert, tiny_bert):
    assert isinstance(random_bert, HookedEncoder) and random_bert.cfg.n_layers == 3
    assert all(torch.isfinite(p).all() for p in random_bert.parameters())
    assert random_bert.W_in.std().item() > 0.01  # transformers' init (std 0.02), not zeros or garbage
    assert random_bert.tokenizer.get_vocab() == tiny_bert.tokenizer.get_vocab()
