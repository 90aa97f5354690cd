"""Skill neurons: tasks, prompts, predictivity (against a hand computation), perturbation, pruning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _checks import no_hooks_left

import kn_lens
from kn_lens import hooks, skill
from kn_lens._typing import Neuron
from kn_lens.backends import get_act_name, token_embed_hook

PARAREL = Path(__file__).parent.parent.parent / "shared" / "pararel"
TEXTS = [f"The {w} {v} here." for w in ("cat", "dog", "bird", "fish", "cow", "ant") for v in ("sat", "ran", "slept")]
LABELS = [i % 2 for i in range(len(TEXTS))]


@pytest.fixture(scope="module")
def toy_task():
    return skill.make_task(TEXTS, LABELS, name="toy", dev=1 / 3, test=1 / 6)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(model, state):
    return all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------------------------


def test_make_task_is_stratified_seeded_and_disjoint():
    task = skill.make_task(TEXTS, LABELS, dev=1 / 3, test=1 / 6, seed=3)
    parts = [set(task.split(p).texts) for p in ("train", "dev", "test")]
    assert sum(map(len, parts)) == len(TEXTS) and not (
        parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2]
    )
    assert sorted(task.dev.labels) == [0, 0, 0, 1, 1, 1] and sorted(task.test.labels) == [0, 0, 0, 1, 1, 1][1:5]
    assert skill.make_task(TEXTS, LABELS, dev=1 / 3, test=1 / 6, seed=3) == task
    assert skill.make_task(TEXTS, LABELS, dev=1 / 3, test=1 / 6, seed=4) != task


@pytest.mark.parametrize(
    ("texts", "labels", "match"),
    [
        (["a", "b", "c"], [0, 1], "different lengths"),
        (["a", "b", "c"], [0, 1, 2], "binary"),
        (["a", "b", "c"], [0.0, 1.0, 1.0], "binary"),
        ([], [], "empty"),
    ],
)
def test_make_task_rejects_bad_input(texts, labels, match):
    with pytest.raises(ValueError, match=match):
        skill.make_task(texts, labels)


def test_task_rejects_an_empty_split():
    with pytest.raises(ValueError, match="empty"):
        skill.Task("t", skill.Split(("a",), (1,)), skill.Split((), ()), skill.Split(("b",), (0,)))
    with pytest.raises(ValueError, match="empty"):
        skill.make_task(["a", "b"], [0, 1], dev=0.2, test=0.2)


def test_binarize_one_vs_rest_and_pairs():
    texts, labels = ["a", "b", "c", "d"], ["entail", "neutral", "contra", "entail"]
    assert skill.binarize(texts, labels, "entail") == (["a", "b", "c", "d"], [1, 0, 0, 1])
    assert skill.binarize(texts, labels, "entail", "contra") == (["a", "c", "d"], [1, 0, 1])
    with pytest.raises(ValueError, match="not among"):
        skill.binarize(texts, labels, "unknown")


def test_sentiment_task_is_balanced_distinct_and_has_negations():
    task = skill.sentiment_task(120, seed=1)
    frame = task.to_frame()
    assert len(frame) == 120 == frame.text.nunique() and frame.label.sum() == 60
    negated = frame[frame.text.str.contains(" not ")]
    assert len(negated) > 5
    # "not <negative word>" is positive: labels follow the meaning, not the adjective
    assert set(negated[negated.text.str.contains("boring|awful|dull|terrible")].label) == {1}


def test_pararel_tasks_read_the_folder():
    task = skill.pararel_place_or_language(PARAREL, n=60)
    frame = task.to_frame()
    assert len(frame) == 60 and frame.label.sum() == 30
    assert all(not t.endswith(".") and "[" not in t for t in frame.text)
    pair = skill.pararel_relation_pair(PARAREL, "P19", "P20", n=40)
    assert pair.classes == ("P19", "P20") and all("[" not in t for t in pair.to_frame().text)
    with pytest.raises(FileNotFoundError, match="P0"):
        skill.pararel_relation_pair(PARAREL, "P0", "P20")


def test_sst2_loader_reads_local_files_in_the_hub_format(tmp_path):
    rows = [{"idx": i, "sentence": f"sentence number {i}", "label": i % 2} for i in range(40)]
    for name, part in (("train.jsonl", rows[:30]), ("dev.jsonl", rows[30:])):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    task = skill.load_sst2(
        data_files={"train": str(tmp_path / "train.jsonl"), "validation": str(tmp_path / "dev.jsonl")}
    )
    assert task.sizes() == {"train": 26, "dev": 4, "test": 10}  # 10% of each label, rounded
    assert task.test.texts[0] == "sentence number 30" and task.test.labels[:2] == (0, 1)
    with pytest.raises(ValueError, match="no column"):
        skill.load_sst2(
            data_files={"train": str(tmp_path / "train.jsonl"), "validation": str(tmp_path / "dev.jsonl")}, text="text"
        )


# ---------------------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------------------


def test_hard_prompt_layout_causal(random_gpt2):
    prompt = skill.HardPrompt("Review: {text}\nSentiment:", (" negative", " positive"))
    layout = prompt.layout(random_gpt2)
    tokens = prompt.to_tokens(random_gpt2, "Great film.")[0].tolist()

    def ids(text):
        return random_gpt2.tokenizer(text, add_special_tokens=False)["input_ids"]

    assert tokens == ids("Review:") + ids(" Great film.") + ids("\nSentiment:")
    # only template tokens after the text can see it
    assert layout.positions == tuple(range(-len(ids("\nSentiment:")), 0)) and layout.site == -1


def test_hard_prompt_layout_encoder(tiny_bert):
    prompt = skill.HardPrompt("{text} [MASK].", ("a", "these"))
    layout = prompt.layout(tiny_bert)
    tokens = prompt.to_tokens(tiny_bert, "Raymond is selling the books.")[0]
    assert tokens[layout.site] == tiny_bert.tokenizer.mask_token_id
    assert tokens[0] == tiny_bert.tokenizer.cls_token_id and tokens[-1] == tiny_bert.tokenizer.sep_token_id
    assert [int(tokens[p]) for p in layout.positions] == [
        tiny_bert.tokenizer.mask_token_id,
        tiny_bert.tokenizer.convert_tokens_to_ids("."),
    ]


def test_prompt_errors(random_gpt2):
    with pytest.raises(ValueError, match="exactly one"):
        skill.HardPrompt("no slot")
    with pytest.raises(ValueError, match="single token"):
        long_word = skill.HardPrompt("{text}", ("antidisestablishmentarianism", " positive"))
        skill.accuracy(random_gpt2, (TEXTS, LABELS), prompt=long_word)
    with pytest.raises(ValueError, match="two words"):
        skill.accuracy(random_gpt2, (TEXTS, LABELS), prompt=skill.HardPrompt("{text}", (" a",)))


@pytest.mark.parametrize(
    ("fixture", "placement", "reserved"),
    [("random_llama", "end", [-3, -2, -1]), ("random_llama", "start", [0, 1, 2]), ("random_bert", "start", [1, 2, 3])],
)
def test_soft_prompt_hook_writes_exactly_the_reserved_positions(fixture, placement, reserved, request):
    model = request.getfixturevalue(fixture)
    soft = skill.SoftPrompt(torch.randn(3, model.cfg.d_model), ("a", "these"), placement=placement)
    tokens = torch.stack(soft.to_tokens(model, ["The cat sat.", "The dog ran."]))
    seen = {}
    ((name, fn),) = soft.hooks(model)
    assert name == token_embed_hook(model) and soft.layout(model).soft == tuple(reserved)

    def grab(act, hook):
        seen["embed"] = act.clone()

    plain = model.run_with_hooks(tokens, fwd_hooks=[(name, grab)])
    base = seen["embed"]
    model.run_with_hooks(tokens, fwd_hooks=[(name, fn), (name, grab)])
    others = [p for p in range(tokens.shape[1]) if p not in [r % tokens.shape[1] for r in reserved]]
    assert torch.equal(seen["embed"][:, reserved], soft.embeddings.expand(2, 3, -1))
    assert torch.equal(seen["embed"][:, others], base[:, others])
    with soft.applied(model):
        assert not torch.allclose(model(tokens), plain)
    assert no_hooks_left(model)


def test_soft_prompt_save_load_roundtrip(tmp_path, random_llama):
    soft = skill.SoftPrompt(
        torch.randn(2, random_llama.cfg.d_model), (" no", " yes"), "Q: {text} A:", "end", 0.75, [(1, 0.5, 0.75)]
    )
    loaded = skill.SoftPrompt.load(soft.save(tmp_path / "soft.pt"))
    assert torch.equal(loaded.embeddings, soft.embeddings)
    assert (loaded.verbalizer, loaded.template, loaded.placement, loaded.dev_accuracy, loaded.history) == (
        soft.verbalizer, soft.template, soft.placement, soft.dev_accuracy, soft.history,
    )  # fmt: skip
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a kn_lens soft prompt"):
        skill.SoftPrompt.load(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="d_model"):
        skill.SoftPrompt(torch.randn(2, 7)).layout(random_llama)


@pytest.fixture(scope="module")
def number_task():
    from kn_lens.fixtures import tiny_bert as fixture

    agreement = fixture.AGREEMENT["train"] + fixture.AGREEMENT["heldout"]
    texts = [a.prompt.replace("[MASK]", "the") for a in agreement]
    return skill.make_task(texts, [int(a.plural) for a in agreement], name="number", classes=("singular", "plural"))


def test_prompt_tuning_tiny_bert_learns_with_frozen_weights(tiny_bert, number_task):
    """The verbalizer words (two instruments) mean nothing for number: the prompt has to learn the mapping."""
    before = _state(tiny_bert)
    flags = [p.requires_grad for p in tiny_bert.parameters()]
    soft = skill.train_soft_prompt(
        tiny_bert, number_task, ("violin", "piano"), n_tokens=4, steps=90, lr=0.3, placement="end", eval_every=30,
        progress=False,
    )  # fmt: skip
    assert _same_state(tiny_bert, before), "prompt tuning changed model weights"
    assert [p.requires_grad for p in tiny_bert.parameters()] == flags
    assert no_hooks_left(tiny_bert)
    assert soft.dev_accuracy >= 0.95 and [h[0] for h in soft.history] == [30, 60, 90]
    assert skill.accuracy(tiny_bert, number_task, prompt=soft, progress=False) >= 0.95
    untrained = skill.SoftPrompt(soft.embeddings * 0, ("violin", "piano"), placement="end")
    assert skill.accuracy(tiny_bert, number_task, prompt=untrained, progress=False) < 0.9


def test_train_soft_prompt_rejects_bad_settings(tiny_bert, number_task):
    with pytest.raises(ValueError, match="n_tokens"):
        skill.train_soft_prompt(tiny_bert, number_task, ("a", "these"), n_tokens=0)
    with pytest.raises(ValueError, match="lr"):
        skill.train_soft_prompt(tiny_bert, number_task, ("a", "these"), lr=-1.0)
    with pytest.raises(TypeError, match="Task"):
        skill.train_soft_prompt(tiny_bert, (TEXTS, LABELS), ("a", "these"))
    with pytest.raises(TypeError, match="steps must be an int"):  # a float count is a TypeError, as elsewhere
        skill.train_soft_prompt(tiny_bert, number_task, ("a", "these"), steps=10.0)


def test_the_callers_hooks_are_checked_before_anything_runs(random_gpt2, toy_task):
    """A hook on a hook point the model lacks surfaced as TransformerLens' KeyError from inside the forward."""
    with pytest.raises(ValueError, match=r"blocks\.7\.mlp\.hook_post, which this model does not have"):
        skill.margins(random_gpt2, toy_task, fwd_hooks=hooks.scale(["L7N0"], 0.0, positions="all"), progress=False)
    with pytest.raises(TypeError, match=r"fwd_hooks must be \(hook_name, fn\) pairs"):
        skill.accuracy(random_gpt2, toy_task, fwd_hooks=[lambda x, hook: x], progress=False)
    assert no_hooks_left(random_gpt2)


