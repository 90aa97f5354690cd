import argparse
import json
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


@pytest.mark.parametrize("rule", ["dai", "eleuther"])
def test_find_command_selects_by_the_named_rule(capsys, tiny_bert, rule):
    prompts = fixture.train_prompts(FACT)
    assert main(["find", FACT.answer, *prompts, "--rule", rule, "--model", "tiny-bert", "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    expected = kn_lens.find_knowledge_neurons(tiny_bert, prompts, FACT.answer, variant=rule)
    adaptive = kn_lens.find_knowledge_neurons(tiny_bert, prompts, FACT.answer)
    assert meta["rule"] == rule and meta["neurons"] == [str(n) for n in expected.neurons]
    assert expected.neurons != adaptive.neurons  # the rule reached the selection (not the default's set)


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


# ------------------------------------------------------------------ options each command uses; one-line errors


def _help(capsys, *command) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", [["demo"], ["predict"], ["attribute"], ["find"], ["decode"], ["report"]])
def test_each_command_shows_the_options_it_uses(command, capsys):
    """Every verb offered --model and --backend, also report, which never loads a model; predict, decode,
    attribute and find lacked the --json and --device the README promises."""
    text = _help(capsys, *command)
    loads_a_model = command != ["report"]
    for option in ("--model", "--backend", "--device"):
        assert (option in text) is loads_a_model, option
    assert ("--json" in text) is (command != ["demo"])


COMMANDS = [["demo"], ["predict"], ["attribute"], ["find"], ["decode"], ["suppress"], ["enhance"], ["erase"],
            ["edit"], ["evaluate", "pararel"], ["evaluate", "convergence"], ["report"]]  # fmt: skip


def _subparser(*command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in command:
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = sub.choices[word]
    return parser


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_says_what_it_does_with_an_example_and_documents_every_option(command, capsys):
    """The README promises an example under every ``--help``; six commands had none, seven options no help."""
    text = _help(capsys, *command)
    assert f"example:\n  kn-lens {' '.join(command)}" in text or f"examples:\n  kn-lens {' '.join(command)}" in text
    parser = _subparser(*command)
    assert parser.description and len(parser.description.split()) >= 4
    undocumented = [a.option_strings or a.dest for a in parser._actions if not a.help]
    assert undocumented == [], undocumented


def test_find_rule_choices_and_help_come_from_the_rules():
    from kn_lens.selection import RULES, VARIANTS

    (rule,) = [a for a in _subparser("find")._actions if a.dest == "rule"]
    assert list(rule.choices) == list(VARIANTS) and all(text.replace("%", "%%") in rule.help for text in RULES.values())


def test_report_refuses_model_options(capsys, tmp_path):
    assert main(["--model", "tiny-bert", "report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "kn-lens: error: report reads a run folder and loads no model: drop --model\n"


def _one_line_error(capsys, argv, *expected: str) -> str:
    """Run ``argv``, check it ends in exit 2 with one line ``kn-lens: error: ...`` holding ``expected``; the line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("kn-lens")]  # (transformers may show progress)
    assert len(ours) == 1 and ours[0].startswith("kn-lens: error:") and "Traceback" not in err, err
    for text in expected:
        assert text in err, (text, err)
    return ours[0]


@pytest.mark.parametrize(
    ("device", "message"),
    [("foo", "'foo' is not a torch device"), ("cuda:x", "is not a torch device"), ("cuda", "no CUDA GPU")],
)
def test_a_device_this_machine_lacks_is_one_line_before_loading(capsys, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for command in (["predict", "x"], ["decode", "L1N2"], ["suppress", "Paris", "a [MASK]."]):
        _one_line_error(capsys, [*command, "--model", "tiny-bert", "--device", device], "--device", message)
    with pytest.raises(ValueError, match="is not a torch device"):
        kn_lens.load_model(fixture.PATH, device="foo")


def test_a_checkpoint_folder_without_weights_is_one_line(capsys, tmp_path):
    for item in fixture.PATH.iterdir():  # config and tokenizer, no weights
        if "safetensors" not in item.name and not item.name.endswith(".bin"):
            (tmp_path / item.name).write_bytes(item.read_bytes())
    line = _one_line_error(capsys, ["predict", "x [MASK].", "--model", str(tmp_path)], str(tmp_path))
    assert "weights" in line.lower() or "safetensors" in line.lower(), line  # says what the folder lacks


def test_predict_decode_attribute_find_write_json(capsys, tiny_bert):
    import json

    assert main(["predict", BERT_PROMPT, "-k", "3", "--model", "tiny-bert", "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt"] == BERT_PROMPT and len(out["rows"]) == 3
    expected = kn_lens.top_predictions(tiny_bert, BERT_PROMPT, 3)
    assert [row["token"] for row in out["rows"]] == list(expected["token"])
    assert main(["decode", "L1N3", "-k", "2", "--model", "tiny-bert", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["neuron"] == "L1N3" and {r["side"] for r in out["rows"]} == {"top", "bottom"}
    assert main(["attribute", BERT_PROMPT, FACT.answer, "--top", "2", "--steps", "3", "--model", "tiny-bert",
                 "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    scores = kn_lens.integrated_gradients(tiny_bert, BERT_PROMPT, FACT.answer, n_steps=3)
    assert [r["neuron"] for r in out["rows"]] == [str(n) for n in kn_lens.top_neurons(scores, 2)]
    prompts = fixture.train_prompts(FACT)
    assert main(["find", FACT.answer, *prompts, "--model", "tiny-bert", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["neurons"] == [str(n) for n in kn_lens.find_knowledge_neurons(tiny_bert, prompts, FACT.answer)]


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    """A KeyboardInterrupt (here raised at the first line of the lens, as Ctrl-C would) used to print a traceback."""
    import sys

    def interrupt(frame, event, arg):
        if event == "call" and frame.f_code.co_name == "decode" and frame.f_code.co_filename.endswith("lens.py"):
            raise KeyboardInterrupt
        return None

    sys.settrace(interrupt)
    try:
        code = main(["decode", "L1N3", "--model", "tiny-bert"])
    finally:
        sys.settrace(None)
    assert code == 130
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("kn-lens")]
    assert len(ours) == 1 and ours[0].startswith("kn-lens: interrupted") and "Traceback" not in err
