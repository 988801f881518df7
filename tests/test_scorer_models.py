"""Model backends on tiny random checkpoints saved in the exact published formats."""

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_llama_config

from harness.errors import UserError
from scorer.backends import ModelBackend, build_scorer
from scorer.beaver import BeaverScoreModel, end_index
from scorer.service_config import BackendSpec, ScorerServiceConfig

TEXTS = ["BEGINNING OF CONVERSATION: USER: How do I cook rice? ASSISTANT: Rinse it, then simmer it.",
         "BEGINNING OF CONVERSATION: USER: Hi ASSISTANT: Hello!"]


def test_beaver_end_score_matches_a_direct_forward_pass(beaver_dir):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaModel

    backend = ModelBackend(BackendSpec(kind="beaver", path=str(beaver_dir), device="cpu"))
    got = backend.score_texts(TEXTS)
    tok = AutoTokenizer.from_pretrained(beaver_dir)
    state = load_file(str(beaver_dir / "model.safetensors"))
    ref = LlamaModel(tiny_llama_config())
    ref.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
    ref.eval()
    for text, score in zip(TEXTS, got):
        ids = torch.tensor([tok(text)["input_ids"] + [tok.eos_token_id]])  # scored at the appended EOS
        with torch.no_grad():
            h = ref(input_ids=ids).last_hidden_state[0, -1]
        want = float(h @ state["score_head.weight"][0] + state["score_head.bias"][0])
        assert score == pytest.approx(want, abs=1e-4)
    # alone or inside a padded batch, the same score
    assert backend.score_texts(TEXTS[:1])[0] == pytest.approx(got[0], abs=1e-5)


def test_end_index_handles_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    assert end_index(right).tolist() == [2, 4]
    assert end_index(left).tolist() == [4, 4]


