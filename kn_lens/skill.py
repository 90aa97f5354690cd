"""Skill neurons (Wang et al., EMNLP 2022): neurons whose activation at the prompt predicts a task's label.

Wang et al. prompt-tune a frozen RoBERTa on a binary task (SST-2, say): a few *virtual token* embeddings, the
soft prompt, are learned in front of every input while every model weight stays fixed. They then look at the MLP
neurons *at the soft-prompt positions*. The prompt is the same for every input, so whatever a neuron does there
depends on the input only through attention; yet some neurons' activations there separate positive from
negative reviews almost perfectly. Those are **skill neurons**. Perturbing them hurts the task far more than
perturbing as many random neurons, and keeping only them (the rest fixed at their mean) prunes the model with
little loss. This module brings every step to TransformerLens models, as hooks:

1. **Tasks** (:class:`Task`): a binary task is ``(texts, labels)`` in train / dev / test splits.
   :func:`make_task` splits (seeded, stratified), :func:`binarize` turns a multi-class task into a binary one,
   :func:`sentiment_task` generates an offline sentiment set, :func:`pararel_place_or_language` and
   :func:`pararel_relation_pair` build tasks from a PARAREL folder, and :func:`load_sst2` / :func:`load_hf_task`
   read public sets through ``datasets`` (from the hub, or local files in the same format).
2. **Prompts**: :class:`HardPrompt` is a text template (``"Review: {text}\\nSentiment:"``) whose template tokens
   are the prompt positions; :func:`train_soft_prompt` learns a :class:`SoftPrompt`, ``n_tokens`` embeddings
   written over reserved positions by a hook on the embedding output (``hook_embed``). A *verbalizer* maps the
   labels to two tokens read at the ``[MASK]`` (encoders) or the next token (causal models).
3. **Predictivity** (:func:`predictivity`): for every ``mlp_post`` neuron and prompt position, the threshold is
   the neuron's mean activation over the train split; predictivity is the dev accuracy of predicting the label
   by thresholding there, with the better of the two signs; positions are aggregated by mean or min.
4. **Perturbation** (:func:`kn_lens.hooks.perturb`, :func:`perturbation_curve`): accuracy after perturbing the
   top x% of skill neurons at the prompt positions, beside as many random neurons of the same layers.
5. **Pruning** (:func:`prune`): every non-skill neuron is fixed to its train-mean activation, folded into the
   MLP output bias, and dropped from ``W_in``/``W_out``: a smaller TransformerLens model.

Where the prompt goes:
    Encoders read the whole sequence both ways, so the soft prompt sits after ``[CLS]`` (the paper's place).
    A causal model's position ``i`` only sees positions ``<= i``: a prompt *before* the input cannot depend on
    it, so every neuron there has the same activation for every input and predictivity is stuck at the majority
    rate. kn_lens therefore puts a causal model's soft prompt *after* the input by default (``placement="end"``)
    and, for hard templates, counts only the template tokens after the text as prompt positions.

Caveats:
    The sign is chosen on the same dev split whose accuracy is reported, as in the paper, so predictivity is at
    least about 0.5 even for a useless neuron; compare the best neurons with the bulk (the figure does) and
    always look at perturbation against random neurons before calling a neuron a skill neuron.

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

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from kn_lens import backends
from kn_lens._device import accumulator_dtype, evaluating
from kn_lens._typing import Model, Neuron, check_model, hook_name, is_encoder
from kn_lens.inputs import (
    check_batch_size,
    check_choice,
    check_count,
    check_finite,
    check_int,
    check_number,
    check_sequence,
    to_layers,
)

Aggregate = Literal["mean", "min"]


# --------------------------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------------------------


class Split(NamedTuple):
    """One split of a binary task: ``texts`` and their ``labels`` (0 or 1)."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.texts)


def _check_pair(texts: Any, labels: Any, what: str = "texts") -> Split:
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of texts, not one str")
    texts = tuple(texts)
    labels = tuple(labels.tolist() if isinstance(labels, Tensor) else labels)
    if len(texts) != len(labels):
        raise ValueError(f"{what} and labels have different lengths ({len(texts)} vs {len(labels)})")
    if not texts:
        raise ValueError(f"{what} is empty; a task split needs at least one example")
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"every text must be a non-empty str, got {text!r}")
    bad = [y for y in labels if isinstance(y, float) or y not in (0, 1)]
    if bad:
        raise ValueError(
            f"labels must be binary (0 or 1), got {sorted(set(map(repr, bad)))[:5]}; turn a multi-class task "
            "into a binary one with kn_lens.skill.binarize"
        )
    return Split(texts, tuple(int(y) for y in labels))


@dataclass(frozen=True)
class Task:
    """A binary classification task with train / dev / test splits.

    Attributes:
        name: a short name for tables and figures.
        train, dev, test: the :class:`Split` s; each non-empty, labels 0/1.
        classes: names of label 0 and label 1 (for display).

    Example:
        >>> task = make_task(["good", "bad", "great", "awful", "fine", "poor"], [1, 0, 1, 0, 1, 0], name="mine",
        ...                  dev=1/3, test=1/3)
        >>> task
        Task('mine', train=2, dev=2, test=2, classes=('negative', 'positive'))
        >>> task.dev
        Split(texts=(...), labels=(...))
        >>> task.to_frame().columns.tolist()
        ['split', 'text', 'label', 'cls']
    """

    name: str
    train: Split
    dev: Split
    test: Split
    classes: tuple[str, str] = ("negative", "positive")

    def __post_init__(self) -> None:
        for part in ("train", "dev", "test"):
            value = getattr(self, part)
            if not isinstance(value, Split):
                value = _check_pair(*value, what=f"{part} texts")
            else:
                value = _check_pair(value.texts, value.labels, what=f"{part} texts")
            object.__setattr__(self, part, value)
        if len(self.classes) != 2:
            raise ValueError(f"classes must name the two labels, got {self.classes!r}")
        for part in ("train", "dev"):  # thresholds come from train, signs and accuracies from dev
            present = set(getattr(self, part).labels)
            if len(present) < 2:
                raise ValueError(
                    f"the {part} split has a single class (label {present.pop()}): a binary task needs examples of "
                    "both labels in train and dev (give both classes; make_task stratifies by label)"
                )

    def split(self, name: str) -> Split:
        """The split called ``name`` (``"train"``, ``"dev"`` or ``"test"``)."""
        if name not in ("train", "dev", "test"):
            raise ValueError(f"unknown split {name!r}; use 'train', 'dev' or 'test'")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        """Number of examples per split."""
        return {part: len(self.split(part)) for part in ("train", "dev", "test")}

    def to_frame(self) -> pd.DataFrame:
        """One row per example: split, text, label, class."""
        rows = [
            dict(split=part, text=t, label=y, cls=self.classes[y])
            for part in ("train", "dev", "test")
            for t, y in zip(*self.split(part), strict=True)
        ]
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes().items())
        return f"Task({self.name!r}, {sizes}, classes={self.classes})"


def _stratified(labels: Sequence[int], fractions: Sequence[float], seed: int) -> list[list[int]]:
    """Indices split into ``len(fractions) + 1`` parts, each label spread proportionally (last part = rest)."""
    rng = random.Random(seed)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for label in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == label]
        rng.shuffle(idx)
        start = 0
        for k, fraction in enumerate(fractions):
            n = round(fraction * len(idx))
            parts[k].extend(idx[start : start + n])
            start += n
        parts[-1].extend(idx[start:])
    for part in parts:
        rng.shuffle(part)
    return parts


def make_task(
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    name: str = "task",
    classes: tuple[str, str] = ("negative", "positive"),
    dev: float = 0.2,
    test: float = 0.2,
    seed: int = 0,
) -> Task:
    """Split labelled texts into a :class:`Task` (seeded, stratified by label).

    Args:
        texts: the inputs.
        labels: 0/1 labels, one per text.
        name: the task's name.
        classes: names of label 0 and label 1.
        dev: fraction of each label's examples for the dev split.
        test: fraction for the test split (the rest is train).
        seed: the shuffle's seed.

    Raises:
        ValueError: lengths differ, labels not binary, fractions outside [0, 1) or a split that would be empty.

    Example:
        >>> task = make_task(["good", "bad", "great", "awful", "fine", "poor"], [1, 0, 1, 0, 1, 0], dev=1/3, test=1/3)
        >>> task.sizes()
        {'train': 2, 'dev': 2, 'test': 2}
    """
    pair = _check_pair(texts, labels)
    if len(set(pair.labels)) < 2:
        raise ValueError(f"every label is {pair.labels[0]}: a binary task needs examples of both labels 0 and 1")
    for what, fraction in (("dev", dev), ("test", test)):
        if not 0 <= fraction < 1:
            raise ValueError(f"{what} must be a fraction in [0, 1), got {fraction}")
    if dev + test >= 1:
        raise ValueError(f"dev + test = {dev + test} leaves nothing to train on; keep it below 1")
    dev_idx, test_idx, train_idx = _stratified(pair.labels, [dev, test], seed)
    pick = [(part, idx) for part, idx in (("train", train_idx), ("dev", dev_idx), ("test", test_idx))]
    for part, idx in pick:
        if not idx:
            raise ValueError(f"the {part} split would be empty ({len(pair)} examples); pass more data")
    splits = {part: Split(tuple(pair.texts[i] for i in idx), tuple(pair.labels[i] for i in idx)) for part, idx in pick}
    return Task(name, splits["train"], splits["dev"], splits["test"], tuple(classes))  # type: ignore[arg-type]


