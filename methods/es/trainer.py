"""The ES training loop, top to bottom: members → perturb/generate/restore on engines → score → update.

Each iteration also generates with the unperturbed policy (scale 0): its mean cost is J_C for the λ step
and its R/C are the training curve. Every completion scored, population or not, counts toward the budget.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.checkpoint import CheckpointManager, Preempted
from harness.generation import Completion, SamplingSettings
from harness.records import reset_gpu_peaks
from harness.run import RunContext
from methods.es import algorithm, vllm_lora
from methods.es.config import ESConfig
from methods.es.noise import check_lowrank_modules
from methods.es.pool import LocalPool, RayPool, call_all

log = logging.getLogger(__name__)


@dataclass
class MemberResult:
    completions: list[Completion]
    rewards: list[float]
    costs: list[float]
    generation: float
    perturb_restore: float
    scoring: float


class EngineGenerator:
    """The harness's ``Generator`` over engine ``i`` of a pool (used for evaluation)."""

    def __init__(self, pool, i: int = 0):
        self.pool, self.i = pool, i

    def generate(self, prompts: Sequence[str], sampling: SamplingSettings) -> list[Completion]:
        return self.pool.submit(self.i, "generate", list(prompts), sampling).result()


def run_population(pool, ctx: RunContext, scorer_threads: ThreadPoolExecutor, jobs: list[tuple[int, float]],
                   prompts: list[str], sampling: SamplingSettings, per_call: int = 1) -> list[MemberResult]:
    """Evaluate (seed, scale) jobs on the engines, ``per_call`` consecutive jobs per engine call, handed out as
    engines free up; each call's members are scored while the next call generates."""
    queue = [list(range(i, min(i + per_call, len(jobs)))) for i in range(0, len(jobs), per_call)]
    free = list(range(len(pool)))
    running: dict[Future, tuple[int, list[int]]] = {}
    scoring: dict[int, Future] = {}
    gen_out: dict[int, dict[str, Any]] = {}

    def score(texts: list[str]) -> tuple[list[float], list[float], float]:
        t = time.perf_counter()
        r, c = ctx.score(prompts, texts)
        return r, c, time.perf_counter() - t

    while queue or running:
        while queue and free:
            engine, group = free.pop(0), queue.pop(0)
            running[pool.submit(engine, "evaluate_members", [jobs[j] for j in group], prompts, sampling)] = (engine, group)
        done, _ = wait(list(running), return_when=FIRST_COMPLETED)
        for fut in done:
            engine, group = running.pop(fut)
            free.append(engine)
            for j, out in zip(group, fut.result(), strict=True):
                gen_out[j] = out
                scoring[j] = scorer_threads.submit(score, [c.text for c in out["completions"]])
    results = []
    for j in range(len(jobs)):
        r, c, secs = scoring[j].result()
        g = gen_out[j]
        results.append(MemberResult(g["completions"], r, c, g["generation"], g["perturb_restore"], secs))
    return results


def iteration_inputs(cfg: ESConfig, ctx: RunContext, it: int) -> tuple[list[str], SamplingSettings]:
    """The prompts and rollout sampling of iteration ``it``: functions of (run seed, iteration), so a resumed
    run draws what the uninterrupted one would."""
    s = ctx.settings
    it_seed = s.seed * 1_000_003 + it
    prompts = [p.prompt for p in ctx.prompts.sample_train(cfg.prompts_per_iteration, seed=it_seed)]
    return prompts, SamplingSettings(max_new_tokens=s.eval.max_new_tokens, temperature=cfg.temperature,
                                     stop_strings=s.rollout_stops, ignore_eos=s.fixed_length, seed=it_seed)


def checkpoints(ctx: RunContext) -> CheckpointManager:
    return CheckpointManager(ctx.run_dir / "checkpoints", keep=ctx.settings.keep_checkpoints)