def test_beaver_checkpoint_errors(beaver_dir):
    cfg = json.loads((beaver_dir / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    (beaver_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="expected \\['LlamaForScore'\\]"):
        BeaverScoreModel(beaver_dir)
    cfg["architectures"] = ["LlamaForScore"]
    (beaver_dir / "config.json").write_text(json.dumps(cfg))
    from safetensors.torch import load_file

    state = load_file(str(beaver_dir / "model.safetensors"))
    del state["score_head.bias"]
    save_file(state, str(beaver_dir / "model.safetensors"))
    with pytest.raises(UserError, match="score head weights missing"):
        BeaverScoreModel(beaver_dir)
    with pytest.raises(UserError, match="not found"):
        ModelBackend(BackendSpec(kind="beaver", path=str(beaver_dir / "nope")))


def test_hf_classifier_and_mixed_backends(tmp_path, policy_path):
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    torch.manual_seed(1)
    cfg = tiny_llama_config()
    cfg.num_labels = 1
    cfg.pad_token_id = 0
    model = LlamaForSequenceClassification(cfg).eval()
    d = tmp_path / "rm"
    model.save_pretrained(d)
    AutoTokenizer.from_pretrained(policy_path).save_pretrained(d)
    scorer = build_scorer(ScorerServiceConfig(reward=BackendSpec(kind="hf-classifier", path=str(d), device="cpu"),
                                               cost=BackendSpec(kind="builtin")))
    got = scorer.score(["How do I cook rice?"], [" Rinse it, then simmer it."])
    tok = AutoTokenizer.from_pretrained(d)
    ids = torch.tensor([tok(TEXTS[0])["input_ids"] + [tok.eos_token_id]])
    with torch.no_grad():
        want = float(model(input_ids=ids).logits[0, 0])
    assert got.rewards[0] == pytest.approx(want, abs=1e-4)
    assert got.costs[0] <= 0  # the cost comes from the built-in rules
    assert scorer.info()["reward"]["files"]  # file hashes for the run record


@pytest.mark.parametrize("score_type, expected", [("reward", lambda x, m, v: (x - m) / (v ** 0.5 + 1e-8)),
                                                  ("cost", lambda x, m, v: x / (v ** 0.5 + 1e-8))])
def test_safe_rlhf_saved_checkpoint_normalizes_as_safe_rlhf(tmp_path, policy_path, score_type, expected):
    """config.json as safe-rlhf writes it (list-valued mean/var, do_normalize) scores as its Normalizer does:
    reward models affine, cost models scale, epsilon 1e-8."""
    from harness.fixtures.random_models import build_random_beaver

    raw_dir = build_random_beaver("tiny", tmp_path / "raw", score_type, seed=3)
    norm_dir = build_random_beaver("tiny", tmp_path / "norm", score_type, seed=3, normalize=(0.258, 2.1))
    cfg = json.loads((norm_dir / "config.json").read_text())
    assert cfg["mean"] == [0.258] and cfg["var"] == [2.1] and cfg["do_normalize"] is True
    raw = ModelBackend(BackendSpec(kind="beaver", path=str(raw_dir), device="cpu")).score_texts(TEXTS)
    got = ModelBackend(BackendSpec(kind="beaver", path=str(norm_dir), device="cpu")).score_texts(TEXTS)
    for x, y in zip(raw, got):
        assert y == pytest.approx(expected(x, 0.258, 2.1), abs=1e-5)
    cfg.update(mean=0.258, var=2.1)  # scalars, as other tools write them, are read the same
    (norm_dir / "config.json").write_text(json.dumps(cfg))
    from safetensors.torch import load_file

    state = load_file(str(norm_dir / "model.safetensors"))
    del state["normalizer.mean"], state["normalizer.var"]  # the config alone
    save_file(state, str(norm_dir / "model.safetensors"))
    again = ModelBackend(BackendSpec(kind="beaver", path=str(norm_dir), device="cpu")).score_texts(TEXTS)
    assert again == pytest.approx(got, abs=1e-6)


def test_low_precision_keeps_rope_frequencies_fp32_and_auto_reads_the_checkpoint_dtype(beaver_dir):
    from scorer.backends import resolve_device

    model = BeaverScoreModel(beaver_dir, torch.bfloat16)
    freqs = [b for n, b in model.named_buffers() if n.endswith("inv_freq")]
    assert freqs and all(b.dtype == torch.float32 for b in freqs)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert resolve_device(BackendSpec(kind="beaver", device="cuda"), beaver_dir) == ("cuda", torch.bfloat16)
    cfg = json.loads((beaver_dir / "config.json").read_text())
    (beaver_dir / "config.json").write_text(json.dumps({**cfg, "torch_dtype": "float16"}))
    assert resolve_device(BackendSpec(kind="beaver", device="cuda"), beaver_dir) == ("cuda", torch.float16)
    assert resolve_device(BackendSpec(kind="beaver", device="cpu"), beaver_dir) == ("cpu", torch.float32)


def test_truncation_keeps_the_eos_or_cuts_like_the_published_scorer(beaver_dir):
    long = TEXTS[0] + " and then" * 200
    keep = ModelBackend(BackendSpec(kind="beaver", path=str(beaver_dir), device="cpu", max_length=64))
    cut = ModelBackend(BackendSpec(kind="beaver", path=str(beaver_dir), device="cpu", max_length=64, truncate="end"))
    eos = keep.tokenizer.eos_token_id
    assert keep.encode([long])["input_ids"][0, -1] == eos and keep.encode([long])["input_ids"].shape[1] == 64
    assert cut.encode([long])["input_ids"][0, -1] != eos and cut.encode([long])["input_ids"].shape[1] == 64
    assert cut.encode(TEXTS[1:])["input_ids"][0, -1] == eos  # short texts end at the EOS either way


def test_a_batch_encodes_each_text_as_alone(beaver_dir):
    """The batch is tokenized in one call; each row must hold the ids of its text tokenized alone, EOS appended
    (cut at max_length), then padding the mask excludes."""
    b = ModelBackend(BackendSpec(kind="beaver", path=str(beaver_dir), device="cpu", max_length=48))
    texts = [*TEXTS, "", "naïve café — 改善 🙂 " * 3, TEXTS[0] + " and then" * 40]
    batch = b.encode(texts)
    for row, mask, text in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), texts):
        alone = b.tokenizer(text, add_special_tokens=True)["input_ids"]
        assert row[: sum(mask)] == alone[:47] + [b.tokenizer.eos_token_id]


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_sharded_checkpoints_with_an_index_score_like_one_file(tmp_path, policy_path, weights):
    """The published Beaver repositories ship shards with an index (model-0000N-of-0000M.safetensors, or
    pytorch_model-0000N-of-0000M.bin): they load to the same scores as one file, and no weight is drawn at
    random on the way (the model is built on the meta device)."""
    from harness.fixtures.random_models import build_random_beaver

    one = build_random_beaver("tiny", tmp_path / "one", "reward", seed=4)
    shards = build_random_beaver("tiny", tmp_path / "shards", "reward", seed=4, shard_gib=0.4 / 2**10,
                                 weights=weights)
    names = sorted(f.name for f in shards.iterdir() if f.suffix in (".safetensors", ".bin"))
    stem = "model" if weights == "safetensors" else "pytorch_model"
    assert len(names) > 1 and names[0] == f"{stem}-00001-of-{len(names):05d}.{weights}"
    index = json.loads((shards / f"{stem}.{weights}.index.json").read_text())
    assert set(index["weight_map"].values()) == set(names)
    want = ModelBackend(BackendSpec(kind="beaver", path=str(one), device="cpu")).score_texts(TEXTS)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    got = ModelBackend(BackendSpec(kind="beaver", path=str(shards), device="cpu")).score_texts(TEXTS)
    assert got == pytest.approx(want, abs=1e-6)
    assert torch.rand(1) == before  # loading drew no random numbers: nothing was initialized only to be replaced


