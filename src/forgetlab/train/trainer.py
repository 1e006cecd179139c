"""The continual trainer: walk a stream of domains, evaluate every domain after every stage.

For each stage ``s`` (domain ``s`` of the stream) the trainer runs ``steps_per_stage`` optimizer
steps on that domain's train split (each one :class:`~forgetlab.train.step.StepRunner`'s, which
calls the mechanisms' step hooks), with their stage hooks at the stage's ends, then evaluates
every domain on fixed validation windows, filling row ``s + 1`` of the R matrices (row 0 is the
model before training). Checkpoints at every stage end (and every ``checkpoint_every`` steps) hold
everything needed to resume exactly (:class:`~forgetlab.train.state.RunState`): a resumed run ends
with the same numbers, bit for bit on the same machine, as one that never stopped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forgetlab.analysis.columns import KINDS as METRIC_KINDS
from forgetlab.analysis.curves import train_seconds
from forgetlab.atomic import DiskFullError
from forgetlab.config import ModelConfig, RunConfig
from forgetlab.data import Stream, open_stream, stage_sources
from forgetlab.mechanisms import TrainContext, build_mechanisms
from forgetlab.models import GPT, model_flops_per_token
from forgetlab.models.init import build_run_model, run_vocab_size
from forgetlab.train.base_model import start_model
from forgetlab.train.checkpoint import first_non_finite, load_checkpoint, save_checkpoint
from forgetlab.train.device import autocast_factory, resolve_device, resolve_precision
from forgetlab.train.distributed import DistInfo, init_distributed, shutdown_distributed
from forgetlab.train.evaluate import EvalSet, domain_eval_sets, evaluate, generation_samples
from forgetlab.train.failures import run_failure
from forgetlab.train.flops import FlopsAccount, mechanism_flops, peak_flops
from forgetlab.train.loggers import Loggers, check_packages, r_row
from forgetlab.train.optim import build_optimizer
from forgetlab.train.probes import Probes
from forgetlab.train.progress import StageProgress
from forgetlab.train.record import run_record
from forgetlab.train.rundir import RunDir, config_hash
from forgetlab.train.schedule import checkpoint_due, eval_due, log_due, lr_at
from forgetlab.train.state import Cursor, MechanismStates, RunRandomness, RunState
from forgetlab.train.step import StepRunner
from forgetlab.train.timing import PhaseTimer, TokenRate

log = logging.getLogger("forgetlab.train")


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
        self.resume = False  # whether the directory holds a checkpoint of this config

        # Built by _setup() when run() starts, under the directory's lock:
        self.dist: DistInfo  # torchrun's rank and world size (one process: rank 0 of 1)
        self.device: torch.device
        self.precision: str  # fp32 | bf16 | fp16, resolved for the device
        self.autocast: Callable[[], contextlib.AbstractContextManager[Any]]
        self.stream: Stream
        self.model: GPT
        self.model_cfg: ModelConfig  # the model's resolved config (vocabulary, block size)
        self.optimizer: torch.optim.Optimizer
        self.eval_sets: list[EvalSet] = []  # fixed validation windows, one per domain
        self.unigram: dict[str, dict[str, float]] = {}  # per domain, the unigram baseline
        self.probes: Probes  # data.probes: evaluated with every R row, never trained on
        self.flops: FlopsAccount
        self.peak: tuple[float | None, str]  # the device's peak FLOP/s for MFU, and its source
        self.timer: PhaseTimer
        self.ctx: TrainContext  # what mechanisms see of the run
        self.state: RunState  # everything a checkpoint saves
        self.steps: StepRunner  # the training step: forward, hooks, backward, optimizer
        if self.run_dir.root.is_dir():
            self._claim()
        else:
            self.resume = self.run_dir.check_usable(cfg)

    def _claim(self) -> None:
        owner = int(os.environ.get("RANK", "0")) == 0  # under torchrun rank 0 owns the directory
        self.resume = self.run_dir.claim(self.lock, self.cfg, owner)

    # ----------------------------------------------------------------------------- setup
    def _setup(self) -> None:
        """Device, seeds, data, model, optimizer, evaluation sets, the run's state and step."""
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
        self.sources = stage_sources(self.stream, cfg.train.joint)  # joint: one mixture for all
        self._build_model()
        self._build_eval_sets()
        per_tok = model_flops_per_token(self.model_cfg, self.model_cfg.block_size)
        self.flops = FlopsAccount(per_tok["train"], per_tok["forward"])
        self.peak = peak_flops(self.device, self.precision)
        self.timer = PhaseTimer(self.device)
        gen_device = self.device if self.device.type == "cuda" else "cpu"
        generator = torch.Generator(device=gen_device).manual_seed(cfg.seed)
        self.ctx = TrainContext(
            config=cfg, model=self.model, optimizer=self.optimizer, stream=self.stream,
            device=self.device, autocast=self.autocast, generator=generator,
        )
        self.state = self._fresh_state(generator)
        self.steps = StepRunner(
            self.model, self.mechanisms, self.ctx, self.state, self.sources, self.dist,
            self.run_dir,
        )
        self.ctx.extra_step = self.steps.extra_step  # mechanisms' extra steps are steps too

    def _fresh_state(self, generator: torch.Generator) -> RunState:
        """The state of a run before its first step (a resume then loads its checkpoint)."""
        seed = self.cfg.seed
        return RunState(
            config_hash=config_hash(self.cfg),
            cursor=Cursor(),
            optimizer=self.optimizer,
            rng=RunRandomness(generator, np.random.default_rng([seed, 0]), self.device),
            R={k: [] for k in METRIC_KINDS},
            probes_R=self.probes,
            curves=[],
            flops=self.flops,
            timing=self.timer,
            mech_flops_at_stage_start=0.0,
            mechanisms=MechanismStates(self.mechanisms),
            new_data_per_domain=dict.fromkeys(self.stream.domains, 0),
            started=datetime.now(timezone.utc).isoformat(),
        )

    def _build_model(self) -> None:
        """The model (``model.init``'s weights unless resuming) and its optimizer."""
        tok = self.stream.tokenizer
        vocab = run_vocab_size(self.cfg.model.vocab_size, tok)
        start, self.base_record = start_model(self.cfg, self.resume)  # [base_model]: its init
        self.model = build_run_model(start, vocab, tok, not self.resume).to(self.device)
        self.model_cfg = self.model.config
        self.optimizer = build_optimizer(self.model, self.cfg)

    def _build_eval_sets(self) -> None:
        """Fixed validation windows and unigram baselines of the stream's domains and of
        ``data.probes`` (opened apart from the stream, which is all the training context holds)."""
        block, vocab = self.model_cfg.block_size, self.model_cfg.vocab_size
        token_bytes = self.stream.tokenizer.token_byte_lengths()
        n_windows = self.cfg.data.val_batches * self.cfg.train.batch_size
        self.eval_sets, self.unigram = domain_eval_sets(
            self.stream, token_bytes, n_windows, block, vocab, self.device
        )
        self.probes = Probes.open(self.cfg.data, token_bytes, n_windows, block, vocab, self.device)

    # ---------------------------------------------------------------------------- evaluation
    def _evaluate_all(self, stage_for_accounting: int) -> dict[str, list[float]]:
        """Every stream domain's scores (returned) and every probe's (its next R row)."""
        n = len(self.eval_sets)
        row = self._evaluate(range(n + len(self.probes.eval_sets)), stage_for_accounting)
        self.probes.add_row({k: v[n:] for k, v in row.items()})
        return {k: v[:n] for k, v in row.items()}

    def _evaluate(self, domains: Sequence[int], stage: int) -> dict[str, list[float]]:
        """Loss, bits per byte and accuracy on each of ``domains`` (indices into the stream's
        domains, then the probes), inside the mechanisms' evaluation scopes, FLOPs and time
        charged to ``stage``. Non-finite results are never written as R: the run fails instead."""
        t0 = time.perf_counter()
        n = len(self.eval_sets)
        sets = [*self.eval_sets, *self.probes.eval_sets]
        names = [*self.stream.domains, *self.probes.names]
        row: dict[str, list[float]] = {k: [] for k in METRIC_KINDS}
        for j in domains:
            es = sets[j]
            with _eval_scopes(self.mechanisms, self.ctx, min(j, n)):  # a probe: as the model stands
                res = evaluate(self.model, es, self.cfg.data.eval_batch_size, self.autocast)
            for k in METRIC_KINDS:
                row[k].append(res[k])
            self.flops.add_eval(stage, es.n_tokens)
        self.timer.add(stage, "eval", t0)
        for kind, values in row.items():
            for j, v in zip(domains, values, strict=True):
                if not math.isfinite(v):
                    where = f"the evaluation {kind} on '{names[j]}'"
                    raise self.steps.diverged(where, v, after=True)
        return row

    def _add_r_row(self, row: dict[str, list[float]]) -> None:
        for k in METRIC_KINDS:
            self.state.R[k].append(row[k])

    # ------------------------------------------------------------------------------ records
    def _curve_row(
        self, stage: int, stage_step: int, values: dict[str, Any], domain: str | None = None
    ) -> dict[str, Any]:
        """Append one row to the curves (and the loggers): where the run is, then ``values``.
        ``domain`` names what the row measures: the evaluated domain, else what the stage trains
        on (its domain, or joint training's mixture, never one domain of it)."""
        row = {
            "step": self.ctx.global_step,
            "stage": stage,
            "stage_step": stage_step,
            "domain": domain or self.sources[stage].label,
            **values,
        }
        self.state.curves.append(row)
        self.loggers.curve(row)
        return row

    def _eval_curve_row(self, stage: int, stage_step: int, loss: float, accuracy: float) -> None:
        """An evaluation of the stage's own domain, with the training it took to get there
        (tokens, and seconds of every phase but evaluation): time to target reads these."""
        self._curve_row(stage, stage_step, {
            "val_loss": loss,
            "val_accuracy": accuracy,
            "train_tokens": self.flops.stages[stage]["train_tokens"],
            "train_s": train_seconds(self.timer.stages[stage]),
        }, domain=self.stream.domains[stage])

    def _record(
        self, status: str, error: str | None = None, failure: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The run.json document (see :func:`~forgetlab.train.record.run_record`)."""
        return run_record(
            self.state, status=status, error=error, failure=failure, cfg=self.cfg,
            model=self.model, mechanisms=self.mechanisms, stream=self.stream,
            precision=self.precision, unigram=self.unigram,
            eval_tokens=[es.n_tokens for es in self.eval_sets], peak=self.peak,
            devices=self.dist.world_size, device=self.device, probes=self.probes,
            loggers=self.loggers.report(), base_model=self.base_record,
        )

    def _write_run_json(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:  # under torchrun only rank 0 owns the run directory
            self.run_dir.write_run_json(record)

    def _write_curves(self) -> None:
        if self.dist.is_main:
            self.run_dir.write_curves(self.state.curves)

    # -------------------------------------------------------------------------- persistence
    def _checkpoint(self, stage: int, step: int) -> None:
        """Save the run to resume at ``step`` of ``stage`` (rank 0; every weight finite)."""
        if not self.dist.is_main:
            return
        bad = first_non_finite(self.model.state_dict())  # so every checkpoint on disk is finite
        if bad:
            raise self.steps.diverged(f"weight {bad}", "not finite", after=True)
        self.state.cursor = Cursor(stage, step, self.ctx.global_step)
        save_checkpoint(self.run_dir, self.model, self.state.state_dict(), self.ctx.global_step)
        self._write_curves()

    def _restore(self) -> tuple[int, int]:
        """Load the newest intact checkpoint; the (stage, step) it resumes at."""
        state = load_checkpoint(self.run_dir, self.model)
        self.state.load_state_dict(state, where=str(self.run_dir.checkpoints))
        if "new_data_per_domain" not in state:  # older checkpoint: stage s read domain s
            for d, stage in zip(self.stream.domains, self.flops.stages, strict=False):
                self.state.new_data_per_domain[d] = int(stage["train_tokens"])
        cursor = self.state.cursor
        self.ctx.global_step = cursor.global_step
        return cursor.stage, cursor.step

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
            self._record_failure(e)
            raise
        finally:
            self.loggers.close(status)
            shutdown_distributed(self.dist, finished=status == "finished")
            self.lock.release()
        return record

    def _record_failure(self, e: BaseException) -> None:
        """Mark run.json failed with what happened; a full disk is raised as what it is."""
        known = run_failure(e)  # divergence, disk full: one line that says what to do
        err, failure = known or (f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}", None)
        try:
            self._write_run_json(self._record("failed", err, failure))
        except DiskFullError as full:
            note = f"{self.run_dir.run_json} could not be marked failed either"
            raise DiskFullError(failure["path"] if failure else full.path, note) from None
        if failure and failure["kind"] == "disk_full" and not isinstance(e, DiskFullError):
            raise DiskFullError(failure["path"] or self.run_dir.root) from None

    def _run(self) -> dict[str, Any]:
        n_stages = len(self.stream.domains)
        self.run_dir.root.mkdir(parents=True, exist_ok=True)
        for m in self.mechanisms:
            m.attach(self.ctx)
        if self.resume:
            stage0, step0 = self._restore()
            log.info("resuming %s at stage %d step %d", self.run_dir.root, stage0, step0)
        resumed_at = self.ctx.global_step if self.resume else None
        self.loggers = Loggers.open(self.cfg, self.run_dir.root, resumed_at, self.dist.is_main)
        if not self.resume:
            stage0, step0 = 0, 0
            self._add_r_row(self._evaluate_all(0))
            self._log_evaluation(0)
        self._write_run_json(self._record("running"))

        for stage in range(stage0, n_stages):
            self._run_stage(stage, step0 if stage == stage0 else 0, n_stages)
        record = self._record("finished")
        if self.cfg.train.samples:
            record["samples"] = generation_samples(
                self.model, self.stream.domains, self.eval_sets, self.stream.tokenizer,
                self.cfg.train, self.cfg.seed + 1, self.autocast, self.ctx.generator.device,
            )
        self.loggers.final(self.ctx.global_step, record)
        record["loggers"] = self.loggers.report()
        self._write_curves()
        self._write_run_json(record)
        return record

    def _log_evaluation(self, row: int) -> None:
        """Row ``row`` of R, the stream's domains and the probes' columns, to the loggers."""
        tables = [(self.state.R, list(self.stream.domains)), (self.probes.R, self.probes.names)]
        self.loggers.evaluation(self.ctx.global_step, r_row(row, *tables))

    def _run_stage(self, stage: int, start_step: int, n_stages: int) -> None:
        """Train on ``stage``'s domain from ``start_step`` (a resume's, else 0), then end it."""
        cfg, ctx = self.cfg.train, self.ctx
        ctx.stage = stage
        if start_step == 0:
            self._start_stage(stage)
        self.steps.wrap()  # mechanisms may have frozen weights (or a resume restored that)
        desc = f"stage {stage + 1}/{n_stages} {self.sources[stage].label}"
        bar = StageProgress(desc, cfg.steps_per_stage, start_step,
                            self.progress and self.dist.is_main)
        rate = TokenRate()
        for step in range(start_step, cfg.steps_per_stage):
            ctx.step = step
            lr = lr_at(cfg, stage, step, n_stages)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            stats = self.steps.train_step(stage)
            ctx.global_step += 1
            rate.add(stats.pop("tokens"))
            done = step + 1
            if log_due(cfg, done):
                stats = {"lr": lr, "tokens_per_s": rate.take(), **stats}
                self._curve_row(stage, done, {**stats, **ctx.log})  # and mechanisms' scalars
                bar.show(stats)
            if eval_due(cfg, done):
                res = self._evaluate([stage], stage)
                self._eval_curve_row(stage, done, res["loss"][0], res["accuracy"][0])
            bar.update()
            if checkpoint_due(cfg, ctx.global_step, done):
                self._checkpoint(stage, done)
        bar.close()
        self._end_stage(stage)

    def _start_stage(self, stage: int) -> None:
        """A fresh stage: its own batch stream, the mechanisms' stage-start hooks, and their
        FLOP meters read so that the stage's share can be told apart at its end."""
        self.state.rng.reseed_data(self.cfg.seed, stage)
        for m in self.mechanisms:
            m.on_stage_start(self.ctx)
        self.state.mech_flops_at_stage_start = mechanism_flops(self.mechanisms, self.ctx)

    def _end_stage(self, stage: int) -> None:
        """The stage's end: mechanisms' hooks, every domain evaluated into R, a checkpoint."""
        name = self.sources[stage].label  # its domain, or joint training's mixture
        for m in self.mechanisms:
            m.on_stage_end(self.ctx)
        spent = mechanism_flops(self.mechanisms, self.ctx) - self.state.mech_flops_at_stage_start
        self.flops.set_mechanisms(stage, spent)
        row = self._evaluate_all(stage)
        self._add_r_row(row)
        if self.cfg.train.eval_every:
            steps = self.cfg.train.steps_per_stage
            self._eval_curve_row(stage, steps, row["loss"][stage], row["accuracy"][stage])
        self._log_evaluation(stage + 1)
        log.info(
            "stage %d (%s) done: losses %s", stage + 1, name, [round(v, 3) for v in row["loss"]]
        )
        self._checkpoint(stage + 1, 0)
        self._write_run_json(self._record("running"))


@contextlib.contextmanager
def _eval_scopes(mechanisms: list[Any], ctx: TrainContext, domain_index: int) -> Iterator[None]:
    """Enter every mechanism's ``eval_scope`` for one domain (task-ID routing, masks)."""
    with contextlib.ExitStack() as stack:
        for m in mechanisms:
            stack.enter_context(m.eval_scope(ctx, domain_index))
        yield
