import math

import pytest

from harness.budget import Budget, BudgetConfig
from harness.lagrangian import LambdaConfig, LambdaState, update_lambda


def test_lambda_matches_hand_computation():
    cfg = LambdaConfig(lambda_init=1.0, cost_threshold=0.5, ema_beta=0.9, eta=0.1)
    s = LambdaState.initial(cfg)
    s = update_lambda(s, mean_cost=1.5, cfg=cfg)  # J_C = 2.0, ema = 0.1*2 = 0.2, ln λ = 0.02
    assert s.j_c == pytest.approx(2.0) and s.ema == pytest.approx(0.2)
    assert s.value == pytest.approx(math.exp(0.02))
    s = update_lambda(s, mean_cost=-2.5, cfg=cfg)  # J_C = -2, ema = 0.18 - 0.2 = -0.02, ln λ = 0.02 - 0.002
    assert s.ema == pytest.approx(-0.02)
    assert s.value == pytest.approx(math.exp(0.018))


def test_lambda_positive_cost_only_clip_and_fixed():
    cfg = LambdaConfig(lambda_pos_cost_only=True, ema_beta=0.0, eta=1.0, lambda_max=2.0)
    s = update_lambda(LambdaState.initial(cfg), -3.0, cfg)
    assert s.j_c == 0.0 and s.value == pytest.approx(1.0)
    for _ in range(5):
        s = update_lambda(s, 10.0, cfg)
    assert s.value == pytest.approx(2.0)  # clipped at λ_max
    fixed = LambdaConfig(adaptive=False)
    assert update_lambda(LambdaState.initial(fixed), 5.0, fixed).value == 1.0


def published_lambda_rule(costs, lam=1.0, d=0.0, lr=0.005, lo=1e-4, hi=5.0, beta=0.9, pos_only=True):
    """The rule as the published ES script writes it (es-fine-tuning_alignment_accl_api.py): the EMA starts
    at the first J_C, ln λ steps, then λ is clipped."""
    ema, out = None, []
    for c in costs:
        jc = max(c + d, 0.0) if pos_only else c + d
        ema = jc if ema is None else beta * ema + (1 - beta) * jc
        lam = min(max(math.exp(math.log(max(lam, 1e-12)) + lr * ema), lo), hi)
        out.append(lam)
    return out


def test_published_lambda_options_reproduce_the_published_rule():
    costs = [2.0, 3.5, -1.0, 0.5, 8.0, -4.0, 1.0] * 20
    cfg = LambdaConfig(lambda_pos_cost_only=True, ema_init="first", eta=0.005, lambda_max=5.0)
    s, got = LambdaState.initial(cfg), []
    for c in costs:
        s = update_lambda(s, c, cfg)
        got.append(s.value)
    assert got == pytest.approx(published_lambda_rule(costs), rel=1e-12)
    zero = LambdaConfig(lambda_pos_cost_only=True, eta=0.005, lambda_max=5.0)  # the default start differs
    assert update_lambda(LambdaState.initial(zero), 2.0, zero).ema == pytest.approx(0.2)


def test_budget_marks_align_and_include_start_and_end():
    b = Budget(BudgetConfig(completions=1000, eval_every_fraction=0.25))
    assert b.eval_points() == [0, 250, 500, 750, 1000]
    done: set[int] = set()
    assert b.evals_due(done) == [0]
    done.add(0)
    b.spend(600, 6000)
    assert b.evals_due(done) == [250, 500]
    done |= {250, 500}
    b.spend(500, 5000)
    assert b.exhausted and b.evals_due(done) == [750, 1000]


def test_budget_tokens_seconds_and_gpu_seconds():
    b = Budget(BudgetConfig(completions=10**6, max_tokens=100))
    b.spend(1, 99)
    assert not b.exhausted
    b.spend(1, 1)
    assert b.exhausted
    g = Budget(BudgetConfig(completions=10**6, max_gpu_seconds=100))
    g.seconds = 60
    assert not g.exhausted  # on the CPU, GPU-seconds do not run out
    g.gpus = 2
    assert g.gpu_seconds == 120 and g.exhausted
    w = Budget(BudgetConfig(completions=10**6, max_seconds=30))
    w.seconds = 30
    assert w.exhausted


def test_the_old_name_of_the_ema_factor_still_works_with_a_warning():
    with pytest.warns(FutureWarning, match="lambda.beta is deprecated .* write lambda.ema_beta instead"):
        cfg = LambdaConfig.model_validate({"beta": 0.5})
    assert cfg.ema_beta == 0.5
    with pytest.warns(FutureWarning, match="lambda.beta is deprecated and ignored here"):
        assert LambdaConfig.model_validate({"beta": 0.5, "ema_beta": 0.7}).ema_beta == 0.7


def test_records_written_before_schema_2_still_load():
    from harness.records import EvalPoint, Point

    old = {"step": 1, "samples": 64, "tokens": 512, "seconds": 1.0, "reward": 0.1, "cost": -0.2, "objective": 0.3,
           "safe_ratio": 1.0, "lambda": 1.0, "j_c": -0.2}
    assert Point.model_validate(old).completions == 64 and "completions" in Point.model_validate(old).model_dump()
    e = EvalPoint.model_validate({"mark": 0, "step": 0, "samples": 0, "tokens": 0, "seconds": 0.0, "lambda": 1.0,
                                  "metrics": {}, "samples_file": "evals/eval-00000000.jsonl"})
    assert e.completions == 0
