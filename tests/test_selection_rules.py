"""The selection rules by name: ``"dai"`` is Dai et al.'s released code (``src/2_get_kn.py``), exactly.

The reference below is written from the released rule as documented (stored triplets at ``>= 0.1 x max``,
re-filtered at ``>= 0.2 x max``, a fact keeps a neuron coarse on ``>= max(p x n, 3)`` prompts, ``p`` moved by
0.05 in plain float steps over at most 6 tries until the relation's average count is in 2..5, ``kn_rel`` at
``>= 0.1`` of the facts); every hand-made case pins one edge of it.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from kn_lens._typing import Neuron
from kn_lens.neurons import (
    Candidates,
    coarse_neurons,
    find_knowledge_neurons,
    find_knowledge_neurons_many,
    refine_relation,
    select,
)

# --------------------------------------------------------------------------------------------------------------
# An independent reference of the released rule, on nested lists of Python floats
# --------------------------------------------------------------------------------------------------------------


def _reference_prompt(scores: list[list[float]]) -> set[tuple[int, int]]:
    top = max(max(row) for row in scores)
    stored = [(i, j, v) for i, row in enumerate(scores) for j, v in enumerate(row) if v >= top * 0.1]
    best = max([-999.0] + [v for _, _, v in stored])
    return {(i, j) for i, j, v in stored if v >= best * 0.2}


def _reference_relation(bags: list[list[list[list[float]]]]) -> tuple[list[set[tuple[int, int]]], float, list]:
    """bags: facts -> prompts -> layers -> neurons. Returns each fact's neurons, the last p used, kn_rel."""
    counts = []
    for bag in bags:
        c: Counter = Counter()
        for prompt in bag:
            c.update(_reference_prompt(prompt))
        counts.append((c, len(bag)))
    p = 0.7
    for _ in range(6):
        kept = [{k for k, v in c.items() if v >= max(n * p, 3)} for c, n in counts]
        used = p
        average = sum(len(k) for k in kept) / len(kept)
        if average < 2:
            p -= 0.05
        if average > 5:
            p += 0.05
        if 2 <= average <= 5:
            break
    rel: Counter = Counter(k for neurons in kept for k in neurons)
    kn_rel = sorted(k for k, v in rel.items() if v >= len(kept) * 0.1)
    return kept, used, kn_rel


def _as_sets(neurons_by_fact) -> list[set[tuple[int, int]]]:
    return [{(n.layer, n.index) for n in neurons} for neurons in neurons_by_fact]


def _select_dai(bags: list[torch.Tensor]):
    candidates = [Candidates.from_scores(scores, layers=range(scores.shape[1])) for scores in bags]
    return select(candidates, variant="dai")


# --------------------------------------------------------------------------------------------------------------
# Hand-made edges
# --------------------------------------------------------------------------------------------------------------


def _bag(n_prompts: int, counts: dict[int, int], *, d_mlp: int = 16, top: float = 1.0) -> torch.Tensor:
    """One fact: neuron ``j`` of layer 0 scores ``top`` on the first ``counts[j]`` prompts, 0.01 elsewhere."""
    scores = torch.full((n_prompts, 1, d_mlp), 0.01)
    for j, k in counts.items():
        scores[:k, 0, j] = top
    return scores


def test_score_exactly_at_the_threshold_is_coarse():
    scores = torch.tensor([[5.0, 1.0, 0.99, 0.0]])  # 0.2 x 5 = 1.0 exactly in float64
    assert coarse_neurons(scores, 0.2, inclusive=True) == [Neuron(0, 0), Neuron(0, 1)]
    assert coarse_neurons(scores, 0.2) == [Neuron(0, 0)]  # the adaptive rule: strictly above


