"""``benchmarks/gpu_check.py --dry-run``: the GPU check runs end to end on the CPU at tiny sizes, so it cannot rot
while no GPU is at hand (the figures themselves are measured on a GPU, see benchmarks/RESULTS.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kn_lens.backends import HAS_HOOKED

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not HAS_HOOKED, reason="the check runs HookedTransformer / HookedEncoder paths")


@pytest.mark.slow  # a fresh interpreter imports torch, TransformerLens, captum and the EleutherAI package: ~20 s
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu_check.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    checks = {row.split(" | ")[0].strip("| ") for row in rows}
    assert {"IG scores cpu vs cpu", "throughput", "bfloat16 vs float32", "full PARAREL estimate"} <= checks
    assert "EleutherAI package" in checks  # runs, or says why not
    assert all(len(row.split(" | ")) == 5 for row in rows), table
    # on one device the same model gives the same scores: the comparison itself is sound
    assert all("max abs diff 0.0e+00" in row for row in rows if row.startswith("| IG scores"))
    assert out.with_suffix(".json").exists()
