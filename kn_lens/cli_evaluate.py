"""The evaluation commands of ``kn-lens``: suppress, enhance, erase, edit, ``evaluate pararel`` and report.

Every command that loads a model takes ``--model`` (default: the embedded SmolLM2-135M; ``tiny-bert`` for the
trained test BERT; a checkpoint folder; an official TransformerLens name), ``--backend`` and ``--device``; every
command takes ``--json`` (machine-readable output on stdout; progress goes to stderr). ``report`` loads no model:
it takes no ``--model``, ``--backend`` or ``--device``, only ``--output`` and ``--json``.

Examples::

    kn-lens suppress " Paris" "The capital of France is" "France's capital city is" "The capital city of France is"
    kn-lens enhance " Paris" "The capital of France is" "France's capital city is" --neurons L24N1005
    kn-lens erase " Paris" "The capital of France is" --neurons L24N1005,L20N311 --mode zero
    kn-lens edit "The capital of France is" "France's capital city is" --new " Rome" --neurons L24N1005
    kn-lens evaluate pararel --out runs/smollm2 --data pararel/ --relations P36,P37 --facts-per-relation 20
    torchrun --nproc_per_node 4 -m kn_lens evaluate pararel --out runs/bert --data pararel/ --model bert-base-cased
    kn-lens evaluate convergence runs/smollm2 --facts-per-relation 2
    kn-lens report runs/smollm2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from kn_lens.evaluation.sweep_manifest import DEFAULT_RULES  # the rules a run evaluates unless told otherwise
from kn_lens.inputs import count_argument

TINY_BERT = "tiny-bert"
EMBEDDED = "SmolLM2-135M (embedded)"


def load(name: str | None, device: str | None = None, backend: str | None = None):
    """The model named on the command line (``tiny-bert``, a folder, a TransformerLens name, None = embedded)."""
    from kn_lens.inputs import check_device
    from kn_lens.models import load_model

    check_device(device, "--device")  # before minutes of loading
    # stdout is the command's output (--json): what loading prints ("Moving model to device") goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        if name == TINY_BERT:
            from kn_lens.fixtures import tiny_bert

            model = tiny_bert.load(backend)
            return model.to(device) if device else model
        return load_model(name, device=device, backend=backend)


def load_from_args(args: argparse.Namespace, device: str | None = None):
    """The model of a command's ``--model``, ``--backend`` and ``--device`` (or ``device``, e.g. a process's GPU)."""
    return load(_model_arg(args), device or getattr(args, "device", None), getattr(args, "backend", None))


def add_model_options(parser: argparse.ArgumentParser, *, with_json: bool = True, model_help: str = "") -> None:
    """``--model``, ``--backend``, ``--device`` (a command that loads a model) and ``--json``."""
    # SUPPRESS: a --model given before the command (kn-lens --model X suppress ...) is not overwritten.
    parser.add_argument("--model", default=argparse.SUPPRESS, help=model_help or MODEL_HELP)
    parser.add_argument("--backend", choices=["hooked", "bridge"], default=argparse.SUPPRESS, help=BACKEND_HELP)
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda or cuda:1 (default: the model's)")
    if with_json:
        _json_option(parser)


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")


MODEL_HELP = (
    "the model: by default the embedded SmolLM2-135M; 'tiny-bert' for the bundled trained test BERT; a "
    "checkpoint folder; or an official TransformerLens name (needs the hub). Accepted before or after the "
    "sub-command."
)
BACKEND_HELP = (
    "TransformerLens backend: 'hooked' (HookedTransformer / HookedEncoder, the default on TransformerLens 3.x) or "
    "'bridge' (TransformerBridge, the only one on 4.x)"
)


STEPS_HELP = "integrated-gradient steps when the neurons are found from the prompts (default 20)"
SEED_HELP = "seed of the random-neuron control (default 0)"


def _model_arg(args: argparse.Namespace) -> str | None:
    return getattr(args, "model", None)


def emit(args: argparse.Namespace, frame: pd.DataFrame, payload: dict[str, Any] | None = None) -> None:
    """The result of a command: ``payload`` lines and the table, or one JSON object with ``--json``."""
    if args.json:
        data = dict(payload or {})
        data["rows"] = json.loads(frame.to_json(orient="records"))
        json.dump(data, sys.stdout, indent=None, allow_nan=False, default=str)
        sys.stdout.write("\n")
        return
    for key, value in (payload or {}).items():
        print(f"{key}: {value}")
    with pd.option_context("display.width", 160, "display.max_columns", 30, "display.precision", 4):
        print(frame.to_string(index=False))


def _neurons(model, args: argparse.Namespace, prompts: list[str], target: str):
    """``--neurons`` if given, else the knowledge neurons found from the prompts (integrated gradients)."""
    from kn_lens.neurons import find_knowledge_neurons

    if args.neurons:
        from kn_lens.inputs import to_neurons

        return to_neurons([n.strip() for n in args.neurons.split(",") if n.strip()], model)
    if len(prompts) < 2:
        raise ValueError("give at least 2 paraphrases to find knowledge neurons, or pass --neurons L{l}N{i},...")
    kns = find_knowledge_neurons(model, prompts, target, n_steps=args.steps, progress=not args.json)
    if not kns.neurons:
        raise ValueError("no knowledge neurons were selected for these prompts; pass --neurons to choose some")
    return kns.neurons


def _unrelated(items: list[str] | None) -> list[tuple[list[str], str]]:
    out = []
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--unrelated takes 'PROMPT=TARGET', got {item!r}")
        prompt, target = item.rsplit("=", 1)
        out.append(([prompt], target))
    return out


def _scale(args: argparse.Namespace, name: str) -> None:
    from kn_lens.evaluation import intervention_effects, summarize_effects

    model = load_from_args(args)
    neurons = _neurons(model, args, args.prompts, args.target)
    effects = intervention_effects(
        model,
        neurons,
        args.prompts,
        args.target,
        interventions={name: args.factor},
        unrelated=_unrelated(args.unrelated) or None,
        heldout=args.heldout or None,
        random_seeds=(args.seed,),
    )
    table = summarize_effects(effects)
    emit(args, table, {"neurons": [str(n) for n in neurons], "factor": args.factor})


def cmd_suppress(args: argparse.Namespace) -> None:
    """``kn-lens suppress TARGET PROMPT...``: scale the neurons by 0 and compare with the controls."""
    _scale(args, "suppress")


def cmd_enhance(args: argparse.Namespace) -> None:
    """``kn-lens enhance TARGET PROMPT...``: scale the neurons by 2 and compare with the controls."""
    _scale(args, "enhance")


def cmd_erase(args: argparse.Namespace) -> None:
    """``kn-lens erase TARGET PROMPT... --neurons ...``: erase value vectors; accuracy and perplexity, with control."""
    from kn_lens.evaluation import erase_relation

    model = load_from_args(args)
    neurons = _neurons(model, args, args.prompts, args.target)
    table = erase_relation(
        model,
        [(args.prompts, args.target)],
        neurons,
        other_facts=_unrelated(args.unrelated),
        mode=args.mode,
        seed=args.seed,
        relation="(given prompts)",
    )
    emit(args, table, {"neurons": [str(n) for n in neurons], "mode": args.mode})


def cmd_edit(args: argparse.Namespace) -> None:
    """``kn-lens edit PROMPT... --new ANSWER``: Dai et al.'s edit, scored beside random active neurons."""
    from kn_lens.evaluation import edit_effects

    model = load_from_args(args)
    target = args.old
    if target is None:
        from kn_lens.prompts import make_prompt
        from kn_lens.scoring import forward_logits

        first = make_prompt(model, args.prompts[0])
        logits = forward_logits(model, first.tokens[None].to(model.cfg.device))
        target = [int(logits[0, first.site].argmax())]
    neurons = _neurons(model, args, args.prompts, target)
    table = edit_effects(
        model,
        args.prompts,
        neurons,
        args.new,
        old=target,
        heldout=args.heldout or (),
        neighbours=_unrelated(args.neighbour),
        seed=args.seed,
        lambda1=args.lambda1,
        lambda2=args.lambda2,
    )
    emit(args, table, {"neurons": [str(n) for n in neurons]})


