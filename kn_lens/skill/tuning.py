"""Measuring a prompt (:func:`margins`, :func:`accuracy`) and learning one (:func:`train_soft_prompt`).

Context:
    A prompted model answers a binary task through its *verbalizer*: two words, one per label, compared at the
    site (the ``[MASK]`` of an encoder, the next token of a causal model). :func:`margins` gives
    ``logit(label 1 word) - logit(label 0 word)`` per example, :func:`accuracy` the share whose sign matches the
    label. Both take extra ``fwd_hooks`` (e.g. :func:`kn_lens.hooks.perturb`), which run after the prompt's own
    hook: that is how perturbation and pruning are measured.

    :func:`train_soft_prompt` is prompt tuning (Lester et al. 2021; Wang et al.'s setting): Adam on a handful of
    virtual-token embeddings, everything else frozen, best dev accuracy kept.

Caveats:
    The verbalizer words must be single tokens of the model (BPE vocabularies: with the leading space). Words
    that mean nothing for the task (``("violin", "piano")`` for number agreement) are fine for a soft prompt: it
    learns the mapping; an untrained prompt then scores at chance.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from kn_lens._device import evaluating
from kn_lens._progress import progress_bar
from kn_lens._typing import Model, check_model, is_encoder
from kn_lens.inputs import check_count, check_number
from kn_lens.skill.prompting import (
    PromptLike,
    SoftPrompt,
    _batches,
    _check_fwd_hooks,
    _embed_hook_name,
    _embedding_matrix,
    _encode,
    _run,
    _soft_hook,
    _verbalizer_ids,
    as_prompt,
)
from kn_lens.skill.tasks import Split, Task, _as_split


@evaluating
@torch.inference_mode()
def margins(
    model: Model,
    data: Task | Split | tuple,
    *,
    prompt: PromptLike = None,
    verbalizer: Sequence[str] | None = None,
    split: str = "test",
    fwd_hooks: Sequence = (),
    batch_size: int = 32,
    progress: bool = True,
) -> Float[Tensor, " examples"]:
    """``logit(label 1 word) - logit(label 0 word)`` at the verbalizer site, one per example (input order).

    Args:
        model: the model.
        data: a :class:`Task` (its ``split`` is used), a :class:`Split`, or ``(texts, labels)``.
        prompt: a :class:`HardPrompt`, a :class:`SoftPrompt`, a template str, or None (the plain text).
        verbalizer: the two words, when ``prompt`` is a str or None.
        split: which split of a :class:`Task`.
        fwd_hooks: extra hooks (e.g. :func:`kn_lens.hooks.perturb`), run after the prompt's.
        batch_size: texts per forward pass.
        progress: show a progress bar.

    Example:
        >>> margins(bert, task, prompt=soft, progress=False)[:4]  # > 0: "piano" (label 1) wins
        tensor([-1.2..., 1.2..., -1.2..., 1.2...])
        >>> task.test.labels[:4]
        (0, 1, 0, 1)
    """
    check_model(model)
    prompt = as_prompt(model, prompt, verbalizer)
    zero, one = _verbalizer_ids(model, prompt.verbalizer)
    texts = _as_split(data, split).texts
    out = torch.empty(len(texts))
    for chunk, logits, _ in _run(
        model, prompt, texts, batch_size=batch_size, fwd_hooks=_check_fwd_hooks(model, fwd_hooks), progress=progress,
        desc="scoring",
    ):  # fmt: skip
        out[chunk] = (logits[:, one] - logits[:, zero]).cpu()
    return out


@evaluating
def accuracy(
    model: Model,
    data: Task | Split | tuple,
    *,
    prompt: PromptLike = None,
    verbalizer: Sequence[str] | None = None,
    split: str = "test",
    fwd_hooks: Sequence = (),
    batch_size: int = 32,
    progress: bool = True,
) -> float:
    """Task accuracy: the label whose verbalizer word has the larger logit, against the true label.

    Arguments as in :func:`margins`.

    Example:
        >>> accuracy(bert, task, prompt=soft, progress=False)  # test split
        1.0
        >>> untrained = SoftPrompt(torch.zeros_like(soft.embeddings), soft.verbalizer, placement="end")
        >>> accuracy(bert, task, prompt=untrained, progress=False)  # the words alone mean nothing for number
        0.5
        >>> noise = kn_lens.hooks.perturb(skill.mask(0.05), "gaussian", std=3.0, positions=list(skill.positions))
        >>> accuracy(bert, task, prompt=soft, fwd_hooks=noise, progress=False)
        1.0
    """
    labels = torch.tensor(_as_split(data, split).labels)
    scores = margins(
        model, data, prompt=prompt, verbalizer=verbalizer, split=split, fwd_hooks=fwd_hooks,
        batch_size=batch_size, progress=progress,
    )  # fmt: skip
    return float(((scores > 0).long() == labels).float().mean())


@contextlib.contextmanager
def _frozen(model: Model) -> Iterator[None]:
    """Parameters stop requiring gradients (so none are computed or stored); the flags are restored on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def train_soft_prompt(
    model: Model,
    task: Task,
    verbalizer: Sequence[str] = (" negative", " positive"),
    *,
    n_tokens: int = 8,
    steps: int = 200,
    lr: float = 0.1,
    batch_size: int = 16,
    template: str = "{text}",
    placement: Literal["start", "end"] | None = None,
    eval_every: int = 50,
    seed: int = 0,
    progress: bool = True,
) -> SoftPrompt:
    """Prompt tuning on a frozen model: learn ``n_tokens`` virtual token embeddings for a binary task.

    Each step takes a batch of training texts of equal token length, writes the current embeddings over the
    reserved positions (a hook on ``hook_embed``), and minimises the cross-entropy of the two verbalizer
    logits at the site with Adam. Only the embeddings are optimised: the model's parameters are set not to
    require gradients for the duration (flags restored afterwards) and are never written. Every
    ``eval_every`` steps the dev accuracy is measured; the best embeddings are kept.

    Args:
        model: a ``HookedTransformer`` or ``HookedEncoder`` (or a bridge exposing ``hook_embed``).
        task: the :class:`Task`.
        verbalizer: the words for label 0 and label 1, single tokens (encoders: ``("negative", "positive")``
            style WordPiece words; causal BPE models: with the leading space).
        n_tokens: number of virtual tokens.
        steps: optimisation steps.
        lr: Adam's learning rate.
        batch_size: training texts per step.
        template: text around the input (``"{text}"``; encoders get a ``[MASK]`` appended if it has none).
        placement: ``"start"`` or ``"end"``; default: after ``[CLS]`` for encoders, after the input for causal
            models (a prompt before the input could not see it).
        eval_every: steps between dev evaluations (the last step is always evaluated).
        seed: initialisation (embeddings of random vocabulary tokens) and batch order.
        progress: show a progress bar.

    Returns:
        A :class:`SoftPrompt` with its dev accuracy and training history.

    Example:
        The tiny BERT's number agreement as a task; the verbalizer words (two instruments) mean nothing for number,
        so the prompt has to learn the mapping:

        >>> from kn_lens.fixtures import tiny_bert
        >>> from kn_lens.skill import make_task
        >>> agreement = tiny_bert.AGREEMENT["train"] + tiny_bert.AGREEMENT["heldout"]
        >>> texts = [a.prompt.replace("[MASK]", "the") for a in agreement]
        >>> task = make_task(texts, [int(a.plural) for a in agreement], name="number", classes=("singular", "plural"))
        >>> task.train.texts[0], task.train.labels[0]
        (...)
        >>> soft = train_soft_prompt(
        ...     bert, task, ("violin", "piano"), n_tokens=4, steps=90, lr=0.3, placement="end", eval_every=30,
        ...     progress=False,
        ... )
        >>> soft
        SoftPrompt(n_tokens=4, d_model=32, verbalizer=('violin', 'piano'), placement='end', dev_accuracy=1.000)
        >>> [step for step, loss, dev in soft.history]
        [30, 60, 90]
        >>> accuracy(bert, task, prompt=soft, progress=False)  # the held-out test split
        1.0
    """
    check_model(model)
    if not isinstance(task, Task):
        raise TypeError(f"task must be a kn_lens.skill.Task (make one with make_task), got {type(task).__name__}")
    for name, value in (
        ("n_tokens", n_tokens),
        ("steps", steps),
        ("batch_size", batch_size),
        ("eval_every", eval_every),
    ):
        check_count(value, name, minimum=1)
    check_number(lr, "lr", low=0, low_open=True)
    placement = placement or ("start" if is_encoder(model) else "end")
    # Prompt tuning differentiates, whatever mode the caller is in (torch.no_grad(), inference_mode, a notebook
    # cell decorated with either): both are lifted for the training and restored on return.
    with torch.inference_mode(False), torch.enable_grad():
        return _train_soft_prompt(
            model, task, verbalizer, n_tokens, steps, lr, batch_size, template, placement, eval_every, seed, progress
        )


