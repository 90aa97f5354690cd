"""Integrated gradients on a TransformerBridge, side by side in one run: its plain path, its fast path, and the
hooked fast path on the same weights; and ``kn-lens demo`` on TransformerLens 3.x against 4.x.

Models: the embedded SmolLM2-135M (all 30 layers) and a bert-base-sized encoder (random ``BertForMaskedLM``, 12
layers, the tiny BERT's tokenizer), ``n_steps`` steps (riemann_left, target probability, zero baseline). Methods,
each in its own fresh process:

* **bridge plain**: ``integrated_gradients(bridge, ..., fast=False)``: per layer, one ``run_with_hooks`` forward
  and backward of all steps over the full sequence (the reference of the differences);
* **bridge fast**: ``integrated_gradients(bridge, ...)``: :mod:`kn_lens.attribution._bridge` through
  :mod:`kn_lens.attribution._fast` (the bridge's own blocks rerun from layer L + 1; decoders only from the site on,
  the prefix's keys and values frozen; encoders skip the layers below L and run the MLM head at the mask only);
* **hooked fast**: the same weights as a ``HookedTransformer``/``HookedEncoder`` on
  :mod:`kn_lens.attribution._hooked`. It needs TransformerLens 3.x: under 4.x pass
  ``--hooked-python .venv/bin/python`` to run it with a 3.x interpreter in the same run.

Usage:
    python benchmarks/bench_bridge.py [--threads 1] [--prompts 1] [--steps 20] [--skip-bert]
                                      [--hooked-python PY3] [--write]
    python benchmarks/bench_bridge.py --demo PY3 PY4 [--repeats 2] [--write]

``--write`` replaces the ``bridge-tl3`` / ``bridge-tl4`` section of benchmarks/RESULTS.md (one per TransformerLens
major: run it with ``.venv/bin/python`` and with ``.venv-tl4/bin/python``), or, with ``--demo``, the
``bridge-demo`` section (``kn-lens demo`` run alternately with both interpreters, back to back).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

try:
    from benchmarks._common import machine, markdown_table, peak_rss_mb, set_threads, write_section
except ImportError:  # run as a script
    from _common import machine, markdown_table, peak_rss_mb, set_threads, write_section

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2_PROMPTS = [
    ("The capital of France is", " Paris"),
    ("Rome is a beautiful old city, and it is the capital of", " Italy"),
]
BERT_PROMPTS = [("The capital of France is [MASK] .", "Paris"), ("Rome is the capital of [MASK] .", "Italy")]
METHODS = ("bridge plain", "bridge fast", "hooked fast")


def _bert_base_folder(folder: Path) -> str:
    """A bert-base-cased-sized masked LM with random weights (seed 0) and the tiny fixture's tokenizer: both
    backends load it (the bridge has no adapter for ``BertForPreTraining`` on TransformerLens 3.9)."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from kn_lens.fixtures import tiny_bert

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert.PATH)
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=28996)).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _measure(method: str, model_name: str, folder: str, n_prompts: int, n_steps: int, threads: int) -> dict:
    """One method on one model, in this (fresh) process: warm-up, then the timed attributions."""
    warnings.simplefilter("ignore")
    import kn_lens
    from kn_lens.attribution import attribution_path

    set_threads(threads)
    backend = "hooked" if method == "hooked fast" else "bridge"
    model = kn_lens.load_model(None if model_name == "SmolLM2-135M" else folder, backend=backend)
    after_load = peak_rss_mb()
    texts = SMOLLM2_PROMPTS if model_name == "SmolLM2-135M" else BERT_PROMPTS
    prompts = [kn_lens.make_prompt(model, text, target) for text, target in texts[:n_prompts]]
    fast = method != "bridge plain"
    path = attribution_path(model, fast=fast)[0]
    last = model.cfg.n_layers - 1
    kn_lens.integrated_gradients(model, prompts[0], layers=[last], n_steps=2, fast=fast)  # warm-up (and the probe)
    wall, cpu = time.perf_counter(), time.process_time()
    scores = [kn_lens.integrated_gradients(model, p, n_steps=n_steps, fast=fast) for p in prompts]
    return dict(
        wall=time.perf_counter() - wall,
        cpu=time.process_time() - cpu,
        scores=torch.stack(scores),
        rss=peak_rss_mb(),
        after_load=after_load,
        path=path,
        version=importlib.metadata.version("transformer-lens"),
        machine=machine(),
    )


def _in_process(python: str, method: str, model_name: str, folder: str, args) -> dict:
    """:func:`_measure` in a fresh process of ``python`` (the worktree's kn_lens on its path)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.pt"
        cmd = [python, __file__, "--worker", method, model_name, folder, str(args.prompts), str(args.steps),
               str(args.threads), str(out)]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        subprocess.run(cmd, check=True, env=env)
        return torch.load(out, weights_only=False)


HEADERS = [
    "model",
    "method",
    "TransformerLens",
    "wall s",
    "CPU s",
    "vs plain (CPU)",
    "CPU vs hooked fast",
    "max diff vs plain / max",
    "peak RSS MB (after load)",
]


def _attribution_text(version: str, n_prompts: int, n_steps: int, rows: list, where: str) -> str:
    return f"""## Integrated gradients on a TransformerBridge (`benchmarks/bench_bridge.py`, TransformerLens {version})

