"""How much slower is forgetlab's training step than a bare nanoGPT-style step?

Both run the same model, data, precision and optimizer in one process, interleaved in rounds so
that the machine's drift (10-25% within minutes here) hits both alike; we report the median
milliseconds per optimizer step of each and the ratio, plus MFU against a matmul peak measured
in the same process.

    python benchmarks/trainer_overhead.py --preset tiny --precision bf16 --rounds 5 --steps 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from forgetlab.config import resolve_run_config
from forgetlab.data import sample_windows
from forgetlab.train.flops import measure_matmul_peak
from forgetlab.train.trainer import Trainer


def bare_step(trainer: Trainer) -> None:
    """nanoGPT's loop body: sample, forward under autocast, CE, backward, clip, AdamW step."""
    cfg = trainer.cfg.train
    domain = trainer.stream[trainer.stream.domains[0]]
    x, y = sample_windows(
        domain.train, trainer.state.rng.data, cfg.batch_size, trainer.model_cfg.block_size
    )
    with trainer.autocast():
        logits = trainer.steps.train_model(x)
    loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), cfg.grad_clip)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    raw = {
        "model": {"preset": args.preset},
        "data": {"domains": ["code"], "val_batches": 1},
        "train": {"precision": args.precision, "compile": args.compile},
    }
    cfg = resolve_run_config(raw, args.set)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "bench", progress=False)
        trainer._setup()
        for _ in range(3):  # warm-up both paths
            bare_step(trainer)
            trainer.steps.train_step(0)
        times: dict[str, list[float]] = {"bare": [], "forgetlab": []}
        for _ in range(args.rounds):
            for name, fn in (
                ("bare", lambda: bare_step(trainer)),
                ("forgetlab", lambda: trainer.steps.train_step(0)),
            ):
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
        peak = measure_matmul_peak(trainer.device, trainer.precision, seconds=1.0)
        tokens = cfg.train.batch_size * trainer.model_cfg.block_size
        print(
            f"preset {args.preset}, precision {trainer.precision}, compile {args.compile}, "
            f"threads {torch.get_num_threads()}, tokens/step {tokens}, peak {peak / 1e9:.0f} GFLOP/s"
        )
        for name, ts in times.items():
            med = statistics.median(ts)
            mfu = trainer.flops.train_per_token * tokens / med / peak
            print(
                f"{name:>10}: {med * 1e3:8.1f} ms/step  {tokens / med:9,.0f} tokens/s  MFU {mfu:.1%}"
            )
        ratio = statistics.median(times["forgetlab"]) / statistics.median(times["bare"])
        print(f"forgetlab / bare = {ratio:.3f}")


if __name__ == "__main__":
    main()
