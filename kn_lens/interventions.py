"""Moved: the effect tables now live in :mod:`kn_lens.evaluate` (one module per idea). Kept as an alias so
``from kn_lens.interventions import suppress`` still works."""

from kn_lens.evaluate import (
    DAI_INTERVENTIONS,
    EFFECT_COLUMNS,
    compare,
    demo_table,
    enhance,
    intervention_effects,
    other_relation_facts,
    summarize_effects,
    suppress,
)

__all__ = [
    "DAI_INTERVENTIONS",
    "EFFECT_COLUMNS",
    "compare",
    "demo_table",
    "enhance",
    "intervention_effects",
    "other_relation_facts",
    "summarize_effects",
    "suppress",
]
