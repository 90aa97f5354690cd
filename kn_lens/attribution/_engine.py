"""What the fast paths' two backends share: the clean state, the pack, the :class:`Engine` and the objective.

:mod:`~kn_lens.attribution._fast` drives the fast path (packing, the memory plan, the quadrature, the deltas,
the ablations); it asks an :class:`Engine` for every step that touches the model: the clean pass, stacking a
pack, a row group entering the residual stream, one block, the output head. :mod:`~kn_lens.attribution._hooked`
makes a ``HookedTransformer``/``HookedEncoder``'s engine (blocks computed from their weights),
:mod:`~kn_lens.attribution._bridge` a ``TransformerBridge``'s (its own blocks rerun).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from kn_lens._typing import Model
from kn_lens.attribution._common import at_site
from kn_lens.prompts import Prompt
from kn_lens.scoring import Objective, objective_from_logits


@dataclass
class Clean:
    """What one clean pass leaves behind for the fast path."""

    start: int  # first recomputed position (causal: the site; encoders: 0)
    site: int  # the site, relative to ``start``
    out_prompt: Prompt  # the prompt with target positions relative to ``start`` (for objective_from_logits)
    resid: dict[int, Tensor]  # layer -> residual after block L (encoders: before its final LayerNorm) [Q, d_model]
    acts: dict[str, Tensor]  # "pre" / "pre_linear" / "post" -> [n_layers, d_mlp], "mid" -> [n_layers, d_model]
    keys: list[Tensor]  # per block: clean keys of the positions before ``start`` (causal; layout: the engine's)
    values: list[Tensor]
    f_clean: Tensor  # objective of the clean run (scalar)
    prompt: Prompt  # the prompt as given (a callable metric reads it)
    prefix_logits: Tensor | None = None  # clean logits of positions < start [start, d_vocab] (callable metrics)


def relative(prompt: Prompt, start: int) -> Prompt:
    """``prompt`` with its target positions counted from ``start`` (the first recomputed position)."""
    return dataclasses.replace(prompt, positions=tuple(p - start for p in prompt.positions))


@dataclass
class Pack:
    """The clean state of the prompts whose rows share passes, stacked so every row finds its own prompt's."""

    cleans: list[Clean]
    keys: list[Tensor]  # per block: clean keys of the prefixes, a leading prompt dimension (causal)
    values: list[Tensor]
    mask: Tensor | None  # [n_prompts, prefix + recomputed]: 0 marks left padding; None when no prompt is padded


@dataclass(frozen=True)
class Engine:
    """The backend-specific steps of the fast path; everything else (packing, memory plan, quadrature, deltas) is
    shared. ``_hooked.engine()`` and ``_bridge.engine()`` give a model's."""

    clean_pass: Callable  # (model, prompt, layers, objective) -> Clean
    stack: Callable  # (model, cleans) -> Pack
    enter: Callable  # (model, clean, layer, hook, x [rows, d_mlp]) -> residual leaving block ``layer``
    step: Callable  # (model, pack, block_index, resid, row_prompt) -> residual leaving block ``block_index``
    unembed: Callable  # (model, final residual [..., d_model]) -> logits [..., d_vocab]
    can_pad: Callable  # (model) -> whether causal prefixes of different lengths may share passes


def with_site(base: Tensor, site: int, row_values: Tensor) -> Tensor:
    """``rows`` copies of the clean residual ``base`` ([pos, d]) with ``row_values`` ([rows, d]) at the site."""
    return at_site(base.expand(row_values.shape[0], -1, -1), site, row_values)


def per_row(t: Tensor, rows: int, row_prompt: Tensor | None) -> Tensor:
    """A prompt-stacked tensor ``[n_prompts, ...]`` for each of ``rows`` rows: expanded (one prompt, no copy), or
    indexed by each row's prompt."""
    if row_prompt is None:
        return t.expand(rows, *[-1] * (t.ndim - 1))
    return t[row_prompt]


def left_padded(parts: list[Tensor], prefix: int, dim: int) -> Tensor:
    """Per-prompt tensors stacked with a leading prompt dimension, dimension ``dim`` (of each part) padded to
    ``prefix`` with zeros in front."""
    shape = list(parts[0].shape)
    shape[dim] = prefix
    out = parts[0].new_zeros(len(parts), *shape)
    for i, part in enumerate(parts):
        out[i].narrow(dim, prefix - part.shape[dim], part.shape[dim]).copy_(part)
    return out


def row_objective(
    model: Model,
    resid: Tensor,
    cleans: list[Clean],
    row_prompt: list[int] | None,
    objective: Objective,
    unembed: Callable,
) -> Tensor:
    """Objective of every row from the last residual (positions from each prompt's ``start`` on); ``row_prompt``
    gives each row's prompt in ``cleans`` (None: all rows belong to ``cleans[0]``). Preset objectives run the final
    norm / MLM head and the unembedding (``unembed``: the engine's head) at the target positions only (the same
    positions for every prompt of a pack); a callable metric (one prompt at a time) gets the full logits, the clean
    logits of positions before ``start``, which cannot change, in front."""
    clean = cleans[0]
    if callable(objective):
        assert row_prompt is None, "a callable metric is attributed one prompt at a time"
        logits = unembed(model, resid)
        if clean.prefix_logits is not None:
            prefix = clean.prefix_logits.to(logits.dtype).expand(logits.shape[0], -1, -1)
            logits = torch.cat([prefix, logits], dim=1)
        return objective_from_logits(logits, clean.prompt, objective)
    positions = torch.tensor(clean.out_prompt.positions, device=resid.device)
    logits = unembed(model, resid[:, positions])
    at = tuple(range(len(positions)))
    if row_prompt is None:
        return objective_from_logits(logits, dataclasses.replace(clean.out_prompt, positions=at), objective)
    outs = [dataclasses.replace(c.out_prompt, positions=at) for c in cleans]
    return objective_from_logits(logits, [outs[i] for i in row_prompt], objective)
