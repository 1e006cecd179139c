"""Model presets: named shapes that fill every model field a spec does not set.

``micro`` is for tests (seconds), ``tiny`` for the CPU quickstart (sized by the measurements in
docs/sizing.md: 4 layers, 192 wide, context 128, a 2k BPE), ``small`` is the OELM study's model
(docs/qk_freeze.md), ``minimind-26m`` the memory-layer study's baseline (MiniMind2-small,
docs/memory_ffn.md) and ``gpt2-124m`` the T/W/R ablation's backbone (docs/cl_mechanisms.md).
Each preset also names the tokenizer it is meant for; a spec may override either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    name: str
    tokenizer: str
    model: dict[str, Any] = field(default_factory=dict)
    description: str = ""


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "micro",
            "bpe-2k",
            dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
            "tests: trains in seconds",
        ),
        Preset(
            "tiny",
            "bpe-2k",
            dict(n_layer=4, n_head=4, n_embd=192, block_size=128),
            "CPU quickstart: ~2.2M parameters, ~10-20k tokens/s on 2 cores",
        ),
        Preset(
            "small",
            "gpt2",
            dict(n_layer=6, n_head=8, n_embd=512, d_ff=2048, block_size=512),
            "qk_freeze's model: 6 layers, d_model 512, 8 heads, d_ff 2048, context 512",
        ),
        Preset(
            "minimind-26m",
            "bpe-6400",
            dict(
                n_layer=8, n_head=8, n_kv_head=2, n_embd=512, d_ff=1408, block_size=512,
                bias=False, norm="rmsnorm", positions="rope", rope_theta=1e6, ffn="swiglu",
            ),
            "memory_ffn's baseline, MiniMind2-small: RMSNorm, RoPE, SwiGLU, GQA 8/2, ~25.8M",
        ),
        Preset(
            "gpt2-124m",
            "gpt2",
            dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
            "cl_mechanisms' backbone: GPT-2 small",
        ),
    ]
}


def get_preset(name: str) -> Preset:
    from forgetlab.config.errors import ConfigError

    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"model.preset = {name!r} is not a preset; allowed: {sorted(PRESETS)}"
        ) from None
