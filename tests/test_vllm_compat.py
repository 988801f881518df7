"""vLLM's private symbols are named in one module; a vLLM that lacks one fails at engine start, naming it."""

import pytest

from methods.es.engine import EngineConfig
from methods.es.noise import NoiseSpec
from methods.es.vllm_engine import vllm_available

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not vllm_available(), reason="vLLM not installed")]
LOWRANK = NoiseSpec(kind="lowrank", rank=1)


def engine(policy_path, tmp_path, noise=None):
    from methods.es.vllm_engine import VLLMEngine

    return VLLMEngine(EngineConfig(kind="vllm", model_path=str(policy_path)), str(tmp_path), noise, max_loras=2)


@pytest.mark.parametrize("module,name", [
    ("vllm.lora.layers.column_parallel_linear", "_mcp_apply"),
    ("vllm.lora.layers.column_parallel_linear", "MergedColumnParallelLinearWithLoRA"),
    ("vllm.lora.punica_wrapper.punica_cpu", "PunicaWrapperCPU"),
])
def test_a_missing_lora_symbol_stops_a_lowrank_engine_by_name(policy_path, tmp_path, monkeypatch, module, name):
    import importlib

    from harness.vllm.compat import VLLMIncompatible

    monkeypatch.delattr(importlib.import_module(module), name)
    with pytest.raises(VLLMIncompatible, match=f"{module}.{name} not found"):
        engine(policy_path, tmp_path, LOWRANK)


def test_a_missing_wrapper_hook_stops_the_install(monkeypatch):
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    from harness.vllm.compat import VLLMIncompatible
    from methods.es import vllm_lora

    for cls in PunicaWrapperCPU.__mro__:  # wherever the class inherits it from
        if "update_metadata" in vars(cls):
            monkeypatch.delattr(cls, "update_metadata")
    with pytest.raises(VLLMIncompatible, match="PunicaWrapperCPU.update_metadata not found"):
        vllm_lora.install("dense")


def test_a_missing_cpu_weight_hook_stops_a_full_rank_engine(policy_path, tmp_path, monkeypatch):
    import vllm.model_executor.layers.utils as vutils

    from harness.vllm.compat import VLLMIncompatible

    monkeypatch.delattr(vutils, "dispatch_cpu_unquantized_gemm")
    with pytest.raises(VLLMIncompatible, match="dispatch_cpu_unquantized_gemm not found"):
        engine(policy_path, tmp_path)


def test_an_unchecked_vllm_version_is_refused(policy_path, tmp_path, monkeypatch):
    import vllm

    from harness.vllm.compat import VLLMIncompatible

    monkeypatch.setattr(vllm, "__version__", "0.99.1")
    with pytest.raises(VLLMIncompatible, match=r"vLLM 0.99.1 is not a version .* 0.24.0 \(CUDA .* 0.32.0 \(CPU"):
        engine(policy_path, tmp_path)


def test_the_record_keeps_the_lora_ops(policy_path, tmp_path):
    e = engine(policy_path, tmp_path, LOWRANK)
    assert e.info()["lora_ops"] == "concat" and e.info()["vllm"] in ("0.24.0", "0.32.0")
