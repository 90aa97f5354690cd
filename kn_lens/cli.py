"""The ``kn-lens`` command line: one sub-command per job, each a thin wrapper around the Python API."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import pandas as pd

from kn_lens._moved import moved
from kn_lens.cli_evaluate import BACKEND_HELP, MODEL_HELP, add_model_options, emit, load_from_args
from kn_lens.inputs import check_count, count_argument
from kn_lens.scoring import top_predictions as _top_predictions
from kn_lens.selection import RULES, VARIANTS


def _print_frame(frame: pd.DataFrame) -> None:
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 4):
        print(frame.to_string(index=False))


def cmd_predict(args: argparse.Namespace) -> None:
    """``kn-lens predict PROMPT``: the top tokens at the mask / next position."""
    model = load_from_args(args)
    frame = _top_predictions(model, args.prompt, args.k)
    if args.json:
        emit(args, frame, {"prompt": args.prompt})
    else:
        _print_frame(frame)


def cmd_attribute(args: argparse.Namespace) -> None:
    """``kn-lens attribute PROMPT TARGET``: the neurons with the largest integrated-gradient scores."""
    from kn_lens.attribution import integrated_gradients
    from kn_lens.neurons import top_neurons

    model = load_from_args(args)
    check_count(args.top, "--top", minimum=1, maximum=model.cfg.n_layers * model.cfg.d_mlp, limit="the neurons")
    scores = integrated_gradients(model, args.prompt, args.target, n_steps=args.steps, progress=not args.json)
    neurons = top_neurons(scores, args.top)
    frame = pd.DataFrame({"neuron": [str(n) for n in neurons], "score": [float(scores[n]) for n in neurons]})
    if args.json:
        emit(args, frame, {"prompt": args.prompt, "target": args.target, "steps": args.steps})
    else:
        _print_frame(frame)


def cmd_find(args: argparse.Namespace) -> None:
    """``kn-lens find TARGET PROMPT... [--rule adaptive|dai|eleuther]``: knowledge neurons of a fact from its
    paraphrases, selected by the named rule (:data:`kn_lens.selection.RULES`)."""
    from kn_lens.neurons import find_knowledge_neurons

    model = load_from_args(args)
    result = find_knowledge_neurons(model, args.prompts, args.target, variant=args.rule, progress=not args.json)
    if args.json:
        meta = {"target": result.target, "rule": args.rule, "neurons": [str(n) for n in result.neurons]}
        emit(args, result.to_dataframe(), meta)
        return
    print(result)
    print(f"rule {args.rule}: {RULES[args.rule]}")
    _print_frame(result.to_dataframe())


def cmd_decode(args: argparse.Namespace) -> None:
    """``kn-lens decode L24N1005``: the tokens a neuron's value vector promotes and suppresses."""
    from kn_lens.lens import decode

    model = load_from_args(args)
    frame = decode(model, args.neuron, k=args.k).to_frame()
    if args.json:
        emit(args, frame, {"neuron": args.neuron})
    else:
        _print_frame(frame)


def cmd_demo(args: argparse.Namespace) -> None:
    """``kn-lens demo``: the main job, with its controls (see :mod:`kn_lens.evaluation.demo`)."""
    from kn_lens.evaluation.demo import run

    start = time.perf_counter()
    print("Loading the model ...", flush=True)
    model = load_from_args(args)
    print(
        f"Loaded {model.cfg.model_name}: {model.cfg.n_layers} layers x {model.cfg.d_mlp} MLP neurons "
        f"({time.perf_counter() - start:.1f} s)\n",
        flush=True,
    )
    run(model, n_steps=args.steps)


