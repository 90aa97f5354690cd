"""The logit lens on neurons: what a neuron *writes*, read in the vocabulary.

Context:
    An MLP neuron ``n`` of layer ``L`` adds ``a_n * W_out[L][n]`` to the residual stream, where ``a_n`` is its
    activation (the ``mlp_post`` hook) and ``W_out[L][n]`` its *value vector* (Geva et al. 2021, 2022). Reading
    that vector with the unembedding tells which next tokens the neuron promotes when it fires positively (the
    top tokens) and which it suppresses (the bottom tokens; the roles swap when the activation is negative,
    which gated SiLU and GELU neurons allow).

Intuition:
    ``W_out[L][n] @ W_U`` is the first thing to try, but the residual stream passes through a final norm before
    the unembedding, and that norm has a per-dimension weight: a direction the norm's weight shrinks is read
    less than ``W_U`` alone suggests. :func:`decode` therefore pushes the value vector through the norm exactly
    as the model would (centre it for LayerNorm, divide by its own scale, multiply by the norm's weight) and
    leaves out the additive terms (norm bias, ``b_U``), which are the same for every direction and would only
    shift every neuron's table by the same token-frequency prior.

Caveats:
    * The lens shows the *direct* path only. A neuron of an early layer mostly acts through later layers, so
      its table is often noise; late-layer neurons read best.
    * BERT (``HookedEncoder``) is post-LN and has a non-linear MLM head (dense + GELU + LayerNorm) between the
      last residual stream and ``W_U``. ``through="unembed"`` skips the dense + GELU and reads the direction
      straight through ``W_U`` with the head LayerNorm's weight folded in (a linear lens);
      ``through="mlm_head"`` (the default for encoders) feeds the direction, as if it were the whole residual
      stream, through the last block's output LayerNorm and the full MLM head (exact for that input, but not
      additive across neurons). Figures say which one they show.
    * :func:`direct_effect` measures how much of a prediction's logit a neuron contributes along that direct
      path in an actual forward pass, with the norm scales frozen at their clean values (the TransformerLens
      convention for direct logit attribution). For a neuron of the last layer it equals the logit change when
      only that neuron is zero-ablated and the final norm's scale is held fixed.

Example:
    >>> model = kn_lens.load_model()
    >>> decode(model, "L24N1005", k=5).bottom_tokens  # the tokens its value vector suppresses most
    [' capitals', 'Icon', ' saint', 'runner', 'attle']
    >>> decode_many(model, ["L24N1005", "L29N7"]).shape  # a long DataFrame, one row per (neuron, side, rank)
    (40, 9)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from kn_lens import backends
from kn_lens._device import evaluating, is_half
from kn_lens._typing import Model, Neuron, NeuronLike, check_model, is_encoder, mlp_w_out
from kn_lens.inputs import NeuronsLike, check_batch_size, check_count, to_neuron, to_neurons, to_prompts
from kn_lens.prompts import Prompt, TargetLike, length_batches, stack_tokens

Through = Literal["unembed", "mlm_head"]
THROUGH: tuple[str, ...] = ("unembed", "mlm_head")


# ---------------------------------------------------------------------------------------------------------------
# Norm helpers
# ---------------------------------------------------------------------------------------------------------------


def _norm_linear(
    norm: backends.Norm | None, x: Float[Tensor, "... d_model"], scale: Float[Tensor, "... 1"] | None
) -> Float[Tensor, "... d_model"]:
    """The linear part of a (LayerNorm / RMSNorm, with or without weight) norm at a given scale, without bias.

    ``scale=None`` uses the direction's own RMS (what the norm would compute if ``x`` were its whole input, minus
    the eps, which would make the result depend on the direction's length).
    """
    if norm is None:
        return x
    if norm.centres:
        x = x - x.mean(-1, keepdim=True)
    if scale is None:  # the direction's own RMS, without eps: scale-free
        scale = x.pow(2).mean(-1, keepdim=True).sqrt()
    x = x / scale
    return x * norm.weight if norm.weight is not None else x


def final_norm(model: Model) -> backends.Norm | None:
    """The norm the residual stream passes through last before the output head, as a :class:`~kn_lens.backends.Norm`.

    ``ln_final`` for a causal model (None if the model has no normalisation); for a post-LN encoder (BERT), the
    last block's output LayerNorm ``blocks[-1].ln2``. Works on both backends (``HookedTransformer`` and
    ``TransformerBridge``), reading the parameters the forward pass uses.

    Example:
        >>> norm = final_norm(model)        # SmolLM2: its final RMSNorm (no centring, no bias)
        >>> norm.centres, norm.eps, norm.weight.shape, norm.bias
        (False, 1e-05, torch.Size([576]), None)
        >>> norm = final_norm(bert)         # BERT: the last block's LayerNorm
        >>> norm.centres, norm.eps, norm.weight.shape, norm.bias.shape
        (True, 1e-12, torch.Size([32]), torch.Size([32]))
    """
    return backends.final_norm(model)


def _pre_unembed_norm(model: Model) -> backends.Norm | None:
    """The norm immediately before ``W_U``: ``ln_final``, or BERT's MLM-head LayerNorm."""
    return backends.pre_unembed_norm(model)