def test_count_exactly_p_times_n_is_kept_and_three_prompts_is_the_minimum():
    # 20 prompts: p x n = 14 exactly; neuron 0 on 14 prompts (kept), neuron 1 on 13 (not), neurons 2-3 on 20
    fact = _bag(20, {0: 14, 1: 13, 2: 20, 3: 20})
    (only,) = _select_dai([fact])
    assert set(only.neurons) == {Neuron(0, 0), Neuron(0, 2), Neuron(0, 3)} and only.share == 0.7
    # 4 prompts: 0.7 x 4 = 2.8, but the minimum is 3 prompts: on 3 of 4 is kept, on 2 of 4 is not
    small = _bag(4, {0: 3, 1: 2, 2: 4})
    assert set(_select_dai([small])[0].neurons) == {Neuron(0, 0), Neuron(0, 2)}
    # 2 prompts can never reach 3: the released rule selects nothing, whatever the share
    assert _select_dai([_bag(2, {0: 2, 1: 2})])[0].neurons == []


def test_share_moves_in_the_released_float_steps():
    # 20 prompts: 4 neurons on all of them, then one each on 19, 18, 17, 16 and 15 prompts: 9 kept at p = 0.7.
    # Too many, so p rises: 0.75 (9), 0.8 (8), 0.8500000000000001 (20 p = 17.000000000000004: the neuron on 17
    # prompts falls short, 6), 0.9000000000000001 (18.000000000000004: 5, in range). With exact arithmetic the 17
    # and 18 would pass, and the rule would stop one move later, at 0.95.
    fact = _bag(20, {0: 20, 1: 20, 2: 20, 3: 20, 4: 19, 5: 18, 6: 17, 7: 16, 8: 15})
    (got,) = _select_dai([fact])
    kept, used, _ = _reference_relation([fact.tolist()])
    assert _as_sets([got.neurons]) == kept == [{(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)}]
    assert got.share == used == 0.7 + 0.05 + 0.05 + 0.05 + 0.05 == 0.9000000000000001
    assert got.adjustments == 4


def test_relation_average_not_individual_counts_and_last_try_when_out_of_range():
    # fact A has 8 neurons on all prompts, fact B none: the average (4) is in range, so nothing moves and A keeps 8
    a = _bag(5, {j: 5 for j in range(8)})
    b = torch.zeros(5, 1, 16)
    for i in range(5):
        b[i, 0, i] = 1.0  # B: each prompt has its own single coarse neuron, so no neuron is shared
    got = _select_dai([a, b])
    assert [len(s.neurons) for s in got] == [8, 0]  # no per-fact cap, no per-fact adaptation
    assert got[0].share == 0.7 and got[0].adjustments == 0 and got[0].relation_average == 4.0
    kept, _, _ = _reference_relation([a.tolist(), b.tolist()])
    assert _as_sets([s.neurons for s in got]) == kept
    # 3 facts of 3 prompts with 7 shared neurons each: no share <= 1 cuts them; after 6 tries the 6th try's
    # result is kept (p = 0.7 + 5 x 0.05 in float steps), with 7 per fact
    many = [_bag(3, {j: 3 for j in range(7)}) for _ in range(3)]
    out = _select_dai(many)
    assert all(len(s.neurons) == 7 for s in out) and out[0].adjustments == 5
    assert out[0].share == _reference_relation([m.tolist() for m in many])[1]


def test_zero_and_negative_maxima():
    # a prompt whose largest score is exactly 0: every zero score is a candidate (the released code's triplets)
    zero = torch.tensor([[0.0, -1.0, 0.0], [-2.0, 0.0, -3.0]])
    assert set(coarse_neurons(zero, 0.2, inclusive=True)) == {Neuron(0, 0), Neuron(0, 2), Neuron(1, 1)}
    assert coarse_neurons(zero, 0.2) == []  # the adaptive rule: no positive score, no candidate
    negative = -torch.rand(2, 3) - 0.1
    assert coarse_neurons(negative, 0.2, inclusive=True) == []  # negative max: nothing reaches 0.2 x max
    # three such prompts select the zero neurons under the released rule
    fact = torch.stack([zero, zero, zero])
    assert set(_select_dai([fact])[0].neurons) == {Neuron(0, 0), Neuron(0, 2), Neuron(1, 1)}
    assert _as_sets([_select_dai([fact])[0].neurons]) == _reference_relation([fact.tolist()])[0]


