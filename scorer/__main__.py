"""``python -m scorer --config ...``: the same as ``esgrpo serve-scorer``."""

import typer

from harness.launch.cli import serve_scorer

if __name__ == "__main__":
    typer.run(serve_scorer)
