"""Real Ray: two engines as actors stay identical (checksums) through perturbations and updates."""

import tempfile
from pathlib import Path

import pytest

from harness.generation import SamplingSettings
from methods.es.engine import EngineConfig, Member
from methods.es.pool import RayPool, call_all

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_two_ray_engines_stay_identical(policy_path, tmp_path):
    pool = RayPool(EngineConfig(kind="hf", model_path=str(policy_path)), 2, str(tmp_path))
    try:
        prompts = ["How do I cook rice on the stove?"]
        sampling = SamplingSettings(max_new_tokens=16)
        start = call_all(pool, lambda e: e.checksum())
        assert start[0] == start[1]
        # different members on different engines, as the driver schedules them
        outs = [pool.submit(i, lambda e, i=i: e.evaluate_members([Member(100 + i, 0.01)], prompts, sampling)).result()
                for i in range(2)]
        assert all(o[0].completions for o in outs)
        assert call_all(pool, lambda e: e.checksum()) == start  # restored
        for step in range(3):
            sums = call_all(pool, lambda e: e.apply_update([(step, 0.001), (step + 7, -0.002)]))
            assert sums[0] == sums[1] != start[0]
        # Adam: each engine keeps its own moments, rebuilt from the same seeds: they stay identical too
        from methods.es.optimizer import AdamStep

        for t in range(1, 4):
            before = sums
            sums = call_all(pool, lambda e: e.apply_update([(t, 0.5), (t + 9, -1.0)], AdamStep(1e-3, 0.9, 0.999, 1e-8, t)))
            assert sums[0] == sums[1] != before[0]
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
        address = pool.submit(0, lambda e: e.sync_address()).result()
        [f.result() for f in [pool.submit(i, lambda e, i=i: e.sync_init(address, i, 2)) for i in range(2)]]
        start = pool.submit(0, lambda e: e.checksum()).result()
        terms = [(3, 0.001), (9, -0.002)]
        replayed_on_0 = pool.submit(0, lambda e: e.apply_update(terms)).result()  # what seed replay gives
        assert replayed_on_0 != start and pool.submit(1, lambda e: e.checksum()).result() == start
        received = call_all(pool, lambda e: e.broadcast_weights(0))
        assert received == [replayed_on_0, replayed_on_0]
        # the trainer's path: both engines move together again, by broadcast
        sent = update_engines(pool, ESConfig(update="broadcast", engines=2), terms)
        assert sent[0] == sent[1] not in (start, replayed_on_0)
    finally:
        pool.shutdown()


@pytest.mark.slow
def test_es_engines_on_two_ray_nodes(policy_path, tmp_path):
    """Two Ray nodes started as separate processes (as `ray start` runs on each node of an allocation), with a
    per-job auth token; one engine per node (each node has one CPU); the run completes with the engines in
    sync (the trainer checks their weight checksums after every update)."""
    import os
    import secrets
    import shutil
    import subprocess
    import sys

    from conftest import free_port
    from harness.records import load_record

    ray = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    temp = tempfile.mkdtemp(prefix="rayn-")  # short: Ray's socket paths must fit 107 bytes
    try:
        subprocess.run([ray, "start", "--head", "--port", str(port), "--temp-dir", temp, "--include-dashboard",
                        "false", *common], env=env, check=True, capture_output=True)
        subprocess.run([ray, "start", "--address", f"127.0.0.1:{port}", *common], env=env, check=True,
                       capture_output=True)
        r = subprocess.run([sys.executable, "-m", "harness.launch.cli", "run", "es", "--config",
                            str(ROOT / "configs/es/cpu-default.yaml"), "--run-dir", str(tmp_path / "run"),
                            "--set", "pool=ray", "--set", "engines=2", "--set", f"ray_address=127.0.0.1:{port}",
                            "--set", "engine.threads=1", "--set", "engine_start_timeout_s=180",
                            "--set", "population=4", "--set", "run.budget.completions=100",
                            "--set", "run.budget.eval_every_fraction=1.0", "--set", "run.eval.limit=4"],
                           env=env, capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True)
    rec = load_record(tmp_path / "run")
    assert rec.status == "completed" and len(rec.series) >= 2
    assert len(set(rec.environment["engine_nodes"])) == 2 and "on 2 node(s)" in rec.notes[0]
