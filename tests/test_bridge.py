"""Every kn_lens function on a ``TransformerBridge``: same numbers as ``HookedTransformer``/``HookedEncoder`` and
as the transformers model itself.

Random local checkpoints of GPT-2, Llama, BERT and RoBERTa are saved with ``save_pretrained`` and loaded twice:
as a bridge (``load_model(folder, backend="bridge")``) and, where TransformerLens still has it (3.x; RoBERTa
never had a ``HookedEncoder``), as a hooked model. Two references keep the comparison honest on both majors:

* the hooked model built from the same weights (TransformerLens 3.x only);
* the transformers model loaded from the same folder, read and intervened on with plain torch hooks on its MLP
  down-projection (independent of TransformerLens and of kn_lens), so the 4.x run has a reference too.

`make test` runs this file in the default environment (TransformerLens 3.9) and again in ``.venv-tl4`` with the
newest TransformerLens 4.x (``-m bridge``).
"""

from __future__ import annotations

import contextlib
import warnings
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import kn_lens
from kn_lens import attribution as A
from kn_lens import backends
from kn_lens.models import default_backend, embedded_checkpoint

pytestmark = pytest.mark.bridge

FAMILIES = ["gpt2", "llama", "bert", "roberta"]
ENCODERS = {"bert", "roberta"}
# The MLP down-projection of block {L} in each transformers model: its input is TransformerLens' mlp_post.
DOWN = {
    "gpt2": "transformer.h.{}.mlp.c_proj",
    "llama": "model.layers.{}.mlp.down_proj",
    "bert": "bert.encoder.layer.{}.output.dense",
    "roberta": "roberta.encoder.layer.{}.output.dense",
}
PROMPTS = {  # (paraphrases, target): causal prompts use the SmolLM2 tokenizer, encoders the tiny BERT's
    "causal": (["The capital of France is", "France has its capital in", "The French capital is"], " Paris"),
    "encoder": (["The capital of France is [MASK] .", "France has its capital in [MASK] ."], "Paris"),
}


def _has_bridge_adapter(family: str) -> bool:
    if family != "roberta":
        return True
    from transformer_lens.model_bridge import supported_architectures

    return hasattr(supported_architectures, "RobertaArchitectureAdapter")


def _build(family: str, folder, tokenizer):
    import transformers

    torch.manual_seed(0)
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=4)
        model = transformers.GPT2LMHeadModel(config)
    elif family == "llama":
        config = transformers.LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
        model = transformers.LlamaForCausalLM(config)
    else:
        common = dict(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            pad_token_id=tokenizer.pad_token_id,
        )
        if family == "bert":
            model = transformers.BertForMaskedLM(transformers.BertConfig(**common, max_position_embeddings=64))
        else:  # RoBERTa's positions start after the padding index
            model = transformers.RobertaForMaskedLM(transformers.RobertaConfig(**common, max_position_embeddings=70))
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    auto = transformers.AutoModelForMaskedLM if family in ENCODERS else transformers.AutoModelForCausalLM
    return auto.from_pretrained(folder).eval()  # an independent copy of the same weights


@pytest.fixture(scope="module")
def tokenizers():
    from transformers import AutoTokenizer

    from kn_lens.fixtures import tiny_bert

    return {
        "causal": AutoTokenizer.from_pretrained(embedded_checkpoint()),
        "encoder": AutoTokenizer.from_pretrained(tiny_bert.PATH),
    }


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory, tokenizers):
    """A random checkpoint of one family as a bridge, a hooked model (None where unavailable) and transformers."""
    family = request.param
    if not _has_bridge_adapter(family):
        pytest.skip(f"this TransformerLens has no TransformerBridge adapter for {family} (4.x has)")
    kind = "encoder" if family in ENCODERS else "causal"
    folder = tmp_path_factory.mktemp(family)
    hf = _build(family, folder, tokenizers[kind])
    bridge = kn_lens.load_model(folder, backend="bridge")
    hooked = kn_lens.load_model(folder, backend="hooked") if backends.HAS_HOOKED and family != "roberta" else None
    texts, target = PROMPTS[kind]
    return SimpleNamespace(
        family=family, folder=folder, hf=hf, bridge=bridge, hooked=hooked, texts=texts, target=target
    )


# ---------------------------------------------------------------------------------------------------------------
# The transformers reference: plain torch hooks on the MLP down-projection
# ---------------------------------------------------------------------------------------------------------------


def _down(pair, layer: int) -> torch.nn.Module:
    return pair.hf.get_submodule(DOWN[pair.family].format(layer))


@contextlib.contextmanager
def _replace_input(module: torch.nn.Module, fn):
    handle = module.register_forward_pre_hook(lambda mod, args: (fn(args[0]),))
    try:
        yield
    finally:
        handle.remove()


def _hf_logits(pair, tokens: torch.Tensor) -> torch.Tensor:
    return pair.hf(tokens).logits


def _hf_mlp_post(pair, prompt, layer: int) -> torch.Tensor:
    seen = {}
    with torch.no_grad(), _replace_input(_down(pair, layer), lambda x: seen.setdefault("x", x)):
        _hf_logits(pair, prompt.tokens[None])
    return seen["x"][0]  # [pos, d_mlp]


