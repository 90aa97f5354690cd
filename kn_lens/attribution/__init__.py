"""Attribution of a target token to every MLP neuron: integrated gradients and friends, as hooks on ``mlp_post``.

Context:
    Dai et al. (2022) score a neuron by how much the model's belief in the right answer depends on it. They take
    the neuron activations of one layer at the *site* (the ``[MASK]`` of an encoder prompt, the last prompt token
    of a causal one), scale them from a baseline (zero) up to their real value, and integrate the gradient of the
    target probability along that straight path (integrated gradients, Sundararajan et al. 2017):

    ``IG_i = (a_i - b_i) * integral_0^1 dF(b + alpha (a - b)) / da_i d alpha``

    Only the activation at the site is scaled; everything else runs as usual. The integral is approximated with
    ``n_steps`` points (see :data:`METHODS`), and by completeness ``sum_i IG_i ~ F(a) - F(b)``: the *convergence
    delta* (the difference of the two) tells how good the approximation is.

Intuition:
    A plain gradient only says what a tiny nudge does at the current activation; saturated neurons (softmax near
    1) then look irrelevant. Integrating along the path from "neuron off" to "neuron on" credits neurons with
    the change they actually cause. Gradient x activation is the one-step version; attribution patching is its
    linear estimate of an ablation; :func:`ablation_effects` runs the real ablations.

One sign for every method:
    Every attribution here returns "larger = the neuron supports the target more". For integrated gradients and
    gradient x activation that is their natural sign; :func:`ablation_effects` returns ``F(clean) - F(ablated)``
    (what the target loses when the neuron is removed) and :func:`attribution_patching` its first-order estimate,
    so that selecting the largest scores (as :func:`kn_lens.find_knowledge_neurons` does) means the same thing
    whatever the method.

Multi-token targets:
    Each target token is attributed at the position that predicts it (causal models: teacher-forced, the last
    prompt token for the first target token, then one position further per token; encoders: its own
    ``[MASK]``), with the objective of that token alone, and the scores are averaged over the target's tokens
    (the EleutherAI package's convention). A callable metric (see :mod:`kn_lens.scoring`) is attributed once, at
    the prompt's site.

Your hooks:
    Hooks you attached to the model (``model.hooks(...)``, ``add_hook``, PyTorch module hooks) stay in force.
    The fast path computes blocks from their weights and would bypass them, so with any hook attached it steps
    aside (a warning says so) and the plain path runs, which honours them.

Caveats:
    * Scores depend on the baseline, the objective (probability saturates, logits do not) and on which hook
      point is scaled (``mlp_post`` here; the EleutherAI package scales ``mlp_pre`` of GPT models).
    * IG attributes one layer at a time (the other layers keep their clean values at the site), as in Dai et al.;
      the scores of different layers do not add up to one total.
    * A small convergence delta says the integral is well approximated, not that the neurons found carry the
      fact: check that with interventions (:func:`kn_lens.suppress`, :mod:`kn_lens.hooks`) or exact ablations.
    * Zero is a strong baseline for neurons that are rarely exactly 0 (SiLU, GELU): a baseline of mean
      activations (``baseline=``) asks "compared with an ordinary input" instead of "compared with silence".

Speed:
    ``fast=True`` (default) gives the same numbers as the plain method (to float32 rounding) but computes the
    layers below ``L`` once per prompt, only the positions that can change (causal models reuse the keys and
    values of earlier positions), all layers and steps in one batch, and the unembedding only where the
    objective reads it. ``fast=False`` runs the textbook version (one ``run_with_hooks`` forward and backward
    per batch of steps and layer), kept as the reference. Both backends have a fast path: a
    ``HookedTransformer``/``HookedEncoder`` recomputes its blocks from their weights, a ``TransformerBridge``
    reruns its own blocks (TransformerLens 3.9 and 4.x). :func:`attribution_path` says which path a model takes
    and why. How many rows share a pass is set by a memory budget (``memory_budget=``, bytes; by default a share
    of the device's free memory).

Where things are:
    * :mod:`~kn_lens.attribution.quadrature`: the integration rules (:data:`METHODS`, :func:`step_alphas`).
    * :mod:`~kn_lens.attribution.paths`: the one dispatcher (:func:`attribution_path`, :data:`PATHS`) and
      :func:`attached_hooks`.
    * :mod:`~kn_lens.attribution.integrated`: :func:`integrated_gradients` and :func:`integrated_gradients_many`,
      with the plain reference.
    * :mod:`~kn_lens.attribution.gradients`: :func:`grad_x_activation`, :func:`attribution_patching`.
    * :mod:`~kn_lens.attribution.ablation`: :func:`ablation_effects`.
    * :mod:`~kn_lens.attribution.methods`: :func:`attribute`, :func:`attribute_many` (:data:`ATTRIBUTIONS`).
    * Private: ``_common`` (the :class:`~kn_lens.attribution._common.Request` a path receives, the argument
      checks), ``_fast`` (the fast path's driver: packing, memory plan, quadrature, deltas), ``_engine`` (what its
      two backends share), ``_hooked`` and ``_bridge`` (the backends), ``_memory`` (the one memory planner).

    A new attribution method goes in a module of its own here, returns ``[layer, d_mlp]`` with the sign above,
    checks its arguments with ``_common`` before any computation, and is named in :data:`ATTRIBUTIONS`.

Example:
    >>> scores = integrated_gradients(model, "The capital of France is", " Paris")   # [n_layers, d_mlp]
    >>> kn_lens.top_neurons(scores, 5)
    [L0N1297, L24N1005, L29N778, L27N1392, L29N1066]
"""

from kn_lens._typing import HOOKS, hook_name
from kn_lens.attribution._common import Baseline, per_token_prompts
from kn_lens.attribution.ablation import ablation_effects
from kn_lens.attribution.gradients import attribution_patching, grad_x_activation
from kn_lens.attribution.integrated import integrated_gradients, integrated_gradients_many
from kn_lens.attribution.methods import ATTRIBUTIONS, attribute, attribute_many
from kn_lens.attribution.paths import PATHS, attached_hooks, attribution_path
from kn_lens.attribution.quadrature import METHODS, Method, step_alphas

__all__ = [
    "ATTRIBUTIONS",
    "HOOKS",
    "METHODS",
    "PATHS",
    "Baseline",
    "Method",
    "ablation_effects",
    "attached_hooks",
    "attribute",
    "attribute_many",
    "attribution_patching",
    "attribution_path",
    "grad_x_activation",
    "hook_name",
    "integrated_gradients",
    "integrated_gradients_many",
    "per_token_prompts",
    "step_alphas",
]
