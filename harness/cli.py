"""``esgrpo``: the command line. User errors print one clear message and exit 2, without a traceback."""

from __future__ import annotations

import functools
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from harness.errors import ScorerUnavailable, UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="ES vs GRPO on the Safe-RLHF objective.")
err = Console(stderr=True)


def user_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            return fn(*args, **kwargs)
        except (UserError, ScorerUnavailable) as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
    return wrapper


def default_run_dir(method: str, seed: int | None = None) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{method}" + ("" if seed is None else f"-s{seed}")


@app.command()
@user_errors
def run(method: str = typer.Argument(..., help="method name: es, grpo"),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="method YAML config"),
        set_: List[str] = typer.Option([], "--set", "-s", help="override KEY=VALUE (dotted keys), repeatable"),
        run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="where the record and checkpoints go; "
                                               "an unfinished run there is resumed from its last checkpoint")):
    """Train one method to its budget and write its run record (resuming an unfinished one)."""
    from harness.checkpoint import PREEMPTED_EXIT, Preempted
    from harness.run import run_method

    out = run_dir or default_run_dir(method)
    try:
        run_method(method, config, out, set_)
    except Preempted:
        err.print(f"stopped and checkpointed; resume with the same command (--run-dir {out})")
        raise typer.Exit(PREEMPTED_EXIT) from None
    typer.echo(f"run record: {out / 'record.json'}")


@app.command()
@user_errors
def compare(runs: List[Path] = typer.Argument(..., help="run directories or record.json files"),
            out: Path = typer.Option(Path("results") / "compare", "--out", "-o"),
            allow_mismatch: bool = typer.Option(False, help="report runs that differ in prompts/scorer/eval/budget")):
    """Write the comparison report (Markdown, HTML, plots, summary.json) from run records."""
    from harness.report import write_report

    path = write_report(runs, out, allow_mismatch=allow_mismatch)
    typer.echo(f"report: {path}")


@app.command()
@user_errors
def benchmark(spec: Path = typer.Option(Path("benchmarks") / "cpu-default.yaml", "--spec"),
              out: Optional[Path] = typer.Option(None, "--out", help="report folder (default results/<date>-<spec>)"),
              runs_dir: Optional[Path] = typer.Option(None, "--runs-dir")):
    """Run every method and seed a benchmark spec names, at equal budgets, then compare them."""
    from harness.benchmark import run_benchmark

    path = run_benchmark(spec, out=out, runs_dir=runs_dir)
    typer.echo(f"report: {path}")


@app.command("serve-scorer")
@user_errors
def serve_scorer(config: Optional[Path] = typer.Option(None, "--config", "-c"),
                 host: Optional[str] = typer.Option(None), port: Optional[int] = typer.Option(None),
                 rendezvous: Optional[Path] = typer.Option(None, help="write the URL here once ready")):
    """Serve the reward and cost models over HTTP."""
    from scorer.server import serve

    serve(config, host=host, port=port, rendezvous=rendezvous)


@app.command("build-policy")
@user_errors
def build_policy():
    """Build (or find cached) the built-in tiny policy and print its path."""
    from harness.policy import builtin_policy_path

    typer.echo(builtin_policy_path())


@app.command()
def methods():
    """List the installed methods."""
    from harness.registry import available

    typer.echo("\n".join(available()))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":
    sys.exit(app())
