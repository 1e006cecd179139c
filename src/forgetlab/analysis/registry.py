"""The metric registry: one entry per metric, and everything the lab derives from it.

An entry says what a metric is called, how it is computed (a function of one kind's R matrix, of
one kind's probe matrix, or a reader of run.json), which direction is better, its unit, its one-line definition and the short
names hypothesis criteria use for it. From :data:`METRICS` come:

* the numbers a run records (:func:`cl_metrics` and :func:`probe_metrics`, called by the
  trainer);
* the results table's columns (:mod:`forgetlab.analysis.columns`);
* the names a study spec may use as primary/secondary metric (:func:`is_column`, :func:`allowed`);
* the hypothesis namespace (:func:`aliases`) and the sign convention of the statistics
  (:func:`lower_is_better`);
* the README's metric table (:func:`markdown_table`; a test keeps README.md equal to it).

Adding a metric is its function (in :mod:`forgetlab.analysis.metrics` for an R-matrix metric, a
reader here for a run-level one), one entry below and a test against hand-computed values.

Notation: ``a[i][j]`` is the score on domain ``j`` after stage ``i`` (row 0 = before stage 1),
*T* domains, score = accuracy or −loss (higher is better); ``L`` is the raw loss matrix. A probe
matrix has the same rows and one column per ``data.probes`` domain, ``p`` (never trained on).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from forgetlab.analysis import metrics as m
from forgetlab.analysis.metrics import KINDS, LOWER_IS_BETTER, Kind
from forgetlab.atomic import atomic_write_text

Better = Literal["higher", "lower"] | None
# scalar: one column <kind>.<name>; per_lag: one value per lag k = 1..T-1, columns
# <kind>.<name>@k (run.json: {"k": value}); per_domain: a list over domains kept in run.json only
Shape = Literal["scalar", "per_lag", "per_domain"]


@dataclass(frozen=True)
class Alias:
    """A short name for one column in hypothesis criteria: ``<name>.<group>`` is the group's mean
    of ``transform(column)`` over its finished runs."""

    name: str
    meaning: str
    kind: Kind | None = None  # an R-matrix or probe metric's alias names its column of this kind
    transform: Callable[[float], float] = float


@dataclass(frozen=True, kw_only=True)
class Metric:
    """What every metric declares. ``better`` None: a size, neither better nor worse (the
    statistics then treat it as higher-is-better, their default sign)."""

    name: str
    better: Better
    unit: str
    definition: str
    aliases: tuple[Alias, ...] = ()


@dataclass(frozen=True, kw_only=True)
class MatrixMetric(Metric):
    """Computed from one kind's R matrix: ``compute(scores, raw, kind)`` with ``scores`` the
    higher-is-better matrix (:func:`~forgetlab.analysis.metrics.to_scores`) and ``raw`` as
    evaluated. Columns ``<kind>.<name>`` for each of ``kinds``."""

    compute: Callable[[np.ndarray, np.ndarray, Kind], Any]
    kinds: tuple[Kind, ...] = KINDS
    shape: Shape = "scalar"

    def columns(self, kind: Kind, n_domains: int) -> list[str]:
        """The results columns this metric fills for ``kind`` in a run over ``n_domains``."""
        if kind not in self.kinds or self.shape == "per_domain":
            return []
        if self.shape == "per_lag":
            return [f"{kind}.{self.name}@{k}" for k in range(1, n_domains)]
        return [f"{kind}.{self.name}"]

    def pattern(self) -> str | None:
        """The column name(s) as a spec author writes them, e.g. ``<loss|bpb>.final_mean``."""
        if self.shape == "per_domain":
            return None
        kinds = self.kinds[0] if len(self.kinds) == 1 else f"<{'|'.join(self.kinds)}>"
        return f"{kinds}.{self.name}" + ("@k" if self.shape == "per_lag" else "")


@dataclass(frozen=True, kw_only=True)
class ProbeMetric(Metric):
    """Computed from one kind's probe matrix (R's rows, one column per ``data.probes`` domain):
    ``compute(scores, raw, kind)`` gives one value per probe. Columns ``<kind>.<name>``, the mean
    over the run's probes (what hypotheses and tables compare), and ``<kind>.<name>@<probe>``
    for each probe; a study without probes has none of them."""

    compute: Callable[[np.ndarray, np.ndarray, Kind], list[float]]
    kinds: tuple[Kind, ...] = KINDS

    def columns(self, kind: Kind, probes: Sequence[str]) -> list[str]:
        """The results columns this metric fills for ``kind`` in a run probing ``probes`` (none
        without probes)."""
        if kind not in self.kinds or not probes:
            return []
        return [f"{kind}.{self.name}", *(f"{kind}.{self.name}@{p}" for p in probes)]

    def pattern(self) -> str:
        kinds = self.kinds[0] if len(self.kinds) == 1 else f"<{'|'.join(self.kinds)}>"
        return f"{kinds}.{self.name}[@probe]"


@dataclass(frozen=True, kw_only=True)
class RunMetric(Metric):
    """One results column read from a run's run.json (costs, speed, sizes, curve summaries).
    ``read`` returns NaN for a value the run lacks, None to leave the column out of a row rebuilt
    from a record that has no such section at all (e.g. no ``time_to_target`` without a target).
    Any per-run number that is not a function of one R or probe matrix (a gap to joint
    training) is a run metric over the run.json section its code writes."""

    read: Callable[[dict[str, Any]], float | None]

    def pattern(self) -> str:
        return self.name


# ------------------------------------------------------------------ run.json readers
def num(v: Any) -> float:
    """A JSON number as float; NaN for null, booleans and anything else."""
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else np.nan


def _at(*path: str) -> Callable[[dict[str, Any]], float]:
    """A reader of the number at ``path`` in run.json (NaN where a level is missing)."""

    def read(record: dict[str, Any]) -> float:
        node: Any = record
        for key in path:
            node = (node or {}).get(key) if isinstance(node, dict | None) else None
        return num(node)

    return read


def _convergence_mean(record: dict[str, Any]) -> float:
    steps = [s for s in (record.get("metrics") or {}).get("convergence_steps") or [] if s is not None]
    return float(np.mean(steps)) if steps else np.nan


def _to_target(key: str) -> Callable[[dict[str, Any]], float | None]:
    """Mean over stages of ``time_to_target[*][key]``; NaN when a stage missed the target (never a
    partial mean that would flatter a run that missed it on some domain)."""

    def read(record: dict[str, Any]) -> float | None:
        target = (record.get("metrics") or {}).get("time_to_target")
        if not target:
            return None
        values = [t and t[key] for t in target]
        return np.nan if any(v is None for v in values) else float(np.mean(values))

    return read


def _flops(with_eval: bool) -> Callable[[dict[str, Any]], float | None]:
    def read(record: dict[str, Any]) -> float | None:
        total = (record.get("flops") or {}).get("total") or {}
        if not total:
            return None
        return num(total.get("training_total")) + (num(total.get("eval")) if with_eval else 0.0)

    return read


def _wall_s(record: dict[str, Any]) -> float:
    timing = record.get("timing") or {}
    return float(sum((timing.get("total") or {}).values())) if timing else np.nan


def _frozen(record: dict[str, Any]) -> float:
    return _at("parameters", "total")(record) - _at("parameters", "trainable")(record)


# ------------------------------------------------------------------ the registry
def _of_loss(name: str, meaning: str) -> Alias:
    return Alias(name, meaning, kind="loss")


METRICS: tuple[MatrixMetric | ProbeMetric | RunMetric, ...] = (
    MatrixMetric(
        name="ACC",
        compute=lambda a, raw, kind: m.average_accuracy(a),
        better="higher",
        unit="score",
        definition="mean_j a[T][j]: the final score averaged over the domains",
        aliases=(Alias("acc", "mean final token accuracy (ACC)", kind="accuracy"),),
    ),
    MatrixMetric(
        name="BWT",
        compute=lambda a, raw, kind: m.backward_transfer(a),
        better="higher",
        unit="score",
        definition="mean_{j<T} (a[T][j] − a[j][j]): backward transfer (Lopez-Paz & Ranzato 2017)",
        aliases=(_of_loss("bwt", "backward transfer of the (negated) loss"),),
    ),
    MatrixMetric(
        name="FWT",
        compute=lambda a, raw, kind: m.forward_transfer(a),
        better="higher",
        unit="score",
        definition="mean_{j≥2} (a[j−1][j] − a[0][j]): forward transfer, against the untrained "
        "model (Lopez-Paz & Ranzato 2017)",
        aliases=(_of_loss("fwt", "forward transfer of the (negated) loss"),),
    ),
    MatrixMetric(
        name="average_forgetting",
        compute=lambda a, raw, kind: m.average_forgetting(a),
        better="lower",
        unit="score",
        definition="mean_{j<T} f_j: Average Forgetting (Chaudhry et al. 2018)",
        aliases=(_of_loss("af", "average forgetting of the loss"),),
    ),
    MatrixMetric(
        name="forgetting",
        compute=lambda a, raw, kind: m.forgetting_per_domain(a),
        shape="per_domain",
        better="lower",
        unit="score",
        definition="f_j = max_{1≤l<T} a[l][j] − a[T][j] for each domain j < T (run.json only)",
    ),
    MatrixMetric(
        name="plasticity",
        compute=lambda a, raw, kind: m.plasticity(a),
        better="higher",
        unit="score",
        definition="mean_j (a[j][j] − a[j−1][j]): the gain on each domain from the stage that "
        "trains on it",
        aliases=(_of_loss("plasticity", "mean loss drop on the domain being learned"),),
    ),
    MatrixMetric(
        name="final_mean",
        compute=lambda a, raw, kind: float(np.mean(raw[-1, :])),
        kinds=("loss", "bpb"),
        better="lower",
        unit="nats/token, bits/byte",
        definition="mean_j L[T][j]: the final loss itself (ACC of a loss is its negation)",
        aliases=(
            Alias("ppl", "perplexity: exp(mean final validation loss)", "loss", math.exp),
            _of_loss("loss", "mean final validation loss over the domains"),
            Alias("bpb", "mean final bits per byte", kind="bpb"),
        ),
    ),
    MatrixMetric(
        name="retention",
        compute=lambda a, raw, kind: {
            str(k): m.retention(*((raw, k, True) if kind in LOWER_IS_BETTER else (a, k)))
            for k in range(1, a.shape[1])
        },
        shape="per_lag",
        better="higher",
        unit="ratio",
        definition="Retention@k: mean over j with j+k ≤ T of a[j+k][j] / a[j][j] (loss: "
        "L[j][j] / L[j+k][j]); 1 = fully kept",
    ),
    ProbeMetric(
        name="probe_forgetting",
        compute=lambda a, raw, kind: m.probe_forgetting(a),
        better="lower",
        unit="score",
        definition="a[0][p] − a[T][p] for each probe p of `data.probes` (loss: L[T][p] − L[0][p], "
        "the probe's loss after the stream minus before it): general ability the stream cost, "
        "> 0 = lost; the column is the mean over the probes, `@probe` one probe's",
        aliases=(
            _of_loss("probe_forgetting", "mean rise of the probes' loss over the stream"),
        ),
    ),
    RunMetric(
        name="convergence_mean",
        read=_convergence_mean,
        better="lower",
        unit="optimizer steps",
        definition="mean over stages of the steps until the in-stage validation loss on the new "
        "domain first comes within 5% of the stage's total drop from its end value, linearly "
        "interpolated between the evaluations around the crossing (needs `train.eval_every`)",
        aliases=(Alias("convergence", "mean steps to converge on a new domain"),),
    ),
    RunMetric(
        name="steps_to_target",
        read=_to_target("steps"),
        better="lower",
        unit="optimizer steps",
        definition="with `train.target_ppl`: per stage, the first in-stage evaluation at or below "
        "that perplexity on the new domain; mean over stages, NaN when any stage missed it",
    ),
    RunMetric(
        name="tokens_to_target",
        read=_to_target("tokens"),
        better="lower",
        unit="tokens",
        definition="`steps_to_target` in training tokens",
    ),
    RunMetric(
        name="time_to_target_s",
        read=_to_target("train_s"),
        better="lower",
        unit="s",
        definition="`steps_to_target` in training seconds (evaluation excluded)",
    ),
    RunMetric(
        name="flops.training_total",
        read=_flops(with_eval=False),
        better="lower",
        unit="FLOPs",
        definition="FLOPs of the training steps, a mechanism's extra steps (sleep phases) and "
        "the FLOPs it reports for its own work included",
        aliases=(Alias("flops", "training FLOPs (incl. mechanisms)"),),
    ),
    RunMetric(
        name="flops.total_with_eval",
        read=_flops(with_eval=True),
        better="lower",
        unit="FLOPs",
        definition="`flops.training_total` plus the FLOPs of every evaluation",
    ),
    RunMetric(
        name="train_tokens",
        read=_at("tokens", "train_total"),
        better=None,
        unit="tokens",
        definition="tokens the training steps consumed, over all stages",
    ),
    RunMetric(
        name="wall_s",
        read=_wall_s,
        better="lower",
        unit="s",
        definition="seconds over every timed phase (data, forward, backward, optimizer, "
        "mechanisms, eval)",
        aliases=(Alias("wall", "wall-clock seconds of the run"),),
    ),
    RunMetric(
        name="tokens_per_s",
        read=_at("timing", "throughput", "train_tokens_per_s"),
        better="higher",
        unit="tokens/s",
        definition="training tokens per second of training time (evaluation excluded)",
        aliases=(Alias("speed", "training tokens per second"),),
    ),
    RunMetric(
        name="mfu",
        read=_at("timing", "throughput", "mfu"),
        better="higher",
        unit="fraction",
        definition="model FLOPs utilisation: training FLOP/s over the peak FLOP/s of the run's "
        "devices",
        aliases=(Alias("mfu", "model FLOPs utilisation"),),
    ),
    RunMetric(
        name="peak_rss_bytes",
        read=_at("peak_memory", "cpu_max_rss"),
        better="lower",
        unit="bytes",
        definition="peak resident memory of the run's process",
        aliases=(Alias("memory", "peak resident memory in bytes"),),
    ),
    RunMetric(
        name="params.total",
        read=_at("parameters", "total"),
        better=None,
        unit="parameters",
        definition="the model's parameters, a mechanism's own (LoRA adapters) and declared-frozen "
        "buffers (OELM's Q/K)",
        aliases=(Alias("params", "total parameters"),),
    ),
    RunMetric(
        name="params.trainable",
        read=_at("parameters", "trainable"),
        better=None,
        unit="parameters",
        definition="parameters with `requires_grad` when the run ended",
        aliases=(Alias("trainable", "trainable parameters"),),
    ),
    RunMetric(
        name="params.frozen",
        read=_frozen,
        better=None,
        unit="parameters",
        definition="`params.total` − `params.trainable`",
        aliases=(Alias("frozen", "frozen parameters (total - trainable)"),),
    ),
)
MATRIX: tuple[MatrixMetric, ...] = tuple(x for x in METRICS if isinstance(x, MatrixMetric))
PROBE: tuple[ProbeMetric, ...] = tuple(x for x in METRICS if isinstance(x, ProbeMetric))
RUN: tuple[RunMetric, ...] = tuple(x for x in METRICS if isinstance(x, RunMetric))

# The study defaults (the lab's main question is forgetting): the primary metric when a spec
# declares none, the columns of the report's per-group table after the declared ones, and the
# secondary metrics that also get an exploratory factorial fit, each in the order shown.
DEFAULT_PRIMARY = "loss.average_forgetting"
REPORTED = (
    "loss.average_forgetting",
    "loss.BWT",
    "loss.retention@1",
    "loss.FWT",
    "loss.final_mean",
    "loss.probe_forgetting",  # in studies with data.probes
    "accuracy.ACC",
    "convergence_mean",
    "flops.training_total",
    "tokens_per_s",
)
SECONDARY = ("loss.BWT", "loss.retention@1", "loss.FWT", "convergence_mean", "loss.final_mean")


# ------------------------------------------------------------------ derived
def cl_metrics(r: np.ndarray | Sequence[Sequence[float]], kind: Kind) -> dict[str, object]:
    """Every R-matrix metric of one kind of score, in the run.json layout.

    ``r`` is the raw matrix (losses positive, accuracies in [0, 1]); signs are handled here.
    """
    raw = np.asarray(r, dtype=np.float64)
    a = m.to_scores(raw, kind)
    m.check_shape(a)
    return {x.name: x.compute(a, raw, kind) for x in MATRIX if kind in x.kinds}


def probe_metrics(
    r: np.ndarray | Sequence[Sequence[float]], kind: Kind, probes: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Every probe metric of one kind's probe matrix ``r`` (raw, columns ``probes``), in the
    run.json layout: ``{name: {"mean": value, "per_probe": {probe: value}}}``."""
    raw = np.asarray(r, dtype=np.float64)
    a = m.to_scores(raw, kind)
    out: dict[str, dict[str, Any]] = {}
    for x in PROBE:
        if kind in x.kinds:
            values = x.compute(a, raw, kind)
            per_probe = dict(zip(probes, values, strict=True))
            out[x.name] = {"mean": float(np.mean(values)), "per_probe": per_probe}
    return out


