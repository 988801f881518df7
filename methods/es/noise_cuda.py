"""Fused noise on CUDA: one Triton kernel adds Σ_k c_k·ε(seed_k) to every weight tensor in one launch.

Per tensor, a generator and a few kernels cost ~60 µs whatever the tensor's size; over the ~300 tensors of a
0.5B model that made a perturbation pass 25-30× its memory-bandwidth bound (H100). Here ε for tensor ``name``
and seed ``s`` is counter-based Philox keyed by splitmix64(hash(name) ^ s·φ) (normals per counter laid out by
block: see the kernels), so each block of each tensor draws its own noise with no state, and one launch
covers all tensors through a table of their addresses. ε is still a pure function of (seed, HF name, element), so every CUDA engine that names its
tensors the same (transformers or vLLM) perturbs identically; it differs from the CPU path's ε, as torch's
CPU and CUDA generators already do.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

from methods.es.noise import chunk_seed

BLOCK = 2048


class Variant(NamedTuple):
    """How the kernel turns Philox output into normals. ``rounds``: Philox rounds (10 is Random123's default;
    7 already passes BigCrush). ``halves``: split each 32-bit output into two 16-bit uniforms, eight normals per
    Philox call instead of four (tails cut at 4.85 σ). ``fast``: Box-Muller with the hardware's approximate
    log/sin/cos (CUDA only; the Triton interpreter has no libdevice). ``warps`` (warps per program) and
    ``graphs`` (replay launches from CUDA graphs) are launch settings: the noise is the same for any value."""

    rounds: int = 10
    halves: bool = False
    fast: bool = False
    warps: int = 4
    graphs: bool = True


# 16-bit halves, 7 Philox rounds and approximate log/sin/cos: the Box-Muller transcendentals and the Philox rounds,
# not memory, bounded the precise kernel (3× the copy bound); scripts/gpu_checks.py measures every variant and
# launch setting (4 warps since the weights are loaded before the noise is drawn: results/gpu-h200-2026-12-03)
DEFAULT = Variant(rounds=7, halves=True, fast=True)


try:  # Triton comes with torch's CUDA builds (and with vLLM); without it the per-tensor path runs
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover
    triton = None

if triton is not None:

    @triton.jit
    def _box_muller(u1, u2, FAST: tl.constexpr):
        u1 = tl.maximum(1.0e-7, u1)
        th = 6.283185307179586 * u2
        if FAST:
            r = tl.sqrt(-2.0 * libdevice.fast_logf(u1))
            return r * libdevice.fast_cosf(th), r * libdevice.fast_sinf(th)
        else:
            r = tl.sqrt(-2.0 * tl.log(u1))
            return r * tl.cos(th), r * tl.sin(th)

    @triton.jit
    def _u16(x, SHIFT: tl.constexpr):
        # (h + 0.5) / 65536 for the 16-bit half h, without an int-to-float conversion (a quarter-rate instruction
        # on the GPU): h's bits as the top of a float's mantissa in [1, 2), then one exact subtraction
        bits = (((x >> SHIFT) & 0xFFFF) << 7) | 0x3F800000
        return bits.to(tl.float32, bitcast=True) - (1.0 - 0.5 / 65536.0)

    @triton.jit
    def _store(ptr, offs, n, x, acc, DTYPE: tl.constexpr):
        tl.store(ptr + offs, (x.to(tl.float32) + acc).to(DTYPE), mask=offs < n)

    # not specialized on the term count: a perturbation (1 term) and an update (N terms) share one compiled
    # kernel. Triton specializes an int equal to 1, so the first update compiled a second kernel: the first
    # update took 0.81 s against 0.02 s for the second (0.5B, H100); with this, both together 0.11 s
    @triton.jit(do_not_specialize=["n_terms", "n_tensors"])
    def add_noise_kernel(ptrs, numels, seeds, block_tensor, block_start, coeffs, n_terms, n_tensors,
                         DTYPE: tl.constexpr, BLOCK: tl.constexpr, ROUNDS: tl.constexpr, FAST: tl.constexpr):
        # One Philox call gives four normals: counter c of a block feeds its elements c, c+Q, c+2Q, c+3Q
        # (Q = BLOCK/4), so each quarter of the block is read and written contiguously.
        Q: tl.constexpr = BLOCK // 4
        pid = tl.program_id(0)
        t = tl.load(block_tensor + pid)
        start = tl.load(block_start + pid)
        n = tl.load(numels + t)
        ptr = tl.load(ptrs + t).to(tl.pointer_type(DTYPE))
        counter = (start // 4 + tl.arange(0, Q)).to(tl.uint32)
        a0 = tl.zeros([Q], dtype=tl.float32)
        a1 = tl.zeros([Q], dtype=tl.float32)
        a2 = tl.zeros([Q], dtype=tl.float32)
        a3 = tl.zeros([Q], dtype=tl.float32)
        for k in range(n_terms):
            seed = tl.load(seeds + k * n_tensors + t)
            c = tl.load(coeffs + k)
            i0, i1, i2, i3 = tl.randint4x(seed, counter, ROUNDS)
            n0, n1 = _box_muller(tl.random.uint_to_uniform_float(i0), tl.random.uint_to_uniform_float(i1), FAST)
            n2, n3 = _box_muller(tl.random.uint_to_uniform_float(i2), tl.random.uint_to_uniform_float(i3), FAST)
            a0 += c * n0
            a1 += c * n1
            a2 += c * n2
            a3 += c * n3
        offs = start + tl.arange(0, Q)
        _store(ptr, offs, n, tl.load(ptr + offs, mask=offs < n), a0, DTYPE)
        _store(ptr, offs + Q, n, tl.load(ptr + offs + Q, mask=offs + Q < n), a1, DTYPE)
        _store(ptr, offs + 2 * Q, n, tl.load(ptr + offs + 2 * Q, mask=offs + 2 * Q < n), a2, DTYPE)
        _store(ptr, offs + 3 * Q, n, tl.load(ptr + offs + 3 * Q, mask=offs + 3 * Q < n), a3, DTYPE)

    @triton.jit(do_not_specialize=["n_terms", "n_tensors"])
    def add_noise_kernel8(ptrs, numels, seeds, block_tensor, block_start, coeffs, n_terms, n_tensors,
                          DTYPE: tl.constexpr, BLOCK: tl.constexpr, ROUNDS: tl.constexpr, FAST: tl.constexpr):
        # Eight normals per Philox call from its 16-bit halves: counter c feeds elements c + j·(BLOCK/8), j < 8.
        # The weights are loaded before the noise is drawn, so that their reads overlap the arithmetic; the
        # noise is still summed apart and added once.
        E: tl.constexpr = BLOCK // 8
        pid = tl.program_id(0)
        t = tl.load(block_tensor + pid)
        start = tl.load(block_start + pid)
        n = tl.load(numels + t)
        ptr = tl.load(ptrs + t).to(tl.pointer_type(DTYPE))
        counter = (start // 8 + tl.arange(0, E)).to(tl.uint32)
        offs = start + tl.arange(0, E)
        x0 = tl.load(ptr + offs, mask=offs < n)
        x1 = tl.load(ptr + offs + E, mask=offs + E < n)
        x2 = tl.load(ptr + offs + 2 * E, mask=offs + 2 * E < n)
        x3 = tl.load(ptr + offs + 3 * E, mask=offs + 3 * E < n)
        x4 = tl.load(ptr + offs + 4 * E, mask=offs + 4 * E < n)
        x5 = tl.load(ptr + offs + 5 * E, mask=offs + 5 * E < n)
        x6 = tl.load(ptr + offs + 6 * E, mask=offs + 6 * E < n)
        x7 = tl.load(ptr + offs + 7 * E, mask=offs + 7 * E < n)
        a0 = tl.zeros([E], dtype=tl.float32)
        a1 = tl.zeros([E], dtype=tl.float32)
        a2 = tl.zeros([E], dtype=tl.float32)
        a3 = tl.zeros([E], dtype=tl.float32)
        a4 = tl.zeros([E], dtype=tl.float32)
        a5 = tl.zeros([E], dtype=tl.float32)
        a6 = tl.zeros([E], dtype=tl.float32)
        a7 = tl.zeros([E], dtype=tl.float32)
        for k in range(n_terms):
            seed = tl.load(seeds + k * n_tensors + t)
            c = tl.load(coeffs + k)
            i0, i1, i2, i3 = tl.randint4x(seed, counter, ROUNDS)
            n0, n1 = _box_muller(_u16(i0, 0), _u16(i0, 16), FAST)
            n2, n3 = _box_muller(_u16(i1, 0), _u16(i1, 16), FAST)
            n4, n5 = _box_muller(_u16(i2, 0), _u16(i2, 16), FAST)
            n6, n7 = _box_muller(_u16(i3, 0), _u16(i3, 16), FAST)
            a0 += c * n0
            a1 += c * n1
            a2 += c * n2
            a3 += c * n3
            a4 += c * n4
            a5 += c * n5
            a6 += c * n6
            a7 += c * n7
        _store(ptr, offs, n, x0, a0, DTYPE)
        _store(ptr, offs + E, n, x1, a1, DTYPE)
        _store(ptr, offs + 2 * E, n, x2, a2, DTYPE)
        _store(ptr, offs + 3 * E, n, x3, a3, DTYPE)
        _store(ptr, offs + 4 * E, n, x4, a4, DTYPE)
        _store(ptr, offs + 5 * E, n, x5, a5, DTYPE)
        _store(ptr, offs + 6 * E, n, x6, a6, DTYPE)
        _store(ptr, offs + 7 * E, n, x7, a7, DTYPE)


if triton is not None:

    @triton.jit
    def fill_factors_kernel(ptrs, rows, row_strides, col_strides, keys, scales, block_segment, block_start,
                            RANK: tl.constexpr, DTYPE: tl.constexpr, BLOCK: tl.constexpr):
        # segment s: a (rows × RANK) matrix of scale·N(0, 1) from Philox keyed by keys[s], element (i, j) from
        # counter i·RANK + j, stored at ptrs[s] + i·row_strides[s] + j·col_strides[s] (any 2-D view)
        pid = tl.program_id(0)
        s = tl.load(block_segment + pid)
        e = tl.load(block_start + pid) + tl.arange(0, BLOCK)
        x = tl.randn(tl.load(keys + s), e.to(tl.uint32)) * tl.load(scales + s)
        ptr = tl.load(ptrs + s).to(tl.pointer_type(DTYPE))
        where = (e // RANK) * tl.load(row_strides + s) + (e % RANK) * tl.load(col_strides + s)
        tl.store(ptr + where, x.to(DTYPE), mask=e < tl.load(rows + s) * RANK)


class FactorTable:
    """Where low-rank factors go: 2-D views (rows × rank) of one dtype and device, their addresses and strides
    kept once (a population at 7B writes ~13k of them), filled in one launch by ``fill``."""

    def __init__(self, views: Sequence[torch.Tensor]):
        self.views = list(views)  # kept alive: the kernel reaches them only through their addresses
        self.rank, self.dtype, self.device = views[0].shape[1], views[0].dtype, views[0].device
        if any(v.shape[1] != self.rank or v.dtype != self.dtype or v.device != self.device for v in views):
            raise ValueError("one factor table holds views of one rank, dtype and device")
        self.ptrs = np.array([v.data_ptr() for v in views], dtype=np.int64)
        self.rows = np.array([v.shape[0] for v in views], dtype=np.int64)
        self.strides = np.array([v.stride() for v in views], dtype=np.int64)
        self.blocks = (self.rows * self.rank + BLOCK - 1) // BLOCK

    @torch.no_grad()
    def fill(self, segments: np.ndarray, keys: np.ndarray, scales: np.ndarray) -> None:
        """views[segments[k]] = scales[k]·N(0, 1) from Philox key keys[k], for every k, in one launch."""
        blocks = self.blocks[segments]
        first = np.cumsum(blocks) - blocks
        block_segment = np.repeat(np.arange(len(segments), dtype=np.int64), blocks)
        block_start = (np.arange(int(blocks.sum()), dtype=np.int64) - np.repeat(first, blocks)) * BLOCK
        self._launch(segments, keys, scales, block_segment, block_start)

    def warm_up(self) -> None:
        """Compile the kernel for these views with one block that writes nothing (past segment 0's end): the first
        population written must not pay Triton's compilation."""
        end = np.array([self.rows[0] * self.rank], dtype=np.int64)
        self._launch(np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.uint64), np.zeros(1), np.zeros(1, np.int64), end)

    def _launch(self, segments, keys, scales, block_segment, block_start) -> None:
        # one host-to-device copy for the integer tables; every part an even number of int64s, so each part's
        # address keeps the same 16-byte alignment (Triton compiles a kernel per alignment of its pointers)
        if len(block_segment) % 2:  # a block past segment 0's end: it writes nothing
            block_segment = np.append(block_segment, 0)
            block_start = np.append(block_start, self.rows[segments[0]] * self.rank)
        if len(segments) % 2:
            segments, keys, scales = np.append(segments, segments[0]), np.append(keys, keys[0]), np.append(scales, 0)
        ints = np.stack([self.ptrs[segments], self.rows[segments], self.strides[segments, 0],
                         self.strides[segments, 1], keys.astype(np.uint64).view(np.int64)])
        table = torch.from_numpy(np.concatenate([ints.reshape(-1), block_segment, block_start]))
        table = table.to(self.device, non_blocking=True)
        n = len(segments)
        floats = torch.from_numpy(scales.astype(np.float32)).to(self.device, non_blocking=True)
        fill_factors_kernel[(len(block_segment),)](
            table[0:n], table[n:2 * n], table[2 * n:3 * n], table[3 * n:4 * n], table[4 * n:5 * n], floats,
            table[5 * n:5 * n + len(block_segment)], table[5 * n + len(block_segment):],
            RANK=self.rank, DTYPE=triton_dtype(self.dtype), BLOCK=BLOCK)


