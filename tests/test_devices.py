"""Every dtype and device: half-precision models give the float32 results (to a stated tolerance), the model runs
in eval mode during every attribution and measurement (and is left as it was), and the memory planner splits
what would not fit a budget without changing a number.

Tolerances (measured on this machine, then stated with headroom): integrated gradients of a bfloat16 model are
within 3.4% (SmolLM2, layers 20/24/27/29, 5 steps) and 2.4% (tiny BERT) of the float32 model's scores, relative
to the largest score, and float16 within 0.3%; in these settings the top neurons and the knowledge neurons are
the same sets (Jaccard 1). Over all 30 layers of SmolLM2 at 20 steps bfloat16 differs by up to 9.9% (at the last
layer) and the knowledge neurons of 4 facts have a mean Jaccard of 0.85 (benchmarks/RESULTS.md, "Dtypes"). The
bfloat16 fast path and the bfloat16 plain path agree within 0.1% (before the fast path used TransformerLens' own
half-precision arithmetic they differed by 1.6%).

Tests marked ``cuda`` (``mps``) run on a CUDA GPU (Apple's MPS) and are skipped without one.
"""

from __future__ import annotations

import copy

import pytest
import torch

import kn_lens
from kn_lens import _device, skill
from kn_lens import attribution as A
from kn_lens import evaluation as evaluate
from kn_lens.attribution import _fast, _memory
from kn_lens.attribution._common import plain_row_bytes
from kn_lens.backends import HAS_HOOKED
from kn_lens.prompts import make_prompt
from kn_lens.scoring import objective_from_logits

pytestmark = pytest.mark.skipif(not HAS_HOOKED, reason="HookedTransformer (TransformerLens 3.x) needed")

PARAPHRASES = ["The capital of France is", "France's capital city is", "The French capital is"]
SMOL_LAYERS = [20, 24, 27, 29]
HALF_TOL = {torch.bfloat16: 0.05, torch.float16: 0.005}  # measured: 3.4% / 0.2% (SmolLM2), 2.4% / 0.3% (BERT)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the largest magnitude of the reference ``b``."""
    return float((a - b).abs().max() / b.abs().max())


def _jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b)


def _half(model, dtype: torch.dtype):
    return copy.deepcopy(model).to(dtype)


# ------------------------------------------------------------------------------------------- dtype helpers


def test_accumulator_dtype_has_no_float64_on_mps():
    assert _device.accumulator_dtype("cpu") == torch.float64
    assert _device.accumulator_dtype(torch.device("cuda", 1)) == torch.float64
    assert _device.accumulator_dtype("mps") == torch.float32


def test_objective_of_half_logits_is_computed_in_float32(smollm2):
    prompt = make_prompt(smollm2, PARAPHRASES[0], " Paris")
    with torch.no_grad():
        logits = smollm2(prompt.tokens[None]).to(torch.bfloat16)
    for objective in ("prob", "logprob", "logit"):
        got = objective_from_logits(logits, prompt, objective)
        assert got.dtype == torch.float32
        # the same numbers as the float32 computation on the same (rounded) logits, to float32 rounding
        assert torch.allclose(got, objective_from_logits(logits.float(), prompt, objective), rtol=1e-6, atol=0)
    seen = {}

    def metric(logits, prompts):
        seen["dtype"] = logits.dtype
        return logits[:, -1, 0]

    assert objective_from_logits(logits, prompt, metric).dtype == torch.float32
    assert seen["dtype"] == torch.float32


# ---------------------------------------------------------------------------------------- half precision


@pytest.fixture(scope="module")
def smollm2_bf16(smollm2):
    return _half(smollm2, torch.bfloat16)


@pytest.fixture(scope="module")
def smollm2_f32_scores(smollm2):
    return A.integrated_gradients(smollm2, PARAPHRASES[0], " Paris", layers=SMOL_LAYERS, n_steps=5)


