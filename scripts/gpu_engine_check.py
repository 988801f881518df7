"""ES engines on a CUDA device: correctness of the in-place operations and first throughput figures.

Builds a Qwen2-shaped model with random weights (no hub) using the built-in policy's tokenizer, then on
the transformers engine and the vLLM engine (bf16): counts the elements a perturbation changes, checks that
both engines perturb identically and restore exactly, that updates agree, and measures one perturbation pass
against the device-to-device copy bound and ES generation against the engine's raw generate.
Usage: python scripts/gpu_engine_check.py TOKENIZER_DIR OUT_JSON
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_checks import timed  # noqa: E402  (scripts/ is on the path when a script here runs)
from harness.generation import SamplingSettings  # noqa: E402
from methods.es.engine import EngineConfig  # noqa: E402
from methods.es.hf_engine import HFEngine  # noqa: E402


def build_model(tokenizer_dir: Path, out: Path) -> Path:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main(tokenizer_dir: str, out_json: str) -> None:
    figures: dict = {"device": torch.cuda.get_device_name(0)}
    work = Path(tempfile.mkdtemp())
    path = build_model(Path(tokenizer_dir), work / "model")
    cfg = EngineConfig(kind="hf", model_path=str(path), device="cuda", dtype="bfloat16", batch_size=256)
    hf = HFEngine(cfg)
    n = hf.count_elements()
    nbytes = sum(v.numel() * v.element_size() for _, v in hf.named_views())
    figures.update(parameters=n, weight_bytes=nbytes)

    before = [v.clone() for _, v in hf.named_views()]
    hf.perturb(5, 0.001)
    torch.cuda.synchronize()
    figures["hf_changed_elements"] = sum(int((b != v).sum()) for b, (_, v) in zip(before, hf.named_views()))
    delta = torch.cat([(v.float() - b.float()).flatten() for b, (_, v) in zip(before, hf.named_views())]) / 0.001
    big_tensor = max(range(len(before)), key=lambda i: before[i].numel())
    eps = (hf.named_views()[big_tensor][1].float() - before[big_tensor].float()).flatten() / 0.001
    # bf16 rounding makes delta coarse: check the noise's moments loosely, its independence across tensors
    figures["noise_mean"], figures["noise_std"] = float(delta.mean()), float(delta.std())
    figures["noise_largest_tensor_std"] = float(eps.std())
    hf.restore(5, 0.001)
    figures["hf_restore_exact"] = all(torch.equal(b, v) for b, (_, v) in zip(before, hf.named_views()))

    big = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(big)
    copy_s = timed(lambda: dst.copy_(big))
    figures["copy_GBps"] = 2 * nbytes / copy_s / 1e9
    perturb_s = timed(lambda: hf.perturb(7, 0.001), repeat=3)
    hf.restore(7, 0.001)
    figures.update(perturb_seconds=perturb_s, bandwidth_bound_seconds=2 * nbytes / (figures["copy_GBps"] * 1e9),
                   perturb_vs_bound=perturb_s / (2 * nbytes / (figures["copy_GBps"] * 1e9)))
    big = dst = None  # free the copy buffers before vLLM reserves memory

    from methods.es.vllm_engine import VLLMEngine

    v = VLLMEngine(EngineConfig(kind="vllm", model_path=str(path), device="cuda", dtype="bfloat16",
                                gpu_memory_utilization=0.35, enforce_eager=True, max_model_len=512),
                   scratch=str(work / "vllm"))
    figures["vllm_elements"] = v.count_elements()
    base = v.export_state_dict()
    figures["vllm_matches_hf_before"] = all(torch.equal(base[k], w.cpu()) for k, w in hf.export_state_dict().items())
    v.perturb(5, 0.001)
    hf.perturb(5, 0.001)
    pert = v.export_state_dict()
    figures["vllm_changed_elements"] = sum(int((pert[k] != base[k]).sum()) for k in base)
    figures["vllm_perturb_equals_hf"] = all(torch.equal(pert[k], w) for k, w in hf.export_state_dict().items())
    v.restore(5, 0.001)
    hf.restore(5, 0.001)
    figures["vllm_restore_exact"] = all(torch.equal(w, base[k]) for k, w in v.export_state_dict().items())
    terms = [(11, 1e-4), (12, -2e-4)]
    figures["update_checksums_equal"] = v.apply_update(terms) == hf.apply_update(terms)

    prompts = [f"How do I fix problem number {i}?" for i in range(256)]
    fixed = SamplingSettings(max_new_tokens=128, ignore_eos=True)
    t = time.perf_counter()
    outs = v.generate(prompts, fixed)
    raw_s = time.perf_counter() - t
    t = time.perf_counter()
    member = v.evaluate_member(3, 0.001, prompts, fixed)
    member_s = time.perf_counter() - t
    tokens = sum(o.n_tokens for o in outs)
    figures.update(generated_tokens=tokens, raw_tokens_per_s=tokens / raw_s, es_member_tokens_per_s=tokens / member_s,
                   es_vs_raw=raw_s / member_s, member_perturb_restore_s=member["perturb_restore"],
                   member_generation_s=member["generation"], peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30)
    Path(out_json).write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
