"""Guarding a run against non-finite losses and gradients: such a step is skipped (no optimizer, LR-schedule or EMA
update), counted and logged; too many in a row stop the run; no save ever holds a non-finite weight."""

import math
from typing import Iterable, Optional

import torch

from .sharding import all_finite_everywhere


class NonFiniteError(RuntimeError):
    """The run diverged: its loss or gradients stayed non-finite, or a weight about to be saved is not finite."""


class NonFiniteGuard:
    """Counts the optimisation steps whose loss or gradient norm was not finite, in a row and in all.

    `check_step` is called once per optimisation step with the loss (summed over processes) and the gradient norm;
    it returns whether the step may update the weights, and raises `NonFiniteError` once more than
    `max_consecutive` steps in a row were not finite, naming the last checkpoint saved before."""

    def __init__(self, max_consecutive: int):
        if max_consecutive < 0:
            raise ValueError(f"--max_nonfinite_steps must be >= 0, got {max_consecutive}.")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped = 0
        self.last_checkpoint: Optional[str] = None  # set by the loop after each save

    def check_step(self, step: int, loss: float, grad_norm: float) -> bool:
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.skipped += 1
        if self.consecutive > self.max_consecutive:
            raise NonFiniteError(
                f"Step {step}: the loss ({loss}) or the gradient norm ({grad_norm}) was not finite for "
                f"{self.consecutive} steps in a row (more than --max_nonfinite_steps={self.max_consecutive}): the run "
                f"diverged. Last good checkpoint: {self.last_checkpoint or 'none saved yet'}. Lower --learning_rate, "
                "set --max_grad_norm or --lr_warmup_steps, and resume from it."
            )
        return False

    def check_weights(self, tensors: Iterable[torch.Tensor], what: str) -> None:
        """Refuse to save non-finite weights (`what` says which save)."""
        if not all_finite_everywhere(tensors):  # (under FSDP: every shard, every process agreeing)
            raise NonFiniteError(
                f"Not saving {what}: some weights are not finite. Last good checkpoint: "
                f"{self.last_checkpoint or 'none saved yet'}."
            )
