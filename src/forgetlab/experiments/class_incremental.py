"""A class-incremental scenario from the lab's own data: iCaRL against fine-tune, ER and LwF.

Classes are the stream's text domains (code, math, medical, legal, dialogue, books); a sample is a
window of one domain's tokens labelled with that domain. Classes arrive in groups (``arrivals``,
2 + 1 + 1 + ... as in docs/methods.md); after each increment every method classifies test windows
of all classes seen so far, without a task ID, and the score is the average incremental accuracy,
the mean of those accuracies over the increments (Rebuffi et al. 2017, sec. 4).

The GPT is the feature extractor phi(x) = mean over positions of its final hidden state, with a
per-class sigmoid head. Methods, each trained with the same optimizer and steps per increment:

* ``finetune`` -- BCE on the seen classes over the new data only (the forgetting lower bound);
* ``er`` -- the same with a class-balanced random memory of K windows (floor(K/t) per class)
  mixed into the training set (Chaudhry et al. 2019);
* ``lwf`` -- cross-entropy over the seen classes on new data plus Hinton-style distillation of
  the old model's softmax over the old classes (Li & Hoiem 2017, reusing ``distillation_loss``);
* ``icarl`` -- herded exemplars, BCE on new classes + lambda BCE distillation on old classes, and
  nearest-class-mean classification (Rebuffi et al. 2017; :mod:`forgetlab.mechanisms.parts.icarl`).

Why not a registered mechanism: the trainer's contract is next-token prediction on one domain
per stage, evaluated as R matrices of LM loss. Class-incremental learning changes the objective
(a sequence classifier), the unit of data (labelled windows of several domains per step) and the
metric (accuracy over all seen classes, no domain routing), so it runs as its own small loop here.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from forgetlab.config import ModelConfig
from forgetlab.data import Stream, fixed_windows, sample_windows
from forgetlab.mechanisms.distillation import distillation_loss
from forgetlab.mechanisms.parts.icarl import ExemplarMemory, class_means, icarl_loss, ncm_predict
from forgetlab.models import build_model

Method = Literal["finetune", "er", "lwf", "icarl"]
METHODS: tuple[Method, ...] = ("finetune", "er", "lwf", "icarl")


class ClassIncrementalConfig(BaseModel):
    """The scenario and the training budget, the same for every method."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(default_factory=lambda: ModelConfig(
        n_layer=2, n_head=2, n_embd=64, block_size=64))
    arrivals: list[int] = Field([2, 1, 1, 1, 1], min_length=1, description="classes per step")
    window: int = Field(64, ge=2, description="tokens per sample")
    train_windows: int = Field(64, ge=1, description="training windows per class")
    test_windows: int = Field(32, ge=1, description="test windows per class (from val)")
    steps: int = Field(30, ge=1, description="optimizer steps per increment")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    memory: int = Field(40, ge=1, description="total exemplar budget K (er, icarl)")
    lam: float = Field(1.0, ge=0, description="iCaRL distillation weight lambda")
    temperature: float = Field(2.0, gt=0, description="LwF temperature")
    normalize: bool = Field(True, description="L2-normalise features for NCM (Rebuffi 2017)")
    seed: int = 0

    @model_validator(mode="after")
    def _window_fits(self) -> ClassIncrementalConfig:
        if self.window > self.model.block_size:
            raise ValueError(f"window = {self.window} exceeds block_size {self.model.block_size}")
        if any(a < 1 for a in self.arrivals):
            raise ValueError(f"arrivals = {self.arrivals}: every step brings >= 1 class")
        return self


