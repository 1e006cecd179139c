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
    with pytest.raises(ConfigError, match=r"capacty = 3.*valid knobs: \['capacity', 'policy'\]"):
        build_mechanisms([MechanismConfig(name="alpha_test", capacty=3)])


def test_incompatible_pair_is_refused(registered):
    with pytest.raises(ConfigError, match="cannot be combined"):
        build_mechanisms([MechanismConfig(name="alpha_test"), MechanismConfig(name="beta_test")])


def test_cli_form_parses_name_and_knobs():
    cfg = parse_mechanism_option("replay:policy=reservoir,capacity=512")
    assert cfg.name == "replay" and cfg.knobs == {"policy": "reservoir", "capacity": 512}
    with pytest.raises(ConfigError, match="key=value"):
        parse_mechanism_option("replay:capacity")