def cmd_evaluate_pararel(args: argparse.Namespace) -> None:
    """``kn-lens evaluate pararel --out DIR``: the resumable, shardable PARAREL sweep (kn_lens.evaluation.sweeps)."""
    from kn_lens.datasets import pararel
    from kn_lens.evaluation import sweeps

    rules = sweeps.check_rules(args.rules)  # before any model loads
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a file; give a run folder (it is created if missing)")
    if args.data is not None and not Path(args.data).is_dir():
        raise FileNotFoundError(f"--data {args.data} does not exist or is not a folder; give the PARAREL folder")
    rank, world = sweeps.distributed()
    steps, method = _quadrature(args)
    model = load_from_args(args, sweeps.local_device(args.device))
    data = pararel.load(args.data if args.data else pararel.download(), relations=args.relations)
    out = sweeps.run_pararel(
        model,
        data,
        args.out,
        model_name=_model_arg(args) or EMBEDDED,
        relations=args.relations,
        facts_per_relation=args.facts_per_relation,
        seed=args.seed,
        n_steps=steps,
        rules=rules,
        progress=not args.no_progress and (rank == 0 or not args.json),
        method=method,
    )
    if rank == 0:
        records = sweeps.read_records(out)
        known = sweeps.read_known(out)
        per_rule = {rule: sum(r.get("rule") == rule for r in records) for rule in rules}
        summary = dict(out=str(out), records=len(records), scanned=len(known),
                       known=sum(bool(k["known"]) for k in known), facts=len(sweeps.read_attributions(out)),
                       rules=",".join(rules), processes=world)  # fmt: skip
        if args.json:
            print(json.dumps(dict(summary, records_per_rule=per_rule)))
        else:
            print(" ".join(f"{k}={v}" for k, v in summary.items()))


