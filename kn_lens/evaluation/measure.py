"""Measuring a target: its probability, top-1 and log-probability per prompt (:func:`measure`), and the
perplexity of a held-out text (:func:`text_perplexity`): what every effect table of :mod:`kn_lens.evaluation`
reads before and after an intervention.

Example:
    >>> m = measure(bert, kn_lens.make_prompts(bert, ["The capital of France is [MASK]."], "Paris"))
    >>> m.prob, m.top1
    (tensor([0.8874]), tensor([True]))
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any, NamedTuple

import torch

from kn_lens._device import evaluating
from kn_lens._typing import Model, check_model, is_encoder
from kn_lens.hooks import Intervention
from kn_lens.inputs import check_batch_size
from kn_lens.prompts import Prompt, group_by_length, stack_tokens
from kn_lens.scoring import forward_logits, objective_from_logits


def _padded(batch: Sequence[Prompt], device) -> torch.Tensor:
    """Stack prompts, right-padding shorter ones with their own last token (never read: causal models only)."""
    width = max(len(p) for p in batch)
    if all(len(p) == width for p in batch):
        return stack_tokens(batch, device)
    rows = [torch.cat([p.tokens, p.tokens[-1:].expand(width - len(p))]) for p in batch]
    return torch.stack(rows).to(device)


def _padding_safe(positions: Any) -> bool:
    """True for positions that mean the same in a right-padded batch as for each prompt alone."""
    return isinstance(positions, str) and positions in ("site", "all")


class Measured(NamedTuple):
    """Per-prompt scores of the target: probability, is-top-1 (first target token), log-probability, tokens."""

    prob: torch.Tensor
    top1: torch.Tensor
    logprob: torch.Tensor
    n_tokens: torch.Tensor


@evaluating
@torch.inference_mode()
def measure(model: Model, prompts: Sequence[Prompt], *, fwd_hooks=(), batch_size: int = 32) -> Measured:
    """The target's probability, whether it is the top-1 prediction, and its log-probability, in one pass.

    Prompts are batched by (length, target length) without padding; ``fwd_hooks`` is a hook list or a per-batch
    builder (e.g. an :class:`~kn_lens.hooks.Intervention`). For multi-token targets ``prob`` is the product over
    the target tokens (teacher-forced) and ``top1`` refers to the first token. Everything comes back on the CPU
    (``prob`` float32, ``logprob`` float64), computed in float32 whatever the model's dtype, in eval mode.

    Example:
        >>> m = measure(bert, kn_lens.make_prompts(bert, ["The capital of France is [MASK]."], "Paris"))
        >>> m.prob, m.top1
        (tensor([0.8874]), tensor([True]))
    """
    check_model(model)
    batch_size = check_batch_size(batch_size)
    if not prompts:
        raise ValueError("no prompts given")
    if not all(p.target_ids for p in prompts):
        raise ValueError("a prompt has no target; make it with make_prompt(model, text, target)")
    n = len(prompts)
    logprob, top1 = torch.empty(n, dtype=torch.float64), torch.zeros(n, dtype=torch.bool)
    # A causal model never looks ahead, so prompts of different lengths can share a batch, right-padded, and be
    # read at their own positions (a forward of 32 short prompts costs about what one costs on a CPU). Only for
    # interventions whose positions padding cannot move ("site": each row's own; "all": the padding comes after
    # what is read); "last", negative and explicit positions count from the end or may fall on the padding, so
    # those prompts are batched by length, like every encoder prompt.
    ours = isinstance(fwd_hooks, Intervention) and _padding_safe(fwd_hooks.positions)
    pad = not is_encoder(model) and (ours or not fwd_hooks)
    groups: dict[tuple[int, int], list[int]] = {}  # prompts (of one length unless padded) and target length
    for length, same_length in ({0: list(range(n))} if pad else group_by_length(prompts)).items():
        for i in same_length:
            groups.setdefault((length, len(prompts[i].target_ids)), []).append(i)
    for indices in groups.values():
        if pad:  # similar lengths together: less padding
            indices = sorted(indices, key=lambda i: len(prompts[i]))
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            batch = [prompts[i] for i in chunk]
            hooks = fwd_hooks(batch) if callable(fwd_hooks) else fwd_hooks
            logits = forward_logits(model, _padded(batch, model.cfg.device), hooks)
            logprob[chunk] = objective_from_logits(logits, batch, "logprob").cpu().double()  # MPS: no float64
            rows = torch.arange(len(batch), device=logits.device)
            first = torch.tensor([p.positions[0] for p in batch], device=logits.device)
            wanted = torch.tensor([p.target_ids[0] for p in batch], device=logits.device)
            top1[chunk] = (logits[rows, first].argmax(-1) == wanted).cpu()
    n_tokens = torch.tensor([len(p.target_ids) for p in prompts])
    return Measured(logprob.exp().float(), top1, logprob, n_tokens)


def heldout_text() -> str:
    """The held-out text shipped with kn_lens (the Gettysburg Address, public domain), for perplexity checks."""
    return resources.files("kn_lens").joinpath("data/heldout.txt").read_text(encoding="utf-8")


@evaluating
@torch.inference_mode()
def text_perplexity(model: Model, text: str | None = None, *, fwd_hooks=()) -> float:
    """Perplexity of a text under a causal model (default :func:`heldout_text`); NaN for masked LMs.

    The damage an edit does to the rest of the model shows here: a rise means the model got worse at plain
    language, not only at the edited fact.

    Example:
        >>> round(text_perplexity(model), 1)            # SmolLM2 on the Gettysburg Address
        12.9
    """
    check_model(model)
    if is_encoder(model):
        return float("nan")
    text = heldout_text() if text is None else text
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string")
    tokens = model.to_tokens(text)[:, : model.cfg.n_ctx]
    if tokens.shape[1] < 2:
        raise ValueError("text must be at least two tokens long")
    logits = forward_logits(model, tokens, fwd_hooks)[0, :-1].float()  # the loss in float32 whatever the dtype
    logprobs = logits.log_softmax(-1).gather(-1, tokens[0, 1:, None].to(logits.device))[:, 0]
    return float(torch.exp(-logprobs.mean()))


def _accuracy_ppl(m: Measured) -> tuple[float, float, float]:
    """(top-1 accuracy, answer perplexity exp(mean per-token NLL), mean probability)."""
    nll = (-m.logprob / m.n_tokens).mean()
    return float(m.top1.float().mean()), float(torch.exp(nll)), float(m.prob.mean())


__all__ = [
    "Measured",
    "heldout_text",
    "measure",
    "text_perplexity",
]