def binarize(
    texts: Sequence[str],
    labels: Sequence[Any],
    positive: Any,
    negative: Any = None,
) -> tuple[list[str], list[int]]:
    """Turn a multi-class task into a binary one, as Wang et al. do for MNLI.

    Args:
        texts: the inputs.
        labels: any hashable labels (strings, ints).
        positive: the class (or a set/list of classes) that becomes label 1.
        negative: None for one-vs-rest (every other class becomes 0); or the class(es) that become 0, in which
            case examples of any other class are dropped (e.g. entailment vs contradiction).

    Returns:
        ``(texts, labels)`` with labels 0/1, ready for :func:`make_task`.

    Example:
        >>> binarize(["a", "b", "c"], ["entail", "neutral", "contra"], "entail", "contra")
        (['a', 'c'], [1, 0])
    """
    texts = check_sequence(texts, "texts", what="texts")
    labels = check_sequence(labels, "labels", what="labels")
    if len(texts) != len(labels):
        raise ValueError(f"texts and labels have different lengths ({len(texts)} vs {len(labels)})")
    pos = set(positive) if isinstance(positive, list | set | tuple | frozenset) else {positive}
    neg = None if negative is None else (set(negative) if isinstance(negative, list | set | tuple) else {negative})
    present = set(labels)
    for what, classes in (("positive", pos), ("negative", neg or set())):
        missing = classes - present
        if missing:
            raise ValueError(
                f"{what} class(es) {sorted(map(repr, missing))} not among the labels {sorted(map(repr, present))}"
            )
    if neg is not None and pos & neg:
        raise ValueError(f"classes {sorted(map(repr, pos & neg))} are both positive and negative")
    out_texts, out_labels = [], []
    for text, label in zip(texts, labels, strict=True):
        if label in pos:
            out_texts.append(text)
            out_labels.append(1)
        elif neg is None or label in neg:
            out_texts.append(text)
            out_labels.append(0)
    if len(set(out_labels)) < 2:
        raise ValueError("the binarized task has a single class; check positive/negative")
    return out_texts, out_labels


_NOUNS = ("movie", "film", "story", "plot", "acting", "script", "soundtrack", "ending", "cast", "dialogue")
_POSITIVE = ("wonderful", "brilliant", "delightful", "moving", "superb", "charming", "excellent", "gripping")
_NEGATIVE = ("terrible", "boring", "awful", "dull", "painful", "clumsy", "dreadful", "tedious")
_ADVERBS = ("", "really ", "truly ", "quite ", "very ", "simply ")
_TEMPLATES = (
    "The {noun} was {adv}{adj}.",
    "I thought the {noun} was {adv}{adj}.",
    "What a {adv}{adj} {noun}.",
    "Honestly, the {noun} is {adv}{adj}.",
    "Everyone agreed that the {noun} was {adv}{adj}.",
    "The {noun} felt {adv}{adj} from start to finish.",
)
_NEGATED = (
    "The {noun} was not {adj} at all.",
    "I would not call the {noun} {adj}.",
)


