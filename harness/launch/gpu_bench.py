"""``esgrpo bench gpu``: ES (vLLM and transformers engines) and GRPO on one GPU, side by side, in one command.

1. Models: a random Qwen2-0.5B-shaped policy (or ``--policy``) and random Beaver-format reward and cost
   models, built here and cached under ``$ESGRPO_HOME/models``.
2. The scorer: ``esgrpo serve-scorer`` in a second process on the same GPU, found through a rendezvous file.
   Its memory is its own process's, so it is not in any method's figures.
3. The spec's runs (benchmarks/gpu-1x.yaml), each in its own process, at equal budgets with fixed-length
   rollouts; their records carry the torch allocator peak, the NVML peak of the process tree, vLLM's KV-cache
   reservation, tokens/s, the ES time split, the perturbation pass against the bandwidth bound, and member
   against raw generation speed.
4. The scorer's pairs/s through HTTP against a raw forward of its models.
5. ``figures.json`` and ``README.md`` (headline ratios against the targets) beside the comparison report.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from harness.launch.benchmark import default_locations, load_spec, run_benchmark
from harness.errors import UserError, error_excerpt, oom_in_use_mb
from harness.launch.processes import child_env
from harness.fixtures.random_models import random_policy, random_scorer_models
from harness.records import atomic_write_text, load_record
from harness.scoring.client import http_scorer_overrides, read_rendezvous

SCORER_FIGURES = "scorer_figures.json"
# per run: ES overhead, perturbation pass ÷ bandwidth bound, member (or population batch) ÷ raw generate,
# peak GPU memory (KV cache apart) ÷ the baseline's; across runs: ratios of generated tokens/s
TARGETS = {"es_overhead_share": ("≤", 0.03), "perturb_vs_bound": ("≤", 2.0), "member_vs_raw": ("≥", 0.95),
           "lowrank_batch_vs_raw": ("≥", 0.9), "es_vs_baseline_peak_gpu": ("≤", 0.35),
           "es_vllm_vs_es_hf_tokens": ("≥", 5.0), "es_lowrank_vs_es_vllm_tokens": ("≥", 1.3)}
# cross-run ratios: (name, numerator run kind, denominator run kind) of tokens/s
RATIOS = (("es_vllm_vs_es_hf_tokens", "es/vllm/full", "es/hf/full"),
          ("es_lowrank_vs_es_vllm_tokens", "es/vllm/lowrank", "es/vllm/full"),
          ("grpo_vllm_vs_grpo_hf_tokens", "grpo/vllm", "grpo/hf"))


def device_name(runs: Path | None = None) -> str:
    """The GPU the runs ran on (from their records: the report may be written elsewhere), else this one's."""
    for d in sorted(runs.glob("*-s*/record.json")) if runs and runs.is_dir() else []:
        gpus = load_record(d).environment.get("gpus") or []
        if gpus:
            return gpus[0]["name"]
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def default_out(device: str) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower().replace("nvidia", "")).strip("-")
    return Path("results") / f"gpu-{slug}-{date.today().isoformat()}"


class ScorerService:
    """``esgrpo serve-scorer`` in a child process; the context manager stops it."""

    def __init__(self, config: dict[str, Any], workdir: Path, wait_s: float = 600):
        self.config, self.workdir, self.wait_s = config, workdir, wait_s
        self.rendezvous = workdir / "scorer.json"
        self.token_file = workdir / "scorer.token"
        self.token = secrets.token_urlsafe(16)

    def __enter__(self) -> "ScorerService":
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.workdir / "scorer.yaml"
        atomic_write_text(cfg_path, yaml.safe_dump(self.config))
        atomic_write_text(self.token_file, self.token)
        self.token_file.chmod(0o600)
        self.rendezvous.unlink(missing_ok=True)
        self.log = open(self.workdir / "scorer.log", "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "harness.launch.cli", "serve-scorer", "--config", str(cfg_path),
                                      "--rendezvous", str(self.rendezvous)], stdout=self.log, stderr=subprocess.STDOUT,
                                     env=child_env(ESGRPO_SCORER_TOKEN=self.token))
        deadline = time.monotonic() + self.wait_s
        while not self.rendezvous.is_file():
            if self.proc.poll() is not None:
                raise UserError(f"the scorer exited with code {self.proc.returncode}; see {self.log.name}")
            if time.monotonic() > deadline:
                raise UserError(f"the scorer did not come up in {self.wait_s:.0f} s; see {self.log.name}")
            time.sleep(0.5)
        self.url = read_rendezvous(self.rendezvous)
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def scorer_config(shape: str, device: str) -> dict[str, Any]:
    reward, cost = random_scorer_models(shape)
    backend = {"kind": "beaver", "device": device, "max_batch_tokens": 16384, "max_length": 512}
    return {"reward": {**backend, "path": str(reward)}, "cost": {**backend, "path": str(cost)},
            "host": "127.0.0.1", "port": 0, "max_batch": 64}


