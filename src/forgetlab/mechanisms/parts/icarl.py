"""iCaRL's parts (Rebuffi et al. 2017): herded exemplar memory, BCE + distillation, NCM.

Pure pieces the class-incremental scenario (:mod:`forgetlab.experiments.class_incremental`)
assembles; docs/methods.md walks through them with the numbers their tests use.

* :class:`ExemplarMemory` -- a total budget K split floor(K/t) per seen class; a new class's
  exemplars are its samples in herding order (:func:`~forgetlab.mechanisms.parts.buffers.herding_order`,
  Rebuffi 2017 Alg. 4), an old class keeps the prefix P_y[0:m] (Alg. 5: no recomputation).
* :func:`icarl_loss` -- per-class sigmoid: BCE with the true labels on the new classes plus lambda
  times BCE towards the old model's probabilities q_old on the old classes (Rebuffi 2017 Alg. 3:
  L_new + lambda L_distill), summed over classes, averaged over samples.
* :func:`ncm_predict` -- nearest class mean, y = argmin_y ||phi(x) - mu_y||_2, with mu_y the mean
  feature of class y's exemplars under the current extractor (Rebuffi 2017 Alg. 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from forgetlab.mechanisms.parts.buffers import herding_order


def icarl_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    new_classes: list[int],
    old_classes: list[int],
    old_probs: torch.Tensor | None = None,
    lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_new, lambda * L_distill), each the per-sample sum over its classes averaged over the
    batch. ``logits`` (B, n_classes); ``labels`` (B,) class ids; ``old_probs`` (B, n_classes) the
    old model's sigmoid outputs (only the ``old_classes`` columns are read)."""
    targets = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    new = F.binary_cross_entropy_with_logits(
        logits[:, new_classes], targets[:, new_classes], reduction="sum"
    ) / logits.shape[0]
    if not old_classes or old_probs is None:
        return new, logits.new_zeros(())
    distill = F.binary_cross_entropy_with_logits(
        logits[:, old_classes], old_probs[:, old_classes].to(logits.dtype), reduction="sum"
    ) / logits.shape[0]
    return new, lam * distill


def class_means(features: dict[int, torch.Tensor]) -> tuple[list[int], torch.Tensor]:
    """The classes and their mean feature rows (n_classes, C)."""
    classes = sorted(features)
    return classes, torch.stack([features[c].mean(0) for c in classes])


def ncm_predict(
    features: torch.Tensor, classes: list[int], means: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-class-mean labels of ``features`` (B, C) and the (B, n_classes) L2 distances."""
    dist = torch.cdist(features.double(), means.double())
    return torch.tensor(classes, device=features.device)[dist.argmin(1)], dist


class ExemplarMemory:
    """At most ``capacity`` exemplars, floor(K / t) per seen class, each class in herding order."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity = {capacity} must be >= 1")
        self.capacity = capacity
        self.exemplars: dict[int, torch.Tensor] = {}

    def quota(self, n_classes: int) -> int:
        return self.capacity // max(n_classes, 1)

    def reduce(self, m: int) -> None:
        """Keep the first ``m`` exemplars of every class (Rebuffi 2017, Alg. 5)."""
        self.exemplars = {c: e[:m] for c, e in self.exemplars.items()}

    def add_class(self, label: int, samples: torch.Tensor, features: torch.Tensor, m: int) -> None:
        """Store ``m`` of ``samples`` in herding order of their ``features`` (Alg. 4)."""
        order = herding_order(features, m)
        self.exemplars[label] = samples[order.to(samples.device)]

    def __len__(self) -> int:
        return sum(len(e) for e in self.exemplars.values())

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All exemplars and their labels, classes in ascending order."""
        classes = sorted(self.exemplars)
        x = torch.cat([self.exemplars[c] for c in classes])
        y = torch.cat([torch.full((len(self.exemplars[c]),), c) for c in classes])
        return x, y