def make_pool(cfg: ESConfig, ctx: RunContext):
    # A resumed run loads the checkpoint's weights; members and prompts are functions of (seed, iteration).
    weights = ctx.resume_from / "model" if ctx.resume_from else ctx.policy_path
    engine_cfg = cfg.engine.model_copy(update={"model_path": str(weights)})
    scratch = tempfile.mkdtemp(prefix="engines-", dir=ctx.run_dir)
    max_loras = min(cfg.jobs_per_call(), cfg.population)  # a slot per member of a call
    if cfg.perturbation == "lowrank":
        check_lowrank_modules(weights, cfg.lowrank_modules)
        if cfg.engine.kind == "vllm":
            vllm_lora.kernels()  # a misspelt ESGRPO_LORA_KERNELS, named before any engine starts
    if cfg.pool == "local":
        return LocalPool(engine_cfg, cfg.engines, scratch, cfg.noise_spec(), max_loras)
    return RayPool(engine_cfg, cfg.engines, scratch, cfg.ray_address, cfg.noise_spec(), max_loras,
                   cfg.engine_start_timeout_s)


def train(cfg: ESConfig, ctx: RunContext) -> None:
    s = ctx.settings
    pool = make_pool(cfg, ctx)
    ctx.budget.gpus = len(pool) if cfg.engine.device == "cuda" else 0
    ctx.writer.record.notes.append(f"ES on {len(pool)} {cfg.engine.kind} engine(s), pool={cfg.pool}, "
                                   f"on {len(set(pool.nodes))} node(s)")
    ctx.writer.record.environment["engine_nodes"] = pool.nodes
    per_call = cfg.jobs_per_call(record_engine_figures(pool, cfg, ctx))
    if cfg.update == "broadcast" and len(pool) > 1:
        address = pool.submit(0, "sync_address").result()
        [f.result() for f in [pool.submit(i, "sync_init", address, i, len(pool)) for i in range(len(pool))]]
    generator = EngineGenerator(pool, 0)
    speed = MemberSpeed(batch=cfg.batches_population())
    scorer_threads = ThreadPoolExecutor(max(2, len(pool)), thread_name_prefix="es-score")
    k = cfg.prompts_per_iteration
    try:
        ctx.evaluate_due(generator)
        if cfg.probe_engine:
            ctx.writer.record.throughput.update(probe_speed(pool, cfg, ctx, per_call))
        ctx.start_clock()
        columns = [TextColumn("ES"), BarColumn(), MofNCompleteColumn(), TextColumn("completions"),
                   TimeElapsedColumn(), TextColumn("{task.description}")]
        with Progress(*columns) as bar:
            task = bar.add_task("", total=s.budget.completions)
            bar.update(task, completed=ctx.budget.completions)
            for it in range(ctx.step, cfg.max_iterations):
                if ctx.budget.exhausted:
                    break
                ctx.step = it + 1
                t_iter = time.perf_counter()
                members = algorithm.iteration_members(s.seed, it, cfg.population, cfg.antithetic)
                prompts, sampling = iteration_inputs(cfg, ctx, it)
                jobs = [(seed, sign * cfg.sigma) for seed, sign in members] + [(0, 0.0)]  # last: unperturbed
                t_pop = time.perf_counter()
                results = run_population(pool, ctx, scorer_threads, jobs, prompts, sampling, per_call)
                t_pop = time.perf_counter() - t_pop
                population, base = results[:-1], results[-1]

                lam = ctx.lam.value
                f = algorithm.fitness([m.rewards for m in population], [m.costs for m in population], lam,
                                      cfg.safe_first_factor, cfg.standardize_rc)
                f_hat = algorithm.normalize(f, cfg.fitness_shaping)
                terms = algorithm.update_coefficients(members, f_hat, cfg.alpha)

                t_up = time.perf_counter()
                checksums = update_engines(pool, cfg, terms)
                t_up = time.perf_counter() - t_up
                if len(set(checksums)) != 1:
                    raise RuntimeError(f"engines diverged after iteration {it + 1}: checksums {checksums}")

                ctx.update_lambda(statistics.fmean(base.costs))
                tokens = sum(c.n_tokens for m in results for c in m.completions)
                ctx.budget.spend(len(results) * k, tokens)
                times = {"generation": sum(m.generation for m in results),
                         "perturb_restore": sum(m.perturb_restore for m in results),
                         "scoring": sum(m.scoring for m in results), "update_sync": t_up, "population_wall": t_pop,
                         "iteration_wall": time.perf_counter() - t_iter}
                extra = {"fitness_mean": float(np.mean(f)), "fitness_std": float(np.std(f)),
                         "population_reward": float(np.mean([m.rewards for m in population])),
                         "population_cost": float(np.mean([m.costs for m in population]))}
                point = ctx.log_point(base.rewards, base.costs, times, extra)
                ctx.writer.record.memory["weights_checksum"] = checksums[0]
                if it > 0 or ctx.budget.exhausted:  # the first iteration warms the engine up (new batch shapes)
                    speed.add(population, base)
                    ctx.writer.record.throughput.update(speed.figures())
                bar.update(task, completed=min(ctx.budget.completions, s.budget.completions),
                           description=f"it {it + 1} R {point.reward:+.2f} C {point.cost:+.2f} λ {point.lam:.3f}")
                ctx.evaluate_due(generator)
                if ctx.stop or (s.checkpoint_every and ctx.step % s.checkpoint_every == 0):
                    save_checkpoint(pool, ctx)
                if ctx.stop:
                    raise Preempted
        ctx.evaluate_due(generator)
        save_final(pool, ctx)
    finally:
        scorer_threads.shutdown(wait=False)
        pool.shutdown()


