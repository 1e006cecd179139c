"""Builds a small synthetic experiment directory in the engine's contract format (report test data).

A 2x2x2 factorial (T, W, R) x 2 seeds x 2 domain orders over 3 domains: each run.json holds an R
matrix generated from known mechanism effects on forgetting, its metrics computed by the real
``cl_metrics``, timings, FLOPs and parameters; one run failed. results.parquet is written in the
contract's column layout.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forgetlab.analysis.load import preregistration_hash, row_from_record
from forgetlab.analysis.registry import cl_metrics

DOMAINS = ["code", "math", "medical"]
ORDERS = {"fwd": DOMAINS, "rev": DOMAINS[::-1]}
FACTORS = {"T": ["T0", "T1"], "W": ["W0", "W1"], "R": ["R0", "R1"]}
PREREG = {
    "primary_metric": "loss.average_forgetting",
    "test": "anova",
    "alpha": 0.05,
    "correction": "holm",
    "hypotheses": [
        {
            "id": "H1",
            "statement": "T alone lowers forgetting",
            "criterion": "af.T1W0R0 < af.T0W0R0",
        },
        {
            "id": "H2",
            "statement": "R is the strongest main effect",
            "criterion": "effect.R < effect.T and p.R < 0.05",
        },
        {
            "id": "H3",
            "statement": "W alone speeds training",
            "criterion": "speed.T0W1R0 > 2 * speed.T0W0R0",
        },
    ],
}


def r_matrix(forget: float, rng: np.random.Generator) -> list[list[float]]:
    """Loss R: 7.5 untrained, ~3.0 just after learning, rising by ``forget`` per later stage."""
    t = len(DOMAINS)
    r = np.full((t + 1, t), 7.5)
    for i in range(1, t + 1):
        for j in range(t):
            if j < i:
                r[i, j] = 3.0 + forget * (i - 1 - j)
            else:
                r[i, j] = 7.5 - 0.3 * i
    return (r + rng.normal(0, 0.01, r.shape)).round(4).tolist()


def run_record(
    levels: dict[str, str], seed: int, order: list[str], rng: np.random.Generator
) -> dict[str, Any]:
    on = {f: levels[f] == FACTORS[f][1] for f in FACTORS}
    forget = (
        0.6 - 0.1 * on["T"] - 0.25 * on["R"] - 0.08 * (on["T"] and on["R"]) + rng.normal(0, 0.01)
    )
    loss = r_matrix(max(forget, 0.01), rng)
    acc = (1 / (1 + np.exp(np.asarray(loss) - 4))).round(4).tolist()
    metrics = {
        "loss": cl_metrics(loss, "loss"),
        "bpb": cl_metrics(np.asarray(loss) / 3, "bpb"),
        "accuracy": cl_metrics(acc, "accuracy"),
        "convergence_steps": [10, 12, None],
    }
    train = 1e12 * (1 + 0.3 * on["R"] + 0.05 * on["W"])
    tps = 9000 * (0.8 if on["T"] else 1.0) * (1.1 if on["W"] else 1.0) + rng.normal(0, 50)
    phases = {"data": 0.5, "forward": 10.0, "backward": 20.0, "optimizer": 2.0, "eval": 3.0}
    return {
        "status": "finished",
        "error": None,
        "name": "synthetic",
        "config": {
            "seed": seed,
            "model": {"preset": "tiny", "n_layer": 4},
            "train": {"steps_per_stage": 40, "lr": 0.001, "sparsity": "2:4" if on["T"] else "none"},
        },
        "parameters": {"total": 2_000_000, "trainable": 1_500_000 if on["T"] else 2_000_000},
        "domains": order,
        "R": {"loss": loss, "bpb": (np.asarray(loss) / 3).tolist(), "accuracy": acc},
        "metrics": metrics,
        "flops": {
            "total": {
                "train": train,
                "eval": 1e10,
                "extra_steps": 0.0,
                "mechanisms": 0.0,
                "train_tokens": 3e5,
                "training_total": train,
            }
        },
        "tokens": {"train_total": 3e5},
        "timing": {
            "per_stage": [phases] * 3,
            "total": {k: 3 * v for k, v in phases.items()},
            "throughput": {"train_tokens_per_s": tps, "mfu": 0.01},
        },
        "peak_memory": {"cpu_max_rss": 900 * 2**20},
        "env": {
            "python": "3.11.2",
            "torch": "2.13.0",
            "device": "cpu",
            "git": {"commit": "abc123", "dirty": True},
            "command": ["forgetlab", "experiment", "run"],
        },
        "samples": [{"prompt": "def add(a, b):", "completion": " return a + b"}]
        if seed == 0 and not any(on.values())
        else [],
    }


def write_experiment(
    root: Path, seeds: int = 2, prereg_changed: bool = False, fail_one: bool = True
) -> Path:
    """Write the synthetic experiment into ``root`` and return it."""
    rng = np.random.default_rng(123)
    runs, rows = [], []
    for combo in itertools.product(*FACTORS.values()):
        levels = dict(zip(FACTORS, combo, strict=True))
        group = "".join(combo)
        for seed, (oname, order) in itertools.product(range(seeds), ORDERS.items()):
            run = {
                "run_id": f"{group}-s{seed}-{oname}",
                "group": group,
                "levels": levels,
                "seed": seed,
                "order": order,
                "order_name": oname,
                "budget": "same_shape",
                "steps_per_stage": 40,
                "dir": f"runs/{group}-s{seed}-{oname}",
            }
            rec = run_record(levels, seed, order, rng)
            if fail_one and group == "T1W1R1" and seed == 0 and oname == "rev":
                rec = {
                    **rec,
                    "status": "failed",
                    "error": "RuntimeError: out of memory\ntraceback",
                    "metrics": {},
                }
            (root / run["dir"]).mkdir(parents=True)
            (root / run["dir"] / "run.json").write_text(json.dumps(rec))
            steps = np.arange(1, 121)
            pd.DataFrame(
                {
                    "step": steps,
                    "stage": (steps - 1) // 40,
                    "train_loss": 7 * np.exp(-steps / 50) + 2.5,
                }
            ).to_parquet(root / run["dir"] / "curves.parquet")
            runs.append(run)
            rows.append(row_from_record(run, rec))
    sha = preregistration_hash(PREREG)
    meta = {
        "name": "synthetic-2x2x2",
        "spec": {"goal": "Separate the contributions of T, W and R to forgetting."},
        "scale": "tiny",
        "design": "full_factorial",
        "factors": FACTORS,
        "reference": "T0W0R0",
        "preregistration": PREREG,
        "preregistration_sha256": sha,
        "preregistered_at": "2026-01-01T10:00:00+00:00",
        "preregistration_changed": prereg_changed,
        "runs": runs,
        "commands": [
            ["forgetlab", "experiment", "run", "experiments/ablation.toml", "--scale", "tiny"]
        ],
        "started": "2026-01-01T10:00:00+00:00",
        "finished": "2026-01-01T12:30:00+00:00",
        "env": {
            "python": "3.11.2",
            "torch": "2.13.0",
            "device": "cpu",
            "git": {"commit": "abc123", "dirty": True},
        },
    }
    if prereg_changed:
        meta["preregistration_sha256_now"] = "f" * 64
    (root / "experiment.json").write_text(json.dumps(meta))
    pd.DataFrame(rows).to_parquet(root / "results.parquet", index=False)
    return root
