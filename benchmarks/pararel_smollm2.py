"""PARAREL on the embedded SmolLM2-135M under several selection rules: Dai et al.'s tables with every control.

Runs ``kn_lens.evaluation.sweeps.run_pararel`` (the same runner as ``kn-lens evaluate pararel``) on facts SmolLM2 knows
(each relation's facts shuffled by the seed, scanned until enough known ones), attributes every fact once (and once
more with the contrastive objective when that rule is asked for), selects with every rule from the stored
attributions, and writes its section of ``benchmarks/RESULTS.md``: per rule the own / held-out / same-relation /
other-relation / random-neuron effects of suppress (x0) and enhance (x2), specificity, the own / same-relation
ratio, neurons per fact and facts without neurons; coverage (scanned / known); per relation; erasing each
relation's most frequent neurons and editing facts, beside their controls; and the time and prompts/s of every
phase. It answers: is there a rule whose neurons move their own fact at least 3x more than the same relation's
other facts, at an own effect of -30% or stronger?

The run folder survives interruption: re-running the same command resumes it (``nohup ... &`` is the intended way
to run the full size); running it again with more ``--rules`` adds them from the stored attributions.

Run::

    python benchmarks/pararel_smollm2.py --relations P36 --facts-per-relation 2 --steps 2 --no-write   # smoke
    torchrun --standalone --nproc_per_node 2 benchmarks/pararel_smollm2.py \\
        --relations P30,P36,P176,P178,P279 --facts-per-relation 50 --steps 20 \\
        --rules dai,adaptive,fact-specific,contrastive
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pandas as pd
from _common import machine, markdown_table, set_threads, write_section

import kn_lens
from kn_lens.datasets import pararel
from kn_lens.evaluation import SELECTIONS, records_frame, relation_table, rule_summary, sweeps

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "pararel"
MODEL = "SmolLM2-135M-Instruct (embedded GGUF Q4_1)"


def _fmt(x: object) -> str:
    if isinstance(x, float):
        return "" if x != x else f"{x:.3g}"
    return str(x)


def _frame_md(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(none)"
    return markdown_table(list(frame.columns), [[_fmt(v) for v in row] for row in frame.itertuples(index=False)])


def rules_table(records: list[dict], table: pd.DataFrame, rules: list[str]) -> pd.DataFrame:
    """One row per rule: facts, neurons per fact, facts without neurons, then suppress and enhance side by side."""
    summary = rule_summary(table)
    rows = []
    for rule in rules:
        mine = [r for r in records if r["rule"] == rule]
        row: dict[str, object] = {"rule": rule, "facts": len(mine),
                                  "neurons/fact": sum(len(r["neurons"]) for r in mine) / max(len(mine), 1),
                                  "no neurons": sum(not r["neurons"] for r in mine)}  # fmt: skip
        for intervention, short in (("suppress", "x0"), ("enhance", "x2")):
            part = summary[(summary["rule"] == rule) & (summary["intervention"] == intervention)]
            for column in ("own", "held-out", "same relation", "other relations", "random", "specificity",
                           "own/same"):  # fmt: skip
                row[f"{short} {column}"] = float(part[column].iloc[0]) if len(part) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def per_relation(table: pd.DataFrame, intervention: str = "suppress") -> pd.DataFrame:
    """Per relation and rule: own, same-relation and random change (%), specificity."""
    part = table[(table["intervention"] == intervention) & (table["relation"] != "all")]
    rows = []
    for (rule, relation), group in part.groupby(["rule", "relation"], sort=False):
        values = group.set_index("condition")
        row = dict(rule=rule, relation=relation, facts=int(values["facts"].get("knowledge neurons", 0)))
        for condition, label in (("knowledge neurons", "own"), ("same relation", "same relation"),
                                 ("other facts", "other relations"), ("random neurons", "random")):  # fmt: skip
            row[label] = float(values["rel_change_%"].get(condition, float("nan")))
        row["specificity"] = float(values["specificity"].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


def erase_summary(relations: list[dict]) -> pd.DataFrame:
    rows = [dict(rule=r["rule"], **row) for r in relations if r["kind"] == "erase" for row in r["rows"]]
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    keys = ["rule", "mode", "neurons", "condition"]
    out = frame.groupby(keys, sort=False)[["acc_before", "acc_after", "ppl_change_%"]].mean().reset_index()
    out.insert(len(keys), "relations", frame.groupby(keys, sort=False).size().to_numpy())
    return out


def edit_summary(relations: list[dict]) -> pd.DataFrame:
    rows = [dict(rule=r["rule"], **row) for r in relations if r["kind"] == "edit" for row in r["rows"]]
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    cols = [c for c in ("success", "paraphrase_success", "neighbourhood_before", "neighbourhood_after", "ppl_after")
            if c in frame]  # fmt: skip
    out = frame.groupby(["rule", "neurons"], sort=False)[cols].mean().reset_index()
    out.insert(2, "edits", frame.groupby(["rule", "neurons"], sort=False).size().to_numpy())
    return out


def _suppress(record: dict, condition: str, key: str) -> float:
    for effect in record["effects"]:
        if effect["intervention"] == "suppress" and effect["condition"] == condition:
            value = effect.get(key)
            return math.nan if value is None else float(value)
    return math.nan


def robust_table(records: list[dict], rules: list[str]) -> pd.DataFrame:
    """Suppress x0 per rule with statistics a few facts cannot swing: per-fact medians of the % change, means of the
    log-odds change, and how many facts move the other way (a mean of % changes is bounded at -100 but not above,
    so a few facts whose probability rises several-fold can cancel many that fall)."""
    own, held, same = "knowledge neurons", "knowledge neurons (held-out)", "same relation"
    rows = []
    for rule in rules:
        mine = pd.DataFrame(
            [{f"{k} {name}": _suppress(r, cond, key) for name, cond in (("own", own), ("held", held), ("same", same))
              for k, key in (("pct", "rel_change_%"), ("lo", "logodds_change"))}
             for r in records if r["rule"] == rule and r["neurons"]]
        )  # fmt: skip
        if mine.empty:
            continue
        med = mine.median()
        lo = mine.mean()
        rows.append({"rule": rule, "facts": len(mine), "median own %": med["pct own"],
                     "median held-out %": med["pct held"], "median same relation %": med["pct same"],
                     "own/same (medians)": med["pct own"] / med["pct same"], "log-odds own": lo["lo own"],
                     "log-odds held-out": lo["lo held"], "log-odds same relation": lo["lo same"],
                     "own/same (log-odds)": lo["lo own"] / lo["lo same"],
                     "same relation rises %": 100 * float((mine["pct same"] > 0).mean()),
                     "held-out rises %": 100 * float((mine["pct held"] > 0).mean())})  # fmt: skip
    return pd.DataFrame(rows)


def answer(summary: pd.DataFrame, robust: pd.DataFrame) -> str:
    """The issue's question, answered from the table, and only where the robust statistics agree with the means."""
    both = summary.merge(robust, on="rule", how="left")
    by_mean = (both["x0 own/same"] >= 3) & (both["x0 own"] <= -30)
    by_all = by_mean & (both["own/same (medians)"] >= 3) & (both["median own %"] <= -30)
    by_all &= both["own/same (log-odds)"] >= 3
    if both["x0 own/same"].isna().all():
        return "No rule has both an own and a same-relation effect to compare."

    def said(r: pd.Series) -> str:
        return (f"{r['rule']} (means: own {r['x0 own']:.0f}%, own/same {r['x0 own/same']:.2f}; medians: own "
                f"{r['median own %']:.0f}%, own/same {r['own/same (medians)']:.2f}; log-odds own/same "
                f"{r['own/same (log-odds)']:.2f})")  # fmt: skip

    if by_all.any():
        return ("**Yes**: " + ", ".join(said(r) for _, r in both[by_all].iterrows()) + " move their own fact at least "
                "3x more than the same relation's other facts, at an own effect of -30% or stronger, by means, "
                "medians and log-odds alike.")  # fmt: skip
    text = ("**No** rule moves its own fact at least 3x more than the same relation's other facts at an own effect of "
            "-30% or stronger by means, medians and log-odds alike.")  # fmt: skip
    if by_mean.any():
        text += (" By the means alone " + ", ".join(said(r) for _, r in both[by_mean].iterrows()) + " would pass; "
                 "the medians and log-odds say the means are carried by the facts that move the other way (table "
                 "below).")  # fmt: skip
    best = both.loc[both["own/same (medians)"].idxmax()]
    return text + f" The largest ratio of medians: {said(best)}."