def _check_through(model: Model, through: str | None) -> str:
    if through is None:  # the lens that tracks the model: linear for causal models, the real head for BERT
        return "mlm_head" if is_encoder(model) else "unembed"
    if through not in THROUGH:
        raise ValueError(f"unknown through={through!r}; choose one of {', '.join(THROUGH)}")
    if through == "mlm_head" and not is_encoder(model):
        raise ValueError(
            "through='mlm_head' needs a HookedEncoder (BERT): this causal model has no MLM head; use through='unembed'"
        )
    return through


# ---------------------------------------------------------------------------------------------------------------
# Decoding value vectors
# ---------------------------------------------------------------------------------------------------------------


def value_vectors(model: Model, neurons: NeuronsLike) -> Float[Tensor, "n d_model"]:
    """The value vectors ``W_out[layer][index]`` of some neurons, stacked (a copy, safe to modify).

    Example:
        >>> value_vectors(model, ["L24N1005"]).shape
        torch.Size([1, 576])
    """
    check_model(model)
    neurons = to_neurons(neurons, model)
    return torch.stack([mlp_w_out(model, n.layer)[n.index].detach().clone() for n in neurons])


@torch.inference_mode()
def direction_logits(
    model: Model, directions: Float[Tensor, "n d_model"], *, through: Through | None = None
) -> Float[Tensor, "n d_vocab"]:
    """Read residual-stream directions in the vocabulary (the lens behind :func:`decode`).

    ``through="unembed"``: ``norm_lin(d) @ W_U``, where ``norm_lin`` is the norm just before ``W_U``
    (``ln_final``; for BERT the MLM head's LayerNorm) applied to the direction alone: centred if the norm is a
    LayerNorm, divided by its own RMS (no eps), multiplied by the norm's weight; no norm bias and no ``b_U``.
    The result is scale-free: ``d`` and ``2 d`` give the same scores.

    ``through=None`` picks ``"mlm_head"`` for encoders and ``"unembed"`` otherwise.

    ``through="mlm_head"`` (``HookedEncoder`` only): ``mlm_head(blocks[-1].ln2(d)) @ W_U``, the logits (minus
    ``b_U``) BERT would produce if its last residual stream were ``d``; biases inside the head are kept since
    they cannot be separated from the non-linearity.

    Returns the scores on the model's device, in its dtype (float32 for a half-precision model: the vocabulary
    is read in float32 there).

    Example:
        >>> direction_logits(model, model.W_out[24, [1005]]).topk(5).indices
        tensor([[12539, 49148, 33180, 39549, 33606]])
    """
    check_model(model)
    through = _check_through(model, through)
    if directions.ndim != 2 or directions.shape[-1] != model.cfg.d_model:
        raise ValueError(f"directions must have shape [n, d_model={model.cfg.d_model}], got {tuple(directions.shape)}")
    w_u, _ = backends.unembed(model)
    x = directions.to(w_u.device, w_u.dtype)
    if through == "mlm_head":
        x = x / x.pow(2).mean(-1, keepdim=True).sqrt()  # unit RMS first, so the norm's eps cannot matter
        x = backends.mlm_head(model, final_norm(model)(x[:, None, :]))[:, 0, :]
    else:
        x = _norm_linear(_pre_unembed_norm(model), x, None)
    if is_half(x.dtype):  # read the vocabulary in float32: half-precision logits keep 2-3 digits
        return x.float() @ w_u.float()
    return x @ w_u


