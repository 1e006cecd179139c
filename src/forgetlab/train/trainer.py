"""The continual trainer: walk a stream of domains, evaluate every domain after every stage.

For each stage ``s`` (domain ``s`` of the stream) the trainer runs ``steps_per_stage`` optimizer
steps on that domain's train split, calling the mechanisms' hooks at their moments, then evaluates
every domain on fixed validation windows, filling row ``s + 1`` of the R matrices (row 0 is the
model before training). Checkpoints at every stage end (and every ``checkpoint_every`` steps) hold
everything needed to resume exactly: a resumed run ends with the same numbers, bit for bit on the
same machine, as one that never stopped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
import traceback
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from forgetlab.analysis.columns import KINDS as METRIC_KINDS
from forgetlab.analysis.columns import PHASES
from forgetlab.analysis.metrics import convergence_steps
from forgetlab.analysis.registry import cl_metrics
from forgetlab.atomic import DiskFullError, remove_stale_temps
from forgetlab.config import ConfigError, RunConfig
from forgetlab.data import fixed_windows, open_stream, sample_windows
from forgetlab.mechanisms import Batch, StepOutput, TrainContext, build_mechanisms
from forgetlab.models import model_flops_per_token
from forgetlab.models.checkpoint import declared_frozen
from forgetlab.models.init import build_run_model
from forgetlab.train.checkpoint import first_non_finite, load_checkpoint, save_checkpoint
from forgetlab.train.device import (
    autocast_factory,
    resolve_device,
    resolve_precision,
    synchronize,
)
from forgetlab.train.distributed import init_distributed, shutdown_distributed
from forgetlab.train.env import environment, peak_memory_bytes
from forgetlab.train.evaluate import EvalSet, evaluate, make_eval_set, unigram_baseline
from forgetlab.train.failures import DivergenceError, run_failure
from forgetlab.train.flops import FlopsAccount, peak_flops
from forgetlab.train.loggers import Loggers, check_packages, r_row
from forgetlab.train.probes import Probes
from forgetlab.train.rundir import RunDir, config_hash
from forgetlab.train.schedule import lr_at

log = logging.getLogger("forgetlab.train")


def weighted_token_mean(token_loss: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean loss over tokens; with weights, sum(w * l) / sum(w) (gated-out tokens give no gradient)."""
    if weights is None:
        return token_loss.mean()
    return (token_loss * weights).sum() / weights.sum().clamp_min(1e-8)


def build_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW, decaying matrices only (nanoGPT's grouping), fused where this torch supports it."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs = dict(lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2))
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, **kwargs)