def run_gpu_bench(spec_path: Path, out: Path | None = None, runs_dir: Path | None = None, policy: str | None = None,
                  shape: str = "qwen2-0.5b", scorer_shape: str = "llama-200m", only: list[str] | None = None,
                  report_only: bool = False, scorer_pairs: int = 512) -> Path:
    import torch

    from harness.fixtures.random_models import POLICY_SHAPES, SCORER_SHAPES

    for given, known in ((shape, POLICY_SHAPES), (scorer_shape, SCORER_SHAPES)):
        if given not in known:
            raise UserError(f"unknown shape {given!r}; known: {', '.join(known)}")
    spec, _ = load_spec(spec_path)
    runs = Path(runs_dir or default_locations(spec)[0])
    device = device_name(runs)
    out = Path(out or default_out(device))
    methods = [m for m in only or [] if m != "scorer"]
    report = None
    if not report_only:
        policy_path = policy or str(random_policy(shape))
        cfg = scorer_config(scorer_shape, "cuda" if torch.cuda.is_available() else "cpu")
        with ScorerService(cfg, runs / "scorer") as scorer:
            shared = [f"policy={policy_path}", *http_scorer_overrides(url=scorer.url, token_file=scorer.token_file)]
            if methods or not only:
                report = run_benchmark(spec_path, out=out, runs_dir=runs, only=methods or None,
                                       run_overrides=shared, services={scorer.proc.pid})
            if not only or "scorer" in only:
                from scorer.bench import measure
                from scorer.service_config import ScorerServiceConfig

                figures = measure(ScorerServiceConfig.model_validate(cfg), scorer.url, scorer_pairs, scorer.token)
                atomic_write_text(runs / SCORER_FIGURES, json.dumps({**figures, "models": scorer_shape}, indent=1))
        if only:  # one part of the benchmark (e.g. one device call): the figures come with --report-only
            return runs
    if report is None:
        report = run_benchmark(spec_path, out=out, runs_dir=runs, report_only=True)
    figures = collect_figures(runs, device_name(runs), spec.compare.baseline)
    figures["policy_shape"], figures["scorer_shape"] = shape if not policy else policy, scorer_shape
    atomic_write_text(out / "figures.json", json.dumps(figures, indent=1))
    atomic_write_text(out / "README.md", render_readme(figures, spec.name, report.name if report else None))
    return out


def run_kind(rec) -> str:
    """METHOD/VARIANT, as the method described the run (es/vllm/lowrank, grpo/vllm...): for the cross-run ratios."""
    return f"{rec.method}/{rec.variant or '?'}"


def precision(rec) -> str:
    return rec.precision or "?"


