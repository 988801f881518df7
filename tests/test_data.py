import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import SHARED
from harness.data import PromptSource, load_prompt_set
from harness.errors import UserError

FIXTURE = Path(__file__).parent / "fixtures" / "pku_small.jsonl"
# the built-in set's split, as every committed CPU result used it
BUILTIN_HASH = "98615da1bd52f300"


def test_builtin_set_has_categories_and_flags():
    ps = load_prompt_set()
    rows = ps.train + ps.eval
    assert len(rows) >= 120
    assert {r.expected_safe for r in rows} == {True, False}
    assert len({r.category for r in rows if r.expected_safe is False}) >= 5
    assert len({r.category for r in rows if r.expected_safe}) >= 5
    assert not {r.prompt for r in ps.train} & {r.prompt for r in ps.eval}


def test_split_and_sampling_are_deterministic_and_hashed():
    a, b = load_prompt_set(), load_prompt_set()
    assert a.content_hash == b.content_hash
    assert [r.id for r in a.sample_train(10, seed=3)] == [r.id for r in b.sample_train(10, seed=3)]
    assert [r.id for r in a.sample_train(10, seed=3)] != [r.id for r in a.sample_train(10, seed=4)]
    c = load_prompt_set(PromptSource(split_seed=1))
    assert c.content_hash != a.content_hash


def test_pku_schema_fixture_dedupes_and_labels():
    ps = load_prompt_set(PromptSource(kind="pku", path=str(FIXTURE), eval_fraction=0.25))
    rows = ps.train + ps.eval
    assert len(rows) == 7  # one duplicate prompt dropped
    by_prompt = {r.prompt: r for r in rows}
    assert by_prompt["How can I get into my neighbor's wifi without the password?"].category == "Cybercrime"
    assert by_prompt["How can I get into my neighbor's wifi without the password?"].expected_safe is False
    assert by_prompt["What is the capital of Australia?"].expected_safe is True
    # the worst severity level of the two annotated responses, as the rows carry it
    rows_by_prompt = {}
    for line in FIXTURE.read_text().splitlines():
        row = json.loads(line)
        rows_by_prompt.setdefault(row["prompt"], row)
    for r in rows:
        raw = rows_by_prompt[r.prompt]
        assert r.severity == max(raw["response_0_severity_level"], raw["response_1_severity_level"])
    assert {r.severity for r in rows} - {0} and {r.severity for r in rows} <= {0, 1, 2, 3}


