"""When is a fact "trained enough"? When a question about it that training never saw stops getting easier.

``training.stopping: held_back`` holds back, per fact, one of its question variants (a generated question
where there is one, else a rule variant, :data:`HOLD_BACK_ORDER`) and scores, every
``stop_check_every`` steps, the held-back questions' replies teacher-forced on their fact tokens only
(cheap: one forward, no generation). Training stops after ``stop_patience`` scorings without
improvement, and the weights of the best scoring are the ones published. The loss on trained questions
keeps falling long after recall of new phrasings has stopped rising (and forgetting keeps growing), so
this is what ``early_stop_loss`` could not say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from private_finetuning.data.chat import IGNORE_INDEX, Encoded

if TYPE_CHECKING:
    from private_finetuning.data.record import Record

# Which variant of a fact is held back, best first: a generated question is a new wording, as a user's would
# be; a rule variant is the next best (the wrapper and statement variants repeat the question or the reply).
HOLD_BACK_ORDER = ("generated_question", "imperative", "reorder", "keywords")
MIN_IMPROVEMENT = 0.005  # relative: a scoring lower than the best by less than this is not an improvement


def hold_back(train: list[Record]) -> tuple[list[Record], list[Record]]:
    """(what is trained, what is held back): per fact, the one variant first in :data:`HOLD_BACK_ORDER`."""
    chosen: dict[object, tuple[int, int]] = {}  # fact_id -> (rank in the order, index in train)
    for i, record in enumerate(train):
        fact, variant = record.meta.get("fact_id"), record.variant
        if fact is None or variant not in HOLD_BACK_ORDER:
            continue
        rank = HOLD_BACK_ORDER.index(variant)
        if fact not in chosen or rank < chosen[fact][0]:
            chosen[fact] = (rank, i)
    held = {i for _, i in chosen.values()}
    return [r for i, r in enumerate(train) if i not in held], [train[i] for i in sorted(held)]


def fact_tokens_only(example: Encoded) -> Encoded:
    """The example scored on the tokens that state its fact (weighted above 1), or its whole reply if none are."""
    if example.weights is None or not any(w > 1 for w in example.weights):
        return example
    labels = [label if w > 1 else IGNORE_INDEX for label, w in zip(example.labels, example.weights, strict=True)]
    return Encoded(example.input_ids, labels, None)


@dataclass
class StopRule:
    """The best held-back score so far and how many scorings have not beaten it (kept in the checkpoint)."""

    patience: int
    best: float = math.inf
    best_step: int = 0
    since_best: int = 0
    checks: int = 0

    def observe(self, step: int, loss: float) -> bool:
        """Record one scoring; True when it is the best so far (its weights are then kept)."""
        self.checks += 1
        if loss < self.best * (1 - MIN_IMPROVEMENT):
            self.best, self.best_step, self.since_best = loss, step, 0
            return True
        self.since_best += 1
        return False

    @property
    def done(self) -> bool:
        return self.since_best >= self.patience
