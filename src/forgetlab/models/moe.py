"""Mixture-of-experts FFN (``model.ffn = "moe"``, docs/methods.md).

A router scores each token against E experts; the token goes to its top-k (k = 1 or 2) with the
probabilities renormalised over the chosen k (Shazeer et al. 2017, eq. 3-5). Training adds
Shazeer's noisy gating, logits + softplus(W_noise x) * N(0, 1), and caps each expert at
C = capacity_factor * k * tokens / E slots (Fedus et al. 2021, Switch, section 2.2): an assignment
past capacity is dropped (the residual carries the token) or rerouted to its next choice with
room. Evaluation and generation use neither noise nor capacity, so a token's output
does not depend on the rest of the batch and a KV cache stays exact.

Dispatch is grouped by expert with no Python loop over tokens: assignments are scattered into an
(E, capacity, C) buffer and every expert runs as one batched matmul (GShard, Lepikhin 2021).

Auxiliary losses, left in ``self.aux`` at every forward for the trainer (``GPT.aux_losses``):
* balance, ``switch``: coef * E * sum_i f_i P_i, f_i the fraction of the k*N routed slots choosing
  expert i, P_i its mean router probability (Switch eq. 4-6; = coef when perfectly uniform);
  ``cv2``: coef * (CV(importance)^2 + CV(load)^2), importance the summed gate weights and load the
  routed counts per expert (Shazeer 2017, section 4: the CV^2 form);
* z-loss: z_coef * mean over tokens of logsumexp(router logits)^2 (Zoph et al. 2022, ST-MoE eq. 5).

Experts are stored in blocks (``nn.ParameterList``): block 0 holds ``num_experts``, later blocks are
appended by Lifelong-MoE (``model.moe.added_experts``) and become active one stage at a time, so old
blocks can be frozen as whole tensors (requires_grad False: no gradient, no weight decay).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from forgetlab.config import ModelConfig
from forgetlab.models.ffn import _GELU_APPROXIMATE, FFN
from forgetlab.models.initialization import INIT_STD


def capacity_assign(
    choice: torch.Tensor, k: int, num_experts: int, capacity: int | None, reroute: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Place every token's k choices into expert slots, first choices of all tokens first.

    ``choice`` (N, R): experts ranked per token (R >= k; all E ranks for rerouting). Returns, for
    the k*N assignments in slot-major order (all first choices, then all second choices):
    ``expert`` (the expert finally used), ``position`` (its slot in that expert) and ``kept``
    (False = dropped). Rerouting walks ranks k, k+1, ... (a loop over ranks, never over tokens),
    moving each token's earliest unplaced assignment to its next-ranked expert that has room.
    """
    N = choice.size(0)
    expert = choice[:, :k].T.reshape(-1).clone()
    position = _positions(expert, num_experts)
    if capacity is None:
        return expert, position, torch.ones_like(expert, dtype=torch.bool)
    kept = position < capacity
    if not reroute:
        return expert, position, kept
    load = torch.bincount(expert[kept], minlength=num_experts)
    tokens = torch.arange(N, device=choice.device)
    for rank in range(k, choice.size(1)):
        pending = (~kept).view(k, N)
        has = pending.any(0)
        if not bool(has.any()):
            break
        slots = (pending.int().argmax(0) * N + tokens)[has]
        candidate = choice[has, rank]
        pos = _positions(candidate, num_experts) + load[candidate]
        ok = pos < capacity
        expert[slots[ok]], position[slots[ok]] = candidate[ok], pos[ok]
        kept[slots[ok]] = True
        load += torch.bincount(candidate[ok], minlength=num_experts)
    return expert, position, kept


