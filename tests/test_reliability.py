"""Kill -9 at random points, SIGTERM, a scorer outage: nothing lost, and the same result as uninterrupted."""

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.checkpoint import PREEMPTED_EXIT
from harness.errors import UserError
from harness.config import load_config
from harness.records import load_record
from harness.run import run_method
from methods.es.config import ESConfig

ROOT = Path(__file__).parents[1]
ES_SETS = ["run.budget.completions=540", "run.budget.eval_every_fraction=0.5", "run.eval.limit=12",
           "run.checkpoint_every=1"]


def es_cli_args(run_dir: Path) -> list[str]:
    args = [sys.executable, "-m", "harness.launch.cli", "run", "es", "--config", str(ROOT / "configs/es/cpu-default.yaml"),
            "--run-dir", str(run_dir)]
    for s in ES_SETS:
        args += ["--set", s]
    return args


def wait_for_steps(run_dir: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if len(load_record(run_dir).series) >= n:
                return
        except UserError:  # not written yet (the record appears atomically, whole)
            pass
        assert proc.poll() is None, f"run ended (code {proc.returncode}) before step {n}"
        time.sleep(0.05)
    raise TimeoutError(f"no step {n} in {timeout}s")


def trajectory(run_dir: Path) -> list:
    rec = load_record(run_dir)
    return [(p.step, p.completions, p.tokens, p.reward, p.cost, p.lam, p.j_c, p.extra) for p in rec.series]


def evaluations(run_dir: Path) -> list:
    return [(e.mark, e.step, e.metrics) for e in load_record(run_dir).evals]


def stop_after(args: list[str], run_dir: Path, steps: int, sig: int) -> int:
    """Start a run, signal it once it has logged `steps` steps; its exit status."""
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_steps(run_dir, steps, p)
    p.send_signal(sig)
    return p.wait(120)


def run_quietly(args: list[str]) -> int:
    return subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600).returncode


