"""The memory plan's arithmetic on real checkpoint files (the device readings are exercised in tests/gpu)."""

import pytest

from harness.errors import PlannedOutOfMemory, is_out_of_memory
from harness.memory_plan import MemoryPlan, Part, checkpoint_parameters, kv_bytes_per_token, plan_record


def test_parameters_and_kv_bytes_come_from_the_checkpoint_files(policy_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(policy_path)
    stored = {id(p.untyped_storage()): p.numel() for p in model.state_dict().values()}  # tied weights once
    assert checkpoint_parameters(policy_path) == sum(stored.values())
    cfg = AutoConfig.from_pretrained(policy_path)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    assert kv_bytes_per_token(policy_path, "bfloat16") == 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 2


def plan(free: float, kv: float | None = None) -> MemoryPlan:
    return MemoryPlan(device="H200", total_gib=139.8, free_gib=free,
                      held=[Part(name="pid 7 (esgrpo serve-scorer)", gib=30.1, measured=True)],
                      needs=[Part(name="policy weights", gib=12.6, measured=False),
                             Part(name="ES snapshot of the weights", gib=12.6, measured=False)],
                      kv_cache_gib=kv, kv_cache_min_gib=None if kv is None else 0.5,
                      kv_cache_wanted_gib=None if kv is None else 32.0)


def test_a_plan_that_cannot_fit_is_refused_with_the_numbers_and_recorded_as_oom():
    ok = plan(free=100.0, kv=70.0)
    ok.check("the ES policy engine")
    assert plan_record(ok)["fits"] and "70.0 GiB of KV cache" in plan_record(ok)["summary"]
    with pytest.raises(PlannedOutOfMemory) as e:
        plan(free=25.5, kv=0.3).check("the ES policy engine")
    text = str(e.value)
    for number in ("139.8", "25.5 free", "serve-scorer", "policy weights 12.6", "ES snapshot of the weights 12.6"):
        assert number in text
    assert is_out_of_memory(e.value)  # the run's record says oom
    assert plan(free=30.0).fits and not plan(free=20.0).fits  # no KV cache: the parts alone


def test_grpo_needs_scale_with_precision_and_lora():
    from methods.grpo.config import GRPOSettings
    from methods.grpo.trainer import memory_needs

    bf16 = memory_needs(GRPOSettings(device="cuda", bf16=True, use_vllm=True, vllm_mode="colocate"), 140.0)
    assert bf16 == {"policy weights": 2.0, "gradients": 2.0, "AdamW states": 4.0,
                    "colocated vLLM GiB": pytest.approx(0.3 * 140.0)}
    fp32 = memory_needs(GRPOSettings(device="cuda", weights_dtype="float32"), 140.0)
    assert sum(fp32.values()) == 16.0  # fp32 master weights, grads and AdamW: 16 bytes per parameter
    lora = memory_needs(GRPOSettings(device="cuda", bf16=True, lora={"r": 16, "alpha": 32}), 140.0)
    assert lora == {"policy weights": 2.0}


def test_only_this_jobs_gpus_are_looked_at(monkeypatch):
    """A SLURM job that was given GPU 2 of a node does not wait for, or name, processes on the node's other GPUs."""
    import sys
    import types

    from harness import memory_plan, records

    class Proc:
        def __init__(self, pid, used):
            self.pid, self.usedGpuMemory = pid, used

    on_gpu = {0: [Proc(11, 20 * 2**30)], 1: [], 2: [Proc(33, 4 * 2**30)], 3: [Proc(44, 8 * 2**30)]}
    fake = types.SimpleNamespace(NVMLError=Exception, nvmlDeviceGetComputeRunningProcesses=lambda h: on_gpu[h])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(records, "nvml_handles", lambda: [0, 1, 2, 3])
    monkeypatch.setattr(memory_plan, "process_name", lambda pid: "python")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert [p.name for p in memory_plan.device_holders(None, set())] == ["pid 33 (python)"]
    assert [p.name for p in memory_plan.device_holders(0, {33})] == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert [p.gib for p in memory_plan.device_holders(None, set())] == [20.0, 4.0, 8.0]
    assert [p.name for p in memory_plan.device_holders(3, set())] == ["pid 44 (python)"]


def test_lora_slots_of_a_lowrank_population_are_counted_from_the_layer_shapes(tmp_path):
    """The buffers vLLM holds for low-rank members (rank × (in + out) per slot, module and layer), read from
    config.json, equal what the model's own linear layers give, on a GQA model (k/v narrower than q)."""
    from transformers import AutoModelForCausalLM

    from harness.fixtures.random_models import build_random_policy
    from harness.memory_plan import lora_slot_bytes

    path = build_random_policy("tiny", tmp_path / "p")
    model = AutoModelForCausalLM.from_pretrained(path)
    modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    widths = sum(m.in_features + m.out_features for name, m in model.named_modules()
                 if name.rsplit(".", 1)[-1] in modules)
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    assert lora_slot_bytes(path, modules, slots=32, rank=8, dtype="bfloat16") == widths * 8 * 32 * 2
    assert lora_slot_bytes(path, ("q_proj",), 8, 1, "float32") * 7 < lora_slot_bytes(path, modules, 8, 1, "float32")
