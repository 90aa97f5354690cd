"""Knowledge neurons on the embedded SmolLM2-135M: Dai et al.'s suppress / enhance table with its controls.

For each fact (capital cities and languages of countries, 4 paraphrases used for attribution and 4 held out),
this script finds the knowledge neurons with ``kn_lens.find_knowledge_neurons_many`` (integrated gradients,
kn_lens's per-fact rule `adaptive`), then scales them at the last prompt position with
``kn_lens.evaluation.intervention_effects``: x0 (suppress) and x2 (enhance), beside the same number of random
neurons in the same layers and the facts of the other relation. Two selections are reported, both with
kn_lens's per-fact rule: without the relation filter (each fact on its own, as in Dai et al.'s section 3), and
with it (neurons selected for > 10% of a relation's facts dropped). It writes its section of
``benchmarks/RESULTS.md`` (and, with ``--csv PATH``, the per-prompt rows).

Run: ``python benchmarks/kn_smollm2.py [--steps 20] [--threads 1] [--quick] [--csv PATH]`` (~20 min on one busy
CPU thread: ~9 min of attribution, the rest forward passes).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from _common import machine, markdown_table, set_threads, write_section

import kn_lens
from kn_lens.evaluation import intervention_effects, summarize_effects
from kn_lens.neurons import FactPrompts, find_knowledge_neurons_many, relation_filter

TEMPLATES: dict[str, dict[str, list[str]]] = {
    "capital": {
        "attribution": [
            "The capital of {} is",
            "The capital city of {} is",
            "The capital of {} is the city of",
            "The largest city and capital of {} is",
        ],
        "heldout": [
            "The capital of {} is called",
            "What is the capital of {}? The capital is",
            "The name of the capital of {} is",
            "{}'s capital is",
        ],
    },
    "language": {
        "attribution": [
            "The official language of {} is",
            "People in {} speak",
            "The main language of {} is",
            "The native language of {} is",
        ],
        "heldout": [
            "In {}, most people speak",
            "Most people in {} speak",
            "In {}, people speak",
            "The language spoken in {} is",
        ],
    },
}

FACTS: list[tuple[str, str, str]] = [
    ("capital", "France", " Paris"),
    ("capital", "Italy", " Rome"),
    ("capital", "Japan", " Tokyo"),
    ("capital", "Germany", " Berlin"),
    ("capital", "Russia", " Moscow"),
    ("capital", "Greece", " Athens"),
    ("language", "France", " French"),
    ("language", "Spain", " Spanish"),
    ("language", "Russia", " Russian"),
    ("language", "Italy", " Italian"),
]


def prompts_of(relation: str, subject: str, split: str) -> list[str]:
    return [t.format(subject) for t in TEMPLATES[relation][split]]


def effects_for(model, results, facts, cache: dict) -> pd.DataFrame:
    """Suppress / enhance each fact's neurons on its prompts, held-out paraphrases, a random control and the
    other relation's facts (their attribution prompts). ``cache`` reuses the rows of unchanged neuron sets."""
    frames = []
    for (relation, subject, answer), kns in zip(facts, results, strict=True):
        key = (relation, subject, tuple(kns.neurons))
        if key in cache:
            frames.append(cache[key])
            continue
        others = [(prompts_of(r, s, "attribution"), a) for r, s, a in facts if r != relation]
        df = intervention_effects(
            model,
            kns,
            heldout=prompts_of(relation, subject, "heldout"),
            unrelated=others,
            random_seeds=(0, 1, 2),
        )
        df.insert(0, "kn_fact", f"{relation}: {subject} ->{answer}")
        df.insert(1, "kns", " ".join(str(n) for n in kns.neurons))
        cache[key] = df
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _pct(x: float) -> str:
    return f"{x:+.1f}%"


def summary_markdown(effects: pd.DataFrame) -> str:
    summary = summarize_effects(effects)
    rows = [
        [
            r.intervention,
            r.condition,
            int(r.n),
            f"{r.before:.3f}",
            f"{r.after:.3f}",
            _pct(r["rel_change_%"]),
            f"{r.logodds_change:+.2f}",
        ]
        for _, r in summary.iterrows()
    ]
    headers = ["intervention", "condition", "n prompts", "p before", "p after", "mean rel. change", "mean Δ log-odds"]
    return markdown_table(headers, rows)


