"""The cluster path on a real single-node SLURM: scorer job, method array jobs finding it through the
rendezvous file, a report job after them — submitted with `make slurm-benchmark`."""

import json
import re
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from harness.errors import UserError
from harness.records import load_record

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def local_slurm():
    if os.geteuid() != 0:
        pytest.skip("starting a local SLURM needs root")
    r = subprocess.run(["bash", str(ROOT / "containers/slurm/local-cluster.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def tiny_spec(tmp_path: Path) -> Path:
    spec = yaml.safe_load((ROOT / "benchmarks" / "cpu-default.yaml").read_text())
    spec["run"]["budget"] = {"completions": 80, "eval_every_fraction": 1.0}
    spec["run"].setdefault("eval", {})["limit"] = 4
    # two of the spec's methods keep the end-to-end test to four jobs on two cores
    spec["methods"] = {m: {**e, "config": str(ROOT / e["config"].removeprefix("../"))} for m, e in spec["methods"].items()
                       if m in ("es", "grpo")}
    spec["methods"]["es"]["set"] = ["population=4", "prompts_per_iteration=8", "probe_engine=false"]
    spec["methods"]["grpo"]["set"] = ["num_generations=4"]
    spec["seeds"] = [0, 1]
    spec.pop("evaluate", None)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_rendered_scripts_are_plain_sbatch(tmp_path):
    from harness.config import load_config
    from harness.launch.slurm import ClusterSettings, render

    cluster = load_config(ClusterSettings, ROOT / "containers/slurm/cluster-example.yaml")
    scripts = render(tiny_spec(tmp_path), cluster, runs_dir=tmp_path / "runs").write()
    es = scripts["es"].read_text()
    assert "#SBATCH --array=0-1" in es and "#SBATCH --gres=gpu:4" in es and "#SBATCH --requeue" in es
    assert "apptainer exec --nv" in es and "--seed-index ${SLURM_ARRAY_TASK_ID}" in es
    assert "scontrol requeue" in es and "--set-run 'scorer.rendezvous=" in es
    for script in scripts.values():  # every template placeholder was filled in
        assert not re.search(r"\$\{(?!SLURM_)[a-z_]+\}", script.read_text()), script
    assert "#SBATCH --account=my-account" in scripts["scorer"].read_text()
    if shutil.which("bash"):
        for s in scripts.values():
            assert subprocess.run(["bash", "-n", str(s)]).returncode == 0  # valid shell


def test_values_are_quoted_and_names_cannot_inject(tmp_path):
    from harness.config import load_config
    from harness.errors import UserError
    from harness.launch.slurm import ClusterSettings, dry_run, render

    cluster = load_config(ClusterSettings, ROOT / "containers/slurm/local.yaml")
    runs = tmp_path / "my runs; touch PWNED"
    scripts = render(tiny_spec(tmp_path), cluster, runs_dir=runs).write()
    es = scripts["es"].read_text()
    assert f"--runs-dir '{runs}'" in es and f'#SBATCH --output="{runs}/slurm/es-%A_%a.log"' in es
    assert subprocess.run(["bash", "-n", str(scripts["es"])]).returncode == 0
    spec = yaml.safe_load(tiny_spec(tmp_path).read_text())
    spec["methods"]["es;id>PWNED;#"] = spec["methods"].pop("es")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec))
    with pytest.raises(UserError, match="method entry 'es;id>PWNED;#' must be letters"):
        render(bad, cluster, runs_dir=tmp_path / "r")
    spec = yaml.safe_load(tiny_spec(tmp_path).read_text())
    spec["scorer_service"] = str(tmp_path / "nope.yaml")
    bad.write_text(yaml.safe_dump(spec))
    with pytest.raises(UserError, match="nope.yaml: config file not found"):
        render(bad, cluster, runs_dir=tmp_path / "r")
    printed = dry_run(tiny_spec(tmp_path), ROOT / "containers/slurm/local.yaml", runs_dir=tmp_path / "r",
                      method_overrides=["es.sigma=0.01"])
    assert printed.count("#!/bin/bash") == 4 and "# submit order: scorer; es, grpo" in printed
    assert "--set es.sigma=0.01" in printed and "configs/scorer/builtin.yaml" in printed
    assert not (tmp_path / "r").exists()  # a dry run writes nothing


@pytest.mark.parametrize("key, value", [
    ("account", "lab\ntouch PWNED"), ("partition", "gpu\rtouch PWNED"), ("time", "04:00:00\ntouch PWNED"),
    ("methods", {"es": {"mem": "64G\ntouch PWNED"}}), ("methods", {"es": {"time": "1:00:00 ; touch PWNED"}}),
    ("extra_directives", ["--qos=high\ntouch PWNED"]), ("extra_directives", ["touch PWNED"]),
    ("image", "/images/esgrpo.sif\ntouch PWNED"), ("scorer_host", "0.0.0.0\ntouch PWNED"),
    ("binds", ["/data\ntouch PWNED"]),
])
def test_a_cluster_file_value_cannot_become_a_shell_line(tmp_path, key, value):
    from harness.errors import UserError
    from harness.launch.slurm import dry_run

    cluster = yaml.safe_load((ROOT / "containers/slurm/local.yaml").read_text())
    cluster[key] = value
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(cluster))
    with pytest.raises(UserError, match=f"(?s){path}.*{key}") as e:
        dry_run(tiny_spec(tmp_path), path, runs_dir=tmp_path / "r")
    assert "must" in str(e.value) and not (tmp_path / "r").exists()


