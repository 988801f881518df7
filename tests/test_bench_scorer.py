"""Scorer throughput: pairs/s through the HTTP service vs the raw forward passes of the same models on the
same pairs (`make bench-scorer` prints the figures; in the normal suite it runs once as a check)."""

import time

import pytest

from conftest import ScorerProcess
from harness.scoring import ScorerSpec, make_scorer
from scorer.backends import ModelBackend
from scorer.service_config import BackendSpec

N_PAIRS = 256


def pairs():
    prompts = [f"How do I fix problem number {i} with my bike?" for i in range(N_PAIRS)]
    responses = [" First, check the chain. Then oil it." + " Then test it." * (i % 7) for i in range(N_PAIRS)]
    return prompts, responses


@pytest.mark.slow
def test_scorer_service_vs_raw_forward(beaver_dir, tmp_path, benchmark):
    prompts, responses = pairs()
    spec = BackendSpec(kind="beaver", path=str(beaver_dir), device="cpu", batch_size=32)
    backend = ModelBackend(spec)
    backend.scores(prompts[:8], responses[:8], "reward")  # warm-up, excluded

    t = time.perf_counter()
    for _ in ("reward", "cost"):  # the service runs both models on every pair
        backend.scores(prompts, responses, "reward")
    raw = N_PAIRS / (time.perf_counter() - t)

    model_cfg = {"path": str(beaver_dir), "kind": "beaver", "device": "cpu", "batch_size": 32}
    srv = ScorerProcess(tmp_path, config={"reward": model_cfg, "cost": {**model_cfg, "max_length": 511},
                                          "max_batch": 64}).start()
    try:
        client = make_scorer(ScorerSpec(kind="http", url=srv.url, max_batch=32, concurrency=8))
        client.wait_ready()
        client.score(prompts[:8], responses[:8])
        result = benchmark.pedantic(client.score, args=(prompts, responses), rounds=3, iterations=1)
        t = time.perf_counter()
        client.score(prompts, responses)
        served = N_PAIRS / (time.perf_counter() - t)
    finally:
        srv.stop()
    assert len(result.rewards) == N_PAIRS
    benchmark.extra_info.update(service_pairs_per_s=served, raw_pairs_per_s=raw, ratio=served / raw)
    print(f"\nscorer: service {served:.1f} pairs/s, raw forward {raw:.1f} pairs/s, ratio {served / raw:.2f}")
    assert served > 0.2 * raw  # a broken batcher (one pair per forward) would fall far below this
