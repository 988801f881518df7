"""Adaptive λ: one Lagrangian step on ln λ, shared by ES and GRPO.

    J_C   = mean cost of the current (unperturbed) policy + d          (d = cost_threshold)
    J_C   = max(J_C, 0)                                                  if lambda_pos_cost_only
    ema   = β · ema + (1 − β) · J_C                                      (ema_init zero: ema starts at 0;
                                                                          first: the first step sets ema = J_C)
    ln λ  = clip(ln λ + η · ema, ln λ_min, ln λ_max)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from harness.config import StrictModel, renamed


class LambdaConfig(StrictModel):
    adaptive: bool = True
    lambda_init: float = Field(1.0, gt=0)
    cost_threshold: float = 0.0
    lambda_pos_cost_only: bool = False
    ema_beta: float = Field(0.9, ge=0, lt=1)  # the EMA factor of J_C (GRPO's KL weight is its own `beta`)
    eta: float = Field(0.005, ge=0)
    lambda_min: float = Field(1e-4, gt=0)
    lambda_max: float = Field(5.0, gt=0)
    # zero: a bias-free start at 0 (λ moves slowly at first); first: the published runs' rule, ema = J_C at step 1
    ema_init: Literal["zero", "first"] = "zero"

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return renamed(data, "beta", "ema_beta", "lambda.")

    @model_validator(mode="after")
    def _bounds(self) -> "LambdaConfig":
        if self.lambda_min > self.lambda_max:
            raise ValueError(f"lambda_min {self.lambda_min} is above lambda_max {self.lambda_max}")
        if not self.lambda_min <= self.lambda_init <= self.lambda_max:
            raise ValueError(f"lambda_init {self.lambda_init} is outside [lambda_min, lambda_max]")
        return self


@dataclass(frozen=True)
class LambdaState:
    log_lambda: float
    ema: float = 0.0
    j_c: float = 0.0
    updates: int = 0  # λ steps taken so far

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
        return LambdaState(state.log_lambda, state.ema, j_c, state.updates + 1)
    if cfg.ema_init == "first" and state.updates == 0:
        ema = j_c
    else:
        ema = cfg.ema_beta * state.ema + (1 - cfg.ema_beta) * j_c
    log_lambda = min(max(state.log_lambda + cfg.eta * ema, math.log(cfg.lambda_min)), math.log(cfg.lambda_max))
    return LambdaState(log_lambda, ema, j_c, state.updates + 1)
