"""Prompts and targets: where a model is asked for a token, and which token.

Knowledge-neuron methods always look at one place in the sequence, the *site*: the ``[MASK]`` position for an
encoder ("Paris is the capital of [MASK]."), the last position for a causal model ("The capital of France
is" -> " Paris"). A :class:`Prompt` turns text and target into model input once, checks it, and remembers
where the target is read out of the logits, so no function downstream re-tokenises or guesses positions.

Multi-token targets:
    * causal models use teacher forcing: the target's first ``k - 1`` tokens are appended to the input, and
      target token ``i`` is read from the logits at ``site + i``;
    * encoders get one ``[MASK]`` per target token (the single ``[MASK]`` in the text is widened).

Targets of several prompts (every function that takes prompts and a target, see :func:`split_targets`):
    * one target for every prompt: a str (``" Paris"``), a token id, or a **tuple** of token ids (one
      multi-token target, ``(7042, 11)``);
    * one target per prompt: a **list** with one entry per prompt, each a str, a ``[token id]`` list or a tuple
      of ids (``[" Paris", " Rome"]``, ``[[7042], [7268]]``).

    A list of bare ints whose length is the number of prompts could mean either, so it is refused with an error
    that shows both spellings; a list of ints of another length can only be one multi-token target.

Example:
    >>> p = make_prompt(model, "The capital of France is", " Paris")
    >>> p.site, p.target_ids, str(p)
    (4, (7042,), "'The capital of France is' -> ' Paris'")
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from dataclasses import dataclass, field

import torch
from jaxtyping import Int
from torch import Tensor

from kn_lens._typing import Model, check_model, is_encoder

MASK = "[MASK]"
TargetLike = str | int | Sequence[int] | None


@dataclass(frozen=True)
class Prompt:
    """A tokenised prompt with its target, ready to run.

    Attributes:
        text: the prompt text as given (encoders: with its ``[MASK]``).
        tokens: the model input, 1-D on the CPU (masks widened / target teacher-forced already).
        site: position where neurons are attributed and intervened on (mask or last prompt token).
        target_ids: the target's token ids (empty when no target was given).
        positions: for each target token, the position whose logits predict it.
        target: the target as text (decoded from ``target_ids``).
        causal: True for next-token prompts, False for masked-LM prompts.
        explicit_site: True when the site was given as ``position=`` rather than found (mask / last token).

    Example:
        >>> p = make_prompt(model, "The capital of France is", " Paris")
        >>> p.site, p.target_ids, p.positions
        (4, (7042,), (4,))
    """

    text: str
    tokens: Int[Tensor, " pos"] = field(repr=False)
    site: int
    target_ids: tuple[int, ...]
    positions: tuple[int, ...]
    target: str = ""
    causal: bool = True
    explicit_site: bool = False

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __str__(self) -> str:
        arrow = f" -> {self.target!r}" if self.target_ids else ""
        return f"{self.text!r}{arrow}"

    def with_target(self, model: Model, target: TargetLike) -> Prompt:
        """The same prompt text with another target (e.g. a counterfactual answer)."""
        return make_prompt(model, self.text, target, position=self.site if self.explicit_site else None)


def tokenizer_of(model: Model, fix: str = "pass token ids or attach one (model.set_tokenizer(...))"):
    """The model's tokenizer, or a ValueError saying it has none (``fix``: what the caller can do instead)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(f"this model has no tokenizer; {fix}")
    return tokenizer


def encode(model: Model, text: str) -> list[int]:
    """Token ids of ``text`` as the model sees it (encoders: with [CLS]/[SEP]; causal: BOS per model cfg).

    Example:
        >>> encode(model, "The capital of France is")
        [504, 3575, 282, 4649, 314]
    """
    tokenizer = tokenizer_of(model)
    if is_encoder(model):
        return list(tokenizer(text, add_special_tokens=True)["input_ids"])
    return model.to_tokens(text, prepend_bos=model.cfg.default_prepend_bos, truncate=False)[0].tolist()


def token_ids(model: Model, target: TargetLike) -> list[int]:
    """Validated token ids of a target: text (no special tokens), a token id or a list of ids; ``[]`` for None.

    Raises a clear error for an empty target, ids out of the vocabulary, or text the tokenizer does not know.

    Example:
        >>> token_ids(model, " Paris")
        [7042]
    """
    if target is None:
        return []
    d_vocab = model.cfg.d_vocab
    if isinstance(target, str):
        if target == "":
            raise ValueError("target is an empty string; pass the answer token(s), e.g. ' Paris'")
        tokenizer = tokenizer_of(model)
        ids = list(tokenizer(target, add_special_tokens=False)["input_ids"])
        if not ids:
            raise ValueError(f"target {target!r} tokenizes to nothing")
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is not None and unk in ids and target.strip() != tokenizer.unk_token:
            raise ValueError(
                f"target {target!r} is not in the model's vocabulary (it tokenizes to the unknown token); "
                "pick an answer the tokenizer knows"
            )
        return ids
    if isinstance(target, int):
        ids = [target]
    elif isinstance(target, Sequence) and not isinstance(target, bytes):
        ids = list(target)
    else:
        raise TypeError(f"target must be a str, a token id or a sequence of token ids, got {type(target).__name__}")
    if not ids:
        raise ValueError("target is an empty sequence of token ids")
    for token in ids:
        if isinstance(token, bool) or not isinstance(token, int):
            raise TypeError(f"target token ids must be ints, got {token!r}")
        if not 0 <= token < d_vocab:
            raise ValueError(f"target token id {token} is not in the vocabulary (d_vocab={d_vocab})")
    return ids