# <kind>.<name>, then @ and a lag k (per_lag) or a probe's domain name (probe metrics)
_COLUMN = re.compile(r"^(?P<kind>\w+)\.(?P<name>\w+)(?:@(?P<at>.+))?$")


def metric_of(column: str) -> MatrixMetric | ProbeMetric | RunMetric | None:
    """The entry behind a results column (``loss.retention@2`` -> retention), None if none is."""
    run = next((x for x in RUN if x.name == column), None)
    match = _COLUMN.match(column)
    if run or not match:
        return run
    probe = next((x for x in PROBE if x.name == match["name"]), None)
    if probe:
        return probe
    entry = next((x for x in MATRIX if x.name == match["name"]), None)
    at = match["at"]
    if at is not None and not at.isdigit():
        return None
    return entry if entry and (entry.shape == "per_lag") == (at is not None) else None


def is_column(name: str) -> bool:
    """Whether some run can have the results column ``name`` (so the analysis can compute it)."""
    entry = metric_of(name)
    if isinstance(entry, RunMetric):
        return True
    match = _COLUMN.match(name)
    if isinstance(entry, ProbeMetric):
        return match is not None and match["kind"] in entry.kinds
    return (
        entry is not None
        and match is not None
        and match["kind"] in entry.kinds
        and entry.shape != "per_domain"
        and (match["at"] is None or int(match["at"]) >= 1)
    )


