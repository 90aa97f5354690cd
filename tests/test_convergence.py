"""Quadrature convergence: the comparison against hand computations, the run-folder step (resumable), the report,
the command line and bad inputs. On the tiny BERT (the rules' effects are real on it: 2 left-Riemann steps miss
the integral by far more than 32 Gauss-Legendre nodes)."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from _tiny_pararel import write_tiny_pararel

from kn_lens._typing import Neuron
from kn_lens.cli import main
from kn_lens.datasets import pararel
from kn_lens.evaluation import sweeps
from kn_lens.evaluation.convergence import PRESETS, convergence, convergence_summary, jaccard
from kn_lens.evaluation.report import build_report
from kn_lens.fixtures import tiny_bert as fx
from kn_lens.neurons import find_knowledge_neurons

COARSE = ("riemann_left", 2)
REFERENCE = dict(method="gausslegendre", n_steps=32)


@pytest.fixture(scope="module")
def facts():
    return [(fx.train_prompts(f), f.answer, f.relation) for f in fx.facts_of("capital")[:2]]


@pytest.fixture(scope="module")
def frame(tiny_bert, facts):
    return convergence(tiny_bert, facts, settings=[COARSE, ("gausslegendre", 8)], reference=REFERENCE, progress=False)


def test_rows_match_a_hand_computation(tiny_bert, facts, frame):
    assert list(frame["method"]) == ["gausslegendre", "riemann_left", "gausslegendre"] * 2
    assert list(frame["reference"]) == [True, False, False] * 2
    prompts, target, _ = facts[1]
    ref = find_knowledge_neurons(tiny_bert, prompts, target, **REFERENCE)
    coarse = find_knowledge_neurons(tiny_bert, prompts, target, method=COARSE[0], n_steps=COARSE[1])
    row = frame.iloc[4]
    assert (row["method"], row["n_steps"]) == COARSE
    expected = len(set(ref.neurons) & set(coarse.neurons)) / len(set(ref.neurons) | set(coarse.neurons))
    assert row["jaccard"] == pytest.approx(expected, abs=1e-3)
    error = float((coarse.scores - ref.scores).abs().max() / ref.scores.abs().max())
    assert row["score_error"] == pytest.approx(error, rel=1e-3)
    assert row["completeness"] == pytest.approx(sum(coarse.params["completeness"]) / len(prompts), rel=1e-3)
    assert row["neurons"] == len(coarse.neurons) and row["prompts"] == len(prompts)
    reference_rows = frame[frame["reference"]]
    assert (reference_rows["jaccard"] == 1.0).all() and (reference_rows["score_error"] == 0.0).all()


def test_a_coarse_rule_is_measurably_worse(frame):
    coarse = frame[frame["method"] == "riemann_left"]
    fine = frame[frame["reference"]]
    assert coarse["completeness"].min() > 10 * fine["completeness"].max()
    assert coarse["score_error"].min() > 0.01
    summary = convergence_summary(frame)
    assert summary["method"].iloc[0] == "gausslegendre" and bool(summary["reference"].iloc[0])
    assert summary.set_index("method").loc["riemann_left", "facts"] == 2


def test_jaccard():
    assert jaccard([], []) == 1.0
    assert jaccard(["L0N1"], ["L0N2"]) == 0.0
    assert jaccard(["L0N1", "L0N2", "L1N3"], ["L0N2", "L1N3", "L2N4"]) == 0.5


def test_jaccard_reads_neurons_not_characters():
    """jaccard("L1N2", "L2N1") was 1.0: each string was taken as the set of its characters."""
    assert jaccard("L1N2", "L2N1") == 0.0
    assert jaccard("L1N2", "L1N2") == 1.0
    assert jaccard(["L1N2", (3, 4)], [Neuron(1, 2), "L3N4"]) == 1.0  # one neuron, whatever its spelling
    with pytest.raises(ValueError):
        jaccard(["a"], ["b"])


def test_convergence_reads_every_fact_before_attributing(tiny_bert, facts):
    """A bad fact late in the list used to fail only after the earlier facts' attributions (minutes)."""
    calls = []
    handle = tiny_bert.embed.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        with pytest.raises(ValueError, match="exactly one \\[MASK\\]"):
            convergence(tiny_bert, [*facts, (["no mask here"], "Paris")], settings=[COARSE], progress=False)
        with pytest.raises(TypeError, match="facts must be a list"):
            convergence(tiny_bert, "The capital of France is [MASK].", progress=False)
        with pytest.raises(TypeError, match="settings must be a list"):
            convergence(tiny_bert, facts, settings="riemann_left", progress=False)
    finally:
        handle.remove()
    assert not calls


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(settings=[("simpson", 8)]), "unknown method 'simpson'"),
        (dict(settings=[("riemann_left", 0)]), "n_steps must be an int >= 1"),
        (dict(settings=["riemann_left"]), "(method, n_steps) pair"),
        (dict(n_steps=8), "convergence sets ['n_steps'] itself"),
        (dict(reference=dict(method="riemann_middle", n_steps=8, layers=[1])), "reference takes"),
    ],
)
def test_bad_settings_are_clear_errors(tiny_bert, facts, kwargs, message):
    with pytest.raises(ValueError) as err:
        convergence(tiny_bert, facts, progress=False, **kwargs)
    assert message in str(err.value)


