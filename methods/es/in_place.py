"""ES's in-place weight operations, written once for every engine.

``perturb(seed, scale)`` θ += scale·ε(seed); ``restore(seed, scale)`` back to θ exactly (snapshot) or θ −= scale·ε(seed)
(subtract: exact in fp32 up to rounding, not in bf16); ``apply_update(terms)`` θ += Σ c·ε(seed) (or Adam's step along it, optimizer.py); ``checksum``;
``save_hf(dir)``; the weight broadcast of ``update: broadcast``. ε is the engine's ``Noise`` (noise.py).
"""

from __future__ import annotations

import copy
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from harness.checkpoint import write_folder
from methods.es.noise import Noise, UpdateTerms
from methods.es.optimizer import AdamMoments, AdamStep

PROBE_COPY_BYTES = 256 << 20
PROBE_WARM_UP_S = 0.3
PROBE_SEED = 2**31 - 1  # outside the trainer's member seeds; the probe restores exactly (snapshot) anyway
HF_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "chat_template.jinja")


class InPlaceES:
    """The weight operations of ``ESEngine`` over ``named_views()`` ((HF name, live tensor view) pairs), through
    ``self.noise``: the transformers engine holds them in this process, the vLLM engine inside its worker."""

    restore_mode: str = "snapshot"
    noise: Noise
    _snapshot: list[torch.Tensor] | None = None
    _adam: AdamMoments | None = None
    _update_noise: Noise | None = None

    def named_views(self) -> list[tuple[str, torch.Tensor]]:
        raise NotImplementedError

    def perturb(self, seed: int, scale: float) -> None:
        views = self.named_views()
        if self.restore_mode == "snapshot" and self._snapshot is None:
            self._snapshot = [v.detach().clone() for _, v in views]
        self.noise.add_(views, [(seed, scale)])

    def restore(self, seed: int, scale: float) -> None:
        views = self.named_views()
        if self.restore_mode == "snapshot":
            assert self._snapshot is not None, "restore() without perturb()"
            with torch.no_grad():
                torch._foreach_copy_([v for _, v in views], self._snapshot)  # one launch, not one per tensor
        else:
            self.noise.add_(views, [(seed, -scale)])

    def apply_update(self, terms: UpdateTerms, adam: AdamStep | None = None) -> str:
        views = self.named_views()
        if adam is None:
            self.noise.add_(views, list(terms))
        else:  # the direction Σ c·ε into the gradient buffers, then Adam's step from them
            moments = self._moments()
            self._direction_noise().add_(moments.grad_views, list(terms))
            moments.step_(views, adam)
        if self._snapshot is not None:
            with torch.no_grad():
                torch._foreach_copy_(self._snapshot, [v for _, v in views])
        self.sync()
        return self.checksum()

    def _moments(self) -> AdamMoments:
        if self._adam is None:
            self._adam = AdamMoments(self.named_views())
        return self._adam

    def _direction_noise(self) -> Noise:
        """The engine's noise, kept apart for the gradient buffers: a fused kernel's launch tables hold the addresses
        of one list of tensors, and the weights' list is the one the population uses."""
        if self._update_noise is None:
            self._update_noise = copy.copy(self.noise)
        return self._update_noise

    def save_optimizer(self, path: str) -> None:
        from safetensors.torch import save_file

        save_file(self._moments().state_dict(), path)

    def load_optimizer(self, path: str) -> None:
        from safetensors.torch import load_file

        self._moments().load_state_dict(load_file(path))

    def sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def checksum(self) -> str:
        """Cheap fingerprint of the weights: float64 sum and sum of squares, equal iff engines agree (same device
        type). Reduced on the device with one transfer at the end (one per tensor made it 7 % of a 0.5B
        iteration on an H100)."""
        views = [v for _, v in self.named_views()]
        with torch.no_grad():
            sums = torch.stack([v.sum(dtype=torch.float64) for v in views]).sum()
            norms = torch.stack([torch.linalg.vector_norm(v, dtype=torch.float64) for v in views])
            total, sq = torch.stack([sums, (norms * norms).sum()]).tolist()
        return f"{total:.10e}/{sq:.10e}"

    def count_elements(self) -> int:
        return sum(v.numel() for _, v in self.named_views())

    def probe(self, repeat: int = 5) -> dict[str, float]:
        """One perturbation pass over all weights, timed against its memory-bandwidth bound: 2 × weight bytes
        (read + write) ÷ a device-to-device copy measured here (256 MiB at most: enough to saturate it)."""
        views = self.named_views()
        weight_bytes = sum(v.numel() * v.element_size() for _, v in views)
        probe_bytes = min(weight_bytes, PROBE_COPY_BYTES)
        src = torch.empty(probe_bytes, dtype=torch.uint8, device=views[0][1].device)
        dst = torch.empty_like(src)
        self._warm_up(lambda: dst.copy_(src))
        copy_s = self._median_seconds(lambda: dst.copy_(src), repeat)
        del src, dst  # freed before the rest of the probe
        if torch.cuda.is_available():  # hand the buffers back: they must not count in the run's memory peak
            torch.cuda.empty_cache()
        copy_bps = 2 * probe_bytes / copy_s
        seed, passes, restores, on_device = PROBE_SEED, list[float](), list[float](), list[float]()
        cuda = views[0][1].is_cuda
        self.perturb(seed, 1e-3)  # takes the snapshot
        self.restore(seed, 1e-3)

        def perturb_and_restore() -> None:
            self.perturb(seed, 1e-3)
            self.restore(seed, 1e-3)

        self._warm_up(perturb_and_restore)
        for _ in range(repeat + 1):  # the first of each is dropped
            # each timed on its own: a restore still running on the device when the next perturbation's clock
            # starts is counted in it (the H100 figures before this, 2.06-2.42 × the bound, were pass + restore)
            for op, times in ((self.perturb, passes), (self.restore, restores)):
                self.sync()
                if cuda and op == self.perturb:  # the device's own clock too: wall minus it is host time
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                t = time.perf_counter()
                op(seed, 1e-3)
                if cuda and op == self.perturb:
                    end.record()
                self.sync()
                times.append(time.perf_counter() - t)
                if cuda and op == self.perturb:
                    on_device.append(start.elapsed_time(end) / 1e3)
        bound = 2 * weight_bytes / copy_bps
        perturb_s = statistics.median(passes[1:])
        figures = {"weight_bytes": weight_bytes, "copy_GBps": copy_bps / 1e9, "perturb_pass_s": perturb_s,
                   "restore_pass_s": statistics.median(restores[1:]), "bandwidth_bound_s": bound,
                   "perturb_vs_bound": perturb_s / bound}
        if on_device:
            figures["perturb_device_s"] = statistics.median(on_device[1:])
        return figures

    def _warm_up(self, fn: Callable[[], object]) -> None:
        """Runs ``fn`` back to back for ``PROBE_WARM_UP_S``: a device idle before the probe runs its first
        milliseconds at lower clocks (the 0.5B probe's copy read 3.4 TB/s in an engine, 3.8 on the same H200 warm)."""
        end = time.perf_counter() + (PROBE_WARM_UP_S if torch.cuda.is_available() else 0)
        while time.perf_counter() < end:
            fn()
            self.sync()

    def _median_seconds(self, fn, repeat: int) -> float:
        fn()
        times = []
        for _ in range(repeat):
            self.sync()
            t = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    # -- the broadcast update: engine 0 applies it, every engine receives its weights (NCCL on GPU, gloo on CPU)

    def sync_address(self) -> str:
        """Where engine 0 hosts the rendezvous store of the engines' weight-sync group."""
        import socket

        try:
            import ray

            host = ray.util.get_node_ip_address()
        except Exception:  # noqa: BLE001 - no Ray: one machine
            host = "127.0.0.1"
        with socket.socket() as s:
            s.bind(("", 0))
            return f"{host}:{s.getsockname()[1]}"

    def sync_init(self, address: str, rank: int, world: int) -> None:
        """Join the weight-sync group: its own process group (vLLM holds the default one in its workers)."""
        import datetime

        import torch.distributed as dist

        host, port = address.rsplit(":", 1)
        tcp = dist.TCPStore(host, int(port), world, is_master=rank == 0, timeout=datetime.timedelta(minutes=10))
        store = dist.PrefixStore("esgrpo-weights", tcp)
        device = self.named_views()[0][1].device
        self._group: Any = (dist.ProcessGroupNCCL(store, rank, world) if device.type == "cuda"  # type: ignore[call-arg]
                       else dist.ProcessGroupGloo(store, rank, world, datetime.timedelta(minutes=10)))
        self._store = store  # the store must outlive the group

    def broadcast_weights(self, src: int = 0) -> str:
        """Every weight from engine ``src`` (which applied the update) to this engine, in place."""
        views = [v for _, v in self.named_views()]
        with torch.no_grad():
            for v in views:
                # the collectives need contiguous tensors; a low-rank vLLM engine's fused weights are strided views
                buf = v if v.is_contiguous() else v.contiguous()
                self._group.broadcast(buf, src).wait()
                if buf is not v:
                    v.copy_(buf)
            if self._snapshot is not None:
                torch._foreach_copy_(self._snapshot, views)
        self.sync()
        return self.checksum()

    def kv_cache_bytes(self) -> int:
        return 0  # engines that preallocate a KV cache (vLLM) report it

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: v.detach().to("cpu", copy=True).contiguous() for name, v in self.named_views()}

    def save_hf(self, out_dir: str, source_dir: str) -> str:
        """HF-format checkpoint (safetensors + the source model's config and tokenizer), written atomically."""
        from safetensors.torch import save_file

        def fill(tmp: Path) -> None:
            for f in HF_FILES:
                if (Path(source_dir) / f).is_file():
                    shutil.copy2(Path(source_dir) / f, tmp / f)
            save_file(self.export_state_dict(), str(tmp / "model.safetensors"), metadata={"format": "pt"})

        return str(write_folder(Path(out_dir), fill))
