"""The metric registry: every column, spec name, alias, sign and the README's table come from it."""

import math
from pathlib import Path

import numpy as np
import pytest

from forgetlab.analysis import registry
from forgetlab.analysis.columns import empty_metrics, flatten_record
from forgetlab.analysis.hypotheses import ALIASES
from forgetlab.analysis.registry import (
    MATRIX,
    METRICS,
    cl_metrics,
    is_column,
    lower_is_better,
    metric_of,
    probe_metrics,
    readme_with_table,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_metric_table_is_the_rendered_registry():
    text = README.read_text()
    assert readme_with_table(text) == text, (
        "README.md's metric table differs from the registry: run "
        "`python -m forgetlab.analysis.registry README.md`"
    )


def test_a_stale_readme_table_is_replaced_and_missing_markers_are_refused():
    text = README.read_text()
    stale = text.replace("| `mfu` | `mfu` | higher |", "| `mfu` | `mfu` | lower |")
    assert stale != text and readme_with_table(stale) == text
    with pytest.raises(ValueError, match="metric table"):
        readme_with_table(text.replace(registry.README_END, ""))


def test_the_results_schema_keeps_its_column_order():
    # the order results.parquet has always had: scalar metrics kind by kind, then Retention@k,
    # then the loss/bpb-only final_mean, then the run-level columns
    scalars = ["ACC", "BWT", "FWT", "average_forgetting", "plasticity"]
    expected = [f"{k}.{m}" for k in ("loss", "bpb", "accuracy") for m in scalars]
    expected += [f"{k}.retention@{i}" for k in ("loss", "bpb", "accuracy") for i in (1, 2)]
    expected += ["loss.final_mean", "bpb.final_mean", "convergence_mean", "steps_to_target"]
    expected += ["tokens_to_target", "time_to_target_s", "flops.training_total"]
    expected += ["flops.total_with_eval", "train_tokens", "wall_s", "tokens_per_s", "mfu"]
    expected += ["peak_rss_bytes", "params.total", "params.trainable", "params.frozen"]
    columns = list(empty_metrics(3))
    assert columns == expected
    assert all(is_column(c) and metric_of(c) is not None for c in columns)


def test_every_entry_has_a_unique_name_and_a_stated_direction_unit_and_definition():
    names = [x.name for x in METRICS]
    assert len(names) == len(set(names))
    for x in METRICS:
        assert x.better in ("higher", "lower", None) and x.unit and x.definition
    aliases = [a.name for x in METRICS for a in x.aliases]
    assert len(aliases) == len(set(aliases))


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("loss.retention@2", True),
        ("accuracy.retention@7", True),  # a longer stream has it
        ("bpb.final_mean", True),
        ("params.frozen", True),
        ("accuracy.final_mean", False),  # final_mean is the loss/bpb matrices' own unit
        ("loss.retention@0", False),
        ("loss.retention", False),
        ("loss.ACC@1", False),
        ("loss.forgetting", False),  # per domain, kept in run.json only
        ("LOSS.ACC", False),
        ("accuracy.speed", False),
        ("wall", False),  # an alias, not a column
        ("loss.probe_forgetting", True),  # the mean over a run's probes
        ("accuracy.probe_forgetting@books", True),  # one probe's
        ("loss.retention@books", False),  # a lag is a number
        ("loss.probe_forgetting@", False),
        ("grad.probe_forgetting", False),
    ],
)
def test_spec_metric_names_are_looked_up_in_the_registry(name, ok):
    assert is_column(name) is ok


def test_direction_comes_from_the_entry():
    lower = {c for c in empty_metrics(4) if lower_is_better(c)}
    assert lower == {
        *(f"{k}.average_forgetting" for k in ("loss", "bpb", "accuracy")),
        "loss.final_mean",
        "bpb.final_mean",
        "convergence_mean",
        "steps_to_target",
        "tokens_to_target",
        "time_to_target_s",
        "flops.training_total",
        "flops.total_with_eval",
        "wall_s",
        "peak_rss_bytes",
    }
    # sizes, unknown columns and ids keep the statistics' default sign (higher is better)
    assert not any(map(lower_is_better, ["params.frozen", "steps_per_stage", "factor.T", "x"]))


def test_hypothesis_aliases_are_the_registry_aliases():
    assert set(ALIASES) == {
        "ppl", "loss", "bpb", "acc", "af", "bwt", "fwt", "plasticity", "speed", "mfu", "flops",
        "wall", "memory", "convergence", "params", "trainable", "frozen", "probe_forgetting",
    }  # fmt: skip
    assert ALIASES["ppl"][:2] == ("loss.final_mean", math.exp)
    assert ALIASES["af"][0] == "loss.average_forgetting" and ALIASES["speed"][0] == "tokens_per_s"
    assert all(is_column(column) for column, _, _ in ALIASES.values())