def update_engines(pool, cfg: ESConfig, terms: list[tuple[int, float]]) -> list[str]:
    """Apply one update on every engine; returns their weight checksums (which must agree)."""
    if cfg.update == "broadcast" and len(pool) > 1:
        pool.submit(0, "apply_update", terms).result()
        return call_all(pool, "broadcast_weights", 0)
    return call_all(pool, "apply_update", terms)


def record_engine_figures(pool, cfg: ESConfig, ctx: RunContext) -> int | None:
    """Engine 0's perturbation pass against the bandwidth bound and its preallocated KV cache (vLLM); for a
    batching engine, how many sequences it runs at once (returned), and how the population's calls compare."""
    rec = ctx.writer.record
    kv = pool.submit(0, "kv_cache_bytes").result()
    if kv:
        rec.memory["kv_cache_mb"] = round(kv / 2**20, 1)
    at_once = None
    if cfg.batches_population():
        prompts, sampling = iteration_inputs(cfg, ctx, 0)  # its longest prompt stands for the run's
        at_once, rec.memory["kv_cache_tokens"] = pool.submit(0, "sequences_at_once", prompts,
                                                             sampling.max_new_tokens).result()
        jobs = cfg.jobs_per_call(at_once)
        rec.notes.append(f"low-rank population: {jobs} jobs ({jobs * cfg.prompts_per_iteration} sequences) per "
                         f"generate call; the engine runs {at_once} at once (longest prompt + "
                         f"{sampling.max_new_tokens} tokens)")
        if jobs * cfg.prompts_per_iteration > at_once:
            rec.notes.append("a low-rank call is more than the engine runs at once (max_num_seqs, or what its KV "
                             "cache holds): it runs in waves, and its members are scored only after the last; "
                             "members_per_call (auto: calls that fit) splits it")
            log.warning(rec.notes[-1])
    # snapshot restore leaves no trace; low-rank members on vLLM are adapters, with no in-place pass to time
    if cfg.probe_engine and cfg.engine.restore == "snapshot" and not cfg.batches_population():
        rec.throughput.update({f"probe_{k}": v for k, v in pool.submit(0, "probe").result().items()})
        reset_gpu_peaks()  # the probe's copy buffers are not the run's memory
    return at_once


