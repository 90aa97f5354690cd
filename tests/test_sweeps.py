"""The PARAREL sweep end to end on the tiny BERT: records, resume after a kill, torchrun with 2 processes, report,
bad inputs. A CI-sized run: 4 relations x 12 facts the tiny BERT knows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _tiny_pararel import write_tiny_pararel

from kn_lens import sweeps
from kn_lens.cli import main

ROOT = Path(__file__).parents[1]
TIMING = ("seconds", "seconds_attribution")


def _args(data, out, *extra):
    return ["--model", "tiny-bert", "evaluate", "pararel", "--out", str(out), "--data", str(data), "--no-progress",
            *extra]  # fmt: skip


def _records(out):
    rows = []
    for line in (Path(out) / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows.append({k: v for k, v in r.items() if k not in TIMING})
    return rows


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_pararel(tmp_path_factory.mktemp("pararel"))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    assert main(_args(data, out)) == 0
    return out


def test_records_relations_and_resume_without_duplicates(reference, capsys):
    records = _records(reference)
    assert len(records) == 48 and len({r["uuid"] for r in records}) == 48
    first = records[0]
    assert {"relation", "uuid", "answer", "neurons", "effects", "specificity"} <= set(first)
    assert all(n.startswith("L") and "N" in n for r in records for n in r["neurons"])
    conditions = {e["condition"] for e in first["effects"]}
    assert conditions == {"knowledge neurons", "knowledge neurons (held-out)", "same relation", "other facts",
                          "random neurons", "random neurons (held-out)"}  # fmt: skip
    assert {e["intervention"] for e in first["effects"]} == {"suppress", "enhance"}
    kinds = [(r["kind"], r["relation"]) for r in sweeps.read_relations(reference)]
    assert sorted(k for k, _ in kinds) == ["edit"] * 8 + ["erase"] * 4
    assert len(sweeps.read_known(reference)) == 48
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["model"] == "tiny-bert" and manifest["relations"] == ["P36", "P37", "P106", "P1303"]
    assert "torch" in manifest["versions"]
    before = (reference / "records.jsonl").read_text()
    assert main(_args(Path(manifest["data_path"]), reference)) == 0
    assert (reference / "records.jsonl").read_text() == before  # nothing redone, nothing duplicated
    assert len(sweeps.read_relations(reference)) == 12


def test_killed_mid_run_then_resumed(data, reference, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "kn_lens", *_args(data, out)]
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shard = out / "shards" / "part-0.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if shard.exists() and shard.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (out / "records.jsonl").exists()  # killed before the end
    partial = len(sweeps.read_records(out))
    assert 3 <= partial < 48
    with open(shard, "a") as f:  # a record cut mid-write, as a kill can leave it
        f.write('{"relation": "P36", "uuid": "half')
    assert main(_args(data, out)) == 0
    resumed = _records(out)
    assert [r["uuid"] for r in resumed] == [r["uuid"] for r in _records(reference)]
    assert resumed == _records(reference)
    assert not (out / "shards" / "part-0.jsonl").exists()


def test_torchrun_two_processes_equal_one(data, reference, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "kn_lens", *_args(data, out)]  # fmt: skip
    done = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "processes=2" in done.stdout
    assert _records(out) == _records(reference)
    assert sweeps.read_relations(out) == sweeps.read_relations(reference)


def test_report_is_one_self_contained_page(reference, capsys):
    assert main(["report", str(reference), "--json"]) == 0
    path = Path(json.loads(capsys.readouterr().out)["report"])
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<script src=" not in text.replace('<script src="data:', "")
    for heading in ("Coverage", "Suppress (x0) and enhance (x2)", "Layer of the selected", "Erasing a relation",
                    "Editing facts", "same relation", "random neurons", "specificity"):  # fmt: skip
        assert heading in text


def test_bad_inputs(data, reference, tmp_path, capsys):
    # another run's folder is refused
    assert main(_args(data, reference, "--seed", "7")) == 2
    err = capsys.readouterr().err
    assert "holds another run" in err and "seed: 0 there, 7 now" in err
    # unknown relation ids list the valid ones
    assert main(_args(data, tmp_path / "a", "--relations", "P36,P999")) == 2
    assert "P999" in capsys.readouterr().err
    # a missing data folder, a folder of records without a manifest, a report of a non-run
    assert main(_args(tmp_path / "nowhere", tmp_path / "b")) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "records.jsonl").write_text("{}\n")
    assert main(_args(data, tmp_path / "c")) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "b")]) == 2
    with pytest.raises(SystemExit):
        main(_args(data, tmp_path / "d", "--facts-per-relation", "0"))
    # corrupt JSONL: the file and line are named; a half last line is repaired before appending
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(sweeps.SweepError, match=r"bad.jsonl, line 2"):
        sweeps.read_jsonl(bad)
    half = tmp_path / "half.jsonl"
    half.write_text('{"a": 1}\n{"a": ')
    assert sweeps.read_jsonl(half) == [{"a": 1}]
    sweeps.append_jsonl(half, {"a": 3})
    assert sweeps.read_jsonl(half) == [{"a": 1}, {"a": 3}]


def test_cli_suppress_erase_edit_json(capsys):
    prompts = ["The capital of France is [MASK].", "France has its capital in [MASK].",
               "[MASK] is the capital city of France."]  # fmt: skip
    assert main(["suppress", "Paris", *prompts, "--model", "tiny-bert", "--json",
                 "--unrelated", "People in Poland speak [MASK].=Polish"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    conditions = {r["condition"] for r in out["rows"]}
    assert conditions == {"knowledge neurons", "random neurons", "other facts"} and out["neurons"]
    own = next(r for r in out["rows"] if r["condition"] == "knowledge neurons")
    assert own["after"] < own["before"]
    assert main(["--model", "tiny-bert", "enhance", "Paris", prompts[0], "--neurons", "L1N253", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["factor"] == 2.0
    assert main(["erase", "Paris", *prompts, "--model", "tiny-bert", "--json", "--neurons", out["neurons"][0]]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert {r["neurons"] for r in rows} == {"knowledge neurons", "random neurons"}
    assert main(["edit", *prompts, "--new", "Rome", "--model", "tiny-bert", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows[0]["old"] == "Paris" and rows[1]["neurons"] == "random active neurons"
    assert main(["suppress", "Paris", prompts[0], "--model", "tiny-bert"]) == 2
    assert "at least 2 paraphrases" in capsys.readouterr().err
    assert main(["suppress", "Paris", prompts[0], "--model", "tiny-bert", "--neurons", "L9N1"]) == 2
    assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["suppress", "Paris", prompts[0], "--factor", "nan"])


@pytest.mark.parametrize("command", [["suppress"], ["enhance"], ["erase"], ["edit"], ["evaluate", "pararel"],
                                     ["report"]])  # fmt: skip
def test_every_evaluation_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "example" in text and "--json" in text
    loads_a_model = command != ["report"]  # each command shows the options it uses: report loads no model
    assert ("--device" in text) is loads_a_model and ("--model" in text) is loads_a_model
    assert ("--backend" in text) is loads_a_model


def _one_line(capsys, argv, *expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("kn-lens")]
    assert len(ours) == 1 and ours[0].startswith("kn-lens: error:") and "Traceback" not in err, err
    for text in expected:
        assert text in ours[0], (text, ours[0])


def test_bad_run_folders_and_files_are_one_line_errors(data, reference, tmp_path, capsys):
    """Each of these ended in a traceback (or, for another tool's manifest, in an empty page and exit 0)."""
    import shutil

    # --out is a file; report --output is a folder
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    _one_line(capsys, _args(data, a_file), "--out", "is a file")
    _one_line(capsys, ["report", str(reference), "--output", str(tmp_path)], "is a folder")
    # manifests: damaged (the file named), a list, lacking keys, another tool's
    for name, text, message in (
        ("damaged", "{not json", "manifest.json is damaged"),
        ("a-list", "[1, 2]", "holds a JSON list"),
        ("no-keys", json.dumps({"model": "x"}), "lacks ['relations', 'data_path']"),
        ("foreign", json.dumps({"kind": "other.tool", "model": "x"}), "another tool's manifest"),
    ):
        run = tmp_path / name
        shutil.copytree(reference, run)
        (run / "manifest.json").write_text(text)
        _one_line(capsys, ["report", str(run)], str(run / "manifest.json"), message)
        _one_line(capsys, ["--model", "tiny-bert", "evaluate", "convergence", str(run)], message)
    # records of another schema
    run = tmp_path / "other-records"
    shutil.copytree(reference, run)
    (run / "report.html").unlink(missing_ok=True)
    (run / "records.jsonl").write_text(json.dumps({"uuid": "x", "score": 1}) + "\n")
    _one_line(capsys, ["report", str(run)], "records.jsonl holds records of another schema", "lacks")
    (run / "records.jsonl").write_text(json.dumps(["not", "a", "record"]) + "\n")
    _one_line(capsys, ["report", str(run)], "records.jsonl holds records of another schema")
    assert not (run / "report.html").exists()


def test_torchrun_failure_is_one_line_per_process(tmp_path):
    """Each process printed a traceback; now each says which process it is and what is wrong, in one line (the
    launcher's own summary is torchrun's)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "kn_lens",
           *_args(tmp_path / "nowhere", tmp_path / "out")]  # fmt: skip
    done = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    ours = sorted(line for line in done.stderr.splitlines() if line.startswith("kn-lens"))
    assert [line.split(":")[0] for line in ours] == ["kn-lens (process 0 of 2)", "kn-lens (process 1 of 2)"], ours
    assert all("error: --data" in line and "does not exist" in line for line in ours)
    assert "kn_lens/" not in done.stderr  # no traceback through kn_lens
