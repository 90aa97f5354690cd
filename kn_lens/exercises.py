"""The tutorials' exercises: each computes its right answer from the live model (registered in :mod:`kn_lens.quiz`).

A tutorial cell calls ``kn_lens.quiz.check("05.top1-left", answer, model=model, kns=kns, ...)``; the function
registered here under that key recomputes the truth from the objects passed (the model, the knowledge neurons,
the prompts), with kn_lens' own functions, so that the student's notebook shows neither the solution nor the
answer, and a quiz never goes stale when the model or the library changes.

Keys are ``"NN.name"``, ``NN`` the tutorial's number. Hints point at the method, never at the value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from kn_lens import hooks, skill
from kn_lens._typing import Neuron, hook_name, is_encoder
from kn_lens.attribution import integrated_gradients
from kn_lens.cache import top_activating
from kn_lens.edit import edit_fact, erase
from kn_lens.neurons import KnowledgeNeurons, find_knowledge_neurons
from kn_lens.prompts import Prompt, encode, group_by_length, make_prompts, stack_tokens
from kn_lens.quiz import exercise
from kn_lens.scoring import relative_change, target_scores

HookFactory = Callable[[list[Prompt]], list] | None


def _answer_top1_and_p(
    model, prompts: Sequence[Prompt], hooks_for: HookFactory = None
) -> tuple[list[bool], list[float]]:
    """For each prompt: is its (first) answer token the top-1 prediction, and its probability.

    Prompts of one length share a forward pass (:func:`~kn_lens.prompts.group_by_length`: no padding).
    """
    prompts = list(prompts)
    top1, probs = [False] * len(prompts), [0.0] * len(prompts)
    for indices in group_by_length(prompts).values():
        batch = [prompts[i] for i in indices]
        fwd_hooks = hooks_for(batch) if hooks_for else []
        with torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks):
            logits = model(stack_tokens(batch, model.cfg.device))
        for row_index, (i, prompt) in enumerate(zip(indices, batch, strict=True)):
            row = logits[row_index, prompt.positions[0]]
            answer = prompt.target_ids[0]
            top1[i] = int(row.argmax()) == answer
            probs[i] = float(row.softmax(-1)[answer])
    return top1, probs


def _top1_share(model, prompts: Sequence[Prompt]) -> float:
    """The share of the prompts whose answer is the top-1 prediction."""
    top1, _ = _answer_top1_and_p(model, prompts)
    return _mean([float(t) for t in top1])


def _scaled(neurons, factor: float) -> Callable[[list[Prompt]], list]:
    return lambda batch: hooks.scale(neurons, factor, positions="site", prompts=batch)


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def _mean_rel_change(model, neurons, prompts: Sequence[Prompt], factor: float) -> float:
    _, before = _answer_top1_and_p(model, prompts)
    _, after = _answer_top1_and_p(model, prompts, _scaled(neurons, factor))
    return _mean([relative_change(b, a) for a, b in zip(after, before, strict=True)])


# --------------------------------------------------------------------------------- 01: knowledge neurons, tiny BERT


@exercise(
    "01.top-token",
    "Which token does the model rank first at the [MASK]?",
    hint="the first row of top_predictions(model, prompt, k=5), without quotes or spaces",
)
def _top_token(*, model, prompt: str) -> str:
    tokens = _encoded(model, prompt)
    mask = int((tokens[0] == model.tokenizer.mask_token_id).nonzero()[0, 0])
    with torch.no_grad():
        logits = model(tokens)[0, mask]
    return model.tokenizer.decode(int(logits.argmax())).strip()


@exercise(
    "01.best-neuron",
    "Which neuron has the highest integrated-gradients attribution? (a Neuron, or a string like 'L1N253')",
    hint="scores.argmax() is a flat index into [layer, d_mlp]: divmod it by model.cfg.d_mlp",
    rel=0,
    abs_=0,
)
def _best_neuron(*, model, prompt: str, target: str, n_steps: int, method: str) -> Neuron:
    scores = integrated_gradients(model, prompt, target, n_steps=n_steps, method=method)
    return Neuron(*divmod(int(scores.argmax()), model.cfg.d_mlp))


@exercise(
    "01.kn-count",
    "How many knowledge neurons does the selection keep?",
    hint="the selected neurons are in kns.neurons",
    rel=0,
    abs_=0,
)
def _kn_count(*, model, prompts: Sequence[str], target: str) -> int:
    return len(find_knowledge_neurons(model, list(prompts), target).neurons)


@exercise(
    "01.suppression-drop",
    "By what fraction does suppressing the knowledge neurons lower p(answer) on average? (0.5 for -50%)",
    hint="a drop is positive here: minus the mean of the 'rel_change' column of the knowledge-neuron rows",
    abs_=0.005,
)
def _suppression_drop(*, model, neurons, prompts: Sequence[str], target: str) -> float:
    return -_mean_rel_change(model, neurons, make_prompts(model, list(prompts), target), 0.0)


# ------------------------------------------------------------------------------------------- 02: the plural neuron


def _encoded(model, text: str) -> torch.Tensor:
    """``[1, pos]`` tokens of an encoder prompt on either backend (``HookedEncoder.to_tokens`` returns a tuple, a
    bridge's a tensor)."""
    return torch.tensor([encode(model, text)], device=model.cfg.device)


def _mask_probs(model, sentence: str, words: Sequence[str], neurons=None) -> list[float]:
    tokens = _encoded(model, sentence)
    mask = int((tokens[0] == model.tokenizer.mask_token_id).nonzero()[0, 0])
    fwd_hooks = hooks.scale(neurons, 0.0, positions=[mask]) if neurons else []
    with torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks):
        probs = model(tokens)[0, mask].softmax(-1)
    return [float(probs[i]) for i in model.tokenizer.convert_tokens_to_ids(list(words))]


