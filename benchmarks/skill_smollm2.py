"""Skill neurons on the embedded SmolLM2-135M: predictivity, perturbation against random neurons, pruning.

Wang et al.'s pipeline (EMNLP 2022) on a generated movie-review sentiment task (``kn_lens.skill.sentiment_task``,
with negations), twice: with a text prompt ("Review: ...\\nSentiment (positive or negative):", prompt positions
= the template tokens after the review) and with a soft prompt learned on the frozen model (4 virtual tokens
after the review, ``train_soft_prompt``). For each: test accuracy, the predictivity of the best neurons against
the bulk, and test accuracy after setting the top 1 / 2 / 5% of neurons to their per-position train mean at the
prompt positions, beside the same number of random neurons in the same layers (3 seeds). Then pruning guided by
the soft prompt's skill neurons: every layer keeps its top 90% / 75% / 50% of neurons (the rest folded into the output
bias at their train mean), against keeping random neurons; accuracy and the measured forward-pass speed-up.
It writes its section of ``benchmarks/RESULTS.md``.

Run: ``OMP_NUM_THREADS=1 python benchmarks/skill_smollm2.py [--n 240] [--threads 1] [--quick]`` (~10 min on
one CPU thread; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import machine, markdown_table, set_threads, write_section

import kn_lens
from kn_lens import skill

FRACTIONS = (0.01, 0.02, 0.05)
KEPT = (0.9, 0.75, 0.5)
SEEDS = (0, 1, 2)
TEMPLATE = "Review: {text}\nSentiment (positive or negative):"
VERBALIZER = (" negative", " positive")


def perturbation_rows(model, task, result, prompt, label: str, fractions, seeds) -> tuple[list, float]:
    curve = skill.perturbation_curve(model, task, result, prompt=prompt, fractions=fractions, seeds=seeds, kind="mean")
    clean = float(curve[curve.selection == "none"].accuracy.iloc[0])
    rows = []
    for fraction in fractions:
        part = curve[curve.fraction == fraction]
        top = float(part[part.selection == "skill"].accuracy.iloc[0])
        random = part[part.selection == "random"].accuracy.tolist()
        spread = statistics.stdev(random) if len(random) > 1 else 0.0
        rows.append(
            [
                label,
                f"{fraction:.0%}",
                int(part.n_neurons.iloc[0]),
                f"{clean:.3f}",
                f"{top:.3f}",
                f"{statistics.mean(random):.3f} ± {spread:.3f}",
            ]
        )
    return rows, clean


def predictivity_row(result, label: str) -> list:
    scores = result.scores.flatten()
    best = result.top(k=1)[0]
    top1 = scores.topk(max(1, round(0.01 * scores.numel()))).values
    return [
        label,
        len(result.positions),
        f"{best} ({float(result.scores[best]):.3f})",
        f"{float(top1.mean()):.3f}",
        f"{float(scores.median()):.3f}",
        f"{result.n_train} / {result.n_dev}",
    ]


def forward_time(model, tokens: torch.Tensor, hooks, repeats: int = 5) -> float:
    times = []
    with torch.inference_mode():
        model.run_with_hooks(tokens, fwd_hooks=hooks)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model.run_with_hooks(tokens, fwd_hooks=hooks)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=240, help="sentences (60% train, 20% dev, 20% test)")
    parser.add_argument("--steps", type=int, default=30, help="prompt-tuning steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script (not written)")
    args = parser.parse_args()
    set_threads(args.threads)
    n, steps = (60, 4) if args.quick else (args.n, args.steps)
    fractions, seeds, kept = (FRACTIONS[:1], SEEDS[:1], KEPT[:1]) if args.quick else (FRACTIONS, SEEDS, KEPT)
    start = time.perf_counter()
    model = kn_lens.load_model()
    task = skill.sentiment_task(n, dev=0.2, test=0.2, seed=0)
    print(task)

    hard = skill.HardPrompt(TEMPLATE, VERBALIZER)
    hard_skill = skill.predictivity(model, task, prompt=hard)
    hard_rows, _ = perturbation_rows(model, task, hard_skill, hard, "text prompt", fractions, seeds)
    print(hard_skill)

    tuning_start = time.perf_counter()
    soft = skill.train_soft_prompt(model, task, VERBALIZER, n_tokens=4, steps=steps, batch_size=8, eval_every=10)
    tuning_seconds = time.perf_counter() - tuning_start
    soft_skill = skill.predictivity(model, task, prompt=soft)
    soft_rows, soft_clean = perturbation_rows(model, task, soft_skill, soft, "soft prompt", fractions, seeds)
    print(soft, soft_skill)

    means = skill.task_mean_activations(model, task, prompt=soft)
    test_tokens = soft.to_tokens(model, task.test.texts)
    length = statistics.mode(len(t) for t in test_tokens)
    tokens = torch.stack([t for t in test_tokens if len(t) == length][:16])
    base_time = forward_time(model, tokens, soft.hooks(model))
    prune_rows = [["none (all 1536 per layer)", "-", f"{soft_clean:.3f}", "1.00x", "-"]]
    for fraction in kept:
        keep = soft_skill.mask(fraction, per_layer=True)
        control = skill.random_mask(keep, seed=0, exclude=torch.zeros_like(keep))  # any neurons, as many per layer
        small = skill.prune(model, keep, means)
        accuracy = skill.accuracy(small, task, prompt=soft)
        small_time = forward_time(small, tokens, soft.hooks(small))
        del small
        random_model = skill.prune(model, control, means)
        random_accuracy = skill.accuracy(random_model, task, prompt=soft)
        del random_model
        prune_rows.append(
            [
                f"{fraction:.0%} ({int(keep[0].sum())} per layer)",
                "skill",
                f"{accuracy:.3f}",
                f"{base_time / small_time:.2f}x",
                f"{random_accuracy:.3f}",
            ]
        )
    total = time.perf_counter() - start

    text = "\n\n".join(
        [
            "## Skill neurons on SmolLM2-135M (`benchmarks/skill_smollm2.py`)",
            f"Generated sentiment task ({n} sentences with negations; train / dev / test = "
            f"{' / '.join(str(v) for v in task.sizes().values())}). Text prompt `{TEMPLATE!r}`; soft prompt: 4 "
            f"virtual tokens after the review, {steps} Adam steps of 8 sentences on the frozen model "
            f"({tuning_seconds:.0f} s), dev accuracy {soft.dev_accuracy:.3f}. Verbalizer ' negative' / ' positive'.",
            "**Predictivity** (dev accuracy of thresholding at the train mean, better sign, mean over the prompt "
            "positions; the median neuron shows where chance sits, since the sign is picked on the dev split):",
            markdown_table(
                ["prompt", "positions", "best neuron", "top 1% mean", "median neuron", "train / dev"],
                [predictivity_row(hard_skill, "text prompt"), predictivity_row(soft_skill, "soft prompt")],
            ),
            "**Perturbation** (test accuracy; neurons set to their per-position train mean at the prompt positions; "
            f"random = as many neurons in the same layers, mean ± s.d. over {len(seeds)} seeds):",
            markdown_table(
                ["prompt", "perturbed", "neurons", "unperturbed", "top skill neurons", "random neurons"],
                hard_rows + soft_rows,
            ),
            "**Pruning** guided by the soft prompt's skill neurons (each layer keeps its top fraction; the others "
            "are folded into the MLP output bias at their train mean; speed-up = forward pass of "
            f"{len(tokens)} prompted test sentences of {length} tokens, median of 5, same machine, same run):",
            markdown_table(["kept", "selection", "test accuracy", "speed-up", "random neurons kept"], prune_rows),
            f"Measured on {machine()} in {total / 60:.1f} min.",
        ]
    )
    print(text)
    if not args.quick:
        write_section("skill_smollm2", text)


if __name__ == "__main__":
    main()
