"""Spec loading, presets, --set overrides and the validation messages researchers will read."""

import pytest

from forgetlab.config import (
    ConfigError,
    apply_overrides,
    load_run_config,
    load_toml,
    parse_value,
    resolve_run_config,
)


def test_preset_fills_model_and_tokenizer_and_spec_wins():
    cfg = resolve_run_config({"model": {"preset": "small", "n_layer": 3}})
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head) == (3, 512, 8)
    assert cfg.model.d_ff == 2048 and cfg.model.block_size == 512
    assert cfg.data.tokenizer == "gpt2"


def test_override_beats_spec_and_parses_types():
    raw = {"model": {"preset": "tiny"}, "train": {"lr": 1e-3}}
    cfg = resolve_run_config(raw, ["train.lr=3e-4", "train.precision=fp32", "model.bias=false"])
    assert cfg.train.lr == 3e-4 and cfg.train.precision == "fp32" and cfg.model.bias is False
    assert raw["train"]["lr"] == 1e-3  # the caller's dict is not mutated


def test_parse_value_reads_toml_literals_and_bare_strings():
    assert parse_value("3") == 3
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("true") is True
    assert parse_value("bf16") == "bf16"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'train.stepz' \(value 5\)"):
        resolve_run_config({}, ["train.stepz=5"])


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"train.batch_size = 'many'"):
        resolve_run_config({}, ["train.batch_size=many"])


def test_literal_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"train.precision = 'fp8'.*'auto', 'fp32' or 'bf16'"):
        resolve_run_config({}, ["train.precision=fp8"])


def test_impossible_shape_lists_allowed_heads():
    with pytest.raises(
        ConfigError, match=r"model.n_embd = 100 is not divisible by model.n_head = 3"
    ):
        resolve_run_config({"model": {"n_embd": 100, "n_head": 3}})


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match=r"model.preset = 'huge'.*'gpt2-124m', 'micro'"):
        resolve_run_config({"model": {"preset": "huge"}})


def test_duplicate_domains_refused():
    with pytest.raises(ConfigError, match="twice"):
        resolve_run_config({"data": {"domains": ["code", "code"]}})


