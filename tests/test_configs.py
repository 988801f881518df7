"""Every shipped config and spec validates against its model (a typo in a key is an error, not a default)."""

from pathlib import Path

import pytest

from harness.benchmark import load_spec, method_config
from harness.config import load_config
from harness.registry import get_method
from harness.slurm import ClusterSettings
from scorer.service_config import load_service_config

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "es").glob("*.yaml")) +
                         sorted((ROOT / "configs" / "grpo").glob("*.yaml")), ids=lambda p: p.name)
def test_method_configs(path):
    method = get_method(path.parent.name)
    cfg = load_config(method.config_model, path)
    assert cfg.run.budget.completions > 0


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "scorer").glob("*.yaml")), ids=lambda p: p.name)
def test_scorer_configs(path):
    assert load_service_config(path).reward.kind


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks").glob("*.yaml")), ids=lambda p: p.name)
def test_benchmark_specs(path):
    spec, _ = load_spec(path)
    for name in spec.methods:  # each entry's config, with its overrides and the shared settings, validates
        assert method_config(spec, path, name, spec.seeds[0]).run == spec.shared.model_copy(update={"seed": spec.seeds[0]})
    if path.name == "cpu-default.yaml":  # the comparison `make benchmark` runs
        assert len(spec.seeds) >= 2 and set(spec.methods) == {"es", "grpo"}


@pytest.mark.parametrize("path", sorted((ROOT / "containers" / "slurm").glob("*.yaml")), ids=lambda p: p.name)
def test_cluster_files(path):
    assert load_config(ClusterSettings, path).time
