"""The PARAREL sweep end to end on the tiny BERT: phases (known facts, attribution, selection, evaluation), records,
resume after a kill or a power cut recomputing nothing, torchrun with 2 processes, rules added later, the report,
bad inputs refused before the first byte. A CI-sized run: 3 relations x 5 facts the tiny BERT knows, 4 rules."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from _tiny_pararel import write_tiny_pararel

from kn_lens._typing import Neuron
from kn_lens.cli import main
from kn_lens.datasets import pararel
from kn_lens.evaluation import sweep_phases, sweeps
from kn_lens.neurons import drop_shared, find_knowledge_neurons, find_knowledge_neurons_many
from kn_lens.scoring import mean_logit_diff

ROOT = Path(__file__).parents[1]
TIMING = ("seconds", "seconds_attribution")
RULES = "dai,adaptive,fact-specific,contrastive"
RUN = ["--relations", "P36,P37,P106", "--facts-per-relation", "5", "--steps", "5", "--rules", RULES]
FILES = ("known.jsonl", "attribution.jsonl", "contrastive.jsonl", "selections.jsonl", "records.jsonl",
         "relations.jsonl")  # fmt: skip


def _args(data, out, *extra, run=RUN):
    return ["--model", "tiny-bert", "evaluate", "pararel", "--out", str(out), "--data", str(data), "--no-progress",
            *run, *extra]  # fmt: skip


def _strip(record):
    out = {k: v for k, v in record.items() if k not in TIMING}
    if "rows" in out:  # convergence rows time each rule
        out["rows"] = [{k: v for k, v in row.items() if k != "seconds_per_prompt"} for row in out["rows"]]
    return out


def _lines(path):
    """A run file's records without their timings (the only fields that differ between equal runs)."""
    return [_strip(r) for r in sweeps.read_jsonl(path)]


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


@pytest.fixture
def counted(monkeypatch):
    """Count the units of work a run computes, by wrapping (not replacing) the functions that do them."""
    counts: Counter = Counter()

    def wrap(module, name, key=None):
        real = getattr(module, name)

        def counting(*args, **kwargs):
            counts[key or name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)

    for name in ("known_facts", "select_relation", "fact_effects", "erase_relation", "edit_effects", "convergence"):
        wrap(sweeps, name)
    wrap(sweep_phases, "attribute_fact")  # called by the attribution phase's unit
    return counts


# --------------------------------------------------------------------------------------------------------------
# The phases and their records
# --------------------------------------------------------------------------------------------------------------


def test_every_records_random_control_sits_in_its_neurons_layers(reference):
    """A control drawn in other layers (say layer 0) would compare the knowledge neurons with neurons of another
    kind: each record's random neurons are as many per layer as its knowledge neurons, and none of them."""
    records = sweeps.read_records(reference)
    assert any(r["neurons"] for r in records)
    for r in records:
        layers = Counter(Neuron.parse(n).layer for n in r["neurons"])
        assert Counter(Neuron.parse(n).layer for n in r["random_neurons"]) == layers, r["uuid"]
        assert not set(r["random_neurons"]) & set(r["neurons"])


