"""`esgrpo bench gpu` end to end on the CPU (tiny random models): the scorer in a second process, each spec
entry in its own process, figures read back from the run records, README with the targets."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.fixtures.random_models import build_random_policy, padded_tokenizer

ROOT = Path(__file__).parents[1]


def test_random_policy_has_the_architecture_vocabulary(policy_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = build_random_policy("tiny", tmp_path / "p")
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(tok) == model.config.vocab_size == 2048 and model.config.model_type == "qwen2"
    assert tok.decode([2047]) == "<|x1022|>"  # every id a random model samples decodes
    assert len(padded_tokenizer(1024)) == 1024


def test_figures_from_the_committed_h100_records(tmp_path):
    """Records as the H100 runs wrote them: a GRPO run out of memory under vLLM's sleep mode (torch's own message)
    and an ES run whose first iteration compiled kernels."""
    import shutil

    from harness.launch.gpu_bench import collect_figures, render_readme
    from harness.records import load_record

    runs = tmp_path / "runs"
    for folder, run in (("gpu-7b-h100-80gb-hbm3-2026-11-25", "grpo-fp32-s0"),
                        ("gpu-h100-80gb-hbm3-2026-11-25", "es-vllm-s0")):
        shutil.copytree(ROOT / "results" / folder / "runs" / run, runs / run)
    figures = collect_figures(runs, "H100")
    oom, es = figures["runs"]["grpo-fp32"], figures["runs"]["es-vllm"]
    assert oom["status"] == "oom" and oom["oom_process_in_use_mb"] == pytest.approx(62.26 * 1024)
    assert oom["error"].startswith("torch.OutOfMemoryError: CUDA out of memory.")  # what happened, not the advice
    assert oom["torch_counts_sleeping_vllm"] and "torch_counts_sleeping_vllm" not in es
    series = load_record(runs / "es-vllm-s0").series
    t = series[1].times
    assert es["es_overhead_share"] == pytest.approx((t["perturb_restore"] + t["update_sync"]) / t["iteration_wall"])
    # a first iteration that compiles kernels (session 4's first update took 0.81 s, the next 0.02 s) stays out
    record = json.loads((runs / "es-vllm-s0" / "record.json").read_text())
    record["series"][0]["times"]["update_sync"] += 5.0
    (runs / "es-vllm-s0" / "record.json").write_text(json.dumps(record))
    assert collect_figures(runs, "H100")["runs"]["es-vllm"]["es_overhead_share"] == pytest.approx(es["es_overhead_share"])
    # memory ratios compare like with like: none against a sleeping vLLM's torch peak, nor against a GRPO-vLLM
    # record without its KV cache figure; with it, both sides leave their KV cache out
    assert "es_vs_baseline_peak_gpu" not in collect_figures(runs, "H100", "grpo-fp32")["runs"]["es-vllm"]
    shutil.copytree(ROOT / "results" / "gpu-7b-h100-80gb-hbm3-2026-11-25" / "runs" / "grpo-lora-s0", runs / "grpo-lora-s0")
    assert "es_vs_baseline_peak_gpu" not in collect_figures(runs, "H100", "grpo-lora")["runs"]["es-vllm"]
    lora = json.loads((runs / "grpo-lora-s0" / "record.json").read_text())
    lora["memory"]["kv_cache_mb"] = 20000.0
    (runs / "grpo-lora-s0" / "record.json").write_text(json.dumps(lora))
    ratio = collect_figures(runs, "H100", "grpo-lora")["runs"]["es-vllm"]["es_vs_baseline_peak_gpu"]
    assert ratio == pytest.approx(es["peak_gpu_torch_excl_kv_mb"] / (lora["memory"]["peak_gpu_mb"]["cuda:0"] - 20000))
    readme = render_readme(figures, "x", None)
    assert "grpo-fp32** ran out of memory with 63,754 MB in use by the process" in readme
    assert "read the NVML column" in readme
    # the comparison report's table of runs that ran out of memory says the same
    from harness.report.compare import oom_rows

    assert oom_rows([runs / "grpo-fp32-s0"])[0]["in_use_mb"] == pytest.approx(62.26 * 1024)


@pytest.mark.slow
def test_bench_gpu_pipeline_on_cpu(policy_path, tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "harness.launch.cli", "bench", "gpu", "--spec",
                        str(ROOT / "tests" / "fixtures" / "bench-cpu.yaml"), "--shape", "tiny",
                        "--scorer-shape", "tiny", "--out", str(out), "--runs-dir", str(runs)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    figures = json.loads((out / "figures.json").read_text())
    assert figures["device"] == "cpu" and set(figures["runs"]) == {"es-hf", "es-lowrank", "grpo"}
    es, grpo = figures["runs"]["es-hf"], figures["runs"]["grpo"]
    lowrank = figures["runs"]["es-lowrank"]
    assert lowrank["kind"] == "es/vllm/lowrank" and lowrank["lowrank_batch_vs_raw"] > 0 and lowrank["perturb_vs_bound"] is None
    assert "pure bf16" not in es["precision"] and "float32 weights" in es["precision"]
    assert figures["baseline"] == "grpo" and "es_vs_baseline_peak_gpu" not in es  # no GPU here: no GPU peaks
    assert es["completions"] >= 48 and grpo["completions"] >= 48
    # fixed-length rollouts: every completion is exactly rollout.max_new_tokens (8) tokens, for both methods
    assert es["tokens"] == 8 * es["completions"] and grpo["tokens"] == 8 * grpo["completions"]
    assert 0 < es["es_overhead_share"] < 1 and es["member_vs_raw"] > 0
    assert es["probe"]["weight_bytes"] > 0 and es["perturb_vs_bound"] > 0 and es["probe"]["restore_pass_s"] > 0
    assert figures["scorer"]["service_pairs_per_s"] > 0 and figures["scorer"]["raw_pairs_per_s"] > 0
    readme = (out / "README.md").read_text()
    assert "| perturb_vs_bound | es-hf |" in readme and "Scorer (tiny reward + cost" in readme
    summary = json.loads((out / "summary.json").read_text())
    assert {"es-hf", "es-lowrank", "grpo"} <= set(summary["methods"])
    assert {(c["a"], c["b"]) for c in summary["comparisons"]} == {("es-hf", "grpo"), ("es-lowrank", "grpo")}
    assert not (runs / "scorer" / "scorer.json").exists()  # the scorer was stopped (its rendezvous removed)
