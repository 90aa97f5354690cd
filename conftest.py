"""Docstring examples run as tests (``pytest --doctest-modules kn_lens``, part of ``make test``).

Every example may use these names without defining them:

* ``model``: the embedded SmolLM2-135M (``kn_lens.load_model()``); ``bert``: the bundled tiny trained BERT;
* ``kn_lens``, ``torch``, ``io``, ``Path``;
* ``paraphrases`` (three ways to ask for the capital of France), ``prompts`` (them as Prompts with " Paris"),
  ``tokens`` (``[1, pos]`` tokens of "The capital of France is");
* ``kns``: the knowledge neurons of that fact, ``scores``: its integrated gradients ``[30, 1536]`` (computed the
  first time an example uses them).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch

_SHARED: dict = {}
_NAMES = re.compile(r"(?<![.\w])(kns|scores)\b")  # the shared names, not attributes like result.scores


def _base() -> dict:
    if not _SHARED:
        import kn_lens
        from kn_lens.fixtures import tiny_bert

        torch.set_num_threads(1)
        model = kn_lens.load_model()
        paraphrases = ["The capital of France is", "France's capital city is", "The French capital is"]
        _SHARED.update(
            model=model,
            bert=tiny_bert.load(),
            kn_lens=kn_lens,
            torch=torch,
            io=io,
            Path=Path,
            paraphrases=paraphrases,
            prompts=kn_lens.make_prompts(model, paraphrases, " Paris"),
            tokens=kn_lens.make_prompt(model, paraphrases[0]).tokens[None],
        )
    return _SHARED


def _expensive(name: str) -> object:
    if name not in _SHARED:
        import kn_lens

        base = _base()
        if name == "scores":
            _SHARED["scores"] = kn_lens.integrated_gradients(base["model"], base["paraphrases"][0], " Paris")
        else:
            _SHARED["kns"] = kn_lens.find_knowledge_neurons(base["model"], base["paraphrases"], " Paris")
    return _SHARED[name]


@pytest.fixture(autouse=True)
def _doctest_names(request, doctest_namespace):
    item = request.node
    if type(item).__name__ != "DoctestItem":
        yield
        return
    doctest_namespace.update(_base())
    source = "\n".join(example.source for example in item.dtest.examples)
    for name in set(_NAMES.findall(source)):
        doctest_namespace[name] = _expensive(name)
    yield
