"""Methods register under the ``esgrpo.methods`` entry-point group; the harness looks them up by name."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from harness.errors import UserError

if TYPE_CHECKING:
    from harness.run import MethodConfig, RunContext

GROUP = "esgrpo.methods"


class Method(Protocol):
    """A training method. ``run`` trains from ``ctx`` (policy, prompts, scorer, budget, λ, record writer)
    until the budget is spent, evaluating through ``ctx.evaluate_due`` and logging through ``ctx.log_point``."""

    name: ClassVar[str]
    config_model: ClassVar[type["MethodConfig"]]

    def run(self, config: "MethodConfig", ctx: "RunContext") -> None: ...

    def latest_checkpoint(self, run_dir: Path) -> Path | None:
        """The newest complete checkpoint in ``run_dir`` (it holds ``esgrpo_state.json``), or None."""
        ...


def available() -> list[str]:
    return sorted(ep.name for ep in md.entry_points(group=GROUP))


def get_method(name: str) -> Method:
    for ep in md.entry_points(group=GROUP):
        if ep.name == name:
            return ep.load()()
    raise UserError(f"unknown method {name!r}; installed: {', '.join(available()) or 'none'}")
