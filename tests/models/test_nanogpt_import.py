"""nanoGPT ``ckpt.pt`` import against an independent reference forward written with plain ops.

The checkpoint's weights are random tensors under nanoGPT's names (not produced by our GPT), and
the reference below re-derives nanoGPT's forward from its ``model.py``: pre-LayerNorm blocks,
fused q/k/v, causal softmax attention, exact GELU MLP, tied head.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from forgetlab.models import from_pretrained

ARGS = dict(n_layer=2, n_head=4, n_embd=32, block_size=24, bias=True, vocab_size=112, dropout=0.0)


def nanogpt_state(args: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    C, V, T = args["n_embd"], args["vocab_size"], args["block_size"]

    def r(*shape: int, scale: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    sd = {"transformer.wte.weight": r(V, C, scale=0.2), "transformer.wpe.weight": r(T, C)}
    for i in range(args["n_layer"]):
        p = f"transformer.h.{i}."
        sd |= {
            p + "ln_1.weight": 1 + r(C), p + "ln_1.bias": r(C),
            p + "attn.c_attn.weight": r(3 * C, C, scale=0.1), p + "attn.c_attn.bias": r(3 * C),
            p + "attn.c_proj.weight": r(C, C, scale=0.1), p + "attn.c_proj.bias": r(C),
            p + "ln_2.weight": 1 + r(C), p + "ln_2.bias": r(C),
            p + "mlp.c_fc.weight": r(4 * C, C, scale=0.1), p + "mlp.c_fc.bias": r(4 * C),
            p + "mlp.c_proj.weight": r(C, 4 * C, scale=0.1), p + "mlp.c_proj.bias": r(C),
            p + "attn.bias": torch.tril(torch.ones(T, T)).view(1, 1, T, T),  # old nanoGPT buffer
        }  # fmt: skip
    sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"] = 1 + r(C), r(C)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd


def reference_forward(sd: dict[str, torch.Tensor], args: dict, idx: torch.Tensor) -> torch.Tensor:
    C, H, (B, T) = args["n_embd"], args["n_head"], idx.shape

    def ln(x: torch.Tensor, name: str) -> torch.Tensor:
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5) * sd[name + ".weight"] + sd[name + ".bias"]

    def lin(x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ sd[name + ".weight"].T + sd[name + ".bias"]

    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(args["n_layer"]):
        p = f"transformer.h.{i}."
        q, k, v = lin(ln(x, p + "ln_1"), p + "attn.c_attn").split(C, dim=2)
        q, k, v = (t.reshape(B, T, H, C // H).permute(0, 2, 1, 3) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).permute(0, 2, 1, 3).reshape(B, T, C)
        x = x + lin(y, p + "attn.c_proj")
        h = lin(ln(x, p + "ln_2"), p + "mlp.c_fc")
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU, nanoGPT's nn.GELU()
        x = x + lin(h, p + "mlp.c_proj")
    return ln(x, "transformer.ln_f") @ sd["lm_head.weight"].T


def max_abs_diff_after_import(tmp_path: Path) -> float:
    sd = nanogpt_state(ARGS)
    compiled = {"_orig_mod." + k: v for k, v in sd.items()}  # saved from a torch.compile'd model
    ckpt = {"model_args": ARGS, "model": compiled, "iter_num": 5, "best_val_loss": 3.0}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    model = from_pretrained(tmp_path / "ckpt.pt")
    assert model.config.vocab_size == ARGS["vocab_size"]
    assert model.config.block_size == ARGS["block_size"]
    assert from_pretrained(tmp_path).config == model.config  # nanoGPT out_dir form
    idx = torch.randint(0, ARGS["vocab_size"], (3, ARGS["block_size"]))
    with torch.no_grad():
        return (model(idx) - reference_forward(sd, ARGS, idx)).abs().max().item()


def test_nanogpt_checkpoint_gives_the_reference_logits(tmp_path: Path) -> None:
    assert max_abs_diff_after_import(tmp_path) < 1e-5
