"""Low-rank ES on vLLM with CUDA graphs (bf16, a Qwen2-0.5B shape): the whole population as LoRA members of one
batch, through our LoRA ops on vLLM's CUDA wrapper, against the transformers engine with each member merged into
its weights."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from harness.generation import SamplingSettings
from harness.template import format_prompt
from methods.es.engine import UNPERTURBED, EngineConfig, Member
from methods.es.noise import NoiseSpec

pytestmark = pytest.mark.gpu
PROMPTS = [f"How do I fix problem number {i} in my kitchen?" for i in range(8)]
LOWRANK = NoiseSpec(kind="lowrank", rank=1)
JOBS = [Member(11, 0.02), Member(11, -0.02), Member(12, 0.02), Member(13, 0.02), UNPERTURBED]


def forced_vllm(llm, sequences, start, requests):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    outs = llm.generate([TokensPrompt(prompt_token_ids=s) for s in sequences],
                        SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=1), lora_request=requests,
                        use_tqdm=False)
    return [[o.prompt_logprobs[k][s[k]].logprob for k in range(b, len(s))] for o, s, b in zip(outs, sequences, start)]


def forced_hf(model, sequences, start):
    rows = []
    for s, b in zip(sequences, start):  # one at a time: no padding to line up
        with torch.no_grad():
            lp = model(torch.tensor([s], device=model.device)).logits[0].float().log_softmax(-1)
        rows.append([lp[k - 1, s[k]].item() for k in range(b, len(s))])
    return rows


def mean_abs(a, b) -> float:
    return statistics.fmean(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def test_lowrank_members_in_one_batch_match_the_merged_members(policy_05b, tmp_path, figures):
    from vllm.lora.request import LoRARequest

    from methods.es import vllm_lora
    from methods.es.hf_engine import HFEngine
    from methods.es.vllm_engine import VLLMEngine

    v = VLLMEngine(EngineConfig(kind="vllm", model_path=str(policy_05b), device="cuda", dtype="bfloat16",
                                gpu_memory_utilization=0.15, max_model_len=512, max_num_seqs=256),
                   scratch=str(tmp_path / "lowrank"), noise=LOWRANK, max_loras=8)
    hf = HFEngine(EngineConfig(kind="hf", model_path=str(policy_05b), device="cuda", dtype="bfloat16"), LOWRANK)
    assert v.info()["cuda_graphs"] and v.info()["lora_ops"] == "concat"
    greedy = SamplingSettings(max_new_tokens=32, ignore_eos=True)
    before = v.checksum()
    vllm_lora.layers_served.clear()
    batched = v.evaluate_members(JOBS, PROMPTS, greedy)
    # every LoRA layer got its members' products from our ops on vLLM's CUDA wrapper: q/k/v and gate/up inside
    # their base GEMM, o and down by the dense op (not vLLM's punica kernels)
    layers = json.loads((policy_05b / "config.json").read_text())["num_hidden_layers"]
    figures["layers_served"] = sorted(set(vllm_lora.layers_served.values()))
    assert sorted(vllm_lora.layers_served.values()) == ["concat"] * 2 * layers + ["dense"] * 2 * layers
    assert v.checksum() == before  # adapters: the base weights never moved
    assert len({tuple(c.text for c in o.completions) for o in batched}) == len(JOBS)

    # teacher forcing: both engines score the same tokens (the prompts and the base's continuations), vLLM with each
    # member as an adapter in its slot (ids 1… in job order), transformers with the member merged into its weights;
    # their gap must be far below how far the members moved the log-probabilities
    alone = hf.evaluate_members(JOBS, PROMPTS, greedy)
    tok = hf.tokenizer
    prompt_ids = [tok(format_prompt(p)).input_ids for p in PROMPTS]
    seqs = [ids + tok(c.text, add_special_tokens=False).input_ids for ids, c in zip(prompt_ids, alone[-1].completions)]
    start = [len(ids) for ids in prompt_ids]
    n, members = len(seqs), [(i + 1, m) for i, m in enumerate(j for j in JOBS if j.perturbed)]
    requests = [LoRARequest(f"member-{i}", i, str(v.adapters / str(i))) for i, _ in members for _ in range(n)]
    got = forced_vllm(v.llm, seqs * (len(members) + 1), start * (len(members) + 1), requests + [None] * n)
    vllm_rows = [got[k * n:(k + 1) * n] for k in range(len(members) + 1)]
    hf_rows = []
    for _, m in members:
        hf.perturb(m.seed, m.scale)
        hf_rows.append(forced_hf(hf.model, seqs, start))
        hf.restore(m.seed, m.scale)
    hf_rows.append(forced_hf(hf.model, seqs, start))
    gaps = [mean_abs(a, b) for a, b in zip(vllm_rows, hf_rows)]
    shifts = [mean_abs(a, hf_rows[-1]) for a in hf_rows[:-1]]
    figures.update(members_vllm_lora_vs_hf_merged=gaps[:-1], base_vllm_vs_hf=gaps[-1], members_shift_from_base=shifts)
    for gap, shift in zip(gaps[:-1], shifts):
        assert gap < 0.25 * shift and gap < 2 * gaps[-1] + 0.02, figures

    # the update from the same seeds lands identically on both engines
    terms = [(11, 1e-3), (12, -1e-3)]
    assert v.apply_update(terms) == hf.apply_update(terms)
