"""Design expansion: group and run counts per design, stable run ids, scales and spec errors."""

from __future__ import annotations

import copy

import pytest

from forgetlab.analysis.procedure import TESTS
from forgetlab.config import ConfigError
from forgetlab.experiments import design_groups, expand, load_spec
from forgetlab.specs import is_study_spec


def lr_depth_spec(**extra):
    raw = {
        "name": "toy",
        "base": {"model": {"preset": "micro"}, "data": {"tokenizer": "bpe-512"}},
        "factors": {
            "LR": {"lo": {}, "mid": {"train.lr": 2e-3}, "hi": {"train": {"lr": 3e-3}}},
            "L": {"L2": {}, "L3": {"model": {"n_layer": 3}}},
        },
        "seeds": [0, 1],
        "orders": {"fwd": ["code", "math"], "rev": ["math", "code"]},
    }
    raw.update(extra)
    return raw


def test_tw_r_ablation_design_expands_to_96_planned_runs(cl_raw):
    spec, scale = load_spec(cl_raw, "full")  # the tiny CPU scale runs 2 of the 3 seeds
    groups = design_groups(spec)
    assert scale == "full" and len(groups) == 8
    assert {g.name for g in groups} >= {"T0_W0_R0", "T1_W1_R1", "T1_W0_R1"}
    matched = {g.name: 381 if g.name == "T0_W0_R0" else 370 for g in groups}  # full: 381 steps
    runs = expand(spec, matched)
    assert len(runs) == 8 * 3 * 2 * 2 == 96
    # the reference's matched-FLOPs runs are its same-shape runs: same config, same id
    assert len({r.run_id for r in runs}) == 90
    t1 = next(r for r in runs if r.group == "T1_W1_R1")
    assert t1.config.model.sparsity == "2:4"
    assert [m.name for m in t1.config.mechanisms] == ["selective_write", "sleep"]
    assert t1.levels == {"T": "T1", "W": "W1", "R": "R1"}


def test_quickstart_scale_replaces_seeds_orders_and_budgets(cl_raw):
    spec, _ = load_spec(cl_raw, "quickstart")
    runs = expand(spec)
    assert len(runs) == 8 and {r.order_name for r in runs} == {"forward"}
    assert {r.config.train.steps_per_stage for r in runs} == {50}
    assert {r.config.data.val_batches for r in runs} == {4}


def test_full_factorial_one_at_a_time_groups_and_sweep_counts():
    full, _ = load_spec(lr_depth_spec())
    assert len(expand(full)) == 3 * 2 * 2 * 2
    oat, _ = load_spec(lr_depth_spec(design={"kind": "one_at_a_time", "reference": "mid_L2"}))
    assert [g.name for g in design_groups(oat)] == ["mid_L2", "lo_L2", "hi_L2", "mid_L3"]
    sweep, _ = load_spec(lr_depth_spec(design={"kind": "sweep", "factor": "LR"}))
    assert [g.name for g in design_groups(sweep)] == ["lo_L2", "mid_L2", "hi_L2"]
    listed = lr_depth_spec(
        design="groups",
        groups={"base": {}, "deep-fast": {"levels": {"L": "L3"}, "train": {"lr": 5e-3}}},
    )
    spec, _ = load_spec(listed)
    runs = expand(spec)
    assert len(runs) == 2 * 2 * 2
    deep = next(r for r in runs if r.group == "deep-fast")
    assert deep.config.model.n_layer == 3 and deep.config.train.lr == 5e-3
    assert deep.levels == {"L": "L3"}


def test_run_ids_are_stable_and_change_only_with_the_config():
    spec, _ = load_spec(lr_depth_spec())
    first = {(r.group, r.seed, r.order_name): r.run_id for r in expand(spec)}
    again, _ = load_spec(copy.deepcopy(lr_depth_spec()))
    assert first == {(r.group, r.seed, r.order_name): r.run_id for r in expand(again)}
    assert len(set(first.values())) == len(first)
    changed = lr_depth_spec()
    changed["factors"]["L"]["L3"] = {"model": {"n_layer": 4}}
    spec2, _ = load_spec(changed)
    second = {(r.group, r.seed, r.order_name): r.run_id for r in expand(spec2)}
    for key, run_id in first.items():
        assert (second[key] == run_id) == (not key[0].endswith("L3"))