def test_bf16_smollm2_gives_the_float32_scores_and_neurons(smollm2, smollm2_bf16, smollm2_f32_scores):
    kw = dict(layers=SMOL_LAYERS, n_steps=5)
    scores = A.integrated_gradients(smollm2_bf16, PARAPHRASES[0], " Paris", **kw)
    assert scores.dtype == torch.float32 and scores.device.type == "cpu"
    assert _rel(scores, smollm2_f32_scores) < HALF_TOL[torch.bfloat16]
    top = kn_lens.top_neurons(scores, 10)
    assert _jaccard(top, kn_lens.top_neurons(smollm2_f32_scores, 10)) == 1.0
    half = kn_lens.find_knowledge_neurons(smollm2_bf16, PARAPHRASES, " Paris", **kw)
    full = kn_lens.find_knowledge_neurons(smollm2, PARAPHRASES, " Paris", **kw)
    assert half.neurons == full.neurons and len(full.neurons) >= 3


def test_bf16_fast_path_matches_the_bf16_plain_path(smollm2_bf16):
    """The fast path recomputes blocks by hand: in half precision it must round as TransformerLens does."""
    kw = dict(layers=[24, 29], n_steps=3)
    fast = A.integrated_gradients(smollm2_bf16, PARAPHRASES[0], " Paris", **kw)
    plain = A.integrated_gradients(smollm2_bf16, PARAPHRASES[0], " Paris", fast=False, **kw)
    assert _rel(fast, plain) < 0.005  # measured 0.1% (1.6% with x @ W and the residual shifted by a difference)


def test_bf16_measurements_are_float32(smollm2, smollm2_bf16):
    prompts = kn_lens.make_prompts(smollm2, PARAPHRASES, " Paris")
    half = kn_lens.target_scores(smollm2_bf16, prompts)
    assert half.dtype == torch.float32
    # a bfloat16 logit carries ~0.06 of absolute rounding: probabilities within 10% (measured 5.7%)
    assert torch.allclose(half, kn_lens.target_scores(smollm2, prompts), rtol=0.1, atol=0)
    measured = evaluate.measure(smollm2_bf16, prompts)
    assert measured.prob.dtype == torch.float32 and torch.allclose(measured.prob, half, rtol=1e-5)
    assert abs(evaluate.text_perplexity(smollm2_bf16) / evaluate.text_perplexity(smollm2) - 1) < 0.05
    effect = kn_lens.direct_effect(smollm2_bf16, "L29N1066", prompts)
    assert effect.dtype == torch.float32
    assert torch.allclose(effect, kn_lens.direct_effect(smollm2, "L29N1066", prompts), rtol=0.05)
    for neuron in ("L24N1005", "L29N1066"):  # the lens reads the vocabulary in float32: the same top 10 tokens
        half, full = kn_lens.decode(smollm2_bf16, neuron, k=10), kn_lens.decode(smollm2, neuron, k=10)
        assert set(half.top_ids) == set(full.top_ids) and set(half.bottom_ids) == set(full.bottom_ids)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_tiny_bert_gives_the_float32_scores_and_neurons(tiny_bert, dtype):
    from kn_lens.fixtures import tiny_bert as fixture

    fact = fixture.FACTS[0]
    prompts = fixture.train_prompts(fact)
    half_model = _half(tiny_bert, dtype)
    full = A.integrated_gradients_many(tiny_bert, prompts, fact.answer, n_steps=10, progress=False)
    half = A.integrated_gradients_many(half_model, prompts, fact.answer, n_steps=10, progress=False)
    assert half.dtype == torch.float32
    assert _rel(half, full) < HALF_TOL[dtype]
    kw = dict(n_steps=10)
    assert (
        kn_lens.find_knowledge_neurons(half_model, prompts, fact.answer, **kw).neurons
        == kn_lens.find_knowledge_neurons(tiny_bert, prompts, fact.answer, **kw).neurons
    )
    gxa = A.grad_x_activation(half_model, prompts[0], fact.answer)
    assert gxa.dtype == torch.float32
    assert _rel(gxa, A.grad_x_activation(tiny_bert, prompts[0], fact.answer)) < 4 * HALF_TOL[dtype]


# ------------------------------------------------------------------------------------------------ eval mode


def _training(model) -> dict[int, bool]:
    return {id(m): m.training for m in _device._modules(model)}


