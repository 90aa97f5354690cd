"""Skill neurons (Wang et al., EMNLP 2022): neurons whose activation at the prompt predicts a task's label.

Context:
    Wang et al. prompt-tune a frozen RoBERTa on a binary task (SST-2, say): a few *virtual token* embeddings,
    the soft prompt, are learned in front of every input while every model weight stays fixed. They then look at
    the MLP neurons *at the soft-prompt positions*. The prompt is the same for every input, so whatever a neuron
    does there depends on the input only through attention; yet some neurons' activations there separate
    positive from negative reviews almost perfectly. Those are **skill neurons**. Perturbing them hurts the task
    far more than perturbing as many random neurons, and keeping only them (the rest fixed at their mean) prunes
    the model with little loss. This package brings every step to TransformerLens models, as hooks, one module a
    step:

    1. :mod:`~kn_lens.skill.tasks` and :mod:`~kn_lens.skill.builders`: a binary task is ``(texts, labels)`` in
       train / dev / test splits (:class:`Task`). :func:`make_task` splits (seeded, stratified), :func:`binarize`
       turns a multi-class task into a binary one, :func:`sentiment_task` generates an offline sentiment set,
       :func:`pararel_place_or_language` and :func:`pararel_relation_pair` build tasks from a PARAREL folder,
       and :func:`load_sst2` / :func:`load_hf_task` read public sets through ``datasets``.
    2. :mod:`~kn_lens.skill.prompting` and :mod:`~kn_lens.skill.tuning`: :class:`HardPrompt` is a text template
       (``"Review: {text}\\nSentiment:"``) whose template tokens are the prompt positions;
       :func:`train_soft_prompt` learns a :class:`SoftPrompt`, ``n_tokens`` embeddings written over reserved
       positions by a hook on the embedding output (``hook_embed``). A *verbalizer* maps the labels to two tokens
       read at the ``[MASK]`` (encoders) or the next token (causal models); :func:`margins` and
       :func:`accuracy` measure it.
    3. :mod:`~kn_lens.skill.predicting` (:func:`predictivity`): for every ``mlp_post`` neuron and prompt
       position, the threshold is the neuron's mean activation over the train split; predictivity is the dev
       accuracy of predicting the label by thresholding there, with the better of the two signs; positions are
       aggregated by mean or min.
    4. :mod:`~kn_lens.skill.perturbation` (:func:`kn_lens.hooks.perturb`, :func:`perturbation_curve`): accuracy
       after perturbing the top x% of skill neurons at the prompt positions, beside as many random neurons of the
       same layers.
    5. :mod:`~kn_lens.skill.pruning` (:func:`prune`): every non-skill neuron is fixed to its train-mean
       activation (:func:`task_mean_activations`), folded into the MLP output bias, and dropped from
       ``W_in``/``W_out``: a smaller TransformerLens model.

Intuition (where the prompt goes):
    Encoders read the whole sequence both ways, so the soft prompt sits after ``[CLS]`` (the paper's place).
    A causal model's position ``i`` only sees positions ``<= i``: a prompt *before* the input cannot depend on
    it, so every neuron there has the same activation for every input and predictivity is stuck at the majority
    rate. kn_lens therefore puts a causal model's soft prompt *after* the input by default (``placement="end"``)
    and, for hard templates, counts only the template tokens after the text as prompt positions.

Caveats:
    The sign is chosen on the same dev split whose accuracy is reported, as in the paper, so predictivity is at
    least about 0.5 even for a useless neuron; compare the best neurons with the bulk (the figure does) and
    always look at perturbation against random neurons before calling a neuron a skill neuron.

Names:
    ``kn_lens.skill.mean_activations`` is the former name of :func:`task_mean_activations` (an alias, kept
    working); :func:`kn_lens.cache.mean_activations` is another function (plain prompts, ``{layer: [d_mlp]}``,
    for mean ablation).

Example:
    Which SmolLM2 neurons, read at the template tokens after a review, tell positive reviews from negative ones?
    (A small generated task keeps this quick; the paper's figures need hundreds of examples.)

    >>> task = kn_lens.skill.sentiment_task(n=60)
    >>> task
    Task('sentiment', train=36, dev=12, test=12, classes=('negative', 'positive'))
    >>> prompt = kn_lens.skill.HardPrompt("Review: {text}\\nSentiment (positive or negative):")
    >>> prompt.layout(model).positions  # the 8 template tokens after the review
    (-8, -7, -6, -5, -4, -3, -2, -1)
    >>> result = kn_lens.skill.predictivity(model, task, prompt=prompt, progress=False)
    >>> result  # doctest: +ELLIPSIS
    Predictivity(30 layers x 1536 neurons, 8 prompt positions, aggregate='mean', best L...N... = 0.8...,
                 n_train=36, n_dev=12)
    >>> float(result.scores.median())  # the bulk: the sign is chosen on dev, so even noise scores above 0.5
    0.61

    Then perturb the best neurons against random ones (:func:`perturbation_curve`) and prune
    (:func:`prune`); the examples below do it on the tiny BERT.
"""

from kn_lens.skill.builders import (
    load_hf_task,
    load_sst2,
    pararel_place_or_language,
    pararel_relation_pair,
    sentiment_task,
)
from kn_lens.skill.perturbation import perturbation_curve, random_mask
from kn_lens.skill.predicting import Aggregate, Predictivity, predictivity
from kn_lens.skill.prompting import HardPrompt, Layout, PromptLike, SoftPrompt, as_prompt
from kn_lens.skill.pruning import mean_activations, prune, task_mean_activations
from kn_lens.skill.tasks import Split, Task, binarize, make_task
from kn_lens.skill.tuning import accuracy, margins, train_soft_prompt

__all__ = [
    "Aggregate",
    "HardPrompt",
    "Layout",
    "Predictivity",
    "PromptLike",
    "SoftPrompt",
    "Split",
    "Task",
    "accuracy",
    "as_prompt",
    "binarize",
    "load_hf_task",
    "load_sst2",
    "make_task",
    "margins",
    "mean_activations",
    "pararel_place_or_language",
    "pararel_relation_pair",
    "perturbation_curve",
    "predictivity",
    "prune",
    "random_mask",
    "sentiment_task",
    "task_mean_activations",
    "train_soft_prompt",
]
