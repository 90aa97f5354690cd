"""Prompts and targets: mask / last-position sites, multi-token targets, and one clear error per bad input."""

from __future__ import annotations

import pytest
import torch

import kn_lens
from kn_lens import make_prompt, make_prompts
from kn_lens.scoring import target_scores

# --- encoder prompts (the tiny BERT: whole-word vocabulary) -------------------------------------------------


def test_encoder_site_is_the_mask(tiny_bert):
    tokenizer = tiny_bert.tokenizer
    prompt = make_prompt(tiny_bert, "Raymond is selling [MASK] sketches.", "these")
    expected = ["[CLS]", "Raymond", "is", "selling", "[MASK]", "sketches", ".", "[SEP]"]
    assert tokenizer.convert_ids_to_tokens(prompt.tokens.tolist()) == expected
    assert prompt.site == 4 and prompt.positions == (4,)
    assert prompt.target_ids == (tokenizer.convert_tokens_to_ids("these"),)
    assert not prompt.causal and prompt.target == "these"


def test_encoder_multi_token_target_widens_the_mask(tiny_bert):
    tokenizer = tiny_bert.tokenizer
    prompt = make_prompt(tiny_bert, "The capital of France is [MASK].", "Paris Rome")
    tokens = tokenizer.convert_ids_to_tokens(prompt.tokens.tolist())
    assert tokens == ["[CLS]", "The", "capital", "of", "France", "is", "[MASK]", "[MASK]", ".", "[SEP]"]
    assert prompt.site == 6 and prompt.positions == (6, 7)
    assert prompt.target_ids == tuple(tokenizer.convert_tokens_to_ids(["Paris", "Rome"]))


def test_explicit_position(tiny_bert):
    text = "The capital of France is Paris."
    prompt = make_prompt(tiny_bert, text, "Paris", position=-3)
    tokens = tiny_bert.tokenizer.convert_ids_to_tokens(prompt.tokens.tolist())
    assert tokens[prompt.site] == "Paris" and prompt.site == len(tokens) - 3 and prompt.positions == (prompt.site,)
    assert make_prompt(tiny_bert, text, "Paris", position=prompt.site).site == prompt.site


def test_explicit_position_out_of_range(tiny_bert):
    with pytest.raises(ValueError, match="outside the prompt"):
        make_prompt(tiny_bert, "The capital of France is Paris.", "Paris", position=50)


def test_explicit_position_with_multi_token_target(tiny_bert):
    with pytest.raises(ValueError, match="single-token target"):
        make_prompt(tiny_bert, "The capital of France is Paris.", "Paris Rome", position=5)


def test_encoder_prompt_without_mask(tiny_bert):
    with pytest.raises(ValueError, match=r"exactly one \[MASK\].*found no"):
        make_prompt(tiny_bert, "The capital of France is Paris.", "Paris")


def test_encoder_prompt_with_two_masks(tiny_bert):
    with pytest.raises(ValueError, match=r"exactly one \[MASK\].*found 2"):
        make_prompt(tiny_bert, "The capital of [MASK] is [MASK].", "Paris")


def test_encoder_target_not_in_vocabulary(tiny_bert):
    with pytest.raises(ValueError, match="not in the model's vocabulary"):
        make_prompt(tiny_bert, "The capital of France is [MASK].", "Atlantis")


# --- causal prompts (random models with the SmolLM2 tokenizer: only tokenisation matters here) --------------


def test_causal_site_is_the_last_position(random_gpt2):
    tokenizer = random_gpt2.tokenizer
    prompt = make_prompt(random_gpt2, "The capital of France is", " Paris")
    expected = tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]
    assert prompt.tokens.tolist() == expected
    assert prompt.site == len(expected) - 1 and prompt.positions == (prompt.site,)
    assert prompt.target_ids == tuple(tokenizer(" Paris", add_special_tokens=False)["input_ids"]) and prompt.causal


def test_causal_multi_token_target_is_teacher_forced(random_llama):
    tokenizer = random_llama.tokenizer
    text, target = "The capital of France is", " Paris, the city of light"
    prompt = make_prompt(random_llama, text, target)
    n_prompt = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    joint = tokenizer(text + target, add_special_tokens=False)["input_ids"]
    k = len(joint) - n_prompt
    assert k > 3
    assert prompt.target_ids == tuple(joint[n_prompt:])
    assert prompt.tokens.tolist() == joint[:-1]  # the last target token is predicted, never fed in
    assert prompt.positions == tuple(range(n_prompt - 1, n_prompt - 1 + k))
    # Independent check: the teacher-forced log-probability is the sum over the full sequence's next tokens.
    with torch.no_grad():
        logprobs = random_llama(torch.tensor([joint])).log_softmax(-1)[0]
    expected = sum(logprobs[n_prompt - 1 + i, joint[n_prompt + i]] for i in range(k))
    got = target_scores(random_llama, [prompt], objective="logprob")[0]
    assert torch.allclose(got, expected, atol=1e-5)


def test_causal_target_glued_without_space(random_gpt2):
    with pytest.raises(ValueError, match=r"glued.*did you mean ' Paris'"):
        make_prompt(random_gpt2, "The capital of France is", "Paris")


def test_causal_target_split_differently(random_gpt2):
    # The trailing space becomes its own token; " Paris" then merges differently with it in the sentence.
    with pytest.raises(ValueError, match="tokenised differently inside the sentence"):
        make_prompt(random_gpt2, "The capital of France is ", "Paris")


