"""Several devices per run through torchrun: data-parallel training with DistributedDataParallel.

Launched as ``torchrun --nproc_per_node N -m forgetlab.cli.main run SPEC``, every process trains
the same model on its slice of a global batch. The global batch is drawn by every rank from the
same seeded generator and sliced by rank, so all ranks hold identical RNG state and rank 0's
checkpoint resumes the whole group; N ranks with micro-batch B compute the same gradient as one
process with micro-batch N x B (up to reduction order). Only rank 0 writes the run directory.
Evaluation is repeated on every rank (identical numbers, no gather needed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes in the environment (no-op for a single process).

    On CUDA each rank takes the GPU of its local rank (NCCL); on the CPU ranks use gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank), device


def shutdown_distributed(info: DistInfo, finished: bool = True) -> None:
    """Leave the process group: after a barrier when this rank ``finished`` (every rank ends
    together), without one when it failed. A failed rank's barrier would meet the other ranks'
    next gradient all-reduce, and gloo would wait for it to its timeout (30 min); leaving at once
    ends this process, and torchrun then stops the others."""
    if info.enabled and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


class DataParallel:
    """Under torchrun, the module the training step calls: the model in DDP for the parameters
    that train now (one process: the model itself).

    DDP's reducer fixes its parameter set when it is built and waits for a gradient of each in
    every backward; a mechanism that freezes weights mid-run (latent_replay's lower blocks, lora's
    base) would leave it waiting. So :meth:`wrap` re-wraps whenever the set of trainable
    parameters changed, and trains without DDP when nothing in the model trains (a mechanism that
    owns the trainable tensors, like lora's adapters, all-reduces them itself)."""

    def __init__(self, info: DistInfo, device: torch.device, compiled: torch.nn.Module) -> None:
        """``compiled`` is the model (through ``torch.compile`` when the run asks for it)."""
        self.info, self.device, self.compiled = info, device, compiled
        self.trainable: tuple[bool, ...] | None = None  # requires_grad the wrap was built for
        self.module = compiled

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to train ``model`` through now."""
        trainable = tuple(p.requires_grad for p in model.parameters())
        if self.info.enabled and trainable != self.trainable:
            self.trainable = trainable
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.module = (
                DistributedDataParallel(self.compiled, device_ids=ids)
                if any(trainable) else self.compiled
            )
        return self.module
