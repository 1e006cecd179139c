"""Training-speed benchmark through the trainer's own step (so its overhead shows), with MFU
against a matmul peak measured in the same process (the machine drifts 10-25% within minutes)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from forgetlab.analysis.curves import mfu
from forgetlab.config import RunConfig
from forgetlab.train.device import synchronize
from forgetlab.train.env import peak_memory_bytes
from forgetlab.train.flops import measure_matmul_peak
from forgetlab.train.trainer import Trainer


def bench_train(cfg: RunConfig, steps: int = 10, warmup: int = 3) -> dict[str, Any]:
    """Median time of ``steps`` optimizer steps after ``warmup`` (compile, allocator, caches)."""
    cfg = cfg.model_copy(update={"base_model": None})  # speed does not depend on the start weights
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "bench", progress=False)
        trainer._setup()
        trainer.ctx.stage = 0
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)
        for _ in range(warmup):
            trainer.steps.train_step(0)
        times = []
        for _ in range(steps):
            synchronize(trainer.device)
            t0 = time.perf_counter()
            trainer.steps.train_step(0)
            synchronize(trainer.device)
            times.append(time.perf_counter() - t0)
        peak = measure_matmul_peak(trainer.device, trainer.precision, seconds=1.0)
        if trainer.device.type == "cuda":
            from forgetlab.train.flops import gpu_peak

            peak = gpu_peak(torch.cuda.get_device_name(trainer.device), trainer.precision) or peak
        tokens = cfg.train.batch_size * cfg.train.grad_accum * trainer.model_cfg.block_size
        median = statistics.median(times)
        flops_per_s = trainer.flops.train_per_token * tokens / median
        return {
            "preset": cfg.model.preset,
            "device": str(trainer.device),
            "precision": trainer.precision,
            "compile": cfg.train.compile,
            "threads": torch.get_num_threads(),
            "parameters": trainer.model.num_params(),
            "tokens_per_step": tokens,
            "steps": steps,
            "ms_per_step_median": median * 1e3,
            "ms_per_step_min": min(times) * 1e3,
            "tokens_per_s": tokens / median,
            "train_flops_per_token": trainer.flops.train_per_token,
            "achieved_flops_per_s": flops_per_s,
            "peak_flops_per_s": peak,
            "mfu": mfu(flops_per_s, peak),
            "peak_memory": peak_memory_bytes(trainer.device),
        }
