"""Every GRPOConfig default that changed between TRL 0.24 (the published runs') and the pinned TRL is set by the
project from each shipped config, never left to the installed release. The 0.24 values below are transcribed from
TRL 0.24.0's trl/trainer/grpo_config.py (fields absent there are the behaviour 0.24 had without them)."""

from pathlib import Path

import pytest
import yaml

from harness.config import load_config
from methods.grpo.config import GRPOSettings
from methods.grpo.trainer import grpo_arguments

CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "grpo").glob("*.yaml"))

# field: TRL 0.24.0's default (or its behaviour where the field did not exist yet)
TRL_0_24 = {
    "use_bias_correction_kl": False,  # added in 0.26 (default True): 0.24's KL gradient is the uncorrected one
    "vllm_importance_sampling_mode": "token_truncate",  # 0.24: truncated IS per token ...
    "vllm_importance_sampling_clip_max": 2.0,  # ... capped at vllm_importance_sampling_cap 2.0
    "gradient_checkpointing": True,
    "logging_steps": 10,
    "bf16": None,  # None: bf16 unless fp16 (0.24's __post_init__)
    "max_completion_length": 256,
    "top_k": None,  # None there, 0 now: both mean no top-k
    "vllm_mode": "server",
}


def unset_changed_defaults(kwargs: dict) -> list[str]:
    return sorted(set(TRL_0_24) - set(kwargs))


def arguments(path: Path) -> dict:
    cfg = load_config(GRPOSettings, path)
    return grpo_arguments(cfg, cfg.run, Path("/tmp/run"), per_device=1, max_steps=1)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_changed_default_is_set_explicitly(path):
    raw = yaml.safe_load(path.read_text())
    assert unset_changed_defaults(arguments(path)) == []
    for key in ("use_bias_correction_kl", "vllm_importance_sampling_mode", "vllm_importance_sampling_clip_max"):
        assert key in raw, f"{path.name} leaves {key} to the installed TRL"


def test_the_checker_catches_a_dropped_default():
    """Mutation: a config path that stops passing one of the fields is caught."""
    kwargs = arguments(CONFIGS[0])
    for key in TRL_0_24:
        assert unset_changed_defaults({k: v for k, v in kwargs.items() if k != key}) == [key]


def test_the_published_config_has_trl_0_24s_behaviour():
    args = arguments(Path(__file__).parents[1] / "configs" / "grpo" / "alpaca-7b-published.yaml")
    for key in ("use_bias_correction_kl", "vllm_importance_sampling_mode", "vllm_importance_sampling_clip_max",
                "gradient_checkpointing"):
        assert args[key] == TRL_0_24[key], key


def test_the_arguments_are_what_the_pinned_trl_accepts():
    from trl import GRPOConfig

    cfg = load_config(GRPOSettings, Path(__file__).parents[1] / "configs" / "grpo" / "cpu-default.yaml")
    args = GRPOConfig(**grpo_arguments(cfg, cfg.run, Path("/tmp/run"), per_device=cfg.num_generations, max_steps=1))
    assert (args.use_bias_correction_kl, args.vllm_importance_sampling_mode) == (True, "sequence_mask")
