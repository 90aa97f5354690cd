"""The evaluation package: the old module names still work but warn, the facts converter, the package's layout."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from kn_lens.inputs import FactParts, to_fact

SHIMS = {
    "kn_lens.evaluate": ("kn_lens.evaluation", "intervention_effects"),
    "kn_lens.sweeps": ("kn_lens.evaluation.sweeps", "run_pararel"),
    "kn_lens.convergence": ("kn_lens.evaluation.convergence", "convergence"),
    "kn_lens.report": ("kn_lens.evaluation.report", "write_report"),
    "kn_lens.demo": ("kn_lens.evaluation.demo", "run"),
    "kn_lens.interventions": ("kn_lens.evaluation", "suppress"),
}


@pytest.mark.parametrize("old", sorted(SHIMS))
def test_each_old_module_warns_and_names_its_new_home(old, monkeypatch):
    new, name = SHIMS[old]
    monkeypatch.delitem(sys.modules, old, raising=False)  # imported fresh: the warning is raised on import
    with pytest.warns(DeprecationWarning, match=rf"{old} is deprecated: import from {new} instead"):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)  # the same object, re-exported


def test_old_modules_reach_private_names_too():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import kn_lens.sweeps as old
    from kn_lens.evaluation import sweep_store

    assert old.MANIFEST == sweep_store.MANIFEST and old._read_phase is sweep_store._read_phase


def test_importing_kn_lens_does_not_warn():
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import kn_lens, kn_lens.evaluation.sweeps, kn_lens.evaluation.report, kn_lens.evaluation.demo\n"
        "print([str(w.message) for w in caught if 'kn_lens' in str(w.message)])\n"  # TransformerLens warns of its own
        "print(kn_lens.evaluate.suppress is kn_lens.evaluation.suppress)"
    )
    root = Path(__file__).parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env={"PYTHONPATH": str(root), "PATH": ""})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "True"]


def test_datasets_do_not_import_the_evaluation():
    """known_facts moved to the evaluation: the datasets sit below it and import nothing of it (not even in a
    function)."""
    source = (Path(__file__).parent.parent / "kn_lens" / "datasets" / "pararel.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not {m for m in imported if m.startswith(("kn_lens.evaluat", "kn_lens.sweeps"))}, imported


def test_every_evaluation_module_is_at_most_600_lines():
    folder = Path(__file__).parent.parent / "kn_lens" / "evaluation"
    sizes = {p.name: len(p.read_text().splitlines()) for p in folder.glob("*.py")}
    assert sizes and max(sizes.values()) <= 600, sizes


# ------------------------------------------------------------------ the facts converter


class _Bag:
    def __init__(self):
        self.prompts, self.target, self.relation, self.uuid = ("a [MASK].", "b [MASK]."), "Paris", "P36", "P36-F"


def test_to_fact_reads_every_form():
    assert to_fact(_Bag()) == FactParts(["a [MASK].", "b [MASK]."], "Paris", "P36", "P36-F")
    assert to_fact((["a", "b"], " Paris")) == FactParts(["a", "b"], " Paris", None, "")
    assert to_fact(("a", " Paris", "capital")) == FactParts(["a"], " Paris", "capital", "")
    assert to_fact({"prompts": ["a"], "target": 5, "name": "x"}) == FactParts(["a"], 5, None, "x")
    assert to_fact(["a", "b"], need_target=False, prompts_only=True).prompts == ["a", "b"]


def test_to_fact_refuses_what_is_not_a_fact():
    with pytest.raises(TypeError, match=r"fact must be an object with \.prompts"):
        to_fact(["a", "b", "c"])
    with pytest.raises(TypeError, match="a list of prompts"):
        to_fact(5, prompts_only=True)
    with pytest.raises(ValueError, match="needs 'prompts'"):
        to_fact({"target": " Paris"})
    with pytest.raises(ValueError, match="has no target"):
        to_fact((["a"], None))
    with pytest.raises(TypeError, match="prompt texts or Prompts"):
        to_fact(([1, 2], " Paris"))
    with pytest.raises(TypeError, match="not one str"):
        to_fact({"prompts": b"ab", "target": "x"})
