"""Design expansion: spec -> groups -> planned runs, each with one resolved, hashable RunConfig.

Groups come from the design: every level combination (``full_factorial``), the reference plus one
factor changed at a time (``one_at_a_time``), hand-listed groups (``groups``, which may pick factor
levels with ``levels = {T = "T1"}``), or one factor over all its levels (``sweep``). A factor-based
group is named by its level names joined with ``_`` in factor order (``T1_W0_R1``).

Runs are ordered budget -> seed -> order -> group, so a study stopped half-way holds every group
of its first seeds rather than every seed of its first groups.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from forgetlab.config import ConfigError, RunConfig, apply_overrides, resolve_run_config
from forgetlab.experiments.spec import ExperimentSpec, Patch, deep_merge
from forgetlab.train.rundir import config_hash

RUNS_DIR = "runs"


@dataclass(frozen=True)
class Group:
    name: str
    levels: dict[str, str]
    patches: tuple[Patch, ...]


@dataclass(frozen=True)
class PlannedRun:
    """One row of the study: a group under a budget, seed and order, with its resolved config."""

    run_id: str
    group: str
    levels: dict[str, str]
    seed: int
    order: list[str]
    order_name: str
    budget: str
    steps_per_stage: int
    config: RunConfig

    def record(self) -> dict[str, Any]:
        """The ``runs`` entry of experiment.json."""
        return {
            "run_id": self.run_id,
            "group": self.group,
            "levels": self.levels,
            "seed": self.seed,
            "order": self.order,
            "order_name": self.order_name,
            "budget": self.budget,
            "steps_per_stage": self.steps_per_stage,
            "probes": list(self.config.data.probes),  # their results columns exist from the start
            "dir": f"{RUNS_DIR}/{self.run_id}",
        }


def _factor_group(spec: ExperimentSpec, levels: dict[str, str]) -> Group:
    patches = tuple(spec.factors[f][lvl] for f, lvl in levels.items())
    return Group("_".join(levels.values()), dict(levels), patches)


def design_groups(spec: ExperimentSpec) -> list[Group]:
    """The design's groups, in a stable order (spec order of factors, levels and groups)."""
    kind = spec.design.kind
    first = {f: next(iter(levels)) for f, levels in spec.factors.items()}
    if kind == "full_factorial":
        combos = itertools.product(*(list(levels) for levels in spec.factors.values()))
        return [_factor_group(spec, dict(zip(spec.factors, c, strict=True))) for c in combos]
    if kind == "one_at_a_time":
        ref_levels = _reference_levels(spec, first)
        out = [_factor_group(spec, ref_levels)]
        for f, levels in spec.factors.items():
            out += [
                _factor_group(spec, {**ref_levels, f: lv}) for lv in levels if lv != ref_levels[f]
            ]
        return out
    if kind == "sweep":
        swept = spec.design.factor
        assert swept is not None  # the spec validator requires it
        return [_factor_group(spec, {**first, swept: lv}) for lv in spec.factors[swept]]
    return [_listed_group(spec, name, patch) for name, patch in spec.groups.items()]


def _reference_levels(spec: ExperimentSpec, first: dict[str, str]) -> dict[str, str]:
    """one_at_a_time's centre: the group named by design.reference, else every first level."""
    ref = spec.design.reference
    if ref is None:
        return first
    for combo in itertools.product(*(list(levels) for levels in spec.factors.values())):
        if "_".join(combo) == ref:
            return dict(zip(spec.factors, combo, strict=True))
    raise ConfigError(
        f"design.reference = {ref!r} is no level combination; e.g. {'_'.join(first.values())!r}"
    )


def _listed_group(spec: ExperimentSpec, name: str, patch: Patch) -> Group:
    levels = dict(patch.get("levels") or {})
    for f, lv in levels.items():
        if lv not in spec.factors.get(f, {}):
            allowed = {k: list(v) for k, v in spec.factors.items()}
            raise ConfigError(
                f"groups.{name}.levels.{f} = {lv!r} is not a level; allowed: {allowed}"
            )
    own = {k: v for k, v in patch.items() if k != "levels"}
    return Group(name, levels, (*(spec.factors[f][lv] for f, lv in levels.items()), own))


