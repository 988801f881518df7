"""Evaluation suites beside the reward/cost evaluation: prompt sets in their published formats, the judges that
label a policy's answers to them, and the metrics those labels give (README, "Safety on every axis")."""

from harness.suites.judges import Judge, JudgeSpec, rule_judge
from harness.suites.templates import Verdict
from harness.suites.sets import SuitePrompt, load_suite_prompts
from harness.suites.suite import KINDS, LoadedSuite, SuiteKind, SuiteSpec, load_suites, run_suites, suite_metrics

__all__ = ["Judge", "JudgeSpec", "KINDS", "LoadedSuite", "SuiteKind", "SuitePrompt", "SuiteSpec", "Verdict",
           "load_suite_prompts", "load_suites", "rule_judge", "run_suites", "suite_metrics"]