def _quadrature(args: argparse.Namespace) -> tuple[int, str]:
    """(n_steps, method) from ``--preset``, overridden by ``--steps`` / ``--method`` when given."""
    from kn_lens.attribution import METHODS
    from kn_lens.evaluation.convergence import PRESETS

    if args.method is not None and args.method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {args.method!r}")
    preset = PRESETS[args.preset]
    steps = args.steps if args.steps is not None else preset["n_steps"]
    return steps, args.method or preset["method"]


def cmd_evaluate_convergence(args: argparse.Namespace) -> None:
    """``kn-lens evaluate convergence RUN``: re-select some facts' neurons with other quadrature rules."""
    from kn_lens.datasets import pararel
    from kn_lens.evaluation import sweeps
    from kn_lens.evaluation.convergence import convergence_summary

    manifest = sweeps.read_manifest(args.run)  # before loading a model: a SweepError is a ValueError (exit 2)
    folder = args.data or manifest["data_path"]
    model = load_from_args(args)
    out = sweeps.run_convergence(model, pararel.load(folder, relations=manifest.get("relations")), args.run,
                                 facts_per_relation=args.facts_per_relation, progress=not args.no_progress)  # fmt: skip
    frame = pd.DataFrame(sweeps.read_convergence(out))
    emit(args, convergence_summary(frame), dict(out=str(out), facts=int(frame["fact"].nunique())))


def cmd_report(args: argparse.Namespace) -> None:
    """``kn-lens report DIR``: one self-contained HTML page of a run."""
    from kn_lens.evaluation.report import write_report

    given = [flag for flag in ("model", "backend") if getattr(args, flag, None) is not None]
    if given:
        raise ValueError(f"report reads a run folder and loads no model: drop --{' and --'.join(given)}")
    path = write_report(args.run, args.output)
    if args.json:
        print(json.dumps({"report": str(path)}))
    else:
        print(f"wrote {path}")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _relations(text: str) -> list[str]:
    ids = [r.strip() for r in text.split(",") if r.strip()]
    if not ids:
        raise argparse.ArgumentTypeError("give relation ids like P36,P37")
    return ids


