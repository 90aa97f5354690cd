"""PARAREL: facts with many paraphrased templates, the benchmark of Dai et al.'s knowledge neurons.

Context:
    PARAREL (Elazar et al., 2021) pairs T-REx facts (``subject``, relation, ``object``) with hand-written
    paraphrases of each relation ("[X] was born in [Y] .", "[X] is originally from [Y] ." ...). Dai et al. (2022)
    render each fact with every template of its relation into a **bag** of prompts that share one answer, and
    keep a neuron only if most prompts of the bag attribute the answer to it. Relations with 3 or fewer
    templates are dropped: 34 relations, 23,749 bags.

Intuition:
    A masked LM answers "[X] was born in [MASK] ." directly. A causal LM can only answer at the *end*, so each
    template is cut at ``[Y]`` ("[X] was born in" -> " Paris"): this works whenever ``[X]`` comes before
    ``[Y]`` (172,351 prompts over the 34 relations; 165,104 in the 29 relations that keep >= 4 such templates),
    many more than the templates that already end with ``[Y]`` (135,580 prompts; 123,402 in 24 relations).

Caveats:
    * Answers are single tokens of BERT/RoBERTa/ALBERT's common vocabulary, not of every model's: filter the
      bags with a model (:meth:`Pararel.bags` does, per tokenizer) or keep multi-token targets on request.
    * Small models know few PARAREL facts (SmolLM2-135M: capitals 12-16% top-1, place of birth ~0%). Every
      table should be computed on :func:`kn_lens.evaluation.known_facts` and state the coverage.

Files (the layout of ``/work/shared/pararel`` and of :func:`download`'s cache)::

    patterns/P19.jsonl   {"pattern": "[X] was born in [Y] .", ...}  one template a line
    facts/P19.jsonl      {"sub_label": "...", "obj_label": "...", "uuid": "..."}  one fact a line
    relations.jsonl      {"relation": "P19", "label": "place of birth", "type": "N-1", ...}  (optional)

Example:
    ``pararel.load("path/to/pararel")`` (or ``pararel.load(pararel.download())``) loads the real data: 34
    relations and 23,749 facts. Here a tiny folder in the same format holds the facts of the bundled tiny BERT:

    >>> from kn_lens.datasets import pararel
    >>> data = pararel.load(pararel_dir)
    >>> len(data.relations), len(data)
    (4, 48)
    >>> bags = data.bags(bert, relations=["P36"])        # prompts per fact, filtered for the tokenizer
    >>> bags[0].prompts
    ('The capital of France is [MASK].', 'France has its capital in [MASK].',
     '[MASK] is the capital city of France.', 'The government of France sits in [MASK].')
    >>> from kn_lens.evaluation import known_facts       # what the model knows is measured by the evaluation
    >>> known, table = known_facts(bert, bags)
    >>> len(known), len(bags)                            # the tiny BERT knows every capital it was taught
    (12, 12)
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from kn_lens._typing import Model, check_model, is_encoder

SUBJECT = "[X]"
OBJECT = "[Y]"
#: Dai et al. keep relations with more than 3 templates.
MIN_TEMPLATES = 4
Style = Literal["mask", "cut", "end"]

#: The public ParaRel repository (MIT): templates and the LAMA-vocabulary T-REx facts.
PARAREL_URL = "https://raw.githubusercontent.com/yanaiela/pararel/main/data"
#: Relation ids with facts in ParaRel's ``trex_lms_vocab`` (templates exist for all but P31 and P527).
RELATION_IDS: tuple[str, ...] = (
    "P1001", "P101", "P103", "P106", "P108", "P127", "P1303", "P131", "P136", "P1376", "P138", "P140", "P1412",
    "P159", "P17", "P176", "P178", "P19", "P190", "P20", "P264", "P27", "P276", "P279", "P30", "P31", "P36",
    "P361", "P364", "P37", "P39", "P407", "P413", "P449", "P463", "P47", "P495", "P527", "P530", "P740", "P937",
)  # fmt: skip


class PararelError(ValueError):
    """A PARAREL file is missing or malformed, or a relation id is unknown."""


@dataclass(frozen=True)
class Relation:
    """One relation: its id (``"P36"``), label, LAMA type (1-1, N-1, N-M) and paraphrased templates."""

    id: str
    label: str
    type: str
    templates: tuple[str, ...]


@dataclass(frozen=True)
class Fact:
    """One T-REx fact: ``subject`` fills ``[X]``, ``answer`` fills ``[Y]``."""

    relation: str
    uuid: str
    subject: str
    answer: str


@dataclass(frozen=True)
class Bag:
    """One fact rendered with the templates of its relation: prompts sharing one target.

    Usable wherever kn_lens takes a fact (``.prompts``, ``.target``, ``.relation``), e.g.
    ``find_knowledge_neurons(model, bag.prompts, bag.target)`` or as an ``unrelated=`` control.

    Attributes:
        relation, uuid, subject, answer: the fact.
        prompts: one prompt per kept template (``[MASK]`` for encoders, cut before the answer for causal models).
        target: the answer as the model must produce it (``" Paris"`` after a cut, ``"Paris"`` at a mask).
        templates: the index of each prompt's template in its relation's list.
    """

    relation: str
    uuid: str
    subject: str
    answer: str
    prompts: tuple[str, ...]
    target: str
    templates: tuple[int, ...] = field(default=(), repr=False)

    @property
    def name(self) -> str:
        return f"{self.relation}: {self.subject} -> {self.answer}"

    def split(self, n_heldout: int = 1) -> tuple[Bag, Bag]:
        """(attribution bag, held-out bag): the last ``n_heldout`` prompts are held out."""
        if not 0 <= n_heldout < len(self.prompts):
            raise ValueError(f"n_heldout must be in [0, {len(self.prompts) - 1}], got {n_heldout}")
        k = len(self.prompts) - n_heldout
        first = Bag(self.relation, self.uuid, self.subject, self.answer, self.prompts[:k], self.target,
                    self.templates[:k])  # fmt: skip
        rest = Bag(self.relation, self.uuid, self.subject, self.answer, self.prompts[k:], self.target,
                   self.templates[k:])  # fmt: skip
        return first, rest


# --------------------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------------------


def _read_jsonl(path: Path, required: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PararelError(f"missing PARAREL file {path}") from None
    except UnicodeDecodeError as err:
        raise PararelError(f"{path} is not UTF-8 text ({err})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise PararelError(f"{path}, line {number}: not valid JSON ({err.msg}): {line[:80]!r}") from None
        if not isinstance(row, dict):
            raise PararelError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in required if not isinstance(row.get(k), str)]
        if missing:
            raise PararelError(f"{path}, line {number}: missing or non-text field(s) {missing}")
        rows.append(row)
    return rows


def _check_template(path: Path, number: int, pattern: str) -> None:
    if pattern.count(SUBJECT) != 1 or pattern.count(OBJECT) != 1:
        raise PararelError(f"{path}, line {number}: a template needs exactly one [X] and one [Y]: {pattern!r}")


def _check_relations(requested: Iterable[str] | None, valid: Sequence[str]) -> list[str] | None:
    if requested is None:
        return None
    if isinstance(requested, str):
        requested = [r.strip() for r in requested.split(",") if r.strip()]
    requested = list(requested)
    unknown = [r for r in requested if r not in valid]
    if unknown:
        raise PararelError(f"unknown relation id(s) {unknown}; valid ids: {', '.join(sorted(valid, key=_id_key))}")
    if not requested:
        raise PararelError("no relation ids given")
    return requested


def _id_key(rid: str) -> tuple[int, str]:
    digits = re.sub(r"\D", "", rid)
    return (int(digits) if digits else 0, rid)


@dataclass
class Pararel:
    """PARAREL as loaded: relations (with their templates) and their facts.

    ``len(data)`` is the number of facts; :meth:`bags` renders them as prompts.

    Example:
        >>> data = load(pararel_dir)
        >>> data
        Pararel('...', relations=4, facts=48)
        >>> data.summary()
          relation              label type  templates  facts
        0      P36            capital  1-1          4     12
        1      P37  official language  N-1          4     12
        2     P106         occupation  N-M          4     12
        3    P1303         instrument  N-M          4     12
    """

    path: Path
    relations: dict[str, Relation]
    facts: dict[str, list[Fact]]
    dropped: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(f) for f in self.facts.values())

    def __repr__(self) -> str:
        return f"Pararel({str(self.path)!r}, relations={len(self.relations)}, facts={len(self)})"

    def bags(
        self,
        model: Model | None = None,
        *,
        style: Style | None = None,
        relations: Iterable[str] | str | None = None,
        min_templates: int = MIN_TEMPLATES,
        multi_token: bool = False,
        mask: str | None = None,
    ) -> list[Bag]:
        """Every fact rendered with its relation's templates, optionally filtered for a model's tokenizer.

        Args:
            model: a model; its kind picks ``style`` (encoder: ``"mask"``, causal: ``"cut"``), its tokenizer
                filters the answers to single tokens (unless ``multi_token``) and gives the mask token.
            style: ``"mask"`` (``[Y]`` -> ``[MASK]``), ``"cut"`` (causal: the template up to ``[Y]``, for
                templates where ``[X]`` precedes ``[Y]``) or ``"end"`` (causal: only templates ending in ``[Y]``);
                with a model it must fit the model's kind (``"mask"`` for encoders only).
            relations: relation ids to keep (default all).
            min_templates: after the style's template filter, relations with fewer templates are dropped.
            multi_token: keep answers that are several tokens (targets for multi-token scoring).
            mask: the mask text (default the tokenizer's mask token, else ``"[MASK]"``).

        Returns:
            One :class:`Bag` per kept fact, relation by relation, in file order.

        Example:
            >>> data = load(pararel_dir)
            >>> bags = data.bags(bert, relations="P36,P37")
            >>> len(bags), bags[0].prompts[0], bags[0].target
            (24, 'The capital of France is [MASK].', 'Paris')

            A causal model gets each template up to ``[Y]``; "[Y] is the capital city of [X]." has no such
            prompt, which leaves three templates:

            >>> causal = data.bags(model, relations="P36", min_templates=3)  # SmolLM2: templates cut at [Y]
            >>> causal[0].prompts, causal[0].target
            (('The capital of France is', 'France has its capital in', 'The government of France sits in'), ' Paris')
        """
        if model is not None:
            check_model(model)
        if style is None:
            if model is None:
                raise ValueError("pass a model or style='mask' / 'cut' / 'end'")
            style = "mask" if is_encoder(model) else "cut"
        if style not in ("mask", "cut", "end"):
            raise ValueError(f"style must be 'mask', 'cut' or 'end', got {style!r}")
        if model is not None and (style == "mask") != is_encoder(model):
            kind, fits = ("an encoder", "'mask'") if is_encoder(model) else ("a causal model", "'cut' or 'end'")
            raise ValueError(
                f"style={style!r} does not fit {kind} (its prompts would never be scored where the answer is): use "
                f"{fits}, or leave style=None to pick it from the model"
            )
        if isinstance(min_templates, bool) or not isinstance(min_templates, int) or min_templates < 1:
            raise ValueError(f"min_templates must be a positive int, got {min_templates!r}")
        chosen = _check_relations(relations, list(self.relations)) or list(self.relations)
        tokenizer = getattr(model, "tokenizer", None) if model is not None else None
        if mask is None:
            mask = getattr(tokenizer, "mask_token", None) or "[MASK]"
        single = _single_token_check(tokenizer) if (tokenizer is not None and not multi_token) else None
        out: list[Bag] = []
        for rid in chosen:
            kept = [(i, t) for i, t in enumerate(self.relations[rid].templates) if _usable(t, style)]
            if len(kept) < min_templates:
                continue
            for fact in self.facts[rid]:
                target = fact.answer if style == "mask" else " " + fact.answer
                if single is not None and not single(target):
                    continue
                prompts = tuple(_render(t, fact.subject, style, mask) for _, t in kept)
                out.append(Bag(rid, fact.uuid, fact.subject, fact.answer, prompts, target, tuple(i for i, _ in kept)))
        return out

    def summary(self, bags: Sequence[Bag] | None = None) -> pd.DataFrame:
        """One row per relation: id, label, type, templates, facts (and, given bags, bags and prompts)."""
        rows = []
        per: dict[str, list[Bag]] = {}
        for bag in bags or ():
            per.setdefault(bag.relation, []).append(bag)
        for rid, rel in self.relations.items():
            row = dict(relation=rid, label=rel.label, type=rel.type, templates=len(rel.templates),
                       facts=len(self.facts[rid]))  # fmt: skip
            if bags is not None:
                row["bags"] = len(per.get(rid, []))
                row["prompts"] = sum(len(b.prompts) for b in per.get(rid, []))
            rows.append(row)
        return pd.DataFrame(rows)


def _usable(template: str, style: Style) -> bool:
    if style == "mask":
        return True
    if template.index(SUBJECT) > template.index(OBJECT):
        return False
    if style == "end":
        return template.rstrip(" .").endswith(OBJECT)
    return True


def _render(template: str, subject: str, style: Style, mask: str) -> str:
    if style == "mask":
        return template.replace(SUBJECT, subject).replace(OBJECT, mask)
    return template[: template.index(OBJECT)].rstrip().replace(SUBJECT, subject)


def _single_token_check(tokenizer: Any) -> Callable[[str], bool]:
    cache: dict[str, bool] = {}

    def single(target: str) -> bool:
        if target not in cache:
            cache[target] = len(tokenizer.encode(target, add_special_tokens=False)) == 1
        return cache[target]

    return single


def load(
    path: str | os.PathLike,
    *,
    relations: Iterable[str] | str | None = None,
    min_templates: int = MIN_TEMPLATES,
) -> Pararel:
    """Load PARAREL from a folder (``patterns/``, ``facts/``, optional ``relations.jsonl``).

    Relations with fewer than ``min_templates`` templates (Dai et al.: 4) or without templates are dropped and
    listed in ``data.dropped``.

    Args:
        path: the folder (e.g. the one :func:`download` returns).
        relations: relation ids to load (default every relation); an unknown id raises, listing valid ones.
        min_templates: the fewest templates a relation needs.

    Returns:
        A :class:`Pararel`.

    Raises:
        PararelError: missing folder or file, a malformed line (file and line named), an unknown relation.

    Example:
        >>> data = load(pararel_dir, relations=["P36", "P37"])
        >>> data
        Pararel('...', relations=2, facts=24)
    """
    root = Path(path)
    if not root.is_dir():
        raise PararelError(f"PARAREL folder {root} does not exist; pass the folder or use pararel.download()")
    for sub in ("patterns", "facts"):
        if not (root / sub).is_dir():
            raise PararelError(f"{root} has no {sub}/ folder; expected {root}/{sub}/P*.jsonl")
    if isinstance(min_templates, bool) or not isinstance(min_templates, int) or min_templates < 1:
        raise ValueError(f"min_templates must be a positive int, got {min_templates!r}")
    fact_ids = sorted((p.stem for p in (root / "facts").glob("P*.jsonl")), key=_id_key)
    if not fact_ids:
        raise PararelError(f"{root / 'facts'} holds no P*.jsonl files")
    pattern_ids = {p.stem for p in (root / "patterns").glob("P*.jsonl")}
    info: dict[str, dict[str, Any]] = {}
    if (root / "relations.jsonl").exists():
        info = {r["relation"]: r for r in _read_jsonl(root / "relations.jsonl", ("relation",))}

    dropped: dict[str, str] = {}
    usable: dict[str, tuple[str, ...]] = {}
    for rid in fact_ids:
        if rid not in pattern_ids:
            dropped[rid] = "no templates"
            continue
        file = root / "patterns" / f"{rid}.jsonl"
        rows = _read_jsonl(file, ("pattern",))
        for number, row in enumerate(rows, start=1):
            _check_template(file, number, row["pattern"])
        templates = tuple(dict.fromkeys(r["pattern"] for r in rows))  # duplicates would double-count a prompt
        if len(templates) < min_templates:
            dropped[rid] = f"{len(templates)} templates"
            continue
        usable[rid] = templates
    wanted = _check_relations(relations, [*usable, *dropped])
    if wanted is not None:
        bad = [r for r in wanted if r in dropped]
        if bad:
            raise PararelError(
                f"relation(s) {bad} are not usable ({', '.join(dropped[r] for r in bad)}; need >= {min_templates}"
                f" templates); usable ids: {', '.join(usable)}"
            )
    out_rel: dict[str, Relation] = {}
    out_facts: dict[str, list[Fact]] = {}
    for rid in wanted or usable:
        meta = info.get(rid, {})
        out_rel[rid] = Relation(rid, str(meta.get("label", rid)), str(meta.get("type", "")), usable[rid])
        file = root / "facts" / f"{rid}.jsonl"
        rows = _read_jsonl(file, ("sub_label", "obj_label"))
        out_facts[rid] = [
            Fact(rid, str(r.get("uuid") or f"{rid}-{n}"), r["sub_label"], r["obj_label"])
            for n, r in enumerate(rows, start=1)
        ]
    return Pararel(root, out_rel, out_facts, dropped)


# --------------------------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$KN_LENS_CACHE/pararel``, else ``~/.cache/kn_lens/pararel``."""
    base = os.environ.get("KN_LENS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kn_lens")
    return Path(base) / "pararel"


def _fetch(url: str, dest: Path, *, missing_ok: bool = False) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except (OSError, ValueError) as err:
        if missing_ok:
            return False
        raise ConnectionError(f"could not download {url}: {err}") from None
    tmp = dest.with_suffix(dest.suffix + ".part")
    tmp.write_bytes(data)
    tmp.replace(dest)  # atomic: an interrupted download never leaves a half file under the real name
    return True


def download(
    cache_dir: str | os.PathLike | None = None,
    *,
    base_url: str = PARAREL_URL,
    relations_url: str | None = None,
    relation_ids: Sequence[str] = RELATION_IDS,
    force: bool = False,
) -> Path:
    """Fetch PARAREL's templates and facts into a cache folder (once) and return the folder for :func:`load`.

    Files already in the cache are kept unless ``force``. Templates come from ``{base_url}/pattern_data/
    graphs_json/P*.jsonl`` (a relation without templates is skipped), facts from ``{base_url}/trex_lms_vocab/
    P*.jsonl``; relation labels from ``relations_url`` (LAMA's ``relations.jsonl``) when given.

    Args:
        cache_dir: where to store it (default :func:`default_cache_dir`).
        base_url: the ParaRel ``data`` folder (any URL ``urllib`` opens, ``file://`` included).
        relations_url: optional URL of LAMA's ``relations.jsonl`` (labels and types).
        relation_ids: which relations to fetch.
        force: download again even if cached.

    Returns:
        The cache folder.

    Raises:
        ConnectionError: a facts file could not be downloaded.

    Example:
        Fetching needs the network (not available to these tests), hence the skip:

        >>> data = load(download())  # doctest: +SKIP
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    (root / "patterns").mkdir(parents=True, exist_ok=True)
    (root / "facts").mkdir(parents=True, exist_ok=True)
    base = base_url.rstrip("/")
    for rid in relation_ids:
        facts = root / "facts" / f"{rid}.jsonl"
        if force or not facts.exists():
            _fetch(f"{base}/trex_lms_vocab/{rid}.jsonl", facts)
        patterns = root / "patterns" / f"{rid}.jsonl"
        if force or not patterns.exists():
            _fetch(f"{base}/pattern_data/graphs_json/{rid}.jsonl", patterns, missing_ok=True)
    if relations_url and (force or not (root / "relations.jsonl").exists()):
        _fetch(relations_url, root / "relations.jsonl")
    return root


__all__ = [
    "MIN_TEMPLATES",
    "PARAREL_URL",
    "RELATION_IDS",
    "Bag",
    "Fact",
    "Pararel",
    "PararelError",
    "Relation",
    "default_cache_dir",
    "download",
    "load",
]