@pytest.fixture(scope="module")
def dropout_gpt2(tmp_path_factory, smollm2):
    """A random GPT-2 with dropout 0.1 everywhere, as a TransformerBridge (HookedTransformer has no dropout)."""
    import transformers

    tokenizer = smollm2.tokenizer
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=4)
    assert config.resid_pdrop > 0
    folder = tmp_path_factory.mktemp("dropout_gpt2")
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return kn_lens.load_model(folder, backend="bridge")


_CALLS = {
    "ig": lambda m: A.integrated_gradients(m, PARAPHRASES[0], " Paris", n_steps=3),
    "ig_many": lambda m: A.integrated_gradients_many(m, PARAPHRASES[:2], " Paris", n_steps=2, progress=False),
    "ig_plain": lambda m: A.integrated_gradients(m, PARAPHRASES[0], " Paris", n_steps=3, fast=False),
    "grad_x_act": lambda m: A.grad_x_activation(m, PARAPHRASES[0], " Paris"),
    "ablation": lambda m: A.ablation_effects(m, PARAPHRASES[0], " Paris", layers=[1]),
    "target_scores": lambda m: kn_lens.target_scores(m, PARAPHRASES, " Paris"),
    "measure": lambda m: evaluate.measure(m, kn_lens.make_prompts(m, PARAPHRASES, " Paris")).logprob,
    "cache": lambda m: kn_lens.cache_mlp_post(m, PARAPHRASES, progress=False)[1],
}


@pytest.mark.bridge
@pytest.mark.parametrize("call", list(_CALLS))
def test_train_mode_gives_the_eval_scores_and_is_restored(dropout_gpt2, call):
    model = dropout_gpt2
    model.eval()
    expected = _CALLS[call](model)
    model.train()
    before = _training(model)
    assert any(isinstance(m, torch.nn.Dropout) and m.training for m in _device._modules(model))
    try:
        got = _CALLS[call](model)
        assert _training(model) == before, "the model's train/eval modes were not restored"
    finally:
        model.eval()
    assert _rel(got, expected) < 1e-5, "dropout was applied during the call"  # relative: a random model's p is tiny


def test_modes_are_restored_module_by_module_also_after_an_error(tiny_bert):
    tiny_bert.blocks[1].train()  # only part of the model training: exactly that part is put back
    before = _training(tiny_bert)
    assert any(before.values()) and not all(before.values())

    def broken(logits, prompts):
        assert not any(m.training for m in tiny_bert.modules())
        raise RuntimeError("boom")

    try:
        with pytest.raises(RuntimeError, match="boom"):
            A.integrated_gradients(tiny_bert, "The capital of France is [MASK] .", "Paris", objective=broken)
        assert _training(tiny_bert) == before
        A.integrated_gradients(tiny_bert, "The capital of France is [MASK] .", "Paris", n_steps=2)
        assert _training(tiny_bert) == before
    finally:
        tiny_bert.eval()


# ------------------------------------------------------------------------------------------ memory planner


def test_memory_budget_is_checked_before_anything_runs(random_llama):
    with pytest.raises(TypeError, match="memory_budget must be a number of bytes"):
        A.integrated_gradients(random_llama, PARAPHRASES[0], " Paris", memory_budget="1GB")
    for bad in (0, -5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="memory_budget must be a positive number"):
            A.integrated_gradients(random_llama, PARAPHRASES[0], " Paris", memory_budget=bad)
    with pytest.raises(ValueError, match="memory_budget"):
        A.integrated_gradients_many(random_llama, PARAPHRASES, " Paris", memory_budget=0, progress=False)
    with pytest.raises(ValueError, match="memory_budget"):
        A.ablation_effects(random_llama, PARAPHRASES[0], " Paris", memory_budget=-1)


def _passes(model, fn) -> tuple[torch.Tensor, int]:
    """``fn()``'s result and how many forward passes ran (an identity hook on the embedding counts them)."""
    count = {"n": 0}

    def tick(act, hook):
        count["n"] += 1
        return act

    name = "blocks.0.hook_resid_pre"
    with model.hooks(fwd_hooks=[(name, tick)]):
        out = fn()
    return out, count["n"]


