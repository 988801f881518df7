"""The scorer contract: ``score(prompts, responses) -> Scores(rewards, costs)``; cost <= 0 means safe. The run driver
(``harness.run.make_scorer``) builds the one a run names."""

from harness.scoring.protocol import Scorer, Scores, ScorerSpec

__all__ = ["Scorer", "Scores", "ScorerSpec"]
