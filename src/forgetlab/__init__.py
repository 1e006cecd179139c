"""forgetlab: controlled experiments on forgetting in small GPT-style language models.

The Python API (see the README's "Python API")::

    import forgetlab
    record = forgetlab.run("quickstart", overrides={"train.steps_per_stage": 30})
    summary = forgetlab.run_study("cl_mechanisms", scale="quickstart", workers=2)
    frame = forgetlab.load_results(summary["exp_dir"])

Importing the package loads no heavy dependency: the functions import what they drive when
called, and the classes below are imported on first access.
"""

from __future__ import annotations

from forgetlab.api import load_analysis, load_results, load_run, plan, run, run_config, run_study

__version__ = "0.1.0"

_LAZY = {
    "Analysis": "forgetlab.analysis.document",
    "RunConfig": "forgetlab.config",
    "ConfigError": "forgetlab.config",
    "RunRecord": "forgetlab.train.record",
    "from_pretrained": "forgetlab.models",
    "load_tokenizer": "forgetlab.data",
    "shipped_names": "forgetlab.specs",
}

__all__ = [
    "Analysis",
    "ConfigError",
    "RunConfig",
    "RunRecord",
    "__version__",
    "from_pretrained",
    "load_analysis",
    "load_results",
    "load_run",
    "load_tokenizer",
    "plan",
    "run",
    "run_config",
    "run_study",
    "shipped_names",
]


def __getattr__(name: str) -> object:
    """PEP 562: the classes and helpers of ``_LAZY`` are imported on first access."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'forgetlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
