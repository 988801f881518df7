"""How a completion becomes the text that is scored."""

from pathlib import Path

from harness.template import cut_at_stop


def test_no_strip_scores_the_text_as_the_engine_returned_it():
    from harness.generation import RolloutSettings
    from harness.launch.benchmark import load_spec

    assert cut_at_stop(" Rinse it.\n\n", []) == " Rinse it."
    assert cut_at_stop(" Rinse it.\n\n", [], strip=False) == " Rinse it.\n\n"
    assert cut_at_stop(" Rinse it. \nUSER: more", ["USER:"], strip=False) == " Rinse it. \n"
    assert RolloutSettings(strip=False).greedy().strip is False
    spec, _ = load_spec(Path(__file__).parents[1] / "benchmarks" / "alpaca-7b-published.yaml")
    assert spec.run.rollout.strip is False  # the published spec scores what vLLM returned