def test_phases_records_and_manifest(reference):
    manifest = sweeps.read_manifest(reference)
    assert list(manifest["rules"]) == RULES.split(",")
    assert manifest["attribution"] == dict(attribution="ig", n_steps=5, method="riemann_left", objective="prob",
                                           layers=[0, 1], kwargs={}, floor=0.1)  # fmt: skip
    assert manifest["model_config"]["d_vocab"] > 0 and len(manifest["model_config"]["weights"]) == 16
    attributions = sweeps.read_attributions(reference)
    assert len(attributions) == 15 and len({(a["relation"], a["uuid"]) for a in attributions}) == 15
    first = attributions[0]
    assert len(first["prompts"]) == 3 and len(first["heldout"]) == 1 and first["layers"] == [0, 1]
    assert len(first["completeness"]) == 3 and len(first["candidates"]["scores"]) == 3
    contrastive = sweeps.read_attributions(reference, contrastive=True)
    assert [c["uuid"] for c in contrastive] == [a["uuid"] for a in attributions]
    assert all(c["objective"] == "contrastive" and c["target"] not in c["others"] for c in contrastive)
    records = sweeps.read_records(reference)
    assert Counter(r["rule"] for r in records) == dict.fromkeys(RULES.split(","), 15)
    assert len({(r["rule"], r["relation"], r["uuid"]) for r in records}) == 60
    with_neurons = next(r for r in records if r["neurons"])
    assert {e["condition"] for e in with_neurons["effects"]} == {
        "knowledge neurons", "knowledge neurons (held-out)", "same relation", "other facts", "random neurons",
        "random neurons (held-out)"}  # fmt: skip
    assert all(not r["effects"] for r in records if not r["neurons"])  # counted, not measured
    # the same controls under every rule: effects differ by the neurons only
    by_fact: dict = {}
    for r in records:
        by_fact.setdefault((r["relation"], r["uuid"]), set()).add(json.dumps(r["same_relation_controls"]))
    assert all(len(v) == 1 for v in by_fact.values())
    kinds = Counter((r["rule"], r["kind"]) for r in sweeps.read_relations(reference))
    assert all(kinds[(rule, "erase")] == 3 and kinds[(rule, "edit")] == 6 for rule in RULES.split(","))
    coverage = sweeps.coverage(reference)
    assert list(coverage["evaluated"]) == [5, 5, 5] and (coverage["known"] >= 5).all()
    assert set(sweeps.phase_times(reference)["phase"]) == {"known facts", "attribution", "contrastive", "selection",
                                                            "evaluation", "relations"}  # fmt: skip


def test_known_facts_are_a_seeded_sample(tiny_bert, reference, data):
    import random

    from kn_lens.evaluation import fact_seed

    # the tiny BERT knows its facts: one chunk of 16 (all 12) per relation was scanned; the evaluated facts are the
    # first 5 known in the order of the relation's facts shuffled by the seed, not the file's first 5
    assert Counter(k["relation"] for k in sweeps.read_known(reference)) == {"P36": 12, "P37": 12, "P106": 12}
    bags = pararel.load(data).bags(tiny_bert, relations="P36")
    shuffled = list(bags)
    random.Random(fact_seed(0, "known:P36")).shuffle(shuffled)
    evaluated = [a["uuid"] for a in sweeps.read_attributions(reference) if a["relation"] == "P36"]
    assert evaluated == [b.uuid for b in shuffled[:5]] != [b.uuid for b in bags[:5]]


def sweeps_model():
    from kn_lens.fixtures import tiny_bert

    return tiny_bert.load()


def test_scan_stops_at_enough_known_facts(tiny_bert, tmp_path, counted):
    data = pararel.load(write_tiny_pararel(tmp_path / "data"))
    # 40 facts of one relation: 3 known ones are found in the first chunk of 16, the rest is never scanned
    big = dict(data.facts)
    big["P36"] = [*data.facts["P36"]] + [
        pararel.Fact("P36", f"extra-{i}", data.facts["P36"][i % 12].subject, data.facts["P36"][i % 12].answer)
        for i in range(28)
    ]
    data = pararel.Pararel(data.path, data.relations, big)
    out = sweeps.run_pararel(tiny_bert, data, tmp_path / "run", model_name="tiny", relations="P36",
                             facts_per_relation=3, n_steps=2, rules="adaptive", erase_top=0, n_edits=0,
                             progress=False)  # fmt: skip
    assert len(sweeps.read_known(out)) == 16 and counted["known_facts"] == 1
    assert sweeps.coverage(out).loc[0, "scanned"] == 16


# --------------------------------------------------------------------------------------------------------------
# Selection from stored records equals selection at sweep time, and selection on the full scores
# --------------------------------------------------------------------------------------------------------------


def test_selection_from_records_equals_sweep_time(reference):
    stored = sweeps.read_selections(reference)
    for rule in RULES.split(","):
        again = sweeps.select_records(reference, rule)
        assert [(s["relation"], s["facts"]) for s in again] == [
            (s["relation"], s["facts"]) for s in stored if s["rule"] == rule
        ]
        neurons = {(line["relation"], f["uuid"]): f["neurons"] for line in again for f in line["facts"]}
        assert all(r["neurons"] == neurons[(r["relation"], r["uuid"])] for r in sweeps.read_records(reference, rule))
    # a rule the run never selected runs on the stored candidates too
    assert len(sweeps.select_records(reference, "eleuther")) == 3


