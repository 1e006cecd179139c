"""Typed, validated run configuration: the one place where a spec's keys and types are defined.

A run is described by :class:`RunConfig`. It is validated once, at the edge (spec file, ``--set``
overrides, presets), and the core receives valid objects. Unknown keys are refused (``extra =
"forbid"``) so that a typo in a spec fails before any work instead of silently doing nothing.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

STREAM_DOMAINS: tuple[str, ...] = ("code", "math", "medical", "legal", "dialogue")
"""The T/W/R ablation's domain stream, in its order (docs/cl_mechanisms.md)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class MoEConfig(_Strict):
    """Knobs of ``model.ffn = "moe"`` (Shazeer 2017; Fedus 2021 Switch; Zoph 2022 ST-MoE)."""

    num_experts: int = Field(8, ge=1, description="E experts per MoE layer")
    top_k: Literal[1, 2] = 2
    capacity_factor: float = Field(
        1.25, ge=0, description="slots per expert = factor * k * tokens / E (training); 0 = no cap"
    )
    overflow: Literal["drop", "reroute"] = Field(
        "drop", description="an assignment over capacity is dropped or sent to the next choice"
    )
    every_n: int = Field(1, ge=1, description="MoE in layers n-1, 2n-1, ...; the others dense")
    noisy: bool = Field(True, description="noisy top-k gating in training (Shazeer 2017)")
    expert: Literal["mlp", "swiglu"] = "mlp"
    balance_loss: Literal["switch", "cv2"] = "switch"
    balance_coef: float = Field(0.01, ge=0)
    z_loss_coef: float = Field(1e-3, ge=0)
    added_experts: list[int] = Field(
        default_factory=list,
        description="expert blocks appended by Lifelong-MoE (one per later stage); set by it",
    )


class MemoryConfig(_Strict):
    """Knobs of ``model.ffn = "memory"`` (docs/memory_ffn.md; product keys, Lample 2019)."""

    knowledge_num: int = Field(1024, ge=4, description="entries; a perfect square (product keys)")
    knowledge_length: int = Field(4, ge=1, description="rows per entry")
    knowledge_dim: int = Field(128, ge=2, description="width of a row")
    num_selected: int = Field(4, ge=1, description="entries read per token")
    key_dim: int = Field(64, ge=2, description="gate query width, split into two halves")

    @model_validator(mode="after")
    def _check(self) -> MemoryConfig:
        root = math.isqrt(self.knowledge_num)
        if root * root != self.knowledge_num:
            raise ValueError(
                f"model.memory.knowledge_num = {self.knowledge_num} is not a perfect square "
                f"(product keys need sqrt(N) sub-keys per half); allowed e.g. "
                f"{[r * r for r in (max(root - 1, 2), root, root + 1)]}"
            )
        if self.key_dim % 2:
            raise ValueError(f"model.memory.key_dim = {self.key_dim} must be even (two halves)")
        if self.num_selected > root:
            raise ValueError(
                f"model.memory.num_selected = {self.num_selected} exceeds sqrt(knowledge_num) = "
                f"{root}; allowed: 1..{root}"
            )
        return self


InitFormat = Literal["forgetlab", "hf", "nanogpt"]
LoggerName = Literal["tensorboard", "wandb", "mlflow", "csv"]
"""Where a run's numbers are also sent (forgetlab.train.loggers); wandb and mlflow are extras."""
"""What ``model.init`` reads: a forgetlab run directory or checkpoint, a Hugging Face GPT-2
directory, a nanoGPT ``ckpt.pt``."""


