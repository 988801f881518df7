"""The fused CUDA noise kernel's logic, run on the CPU through Triton's interpreter (TRITON_INTERPRET=1 must be
set before Triton is imported, hence a subprocess). On a GPU, scripts/gpu_checks.py times every variant."""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

CHECKS = textwrap.dedent("""
    import sys
    import numpy as np, torch
    from methods.es.noise_cuda import BLOCK, FusedNoise as Fused, Variant
    variant = Variant(rounds=int(sys.argv[1]), halves=sys.argv[2] == "halves")
    FusedNoise = lambda views: Fused(views, variant)
    views = [("a.weight", torch.zeros(3 * BLOCK + 5)), ("b.weight", torch.zeros(300, 7)), ("c", torch.zeros(BLOCK))]
    FusedNoise(views).add_([(5, 1.0)])
    a, b, c = (v.clone() for _, v in views)
    for x in (a, b, c):  # every element reached, standard normal
        assert bool((x != 0).all()) and abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1, x
    assert abs(float(np.corrcoef(a[:-1].numpy(), a[1:].numpy())[0, 1])) < 0.1
    # a pure function of (seed, name, element): other tensors in the launch change nothing
    alone = [("c", torch.zeros(BLOCK)), ("a.weight", torch.zeros(3 * BLOCK + 5))]
    FusedNoise(alone).add_([(5, 1.0)])
    assert torch.equal(alone[1][1], a) and torch.equal(alone[0][1], c) and not torch.equal(a[:BLOCK], c)
    # a combination is the sum of its terms; a negative scale undoes a positive one
    combo, single = [("a.weight", torch.zeros(3 * BLOCK + 5))], [("a.weight", torch.zeros(3 * BLOCK + 5))]
    FusedNoise(combo).add_([(5, 0.5), (6, -2.0)])
    FusedNoise(single).add_([(6, 1.0)])
    assert torch.allclose(combo[0][1], 0.5 * a - 2.0 * single[0][1], atol=1e-5)
    FusedNoise(views).add_([(5, -1.0)])
    assert all(float(v.abs().max()) < 1e-6 for _, v in views)
    print("ok")
""")


@pytest.mark.parametrize("rounds, layout", [(10, "quarters"), (7, "halves")])
def test_fused_noise_kernel_in_the_triton_interpreter(rounds, layout):
    """The kernel variants the GPU benchmark chooses between (fast math runs only on CUDA)."""
    r = subprocess.run([sys.executable, "-c", CHECKS, str(rounds), layout], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "TRITON_INTERPRET": "1"}, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
