"""Caching neuron activations: when does a neuron fire?

:func:`cache_mlp_post` runs prompts through the model in batches and keeps only the ``mlp_post`` activations
that were asked for (layers through ``run_with_cache(names_filter=...)``, positions by indexing right after each
batch), as a flat table of *token rows*: one row per (prompt, position), whatever the prompts' lengths.
:func:`top_activating` searches texts for the tokens where one neuron fires most, and :func:`mean_activations`
gives the per-neuron means used for mean ablation.

Positions:
    * ``"site"``: the prompt's site (``[MASK]`` for encoders, last prompt token for causal models), as
      :func:`kn_lens.prompts.make_prompt` defines it;
    * ``"all"``: every token;
    * ``"last"``: the last token of each prompt;
    * a list of ints: explicit positions (negative values count from the end of each prompt).

Example:
    >>> acts = cache_mlp_post(model, ["The capital of France is"], layers=[24], positions="all")
    >>> acts[24].shape            # [rows, d_mlp], one row per token
    torch.Size([5, 1536])
    >>> top = top_activating(model, "L24N1005", ["Paris is nice.", "I like tea."], k=1, progress=False)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from kn_lens._device import evaluating
from kn_lens._progress import progress_bar
from kn_lens._typing import HOOKS, Model, Neuron, NeuronLike, check_model, hook_name
from kn_lens.inputs import (
    PositionsLike,
    check_batch_size,
    check_count,
    prompt_positions,
    to_layers,
    to_neuron,
    to_texts_or_prompts,
)
from kn_lens.prompts import Prompt, length_batches, stack_tokens


@dataclass
class MLPPostCache:
    """``mlp_post`` activations of some layers at some positions, one row per (prompt, position).

    Attributes:
        acts: ``{layer: Float[Tensor, "rows d_mlp"]}``, only the requested layers.
        prompt_index: for each row, the index of its prompt in the input.
        position: for each row, the token position inside its prompt.
        token_id: for each row, the token at that position.
        texts: the prompt texts, in input order.

    Example:
        >>> c = cache_mlp_post(model, ["The capital of France is"], layers=[24])
        >>> c[24].shape, c.neuron("L24N1005")
        (torch.Size([1, 1536]), tensor([...]))
    """

    acts: dict[int, Float[Tensor, "rows d_mlp"]]
    prompt_index: Int[Tensor, " rows"]
    position: Int[Tensor, " rows"]
    token_id: Int[Tensor, " rows"]
    texts: list[str] = field(default_factory=list)
    hook: str = "mlp_post"

    @property
    def layers(self) -> list[int]:
        """The cached layers, ascending."""
        return sorted(self.acts)

    @property
    def hook_names(self) -> list[str]:
        """The hook points stored (``blocks.{L}.mlp.hook_post`` unless another MLP hook was cached)."""
        return [hook_name(layer, self.hook) for layer in self.layers]

    def __len__(self) -> int:
        return int(self.prompt_index.shape[0])

    def __getitem__(self, key: int | str) -> Float[Tensor, "rows d_mlp"]:
        """``cache[24]`` or ``cache["blocks.24.mlp.hook_post"]``."""
        if isinstance(key, str):
            for layer, name in zip(self.layers, self.hook_names, strict=True):
                if name == key:
                    return self.acts[layer]
            raise KeyError(f"{key!r} is not cached; cached hook points: {self.hook_names}")
        if key not in self.acts:
            raise KeyError(f"layer {key} is not cached; cached layers: {self.layers}")
        return self.acts[key]

    def stack(self) -> Float[Tensor, "rows layer d_mlp"]:
        """All cached layers in one tensor (layer axis in :attr:`layers` order)."""
        return torch.stack([self.acts[layer] for layer in self.layers], dim=1)

    def neuron(self, neuron: NeuronLike) -> Float[Tensor, " rows"]:
        """One neuron's activation on every row."""
        layer, index = to_neuron(neuron)
        return self[layer][:, index]


