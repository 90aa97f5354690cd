import pytest
import torch

from kn_lens.cli import build_parser, main, top_predictions


def test_parser_knows_every_command():
    parser = build_parser()
    assert parser.parse_args(["predict", "x"]).command == "predict"
    assert parser.parse_args(["decode", "L1N2", "-k", "3"]).k == 3
    assert parser.parse_args(["find", " Paris", "a", "b"]).prompts == ["a", "b"]
    with pytest.raises(SystemExit):
        parser.parse_args(["nonsense"])


def test_bad_input_is_a_clean_error_not_a_traceback(capsys, tmp_path):
    assert main(["--model", str(tmp_path / "missing"), "predict", "x"]) == 2
    assert "kn-lens: error:" in capsys.readouterr().err


def test_top_predictions_match_the_model(smollm2):
    frame = top_predictions(smollm2, "The capital of France is", k=3)
    with torch.inference_mode():
        logits = smollm2(smollm2.to_tokens("The capital of France is", prepend_bos=False))[0, -1]
    assert frame["token"].iloc[0] == repr(smollm2.tokenizer.decode([int(logits.argmax())]))
    assert frame["prob"].iloc[0] == pytest.approx(float(logits.softmax(-1).max()), rel=1e-4)
    assert list(frame["prob"]) == sorted(frame["prob"], reverse=True)


def test_predict_command_prints_a_table(capsys, smollm2):
    assert main(["predict", "The capital of France is", "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "' Paris'" in out and "prob" in out