def test_stored_selection_equals_selection_on_full_scores(tiny_bert, reference):
    attributions = sweeps.read_attributions(reference)
    records = {(r["rule"], r["relation"], r["uuid"]): r for r in sweeps.read_records(reference)}
    kwargs = dict(n_steps=5, method="riemann_left", progress=False)
    facts = [(a["prompts"], a["target"], a["relation"]) for a in attributions]
    dai = find_knowledge_neurons_many(tiny_bert, facts, variant="dai", **kwargs)
    full = {}
    for a, result in zip(attributions, dai, strict=True):
        key = (a["relation"], a["uuid"])
        assert records[("dai", *key)]["neurons"] == [str(n) for n in result.neurons]
        full[key] = find_knowledge_neurons(tiny_bert, a["prompts"], a["target"], **kwargs)
        assert records[("adaptive", *key)]["neurons"] == [str(n) for n in full[key].neurons]
    # fact-specific: the adaptive neurons minus those coarse (full scores) on > 25% of the recorded negatives
    lines = {(s["relation"], f["uuid"]): f for s in sweeps.read_selections(reference) if s["rule"] == "fact-specific"
             for f in s["facts"]}  # fmt: skip
    for key, chosen in lines.items():
        negatives = [full[(key[0], uuid)].coarse[i] for uuid, i in chosen["negatives"]]
        assert len(negatives) == 4
        kept, dropped = drop_shared(full[key].neurons, negatives, 0.25)
        assert chosen["neurons"] == [str(n) for n in kept]
        assert chosen["dropped"]["negatives"] == [str(n) for n in dropped]
    assert any(f["dropped"]["negatives"] for f in lines.values())  # the filter does something here
    # contrastive: the adaptive rule on integrated gradients of mean_logit_diff against the relation's other answers
    for c in sweeps.read_attributions(reference, contrastive=True)[:6]:
        metric = mean_logit_diff(tiny_bert, c["target"], c["others"])
        kns = find_knowledge_neurons(tiny_bert, c["prompts"], c["target"], objective=metric, **kwargs)
        assert records[("contrastive", c["relation"], c["uuid"])]["neurons"] == [str(n) for n in kns.neurons]


def test_mean_logit_diff_against_a_hand_computation(tiny_bert, random_gpt2):
    from kn_lens.prompts import make_prompt, token_ids

    cases = ((tiny_bert, "The capital of France is [MASK].", "Paris", ["Rome", "Lima"]),
             (random_gpt2, "The capital of France is", " Paris", [" Rome", " Berlin"]))  # fmt: skip
    for model, text, answer, wrong in cases:
        prompt = make_prompt(model, text, answer)
        metric = mean_logit_diff(model, answer, [*wrong, wrong[0]])  # a repeated answer counts once
        with torch.no_grad():
            logits = model(prompt.tokens[None])
        row = logits[0, prompt.positions[0]].double()
        ids = [token_ids(model, t)[0] for t in (answer, *wrong)]
        expected = float(row[ids[0]] - (row[ids[1]] + row[ids[2]]) / 2)
        assert float(metric(logits, [prompt])[0]) == pytest.approx(expected, rel=1e-5, abs=1e-5)
        batch = torch.cat([logits, 2 * logits])
        assert metric(batch, [prompt, prompt]).tolist() == pytest.approx([expected, 2 * expected], rel=1e-5)
    with pytest.raises(ValueError, match="also among the wrong"):
        mean_logit_diff(tiny_bert, "Paris", ["Rome", "Paris"])
    with pytest.raises(ValueError, match="non-empty list"):
        mean_logit_diff(tiny_bert, "Paris", [])
    with pytest.raises(ValueError, match="non-empty list"):
        mean_logit_diff(tiny_bert, "Paris", "Rome")


# --------------------------------------------------------------------------------------------------------------
# Resume: nothing lost, nothing duplicated, nothing recomputed
# --------------------------------------------------------------------------------------------------------------


def test_resume_recomputes_nothing(reference, data, counted):
    before = {name: (reference / name).read_text() for name in FILES}
    assert main(_args(data, reference)) == 0
    assert {name: (reference / name).read_text() for name in FILES} == before
    assert sum(counted.values()) == 0, counted


def test_rules_added_later_attribute_nothing_again(reference, data, tmp_path, counted):
    out = tmp_path / "run"
    assert main(_args(data, out, run=[*RUN[:-1], "dai"])) == 0
    first = dict(counted)
    assert first["attribute_fact"] == 15 and first["fact_effects"] == 15
    counted.clear()
    assert main(_args(data, out)) == 0  # now with all four rules
    assert counted["attribute_fact"] == 15  # the contrastive attribution only
    assert counted["fact_effects"] == 45 and counted["select_relation"] == 9
    for name in FILES:
        assert _lines(out / name) == _lines(reference / name), name
    assert list(sweeps.read_manifest(out)["rules"]) == RULES.split(",")


