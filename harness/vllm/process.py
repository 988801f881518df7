"""What a process does before it starts a vLLM engine (ES engines, GRPO's colocated vLLM, `esgrpo eval`), in one
place so that every method's engine runs under the same settings.

- The engine in this process (no engine-core subprocess: ES reaches the model's weights in place) and torch's
  sampler rather than FlashInfer's, for every method alike.
- vLLM's caches (model-class inspection, torch.compile artifacts: keyed by config, not by weights) in
  ``$ESGRPO_HOME/vllm-cache`` for every run: in a run's own folder each engine start inspected its model class
  again in a subprocess and compiled again, tens of seconds per run on an H100 host.
- vLLM's CPU backend repacks every linear weight into a oneDNN handle after loading and replaces
  ``layer.weight`` by an empty tensor, so in-place noise would silently reach only embeddings and norms, and
  TRL's colocated weight sync fails ('Parameter' object has no attribute 'weight_loader').
  ``compat.keep_cpu_weights_live`` routes CPU linears through ``F.linear`` on the live weight instead (slower GEMMs on
  CPU; the GPU backend is untouched). It must run before the engine loads its model.

An explicit environment variable always wins.
"""

from __future__ import annotations

import os

from harness.paths import esgrpo_home
from harness.vllm.compat import check_version, keep_cpu_weights_live


def prepare_vllm_process(cpu_kv_cache_gib: float | None = None) -> None:
    """Before any vLLM engine of this process starts (ES's, TRL's colocated one, `esgrpo eval`'s): a vLLM version
    this project was checked against, and the settings above."""
    check_version()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    if cpu_kv_cache_gib is not None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(cpu_kv_cache_gib))))
    os.environ.setdefault("VLLM_CACHE_ROOT", str(esgrpo_home() / "vllm-cache"))
    keep_cpu_weights_live()
