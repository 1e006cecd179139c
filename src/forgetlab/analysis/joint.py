"""Joint training in the analysis: which runs train jointly, what their stages trained on, and
every group placed between naive fine-tuning (the lower bound) and joint training (the upper).

Continual-learning methods are read against two references trained on the same new data: naive
fine-tuning through the stream, which forgets, and joint training on the union of the stream's
domains in one pass, which cannot forget (Lopez-Paz & Ranzato 2017; the "multi-task" bound of
Chaudhry et al. 2019). On the final mean validation loss ``L`` (``loss.final_mean``: the loss on
every domain after the last stage, averaged over the domains), a method closes the share

    gap closed = (L_naive − L_method) / (L_naive − L_joint)

of the gap between them: 0 = no better than naive, 1 = as good as joint training, below 0 worse
than naive, above 1 better than joint training. The share is undefined (``None``, with the reason)
when joint training is not below naive (``L_joint >= L_naive``): there is then no gap to close, and
a ratio over a zero or negative gap would read as a ranking it is not.

The naive group is the study's design reference (the group every comparison of the report is
against; plain fine-tuning in the shipped studies); a joint group is any group whose runs set
``train.joint``. Group values are means over the group's finished runs of one budget. This is a
group-level number, not a per-run results column: the metric registry's entries are functions of
one run, and this one needs two other groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

METRIC = "loss.final_mean"


def joint_weighting(record: Mapping[str, Any]) -> str | None:
    """A run.json's ``train.joint`` (``proportional`` / ``uniform``), None for a stream run."""
    return ((record.get("config") or {}).get("train") or {}).get("joint")


def stage_labels(domains: list[str], joint: str | None) -> list[str]:
    """What each stage of a run trained on, for the rows of its R matrix: the stage's domain, or
    ``joint k/T`` under joint training (every stage read the mixture of all domains)."""
    if joint is None:
        return list(domains)
    return [f"joint {k}/{len(domains)}" for k in range(1, len(domains) + 1)]


def gap_closed(naive: float, method: float, joint: float) -> float | None:
    """(naive − method) / (naive − joint) for a lower-is-better value such as a loss; None when
    joint is not below naive (no gap to close) or a value is not a number."""
    if any(v != v for v in (naive, method, joint)):  # NaN: a group without the value
        return None
    gap = naive - joint
    if gap <= 0:
        return None
    return (naive - method) / gap


@dataclass(frozen=True)
class Placement:
    """One group's final mean loss and the share of the naive-to-joint gap it closes."""

    group: str
    value: float | None  # None (NaN before analysis.json): the group's runs lack the metric
    share: float | None


@dataclass(frozen=True)
class Bounds:
    """The groups of one budget placed between the naive group and one joint group."""

    metric: str
    naive_group: str
    naive: float | None
    joint_group: str
    joint: float | None
    note: str | None
    placements: list[Placement]


def place_groups(
    values: Mapping[str, float], naive_group: str, joint_group: str, metric: str = METRIC
) -> Bounds:
    """Each group of ``values`` (group -> mean of ``metric``, lower is better) placed between
    ``naive_group`` and ``joint_group``, both keys of ``values``."""
    naive, joint = float(values[naive_group]), float(values[joint_group])
    note = None
    if not naive - joint > 0:
        note = (
            f"joint training ({joint_group}: {joint:.4g}) is not below naive fine-tuning "
            f"({naive_group}: {naive:.4g}): there is no gap to close"
        )
    placements = [
        Placement(g, float(v), gap_closed(naive, float(v), joint)) for g, v in values.items()
    ]
    return Bounds(metric, naive_group, naive, joint_group, joint, note, placements)


def joint_groups(frame: pd.DataFrame, records: Mapping[str, dict[str, Any]]) -> list[str]:
    """Groups of ``frame`` whose runs train jointly (``train.joint`` set in their run.json), in
    table order."""
    return [
        str(group)
        for group, runs in frame.groupby("group", sort=False)
        if any(joint_weighting(records.get(r) or {}) for r in runs["run_id"])
    ]


def budget_bounds(
    frame: pd.DataFrame,
    records: Mapping[str, dict[str, Any]],
    reference: str | None,
    metric: str = METRIC,
) -> list[Bounds]:
    """For each joint group of one budget's finished runs, every group placed between the design
    reference (naive) and it; empty without a joint group, a reference that is not itself joint,
    or the metric."""
    joint = joint_groups(frame, records)
    if not joint or reference is None or reference in joint or metric not in frame:
        return []
    if reference not in set(frame["group"]):
        return []
    means = frame.groupby("group", sort=False)[metric].mean()
    values = {str(g): float(v) for g, v in means.items()}
    return [place_groups(values, reference, j, metric) for j in joint]