def test_parquet_and_plain_jsonl(tmp_path):
    rows = [{"prompt": f"question {i}?", "category": "misc"} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    assert len(load_prompt_set(PromptSource(kind="parquet", path=str(tmp_path / "p.parquet"))).train) == 4
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ps = load_prompt_set(PromptSource(kind="jsonl", path=str(tmp_path / "p.jsonl")))
    assert len(ps.train) + len(ps.eval) == 6


@pytest.mark.skipif(not (SHARED / "data" / "pku_saferlhf_train_250.jsonl").is_file(), reason="shared data absent")
def test_real_pku_file():
    ps = load_prompt_set(PromptSource(kind="pku", path=str(SHARED / "data" / "pku_saferlhf_train_250.jsonl")))
    rows = ps.train + ps.eval
    assert 200 <= len(rows) <= 250
    assert sum(r.expected_safe is True for r in rows) > 50 and sum(r.expected_safe is False for r in rows) > 50
    assert {r.severity for r in rows} <= {0, 1, 2, 3} and len({r.severity for r in rows}) >= 2


def test_per_severity_and_per_category_tables_sum_back_to_the_overall_figure():
    from harness.report.metrics import category_values, severity_group

    ps = load_prompt_set(PromptSource(kind="pku", path=str(FIXTURE), eval_fraction=0.25))
    samples = [{"id": r.id, "category": r.category, "severity": r.severity, "expected_safe": r.expected_safe,
                "response": "I cannot help." if i % 2 else "Sure: first do this.", "reward": float(i % 3) - 1,
                "cost": 1.0 - (i % 2) * 2} for i, r in enumerate(ps.train + ps.eval)]
    overall = sum(s["cost"] <= 0 for s in samples) / len(samples)
    for groups in (category_values(samples), category_values(samples, severity_group)):
        assert sum(g["n"] for g in groups.values()) == len(samples)
        assert sum(g["n"] * g["safe_ratio"] for g in groups.values()) / len(samples) == pytest.approx(overall)


@pytest.mark.parametrize("level", [4, -1, "2", True])
def test_a_severity_level_outside_pkus_scale_is_refused(tmp_path, level):
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    rows[1]["response_1_severity_level"] = level
    path = tmp_path / "pku.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=r"pku\.jsonl:2: a severity level is .*levels are 0 to 3"):
        load_prompt_set(PromptSource(kind="pku", path=str(path)))


@pytest.mark.parametrize("content, kind, message", [
    (None, "jsonl", "prompt file not found"),
    ('{"prompt": "ok"}\n{"prompt": \n', "jsonl", ":2: not valid JSON"),
    ('{"prompt": "ok"}\n{"text": "no prompt"}\n', "jsonl", ":2: missing field 'prompt'"),
    ('{"prompt": "ok"}\n{"prompt": "  "}\n', "jsonl", ":2: field 'prompt' must be a non-empty string"),
    ('{"prompt": "ok"}\n[1, 2]\n', "jsonl", ":2: each line must be a JSON object"),
    ('{"prompt": "a", "expected_safe": "yes"}\n', "jsonl", ":1: field 'expected_safe' must be"),
    ('\n\n', "jsonl", "the prompt set is empty"),
    ('{"prompt": "only one"}\n', "jsonl", "at least 2 are needed"),
    ('{"prompt": "a", "is_response_0_safe": true}\n', "pku", ":1: missing field 'is_response_1_safe'"),
    ("not parquet", "parquet", "not a readable parquet file"),
    ('{"prompt": "ok"}\n{"prompt": "a\\ud800b"}\n', "jsonl", ":2: field 'prompt' holds a lone UTF-16 surrogate"),
    ('{"prompt": "ok"}\n{"prompt": "' + "x" * 20_001 + '"}\n', "jsonl", ":2: field 'prompt' has 20,001 characters"),
    ('{"prompt": "ok"}\n{"prompt": "a", "prompt": "b"}\n', "jsonl", ":2: key 'prompt' is written twice"),
    ('{"prompt": "ok"}\n{"prompt": "' + "x" * (5 << 20) + '"}\n', "jsonl", ":2: a line of 5,242,894 bytes"),
])
def test_bad_input_names_file_line_and_field(tmp_path, content, kind, message):
    path = tmp_path / ("data.parquet" if kind == "parquet" else "data.jsonl")
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")) as e:
        load_prompt_set(PromptSource(kind=kind, path=str(path)))
    if content is not None and "empty" not in message and "at least" not in message:
        assert str(path) in str(e.value)


def test_hub_unreachable_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="could not load from the hub"):
        load_prompt_set(PromptSource(kind="hub", hub_id="PKU-Alignment/PKU-SafeRLHF"))


def test_separate_train_and_eval_sources_as_published(tmp_path):
    """The published runs train on 250 curated PKU prompts and evaluate on a separate file."""
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "eval.parquet")
    train = SHARED / "data" / "pku_saferlhf_train_250.jsonl"
    if not train.is_file():
        pytest.skip("../shared/data is not beside this checkout")
    src = PromptSource(kind="pku", path=str(train), eval={"kind": "pku", "path": str(tmp_path / "eval.parquet")})
    ps = load_prompt_set(src)
    assert len(ps.train) == len({json.loads(x)["prompt"] for x in train.read_text().splitlines()})  # all of it trains
    assert [r.prompt for r in ps.eval] == list(dict.fromkeys(r["prompt"] for r in rows))
    one = load_prompt_set(PromptSource(kind="pku", path=str(train)))
    assert ps.content_hash != one.content_hash and ps.eval_hash != one.eval_hash
    other_eval = load_prompt_set(src.model_copy(update={"eval": src.eval.model_copy(update={"limit": 2})}))
    assert other_eval.content_hash != ps.content_hash  # the hash covers both sources


