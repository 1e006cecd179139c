"""Parameter table of a model: per module, trainable / frozen parameters and buffers.

Shows what a mechanism froze or added (frozen Q/K stored as buffers, masks, LoRA adapters).
Each row counts what a module owns directly; a tied weight is counted once, at its first owner.
"frozen" counts the weights the model uses but never trains: parameters without gradient and the
buffers a part declares frozen (``frozen_tensor_names``, e.g. OELM's orthogonal Q/K), so that
total = trainable + frozen is the model's weight count whichever way a part freezes.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def inspect_model(model: nn.Module) -> dict[str, Any]:
    """``{"total", "trainable", "frozen", "buffers", "modules": [{name, trainable, frozen,
    buffers}, ...]}``; total = trainable + frozen, buffers in elements (frozen Q/K buffers appear in both)."""
    seen: set[int] = set()
    rows = []
    for name, module in model.named_modules():
        trainable = frozen = 0
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if p.requires_grad:
                trainable += p.numel()
            else:
                frozen += p.numel()
        names = getattr(module, "frozen_tensor_names", list)()
        frozen += sum(
            b.numel() for n, b in module.named_buffers(recurse=False) if n in names
        )
        buffers = sum(b.numel() for b in module.buffers(recurse=False))
        if trainable or frozen or buffers:
            row = {"name": name or "(root)", "trainable": trainable, "frozen": frozen}
            rows.append({**row, "buffers": buffers})
    trainable = sum(r["trainable"] for r in rows)
    frozen = sum(r["frozen"] for r in rows)
    return {
        "total": trainable + frozen,
        "trainable": trainable,
        "frozen": frozen,
        "buffers": sum(r["buffers"] for r in rows),
        "modules": rows,
    }
