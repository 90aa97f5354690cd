"""The ``kn-lens`` command line.

Examples::

    kn-lens demo                                   # the main job on the embedded SmolLM2
    kn-lens predict "The capital of France is"     # top next tokens
    kn-lens attribute "The capital of France is" " Paris" --top 10
    kn-lens find " Paris" "The capital of France is" "France's capital city is" "Paris is the capital of"
    kn-lens decode L24N1005 -k 10
    kn-lens predict "Paris is the capital of [MASK]." --model tiny-bert
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import pandas as pd
import torch

TINY_BERT = "tiny-bert"


def _load(name: str | None):
    from kn_lens.models import load_model

    if name == TINY_BERT:
        from kn_lens.fixtures import tiny_bert

        return tiny_bert.load()
    return load_model(name)


def _print_frame(frame: pd.DataFrame) -> None:
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 4):
        print(frame.to_string(index=False))


def top_predictions(model, text: str, k: int = 10) -> pd.DataFrame:
    """The model's ``k`` most likely tokens at the prompt's site (mask or next token), as a DataFrame.

    Example:
        >>> top_predictions(model, "The capital of France is", k=3)
    """
    from kn_lens.prompts import make_prompt

    prompt = make_prompt(model, text)
    with torch.inference_mode():
        logits = model(prompt.tokens[None].to(model.cfg.device), return_type="logits")[0, prompt.site]
    probs = logits.float().softmax(-1)
    top = probs.topk(k)
    tokens = [model.tokenizer.decode([i]) for i in top.indices.tolist()]
    return pd.DataFrame({"rank": range(1, k + 1), "token": [repr(t) for t in tokens], "prob": top.values.tolist()})


def cmd_predict(args: argparse.Namespace) -> None:
    """``kn-lens predict PROMPT``: the top tokens at the mask / next position."""
    model = _load(args.model)
    _print_frame(top_predictions(model, args.prompt, args.k))


def cmd_attribute(args: argparse.Namespace) -> None:
    """``kn-lens attribute PROMPT TARGET``: the neurons with the largest integrated-gradient scores."""
    from kn_lens.attribution import integrated_gradients

    model = _load(args.model)
    scores = integrated_gradients(model, args.prompt, args.target, n_steps=args.steps, progress=True)
    values, flat = scores.flatten().topk(args.top)
    d_mlp = model.cfg.d_mlp
    rows = [
        {"neuron": f"L{i // d_mlp}N{i % d_mlp}", "score": v}
        for v, i in zip(values.tolist(), flat.tolist(), strict=True)
    ]
    _print_frame(pd.DataFrame(rows))


def cmd_find(args: argparse.Namespace) -> None:
    """``kn-lens find TARGET PROMPT...``: knowledge neurons of a fact from its paraphrases."""
    from kn_lens.neurons import find_knowledge_neurons

    model = _load(args.model)
    result = find_knowledge_neurons(model, args.prompts, args.target, progress=True)
    print(result)
    _print_frame(result.to_dataframe())


def cmd_decode(args: argparse.Namespace) -> None:
    """``kn-lens decode L24N1005``: the tokens a neuron's value vector promotes and suppresses."""
    from kn_lens.lens import decode

    model = _load(args.model)
    _print_frame(decode(model, args.neuron, k=args.k).to_frame())


def cmd_demo(args: argparse.Namespace) -> None:
    """``kn-lens demo``: the main job on the embedded model (predictions, cache, knowledge neurons, table)."""
    from kn_lens.cache import cache_mlp_post
    from kn_lens.evaluate import demo_table

    start = time.perf_counter()
    model = _load(args.model)
    print(
        f"Loaded {model.cfg.model_name}: {model.cfg.n_layers} layers x {model.cfg.d_mlp} MLP neurons "
        f"({time.perf_counter() - start:.1f} s)\n"
    )
    prompt = "The capital of France is"
    print(f"Top predictions for {prompt!r}:")
    _print_frame(top_predictions(model, prompt, 5))

    cache = cache_mlp_post(model, [prompt], positions="all", progress=False)
    first = cache.hook_names[0]
    print(
        f"\nCached mlp_post of {len(cache.layers)} layers ({first}, ...), "
        f"{len(cache)} positions x {cache[first].shape[-1]} neurons each\n"
    )

    print("Knowledge neurons for ' Paris' (integrated gradients, Dai et al.'s selection), then suppress (x0) and")
    print("enhance (x2) them, beside a random-neuron control and an unrelated fact:\n")
    table = demo_table(model, progress=True)
    _print_frame(table)
    print(f"\nDone in {time.perf_counter() - start:.0f} s.")


def build_parser() -> argparse.ArgumentParser:
    """The ``kn-lens`` argument parser, one sub-command per job."""
    parser = argparse.ArgumentParser(prog="kn-lens", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--model",
        default=None,
        help="model: default the embedded SmolLM2-135M; 'tiny-bert' for the trained test BERT; a checkpoint "
        "folder; or an official TransformerLens name (needs the hub)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the main job on the embedded model")
    demo.set_defaults(func=cmd_demo)

    predict = sub.add_parser("predict", help="top tokens at the [MASK] / next position")
    predict.add_argument("prompt")
    predict.add_argument("-k", type=int, default=10)
    predict.set_defaults(func=cmd_predict)

    attribute = sub.add_parser("attribute", help="integrated-gradient attribution of a target to every neuron")
    attribute.add_argument("prompt")
    attribute.add_argument("target")
    attribute.add_argument("--steps", type=int, default=20)
    attribute.add_argument("--top", type=int, default=20)
    attribute.set_defaults(func=cmd_attribute)

    find = sub.add_parser("find", help="knowledge neurons of a fact from paraphrased prompts")
    find.add_argument("target")
    find.add_argument("prompts", nargs="+")
    find.set_defaults(func=cmd_find)

    decode = sub.add_parser("decode", help="tokens a neuron's value vector promotes and suppresses")
    decode.add_argument("neuron", help="e.g. L24N1005")
    decode.add_argument("-k", type=int, default=10)
    decode.set_defaults(func=cmd_decode)

    from kn_lens.cli_evaluate import add_evaluation_commands

    add_evaluation_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kn-lens``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError, FileNotFoundError, ConnectionError) as err:
        print(f"kn-lens: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