@exercise(
    "02.determiner-change",
    "How much did the probability of the determiner change when the neuron was suppressed at the mask?",
    hint="the 'change' column: suppressed minus original probability, in the determiner's row",
    rel=0.02,
    abs_=1e-5,
)
def _determiner_change(*, model, neuron, sentence: str, determiner: str) -> float:
    (before,) = _mask_probs(model, sentence, [determiner])
    (after,) = _mask_probs(model, sentence, [determiner], [neuron])
    return after - before


@exercise(
    "02.most-causal",
    "Which selected neuron lowers p(determiner) the most when switched off alone?",
    hint="switch each neuron off on its own and sort by the change of p; the attribution ranking is not the answer",
)
def _most_causal(*, model, neurons, sentence: str, determiner: str) -> Neuron:
    (before,) = _mask_probs(model, sentence, [determiner])
    effects = {n: _mask_probs(model, sentence, [determiner], [n])[0] - before for n in neurons}
    return min(effects, key=effects.get)


@exercise(
    "02.plural-mass-change",
    "By what fraction does switching all the neurons off change the total probability of the plural determiners?",
    hint="sum the plural rows of the intervention column, divide by the sum of the 'clean' column, subtract 1",
    rel=0.02,
    abs_=1e-3,
)
def _plural_mass_change(*, model, neurons, sentence: str, plural: Sequence[str]) -> float:
    return sum(_mask_probs(model, sentence, plural, neurons)) / sum(_mask_probs(model, sentence, plural)) - 1


@exercise(
    "02.fires-on-plural",
    "What fraction of the neuron's 6 top-activating texts are plural sentences?",
    hint="check each of top.texts against the set of plural sentences",
)
def _fires_on_plural(*, model, neuron, texts: Sequence[str], plural: Sequence[str]) -> float:
    top = top_activating(model, neuron, list(texts), k=6, progress=False)
    return _mean([float(t in set(plural)) for t in top.texts])


# ------------------------------------------------------------------------------------------- 03: SmolLM2 capitals


@exercise(
    "03.shared-neurons",
    "How many neurons were selected for at least three of the four capitals?",
    hint="count, over all results, how many times each neuron was selected (collections.Counter)",
    rel=0,
    abs_=0,
)
def _shared_neurons(*, results: dict[str, KnowledgeNeurons], at_least: int) -> int:
    counts: dict[Neuron, int] = {}
    for result in results.values():
        for n in set(result.neurons):
            counts[n] = counts.get(n, 0) + 1
    return sum(c >= at_least for c in counts.values())


@exercise(
    "03.own-drop",
    "By what fraction does suppressing Paris' neurons change p(' Paris') on average? (e.g. -0.4)",
    hint="the mean of rel_change over the 'knowledge neurons' rows of the suppress table",
    abs_=0.005,
)
def _own_drop(*, model, neurons, prompts: Sequence[str], target: str) -> float:
    return _mean_rel_change(model, neurons, make_prompts(model, list(prompts), target), 0.0)


# ------------------------------------------------------------------------ 05: do knowledge neurons store knowledge?


