"""``esgrpo``: the command line. User errors print one clear message and exit 2, without a traceback."""

from __future__ import annotations

import functools
import sys
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from harness.checkpoint import PREEMPTED_EXIT, Preempted
from harness.errors import OutOfMemory, ScorerError, UserError
from harness.launch import console
from harness.launch.processes import end_with_parent

app = typer.Typer(add_completion=False, no_args_is_help=True, help="ES vs GRPO on the Safe-RLHF objective.")
err = Console(stderr=True)


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"esgrpo {version('esgrpo')}")
        except PackageNotFoundError:
            typer.echo("esgrpo (not installed: run from a checkout)")
        raise typer.Exit()


@app.callback()
def main_options(verbose: bool = typer.Option(False, "--verbose", "-v", metavar="",
                                              help="show third-party INFO lines and progress bars (vLLM, TRL, "
                                                   "transformers) on the console; they always go to each run's run.log"),
                 version: bool = typer.Option(False, "--version", metavar="", callback=_version, is_eager=True,
                                              help="print the version and exit")) -> None:
    """ES vs GRPO on the Safe-RLHF objective."""
    console.configure(verbose)


def user_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        end_with_parent()
        console.configure()
        try:
            return fn(*args, **kwargs)
        except (UserError, ScorerError) as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OutOfMemory as e:  # a result, recorded as such: a benchmark reports it and goes on
            err.print(f"[bold yellow]out of memory:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(OutOfMemory.EXIT_CODE) from None
        except Preempted:  # SIGTERM/SIGINT: checkpointed; PREEMPTED_EXIT tells a SLURM task to requeue itself
            err.print("stopped and checkpointed; run the same command again to resume")
            raise typer.Exit(PREEMPTED_EXIT) from None
    return wrapper


SPEC_HELP = "the benchmark spec: shared run settings, the methods and their configs, seeds, evaluations"
RUNS_HELP = "where the runs go (default runs/<date>-<spec name>); completed runs there are kept, unfinished ones resumed"


def print_report_summary(out: Path) -> None:
    """The report's headline on the console: the comparison table, or a frontier's statements."""
    import json

    from harness.report.render import console_text

    if (out / "frontier.json").is_file() and not (out / "summary.json").is_file():
        frontier = json.loads((out / "frontier.json").read_text())
        lines = [f"{c['a']} against {c['b']}: {c['statement']}" for c in frontier["comparisons"]]
        typer.echo("\n".join([*lines, f"frontier: {out / 'frontier.md'} (plot: {out / 'frontier.png'})"]))
        return
    typer.echo(console_text(json.loads((out / "summary.json").read_text()), out))


class Runtime(str, Enum):
    native = "native"
    docker = "docker"


def default_run_dir(method: str, seed: int | None = None) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / (f"{stamp}-{method}" + ("" if seed is None else f"-s{seed}"))


@app.command()
@user_errors
def run(method: str = typer.Argument(..., help="method name: es, grpo"),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="method YAML config"),
        set_: List[str] = typer.Option([], "--set", "-s", help="override KEY=VALUE (dotted keys), repeatable"),
        run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="where the record and checkpoints go; "
                                               "an unfinished run there is resumed from its last checkpoint"),
        runtime: Runtime = typer.Option(Runtime.native, help="native: this process; docker: the scorer and the "
                                        "method in their images (make containers)"),
        image: Optional[str] = typer.Option(None, help="docker: the method's image (default esgrpo-METHOD:latest)"),
        scorer_image: Optional[str] = typer.Option(None, help="docker: the scorer's image (default esgrpo-scorer:latest)"),
        label: Optional[str] = typer.Option(None, help="the run's name in reports (default: the method's); runs "
                                            "compared under one label are seeds of one config"),
        spec_file: Optional[Path] = typer.Option(None, "--spec-file", help="the benchmark spec this run belongs to "
                                                 "(kept in its record; esgrpo benchmark passes it)")):
    """Train one method to its budget and write its run record (resuming an unfinished one)."""
    from harness.config import read_yaml
    from harness.run import run_method

    out = run_dir or default_run_dir(method)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --run-dir exists and is not a folder")
    if runtime is Runtime.docker:
        from harness.launch.docker_runtime import run_in_docker

        code = run_in_docker(method, config, out, set_, image=image, scorer_image=scorer_image)
        if code == 0:
            typer.echo(f"run record: {out / 'record.json'}")
        raise typer.Exit(code)
    if label is not None:
        from harness.launch.benchmark import check_name

        try:
            check_name(label, "--label")
        except ValueError as e:
            raise UserError(str(e)) from None
    spec = read_yaml(spec_file) if spec_file else None
    try:
        run_method(method, config, out, set_, spec=spec, label=label)
    except Preempted:
        err.print(f"stopped and checkpointed; resume with the same command (--run-dir {out})")
        raise typer.Exit(PREEMPTED_EXIT) from None
    if not console.is_brief():
        typer.echo(f"run record: {out / 'record.json'}")


