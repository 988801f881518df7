"""Models of real architectures with random weights, built here (no hub), for throughput and memory benchmarks.

Random weights generate gibberish, but a forward pass, a KV cache and an optimizer step cost what they cost
for a trained model of the same shape. The tokenizer is the built-in policy's, padded with added tokens to the
architecture's vocabulary size, so embeddings and logits are full size and every sampled id decodes. Users
benchmarking a real checkpoint pass its path instead.
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import torch
from filelock import FileLock

from harness.paths import esgrpo_home
from harness.policy import builtin_policy_path

# Causal LMs (Qwen2 or Llama architecture) and the Llama backbones of Beaver-format score models.
POLICY_SHAPES = {
    "qwen2-0.5b": dict(arch="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                       rope_theta=1e6),
    # Alpaca-7B's shape (LLaMA-7B): the published runs' policy, 6.74 B parameters
    "llama-7b": dict(arch="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False,
                     rope_theta=1e4),
    # head_dim 64: vLLM's CPU attention kernel rejects smaller heads
    "tiny": dict(arch="qwen2", hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, vocab_size=2048, tie_word_embeddings=True, rope_theta=1e6),
}
SCORER_SHAPES = {
    "llama-200m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                       num_key_value_heads=12, vocab_size=151936),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2, vocab_size=1024),
}
MAX_POSITIONS = 2048


def padded_tokenizer(vocab_size: int):
    """The built-in tokenizer, with ``<|endoftext|>`` and ``<|xN|>`` tokens added up to ``vocab_size``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(builtin_policy_path(progress=False))
    if vocab_size < len(tok):
        raise ValueError(f"vocab_size {vocab_size} is below the built-in tokenizer's {len(tok)}")
    # <|endoftext|> first: Qwen2's tokenizer class adds it when missing, which would overflow the vocabulary
    extra = ["<|endoftext|>", *(f"<|x{i}|>" for i in range(vocab_size - len(tok) - 1))]
    tok.add_tokens(extra[: vocab_size - len(tok)])
    return tok


def build_random_policy(shape: str, out: Path, seed: int = 0) -> Path:
    """Initialized directly in bf16, on the GPU when there is one (a 7B model in fp32 on the CPU would need
    27 GB and minutes)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    params = dict(POLICY_SHAPES[shape])
    config_class = {"qwen2": Qwen2Config, "llama": LlamaConfig}[params.pop("arch")]
    tok = padded_tokenizer(params["vocab_size"])
    cfg = config_class(**params, max_position_embeddings=MAX_POSITIONS, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    # The caller goes on to start the runs on the same GPU: the 7B weights must not stay in its allocator's
    # cache (13 GiB kept by `esgrpo bench gpu` made the 7B GRPO runs beside it run out of memory)
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def build_random_beaver(shape: str, out: Path, score_type: str = "reward", seed: int = 0,
                        bias: float = 0.0, normalize: tuple[float, float] | None = None) -> Path:
    """A Beaver score checkpoint as safe-rlhf's ``save_pretrained`` writes one: LlamaForScore config whose
    normalizer ``mean``/``var`` are one-element lists (``config.mean = normalizer.mean.tolist()``), backbone
    under ``model.*``, ``score_head`` with bias, normalizer buffers. ``normalize=(mean, var)`` turns
    ``do_normalize`` on with those statistics."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaModel

    tok = padded_tokenizer(SCORER_SHAPES[shape]["vocab_size"])
    cfg = LlamaConfig(**SCORER_SHAPES[shape], max_position_embeddings=MAX_POSITIONS)
    torch.manual_seed(seed)
    backbone = LlamaModel(cfg)
    out.mkdir(parents=True, exist_ok=True)
    raw = cfg.to_dict()
    mean, var = normalize or (0.0, 1.0)
    raw.update(architectures=["LlamaForScore"], score_dim=1, score_bias=True, score_type=score_type,
               do_normalize=normalize is not None, normalizer_type="ExponentialMovingAverage", momentum=0.9,
               mean=[mean], var=[var], torch_dtype="bfloat16",
               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    (out / "config.json").write_text(json.dumps(raw))
    state = {f"model.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    state["score_head.weight"] = torch.randn(1, cfg.hidden_size)
    state["score_head.bias"] = torch.tensor([bias])
    state.update({"normalizer.mean": torch.tensor([mean]), "normalizer.var": torch.tensor([var]),
                  "normalizer.count": torch.tensor([1000], dtype=torch.long)})
    save_file(state, str(out / "model.safetensors"))
    tok.save_pretrained(out)
    return out


def cached(name: str, build) -> Path:
    """``build(tmp_dir)`` once into ``$ESGRPO_HOME/models/NAME`` (safe across concurrent processes)."""
    final = esgrpo_home() / "models" / name
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if not (final / "config.json").is_file():
            tmp = final.with_name(final.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)  # a build that died half way
            build(tmp)
            tmp.rename(final)
    return final


def random_policy(shape: str) -> Path:
    return cached(f"random-{shape}", lambda d: build_random_policy(shape, d))


def random_scorer_models(shape: str) -> tuple[Path, Path]:
    return (cached(f"random-beaver-reward-{shape}", lambda d: build_random_beaver(shape, d, "reward", seed=1)),
            cached(f"random-beaver-cost-{shape}", lambda d: build_random_beaver(shape, d, "cost", seed=2)))