def _hf_ig(pair, prompt, layer: int, n_steps: int) -> torch.Tensor:
    """Integrated gradients of the target probability (Riemann left rule), written with torch only."""
    site, target = prompt.site, prompt.target_ids[0]
    clean = _hf_mlp_post(pair, prompt, layer)[site]
    total = torch.zeros_like(clean)
    for k in range(n_steps):
        point = (clean * k / n_steps).requires_grad_(True)

        def put(x, point=point):
            x = x.clone()
            x[:, site] = point
            return x

        with _replace_input(_down(pair, layer), put):
            prob = _hf_logits(pair, prompt.tokens[None])[0, site].softmax(-1)[target]
        total += torch.autograd.grad(prob, point)[0]
    return clean * total / n_steps


def _hf_prob(pair, prompt, neurons=(), factor: float = 1.0) -> float:
    """Target probability with some neurons' activations scaled at the prompt's site."""
    with contextlib.ExitStack() as stack, torch.no_grad():
        for layer, index in neurons:

            def scale(x, index=index):
                x = x.clone()
                x[:, prompt.site, index] *= factor
                return x

            stack.enter_context(_replace_input(_down(pair, layer), scale))
        logits = _hf_logits(pair, prompt.tokens[None])
    return logits[0, prompt.site].softmax(-1)[prompt.target_ids[0]].item()


def _prompts(pair, model):
    return kn_lens.make_prompts(model, pair.texts, pair.target)


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def test_load_model_backends(pair):
    assert backends.is_bridge(pair.bridge) and pair.bridge.compatibility_mode
    assert isinstance(pair.bridge, kn_lens.Model) and not isinstance(torch.nn.Linear(2, 2), kn_lens.Model)
    assert pair.hooked is None or isinstance(pair.hooked, kn_lens.Model)  # the protocol covers both backends
    assert kn_lens._typing.is_encoder(pair.bridge) == (pair.family in ENCODERS)
    default = kn_lens.load_model(pair.folder) if pair.family != "roberta" or not backends.HAS_HOOKED else None
    if default is not None:
        assert (backends.is_hooked(default), backends.is_bridge(default)) == (
            default_backend() == "hooked",
            default_backend() == "bridge",
        )
    assert kn_lens.load_model(pair.bridge) is pair.bridge  # passed through


def test_logits_equal(pair):
    prompt = _prompts(pair, pair.bridge)[0]
    tokens = prompt.tokens[None]
    with torch.no_grad():
        logits = pair.bridge(tokens)
        torch.testing.assert_close(logits, _hf_logits(pair, tokens), atol=1e-4, rtol=0)
        if pair.hooked is not None:
            assert torch.equal(_prompts(pair, pair.hooked)[0].tokens, prompt.tokens)
            torch.testing.assert_close(logits, pair.hooked(tokens), atol=1e-4, rtol=0)


def test_mlp_post_cache_equal(pair):
    prompts = _prompts(pair, pair.bridge)
    cache = kn_lens.cache_mlp_post(pair.bridge, prompts, positions="all", progress=False)
    for layer in range(2):
        expected = torch.cat([_hf_mlp_post(pair, p, layer) for p in prompts])
        torch.testing.assert_close(cache[layer], expected, atol=1e-5, rtol=0)
    if pair.hooked is not None:
        hooked = kn_lens.cache_mlp_post(pair.hooked, _prompts(pair, pair.hooked), positions="all", progress=False)
        torch.testing.assert_close(cache[1], hooked[1], atol=1e-5, rtol=0)