def sentiment_task(n: int = 400, *, negation: float = 0.15, seed: int = 0, **split: Any) -> Task:
    """A generated movie-review sentiment task (offline): short sentences, half positive, half negative.

    Sentences combine a template, a noun, an optional adverb and a positive or negative adjective; a fraction
    ``negation`` of them negate the adjective ("The plot was not dull at all.") and carry the flipped label, so
    the task is not solvable from one word.

    Args:
        n: number of sentences (distinct, at most a few thousand).
        negation: fraction of negated sentences.
        seed: the generator's seed (also used for the split).
        **split: ``dev``, ``test`` fractions for :func:`make_task`.

    Example:
        >>> task = sentiment_task(100)
        >>> task
        Task('sentiment', train=60, dev=20, test=20, classes=('negative', 'positive'))
        >>> task.train.texts[0], task.train.labels[0]
        (...)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 6:
        raise ValueError(f"n must be an int >= 6, got {n!r}")
    if not 0 <= negation <= 1:
        raise ValueError(f"negation must be a fraction in [0, 1], got {negation}")
    rng = random.Random(seed)
    seen: set[str] = set()
    texts, labels = [], []
    for _attempt in range(50 * n):
        label = len(texts) % 2
        adjectives = _POSITIVE if label else _NEGATIVE
        negated = rng.random() < negation
        noun = rng.choice(_NOUNS)
        if negated:  # "not dull" is positive: use the opposite adjective
            adj = rng.choice(_NEGATIVE if label else _POSITIVE)
            text = rng.choice(_NEGATED).format(noun=noun, adj=adj)
        else:
            text = rng.choice(_TEMPLATES).format(noun=noun, adv=rng.choice(_ADVERBS), adj=rng.choice(adjectives))
        text = text[0].upper() + text[1:]
        if text in seen:
            continue
        seen.add(text)
        texts.append(text)
        labels.append(label)
        if len(texts) == n:
            break
    if len(texts) < n:
        raise ValueError(f"could only generate {len(texts)} distinct sentences; ask for fewer")
    return make_task(texts, labels, name="sentiment", seed=seed, **split)


_PLACE_RELATIONS = ("P19", "P20", "P937", "P740", "P159", "P27", "P495")
_LANGUAGE_RELATIONS = ("P37", "P103", "P407", "P364", "P1412")


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _pararel(folder: str | Path, relation: str) -> tuple[list[str], list[tuple[str, str]]]:
    folder = Path(folder)
    patterns_path, facts_path = folder / "patterns" / f"{relation}.jsonl", folder / "facts" / f"{relation}.jsonl"
    if not patterns_path.exists() or not facts_path.exists():
        raise FileNotFoundError(
            f"relation {relation} not found in {folder} (expected patterns/{relation}.jsonl and facts/{relation}.jsonl "
            "from the PARAREL release)"
        )
    patterns = []
    for number, row in enumerate(_read_jsonl(patterns_path), start=1):
        pattern = row.get("pattern") if isinstance(row, dict) else None
        if not isinstance(pattern, str) or pattern.count("[X]") != 1 or pattern.count("[Y]") != 1:
            raise ValueError(
                f"{patterns_path}, line {number}: a template needs exactly one [X] and one [Y]: {pattern!r}"
            )
        patterns.append(pattern)
    facts = []
    for number, row in enumerate(_read_jsonl(facts_path), start=1):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("sub_label", "obj_label")):
            raise ValueError(f"{facts_path}, line {number}: a fact needs 'sub_label' and 'obj_label' strings")
        facts.append((row["sub_label"], row["obj_label"]))
    return patterns, facts


def _pararel_texts(
    folder: str | Path, relations: Sequence[str], n: int, *, fill_object: bool, rng: random.Random
) -> list[str]:
    """``n`` texts from ``relations`` (round robin), one random template per fact, no fact twice."""
    pools = []
    for relation in relations:
        patterns, facts = _pararel(folder, relation)
        if not fill_object:  # a next-token prompt: the answer slot must end the sentence
            patterns = [p.rstrip(" .") for p in patterns if p.rstrip(" .").endswith("[Y]")]
        if not patterns:
            continue
        facts = list(facts)
        rng.shuffle(facts)
        pools.append((patterns, facts))
    if not pools:
        raise ValueError(f"no usable templates in relations {list(relations)}")
    texts: list[str] = []
    cursor = [0] * len(pools)
    while len(texts) < n:
        progressed = False
        for k, (patterns, facts) in enumerate(pools):
            if cursor[k] >= len(facts) or len(texts) >= n:
                continue
            subject, obj = facts[cursor[k]]
            cursor[k] += 1
            progressed = True
            text = rng.choice(patterns).replace("[X]", subject)
            text = text.replace("[Y]", obj) if fill_object else text[: text.index("[Y]")].rstrip()
            texts.append(text.replace(" .", "."))
        if not progressed:
            raise ValueError(f"relations {list(relations)} have only {len(texts)} facts; ask for fewer")
    return texts


def pararel_place_or_language(folder: str | Path, n: int = 400, *, seed: int = 0, **split: Any) -> Task:
    """PARAREL prompts that ask for a place (label 0) or a language (label 1).

    Each text is a PARAREL template filled with a fact's subject and cut at the answer slot ("Alan Turing was
    born in"), one random template per fact; places come from relations such as place of birth / death / work,
    languages from official / native language, language of a work, languages spoken.

    Args:
        folder: a PARAREL folder with ``patterns/`` and ``facts/`` (the package never guesses it; tests use
            ``../shared/pararel``).
        n: number of texts (half per class).
        seed: sampling and split seed.
        **split: ``dev``, ``test`` fractions for :func:`make_task`.

    Example:
        >>> task = pararel_place_or_language(pararel_folder, n=200)  # e.g. "../shared/pararel"
        >>> task
        Task('place-or-language', train=120, dev=40, test=40, classes=('place', 'language'))
        >>> task.train.texts[0], task.train.labels[0]
        (...)
    """
    rng = random.Random(seed)
    places = _pararel_texts(folder, _PLACE_RELATIONS, n // 2, fill_object=False, rng=rng)
    languages = _pararel_texts(folder, _LANGUAGE_RELATIONS, n - n // 2, fill_object=False, rng=rng)
    return make_task(
        places + languages, [0] * len(places) + [1] * len(languages), name="place-or-language",
        classes=("place", "language"), seed=seed, **split,
    )  # fmt: skip


def pararel_relation_pair(
    folder: str | Path, negative: str = "P19", positive: str = "P20", n: int = 400, *, seed: int = 0, **split: Any
) -> Task:
    """Which of two PARAREL relations a sentence expresses (e.g. place of birth, 0, vs place of death, 1).

    Each text is a whole PARAREL sentence (subject and object filled in), one random template per fact. The two
    relations must differ (one relation against itself has nothing to tell apart).

    Example:
        >>> task = pararel_relation_pair(pararel_folder, "P19", "P20", n=200)  # e.g. "../shared/pararel"
        >>> task
        Task('P19-vs-P20', train=120, dev=40, test=40, classes=('P19', 'P20'))
        >>> task.train.texts[0], task.train.labels[0]
        (...)
    """
    if negative == positive:
        raise ValueError(f"negative and positive are the same relation ({negative!r}); pass two different ones")
    rng = random.Random(seed)
    zero = _pararel_texts(folder, [negative], n // 2, fill_object=True, rng=rng)
    one = _pararel_texts(folder, [positive], n - n // 2, fill_object=True, rng=rng)
    return make_task(
        zero + one, [0] * len(zero) + [1] * len(one), name=f"{negative}-vs-{positive}",
        classes=(negative, positive), seed=seed, **split,
    )  # fmt: skip


def load_hf_task(
    dataset: str,
    config: str | None = None,
    *,
    data_files: str | dict[str, str] | None = None,
    text: str = "sentence",
    label: str = "label",
    train: str = "train",
    test: str = "validation",
    dev: float = 0.1,
    limit: int | None = None,
    classes: tuple[str, str] = ("negative", "positive"),
    seed: int = 0,
) -> Task:
    """A binary task from the Hugging Face hub (needs internet) or local files in the same format.

    Wang et al.'s protocol for GLUE-style sets whose test labels are hidden: the public validation split is the
    test split, and a ``dev`` fraction of the training split (stratified) is the dev split.

    Args:
        dataset: a hub name (``"stanfordnlp/sst2"``), or the builder for local files (``"json"``, ``"csv"``,
            ``"parquet"``) with ``data_files``.
        config: the dataset configuration, if any (``"sst2"`` for ``"glue"``).
        data_files: local files, e.g. ``{"train": "train.jsonl", "validation": "dev.jsonl"}``.
        text, label: the column names.
        train, test: the split names to read.
        dev: the fraction of ``train`` held out as dev.
        limit: keep at most this many examples per split (seeded sample), for quick runs.
        classes: names of label 0 and 1.
        seed: sampling and split seed.

    Example:
        Local files in the hub's format (here written on the spot):

        >>> folder = getfixture("tmp_path")  # any folder
        >>> rows = [{"sentence": f"review number {i}", "label": i % 2} for i in range(40)]
        >>> _ = (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\\n" for row in rows[:30]))
        >>> _ = (folder / "dev.jsonl").write_text("".join(json.dumps(row) + "\\n" for row in rows[30:]))
        >>> files = {"train": str(folder / "train.jsonl"), "validation": str(folder / "dev.jsonl")}
        >>> task = load_hf_task("json", data_files=files)
        >>> task  # dev: 10% of train; test: the validation file
        Task('json', train=26, dev=4, test=10, classes=('negative', 'positive'))
        >>> task.test.texts[0], task.test.labels[0]
        ('review number 30', 0)
        >>> load_hf_task("glue", "sst2", limit=2000)  # from the hub  # doctest: +SKIP
    """
    try:
        import datasets
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("loading public tasks needs the `datasets` package: pip install datasets") from error
    loaded = datasets.load_dataset(dataset, config, data_files=data_files)
    columns: dict[str, tuple[list[str], list[int]]] = {}
    for part in (train, test):
        if part not in loaded:
            raise ValueError(f"the dataset has no split {part!r}; it has {list(loaded)}")
        table = loaded[part]
        for column in (text, label):
            if column not in table.column_names:
                raise ValueError(f"split {part!r} has no column {column!r}; columns: {table.column_names}")
        texts, labels = list(table[text]), [int(y) for y in table[label]]
        if limit is not None and len(texts) > limit:
            keep = sorted(random.Random(seed).sample(range(len(texts)), limit))
            texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
        columns[part] = (texts, labels)
    train_pair = _check_pair(*columns[train], what=f"{train} texts")
    dev_idx, train_idx = _stratified(train_pair.labels, [dev], seed)
    name = dataset if config is None else f"{dataset}/{config}"
    return Task(
        name,
        Split(tuple(train_pair.texts[i] for i in train_idx), tuple(train_pair.labels[i] for i in train_idx)),
        Split(tuple(train_pair.texts[i] for i in dev_idx), tuple(train_pair.labels[i] for i in dev_idx)),
        _check_pair(*columns[test], what=f"{test} texts"),
        tuple(classes),  # type: ignore[arg-type]
    )


def load_sst2(*, data_files: str | dict[str, str] | None = None, **kwargs: Any) -> Task:
    """SST-2 (Socher et al. 2013), the paper's main task: from the hub, or local files with the same columns.

    Columns ``sentence`` and ``label`` (0 negative, 1 positive); the public validation split is the test split.

    Example:
        >>> task = load_sst2(limit=2000)  # stanfordnlp/sst2 from the hub  # doctest: +SKIP

        Or local copies (``.jsonl``, ``.json``, ``.csv`` or ``.parquet``), here two small csv files:

        >>> folder = getfixture("tmp_path")  # any folder
        >>> rows = "".join(f"text number {i},{i % 2}\\n" for i in range(20))
        >>> _ = (folder / "train.csv").write_text("sentence,label\\n" + rows)
        >>> _ = (folder / "dev.csv").write_text("sentence,label\\na fine film,1\\na dull film,0\\n")
        >>> load_sst2(data_files={"train": str(folder / "train.csv"), "validation": str(folder / "dev.csv")})
        Task('csv', train=18, dev=2, test=2, classes=('negative', 'positive'))
    """
    if data_files is None:
        return load_hf_task("stanfordnlp/sst2", **kwargs)
    first = data_files if isinstance(data_files, str) else next(iter(data_files.values()))
    suffix = Path(first).suffix.lower()
    builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(suffix)
    if builder is None:
        raise ValueError(f"cannot read {first!r}: use .jsonl, .json, .csv or .parquet files")
    return load_hf_task(builder, data_files=data_files, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# Prompts: hard templates and soft prompts
# --------------------------------------------------------------------------------------------------------------


class Layout(NamedTuple):
    """Where things are in a prompted input; positions >= 0 count from the start, < 0 from the end.

    Attributes:
        prefix: token ids before the text (``[CLS]``/BOS, template tokens, reserved soft-prompt slots).
        suffix: token ids after the text (template tokens, ``[MASK]``, ``[SEP]``, reserved slots).
        positions: the prompt positions (where skill neurons are read and perturbed).
        site: where the verbalizer is read (the ``[MASK]``, or the last position of a causal model).
        soft: the reserved positions a soft prompt writes over (empty for a hard prompt).
        space: whether the text gets a leading space (BPE vocabularies after a template word).
    """

    prefix: list[int]
    suffix: list[int]
    positions: tuple[int, ...]
    site: int
    soft: tuple[int, ...]
    space: bool


def _tokenizer(model: Model):
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("this model has no tokenizer; attach one (model.set_tokenizer(...))")
    return tokenizer


def _piece(model: Model, text: str) -> list[int]:
    return list(_tokenizer(model)(text, add_special_tokens=False)["input_ids"]) if text else []


def _reserved_id(model: Model) -> int:
    tokenizer = _tokenizer(model)
    for name in ("pad_token_id", "unk_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


def _split_template(template: str) -> tuple[str, str]:
    if not isinstance(template, str):
        raise TypeError(f"template must be a str, got {type(template).__name__}")
    if template.count("{text}") != 1:
        raise ValueError(f"a template needs exactly one {{text}} where the input goes, got {template!r}")
    before, after = template.split("{text}")
    return before, after


def _layout(model: Model, template: str, n_soft: int, placement: str) -> Layout:
    """The layout of ``template`` with ``n_soft`` reserved slots at ``placement`` ("start"/"end")."""
    check_model(model)
    tokenizer = _tokenizer(model)
    before, after = _split_template(template)
    space = False
    if not is_encoder(model) and before.endswith(" "):
        before, space = before[:-1], True  # BPE: the space belongs to the text's first token
    pre, post = _piece(model, before), _piece(model, after)
    reserved = [_reserved_id(model)] * n_soft
    if is_encoder(model):
        mask_id = tokenizer.mask_token_id
        if mask_id in pre:
            raise ValueError(f"put the {tokenizer.mask_token} after {{text}} in the template {template!r}")
        if mask_id not in post:
            post = [*post, mask_id]
        if post.count(mask_id) != 1:
            raise ValueError(f"the template {template!r} has more than one {tokenizer.mask_token}")
        if placement == "start":  # the paper's place, right after [CLS]
            prefix = [tokenizer.cls_token_id, *reserved, *pre]
            suffix = [*post, tokenizer.sep_token_id]
            soft = tuple(range(1, 1 + n_soft))
        else:  # before [SEP]: the text keeps its positions (small models trained at fixed positions need that)
            prefix = [tokenizer.cls_token_id, *pre]
            suffix = [*post, *reserved, tokenizer.sep_token_id]
            soft = tuple(range(-1 - n_soft, -1))
        site = post.index(mask_id) - len(suffix)
        template_positions = tuple(range(1, len(prefix))) + tuple(range(-len(suffix), -1 - n_soft))
    else:
        bos = [tokenizer.bos_token_id] if model.cfg.default_prepend_bos and tokenizer.bos_token_id is not None else []
        if placement == "start":
            prefix, suffix = [*bos, *reserved, *pre], list(post)
            soft = tuple(range(len(bos), len(bos) + n_soft))
        else:
            prefix, suffix = [*bos, *pre], [*post, *reserved]
            soft = tuple(range(-n_soft, 0))
        site = -1
        # template tokens before the text cannot see it (causal attention): only those after it are prompt positions
        template_positions = tuple(range(-len(suffix), -n_soft if placement == "end" and n_soft else 0))
        if not template_positions:
            template_positions = (-1 - (n_soft if placement == "end" else 0),)
    positions = soft if n_soft else template_positions
    return Layout(prefix, suffix, positions, site, soft, space)


def _verbalizer_ids(model: Model, verbalizer: Sequence[str]) -> tuple[int, int]:
    if isinstance(verbalizer, str) or len(verbalizer) != 2:
        raise ValueError(f"verbalizer must be two words (label 0, label 1), got {verbalizer!r}")
    ids = []
    for word in verbalizer:
        if not isinstance(word, str) or not word:
            raise TypeError(f"verbalizer words must be non-empty str, got {word!r}")
        piece = _piece(model, word)
        unk = getattr(_tokenizer(model), "unk_token_id", None)
        if len(piece) != 1 or piece[0] == unk:
            hint = "" if is_encoder(model) or word.startswith(" ") else f" (did you mean {' ' + word!r}?)"
            raise ValueError(f"verbalizer word {word!r} is not a single token of this model{hint}")
        ids.append(piece[0])
    if ids[0] == ids[1]:
        raise ValueError(f"the verbalizer's two words are the same token: {verbalizer!r}")
    return ids[0], ids[1]


@dataclass
class HardPrompt:
    """A text template: ``"{text}"`` marks the input; its own tokens are the prompt positions.

    Encoders read the verbalizer at the template's ``[MASK]`` (appended after the template when it has none);
    causal models read it at the next token after the whole input. For causal models only the template tokens
    *after* the text count as prompt positions (those before cannot see the input); with none there, the last
    token of the text is used.

    Attributes:
        template: e.g. ``"Review: {text}\\nSentiment (positive or negative):"`` (causal) or
            ``"{text} It was [MASK]."`` (encoder).
        verbalizer: the words for label 0 and label 1 (single tokens; mind the leading space of BPE vocabularies).

    Example:
        >>> prompt = HardPrompt("Review: {text}\\nSentiment:", (" negative", " positive"))
        >>> prompt.layout(model).positions  # SmolLM2: "\\n", "Sent", "iment", ":" after the text
        (-4, -3, -2, -1)
        >>> [model.to_string(t) for t in prompt.to_tokens(model, "A fine film.")[0]]
        ['Review', ':', ' A', ' fine', ' film', '.', '\\n', 'Sent', 'iment', ':']
        >>> prompt = HardPrompt("{text} It was [MASK].", ("violin", "piano"))  # an encoder: BERT
        >>> prompt.layout(bert).positions, prompt.layout(bert).site
        ((-5, -4, -3, -2), -3)
    """

    template: str = "{text}"
    verbalizer: tuple[str, str] = (" negative", " positive")

    def __post_init__(self) -> None:
        _split_template(self.template)
        self.verbalizer = tuple(self.verbalizer)  # type: ignore[assignment]

    def layout(self, model: Model) -> Layout:
        """Where the prompt, the text and the verbalizer site are for ``model``."""
        return _layout(model, self.template, 0, "start")

    def hooks(self, model: Model | None = None) -> list:
        """No hooks: a hard prompt is all text."""
        return []

    def to_tokens(self, model: Model, texts: str | Sequence[str]) -> list[Tensor]:
        """The model input of each text (1-D token tensors; lengths differ between texts)."""
        return _to_tokens(model, self, texts)


def _soft_hook(embed: Float[Tensor, "batch pos d_model"], hook: Any, *, weight: Tensor, soft: tuple[int, ...]):
    n_pos = embed.shape[1]
    index = torch.tensor([p % n_pos for p in soft], device=embed.device)
    out = embed.clone()
    out[:, index] = weight.to(device=embed.device, dtype=embed.dtype)
    return out


def _embed_hook_name(model: Model) -> str:
    if backends.is_bridge(model):  # its hook_embed alias is after the embedding LayerNorm for BERT/RoBERTa
        return backends.token_embed_hook(model)
    names = getattr(model, "hook_dict", {})
    for name in ("hook_embed", "embed.hook_embed"):
        if name in names:
            return name
    raise ValueError("cannot find the token-embedding hook point (hook_embed) on this model")


def _embedding_matrix(model: Model) -> Tensor:
    weight = getattr(model, "W_E", None)
    if not isinstance(weight, Tensor) or weight.ndim != 2:
        raise TypeError("this model exposes no token embedding matrix W_E [d_vocab, d_model]")
    return weight


@dataclass
class SoftPrompt:
    """A learned soft prompt: ``n_tokens`` embeddings written over reserved positions by a ``hook_embed`` hook.

    Make one with :func:`train_soft_prompt`; use it as the ``prompt=`` of :func:`accuracy`,
    :func:`predictivity` and friends, or by hand: ``soft.to_tokens(model, texts)`` builds inputs with the
    reserved slots, and ``model.run_with_hooks(tokens, fwd_hooks=soft.hooks())`` (or ``with
    soft.applied(model):``) writes the prompt in. Model weights are never touched.

    Attributes:
        embeddings: ``[n_tokens, d_model]``.
        verbalizer: the words for label 0 and label 1.
        template: the text template around the input (``"{text}"`` by default).
        placement: ``"start"`` (after ``[CLS]`` / BOS) or ``"end"`` (after the input; causal models' default).
        dev_accuracy: dev accuracy of the kept embeddings (NaN if unknown).
        history: ``[(step, loss, dev_accuracy), ...]`` from training.

    Example:
        ``soft`` is trained on the tiny BERT as in :func:`train_soft_prompt`:

        >>> soft
        SoftPrompt(n_tokens=4, d_model=32, verbalizer=('violin', 'piano'), placement='end', dev_accuracy=1.000)
        >>> bert.tokenizer.convert_ids_to_tokens(soft.to_tokens(bert, "Emma is buying the books.")[0])
        ['[CLS]', 'Emma', 'is', 'buying', 'the', 'books', '.', '[MASK]', '[PAD]', '[PAD]', '[PAD]', '[PAD]', '[SEP]']
        >>> path = soft.save(getfixture("tmp_path") / "soft.pt")
        >>> torch.equal(SoftPrompt.load(path).embeddings, soft.embeddings)
        True
    """

    embeddings: Tensor
    verbalizer: tuple[str, str] = (" negative", " positive")
    template: str = "{text}"
    placement: Literal["start", "end"] = "start"
    dev_accuracy: float = math.nan
    history: list[tuple[int, float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.embeddings, Tensor) or self.embeddings.ndim != 2 or self.embeddings.shape[0] < 1:
            raise ValueError("embeddings must be a [n_tokens, d_model] tensor with n_tokens >= 1")
        if not self.embeddings.is_floating_point():
            raise TypeError(f"embeddings must be a floating-point tensor, got {self.embeddings.dtype}")
        check_finite(self.embeddings.detach(), "the soft prompt's embeddings")
        if self.placement not in ("start", "end"):
            raise ValueError(f"placement must be 'start' or 'end', got {self.placement!r}")
        _split_template(self.template)
        self.verbalizer = tuple(self.verbalizer)  # type: ignore[assignment]

    @property
    def n_tokens(self) -> int:
        """Number of virtual tokens."""
        return int(self.embeddings.shape[0])

    def layout(self, model: Model) -> Layout:
        """Where the reserved slots, the text and the verbalizer site are for ``model``."""
        if self.embeddings.shape[1] != model.cfg.d_model:
            raise ValueError(
                f"this soft prompt has d_model={self.embeddings.shape[1]}, the model {model.cfg.d_model}; "
                "it was trained on another model"
            )
        return _layout(model, self.template, self.n_tokens, self.placement)

    def hooks(self, model: Model) -> list:
        """``[(hook_embed name, fn)]``: writes the embeddings over the reserved positions of any batch.

        The reserved positions depend on the model kind (after ``[CLS]``/BOS, before ``[SEP]``, or at the end)
        but not on the input's length, so the same hooks serve every input built by :meth:`to_tokens`.
        """
        check_model(model)
        soft = self.layout(model).soft
        return [(_embed_hook_name(model), functools.partial(_soft_hook, weight=self.embeddings.detach(), soft=soft))]

    @contextlib.contextmanager
    def applied(self, model: Model) -> Iterator[Model]:
        """``with soft.applied(model): model(tokens)``: the prompt's hook, removed on exit."""
        with model.hooks(fwd_hooks=self.hooks(model)):
            yield model

    def to_tokens(self, model: Model, texts: str | Sequence[str]) -> list[Tensor]:
        """Each text's model input with the reserved slots (1-D token tensors)."""
        return _to_tokens(model, self, texts)

    def save(self, path: str | Path) -> Path:
        """Save to a ``.pt`` file (embeddings and settings; no model weights)."""
        path = Path(path)
        state = dict(
            embeddings=self.embeddings.detach().cpu(),
            verbalizer=list(self.verbalizer),
            template=self.template,
            placement=self.placement,
            dev_accuracy=self.dev_accuracy,
            history=[list(h) for h in self.history],
            kind="kn_lens.SoftPrompt",
        )
        torch.save(state, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SoftPrompt:
        """Load a soft prompt written by :meth:`save`; a damaged or foreign file is a ``ValueError`` naming it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no soft prompt file at {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle, zip and torch errors of a damaged file all differ
            raise ValueError(f"{path} is not a readable kn_lens soft prompt file ({type(error).__name__})") from None
        if not isinstance(state, dict) or state.get("kind") != "kn_lens.SoftPrompt":
            raise ValueError(f"{path} is not a kn_lens soft prompt file")
        missing = [k for k in ("embeddings", "verbalizer", "template", "placement", "dev_accuracy", "history")
                   if k not in state]  # fmt: skip
        if missing:
            raise ValueError(f"{path} is a damaged soft prompt file: it lacks {missing}")
        try:
            return cls(
                state["embeddings"],
                tuple(state["verbalizer"]),  # type: ignore[arg-type]
                state["template"],
                state["placement"],
                float(state["dev_accuracy"]),
                [tuple(h) for h in state["history"]],  # type: ignore[misc]
            )
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path} holds an invalid soft prompt: {error}") from None

    def __repr__(self) -> str:
        return (
            f"SoftPrompt(n_tokens={self.n_tokens}, d_model={self.embeddings.shape[1]}, verbalizer={self.verbalizer}, "
            f"placement={self.placement!r}, dev_accuracy={self.dev_accuracy:.3f})"
        )


PromptLike = HardPrompt | SoftPrompt | str | None


def as_prompt(model: Model, prompt: PromptLike, verbalizer: Sequence[str] | None = None) -> HardPrompt | SoftPrompt:
    """``None`` -> the plain ``"{text}"`` template; a str -> a :class:`HardPrompt`; prompts pass through."""
    if prompt is None:
        prompt = "{text}"
    if isinstance(prompt, str):
        default = ("negative", "positive") if is_encoder(model) else (" negative", " positive")
        return HardPrompt(prompt, tuple(verbalizer or default))  # type: ignore[arg-type]
    if not isinstance(prompt, HardPrompt | SoftPrompt):
        raise TypeError(
            f"prompt must be a HardPrompt, a SoftPrompt, a template str or None, got {type(prompt).__name__}"
        )
    return prompt


def _to_tokens(model: Model, prompt: HardPrompt | SoftPrompt, texts: str | Sequence[str]) -> list[Tensor]:
    layout = prompt.layout(model)
    return [torch.tensor(ids) for ids in _encode(model, layout, [texts] if isinstance(texts, str) else list(texts))]


def _encode(model: Model, layout: Layout, texts: Sequence[str]) -> list[list[int]]:
    pieces = [(" " + t if layout.space else t) for t in texts]
    body = _tokenizer(model)(list(pieces), add_special_tokens=False)["input_ids"] if pieces else []
    n_ctx = model.cfg.n_ctx
    out = []
    for text, ids in zip(texts, body, strict=True):
        tokens = [*layout.prefix, *ids, *layout.suffix]
        if len(tokens) > n_ctx:
            raise ValueError(f"{text[:40]!r}... is {len(tokens)} tokens with its prompt, over the context of {n_ctx}")
        out.append(tokens)
    return out


def _batches(token_lists: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    batch_size = check_batch_size(batch_size)
    groups: dict[int, list[int]] = {}
    for i, tokens in enumerate(token_lists):
        groups.setdefault(len(tokens), []).append(i)
    return [idx[i : i + batch_size] for idx in groups.values() for i in range(0, len(idx), batch_size)]


def _as_split(data: Task | Split | tuple, split: str) -> Split:
    if isinstance(data, Task):
        return data.split(split)
    if isinstance(data, Split):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        return _check_pair(*data)
    raise TypeError(f"expected a Task, a Split or (texts, labels), got {type(data).__name__}")


def _check_fwd_hooks(fwd_hooks: Any) -> list:
    hooks = list(fwd_hooks or [])
    for item in hooks:
        if not (isinstance(item, tuple) and len(item) == 2 and callable(item[1])):
            raise TypeError(f"fwd_hooks must be (hook_name, fn) pairs, got {item!r}")
    return hooks


def _keep(activation: Tensor, hook: Any, *, store: dict[int, Tensor], layer: int, positions: Tensor) -> None:
    store[layer] = activation[:, positions].float()


def _run(
    model: Model,
    prompt: HardPrompt | SoftPrompt,
    texts: Sequence[str],
    *,
    batch_size: int,
    fwd_hooks: Sequence = (),
    capture: Sequence[int] = (),
    progress: bool = False,
    desc: str = "",
) -> Iterator[tuple[list[int], Tensor, Tensor | None]]:
    """Run prompted texts in equal-length batches; yield ``(indices, site logits [b, vocab], acts or None)``.

    ``acts`` is ``[b, n_prompt_positions, len(capture), d_mlp]``: the ``mlp_post`` of the ``capture`` layers at
    the prompt positions, read after the prompt's and the caller's hooks.
    """
    layout = prompt.layout(model)
    token_lists = _encode(model, layout, texts)
    batches = _batches(token_lists, batch_size)
    hooks = list(prompt.hooks(model)) + list(fwd_hooks)
    for chunk in tqdm(batches, desc=desc, disable=not progress or len(batches) < 2, leave=False):
        tokens = torch.tensor([token_lists[i] for i in chunk], device=model.cfg.device)
        n_pos = tokens.shape[1]
        positions = torch.tensor([p % n_pos for p in layout.positions], device=tokens.device)
        captured: dict[int, Tensor] = {}
        capture_hooks = [
            (hook_name(layer), functools.partial(_keep, store=captured, layer=layer, positions=positions))
            for layer in capture
        ]
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks + capture_hooks)
        acts = torch.stack([captured[layer] for layer in capture], dim=2).cpu() if capture else None
        yield chunk, logits[:, layout.site % n_pos].float(), acts


@evaluating
@torch.inference_mode()
def margins(
    model: Model,
    data: Task | Split | tuple,
    *,
    prompt: PromptLike = None,
    verbalizer: Sequence[str] | None = None,
    split: str = "test",
    fwd_hooks: Sequence = (),
    batch_size: int = 32,
    progress: bool = True,
) -> Float[Tensor, " examples"]:
    """``logit(label 1 word) - logit(label 0 word)`` at the verbalizer site, one per example (input order).

    Args:
        model: the model.
        data: a :class:`Task` (its ``split`` is used), a :class:`Split`, or ``(texts, labels)``.
        prompt: a :class:`HardPrompt`, a :class:`SoftPrompt`, a template str, or None (the plain text).
        verbalizer: the two words, when ``prompt`` is a str or None.
        split: which split of a :class:`Task`.
        fwd_hooks: extra hooks (e.g. :func:`kn_lens.hooks.perturb`), run after the prompt's.
        batch_size: texts per forward pass.
        progress: show a progress bar.

    Example:
        >>> margins(bert, task, prompt=soft, progress=False)[:4]  # > 0: "piano" (label 1) wins
        tensor([-1.2..., 1.2..., -1.2..., 1.2...])
        >>> task.test.labels[:4]
        (0, 1, 0, 1)
    """
    check_model(model)
    prompt = as_prompt(model, prompt, verbalizer)
    zero, one = _verbalizer_ids(model, prompt.verbalizer)
    texts = _as_split(data, split).texts
    out = torch.empty(len(texts))
    for chunk, logits, _ in _run(
        model, prompt, texts, batch_size=batch_size, fwd_hooks=_check_fwd_hooks(fwd_hooks), progress=progress,
        desc="scoring",
    ):  # fmt: skip
        out[chunk] = (logits[:, one] - logits[:, zero]).cpu()
    return out


@evaluating
def accuracy(
    model: Model,
    data: Task | Split | tuple,
    *,
    prompt: PromptLike = None,
    verbalizer: Sequence[str] | None = None,
    split: str = "test",
    fwd_hooks: Sequence = (),
    batch_size: int = 32,
    progress: bool = True,
) -> float:
    """Task accuracy: the label whose verbalizer word has the larger logit, against the true label.

    Arguments as in :func:`margins`.

    Example:
        >>> accuracy(bert, task, prompt=soft, progress=False)  # test split
        1.0
        >>> untrained = SoftPrompt(torch.zeros_like(soft.embeddings), soft.verbalizer, placement="end")
        >>> accuracy(bert, task, prompt=untrained, progress=False)  # the words alone mean nothing for number
        0.5
        >>> noise = kn_lens.hooks.perturb(skill.mask(0.05), "gaussian", std=3.0, positions=list(skill.positions))
        >>> accuracy(bert, task, prompt=soft, fwd_hooks=noise, progress=False)
        1.0
    """
    labels = torch.tensor(_as_split(data, split).labels)
    scores = margins(
        model, data, prompt=prompt, verbalizer=verbalizer, split=split, fwd_hooks=fwd_hooks,
        batch_size=batch_size, progress=progress,
    )  # fmt: skip
    return float(((scores > 0).long() == labels).float().mean())


@contextlib.contextmanager
def _frozen(model: Model) -> Iterator[None]:
    """Parameters stop requiring gradients (so none are computed or stored); the flags are restored on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def train_soft_prompt(
    model: Model,
    task: Task,
    verbalizer: Sequence[str] = (" negative", " positive"),
    *,
    n_tokens: int = 8,
    steps: int = 200,
    lr: float = 0.1,
    batch_size: int = 16,
    template: str = "{text}",
    placement: Literal["start", "end"] | None = None,
    eval_every: int = 50,
    seed: int = 0,
    progress: bool = True,
) -> SoftPrompt:
    """Prompt tuning on a frozen model: learn ``n_tokens`` virtual token embeddings for a binary task.

    Each step takes a batch of training texts of equal token length, writes the current embeddings over the
    reserved positions (a hook on ``hook_embed``), and minimises the cross-entropy of the two verbalizer
    logits at the site with Adam. Only the embeddings are optimised: the model's parameters are set not to
    require gradients for the duration (flags restored afterwards) and are never written. Every
    ``eval_every`` steps the dev accuracy is measured; the best embeddings are kept.

    Args:
        model: a ``HookedTransformer`` or ``HookedEncoder`` (or a bridge exposing ``hook_embed``).
        task: the :class:`Task`.
        verbalizer: the words for label 0 and label 1, single tokens (encoders: ``("negative", "positive")``
            style WordPiece words; causal BPE models: with the leading space).
        n_tokens: number of virtual tokens.
        steps: optimisation steps.
        lr: Adam's learning rate.
        batch_size: training texts per step.
        template: text around the input (``"{text}"``; encoders get a ``[MASK]`` appended if it has none).
        placement: ``"start"`` or ``"end"``; default: after ``[CLS]`` for encoders, after the input for causal
            models (a prompt before the input could not see it).
        eval_every: steps between dev evaluations (the last step is always evaluated).
        seed: initialisation (embeddings of random vocabulary tokens) and batch order.
        progress: show a progress bar.

    Returns:
        A :class:`SoftPrompt` with its dev accuracy and training history.

    Example:
        The tiny BERT's number agreement as a task; the verbalizer words (two instruments) mean nothing for number,
        so the prompt has to learn the mapping:

        >>> from kn_lens.fixtures import tiny_bert
        >>> agreement = tiny_bert.AGREEMENT["train"] + tiny_bert.AGREEMENT["heldout"]
        >>> texts = [a.prompt.replace("[MASK]", "the") for a in agreement]
        >>> task = make_task(texts, [int(a.plural) for a in agreement], name="number", classes=("singular", "plural"))
        >>> task.train.texts[0], task.train.labels[0]
        (...)
        >>> soft = train_soft_prompt(
        ...     bert, task, ("violin", "piano"), n_tokens=4, steps=90, lr=0.3, placement="end", eval_every=30,
        ...     progress=False,
        ... )
        >>> soft
        SoftPrompt(n_tokens=4, d_model=32, verbalizer=('violin', 'piano'), placement='end', dev_accuracy=1.000)
        >>> [step for step, loss, dev in soft.history]
        [30, 60, 90]
        >>> accuracy(bert, task, prompt=soft, progress=False)  # the held-out test split
        1.0
    """
    check_model(model)
    if not isinstance(task, Task):
        raise TypeError(f"task must be a kn_lens.skill.Task (make one with make_task), got {type(task).__name__}")
    for name, value in (
        ("n_tokens", n_tokens),
        ("steps", steps),
        ("batch_size", batch_size),
        ("eval_every", eval_every),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    placement = placement or ("start" if is_encoder(model) else "end")
    # Prompt tuning differentiates, whatever mode the caller is in (torch.no_grad(), inference_mode, a notebook
    # cell decorated with either): both are lifted for the training and restored on return.
    with torch.inference_mode(False), torch.enable_grad():
        return _train_soft_prompt(
            model, task, verbalizer, n_tokens, steps, lr, batch_size, template, placement, eval_every, seed, progress
        )


def _train_soft_prompt(
    model: Model,
    task: Task,
    verbalizer: Sequence[str],
    n_tokens: int,
    steps: int,
    lr: float,
    batch_size: int,
    template: str,
    placement: Literal["start", "end"],
    eval_every: int,
    seed: int,
    progress: bool,
) -> SoftPrompt:
    generator = torch.Generator().manual_seed(seed)
    embedding = _embedding_matrix(model)
    init = embedding[torch.randint(0, embedding.shape[0], (n_tokens,), generator=generator)].detach().clone().float()
    weight = torch.nn.Parameter(init.to(embedding.device))
    prompt = SoftPrompt(weight, tuple(verbalizer), template, placement)  # type: ignore[arg-type]
    zero, one = _verbalizer_ids(model, prompt.verbalizer)
    layout = prompt.layout(model)
    token_lists = _encode(model, layout, task.train.texts)
    labels = torch.tensor(task.train.labels)
    groups = _batches(token_lists, batch_size)
    sizes = torch.tensor([len(g) for g in groups], dtype=torch.float)
    hook = (_embed_hook_name(model), functools.partial(_soft_hook, weight=weight, soft=layout.soft))
    optimizer = torch.optim.Adam([weight], lr=lr)
    best = (-1.0, weight.detach().clone())
    history: list[tuple[int, float, float]] = []
    rng = random.Random(seed)
    with _frozen(model):
        bar = tqdm(range(1, steps + 1), desc="prompt tuning", disable=not progress, leave=False)
        for step in bar:
            chunk = groups[int(torch.multinomial(sizes, 1, generator=generator))]
            chunk = rng.sample(chunk, len(chunk))
            tokens = torch.tensor([token_lists[i] for i in chunk], device=model.cfg.device)
            logits = model.run_with_hooks(tokens, fwd_hooks=[hook])[:, layout.site % tokens.shape[1]]
            pair = torch.stack([logits[:, zero], logits[:, one]], dim=-1).float()
            loss = torch.nn.functional.cross_entropy(pair, labels[chunk].to(pair.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % eval_every == 0 or step == steps:
                prompt.embeddings = weight.detach().clone()
                dev = accuracy(model, task, prompt=prompt, split="dev", batch_size=max(batch_size, 32), progress=False)
                history.append((step, loss.item(), dev))
                if dev > best[0]:
                    best = (dev, prompt.embeddings)
                bar.set_postfix(loss=f"{loss.item():.3f}", dev=f"{dev:.3f}")
    return SoftPrompt(best[1].cpu(), prompt.verbalizer, template, placement, best[0], history)


# --------------------------------------------------------------------------------------------------------------
# Predictivity
# --------------------------------------------------------------------------------------------------------------


def _check_fraction(fraction: float) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return float(fraction)


def _best_first(scores: Tensor) -> Tensor:
    """Indices of a 1-D score tensor, best first; ties in index order (so ``top``, ``mask`` and ``to_frame`` agree
    on which of equally predictive neurons come first)."""
    return torch.sort(scores, descending=True, stable=True).indices


@dataclass
class Predictivity:
    """Skill-neuron predictivity of every ``mlp_post`` neuron (see :func:`predictivity`).

    Attributes:
        per_position: ``[n_pos, n_layers, d_mlp]``: dev accuracy of thresholding each neuron at each prompt
            position, with the better sign (NaN in layers not computed).
        thresholds: ``[n_pos, n_layers, d_mlp]``: the train-set mean activations (the thresholds; also the
            per-position means for ``kn_lens.hooks.perturb(..., "mean")``).
        sign: ``[n_pos, n_layers, d_mlp]``: +1 if "above the threshold" predicts label 1, -1 if it predicts 0.
        positions: the prompt positions (>= 0 from the start, < 0 from the end), as in the layout.
        aggregate: ``"mean"`` or ``"min"`` over positions.
        layers: the layers computed.
        n_train, n_dev: examples used for the thresholds and for the accuracies.
        prompt: the prompt the activations were read under (its positions are :attr:`positions`); None when
            unknown (a result made by hand).

    Example:
        ``skill`` is :func:`predictivity` of the tiny BERT's soft prompt (see there):

        >>> skill.scores.shape, skill.positions
        (torch.Size([2, 1024]), (-5, -4, -3, -2))
        >>> int(skill.mask(0.01).sum()), len(skill.top(0.01)), skill.top(k=2)
        (20, 20, [L...N..., L...N...])
        >>> skill.to_frame(top=3).columns.tolist()
        ['neuron', 'layer', 'index', 'predictivity', 'best_position', 'best_position_accuracy', 'sign', 'threshold']
    """

    per_position: Tensor
    thresholds: Tensor
    sign: Tensor
    positions: tuple[int, ...]
    aggregate: str = "mean"
    layers: list[int] = field(default_factory=list)
    n_train: int = 0
    n_dev: int = 0
    prompt: HardPrompt | SoftPrompt | None = field(default=None, repr=False, compare=False)

    @property
    def scores(self) -> Float[Tensor, "n_layers d_mlp"]:
        """Predictivity per neuron, aggregated over prompt positions (mean or min)."""
        if self.aggregate == "min":
            return self.per_position.min(0).values
        return self.per_position.mean(0)

    @property
    def n_layers(self) -> int:
        return int(self.per_position.shape[1])

    @property
    def d_mlp(self) -> int:
        return int(self.per_position.shape[2])

    def _count(self, fraction: float, per_layer: bool) -> int:
        fraction = _check_fraction(fraction)
        pool = self.d_mlp if per_layer else len(self.layers) * self.d_mlp
        return max(1, round(fraction * pool))

    def mask(self, fraction: float, *, per_layer: bool = False) -> Tensor:
        """Boolean ``[n_layers, d_mlp]`` mask of the top ``fraction`` of neurons by predictivity.

        Args:
            fraction: in (0, 1]; the paper uses 1-20%. At least one neuron is selected.
            per_layer: take the top fraction of every computed layer (what :func:`prune` wants) instead of the
                top fraction of all neurons.
        """
        k = self._count(fraction, per_layer)
        scores = torch.nan_to_num(self.scores.float(), nan=-math.inf)
        mask = torch.zeros(self.n_layers, self.d_mlp, dtype=torch.bool)
        if per_layer:
            for layer in self.layers:
                mask[layer, _best_first(scores[layer])[:k]] = True
            return mask
        mask.view(-1)[_best_first(scores.flatten())[:k]] = True
        return mask

    def top(self, fraction: float | None = None, *, k: int | None = None) -> list[Neuron]:
        """The best neurons, best first: the top ``fraction`` of all neurons, or the top ``k``."""
        if (fraction is None) == (k is None):
            raise ValueError("pass exactly one of fraction=... or k=...")
        if k is not None:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(f"k must be a positive int, got {k!r}")
        else:
            k = self._count(fraction, False)  # type: ignore[arg-type]
        scores = torch.nan_to_num(self.scores.float(), nan=-math.inf).flatten()
        order = _best_first(scores)[: min(k, len(self.layers) * self.d_mlp)].tolist()
        return [Neuron(i // self.d_mlp, i % self.d_mlp) for i in order]

    def to_frame(self, top: int | None = None) -> pd.DataFrame:
        """One row per neuron (best first): neuron, layer, index, predictivity, best position, its sign and
        threshold. ``top`` keeps only the best rows."""
        scores = self.scores
        neurons = self.top(1.0) if top is None else self.top(k=check_count(top, "top", minimum=1))
        best_pos = self.per_position.argmax(0)
        rows = []
        for n in neurons:
            p = int(best_pos[n.layer, n.index])
            rows.append(
                dict(
                    neuron=str(n),
                    layer=n.layer,
                    index=n.index,
                    predictivity=float(scores[n.layer, n.index]),
                    best_position=self.positions[p],
                    best_position_accuracy=float(self.per_position[p, n.layer, n.index]),
                    sign=int(self.sign[p, n.layer, n.index]),
                    threshold=float(self.thresholds[p, n.layer, n.index]),
                )
            )
        return pd.DataFrame(rows)

    def figure(self, top_k: int = 20):
        """Plotly figure: predictivity by layer (best and mean) and the best neurons."""
        from kn_lens import plotting

        return plotting.skill_predictivity(self, top_k=top_k)

    def __repr__(self) -> str:
        best = self.top(k=1)[0]
        return (
            f"Predictivity({len(self.layers)} layers x {self.d_mlp} neurons, {len(self.positions)} prompt positions, "
            f"aggregate={self.aggregate!r}, best {best} = {float(self.scores[best]):.3f}, "
            f"n_train={self.n_train}, n_dev={self.n_dev})"
        )


@evaluating
@torch.inference_mode()
def predictivity(
    model: Model,
    task_or_texts: Task | Sequence[str],
    labels: Sequence[int] | None = None,
    *,
    prompt: PromptLike = None,
    positions: Literal["prompt", "last"] | Sequence[int] = "prompt",
    aggregate: Aggregate = "mean",
    layers: Sequence[int] | None = None,
    dev: float = 0.3,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
) -> Predictivity:
    """Predictivity of every ``mlp_post`` neuron for a binary task, at the prompt positions (Wang et al.).

    For neuron ``n`` and prompt position ``p``: the threshold ``t`` is ``n``'s mean activation at ``p`` over the
    train split; predicting label 1 when the activation is above ``t`` (sign +1) or below it (sign -1), the
    dev accuracy of the better sign is ``n``'s predictivity at ``p``. Positions are then aggregated by
    ``aggregate``. Two streamed passes (train: running sums; dev: running counts), so memory does not grow
    with the data.

    Args:
        model: the model.
        task_or_texts: a :class:`Task` (train and dev splits are used), or texts with ``labels``, which are then
            split into train and dev (``dev`` fraction, seeded, stratified).
        labels: 0/1 labels when texts are given.
        prompt: a :class:`SoftPrompt` (positions: its tokens), a :class:`HardPrompt` or template str
            (positions: its template tokens; causal models: those after the text), or None (the plain text:
            the last token of a causal model, the appended ``[MASK]`` of an encoder).
        positions: ``"prompt"`` (all prompt positions), ``"last"`` (the last one), or indices into the prompt
            positions (``[0, -1]``: first and last).
        aggregate: ``"mean"`` or ``"min"`` over positions.
        layers: the layers to compute (None: all); others are NaN.
        dev: dev fraction when splitting plain texts.
        seed: split seed for plain texts.
        batch_size: texts per forward pass.
        progress: show progress bars.

    Returns:
        A :class:`Predictivity`.

    Raises:
        ValueError: labels not binary, lengths differ, an empty split, unknown aggregation or positions.

    Example:
        At the 4 soft-prompt positions of the tiny BERT (``task`` and ``soft`` as in :func:`train_soft_prompt`):

        >>> skill = predictivity(bert, task, prompt=soft, progress=False)
        >>> skill
        Predictivity(2 layers x 1024 neurons, 4 prompt positions, aggregate='mean', best L...N... = 1.000,
                     n_train=604, n_dev=202)
        >>> skill.top(k=3)
        [L...N..., L...N..., L...N...]
        >>> float(skill.scores.median())  # number is everywhere in this tiny model: most neurons predict it
        0.9...
    """
    check_model(model)
    if aggregate not in ("mean", "min"):
        raise ValueError(f"unknown aggregation {aggregate!r}; use 'mean' or 'min'")
    if isinstance(task_or_texts, Task):
        if labels is not None:
            raise ValueError("labels are part of the Task; pass labels only with plain texts")
        train, dev_split = task_or_texts.train, task_or_texts.dev
    else:
        if labels is None:
            raise ValueError("pass labels=... with plain texts (or a kn_lens.skill.Task)")
        pair = _check_pair(task_or_texts, labels)
        if not 0 < dev < 1:
            raise ValueError(f"dev must be a fraction in (0, 1), got {dev}")
        dev_idx, train_idx = _stratified(pair.labels, [dev], seed)
        if not dev_idx or not train_idx:
            raise ValueError(f"{len(pair)} examples are too few to split into train and dev")
        train = Split(tuple(pair.texts[i] for i in train_idx), tuple(pair.labels[i] for i in train_idx))
        dev_split = Split(tuple(pair.texts[i] for i in dev_idx), tuple(pair.labels[i] for i in dev_idx))
    prompt = as_prompt(model, prompt)
    all_positions = prompt.layout(model).positions
    if isinstance(positions, str):
        if positions not in ("prompt", "last"):
            raise ValueError(f"unknown positions {positions!r}; use 'prompt', 'last' or indices into the prompt")
        chosen = list(range(len(all_positions))) if positions == "prompt" else [len(all_positions) - 1]
    else:
        chosen = list(positions)
        if not chosen or not all(isinstance(i, int) and not isinstance(i, bool) for i in chosen):
            raise TypeError(f"positions must be 'prompt', 'last' or a non-empty list of ints, got {positions!r}")
        if any(not -len(all_positions) <= i < len(all_positions) for i in chosen):
            raise ValueError(f"positions {chosen} index a prompt with {len(all_positions)} positions")
        chosen = [i % len(all_positions) for i in chosen]
    layer_list = to_layers(model, layers)
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp

    sums = torch.zeros(len(all_positions), len(layer_list), d_mlp, dtype=torch.float64)
    for _chunk, _, acts in _run(
        model, prompt, train.texts, batch_size=batch_size, capture=layer_list, progress=progress,
        desc="predictivity: train means",
    ):  # fmt: skip
        sums += acts.double().sum(0)
    means = (sums / len(train)).float()

    y = torch.tensor(dev_split.labels, dtype=torch.bool)
    counts = {
        key: torch.zeros(len(all_positions), len(layer_list), d_mlp, dtype=torch.int64)
        for key in ("gt1", "gt0", "lt1", "lt0")
    }
    for chunk, _, acts in _run(
        model, prompt, dev_split.texts, batch_size=batch_size, capture=layer_list, progress=progress,
        desc="predictivity: dev accuracy",
    ):  # fmt: skip
        above, below = acts > means, acts < means
        ones = y[chunk][:, None, None, None]
        counts["gt1"] += (above & ones).sum(0)
        counts["gt0"] += (above & ~ones).sum(0)
        counts["lt1"] += (below & ones).sum(0)
        counts["lt0"] += (below & ~ones).sum(0)
    n_dev, n_zero = len(dev_split), int((~y).sum())
    plus = (counts["gt1"] + (n_zero - counts["gt0"])).double() / n_dev  # above -> 1, at or below -> 0
    minus = (counts["lt1"] + (n_zero - counts["lt0"])).double() / n_dev  # below -> 1, at or above -> 0
    sign_part = torch.where(plus >= minus, 1, -1).to(torch.int8)
    acc_part = torch.maximum(plus, minus).float()

    shape = (len(chosen), n_layers, d_mlp)
    per_position = torch.full(shape, math.nan)
    thresholds = torch.full(shape, math.nan)
    sign = torch.zeros(shape, dtype=torch.int8)
    idx = torch.tensor(chosen)
    per_position[:, layer_list] = acc_part[idx]
    thresholds[:, layer_list] = means[idx]
    sign[:, layer_list] = sign_part[idx]
    return Predictivity(
        per_position, thresholds, sign, tuple(all_positions[i] for i in chosen), aggregate, layer_list,
        len(train), n_dev, prompt,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Perturbation
# --------------------------------------------------------------------------------------------------------------


def random_mask(like: Tensor, *, seed: int = 0, exclude: Tensor | None = None) -> Tensor:
    """A random boolean mask with the same number of neurons per layer as ``like`` (the control).

    Args:
        like: a ``[n_layers, d_mlp]`` boolean mask (e.g. ``Predictivity.mask(0.02)``).
        seed: the seed.
        exclude: neurons never drawn (default: ``like`` itself); pass an all-False mask to allow them.
    """
    if not isinstance(like, Tensor) or like.dtype != torch.bool or like.ndim != 2:
        raise TypeError("like must be a boolean [n_layers, d_mlp] mask")
    exclude = like if exclude is None else exclude
    generator = torch.Generator().manual_seed(seed)
    out = torch.zeros_like(like)
    for layer in range(like.shape[0]):
        k = int(like[layer].sum())
        if not k:
            continue
        allowed = (~exclude[layer]).nonzero().flatten()
        if len(allowed) < k:
            raise ValueError(
                f"layer {layer} has only {len(allowed)} neurons left to draw {k} from; for large selections pass "
                "exclude=torch.zeros_like(like) to draw from all neurons"
            )
        out[layer, allowed[torch.randperm(len(allowed), generator=generator)[:k]]] = True
    return out


def _same_prompt(model: Model, skill: Predictivity, prompt: PromptLike) -> HardPrompt | SoftPrompt:
    """The prompt to perturb under: ``skill``'s own (None), or one that reads the same activations (same template,
    placement and soft embeddings; the verbalizer may differ)."""
    measured = skill.prompt
    if prompt is None:
        return measured if measured is not None else as_prompt(model, None)
    prompt = as_prompt(model, prompt)
    if measured is None:
        return prompt
    same = (
        type(prompt) is type(measured)
        and prompt.template == measured.template
        and (
            isinstance(prompt, HardPrompt)
            or (
                prompt.placement == measured.placement  # type: ignore[union-attr]
                and prompt.embeddings.shape == measured.embeddings.shape  # type: ignore[union-attr]
                and torch.equal(prompt.embeddings.detach().cpu(), measured.embeddings.detach().cpu())  # type: ignore[union-attr]
            )
        )
    )
    if not same:
        raise ValueError(
            f"prompt differs from the one predictivity was measured with ({_describe(measured)} vs "
            f"{_describe(prompt)}): its positions {skill.positions} and thresholds belong to that prompt; pass "
            "prompt=None (or the same prompt), or measure predictivity with this one"
        )
    return prompt


def _describe(prompt: HardPrompt | SoftPrompt) -> str:
    if isinstance(prompt, SoftPrompt):
        return f"a {prompt.n_tokens}-token soft prompt ({prompt.placement}) in {prompt.template!r}"
    return f"the template {prompt.template!r}"


@evaluating
def perturbation_curve(
    model: Model,
    task: Task,
    skill: Predictivity,
    *,
    prompt: PromptLike = None,
    fractions: Sequence[float] = (0.01, 0.02, 0.05, 0.1),
    kind: Literal["gaussian", "zero", "mean"] = "mean",
    std: float = 0.1,
    seeds: Sequence[int] = (0, 1, 2),
    layers: Sequence[int] | None = None,
    split: str = "test",
    batch_size: int = 32,
    progress: bool = True,
) -> pd.DataFrame:
    """Task accuracy after perturbing the top ``x`` skill neurons vs as many random neurons, for each ``x``.

    The neurons are perturbed at ``skill.positions`` (the prompt positions predictivity was measured at) with
    :func:`kn_lens.hooks.perturb`; ``kind="mean"`` uses the per-position train means (``skill.thresholds``).
    Random neurons have the same count per layer as the skill neurons and exclude them; each seed draws new
    random neurons (and new noise for ``"gaussian"``).

    Args:
        model, task: the model and task.
        skill: the :class:`Predictivity`.
        prompt: the prompt the accuracy is measured with: the one ``skill`` was measured with (None: that one). A
            prompt with another template, placement or soft embeddings is refused: ``skill.positions`` and its
            thresholds belong to the prompt they were read under (the verbalizer may differ).
        fractions: fractions of all neurons (of ``layers``) to perturb.
        kind: ``"gaussian"``, ``"zero"`` or ``"mean"``.
        std: the noise's standard deviation for ``"gaussian"``.
        seeds: random-neuron (and noise) seeds.
        layers: only perturb neurons in these layers (None: the layers ``skill`` covers).
        split: which split's accuracy.
        batch_size, progress: as usual.

    Returns:
        A DataFrame: ``fraction, n_neurons, selection ("none" / "skill" / "random"), seed, accuracy``.

    Example:
        >>> curve = perturbation_curve(bert, task, skill, prompt=soft, fractions=[0.01, 0.05], progress=False)
        >>> curve.columns.tolist(), len(curve)  # the clean row, then 1 skill + 3 random rows per fraction
        (['fraction', 'n_neurons', 'selection', 'seed', 'accuracy'], 9)
        >>> curve.groupby(["fraction", "selection"]).accuracy.mean().unstack()  # the tiny BERT shrugs it off
        selection  none  random  skill
        fraction
        0.00        1.0     NaN    NaN
        0.01        NaN     1.0    1.0
        0.05        NaN     1.0    1.0
    """
    from kn_lens import hooks as hooks_module

    check_model(model)
    if not isinstance(skill, Predictivity):
        raise TypeError("skill must be the Predictivity result of kn_lens.skill.predictivity")
    if not isinstance(task, Task):
        raise TypeError(f"task must be a kn_lens.skill.Task, got {type(task).__name__}")
    task.split(split)
    prompt = _same_prompt(model, skill, prompt)
    fractions = [_check_fraction(f) for f in check_sequence(fractions, "fractions", what="fractions")]
    if not fractions:
        raise ValueError("fractions is empty; pass at least one fraction, e.g. [0.01, 0.05]")
    check_choice(kind, "kind", ("gaussian", "zero", "mean"))
    check_number(std, "std", low=0)
    seeds = [check_int(seed, "seeds") for seed in check_sequence(seeds, "seeds", what="ints")]
    batch_size = check_batch_size(batch_size)
    if skill.n_layers != model.cfg.n_layers or skill.d_mlp != model.cfg.d_mlp:
        raise ValueError(
            f"skill has {skill.n_layers} layers x {skill.d_mlp} neurons, the model {model.cfg.n_layers} x "
            f"{model.cfg.d_mlp}: it was measured on another model"
        )
    if not seeds:
        raise ValueError("seeds is empty; pass at least one seed")
    allowed = torch.zeros(skill.n_layers, skill.d_mlp, dtype=torch.bool)
    allowed[to_layers(model, layers) if layers is not None else skill.layers] = True
    scores = torch.nan_to_num(skill.scores.float(), nan=-math.inf).masked_fill(~allowed, -math.inf)
    pool = int(allowed.sum())
    rows = [dict(fraction=0.0, n_neurons=0, selection="none", seed=-1)]
    rows[0]["accuracy"] = accuracy(model, task, prompt=prompt, split=split, batch_size=batch_size, progress=False)
    steps = [(f, sel, s) for f in fractions for sel, s in [("skill", seeds[0])] + [("random", s) for s in seeds]]
    for fraction, selection, seed in tqdm(steps, desc="perturbation curve", disable=not progress):
        k = max(1, round(fraction * pool))
        top = torch.zeros_like(allowed)
        top.view(-1)[_best_first(scores.flatten())[:k]] = True  # the same tie order as Predictivity.mask
        chosen = top if selection == "skill" else random_mask(top, seed=seed)
        hooks = hooks_module.perturb(
            chosen, kind, std=std, seed=seed, positions=list(skill.positions),
            mean_cache=skill.thresholds if kind == "mean" else None,
        )  # fmt: skip
        acc = accuracy(model, task, prompt=prompt, split=split, fwd_hooks=hooks, batch_size=batch_size, progress=False)
        rows.append(dict(fraction=float(fraction), n_neurons=k, selection=selection, seed=seed, accuracy=acc))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------------------------------------------


@evaluating
@torch.inference_mode()
def mean_activations(
    model: Model,
    data: Task | Split | tuple | Sequence[str],
    *,
    prompt: PromptLike = None,
    split: str = "train",
    batch_size: int = 32,
    progress: bool = True,
) -> Float[Tensor, "n_layers d_mlp"]:
    """Every neuron's mean ``mlp_post`` activation over all token positions of the prompted texts.

    The constants :func:`prune` folds into the MLP output biases (each token counts once).

    Example:
        >>> means = mean_activations(bert, task, prompt=soft, progress=False)  # train split
        >>> means.shape
        torch.Size([2, 1024])
    """
    check_model(model)
    prompt = as_prompt(model, prompt)
    texts = (
        list(data) if isinstance(data, list) and all(isinstance(t, str) for t in data) else _as_split(data, split).texts
    )
    if not texts:
        raise ValueError("no texts to average over")
    layout = prompt.layout(model)
    token_lists = _encode(model, layout, texts)
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    sums = torch.zeros(n_layers, d_mlp, dtype=torch.float64)
    count = 0
    for chunk in tqdm(_batches(token_lists, batch_size), desc="mean activations", disable=not progress, leave=False):
        tokens = torch.tensor([token_lists[i] for i in chunk], device=model.cfg.device)

        def add(activation: Tensor, hook: Any, layer: int) -> None:  # summed on the device (MPS: no float64)
            sums[layer] += activation.sum((0, 1), dtype=accumulator_dtype(activation.device)).cpu().double()

        hooks = [(hook_name(layer), functools.partial(add, layer=layer)) for layer in range(n_layers)]
        model.run_with_hooks(tokens, fwd_hooks=list(prompt.hooks(model)) + hooks)
        count += tokens.numel()
    return (sums / count).float()


def _take(weight: Tensor, dim: int, kept: Tensor, pad: int) -> torch.nn.Parameter:
    """``weight``'s slices ``kept`` along ``dim``, then ``pad`` zero slices."""
    part = weight.index_select(dim, kept)
    if pad:
        shape = list(part.shape)
        shape[dim] = pad
        part = torch.cat([part, part.new_zeros(shape)], dim=dim)
    return torch.nn.Parameter(part.contiguous(), requires_grad=weight.requires_grad)


def prune(model: Model, keep: Tensor, means: Tensor) -> Model:
    """A smaller copy of ``model`` that keeps only the ``keep`` neurons; the others are fixed at their means.

    Wang et al.'s pruning (sec. 6.1): a dropped neuron ``n`` of layer ``L`` always outputs its mean ``m_n``, so
    its contribution ``m_n * W_out[L][n]`` is a constant, added to ``b_out[L]``; its column of ``W_in`` (and
    ``W_gate``, ``b_in``) and its row of ``W_out`` are removed. The copy is a model of the same class with
    ``cfg.d_mlp`` = the largest number kept in a layer; layers that keep fewer get padding neurons with zero
    weights (they add nothing). Keep the same number per layer (``Predictivity.mask(f, per_layer=True)``) for
    a model with no padding. Neuron ``i`` of the pruned layer ``L`` is original neuron
    ``keep[L].nonzero()[i]``.

    The original model is not changed. The copy's logits equal the original's with the dropped neurons set
    to their means at every position (``kn_lens.hooks.set``), up to float rounding.

    Args:
        model: a ``HookedTransformer`` or ``HookedEncoder`` with plain (dense) MLPs.
        keep: boolean ``[n_layers, d_mlp]``: the neurons to keep (at least one per layer).
        means: ``[n_layers, d_mlp]`` mean activations (:func:`mean_activations`), the values dropped neurons
            are fixed at.

    Returns:
        The pruned model (eval mode, same tokenizer).

    Example:
        >>> keep = skill.mask(0.8, per_layer=True)  # the best 80% of each layer
        >>> small = prune(bert, keep, mean_activations(bert, task, prompt=soft, progress=False))
        >>> small.cfg.d_mlp, bert.cfg.d_mlp
        (819, 1024)
        >>> accuracy(small, task, prompt=soft, progress=False)
        1.0
    """
    check_model(model)
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    if not isinstance(keep, Tensor) or keep.dtype != torch.bool or tuple(keep.shape) != (n_layers, d_mlp):
        raise ValueError(f"keep must be a boolean [{n_layers}, {d_mlp}] mask")
    if not isinstance(means, Tensor) or tuple(means.shape) != (n_layers, d_mlp):
        raise ValueError(f"means must be a [{n_layers}, {d_mlp}] tensor (kn_lens.skill.mean_activations)")
    if not torch.isfinite(means).all():
        raise ValueError("means contains NaN or infinite values")
    counts = keep.sum(1)
    if int(counts.min()) < 1:
        raise ValueError("every layer must keep at least one neuron")
    if backends.is_bridge(model):
        raise TypeError(
            "prune builds a smaller HookedTransformer / HookedEncoder and cannot resize a TransformerBridge's "
            "wrapped transformers model; load the model with backend='hooked' to prune it"
        )
    if str(getattr(model.cfg, "act_fn", "")).endswith("_ln"):
        raise ValueError(f"act_fn {model.cfg.act_fn} normalises across neurons: dropping neurons would change the rest")
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(hasattr(b.mlp, "W_in") and hasattr(b.mlp, "b_out") for b in blocks):
        raise TypeError("pruning needs a HookedTransformer / HookedEncoder with dense MLPs (W_in, W_out, b_out)")
    width = int(counts.max())
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for layer, block in enumerate(pruned.blocks):
            mlp = block.mlp
            kept = keep[layer].nonzero().flatten().to(mlp.W_in.device)
            dropped = (~keep[layer]).nonzero().flatten().to(mlp.W_in.device)
            w_out = mlp.W_out
            acc = accumulator_dtype(w_out.device)  # float64 where the device has it (MPS: float32)
            constant = means[layer].to(w_out.device).to(acc)[dropped] @ w_out[dropped].to(acc)
            pad = width - len(kept)

            mlp.W_in = _take(mlp.W_in, 1, kept, pad)
            if getattr(mlp, "W_gate", None) is not None:
                mlp.W_gate = _take(mlp.W_gate, 1, kept, pad)
            if getattr(mlp, "b_in", None) is not None:
                mlp.b_in = _take(mlp.b_in, 0, kept, pad)
            mlp.W_out = _take(w_out, 0, kept, pad)
            mlp.b_out = torch.nn.Parameter((mlp.b_out.to(acc) + constant).to(mlp.b_out.dtype))
            mlp.d_mlp = width
    pruned.cfg.d_mlp = width
    return pruned.eval()


__all__ = [
    "HardPrompt",
    "Layout",
    "Predictivity",
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
    "train_soft_prompt",
]