def _positions(expert: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Running count of earlier assignments to the same expert (the slot index)."""
    onehot = F.one_hot(expert, num_experts)
    return (onehot.cumsum(0) - 1).gather(1, expert[:, None]).squeeze(1)


def switch_balance_loss(probs: torch.Tensor, topk: torch.Tensor, num_experts: int) -> torch.Tensor:
    """E * sum_i f_i P_i (Switch eq. 4-6), f_i over the k*N routed slots (before capacity)."""
    f = torch.bincount(topk.flatten(), minlength=num_experts).to(probs.dtype) / topk.numel()
    return num_experts * (f * probs.mean(0)).sum()


def cv2_balance_loss(probs: torch.Tensor, topk: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """CV(importance)^2 + CV(load)^2 (Shazeer 2017 section 4; population variance). Importance:
    summed renormalised gate weights per expert (differentiable); load: routed slot counts."""
    E = probs.size(1)
    importance = torch.zeros(E, dtype=probs.dtype, device=probs.device)
    importance = importance.index_add(0, topk.flatten(), gates.flatten())
    load = torch.bincount(topk.flatten(), minlength=E).to(probs.dtype)

    def cv2(v: torch.Tensor) -> torch.Tensor:
        return v.var(unbiased=False) / (v.mean() ** 2 + 1e-10)

    return cv2(importance) + cv2(load)


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """mean over tokens of logsumexp(logits)^2 (ST-MoE eq. 5): keeps router logits small."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


def _normal(shape: tuple[int, ...], std: float) -> nn.Parameter:
    return nn.Parameter(torch.randn(shape) * std)


@FFN.register("moe")
class MoE(nn.Module):
    """Top-k routed experts in place of the FFN; see the module docstring for the formulas."""

    @classmethod
    def for_layer(cls, cfg: ModelConfig, layer: int) -> nn.Module:
        """MoE in layers every_n - 1, 2 * every_n - 1, ... (every layer for every_n = 1); the other
        layers get the dense FFN of the experts' kind."""
        if (layer + 1) % cfg.moe.every_n:
            return FFN.get(cfg.moe.expert)(cfg)
        return cls(cfg)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        m = cfg.moe
        self.top_k, self.noisy, self.swiglu = m.top_k, m.noisy, m.expert == "swiglu"
        self.capacity_factor, self.reroute = m.capacity_factor, m.overflow == "reroute"
        self.balance, self.balance_coef, self.z_coef = m.balance_loss, m.balance_coef, m.z_loss_coef
        self.gelu = nn.GELU(approximate=_GELU_APPROXIMATE[cfg.activation])
        self.dropout = nn.Dropout(cfg.dropout)
        self.n_embd, self.hidden = cfg.n_embd, cfg.ffn_hidden
        self.out_std = INIT_STD / math.sqrt(2 * cfg.n_layer)
        names = ["router", "w_in", "w_out"] + ["noise"] * m.noisy + ["w_gate"] * self.swiglu
        for name in names:
            setattr(self, name, nn.ParameterList())
        for size in [m.num_experts, *m.added_experts]:
            self._append_block(size)
        self.register_buffer("n_active", torch.tensor(m.num_experts))
        self.aux: dict[str, torch.Tensor] = {}
        self.load = torch.zeros(m.num_experts)
        self.dropped = 0

    def _append_block(self, size: int) -> None:
        C, H = self.n_embd, self.hidden
        self.router.append(_normal((size, C), INIT_STD))
        if self.noisy:  # W_noise starts at zero (Shazeer 2017, appendix A)
            self.noise.append(nn.Parameter(torch.zeros(size, C)))
        self.w_in.append(_normal((size, C, H), INIT_STD))
        if self.swiglu:
            self.w_gate.append(_normal((size, C, H), INIT_STD))
        self.w_out.append(_normal((size, H, C), self.out_std))

    def block_sizes(self) -> list[int]:
        return [p.size(0) for p in self.router]

    def block_params(self, block: int) -> list[nn.Parameter]:
        """Every tensor of expert block ``block``: its router (and noise) rows and its experts."""
        return [plist[block] for plist in self._lists()]

    def _lists(self) -> list[nn.ParameterList]:
        names = ["router", "w_in", "w_out"] + ["noise"] * self.noisy + ["w_gate"] * self.swiglu
        return [getattr(self, name) for name in names]

    def _active(self, plist: nn.ParameterList) -> torch.Tensor:
        n, used, parts = int(self.n_active), 0, []
        for p in plist:
            if used >= n:
                break
            parts.append(p)
            used += p.size(0)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    @property
    def num_experts(self) -> int:
        return int(self.n_active)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, x.size(-1))
        N, E, k = h.size(0), self.num_experts, self.top_k
        logits = F.linear(h, self._active(self.router)).float()
        noisy = logits
        if self.training and self.noisy:
            std = F.softplus(F.linear(h, self._active(self.noise)).float())
            noisy = logits + std * torch.randn_like(logits)
        probs = noisy.softmax(-1)
        top_p, top_e = probs.topk(k, dim=-1)
        denom = top_p.sum(-1)
        capped = self.training and self.capacity_factor > 0
        capacity = math.ceil(self.capacity_factor * k * N / E) if capped else None
        choice = probs.argsort(-1, descending=True) if capped and self.reroute else top_e
        expert, position, kept = capacity_assign(choice, k, E, capacity, self.reroute)
        token = torch.arange(N, device=h.device).repeat(k)
        weight = probs[token, expert] / denom[token]
        expert, position, token, weight = (t[kept] for t in (expert, position, token, weight))
        self._record(E, expert, kept)
        self._aux_losses(logits, probs, top_e, top_p / denom[:, None])

        slots = capacity if capacity is not None else int(position.max()) + 1 if N else 1
        flat = expert * slots + position
        buffer = h.new_zeros(E * slots, h.size(1)).index_copy(0, flat, h[token])
        out = self._experts(buffer.view(E, slots, -1)).reshape(E * slots, -1)[flat]
        contrib = out * weight[:, None].to(out.dtype)
        y = contrib.new_zeros(N, h.size(1)).index_add(0, token, contrib)
        return self.dropout(y.view_as(x))

    def _experts(self, buf: torch.Tensor) -> torch.Tensor:
        """(E, slots, C) -> (E, slots, C): every expert's FFN as one batched matmul."""
        up = torch.bmm(buf, self._active(self.w_in))
        if self.swiglu:
            act = F.silu(torch.bmm(buf, self._active(self.w_gate))) * up
        else:
            act = self.gelu(up)
        return torch.bmm(act, self._active(self.w_out))

    def _record(self, E: int, expert: torch.Tensor, kept: torch.Tensor) -> None:
        self.load = torch.bincount(expert.detach(), minlength=E).cpu()
        self.dropped = int((~kept).sum())

    def _aux_losses(
        self, logits: torch.Tensor, probs: torch.Tensor, top_e: torch.Tensor, gates: torch.Tensor
    ) -> None:
        if self.balance == "switch":
            balance = switch_balance_loss(probs, top_e, probs.size(1))
        else:
            balance = cv2_balance_loss(probs, top_e, gates)
        self.aux = {
            "moe/balance": self.balance_coef * balance,
            "moe/z": self.z_coef * z_loss(logits),
        }

    def stats(self) -> dict[str, float]:
        """Per-expert share of the routed slots of the last forward, and the dropped share."""
        routed = max(int(self.load.sum()) + self.dropped, 1)
        out = {f"moe/load_e{i}": float(c) / routed for i, c in enumerate(self.load.tolist())}
        return {**out, "moe/dropped": self.dropped / routed}

    def flops_weights(self) -> tuple[int, int]:
        """(matmul weights per token, trainable): the router(s) and top_k experts, never all E."""
        per_expert = self.n_embd * self.hidden * (3 if self.swiglu else 2)
        router = sum(p.numel() for p in self.router) * (2 if self.noisy else 1)
        active = router + self.top_k * per_expert
        return active, active

    @torch.no_grad()
    def activate_block(self, block: int, noise_std: float, generator: torch.Generator) -> None:
        """Lifelong-MoE growth (Chen et al. 2023): expert block ``block`` becomes active, its
        experts copies of the active ones (round robin) plus Gaussian noise of ``noise_std`` times
        each copied tensor's std (Net2WiderNet-style), its router rows exact copies."""
        sizes = self.block_sizes()
        before = sum(sizes[:block])
        if int(self.n_active) != before:
            raise ValueError(f"block {block} activates after {before} experts, {self.num_experts} active")
        src = torch.arange(sizes[block], device=self.n_active.device) % before
        for plist in self._lists():
            copy = self._active(plist)[src]
            if copy.dim() == 3 and noise_std > 0:
                noise = torch.randn(copy.shape, generator=generator, device=generator.device)
                copy = copy + noise.to(copy) * noise_std * copy.std()
            plist[block].copy_(copy)
        self.n_active.fill_(before + sizes[block])