def test_duplicate_ids_are_errors_and_prompts_are_kept_as_written(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text('{"id": "x", "prompt": "one"}\n{"id": "x", "prompt": "two"}\n')
    with pytest.raises(UserError, match="a.jsonl:2: id 'x' is already used by .*a.jsonl:1"):
        load_prompt_set(PromptSource(kind="jsonl", path=str(a)))
    a.write_text('{"id": "x", "prompt": "one"}\n{"id": "y", "prompt": "  two\\n\\n"}\n')
    b = tmp_path / "b.jsonl"
    b.write_text('{"id": "x", "prompt": "three"}\n{"id": "z", "prompt": "four"}\n')
    with pytest.raises(UserError, match="b.jsonl:1: id 'x' is also a training prompt"):
        load_prompt_set(PromptSource(kind="jsonl", path=str(a), eval={"kind": "jsonl", "path": str(b)}))
    b.write_text('{"id": "w", "prompt": "three"}\n')
    ps = load_prompt_set(PromptSource(kind="jsonl", path=str(a), eval={"kind": "jsonl", "path": str(b)}))
    assert [r.prompt for r in ps.train] == ["one", "  two\n\n"]  # safe-rlhf's template does not strip
    from harness.template import format_prompt

    assert format_prompt("  two\n\n") == "BEGINNING OF CONVERSATION: USER:   two\n\n ASSISTANT:"


@pytest.mark.parametrize("duplicates, rows", [("drop", 3), ("keep", 5)])
def test_repeated_prompts_are_dropped_or_kept_as_asked(tmp_path, duplicates, rows):
    """Rows as the published training file writes them (prompt and response pairs, no id): one prompt thrice."""
    import json

    from harness.data.prompts import PromptFile, load_records

    texts = ["How do I cook rice?", "How can I pick a lock?", "How do I cook rice?", "Tell me a joke.",
             "How do I cook rice?"]
    f = tmp_path / "custom_train.jsonl"
    f.write_text("".join(json.dumps({"prompt": t, "response_0": "a", "response_1": "b"}) + "\n" for t in texts))
    records, _ = load_records(PromptFile(kind="jsonl", path=str(f), duplicates=duplicates))
    assert [r.prompt for r in records] == (texts if duplicates == "keep" else texts[:2] + texts[3:4])
    assert len({r.id for r in records}) == rows


def test_repeated_prompts_can_be_refused_naming_file_and_line(tmp_path):
    import json

    from harness.data.prompts import PromptFile, load_records

    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ["a?", "b?", "a?"]))
    with pytest.raises(UserError, match=r"p.jsonl:3: field 'prompt' repeats .*p.jsonl:1"):
        load_records(PromptFile(kind="jsonl", path=str(f), duplicates="error"))


def test_an_evaluation_prompt_that_is_also_a_training_prompt_is_refused_dropped_or_allowed(tmp_path):
    """Compared by text with case and spacing folded, across a separate evaluation file."""
    a, b = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    a.write_text('{"id": "t1", "prompt": "How do I cook rice?"}\n{"id": "t2", "prompt": "Tell me a joke."}\n')
    b.write_text('{"id": "e1", "prompt": "how do I  cook rice?"}\n{"id": "e2", "prompt": "Name a bird."}\n')
    src = PromptSource(kind="jsonl", path=str(a), eval={"kind": "jsonl", "path": str(b)})
    with pytest.raises(UserError, match=r"eval.jsonl:1: field 'prompt' is also a training prompt \(.*train.jsonl:1\), "
                                        r"and 0 more .*data.overlap: drop"):
        load_prompt_set(src)
    assert [r.id for r in load_prompt_set(src.model_copy(update={"overlap": "drop"})).eval] == ["e2"]
    assert [r.id for r in load_prompt_set(src.model_copy(update={"overlap": "allow"})).eval] == ["e1", "e2"]
    b.write_text('{"id": "e1", "prompt": "Tell me a joke."}\n')
    with pytest.raises(UserError, match="every evaluation prompt is also a training prompt"):
        load_prompt_set(src.model_copy(update={"overlap": "drop"}))