def test_relation_neurons_are_reported_not_removed():
    facts = [_bag(4, {0: 4, j: 4}) for j in range(1, 12)]  # neuron 0 in every fact, neuron j only in fact j
    got = _select_dai(facts)
    assert all(Neuron(0, 0) in s.neurons for s in got)  # not removed
    _, _, kn_rel = _reference_relation([f.tolist() for f in facts])
    assert sorted((n.layer, n.index) for n in got[0].relation_neurons) == kn_rel
    assert Neuron(0, 0) in got[0].relation_neurons and Neuron(0, 1) not in got[0].relation_neurons  # 1/11 < 0.1


def test_refine_relation_matches_reference_on_random_relations():
    """Random relations (integer-valued scores, so ties and exact thresholds are frequent) against the reference."""
    rng = random.Random(0)
    for trial in range(60):
        n_facts = rng.randint(1, 6)
        bags = []
        for _ in range(n_facts):
            n_prompts = rng.randint(1, 12)
            scores = torch.randint(-3, 11, (n_prompts, 2, 6)).float()
            if rng.random() < 0.2:
                scores[0] = torch.minimum(scores[0], torch.zeros_like(scores[0]))  # a max of 0 (or below)
            bags.append(scores)
        kept, used, kn_rel = _reference_relation([b.tolist() for b in bags])
        got = _select_dai(bags)
        assert _as_sets([s.neurons for s in got]) == kept, trial
        assert got[0].share == used, trial
        assert sorted((n.layer, n.index) for n in got[0].relation_neurons) == kn_rel, trial


# --------------------------------------------------------------------------------------------------------------
# The rule through the public functions, and candidates equal full scores
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(random_llama):
    return random_llama


FACTS = [
    (["The capital of France is", "France's capital is", "The French capital is", "Paris is the capital of"], " Paris"),
    (["The capital of Italy is", "Italy's capital is", "The Italian capital is"], " Rome"),
    (["The capital of Spain is", "Spain's capital is", "The Spanish capital is"], " Madrid"),
]


def test_many_adapts_per_relation_and_equals_select_on_candidates(model):
    facts = [(p, t, "capital") for p, t in FACTS]
    kwargs = dict(n_steps=3, layers=[1, 2])
    dai = find_knowledge_neurons_many(model, facts, variant="dai", **kwargs)
    assert all(r.params["variant"] == "dai" and "released" in r.params["rule"] for r in dai)
    assert all("relation" not in r.dropped for r in dai)  # the released rule reports kn_rel, removes nothing
    bags = [r.scores.tolist() for r in dai]
    # the reference indexes rows 0..; our rows are layers [1, 2]
    kept, used, kn_rel = _reference_relation(bags)
    assert [{(n.layer - 1, n.index) for n in r.neurons} for r in dai] == kept
    assert dai[0].params["share_used"] == used
    assert sorted((n.layer - 1, n.index) for n in dai[0].params["relation_neurons"]) == kn_rel
    # stored candidates give the same selection, under every rule
    candidates = [r.candidates() for r in dai]
    again = select(candidates, variant="dai", relations=["capital"] * 3)
    assert [s.neurons for s in again] == [r.neurons for r in dai]
    adaptive = find_knowledge_neurons_many(model, facts, relation_share=None, scores=None, **kwargs)
    assert [s.neurons for s in select(candidates, variant="adaptive")] == [r.neurons for r in adaptive]
    eleuther = [find_knowledge_neurons(model, p, t, variant="eleuther", scores=r.scores, layers=[1, 2])
                for (p, t), r in zip(FACTS, dai, strict=True)]  # fmt: skip
    assert [s.neurons for s in select(candidates, variant="eleuther")] == [r.neurons for r in eleuther]