@app.command()
@user_errors
def compare(runs: List[Path] = typer.Argument(..., help="run directories or record.json files; evaluation "
                                              "records (esgrpo eval) become reference rows"),
            out: Path = typer.Option(Path("results") / "compare", "--out", "-o", help="report folder"),
            baseline: Optional[str] = typer.Option(None, help="the label every other label is paired against "
                                                   "(default: the spec's compare.baseline; with two labels, the second)"),
            allow_mismatch: bool = typer.Option(False, "--allow-mismatch", metavar="",
                                                help="report runs that differ in prompts, scorer, evaluation or "
                                                     "budget, or runs of one label whose configs differ; the "
                                                     "report lists every difference"),
            interpolate: bool = typer.Option(False, "--interpolate", metavar="",
                                             help="also evaluate 5 points on the line between each method's final "
                                                  "policy and the baseline's (needs their saved weights)")):
    """Write the comparison report (Markdown, HTML, plots, summary.json) from run records."""
    from harness.launch.interpolate import evaluate_between
    from harness.report import write_report

    path = write_report(runs, out, allow_mismatch=allow_mismatch, baseline=baseline,
                        between=evaluate_between if interpolate else None)
    print_report_summary(path.parent)


@app.command()
@user_errors
def frontier(runs: List[Path] = typer.Argument(..., help="run directories of a swept spec (or of any runs whose "
                                               "knobs, λ₀ among them, differ)"),
             out: Path = typer.Option(Path("results") / "frontier", "--out", "-o", help="report folder"),
             baseline: Optional[str] = typer.Option(None, help="the method whose frontier the others are compared "
                                                    "with (default: the spec's compare.baseline)")):
    """Write the safety–helpfulness frontier (frontier.md, frontier.png, frontier.json) from run records; the
    sweep points and the target come from the spec the runs recorded."""
    from harness.records import load_record
    from harness.report.frontier import write_frontier

    spec = load_record(runs[0]).spec or {}
    path = write_frontier(runs, out, spec, baseline=baseline)
    print_report_summary(path.parent)


@app.command()
@user_errors
def benchmark(spec: Path = typer.Option(Path("benchmarks") / "cpu-default.yaml", "--spec", help=SPEC_HELP),
              out: Optional[Path] = typer.Option(None, "--out", help="report folder (default results/<date>-<spec>)"),
              runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help=RUNS_HELP),
              only: List[str] = typer.Option([], "--only", help="run only this method (repeatable)"),
              seed_index: Optional[int] = typer.Option(None, "--seed-index", help="run only the spec's i-th seed"),
              report_only: bool = typer.Option(False, "--report-only", metavar="", help="only compare the completed runs"),
              rerun_changed: bool = typer.Option(False, "--rerun-changed", metavar="", help="replace the runs in "
                                                 "--runs-dir made with other settings than the spec's (moved to "
                                                 "replaced/)"),
              set_run: List[str] = typer.Option([], "--set-run", help="override KEY=VALUE in the spec's `run` "
                                                "settings (every method's)"),
              set_shared: List[str] = typer.Option([], "--set-shared", hidden=True, help="deprecated: --set-run"),
              set_: List[str] = typer.Option([], "--set", help="override KEY=VALUE in the selected methods' configs "
                                             "(METHOD.KEY or ENTRY.KEY for one method: es.sigma=0.01)")):
    """Run every method and seed a benchmark spec names, at equal budgets, then compare them."""
    from harness.launch.benchmark import run_benchmark

    if set_shared:
        err.print("[yellow]warning:[/] --set-shared is deprecated and goes in the next release: use --set-run")

    path = run_benchmark(spec, out=out, runs_dir=runs_dir, only=only or None, seed_index=seed_index,
                         report_only=report_only, run_overrides=[*set_run, *set_shared], method_overrides=set_,
                         rerun_changed=rerun_changed)
    if path:
        print_report_summary(path.parent)
    elif seed_index is None:  # a single (method, seed) part is one of many: its caller reports
        typer.echo("runs done; the report comes with --report-only")


