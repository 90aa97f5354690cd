"""Build the tutorial notebooks from their sources: `python tutorials/build.py` (what `make tutorials` runs).

For every `tutorials/src/NN_name.py` (jupytext percent format, the reviewable source) this writes

* `tutorials/NN_name.ipynb`: the **solution** version, every cell as in the source, no outputs;
* `tutorials/student/NN_name.ipynb`: the **student** version, for handing out. Each exercise in a source is a
  code cell tagged `solution` (`# %% tags=["solution"]`) followed by a checker cell
  (`kn_lens.quiz.check(key, answer, model=model, ...)`). In the student version the solution cell is replaced by
  a stub that sets the same names to `...`; the checker cell is kept: it recomputes the right answer from the
  live model inside `kn_lens.exercises`, so the student's notebook contains neither the solution nor the answer.

CI (tests/test_tutorials.py) checks that the committed notebooks equal what this script builds, executes the
solution versions, and runs each student checker with a wrong value to see it fail with its hint.
"""

from __future__ import annotations

import ast
import copy
import sys
from pathlib import Path

import jupytext
import nbformat

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"
STUDENT = HERE / "student"

#: GitHub "owner/name" of this repository: the Colab links (README, notebook headers) point there.
REPOSITORY = "kn-lens/kn_lens"
BRANCH = "main"
SOLUTION_TAG = "solution"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def colab_url(name: str, *, student: bool = False) -> str:
    """The Colab link of tutorial ``name`` (e.g. ``"05_do_knowledge_neurons_store_knowledge"``)."""
    folder = "tutorials/student" if student else "tutorials"
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/{folder}/{name}.ipynb"


def is_solution(cell) -> bool:
    return cell.cell_type == "code" and SOLUTION_TAG in cell.metadata.get("tags", [])


def assigned_names(source: str) -> list[str]:
    """The names a solution cell assigns at top level, in order (what its stub must define)."""
    names: list[str] = []
    for node in ast.parse(source).body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for target in targets:
            for leaf in ast.walk(target):
                if isinstance(leaf, ast.Name) and isinstance(leaf.ctx, ast.Store) and leaf.id not in names:
                    names.append(leaf.id)
    return names


def stub(source: str) -> str:
    """The student's cell in place of a solution: the same names, set to ``...``."""
    names = assigned_names(source)
    if not names:
        raise ValueError(f"a solution cell must assign the answer to a name; got:\n{source}")
    lines = ["# Your turn: replace each ... with your code, then run the checker below."]
    lines += [f"{name} = ..." for name in names]
    return "\n".join(lines)


def solution_notebook(source: Path) -> nbformat.NotebookNode:
    notebook = jupytext.read(source)
    notebook.metadata["kernelspec"] = dict(KERNELSPEC)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return notebook


def student_notebook(solution: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """The student version: each solution cell becomes a stub; a header says where the solutions are."""
    student = copy.deepcopy(solution)
    cells = []
    for i, cell in enumerate(student.cells):
        if is_solution(cell):
            following = student.cells[i + 1] if i + 1 < len(student.cells) else None
            if following is None or following.cell_type != "code" or "quiz.check(" not in following.source:
                raise ValueError(f"{name}: solution cell {i} must be followed by its checker (quiz.check(...))")
            new = nbformat.v4.new_code_cell(stub(cell.source))
            new.metadata["tags"] = ["exercise"]
            cells.append(new)
        else:
            cells.append(cell)
    header = nbformat.v4.new_markdown_cell(
        "**Student version.** The exercise cells start with `...`: fill them in and run the checker cell after "
        "each; it computes the right answer from the model itself and prints a hint when yours is off. "
        f"The solutions are in `tutorials/{name}.ipynb` ([open on Colab]({colab_url(name)}))."
    )
    student.cells = [*cells[:1], header, *cells[1:]]
    return student


def _stable_ids(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    # nbformat draws random cell ids; numbered ones keep rebuilds free of spurious diffs.
    for i, cell in enumerate(notebook.cells):
        cell.id = f"cell-{i}"
    return notebook


def build(source: Path) -> tuple[nbformat.NotebookNode, nbformat.NotebookNode]:
    """(solution, student) notebooks of one source file."""
    solution = solution_notebook(source)
    return _stable_ids(solution), _stable_ids(student_notebook(solution, source.stem))


def main() -> None:
    STUDENT.mkdir(exist_ok=True)
    for source in sorted(SOURCES.glob("*.py")):
        solution, student = build(source)
        nbformat.write(solution, HERE / f"{source.stem}.ipynb")
        nbformat.write(student, STUDENT / f"{source.stem}.ipynb")
        print(f"{source.stem}: {sum(map(is_solution, solution.cells))} exercises", file=sys.stderr)


if __name__ == "__main__":
    main()