def collect_figures(runs: Path, device: str, baseline: str | None = None) -> dict[str, Any]:
    per: dict[str, dict[str, Any]] = {}
    for d in sorted(runs.glob("*-s*")):
        if not (d / "record.json").is_file():
            continue
        rec = load_record(d)
        if rec.status not in ("completed", "oom"):
            continue
        torch_peak = max((rec.memory.get("peak_gpu_mb") or {}).values(), default=None)
        kv = rec.memory.get("kv_cache_mb")
        split = {k: rec.timing.get(f"{k}_seconds", 0.0)  # summed over the run's steps by the harness
                 for k in ("generation", "scoring", "perturb_restore", "update_sync", "iteration_wall")}
        f: dict[str, Any] = {
            "method": rec.method, "kind": run_kind(rec), "status": rec.status, "precision": precision(rec),
            "peak_gpu_torch_mb": torch_peak, "peak_gpu_nvml_mb": rec.memory.get("peak_gpu_nvml_mb"),
            "kv_cache_mb": kv, "peak_gpu_torch_excl_kv_mb": None if torch_peak is None else torch_peak - (kv or 0),
            "peak_rss_mb": rec.memory.get("peak_rss_mb"), "tokens_per_s": rec.throughput.get("tokens_per_s"),
            "completions": rec.series[-1].completions if rec.series else 0, "tokens": rec.series[-1].tokens if rec.series else 0,
        }
        f.update(step_figures(rec.series))
        scorer = rec.scorer or {}
        models = {id(b): b for b in (scorer.get("reward"), scorer.get("cost")) if isinstance(b, dict)}
        loads = [b["load_seconds"] for b in models.values() if b.get("load_seconds") is not None]
        f["scorer_load_s"] = round(sum(loads), 2) if loads else None  # the models, from the checkpoints
        f["scorer_ready_s"] = scorer.get("load_seconds")  # the service: models, file hashes, warm-up batch
        f["scorer_peak_gpu_gib"] = (scorer.get("memory") or {}).get("reserved_peak_gib")
        plan = rec.memory.get("plan")
        if plan:
            f["memory_plan"] = plan
        if rec.config.get("vllm_sleep_mode"):  # vLLM's pool stays in torch's count while its memory is unmapped
            f["torch_counts_sleeping_vllm"] = True
        if rec.status == "oom":
            f["error"] = error_excerpt(rec.error)
            f["oom_process_in_use_mb"] = oom_in_use_mb(rec.error or "")
        if rec.method == "es" and rec.status == "completed":
            lowrank = f["kind"] == "es/vllm/lowrank"
            f.update(time_split_s=split, es_overhead_share=steady_overhead_share(rec.series),
                     perturb_vs_bound=rec.throughput.get("probe_perturb_vs_bound"),
                     probe={k.removeprefix("probe_"): v for k, v in rec.throughput.items() if k.startswith("probe_")},
                     **{"lowrank_batch_vs_raw" if lowrank else "member_vs_raw": rec.throughput.get("member_vs_raw")})
        per[rec.label or rec.method] = f
    figures: dict[str, Any] = {"device": device, "baseline": baseline, "runs": per}
    scorer_file = runs / SCORER_FIGURES
    if scorer_file.is_file():
        figures["scorer"] = json.loads(scorer_file.read_text())
    # like for like: both without their vLLM KV cache. No ratio against a baseline generating with vLLM whose record
    # predates the KV figure for colocated vLLM (ES without its cache against GRPO with it), nor against one whose
    # torch peak counts a sleeping vLLM's unmapped memory
    b = per.get(baseline or "", {})
    unlike = b.get("kind") == "grpo/vllm" and b.get("kv_cache_mb") is None or b.get("torch_counts_sleeping_vllm")
    base = None if unlike else b.get("peak_gpu_torch_excl_kv_mb")
    for label, f in per.items():
        if f["method"] == "es" and base and f["peak_gpu_torch_excl_kv_mb"] is not None:
            f["es_vs_baseline_peak_gpu"] = f["peak_gpu_torch_excl_kv_mb"] / base
    done = {f["kind"]: f for f in per.values() if f["status"] == "completed" and f["tokens_per_s"]}
    figures["ratios"] = {name: done[a]["tokens_per_s"] / done[b]["tokens_per_s"]
                         for name, a, b in RATIOS if a in done and b in done}
    return figures


def step_figures(series) -> dict[str, Any]:
    """Seconds per iteration (ES) or step (GRPO) after the first (which compiles), the mean split, and scoring's
    share: the wall time not spent in the other parts (ES scores members while later ones generate, so its
    scoring seconds overlap generation; only what sticks out of it costs wall time)."""
    points = series[1:] if len(series) > 1 else series
    if not points:
        return {}
    wall_key = "iteration_wall" if "iteration_wall" in points[0].times else "step_wall"
    wall = sum(p.times.get(wall_key, 0.0) for p in points)
    parts = sorted({k for p in points for k in p.times} - {wall_key, "population_wall"})
    split = {k: round(sum(p.times.get(k, 0.0) for p in points) / len(points), 3) for k in parts}
    others = sum(v for k, v in split.items() if k != "scoring")
    per_step = wall / len(points)
    return {"seconds_per_step": round(per_step, 3), "step_split_s": split,
            "scoring_share": round(max(0.0, per_step - others) / per_step, 4) if per_step else None}


def steady_overhead_share(series) -> float | None:
    """ES overhead (perturb/restore + update/sync) ÷ iteration time over the iterations after the first: the
    first compiles kernels for new shapes (Triton, the checksum), as the throughput figures also leave it out."""
    points = series[1:] if len(series) > 1 else series
    wall = sum(p.times.get("iteration_wall", 0.0) for p in points)
    spent = sum(p.times.get("perturb_restore", 0.0) + p.times.get("update_sync", 0.0) for p in points)
    return spent / wall if wall else None


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}" if isinstance(v, float) else str(v)