@app.command("eval")
@user_errors
def eval_policy(policy: str = typer.Option("builtin", help="'builtin', a local HF model folder, or a run's "
                                           "model_saves/latest_hf"),
                out: Path = typer.Option(..., "--out", help="where the evaluation record, samples and scatter go; "
                                         "an unfinished one there is resumed"),
                from_spec: Optional[Path] = typer.Option(None, "--from-spec", help="take prompts, scorer, judge, "
                                                         "evaluation settings and λ₀ from a benchmark spec"),
                prompts: Optional[str] = typer.Option(None, help="evaluate every prompt of: a JSONL/parquet file "
                                                      "(PKU-SafeRLHF rows understood), hub:ID[:SPLIT], or 'builtin' "
                                                      "(its evaluation split)"),
                scorer: Optional[Path] = typer.Option(None, help="scorer service YAML, run in this process "
                                                      "(default: the spec's, else the built-in scorer)"),
                judge: Optional[str] = typer.Option(None, help="'judge' (built-in), 'none', or a scorer YAML; with "
                                                    "--suite, the suite's judge: 'builtin', 'string-match' or "
                                                    "TEMPLATE=MODEL_FOLDER (harmbench, llama-guard, wildguard, "
                                                    "strongreject, xstest)"),
                suite: Optional[str] = typer.Option(None, help="also evaluate a suite: over_refusal or "
                                                    "harmful_behaviour; --prompts is then its prompt file (XSTest, "
                                                    "HarmBench, StrongREJECT, JailbreakBench format)"),
                engine: str = typer.Option("hf", help="hf (transformers) or vllm"),
                label: str = typer.Option("reference", help="the row's name in reports"),
                set_: List[str] = typer.Option([], "--set", "-s", help="override KEY=VALUE of the evaluation "
                                               "settings (e.g. eval.limit=200, device=cuda, dtype=bfloat16)")):
    """Evaluate a fixed policy into an evaluation-only record: a reference row for `esgrpo compare`."""
    from harness.launch.benchmark import EVAL_KEYS, load_spec
    from harness.launch.benchmark import from_spec as spec_relative
    from harness.config import apply_overrides, validate
    from harness.launch.policy_eval import EvalConfig, prompt_source, run_eval

    data: dict = {"policy": policy, "engine": engine, "label": label}
    if from_spec:
        spec, _ = load_spec(from_spec)
        shared = spec.run.model_dump(mode="json", by_alias=True)
        data.update({k: shared[k] for k in EVAL_KEYS})
        for key in ("scorer", "judge"):  # an embedded scorer's config, relative to the spec like its other files
            if (data[key] or {}).get("kind") == "embedded" and data[key].get("config"):
                data[key] = {**data[key], "config": str(spec_relative(from_spec, data[key]["config"]))}
    if suite:
        spec_judge = {"kind": "builtin"}
        if judge and judge not in ("builtin", "string-match"):
            template, eq, model = judge.partition("=")
            if not eq:
                raise UserError(f"--judge {judge!r}: with --suite, a judge is 'builtin', 'string-match' or "
                                "TEMPLATE=MODEL_FOLDER")
            spec_judge = {"kind": "generative", "template": template, "model": model}
        elif judge:
            spec_judge = {"kind": judge}
        ev = data.setdefault("eval", {})  # beside the spec's other suites, in place of one of the same name
        ev["suites"] = [*(x for x in ev.get("suites") or [] if x.get("name") != suite),
                        {"name": suite, "prompts": prompts or "builtin", "judge": spec_judge}]
        prompts = judge = None
    if prompts:
        source = prompt_source(prompts)
        if source == "builtin":
            data["data"], data["prompts"] = {"kind": "builtin"}, None
        else:
            data["prompts"] = source.model_dump(mode="json")
    if scorer:
        data["scorer"] = {"kind": "embedded", "config": str(scorer)}
    if judge:
        data["judge"] = None if judge == "none" else {"kind": "judge"} if judge == "judge" else \
            {"kind": "embedded", "config": judge}
    cfg = validate(EvalConfig, apply_overrides(data, set_), "esgrpo eval options")
    path = run_eval(cfg, out)
    if console.is_brief():
        return
    from harness.report.compare import evaluation_table

    typer.echo(evaluation_table(path))
    typer.echo(f"evaluation record: {path / 'record.json'} (scatter: {path / 'scatter.png'})")


@app.command("serve-scorer")
@user_errors
def serve_scorer(config: Optional[Path] = typer.Option(None, "--config", "-c", help="scorer YAML: reward and cost "
                                                      "backends, limits, token (default: the built-in scorer)"),
                 host: Optional[str] = typer.Option(None, help="address to bind (default the config's, 127.0.0.1); "
                                                    "anything but loopback needs a token"),
                 port: Optional[int] = typer.Option(None, help="port (0: any free port, announced via --rendezvous)"),
                 rendezvous: Optional[Path] = typer.Option(None, help="write {url, pid, host} here once the models "
                                                           "are loaded; trainers find the scorer through it")):
    """Serve the reward and cost models over HTTP."""
    from scorer.server import serve

    serve(config, host=host, port=port, rendezvous=rendezvous)