def test_killed_mid_run_then_resumed(data, reference, tmp_path, counted):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "kn_lens", *_args(data, out)]
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shard = out / "shards" / "part-0.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if shard.exists() and shard.read_text().count("\n") >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (out / "records.jsonl").exists()  # killed before the end
    partial = len(sweeps.read_records(out))
    assert 6 <= partial < 60
    with open(shard, "a") as f:  # a record cut mid-write, as a kill can leave it
        f.write('{"rule": "dai", "relation": "P36", "uuid": "half')
    assert main(_args(data, out)) == 0
    assert counted["attribute_fact"] == 0 and counted["known_facts"] == 0
    assert counted["fact_effects"] == 60 - partial  # exactly the evaluations not on disk
    for name in FILES:
        assert _lines(out / name) == _lines(reference / name), name
    assert not (out / "shards").exists()


#: the unit of work that writes the last line of each file, recomputed once when that line is lost
UNITS = {"known.jsonl": "known_facts", "attribution.jsonl": "attribute_fact", "contrastive.jsonl": "attribute_fact",
         "selections.jsonl": "select_relation", "records.jsonl": "fact_effects", "relations.jsonl": "edit_effects",
         "convergence.jsonl": "convergence"}  # fmt: skip


@pytest.mark.parametrize("name", list(UNITS))
def test_power_cut_before_the_last_newline_keeps_the_record(reference, data, tmp_path, counted, name):
    """Cut by a power cut: the file's last record never written, the one before it written whole but without its
    newline. The resume keeps that record (also when it appends after it) and recomputes exactly the lost one."""
    out = shutil.copytree(reference, tmp_path / "run")
    convergence = dict(settings=[("riemann_left", 2)], reference=dict(method="gausslegendre", n_steps=4),
                       progress=False)  # fmt: skip
    if name == "convergence.jsonl":
        sweeps.run_convergence(sweeps_model(), pararel.load(data), out, facts_per_relation=2, **convergence)
        counted.clear()
    expected = _lines(out / name)
    lines = (out / name).read_text().splitlines()
    (out / name).write_text("\n".join(lines[:-1]))  # the last record lost, the one before it without "\n"
    assert _lines(out / name) == expected[:-1]  # read: the record without its newline is there
    if name == "convergence.jsonl":
        sweeps.run_convergence(sweeps_model(), pararel.load(data), out, facts_per_relation=2, **convergence)
    else:
        assert main(_args(data, out)) == 0
    assert counted[UNITS[name]] == 1 and sum(counted.values()) == 1, counted
    if name == "known.jsonl":  # measured alone now, not in a batch of 12: compare what it decides
        assert [(r["uuid"], r["known"]) for r in _lines(out / name)] == [(r["uuid"], r["known"]) for r in expected]
    else:
        assert _lines(out / name) == expected
    assert (out / name).read_bytes().endswith(b"\n")


@pytest.mark.parametrize("phase", ["attribution", "shards"])
def test_power_cut_in_a_shard_keeps_the_record(reference, data, tmp_path, counted, phase):
    """A run cut during a phase: the shard's last complete record lacks its newline; the resume keeps it and
    computes exactly the one record that was never written."""
    out = shutil.copytree(reference, tmp_path / "run")
    merged = out / ("attribution.jsonl" if phase == "attribution" else "records.jsonl")
    lines = merged.read_text().splitlines(keepends=True)
    merged.write_text("".join(lines[:-3]))
    (out / phase).mkdir()
    (out / phase / "part-0.jsonl").write_text("".join(lines[-3:-1]).rstrip("\n"))
    assert main(_args(data, out)) == 0
    unit = "attribute_fact" if phase == "attribution" else "fact_effects"
    assert counted[unit] == 1 and sum(counted.values()) == 1, counted
    for name in FILES:
        assert _lines(out / name) == _lines(reference / name), name


