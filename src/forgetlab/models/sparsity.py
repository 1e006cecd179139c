"""Fixed structured sparsity on the blocks' linear weights (``model.sparsity``,
the T/W/R ablation's T).

A mask is chosen once, at initialisation, by weight magnitude or at random, and kept for the run:
* ``2:4``: in every group of 4 consecutive weights along the input dimension, 2 are kept
  (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks", NVIDIA's N:M format);
* ``block``: square blocks of ``sparsity_block``, the ``sparsity_density`` share of blocks kept.

The masked dense path is the one used everywhere: the mask is a bool buffer ``weight_mask`` on each
masked ``nn.Linear`` (saved in checkpoints), the weight is zeroed where masked, a gradient hook zeroes
the masked gradient, and :meth:`GPT.after_optimizer_step` re-zeroes the weights. With zero
gradients AdamW's moments stay exactly zero at masked positions and decoupled weight decay keeps a
zero weight zero, so the optimizer state is untouched there. PyTorch's ``to_sparse_semi_structured``
kernel is CUDA-only (sm80+) and reported slower than dense on some H100 setups; it is not used.
Expert tensors of the MoE, the memory bank, embeddings and frozen Q/K are not masked.
"""

from __future__ import annotations

import abc
import functools

import torch
from torch import nn

from forgetlab.config import ConfigError, ModelConfig
from forgetlab.models.registry import PartRegistry

SPARSITY = PartRegistry("sparsity")


def _mask_grad(module: nn.Linear, grad: torch.Tensor) -> torch.Tensor:
    return grad * module.weight_mask


class Sparsity(nn.Module, abc.ABC):
    """Base: masks every ``nn.Linear`` inside ``model.blocks`` (subclasses choose the mask)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.by_magnitude = cfg.sparsity_init == "magnitude"

    @abc.abstractmethod
    def mask(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        """The fixed 0/1 mask of the matrix ``weight`` (named ``name``)."""

    @abc.abstractmethod
    def kept(self, shape: torch.Size) -> int:
        """Weights kept by the mask of a matrix of ``shape`` (for the FLOPs accountant)."""

    def scores(self, weight: torch.Tensor) -> torch.Tensor:
        """What the mask keeps the largest of: |w|, or uniform noise for a random mask."""
        return weight.abs() if self.by_magnitude else torch.rand_like(weight)

    def attach(self, model: nn.Module) -> None:
        for name, module in model.get_submodule("blocks").named_modules():
            if isinstance(module, nn.Linear):
                with torch.no_grad():
                    mask = self.mask(module.weight.detach(), f"blocks.{name}")
                    module.register_buffer("weight_mask", mask)
                    module.weight.mul_(mask)
                module.weight.register_hook(functools.partial(_mask_grad, module))

    @staticmethod
    @torch.no_grad()
    def reapply(model: nn.Module) -> None:
        """Zero the masked weights again (after an optimizer step or a load)."""
        for module in model.modules():
            mask = getattr(module, "weight_mask", None)
            if isinstance(mask, torch.Tensor):
                module.weight.mul_(mask)


@SPARSITY.register("none")
class Dense(Sparsity):
    """No mask: every weight trains."""

    def attach(self, model: nn.Module) -> None:
        return None  # nothing to mask, no hooks: the dense model runs untouched

    def mask(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        return torch.ones_like(weight)

    def kept(self, shape: torch.Size) -> int:
        return shape.numel()


@SPARSITY.register("2:4")
class TwoFour(Sparsity):
    """Keep the 2 largest-score weights of every group of 4 along the input dimension."""

    def mask(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        out, inp = weight.shape
        if inp % 4:
            raise ConfigError(f"model.sparsity = '2:4': {name} has {inp} inputs, not a multiple of 4")
        groups = self.scores(weight).view(out, inp // 4, 4)
        keep = groups.topk(2, dim=-1).indices
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
        return mask.view(out, inp)

    def kept(self, shape: torch.Size) -> int:
        return shape.numel() // 2


@SPARSITY.register("block")
class BlockSparsity(Sparsity):
    """Keep the ``sparsity_density`` share of square blocks with the largest score (block L2 norm
    for magnitude), the rest zero."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.b, self.density = cfg.sparsity_block, cfg.sparsity_density

    def _n_kept(self, blocks: int) -> int:
        return max(1, round(self.density * blocks))

    def mask(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        b, (out, inp) = self.b, weight.shape
        if out % b or inp % b:
            raise ConfigError(
                f"model.sparsity_block = {b} does not divide {name}'s shape {tuple(weight.shape)}"
            )
        s = self.scores(weight).view(out // b, b, inp // b, b).pow(2).sum((1, 3)).flatten()
        keep = torch.zeros_like(s, dtype=torch.bool)
        keep[s.topk(self._n_kept(s.numel())).indices] = True
        grid = keep.view(out // b, inp // b)
        return grid.repeat_interleave(b, 0).repeat_interleave(b, 1)

    def kept(self, shape: torch.Size) -> int:
        return self._n_kept(shape.numel() // self.b**2) * self.b**2
