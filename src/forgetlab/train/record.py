"""A run's record (its ``run.json``): assembled by :func:`run_record`, read by :class:`RunRecord`.

The dict stays the contract (analysis reads run.json). :func:`run_record` writes it from the
run's saved state and its setting (config, model, stream, devices); the metrics it holds are the
analysis layer's pure functions of R and the curves. :class:`RunRecord` gives the parts people
use most typed names: the validated :class:`RunConfig`, the domains, the R matrices (also as
DataFrames), the probe matrices of ``data.probes`` and the metrics, with the whole document in
``raw``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from forgetlab.config import ConfigError, RunConfig

if TYPE_CHECKING:
    import torch

    from forgetlab.data import Stream
    from forgetlab.train.probes import Probes
    from forgetlab.train.state import RunState

R_KINDS = ("loss", "bpb", "accuracy")


@dataclass(frozen=True)
class RunRecord:
    """One run's run.json: status, config, domains, R matrices, metrics (and everything in raw)."""

    path: Path | None
    status: str
    name: str
    config: RunConfig
    domains: list[str]
    tokenizer: str | None
    R: dict[str, list[list[float]]]
    metrics: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)
    probes: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: str | Path | None = None) -> RunRecord:
        """Type a run.json dict; ConfigError when its config no longer validates."""
        where = repr(str(path)) if path is not None else "the run record"
        try:
            config = RunConfig.model_validate(raw["config"])
        except (KeyError, TypeError, ValidationError) as e:
            raise ConfigError(f"{where}: its config is missing or invalid ({e})") from None
        return cls(
            path=None if path is None else Path(path),
            status=str(raw.get("status")),
            name=str(raw.get("name") or config.name),
            config=config,
            domains=list(raw.get("domains") or []),
            tokenizer=raw.get("tokenizer"),
            R=dict(raw.get("R") or {}),
            metrics=dict(raw.get("metrics") or {}),
            raw=raw,
            probes=list((raw.get("probes") or {}).get("domains") or []),
        )

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def r_matrix(self, kind: str = "loss") -> Any:
        """R[kind] as a DataFrame: rows ``init`` and ``after <domain>``, one column per domain."""
        import pandas as pd

        if kind not in R_KINDS:
            raise ConfigError(f"kind = {kind!r}; allowed: {list(R_KINDS)}")
        rows = self.R.get(kind) or []
        return pd.DataFrame(rows, index=self._row_labels(len(rows)), columns=self.domains)

    def probe_matrix(self, kind: str = "loss") -> Any:
        """The probes' scores of ``kind`` as a DataFrame: R's rows, one column per probe (empty
        for a run without ``data.probes``)."""
        import pandas as pd

        if kind not in R_KINDS:
            raise ConfigError(f"kind = {kind!r}; allowed: {list(R_KINDS)}")
        rows = ((self.raw.get("probes") or {}).get("R") or {}).get(kind) or []
        return pd.DataFrame(rows, index=self._row_labels(len(rows)), columns=self.probes)

    def _row_labels(self, n: int) -> list[str]:
        return ["init", *(f"after {d}" for d in self.domains)][:n]


def run_record(
    state: RunState,
    *,
    status: str,
    error: str | None,
    failure: dict[str, Any] | None,
    cfg: RunConfig,
    model: Any,
    mechanisms: Sequence[Any],
    stream: Stream,
    precision: str,
    unigram: dict[str, dict[str, float]],
    eval_tokens: list[int],
    peak: tuple[float | None, str],
    devices: int,
    device: torch.device,
    probes: Probes,
    loggers: dict[str, Any],
    base_model: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The run.json document: R rows so far; the CL metrics, convergence and time to target once
    every stage is evaluated; FLOPs, tokens, timing with throughput and MFU, memory, environment."""
    # imported here: reading a record (RunRecord) must not load torch or the analysis layer
    from forgetlab.analysis.columns import KINDS as METRIC_KINDS
    from forgetlab.analysis.curves import convergence_by_stage, throughput, time_to_target
    from forgetlab.analysis.registry import cl_metrics
    from forgetlab.train.env import environment, peak_memory_bytes
    from forgetlab.train.rundir import config_hash

    domains = list(stream.domains)
    metrics: dict[str, Any] = {}
    if len(state.R["loss"]) == len(domains) + 1:  # the stream is done
        metrics = {k: cl_metrics(state.R[k], k) for k in METRIC_KINDS}  # type: ignore[arg-type]
        metrics["convergence_steps"] = convergence_by_stage(state.R["loss"], state.curves)
        if cfg.train.target_ppl is not None:
            metrics["time_to_target"] = time_to_target(
                state.curves, len(domains), cfg.train.target_ppl
            )
    flops: dict[str, Any] = state.flops.to_dict()
    timing = state.timing.to_dict()
    return {
        "status": status,
        "error": error,
        "failure": failure,
        "name": cfg.name,
        "config_hash": config_hash(cfg),
        "config": cfg.model_dump(mode="json"),
        "model": model.config.model_dump(mode="json"),
        "parameters": parameter_counts(model, mechanisms),
        "precision": precision,
        "domains": domains,
        "tokenizer": stream.tokenizer.name,
        "tokenizer_sha256": stream.tokenizer.sha256,  # checked by runs that init from it
        **({"base_model": base_model} if base_model else {}),  # what [base_model] started from
        "R": state.R,
        "unigram": {k: [unigram[d][k] for d in domains] for k in METRIC_KINDS},
        **({"probes": probes.record(len(domains))} if probes else {}),
        "metrics": metrics,
        "loggers": loggers,
        "flops": flops,
        "tokens": {
            "train_per_stage": [s["train_tokens"] for s in state.flops.stages],
            "train_total": flops["total"]["train_tokens"],
            "new_data_per_domain": dict(state.new_data_per_domain),
            "eval_per_domain": eval_tokens,
        },
        "timing": {
            **timing,
            "throughput": throughput(flops["total"], timing["total"], *peak, devices),
        },
        "peak_memory": peak_memory_bytes(device),
        "env": environment(device),
        "started": state.started,
        "updated": datetime.now(timezone.utc).isoformat(),
    }


def parameter_counts(model: Any, mechanisms: Sequence[Any]) -> dict[str, int]:
    """Model parameters plus those mechanisms own outside the model (LoRA adapters);
    ``trainable`` counts what has requires_grad at the time of the record. ``total`` also
    counts the buffers a part declares frozen (OELM's orthogonal Q/K), as ``forgetlab
    inspect`` does, so that total - trainable is every weight the run never trains."""
    from forgetlab.models.checkpoint import declared_frozen

    extra = [p for m in mechanisms for p in m.parameters()]
    params = [*model.parameters(), *extra]
    frozen_buffers = sum(t.numel() for t in declared_frozen(model).values())
    return {
        "total": model.num_params() + frozen_buffers + sum(p.numel() for p in extra),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "mechanisms": sum(p.numel() for p in extra),
    }
