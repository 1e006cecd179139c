"""Device and precision choice: the fastest correct settings for the hardware at hand.

``precision = "auto"`` means bf16 autocast where the hardware computes bf16 natively (CUDA with
bf16 support, or a CPU with AVX512-BF16 / AMX), fp32 elsewhere. Autocast keeps weights and the
optimizer in fp32; only matmuls run in bf16.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch

from forgetlab.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; an unavailable CUDA request is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"device = {name!r} is not a device; allowed: auto, cpu, cuda, cuda:N"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device = {name!r} but CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device = {name!r}: only cpu and cuda are supported")
    return dev


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises AVX512-BF16 or AMX-BF16 (then oneDNN runs bf16 matmuls fast)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """Map ``auto`` to ``bf16`` or ``fp32`` for this device; refuse bf16 where it cannot run."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision = 'bf16' but this GPU has no bf16 support; use fp32")
    return precision


def autocast_factory(device: torch.device, precision: str) -> Callable[[], Any]:
    """A zero-argument callable returning a fresh autocast context (or a null one for fp32)."""
    if precision == "bf16":
        return functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock phase timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
