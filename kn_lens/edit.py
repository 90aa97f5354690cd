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
import operator
import weakref
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from kn_lens import backends
from kn_lens._moved import moved
from kn_lens._typing import Model, Neuron, check_model, group_by_layer, mlp_w_out
from kn_lens.inputs import NeuronsLike, to_neurons
from kn_lens.prompts import token_ids

TokenLike = str | int | Sequence[int]


#: The applied edits of each model, oldest first (restores must go newest first where neurons overlap).
_APPLIED: weakref.WeakKeyDictionary[Any, list[WeightEdit]] = weakref.WeakKeyDictionary()


class WeightEdit:
    """A change to some value vectors that remembers the original rows and can put them back bit for bit.

    Created (and already applied) by :func:`erase` and :func:`edit_fact`. Use it as a context manager for a
    temporary edit, or keep it for a permanent one.

    Interrupts (Ctrl-C) cannot leave a half-made edit or a half-restored one: the rows are saved before anything
    is written and the edit is undone if the writing is interrupted; no Python line runs between the edit being
    applied and a ``with`` statement owning it (``__enter__`` is not Python code); a restore that is interrupted
    finishes writing every row before the interrupt goes on. The weights are written through detached views, so
    grad mode is never touched. Two points are out of any code's reach: the ``with`` line as the block ends and
    the entry of ``__exit__``; an interrupt there leaves the edit applied as a whole and listed by
    :func:`applied_edits` (:func:`restore_all` undoes it). Two edits of one neuron must be undone newest first
    (``with`` blocks always do); restoring the older one first is refused, since it would put back rows the newer
    edit replaced.

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

    # ``with edit:`` gets the edit itself from a C-level lookup (a weak reference to the edit, called with no
    # arguments), so no Python line, and no KeyboardInterrupt, can come between applying and being owned by a with.
    __enter__ = property(operator.attrgetter("_self"))

    def __init__(self, model: Model, new_rows: dict[Neuron, Tensor], description: str) -> None:
        self.model = model
        self.neurons: list[Neuron] = list(new_rows)
        self.description = description
        self.applied = False
        self._self = weakref.ref(self)
        grouped = group_by_layer(self.neurons)
        # Save everything first: an interrupt up to here has changed nothing.
        saved: dict[int, tuple[Tensor, Tensor]] = {}
        writes: list[tuple[Tensor, Tensor, Tensor]] = []
        for layer, indices in grouped.items():
            weight = mlp_w_out(model, layer).detach()
            index = torch.tensor(indices, device=weight.device)
            saved[layer] = (index, weight[index].clone())
            rows = torch.stack([new_rows[Neuron(layer, i)] for i in indices]).to(
                device=weight.device, dtype=weight.dtype
            )
            writes.append((weight, index, rows))
        self._saved = saved
        applied = _APPLIED.setdefault(model, [])
        try:  # the guarded region: any interruption in it puts every saved row back
            applied.append(self)
            self.applied = True
            for weight, index, rows in writes:
                weight[index] = rows
        except BaseException:
            self._undo()
            raise

    def _put_back(self) -> None:
        """Write every saved row back. An interruption does not stop it half-way: the rows left are written, then
        the first interruption is raised again. (Other errors skip their layer and are raised at the end.)"""
        pending = list(self._saved.items())
        first: BaseException | None = None
        while pending:
            try:
                while pending:
                    layer, (index, rows) = pending[0]
                    mlp_w_out(self.model, layer).detach()[index] = rows
                    pending.pop(0)
            except BaseException as error:  # raised again below, once every row is back
                first = first or error
                if isinstance(error, Exception) and pending:  # not an interrupt: this layer will fail again
                    pending.pop(0)
        if first is not None:
            raise first

    def _undo(self) -> None:
        """Put the rows back and forget the edit; called twice in a row by :meth:`restore` (cheap when done)."""
        if self.applied:
            self._put_back()
            self.applied = False
        applied = _APPLIED.get(self.model, [])
        if self in applied:
            applied.remove(self)

    def restore(self) -> None:
        """Put the original value vectors back (bit for bit). Calling it twice is harmless.

        Raises:
            ValueError: a newer, still applied edit changed some of the same neurons: restore that one first.
        """
        if not self.applied:
            return
        clash = self._newer_overlapping()
        if clash:
            shared = sorted(set(clash[-1].neurons) & set(self.neurons))
            raise ValueError(
                f"{self!r} cannot be restored before the newer {clash[-1]!r}, which also changed "
                f"{', '.join(map(str, shared[:6]))}: restore that one first (edits of one neuron are undone newest "
                "first, as nested with blocks do)"
            )
        try:
            self._undo()
        finally:  # once more if the first was interrupted before it began: a restore is never left half done
            self._undo()

    def _newer_overlapping(self) -> list[WeightEdit]:
        """Edits applied after this one, still applied, that changed some of the same neurons (oldest first)."""
        applied = _APPLIED.get(self.model, [])
        later = applied[applied.index(self) + 1 :] if self in applied else []
        return [e for e in later if e.applied and set(e.neurons) & set(self.neurons)]

    def _leave(self, unwinding: bool) -> None:
        if unwinding:  # an error or interrupt is leaving the block: undo what was layered on top of it first
            for edit in reversed(self._newer_overlapping()):
                edit.restore()
        self.restore()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._leave(exc_type is not None)
        finally:
            if self.applied:  # interrupted before the first got going
                self._leave(exc_type is not None)

    def __repr__(self) -> str:
        state = "applied" if self.applied else "restored"
        shown = ", ".join(str(n) for n in self.neurons[:6]) + (", ..." if len(self.neurons) > 6 else "")
        return f"WeightEdit({self.description} on [{shown}], {state})"


def applied_edits(model: Model) -> list[WeightEdit]:
    """The edits of ``model`` that are applied now (permanent ones, or those of ``with`` blocks still open), oldest
    first.

    Example:
        >>> edit = erase(model, ["L9N1094"])
        >>> applied_edits(model)
        [WeightEdit(erase (zero) on [L9N1094], applied)]
        >>> restore_all(model)
        >>> applied_edits(model)
        []
    """
    return [edit for edit in _APPLIED.get(model, []) if edit.applied]


def restore_all(model: Model) -> None:
    """Undo every applied edit of ``model``, newest first: the original value vectors, bit for bit.

    The way back after a Ctrl-C that landed where no Python code can react: on the ``with`` line as the block
    ends, or before the first line of ``__exit__`` ran (CPython runs nothing of the context manager there). The
    edit is then still applied as a whole, never half.
    """
    for edit in reversed(applied_edits(model)):
        edit.restore()


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


__all__ = ["WeightEdit", "applied_edits", "edit_fact", "erase", "restore_all", "token_embedding"]

#: ``value_vectors`` used to be re-exported here: import it from :mod:`kn_lens.lens` (with a ``DeprecationWarning``).
__getattr__ = moved(__name__, {"value_vectors": "kn_lens.lens"})
