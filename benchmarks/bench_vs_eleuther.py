"""kn_lens vs the EleutherAI ``knowledge-neurons`` package (0.0.2): same weights, same numbers, time ratios.

The package (``pip install --no-deps knowledge-neurons==0.0.2``) runs unchanged on transformers 5.x. Both sides
get the same random weights and tokenizer:

* **BERT**: a bert-base-cased-sized ``BertForMaskedLM`` (random, seed 0; the tiny BERT fixture's tokenizer). The
  package hooks ``intermediate`` (dense + GELU) = TransformerLens ``mlp_post``;
* **GPT-2**: a GPT-2-sized ``GPT2LMHeadModel`` (random, seed 0) with the SmolLM2 tokenizer (vocabulary 49152).
  The package hooks ``mlp.c_fc`` (before the GELU) = TransformerLens ``mlp_pre``.

Ours runs ``integrated_gradients(..., method="eleuther", hook=<the package's hook point>)`` (alphas
``linspace(0, 1, 20)``, weights 1/20, gradient of the target probability) and the package's selection rule (coarse:
score > 0.3 x max per prompt; refined: coarse in > 50% of the prompts). Each side runs in its own process.
Timed: ``get_refined_neurons`` (every prompt's scores plus the selection) against ours on the same prompts.

Usage:
    python benchmarks/bench_vs_eleuther.py [--threads 2] [--facts 2] [--skip-gpt2] [--skip-bert] [--write]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import torch

try:
    from benchmarks._common import machine, markdown_table, peak_rss_mb, run_isolated, set_threads, write_section
except ImportError:  # run as a script
    from _common import machine, markdown_table, peak_rss_mb, run_isolated, set_threads, write_section

STEPS = 20
BATCH = 10  # the package's default batch size (steps per forward pass)
COARSE = 0.3
SHARE = 0.5

BERT_FACTS = [
    (
        "Paris",
        [
            "France has its capital in [MASK].",
            "[MASK] is the capital city of France.",
            "The capital of France is [MASK].",
        ],
    ),
    (
        "Berlin",
        [
            "Germany has its capital in [MASK].",
            "[MASK] is the capital city of Germany.",
            "The capital of Germany is [MASK].",
        ],
    ),
    (
        "Rome",
        ["Italy has its capital in [MASK].", "[MASK] is the capital city of Italy.", "The capital of Italy is [MASK]."],
    ),
]
GPT_FACTS = [
    (" Paris", ["The capital of France is", "France's capital city is", "The French capital is called"]),
    (" Berlin", ["The capital of Germany is", "Germany's capital city is", "The German capital is called"]),
    (" Rome", ["The capital of Italy is", "Italy's capital city is", "The Italian capital is called"]),
]


def _refine(scores: list[torch.Tensor]) -> set[tuple[int, int]]:
    """The package's rule: coarse = score > 0.3 x max of that prompt; refined = coarse in > 50% of the prompts."""
    counts: Counter = Counter()
    for s in scores:
        for layer, index in torch.nonzero(s > s.max() * COARSE).tolist():
            counts[(layer, index)] += 1
    return {n for n, c in counts.items() if c > len(scores) * SHARE}


class _SingleIdEncode:
    """The tokenizer as GPT-2's would behave: no BOS added, and ``encode`` of a one-token target gives the id.

    SmolLM2's tokenizer prepends a BOS token (GPT-2's does not; kn_lens' prompts for this model have none), and the
    package's GPT path indexes the probabilities with ``tokenizer.encode(target)`` (a list), which gives
    ``[batch, 1]`` outputs that torch 2.13's ``autograd.grad`` refuses; with an int it takes ``probs[:, id]`` as for
    BERT. The package itself is not modified.
    """

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, *args, **kwargs):
        kwargs.setdefault("add_special_tokens", False)
        return self._tokenizer(*args, **kwargs)

    def encode(self, text, *args, **kwargs):
        kwargs.setdefault("add_special_tokens", False)
        ids = self._tokenizer.encode(text, *args, **kwargs)
        return ids[0] if len(ids) == 1 else ids


def _eleuther_worker(kind: str, folder: str, facts, threads: int | None) -> dict:
    warnings.filterwarnings("ignore")
    set_threads(threads)
    from knowledge_neurons import KnowledgeNeurons
    from transformers import AutoTokenizer, BertForMaskedLM, GPT2LMHeadModel

    cls = BertForMaskedLM if kind == "bert" else GPT2LMHeadModel
    model = cls.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if kind == "gpt2":
        tokenizer = _SingleIdEncode(tokenizer)
    kn = KnowledgeNeurons(model, tokenizer, model_type="bert" if kind == "bert" else "gpt2", device="cpu")
    rss_load = peak_rss_mb()
    kn.get_scores(facts[0][1][0], facts[0][0], batch_size=2, steps=2, pbar=False)  # warm-up
    out = {"refined": [], "refine_s": [], "cpu_s": [], "scores": [], "rss_load": rss_load}
    for target, prompts in facts:
        start, start_cpu = time.perf_counter(), time.process_time()
        refined = kn.get_refined_neurons(
            prompts, target, p=SHARE, batch_size=BATCH, steps=STEPS, coarse_adaptive_threshold=COARSE, quiet=True
        )
        out["refine_s"].append(time.perf_counter() - start)
        out["cpu_s"].append(time.process_time() - start_cpu)
        out["refined"].append({tuple(n) for n in refined})
        out["scores"].append(
            kn.get_scores(prompts[0], target, batch_size=BATCH, steps=STEPS, pbar=False).detach().float()
        )
    out["rss_peak"] = peak_rss_mb()
    return out


