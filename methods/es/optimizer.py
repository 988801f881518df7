"""ES's optimizer over the seeded update direction.

``sgd`` is the published update, θ ← θ + Σ c·ε with c = α/N · f̂ · sign. ``adam`` treats g = 1/N Σ f̂·sign·ε
as an ascent direction and keeps Adam's moments beside the weights in every engine: g is rebuilt from the seeds in
each engine, so the moments are a function of (seeds, fitness) alone and stay identical across engines, as the
weights do (the trainer compares their checksums after every update). A checkpoint holds engine 0's moments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class AdamStep:
    """One Adam step: the learning rate (ES's ``alpha``), its betas and epsilon, and the step number t ≥ 1 (bias
    correction)."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    t: int


class AdamMoments:
    """First and second moments (fp32) for a list of weight tensors, and a gradient buffer of the same shapes
    (kept, so that the noise's fused kernel sees the same addresses every step)."""

    def __init__(self, views: Sequence[tuple[str, torch.Tensor]]):
        def zeros() -> list[torch.Tensor]:
            return [torch.zeros(v.shape, dtype=torch.float32, device=v.device) for _, v in views]

        self.names = [n for n, _ in views]
        self.m, self.v, self.g = zeros(), zeros(), zeros()
        self.grad_views = list(zip(self.names, self.g))

    @torch.no_grad()
    def step_(self, views: Sequence[tuple[str, torch.Tensor]], step: AdamStep) -> None:
        """θ += lr · m̂ / (√v̂ + eps), from the direction already accumulated in ``g`` (which is cleared)."""
        m, v, g = self.m, self.v, self.g
        torch._foreach_mul_(m, step.beta1)
        torch._foreach_add_(m, g, alpha=1 - step.beta1)
        torch._foreach_mul_(v, step.beta2)
        torch._foreach_addcmul_(v, g, g, value=1 - step.beta2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, math.sqrt(1 - step.beta2 ** step.t))
        torch._foreach_add_(denom, step.eps)
        updates = torch._foreach_div(m, denom)
        torch._foreach_mul_(updates, step.lr / (1 - step.beta1 ** step.t))
        for (_, w), u in zip(views, updates):  # fp32 sum, one rounding into a low-precision weight
            w.copy_((w.float() + u).to(w.dtype))
        torch._foreach_zero_(g)

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"m.{n}": t.detach().cpu().contiguous() for n, t in zip(self.names, self.m)}
        out.update({f"v.{n}": t.detach().cpu().contiguous() for n, t in zip(self.names, self.v)})
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [k for n in self.names for k in (f"m.{n}", f"v.{n}") if k not in state]
        if missing:
            raise ValueError(f"the optimizer state lacks {len(missing)} tensors (first: {missing[0]})")
        with torch.no_grad():
            for n, m, v in zip(self.names, self.m, self.v):
                m.copy_(state[f"m.{n}"])
                v.copy_(state[f"v.{n}"])