def test_overrides_apply_to_every_run_after_its_levels():
    spec, _ = load_spec(lr_depth_spec(overrides=["train.lr=7e-3"]))
    assert {r.config.train.lr for r in expand(spec)} == {7e-3}


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"design": "latin_square"}, "full_factorial"),
        ({"design": {"kind": "sweep"}}, "design.factor"),
        ({"budgets": ["same_flops"]}, "matched_flops"),
        ({"orders": {"a": ["code", "math"], "b": ["code", "legal"]}}, "same domains"),
        ({"seeds": [1, 1]}, "repeats"),
        ({"typo": 1}, "unknown key 'typo'"),
        ({"preregistration": {"primary_metric": "loss.forgetfulness"}}, "not a results column"),
        # no run has these columns: final_mean is loss/bpb only, retention starts at lag 1
        ({"preregistration": {"primary_metric": "accuracy.final_mean"}}, r"<loss\|bpb>.final_mean"),
        (
            {"preregistration": {"primary_metric": "loss.BWT", "secondary_metrics": ["loss.retention@0"]}},
            "'loss.retention@0' is not a results column",
        ),
        (
            {
                "preregistration": {
                    "primary_metric": "loss.BWT",
                    "hypotheses": [{"id": "H", "statement": "s", "criterion": "af.A <"}],
                }
            },
            "not a Python expression",
        ),
        (
            {
                "preregistration": {
                    "primary_metric": "loss.BWT",
                    "hypotheses": [{"id": "H", "statement": "s", "criterion": "af.__class__ < 1"}],
                }
            },
            "dunder",
        ),
    ],
)
def test_invalid_specs_fail_with_a_clear_config_error(patch, message):
    with pytest.raises(ConfigError, match=message):
        load_spec(lr_depth_spec(**patch))


@pytest.mark.parametrize("test", TESTS)
def test_a_group_design_takes_every_declared_test_and_a_factor_design_only_anova(test):
    prereg = {"primary_metric": "loss.BWT", "test": test}
    sweep = lr_depth_spec(design={"kind": "sweep", "factor": "LR"}, preregistration=prereg)
    spec, _ = load_spec(sweep)
    assert spec.preregistration.test == test
    for kind in ("full_factorial", "one_at_a_time"):
        if test == "anova":
            load_spec(lr_depth_spec(design=kind, preregistration=prereg))
            continue
        with pytest.raises(ConfigError) as err:
            load_spec(lr_depth_spec(design=kind, preregistration=prereg))
        assert str(err.value) == (
            f"invalid experiment spec: preregistration.test = {test!r} is not allowed for design "
            f"{kind!r} (a factor design is tested by the factorial effects model); "
            "allowed: ['anova']"
        )


def test_a_level_with_an_unknown_key_names_its_group():
    raw = lr_depth_spec()
    raw["factors"]["L"]["L3"] = {"model": {"n_layers": 3}}
    spec, _ = load_spec(raw)
    with pytest.raises(ConfigError, match=r"group 'lo_L3' \(levels .*n_layers"):
        expand(spec)


def test_unknown_scale_lists_the_allowed_ones(cl_raw):
    with pytest.raises(ConfigError, match=r"allowed: \['full', 'quickstart', 'tiny'\]"):
        load_spec(cl_raw, "huge")


def test_is_experiment_spec_tells_studies_from_single_runs(cl_raw):
    assert is_study_spec(cl_raw)
    assert not is_study_spec({"name": "run", "model": {"preset": "tiny"}, "train": {}})


@pytest.mark.parametrize(
    ("patch", "key", "section", "one_allowed"),
    [
        ({"colour": 1}, "colour", "", "factors"),
        ({"design": {"kind": "full_factorial", "colour": 1}}, "design.colour", " in [design]",
         "reference"),
        ({"matched_flops": {"colour": 1}}, "matched_flops.colour", " in [matched_flops]",
         "tolerance"),
        ({"plan": {"colour": 1}}, "plan.colour", " in [plan]", "assumed_mfu"),
        (
            {"plan": {"gpus": [{"name": "x", "peak_flops": 1, "utilisation": 1,
                                "price_per_hour": 1, "colour": 1}]}},
            "plan.gpus[0].colour", " in [plan.gpus[0]]", "price_per_hour",
        ),
        ({"preregistration": {"primary_metric": "loss.BWT", "colour": 1}},
         "preregistration.colour", " in [preregistration]", "primary_metric"),
        (
            {"preregistration": {"primary_metric": "loss.BWT", "hypotheses": [
                {"id": "H", "statement": "s", "criterion": "1 < 2", "colour": 1}]}},
            "preregistration.hypotheses[0].colour", " in [preregistration.hypotheses[0]]",
            "criterion",
        ),
    ],
)
def test_an_unknown_study_key_lists_the_keys_allowed_in_its_section(patch, key, section,
                                                                    one_allowed):
    with pytest.raises(ConfigError) as err:
        load_spec(lr_depth_spec(**patch))
    message = str(err.value)
    assert f"unknown key {key!r} (value 1); allowed{section}: [" in message
    assert f"'{one_allowed}'" in message and "\n" not in message


def test_a_mechanism_that_does_not_fit_a_group_is_refused_at_expansion():
    raw = lr_depth_spec()
    raw["factors"]["L"]["L3"] = {"mechanisms": [{"name": "lifelong_moe"}]}
    spec, _ = load_spec(raw)
    with pytest.raises(ConfigError, match=r"group 'lo_L3' .*lifelong_moe' needs an MoE model: "
                                          r"model.ffn = 'mlp'; allowed: 'moe'"):
        expand(spec)
