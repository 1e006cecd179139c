"""The mean R heatmap's domain order is chosen deterministically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from forgetlab.analysis.load import Experiment
from forgetlab.analysis.plots import mean_r


def _experiment(orders: list[list[str]]) -> tuple[Experiment, list[str]]:
    records = {}
    for i, order in enumerate(orders):
        records[f"r{i}"] = {"domains": order, "R": {"loss": [[float(i), 1.0], [2.0, 3.0], [4.0, 5.0]]}}
    return Experiment(root=Path("."), meta={}, results=pd.DataFrame(), records=records), list(records)


def test_a_tie_between_orders_goes_to_the_first_order_met():
    forward, reverse = ["code", "math"], ["math", "code"]
    for first, second in ((forward, reverse), (reverse, forward)):
        # A set iterates both orders the same way whichever came first, so one of these two
        # cases fails when the tie is broken by set order.
        exp, ids = _experiment([first, second, second, first])
        matrix, order = mean_r(exp, ids)
        assert order == first
        np.testing.assert_allclose(matrix[0, 0], (0.0 + 3.0) / 2)  # runs r0 and r3 share `first`


def test_the_most_common_order_wins_and_only_its_runs_are_averaged():
    forward, reverse = ["code", "math"], ["math", "code"]
    exp, ids = _experiment([reverse, forward, forward])
    matrix, order = mean_r(exp, ids)
    assert order == forward
    np.testing.assert_allclose(matrix[0, 0], (1.0 + 2.0) / 2)
