"""The errors a user can act on, and the one wording of a pydantic validation failure.

Every layer raises a subclass of :class:`ForgetlabError` for a problem the user can fix (a spec, an
override, a data source, a checkpoint path); the command line prints such an error as one line and
exits with code 2, and lets any other exception keep its traceback (a bug, not a bad input).

:func:`format_validation_error` is how every pydantic model of the lab (run configs, study specs,
mechanism knobs) reports what is wrong: one line naming each offending key by its dotted path, the
value given, why it was refused, and, for an unknown key, the keys allowed at that place.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError


class ForgetlabError(Exception):
    """A problem with the user's input or files, worded so that they can fix it."""


class ConfigError(ForgetlabError, ValueError):
    """A spec, ``--set`` override or config value that cannot be used."""


def format_validation_error(
    err: ValidationError, schema: type[BaseModel], what: str, at: tuple[int | str, ...] = ()
) -> str:
    """``what: problem; problem`` on one line, each problem naming its key path and value.

    ``schema`` is the validated model class; it lets an unknown key list the keys allowed where it
    was found (in ``[train]``, at the top level, in a ``[[mechanisms]]`` entry...). ``at`` is where
    ``schema`` sits in the user's spec (``("model", "init")``), prefixed to every key path.
    """
    problems = []
    for e in err.errors():
        loc = dotted((*at, *e["loc"]))
        msg = str(e["msg"]).removeprefix("Value error, ")
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            allowed = allowed_keys(schema, e["loc"][:-1])
            section = (*at, *e["loc"][:-1])
            where = f" in [{dotted(section)}]" if section else ""
            hint = f"; allowed{where}: {allowed}" if allowed else ""
            problems.append(f"unknown key {loc!r} (value {value!r}){hint}")
        elif e["type"] == "missing":
            problems.append(f"{loc} is required and missing")
        elif e["type"] == "value_error" and (not loc or isinstance(value, dict)):
            problems.append(msg)  # a whole-table check: the validator names its keys and values
        elif loc:
            problems.append(f"{loc} = {value!r}: {msg}")
        else:
            problems.append(msg)
    return f"{what}: " + "; ".join(problems)


def dotted(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """A pydantic error location as the key path a spec writes: ``train.lr``, ``hypotheses[0].id``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def allowed_keys(schema: type[BaseModel], path: tuple[int | str, ...]) -> list[str]:
    """The field names of the model reached by following ``path`` from ``schema`` (through
    sub-models, optional values, list items and dict values); empty where no model is reached."""
    node: Any = schema
    for part in path:
        model = _model_in(node)
        if model is not None and isinstance(part, str) and part in model.model_fields:
            node = model.model_fields[part].annotation
            continue
        node = _item_type(node)
        if node is None:
            return []
    model = _model_in(node)
    return sorted(model.model_fields) if model is not None else []


def _model_in(tp: Any) -> type[BaseModel] | None:
    """``tp`` itself when it is a model class, or the one model of an ``X | None``."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        models = [m for a in typing.get_args(tp) if (m := _model_in(a)) is not None]
        return models[0] if len(models) == 1 else None
    return None


def _item_type(tp: Any) -> Any:
    """The item of a ``list[X]`` or the value of a ``dict[str, X]`` (a location's index or key)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # list[X] | None
        tp = next((a for a in typing.get_args(tp) if typing.get_origin(a) in (list, dict)), None)
    origin = typing.get_origin(tp)
    if origin is list:
        return typing.get_args(tp)[0]
    if origin is dict:
        return typing.get_args(tp)[1]
    return None
