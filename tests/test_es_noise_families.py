"""The other two noise families on real engines: the published shared-seed draw and low-rank (EGGROLL) ES.

Each is checked against a direct reference computation, and the transformers and vLLM-CPU engines against
each other (the vLLM low-rank path serves the population as LoRA adapters in one generate call)."""

import json
import math

import pytest
import torch

from harness.generation import SamplingSettings
from methods.es.engine import UNPERTURBED, EngineConfig, Member
from methods.es.hf_engine import HFEngine
from methods.es.noise import LOWRANK_MODULES, LowRankNoise, NoiseSpec, chunk_seed
from methods.es.vllm_engine import vllm_available

PROMPTS = ["How do I cook rice on the stove?", "How can I steal a bike without getting caught?",
           "What is a good way to learn to swim?"]
GREEDY = SamplingSettings(max_new_tokens=16)
SHARED = NoiseSpec(kind="shared_seed")
LOWRANK = NoiseSpec(kind="lowrank", rank=2)
needs_vllm = pytest.mark.skipif(not vllm_available(), reason="vLLM not installed")


def lowrank_reference(name, shape, seed, rank=2):
    """ε = A·Bᵀ/√r straight from the definition."""
    ga = torch.Generator().manual_seed(chunk_seed(seed, name, 0))
    gb = torch.Generator().manual_seed(chunk_seed(seed, name, 1))
    a = torch.randn(shape[0], rank, generator=ga)
    b = torch.randn(shape[1], rank, generator=gb)
    return a @ b.T / math.sqrt(rank)


def test_lowrank_perturbation_update_and_restore(policy_path):
    e = HFEngine(EngineConfig(kind="hf", model_path=str(policy_path)), LOWRANK)
    before = {n: v.clone() for n, v in e.named_views()}
    e.perturb(7, 0.01)
    covered = 0
    for name, v in e.named_views():
        if name.split(".")[-2] in LOWRANK_MODULES and v.dim() == 2:
            covered += v.numel()
            assert torch.allclose(v, before[name] + 0.01 * lowrank_reference(name, v.shape, 7), atol=1e-6)
        else:
            assert torch.equal(v, before[name])  # norms and embeddings are not perturbed
    assert covered > 0.7 * e.count_elements()
    e.restore(7, 0.01)
    assert all(torch.equal(v, before[n]) for n, v in e.named_views())
    terms = [(3, 0.002), (4, -0.001), (5, 0.0005)]
    e.apply_update(terms)
    for name, v in e.named_views():
        if LowRankNoise(2, LOWRANK_MODULES).covers(name, v):
            want = before[name] + sum(c * lowrank_reference(name, v.shape, s) for s, c in terms)
            assert torch.allclose(v, want, atol=1e-6)
    # the estimate Σ f̂ ε of a rank-r noise is full rank: the update is not itself low-rank
    name, v = next((n, v) for n, v in e.named_views() if n.endswith("q_proj.weight"))
    assert torch.linalg.matrix_rank(v - before[name]) == 2 * len(terms)


def published_perturb(worker, seed, noise_scale):
    """utils/worker_extn.py's perturb_self_weights, transcribed: one generator reseeded per parameter."""
    for _, p in worker.model_runner.model.named_parameters():
        gen = torch.Generator(device=p.device)
        gen.manual_seed(int(seed))
        noise = torch.randn(p.shape, dtype=p.dtype, device=p.device, generator=gen)
        p.data.add_(noise_scale * noise)


