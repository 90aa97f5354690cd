"""How many integration points do knowledge neurons need? Quadrature rules against a fine reference, and the cost.

On the embedded SmolLM2-135M: the first ``--facts`` PARAREL capital facts (P36) the model knows, ``--prompts``
paraphrases each, all 30 layers. Every rule of ``kn_lens.evaluation.convergence.QUADRATURES`` re-selects each
fact's knowledge neurons (kn_lens's per-fact rule: coarse > 0.2 x max, refined by share) and is compared with the
128-point midpoint reference (``PRESETS["converged"]``): Jaccard of the neuron sets, largest score error,
completeness error.

Then the price: CPU seconds per prompt of kn_lens' fast path at 20 steps (Dai) and at the converged preset,
beside the plain 20-step loop the research code runs (``fast=False``, the same arithmetic as Dai et al.'s code),
in the same process with 1 thread (CPU time of one thread is the uncontended wall time, which keeps the ratio
honest on a busy machine).

Run::

    python benchmarks/bench_convergence.py                  # 4 facts x 4 paraphrases; writes its RESULTS.md section
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import machine, markdown_table, set_threads, write_section

import kn_lens
from kn_lens.attribution import integrated_gradients
from kn_lens.datasets import pararel
from kn_lens.evaluation import known_facts
from kn_lens.evaluation.convergence import PRESETS, QUADRATURES, convergence, convergence_summary
from kn_lens.neurons import FactPrompts, find_knowledge_neurons

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "pararel"


def _cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--plain-prompts", type=int, default=2, help="prompts timed on the slow plain loop")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    threads = set_threads(1)
    model = kn_lens.load_model()
    bags = pararel.load(SHARED, relations=["P36"]).bags(model)
    known, _ = known_facts(model, bags[:64])
    facts = [(list(b.prompts[: args.prompts]), b.target, b.relation, b.uuid) for b in known[: args.facts]]
    facts = [FactPrompts(p, t, r, name=u) for p, t, r, u in facts]

    start = time.process_time()
    frame = convergence(model, facts, settings=QUADRATURES, reference=PRESETS["converged"])
    cpu_all = time.process_time() - start
    summary = convergence_summary(frame)

    first = facts[0]
    n = len(first.prompts)
    ours_dai = _cpu(lambda: find_knowledge_neurons(model, first.prompts, first.target, **PRESETS["dai"])) / n
    ours_conv = _cpu(lambda: find_knowledge_neurons(model, first.prompts, first.target, **PRESETS["converged"])) / n
    plain = list(first.prompts[: args.plain_prompts])
    plain_dai = sum(
        _cpu(lambda p=p: integrated_gradients(model, p, first.target, fast=False, **PRESETS["dai"])) for p in plain
    ) / len(plain)

    cols = ["method", "n_steps", "facts", "jaccard_mean", "jaccard_min", "score_error_max", "completeness_mean",
            "completeness_max"]  # fmt: skip
    rows = [[r[c] if not isinstance(r[c], float) else f"{r[c]:.3g}" for c in cols] for _, r in summary.iterrows()]
    per_fact = frame.pivot_table(index="fact", columns=["method", "n_steps"], values="jaccard", sort=False)
    fact_rows = [[fact, *(f"{v:.2f}" for v in row)] for fact, row in per_fact.iterrows()]
    dai = frame[(frame["method"] == "riemann_left") & (frame["n_steps"] == 20)]
    parts = [
        "## Convergence of integrated gradients: which rule selects the converged neurons "
        "(`benchmarks/bench_convergence.py`)\n",
        f"SmolLM2-135M (embedded), the first {len(facts)} PARAREL P36 facts it knows, {args.prompts} paraphrases "
        f"each, all 30 layers, target probability, zero baseline, kn_lens's per-fact rule `adaptive` "
        f"(coarse > 0.2 x max, "
        f"refined by share). Reference: {PRESETS['converged']['n_steps']}-point {PRESETS['converged']['method']} "
        f"rule (`PRESETS['converged']`). {machine()}; {threads} thread; whole comparison {cpu_all / 60:.1f} CPU "
        "min. Completeness error: sum |delta| / sum |F(clean) - F(baseline)| over layers, per prompt.\n",
        markdown_table(cols, rows),
        "\nJaccard with the reference, per fact (columns: rule, steps):\n",
        markdown_table(["fact", *(f"{m} {s}" for m, s in per_fact.columns)], fact_rows),
        "\n### The price of converging (CPU seconds per prompt, 1 thread, same process)\n",
        markdown_table(
            ["", "rule", "CPU s / prompt", "vs plain 20-step loop"],
            [
                ["plain loop (the research code's)", "riemann_left 20", f"{plain_dai:.1f}", "1.00x"],
                [
                    "kn_lens fast path, Dai's quadrature",
                    "riemann_left 20",
                    f"{ours_dai:.1f}",
                    f"{ours_dai / plain_dai:.2f}x",
                ],
                [
                    "kn_lens fast path, converged preset",
                    f"{PRESETS['converged']['method']} {PRESETS['converged']['n_steps']}",
                    f"{ours_conv:.1f}",
                    f"{ours_conv / plain_dai:.2f}x",
                ],
            ],
        ),
        f"\nDai's quadrature (riemann_left 20) against the reference: mean Jaccard {dai['jaccard'].mean():.2f} (min "
        f"{dai['jaccard'].min():.2f}), score error up to {100 * dai['score_error'].max():.0f}% of the largest "
        f"score, completeness error {100 * dai['completeness'].mean():.1f}% on average. The converged preset costs "
        f"{ours_conv / plain_dai:.2f}x the plain 20-step loop per prompt "
        f"({ours_conv / ours_dai:.1f}x kn_lens' own 20-step path). Use it with "
        "`find_knowledge_neurons(model, prompts, target, **kn_lens.evaluation.convergence.PRESETS['converged'])` or "
        "`kn-lens evaluate pararel --preset converged`; `kn-lens evaluate convergence RUN` adds this comparison "
        "to a run's report.",
    ]
    text = "\n".join(parts)
    print(text)
    if not args.no_write:
        write_section("convergence", text)


if __name__ == "__main__":
    main()