# --- any model --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["tiny_bert", "random_gpt2"])
@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_prompt(request, model_name, text):
    with pytest.raises(ValueError, match="prompt is empty"):
        make_prompt(request.getfixturevalue(model_name), text)


def test_prompt_longer_than_context_encoder(tiny_bert):
    text = "Raymond is selling " * 20 + "[MASK] sketches."
    with pytest.raises(ValueError, match=f"longer than the model's context of {tiny_bert.cfg.n_ctx}"):
        make_prompt(tiny_bert, text, "these")


def test_prompt_longer_than_context_causal(random_gpt2):
    with pytest.raises(ValueError, match=f"longer than the model's context of {random_gpt2.cfg.n_ctx}"):
        make_prompt(random_gpt2, "The capital of France is Paris. " * 20, " Paris")


def test_empty_target(tiny_bert):
    with pytest.raises(ValueError, match="empty string"):
        make_prompt(tiny_bert, "The capital of France is [MASK].", "")


@pytest.mark.parametrize("target", [-1, 10**6, [3, 10**6]])
def test_target_id_out_of_range(tiny_bert, target):
    with pytest.raises(ValueError, match="not in the vocabulary"):
        make_prompt(tiny_bert, "The capital of France is [MASK].", target)


@pytest.mark.parametrize("target", [1.0, [True], ["Paris"], {"Paris"}])
def test_target_of_wrong_type(tiny_bert, target):
    with pytest.raises(TypeError, match=r"must be a str, a token id|must be ints"):
        make_prompt(tiny_bert, "The capital of France is [MASK].", target)


def test_target_given_as_ids(tiny_bert):
    paris = tiny_bert.tokenizer.convert_tokens_to_ids("Paris")
    by_id = make_prompt(tiny_bert, "The capital of France is [MASK].", paris)
    by_text = make_prompt(tiny_bert, "The capital of France is [MASK].", "Paris")
    assert by_id.target_ids == by_text.target_ids == (paris,)
    assert torch.equal(by_id.tokens, by_text.tokens)


def test_unsupported_model_type(tiny_bert):
    from transformers import BertConfig, BertForMaskedLM

    with pytest.raises(TypeError, match="TransformerBridge in compatibility mode"):
        make_prompt(BertForMaskedLM(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1)), "x")


@pytest.mark.hooked_only("builds an attention-only HookedTransformer")
def test_model_without_mlp():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(d_model=16, d_head=8, n_heads=2, n_layers=1, n_ctx=16, d_vocab=50, attn_only=True)
    with pytest.raises(ValueError, match="no MLP layers"):
        make_prompt(HookedTransformer(cfg), "x")


def test_prompt_must_be_text(tiny_bert):
    with pytest.raises(TypeError, match="prompt must be a str"):
        make_prompt(tiny_bert, ["The capital of France is [MASK]."])


def test_make_prompts_counts_must_match(tiny_bert):
    with pytest.raises(ValueError, match="got 2 prompts but 3 targets"):
        make_prompts(tiny_bert, ["[MASK] a.", "[MASK] b."], ["Paris", "Rome", "Oslo"])


def test_with_target_keeps_an_explicit_site_and_finds_a_natural_one(smollm2):
    natural = make_prompt(smollm2, "The capital of France is", " Paris")
    explicit = make_prompt(smollm2, "The capital of France is", " Paris", position=2)
    assert not natural.explicit_site and explicit.explicit_site
    rome = smollm2.to_single_token(" Rome")
    assert natural.with_target(smollm2, " Rome").site == natural.site == 4
    moved = explicit.with_target(smollm2, " Rome")
    assert moved.site == 2 and moved.explicit_site and moved.target_ids == (rome,)


def test_a_list_of_ids_with_one_per_prompt_is_ambiguous_and_both_meanings_can_be_said(smollm2):
    """[id, id] for two prompts was always read as one two-token target, with no way to ask for one id each."""
    from kn_lens.inputs import to_prompts
    from kn_lens.prompts import split_targets

    texts = ["The capital of France is", "The capital of Italy is"]
    paris, rome = (smollm2.tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in (" Paris", " Rome"))
    for make in (make_prompts, to_prompts):
        with pytest.raises(ValueError, match=r"ambiguous .*\[\[\d+\], \[\d+\]\] for one token id per prompt"):
            make(smollm2, texts, [paris, rome])
        each = make(smollm2, texts, [[paris], [rome]])
        assert [p.target_ids for p in each] == [(paris,), (rome,)]
        both = make(smollm2, texts, (paris, rome))
        assert [p.target_ids for p in both] == [(paris, rome), (paris, rome)]
    with pytest.raises(ValueError, match="ambiguous"):
        kn_lens.target_scores(smollm2, texts, [paris, rome])
    with pytest.raises(ValueError, match="ambiguous"):
        kn_lens.integrated_gradients_many(smollm2, texts, [paris, rome], layers=[0])
    # a list of another length, or one prompt, can only mean one multi-token target
    assert split_targets([paris, rome, paris], 2) == [[paris, rome, paris]] * 2
    assert [p.target_ids for p in make_prompts(smollm2, texts[:1], [paris, rome])] == [(paris, rome)]
    # one fact has one answer: there a list of ids is that answer
    assert (
        kn_lens.evaluation.intervention_effects(
            smollm2, ["L3N5"], texts[:2], [paris, rome], random_seeds=(), interventions={"x0": 0.0}
        )["target"].nunique()
        == 1
    )
