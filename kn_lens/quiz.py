"""Auto-checked exercises for the tutorials.

A :class:`Question` holds a prompt for the student and a checker that computes the right answer from the live
model (never a hard-coded string the notebook could echo), so a quiz stays correct when the model changes.

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

_STRICT_ENV = "KN_LENS_QUIZ_STRICT"


class QuizError(AssertionError):
    """A wrong answer in strict mode."""


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
        if strict is None:
            strict = os.environ.get(_STRICT_ENV, "") not in ("", "0")
        if answer is ... or answer is None:
            ok, message = False, "no answer yet: replace the ... with your answer"
        else:
            try:
                ok = bool(self.checker(answer))
            except (TypeError, ValueError) as err:
                ok, message = False, f"could not check this answer ({err})"
            else:
                message = "correct" if ok else "not quite"
        if ok:
            print(f"✓ {self.key}: correct")
            return True
        hint = f" Hint: {self.hint}" if self.hint else ""
        print(f"✗ {self.key}: {message}.{hint}")
        if strict:
            raise QuizError(f"{self.key}: wrong answer {answer!r}")
        return False

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