class PhaseTimer:
    """Wall-clock seconds per phase and stage; synchronises CUDA so GPU time lands in its phase."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.paused = False  # inside a mechanism's extra step: its time belongs to the hook
        self.stages: dict[int, dict[str, float]] = defaultdict(lambda: dict.fromkeys(PHASES, 0.0))

    def add(self, stage: int, phase: str, t0: float) -> float:
        synchronize(self.device)
        now = time.perf_counter()
        if not self.paused:
            self.stages[stage][phase] += now - t0
        return now

    def to_dict(self) -> dict[str, Any]:
        per_stage = [dict(self.stages[s]) for s in sorted(self.stages)]
        total = {p: sum(s[p] for s in per_stage) for p in PHASES}
        return {"per_stage": per_stage, "total": total}

    def load(self, state: dict[str, Any]) -> None:
        for s, phases in enumerate(state["per_stage"]):
            self.stages[s].update(phases)


class Trainer:
    """Runs one :class:`RunConfig` into one run directory (resuming it if it holds a checkpoint)."""

    def __init__(
        self, cfg: RunConfig, out: str | Path, progress: bool = True, lock_wait: float = 0.0
    ) -> None:
        """Refuse ``out`` up front when it cannot be used: another process writes it (after
        ``lock_wait`` seconds), or it holds a finished run or another config. A directory that
        does not exist yet is created, and locked, only by :meth:`run`."""
        self.cfg = cfg
        self.run_dir = RunDir(out)
        self.progress = progress
        # names, knobs and each mechanism's fit to this run, before any data, model or directory
        self.mechanisms = build_mechanisms(cfg.mechanisms, cfg)
        check_packages(cfg.train.loggers)
        self.loggers = Loggers([])  # opened by run(), once the resume step is known
        self.lock = self.run_dir.lock(lock_wait)
        if self.run_dir.root.is_dir():
            self._claim()
        else:
            self.resume = self.run_dir.check_usable(cfg)

    def _claim(self) -> None:
        """Lock the run directory, remove what a killed writer left half-written, and decide
        whether to resume (again, under the lock: the directory may have changed since)."""
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun rank 0 owns the run directory
            self.lock.acquire()
        try:
            if self.lock.held:
                removed, freed = remove_stale_temps(self.run_dir.root)
                if removed:
                    log.info(
                        "%s: removed %d temp file(s) a killed run left (%.1f MB)",
                        self.run_dir.root, removed, freed / 1e6,
                    )
            self.resume = self.run_dir.check_usable(self.cfg)
        except BaseException:
            self.lock.release()
            raise

    # ----------------------------------------------------------------------------- setup
    def _setup(self) -> None:
        cfg = self.cfg
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.dist, self.device = init_distributed(resolve_device(cfg.device))
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self.autocast = autocast_factory(self.device, self.precision)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)

        assert cfg.data.tokenizer is not None, "resolve_run_config fills the tokenizer"
        self.stream = open_stream(cfg.data.domains, cfg.data.tokenizer, cfg.data.cache_dir)
        tok = self.stream.tokenizer
        vocab = self._vocab_size(tok.vocab_size)  # model.init: its weights, unless resuming
        self.model = build_run_model(cfg.model, vocab, tok, not self.resume).to(self.device)
        self.model_cfg = self.model.config
        self.compiled = torch.compile(self.model) if cfg.train.compile else self.model
        self.train_model = self.compiled
        self.ddp_trainable: tuple[bool, ...] | None = None
        self._wrap_data_parallel()
        self.optimizer = build_optimizer(self.model, cfg)

        token_bytes = tok.token_byte_lengths()
        n_windows = cfg.data.val_batches * cfg.train.batch_size
        block = self.model_cfg.block_size
        self.eval_sets: list[EvalSet] = []
        self.unigram: dict[str, dict[str, float]] = {}
        for name in self.stream.domains:
            dom = self.stream[name]
            x, y = fixed_windows(dom.val, n_windows, block)
            es = make_eval_set(x, y, token_bytes, self.device)
            self.eval_sets.append(es)
            self.unigram[name] = unigram_baseline(
                dom.unigram_counts(), es, self.model_cfg.vocab_size
            )
        # data.probes: opened apart from the stream, which is all the training context holds
        self.probes = Probes.open(
            cfg.data, token_bytes, n_windows, block, self.model_cfg.vocab_size, self.device
        )

        per_tok = model_flops_per_token(self.model_cfg, block)
        self.flops = FlopsAccount(per_tok["train"], per_tok["forward"])
        self.peak, self.peak_source = peak_flops(self.device, self.precision)
        self.timer = PhaseTimer(self.device)
        gen_device = self.device if self.device.type == "cuda" else "cpu"
        self.generator = torch.Generator(device=gen_device).manual_seed(cfg.seed)
        self.ctx = TrainContext(
            config=cfg,
            model=self.model,
            optimizer=self.optimizer,
            stream=self.stream,
            device=self.device,
            autocast=self.autocast,
            generator=self.generator,
            extra_step=self._extra_step,
        )
        self.R: dict[str, list[list[float]]] = {k: [] for k in METRIC_KINDS}
        self.curves: list[dict[str, Any]] = []
        self.data_rng = np.random.default_rng([cfg.seed, 0])
        self.mech_flops_at_stage_start = 0.0
        self.started = datetime.now(timezone.utc).isoformat()

    def _vocab_size(self, tokenizer_vocab: int) -> int | None:
        """The tokenizer's vocabulary, unless the spec pads it (e.g. 50304 for GPU efficiency)."""
        configured = self.cfg.model.vocab_size
        if configured is None:
            return tokenizer_vocab
        if configured < tokenizer_vocab:
            raise ConfigError(
                f"model.vocab_size = {configured} is smaller than the {self.cfg.data.tokenizer} "
                f"tokenizer's {tokenizer_vocab} tokens"
            )
        return None

    def _write_run_json(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:  # under torchrun only rank 0 owns the run directory
            self.run_dir.write_run_json(record)

    def _write_curves(self, rows: list[dict[str, Any]]) -> None:
        if self.dist.is_main:
            self.run_dir.write_curves(rows)

    # ------------------------------------------------------------------------ training step
    def _forward_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        with self.autocast():
            logits = self.train_model(batch.x)
        token_loss = F.cross_entropy(
            logits.float().flatten(0, 1), batch.y.flatten(), reduction="none"
        ).view_as(batch.y)
        loss = weighted_token_mean(token_loss, batch.weights)
        output = StepOutput(logits=logits, token_loss=token_loss)
        terms: dict[str, float] = dict(self.model.stats())
        for name, value in self.model.aux_losses().items():
            loss = loss + value  # the model's own terms, e.g. MoE balance and z-loss
            terms[name] = float(value.detach())
        for m in self.mechanisms:
            for name, value in m.loss(self.ctx, batch, output).items():
                loss = loss + value
                terms[f"{m.name}/{name}"] = float(value.detach())
        return loss, terms

    def _optimizer_step(self, stage: int, t0: float) -> tuple[float, float]:
        for m in self.mechanisms:
            m.after_backward(self.ctx)
        t0 = self.timer.add(stage, "backward", t0)
        if self.cfg.train.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        else:  # still measured: a non-finite gradient stops the run (no host sync here)
            norm = torch.nn.utils.get_total_norm(
                [p.grad for p in self.model.parameters() if p.grad is not None]
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.after_optimizer_step()  # e.g. re-apply sparsity masks
        t0 = self.timer.add(stage, "optimizer", t0)  # synchronises: reading the norm is free now
        grad_norm = float(norm)
        if not math.isfinite(grad_norm):
            raise self._diverged("the gradient norm", grad_norm)
        for m in self.mechanisms:
            m.after_step(self.ctx)  # may run a whole sleep phase of extra steps
        t0 = self.timer.add(stage, "mechanisms", t0)
        return grad_norm, t0

    def _train_step(self, stage: int) -> dict[str, float]:
        cfg = self.cfg.train
        domain = self.stream[self.stream.domains[stage]]
        block = self.model_cfg.block_size
        total, tokens = 0.0, 0
        terms: dict[str, float] = {}
        t0 = time.perf_counter()
        world, rank = self.dist.world_size, self.dist.rank
        for micro in range(cfg.grad_accum):
            # every rank draws the global batch from the same generator and keeps its slice
            x, y = sample_windows(domain.train, self.data_rng, cfg.batch_size * world, block)
            if world > 1:
                rows = slice(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)
                x, y = x[rows], y[rows]
            batch = Batch(x.to(self.device), y.to(self.device), None, stage)
            t0 = self.timer.add(stage, "data", t0)
            if self.mechanisms:  # replayed rows, selective write's scoring forward...
                for m in self.mechanisms:
                    batch = m.make_batch(self.ctx, batch)
                t0 = self.timer.add(stage, "mechanisms", t0)  # (each add syncs CUDA: only if any)
            sync = micro == cfg.grad_accum - 1 or not self.dist.enabled
            ddp = isinstance(self.train_model, DistributedDataParallel)
            with contextlib.nullcontext() if sync or not ddp else self.train_model.no_sync():
                loss, micro_terms = self._forward_loss(batch)
                t0 = self.timer.add(stage, "forward", t0)
                (loss / cfg.grad_accum).backward()
            t0 = self.timer.add(stage, "backward", t0)
            total += float(loss.detach()) / cfg.grad_accum
            tokens += batch.n_tokens * world
            for k, v in micro_terms.items():
                terms[k] = terms.get(k, 0.0) + v / cfg.grad_accum
        if not math.isfinite(total):  # the loss is on the host already: checked every step
            raise self._diverged("the training loss", total)
        grad_norm, _ = self._optimizer_step(stage, t0)
        self.flops.add_train(stage, tokens)
        return {"train_loss": total, "grad_norm": grad_norm, "tokens": tokens, **terms}

    def _extra_step(self, batch: Batch) -> float:
        """One optimizer step on a batch a mechanism supplies (e.g. a sleep phase on the buffer).

        Its forward/backward FLOPs are counted as mechanism compute; gradient and weight hooks run
        as in a normal step, so masks and projections hold during extra steps too.
        """
        stage = self.ctx.stage
        self.timer.paused = True  # the calling hook's time covers it (phase "mechanisms")
        try:
            loss, _ = self._forward_loss(batch)
            loss.backward()
            self._optimizer_step(stage, time.perf_counter())  # checks the gradient norm
        finally:
            self.timer.paused = False
        self.flops.add_extra(stage, batch.n_tokens)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise self._diverged("a mechanism's extra-step loss", value)
        return value

    # ----------------------------------------------------------------------------- divergence
    def _diverged(self, what: str, value: float | str, after: bool = False) -> DivergenceError:
        """The error for a non-finite ``what``: in the optimizer step now running (1-based
        global step), or, ``after`` (an evaluation, a weight check), after the last step done
        (0 before training)."""
        stage = self.ctx.stage
        latest = self.run_dir.latest
        done = self.ctx.global_step
        return DivergenceError(
            what,
            value,
            step=done if after else done + 1,
            stage=stage,
            domain=self.stream.domains[stage],
            stage_step=(self.ctx.step + 1 if done else 0) if after else self.ctx.step + 1,
            checkpoint=latest.resolve() if latest.exists() else None,
            lr=self.optimizer.param_groups[0]["lr"],
            when="after" if after else "at",
        )

    def _check_evaluation(self, results: dict[str, list[float]], domains: list[str]) -> None:
        """Non-finite evaluation results are never written as R: the run fails instead."""
        for kind, values in results.items():
            for name, v in zip(domains, values, strict=True):
                if not math.isfinite(v):
                    raise self._diverged(f"the evaluation {kind} on '{name}'", v, after=True)

    # --------------------------------------------------------------------------- evaluation
    def _evaluate_all(self, stage_for_accounting: int) -> dict[str, list[float]]:
        """Every stream domain's scores (returned) and every probe's (its next R row)."""
        t0 = time.perf_counter()
        n = len(self.eval_sets)
        row: dict[str, list[float]] = {k: [] for k in METRIC_KINDS}
        for j, es in enumerate([*self.eval_sets, *self.probes.eval_sets]):
            with _scoped(self.mechanisms, self.ctx, min(j, n)):  # a probe: as the model stands
                res = evaluate(self.model, es, self.cfg.data.eval_batch_size, self.autocast)
            for k in METRIC_KINDS:
                row[k].append(res[k])
            self.flops.add_eval(stage_for_accounting, es.n_tokens)
        self.timer.add(stage_for_accounting, "eval", t0)
        self._check_evaluation(row, [*self.stream.domains, *self.probes.names])
        self.probes.add_row({k: v[n:] for k, v in row.items()})
        return {k: v[:n] for k, v in row.items()}

    def _evaluate_new_domain(self, stage: int) -> dict[str, float]:
        t0 = time.perf_counter()
        es = self.eval_sets[stage]
        with _scoped(self.mechanisms, self.ctx, stage):
            res = evaluate(self.model, es, self.cfg.data.eval_batch_size, self.autocast)
        self.flops.add_eval(stage, es.n_tokens)
        self.timer.add(stage, "eval", t0)
        self._check_evaluation({k: [res[k]] for k in METRIC_KINDS}, [self.stream.domains[stage]])
        return res

    # -------------------------------------------------------------------------- persistence
    def _state(self, stage: int, step: int) -> dict[str, Any]:
        state: dict[str, Any] = {
            "config_hash": config_hash(self.cfg),
            "cursor": {"stage": stage, "step": step, "global_step": self.ctx.global_step},
            "optimizer": self.optimizer.state_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "generator": self.generator.get_state(),
                "data": self.data_rng.bit_generator.state,
            },
            "R": self.R,
            "probes_R": self.probes.R,
            "curves": self.curves,
            "flops": self.flops.stages,
            "timing": self.timer.to_dict(),
            "mech_flops_at_stage_start": self.mech_flops_at_stage_start,
            "mechanisms": {m.name: m.state_dict() for m in self.mechanisms},
            "started": self.started,
        }
        if self.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _restore(self, state: dict[str, Any]) -> tuple[int, int]:
        self.optimizer.load_state_dict(state["optimizer"])
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        self.generator.set_state(rng["generator"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.data_rng.bit_generator.state = rng["data"]
        self.R = state["R"]
        self.probes.R = state.get("probes_R", self.probes.R)
        self.curves = state["curves"]
        self.flops.stages = state["flops"]
        self.timer.load(state["timing"])
        self.mech_flops_at_stage_start = state["mech_flops_at_stage_start"]
        for m in self.mechanisms:
            m.load_state_dict(state["mechanisms"].get(m.name, {}))
        self.started = state["started"]
        cur = state["cursor"]
        self.ctx.global_step = cur["global_step"]
        return cur["stage"], cur["step"]

    def _checkpoint(self, stage: int, step: int) -> None:
        if not self.dist.is_main:
            return
        bad = first_non_finite(self.model.state_dict())  # so every checkpoint on disk is finite
        if bad:
            raise self._diverged(f"weight {bad}", "not finite", after=True)
        save_checkpoint(self.run_dir, self.model, self._state(stage, step), self.ctx.global_step)
        self._write_curves(self.curves)

    def _record(
        self, status: str, error: str | None = None, failure: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The run.json document; R rows so far, metrics once the stream is done."""
        cfg = self.cfg
        domains = list(self.stream.domains)
        complete = len(self.R["loss"]) == len(domains) + 1
        metrics: dict[str, Any] = {}
        if complete:
            metrics = {k: cl_metrics(self.R[k], k) for k in METRIC_KINDS}  # type: ignore[arg-type]
            metrics["convergence_steps"] = self._convergence()
            if cfg.train.target_ppl is not None:
                metrics["time_to_target"] = self._time_to_target(cfg.train.target_ppl)
        flops = self.flops.to_dict()
        timing = self.timer.to_dict()
        train_s = sum(timing["total"][p] for p in PHASES if p != "eval")
        train_flops = flops["total"]["train"] + flops["total"]["extra_steps"]  # type: ignore[index]
        throughput = {
            "train_tokens_per_s": flops["total"]["train_tokens"] / train_s if train_s else None,  # type: ignore[index]
            "train_flops_per_s": train_flops / train_s if train_s else None,
            "peak_flops": self.peak,
            "peak_source": self.peak_source,
        }
        # MFU per device: the run's FLOP/s over the peak of all its devices together
        throughput["mfu"] = (
            throughput["train_flops_per_s"] / (self.peak * self.dist.world_size)
            if self.peak and throughput["train_flops_per_s"]
            else None
        )
        throughput["devices"] = self.dist.world_size
        return {
            "status": status,
            "error": error,
            "failure": failure,
            "name": cfg.name,
            "config_hash": config_hash(cfg),
            "config": cfg.model_dump(mode="json"),
            "model": self.model_cfg.model_dump(mode="json"),
            "parameters": self._parameter_counts(),
            "precision": self.precision,
            "domains": domains,
            "tokenizer": self.stream.tokenizer.name,
            "tokenizer_sha256": self.stream.tokenizer.sha256,  # checked by runs that init from it
            "R": self.R,
            "unigram": {k: [self.unigram[d][k] for d in domains] for k in METRIC_KINDS},
            **({"probes": self.probes.record(len(domains))} if self.probes else {}),
            "metrics": metrics,
            "loggers": self.loggers.report(),
            "flops": flops,
            "tokens": {
                "train_per_stage": [s["train_tokens"] for s in self.flops.stages],
                "train_total": flops["total"]["train_tokens"],  # type: ignore[index]
                "eval_per_domain": [es.n_tokens for es in self.eval_sets],
            },
            "timing": {**timing, "throughput": throughput},
            "peak_memory": peak_memory_bytes(self.device),
            "env": environment(self.device),
            "started": self.started,
            "updated": datetime.now(timezone.utc).isoformat(),
        }

    def _parameter_counts(self) -> dict[str, int]:
        """Model parameters plus those mechanisms own outside the model (LoRA adapters);
        ``trainable`` counts what has requires_grad at the time of the record. ``total`` also
        counts the buffers a part declares frozen (OELM's orthogonal Q/K), as ``forgetlab
        inspect`` does, so that total - trainable is every weight the run never trains."""
        extra = [p for m in self.mechanisms for p in m.parameters()]
        params = [*self.model.parameters(), *extra]
        frozen_buffers = sum(t.numel() for t in declared_frozen(self.model).values())
        return {
            "total": self.model.num_params() + frozen_buffers + sum(p.numel() for p in extra),
            "trainable": sum(p.numel() for p in params if p.requires_grad),
            "mechanisms": sum(p.numel() for p in extra),
        }

    def _convergence(self) -> list[float | None]:
        out: list[float | None] = []
        for s in range(len(self.stream.domains)):
            pts = [(0, self.R["loss"][s][s])] + [
                (r["stage_step"], r["val_loss"])
                for r in self.curves
                if r.get("stage") == s and r.get("val_loss") is not None
            ]
            out.append(
                convergence_steps([p[0] for p in pts], [p[1] for p in pts])
                if len(pts) > 1
                else None
            )
        return out

    def _time_to_target(self, target_ppl: float) -> list[dict[str, float] | None]:
        """Per stage, the first in-stage evaluation whose perplexity on the new domain is at or
        below ``target_ppl``: its stage-local optimizer steps, training tokens and training
        seconds (evaluation time excluded); None where the stage never reached it."""
        out: list[dict[str, float] | None] = []
        for s in range(len(self.stream.domains)):
            rows = sorted(
                (r for r in self.curves if r.get("stage") == s and r.get("val_loss") is not None),
                key=lambda r: r["stage_step"],
            )
            hit = next((r for r in rows if math.exp(r["val_loss"]) <= target_ppl), None)
            out.append(
                None if hit is None else {
                    "steps": hit["stage_step"],
                    "tokens": hit["train_tokens"],
                    "train_s": hit["train_s"],
                    "ppl": math.exp(hit["val_loss"]),
                }
            )
        return out

    def _stage_progress(self, stage: int) -> dict[str, float]:
        """Training tokens and training seconds (every phase but evaluation) of ``stage`` so far."""
        phases = self.timer.stages[stage]
        return {
            "train_tokens": self.flops.stages[stage]["train_tokens"],
            "train_s": sum(v for p, v in phases.items() if p != "eval"),
        }

    # ------------------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        self._claim()
        try:
            self._setup()
        except BaseException:
            self.lock.release()
            raise
        status = "failed"
        try:
            record = self._run()
            status = "finished"
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                status = "killed"
            known = run_failure(e)  # divergence, disk full: one line that says what to do
            err, failure = known or (f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}", None)
            try:
                self._write_run_json(self._record("failed", err, failure))
            except DiskFullError as full:
                note = f"{self.run_dir.run_json} could not be marked failed either"
                raise DiskFullError(failure["path"] if failure else full.path, note) from None
            if failure and failure["kind"] == "disk_full" and not isinstance(e, DiskFullError):
                raise DiskFullError(failure["path"] or self.run_dir.root) from None
            raise
        finally:
            self.loggers.close(status)
            shutdown_distributed(self.dist)
            self.lock.release()
        return record

    def _run(self) -> dict[str, Any]:
        n_stages = len(self.stream.domains)
        self.run_dir.root.mkdir(parents=True, exist_ok=True)
        for m in self.mechanisms:
            m.attach(self.ctx)
        if self.resume:
            stage0, step0 = self._restore(load_checkpoint(self.run_dir, self.model))
            log.info("resuming %s at stage %d step %d", self.run_dir.root, stage0, step0)
        resumed_at = self.ctx.global_step if self.resume else None
        self.loggers = Loggers.open(self.cfg, self.run_dir.root, resumed_at, self.dist.is_main)
        if not self.resume:
            stage0, step0 = 0, 0
            row = self._evaluate_all(0)
            for k in METRIC_KINDS:
                self.R[k].append(row[k])
            self._log_evaluation(0)
        self._write_run_json(self._record("running"))

        for stage in range(stage0, n_stages):
            self._run_stage(stage, step0 if stage == stage0 else 0, n_stages)
        record = self._record("finished")
        if self.cfg.train.samples:
            record["samples"] = self._generation_samples()
        self.loggers.final(self.ctx.global_step, record)
        record["loggers"] = self.loggers.report()
        self._write_curves(self.curves)
        self._write_run_json(record)
        return record

    def _log_evaluation(self, row: int) -> None:
        """Row ``row`` of R, the stream's domains and the probes' columns, to the loggers."""
        tables = [(self.R, list(self.stream.domains)), (self.probes.R, self.probes.names)]
        self.loggers.evaluation(self.ctx.global_step, r_row(row, *tables))

    def _wrap_data_parallel(self) -> None:
        """Under torchrun, (re)wrap the model in DDP for the parameters that train now.

        DDP's reducer fixes its parameter set when it is built and waits for a gradient of each
        in every backward; a mechanism that freezes weights mid-run (latent_replay's lower blocks,
        lora's base) would leave it waiting. So the trainer re-wraps whenever the set of trainable
        parameters changed, and trains without DDP when nothing in the model trains (a mechanism
        that owns the trainable tensors, like lora's adapters, all-reduces them itself)."""
        if not self.dist.enabled:
            return
        trainable = tuple(p.requires_grad for p in self.model.parameters())
        if trainable == self.ddp_trainable:
            return
        self.ddp_trainable = trainable
        if not any(trainable):
            self.train_model = self.compiled
            return
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.train_model = DistributedDataParallel(self.compiled, device_ids=ids)

    def _run_stage(self, stage: int, start_step: int, n_stages: int) -> None:
        cfg = self.cfg.train
        ctx = self.ctx
        ctx.stage = stage
        name = self.stream.domains[stage]
        if start_step == 0:
            self.data_rng = np.random.default_rng([self.cfg.seed, stage])
            for m in self.mechanisms:
                m.on_stage_start(ctx)
            self.mech_flops_at_stage_start = self._mechanism_flops()
        self._wrap_data_parallel()  # mechanisms may have frozen weights (or a resume restored that)
        bar = tqdm(
            total=cfg.steps_per_stage,
            initial=start_step,
            desc=f"stage {stage + 1}/{n_stages} {name}",
            # None: tqdm draws only on a terminal, so a redirected log gets the logged lines, not
            # carriage-return frames
            disable=None if self.progress and self.dist.is_main else True,
            leave=True,
            dynamic_ncols=True,
        )
        window_t, window_tokens = time.perf_counter(), 0
        for step in range(start_step, cfg.steps_per_stage):
            ctx.step = step
            lr = lr_at(cfg, stage, step, n_stages)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            stats = self._train_step(stage)
            ctx.global_step += 1
            window_tokens += stats["tokens"]
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps_per_stage:
                now = time.perf_counter()
                tps = window_tokens / max(now - window_t, 1e-9)
                window_t, window_tokens = now, 0
                row = {
                    "step": ctx.global_step,
                    "stage": stage,
                    "stage_step": done,
                    "domain": name,
                    "lr": lr,
                    "tokens_per_s": tps,
                    **{k: v for k, v in stats.items() if k != "tokens"},
                    **ctx.log,
                }
                self.curves.append(row)
                self.loggers.curve(row)
                bar.set_postfix(loss=f"{stats['train_loss']:.3f}", tok_s=f"{tps:,.0f}")
            if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps_per_stage:
                res = self._evaluate_new_domain(stage)
                self.curves.append(
                    {
                        "step": ctx.global_step,
                        "stage": stage,
                        "stage_step": done,
                        "domain": name,
                        "val_loss": res["loss"],
                        "val_accuracy": res["accuracy"],
                        **self._stage_progress(stage),
                    }
                )
                self.loggers.curve(self.curves[-1])
            bar.update(1)
            if (
                cfg.checkpoint_every
                and ctx.global_step % cfg.checkpoint_every == 0
                and done < cfg.steps_per_stage
            ):
                self._checkpoint(stage, done)
        bar.close()

        for m in self.mechanisms:
            m.on_stage_end(ctx)
        self.flops.set_mechanisms(stage, self._mechanism_flops() - self.mech_flops_at_stage_start)
        row = self._evaluate_all(stage)
        for k in METRIC_KINDS:
            self.R[k].append(row[k])
        if cfg.eval_every:
            self.curves.append(
                {
                    "step": ctx.global_step,
                    "stage": stage,
                    "stage_step": cfg.steps_per_stage,
                    "domain": name,
                    "val_loss": row["loss"][stage],
                    "val_accuracy": row["accuracy"][stage],
                    **self._stage_progress(stage),
                }
            )
            self.loggers.curve(self.curves[-1])
        self._log_evaluation(stage + 1)
        log.info(
            "stage %d (%s) done: losses %s", stage + 1, name, [round(v, 3) for v in row["loss"]]
        )
        self._checkpoint(stage + 1, 0)
        self._write_run_json(self._record("running"))

    def _generation_samples(self) -> list[dict[str, Any]]:
        """Continuations of real validation prompts, to read what the final model writes.

        Each prompt is the first quarter of a fixed validation window of its domain; sampling
        draws from a generator seeded by the run, so the samples are reproducible.
        """
        cfg = self.cfg.train
        tok = self.stream.tokenizer
        gen = torch.Generator(device=self.generator.device).manual_seed(self.cfg.seed + 1)
        prompt_len = max(1, self.model_cfg.block_size // 4)
        out = []
        for name, es in zip(self.stream.domains, self.eval_sets, strict=True):
            rows = torch.linspace(0, es.x.shape[0] - 1, cfg.samples).long()
            prompts = es.x[rows, :prompt_len]
            with torch.inference_mode(), self.autocast():
                seqs = self.model.generate(
                    prompts, cfg.sample_tokens, cfg.sample_temperature, 50, gen
                )
            for p, seq in zip(prompts.tolist(), seqs[:, prompt_len:].tolist(), strict=True):
                out.append({"domain": name, "prompt": tok.decode(p), "completion": tok.decode(seq)})
        return out

    def _mechanism_flops(self) -> float:
        return float(sum(m.flops(self.ctx) for m in self.mechanisms))


class _scoped:
    """Enter every mechanism's ``eval_scope`` for one domain (task-ID routing, masks)."""

    def __init__(self, mechanisms: list[Any], ctx: TrainContext, domain_index: int) -> None:
        import contextlib

        self.stack = contextlib.ExitStack()
        self.items = [(m, ctx, domain_index) for m in mechanisms]

    def __enter__(self) -> None:
        for m, ctx, j in self.items:
            self.stack.enter_context(m.eval_scope(ctx, j))

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