def test_override_into_a_value_is_refused():
    with pytest.raises(ConfigError, match="is a value, not a table"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_spec_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_run_config(bad)


def test_an_empty_spec_file_is_named_as_empty(tmp_path):
    empty = tmp_path / "empty.toml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=r"spec file '.*empty.toml' is empty"):
        load_toml(empty)


def test_a_directory_given_as_spec_is_named_as_a_directory(tmp_path):
    (tmp_path / "a.toml").write_text('name = "a"\n')
    with pytest.raises(ConfigError, match=r"is a directory, not a TOML file.*\['a.toml'\]"):
        load_toml(tmp_path)


def test_a_binary_spec_file_is_named_as_not_utf8(tmp_path):
    binary = tmp_path / "spec.toml"
    binary.write_bytes(b'name = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match=r"spec.toml' is not UTF-8 text \(byte 8\)"):
        load_toml(binary)


def test_a_spec_with_no_tokenizer_and_no_preset_says_which_key_to_set():
    with pytest.raises(ConfigError, match=r"data.tokenizer is not set.*model.preset \(allowed:"):
        resolve_run_config({"name": "x"})


@pytest.mark.parametrize(
    ("raw", "key", "section", "one_allowed"),
    [
        ({"colour": 1}, "colour", "", "train"),
        ({"model": {"colour": 1}}, "model.colour", " in [model]", "n_layer"),
        ({"model": {"moe": {"colour": 1}}}, "model.moe.colour", " in [model.moe]", "top_k"),
        ({"model": {"memory": {"colour": 1}}}, "model.memory.colour", " in [model.memory]", "key_dim"),
        ({"data": {"colour": 1}}, "data.colour", " in [data]", "domains"),
        (
            {"data": {"sources": {"mine": {"files": ["a"], "colour": 1}}}},
            "data.sources.mine.colour", " in [data.sources.mine]", "text_field",
        ),
        ({"train": {"colour": 1}}, "train.colour", " in [train]", "warmup_steps"),
        ({"model": {"init": {"path": "x", "colour": 1}}}, "model.init.colour", " in [model.init]",
         "sha256"),
    ],
)
def test_an_unknown_key_lists_the_keys_allowed_in_its_section(raw, key, section, one_allowed):
    raw = {**raw, "model": {"preset": "micro", **raw.get("model", {})}}
    with pytest.raises(ConfigError) as err:
        resolve_run_config(raw)
    message = str(err.value)
    assert f"unknown key {key!r} (value 1); allowed{section}: [" in message
    assert f"'{one_allowed}'" in message and "\n" not in message


def test_warmup_longer_than_the_stage_is_refused_with_both_values():
    with pytest.raises(
        ConfigError,
        match=r"train.warmup_steps = 50 is larger than train.steps_per_stage = 10 .*allowed: 0..10",
    ):
        resolve_run_config({"model": {"preset": "micro"}}, ["train.warmup_steps=50",
                                                            "train.steps_per_stage=10"])
    without_rewarm = ["train.rewarm=false", "train.steps_per_stage=10", "data.domains=['code']"]
    with pytest.raises(ConfigError, match=r"whole schedule, train.steps_per_stage = 10 x 1 domains: .*allowed: 0..10"):
        resolve_run_config({"model": {"preset": "micro"}}, [*without_rewarm, "train.warmup_steps=11"])
    # without rewarm one warmup spans the stream: longer than a stage is fine
    cfg = resolve_run_config({"model": {"preset": "micro"}},
                             ["train.rewarm=false", "train.steps_per_stage=10", "train.warmup_steps=30"])
    assert cfg.train.warmup_steps == 30


def test_quickstart_spec_is_valid():
    from forgetlab.specs import resolve_spec

    cfg = load_run_config(resolve_spec("quickstart"))
    assert cfg.data.domains == ["code", "math", "medical", "legal", "dialogue"]
    assert cfg.model.n_layer == 4 and cfg.data.tokenizer == "bpe-2k"


def test_user_source_needs_exactly_one_origin():
    with pytest.raises(ConfigError, match="exactly one of 'files' or 'hf_dataset'"):
        resolve_run_config({"data": {"sources": {"mine": {}}, "tokenizer": "gpt2"}})
    cfg = resolve_run_config({"data": {"sources": {"mine": {"files": ["a/*.txt"]}}, "tokenizer": "gpt2"}})
    assert cfg.data.sources["mine"].files == ["a/*.txt"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"probes": ["bookz"]}, r"^data\.probes = \['bookz'\]: \['bookz'\] is no built-in domain "
         r"and has no \[data\.sources\.NAME\]; built-in domains: code, .*mmlu$"),
        ({"domains": ["code", "math"], "probes": ["math", "books"]},
         r"data\.probes = \['math', 'books'\] lists \['math'\], also in data\.domains.*never "
         r"trained on"),
        ({"probes": ["books", "books"]}, r"data\.probes = \['books', 'books'\] lists \['books'\] "
         r"twice"),
        ({"domains": ["code", "mmlu"]}, r"data\.domains = \['code', 'mmlu'\] lists \['mmlu'\], "
         r"evaluation-only \(no train split\): list it under data\.probes instead"),
    ],
)
def test_bad_probes_are_refused_in_one_line_naming_them(data, message):
    with pytest.raises(ConfigError, match=message) as err:
        resolve_run_config({"model": {"preset": "micro"}, "data": data})
    assert "\n" not in str(err.value)


def test_probes_may_be_built_in_or_user_domains_and_keep_old_run_ids():
    from forgetlab.train.rundir import config_hash

    cfg = resolve_run_config({
        "model": {"preset": "micro"},
        "data": {"probes": ["books", "mmlu", "notes"],
                 "sources": {"notes": {"files": ["notes/*.txt"]}}},
    })
    assert cfg.data.probes == ["books", "mmlu", "notes"]
    plain = resolve_run_config({"model": {"preset": "micro"}})
    assert config_hash(plain) == config_hash(resolve_run_config(
        {"model": {"preset": "micro"}, "data": {"probes": []}}
    )) != config_hash(cfg)  # no probes: the run id of a config from before probes existed
