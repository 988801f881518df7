"""Methods register under the ``esgrpo.methods`` entry-point group; the harness looks them up by name."""

from __future__ import annotations

import importlib.metadata as md

from harness.errors import UserError
from harness.method import Method, MethodConfig

GROUP = "esgrpo.methods"


def available() -> list[str]:
    return sorted(ep.name for ep in md.entry_points(group=GROUP))


def check_conformance(name: str, cls: type) -> None:
    """A registered method has everything the harness calls, or a clear error names what is missing."""
    problems = [f"no '{attr}'" for attr in ("name", "config_model", "launcher", "run", "latest_checkpoint",
                                            "cluster_overrides") if not hasattr(cls, attr)]
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
