"""Quadrature rules for integrated gradients: where on the path the gradient is taken, and with what weight.

Integrated gradients needs ``integral_0^1 dF/da (b + alpha (a - b)) d alpha``; it is approximated by
``sum_k w_k * dF/da (b + alpha_k (a - b))`` over ``n_steps`` points. The rules differ in where the points sit and
in how fast the sum converges: Riemann sums converge like ``1/n``, Gauss-Legendre far faster for smooth paths
(exact for polynomials of degree ``2n - 1``), and ``"eleuther"`` reproduces the EleutherAI package's numbers.

Example:
    >>> alphas, weights = step_alphas("riemann_middle", 2)
    >>> alphas.tolist(), weights.tolist()
    ([0.25, 0.75], [0.5, 0.5])
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["METHODS", "Method", "step_alphas"]

Method = Literal["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre", "eleuther"]

METHODS: dict[str, str] = {
    "riemann_left": "alpha_k = k / n for k = 0..n-1, weights 1/n (left Riemann sum; the path's end is not visited)",
    "riemann_right": "alpha_k = k / n for k = 1..n, weights 1/n (right Riemann sum; alpha = 0 is not visited)",
    "riemann_middle": "alpha_k = (k + 1/2) / n for k = 0..n-1, weights 1/n (midpoint rule)",
    "riemann_trapezoid": "alpha_k = k / (n-1) for k = 0..n-1, weights 1/(n-1), halved at both ends (n >= 2; "
    "captum uses weights 1/n here, which sum to (n-1)/n: its scores are ours times (n-1)/n)",
    "gausslegendre": "Gauss-Legendre nodes and weights of degree n mapped from [-1, 1] to [0, 1] (exact for "
    "polynomials of degree 2n-1; the best choice for few steps)",
    "eleuther": "alpha_k = linspace(0, 1, n) (both ends included), weights 1/n: the EleutherAI knowledge-neurons "
    "package's convention, to reproduce its numbers (its sum over-counts the endpoint by 1/n)",
}
"""The integration rules for integrated gradients, like captum's ``method`` argument: name -> how the ``n``
points ``alpha_k`` on the path and their weights ``w_k`` are chosen. The score is
``(a - b) * sum_k w_k * dF/da (b + alpha_k (a - b))``."""


def step_alphas(method: str, n_steps: int) -> tuple[Float[Tensor, " n_steps"], Float[Tensor, " n_steps"]]:
    """The points ``alpha_k`` on the path and their weights ``w_k`` for an integration rule (see :data:`METHODS`).

    Args:
        method: one of :data:`METHODS`.
        n_steps: number of points (>= 1; >= 2 for ``riemann_trapezoid``).

    Returns:
        ``(alphas, weights)``, float64 tensors of length ``n_steps``.

    Example:
        >>> step_alphas("riemann_left", 4)
        (tensor([0.0000, 0.2500, 0.5000, 0.7500], dtype=torch.float64), tensor([0.2500, ...], dtype=torch.float64))
    """
    check_method(method, n_steps)
    n = n_steps
    k = torch.arange(n, dtype=torch.float64)
    weights = torch.full((n,), 1.0 / n, dtype=torch.float64)
    if method == "riemann_left":
        alphas = k / n
    elif method == "riemann_right":
        alphas = (k + 1) / n
    elif method == "riemann_middle":
        alphas = (k + 0.5) / n
    elif method == "riemann_trapezoid":
        alphas = k / (n - 1)
        weights = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
        weights[0] = weights[-1] = 0.5 / (n - 1)
    elif method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n)
        alphas = torch.from_numpy((nodes + 1) / 2)
        weights = torch.from_numpy(w / 2)
    else:  # eleuther
        alphas = torch.linspace(0, 1, n, dtype=torch.float64)
    return alphas, weights


def check_method(method: str, n_steps: int) -> None:
    """A clear error for an unknown rule or a bad number of steps (before any computation)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int):
        raise TypeError(f"n_steps must be an int, got {type(n_steps).__name__}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if method == "riemann_trapezoid" and n_steps < 2:
        raise ValueError("riemann_trapezoid needs n_steps >= 2 (it visits both ends of the path)")