def _ours_worker(kind: str, folder: str, facts, threads: int | None) -> dict:
    warnings.filterwarnings("ignore")
    set_threads(threads)
    import kn_lens
    from kn_lens.attribution import integrated_gradients, integrated_gradients_many

    model = kn_lens.load_model(folder)
    if kind == "gpt2":
        model.cfg.default_prepend_bos = False  # the package tokenizes the prompt as is
    hook = "mlp_post" if kind == "bert" else "mlp_pre"
    rss_load = peak_rss_mb()
    kw = dict(n_steps=STEPS, method="eleuther", hook=hook, objective="prob")
    integrated_gradients(model, facts[0][1][0], facts[0][0], layers=[0], **kw)  # warm-up
    out = {"refined": [], "refine_s": [], "cpu_s": [], "scores": [], "rss_load": rss_load}
    for target, prompts in facts:
        start, start_cpu = time.perf_counter(), time.process_time()
        scores = integrated_gradients_many(model, prompts, target, progress=False, **kw)
        refined = _refine(list(scores))
        out["refine_s"].append(time.perf_counter() - start)
        out["cpu_s"].append(time.process_time() - start_cpu)
        out["refined"].append(refined)
        out["scores"].append(scores[0])
    out["rss_peak"] = peak_rss_mb()
    return out


def _save_bert(folder: Path) -> None:
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from kn_lens.fixtures import tiny_bert

    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=28996)).save_pretrained(folder)  # bert-base-cased sizes
    AutoTokenizer.from_pretrained(tiny_bert.PATH).save_pretrained(folder)


def _save_gpt2(folder: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    import kn_lens

    tokenizer = kn_lens.load_model().tokenizer  # SmolLM2's BPE tokenizer, 49152 tokens, offline
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256)  # GPT-2 small otherwise
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def bench(kind: str, facts, threads: int | None) -> list[list[object]]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (_save_bert if kind == "bert" else _save_gpt2)(folder)
        print(f"[{kind}] EleutherAI ...", flush=True)
        theirs = run_isolated(_eleuther_worker, kind, str(folder), facts, threads)
        print(f"[{kind}] kn_lens ...", flush=True)
        ours = run_isolated(_ours_worker, kind, str(folder), facts, threads)
    rows = []
    for i, (target, prompts) in enumerate(facts):
        a, b = theirs["scores"][i], ours["scores"][i]
        rows.append(
            [
                kind,
                f"{target.strip()} ({len(prompts)} prompts)",
                f"{theirs['refine_s'][i]:.1f}",
                f"{ours['refine_s'][i]:.1f}",
                f"{theirs['refine_s'][i] / ours['refine_s'][i]:.1f}x",
                f"{theirs['cpu_s'][i] / ours['cpu_s'][i]:.1f}x",
                f"{float((a - b).abs().max() / a.abs().max()):.1e}",
                f"{len(theirs['refined'][i])} / {len(ours['refined'][i])}",
                "yes" if theirs["refined"][i] == ours["refined"][i] else "NO",
            ]
        )
    total_theirs, total_ours = sum(theirs["refine_s"]), sum(ours["refine_s"])
    cpu_ratio = sum(theirs["cpu_s"]) / sum(ours["cpu_s"])
    rows.append(
        [
            kind,
            "**all**",
            f"{total_theirs:.1f}",
            f"{total_ours:.1f}",
            f"**{total_theirs / total_ours:.1f}x**",
            f"**{cpu_ratio:.1f}x**",
            "",
            f"peak RSS MB: {theirs['rss_peak']:.0f} / {ours['rss_peak']:.0f}",
            "",
        ]
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--facts", type=int, default=2, help="facts per model (3 paraphrases each)")
    parser.add_argument("--skip-bert", action="store_true")
    parser.add_argument("--skip-gpt2", action="store_true")
    parser.add_argument("--write", action="store_true", help="update the eleuther section of RESULTS.md")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    rows = []
    if not args.skip_bert:
        rows += bench("bert", BERT_FACTS[: args.facts], threads)
        print("\n".join(" | ".join(str(c) for c in r) for r in rows), flush=True)  # in case GPT-2 fails later
    if not args.skip_gpt2:
        rows += bench("gpt2", GPT_FACTS[: args.facts], threads)
    headers = [
        "model",
        "fact",
        "EleutherAI s",
        "kn_lens s",
        "speed-up (wall)",
        "speed-up (CPU time)",
        "max abs score diff / max abs score (1st prompt)",
        "refined neurons (theirs / ours)",
        "identical",
    ]
    text = "\n".join(
        [
            "## kn_lens vs the EleutherAI knowledge-neurons package",
            "",
            f"`python benchmarks/bench_vs_eleuther.py --threads {threads}`: {STEPS} steps (the package's linspace "
            "rule), target probability, coarse 0.3 x max, refined > 50% of prompts; random bert-base-cased-sized "
            "BERT (hook `intermediate` = `mlp_post`) and GPT-2-small-sized GPT-2 (hook `mlp.c_fc` = `mlp_pre`); "
            f"seconds = all scores + selection for the fact; each side in its own process; {machine()}.",
            "",
            markdown_table(headers, rows),
        ]
    )
    print(text)
    if args.write:
        write_section("eleuther", text)


if __name__ == "__main__":
    main()
