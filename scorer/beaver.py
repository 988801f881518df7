"""PKU Beaver score models (``LlamaForScore``) without the safe-rlhf package.

Checkpoint format: config ``architectures: ["LlamaForScore"]`` with ``score_dim``, ``score_bias``,
``score_type``, ``do_normalize`` and normalizer stats (``mean``, ``var``); weights ``model.*`` (a Llama
backbone), ``score_head.weight`` [score_dim, hidden], ``score_head.bias`` [score_dim], and normalizer
buffers (ignored: the config carries the same numbers). The score of a text is the head's output at the
last non-padding token (the EOS the tokenizer appends), found as the last 1 of the attention mask so
that left and right padding both work. Loading this with LlamaForSequenceClassification would silently
leave a random ``score`` head: this loader refuses missing head weights instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.errors import UserError

ARCHITECTURE = "LlamaForScore"


def read_config(path: Path) -> dict:
    f = path / "config.json"
    if not f.is_file():
        raise UserError(f"{path}: not a model directory (no config.json)")
    cfg = json.loads(f.read_text())
    if ARCHITECTURE not in (cfg.get("architectures") or []):
        raise UserError(f"{f}: architectures is {cfg.get('architectures')}, expected ['{ARCHITECTURE}'] "
                        "(use kind 'hf-classifier' for other reward models)")
    return cfg


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if files:
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
        return state
    bins = sorted(path.glob("pytorch_model*.bin"))
    if not bins:
        raise UserError(f"{path}: no *.safetensors or pytorch_model*.bin weights")
    state = {}
    for f in bins:
        state.update(torch.load(f, map_location="cpu", weights_only=True))
    return state


class BeaverScoreModel(torch.nn.Module):
    def __init__(self, path: str | Path, dtype: torch.dtype = torch.float32):
        from transformers import LlamaConfig, LlamaModel

        super().__init__()
        path = Path(path)
        raw = read_config(path)
        self.config = LlamaConfig(**{k: v for k, v in raw.items() if k not in ("architectures",)})
        self.model = LlamaModel(self.config)
        dim = int(raw.get("score_dim", 1))
        self.score_head = torch.nn.Linear(self.config.hidden_size, dim, bias=bool(raw.get("score_bias", True)))
        self.do_normalize = bool(raw.get("do_normalize", False))
        self.norm_mean = float(raw.get("mean", 0.0) or 0.0)
        self.norm_std = float(raw.get("var", 1.0) or 1.0) ** 0.5
        state = load_state_dict(path)
        head = {k.removeprefix("score_head."): v for k, v in state.items() if k.startswith("score_head.")}
        needed = {"weight"} | ({"bias"} if self.score_head.bias is not None else set())
        if not needed <= head.keys():
            raise UserError(f"{path}: score head weights missing ({sorted(needed - head.keys())}); "
                            "not a Beaver score checkpoint")
        self.score_head.load_state_dict(head)
        backbone = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        missing, unexpected = self.model.load_state_dict(backbone, strict=False)
        missing = [m for m in missing if "rotary" not in m]
        if missing:
            raise UserError(f"{path}: backbone weights missing: {missing[:5]}")
        self.to(dtype).eval().requires_grad_(False)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        scores = self.score_head(hidden).float()  # [batch, seq, score_dim]
        last = end_index(attention_mask)
        end = scores[torch.arange(len(last), device=scores.device), last, 0]
        if self.do_normalize:
            end = (end - self.norm_mean) / self.norm_std
        return end


def end_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of the mask (works for left and right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values
