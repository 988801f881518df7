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
from typing import Sequence

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness import runlog
from harness.checkpoint import CheckpointManager, Preempted
from harness.errors import UserError
from harness.generation import Completion, SamplingSettings
from harness.records import reset_gpu_peaks
from harness.method import RunContext
from methods.es import algorithm
from methods.es.config import ESConfig
from methods.es.engine import UNPERTURBED, Member, MemberOutput
from methods.es.noise import check_lowrank_modules
from methods.es.optimizer import AdamStep
from methods.es.pool import EngineCall, LocalPool, Pool, RayPool, call_all

log = logging.getLogger(__name__)


@dataclass
class ScoredMember:
    """A member's output with its scores and the seconds scoring took."""

    output: MemberOutput
    rewards: list[float]
    costs: list[float]
    scoring_s: float


class EngineGenerator:
    """The harness's ``Generator`` over engine ``i`` of a pool (used for evaluation)."""

    def __init__(self, pool: Pool, i: int = 0):
        self.pool, self.i = pool, i

    def generate(self, prompts: Sequence[str], sampling: SamplingSettings) -> list[Completion]:
        prompts = list(prompts)
        return self.pool.submit(self.i, lambda e: e.generate(prompts, sampling)).result()


def members_of(members: list[Member], prompts: list[str], sampling: SamplingSettings) -> EngineCall[list[MemberOutput]]:
    return lambda e: e.evaluate_members(members, prompts, sampling)


def join_sync(address: str, rank: int, world: int) -> EngineCall[None]:
    return lambda e: e.sync_init(address, rank, world)


def run_population(pool: Pool, ctx: RunContext, scorer_threads: ThreadPoolExecutor, jobs: list[Member],
                   prompts: list[str], sampling: SamplingSettings, per_call: int = 1) -> list[ScoredMember]:
    """Evaluate the members on the engines, ``per_call`` consecutive members per engine call, handed out as
    engines free up; each call's members are scored while the next call generates."""
    queue = [jobs[i:i + per_call] for i in range(0, len(jobs), per_call)]
    starts = list(range(0, len(jobs), per_call))
    free = list(range(len(pool)))
    running: dict[Future[list[MemberOutput]], tuple[int, int]] = {}
    scoring: dict[int, Future[tuple[list[float], list[float], float]]] = {}
    gen_out: dict[int, MemberOutput] = {}

    def score(texts: list[str]) -> tuple[list[float], list[float], float]:
        t = time.perf_counter()
        r, c = ctx.score(prompts, texts)
        return r, c, time.perf_counter() - t

    while queue or running:
        while queue and free:
            engine, group, start = free.pop(0), queue.pop(0), starts.pop(0)
            running[pool.submit(engine, members_of(group, prompts, sampling))] = (engine, start)
        done, _ = wait(list(running), return_when=FIRST_COMPLETED)
        for fut in done:
            engine, start = running.pop(fut)
            free.append(engine)
            for j, out in enumerate(fut.result(), start):
                gen_out[j] = out
                scoring[j] = scorer_threads.submit(score, [c.text for c in out.completions])
    results = []
    for j in range(len(jobs)):
        r, c, secs = scoring[j].result()
        results.append(ScoredMember(gen_out[j], r, c, secs))
    return results


def iteration_inputs(cfg: ESConfig, ctx: RunContext, it: int) -> tuple[list[str], SamplingSettings]:
    """The prompts and rollout sampling of iteration ``it``: functions of (run seed, iteration), so a resumed
    run draws what the uninterrupted one would."""
    s = ctx.settings
    it_seed = s.seed * 1_000_003 + it
    if cfg.prompt_sampler == "published":
        train = ctx.prompts.train
        prompts = [train[i].prompt for i in algorithm.published_prompt_indices(s.seed, it, len(train),
                                                                                cfg.prompts_per_iteration)]
    else:
        prompts = [p.prompt for p in ctx.prompts.sample_train(cfg.prompts_per_iteration, seed=it_seed)]
    return prompts, SamplingSettings(max_new_tokens=s.rollout.max_new_tokens, temperature=cfg.temperature,
                                     stop_strings=s.rollout.training_stops, ignore_eos=s.rollout.fixed_length,
                                     strip=s.rollout.strip, seed=it_seed)


OPTIMIZER_FILE = "optimizer.safetensors"


def checkpoints(ctx: RunContext) -> CheckpointManager:
    return CheckpointManager(ctx.run_dir / "checkpoints", keep=ctx.settings.keep_checkpoints)