@exercise(
    "05.still-top1",
    "On how many prompts is the answer still the top-1 prediction after the knowledge neurons are switched off?",
    hint="switch the neurons off at the site of each prompt (x0) and compare the argmax of the logits with the "
    "answer's token id; count the prompts where they agree",
)
def _still_top1(*, model, neurons, prompts: Sequence[Prompt]) -> int:
    top1, _ = _answer_top1_and_p(model, prompts, _scaled(neurons, 0.0))
    return sum(top1)


@exercise(
    "05.perplexity-change",
    "By what fraction does switching the knowledge neurons off at every position change the text's perplexity?",
    hint="perplexity = exp(model(tokens, return_type='loss')); compare it with the neurons scaled by 0 at "
    "positions='all' against the clean run: after / before - 1",
    rel=0.05,
    abs_=0.002,
)
def _perplexity_change(*, model, neurons, text: str) -> float:
    tokens = model.to_tokens(text, prepend_bos=True)
    with torch.no_grad():
        clean = model(tokens, return_type="loss")
        with model.hooks(fwd_hooks=hooks.scale(neurons, 0.0, positions="all")):
            off = model(tokens, return_type="loss")
    return float(torch.exp(off - clean)) - 1.0


@exercise(
    "05.dropout-10pct",
    "Mean relative change of p(answer) when these random neurons are knocked out at the site?",
    hint="average, over the prompts, p_after / p_before - 1 with the random neurons scaled by 0 at the site",
)
def _dropout_change(*, model, neurons, prompts: Sequence[Prompt]) -> float:
    before = target_scores(model, list(prompts))
    after = target_scores(
        model, list(prompts), fwd_hooks=lambda batch: hooks.scale(neurons, 0.0, positions="site", prompts=batch)
    )
    return float((after / before - 1).mean())


@exercise(
    "05.ig-gxa-overlap",
    "How many neurons do the integrated-gradients and gradient x activation selections share?",
    hint="set(a.neurons) & set(b.neurons), with both selections made on the same prompts and layers",
    rel=0,
    abs_=0,
)
def _ig_gxa_overlap(*, model, ig: KnowledgeNeurons) -> int:
    gxa = find_knowledge_neurons(model, ig.prompts, layers=ig.layers, attribution="grad_x_act")
    return len(set(ig.neurons) & set(gxa.neurons))


@exercise(
    "05.unk-other-accuracy",
    "Accuracy on these prompts after erasing the neurons with the [UNK] embedding?",
    hint="inside `with kn_lens.erase(model, neurons, mode='unk'):` count the prompts whose answer is still the "
    "top-1 token, divided by the number of prompts",
)
def _unk_accuracy(*, model, neurons, prompts: Sequence[Prompt]) -> float:
    with erase(model, neurons, mode="unk"):
        return _top1_share(model, prompts)


@exercise(
    "05.edit-heldout",
    "After edit_fact(old -> new) on the neurons, on what fraction of the prompts is the new answer top-1?",
    hint="inside `with kn_lens.edit_fact(model, neurons, old, new):` make the prompts with the NEW answer as "
    "target and check whether it is the argmax",
)
def _edit_heldout(*, model, neurons, prompts: Sequence[str], old: str, new: str) -> float:
    with edit_fact(model, neurons, old, new):
        return _top1_share(model, make_prompts(model, list(prompts), new))


@exercise(
    "05.enhance-sure",
    "Mean relative change of p(answer) under enhancement (x2) over the prompts with base p > 0.9?",
    hint="for each fact's prompts compare p with its knowledge neurons scaled by 2 at the site to p without; "
    "average after / before - 1 over the prompts whose p before is above 0.9",
    abs_=0.005,
)
def _enhance_sure(*, model, results: Sequence[KnowledgeNeurons]) -> float:
    changes = []
    for result in results:
        _, before = _answer_top1_and_p(model, result.prompts)
        _, after = _answer_top1_and_p(model, result.prompts, _scaled(result.neurons, 2.0))
        changes += [relative_change(b, a) for a, b in zip(after, before, strict=True) if b > 0.9]
    return _mean(changes)


@exercise(
    "05.top5-without-relation",
    "What fraction of the neuron's 5 top-activating texts do not state the relation?",
    hint="kn_lens.top_activating(model, neuron, all_texts, k=5).texts, then count the ones that are not in the "
    "'states the relation' list",
)
def _top5_without_relation(*, model, neuron, texts: dict[str, list[str]], relation: str) -> float:
    everything = [t for group in texts.values() for t in group]
    top = top_activating(model, neuron, everything, k=5, progress=False)
    return _mean([float(t not in texts[relation]) for t in top.texts])


# ------------------------------------------------------------------------------------------- 04: skill neurons