def test_a_file_of_one_complete_line_is_not_emptied(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text('{"relation": "P36", "uuid": "a"}')
    assert sweeps.read_jsonl(path) == [{"relation": "P36", "uuid": "a"}]
    sweeps.append_jsonl(path, {"relation": "P36", "uuid": "b"})
    assert [r["uuid"] for r in sweeps.read_jsonl(path)] == ["a", "b"]
    half = tmp_path / "half.jsonl"
    half.write_text('{"a": 1}\n{"a": ')
    assert sweeps.read_jsonl(half) == [{"a": 1}]
    sweeps.append_jsonl(half, {"a": 3})
    assert sweeps.read_jsonl(half) == [{"a": 1}, {"a": 3}]
    multibyte = tmp_path / "utf8.jsonl"  # a kill in the middle of a multi-byte character
    multibyte.write_bytes('{"a": 1}\n{"a": "é'.encode()[:-1])
    assert sweeps.read_jsonl(multibyte) == [{"a": 1}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(sweeps.SweepError, match=r"bad.jsonl, line 2"):
        sweeps.read_jsonl(bad)


def test_torchrun_two_processes_equal_one(data, reference, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "kn_lens", *_args(data, out)]  # fmt: skip
    done = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "processes=2" in done.stdout
    for name in FILES:
        assert _lines(out / name) == _lines(reference / name), name
    assert sweeps.read_manifest(out)["world_size"] == 2


# --------------------------------------------------------------------------------------------------------------
# Keys, odd data, settings compared on resume, refusals before the first byte
# --------------------------------------------------------------------------------------------------------------


def _odd_pararel(folder: Path) -> Path:
    """Two relations of 3 facts; one uuid shared by a fact of each; every line of P36's facts file twice; an answer
    the tokenizer does not know."""
    write_tiny_pararel(folder, relations={"capital": "P36", "language": "P37"}, facts_per_relation=3)
    p36 = (folder / "facts" / "P36.jsonl").read_text().splitlines()
    p37 = [json.loads(line) for line in (folder / "facts" / "P37.jsonl").read_text().splitlines()]
    p37[0]["uuid"] = json.loads(p36[0])["uuid"]
    p37.append(dict(sub_label="Atlantis", obj_label="Zqxjvwq", uuid="P37-Atlantis"))
    (folder / "facts" / "P36.jsonl").write_text("\n".join(p36 + p36) + "\n")
    (folder / "facts" / "P37.jsonl").write_text("".join(json.dumps(r) + "\n" for r in p37))
    return folder


def test_keys_are_relation_and_uuid_and_odd_data_is_counted(tiny_bert, tmp_path):
    data = pararel.load(_odd_pararel(tmp_path / "data"))
    out = sweeps.run_pararel(tiny_bert, data, tmp_path / "run", model_name="tiny", n_steps=2, rules="adaptive",
                             n_edits=0, erase_top=0, progress=False)  # fmt: skip
    manifest = sweeps.read_manifest(out)
    assert manifest["data"]["duplicates"] == 3 and manifest["data"]["out_of_vocabulary"] == ["P37/P37-Atlantis"]
    known = sweeps.read_known(out)
    assert len(known) == 6 and len((out / "known.jsonl").read_text().splitlines()) == 6  # each fact once
    records = sweeps.read_records(out)
    shared = json.loads((tmp_path / "data" / "facts" / "P36.jsonl").read_text().splitlines()[0])["uuid"]
    assert sorted(r["relation"] for r in records if r["uuid"] == shared) == ["P36", "P37"]
    assert len(records) == 6 and list(sweeps.coverage(out)["scanned"]) == [3, 3]


def test_resume_compares_every_setting(tiny_bert, random_bert, tmp_path):
    data = pararel.load(write_tiny_pararel(tmp_path / "data", relations={"capital": "P36"}, facts_per_relation=3))
    common = dict(model_name="tiny", n_steps=2, rules="adaptive", n_edits=0, erase_top=0, progress=False)
    out = sweeps.run_pararel(tiny_bert, data, tmp_path / "run", **common)
    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}
    for model, kwargs, what in ((tiny_bert, dict(method="riemann_middle"), "attribution"),
                                (tiny_bert, dict(layers=[1]), "layers"),
                                (tiny_bert, dict(n_negatives=2), "selection"),
                                (random_bert, {}, "model_config")):  # fmt: skip
        with pytest.raises(sweeps.SweepError, match=f"holds another run.*{what}"):
            sweeps.run_pararel(model, data, out, **{**common, **kwargs})
    with torch.no_grad():  # same sizes, other weights: the fingerprint tells
        tiny_bert.blocks[0].mlp.W_out[0, 0] += 1.0
        try:
            with pytest.raises(sweeps.SweepError, match="weights"):
                sweeps.run_pararel(tiny_bert, data, out, **common)
        finally:
            tiny_bert.blocks[0].mlp.W_out[0, 0] -= 1.0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot  # nothing written by a refused run


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(n_heldout=-1), ValueError, "n_heldout"),
        (dict(known_threshold=0), ValueError, "known_threshold"),
        (dict(threshold=0.3), TypeError, "unexpected keyword"),
        (dict(rules="dai,best"), ValueError, "unknown rule"),
        (dict(negative_share=1.0), ValueError, "negative_share"),
        (dict(method="simpsons"), ValueError, "method must be"),
        (dict(objective=lambda logits, prompts: logits[:, -1, 0]), ValueError, "objective"),
        (dict(relations="P999"), ValueError, "P999"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(facts_per_relation=0), ValueError, "facts_per_relation"),
    ],
)
def test_refused_runs_write_nothing(tiny_bert, data, tmp_path, kwargs, error, match):
    out = tmp_path / "run"
    with pytest.raises(error, match=match):
        sweeps.run_pararel(tiny_bert, pararel.load(data), out, model_name="tiny", **kwargs)
    assert not out.exists()


