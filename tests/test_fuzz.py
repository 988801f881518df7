"""Property-based and schema-driven tests that keep finding what a review finds by hand.

The scorer's HTTP API is fuzzed from its own OpenAPI schema (schemathesis: valid and invalid bodies,
headers, methods) against a real server on loopback; the config and prompt loaders get arbitrary bytes and
values (hypothesis). Every input must end in a 2xx of the right shape, a short 4xx, or a ``UserError`` —
never a 500, a traceback, a hang or a shorter result. Bounded in examples so the whole file runs in about
a minute.
"""

import json
import time

import pytest
import schemathesis
from schemathesis import GenerationMode
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.config import apply_overrides, load_config
from harness.errors import UserError

from conftest import ScorerProcess

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def scorer_api(tmp_path_factory):
    srv = ScorerProcess(tmp_path_factory.mktemp("fuzz-scorer"), config={"max_items": 64, "max_chars": 2000}).start()
    yield schemathesis.openapi.from_url(srv.url + "/openapi.json")
    srv.stop()


@pytest.mark.parametrize("label, mode", [(op, mode) for op in ("POST /score_batch", "POST /score_texts", "POST /judge")
                                         for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
                         + [("GET /info", GenerationMode.POSITIVE), ("GET /health", GenerationMode.POSITIVE)])
def test_scorer_api_never_fails_or_amplifies(scorer_api, label, mode):
    operation = scorer_api.find_operation_by_label(label)

    @given(case=operation.as_strategy(generation_mode=mode))
    @FUZZ
    def check(case):
        t = time.monotonic()
        response = case.call(timeout=10)
        assert time.monotonic() - t < 10, "the service hung on a request"
        assert response.status_code < 500, response.text[:500]
        body = response.json()
        if response.status_code == 200 and case.path.startswith("/score"):
            sent = case.body.get("prompts") or case.body.get("texts")
            assert len(body["rewards"]) == len(body["costs"]) == len(sent)
        elif response.status_code >= 400:
            assert len(response.content) < 4096 and "detail" in body  # short ...
            sent = json.dumps(case.body) if case.body is not None and not isinstance(case.body, bytes) else ""
            long_inputs = {v for v in json.loads(sent or "null") or [] if isinstance(v, str) and len(v) > 24} \
                if isinstance(json.loads(sent or "null"), list) else set()
            for key in ("prompts", "responses", "texts"):
                items = case.body.get(key) if isinstance(case.body, dict) else None
                long_inputs |= {v for v in items or [] if isinstance(v, str) and len(v) > 24} if isinstance(items, list) else set()
            assert not any(v in response.text for v in long_inputs)  # ... and never the input echoed back

    check()


CONFIG_MODELS = ["harness.launch.benchmark:BenchmarkSpec", "methods.es.config:ESConfig", "methods.grpo.config:GRPOSettings",
                 "scorer.service_config:ScorerServiceConfig", "harness.launch.slurm:ClusterSettings"]


def model(path: str):
    import importlib

    mod, name = path.split(":")
    return getattr(importlib.import_module(mod), name)


@pytest.mark.parametrize("which", CONFIG_MODELS)
@given(raw=st.binary(max_size=300))
@FUZZ
def test_any_config_file_bytes_load_or_say_why(tmp_path_factory, which, raw):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_bytes(raw)
    try:
        load_config(model(which), path)
    except UserError as e:
        assert str(path) in str(e)


YAML_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=3), max_leaves=8)
ES_KEYS = ["population", "sigma", "alpha", "antithetic", "engines", "pool", "run.seed", "run.budget.completions",
           "run.lambda.lambda_min", "run.lambda.lambda_max", "run.eval.stop_strings", "run.data.eval_fraction",
           "engine.kind", "noise", "perturbation", "rank"]


@given(key=st.sampled_from(ES_KEYS), value=YAML_VALUES)
@FUZZ
def test_any_override_validates_or_names_the_field(key, value):
    from methods.es.config import ESConfig

    try:
        cfg = load_config(ESConfig, None, [f"{key}={json.dumps(value)}"])
    except UserError as e:
        assert "invalid configuration" in str(e) or "override" in str(e)
        return
    assert cfg.sigma > 0 and cfg.population > 1  # what validated is usable
    assert cfg.run.lagrangian.lambda_min <= cfg.run.lagrangian.lambda_max


