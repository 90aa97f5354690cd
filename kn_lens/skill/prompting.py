"""Prompts for skill neurons: where the prompt tokens are, and how prompted texts are run.

Context:
    Skill neurons are read *at the prompt*, not at the input: Wang et al. prompt-tune a frozen model (a few
    learned embeddings, the **soft prompt**, in front of every input) and look at the MLP neurons at those
    prompt positions. kn_lens offers two kinds of prompt, used alike by every later step:

    * :class:`HardPrompt`: a text template (``"Review: {text}\\nSentiment:"``); its own tokens are the prompt
      positions. No training; a quick way to look at a pretrained model.
    * :class:`SoftPrompt`: ``n_tokens`` embeddings written over reserved token slots by a hook on the embedding
      output (``hook_embed``); learned by :func:`kn_lens.skill.train_soft_prompt`. Model weights never change.

    Either one gives a :class:`Layout` per model: the token ids around the text, the prompt positions, and the
    *site* where the verbalizer (two words, one per label) is read: the ``[MASK]`` of an encoder, the next token
    of a causal model.

Intuition:
    Positions in a layout count from the start (>= 0) or from the end (< 0), so one layout serves texts of every
    length: the template tokens after the text are always ``-k..-1``. Texts are run in batches of equal token
    length (no padding, so no attention mask and no shifted positions to get wrong).

Caveats:
    A causal model's token ``i`` sees only tokens ``<= i``. Template tokens (or a soft prompt) *before* the text
    cannot depend on it, so only those after the text are prompt positions; with none there, the text's last
    token is used. A BPE template that ends in a space before ``{text}`` hands the space to the text's first
    token, as the tokenizer would.

Example:
    >>> prompt = HardPrompt("Review: {text}\\nSentiment:", (" negative", " positive"))
    >>> layout = prompt.layout(model)
    >>> layout.positions, layout.site  # SmolLM2: the 4 template tokens after the review; the next token
    ((-4, -3, -2, -1), -1)
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from kn_lens import backends
from kn_lens._progress import progress_bar
from kn_lens._typing import Model, check_model, hook_name, is_encoder
from kn_lens.inputs import check_batch_size, check_finite
from kn_lens.prompts import length_batches, tokenizer_of
from kn_lens.scoring import check_hooks


class Layout(NamedTuple):
    """Where things are in a prompted input; positions >= 0 count from the start, < 0 from the end.

    Attributes:
        prefix: token ids before the text (``[CLS]``/BOS, template tokens, reserved soft-prompt slots).
        suffix: token ids after the text (template tokens, ``[MASK]``, ``[SEP]``, reserved slots).
        positions: the prompt positions (where skill neurons are read and perturbed).
        site: where the verbalizer is read (the ``[MASK]``, or the last position of a causal model).
        soft: the reserved positions a soft prompt writes over (empty for a hard prompt).
        space: whether the text gets a leading space (BPE vocabularies after a template word).
    """

    prefix: list[int]
    suffix: list[int]
    positions: tuple[int, ...]
    site: int
    soft: tuple[int, ...]
    space: bool


def _tokenizer(model: Model):
    return tokenizer_of(model, "attach one (model.set_tokenizer(...))")


def _piece(model: Model, text: str) -> list[int]:
    return list(_tokenizer(model)(text, add_special_tokens=False)["input_ids"]) if text else []


def _reserved_id(model: Model) -> int:
    tokenizer = _tokenizer(model)
    for name in ("pad_token_id", "unk_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


def _split_template(template: str) -> tuple[str, str]:
    if not isinstance(template, str):
        raise TypeError(f"template must be a str, got {type(template).__name__}")
    if template.count("{text}") != 1:
        raise ValueError(f"a template needs exactly one {{text}} where the input goes, got {template!r}")
    before, after = template.split("{text}")
    return before, after


def _layout(model: Model, template: str, n_soft: int, placement: str) -> Layout:
    """The layout of ``template`` with ``n_soft`` reserved slots at ``placement`` ("start"/"end")."""
    check_model(model)
    tokenizer = _tokenizer(model)
    before, after = _split_template(template)
    space = False
    if not is_encoder(model) and before.endswith(" "):
        before, space = before[:-1], True  # BPE: the space belongs to the text's first token
    pre, post = _piece(model, before), _piece(model, after)
    reserved = [_reserved_id(model)] * n_soft
    if is_encoder(model):
        mask_id = tokenizer.mask_token_id
        if mask_id in pre:
            raise ValueError(f"put the {tokenizer.mask_token} after {{text}} in the template {template!r}")
        if mask_id not in post:
            post = [*post, mask_id]
        if post.count(mask_id) != 1:
            raise ValueError(f"the template {template!r} has more than one {tokenizer.mask_token}")
        if placement == "start":  # the paper's place, right after [CLS]
            prefix = [tokenizer.cls_token_id, *reserved, *pre]
            suffix = [*post, tokenizer.sep_token_id]
            soft = tuple(range(1, 1 + n_soft))
        else:  # before [SEP]: the text keeps its positions (small models trained at fixed positions need that)
            prefix = [tokenizer.cls_token_id, *pre]
            suffix = [*post, *reserved, tokenizer.sep_token_id]
            soft = tuple(range(-1 - n_soft, -1))
        site = post.index(mask_id) - len(suffix)
        template_positions = tuple(range(1, len(prefix))) + tuple(range(-len(suffix), -1 - n_soft))
    else:
        bos = [tokenizer.bos_token_id] if model.cfg.default_prepend_bos and tokenizer.bos_token_id is not None else []
        if placement == "start":
            prefix, suffix = [*bos, *reserved, *pre], list(post)
            soft = tuple(range(len(bos), len(bos) + n_soft))
        else:
            prefix, suffix = [*bos, *pre], [*post, *reserved]
            soft = tuple(range(-n_soft, 0))
        site = -1
        # template tokens before the text cannot see it (causal attention): only those after it are prompt positions
        template_positions = tuple(range(-len(suffix), -n_soft if placement == "end" and n_soft else 0))
        if not template_positions:
            template_positions = (-1 - (n_soft if placement == "end" else 0),)
    positions = soft if n_soft else template_positions
    return Layout(prefix, suffix, positions, site, soft, space)


def _verbalizer_ids(model: Model, verbalizer: Sequence[str]) -> tuple[int, int]:
    if isinstance(verbalizer, str) or len(verbalizer) != 2:
        raise ValueError(f"verbalizer must be two words (label 0, label 1), got {verbalizer!r}")
    ids = []
    for word in verbalizer:
        if not isinstance(word, str) or not word:
            raise TypeError(f"verbalizer words must be non-empty str, got {word!r}")
        piece = _piece(model, word)
        unk = getattr(_tokenizer(model), "unk_token_id", None)
        if len(piece) != 1 or piece[0] == unk:
            hint = "" if is_encoder(model) or word.startswith(" ") else f" (did you mean {' ' + word!r}?)"
            raise ValueError(f"verbalizer word {word!r} is not a single token of this model{hint}")
        ids.append(piece[0])
    if ids[0] == ids[1]:
        raise ValueError(f"the verbalizer's two words are the same token: {verbalizer!r}")
    return ids[0], ids[1]


@dataclass
class HardPrompt:
    """A text template: ``"{text}"`` marks the input; its own tokens are the prompt positions.

    Encoders read the verbalizer at the template's ``[MASK]`` (appended after the template when it has none);
    causal models read it at the next token after the whole input. For causal models only the template tokens
    *after* the text count as prompt positions (those before cannot see the input); with none there, the last
    token of the text is used.

    Attributes:
        template: e.g. ``"Review: {text}\\nSentiment (positive or negative):"`` (causal) or
            ``"{text} It was [MASK]."`` (encoder).
        verbalizer: the words for label 0 and label 1 (single tokens; mind the leading space of BPE vocabularies).

    Example:
        >>> prompt = HardPrompt("Review: {text}\\nSentiment:", (" negative", " positive"))
        >>> prompt.layout(model).positions  # SmolLM2: "\\n", "Sent", "iment", ":" after the text
        (-4, -3, -2, -1)
        >>> [model.to_string(t) for t in prompt.to_tokens(model, "A fine film.")[0]]
        ['Review', ':', ' A', ' fine', ' film', '.', '\\n', 'Sent', 'iment', ':']
        >>> prompt = HardPrompt("{text} It was [MASK].", ("violin", "piano"))  # an encoder: BERT
        >>> prompt.layout(bert).positions, prompt.layout(bert).site
        ((-5, -4, -3, -2), -3)
    """

    template: str = "{text}"
    verbalizer: tuple[str, str] = (" negative", " positive")

    def __post_init__(self) -> None:
        _split_template(self.template)
        self.verbalizer = tuple(self.verbalizer)  # type: ignore[assignment]

    def layout(self, model: Model) -> Layout:
        """Where the prompt, the text and the verbalizer site are for ``model``."""
        return _layout(model, self.template, 0, "start")

    def hooks(self, model: Model | None = None) -> list:
        """No hooks: a hard prompt is all text."""
        return []

    def to_tokens(self, model: Model, texts: str | Sequence[str]) -> list[Tensor]:
        """The model input of each text (1-D token tensors; lengths differ between texts)."""
        return _to_tokens(model, self, texts)


def _columns(positions: Sequence[int], n_pos: int, device: torch.device | str | None = None) -> Tensor:
    """Layout positions (>= 0 from the start, < 0 from the end) as the columns of a batch ``n_pos`` tokens wide."""
    return torch.tensor([p % n_pos for p in positions], device=device, dtype=torch.long)


def _soft_hook(embed: Float[Tensor, "batch pos d_model"], hook: Any, *, weight: Tensor, soft: tuple[int, ...]):
    index = _columns(soft, embed.shape[1], embed.device)
    out = embed.clone()
    out[:, index] = weight.to(device=embed.device, dtype=embed.dtype)
    return out


def _embed_hook_name(model: Model) -> str:
    if backends.is_bridge(model):  # its hook_embed alias is after the embedding LayerNorm for BERT/RoBERTa
        return backends.token_embed_hook(model)
    names = getattr(model, "hook_dict", {})
    for name in ("hook_embed", "embed.hook_embed"):
        if name in names:
            return name
    raise ValueError("cannot find the token-embedding hook point (hook_embed) on this model")


def _embedding_matrix(model: Model) -> Tensor:
    weight = getattr(model, "W_E", None)
    if not isinstance(weight, Tensor) or weight.ndim != 2:
        raise TypeError("this model exposes no token embedding matrix W_E [d_vocab, d_model]")
    return weight


@dataclass
class SoftPrompt:
    """A learned soft prompt: ``n_tokens`` embeddings written over reserved positions by a ``hook_embed`` hook.

    Make one with :func:`train_soft_prompt`; use it as the ``prompt=`` of :func:`accuracy`,
    :func:`predictivity` and friends, or by hand: ``soft.to_tokens(model, texts)`` builds inputs with the
    reserved slots, and ``model.run_with_hooks(tokens, fwd_hooks=soft.hooks())`` (or ``with
    soft.applied(model):``) writes the prompt in. Model weights are never touched.

    Attributes:
        embeddings: ``[n_tokens, d_model]``.
        verbalizer: the words for label 0 and label 1.
        template: the text template around the input (``"{text}"`` by default).
        placement: ``"start"`` (after ``[CLS]`` / BOS) or ``"end"`` (after the input; causal models' default).
        dev_accuracy: dev accuracy of the kept embeddings (NaN if unknown).
        history: ``[(step, loss, dev_accuracy), ...]`` from training.

    Example:
        ``soft`` is trained on the tiny BERT as in :func:`train_soft_prompt`:

        >>> soft
        SoftPrompt(n_tokens=4, d_model=32, verbalizer=('violin', 'piano'), placement='end', dev_accuracy=1.000)
        >>> bert.tokenizer.convert_ids_to_tokens(soft.to_tokens(bert, "Emma is buying the books.")[0])
        ['[CLS]', 'Emma', 'is', 'buying', 'the', 'books', '.', '[MASK]', '[PAD]', '[PAD]', '[PAD]', '[PAD]', '[SEP]']
        >>> path = soft.save(getfixture("tmp_path") / "soft.pt")
        >>> torch.equal(SoftPrompt.load(path).embeddings, soft.embeddings)
        True
    """

    embeddings: Tensor
    verbalizer: tuple[str, str] = (" negative", " positive")
    template: str = "{text}"
    placement: Literal["start", "end"] = "start"
    dev_accuracy: float = math.nan
    history: list[tuple[int, float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.embeddings, Tensor) or self.embeddings.ndim != 2 or self.embeddings.shape[0] < 1:
            raise ValueError("embeddings must be a [n_tokens, d_model] tensor with n_tokens >= 1")
        if not self.embeddings.is_floating_point():
            raise TypeError(f"embeddings must be a floating-point tensor, got {self.embeddings.dtype}")
        check_finite(self.embeddings.detach(), "the soft prompt's embeddings")
        if self.placement not in ("start", "end"):
            raise ValueError(f"placement must be 'start' or 'end', got {self.placement!r}")
        _split_template(self.template)
        self.verbalizer = tuple(self.verbalizer)  # type: ignore[assignment]

    @property
    def n_tokens(self) -> int:
        """Number of virtual tokens."""
        return int(self.embeddings.shape[0])

    def layout(self, model: Model) -> Layout:
        """Where the reserved slots, the text and the verbalizer site are for ``model``."""
        if self.embeddings.shape[1] != model.cfg.d_model:
            raise ValueError(
                f"this soft prompt has d_model={self.embeddings.shape[1]}, the model {model.cfg.d_model}; "
                "it was trained on another model"
            )
        return _layout(model, self.template, self.n_tokens, self.placement)

    def hooks(self, model: Model) -> list:
        """``[(hook_embed name, fn)]``: writes the embeddings over the reserved positions of any batch.

        The reserved positions depend on the model kind (after ``[CLS]``/BOS, before ``[SEP]``, or at the end)
        but not on the input's length, so the same hooks serve every input built by :meth:`to_tokens`.
        """
        check_model(model)
        soft = self.layout(model).soft
        return [(_embed_hook_name(model), functools.partial(_soft_hook, weight=self.embeddings.detach(), soft=soft))]

    @contextlib.contextmanager
    def applied(self, model: Model) -> Iterator[Model]:
        """``with soft.applied(model): model(tokens)``: the prompt's hook, removed on exit."""
        with model.hooks(fwd_hooks=self.hooks(model)):
            yield model

    def to_tokens(self, model: Model, texts: str | Sequence[str]) -> list[Tensor]:
        """Each text's model input with the reserved slots (1-D token tensors)."""
        return _to_tokens(model, self, texts)

    def save(self, path: str | Path) -> Path:
        """Save to a ``.pt`` file (embeddings and settings; no model weights)."""
        path = Path(path)
        state = dict(
            embeddings=self.embeddings.detach().cpu(),
            verbalizer=list(self.verbalizer),
            template=self.template,
            placement=self.placement,
            dev_accuracy=self.dev_accuracy,
            history=[list(h) for h in self.history],
            kind="kn_lens.SoftPrompt",
        )
        torch.save(state, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SoftPrompt:
        """Load a soft prompt written by :meth:`save`; a damaged or foreign file is a ``ValueError`` naming it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no soft prompt file at {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle, zip and torch errors of a damaged file all differ
            raise ValueError(f"{path} is not a readable kn_lens soft prompt file ({type(error).__name__})") from None
        if not isinstance(state, dict) or state.get("kind") != "kn_lens.SoftPrompt":
            raise ValueError(f"{path} is not a kn_lens soft prompt file")
        missing = [k for k in ("embeddings", "verbalizer", "template", "placement", "dev_accuracy", "history")
                   if k not in state]  # fmt: skip
        if missing:
            raise ValueError(f"{path} is a damaged soft prompt file: it lacks {missing}")
        try:
            return cls(
                state["embeddings"],
                tuple(state["verbalizer"]),  # type: ignore[arg-type]
                state["template"],
                state["placement"],
                float(state["dev_accuracy"]),
                [tuple(h) for h in state["history"]],  # type: ignore[misc]
            )
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path} holds an invalid soft prompt: {error}") from None

    def __repr__(self) -> str:
        return (
            f"SoftPrompt(n_tokens={self.n_tokens}, d_model={self.embeddings.shape[1]}, verbalizer={self.verbalizer}, "
            f"placement={self.placement!r}, dev_accuracy={self.dev_accuracy:.3f})"
        )


PromptLike = HardPrompt | SoftPrompt | str | None


def as_prompt(model: Model, prompt: PromptLike, verbalizer: Sequence[str] | None = None) -> HardPrompt | SoftPrompt:
    """``None`` -> the plain ``"{text}"`` template; a str -> a :class:`HardPrompt`; prompts pass through."""
    if prompt is None:
        prompt = "{text}"
    if isinstance(prompt, str):
        default = ("negative", "positive") if is_encoder(model) else (" negative", " positive")
        return HardPrompt(prompt, tuple(verbalizer or default))  # type: ignore[arg-type]
    if not isinstance(prompt, HardPrompt | SoftPrompt):
        raise TypeError(
            f"prompt must be a HardPrompt, a SoftPrompt, a template str or None, got {type(prompt).__name__}"
        )
    return prompt


def _to_tokens(model: Model, prompt: HardPrompt | SoftPrompt, texts: str | Sequence[str]) -> list[Tensor]:
    layout = prompt.layout(model)
    return [torch.tensor(ids) for ids in _encode(model, layout, [texts] if isinstance(texts, str) else list(texts))]


def _encode(model: Model, layout: Layout, texts: Sequence[str]) -> list[list[int]]:
    pieces = [(" " + t if layout.space else t) for t in texts]
    body = _tokenizer(model)(list(pieces), add_special_tokens=False)["input_ids"] if pieces else []
    n_ctx = model.cfg.n_ctx
    out = []
    for text, ids in zip(texts, body, strict=True):
        tokens = [*layout.prefix, *ids, *layout.suffix]
        if len(tokens) > n_ctx:
            raise ValueError(f"{text[:40]!r}... is {len(tokens)} tokens with its prompt, over the context of {n_ctx}")
        out.append(tokens)
    return out


def _batches(token_lists: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Indices of ``token_lists`` in batches of equal length (at most ``batch_size`` each), in first-seen order."""
    batch_size = check_batch_size(batch_size)
    return length_batches(token_lists, batch_size)


def _check_fwd_hooks(model: Model, fwd_hooks: Any) -> list:
    """The caller's hooks as a list, checked before anything runs (:func:`kn_lens.scoring.check_hooks`)."""
    hooks = list(fwd_hooks or [])
    check_hooks(model, hooks)
    return hooks


def _keep(activation: Tensor, hook: Any, *, store: dict[int, Tensor], layer: int, positions: Tensor) -> None:
    store[layer] = activation[:, positions].float()


def _run(
    model: Model,
    prompt: HardPrompt | SoftPrompt,
    texts: Sequence[str],
    *,
    batch_size: int,
    fwd_hooks: Sequence = (),
    capture: Sequence[int] = (),
    progress: bool = False,
    desc: str = "",
) -> Iterator[tuple[list[int], Tensor, Tensor | None]]:
    """Run prompted texts in equal-length batches; yield ``(indices, site logits [b, vocab], acts or None)``.

    ``acts`` is ``[b, n_prompt_positions, len(capture), d_mlp]``: the ``mlp_post`` of the ``capture`` layers at
    the prompt positions, read after the prompt's and the caller's hooks.
    """
    layout = prompt.layout(model)
    token_lists = _encode(model, layout, texts)
    batches = _batches(token_lists, batch_size)
    hooks = list(prompt.hooks(model)) + list(fwd_hooks)
    for chunk in progress_bar(batches, desc, enabled=progress, inner=True, min_items=2):
        tokens = torch.tensor([token_lists[i] for i in chunk], device=model.cfg.device)
        n_pos = tokens.shape[1]
        positions = _columns(layout.positions, n_pos, tokens.device)
        captured: dict[int, Tensor] = {}
        capture_hooks = [
            (hook_name(layer), functools.partial(_keep, store=captured, layer=layer, positions=positions))
            for layer in capture
        ]
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks + capture_hooks)
        acts = torch.stack([captured[layer] for layer in capture], dim=2).cpu() if capture else None
        yield chunk, logits[:, layout.site % n_pos].float(), acts


__all__ = ["HardPrompt", "Layout", "PromptLike", "SoftPrompt", "as_prompt"]
