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

    assert vllm_lora.install()
    wrapper = PunicaWrapperCPU(64, 8, "cpu")
    ids = [11, 12, 13, 14, 15]  # adapter id in each slot
    mapping = LoRAMapping([ids[s] if s >= 0 else 0 for s in SLOT.tolist()], [0] * len(SLOT))
    wrapper.update_metadata(mapping, ids, SLOTS + 1, 1000)
    a, b, x, y0 = stacks(rank, padded)
    vllm_lora.layers_served.clear()
    y = y0.clone()
    wrapper.add_lora_linear(y, x, tuple(a), tuple(b), 1.0, tuple(SLICES))
    torch.testing.assert_close(y, reference(a, b, x, y0, 1.0))
    assert vllm_lora.layers_served == {a[0].data_ptr()}