def test_study_defaults_name_columns():
    for column in (registry.DEFAULT_PRIMARY, *registry.REPORTED, *registry.SECONDARY):
        assert is_column(column), column


def test_cl_metrics_records_every_matrix_metric_of_its_kind():
    r = [[5.0, 5.0], [2.0, 4.0], [3.0, 2.5]]
    assert set(cl_metrics(r, "loss")) == {x.name for x in MATRIX}
    assert set(cl_metrics(r, "accuracy")) == {x.name for x in MATRIX} - {"final_mean"}
    assert cl_metrics(r, "bpb")["final_mean"] == pytest.approx(2.75)  # (3 + 2.5) / 2


def _record() -> dict:
    return {
        "metrics": {
            "loss": cl_metrics([[5.0, 5.0], [2.0, 4.0], [3.0, 2.5]], "loss"),
            "convergence_steps": [10.0, None, 20.0],
            "time_to_target": [{"steps": 4, "tokens": 400, "train_s": 1.5}, None],
        },
        "flops": {"total": {"training_total": 3e9, "eval": 1e9}},
        "tokens": {"train_total": 512},
        "timing": {"total": {"data": 1.0, "forward": 2.0, "eval": 0.5}, "throughput": {"mfu": 0.2}},
        "parameters": {"total": 1000, "trainable": 600},
    }


def test_run_level_columns_read_from_a_record_match_hand_values():
    row = flatten_record(_record())
    assert row["loss.final_mean"] == pytest.approx(2.75) and row["loss.retention@1"] == 2 / 3
    assert "loss.forgetting" not in row and "accuracy.ACC" not in row
    assert row["convergence_mean"] == 15.0  # mean over the stages that converged
    assert math.isnan(row["steps_to_target"])  # stage 2 missed the target: no partial mean
    assert row["flops.training_total"] == 3e9 and row["flops.total_with_eval"] == 4e9
    assert row["train_tokens"] == 512 and row["wall_s"] == 3.5 and row["mfu"] == 0.2
    assert math.isnan(row["tokens_per_s"]) and math.isnan(row["peak_rss_bytes"])
    assert row["params.frozen"] == 400


def test_a_record_without_target_or_flops_leaves_those_columns_out():
    record = _record()
    del record["metrics"]["time_to_target"], record["flops"]
    row = flatten_record(record)
    assert not {"steps_to_target", "flops.training_total", "flops.total_with_eval"} & set(row)
    record["metrics"]["time_to_target"] = [{"steps": 4, "tokens": 400, "train_s": 1.5}] * 2
    assert flatten_record(record)["time_to_target_s"] == 1.5
    assert np.isnan(flatten_record({})["wall_s"])


def test_probe_forgetting_is_each_probes_score_drop_from_row_0_to_row_t():
    # rows: before stage 1, after stage 1, after stage 2; columns: probes books, mmlu
    loss = [[4.0, 6.0], [4.5, 5.0], [5.0, 6.5]]
    acc = [[0.30, 0.20], [0.25, 0.22], [0.10, 0.26]]
    got = probe_metrics(loss, "loss", ["books", "mmlu"])["probe_forgetting"]
    assert got["per_probe"] == pytest.approx({"books": 1.0, "mmlu": 0.5})  # 5.0-4.0, 6.5-6.0
    assert got["mean"] == pytest.approx(0.75)
    dropped = probe_metrics(acc, "accuracy", ["books", "mmlu"])["probe_forgetting"]
    assert dropped["per_probe"] == pytest.approx({"books": 0.20, "mmlu": -0.06})  # gained: < 0
    assert dropped["mean"] == pytest.approx(0.07)
    with pytest.raises(ValueError, match="probe matrix"):
        probe_metrics([[4.0, 6.0]], "loss", ["books", "mmlu"])  # no stage after row 0


def test_probe_columns_come_from_the_records_probe_section():
    names = ["books", "mmlu"]
    record = {**_record(), "probes": {"domains": names, "metrics": {
        k: probe_metrics([[4.0, 6.0], [5.0, 6.5]], k, names) for k in ("loss", "accuracy")
    }}}
    row = flatten_record(record)
    assert row["loss.probe_forgetting"] == pytest.approx(0.75)
    assert row["loss.probe_forgetting@books"] == pytest.approx(1.0)
    assert row["accuracy.probe_forgetting@mmlu"] == pytest.approx(-0.5)
    schema = empty_metrics(2, names)
    assert {c for c in schema if "probe" in c} == {
        f"{k}.probe_forgetting{at}" for k in ("loss", "bpb", "accuracy")
        for at in ("", "@books", "@mmlu")
    }
    assert not any("probe" in c for c in empty_metrics(2))  # a study without probes: no columns
    assert all(lower_is_better(c) and is_column(c) for c in schema if "probe" in c)
    assert ALIASES["probe_forgetting"][0] == "loss.probe_forgetting"
