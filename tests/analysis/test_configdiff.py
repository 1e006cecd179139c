"""The configuration section's content: shared settings that matter, every per-group difference."""

from __future__ import annotations

from forgetlab.analysis.configdiff import UNUSED, compare_configs, flatten_config, unused_keys
from forgetlab.config import RunConfig


def resolved(**raw) -> dict:
    return RunConfig(**raw).model_dump(mode="json")


def test_knobs_of_parts_the_model_does_not_use_are_left_out_of_the_shared_settings():
    dense = resolved(name="s:A")
    c = compare_configs({"a": dense, "b": {**dense, "name": "s:B"}}, {"a": "A", "b": "B"})
    shared = dict(c.shared)
    assert shared["model.ffn"] == "mlp" and shared["model.n_layer"] == "4"
    assert not any(k.startswith(("model.moe.", "model.memory.")) for k in shared)
    for key in (
        "model.rope_theta",
        "model.freeze_qk",
        "model.sparsity_density",
        "train.sample_tokens",
    ):
        assert key not in shared and key in c.unused, key
    assert "name" not in shared and not c.differences  # the run name identifies, not configures


def test_a_part_switched_on_makes_its_knobs_used():
    moe = flatten_config(resolved(model={"ffn": "moe", "positions": "rope", "sparsity": "2:4"}))
    unused = unused_keys(moe)
    assert "model.moe.num_experts" not in unused and "model.rope_theta" not in unused
    assert "model.sparsity_init" not in unused  # any sparsity chooses its mask
    assert "model.sparsity_block" in unused  # only the block pattern has a block side
    assert all(k in unused for k in moe if k.startswith("model.memory."))


def test_every_per_group_difference_is_listed_with_unused_beside_groups_without_the_part():
    a = resolved(mechanisms=[{"name": "ewc", "lam": 5.0}])
    b = resolved(model={"ffn": "moe"}, train={"lr": 3e-4, "min_lr": 1e-5})
    c = compare_configs(
        {"a1": a, "a2": {**a, "seed": 1}, "b1": b}, {"a1": "A", "a2": "A", "b1": "B"}
    )
    diffs = dict(c.differences)
    assert c.groups == ["A", "B"]
    assert diffs["model.ffn"] == {"A": "mlp", "B": "moe"}
    assert diffs["train.lr"] == {"A": "0.001", "B": "0.0003"}
    assert diffs["model.moe.num_experts"] == {"A": UNUSED, "B": "8"}
    assert diffs["mechanisms"] == {"A": "ewc", "B": "none"}
    assert diffs["mechanisms.ewc.lam"] == {"A": "5.0", "B": UNUSED}
    assert c.per_run == ["seed"]  # varies inside group A: not a group difference
    assert "seed" not in diffs and "seed" not in dict(c.shared)


def test_mechanism_knobs_left_at_their_defaults_compare_equal_to_written_ones():
    given = resolved(mechanisms=[{"name": "replay", "capacity": 64}])
    explicit = resolved(mechanisms=[{"name": "replay", "capacity": 64, "ratio": 0.5}])
    c = compare_configs(
        {"a": given, "b": explicit}, {"a": "A", "b": "B"}, {"replay": {"ratio": 0.5}}
    )
    assert dict(c.shared)["mechanisms.replay.ratio"] == "0.5" and not c.differences
    without = compare_configs({"a": given, "b": explicit}, {"a": "A", "b": "B"})
    assert dict(without.differences)["mechanisms.replay.ratio"] == {"A": UNUSED, "B": "0.5"}


def test_sources_of_domains_a_run_does_not_train_on_are_unused():
    flat = flatten_config(
        {
            "data": {
                "domains": ["code"],
                "sources": {"code": {"files": ["a/*.txt"]}, "extra": {"files": ["b/*.txt"]}},
            }
        }
    )
    assert flat["data.domains"] == '["code"]' and flat["mechanisms"] == "none"
    assert unused_keys(flat) == {"data.sources.extra.files"}


def test_runs_outside_every_group_are_ignored():
    a = resolved()
    c = compare_configs({"a": a, "stray": resolved(seed=9)}, {"a": "A"})
    assert "seed" in dict(c.shared) and not c.per_run


def test_unset_and_bookkeeping_settings_are_left_out_of_both_tables():
    a = resolved(train={"threads": 1, "log_every": 5}, mechanisms=[{"name": "replay"}])
    b = resolved(train={"threads": 2, "log_every": 5})
    c = compare_configs(
        {"a": a, "b": b}, {"a": "A", "b": "B"}, {"replay": {"capacity": 64, "policy": None}}
    )
    shared, diffs = dict(c.shared), dict(c.differences)
    assert "train.threads" not in diffs and "train.log_every" not in shared
    assert {"train.threads", "train.log_every", "data.cache_dir"} <= set(c.bookkeeping)
    assert {"model.n_kv_head", "model.d_ff", "data.sources"} <= set(c.unset)
    assert "mechanisms.replay.policy" in c.unset  # null wherever replay is used
    assert diffs["mechanisms.replay.capacity"] == {"A": "64", "B": UNUSED}


def test_sleep_knobs_of_the_source_it_does_not_use_are_unused():
    real = flatten_config({"mechanisms": [{"name": "sleep", "source": "real", "top_k": 50}]})
    generated = flatten_config(
        {"mechanisms": [{"name": "sleep", "source": "generated", "policy": "x"}]}
    )
    assert {"mechanisms.sleep.top_k"} == unused_keys(real)
    assert {"mechanisms.sleep.policy"} == unused_keys(generated)
