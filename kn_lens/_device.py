"""Device and dtype rules shared by every computation: accumulator dtypes and eval mode, in one place.

Precision:
    A model may run in float32, bfloat16 or float16, on a CPU, a CUDA GPU or Apple's MPS. kn_lens computes every
    objective (softmax, log-softmax, probabilities) in float32 whatever the model's dtype (see
    :func:`kn_lens.scoring.objective_from_logits`), sums integrated-gradient steps in the accumulator dtype of
    the device (:func:`accumulator_dtype`: float64 where the device has it, float32 on MPS, which has no
    float64), and returns float32 results.

Eval mode:
    Attribution and measurement must not depend on whether the model was left in train mode (a
    ``TransformerBridge`` in train mode applies dropout). :func:`eval_mode` switches every module to eval mode
    for the duration of a call and switches back exactly the modules that were training, also when an exception
    flies; :func:`evaluating` does the same for a whole function whose first argument is the model.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

HALF_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)
"""Dtypes whose 8- or 10-bit mantissas cannot carry an objective or a sum of many small terms."""

F = TypeVar("F", bound=Callable[..., Any])


def accumulator_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype sums are accumulated in on ``device``: float64 on CPU and CUDA, float32 on MPS (no float64 there).

    Example:
        >>> accumulator_dtype("cpu"), accumulator_dtype("mps")
        (torch.float64, torch.float32)
    """
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def is_half(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` is a half-precision float (bfloat16 or float16).

    Example:
        >>> is_half(torch.bfloat16), is_half(torch.float32)
        (True, False)
    """
    return dtype in HALF_DTYPES


def _modules(model: Any) -> list[torch.nn.Module]:
    """Every module of ``model``, and of the transformers model a ``TransformerBridge`` wraps (kept outside its
    module tree), each once."""
    if not isinstance(model, torch.nn.Module):
        return []
    found = {id(m): m for m in model.modules()}
    wrapped = getattr(model, "__dict__", {}).get("original_model")
    if isinstance(wrapped, torch.nn.Module):
        found.update((id(m), m) for m in wrapped.modules())
    return list(found.values())


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Put every module of ``model`` in eval mode for the block; put back in train mode exactly the modules that
    were training, also when an exception flies.

    Example:
        >>> _ = bert.train()
        >>> with eval_mode(bert):
        ...     bert.training
        False
        >>> bert.training
        True
        >>> _ = bert.eval()
    """
    training = [m for m in _modules(model) if m.training]
    for module in training:
        module.training = False
    try:
        yield
    finally:
        for module in training:
            module.training = True


def evaluating(fn: F) -> F:
    """Decorate a function whose first argument is the model: it runs with the model in :func:`eval_mode`.

    Example:
        >>> @evaluating
        ... def mode(model):
        ...     return model.training
        >>> _ = bert.train()
        >>> mode(bert), bert.training
        (False, True)
        >>> _ = bert.eval()
    """

    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        with eval_mode(model):
            return fn(model, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
