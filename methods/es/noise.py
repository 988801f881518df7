"""Seeded noise over named weight tensors, identical on every engine that names its tensors the same.

Every engine keeps its weights as (Hugging Face name, live tensor) views and changes them only through a
``Noise``: ``add_(views, terms)`` does θ += Σ c·ε(seed) for (seed, c) in ``terms``. Three families:

- ``independent`` (default): ε for tensor ``name`` and seed ``s`` is standard normal, in fixed-size chunks of
  the flattened tensor, chunk k from a generator seeded by hash(s, name, k) (on CUDA one fused Triton kernel
  draws it with counter-based Philox instead: noise_cuda.py). Chunking bounds temporary memory to one chunk;
  fixing the chunk size keeps ε a pure function of (s, name, device type).
- ``shared_seed``: the published ES code's draw (``utils/worker_extn.py``): for every vLLM parameter, a
  generator seeded with ``s`` itself draws ``randn(param.shape, dtype=param.dtype)``. Same-shape tensors get
  identical ε, and fused q/k/v and gate/up tensors are drawn whole, then sliced here, so the transformers
  engine reproduces the vLLM draw. Offered only to reproduce the published runs.
- ``lowrank`` (EGGROLL): for each covered 2-D weight W (out × in), ε = A·Bᵀ/√r with A (out × r) and B (in × r)
  standard normal from hash(s, name, 0) and hash(s, name, 1), so Var ε_jk = 1 as for full-rank noise; other
  tensors are not perturbed. A population member is then a rank-r LoRA adapter over one shared base.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Iterable, Literal, Protocol, Sequence

import torch
from pydantic import Field

from harness.config import StrictModel
from harness.errors import UserError

LOWRANK_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VOCAB_PADDING = 64  # vLLM pads embeddings and lm_head to a multiple of this (DEFAULT_VOCAB_PADDING_SIZE)
UpdateTerms = Sequence[tuple[int, float]]  # (seed, coefficient) pairs: θ += Σ c·ε(seed)


class NoiseSpec(StrictModel):
    """Which ε the engines draw (built by the ES config; see the module docstring)."""

    kind: Literal["independent", "shared_seed", "lowrank"] = "independent"
    rank: int = Field(1, gt=0)
    modules: list[str] = Field(default_factory=lambda: list(LOWRANK_MODULES))


class Noise(Protocol):
    def add_(self, views: Sequence[tuple[str, torch.Tensor]], terms: UpdateTerms) -> None:
        """θ += Σ c·ε(seed) for every (name, tensor) view, in place, accumulated in fp32 and rounded once."""
        ...

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
def add_combination_(tensor: torch.Tensor, name: str, terms: UpdateTerms) -> None:
    """tensor += Σ c · ε(seed, name), accumulated in fp32 and added once (one rounding in low precision)."""
    for k, part in _chunks(tensor.view(-1)):
        acc = torch.zeros(part.numel(), dtype=torch.float32, device=part.device)
        for seed, coeff in terms:
            acc.add_(noise_like(part, seed, name, k), alpha=coeff)
        part.add_(acc.to(part.dtype))


class IndependentNoise:
    """Per-tensor chunked normals; on CUDA one fused kernel over all tensors (where Triton runs)."""

    def __init__(self) -> None:
        self._fused: Any = None  # noise_cuda.FusedNoise, made for one list of tensor addresses
        self._fused_key: tuple[int, ...] | None = None
        self._fused_views: Sequence[tuple[str, torch.Tensor]] | None = None

    @torch.no_grad()
    def add_(self, views: Sequence[tuple[str, torch.Tensor]], terms: UpdateTerms) -> None:
        from methods.es.noise_cuda import FusedNoise
        from methods.es.noise_cuda import available as fused_available

        if views and views[0][1].is_cuda and fused_available():
            if views is not self._fused_views:  # an engine hands the same list each time: no addresses to compare
                key = tuple(v.data_ptr() for _, v in views)
                if self._fused_key != key:  # the launch tables hold the tensors' addresses
                    self._fused, self._fused_key = FusedNoise(views), key
                self._fused_views = views
            self._fused.add_(list(terms))
            return
        for name, v in views:
            if len(terms) == 1:
                add_noise_(v, name, *terms[0])
            else:
                add_combination_(v, name, terms)


def published_layout(name: str, shape: torch.Size, hf_config: Any) -> tuple[str, tuple[int, ...], int]:
    """Where an HF-named tensor sits in vLLM's parameters: (vLLM name, its full shape, first row). q/k/v live
    in one ``qkv_proj``, gate/up in ``gate_up_proj``, and the vocabulary is padded to a multiple of 64."""
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    kv = getattr(hf_config, "num_key_value_heads", heads) * head_dim
    parts = name.split(".")
    module = parts[-2] if len(parts) >= 2 else ""
    rest = tuple(shape[1:])
    fused = {"q_proj": ("qkv_proj", heads * head_dim + 2 * kv, 0), "k_proj": ("qkv_proj", heads * head_dim + 2 * kv,
             heads * head_dim), "v_proj": ("qkv_proj", heads * head_dim + 2 * kv, heads * head_dim + kv),
             "gate_proj": ("gate_up_proj", 2 * hf_config.intermediate_size, 0),
             "up_proj": ("gate_up_proj", 2 * hf_config.intermediate_size, hf_config.intermediate_size)}
    if module in fused:
        target, rows, start = fused[module]
        return name.replace(module, target), (rows, *rest), start
    if module in ("embed_tokens", "lm_head"):
        padded = -(-shape[0] // VOCAB_PADDING) * VOCAB_PADDING
        return name, (padded, *rest), 0
    return name, tuple(shape), 0


class SharedSeedNoise:
    """The published draw: one generator seeded with the member's seed itself for every vLLM parameter."""

    def __init__(self, hf_config: Any):
        self.hf_config = hf_config

    @torch.no_grad()
    def add_(self, views: Sequence[tuple[str, torch.Tensor]], terms: UpdateTerms) -> None:
        # the slices of one fused parameter (q/k/v, gate/up) share one draw per seed: draw it once for all of them
        groups: dict[str, list[tuple[torch.Tensor, tuple[int, ...], int]]] = {}
        for name, v in views:
            full_name, full_shape, start = published_layout(name, v.shape, self.hf_config)
            groups.setdefault(full_name, []).append((v, full_shape, start))
        for parts in groups.values():
            accs = [torch.zeros(v.shape, dtype=torch.float32, device=v.device) for v, _, _ in parts]
            v0, full_shape, _ = parts[0]
            for seed, coeff in terms:
                gen = torch.Generator(device=v0.device).manual_seed(int(seed))
                eps = torch.randn(full_shape, generator=gen, dtype=v0.dtype, device=v0.device)
                for acc, (v, _, start) in zip(accs, parts):
                    acc.add_(eps[start : start + v.shape[0]].float(), alpha=coeff)
            for acc, (v, _, _) in zip(accs, parts):
                v.add_(acc.to(v.dtype))


