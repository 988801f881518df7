"""vLLM's CPU backend, made safe for weights that change in place (ES perturbations, TRL's weight sync).

vLLM-CPU repacks every linear weight into a oneDNN handle after loading and replaces ``layer.weight`` by an
empty tensor, so in-place noise would silently reach only embeddings and norms, and TRL's colocated weight
sync fails ('Parameter' object has no attribute 'weight_loader'). ``keep_cpu_weights_live`` routes CPU
linears through ``F.linear`` on the live weight instead (slower GEMMs on CPU; the GPU backend is untouched).
Call it before the engine loads its model.
"""

from __future__ import annotations


def keep_cpu_weights_live() -> None:
    try:
        from vllm.platforms import current_platform
    except ImportError:  # no vLLM here: nothing to patch
        return
    if not current_platform.is_cpu():
        return
    import torch
    import vllm.model_executor.layers.utils as vutils

    def dispatch(layer: torch.nn.Module, remove_weight: bool) -> None:
        layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)

    vutils.dispatch_cpu_unquantized_gemm = dispatch
