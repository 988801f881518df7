"""Seeded noise over named weight tensors, identical on every engine that names its tensors the same.

ε for tensor ``name`` and seed ``s`` is standard normal, generated in fixed-size chunks of the flattened
tensor, chunk k from a generator seeded by hash(s, name, k). Chunking bounds the temporary memory to one
chunk; fixing the chunk size (not the iteration order) keeps ε a pure function of (s, name, device type).
Engines name tensors by their Hugging Face parameter names, so the transformers and vLLM engines
perturb identically.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import torch

CHUNK = 1 << 24  # elements: large enough that a GPU pass is not launch-bound (H100: 2^20 -> 20 ms, 2^24 -> 2.5 ms per 359M)


def chunk_seed(seed: int, name: str, chunk: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{name}/{chunk}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _chunks(flat: torch.Tensor) -> Iterable[tuple[int, torch.Tensor]]:
    for k, start in enumerate(range(0, flat.numel(), CHUNK)):
        yield k, flat[start : start + CHUNK]


def noise_like(part: torch.Tensor, seed: int, name: str, chunk: int) -> torch.Tensor:
    gen = torch.Generator(device=part.device).manual_seed(chunk_seed(seed, name, chunk))
    return torch.randn(part.numel(), generator=gen, device=part.device, dtype=torch.float32)


@torch.no_grad()
def add_noise_(tensor: torch.Tensor, name: str, seed: int, scale: float) -> None:
    """tensor += scale · ε(seed, name), in place."""
    for k, part in _chunks(tensor.view(-1)):
        part.add_(noise_like(part, seed, name, k).to(part.dtype), alpha=scale)


@torch.no_grad()
def add_combination_(tensor: torch.Tensor, name: str, terms: Sequence[tuple[int, float]]) -> None:
    """tensor += Σ c · ε(seed, name), accumulated in fp32 and added once (one rounding in low precision)."""
    for k, part in _chunks(tensor.view(-1)):
        acc = torch.zeros(part.numel(), dtype=torch.float32, device=part.device)
        for seed, coeff in terms:
            acc.add_(noise_like(part, seed, name, k), alpha=coeff)
        part.add_(acc.to(part.dtype))
