"""The README's Python examples run as written (on the embedded model), so the front page stays true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import kn_lens

README = Path(__file__).parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


@pytest.mark.slow
@pytest.mark.hooked_only("the tour prunes SmolLM2 with skill.prune, which builds a smaller HookedTransformer")
def test_readme_examples_run():
    blocks = [b for b in _python_blocks() if "path/to/" not in b]  # checkpoint folders users bring themselves
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["kns"].neurons, "the tour's fact should have knowledge neurons"
    assert namespace["scores"].shape == (30, 1536)
    # the values the README writes in its comments are what the calls return
    shown = re.search(r"kns\.neurons  # \[(.*?)\]", README.read_text()).group(1)
    assert shown == ", ".join(map(str, namespace["kns"].neurons))
    released = re.search(r"len\(dai\.neurons\)  # (\d+):", README.read_text()).group(1)
    assert int(released) == len(namespace["dai"].neurons) and namespace["dai"].params["variant"] == "dai"
    top = re.search(r"top_neurons\(scores, 5\)  # .*?: \[(.*?), \.\.\.\]", README.read_text()).group(1)
    assert [str(n) for n in kn_lens.top_neurons(namespace["scores"], 5)][:3] == top.split(", ")
    quick = re.search(r"target_scores\(model, \[prompt\]\)  # tensor\(\[(.*?)\]\)", README.read_text()).group(1)
    assert f"{float(kn_lens.target_scores(namespace['model'], [namespace['prompt']])[0]):.4f}" == quick


def test_readme_command_lines_parse_and_give_the_released_rule_enough_prompts():
    """Every ``kn-lens`` line of the README is a valid command (parsed, not run: they load SmolLM2), and a
    ``find --rule dai`` example gives at least 3 paraphrases (the released rule selects nothing with fewer)."""
    import shlex

    from kn_lens.cli import build_parser
    from kn_lens.selection import DAI_MIN_PROMPTS

    lines = [line.split("  #")[0] for line in README.read_text().splitlines() if line.startswith("kn-lens ")]
    assert len(lines) >= 10
    for line in lines:
        args = build_parser().parse_args(shlex.split(line)[1:])
        assert callable(args.func), line
        if getattr(args, "rule", None) == "dai":
            assert len(args.prompts) >= DAI_MIN_PROMPTS, line
