"""Integrated gradients on mlp_post, side by side in one run: plain reference vs captum vs kn_lens (fast path).

For each model, every method runs in its own fresh process (so each peak RSS is its own) on the same prompts,
all layers, ``n_steps`` steps (riemann_left, target probability, zero baseline):

* **plain**: ``kn_lens.integrated_gradients(..., fast=False)``: per layer, the full sequence, one
  ``run_with_hooks`` forward + backward of all steps (one clean pass for the activations);
* **captum**: ``captum.attr.IntegratedGradients`` around a function of the site activation of the same hook point
  (the clean activation cached once per prompt; all steps of a layer in one batch). captum's
  ``LayerIntegratedGradients`` interpolates the hook's *whole* output (every position) between the activations
  of two inputs, which is not Dai et al.'s path (only the site is scaled), so the site activation is the input;
* **ours**: ``kn_lens.integrated_gradients(..., fast=True)``;
* **ours + user hook**: the same call with an identity hook of the user's attached (``blocks.0.hook_resid_pre``):
  the fast path would bypass it, so kn_lens runs the plain path instead (the price of composing with your hooks).

Models: the embedded SmolLM2-135M (30 layers) and a bert-base-cased-sized ``HookedEncoder`` with random weights
(12 layers, d_model 768, d_mlp 3072, vocabulary 28996; the tiny BERT fixture's tokenizer).

Usage:
    python benchmarks/bench_attribution.py [--threads 2] [--prompts 3] [--steps 20] [--skip-bert] [--write]

``--write`` replaces the ``attribution`` section of benchmarks/RESULTS.md with the printed table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

try:
    from benchmarks._common import machine, markdown_table, peak_rss_mb, run_isolated, set_threads, write_section
except ImportError:  # run as a script
    from _common import machine, markdown_table, peak_rss_mb, run_isolated, set_threads, write_section

SMOL_PROMPTS = [
    ("The Eiffel Tower is located in the city of", " Paris"),
    ("The capital of France is", " Paris"),
    ("Rome is a beautiful old city, and it is the capital of", " Italy"),
    ("The official language spoken by most people in Germany is", " German"),
]
BERT_PROMPTS = [
    ("France has its capital in [MASK].", "Paris"),
    ("The capital city of Germany is [MASK].", "Berlin"),
    ("Italy has its capital in [MASK].", "Rome"),
]


def _load(spec: str):
    import kn_lens

    if spec == "smollm2":
        return kn_lens.load_model()
    return kn_lens.load_model(spec)


def _captum_scores(model, prompt, n_steps: int) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    from kn_lens.attribution import hook_name
    from kn_lens.scoring import objective_from_logits

    names = [hook_name(layer) for layer in range(model.cfg.n_layers)]
    tokens = prompt.tokens[None]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    out = []
    for name in names:
        clean = cache[name][0, prompt.site][None]

        def forward(x, name=name):
            def put(act, hook):
                return torch.cat([act[:, : prompt.site], x[:, None], act[:, prompt.site + 1 :]], dim=1)

            logits = model.run_with_hooks(tokens.expand(x.shape[0], -1), fwd_hooks=[(name, put)])
            return objective_from_logits(logits, prompt, "prob")

        ig = IntegratedGradients(forward)
        out.append(ig.attribute(clean, baselines=torch.zeros_like(clean), n_steps=n_steps, method="riemann_left")[0])
    return torch.stack(out).detach().float()


def _worker(spec: str, method: str, prompts, n_steps: int, threads: int | None) -> dict:
    """Load the model, warm up, time ``method`` on every prompt. Runs in its own process."""
    warnings.filterwarnings("ignore")
    set_threads(threads)
    import kn_lens
    from kn_lens import attribution as A

    model = _load(spec)
    rss_load = peak_rss_mb()
    ready = [kn_lens.make_prompt(model, text, target) for text, target in prompts]

    def compute(prompt, steps=n_steps, layers=None):
        if method == "captum":
            return _captum_scores(model, prompt, steps)
        return A.integrated_gradients(model, prompt, n_steps=steps, layers=layers, fast=method != "plain")

    if method == "ours + user hook":
        model.add_hook("blocks.0.hook_resid_pre", lambda act, hook: act)

    if method != "captum":
        compute(ready[0], steps=2, layers=[0, model.cfg.n_layers - 1])  # warm-up (allocator, lazy imports)
    times, cpu, scores = [], [], []
    for prompt in ready:
        start, start_cpu = time.perf_counter(), time.process_time()
        scores.append(compute(prompt).detach())
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {
        "times": times,
        "cpu": cpu,
        "scores": scores,
        "rss_load": rss_load,
        "rss_peak": peak_rss_mb(),
        "lengths": [len(p) for p in ready],
    }


def _bert_base_folder(folder: Path) -> str:
    """A bert-base-cased-sized checkpoint with random weights (seed 0) and the tiny fixture's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForPreTraining

    from kn_lens.fixtures import tiny_bert

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert.PATH)
    config = BertConfig(vocab_size=28996)  # bert-base-cased: 12 layers, 768, 12 heads, 3072
    torch.manual_seed(0)
    BertForPreTraining(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def bench(
    name: str,
    spec: str,
    prompts,
    n_steps: int,
    threads: int | None,
    methods=("ours", "plain", "captum", "ours + user hook"),
):
    results = {}
    for method in methods:
        print(f"[{name}] {method} ...", flush=True)
        results[method] = run_isolated(_worker, spec, method, prompts, n_steps, threads)
    ours = results["ours"]
    rows = []
    for method in methods:
        r = results[method]
        diff = max(float((s - o).abs().max() / o.abs().max()) for s, o in zip(r["scores"], ours["scores"], strict=True))
        total = sum(r["times"])
        cpu = sum(r["cpu"])
        rows.append(
            [
                name,
                method,
                ", ".join(f"{t:.2f}" for t in r["times"]),
                f"{total:.2f}",
                f"{total / sum(ours['times']):.1f}x",
                f"{cpu:.1f}",
                f"{cpu / sum(ours['cpu']):.1f}x",
                "-" if method == "ours" else f"{diff:.1e}",
                f"{r['rss_peak']:.0f} ({r['rss_load']:.0f})",
            ]
        )
    return rows, ours["lengths"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--prompts", type=int, default=3, help="prompts per model")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip-bert", action="store_true")
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--write", action="store_true", help="update the attribution section of RESULTS.md")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    rows, notes = [], []
    if not args.skip_smollm2:
        r, lengths = bench("SmolLM2-135M (30 layers)", "smollm2", SMOL_PROMPTS[: args.prompts], args.steps, threads)
        rows += r
        notes.append(f"SmolLM2 prompt lengths (tokens): {lengths}")
    if not args.skip_bert:
        with tempfile.TemporaryDirectory() as tmp:
            spec = _bert_base_folder(Path(tmp))
            r, lengths = bench(
                "bert-base-sized, random (12 layers)", spec, BERT_PROMPTS[: args.prompts], args.steps, threads
            )
        rows += r
        notes.append(f"BERT prompt lengths (tokens): {lengths}")
    headers = [
        "model",
        "method",
        "wall s per prompt",
        "wall s",
        "wall / ours",
        "CPU s",
        "CPU / ours",
        "max abs diff / max abs score",
        "peak RSS MB (after load)",
    ]
    table = markdown_table(headers, rows)
    text = "\n".join(
        [
            "## Integrated gradients: plain reference vs captum vs kn_lens",
            "",
            f"`python benchmarks/bench_attribution.py --threads {threads}`: all layers, {args.steps} steps "
            "(riemann_left), target probability, zero baseline; each method in its own process, same prompts, "
            f"measured in one run on {machine()}. CPU s = process CPU time (a steadier figure than wall time "
            "on a shared machine; with 1 thread it is the uncontended wall time). No GPU was available when "
            "these figures were taken.",
            "",
            table,
            "",
            *[f"- {n}" for n in notes],
            "- FLOP bound (SmolLM2, 30 layers x 20 steps, single-token target): the plain reference runs "
            "20 rows x P tokens through all 30 blocks and the unembedding, forward, and back down to each layer, "
            "about 30 x (20 P x 267 MFLOP) + 20 P x 5 GFLOP = 0.26 P TFLOP; ours runs each row through the blocks "
            "above its layer at the last position only (435 block-rows per step x 7 MFLOP, forward and backward) "
            "plus one unembedding per row (57 MFLOP, forward and backward), about 0.19 TFLOP whatever P. Ideal ratio "
            "~7x at P = 5, ~11x at P = 8, ~14x at P = 10, growing linearly with P.",
            "- BERT has no causal prefix to reuse: the gain comes from not recomputing layers below L, one batch "
            "for all layers, and the MLM head at the mask only (~2x by FLOP count).",
        ]
    )
    print(text)
    if args.write:
        write_section("attribution", text)


if __name__ == "__main__":
    main()