def test_bad_inputs(data, reference, tmp_path, capsys):
    with pytest.raises(TypeError, match=r"pararel\.load"):
        sweeps.run_pararel(sweeps_model(), str(data), tmp_path / "x", model_name="tiny")
    assert not (tmp_path / "x").exists()
    # another run's folder is refused, naming the setting
    assert main(_args(data, reference, "--seed", "7")) == 2
    err = capsys.readouterr().err
    assert "holds another run" in err and "seed: 0 there, 7 now" in err
    # unknown relation ids list the valid ones
    assert main(_args(data, tmp_path / "a", run=["--relations", "P36,P999"])) == 2
    assert "P999" in capsys.readouterr().err
    assert main(_args(data, tmp_path / "a", run=["--rules", "dai,best"])) == 2
    assert "unknown rule" in capsys.readouterr().err and not (tmp_path / "a").exists()
    # a missing data folder, a folder of other files without a manifest, --out a file, a report of a non-run
    assert main(_args(tmp_path / "nowhere", tmp_path / "b")) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "records.jsonl").write_text("{}\n")
    assert main(_args(data, tmp_path / "c")) == 2
    assert "no manifest.json" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(_args(data, tmp_path / "file")) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "b")]) == 2
    with pytest.raises(SystemExit):
        main(_args(data, tmp_path / "d", "--facts-per-relation", "0"))


@pytest.mark.parametrize("manifest", ['{"name": "another tool", "version": 3}', "[1, 2]", "{not json"])
def test_report_refuses_another_tools_folder(tmp_path, capsys, manifest):
    (tmp_path / "manifest.json").write_text(manifest)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "manifest" in err and "Traceback" not in err
    assert not (tmp_path / "report.html").exists()


def test_convergence_uses_the_runs_keywords_and_checks_the_data(tiny_bert, tmp_path, monkeypatch):
    folder = write_tiny_pararel(tmp_path / "data", relations={"capital": "P36"}, facts_per_relation=3)
    out = sweeps.run_pararel(tiny_bert, pararel.load(folder), tmp_path / "run", model_name="tiny", n_steps=2,
                             rules="adaptive", n_edits=0, erase_top=0, layers=[1], progress=False)  # fmt: skip
    seen = []
    real = sweeps.convergence  # what run_convergence calls

    def spy(model, facts, **kwargs):
        seen.append(kwargs)
        return real(model, facts, **kwargs)

    monkeypatch.setattr(sweeps, "convergence", spy)
    other = write_tiny_pararel(tmp_path / "other", relations={"capital": "P36"}, facts_per_relation=3)
    facts = (other / "facts" / "P36.jsonl").read_text().replace('"uuid": "P36-', '"uuid": "Q-')
    (other / "facts" / "P36.jsonl").write_text(facts)
    with pytest.raises(sweeps.SweepError, match="ids differ"):
        sweeps.run_convergence(tiny_bert, pararel.load(other), out, progress=False)
    assert not seen and not (out / "convergence.jsonl").exists()
    sweeps.run_convergence(tiny_bert, pararel.load(folder), out, facts_per_relation=1, settings=[("riemann_left", 2)],
                           reference=dict(method="gausslegendre", n_steps=4), progress=False)  # fmt: skip
    assert seen and seen[0]["layers"] == [1] and seen[0]["objective"] == "prob"
    rows = sweeps.read_convergence(out)
    stored = sweeps.read_attributions(out)[0]
    assert rows[0]["fact"] == stored["uuid"] and rows[0]["prompts"] == len(stored["prompts"])