def _decode(model: Model, ids: Sequence[int]) -> str:
    tokenizer = getattr(model, "tokenizer", None)
    return tokenizer.decode(list(ids)) if tokenizer is not None and ids else ""


def make_prompt(
    model: Model,
    text: str,
    target: TargetLike = None,
    *,
    position: int | None = None,
) -> Prompt:
    """Tokenise a prompt and its target and check that they fit the model.

    Args:
        model: a ``HookedEncoder`` (text needs exactly one ``[MASK]``, unless ``position`` is given) or a
            ``HookedTransformer`` (the target continues the text).
        text: the prompt.
        target: the answer as text (mind the leading space of BPE vocabularies: ``" Paris"``), a token id,
            a list of token ids, or None (no target; the site is still the mask / last position).
        position: an explicit site instead of the mask / last position (single-token targets only). Negative
            values count from the end.

    Returns:
        A :class:`Prompt`.

    Raises:
        ValueError: empty prompt, no or several ``[MASK]`` in an encoder prompt, prompt longer than the
            context, a target that is empty, out of the vocabulary, or tokenised differently inside the
            sentence than on its own (e.g. ``"Paris"`` without its leading space for GPT-2).
        TypeError: a model kn_lens does not support, or a target of the wrong type.

    Example:
        >>> p = make_prompt(bert, "Raymond is selling [MASK] sketches.", "these")
        >>> p.site, bool(p.tokens[p.site] == bert.tokenizer.mask_token_id)
        (4, True)
    """
    check_model(model)
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("prompt is empty; pass some text")
    ids = token_ids(model, target)
    encoder = is_encoder(model)

    if position is not None:
        if isinstance(position, bool) or not isinstance(position, int):
            raise TypeError(f"position must be an int (a token index), got {position!r}")
        if len(ids) > 1:
            raise ValueError("an explicit position takes a single-token target; got a multi-token target")
        tokens = encode(model, text)
        if not -len(tokens) <= position < len(tokens):
            raise ValueError(f"position {position} is outside the prompt's {len(tokens)} tokens")
        site = position % len(tokens)
        positions = (site,)
    elif encoder:
        tokens, site, positions = _encoder_tokens(model, text, ids)
    else:
        tokens, site, positions = _causal_tokens(model, text, target, ids)

    n_ctx = model.cfg.n_ctx
    if len(tokens) > n_ctx:
        raise ValueError(f"prompt is {len(tokens)} tokens long, longer than the model's context of {n_ctx}")
    return Prompt(
        text=text,
        tokens=torch.tensor(tokens, dtype=torch.long),
        site=site,
        target_ids=tuple(ids),
        positions=tuple(positions),
        target=_decode(model, ids),
        causal=not encoder,
        explicit_site=position is not None,
    )


def _encoder_tokens(model: Model, text: str, ids: list[int]) -> tuple[list[int], int, list[int]]:
    tokenizer = tokenizer_of(model)
    mask_text = tokenizer.mask_token or MASK
    count = text.count(mask_text)
    if count != 1:
        what = "no" if count == 0 else f"{count}"
        raise ValueError(
            f"an encoder prompt needs exactly one {mask_text} where the answer goes, found {what}: {text!r} "
            "(multi-token answers widen the single mask automatically; or pass position=...)"
        )
    n = max(len(ids), 1)
    tokens = encode(model, text.replace(mask_text, " ".join([mask_text] * n)))
    mask_id = tokenizer.mask_token_id
    positions = [i for i, t in enumerate(tokens) if t == mask_id]
    if len(positions) != n:
        raise ValueError(f"could not locate the {mask_text} token(s) in the tokenised prompt {text!r}")
    if ids and isinstance(ids, list):
        filled = list(tokens)
        for pos, token in zip(positions, ids, strict=True):
            filled[pos] = token
        _check_split(model, encode(model, text.replace(mask_text, tokenizer.decode(ids))), filled, text)
    return tokens, positions[0], positions


def _causal_tokens(model: Model, text: str, target: TargetLike, ids: list[int]) -> tuple[list[int], int, list[int]]:
    prompt_tokens = encode(model, text)
    site = len(prompt_tokens) - 1
    if isinstance(target, str):
        if text[-1:].isalnum() and target[:1].isalnum():
            raise ValueError(
                f"the target {target!r} would be glued to the prompt ({text[-12:] + target!r}); causal "
                f"vocabularies carry the space on the next token: did you mean {' ' + target!r}?"
            )
        _check_split(model, encode(model, text + target), prompt_tokens + ids, text, target)
    tokens = prompt_tokens + ids[:-1]
    return tokens, site, [site + i for i in range(max(len(ids), 1))]