def render_readme(figures: dict[str, Any], name: str, report: str | None) -> str:
    runs = figures["runs"]
    lines = [f"# {name}: ES vs GRPO on one {figures['device']}", "",
             "Command: `esgrpo bench gpu` (`make benchmark-gpu`); every figure below is read from the run records "
             "in this folder's runs (see figures.json). The comparison report: "
             f"[report.md](report.md){' / [report.html](report.html)' if report else ''}. "
             f"Policy: {figures.get('policy_shape', '?')}; scorer models: {figures.get('scorer_shape', '?')}; "
             f"baseline: {figures.get('baseline') or '–'}.", "",
             "| run | status | training precision | peak GPU, torch allocator (MB) | vLLM KV cache (MB) | peak excl. "
             "KV (MB) | NVML peak of the process tree (MB) | generated tokens/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, f in runs.items():
        lines.append(f"| {label} | {f['status']} | {f['precision']} | {_fmt(f['peak_gpu_torch_mb'], 0)} | "
                     f"{_fmt(f['kv_cache_mb'], 0)} | {_fmt(f['peak_gpu_torch_excl_kv_mb'], 0)} | "
                     f"{_fmt(f['peak_gpu_nvml_mb'], 0)} | {_fmt(f['tokens_per_s'], 0)} |")
    lines += ["", "| run | s per iteration/step (after the first) | mean split (s) | scoring's share of the wall time | scorer models "
              "load / service ready (s) | scorer peak GPU (GiB) | memory plan |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, f in runs.items():
        split = ", ".join(f"{k} {v:.2f}" for k, v in (f.get("step_split_s") or {}).items()) or "–"
        plan = (f.get("memory_plan") or {}).get("summary", "–")
        lines.append(f"| {label} | {_fmt(f.get('seconds_per_step'))} | {split} | {_fmt(f.get('scoring_share'), 3)} | "
                     f"{_fmt(f.get('scorer_load_s'), 1)} / {_fmt(f.get('scorer_ready_s'), 1)} | "
                     f"{_fmt(f.get('scorer_peak_gpu_gib'), 1)} | {plan} |")
    lines += ["", "| figure | run | value | target | met |", "| --- | --- | --- | --- | --- |"]
    rows = [(key, label, f.get(key)) for label, f in runs.items() for key in TARGETS]
    rows += [(key, "ratio of runs", v) for key, v in figures.get("ratios", {}).items()]
    for key, label, v in rows:
        if v is None:
            continue
        op, target = TARGETS.get(key, ("", None))
        met = "–" if target is None else "yes" if (v <= target if op == "≤" else v >= target) else "no"
        lines.append(f"| {key} | {label} | {v:.3f} | {f'{op} {target}' if target is not None else '–'} | {met} |")
    for label, f in runs.items():
        if f["method"] == "es" and f["status"] == "completed":
            s = f["time_split_s"]
            wall = s["iteration_wall"] or 1.0
            parts = ", ".join(f"{k} {100 * s[k] / wall:.1f} %" for k in ("generation", "scoring", "perturb_restore",
                                                                           "update_sync"))
            p = f.get("probe") or {}
            probe = (f" Perturbation pass {1e3 * p['perturb_pass_s']:.2f} ms vs bound {1e3 * p['bandwidth_bound_s']:.2f} "
                     f"ms ({_fmt(p.get('weight_bytes'), 0)} weight bytes, copy {_fmt(p.get('copy_GBps'), 0)} GB/s)"
                     + (f"; restore from the snapshot {1e3 * p['restore_pass_s']:.2f} ms." if "restore_pass_s" in p else
                        " (before restores were timed apart: the pass includes the restore queued before it).")
                     if p else " Members are LoRA adapters: no in-place pass to time.")
            lines += ["", f"**{label}** iteration time split (sum over iterations {wall:.1f} s; the overhead figure "
                      f"above leaves out the first, which compiles kernels; scoring runs beside generation, so the "
                      f"shares overlap): {parts}.{probe}"]
    for label, f in runs.items():
        plan = f.get("memory_plan") or {}
        if f["status"] == "oom" and plan and not plan.get("fits", True):
            need = sum(p["gib"] for p in plan["needs"])
            lines += ["", f"**{label}** was refused before training by the memory plan: its parts need at least "
                      f"{need:.1f} GiB (activations on top) where {plan['free_gib']:.1f} GiB were free."]
        elif f["status"] == "oom":
            held = f.get("oom_process_in_use_mb")
            held = f" with {_fmt(held, 0)} MB in use by the process (torch's report)" if held else ""
            lines += ["", f"**{label}** ran out of memory{held}; peaks sampled before it: "
                      f"{_fmt(f['peak_gpu_torch_mb'], 0)} MB (torch) / {_fmt(f['peak_gpu_nvml_mb'], 0)} MB (NVML)."]
    asleep = [label for label, f in runs.items() if f.get("torch_counts_sleeping_vllm") and f.get("peak_gpu_torch_mb")]
    if asleep:
        lines += ["", f"{', '.join(asleep)}: vLLM sleeps while the policy trains; torch's allocator peak still "
                  "counts vLLM's unmapped pool, so it overstates the memory in use: read the NVML column."]
    if "scorer" in figures:
        s = figures["scorer"]
        lines += ["", f"Scorer ({s['models']} reward + cost, second process, same device): "
                  f"{s['service_pairs_per_s']:.0f} pairs/s through HTTP vs {s['raw_pairs_per_s']:.0f} raw forward "
                  f"({s['service_vs_raw']:.2f})."]
    return "\n".join(lines) + "\n"
