"""The GPT with pluggable parts, its checkpoints (forgetlab, nanoGPT, Hugging Face GPT-2),
parameter inspection and per-token FLOPs."""

from forgetlab.models.attention import ATTENTION
from forgetlab.models.checkpoint import load_model, save_model
from forgetlab.models.errors import ModelExportError, ModelLoadError
from forgetlab.models.ffn import FFN
from forgetlab.models.flops import model_flops_per_token
from forgetlab.models.gpt import GPT, Block, build_model
from forgetlab.models.hf_gpt2 import export_hf, load_hf_gpt2
from forgetlab.models.inspection import inspect_model
from forgetlab.models.nanogpt import load_nanogpt
from forgetlab.models.norms import NORM
from forgetlab.models.positions import POSITIONS
from forgetlab.models.pretrained import convert, from_pretrained

__all__ = [
    "ATTENTION",
    "FFN",
    "GPT",
    "NORM",
    "POSITIONS",
    "Block",
    "ModelExportError",
    "ModelLoadError",
    "build_model",
    "convert",
    "export_hf",
    "from_pretrained",
    "inspect_model",
    "load_hf_gpt2",
    "load_model",
    "load_nanogpt",
    "model_flops_per_token",
    "save_model",
]