@dataclass(frozen=True)
class Decoded:
    """Top and bottom tokens of one neuron's value vector (see :func:`decode`).

    Attributes:
        neuron: the neuron.
        through: the lens used ("unembed" or "mlm_head").
        top_tokens / top_ids / top_scores: the ``k`` tokens it promotes most, best first.
        bottom_tokens / bottom_ids / bottom_scores: the ``k`` tokens it suppresses most, most negative first.

    Example:
        >>> d = decode(model, "L24N1005", k=5)
        >>> d.bottom_tokens
        [' capitals', 'Icon', ' saint', 'runner', 'attle']
        >>> d.to_frame().shape
        (10, 9)
    """

    neuron: Neuron
    through: str
    top_tokens: list[str]
    top_ids: list[int]
    top_scores: list[float]
    bottom_tokens: list[str]
    bottom_ids: list[int]
    bottom_scores: list[float]
    scores: Float[Tensor, " d_vocab"] = field(repr=False, compare=False)

    def to_frame(self) -> pd.DataFrame:
        """Long format: one row per (side, rank) with columns neuron, layer, index, through, side, rank,
        token, token_id, score."""
        rows = []
        for side, tokens, ids, scores in (
            ("top", self.top_tokens, self.top_ids, self.top_scores),
            ("bottom", self.bottom_tokens, self.bottom_ids, self.bottom_scores),
        ):
            for rank, (tok, tid, sc) in enumerate(zip(tokens, ids, scores, strict=True)):
                rows.append(
                    dict(
                        neuron=str(self.neuron),
                        layer=self.neuron.layer,
                        index=self.neuron.index,
                        through=self.through,
                        side=side,
                        rank=rank,
                        token=tok,
                        token_id=tid,
                        score=sc,
                    )
                )
        return pd.DataFrame(rows)

    def __str__(self) -> str:
        top = ", ".join(f"{t!r} {s:+.2f}" for t, s in zip(self.top_tokens, self.top_scores, strict=True))
        bottom = ", ".join(f"{t!r} {s:+.2f}" for t, s in zip(self.bottom_tokens, self.bottom_scores, strict=True))
        return f"{self.neuron} ({self.through})\n  top:    {top}\n  bottom: {bottom}"


def _token_strings(model: Model, ids: Sequence[int]) -> list[str]:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return [f"<{i}>" for i in ids]
    return [tokenizer.decode([i]) for i in ids]


def _check_k(model: Model, k: int) -> int:
    return check_count(k, "k", minimum=1, maximum=model.cfg.d_vocab, limit="the vocabulary size")


