"""PKU Beaver score models (``LlamaForScore``) without the safe-rlhf package.

Checkpoint format: config ``architectures: ["LlamaForScore"]`` with ``score_dim``, ``score_bias``,
``score_type``, ``do_normalize`` and normalizer stats (``mean``, ``var``); weights ``model.*`` (a Llama
backbone), ``score_head.weight`` [score_dim, hidden], ``score_head.bias`` [score_dim], and normalizer
buffers ``normalizer.mean/var/count``, in one file or in shards with an index, as safetensors or
``pytorch_model-*.bin`` (the published Beaver repositories ship both kinds). The score of a text is the head's
output at the last non-padding token (the EOS the tokenizer appends), found as the last 1 of the attention
mask so that left and right padding both work. Loading this with LlamaForSequenceClassification would
silently leave a random ``score`` head: this loader refuses missing head weights instead.

Loading goes through transformers' ``from_pretrained``: the model is built on the meta device and each shard
is read straight into the serving dtype and device, so there is no random initialization and no fp32 copy.

Normalization follows safe-rlhf's ``Normalizer`` when ``do_normalize`` is set: reward models are affine,
(x − mean)/(std + 1e-8), cost models scale, x/(std + 1e-8), critics identity. safe-rlhf writes ``mean`` and
``var`` into config.json as one-element lists (``"mean": [0.258]``); scalars are accepted too. The buffers
in the weights win over the config, as they do when safe-rlhf loads the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaModel, LlamaPreTrainedModel

from harness.errors import UserError

ARCHITECTURE = "LlamaForScore"
NORMALIZE = {"reward": "affine", "cost": "scale", "critic": "identity"}
EPSILON = 1e-8  # safe-rlhf's
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


def read_config(path: Path) -> dict:
    f = path / "config.json"
    if not f.is_file():
        raise UserError(f"{path}: not a model directory (no config.json)")
    cfg = json.loads(f.read_text())
    if ARCHITECTURE not in (cfg.get("architectures") or []):
        raise UserError(f"{f}: architectures is {cfg.get('architectures')}, expected ['{ARCHITECTURE}'] "
                        "(use kind 'hf-classifier' for other reward models)")
    return cfg


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


class Normalizer(torch.nn.Module):
    """safe-rlhf's normalizer buffers, so that the checkpoint's ``normalizer.*`` tensors load into place."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1))
        self.register_buffer("var", torch.ones(1))
        self.register_buffer("count", torch.zeros(1, dtype=torch.long))


class LlamaForScore(LlamaPreTrainedModel):
    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.score_head = torch.nn.Linear(config.hidden_size, int(getattr(config, "score_dim", 1)),
                                          bias=bool(getattr(config, "score_bias", True)))
        self.normalizer = Normalizer()
        self.post_init()

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = end_index(attention_mask)
        rows = torch.arange(len(last), device=hidden.device)
        return self.score_head(hidden[rows, last]).float()[:, 0]  # the head at the end token only


class BeaverScoreModel(torch.nn.Module):
    """A loaded Beaver checkpoint that maps token ids to (normalized) end scores."""

    def __init__(self, path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        super().__init__()
        path = Path(path)
        raw = read_config(path)
        score_type = raw.get("score_type", "reward")
        if score_type not in NORMALIZE:
            raise UserError(f"{path}: score_type {score_type!r}; expected one of {', '.join(NORMALIZE)}")
        if not any(next(path.glob(pattern), None) for pattern in WEIGHT_FILES):
            raise UserError(f"{path}: no *.safetensors or pytorch_model*.bin weights")
        try:
            model, loading = LlamaForScore.from_pretrained(path, dtype=dtype, device_map=device,
                                                           output_loading_info=True)
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: cannot load the Beaver checkpoint ({e})") from None
        missing = set(loading["missing_keys"])
        head = [k for k in missing if k.startswith("score_head.")]
        if head:
            raise UserError(f"{path}: score head weights missing ({sorted(head)}); not a Beaver score checkpoint")
        backbone = sorted(k for k in missing if k.startswith("model."))
        if backbone:
            raise UserError(f"{path}: backbone weights missing: {backbone[:5]}")
        self.model = model.eval().requires_grad_(False)
        self.config = model.config
        self.do_normalize = bool(raw.get("do_normalize", False))
        self.normalize_function = NORMALIZE[score_type]
        buffers = dict(model.normalizer.named_buffers())
        mean = None if "normalizer.mean" in missing else stat(buffers["mean"], "mean", path)
        var = None if "normalizer.var" in missing else stat(buffers["var"], "var", path)
        mean = stat(raw.get("mean"), "mean", path) if mean is None else mean
        var = stat(raw.get("var"), "var", path) if var is None else var
        if var is not None and var < 0:
            raise UserError(f"{path}: normalizer var is negative ({var})")
        self.norm_mean = 0.0 if mean is None else mean
        self.norm_std = 1.0 if var is None else var ** 0.5

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        end = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if self.do_normalize and self.normalize_function == "affine":
            end = (end - self.norm_mean) / (self.norm_std + EPSILON)
        elif self.do_normalize and self.normalize_function == "scale":
            end = end / (self.norm_std + EPSILON)
        return end


def end_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of the mask (works for left and right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values