def test_ig_equal(pair):
    prompt = _prompts(pair, pair.bridge)[0]
    scores = kn_lens.integrated_gradients(pair.bridge, prompt, n_steps=6)  # the bridge's fast path
    expected = torch.stack([_hf_ig(pair, prompt, layer, 6) for layer in range(2)])
    tolerance = 1e-4 * expected.abs().max().item()
    assert expected.abs().max() > 0
    torch.testing.assert_close(scores, expected, atol=tolerance, rtol=0)
    plain = kn_lens.integrated_gradients(pair.bridge, prompt, n_steps=6, fast=False)
    torch.testing.assert_close(plain, expected, atol=tolerance, rtol=0)
    if pair.hooked is not None:
        hooked_prompt = _prompts(pair, pair.hooked)[0]
        for fast in (True, False):
            hooked = kn_lens.integrated_gradients(pair.hooked, hooked_prompt, n_steps=6, fast=fast)
            torch.testing.assert_close(scores, hooked, atol=tolerance, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# The bridge's fast path (kn_lens.attribution._bridge through ._fast) against its plain path
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def fast_spy(monkeypatch):
    """Records the prompts of every pack the bridge's fast path builds (so a test knows the fast path ran)."""
    from kn_lens.attribution import _bridge

    packs: list[int] = []
    real = _bridge._stack

    def stack(model, cleans):
        packs.append(len(cleans))
        return real(model, cleans)

    monkeypatch.setattr(_bridge, "_stack", stack)
    return packs


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_bridge_takes_the_fast_path(pair):
    bridge = pair.bridge
    with torch.no_grad():
        bridge(_prompts(pair, bridge)[0].tokens[None])  # a forward leaves the libraries' own hooks behind
    assert A.attached_hooks(bridge) == []
    kinds = ["mlp_post", "mlp_pre"] + (["mlp_pre_linear"] if pair.family == "llama" else [])
    for hook in kinds:
        assert A.attribution_path(bridge, hook)[0] == "bridge-fast", hook
    assert A.attribution_path(bridge, fast=False)[0] == "plain"
    with bridge.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", lambda act, hook: act)]):
        path, reason = A.attribution_path(bridge)
        assert A.attached_hooks(bridge) == ["blocks.1.hook_in"]
    assert path == "plain" and "hooks are attached" in reason


@pytest.mark.parametrize(
    "options",
    [
        dict(baseline="random"),
        dict(objective="logit", method="gausslegendre"),
        dict(objective="logprob", method="riemann_trapezoid", internal_batch_size=2),
        dict(method="riemann_right", layers=[0]),
        dict(method="riemann_middle", layers=[1]),
        dict(method="eleuther", hook="mlp_pre"),
        dict(hook="mlp_pre_linear"),
        dict(target="two tokens"),
        dict(objective="metric"),
        dict(objective="metric", target="two tokens"),
    ],
    ids=["baseline", "logit-gausslegendre", "logprob-trapezoid-batch2", "right-layer0", "middle-layer1",
         "eleuther-mlp_pre", "mlp_pre_linear", "two-token-target", "metric", "metric-two-tokens"],
)  # fmt: skip
def test_bridge_fast_equals_plain(pair, options, fast_spy):
    """The fast path gives the plain path's scores and convergence deltas, for every rule, objective, hook point,
    layer subset and multi-token targets (encoders: one mask per token; causal: teacher-forced)."""
    options = dict(options)
    bridge = pair.bridge
    if options.get("hook") == "mlp_pre_linear" and pair.family != "llama":
        pytest.skip("mlp_pre_linear exists only in gated MLPs")
    text, target = pair.texts[0], pair.target
    if options.pop("target", None):
        target = (
            " Buenos Aires"
            if pair.family not in ENCODERS
            else bridge.tokenizer.convert_tokens_to_ids(["Paris", "Rome"])
        )
    prompt = kn_lens.make_prompt(bridge, text, target)
    if options.get("baseline") == "random":
        options["baseline"] = torch.rand(2, bridge.cfg.d_mlp, generator=torch.Generator().manual_seed(0))
    if options.get("objective") == "metric":  # read at the prompt's site, whatever the target
        paris, rome = (" Paris", " Rome") if pair.family not in ENCODERS else ("Paris", "Rome")
        options["objective"] = kn_lens.scoring.logit_diff(bridge, paris, rome)
    kw = dict(n_steps=5, return_convergence_delta=True, **options)
    fast, fast_delta = kn_lens.integrated_gradients(bridge, prompt, **kw)
    assert fast_spy, "the fast path did not run"
    plain, plain_delta = kn_lens.integrated_gradients(bridge, prompt, fast=False, **kw)
    assert plain.abs().max() > 0
    assert _rel(fast, plain) < 1e-5
    torch.testing.assert_close(fast_delta, plain_delta, atol=1e-6, rtol=1e-4)


def test_bridge_fast_packs_prompts(pair, fast_spy):
    """Several prompts share the fast passes (decoders: prompts of different lengths, the shorter prefixes padded and
    masked; encoders: prompts of equal length) and each gets its plain scores; a pack without its padding mask
    would not."""
    from kn_lens.attribution import _bridge

    bridge = pair.bridge
    if pair.family in ENCODERS:
        texts = ["The capital of France is [MASK] .", "The capital of Italy is [MASK] .",
                 "France has its capital in [MASK] .", "[MASK] is the capital of Spain ."]  # fmt: skip
        targets = ["Paris", "Rome", "Paris", "Madrid"]
    else:
        texts = ["The capital of France is", "In Europe, the country whose capital is Paris is called", "Capital:",
                 "France has its capital in"]  # fmt: skip
        targets = [" Paris", " France", " Buenos Aires", " Paris"]
    kw = dict(n_steps=4, method="gausslegendre", return_convergence_delta=True, progress=False)
    scores, deltas = A.integrated_gradients_many(bridge, texts, targets, **kw)
    assert max(fast_spy) == (3 if pair.family in ENCODERS else 5)  # encoders: the three of equal length and site
    for i, (text, target) in enumerate(zip(texts, targets, strict=True)):
        plain, plain_delta = A.integrated_gradients(bridge, text, target, fast=False, n_steps=4, method="gausslegendre",
                                                    return_convergence_delta=True)  # fmt: skip
        assert _rel(scores[i], plain) < 1e-5, text
        torch.testing.assert_close(deltas[i], plain_delta, atol=1e-6, rtol=1e-4)
    if pair.family in ENCODERS:
        return
    real = _bridge._stack

    def unmasked(model, cleans):
        pack = real(model, cleans)
        for block in pack.stacked:
            block.pop("attention_mask", None)
        return pack

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_bridge, "_stack", unmasked)
        broken = A.integrated_gradients_many(bridge, texts[:2], targets[:2], n_steps=2, progress=False)
    alone = A.integrated_gradients_many(bridge, texts[:2], targets[:2], n_steps=2, progress=False, pack=False)
    assert _rel(broken[0], alone[0]) > 1e-3  # the padded prompt attends to its padding: the comparison can fail


def test_bridge_fast_steps_aside_for_user_hooks(pair, fast_spy):
    """With a hook of the user's attached the plain path runs (with a warning) and honours it."""
    prompt = _prompts(pair, pair.bridge)[0]
    user = [("blocks.0.mlp.hook_post", lambda act, hook: act * 3.0)]
    with pair.bridge.hooks(fwd_hooks=user):
        with pytest.warns(UserWarning, match="hooks are attached"):
            fast = kn_lens.integrated_gradients(pair.bridge, prompt, n_steps=4, layers=[1])
        assert fast_spy == []
        plain = kn_lens.integrated_gradients(pair.bridge, prompt, n_steps=4, layers=[1], fast=False)
    free = kn_lens.integrated_gradients(pair.bridge, prompt, n_steps=4, layers=[1])
    assert fast_spy == [1]
    torch.testing.assert_close(fast, plain, atol=1e-7 * plain.abs().max().item(), rtol=0)
    assert _rel(fast, free) > 1e-3  # the user's hook changed the model


