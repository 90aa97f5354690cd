"""The README's Python examples run as written (on the embedded model), so the front page stays true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


@pytest.mark.slow
def test_readme_examples_run():
    blocks = [b for b in _python_blocks() if "path/to/" not in b]  # checkpoint folders users bring themselves
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["kns"].neurons, "the tour's fact should have knowledge neurons"
    assert namespace["scores"].shape == (30, 1536)
