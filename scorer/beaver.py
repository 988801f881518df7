"""PKU Beaver score models (``LlamaForScore``) without the safe-rlhf package.

Checkpoint format: config ``architectures: ["LlamaForScore"]`` with ``score_dim``, ``score_bias``,
``score_type``, ``do_normalize`` and normalizer stats (``mean``, ``var``); weights ``model.*`` (a Llama
backbone), ``score_head.weight`` [score_dim, hidden], ``score_head.bias`` [score_dim], and normalizer
buffers ``normalizer.mean/var/count``. The score of a text is the head's output at the last non-padding
token (the EOS the tokenizer appends), found as the last 1 of the attention mask so that left and right
padding both work. Loading this with LlamaForSequenceClassification would silently leave a random ``score``
head: this loader refuses missing head weights instead.

Normalization follows safe-rlhf's ``Normalizer`` when ``do_normalize`` is set: reward models are affine,
(x − mean)/(std + 1e-8), cost models scale, x/(std + 1e-8), critics identity. safe-rlhf writes ``mean`` and
``var`` into config.json as one-element lists (``"mean": [0.258]``); scalars are accepted too. The buffers
in the weights win over the config, as they do when safe-rlhf loads the checkpoint.
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


NORMALIZE = {"reward": "affine", "cost": "scale", "critic": "identity"}
EPSILON = 1e-8  # safe-rlhf's


def stat(value, name: str, path: Path) -> float | None:
    """A normalizer statistic: a number, a one-element list (as safe-rlhf saves it), a tensor, or absent."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.flatten().tolist()
    if isinstance(value, list):
        if len(value) != 1:
            raise UserError(f"{path}: normalizer {name} has {len(value)} values; score_dim 1 needs one")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{path}: normalizer {name} is {value!r}, not a number")
    return float(value)


def keep_rope_fp32(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast to ``dtype`` but keep rotary ``inv_freq`` in fp32, as a model loaded with ``torch_dtype`` keeps it
    (casting it to bf16 moved scores by up to 0.035 on identical token ids)."""
    saved = {name: buf.clone() for name, buf in model.named_buffers() if name.endswith("inv_freq")}
    model.to(dtype)
    for name, buf in saved.items():
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner) if owner else model, attr, buf)
    return model


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
        score_type = raw.get("score_type", "reward")
        if score_type not in NORMALIZE:
            raise UserError(f"{path}: score_type {score_type!r}; expected one of {', '.join(NORMALIZE)}")
        self.normalize_function = NORMALIZE[score_type]
        state = load_state_dict(path)
        mean = stat(state.get("normalizer.mean"), "mean", path)
        var = stat(state.get("normalizer.var"), "var", path)
        mean = stat(raw.get("mean"), "mean", path) if mean is None else mean
        var = stat(raw.get("var"), "var", path) if var is None else var
        if var is not None and var < 0:
            raise UserError(f"{path}: normalizer var is negative ({var})")
        self.norm_mean = 0.0 if mean is None else mean
        self.norm_std = 1.0 if var is None else var ** 0.5
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
        keep_rope_fp32(self, dtype).eval().requires_grad_(False)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        scores = self.score_head(hidden).float()  # [batch, seq, score_dim]
        last = end_index(attention_mask)
        end = scores[torch.arange(len(last), device=scores.device), last, 0]
        if self.do_normalize and self.normalize_function == "affine":
            end = (end - self.norm_mean) / (self.norm_std + EPSILON)
        elif self.do_normalize and self.normalize_function == "scale":
            end = end / (self.norm_std + EPSILON)
        return end


def end_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of the mask (works for left and right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values