@pytest.mark.parametrize("name", ["random_llama", "tiny_bert"])
def test_plain_path_splits_steps_over_passes_with_the_same_scores(name, request):
    model = request.getfixturevalue(name)
    causal = name == "random_llama"
    text, target = (PARAPHRASES[0], " Paris") if causal else ("France has its capital in [MASK] .", "Paris")
    prompt = make_prompt(model, text, target)
    kw = dict(layers=[0, 1], n_steps=6, fast=False, return_convergence_delta=True)
    (whole, whole_delta), n_whole = _passes(model, lambda: A.integrated_gradients(model, prompt, **kw))
    cost = plain_row_bytes(model, prompt, "prob")
    small = lambda: A.integrated_gradients(model, prompt, memory_budget=2.5 * cost, **kw)  # noqa: E731
    (split, split_delta), n_split = _passes(model, small)
    # clean pass + per layer (one step pass + one baseline pass): 5 passes; split: 3 step passes of 2 rows per layer
    assert n_whole == 1 + 2 * 2 and n_split == 1 + 2 * (3 + 1)
    assert _rel(split, whole) < 1e-5 and torch.allclose(split_delta, whole_delta, atol=1e-6)


def test_plain_ablation_splits_by_the_budget(random_gpt2):
    prompt = make_prompt(random_gpt2, PARAPHRASES[0], " Paris")
    kw = dict(layers=[1], fast=False)
    whole, n_whole = _passes(random_gpt2, lambda: A.ablation_effects(random_gpt2, prompt, **kw))
    room = plain_row_bytes(random_gpt2, prompt, "prob") * 16 / _memory.NO_BACKWARD_FACTOR
    split, n_split = _passes(random_gpt2, lambda: A.ablation_effects(random_gpt2, prompt, memory_budget=room, **kw))
    # two clean passes (site activations, clean objective), then 64 neurons in one pass, or in passes of 16
    assert n_whole == 3 and n_split == 2 + random_gpt2.cfg.d_mlp // 16
    assert torch.allclose(split, whole, atol=1e-7)


def test_fast_plan_counts_the_model_dtype(smollm2, smollm2_bf16):
    """Half-precision rows take fewer bytes (the blocks' half; the float32 objective does not shrink), so the same
    budget plans fewer passes."""
    prompts = [make_prompt(smollm2, PARAPHRASES[0], " Paris")]
    cost = _fast._row_bytes(smollm2, prompts[0], 0, len(prompts[0]), "prob")
    half_cost = _fast._row_bytes(smollm2_bf16, prompts[0], 0, len(prompts[0]), "prob")
    assert 0.5 < half_cost / cost < 0.7
    full_plan = _fast._pack_plan(smollm2, prompts, [0], 40, "prob", None, 4 * cost)
    half_plan = _fast._pack_plan(smollm2_bf16, prompts, [0], 40, "prob", None, 4 * cost)
    assert len(full_plan) == 10 and 5 <= len(half_plan) <= 7


def test_logits_are_part_of_a_row(smollm2):
    """A row's logits (``positions x d_vocab``) are counted: most of a plain row of a short prompt on SmolLM2."""
    cfg = smollm2.cfg
    without = _memory.row_bytes(cfg, blocks=0, positions=8, keys=8, logit_positions=0, objective_positions=0)
    with_logits = _memory.row_bytes(cfg, blocks=0, positions=8, keys=8, logit_positions=8, objective_positions=1)
    assert without == 0 and with_logits >= 8 * cfg.d_vocab * 4 * 2


