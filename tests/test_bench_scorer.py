"""Scorer throughput: pairs/s through the HTTP service vs the raw forward passes of the same models on the
same pairs (`make bench-scorer` prints the figures; in the normal suite it runs once as a check)."""

import httpx
import pytest

from conftest import ScorerProcess
from scorer.bench import bench_pairs, measure, served_pairs_per_s
from scorer.service_config import ScorerServiceConfig

N_PAIRS = 256


@pytest.mark.slow
def test_scorer_service_vs_raw_forward(beaver_dir, tmp_path, benchmark):
    model_cfg = {"path": str(beaver_dir), "kind": "beaver", "device": "cpu", "max_batch_tokens": 16384}
    config = {"reward": model_cfg, "cost": {**model_cfg, "max_length": 511}, "max_batch": 64}
    srv = ScorerProcess(tmp_path, config=config).start()
    try:
        figures = measure(ScorerServiceConfig.model_validate(config), srv.url, N_PAIRS)
        prompts, responses = bench_pairs(N_PAIRS)
        benchmark.pedantic(served_pairs_per_s, args=(srv.url, prompts, responses), rounds=3, iterations=1)
        served = httpx.get(srv.url + "/info").json()["served"]
    finally:
        srv.stop()
    benchmark.extra_info.update(figures)
    print(f"\nscorer: service {figures['service_pairs_per_s']:.1f} pairs/s, "
          f"raw forward {figures['raw_pairs_per_s']:.1f} pairs/s, ratio {figures['service_vs_raw']:.2f}")
    # the figures are for reading (this host is shared and noisy); what must hold is that requests are served
    # whole or merged, never pair by pair: every request carries 32 pairs
    assert served["pairs"] / served["batches"] >= 32, served