# ---------------------------------------------------------------------------------------------------------------
# Predictivity
# ---------------------------------------------------------------------------------------------------------------


def _hand_predictivity(model, prompt, task):
    """Per-position best-sign dev accuracy and thresholds, from whole run_with_cache activations, one text at a time."""
    layout = prompt.layout(model)

    def acts(texts):
        out = []
        for tokens in prompt.to_tokens(model, texts):
            _, cache = model.run_with_cache(tokens[None], names_filter=lambda n: n.endswith("mlp.hook_post"))
            pos = [p % len(tokens) for p in layout.positions]
            out.append(
                torch.stack([cache[get_act_name("post", layer)][0, pos] for layer in range(model.cfg.n_layers)], 1)
            )
        return torch.stack(out)  # [n, pos, layer, d_mlp]

    train, dev = acts(task.train.texts), acts(task.dev.texts)
    threshold = train.mean(0)
    y = torch.tensor(task.dev.labels, dtype=torch.bool)[:, None, None, None]
    plus = ((dev > threshold) == y).float().mean(0)
    minus = ((dev < threshold) == y).float().mean(0)
    return torch.maximum(plus, minus), threshold, torch.where(plus >= minus, 1, -1)


@pytest.mark.parametrize("aggregate", ["mean", "min"])
def test_predictivity_equals_hand_computation(random_gpt2, toy_task, aggregate):
    prompt = skill.HardPrompt("{text} It was", (" bad", " good"))
    result = skill.predictivity(random_gpt2, toy_task, prompt=prompt, aggregate=aggregate, batch_size=4, progress=False)
    acc, threshold, sign = _hand_predictivity(random_gpt2, prompt, toy_task)
    assert result.per_position.shape == (2, 3, 64) and result.positions == (-2, -1)
    torch.testing.assert_close(result.thresholds, threshold, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(result.per_position, acc)
    decided = acc > 0.5  # where both signs tie, either sign is right
    assert torch.equal(result.sign.long()[decided], sign[decided])
    expected = acc.mean(0) if aggregate == "mean" else acc.min(0).values
    torch.testing.assert_close(result.scores, expected)


def test_predictivity_result_views(random_gpt2, toy_task):
    result = skill.predictivity(
        random_gpt2, toy_task, prompt="{text} It was", positions="last", layers=[1, 2], progress=False
    )
    assert (
        result.positions == (-1,) and torch.isnan(result.scores[0]).all() and not torch.isnan(result.scores[1:]).any()
    )
    top = result.top(0.05)
    assert len(top) == round(0.05 * 128) and all(n.layer in (1, 2) for n in top)
    assert [float(result.scores[n]) for n in top] == sorted((float(result.scores[n]) for n in top), reverse=True)
    mask = result.mask(0.05)
    assert mask.sum() == len(top) and all(mask[n] for n in top)
    per_layer = result.mask(0.1, per_layer=True)
    assert per_layer.sum(1).tolist() == [0, 6, 6]
    frame = result.to_frame(top=5)
    assert list(frame.neuron) == [str(n) for n in result.top(k=5)] and set(frame.sign) <= {-1, 1}
    assert result.figure().data


def test_predictivity_splits_plain_texts(random_gpt2):
    result = skill.predictivity(random_gpt2, TEXTS, LABELS, dev=1 / 3, progress=False)
    assert (result.n_train, result.n_dev) == (12, 6)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(aggregate="max"), ValueError, "aggregation"),
        (dict(positions="middle"), ValueError, "positions"),
        (dict(positions=[5]), ValueError, "index a prompt"),
    ],
)
def test_predictivity_rejects_bad_arguments(random_gpt2, toy_task, kwargs, error, match):
    with pytest.raises(error, match=match):
        skill.predictivity(random_gpt2, toy_task, progress=False, **kwargs)


