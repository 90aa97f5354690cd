"""The memory plan of every batched attribution pass: how many rows fit the device, in one place.

Integrated gradients runs many rows (steps of the path, layers, prompts) through the model and keeps what
autograd needs for the backward pass. How many rows share a pass is set by a **budget** in bytes:

* ``memory_budget=`` of :func:`kn_lens.integrated_gradients`, :func:`kn_lens.ablation_effects`, ... (bytes), or
* by default (:func:`default_budget`): a fraction (:data:`CUDA_FRACTION`) of the memory a CUDA device has free
  (what the driver reports free plus what PyTorch's caching allocator holds unused), :data:`CPU_BUDGET` on a
  CPU (large enough to keep the cores busy, measured: more rows per pass are not faster there) and
  :data:`MPS_BUDGET` on Apple's MPS (unified memory shared with the system).

Every path estimates a row's cost with :func:`row_bytes` (from the model's shapes and dtype: the activations
each block keeps for the backward pass, the attention scores, and the ``positions x d_vocab`` logits with the
float32 objective computed from them) and packs rows with :func:`plan` / :func:`rows_per_pass`, so the hooked
fast path, the plain reference and the ``TransformerBridge`` path split a pass that would not fit the same way.
The estimate is deliberately rough (it counts tensors, not the allocator's rounding); the GPU check in
``benchmarks/gpu_check.py`` prints the measured peak beside the budget.

Example:
    >>> cost = row_bytes(model.cfg, blocks=30, positions=5, keys=5, logit_positions=5, objective_positions=1)
    >>> rows_per_pass(cost, 400 * 2**20)   # SmolLM2, a 5-token prompt, float32: rows per 400 MiB pass
    20
"""

from __future__ import annotations

import math
from typing import Any

import torch

CPU_BUDGET = 400 * 2**20
"""Default bytes of one pass on a CPU (the plan the CPU benchmarks were measured with)."""
MPS_BUDGET = 2 * 2**30
"""Default bytes of one pass on Apple's MPS (its unified memory is shared with the system: a fixed share)."""
CUDA_FRACTION = 0.5
"""Default share of a CUDA device's available memory one pass may use (the rest: the backward pass's transient
tensors, the estimate's slack, other tensors of the caller)."""
NO_BACKWARD_FACTOR = 4
"""Passes without autograd (ablations) keep about a quarter of what a backward pass needs: this many more rows."""

# What autograd keeps per recomputed position and block, counted from the blocks' forward (MLP pre/post/gate and
# their saved inputs; norms, residual copies, queries/keys/values and attention outputs; scores and probabilities
# per head and key), in tensors of the model's dtype; and per position whose logits are computed: the logits and
# their gradient in the model's dtype, and the objective's float32 copy, log-softmax and gradients.
SAVED_D_MLP_TENSORS = 10
SAVED_D_MODEL_TENSORS = 24
SAVED_SCORE_TENSORS_PER_HEAD = 6
SAVED_LOGIT_TENSORS = 2
SAVED_OBJECTIVE_TENSORS = 4
OBJECTIVE_BYTES = 4  # the objective runs in float32


def check_budget(memory_budget: Any) -> float | None:
    """``memory_budget`` checked: None (the device's default) or a positive, finite number of bytes.

    Example:
        >>> check_budget(2**30)
        1073741824
        >>> check_budget("1GB")
        Traceback (most recent call last):
        ...
        TypeError: memory_budget must be a number of bytes (e.g. 2 * 2**30) or None for the device's default, ...
    """
    if memory_budget is None:
        return None
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int | float):
        raise TypeError(
            "memory_budget must be a number of bytes (e.g. 2 * 2**30) or None for the device's default, "
            f"got {memory_budget!r}"
        )
    if not math.isfinite(memory_budget) or memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    return memory_budget


