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