def _selections() -> dict[str, str]:
    from kn_lens.evaluation import SELECTIONS

    return SELECTIONS


def add_evaluation_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``suppress``, ``enhance``, ``erase``, ``edit``, ``evaluate`` and ``report`` to the ``kn-lens`` parser."""
    raw = argparse.RawDescriptionHelpFormatter
    for name, factor, verb in (("suppress", 0.0, "x0"), ("enhance", 2.0, "x2")):
        summary = f"scale a fact's neurons ({verb}) beside random-neuron and unrelated-fact controls"
        p = sub.add_parser(
            name,
            help=summary,
            description=summary,
            formatter_class=raw,
            epilog=f'example:\n  kn-lens {name} " Paris" "The capital of France is" "The capital city of France is" '
            f'"France\'s capital is"\n  kn-lens {name} " Paris" "The capital of France is" --neurons L24N1005',
        )
        p.add_argument("target", help="the answer, e.g. ' Paris' (leading space for causal models)")
        p.add_argument("prompts", nargs="+", help="the fact's prompts (paraphrases)")
        p.add_argument("--neurons", help="L{l}N{i},... (default: find them from the prompts)")
        p.add_argument("--factor", type=_finite, default=factor, help=f"activation factor (default {factor:g})")
        p.add_argument("--heldout", nargs="*", help="held-out paraphrases (same target)")
        p.add_argument("--unrelated", nargs="*", help="control facts as 'PROMPT=TARGET'")
        p.add_argument("--steps", type=count_argument, default=20, help=STEPS_HELP)
        p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
        add_model_options(p)
        p.set_defaults(func=cmd_suppress if name == "suppress" else cmd_enhance)

    summary = "erase neurons' value vectors (zero / [UNK]): accuracy and perplexity, beside random neurons"
    p = sub.add_parser(
        "erase",
        help=summary,
        description=summary,
        formatter_class=raw,
        epilog='example:\n  kn-lens erase " Paris" "The capital of France is" "The capital city of France is" '
        '--unrelated "The official language of Spain is= Spanish"',
    )
    p.add_argument("target", help="the answer, e.g. ' Paris' (leading space for causal models)")
    p.add_argument("prompts", nargs="+", help="the fact's prompts (paraphrases)")
    p.add_argument("--neurons", help="L{l}N{i},... (default: find them from the prompts)")
    p.add_argument("--mode", choices=("zero", "unk"), default="zero",
                   help="value vectors set to 0 (zero, default) or to the unknown token's embedding (unk)")  # fmt: skip
    p.add_argument("--unrelated", nargs="*", help="control facts as 'PROMPT=TARGET'")
    p.add_argument("--steps", type=count_argument, default=20, help=STEPS_HELP)
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    add_model_options(p)
    p.set_defaults(func=cmd_erase)

    summary = "rewrite a fact (Dai et al.'s edit): success, paraphrases, neighbours, perplexity, random control"
    p = sub.add_parser(
        "edit",
        help=summary,
        description=summary,
        formatter_class=raw,
        epilog='example:\n  kn-lens edit "The capital of France is" "The capital city of France is" --new " Rome" '
        '--neighbour "The capital of Italy is= Rome"',
    )
    p.add_argument("prompts", nargs="+", help="the fact's prompts")
    p.add_argument("--new", required=True, help="the new answer")
    p.add_argument("--old", help="the answer to remove (default: the model's current top prediction)")
    p.add_argument("--neurons", help="L{l}N{i},... (default: find them from the prompts)")
    p.add_argument("--heldout", nargs="*", help="held-out paraphrases")
    p.add_argument("--neighbour", nargs="*", help="neighbour facts as 'PROMPT=TARGET'")
    p.add_argument(
        "--lambda1",
        type=_finite,
        default=1.0,
        help="weight of the old answer's embedding subtracted (default 1, Dai et al.)",
    )
    p.add_argument(
        "--lambda2",
        type=_finite,
        default=8.0,
        help="weight of the new answer's embedding added (default 8, Dai et al.)",
    )
    p.add_argument("--steps", type=count_argument, default=20, help=STEPS_HELP)
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    add_model_options(p)
    p.set_defaults(func=cmd_edit)

    evaluate = sub.add_parser(
        "evaluate", help="benchmark evaluations (pararel, convergence)", description="benchmark evaluations"
    )
    which = evaluate.add_subparsers(dest="benchmark", required=True)
    summary = "knowledge neurons on PARAREL with every control; resumable; torchrun-shardable"
    p = which.add_parser(
        "pararel",
        help=summary,
        description=summary,
        formatter_class=raw,
        epilog="examples:\n  kn-lens evaluate pararel --out runs/smollm2 --data pararel/ --relations P36,P37 "
        "--facts-per-relation 20 --rules dai,adaptive\n  torchrun --nproc_per_node 2 -m kn_lens evaluate pararel "
        "--out runs/smollm2 --data pararel/\nRe-running the same command resumes the run; with more --rules it "
        "adds them without attributing again.",
    )
    p.add_argument("--out", required=True, help="run folder (resumed if it holds this run)")
    p.add_argument("--data", help="PARAREL folder (default: download into the cache)")
    p.add_argument("--relations", type=_relations, help="relation ids, e.g. P36,P37 (default: all)")
    p.add_argument("--facts-per-relation", type=count_argument, help="known facts per relation (default: all)")
    p.add_argument("--seed", type=int, default=0, help="order of each relation's facts and the controls (default 0)")
    p.add_argument("--preset", choices=("dai", "converged"), default="dai",
                   help="integration rule: dai = 20-step left Riemann sum (the paper's), converged = 128-point "
                   "midpoint rule (see kn_lens.evaluation.convergence)")  # fmt: skip
    p.add_argument("--steps", type=count_argument, default=None, help="integrated-gradient steps (overrides --preset)")
    p.add_argument("--method", default=None, help="quadrature rule, e.g. riemann_middle (overrides --preset)")
    rules_help = "; ".join(f"{k} = {v}" for k, v in _selections().items()).replace("%", "%%")
    p.add_argument("--rules", default=",".join(DEFAULT_RULES),
                   help="selection rules, comma-separated (default %(default)s); running again with more rules adds "
                   f"them from the stored attributions: {rules_help}")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_model_options(p)
    p.set_defaults(func=cmd_evaluate_pararel)

    summary = "how stable a run's knowledge neurons are across quadrature rules (adds to the run's report)"
    p = which.add_parser(
        "convergence",
        help=summary,
        description=summary,
        formatter_class=raw,
        epilog="example:\n  kn-lens evaluate convergence runs/smollm2 --facts-per-relation 2\n"
        "Re-running resumes; `kn-lens report runs/smollm2` then shows the stability table.",
    )
    p.add_argument("run", help="a run folder of `kn-lens evaluate pararel`")
    p.add_argument("--data", help="PARAREL folder (default: the run's)")
    p.add_argument(
        "--facts-per-relation", type=count_argument, default=2, help="facts re-attributed per relation (default 2)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_model_options(p, model_help="the run's model, again: required unless the run used the embedded SmolLM2 "
                      "(the default); the run refuses another model")  # fmt: skip
    p.set_defaults(func=cmd_evaluate_convergence)

    p = sub.add_parser(
        "report",
        help="one self-contained HTML page of an evaluate run",
        description="one self-contained HTML page of an evaluate run (loads no model)",
        formatter_class=raw,
        epilog="example:\n  kn-lens report runs/smollm2            # writes runs/smollm2/report.html",
    )
    p.add_argument("run", help="the run folder")
    p.add_argument("--output", "-o", help="HTML file (default RUN/report.html)")
    _json_option(p)
    p.set_defaults(func=cmd_report)


__all__ = ["add_evaluation_commands", "add_model_options", "emit", "load", "load_from_args"]
