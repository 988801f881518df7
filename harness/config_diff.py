"""Which config keys make two runs different experiments. Seeds of one label, and a benchmark's finished run
against the spec that would make it again, may differ only in incidental keys: the seed itself, where output and
checkpoints go, and a scorer's transport (address, credentials, patience, batching), which does not change what
it scores."""

from __future__ import annotations

import json
from typing import Any, Sequence

INCIDENTAL_KEYS = ("run.seed", "seed", "label", "policy_path", "run.checkpoint_every", "run.keep_checkpoints",
                   "run.tensorboard", "run.wandb")
VOLATILE_INFO = ("url", "served", "load_seconds")  # scorer /info fields that differ between identical scorers
TRANSPORT_KEYS = ("url", "rendezvous", "token", "token_file", "deadline_s", "request_timeout_s", "concurrency",
                  "max_batch")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (an empty dict stays a value)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def is_incidental(key: str) -> bool:
    parts = key.split(".")
    return key in INCIDENTAL_KEYS or (parts[-1] in TRANSPORT_KEYS and ("scorer" in parts or "judge" in parts))


def differing_keys(configs: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Dotted key -> each config's value as JSON (``null`` where a config lacks it), for every key that is not
    incidental and whose values differ."""
    flat = [flatten(c) for c in configs]
    keys = sorted({k for f in flat for k in f if not is_incidental(k)})
    out = {}
    for k in keys:
        vals = [json.dumps(f.get(k), sort_keys=True, default=str) for f in flat]
        if len(set(vals)) > 1:
            out[k] = vals
    return out


def scorer_identity(info: dict[str, Any] | None) -> str:
    """A scorer's /info without what differs between two instances of the same scorer: equal means same scores."""
    return json.dumps({k: v for k, v in (info or {}).items() if k not in VOLATILE_INFO}, sort_keys=True)