def test_predictivity_rejects_bad_data_and_fractions(random_gpt2, toy_task):
    with pytest.raises(ValueError, match="labels"):
        skill.predictivity(random_gpt2, TEXTS)
    with pytest.raises(ValueError, match="binary"):
        skill.predictivity(random_gpt2, TEXTS, [2] * len(TEXTS))
    with pytest.raises(ValueError, match="different lengths"):
        skill.predictivity(random_gpt2, TEXTS, LABELS[:-1])
    result = skill.predictivity(random_gpt2, toy_task, layers=[0], progress=False)
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            result.mask(bad)
    assert result.mask(1.0)[0].all()


# ---------------------------------------------------------------------------------------------------------------
# Perturbation
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zero", "mean", "gaussian"])
def test_perturb_changes_exactly_the_chosen_neurons_at_the_chosen_positions(random_llama, kind):
    tokens = random_llama.to_tokens(["The cat sat on the mat", "A dog ran in the park"], prepend_bos=False)
    mask = torch.zeros(3, 64, dtype=torch.bool)
    mask[0, [1, 5]] = True
    mask[2, 7] = True
    mean = torch.randn(2, 3, 64)  # per position
    built = hooks.perturb(mask, kind, std=0.5, seed=1, positions=[1, -1], mean_cache=mean)
    names = [get_act_name("post", layer) for layer in range(3)]
    seen = {}

    def grab(act, hook):
        seen[hook.name] = act.clone()

    random_llama.run_with_hooks(tokens, fwd_hooks=[(n, grab) for n in names])
    clean = dict(seen)
    random_llama.run_with_hooks(tokens, fwd_hooks=built + [(n, grab) for n in names])
    n_pos = tokens.shape[1]
    for layer in (0, 2):
        before, after = clean[names[layer]], seen[names[layer]]
        chosen = mask[layer].nonzero().flatten().tolist()
        if layer == 0:  # nothing upstream was perturbed: every other entry is exactly the clean one
            changed = {(p, n) for _, p, n in (before != after).nonzero().tolist()}
            assert changed <= {(p, n) for p in (1, n_pos - 1) for n in chosen} and changed
        if kind == "zero":
            assert (after[:, [1, -1]][..., chosen] == 0).all()
        elif kind == "mean":
            torch.testing.assert_close(after[:, [1, -1]][..., chosen], mean[:, layer, chosen].expand(2, -1, -1))
        else:
            diff = after[:, [1, -1]][..., chosen] - before[:, [1, -1]][..., chosen]
            assert (diff != 0).all() and diff.abs().max() < 5
        others = [p for p in range(n_pos) if p not in (1, n_pos - 1)]
        if layer == 2:  # layer 2 is downstream of layer 0's change: only check the unchosen positions moved freely
            assert not torch.equal(after[:, others], before[:, others]) or kind == "zero"
    assert no_hooks_left(random_llama)


