"""load_model: the embedded SmolLM2, local checkpoints of each family (offline), passthrough and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

import kn_lens
from kn_lens import backends
from kn_lens.backends import HookedEncoder, HookedTransformer
from kn_lens.embedded import embedded_model_path

PROMPTS = [
    "The capital of France is",
    "Raymond is selling some sketches, and",
    "def fibonacci(n):\n    return",
    "In 1969, Neil Armstrong became the first person to",
]


@pytest.mark.slow
@pytest.mark.embedded
def test_embedded_smollm2_matches_transformers(smollm2, backend):
    from transformers import AutoModelForCausalLM

    gguf = embedded_model_path()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    for text in PROMPTS:
        tokens = smollm2.to_tokens(text, prepend_bos=False)
        with torch.no_grad():
            ours = smollm2(tokens)
            theirs = reference(tokens).logits
        assert (ours - theirs).abs().max().item() < 1e-3, text
    assert _of_backend(smollm2, backend) and smollm2.cfg.n_layers == 30


def _of_backend(model, backend: str) -> bool:
    """``model`` is what ``backend`` loads: a HookedTransformer/HookedEncoder, or a TransformerBridge."""
    return backends.is_hooked(model) if backend == "hooked" else backends.is_bridge(model)


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
def test_local_causal_checkpoint_converts_offline(family, causal_tokenizer, backend, tmp_path):
    torch.manual_seed(0)
    reference = _causal_checkpoint(family).eval()
    reference.save_pretrained(tmp_path)
    causal_tokenizer.save_pretrained(tmp_path)
    model = kn_lens.load_model(tmp_path, backend=backend)
    assert _of_backend(model, backend)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == family
    assert model.cfg.n_layers == 2 and model.cfg.d_model == 32
    tokens = _tokens(49152)
    with torch.no_grad():
        diff = (model(tokens) - reference(tokens).logits).abs().max().item()
    assert diff < 1e-4
    assert model.to_str_tokens("The capital of France is", prepend_bos=False)[-1] == " is"


@pytest.mark.parametrize("head", ["BertForPreTraining", "BertForMaskedLM"])
def test_local_bert_checkpoint_converts_offline(head, backend, tmp_path):
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
    model = kn_lens.load_model(tmp_path, backend=backend)
    assert _of_backend(model, backend) and backends.is_encoder(model)
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


def test_embedded_by_name(smollm2, backend):
    model = kn_lens.load_model("smollm2-135m", backend=backend)
    assert _of_backend(model, backend)
    assert model.cfg.d_mlp == 1536 and model.cfg.n_layers == 30


def test_unknown_name(backend, monkeypatch):
    if backend == "bridge":  # a bridge boots any hub repository: an unknown name is known only once the hub says so
        import huggingface_hub.constants

        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(ConnectionError, match="could not load 'no-such-model-anywhere' from the Hugging Face hub"):
            kn_lens.load_model("no-such-model-anywhere", backend=backend)
        return
    with pytest.raises(ValueError, match="neither a local folder nor an official TransformerLens model name"):
        kn_lens.load_model("no-such-model-anywhere", backend=backend)


def test_official_name_offline_says_what_to_do(monkeypatch, backend):
    import huggingface_hub.constants

    # Without network, huggingface_hub retries for ~25 s before failing; offline mode fails at once the same way.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    verb = "download" if backend == "hooked" else "load"
    with pytest.raises(ConnectionError, match=rf"could not {verb} 'gpt2'.*load_model\('\./folder'"):
        kn_lens.load_model("gpt2", backend=backend)


@pytest.mark.hooked_only("official names load HookedTransformer/HookedEncoder (backend='hooked')")
def test_official_names_go_to_the_right_class_by_their_model_not_a_substring(monkeypatch):
    """Any official name containing "bert" was sent to HookedEncoder (HuBERT, a speech model, included)."""
    import huggingface_hub.constants

    from kn_lens.models import _official_class

    for name in ("bert-base-cased", "google-bert/bert-large-uncased"):
        assert _official_class(name) is HookedEncoder
    for name in ("gpt2", "EleutherAI/pythia-160m", "Qwen/Qwen2-0.5B"):
        assert _official_class(name) is HookedTransformer
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="speech model"):  # before: HookedEncoder.from_pretrained, then the hub
        kn_lens.load_model("facebook/hubert-base-ls960")


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        kn_lens.load_model(tmp_path / "missing")


def test_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        kn_lens.load_model(tmp_path)


def test_unsupported_architecture(tmp_path, backend):
    from transformers import T5Config

    config = T5Config(d_model=16, num_layers=1, num_heads=2, d_ff=32, vocab_size=100)
    config.architectures = ["T5ForConditionalGeneration"]
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"cannot (convert|use) the architecture"):
        kn_lens.load_model(tmp_path, backend=backend)


def test_config_without_architecture(tmp_path, backend):
    from transformers import GPT2Config

    GPT2Config(n_embd=16, n_layer=1, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="names no architecture"):
        kn_lens.load_model(tmp_path, backend=backend)


def test_wrong_argument_type():
    with pytest.raises(TypeError, match="name must be None, a str, a path or a TransformerLens model"):
        kn_lens.load_model(42)


def test_random_bert_fixture_is_initialised(random_bert, tiny_bert, backend):
    assert _of_backend(random_bert, backend) and backends.is_encoder(random_bert) and random_bert.cfg.n_layers == 3
    assert all(torch.isfinite(p).all() for p in random_bert.parameters())
    w_out = backends.mlp_w_out(random_bert, 1)
    assert w_out.std().item() > 0.01  # transformers' init (std 0.02), not zeros or garbage
    assert random_bert.tokenizer.get_vocab() == tiny_bert.tokenizer.get_vocab()


# ---------------------------------------------------------------------------------------------- embedded cache


@pytest.fixture
def tiny_embedded(monkeypatch, tmp_path, causal_tokenizer):
    """load_embedded's cache logic, run on a tiny random Llama in place of the 30-layer conversion.

    The GGUF file is still hashed for real; ``calls`` counts conversions (i.e. cache rebuilds).
    """
    from transformer_lens import HookedTransformerConfig

    from kn_lens import embedded

    tiny = dict(embedded._SMOLLM2_CFG, d_model=32, d_head=8, n_heads=4, n_key_value_heads=2, d_mlp=64, n_layers=2)
    tiny.update(rotary_dim=8, n_ctx=64)
    monkeypatch.setattr(embedded, "_SMOLLM2_CFG", tiny)
    monkeypatch.setenv("KN_LENS_CACHE", str(tmp_path))
    calls = []

    def convert(gguf, cfg):
        calls.append(gguf)
        torch.manual_seed(0)
        cfg = HookedTransformerConfig(**tiny, device="cpu", dtype=torch.float32)
        return HookedTransformer(cfg, tokenizer=causal_tokenizer, move_to_device=False)

    monkeypatch.setattr(embedded, "_convert_gguf", convert)
    return embedded, calls, tmp_path


def _cache_folder(root):
    (folder,) = [p for p in root.iterdir() if p.is_dir()]
    return folder


EMBEDDED_CACHE = "the cache of the converted HookedTransformer (a bridge boots from embedded_checkpoint())"


@pytest.mark.hooked_only(EMBEDDED_CACHE)
def test_embedded_cache_is_keyed_by_hash_and_versions_and_loads_strictly(tiny_embedded):
    import hashlib
    import logging

    from transformers.utils import logging as hf_logging

    models, calls, root = tiny_embedded
    level, bars = logging.getLogger().level, hf_logging.is_progress_bar_enabled()
    first = models.load_embedded()
    assert len(calls) == 1
    folder = _cache_folder(root)
    manifest = json.loads((folder / "manifest.json").read_text())
    sha = hashlib.sha256(embedded_model_path().read_bytes()).hexdigest()
    assert manifest["gguf_sha256"] == sha and folder.name.endswith(sha[:16])
    assert manifest["torch"] == torch.__version__ and "transformer_lens" in manifest
    again = models.load_embedded()
    assert len(calls) == 1  # served from the cache
    tokens = _tokens(49152)
    with torch.no_grad():
        torch.testing.assert_close(again(tokens), first(tokens), rtol=0, atol=0)
    # the user's logging and progress-bar settings are theirs
    assert logging.getLogger().level == level and hf_logging.is_progress_bar_enabled() == bars


@pytest.mark.hooked_only(EMBEDDED_CACHE)
@pytest.mark.parametrize("damage", ["truncated", "stale versions", "missing weight", "nan weight"])
def test_damaged_or_stale_embedded_cache_is_rebuilt(tiny_embedded, damage):
    models, calls, root = tiny_embedded
    models.load_embedded()
    folder = _cache_folder(root)
    weights = folder / "hooked_transformer.pt"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "stale versions":
        manifest = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps(dict(manifest, torch="1.0.0")))
    else:
        state = torch.load(weights, weights_only=True)
        if damage == "missing weight":
            del state["blocks.1.mlp.W_out"]
        else:
            state["blocks.1.mlp.W_out"][0, 0] = float("nan")
        torch.save(state, weights)
    model = models.load_embedded()
    assert len(calls) == 2, "a damaged or stale cache must be rebuilt, not loaded"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    models.load_embedded()
    assert len(calls) == 2  # the rebuilt cache is good again
    assert len([p for p in root.iterdir()]) == 1  # no temporary folders left behind


def test_corrupt_or_non_object_config_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        kn_lens.load_model(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config\.json holds a JSON list"):
        kn_lens.load_model(tmp_path)


def test_dtype_must_be_a_torch_dtype(random_gpt2):
    with pytest.raises(TypeError, match=r"dtype must be a torch\.dtype such as torch\.float16, got 'float16'"):
        kn_lens.load_model(random_gpt2, dtype="float16")
    with pytest.raises(ValueError, match="floating-point"):
        kn_lens.load_model(random_gpt2, dtype=torch.int64)


def test_a_model_loaded_under_inference_mode_can_still_be_edited_and_attributed():
    """Loaded inside torch.inference_mode(), the weights used to be inference tensors: kn_lens.edit and every
    gradient-based attribution then failed much later, far from the cause."""
    from kn_lens.fixtures import tiny_bert as fx

    with torch.inference_mode():
        model = kn_lens.load_model(fx.PATH)
    assert not any(p.is_inference() for p in model.parameters())
    with kn_lens.erase(model, ["L1N2"]):
        pass
    fact = fx.FACTS[0]
    assert torch.isfinite(kn_lens.integrated_gradients(model, fx.train_prompts(fact)[0], fact.answer, n_steps=2)).all()
