"""Perturbation and update kernels: bytes/s on the CPU (`make bench-kernels`; once as a check in the suite)."""

import time

import pytest
import torch

from methods.es.noise import add_combination_, add_noise_

N = 1 << 22  # 4M fp32 elements, 16 MiB


def bytes_per_s(fn, tensor) -> float:
    fn()
    t = time.perf_counter()
    fn()
    return 2 * tensor.numel() * tensor.element_size() / (time.perf_counter() - t)  # read + write


@pytest.mark.parametrize("kind", ["perturb", "update8"])
def test_kernel_throughput(benchmark, kind):
    w = torch.zeros(N)
    if kind == "perturb":
        fn = lambda: add_noise_(w, "w", 1, 0.001)  # noqa: E731
    else:
        fn = lambda: add_combination_(w, "w", [(s, 1e-4) for s in range(8)])  # noqa: E731
    benchmark(fn)
    bps = bytes_per_s(fn, w)
    copy = bytes_per_s(lambda: w.copy_(w + 0), w)
    benchmark.extra_info.update(bytes_per_s=bps, copy_bytes_per_s=copy, ratio_to_copy=copy / bps)
    print(f"\n{kind}: {bps / 1e9:.2f} GB/s effective; plain copy {copy / 1e9:.2f} GB/s; {copy / bps:.1f}x slower")
    assert torch.isfinite(w).all() and w.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused kernel runs on CUDA")
@pytest.mark.parametrize("kind", ["perturb", "update8"])
def test_fused_cuda_kernel_throughput(benchmark, kind):
    """The fused Triton kernel over a 0.5B-like set of bf16 tensors (290 of 1.7M elements) against the bound:
    2 × bytes ÷ a device-to-device copy of the same bytes (`make bench-kernels` on a GPU host)."""
    from methods.es.noise_cuda import FusedNoise

    views = [(f"layer.{i}.weight", torch.zeros((1 << 24) // 10, dtype=torch.bfloat16, device="cuda")) for i in range(290)]
    fused = FusedNoise(views)
    terms = [(1, 0.001)] if kind == "perturb" else [(s, 1e-4) for s in range(8)]

    def run():
        fused.add_(terms)
        torch.cuda.synchronize()

    benchmark(run)
    nbytes = sum(v.numel() * v.element_size() for _, v in views)
    flat = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(flat)
    copy_s = min(timed(lambda: dst.copy_(flat)) for _ in range(5))
    pass_s = benchmark.stats.stats.median
    benchmark.extra_info.update(bytes_per_s=2 * nbytes / pass_s, bound_s=copy_s, ratio_to_bound=pass_s / copy_s)
    print(f"\nfused {kind}: {1e3 * pass_s:.2f} ms for {nbytes / 1e6:.0f} MB; bound {1e3 * copy_s:.2f} ms; "
          f"{pass_s / copy_s:.1f}x")
    assert all(bool(v.abs().sum() > 0) for _, v in views[:3])


def timed(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t
