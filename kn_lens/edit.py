"""Weight edits on value vectors: erase knowledge neurons, or rewrite a fact (Dai et al., 2022, section 5).

A neuron ``(L, n)`` writes ``activation * W_out[L][n]`` into the residual stream; ``W_out[L][n]`` (a
``d_model`` vector) is its *value vector*. Hooks (:mod:`kn_lens.hooks`) change activations for one forward
pass; the functions here change the value vectors themselves, so every later forward pass (generation,
evaluation, other people's code) sees the edited model.

* :func:`erase`: set the value vectors to zero, or to the embedding of the ``[UNK]`` token (or a chosen token),
  as in Dai et al. and the EleutherAI ``knowledge-neurons`` package.
* :func:`edit_fact`: Dai et al.'s update ``W_out[L][n] <- W_out[L][n] - lambda1 * E(old) + lambda2 * E(new)``,
  with ``E`` the input token embedding (tied to the unembedding in BERT and SmolLM2).

Both apply the edit at once and return a :class:`WeightEdit`. Use it as a context manager to restore the
original weights bit for bit on exit (also when the body raises), or keep the edit (a permanent apply) and call
``.restore()`` later if you change your mind::

    with kn_lens.edit.erase(model, kns.neurons):      # temporary
        probs = kn_lens.target_scores(model, prompts)
    edit = kn_lens.edit.erase(model, kns.neurons)     # permanent, until edit.restore()

Edits nest: inner edits restore first, so the outer edit's saved weights stay the originals.

Caveats:
    Embeddings and value vectors live in the same space (``d_model``) but not at the same scale; ``lambda``
    values that work for BERT may be far off for another model. Only the value vectors of the given neurons
    change: the read-in weights (``W_in``, ``W_gate``) and the biases are left alone.

Example:
    >>> with kn_lens.edit.edit_fact(model, kns.neurons, " Paris", " Rome"):
    ...     kn_lens.target_scores(model, prompts)  # p(" Paris") while the edit is on
    tensor([...])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import TracebackType
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from kn_lens import backends
from kn_lens._typing import Model, Neuron, check_model, group_by_layer, mlp_w_out
from kn_lens.inputs import NeuronsLike, to_neurons
from kn_lens.lens import value_vectors  # re-exported: read the rows an edit changes
from kn_lens.prompts import token_ids

TokenLike = str | int | Sequence[int]


class WeightEdit:
    """A change to some value vectors that remembers the original rows and can put them back bit for bit.

    Created (and already applied) by :func:`erase` and :func:`edit_fact`. Use it as a context manager for a
    temporary edit, or keep it for a permanent one.

    Attributes:
        model: the edited model.
        neurons: the neurons whose value vectors changed.
        description: what was done, for printing.
        applied: True until :meth:`restore` runs.

    Example:
        >>> with erase(model, ["L9N1094"]) as edit:
        ...     print(edit, edit.applied)
        WeightEdit(erase (zero) on [L9N1094], applied) True
        >>> edit.applied
        False
    """

    def __init__(self, model: Model, new_rows: dict[Neuron, Tensor], description: str) -> None:
        self.model = model
        self.neurons: list[Neuron] = list(new_rows)
        self.description = description
        self._saved: dict[int, tuple[Tensor, Tensor]] = {}
        grouped = group_by_layer(self.neurons)
        # Save everything first, so a failure while writing leaves nothing half-edited.
        for layer, indices in grouped.items():
            weight = mlp_w_out(model, layer)
            index = torch.tensor(indices, device=weight.device)
            self._saved[layer] = (index, weight.detach()[index].clone())
        try:
            with torch.no_grad():
                for layer, (index, _) in self._saved.items():
                    weight = mlp_w_out(model, layer)
                    rows = torch.stack([new_rows[Neuron(layer, i)] for i in grouped[layer]])
                    weight[index] = rows.to(device=weight.device, dtype=weight.dtype)
        except BaseException:
            self._write_back()
            raise
        self.applied = True

    def _write_back(self) -> None:
        with torch.no_grad():
            for layer, (index, rows) in self._saved.items():
                mlp_w_out(self.model, layer)[index] = rows

    def restore(self) -> None:
        """Put the original value vectors back (bit for bit). Calling it twice is harmless."""
        if self.applied:
            self._write_back()
            self.applied = False

    def __enter__(self) -> WeightEdit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.restore()

    def __repr__(self) -> str:
        state = "applied" if self.applied else "restored"
        shown = ", ".join(str(n) for n in self.neurons[:6]) + (", ..." if len(self.neurons) > 6 else "")
        return f"WeightEdit({self.description} on [{shown}], {state})"


def token_embedding(model: Model, token: TokenLike) -> Float[Tensor, " d_model"]:
    """The input embedding of a token (a multi-token string: the mean of its tokens' embeddings).

    Args:
        model: the model.
        token: text (tokenised without special tokens; mind the leading space of BPE vocabularies), a token id,
            or a list of token ids.

    Example:
        >>> token_embedding(model, " Paris").shape
        torch.Size([576])
    """
    if token is None:
        raise ValueError("token is None; pass a word such as ' Paris' or a token id")
    ids = token_ids(model, token)
    w_e = backends.embed(model).detach()
    return w_e[torch.tensor(ids, device=w_e.device)].float().mean(0)


def _check_neurons(model: Model, neurons: NeuronsLike) -> list[Neuron]:
    check_model(model)
    return to_neurons(neurons, model)


def erase(
    model: Model,
    neurons: NeuronsLike,
    mode: Literal["zero", "unk"] = "zero",
    *,
    token: TokenLike | None = None,
) -> WeightEdit:
    """Erase neurons: set their value vectors to zero or to the ``[UNK]`` (or a chosen) token's embedding.

    The edit is applied at once. Use the returned :class:`WeightEdit` as a context manager to undo it on exit,
    or keep it (and call ``.restore()`` if needed).

    Args:
        model: the model (edited in place).
        neurons: the neurons (``Neuron``, ``(layer, index)``, ``"L9N1094"`` or a result with ``.neurons``).
        mode: ``"zero"`` or ``"unk"`` (the embedding of ``token``, default the tokenizer's unknown token).
        token: for ``mode="unk"``: the token whose embedding replaces the value vectors.

    Returns:
        The applied :class:`WeightEdit`.

    Raises:
        ValueError: no neurons, a neuron out of range, an unknown mode, ``mode="unk"`` without an unknown token.

    Example:
        >>> with erase(model, kns.neurons, mode="unk"):
        ...     after = kn_lens.target_scores(model, prompts)
    """
    neuron_list = _check_neurons(model, neurons)
    if mode == "zero":
        if token is not None:
            raise ValueError("token= is only used with mode='unk'")
        rows = {n: torch.zeros(model.cfg.d_model) for n in neuron_list}
        return WeightEdit(model, rows, "erase (zero)")
    if mode != "unk":
        raise ValueError(f"unknown erase mode {mode!r}; use 'zero' or 'unk'")
    if token is None:
        tokenizer = getattr(model, "tokenizer", None)
        token = getattr(tokenizer, "unk_token_id", None)
        if token is None:
            raise ValueError("the tokenizer has no unknown token; pass token=... to choose the embedding")
    embedding = token_embedding(model, token)
    return WeightEdit(model, {n: embedding for n in neuron_list}, f"erase (embedding of {token!r})")


def edit_fact(
    model: Model,
    neurons: NeuronsLike,
    old: TokenLike,
    new: TokenLike,
    *,
    lambda1: float = 1.0,
    lambda2: float = 8.0,
) -> WeightEdit:
    """Rewrite a fact (Dai et al.): ``W_out[L][n] += -lambda1 * E(old) + lambda2 * E(new)`` for each neuron.

    Applied at once; use the returned :class:`WeightEdit` as a context manager to undo it on exit.

    Args:
        model: the model (edited in place).
        neurons: the fact's knowledge neurons.
        old: the answer to remove (text or token id(s); several tokens: their mean embedding).
        new: the answer to write in.
        lambda1: weight of the old answer's embedding (Dai et al.: 1).
        lambda2: weight of the new answer's embedding (Dai et al.: 8).

    Returns:
        The applied :class:`WeightEdit`.

    Example:
        >>> with edit_fact(model, kns.neurons, " Paris", " Rome"):
        ...     kn_lens.target_scores(model, paraphrases, " Rome")  # p(" Rome") while the edit is on
        tensor([...])
    """
    for name, x in (("lambda1", lambda1), ("lambda2", lambda2)):
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
            raise ValueError(f"{name} must be a finite number, got {x!r}")
    neuron_list = _check_neurons(model, neurons)
    delta = -lambda1 * token_embedding(model, old) + lambda2 * token_embedding(model, new)
    rows = {
        n: mlp_w_out(model, n.layer).detach()[n.index].float() + delta.to(mlp_w_out(model, n.layer).device)
        for n in neuron_list
    }
    return WeightEdit(model, rows, f"edit {old!r} -> {new!r} (lambda1={lambda1}, lambda2={lambda2})")


__all__ = ["WeightEdit", "edit_fact", "erase", "token_embedding", "value_vectors"]