def test_no_facts_and_wrong_frames(tiny_bert):
    with pytest.raises(ValueError, match="no facts"):
        convergence(tiny_bert, [], progress=False)
    with pytest.raises(TypeError, match="DataFrame"):
        convergence_summary([{"method": "riemann_left"}])
    with pytest.raises(ValueError, match="missing columns"):
        convergence_summary(pd.DataFrame({"method": ["riemann_left"]}))


def test_presets_are_valid_rules():
    assert PRESETS["dai"] == dict(method="riemann_left", n_steps=20)
    assert PRESETS["converged"]["n_steps"] >= 64


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = write_tiny_pararel(tmp_path_factory.mktemp("pararel"), facts_per_relation=3)
    out = tmp_path_factory.mktemp("run") / "tiny"
    argv = ["--model", "tiny-bert", "evaluate", "pararel", "--out", str(out), "--data", str(data), "--no-progress",
            "--relations", "P36,P37", "--steps", "5"]  # fmt: skip
    assert main(argv) == 0
    return data, out


def test_run_folder_step_resumes_and_reaches_the_report(tiny_bert, run, tmp_path, capsys):
    out = shutil.copytree(run[1], tmp_path / "run")
    records = sweeps.read_records(out)
    assert all(len(r["completeness"]) == r["n_prompts"] for r in records)  # every fact's own errors
    assert "Stability across quadrature rules: not measured" in build_report(out)
    argv = ["--model", "tiny-bert", "evaluate", "convergence", str(out), "--facts-per-relation", "1",
            "--no-progress", "--json"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["facts"] == 2 and summary["rows"][0]["reference"] is True
    rows = sweeps.read_convergence(out)
    assert {r["fact"] for r in rows} == {records[0]["uuid"], next(r["uuid"] for r in records if r["relation"] == "P37")}
    first = [r for r in rows if r["fact"] == records[0]["uuid"]]
    assert all(r["prompts"] == records[0]["n_prompts"] for r in first)  # held-out prompts stay out
    assert main(argv) == 0  # resumed: nothing added
    assert len(sweeps.read_convergence(out)) == len(rows)
    page = build_report(out)
    assert "Stability across quadrature rules (2 facts)" in page and "Completeness error per fact" in page


def test_run_folder_step_refuses_bad_folders(tiny_bert, random_bert, run, tmp_path):
    data, out = run
    folder = pararel.load(data)
    with pytest.raises(sweeps.SweepError, match="not a run folder"):
        sweeps.run_convergence(tiny_bert, folder, tmp_path, progress=False)
    with pytest.raises(sweeps.SweepError, match="another model"):
        sweeps.run_convergence(random_bert, folder, out, progress=False)
    with pytest.raises(ValueError, match="facts_per_relation"):
        sweeps.run_convergence(tiny_bert, folder, out, facts_per_relation=0, progress=False)


def test_preset_and_method_reach_the_manifest(run, tmp_path, capsys):
    data, _ = run
    out = tmp_path / "converged"
    argv = ["--model", "tiny-bert", "evaluate", "pararel", "--out", str(out), "--data", str(data), "--no-progress",
            "--relations", "P36", "--facts-per-relation", "1", "--preset", "converged", "--steps", "6"]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["attribution"]["n_steps"] == 6 and manifest["attribution"]["method"] == "riemann_middle"
    assert main([*argv[:-4], "--method", "simpson"]) == 2
    assert "--method must be one of" in capsys.readouterr().err


def test_causal_model_layer_subset_and_user_hooks(random_llama):
    """A causal model, a layer subset, a user hook on mlp_post: every row is what find_knowledge_neurons gives
    under that hook (the hook is honoured, not bypassed), and the hook changes the scores."""
    import torch

    prompts = ["The capital of France is", "France's capital city is", "The French capital is"]
    rules = dict(settings=[COARSE], reference=REFERENCE, layers=[1, 2], progress=False)
    clean = convergence(random_llama, [(prompts, " Paris")], **rules)

    def halve(act, hook):
        return act * 0.5

    random_llama.add_hook("blocks.1.hook_mlp_out", halve)
    try:
        with pytest.warns(UserWarning):
            hooked = convergence(random_llama, [(prompts, " Paris")], **rules)
        coarse = find_knowledge_neurons(random_llama, prompts, " Paris", layers=[1, 2], method=COARSE[0],
                                        n_steps=COARSE[1])  # fmt: skip
        ref = find_knowledge_neurons(random_llama, prompts, " Paris", layers=[1, 2], **REFERENCE)
    finally:
        random_llama.reset_hooks(including_permanent=True)
    assert coarse.scores.shape == (3, 2, random_llama.cfg.d_mlp)
    error = float((coarse.scores - ref.scores).abs().max() / ref.scores.abs().max())
    assert hooked.iloc[1]["score_error"] == pytest.approx(error, rel=1e-3)
    assert hooked.iloc[1]["completeness"] == pytest.approx(sum(coarse.params["completeness"]) / 3, rel=1e-3)
    assert not torch.isclose(torch.tensor(hooked["completeness"].to_list()),
                             torch.tensor(clean["completeness"].to_list())).all()  # fmt: skip


def test_convergence_command_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["--model", "tiny-bert", "evaluate", "convergence", str(tmp_path), "--no-progress"]) == 2
    assert "is not a run folder" in capsys.readouterr().err