def test_bridge_fast_sees_edits(pair, fast_spy):
    """``erase``/``edit_fact`` write the weights the fast path reads (W_out through its view, the rest through the
    bridge's own modules): under an edit the fast and plain paths agree, and an erased neuron scores 0."""
    bridge = pair.bridge
    prompt = _prompts(pair, bridge)[0]
    neurons = [kn_lens.Neuron(0, 3), kn_lens.Neuron(1, 5)]
    before = kn_lens.integrated_gradients(bridge, prompt, n_steps=4)
    assert before[0, 3] != 0 and before[1, 5] != 0
    with kn_lens.erase(bridge, neurons):
        fast = kn_lens.integrated_gradients(bridge, prompt, n_steps=4)
        plain = kn_lens.integrated_gradients(bridge, prompt, n_steps=4, fast=False)
    assert fast[0, 3] == 0 and fast[1, 5] == 0
    assert _rel(fast, plain) < 1e-5 and _rel(fast, before) > 1e-3
    other = " Rome" if pair.family not in ENCODERS else "Rome"
    with kn_lens.edit_fact(bridge, neurons, pair.target, other):
        fast = kn_lens.integrated_gradients(bridge, prompt, n_steps=4)
        plain = kn_lens.integrated_gradients(bridge, prompt, n_steps=4, fast=False)
    assert _rel(fast, plain) < 1e-5 and _rel(fast, before) > 1e-3
    assert len(fast_spy) == 3


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_bridge_fast_ablations_equal_plain(pair, mode, fast_spy):
    prompt = _prompts(pair, pair.bridge)[0]
    means = torch.rand(2, pair.bridge.cfg.d_mlp, generator=torch.Generator().manual_seed(1))
    kw = dict(mode=mode, mean_cache=means if mode == "mean" else None, objective="logit")  # prob: ~1e-7 effects
    fast = A.ablation_effects(pair.bridge, prompt, **kw)
    assert fast_spy
    plain = A.ablation_effects(pair.bridge, prompt, fast=False, **kw)
    assert plain.abs().max() > 1e-5
    torch.testing.assert_close(fast, plain, atol=1e-6, rtol=1e-4)  # logits ~1: float32 rounding ~1e-7


OTHER_FAMILIES = {  # transformers config class, model class, extra settings; None: the fast path runs
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}, None),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 8}, None),  # q/k norms
    "mistral": ("MistralConfig", "MistralForCausalLM", {}, None),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}, None),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}, "normalised before it joins the residual"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 8}, "normalised before it joins the residual"),
    "neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {}, "in parallel"),
}


@pytest.mark.parametrize("family", list(OTHER_FAMILIES))
def test_other_decoder_families(family, tmp_path, tokenizers):
    """The fast path runs the bridge's own blocks, so it covers more decoders than the four above (same scores as
    the plain path); architectures whose MLP output is not simply added to the residual stream take the plain path,
    with the reason."""
    import transformers

    config_name, model_name, extra, reason = OTHER_FAMILIES[family]
    settings = dict(vocab_size=len(tokenizers["causal"]), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=64, **extra)  # fmt: skip
    if family != "neox":
        settings["num_key_value_heads"] = 2
    torch.manual_seed(0)
    getattr(transformers, model_name)(getattr(transformers, config_name)(**settings)).eval().save_pretrained(tmp_path)
    tokenizers["causal"].save_pretrained(tmp_path)
    try:
        bridge = kn_lens.load_model(tmp_path, backend="bridge")
    except ValueError as err:
        pytest.skip(f"this TransformerLens cannot boot {family} as a bridge: {err}"[:200])
    path, why = A.attribution_path(bridge)
    prompt = kn_lens.make_prompt(bridge, "The capital of France is", " Paris")
    if reason is not None:
        assert path == "plain" and reason in why
        return
    assert path == "bridge-fast", why
    kw = dict(n_steps=4, return_convergence_delta=True)
    fast, fast_delta = kn_lens.integrated_gradients(bridge, prompt, **kw)
    plain, plain_delta = kn_lens.integrated_gradients(bridge, prompt, fast=False, **kw)
    assert plain.abs().max() > 0 and _rel(fast, plain) < 1e-5
    torch.testing.assert_close(fast_delta, plain_delta, atol=1e-6, rtol=1e-4)