def default_budget(device: torch.device | str) -> int:
    """Bytes one pass may use on ``device`` (see the module docstring): a share of a CUDA device's available
    memory, :data:`CPU_BUDGET` on a CPU, :data:`MPS_BUDGET` on MPS.

    Example:
        >>> default_budget("cpu") == CPU_BUDGET
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        unused_cache = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(CUDA_FRACTION * (free + unused_cache))
    if device.type == "mps":
        return MPS_BUDGET
    return CPU_BUDGET


def budget(memory_budget: float | None, device: torch.device | str) -> float:
    """The budget of a call: ``memory_budget`` (checked) or the device's :func:`default_budget`.

    Example:
        >>> budget(None, "cpu") == CPU_BUDGET, budget(1e6, "cpu")
        (True, 1000000.0)
    """
    given = check_budget(memory_budget)
    return default_budget(device) if given is None else given


def element_size(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype`` (2 for bfloat16/float16, 4 for float32).

    Example:
        >>> element_size(torch.bfloat16), element_size(torch.float32)
        (2, 4)
    """
    return torch.empty((), dtype=dtype).element_size()


def row_bytes(
    cfg: Any,
    *,
    blocks: int,
    positions: int,
    keys: int,
    logit_positions: int,
    objective_positions: int,
    dtype: torch.dtype | None = None,
) -> float:
    """Rough bytes one row keeps for its backward pass.

    Args:
        cfg: the model's config (``d_model``, ``d_mlp``, ``n_heads``, ``d_vocab``, ``dtype``).
        blocks: how many blocks the row runs through.
        positions: positions it recomputes in each of them.
        keys: positions each of them attends to (padding included).
        logit_positions: positions whose logits are computed (``positions x d_vocab`` in the model's dtype).
        objective_positions: positions the objective reads (in float32; a callable metric reads them all).
        dtype: the activations' dtype (default ``cfg.dtype``).

    Example:
        >>> half = row_bytes(model.cfg, blocks=30, positions=5, keys=5, logit_positions=5, objective_positions=1,
        ...                  dtype=torch.bfloat16)
        >>> full = row_bytes(model.cfg, blocks=30, positions=5, keys=5, logit_positions=5, objective_positions=1)
        >>> round(full / half, 2)   # the float32 objective does not halve
        1.93
    """
    size = element_size(dtype if dtype is not None else cfg.dtype)
    per_position_block = size * (
        SAVED_D_MLP_TENSORS * cfg.d_mlp
        + SAVED_D_MODEL_TENSORS * cfg.d_model
        + SAVED_SCORE_TENSORS_PER_HEAD * cfg.n_heads * keys
    )
    logits = cfg.d_vocab * (
        SAVED_LOGIT_TENSORS * size * logit_positions + SAVED_OBJECTIVE_TENSORS * OBJECTIVE_BYTES * objective_positions
    )
    return per_position_block * positions * blocks + logits


def rows_per_pass(cost: float, budget: float, *, at_most: int | None = None) -> int:
    """How many rows of ``cost`` bytes fit ``budget`` (at least 1, at most ``at_most``).

    Example:
        >>> rows_per_pass(10.0, 95.0), rows_per_pass(10.0, 5.0), rows_per_pass(10.0, 1e9, at_most=20)
        (9, 1, 20)
    """
    rows = max(1, int(budget // cost))
    return rows if at_most is None else min(rows, at_most)


def plan(costs: list[float], n_steps: int, budget: float) -> list[list[tuple[int, int, int]]]:
    """Pack ``(group, first step, end step)`` units into passes of at most ``budget`` bytes, group after group.

    Group ``g`` has ``n_steps`` rows of ``costs[g]`` bytes each. Whole groups (all their steps) are kept together
    where they fit, so early blocks still see many rows (few rows per matmul make the weights' memory traffic,
    not arithmetic, the cost); a group is split over passes only when it does not fit; a pass holds at least one
    row whatever the budget.

    Example:
        >>> plan([10.0, 10.0], n_steps=4, budget=60.0)   # 8 rows of 10 bytes, 6 per pass
        [[(0, 0, 4), (1, 0, 2)], [(1, 2, 4)]]
    """
    passes: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    used = 0.0
    for group, cost in enumerate(costs):
        step = 0
        while step < n_steps:
            room = int((budget - used) // cost)
            if room < 1 and current:
                passes.append(current)
                current, used = [], 0.0
                continue
            take = min(max(room, 1), n_steps - step)
            current.append((group, step, step + take))
            used += take * cost
            step += take
    if current:
        passes.append(current)
    return passes