def factor_keys(seeds: Sequence[int], names: Sequence[str], factor: int) -> np.ndarray:
    """The Philox key of low-rank factor ``factor`` (0: A, 1: B) of each (member seed, tensor name): [seeds, names]."""
    return philox_keys(seeds, np.array([chunk_seed(0, n, 1 + factor) for n in names], dtype=np.uint64))


def triton_dtype(dtype: torch.dtype):
    return {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}[dtype]


@lru_cache(maxsize=1)
def available() -> bool:
    return triton is not None and torch.cuda.is_available()


def name_key(name: str) -> int:
    """A tensor's 64-bit name hash, computed once per tensor (the launch tables keep it)."""
    return chunk_seed(0, name, 0)


def philox_keys(seeds: Sequence[int], name_keys: np.ndarray) -> np.ndarray:
    """Philox key of (member seed, tensor) for every pair: splitmix64(name hash ^ seed·φ), vectorized (hashing
    every name on the host at every call cost ~0.3 ms of a 2 ms perturbation pass)."""
    with np.errstate(over="ignore"):
        z = name_keys[None, :] ^ (np.array(seeds, dtype=np.uint64)[:, None] * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))) & np.uint64(0x7FFFFFFFFFFFFFFF)


class FusedNoise:
    """The launch tables for one fixed list of (name, contiguous CUDA tensor) views, grouped by dtype."""

    def __init__(self, views: Sequence[tuple[str, torch.Tensor]], variant: Variant = DEFAULT):
        self.variant = variant
        self.groups: list[dict[str, Any]] = []
        by_dtype: dict[torch.dtype, list[tuple[str, torch.Tensor]]] = {}
        for name, v in views:
            if not v.is_contiguous() or v.numel() >= 2**31:
                raise ValueError(f"{name}: fused noise needs contiguous tensors under 2^31 elements")
            by_dtype.setdefault(v.dtype, []).append((name, v))
        for dtype, group in by_dtype.items():
            device = group[0][1].device
            numels = torch.tensor([v.numel() for _, v in group], dtype=torch.int32)
            blocks = (numels + BLOCK - 1) // BLOCK
            tensor_of_block = torch.repeat_interleave(torch.arange(len(group), dtype=torch.int32), blocks)
            first_block = torch.cumsum(blocks, 0) - blocks
            start = (torch.arange(int(blocks.sum()), dtype=torch.int32)
                     - torch.repeat_interleave(first_block.to(torch.int32), blocks)) * BLOCK
            self.groups.append({
                # "tensors" keeps them alive: the kernel reaches them only through their addresses
                "names": [n for n, _ in group], "dtype": dtype, "tensors": [v for _, v in group],
                "name_keys": np.array([name_key(n) for n, _ in group], dtype=np.uint64),
                "ptrs": torch.tensor([v.data_ptr() for _, v in group], dtype=torch.int64, device=device),
                "numels": numels.to(device), "block_tensor": tensor_of_block.to(device),
                "block_start": start.to(device), "n_blocks": int(blocks.sum()), "device": device,
            })

    @torch.no_grad()
    def add_(self, terms: Sequence[tuple[int, float]]) -> None:
        """θ += Σ c·ε(seed) over every tensor, accumulated in fp32 and rounded once. On CUDA, each number of terms
        is launched once directly (Triton compiles it) and from then on replayed from a CUDA graph whose launch
        table is refilled in place: Triton's Python launch cost ~0.15 ms a pass, a third of a 0.5B model's bound."""
        for g in self.groups:
            keys, coeffs = self._table(g, terms)
            graphs = g.setdefault("graphs", {})
            if g["device"].type != "cuda" or not self.variant.graphs:
                self._launch(g, keys.to(g["device"], non_blocking=True),
                             coeffs.to(g["device"], non_blocking=True), len(terms))
            elif len(terms) in graphs:
                graph, dev_keys, dev_coeffs = graphs[len(terms)]
                dev_keys.copy_(keys, non_blocking=True)
                dev_coeffs.copy_(coeffs, non_blocking=True)
                graph.replay()
            else:
                dev_keys, dev_coeffs = keys.to(g["device"]), coeffs.to(g["device"])
                self._launch(g, dev_keys, dev_coeffs, len(terms))  # this call's noise, and Triton's compilation
                graph = torch.cuda.CUDAGraph()
                # recorded, not run: the next call with as many terms replays it
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    self._launch(g, dev_keys, dev_coeffs, len(terms))
                graphs[len(terms)] = (graph, dev_keys, dev_coeffs)

    def _launch(self, g: dict[str, Any], keys: torch.Tensor, coeffs: torch.Tensor, n_terms: int) -> None:
        kernel = add_noise_kernel8 if self.variant.halves else add_noise_kernel
        kernel[(g["n_blocks"],)](
            g["ptrs"], g["numels"], keys, g["block_tensor"], g["block_start"], coeffs, n_terms, len(g["names"]),
            DTYPE=triton_dtype(g["dtype"]), BLOCK=BLOCK, ROUNDS=self.variant.rounds, FAST=self.variant.fast,
            num_warps=self.variant.warps)

    @staticmethod
    def _table(g: dict[str, Any], terms: Sequence[tuple[int, float]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The Philox keys [terms × tensors] and the coefficients on the host, pinned on a CUDA machine (a copy
        from pageable memory waits for the host)."""
        keys = torch.from_numpy(philox_keys([s for s, _ in terms], g["name_keys"]).view(np.int64).reshape(-1))
        coeffs = torch.tensor([c for _, c in terms], dtype=torch.float32, device="cpu")  # whatever the default device
        if g["device"].type == "cuda":
            keys, coeffs = keys.pin_memory(), coeffs.pin_memory()
        return keys, coeffs
