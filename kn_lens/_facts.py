"""Facts: the one converter for every "a fact" argument (prompts + answer [+ relation, name]).

Re-exported by :mod:`kn_lens.inputs`, the input boundary; kept apart only to keep that module short.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from kn_lens._scalars import check_sequence
from kn_lens.prompts import Prompt, TargetLike

__all__ = ["FactParts", "to_fact"]


class FactParts(NamedTuple):
    """A fact as :func:`to_fact` reads it: its prompts (texts or Prompts), answer, relation and name."""

    prompts: list[str | Prompt]
    target: TargetLike
    relation: str | None
    name: str


_FACT_KEYS = ("prompts", "target", "relation", "name")


def to_fact(item: Any, name: str = "fact", *, need_target: bool = True, prompts_only: bool = False) -> FactParts:
    """Read one fact: anything with ``.prompts`` (a :class:`~kn_lens.neurons.FactPrompts`, a PARAREL ``Bag``, a
    :class:`~kn_lens.neurons.KnowledgeNeurons` result), a mapping with ``prompts`` (and ``target``, ``relation``,
    ``name``), a ``(prompts, target[, relation])`` tuple, or, with ``prompts_only=True``, a bare list of prompts.

    The name is the object's ``uuid`` (a PARAREL fact's id) or ``name`` (``""`` when it has neither). One str as
    the prompts is one prompt. Each prompt must be a text or a Prompt.

    Args:
        item: the fact.
        name: the argument's name, for errors.
        need_target: a fact without an answer is an error.
        prompts_only: a list or tuple is the fact's prompts (no target), not a ``(prompts, target)`` tuple.

    Example:
        >>> to_fact((["The capital of France is", "France's capital is"], " Paris", "capital"))
        FactParts(prompts=['The capital of France is', "France's capital is"], target=' Paris', relation='capital',
                  name='')
        >>> to_fact({"prompts": "The capital of Italy is", "target": " Rome", "name": "Italy"}).prompts
        ['The capital of Italy is']
        >>> to_fact(["a", "b"], "fact", need_target=False, prompts_only=True).prompts
        ['a', 'b']
        >>> to_fact(("The capital of Spain is",))
        Traceback (most recent call last):
        ...
        TypeError: fact must be an object with .prompts (a FactPrompts, a PARAREL Bag), a mapping with ... tuple; got a
        tuple of 1
    """
    if isinstance(item, str | bytes):  # one text is not a fact (nor a list of prompts to split into characters)
        check_sequence(item, name, what="prompts (or a fact with .prompts)")
    if hasattr(item, "prompts") and not isinstance(item, Mapping):
        prompts, target = item.prompts, getattr(item, "target", None)
        relation = getattr(item, "relation", None)
        label = getattr(item, "uuid", "") or getattr(item, "name", "") or ""
    elif isinstance(item, Mapping):
        unknown = set(item) - set(_FACT_KEYS)
        if unknown or "prompts" not in item:
            raise ValueError(f"a fact mapping needs 'prompts' (and 'target', 'relation', 'name'); got keys "
                             f"{sorted(item)}")  # fmt: skip
        prompts, target, relation, label = (item.get(k) for k in _FACT_KEYS)
    elif prompts_only and isinstance(item, list | tuple):
        prompts, target, relation, label = item, None, None, ""
    elif isinstance(item, tuple) and len(item) in (2, 3):
        prompts, target, relation, label = *item, *([None] * (3 - len(item))), ""
    else:
        got = f"a tuple of {len(item)}" if isinstance(item, tuple) else type(item).__name__
        fix = "a list of prompts, " if prompts_only else ""
        raise TypeError(f"{name} must be {fix}an object with .prompts (a FactPrompts, a PARAREL Bag), a mapping "
                        f"with 'prompts' or a (prompts, target[, relation]) tuple; got {got}")  # fmt: skip
    prompts = [prompts] if isinstance(prompts, str | Prompt) else check_sequence(prompts, f"{name}.prompts")
    for p in prompts:
        if not isinstance(p, str | Prompt):
            raise TypeError(f"{name} must hold prompt texts or Prompts, got {type(p).__name__} {p!r}")
    if need_target and target is None:
        raise ValueError(f"{name} has no target; give the fact its answer")
    return FactParts(prompts, target, relation, str(label or ""))
