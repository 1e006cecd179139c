"""A joint-training group in a study spec: its syntax, its budget and what it refuses."""

from __future__ import annotations

import pytest
import tomllib

from forgetlab.config import ConfigError, RunConfig
from forgetlab.experiments import expand, load_spec
from forgetlab.specs import shipped_spec

JOINT_GROUP = 'joint = { train.joint = "proportional", train.rewarm = false }\n'


def _new_data_tokens(cfg: RunConfig) -> int:
    t = cfg.train
    return t.steps_per_stage * len(cfg.data.domains) * t.batch_size * t.grad_accum * (
        cfg.model.block_size
    )


def test_a_joint_group_in_the_methods_spec_reads_the_streams_domains_and_tokens():
    path = shipped_spec("methods")
    assert path is not None
    text = path.read_text().replace("[groups]\n", "[groups]\n" + JOINT_GROUP, 1)
    spec, _ = load_spec(tomllib.loads(text))
    runs = {r.group: r.config for r in expand(spec)}
    joint, naive = runs["joint"], runs["naive"]
    assert (joint.train.joint, naive.train.joint) == ("proportional", None)
    assert joint.data.domains == naive.data.domains and joint.mechanisms == []
    assert _new_data_tokens(joint) == _new_data_tokens(naive)


def test_a_joint_group_given_a_mechanism_is_refused_by_group_name():
    raw = {
        "name": "toy",
        "base": {"model": {"preset": "micro"}, "data": {"tokenizer": "bpe-512"}},
        "design": {"kind": "groups", "reference": "naive"},
        "groups": {
            "naive": {},
            "joint": {
                "train": {"joint": "uniform", "rewarm": False},
                "mechanisms": [{"name": "replay"}],
            },
        },
    }
    spec, _ = load_spec(raw)
    with pytest.raises(ConfigError, match=r"group 'joint' .*mechanisms \['replay'\]"):
        expand(spec)