def per_fact_markdown(effects: pd.DataFrame) -> str:
    rows = []
    for fact, part in effects.groupby("kn_fact", sort=False):

        def rel(intervention: str, condition: str, part: pd.DataFrame = part) -> str:
            sel = part[(part.intervention == intervention) & (part.condition == condition)]
            return _pct(100 * sel["rel_change"].mean()) if len(sel) else "n/a"

        rows.append(
            [
                fact,
                part["kns"].iloc[0] or "(none)",
                rel("suppress", "knowledge neurons"),
                rel("suppress", "knowledge neurons (held-out)"),
                rel("suppress", "random neurons"),
                rel("suppress", "other facts"),
                rel("enhance", "knowledge neurons"),
                rel("enhance", "knowledge neurons (held-out)"),
            ]
        )
    headers = [
        "fact",
        "knowledge neurons",
        "x0 attribution prompts",
        "x0 held-out",
        "x0 random (3 seeds)",
        "x0 other relation",
        "x2 attribution prompts",
        "x2 held-out",
    ]
    return markdown_table(headers, rows)


def enhance_split_markdown(effects: pd.DataFrame) -> str:
    part = effects[effects.intervention == "enhance"]
    split = summarize_effects(part, base_split=(0.5, 0.9)).sort_values(["condition", "base"], kind="stable")
    rows = [
        [
            r.condition,
            r.base,
            int(r.n),
            f"{r.before:.3f}",
            f"{r.after:.3f}",
            _pct(r["rel_change_%"]),
            f"{r.logodds_change:+.2f}",
        ]
        for _, r in split.iterrows()
    ]
    headers = ["condition", "base p", "n prompts", "p before", "p after", "mean rel. change", "mean Δ log-odds"]
    return markdown_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="integrated-gradients steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="3 facts only, no RESULTS.md (a smoke test)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the per-prompt rows to this CSV file")
    args = parser.parse_args()
    set_threads(args.threads)
    facts = FACTS[:2] + FACTS[-1:] if args.quick else FACTS
    start = time.perf_counter()
    model = kn_lens.load_model()
    items = [FactPrompts(prompts_of(r, s, "attribution"), a, relation=r, name=f"{r}: {s}") for r, s, a in facts]
    per_fact = find_knowledge_neurons_many(model, items, n_steps=args.steps, relation_share=None, progress=True)
    found_s = time.perf_counter() - start
    filtered = relation_filter(per_fact, 0.1)
    cache: dict = {}
    effects = effects_for(model, per_fact, facts, cache)
    effects_filtered = effects_for(model, filtered, facts, cache)
    total_s = time.perf_counter() - start
    if args.csv:
        both = [effects.assign(selection="per fact"), effects_filtered.assign(selection="relation filter")]
        pd.concat(both, ignore_index=True).to_csv(args.csv, index=False)

    n_capital = sum(r == "capital" for r, _, _ in facts)
    n_kn = [len(r.neurons) for r in per_fact]
    mean_filtered = sum(len(r.neurons) for r in filtered) / len(filtered)
    text = f"""
## Knowledge neurons on SmolLM2-135M (`benchmarks/kn_smollm2.py`)

{len(facts)} facts ({n_capital} capital cities, {len(facts) - n_capital} languages), each with 4 paraphrases for
attribution and 4 held-out paraphrases. Knowledge neurons: integrated gradients of the answer's probability
({args.steps} steps, all 30 layers, `mlp_post` at the last prompt position), kn_lens's per-fact rule `adaptive` (coarse
0.2 x max, refined > 0.7 of the prompts, adaptive 2-5). Interventions scale the neurons at the last prompt
position; "random neurons" are the same number of neurons in the same layers (3 seeds); "other facts" are the
facts of the other relation (their attribution prompts) under the same intervention. Relative change = mean
over prompts of (after - before) / before (Dai et al.'s measure); Δ log-odds does not saturate. Measured on
{machine()}; attribution {found_s:.0f} s, everything {total_s:.0f} s.

### Per fact (kn_lens's per-fact rule `adaptive`, no relation filter): {sum(n_kn) / len(n_kn):.1f} neurons per fact

{per_fact_markdown(effects)}

{summary_markdown(effects)}

Enhance (x2) split by the base probability of the correct answer:

{enhance_split_markdown(effects)}

### With the relation filter: {mean_filtered:.1f} neurons per fact

Neurons selected for > 10% of a relation's facts (and for at least 2 of them) are dropped from that relation.

{per_fact_markdown(effects_filtered)}

{summary_markdown(effects_filtered)}

Per-prompt rows: `python benchmarks/kn_smollm2.py --csv rows.csv`.
"""
    print(text)
    if not args.quick:
        write_section("kn_smollm2", text)


if __name__ == "__main__":
    main()
