"""The Python API: what the ``forgetlab`` command does, as functions for notebooks and scripts.

``import forgetlab`` stays cheap: this module imports only the standard library at load time; each
function imports the layer it drives when called. Every argument is checked first, so a wrong
type fails with one clear line (a TypeError naming the argument, what it got and what it takes)
and a bad value with the same :class:`~forgetlab.config.ConfigError` the command line prints.

Specs are given as a path to a TOML file, the name of a shipped spec (``"cl_mechanisms"``), a dict
of the TOML's content or (single runs) a :class:`~forgetlab.config.RunConfig`. Overrides are the
command line's ``--set`` assignments, as a list (``["train.lr=3e-4"]``) or a dict
(``{"train.lr": 3e-4}``).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing (and collections) cost more than the rest of `import forgetlab`
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path
    from typing import Any, TypeAlias

    import pandas as pd

    from forgetlab.analysis.document import Analysis
    from forgetlab.config import RunConfig
    from forgetlab.train.record import RunRecord

    PathLike: TypeAlias = str | os.PathLike[str]
    Overrides: TypeAlias = Sequence[str] | Mapping[str, Any] | None

SPEC_FORMS = "a path to a TOML file, a shipped spec's name, a dict"


def _type_name(value: Any) -> str:
    return type(value).__name__


def _check_path(value: Any, arg: str) -> Path:
    from pathlib import Path

    if isinstance(value, str | os.PathLike):
        return Path(value)
    raise TypeError(f"{arg} must be a path (str or os.PathLike); got {_type_name(value)} {value!r}")


def toml_literal(value: Any, where: str) -> str:
    """``value`` as the TOML literal a ``--set`` assignment takes (str, number, bool, list, dict)."""
    import json
    import math
    from collections.abc import Mapping

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_literal(v, where) for v in value) + "]"
    if isinstance(value, Mapping):
        items = (f"{json.dumps(str(k))} = {toml_literal(v, where)}" for k, v in value.items())
        return "{ " + ", ".join(items) + " }"
    raise TypeError(
        f"{where} = {value!r}: a {_type_name(value)} has no TOML form; allowed: str, int, float, "
        "bool, list, dict"
    )


def override_list(overrides: Overrides) -> list[str]:
    """``--set`` assignments from a list of ``"key=value"`` strings or a ``{key: value}`` dict."""
    from collections.abc import Mapping, Sequence

    if overrides is None:
        return []
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, Mapping):
        out = []
        for key, value in overrides.items():
            if not isinstance(key, str):
                raise TypeError(f"overrides keys must be dotted str keys; got {key!r}")
            out.append(f"{key}={toml_literal(value, f'overrides[{key!r}]')}")
        return out
    if isinstance(overrides, Sequence) and all(isinstance(o, str) for o in overrides):
        return list(overrides)
    raise TypeError(
        'overrides must be a list of "key=value" strings or a {key: value} dict; got '
        f"{_type_name(overrides)} {overrides!r}"
    )


def _raw_spec(spec: Any, arg: str = "spec") -> tuple[dict[str, Any], str]:
    """(TOML content, where it came from) of a path, shipped name or dict spec."""
    import copy
    from collections.abc import Mapping

    from forgetlab.config import load_toml
    from forgetlab.specs import resolve_spec

    if isinstance(spec, Mapping):
        return copy.deepcopy(dict(spec)), "the given dict"
    if isinstance(spec, str | os.PathLike):
        path = resolve_spec(spec)
        return load_toml(path), repr(str(path))
    raise TypeError(f"{arg} must be {SPEC_FORMS} or a RunConfig; got {_type_name(spec)} {spec!r}")


def run_config(spec: PathLike | Mapping[str, Any] | RunConfig, overrides: Overrides = None) -> RunConfig:
    """The validated :class:`RunConfig` of a single-run spec with ``overrides`` applied."""
    from forgetlab.config import ConfigError, RunConfig, resolve_run_config
    from forgetlab.specs import is_study_spec

    sets = override_list(overrides)
    if isinstance(spec, RunConfig):
        return resolve_run_config(spec.model_dump(mode="json"), sets) if sets else spec
    raw, where = _raw_spec(spec)
    if is_study_spec(raw):
        raise ConfigError(f"spec {where} is a study (it has factors/groups/design/base): use "
                          "forgetlab.run_study, or forgetlab.plan to see its runs")
    return resolve_run_config(raw, sets)


def run(
    spec: PathLike | Mapping[str, Any] | RunConfig,
    *,
    overrides: Overrides = None,
    out: PathLike | None = None,
    progress: bool = False,
) -> RunRecord:
    """Train one run through its stream into ``out`` (default ``results/<name>``), as
    ``forgetlab run SPEC`` does: resumes an interrupted run there, never overwrites a finished
    one. Returns its record (R matrices, metrics, config)."""
    from forgetlab.train.launch import train_run
    from forgetlab.train.record import RunRecord

    cfg = run_config(spec, overrides)
    out_dir = None if out is None else _check_path(out, "out")
    record = train_run(cfg, out_dir, progress=progress)
    return RunRecord.from_dict(record, out_dir)


def _study(spec: Any, overrides: Overrides) -> tuple[dict[str, Any], list[str]]:
    from forgetlab.config import ConfigError, RunConfig
    from forgetlab.specs import is_study_spec

    if isinstance(spec, RunConfig):
        raise TypeError("a RunConfig is one run, not a study: use forgetlab.run")
    raw, where = _raw_spec(spec)
    if not is_study_spec(raw):
        raise ConfigError(f"spec {where} is a single run (no factors/groups/design/base): use "
                          "forgetlab.run")
    return raw, override_list(overrides)


def _check_scale(scale: Any) -> str | None:
    if scale is None or isinstance(scale, str):
        return scale
    raise TypeError(f"scale must be a str (a [scales.NAME] of the spec) or None; got {scale!r}")


def run_study(
    spec: PathLike | Mapping[str, Any],
    *,
    scale: str | None = None,
    workers: int = 1,
    executor: str = "local",
    out: PathLike | None = None,
    overrides: Overrides = None,
    progress: bool = False,
    address: str | None = None,
) -> dict[str, Any]:
    """Run every run of a study into ``out`` (default ``results/<name>[-<scale>]``), as
    ``forgetlab run STUDY`` does: finished runs are skipped, interrupted ones resumed, a failed
    run is recorded and the others go on. ``executor``: local, ray (``address``: the cluster,
    as ``--address``) or slurm. Returns the summary: ``exp_dir``, ``planned``,
    ``distinct``, ``finished``, ``failed`` (run ids) and ``errors``; read the results with
    :func:`load_results`."""
    from forgetlab.experiments import load_spec, run_experiment
    from forgetlab.experiments.store import default_study_dir

    raw, sets = _study(spec, overrides)
    scale = _check_scale(scale)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise TypeError(f"workers must be an int >= 1; got {workers!r}")
    if not isinstance(executor, str):
        raise TypeError(f"executor must be a str ('local', 'ray' or 'slurm'); got {executor!r}")
    parsed, scale_name = load_spec(raw, scale)
    out_dir = default_study_dir(parsed.name, scale_name) if out is None else _check_path(out, "out")
    argv = ["forgetlab.run_study", str(out_dir)]
    return run_experiment(
        raw, out_dir, scale, workers, executor, sets, not progress, argv, address
    )


def plan(
    spec: PathLike | Mapping[str, Any],
    *,
    scale: str | None = None,
    overrides: Overrides = None,
) -> dict[str, Any]:
    """What ``forgetlab plan --json`` prints: the study's runs with stable ids, tokens, FLOPs,
    wall time on this machine, GPU-hours and cost, without running anything."""
    from forgetlab.experiments import build_plan, load_spec

    raw, sets = _study(spec, overrides)
    parsed, scale_name = load_spec(raw, _check_scale(scale))
    parsed.overrides = [*parsed.overrides, *sets]
    return build_plan(parsed, scale_name)


def load_results(study_dir: PathLike) -> pd.DataFrame:
    """A study's results table, one row per planned run (factors, seed, order, budget, status,
    every metric as ``<loss|bpb|accuracy>.<metric>``, FLOPs, tokens, speed, parameters)."""
    from forgetlab.analysis.load import load_experiment

    return load_experiment(_check_path(study_dir, "study_dir")).results


def load_analysis(study_dir: PathLike) -> Analysis:
    """A study's analysis.json (written by ``forgetlab report``) as a typed :class:`Analysis`:
    ``settings``, ``runs`` and, per budget, ``group_stats`` (``stat(group, metric)``),
    ``factorial``, ``hypotheses`` and ``conclusions``; a study directory or the file's path."""
    from forgetlab.analysis.document import load_analysis as read_analysis

    return read_analysis(_check_path(study_dir, "study_dir"))


def load_run(run_dir: PathLike, *, typed: bool = True) -> RunRecord | dict[str, Any]:
    """A run directory's run.json: a :class:`RunRecord` (config typed, R as DataFrames through
    ``r_matrix``), or with ``typed=False`` the plain dict."""

    from forgetlab.config import ConfigError
    from forgetlab.train.record import RunRecord
    from forgetlab.train.rundir import RunDir

    path = _check_path(run_dir, "run_dir")
    raw = RunDir(path).read()  # an unreadable run.json raises RunDirError (a ConfigError)
    if raw is None:
        raise ConfigError(f"{str(path)!r} holds no run.json: not a forgetlab run directory")
    return RunRecord.from_dict(raw, path) if typed else raw
