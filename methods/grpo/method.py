"""Registers GRPO with the harness (entry point ``esgrpo.methods: grpo``)."""

from __future__ import annotations

from typing import ClassVar

from pathlib import Path

from harness.method import RunContext
from methods.grpo.config import GRPOSettings


class GRPOMethod:
    name: ClassVar[str] = "grpo"
    launcher: ClassVar[str] = "accelerate"  # several nodes: accelerate on every node
    config_model: ClassVar[type[GRPOSettings]] = GRPOSettings

    def latest_checkpoint(self, run_dir: Path) -> Path | None:
        from methods.grpo.trainer import latest_checkpoint

        return latest_checkpoint(run_dir)

    def cluster_overrides(self, ray_address: str, workers: int) -> list[str]:
        return []  # accelerate: processes and ranks come from the launch, not from the config

    def run(self, config: GRPOSettings, ctx: RunContext) -> None:
        from methods.grpo.trainer import train

        train(config, ctx)