{n_prompts} prompt(s), all layers, {n_steps} steps, target probability, 1 thread; each method in its own
process, the three side by side in one run (under 4.x the hooked fast path runs with a TransformerLens 3.9
interpreter, `--hooked-python`). "bridge fast" is the bridge's fast path (kn_lens.attribution._bridge: its own
blocks rerun from layer L + 1, decoders only from the site on with the prefix's keys and values frozen, encoders
with the MLM head at the mask only); "hooked fast" the same weights as a HookedTransformer/HookedEncoder on
kn_lens.attribution._hooked.
"CPU vs hooked fast": the method's CPU time over the hooked fast path's (the goal for the bridge: at most 1.5x).
"max diff vs plain / max": the largest score difference from the bridge's plain path over the largest score.
The machine is shared with other work (and the benchmark ran at low priority): wall times follow the load of the
moment and can be several times the CPU times; compare CPU seconds. Measured on {where}.

{markdown_table(HEADERS, rows)}
"""


def _attribution(args) -> None:
    version = importlib.metadata.version("transformer-lens")
    from kn_lens.backends import HAS_HOOKED

    hooked_python = sys.executable if HAS_HOOKED else args.hooked_python
    models = ["SmolLM2-135M"] + ([] if args.skip_bert else ["bert-base-sized"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = _bert_base_folder(Path(tmp)) if not args.skip_bert else ""
        for model_name in models:
            results = {}
            for method in METHODS:
                python = hooked_python if method == "hooked fast" else sys.executable
                if python:
                    results[method] = _in_process(python, method, model_name, folder, args)
            plain = results["bridge plain"]
            assert results["bridge fast"]["path"] == "bridge-fast", results["bridge fast"]["path"]
            for method, r in results.items():
                diff = ((r["scores"] - plain["scores"]).abs().max() / plain["scores"].abs().max()).item()
                hooked = results.get("hooked fast")
                rows.append(
                    [
                        model_name,
                        method,
                        r["version"],
                        f"{r['wall']:.1f}",
                        f"{r['cpu']:.1f}",
                        f"{plain['cpu'] / r['cpu']:.2f}x",
                        f"{r['cpu'] / hooked['cpu']:.2f}x" if hooked else "-",
                        f"{diff:.1e}",
                        f"{r['rss']:.0f} ({r['after_load']:.0f})",
                    ]
                )
    text = _attribution_text(version, args.prompts, args.steps, rows, plain["machine"])
    print(text)
    if args.write:
        write_section(f"bridge-tl{version.split('.')[0]}", text)  # one section per TransformerLens major


DEMO_HEADERS = ["TransformerLens", "wall s (runs)", "CPU s (runs)", "wall vs 3.x (median)", "CPU vs 3.x (median)"]


def _demo(args) -> None:
    """``python -m kn_lens demo`` with each interpreter, alternately (back to back), wall and CPU seconds."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    pythons = {"3.x": args.demo[0], "4.x": args.demo[1]}
    times: dict[str, list[tuple[float, float, str]]] = {k: [] for k in pythons}
    for _ in range(args.repeats):
        for major, python in pythons.items():
            version = subprocess.run(
                [python, "-c", "import importlib.metadata as m; print(m.version('transformer-lens'))"],
                capture_output=True, text=True, check=True, env=env,
            ).stdout.strip()  # fmt: skip
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run([python, "-m", "kn_lens", "demo"], check=True, env=env, capture_output=True)
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            times[major].append((wall, cpu, version))
            print(f"TransformerLens {version}: demo {wall:.0f} s wall, {cpu:.0f} s CPU", flush=True)
    med = {k: (statistics.median(w for w, _, _ in v), statistics.median(c for _, c, _ in v)) for k, v in times.items()}
    rows = [
        [times[k][0][2], " / ".join(f"{w:.0f}" for w, _, _ in v), " / ".join(f"{c:.0f}" for _, c, _ in v),
         f"{med[k][0] / med['3.x'][0]:.2f}x", f"{med[k][1] / med['3.x'][1]:.2f}x"]
        for k, v in times.items()
    ]  # fmt: skip
    text = f"""## `kn-lens demo` on TransformerLens 3.x and 4.x (`benchmarks/bench_bridge.py --demo`)

`python -m kn_lens demo` (the embedded SmolLM2: 3 facts' paraphrases attributed, selection, controls), run
{args.repeats} times with each interpreter, alternately and back to back (so both see the same load on this shared
machine), {env["OMP_NUM_THREADS"]} thread(s). On 3.x the demo's model is a HookedTransformer, on 4.x a
TransformerBridge (the only backend there) with the bridge's fast path. Goal: 4.x within 1.5x of 3.x. Wall times
follow the load of the shared machine (the runs at low priority): compare CPU seconds. Measured on
{platform.machine()} CPU, torch {torch.__version__}, {platform.node()}.

{markdown_table(DEMO_HEADERS, rows)}
"""
    print(text)
    if args.write:
        write_section("bridge-demo", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip-bert", action="store_true")
    parser.add_argument("--hooked-python", help="a TransformerLens 3.x interpreter for the hooked fast path (4.x)")
    parser.add_argument("--demo", nargs=2, metavar=("PY3", "PY4"), help="time kn-lens demo with both interpreters")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--worker", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, model_name, folder, n_prompts, n_steps, threads, out = args.worker
        torch.save(_measure(method, model_name, folder, int(n_prompts), int(n_steps), int(threads)), out)
    elif args.demo:
        _demo(args)
    else:
        _attribution(args)


if __name__ == "__main__":
    main()