def test_a_bridge_the_fast_path_cannot_rerun_falls_back(tmp_path, tokenizers):
    """Granite scales its residual branches and its logits inside transformers' code: the probe sees the fast rows
    disagree with the bridge's own forward, and the plain path runs (one warning per model) with the reason."""
    import transformers

    from kn_lens.attribution import _bridge, _fast
    from kn_lens.attribution._common import Request

    torch.manual_seed(0)
    config = transformers.GraniteConfig(
        vocab_size=len(tokenizers["causal"]), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, logits_scaling=4.0,
        residual_multiplier=0.5,
    )  # fmt: skip
    transformers.GraniteForCausalLM(config).eval().save_pretrained(tmp_path)
    tokenizers["causal"].save_pretrained(tmp_path)
    bridge = kn_lens.load_model(tmp_path, backend="bridge")
    path, reason = A.attribution_path(bridge)
    assert path == "plain" and "differ from the bridge's own forward" in reason
    prompt = kn_lens.make_prompt(bridge, "The capital of France is", " Paris")
    with pytest.warns(UserWarning, match="cannot take the fast attribution path"):
        scores = kn_lens.integrated_gradients(bridge, prompt, n_steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per model
        again = kn_lens.integrated_gradients(bridge, prompt, n_steps=3)
    plain = kn_lens.integrated_gradients(bridge, prompt, n_steps=3, fast=False)
    assert torch.equal(scores, plain) and torch.equal(again, plain)
    alphas, weights = A.step_alphas("riemann_left", 3)
    request = Request(layers=[0, 1], objective="prob", alphas=alphas, weights=weights)
    forced, _ = _fast.integrated_gradients(bridge, prompt, request)
    assert _rel(forced, plain) > 1e-2  # what the probe prevented
    assert _bridge.unsupported(bridge, "mlp_post") == reason


def test_knowledge_neurons_same(pair):
    prompts = _prompts(pair, pair.bridge)
    found = kn_lens.find_knowledge_neurons(pair.bridge, prompts, n_steps=6)
    assert found.neurons
    reference = torch.stack([torch.stack([_hf_ig(pair, p, layer, 6) for layer in range(2)]) for p in prompts])
    assert kn_lens.find_knowledge_neurons(pair.bridge, prompts, scores=reference).neurons == found.neurons
    if pair.hooked is not None:
        assert kn_lens.find_knowledge_neurons(pair.hooked, _prompts(pair, pair.hooked), n_steps=6).neurons == (
            found.neurons
        )


@pytest.mark.parametrize("verb", ["suppress", "enhance"])
def test_suppress_enhance_tables_equal(pair, verb):
    neurons = [kn_lens.Neuron(0, 3), kn_lens.Neuron(1, 5)]
    table = getattr(kn_lens, verb)(pair.bridge, neurons, _prompts(pair, pair.bridge))
    factor = 0.0 if verb == "suppress" else 2.0
    for row, prompt in zip(table.itertuples(), _prompts(pair, pair.bridge), strict=True):
        assert row.before == pytest.approx(_hf_prob(pair, prompt), abs=1e-6)
        assert row.after == pytest.approx(_hf_prob(pair, prompt, neurons, factor), abs=1e-6)
    if pair.hooked is not None:
        hooked = getattr(kn_lens, verb)(pair.hooked, neurons, _prompts(pair, pair.hooked))
        pd.testing.assert_frame_equal(table, hooked, atol=1e-5, rtol=0)


def _hf_lens(pair, layer: int, index: int) -> torch.Tensor:
    """The lens of kn_lens.lens.decode, from the transformers weights: value vector -> final norm -> W_U."""
    hf = pair.hf
    down = _down(pair, layer)
    vector = down.weight[:, index] if isinstance(down, torch.nn.Linear) else down.weight[index]  # Conv1D: [in, out]
    x = vector.detach().double()
    if pair.family in ENCODERS:  # through the MLM head: last block's LayerNorm, dense, GELU, LayerNorm
        base = getattr(hf, pair.family)
        last_ln = base.encoder.layer[-1].output.LayerNorm
        x = x / x.pow(2).mean().sqrt()
        x = torch.nn.functional.layer_norm(x, x.shape, last_ln.weight.double(), last_ln.bias.double(), last_ln.eps)
        head = hf.cls.predictions.transform if pair.family == "bert" else hf.lm_head
        ln = head.LayerNorm if pair.family == "bert" else head.layer_norm
        x = torch.nn.functional.gelu(x @ head.dense.weight.double().T + head.dense.bias.double())
        x = torch.nn.functional.layer_norm(x, x.shape, ln.weight.double(), ln.bias.double(), ln.eps)
        return x @ hf.get_output_embeddings().weight.double().T
    norm = hf.transformer.ln_f if pair.family == "gpt2" else hf.model.norm
    if pair.family == "gpt2":
        x = x - x.mean()
    x = x / x.pow(2).mean().sqrt() * norm.weight.double()
    return x @ hf.get_output_embeddings().weight.double().T


def test_lens_decodings_equal(pair):
    decoded = kn_lens.decode(pair.bridge, (1, 5), k=5)
    expected = _hf_lens(pair, 1, 5)
    assert decoded.top_ids == expected.topk(5).indices.tolist()
    assert decoded.top_scores == pytest.approx(expected.topk(5).values.tolist(), abs=1e-4)
    assert decoded.bottom_ids == (-expected).topk(5).indices.tolist()
    if pair.hooked is not None:
        hooked = kn_lens.decode(pair.hooked, (1, 5), k=5)
        assert hooked.top_tokens == decoded.top_tokens and hooked.bottom_ids == decoded.bottom_ids
        assert hooked.top_scores == pytest.approx(decoded.top_scores, abs=1e-4)
        if pair.family in ENCODERS:
            unembed = kn_lens.decode(pair.bridge, (1, 5), k=5, through="unembed")
            assert kn_lens.decode(pair.hooked, (1, 5), k=5, through="unembed").top_ids == unembed.top_ids


def _hf_direct_effect(pair, prompt, layer: int, index: int) -> float:
    """A causal model's direct effect, by hand: activation x norm_lin(value vector) / frozen scale @ W_U[:, t]."""
    hf = pair.hf
    norm = hf.transformer.ln_f if pair.family == "gpt2" else hf.model.norm
    seen = {}
    with torch.no_grad(), _replace_input(norm, lambda x: seen.setdefault("resid", x)):
        _hf_logits(pair, prompt.tokens[None])
    resid = seen["resid"][0, prompt.site].double()
    eps = norm.eps if pair.family == "gpt2" else norm.variance_epsilon
    if pair.family == "gpt2":
        resid = resid - resid.mean()
    scale = (resid.pow(2).mean() + eps).sqrt()
    down = _down(pair, layer)
    value = (down.weight[:, index] if isinstance(down, torch.nn.Linear) else down.weight[index]).detach().double()
    if pair.family == "gpt2":
        value = value - value.mean()
    activation = _hf_mlp_post(pair, prompt, layer)[prompt.site, index].double()
    w_u = hf.get_output_embeddings().weight.detach().double()
    return (activation * value / scale * norm.weight.detach().double() @ w_u[prompt.target_ids[0]]).item()


@pytest.mark.parametrize("layer", [0, 1])
def test_direct_effect_equal(pair, layer):
    prompts = _prompts(pair, pair.bridge)
    effect = kn_lens.direct_effect(pair.bridge, (layer, 5), prompts)
    assert effect.shape == (len(prompts),) and torch.isfinite(effect).all()
    if pair.family not in ENCODERS:
        expected = [_hf_direct_effect(pair, p, layer, 5) for p in prompts]
        assert effect.tolist() == pytest.approx(expected, abs=1e-6, rel=1e-4)
    if pair.hooked is not None:  # encoders: a difference of two close logits, so float32 noise of ~1e-7 remains
        hooked = kn_lens.direct_effect(pair.hooked, (layer, 5), _prompts(pair, pair.hooked))
        torch.testing.assert_close(effect, hooked, atol=1e-6, rtol=1e-4)


def _state(model) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.original_model.state_dict().items()}


