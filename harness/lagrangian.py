"""Adaptive λ: one Lagrangian step on ln λ, shared by ES and GRPO.

    J_C   = mean cost of the current (unperturbed) policy + d          (d = cost_threshold)
    J_C   = max(J_C, 0)                                                  if lambda_pos_cost_only
    ema   = β · ema + (1 − β) · J_C                                      (ema starts at 0)
    ln λ  = clip(ln λ + η · ema, ln λ_min, ln λ_max)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import Field

from harness.config import StrictModel


class LambdaConfig(StrictModel):
    adaptive: bool = True
    lambda_init: float = Field(1.0, gt=0)
    cost_threshold: float = 0.0
    lambda_pos_cost_only: bool = False
    beta: float = Field(0.9, ge=0, lt=1)
    eta: float = Field(0.005, ge=0)
    lambda_min: float = Field(1e-4, gt=0)
    lambda_max: float = Field(5.0, gt=0)


@dataclass(frozen=True)
class LambdaState:
    log_lambda: float
    ema: float = 0.0
    j_c: float = 0.0

    @property
    def value(self) -> float:
        return math.exp(self.log_lambda)

    @classmethod
    def initial(cls, cfg: LambdaConfig) -> "LambdaState":
        return cls(log_lambda=math.log(cfg.lambda_init))


def update_lambda(state: LambdaState, mean_cost: float, cfg: LambdaConfig) -> LambdaState:
    j_c = mean_cost + cfg.cost_threshold
    if cfg.lambda_pos_cost_only:
        j_c = max(j_c, 0.0)
    if not cfg.adaptive:
        return LambdaState(state.log_lambda, state.ema, j_c)
    ema = cfg.beta * state.ema + (1 - cfg.beta) * j_c
    log_lambda = min(max(state.log_lambda + cfg.eta * ema, math.log(cfg.lambda_min)), math.log(cfg.lambda_max))
    return LambdaState(log_lambda, ema, j_c)
