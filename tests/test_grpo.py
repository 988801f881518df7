"""Real TRL GRPOTrainer steps on the tiny policy, scored through the real client against a running service."""

from pathlib import Path

import pytest

from harness.config import load_config
from harness.lagrangian import LambdaConfig, LambdaState, update_lambda
from harness.records import load_record
from harness.run import run_method
from methods.grpo.config import GRPOSettings

CPU_DEFAULT = Path(__file__).parents[1] / "configs" / "grpo" / "cpu-default.yaml"


@pytest.mark.slow
def test_grpo_steps_through_the_scorer_service(policy_path, scorer_service, tmp_path):
    cfg = load_config(GRPOSettings, CPU_DEFAULT, [
        "run.budget.completions=100", "run.budget.eval_every_fraction=0.5", "run.eval.limit=8",
        f"run.scorer={{kind: http, rendezvous: {scorer_service.rendezvous}}}",
        "run.lambda.eta=0.5", "num_generations=4", "prompts_per_step=4", "run.checkpoint_every=3"])
    run_method("grpo", cfg, tmp_path)
    rec = load_record(tmp_path)
    assert rec.status == "completed"
    # budget: 16 completions per step, stop once 100 are scored -> 7 steps, 112 completions
    assert [p.samples for p in rec.series] == [16 * i for i in range(1, 8)]
    assert [e.mark for e in rec.evals] == [0, 50, 100]
    # λ: one step per optimizer step from that step's mean cost, with the shared rule
    lam_cfg = LambdaConfig(**{**rec.config["run"]["lambda"]})
    state = LambdaState.initial(lam_cfg)
    for p in rec.series:
        state = update_lambda(state, p.cost, lam_cfg)
        assert p.lam == pytest.approx(state.value) and p.j_c == pytest.approx(p.cost)
    assert rec.series[-1].lam != rec.series[0].lam
    assert {"generation", "scoring", "backward_optimizer"} <= rec.series[0].times.keys()
    assert "loss" in rec.series[0].extra
    assert rec.scorer["url"].startswith("http://127.0.0.1")
    assert (tmp_path / "model_saves" / "latest_hf" / "model.safetensors").is_file()


@pytest.mark.slow
def test_grpo_with_lora_trains_only_the_adapters(policy_path, tmp_path):
    cfg = load_config(GRPOSettings, CPU_DEFAULT, [
        "run.budget.completions=32", "run.budget.eval_every_fraction=1.0", "run.eval.limit=4",
        "num_generations=4", "prompts_per_step=4", "lora={r: 4, alpha: 8}", "learning_rate=1e-3"])
    run_method("grpo", cfg, tmp_path)
    rec = load_record(tmp_path)
    assert rec.status == "completed" and len(rec.series) == 2
    saved = tmp_path / "model_saves" / "latest_hf"
    assert (saved / "adapter_config.json").is_file()  # an adapter, not a full copy of the weights
