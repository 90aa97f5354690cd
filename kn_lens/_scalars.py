"""Scalar checks: counts, numbers, choices, collections and devices, each checked one way with a clear error.

Part of the input boundary (:mod:`kn_lens.inputs`, which re-exports every name here): a wrong value raises a
``TypeError`` / ``ValueError`` naming the argument and the fix, before any model runs.

Example:
    >>> check_count(3, "n_steps", minimum=1), check_choice("mean", "mode", ("zero", "mean"))
    (3, 'mean')
"""

from __future__ import annotations

import argparse
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor


def check_int(value: Any, name: str) -> int:
    """``value`` as an int: Python and numpy/torch integers pass, floats and bools raise ``TypeError``.

    Example:
        >>> check_int(3, "layer")
        3
    """
    if isinstance(value, (bool, float)) or (isinstance(value, Tensor) and value.is_floating_point()):
        kind = "a bool" if isinstance(value, bool) else "a float"
        raise TypeError(f"{name} must be an int, got {value!r} ({kind}); convert with int(...) if that is really meant")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None


def check_count(value: Any, name: str, *, minimum: int = 0, maximum: int | None = None, limit: str = "") -> int:
    """An int of at least ``minimum`` (a count, a size, a number of steps) and at most ``maximum`` (``limit``
    says what the maximum is); floats, NaN and bools raise.

    Example:
        >>> check_count(2, "min_count", minimum=1)
        2
        >>> check_count(float("nan"), "min_count", minimum=1)
        Traceback (most recent call last):
        ...
        TypeError: min_count must be an int, got nan (a float); convert with int(...) if that is really meant
        >>> check_count(0, "k", minimum=1, maximum=49152, limit="the vocabulary size")
        Traceback (most recent call last):
        ...
        ValueError: k must be between 1 and the vocabulary size 49152, got 0
    """
    value = check_int(value, name)
    if maximum is not None and not minimum <= value <= maximum:
        raise ValueError(f"{name} must be between {minimum} and {f'{limit} ' if limit else ''}{maximum}, got {value}")
    if value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value}")
    return value


def check_batch_size(value: Any, name: str = "batch_size") -> int:
    """A positive int (prompts or rows per forward pass).

    Example:
        >>> check_batch_size(-1)
        Traceback (most recent call last):
        ...
        ValueError: batch_size must be a positive int, got -1
    """
    return check_count(value, name, minimum=1)


def check_number(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number, optionally within ``[low, high]`` (``low_open`` / ``high_open`` exclude the ends).

    Example:
        >>> check_number(0.5, "share", low=0, high=1, low_open=True)
        0.5
        >>> check_number(1.5, "objective_floor", low=0, high=1, high_open=True)
        Traceback (most recent call last):
        ...
        ValueError: objective_floor must be a number in [0, 1), got 1.5
    """
    check_finite(value, name)
    if isinstance(value, Tensor):
        raise TypeError(f"{name} must be a number, got a tensor")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "-inf" if low is None else f"{low:g}"
        right = "inf" if high is None else f"{high:g}"
        interval = (
            f"{'(' if low_open or low is None else '['}{left}, {right}{')' if high_open or high is None else ']'}"
        )
        raise ValueError(f"{name} must be a number in {interval}, got {value:g}")
    return value


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """One of ``choices`` (a ``ValueError`` listing them otherwise).

    Example:
        >>> check_choice("unk", "mode", ("zero", "unk"))
        'unk'
    """
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_sequence(value: Any, name: str, *, what: str = "prompts") -> list[Any]:
    """A list/tuple-like collection of items; a bare ``str`` (which would be read character by character), a
    mapping or a non-iterable raise a ``TypeError`` that says how to wrap it.

    Example:
        >>> check_sequence(("a", "b"), "heldout")
        ['a', 'b']
        >>> check_sequence("Paris is in", "heldout")
        Traceback (most recent call last):
        ...
        TypeError: heldout must be a list of prompts, not one str (it would be read character by character); ...
    """
    if isinstance(value, str | bytes):
        raise TypeError(
            f"{name} must be a list of {what}, not one str (it would be read character by character); "
            f"wrap it: [{value!r}]"
        )
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list of {what}, got {type(value).__name__}")
    return list(value)


def check_finite(value: float | Tensor, name: str) -> None:
    """Raise unless ``value`` is a finite real number or a tensor of finite numbers.

    Example:
        >>> check_finite(float("nan"), "factor")
        Traceback (most recent call last):
        ...
        ValueError: factor must be a finite number, got nan
    """
    if isinstance(value, Tensor):
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or infinite values; compute it again or drop those entries")
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")


def check_device(device: Any, name: str = "device") -> torch.device | None:
    """A torch device that exists on this machine (None passes): ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
        >>> check_device("gpu")
        Traceback (most recent call last):
        ...
        ValueError: device 'gpu' is not a torch device; use cpu, cuda, cuda:N or mps
    """
    if device is None:
        return None
    if not isinstance(device, str | torch.device):
        raise TypeError(f"{name} must be a str like 'cpu' or 'cuda', or a torch.device; got {type(device).__name__}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"{name} {device!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{name} {device!r}: this machine has no CUDA GPU (or this torch has no CUDA); use cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"{name} {device!r}: this machine has {count} CUDA GPU(s), numbered 0..{count - 1}")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name} {device!r}: MPS is not available on this machine; use cpu")
    return parsed


#: The ablation modes (``hooks.ablate``, ``attribution.ablation_effects``) and the perturbations (``hooks.perturb``).
ABLATION_MODES: tuple[str, ...] = ("zero", "mean")
PERTURBATION_KINDS: tuple[str, ...] = ("gaussian", "zero", "mean")


def check_mode(value: Any, what: str = "ablation mode", choices: Sequence[str] = ABLATION_MODES) -> str:
    """An ablation mode (or perturbation kind: ``what="perturbation kind", choices=PERTURBATION_KINDS``).

    Example:
        >>> check_mode("mean")
        'mean'
        >>> check_mode("random")
        Traceback (most recent call last):
        ...
        ValueError: unknown ablation mode 'random'; use 'zero' or 'mean'
    """
    if not isinstance(value, str) or value not in choices:
        names = [repr(c) for c in choices]
        listed = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
        raise ValueError(f"unknown {what} {value!r}; use {listed}")
    return value


def count_argument(text: str) -> int:
    """A command-line count (``argparse`` ``type=``): a whole number of at least 1, else a message argparse shows.

    Example:
        >>> count_argument("20")
        20
        >>> count_argument("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: must be at least 1, got 0
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


__all__ = [
    "ABLATION_MODES",
    "PERTURBATION_KINDS",
    "check_batch_size",
    "check_choice",
    "check_count",
    "check_device",
    "check_finite",
    "check_int",
    "check_mode",
    "check_number",
    "check_sequence",
    "count_argument",
]