@app.command("build-policy")
@user_errors
def build_policy():
    """Build (or find cached) the built-in tiny policy and print its path."""
    from harness.fixtures.policy import builtin_policy_path

    typer.echo(builtin_policy_path())


bench_app = typer.Typer(no_args_is_help=True, help="Hardware benchmarks.")
app.add_typer(bench_app, name="bench")


@bench_app.command("gpu")
@user_errors
def bench_gpu(spec: Path = typer.Option(Path("benchmarks") / "gpu-1x.yaml", "--spec", help=SPEC_HELP),
              out: Optional[Path] = typer.Option(None, "--out", help="default results/gpu-<device>-<date>"),
              runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help=RUNS_HELP),
              policy: Optional[str] = typer.Option(None, help="a local HF model (default: a random model of --shape)"),
              shape: str = typer.Option("qwen2-0.5b", help="random policy shape: qwen2-0.5b, llama-7b (Alpaca-7B's), tiny"),
              scorer_shape: str = typer.Option("llama-200m", help="random Beaver scorer shape: llama-200m, llama-7b (Beaver-7B's), tiny"),
              only: List[str] = typer.Option([], "--only", help="run only this spec entry, or 'scorer' (repeatable)"),
              report_only: bool = typer.Option(False, "--report-only", metavar="", help="only the figures and the report")):
    """ES (vLLM and transformers engines) and GRPO on one GPU: memory, throughput, ES overhead, scorer."""
    from harness.launch.gpu_bench import run_gpu_bench

    path = run_gpu_bench(spec, out=out, runs_dir=runs_dir, policy=policy, shape=shape, scorer_shape=scorer_shape,
                         only=only or None, report_only=report_only)
    typer.echo(f"{'runs' if only else 'figures'}: {path}")


slurm_app = typer.Typer(no_args_is_help=True, help="Run a benchmark spec on a SLURM cluster.")
app.add_typer(slurm_app, name="slurm")


@slurm_app.command("submit")
@user_errors
def slurm_submit(spec: Path = typer.Option(Path("benchmarks") / "cpu-default.yaml", "--spec", help=SPEC_HELP),
                 cluster: Optional[Path] = typer.Option(None, "--cluster", help="cluster YAML (account, GPUs, runtime)"),
                 runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="where runs and scripts go"),
                 out: Optional[Path] = typer.Option(None, "--out", help="report folder"),
                 set_run: List[str] = typer.Option([], "--set-run", help="override KEY=VALUE in the spec's `run` "
                                                   "settings in every method job (as `esgrpo benchmark --set-run`)"),
                 set_: List[str] = typer.Option([], "--set", help="override KEY=VALUE in the methods' configs "
                                                "(METHOD.KEY=VALUE for one method)"),
                 dry_run: bool = typer.Option(False, "--dry-run", metavar="",
                                              help="print every script, the scorer each job uses and what would "
                                                   "stop a submission; write and submit nothing")):
    """Submit the scorer, one array job per method (a task per seed) and the report job."""
    from harness.launch.slurm import dry_run as render_only, submit

    if dry_run:
        typer.echo(render_only(spec, cluster, runs_dir, out, set_run, set_))
        return
    jobs = submit(spec, cluster, runs_dir, out, set_run, set_)
    for k in ("scorer", *[k for k in jobs if k not in ("scorer", "report", "report_path", "slurm_dir")], "report"):
        typer.echo(f"{k:>8}: job {jobs[k]}")
    typer.echo(f"scripts: {jobs['slurm_dir']}\nreport will appear at: {jobs['report_path']}")
    typer.echo(f"status: esgrpo slurm status --dir {jobs['slurm_dir']}")


@slurm_app.command("status")
@user_errors
def slurm_status(dir: Path = typer.Option(..., "--dir", help="the slurm folder `submit` printed")):
    """Show the submitted jobs and where the report goes."""
    from harness.launch.slurm import status

    typer.echo(status(dir))


@app.command()
@user_errors
def reference(check: bool = typer.Option(False, "--check", metavar="", help="only say whether the committed files are current"),
              folder: Path = typer.Option(Path("docs") / "reference", "--dir",
                                          help="the folder of the generated references (config.md, records.md)")):
    """Write the configuration and run-record references, generated from the models."""
    from harness.launch.reference import stale_references, write_reference

    if check:
        stale = stale_references(folder)
        if stale:
            raise UserError(f"{', '.join(map(str, stale))} out of date: run `esgrpo reference` and commit")
        typer.echo(f"{folder}: current")
        return
    for path in write_reference(folder):
        typer.echo(f"reference: {path}")


@app.command()
def methods():
    """List the installed methods."""
    from harness.registry import available

    typer.echo("\n".join(available()))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":
    sys.exit(app())