def test_one_fact_is_its_own_relation(model):
    prompts, target = FACTS[0]
    one = find_knowledge_neurons(model, prompts, target, variant="dai", n_steps=3, layers=[1, 2])
    kept, used, _ = _reference_relation([one.scores.tolist()])
    assert [{(n.layer - 1, n.index) for n in one.neurons}] == kept and one.params["share_used"] == used
    many = find_knowledge_neurons_many(model, [(prompts, target)], variant="dai", scores=None, n_steps=3, layers=[1, 2])
    assert many[0].neurons == one.neurons


def test_default_rule_is_named_and_relation_filter_defaults(model):
    facts = [(p, t, "capital") for p, t in FACTS]
    adaptive = find_knowledge_neurons_many(model, facts, n_steps=3, layers=[2])
    assert adaptive[0].params["variant"] == "adaptive" and "kn_lens" in adaptive[0].params["rule"]
    assert all("relation" in r.dropped for r in adaptive)  # kn_lens's relation filter is on by default here
    dai = find_knowledge_neurons_many(model, facts, variant="dai", n_steps=3, layers=[2])
    filtered = find_knowledge_neurons_many(model, facts, variant="dai", relation_share=0.1, n_steps=3, layers=[2])
    assert all("relation" not in r.dropped for r in dai) and all("relation" in r.dropped for r in filtered)


def test_nan_scores_and_unknown_variant_are_refused(model):
    prompts, target = FACTS[1]
    bad = torch.zeros(3, 1, model.cfg.d_mlp)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        find_knowledge_neurons(model, prompts, target, layers=[1], scores=bad)
    with pytest.raises(ValueError, match="variant"):
        find_knowledge_neurons(model, prompts, target, variant="dai-capped")
    with pytest.raises(ValueError, match="threshold"):
        Candidates.from_scores(torch.rand(2, 1, 4), layers=[0], floor=0.3).coarse(0.2)


def test_candidates_round_trip_and_equal_full_scores():
    torch.manual_seed(3)
    scores = torch.randn(5, 3, 40)
    cands = Candidates.from_scores(scores, layers=[4, 7, 9])
    for inclusive in (False, True):
        full = [set(coarse_neurons(s, 0.2, layers=[4, 7, 9], inclusive=inclusive)) for s in scores]
        assert [set(c) for c in cands.coarse(0.2, inclusive=inclusive)] == full
    import json

    assert Candidates.from_json(json.loads(json.dumps(cands.to_json()))) == cands
    (selected,) = select([cands], variant="dai", adaptive=None)
    unordered = refine_relation([cands.coarse(0.2, inclusive=True)], adaptive=None).neurons[0]
    assert set(unordered) == set(selected.neurons) and len(unordered) == len(selected.neurons) > 0


def test_fewer_prompts_than_the_minimum_count_warn_and_select_nothing():
    # Two prompts can never reach the released rule's count of 3: faithful (no neurons), but said aloud.
    a = Neuron(0, 1)
    with pytest.warns(UserWarning, match="1 of 2 facts have fewer than 3 prompts"):
        refined = refine_relation([[[a], [a]], [[a], [a], [a]]], adaptive=None)
    assert refined.neurons == [[], [a]]
    scores = torch.zeros(2, 1, 4)
    scores[:, 0, 2] = 1.0  # the same neuron on top of both prompts
    with pytest.warns(UserWarning, match="at least 3 paraphrases"):
        (selected,) = select([Candidates.from_scores(scores, layers=[5])], variant="dai")
    assert selected.neurons == []
    (adaptive,) = select([Candidates.from_scores(scores, layers=[5])], variant="adaptive")
    assert adaptive.neurons == [Neuron(5, 2)]
