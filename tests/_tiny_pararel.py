"""A PARAREL-format folder built from the tiny BERT fixture's facts (which the tiny BERT knows)."""

from __future__ import annotations

import json
from pathlib import Path

from kn_lens.fixtures import tiny_bert as fx

#: fixture relation -> a PARAREL-like id
IDS = {"capital": "P36", "language": "P37", "profession": "P106", "instrument": "P1303"}
SHARED = Path(__file__).parents[1].parent / "shared" / "pararel"


def write_tiny_pararel(folder: Path, relations=IDS, facts_per_relation: int | None = None) -> Path:
    (folder / "patterns").mkdir(parents=True, exist_ok=True)
    (folder / "facts").mkdir(parents=True, exist_ok=True)
    info = []
    for name, rid in relations.items():
        templates = [t.replace(fx.MASK, "[Y]") for t in fx.RELATIONS[name]]
        (folder / "patterns" / f"{rid}.jsonl").write_text("".join(json.dumps({"pattern": t}) + "\n" for t in templates))
        facts = fx.facts_of(name)[:facts_per_relation]
        rows = [{"sub_label": f.subject, "obj_label": f.answer, "uuid": f"{rid}-{f.subject}"} for f in facts]
        lines = [json.dumps(row) for row in rows]
        (folder / "facts" / f"{rid}.jsonl").write_text("\n".join(lines) + "\n")
        info.append(json.dumps({"relation": rid, "label": name, "type": "N-1"}))
    (folder / "relations.jsonl").write_text("\n".join(info) + "\n")
    return folder
