"""kn_lens: find, test and explain the MLP neurons that store facts and skills, as TransformerLens hooks.

The modules, in layers: each imports only from its own layer or the ones below (``docs/ARCHITECTURE.md``).

1. foundations: ``inputs`` (the one boundary: user inputs become checked prompts, neurons, positions and
   numbers), ``prompts`` (``Prompt``, tokenising, batching by length), ``_typing`` (``Neuron``, ``Model``),
   ``backends`` (HookedTransformer / TransformerBridge differences);
2. model access and interventions: ``models`` (loading; ``embedded``: the offline SmolLM2), ``scoring``
   (objectives, ``relative_change``, ``log_odds``), ``cache`` (activations), ``hooks`` (interventions as
   ``(hook_name, fn)`` lists), ``edit`` (reversible weight edits), ``lens`` (what a neuron writes), ``datasets``
   (PARAREL);
3. ``attribution/`` (integrated gradients and friends, one path dispatcher, the memory planner);
4. knowledge neurons: ``neurons`` (finding them, controls), ``selection`` (the selection rules),
   ``knowledge`` (the ``KnowledgeNeurons`` result, stored candidates);
5. ``evaluation/`` (effect tables with controls, erase/edit evaluation, sweeps, convergence, demo) and
   ``skill/`` (skill neurons: tasks, prompts, predictivity, perturbation, pruning);
6. presentation and entry points: ``plotting/`` (plotly figures, imported on first use), ``evaluation.report``
   (a run's HTML page), ``exercises`` and ``quiz`` (tutorial exercises), ``cli`` (the ``kn-lens`` command).

Example:
    >>> import kn_lens
    >>> model = kn_lens.load_model()      # embedded SmolLM2-135M, offline
    >>> kns = kn_lens.find_knowledge_neurons(model, ["The capital of France is", "France's capital is"], " Paris")
    >>> kn_lens.suppress(model, kns)[["prompt", "before", "after"]]  # p(" Paris") before/after
                         prompt    before     after
    0  The capital of France is  0.7725  0.2199
    1       France's capital is  0.0324  0.0071
"""

import importlib
from typing import Any

from kn_lens import attribution, cache, edit, evaluation, hooks, inputs, lens, neurons, prompts, skill
from kn_lens import evaluation as evaluate  # the old module name, without its deprecation warning
from kn_lens import exercises as _exercises  # noqa: F401  (registers the tutorials' exercises with quiz)
from kn_lens._typing import Model, Neuron
from kn_lens.attribution import (
    ablation_effects,
    attribute,
    attribute_many,
    attribution_patching,
    grad_x_activation,
    integrated_gradients,
    integrated_gradients_many,
)
from kn_lens.cache import cache_mlp_post, mean_activations, top_activating
from kn_lens.edit import edit_fact, erase
from kn_lens.evaluation import compare, enhance, intervention_effects, suppress
from kn_lens.lens import decode, decode_many, direct_effect
from kn_lens.models import load_model
from kn_lens.neurons import (
    KnowledgeNeurons,
    find_knowledge_neurons,
    find_knowledge_neurons_many,
    random_neurons,
    relation_filter,
    top_neurons,
)
from kn_lens.prompts import Prompt, make_prompt, make_prompts
from kn_lens.scoring import target_scores, top_predictions
from kn_lens.skill import Predictivity, SoftPrompt, Task, predictivity, train_soft_prompt

__all__ = [
    "KnowledgeNeurons",
    "Model",
    "Neuron",
    "Predictivity",
    "Prompt",
    "SoftPrompt",
    "Task",
    "ablation_effects",
    "attribute",
    "attribute_many",
    "attribution",
    "attribution_patching",
    "cache",
    "cache_mlp_post",
    "compare",
    "decode",
    "decode_many",
    "direct_effect",
    "edit",
    "edit_fact",
    "enhance",
    "erase",
    "evaluate",
    "evaluation",
    "find_knowledge_neurons",
    "find_knowledge_neurons_many",
    "grad_x_activation",
    "hooks",
    "inputs",
    "integrated_gradients",
    "integrated_gradients_many",
    "intervention_effects",
    "lens",
    "load_model",
    "make_prompt",
    "make_prompts",
    "mean_activations",
    "neurons",
    "predictivity",
    "prompts",
    "random_neurons",
    "relation_filter",
    "skill",
    "suppress",
    "target_scores",
    "top_activating",
    "top_neurons",
    "top_predictions",
    "train_soft_prompt",
]

__version__ = "0.1.0"

_LAZY = {
    "plotting": "kn_lens.plotting",
    "quiz": "kn_lens.quiz",
    "cli": "kn_lens.cli",
    "fixtures": "kn_lens.fixtures",
    "datasets": "kn_lens.datasets",
    "sweeps": "kn_lens.evaluation.sweeps",  # kn_lens.sweeps / kn_lens.report: their homes, without the warning
    "report": "kn_lens.evaluation.report",
}


def __getattr__(name: str) -> Any:
    # plotly is only imported when figures are asked for: the science never needs it.
    if name in _LAZY:
        return importlib.import_module(_LAZY[name])
    raise AttributeError(f"module 'kn_lens' has no attribute {name!r}")
