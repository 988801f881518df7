"""The dense LoRA op that serves low-rank ES members in vLLM's batch against the sum it replaces, token by token —
alone and through vLLM's own punica wrapper."""

import pytest
import torch

from methods.es import vllm_lora
from methods.es.vllm_engine import vllm_available

SLOTS, K, SLICES = 5, 12, [6, 2, 2]
SLOT = torch.tensor([0, 4, -1, 2, 2, 1, -1, 3, 0])  # each token's slot, -1: no adapter


def stacks(rank: int, padded: int):
    """vLLM-shaped stacks ([slots, 1, rank, in] and [slots, 1, out, rank]) holding factors only in the first `rank`
    rows of A and columns of B (vLLM pads ranks up to max_lora_rank with zeros), an input and an output."""
    g = torch.Generator().manual_seed(rank)
    a = [torch.zeros(SLOTS, 1, padded, K) for _ in SLICES]
    b = [torch.zeros(SLOTS, 1, n, padded) for n in SLICES]
    for t in a:
        t[:, :, :rank] = torch.randn(t[:, :, :rank].shape, generator=g)
    for t in b:
        t[..., :rank] = torch.randn(t[..., :rank].shape, generator=g)
    return a, b, torch.randn(len(SLOT), K, generator=g), torch.randn(len(SLOT), sum(SLICES), generator=g)


def reference(a, b, x, y0, scale):
    want = y0.clone()
    for t, s in enumerate(SLOT.tolist()):
        if s < 0:
            continue
        start = 0
        for ai, bi, n in zip(a, b, SLICES):
            want[t, start:start + n] += scale * (bi[s, 0] @ (ai[s, 0] @ x[t]))
            start += n
    return want


@pytest.mark.parametrize("rank,padded", [(1, 1), (3, 8)])
def test_dense_op_adds_each_tokens_own_slot(rank, padded):
    a, b, x, y0 = stacks(rank, padded)
    want = reference(a, b, x, y0, 0.5)
    y = y0.clone()
    vllm_lora.add_lora_dense(y, x, a, b, (SLOT[:, None] == torch.arange(SLOTS)).float(), None, SLICES, 0.5)
    torch.testing.assert_close(y, want)
    y = y0.clone()  # vLLM's CPU-side flag says no token has an adapter: the dense op adds nothing
    vllm_lora.add_lora_dense(y, x, a, b, torch.zeros(len(SLOT), SLOTS), torch.tensor([True]), SLICES, 0.5)
    assert torch.equal(y, y0)


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vLLM not installed")
@pytest.mark.parametrize("rank,padded", [(1, 1), (3, 8)])
def test_vllm_punica_wrapper_routes_through_the_dense_op(rank, padded):
    """vLLM's CPU punica wrapper, patched, given a real adapter mapping: its one-hot rows come from vLLM's own
    metadata update, and the layer's sum comes from the dense op."""
    from vllm.lora.layers import LoRAMapping
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    vllm_lora.install("dense")
    wrapper = PunicaWrapperCPU(64, 8, "cpu")
    ids = [11, 12, 13, 14, 15]  # adapter id in each slot
    mapping = LoRAMapping([ids[s] if s >= 0 else 0 for s in SLOT.tolist()], [0] * len(SLOT))
    wrapper.update_metadata(mapping, ids, SLOTS + 1, 1000)
    a, b, x, y0 = stacks(rank, padded)
    vllm_lora.layers_served.clear()
    y = y0.clone()
    wrapper.add_lora_linear(y, x, tuple(a), tuple(b), 1.0, tuple(SLICES))
    torch.testing.assert_close(y, reference(a, b, x, y0, 1.0))
    assert vllm_lora.layers_served == {a[0].data_ptr(): "dense"}


@pytest.mark.parametrize("rank,padded", [(1, 1), (3, 8)])
def test_concat_layout_puts_each_tokens_own_slot_inside_the_base_gemm(rank, padded):
    """vLLM's stacks as views of [W | B] and of one A: whatever is written into them (as vLLM's set_lora and the
    slot fills do), the one GEMM gives the base output plus each token's own member's product."""
    a, b, x, _ = stacks(rank, padded)
    w, bias = torch.randn(sum(SLICES), K), torch.randn(sum(SLICES))
    ext, a_all, a_views, b_views = vllm_lora.concat_layout(w, tuple(SLICES), SLOTS, padded, w.dtype)
    assert torch.equal(ext[:, :K], w) and a_views[0].data_ptr() == a_all.data_ptr()
    for view, src in zip([*a_views, *b_views], [*a, *b]):
        assert view.shape == src.shape
        view.copy_(src)
    slots = (SLOT[:, None] == torch.arange(SLOTS)).float()
    y = vllm_lora.linear_lora_concat(x, ext, bias, a_all, slots, None, len(SLICES))
    torch.testing.assert_close(y, reference(a, b, x, x @ w.T + bias, 1.0))
    no = vllm_lora.linear_lora_concat(x, ext, bias, a_all, torch.zeros(len(SLOT), SLOTS), torch.tensor([True]), 3)
    torch.testing.assert_close(no, x @ w.T + bias)
    b_views[1][2].zero_()  # vLLM's reset_lora of slot 2, slice 1: that member's k rows lose their product
    want = reference(a, [b[0], b[1].index_fill(0, torch.tensor([2]), 0), b[2]], x, x @ w.T + bias, 1.0)
    torch.testing.assert_close(vllm_lora.linear_lora_concat(x, ext, bias, a_all, slots, None, 3), want)
