"""The budget contract: runs are bounded by completions scored (optionally tokens and wall-clock)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from harness.config import StrictModel


class BudgetConfig(StrictModel):
    completions: int = Field(1500, gt=0)  # completions scored for training: the unit every method shares
    max_tokens: int | None = Field(None, gt=0)
    max_seconds: float | None = Field(None, gt=0)  # training wall-clock
    max_gpu_seconds: float | None = Field(None, gt=0)  # training wall-clock × GPUs the method holds
    eval_every_fraction: float = Field(0.1, gt=0, le=1)  # evaluations at the same budget points for all methods


@dataclass
class Budget:
    cfg: BudgetConfig
    completions: int = 0
    tokens: int = 0
    seconds: float = 0.0  # training wall-clock so far (kept current by the run context)
    gpus: int = 0  # accelerators the method holds (set by the method; 0 on CPU)

    @property
    def gpu_seconds(self) -> float:
        return self.seconds * self.gpus

    def spend(self, completions: int, tokens: int) -> None:
        self.completions += completions
        self.tokens += tokens

    @property
    def exhausted(self) -> bool:
        c = self.cfg
        return (self.completions >= c.completions
                or (c.max_tokens is not None and self.tokens >= c.max_tokens)
                or (c.max_seconds is not None and self.seconds >= c.max_seconds)
                or (c.max_gpu_seconds is not None and self.gpus > 0 and self.gpu_seconds >= c.max_gpu_seconds))

    def eval_points(self) -> list[int]:
        """Completions-scored marks at which every method evaluates: 0 (the start) up to the full budget."""
        n = max(1, round(1 / self.cfg.eval_every_fraction))
        return sorted({round(self.cfg.completions * k / n) for k in range(0, n + 1)})

    def evals_due(self, done: set[int]) -> list[int]:
        """Eval marks passed by the spend so far and not yet evaluated (the final one once exhausted)."""
        marks = self.eval_points()
        due = [p for p in marks if p <= self.completions and p not in done]
        if self.exhausted and marks[-1] not in done and marks[-1] not in due:  # stopped by tokens or seconds
            due.append(marks[-1])
        return due
