"""Weight edits: the forward pass uses them, and the weights come back bit for bit, also after an exception."""

from __future__ import annotations

import pytest
import torch

import kn_lens
from kn_lens import edit, hooks
from kn_lens._typing import Neuron

pytestmark = pytest.mark.both_backends  # edits write a bridge's transformers weights

NEURONS = [Neuron(0, 3), Neuron(2, 5), Neuron(2, 60)]


@pytest.fixture(scope="module")
def model(random_llama):
    return random_llama


@pytest.fixture(scope="module")
def tokens(model):
    return kn_lens.make_prompt(model, "The capital of France is").tokens[None]


def _snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _same_bits(model, snapshot):
    return all(torch.equal(p, snapshot[name]) for name, p in model.named_parameters())


def test_erase_zero_equals_zero_ablation_and_restores(model, tokens):
    before = _snapshot(model)
    expected = model.run_with_hooks(tokens, fwd_hooks=hooks.ablate(NEURONS, positions="all"))
    with edit.erase(model, NEURONS) as handle:
        assert handle.applied
        for n in NEURONS:
            assert torch.all(model.blocks[n.layer].mlp.W_out[n.index] == 0)
        erased = model(tokens)
    # zeroing the value vector == zeroing the activation, everywhere
    torch.testing.assert_close(erased, expected, rtol=0, atol=1e-5)
    assert not handle.applied
    assert _same_bits(model, before)


def test_restore_after_exception(model):
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom"), edit.edit_fact(model, NEURONS, " Paris", " Rome"):
        assert not _same_bits(model, before)
        raise RuntimeError("boom")
    assert _same_bits(model, before)
    with pytest.raises(KeyError), edit.erase(model, NEURONS, mode="unk"):
        raise KeyError("x")
    assert _same_bits(model, before)


def test_permanent_apply_and_restore(model):
    before = _snapshot(model)
    handle = edit.erase(model, ["L1N7"])
    assert torch.all(model.blocks[1].mlp.W_out[7] == 0)
    assert "applied" in repr(handle)
    handle.restore()
    handle.restore()  # idempotent
    assert _same_bits(model, before)


def test_nested_edits_restore_originals(model):
    before = _snapshot(model)
    with edit.erase(model, NEURONS[:2]), edit.edit_fact(model, NEURONS[1:], " Paris", " Rome"):
        pass
    assert _same_bits(model, before)


def test_erase_unk_uses_unknown_token_embedding(model):
    unk = model.tokenizer.unk_token_id
    with edit.erase(model, NEURONS, mode="unk"):
        for n in NEURONS:
            assert torch.equal(model.blocks[n.layer].mlp.W_out[n.index], model.W_E[unk])
    with edit.erase(model, ["L1N1"], mode="unk", token=" Paris"):
        paris = model.tokenizer(" Paris", add_special_tokens=False)["input_ids"]
        torch.testing.assert_close(model.blocks[1].mlp.W_out[1], model.W_E[paris].mean(0))


def test_edit_fact_is_dai_update(model):
    paris = model.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    rome = model.tokenizer(" Rome", add_special_tokens=False)["input_ids"][0]
    old_rows = kn_lens.lens.value_vectors(model, NEURONS)
    with edit.edit_fact(model, NEURONS, paris, rome, lambda1=1.0, lambda2=8.0):
        new_rows = kn_lens.lens.value_vectors(model, NEURONS)
    expected = old_rows - model.W_E[paris] + 8.0 * model.W_E[rome]
    torch.testing.assert_close(new_rows, expected.detach())


def test_edit_changes_prediction(model, tokens):
    """The edited weights are used by the forward: writing a token's embedding raises that token's logit."""
    rome = model.tokenizer(" Rome", add_special_tokens=False)["input_ids"][0]
    base = model(tokens)[0, -1, rome]
    neurons = [Neuron(2, i) for i in range(model.cfg.d_mlp)]
    with edit.edit_fact(model, neurons, "the", " Rome", lambda1=0.0, lambda2=1.0):
        edited = model(tokens)[0, -1, rome]
    assert not torch.isclose(edited, base)
    assert torch.equal(model(tokens)[0, -1, rome], base)


def test_bad_inputs(model):
    before = _snapshot(model)
    with pytest.raises(ValueError, match="out of range"):
        edit.erase(model, ["L0N9999"])
    with pytest.raises(ValueError, match="out of range"):
        edit.erase(model, [(5, 1)])
    with pytest.raises(ValueError, match="no neurons"):
        edit.erase(model, [])
    with pytest.raises(ValueError, match="unknown erase mode"):
        edit.erase(model, NEURONS, mode="noise")
    with pytest.raises(ValueError, match="finite"):
        edit.edit_fact(model, NEURONS, " Paris", " Rome", lambda2=float("nan"))
    with pytest.raises(ValueError, match="vocabulary"):
        edit.edit_fact(model, NEURONS, 10**9, " Rome")
    with pytest.raises(TypeError):
        edit.erase(object(), NEURONS)
    assert _same_bits(model, before)


def test_encoder_model_edit(random_bert_model):
    model = random_bert_model
    before = _snapshot(model)
    with edit.erase(model, ["L0N1", "L1N2"], mode="unk"):
        assert torch.equal(model.blocks[1].mlp.W_out[2], model.W_E[model.tokenizer.unk_token_id])
    assert _same_bits(model, before)


@pytest.fixture(scope="module")
def random_bert_model(request):
    """The conftest's random BERT if there is one; else skip (the encoder path is also covered by tiny_bert)."""
    try:
        return request.getfixturevalue("random_bert")
    except pytest.FixtureLookupError:
        pytest.skip("no random_bert fixture in conftest yet")
