"""Score backends: each maps (prompt, response) pairs to one number. R and C may use different backends."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import psutil
import torch

from harness.errors import UserError
from harness.scoring.builtin import BuiltinScorer, JudgeScorer
from harness.scoring.protocol import Scores, check_finite
from harness.template import format_conversation, published_scored_text
from scorer.service_config import BackendSpec, ScorerServiceConfig

log = logging.getLogger("esgrpo.scorer")


class ScoreBackend(Protocol):
    def scores(self, prompts: Sequence[str], responses: Sequence[str], which: str) -> list[float]:
        """One score per pair; ``which`` is 'reward' or 'cost' (rule-based backends compute both)."""
        ...

    def info(self) -> dict[str, Any]: ...


class RuleBackend:
    def __init__(self, kind: str):
        self.scorer = BuiltinScorer() if kind == "builtin" else JudgeScorer()

    def scores(self, prompts, responses, which):
        r, c = self.scorer.score(prompts, responses)
        return r if which == "reward" else c

    def info(self):
        return self.scorer.info()


def checkpoint_dtype(path: Path) -> torch.dtype | None:
    """The dtype a checkpoint was saved in (config.json ``torch_dtype``/``dtype``), when it names one."""
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = raw.get("torch_dtype") or raw.get("dtype") if isinstance(raw, dict) else None
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}.get(str(name))


def resolve_device(spec: BackendSpec, path: Path) -> tuple[str, torch.dtype]:
    """``auto``: cuda if present; on a GPU the checkpoint's own dtype (bf16 if it names none), fp32 on the CPU."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if spec.device == "auto" else spec.device
    if spec.dtype == "auto":
        dtype = (checkpoint_dtype(path) or torch.bfloat16) if device.startswith("cuda") else torch.float32
    else:
        dtype = getattr(torch, spec.dtype)
    return device, dtype


def files_digest(path: Path) -> dict[str, str]:
    """sha256 (first 16 hex) of config and weight files, for run records; files in parallel threads (hashlib
    releases the GIL): one after another, the 14 shards of two 7B scorers took most of the service's start."""
    files = [f for f in sorted(path.iterdir()) if f.suffix in (".json", ".safetensors", ".bin", ".model") and f.is_file()]

    def digest(f: Path) -> str:
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        return h.hexdigest()[:16]

    with ThreadPoolExecutor(max_workers=min(16, len(files) or 1)) as pool:
        return dict(zip((f.name for f in files), pool.map(digest, files)))


class PairTooLarge(RuntimeError):
    """One pair alone does not fit in the scorer's memory: no retry or split can mend it."""


