"""Real Ray: two engines as actors stay identical (checksums) through perturbations and updates."""

import pytest

from harness.generation import SamplingSettings
from methods.es.engine import EngineConfig
from methods.es.pool import RayPool


@pytest.mark.slow
def test_two_ray_engines_stay_identical(policy_path, tmp_path):
    pool = RayPool(EngineConfig(kind="hf", model_path=str(policy_path)), 2, str(tmp_path))
    try:
        prompts = ["How do I cook rice on the stove?"]
        sampling = SamplingSettings(max_new_tokens=16)
        start = [pool.submit(i, "checksum").result() for i in range(2)]
        assert start[0] == start[1]
        # different members on different engines, as the driver schedules them
        outs = [pool.submit(i, "evaluate_member", 100 + i, 0.01, prompts, sampling).result() for i in range(2)]
        assert all(o["completions"] for o in outs)
        assert [pool.submit(i, "checksum").result() for i in range(2)] == start  # restored
        for step in range(3):
            sums = [f.result() for f in [pool.submit(i, "apply_update", [(step, 0.001), (step + 7, -0.002)])
                                         for i in range(2)]]
            assert sums[0] == sums[1] != start[0]
    finally:
        pool.shutdown()
