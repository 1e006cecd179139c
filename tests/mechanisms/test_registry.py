"""The mechanism registry: names, knobs and combinations are validated before any work."""

import pytest

from forgetlab.config import ConfigError, MechanismConfig
from forgetlab.mechanisms import MECHANISMS, Mechanism, build_mechanisms, parse_mechanism_option


@pytest.fixture
def registered():
    class Alpha(Mechanism):
        name = "alpha_test"

        class Knobs(Mechanism.Knobs):
            capacity: int = 8
            policy: str = "ring"

    class Beta(Mechanism):
        name = "beta_test"
        incompatible = frozenset({"alpha_test"})

    MECHANISMS.update({"alpha_test": Alpha, "beta_test": Beta})
    yield Alpha, Beta
    for k in ("alpha_test", "beta_test"):
        MECHANISMS.pop(k)


def test_knobs_are_parsed_and_typed(registered):
    (m,) = build_mechanisms([MechanismConfig(name="alpha_test", capacity="16")])
    assert m.knobs.capacity == 16 and m.knobs.policy == "ring"


def test_unknown_name_lists_registered(registered):
    with pytest.raises(ConfigError, match=r"'nope' is not a mechanism; allowed: .*'alpha_test'"):
        build_mechanisms([MechanismConfig(name="nope")])


def test_unknown_knob_lists_valid_knobs(registered):
    allowed = r"unknown key 'capacty' \(value 3\); allowed: \['capacity', 'policy'\]"
    with pytest.raises(ConfigError, match=allowed):
        build_mechanisms([MechanismConfig(name="alpha_test", capacty=3)])


def test_incompatible_pair_is_refused(registered):
    with pytest.raises(ConfigError, match="cannot be combined"):
        build_mechanisms([MechanismConfig(name="alpha_test"), MechanismConfig(name="beta_test")])


def test_cli_form_parses_name_and_knobs():
    cfg = parse_mechanism_option("replay:policy=reservoir,capacity=512")
    assert cfg.name == "replay" and cfg.knobs == {"policy": "reservoir", "capacity": 512}
    with pytest.raises(ConfigError, match="key=value"):
        parse_mechanism_option("replay:capacity")


MISFITS = [
    ({"name": "lifelong_moe"}, [], r"lifelong_moe' needs an MoE model: model.ffn = 'mlp'; "
                                   r"allowed: 'moe'"),
    ({"name": "lifelong_moe"}, ["model.ffn=moe", "model.moe.every_n=3"],
     r"model.moe.every_n = 3 exceeds model.n_layer = 2; allowed: 1..2"),
    ({"name": "lifelong_moe"}, ["model.ffn=moe", "model.moe.added_experts=[2]"],
     r"model.moe.added_experts = \[2\]: lifelong_moe allocates"),
    ({"name": "latent_replay", "layer": 2}, [],
     r"layer = 2 leaves no block above the cut of model.n_layer = 2; allowed: 1..1"),
    ({"name": "lora", "base_stages": 3}, [],
     r"base_stages = 3 leaves no stage .*data.domains has 3\); allowed: 0..2"),
    ({"name": "replay", "capacity": 2, "policy": "balanced"}, [], r"capacity = 2 .*>= 3"),
    ({"name": "sleep", "capacity": 2, "policy": "balanced"}, [], r"capacity = 2 .*>= 3"),
    ({"name": "generative_replay", "capacity": 2}, [], r"capacity = 2 .*>= 3"),
    ({"name": "packnet"}, [f"data.domains={[f'd{i}' for i in range(256)]}"],
     r"packnet' keeps at most 255 domains; data.domains has 256"),
]


@pytest.mark.parametrize(("mechanism", "overrides", "message"), MISFITS)
def test_a_mechanism_that_does_not_fit_the_run_is_refused_before_anything_exists(
    tmp_path, mechanism, overrides, message
):
    """The misfit is named with its keys and values when the trainer is made: no data is opened,
    no model built, no run directory created (so the corrected command finds nothing in its way)."""
    from forgetlab.config import resolve_run_config
    from forgetlab.train import Trainer

    raw = {"model": {"preset": "micro"}, "data": {"domains": ["code", "math", "legal"]},
           "train": {"warmup_steps": 1}, "mechanisms": [mechanism]}
    cfg = resolve_run_config(raw, overrides)
    with pytest.raises(ConfigError, match=message):
        build_mechanisms(cfg.mechanisms, cfg)
    with pytest.raises(ConfigError, match=message):
        Trainer(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