@dataclass
class TokenBudget:
    """Tokens per forward pass (padding included); halved below a batch that ran out of memory."""

    tokens: int
    halvings: int = 0

    def halved(self, failed_tokens: int) -> None:
        self.tokens = max(1, min(self.tokens, failed_tokens // 2))
        self.halvings += 1
        log.warning("scorer out of memory at %d tokens: batches halved (budget now %d tokens)", failed_tokens,
                    self.tokens)


def token_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive index runs whose padded size (rows × longest row) stays within ``budget`` tokens; a row
    longer than the budget goes alone. ``lengths`` sorted ascending keeps the padding small."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        if current and (len(current) + 1) * max(longest, n) > budget:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        batches.append(current)
    return batches


def free_device_cache(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def memory_summary(device: str) -> str:
    if not device.startswith("cuda"):
        return f"host memory {psutil.virtual_memory().available / 2**30:.1f} GiB free"
    free, total = torch.cuda.mem_get_info(torch.device(device))
    return (f"{torch.cuda.memory_allocated(torch.device(device)) / 2**30:.1f} GiB allocated by the scorer, "
            f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free on the device")


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def checkpoint_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.suffix in (".safetensors", ".bin") and f.is_file())


class ModelBackend:
    """A transformer scoring full conversations in the shared template, EOS appended, batched by length."""

    def __init__(self, spec: BackendSpec):
        from transformers import AutoTokenizer

        if not spec.path:
            raise UserError(f"backend '{spec.kind}' needs 'path' (a local model directory)")
        self.spec, self.path = spec, Path(spec.path)
        if not self.path.is_dir():
            raise UserError(f"{self.path}: model directory not found")
        self.device, self.dtype = resolve_device(spec, self.path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.budget = TokenBudget(spec.max_batch_tokens)
        t = time.perf_counter()
        self.model = self._load()
        self.load_seconds = round(time.perf_counter() - t, 2)
        self._digest = files_digest(self.path)

    def _load(self) -> torch.nn.Module:
        if self.spec.kind == "beaver":
            from scorer.beaver import BeaverScoreModel

            return BeaverScoreModel(self.path, self.dtype, self.device)
        from transformers import AutoModelForSequenceClassification

        try:
            model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=self.dtype,
                                                                       device_map=self.device)
        except (OSError, ValueError) as e:
            raise UserError(f"{self.path}: cannot load a sequence classifier ({e})") from None
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        return model.eval().requires_grad_(False)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with the EOS appended. ``truncate: response`` cuts the text and keeps the EOS the model
        scores at; ``end`` cuts text+EOS at max_length, as the published scorer did (a long answer loses its EOS).
        One tokenizer call for the batch: the same ids as a call per text, in less than half the time."""
        eos = self.tokenizer.eos_token_id
        n = self.spec.max_length
        return [toks[: n - 1] + [eos] if self.spec.truncate == "response" else (toks + [eos])[:n]
                for toks in self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]]

    def pad(self, ids: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        lengths = np.array([len(x) for x in ids])
        input_ids = np.full((len(ids), lengths.max()), self.tokenizer.pad_token_id, dtype=np.int64)
        for row, x in zip(input_ids, ids):
            row[: len(x)] = x
        mask = (np.arange(input_ids.shape[1]) < lengths[:, None]).astype(np.int64)
        return {"input_ids": torch.from_numpy(input_ids).to(self.device),
                "attention_mask": torch.from_numpy(mask).to(self.device)}

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.pad(self.token_ids(texts))

    @torch.inference_mode()
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.spec.kind == "beaver":
            return self.model(**batch)
        return self.model(**batch).logits[:, 0].float()

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        ids = self.token_ids(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths: little padding
        out = [0.0] * len(texts)
        for batch in token_batches([len(ids[i]) for i in order], self.budget.tokens):
            rows = [order[k] for k in batch]
            for i, v in zip(rows, self.split_on_oom([ids[i] for i in rows])):
                out[i] = v
        return out

    def split_on_oom(self, ids: list[list[int]]) -> list[float]:
        """Scores of one batch; on out-of-memory, the cache freed and each half scored alone (the budget shrinks
        to what failed, halved, so later batches start small). One pair that cannot fit is ``PairTooLarge``."""
        try:
            return self.forward(self.pad(ids)).tolist()
        except torch.OutOfMemoryError as e:
            reason = first_line(e)
        # out of the except block: the exception's traceback holds the failed pass's activations, which the cache
        # can only give back once it is gone
        padded = len(ids) * max(len(x) for x in ids)
        free_device_cache(self.device)
        if len(ids) == 1:
            raise PairTooLarge(f"scorer out of memory: one pair of {padded} tokens does not fit on {self.device} "
                               f"beside what the scorer holds ({memory_summary(self.device)}): {reason}")
        self.budget.halved(padded)
        half = len(ids) // 2
        return self.split_on_oom(ids[:half]) + self.split_on_oom(ids[half:])

    def warm_up(self) -> None:
        """One forward pass at the full token budget (rows of max_length tokens), so that the memory the scorer
        will hold is measured before anything else is placed beside it; a budget that does not fit shrinks here,
        not in the middle of a run."""
        rows = max(1, self.spec.max_batch_tokens // self.spec.max_length)
        filler = [[self.tokenizer.eos_token_id] * self.spec.max_length] * rows
        for batch in token_batches([self.spec.max_length] * rows, self.budget.tokens):
            self.split_on_oom([filler[i] for i in batch])

    def scores(self, prompts, responses, which):
        build = published_scored_text if self.spec.scorer_text == "published" else format_conversation
        return self.score_texts([build(p, r) for p, r in zip(prompts, responses)])

    def info(self):
        return {"backend": self.spec.kind, "path": str(self.path), "files": self._digest, "device": self.device,
                "dtype": str(self.dtype).removeprefix("torch."), "max_length": self.spec.max_length,
                "truncate": self.spec.truncate, "scorer_text": self.spec.scorer_text,
                "load_seconds": self.load_seconds, "checkpoint_gib": round(checkpoint_bytes(self.path) / 2**30, 3),
                "max_batch_tokens": self.spec.max_batch_tokens, "batch_tokens_now": self.budget.tokens,
                "oom_halvings": self.budget.halvings}


def make_backend(spec: BackendSpec) -> ScoreBackend:
    return RuleBackend(spec.kind) if spec.kind in ("builtin", "judge") else ModelBackend(spec)


class ServiceScorer:
    """The harness ``Scorer`` over a reward backend and a cost backend (one object if both specs are equal)."""

    def __init__(self, reward: ScoreBackend, cost: ScoreBackend):
        self.reward, self.cost = reward, cost

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Scores:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return check_finite(Scores(self.reward.scores(prompts, responses, "reward"),
                                   self.cost.scores(prompts, responses, "cost")), "scorer")

    def info(self) -> dict[str, Any]:
        return {"reward": self.reward.info(), "cost": self.cost.info(), "memory": device_memory()}


def device_memory() -> dict[str, float] | None:
    """What this process holds on its GPU: the allocator's peak reservation is what the scorer needs beside
    the policy (weights plus the activations of its largest batch)."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return {"reserved_peak_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3),
            "reserved_gib": round(torch.cuda.memory_reserved() / 2**30, 3),
            "allocated_gib": round(torch.cuda.memory_allocated() / 2**30, 3)}


def build_scorer(cfg: ScorerServiceConfig) -> ServiceScorer:
    reward = make_backend(cfg.reward)
    cost = reward if cfg.cost == cfg.reward else make_backend(cfg.cost)
    for backend in {id(b): b for b in (reward, cost)}.values():
        if isinstance(backend, ModelBackend) and backend.device.startswith("cuda"):
            backend.warm_up()
    return ServiceScorer(reward, cost)
