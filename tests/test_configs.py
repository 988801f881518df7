"""Every shipped config and spec validates against its model (a typo in a key is an error, not a default)."""

from pathlib import Path

import pytest

from harness.errors import UserError

from harness.launch.benchmark import load_spec, method_config
from harness.config import load_config
from harness.registry import available, get_method
from harness.launch.slurm import ClusterSettings
from scorer.service_config import load_service_config

ROOT = Path(__file__).parents[1]


METHOD_CONFIGS = [p for m in available() for p in sorted((ROOT / "configs" / m).glob("*.yaml"))]


def test_every_config_folder_is_a_registered_method():
    folders = {d.name for d in (ROOT / "configs").iterdir() if d.is_dir()} - {"scorer"}
    assert folders <= set(available()), f"configs for unregistered methods: {folders - set(available())}"
    assert all((ROOT / "configs" / m).is_dir() for m in available())  # every method ships a config


@pytest.mark.parametrize("path", METHOD_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
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
    from harness.config import apply_overrides, validate
    from harness.method import RunSettings

    for name, entry in spec.methods.items():  # each entry's config, with its overrides and the shared settings
        budget = {"budget": entry.budget} if entry.budget else {}
        run = spec.run.model_copy(update={"seed": spec.seeds[0], **budget})
        if entry.run_set:  # a sweep point's own run keys (its λ₀), on top of the shared settings
            run = validate(RunSettings, apply_overrides(run.model_dump(mode="json", by_alias=True), entry.run_set), name)
            assert entry.run_set[0].startswith("lambda.lambda_init=")
        assert method_config(spec, path, name, spec.seeds[0]).run == run
    if path.name == "cpu-default.yaml":  # the comparison `make benchmark` runs: three methods, one baseline
        assert len(spec.seeds) >= 2 and set(spec.methods) == {"es", "es-lowrank", "grpo"}
        assert spec.compare.baseline == "grpo"


@pytest.mark.parametrize("path", sorted((ROOT / "containers" / "slurm").glob("*.yaml")), ids=lambda p: p.name)
def test_cluster_files(path):
    assert load_config(ClusterSettings, path).time


def test_a_method_that_misses_part_of_the_contract_is_named_when_looked_up():
    from harness.errors import UserError
    from harness.registry import check_conformance
    from methods.es.method import ESMethod

    check_conformance("es", ESMethod)

    class Half:  # registered by mistake: no launcher, no checkpoint lookup, a config that is not a MethodConfig
        name = "half"
        config_model = dict

        def run(self, config, ctx): ...

    with pytest.raises(UserError, match="no 'launcher'; no 'latest_checkpoint'; no 'cluster_overrides'; config_model is not a MethodConfig"):
        check_conformance("half", Half)


def test_a_spec_written_with_shared_still_loads_with_a_warning(tmp_path):
    from harness.launch.benchmark import load_spec

    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: old\nmethods:\n  es: {{config: {ROOT / 'configs/es/cpu-default.yaml'}}}\n"
                    "shared:\n  seed: 0\n  eval: {limit: 3}\n")
    with pytest.warns(FutureWarning, match="shared is deprecated .* write run instead"):
        loaded, _ = load_spec(spec)
    assert loaded.run.eval.limit == 3


def test_the_config_and_record_references_are_generated_and_current():
    """docs/reference/config.md and records.md are the models' own listings: a key added, renamed or given another
    default without regenerating them (`esgrpo reference`) fails here."""
    from harness.launch.reference import config_reference, records_reference, stale_references

    assert stale_references(ROOT / "docs" / "reference") == []
    assert "`evals`" in records_reference() and "`mark`" in records_reference()
    text = config_reference()
    for key in ("`run.lambda.ema_beta`", "`members_per_call`", "`engine.lora_ops`", "`num_generations`", "`max_batch`"):
        assert key in text, key


def test_rollout_keys_moved_out_of_eval_still_work_with_a_warning():
    from harness.method import RunSettings

    with pytest.warns(FutureWarning, match=r"run.eval.max_new_tokens is deprecated .* write run.rollout.max_new_tokens"):
        s = RunSettings.model_validate({"eval": {"max_new_tokens": 16, "limit": 4}, "fixed_length": True})
    assert (s.rollout.max_new_tokens, s.rollout.fixed_length, s.eval.limit) == (16, True, 4)
    assert s.rollout.training_stops == [] and s.rollout.greedy().max_new_tokens == 16
    with pytest.warns(FutureWarning, match="ignored here: run.rollout.max_new_tokens is given too"):
        assert RunSettings.model_validate({"eval": {"max_new_tokens": 16},
                                           "rollout": {"max_new_tokens": 8}}).rollout.max_new_tokens == 8


def test_a_key_written_twice_is_refused_with_its_line(tmp_path):
    from harness.config import read_yaml

    path = tmp_path / "es.yaml"
    path.write_text("population: 4\nsigma: 0.01\npopulation: 8\nbase: &b {x: 1}\nmerged: {<<: *b, y: 2}\n")
    with pytest.raises(UserError, match=r"es.yaml:3: not valid YAML \(key 'population' is written twice\)"):
        read_yaml(path)
    path.write_text("base: &b {x: 1}\nmerged: {<<: *b, y: 2}\n")  # a merge key is no repeat
    assert read_yaml(path)["merged"] == {"x": 1, "y": 2}


@pytest.mark.parametrize("version", [0, 99])
def test_a_record_of_an_unknown_schema_is_refused(tmp_path, version):
    from harness.records import RunRecord, load_record

    rec = RunRecord(run_id="r", method="es", seed=0, config={})
    (tmp_path / "record.json").write_text(rec.model_dump_json().replace('"schema_version":2', f'"schema_version":{version}'))
    with pytest.raises(UserError, match="schema_version"):
        load_record(tmp_path)


def test_a_hub_id_for_the_policy_offline_is_one_clear_line(monkeypatch, tmp_path):
    """`run.policy` takes a Hub id as TRL does; where the Hub cannot be reached (offline mode here, as on a cluster
    node) the error says so and what to do, never a traceback or a hang."""
    from harness.fixtures.policy import resolve_policy

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match=r"nobody/no-model: not a local model folder, and the Hugging Face Hub cannot "
                                        r"be reached from here .*hf download nobody/no-model --local-dir DIR"):
        resolve_policy("nobody/no-model")
    with pytest.raises(UserError, match="not a model directory"):  # a path that exists is never taken for an id
        (tmp_path / "a" / "b").mkdir(parents=True)
        resolve_policy(str(tmp_path / "a" / "b"))


def test_sizes_past_what_an_iteration_can_score_are_refused_before_anything_runs(policy_path, tmp_path):
    """A population or prompt count no run could score is a field error; more prompts per iteration than the
    training set holds is refused before any engine starts (and leaves no engines' folder behind)."""
    from harness.records import load_record
    from harness.run import run_method
    from methods.es.config import ESConfig

    for override in ("population=1000000000000", "prompts_per_iteration=1000000000"):
        with pytest.raises(UserError, match=override.split("=")[0] + ": Input should be less than or equal to 100000"):
            load_config(ESConfig, ROOT / "configs/es/cpu-default.yaml", [override])
    cfg = load_config(ESConfig, ROOT / "configs/es/cpu-default.yaml", ["prompts_per_iteration=200"])
    with pytest.raises(UserError, match=r"prompts_per_iteration is 200, but the training set \(builtin\) holds 104"):
        run_method("es", cfg, tmp_path / "es")
    assert load_record(tmp_path / "es").status == "failed"
    assert not list((tmp_path / "es").glob("engines-*"))