def allowed() -> list[str]:
    """Every results column a spec may name, as patterns (``k`` a lag >= 1)."""
    return [p for x in METRICS if (p := x.pattern())]


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (forgetting, loss, cost). Columns the
    registry does not know and sizes count as higher-is-better, the statistics' default sign."""
    entry = metric_of(metric)
    return entry is not None and entry.better == "lower"


def aliases() -> Iterator[tuple[Alias, str]]:
    """Every hypothesis alias with the results column it names, in registry order."""
    for x in METRICS:
        for alias in x.aliases:
            yield alias, (x.name if isinstance(x, RunMetric) else f"{alias.kind}.{x.name}")


# ------------------------------------------------------------------ the README's table
README_BEGIN = "<!-- metric table: generated from forgetlab.analysis.registry -->"
README_END = "<!-- end of metric table -->"


def _alias_cell(x: MatrixMetric | ProbeMetric | RunMetric) -> str:
    cells = []
    for alias, column in ((a, c) for a, c in aliases() if a in x.aliases):
        target = f"`{column}`"
        if alias.transform is not float:
            target = f"{alias.transform.__name__}({target})"
        cells.append(f"`{alias.name}`" + ("" if column == x.name else f" = {target}"))
    return ", ".join(cells)


def markdown_table() -> str:
    """The README's metric table, one row per registry entry."""
    rows = ["| column | alias | better | unit | definition |", "|---|---|---|---|---|"]
    for x in METRICS:
        column = f"`{x.pattern()}`" if x.pattern() else f"run.json `metrics.<kind>.{x.name}`"
        column = column.replace("|", "\\|")
        rows.append(
            f"| {column} | {_alias_cell(x)} | {x.better or '—'} | {x.unit} | {x.definition} |"
        )
    return "\n".join(rows)


def readme_with_table(text: str) -> str:
    """``text`` (README.md) with the part between the table markers replaced by the table."""
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise ValueError(f"README has no {README_BEGIN!r} ... {README_END!r} pair")
    return f"{text[: begin + len(README_BEGIN)]}\n{markdown_table()}\n{text[end:]}"


if __name__ == "__main__":  # python -m forgetlab.analysis.registry [README.md]: rewrite the table
    readme = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    atomic_write_text(readme, readme_with_table(readme.read_text()))
