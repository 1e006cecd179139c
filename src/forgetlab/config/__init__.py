"""Typed configs, presets, ``--set`` overrides and validation (knows nothing else of forgetlab)."""

from forgetlab.config.errors import ConfigError, ForgetlabError, format_validation_error
from forgetlab.config.loading import (
    apply_overrides,
    load_run_config,
    load_toml,
    parse_value,
    resolve_run_config,
)
from forgetlab.config.presets import PRESETS, Preset, get_preset
from forgetlab.config.schema import (
    STREAM_DOMAINS,
    BaseModelConfig,
    DataConfig,
    InitConfig,
    MechanismConfig,
    ModelConfig,
    RunConfig,
    SourceConfig,
    TrainConfig,
)

__all__ = [
    "PRESETS",
    "STREAM_DOMAINS",
    "BaseModelConfig",
    "ConfigError",
    "DataConfig",
    "ForgetlabError",
    "InitConfig",
    "MechanismConfig",
    "ModelConfig",
    "Preset",
    "RunConfig",
    "SourceConfig",
    "TrainConfig",
    "apply_overrides",
    "format_validation_error",
    "get_preset",
    "load_run_config",
    "load_toml",
    "parse_value",
    "resolve_run_config",
]