@given(raw=st.text(max_size=40))
@FUZZ
def test_overrides_with_any_text(raw):
    try:
        apply_overrides({}, [raw])
    except UserError:
        pass


PROMPT_ROWS = st.lists(st.dictionaries(st.sampled_from(["prompt", "id", "category", "expected_safe",
                                                        "is_response_0_safe", "is_response_1_safe"]),
                                       YAML_VALUES, max_size=6), max_size=6)


@pytest.mark.parametrize("kind", ["jsonl", "pku"])
@given(rows=PROMPT_ROWS, junk=st.binary(max_size=20))
@FUZZ
def test_any_prompt_file_loads_whole_or_names_file_and_line(tmp_path_factory, kind, rows, junk):
    from harness.data import PromptSource, load_prompt_set

    path = tmp_path_factory.mktemp("prompts") / "p.jsonl"
    path.write_bytes(b"\n".join(json.dumps(r).encode() for r in rows) + b"\n" + junk)
    try:
        ps = load_prompt_set(PromptSource(kind=kind, path=str(path)))
    except UserError as e:
        assert str(path) in str(e) or "p.jsonl" in str(e)
        return
    # nothing silently dropped: every distinct prompt is in exactly one split
    distinct = {r["prompt"] for r in rows if isinstance(r.get("prompt"), str) and r["prompt"].strip()}
    got = [r.prompt for r in ps.train + ps.eval]
    assert sorted(got) == sorted(distinct) and ps.train and ps.eval


def test_yaml_that_is_not_utf8_or_is_deep(tmp_path):
    from methods.es.config import ESConfig

    p = tmp_path / "latin1.yaml"
    p.write_bytes("sigma: 0.001 # café".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8 text"):
        load_config(ESConfig, p)
    p.write_text(yaml.safe_dump({"population": 4}) + "sigma: .inf\n")
    with pytest.raises(UserError, match="sigma"):
        load_config(ESConfig, p)


SAMPLE_ROWS = st.lists(st.dictionaries(st.sampled_from(["id", "prompt", "response", "reward", "cost", "category"]),
                                       YAML_VALUES | st.integers(min_value=-10**400, max_value=10**400), max_size=6),
                       max_size=5)


@given(rows=SAMPLE_ROWS, junk=st.binary(max_size=20))
@FUZZ
def test_any_samples_file_is_read_whole_or_names_file_and_line(tmp_path_factory, rows, junk):
    """An evaluation's samples file, as `esgrpo eval` resumes it and compare reads it."""
    from harness.config import read_jsonl_resuming
    from harness.evaluation import checked_samples

    path = tmp_path_factory.mktemp("samples") / "samples.jsonl"
    path.write_bytes(b"\n".join(json.dumps(r).encode() for r in rows) + b"\n" + junk)
    try:
        read, cut = read_jsonl_resuming(path, "samples file")
        samples = checked_samples(path, read)
    except UserError as e:
        assert str(path) in str(e)
        return
    assert len(samples) in (len(rows), len(rows) + 1) or cut  # only a cut last line is ever left out
    for s in samples:
        assert isinstance(s["id"], str) and all(abs(float(s[k])) <= 1e12 for k in ("reward", "cost"))


STATE = st.fixed_dictionaries({"step": YAML_VALUES, "lambda": st.fixed_dictionaries(
    {"log_lambda": YAML_VALUES}, optional={"ema": YAML_VALUES, "updates": YAML_VALUES}), "completions": YAML_VALUES,
    "tokens": YAML_VALUES, "train_seconds": YAML_VALUES, "evals_done": YAML_VALUES})


@given(state=STATE | st.dictionaries(st.text(max_size=8), YAML_VALUES, max_size=4))
@FUZZ
def test_any_checkpoint_state_resumes_or_names_the_file(tmp_path_factory, state):
    """A state written before states were sealed (no digest) or edited by hand: read whole into a resumable
    context, or one line naming the file."""
    from harness.checkpoint import STATE_FILE, read_state
    from harness.lagrangian import LambdaState

    folder = tmp_path_factory.mktemp("ckpt")
    (folder / STATE_FILE).write_text(json.dumps(state))
    try:
        got = read_state(folder)
    except UserError as e:
        assert str(folder / STATE_FILE) in str(e)
        return
    LambdaState(**got["lambda"]).value  # what a resume does with it
    assert got["step"] >= 0 and set(got["evals_done"]) <= {e for e in got["evals_done"] if e >= 0}
