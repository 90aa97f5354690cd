"""Helpers shared by the benchmark scripts: isolated runs (for honest peak RSS), tables, RESULTS.md sections."""

from __future__ import annotations

import multiprocessing as mp
import platform
import re
import resource
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def run_isolated(fn: Callable, *args):
    """Run ``fn(*args)`` in a fresh spawned process, so its peak RSS is its own; returns its result."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def set_threads(n: int | None) -> int:
    """Use ``n`` torch threads (None: leave the default); returns the number in use."""
    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def machine() -> str:
    """One line describing where the figures were measured."""
    return (
        f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.node()}"
    )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def write_section(name: str, text: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section between ``<!-- bench:name -->`` markers in RESULTS.md."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{text.strip()}\n{end}"
    current = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(current):
        path.write_text(pattern.sub(lambda _: block, current))
        return
    path.write_text(current.rstrip() + "\n\n" + block + "\n")
