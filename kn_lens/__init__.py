"""kn_lens: find, test and explain the MLP neurons that store facts and skills, as TransformerLens hooks.

Example:
    >>> import kn_lens
    >>> model = kn_lens.load_model()      # embedded SmolLM2-135M, offline
    >>> prompt = kn_lens.make_prompt(model, "The capital of France is", " Paris")
"""

from kn_lens._typing import Model, Neuron
from kn_lens.models import load_model
from kn_lens.prompts import Prompt, make_prompt, make_prompts
from kn_lens.scoring import target_scores

__all__ = [
    "Model",
    "Neuron",
    "Prompt",
    "load_model",
    "make_prompt",
    "make_prompts",
    "target_scores",
]

__version__ = "0.1.0"