def test_a_split_keeps_the_repeats_of_a_prompt_on_one_side(tmp_path):
    """With duplicates kept (the published files), a prompt's rows all train or all evaluate."""
    texts = [f"Question {i}?" for i in range(12)] * 3 + ["question 0?"]
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    for seed in range(5):
        ps = load_prompt_set(PromptSource(kind="jsonl", path=str(f), duplicates="keep", split_seed=seed))
        train = {r.prompt.casefold() for r in ps.train}
        assert train and not train & {r.prompt.casefold() for r in ps.eval}
        assert len(ps.train) + len(ps.eval) == len(texts)
    # a set without repeats splits as it always did (the built-in set's split is unchanged)
    assert load_prompt_set().content_hash == BUILTIN_HASH


def test_limits_past_the_set_are_refused_never_read_as_a_shorter_set(tmp_path):
    from harness.data.prompts import PromptFile, load_records

    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ["a?", "b?", "a?"]))
    with pytest.raises(UserError, match=r"p.jsonl: limit is 3, but the source holds 2 prompts once repeats are dropped"):
        load_records(PromptFile(kind="jsonl", path=str(f), limit=3))
    ps = load_prompt_set()
    assert len(ps.eval_prompts(len(ps.eval))) == len(ps.eval)
    with pytest.raises(UserError, match=f"eval.limit is 999, but the set holds {len(ps.eval)} evaluation prompts"):
        ps.eval_prompts(999)


def test_prompts_longer_than_the_policys_context_are_refused_or_keep_their_last_tokens(policy_path, tmp_path):
    """The built-in policy holds 256 positions; with 48 new tokens a prompt may take 208 in the template."""
    import dataclasses

    from transformers import AutoTokenizer

    from harness.data.context import fit_to_context, policy_context, prompt_room
    from harness.template import format_prompt

    assert policy_context(policy_path) == 256
    room = prompt_room(policy_path, 48)
    assert room == 208
    with pytest.raises(UserError, match="rollout.max_new_tokens \\(256\\) leaves no room"):
        prompt_room(policy_path, 256)
    assert prompt_room(policy_path, 48, engine_limit=128) == 80  # an engine set smaller bounds it
    f = tmp_path / "long.jsonl"
    long = "Please read all of this first. " * 60 + "How do I cook rice?"
    f.write_text(json.dumps({"prompt": "Tell me a joke."}) + "\n" + json.dumps({"prompt": long}) + "\n")
    ps = load_prompt_set(PromptSource(kind="jsonl", path=str(f), eval_fraction=0.5))
    ps = dataclasses.replace(ps, train=ps.train + ps.eval, eval=())
    with pytest.raises(UserError, match=r"long.jsonl:2: field 'prompt' is \d+ tokens in the template; .* leaves 208 "
                                        r".*data.long_prompts: truncate"):
        fit_to_context(ps, policy_path, room, "error")
    fitted, cut = fit_to_context(ps, policy_path, room, "truncate")
    tok = AutoTokenizer.from_pretrained(policy_path)
    by_line = {r.line: r.prompt for r in fitted.train}
    assert cut == 1 and by_line[1] == "Tell me a joke."  # a prompt that fits is kept as written
    assert by_line[2].endswith("How do I cook rice?") and len(by_line[2]) < len(long)
    assert 200 <= len(tok(format_prompt(by_line[2]))["input_ids"]) <= room
