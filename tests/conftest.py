"""Shared fixtures, on every backend the installed TransformerLens offers.

The model fixtures (``smollm2``, ``random_llama``, ``random_gpt2``, ``tiny_bert``, ``random_bert``) depend on the
``backend`` fixture, which is parametrised per test:

* TransformerLens 4.x (only ``TransformerBridge``): ``bridge``;
* TransformerLens 3.x: ``hooked`` (``HookedTransformer``/``HookedEncoder``), and ``bridge`` too for tests marked
  ``both_backends`` (the bridge's own file, tests/test_bridge.py, compares the two backends on both majors);
* ``KN_LENS_TEST_BACKENDS=hooked,bridge`` overrides the choice (e.g. the whole suite on the 3.9 bridge).

A test marked ``hooked_only("why")`` needs ``HookedTransformer``/``HookedEncoder`` themselves (their constructors,
their internals, ``skill.prune``): it is skipped on a bridge, with the reason. The random models have the same sizes on
both backends (a bridge's are transformers checkpoints saved with ``save_pretrained``, a hooked model's are built
by TransformerLens), not the same weights.
"""

from __future__ import annotations

import os

import pytest
import torch

import kn_lens
from kn_lens.backends import HAS_HOOKED

if HAS_HOOKED:  # TransformerLens 3.x
    from transformer_lens import HookedEncoder, HookedTransformer, HookedTransformerConfig

# Two xdist workers share two cores: one thread each avoids oversubscription (and is faster here).
torch.set_num_threads(1)

BACKENDS: tuple[str, ...] = ("hooked", "bridge") if HAS_HOOKED else ("bridge",)
"""The backends this TransformerLens offers."""
HOOKED_ONLY = "needs HookedTransformer/HookedEncoder themselves (TransformerLens 3.x)"


def _backends(item) -> list[str]:
    """The backends a test runs on (see the module docstring)."""
    wanted = os.environ.get("KN_LENS_TEST_BACKENDS")
    if wanted:
        return [b for b in wanted.split(",") if b in BACKENDS] or list(BACKENDS[-1:])
    if not HAS_HOOKED:
        return ["bridge"]
    return list(BACKENDS) if item.get_closest_marker("both_backends") else ["hooked"]


def pytest_generate_tests(metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", _backends(metafunc.definition), indirect=True, scope="session")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        marker = item.get_closest_marker("hooked_only")
        if marker is None:
            continue
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        if backend == "bridge" or (backend is None and not HAS_HOOKED):
            why = f"{HOOKED_ONLY}: {marker.args[0]}" if marker.args else HOOKED_ONLY
            item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="session")
def backend(request) -> str:
    """``"hooked"`` or ``"bridge"``: the backend of this test's model fixtures (a fixture asked for with
    ``request.getfixturevalue`` only, outside the test's signature, gets this TransformerLens' default)."""
    return getattr(request, "param", BACKENDS[0])


_MODELS: dict[tuple[str, str], object] = {}  # (fixture, backend) -> model: one per session whoever asks


def _once(name: str, backend: str, build):
    if (name, backend) not in _MODELS:
        _MODELS[name, backend] = build()
    return _MODELS[name, backend]


@pytest.fixture(scope="session")
def smollm2(backend):
    """The embedded SmolLM2-135M-Instruct on the test's backend. Tests that change weights must restore them."""
    return _once("smollm2", backend, lambda: kn_lens.load_model(backend=backend))


@pytest.fixture(scope="session")
def causal_tokenizer():
    """SmolLM2's tokenizer, from the embedded checkpoint folder (no model loaded)."""
    from transformers import AutoTokenizer

    from kn_lens.models import embedded_checkpoint

    return AutoTokenizer.from_pretrained(embedded_checkpoint())


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


def _random_checkpoint(family: str, folder, tokenizer, *, seed: int = 0):
    """A random transformers checkpoint of the random fixtures' sizes (3 layers, d_model 32, 4 heads, d_mlp 64),
    saved with its tokenizer into ``folder`` and loaded back as a ``TransformerBridge``."""
    import transformers

    torch.manual_seed(seed)
    init = dict(initializer_range=0.8 / 32**0.5)  # TransformerLens' scale: effects large enough to resolve
    if family == "llama":  # rotary, grouped-query attention, RMSNorm, gated SiLU MLP
        config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=64, **init)  # fmt: skip
        model = transformers.LlamaForCausalLM(config)
    elif family == "gpt2":  # learned positions, LayerNorm, GELU
        config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=3, n_head=4,
                                         n_inner=64, **init)  # fmt: skip
        model = transformers.GPT2LMHeadModel(config)
    else:  # BERT masked LM
        config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=3,
                                         num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        model = transformers.BertForMaskedLM(config)
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    bridge = kn_lens.load_model(folder, backend="bridge")
    if family != "bert":
        bridge.cfg.default_prepend_bos = False  # as the hooked random models (and SmolLM2)
    return bridge


@pytest.fixture(scope="session")
def random_llama(backend, request, tmp_path_factory):
    """A 3-layer random Llama-like model with the SmolLM2 tokenizer (mechanics tests)."""
    if backend == "bridge":
        tokenizer = request.getfixturevalue("causal_tokenizer")
        build = lambda: _random_checkpoint("llama", tmp_path_factory.mktemp("random_llama"), tokenizer)  # noqa: E731
    else:
        build = lambda: _random_causal(request.getfixturevalue("smollm2").tokenizer, gated=True)  # noqa: E731
    return _once("random_llama", backend, build)


@pytest.fixture(scope="session")
def random_gpt2(backend, request, tmp_path_factory):
    """A 3-layer random GPT-2-like model with the SmolLM2 tokenizer (mechanics tests)."""
    if backend == "bridge":
        tokenizer = request.getfixturevalue("causal_tokenizer")
        build = lambda: _random_checkpoint("gpt2", tmp_path_factory.mktemp("random_gpt2"), tokenizer)  # noqa: E731
    else:
        build = lambda: _random_causal(request.getfixturevalue("smollm2").tokenizer, gated=False)  # noqa: E731
    return _once("random_gpt2", backend, build)


@pytest.fixture(scope="session")
def tiny_bert(backend):
    """The trained 2-layer BERT fixture (kn_lens.fixtures.tiny_bert), loaded through load_model(path)."""
    from kn_lens.fixtures import tiny_bert as fixture

    return _once("tiny_bert", backend, lambda: fixture.load(backend))


@pytest.fixture(scope="session")
def random_bert(backend, tmp_path_factory) -> HookedEncoder:
    """A 3-layer random BERT (transformers' initialisation, seed 0) with the tiny BERT's tokenizer.

    Built as a transformers ``BertForPreTraining`` (hooked: converted by ``load_model(path)``; ``HookedEncoder(cfg)``
    alone leaves the weights uninitialised) or ``BertForMaskedLM`` (bridge), saved and loaded.
    """
    return _once("random_bert", backend, lambda: _random_bert(backend, tmp_path_factory))


def _random_bert(backend: str, tmp_path_factory):
    from transformers import AutoTokenizer, BertConfig, BertForPreTraining

    from kn_lens.fixtures import tiny_bert as fixture

    tokenizer = AutoTokenizer.from_pretrained(fixture.PATH)
    folder = tmp_path_factory.mktemp("random_bert")
    if backend == "bridge":
        return _random_checkpoint("bert", folder, tokenizer)
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
    BertForPreTraining(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return kn_lens.load_model(folder)
