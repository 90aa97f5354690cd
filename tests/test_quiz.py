import pytest

from kn_lens.quiz import Question, Quiz, QuizError, close_to, equals, one_of


def test_right_answer_passes_and_is_recorded(capsys):
    quiz = Quiz([Question("sum", "2 + 2?", equals(4)), Question("pi", "pi?", close_to(3.14159, rel=1e-3))])
    assert quiz.check("sum", 4, strict=True)
    assert quiz.check("pi", 3.1416, strict=True)
    assert quiz.score == (2, 2)
    assert "✓ sum" in capsys.readouterr().out


def test_wrong_answer_prints_hint_or_raises_in_strict_mode(capsys):
    question = Question("token", "Top token?", equals(" Paris"), hint="look at the first row")
    assert question.check(" London", strict=False) is False
    assert "look at the first row" in capsys.readouterr().out
    with pytest.raises(QuizError):
        question.check(" London", strict=True)


def test_strict_mode_from_environment(monkeypatch):
    monkeypatch.setenv("KN_LENS_QUIZ_STRICT", "1")
    with pytest.raises(QuizError):
        Question("q", "?", one_of({"a", "b"})).check("c")


def test_unanswered_placeholder_is_wrong_not_an_error():
    assert Question("q", "?", equals(1)).check(..., strict=False) is False


def test_strings_compare_without_surrounding_space():
    assert equals(" Paris")("Paris")
    assert not equals(" Paris")("Lyon")


def test_checker_errors_become_wrong_answers():
    assert Question("n", "?", close_to(1.0)).check("not a number", strict=False) is False


def test_duplicate_and_unknown_keys():
    with pytest.raises(ValueError, match="duplicate"):
        Quiz([Question("a", "?", equals(1)), Question("a", "?", equals(2))])
    with pytest.raises(KeyError, match="no question"):
        Quiz([Question("a", "?", equals(1))]).check("b", 1)
