"""Full-rank ES on vLLM with CUDA graphs (bf16, a Qwen2-0.5B shape): in-place perturbations reach the captured
graphs, restores are exact, a graph engine's member agrees with an eager engine's, and the vLLM engine's weights and
updates match the transformers engine's on the same device."""

from __future__ import annotations

import statistics

import pytest
import torch

from harness.generation import SamplingSettings
from harness.template import format_prompt
from methods.es.engine import EngineConfig, Member

pytestmark = pytest.mark.gpu
PROMPTS = [f"How do I fix problem number {i} in my kitchen?" for i in range(8)]
SIGMA = 0.02  # large enough to move every greedy path of a random model


def vllm_engine(policy, tmp_path, eager: bool, **kw):
    from methods.es.vllm_engine import VLLMEngine

    return VLLMEngine(EngineConfig(kind="vllm", model_path=str(policy), device="cuda", dtype="bfloat16",
                                   gpu_memory_utilization=0.15, enforce_eager=eager, max_model_len=512, **kw),
                      scratch=str(tmp_path / ("eager" if eager else "graphs")))


def greedy(llm, max_tokens: int = 16) -> list[tuple[list[int], list[float]]]:
    """Greedy tokens and their log-probabilities for every prompt."""
    from vllm import SamplingParams

    outs = llm.generate([format_prompt(p) for p in PROMPTS],
                        SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True, logprobs=1),
                        use_tqdm=False)
    return [(list(o.outputs[0].token_ids), [lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)])
            for o in outs]


def forced(llm, sequences: list[list[int]], start: list[int]) -> list[list[float]]:
    """Each sequence's log-probabilities of its own tokens from ``start`` on (teacher forcing)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    outs = llm.generate([TokensPrompt(prompt_token_ids=s) for s in sequences],
                        SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=1), use_tqdm=False)
    return [[o.prompt_logprobs[k][s[k]].logprob for k in range(b, len(s))] for o, s, b in zip(outs, sequences, start)]


def mean_abs(a: list[list[float]], b: list[list[float]]) -> float:
    return statistics.fmean(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


@pytest.fixture(scope="module")
def graphs(policy_05b, tmp_path_factory):
    return vllm_engine(policy_05b, tmp_path_factory.mktemp("g"), eager=False)


@pytest.fixture(scope="module")
def hf(policy_05b):
    from methods.es.hf_engine import HFEngine

    return HFEngine(EngineConfig(kind="hf", model_path=str(policy_05b), device="cuda", dtype="bfloat16"))


# In-process vLLM engines share vLLM's global parallel state, and an engine that is freed tears it down under the
# others: the eager engine lives until the module's end. The update comes last: the eager engine starts from the
# policy as it was loaded.


def test_vllm_weights_and_perturbations_match_the_transformers_engine(graphs, hf, figures):
    assert graphs.count_elements() == hf.count_elements()
    assert graphs.checksum() == hf.checksum()
    before = graphs.worker.call(lambda es: es.export_state_dict())
    graphs.perturb(7, 1e-3)
    after = graphs.worker.call(lambda es: es.export_state_dict())
    changed = sum(int((after[n] != before[n]).sum()) for n in before)
    figures["perturbed_share_of_elements"] = changed / graphs.count_elements()
    hf.perturb(7, 1e-3)  # the same noise, drawn on the same device by the same kernel
    assert all(torch.equal(after[n], w.cpu()) for n, w in hf.export_state_dict().items())
    graphs.restore(7, 1e-3)
    hf.restore(7, 1e-3)
    assert graphs.checksum() == hf.checksum()
    # bf16 rounding leaves some elements where they were at σ 1e-3; nearly all must move
    assert figures["perturbed_share_of_elements"] > 0.9
    # the members the trainer hands out: perturbed and restored inside one call, the policy back as it was
    sampling = SamplingSettings(max_new_tokens=8, ignore_eos=True)
    outs = graphs.evaluate_members([Member(3, 1e-3), Member(4, -1e-3)], PROMPTS, sampling)
    assert [len(o.completions) for o in outs] == [len(PROMPTS)] * 2 and graphs.checksum() == hf.checksum()
    figures["probe"] = graphs.probe()  # one perturbation pass against the copy bound (a figure, not a target here)


def test_cuda_graphs_see_in_place_perturbations_and_restores_are_exact(graphs, policy_05b, tmp_path, figures):
    assert graphs.info()["cuda_graphs"]
    base = greedy(graphs.llm)
    graphs.perturb(5, SIGMA)
    perturbed = greedy(graphs.llm)
    graphs.restore(5, SIGMA)
    back = greedy(graphs.llm)
    figures.update(perturbed_outputs_differ=sum(a[0] != b[0] for a, b in zip(base, perturbed)),
                   restored_identical=sum(a == b for a, b in zip(base, back)))
    assert figures["perturbed_outputs_differ"] == len(PROMPTS)  # the replayed graphs read the perturbed weights
    assert back == base  # tokens and log-probabilities, exactly (snapshot restore)

    # the same member on an eager engine, at ES's scale of σ: both score the graph engine's perturbed greedy tokens
    # (teacher forcing, so near-tied tokens cannot make them part). bf16 kernels differ between the two engines
    # (compiled against vLLM's own), so their gap is numerics; had the graphs missed the perturbation, that gap
    # would be the whole shift the member makes, which the eager engine's base shows
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy_05b)
    prompt_ids = [tok(format_prompt(p)).input_ids for p in PROMPTS]
    start = [len(ids) for ids in prompt_ids]
    eager = vllm_engine(policy_05b, tmp_path, eager=True)
    for sigma in (0.005, SIGMA):
        graphs.perturb(5, sigma)
        seqs = [ids + t for ids, (t, _) in zip(prompt_ids, greedy(graphs.llm))]
        on_graphs = forced(graphs.llm, seqs, start)
        graphs.restore(5, sigma)
        on_eager_base = forced(eager.llm, seqs, start)
        eager.perturb(5, sigma)
        on_eager = forced(eager.llm, seqs, start)
        eager.restore(5, sigma)
        figures[f"sigma_{sigma}"] = {"member_graphs_vs_eager": mean_abs(on_graphs, on_eager),
                                     "member_graphs_vs_eager_base": mean_abs(on_graphs, on_eager_base)}
    small = figures["sigma_0.005"]
    assert small["member_graphs_vs_eager"] < 0.5 * small["member_graphs_vs_eager_base"], figures


def test_updates_match_the_transformers_engine(graphs, hf):
    terms = [(11, 1e-3), (12, -2e-3)]
    assert graphs.apply_update(terms) == hf.apply_update(terms)
