import re

import pytest
import torch

import kn_lens
from kn_lens.cli import build_parser, main
from kn_lens.fixtures import tiny_bert as fixture

FACT = fixture.FACTS[0]
BERT_PROMPT = fixture.train_prompts(FACT)[0]


def test_parser_knows_every_command():
    parser = build_parser()
    assert parser.parse_args(["predict", "x"]).command == "predict"
    assert parser.parse_args(["decode", "L1N2", "-k", "3"]).k == 3
    assert parser.parse_args(["find", " Paris", "a", "b"]).prompts == ["a", "b"]
    with pytest.raises(SystemExit):
        parser.parse_args(["nonsense"])


@pytest.mark.parametrize("order", ["before", "after"])
def test_model_option_before_or_after_the_command(order):
    parser = build_parser()
    argv = ["--model", "tiny-bert", "predict", "x"] if order == "before" else ["predict", "x", "--model", "tiny-bert"]
    assert parser.parse_args(argv).model == "tiny-bert"
    assert parser.parse_args(["predict", "x"]).model is None


def test_bad_input_is_a_clean_error_not_a_traceback(capsys, tmp_path):
    assert main(["--model", str(tmp_path / "missing"), "predict", "x"]) == 2
    assert "kn-lens: error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", BERT_PROMPT, "-k", "0"],
        ["predict", BERT_PROMPT, "-k", "-3"],
        ["decode", "L1N2", "-k", "0"],
        ["attribute", BERT_PROMPT, FACT.answer, "--top", "0"],
        ["attribute", BERT_PROMPT, FACT.answer, "--steps", "x"],
    ],
)
def test_out_of_range_counts_exit_2_with_a_message(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--model", "tiny-bert"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", BERT_PROMPT, "-k", "10000000"],
        ["decode", "L1N2", "-k", "10000000"],
        ["attribute", BERT_PROMPT, FACT.answer, "--top", "10000000"],
        ["decode", "L9N2"],
    ],
)
def test_counts_beyond_the_model_exit_2_with_a_message(capsys, argv):
    assert main([*argv, "--model", "tiny-bert"]) == 2
    err = capsys.readouterr().err
    assert any(line.startswith("kn-lens: error:") for line in err.splitlines()) and "Traceback" not in err


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "kn-lens demo" in out and "--model" in out
    assert "``" not in out and "::" not in out  # no reStructuredText markup


def test_top_predictions_match_the_model(smollm2):
    frame = kn_lens.top_predictions(smollm2, "The capital of France is", k=3)
    with torch.inference_mode():
        logits = smollm2(smollm2.to_tokens("The capital of France is", prepend_bos=False))[0, -1]
    assert frame["token"].iloc[0] == repr(smollm2.tokenizer.decode([int(logits.argmax())]))
    assert frame["prob"].iloc[0] == pytest.approx(float(logits.softmax(-1).max()), rel=1e-4)
    assert list(frame["prob"]) == sorted(frame["prob"], reverse=True)


def test_predict_command_prints_a_table(capsys, smollm2):
    assert main(["predict", "The capital of France is", "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "' Paris'" in out and "prob" in out


def _rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()[1:]]


def test_attribute_command_lists_the_top_neurons(capsys, tiny_bert):
    assert main(["attribute", BERT_PROMPT, FACT.answer, "--top", "3", "--steps", "5", "--model", "tiny-bert"]) == 0
    rows = _rows(capsys.readouterr().out)
    scores = kn_lens.integrated_gradients(tiny_bert, BERT_PROMPT, FACT.answer, n_steps=5)
    expected = kn_lens.top_neurons(scores, 3)
    assert [row[0] for row in rows] == [str(n) for n in expected]
    for row, neuron in zip(rows, expected, strict=True):
        assert float(row[1]) == pytest.approx(float(scores[neuron]), rel=1e-3, abs=1e-4)


def test_find_command_prints_the_neurons(capsys, tiny_bert):
    prompts = fixture.train_prompts(FACT)
    assert main(["find", FACT.answer, *prompts, "--model", "tiny-bert"]) == 0
    out = capsys.readouterr().out
    kns = kn_lens.find_knowledge_neurons(tiny_bert, prompts, FACT.answer)
    assert kns.neurons and str(kns.neurons) in out.splitlines()[0]
    assert all(str(n) in out for n in kns.neurons)


def test_decode_command_prints_both_sides(capsys, tiny_bert):
    assert main(["decode", "L1N3", "-k", "2", "--model", "tiny-bert"]) == 0
    out = capsys.readouterr().out
    decoded = kn_lens.decode(tiny_bert, "L1N3", k=2)
    assert all(token.strip() in out for token in decoded.top_tokens + decoded.bottom_tokens)


def test_demo_command_tells_the_story_with_controls(capsys):
    assert main(["demo", "--model", "tiny-bert", "--steps", "5"]) == 0
    out = capsys.readouterr().out
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "What the numbers mean"):
        assert step in out
    for condition in ("the fact's prompts", "other capitals (same relation)", "other relations", "random neurons"):
        assert re.search(rf"^{re.escape(condition)}[\s,]", out, flags=re.MULTILINE), condition
    assert "Relation filter" in out and "Done in" in out
