"""How far training moved a policy from where it started: ‖θ − θ₀‖ / ‖θ₀‖ in total and per kind of layer, and the
cosine between two runs' updates (θ_a − θ₀ against θ_b − θ₀), read tensor by tensor from the safetensors files
each run saved (a 7B pair never needs more than one tensor of each in memory)."""

from __future__ import annotations

import json
import math
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator

import torch

from harness.errors import UserError

# the kind of layer a weight belongs to, by its HF name (first match)
KINDS = (("embedding", re.compile(r"embed_tokens|wte|word_embeddings")), ("lm_head", re.compile(r"lm_head")),
         ("attention", re.compile(r"self_attn|attention|attn")), ("mlp", re.compile(r"mlp|feed_forward")),
         ("norm", re.compile(r"norm|ln_")))


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if pattern.search(name)), "other")


def weight_files(model_dir: str | Path) -> list[Path]:
    """A model folder's safetensors files: one file, or the shards its index names."""
    d = Path(model_dir)
    index = d / "model.safetensors.index.json"
    if index.is_file():
        return sorted({d / f for f in json.loads(index.read_text())["weight_map"].values()})
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise UserError(f"{d}: no safetensors weights to measure drift from")
    return files


def _tensors(model_dir: str | Path, stack: ExitStack) -> dict[str, Any]:
    from safetensors import safe_open

    handles = {}
    for f in weight_files(model_dir):
        h = stack.enter_context(safe_open(str(f), framework="pt"))
        handles.update({k: h for k in h.keys()})
    return handles


def paired_tensors(*dirs: str | Path) -> Iterator[tuple[str, list[torch.Tensor]]]:
    """(name, [tensor of each folder]) for the weights every folder holds with one shape, in float64."""
    with ExitStack() as stack:
        handles = [_tensors(d, stack) for d in dirs]
        shared = sorted(set.intersection(*(set(h) for h in handles)))
        if not shared:
            raise UserError(f"{', '.join(map(str, dirs))}: no weight names in common (different models, or an "
                            "adapter beside a full model)")
        for name in shared:
            ts = [h[name].get_tensor(name).to(torch.float64) for h in handles]
            if len({t.shape for t in ts}) == 1:
                yield name, ts


def drift(base: str | Path, tuned: str | Path) -> dict[str, float]:
    """‖θ − θ₀‖ / ‖θ₀‖ over every shared weight (``total``) and per kind of layer."""
    diff: dict[str, float] = {}
    ref: dict[str, float] = {}
    for name, (t0, t) in paired_tensors(base, tuned):
        for key in ("total", kind_of(name)):
            diff[key] = diff.get(key, 0.0) + float(((t - t0) ** 2).sum())
            ref[key] = ref.get(key, 0.0) + float((t0 ** 2).sum())
    return {k: math.sqrt(diff[k]) / math.sqrt(ref[k]) if ref[k] else math.nan for k in diff}


def update_cosine(base: str | Path, a: str | Path, b: str | Path) -> float:
    """cos(θ_a − θ₀, θ_b − θ₀): 1 where two runs moved the same way, 0 where their moves are unrelated; NaN where
    either did not move."""
    dot = na = nb = 0.0
    for _, (t0, ta, tb) in paired_tensors(base, a, b):
        da, db = ta - t0, tb - t0
        dot += float((da * db).sum())
        na += float((da * da).sum())
        nb += float((db * db).sum())
    return dot / math.sqrt(na * nb) if na and nb else math.nan


def policy_kl(base: str | Path, tuned: str | Path, samples: list[dict[str, Any]], device: str = "cpu",
              dtype: torch.dtype = torch.float32, batch_size: int = 8) -> dict[str, float]:
    """KL(π ‖ π₀) teacher-forced on the tuned policy's own answers: for each response token, Σ_v π(v) (log π(v) −
    log π₀(v)) given the prompt (in the template) and the response so far. ``kl_per_token`` is the mean over every
    response token of ``samples``, ``kl_per_response`` the mean over responses of their sum."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.template import format_prompt

    tok = AutoTokenizer.from_pretrained(tuned)
    models = [AutoModelForCausalLM.from_pretrained(d, dtype=dtype).to(device).eval() for d in (tuned, base)]
    seqs = []
    for s in samples:
        prompt = tok(format_prompt(s["prompt"]))["input_ids"]
        response = tok(s["response"], add_special_tokens=False)["input_ids"]
        if response:
            seqs.append((prompt, response))
    if not seqs:
        raise UserError("no answer has a token to measure KL on")
    total, tokens, per_response = 0.0, 0, []
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    with torch.inference_mode():
        for start in range(0, len(seqs), batch_size):
            part = seqs[start : start + batch_size]
            width = max(len(p) + len(r) for p, r in part)
            ids = torch.full((len(part), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, (p, r) in enumerate(part):  # right padding: positions are the sequences' own
                ids[i, : len(p) + len(r)] = torch.tensor(p + r)
                mask[i, : len(p) + len(r)] = 1
            logp, logq = (torch.log_softmax(m(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.double(), -1)
                          for m in models)
            for i, (p, r) in enumerate(part):
                at = slice(len(p) - 1, len(p) + len(r) - 1)  # the positions that predict the response's tokens
                kl = (logp[i, at].exp() * (logp[i, at] - logq[i, at])).sum(-1)
                total += float(kl.sum())
                tokens += len(r)
                per_response.append(float(kl.sum()))
    return {"kl_per_token": total / tokens, "kl_per_response": sum(per_response) / len(per_response)}