@evaluating
@torch.inference_mode()
def cache_mlp_post(
    model: Model,
    prompts: str | Prompt | Sequence[str | Prompt],
    *,
    layers: int | Iterable[int] | None = None,
    positions: PositionsLike = "site",
    batch_size: int = 32,
    progress: bool = True,
    hook: str = "mlp_post",
) -> MLPPostCache:
    """Cache ``mlp_post`` activations of the requested layers at the requested positions, and nothing else.

    Prompts are grouped by token length (no padding) and run ``batch_size`` at a time with
    ``model.run_with_cache(names_filter=...)`` restricted to the requested layers' ``mlp_post`` hooks; the
    requested positions are picked out of each batch before the next one runs.

    Args:
        model: a ``HookedTransformer`` or ``HookedEncoder``.
        prompts: texts or :class:`~kn_lens.prompts.Prompt` objects (encoder texts need a ``[MASK]`` only for
            ``positions="site"``).
        layers: None (all), one layer or several.
        positions: ``"site"`` (mask / last prompt token), ``"all"``, or explicit positions (negative from the end).
        batch_size: prompts per forward pass.
        progress: show a progress bar.
        hook: the MLP hook point to cache (``"mlp_post"``, or ``"mlp_pre"`` / ``"mlp_pre_linear"``).

    Returns:
        An :class:`MLPPostCache` with one row per (prompt, position), in prompt order then position order
        (activations as float32 on the CPU, whatever the model's dtype and device).

    Example:
        >>> c = cache_mlp_post(model, ["The capital of France is"], layers=[23, 24])
        >>> c[24].shape, c.hook_names
        (torch.Size([1, 1536]), ['blocks.23.mlp.hook_post', 'blocks.24.mlp.hook_post'])
    """
    check_model(model)
    layers = to_layers(model, layers)
    batch_size = check_batch_size(batch_size)
    if hook not in HOOKS:
        raise ValueError(f"unknown hook point {hook!r}; choose one of {', '.join(HOOKS)}")
    wanted = {hook_name(layer, hook): layer for layer in layers}
    missing = [name for name in wanted if name not in model.hook_dict]
    if missing:
        raise ValueError(f"this model has no hook point {missing[0]}; cache 'mlp_post' (or 'mlp_pre') instead")
    items = to_texts_or_prompts(model, prompts, positions)
    pos_lists = [prompt_positions(p, positions) for p in items]
    per_prompt: list[dict[int, Tensor] | None] = [None] * len(items)
    batches = length_batches(items, batch_size)
    for chunk in progress_bar(batches, "caching mlp_post", enabled=progress, min_items=2):
        tokens = stack_tokens([items[i] for i in chunk], model.cfg.device)
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in wanted)
        for row, i in enumerate(chunk):
            pos = torch.tensor(pos_lists[i], device=tokens.device)
            per_prompt[i] = {layer: cache[name][row, pos].float().cpu() for name, layer in wanted.items()}
        del cache
    acts = {layer: torch.cat([p[layer] for p in per_prompt]) for layer in layers}  # type: ignore[index]
    prompt_index = torch.cat([torch.full((len(pl),), i) for i, pl in enumerate(pos_lists)])
    position = torch.cat([torch.tensor(pl, dtype=torch.long) for pl in pos_lists])
    token_id = torch.cat([items[i].tokens[torch.tensor(pl)] for i, pl in enumerate(pos_lists)])
    return MLPPostCache(acts, prompt_index, position, token_id, [p.text for p in items], hook)


def mean_activations(
    model: Model,
    prompts: str | Prompt | Sequence[str | Prompt],
    *,
    layers: int | Iterable[int] | None = None,
    positions: PositionsLike = "site",
    batch_size: int = 32,
    progress: bool = True,
    hook: str = "mlp_post",
) -> dict[int, Float[Tensor, " d_mlp"]]:
    """Mean ``mlp_post`` activation of every neuron over prompts and positions (for mean ablation).

    Each (prompt, position) row counts once, so with ``positions="all"`` longer prompts weigh more.

    Args:
        model, prompts, layers, positions, batch_size, progress, hook: as in :func:`cache_mlp_post`.

    Returns:
        ``{layer: Float[Tensor, "d_mlp"]}`` for the requested layers (on the CPU); ``means[L][i]`` is the mean of
        neuron ``L{L}N{i}``.

    Example:
        >>> means = mean_activations(model, paraphrases, layers=[24])
        >>> means[24].shape
        torch.Size([1536])
    """
    cache = cache_mlp_post(
        model, prompts, layers=layers, positions=positions, batch_size=batch_size, progress=progress, hook=hook
    )
    return {layer: cache[layer].mean(0) for layer in cache.layers}


