"""Where esgrpo keeps built models and caches: ``$ESGRPO_HOME`` (default ``~/.cache/esgrpo``)."""

from __future__ import annotations

import os
from pathlib import Path


def esgrpo_home() -> Path:
    home = Path(os.environ.get("ESGRPO_HOME", Path.home() / ".cache" / "esgrpo"))
    home.mkdir(parents=True, exist_ok=True)
    return home
