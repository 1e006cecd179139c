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

from forgetlab.config.errors import ConfigError
from forgetlab.config.presets import get_preset
from forgetlab.config.schema import RunConfig


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning syntax errors into a :class:`ConfigError` with the file name."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"spec file {str(p)!r} does not exist")
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"spec file {str(p)!r} is not valid TOML: {e}") from None


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


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key {loc!r} (value {e['input']!r})")
        elif e["type"] == "value_error":  # our validators name the keys and values themselves
            lines.append(msg)
        elif loc:
            lines.append(f"{loc} = {e.get('input')!r}: {msg}")
        else:
            lines.append(msg)
    return "invalid config: " + "; ".join(lines)


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
    if model.get("init") is not None:
        # model.init: the checkpoint's shape and tokenizer are part of the config, so this is
        # where config resolution reads files beyond the spec (forgetlab.models.init)
        from forgetlab.models.init import resolve_init

        model, data = resolve_init(model, data, origins)
    merged["model"], merged["data"] = model, data
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e)) from None


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    return resolve_run_config(load_toml(path), overrides)
