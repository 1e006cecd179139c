"""One entry point for every model a researcher may already have: :func:`from_pretrained`.

Accepted forms, tried in this order:

1. a forgetlab checkpoint (``.safetensors`` with forgetlab metadata);
2. a forgetlab run directory (``RUN/checkpoints/latest/model.safetensors`` or
   ``RUN/model.safetensors``);
3. a Hugging Face GPT-2 directory (``config.json`` + weights);
4. a nanoGPT ``ckpt.pt`` file, or a nanoGPT ``out_dir`` holding one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from forgetlab.models.checkpoint import is_forgetlab_checkpoint, load_model, save_model
from forgetlab.models.errors import ModelExportError, ModelLoadError
from forgetlab.models.gpt import GPT
from forgetlab.models.hf_gpt2 import export_hf, is_hf_gpt2_dir, load_hf_gpt2
from forgetlab.models.hf_run import export_run, is_run_dir, load_export_tokenizer
from forgetlab.models.nanogpt import is_nanogpt_checkpoint, model_from_nanogpt, read_torch_file

RUN_DIR_CHECKPOINTS = ("checkpoints/latest/model.safetensors", "model.safetensors")
ACCEPTED_FORMS = (
    "a forgetlab .safetensors checkpoint; a forgetlab run directory (with "
    "checkpoints/latest/model.safetensors or model.safetensors); a nanoGPT ckpt.pt (or its "
    "out_dir); a Hugging Face GPT-2 directory (config.json + model.safetensors or "
    "pytorch_model.bin)"
)


def _unrecognised(path: Path, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"cannot load a model from {str(path)!r}: {why}; accepted: {ACCEPTED_FORMS}"
    )


def _load_file(path: Path) -> GPT:
    if path.suffix == ".safetensors":
        if is_forgetlab_checkpoint(path):
            return load_model(path)
        if is_hf_gpt2_dir(path.parent):
            return load_hf_gpt2(path.parent)
        raise _unrecognised(path, "a safetensors file without forgetlab metadata or HF config.json")
    if path.name == "pytorch_model.bin" and is_hf_gpt2_dir(path.parent):
        return load_hf_gpt2(path.parent)
    obj = read_torch_file(path)
    if is_nanogpt_checkpoint(obj):
        return model_from_nanogpt(obj, repr(str(path)))
    raise _unrecognised(path, "a torch file without nanoGPT's 'model_args' and 'model'")


def _load_dir(path: Path) -> GPT:
    for rel in RUN_DIR_CHECKPOINTS:
        if is_forgetlab_checkpoint(path / rel):
            return load_model(path / rel)
    if is_hf_gpt2_dir(path):
        return load_hf_gpt2(path)
    if (path / "ckpt.pt").is_file():
        return _load_file(path / "ckpt.pt")
    raise _unrecognised(path, "a directory holding none of these")


def from_pretrained(path: str | Path) -> GPT:
    """Load a model from any accepted form (see module docstring), in eval mode on the CPU."""
    path = Path(path)
    if path.is_file():
        return _load_file(path)
    if path.is_dir():
        return _load_dir(path)
    raise _unrecognised(path, "no such file or directory")


def convert(
    src: str | Path,
    dst: str | Path,
    to: Literal["forgetlab", "hf"] = "forgetlab",
    tokenizer: str | None = None,
    cache_dir: str | None = None,
) -> Path:
    """Load ``src`` (any accepted form) and write it as a forgetlab checkpoint or HF directory.

    For ``to="forgetlab"`` a ``dst`` not ending in ``.safetensors`` is taken as a directory and
    the file is ``dst/model.safetensors`` (which :func:`from_pretrained` finds again).
    For ``to="hf"`` a forgetlab run directory exports itself: its final checkpoint, the tokenizer
    it trained with and a model card (:func:`forgetlab.models.hf_run.export_run`); any other
    source gets the tokenizer files of ``tokenizer`` (a name, from the data cache ``cache_dir``).
    """
    dst = Path(dst)
    if to == "hf" and is_run_dir(Path(src)):
        return export_run(src, dst, cache_dir, tokenizer)
    if to != "hf" and (tokenizer is not None or cache_dir is not None):
        raise ModelExportError("a tokenizer (and its cache dir) is exported with --to hf only")
    model = from_pretrained(src)
    if to == "hf":
        if tokenizer is None:
            return export_hf(model, dst)
        return export_hf(model, dst, load_export_tokenizer(tokenizer, cache_dir, repr(str(src))))
    if to == "forgetlab":
        return save_model(model, dst if dst.suffix == ".safetensors" else dst / "model.safetensors")
    raise ValueError(f"to = {to!r}; allowed: ['forgetlab', 'hf']")