@exercise(
    "04.tuned-accuracy",
    "What is the soft prompt's accuracy on the test split? (a float, e.g. 0.8)",
    hint="kn_lens.skill.accuracy(model, task, prompt=soft) measures the test split by default",
    abs_=0.005,
)
def _tuned_accuracy(*, model, task, prompt) -> float:
    return skill.accuracy(model, task, prompt=prompt, progress=False)


@exercise(
    "04.predictive-share",
    "What fraction of all the model's neurons have a predictivity above 0.9 at the prompt?",
    hint="compare result.scores (one value per neuron, [n_layers, d_mlp]) with 0.9 and take the mean",
    abs_=0.005,
)
def _predictive_share(*, model, task, prompt) -> float:
    scores = skill.predictivity(model, task, prompt=prompt, progress=False).scores
    return float((scores > 0.9).float().mean())


def _neuron_acts(model, prompt, texts: Sequence[str], neuron: Neuron) -> Tensor:
    """``[len(texts), n_prompt_positions]``: the neuron's ``mlp_post`` at the prompt positions, text by text."""
    positions = list(prompt.layout(model).positions)
    rows = []

    def keep(activation, hook):
        rows.append(activation[0, positions, neuron.index].float().cpu().double())  # MPS has no float64

    fwd_hooks = [*prompt.hooks(model), (hook_name(neuron.layer), keep)]
    stop = {} if is_encoder(model) else {"stop_at_layer": neuron.layer + 1}  # a causal model: skip the layers above
    with torch.no_grad():
        for tokens in prompt.to_tokens(model, list(texts)):
            model.run_with_hooks(tokens[None].to(model.cfg.device), fwd_hooks=fwd_hooks, **stop)
    return torch.stack(rows).cpu()


@exercise(
    "04.best-predictivity",
    "What is the predictivity of SmolLM2's most predictive neuron for sentiment?",
    hint="the first row of the result's to_frame(top=1), or the maximum of its scores",
    rel=0,
    abs_=0.005,
)
def _best_predictivity(*, model, task, prompt, result) -> float:
    """Recomputed by hand for the result's best neuron: threshold = train mean at each prompt position, dev
    accuracy of the better sign, averaged over the positions."""
    neuron = result.top(k=1)[0]
    threshold = _neuron_acts(model, prompt, task.train.texts, neuron).mean(0)
    acts = _neuron_acts(model, prompt, task.dev.texts, neuron)
    labels = torch.tensor(task.dev.labels, dtype=torch.bool)[:, None]
    above_is_one = ((acts > threshold) == labels).double().mean(0)
    below_is_one = ((acts < threshold) == labels).double().mean(0)
    return float(torch.maximum(above_is_one, below_is_one).mean())


@exercise(
    "04.skill-vs-random",
    "At the given fraction, how much lower is the accuracy with skill neurons perturbed than with random neurons "
    "perturbed (mean over seeds)? (a float, e.g. 0.1)",
    hint="curve.groupby(['fraction', 'selection']).accuracy.mean(): random minus skill at that fraction",
    rel=0,
    abs_=0.005,
)
def _skill_vs_random(*, model, task, prompt, result, fraction: float, seeds: Sequence[int]) -> float:
    """Recomputed from the model: the top ``fraction`` of neurons, and random neurons with the same count per
    layer (one draw per seed), set to their per-position train means at the prompt positions."""

    def perturbed(mask) -> float:
        fwd_hooks = hooks.perturb(mask, "mean", mean_cache=result.thresholds, positions=list(result.positions))
        return skill.accuracy(model, task, prompt=prompt, fwd_hooks=fwd_hooks, progress=False)

    top = result.mask(fraction)
    random = _mean([perturbed(skill.random_mask(top, seed=seed)) for seed in seeds])
    return random - perturbed(top)


@exercise(
    "04.pruned-accuracy",
    "What test accuracy does the pruned tiny BERT (skill neurons kept) reach with the soft prompt?",
    hint="kn_lens.skill.accuracy of the pruned model on the task, with prompt=soft",
)
def _pruned_accuracy(*, model, task, prompt, result, fraction: float) -> float:
    """The pruned model's accuracy, without pruning: the original model with every dropped neuron set to its mean
    activation at every position (what pruning folds into the output bias)."""
    dropped = ~result.mask(fraction, per_layer=True)
    means = skill.task_mean_activations(model, task, prompt=prompt, progress=False)
    fwd_hooks = hooks.perturb(dropped, "mean", mean_cache=means, positions="all")
    return skill.accuracy(model, task, prompt=prompt, fwd_hooks=fwd_hooks, progress=False)
