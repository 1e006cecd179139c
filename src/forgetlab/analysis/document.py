"""The analysis of one study as typed objects, and analysis.json: their one writer and one reader.

:func:`forgetlab.analysis.analyse.analyse` returns an :class:`Analysis` (this module's classes hold
the result dataclasses of stats, effects, gains, hypotheses and conclusions); :func:`to_json` is the
only place that turns them into JSON values, and :func:`from_json` / :func:`load_analysis` read
analysis.json back into the same types (pydantic validates the nested dataclasses). The report is
rendered from ``from_json(to_json(analysis))``, so it shows exactly what analysis.json holds.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import TypeAdapter, ValidationError

from forgetlab.analysis.conclusions import Conclusions
from forgetlab.analysis.effects import FactorialResult
from forgetlab.analysis.gains import GainPoint
from forgetlab.analysis.hypotheses import Verdict
from forgetlab.analysis.joint import Bounds
from forgetlab.analysis.stats import Comparison, GroupStat, Omnibus
from forgetlab.config import ConfigError

ANALYSIS_JSON = "analysis.json"


@dataclass
class ExperimentInfo:
    """What the study is: name, design, scale, factors with their levels, reference group, times."""

    name: str
    design: str | None
    scale: str | None
    factors: dict[str, list[str]]
    reference: str | None
    started: str | None
    finished: str | None


@dataclass
class Settings:
    """How the study is analysed: the pre-registered metric, test, alpha and correction, and what
    the test means for the design (:func:`forgetlab.analysis.procedure.procedure`): the pairwise
    test behind every group-versus-reference p, the omnibus test gating them (or None) and whether
    the factorial effects model is fitted."""

    primary: str
    alpha: float
    correction: str
    test: str
    pairwise_test: str
    omnibus_test: str | None
    factorial: bool
    co_primary: list[str]
    secondary: list[str]
    seed: int
    primary_lower_is_better: bool


@dataclass(frozen=True)
class RegisteredHypothesis:
    """One hypothesis as the pre-registration block states it."""

    id: Any
    statement: Any
    criterion: Any


@dataclass
class Preregistration:
    """The block, its stored hash, and whether it was changed or added after the first run
    (see :func:`forgetlab.analysis.analyse.preregistration_status`)."""

    status: str
    block: dict[str, Any] | None  # the user's block verbatim: it is what the hash covers
    sha256: str | None
    sha256_now: str | None
    registered_at: str | None
    changed: bool

    @property
    def hypotheses(self) -> list[RegisteredHypothesis]:
        items = (self.block or {}).get("hypotheses") or []
        return [RegisteredHypothesis(h.get("id"), h.get("statement"), h.get("criterion"))
                for h in items]


@dataclass
class RunRow:
    """One planned run and how it ended."""

    run_id: str
    group: str
    seed: int | None
    order: str | None
    budget: str | None
    status: str | None
    error: str | None


@dataclass
class GroupRow:
    """A group's factor levels and its finished runs, seeds and orders."""

    group: str
    levels: dict[str, str]
    n_finished: int
    n_planned: int
    seeds: list[int]
    orders: list[str]


@dataclass
class GroupPerformance:
    """A group's mean seconds per phase, throughput, MFU, peak memory and parameter counts."""

    group: str
    phase_s: dict[str, float | None]
    wall_s: float | None
    tokens_per_s: float | None
    mfu: float | None
    peak_rss_bytes: float | None
    peak_cuda_bytes: float | None
    params_total: float | None
    params_trainable: float | None
    flops_training: float | None


@dataclass
class BudgetAnalysis:
    """Statistics, effects, gains, hypotheses and conclusions of one budget's finished runs."""

    n_finished: int
    groups: list[GroupRow]
    group_stats: list[GroupStat]
    reference_comparison: list[Comparison]
    factorial: dict[str, FactorialResult]
    marginal_gains: dict[str, list[GainPoint]]
    hypotheses: list[Verdict]
    conclusions: Conclusions
    performance: list[GroupPerformance]
    # each group between naive and joint training, one entry per joint group (none without one)
    joint_bounds: list[Bounds] = field(default_factory=list)
    # the omnibus test across the groups per metric (group designs under anova / kruskal)
    omnibus: list[Omnibus] = field(default_factory=list)

    @cached_property
    def _stats_by_key(self) -> dict[tuple[str, str], GroupStat]:
        return {(s.group, s.metric): s for s in self.group_stats}

    @cached_property
    def _comparisons_by_key(self) -> dict[tuple[str, str], Comparison]:
        return {(c.group, c.metric): c for c in self.reference_comparison}

    def stat(self, group: str, metric: str) -> GroupStat | None:
        """The statistics of ``metric`` in ``group`` (None when the group has no finished run)."""
        return self._stats_by_key.get((group, metric))

    def omnibus_on(self, metric: str) -> Omnibus | None:
        """The omnibus test across the groups on ``metric`` (None where the procedure has none)."""
        return next((o for o in self.omnibus if o.metric == metric), None)

    def comparison(self, group: str, metric: str) -> Comparison | None:
        """``group`` against the reference group on ``metric`` (None for the reference itself)."""
        return self._comparisons_by_key.get((group, metric))

    @property
    def finished_groups(self) -> list[str]:
        return [g.group for g in self.groups if g.n_finished]


@dataclass
class NamespaceEntry:
    """A hypothesis alias: the results column it reads and what it means."""

    column: str
    meaning: str


@dataclass
class Analysis:
    """The whole analysis of one study: what analysis.json holds, one key per field."""

    experiment: ExperimentInfo
    settings: Settings
    preregistration: Preregistration
    runs: list[RunRow]
    status_counts: dict[str, int]
    budgets: dict[str, BudgetAnalysis] = field(default_factory=dict)
    namespace: dict[str, NamespaceEntry] = field(default_factory=dict)
    finished_status: str = "finished"


def to_json(obj: Any) -> Any:
    """``obj`` as JSON values: a dataclass as the dict of its fields (plus the properties named in
    its ``JSON_PROPERTIES``, without the fields in ``JSON_OMIT_NONE`` that are None), tuples as
    lists, numpy scalars as Python numbers, NaN and infinities as None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        omit = getattr(obj, "JSON_OMIT_NONE", ())
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if not (value is None and f.name in omit):
                out[f.name] = to_json(value)
        for name in getattr(obj, "JSON_PROPERTIES", ()):
            out[name] = to_json(getattr(obj, name))
        return out
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    return plain(obj)


def plain(value: Any) -> Any:
    """A numpy scalar as a Python number; NaN and infinities as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


_ADAPTER: TypeAdapter[Analysis] = TypeAdapter(Analysis)


def from_json(document: dict[str, Any], where: str = ANALYSIS_JSON) -> Analysis:
    """The typed analysis of an analysis.json document; ConfigError naming ``where`` when the
    document does not have the shape :func:`to_json` writes."""
    try:
        return _ADAPTER.validate_python(document)
    except ValidationError as e:
        first = e.errors()[0]
        path = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"{where}: {path} = {first.get('input')!r}: {first['msg']} "
            "(not an analysis written by this version: run `forgetlab report` again)"
        ) from None


def load_analysis(path: str | Path) -> Analysis:
    """Read an analysis.json (or the one in a study directory) into its typed form."""
    path = Path(path)
    if path.is_dir():
        path = path / ANALYSIS_JSON
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{str(path)!r} does not exist: run `forgetlab report` on the study first"
        ) from None
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{str(path)!r} is not readable JSON ({e}): run `forgetlab report` "
                          "again") from None
    return from_json(document, repr(str(path)))
