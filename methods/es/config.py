"""ES hyperparameters; the defaults reproduce the published alignment run's rule."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from harness.method import MethodConfig
from methods.es.engine import EngineConfig
from methods.es.noise import LOWRANK_MODULES, NoiseSpec
from methods.es.optimizer import AdamStep
from methods.es.vllm_engine import LORA_RANKS


def engine_share(population: int, engines: int) -> int:
    """Jobs per engine when each evaluates its share in one call: the population and the unperturbed policy,
    split evenly in order (the first shares are all members)."""
    return -(-(population + 1) // engines)


def members_or_auto(v: object) -> object:
    """One message for the field (a union's members would each add their own)."""
    if v is None or v == "auto" or (type(v) is int and v > 0):
        return v
    raise ValueError(f"{v!r}: a positive number of members, or 'auto'")


# an iteration scores (population + 1) × prompts completions: past these, one iteration alone outlasts any budget
# (and a population's seed list would not fit in memory before the first completion)
MAX_POPULATION = 100_000
MAX_PROMPTS_PER_ITERATION = 100_000


class ESConfig(MethodConfig):
    population: int = Field(30, gt=1, le=MAX_POPULATION)
    sigma: float = Field(0.001, gt=0)
    alpha: float = Field(0.0005, gt=0)  # the step size (sgd), or Adam's learning rate
    # sgd: the published update θ ← θ + α/N Σ f̂·ε; adam: Adam along g = 1/N Σ f̂·ε, its moments kept in every
    # engine and rebuilt from the seeds there, checkpointed with the weights (optimizer.py)
    optimizer: Literal["sgd", "adam"] = "sgd"
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_eps: float = Field(1e-8, gt=0)
    prompts_per_iteration: int = Field(64, gt=0, le=MAX_PROMPTS_PER_ITERATION)
    max_iterations: int = Field(500, gt=0)  # the budget usually stops the run first
    temperature: float = Field(0.0, ge=0)  # rollout decoding during training (0: greedy, as published)
    antithetic: bool = False
    fitness_shaping: Literal["zscore", "centered_rank"] = "zscore"
    # zscore's denominator std + fitness_eps (the published ES: 1e-8); 0: std alone, all-equal fitness → 0
    fitness_eps: float = Field(0.0, ge=0)
    # numpy: a numpy draw from (run seed, iteration); published: the published ES's own draw, Python's
    # random.Random((seed or 42)·100000 + iteration).sample(range(len(train)), k), so its iterations see its prompts
    prompt_sampler: Literal["numpy", "published"] = "numpy"
    safe_first_factor: float | None = None
    standardize_rc: bool = False
    engines: int = Field(1, gt=0)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    pool: Literal["ray", "local"] = "ray"  # local: one in-process engine (no Ray), for quick runs
    ray_address: str | None = None  # join an existing cluster on purpose; default: a private local Ray
    engine_start_timeout_s: float = Field(1800, gt=0)  # on a cluster: how long engines may wait for nodes
    # seed_replay: every engine regenerates the update from the seeds; broadcast: engine 0 applies it and sends
    # its weights to the others (NCCL on GPU, gloo on CPU). Both leave the engines bit-identical.
    update: Literal["seed_replay", "broadcast"] = "seed_replay"
    probe_engine: bool = True  # time one perturbation pass against the bandwidth bound at the start
    # interleaved (raw, member) pairs of the speed probe before training; the median of their ratios is the figure
    probe_pairs: int = Field(5, ge=1)
    # and more pairs, up to 5 × probe_pairs, while the probe has run for less than this: a 0.5B call takes ~0.6 s
    # on an H200 and single pairs spread by ±20 %, so a fixed 5 pairs read anywhere from 0.94 to 1.06
    probe_seconds: float = Field(0, ge=0)
    # full: ε over every weight; lowrank: EGGROLL's rank-r ε = A·Bᵀ/√r on the decoder's linear layers (vLLM
    # serves the population as LoRA adapters in one generate call)
    perturbation: Literal["full", "lowrank"] = "full"
    rank: int = Field(1, gt=0)
    lowrank_modules: list[str] = Field(default_factory=lambda: list(LOWRANK_MODULES), min_length=1)
    # independent: ε per tensor from hash(seed, name); shared_seed: the published code's draw (one generator
    # reseeded with the member's seed for every tensor: same-shape tensors get the same ε), to reproduce it
    noise: Literal["independent", "shared_seed"] = "independent"
    # low-rank on vLLM: members per generate call (None: an engine's whole share in one call; auto: as many as
    # the engine runs at once, read off it when it starts). While one call generates, the previous call's members
    # are scored; a call should still fill the engine's concurrent batch: split only a population that outgrows it.
    members_per_call: Annotated[int | Literal["auto"] | None, BeforeValidator(members_or_auto)] = None

    def adam_step(self, t: int) -> AdamStep | None:
        """The optimizer step of update ``t`` (1, 2, ...); None for the published update."""
        if self.optimizer == "sgd":
            return None
        return AdamStep(lr=self.alpha, beta1=self.adam_beta1, beta2=self.adam_beta2, eps=self.adam_eps, t=t)

    def update_scale(self) -> float:
        """The factor of f̂/N in each seed's coefficient: α for sgd; Adam takes its step size from its own lr."""
        return self.alpha if self.optimizer == "sgd" else 1.0

    def engine_context(self) -> int | None:
        return self.engine.max_model_len if self.engine.kind == "vllm" else None

    def noise_spec(self) -> NoiseSpec:
        if self.perturbation == "lowrank":
            return NoiseSpec(kind="lowrank", rank=self.rank, modules=self.lowrank_modules)
        return NoiseSpec(kind=self.noise)

    def precision(self) -> str:
        """How ES holds the weights it trains, in words, for the record and the report."""
        noise = f"rank-{self.rank} low-rank" if self.perturbation == "lowrank" else self.noise
        return f"{self.engine.dtype} weights, no gradients or optimizer state; {noise} noise"

    def batches_population(self) -> bool:
        """Whether one engine call evaluates many members at once (low-rank on vLLM)."""
        return self.perturbation == "lowrank" and self.engine.kind == "vllm"

    def members_per_call_for(self, at_once: int | None = None) -> int:
        """How many members (the unperturbed policy among them) one engine call evaluates: one member by member;
        a batching engine its share of the population, or ``members_per_call`` of it (``auto``: as many as fill
        the ``at_once`` sequences the engine runs at once; its whole share while that is not known)."""
        if not self.batches_population():
            return 1
        share = engine_share(self.population, self.engines)
        m = self.members_per_call
        if m == "auto":
            m = share if at_once is None else max(1, at_once // self.prompts_per_iteration)
        return min(share, m or share)

    @model_validator(mode="after")
    def _consistent(self) -> "ESConfig":
        if self.antithetic and self.population % 2:
            raise ValueError(f"antithetic sampling pairs members: population {self.population} must be even")
        if self.pool == "local" and self.engines != 1:
            raise ValueError("pool 'local' holds exactly one engine; use pool 'ray' for more")
        if self.perturbation == "lowrank" and self.noise != "independent":
            raise ValueError("noise 'shared_seed' reproduces the published full-rank draw; low-rank ES has its own")
        if self.members_per_call and not self.batches_population():
            raise ValueError("members_per_call: only low-rank ES on vLLM evaluates several members in one call")
        if self.batches_population() and self.rank > LORA_RANKS[-1]:
            raise ValueError(f"rank {self.rank}: vLLM serves LoRA adapters up to rank {LORA_RANKS[-1]}")
        return self