@pytest.mark.parametrize("spec, seeds, grpo_entries", [("alpaca-7b-published.yaml", 1, ["grpo-beta0.01", "grpo-beta0.1"]),
                                                        ("alpaca-7b-fair.yaml", 3, ["grpo"])])
def test_dry_run_renders_the_7b_specs_for_a_gpu_cluster(tmp_path, spec, seeds, grpo_entries):
    from typer.testing import CliRunner

    from harness.launch.cli import app

    r = CliRunner().invoke(app, ["slurm", "submit", "--spec", str(ROOT / "benchmarks" / spec), "--cluster",
                                 str(ROOT / "containers/slurm/cluster-gpu.yaml"), "--runs-dir", str(tmp_path), "--dry-run"])
    assert r.exit_code == 0, r.output
    out = r.output
    parts = {p.split(" =====")[0].rsplit("/", 1)[-1]: p for p in out.split("# ===== ")[1:]}
    assert "# MISSING (submit refuses):" in out and "run.policy: /models/alpaca-7b" in out  # paths come from the user
    assert "report --dependency=afterany:<the jobs above>" in out
    scorer = parts["scorer.sbatch"]
    served = "beaver-7b-published.yaml" if spec == "alpaca-7b-published.yaml" else "beaver-7b.yaml"
    assert f"configs/scorer/{served}" in scorer  # the spec's own scorer: the cluster file says only where it runs
    assert f"# scorer job serves: {ROOT / 'configs/scorer' / served}" in out
    assert f"# es scores with the scorer job's service ({ROOT / 'configs/scorer' / served})" in out
    assert "# MISSING (submit refuses): cluster file: account: my-account" in out
    assert "cluster file: image: /shared/images/esgrpo.sif not found" in out
    assert not any(tmp_path.iterdir())  # a dry run writes nothing into runs/
    assert "#SBATCH --gres=gpu:1" in scorer and "apptainer exec --nv" in scorer and "serve-scorer" in scorer
    assert "--rendezvous" in scorer and "ESGRPO_SCORER_TOKEN=$(cat" in scorer
    es = parts["es.sbatch"]
    assert "#SBATCH --gres=gpu:4" in es and f"#SBATCH --array=0-{seeds - 1}" in es and "--requeue" in es
    # the scorer entry is merged, key by key: the spec's own max_batch and the rest stay as written
    assert "--set-run 'scorer.rendezvous=" in es and "--set-run 'scorer.token_file=" in es and "apptainer exec --nv" in es
    assert "--set-run scorer.url=null" in es and "scorer=" not in es
    for name in grpo_entries:  # one process per GPU under accelerate (DeepSpeed ZeRO-2 from the GRPO config)
        grpo = parts[f"{name}.sbatch"]
        assert "#SBATCH --gres=gpu:4" in grpo and "accelerate launch --num_processes 4 -m harness.launch.cli benchmark" in grpo
        assert f"--only {name}" in grpo
    assert "--report-only" in parts["report.sbatch"] and "scancel" in parts["report.sbatch"]