def test_perturb_gaussian_is_seeded_and_layer_range_filters(random_llama):
    tokens = random_llama.to_tokens("The cat sat on the mat", prepend_bos=False)
    neurons = [Neuron(0, 1), Neuron(2, 3)]
    a = random_llama.run_with_hooks(tokens, fwd_hooks=hooks.perturb(neurons, std=1.0, seed=0))
    b = random_llama.run_with_hooks(tokens, fwd_hooks=hooks.perturb(neurons, std=1.0, seed=0))
    c = random_llama.run_with_hooks(tokens, fwd_hooks=hooks.perturb(neurons, std=1.0, seed=1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    only_late = hooks.perturb(neurons, "zero", layers=range(1, 3))
    assert [name for name, _ in only_late] == ["blocks.2.mlp.hook_post"]


def test_perturb_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        hooks.perturb(["L0N1"], "scramble")
    with pytest.raises(ValueError, match="std"):
        hooks.perturb(["L0N1"], std=-1.0)
    with pytest.raises(ValueError, match="mean_cache="):
        hooks.perturb(["L0N1"], "mean")
    with pytest.raises(ValueError, match="positions with 2"):
        hooks.perturb(["L0N1"], "mean", mean_cache=torch.zeros(2, 3, 64), positions=[0])
    with pytest.raises(ValueError, match="none of the neurons"):
        hooks.perturb(["L0N1"], layers=[2])


def test_perturbation_curve_and_random_mask(random_gpt2, toy_task):
    result = skill.predictivity(random_gpt2, toy_task, prompt="{text} It was", progress=False)
    top = result.mask(0.05)
    control = skill.random_mask(top, seed=0)
    assert torch.equal(control.sum(1), top.sum(1)) and not (control & top).any()
    curve = skill.perturbation_curve(
        random_gpt2, toy_task, result, prompt=skill.HardPrompt("{text} It was", (" bad", " good")),
        fractions=[0.05], seeds=(0, 1), progress=False,
    )  # fmt: skip
    assert list(curve.selection) == ["none", "skill", "random", "random"]
    assert curve.accuracy.between(0, 1).all() and set(curve.n_neurons) == {0, round(0.05 * 192)}


# ---------------------------------------------------------------------------------------------------------------
# Pruning
# ---------------------------------------------------------------------------------------------------------------


PRUNE = "skill.prune builds a smaller HookedTransformer/HookedEncoder (a bridge's transformers model is not resized)"


@pytest.mark.hooked_only(PRUNE)
@pytest.mark.parametrize("fixture", ["random_llama", "random_gpt2", "random_bert"])
def test_prune_all_kept_is_the_same_model(fixture, request):
    model = request.getfixturevalue(fixture)
    tokens = skill.HardPrompt("{text} [MASK]." if fixture == "random_bert" else "{text}").to_tokens(
        model, ["The cat sat."]
    )[0][None]
    keep = torch.ones(model.cfg.n_layers, model.cfg.d_mlp, dtype=torch.bool)
    pruned = skill.prune(model, keep, torch.randn(model.cfg.n_layers, model.cfg.d_mlp))
    assert torch.equal(pruned(tokens), model(tokens))


@pytest.mark.hooked_only(PRUNE)
@pytest.mark.parametrize("fixture", ["random_llama", "random_gpt2", "random_bert"])
def test_prune_equals_fixing_dropped_neurons_at_their_means(fixture, request):
    model = request.getfixturevalue(fixture)
    before = _state(model)
    tokens = skill.HardPrompt("{text} [MASK]." if fixture == "random_bert" else "{text}").to_tokens(
        model, ["The cat sat on it."]
    )[0][None]
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    generator = torch.Generator().manual_seed(0)
    keep = torch.rand(n_layers, d_mlp, generator=generator) < 0.3
    keep[:, 0] = True
    means = torch.randn(n_layers, d_mlp, generator=generator) * 0.1
    pruned = skill.prune(model, keep, means)
    assert pruned.cfg.d_mlp == int(keep.sum(1).max()) < d_mlp and model.cfg.d_mlp == d_mlp
    assert _same_state(model, before), "prune changed the original model"
    dropped = [Neuron(layer, int(i)) for layer in range(n_layers) for i in (~keep[layer]).nonzero().flatten()]
    fixed = hooks.set(dropped, torch.stack([means[n.layer, n.index] for n in dropped]), positions="all")
    torch.testing.assert_close(pruned(tokens), model.run_with_hooks(tokens, fwd_hooks=fixed), atol=2e-5, rtol=1e-4)


def test_prune_rejects_bad_masks(random_gpt2):
    keep = torch.ones(3, 64, dtype=torch.bool)
    with pytest.raises(ValueError, match="boolean"):
        skill.prune(random_gpt2, keep.float(), torch.zeros(3, 64))
    keep[1] = False
    with pytest.raises(ValueError, match="at least one"):
        skill.prune(random_gpt2, keep, torch.zeros(3, 64))


def test_task_mean_activations_match_a_cache(random_gpt2, toy_task):
    means = skill.task_mean_activations(random_gpt2, toy_task, prompt="{text} It was", progress=False)
    tokens = skill.HardPrompt("{text} It was").to_tokens(random_gpt2, toy_task.train.texts)
    rows = []
    for t in tokens:
        _, cache = random_gpt2.run_with_cache(t[None], names_filter=lambda n: n.endswith("mlp.hook_post"))
        rows.append(torch.stack([cache[get_act_name("post", layer)][0] for layer in range(3)], 1))
    torch.testing.assert_close(means, torch.cat(rows).mean(0), atol=1e-6, rtol=1e-5)
    # the former name is the same function (cache.mean_activations, for plain prompts, is another one)
    assert skill.mean_activations is skill.task_mean_activations is not kn_lens.cache.mean_activations


# ---------------------------------------------------------------------------------------------------------------
# Behaviour on the embedded SmolLM2 (one small case; the full figures are in benchmarks/RESULTS.md)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_skill_neurons_predict_sentiment_and_matter_more_than_random(smollm2):
    task = skill.sentiment_task(96, dev=0.25, test=0.25, seed=0)
    prompt = skill.HardPrompt("Review: {text}\nSentiment (positive or negative):", (" negative", " positive"))
    result = skill.predictivity(smollm2, task, prompt=prompt, progress=False)
    scores = result.scores[~torch.isnan(result.scores)]
    assert float(scores.max()) >= 0.85 and float(scores.median()) < 0.65
    mask = result.mask(0.02)
    labels = torch.tensor(task.test.labels) * 2 - 1

    def signed_margin(fwd_hooks):
        return float((skill.margins(smollm2, task, prompt=prompt, fwd_hooks=fwd_hooks, progress=False) * labels).mean())

    def perturbed(chosen):
        return hooks.perturb(chosen, "mean", mean_cache=result.thresholds, positions=list(result.positions))

    clean = signed_margin([])
    top = signed_margin(perturbed(mask))
    random = signed_margin(perturbed(skill.random_mask(mask, seed=0)))
    assert clean > 0
    assert clean - top > 2 * max(clean - random, 0.05 * clean), (clean, top, random)


def test_predictivity_ties_are_ordered_the_same_everywhere():
    """Equally predictive neurons come in index order in top(), mask() and to_frame(), whatever k is."""
    per_position = torch.full((1, 2, 6), 0.5)
    per_position[0, 1, 4] = per_position[0, 0, 2] = per_position[0, 1, 0] = 0.9
    zeros = torch.zeros_like(per_position)
    result = skill.Predictivity(per_position, zeros, zeros + 1, positions=(-1,), layers=[0, 1])
    best = [str(n) for n in result.top(k=3)]
    assert best == ["L0N2", "L1N0", "L1N4"]
    assert [str(n) for n in result.top(k=1)] == best[:1]
    assert [str(n) for n in result.top(k=5)][:3] == best
    assert result.to_frame(top=2).neuron.tolist() == best[:2]
    assert result.mask(2 / 12).nonzero().tolist() == [[0, 2], [1, 0]]


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_train_soft_prompt_works_under_no_grad_and_inference_mode(tiny_bert, number_task, mode):
    """Under torch.no_grad() the loss had no grad_fn and backward() failed."""
    kwargs = dict(n_tokens=2, steps=4, lr=0.3, placement="end", eval_every=2, seed=1, progress=False)
    reference = skill.train_soft_prompt(tiny_bert, number_task, ("violin", "piano"), **kwargs)
    with mode():
        soft = skill.train_soft_prompt(tiny_bert, number_task, ("violin", "piano"), **kwargs)
        assert not torch.is_grad_enabled()  # the caller's mode is back
    assert torch.allclose(soft.embeddings, reference.embeddings)
    assert soft.history == reference.history
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_tasks_need_both_classes_and_two_relations():
    """A task with a single class, or one relation against itself, used to give predictivity numbers."""
    with pytest.raises(ValueError, match="both labels"):
        skill.make_task(TEXTS, [1] * len(TEXTS))
    one = skill.Split(("a b", "c d"), (1, 1))
    both = skill.Split(("a b", "c d"), (0, 1))
    with pytest.raises(ValueError, match="the dev split has a single class"):
        skill.Task("t", both, one, both)
    with pytest.raises(ValueError, match="the train split has a single class"):
        skill.Task("t", one, both, both)
    assert skill.Task("t", both, both, one).test == one  # a test split may hold one class (accuracy is defined)
    with pytest.raises(ValueError, match="same relation"):
        skill.pararel_relation_pair(PARAREL, "P19", "P19", n=20)


def test_pararel_templates_without_the_answer_slot_are_named(tmp_path):
    """A template without [Y] was filled as it was: sentences without their object, labelled all the same."""
    for folder in ("patterns", "facts"):
        (tmp_path / folder).mkdir()
    facts = "".join(json.dumps({"sub_label": f"S{i}", "obj_label": f"O{i}"}) + "\n" for i in range(12))
    for rid, patterns in (("P1", ["[X] was born in [Y].", "[X] is great."]), ("P2", ["[X] died in [Y]."])):
        (tmp_path / "patterns" / f"{rid}.jsonl").write_text(
            "".join(json.dumps({"pattern": p}) + "\n" for p in patterns)
        )
        (tmp_path / "facts" / f"{rid}.jsonl").write_text(facts)
    with pytest.raises(ValueError, match=r"P1\.jsonl, line 2: a template needs exactly one \[X\] and one \[Y\]"):
        skill.pararel_relation_pair(tmp_path, "P1", "P2", n=10)
    # the folder is read by kn_lens.datasets.pararel, which checks every template file: mend P1 first
    (tmp_path / "patterns" / "P1.jsonl").write_text(json.dumps({"pattern": "[X] was born in [Y]."}) + "\n")
    assert len(skill.pararel_relation_pair(tmp_path, "P1", "P2", n=10).to_frame()) == 10
    (tmp_path / "facts" / "P2.jsonl").write_text('{"sub_label": "S"}\n')
    with pytest.raises(ValueError, match=r"P2\.jsonl, line 1: missing or non-text field\(s\) \['obj_label'\]"):
        skill.pararel_relation_pair(tmp_path, "P2", "P1", n=10)


def test_soft_prompts_refuse_nan_and_damaged_files(tmp_path):
    with pytest.raises(ValueError, match="NaN or infinite"):
        skill.SoftPrompt(torch.full((2, 32), float("nan")))
    with pytest.raises(TypeError, match="floating-point"):
        skill.SoftPrompt(torch.zeros(2, 32, dtype=torch.long))
    damaged = tmp_path / "soft.pt"
    damaged.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"soft\.pt is not a readable kn_lens soft prompt file"):
        skill.SoftPrompt.load(damaged)
    torch.save({"kind": "kn_lens.SoftPrompt", "embeddings": torch.zeros(2, 32)}, damaged)
    with pytest.raises(ValueError, match="lacks"):
        skill.SoftPrompt.load(damaged)
    good = skill.SoftPrompt(torch.zeros(2, 32)).save(tmp_path / "good.pt")
    state = torch.load(good, weights_only=True)
    state["embeddings"][0, 0] = float("nan")
    torch.save(state, damaged)
    with pytest.raises(ValueError, match=r"invalid soft prompt.*NaN"):
        skill.SoftPrompt.load(damaged)
    with pytest.raises(FileNotFoundError, match="no soft prompt file"):
        skill.SoftPrompt.load(tmp_path / "missing.pt")


def test_predictivity_to_frame_top_must_be_positive(random_gpt2, toy_task):
    """to_frame(top=0) returned every row."""
    result = skill.predictivity(random_gpt2, toy_task, layers=[0], progress=False)
    assert len(result.to_frame(top=2)) == 2 and len(result.to_frame()) == random_gpt2.cfg.d_mlp
    with pytest.raises(ValueError, match="top must be a positive int"):
        result.to_frame(top=0)
    with pytest.raises(TypeError, match="top must be an int"):
        result.to_frame(top=2.0)


def _forwards(model):
    calls = []
    handle = model.embed.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


def test_perturbation_curve_perturbs_under_the_prompt_predictivity_was_measured_with(random_gpt2, toy_task):
    """Another prompt than predictivity's was accepted: its positions and thresholds then hit other tokens."""
    measured = skill.HardPrompt("{text} It was", (" bad", " good"))
    result = skill.predictivity(random_gpt2, toy_task, prompt=measured, progress=False)
    assert result.prompt is measured
    kw = dict(fractions=[0.05], seeds=(0,), progress=False)
    default = skill.perturbation_curve(random_gpt2, toy_task, result, **kw)  # None: the measured prompt
    clean = skill.accuracy(random_gpt2, toy_task, prompt=measured, progress=False)
    assert default.accuracy.iloc[0] == clean
    other_words = skill.HardPrompt("{text} It was", (" no", " yes"))  # the verbalizer may differ
    assert len(skill.perturbation_curve(random_gpt2, toy_task, result, prompt=other_words, **kw)) == 3
    soft = skill.SoftPrompt(torch.zeros(2, random_gpt2.cfg.d_model), placement="end")
    calls, handle = _forwards(random_gpt2)
    try:
        for prompt in ("Review: {text} It was", skill.HardPrompt("{text}."), soft, None):
            if prompt is None:  # a result of another prompt: a soft prompt's, then perturbed under a hard one
                soft_result = skill.Predictivity(result.per_position, result.thresholds, result.sign,
                                                 result.positions, prompt=soft)  # fmt: skip
                with pytest.raises(ValueError, match="differs from the one predictivity was measured with"):
                    skill.perturbation_curve(random_gpt2, toy_task, soft_result, prompt=measured, **kw)
                continue
            with pytest.raises(ValueError, match="differs from the one predictivity was measured with"):
                skill.perturbation_curve(random_gpt2, toy_task, result, prompt=prompt, **kw)
        for bad, error in (
            (dict(fractions=[0.05, 2.0]), ValueError),
            (dict(fractions=0.05), TypeError),
            (dict(kind="noise"), ValueError),
            (dict(std=-1.0), ValueError),
            (dict(seeds=(0.5,)), TypeError),
            (dict(batch_size=0), ValueError),
            (dict(split="validation"), ValueError),
        ):
            with pytest.raises(error):
                skill.perturbation_curve(random_gpt2, toy_task, result, **{**kw, **bad})
    finally:
        handle.remove()
    assert not calls, "a forward pass ran before the bad argument was reported"
