"""End-to-end ES runs on the built-in policy and scorer: determinism, improvement, the Ray + vLLM path."""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from harness.config import load_config
from harness.records import load_record
from harness.report.stats import paired_over_prompts
from harness.run import run_method
from methods.es.config import ESConfig
from methods.es.vllm_engine import vllm_available

CPU_DEFAULT = Path(__file__).parents[1] / "configs" / "es" / "cpu-default.yaml"


def es_config(**overrides) -> ESConfig:
    sets = [f"{k}={v}" for k, v in {"run.budget.completions": 1300, "run.budget.eval_every_fraction": 0.5,
                                    **overrides}.items()]
    return load_config(ESConfig, CPU_DEFAULT, sets)


def trajectory(run_dir: Path) -> list:
    rec = load_record(run_dir)
    return [(p.step, p.completions, p.tokens, p.reward, p.cost, p.lam, p.j_c, p.extra) for p in rec.series]


@pytest.fixture(scope="module")
def two_runs(policy_path, tmp_path_factory):
    """The same run twice, the second stopped at half the budget (training does not depend on the budget: the
    same seeds draw the same members and prompts), with its evaluations at the first run's first two marks."""
    dirs = []
    for i, sets in enumerate([{}, {"run.budget.completions": 650, "run.budget.eval_every_fraction": 1.0}]):
        d = tmp_path_factory.mktemp(f"es{i}")
        run_method("es", es_config(**sets), d)
        ray = sys.modules.get("ray")
        assert not (ray and ray.is_initialized()), "a local-pool run started Ray (its processes count as the run's memory)"
        dirs.append(d)
    return dirs


@pytest.mark.slow
def test_es_record_is_complete_and_deterministic(two_runs):
    a, b = two_runs
    rec = load_record(a)
    assert rec.status == "completed" and rec.method == "es"
    assert rec.budget["completions"] == 1300 and rec.series[-1].completions >= 1300
    assert [e.mark for e in rec.evals] == [0, 650, 1300]
    split = rec.series[-1].times
    assert {"generation", "scoring", "perturb_restore", "update_sync"} <= split.keys()
    assert rec.memory["peak_rss_mb"] > 0 and rec.throughput["tokens_per_s"] > 0
    assert rec.data["hash"] and rec.environment["packages"]["torch"]
    assert (a / "model_saves" / "latest_hf" / "model.safetensors").is_file()
    assert list((a / "tb").iterdir())
    first = json.loads((a / rec.evals[-1].samples_file).read_text().splitlines()[0])
    assert {"prompt", "response", "reward", "cost", "judge_reward"} <= first.keys()
    # same seed, same settings: the same trajectory and the same evaluations, as far as the shorter run went
    short = load_record(b)
    assert len(short.series) >= 6 and trajectory(a)[: len(short.series)] == trajectory(b)
    assert [(e.mark, e.metrics) for e in short.evals] == [(e.mark, e.metrics) for e in rec.evals[:2]]
    # training time starts at the first iteration: engine start-up and evaluations are not in it
    assert rec.evals[0].seconds == 0
    walls = sum(p.times["iteration_wall"] for p in rec.series)
    assert walls <= rec.timing["train_seconds"] <= 1.2 * walls + 0.2 * len(rec.series)