def test_dry_run_renders_the_7b_frontier_as_one_array_per_point(tmp_path):
    """Each sweep point is its own array job (one task per seed) with its method's resources; the report job
    draws the frontier after all of them."""
    from harness.launch.slurm import dry_run

    printed = dry_run(ROOT / "benchmarks" / "alpaca-7b-frontier.yaml", ROOT / "containers/slurm/cluster-gpu.yaml",
                      runs_dir=tmp_path / "r")
    parts = {p.split(" =====")[0].rsplit("/", 1)[-1]: p for p in printed.split("# ===== ")[1:]}
    points = [k.removesuffix(".sbatch") for k in parts if k.startswith(("es.", "grpo."))]
    assert len(points) == 12 and "es.lambda_init0.5_sigma0.0005" in points and "grpo.lambda_init2_beta0.1" in points
    for name in points:
        job = parts[f"{name}.sbatch"]
        assert "#SBATCH --array=0-2" in job and "#SBATCH --gres=gpu:4" in job and f"--only {name}" in job
    assert "accelerate launch --num_processes 4" in parts["grpo.lambda_init1_beta0.01.sbatch"]
    assert "--report-only" in parts["report.sbatch"] and not (tmp_path / "r").exists()


def test_multi_node_jobs_start_ray_or_accelerate_on_every_node(tmp_path):
    from harness.config import load_config
    from harness.launch.slurm import ClusterSettings, render

    base = load_config(ClusterSettings, ROOT / "containers/slurm/cluster-example.yaml").model_dump()
    cluster = ClusterSettings.model_validate({**base, "methods": {"es": {"nodes": 3, "gpus": 4, "cpus": 32},
                                                                 "grpo": {"nodes": 2, "gpus": 4, "cpus": 16}}})
    rendered = render(tiny_spec(tmp_path), cluster, runs_dir=tmp_path / "runs")
    scripts, slurm_dir = rendered.write(), rendered.slurm_dir
    es, grpo = scripts["es"].read_text(), scripts["grpo"].read_text()
    for text in (es, grpo):
        assert "#SBATCH --nodes=" in text and "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --gres=gpu:4" in text
        assert 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in text
        assert subprocess.run(["bash", "-n", "-c", text]).returncode == 0
    # ES: a private Ray cluster (head on the first node, workers on the others, a per-job token), 12 engines
    assert "RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(cat" in es and (slurm_dir / "ray.token").stat().st_mode & 0o777 == 0o600
    assert 'ray start --head --node-ip-address="$head_ip"' in es and 'for n in "${nodes[@]:1}"' in es
    assert 'ray start --address="$head_ip:$port"' in es and "apptainer exec --nv" in es
    assert '--set "ray_address=$head_ip:$port" --set "pool=ray" --set "engines=12"' in es
    # GRPO: accelerate on each node, machine rank from SLURM, 8 processes
    assert "srun --nodes=2 --ntasks-per-node=1 --gres=gpu:4 bash" in grpo
    node = (slurm_dir / "grpo-node.sh").read_text()
    assert '--machine_rank "$SLURM_NODEID"' in node and "--num_processes 8" in node and "-m harness.launch.cli benchmark" in node
    assert subprocess.run(["bash", "-n", str(slurm_dir / "grpo-node.sh")]).returncode == 0


def test_a_submission_sbatch_refuses_part_way_cancels_what_it_submitted(local_slurm, tmp_path):
    """sbatch refuses the GRPO job (a time limit it cannot read): the scorer and ES jobs already queued are
    cancelled, never left holding the cluster for runs that will not come."""
    from harness.launch.slurm import submit

    cluster = yaml.safe_load((ROOT / "containers/slurm/local.yaml").read_text())
    cluster["methods"]["grpo"] = {"cpus": 2, "time": "whenever"}
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(cluster))
    with pytest.raises(UserError, match=r"(?s)sbatch .*grpo.sbatch failed: .*cancelled the jobs already submitted "
                                        r"\(scorer (\d+), es (\d+)\); the scripts are in") as e:
        submit(tiny_spec(tmp_path), cluster_file, runs_dir=tmp_path / "runs", out=tmp_path / "report")
    queued = re.findall(r"(?:scorer|es) (\d+)", str(e.value))
    time.sleep(1)
    states = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(queued)], capture_output=True, text=True).stdout
    assert not [line for line in states.splitlines() if "CANCELLED" not in line and "COMPLET" not in line], states
    # refused at the first job: nothing was submitted, and nothing of the submission is left on disk
    cluster["time"] = "whenever"
    cluster_file.write_text(yaml.safe_dump(cluster))
    with pytest.raises(UserError, match=r"scorer.sbatch failed: sbatch: error: Invalid --time"):
        submit(tiny_spec(tmp_path), cluster_file, runs_dir=tmp_path / "fresh-runs", out=tmp_path / "report")
    assert not (tmp_path / "fresh-runs").exists()


