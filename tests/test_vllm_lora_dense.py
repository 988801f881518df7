"""The dense LoRA op that serves low-rank ES members in vLLM's batch, against the sum it replaces, token by token."""

import pytest
import torch

from methods.es.vllm_lora import add_lora_dense


@pytest.mark.parametrize("rank,padded", [(1, 1), (3, 8)])  # vLLM pads ranks up to max_lora_rank with zeros
def test_dense_lora_adds_each_tokens_own_slot(rank, padded):
    g = torch.Generator().manual_seed(0)
    slots, k, slices, tokens = 5, 12, [6, 2, 2], 9
    a = [torch.zeros(slots, 1, padded, k) for _ in slices]
    b = [torch.zeros(slots, 1, n, padded) for n in slices]
    for t in a:  # only the first `rank` rows of A and columns of B hold factors, as vLLM fills its stacks
        t[:, :, :rank] = torch.randn(t[:, :, :rank].shape, generator=g)
    for t in b:
        t[..., :rank] = torch.randn(t[..., :rank].shape, generator=g)
    x = torch.randn(tokens, k, generator=g)
    slot = torch.tensor([0, 4, -1, 2, 2, 1, -1, 3, 0])
    one_hot = (slot[:, None] == torch.arange(slots)).float()
    y0 = torch.randn(tokens, sum(slices), generator=g)
    y = y0.clone()
    add_lora_dense(y, x, a, b, one_hot, None, slices, 0.5)
    want = y0.clone()
    for t, s in enumerate(slot.tolist()):
        if s < 0:
            continue
        start = 0
        for ai, bi, n in zip(a, b, slices):
            want[t, start:start + n] += 0.5 * (bi[s, 0] @ (ai[s, 0] @ x[t]))
            start += n
    torch.testing.assert_close(y, want)
    y = y0.clone()  # vLLM's CPU-side flag says no token has an adapter: nothing is added
    add_lora_dense(y, x, a, b, one_hot, torch.tensor([True]), slices, 0.5)
    assert torch.equal(y, y0)