def reference_group(spec: ExperimentSpec, groups: list[Group]) -> Group:
    """The group budgets are matched to and one-at-a-time designs vary around."""
    ref = spec.design.reference
    if ref is None:
        return groups[0]
    for g in groups:
        if g.name == ref:
            return g
    raise ConfigError(
        f"design.reference = {ref!r} is not a group; allowed: {[g.name for g in groups]}"
    )


def base_raw(spec: ExperimentSpec) -> dict[str, Any]:
    """The spec's ``[base]`` config, with its ``[base_model]`` table when it declares one."""
    if spec.base_model is None:
        return dict(spec.base)
    return deep_merge({"base_model": spec.base_model}, spec.base)


def group_raw(spec: ExperimentSpec, group: Group) -> dict[str, Any]:
    """The base config with the group's level patches merged on, in factor order."""
    raw = base_raw(spec)
    for patch in group.patches:
        raw = deep_merge(raw, patch)
    return raw


def resolve_group(
    spec: ExperimentSpec, group: Group, seed: int, order: list[str] | None, steps: int | None = None
) -> RunConfig:
    """The group's RunConfig for one seed and order; errors name the group and its levels."""
    from forgetlab.mechanisms import build_mechanisms

    extra: Patch = {"name": f"{spec.name}:{group.name}", "seed": seed}
    if order is not None:
        extra["data"] = {"domains": list(order)}
    if steps is not None:
        extra["train"] = {"steps_per_stage": steps}
    try:
        raw = deep_merge(apply_overrides(group_raw(spec, group), spec.overrides), extra)
        cfg = resolve_run_config(raw)
        build_mechanisms(cfg.mechanisms, cfg)  # names, knobs and fit, before any run starts
    except ConfigError as e:
        where = f"levels {group.levels}" if group.levels else "its patch"
        raise ConfigError(f"group {group.name!r} ({where}): {e}") from None
    return cfg


def named_orders(spec: ExperimentSpec) -> dict[str, list[str]]:
    """The spec's domain orders; without any, the base config's domains as order ``default``."""
    if spec.orders:
        return dict(spec.orders)
    cfg = resolve_run_config(apply_overrides(base_raw(spec), spec.overrides))
    return {"default": list(cfg.data.domains)}


def expand(spec: ExperimentSpec, matched_steps: dict[str, int] | None = None) -> list[PlannedRun]:
    """Every planned run. ``matched_steps`` (group -> steps per stage) is required when the spec
    has a ``matched_flops`` budget; ``budgets.match_steps`` computes it."""
    if "matched_flops" in spec.budgets and matched_steps is None:
        raise ValueError("expand: a matched_flops budget needs matched_steps (budgets.match_steps)")
    groups = design_groups(spec)
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ConfigError(f"the design makes groups with the same name: {names}; rename levels")
    orders = named_orders(spec)
    runs: list[PlannedRun] = []
    # replicate-major: runs execute in this order, so a study stopped part-way holds whole
    # replicates (every group under every budget for the first seeds and orders), which the
    # analysis can use, rather than one budget complete and the other missing
    for seed, (oname, order), budget, g in itertools.product(
        spec.seeds, orders.items(), spec.budgets, groups
    ):
        steps = matched_steps[g.name] if budget == "matched_flops" and matched_steps else None
        cfg = resolve_group(spec, g, seed, order, steps)
        runs.append(
            PlannedRun(
                config_hash(cfg),
                g.name,
                g.levels,
                seed,
                list(order),
                oname,
                budget,
                cfg.train.steps_per_stage,
                cfg,
            )
        )
    return runs


def same_shape_configs(spec: ExperimentSpec) -> tuple[dict[str, RunConfig], str]:
    """Each group's config at the first seed and order (what budgets measure), and the reference."""
    groups = design_groups(spec)
    order = next(iter(named_orders(spec).values()))
    configs = {g.name: resolve_group(spec, g, spec.seeds[0], order) for g in groups}
    return configs, reference_group(spec, groups).name
