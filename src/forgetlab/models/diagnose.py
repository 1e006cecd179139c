"""``forgetlab diagnose``: prove that what should be frozen is frozen (docs/qk_freeze.md, phase 1).

An earlier OELM run reported "freezing not enabled" without saying why: the frozen Q/K could
have been a parameter, been changed by the optimizer, or been overwritten at checkpoint load. The
checks here name the tensor at fault for each of those:

* structure: every tensor a part declares frozen (``frozen_tensor_names``) is a buffer, and frozen
  orthogonal Q/K are still orthogonal (a checkpoint that overwrote them is caught here);
* one optimizer step: frozen tensors (buffers, parameters without grad) are bit-identical after it
  and none is in the optimizer, every trainable parameter changed, sparsity masks still hold;
* checkpoint round trip: save + load gives every tensor back bit for bit, and a checkpoint that
  would overwrite a frozen tensor is refused (:func:`refuse_frozen_overwrite`).

The data and the optimizer come from the caller (the CLI uses the trainer's own optimizer), so the
model layer stays independent of ``train`` and ``data``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from forgetlab.models.checkpoint import (
    declared_frozen,
    load_model,
    refuse_frozen_overwrite,
    save_model,
)
from forgetlab.models.errors import ModelLoadError
from forgetlab.models.gpt import GPT
from forgetlab.models.inspection import inspect_model

ORTHOGONAL_TOL = 1e-4

Violation = dict[str, str]


def _violation(tensor: str, problem: str) -> Violation:
    return {"tensor": tensor, "problem": problem}


def tensor_rows(model: GPT) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every parameter (name, shape, requires_grad) and every buffer (name, shape, dtype)."""
    params = [
        {"name": n, "shape": list(p.shape), "requires_grad": p.requires_grad, "numel": p.numel()}
        for n, p in model.named_parameters()
    ]
    buffers = [
        {"name": n, "shape": list(b.shape), "dtype": str(b.dtype).removeprefix("torch.")}
        for n, b in model.named_buffers()
    ]
    return params, buffers


def check_structure(model: GPT) -> list[Violation]:
    out = []
    params = dict(model.named_parameters())
    for name in declared_frozen(model):
        if name in params:
            grad = params[name].requires_grad
            out.append(_violation(name, f"declared frozen but is a parameter (requires_grad={grad})"))
    for prefix, module in model.named_modules():
        blocks = getattr(module, "orthogonal_blocks", {})
        for name in getattr(module, "frozen_tensor_names", list)():
            w = getattr(module, name).detach().float()
            rows = w.view(blocks[name], -1, w.size(1))
            gram = rows @ rows.transpose(1, 2)
            err = float((gram - torch.eye(gram.size(-1), device=w.device)).abs().max())
            if err > ORTHOGONAL_TOL:
                out.append(_violation(f"{prefix}.{name}", f"frozen orthogonal tensor is not "
                                      f"orthogonal: max |W W^T - I| = {err:.3g}"))
    return out


def check_step(
    model: GPT,
    x: torch.Tensor,
    y: torch.Tensor,
    make_optimizer: Callable[[GPT], torch.optim.Optimizer],
) -> list[Violation]:
    """One optimizer step on (x, y); the model's tensors are restored afterwards."""
    before = {n: t.detach().clone() for n, t in [*model.named_parameters(),
                                                  *model.named_buffers()]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = set(before) - trainable
    optimizer = make_optimizer(model)
    seen = {id(p) for g in optimizer.param_groups for p in g["params"]}
    tensors = dict([*model.named_parameters(), *model.named_buffers()])
    out = [_violation(n, "frozen but handed to the optimizer") for n in sorted(frozen)
           if id(tensors[n]) in seen]
    was_training = model.training
    model.train()
    logits = model(x)
    loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    loss = loss + sum(model.aux_losses().values(), torch.zeros((), device=loss.device))
    loss.backward()
    optimizer.step()
    model.after_optimizer_step()
    after = dict([*model.named_parameters(), *model.named_buffers()])
    for name in sorted(frozen):
        if not torch.equal(after[name].detach(), before[name]):
            out.append(_violation(name, "frozen tensor changed by one optimizer step"))
    for name in sorted(trainable):
        if torch.equal(after[name].detach(), before[name]):
            out.append(_violation(name, "trainable but unchanged by one optimizer step "
                                  "(no gradient reached it)"))
    for prefix, module in model.named_modules():
        mask = getattr(module, "weight_mask", None)
        if isinstance(mask, torch.Tensor) and bool(module.weight[~mask].any()):
            out.append(_violation(f"{prefix}.weight", "non-zero where its sparsity mask is 0"))
    with torch.no_grad():
        for name, tensor in after.items():
            tensor.copy_(before[name])
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return out


def check_round_trip(model: GPT) -> list[Violation]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = save_model(model, Path(tmp) / "model.safetensors")
        loaded = load_model(path).state_dict()
    for name, tensor in model.state_dict().items():
        if name in loaded and not torch.equal(loaded[name], tensor.detach().cpu()):
            out.append(_violation(name, "changed by a checkpoint save/load round trip"))
    for name, tensor in declared_frozen(model).items():
        tampered = {**loaded, name: tensor.detach().cpu() + 1.0}
        try:
            refuse_frozen_overwrite(model, tampered, "diagnose")
        except ModelLoadError:
            continue
        out.append(_violation(name, "a checkpoint overwriting this frozen tensor was accepted"))
    return out


def diagnose(
    model: GPT,
    x: torch.Tensor,
    y: torch.Tensor,
    make_optimizer: Callable[[GPT], torch.optim.Optimizer],
) -> dict[str, Any]:
    """The full report: tensors, totals, ``violations`` and ``ok``."""
    params, buffers = tensor_rows(model)
    totals = inspect_model(model)
    violations = check_structure(model) + check_step(model, x, y, make_optimizer)
    violations += check_round_trip(model)
    return {
        "total": totals["total"],
        "trainable": totals["trainable"],
        "frozen": totals["frozen"],
        "buffer_elements": totals["buffers"],
        "parameters": params,
        "buffers": buffers,
        "ok": not violations,
        "violations": violations,
    }