# --------------------------------------------------------------------------------------------------------------
# A causal model: the cut templates, the contrastive objective's callable path
# --------------------------------------------------------------------------------------------------------------


CAUSAL_TEMPLATES = {
    "P36": ["The capital of [X] is [Y].", "[X] has its capital in [Y].", "The government of [X] sits in [Y].",
            "The capital city of [X] is [Y]."],
    "P37": ["The official language of [X] is [Y].", "People in [X] speak [Y].", "In [X], most people speak [Y].",
            "The main language of [X] is [Y]."],
}  # fmt: skip


def test_causal_model_sweep(random_gpt2, tmp_path, counted):
    folder = write_tiny_pararel(tmp_path / "data", relations={"capital": "P36", "language": "P37"},
                                facts_per_relation=4)  # fmt: skip
    for rid, templates in CAUSAL_TEMPLATES.items():  # every template continues after [Y]'s prefix: 4 cut prompts
        (folder / "patterns" / f"{rid}.jsonl").write_text("".join(json.dumps({"pattern": t}) + "\n" for t in templates))
    data = pararel.load(folder)
    run = dict(model_name="random-gpt2", n_steps=2, rules="dai,adaptive,eleuther,fact-specific,contrastive",
               known_threshold=1e-9, layers=[1, 2], erase_top=2, n_edits=1, progress=False)  # fmt: skip
    out = sweeps.run_pararel(random_gpt2, data, tmp_path / "run", **run)
    facts = len(sweeps.read_attributions(out))
    assert facts >= 4 and counted["attribute_fact"] == 2 * facts
    records = sweeps.read_records(out)
    assert Counter(r["rule"] for r in records) == dict.fromkeys(run["rules"].split(","), facts)
    assert all(int(n[1:].split("N")[0]) in (1, 2) for r in records for n in r["neurons"])
    c = sweeps.read_attributions(out, contrastive=True)[0]
    metric = mean_logit_diff(random_gpt2, c["target"], c["others"])
    kns = find_knowledge_neurons(random_gpt2, c["prompts"], c["target"], objective=metric, n_steps=2, layers=[1, 2],
                                 progress=False)  # fmt: skip
    record = next(r for r in records if r["rule"] == "contrastive" and r["uuid"] == c["uuid"])
    assert record["neurons"] == [str(n) for n in kns.neurons]
    counted.clear()
    assert sweeps.run_pararel(random_gpt2, data, out, **run) == out
    assert sum(counted.values()) == 0


# --------------------------------------------------------------------------------------------------------------
# evaluate_fact: one fact, any rule, arguments checked before the first forward pass
# --------------------------------------------------------------------------------------------------------------


def test_evaluate_fact_checks_arguments_before_any_forward_pass(tiny_bert, data):
    from kn_lens.evaluation import evaluate_fact

    bags = pararel.load(data).bags(tiny_bert)
    fact, same = bags[0], bags[1:4]
    cases = [
        (dict(fact=(list(fact.prompts), fact.target)), TypeError, "fact must be a fact"),
        (dict(fact="The capital of France is [MASK]."), TypeError, "fact must be a fact"),
        (dict(n_negatives=-1), ValueError, "n_negatives"),
        (dict(n_heldout=-1), ValueError, "n_heldout"),
        (dict(n_heldout=True), ValueError, "n_heldout"),
        (dict(n_steps=0), ValueError, "n_steps"),
        (dict(negative_share=2.0), ValueError, "negative_share"),
        (dict(selection="best"), ValueError, "selection"),
        (dict(same_relation="P36"), TypeError, "same_relation"),
        (dict(other_relations=[(["x [MASK]."], "Paris")]), TypeError, "other_relations"),
        (dict(variant="dai"), TypeError, "selection="),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(selection="contrastive", same_relation=[fact]), ValueError, "other answers"),
    ]
    calls = []
    handle = tiny_bert.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        for kwargs, error, match in cases:
            kwargs = {"fact": fact, "same_relation": same, **kwargs}
            with pytest.raises(error, match=match):
                evaluate_fact(tiny_bert, kwargs.pop("fact"), **kwargs)
        assert not calls  # refused before the model ran
        record = evaluate_fact(tiny_bert, fact, same_relation=same, attribution="grad_x_act")  # takes no n_steps
    finally:
        handle.remove()
    assert calls and record["n_steps"] is None and record["neurons"] and record["rule"] == "adaptive"


