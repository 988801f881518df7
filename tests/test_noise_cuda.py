"""The fused CUDA noise kernel's logic, run on the CPU through Triton's interpreter (TRITON_INTERPRET=1 must be
set before Triton is imported, hence a subprocess). On a GPU, scripts/gpu_checks.py times every variant."""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

# Each script runs on the device its last argument names: the CPU through Triton's interpreter here, CUDA in
# tests/gpu (the same script, compiled for the GPU).
CHECKS = textwrap.dedent("""
    import sys
    import numpy as np, torch
    DEV = sys.argv[-1]
    torch.set_default_device(DEV)
    from methods.es.noise_cuda import BLOCK, FusedNoise as Fused, Variant
    variant = Variant(rounds=int(sys.argv[1]), halves=sys.argv[2] == "halves")
    FusedNoise = lambda views: Fused(views, variant)
    views = [("a.weight", torch.zeros(3 * BLOCK + 5)), ("b.weight", torch.zeros(300, 7)), ("c", torch.zeros(BLOCK))]
    FusedNoise(views).add_([(5, 1.0)])
    a, b, c = (v.clone() for _, v in views)
    for x in (a, b, c):  # every element reached, standard normal
        assert bool((x != 0).all()) and abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1, x
    assert abs(float(np.corrcoef(a[:-1].cpu().numpy(), a[1:].cpu().numpy())[0, 1])) < 0.1
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
    r = subprocess.run([sys.executable, "-c", CHECKS, str(rounds), layout, "cpu"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "TRITON_INTERPRET": "1"}, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


PINNED = textwrap.dedent("""
    import hashlib, torch
    from methods.es.noise_cuda import BLOCK, FusedNoise, Variant
    for rounds, halves in ((10, False), (7, True)):
        g = torch.Generator().manual_seed(0)
        views = [("a.weight", torch.randn(3 * BLOCK + 5, generator=g) * 0.02),
                 ("b.weight", (torch.randn(300, 7, generator=g) * 0.02).to(torch.bfloat16))]
        FusedNoise(views, Variant(rounds=rounds, halves=halves)).add_([(5, 1e-3), (7, -0.25e-3), (9, 3e-4)])
        print(hashlib.sha256(b"".join(x.float().numpy().tobytes() for _, x in views)).hexdigest()[:16])
""")


def test_fused_noise_is_pinned():
    """ε is a function of (seed, name, element) that runs and checkpoints rely on: a faster kernel (launch settings,
    instruction choice, load order) must add bit for bit what the kernel of 2026-12-02 added, rounding included."""
    r = subprocess.run([sys.executable, "-c", PINNED], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "TRITON_INTERPRET": "1"}, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["c2f8a517e8811350", "31b126373d24a84c"]


LOWRANK = textwrap.dedent("""
    import math, sys
    import torch
    DEV = sys.argv[-1]
    torch.set_default_device(DEV)
    import methods.es.noise as noise
    from methods.es.vllm_lora import concat_layout
    noise.fused_factors = lambda device: True  # the CUDA path (on CPU tensors: through the interpreter)
    n = noise.LowRankNoise(rank=2, modules=["q_proj"])
    a, b = n.factors(5, "m.q_proj.weight", (300, 40), torch.device(DEV))
    a2, b2 = n.factors(5, "m.q_proj.weight", (300, 40), torch.device(DEV))
    assert torch.equal(a, a2) and torch.equal(b, b2) and a.shape == (300, 2) and b.shape == (40, 2)
    assert abs(float(a.mean())) < 0.15 and abs(float(a.std()) - 1) < 0.15 and not torch.equal(a[:40], b)
    other, _ = n.factors(6, "m.q_proj.weight", (300, 40), torch.device(DEV))
    assert not torch.equal(a, other) and not torch.equal(a, n.factors(5, "m.k_proj.weight", (300, 40), DEV)[0])
    # an update: every term's factors in one launch, the same sum as term by term
    w = torch.zeros(300, 40)
    n.add_([("m.q_proj.weight", w), ("m.o_proj.weight", torch.zeros(3, 3))], [(5, 0.5), (6, -2.0)])
    want = sum(c / math.sqrt(2) * x @ y.T for (x, y), c in
               ((n.factors(s, "m.q_proj.weight", (300, 40), DEV), c) for s, c in ((5, 0.5), (6, -2.0))))
    torch.testing.assert_close(w, want)
    # vLLM's slots (lora_B stacks as strided views of a fused layer's [W | B]): members where the table says
    slices, slots = (12, 4, 4), 3
    _, _, a_stacks, b_stacks = concat_layout(torch.zeros(20, 40), slices, slots, 8, torch.float32)
    names = ["m.q_proj.weight", "m.k_proj.weight", "m.v_proj.weight"]
    writer = n.slot_writer(list(zip(names, a_stacks, b_stacks)))  # compiles its kernel, writing nothing
    assert all(float(t.abs().max()) == 0 for t in (*a_stacks, *b_stacks))
    writer.write([(2, 11, 0.01), (0, 12, -0.01)])
    for index, seed, scale in ((2, 11, 0.01), (0, 12, -0.01)):
        for name, a_st, b_st, rows in zip(names, a_stacks, b_stacks, slices):
            lora_a, lora_b = n.lora_pair(seed, name, (rows, 40), DEV, scale)
            torch.testing.assert_close(a_st[index, 0, :2], lora_a)
            torch.testing.assert_close(b_st[index, 0, :, :2], lora_b)
    assert all(float(t[1].abs().max()) == 0 for t in (*a_stacks, *b_stacks))  # slot 1: untouched
    assert all(float(t[..., 2:].abs().max()) == 0 for t in b_stacks)  # ranks past 2: vLLM's padding, untouched
    print("ok")
""")


def test_lowrank_factors_and_slot_writer_in_the_triton_interpreter():
    """The CUDA path of low-rank noise (one Philox launch per update or population) on CPU tensors."""
    r = subprocess.run([sys.executable, "-c", LOWRANK, "cpu"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "TRITON_INTERPRET": "1"}, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
