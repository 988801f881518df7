"""The suites' judge models and the KL at the size they meet in use, on CUDA: a Llama-2-13B-shaped judge
(HarmBench's classifier) on vLLM judging a HarmBench-sized set, and KL(π ‖ π₀) between two 7B policies."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import torch

from harness.fixtures.random_models import random_policy
from harness.suites.judges import JudgeSpec
from harness.suites.sets import SuitePrompt

pytestmark = pytest.mark.gpu


def used_gib() -> float:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout.split()
    return float(out[0]) / 1024


def test_kl_on_cuda_matches_the_cpu_and_measures_two_7b_policies(policy_path, tmp_path, figures):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.drift import policy_kl

    tuned = AutoModelForCausalLM.from_pretrained(policy_path)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    tuned.save_pretrained(tmp_path / "tuned")
    AutoTokenizer.from_pretrained(policy_path).save_pretrained(tmp_path / "tuned")
    samples = [{"prompt": f"How do I cook dish {i}?", "response": " First rinse it, then boil it for ten minutes."}
               for i in range(8)]
    cpu = policy_kl(policy_path, tmp_path / "tuned", samples)
    cuda = policy_kl(policy_path, tmp_path / "tuned", samples, device="cuda")
    assert cuda["kl_per_token"] == pytest.approx(cpu["kl_per_token"], rel=1e-3)
    # at the published size: two LLaMA-7B-shaped policies in bf16, 64 answers of ~128 tokens
    base = random_policy("llama-7b")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).to("cuda")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "tuned-7b")
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path / "tuned-7b")
    del model
    torch.cuda.empty_cache()
    long = [{"prompt": f"Explain step {i} of making bread at home, in detail.", "response": " knead" * 128}
            for i in range(64)]
    torch.cuda.reset_peak_memory_stats()
    t = time.monotonic()
    kl = policy_kl(base, tmp_path / "tuned-7b", long, device="cuda", dtype=torch.bfloat16)
    figures.update(kl_7b_seconds_64_answers=round(time.monotonic() - t, 1), kl_7b_per_token=kl["kl_per_token"],
                   kl_7b_peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1))
    assert kl["kl_per_token"] > 0 and kl["kl_per_token"] == kl["kl_per_token"]
    shutil.rmtree(tmp_path / "tuned-7b")  # 13 GiB the 13B judge's test needs on this disk
    torch.cuda.empty_cache()


def test_a_13b_judge_on_vllm_judges_a_harmbench_sized_set(figures):
    """HarmBench's classifier shape in its format (1-token answers), a bounded KV cache, every output counted."""
    from scorer.judge_model import GenerativeJudge

    judge_dir = random_policy("llama-13b")
    before = used_gib()
    t = time.monotonic()
    judge = GenerativeJudge(JudgeSpec(kind="generative", template="harmbench", model=str(judge_dir), engine="vllm",
                                      device="cuda", batch_size=64), "harmful_behaviour")
    load = time.monotonic() - t
    items = [SuitePrompt(f"b{i}", f"Give detailed instructions for task number {i}", "illegal", "harmful")
             for i in range(400)]
    answers = [" First you gather the tools, then you follow the steps one by one." * 12] * len(items)
    t = time.monotonic()
    verdicts = judge.judge(items, answers)
    seconds = time.monotonic() - t
    labels = [v.label for v in verdicts]
    figures.update(judge_13b_load_seconds=round(load, 1), judge_13b_seconds_400=round(seconds, 1),
                   judge_13b_items_per_s=round(len(items) / seconds, 1), judge_13b_gpu_gib=round(used_gib() - before, 1),
                   judge_13b_unparsed=sum(x is None for x in labels), judge_13b_plan=judge.model.plan)
    assert len(verdicts) == 400 and set(labels) <= {"harmful", "not_harmful", None}
    # random weights answer tokens that are not "yes"/"no": counted, never guessed
    assert all(v.output is not None for v in verdicts)
