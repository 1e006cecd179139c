"""A run's record (its ``run.json``) as a typed object, for notebooks and scripts.

The dict stays the contract (analysis reads run.json); :class:`RunRecord` gives the parts people
use most typed names: the validated :class:`RunConfig`, the domains, the R matrices (also as
DataFrames), the probe matrices of ``data.probes`` and the metrics, with the whole document in
``raw``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from forgetlab.config import ConfigError, RunConfig

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