@pytest.fixture(scope="module")
def reference(policy_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("reference")
    run_method("es", load_config(ESConfig, ROOT / "configs/es/cpu-default.yaml", ES_SETS), d)
    return d


@pytest.mark.slow
def test_es_kill9_sigterm_and_resume_match_the_uninterrupted_run(reference, tmp_path):
    kill_at, term_at = sorted(random.Random(7).sample(range(1, 5), 2))
    d = tmp_path / "run"
    args = es_cli_args(d)
    stop_after(args, d, kill_at, signal.SIGKILL)  # no chance to clean up
    assert load_record(d).status == "running"
    # the same command resumes from the last complete checkpoint; SIGTERM is what SLURM sends before preemption
    assert stop_after(args, d, term_at, signal.SIGTERM) == PREEMPTED_EXIT
    rec = load_record(d)
    assert rec.status == "interrupted" and "SIGTERM" in rec.error
    steps = sorted(int(c.name.split("-")[1]) for c in (d / "checkpoints").glob("step-*"))
    assert steps[-1] == rec.series[-1].step and len(steps) <= 2  # newest kept, older pruned
    assert not list((d / "checkpoints").glob(".tmp-*"))
    # the newest checkpoint's weights cut short (a full disk, a copy stopped half way) and a stray folder beside
    # it: the resume falls back to the one before, and the result is still the uninterrupted run's
    [weights] = (d / "checkpoints" / f"step-{steps[-1]:08d}" / "model").glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (d / "checkpoints" / "step-abc").mkdir()
    assert run_quietly(args) == 0
    rec = load_record(d)
    assert rec.status == "completed" and len(rec.notes) >= 3  # two resumes noted
    assert any(f"checkpoint step-{steps[-1]:08d} was damaged" in n and f"resumed from step-{steps[-2]:08d}" in n
               for n in rec.notes), rec.notes
    assert trajectory(d) == trajectory(reference)
    assert evaluations(d) == evaluations(reference)
    assert rec.memory["weights_checksum"] == load_record(reference).memory["weights_checksum"]


@pytest.mark.slow
def test_an_adam_run_killed_and_resumed_matches_the_uninterrupted_run(policy_path, tmp_path):
    """ES with Adam: the moments go into every checkpoint and come back on resume, so a kill −9 changes nothing."""
    sets = ["optimizer=adam", "alpha=0.002", "population=4", "prompts_per_iteration=8", "run.budget.completions=120",
            "run.budget.eval_every_fraction=1.0", "run.eval.limit=4", "run.checkpoint_every=1", "probe_engine=false"]
    reference = tmp_path / "reference"
    run_method("es", load_config(ESConfig, ROOT / "configs/es/cpu-default.yaml", sets), reference)
    d = tmp_path / "run"
    args = es_cli_args(d)[: -2 * len(ES_SETS)] + [x for s in sets for x in ("--set", s)]
    stop_after(args, d, 2, signal.SIGKILL)
    assert (d / "checkpoints" / "step-00000001" / "optimizer.safetensors").is_file()
    assert run_quietly(args) == 0
    rec = load_record(d)
    assert rec.status == "completed" and any("resumed from step-" in n for n in rec.notes), rec.notes
    assert trajectory(d) == trajectory(reference)
    assert rec.memory["weights_checksum"] == load_record(reference).memory["weights_checksum"]
    sgd = tmp_path / "sgd"  # and Adam moved the weights elsewhere than the published update would
    run_method("es", load_config(ESConfig, ROOT / "configs/es/cpu-default.yaml", [*sets[1:], "run.checkpoint_every=0"]), sgd)
    assert load_record(sgd).memory["weights_checksum"] != rec.memory["weights_checksum"]


def test_a_checkpoint_state_is_resumed_only_whole_unedited_and_by_its_own_run(reference, tmp_path):
    import json
    import shutil

    from harness.checkpoint import STATE_FILE, check_owner, identity, latest_intact, read_state

    [ckpt, *_] = reversed(sorted((reference / "checkpoints").glob("step-*")))
    rec = load_record(reference)
    mine = identity(rec.run_id, rec.method, rec.config)
    check_owner(ckpt, read_state(ckpt), mine)  # its own run: fine
    other = identity("grpo-s0", "grpo", rec.config)
    with pytest.raises(UserError, match=f"written by run {rec.run_id} \\(es, .*not by this run grpo-s0 \\(grpo"):
        check_owner(ckpt, read_state(ckpt), other)
    copy = tmp_path / "step-00000009"
    shutil.copytree(ckpt, copy)
    state = json.loads((copy / STATE_FILE).read_text())
    edited = json.loads(json.dumps(state))
    edited["lambda"]["log_lambda"] = 123.0
    short = {k: v for k, v in state.items() if k != "completions"}
    for bad, error in ((edited, "edited after it was written"), (short, "lacks completions"),
                       ([state], "a JSON object, not list")):
        (copy / STATE_FILE).write_text(json.dumps(bad))
        with pytest.raises(UserError, match=error):
            read_state(copy)
    for raw in (b"", b"\xff\xfe", b"{not json"):
        (copy / STATE_FILE).write_bytes(raw)
        with pytest.raises(UserError, match="not a readable checkpoint state"):
            read_state(copy)
    (copy / STATE_FILE).write_text(json.dumps(state))
    [weights] = (copy / "model").glob("*.safetensors")
    for damaged in (b"", b"garbage" * 10, weights.read_bytes()[:1000]):
        weights.write_bytes(damaged)
        with pytest.raises(UserError, match="every checkpoint of this run is damaged"):
            latest_intact([copy])


@pytest.mark.slow
def test_es_survives_a_scorer_outage(reference, make_scorer_service, tmp_path):
    srv = make_scorer_service().start()
    cfg = load_config(ESConfig, ROOT / "configs/es/cpu-default.yaml", ES_SETS + [
        f"run.scorer={{kind: http, rendezvous: {srv.rendezvous}, deadline_s: 120}}", "run.checkpoint_every=0"])

    def outage():
        while not (tmp_path / "run" / "record.json").is_file() or not load_record(tmp_path / "run").series:
            time.sleep(0.05)
        srv.stop()
        time.sleep(3)
        srv.start(wait=False)

    t = threading.Thread(target=outage)
    t.start()
    run_method("es", cfg, tmp_path / "run")
    t.join()
    rec = load_record(tmp_path / "run")
    assert rec.status == "completed"
    assert rec.outages and rec.outages[0]["seconds"] >= 2.5  # noted, with its duration
    assert trajectory(tmp_path / "run") == trajectory(reference)  # re-scored, never filled in


def grpo_cli_args(run_dir: Path, sets: list[str]) -> list[str]:
    args = [sys.executable, "-m", "harness.launch.cli", "run", "grpo", "--config", str(ROOT / "configs/grpo/cpu-default.yaml"),
            "--run-dir", str(run_dir)]
    for s in ["num_generations=4", "prompts_per_step=4", "run.lambda.eta=0.5", *sets]:
        args += ["--set", s]
    return args


@pytest.mark.slow
def test_grpo_resumes_to_the_same_step_and_lambda(policy_path, tmp_path):
    d = tmp_path / "grpo"
    args = grpo_cli_args(d, ["run.budget.completions=160", "run.budget.eval_every_fraction=0.5", "run.eval.limit=8",
                             "run.checkpoint_every=2"])
    stop_after(args, d, 5, signal.SIGKILL)
    before = {pt.step: pt for pt in load_record(d).series}
    assert run_quietly(args) == 0
    rec = load_record(d)
    assert rec.status == "completed" and "resumed from checkpoint-4" in " ".join(rec.notes)
    assert [pt.step for pt in rec.series] == list(range(1, 11))  # 160 / 16 steps, none repeated or lost
    assert rec.series[-1].completions == 160
    for pt in rec.series[:4]:  # kept from before the kill, λ included
        assert (pt.lam, pt.cost, pt.completions) == (before[pt.step].lam, before[pt.step].cost, before[pt.step].completions)
    assert [e.mark for e in rec.evals] == [0, 80, 160]


@pytest.mark.slow
def test_grpo_without_periodic_checkpoints_checkpoints_on_sigterm(policy_path, tmp_path):
    """checkpoint_every 0 writes no TRL checkpoint on the way (nor at the end), yet a preempted run still leaves one
    to resume from."""
    d = tmp_path / "grpo"
    args = grpo_cli_args(d, ["run.budget.completions=96", "run.budget.eval_every_fraction=1.0", "run.eval.limit=4",
                             "run.checkpoint_every=0"])
    assert stop_after(args, d, 2, signal.SIGTERM) == PREEMPTED_EXIT
    rec = load_record(d)
    assert rec.status == "interrupted"
    saved = [c.name for c in (d / "trl").glob("checkpoint-*")]
    assert saved == [f"checkpoint-{rec.series[-1].step}"]
    assert run_quietly(args) == 0
    rec = load_record(d)
    assert rec.status == "completed" and f"resumed from {saved[0]}" in " ".join(rec.notes)
    assert [pt.step for pt in rec.series] == list(range(1, 7))
    assert [c.name for c in (d / "trl").glob("checkpoint-*")] == saved  # none added at the end


@pytest.mark.slow
def test_a_benchmark_stopped_by_sigterm_stops_its_run_and_resumes(policy_path, tmp_path):
    """SIGTERM to `esgrpo benchmark` alone (a job script's trap, `timeout`, `kill`) reaches the run it started: the
    run checkpoints and records the stop, no run process is left behind (an orphan would hold its GPU), and the
    benchmark exits 75, on which a SLURM task requeues itself. The same when the benchmark is killed outright
    (SIGKILL: the kernel tells the run). A single part (`--only --seed-index`, what a SLURM array task runs) exits
    75 too. The same command then resumes and finishes."""
    import psutil
    import yaml

    spec = yaml.safe_load((ROOT / "benchmarks" / "cpu-default.yaml").read_text())
    # five iterations of 40 completions: enough steps to stop three times
    spec["run"].update(budget={"completions": 200, "eval_every_fraction": 0.5}, checkpoint_every=1)
    spec["run"].setdefault("eval", {})["limit"] = 4
    spec["methods"] = {"es": {**spec["methods"]["es"], "config": str(ROOT / "configs/es/cpu-default.yaml"),
                              "set": ["population=4", "prompts_per_iteration=8", "probe_engine=false"]}}
    spec["seeds"] = [0]
    spec.pop("compare", None)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    runs, run_dir = tmp_path / "runs", tmp_path / "runs" / "es-s0"

    def bench(*extra) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "harness.launch.cli", "benchmark", "--spec", str(path), "--runs-dir",
                                 str(runs), "--out", str(tmp_path / "report"), *extra],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    parent = bench()
    wait_for_steps(run_dir, 1, parent)
    children = psutil.Process(parent.pid).children(recursive=True)
    assert children  # the run's own process
    parent.send_signal(signal.SIGTERM)  # to the benchmark process only
    assert parent.wait(120) == PREEMPTED_EXIT
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive
    rec = load_record(run_dir)
    assert rec.status == "interrupted" and "SIGTERM" in rec.error
    stopped_at = rec.series[-1].step

    parent = bench()  # resumes; then the benchmark process is killed outright: nothing can pass a signal on
    wait_for_steps(run_dir, stopped_at + 1, parent)
    children = psutil.Process(parent.pid).children(recursive=True)
    parent.kill()
    parent.wait()
    gone, alive = psutil.wait_procs(children, timeout=120)  # the kernel sent the run SIGTERM: it checkpoints
    assert not alive
    rec = load_record(run_dir)
    assert rec.status == "interrupted" and "SIGTERM" in rec.error and rec.series[-1].step > stopped_at
    stopped_at = rec.series[-1].step

    part = bench("--only", "es", "--seed-index", "0")  # one SLURM array task: the run in this very process
    wait_for_steps(run_dir, stopped_at + 1, part)
    part.send_signal(signal.SIGTERM)
    assert part.wait(120) == PREEMPTED_EXIT
    assert load_record(run_dir).status == "interrupted"

    assert bench().wait(600) == 0
    rec = load_record(run_dir)
    assert rec.status == "completed" and rec.series[-1].completions >= 200
    assert (tmp_path / "report" / "report.md").is_file()


def test_a_run_on_a_full_disk_says_so_in_its_record(policy_path, tmp_path):
    """On a real 3 MB tmpfs the run's record and evaluations fit, its 7.9 MB weights do not: the half-written
    weights are removed, so the record can say the run failed and why (mounting needs root, as CI has)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        cfg = load_config(ESConfig, ROOT / "configs/es/cpu-default.yaml",
                          ["population=2", "prompts_per_iteration=4", "probe_engine=false", "run.budget.completions=12",
                           "run.budget.eval_every_fraction=1.0", "run.eval.limit=4", "run.tensorboard=false"])
        with pytest.raises(UserError, match=r"es: the disk under .*disk/es is full \(.*No space left on device.*\); "
                                            r"the record says so"):
            run_method("es", cfg, disk / "es")
        rec = load_record(disk / "es")
        assert rec.status == "failed" and rec.error.startswith("the disk is full: ") and len(rec.evals) == 2
        leftovers = [p.name for p in (disk / "es").rglob("*") if ".tmp" in p.name or p.name.startswith(".")]
        assert not leftovers, leftovers
    finally:
        subprocess.run(["umount", "--lazy", str(disk)])  # the run's log stays open in this process