def test_clean_cache_measures_each_group_once(tiny_bert, data, monkeypatch):
    import kn_lens.evaluation as evaluate
    import kn_lens.evaluation.effects as effects  # where the effect tables look measure up

    bags = pararel.load(data).bags(tiny_bert)
    fact, same, other = bags[0], bags[1:3], bags[12:14]
    calls = []
    real = effects.measure

    def counting(model, prompts, *, fwd_hooks=(), batch_size=32):
        calls.append(bool(fwd_hooks))
        return real(model, prompts, fwd_hooks=fwd_hooks, batch_size=batch_size)

    monkeypatch.setattr(effects, "measure", counting)
    args = (tiny_bert, fact.prompts[:3], fact.target)
    kwargs = dict(heldout=fact.prompts[3:], same_relation=same, other_relations=other, seed=1)
    alone = [evaluate.fact_effects(*args, neurons, **kwargs) for neurons in (["L1N253"], ["L0N7", "L1N3"])]
    assert calls.count(False) == 2 * 4  # clean: own, held-out, same relation, other relations, for each call
    calls.clear()
    cache: dict = {}
    shared = [evaluate.fact_effects(*args, neurons, clean_cache=cache, **kwargs) for neurons in (["L1N253"],
              ["L0N7", "L1N3"])]  # fmt: skip
    assert calls.count(False) == 4 and calls.count(True) == 2 * 2 * 6  # clean once; hooked as before
    assert shared == alone  # the same numbers
    with pytest.raises(TypeError, match="clean_cache"):
        evaluate.fact_effects(*args, ["L1N253"], clean_cache=[], **kwargs)


def test_evaluate_fact_rules(tiny_bert, data):
    from kn_lens.evaluation import evaluate_fact

    bags = pararel.load(data).bags(tiny_bert)
    fact, same = bags[0], bags[1:5]
    dai = evaluate_fact(tiny_bert, fact, same_relation=same, selection="dai", n_steps=5)
    alone = find_knowledge_neurons(tiny_bert, list(fact.prompts[:3]), fact.target, variant="dai", n_steps=5)
    assert dai["rule"] == "dai" and dai["neurons"] == [str(n) for n in alone.neurons]
    contrastive = evaluate_fact(tiny_bert, fact, same_relation=same, selection="contrastive", n_steps=5)
    others = [b.target for b in same if b.target != fact.target]
    assert contrastive["others"] == list(dict.fromkeys(others))
    metric = mean_logit_diff(tiny_bert, fact.target, others)
    kns = find_knowledge_neurons(tiny_bert, list(fact.prompts[:3]), fact.target, objective=metric, n_steps=5)
    assert contrastive["neurons"] == [str(n) for n in kns.neurons]
    with pytest.raises(TypeError, match="objective"):
        evaluate_fact(tiny_bert, fact, same_relation=same, selection="contrastive", objective="logit")


# --------------------------------------------------------------------------------------------------------------
# Report and the other evaluation commands
# --------------------------------------------------------------------------------------------------------------


def test_report_is_one_self_contained_page(reference, capsys):
    assert main(["report", str(reference), "--json"]) == 0
    path = Path(json.loads(capsys.readouterr().out)["report"])
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<script src=" not in text.replace('<script src="data:', "")
    for heading in ("Coverage", "Suppress (x0) and enhance (x2)", "Layer of the selected", "Erasing a relation",
                    "Editing facts", "same relation", "random neurons", "specificity", "Selection rules",
                    "Rule dai", "Rule contrastive", "own/same"):  # fmt: skip
        assert heading in text


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
        ("no-keys", json.dumps({"model": "x"}), "lacks ['kind', 'schema', 'relations', 'data_path', 'rules']"),
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
    _one_line(capsys, ["report", str(run)], "records.jsonl, line 1: a record must be a JSON object")
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
