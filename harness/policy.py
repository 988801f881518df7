"""The built-in policy: a tiny Llama-shaped causal LM built locally, with no hub.

A byte-level BPE tokenizer is trained on a corpus written here (prompt/response pairs in the shared
template: helpful answers, compliant answers to harmful requests, refusals, over-refusals), then the
model is warm-started on it for a fixed number of steps so greedy output is readable text whose
safety/helpfulness alignment can move. Built deterministically and cached under ``$ESGRPO_HOME``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from rich.progress import Progress

from harness.data import load_prompt_set
from harness.paths import esgrpo_home
from harness.template import format_conversation

POLICY_VERSION = 1
BUILTIN_POLICY = "builtin"

HELP_STEPS = {
    "cooking": ["wash the food and get a clean pan", "use low heat and stir it often", "add a little salt at the end"],
    "health": ["start with a small goal each day", "drink water and rest well", "keep a short note of how you feel"],
    "coding": ["write a small example first", "run it and read the error message", "keep each function short"],
    "science": ["light and energy move in simple ways", "the sun and the earth play a part", "you can read a short book on it"],
    "travel": ["make a short list before you go", "keep your bag light and safe", "check the weather the day before"],
    "writing": ["write a short first draft", "read it out loud once", "keep the words simple and kind"],
    "finance": ["write down what you spend each week", "set aside a small amount first", "check your plan every month"],
    "household": ["use warm water and a soft cloth", "work on one small part at a time", "keep the room dry and open"],
}
HARM_STEPS = ["wait until nobody is around", "use a tool to get past the lock", "hide what you took",
              "use a fake name online", "make sure the police do not see you", "lie if someone asks you"]
SAFE_ALTERNATIVES = ["talk to someone you trust", "ask a local help line", "look for a legal way to solve it",
                     "talk to the people involved"]
LEAD = re.compile(r"^(how (do|can|should) i|what (is|are)( the| a| an)?( best| good| simple| easy| quick)?( way to)?|"
                  r"why (is|do|does)|what (should|makes|causes)|how (does|do))\s+", re.I)


def topic(prompt: str) -> str:
    return LEAD.sub("", prompt.strip().rstrip("?.!")).strip() or prompt


def corpus(seed: int = 0) -> list[str]:
    """Prompt/response conversations for the warm start (texts, before EOS)."""
    rng = np.random.default_rng(seed)
    ps = load_prompt_set()
    texts = []
    for rec in list(ps.train) + list(ps.eval):
        t = topic(rec.prompt)
        if rec.expected_safe:
            steps = HELP_STEPS.get(rec.category, HELP_STEPS["household"])
            helpful = f" Here is how to {t}. First, {steps[0]}. Then {steps[1]}. Finally, {steps[2]}."
            texts += [format_conversation(rec.prompt, helpful)] * 3
            texts.append(format_conversation(rec.prompt, " Sorry, I cannot help with that request."))
        else:
            a, b = rng.choice(len(HARM_STEPS), size=2, replace=False)
            comply = f" Sure. To {t}, first {HARM_STEPS[a]}. Then {HARM_STEPS[b]}."
            alt = SAFE_ALTERNATIVES[int(rng.integers(len(SAFE_ALTERNATIVES)))]
            refuse = f" I cannot help with that. It could hurt people and it is against the law. Instead, {alt}."
            texts += [format_conversation(rec.prompt, comply)] * 3
            texts += [format_conversation(rec.prompt, refuse)] * 2
    return texts


def _train_tokenizer(texts: list[str], out: Path, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(out)
    return fast


def build_policy(out: Path, steps: int = 240, seed: int = 0, progress: bool = True) -> Path:
    """Build the tiny policy into ``out`` (tokenizer + safetensors weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    texts = corpus(seed)
    out.mkdir(parents=True, exist_ok=True)
    tok = _train_tokenizer(texts, out, vocab_size=1024)
    # head_dim 64: vLLM's CPU attention kernel rejects smaller heads.
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=3, num_key_value_heads=3, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, torch_dtype="float32")
    model = LlamaForCausalLM(cfg)
    ids = [tok(t + tok.eos_token)["input_ids"] for t in texts]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    model.train()
    with Progress(disable=not progress) as bar:
        task = bar.add_task("building built-in policy", total=steps)
        for _ in range(steps):
            batch = [ids[i] for i in rng.choice(len(ids), size=32, replace=False)]
            width = max(map(len, batch))
            x = torch.full((len(batch), width), tok.pad_token_id)
            mask = torch.zeros_like(x)
            for i, seq in enumerate(batch):
                x[i, : len(seq)] = torch.tensor(seq)
                mask[i, : len(seq)] = 1
            labels = x.masked_fill(mask == 0, -100)
            loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(task, advance=1, description=f"building built-in policy (loss {loss.item():.2f})")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    (out / "esgrpo_policy.json").write_text(json.dumps(
        {"name": BUILTIN_POLICY, "version": POLICY_VERSION, "steps": steps, "seed": seed,
         "final_loss": round(float(loss.item()), 4), "corpus_size": len(texts)}, indent=2))
    return out


def builtin_policy_path(progress: bool = True) -> Path:
    """The cached built-in policy, building it first if needed (safe across concurrent jobs)."""
    home = esgrpo_home() / "models"
    home.mkdir(parents=True, exist_ok=True)
    final = home / f"builtin-policy-v{POLICY_VERSION}"
    with FileLock(str(final) + ".lock"):
        if not (final / "esgrpo_policy.json").is_file():
            tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=home))
            try:
                build_policy(tmp, progress=progress)
                if final.exists():
                    shutil.rmtree(final)
                tmp.rename(final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_policy(policy: str, progress: bool = True) -> Path:
    """``builtin`` or a local HF model directory."""
    if policy == BUILTIN_POLICY:
        return builtin_policy_path(progress)
    from harness.errors import UserError

    path = Path(policy)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a model directory (no config.json); pass a local HF model or 'builtin'")
    return path


def weights_checksum(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
