"""`esgrpo eval`: a fixed policy into an evaluation-only record; killed half way, it resumes without generating
or scoring a finished prompt again (counted by a real scorer service's own counters)."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import ScorerProcess
from harness.records import load_record

ROOT = Path(__file__).parents[1]


def eval_cli(out: Path, rendezvous: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.launch.cli", "eval", "--out", str(out), "--label", "base",
                             "--from-spec", str(ROOT / "benchmarks" / "cpu-default.yaml"),
                             "--set", f"scorer={{kind: http, rendezvous: {rendezvous}}}", "--set", "batch_size=5"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def served_pairs(srv: ScorerProcess) -> int:
    return httpx.get(srv.url + "/info").json()["served"]["pairs"]


@pytest.mark.slow
def test_eval_is_killed_half_way_and_resumes_without_rescoring(policy_path, tmp_path):
    out = tmp_path / "eval"
    srv = ScorerProcess(tmp_path).start()
    samples = out / "evals" / "eval-00000000.jsonl"
    p = eval_cli(out, srv.rendezvous)
    deadline = time.time() + 300
    while time.time() < deadline and (not samples.is_file() or samples.read_text().count("\n") < 10):
        assert p.poll() is None, p.stderr.read()
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    written = samples.read_text().count("\n")
    assert 10 <= written < 35 and load_record(out).status == "running"
    srv.stop()
    srv.start()  # a fresh scorer process: its counters count only what the resumed evaluation scores
    p = eval_cli(out, srv.rendezvous)
    assert p.wait(300) == 0, p.stderr.read()
    rec = load_record(out)
    assert rec.status == "completed" and rec.kind == "eval" and rec.label == "base"
    assert served_pairs(srv) == 35 - written  # finished prompts were neither generated nor scored again
    rows = [json.loads(x) for x in samples.read_text().splitlines()]
    assert len(rows) == len({r["id"] for r in rows}) == 35 and rec.evals[0].metrics["n"] == 35
    assert "resumed with" in rec.notes[0] and (out / "scatter.png").stat().st_size > 10_000
    p = eval_cli(out, srv.rendezvous)
    assert p.wait(60) == 2 and "already completed" in p.stderr.read()
    srv.stop()