@pytest.mark.bridge
def test_bridge_fast_path_splits_rows_over_passes_with_the_same_scores(dropout_gpt2, monkeypatch):
    """The bridge's fast path plans its passes with the hooked one's planner: a budget of 3 rows splits
    2 layers x 4 steps (and the baseline rows) over several passes, and the scores do not change."""
    model = dropout_gpt2
    assert A.attribution_path(model)[0] == "bridge-fast"
    passes = {"n": 0}
    real_run = _fast._run

    def counting_run(*args, **kwargs):
        passes["n"] += 1
        return real_run(*args, **kwargs)

    monkeypatch.setattr(_fast, "_run", counting_run)
    prompt = make_prompt(model, PARAPHRASES[0], " Paris")
    kw = dict(n_steps=4, return_convergence_delta=True)
    whole, whole_delta = A.integrated_gradients(model, prompt, **kw)
    n_whole, passes["n"] = passes["n"], 0
    cost = max(_fast._row_bytes(model, prompt, layer, len(prompt), "prob") for layer in (0, 1))
    split, split_delta = A.integrated_gradients(model, prompt, memory_budget=3 * cost, **kw)
    assert n_whole == 1 and passes["n"] >= 3  # 10 rows: one pass, or passes of at most 3 rows
    assert _rel(split, whole) < 1e-5 and torch.allclose(split_delta, whole_delta, atol=1e-6)


def test_default_budget_per_device():
    assert _memory.default_budget("cpu") == _memory.CPU_BUDGET
    assert _memory.default_budget("mps") == _memory.MPS_BUDGET


# ------------------------------------------------------------------------------------------ accelerators

ACCELERATORS = [
    pytest.param(
        "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]
    ),
    pytest.param(
        "mps", marks=[pytest.mark.mps, pytest.mark.skipif(not torch.backends.mps.is_available(), reason="no MPS")]
    ),
]


@pytest.mark.parametrize("device", ACCELERATORS)
def test_scores_on_the_accelerator_equal_the_cpu_scores(device, random_llama, tiny_bert):
    for model, text, target in [
        (random_llama, PARAPHRASES[0], " Paris"),
        (tiny_bert, "France has its capital in [MASK] .", "Paris"),
    ]:
        moved = copy.deepcopy(model).to(device)
        for fast in (True, False):
            kw = dict(n_steps=5, fast=fast, return_convergence_delta=True)
            cpu, cpu_delta = A.integrated_gradients(model, text, target, **kw)
            acc, acc_delta = A.integrated_gradients(moved, text, target, **kw)
            assert acc.device.type == "cpu" and acc.dtype == torch.float32
            assert _rel(acc, cpu) < 1e-4 and torch.allclose(acc_delta, cpu_delta, atol=1e-5)
        ablation = A.ablation_effects(moved, text, target, layers=[0])
        assert torch.allclose(ablation, A.ablation_effects(model, text, target, layers=[0]), atol=1e-5)
        probs = kn_lens.target_scores(moved, [text], target)
        assert torch.allclose(probs, kn_lens.target_scores(model, [text], target))


@pytest.mark.parametrize("device", ACCELERATORS)
def test_bf16_on_the_accelerator(device, smollm2, smollm2_f32_scores):
    moved = copy.deepcopy(smollm2).to(device).to(torch.bfloat16)
    scores = A.integrated_gradients(moved, PARAPHRASES[0], " Paris", layers=SMOL_LAYERS, n_steps=5)
    assert _rel(scores, smollm2_f32_scores) < HALF_TOL[torch.bfloat16]
    kw = dict(layers=SMOL_LAYERS, n_steps=5)
    assert (
        kn_lens.find_knowledge_neurons(moved, PARAPHRASES, " Paris", **kw).neurons
        == kn_lens.find_knowledge_neurons(smollm2, PARAPHRASES, " Paris", **kw).neurons
    )


@pytest.mark.parametrize("device", ACCELERATORS)
def test_prune_with_cpu_means_on_the_accelerator(device, tiny_bert):
    moved = copy.deepcopy(tiny_bert).to(device)
    keep = torch.zeros(tiny_bert.cfg.n_layers, tiny_bert.cfg.d_mlp, dtype=torch.bool)
    keep[:, ::2] = True
    means = torch.rand(tiny_bert.cfg.n_layers, tiny_bert.cfg.d_mlp)  # on the CPU, as mean_activations returns
    small = skill.prune(moved, keep, means)
    reference = skill.prune(tiny_bert, keep, means)
    assert torch.allclose(small.blocks[0].mlp.b_out.cpu(), reference.blocks[0].mlp.b_out, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_default_cuda_budget_is_a_share_of_free_memory():
    free, _ = torch.cuda.mem_get_info()
    assert 0 < _memory.default_budget("cuda") <= free
