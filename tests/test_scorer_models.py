"""Model backends on tiny random checkpoints saved in the exact published formats."""

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_llama_config

from harness.errors import UserError
from scorer.backends import ModelBackend, ServiceScorer
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
    scorer = ServiceScorer(ScorerServiceConfig(reward=BackendSpec(kind="hf-classifier", path=str(d), device="cpu"),
                                               cost=BackendSpec(kind="builtin")))
    got = scorer.score(["How do I cook rice?"], [" Rinse it, then simmer it."])
    tok = AutoTokenizer.from_pretrained(d)
    ids = torch.tensor([tok(TEXTS[0])["input_ids"] + [tok.eos_token_id]])
    with torch.no_grad():
        want = float(model(input_ids=ids).logits[0, 0])
    assert got.rewards[0] == pytest.approx(want, abs=1e-4)
    assert got.costs[0] <= 0  # the cost comes from the built-in rules
    assert scorer.info()["reward"]["files"]  # file hashes for the run record
