"""Build a :class:`RunConfig` from a TOML spec, ``--set a.b=c`` overrides and a model preset.

Order of precedence, lowest first: schema defaults < preset < spec file < ``--set`` overrides.
Every failure raises :class:`ConfigError` naming the key, the offending value and what is allowed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import tomllib
from pydantic import ValidationError

from forgetlab.config.errors import ConfigError, format_validation_error
from forgetlab.config.presets import PRESETS, get_preset
from forgetlab.config.schema import RunConfig


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML spec; a missing path, a directory, an empty file or a syntax error is a
    :class:`ConfigError` naming the file."""
    p = Path(path)
    if p.is_dir():
        specs = sorted(q.name for q in p.glob("*.toml"))
        inside = f"; the .toml files in it: {specs}" if specs else ""
        raise ConfigError(f"spec file {str(p)!r} is a directory, not a TOML file{inside}")
    if not p.is_file():
        raise ConfigError(f"spec file {str(p)!r} does not exist")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"spec file {str(p)!r} is not UTF-8 text (byte {e.start}): a spec is a TOML file"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"spec file {str(p)!r} is not valid TOML: {e}") from None
    if not raw:
        raise ConfigError(
            f"spec file {str(p)!r} is empty: a run spec needs at least a [model] preset (or a "
            "[data] tokenizer); a study spec a name and its [factors] or [groups]"
        )
    return raw


def parse_value(text: str) -> Any:
    """Parse an override's value as a TOML literal (``3``, ``1e-3``, ``true``, ``[1, 2]``, ``"x"``);
    anything that is not a literal is taken as a bare string (``bf16``)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` assignment to a nested dict in place."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} is not of the form key.path=value")
    key, _, value = assignment.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {assignment!r} has an empty key")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"override {assignment!r}: {'.'.join(parts[: i + 1])} is a value, not a table"
            )
        node = child
    node[parts[-1]] = parse_value(value.strip())


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for o in overrides or []:
        apply_override(out, o)
    return out


def resolve_run_config(raw: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """Merge defaults, preset, spec and overrides into one validated :class:`RunConfig`."""
    merged = apply_overrides(raw, overrides)
    model = dict(merged.get("model") or {})
    data = dict(merged.get("data") or {})
    origins: dict[str, str] = {}  # keys a preset filled, for error messages
    preset_name = model.get("preset")
    if preset_name is not None:
        preset = get_preset(str(preset_name))
        origins = {f"model.{k}": f"preset {preset.name!r}" for k in preset.model if k not in model}
        if data.get("tokenizer") is None:
            origins["data.tokenizer"] = f"preset {preset.name!r}"
        model = {**preset.model, **model}
        data.setdefault("tokenizer", preset.tokenizer)
    if model.get("init") is not None and merged.get("base_model") is None:  # both: refused below
        # model.init: the checkpoint's shape and tokenizer are part of the config, so this is
        # where config resolution reads files beyond the spec (forgetlab.models.init)
        from forgetlab.models.init import resolve_init

        model, data = resolve_init(model, data, origins)
    merged["model"], merged["data"] = model, data
    try:
        cfg = RunConfig.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, RunConfig, "invalid config")) from None
    from forgetlab.data.sources import check_run_domains  # the data layer knows the recipes

    problem = check_run_domains(cfg.data.domains, cfg.data.probes, cfg.data.sources)
    if problem:
        raise ConfigError(problem)
    if cfg.data.tokenizer is None:
        raise ConfigError(
            "data.tokenizer is not set and there is no model.preset to take it from: set "
            f"model.preset (allowed: {sorted(PRESETS)}) or data.tokenizer (gpt2 | bpe-<N>)"
        )
    return cfg


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    return resolve_run_config(load_toml(path), overrides)