def decode(model: Model, neuron: NeuronLike, k: int = 10, *, through: Through | None = None) -> Decoded:
    """Map one neuron's value vector ``W_out[layer][index]`` into the vocabulary: its top and bottom ``k`` tokens.

    The final normalisation is handled, not ignored: the vector goes through the norm immediately before
    ``W_U`` as the model would treat it (centred for LayerNorm models such as GPT-2 and BERT, not for RMSNorm
    models such as SmolLM2; divided by its own scale; **multiplied by the norm's weight**, i.e. the weight is
    folded in). Additive terms (the norm's bias, ``b_U``) are left out: they add the same logits to every
    direction. Scores are therefore the logits the model would give if the residual stream (before the final
    norm) pointed exactly along the value vector, minus those constant terms; they do not depend on the vector's
    length (compare lengths with :func:`direct_effect`, which measures the neuron in context).

    For a ``HookedEncoder`` (BERT), ``through`` chooses the lens: ``"unembed"`` reads the vector straight through
    ``W_U`` with the MLM head's LayerNorm weight folded in (linear, skips the head's dense + GELU);
    ``"mlm_head"`` passes it through the last block's LayerNorm and the whole MLM head (dense + GELU + LayerNorm)
    first. The default (None) is ``"unembed"`` for causal models (the only choice) and ``"mlm_head"`` for
    encoders: on the trained tiny BERT fixture, the ``"mlm_head"`` reading of a last-layer neuron correlates
    with its actual direct effect over the vocabulary (mean Pearson r = 0.39 over the 20 most active neurons at
    the mask of "Paris is the capital of [MASK] ."), while ``"unembed"`` does not (r = -0.04): BERT's dense +
    GELU transform is far from the identity. For causal models the ``"unembed"`` reading is exactly
    proportional to the neuron's direct effect on every token (see :func:`direct_effect`).

    Args:
        model: a ``HookedTransformer`` or ``HookedEncoder``.
        neuron: ``Neuron``, ``(layer, index)`` or ``"L24N1005"``.
        k: how many tokens on each side.
        through: ``"unembed"``, ``"mlm_head"`` (encoders only) or None (default: ``"mlm_head"`` for encoders,
            ``"unembed"`` for causal models). The result records which one was used.

    Returns:
        A :class:`Decoded` (print it, or ``.to_frame()`` for a DataFrame).

    Raises:
        ValueError: neuron out of range, bad ``k``, unknown ``through`` or ``"mlm_head"`` on a causal model.

    Example:
        >>> print(decode(model, "L24N1005", k=5))   # fires at about -19 on "The capital of France is"
        L24N1005 (unembed)
          top:    'ocaust' +22.29, 'omia' +22.01, 'alfa' +21.72, 'opards' +20.59, 'unn' +20.45
          bottom: ' capitals' -15.38, 'Icon' -13.08, ' saint' -12.02, 'runner' -12.00, 'attle' -11.81
    """
    check_model(model)
    neuron = to_neuron(neuron, model)
    _check_k(model, k)
    through = _check_through(model, through)
    scores = direction_logits(model, value_vectors(model, [neuron]), through=through)[0].float().cpu()
    top = scores.topk(k)
    bottom = (-scores).topk(k)
    return Decoded(
        neuron=neuron,
        through=through,
        top_tokens=_token_strings(model, top.indices.tolist()),
        top_ids=top.indices.tolist(),
        top_scores=top.values.tolist(),
        bottom_tokens=_token_strings(model, bottom.indices.tolist()),
        bottom_ids=bottom.indices.tolist(),
        bottom_scores=(-bottom.values).tolist(),
        scores=scores,
    )


def decode_many(
    model: Model, neurons: NeuronLike | Iterable[NeuronLike], k: int = 10, *, through: Through | None = None
) -> pd.DataFrame:
    """:func:`decode` for several neurons, as one long DataFrame (input of :func:`kn_lens.plotting.lens_table`).

    Columns: ``neuron`` (``"L24N1005"``), ``layer``, ``index``, ``through``, ``side`` (``"top"``/``"bottom"``),
    ``rank`` (0 = strongest), ``token``, ``token_id``, ``score``.

    Example:
        >>> df = decode_many(model, ["L24N1005", "L29N7"], k=5)
        >>> df[df.side == "top"].pivot(index="rank", columns="neuron", values="token")
        neuron L24N1005     L29N7
        rank
        0        ocaust      work
        1          omia      work
        2          alfa     works
        3        opards      Work
        4           unn   working
    """
    check_model(model)
    neurons = to_neurons(neurons, model)
    return pd.concat([decode(model, n, k, through=through).to_frame() for n in neurons], ignore_index=True)


# ---------------------------------------------------------------------------------------------------------------
# Direct effect
# ---------------------------------------------------------------------------------------------------------------


def _scale_hooks(model: Model, layer: int) -> list[str]:
    """Names of the norm-scale hooks on the direct path from ``layer``'s MLP output to the head."""
    if is_encoder(model):
        names = [f"blocks.{layer}.ln2.hook_scale"]
        for later in range(layer + 1, model.cfg.n_layers):
            names += [f"blocks.{later}.ln1.hook_scale", f"blocks.{later}.ln2.hook_scale"]
        return names
    return ["ln_final.hook_scale"] if final_norm(model) is not None else []


