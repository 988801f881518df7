"""`esgrpo eval`: a fixed policy into an evaluation-only record; killed half way, it resumes without generating
or scoring a finished prompt again (counted by a real scorer service's own counters)."""

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import ScorerProcess
from harness.data import load_prompt_set
from harness.records import load_record

ROOT = Path(__file__).parents[1]


def eval_cli(out: Path, rendezvous: Path, prompts: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.launch.cli", "eval", "--out", str(out), "--label", "base",
                             "--from-spec", str(ROOT / "benchmarks" / "cpu-default.yaml"), "--prompts", str(prompts),
                             "--set", f"scorer={{kind: http, rendezvous: {rendezvous}}}", "--set", "batch_size=5"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def served_pairs(srv: ScorerProcess) -> int:
    return httpx.get(srv.url + "/info").json()["served"]["pairs"]


@pytest.mark.slow
def test_eval_is_killed_half_way_and_resumes_without_rescoring(policy_path, tmp_path):
    out = tmp_path / "eval"
    # the built-in set's 35 held-out prompts, as a file a user could edit between the kill and the resume
    prompts = tmp_path / "prompts.jsonl"
    rows = [dataclasses.asdict(r) for r in load_prompt_set().eval]
    write_prompts = lambda rows: prompts.write_text("".join(  # noqa: E731
        json.dumps({k: r[k] for k in ("id", "prompt", "category", "expected_safe")}) + "\n" for r in rows))
    write_prompts(rows)
    srv = ScorerProcess(tmp_path).start()
    samples = out / "evals" / "eval-00000000.jsonl"
    p = eval_cli(out, srv.rendezvous, prompts)
    deadline = time.time() + 300
    while time.time() < deadline and (not samples.is_file() or samples.read_text().count("\n") < 10):
        assert p.poll() is None, p.stderr.read()
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    written = samples.read_text().count("\n")
    assert 10 <= written < 35 and load_record(out).status == "running"
    # the prompts edited under the same ids: the samples evaluated so far are not this evaluation's
    write_prompts([{**rows[0], "prompt": rows[0]["prompt"] + " Explain."}, *rows[1:]])
    p = eval_cli(out, srv.rendezvous, prompts)
    assert p.wait(120) == 2 and "the prompt set (hash" in p.stderr.read()
    write_prompts(rows)
    with samples.open("ab") as f:  # what a kill inside a write leaves: a line cut inside a UTF-8 character
        f.write('{"id": "x", "response": "é'.encode()[:-1])
    srv.stop()
    srv.start()  # a fresh scorer process: its counters count only what the resumed evaluation scores
    p = eval_cli(out, srv.rendezvous, prompts)
    assert p.wait(300) == 0, p.stderr.read()
    rec = load_record(out)
    assert rec.status == "completed" and rec.kind == "eval" and rec.label == "base"
    assert served_pairs(srv) == 35 - written  # finished prompts were neither generated nor scored again
    rows = [json.loads(x) for x in samples.read_text().splitlines()]
    assert len(rows) == len({r["id"] for r in rows}) == 35 and rec.evals[0].metrics["n"] == 35
    assert "resumed with" in rec.notes[0] and "cut off mid-write dropped" in rec.notes[0] and (out / "scatter.png").stat().st_size > 10_000
    p = eval_cli(out, srv.rendezvous, prompts)
    assert p.wait(60) == 2 and "already completed" in p.stderr.read()
    srv.stop()
