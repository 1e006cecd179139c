"""Every ready study shipped in ``forgetlab/specs/`` loads at each of its scales, expands into runs whose
configs resolve, and names mechanisms and knobs the registry accepts (a typo fails here, not an
hour into a study)."""


import pytest

from forgetlab.config import load_toml
from forgetlab.experiments.design import design_groups, expand, same_shape_configs
from forgetlab.experiments.spec import load_spec
from forgetlab.mechanisms import build_mechanisms
from forgetlab.specs import specs_dir

SPECS = sorted(specs_dir().glob("*.toml"))
CASES = [
    (path, scale)
    for path in SPECS
    if "base" in load_toml(path)  # a study spec, not a single-run config (quickstart.toml)
    for scale in [None, *load_toml(path).get("scales", {})]
]


@pytest.mark.parametrize(
    ("path", "scale"), CASES, ids=[f"{p.stem}-{s or 'default'}" for p, s in CASES]
)
def test_ready_spec_expands_into_valid_runs(path, scale):
    spec, _ = load_spec(load_toml(path), scale)
    groups = design_groups(spec)
    configs, _ = same_shape_configs(spec)
    # matched-FLOPs steps as short as a warmup allows (a shorter one is refused by name)
    runs = expand(spec, {g: max(10, c.train.warmup_steps) for g, c in configs.items()})
    assert runs and {r.group for r in runs} == {g.name for g in groups}
    for run in runs:
        build_mechanisms(run.config.mechanisms, run.config)
