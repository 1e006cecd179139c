"""The experiment spec (TOML): what a study is, validated once before any run starts.

A spec holds a base run config, factors whose named levels are config patches, a design that says
which level combinations become groups, seeds, named domain orders, budgets, a pre-registration
block and ``[scales.NAME]`` patches. A scale patch is merged onto the spec itself (so a scale may
change ``base``, ``seeds``, ``orders`` or anything else); ``--scale`` picks one.

Example (the T/W/R ablation's design, abridged; docs/cl_mechanisms.md)::

    name = "cl_mechanisms"
    seeds = [0, 1, 2]
    budgets = ["same_shape", "matched_flops"]
    [base]
    model.preset = "tiny"
    [factors.T]
    T0 = {}
    T1 = { model.sparsity = "2:4" }
    [factors.R]
    R0 = {}
    R1 = { mechanisms = [{ name = "sleep" }] }
    [orders]
    forward = ["code", "math", "medical", "legal", "dialogue"]
"""

from __future__ import annotations

import ast
import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from forgetlab.analysis import registry
from forgetlab.analysis.procedure import check_test
from forgetlab.config import ConfigError, format_validation_error
from forgetlab.experiments.slurm import SlurmOptions

DESIGNS = ("full_factorial", "one_at_a_time", "groups", "sweep")
BUDGETS = ("same_shape", "matched_flops")
CORRECTIONS = ("holm", "bonferroni", "fdr_bh", "none")
REPLACED_BY_SCALE = ("seeds", "orders", "budgets")  # a scale's value replaces, never merges

def check_metric_name(name: str) -> str:
    """A metric must be a ``results.parquet`` column, or the analysis could never compute it."""
    if registry.is_column(name):
        return name
    raise ValueError(
        f"metric {name!r} is not a results column; allowed: {', '.join(registry.allowed())}"
    )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Design(_Strict):
    """Which groups the factors make; ``reference`` names the group others are compared with."""

    kind: Literal["full_factorial", "one_at_a_time", "groups", "sweep"] = "full_factorial"
    reference: str | None = Field(None, description="group name; default: the first group")
    factor: str | None = Field(None, description="sweep: the factor swept over its levels")


class MatchedFlops(_Strict):
    """How ``matched_flops`` budgets are found (see ``budgets.py`` for why calibration)."""

    tolerance: float = Field(0.02, gt=0, le=0.5)
    method: Literal["auto", "analytic", "calibrate"] = "auto"
    calibration_steps: int | None = Field(
        None,
        ge=1,
        description="steps per calibrated stage; None = the reference's, at most 256 "
        "(long enough to see periodic work such as sleep phases)",
    )


class GPU(_Strict):
    """A reference GPU for the cost estimate: effective FLOP/s = peak x utilisation."""

    name: str
    peak_flops: float = Field(gt=0)
    utilisation: float = Field(gt=0, le=1)
    price_per_hour: float = Field(ge=0)

    @property
    def effective_flops(self) -> float:
        return self.peak_flops * self.utilisation


def _reference_a100() -> list[GPU]:
    # The T/W/R ablation's costing (docs/cl_mechanisms.md): A100 at a conservative effective
    # 150 TFLOP/s (of 312 dense bf16), $2/hour.
    return [GPU(name="A100", peak_flops=312e12, utilisation=150 / 312, price_per_hour=2.0)]


class Plan(_Strict):
    """Cost-estimate assumptions, stated in the spec so the plan shows where its numbers come from."""

    gpus: list[GPU] = Field(default_factory=_reference_a100)
    assumed_mfu: float = Field(
        0.3, gt=0, le=1, description="used when no benchmark can be run: peak x this"
    )


class Hypothesis(_Strict):
    id: str
    statement: str
    criterion: str = Field(description="Python expression over group means, checked by analysis")
    metric: str | None = None

    @field_validator("criterion")
    @classmethod
    def _parses(cls, v: str) -> str:
        try:
            tree = ast.parse(v, mode="eval")
        except SyntaxError as e:
            raise ValueError(f"criterion {v!r} is not a Python expression: {e.msg}") from None
        for node in ast.walk(tree):
            name = getattr(node, "id", None) or getattr(node, "attr", None)
            if isinstance(name, str) and name.startswith("__"):
                raise ValueError(f"criterion {v!r} uses the dunder name {name!r}")
            if isinstance(node, ast.Lambda | ast.NamedExpr | ast.comprehension):
                raise ValueError(f"criterion {v!r} uses {type(node).__name__}, not allowed")
        return v

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str | None) -> str | None:
        return None if v is None else check_metric_name(v)


class Preregistration(_Strict):
    """What is tested, how, decided before the first run (hashed and stored when it starts).

    ``test`` decides every p the analysis reports; which tests a design allows and what each
    means there is :mod:`forgetlab.analysis.procedure` (the study validator checks the pair)."""

    primary_metric: str
    co_primary_metrics: list[str] = Field(default_factory=list)
    secondary_metrics: list[str] = Field(default_factory=list)
    test: Literal["anova", "welch_t", "mann_whitney", "kruskal", "permutation"] = "anova"
    alpha: float = Field(0.05, gt=0, lt=1)
    correction: Literal["holm", "bonferroni", "fdr_bh", "none"] = "holm"
    hypotheses: list[Hypothesis] = Field(default_factory=list)

    @field_validator("primary_metric")
    @classmethod
    def _primary(cls, v: str) -> str:
        return check_metric_name(v)

    @field_validator("co_primary_metrics", "secondary_metrics")
    @classmethod
    def _others(cls, v: list[str]) -> list[str]:
        return [check_metric_name(m) for m in v]


