"""PARAREL on the embedded SmolLM2-135M: Dai et al.'s tables with every control, through the resumable sweep.

Runs ``kn_lens.sweeps.run_pararel`` (the same runner as ``kn-lens evaluate pararel``) on the facts SmolLM2
knows, then writes its section of ``benchmarks/RESULTS.md``: coverage, suppress / enhance per relation beside
the same-relation, other-relation, random-neuron and held-out controls (both metric definitions, accuracy,
specificity), relation erasure and fact edits with their controls, and measured throughput (attributed prompts
per second, with an estimate for the whole causal-cut PARAREL on this machine).

The run folder survives interruption: re-running the same command resumes it (``nohup ... &`` is the intended
way to run the full size, about an hour of attribution on 2 CPU cores).

Run::

    python benchmarks/pararel_smollm2.py --relations P36,P37 --facts-per-relation 5          # smoke size
    python benchmarks/pararel_smollm2.py --relations P36,P37,P103,P1412,P364 --facts-per-relation 50
    torchrun --standalone --nproc_per_node 2 benchmarks/pararel_smollm2.py ...                 # 2 processes
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
from _common import machine, markdown_table, set_threads, write_section

import kn_lens
from kn_lens import sweeps
from kn_lens.datasets import pararel
from kn_lens.evaluate import records_frame, relation_table

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "pararel"


def _fmt(x: object) -> str:
    if isinstance(x, float):
        return "" if x != x else f"{x:.3g}"
    return str(x)


def _frame_md(frame: pd.DataFrame) -> str:
    return markdown_table(list(frame.columns), [[_fmt(v) for v in row] for row in frame.itertuples(index=False)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED), help="PARAREL folder")
    parser.add_argument("--relations", default="P36,P37")
    parser.add_argument("--facts-per-relation", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--selection", default="dai", choices=("dai", "fact-specific"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="run folder (default benchmarks/runs/pararel_smollm2-...)")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    rank, world = sweeps.distributed()
    relations = [r.strip() for r in args.relations.split(",") if r.strip()]
    out = Path(args.out or Path(__file__).with_name("runs") / (
        f"pararel_smollm2-{'_'.join(relations)}-{args.facts_per_relation}-{args.selection}"))  # fmt: skip

    model = kn_lens.load_model()
    data = pararel.load(args.data, relations=relations)
    start = time.perf_counter()
    sweeps.run_pararel(model, data, out, model_name="SmolLM2-135M-Instruct (embedded GGUF Q4_1)",
                       relations=relations, facts_per_relation=args.facts_per_relation, seed=args.seed,
                       n_steps=args.steps, selection=args.selection)  # fmt: skip
    wall = time.perf_counter() - start
    if rank != 0:
        return
    records = sweeps.read_records(out)
    known = pd.DataFrame(sweeps.read_known(out))
    span = (out / sweeps.RECORDS).stat().st_mtime - (out / sweeps.MANIFEST).stat().st_mtime
    run_world = json.loads((out / sweeps.MANIFEST).read_text())["world_size"]
    prompts = sum(r["n_prompts"] for r in records)
    attribution_s = sum(r["seconds_attribution"] for r in records)
    fact_s = sum(r["seconds"] for r in records)
    rate = prompts / attribution_s if attribution_s else float("nan")  # one process
    machine_rate = rate * run_world  # the run's processes attributed side by side
    full = pararel.load(args.data).bags(model)
    full_prompts = sum(len(b.prompts) - 1 for b in full)  # one held out per fact
    errors = [sum(r["completeness"]) / len(r["completeness"]) for r in records if r.get("completeness")]
    coverage = known.groupby("relation", sort=False)["known"].agg(["size", "sum"]).reset_index()
    coverage.columns = ["relation", "scanned", "known"]
    coverage["coverage %"] = 100 * coverage["known"] / coverage["scanned"]
    evaluated = pd.Series([r["relation"] for r in records]).value_counts()
    empty = pd.Series([r["relation"] for r in records if not r["neurons"]], dtype=object).value_counts()
    coverage["evaluated"] = [int(evaluated.get(r, 0)) for r in coverage["relation"]]
    coverage["no neurons"] = [int(empty.get(r, 0)) for r in coverage["relation"]]

    table = relation_table(records_frame(records))
    keep = ["relation", "intervention", "condition", "facts", "before", "after", "rel_change_%", "rel_of_means_%",
            "acc_before", "acc_after", "ppl_before", "ppl_after", "specificity"]  # fmt: skip
    keep = [c for c in keep if c in table]
    erase_rows = pd.DataFrame([row for r in sweeps.read_relations(out) if r["kind"] == "erase" for row in r["rows"]])
    edits = pd.DataFrame([row for r in sweeps.read_relations(out) if r["kind"] == "edit" for row in r["rows"]])
    parts = [
        f"## PARAREL on SmolLM2-135M (`benchmarks/pararel_smollm2.py`, {args.selection} selection)\n",
        f"{machine()}; {threads} torch thread(s), {world} process(es); relations {', '.join(relations)}, up to "
        f"{args.facts_per_relation} known facts each, IG {args.steps} steps, seed {args.seed}. Run folder "
        f"`{out.name}` (resumable); {span / 60:.0f} min from its manifest to its merged records (this invocation "
        f"{wall:.0f} s).\n",
        "### Coverage (facts scanned in file order until enough known ones; known = answer top-1 on >= half of "
        "the prompts; no neurons = evaluated facts for which the rule "
        "found no neuron, left out of "
        "the effect tables)\n",
        _frame_md(coverage),
        "\n### Suppress (x0) / enhance (x2) with controls (means over facts)\n",
        _frame_md(table[keep]),
        "\n### Erasing each relation's most frequent neurons (beside as many random neurons)\n",
        _frame_md(erase_rows) if not erase_rows.empty else "(none)",
        "\n### Editing facts (Dai et al.'s update, beside the same update on random active neurons)\n",
        _frame_md(edits.drop(columns=["relation"])) if not edits.empty else "(none)",
        "\n### Completeness of the 20-step integral, per fact\n",
        (
            f"Mean over a fact's prompts of sum |delta| / sum |F(clean) - F(baseline)| (0 = exact): median "
            f"{100 * pd.Series(errors).median():.1f}%, mean {100 * pd.Series(errors).mean():.1f}%, max "
            f"{100 * max(errors):.1f}% over {len(errors)} facts (see the convergence section for what it does to the "
            "selected neurons)."
            if errors
            else "(not recorded)"
        ),
        "\n### Throughput\n",
        f"{len(records)} facts, {prompts} attributed prompts, {attribution_s:.0f} s of attribution summed over "
        f"{run_world} process(es) of 1 thread: {rate:.2f} prompts/s per process, {machine_rate:.2f} prompts/s for "
        f"the machine ({fact_s / max(len(records), 1):.1f} s per fact with all controls, per process). The machine "
        "was shared with other work during the run (tests and the convergence benchmark), so these are lower "
        f"bounds. The whole causal-cut PARAREL for this tokenizer ({len(full)} single-token facts, {full_prompts} "
        f"attribution prompts) would take about {full_prompts / machine_rate / 3600:.0f} h of attribution at this "
        "rate on this 2-core machine (before the known-fact filter, which removes most of it for a model this "
        "small).",
    ]
    text = "\n".join(parts)
    print(text)
    if not args.no_write:
        write_section(f"pararel_smollm2_{args.selection}", text)


if __name__ == "__main__":
    main()
