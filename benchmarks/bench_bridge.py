"""Integrated gradients on a TransformerBridge, side by side in one run: the bridge's plain path vs its batched path.

The embedded SmolLM2-135M loaded as a ``TransformerBridge`` (``kn_lens.load_model(backend="bridge")``), all 30
layers, ``n_steps`` steps (riemann_left, target probability, zero baseline), each method in its own fresh process:

* **bridge plain**: ``integrated_gradients(bridge, ..., fast=False)``: per layer, one ``run_with_hooks``
  forward + backward of all steps over the full sequence;
* **bridge batched**: ``integrated_gradients(bridge, ...)`` (``fast=True``): the rows of every layer share passes
  (:mod:`kn_lens._ig_bridge`), same arithmetic per row;
* **hooked fast** (TransformerLens 3.x only, for context): the same weights as a ``HookedTransformer`` with
  kn_lens' fast path (:mod:`kn_lens._ig_fast`), which a bridge cannot use.

Usage:
    python benchmarks/bench_bridge.py [--threads 1] [--prompts 1] [--steps 20] [--write]

``--write`` replaces the ``bridge-tl3`` / ``bridge-tl4`` section of benchmarks/RESULTS.md (one per TransformerLens
major: run it with ``.venv/bin/python`` and ``.venv-tl4/bin/python``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import time
import warnings

import torch

try:
    from benchmarks._common import machine, markdown_table, peak_rss_mb, run_isolated, set_threads, write_section
except ImportError:  # run as a script
    from _common import machine, markdown_table, peak_rss_mb, run_isolated, set_threads, write_section

PROMPTS = [
    ("The capital of France is", " Paris"),
    ("Rome is a beautiful old city, and it is the capital of", " Italy"),
]


def _measure(method: str, n_prompts: int, n_steps: int, threads: int | None) -> dict:
    warnings.simplefilter("ignore")
    import kn_lens

    set_threads(threads)
    model = kn_lens.load_model(backend="hooked" if method == "hooked fast" else "bridge")
    after_load = peak_rss_mb()
    prompts = [kn_lens.make_prompt(model, text, target) for text, target in PROMPTS[:n_prompts]]
    kn_lens.integrated_gradients(model, prompts[0], layers=[29], n_steps=2, fast=method != "bridge plain")  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    scores = [kn_lens.integrated_gradients(model, p, n_steps=n_steps, fast=method != "bridge plain") for p in prompts]
    return dict(
        wall=time.perf_counter() - wall,
        cpu=time.process_time() - cpu,
        scores=torch.stack(scores),
        rss=peak_rss_mb(),
        after_load=after_load,
        threads=torch.get_num_threads(),
        machine=machine(),
    )


HEADERS = [
    "method",
    "wall s",
    "CPU s",
    "vs plain (wall)",
    "vs plain (CPU)",
    "max rel diff vs plain",
    "peak RSS MB (after load)",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    from kn_lens.backends import HAS_HOOKED

    methods = ["bridge plain", "bridge batched"] + (["hooked fast"] if HAS_HOOKED else [])
    results = {m: run_isolated(_measure, m, args.prompts, args.steps, args.threads) for m in methods}
    plain = results["bridge plain"]
    rows = []
    for m, r in results.items():
        diff = ((r["scores"] - plain["scores"]).abs().max() / plain["scores"].abs().max()).item()
        rows.append(
            [
                m,
                f"{r['wall']:.1f}",
                f"{r['cpu']:.1f}",
                f"{plain['wall'] / r['wall']:.2f}x",
                f"{plain['cpu'] / r['cpu']:.2f}x",
                f"{diff:.1e}",
                f"{r['rss']:.0f} ({r['after_load']:.0f})",
            ]
        )
    version = importlib.metadata.version("transformer-lens")
    text = f"""## Integrated gradients on a TransformerBridge (`benchmarks/bench_bridge.py`)

SmolLM2-135M as a `TransformerBridge` (TransformerLens {version}), {args.prompts} prompt(s), all 30 layers,
{args.steps} steps, target probability; each method in its own process. "batched" is the bridge's fast path
(every layer's steps share passes through the bridge's hooks); "hooked fast" is the same weights as a
`HookedTransformer` on kn_lens' fast path, for context (a bridge cannot use it: TransformerLens 3.9's bridge
rejects `start_at_layer`, 4.x's still runs the lower blocks). The batched path does the same arithmetic per row
as the plain one (hence the 0 difference); it only saves per-call overhead, so expect a modest gain, at the cost
of more memory for the larger passes. On a shared machine "CPU s" is the steadier figure (1 thread).
Measured on {plain["machine"]}.

{markdown_table(HEADERS, rows)}
"""
    print(text)
    if args.write:
        write_section(f"bridge-tl{version.split('.')[0]}", text)  # one section per TransformerLens major


if __name__ == "__main__":
    main()
