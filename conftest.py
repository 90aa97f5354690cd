"""Docstring examples run as tests (``pytest --doctest-modules kn_lens``, part of ``make test``).

Every example may use these names without defining them:

* ``model``: the embedded SmolLM2-135M (``kn_lens.load_model()``); ``bert``: the bundled tiny trained BERT;
* ``kn_lens``, ``torch``, ``io``, ``Path``;
* ``paraphrases`` (three ways to ask for the capital of France), ``prompts`` (them as Prompts with " Paris"),
  ``tokens`` (``[1, pos]`` tokens of "The capital of France is");
* ``kns``: the knowledge neurons of that fact, ``scores``: its integrated gradients ``[30, 1536]`` (computed the
  first time an example uses them);
* skill neurons on the tiny BERT (also computed on first use): ``task``, a number-agreement task ("Emma is buying
  the books." -> plural); ``soft``, a 4-token soft prompt trained for it (verbalizer ``("violin", "piano")``);
  ``skill``, its predictivity (``kn_lens.skill.predictivity(bert, task, prompt=soft)``);
* ``pararel_folder``: the PARAREL release at ``../shared/pararel`` (tests may read it; the package never does);
* ``pararel_dir``: a tiny folder in PARAREL's format (relations P36 capital, P37 language, P106 profession,
  P1303 instrument) holding the facts of the tiny BERT; ``run_dir``: a finished
  :func:`kn_lens.evaluation.sweeps.run_pararel` run of the tiny BERT on two of its relations (both built in a
  temporary folder the first time they are used);
* ``tmp_path``: an empty temporary folder of the example's own (pytest's fixture).
"""

from __future__ import annotations

import atexit
import io
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

_SHARED: dict = {}
_NAMES = re.compile(r"(?<![.\w])(kns|scores|task|soft|skill|pararel_dir|run_dir)\b")  # not attributes (result.scores)
#: tiny_bert relation -> (PARAREL id, label, type) of the matching PARAREL relation.
_PARAREL_IDS = {
    "capital": ("P36", "capital", "1-1"),
    "language": ("P37", "official language", "N-1"),
    "profession": ("P106", "occupation", "N-M"),
    "instrument": ("P1303", "instrument", "N-M"),
}


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
            pararel_folder=Path(__file__).resolve().parent.parent / "shared" / "pararel",
            prompts=kn_lens.make_prompts(model, paraphrases, " Paris"),
            tokens=kn_lens.make_prompt(model, paraphrases[0]).tokens[None],
        )
    return _SHARED


def _expensive(name: str) -> object:
    if name not in _SHARED:
        import kn_lens

        base = _base()
        if name in ("task", "soft", "skill"):
            _SHARED.update(_skill_names(base["bert"]))
        elif name == "pararel_dir":
            _SHARED[name] = _write_pararel(_temporary_folder("kn_lens_pararel_"))
        elif name == "run_dir":
            from kn_lens.datasets import pararel
            from kn_lens.evaluation import sweeps

            data = pararel.load(_expensive("pararel_dir"), relations=["P36", "P37"])
            out = _temporary_folder("kn_lens_run_") / "tiny-bert"
            _SHARED[name] = sweeps.run_pararel(base["bert"], data, out, model_name="tiny-bert", facts_per_relation=3,
                                               n_steps=5, n_controls=2, n_edits=1, progress=False)  # fmt: skip
        elif name == "scores":
            _SHARED["scores"] = kn_lens.integrated_gradients(base["model"], base["paraphrases"][0], " Paris")
        else:
            _SHARED["kns"] = kn_lens.find_knowledge_neurons(base["model"], base["paraphrases"], " Paris")
    return _SHARED[name]


def _skill_names(bert) -> dict:
    from kn_lens import skill
    from kn_lens.fixtures import tiny_bert

    if "skill" not in _SHARED:
        agreement = tiny_bert.AGREEMENT["train"] + tiny_bert.AGREEMENT["heldout"]
        texts = [a.prompt.replace("[MASK]", "the") for a in agreement]
        labels = [int(a.plural) for a in agreement]
        task = skill.make_task(texts, labels, name="number", classes=("singular", "plural"))
        soft = skill.train_soft_prompt(
            bert, task, ("violin", "piano"), n_tokens=4, steps=90, lr=0.3, placement="end", eval_every=30,
            progress=False,
        )  # fmt: skip
        result = skill.predictivity(bert, task, prompt=soft, progress=False)
        _SHARED.update(task=task, soft=soft, skill=result)
    return {name: _SHARED[name] for name in ("task", "soft", "skill")}


def _temporary_folder(prefix: str) -> Path:
    """A new temporary folder, removed when the test session ends."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _write_pararel(root: Path) -> Path:
    """The tiny BERT's facts as a PARAREL folder (``[MASK]`` of its templates -> ``[Y]``)."""
    import json

    from kn_lens.fixtures import tiny_bert

    (root / "patterns").mkdir(parents=True)
    (root / "facts").mkdir()
    relations = []
    for relation, (rid, label, kind) in _PARAREL_IDS.items():
        templates = [t.replace(tiny_bert.MASK, "[Y]") for t in tiny_bert.RELATIONS[relation]]
        facts = [dict(sub_label=f.subject, obj_label=f.answer, uuid=f"{rid}-{f.subject}")
                 for f in tiny_bert.facts_of(relation)]  # fmt: skip
        (root / "patterns" / f"{rid}.jsonl").write_text("".join(json.dumps(dict(pattern=t)) + "\n" for t in templates))
        (root / "facts" / f"{rid}.jsonl").write_text("".join(json.dumps(f) + "\n" for f in facts))
        relations.append(dict(relation=rid, label=label, type=kind))
    (root / "relations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in relations))
    return root


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
    if re.search(r"\btmp_path\b", source):
        doctest_namespace["tmp_path"] = request.getfixturevalue("tmp_path")
    yield
