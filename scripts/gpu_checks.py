"""ES engines on a CUDA device: speed and profiling figures the CPU cannot give (the correctness checks are tests:
tests/gpu/, `make test-gpu`). Writes one JSON.

1. Fused noise kernel variants (Philox rounds, 16-bit halves, approximate math) on a Qwen2-0.5B-shaped and a
   LLaMA-7B-shaped set of bf16 tensors: one perturbation pass against the copy bound, and the noise's moments.
2. Low-rank speed: the population batch against raw generation of as many sequences for populations 4 to 30
   (ESGRPO_CHECK_POPULATIONS; 64 prompts × 128 tokens), the share spent making members, where the batch's device
   time goes (LoRA kernels against the rest, from the torch profiler) and where the host's Python time goes
   (cProfile). At most 1,024 sequences run at once (and fewer at 7B, where the KV cache holds ~500), so the
   largest populations run in waves, raw and batch alike.
3. LoRA kernels: the dense LoRA op (methods/es/vllm_lora.py) and vLLM's multi-LoRA shrink/expand Triton kernels
   over one decoder layer's linear layers (rank 1, 8, 30 or 32 adapters, 512 or 1,024 decode tokens), replayed from
   CUDA graphs, against the layer's base GEMMs; vLLM's default kernel configs against a small grid (unless
   ESGRPO_LORA_GRID=0), the best written as vLLM's tuned-config JSON. ``ESGRPO_CHECK_LORA_OPS=punica`` runs the
   engine parts on vLLM's kernels instead of ours.
4. Raw speed: raw generation of the same sequences on an engine started without LoRA (lowrank-speed's raw runs
   on its own LoRA-enabled engine without adapters), and the low-rank batch against it when lowrank-speed ran first.
5. LoRA concat: the fused layers' products inside their base GEMM (``linear_lora_concat``) against the dense op on
   every layer, per decoder layer's linear layers from CUDA graphs (needs only torch).
Usage: python scripts/gpu_checks.py OUT_JSON PART… (kernels | lowrank-speed | raw-speed | lora-kernels |
lora-concat; raw-speed compares with lowrank-speed's). ``ESGRPO_CHECK_SHAPE`` picks the policy shape (qwen2-0.5b;
llama-7b)."""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.generation import SamplingSettings  # noqa: E402
from harness.fixtures.random_models import POLICY_SHAPES, random_policy  # noqa: E402
from methods.es.engine import UNPERTURBED, EngineConfig, Member  # noqa: E402
from methods.es.noise import NoiseSpec  # noqa: E402

# the speed probes' batch: 64 prompts × 128 tokens per member, as many members as ESGRPO_CHECK_POPULATIONS says
SPEED_PROMPTS = [f"How do I fix problem number {i}?" for i in range(64)]
SPEED_SAMPLING = SamplingSettings(max_new_tokens=128, ignore_eos=True)


def check_populations() -> tuple[int, ...]:
    return tuple(int(n) for n in os.environ.get("ESGRPO_CHECK_POPULATIONS", "4,8,16,30").split(","))