def _assert_bit_exact(model, saved) -> None:
    now = model.original_model.state_dict()
    assert now.keys() == saved.keys()
    assert all(torch.equal(now[name], saved[name]) for name in saved)


def test_edits_write_real_weights_and_restore_bit_exact(pair):
    bridge, neurons = pair.bridge, [kn_lens.Neuron(0, 3), kn_lens.Neuron(1, 5), kn_lens.Neuron(1, 7)]
    prompt = _prompts(pair, bridge)[0]
    saved = _state(bridge)
    down = bridge.original_model.get_submodule(DOWN[pair.family].format(1))
    down = getattr(down, "_original_component", down)  # the bridge wraps the transformers module
    saved_down = down.weight.detach().clone()
    with kn_lens.erase(bridge, neurons):
        column = down.weight[:, 5] if isinstance(down, torch.nn.Linear) else down.weight[5]
        assert torch.all(column == 0)
        with torch.no_grad():
            erased = bridge(prompt.tokens[None])[0, prompt.site].softmax(-1)[prompt.target_ids[0]].item()
    assert erased == pytest.approx(_hf_prob(pair, prompt, neurons, 0.0), abs=1e-6)  # zero row == zero activation
    _assert_bit_exact(bridge, saved)

    other = " Rome" if pair.family not in ENCODERS else "Rome"
    with pytest.raises(RuntimeError, match="boom"), kn_lens.edit_fact(bridge, neurons, pair.target, other):
        assert not torch.equal(down.weight, saved_down)
        if pair.hooked is not None:
            with kn_lens.edit_fact(pair.hooked, neurons, pair.target, other), torch.no_grad():
                tokens = prompt.tokens[None]
                torch.testing.assert_close(bridge(tokens), pair.hooked(tokens), atol=1e-4, rtol=0)
        raise RuntimeError("boom")
    _assert_bit_exact(bridge, saved)


def test_hooks_compose_on_a_bridge(pair):
    """kn_lens hooks are plain (name, fn) pairs: they run under the bridge's own run_with_hooks / hooks()."""
    prompt = _prompts(pair, pair.bridge)[0]
    neurons = [(1, 5)]
    # the bridge keeps permanent hooks of its own (BERT's on TransformerLens 4); ours must be gone afterwards
    before = {name: len(point.fwd_hooks) for name, point in pair.bridge.hook_dict.items()}
    with torch.no_grad():
        logits = pair.bridge.run_with_hooks(
            prompt.tokens[None], fwd_hooks=kn_lens.hooks.scale(neurons, 0.0, positions="all")
        )
    prob = logits[0, prompt.site].softmax(-1)[prompt.target_ids[0]].item()
    # positions="all": every position
    with contextlib.ExitStack() as stack, torch.no_grad():
        stack.enter_context(
            _replace_input(_down(pair, 1), lambda x: torch.cat([x[..., :5], 0 * x[..., 5:6], x[..., 6:]], -1))
        )
        expected = _hf_logits(pair, prompt.tokens[None])[0, prompt.site].softmax(-1)[prompt.target_ids[0]].item()
    assert prob == pytest.approx(expected, abs=1e-6)
    assert {name: len(point.fwd_hooks) for name, point in pair.bridge.hook_dict.items()} == before


def test_cli_on_a_bridge(pair, capsys):
    from kn_lens.cli import main

    assert main(["--model", str(pair.folder), "--backend", "bridge", "decode", "L1N5", "-k", "3"]) == 0
    out = capsys.readouterr().out
    for token in kn_lens.decode(pair.bridge, (1, 5), k=3).top_tokens:
        assert token.strip() in out


def test_processed_bridge_gives_the_same_science(pair):
    """A bridge in the default compatibility mode (layer norms folded, weights centred): logits move by a constant
    per position, so probabilities, IG scores and the lens's token rankings stay the same."""
    from transformer_lens.model_bridge import TransformerBridge

    processed = TransformerBridge.boot_transformers(str(pair.folder), device="cpu")
    processed.enable_compatibility_mode(disable_warnings=True)
    prompt, again = _prompts(pair, pair.bridge)[0], _prompts(pair, processed)[0]
    with torch.no_grad():
        probs = pair.bridge(prompt.tokens[None]).softmax(-1)
        torch.testing.assert_close(processed(again.tokens[None]).softmax(-1), probs, atol=1e-6, rtol=0)
    scores = kn_lens.integrated_gradients(pair.bridge, prompt, n_steps=5)
    torch.testing.assert_close(
        kn_lens.integrated_gradients(processed, again, n_steps=5), scores, atol=1e-4 * scores.abs().max().item(), rtol=0
    )
    assert kn_lens.decode(processed, (1, 5), k=5).top_ids == kn_lens.decode(pair.bridge, (1, 5), k=5).top_ids


