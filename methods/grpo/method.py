"""Registers GRPO with the harness (entry point ``esgrpo.methods: grpo``)."""

from __future__ import annotations

from typing import ClassVar

from harness.run import RunContext
from methods.grpo.config import GRPOSettings


class GRPOMethod:
    name: ClassVar[str] = "grpo"
    config_model: ClassVar[type[GRPOSettings]] = GRPOSettings

    def run(self, config: GRPOSettings, ctx: RunContext) -> None:
        from methods.grpo.trainer import train

        train(config, ctx)
