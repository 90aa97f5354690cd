"""What the model knows: the PARAREL facts whose answer it predicts (:func:`known_facts`), the facts a sweep
evaluates. (It measures with :func:`~kn_lens.evaluation.measure.measure`, so it lives here, above the datasets.)
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from kn_lens._progress import progress_bar
from kn_lens._typing import Model, check_model
from kn_lens.datasets.pararel import Bag
from kn_lens.evaluation.measure import measure
from kn_lens.inputs import check_batch_size, check_number, check_sequence
from kn_lens.prompts import make_prompt


@torch.inference_mode()
def known_facts(
    model: Model,
    bags: Sequence[Bag],
    *,
    threshold: float | None = None,
    share: float = 0.5,
    batch_size: int = 32,
    progress: bool = False,
) -> tuple[list[Bag], pd.DataFrame]:
    """Which facts the model knows: the answer is top-1 (or has ``p >= threshold``) on ``share`` of the prompts.

    Args:
        model: the model.
        bags: the facts (from :meth:`Pararel.bags` with this model).
        threshold: None: a prompt is right when the answer is the top-1 token (its first token, for multi-token
            answers); a number: when the answer's probability is at least ``threshold``.
        share: the fraction of a bag's prompts that must be right (default: half).
        batch_size: prompts per forward pass.
        progress: a progress bar.

    Returns:
        ``(known, table)``: the known bags, and one row per bag (``relation, uuid, subject, answer, n_prompts,
        top1_share, mean_prob, known``), unknown facts included: list them, don't drop them silently.

    Example:
        >>> from kn_lens.datasets import pararel
        >>> bags = pararel.load(pararel_dir).bags(bert)
        >>> known, table = known_facts(bert, bags)
        >>> table.groupby("relation", sort=False)["known"].mean()   # coverage per relation
        relation
        P36      1.0
        P37      1.0
        P106     1.0
        P1303    1.0
        Name: known, dtype: float64
        >>> table.iloc[0]
        relation             P36
        uuid          P36-France
        subject           France
        answer             Paris
        n_prompts              4
        top1_share           1.0
        mean_prob          0.893
        known               True
        Name: 0, dtype: object
    """
    check_model(model)
    bags = check_sequence(bags, "bags", what="PARAREL Bags (Pararel.bags(model))")
    for bag in bags:
        if not all(hasattr(bag, attr) for attr in ("prompts", "target", "relation", "uuid")):
            raise TypeError(f"bags must be PARAREL Bags (from Pararel.bags(model)); got {type(bag).__name__} {bag!r}")
    if threshold is not None:
        check_number(threshold, "threshold", low=0, high=1, low_open=True)
    check_number(share, "share", low=0, high=1, low_open=True)
    batch_size = check_batch_size(batch_size)
    rows, known = [], []
    # Prompts of many bags share a forward pass (a forward costs about the same for 1 or 32 short prompts).
    chunk = max(1, 4 * batch_size // 8)
    starts = range(0, len(bags), chunk)
    for start in progress_bar(starts, f"known facts ({chunk} per step)", enabled=progress):
        part = bags[start : start + chunk]
        prompts = [make_prompt(model, p, bag.target) for bag in part for p in bag.prompts]
        prob_all, top1_all = measure(model, prompts, batch_size=batch_size)[:2]
        offset = 0
        for bag in part:
            n = len(bag.prompts)
            prob, top1 = prob_all[offset : offset + n], top1_all[offset : offset + n]
            offset += n
            right = top1 if threshold is None else prob >= threshold
            ok = bool(right.float().mean() >= share - 1e-9)
            rows.append(dict(relation=bag.relation, uuid=bag.uuid, subject=bag.subject, answer=bag.answer,
                             n_prompts=n, top1_share=float(top1.float().mean()), mean_prob=float(prob.mean()),
                             known=ok))  # fmt: skip
            if ok:
                known.append(bag)
    table = pd.DataFrame(rows, columns=["relation", "uuid", "subject", "answer", "n_prompts", "top1_share",
                                        "mean_prob", "known"])  # fmt: skip
    table.attrs["rule"] = f"top-1 on >= {share:g} of prompts" if threshold is None else f"p >= {threshold:g}"
    return known, table


__all__ = [
    "known_facts",
]