@pytest.mark.slow
def test_make_slurm_benchmark_end_to_end(local_slurm, policy_path, tmp_path):
    """A two-point ES sweep over λ₀ against GRPO, one seed: three array jobs, then the report job's frontier."""
    spec = tiny_spec(tmp_path)
    raw = yaml.safe_load(spec.read_text())
    raw["methods"]["es"]["sweep"] = {"run.lambda.lambda_init": [0.5, 4.0]}
    raw["seeds"] = [0]
    spec.write_text(yaml.safe_dump(raw))
    # a space in the runs folder: every path in the rendered scripts must stay one word
    runs, out = tmp_path / "my runs", tmp_path / "report"
    r = subprocess.run(["make", "-s", "slurm-benchmark", f"CONFIG={spec}", f"CLUSTER={ROOT}/containers/slurm/local.yaml",
                        f"SLURM_ARGS=--runs-dir '{runs}' --out {out}"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "report will appear at" in r.stdout and "job" in r.stdout
    jobs = json.loads((runs / "slurm" / "jobs.json").read_text())["jobs"]
    deadline = time.time() + 600
    while time.time() < deadline and not (out / "frontier.md").is_file():
        time.sleep(2)
    logs = "\n".join(p.read_text()[-2000:] for p in (runs / "slurm").glob("*.log"))
    assert (out / "frontier.md").is_file(), logs
    time.sleep(3)
    for name in ("es.lambda_init0.5-s0", "es.lambda_init4-s0", "grpo-s0"):
        rec = load_record(runs / name)
        assert rec.status == "completed" and rec.scorer["url"].startswith("http://"), logs
        assert rec.environment["slurm_job_id"]
    assert {"es.lambda_init0.5", "es.lambda_init4"} <= set(jobs)  # one array job per point
    assert "**es against grpo**" in (out / "frontier.md").read_text()
    q = subprocess.run(["squeue", "-h", "-j", jobs["scorer"]], capture_output=True, text=True).stdout
    assert "R " not in q  # the report job stopped the scorer


def test_the_scorer_override_merges_into_the_specs_scorer_entry():
    from harness.config import apply_overrides
    from harness.launch.benchmark import load_spec
    from harness.method import RunSettings
    from harness.scoring.client import http_scorer_overrides

    spec, _ = load_spec(ROOT / "benchmarks" / "alpaca-7b-fair.yaml")
    run = apply_overrides(spec.run.model_dump(mode="json", by_alias=True),
                          http_scorer_overrides(rendezvous="/shared/scorer.json", token_file="/shared/t", deadline_s=900))
    scorer = RunSettings.model_validate(run).scorer
    assert (scorer.kind, scorer.url, scorer.rendezvous, scorer.deadline_s) == ("http", None, "/shared/scorer.json", 900)
    assert scorer.max_batch == spec.run.scorer.max_batch == 32


@pytest.mark.parametrize("runtime", ["apptainer", "docker"])
def test_containers_see_every_path_the_spec_reaches(tmp_path, runtime):
    """Models and data outside the working directory are bound into the jobs' containers at the same paths."""
    import yaml

    from harness.launch.slurm import ClusterSettings, render

    models, data = tmp_path / "models", tmp_path / "datasets"
    (models / "alpaca-7b").mkdir(parents=True)
    data.mkdir()
    (data / "train.jsonl").write_text('{"prompt": "hi?"}\n{"prompt": "ok?"}\n')
    scorer = tmp_path / "scorer.yaml"
    scorer.write_text(yaml.safe_dump({"reward": {"kind": "beaver", "path": str(models / "beaver-reward")},
                                      "cost": {"kind": "beaver", "path": str(tmp_path / "elsewhere" / "cost")}}))
    spec = tmp_path / "specs" / "spec.yaml"
    spec.parent.mkdir()
    spec.write_text(yaml.safe_dump({"name": "b", "run": {"policy": str(models / "alpaca-7b"),
                                                          "data": {"kind": "jsonl", "path": str(data / "train.jsonl")}},
                                    "methods": {"es": {"config": str(ROOT / "configs/es/cpu-default.yaml")}},
                                    "seeds": [0], "scorer_service": str(scorer)}))
    cluster = ClusterSettings(runtime=runtime, image="/img/esgrpo.sif", binds=["/scratch/shared"])
    es = render(spec, cluster, runs_dir=tmp_path / "runs").scripts["es"]
    wanted = [models / "alpaca-7b", data, tmp_path / "runs", tmp_path / "elsewhere" / "cost", Path("/scratch/shared")]
    if runtime == "apptainer":
        bound = re.search(r"--bind '?([^' ]+)'? ", es).group(1).split(",")
    else:
        bound = [m.split(":")[0] for m in re.findall(r"-v '?([^' ]+)'?", es)]
    for path in wanted:
        assert any(Path(path).resolve().is_relative_to(b) for b in bound), (path, bound)


def test_dry_run_renders_the_paper_eval_spec_one_gpu_job_per_policy(tmp_path):
    """The published table's evaluation: one job per policy, no scorer service (each job scores in-process),
    every path bound; a policy that is not there is named and left out, the others are submitted."""
    from harness.launch.slurm import dry_run

    spec = yaml.safe_load((ROOT / "benchmarks" / "alpaca-7b-paper-eval.yaml").read_text())
    have = tmp_path / "models" / "alpaca-7b"
    have.mkdir(parents=True)
    (have / "config.json").write_text("{}")
    spec["evaluate"]["alpaca-7b"]["policy"] = str(have)
    spec["run"]["scorer"]["config"] = str(ROOT / "configs/scorer/beaver-7b-paper-eval.yaml")
    path = tmp_path / "paper-eval.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = dry_run(path, ROOT / "containers/slurm/cluster-gpu.yaml", runs_dir=tmp_path / "runs")
    parts = {p.split(" =====")[0].rsplit("/", 1)[-1]: p for p in out.split("# ===== ")[1:]}
    assert "scorer.sbatch" not in parts and len(parts) == len(spec["evaluate"]) + 1  # + the report
    assert "# submit order: alpaca-7b (one evaluation each); report" in out
    assert "evaluate.beaver-v1.policy: /models/beaver-7b-v1.0 is not a model folder" in out
    assert "reward.path: /models/beaver-7b-unified-reward not found" in out  # the embedded scorer's models
    job = parts["alpaca-7b.sbatch"]
    assert "#SBATCH --gres=gpu:1" in job and "#SBATCH --array=0-0" in job and "--only alpaca-7b &" in job
    binds = job.split("--bind ")[1].split()[0].strip("'").split(",")
    assert any(have.is_relative_to(b) for b in binds) and "/models/beaver-7b-unified-cost" in binds
    assert "/data/PKU-SafeRLHF/data/Alpaca-7B" in binds and "/models/beaver-7b-v3.0" in binds


def test_the_spec_owns_its_scorer_a_beaver_spec_without_one_is_refused(tmp_path):
    """A cluster job never falls back to the keyword stand-in for a spec that scores with Beaver models; the
    cluster file's old scorer_config key is refused with what to do instead."""
    from harness.config import load_config
    from harness.errors import UserError
    from harness.launch.slurm import ClusterSettings, dry_run

    spec = yaml.safe_load((ROOT / "benchmarks" / "alpaca-7b-fair.yaml").read_text())
    del spec["scorer_service"]
    spec["methods"] = {m: {**e, "config": str(ROOT / "benchmarks" / e["config"])} for m, e in spec["methods"].items()}
    path = tmp_path / "fair.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(UserError, match=r"fair.yaml: scorer_service: not set, and its runs score with a http scorer"):
        dry_run(path, ROOT / "containers/slurm/cluster-gpu.yaml", runs_dir=tmp_path / "runs")
    old = tmp_path / "cluster.yaml"
    old.write_text((ROOT / "containers/slurm/local.yaml").read_text() + "scorer_config: configs/scorer/beaver-7b.yaml\n")
    with pytest.raises(UserError, match="scorer_config: the spec names the scorer its jobs serve"):
        load_config(ClusterSettings, old)
