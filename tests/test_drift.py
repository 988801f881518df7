"""Drift from the starting policy and the cosine between two runs' updates, on safetensors files as
transformers' save_pretrained writes them (one file, and shards with their index)."""

import math
import time

import pytest
import torch

from harness.drift import drift, kind_of, update_cosine


def saved(model, path, shard: str | None = None):
    model.save_pretrained(path, safe_serialization=True, **({"max_shard_size": shard} if shard else {}))
    return path


@pytest.fixture(scope="module")
def models(policy_path):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(policy_path)
    moved = AutoModelForCausalLM.from_pretrained(policy_path)
    with torch.no_grad():
        moved.model.layers[0].mlp.down_proj.weight.add_(0.01)
    return base, moved


def test_drift_is_zero_for_the_policy_itself_and_the_norm_ratio_of_a_known_move(models, tmp_path):
    base, moved = models
    a = saved(base, tmp_path / "base")
    b = saved(moved, tmp_path / "moved", shard="2MB")  # shards with an index, as large models are saved
    assert len(list(b.glob("*.safetensors"))) > 1 and (b / "model.safetensors.index.json").is_file()
    assert drift(a, a)["total"] == 0.0
    d = drift(a, b)
    w = base.model.layers[0].mlp.down_proj.weight.double()
    from safetensors.torch import load_file

    total = math.sqrt(sum(float((t.double() ** 2).sum()) for t in load_file(a / "model.safetensors").values()))
    assert d["total"] == pytest.approx(0.01 * math.sqrt(w.numel()) / total, rel=1e-6)
    assert d["attention"] == 0.0 and d["mlp"] > 0 and set(d) >= {"total", "embedding", "attention", "mlp", "norm"}


def test_the_update_cosine_of_a_policy_with_itself_is_one_and_opposite_moves_minus_one(models, tmp_path):
    base, moved = models
    a, b = saved(base, tmp_path / "base"), saved(moved, tmp_path / "moved")
    assert update_cosine(a, b, b) == pytest.approx(1.0)
    opposite = type(moved)(moved.config)
    opposite.load_state_dict({k: 2 * base.state_dict()[k] - v for k, v in moved.state_dict().items()})
    c = saved(opposite, tmp_path / "opposite")
    assert update_cosine(a, b, c) == pytest.approx(-1.0)
    assert math.isnan(update_cosine(a, a, b))  # no move: no direction


def test_layers_are_grouped_by_their_names():
    assert [kind_of(n) for n in ("model.embed_tokens.weight", "model.layers.3.self_attn.q_proj.weight",
                                 "model.layers.3.mlp.up_proj.weight", "model.norm.weight", "lm_head.weight",
                                 "score_head.bias")] == ["embedding", "attention", "mlp", "norm", "lm_head", "other"]


def test_measurements_aside_leave_the_runs_memory_peaks_out(tmp_path):
    """Drift and KL load models beside the run's own: the record's peak host memory is the method's, not theirs."""
    import numpy as np

    from harness.records import RecordWriter, RunRecord

    writer = RecordWriter(tmp_path, RunRecord(run_id="r", method="es", seed=0, config={}), tensorboard=False)
    writer.flush()
    before = writer.record.memory["peak_rss_mb"]
    with writer.aside():
        block = np.ones(400 * 2**20 // 8)  # 400 MiB, touched
        time.sleep(0.6)  # the sampler's interval, twice
        writer.flush()
        del block
    writer.flush()
    assert writer.record.memory["peak_rss_mb"] < before + 100
    block = np.ones(400 * 2**20 // 8)  # outside, the same allocation counts
    writer.flush()
    assert writer.record.memory["peak_rss_mb"] > before + 300
    del block
    writer.finish("completed")
