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
and then adds U_i · B_i to the layer's output in one of two ways:
- ``add_lora_dense`` (o and down): one GEMM per slice accumulated into vLLM's output by cuBLAS (β = 1). At 7B the
  dense op cost 0.39× the layer's base GEMMs (32 slots; the engine rounds slots up to 8 so inner sizes stay
  aligned) and took the population batch from 0.79 to 0.87 of raw generation; what it still cost was mostly the
  second pass over the output (+8.6 % of the batch's device time).
- ``linear_lora_concat`` (the fused q/k/v and gate/up layers, whose outputs are 3-5× wider than their input): the
  base GEMM does it, over [x | U] and a weight stored as [W | B] (every slice's and slot's B as extra input columns,
  zero outside the slice's rows), so the output is written once. vLLM's lora_B stacks are views of those columns and
  its lora_A stacks views of one A, so its adapter loads and the ES slot fills write where the GEMM reads; the base
  layer's weight is a view of W_ext too (in-place ES reaches it as before). Per 7B decoder layer, 32 slots, 1,024
  tokens: 1.16× the base GEMMs against the dense op's 1.25× (``gpu_checks.py lora-concat``); the batch's extra
  device time went from +8.6 % to +6.4 %.
``install(ops)`` routes vLLM's layers through them before vLLM builds and compiles the model (the engine, and the ES
worker module when vLLM loads it); the engine config's ``lora_ops`` picks ``concat`` (the default: both, as above),
``dense`` (the dense op everywhere) or ``punica`` (vLLM's kernels, to compare). vLLM's private names are resolved in
``harness.vllm.compat``: an install that cannot apply every patch fails, naming what is missing.
"""

from __future__ import annotations

import os

import torch

from harness.vllm import compat

layers_served: dict[int, str] = {}  # LoRA layers (their A stack's address) whose products were computed here: by which op


def skip_lora(token_slots: torch.Tensor, no_lora: torch.Tensor | None) -> bool:
    """vLLM's CPU-side flag (the CUDA wrapper's), else whether any token has a slot (the CPU wrapper has no flag)."""
    return bool(no_lora.item()) if no_lora is not None else not bool(token_slots.any())


@torch.library.custom_op("esgrpo::add_lora_dense", mutates_args=("y",))
def add_lora_dense(y: torch.Tensor, x: torch.Tensor, lora_a: list[torch.Tensor], lora_b: list[torch.Tensor],
                   token_slots: torch.Tensor, no_lora: torch.Tensor | None, slices: list[int], scale: float) -> None:
    """y[:, slice i] += scale · (x · A_i,m(t)ᵀ) · B_i,m(t)ᵀ for each token t, where token_slots[t] is 1 in the
    column of its slot m(t) and 0 elsewhere (all 0: no adapter). An opaque op, as vLLM's own LoRA ops are: CUDA
    graphs captured without LoRA skip it on vLLM's CPU-side flag, not in the graph. Every kernel here runs once per
    layer per decode step, so there are few: one shrink GEMM (one copy to join a fused layer's slices), one
    multiply, one accumulating GEMM per slice."""
    if skip_lora(token_slots, no_lora):
        return
    layers_served[lora_a[0].data_ptr()] = "dense"
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


@torch.library.custom_op("esgrpo::linear_lora_concat", mutates_args=())
def linear_lora_concat(x: torch.Tensor, weight_ext: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                       token_slots: torch.Tensor, no_lora: torch.Tensor | None, slices: int) -> torch.Tensor:
    """A fused layer's output with its members' products inside the base GEMM: x · W_extᵀ where W_ext = [W | B]
    holds every slice's and slot's B as extra input columns (zero outside the slice's rows) and the input is
    [x | U], U = x · Aᵀ masked to each token's own slot. The output is written once, as without LoRA."""
    k = x.shape[1]
    if skip_lora(token_slots, no_lora):
        return torch.nn.functional.linear(x, weight_ext[:, :k], bias)
    layers_served[lora_a.data_ptr()] = "concat"
    tokens, slots = x.shape[0], token_slots.shape[1]
    x_ext = torch.empty(tokens, weight_ext.shape[1], dtype=x.dtype, device=x.device)
    x_ext[:, :k].copy_(x)
    u = (x @ lora_a.t()).view(tokens, slices, slots, -1)
    torch.mul(u, token_slots.to(x.dtype)[:, None, :, None], out=x_ext[:, k:].view(tokens, slices, slots, -1))
    return torch.nn.functional.linear(x_ext, weight_ext, bias)


@linear_lora_concat.register_fake
def _(x, weight_ext, bias, lora_a, token_slots, no_lora, slices) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight_ext.shape[0])


def concat_layout(weight: torch.Tensor, output_slices: tuple[int, ...], slots: int, rank: int,
                  lora_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
    """The fused layer's storage for ``linear_lora_concat``: (W_ext, A, lora_a stacks, lora_b stacks). W_ext is
    [W | B] (out × (in + slices·slots·rank)), its first ``in`` columns the base weight; vLLM's stacks become views,
    A's [slots, 1, rank, in] of one A (rows: slice, slot, rank) and B's [slots, 1, rows, rank] of W_ext's extra
    columns, so vLLM's adapter loads and our slot fills write where the GEMM reads, with no copy per step."""
    out, k = weight.shape
    extra = len(output_slices) * slots * rank
    ext = torch.zeros(out, k + extra, dtype=weight.dtype, device=weight.device)
    ext[:, :k].copy_(weight)
    a = torch.zeros(extra, k, dtype=lora_dtype, device=weight.device)
    a_stacks = tuple(a[i * slots * rank:(i + 1) * slots * rank].view(slots, 1, rank, k)
                     for i in range(len(output_slices)))
    b_stacks, row = [], 0
    for i, rows in enumerate(output_slices):
        b_stacks.append(ext.as_strided((slots, 1, rows, rank), (rank, rank, k + extra, 1),
                                       row * (k + extra) + k + i * slots * rank))
        row += rows
    return ext, a, a_stacks, tuple(b_stacks)


def add_lora_linear(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: tuple[torch.Tensor, ...],
                    lora_b_stacked: tuple[torch.Tensor, ...], scale: float, output_slices: tuple[int, ...], *,
                    buffer: torch.Tensor | None = None, **kwargs) -> None:
    """vLLM's ``PunicaWrapper.add_lora_linear`` contract (y 2-D, changed in place)."""
    if not kwargs.get("add_inputs", True):  # the dual-stream path wants LoRA's output alone
        y.zero_()
    torch.ops.esgrpo.add_lora_dense(y, x, list(lora_a_stacked), list(lora_b_stacked),
                                    torch.narrow(self.es_token_slots, 0, 0, x.size(0)), compat.no_lora_flag(self),
                                    list(output_slices), scale)


def with_token_slots(update_metadata):
    """vLLM's ``update_metadata`` (run when the batch's adapter mapping changes, outside CUDA graphs), then each
    token's slot as a one-hot row of ``es_token_slots`` (a buffer the graphs read in place): made once per mapping
    rather than in every layer of every step."""

    def update(self, mapping, lora_index_to_id, max_loras, vocab_size, **kwargs):
        update_metadata(self, mapping, lora_index_to_id, max_loras, vocab_size, **kwargs)
        slot, slots = compat.token_lora_indices(self), len(lora_index_to_id)  # (max_loras here counts one more)
        if getattr(self, "es_token_slots", None) is None or self.es_token_slots.shape[1] != slots:
            dtype = getattr(getattr(self, "lora_config", None), "lora_dtype", None)
            self.es_token_slots = torch.zeros(slot.shape[0], slots, device=slot.device,
                                              dtype=dtype if isinstance(dtype, torch.dtype) else torch.float32)
        n = len(mapping.index_mapping)
        self.es_token_slots[:n] = slot[:n, None] == torch.arange(slots, device=slot.device)

    return update


LORA_OPS = ("concat", "dense", "punica")
OPS_ENV = "ESGRPO_LORA_OPS"  # how the engine hands its config's choice to the worker module (another process maybe)
chosen = {"ops": LORA_OPS[0]}  # what the last install() routed: concat() reads it inside vLLM's layer set-up


def ops_from_environment() -> str:
    """The worker module's choice: what the engine set (its config's ``engine.lora_ops``)."""
    return os.environ.get(OPS_ENV, LORA_OPS[0])


def concat() -> bool:
    return chosen["ops"] == "concat"


def unsharded_through_dense(mcp_apply):
    """vLLM 0.24 applies LoRA to its fused q/k/v and gate/up layers in ``_mcp_apply`` (straight to the punica
    shrink and expand, not through ``add_lora_linear``); unsharded, that is the base layer's ``_apply_sync``."""

    def apply(x, bias, layer):
        return compat.apply_unsharded(layer, x, bias) if layer.tp_size == 1 else mcp_apply(x, bias, layer)

    return apply


def through_concat(apply):
    """A fused LoRA layer's ``apply``: ``linear_lora_concat`` where its storage was laid out for it, else vLLM's."""

    def concat_apply(self, x, bias=None):
        if getattr(self, "es_weight_ext", None) is None or x.dim() != 2:
            return apply(self, x, bias)
        wrapper = self.punica_wrapper
        return torch.ops.esgrpo.linear_lora_concat(
            x, self.es_weight_ext, bias, self.es_lora_a, torch.narrow(wrapper.es_token_slots, 0, 0, x.size(0)),
            compat.no_lora_flag(wrapper), self.n_slices)

    return concat_apply


def with_concat_layout(create_lora_weights):
    """vLLM's ``create_lora_weights`` of a fused layer, then (unsharded, unquantized, LoRA in the weight's dtype) the
    storage ``linear_lora_concat`` reads: vLLM adds LoRA layers to a model whose weights are loaded, so the base
    weight is copied into W_ext here and becomes a view of it (in-place ES reaches it as before)."""

    def create(self, max_loras, lora_config, model_config=None):
        create_lora_weights(self, max_loras, lora_config, model_config)
        weight, a0 = getattr(self.base_layer, "weight", None), self.lora_a_stacked[0]
        if (concat() and getattr(type(self).apply, "esgrpo_concat", False) and self.tp_size == 1
                and isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.dtype == a0.dtype
                and type(self.base_layer.quant_method).__name__ == "UnquantizedLinearMethod"
                and weight.shape == (sum(self.output_slices), a0.shape[-1])):
            ext, a, self.lora_a_stacked, self.lora_b_stacked = concat_layout(
                weight.data, tuple(self.output_slices), a0.shape[0], a0.shape[2], a0.dtype)
            weight.data = ext[:, :a0.shape[-1]]
            self.es_weight_ext, self.es_lora_a = ext, a

    return create


def install(ops: str) -> None:
    """Route vLLM's LoRA linear layers through our ops (``ops`` concat or dense; punica leaves vLLM's kernels). Every
    patch is applied, or ``compat.VLLMIncompatible`` names what this vLLM lacks."""
    if ops not in LORA_OPS:
        raise compat.VLLMIncompatible(f"LoRA ops {ops!r}: use one of {', '.join(LORA_OPS)}")
    chosen["ops"] = ops
    if ops == "punica":
        return
    t = compat.lora_targets()
    compat.replace(t.column_module, "_mcp_apply", unsharded_through_dense, "esgrpo_dense")
    compat.replace(t.merged_class, "apply", through_concat, "esgrpo_concat")
    compat.replace(t.merged_class, "create_lora_weights", with_concat_layout, "esgrpo_concat_layout")
    compat.replace(t.wrapper_class, "update_metadata", with_token_slots, "esgrpo_token_slots")
    compat.replace(t.wrapper_class, "add_lora_linear", lambda _: add_lora_linear, "esgrpo_dense")
