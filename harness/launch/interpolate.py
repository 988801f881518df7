"""The straight line between two runs' final policies: θ(t) = (1 − t)·θ_a + t·θ_b at evenly spaced t, each
evaluated under the runs' own evaluation contract (prompts, scorer, judge, decoding). A frontier between two
methods' solutions says whether they sit in one basin (the line stays as good as its ends) or in two."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from harness.config import validate
from harness.data import load_prompt_set
from harness.errors import UserError
from harness.evaluation import evaluate
from harness.method import RunSettings
from harness.records import load_record
from harness.run import make_scorer

log = logging.getLogger(__name__)
POINTS = 5
KEYS = ("objective", "reward", "cost", "safe_ratio", "judge_reward", "judge_safe_ratio")


def saved_policy(run_dir: Path) -> Path:
    saved = Path(run_dir) / "model_saves" / "latest_hf"
    if not (saved / "config.json").is_file():
        raise UserError(f"{run_dir}: no saved full policy (model_saves/latest_hf) to interpolate from")
    return saved


def evaluate_between(a_dir: Path, b_dir: Path, points: int = POINTS) -> list[dict[str, Any]]:
    """[{t, objective, reward, cost, safe_ratio, ...}] from t = 0 (run a) to t = 1 (run b)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.generation import HFGenerator

    rec = load_record(a_dir)
    settings = validate(RunSettings, rec.config["run"], f"{a_dir / 'record.json'}: run settings")
    pa, pb = saved_policy(a_dir), saved_policy(b_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(pa, dtype=dtype).to(device).eval()
    ends = [AutoModelForCausalLM.from_pretrained(p, dtype=dtype).state_dict() for p in (pa, pb)]
    if ends[0].keys() != ends[1].keys() or any(ends[0][k].shape != ends[1][k].shape for k in ends[0]):
        raise UserError(f"{a_dir} and {b_dir} saved policies of different shapes: no line between them")
    prompts = load_prompt_set(settings.data).eval_prompts(settings.eval.limit)
    scorer = make_scorer(settings.scorer)
    judge = make_scorer(settings.judge) if settings.judge else None
    generator = HFGenerator(model, AutoTokenizer.from_pretrained(pa))
    out = []
    for i in range(points):
        t = i / (points - 1)
        with torch.no_grad():  # one tensor at a time: no second copy of the whole model per point
            for k, w in model.state_dict().items():
                w.copy_(torch.lerp(ends[0][k].float(), ends[1][k].float(), t))
        m = evaluate(generator, prompts, scorer, settings.eval, settings.rollout, settings.lagrangian.lambda_init,
                     judge).metrics
        out.append({"t": t, **{k: m[k] for k in KEYS if k in m}})
        log.info("between %s and %s at t=%.2f: R %.3f C %.3f", a_dir.name, b_dir.name, t, m["reward"], m["cost"])
    return out
