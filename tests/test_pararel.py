"""PARAREL loader: the counts of the released data, the causal cut, tokenizer filtering, downloads and bad files."""

from __future__ import annotations

import json
import shutil

import pytest
from _tiny_pararel import IDS, SHARED, write_tiny_pararel

from kn_lens.datasets import pararel
from kn_lens.evaluation import known_facts

needs_shared = pytest.mark.skipif(not (SHARED / "facts").is_dir(), reason="../shared/pararel not present")


@pytest.fixture(scope="module")
def data():
    return pararel.load(SHARED)


@needs_shared
def test_released_counts(data):
    assert len(data.relations) == 34
    assert len(data) == 23_749
    assert set(data.dropped) == {"P1001", "P131", "P17", "P276", "P361", "P31", "P527"}
    bags = data.bags(style="mask")
    assert sum(len(b.prompts) for b in bags) == 215_929


@needs_shared
@pytest.mark.parametrize(
    ("style", "min_templates", "prompts", "relations"),
    [("cut", 1, 172_351, 34), ("cut", 4, 165_104, 29), ("end", 1, 135_580, 34), ("end", 4, 123_402, 24)],
)
def test_causal_counts(data, style, min_templates, prompts, relations):
    bags = data.bags(style=style, min_templates=min_templates)
    assert sum(len(b.prompts) for b in bags) == prompts
    assert len({b.relation for b in bags}) == relations


@needs_shared
def test_cut_and_mask_rendering(data):
    (bag,) = [b for b in data.bags(style="cut", relations=["P36"]) if b.subject == "Cook County"]
    assert bag.target == " Chicago"
    assert bag.prompts[0] == "The capital of Cook County is"
    assert all("[Y]" not in p and "[X]" not in p for p in bag.prompts)
    masked = data.bags(style="mask", relations="P36", mask="<mask>")[0]
    assert masked.target == "Chicago" and masked.prompts[0] == "The capital of Cook County is <mask> ."
    first, held = bag.split(2)
    assert first.prompts + held.prompts == bag.prompts and len(held.prompts) == 2


@needs_shared
def test_single_token_filter(data, smollm2):
    bags = data.bags(smollm2, relations=["P36", "P37"])
    every = data.bags(smollm2, relations=["P36", "P37"], multi_token=True)
    assert 0 < len(bags) < len(every)
    encode = smollm2.tokenizer.encode
    assert all(len(encode(b.target, add_special_tokens=False)) == 1 for b in bags)
    assert any(len(encode(b.target, add_special_tokens=False)) > 1 for b in every)


def test_tiny_known_facts(tmp_path, tiny_bert):
    data = pararel.load(write_tiny_pararel(tmp_path))
    assert sorted(data.relations) == sorted(IDS.values())
    assert data.relations["P36"].label == "capital"
    bags = data.bags(tiny_bert)
    assert len(bags) == 48 and bags[0].prompts[0] == "The capital of France is [MASK]."
    known, table = known_facts(tiny_bert, bags)
    assert len(table) == 48 and table["known"].sum() == len(known) >= 40
    # a fact the model cannot know (answer swapped) is listed, not dropped
    wrong = pararel.Bag("P36", "x", "France", "Tokyo", bags[0].prompts, "Tokyo")
    known2, table2 = known_facts(tiny_bert, [bags[0], wrong])
    assert [b.uuid for b in known2] == [bags[0].uuid] and list(table2["known"]) == [True, False]
    strict, _ = known_facts(tiny_bert, bags[:4], threshold=0.999999)
    assert len(strict) < 4


