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


# Registered exercises: the truth is computed by the package from the notebook's objects


def test_matches_by_type():
    from kn_lens import Neuron
    from kn_lens.quiz import matches

    assert matches(0.52, 0.5) and not matches(0.6, 0.5)
    assert matches(3, 3) and not matches(4, 3)
    assert matches(True, True) and not matches(1, True) and not matches(True, 1.0)
    assert matches("L9N1094", Neuron(9, 1094)) and matches((9, 1094), Neuron(9, 1094))
    assert not matches("L9N1095", Neuron(9, 1094))
    assert matches([Neuron(1, 2), 0.3], [Neuron(1, 2), 0.31]) and not matches([Neuron(1, 2)], [Neuron(1, 2), 0.3])
    assert matches({"a", "b"}, {"b", "a"}) and not matches(["a"], {"a", "b"})
    assert matches(" these", "these") and not matches(0.5, "0.5")
    assert matches(float("nan"), float("nan")) and not matches(0.0, float("nan"))
    # what pandas, numpy and torch hand back count as plain Python values
    import numpy as np
    import torch

    assert matches(np.bool_(True), True) and matches(np.int64(3), 3) and matches(torch.tensor(0.5), 0.51)
    assert not matches(np.bool_(False), True)


def test_registered_exercise_recomputes_its_truth_from_the_context(capsys):
    import torch

    from kn_lens import quiz

    calls = []

    @quiz.exercise("test.norm", "What is the norm of v?", hint="torch.linalg.norm", rel=1e-3, abs_=0)
    def _norm(*, v):
        calls.append(v)
        return float(torch.linalg.norm(v))

    v = torch.tensor([3.0, 4.0])
    assert quiz.check("test.norm", 5.0, v=v, strict=True)
    assert not quiz.check("test.norm", 7.0, v=v, strict=False)
    out = capsys.readouterr().out
    assert "✓ test.norm" in out and "✗ test.norm: not quite. Hint: torch.linalg.norm" in out
    assert "5.0" not in out, "the feedback must not give the answer away"
    assert len(calls) == 2
    with pytest.raises(QuizError):
        quiz.check("test.norm", 7.0, v=v, strict=True)
    assert not quiz.check("test.norm", ..., v=v, strict=False)
    assert not quiz.check("test.norm", "five", v=v, strict=False)
    assert "could not check" in capsys.readouterr().out


def test_unknown_exercise_names_the_registered_ones():
    from kn_lens import quiz

    with pytest.raises(KeyError, match="no exercise"):
        quiz.check("no.such.exercise", 1)
    with pytest.raises(ValueError, match="non-empty"):
        quiz.exercise("", "?")


def test_tutorial_truths_agree_with_the_library_on_the_tiny_bert(tiny_bert):
    """Two exercises' hidden truths, recomputed independently with kn_lens' own tables."""
    import kn_lens
    from kn_lens import hooks, quiz

    sentence = "Raymond is selling [MASK] sketches."
    table = kn_lens.compare(
        tiny_bert, sentence, ["these"], {"x0": hooks.Intervention("scale", ["L1N5"], 0.0, positions="site")}
    )
    expected = float(table.loc["these", "x0"] - table.loc["these", "clean"])
    truth = quiz.get("02.determiner-change").truth
    assert truth(model=tiny_bert, neuron="L1N5", sentence=sentence, determiner="these") == pytest.approx(
        expected, abs=1e-6
    )

    prompts = ["The capital of France is [MASK].", "France has its capital in [MASK]."]
    suppressed = kn_lens.suppress(tiny_bert, ["L1N5", "L0N7"], prompts, "Paris")
    truth = quiz.get("01.suppression-drop").truth
    value = truth(model=tiny_bert, neurons=["L1N5", "L0N7"], prompts=prompts, target="Paris")
    assert value == pytest.approx(-suppressed.rel_change.mean(), abs=1e-5)
    assert not quiz.check(
        "01.suppression-drop",
        value + 0.1,
        strict=False,
        model=tiny_bert,
        neurons=["L1N5", "L0N7"],
        prompts=prompts,
        target="Paris",
    )


def test_skill_tutorial_truths_agree_with_the_library_on_the_tiny_bert(tiny_bert):
    """Tutorial 4's checkers recompute by other routes (a hand-made predictivity, hooks instead of pruning, masks
    instead of perturbation_curve): each must agree with the library's own result."""
    from kn_lens import quiz, skill
    from kn_lens.backends import is_hooked
    from kn_lens.fixtures import tiny_bert as fixture

    # every third sentence: the lists alternate singular / plural, so a stride of 2 or 4 would keep one class
    sentences = fixture.AGREEMENT["train"][::3][:202] + fixture.AGREEMENT["heldout"][::3]
    texts = [s.prompt.replace("[MASK]", "the") for s in sentences]
    task = skill.make_task(texts, [int(s.plural) for s in sentences], name="number")
    # a verbalizer the model reads number into (accuracy 1.0) so that pruning visibly changes it (0.5)
    prompt = skill.HardPrompt("{text} It was [MASK].", ("book", "books"))
    result = skill.predictivity(tiny_bert, task, prompt=prompt, progress=False)

    best = quiz.get("04.best-predictivity").truth(model=tiny_bert, task=task, prompt=prompt, result=result)
    assert best == pytest.approx(float(result.scores.max()), abs=1e-6)

    curve = skill.perturbation_curve(
        tiny_bert, task, result, prompt=prompt, fractions=[0.2], seeds=(0, 1), progress=False
    )
    means = curve[curve.fraction == 0.2].groupby("selection").accuracy.mean()
    contrast = quiz.get("04.skill-vs-random").truth(
        model=tiny_bert, task=task, prompt=prompt, result=result, fraction=0.2, seeds=(0, 1)
    )
    assert contrast == pytest.approx(float(means["random"] - means["skill"]), abs=1e-6)

    pruned = quiz.get("04.pruned-accuracy").truth(
        model=tiny_bert, task=task, prompt=prompt, result=result, fraction=0.1
    )
    assert pruned != skill.accuracy(tiny_bert, task, prompt=prompt, progress=False)  # pruning changes this one
    if is_hooked(tiny_bert):  # skill.prune builds a smaller HookedEncoder (a bridge cannot be resized)
        keep = result.mask(0.1, per_layer=True)
        small = skill.prune(
            tiny_bert, keep, skill.task_mean_activations(tiny_bert, task, prompt=prompt, progress=False)
        )
        assert pruned == pytest.approx(skill.accuracy(small, task, prompt=prompt, progress=False), abs=0.02)