def completeness(out: Path) -> pd.DataFrame:
    rows = []
    for name, contrastive in (("attribution", False), ("contrastive", True)):
        errors = [sum(r["completeness"]) / len(r["completeness"]) for r in sweeps.read_attributions(out,
                  contrastive=contrastive) if r.get("completeness")]  # fmt: skip
        if errors:
            s = pd.Series(errors) * 100
            rows.append({"attribution": name, "facts": len(s), "median %": s.median(), "p90 %": s.quantile(0.9),
                         "max %": s.max()})  # fmt: skip
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED), help="PARAREL folder")
    parser.add_argument("--relations", default="P30,P36,P176,P178,P279")
    parser.add_argument("--facts-per-relation", type=int, default=50)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rules", default="dai,adaptive,fact-specific,contrastive")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="run folder (default benchmarks/runs/pararel_smollm2-...)")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    rules = sweeps.check_rules(args.rules)
    rank, _ = sweeps.distributed()
    relations = [r.strip() for r in args.relations.split(",") if r.strip()]
    out = Path(args.out or Path(__file__).with_name("runs") / (
        f"pararel_smollm2-{'_'.join(relations)}-{args.facts_per_relation}-{args.steps}steps"))  # fmt: skip

    model = kn_lens.load_model()
    data = pararel.load(args.data, relations=relations)
    start = time.perf_counter()
    sweeps.run_pararel(model, data, out, model_name=MODEL, relations=relations,
                       facts_per_relation=args.facts_per_relation, seed=args.seed, n_steps=args.steps,
                       rules=rules)  # fmt: skip
    wall = time.perf_counter() - start
    if rank != 0:
        return
    manifest = sweeps.read_manifest(out)
    run_world = manifest["world_size"]
    all_rules = list(manifest["rules"])
    records = sweeps.read_records(out)
    table = relation_table(records_frame(records))
    summary = rules_table(records, table, all_rules)
    robust = robust_table(records, all_rules)
    coverage = sweeps.coverage(out)
    coverage.insert(3, "coverage %", 100 * coverage["known"] / coverage["scanned"].where(coverage["scanned"] > 0))
    times = sweeps.phase_times(out)
    times["wall_s (est.)"] = times["seconds"] / run_world
    relation_rows = sweeps.read_relations(out)
    full = pararel.load(args.data).bags(model)
    full_prompts = sum(len(b.prompts) - 1 for b in full)  # one held out per fact
    attribution = times[times["phase"] == "attribution"]
    rate = float(attribution["prompts_per_s"].iloc[0]) if len(attribution) else math.nan
    span = (out / sweeps.RECORDS).stat().st_mtime - (out / sweeps.MANIFEST).stat().st_mtime
    parts = [
        f"## PARAREL on SmolLM2-135M under {len(all_rules)} selection rules (`benchmarks/pararel_smollm2.py`)\n",
        f"{machine()}; {threads} torch thread(s) per process, {run_world} process(es) (torchrun); relations "
        f"{', '.join(relations)}, {args.facts_per_relation} known facts each (each relation's facts shuffled by seed "
        f"{args.seed}, scanned until {args.facts_per_relation} known), integrated gradients {args.steps} steps "
        f"(left Riemann, Dai et al.'s), one prompt per fact held out. Run folder `{out.name}` (resumable; "
        f"{span / 3600:.1f} h from its manifest to its last merged records; this invocation {wall:.0f} s). The "
        "machine was shared with other work during the run, so times are upper bounds. No relation filter: neurons "
        "shared by a relation stay, and the same-relation control shows them.\n",
        "### Rules\n",
        _frame_md(pd.DataFrame([{"rule": k, "what it selects": SELECTIONS[k]} for k in all_rules])),
        "\n### Per rule: suppress (x0) and enhance (x2), % change of the answer's probability (mean over facts "
        "with neurons), beside the controls\n",
        "own = the fact's attribution prompts; held-out = its held-out paraphrase; same relation / other relations "
        "= 4 other known facts of the same / other relations, with this fact's neurons; random = as many random "
        "neurons in the same layers. specificity = 1 - same / own; own/same = own / same (3 = the neurons move "
        "their own fact 3x more than the relation's other facts). Facts without neurons are counted (no neurons) and "
        "left out of the means, which rest on facts - no neurons.\n",
        _frame_md(summary),
        "\n" + answer(summary, robust) + "\n",
        "### Suppress (x0) with statistics a few facts cannot swing (facts with neurons)\n",
        "A mean of % changes is bounded at -100% but not above: a few facts whose answer becomes several times more "
        "likely cancel many that fall. Here: per-fact medians, the mean log-odds change, and the share of facts whose "
        "same-relation facts (or held-out paraphrase) rise when the neurons are suppressed.\n",
        _frame_md(robust) + "\n",
        "### Coverage (scanned = facts measured for knowledge; known = answer top-1 on >= half of the prompts; "
        "evaluated = the first known facts in the seed's order; no neurons per rule)\n",
        _frame_md(coverage),
        "\n### Suppress (x0) per relation and rule\n",
        _frame_md(per_relation(table)),
        "\n### Erasing each relation's most frequent neurons (per rule, beside as many random neurons; mean over "
        "relations)\n",
        _frame_md(erase_summary(relation_rows)),
        "\n### Editing facts (Dai et al.'s update on 2 facts per relation, beside the same update on random active "
        "neurons; mean over edits)\n",
        _frame_md(edit_summary(relation_rows)),
        "\n### Completeness of the integral, per fact (mean over its prompts of sum |delta| / sum |F(clean) - "
        "F(baseline)|; 0 = exact)\n",
        _frame_md(completeness(out)),
        "\n### Time per phase\n",
        "seconds = summed over the processes (wall about seconds / processes); prompts/s = attributed prompts per "
        "second of one process.\n",
        _frame_md(times),
        (
            f"\nAt {rate:.2f} prompts/s per process, the whole causal-cut PARAREL for this tokenizer ({len(full)} "
            f"single-token facts, {full_prompts} attribution prompts) would take about "
            f"{full_prompts / rate / run_world / 3600:.0f} h of attribution with {run_world} process(es) here."
            if rate == rate and rate > 0
            else ""
        ),
    ]
    text = "\n".join(parts)
    print(text)
    print(json.dumps({"out": str(out), "facts": len(sweeps.read_attributions(out)), "records": len(records)}))
    if not args.no_write:
        write_section("pararel_smollm2_rules", text)


if __name__ == "__main__":
    main()