Patch = dict[str, Any]


class ExperimentSpec(_Strict):
    """One study. ``factors``: {factor: {level: patch}}; ``groups``: {group: patch}."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    base: Patch = Field(default_factory=dict)
    base_model: Patch | None = Field(
        None,
        description="[base_model] of every run: a base pretrained once and shared (a level may "
        "patch it, e.g. base_model.steps, to compare bases)",
    )
    factors: dict[str, dict[str, Patch]] = Field(default_factory=dict)
    groups: dict[str, Patch] = Field(default_factory=dict)
    design: Design = Field(default_factory=Design)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    orders: dict[str, list[str]] = Field(default_factory=dict)
    budgets: list[Literal["same_shape", "matched_flops"]] = Field(
        default_factory=lambda: ["same_shape"], min_length=1
    )
    matched_flops: MatchedFlops = Field(default_factory=MatchedFlops)
    devices_per_run: int = Field(
        1, ge=1, description="ranks per run (torchrun, data-parallel): a GPU each, or CPU ranks"
    )
    cpus_per_run: int | None = Field(
        None, ge=1, description="Ray and Slurm: CPUs each run asks for, shared among its ranks "
        "(default: its threads per rank)"
    )
    slurm: SlurmOptions = Field(default_factory=SlurmOptions)
    plan: Plan = Field(default_factory=Plan)
    preregistration: Preregistration | None = None
    default_scale: str | None = None
    scales: dict[str, Patch] = Field(default_factory=dict)
    overrides: list[str] = Field(
        default_factory=list, description="``--set a.b=c`` applied to every run, after its levels"
    )

    @field_validator("design", mode="before")
    @classmethod
    def _design_shorthand(cls, v: Any) -> Any:
        return {"kind": v} if isinstance(v, str) else v

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, v: Any) -> Any:
        return list(range(v)) if isinstance(v, int) else v

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentSpec:
        kind = self.design.kind
        if kind == "groups" and not self.groups:
            raise ValueError("design 'groups' needs a [groups] table with at least one group")
        if kind != "groups" and not self.factors:
            raise ValueError(f"design {kind!r} needs a [factors] table")
        for f, levels in self.factors.items():
            if not levels:
                raise ValueError(f"factor {f!r} has no levels")
        if kind == "sweep" and self.design.factor not in self.factors:
            raise ValueError(
                f"design.factor = {self.design.factor!r}: a sweep names one of {list(self.factors)}"
            )
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds = {self.seeds} repeats a seed")
        first = next(iter(self.orders.values()), None)
        for oname, order in self.orders.items():
            if len(set(order)) != len(order) or sorted(order) != sorted(first or []):
                raise ValueError(
                    f"orders.{oname} = {order}: every order must list the same domains once each "
                    f"(first order: {first})"
                )
        if len(set(self.budgets)) != len(self.budgets):
            raise ValueError(f"budgets = {self.budgets} repeats a budget")
        if self.preregistration is not None:
            check_test(self.preregistration.test, kind)
        ranks = self.devices_per_run
        if self.slurm.gpus not in (0, ranks):
            raise ValueError(
                f"slurm.gpus = {self.slurm.gpus} contradicts devices_per_run = {ranks}: a run's "
                f"ranks take a GPU each, or train on CPUs; allowed: 0 or {ranks}"
            )
        if self.cpus_per_run is not None and self.cpus_per_run < ranks:
            raise ValueError(
                f"cpus_per_run = {self.cpus_per_run} is less than devices_per_run = {ranks}: "
                f"the run's CPUs are shared among its ranks, a CPU each at least; allowed: "
                f">= {ranks}"
            )
        return self


def deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``patch`` onto a copy of ``base``: tables merge key by key, dotted keys are paths, other
    values replace; ``mechanisms`` lists concatenate, so levels each switch on their own."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        head, _, rest = key.partition(".")
        if rest:
            value, key = {rest: value}, head
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        elif key == "mechanisms" and isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = [*out[key], *copy.deepcopy(value)]
        else:
            out[key] = deep_merge({}, value) if isinstance(value, dict) else copy.deepcopy(value)
    return out


def resolve_scale(raw: dict[str, Any], scale: str | None) -> tuple[dict[str, Any], str | None]:
    """The raw spec with scale ``scale`` (or the spec's ``default_scale``) merged onto it; its
    ``seeds``, ``orders`` and ``budgets`` replace the spec's (a smaller scale drops orders)."""
    scales = raw.get("scales") or {}
    name = scale if scale is not None else raw.get("default_scale")
    if name is None:
        return raw, None
    if name not in scales:
        allowed = f"allowed: {sorted(scales)}" if scales else "it defines no [scales.NAME] block"
        key = "--scale" if scale is not None else "default_scale"
        raise ConfigError(f"{key} = {name!r} is not a scale of this spec; {allowed}")
    patch = scales[name]
    if "scales" in patch:
        raise ConfigError(f"scales.{name} may not itself define scales")
    merged = deep_merge(raw, {k: v for k, v in patch.items() if k not in REPLACED_BY_SCALE})
    merged.update({k: v for k, v in patch.items() if k in REPLACED_BY_SCALE})
    return merged, name


def load_spec(raw: dict[str, Any], scale: str | None = None) -> tuple[ExperimentSpec, str | None]:
    """Validate a raw TOML dict under a scale; every problem is a :class:`ConfigError`."""
    merged, name = resolve_scale(raw, scale)
    try:
        return ExperimentSpec.model_validate(merged), name
    except ValidationError as e:
        raise ConfigError(
            format_validation_error(e, ExperimentSpec, "invalid experiment spec")
        ) from None
