"""Registers ES with the harness (entry point ``esgrpo.methods: es``)."""

from __future__ import annotations

from typing import ClassVar

from pathlib import Path

from harness.checkpoint import CheckpointManager
from harness.method import RunContext
from methods.es.config import ESConfig


class ESMethod:
    name: ClassVar[str] = "es"
    launcher: ClassVar[str] = "ray"  # several nodes: one driver, engines as Ray actors on every node
    config_model: ClassVar[type[ESConfig]] = ESConfig

    def latest_checkpoint(self, run_dir: Path) -> Path | None:
        return CheckpointManager(run_dir / "checkpoints").latest()

    def cluster_overrides(self, ray_address: str, workers: int) -> list[str]:
        return [f"ray_address={ray_address}", "pool=ray", f"engines={workers}"]  # one engine per GPU of the job

    def run(self, config: ESConfig, ctx: RunContext) -> None:
        from methods.es.trainer import train

        train(config, ctx)