@dataclass
class TopActivating:
    """Where one neuron fires most: the ``k`` texts with the highest peak activation (see :func:`top_activating`).

    Attributes:
        neuron: the neuron.
        texts: the top texts, strongest first.
        tokens: each text's tokens as strings.
        activations: each text's per-token activations (1-D tensors, same lengths as ``tokens``).
        max_positions: for each text, the position of its peak activation.
        largest: True if the search was for the most positive activations, False for the most negative.

    Example:
        >>> top = top_activating(model, "L24N1005", ["Paris is nice.", "I like tea.", "Rome, Italy"], k=2)
        >>> top.to_frame()[["rank", "text", "token"]]
           rank            text  token
        0     0 ...
    """

    neuron: Neuron
    texts: list[str]
    tokens: list[list[str]]
    activations: list[Float[Tensor, " pos"]]
    max_positions: list[int]
    largest: bool = True

    @property
    def max_activations(self) -> list[float]:
        """Peak activation of each text (the most negative one when ``largest=False``)."""
        return [float(a[p]) for a, p in zip(self.activations, self.max_positions, strict=True)]

    def to_frame(self) -> pd.DataFrame:
        """One row per text: rank, text, token (the peak), position, activation."""
        return pd.DataFrame(
            dict(
                rank=range(len(self.texts)),
                text=self.texts,
                token=[toks[p] for toks, p in zip(self.tokens, self.max_positions, strict=True)],
                position=self.max_positions,
                activation=self.max_activations,
            )
        )


def top_activating(
    model: Model,
    neuron: NeuronLike,
    texts: str | Sequence[str],
    k: int = 10,
    *,
    largest: bool = True,
    batch_size: int = 32,
    progress: bool = True,
) -> TopActivating:
    """The texts (and tokens) where a neuron fires most, with its activation on every token.

    Every text is run whole (all positions); a text's strength is its peak activation.

    Args:
        model: the model.
        neuron: ``Neuron``, ``(layer, index)`` or ``"L24N1005"``.
        texts: the texts to search.
        k: how many texts to return (at most ``len(texts)``).
        largest: True for the most positive activations; False for the most negative (gated / GELU neurons
            can fire negatively).
        batch_size: texts per forward pass.
        progress: show a progress bar.

    Returns:
        A :class:`TopActivating` (draw it with :func:`kn_lens.plotting.activation_highlight`).

    Example:
        >>> top = top_activating(model, "L24N1005", ["Paris is the capital of France.", "I like tea."], k=1)
        >>> top.to_frame()
           rank                             text token  position  activation
        0     0  Paris is the capital of France.    of         4    2.035...
    """
    check_model(model)
    neuron = to_neuron(neuron, model)
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty; pass at least one text to search")
    k = check_count(k, "k", minimum=1)
    cache = cache_mlp_post(
        model, texts, layers=[neuron.layer], positions="all", batch_size=batch_size, progress=progress
    )
    values = cache.neuron(neuron)
    sign = 1.0 if largest else -1.0
    per_text = [values[cache.prompt_index == i] for i in range(len(texts))]
    peaks = torch.stack([(sign * a).max() for a in per_text])
    order = peaks.argsort(descending=True)[: min(k, len(texts))].tolist()
    tokenizer = model.tokenizer
    tokens = [[tokenizer.decode([t]) for t in cache.token_id[cache.prompt_index == i].tolist()] for i in order]
    return TopActivating(
        neuron=neuron,
        texts=[cache.texts[i] for i in order],
        tokens=tokens,
        activations=[per_text[i] for i in order],
        max_positions=[int((sign * per_text[i]).argmax()) for i in order],
        largest=largest,
    )


__all__: list[str] = [
    "MLPPostCache",
    "TopActivating",
    "cache_mlp_post",
    "mean_activations",
    "top_activating",
]
