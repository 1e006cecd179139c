"""FLOPs accounting and model FLOPs utilisation (MFU).

Per-token training FLOPs come from the model shape (``forgetlab.models.model_flops_per_token``:
6N + 12·L·H·Q·T, nanoGPT's ``estimate_mfu`` after PaLM appendix B); evaluation counts forward
FLOPs only; mechanisms report their own extra compute. MFU divides achieved FLOP/s by a peak:
on CUDA a table of published dense peaks, on the CPU a matmul peak measured on this machine
(``forgetlab bench peak``), because CPU peaks vary with the instruction set and the BLAS path.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from forgetlab.mechanisms import Mechanism, TrainContext

# Dense bf16 tensor-core peaks in FLOP/s from the vendors' data sheets (no sparsity).
GPU_PEAK_BF16: dict[str, float] = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 80GB HBM3": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
}
# fp32 without TF32 (CUDA cores); with TF32 enabled matmuls reach more, MFU is then conservative.
GPU_PEAK_FP32: dict[str, float] = {
    "H200": 67e12,
    "H100": 67e12,
    "A100": 19.5e12,
    "L40S": 91.6e12,
    "A10G": 31.2e12,
    "L4": 30.3e12,
    "RTX 4090": 82.6e12,
}


def gpu_peak(device_name: str, precision: str) -> float | None:
    """Published peak for a GPU name (first table key contained in the name), or None."""
    table = GPU_PEAK_BF16 if precision == "bf16" else GPU_PEAK_FP32
    for key, value in table.items():
        if key in device_name:
            return value
    return None


def measure_matmul_peak(
    device: torch.device, precision: str, size: int = 1024, seconds: float = 0.5
) -> float:
    """Best sustained FLOP/s of square matmuls in this process (the CPU's practical peak)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    flop = 2.0 * size**3
    for _ in range(2):  # warm-up: thread pools, kernel selection
        torch.mm(a, b)
    rates: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rates) < 3:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(flop / (time.perf_counter() - t0))
    # upper quartile: the peak the hardware sustains, robust to one lucky or unlucky call
    return statistics.quantiles(rates, n=4)[2] if len(rates) >= 4 else max(rates)


def _peak_cache_file() -> Path:
    from forgetlab.data import data_root

    return data_root() / "peak.json"


def _cpu_key(precision: str) -> str:
    model = "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model
            )
    except OSError:
        pass
    return f"{model}|threads={torch.get_num_threads()}|{precision}"


def save_cpu_peak(precision: str, flops_per_s: float) -> None:
    path = _peak_cache_file()
    data = json.loads(path.read_text()) if path.exists() else {}
    data[_cpu_key(precision)] = flops_per_s
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def peak_flops(device: torch.device, precision: str) -> tuple[float | None, str]:
    """The peak MFU is measured against, and where it came from."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return gpu_peak(name, precision), f"table:{name}"
    path = _peak_cache_file()
    if path.exists():
        value = json.loads(path.read_text()).get(_cpu_key(precision))
        if value:
            return float(value), "bench peak"
    return measure_matmul_peak(device, precision, seconds=0.3), "measured at run start"


def mechanism_flops(mechanisms: Iterable[Mechanism], ctx: TrainContext) -> float:
    """What the mechanisms' FLOP meters read now: their compute beyond the trainer's own steps
    (a stage's share is the difference between its end and its start)."""
    return float(sum(m.flops(ctx) for m in mechanisms))


@dataclass
class FlopsAccount:
    """Running FLOPs totals of one run, per stage and overall, split by what spent them."""

    train_per_token: float
    eval_per_token: float
    stages: list[dict[str, float]] = field(default_factory=list)

    def _stage(self, stage: int) -> dict[str, float]:
        while len(self.stages) <= stage:
            self.stages.append(
                {
                    "train": 0.0,
                    "eval": 0.0,
                    "extra_steps": 0.0,
                    "mechanisms": 0.0,
                    "train_tokens": 0.0,
                }
            )
        return self.stages[stage]

    def add_train(self, stage: int, tokens: int) -> None:
        s = self._stage(stage)
        s["train"] += self.train_per_token * tokens
        s["train_tokens"] += tokens

    def add_eval(self, stage: int, tokens: int) -> None:
        self._stage(stage)["eval"] += self.eval_per_token * tokens

    def add_extra(self, stage: int, tokens: int) -> None:
        """Optimizer steps a mechanism asked for (sleep phases): training FLOPs on its behalf."""
        self._stage(stage)["extra_steps"] += self.train_per_token * tokens

    def set_mechanisms(self, stage: int, flops: float) -> None:
        self._stage(stage)["mechanisms"] = flops

    def totals(self) -> dict[str, float]:
        keys = ("train", "eval", "extra_steps", "mechanisms", "train_tokens")
        out = {k: sum(s[k] for s in self.stages) for k in keys}
        out["training_total"] = out["train"] + out["extra_steps"] + out["mechanisms"]
        return out

    def state_dict(self) -> list[dict[str, float]]:
        return self.stages

    def load_state_dict(self, stages: list[dict[str, float]]) -> None:
        self.stages = stages

    def to_dict(self) -> dict[str, object]:
        return {
            "train_per_token": self.train_per_token,
            "eval_per_token": self.eval_per_token,
            "per_stage": self.stages,
            "total": self.totals(),
        }
