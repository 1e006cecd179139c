"""Continual-learning mechanisms as plugins on the trainer's hook contract (one per module).

Every module in this package is imported here, so a mechanism becomes available by name in specs
and on the command line as soon as its file exists and its class carries ``@register``.
"""

import importlib
import pkgutil

from forgetlab.mechanisms.base import (
    MECHANISMS,
    Batch,
    Mechanism,
    StepOutput,
    TrainContext,
    build_mechanisms,
    parse_mechanism_option,
    register,
)

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.ispkg:  # parts/ holds no mechanism
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "MECHANISMS",
    "Batch",
    "Mechanism",
    "StepOutput",
    "TrainContext",
    "build_mechanisms",
    "parse_mechanism_option",
    "register",
]
