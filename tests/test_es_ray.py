"""Real Ray: two engines as actors stay identical (checksums) through perturbations and updates."""

import pytest

from harness.generation import SamplingSettings
from methods.es.engine import EngineConfig
from methods.es.pool import RayPool, call_all


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


@pytest.mark.slow
def test_broadcast_update_equals_seed_replay(policy_path, tmp_path):
    """The broadcast update (engine 0 applies it, a gloo group sends its weights; NCCL on GPU) leaves every
    engine bit-identical to what seed replay gives."""
    from methods.es.config import ESConfig
    from methods.es.trainer import update_engines

    pool = RayPool(EngineConfig(kind="hf", model_path=str(policy_path)), 2, str(tmp_path))
    try:
        address = pool.submit(0, "sync_address").result()
        [f.result() for f in [pool.submit(i, "sync_init", address, i, 2) for i in range(2)]]
        start = pool.submit(0, "checksum").result()
        terms = [(3, 0.001), (9, -0.002)]
        replayed_on_0 = pool.submit(0, "apply_update", terms).result()  # what seed replay gives
        assert replayed_on_0 != start and pool.submit(1, "checksum").result() == start
        received = call_all(pool, "broadcast_weights", 0)
        assert received == [replayed_on_0, replayed_on_0]
        # the trainer's path: both engines move together again, by broadcast
        sent = update_engines(pool, ESConfig(update="broadcast", engines=2), terms)
        assert sent[0] == sent[1] not in (start, replayed_on_0)
    finally:
        pool.shutdown()
