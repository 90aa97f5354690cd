"""Relation erasure and fact editing (Dai et al. sec. 5), each beside a random-neuron control and, for causal
models, the perplexity of a held-out text (:func:`~kn_lens.evaluation.measure.text_perplexity`).

Example:
    >>> relation_neurons([["L1N5", "L0N3"], ["L1N5", "L1N7", "L0N3"], ["L1N5", "L1N9"]], top=3)
    [L1N5, L0N3]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pandas as pd
import torch

from kn_lens._device import evaluating
from kn_lens._typing import Model, Neuron, check_model, is_encoder
from kn_lens.edit import edit_fact, erase
from kn_lens.evaluation.controls import random_active_neurons
from kn_lens.evaluation.effects import _prompts
from kn_lens.evaluation.measure import _accuracy_ppl, measure, text_perplexity
from kn_lens.inputs import (
    NeuronsLike,
    check_batch_size,
    check_choice,
    check_count,
    check_int,
    check_number,
    check_sequence,
    to_fact,
    to_neurons,
)
from kn_lens.neurons import KnowledgeNeurons, random_neurons
from kn_lens.prompts import Prompt, TargetLike, make_prompt, token_ids
from kn_lens.scoring import forward_logits, relative_change


def _check_text(text: Any) -> None:
    """The ``text=`` of :func:`erase_relation` / :func:`edit_effects`: None, a bool or a non-empty str."""
    if text is None or isinstance(text, bool):
        return
    if not isinstance(text, str):
        raise TypeError(f"text must be a str (the held-out text), True/None (the shipped one) or False, got {text!r}")
    if not text.strip():
        raise ValueError("text is empty; pass a held-out text, None for the shipped one, or False for none")


def relation_neurons(results: Sequence[Any], *, top: int = 5, min_count: int = 2) -> list[Neuron]:
    """A relation's most frequent knowledge neurons across its facts (the ones Dai et al. erase).

    Args:
        results: per-fact neuron sets: ``KnowledgeNeurons`` results, neuron lists, or sweep records (dicts with
            a ``"neurons"`` list of ``"L{l}N{i}"`` strings).
        top: how many to keep (a positive int).
        min_count: a neuron must be selected for at least this many facts (a positive int).

    Returns:
        Up to ``top`` neurons, most frequent first (ties: lower layer, then index).

    Example:
        >>> relation_neurons([["L1N5", "L0N3"], ["L1N5", "L1N7", "L0N3"], ["L1N5", "L1N9"]], top=3)
        [L1N5, L0N3]
    """
    top = check_count(top, "top", minimum=1)
    min_count = check_count(min_count, "min_count", minimum=1)
    counts: dict[Neuron, int] = {}
    for item in check_sequence(results, "results", what="per-fact neuron sets"):
        if isinstance(item, Mapping) and "neurons" not in item:
            raise ValueError(f"a record without 'neurons' ({sorted(item)[:6]}): pass sweep records or neuron lists")
        ns = item["neurons"] if isinstance(item, Mapping) else getattr(item, "neurons", item)
        for n in set(to_neurons(ns, allow_empty=True)) if ns else ():
            counts[n] = counts.get(n, 0) + 1
    ranked = sorted((n for n, c in counts.items() if c >= min_count), key=lambda n: (-counts[n], n))
    return ranked[:top]


def erase_relation(
    model: Model,
    relation_facts: Sequence[Any],
    neurons: NeuronsLike | KnowledgeNeurons,
    *,
    other_facts: Sequence[Any] = (),
    mode: Literal["zero", "unk"] = "zero",
    seed: int = 0,
    text: str | bool | None = None,
    relation: str | None = None,
    batch_size: int = 32,
) -> pd.DataFrame:
    """Erase a relation's neurons (value vectors zeroed or set to ``[UNK]``) and measure the damage.

    Beside the knowledge neurons, the same number of random neurons in the same layers is erased as a control.
    Weights are restored on exit, also on errors.

    Args:
        model: the model.
        relation_facts: facts of the relation (bags, ``FactPrompts``, ``(texts, target)`` tuples).
        neurons: the neurons to erase (e.g. :func:`relation_neurons`).
        other_facts: facts of other relations (should be untouched).
        mode: ``"zero"`` or ``"unk"`` (see :func:`kn_lens.edit.erase`).
        seed: seed of the random-neuron control.
        text: held-out text for the perplexity row (None: :func:`heldout_text`; False: no such row; causal
            models only).
        relation: the ``relation`` column (default the first fact's ``.relation``).
        batch_size: prompts per forward pass.

    Returns:
        One row per (neurons, condition): ``relation, mode, neurons, n_neurons, condition, n, acc_before,
        acc_after, ppl_before, ppl_after, ppl_change_%``; conditions ``"same relation"``, ``"other relations"``
        and ``"held-out text"`` (perplexity of the text, accuracy NaN).

    Example:
        >>> from kn_lens.fixtures import tiny_bert
        >>> capitals = [(tiny_bert.train_prompts(f), f.answer) for f in tiny_bert.facts_of("capital")]
        >>> languages = [(tiny_bert.train_prompts(f), f.answer) for f in tiny_bert.facts_of("language")]
        >>> found = [kn_lens.find_knowledge_neurons(bert, texts, answer) for texts, answer in capitals[:4]]
        >>> erased = erase_relation(bert, capitals, relation_neurons(found), other_facts=languages)
        >>> erased[["neurons", "n_neurons", "condition", "n", "acc_before", "acc_after"]]
                     neurons  n_neurons        condition   n  acc_before  acc_after
        0  knowledge neurons          3    same relation  36         1.0        1.0
        1  knowledge neurons          3  other relations  36         1.0        1.0
        2     random neurons          3    same relation  36         1.0        1.0
        3     random neurons          3  other relations  36         1.0        1.0

        Erasing these three neurons does not take a single capital from the tiny BERT (on an encoder there is no
        held-out text perplexity row).
    """
    check_model(model)
    mode = check_choice(mode, "mode", ("zero", "unk"))
    if mode == "unk" and getattr(getattr(model, "tokenizer", None), "unk_token_id", None) is None:
        raise ValueError("mode='unk' needs a tokenizer with an unknown token; this one has none: use mode='zero'")
    seed = check_int(seed, "seed")
    batch_size = check_batch_size(batch_size)
    _check_text(text)
    relation_facts = check_sequence(relation_facts, "relation_facts", what="facts")
    other_facts = check_sequence(other_facts, "other_facts", what="facts")
    own = _prompts(model, relation_facts, None, "relation")
    if not own:
        raise ValueError("relation_facts is empty; pass the facts of the relation to erase")
    others = _prompts(model, other_facts, None, "other-relation")
    neuron_list = to_neurons(neurons, model, allow_empty=True)
    if not neuron_list:
        raise ValueError("no neurons to erase")
    if relation is None:
        relation = getattr(relation_facts[0], "relation", None)
    use_text = text is not False and not is_encoder(model)
    text_value = None if text is True or text is False else text
    control = random_neurons(model, neuron_list, seed=seed)
    sets = {"same relation": own, "other relations": others}
    before = {k: _accuracy_ppl(measure(model, v, batch_size=batch_size)) for k, v in sets.items() if v}
    text_before = text_perplexity(model, text_value) if use_text else float("nan")
    rows = []
    for label, group in (("knowledge neurons", neuron_list), ("random neurons", control)):
        with erase(model, group, mode=mode):
            for condition, prompts in sets.items():
                if not prompts:
                    continue
                acc_a, ppl_a, _ = _accuracy_ppl(measure(model, prompts, batch_size=batch_size))
                acc_b, ppl_b, _ = before[condition]
                rows.append(dict(relation=relation, mode=mode, neurons=label, n_neurons=len(group),
                                 condition=condition, n=len(prompts), acc_before=acc_b, acc_after=acc_a,
                                 ppl_before=ppl_b, ppl_after=ppl_a))  # fmt: skip
            if use_text:
                ppl_a = text_perplexity(model, text_value)
                rows.append(dict(relation=relation, mode=mode, neurons=label, n_neurons=len(group),
                                 condition="held-out text", n=1, acc_before=float("nan"), acc_after=float("nan"),
                                 ppl_before=text_before, ppl_after=ppl_a))  # fmt: skip
    frame = pd.DataFrame(rows)
    frame["ppl_change_%"] = 100 * relative_change(frame["ppl_before"], frame["ppl_after"])
    return frame


def _texts(fact: Any, name: str = "fact") -> list[str]:
    """The prompt texts of a fact (``.prompts``) or of a list of prompts; one str is refused, not split."""
    prompts = to_fact(fact, name, need_target=False, prompts_only=True).prompts
    return [p.text if isinstance(p, Prompt) else p for p in prompts]


@evaluating
def edit_effects(
    model: Model,
    fact: Any,
    neurons: NeuronsLike | KnowledgeNeurons,
    new: TargetLike,
    *,
    old: TargetLike = None,
    heldout: Sequence[str] = (),
    neighbours: Sequence[Any] = (),
    seed: int = 0,
    text: str | bool | None = None,
    lambda1: float = 1.0,
    lambda2: float = 8.0,
    relation: str | None = None,
    batch_size: int = 32,
) -> pd.DataFrame:
    """Edit a fact (:func:`kn_lens.edit.edit_fact`) and score it, beside the same update on random active neurons.

    Args:
        model: the model (weights restored on exit).
        fact: the fact: a bag / ``FactPrompts`` / ``KnowledgeNeurons`` (``.prompts``) or a list of prompt texts.
        neurons: its knowledge neurons.
        new: the new answer.
        old: the answer to remove (default: the model's current top-1 prediction on the first prompt).
        heldout: paraphrases not used to find the neurons (paraphrase success).
        neighbours: other facts of the relation with their own answers (neighbourhood: do they keep them?).
        seed: seed of the random-active-neuron control.
        text: held-out text for fluency (None: :func:`heldout_text`; False: none; causal models only).
        lambda1, lambda2: the edit's weights (Dai et al.: 1 and 8).
        relation: the ``relation`` column (default ``fact.relation``).
        batch_size: prompts per forward pass.

    Returns:
        One row per neuron set (``"knowledge neurons"``, ``"random active neurons"``): ``success`` (share of
        the fact's prompts where ``new`` is top-1 after the edit; ``success_before`` before it),
        ``paraphrase_success``, ``new_prob_before/after``, ``neighbourhood_before/after`` (top-1 accuracy of the
        neighbours on their own answers), ``ppl_before/after`` (held-out text).

    Example:
        >>> from kn_lens.fixtures import tiny_bert
        >>> france = tiny_bert.FACTS[0]
        >>> found = kn_lens.find_knowledge_neurons(bert, tiny_bert.train_prompts(france), "Paris")
        >>> others = [(tiny_bert.train_prompts(f), f.answer) for f in tiny_bert.facts_of("capital")[1:5]]
        >>> edited = edit_effects(bert, found, found.neurons, "Rome", heldout=tiny_bert.heldout_prompts(france),
        ...                       neighbours=others)
        >>> edited.set_index("neurons")[["success", "new_prob_after", "neighbourhood_after"]].round(4)
                               success  new_prob_after  neighbourhood_after
        neurons
        knowledge neurons          0.0          0.0005                 0.25
        random active neurons      0.0          0.0063                 1.00

        The edit fails on this model (Rome stays improbable), yet the other capitals keep their own answer on only
        a quarter of their prompts, while the same update on random active neurons leaves them intact.
    """
    check_model(model)
    texts = _texts(fact, "fact")
    if not texts:
        raise ValueError("the fact has no prompts")
    neuron_list = to_neurons(neurons, model, allow_empty=True)
    if not neuron_list:
        raise ValueError("no neurons to edit")
    for name, value in (("lambda1", lambda1), ("lambda2", lambda2)):
        check_number(value, name)
    seed = check_int(seed, "seed")
    batch_size = check_batch_size(batch_size)
    _check_text(text)
    if new is None:
        raise ValueError("new is None; pass the new answer, e.g. ' Rome'")
    if old is not None:
        token_ids(model, old)  # a clear error now, not after the first scores
    if relation is None:
        relation = getattr(fact, "relation", None)
    new_prompts = [make_prompt(model, t, new) for t in texts]
    held = [make_prompt(model, t, new) for t in check_sequence(heldout, "heldout")]
    near = _prompts(model, check_sequence(neighbours, "neighbours", what="facts"), None, "neighbour")
    if old is None:  # the model's current answer, as the EleutherAI package does
        first = make_prompt(model, texts[0])
        with torch.inference_mode():
            logits = forward_logits(model, first.tokens[None].to(model.cfg.device))
        old = int(logits[0, first.site].argmax())
    use_text = text is not False and not is_encoder(model)
    text_value = None if text is True or text is False else text

    def score() -> dict[str, float]:
        m = measure(model, new_prompts, batch_size=batch_size)
        out = dict(success=float(m.top1.float().mean()), new_prob=float(m.prob.mean()))
        out["paraphrase_success"] = (
            float(measure(model, held, batch_size=batch_size).top1.float().mean()) if held else float("nan")
        )
        out["neighbourhood"] = (
            float(measure(model, near, batch_size=batch_size).top1.float().mean()) if near else float("nan")
        )
        out["ppl"] = text_perplexity(model, text_value) if use_text else float("nan")
        return out

    base = score()
    control = random_active_neurons(model, neuron_list, new_prompts, seed=seed)
    rows = []
    for label, group in (("knowledge neurons", neuron_list), ("random active neurons", control)):
        with edit_fact(model, group, old, new, lambda1=lambda1, lambda2=lambda2):
            after = score()
        rows.append(dict(relation=relation, neurons=label, n_neurons=len(group), old=_token_text(model, old),
                         new=_token_text(model, new), n=len(new_prompts), success_before=base["success"],
                         success=after["success"], paraphrase_success_before=base["paraphrase_success"],
                         paraphrase_success=after["paraphrase_success"], new_prob_before=base["new_prob"],
                         new_prob_after=after["new_prob"], neighbourhood_before=base["neighbourhood"],
                         neighbourhood_after=after["neighbourhood"], ppl_before=base["ppl"],
                         ppl_after=after["ppl"]))  # fmt: skip
    return pd.DataFrame(rows)


def _token_text(model: Model, token: TargetLike) -> str:
    if isinstance(token, str):
        return token
    ids = [token] if isinstance(token, int) else list(token or [])
    return model.tokenizer.decode(ids)


__all__ = [
    "edit_effects",
    "erase_relation",
    "relation_neurons",
]