@pytest.mark.vllm
@needs_vllm
def test_shared_seed_noise_reproduces_the_published_draw(policy_path, tmp_path):
    from methods.es.vllm_engine import VLLMEngine

    mine = VLLMEngine(EngineConfig(kind="vllm", model_path=str(policy_path)), str(tmp_path / "a"), SHARED)
    hf = HFEngine(EngineConfig(kind="hf", model_path=str(policy_path)), SHARED)
    base = mine.worker.call(lambda es: es.export_state_dict())
    mine.perturb(12345, 0.01)
    hf.perturb(12345, 0.01)
    ours = mine.worker.call(lambda es: es.export_state_dict())
    assert all(torch.equal(ours[n], w) for n, w in hf.export_state_dict().items())  # transformers engine too
    # the published code on the same weights gives the same tensors (fp32: the same roundings)
    mine.restore(12345, 0.01)
    assert all(torch.equal(w, base[n]) for n, w in mine.worker.call(lambda es: es.export_state_dict()).items())
    mine.llm.collective_rpc(published_perturb, args=(12345, 0.01))
    published = mine.worker.call(lambda es: es.export_state_dict())
    assert all(torch.equal(published[n], ours[n]) for n in ours)
    o = [n for n in ours if n.endswith("o_proj.weight")]
    assert torch.allclose(ours[o[0]] - base[o[0]], ours[o[1]] - base[o[1]], atol=1e-7)  # same shape, same ε


@pytest.mark.vllm
@needs_vllm
def test_lowrank_population_in_one_generate_matches_member_by_member(policy_path, tmp_path):
    from methods.es import vllm_lora
    from methods.es.vllm_engine import VLLMEngine

    v = VLLMEngine(EngineConfig(kind="vllm", model_path=str(policy_path)), str(tmp_path / "v"), LOWRANK, max_loras=4)
    hf = HFEngine(EngineConfig(kind="hf", model_path=str(policy_path)), LOWRANK)
    jobs = [Member(11, 0.05), Member(11, -0.05), Member(12, 0.05), UNPERTURBED]
    before = v.checksum()
    # LoRA layers only where the noise goes; it also keys vLLM's compile cache apart from pre-dense-op artifacts
    assert sorted(v.llm.llm_engine.vllm_config.lora_config.target_modules) == sorted(LOWRANK.modules)
    vllm_lora.layers_served.clear()
    batched = v.evaluate_members(jobs, PROMPTS, GREEDY)
    layers = json.loads((policy_path / "config.json").read_text())["num_hidden_layers"]
    # every LoRA layer got its members' products from our ops: q/k/v and gate/up inside their base GEMM, o and down
    assert sorted(vllm_lora.layers_served.values()) == ["concat"] * 2 * layers + ["dense"] * 2 * layers
    assert v.checksum() == before  # adapters: the base weights never moved
    alone = hf.evaluate_members(jobs, PROMPTS, GREEDY)
    texts = [[c.text for c in out.completions] for out in batched]
    assert texts == [[c.text for c in out.completions] for out in alone]
    assert len({tuple(t) for t in texts}) == len(jobs)  # every member generates something of its own
    assert [c.text for c in v.generate(PROMPTS, GREEDY)] == texts[-1]
    # the next population is written into the slots vLLM holds (no new adapter files): still the reference's members
    jobs = [UNPERTURBED, Member(13, -0.05), Member(11, 0.05)]
    texts = [[c.text for c in out.completions] for out in v.evaluate_members(jobs, PROMPTS, GREEDY)]
    assert texts == [[c.text for c in out.completions] for out in hf.evaluate_members(jobs, PROMPTS, GREEDY)]
    assert sorted(p.name for p in (tmp_path / "v" / "adapters").iterdir()) == ["1", "2", "3"]
    # the update from the same seeds lands identically on both engines (same checksum), and vLLM generates with it:
    # its fused layers' GEMMs read the base weight inside [W | B], the view the update wrote
    assert v.apply_update([(11, 0.05), (12, -0.1)]) == hf.apply_update([(11, 0.05), (12, -0.1)])
    updated = [c.text for c in v.generate(PROMPTS, GREEDY)]
    assert updated == [c.text for c in hf.generate(PROMPTS, GREEDY)] and updated != texts[0]  # texts[0]: the base before