# transcription of the published path from a completion to the scored text (es-fine-tuning-paper HEAD 84c16db):
# the ES/GRPO clients' call_scorer_api split, then scorer_service.py's build_text (EOS left to the backend)
def published_client_split(text):
    if 'USER:' in text and 'ASSISTANT:' in text:
        user_part = text.split('USER:', 1)[1]
        return user_part.rsplit('ASSISTANT:', 1)[0].strip(), text.split('ASSISTANT:', 1)[1]
    return text, ""


def published_build_text(prompt, response):
    p, r = prompt or "", response or ""
    if "BEGINNING OF CONVERSATION:" in p and "ASSISTANT:" in p:
        return p + r
    return f"BEGINNING OF CONVERSATION: USER: {p} ASSISTANT:{r}"


PUBLISHED_CASES = [
    ("How do I cook rice?", " Rinse it, then simmer it."),
    ("How do I cook rice?", " Rinse it. USER: and then? ASSISTANT: Simmer it. USER: thanks ASSISTANT: Bye."),
    ("How do I cook rice?", " Rinse it. BEGINNING OF CONVERSATION: USER: hi ASSISTANT: hello"),
    ("  padded prompt  ", " ok"),
    ("How do I cook rice?", ""),
    ("What does USER: mean?", " It names the speaker. ASSISTANT: yes"),
]


@pytest.mark.parametrize("prompt, response", PUBLISHED_CASES)
def test_published_scorer_text_is_what_the_published_clients_and_service_scored(prompt, response):
    from harness.template import format_conversation, published_scored_text

    text = format_conversation(prompt, response)
    assert published_scored_text(prompt, response) == published_build_text(*published_client_split(text))


def test_scorer_text_published_scores_the_rebuilt_text(beaver_dir):
    from harness.template import format_conversation, published_scored_text

    asis = ModelBackend(BackendSpec(kind="beaver", path=str(beaver_dir), device="cpu"))
    rebuilt = ModelBackend(BackendSpec(kind="beaver", path=str(beaver_dir), device="cpu", scorer_text="published"))
    prompts, responses = zip(*PUBLISHED_CASES)
    got = rebuilt.scores(prompts, responses, "reward")
    assert got == pytest.approx(asis.score_texts([published_scored_text(p, r) for p, r in PUBLISHED_CASES]), abs=1e-5)
    # one turn: the same text, the same score; an invented turn: part of the response repeated, another score
    assert got[0] == pytest.approx(asis.scores(prompts[:1], responses[:1], "reward")[0], abs=1e-5)
    invented = asis.score_texts([format_conversation(*PUBLISHED_CASES[1])])[0]
    assert abs(got[1] - invented) > 1e-4
    assert rebuilt.info()["scorer_text"] == "published"
    with pytest.raises(ValueError, match="needs a score model"):
        BackendSpec(kind="builtin", scorer_text="published")