class InitConfig(_Strict):
    """``model.init``: the weights a run starts from instead of a random initialisation.

    Given as a path (``model.init = "runs/base"``); config resolution reads the checkpoint and
    fills ``format`` and ``sha256`` (the content hash that joins the run id) and the model's shape
    keys. A ``sha256`` written in the spec pins the content: other weights at that path are refused.
    """

    path: str = Field(description="run directory, checkpoint file, HF GPT-2 dir or nanoGPT ckpt.pt")
    format: InitFormat | None = Field(
        None, description="filled by config resolution from the files found at path"
    )
    sha256: str | None = Field(
        None, description="content hash of the weights, filled by config resolution (or a pin)"
    )

    @model_validator(mode="before")
    @classmethod
    def _path_alone(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


class ModelConfig(_Strict):
    """Shape and parts of the GPT. ``preset`` fills every field not given explicitly.

    Parts are chosen by name (``attention``, ``ffn``, ``norm``, ``positions``) so that variants are
    config switches on the same model class, never forked models.
    """

    preset: str | None = None
    init: InitConfig | None = Field(
        None, description="start from these weights; the shape keys come from the checkpoint"
    )
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
    attention: Literal["orthogonal", "standard"] = "standard"
    freeze_qk: bool = Field(
        True,
        description="attention = 'orthogonal' only: Q/K stored as buffers (docs/qk_freeze.md); "
        "false keeps the orthogonal init trainable",
    )
    qk_init: Literal["per_head", "whole"] = Field(
        "per_head", description="orthogonal Q/K: QR per head block, or of the whole matrix"
    )
    ffn: Literal["memory", "mlp", "moe", "swiglu"] = "mlp"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    positions: Literal["learned", "rope"] = "learned"
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base (Su 2021); MiniMind 1e6")
    sparsity: Literal["2:4", "block", "none"] = Field(
        "none", description="fixed masks on the blocks' linear weights (the T/W/R ablation's T)"
    )
    sparsity_block: int = Field(16, ge=1, description="block = 'block': square block side")
    sparsity_density: float = Field(0.5, gt=0, le=1, description="block: share of blocks kept")
    sparsity_init: Literal["magnitude", "random"] = Field(
        "magnitude", description="how the fixed mask is chosen at initialisation"
    )
    moe: MoEConfig = Field(default_factory=MoEConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
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
        if self.sparsity == "block" and self.n_embd % self.sparsity_block:
            raise ValueError(
                f"model.sparsity_block = {self.sparsity_block} does not divide model.n_embd = "
                f"{self.n_embd}; allowed: {_divisors(self.n_embd)}"
            )
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(
                f"model.positions = 'rope' rotates pairs: head_dim = {self.head_dim} must be even"
            )
        return self

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def ffn_hidden(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.n_embd

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head if self.n_kv_head is not None else self.n_head


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
    probes: list[str] = Field(
        default_factory=list,
        description="domains evaluated with the stream's (before stage 1 and after every stage) "
        "and never trained on: what the model knew before the stream, e.g. books, mmlu",
    )

    @model_validator(mode="after")
    def _unique_domains(self) -> DataConfig:
        for key, names in (("domains", self.domains), ("probes", self.probes)):
            seen = [d for d in names if names.count(d) > 1]
            if seen:
                raise ValueError(f"data.{key} = {names} lists {sorted(set(seen))} twice")
        both = [p for p in self.probes if p in self.domains]
        if both:
            raise ValueError(
                f"data.probes = {self.probes} lists {both}, also in data.domains = "
                f"{self.domains}: a probe is never trained on, so it cannot be a stream domain"
            )
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
    joint: Literal["proportional", "uniform"] | None = Field(
        None,
        description="joint training (the upper reference of continual learning): every stage "
        "draws from one mixture of all data.domains, weighted by their train tokens or "
        "uniformly; the stage ends stay the evaluation points; needs rewarm = false",
    )
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
    samples: int = Field(0, ge=0, description="generation samples per domain at the end of the run")
    sample_tokens: int = Field(48, ge=1, description="tokens generated per sample")
    sample_temperature: float = Field(0.8, ge=0, description="0 = greedy")
    target_ppl: float | None = Field(
        None, gt=1,
        description="validation perplexity whose first crossing on each new domain is timed "
        "(steps, tokens, training seconds); needs eval_every",
    )
    loggers: list[LoggerName] = Field(
        default_factory=lambda: ["tensorboard"],
        description="experiment loggers: tensorboard | wandb | mlflow | csv (they never change "
        "a number, so the run's id does not depend on them)",
    )

    @model_validator(mode="after")
    def _check_lr(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"train.min_lr = {self.min_lr} is above train.lr = {self.lr}")
        if self.target_ppl is not None and not self.eval_every:
            raise ValueError(
                f"train.target_ppl = {self.target_ppl} needs in-stage evaluation: set "
                "train.eval_every > 0 (the target is checked at each evaluation)"
            )
        twice = sorted({x for x in self.loggers if self.loggers.count(x) > 1})
        if twice:
            raise ValueError(f"train.loggers = {self.loggers} lists {twice} twice")
        return self


class BaseModelConfig(_Strict):
    """``[base_model]``: a model pretrained on general text before the stream, trained once and
    shared by every run (and every later study) that declares the same one.

    The base has the run's model shape (``[model]``) and tokenizer; these keys say what it is
    trained on and how. Its weights are stored under the data cache, keyed by everything that
    decides them (``forgetlab.train.base_model``), and the run starts from them: row 0 of R scores
    the base. The run's own ``[train]`` settings do not apply to the base, so a study that varies
    the stream's learning rate still shares one base.
    """

    domains: list[str] = Field(min_length=1, description="what the base reads: one or several")
    mixture: Literal["proportional", "uniform"] = Field(
        "proportional",
        description="several domains: each batch row's domain is drawn in proportion to their "
        "train tokens, or uniformly (the mixture of joint training, forgetlab.data.mixture)",
    )
    steps: int = Field(ge=1, description="optimizer steps of pretraining, over all its domains")
    batch_size: int = Field(16, ge=1, description="sequences per micro-batch")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(20, ge=0, description="linear warmup, then cosine decay to min_lr")
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    seed: int = Field(0, description="the base's own seed: runs of every seed share one base")

    @model_validator(mode="after")
    def _check(self) -> BaseModelConfig:
        seen = sorted({d for d in self.domains if self.domains.count(d) > 1})
        if seen:
            raise ValueError(f"base_model.domains = {self.domains} lists {seen} twice")
        if self.min_lr > self.lr:
            raise ValueError(f"base_model.min_lr = {self.min_lr} is above base_model.lr = {self.lr}")
        n = len(self.domains)
        if self.steps % n:
            low = self.steps - self.steps % n
            raise ValueError(
                f"base_model.steps = {self.steps} is not a multiple of its {n} domains: the "
                f"mixture is read in one stage per domain (one schedule, evaluated after each); "
                f"allowed e.g. {max(low, n)} or {low + n}"
            )
        if self.warmup_steps > self.steps:
            raise ValueError(
                f"base_model.warmup_steps = {self.warmup_steps} is larger than base_model.steps = "
                f"{self.steps}: the learning rate would never reach base_model.lr; allowed: "
                f"0..{self.steps}"
            )
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
    base_model: BaseModelConfig | None = Field(
        None, description="pretrain this base first (once, cached) and start the run from it"
    )

    @model_validator(mode="after")
    def _one_start(self) -> RunConfig:
        if self.base_model is not None and self.model.init is not None:
            raise ValueError(
                f"model.init = {self.model.init.path!r} and [base_model] both name the weights "
                "the run starts from; keep one of them"
            )
        return self

    @model_validator(mode="after")
    def _check_joint(self) -> RunConfig:
        """Joint training is one pass over one mixture, the reference methods are measured
        against: one learning-rate schedule (a rewarm would restart it at points where the data
        does not change) and no mechanism (their hooks protect earlier stages, of which a joint
        run has none)."""
        joint = self.train.joint
        if joint is None:
            return self
        if self.train.rewarm:
            raise ValueError(
                f"train.joint = {joint!r} is one pass over one mixture of the domains: it takes "
                "one learning-rate schedule over the whole run; set train.rewarm = false"
            )
        if self.mechanisms:
            names = [m.name for m in self.mechanisms]
            raise ValueError(
                f"train.joint = {joint!r} trains on every domain at once, the reference the "
                f"mechanisms {names} are measured against: they protect earlier stages, which "
                "a joint run has none of; remove the mechanisms or train.joint"
            )
        return self

    @model_validator(mode="after")
    def _check_schedule(self) -> RunConfig:
        """A warmup longer than the schedule it starts would end every stage (with ``rewarm``) or
        the run (without) before the learning rate reaches ``train.lr``: almost surely a typo."""
        t, n = self.train, len(self.data.domains)
        span = t.steps_per_stage if t.rewarm else t.steps_per_stage * n
        if t.warmup_steps > span:
            where = (
                f"train.steps_per_stage = {t.steps_per_stage} (train.rewarm = true restarts the "
                "warmup at every stage)"
                if t.rewarm
                else f"the whole schedule, train.steps_per_stage = {t.steps_per_stage} x {n} domains"
            )
            raise ValueError(
                f"train.warmup_steps = {t.warmup_steps} is larger than {where}: the learning "
                f"rate would never reach train.lr; allowed: 0..{span}"
            )
        return self