@evaluating
@torch.inference_mode()
def direct_effect(
    model: Model,
    neuron: NeuronLike,
    prompts: Prompt | str | Sequence[Prompt | str],
    target: TargetLike = None,
    *,
    batch_size: int = 32,
) -> Float[Tensor, " n_prompts"]:
    """The neuron's direct contribution to each prompt's target logit: activation x value vector x unembedding.

    Defined as in TransformerLens' direct logit attribution, with every norm scale frozen at its value in the
    clean forward pass. For a causal model, at each target position ``p`` (reading target token ``t``)::

        DE = a_n[p] * (norm_lin(W_out[L][n]) / scale_final[p]) @ W_U[:, t]

    summed over the target's tokens (multi-token targets, matching the "logit" objective), where ``a_n`` is the
    ``mlp_post`` activation, ``norm_lin`` centres (LayerNorm only) and multiplies by ``ln_final.w``, and
    ``scale_final`` is the cached ``ln_final.hook_scale``. It is linear in the activation, so for a neuron of the
    last layer it is exactly ``clean logit - logit with only that neuron zero-ablated`` while ``ln_final``'s
    scale is held at its clean value (without freezing, ablation also changes the norm's scale; the difference
    is usually small). For earlier layers it is the direct path only (no effect through later layers).

    For a post-LN ``HookedEncoder`` the direct path runs through every later LayerNorm (each at its frozen
    scale) and then the non-linear MLM head, so ``DE = logit(head(r)) - logit(head(r - c))`` with ``r`` the
    clean last residual stream and ``c`` the neuron's contribution carried along that path. For a neuron of
    the last layer this, too, equals the zero-ablation logit change with the last LayerNorm's scale frozen.

    Args:
        model: the model.
        neuron: ``Neuron``, ``(layer, index)`` or ``"L24N1005"``.
        prompts: :class:`~kn_lens.prompts.Prompt` objects with targets, or texts with ``target``.
        target: the target for text prompts (ignored for ``Prompt`` objects).
        batch_size: prompts per forward pass (prompts are batched by length, without padding).

    Returns:
        One number per prompt, in logit units (float32, CPU; computed in float32 from the model's activations
        whatever its dtype, and in eval mode).

    Example:
        >>> direct_effect(model, "L29N1066", "The capital of France is", " Paris")   # a knowledge neuron
        tensor([2.1889])
    """
    check_model(model)
    neuron = to_neuron(neuron, model)
    prompts = to_prompts(model, prompts, target, need_target=True)
    batch_size = check_batch_size(batch_size)
    layer, index = neuron
    act_name = backends.get_act_name("mlp_post", layer)
    scale_names = _scale_hooks(model, layer)
    value = mlp_w_out(model, layer)[index]
    w_u, _ = backends.unembed(model)
    out = torch.empty(len(prompts))
    for chunk in length_batches(prompts, batch_size):
        batch = [prompts[i] for i in chunk]
        tokens = stack_tokens(batch, model.cfg.device)
        wanted = {act_name, *scale_names}
        if is_encoder(model):
            wanted.add(backends.encoder_output_hook(model))
        _, cache = model.run_with_cache(tokens, names_filter=lambda name, w=wanted: name in w)
        acts = cache[act_name][..., index]  # [batch, pos]
        contribution = acts[..., None] * value  # [batch, pos, d_model]
        if is_encoder(model):
            block_norm = backends.norm
            c = _norm_linear(block_norm(model.blocks[layer].ln2), contribution, cache[scale_names[0]])
            for later in range(layer + 1, model.cfg.n_layers):
                c = _norm_linear(block_norm(model.blocks[later].ln1), c, cache[f"blocks.{later}.ln1.hook_scale"])
                c = _norm_linear(block_norm(model.blocks[later].ln2), c, cache[f"blocks.{later}.ln2.hook_scale"])
            resid = cache[backends.encoder_output_hook(model)]
            direction = backends.mlm_head(model, resid).float() - backends.mlm_head(model, resid - c).float()
        else:
            norm = final_norm(model)
            scale = cache[scale_names[0]] if scale_names else None
            direction = (_norm_linear(norm, contribution, scale) if norm is not None else contribution).float()
        for row, prompt in enumerate(batch):  # in float32, only the target's columns of the unembedding
            pos = torch.tensor(prompt.positions, device=direction.device)
            columns = w_u[:, list(prompt.target_ids)].float().to(direction.device)  # [d_model, k]
            out[chunk[row]] = float((direction[row, pos] * columns.T).sum())
    return out
