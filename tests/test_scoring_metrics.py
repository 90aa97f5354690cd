"""The metric vocabulary: relative change and log-odds, computed in one place (scoring) for every input kind."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from kn_lens.scoring import log_odds, relative_change


def test_relative_change_is_the_same_number_for_every_input_kind():
    before, after = [0.8, 0.5, 0.0, 0.2], [0.4, 0.75, 0.3, 0.2]
    expected = [-0.5, 0.5, math.nan, 0.0]  # (after - before) / before; nothing to compare with when before is 0
    as_floats = [relative_change(b, a) for b, a in zip(before, after, strict=True)]
    as_array = relative_change(np.array(before), np.array(after))
    as_tensor = relative_change(torch.tensor(before, dtype=torch.float64), torch.tensor(after, dtype=torch.float64))
    index = ["a", "b", "c", "d"]
    as_series = relative_change(pd.Series(before, index=index), pd.Series(after, index=index))
    for got in (as_floats, as_array, as_tensor.tolist(), as_series.tolist()):
        np.testing.assert_allclose(got, expected, equal_nan=True)
    assert list(as_series.index) == index  # pandas keeps its labels
    assert as_tensor.dtype == torch.float64


def test_relative_change_of_integer_tensors_is_a_float():
    out = relative_change(torch.tensor([2, 4]), torch.tensor([3, 2]))
    assert out.dtype == torch.float32 and out.tolist() == [0.5, -0.5]


def test_log_odds_inverts_the_sigmoid_and_stays_finite_at_0_and_1():
    x = torch.linspace(-6, 6, 13, dtype=torch.float64)
    torch.testing.assert_close(log_odds(torch.sigmoid(x)), x)
    p = torch.tensor([0.1, 0.3, 0.5])
    torch.testing.assert_close(log_odds(1 - p), -log_odds(p))
    ends = log_odds(torch.tensor([0.0, 1.0]))
    assert bool(torch.isfinite(ends).all()) and ends[0] < -20 and ends[1] > 20
    assert math.isclose(log_odds(0.75), math.log(3))
    np.testing.assert_allclose(log_odds(np.array([0.5, 0.75])), [0.0, math.log(3)])
