"""Skill-neuron tasks: binary classification data in train / dev / test splits.

Context:
    Wang et al. (EMNLP 2022) look for neurons that predict the label of a *binary* task (SST-2, the binarised
    MNLI, ...). Predictivity needs three splits: the neuron's threshold comes from **train** (its mean
    activation), its sign and accuracy from **dev**, and the task accuracy that perturbation and pruning report
    from **test**. A :class:`Task` holds the three :class:`Split` s and checks them once, so every later step can
    trust them (texts non-empty, labels 0/1, both labels present in train and dev).

Where tasks come from:
    Your own texts: :func:`make_task` splits them (seeded, stratified by label); :func:`binarize` first turns a
    multi-class task into a binary one (one class against the rest, or against another class). Ready-made
    tasks (generated, PARAREL, the hub) are built in :mod:`kn_lens.skill.builders`.

Caveats:
    Small splits make predictivity noisy: with a dev split of 12 examples an accuracy moves in steps of 0.08,
    and the sign is chosen on that same split.

Example:
    >>> task = make_task(["good", "bad", "great", "awful", "fine", "poor"], [1, 0, 1, 0, 1, 0], dev=1/3, test=1/3)
    >>> task.train.labels, task.dev.labels, task.test.labels  # both labels in every split (stratified)
    ((0, 1), (0, 1), (0, 1))
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import pandas as pd
from torch import Tensor

from kn_lens.inputs import check_number, check_sequence


class Split(NamedTuple):
    """One split of a binary task: ``texts`` and their ``labels`` (0 or 1)."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def _subset(self, indices: Sequence[int]) -> Split:
        return Split(tuple(self.texts[i] for i in indices), tuple(self.labels[i] for i in indices))


def _check_pair(texts: Any, labels: Any, what: str = "texts") -> Split:
    texts = tuple(check_sequence(texts, what, what="texts"))
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


def _as_split(data: Task | Split | tuple, split: str) -> Split:
    """The examples ``data`` names: a :class:`Task`'s split ``split``, a :class:`Split`, or ``(texts, labels)``."""
    if isinstance(data, Task):
        return data.split(split)
    if isinstance(data, Split):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        return _check_pair(*data)
    raise TypeError(f"expected a Task, a Split or (texts, labels), got {type(data).__name__}")


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


def _hold_out(pair: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """``(rest, held out)``: a stratified ``fraction`` of each label's examples held out (as dev)."""
    held, rest = _stratified(pair.labels, [fraction], seed)
    return pair._subset(rest), pair._subset(held)


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
        check_number(fraction, what, low=0, high=1, high_open=True)
    if dev + test >= 1:
        raise ValueError(f"dev + test = {dev + test} leaves nothing to train on; keep it below 1")
    dev_idx, test_idx, train_idx = _stratified(pair.labels, [dev, test], seed)
    pick = [(part, idx) for part, idx in (("train", train_idx), ("dev", dev_idx), ("test", test_idx))]
    for part, idx in pick:
        if not idx:
            raise ValueError(f"the {part} split would be empty ({len(pair)} examples); pass more data")
    splits = {part: pair._subset(idx) for part, idx in pick}
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


__all__ = ["Split", "Task", "binarize", "make_task"]