@dataclass
class MemberSpeed:
    """Generated tokens/s of perturbed members (perturb + generate + restore) during the run, against the
    unperturbed job's plain generate on the same prompts (member by member). In a run, members and the
    unperturbed job share the device with scoring at different moments, so the quiet figure is ``probe_speed``'s;
    these are kept beside it. A population batch (low-rank on vLLM) has no separate raw job in the run."""

    batch: bool = False
    member_tokens: int = 0
    member_seconds: float = 0.0
    raw_tokens: int = 0
    raw_seconds: float = 0.0

    def add(self, population: list[MemberResult], base: MemberResult) -> None:
        members = [*population, base] if self.batch else population
        self.member_tokens += sum(c.n_tokens for m in members for c in m.completions)
        self.member_seconds += sum(m.generation + m.perturb_restore for m in members)
        if not self.batch:
            self.raw_tokens += sum(c.n_tokens for c in base.completions)
            self.raw_seconds += base.generation

    def figures(self) -> dict[str, float]:
        member = self.member_tokens / self.member_seconds
        if self.batch:
            return {"member_tokens_per_s_in_run": member}
        raw = self.raw_tokens / self.raw_seconds
        return {"member_tokens_per_s_in_run": member, "raw_generate_tokens_per_s_in_run": raw,
                "member_vs_raw_in_run": member / raw}


PROBE_TOKENS = 128  # probe rollouts: long enough for steady decoding, short enough to cost seconds at 7B


def probe_speed(pool, cfg: ESConfig, ctx: RunContext, per_call: int) -> dict[str, float]:
    """Before the training clock, on engine 0 with nothing else on the device: an engine's share of perturbed
    members (one member, or a population batch of adapters) against as many unperturbed sequences, on
    iteration 0's prompts. Each runs twice; the second counts (the first warms shapes up and, for a member,
    takes the engine's snapshot of the weights)."""
    prompts, sampling = iteration_inputs(cfg, ctx, 0)
    sampling = sampling.model_copy(update={"max_new_tokens": min(PROBE_TOKENS, sampling.max_new_tokens)})
    if cfg.batches_population():  # a call as an iteration makes it: at most max_loras adapters, and the base
        members = [(algorithm.SEED_SPACE + i, cfg.sigma) for i in range(min(per_call, cfg.population))]
        jobs = {"raw": [(0, 0.0)] * per_call, "member": members + [(0, 0.0)] * (per_call - len(members))}
    else:
        jobs = {"raw": [(0, 0.0)], "member": [(algorithm.SEED_SPACE, cfg.sigma)]}
    speed, prepare = {}, {}
    for kind in ("raw", "member", "raw", "member"):
        speed[kind], prepare[kind] = batch_speed(pool.submit(0, "evaluate_members", jobs[kind], prompts, sampling).result())
    return {"raw_generate_tokens_per_s": speed["raw"], "member_tokens_per_s": speed["member"],
            "member_vs_raw": speed["member"] / speed["raw"], "member_prepare_share": prepare["member"]}


def batch_speed(outs: list[dict[str, Any]]) -> tuple[float, float]:
    """One ``evaluate_members`` call: generated tokens/s over its whole time, and the share of that time spent
    making members (perturbing, or writing adapters) rather than generating."""
    seconds = sum(o["generation"] + o["perturb_restore"] for o in outs)
    tokens = sum(c.n_tokens for o in outs for c in o["completions"])
    return tokens / seconds, sum(o["perturb_restore"] for o in outs) / seconds


def save_checkpoint(pool, ctx: RunContext) -> Path:
    """Weights (HF format, from engine 0) plus the harness state, atomically."""
    ctx.tick()
    write = lambda tmp: pool.submit(0, "save_hf", str(tmp / "model"), str(ctx.policy_path)).result()  # noqa: E731
    return checkpoints(ctx).save(ctx.step, write, ctx.snapshot_state())


def save_final(pool, ctx: RunContext) -> str:
    out = ctx.run_dir / "model_saves" / "latest_hf"
    return pool.submit(0, "save_hf", str(out), str(ctx.policy_path)).result()
