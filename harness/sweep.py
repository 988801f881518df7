"""Sweeps: a method entry's grid (or list) of override values, each point run as its own labelled entry.

``sweep: {lambda.lambda_init: [0.5, 1, 2], sigma: [5e-4, 1e-3]}`` is the grid of every combination;
``sweep: [{sigma: 5e-4}, {sigma: 1e-3, alpha: 1e-3}]`` names the points. A point's label is the entry's name and
its values (``es.lambda_init0.5_sigma0.0005``), a folder name and a report row; its overrides are the entry's
``set`` followed by the point's. Shared by the benchmark (which runs the points) and the frontier report (which
reads them back from a record's spec).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

from harness.errors import UserError

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_POINTS = 1000  # per entry: a grid past this is a typo, not a sweep


@dataclass(frozen=True)
class SweepPoint:
    label: str
    family: str  # the entry it belongs to: its frontier
    values: dict[str, Any]  # override key -> value

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={json.dumps(v)}" for k, v in self.values.items()]

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values.items())


def _word(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else json.dumps(value) if isinstance(value, bool) else str(value)
    return text.replace("+", "")


def points(family: str, sweep: dict[str, list[Any]] | list[dict[str, Any]]) -> list[SweepPoint]:
    """Every point of one entry's sweep, in the order written."""
    if isinstance(sweep, dict):
        if not sweep or any(not isinstance(v, list) or not v for v in sweep.values()):
            raise UserError(f"methods.{family}.sweep: each key takes a non-empty list of values")
        keys = list(sweep)
        combos = [dict(zip(keys, vals)) for vals in itertools.product(*(sweep[k] for k in keys))]
    else:
        if not sweep or any(not isinstance(p, dict) or not p for p in sweep):
            raise UserError(f"methods.{family}.sweep: a list of sweep points is a list of non-empty mappings")
        combos = [dict(p) for p in sweep]
    if len(combos) > MAX_POINTS:
        raise UserError(f"methods.{family}.sweep: {len(combos)} points (at most {MAX_POINTS})")
    out, seen = [], set()
    for values in combos:
        label = family + "." + "_".join(f"{k.rsplit('.', 1)[-1]}{_word(v)}" for k, v in values.items())
        if not LABEL.match(label) or ".." in label:
            raise UserError(f"methods.{family}.sweep: the point {values} makes the label {label[:80]!r}, which is "
                            "not a folder name (values are numbers, booleans or words)")
        if label in seen:
            raise UserError(f"methods.{family}.sweep: the point {values} is written twice")
        seen.add(label)
        out.append(SweepPoint(label, family, values))
    return out


def spec_points(spec: dict[str, Any]) -> dict[str, SweepPoint]:
    """A raw spec's sweep points by label (as a run record keeps the spec)."""
    found: dict[str, SweepPoint] = {}
    for name, entry in (spec.get("methods") or {}).items():
        if isinstance(entry, dict) and entry.get("sweep") is not None:
            found.update({p.label: p for p in points(name, entry["sweep"])})
    return found
