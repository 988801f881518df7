"""ES's Adam on CUDA weights: the direction accumulated by the fused noise kernel into fp32 buffers, Adam's step
as torch.optim.Adam takes it, engines identical, moments saved and loaded continuing bit for bit."""

from __future__ import annotations

import pytest
import torch

from methods.es.in_place import InPlaceES
from methods.es.noise import IndependentNoise
from methods.es.noise_cuda import FusedNoise
from methods.es.optimizer import AdamStep

pytestmark = pytest.mark.gpu
STEPS = [[(11, 0.5), (12, -0.25)], [(13, 1.0)], [(11, 0.1), (14, 0.3), (15, -0.2)]]


class CudaEngine(InPlaceES):
    def __init__(self, dtype: torch.dtype):
        g = torch.Generator(device="cuda").manual_seed(0)
        self.views = [(f"layers.{i}.weight", torch.randn(1024, 896, generator=g, device="cuda").to(dtype))
                      for i in range(3)] + [("norm.weight", torch.ones(896, device="cuda", dtype=dtype))]
        self.noise = IndependentNoise()

    def named_views(self):
        return self.views


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adam_on_cuda_steps_as_torch_adam(dtype, figures):
    engine = CudaEngine(dtype)
    params = [torch.nn.Parameter(v.detach().float().clone()) for _, v in engine.views]
    adam = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    direction = [torch.zeros(p.shape, device="cuda") for p in params]
    fused = FusedNoise([(n, d) for (n, _), d in zip(engine.views, direction)])
    for t, terms in enumerate(STEPS, start=1):
        engine.apply_update(terms, AdamStep(1e-3, 0.9, 0.999, 1e-8, t))
        for d in direction:
            d.zero_()
        fused.add_(terms)
        for p, d in zip(params, direction):
            p.grad = -d
        adam.step()
        if dtype == torch.bfloat16:  # the engine rounds into bf16 after each step; the reference stays in fp32
            for p, (_, w) in zip(params, engine.views):
                p.data.copy_(w.float())
    # fp32: the two orders of the same arithmetic; bf16: at most one rounding step apart (of 2^-8 relative)
    worst = max(float(((w.float() - p.detach().to(dtype).float()).abs() / p.detach().abs().clamp_min(1e-3)).max())
                for (_, w), p in zip(engine.views, params))
    figures[f"adam_max_rel_diff_{str(dtype).split('.')[-1]}"] = worst
    assert worst <= (1e-5 if dtype == torch.float32 else 2 ** -7), worst


def test_adam_engines_agree_and_resume_bit_exactly_on_cuda(tmp_path):
    a, b = CudaEngine(torch.bfloat16), CudaEngine(torch.bfloat16)
    for t, terms in enumerate(STEPS, start=1):
        assert a.apply_update(terms, AdamStep(1e-3, 0.9, 0.999, 1e-8, t)) == b.apply_update(
            terms, AdamStep(1e-3, 0.9, 0.999, 1e-8, t))
    c = CudaEngine(torch.bfloat16)
    c.apply_update(STEPS[0], AdamStep(1e-3, 0.9, 0.999, 1e-8, 1))
    c.save_optimizer(str(tmp_path / "optimizer.safetensors"))
    d = CudaEngine(torch.bfloat16)
    for (_, w), (_, src) in zip(d.views, c.views):
        w.copy_(src)
    d.load_optimizer(str(tmp_path / "optimizer.safetensors"))
    for t, terms in enumerate(STEPS[1:], start=2):
        d.apply_update(terms, AdamStep(1e-3, 0.9, 0.999, 1e-8, t))
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(d.views, a.views))
