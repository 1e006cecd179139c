"""forgetlab's own checkpoint: one ``.safetensors`` file, the ``ModelConfig`` as JSON metadata.

safetensors rather than pickles: loading runs no code and is memory-mapped. A tied LM head is
stored once (safetensors refuses shared tensors, and the weight is the token embedding anyway).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from forgetlab.config import ModelConfig
from forgetlab.models.errors import ModelLoadError
from forgetlab.models.gpt import GPT

FORMAT = "forgetlab.gpt/1"
_FORMAT_KEY = "format"
_CONFIG_KEY = "forgetlab_model_config"
_TIED_KEY = "lm_head.weight"


def state_dict_to_save(model: GPT) -> dict[str, torch.Tensor]:
    """The model's state dict as plain contiguous tensors, a tied head left out."""
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop(_TIED_KEY, None)
    return {k: v.detach().contiguous() for k, v in state.items()}


def save_model(model: GPT, path: str | Path) -> Path:
    """Write ``model`` to ``path`` atomically (temp file in the same directory, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    metadata = {_FORMAT_KEY: FORMAT, _CONFIG_KEY: model.config.model_dump_json()}
    try:
        save_file(state_dict_to_save(model), str(tmp), metadata=metadata)
        _sort_metadata(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _sort_metadata(path: Path) -> None:
    """Rewrite the header of a safetensors file with its metadata keys sorted, in place.

    safetensors writes the metadata map in hash order, which differs between processes, so two
    saves of the same weights differed in their first bytes. The sorted header holds the same
    keys and values, so it has the same length (padding absorbs any difference) and the tensor
    data after it is untouched: identical weights now give identical files.
    """
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        raw = f.read(n)
        header = json.loads(raw)
        meta = header.pop("__metadata__", None)
        if meta is not None:
            header = {"__metadata__": dict(sorted(meta.items())), **header}
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > n:  # cannot happen for a reordering; keep the valid file as written
            return
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


def read_metadata(path: Path) -> dict[str, str]:
    """The safetensors header metadata of ``path`` ({} when there is none)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(f"{str(path)!r} is not a readable safetensors file: {e}") from None


def is_forgetlab_checkpoint(path: Path) -> bool:
    return path.is_file() and read_metadata(path).get(_FORMAT_KEY) == FORMAT


def load_state_into(model: GPT, state: dict[str, torch.Tensor], source: str) -> GPT:
    """Load ``state`` into ``model``: every key must fit, only a tied head may be missing."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed_missing = {_TIED_KEY} if model.config.tie_embeddings else set()
    missing = [k for k in missing if k not in allowed_missing]
    if missing or unexpected:
        raise ModelLoadError(
            f"{source}: weights do not fit the model config; missing {missing}, "
            f"unexpected {unexpected}"
        )
    return model


def read_model_config(path: str | Path) -> ModelConfig:
    """The ``ModelConfig`` stored in a checkpoint's header, without reading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{str(path)!r} does not exist or is not a file")
    metadata = read_metadata(path)
    if metadata.get(_FORMAT_KEY) != FORMAT or _CONFIG_KEY not in metadata:
        raise ModelLoadError(
            f"{str(path)!r} is a safetensors file but not a forgetlab checkpoint "
            f"(no {_FORMAT_KEY}={FORMAT!r} metadata)"
        )
    try:
        return ModelConfig.model_validate(json.loads(metadata[_CONFIG_KEY]))
    except (ValidationError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{str(path)!r}: stored model config is invalid: {e}") from None


def load_model(path: str | Path) -> GPT:
    """Read a checkpoint written by :func:`save_model`; the model is returned in eval mode."""
    path = Path(path)
    model = GPT(read_model_config(path))
    return load_state_into(model, load_file(str(path)), repr(str(path))).eval()


def declared_frozen(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Tensors the model's parts promise never change (``frozen_tensor_names``), by full name."""
    out = {}
    for prefix, module in model.named_modules():
        for name in getattr(module, "frozen_tensor_names", list)():
            out[f"{prefix}.{name}" if prefix else name] = getattr(module, name)
    return out


def refuse_frozen_overwrite(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: str
) -> None:
    """Raise :class:`ModelLoadError` naming every frozen tensor that ``state`` would change.

    The OELM failure (docs/qk_freeze.md): a checkpoint loaded into an OELM model silently
    replaced its frozen orthogonal Q/K. Call before ``load_state_dict`` when the model's frozen
    tensors are the truth.
    """
    changed = [
        name
        for name, tensor in declared_frozen(model).items()
        if name in state and not torch.equal(state[name].to(tensor.device), tensor)
    ]
    if changed:
        raise ModelLoadError(f"{source}: would overwrite frozen tensors {changed}; refused")
