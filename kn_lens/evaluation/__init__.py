"""Evaluating knowledge neurons: effects beside their controls, erasure and editing, records, sweeps, reports.

The modules, bottom to top (imports point down this list):

* :mod:`~kn_lens.evaluation.measure`: a target's probability / top-1 / log-probability per prompt; perplexity;
* :mod:`~kn_lens.evaluation.effects`: effect tables (:func:`intervention_effects`, :func:`suppress`,
  :func:`enhance`, :func:`compare`, :func:`summarize_effects`, :func:`specificity`);
* :mod:`~kn_lens.evaluation.controls`: control sets (facts of other relations, random active neurons);
* :mod:`~kn_lens.evaluation.edits`: erasing a relation's neurons, editing a fact (Dai et al. sec. 5);
* :mod:`~kn_lens.evaluation.records`: one JSON record per fact (:func:`evaluate_fact`) and tables of records;
* :mod:`~kn_lens.evaluation.known`: which PARAREL facts the model knows;
* :mod:`~kn_lens.evaluation.demo`: the main job, told with its controls (``kn-lens demo``);
* :mod:`~kn_lens.evaluation.convergence`: how the selected neurons depend on the quadrature;
* :mod:`~kn_lens.evaluation.sweeps` (with ``sweep_store``, ``sweep_manifest``, ``sweep_phases``): resumable,
  sharded PARAREL runs; :mod:`~kn_lens.evaluation.report`: a run's HTML page.

This package holds what ``kn_lens.evaluate`` held (every name is importable from here); the sweeps, convergence
and report modules are imported on use (``from kn_lens.evaluation import sweeps``).

Example:
    >>> from kn_lens.evaluation import specificity
    >>> specificity(-40.0, -10.0)
    0.75
"""

import importlib
from typing import Any

from kn_lens.evaluation.controls import other_relation_facts, random_active_neurons
from kn_lens.evaluation.demo import DEMO_HELDOUT, DEMO_PROMPTS, DEMO_TARGET, DEMO_UNRELATED, demo_table
from kn_lens.evaluation.edits import edit_effects, erase_relation, relation_neurons
from kn_lens.evaluation.effects import (
    DAI_INTERVENTIONS,
    EFFECT_COLUMNS,
    compare,
    enhance,
    intervention_effects,
    specificity,
    summarize_effects,
    suppress,
)
from kn_lens.evaluation.known import known_facts
from kn_lens.evaluation.measure import Measured, heldout_text, measure, text_perplexity
from kn_lens.evaluation.records import (
    CONDITION_ORDER,
    LEGACY_SELECTIONS,
    RECORD_FRAME_COLUMNS,
    SELECTIONS,
    evaluate_fact,
    fact_effects,
    fact_seed,
    other_answers,
    records_frame,
    relation_table,
    rule_summary,
)

__all__ = [
    "CONDITION_ORDER",
    "DAI_INTERVENTIONS",
    "DEMO_HELDOUT",
    "DEMO_PROMPTS",
    "DEMO_TARGET",
    "DEMO_UNRELATED",
    "EFFECT_COLUMNS",
    "LEGACY_SELECTIONS",
    "RECORD_FRAME_COLUMNS",
    "SELECTIONS",
    "Measured",
    "compare",
    "demo_table",
    "edit_effects",
    "enhance",
    "erase_relation",
    "evaluate_fact",
    "fact_effects",
    "fact_seed",
    "heldout_text",
    "intervention_effects",
    "known_facts",
    "measure",
    "other_answers",
    "other_relation_facts",
    "random_active_neurons",
    "records_frame",
    "relation_neurons",
    "relation_table",
    "rule_summary",
    "specificity",
    "summarize_effects",
    "suppress",
    "text_perplexity",
]

#: Modules imported on first use (``kn_lens.evaluation.sweeps.read_records(run)`` works without an import).
_LAZY = ("convergence", "report", "sweep_manifest", "sweep_phases", "sweep_store", "sweeps")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"kn_lens.evaluation.{name}")
    raise AttributeError(f"module 'kn_lens.evaluation' has no attribute {name!r}")