class Classifier(nn.Module):
    """GPT feature extractor (mean-pooled final hidden state) and a per-class linear head."""

    def __init__(self, gpt: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.gpt = gpt
        self.head = nn.Linear(gpt.config.n_embd, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.gpt.hidden(x).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def scenario_data(stream: Stream, cfg: ClassIncrementalConfig) -> tuple[list, list]:
    """Per class (stream order): training windows (random offsets) and test windows (val)."""
    rng = np.random.default_rng([cfg.seed, 1])
    train, test = [], []
    for name in stream.domains:
        train.append(sample_windows(stream[name].train, rng, cfg.train_windows, cfg.window)[0])
        test.append(fixed_windows(stream[name].val, cfg.test_windows, cfg.window)[0])
    return train, test


@torch.no_grad()
def _features(model: Classifier, x: torch.Tensor, normalize: bool) -> torch.Tensor:
    was = model.training
    model.eval()
    f = torch.cat([model.features(x[i : i + 64]) for i in range(0, len(x), 64)])
    model.train(was)
    return F.normalize(f, dim=1) if normalize else f


def _loss(method: Method, model: Classifier, old: Classifier | None, x: torch.Tensor,
          y: torch.Tensor, new: list[int], seen: list[int], cfg: ClassIncrementalConfig
          ) -> torch.Tensor:
    logits = model(x)
    previous = [c for c in seen if c not in new]
    if method == "lwf":
        ce = F.cross_entropy(logits[:, seen], torch.searchsorted(torch.tensor(seen), y))
        if old is None or not previous:
            return ce
        with torch.no_grad():
            teacher = old(x)[:, previous]
        return ce + distillation_loss(logits[:, previous], teacher, cfg.temperature)
    if method == "icarl":
        probs = None
        if old is not None and previous:
            with torch.no_grad():
                probs = torch.sigmoid(old(x))
        l_new, l_old = icarl_loss(logits, y, new, previous, probs, cfg.lam)
        return l_new + l_old
    return icarl_loss(logits, y, seen, [])[0]  # finetune / er: BCE on every seen class


def _accuracy(method: Method, model: Classifier, memory: ExemplarMemory,
              test: list[torch.Tensor], seen: list[int], cfg: ClassIncrementalConfig) -> float:
    x = torch.cat([test[c] for c in seen])
    y = torch.cat([torch.full((len(test[c]),), c) for c in seen])
    if method == "icarl":
        feats = {c: _features(model, e, cfg.normalize) for c, e in memory.exemplars.items()}
        classes, means = class_means(feats)
        pred, _ = ncm_predict(_features(model, x, cfg.normalize), classes, means)
    else:
        was = model.training
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(x[i : i + 64]) for i in range(0, len(x), 64)])
        model.train(was)
        pred = torch.tensor(seen)[logits[:, seen].argmax(1)]
    return float((pred == y).float().mean())


def run_class_incremental(method: Method, stream: Stream, cfg: ClassIncrementalConfig
                          ) -> dict[str, Any]:
    """Train ``method`` through the increments; accuracies per step and their average."""
    if method not in METHODS:
        raise ValueError(f"method = {method!r}; choose one of {METHODS}")
    n_classes = len(stream.domains)
    if sum(cfg.arrivals) > n_classes:
        raise ValueError(f"arrivals = {cfg.arrivals} need {sum(cfg.arrivals)} classes; the "
                         f"stream has {n_classes} domains")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train, test = scenario_data(stream, cfg)
    model = Classifier(build_model(cfg.model, stream.tokenizer.vocab_size), n_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    memory = ExemplarMemory(cfg.memory)
    old: Classifier | None = None
    accuracies, seen = [], []
    for count in cfg.arrivals:
        new = list(range(len(seen), len(seen) + count))
        seen = seen + new
        x = torch.cat([train[c] for c in new])
        y = torch.cat([torch.full((len(train[c]),), c) for c in new])
        if method in ("er", "icarl") and len(memory):
            mx, my = memory.rows()
            x, y = torch.cat([x, mx]), torch.cat([y, my])
        model.train()
        for _ in range(cfg.steps):
            pick = torch.randint(len(x), (cfg.batch_size,), generator=gen)
            loss = _loss(method, model, old, x[pick], y[pick], new, seen, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if method in ("er", "icarl"):
            m = memory.quota(len(seen))
            memory.reduce(m)
            for c in new:
                if method == "icarl":
                    memory.add_class(c, train[c], _features(model, train[c], cfg.normalize), m)
                else:
                    keep = torch.randperm(len(train[c]), generator=gen)[:m]
                    memory.exemplars[c] = train[c][keep]
        accuracies.append(_accuracy(method, model, memory, test, seen, cfg))
        if method in ("lwf", "icarl"):
            old = copy.deepcopy(model).eval().requires_grad_(False)
    return {
        "method": method,
        "classes": [stream.domains[c] for c in seen],
        "arrivals": list(cfg.arrivals),
        "accuracy": accuracies,
        "average_incremental_accuracy": float(np.mean(accuracies)),
        "memory": len(memory),
    }
