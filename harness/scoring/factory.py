"""Build the scorer a spec names."""

from __future__ import annotations

from harness.scoring.builtin import BuiltinScorer, JudgeScorer
from harness.scoring.protocol import Scorer, ScorerSpec


def make_scorer(spec: ScorerSpec | None = None) -> Scorer:
    spec = spec or ScorerSpec()
    if spec.kind == "builtin":
        return BuiltinScorer()
    if spec.kind == "judge":
        return JudgeScorer()
    if spec.kind == "http":
        from harness.scoring.client import HttpScorer

        return HttpScorer(spec)
    # embedded: the scorer service's backends, in this process (no HTTP hop)
    from scorer.service_config import load_service_config
    from scorer.backends import build_scorer

    return build_scorer(load_service_config(spec.config))
