"""Control sets beside knowledge neurons: facts of other relations (:func:`other_relation_facts`) and, for
edits, random *active* neurons of the same layers (:func:`random_active_neurons`). The random-neuron control of
the effect tables is :func:`kn_lens.neurons.random_neurons` (same count per layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from kn_lens._device import evaluating
from kn_lens._typing import Model, Neuron, check_model, group_by_layer, hook_name
from kn_lens.inputs import NeuronsLike, check_count, check_int, check_sequence, to_neurons, to_prompts
from kn_lens.prompts import Prompt


def other_relation_facts(facts: Sequence[Any], fact: Any, *, k: int | None = None, seed: int = 0) -> list[Any]:
    """The control set of unrelated facts: facts of *other* relations than ``fact``'s (anything with a
    ``.relation``, e.g. :class:`~kn_lens.neurons.FactPrompts` or the fixture's ``Fact``).

    Args:
        facts: all facts.
        fact: the fact under study.
        k: how many to draw (None = all of them), reproducibly with ``seed``.
        seed: random seed for the draw.

    Returns:
        The unrelated facts, in their original order.

    Example:
        >>> from kn_lens.fixtures import tiny_bert
        >>> others = other_relation_facts(tiny_bert.FACTS, tiny_bert.FACTS[0], k=6)
        >>> [f.subject for f in others]
        ['Korea', 'Finland', 'Denmark', 'Noah', 'Quinn', 'Tina']
    """
    if not hasattr(fact, "relation"):
        raise TypeError("facts need a .relation attribute (e.g. FactPrompts(..., relation='capital'))")
    facts = check_sequence(facts, "facts", what="facts")
    if not all(hasattr(f, "relation") for f in facts):
        raise TypeError("every fact needs a .relation attribute (e.g. FactPrompts(..., relation='capital'))")
    k = None if k is None else check_count(k, "k")
    seed = check_int(seed, "seed")
    pool = [f for f in facts if getattr(f, "relation", None) != fact.relation]
    if k is None or k >= len(pool):
        return pool
    picked = sorted(torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:k].tolist())
    return [pool[i] for i in picked]


@evaluating
@torch.inference_mode()
def random_active_neurons(model: Model, like: NeuronsLike, prompts: Sequence[Prompt], *, seed: int = 0) -> list[Neuron]:
    """The edit control: as many neurons per layer as ``like``, drawn among those *active* (mean activation > 0
    at the prompts' sites) and not in ``like``.

    Example:
        >>> from kn_lens.fixtures import tiny_bert
        >>> found = kn_lens.find_knowledge_neurons(bert, tiny_bert.train_prompts(tiny_bert.FACTS[0]), "Paris")
        >>> found.neurons
        [L1N253, L1N292, L1N990, L0N721, L1N1001]
        >>> random_active_neurons(bert, found.neurons, found.prompts, seed=0)
        [L0N618, L1N91, L1N100, L1N161, L1N1019]
    """
    check_model(model)
    neuron_list = to_neurons(like, model, allow_empty=True)
    seed = check_int(seed, "seed")
    prompts = to_prompts(model, prompts, what="prompts", allow_empty=True)
    if not prompts:
        raise ValueError("no prompts to find active neurons on")
    by_layer = group_by_layer(neuron_list)
    names = {hook_name(layer): layer for layer in by_layer}
    total = {layer: torch.zeros(model.cfg.d_mlp) for layer in by_layer}
    for p in prompts:
        _, cache = model.run_with_cache(p.tokens[None].to(model.cfg.device), names_filter=lambda n: n in names)
        for name, layer in names.items():
            total[layer] += cache[name][0, p.site].float().cpu()
    generator = torch.Generator().manual_seed(seed)
    taken = set(neuron_list)
    out: list[Neuron] = []
    for layer, indices in by_layer.items():
        active = [i for i in (total[layer] > 0).nonzero().flatten().tolist() if Neuron(layer, i) not in taken]
        if len(active) < len(indices):  # too few active ones: fill with any other neuron of the layer
            active += [i for i in range(model.cfg.d_mlp) if i not in active and Neuron(layer, i) not in taken]
        pick = torch.randperm(len(active), generator=generator)[: len(indices)]
        out.extend(Neuron(layer, active[int(i)]) for i in sorted(pick.tolist()))
    return out


__all__ = [
    "other_relation_facts",
    "random_active_neurons",
]
