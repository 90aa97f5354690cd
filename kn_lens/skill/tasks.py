"""Skill-neuron tasks: binary classification data in train / dev / test splits.

Context:
    Wang et al. (EMNLP 2022) look for neurons that predict the label of a *binary* task (SST-2, the binarised
    MNLI, ...). Predictivity needs three splits: the neuron's threshold comes from **train** (its mean
    activation), its sign and accuracy from **dev**, and the task accuracy that perturbation and pruning report
    from **test**. A :class:`Task` holds the three :class:`Split` s and checks them once, so every later step can
    trust them (texts non-empty, labels 0/1, both labels present in train and dev).

Where tasks come from:
    * your own texts: :func:`make_task` splits them (seeded, stratified by label); :func:`binarize` first turns
      a multi-class task into a binary one (one class against the rest, or against another class);
    * offline: :func:`sentiment_task` generates movie-review sentences (some negated, so that no single word
      gives the label away); :func:`pararel_place_or_language` and :func:`pararel_relation_pair` build tasks
      from a PARAREL folder, read by :func:`kn_lens.datasets.pararel.load`;
    * the hub: :func:`load_sst2` / :func:`load_hf_task` (through ``datasets``; local files in the hub's format
      work offline).

Caveats:
    Small splits make predictivity noisy: with a dev split of 12 examples an accuracy moves in steps of 0.08,
    and the sign is chosen on that same split. The generated sentiment task is easy on purpose; prefer a public
    set for numbers you report.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
from torch import Tensor

from kn_lens.datasets import pararel
from kn_lens.inputs import check_count, check_number, check_sequence


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
    check_count(n, "n", minimum=6)
    check_number(negation, "negation", low=0, high=1)
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


def _load_pararel(folder: str | Path, relations: Sequence[str]) -> pararel.Pararel:
    """The relations' templates and facts, read by :func:`kn_lens.datasets.pararel.load` (every template kept)."""
    folder = Path(folder)
    for relation in relations:
        files = [f"{part}/{relation}.jsonl" for part in ("patterns", "facts")]
        if not all((folder / file).exists() for file in files):
            raise FileNotFoundError(
                f"relation {relation} not found in {folder} (expected {' and '.join(files)} from the PARAREL release)"
            )
    return pararel.load(folder, relations=list(relations), min_templates=1)


def _pararel_texts(
    folder: str | Path, relations: Sequence[str], n: int, *, fill_object: bool, rng: random.Random
) -> list[str]:
    """``n`` texts from ``relations`` (round robin), one random template per fact, no fact twice."""
    data = _load_pararel(folder, relations)
    pools = []
    for relation in relations:
        patterns = list(data.relations[relation].templates)
        if not fill_object:  # a next-token prompt: the answer slot must end the sentence
            patterns = [p.rstrip(" .") for p in patterns if p.rstrip(" .").endswith(pararel.OBJECT)]
        if not patterns:
            continue
        facts = [(fact.subject, fact.answer) for fact in data.facts[relation]]
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
            text = rng.choice(patterns).replace(pararel.SUBJECT, subject)
            text = text.replace(pararel.OBJECT, obj) if fill_object else text[: text.index(pararel.OBJECT)].rstrip()
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

        >>> import json
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
    train_split, dev_split = _hold_out(train_pair, dev, seed)
    name = dataset if config is None else f"{dataset}/{config}"
    return Task(
        name,
        train_split,
        dev_split,
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


__all__ = [
    "Split",
    "Task",
    "binarize",
    "load_hf_task",
    "load_sst2",
    "make_task",
    "pararel_place_or_language",
    "pararel_relation_pair",
    "sentiment_task",
]
