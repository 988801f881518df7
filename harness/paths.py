"""Where esgrpo keeps built models and caches: ``$ESGRPO_HOME`` (default ``~/.cache/esgrpo``)."""

from __future__ import annotations

import os
from pathlib import Path


def esgrpo_home() -> Path:
    home = Path(os.environ.get("ESGRPO_HOME", Path.home() / ".cache" / "esgrpo"))
    home.mkdir(parents=True, exist_ok=True)
    return home


def use_shared_vllm_cache() -> None:
    """vLLM's caches (model-class inspection, torch.compile artifacts: keyed by config, not by weights) in one
    place for every run. In a run's own folder every engine start inspected its model class again (a subprocess)
    and compiled again: tens of seconds per run on an H100 host. An explicit ``VLLM_CACHE_ROOT`` wins."""
    os.environ.setdefault("VLLM_CACHE_ROOT", str(esgrpo_home() / "vllm-cache"))
