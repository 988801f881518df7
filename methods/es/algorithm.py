"""The ES math, engine-free. Check it against the README:

    members      (seed_i, s_i), s_i = +1 (or ±1 pairs when antithetic)      θ_i = θ + s_i · σ · ε(seed_i)
    fitness      f_i = mean R_i − λ · mean C_i
    normalized   f̂_i = (f_i − mean f) / std f          (or centered ranks in [−0.5, 0.5])
    update       θ ← θ + α/N · Σ_i f̂_i · s_i · ε(seed_i)
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

SEED_SPACE = 2**31 - 1


def iteration_members(run_seed: int, iteration: int, population: int, antithetic: bool) -> list[tuple[int, int]]:
    """(noise seed, sign) per population member; a pure function of (run seed, iteration) so that a
    resumed run draws exactly the members the uninterrupted one would."""
    rng = np.random.default_rng([run_seed, iteration])
    if antithetic:
        if population % 2:
            raise ValueError("antithetic sampling needs an even population")
        seeds = rng.integers(0, SEED_SPACE, size=population // 2)
        return [(int(s), sign) for s in seeds for sign in (1, -1)]
    return [(int(s), 1) for s in rng.integers(0, SEED_SPACE, size=population)]


def standardize(x: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """(x − mean) / (std + eps), population std; eps 0 and all values equal: zeros."""
    std = x.std()
    if eps == 0.0 and std == 0:
        return np.zeros_like(x)
    return (x - x.mean()) / (std + eps)


def fitness(rewards: Sequence[Sequence[float]], costs: Sequence[Sequence[float]], lam: float,
            safe_first_factor: float | None = None, standardize_rc: bool = False) -> np.ndarray:
    """f_i = mean R_i − λ mean C_i per member (rows: members, columns: prompts).

    ``safe_first_factor``: rewards of unsafe completions (C > 0) are multiplied by it before averaging.
    ``standardize_rc``: R and C are standardized over the whole batch first, so λ trades like with like.
    """
    r = np.asarray(rewards, dtype=np.float64)
    c = np.asarray(costs, dtype=np.float64)
    if safe_first_factor is not None:
        r = np.where(c > 0, r * safe_first_factor, r)
    if standardize_rc:
        r, c = standardize(r.ravel()).reshape(r.shape), standardize(c.ravel()).reshape(c.shape)
    return r.mean(axis=1) - lam * c.mean(axis=1)


def centered_ranks(f: np.ndarray) -> np.ndarray:
    """Ranks mapped to [−0.5, 0.5] (ties broken by order), as in Salimans et al. 2017."""
    ranks = np.empty(len(f), dtype=np.float64)
    ranks[np.argsort(f, kind="stable")] = np.arange(len(f))
    return ranks / max(len(f) - 1, 1) - 0.5


def normalize(f: np.ndarray, shaping: Literal["zscore", "centered_rank"] = "zscore", eps: float = 0.0) -> np.ndarray:
    return centered_ranks(f) if shaping == "centered_rank" else standardize(f, eps)


def published_prompt_indices(run_seed: int, iteration: int, n_train: int, k: int) -> list[int]:
    """The published ES's draw of an iteration's prompts (``random.Random(seed * 100000 + i).sample``, its seed
    0 read as 42 by ``args.global_seed or 42``): all prompts in order when k is not below their number."""
    import random

    if k >= n_train:
        return list(range(n_train))
    return random.Random((run_seed or 42) * 100000 + iteration).sample(range(n_train), k)


def update_coefficients(members: Sequence[tuple[int, int]], f_hat: np.ndarray, alpha: float) -> list[tuple[int, float]]:
    """Per noise seed, the coefficient c of ε(seed) in θ ← θ + Σ c · ε(seed); mirrored pairs merge."""
    n = len(members)
    coeffs: dict[int, float] = {}
    for (seed, sign), fh in zip(members, f_hat):
        coeffs[seed] = coeffs.get(seed, 0.0) + alpha / n * float(fh) * sign
    return list(coeffs.items())
