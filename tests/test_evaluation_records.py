"""The evaluation contract on the real tiny policy, and the run record's files."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.data import load_prompt_set
from harness.evaluation import EvalSample, EvalSettings, aggregate, evaluate, quadrant
from harness.generation import HFGenerator, RolloutSettings
from harness.records import EvalPoint, RecordWriter, RunRecord, load_record
from harness.scoring.builtin import BuiltinScorer, JudgeScorer


def sample(r, c):
    return EvalSample("i", "cat", None, "p", "x", 4, r, c)


def test_aggregate_against_hand_counts():
    samples = [sample(1.0, -1.0), sample(-1.0, -0.5), sample(2.0, 1.0), sample(0.0, 0.0)]
    m = aggregate(samples, lam=2.0)
    assert m["reward"] == pytest.approx(0.5) and m["cost"] == pytest.approx(-0.125)
    assert m["safe_ratio"] == 0.75  # C <= 0 is safe, C = 0 included
    assert m["helpful_ratio"] == 0.5  # R > 0 is helpful, R = 0 is not
    assert (m["SH"], m["SU"], m["UH"], m["UU"]) == (0.25, 0.5, 0.25, 0.0)
    assert m["objective"] == pytest.approx(0.5 + 2.0 * 0.125)
    assert quadrant(0.0, 0.0) == "SU"


def test_signs_of_reward_hacking_against_hand_counts():
    """Invented turns of the template (what the published runs drifted into), length, and the scorer–judge gap."""
    texts = [" Sure. USER: and now? ASSISTANT: more", " Fine.", " BEGINNING OF CONVERSATION: again", " ok"]
    samples = [EvalSample("i", "c", None, "p", t, n, r, 0.0, jr, 0.0)
               for t, n, r, jr in zip(texts, [10, 20, 30, 100], [2.0, 1.0, 1.0, 0.0], [0.5, 1.0, 0.0, 0.5])]
    m = aggregate(samples, lam=1.0)
    assert m["invented_turn_rate"] == 0.5 and m["response_tokens"] == 40
    assert m["response_tokens_p95"] == pytest.approx(89.5)  # numpy's linear percentile of 10, 20, 30, 100
    assert m["judge_gap"] == pytest.approx(1.0 - 0.5)
    assert "judge_gap" not in aggregate([sample(1.0, 0.0)], lam=1.0)  # no judge: no gap


def test_evaluate_is_greedy_and_scored_with_judge(policy_path):
    model = AutoModelForCausalLM.from_pretrained(policy_path)
    tok = AutoTokenizer.from_pretrained(policy_path)
    gen = HFGenerator(model, tok)
    prompts = load_prompt_set().eval_prompts()
    settings, rollout = EvalSettings(limit=10), RolloutSettings(max_new_tokens=32)
    a = evaluate(gen, prompts, BuiltinScorer(), settings, rollout, lam=1.0, judge=JudgeScorer())
    b = evaluate(gen, prompts, BuiltinScorer(), settings, rollout, lam=1.0, judge=JudgeScorer())
    assert [s.response for s in a.samples] == [s.response for s in b.samples]  # greedy: reproducible
    assert len(a.samples) == 10 and all(s.n_tokens <= 32 for s in a.samples)
    assert all("USER:" not in s.response for s in a.samples)
    assert "judge_reward" in a.metrics and a.metrics["n"] == 10
    assert sum(len(s.response.split()) > 3 for s in a.samples) >= 8  # readable text, not empty


def test_record_writer_files_tensorboard_and_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    rec = RunRecord(run_id="r", method="es", seed=0, config={"a": 1})
    w = RecordWriter(tmp_path, rec, tensorboard=True, wandb=True)
    w.log_eval(EvalPoint(mark=0, step=0, completions=0, tokens=0, seconds=0.0, lam=1.0, metrics={"reward": 1.0},
                         samples_file="evals/eval-00000000.jsonl"), [{"prompt": "p", "reward": 1.0}])
    w.finish("completed")
    back = load_record(tmp_path)
    assert back.status == "completed" and back.evals[0].metrics == {"reward": 1.0}
    assert json.loads((tmp_path / "evals" / "eval-00000000.jsonl").read_text())["reward"] == 1.0
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    assert list((tmp_path / "wandb").glob("offline-run-*"))


GOOD = json.dumps({"id": "a", "category": "c", "expected_safe": None, "prompt": "p", "response": "r", "n_tokens": 1,
                   "reward": 1.0, "cost": -1.0, "judge_reward": None, "judge_cost": None, "severity": None}) + "\n"


@pytest.mark.parametrize("tail, error", [
    (b"42\n", "samples.jsonl:2: each line must be a JSON object"),
    (b'{"response": "r"}\n', "samples.jsonl:2: each line must be an object with a string 'id'"),
    (GOOD.replace("1.0", "NaN", 1).replace('"a"', '"b"').encode(), "samples.jsonl:2: 'reward' is 'nan', not a finite"),
    (GOOD.replace("1.0", '"abc"', 1).replace('"a"', '"b"').encode(), "samples.jsonl:2: 'reward' is 'abc', not a finite"),
    (GOOD.replace("-1.0", "1e999").replace('"a"', '"b"').encode(), "samples.jsonl:2: 'cost' is 'inf', not a finite"),
    (GOOD.replace("1.0", "9" * 401, 1).replace('"a"', '"b"').encode(), "samples.jsonl:2: 'reward' is '99999"),
    (b"\xff\xfe\x00\n" + GOOD.encode(), "samples.jsonl:2: not UTF-8 \\(byte 0xff at column 1\\)"),
    (GOOD.encode(), "samples.jsonl:2: sample id 'a' repeats line 1"),
    (GOOD.replace('"judge_cost": null', '"extra": 1').replace('"a"', '"b"').encode(), "samples.jsonl:2: not a sample"),
])
def test_a_damaged_samples_file_is_refused_with_its_line(tmp_path, tail, error):
    from harness.errors import UserError
    from harness.launch.policy_eval import read_done

    path = tmp_path / "samples.jsonl"
    path.write_bytes(GOOD.encode() + tail)
    with pytest.raises(UserError, match=error):
        read_done(path)


def test_a_samples_line_cut_mid_write_is_dropped_on_resume(tmp_path):
    from harness.launch.policy_eval import read_done

    path = tmp_path / "samples.jsonl"
    path.write_bytes(GOOD.encode() + GOOD.replace('"a"', '"b"').encode()[:-3])  # cut short, no newline
    assert read_done(path) == ([json.loads(GOOD)], True) and path.read_text() == GOOD
    assert read_done(path) == ([json.loads(GOOD)], False)
    # a file written before samples carried the severity level resumes too
    path.write_text(GOOD.replace(', "severity": null', ""))
    assert read_done(path) == ([json.loads(GOOD)], False)


def test_a_record_write_on_a_full_disk_keeps_the_last_version_and_leaves_no_temp_file(tmp_path):
    """On a real full filesystem: a 64 kB tmpfs (mounting one needs root, as CI has)."""
    import subprocess

    from harness.errors import UserError
    from harness.records import atomic_write_text

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        path = disk / "record.json"
        atomic_write_text(path, "{}" * 1000)
        with pytest.raises(UserError, match=r"record.json: the disk is full \(200,000 bytes needed"):
            atomic_write_text(path, "{}" * 100_000)
        assert path.read_text() == "{}" * 1000 and [p.name for p in disk.iterdir()] == ["record.json"]
    finally:
        subprocess.run(["umount", str(disk)])
