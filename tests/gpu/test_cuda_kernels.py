"""The fused noise kernels and the LoRA ops compiled for the GPU: the same checks the CPU suite runs through
Triton's interpreter and on CPU tensors, here on CUDA tensors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_noise_cuda import CHECKS, LOWRANK
from test_vllm_lora_dense import SLICES, SLOT, SLOTS, reference, stacks

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]


def run_script(script: str, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", script, *args, "cuda"], capture_output=True, text=True, timeout=600,
                       env=env, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


@pytest.mark.parametrize("rounds, layout", [(7, "halves"), (10, "quarters")])
def test_fused_noise_kernel_on_cuda(rounds, layout):
    run_script(CHECKS, str(rounds), layout)


def test_lowrank_factors_and_slot_writer_on_cuda():
    run_script(LOWRANK)


def cuda(*tensors):
    return [[t.cuda() for t in x] if isinstance(x, list) else x.cuda() for x in tensors]


@pytest.mark.parametrize("rank,padded", [(1, 1), (3, 8)])
def test_lora_ops_on_cuda(rank, padded):
    from methods.es import vllm_lora

    a, b, x, y0 = stacks(rank, padded)
    want = reference(a, b, x, y0, 0.5).cuda()
    a, b, x, y0 = cuda(a, b, x, y0)
    slots = (SLOT[:, None] == torch.arange(SLOTS)).float().cuda()
    y = y0.clone()
    vllm_lora.add_lora_dense(y, x, a, b, slots, None, SLICES, 0.5)
    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)
    w, bias = torch.randn(sum(SLICES), x.shape[1], device="cuda"), torch.randn(sum(SLICES), device="cuda")
    ext, a_all, a_views, b_views = vllm_lora.concat_layout(w, tuple(SLICES), SLOTS, padded, w.dtype)
    for view, src in zip([*a_views, *b_views], [*a, *b]):
        view.copy_(src)
    got = vllm_lora.linear_lora_concat(x, ext, bias, a_all, slots, None, len(SLICES))
    torch.testing.assert_close(got, reference([t.cpu() for t in a], [t.cpu() for t in b], x.cpu(),
                                              (x @ w.T + bias).cpu(), 1.0).cuda(), rtol=1e-4, atol=1e-4)