def _check_split(model: Model, joint: list[int], separate: list[int], text: str, target: str = "") -> None:
    if joint != separate:
        tokenizer = tokenizer_of(model)
        hint = ""
        if target and not target.startswith(" ") and not is_encoder(model):
            hint = f" (did you mean {' ' + target!r}, with a leading space?)"
        raise ValueError(
            "the target is tokenised differently inside the sentence than on its own: "
            f"{tokenizer.convert_ids_to_tokens(separate)} vs {tokenizer.convert_ids_to_tokens(joint)} "
            f"for {text!r} + {target!r}{hint}"
        )


def split_targets(targets: TargetLike | Sequence[TargetLike], n: int, what: str = "prompts") -> list[TargetLike]:
    """One target per prompt from ``targets`` as given for ``n`` prompts (see the module docstring).

    A str, an int, None or a tuple of ints is one target for every prompt; a list (or a tuple that is not all
    ints) has one entry per prompt. A list of ``n`` ints (``n > 1``) is ambiguous and refused.

    Example:
        >>> split_targets(" Paris", 2), split_targets((7042, 11), 2), split_targets([[7042], [7268]], 2)
        ([' Paris', ' Paris'], [(7042, 11), (7042, 11)], [[7042], [7268]])
        >>> split_targets([7042, 7268], 2)
        Traceback (most recent call last):
        ...
        ValueError: targets [7042, 7268] is ambiguous for 2 prompts: pass [[7042], [7268]] for one token id per ...
    """
    if isinstance(targets, list | tuple) and targets and all(_is_id(t) for t in targets):
        if isinstance(targets, list) and len(targets) == n and n > 1:
            ids = [int(t) for t in targets]
            raise ValueError(
                f"targets {ids} is ambiguous for {n} {what}: pass {[[t] for t in ids]} for one token id per "
                f"prompt, or the tuple {tuple(ids)} for one multi-token target of every prompt"
            )
        return [targets] * n
    if isinstance(targets, list | tuple):
        if len(targets) != n:
            raise ValueError(f"got {n} {what} but {len(targets)} targets; pass one target, or one per prompt")
        return list(targets)
    return [targets] * n


def one_target(target: TargetLike) -> TargetLike:
    """The target of one fact: a list of token ids is one multi-token target there (never one id per prompt), so
    it becomes the tuple :func:`split_targets` reads that way; anything else is returned as it is.

    Example:
        >>> one_target([7042, 11]), one_target(" Paris")
        ((7042, 11), ' Paris')
    """
    if isinstance(target, list) and target and all(_is_id(t) for t in target):
        return tuple(target)
    return target


def _is_id(token: object) -> bool:
    return isinstance(token, int) and not isinstance(token, bool)


def make_prompts(
    model: Model,
    texts: str | Sequence[str],
    targets: TargetLike | Sequence[TargetLike] = None,
) -> list[Prompt]:
    """Several prompts at once; ``targets`` is one target for all texts or one per text (see
    :func:`split_targets`: a tuple of ids is one multi-token target, a list has one entry per text).

    Example:
        >>> [p.site for p in make_prompts(model, ["The capital of France is", "France's capital city is"], " Paris")]
        [4, 4]
        >>> texts = ["The capital of France is", "Italy's capital is"]
        >>> [p.target for p in make_prompts(model, texts, [[7042], [7268]])]  # one token id per text
        [' Paris', ' Rome']
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("no prompts given; pass at least one prompt")
    per_text = split_targets(targets, len(texts))
    return [make_prompt(model, t, y) for t, y in zip(texts, per_text, strict=True)]


def group_by_length(prompts: Sequence[Sized]) -> dict[int, list[int]]:
    """Indices of ``prompts`` grouped by token length, so each group stacks into a batch without padding.

    Example:
        >>> for length, indices in group_by_length(prompts).items():
        ...     tokens = stack_tokens([prompts[i] for i in indices])
    """
    groups: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(len(prompt), []).append(i)
    return groups


def length_batches(items: Sequence[Sized], batch_size: int) -> list[list[int]]:
    """Indices of ``items`` (prompts, or token lists) in batches of equal length, at most ``batch_size`` each:
    :func:`group_by_length`'s groups cut into batches, in first-seen order.

    Example:
        >>> length_batches([[1, 2], [3], [4, 5], [6, 7]], 2)
        [[0, 2], [3], [1]]
    """
    return [idx[i : i + batch_size] for idx in group_by_length(items).values() for i in range(0, len(idx), batch_size)]


def stack_tokens(prompts: Sequence[Prompt], device: torch.device | str | None = None) -> Int[Tensor, "batch pos"]:
    """Stack equal-length prompts into a batch (see :func:`group_by_length`).

    Example:
        >>> stack_tokens(make_prompts(model, ["The capital of France is", "The capital of Spain is"])).shape
        torch.Size([2, 5])
    """
    lengths = {len(p) for p in prompts}
    if len(lengths) != 1:
        raise ValueError(f"prompts have different lengths {sorted(lengths)}; group them with group_by_length")
    return torch.stack([p.tokens for p in prompts]).to(device)