@pytest.mark.slow
def test_es_improves_the_objective_on_average(two_runs):
    """Paired over held-out prompts at a fixed λ: the 90 % lower bound of (end − start) objective must be
    above −0.05 (tolerance for the discrete flips of a tiny model) and the mean must be positive."""
    rec = load_record(two_runs[0])
    lam = rec.config["run"]["lambda"]["lambda_init"]

    def per_prompt(e):
        rows = [json.loads(x) for x in (two_runs[0] / e.samples_file).read_text().splitlines()]
        return {r["id"]: r["reward"] - lam * r["cost"] for r in rows}

    start, end = per_prompt(rec.evals[0]), per_prompt(rec.evals[-1])
    ids = sorted(start)
    iv = paired_over_prompts([end[i] for i in ids], [start[i] for i in ids], level=0.80)
    assert iv.mean > 0, f"objective did not improve: {iv}"
    assert iv.low > -0.05, f"improvement not distinguishable from noise: {iv}"


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vLLM not installed")
@pytest.mark.parametrize("perturbation", ["full", "lowrank"])
def test_es_on_two_vllm_engines_under_ray(policy_path, tmp_path, perturbation):
    """Low-rank: each engine batches its share of the population and the unperturbed policy (here 3 + 2)."""
    cfg = es_config(**{"run.budget.completions": 200, "pool": "ray", "engines": 2, "engine.kind": "vllm",
                       "engine.threads": 1, "population": 4, "prompts_per_iteration": 8, "perturbation": perturbation})
    ray_dirs = set(Path(tempfile.gettempdir()).glob("esgrpo-ray-*"))
    run_method("es", cfg, tmp_path)
    rec = load_record(tmp_path)
    assert rec.status == "completed" and len(rec.series) >= 2
    assert "2 vllm engine(s)" in rec.notes[0]
    # the private Ray instance's session folder is gone; the engines' logs went with the run
    assert set(Path(tempfile.gettempdir()).glob("esgrpo-ray-*")) == ray_dirs
    assert list(tmp_path.glob("engines-*/ray-logs/worker-*.out"))
    assert np.isfinite([p.reward for p in rec.series]).all()


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vLLM not installed")
def test_lowrank_es_serves_the_population_as_lora_adapters(policy_path, tmp_path):
    lowrank = Path(__file__).parents[1] / "configs" / "es" / "cpu-lowrank.yaml"
    # at most 48 sequences at once: the population's call (9 jobs × 12 prompts) runs in waves, and the record says so
    sets = ["run.budget.completions=270", "run.budget.eval_every_fraction=1.0", "engine.max_num_seqs=48",
            "probe_pairs=1", "probe_seconds=3600"]  # pairs past probe_pairs while under probe_seconds, at most 5×
    cfg = load_config(ESConfig, lowrank, sets)
    run_method("es", cfg, tmp_path)
    rec = load_record(tmp_path)
    assert "9 members (108 sequences) per generate call; the engine runs 48 at once" in "\n".join(rec.notes)
    assert len([n for n in rec.notes if "more than the engine runs at once" in n]) == 1
    assert rec.memory["kv_cache_tokens"] > 0
    assert rec.status == "completed" and rec.series[-1].completions >= 270
    # the whole batch against a plain generate of as many unperturbed sequences (measured before training)
    speed = rec.throughput
    assert 0 < speed["member_vs_raw"] and speed["raw_generate_tokens_per_s"] > 0 and 0 <= speed["member_prepare_share"] < 1
    # interleaved pairs, the median of their ratios and its spread
    assert speed["member_vs_raw_pairs"] == 5 * cfg.probe_pairs == 5
    assert speed["member_vs_raw_min"] <= speed["member_vs_raw_q1"] <= speed["member_vs_raw"] \
        <= speed["member_vs_raw_q3"] <= speed["member_vs_raw_max"]
    assert "probe_perturb_pass_s" not in rec.throughput  # no in-place pass to time: members are adapters
    base = load_record(tmp_path).config["policy_path"]
    from safetensors.torch import load_file

    before, after = load_file(f"{base}/model.safetensors"), load_file(str(tmp_path / "model_saves/latest_hf/model.safetensors"))
    moved = {n for n in after if not (after[n] == before[n]).all()}
    assert moved and all(n.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj") for n in moved)  # only the covered matrices moved
    # the same run in calls that fit (auto: 48 // 12 = 4 jobs; each call's members scored while the next
    # generates) is the same run
    split = load_config(ESConfig, lowrank, [*sets, "members_per_call=auto"])
    run_method("es", split, tmp_path / "split")
    rec_split = load_record(tmp_path / "split")
    assert "4 members (48 sequences) per generate call" in "\n".join(rec_split.notes)
    assert not [n for n in rec_split.notes if "more than the engine runs at once" in n]
    assert rec_split.memory["weights_checksum"] == rec.memory["weights_checksum"]
    assert [(p.reward, p.cost, p.lam) for p in rec_split.series] == [(p.reward, p.cost, p.lam) for p in rec.series]
    assert len(rec.series) >= 3  # several updates compared, not only the start


@pytest.mark.parametrize("members_per_call, at_once, want", [
    (None, 48, 9), (3, 48, 3), (3, None, 3), (20, None, 9), ("auto", 48, 4), ("auto", 5, 1), ("auto", 0, 1), ("auto", None, 9)])
def test_members_per_call_for(members_per_call, at_once, want):
    """Population 8 and the base on one engine, 12 prompts: its share in one call, m members, or as many as fit."""
    cfg = ESConfig(perturbation="lowrank", engine={"kind": "vllm"}, population=8, prompts_per_iteration=12,
                   members_per_call=members_per_call)
    assert cfg.members_per_call_for(at_once) == want
    assert ESConfig(population=8).members_per_call_for(48) == 1  # full-rank: member by member
