"""The unigram floor: is each just-learned loss clearly below the domain's unigram baseline?

A model whose loss on a domain, right after the stage that trained on it (``L[j][j]``), sits at or
near the loss of a unigram model fitted on that domain has learned little beyond word
frequencies; the "forgetting" of that domain measured afterwards is then largely the frequency
prior moving to the next domain (docs/metrics.md, "The unigram baseline"; docs/sizing.md has the
measurements). ``forgetlab show`` and the report warn in words about every such domain.
:data:`UNIGRAM_MARGIN` is the one threshold both use.

A joint-training run (``train.joint``) reads every domain in every stage, so it has no
"just-learned" loss; its final row (after the whole mixture) is judged instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

UNIGRAM_MARGIN = 0.5
"""Nats per token a just-learned loss must sit below its domain's unigram loss to count as
clearly below it (docs/sizing.md: from a random model, 30 steps per stage sat at the unigram
level, 60 steps 0.5-1.0 below it)."""


@dataclass(frozen=True)
class Shortfall:
    """One domain whose just-learned loss is not clearly below its unigram loss."""

    domain: str
    just_learned: float
    unigram: float
    when: str = "right after learning it"
    """Which loss was judged: the just-learned one, or a joint run's final one."""

    @property
    def margin(self) -> float:
        """Unigram loss minus the just-learned loss (nats; negative when above the unigram)."""
        return self.unigram - self.just_learned

    def sentence(self) -> str:
        """The warning in words."""
        where = (
            f"only {self.margin:.2f} nats below"
            if self.margin > 0
            else f"{-self.margin:.2f} nats above"
        )
        return (
            f"{self.domain}: the loss {self.when}, {self.just_learned:.3f}, is {where} "
            f"its unigram baseline {self.unigram:.3f} (clearly below means at least "
            f"{UNIGRAM_MARGIN:.1f}): the model learned little beyond {self.domain}'s word "
            f"frequencies, so its forgetting of {self.domain} is largely the frequency prior moving"
        )


def shortfalls(record: Mapping[str, Any]) -> list[Shortfall]:
    """The stream domains of a run.json whose just-learned loss ``R.loss[j+1][j]`` (a joint run:
    its final loss ``R.loss[T][j]``) is less than :data:`UNIGRAM_MARGIN` below their unigram loss;
    empty when the record has no unigram baseline or no finished stage of a domain (nothing to
    judge)."""
    domains: Sequence[str] = record.get("domains") or []
    loss = (record.get("R") or {}).get("loss") or []
    unigram = ((record.get("unigram") or {}).get("loss")) or []
    joint = ((record.get("config") or {}).get("train") or {}).get("joint")
    if joint and len(loss) <= len(domains):
        return []  # a joint run is judged at its end only
    when = "at the end of the joint run" if joint else "right after learning it"
    out = []
    for j, domain in enumerate(domains):
        row = len(domains) if joint else j + 1
        if row >= len(loss) or j >= len(unigram) or j >= len(loss[row]):
            continue
        learned, floor = loss[row][j], unigram[j]
        if learned is None or floor is None:
            continue
        if floor - learned < UNIGRAM_MARGIN:
            out.append(Shortfall(domain, float(learned), float(floor), when))
    return out