DESCRIPTION = """Find, test and explain the MLP neurons that store facts, on TransformerLens models.

examples:
  kn-lens demo                                   the main job on the embedded SmolLM2
  kn-lens predict "The capital of France is"     top next tokens
  kn-lens attribute "The capital of France is" " Paris" --top 10
  kn-lens find " Paris" "The capital of France is" "France's capital city is" "The French capital is"
  kn-lens decode L24N1005 -k 10
  kn-lens predict "Paris is the capital of [MASK]." --model tiny-bert
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``kn-lens`` argument parser, one sub-command per job; ``--model`` goes before or after it."""
    parser = argparse.ArgumentParser(
        prog="kn-lens", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument("--backend", choices=["hooked", "bridge"], default=None, help=BACKEND_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, example: str, *, with_json: bool = True) -> argparse.ArgumentParser:
        # every command here loads a model: --model, --backend, --device (and --json where it prints a table)
        command = sub.add_parser(
            name, help=help, description=help, epilog=f"example:\n  {example}", formatter_class=raw
        )
        add_model_options(command, with_json=with_json)
        return command

    raw = argparse.RawDescriptionHelpFormatter
    demo = add(
        "demo",
        "the main job: a fact's knowledge neurons, suppressed and enhanced, beside controls",
        "kn-lens demo --model tiny-bert --steps 5      # seconds; without --model: the embedded SmolLM2",
        with_json=False,
    )
    demo.add_argument("--steps", type=count_argument, default=20, help="integrated-gradients steps (default 20)")
    demo.set_defaults(func=cmd_demo)

    predict = add(
        "predict",
        "top tokens at the [MASK] / next position",
        'kn-lens predict "The capital of France is" -k 5',
    )
    predict.add_argument("prompt", help="a prompt (with [MASK] for an encoder)")
    predict.add_argument("-k", type=count_argument, default=10, help="how many tokens (default 10)")
    predict.set_defaults(func=cmd_predict)

    attribute = add(
        "attribute",
        "integrated-gradient attribution of a target to every neuron",
        'kn-lens attribute "The capital of France is" " Paris" --top 10',
    )
    attribute.add_argument("prompt", help="the prompt")
    attribute.add_argument("target", help="the answer, e.g. ' Paris' (leading space for causal models)")
    attribute.add_argument("--steps", type=count_argument, default=20, help="integration steps (default 20)")
    attribute.add_argument("--top", type=count_argument, default=20, help="how many neurons to list (default 20)")
    attribute.set_defaults(func=cmd_attribute)

    find = add(
        "find",
        "knowledge neurons of a fact from paraphrased prompts",
        'kn-lens find " Paris" "The capital of France is" "France\'s capital city is" "The French capital is" '
        "--rule dai",
    )
    find.add_argument("target", help="the answer, e.g. ' Paris' (leading space for causal models)")
    find.add_argument("prompts", nargs="+", help="the fact's paraphrases (dai needs at least 3)")
    find.add_argument(
        "--rule",
        choices=list(VARIANTS),
        default="adaptive",
        help="selection rule (default adaptive; a single fact is its own relation for dai): "
        + "; ".join(f"{name} = {text}" for name, text in RULES.items()).replace("%", "%%"),
    )
    find.set_defaults(func=cmd_find)

    decode = add("decode", "tokens a neuron's value vector promotes and suppresses", "kn-lens decode L24N1005 -k 10")
    decode.add_argument("neuron", help="e.g. L24N1005")
    decode.add_argument("-k", type=count_argument, default=10, help="tokens per side (default 10)")
    decode.set_defaults(func=cmd_decode)

    from kn_lens.cli_evaluate import add_evaluation_commands

    add_evaluation_commands(sub)  # suppress, enhance, erase, edit, evaluate, report
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kn-lens``: exit 0, or 2 with one line ``kn-lens: error: ...`` for a bad input, file or
    folder (no traceback), 130 with one line after Ctrl-C. Under torchrun each process says which one it is."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        _say("interrupted (Ctrl-C); a run folder resumes where it stopped when the same command runs again")
        return 130
    except (ValueError, TypeError, OSError) as err:  # OSError: missing or unreadable files, the hub, checkpoints
        _say(f"error: {err}")
        return 2
    return 0


def _say(message: str) -> None:
    """One line on stderr (a multi-line message is joined), naming the process under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    who = f"kn-lens (process {os.environ.get('RANK', '?')} of {world})" if world > 1 else "kn-lens"
    print(f"{who}: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


#: ``top_predictions`` used to live here: import it from :mod:`kn_lens.scoring` (a ``DeprecationWarning`` says so).
__getattr__ = moved(__name__, {"top_predictions": "kn_lens.scoring"})


if __name__ == "__main__":
    sys.exit(main())