def timed(fn, repeat=5) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def device_seconds(fn, repeat=5) -> float:
    """Median time between CUDA events around ``fn``: the stream's time, host gaps between its launches included."""
    fn()
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def kernel_seconds(fn, repeat=5) -> float:
    """The CUDA kernels' own time per call of ``fn`` (torch profiler), copies and host gaps excluded."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeat):
            fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if "noise" in e.key]
    return sum(e.device_time_total for e in kernels) / 1e6 / repeat


def graphs_match_launches() -> bool:
    """The same sequence of perturbations and updates, replayed from CUDA graphs and launched directly: equal bits."""
    from methods.es.noise_cuda import DEFAULT, FusedNoise

    out = []
    for graphs in (True, False):
        torch.manual_seed(0)
        views = [(f"t{i}.weight", torch.randn(n, device="cuda").to(torch.bfloat16)) for i, n in enumerate((5000, 77, 1 << 20))]
        fused = FusedNoise(views, DEFAULT._replace(graphs=graphs))
        for terms in ([(1, 1e-2)], [(2, -1e-2)], [(3, 1e-2)], [(s, 1e-3) for s in range(5)], [(s, 2e-3) for s in range(9, 14)]):
            fused.add_(terms)
        out.append(torch.cat([v.float() for _, v in views]))
    return bool(torch.equal(out[0], out[1]))


def shaped_views(shape: str) -> list[tuple[str, torch.Tensor]]:
    """Empty bf16 tensors of a policy shape's weights (HF names and shapes; no model needed)."""
    p = POLICY_SHAPES[shape]
    h, i, layers, heads, kv = (p["hidden_size"], p["intermediate_size"], p["num_hidden_layers"],
                               p["num_attention_heads"], p["num_key_value_heads"])
    d = h // heads
    shapes = {"model.embed_tokens.weight": (p["vocab_size"], h), "model.norm.weight": (h,)}
    if not p["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (p["vocab_size"], h)
    for n in range(layers):
        pre = f"model.layers.{n}"
        shapes.update({f"{pre}.self_attn.q_proj.weight": (heads * d, h), f"{pre}.self_attn.k_proj.weight": (kv * d, h),
                       f"{pre}.self_attn.v_proj.weight": (kv * d, h), f"{pre}.self_attn.o_proj.weight": (h, heads * d),
                       f"{pre}.mlp.gate_proj.weight": (i, h), f"{pre}.mlp.up_proj.weight": (i, h),
                       f"{pre}.mlp.down_proj.weight": (h, i), f"{pre}.input_layernorm.weight": (h,),
                       f"{pre}.post_attention_layernorm.weight": (h,)})
    return [(n, torch.zeros(s, dtype=torch.bfloat16, device="cuda")) for n, s in shapes.items()]


def kernels() -> dict:
    from methods.es.noise_cuda import DEFAULT, FusedNoise, Variant

    variants = [Variant(10, False, False), Variant(7, False, False), Variant(10, False, True),
                Variant(7, True, False), Variant(7, True, True), Variant(10, True, True)]
    out: dict = {"default": DEFAULT._asdict(), "shapes": {}}
    probe = torch.zeros(1 << 24, dtype=torch.float32, device="cuda")
    out["moments"] = {}
    for v in variants:  # the noise itself: 16 M draws in fp32
        probe.zero_()
        FusedNoise([("probe.weight", probe)], v).add_([(123, 1.0)])
        x = probe.double()
        z = (x - x.mean()) / x.std()
        out["moments"][str(tuple(v))] = {
            "mean": float(x.mean()), "std": float(x.std()), "kurtosis": float((z ** 4).mean()),
            "beyond_3sigma": float((x.abs() > 3).double().mean()), "max_abs": float(x.abs().max()),
            "lag1_corr": float((z[1:] * z[:-1]).mean()), "quarter_corr": float((z[: len(z) // 2] * z[len(z) // 2:]).mean())}
    del probe
    out["graphs_match_launches"] = graphs_match_launches()
    for shape in ("qwen2-0.5b", "llama-7b"):
        views = shaped_views(shape)
        nbytes = sum(t.numel() * t.element_size() for _, t in views)
        src = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        copy_bps = 2 * src.numel() / timed(lambda: dst.copy_(src))
        src = dst = None  # freed before the rest of the probe
        bound = 2 * nbytes / copy_bps
        rows = {}
        launches = [DEFAULT._replace(warps=w, graphs=gr) for w in (1, 2, 4, 8) for gr in (False, True)]  # the same noise
        for v in dict.fromkeys([*variants, *launches]):
            fused = FusedNoise(views, v)
            perturb = lambda: fused.add_([(1, 0.001)])  # noqa: E731
            row = {"perturb_s": timed(perturb), "perturb_device_s": device_seconds(perturb),
                   "perturb_kernel_s": kernel_seconds(perturb),
                   "update8_s": timed(lambda: fused.add_([(s, 1e-4) for s in range(8)]), repeat=3)}
            row["perturb_vs_bound"] = row["perturb_s"] / bound
            row["kernel_vs_bound"] = row["perturb_kernel_s"] / bound
            rows[str(tuple(v))] = row
        out["shapes"][shape] = {"weight_bytes": nbytes, "copy_GBps": copy_bps / 1e9, "bound_s": bound, "variants": rows}
        del views
        torch.cuda.empty_cache()
    return out


def speed_engine(policy: Path) -> EngineConfig:
    """The speed probes' engine: the same for the low-rank batch and the plain raw generation it is divided by."""
    return EngineConfig(kind="vllm", model_path=str(policy), device="cuda", dtype="bfloat16",
                        gpu_memory_utilization=0.85, max_model_len=512, max_num_seqs=1024,
                        lora_ops=os.environ.get("ESGRPO_CHECK_LORA_OPS", "concat"))


def lowrank_speed(policy: Path, work: Path, figures: dict) -> dict:
    from methods.es.trainer import batch_speed
    from methods.es.vllm_engine import VLLMEngine

    populations = check_populations()
    v = VLLMEngine(speed_engine(policy),
                   scratch=str(work / "lowrank-speed"), noise=NoiseSpec(kind="lowrank", rank=1),
                   max_loras=max(populations))
    prompts, fixed = SPEED_PROMPTS, SPEED_SAMPLING

    def speed(jobs) -> tuple[float, float]:
        return batch_speed(v.evaluate_members(jobs, prompts, fixed))

    out: dict = {}
    for n in populations:
        members = [Member(100 + i, 1e-3) for i in range(n)] + [UNPERTURBED]
        for _ in range(2):  # the second of each counts: the first loads adapter files and warms shapes up
            raw, _ = speed([UNPERTURBED] * (n + 1))
            batch, making = speed(members)
        out[f"population_{n}"] = {"sequences": (n + 1) * len(prompts), "raw_tokens_per_s": raw,
                                  "batch_tokens_per_s": batch, "batch_vs_raw": batch / raw,
                                  "member_making_share": making}
    from torch.profiler import ProfilerActivity, profile

    n = min(8, max(populations))
    members = [Member(200 + i, 1e-3) for i in range(n)] + [UNPERTURBED]
    for name, jobs in (("raw", [UNPERTURBED] * (n + 1)), ("batch", members)):
        t = time.perf_counter()
        with profile(activities=[ProfilerActivity.CUDA if torch.cuda.is_available() else ProfilerActivity.CPU]) as prof:
            v.evaluate_members(jobs, prompts, fixed)
        wall = time.perf_counter() - t
        attr = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        rows = sorted(((e.key, getattr(e, attr)) for e in prof.key_averages()), key=lambda r: -r[1])
        total = sum(t for _, t in rows) or 1.0
        lora = sum(t for k, t in rows if any(w in k.lower() for w in ("lora", "shrink", "expand", "sgmv", "bgmv")))
        # device time against wall time: a LoRA batch that keeps the device less busy loses time outside kernels
        out[f"profile_population_{n}_{name}"] = {"ms": total / 1e3, "wall_ms": wall * 1e3, "lora_kernel_share": lora / total,
                                                "top": [[k[:80], round(t / 1e3, 2)] for k, t in rows[:12]]}
        out[f"python_population_{n}_{name}"] = python_profile(lambda: v.evaluate_members(jobs, prompts, fixed))
    return out


def raw_speed(policy: Path, work: Path, figures: dict) -> dict:
    """Raw generation on an engine started without LoRA (the plain full-rank engine), the same sequences as
    ``lowrank-speed``'s raw and batch rows: the baseline its batch ÷ raw must also hold against."""
    from methods.es.vllm_engine import VLLMEngine

    populations = check_populations()
    v = VLLMEngine(speed_engine(policy),
                   scratch=str(work / "raw-speed"))
    prompts, fixed = SPEED_PROMPTS, SPEED_SAMPLING
    out: dict = {}
    for n in populations:
        batch = prompts * (n + 1)
        for _ in range(2):  # the second counts, as in lowrank-speed
            t = time.perf_counter()
            tokens = sum(c.n_tokens for c in v.generate(batch, fixed))
            seconds = time.perf_counter() - t
        out[f"population_{n}"] = {"sequences": len(batch), "raw_tokens_per_s": tokens / seconds}
        lowrank = figures.get(figure_key("lowrank-speed"), {}).get(f"population_{n}", {})  # this shape's only
        if "batch_tokens_per_s" in lowrank:
            out[f"population_{n}"]["lowrank_batch_vs_plain_raw"] = lowrank["batch_tokens_per_s"] / (tokens / seconds)
    n = min(8, max(populations))
    out[f"python_population_{n}_raw"] = python_profile(lambda: v.generate(prompts * (n + 1), fixed))
    return out


def python_profile(fn, rows: int = 15) -> dict:
    """Where the host's Python time goes in ``fn`` (cProfile: slower than the real thing, the shares are the point):
    the device idles while the engine's Python schedules and prepares a step."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.runcall(fn)
    wall = time.perf_counter() - t
    stats = pstats.Stats(prof).stats  # (file, line, function) -> (calls, primitive calls, tottime, cumtime, callers)
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:rows]
    return {"wall_ms": wall * 1e3, "top_self_ms": [[f"{Path(f).name}:{line}({func})", round(v[2] * 1e3, 1), v[0]]
                                                  for (f, line, func), v in top]}


def graph_ms(fn, replays: int = 20) -> float:
    """Median milliseconds of one CUDA-graph replay of ``fn`` (as vLLM's decode steps run)."""
    fn()  # compiles Triton kernels outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def lora_kernels() -> dict:
    """Where low-rank ES's generation time goes beyond the base model's: vLLM's LoRA kernels per decoder layer."""
    import itertools

    from vllm.lora.ops.triton_ops import LoRAKernelMeta, lora_expand, lora_expand_op, lora_shrink, lora_shrink_op
    from vllm.lora.ops.triton_ops.utils import get_lora_op_configs

    from methods.es.vllm_lora import add_lora_dense

    shrink_grid = [dict(block_m=m, block_n=16, block_k=k, split_k=s, num_warps=4, num_ctas=1, group_size_m=8,
                        num_stages=2, max_nreg=None)
                   for m, k, s in itertools.product((16, 32, 64), (32, 64, 128, 256), (1, 2, 4, 8))]
    expand_grid = [dict(block_m=m, block_n=n, block_k=16, num_warps=w, num_ctas=1, num_stages=2, max_nreg=None)
                   for m, n, w in itertools.product((16, 32, 64, 128), (64, 128, 256), (4, 8))]
    rank, out, tuned = 1, {}, {"shrink": {}, "expand": {}}
    for shape in ("qwen2-0.5b", "llama-7b"):
        p = POLICY_SHAPES[shape]
        h, i, d = p["hidden_size"], p["intermediate_size"], p["hidden_size"] // p["num_attention_heads"]
        q, kv = p["num_attention_heads"] * d, p["num_key_value_heads"] * d
        layers = {"qkv": (h, (q, kv, kv)), "o": (q, (h,)), "gate_up": (h, (i, i)), "down": (i, (h,))}
        for m_tokens, loras in itertools.product((512, 1024), (8, 30, 32)):
            dev, bf = "cuda", torch.bfloat16
            mapping = (torch.arange(m_tokens, device=dev) * (loras + 1) // m_tokens - 1).to(torch.long)
            meta = LoRAKernelMeta.make(loras, m_tokens, device=dev)
            meta.prepare_tensors(mapping)
            args = meta.meta_args(m_tokens, False)
            ops = []
            for name, (k_in, outs) in layers.items():
                x = torch.randn(m_tokens, k_in, device=dev, dtype=bf)
                a = tuple(torch.randn(loras, 1, rank, k_in, device=dev, dtype=bf) * 0.01 for _ in outs)
                b = tuple(torch.randn(loras, 1, n, rank, device=dev, dtype=bf) * 0.01 for n in outs)
                w = torch.randn(sum(outs), k_in, device=dev, dtype=bf) * 0.01
                y = torch.zeros(m_tokens, sum(outs), device=dev, dtype=bf)
                buf = torch.zeros(len(outs), m_tokens, rank, device=dev, dtype=torch.float32)
                ops.append((name, x, a, b, w, y, buf, outs))

            def base():
                for _, x, _a, _b, w, y, _buf, _o in ops:
                    torch.mm(x, w.t(), out=y)

            def run(op: str, layer) -> None:
                _, x, a, b, _w, y, buf, _o = layer
                if op == "shrink":
                    lora_shrink(x, a, buf, *args, 1.0)
                else:
                    lora_expand(buf, b, y, *args, offset_start=0, add_inputs=True)

            no_lora, slots = torch.tensor([False]), (mapping[:, None] == torch.arange(loras, device=dev)).to(bf)

            def dense():
                for _, x, a, b, _w, y, _buf, outs in ops:
                    add_lora_dense(y, x, list(a), list(b), slots, no_lora, list(outs), 1.0)

            row: dict = {"base_linear_ms": graph_ms(base), "dense_ms": graph_ms(dense)}
            row["dense_vs_base"] = row["dense_ms"] / row["base_linear_ms"]
            grids = (("shrink", lora_shrink_op, shrink_grid), ("expand", lora_expand_op, expand_grid))
            for op, module, grid in grids if os.environ.get("ESGRPO_LORA_GRID", "1") == "1" else ():
                row[f"{op}_default_ms"] = graph_ms(lambda: [run(op, layer) for layer in ops])
                row[f"{op}_best_ms"] = 0.0
                for layer in ops:  # each layer's best config (vLLM looks them up by slices, m, k, n)
                    best = (graph_ms(lambda: run(op, layer), replays=10), None)
                    for cfg in grid:
                        module.get_lora_op_configs = lambda *a, _c=cfg, **k: _c
                        try:
                            best = min(best, (graph_ms(lambda: run(op, layer), replays=10), cfg), key=lambda r: r[0])
                        except Exception:  # noqa: BLE001 - a config Triton cannot build is skipped
                            pass
                        finally:
                            module.get_lora_op_configs = get_lora_op_configs
                    row[f"{op}_best_ms"] += best[0]
                    outs, k_in = layer[7], layer[1].shape[1]
                    kk, nn = (k_in, rank) if op == "shrink" else (rank, max(outs))
                    cfg = best[1] or get_lora_op_configs(op, loras + 1, m_tokens, kk if op == "shrink" else nn,
                                                         rank, len(outs), add_inputs=True if op == "expand" else None)
                    row.setdefault(f"{op}_best", {})[layer[0]] = best[1] and {k: v for k, v in cfg.items() if v is not None}
                    # vLLM's key order: lora_ids size (members + 1), slices, m, k, n
                    tuned[op].setdefault(str(loras + 1), {}).setdefault(str(len(outs)), {}).setdefault(
                        str(m_tokens), {}).setdefault(str(kk), {})[str(nn)] = cfg
            if "shrink_best_ms" in row:
                row["lora_vs_base_default"] = (row["shrink_default_ms"] + row["expand_default_ms"]) / row["base_linear_ms"]
                row["lora_vs_base_best"] = (row["shrink_best_ms"] + row["expand_best_ms"]) / row["base_linear_ms"]
            out[f"{shape}/m{m_tokens}/loras{loras}"] = row
            torch.cuda.empty_cache()
    out["tuned_configs"] = tuned
    out["gpu_name"] = torch.cuda.get_device_name().replace(" ", "_").replace("-", "_")
    if os.environ.get("ESGRPO_LORA_CONFIGS_OUT"):  # vLLM's VLLM_TUNED_CONFIG_FOLDER layout
        folder = Path(os.environ["ESGRPO_LORA_CONFIGS_OUT"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{out['gpu_name']}_SHRINK.json").write_text(json.dumps(tuned["shrink"], indent=1))
        for add in ("TRUE", "FALSE"):  # FALSE: the dual-stream path writes LoRA's output apart
            (folder / f"{out['gpu_name']}_EXPAND_{add}.json").write_text(json.dumps(tuned["expand"], indent=1))
    return out


def lora_concat(dev: str = "cuda") -> dict:
    """The fused layers' products inside their base GEMM (``linear_lora_concat``: q/k/v and gate/up) against the
    dense op on every layer, decoder layers' linear layers replayed from CUDA graphs at decode sizes (rank 1; enough
    layers that their weights overflow the L2 cache). ``raw`` is the base GEMMs alone, ``concat_no_lora`` the
    same layers with a member-free batch (the base GEMM on W_ext's strided view)."""
    import itertools

    from methods.es.vllm_lora import add_lora_dense, concat_layout, linear_lora_concat

    out, bf, rank = {}, torch.bfloat16, 1
    for shape in ("qwen2-0.5b", "llama-7b"):
        p = POLICY_SHAPES[shape]
        h, i, d = p["hidden_size"], p["intermediate_size"], p["hidden_size"] // p["num_attention_heads"]
        q, kv = p["num_attention_heads"] * d, p["num_key_value_heads"] * d
        shapes = {"qkv": (h, (q, kv, kv)), "o": (q, (h,)), "gate_up": (h, (i, i)), "down": (i, (h,))}
        layer_bytes = sum(k * sum(n) * 2 for k, n in shapes.values())
        n_layers = max(1, -(-400 * 2**20 // layer_bytes))
        for tokens, slots in itertools.product((256, 576, 1024), (8, 32)):
            mapping = torch.arange(tokens, device=dev) * (slots + 1) // tokens - 1  # the last share: no adapter
            one_hot = (mapping[:, None] == torch.arange(slots, device=dev)).to(bf)
            no, yes = torch.tensor([True]), torch.tensor([False])
            layers = []
            for _ in range(n_layers):
                layer = {}
                for name, (k, outs) in shapes.items():
                    w = torch.randn(sum(outs), k, device=dev, dtype=bf) * 0.02
                    a = [torch.randn(slots, 1, rank, k, device=dev, dtype=bf) * 0.02 for _ in outs]
                    b = [torch.randn(slots, 1, n, rank, device=dev, dtype=bf) * 0.02 for n in outs]
                    x = torch.randn(tokens, k, device=dev, dtype=bf)
                    layer[name] = (x, w, a, b, outs)
                    if len(outs) > 1:
                        ext, a_all, a_views, b_views = concat_layout(w, outs, slots, rank, bf)
                        for view, src in zip([*a_views, *b_views], [*a, *b]):
                            view.copy_(src)
                        layer[name + "/concat"] = (ext, a_all)
                layers.append(layer)

            def raw():
                for layer in layers:
                    for x, w, _a, _b, _o in [layer[n] for n in shapes]:
                        x @ w.t()

            def dense():
                for layer in layers:
                    for x, w, a, b, outs in [layer[n] for n in shapes]:
                        y = x @ w.t()
                        add_lora_dense(y, x, a, b, one_hot, yes, list(outs), 1.0)

            def concat(flag=yes):
                for layer in layers:
                    for name in shapes:
                        x, w, a, b, outs = layer[name]
                        if name + "/concat" in layer:
                            ext, a_all = layer[name + "/concat"]
                            linear_lora_concat(x, ext, None, a_all, one_hot, flag, len(outs))
                        elif flag is yes:
                            y = x @ w.t()
                            add_lora_dense(y, x, a, b, one_hot, yes, list(outs), 1.0)
                        else:
                            x @ w.t()

            row = {"layers": n_layers, "raw_ms": graph_ms(raw), "dense_ms": graph_ms(dense),
                   "concat_ms": graph_ms(concat), "concat_no_lora_ms": graph_ms(lambda: concat(no))}
            row.update({f"{k}_vs_raw": row[f"{k}_ms"] / row["raw_ms"] for k in ("dense", "concat", "concat_no_lora")})
            out[f"{shape}/m{tokens}/slots{slots}"] = row
            layers.clear()
            torch.cuda.empty_cache()
    return out


def figure_key(part: str) -> str:
    """Where a part's figures go in the JSON: the default shape's under the part's name, others suffixed."""
    shape = os.environ.get("ESGRPO_CHECK_SHAPE", "qwen2-0.5b")
    dtype = os.environ.get("ESGRPO_CHECK_DTYPE", "bfloat16")
    return part + ("" if shape == "qwen2-0.5b" else f"@{shape}") + ("" if dtype == "bfloat16" else f":{dtype}")


WITHOUT_POLICY = {"kernels": kernels, "lora-kernels": lora_kernels, "lora-concat": lora_concat}  # tensors only
WITH_POLICY = {"lowrank-speed": lowrank_speed, "raw-speed": raw_speed}  # engines on a random policy of the chosen shape


def main(out_json: str, parts: list[str]) -> None:
    """Each part in its own process (one vLLM engine per process); they add to the same JSON."""
    path = Path(out_json)
    figures: dict = json.loads(path.read_text()) if path.is_file() else {}
    figures["device"] = torch.cuda.get_device_name(0)
    work = Path(tempfile.mkdtemp())
    for part in parts:
        try:
            shape, key = os.environ.get("ESGRPO_CHECK_SHAPE", "qwen2-0.5b"), figure_key(part)
            if part in WITHOUT_POLICY:
                figures[key] = WITHOUT_POLICY[part]()
            else:
                figures[key] = WITH_POLICY[part](random_policy(shape), work, figures)
        except Exception as e:  # noqa: BLE001 - one failed check must not hide the others' figures
            figures[key] = {"error": f"{type(e).__name__}: {e}"[:2000]}
        path.write_text(json.dumps(figures, indent=1))
    print(json.dumps({k: v for k, v in figures.items() if k != "eager"}, indent=1)[:6000])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
