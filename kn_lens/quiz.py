"""Auto-checked exercises for the tutorials.

Two ways to write an exercise:

* **Registered exercises** (what the tutorials use): :func:`exercise` registers, under a key, a function that
  computes the right answer *from the live model* and the objects the notebook passes (a model, a fact's
  knowledge neurons, prompts). The notebook only calls ``quiz.check(key, answer, model=model, ...)``: the code
  that computes the truth lives here and in :mod:`kn_lens.exercises`, not in the notebook, so a student copy of
  the notebook (solution cells removed, see ``tutorials/build.py``) can be checked without showing the answer.
  Numbers are compared within a tolerance; a wrong answer prints the exercise's hint, never the answer.
* **A** :class:`Question` with its own checker function (the original API, kept for notebooks written with it).


A wrong answer prints a hint and returns False, which is what a student wants. Tests set
``KN_LENS_QUIZ_STRICT=1`` (or pass ``strict=True``) so that a wrong answer raises :class:`QuizError`: a tutorial
whose own answers went stale then fails CI.

Example:
    >>> q = Question("top", "Which token does the model rank first?", lambda answer: answer == " Paris")
    >>> q.check(" Paris")
    ✓ top: correct
    True
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kn_lens._typing import Neuron

_STRICT_ENV = "KN_LENS_QUIZ_STRICT"


class QuizError(AssertionError):
    """A wrong answer in strict mode."""


def _strict(strict: bool | None) -> bool:
    if strict is None:
        return os.environ.get(_STRICT_ENV, "") not in ("", "0")
    return strict


def _feedback(key: str, ok: bool, message: str, hint: str, strict: bool | None, answer: Any) -> bool:
    if ok:
        print(f"✓ {key}: correct")
        return True
    hint = f" Hint: {hint}" if hint else ""
    print(f"✗ {key}: {message}.{hint}")
    if _strict(strict):
        # The answer the student gave is fine to show; the right one is not.
        raise QuizError(f"{key}: wrong answer {answer!r}")
    return False


@dataclass
class Question:
    """One exercise: ``checker(answer)`` returns True when the answer is right.

    Attributes:
        key: a short identifier shown in the feedback.
        text: the question as the student reads it.
        checker: a function of the answer; it may compute the truth from the model.
        hint: shown after a wrong answer.
    """

    key: str
    text: str
    checker: Callable[[Any], bool] = field(repr=False)
    hint: str = ""

    def check(self, answer: Any, *, strict: bool | None = None) -> bool:
        """Check ``answer``; print feedback; raise :class:`QuizError` when wrong in strict mode."""
        if answer is ... or answer is None:
            ok, message = False, "no answer yet: replace the ... with your answer"
        else:
            try:
                ok = bool(self.checker(answer))
            except (TypeError, ValueError) as err:
                ok, message = False, f"could not check this answer ({err})"
            else:
                message = "correct" if ok else "not quite"
        return _feedback(self.key, ok, message, self.hint, strict, answer)

    def show(self) -> None:
        """Print the question."""
        print(f"[{self.key}] {self.text}")


def equals(expected: Any) -> Callable[[Any], bool]:
    """A checker for an exact answer (strings compared after stripping, neurons by value)."""

    def check(answer: Any) -> bool:
        if isinstance(expected, str) and isinstance(answer, str):
            return answer.strip() == expected.strip()
        return answer == expected

    return check


def close_to(expected: float, *, rel: float = 0.05, abs_: float = 1e-3) -> Callable[[Any], bool]:
    """A checker for a number, within a relative or absolute tolerance."""

    def check(answer: Any) -> bool:
        return math.isclose(float(answer), float(expected), rel_tol=rel, abs_tol=abs_)

    return check


def one_of(options: set[Any] | list[Any]) -> Callable[[Any], bool]:
    """A checker that accepts any of several answers."""
    allowed = set(options)
    return lambda answer: answer in allowed


class Quiz:
    """An ordered set of questions with a running score.

    Example:
        >>> quiz = Quiz([Question("a", "2 + 2?", equals(4))])
        >>> quiz.check("a", 4)
        ✓ a: correct
        True
        >>> quiz.score
        (1, 1)
    """

    def __init__(self, questions: list[Question]):
        keys = [q.key for q in questions]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate question keys in {keys}")
        self.questions = {q.key: q for q in questions}
        self._results: dict[str, bool] = {}

    def ask(self, key: str) -> None:
        """Print question ``key``."""
        self._get(key).show()

    def check(self, key: str, answer: Any, *, strict: bool | None = None) -> bool:
        """Check an answer to question ``key`` and record the result."""
        ok = self._get(key).check(answer, strict=strict)
        self._results[key] = ok
        return ok

    @property
    def score(self) -> tuple[int, int]:
        """(right answers, questions)."""
        return sum(self._results.values()), len(self.questions)

    def _get(self, key: str) -> Question:
        if key not in self.questions:
            raise KeyError(f"no question {key!r}; the questions are {list(self.questions)}")
        return self.questions[key]


# --------------------------------------------------------------------------------------------------------------
# Registered exercises: the truth is computed here, from the live model, not in the notebook
# --------------------------------------------------------------------------------------------------------------


def matches(answer: Any, truth: Any, *, rel: float = 0.05, abs_: float = 0.02) -> bool:
    """Whether ``answer`` matches ``truth``: booleans exactly, numbers within ``rel``/``abs_``, strings after
    stripping spaces, neurons in any spelling (``"L9N1094"``, ``(9, 1094)``), sequences element by element
    (sets: as sets), anything else with ``==``.

    Example:
        >>> matches(0.31, 0.3), matches(True, 1), matches(["L1N2", "L0N5"], ["L1N2", "L0N5"])
        (True, False, True)
    """
    if hasattr(answer, "item") and getattr(answer, "ndim", 1) == 0:  # 0-d tensors and numpy scalars
        answer = answer.item()
    if isinstance(truth, bool) or isinstance(answer, bool):
        return isinstance(answer, bool) and isinstance(truth, bool) and answer == truth
    if isinstance(truth, int | float):
        if isinstance(answer, str):
            raise TypeError(f"expected a number, got the string {answer!r}")
        answer_f = float(answer)  # TypeError/ValueError on nonsense: reported as "could not check"
        if math.isnan(answer_f) or math.isnan(float(truth)):
            return math.isnan(answer_f) and math.isnan(float(truth))
        if isinstance(truth, int) and isinstance(answer, int):
            return answer == truth
        return math.isclose(answer_f, float(truth), rel_tol=rel, abs_tol=abs_)
    if isinstance(truth, Neuron):  # "L29N1066", (29, 1066) and Neuron(29, 1066) all name the same neuron
        return (Neuron.parse(answer) if isinstance(answer, str) else Neuron(*answer)) == truth
    if isinstance(truth, str):
        return isinstance(answer, str) and answer.strip() == truth.strip()
    if isinstance(truth, set | frozenset):
        return set(answer) == truth
    if isinstance(truth, list | tuple):
        if isinstance(answer, str) or not hasattr(answer, "__len__") or len(answer) != len(truth):
            return False
        return all(matches(a, t, rel=rel, abs_=abs_) for a, t in zip(answer, truth, strict=True))
    return answer == truth


@dataclass
class Exercise:
    """A registered exercise: ``truth(**context)`` computes the right answer from the live model.

    Attributes:
        key: the exercise's name, e.g. ``"05.top1-left"``.
        text: the question as the student reads it.
        truth: a function of the notebook's objects (``model=...``, ``kns=...``) returning the right answer.
        hint: shown after a wrong answer (never the answer itself).
        rel: relative tolerance for numbers.
        abs_: absolute tolerance for numbers.
    """

    key: str
    text: str
    truth: Callable[..., Any] = field(repr=False)
    hint: str = ""
    rel: float = 0.05
    abs_: float = 0.02

    def check(self, answer: Any, *, strict: bool | None = None, **context: Any) -> bool:
        """Compute the truth from ``context`` and compare; print feedback; raise in strict mode when wrong."""
        if answer is ... or answer is None:
            return _feedback(self.key, False, "no answer yet: replace the ... with your answer", "", strict, answer)
        truth = self.truth(**context)
        try:
            ok = matches(answer, truth, rel=self.rel, abs_=self.abs_)
        except (TypeError, ValueError) as err:
            return _feedback(self.key, False, f"could not check this answer ({err})", self.hint, strict, answer)
        return _feedback(self.key, ok, "not quite", self.hint, strict, answer)


EXERCISES: dict[str, Exercise] = {}
"""Registered exercises by key (the tutorials' ones are defined in :mod:`kn_lens.exercises`)."""


def exercise(
    key: str, text: str, *, hint: str = "", rel: float = 0.05, abs_: float = 0.02
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as the truth of exercise ``key``.

    Example:
        >>> @exercise("doc.double", "What is twice x?", hint="multiply by two")
        ... def _double(*, x):
        ...     return 2 * x
        >>> check("doc.double", 4, x=2)
        ✓ doc.double: correct
        True
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"an exercise key must be a non-empty string, got {key!r}")

    def register(truth: Callable[..., Any]) -> Callable[..., Any]:
        EXERCISES[key] = Exercise(key, text, truth, hint, rel, abs_)
        return truth

    return register


def get(key: str) -> Exercise:
    """The registered exercise ``key`` (the tutorials' exercises, :mod:`kn_lens.exercises`, register themselves
    when ``kn_lens`` is imported: this module never imports them, which sit above it)."""
    if key not in EXERCISES:
        raise KeyError(f"no exercise {key!r}; registered: {sorted(EXERCISES)}")
    return EXERCISES[key]


def ask(key: str) -> None:
    """Print the question of exercise ``key``."""
    print(f"[{key}] {get(key).text}")


def check(key: str, answer: Any, /, *, strict: bool | None = None, **context: Any) -> bool:
    """Check ``answer`` to exercise ``key``; the truth is computed from ``context`` (the model, the notebook's
    objects) by code registered with :func:`exercise`, not by the notebook.

    Returns True when right. A wrong answer prints the hint and returns False (raises :class:`QuizError` in
    strict mode: ``strict=True`` or ``KN_LENS_QUIZ_STRICT=1``).
    """
    return get(key).check(answer, strict=strict, **context)