def make_pool(cfg: ESConfig, ctx: RunContext) -> Pool:
    # A resumed run loads the checkpoint's weights; members and prompts are functions of (seed, iteration).
    weights = ctx.resume_from / "model" if ctx.resume_from else ctx.policy_path
    engine_cfg = cfg.engine.model_copy(update={"model_path": str(weights)})
    max_loras = min(cfg.members_per_call_for(), cfg.population)  # a slot per member of a call
    if cfg.perturbation == "lowrank":
        check_lowrank_modules(weights, cfg.lowrank_modules)
    scratch = tempfile.mkdtemp(prefix="engines-", dir=ctx.run_dir)
    try:
        if cfg.pool == "local":
            return LocalPool(engine_cfg, cfg.engines, scratch, cfg.noise_spec(), max_loras)
        return RayPool(engine_cfg, cfg.engines, scratch, cfg.ray_address, cfg.noise_spec(), max_loras,
                       cfg.engine_start_timeout_s)
    except BaseException:  # engines that never started leave no empty scratch folder behind
        remove_if_empty(scratch)
        raise


def train(cfg: ESConfig, ctx: RunContext) -> None:
    s = ctx.settings
    if cfg.prompts_per_iteration > len(ctx.prompts.train):  # before any engine starts
        raise UserError(f"prompts_per_iteration is {cfg.prompts_per_iteration}, but the training set "
                        f"({ctx.prompts.name}) holds {len(ctx.prompts.train)} prompts: an iteration would score "
                        "some of them twice")
    pool = make_pool(cfg, ctx)
    if ctx.resume_from is not None and cfg.optimizer == "adam":
        moments = ctx.resume_from / OPTIMIZER_FILE
        if not moments.is_file():
            pool.shutdown()
            raise UserError(f"{ctx.resume_from}: this checkpoint holds no Adam moments ({OPTIMIZER_FILE}); "
                            "it was not written by an optimizer: adam run")
        call_all(pool, lambda e: e.load_optimizer(str(moments)))
    ctx.budget.gpus = len(pool) if cfg.engine.device == "cuda" else 0
    ctx.note(f"ES on {len(pool)} {cfg.engine.kind} engine(s), pool={cfg.pool}, on {len(set(pool.nodes))} node(s)")
    ctx.describe(variant=f"{cfg.engine.kind}/{cfg.perturbation}", precision=cfg.precision())
    ctx.add_figures("environment", {"engine_nodes": pool.nodes})
    per_call = cfg.members_per_call_for(record_engine_figures(pool, cfg, ctx))
    if cfg.update == "broadcast" and len(pool) > 1:
        address, world = pool.submit(0, lambda e: e.sync_address()).result(), len(pool)
        [f.result() for f in [pool.submit(i, join_sync(address, i, world)) for i in range(world)]]
    generator = EngineGenerator(pool, 0)
    # the policy as it stands, for drift at budget marks (eval.drift_every_mark): engine 0's weights, as at the end
    def save_policy(out: Path) -> None:
        pool.submit(0, lambda e: e.save_hf(str(out), str(ctx.policy_path))).result()

    speed = MemberSpeed(batch=cfg.batches_population())
    scorer_threads = ThreadPoolExecutor(max(2, len(pool)), thread_name_prefix="es-score")
    k = cfg.prompts_per_iteration
    try:
        ctx.evaluate_due(generator, save_policy)
        # restore: subtract leaves each perturb/restore's rounding in the weights (fp16 drifts): the policy a run
        # trains must not have been moved by a speed probe, so in-place members are not probed then
        if cfg.probe_engine and (cfg.engine.restore == "snapshot" or cfg.batches_population()):
            ctx.add_figures("throughput", probe_speed(pool, cfg, ctx, per_call))
        elif cfg.probe_engine:
            ctx.note("no member speed probe: restore 'subtract' would leave its rounding in the weights")
        ctx.start_clock()
        columns = [TextColumn(runlog.run_tag() or "ES"), BarColumn(), MofNCompleteColumn(), TextColumn("completions"),
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
                jobs = [Member(seed, sign * cfg.sigma) for seed, sign in members] + [UNPERTURBED]  # last: θ itself
                t_pop = time.perf_counter()
                results = run_population(pool, ctx, scorer_threads, jobs, prompts, sampling, per_call)
                t_pop = time.perf_counter() - t_pop
                population, base = results[:-1], results[-1]

                lam = ctx.lam.value
                f = algorithm.fitness([m.rewards for m in population], [m.costs for m in population], lam,
                                      cfg.safe_first_factor, cfg.standardize_rc)
                f_hat = algorithm.normalize(f, cfg.fitness_shaping, cfg.fitness_eps)
                terms = algorithm.update_coefficients(members, f_hat, cfg.update_scale())

                t_up = time.perf_counter()
                checksums = update_engines(pool, cfg, terms, cfg.adam_step(it + 1))
                t_up = time.perf_counter() - t_up
                if len(set(checksums)) != 1:
                    raise RuntimeError(f"engines diverged after iteration {it + 1}: checksums {checksums}")

                ctx.update_lambda(statistics.fmean(base.costs))
                tokens = sum(m.output.tokens for m in results)
                ctx.budget.spend(len(results) * k, tokens)
                times = {"generation": sum(m.output.generation_s for m in results),
                         "perturb_restore": sum(m.output.prepare_s for m in results),
                         "scoring": sum(m.scoring_s for m in results), "update_sync": t_up, "population_wall": t_pop,
                         "iteration_wall": time.perf_counter() - t_iter}
                extra = {"fitness_mean": float(np.mean(f)), "fitness_std": float(np.std(f)),
                         "population_reward": float(np.mean([m.rewards for m in population])),
                         "population_cost": float(np.mean([m.costs for m in population]))}
                point = ctx.log_point(base.rewards, base.costs, times, extra)
                ctx.add_figures("memory", {"weights_checksum": checksums[0]})
                if it > 0 or ctx.budget.exhausted:  # the first iteration warms the engine up (new batch shapes)
                    speed.add(population, base)
                    ctx.add_figures("throughput", speed.figures())
                bar.update(task, completed=min(ctx.budget.completions, s.budget.completions),
                           description=f"it {it + 1} R {point.reward:+.2f} C {point.cost:+.2f} λ {point.lam:.3f}")
                ctx.evaluate_due(generator, save_policy)
                if ctx.stop or (s.checkpoint_every and ctx.step % s.checkpoint_every == 0):
                    save_checkpoint(pool, cfg, ctx)
                if ctx.stop:
                    raise Preempted
        ctx.evaluate_due(generator, save_policy)
        save_final(pool, ctx)
    finally:
        scorer_threads.shutdown(wait=False)
        pool.shutdown()
        remove_if_empty(pool.scratch)


def remove_if_empty(folder: str) -> None:
    """The engines' scratch folder goes once they are done, unless something (Ray's logs) was kept there."""
    try:
        for d in sorted(Path(folder).rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        Path(folder).rmdir()
    except OSError:  # not empty: kept for diagnosis
        pass


def update_engines(pool: Pool, cfg: ESConfig, terms: list[tuple[int, float]], adam: AdamStep | None = None) -> list[str]:
    """Apply one update on every engine; returns their weight checksums (which must agree)."""
    if cfg.update == "broadcast" and len(pool) > 1:  # engine 0 alone keeps Adam's moments then
        pool.submit(0, lambda e: e.apply_update(terms, adam)).result()
        return call_all(pool, lambda e: e.broadcast_weights(0))
    return call_all(pool, lambda e: e.apply_update(terms, adam))


def record_engine_figures(pool: Pool, cfg: ESConfig, ctx: RunContext) -> int | None:
    """Engine 0's perturbation pass against the bandwidth bound and its preallocated KV cache (vLLM); for a
    batching engine, how many sequences it runs at once (returned), and how the population's calls compare."""
    plan = pool.submit(0, lambda e: e.info()).result().get("memory_plan")
    if plan:  # beside the peaks the run measures
        ctx.add_figures("memory", {"plan": plan})
        ctx.note(f"memory plan of engine 0: {plan['summary']}")
    kv = pool.submit(0, lambda e: e.kv_cache_bytes()).result()
    if kv:
        ctx.add_figures("memory", {"kv_cache_mb": round(kv / 2**20, 1)})
    at_once = None
    if cfg.batches_population():
        prompts, sampling = iteration_inputs(cfg, ctx, 0)  # its longest prompt stands for the run's
        at_once, kv_tokens = pool.submit(0, lambda e: e.sequences_at_once(prompts, sampling.max_new_tokens)).result()
        ctx.add_figures("memory", {"kv_cache_tokens": kv_tokens})
        m = cfg.members_per_call_for(at_once)
        ctx.note(f"low-rank population: {m} members ({m * cfg.prompts_per_iteration} sequences) per generate call; "
                 f"the engine runs {at_once} at once (longest prompt + {sampling.max_new_tokens} tokens)")
        if m * cfg.prompts_per_iteration > at_once:
            ctx.note("a low-rank call is more than the engine runs at once (max_num_seqs, or what its KV cache "
                     "holds): it runs in waves, and its members are scored only after the last; members_per_call "
                     "(auto: calls that fit) splits it", warn=True)
    # snapshot restore leaves no trace; low-rank members on vLLM are adapters, with no in-place pass to time
    if cfg.probe_engine and cfg.engine.restore == "snapshot" and not cfg.batches_population():
        probe = pool.submit(0, lambda e: e.probe()).result()
        ctx.add_figures("throughput", {f"probe_{k}": v for k, v in probe.items()})
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

    def add(self, population: list[ScoredMember], base: ScoredMember) -> None:
        members = [*population, base] if self.batch else population
        self.member_tokens += sum(m.output.tokens for m in members)
        self.member_seconds += sum(m.output.generation_s + m.output.prepare_s for m in members)
        if not self.batch:
            self.raw_tokens += base.output.tokens
            self.raw_seconds += base.output.generation_s

    def figures(self) -> dict[str, float]:
        member = self.member_tokens / self.member_seconds
        if self.batch:
            return {"member_tokens_per_s_in_run": member}
        # no ratio of the two: they meet scoring on the device at different moments, so their ratio can read above
        # 1, where a member cannot be faster than a raw generate (results/gpu-7b-h200-2026-12-02/NOTES.md)
        return {"member_tokens_per_s_in_run": member,
                "raw_generate_tokens_per_s_in_run": self.raw_tokens / self.raw_seconds}


PROBE_TOKENS = 128  # probe rollouts: long enough for steady decoding, short enough to cost seconds at 7B


def probe_speed(pool: Pool, cfg: ESConfig, ctx: RunContext, per_call: int) -> dict[str, float]:
    """Before the training clock, on engine 0 with nothing else on the device: an engine's share of perturbed
    members (one member, or a population batch of adapters) against as many unperturbed sequences, on
    iteration 0's prompts. One warm-up of each (shapes, and for a member the engine's snapshot of the weights),
    then ``probe_pairs`` pairs (more while under ``probe_seconds``) back to back, alternating which goes first so
    that a drift of the host or the device falls on both sides alike: the figure is the median of the pairs'
    ratios, with their quartiles and range. A member does more work than a raw generate, so a median above 1 says
    the probe is measuring noise."""
    prompts, sampling = iteration_inputs(cfg, ctx, 0)
    sampling = sampling.model_copy(update={"max_new_tokens": min(PROBE_TOKENS, sampling.max_new_tokens)})
    if cfg.batches_population():  # a call as an iteration makes it: at most max_loras adapters, and the base
        members = [Member(algorithm.SEED_SPACE + i, cfg.sigma) for i in range(min(per_call, cfg.population))]
        jobs = {"raw": [UNPERTURBED] * per_call, "member": members + [UNPERTURBED] * (per_call - len(members))}
    else:
        jobs = {"raw": [UNPERTURBED], "member": [Member(algorithm.SEED_SPACE, cfg.sigma)]}

    def timed(kind: str) -> tuple[float, float]:
        return batch_speed(pool.submit(0, members_of(jobs[kind], prompts, sampling)).result())

    timed("raw"), timed("member")
    raw, member, prepare = list[float](), list[float](), list[float]()
    start, i = time.perf_counter(), 0
    while i < cfg.probe_pairs or (time.perf_counter() - start < cfg.probe_seconds and i < 5 * cfg.probe_pairs):
        for kind in ("raw", "member") if i % 2 == 0 else ("member", "raw"):
            speed, share = timed(kind)
            (raw if kind == "raw" else member).append(speed)
            if kind == "member":
                prepare.append(share)
        i += 1
    ratios = [m / r for m, r in zip(member, raw)]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return {"raw_generate_tokens_per_s": statistics.median(raw), "member_tokens_per_s": statistics.median(member),
            "member_vs_raw": statistics.median(ratios), "member_vs_raw_min": min(ratios),
            "member_vs_raw_max": max(ratios), "member_vs_raw_q1": q1, "member_vs_raw_q3": q3,
            "member_vs_raw_pairs": len(ratios), "member_prepare_share": statistics.median(prepare),
            "member_probe_s": time.perf_counter() - start}


def batch_speed(outs: list[MemberOutput]) -> tuple[float, float]:
    """One ``evaluate_members`` call: generated tokens/s over its whole time, and the share of that time spent
    making members (perturbing, or writing adapters) rather than generating."""
    seconds = sum(o.generation_s + o.prepare_s for o in outs)
    return sum(o.tokens for o in outs) / seconds, sum(o.prepare_s for o in outs) / seconds


def save_checkpoint(pool: Pool, cfg: ESConfig, ctx: RunContext) -> Path:
    """Weights (HF format, from engine 0), Adam's moments where it runs, plus the harness state, atomically."""
    ctx.tick()
    source = str(ctx.policy_path)

    def write(tmp: Path) -> None:
        pool.submit(0, lambda e: e.save_hf(str(tmp / "model"), source)).result()
        if cfg.optimizer == "adam":
            pool.submit(0, lambda e: e.save_optimizer(str(tmp / OPTIMIZER_FILE))).result()

    return checkpoints(ctx).save(ctx.step, write, ctx.snapshot_state())


def save_final(pool: Pool, ctx: RunContext) -> str:
    out, source = str(ctx.run_dir / "model_saves" / "latest_hf"), str(ctx.policy_path)
    return pool.submit(0, lambda e: e.save_hf(out, source)).result()
