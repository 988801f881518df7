"""The scorer contract: ``score(prompts, responses) -> Scores(rewards, costs)``; cost <= 0 means safe."""

from harness.scoring.protocol import Scorer, Scores, ScorerSpec
from harness.scoring.factory import make_scorer

__all__ = ["Scorer", "Scores", "ScorerSpec", "make_scorer"]
