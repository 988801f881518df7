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