def test_download_from_local_mirror(tmp_path):
    # the upstream layout: data/pattern_data/graphs_json/P*.jsonl and data/trex_lms_vocab/P*.jsonl
    source = write_tiny_pararel(tmp_path / "src")
    mirror = tmp_path / "mirror" / "data"
    (mirror / "pattern_data" / "graphs_json").mkdir(parents=True)
    (mirror / "trex_lms_vocab").mkdir(parents=True)
    for rid in IDS.values():
        shutil.copy(source / "patterns" / f"{rid}.jsonl", mirror / "pattern_data" / "graphs_json")
        shutil.copy(source / "facts" / f"{rid}.jsonl", mirror / "trex_lms_vocab")
    (mirror / "trex_lms_vocab" / "P9.jsonl").write_text((source / "facts" / "P36.jsonl").read_text())  # no templates
    cache = pararel.download(
        tmp_path / "cache",
        base_url=mirror.as_uri(),
        relations_url=(source / "relations.jsonl").as_uri(),
        relation_ids=[*IDS.values(), "P9"],
    )
    data = pararel.load(cache)
    assert len(data) == 48 and data.dropped == {"P9": "no templates"}
    assert data.relations["P37"].label == "language"
    with pytest.raises(ConnectionError, match="P404"):
        pararel.download(tmp_path / "cache", base_url=mirror.as_uri(), relation_ids=["P404"])


def test_bad_inputs(tmp_path):
    with pytest.raises(pararel.PararelError, match="does not exist"):
        pararel.load(tmp_path / "nowhere")
    folder = write_tiny_pararel(tmp_path / "d")
    with pytest.raises(pararel.PararelError, match=r"unknown relation id\(s\) \['P999'\]; valid ids: .*P36"):
        pararel.load(folder, relations=["P999"])
    data = pararel.load(folder)
    with pytest.raises(pararel.PararelError, match="P12345"):
        data.bags(style="mask", relations="P36,P12345")
    with pytest.raises(ValueError, match="style"):
        data.bags(style="suffix")
    with pytest.raises(ValueError, match="pass a model"):
        data.bags()
    facts = folder / "facts" / "P37.jsonl"
    facts.write_text(facts.read_text() + '{"sub_label": "Chile", "obj_label": \n')
    with pytest.raises(pararel.PararelError, match=r"P37.jsonl, line 13: not valid JSON"):
        pararel.load(folder)
    facts.write_text(json.dumps({"sub_label": "Chile"}) + "\n")
    with pytest.raises(pararel.PararelError, match=r"line 1: missing or non-text field\(s\) \['obj_label'\]"):
        pararel.load(folder)
    facts.unlink()
    (folder / "patterns" / "P36.jsonl").write_text(json.dumps({"pattern": "no slots"}) + "\n")
    with pytest.raises(pararel.PararelError, match="exactly one"):
        pararel.load(folder)
    shutil.rmtree(folder / "patterns")
    with pytest.raises(pararel.PararelError, match="no patterns/ folder"):
        pararel.load(folder)


def test_too_few_templates_is_explained(tmp_path):
    folder = write_tiny_pararel(tmp_path)
    path = folder / "patterns" / "P36.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:3]))
    data = pararel.load(folder)
    assert "P36" not in data.relations and data.dropped["P36"] == "3 templates"
    with pytest.raises(pararel.PararelError, match="not usable"):
        pararel.load(folder, relations=["P36"])
    assert "P36" in pararel.load(folder, min_templates=3).relations


def test_style_must_fit_the_model(tmp_path, tiny_bert, random_llama):
    """bags(causal_model, style="mask") was accepted; known_facts then scored every fact 0 (never known)."""
    data = pararel.load(write_tiny_pararel(tmp_path))
    with pytest.raises(ValueError, match="style='mask' does not fit a causal model"):
        data.bags(random_llama, style="mask")
    for style in ("cut", "end"):
        with pytest.raises(ValueError, match=f"style='{style}' does not fit an encoder"):
            data.bags(tiny_bert, style=style)
    assert data.bags(random_llama, style="end", min_templates=1)[0].target.startswith(" ")
    assert data.bags(tiny_bert, style="mask")[0].prompts[0].endswith("[MASK].")
