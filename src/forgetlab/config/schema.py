"""Typed, validated run configuration: the one place where a spec's keys and types are defined.

A run is described by :class:`RunConfig`. It is validated once, at the edge (spec file, ``--set``
overrides, presets), and the core receives valid objects. Unknown keys are refused (``extra =
"forbid"``) so that a typo in a spec fails before any work instead of silently doing nothing.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

STREAM_DOMAINS: tuple[str, ...] = ("code", "math", "medical", "legal", "dialogue")
"""Document 000's domain stream, in its order."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ModelConfig(_Strict):
    """Shape and parts of the GPT. ``preset`` fills every field not given explicitly.

    Parts are chosen by name (``attention``, ``ffn``, ``norm``, ``positions``) so that variants are
    config switches on the same model class, never forked models.
    """

    preset: str | None = None
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_kv_head: int | None = Field(None, ge=1, description="grouped-query attention; None = n_head")
    n_embd: int = Field(192, ge=1)
    d_ff: int | None = Field(None, ge=1, description="FFN hidden width; None = 4 * n_embd")
    block_size: int = Field(128, ge=2, description="context length in tokens")
    vocab_size: int | None = Field(None, ge=2, description="None = the tokenizer's vocabulary")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bias: bool = True
    tie_embeddings: bool = True
    attention: Literal["standard"] = "standard"
    ffn: Literal["mlp"] = "mlp"
    norm: Literal["layernorm"] = "layernorm"
    positions: Literal["learned"] = "learned"
    norm_eps: float = Field(1e-5, gt=0)
    activation: Literal["gelu", "gelu_tanh"] = Field(
        "gelu",
        description="MLP activation: exact GELU (nanoGPT) or its tanh approximation (GPT-2's "
        "'gelu_new', set by Hugging Face imports so their logits match)",
    )

    @model_validator(mode="after")
    def _check_shape(self) -> ModelConfig:
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"model.n_embd = {self.n_embd} is not divisible by model.n_head = {self.n_head}; "
                f"allowed n_head values for this width: {_divisors(self.n_embd)}"
            )
        if self.n_kv_head is not None and self.n_head % self.n_kv_head != 0:
            raise ValueError(
                f"model.n_kv_head = {self.n_kv_head} does not divide model.n_head = {self.n_head}; "
                f"allowed: {_divisors(self.n_head)}"
            )
        return self

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def ffn_hidden(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.n_embd


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


class SourceConfig(_Strict):
    """A user domain: local text files or a Hugging Face ``datasets`` name (or a saved dataset dir).

    Given under ``[data.sources.NAME]``; a built-in domain name (code, math, ...) needs no source.
    """

    files: list[str] | None = Field(None, description="globs of .txt / .jsonl files")
    text_field: str = Field("text", description="field holding the text in .jsonl / datasets rows")
    hf_dataset: str | None = Field(None, description="datasets name, or a save_to_disk directory")
    hf_config: str | None = None
    hf_split: str = "train"
    val_fraction: float | None = Field(
        None, gt=0, lt=1, description="share of documents held out for validation; None = 0.05"
    )

    @model_validator(mode="after")
    def _one_source(self) -> SourceConfig:
        if (self.files is None) == (self.hf_dataset is None):
            raise ValueError("a data source needs exactly one of 'files' or 'hf_dataset'")
        return self


class DataConfig(_Strict):
    """Which domains, in which order, read through which tokenizer."""

    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    domains: list[str] = Field(default_factory=lambda: list(STREAM_DOMAINS), min_length=1)
    tokenizer: str | None = Field(None, description="None = the model preset's tokenizer")
    cache_dir: str | None = Field(None, description="None = $FORGETLAB_DATA or ~/.cache/forgetlab")
    val_batches: int = Field(16, ge=1, description="fixed validation batches per domain")
    eval_batch_size: int = Field(64, ge=1, description="sequences per evaluation forward pass")

    @model_validator(mode="after")
    def _unique_domains(self) -> DataConfig:
        seen = [d for d in self.domains if self.domains.count(d) > 1]
        if seen:
            raise ValueError(f"data.domains = {self.domains} lists {sorted(set(seen))} twice")
        return self


class TrainConfig(_Strict):
    """Optimiser, schedule, precision and the per-stage budget (in optimizer steps)."""

    steps_per_stage: int = Field(60, ge=1)
    batch_size: int = Field(16, ge=1, description="sequences per micro-batch")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(20, ge=0)
    rewarm: bool = Field(True, description="restart warmup + cosine at every stage")
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    eval_every: int = Field(0, ge=0, description="in-stage evaluation of the new domain; 0 = off")
    checkpoint_every: int = Field(0, ge=0, description="0 = only at stage ends")
    log_every: int = Field(10, ge=1)
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None = torch default")

    @model_validator(mode="after")
    def _check_lr(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"train.min_lr = {self.min_lr} is above train.lr = {self.lr}")
        return self


class MechanismConfig(BaseModel):
    """One ``[[mechanisms]]`` entry: a registered name plus its knobs (validated by the registry)."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def knobs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RunConfig(_Strict):
    """One fully resolved run."""

    name: str = "run"
    seed: int = 0
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    mechanisms: list[MechanismConfig] = Field(default_factory=list)
