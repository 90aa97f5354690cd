"""Ready-made skill-neuron tasks: generated sentiment, PARAREL relations, and public sets from the hub.

Every builder returns a :class:`~kn_lens.skill.tasks.Task` split by :func:`~kn_lens.skill.tasks.make_task`
(seeded, stratified), so a task is the same on every machine:

* offline: :func:`sentiment_task` generates movie-review sentences (some negated, so that no single word gives
  the label away); :func:`pararel_place_or_language` and :func:`pararel_relation_pair` build tasks from a
  PARAREL folder, read by :func:`kn_lens.datasets.pararel.load` (the package never guesses the folder);
* the hub: :func:`load_sst2` / :func:`load_hf_task` (through ``datasets``; local files in the hub's format
  work offline), with Wang et al.'s protocol: the public validation split is the test split.

Caveats:
    The generated sentiment task is easy on purpose (a few templates, one adjective each): good for tutorials
    and tests; prefer a public set for numbers you report. Small models know little of PARAREL's facts, but
    these tasks ask only *which kind* of answer a prompt wants (a place or a language; which relation), not
    the answer itself.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kn_lens.datasets import pararel
from kn_lens.inputs import check_count, check_number
from kn_lens.skill.tasks import Task, _check_pair, _hold_out, make_task

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


__all__ = ["load_hf_task", "load_sst2", "pararel_place_or_language", "pararel_relation_pair", "sentiment_task"]
