"""A stage's progress bar on the terminal: steps done, the last logged loss and throughput.

Drawn only on a terminal and only by rank 0: a redirected log gets the logged lines, not tqdm's
carriage-return frames, and torchrun's other ranks stay quiet.
"""

from __future__ import annotations

from tqdm.auto import tqdm


class StageProgress:
    """The bar of one stage, from ``initial`` (a resume's step, else 0) to ``total`` steps."""

    def __init__(self, desc: str, total: int, initial: int, enabled: bool) -> None:
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            disable=None if enabled else True,  # None: tqdm draws only on a terminal
            leave=True,
            dynamic_ncols=True,
        )

    def show(self, stats: dict[str, float]) -> None:
        """The loss and tokens per second of the step just logged."""
        self.bar.set_postfix(loss=f"{stats['train_loss']:.3f}", tok_s=f"{stats['tokens_per_s']:,.0f}")

    def update(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