def weight_module(name: str, ndim: int) -> str | None:
    """The module a 2-D ``….MODULE.weight`` belongs to (what ``lowrank_modules`` names); None for other tensors."""
    parts = name.split(".")
    return parts[-2] if ndim == 2 and len(parts) >= 2 and parts[-1] == "weight" else None


def fused_factors(device: torch.device) -> bool:
    """Low-rank factors from the fused Philox kernel (CUDA with Triton), else from torch's generators."""
    from methods.es.noise_cuda import available

    return torch.device(device).type == "cuda" and available()


class LowRankNoise:
    """ε = A·Bᵀ/√r on covered 2-D weights (EGGROLL); the update Σ c·ε is one matmul of rank len(terms)·r.

    On CUDA the factors come from counter-based Philox keyed by (seed, name, factor) (noise_cuda.py), so one
    launch draws any set of them straight where they go: a whole population into vLLM's adapter slots, every
    term of an update. Elsewhere from torch's generators seeded by hash(seed, name, factor)."""

    def __init__(self, rank: int, modules: Sequence[str]):
        self.rank, self.modules = rank, tuple(modules)
        self._generators: dict[str, torch.Generator] = {}

    def covers(self, name: str, tensor: torch.Tensor) -> bool:
        return weight_module(name, tensor.dim()) in self.modules

    def _fused_draw(self, seeds: Sequence[int], name: str, shape: Sequence[int], device: torch.device,
                    scales: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """[scale_k·A_k] and [B_k] side by side (out × k·r, in × k·r) for seeds k, in one launch."""
        import numpy as np

        from methods.es.noise_cuda import FactorTable, factor_keys

        k, r = len(seeds), self.rank
        a = torch.empty(shape[0], k * r, device=device, dtype=torch.float32)
        b = torch.empty(shape[1], k * r, device=device, dtype=torch.float32)
        table = FactorTable([m[:, i * r:(i + 1) * r] for m in (a, b) for i in range(k)])
        keys = np.concatenate([factor_keys(seeds, [name], f)[:, 0] for f in (0, 1)])
        table.fill(np.arange(2 * k), keys, np.concatenate([np.asarray(scales, dtype=np.float64), np.ones(k)]))
        return a, b

    def factors(self, seed: int, name: str, shape: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """A (out × r) and B (in × r), fp32, standard normal, from (seed, name) alone."""
        if fused_factors(device):
            return self._fused_draw([seed], name, shape, device, [1.0])
        # one generator per device, re-seeded (which resets it fully): making one per factor cost a population of
        # 30 members at 7B ~13k generator constructions
        if str(device) not in self._generators:
            self._generators[str(device)] = torch.Generator(device=device)
        gen = self._generators[str(device)]
        a = torch.randn(shape[0], self.rank, generator=gen.manual_seed(chunk_seed(seed, name, 0)), device=device,
                        dtype=torch.float32)
        b = torch.randn(shape[1], self.rank, generator=gen.manual_seed(chunk_seed(seed, name, 1)), device=device,
                        dtype=torch.float32)
        return a, b

    def lora_pair(self, seed: int, name: str, shape: Sequence[int], device: torch.device,
                  scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The member's scale·ε as a LoRA pair with scaling 1: lora_A = Bᵀ (r × in), lora_B = scale·A/√r (out × r)."""
        a, b = self.factors(seed, name, shape, device)
        return b.T, a * (scale / math.sqrt(self.rank))

    @torch.no_grad()
    def add_(self, views: Sequence[tuple[str, torch.Tensor]], terms: UpdateTerms) -> None:
        scale = 1 / math.sqrt(self.rank)
        for name, v in views if terms else ():  # no terms: nothing to add (and no factors to draw)
            if not self.covers(name, v):
                continue
            if fused_factors(v.device):
                a, b = self._fused_draw([s for s, _ in terms], name, v.shape, v.device, [c * scale for _, c in terms])
            else:
                pairs = [self.factors(seed, name, v.shape, v.device) for seed, _ in terms]
                a = torch.cat([a * (c * scale) for (a, _), (_, c) in zip(pairs, terms)], dim=1)
                b = torch.cat([b for _, b in pairs], dim=1)
            v.add_((a @ b.T).to(v.dtype))

    def slot_writer(self, slots: Sequence[tuple[str, torch.Tensor, torch.Tensor]]) -> "SlotWriter":
        """For (HF name, vLLM lora_A stack, lora_B stack) of every covered weight: what writes members into them."""
        return SlotWriter(self, slots)


class SlotWriter:
    """Writes members into vLLM's LoRA slots: slot l of weight W gets lora_A = Bᵀ and lora_B = scale·A/√r (scaling
    1), the pair ``LowRankNoise.lora_pair`` gives. On CUDA every member and weight in one launch, the views'
    addresses kept once (7B: ~13k factors per population); elsewhere pair by pair."""

    def __init__(self, noise: LowRankNoise, slots: Sequence[tuple[str, torch.Tensor, torch.Tensor]]):
        self.noise, self.slots = noise, list(slots)
        self.names = [name for name, _, _ in slots]
        r, self.table = noise.rank, None
        a0 = slots[0][1]
        if fused_factors(a0.device):
            from methods.es.noise_cuda import FactorTable

            n_slots = a0.shape[0]  # views in order (slot, weight, factor): lora_B's A, then lora_A's B
            self.table = FactorTable([v for l in range(n_slots) for _, a, b in slots
                                      for v in (b[l, 0, :, :r], a[l, 0, :r].T)])
            self.table.warm_up()

    @torch.no_grad()
    def write(self, members: Sequence[tuple[int, int, float]]) -> None:
        """Each (slot index, seed, scale): that member's factors in that slot, rounded once to the slots' dtype."""
        r = self.noise.rank
        if self.table is None:
            for index, seed, scale in members:
                for name, a_stack, b_stack in self.slots:
                    lora_a, lora_b = self.noise.lora_pair(seed, name, (b_stack.shape[2], a_stack.shape[3]),
                                                          a_stack.device, scale)
                    a_stack[index, 0, :r].copy_(lora_a)
                    b_stack[index, 0, :, :r].copy_(lora_b)
            return
        import numpy as np

        from methods.es.noise_cuda import factor_keys

        n, seeds = len(self.names), [seed for _, seed, _ in members]
        segments = (np.array([i for i, _, _ in members])[:, None] * 2 * n + np.arange(2 * n)).reshape(-1)
        keys = np.stack([factor_keys(seeds, self.names, f) for f in (0, 1)], axis=-1).reshape(-1)
        scales = np.stack([np.repeat([[s / math.sqrt(r)] for _, _, s in members], n, axis=1),
                           np.ones((len(members), n))], axis=-1).reshape(-1)
        self.table.fill(segments, keys, scales)


def check_lowrank_modules(model_dir: Path, modules: Sequence[str]) -> None:
    """Every module named must hold a 2-D weight of the model: a name that matches none would leave those layers
    silently unperturbed (or, on vLLM, fail deep inside its LoRA loader). Read from the safetensors headers."""
    from safetensors import safe_open

    found: set[str] = set()
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            found.update(m for key in st.keys() if (m := weight_module(key, len(st.get_slice(key).get_shape()))))
    missing = [m for m in modules if m not in found]
    if found and missing:
        raise UserError(f"lowrank_modules: {', '.join(missing)} names no 2-D weight of {model_dir} "
                        f"(its 2-D weights belong to: {', '.join(sorted(found))})")


def make_noise(spec: NoiseSpec, hf_config: Any) -> Noise:
    if spec.kind == "shared_seed":
        return SharedSeedNoise(hf_config)
    if spec.kind == "lowrank":
        return LowRankNoise(spec.rank, spec.modules)
    return IndependentNoise()