# ---------------------------------------------------------------------------------------------------------------
# The embedded model and the trained tiny BERT on the bridge
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.embedded
def test_embedded_smollm2_on_the_bridge(request):
    bridge = kn_lens.load_model(backend="bridge")
    prompt = kn_lens.make_prompt(bridge, "The capital of France is", " Paris")
    assert bridge.cfg.default_prepend_bos is False and bridge.cfg.n_layers == 30
    with torch.no_grad():
        logits = bridge(prompt.tokens[None])
    assert logits[0, -1].argmax().item() == prompt.target_ids[0]
    if backends.HAS_HOOKED:
        hooked = request.getfixturevalue("smollm2")
        assert torch.equal(kn_lens.make_prompt(hooked, "The capital of France is", " Paris").tokens, prompt.tokens)
        with torch.no_grad():
            torch.testing.assert_close(logits, hooked(prompt.tokens[None]), atol=1e-4, rtol=0)


def test_tiny_bert_knowledge_neurons_on_the_bridge():
    """The trained tiny BERT: the bridge finds knowledge neurons whose suppression lowers the fact."""
    from kn_lens.fixtures import tiny_bert

    bridge = tiny_bert.load("bridge")
    fact = tiny_bert.FACTS[0]
    found = kn_lens.find_knowledge_neurons(bridge, tiny_bert.train_prompts(fact), fact.answer, n_steps=10)
    assert found.neurons
    table = kn_lens.suppress(bridge, found)
    assert (table.after < table.before).mean() > 0.5
    if backends.HAS_HOOKED:
        hooked = tiny_bert.load("hooked")
        again = kn_lens.find_knowledge_neurons(hooked, tiny_bert.train_prompts(fact), fact.answer, n_steps=10)
        assert again.neurons == found.neurons
        pd.testing.assert_frame_equal(table, kn_lens.suppress(hooked, again), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tiny_bridge():
    from kn_lens.fixtures import tiny_bert

    return tiny_bert.load("bridge")


@pytest.fixture(scope="module")
def number_task():
    from kn_lens import skill
    from kn_lens.fixtures import tiny_bert

    agreement = tiny_bert.AGREEMENT["train"] + tiny_bert.AGREEMENT["heldout"]
    texts = [a.prompt.replace("[MASK]", "the") for a in agreement]
    return skill.make_task(texts, [int(a.plural) for a in agreement], name="number", classes=("singular", "plural"))


def test_skill_neurons_on_the_bridge(tiny_bridge, number_task):
    """Soft prompts write the token embeddings (not the bridge's post-LayerNorm ``hook_embed`` alias of BERT)."""
    from kn_lens import skill
    from kn_lens.fixtures import tiny_bert
    from kn_lens.skill.prompting import _embed_hook_name

    hook = _embed_hook_name(tiny_bridge)
    prompt = kn_lens.make_prompt(tiny_bridge, "The capital of France is [MASK] .", "Paris")
    seen = {}
    with torch.no_grad():
        tiny_bridge.run_with_hooks(prompt.tokens[None], fwd_hooks=[(hook, lambda x, hook: seen.setdefault("x", x))])
    torch.testing.assert_close(seen["x"][0], backends.embed(tiny_bridge)[prompt.tokens], atol=0, rtol=0)

    generator = torch.Generator().manual_seed(0)
    soft = skill.SoftPrompt(torch.randn(3, tiny_bridge.cfg.d_model, generator=generator), ("violin", "piano"))
    margins = skill.margins(tiny_bridge, number_task, prompt=soft, split="dev", progress=False)
    assert torch.isfinite(margins).all()
    means = skill.task_mean_activations(tiny_bridge, number_task, prompt=soft)
    predictivity = skill.predictivity(tiny_bridge, number_task, prompt=soft, progress=False)
    with pytest.raises(TypeError, match="backend='hooked'"):
        skill.prune(tiny_bridge, predictivity.mask(0.5, per_layer=True), means)
    if backends.HAS_HOOKED:
        hooked = tiny_bert.load("hooked")
        torch.testing.assert_close(
            margins, skill.margins(hooked, number_task, prompt=soft, split="dev", progress=False), atol=1e-4, rtol=0
        )
        torch.testing.assert_close(
            means, skill.task_mean_activations(hooked, number_task, prompt=soft), atol=1e-4, rtol=0
        )
        again = skill.predictivity(hooked, number_task, prompt=soft, progress=False)
        assert again.mask(0.01).sum() == predictivity.mask(0.01).sum()


def test_evaluation_on_the_bridge(tiny_bridge, tmp_path):
    from _tiny_pararel import write_tiny_pararel

    from kn_lens.datasets import pararel
    from kn_lens.evaluation import erase_relation, evaluate_fact, relation_neurons

    bags = pararel.load(write_tiny_pararel(tmp_path)).bags(tiny_bridge)
    capitals = bags[:12]
    saved = _state(tiny_bridge)
    records = [evaluate_fact(tiny_bridge, bag, same_relation=capitals[:2]) for bag in capitals[:2]]
    neurons = relation_neurons(records, top=5, min_count=1)
    table = erase_relation(tiny_bridge, capitals, neurons, other_facts=bags[12:16])
    _assert_bit_exact(tiny_bridge, saved)
    if backends.HAS_HOOKED:
        from kn_lens.fixtures import tiny_bert

        hooked = tiny_bert.load("hooked")
        hooked_bags = pararel.load(write_tiny_pararel(tmp_path / "again")).bags(hooked)
        hooked_records = [evaluate_fact(hooked, bag, same_relation=hooked_bags[:2]) for bag in hooked_bags[:2]]
        assert [r["neurons"] for r in hooked_records] == [r["neurons"] for r in records]
        again = erase_relation(hooked, hooked_bags[:12], neurons, other_facts=hooked_bags[12:16])
        pd.testing.assert_frame_equal(table, again, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------------------


def test_plain_modules_are_rejected(pair):
    with pytest.raises(TypeError, match="TransformerBridge"):
        kn_lens.integrated_gradients(torch.nn.Linear(2, 2), "x", " y")
    with pytest.raises(TypeError, match="save_pretrained"):
        kn_lens.decode(pair.hf, (0, 1))


def test_bridge_without_compatibility_mode_says_what_to_do(pair):
    from transformer_lens.model_bridge import TransformerBridge

    raw = TransformerBridge.boot_transformers(str(pair.folder), device="cpu")
    with pytest.raises(TypeError, match=r"enable_compatibility_mode\(no_processing=True\)"):
        kn_lens.decode(raw, (0, 1))
    with pytest.raises(TypeError, match="enable_compatibility_mode"):
        kn_lens.erase(raw, [(0, 1)])


def test_mixture_of_experts_is_rejected(tmp_path, tokenizers):
    import transformers

    torch.manual_seed(0)
    config = transformers.MixtralConfig(
        vocab_size=len(tokenizers["causal"]),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
    )
    transformers.MixtralForCausalLM(config).save_pretrained(tmp_path)
    tokenizers["causal"].save_pretrained(tmp_path)
    moe = kn_lens.load_model(tmp_path, backend="bridge")
    with pytest.raises(TypeError, match="mixture-of-experts"):
        kn_lens.integrated_gradients(moe, "The capital of France is", " Paris")


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        kn_lens.load_model(backend="nnsight")
    if not backends.HAS_HOOKED:
        with pytest.raises(ValueError, match="backend='bridge'"):
            kn_lens.load_model(backend="hooked")


def test_cli_evaluation_commands_take_the_bridge(capsys):
    import json

    from kn_lens.cli import main

    prompts = ["The capital of France is [MASK].", "France has its capital in [MASK]."]
    base = ["enhance", "Paris", prompts[0], "--neurons", "L1N253", "--json", "--model", "tiny-bert"]
    assert main([*base, "--backend", "bridge"]) == 0
    bridge_rows = json.loads(capsys.readouterr().out)["rows"]
    assert bridge_rows and all(r["after"] >= 0 for r in bridge_rows)
    if backends.HAS_HOOKED:
        assert main([*base, "--backend", "hooked"]) == 0
        hooked_rows = json.loads(capsys.readouterr().out)["rows"]
        assert [r["after"] for r in hooked_rows] == pytest.approx([r["after"] for r in bridge_rows], abs=1e-5)


def test_skill_neurons_on_a_bridge(pair):
    """kn_lens.skill on every family, RoBERTa (the paper's model) included where the bridge has an adapter."""
    from kn_lens import hooks, skill

    encoder = pair.family in ENCODERS
    texts = [f"The {w} {v} there." for w in ("cat", "dog", "bird", "cow") for v in ("sat", "ran", "slept")]
    task = skill.make_task(texts, [i % 2 for i in range(len(texts))], dev=1 / 3, test=1 / 6)
    verbalizer = ("a", "these") if encoder else (" bad", " good")
    prompt = skill.HardPrompt("{text} [MASK]." if encoder else "{text} It was", verbalizer)
    result = skill.predictivity(pair.bridge, task, prompt=prompt, progress=False)
    assert result.per_position.shape[1:] == (2, pair.bridge.cfg.d_mlp) and float(result.per_position.min()) >= 0.5
    if pair.hooked is not None:
        reference = skill.predictivity(pair.hooked, task, prompt=prompt, progress=False)
        torch.testing.assert_close(result.thresholds, reference.thresholds, atol=1e-5, rtol=1e-4)
        assert result.positions == reference.positions
    mask = result.mask(0.5)
    perturbed = hooks.perturb(mask, "zero", positions=list(result.positions))
    clean = skill.margins(pair.bridge, task, prompt=prompt, split="train", progress=False)
    changed = skill.margins(pair.bridge, task, prompt=prompt, split="train", fwd_hooks=perturbed, progress=False)
    assert not torch.equal(changed, clean)
    if pair.hooked is not None:
        expected = skill.margins(pair.hooked, task, prompt=prompt, split="train", fwd_hooks=perturbed, progress=False)
        torch.testing.assert_close(changed, expected, atol=1e-4, rtol=1e-4)
    before = _state(pair.bridge)
    soft = skill.train_soft_prompt(
        pair.bridge, task, verbalizer, n_tokens=2, steps=3, batch_size=4, eval_every=3, progress=False,
        placement="end",
    )  # fmt: skip
    _assert_bit_exact(pair.bridge, before)
    assert soft.history and 0 <= soft.dev_accuracy <= 1
    with pytest.raises(TypeError, match="backend='hooked'"):
        skill.prune(pair.bridge, mask | True, torch.zeros(mask.shape))
