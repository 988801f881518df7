"""Scorer throughput: pairs/s through the HTTP service against the raw forward passes of the same two models
on the same pairs, in this process (the ratio is what the service's batching, HTTP and JSON cost)."""

from __future__ import annotations

import time

from harness.scoring.client import HttpScorer
from harness.scoring import ScorerSpec
from scorer.backends import make_backend
from scorer.service_config import ScorerServiceConfig


def bench_pairs(n: int) -> tuple[list[str], list[str]]:
    prompts = [f"How do I fix problem number {i} with my bike?" for i in range(n)]
    responses = [" First, check the chain. Then oil it." + " Then test it." * (i % 7) for i in range(n)]
    return prompts, responses


def raw_pairs_per_s(cfg: ScorerServiceConfig, prompts: list[str], responses: list[str]) -> float:
    backends = {"reward": make_backend(cfg.reward), "cost": make_backend(cfg.cost)}
    for which, b in backends.items():  # warm-up, excluded
        b.scores(prompts[:8], responses[:8], which)
    t = time.perf_counter()
    for which, b in backends.items():  # the service runs both models on every pair
        b.scores(prompts, responses, which)
    return len(prompts) / (time.perf_counter() - t)


def served_pairs_per_s(url: str, prompts: list[str], responses: list[str], token: str | None = None,
                       max_batch: int = 32, concurrency: int = 8) -> float:
    client = HttpScorer(ScorerSpec(kind="http", url=url, token=token, max_batch=max_batch, concurrency=concurrency))
    try:
        client.wait_ready()
        client.score(prompts[:8], responses[:8])  # warm-up, excluded
        t = time.perf_counter()
        scores = client.score(prompts, responses)
        seconds = time.perf_counter() - t
    finally:
        client.close()
    assert len(scores.rewards) == len(prompts)
    return len(prompts) / seconds


def measure(cfg: ScorerServiceConfig, url: str, n_pairs: int = 256, token: str | None = None) -> dict[str, float]:
    """Both figures and their ratio; the service at ``url`` must serve the models ``cfg`` names."""
    prompts, responses = bench_pairs(n_pairs)
    served = served_pairs_per_s(url, prompts, responses, token)
    raw = raw_pairs_per_s(cfg, prompts, responses)
    return {"pairs": n_pairs, "service_pairs_per_s": served, "raw_pairs_per_s": raw, "service_vs_raw": served / raw}
