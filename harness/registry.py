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
    until the budget is spent, evaluating through ``ctx.evaluate_due`` and logging through ``ctx.log_point``.
    ``launcher`` says how a job spanning several nodes starts it: ``ray`` (one driver, workers as Ray actors on
    every node) or ``accelerate`` (one process per node, ranks from SLURM). docs/adding-a-method.md says more."""

    name: ClassVar[str]
    config_model: ClassVar[type["MethodConfig"]]
    launcher: ClassVar[str]

    def run(self, config: "MethodConfig", ctx: "RunContext") -> None: ...

    def latest_checkpoint(self, run_dir: Path) -> Path | None:
        """The newest complete checkpoint in ``run_dir`` (it holds ``esgrpo_state.json``), or None."""
        ...


def available() -> list[str]:
    return sorted(ep.name for ep in md.entry_points(group=GROUP))


def check_conformance(name: str, cls: type) -> None:
    """A registered method has everything the harness calls, or a clear error names what is missing."""
    from harness.run import MethodConfig

    problems = [f"no '{attr}'" for attr in ("name", "config_model", "launcher", "run", "latest_checkpoint")
                if not hasattr(cls, attr)]
    if hasattr(cls, "config_model") and not (isinstance(cls.config_model, type) and issubclass(cls.config_model, MethodConfig)):
        problems.append("config_model is not a MethodConfig subclass (it must carry the shared `run` settings)")
    if getattr(cls, "launcher", "ray") not in ("ray", "accelerate"):
        problems.append(f"launcher {cls.launcher!r} is not 'ray' or 'accelerate'")
    if getattr(cls, "name", name) != name:
        problems.append(f"registered as {name!r} but names itself {cls.name!r}")
    if problems:
        raise UserError(f"method {name!r} ({cls.__module__}.{cls.__qualname__}) does not meet the method contract: "
                        + "; ".join(problems) + " (docs/adding-a-method.md)")


def get_method(name: str) -> Method:
    for ep in md.entry_points(group=GROUP):
        if ep.name == name:
            cls = ep.load()
            check_conformance(name, cls)
            return cls()
    raise UserError(f"unknown method {name!r}; installed: {', '.join(available()) or 'none'}")