def _train_soft_prompt(
    model: Model,
    task: Task,
    verbalizer: Sequence[str],
    n_tokens: int,
    steps: int,
    lr: float,
    batch_size: int,
    template: str,
    placement: Literal["start", "end"],
    eval_every: int,
    seed: int,
    progress: bool,
) -> SoftPrompt:
    generator = torch.Generator().manual_seed(seed)
    embedding = _embedding_matrix(model)
    init = embedding[torch.randint(0, embedding.shape[0], (n_tokens,), generator=generator)].detach().clone().float()
    weight = torch.nn.Parameter(init.to(embedding.device))
    prompt = SoftPrompt(weight, tuple(verbalizer), template, placement)  # type: ignore[arg-type]
    zero, one = _verbalizer_ids(model, prompt.verbalizer)
    layout = prompt.layout(model)
    token_lists = _encode(model, layout, task.train.texts)
    labels = torch.tensor(task.train.labels)
    groups = _batches(token_lists, batch_size)
    sizes = torch.tensor([len(g) for g in groups], dtype=torch.float)
    hook = (_embed_hook_name(model), functools.partial(_soft_hook, weight=weight, soft=layout.soft))
    optimizer = torch.optim.Adam([weight], lr=lr)
    best = (-1.0, weight.detach().clone())
    history: list[tuple[int, float, float]] = []
    rng = random.Random(seed)
    with _frozen(model):
        bar = progress_bar(range(1, steps + 1), "prompt tuning", enabled=progress, inner=True)
        for step in bar:
            chunk = groups[int(torch.multinomial(sizes, 1, generator=generator))]
            chunk = rng.sample(chunk, len(chunk))
            tokens = torch.tensor([token_lists[i] for i in chunk], device=model.cfg.device)
            logits = model.run_with_hooks(tokens, fwd_hooks=[hook])[:, layout.site % tokens.shape[1]]
            pair = torch.stack([logits[:, zero], logits[:, one]], dim=-1).float()
            loss = torch.nn.functional.cross_entropy(pair, labels[chunk].to(pair.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % eval_every == 0 or step == steps:
                prompt.embeddings = weight.detach().clone()
                dev = accuracy(model, task, prompt=prompt, split="dev", batch_size=max(batch_size, 32), progress=False)
                history.append((step, loss.item(), dev))
                if dev > best[0]:
                    best = (dev, prompt.embeddings)
                bar.set_postfix(loss=f"{loss.item():.3f}", dev=f"{dev:.3f}")
    return SoftPrompt(best[1].cpu(), prompt.verbalizer, template, placement, best[0], history)


__all__ = ["accuracy", "margins", "train_soft_prompt"]
